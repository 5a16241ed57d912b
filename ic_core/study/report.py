"""Reports of a study run: the self-contained HTML report (plotly.js embedded once) and the run summary pages show."""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ic_core.errors import DataError
from ic_core.plots.study import (
    accuracy_figure,
    dim_eff_figure,
    lens_curves_figure,
    pca_figure,
    readout_entropy_distribution_figure,
)
from ic_core.prompts import READOUT_NAMES, readout_label
from ic_core.runs.store import StudyRun
from ic_core.stats.geometry import DimEff
from ic_core.study.compare import (
    RegimeComparison,
    default_pca_layer,
    dim_eff_by_regime,
    pca_of_layer,
    regime_comparison,
)
from ic_core.study.export import frame_records

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
    """Turns figures into HTML; only the first one carries plotly.js."""

    def __init__(self) -> None:
        self.first = True

    def html(self, fig: go.Figure) -> str:
        out = fig.to_html(include_plotlyjs=self.first, full_html=False, default_height="420px")
        self.first = False
        return out


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
        f"**Regimes** {', '.join(run.regimes)} · item prefixes (direct) "
        f"{'used' if m.get('use_item_prefix') else 'not used'} · new tokens "
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
        ("Item answer prefixes (direct)", "used" if m.get("use_item_prefix") else "not used"),
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
    frame = run.table[cols].head(MAX_TABLE_ROWS).copy()
    frame["readout_entropy_bits"] = frame["readout_entropy_bits"].map(lambda v: f"{v:.2f}")
    frame["correct"] = frame["correct"].map(lambda v: "n/a" if v is None else str(bool(v)))
    note = ("" if len(run.table) <= MAX_TABLE_ROWS
            else f"<p class='note'>First {MAX_TABLE_ROWS} of {len(run.table)} rows; download the CSV for all.</p>")
    return note + _table_html(frame)


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
    dim_effs: Mapping[str, DimEff] | None = None,
) -> str:
    """The whole report as one HTML string (about 4 MB: plotly.js is embedded once).

    Args:
        run: A loaded study run.
        extra_sections: ``(title, figure or HTML fragment)`` pairs appended at the end (e.g. the
            recoverability results). Titles are escaped; HTML fragments are inserted as given.
        comparison: A precomputed :func:`ic_core.study.compare.regime_comparison` (computed if omitted).
        dim_effs: A precomputed :func:`ic_core.study.compare.dim_eff_by_regime` (computed if omitted).

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
            parts += ["<h3>Paired test of the read-out entropy between regimes (Wilcoxon signed-rank)</h3>", _table_html(pairs)]
        parts += ["<h2>Accuracy</h2>", figs.html(accuracy_figure(comparison.per_regime))]
        signal = readout_label(run.table["signal"])
        parts += [f"<h2>{html.escape(READOUT_NAMES[signal])} by regime</h2>", figs.html(readout_entropy_distribution_figure(
            run.table["regime"].tolist(), run.table["readout_entropy_bits"].to_numpy(), run.table["correct"].tolist(),
            signal=signal))]
        parts += ["<h2>Logit-lens entropy by layer</h2>",
                  figs.html(lens_curves_figure(run.lens_entropy_bits[run.table["row"].to_numpy()], run.table["regime"].tolist()))]
        if dims:
            parts += ["<h2>Effective dimensionality</h2>", figs.html(dim_eff_figure(dims))]
        parts += ["<h2>PCA of I</h2>", _pca_section(run, figs)]
        parts += ["<h2>Items</h2>", _items_table(run)]
    for title, content in extra_sections or ():
        body = figs.html(content) if isinstance(content, go.Figure) else str(content)
        parts += [f"<h2>{html.escape(title)}</h2>", body]
    manifest = json.dumps(run.manifest, indent=2, ensure_ascii=False, default=_json_default)
    parts += ["<h2>Manifest</h2>", f"<pre>{html.escape(manifest)}</pre>",
              f"<p class='note'>Generated {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} by the "
              "Intention Collapse Dashboard.</p>"]
    title = html.escape(f"Study report: {run.name}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
