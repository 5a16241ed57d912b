"""Geometry of a set of states: participation ratio (dim_eff), one PCA, placing a new state, constant layers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ic_core.errors import DataError


def covariance_eigenvalues(x: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending, ≥ 0) of the covariance of the rows of ``x``.

    Args:
        x: (N, d) one state per item. Rank is at most N − 1.

    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (N ≥ 2, d) matrix, got shape {x.shape}")
    centred = x - x.mean(axis=0, keepdims=True)
    # Singular values of the centred data avoid forming a d × d matrix when N ≪ d.
    s = np.linalg.svd(centred, compute_uv=False)
    return np.sort(s**2 / (x.shape[0] - 1))[::-1]


def participation_ratio(x: np.ndarray) -> float | None:
    """Effective dimensionality PR = (Σλ)² / Σλ² of the covariance of ``x`` (N, d).

    Returns ``None`` when the states are constant (all eigenvalues zero): PR is undefined.
    """
    return _pr_from_eigenvalues(covariance_eigenvalues(x))


def _pr_from_eigenvalues(lam: np.ndarray) -> float | None:
    denom = float((lam**2).sum())
    if denom <= 1e-30 * max(1.0, float(lam.sum()) ** 2) or lam.sum() <= 0:
        return None
    return float(lam.sum() ** 2 / denom)


def n_components_for_variance(x: np.ndarray, fraction: float = 0.9) -> int | None:
    """Number of principal components needed to reach ``fraction`` of the variance (None if constant)."""
    return _n90_from_eigenvalues(covariance_eigenvalues(x), fraction)


def _n90_from_eigenvalues(lam: np.ndarray, fraction: float) -> int | None:
    total = float(lam.sum())
    if total <= 0:
        return None
    return int(np.searchsorted(np.cumsum(lam) / total, fraction - 1e-12) + 1)


@dataclass(frozen=True)
class DimEff:
    """Effective dimensionality of a set of states, per layer and aggregated."""

    participation_ratio: tuple[float | None, ...]
    """Per layer; None where the layer's states are constant."""
    n_components_90: tuple[int | None, ...]
    """Per layer: components reaching 90 % of the variance."""
    trace: tuple[float, ...]
    """Per layer: total variance Σλ (the aggregation weight)."""
    rank_cap: int
    """N − 1: no estimate can exceed it."""

    @property
    def weighted_participation_ratio(self) -> float | None:
        """Layers' PR averaged with weights ∝ their total variance (constant layers excluded)."""
        pairs = [(pr, t) for pr, t in zip(self.participation_ratio, self.trace) if pr is not None and t > 0]
        if not pairs:
            return None
        w = np.array([t for _, t in pairs])
        return float(np.dot([pr for pr, _ in pairs], w) / w.sum())


def dim_eff(states: np.ndarray) -> DimEff:
    """Participation ratio and 90 %-variance count per layer.

    Args:
        states: (N, L + 1, d) last-token states of N items.

    """
    states = np.asarray(states, dtype=np.float64)
    prs, n90s, traces = [], [], []
    for layer in range(states.shape[1]):
        lam = covariance_eigenvalues(states[:, layer, :])  # one decomposition per layer
        traces.append(float(lam.sum()))
        prs.append(_pr_from_eigenvalues(lam))
        n90s.append(_n90_from_eigenvalues(lam, 0.9))
    return DimEff(tuple(prs), tuple(n90s), tuple(traces), states.shape[0] - 1)


def constant_layers(states: np.ndarray, rtol: float = 1e-5) -> list[int]:
    """Layers whose state is (numerically) identical for every item: probes there are undefined.

    Args:
        states: (N, L + 1, d).

    """
    states = np.asarray(states, dtype=np.float64)
    spread = states.std(axis=0).max(axis=-1)  # (L + 1,)
    scale = np.abs(states).max(axis=(0, 2)) + 1e-12
    return [int(i) for i in np.flatnonzero(spread <= rtol * scale)]


@dataclass(frozen=True, eq=False)
class PCAFit:
    """The first ``k`` principal components of some states (the one PCA every view uses)."""

    scores: np.ndarray
    """(N, k) the states' scores."""
    components: np.ndarray
    """(k, d) unit directions, as ``np.linalg.svd`` returns them (their signs define the axes)."""
    mean: np.ndarray
    """(d,) the states' mean."""
    variance: np.ndarray
    """(k,) variance along each component (ddof = 1)."""
    explained_ratio: np.ndarray
    """(k,) each component's share of the total variance (zeros for constant states)."""

    def transform(self, y: np.ndarray) -> np.ndarray:
        """Scores of other states in the same axes: (d,) → (k,), or (M, d) → (M, k)."""
        return (np.asarray(y, dtype=np.float64) - self.mean) @ self.components.T


