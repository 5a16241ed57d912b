"""Figures and HTML snippets of the Explore / Compare-regimes pages (pure functions)."""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import pytest

from ic_core.plots.explore import (
    ENTROPY_SCALE_MAX_BITS,
    entropy_colour,
    entropy_legend_html,
    lens_figure,
    lens_overlay_figure,
    prompt_tokens_html,
    token_entropy_figure,
    token_spans_html,
    top_tokens_figure,
    visible_token,
)


def _rgb(text: str) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in re.fullmatch(r"rgb\((\d+),(\d+),(\d+)\)", text).groups())
    return r, g, b


class TestTopTokens:
    def test_one_bar_trace_with_values_and_axis_titles(self):
        fig = top_tokens_figure([(" Paris", 0.7), (" Lyon", 0.2), ("\n", 0.05)])
        assert isinstance(fig, go.Figure) and len(fig.data) == 1
        bar = fig.data[0]
        assert bar.orientation == "h"
        assert list(bar.x) == [0.7, 0.2, 0.05]
        assert list(bar.y) == ["1. ·Paris", "2. ·Lyon", "3. ↵"]
        assert "probability" in fig.layout.xaxis.title.text
        assert fig.layout.xaxis.title.text == "probability (%)" and fig.layout.xaxis.tickformat == ".0%"
        assert list(bar.text) == ["70.0%", "20.0%", "5.0%"]  # bar labels in the axis' unit
        assert fig.layout.yaxis.title.text
        assert fig.layout.yaxis.autorange == "reversed"  # most likely on top

    def test_empty_list_gives_an_empty_bar(self):
        fig = top_tokens_figure([])
        assert len(fig.data) == 1 and len(fig.data[0].x) == 0


class TestLens:
    def test_two_traces_on_two_axes_with_units(self):
        layers = np.arange(1, 5)
        h = np.array([[9.0, 7.5, 4.0, 2.5]])  # (1, L) as LensResult stores it
        kl = np.array([[6.0, 3.0, 1.0, 0.0]])
        fig = lens_figure(layers, h, kl, labels=[" a", "b", "\n", "c"])
        assert len(fig.data) == 2
        entropy, kl_trace = fig.data
        assert list(entropy.x) == [1, 2, 3, 4] and list(entropy.y) == [9.0, 7.5, 4.0, 2.5]
        assert list(kl_trace.y) == [6.0, 3.0, 1.0, 0.0]
        assert kl_trace.yaxis == "y2" and entropy.yaxis == "y"
        assert list(entropy.customdata) == ["·a", "b", "↵", "c"]
        assert "layer" in fig.layout.xaxis.title.text
        assert "(bits)" in fig.layout.yaxis.title.text
        assert "KL" in fig.layout.yaxis2.title.text and "(bits)" in fig.layout.yaxis2.title.text

    def test_mismatched_lengths_are_refused(self):
        with pytest.raises(ValueError, match="differ in length"):
            lens_figure([1, 2, 3], [1.0, 2.0], [0.0, 0.0, 0.0])
        with pytest.raises(ValueError, match="labels"):
            lens_figure([1, 2], [1.0, 2.0], [0.0, 0.0], labels=["x"])

    def test_overlay_has_one_trace_per_regime(self):
        curves = {"direct": ([1, 2, 3], [5.0, 4.0, 3.0]), "cot": ([1, 2, 3], np.array([[6.0, 2.0, 1.0]])),
                  "babble": ([1, 2, 3], [7.0, 7.0, 6.5])}
        fig = lens_overlay_figure(curves)
        assert [t.name for t in fig.data] == ["direct", "cot", "babble"]
        assert list(fig.data[1].y) == [6.0, 2.0, 1.0]
        assert fig.data[0].line.color != fig.data[1].line.color
        assert "layer" in fig.layout.xaxis.title.text and "(bits)" in fig.layout.yaxis.title.text

    def test_overlay_refuses_ragged_curves(self):
        with pytest.raises(ValueError, match="cot"):
            lens_overlay_figure({"cot": ([1, 2], [1.0])})


