"""Repeated-split check of a Learn-then-Test guarantee: how often the realised error exceeded α.

Each of K seeded random splits fits :func:`~ic_core.stats.risk_control.learn_then_test` on
the calibration part and measures, on the rest, the error among approved answers and the
coverage. The exceedance rate (share of splits whose realised error is above α) should be
at most δ within simulation error. The realised error on a finite test part also carries
that part's own sampling noise, so this count over-states exceedance of the true risk:
a rate ≤ δ is evidence for the guarantee, a rate slightly above δ on a small test part is
not by itself evidence against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ic_core.errors import DataError
from ic_core.stats.risk_control import (
    MIN_COVERAGE,
    N_GRID,
    approve,
    as_scores_labels,
    check_levels,
    learn_then_test,
    zero_error_items,
)

N_SPLITS = 200
"""Random calibration/test splits by default."""
MIN_TEST = 10
"""Fewer test items per split than this → refused."""


@dataclass(frozen=True, eq=False)
class SplitSimulation:
    """K repeated calibration/test splits of one signal; per-split arrays have shape (K,)."""

    alpha: float
    delta: float
    method: str
    direction: str
    n_splits: int
    """K."""
    n_calibration: int
    """Calibration items per split."""
    n_test: int
    """Test items per split."""
    seed: int
    """Seed of the split generator."""
    thresholds: np.ndarray
    """(K,) certified threshold per split (NaN when none)."""
    realised_errors: np.ndarray
    """(K,) error among approved test items (NaN when nothing was approved)."""
    coverages: np.ndarray
    """(K,) share of test items approved (0 when no threshold was certified)."""

    @property
    def exceeded(self) -> np.ndarray:
        """(K,) bool: realised error above α (a split that approves nothing cannot exceed)."""
        return np.nan_to_num(self.realised_errors, nan=0.0) > self.alpha

    @property
    def exceedance_rate(self) -> float:
        """Share of splits whose realised error exceeded α."""
        return float(self.exceeded.mean())

    @property
    def exceedance_se(self) -> float:
        """Binomial standard error of ``exceedance_rate`` over the K splits."""
        p = self.exceedance_rate
        return math.sqrt(p * (1.0 - p) / self.n_splits)

    @property
    def share_certified(self) -> float:
        """Share of splits where a threshold was certified."""
        return float(np.isfinite(self.thresholds).mean())

    @property
    def mean_coverage(self) -> float:
        """Mean test coverage over all splits (uncertified splits count as 0)."""
        return float(self.coverages.mean())

    @property
    def mean_realised_error(self) -> float | None:
        """Mean error among approved over the splits that approved something."""
        have = np.isfinite(self.realised_errors)
        return float(self.realised_errors[have].mean()) if have.any() else None

    @property
    def within_delta(self) -> bool:
        """Whether the exceedance rate is at most δ + 3 standard errors."""
        return self.exceedance_rate <= self.delta + 3.0 * self.exceedance_se

    def text(self) -> str:
        """One line for the CLI and the page."""
        return (f"{self.n_splits} splits ({self.n_calibration} calibration / {self.n_test} test): realised error "
                f"> α = {self.alpha:g} in {self.exceedance_rate:.1%} ± {self.exceedance_se:.1%} of splits "
                f"(δ = {self.delta:g}); certified in {self.share_certified:.0%}, mean coverage {self.mean_coverage:.1%}")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (per-split arrays left out)."""
        mre = self.mean_realised_error
        return {"alpha": self.alpha, "delta": self.delta, "method": self.method, "direction": self.direction,
                "n_splits": self.n_splits, "n_calibration": self.n_calibration, "n_test": self.n_test,
                "seed": self.seed, "exceedance_rate": round(self.exceedance_rate, 6),
                "exceedance_se": round(self.exceedance_se, 6), "share_certified": round(self.share_certified, 6),
                "mean_coverage": round(self.mean_coverage, 6),
                "mean_realised_error": None if mre is None else round(mre, 6), "within_delta": self.within_delta}


def _check_sizes(n: int, n_cal: int, alpha: float, delta: float, method: str) -> None:
    """Refuse splits too small to test or to ever certify, with the figure that would be needed."""
    if n_cal < 1 or n - n_cal < MIN_TEST:
        raise DataError(f"n too small: {n} items cannot give {n_cal} calibration items and ≥ {MIN_TEST} test items.")
    m0 = zero_error_items(alpha, delta, method)
    if m0 is None or n_cal < m0:
        raise DataError(f"n too small: {n_cal} calibration items cannot certify α = {alpha:g} at δ = {delta:g} "
                        f"even with no errors (need ≥ {m0} approved items).")


def simulate_splits(
    scores: Any, correct: Any, *, alpha: float, delta: float, direction: str = "le",
    method: str = "clopper_pearson", n_splits: int = N_SPLITS, n_calibration: int | None = None, seed: int = 0,
    min_coverage: float = MIN_COVERAGE, n_grid: int = N_GRID,
) -> SplitSimulation:
    """Fit LTT on K random calibration parts and measure the realised error and coverage on the rest.

    Args:
        scores: (n,) signal score of every item. correct: (n,) 0/1 or bool correctness.
        alpha, delta, direction, method: As :func:`~ic_core.stats.risk_control.learn_then_test`.
        n_splits: K. n_calibration: Calibration items per split (default: half the items).
        seed: Seed of the split generator. min_coverage, n_grid: The default LTT grid.

    Raises:
        DataError: bad inputs, or n too small to test or to certify α at all.

    """
    check_levels(alpha, delta, direction, method)
    s, c = as_scores_labels(scores, correct)
    n_cal = s.size // 2 if n_calibration is None else int(n_calibration)
    _check_sizes(int(s.size), n_cal, alpha, delta, method)
    if n_splits < 1:
        raise DataError(f"n_splits must be at least 1 (got {n_splits}).")
    rng = np.random.default_rng(seed)
    thresholds = np.full(n_splits, np.nan)
    errors = np.full(n_splits, np.nan)
    coverages = np.zeros(n_splits)
    for i in range(n_splits):
        perm = rng.permutation(s.size)
        cal, test = perm[:n_cal], perm[n_cal:]
        fit = learn_then_test(s[cal], c[cal], alpha=alpha, delta=delta, direction=direction, method=method,
                              min_coverage=min_coverage, n_grid=n_grid)
        if fit.threshold is None:
            continue
        ok = approve(s[test], fit.threshold, direction)
        thresholds[i], coverages[i] = fit.threshold, ok.mean()
        if ok.any():
            errors[i] = float((~c[test][ok]).mean())
    return SplitSimulation(alpha=alpha, delta=delta, method=method, direction=direction, n_splits=n_splits,
                           n_calibration=n_cal, n_test=int(s.size - n_cal), seed=seed, thresholds=thresholds,
                           realised_errors=errors, coverages=coverages)
