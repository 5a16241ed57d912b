"""Plain-language sentences the pages show, built from results (tested text, not UI)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.governance.compare import SignalComparison
    from ic_core.governance.gate import Decision
    from ic_core.governance.policy import Policy
    from ic_core.governance.signals import RunSignals
    from ic_core.stats.gating import HeldOutReport
from ic_core.probes.report import RecoverabilityReport
from ic_core.stats.auroc import AurocEstimate


def auroc_text(estimate: AurocEstimate) -> str:
    """``"0.71 [0.58, 0.83]"``; ``"0.71 [CI n/a]"`` without a CI; the reason when there is no AUROC."""
    if estimate.auroc_pooled is None:
        return estimate.reason or "n/a"
    ci = estimate.ci95
    return f"{estimate.auroc_pooled:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " [CI n/a]")


def signal_verdict(estimate: AurocEstimate) -> str:
    """What a held-out AUROC says about a gating signal, read from its 95 % CI against chance (0.5)."""
    ci = estimate.ci95
    if estimate.auroc_pooled is None or ci is None:
        return "cannot tell (" + (estimate.reason or "CI not available") + ")"
    if ci[0] > 0.5:
        return "ranks right answers above wrong ones better than chance"
    if ci[1] < 0.5:
        return "ranks them the wrong way round"
    return "no evidence of any signal (the CI includes 0.5)"


def reading(report: RecoverabilityReport) -> list[str]:
    """A plain-language reading of the report, one sentence per line."""
    lines = []
    last = report.last_layers
    if report.n_ungraded:
        lines.append(f"{report.n_ungraded} of {report.n_rows} rows could not be graded and are left out.")
    if not last.ok:
        lines.append(f"No probe AUROC for this selection: {last.reason} "
                     f"({report.n} graded rows, {report.n_pos} correct).")
        return lines
    assert last.auroc_pooled is not None
    above = last.ci_low is not None and last.ci_low > 0.5
    lines.append(
        f"The last-{len(report.last_layer_indices)}-layers probe reaches AUROC {last.ci_text()} on {last.n} answers "
        f"({last.n_pos} right, {last.n_neg} wrong); " + ("its 95 % CI lies above chance." if above else "its 95 % CI includes chance (0.5).")
    )
    if last.shuffle_mean is not None:
        lines.append(f"With shuffled labels the same protocol gives {last.shuffle_mean:.2f} "
                     f"(range {last.shuffle_min:.2f}–{last.shuffle_max:.2f}, {last.n_shuffles} permutations).")
    ent = report.baseline("−")
    cmp = None if ent is None else report.difference(ent.name)
    if ent is not None and cmp is not None:
        if cmp.clear and cmp.diff > 0:
            verdict = f"The probe beats {ent.name} ({ent.ci_text()}) by {cmp.text()} AUROC (paired bootstrap)."
        elif cmp.clear:
            verdict = f"{ent.name} ({ent.ci_text()}) beats the probe: difference {cmp.text()} (paired bootstrap)."
        else:
            verdict = (f"The probe and {ent.name} ({ent.ci_text()}) cannot be told apart here: difference "
                       f"{cmp.text()} (paired bootstrap CI includes 0); the state adds little beyond that entropy.")
        lines.append(verdict)
    text = report.baseline("question text only")
    if text is not None and text.ok:
        d = report.difference(text.name)
        if d is not None and d.clear and d.diff > 0:
            tail = f": the state carries more than the question's words (probe − question-only {d.text()})."
        else:
            tail = (": part of the signal may be the question's surface (which items the model knows), "
                    "not the state.")
        lines.append(f"The question-only probe reaches {text.ci_text()}{tail}")
    length = report.baseline("prompt length")
    if length is not None and length.ok and length.auroc_pooled >= 0.6:
        lines.append(f"Prompt length alone reaches {length.ci_text()}: a shortcut to keep in mind.")
    lines.extend(other_signal_lines(report))
    lines.extend(shortcut_lines(report))
    lines.extend(strata_lines(report))
    best = report.best_layer()
    if best is not None:
        lines.append(f"The best single layer is {best.name} ({best.ci_text()}); picking it after looking at "
                     f"every layer is optimistic, so the {last.name} probe (a fixed choice) is the headline.")
    if report.constant_layers:
        layers = report.constant_layers
        which = f"Layer {layers[0]} is" if len(layers) == 1 else f"Layers {', '.join(map(str, layers))} are"
        lines.append(f"{which} identical for every item (the chat template ends every prompt with the same "
                     "token), so not probed.")
    return lines


def other_signal_lines(report: RecoverabilityReport) -> list[str]:
    """One sentence on the difference-of-means direction and the scalar read-out probe, if computed."""
    shown = [f"the {s.name} {s.ci_text()}" for s in report.signals]
    if not shown:
        return []
    return [f"Beside the linear probe, on the same answers and folds: {'; '.join(shown)}."]


def shortcut_lines(report: RecoverabilityReport) -> list[str]:
    """For each signal, the shortcuts (no model state) it does not beat: paired-bootstrap CI of the difference ≤ 0."""
    lines = []
    for signal in (report.last_layers, *report.signals):
        if not signal.ok:
            continue
        failed = []
        for shortcut in report.shortcuts():
            d = report.comparison(signal.name, shortcut.name)
            if d is not None and not (d.clear and d.diff > 0):
                failed.append(f"{shortcut.name} ({shortcut.ci_text()}; difference {d.text()})")
        if failed:
            lines.append(f"The {signal.name} does not beat the shortcut {', nor '.join(failed)}: the paired "
                         "bootstrap CI of the difference includes 0 or lies below it, so this much could come "
                         "from the items alone.")
    return lines


def strata_lines(report: RecoverabilityReport) -> list[str]:
    """Within-strata AUROCs in words, and whether a signal knows anything inside a stratum."""
    lines = []
    for r in report.strata:
        if r.auroc_within is None:
            lines.append(f"Within {r.shortcut} strata, {r.signal}: {r.reason}.")
            continue
        inside = ("it still separates right from wrong inside a stratum" if r.ci_low is not None and r.ci_low > 0.5
                  else "inside a stratum it shows no signal beyond the shortcut (the CI includes 0.5)")
        pooled = "n/a" if r.auroc_pooled is None else f"{r.auroc_pooled:.2f}"
        lines.append(f"Within {r.shortcut} strata ({r.n_strata} strata, {r.n_pos} right, {r.n_neg} wrong), "
                     f"{r.signal} reaches {r.ci_text()} against {pooled} pooled: {inside}.")
    return lines


# --------------------------------------------------------------------------------------
# Governance: rates, rules and the signal comparison in words
# --------------------------------------------------------------------------------------

SMALL_HELD_OUT = 40
"""Below this many held-out items the page warns that the intervals are wide."""


def percent_text(x: float | None) -> str:
    """``"42%"``; ``"n/a"`` for None or NaN (e.g. the error among approved when nothing is approved)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def rate_ci_text(value: float | None, ci: tuple[float, float] | None) -> str:
    """``"20% [10%, 35%]"``; ``"20% [CI n/a]"`` without a CI; ``"n/a (nothing approved)"`` without a value."""
    if value is None:
        return "n/a (nothing approved)"
    return f"{value:.0%}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else " [CI n/a]")


