"""Fitting a gate policy on a labelled study run: probe scores, thresholds, and the policy built from them.

A *policy* says when a pre-generation gate escalates a prompt to a human instead of letting
the model's answer through: when the entropy at the read-out is too high (``h_int`` raw, or
``h_slot`` after the template's forced answer prefix), when a saved probe's calibrated
P(correct) is too low (``probe``), or when either fires (``combined``).

Thresholds are fitted on a *training* share of a labelled study run and reported on the
*held-out* rest, with bootstrap 95 % confidence intervals. The run's rows and split come from
:func:`ic_core.governance.signals.run_signals`; :func:`fit_policy_on_run` fits on them, and
:func:`policy_from_thresholds` builds the policy document from thresholds (fitted, or set by
hand on the Governance page). The rule itself lives in :mod:`ic_core.governance.rule`.

Conventions: a *risk score* is larger when the answer is more likely wrong (entropy in bits,
or ``-P(correct)``); an item is **approved** when its risk is ``<= threshold`` and
**escalated** otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ic_core.errors import DataError
from ic_core.governance.fit_ltt import (
    EMPIRICAL_LABEL,
    Progress,
    RiskControlFit,
    check_method,
    compare_readouts,
    fit_ltt,
    readout_comparison,
)
from ic_core.governance.policy import Policy, Signal, probe_entry
from ic_core.governance.policy_schema import PREFIX_NEED_OF_MODE
from ic_core.governance.rule import escalate as rule_escalate
from ic_core.governance.signals import RunSignals, resolve_entropy_signal, run_signals
from ic_core.probes.scores import ProbeScores, calibrated_probe_scores
from ic_core.stats.gating import (
    N_BOOT,
    Confusion,
    HeldOutReport,
    confusion_from_decisions,
    evaluate_held_out,
    fit_combined,
    fit_threshold,
)
from ic_core.stats.risk_simulation import N_SPLITS

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.probes.saved import SavedProbe
    from ic_core.runs.store import StudyRun


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
        item_ids=signals.table["item_id"].to_numpy(), questions=signals.table["question"].to_numpy(),
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
    risk: RiskControlFit | None = None
    """The Learn-then-Test fit, its held-out check and simulation (method ``ltt``), else None."""
    ood_note: str | None = None
    """Why no OOD model was stored although one was asked for with ``ood="auto"``."""

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures for the CLI and downloads."""
        s = self.signals
        return {
            "method": "ltt" if self.risk is not None else EMPIRICAL_LABEL, "guarantee": self.policy.guarantee,
            "readout": s.readout, "prefix_need": self.policy.prefix_need,
            "risk_control": None if self.risk is None else self.risk.to_json(), "ood_note": self.ood_note,
            "ood": None if self.policy.ood is None else {
                "layer": self.policy.ood_layer, "threshold": self.policy.ood["threshold"],
                "outside_rate": self.policy.ood["outside_rate"], "n_calibration": self.policy.ood["n_calibration"]},
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


ThresholdOrigin = Literal["fitted on training items", "set by hand"]
FITTED_ON_TRAINING: ThresholdOrigin = "fitted on training items"
SET_BY_HAND: ThresholdOrigin = "set by hand"


def policy_from_thresholds(
    signals: RunSignals,
    signal: Signal,
    t_entropy_bits: float | None,
    t_probe: float | None,
    held_out: HeldOutReport,
    *,
    scores: ProbeScores | None = None,
    escalate_all: bool = False,
    target_error: float | None = None,
    threshold_origin: ThresholdOrigin | None = SET_BY_HAND,
    store_prompt_text: bool = False,
    risk_control: dict[str, Any] | None = None,
    ood: dict[str, Any] | None = None,
    ood_layer: int | None = None,
) -> Policy:
    """The policy document for a rule on a run's split: its thresholds, model, read-out and provenance.

    Only the thresholds ``signal`` reads are kept (none when ``escalate_all``); the probe entry
    points nowhere yet (``path`` is ``scores.path`` or empty: see :func:`attach_saved_probe`).

    Args:
        signals: The run's split the thresholds belong to.
        signal: ``h_int``/``h_slot`` (must be the run's read-out), ``probe`` or ``combined``.
        t_entropy_bits: Escalate when the entropy is above this (entropy and combined rules).
        t_probe: Escalate when the calibrated P(correct) is below this (probe and combined rules).
        held_out: The rule's held-out evaluation, recorded in the policy.
        scores: The probe's scores (probe and combined rules): its id and calibration go in.
        escalate_all: The rule escalates everything.
        target_error: The target the thresholds were fitted for (None when set by hand).
        threshold_origin: Recorded as ``fitted_on["thresholds"]``; None leaves it out.
        store_prompt_text: Whether audit records may keep the prompt text.
        risk_control: The Learn-then-Test entry (:meth:`RiskControlFit.risk_control_entry`), if any.
        ood, ood_layer: The distance model of the calibration states and the layer it reads.

    Raises:
        DataError: an invalid policy (e.g. a probe rule without probe scores).

    """
    uses_probe = signal in ("probe", "combined")
    probe = scores if uses_probe else None
    fitted_on: dict[str, Any] = {
        "run_path": signals.run_path, "dataset": signals.dataset, "regime": signals.regime,
        "n_train": int(signals.train_idx.size), "n_held_out": int(signals.test_idx.size),
        "n_ungraded_excluded": signals.n_ungraded_excluded, "holdout": signals.holdout, "seed": signals.seed,
        "probe_source": None if probe is None else probe.source,
    }
    if threshold_origin is not None:
        fitted_on["thresholds"] = threshold_origin
    if signals.readout != "auto":
        fitted_on["readout"] = signals.readout
    held = held_out.to_json()
    if risk_control is not None:
        from ic_core.governance.policy_schema import guarantee_text

        held["guarantee"] = guarantee_text(replace_risk(risk_control, escalate_all))
    return Policy(
        signal=signal, model=fitted_model(signals), regime=signals.regime, kind=signals.kind,
        prefix_mode=signals.prefix_mode, answer_prefix=signals.answer_prefix,
        t_entropy_bits=None if escalate_all or signal == "probe" else t_entropy_bits,
        entropy_signal=None if signal == "probe" else signals.entropy_signal,
        t_probe=None if escalate_all or not uses_probe else t_probe, escalate_all=escalate_all,
        probe=None if probe is None else probe_entry(probe.path or "", probe.probe.probe_id, probe.calibration),
        model_n_layers=signals.n_layers, model_d_model=signals.d_model, fitted_on=fitted_on,
        target_error=target_error, held_out=held, store_prompt_text=store_prompt_text,
        risk_control=risk_control, ood=ood, ood_layer=ood_layer, prefix_need=PREFIX_NEED_OF_MODE[signals.prefix_mode],
    )


@dataclass(frozen=True)
class _GuaranteeView:
    """The two fields :func:`~ic_core.governance.policy_schema.guarantee_text` reads, before the policy exists."""

    risk_control: dict[str, Any] | None
    escalate_all: bool


def replace_risk(risk_control: dict[str, Any], escalate_all: bool) -> Any:
    """A stand-in carrying ``risk_control`` and ``escalate_all`` for :func:`guarantee_text`."""
    return _GuaranteeView(risk_control, escalate_all)


WEIGHTS_KEY = "model_weights_sha256"
"""The run manifest's record of the SHA-256 of the weights the run was made with."""


def fitted_model(signals: RunSignals) -> dict[str, Any]:
    """The policy's ``model`` entry: the run's ModelSpec dict, pinning ``weights_sha256`` when the run recorded it.

    Runs from before weights were recorded (or a split not read from a run folder) give the spec
    alone; such a policy is checked by name and says "weights not pinned".
    """
    from ic_core.runs.store import read_manifest

    model = {k: v for k, v in signals.model.items() if k != "weights_sha256"}
    try:
        digest = read_manifest(signals.run_path).get(WEIGHTS_KEY) if signals.run_path else None
    except DataError:
        digest = None
    return {**model, "weights_sha256": digest} if isinstance(digest, str) and digest else model


def fit_policy_on_run(
    run: StudyRun,
    signal: str,
    target_error: float | None,
    *,
    regime: str | None = None,
    holdout: float = 0.4,
    seed: int = 0,
    probe: SavedProbe | None = None,
    scores: ProbeScores | None = None,
    signals: RunSignals | None = None,
    store_prompt_text: bool = False,
    n_boot: int = N_BOOT,
    method: str = "empirical",
    alpha: float | None = None,
    delta: float | None = 0.1,
    bound: str = "clopper_pearson",
    readout: str = "auto",
    ood: bool | Literal["auto"] = False,
    ood_layer: int | None = None,
    n_splits: int = N_SPLITS,
    progress: Progress | None = None,
) -> PolicyFit:
    """Fit a policy on a run's training items and evaluate it on the held-out items.

    Args:
        run: A loaded study run.
        signal: ``entropy`` (H_slot if the run read after answer prefixes, else H_int),
            ``h_int``, ``h_slot``, ``probe`` or ``combined``.
        target_error: Highest acceptable error among auto-approved training answers (method
            ``empirical``; with ``ltt`` it defaults to ``alpha``).
        regime: Which regime of the run (see :func:`run_signals`).
        holdout: Held-out share. seed: Split and bootstrap seed.
        probe: An external saved probe (see :func:`probe_scores`); None fits one on training items.
        scores: Precomputed :func:`probe_scores` (the app caches them).
        signals: Precomputed :func:`run_signals` (must match regime/holdout/seed/readout).
        store_prompt_text: Recorded in the policy (audit records keep prompt text only if True).
        n_boot: Bootstrap resamples for the held-out CIs.
        method: ``empirical`` (the threshold that met the target on training items, no guarantee)
            or ``ltt`` (Learn then Test: certified, or every prompt escalated with the reason).
        alpha, delta, bound: The LTT guarantee and its binomial bound.
        readout: :data:`ic_core.governance.signals.READOUTS` (``last-token`` and ``kind-prefix``
            make agent-ready policies).
        ood: Fit a distance model of the training items' states at ``ood_layer`` (default: the last
            layer); ``"auto"`` fits one when the states are at the read-out and there are enough of
            them, and says why not otherwise (:attr:`PolicyFit.ood_note`).
        n_splits: Repeated splits of the LTT simulation.
        progress: Called with ``(splits done, n_splits)`` as the LTT simulation advances.

    Raises:
        DataError: bad signal, method, α/δ or target, one class, n too small, an unusable probe,
            or a probe/OOD model on states read elsewhere than the read-out.

    """
    if signal not in ("entropy", "h_int", "h_slot", "probe", "combined"):
        raise DataError(f"Unknown signal {signal!r}; choose entropy, h_int, h_slot, probe or combined.")
    check_method(method, alpha, delta, bound)
    if method == "ltt" and signal == "combined":
        raise DataError("Method 'ltt' certifies one score; use signal entropy or probe (not combined).")
    if method == "empirical" and target_error is None:
        raise DataError("Method 'empirical' needs a target error (--target-error).")
    sig = signals or run_signals(run, regime, holdout, seed, readout=readout)
    entropy = resolve_entropy_signal("entropy" if signal in ("probe", "combined") else signal, sig)
    policy_signal: Signal = entropy if signal in ("entropy", "h_int", "h_slot") else signal  # type: ignore[assignment]
    ood_note = None
    if ood == "auto" and not sig.states_at_readout:
        ood, ood_note = False, "no OOD model: the run's states were read after the answer prefix, not at the read-out"
    if (policy_signal in ("probe", "combined") or ood is True) and not sig.states_at_readout:
        raise DataError(
            "This run's states were read after the answer prefix, not at the last prompt token: a probe or an "
            "OOD model for a last-token policy needs a run read without prefixes (study --no-item-prefix)."
        )
    ps = None
    if policy_signal in ("probe", "combined"):
        ps = scores or probe_scores(run, sig, probe)
    risk = None
    if method == "ltt":
        risk_scores, direction = (ps.p_correct, "ge") if policy_signal == "probe" else (sig.entropy_bits, "le")
        risk = fit_ltt(risk_scores, sig.correct, direction, sig.train_idx, sig.test_idx, alpha=float(alpha),
                       delta=float(delta), bound=bound, n_splits=n_splits, seed=sig.seed, progress=progress)
        if sig.item_prefix_bits is not None:
            risk = replace(risk, comparison={**compare_readouts(
                sig.entropy_bits, sig.item_prefix_bits, sig.correct, sig.train_idx, sig.test_idx,
                alpha=float(alpha), delta=float(delta), bound=bound), "n_held_out": int(sig.test_idx.size)})
        elif sig.prefix_mode == "per_item":  # a research-only fit: show the agent-ready read-out beside it
            risk = replace(risk, comparison=readout_comparison(run, sig.regime, sig.holdout, sig.seed,
                                                               alpha=float(alpha), delta=float(delta), bound=bound))
        t = risk.ltt.threshold
        t_e, t_p = (None, t) if policy_signal == "probe" else (t, None)
        met, train = risk.ltt.certified, _confusion_at(policy_signal, sig, ps, t_e, t_p, t is None)
        msg = risk.ltt.text()
        target_error = float(alpha)
    elif policy_signal == "probe":
        fit = fit_threshold(-ps.p_correct, sig.correct, target_error, sig.train_idx)
        t_e = None
        t_p = None if fit.threshold is None else -fit.threshold  # approve -p <= t  <=>  p >= -t
        met, train, msg = fit.target_met, fit.train, fit.message
    elif policy_signal == "combined":
        cf = fit_combined(sig.entropy_bits, ps.p_correct, sig.correct, target_error, sig.train_idx)
        t_e, t_p, met, train, msg = cf.t_entropy_bits, cf.t_probe, cf.target_met, cf.train, cf.message
    else:
        fit = fit_threshold(sig.entropy_bits, sig.correct, target_error, sig.train_idx)
        t_e, t_p, met, train, msg = fit.threshold, None, fit.target_met, fit.train, fit.message
    escalate = rule_escalate(policy_signal, sig.entropy_bits, None if ps is None else ps.p_correct, t_e, t_p,
                             escalate_all=not met)
    report = evaluate_held_out(escalate, sig.correct, sig.test_idx, n_boot=n_boot, seed=seed)
    ood_json, layer = None, None
    if ood:
        try:
            ood_json, layer = _fit_ood(run, sig, ood_layer, seed)
        except DataError as exc:
            if ood is True:
                raise
            ood_note = f"no OOD model: {exc}"
    # The CLI's policy documents have never recorded where the thresholds came from (threshold_origin=None).
    policy = policy_from_thresholds(
        sig, policy_signal, t_e, t_p, report, scores=ps, escalate_all=not met, target_error=float(target_error),
        threshold_origin=None, store_prompt_text=store_prompt_text,
        risk_control=None if risk is None else risk.risk_control_entry(), ood=ood_json, ood_layer=layer,
    )
    return PolicyFit(policy, sig, ps, escalate, train, report, met, msg, risk, ood_note)


def _confusion_at(policy_signal: str, sig: RunSignals, ps: ProbeScores | None, t_e: float | None,
                  t_p: float | None, escalate_all: bool) -> Confusion:
    """The training items' confusion of the rule with these thresholds."""
    flags = rule_escalate(policy_signal, sig.entropy_bits, None if ps is None else ps.p_correct, t_e, t_p,
                          escalate_all=escalate_all)
    return confusion_from_decisions(flags[sig.train_idx], sig.correct[sig.train_idx])


def _fit_ood(run: StudyRun, sig: RunSignals, layer: int | None, seed: int) -> tuple[dict[str, Any], int]:
    """The distance model of the training items' states at ``layer`` (default the last), as JSON."""
    from ic_core.stats.ood import fit_ood

    at = sig.n_layers if layer is None else int(layer)
    if not 0 <= at <= sig.n_layers:
        raise DataError(f"OOD layer {at} is not in 0..{sig.n_layers}.")
    states = np.asarray(run.hidden)[sig.hidden_rows[sig.train_idx], at].astype(np.float64)
    return fit_ood(states, seed=seed).to_json(), at


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


@dataclass(frozen=True, eq=False)
class RuleEvaluation:
    """A rule with given thresholds on a run's split: its decisions, held-out figures and policy."""

    escalate: np.ndarray
    """(n,) the rule's decision for every graded row (train and held-out)."""
    held_out: HeldOutReport
    policy: Policy


def evaluate_thresholds(
    signals: RunSignals,
    signal: Signal,
    t_entropy_bits: float | None,
    t_probe: float | None,
    *,
    scores: ProbeScores | None = None,
    escalate_all: bool = False,
    target_error: float | None = None,
    threshold_origin: ThresholdOrigin | None = SET_BY_HAND,
    store_prompt_text: bool = False,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> RuleEvaluation:
    """Apply thresholds (fitted, or set by hand) to every row, judge them on the held-out rows, make the policy.

    Args:
        signals: The run's split.
        signal: ``h_int``/``h_slot`` (the run's read-out), ``probe`` or ``combined``.
        t_entropy_bits: Entropy threshold, bits (entropy and combined rules).
        t_probe: P(correct) threshold (probe and combined rules).
        scores: The probe's calibrated scores (probe and combined rules).
        escalate_all: The rule escalates everything (a fit that could not meet its target).
        target_error: The target the thresholds were fitted for, if they were.
        threshold_origin: Where the thresholds came from, recorded in the policy.
        store_prompt_text: Recorded in the policy.
        n_boot: Bootstrap resamples for the held-out CIs. seed: Bootstrap seed.

    Raises:
        DataError: a rule whose scores or thresholds are missing, or an invalid policy.

    """
    p_correct = None if scores is None else scores.p_correct
    flags = rule_escalate(signal, signals.entropy_bits, p_correct, t_entropy_bits, t_probe, escalate_all)
    report = evaluate_held_out(flags, signals.correct, signals.test_idx, n_boot=n_boot, seed=seed)
    policy = policy_from_thresholds(
        signals, signal, t_entropy_bits, t_probe, report, scores=scores, escalate_all=escalate_all,
        target_error=target_error, threshold_origin=threshold_origin, store_prompt_text=store_prompt_text,
    )
    return RuleEvaluation(flags, report, policy)


def threshold_context(signals: RunSignals, signal: str, scores: ProbeScores | None) -> tuple[Any, ...]:
    """What a fitted threshold belongs to: another run, regime, split, signal or probe makes it stale."""
    return (signals.run_path, signals.regime, signals.holdout, signals.seed, signal,
            None if scores is None else scores.probe.probe_id)


def attach_saved_probe(policy: Policy, scores: ProbeScores | None, run_folder: str | os.PathLike[str]) -> Policy:
    """Save the policy's probe into the run's ``probes/`` folder and point the policy at it.

    The file is named after the probe's content hash (``probes/gate-<probe_id>.json`` and its
    ``.npz``), so an existing file is this same probe and is not written again. Policies that
    read no probe are returned unchanged.

    Args:
        policy: A policy built with ``scores`` (:func:`policy_from_thresholds`).
        scores: The probe's scores (None: the policy is returned as it is).
        run_folder: The study run the probe was fitted on.

    Returns:
        The policy with ``probe["path"]`` the saved probe's absolute path (and a new ``policy_id``).

    Raises:
        DataError: the probe cannot be written next to the run.

    """
    if not policy.uses_probe or scores is None:
        return policy
    stem = Path(run_folder) / "probes" / f"gate-{scores.probe.probe_id}"
    path = stem.with_name(stem.name + ".json")
    try:
        if not path.is_file():
            path = Path(scores.probe.save(stem))
    except OSError as exc:
        raise DataError(f"Could not save the probe next to the run ({exc}); the policy cannot be used.") from exc
    entry = probe_entry(str(path.resolve()), scores.probe.probe_id, scores.calibration)
    return replace(policy, probe=entry, policy_id="")
