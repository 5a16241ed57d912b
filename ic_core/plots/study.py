"""Figures of a study run: accuracy and H_int by regime, lens curves, dim_eff, PCA of I.

Every function is pure: plain arrays and tables in, a plotly ``go.Figure`` out, with axis
titles that carry units. Nothing here imports streamlit.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ic_core.runs.schema import verdict_label
from ic_core.stats.geometry import DimEff

REGIME_COLOURS = {"direct": "#1f77b4", "cot": "#2ca02c", "babble": "#d62728", "custom": "#9467bd"}
CORRECT_COLOURS = {"correct": "#1a9850", "wrong": "#d73027", "not graded": "#9e9e9e"}
_FALLBACK = ("#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def regime_colour(regime: str, i: int = 0) -> str:
    """The colour every study figure uses for ``regime``."""
    return REGIME_COLOURS.get(regime, _FALLBACK[i % len(_FALLBACK)])


def _hex_rgba(colour: str, alpha: float) -> str:
    c = colour.lstrip("#")
    r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


MARGIN = dict(t=60, b=60, l=70, r=20)
"""Room for axis titles beside the tick labels even before Plotly's automargin pass (static exports, reports)."""
TITLE_STANDOFF = 12
"""Pixels between tick labels and an axis title."""


def clear_axes(fig: go.Figure) -> go.Figure:
    """Keep axis titles off the tick labels: automargin, a standoff, and a margin that already fits them."""
    fig.update_xaxes(automargin=True, title_standoff=TITLE_STANDOFF)
    fig.update_yaxes(automargin=True, title_standoff=TITLE_STANDOFF)
    fig.update_layout(margin=MARGIN)
    return fig


def readout_axis_title(signal: str) -> str:
    """One clean axis title for the rows' read-out: ``H_int (bits)``, ``H_slot (bits)`` or ``read-out entropy (bits)``."""
    return f"{'read-out entropy' if signal == 'mixed' else signal} (bits)"


def accuracy_figure(per_regime: pd.DataFrame) -> go.Figure:
    """Accuracy per regime with Wilson 95 % intervals.

    Args:
        per_regime: Columns ``regime``, ``n_graded``, ``accuracy``, ``accuracy_ci_low``,
            ``accuracy_ci_high`` (as in :attr:`ic_core.study.compare.RegimeComparison.per_regime`);
            regimes without graded rows are drawn as an annotated gap; a control regime (babble,
            ``role == "control"``) is annotated with its ``result`` ("control: N % complied").

    """
    fig = go.Figure()
    for i, r in enumerate(per_regime.itertuples(index=False)):
        graded = not math.isnan(r.accuracy)
        acc = 100 * r.accuracy if graded else 0.0
        fig.add_trace(go.Bar(
            x=[r.regime], y=[acc if graded else None], name=r.regime, marker_color=regime_colour(r.regime, i),
            error_y=dict(type="data", symmetric=False, array=[100 * r.accuracy_ci_high - acc if graded else 0],
                         arrayminus=[acc - 100 * r.accuracy_ci_low if graded else 0], visible=graded),
            text=[f"{acc:.1f} % (n={int(r.n_graded)})" if graded else ""], textposition="outside",
            hovertemplate="%{x}: %{y:.1f} %<extra></extra>",
        ))
        if not graded:  # one label per ungraded regime (the bar text stays empty, so nothing overlaps)
            control = getattr(r, "role", None) == "control" and isinstance(getattr(r, "result", None), str)
            fig.add_annotation(x=r.regime, y=5, text=html.escape(r.result) if control else "no graded rows",
                               showarrow=False, yanchor="bottom")
    fig.update_layout(title="Accuracy by regime (bars: Wilson 95 % CI)", xaxis_title="regime",
                      yaxis_title="accuracy (%)", showlegend=False)
    fig.update_yaxes(range=[0, 105], tick0=0, dtick=20)
    return clear_axes(fig)


