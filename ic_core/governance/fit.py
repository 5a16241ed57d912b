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

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ic_core.errors import DataError
from ic_core.governance.policy import ENTROPY_NAMES, Policy, PrefixMode, probe_entry
from ic_core.probes.scores import ProbeScores, calibrated_probe_scores
from ic_core.runs.schema import graded_mask
from ic_core.stats.gating import (
    N_BOOT,
    Confusion,
    HeldOutReport,
    combined_escalate,
    evaluate_held_out,
    fit_combined,
    fit_threshold,
    split_items,
)

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.probes.saved import SavedProbe
    from ic_core.runs.store import StudyRun


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
        run: A loaded :class:`ic_core.runs.store.StudyRun`.
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
    graded_rows = graded_mask(sub)
    graded = sub[graded_rows].reset_index(drop=True)
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
        n_ungraded_excluded=int((~graded_rows).sum()), model=dict(m.get("model") or {}),
        n_layers=int(m["n_layers"]), d_model=int(m["d_model"]),
    )


def probe_scores(run: StudyRun, signals: RunSignals, probe: SavedProbe | None = None) -> ProbeScores:
    """P(correct) per graded row of a gate split, without ever scoring a row with a probe fitted on it.

    A thin wrapper: the run's states of these rows and the split go to
    :func:`ic_core.probes.scores.calibrated_probe_scores`.

    Args:
        run: The loaded run (for its states).
        signals: :func:`run_signals` of the same run.
        probe: A saved probe fitted on *another* run (scores every row as it is; Platt-calibrated
            on the training rows). None fits the last-5-layers probe on the training rows only.

    Raises:
        DataError: a probe fitted on this run (it has seen the held-out rows), a probe of another
            model, or too few right/wrong training rows for a probe.

    """
    return calibrated_probe_scores(
        np.asarray(run.hidden)[signals.hidden_rows], signals.correct, signals.train_idx, signals.test_idx,
        model_spec=signals.model, seed=signals.seed, probe=probe, run_path=signals.run_path,
        selection=f"{signals.regime}: training items of the gate split (holdout {signals.holdout}, seed {signals.seed})",
    )


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
