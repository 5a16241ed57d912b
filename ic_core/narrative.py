"""Plain-language sentences the pages show, built from results (tested text, not UI)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    pass
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
        f"({last.n_pos} correct); " + ("its 95 % CI lies above chance." if above else "its 95 % CI includes chance (0.5).")
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
