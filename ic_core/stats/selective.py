"""Selective-prediction statistics: AURC, E-AURC, AUGRC with bootstrap CIs; ECE, Brier, reliability bins.

A signal is judged as a gate: approve the items it trusts most and measure the errors among
them. ``scores_correct`` is larger = more likely correct (the AUROC convention of
:mod:`ic_core.stats.auroc`). Items with tied scores are approved together; the curves use
the expected error count under a random order within a tie, so no result depends on the
input order. Bootstrap CIs resample items with :func:`~ic_core.stats.auroc.bootstrap_indices`
(same seed, same resamples) and use its percentile interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ic_core.errors import DataError
from ic_core.stats.auroc import MIN_TOTAL, N_BOOT, REASON_SMALL, bootstrap_indices, percentile_ci, round_or_none

Binning = Literal["equal_width", "equal_mass"]
N_BINS = 10
"""Reliability bins by default."""


def _as_arrays(scores: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """Finite float scores and bool labels of the same length, or a one-line DataError."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    c = np.asarray(correct).astype(bool).ravel()
    if s.shape != c.shape:
        raise DataError(f"Scores ({s.size}) and correctness labels ({c.size}) are not aligned.")
    if s.size == 0:
        raise DataError("No graded items: selective-prediction statistics need at least one.")
    if not np.isfinite(s).all():
        raise DataError("Some scores are not finite (NaN or inf): drop those items first.")
    return s, c


def expected_errors(scores_correct: Any, correct: Any) -> np.ndarray:
    """(n,) expected wrong answers among the k most trusted items, k = 1 … n (ties shared pro rata)."""
    s, c = _as_arrays(scores_correct, correct)
    order = np.argsort(-s, kind="stable")
    s_sorted, wrong = s[order], (~c[order]).astype(np.float64)
    _, start, size = np.unique(s_sorted, return_index=True, return_counts=True)
    start, size = start[np.argsort(start)], size[np.argsort(start)]
    group_err = np.add.reduceat(wrong, start)
    err_before = np.concatenate([[0.0], np.cumsum(group_err)[:-1]])
    group = np.repeat(np.arange(start.size), size)
    k = np.arange(1, s.size + 1)
    return err_before[group] + (k - start[group]) * (group_err / size)[group]


def aurc(scores_correct: Any, correct: Any) -> float:
    """Area under the risk–coverage curve: mean over k = 1 … n of the error among the k most trusted."""
    e = expected_errors(scores_correct, correct)
    return float(np.mean(e / np.arange(1, e.size + 1)))


def optimal_aurc(n: int, n_errors: int) -> float:
    """AURC of a perfect ranking (all correct first): (1/n) Σ_{k > n_c} (k − n_c)/k with n_c = n − n_errors."""
    k = np.arange(1, n + 1)
    return float(np.mean(np.maximum(0, k - (n - n_errors)) / k))


def eaurc(scores_correct: Any, correct: Any) -> float:
    """Excess AURC: AURC minus the AURC of a perfect ranking of the same labels (0 = perfect)."""
    c = np.asarray(correct).astype(bool).ravel()
    return aurc(scores_correct, c) - optimal_aurc(c.size, int((~c).sum()))


def augrc(scores_correct: Any, correct: Any) -> float:
    """Area under the generalized risk–coverage curve (Traub et al. 2024).

    The generalized risk at coverage k/n is the share of *all* items that are approved and
    wrong, E_k / n; the area is the trapezoid rule from (0, 0) to (1, error rate). It equals
    π(1 − π)(1 − AUROC) + (1 − π)²/2 exactly, π the accuracy (ties count ½ in both).
    """
    e = np.concatenate([[0.0], expected_errors(scores_correct, correct)])
    n = e.size - 1
    return float(np.sum((e[1:] + e[:-1]) / 2.0) / (n * n))


# --------------------------------------------------------------------------------------
# Estimates with bootstrap CIs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectiveEstimate:
    """One selective-prediction statistic of one signal, with its bootstrap 95 % CI (lower is better)."""

    name: str
    """The signal, e.g. ``"−H_int"``."""
    metric: str
    """``"AURC"``, ``"E-AURC"`` or ``"AUGRC"``."""
    value: float | None
    """The statistic on all items; ``None`` exactly when ``reason`` says why."""
    ci_low: float | None
    ci_high: float | None
    n: int
    n_errors: int
    n_boot_used: int = 0
    reason: str | None = None

    def ci_text(self) -> str:
        """``"0.123 [0.101, 0.150]"`` or the reason."""
        if self.value is None:
            return self.reason or "not computed"
        if self.ci_low is None or self.ci_high is None:
            return f"{self.value:.3f} [CI not available]"
        return f"{self.value:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures."""
        ci = None if self.ci_low is None else [round_or_none(self.ci_low), round_or_none(self.ci_high)]
        return {"name": self.name, "metric": self.metric, "value": round_or_none(self.value), "ci95": ci,
                "n": self.n, "n_errors": self.n_errors, "n_boot_used": self.n_boot_used, "reason": self.reason}