def readout_entropy_distribution_figure(
    regimes: Sequence[str], values_bits: Sequence[float] | np.ndarray, correct: Sequence[bool | None] | None = None,
    kind: str = "box", signal: str = "H_int",
) -> go.Figure:
    """Distribution of the read-out entropy per regime (box or violin, points shown).

    Args:
        regimes: (N,) regime of each row.
        values_bits: (N,) entropy per row, bits.
        correct: Optional (N,) correctness; splits each regime into correct / wrong.
        kind: ``box`` or ``violin``.
        signal: The rows' read-out (:func:`ic_core.prompts.readout_label`): ``H_int``, ``H_slot`` or ``mixed``.

    """
    regimes = list(regimes)
    values = np.asarray(values_bits, dtype=float)
    if values.shape != (len(regimes),):
        raise ValueError(f"values_bits must have one value per row ({len(regimes)}); got shape {values.shape}")
    trace = go.Violin if kind == "violin" else go.Box
    fig = go.Figure()
    order = list(dict.fromkeys(regimes))
    if correct is None:
        for i, regime in enumerate(order):
            mask = np.array([r == regime for r in regimes])
            fig.add_trace(trace(x=[regime] * int(mask.sum()), y=values[mask], name=regime,
                                marker_color=regime_colour(regime, i), **_points(kind)))
    else:
        labels = np.array([verdict_label(c) for c in correct])
        for label in ("correct", "wrong", "not graded"):
            mask = labels == label
            if mask.any():
                fig.add_trace(trace(x=np.array(regimes)[mask], y=values[mask], name=label,
                                    marker_color=CORRECT_COLOURS[label], **_points(kind)))
        fig.update_layout(boxmode="group", violinmode="group")
    title = ("Read-out entropy by regime (H_slot where read after an answer prefix, H_int elsewhere)"
             if signal == "mixed" else f"{signal} by regime")
    fig.update_layout(title=title, xaxis_title="regime", yaxis_title=readout_axis_title(signal))
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    # Entropy is never negative: start the axis at 0 with room above the highest point (autorange put a
    # point at 0.00 bits below the lowest tick, and a violin's density ran below zero).
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
    fig.update_yaxes(range=[-0.04 * max(top, 1.0), 1.06 * max(top, 1.0)])
    return clear_axes(fig)


def _points(kind: str) -> dict[str, object]:
    if kind == "violin":  # spanmode="hard": the density stops at the data, never below 0 bits
        return {"points": "all", "pointpos": 0, "jitter": 0.3, "spanmode": "hard"}
    return {"boxpoints": "all", "jitter": 0.3}


def lens_curves_figure(
    lens_entropy_bits: np.ndarray, regimes: Sequence[str], band: str = "sd",
) -> go.Figure:
    """Mean logit-lens entropy per layer and regime, with a shaded band.

    Args:
        lens_entropy_bits: (N, L) entropy per row and layer 1..L, bits.
        regimes: (N,) regime of each row.
        band: ``sd`` (mean ± one standard deviation across items) or ``ci`` (95 % CI of the mean).

    """
    lens = np.asarray(lens_entropy_bits, dtype=float)
    regimes = list(regimes)
    if lens.ndim != 2 or lens.shape[0] != len(regimes):
        raise ValueError(f"lens_entropy_bits must be (N, L) with N = {len(regimes)}; got {lens.shape}")
    layers = np.arange(1, lens.shape[1] + 1)
    label = "± 1 SD across items" if band == "sd" else "95 % CI of the mean"
    fig = go.Figure()
    for i, regime in enumerate(dict.fromkeys(regimes)):
        rows = lens[np.array([r == regime for r in regimes])]
        mean = rows.mean(axis=0)
        spread = rows.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros_like(mean)
        if band == "ci":
            spread = 1.96 * spread / math.sqrt(max(1, len(rows)))
        colour = regime_colour(regime, i)
        fig.add_trace(go.Scatter(
            x=np.concatenate([layers, layers[::-1]]), y=np.concatenate([mean + spread, (mean - spread)[::-1]]),
            fill="toself", fillcolor=_hex_rgba(colour, 0.15), line=dict(width=0), hoverinfo="skip",
            name=f"{regime} {label}", legendgroup=regime, showlegend=False,
        ))
        fig.add_trace(go.Scatter(x=layers, y=mean, mode="lines+markers", name=f"{regime} (n={len(rows)})",
                                 line=dict(color=colour), legendgroup=regime,
                                 hovertemplate="layer %{x}: %{y:.2f} bits<extra>" + regime + "</extra>"))
    fig.update_layout(title=f"Logit-lens entropy by layer (mean, band {label})", xaxis_title="layer",
                      yaxis_title="entropy (bits)")
    return clear_axes(fig)


