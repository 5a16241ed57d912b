"""Out-of-distribution distance of a read-out state from a policy's calibration states.

The model: a PCA of the calibration states (:func:`~ic_core.stats.geometry.pca_fit`) to k
dimensions, a Mahalanobis distance in those k dimensions with a Ledoit–Wolf shrunk
covariance, plus the squared distance off the PCA plane divided by the mean residual
variance per remaining dimension (the probabilistic-PCA covariance: k components plus
isotropic noise), so a shift along a direction the first k components do not span is
still seen, though with less power than a shift along them. The threshold is a split-conformal quantile: the model is fitted on one part of the
calibration states and the threshold is the ⌈(m + 1)(1 − ε)⌉-th smallest distance of the
m others, so a new state exchangeable with the calibration states is flagged outside with
probability at most ε. The model is stored as plain JSON (lists of floats, no pickle),
bounded to ``MAX_OOD_FLOATS`` numbers so a policy file stays small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ic_core.errors import DataError
from ic_core.stats.geometry import pca_fit

OOD_KIND = "pca_mahalanobis"
OOD_VERSION = 1
N_COMPONENTS = 10
"""PCA dimensions by default (fewer when the states span fewer)."""
OUTSIDE_RATE = 0.05
"""ε: share of in-distribution states allowed to be flagged outside."""
FIT_FRACTION = 0.5
"""Share of the calibration states the PCA and covariance are fitted on (the rest set the threshold)."""
MAX_OOD_FLOATS = 25_000
"""Numbers a stored model may hold (mean, components, precision): ≈ 300 kB of JSON at most."""
SIGNIFICANT_DIGITS = 8
"""Digits kept per stored float."""


def _rounded(x: np.ndarray) -> list[Any]:
    """Nested lists of floats rounded to ``SIGNIFICANT_DIGITS`` significant digits."""
    return np.vectorize(lambda v: float(f"{v:.{SIGNIFICANT_DIGITS}g}"), otypes=[float])(x).tolist()


def ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit–Wolf shrinkage of the covariance of centred rows ``z`` (n, k) towards a scaled identity.

    Returns:
        (shrunk covariance (k, k), shrinkage in [0, 1]).

    """
    n, k = z.shape
    s = z.T @ z / n
    mu = float(np.trace(s)) / k
    target = mu * np.eye(k)
    d2 = float(np.sum((s - target) ** 2))
    if d2 <= 0.0:
        return target, 1.0
    b2 = float(sum(np.sum((np.outer(row, row) - s) ** 2) for row in z)) / n**2
    shrink = min(b2, d2) / d2
    return shrink * target + (1.0 - shrink) * s, shrink