def ci_caption(ci: tuple[float, float] | None) -> str:
    """``"95 % CI [10%, 35%]"``, or why there is none."""
    return f"95 % CI [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "95 % CI n/a (too few items)"


def signal_labels(entropy_signal: str) -> dict[str, str]:
    """The gating signals a run offers (its entropy read-out, the probe, both), each with a label."""
    from ic_core.governance.policy import ENTROPY_NAMES

    entropy = ENTROPY_NAMES[entropy_signal]
    where = "after the answer prefix" if entropy_signal == "h_slot" else "at the last prompt token"
    return {
        entropy_signal: f"{entropy} ({where})",
        "probe": "probe P(correct) (fitted on the training items)",
        "combined": f"combined: {entropy} or probe",
    }


def split_caption(signals: RunSignals) -> str:
    """How many items the rule is tuned and judged on, and how the run was read."""
    return (f"{signals.train_idx.size} training and {signals.test_idx.size} held-out items "
            f"({signals.n_ungraded_excluded} ungraded left out) · prefix mode **{signals.prefix_mode}**.")


def probe_source_caption(source: str, probe_id: str, external: bool) -> str:
    """Where the probe's P(correct) comes from, and why no item is scored by a probe that saw it."""
    if external:
        return (f"Probe: {source}. It never saw this run's items; its P(correct) is calibrated on the "
                "training items only.")
    return (f"Probe: {source} (probe {probe_id}). Training items are scored out of fold, held-out items by the "
            "probe fitted on all training items — no item is scored by a probe that saw it. Probes saved in the "
            "run's probes/ folder were fitted on every item, held-out ones included, so they are not offered here.")


