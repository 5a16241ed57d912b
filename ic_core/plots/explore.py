"""Figures and HTML snippets for one prompt: the Explore and Compare-regimes pages.

Every function is pure: it takes plain numbers and strings and returns a plotly
``go.Figure`` (axis titles carry units) or an HTML string whose every piece of user or
model text is escaped. Nothing here imports streamlit.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

ENTROPY_SCALE_MAX_BITS = 8.0
"""Top of the token colour scale; higher entropies get the top colour (said in the legend)."""

REGIME_COLOURS = {"direct": "#1f77b4", "cot": "#2ca02c", "babble": "#d62728", "custom": "#9467bd"}
_LOW_RGB = (26, 152, 80)  # green: the model was sure
_MID_RGB = (254, 224, 139)  # yellow
_HIGH_RGB = (215, 48, 39)  # red: the model was unsure


def visible_token(token: str) -> str:
    """Show whitespace inside a token: space → ``·``, newline → ``↵``, tab → ``→``."""
    return token.replace(" ", "·").replace("\n", "↵").replace("\t", "→") if token else "∅"


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 2 and arr.shape[0] == 1:  # LensResult rows are (1, L)
        arr = arr[0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {arr.shape}")
    return arr


def top_tokens_figure(top_tokens: Sequence[tuple[str, float]]) -> go.Figure:
    """Horizontal bars of the most likely next tokens, the most likely on top.

    Args:
        top_tokens: ``(token text, probability)`` pairs, most likely first (k pairs).

    """
    labels = [f"{i + 1}. {visible_token(t)}" for i, (t, _) in enumerate(top_tokens)]
    probs = [float(p) for _, p in top_tokens]
    fig = go.Figure(go.Bar(
        x=probs, y=labels, orientation="h", marker_color="#4c78a8",
        text=[f"{p:.1%}" for p in probs], textposition="auto",
        hovertemplate="%{y}<br>probability %{x:.1%}<extra></extra>",
    ))
    fig.update_layout(  # the axis, the bar labels and the hover all in %: one unit
        title="Most likely next tokens at the read-out",
        xaxis_title="probability (%)", yaxis_title="next token (rank)",
        yaxis_autorange="reversed", margin=dict(l=10, r=10, t=40, b=10), height=max(240, 28 * len(probs) + 90),
    )
    fig.update_xaxes(range=[0, max([1.0, *probs])], tickformat=".0%")
    return fig


def lens_figure(
    layers: Sequence[int] | np.ndarray,
    entropy_bits: Sequence[float] | np.ndarray,
    kl_bits: Sequence[float] | np.ndarray,
    labels: Sequence[str] | None = None,
) -> go.Figure:
    """Logit-lens entropy per layer, with KL to the final distribution on a second axis.

    Args:
        layers: (L,) layer numbers (1..L).
        entropy_bits: (L,) or (1, L) entropy of each layer's next-token distribution, bits.
        kl_bits: (L,) or (1, L) KL(final ‖ layer), bits.
        labels: Optional (L,) top token of each layer, shown on hover.

    """
    x = _as_1d(layers, "layers")
    h = _as_1d(entropy_bits, "entropy_bits")
    kl = _as_1d(kl_bits, "kl_bits")
    if not len(x) == len(h) == len(kl):
        raise ValueError(f"layers, entropy_bits and kl_bits differ in length: {len(x)}, {len(h)}, {len(kl)}")
    custom = [visible_token(t) for t in labels] if labels is not None else None
    if custom is not None and len(custom) != len(x):
        raise ValueError(f"labels has {len(custom)} entries for {len(x)} layers")
    top_hover = "<br>top token: %{customdata}" if custom is not None else ""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(
        x=x, y=h, mode="lines+markers", name="entropy (bits)", customdata=custom, line_color="#1f77b4",
        hovertemplate="layer %{x}<br>entropy %{y:.2f} bits" + top_hover + "<extra></extra>",
    ), secondary_y=False)
    fig.add_trace(go.Scatter(
        x=x, y=kl, mode="lines", name="KL to final (bits)", line=dict(color="#ff7f0e", dash="dot"),
        hovertemplate="layer %{x}<br>KL to final %{y:.2f} bits<extra></extra>",
    ), secondary_y=True)
    fig.update_xaxes(title_text="layer (logit lens; last = the model's own output)")
    fig.update_yaxes(title_text="next-token entropy (bits)", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="KL to final layer (bits)", rangemode="tozero", secondary_y=True, showgrid=False,
                     tickmode="auto", nticks=6)
    fig.update_layout(
        title="What each layer would predict: entropy by layer",
        legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=10, t=40, b=10), height=340,
    )
    return fig


def lens_overlay_figure(curves: Mapping[str, tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]]) -> go.Figure:
    """Lens entropy curves of several regimes on one chart, one line per regime.

    Args:
        curves: regime name → ``(layers (L,), entropy_bits (L,) or (1, L))``, in legend order.

    """
    fig = go.Figure()
    for regime, (layers, bits) in curves.items():
        x, y = _as_1d(layers, "layers"), _as_1d(bits, f"entropy_bits[{regime}]")
        if len(x) != len(y):
            raise ValueError(f"{regime}: {len(x)} layers but {len(y)} entropies")
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=regime, line_color=REGIME_COLOURS.get(regime),
            hovertemplate=f"{html.escape(regime)}<br>layer %{{x}}<br>entropy %{{y:.2f}} bits<extra></extra>",
        ))
    fig.update_layout(
        title="Lens entropy by layer, per regime",
        xaxis_title="layer (logit lens; last = the model's own output)", yaxis_title="next-token entropy (bits)",
        legend_title_text="regime", margin=dict(l=10, r=10, t=40, b=10), height=360,
    )
    fig.update_yaxes(rangemode="tozero")
    return fig


def token_entropy_figure(tokens: Sequence[str], entropy_bits: Sequence[float] | np.ndarray) -> go.Figure:
    """Entropy of the next-token distribution at each generated token, as bars.

    Args:
        tokens: (T,) generated tokens as text.
        entropy_bits: (T,) entropy in bits at the step that wrote each token.

    """
    y = _as_1d(entropy_bits, "entropy_bits")
    if len(tokens) != len(y):
        raise ValueError(f"{len(tokens)} tokens but {len(y)} entropies")
    x = np.arange(1, len(y) + 1)
    shown = [visible_token(t) for t in tokens]
    fig = go.Figure(go.Bar(
        x=x, y=y, customdata=shown, marker=dict(color=y, colorscale=_plotly_scale(), cmin=0.0,
                                                cmax=ENTROPY_SCALE_MAX_BITS),
        hovertemplate="token %{x}: %{customdata}<br>entropy %{y:.2f} bits<extra></extra>",
    ))
    fig.update_layout(
        title="Uncertainty at each generated token",
        xaxis_title="generated token (position)", yaxis_title="entropy (bits)",
        margin=dict(l=10, r=10, t=40, b=10), height=300, bargap=0.1,
    )
    fig.update_yaxes(rangemode="tozero")
    return fig


def _plotly_scale() -> list[list[object]]:
    return [[0.0, _rgb(_LOW_RGB)], [0.5, _rgb(_MID_RGB)], [1.0, _rgb(_HIGH_RGB)]]


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def entropy_colour(bits: float, max_bits: float = ENTROPY_SCALE_MAX_BITS) -> str:
    """Background colour for a token: green at 0 bits, yellow halfway, red at ``max_bits`` and above."""
    t = min(max(float(bits) / max_bits, 0.0), 1.0) if max_bits > 0 else 1.0
    lo, hi, u = (_LOW_RGB, _MID_RGB, t / 0.5) if t <= 0.5 else (_MID_RGB, _HIGH_RGB, (t - 0.5) / 0.5)
    return _rgb(tuple(round(a + (b - a) * u) for a, b in zip(lo, hi)))  # type: ignore[arg-type]


_SPAN = "padding:1px 2px;margin:1px;border-radius:3px;line-height:1.9;white-space:pre-wrap;"


def token_spans_html(
    tokens: Sequence[str],
    entropy_bits: Sequence[float],
    probs: Sequence[float] | None = None,
    prefix: str | None = None,
    max_bits: float = ENTROPY_SCALE_MAX_BITS,
    trimmed: int = 0,
) -> str:
    """Generated tokens as escaped HTML spans, each coloured by its entropy (hover for numbers).

    A token of only spaces and line breaks shows them (``·``, ``↵``) so that its colour has
    something to sit on; the last ``trimmed`` tokens (a stop string the answer was cut before)
    are drawn grey and dashed, as not part of the answer.

    Args:
        tokens: (T,) generated tokens.
        entropy_bits: (T,) entropy in bits at each step.
        probs: Optional (T,) probability of each written token.
        prefix: Forced answer prefix, shown first in grey (the model did not choose it).
        max_bits: Entropy that gets the top colour.
        trimmed: How many trailing tokens hold the stop string (``Generation.n_trimmed_tokens``).

    """
    if len(tokens) != len(entropy_bits) or (probs is not None and len(probs) != len(tokens)):
        raise ValueError("tokens, entropy_bits and probs must have the same length")
    if not 0 <= trimmed <= len(tokens):
        raise ValueError(f"trimmed must be between 0 and {len(tokens)}; got {trimmed}")
    parts = []
    if prefix:
        parts.append(f'<span style="{_SPAN}color:#666;border:1px dashed #999" '
                     f'title="forced answer prefix (not generated)">{html.escape(prefix)}</span>')
    for i, (tok, h) in enumerate(zip(tokens, entropy_bits)):
        tip = f"token {i + 1} {visible_token(tok)!r}: {h:.2f} bits"
        if probs is not None:
            tip += f", p = {probs[i]:.2f}"
        shown = visible_token(tok) + "\n" * tok.count("\n") if not tok.strip() else tok
        if i >= len(tokens) - trimmed:
            tip += " · after the cut: it writes the stop string, so it is not part of the answer"
            style = f"{_SPAN}color:#777;border:1px dashed #999"
        else:
            style = f"{_SPAN}background:{entropy_colour(h, max_bits)};color:#111"
        parts.append(f'<span style="{style}" title="{html.escape(tip, quote=True)}">{html.escape(shown)}</span>')
    return '<div class="ic-tokens" style="font-family:monospace">' + "".join(parts) + "</div>"


def entropy_legend_html(max_bits: float = ENTROPY_SCALE_MAX_BITS) -> str:
    """A small colour bar explaining the token colours."""
    stops = ", ".join(entropy_colour(max_bits * f, max_bits) for f in (0.0, 0.25, 0.5, 0.75, 1.0))
    return (
        '<div style="display:flex;align-items:center;gap:6px;font-size:0.8em">'
        "<span>sure · 0 bits</span>"
        f'<span style="display:inline-block;width:140px;height:10px;border-radius:3px;'
        f'background:linear-gradient(to right, {stops})"></span>'
        f"<span>unsure · ≥ {max_bits:g} bits</span></div>"
    )


PROMPT_TOKENS_SHOWN = 400
"""Longer prompts show only the tokens up to the read-out's neighbourhood (a note says how many are hidden)."""