def pca_fit(x: np.ndarray, n_components: int = 2) -> PCAFit:
    """Principal components of the rows of ``x`` (N, d), at most ``n_components`` (k ≤ min(N, d)).

    Raises:
        ValueError: ``x`` is not an (N ≥ 1, d) matrix.

    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"need an (N ≥ 1, d) matrix, got shape {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(n_components, vt.shape[0])
    var = s**2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return PCAFit(centred @ vt[:k].T, vt[:k], mean, var[:k] / max(1, x.shape[0] - 1), ratio)


def pca(x: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of rows of ``x`` (N, d) (:func:`pca_fit` as a tuple).

    Returns:
        (scores (N, k), components (k, d), mean (d,), explained variance ratio (k,)).

    """
    fit = pca_fit(x, n_components)
    return fit.scores, fit.components, fit.mean, fit.explained_ratio


MAX_PLACEMENT_COMPONENTS = 10
"""Components a placement measures distances in (fewer when the states span fewer)."""
OUTSIDE_PERCENTILE = 95.0
"""A new state is outside the states when it is farther from them than this share of them are from each other."""


@dataclass(frozen=True, eq=False)
class Placement:
    """Where one new state falls relative to N states, in the states' own PCA (:func:`pca_fit`)."""

    scores: np.ndarray
    """(N, 2) the states' first two principal-component scores (zero where there is no second)."""
    point: np.ndarray
    """(2,) the new state's scores on the same axes, signs included."""
    explained_ratio: np.ndarray
    """(2,) variance fraction of the two components."""
    n_components: int
    """Components k used for distances (≤ N − 1, ≤ :data:`MAX_PLACEMENT_COMPONENTS`)."""
    nearest_distance: float
    """Euclidean distance, in the k-component PCA space, from the new state to its nearest state."""
    nearest_index: int
    """Index (0..N − 1) of that nearest state."""
    study_nn_distances: np.ndarray
    """(N,) each state's distance to its own nearest other state (same space)."""
    mahalanobis: float
    """sqrt(Σ score_j² / var_j) over the k components: how many 'standard deviations' away."""
    nn_percentile: float
    """Share (0–100) of the states whose own nearest-neighbour distance is below ``nearest_distance``."""

    @property
    def outside(self) -> bool:
        """True when the new state is farther from the states than 95 % of them are from each other."""
        return self.nn_percentile > OUTSIDE_PERCENTILE


def place(states: np.ndarray, state: np.ndarray, max_components: int = MAX_PLACEMENT_COMPONENTS) -> Placement:
    """Project ``state`` onto the PCA of ``states`` and say how far from them it lies.

    Args:
        states: (N ≥ 3, d) the reference states (e.g. a study's rows at one layer).
        state: (d,) the new state, already in the same precision as ``states``.
        max_components: Most components used for distances.

    Raises:
        ValueError: the shapes do not fit, or N < 3.
        DataError: the states are constant (no spread to place a state in).

    """
    x = np.asarray(states, dtype=np.float64)
    v = np.asarray(state, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3 or v.shape != x.shape[1:]:
        raise ValueError(f"need (N ≥ 3, d) states and a (d,) state, got {x.shape} and {v.shape}")
    fit = pca_fit(x, min(max_components, x.shape[0] - 1))
    var = fit.variance
    k = int((var > var[0] * 1e-9).sum()) if var[0] > 0 else 0
    if k < 1:
        raise DataError("The states are identical: there is no spread to place a state in.")
    scores, point = fit.scores[:, :k], fit.transform(v)[:k]
    d_all = np.sqrt(((scores[:, None, :] - scores[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d_all, np.inf)
    study_nn = d_all.min(axis=1)
    d_new = np.sqrt(((scores - point) ** 2).sum(-1))
    nearest = int(np.argmin(d_new))
    two, p2 = np.zeros((x.shape[0], 2)), np.zeros(2)
    two[:, : min(2, k)] = scores[:, : min(2, k)]
    p2[: min(2, k)] = point[: min(2, k)]
    return Placement(
        scores=two, point=p2, explained_ratio=fit.explained_ratio[:2], n_components=k,
        nearest_distance=float(d_new[nearest]), nearest_index=nearest, study_nn_distances=study_nn,
        mahalanobis=float(np.sqrt((point**2 / var[:k]).sum())),
        nn_percentile=float(100.0 * (study_nn < d_new[nearest]).mean()),
    )
