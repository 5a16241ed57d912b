"""Figures for calibrated guarantees: reliability diagram and the repeated-split simulation.

Pure functions: :mod:`ic_core.stats.selective` and :mod:`ic_core.stats.risk_simulation`
results in, ``go.Figure`` out.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ic_core.plots.gate import integer_dtick
from ic_core.stats.risk_simulation import SplitSimulation
from ic_core.stats.selective import ReliabilityBins

BAR_COLOUR, DIAGONAL_COLOUR, ALPHA_COLOUR = "#1f77b4", "#7f7f7f", "#d62728"


def reliability_figure(bins: ReliabilityBins, title: str = "") -> go.Figure:
    """Accuracy against mean confidence per bin (bubble size = items), with the perfect-calibration diagonal.

    Empty bins are left out; the legend names the ECE with its binning.
    """
    full = bins.counts > 0
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                             line=dict(color=DIAGONAL_COLOUR, dash="dash")))
    size = 8 + 22 * np.sqrt(bins.counts[full] / max(1, bins.counts.max()))
    fig.add_trace(go.Scatter(
        x=bins.mean_confidence[full], y=bins.accuracy[full], mode="lines+markers",
        name=f"{bins.label} = {bins.ece:.3f}", marker=dict(size=size, color=BAR_COLOUR),
        customdata=bins.counts[full], hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} items",
    ))
    fig.update_layout(title=title or f"Reliability ({bins.n} items)", xaxis_title="mean predicted P(correct)",
                      yaxis_title="share correct", xaxis_range=[-0.04, 1.06], yaxis_range=[-0.06, 1.08],
                      margin=dict(l=10, r=10, t=40, b=10), height=360, legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(tickformat=".0%")
    fig.update_yaxes(tickformat=".0%")
    return fig


def simulation_figure(sim: SplitSimulation, title: str = "") -> go.Figure:
    """Histogram of the realised error among approved over the splits, with α as a vertical line.

    Splits that approved nothing are left out of the histogram and counted in the title.
    """
    have = np.isfinite(sim.realised_errors)
    errors = sim.realised_errors[have]
    size = 1 / 30
    edges = np.arange(0.0, 1.0 + 2 * size, size)
    top = int(np.histogram(errors, bins=edges)[0].max(initial=0)) if errors.size else 0
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=errors, xbins=dict(start=0.0, end=1.0 + size, size=size), marker_color=BAR_COLOUR,
                               name="realised error among approved",
                               hovertemplate="error %{x}<br>%{y} splits<extra></extra>"))
    fig.add_vline(x=sim.alpha, line=dict(color=ALPHA_COLOUR, dash="dash"), annotation_text=f"α = {sim.alpha:g}")
    none = int((~have).sum())
    fig.update_layout(
        title=title or (f"{sim.n_splits} splits: error > α in {sim.exceedance_rate:.1%} (δ = {sim.delta:g})"
                        + (f"; {none} approved nothing" if none else "")),
        xaxis_title="error among approved (test part of each split)", yaxis_title="splits (count)",
        showlegend=False, margin=dict(l=10, r=10, t=40, b=10), height=340,
    )
    fig.update_xaxes(tickformat=".0%", range=[0, min(1.02, max(1.02 * float(errors.max(initial=0.0)), sim.alpha * 1.5, 0.05))])
    fig.update_yaxes(tick0=0, dtick=integer_dtick(top), rangemode="tozero")  # counts: integer ticks only
    return fig