def threshold_origin_note(fitted: bool) -> str:
    """Whether the held-out figures of a rule can be trusted as they are."""
    if fitted:
        return "Thresholds fitted on the training items only."
    return "Thresholds set by hand: if you moved them while looking at held-out items, these figures are optimistic."


def held_out_caption(report: HeldOutReport, note: str) -> str:
    """What the rule did to the held-out items, in counts, followed by ``note``."""
    conf = report.confusion
    return (f"Held out: **{conf.caught}** wrong answers caught, **{conf.slipped}** slipped through, "
            f"**{conf.cost}** right answers escalated needlessly. {note}")


def comparison_intro(comp: SignalComparison) -> str:
    """The split, the error with no gate and the target of a signal comparison."""
    sig = comp.signals
    wrong = float(np.mean(~sig.correct[sig.test_idx]))
    return (f"**Fitted on {sig.train_idx.size} training items, judged on {sig.test_idx.size} held-out items** "
            f"(stratified split, seed {sig.seed}; {sig.n_ungraded_excluded} ungraded rows left out). "
            f"With no gate, {percent_text(wrong)} of the held-out answers are wrong. "
            f"Target: at most {comp.target_error:.0%} wrong among auto-approved answers.")


def comparison_rows(comp: SignalComparison) -> list[dict[str, object]]:
    """One display row per compared signal: held-out AUROC, shuffle control, verdict, rule and rates."""
    rows: list[dict[str, object]] = []
    for r in comp.results:
        ho = r.held_out
        rows.append({
            "signal": r.name,
            "held-out AUROC [95 % CI]": auroc_text(r.auroc),
            "shuffled labels": "n/a" if r.auroc.shuffle_mean is None else f"{r.auroc.shuffle_mean:.2f}",
            "verdict": signal_verdict(r.auroc),
            "rule (fitted on training items)": r.threshold_text,
            "escalated [95 % CI]": rate_ci_text(ho.escalation_rate, ho.escalation_rate_ci),
            "error among approved [95 % CI]": rate_ci_text(ho.error_among_approved, ho.error_among_approved_ci),
            "caught": ho.confusion.caught,
            "slipped through": ho.confusion.slipped,
        })
    return rows


def comparison_headline(comp: SignalComparison) -> str:
    """One honest sentence from the held-out AUROCs: which signals beat chance, which show none."""
    with_signal = [r.name for r in comp.results if r.auroc.ci95 is not None and r.auroc.ci95[0] > 0.5]
    without = [r.name for r in comp.results if r.auroc.ci95 is not None and r.auroc.ci95[0] <= 0.5]
    if not with_signal:
        return ("On these held-out items **no signal separates right from wrong answers beyond chance** (every "
                "95 % interval includes 0.5): a gate built on them escalates at random. Say so rather than "
                "deploy it; a larger or more answerable set, or a stronger model, may change this.")
    text = f"**{', '.join(with_signal)}** rank right answers above wrong ones better than chance on held-out items"
    if without:
        text += f"; **{', '.join(without)}** show no evidence of signal (interval includes 0.5)"
    return text + "."


def small_sample_note(n_held_out: int) -> str | None:
    """A warning that the intervals are wide when fewer than :data:`SMALL_HELD_OUT` items are held out."""
    if n_held_out >= SMALL_HELD_OUT:
        return None
    return f"Only {n_held_out} held-out items: the intervals are wide. Read them, not just the point values."