def prompt_tokens_html(
    tokens: Sequence[str],
    readout_index: int,
    skipped_tokens: Sequence[str] = (),
    readout_is_formatting: bool = False,
    max_shown: int = PROMPT_TOKENS_SHOWN,
) -> str:
    """The rendered prompt token by token, the read-out token highlighted, all escaped.

    Args:
        tokens: (T,) prompt tokens as text.
        readout_index: Position whose state is read (0 ≤ index < T).
        skipped_tokens: Whitespace tokens the model wrote after the prompt before the read-out.
        readout_is_formatting: Flag the read-out as a formatting token.
        max_shown: At most this many prompt tokens are drawn; earlier ones are summarised in a note.

    """
    if not 0 <= readout_index < len(tokens):
        raise ValueError(f"readout_index {readout_index} outside the prompt's {len(tokens)} tokens")
    first = max(0, min(readout_index, len(tokens) - max_shown))
    parts = [f'<span style="{_SPAN}color:#666;font-style:italic">… {first:,} earlier tokens not shown …</span><br>'
             ] if first else []
    for i, tok in enumerate(tokens):
        if i < first:
            continue
        text = html.escape(visible_token(tok))
        if i == readout_index and not skipped_tokens:
            flag = " (formatting token)" if readout_is_formatting else ""
            parts.append(f'<span style="{_SPAN}background:#ffd54f;border:2px solid #e65100;font-weight:bold" '
                         f'title="read-out token{flag}">{text}</span>')
        else:
            style = "background:#eceff1;color:#222" if i <= readout_index else "background:#fafafa;color:#999"
            parts.append(f'<span style="{_SPAN}{style}" title="token {i}">{text}</span>')
        if "\n" in tok:
            parts.append("<br>")
    for j, tok in enumerate(skipped_tokens):
        last = j == len(skipped_tokens) - 1
        style = "background:#ffd54f;border:2px solid #e65100;font-weight:bold" if last else "background:#e1f5fe"
        tip = "read-out: after skipped whitespace" if last else "skipped whitespace token"
        parts.append(f'<span style="{_SPAN}{style};border-style:dashed" title="{tip}">'
                     f"{html.escape(visible_token(tok))}</span>")
    return '<div class="ic-prompt" style="font-family:monospace;font-size:0.85em">' + "".join(parts) + "</div>"
