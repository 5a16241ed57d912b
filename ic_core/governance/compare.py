"""Comparing gating signals (raw H_int, H_slot, a probe) on one run's training/held-out split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ic_core.errors import ICError
from ic_core.governance.fit import ProbeScores, probe_scores
from ic_core.governance.policy import check_spec_matches
from ic_core.governance.rule import escalate as rule_escalate
from ic_core.governance.signals import RunSignals, recorded_last_token_bits, run_signals
from ic_core.models import LoadedModel
from ic_core.prompts import render, template_for
from ic_core.stats.auroc import N_BOOT, AurocEstimate, held_out_auroc
from ic_core.stats.gating import (
    HeldOutReport,
    RiskCoverage,
    ThresholdFit,
    evaluate_held_out,
    fit_threshold,
    risk_coverage,
)
from ic_core.stats.selective import SelectiveSummary, selective_summary

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.runs.store import StudyRun

# --------------------------------------------------------------------------------------
# Comparing signals on one run (the governance demo)
# --------------------------------------------------------------------------------------


def entropy_without_prefix_bits(loaded: LoadedModel, signals: RunSignals, batch_size: int = 16) -> np.ndarray:
    """(n,) raw H_int of each graded row: the same prompt read at its last token, without the answer prefix.

    The rows keep the labels of the run (the answers written after the prefix), so this asks
    whether raw H_int would have flagged the answers the prefixed pipeline got wrong.

    Raises:
        ModelMismatchError: the loaded model is not the run's.

    """
    from ic_core.capture import capture_batch

    check_spec_matches(signals.model, loaded.spec, f"The run {Path(signals.run_path).name}")
    max_ctx = loaded.max_context
    rendered = []
    for _, row in signals.table.iterrows():
        template = template_for(signals.regime, str(row["kind"]))
        choices = tuple(row["choices"]) if isinstance(row.get("choices"), list) else ()
        rendered.append(render(loaded.tokenizer, str(row["question"]), template, choices, "last", max_ctx))
    states = capture_batch(loaded, rendered, batch_size=batch_size)
    return np.array([s.readout_entropy_bits for s in states], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class SignalResult:
    """One signal on a run's split: its threshold fitted on training rows, judged on held-out rows.

    Arrays have shape (n,), aligned with the run's graded rows (:attr:`RunSignals.table`).
    """

    key: str
    """``h_int``, ``h_slot`` or ``probe``."""
    name: str
    description: str
    risk: np.ndarray
    """Larger = more likely wrong (entropy in bits, or ``-P(correct)``)."""
    auroc: AurocEstimate
    """Held-out AUROC of ``-risk`` for correctness, with CI and shuffle control (``kind="held_out"``)."""
    fit: ThresholdFit
    escalate: np.ndarray
    held_out: HeldOutReport
    held_out_curve: RiskCoverage

    @property
    def threshold_text(self) -> str:
        """The fitted rule in words."""
        if self.fit.threshold is None:
            return "escalate everything (target not met on training items)"
        if self.key == "probe":
            return f"escalate when P(correct) < {-self.fit.threshold:.2f}"
        return f"escalate when {self.name.split(' ')[0]} > {self.fit.threshold:.2f} bits"


@dataclass(frozen=True, eq=False)
class SignalComparison:
    """Several signals gated on the same training/held-out split of one run."""

    signals: RunSignals
    results: tuple[SignalResult, ...]
    target_error: float
    notes: tuple[str, ...]
    """Signals that could not be compared, and why."""

    def result(self, key: str) -> SignalResult | None:
        """The result of signal ``key``, if computed."""
        return next((r for r in self.results if r.key == key), None)


def risk_rule(key: str, risk: np.ndarray, threshold: float | None) -> np.ndarray:
    """(n,) escalate flags of signal ``key``'s rule from a risk threshold (None: escalate everything).

    The policy rule (:func:`ic_core.governance.rule.escalate`) in risk terms: ``risk > threshold``,
    i.e. entropy above the threshold, or for the probe (risk ``-P(correct)``) P(correct) below
    ``-threshold``.
    """
    if key == "probe":
        return rule_escalate("probe", None, -risk, None, None if threshold is None else -threshold, threshold is None)
    return rule_escalate(key, risk, None, threshold, None, threshold is None)  # key: h_int or h_slot


def _signal_result(key: str, name: str, description: str, risk: np.ndarray, sig: RunSignals, target_error: float,
                   n_boot: int) -> SignalResult:
    fit = fit_threshold(risk, sig.correct, target_error, sig.train_idx)
    escalate = risk_rule(key, risk, fit.threshold)
    return SignalResult(
        key, name, description, risk,
        held_out_auroc(name, -risk, sig.correct, sig.test_idx, n_boot=n_boot, seed=sig.seed, description=description),
        fit, escalate, evaluate_held_out(escalate, sig.correct, sig.test_idx, n_boot=n_boot, seed=sig.seed),
        risk_coverage(risk[sig.test_idx], sig.correct[sig.test_idx]),
    )


def compare_signals(
    run: StudyRun,
    loaded: LoadedModel | None,
    target_error: float,
    *,
    regime: str | None = None,
    holdout: float = 0.4,
    seed: int = 0,
    signals: RunSignals | None = None,
    scores: ProbeScores | None = None,
    n_boot: int = N_BOOT,
) -> SignalComparison:
    """Raw H_int, H_slot and a probe on one run: same split, same target, held-out figures.

    H_slot is the run's own read-out when it used answer prefixes; raw H_int then comes from
    re-reading the same prompts without the prefix (needs ``loaded`` = the run's model). The
    probe is fitted on the training rows only (:func:`ic_core.governance.fit.probe_scores`).

    Raises:
        DataError: one class, n too small or a bad target (signals that cannot be computed are
            left out with a note instead).

    """
    sig = signals or run_signals(run, regime, holdout, seed)
    results: list[SignalResult] = []
    notes: list[str] = []
    if sig.entropy_signal == "h_slot":
        raw = recorded_last_token_bits(sig.table)  # no re-read (10 s for 24 items on 2 cores), no model
        how = "entropy at the last prompt token, read by the study without the answer prefix"
        if raw is None and loaded is None:
            notes.append("Raw H_int needs the run's model loaded (it re-reads the prompts without the prefix).")
        elif raw is None:
            try:
                raw = entropy_without_prefix_bits(loaded, sig)
                how = "entropy at the last prompt token, the same prompts re-read without the answer prefix"
            except ICError as exc:
                notes.append(f"Raw H_int not computed: {exc}")
        if raw is not None:
            results.append(_signal_result("h_int", "H_int (raw, last prompt token)", how, raw, sig, target_error, n_boot))
        results.append(_signal_result(
            "h_slot", "H_slot (after the answer prefix)", f"entropy after the forced answer prefix ({sig.prefix_mode})",
            sig.entropy_bits, sig, target_error, n_boot))
    else:
        results.append(_signal_result("h_int", "H_int (raw, last prompt token)", "entropy at the last prompt token",
                                      sig.entropy_bits, sig, target_error, n_boot))
        notes.append("H_slot needs a run read after answer prefixes (study option --answer-prefix 'The answer is').")
    try:
        ps = scores or probe_scores(run, sig)
        results.append(_signal_result("probe", "probe P(correct)", ps.source, -ps.p_correct, sig, target_error, n_boot))
    except ICError as exc:
        notes.append(f"Probe not fitted: {exc}")
    return SignalComparison(sig, tuple(results), float(target_error), tuple(notes))


# --------------------------------------------------------------------------------------
# Judging one signal on held-out items: AUROC beside the selective-prediction statistics
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SignalQuality:
    """One signal on the held-out items: AUROC (CI, shuffle control) and AURC / E-AURC / AUGRC (bootstrap CIs)."""

    name: str
    auroc: AurocEstimate
    selective: SelectiveSummary


def signal_quality(name: str, score_correct: np.ndarray, correct: np.ndarray, test_idx: np.ndarray, *,
                   n_boot: int = N_BOOT, seed: int = 0, description: str = "") -> SignalQuality:
    """AUROC and the selective-prediction statistics of a score (larger = more likely right) on ``test_idx``.

    Raises:
        DataError: misaligned or non-finite scores.

    """
    idx = np.asarray(test_idx, dtype=np.int64)
    s = np.asarray(score_correct, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    est = held_out_auroc(name, s, c, idx, n_boot=n_boot, seed=seed, description=description)
    return SignalQuality(name, est, selective_summary(s[idx], c[idx], name=name, n_boot=n_boot, seed=seed))