class TestTokenEntropy:
    def test_bars_at_positions_with_tokens_on_hover(self):
        fig = token_entropy_figure([" The", " capital", "\n"], [3.5, 0.25, 1.0])
        assert len(fig.data) == 1
        bar = fig.data[0]
        assert list(bar.x) == [1, 2, 3] and list(bar.y) == [3.5, 0.25, 1.0]
        assert list(bar.customdata) == ["·The", "·capital", "↵"]
        assert bar.marker.cmax == ENTROPY_SCALE_MAX_BITS
        assert "position" in fig.layout.xaxis.title.text
        assert fig.layout.yaxis.title.text == "entropy (bits)"

    def test_repeated_tokens_keep_their_own_bars(self):
        fig = token_entropy_figure(["a", "a", "a"], [1.0, 2.0, 3.0])
        assert len(fig.data[0].x) == 3

    def test_length_mismatch_is_refused(self):
        with pytest.raises(ValueError):
            token_entropy_figure(["a"], [1.0, 2.0])


class TestColours:
    def test_scale_runs_green_to_red_and_clips(self):
        low, mid, high = (_rgb(entropy_colour(b)) for b in (0.0, ENTROPY_SCALE_MAX_BITS / 2, ENTROPY_SCALE_MAX_BITS))
        assert low[1] > low[0]  # green dominates at 0 bits
        assert high[0] > high[1]  # red dominates at the top
        assert mid == (254, 224, 139)
        assert entropy_colour(100.0) == entropy_colour(ENTROPY_SCALE_MAX_BITS)
        assert entropy_colour(-1.0) == entropy_colour(0.0)

    def test_legend_names_the_scale(self):
        legend = entropy_legend_html(6.0)
        assert "0 bits" in legend and "≥ 6 bits" in legend and "linear-gradient" in legend


class TestHtml:
    def test_generated_tokens_are_escaped_and_coloured(self):
        out = token_spans_html(["<script>", " & ", "ok"], [0.0, 4.0, 8.0], [0.9, 0.5, 0.1], prefix="Answer <b>")
        assert "<script>" not in out and "&lt;script&gt;" in out
        assert "&amp;" in out and "Answer &lt;b&gt;" in out
        assert out.count("background:rgb(") == 3
        assert entropy_colour(0.0) in out and entropy_colour(8.0) in out
        assert "p = 0.90" in out and "4.00 bits" in out

    def test_quotes_in_tooltips_cannot_break_the_attribute(self):
        out = token_spans_html(['"onmouseover="x'], [1.0])
        assert 'onmouseover="x' not in out

    def test_stop_string_tokens_are_grey_and_blank_tokens_visible(self):
        """The tokens an answer was cut before are drawn apart; a line-break token shows its ↵ in its colour."""
        out = token_spans_html([" Paris", "\n\n", "Q", ":"], [0.5, 1.0, 2.0, 3.0], trimmed=2)
        assert out.count("background:rgb(") == 2 and out.count("border:1px dashed #999") == 2
        assert out.count("not part of the answer") == 2 and ">↵↵\n\n</span>" in out
        assert "token 3 &#x27;Q&#x27;: 2.00 bits · after the cut" in out and "token 2 &#x27;↵↵&#x27;: 1.00 bits\"" in out
        assert token_spans_html(["a"], [1.0]).count("dashed") == 0
        with pytest.raises(ValueError):
            token_spans_html(["a"], [1.0], trimmed=2)

    def test_lengths_must_match(self):
        with pytest.raises(ValueError):
            token_spans_html(["a", "b"], [1.0])

    def test_prompt_marks_the_readout_and_escapes(self):
        out = prompt_tokens_html(["<|im_start|>", "user", " <b>hi</b>", "\n"], readout_index=3,
                                 readout_is_formatting=True)
        assert "<b>hi</b>" not in out and "&lt;b&gt;hi&lt;/b&gt;" in out
        assert out.count("read-out token") == 1 and "(formatting token)" in out
        assert "↵" in out and "<br>" in out

    def test_prompt_with_skipped_whitespace_moves_the_mark(self):
        out = prompt_tokens_html(["The", " answer", " is"], readout_index=2, skipped_tokens=[" "])
        assert "read-out token" not in out  # the prompt token itself is not the read-out any more
        assert "read-out: after skipped whitespace" in out and "·" in out

    def test_long_prompt_is_cut_before_the_readout(self):
        tokens = [f"t{i}" for i in range(1000)]
        out = prompt_tokens_html(tokens, readout_index=999, max_shown=50)
        assert "950 earlier tokens not shown" in out
        assert ">t949<" not in out and ">t950<" in out and out.count("read-out token") == 1
        assert "not shown" not in prompt_tokens_html(tokens[:50], readout_index=49, max_shown=50)

    def test_prompt_readout_must_be_inside(self):
        with pytest.raises(ValueError):
            prompt_tokens_html(["a"], readout_index=1)

    def test_visible_token(self):
        assert visible_token(" a\n\t") == "·a↵→"
        assert visible_token("") == "∅"