def escalates_everything_warning(signal_name: str, rule_text: str) -> str:
    """Why a rule that escalates every held-out item is not a perfect gate."""
    return (f"**{signal_name}: every held-out item is escalated** ({rule_text}). Nothing slips through only "
            "because nothing is approved: this rule saves no human work.")


def active_policy_text(policy: Policy) -> str:
    """The active policy: its id, rule, signal, regime, prefix mode and model (Markdown, two lines)."""
    return (f"**Active policy** `{policy.policy_id}` — {policy.describe()}  \n"
            f"Signal {policy.signal}, regime {policy.regime}, prefix mode {policy.prefix_mode}, "
            f"model {policy.model.get('name')}.")


def recorded_held_out_text(policy: Policy) -> str | None:
    """The held-out figures a policy carries, or None when it records none."""
    held = policy.held_out or {}
    if not held:
        return None
    return (f"Held-out figures recorded in the policy: n = {held.get('n_held_out')}, escalation rate "
            f"{percent_text(held.get('escalation_rate'))}, error among approved "
            f"{percent_text(held.get('error_among_approved'))}.")


def decision_text(decision: Decision) -> str:
    """``"**ESCALATE** — <reason> (0.12 s, logged to <path>)"``."""
    return (f"**{decision.decision.upper()}** — {decision.reason} ({decision.elapsed_s:.2f} s, "
            f"logged to {decision.audit_log})")


# --------------------------------------------------------------------------------------
# Thresholds with a guarantee (issue 12): signal quality, the gate's guarantee line
# --------------------------------------------------------------------------------------


def quality_rows(qualities: list) -> list[dict[str, object]]:
    """One display row per signal: held-out AUROC beside AURC, E-AURC and AUGRC (each with its 95 % CI).

    ``qualities`` are :class:`ic_core.governance.compare.SignalQuality` on the same held-out items.
    """
    rows: list[dict[str, object]] = []
    for q in qualities:
        a = q.auroc
        rows.append({
            "signal": q.name,
            "held-out AUROC [95 % CI]": auroc_text(a),
            "shuffled labels": "n/a" if a.shuffle_mean is None else f"{a.shuffle_mean:.2f}",
            "AURC [95 % CI]": q.selective.aurc.ci_text(),
            "E-AURC [95 % CI]": q.selective.eaurc.ci_text(),
            "AUGRC [95 % CI]": q.selective.augrc.ci_text(),
            "right / wrong": a.counts_text(),
        })
    return rows


def guarantee_line(decision: Decision) -> str:
    """Which guarantee applies to this prompt, in one line (Markdown)."""
    from ic_core.governance.gate import OUT_OF_DISTRIBUTION

    g = decision.guarantee
    if g == OUT_OF_DISTRIBUTION:
        d, t = decision.signals.get("ood_distance"), decision.signals.get("ood_threshold")
        where = f" (distance {d:.2f} > threshold {t:.2f})" if d is not None and t is not None else ""
        return (f"**Guarantee for this prompt: none — out of distribution**{where}: it is unlike the calibration "
                "items, so the policy's guarantee does not cover it.")
    d, t = decision.signals.get("ood_distance"), decision.signals.get("ood_threshold")
    inside = f" The prompt lies inside the calibration states (distance {d:.2f} ≤ {t:.2f})." if d is not None and t is not None else ""
    if not g:
        return "**Guarantee for this prompt:** not recorded (a policy from before guarantees were stored)." + inside
    if g.startswith("error among approved"):
        return (f"**Guarantee for this prompt: certified (Learn then Test)** — {g}, on prompts like the "
                f"calibration items.{inside}")
    return f"**Guarantee for this prompt: {g}**.{inside}"


def compliance_line(complied: bool, reason: str) -> str:
    """The babble control's verdict on one output, in one line (Markdown); the same rule a study applies.

    Args:
        complied: :attr:`ic_core.compliance.Compliance.complied`.
        reason: :attr:`ic_core.compliance.Compliance.reason` (``complied``, ``contains the answer``, ...).

    """
    if complied:
        return ("**Control complied:** the output neither names the answer nor works out a result "
                "(babble is a control: it is checked for compliance, never graded).")
    return (f"**Control did not comply:** the output {reason} "
            "(babble is a control: it is checked for compliance, never graded).")
