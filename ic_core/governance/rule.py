"""The escalation rule: when a gate policy sends an item to a human, on arrays and for one prompt.

Every place that applies a policy's thresholds goes through :func:`escalate`: fitting a policy
on a run (:func:`ic_core.governance.fit.fit_policy_on_run`), the Governance page's live view of
hand-set thresholds, and the gate itself (:func:`explain`, which adds the reason in words).

Conventions: an entropy rule fires when the entropy at the read-out is **above** its threshold
(``entropy_bits > t_entropy_bits``); a probe rule fires when the calibrated P(correct) is
**below** its threshold (``p_correct < t_probe``); ``combined`` escalates when either fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ic_core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.governance.policy import Policy

ENTROPY_SIGNALS = ("h_int", "h_slot")
RULE_SIGNALS = ("h_int", "h_slot", "probe", "combined")
ESCALATE_ALL_REASON = "The policy escalates every prompt (its target error could not be met on its training items)."


def _reads_entropy(policy_signal: str) -> bool:
    return policy_signal in ("h_int", "h_slot", "combined")


def _reads_probe(policy_signal: str) -> bool:
    return policy_signal in ("probe", "combined")


def escalate(
    policy_signal: str,
    entropy_bits: npt.ArrayLike | None,
    p_correct: npt.ArrayLike | None,
    t_entropy_bits: float | None,
    t_probe: float | None,
    escalate_all: bool = False,
) -> np.ndarray:
    """(n,) True where the policy's rule escalates the item to a human.

    Args:
        policy_signal: ``h_int`` or ``h_slot`` (entropy rule), ``probe`` (probe rule) or
            ``combined`` (either rule).
        entropy_bits: (n,) entropy at each item's read-out, bits (entropy and combined rules).
        p_correct: (n,) calibrated P(correct) of each item (probe and combined rules).
        t_entropy_bits: Escalate when the entropy is above this.
        t_probe: Escalate when P(correct) is below this.
        escalate_all: The policy escalates everything (its target could not be met); the
            thresholds are then not read.

    Returns:
        A boolean array of shape (n,).

    Raises:
        DataError: an unknown signal, or a rule whose scores or threshold are missing.

    """
    if policy_signal not in RULE_SIGNALS:
        raise DataError(f"Unknown rule signal {policy_signal!r}; choose one of {', '.join(RULE_SIGNALS)}.")
    parts = []  # (scores, threshold, rule) of each part the signal reads
    if _reads_entropy(policy_signal):
        parts.append((_required(entropy_bits, "entropy_bits", policy_signal), t_entropy_bits, "t_entropy_bits",
                      entropy_rule))
    if _reads_probe(policy_signal):
        parts.append((_required(p_correct, "p_correct", policy_signal), t_probe, "t_probe", probe_rule))
    n = np.asarray(parts[0][0]).reshape(-1).size
    fires = np.ones(n, dtype=bool) if escalate_all else np.zeros(n, dtype=bool)
    if not escalate_all:
        for scores, threshold, name, rule in parts:
            fires |= rule(scores, _required(threshold, name, policy_signal))
    return fires


def _required(value: Any, name: str, policy_signal: str) -> Any:
    if value is None:
        raise DataError(f"The {policy_signal!r} rule needs {name} (or escalate_all).")
    return value


def entropy_rule(entropy_bits: npt.ArrayLike, t_entropy_bits: float) -> np.ndarray:
    """(n,) True where the entropy at the read-out is above the threshold (bits)."""
    return np.asarray(entropy_bits, dtype=np.float64).reshape(-1) > float(t_entropy_bits)


def probe_rule(p_correct: npt.ArrayLike, t_probe: float) -> np.ndarray:
    """(n,) True where the calibrated P(correct) is below the threshold."""
    return np.asarray(p_correct, dtype=np.float64).reshape(-1) < float(t_probe)


@dataclass(frozen=True)
class Verdict:
    """The rule's decision for one prompt, and why."""

    escalate: bool
    reason: str
    """One plain sentence, e.g. ``H_slot 3.10 bits > threshold 2.40 bits.``"""


def explain(policy: Policy, entropy_bits: float | None, p_correct: float | None) -> Verdict:
    """Apply a policy's rule to one prompt's read-out and say why, part by part.

    The decision is :func:`escalate` on this one item; the reason lists each part of the
    rule that fired (or, when none did, each part that passed). An ``escalate_all`` policy
    escalates without reading the values.

    Args:
        policy: The gate policy.
        entropy_bits: The prompt's entropy at the policy's read-out (``H_int`` or ``H_slot``).
        p_correct: The probe's calibrated P(correct), for probe and combined policies.

    Raises:
        DataError: a value the policy's rule reads is missing.

    """
    if policy.escalate_all:  # what escalate() gives for escalate_all, without needing the read-out
        rc = policy.risk_control
        if rc is not None and not rc.get("certified"):
            return Verdict(True, f"The policy escalates every prompt: no threshold was certified ({rc.get('reason')}).")
        return Verdict(True, ESCALATE_ALL_REASON)
    decision = bool(escalate(policy.signal, _one(entropy_bits), _one(p_correct), policy.t_entropy_bits,
                             policy.t_probe)[0])
    fired, passed = [], []
    if _reads_entropy(policy.signal) and policy.t_entropy_bits is not None and entropy_bits is not None:
        t = policy.t_entropy_bits
        hit = bool(entropy_rule(entropy_bits, t)[0])
        (fired if hit else passed).append(
            f"{policy.entropy_name} {entropy_bits:.2f} bits {'>' if hit else '<='} threshold {t:.2f} bits")
    if _reads_probe(policy.signal) and policy.t_probe is not None and p_correct is not None:
        t = policy.t_probe
        hit = bool(probe_rule(p_correct, t)[0])
        (fired if hit else passed).append(f"probe P(correct) {p_correct:.2f} {'<' if hit else '>='} threshold {t:.2f}")
    return Verdict(decision, "; ".join(fired if decision else passed) + ".")


def _one(value: float | None) -> np.ndarray | None:
    return None if value is None else np.array([value], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Outcomes:
    """Which items among ``idx`` a rule escalated, caught (escalated and wrong) or let slip (approved and wrong).

    Each array holds indices into the full item arrays, in the order of ``idx``.
    """

    escalated: np.ndarray
    caught: np.ndarray
    slipped: np.ndarray


def outcomes(escalate_flags: npt.ArrayLike, correct: npt.ArrayLike, idx: npt.ArrayLike) -> Outcomes:
    """Split the items ``idx`` by what the rule did to them.

    Args:
        escalate_flags: (n,) the rule's decision for every item.
        correct: (n,) whether each answer was right.
        idx: Indices of the items to look at (e.g. the held-out items).

    """
    esc = np.asarray(escalate_flags, dtype=bool)
    wrong = ~np.asarray(correct, dtype=bool)
    i = np.asarray(idx, dtype=np.int64)
    return Outcomes(escalated=i[esc[i]], caught=i[esc[i] & wrong[i]], slipped=i[~esc[i] & wrong[i]])


def escalates_everything(escalate_flags: npt.ArrayLike, idx: npt.ArrayLike) -> bool:
    """True when the rule escalates every one of the items ``idx`` (and there is at least one)."""
    i = np.asarray(idx, dtype=np.int64)
    return bool(i.size) and bool(np.all(np.asarray(escalate_flags, dtype=bool)[i]))
