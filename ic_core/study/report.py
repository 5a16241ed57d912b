"""Reports of a study run: the self-contained HTML report (plotly.js embedded once) and the run summary pages show.

The report loads plotly.js from one inline ``<script>`` in its head (it works offline and never
fetches a CDN); every figure is a ``<div>`` with its own small data script. Every AUROC it shows
sits beside AURC, E-AURC and AUGRC with bootstrap CIs; a probe's P(correct) comes with its ECE
(binning stated), Brier score and a reliability diagram.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ic_core.errors import DataError
from ic_core.plots.calibration import reliability_figure
from ic_core.plots.probes import auroc_by_layer_figure
from ic_core.plots.study import (
    accuracy_figure,
    dim_eff_figure,
    lens_curves_figure,
    pca_figure,
    readout_entropy_distribution_figure,
)
from ic_core.probes.judged import selective_cells
from ic_core.prompts import READOUT_NAMES, readout_label
from ic_core.runs.store import StudyRun
from ic_core.stats.auroc import MIN_PER_CLASS, N_BOOT, N_SHUFFLES_HELD_OUT, REASON_FEW, AurocEstimate
from ic_core.stats.geometry import DimEff
from ic_core.study.compare import (
    RegimeComparison,
    default_pca_layer,
    dim_eff_by_regime,
    pca_of_layer,
    regime_comparison,
)
from ic_core.study.export import frame_records
from ic_core.study.judged import judged_signals

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.probes.report import RecoverabilityReport

MAX_TABLE_ROWS = 500
"""Rows of the per-item table written into the report (the CSV export has them all)."""

Section = tuple[str, "str | go.Figure"]
"""``(title, content)``: content is a figure or an HTML fragment the caller made safe."""

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.note{color:#555;font-size:.9em}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em}
"""


class _Figures:
    """Turns figures into ``<div>`` fragments without plotly.js (the page's head loads it once)."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig: go.Figure) -> str:
        self.count += 1
        height = fig.layout.height
        return fig.to_html(include_plotlyjs=False, full_html=False, default_height=f"{height or 420}px",
                           div_id=f"fig-{self.count}", config={"displaylogo": False})


def item_prefix_text(run: StudyRun) -> str:
    """Whether the direct regime read after the items' own answer prefixes, from what its rows record.

    ``used on 30 of 30 direct rows``; ``none in this prompt set`` when the option was on but no item
    carries a prefix; ``not used (turned off)`` when the run was started without them. A run-wide
    prefix for the other items is named after it.
    """
    m = run.manifest
    generic = m.get("answer_prefix")
    tail = f"; “{generic}” for the items without one" if generic else ""
    if not m.get("use_item_prefix"):
        return "not used (turned off)" + tail
    table = run.table
    direct = table[table["regime"] == "direct"] if len(table) else table
    if len(direct) == 0 or "item_prefix_used" not in direct:
        return ("no direct rows" if len(table) else "no rows finished yet") + tail
    used = int(direct["item_prefix_used"].fillna(False).astype(bool).sum())
    if used == 0:
        return "none in this prompt set" + tail
    return f"used on {used} of {len(direct)} direct rows" + tail


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, na_rep="n/a", border=0)


def summary_markdown(run: StudyRun) -> str:
    """The run at a glance (Markdown, one fact per line): model, prompt set, regimes and settings, compute time."""
    m = run.manifest
    tokens = m.get("generation", {}).get("max_new_tokens_by_regime") or {}
    created = str(m.get("created") or "?").replace("T", " ")[:16]
    return (
        f"**Model** {m.get('model_label', '?')}  \n"
        f"**Prompt set** {m.get('dataset', {}).get('name', '?')} (n={m.get('n_items')})  \n"
        f"**Regimes** {', '.join(run.regimes)} · item answer prefixes (direct) "
        f"{item_prefix_text(run)} · new tokens "
        f"{', '.join(f'{k} {v}' for k, v in tokens.items()) or '?'}  \n"
        f"**Compute** {float(m.get('elapsed_s') or 0):.0f} s · created {created} UTC"
    )


def _header(run: StudyRun) -> str:
    m = run.manifest
    ds = m.get("dataset", {})
    facts = [
        ("Run", run.name), ("Status", run.status), ("Model", m.get("model_label")),
        ("Layers / width", f"{m.get('n_layers')} / {m.get('d_model')}"),
        ("Prompt set", f"{ds.get('name')} ({m.get('n_items')} items of {ds.get('n_items_in_set')}; sha256 {str(ds.get('sha256'))[:12]}…)"),
        ("Regimes", ", ".join(run.regimes)), ("Rows finished", f"{len(run.table)} of {run.n_planned}"),
        ("Item answer prefixes (direct)", item_prefix_text(run)),
        ("Generation", json.dumps(m.get("generation", {}).get("max_new_tokens_by_regime", {}))
         + (" greedy" if not m.get("generation", {}).get("config", {}).get("do_sample") else " sampled")),
        ("Created", m.get("created")), ("Compute time", f"{float(m.get('elapsed_s') or 0):.0f} s"),
        ("Versions", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    return f"<table>{rows}</table>"


def _items_table(run: StudyRun) -> str:
    cols = ["item_id", "regime", "question", "expected", "output_text", "extracted_answer", "correct", "readout_entropy_bits",
            "signal"]
    table = run.table.head(MAX_TABLE_ROWS)
    frame = table[cols].copy()
    frame["readout_entropy_bits"] = frame["readout_entropy_bits"].map(lambda v: f"{v:.2f}")
    frame["correct"] = [_verdict_cell(c, r) for c, r in zip(
        table["correct"], table.to_dict("records"))]
    frame["extracted_answer"] = frame["extracted_answer"].map(lambda v: "" if v is None else v)
    note = ("" if len(run.table) <= MAX_TABLE_ROWS
            else f"<p class='note'>First {MAX_TABLE_ROWS} of {len(run.table)} rows; download the CSV for all.</p>")
    return note + _table_html(frame)


def _verdict_cell(correct: object, row: dict) -> str:
    """``True``/``False`` for a graded row; the control's compliance (``complied`` / ``did not comply: …``)."""
    if isinstance(correct, (bool, np.bool_)):
        return str(bool(correct))
    complied = row.get("complied")
    if isinstance(complied, (bool, np.bool_)):
        return "control: complied" if complied else f"control: did not comply ({row.get('compliance_reason')})"
    return "n/a"


