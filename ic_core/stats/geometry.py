"""Geometry of a set of states: participation ratio (dim_eff), PCA, constant layers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def pca(x: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of rows of ``x`` (N, d).

    Returns:
        (scores (N, k), components (k, d), mean (d,), explained variance ratio (k,)).

    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(n_components, vt.shape[0])
    var = s**2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return centred @ vt[:k].T, vt[:k], mean, ratio