@dataclass(frozen=True, eq=False)
class OODModel:
    """Distance model of calibration states (d = state width, k = PCA dimensions)."""

    mean: np.ndarray
    """(d,) mean of the fitted states."""
    components: np.ndarray
    """(k, d) PCA directions."""
    precision: np.ndarray
    """(k, k) inverse of the shrunk covariance of the PCA scores."""
    residual_scale: float
    """Mean squared distance off the PCA plane per remaining dimension on the fitted states (0: not used)."""
    threshold: float
    """Distance above which a state is outside (conformal quantile)."""
    outside_rate: float
    """ε the threshold was calibrated for."""
    shrinkage: float
    """Ledoit–Wolf shrinkage used."""
    n_fit: int
    """States the PCA and covariance were fitted on."""
    n_calibration: int
    """States the threshold was set on."""

    def __post_init__(self) -> None:
        """Check shapes, finiteness and the size bound (a stored model is untrusted input)."""
        d, k = self.mean.shape[0] if self.mean.ndim == 1 else -1, self.components.shape[0]
        if d < 1 or self.components.shape != (k, d) or self.precision.shape != (k, k) or k < 1:
            raise DataError("OOD model: mean, components and precision have inconsistent shapes.")
        if d * (k + 1) + k * k > MAX_OOD_FLOATS:
            raise DataError(f"OOD model: {d * (k + 1) + k * k} numbers exceed the bound of {MAX_OOD_FLOATS}.")
        arrays = (self.mean, self.components, self.precision)
        if not all(np.isfinite(a).all() for a in arrays) or not math.isfinite(self.threshold):
            raise DataError("OOD model: non-finite numbers.")
        if not (0.0 < self.outside_rate < 1.0) or self.residual_scale < 0 or self.threshold < 0:
            raise DataError("OOD model: outside_rate must lie in (0, 1), residual_scale and threshold be ≥ 0.")

    @property
    def d(self) -> int:
        """State width."""
        return int(self.mean.shape[0])

    @property
    def k(self) -> int:
        """PCA dimensions."""
        return int(self.components.shape[0])

    def distances(self, states: Any) -> np.ndarray:
        """(M,) distances of states (M, d) (or one state (d,)) from the calibration states.

        Raises:
            DataError: wrong width or non-finite states.

        """
        x = np.atleast_2d(np.asarray(states, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != self.d:
            raise DataError(f"OOD model expects states of width {self.d}, got shape {np.shape(states)}.")
        if not np.isfinite(x).all():
            raise DataError("A state holds NaN or inf: it cannot be placed against the calibration states.")
        centred = x - self.mean
        z = centred @ self.components.T
        sq = np.einsum("ij,jk,ik->i", z, self.precision, z)
        if self.residual_scale > 0:
            resid = centred - z @ self.components
            sq = sq + np.sum(resid**2, axis=1) / self.residual_scale
        return np.sqrt(np.maximum(sq, 0.0))

    def distance(self, state: Any) -> float:
        """Distance of one state (d,)."""
        return float(self.distances(state)[0])

    def is_outside(self, state: Any) -> bool:
        """Whether one state lies farther than the calibrated threshold."""
        return self.distance(state) > self.threshold

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (lists of floats) that :meth:`from_json` reads back."""
        return {
            "kind": OOD_KIND, "version": OOD_VERSION, "d": self.d, "k": self.k,
            "mean": _rounded(self.mean), "components": _rounded(self.components),
            "precision": _rounded(self.precision), "residual_scale": float(f"{self.residual_scale:.8g}"),
            "threshold": float(f"{self.threshold:.8g}"), "outside_rate": self.outside_rate,
            "shrinkage": round(self.shrinkage, 8), "n_fit": self.n_fit, "n_calibration": self.n_calibration,
        }

    @classmethod
    def from_json(cls, data: Any) -> OODModel:
        """Read a stored model, checking kind, version, shapes, size and finiteness.

        Raises:
            DataError: anything malformed, in one line.

        """
        if not isinstance(data, dict) or data.get("kind") != OOD_KIND or data.get("version") != OOD_VERSION:
            raise DataError(f"Not an OOD model of kind {OOD_KIND!r}, version {OOD_VERSION}.")
        d, k = data.get("d"), data.get("k")
        if not (isinstance(d, int) and isinstance(k, int)) or d < 1 or k < 1 or d * (k + 1) + k * k > MAX_OOD_FLOATS:
            raise DataError(f"OOD model: sizes d, k missing or beyond the bound of {MAX_OOD_FLOATS} numbers.")
        try:
            arrays = [np.asarray(data[key], dtype=np.float64) for key in ("mean", "components", "precision")]
            scalars = [float(data[key]) for key in ("residual_scale", "threshold", "outside_rate", "shrinkage")]
            counts = [int(data[key]) for key in ("n_fit", "n_calibration")]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"OOD model: a field is missing or not numeric ({exc}).") from None
        if arrays[0].shape != (d,):
            raise DataError("OOD model: mean, components and precision have inconsistent shapes.")
        return cls(*arrays, *scalars, *counts)


def _fit_plane(x: np.ndarray, n_components: int) -> tuple[Any, np.ndarray, float, float]:
    """PCA of the fitted states, shrunk precision of their scores, residual scale and shrinkage."""
    d = x.shape[1]
    k = min(n_components, x.shape[0] - 1, d)
    while k > 0 and d * (k + 1) + k * k > MAX_OOD_FLOATS:
        k -= 1
    if k == 0:
        raise DataError(f"States of width {d} are too wide for a stored distance model (bound {MAX_OOD_FLOATS}).")
    fit = pca_fit(x, k)
    if not np.any(fit.variance > 0):
        raise DataError("The calibration states are all the same: no distance model can be fitted.")
    spanned = int(np.sum(fit.variance > 1e-12 * fit.variance.max()))
    if spanned < fit.components.shape[0]:  # directions without variance would make the covariance singular
        fit = pca_fit(x, spanned)
    cov, shrink = ledoit_wolf(fit.scores)
    resid = (x - fit.mean) - fit.scores @ fit.components
    rest = max(1, x.shape[1] - fit.components.shape[0])
    scale = float(np.mean(np.sum(resid**2, axis=1))) / rest
    total = float(np.sum((x - fit.mean) ** 2)) / x.shape[0]
    return fit, np.linalg.inv(cov), scale if scale > 1e-12 * total else 0.0, shrink


def conformal_threshold(calibration_distances: Any, outside_rate: float) -> float:
    """The ⌈(m + 1)(1 − ε)⌉-th smallest of m distances (split-conformal quantile).

    Raises:
        DataError: too few distances for this ε (need m ≥ (1 − ε)/ε).

    """
    dist = np.sort(np.asarray(calibration_distances, dtype=np.float64))
    m = dist.size
    rank = math.ceil((m + 1) * (1.0 - outside_rate) - 1e-9)
    if rank > m:
        need = math.ceil((1.0 - outside_rate) / outside_rate - 1e-9)
        raise DataError(f"Too few calibration states to set the outside threshold at ε = {outside_rate:g}: "
                        f"{m} held back, need ≥ {need}.")
    return float(dist[rank - 1])


def fit_ood(
    states: Any, *, n_components: int = N_COMPONENTS, outside_rate: float = OUTSIDE_RATE,
    fit_fraction: float = FIT_FRACTION, seed: int = 0,
) -> OODModel:
    """Fit the distance model on part of the calibration states and set the threshold on the rest.

    Args:
        states: (N, d) read-out states of the calibration items.
        n_components: PCA dimensions (capped by the states and by ``MAX_OOD_FLOATS``).
        outside_rate: ε, the share of in-distribution states allowed to be flagged.
        fit_fraction: Share of states used to fit (the rest calibrate the threshold).
        seed: Seed of the fit/threshold split.

    Raises:
        DataError: not an (N, d) finite matrix, too few states, constant states, ε out of range.

    """
    x = np.asarray(states, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise DataError(f"Calibration states must be a finite (N, d) matrix, got shape {x.shape}.")
    if not (0.0 < outside_rate < 1.0) or not (0.0 < fit_fraction < 1.0):
        raise DataError("outside_rate and fit_fraction must lie strictly between 0 and 1.")
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    n_fit = int(round(fit_fraction * x.shape[0]))
    if n_fit < 2 or x.shape[0] - n_fit < 1:
        raise DataError(f"Too few calibration states for a distance model: {x.shape[0]}.")
    fit, precision, scale, shrink = _fit_plane(x[perm[:n_fit]], n_components)
    model = OODModel(fit.mean, fit.components, precision, scale, 0.0, outside_rate, shrink, n_fit,
                     x.shape[0] - n_fit)
    threshold = conformal_threshold(model.distances(x[perm[n_fit:]]), outside_rate)
    return OODModel(fit.mean, fit.components, precision, scale, threshold, outside_rate, shrink, n_fit,
                    x.shape[0] - n_fit)