def _pairs_table(pairs: pd.DataFrame) -> str:
    """The paired tests with readable numbers (bits to 2 decimals, p to 2 significant digits)."""
    out = pairs.copy()
    for col in ("mean_diff_bits", "median_diff_bits"):
        if col in out:
            out[col] = out[col].map(lambda v: "" if v is None or pd.isna(v) else f"{v:+.2f}")
    if "p_value" in out:
        out["p_value"] = out["p_value"].map(lambda v: "" if v is None or pd.isna(v) else f"{v:.2g}")
    return _table_html(out)


def _judged_section(run: StudyRun) -> str:
    """Each fixed score per answer regime: AUROC beside AURC, E-AURC and AUGRC (the reason where no number)."""
    judged = judged_signals(run)
    if not judged:
        return "<p class='note'>No graded rows in an answer regime: no signal can be judged.</p>"
    return _table_html(pd.DataFrame([j.row() for j in judged])) + (
        f"<p class='note'>Each score is judged as it is (nothing fitted) on the regime's graded rows; larger = "
        f"trusted more. AUROC: bootstrap 95 % CI ({N_BOOT} resamples) and the mean AUROC over "
        f"{N_SHUFFLES_HELD_OUT} label permutations (≈ 0.5 when nothing leaks). {_SELECTIVE_NOTE} "
        f"“{REASON_FEW}”: fewer than {MIN_PER_CLASS} right or {MIN_PER_CLASS} wrong answers.</p>")


_SELECTIVE_NOTE = (
    "AURC: mean error rate among the k most trusted items over k = 1 … n; E-AURC: AURC minus that of a perfect "
    "ranking of the same answers (0 = perfect); AUGRC: area under the generalized risk–coverage curve (the share "
    "of all items that are approved and wrong). Lower is better for all three; their CIs use the AUROC's resamples."
)


def _estimate_row(rep: RecoverabilityReport, est: AurocEstimate, **first: str) -> dict[str, str]:
    sel = rep.selective_of(est.name)
    return {**first, "signal": est.name, "AUROC [95 % CI]": est.ci_text(),
            "shuffled labels (mean)": "n/a" if est.shuffle_mean is None else f"{est.shuffle_mean:.2f}",
            **(selective_cells(sel) if sel is not None else {}), "right / wrong": est.counts_text()}


def recoverability_html(rep: RecoverabilityReport, figs: _Figures) -> str:
    """The probe results of one selection: AUROCs with selective statistics, by-layer curve, calibration."""
    rows = [_estimate_row(rep, e, kind="fitted in nested CV" if e.kind == "probe" else "fixed score")
            for e in (rep.last_layers, *rep.signals, *rep.baselines)]
    layers = [_estimate_row(rep, e, layer=str(i)) for i, e in enumerate(rep.by_layer)]
    cal = rep.calibration
    parts = [
        f"<p>Selection <b>{html.escape(rep.selection)}</b>: {rep.n} graded rows ({rep.n_pos} right, "
        f"{rep.n - rep.n_pos} wrong{f'; {rep.n_ungraded} ungraded left out' if rep.n_ungraded else ''}).</p>",
        _table_html(pd.DataFrame(rows)),
        f"<p class='note'>Probes: stratified {rep.settings.get('outer_folds')}-fold outer CV, C chosen by an inner "
        f"CV only, AUROC of the pooled out-of-fold scores with a bootstrap 95 % CI; shuffled labels: the same "
        f"protocol on permuted labels. {_SELECTIVE_NOTE}</p>",
        figs.html(auroc_by_layer_figure(list(rep.by_layer), rep.last_layers)),
        "<details><summary>Per layer: AUROC beside AURC, E-AURC and AUGRC</summary>"
        + _table_html(pd.DataFrame(layers)) + "</details>",
        f"<h3>Calibration of the {html.escape(rep.last_layers.name)} probe's P(correct)</h3>",
    ]
    if cal is None or cal.bins is None:
        parts.append(f"<p class='note'>Not computed: {html.escape(cal.reason if cal else 'no probe')}.</p>")
    else:
        parts += [f"<p>{html.escape(cal.ece_text())} · {html.escape(cal.brier_text())} · {cal.n} items, each scored "
                  "by the probe refitted without its own fold (the C its inner CV chose).</p>",
                  figs.html(reliability_figure(cal.bins, title=f"Reliability of P(correct), out of fold ({cal.n} items)"))]
    return "".join(parts)


