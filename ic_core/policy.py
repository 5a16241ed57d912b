"""Governance policies: a versioned JSON document, and fitting its thresholds on labelled items.

A *policy* says when a pre-generation gate escalates a prompt to a human instead of letting
the model's answer through: when the entropy at the read-out is too high (``h_int`` raw, or
``h_slot`` after the template's forced answer prefix), when a saved probe's calibrated
P(correct) is too low (``probe``), or when either fires (``combined``).

Thresholds are fitted on a *training* share of a labelled study run and reported on the
*held-out* rest, with bootstrap 95 % confidence intervals. Everything here works on plain
arrays; :func:`fit_policy_on_run` ties it to a saved run.

Conventions: a *risk score* is larger when the answer is more likely wrong (entropy in bits,
or ``-P(correct)``); an item is **approved** when its risk is ``<= threshold`` and
**escalated** otherwise.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ic_core.errors import DataError

FORMAT_VERSION = 1
SIGNALS: tuple[str, ...] = ("h_int", "h_slot", "probe", "combined")
Signal = Literal["h_int", "h_slot", "probe", "combined"]
PrefixMode = Literal["none", "fixed", "per_item"]
MIN_ITEMS_PER_SPLIT = 10
"""Fewer graded items than this in the training or held-out share is refused as "n too small"."""
N_BOOT = 1000


class ModelMismatchError(DataError):
    """The policy was fitted on another model than the one loaded."""


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
            f"Only one class (or nearly): {n_right} right and {n_wrong} wrong answers. A gate needs both "
            "right and wrong answers on training and held-out items; use a larger or harder prompt set."
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


# --------------------------------------------------------------------------------------
# The policy document
# --------------------------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Policy:
    """A gate policy: which signal, which thresholds, and what they were fitted with.

    Stored as JSON only (:meth:`to_json` / :meth:`from_json`); ``policy_id`` is a hash of the
    content (everything but ``policy_id`` and ``created``), so any edit changes it.
    """

    signal: Signal
    """``h_int``, ``h_slot``, ``probe`` or ``combined`` (escalate if either rule fires)."""
    model: dict[str, Any]
    """ModelSpec dict of the model the thresholds were fitted on."""
    regime: str = "direct"
    """Regime of the prompts the policy was fitted on (``direct``, ``cot``, ``babble``, ``custom``)."""
    kind: str = "short_answer"
    """Task kind (picks the template wording)."""
    template_user: str | None = None
    """A custom user template (``{question}``), or None for the regime's built-in template."""
    prefix_mode: PrefixMode = "none"
    """``none`` (read at the last prompt token: H_int), ``fixed`` (``answer_prefix`` for every
    prompt: H_slot), ``per_item`` (each prompt brings its own prefix, e.g. "The capital of X is")."""
    answer_prefix: str | None = None
    """The forced answer prefix when ``prefix_mode == "fixed"``."""
    t_entropy_bits: float | None = None
    """Escalate when the entropy at the read-out > this (signals h_int, h_slot, combined)."""
    entropy_signal: Literal["h_int", "h_slot"] | None = None
    """Which entropy the ``combined`` rule reads (equal to ``signal`` for h_int/h_slot)."""
    t_probe: float | None = None
    """Escalate when the calibrated P(correct) < this (signals probe, combined)."""
    escalate_all: bool = False
    """The target could not be met on training items: every prompt is escalated."""
    probe: dict[str, Any] | None = None
    """``{"path", "id", "platt_coef", "platt_intercept"}`` of the saved probe, if used."""
    model_n_layers: int | None = None
    model_d_model: int | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)
    """``run_path``, ``dataset``, ``n_train``, ``n_held_out``, ``n_ungraded_excluded``, ``holdout``, ``seed``."""
    target_error: float | None = None
    """Highest acceptable error among auto-approved answers the thresholds were fitted for."""
    held_out: dict[str, Any] = field(default_factory=dict)
    """Held-out figures with CIs (:meth:`HeldOutReport.to_json`)."""
    store_prompt_text: bool = False
    """When False the audit log keeps only the prompt's SHA-256."""
    created: str = field(default_factory=_now_iso)
    """UTC ISO time the policy was made."""
    format_version: int = FORMAT_VERSION
    policy_id: str = ""
    """Content hash; filled in automatically."""

    def __post_init__(self) -> None:
        _validate(self)
        if self.policy_id != self.content_hash():
            if self.policy_id:
                raise DataError(
                    f"policy_id {self.policy_id!r} does not match the policy's content: the file was edited "
                    "after it was made. Fit or save the policy again instead of editing it by hand."
                )
            object.__setattr__(self, "policy_id", self.content_hash())

    def content_hash(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON content (without id and time)."""
        body = {k: v for k, v in self._fields_dict().items() if k not in ("policy_id", "created")}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def _fields_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """The policy document (pretty-printed JSON)."""
        return json.dumps(self._fields_dict(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Policy:
        """Parse and validate a policy document.

        Raises:
            DataError: not JSON, not an object, unknown/missing fields, wrong types, bad values,
                or a ``policy_id`` that does not match the content.

        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"The policy file is not valid JSON: {exc}.") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        """Build from a parsed JSON object (validated; see :meth:`from_json`)."""
        if not isinstance(data, dict):
            raise DataError("A policy must be a JSON object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"Unknown policy fields: {', '.join(unknown)}.")
        missing = sorted(n for n in _REQUIRED_IN_FILE if n not in data)
        if missing:
            raise DataError(f"The policy is missing required fields: {', '.join(missing)}.")
        if data["format_version"] != FORMAT_VERSION:
            raise DataError(
                f"Policy format_version {data['format_version']!r} is not supported (this version reads {FORMAT_VERSION})."
            )
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Read a policy file.

        Raises:
            DataError: unreadable file or invalid document.

        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"Cannot read the policy file {str(p)!r}: {exc}.") from exc
        return cls.from_json(text)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the policy atomically (temporary file in the same folder, then rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @property
    def entropy_name(self) -> str | None:
        """``H_int`` or ``H_slot``: the entropy this policy reads, if any."""
        name = self.signal if self.signal in ("h_int", "h_slot") else self.entropy_signal
        return {"h_int": "H_int", "h_slot": "H_slot"}.get(name or "")

    @property
    def uses_probe(self) -> bool:
        """Whether a saved probe is needed at gate time."""
        return self.signal in ("probe", "combined")

    def describe(self) -> str:
        """One sentence: the rule."""
        if self.escalate_all:
            return "Escalate every prompt (the target error could not be met on the training items)."
        parts = []
        if self.t_entropy_bits is not None and self.signal in ("h_int", "h_slot", "combined"):
            parts.append(f"{self.entropy_name} > {self.t_entropy_bits:.2f} bits")
        if self.t_probe is not None and self.uses_probe:
            parts.append(f"probe P(correct) < {self.t_probe:.2f}")
        return "Escalate when " + " or ".join(parts) + "."


_REQUIRED_IN_FILE = ("format_version", "policy_id", "signal", "model", "regime", "kind", "prefix_mode", "created")

_TYPES: dict[str, tuple[type, ...]] = {
    "signal": (str,), "model": (dict,), "regime": (str,), "kind": (str,), "template_user": (str, type(None)),
    "prefix_mode": (str,), "answer_prefix": (str, type(None)), "t_entropy_bits": (int, float, type(None)),
    "entropy_signal": (str, type(None)), "t_probe": (int, float, type(None)), "escalate_all": (bool,),
    "probe": (dict, type(None)), "model_n_layers": (int, type(None)), "model_d_model": (int, type(None)),
    "fitted_on": (dict,), "target_error": (int, float, type(None)), "held_out": (dict,),
    "store_prompt_text": (bool,), "created": (str,), "format_version": (int,), "policy_id": (str,),
}


def _check_types(p: Policy) -> None:
    for name, types in _TYPES.items():
        value = getattr(p, name)
        # bool is an int subclass: refuse it where a number is expected, and vice versa.
        bad_bool = isinstance(value, bool) and bool not in types
        if bad_bool or not isinstance(value, types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise DataError(f"Policy field {name!r} must be {expected}; got {type(value).__name__} {value!r:.60}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"Policy field {name!r} must be a finite number; got {value!r}.")


def _validate(p: Policy) -> None:
    _check_types(p)
    if p.signal not in SIGNALS:
        raise DataError(f"Unknown policy signal {p.signal!r}; choose one of {', '.join(SIGNALS)}.")
    if p.prefix_mode not in ("none", "fixed", "per_item"):
        raise DataError(f"Unknown prefix_mode {p.prefix_mode!r}; use none, fixed or per_item.")
    if (p.prefix_mode == "fixed") != bool(p.answer_prefix):
        raise DataError("prefix_mode 'fixed' needs an answer_prefix, and only it may have one.")
    entropy = p.signal if p.signal in ("h_int", "h_slot") else p.entropy_signal
    if p.signal in ("h_int", "h_slot") and p.entropy_signal not in (None, p.signal):
        raise DataError(f"entropy_signal {p.entropy_signal!r} contradicts signal {p.signal!r}.")
    if p.signal == "combined" and entropy not in ("h_int", "h_slot"):
        raise DataError("A combined policy needs entropy_signal 'h_int' or 'h_slot'.")
    if entropy == "h_slot" and p.prefix_mode == "none":
        raise DataError("H_slot is read after a forced answer prefix, but the policy has none (prefix_mode 'none').")
    if entropy == "h_int" and p.prefix_mode != "none":
        raise DataError("H_int is read without an answer prefix, but the policy has one; use signal 'h_slot'.")
    if not p.escalate_all:
        if entropy is not None and p.signal != "probe" and p.t_entropy_bits is None:
            raise DataError(f"Signal {p.signal!r} needs t_entropy_bits.")
        if p.signal in ("probe", "combined") and p.t_probe is None:
            raise DataError(f"Signal {p.signal!r} needs t_probe.")
    if p.signal in ("probe", "combined"):
        if p.probe is None:
            raise DataError(f"Signal {p.signal!r} needs a probe entry (path, id and Platt calibration).")
        need = {"path", "id", "platt_coef", "platt_intercept"}
        if not need <= set(p.probe):
            raise DataError(f"The policy's probe entry needs {', '.join(sorted(need))}.")
    if p.target_error is not None and not 0.0 <= p.target_error < 1.0:
        raise DataError(f"target_error must be in [0, 1); got {p.target_error}.")
    for key in ("source", "name", "dtype"):
        if not isinstance(p.model.get(key), str):
            raise DataError(f"The policy's model entry needs a string {key!r} (a ModelSpec dict).")


def check_spec_matches(want: dict[str, Any], spec: Any, what: str) -> None:
    """Refuse a model spec whose source, name or dtype differs from ``want`` (the device may differ).

    Args:
        want: ModelSpec dict something was fitted on.
        spec: The ModelSpec in use.
        what: Names the fitted thing in the message, e.g. ``Policy 3ffe…``.

    Raises:
        ModelMismatchError: with both models named.

    """
    have_dict = spec.to_dict()
    keys = ("source", "name", "dtype")
    w = {k: want.get(k) for k in keys}
    h = {k: have_dict.get(k) for k in keys}
    if w != h:
        raise ModelMismatchError(
            f"{what} was fitted on model {w['name']} ({w['source']}, {w['dtype']}) but the loaded model is "
            f"{h['name']} ({h['source']}, {h['dtype']}); load that model (e.g. --model) or fit again on this one."
        )


def check_model_spec(policy: Policy, spec: Any) -> None:
    """Refuse a model spec other than the policy's (see :func:`check_spec_matches`)."""
    check_spec_matches(policy.model, spec, f"Policy {policy.policy_id}")


def check_model(policy: Policy, loaded: Any) -> None:
    """Refuse a gate whose loaded model is not the one the policy was fitted on.

    Compares the specs (:func:`check_model_spec`) and, when the policy records them, the layer
    count and width.

    Raises:
        ModelMismatchError: with both models named.

    """
    check_model_spec(policy, loaded.spec)
    for attr, name in (("model_n_layers", "n_layers"), ("model_d_model", "d_model")):
        expected = getattr(policy, attr)
        if expected is not None and expected != getattr(loaded, name):
            raise ModelMismatchError(
                f"Policy {policy.policy_id} expects {name}={expected} but the loaded model has {getattr(loaded, name)}."
            )


def probe_entry(path: str, probe_id: str, calibration: PlattCalibration) -> dict[str, Any]:
    """The ``probe`` field of a policy."""
    return {"path": str(path), "id": str(probe_id), **{f"platt_{k}": v for k, v in asdict(calibration).items()}}


def calibration_of(policy: Policy) -> PlattCalibration | None:
    """The Platt calibration stored in a policy's probe entry."""
    if policy.probe is None:
        return None
    return PlattCalibration(float(policy.probe["platt_coef"]), float(policy.probe["platt_intercept"]))


# --------------------------------------------------------------------------------------
# Fitting a policy on a saved study run
# --------------------------------------------------------------------------------------

ENTROPY_NAMES = {"h_int": "H_int", "h_slot": "H_slot"}
PROBE_OOF_FOLDS = 5
PROBE_INNER_FOLDS = 3


@dataclass(frozen=True, eq=False)
class RunSignals:
    """One regime of a study run, ready for gating: graded rows, entropy, labels and the split.

    Arrays have shape (n,), aligned with ``table`` (positional index 0..n-1).
    """

    run_path: str
    dataset: str
    regime: str
    kind: str
    table: Any
    """pandas DataFrame: the graded rows of this regime (columns of ``StudyRun.table``)."""
    correct: np.ndarray
    entropy_bits: np.ndarray
    """Entropy at each row's read-out, bits: H_slot when the row has an answer prefix, else H_int."""
    entropy_signal: Literal["h_int", "h_slot"]
    prefix_mode: PrefixMode
    answer_prefix: str | None
    train_idx: np.ndarray
    test_idx: np.ndarray
    holdout: float
    seed: int
    n_ungraded_excluded: int
    model: dict[str, Any]
    n_layers: int
    d_model: int

    @property
    def hidden_rows(self) -> np.ndarray:
        """(n,) indices into the run's ``hidden`` array."""
        return self.table["row"].to_numpy(np.int64)

    @property
    def entropy_name(self) -> str:
        """``H_int`` or ``H_slot``."""
        return ENTROPY_NAMES[self.entropy_signal]


def _prefix_mode(prefixes: Sequence[Any]) -> tuple[PrefixMode, str | None]:
    values = [p if isinstance(p, str) and p.strip() else None for p in prefixes]
    given = {p for p in values if p is not None}
    if not given:
        return "none", None
    if None in values:
        raise DataError(
            "This regime mixes rows read after an answer prefix (H_slot) with rows read without one (H_int); "
            "a gate needs one read-out. Run the study with or without prefixes for every item."
        )
    return ("fixed", given.pop()) if len(given) == 1 else ("per_item", None)


def run_signals(run: Any, regime: str | None = None, holdout: float = 0.4, seed: int = 0) -> RunSignals:
    """The graded rows of one regime of a run, their entropy and a stratified seeded split.

    Args:
        run: A loaded :class:`ic_core.study.StudyRun`.
        regime: Which regime (default: the only one, else ``direct``).
        holdout: Share of graded items held out for evaluation.
        seed: Split seed.

    Raises:
        DataError: unknown regime, mixed read-outs, one class or n too small.

    """
    table = run.table
    regimes = list(dict.fromkeys(table["regime"].tolist()))
    if regime is None:
        regime = regimes[0] if len(regimes) == 1 else "direct" if "direct" in regimes else None
        if regime is None:
            raise DataError(f"This run has regimes {', '.join(regimes)}: choose one (--regime).")
    if regime not in regimes:
        raise DataError(f"Regime {regime!r} is not in this run (it has {', '.join(regimes) or 'no rows'}).")
    sub = table[table["regime"] == regime]
    graded_mask = np.array([isinstance(v, (bool, np.bool_)) for v in sub["correct"]], dtype=bool)
    graded = sub[graded_mask].reset_index(drop=True)
    if graded.empty:
        raise DataError(f"No graded rows in regime {regime!r}: the gate needs answers marked right or wrong.")
    entropy = graded["h_int_bits"].to_numpy(np.float64)
    if not np.isfinite(entropy).all():
        raise DataError("Some rows have no finite entropy; the run folder is damaged.")
    mode, prefix = _prefix_mode(graded["answer_prefix"].tolist())
    correct = np.array([bool(v) for v in graded["correct"]], dtype=bool)
    train_idx, test_idx = split_items(correct, holdout, seed)
    kinds = graded["kind"].value_counts()
    m = run.manifest
    return RunSignals(
        run_path=str(run.path), dataset=str((m.get("dataset") or {}).get("name", "")), regime=regime,
        kind=str(kinds.index[0]), table=graded, correct=correct, entropy_bits=entropy,
        entropy_signal="h_int" if mode == "none" else "h_slot", prefix_mode=mode, answer_prefix=prefix,
        train_idx=train_idx, test_idx=test_idx, holdout=float(holdout), seed=int(seed),
        n_ungraded_excluded=int((~graded_mask).sum()), model=dict(m.get("model") or {}),
        n_layers=int(m["n_layers"]), d_model=int(m["d_model"]),
    )


@dataclass(frozen=True, eq=False)
class ProbeScores:
    """Calibrated P(correct) for every graded row, each scored by a probe that never saw it.

    Training rows get out-of-fold scores (nested CV on the training rows); held-out rows get
    the final probe (fitted on all training rows), so no row is scored by a probe fitted on it.
    """

    p_correct: np.ndarray
    """(n,) calibrated P(correct), aligned with :attr:`RunSignals.table`."""
    probe: Any
    """The :class:`ic_core.probes.SavedProbe` to use at gate time."""
    calibration: PlattCalibration
    """Maps the probe's raw P(correct) to the calibrated scale (fitted on training rows only)."""
    source: str
    """In words: how the probe was obtained."""
    path: str | None = None
    """Where the probe is saved (None until saved)."""


def _same_folder(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def probe_scores(run: Any, signals: RunSignals, probe: Any = None) -> ProbeScores:
    """P(correct) per graded row, without ever scoring a row with a probe fitted on it.

    Args:
        run: The loaded run (for its states).
        signals: :func:`run_signals` of the same run.
        probe: A saved probe fitted on *another* run (scores every row as it is; Platt-calibrated
            on the training rows). None fits the last-5-layers probe on the training rows only.

    Raises:
        DataError: a probe fitted on this run (it has seen the held-out rows), a probe of another
            model, or too few right/wrong training rows for a probe.

    """
    from ic_core import probes as pr

    hidden = np.asarray(run.hidden)[signals.hidden_rows]
    tr, te = signals.train_idx, signals.test_idx
    y = signals.correct.astype(int)
    if probe is not None:
        if _same_folder(str(getattr(probe, "run_path", "")), signals.run_path):
            raise DataError(
                f"Probe {probe.probe_id} was fitted on all items of this run, held-out ones included, so it "
                "cannot be evaluated here. Leave the probe out to fit one on the training items only, or use "
                "a probe fitted on another run."
            )
        raw = probe.predict_proba_correct_batch(hidden)
        calibration = fit_platt(raw[tr], signals.correct[tr])
        return ProbeScores(calibration.apply(raw), probe, calibration,
                           f"probe {probe.probe_id} fitted on another run ({probe.run_path}), calibrated on training items")
    reason = pr.label_reason(y[tr], PROBE_OOF_FOLDS)
    if reason:
        raise DataError(
            f"Cannot fit a probe on the training items: {reason} ({tr.size} items, {int(y[tr].sum())} right); "
            f"each class needs at least {2 * PROBE_OOF_FOLDS}. Use a larger run or an entropy signal."
        )
    layers = pr.last_layer_indices(hidden.shape[1])
    x_tr = hidden[tr][:, list(layers), :].reshape(tr.size, -1).astype(np.float64)
    oof = pr.nested_cv(pr.state_model, x_tr, y[tr], n_folds=PROBE_OOF_FOLDS, n_inner=PROBE_INNER_FOLDS, seed=signals.seed)
    coef, intercept = fit_platt_on_scores(oof.scores, signals.correct[tr])
    final = pr.fit_saved_probe(
        hidden[tr], y[tr], layers=layers, model_spec=signals.model, run_path=signals.run_path,
        selection=f"{signals.regime}: training items of the gate split (holdout {signals.holdout}, seed {signals.seed})",
        n_folds=PROBE_INNER_FOLDS, seed=signals.seed,
    )
    # OOF scores are each fold's decision values standardised by that fold's training values;
    # put the final probe on the same footing, then fold both steps into one Platt map of its logit.
    dv_train = final.decision_values(hidden[tr])
    mean, sd = float(dv_train.mean()), float(dv_train.std()) or 1.0
    calibration = PlattCalibration(coef / sd, intercept - coef * mean / sd)
    p = np.empty(signals.correct.size)
    p[tr] = 1.0 / (1.0 + np.exp(-(coef * oof.scores + intercept)))
    p[te] = calibration.apply(final.predict_proba_correct_batch(hidden[te]))
    return ProbeScores(p, final, calibration, "last-5-layers probe fitted on the training items only")


@dataclass(frozen=True, eq=False)
class PolicyFit:
    """A policy fitted on a run's training items, with its held-out evaluation."""

    policy: Policy
    signals: RunSignals
    probe_scores: ProbeScores | None
    escalate: np.ndarray
    """(n,) the fitted rule's decision for every graded row (train and held-out)."""
    train: Confusion
    held_out: HeldOutReport
    target_met: bool
    message: str

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures for the CLI and downloads."""
        s = self.signals
        return {
            "policy_id": self.policy.policy_id, "signal": self.policy.signal,
            "entropy_signal": s.entropy_signal if self.policy.signal != "probe" else None,
            "rule": self.policy.describe(), "t_entropy_bits": self.policy.t_entropy_bits,
            "t_probe": self.policy.t_probe, "target_error": self.policy.target_error,
            "target_met_on_training": self.target_met, "message": self.message,
            "run": s.run_path, "regime": s.regime, "prefix_mode": s.prefix_mode,
            "n_train": int(s.train_idx.size), "n_held_out": int(s.test_idx.size),
            "n_ungraded_excluded": s.n_ungraded_excluded, "train": self.train.to_json(),
            "held_out": self.held_out.to_json(),
            "probe": None if self.probe_scores is None else {
                "source": self.probe_scores.source, "path": self.probe_scores.path,
                "probe_id": self.probe_scores.probe.probe_id,
            },
        }


def resolve_entropy_signal(requested: str, signals: RunSignals) -> Literal["h_int", "h_slot"]:
    """``entropy`` → whichever the run read; ``h_int``/``h_slot`` must match the run.

    Raises:
        DataError: the run did not read the requested entropy.

    """
    if requested in ("entropy", signals.entropy_signal):
        return signals.entropy_signal
    other = ENTROPY_NAMES.get(requested, requested)
    raise DataError(
        f"This run read {signals.entropy_name} (prefix mode {signals.prefix_mode!r}), not {other}; "
        f"use signal 'entropy' or run a study {'without' if other == 'H_int' else 'with'} answer prefixes."
    )


def fit_policy_on_run(
    run: Any,
    signal: str,
    target_error: float,
    *,
    regime: str | None = None,
    holdout: float = 0.4,
    seed: int = 0,
    probe: Any = None,
    scores: ProbeScores | None = None,
    signals: RunSignals | None = None,
    store_prompt_text: bool = False,
    n_boot: int = N_BOOT,
) -> PolicyFit:
    """Fit a policy on a run's training items and evaluate it on the held-out items.

    Args:
        run: A loaded study run.
        signal: ``entropy`` (H_slot if the run read after answer prefixes, else H_int),
            ``h_int``, ``h_slot``, ``probe`` or ``combined``.
        target_error: Highest acceptable error among auto-approved training answers.
        regime: Which regime of the run (see :func:`run_signals`).
        holdout: Held-out share. seed: Split and bootstrap seed.
        probe: An external saved probe (see :func:`probe_scores`); None fits one on training items.
        scores: Precomputed :func:`probe_scores` (the app caches them).
        signals: Precomputed :func:`run_signals` (must match regime/holdout/seed).
        store_prompt_text: Recorded in the policy (audit records keep prompt text only if True).
        n_boot: Bootstrap resamples for the held-out CIs.

    Raises:
        DataError: bad signal or target, one class, n too small, or an unusable probe.

    """
    if signal not in ("entropy", "h_int", "h_slot", "probe", "combined"):
        raise DataError(f"Unknown signal {signal!r}; choose entropy, h_int, h_slot, probe or combined.")
    sig = signals or run_signals(run, regime, holdout, seed)
    entropy = resolve_entropy_signal("entropy" if signal in ("probe", "combined") else signal, sig)
    ps = None
    if signal in ("probe", "combined"):
        ps = scores or probe_scores(run, sig, probe)
    if signal == "probe":
        fit = fit_threshold(-ps.p_correct, sig.correct, target_error, sig.train_idx)
        t_e = None
        t_p = None if fit.threshold is None else -fit.threshold  # approve -p <= t  <=>  p >= -t
        met, train, msg = fit.target_met, fit.train, fit.message
        escalate = np.ones(sig.correct.size, bool) if t_p is None else ps.p_correct < t_p
    elif signal == "combined":
        cf = fit_combined(sig.entropy_bits, ps.p_correct, sig.correct, target_error, sig.train_idx)
        t_e, t_p, met, train, msg = cf.t_entropy_bits, cf.t_probe, cf.target_met, cf.train, cf.message
        escalate = (np.ones(sig.correct.size, bool) if not met
                    else combined_escalate(sig.entropy_bits, ps.p_correct, t_e, t_p))
    else:
        fit = fit_threshold(sig.entropy_bits, sig.correct, target_error, sig.train_idx)
        t_e, t_p, met, train, msg = fit.threshold, None, fit.target_met, fit.train, fit.message
        escalate = np.ones(sig.correct.size, bool) if t_e is None else sig.entropy_bits > t_e
    report = evaluate_held_out(escalate, sig.correct, sig.test_idx, n_boot=n_boot, seed=seed)
    policy_signal = entropy if signal in ("entropy", "h_int", "h_slot") else signal
    policy = Policy(
        signal=policy_signal, model=sig.model, regime=sig.regime, kind=sig.kind, prefix_mode=sig.prefix_mode,
        answer_prefix=sig.answer_prefix, t_entropy_bits=t_e if policy_signal != "probe" else None,
        entropy_signal=entropy if policy_signal != "probe" else None, t_probe=t_p, escalate_all=not met,
        probe=None if ps is None else probe_entry(ps.path or "", ps.probe.probe_id, ps.calibration),
        model_n_layers=sig.n_layers, model_d_model=sig.d_model,
        fitted_on={
            "run_path": sig.run_path, "dataset": sig.dataset, "regime": sig.regime, "n_train": int(sig.train_idx.size),
            "n_held_out": int(sig.test_idx.size), "n_ungraded_excluded": sig.n_ungraded_excluded,
            "holdout": sig.holdout, "seed": sig.seed,
            "probe_source": None if ps is None else ps.source,
        },
        target_error=float(target_error), held_out=report.to_json(), store_prompt_text=store_prompt_text,
    )
    return PolicyFit(policy, sig, ps, escalate, train, report, met, msg)


def with_probe_path(fit: PolicyFit, path: str | os.PathLike[str], save: bool = True) -> PolicyFit:
    """Point the policy at the probe file ``path``, saving the fit's probe there first (``save``).

    With ``save=False`` the path must be where that same probe already is (an external probe).
    """
    if fit.probe_scores is None:
        return fit
    json_path = fit.probe_scores.probe.save(path) if save else path
    ps = replace(fit.probe_scores, path=str(Path(json_path).resolve()))
    policy = replace(fit.policy, probe=probe_entry(ps.path, ps.probe.probe_id, ps.calibration), policy_id="")
    return replace(fit, policy=policy, probe_scores=ps)


@dataclass(frozen=True)
class SignalAuroc:
    """How well a signal ranks right above wrong answers on the held-out items."""

    name: str
    auroc: float | None
    """None with ``reason`` (never a stand-in 0.5)."""
    ci95: tuple[float, float] | None
    shuffle_mean: float | None
    """Mean AUROC over label permutations (≈ 0.5 when nothing leaks)."""
    shuffle_range: tuple[float, float] | None
    n: int
    reason: str | None = None


def held_out_auroc(name: str, score_correct: Any, correct: Any, test_idx: Any, *, n_boot: int = N_BOOT,
                   n_shuffles: int = 20, seed: int = 0) -> SignalAuroc:
    """AUROC of a score (larger = more likely right) on held-out items, with bootstrap CI and shuffle control."""
    from ic_core import probes as pr

    idx = np.asarray(test_idx, dtype=np.int64)
    s = np.asarray(score_correct, dtype=np.float64)[idx]
    y = np.asarray(correct, dtype=bool)[idx]
    if y.all() or not y.any():
        return SignalAuroc(name, None, None, None, None, int(idx.size), pr.REASON_ONE_CLASS)
    a = pr.auroc(s, y)
    low, high, _ = pr.bootstrap_ci(s, y, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed + 7)
    shuffled = [pr.auroc(s, rng.permutation(y)) for _ in range(n_shuffles)]
    return SignalAuroc(
        name, a, None if low is None else (low, high), float(np.mean(shuffled)),
        (float(np.min(shuffled)), float(np.max(shuffled))), int(idx.size),
    )
