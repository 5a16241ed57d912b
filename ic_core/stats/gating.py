"""Gating statistics on arrays: confusion, risk–coverage, threshold fitting, splits, calibration, held-out CIs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ic_core.errors import DataError
from ic_core.stats.auroc import N_BOOT

MIN_ITEMS_PER_SPLIT = 10
"""Fewer graded items than this in the training or held-out share is refused as "n too small"."""


# --------------------------------------------------------------------------------------
# Confusion, risk–coverage, threshold fitting (arrays only)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    """Outcome counts of a gate on labelled items.

    *Caught*: escalated and the answer was wrong. *Slipped*: approved although wrong.
    *Cost*: escalated although right (a human looked for nothing). *Approved right*: the
    gate let a correct answer through.
    """

    caught: int
    slipped: int
    cost: int
    approved_right: int

    @property
    def n(self) -> int:
        """Items counted."""
        return self.caught + self.slipped + self.cost + self.approved_right

    @property
    def n_escalated(self) -> int:
        """Items sent to a human."""
        return self.caught + self.cost

    @property
    def n_approved(self) -> int:
        """Items let through automatically."""
        return self.slipped + self.approved_right

    @property
    def escalation_rate(self) -> float | None:
        """Share escalated (None when no items)."""
        return self.n_escalated / self.n if self.n else None

    @property
    def error_among_approved(self) -> float | None:
        """Share wrong among the approved items (None when nothing was approved)."""
        return self.slipped / self.n_approved if self.n_approved else None

    @property
    def share_of_errors_caught(self) -> float | None:
        """Share of the wrong answers that were escalated (None when no answer was wrong)."""
        wrong = self.caught + self.slipped
        return self.caught / wrong if wrong else None

    def to_json(self) -> dict[str, Any]:
        """Counts and rates as a JSON-ready dict."""
        return {
            "n": self.n, "caught": self.caught, "slipped": self.slipped, "cost": self.cost,
            "approved_right": self.approved_right, "n_escalated": self.n_escalated,
            "n_approved": self.n_approved, "escalation_rate": self.escalation_rate,
            "error_among_approved": self.error_among_approved,
            "share_of_errors_caught": self.share_of_errors_caught,
        }


def _as_arrays(scores: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    c = np.asarray(correct)
    if c.dtype != bool:
        if c.dtype == object or not np.isin(c, (0, 1)).all():
            raise DataError("`correct` must be booleans (ungraded items removed first).")
        c = c.astype(bool)
    c = c.reshape(-1)
    if s.shape != c.shape:
        raise DataError(f"{s.size} scores but {c.size} correctness labels: they must be aligned.")
    if not np.isfinite(s).all():
        raise DataError("Scores contain NaN or infinite values.")
    return s, c


def confusion_from_decisions(escalate: Any, correct: Any) -> Confusion:
    """Count outcomes from per-item escalate flags (N,) and correctness (N,)."""
    e = np.asarray(escalate, dtype=bool).reshape(-1)
    c = np.asarray(correct, dtype=bool).reshape(-1)
    if e.shape != c.shape:
        raise DataError(f"{e.size} decisions but {c.size} correctness labels.")
    return Confusion(
        caught=int(np.sum(e & ~c)), slipped=int(np.sum(~e & ~c)),
        cost=int(np.sum(e & c)), approved_right=int(np.sum(~e & c)),
    )


def confusion_at(threshold: float, scores_risk: Any, correct: Any) -> Confusion:
    """The gate "escalate when risk > threshold" on labelled items.

    Args:
        threshold: Risk threshold (entropy bits, or ``-P(correct)``).
        scores_risk: (N,) risk scores.
        correct: (N,) booleans, whether each answer was right.

    """
    s, c = _as_arrays(scores_risk, correct)
    return confusion_from_decisions(s > threshold, c)


@dataclass(frozen=True)
class RiskCoverage:
    """Approve the least risky items first: at each distinct threshold, how many pass and how many of them are wrong.

    All arrays have shape (M,), one entry per distinct risk value (ties approved together),
    ordered by increasing threshold (increasing coverage).
    """

    thresholds: np.ndarray
    """Risk threshold t: items with risk <= t are approved."""
    coverage: np.ndarray
    """Share of items auto-approved at t."""
    error_among_approved: np.ndarray
    """Share wrong among the approved items at t."""
    n: int
    base_error: float
    """Error rate with no gate (coverage 1)."""

    @property
    def area(self) -> float:
        """Area under the curve, error among approved integrated over coverage (lower is better).

        A signal that ranks no better than chance scores about ``base_error``.
        """
        steps = np.diff(np.concatenate([[0.0], self.coverage]))
        return float(np.sum(steps * self.error_among_approved))


def risk_coverage(scores_risk: Any, correct: Any) -> RiskCoverage:
    """The risk–coverage curve of a risk score (see :class:`RiskCoverage`).

    Raises:
        DataError: no items, or misaligned inputs.

    """
    s, c = _as_arrays(scores_risk, correct)
    if s.size == 0:
        raise DataError("No graded items: the risk–coverage curve needs at least one.")
    order = np.argsort(s, kind="stable")
    s_sorted, wrong_sorted = s[order], (~c[order]).astype(np.int64)
    cum_wrong = np.cumsum(wrong_sorted)
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    idx = np.nonzero(last_of_tie)[0]
    n_approved = idx + 1
    return RiskCoverage(
        thresholds=s_sorted[idx], coverage=n_approved / s.size,
        error_among_approved=cum_wrong[idx] / n_approved, n=int(s.size),
        base_error=float(np.mean(~c)),
    )


@dataclass(frozen=True)
class ThresholdFit:
    """A risk threshold fitted on training items."""

    threshold: float | None
    """Approve when risk <= threshold; None means escalate everything (target not met)."""
    target_error: float
    target_met: bool
    train: Confusion
    """The fitted gate on the training items."""
    message: str
    """One plain sentence saying what was fitted."""


def _midpoint_above(value: float, sorted_unique: np.ndarray) -> float:
    """Halfway to the next larger training value (the value itself when it is the largest)."""
    higher = sorted_unique[sorted_unique > value]
    return float((value + higher[0]) / 2.0) if higher.size else float(value)


def fit_threshold(scores: Any, correct: Any, target_error: float, train_idx: Any) -> ThresholdFit:
    """The most permissive risk threshold whose error among approved training items is <= target.

    Only the items in ``train_idx`` are looked at. Among all thresholds that meet the target
    on them, the one approving the most items wins; it is placed halfway to the next larger
    training score so that it does not sit on a training value. If no threshold meets the
    target, the answer is to escalate everything (``threshold=None``), and the message says so.

    Args:
        scores: (N,) risk scores for all items.
        correct: (N,) booleans.
        target_error: Highest acceptable error rate among approved answers, in [0, 1).
        train_idx: Indices of the training items.

    Raises:
        DataError: bad target, empty training set, misaligned inputs.

    """
    if not 0.0 <= float(target_error) < 1.0:
        raise DataError(f"The target error rate must be in [0, 1); got {target_error}.")
    s, c = _as_arrays(scores, correct)
    idx = np.asarray(train_idx, dtype=np.int64)
    if idx.size == 0:
        raise DataError("No training items to fit a threshold on.")
    s_tr, c_tr = s[idx], c[idx]
    rc = risk_coverage(s_tr, c_tr)
    ok = np.nonzero(rc.error_among_approved <= target_error + 1e-12)[0]
    if ok.size == 0:
        train = confusion_from_decisions(np.ones(idx.size, bool), c_tr)
        msg = (f"No threshold keeps the error among approved training items at or below {target_error:.1%} "
               f"(lowest reachable: {float(rc.error_among_approved.min()):.1%}): escalate everything.")
        return ThresholdFit(None, float(target_error), False, train, msg)
    best = int(ok[-1])
    threshold = _midpoint_above(float(rc.thresholds[best]), rc.thresholds)
    train = confusion_at(threshold, s_tr, c_tr)
    msg = (f"Approves {train.n_approved} of {train.n} training items "
           f"(error among them {train.error_among_approved:.1%} <= target {target_error:.1%}).")
    return ThresholdFit(threshold, float(target_error), True, train, msg)


@dataclass(frozen=True)
class CombinedFit:
    """Two thresholds fitted together: escalate when the entropy OR the probe rule fires."""

    t_entropy_bits: float | None
    """Escalate when entropy > this (None: escalate everything)."""
    t_probe: float | None
    """Escalate when P(correct) < this (None: escalate everything)."""
    target_error: float
    target_met: bool
    train: Confusion
    message: str


def combined_escalate(entropy_bits: Any, p_correct: Any, t_entropy_bits: float, t_probe: float) -> np.ndarray:
    """(N,) escalate flags of the combined rule."""
    return (np.asarray(entropy_bits) > t_entropy_bits) | (np.asarray(p_correct) < t_probe)


def fit_combined(entropy_bits: Any, p_correct: Any, correct: Any, target_error: float, train_idx: Any) -> CombinedFit:
    """Grid search over both thresholds on training items: most approvals with error <= target.

    Candidate thresholds are midpoints between consecutive distinct training values (plus
    "everything passes" for each rule). Ties in the number approved go to the pair with the
    lower error among approved.
    """
    if not 0.0 <= float(target_error) < 1.0:
        raise DataError(f"The target error rate must be in [0, 1); got {target_error}.")
    h, c = _as_arrays(entropy_bits, correct)
    p, _ = _as_arrays(p_correct, correct)
    idx = np.asarray(train_idx, dtype=np.int64)
    if idx.size == 0:
        raise DataError("No training items to fit thresholds on.")
    h_tr, p_tr, c_tr = h[idx], p[idx], c[idx]
    hu, pu = np.unique(h_tr), np.unique(p_tr)
    t_h = np.r_[(hu[:-1] + hu[1:]) / 2.0, hu[-1]]  # approve h <= t_h
    t_p = np.r_[pu[0], (pu[:-1] + pu[1:]) / 2.0]  # approve p >= t_p
    approve_h = h_tr[None, :] <= t_h[:, None]  # (Th, n)
    approve_p = p_tr[None, :] >= t_p[:, None]  # (Tp, n)
    wrong = (~c_tr).astype(np.int64)
    approved = approve_h.astype(np.int64) @ approve_p.T.astype(np.int64)  # (Th, Tp)
    slipped = (approve_h * wrong).astype(np.int64) @ approve_p.T.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(approved > 0, slipped / np.maximum(approved, 1), np.inf)
    ok = err <= target_error + 1e-12
    if not ok.any():
        train = confusion_from_decisions(np.ones(idx.size, bool), c_tr)
        msg = f"No pair of thresholds keeps the training error among approved at or below {target_error:.1%}: escalate everything."
        return CombinedFit(None, None, float(target_error), False, train, msg)
    score = np.where(ok, approved * 1.0 - err * 1e-6, -np.inf)
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    t_e, t_pr = float(t_h[i]), float(t_p[j])
    train = confusion_from_decisions(combined_escalate(h_tr, p_tr, t_e, t_pr), c_tr)
    msg = (f"Approves {train.n_approved} of {train.n} training items "
           f"(error among them {train.error_among_approved:.1%} <= target {target_error:.1%}).")
    return CombinedFit(t_e, t_pr, float(target_error), True, train, msg)


# --------------------------------------------------------------------------------------
# Split, calibration, held-out evaluation
# --------------------------------------------------------------------------------------


def split_items(correct: Any, holdout: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of graded items into training and held-out indices.

    Returns:
        ``(train_idx, test_idx)``: sorted int arrays that partition ``range(N)``.

    Raises:
        DataError: holdout outside (0, 1), only one class, or n too small for either share.

    """
    from sklearn.model_selection import train_test_split

    c = np.asarray(correct, dtype=bool).reshape(-1)
    if not 0.0 < holdout < 1.0:
        raise DataError(f"The held-out share must be between 0 and 1; got {holdout}.")
    n_right, n_wrong = int(c.sum()), int((~c).sum())
    if n_right < 2 or n_wrong < 2:
        raise DataError(
            f"Only one class (or nearly): {n_right} right and {n_wrong} wrong answers. A gate needs at least "
            f"2 right and 2 wrong answers, and at least {2 * MIN_ITEMS_PER_SPLIT} graded items in all "
            f"({MIN_ITEMS_PER_SPLIT} to train, {MIN_ITEMS_PER_SPLIT} held out); use a larger or harder prompt set."
        )
    n_test = int(round(holdout * c.size))
    if n_test < MIN_ITEMS_PER_SPLIT or c.size - n_test < MIN_ITEMS_PER_SPLIT:
        raise DataError(
            f"n too small: {c.size} graded items give {c.size - n_test} training and {n_test} held-out items; "
            f"each share needs at least {MIN_ITEMS_PER_SPLIT}."
        )
    idx = np.arange(c.size)
    train, test = train_test_split(idx, test_size=n_test, stratify=c, random_state=seed)
    return np.sort(train), np.sort(test)