def _pca_section(run: StudyRun, figs: _Figures) -> str:
    layer = default_pca_layer(run.n_layers)
    try:
        p = pca_of_layer(run, layer)
    except DataError as exc:
        return f"<p class='note'>{html.escape(str(exc))}</p>"
    regimes = run.table["regime"].to_numpy()[p.rows]
    return figs.html(pca_figure(p.scores, list(regimes), "regime", p.explained_ratio, layer=layer))


def build_report(
    run: StudyRun, extra_sections: Sequence[Section] | None = None, comparison: RegimeComparison | None = None,
    dim_effs: Mapping[str, DimEff] | None = None, recoverability: RecoverabilityReport | None = None,
) -> str:
    """The whole report as one HTML string (plotly.js, ~4.8 MB of it, inline once in the head; figures as divs).

    Args:
        run: A loaded study run.
        extra_sections: ``(title, figure or HTML fragment)`` pairs appended at the end (e.g. the
            recoverability results). Titles are escaped; HTML fragments are inserted as given.
        comparison: A precomputed :func:`ic_core.study.compare.regime_comparison` (computed if omitted).
        dim_effs: A precomputed :func:`ic_core.study.compare.dim_eff_by_regime` (computed if omitted).
        recoverability: A :func:`ic_core.probes.report.recoverability` of this run, shown as its own section
            (probe AUROCs with selective statistics, the by-layer curve, the probe's calibration).

    """
    figs = _Figures()
    parts = [f"<h1>Study report: {html.escape(run.name)}</h1>", _header(run)]
    if len(run.table) == 0:
        parts.append("<p>No rows finished in this run yet.</p>")
    else:
        dims = dim_effs if dim_effs is not None else dim_eff_by_regime(run)
        comparison = comparison or regime_comparison(run, dim_effs=dims)
        parts += ["<h2>Regimes compared</h2>", _table_html(comparison.paper_table().reset_index(names="")),
                  "<p class='note'>Accuracy intervals: Wilson 95 %. dim_eff: participation ratio per layer, "
                  "averaged with weights ∝ the layer's total variance; it cannot exceed N − 1.</p>"]
        pairs = pd.DataFrame(frame_records(comparison.pairs))
        if len(pairs):
            parts += ["<h3>Paired test of the read-out entropy between regimes (Wilcoxon signed-rank)</h3>", _pairs_table(pairs)]
        parts += ["<h2>Accuracy</h2>", figs.html(accuracy_figure(comparison.per_regime))]
        signal = readout_label(run.table["signal"])
        heading = "Read-out entropy" if signal == "mixed" else READOUT_NAMES[signal]
        parts += [f"<h2>{html.escape(heading)} by regime</h2>", figs.html(readout_entropy_distribution_figure(
            run.table["regime"].tolist(), run.table["readout_entropy_bits"].to_numpy(), run.table["correct"].tolist(),
            signal=signal))]
        parts += ["<h2>Logit-lens entropy by layer</h2>",
                  figs.html(lens_curves_figure(run.lens_entropy_bits[run.table["row"].to_numpy()], run.table["regime"].tolist()))]
        if dims:
            parts += ["<h2>Effective dimensionality</h2>", figs.html(dim_eff_figure(dims))]
        parts += ["<h2>PCA of I</h2>", _pca_section(run, figs)]
        parts += ["<h2>Signals judged as a gate (AUROC and selective-prediction statistics)</h2>", _judged_section(run)]
        if recoverability is not None:
            parts += ["<h2>Recoverability: probes and baselines</h2>", recoverability_html(recoverability, figs)]
        parts += ["<h2>Items</h2>", _items_table(run)]
    for title, content in extra_sections or ():
        body = figs.html(content) if isinstance(content, go.Figure) else str(content)
        parts += [f"<h2>{html.escape(title)}</h2>", body]
    manifest = json.dumps(run.manifest, indent=2, ensure_ascii=False, default=_json_default)
    parts += ["<h2>Manifest</h2>", f"<pre>{html.escape(manifest)}</pre>",
              f"<p class='note'>Generated {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} by the "
              "Intention Collapse Dashboard.</p>"]
    title = html.escape(f"Study report: {run.name}")
    script = f"<script type='text/javascript'>{get_plotlyjs()}</script>" if figs.count else ""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style>{script}</head><body>{''.join(parts)}</body></html>")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
