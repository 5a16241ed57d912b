"""The pre-generation gate: read a prompt's state once, decide approve/escalate, log it.

:func:`gate_check` is the one call an agent framework makes before it acts on a prompt: one
forward pass (no generation), the policy's rule, an audit record. :func:`decide_for_analysis`
applies a policy to an analysis the caller already has (the Explore page's risk card).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ic_core.analysis import Analysis, analyze
from ic_core.errors import DataError, PromptError
from ic_core.governance.audit import append_record, make_record, prompt_sha256, resolve_audit_path
from ic_core.governance.policy import Policy, calibration_of, check_model
from ic_core.governance.rule import explain
from ic_core.models import LoadedModel
from ic_core.prompts import PromptTemplate, clean_prompt, custom_template, template_for

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.probes.saved import SavedProbe


@dataclass(frozen=True)
class Decision:
    """What the gate decided for one prompt, and why."""

    decision: Literal["approve", "escalate"]
    reason: str
    """One plain sentence, e.g. ``H_slot 3.10 bits > threshold 2.40 bits``."""
    signals: dict[str, Any]
    """Read-out values: ``h_int_bits``/``h_int_top100_bits`` (no prefix) or ``h_slot_bits``/
    ``h_slot_top100_bits`` (after a forced answer prefix), ``top1_prob``, ``readout_token``,
    and with a probe ``probe_p_correct`` (calibrated) and ``probe_p_correct_raw``."""
    policy_id: str
    elapsed_s: float
    """Seconds for the whole check (render, forward pass, probe, decision)."""
    model: str
    prompt_sha256: str | None = None
    """SHA-256 of the prompt text (set by :func:`gate_check`)."""
    audit_log: str | None = field(default=None)
    """Where the record was appended (None when not logged)."""
    policy_signed: bool | None = None
    """Whether the policy carried a signature (it was verified on load unless the operator
    allowed unsigned policies); None when not known (decisions outside :func:`gate_check`)."""
    guarantee: str | None = None
    """Which guarantee applies to this prompt: the policy's (:attr:`Policy.guarantee`) or
    ``out of distribution`` when the prompt's state lies outside the calibration states."""

    @property
    def escalate(self) -> bool:
        """True when a human should look before the agent acts."""
        return self.decision == "escalate"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _probe_identity(probe: object) -> str | None:
    for attr in ("probe_id", "id"):
        value = getattr(probe, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def check_probe(policy: Policy, probe: SavedProbe | None) -> None:
    """Refuse a probe other than the one the policy was calibrated with.

    Raises:
        DataError: the policy needs a probe and none was given, or the ids differ.

    """
    if not policy.uses_probe:
        return
    if probe is None:
        path = (policy.probe or {}).get("path")
        raise DataError(f"Policy {policy.policy_id} reads a probe; load the saved probe ({path}) and pass it.")
    want, have = (policy.probe or {}).get("id"), _probe_identity(probe)
    if have is not None and want != have:
        raise DataError(
            f"Policy {policy.policy_id} was calibrated with probe {want}, but probe {have} was given; "
            "use the probe the policy names or fit a new policy."
        )


def load_policy_probe(
    policy: Policy, root: str | os.PathLike[str], path: str | os.PathLike[str] | None = None
) -> SavedProbe | None:
    """The saved probe a policy reads, loaded only from inside ``root``; None when the policy reads no probe.

    Args:
        policy: The active policy (its ``probe.path`` names the file; an uploaded policy may name anything).
        root: The folder probes may be read from: :func:`ic_core.runs.store.runs_root` for the app.
        path: Another file for the same probe (the CLI's ``--probe``), also confined to ``root``.

    Raises:
        DataError: no probe path, a file outside ``root``, an unreadable probe, or not the probe
            the policy was calibrated with.

    """
    from ic_core.probes.saved import SavedProbe

    if not policy.uses_probe:
        return None
    target = path if path is not None else (policy.probe or {}).get("path")
    if not target:
        raise DataError(f"Policy {policy.policy_id} reads a probe but names no probe file; fit or save it again.")
    probe = SavedProbe.load(target, root)
    check_probe(policy, probe)
    want = {k: (policy.probe or {}).get(k) for k in ("json_sha256", "npz_sha256")}
    if any(want.values()):
        from ic_core.governance.policy import probe_digests

        have = probe_digests(target) or {}
        for key, value in want.items():
            if have.get(key) != value:
                raise DataError(
                    f"Policy {policy.policy_id} pins the probe's .{key[:-7]} to SHA-256 {str(value)[:12]}… but the file "
                    f"at {target} has {str(have.get(key))[:12]}…: the probe was swapped or changed; refit the policy."
                )
    return probe


def _signals(policy: Policy, analysis: Analysis, probe: SavedProbe | None) -> dict[str, Any]:
    state = analysis.state
    name = state.signal.lower()
    signals: dict[str, Any] = {
        f"{name}_bits": float(state.readout_entropy_bits),
        f"{name}_top100_bits": float(state.readout_entropy_top100_bits),
        "top1_prob": float(state.top1_prob),
        "readout_token": analysis.rendered.readout_token,
    }
    if probe is not None and policy.uses_probe:
        raw = float(probe.predict_proba_correct(state))
        calibration = calibration_of(policy)
        signals["probe_p_correct_raw"] = raw
        signals["probe_p_correct"] = float(calibration.apply(raw)) if calibration else raw
    return signals


def _check_readout(policy: Policy, analysis: Analysis) -> None:
    regime = analysis.rendered.regime
    if regime != policy.regime:
        raise PromptError(
            f"Policy {policy.policy_id} was fitted on {policy.regime!r} prompts but this prompt was read in the "
            f"{regime!r} regime; its entropy is on another scale. Switch the regime to {policy.regime!r}."
        )
    entropy = policy.signal if policy.signal in ("h_int", "h_slot") else policy.entropy_signal
    has_prefix = bool(analysis.rendered.answer_prefix)
    if entropy == "h_slot" and not has_prefix:
        raise PromptError(
            f"Policy {policy.policy_id} reads H_slot (after a forced answer prefix) but this prompt was read "
            "without one; give the answer prefix the policy expects."
        )
    if entropy == "h_int" and has_prefix:
        raise PromptError(
            f"Policy {policy.policy_id} reads raw H_int (no answer prefix) but this prompt was read after the "
            f"prefix {analysis.rendered.answer_prefix!r}; remove the prefix."
        )


OUT_OF_DISTRIBUTION = "out of distribution"
"""The guarantee an out-of-distribution prompt gets: none."""


def _ood_model(policy: Policy) -> Any:
    """The policy's distance model, parsed once per policy id."""
    from ic_core.stats.ood import OODModel

    cached = _OOD_CACHE.get(policy.policy_id)
    if cached is None:
        cached = OODModel.from_json(policy.ood)
        if len(_OOD_CACHE) >= 16:
            _OOD_CACHE.clear()
        _OOD_CACHE[policy.policy_id] = cached
    return cached


_OOD_CACHE: dict[str, Any] = {}


def _ood_check(policy: Policy, analysis: Analysis, signals: dict[str, Any]) -> str | None:
    """Record the prompt's distance from the calibration states; the escalation reason when it lies outside."""
    if policy.ood is None or policy.ood_layer is None:
        return None
    hidden = analysis.state.hidden
    if not 0 <= policy.ood_layer < hidden.shape[0]:
        raise DataError(f"Policy {policy.policy_id} measures layer {policy.ood_layer}, but the state has "
                        f"{hidden.shape[0]} layers.")
    model = _ood_model(policy)
    distance = model.distance(hidden[policy.ood_layer])
    signals["ood_distance"] = round(distance, 4)
    signals["ood_threshold"] = round(float(model.threshold), 4)
    if distance > model.threshold:
        return (f"out of distribution (distance {distance:.2f} > threshold {model.threshold:.2f}): the guarantee "
                "holds only for prompts like the calibration items.")
    return None


def _rule(policy: Policy, signals: dict[str, Any]) -> tuple[bool, str]:
    """The policy's rule (:func:`ic_core.governance.rule.explain`) on the gate's read-out values."""
    entropy = None
    if policy.signal in ("h_int", "h_slot", "combined") and not policy.escalate_all:
        label = policy.entropy_name
        entropy = signals.get("h_slot_bits" if label == "H_slot" else "h_int_bits")
        if entropy is None:
            raise PromptError(f"Policy {policy.policy_id} needs {label}, which this read-out does not give.")
    verdict = explain(policy, entropy, signals.get("probe_p_correct") if policy.uses_probe else None)
    return verdict.escalate, verdict.reason


def decide_for_analysis(
    policy: Policy, analysis: Analysis, probe: SavedProbe | None = None, elapsed_s: float | None = None
) -> Decision:
    """Apply a policy to an existing analysis (no forward pass, no audit record).

    Args:
        policy: The gate policy.
        analysis: The prompt's pre-generation analysis, read with the policy's template/prefix.
        probe: The saved probe the policy names (signals ``probe`` and ``combined``).
        elapsed_s: Time to report; defaults to the analysis' check time plus the probe and rule.

    A policy with a distance model first measures the prompt's state at its ``ood_layer``
    (``ood_distance``/``ood_threshold`` in the signals) and escalates a prompt outside it before
    the rule is read; :attr:`Decision.guarantee` says which guarantee applies.

    Raises:
        DataError: missing or different probe.
        PromptError: the analysis was read at another position than the policy expects.

    """
    start = time.perf_counter()
    check_probe(policy, probe)
    _check_readout(policy, analysis)
    signals = _signals(policy, analysis, probe)
    outside = _ood_check(policy, analysis, signals)
    if outside is not None:
        escalate, reason, guarantee = True, outside, OUT_OF_DISTRIBUTION
    else:
        (escalate, reason), guarantee = _rule(policy, signals), policy.guarantee
    took = elapsed_s if elapsed_s is not None else analysis.check_s + (time.perf_counter() - start)
    return Decision(
        "escalate" if escalate else "approve", reason, signals, policy.policy_id, float(took), analysis.model_label,
        guarantee=guarantee,
    )


def policy_template(policy: Policy, kind: str | None = None) -> PromptTemplate:
    """The template the policy was fitted with (its custom template, or its regime's built-in one)."""
    if policy.template_user:
        return custom_template(policy.template_user)
    return template_for(policy.regime, kind or policy.kind)


def resolve_answer_prefix(policy: Policy, answer_prefix: str | None) -> str | None:
    """The answer prefix to read a prompt with under ``policy`` (its fixed one, or the prompt's own).

    Raises:
        PromptError: a per-item policy without a prefix, a fixed policy given another one, or a
            prefix given to an H_int policy.

    """
    given = (answer_prefix or "").strip() or None
    if policy.prefix_mode == "fixed":
        if given is not None and given != policy.answer_prefix:
            raise PromptError(
                f"Policy {policy.policy_id} was fitted with the answer prefix {policy.answer_prefix!r}; "
                f"{given!r} would read the state somewhere else."
            )
        return policy.answer_prefix
    if policy.prefix_mode == "per_item":
        if given is None:
            raise PromptError(
                f"Policy {policy.policy_id} was fitted with a per-item answer prefix (e.g. 'The capital of X is'): "
                "give this prompt's prefix (--answer-prefix), ending right before the answer word."
            )
        return given
    if given is not None:
        raise PromptError(f"Policy {policy.policy_id} reads H_int without an answer prefix; do not give one.")
    return None


def gate_check(
    loaded: LoadedModel,
    policy: Policy,
    prompt: str,
    kind: str | None = None,
    probe: SavedProbe | None = None,
    audit_log: str | os.PathLike[str] | None | Literal[False] = None,
    answer_prefix: str | None = None,
    choices: Sequence[str] = (),
    *,
    actor: str | None = None,
    source: str = "api",
) -> Decision:
    """Check one prompt before the agent acts on it: one forward pass, a decision, an audit record.

    Args:
        loaded: The model (must be the policy's model).
        policy: The gate policy.
        prompt: The user's question.
        kind: Task kind for the template wording; defaults to the kind the policy was fitted on.
        probe: The saved probe, for ``probe``/``combined`` policies.
        audit_log: Where to append the record: a path, None for the default
            (``$IC_AUDIT_LOG`` or ``audit/gate_audit.jsonl``), or False for no record.
        answer_prefix: This prompt's forced answer prefix, for policies fitted per item.
        choices: Option texts for multiple-choice prompts.
        actor: Who asked, for the audit record (default: the operating-system user).
        source: Where the request came from: ``cli``, ``app``, ``api`` or ``demo``.

    Raises:
        ModelMismatchError: the loaded model is not the policy's.
        PromptError: bad prompt or missing/contradicting answer prefix.
        DataError: missing or different probe; unwritable audit log.

    """
    start = time.perf_counter()
    check_model(policy, loaded)
    check_probe(policy, probe)
    prompt = clean_prompt(prompt)
    target = None if audit_log is False else resolve_audit_path(audit_log)
    analysis = analyze(
        loaded, prompt, regime=policy.regime, kind=kind or policy.kind,
        template=policy_template(policy, kind), answer_prefix=resolve_answer_prefix(policy, answer_prefix),
        choices=tuple(choices), do_generate=False,
    )
    decision = decide_for_analysis(policy, analysis, probe, elapsed_s=0.0)
    elapsed = time.perf_counter() - start
    decision = Decision(
        decision.decision, decision.reason, decision.signals, decision.policy_id, elapsed,
        loaded.spec.label, prompt_sha256(prompt), str(target) if target is not None else None,
        policy.is_signed, decision.guarantee,
    )
    if target is not None:
        audit_decision(
            policy, decision, prompt, target, actor=actor, source=source,
            probe_sha256=(policy.probe or {}).get("npz_sha256") if probe is not None else None,
            weights_sha256=getattr(loaded, "weights_sha256", None),
        )
    return decision


def _audit_extra(policy: Policy, decision: Decision) -> dict[str, Any]:
    extra: dict[str, Any] = {"policy_signed": policy.is_signed}
    if decision.guarantee:
        extra["guarantee"] = decision.guarantee
    return extra


def audit_decision(
    policy: Policy,
    decision: Decision,
    prompt: str,
    audit_log: str | os.PathLike[str],
    *,
    actor: str | None = None,
    source: str = "api",
    probe_sha256: str | None = None,
    weights_sha256: str | None = None,
) -> dict[str, Any]:
    """Append one decision to the audit log (prompt text only when the policy allows it).

    Used by :func:`gate_check`, the server and the app when Explore shows a verdict. ``actor``
    (default: the operating-system user) and ``source`` (``cli``, ``app``, ``api``, ``demo``) say
    who asked and from where; the digests name the probe and weights the decision used, when known.

    Returns:
        The record as written (with its ``seq`` and ``record_sha256``).

    """
    logged = decision.signals if policy.store_prompt_text else {
        k: v for k, v in decision.signals.items() if k != "readout_token"}  # a prompt word when read at its end
    record = make_record(
        prompt=prompt, model=decision.model, policy_id=policy.policy_id, signals=logged,
        decision=decision.decision, reason=decision.reason, elapsed_s=decision.elapsed_s,
        store_prompt_text=policy.store_prompt_text, actor=actor, source=source,
        probe_sha256=probe_sha256, weights_sha256=weights_sha256, extra=_audit_extra(policy, decision),
    )
    return append_record(Path(audit_log), record)