@dataclass(frozen=True)
class PlattCalibration:
    """``P = sigmoid(coef * logit(raw_p) + intercept)``, fitted on training items only."""

    coef: float
    intercept: float

    def apply(self, raw_p: Any) -> np.ndarray:
        """Calibrated probabilities, same shape as ``raw_p``."""
        z = self.coef * _logit(np.asarray(raw_p, dtype=np.float64)) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def fit_platt_on_scores(scores: Any, correct: Any) -> tuple[float, float]:
    """``(coef, intercept)`` of a one-feature logistic regression: P(correct) = sigmoid(coef·score + intercept).

    Raises:
        DataError: only one class among the items.

    """
    from sklearn.linear_model import LogisticRegression

    z, c = _as_arrays(scores, correct)
    if c.all() or not c.any():
        raise DataError("Only one class among the training items: the probe cannot be calibrated.")
    model = LogisticRegression(C=1e4, max_iter=1000).fit(z[:, None], c)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def fit_platt(raw_p: Any, correct: Any) -> PlattCalibration:
    """Platt scaling of raw probabilities (e.g. training items' out-of-fold P(correct)).

    Raises:
        DataError: only one class among the items.

    """
    p, c = _as_arrays(raw_p, correct)
    return PlattCalibration(*fit_platt_on_scores(_logit(p), c))


