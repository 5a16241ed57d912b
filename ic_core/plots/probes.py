"""Figures for recoverability: AUROC by layer with CI and shuffle bands, ROC curves, baselines.

Pure functions: :class:`ic_core.stats.auroc.AurocEstimate` objects in, ``go.Figure`` out. A result
without an AUROC (``reason`` set) is never drawn as a value: it is marked with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ic_core.plots.study import clear_axes
from ic_core.stats.auroc import AurocEstimate

PROBE_COLOUR = "#1f77b4"
SHUFFLE_COLOUR = "#7f7f7f"
ROC_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


def _opt(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None else float(v) for v in values]


def auroc_by_layer_figure(
    results: Sequence[AurocEstimate], last_layers: AurocEstimate | None = None, title: str = "Which layer knows?"
) -> go.Figure:
    """Probe AUROC per ``hidden_states`` index with its bootstrap 95 % CI band and the shuffle control.

    Args:
        results: one result per layer, index = layer (0 = embeddings).
        last_layers: the last-5-layers probe, drawn as a horizontal reference line.

    Layers without an AUROC (constant state, n too small) are shaded and labelled with the
    reason; the AUROC line has a gap there.

    """
    layers = list(range(len(results)))
    fig = go.Figure()
    ok = [r.ok for r in results]
    lo = _opt([r.ci_low if r.ok else None for r in results])
    hi = _opt([r.ci_high if r.ok else None for r in results])
    s_lo = _opt([r.shuffle_min if r.ok else None for r in results])
    s_hi = _opt([r.shuffle_max if r.ok else None for r in results])
    if any(v is not None for v in s_hi):
        fig.add_trace(go.Scatter(x=layers, y=s_hi, mode="lines", line=dict(width=0), showlegend=False,
                                 hoverinfo="skip", connectgaps=False))
        fig.add_trace(go.Scatter(
            x=layers, y=s_lo, mode="lines", line=dict(width=0), fill="tonexty",
            fillcolor="rgba(127,127,127,0.25)", name="shuffled labels (min–max)", hoverinfo="skip",
        ))
        fig.add_trace(go.Scatter(
            x=layers, y=_opt([r.shuffle_mean if r.ok else None for r in results]), mode="lines",
            line=dict(color=SHUFFLE_COLOUR, dash="dot"), name="shuffled labels (mean)",
            hovertemplate="layer %{x}: shuffled %{y:.3f}<extra></extra>",
        ))
    fig.add_trace(go.Scatter(x=layers, y=hi, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=layers, y=lo, mode="lines", line=dict(width=0), fill="tonexty", fillcolor="rgba(31,119,180,0.2)",
        name="probe 95 % CI (bootstrap)", hoverinfo="skip",
    ))
    fig.add_trace(go.Scatter(
        x=layers, y=_opt([r.auroc_pooled for r in results]), mode="lines+markers", name="probe AUROC (pooled out-of-fold)",
        line=dict(color=PROBE_COLOUR, width=2), customdata=[[r.ci_text()] for r in results],
        hovertemplate="layer %{x}: %{customdata[0]}<extra></extra>",
    ))
    for layer, (flag, r) in enumerate(zip(ok, results)):
        if not flag:
            fig.add_vrect(x0=layer - 0.45, x1=layer + 0.45, fillcolor="rgba(200,200,200,0.5)", line_width=0,
                          annotation_text=r.reason or "not probed", annotation_position="top left",
                          annotation_textangle=-90, annotation_font_size=10)
    fig.add_hline(y=0.5, line_dash="dash", line_color="black", annotation_text="chance (0.5)",
                  annotation_position="bottom right")
    if last_layers is not None and last_layers.ok:
        fig.add_hline(y=last_layers.auroc_pooled, line_dash="dashdot", line_color="#2ca02c",
                      annotation_text=f"{last_layers.name}: {last_layers.ci_text()}", annotation_position="top right")
    fig.update_layout(
        title=title, xaxis_title="layer (hidden_states index; 0 = embeddings)",
        yaxis_title="AUROC predicting a correct answer (0–1)", height=420, margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", y=-0.2),
    )
    fig.update_yaxes(range=[0, 1])
    fig.update_xaxes(range=[-0.5, max(len(results) - 0.5, 0.5)], dtick=max(1, len(results) // 15))
    return clear_axes(fig)


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of ``scores`` (larger = predicted correct)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=float))
    return fpr, tpr


def roc_figure(results: Sequence[AurocEstimate], title: str = "ROC: predicting a correct answer") -> go.Figure:
    """One ROC curve per result with an AUROC (out-of-fold probe scores or the baseline score).

    Results without an AUROC are listed in the legend with their reason, no curve.
    """
    fig = go.Figure()
    for i, r in enumerate(results):
        colour = ROC_COLOURS[i % len(ROC_COLOURS)]
        if not r.ok or r.scores is None or r.labels is None:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{r.name}: {r.reason or 'n/a'}",
                                     line=dict(color=colour, dash="dot")))
            continue
        fpr, tpr = roc_points(r.scores, r.labels)
        fig.add_trace(go.Scatter(
            x=fpr, y=tpr, mode="lines", line_shape="hv", name=f"{r.name}: {r.ci_text()}", line=dict(color=colour, width=2),
            hovertemplate="false-positive rate %{x:.2f}<br>true-positive rate %{y:.2f}<extra>" + r.name + "</extra>",
        ))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(color="black", dash="dash")))
    fig.update_layout(
        title=title, xaxis_title="false-positive rate (wrong answers flagged correct, 0–1)",
        yaxis_title="true-positive rate (correct answers found, 0–1)", height=430,
        margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25),
    )
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return clear_axes(fig)


def baselines_figure(results: Sequence[AurocEstimate], title: str = "Probe and baselines on the same items") -> go.Figure:
    """Horizontal bars of AUROC with bootstrap 95 % CI error bars, chance line at 0.5.

    Results without an AUROC get no bar; their reason is written at 0.5 instead.
    """
    names = [r.name for r in results]
    values = [r.auroc_pooled if r.ok else None for r in results]
    plus = [(r.ci_high - r.auroc_pooled) if r.ok and r.ci_high is not None else 0.0 for r in results]
    minus = [(r.auroc_pooled - r.ci_low) if r.ok and r.ci_low is not None else 0.0 for r in results]
    colours = [PROBE_COLOUR if r.kind == "probe" else "#ff7f0e" for r in results]
    fig = go.Figure(go.Bar(
        y=names, x=values, orientation="h", marker_color=colours, name="AUROC [95 % CI]",
        error_x=dict(type="data", array=plus, arrayminus=minus, symmetric=False, color="black"),
        customdata=[[r.ci_text(), r.description] for r in results],
        hovertemplate="%{y}: %{customdata[0]}<br>%{customdata[1]}<extra></extra>",
    ))
    for r in results:
        if not r.ok:
            fig.add_annotation(x=0.5, y=r.name, text=r.reason or "not computed", showarrow=False,
                               font=dict(color="#d62728"))
    fig.add_vline(x=0.5, line_dash="dash", line_color="black", annotation_text="chance",
                  annotation_position="top")
    fig.update_layout(
        title=title, xaxis_title="AUROC predicting a correct answer (0–1; blue: fitted probes, orange: fixed scores)",
        yaxis_title="signal", height=max(300, 45 * len(results) + 120), margin=dict(l=10, r=10, t=40, b=10),
        showlegend=False,
    )
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(autorange="reversed")
    return clear_axes(fig)