@dataclass(frozen=True)
class SelectiveSummary:
    """AURC, E-AURC and AUGRC of one signal on the same items and the same bootstrap resamples."""

    aurc: SelectiveEstimate
    eaurc: SelectiveEstimate
    augrc: SelectiveEstimate

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures of the three estimates."""
        return {"aurc": self.aurc.to_json(), "eaurc": self.eaurc.to_json(), "augrc": self.augrc.to_json()}


def _three(s: np.ndarray, c: np.ndarray) -> tuple[float, float, float]:
    """(AURC, E-AURC, AUGRC) of one sample."""
    a = aurc(s, c)
    return a, a - optimal_aurc(c.size, int((~c).sum())), augrc(s, c)


def selective_summary(
    scores_correct: Any, correct: Any, *, name: str = "", n_boot: int = N_BOOT, seed: int = 0, groups: Any = None
) -> SelectiveSummary:
    """AURC, E-AURC and AUGRC with percentile bootstrap 95 % CIs (items, or whole groups, resampled).

    Fewer than ``MIN_TOTAL`` items give no estimates (``reason="n too small"``).

    Raises:
        DataError: no items, misaligned or non-finite inputs.

    """
    s, c = _as_arrays(scores_correct, correct)
    n, n_err = int(s.size), int((~c).sum())
    metrics = ("AURC", "E-AURC", "AUGRC")
    if n < MIN_TOTAL:
        return SelectiveSummary(*(SelectiveEstimate(name, m, None, None, None, n, n_err, reason=REASON_SMALL)
                                  for m in metrics))
    point = _three(s, c)
    boots = np.array([_three(s[idx], c[idx]) for idx in bootstrap_indices(n, n_boot, seed, groups)])
    out = []
    for j, metric in enumerate(metrics):
        low, high = percentile_ci(list(boots[:, j]), n_boot, 0.95)
        out.append(SelectiveEstimate(name, metric, point[j], low, high, n, n_err, n_boot_used=len(boots)))
    return SelectiveSummary(*out)


# --------------------------------------------------------------------------------------
# Calibration of probability signals
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Reliability diagram data of a P(correct) signal; per-bin arrays have shape (n_bins,)."""

    binning: str
    """``"equal_width"`` (bins of width 1/n_bins on [0, 1]) or ``"equal_mass"`` (≈ n/n_bins items each)."""
    n_bins: int
    edges: np.ndarray
    """(n_bins + 1,) bin edges (for equal mass: the lowest p of each bin, then the highest p)."""
    counts: np.ndarray
    """Items in each bin."""
    mean_confidence: np.ndarray
    """Mean predicted P(correct) in each bin (NaN for an empty bin)."""
    accuracy: np.ndarray
    """Share correct in each bin (NaN for an empty bin)."""
    n: int

    @property
    def ece(self) -> float:
        """Expected calibration error with this binning: Σ_b (n_b / n) · |accuracy_b − confidence_b|."""
        full = self.counts > 0
        gaps = np.abs(self.accuracy[full] - self.mean_confidence[full])
        return float(np.sum(self.counts[full] / self.n * gaps))

    @property
    def label(self) -> str:
        """The metric's name with its binning, e.g. ``"ECE (10 equal-width bins)"``."""
        return f"ECE ({self.n_bins} {self.binning.replace('_', '-')} bins)"


def _probabilities(p_correct: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities in [0, 1] and bool labels, or a one-line DataError."""
    p, c = _as_arrays(p_correct, correct)
    if p.min() < 0.0 or p.max() > 1.0:
        raise DataError("Calibration needs probabilities in [0, 1]; this signal is not one (calibrate it first).")
    return p, c


def _bin_members(p: np.ndarray, n_bins: int, binning: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Item indices of each bin and the bin edges."""
    if binning == "equal_width":
        which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
        return [np.flatnonzero(which == b) for b in range(n_bins)], np.linspace(0.0, 1.0, n_bins + 1)
    if binning == "equal_mass":
        parts = np.array_split(np.argsort(p, kind="stable"), n_bins)
        lows = [p[m[0]] if m.size else np.nan for m in parts]
        return parts, np.array([*lows, p.max()])
    raise DataError(f"Unknown binning {binning!r}: use 'equal_width' or 'equal_mass'.")


def reliability_bins(p_correct: Any, correct: Any, *, n_bins: int = N_BINS, binning: str = "equal_width") -> ReliabilityBins:
    """Bin a probability signal and compare mean confidence with accuracy in each bin.

    Equal width: bin b holds b/n_bins <= p < (b+1)/n_bins, the last bin closed at 1. Equal
    mass: items sorted by p (stable) and split into n_bins runs of as equal size as possible
    (tied p may straddle two bins).

    Raises:
        DataError: no items, misaligned inputs, p outside [0, 1], bad binning or n_bins < 1.

    """
    if n_bins < 1:
        raise DataError(f"n_bins must be at least 1 (got {n_bins}).")
    p, c = _probabilities(p_correct, correct)
    members, edges = _bin_members(p, n_bins, binning)
    counts = np.array([m.size for m in members])
    conf = np.array([p[m].mean() if m.size else np.nan for m in members])
    acc = np.array([c[m].mean() if m.size else np.nan for m in members])
    return ReliabilityBins(binning, n_bins, edges, counts, conf, acc, int(p.size))


def expected_calibration_error(p_correct: Any, correct: Any, *, n_bins: int = N_BINS,
                               binning: str = "equal_width") -> float:
    """ECE of a probability signal with the stated binning (see :func:`reliability_bins`)."""
    return reliability_bins(p_correct, correct, n_bins=n_bins, binning=binning).ece


def brier_score(p_correct: Any, correct: Any) -> float:
    """Mean squared difference between P(correct) and the 0/1 outcome (0 = perfect, 0.25 = always ½)."""
    p, c = _probabilities(p_correct, correct)
    return float(np.mean((p - c.astype(np.float64)) ** 2))