def dim_eff_figure(by_regime: Mapping[str, DimEff]) -> go.Figure:
    """Participation ratio and 90 %-variance count per layer and regime.

    Layers where every item has the same state (e.g. layer 0 under a chat template) have no
    defined dimensionality: they are left as gaps and marked, not plotted as noise. The
    dotted line is the rank cap N − 1.

    Args:
        by_regime: ``{regime: DimEff}`` (each over that regime's N items, L + 1 layers).

    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("participation ratio (Σλ)²/Σλ²",
                                                        "components for 90 % variance"))
    constant_all: set[int] | None = None
    for i, (regime, d) in enumerate(by_regime.items()):
        layers = np.arange(len(d.participation_ratio))
        colour = regime_colour(regime, i)
        pr = [np.nan if v is None else v for v in d.participation_ratio]
        n90 = [np.nan if v is None else v for v in d.n_components_90]
        fig.add_trace(go.Scatter(x=layers, y=pr, mode="lines+markers", name=f"{regime} (cap {d.rank_cap})",
                                 line=dict(color=colour), legendgroup=regime, connectgaps=False), row=1, col=1)
        fig.add_trace(go.Scatter(x=layers, y=n90, mode="lines+markers", name=regime, line=dict(color=colour),
                                 legendgroup=regime, showlegend=False, connectgaps=False), row=1, col=2)
        for col in (1, 2):
            fig.add_hline(y=d.rank_cap, line=dict(color=colour, dash="dot", width=1), row=1, col=col)
        const = {j for j, v in enumerate(d.participation_ratio) if v is None}
        constant_all = const if constant_all is None else constant_all & const
    for j in sorted(constant_all or ()):
        for col in (1, 2):
            fig.add_vrect(x0=j - 0.5, x1=j + 0.5, fillcolor="#bbbbbb", opacity=0.3, line_width=0, row=1, col=col)
        # above the plot area, beside its shaded band: never over a curve or the rank-cap line
        fig.add_annotation(x=j, y=1.0, yref="y domain", text=f"layer {j}: constant", showarrow=False,
                           xanchor="left", yanchor="bottom", font=dict(size=10, color="#555"), row=1, col=1)
    fig.update_xaxes(title_text="layer (0 = embeddings)")
    fig.update_yaxes(title_text="dimensions", row=1, col=1)
    fig.update_yaxes(title_text="components", row=1, col=2)
    fig.update_layout(title="Effective dimensionality of I per layer (dotted: rank cap N − 1)")
    clear_axes(fig)
    fig.update_layout(margin=dict(MARGIN, t=90))  # room for the subplot titles and the constant-layer note
    for ann in fig.layout.annotations:  # subplot titles one line higher than the note
        if ann.text in ("participation ratio (Σλ)²/Σλ²", "components for 90 % variance"):
            ann.update(yshift=14)
    return fig


def pca_colour_options(signal: str) -> tuple[str, str, str]:
    """What the points of :func:`pca_figure` can be coloured by (:func:`pca_colour_values`).

    The third option names the rows' read-out (:func:`ic_core.prompts.readout_label`):
    ``"H_slot (bits)"`` for a run read after answer prefixes, ``"read-out entropy (bits)"`` for a mixed one.
    """
    name = "read-out entropy" if signal == "mixed" else signal
    return ("regime", "correctness", f"{name} (bits)")


def pca_colour_values(frame: pd.DataFrame, colour: str) -> list[object]:
    """One colour value per row of a run table: its regime, its verdict, or its read-out entropy (bits).

    Raises:
        ValueError: ``colour`` is not one of :func:`pca_colour_options`.

    """
    if colour == "regime":
        return frame["regime"].tolist()
    if colour == "correctness":
        return [verdict_label(c) for c in frame["correct"]]
    if colour in {pca_colour_options(s)[2] for s in ("H_int", "H_slot", "mixed")}:
        return [float(v) for v in frame["readout_entropy_bits"]]
    raise ValueError(f"colour must be one of regime, correctness or the read-out entropy; got {colour!r}")


def pca_hover(frame: pd.DataFrame) -> list[str]:
    """Hover text per row of a run table: item, regime, the question (80 characters), H (bits); stored text escaped.

    Plotly renders a subset of HTML in hover text (``<a href>`` included), so every stored string is escaped.
    """
    return [f"{html.escape(str(i))} · {html.escape(str(r))}<br>{html.escape(str(q)[:80])}<br>H={h:.2f} bits"
            for i, r, q, h in
            zip(frame["item_id"], frame["regime"], frame["question"], frame["readout_entropy_bits"])]


def pca_figure(
    scores: np.ndarray,
    colour_values: Sequence[object],
    colour_name: str,
    explained_ratio: Sequence[float],
    hover: Sequence[str] | None = None,
    layer: int | None = None,
    point: np.ndarray | None = None,
    point_label: str = "your prompt",
) -> go.Figure:
    """Scatter of the first two principal components of I, coloured by a category or a number.

    Args:
        scores: (N, 2) PC1/PC2 scores.
        colour_values: (N,) regimes / correctness labels (categorical) or numbers (continuous, e.g. H_int bits).
        colour_name: Legend / colour-bar title, with units if numeric.
        explained_ratio: (2,) variance fraction of PC1 and PC2.
        hover: (N,) text per point.
        layer: Layer shown (title).
        point: Optional (2,) extra point (a prompt analysed elsewhere), drawn as a star.
        point_label: Its legend label.

    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] != 2:
        raise ValueError(f"scores must be (N, 2); got {scores.shape}")
    values = list(colour_values)
    if len(values) != len(scores):
        raise ValueError(f"colour_values has {len(values)} entries for {len(scores)} points")
    hover = list(hover) if hover is not None else [""] * len(values)
    fig = go.Figure()
    numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in values)
    if numeric and values:
        fig.add_trace(go.Scatter(
            x=scores[:, 0], y=scores[:, 1], mode="markers", text=hover, name=colour_name,
            marker=dict(color=np.asarray(values, dtype=float), colorscale="Viridis", showscale=True,
                        colorbar=dict(title=colour_name), size=8),
            hovertemplate="%{text}<extra></extra>",
        ))
    else:
        labels = [str(v) for v in values]
        for i, label in enumerate(dict.fromkeys(labels)):
            mask = np.array([lab == label for lab in labels])
            colour = CORRECT_COLOURS.get(label) or regime_colour(label, i)
            fig.add_trace(go.Scatter(
                x=scores[mask, 0], y=scores[mask, 1], mode="markers", name=label, marker=dict(color=colour, size=8),
                text=[h for h, m in zip(hover, mask) if m], hovertemplate="%{text}<extra></extra>",
            ))
    if point is not None:
        fig.add_trace(go.Scatter(x=[float(point[0])], y=[float(point[1])], mode="markers", name=point_label,
                                 marker=dict(symbol="star", size=18, color="black", line=dict(color="white", width=1))))
    ev = [float(x) for x in explained_ratio] + [0.0, 0.0]
    where = "" if layer is None else f" at layer {layer}"
    fig.update_layout(title=f"PCA of the read-out state I{where}", legend_title=colour_name,
                      xaxis_title=f"PC1 ({100 * ev[0]:.1f} % of variance)",
                      yaxis_title=f"PC2 ({100 * ev[1]:.1f} % of variance)")
    return clear_axes(fig)


def token_entropy_bar_figure(tokens: Sequence[str], entropy_bits: Sequence[float]) -> go.Figure:
    """Entropy of each generated token of one study row (bits)."""
    h = [float(x) for x in entropy_bits]
    labels = [f"{i}:{t.replace(' ', '·').replace(chr(10), '↵')}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Bar(x=labels, y=h, marker_color="#4c78a8"))
    fig.update_layout(title="Entropy of each generated token", xaxis_title="token (position:text)",
                      yaxis_title="entropy (bits)")
    return clear_axes(fig)
