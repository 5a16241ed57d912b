"""Figures for the governance gate: risk–coverage, confusion matrix, score histograms.

Pure functions: plain arrays and :mod:`ic_core.stats.gating` results in, ``go.Figure`` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from ic_core.stats.gating import Confusion, RiskCoverage

SIGNAL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
RIGHT_COLOUR, WRONG_COLOUR = "#2ca02c", "#d62728"


def risk_coverage_figure(
    curves: Mapping[str, RiskCoverage],
    point: tuple[float, float] | None = None,
    point_label: str = "current threshold",
    target_error: float | None = None,
) -> go.Figure:
    """Error among auto-approved answers against the share auto-approved, one line per signal.

    Args:
        curves: Signal name → its :class:`RiskCoverage` (on the same items).
        point: ``(coverage, error among approved)`` of the current threshold, marked with a star.
        point_label: Legend text of the marked point.
        target_error: Draws the target as a dashed horizontal line.

    """
    fig = go.Figure()
    base = None
    for i, (name, rc) in enumerate(curves.items()):
        base = rc.base_error
        fig.add_trace(go.Scatter(
            x=rc.coverage, y=rc.error_among_approved, mode="lines", line_shape="hv",
            name=f"{name} (area {rc.area:.3f})", line=dict(color=SIGNAL_COLOURS[i % len(SIGNAL_COLOURS)], width=2),
            hovertemplate="coverage %{x:.1%}<br>error among approved %{y:.1%}<extra>" + name + "</extra>",
        ))
    if base is not None:
        fig.add_hline(y=base, line_dash="dot", line_color="grey",
                      annotation_text=f"no gate: {base:.0%} wrong", annotation_position="bottom right")
    if target_error is not None:
        fig.add_hline(y=target_error, line_dash="dash", line_color="black",
                      annotation_text=f"target {target_error:.0%}", annotation_position="top left")
    if point is not None and point[1] is not None:
        fig.add_trace(go.Scatter(
            x=[point[0]], y=[point[1]], mode="markers", name=point_label,
            marker=dict(symbol="star", size=16, color="black"),
            hovertemplate="coverage %{x:.1%}<br>error among approved %{y:.1%}<extra></extra>",
        ))
    fig.update_layout(
        title="Risk–coverage: approve the least risky answers first",
        xaxis_title="coverage (share auto-approved)", yaxis_title="error rate among auto-approved",
        margin=dict(l=10, r=10, t=40, b=10), height=380, legend=dict(orientation="h", y=-0.25),
    )
    fig.update_xaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def confusion_figure(confusion: Confusion, title: str = "What the gate would do") -> go.Figure:
    """2×2 heatmap: rows = answer right/wrong, columns = approved/escalated, cells = counts and share."""
    z = np.array([
        [confusion.approved_right, confusion.cost],
        [confusion.slipped, confusion.caught],
    ], dtype=float)
    # Two short lines per cell: a half-width column at 1400 px cut "approved, wrong (slipped through)" on one.
    names = np.array([["approved, right", "escalated, right<br>(cost)"],
                      ["approved, wrong<br>(slipped through)", "escalated, wrong<br>(caught)"]])
    n = max(confusion.n, 1)
    text = [[f"{names[r, c]}<br><b>{int(z[r, c])}</b> ({z[r, c] / n:.0%})" for c in range(2)] for r in range(2)]
    fig = go.Figure(go.Heatmap(
        z=z, x=["auto-approved", "escalated to a human"], y=["answer<br>right", "answer<br>wrong"],
        text=text, texttemplate="%{text}", textfont=dict(size=13), colorscale="Blues", showscale=False,
        zmin=0, zmax=max(float(z.max()) * 1.6, 1.0),  # keep the darkest cell light enough for dark text
        hovertemplate="%{y} · %{x}: %{z:d} items<extra></extra>",
    ))
    fig.update_layout(
        title=f"{title} (n = {confusion.n})", xaxis_title="gate decision", yaxis_title="model's answer (graded)",
        yaxis_autorange="reversed", margin=dict(l=10, r=10, t=40, b=10), height=340,
    )
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def integer_dtick(max_count: float) -> int:
    """A tick step for an axis of counts (1, 2, 5, 10, 20, 50, …): at most ~6 ticks, never a fraction."""
    step = 1
    while max_count / step > 6:
        step = _next_step(step)
    return step


def _next_step(step: int) -> int:
    """The step after ``step`` in 1, 2, 5, 10, 20, 50 and so on."""
    lead = int(str(step)[0])
    return step * 5 // 2 if lead == 2 else step * 2


def score_histogram_figure(
    scores: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    threshold: float | None,
    signal_label: str,
    unit: str,
    escalate_above: bool = True,
    n_bins: int = 30,
) -> go.Figure:
    """Overlaid histograms of a signal for right and wrong answers, with the threshold line.

    Args:
        scores: (N,) signal values (entropy in bits, or P(correct)).
        correct: (N,) booleans.
        threshold: Where the gate cuts (None: no line, e.g. "escalate everything").
        signal_label: Name on the x axis, e.g. ``H_slot``.
        unit: Unit for the axis title, e.g. ``bits`` or ``probability``.
        escalate_above: True when values above the threshold are escalated (entropy), False
            when values below are (P(correct)).
        n_bins: Number of bins over the common range.

    """
    s = np.asarray(scores, dtype=float)
    c = np.asarray(correct, dtype=bool)
    if s.shape != c.shape:
        raise ValueError(f"{s.size} scores but {c.size} labels")
    lo, hi = (float(s.min()), float(s.max())) if s.size else (0.0, 1.0)
    size = (hi - lo) / n_bins if hi > lo else 1.0
    bins = dict(start=lo, end=hi + size, size=size)
    fig = go.Figure()
    for mask, name, colour in ((c, "answer right", RIGHT_COLOUR), (~c, "answer wrong", WRONG_COLOUR)):
        fig.add_trace(go.Histogram(
            x=s[mask], xbins=bins, name=f"{name} (n = {int(mask.sum())})", marker_color=colour, opacity=0.6,
            hovertemplate=f"{signal_label} %{{x}}<br>%{{y}} items<extra>{name}</extra>",
        ))
    edges = np.arange(lo, hi + 2 * size, size)
    top = max((np.histogram(s[m], bins=edges)[0].max(initial=0) for m in (c, ~c)), default=0)
    fig.update_yaxes(tick0=0, dtick=integer_dtick(top), rangemode="tozero")  # counts: integer ticks only
    if threshold is not None:
        side = "escalate →" if escalate_above else "← escalate"
        fig.add_vline(x=threshold, line_color="black", line_dash="dash",
                      annotation_text=f"threshold {threshold:.2f} ({side})", annotation_position="top")
    fig.update_layout(
        barmode="overlay", title=f"{signal_label} for right and wrong answers",
        xaxis_title=f"{signal_label} ({unit})", yaxis_title="items (count)",
        margin=dict(l=10, r=10, t=40, b=10), height=320, legend=dict(orientation="h", y=-0.25),
    )
    return fig