@dataclass(frozen=True)
class HeldOutReport:
    """A fitted gate evaluated on items it was not fitted on, with bootstrap 95 % CIs."""

    n: int
    confusion: Confusion
    escalation_rate: float
    escalation_rate_ci: tuple[float, float] | None
    error_among_approved: float | None
    """None when the gate approved nothing on the held-out items."""
    error_among_approved_ci: tuple[float, float] | None
    """None when fewer than half the resamples approved anything."""
    error_without_gate: float
    n_boot: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures (CIs as ``[low, high]``)."""
        return {
            "n_held_out": self.n,
            "escalation_rate": self.escalation_rate,
            "escalation_rate_ci95": list(self.escalation_rate_ci) if self.escalation_rate_ci else None,
            "error_among_approved": self.error_among_approved,
            "error_among_approved_ci95": list(self.error_among_approved_ci) if self.error_among_approved_ci else None,
            "error_without_gate": self.error_without_gate,
            "confusion": self.confusion.to_json(),
            "n_bootstrap": self.n_boot,
        }


def evaluate_held_out(escalate: Any, correct: Any, test_idx: Any, n_boot: int = N_BOOT, seed: int = 0) -> HeldOutReport:
    """Evaluate per-item gate decisions on the held-out items only.

    Args:
        escalate: (N,) escalate flags for all items (only ``test_idx`` entries are read).
        correct: (N,) booleans.
        test_idx: Indices of the held-out items.
        n_boot: Bootstrap resamples of the held-out items.
        seed: Bootstrap seed.

    Raises:
        DataError: no held-out items.

    """
    idx = np.asarray(test_idx, dtype=np.int64)
    if idx.size == 0:
        raise DataError("No held-out items to evaluate on.")
    e = np.asarray(escalate, dtype=bool).reshape(-1)[idx]
    c = np.asarray(correct, dtype=bool).reshape(-1)[idx]
    conf = confusion_from_decisions(e, c)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, idx.size, size=(n_boot, idx.size))
    e_b, w_b = e[draws], ~c[draws]
    esc_rates = e_b.mean(axis=1)
    n_app = (~e_b).sum(axis=1)
    slipped = (~e_b & w_b).sum(axis=1)
    valid = n_app > 0
    err_ci = None
    if valid.sum() >= n_boot / 2:
        errs = slipped[valid] / n_app[valid]
        err_ci = (float(np.percentile(errs, 2.5)), float(np.percentile(errs, 97.5)))
    esc_ci = (float(np.percentile(esc_rates, 2.5)), float(np.percentile(esc_rates, 97.5)))
    return HeldOutReport(
        n=int(idx.size), confusion=conf, escalation_rate=float(conf.escalation_rate or 0.0),
        escalation_rate_ci=esc_ci, error_among_approved=conf.error_among_approved,
        error_among_approved_ci=err_ci if conf.n_approved else None,
        error_without_gate=float(np.mean(~c)), n_boot=int(n_boot),
    )
