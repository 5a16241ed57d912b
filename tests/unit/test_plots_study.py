"""Study figures: pure functions, axis titles with units, values drawn as given."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from ic_core.plots.study import (
    accuracy_figure,
    dim_eff_figure,
    lens_curves_figure,
    pca_colour_options,
    pca_colour_values,
    pca_figure,
    pca_hover,
    readout_entropy_distribution_figure,
    regime_colour,
    token_entropy_bar_figure,
)
from ic_core.stats.geometry import dim_eff


def test_accuracy_bars_with_wilson_errors_and_ungraded_gap():
    per = pd.DataFrame({
        "regime": ["direct", "cot"], "n_graded": [10, 0], "accuracy": [0.5, math.nan],
        "accuracy_ci_low": [0.2366, math.nan], "accuracy_ci_high": [0.7634, math.nan],
    })
    fig = accuracy_figure(per)
    assert isinstance(fig, go.Figure)
    direct, cot = fig.data
    assert direct.y == (50.0,) and direct.error_y.array[0] == pytest.approx(26.34)
    assert direct.error_y.arrayminus[0] == pytest.approx(26.34)
    assert cot.y == (None,) and cot.text == ("",)  # one label per ungraded regime: the annotation
    assert fig.layout.yaxis.title.text == "accuracy (%)"
    assert [a.text for a in fig.layout.annotations] == ["no graded rows"]
    assert fig.layout.yaxis.automargin and fig.layout.margin.l >= 60 and fig.layout.yaxis.title.standoff > 0
    assert (fig.layout.yaxis.tick0, fig.layout.yaxis.dtick) == (0, 20)  # 0 … 100 %, never a cropped "00"


def test_babble_control_bar_says_how_many_complied():
    per = pd.DataFrame({
        "regime": ["direct", "babble"], "role": ["answer", "control"], "result": ["50.0 %", "control: 65 % complied"],
        "n_graded": [10, 0], "accuracy": [0.5, math.nan], "accuracy_ci_low": [0.2366, math.nan],
        "accuracy_ci_high": [0.7634, math.nan],
    })
    texts = [a.text for a in accuracy_figure(per).layout.annotations]
    assert texts == ["control: 65 % complied"]


def test_h_int_distribution_by_regime_and_by_correctness():
    regimes = ["direct", "direct", "cot", "cot"]
    values = [1.0, 2.0, 3.0, 4.0]
    fig = readout_entropy_distribution_figure(regimes, values)
    assert [t.name for t in fig.data] == ["direct", "cot"]
    assert list(fig.data[1].y) == [3.0, 4.0]
    assert fig.layout.yaxis.title.text == "H_int (bits)"
    split = readout_entropy_distribution_figure(regimes, values, correct=[True, False, None, True], kind="violin", signal="H_slot")
    assert [t.name for t in split.data] == ["correct", "wrong", "not graded"]
    assert isinstance(split.data[0], go.Violin) and list(split.data[0].y) == [1.0, 4.0]
    assert split.layout.yaxis.title.text == "H_slot (bits)"
    # from (just below) 0 to above the top point: a 0-bit point sits on the lowest tick, not under it
    assert fig.layout.yaxis.range == pytest.approx((-0.16, 4.24))
    assert split.data[0].spanmode == "hard"
    zero = readout_entropy_distribution_figure(["direct"] * 2, [0.0, 0.0])
    assert zero.layout.yaxis.range == pytest.approx((-0.04, 1.06))
    mixed = readout_entropy_distribution_figure(regimes, values, signal="mixed")
    assert mixed.layout.yaxis.title.text == "read-out entropy (bits)"  # one clean label, the title explains
    assert "H_slot where read after an answer prefix" in mixed.layout.title.text
    with pytest.raises(ValueError, match="one value per row"):
        readout_entropy_distribution_figure(regimes, values[:3])


def test_lens_curves_mean_and_band():
    lens = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [0.0, 0.0, 0.0]])
    fig = lens_curves_figure(lens, ["direct", "direct", "cot"])
    band, mean, cot_band, cot_mean = fig.data
    assert list(mean.x) == [1, 2, 3] and list(mean.y) == [2.0, 3.0, 4.0]
    sd = np.std([1.0, 3.0], ddof=1)
    assert band.y[0] == pytest.approx(2.0 + sd) and band.y[-1] == pytest.approx(2.0 - sd)
    assert mean.name == "direct (n=2)" and list(cot_band.y) == [0.0] * 6
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "entropy (bits)"
    ci = lens_curves_figure(lens, ["direct", "direct", "cot"], band="ci")
    assert ci.data[0].y[0] == pytest.approx(2.0 + 1.96 * sd / math.sqrt(2))
    with pytest.raises(ValueError):
        lens_curves_figure(lens, ["direct"])


def test_dim_eff_marks_constant_layers_and_rank_cap():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(6, 3, 5))
    states[:, 0, :] = 2.0
    d = dim_eff(states)
    fig = dim_eff_figure({"direct": d})
    pr, n90 = fig.data
    assert math.isnan(pr.y[0]) and pr.y[1] == pytest.approx(d.participation_ratio[1])
    assert list(n90.y[1:]) == list(d.n_components_90[1:])
    assert pr.name == "direct (cap 5)"
    assert any("layer 0: constant" in (a.text or "") for a in fig.layout.annotations)
    assert any(s.type == "rect" and s.x0 == -0.5 for s in fig.layout.shapes)
    assert any(s.type == "line" and s.y0 == 5 for s in fig.layout.shapes)
    assert fig.layout.xaxis.title.text == "layer (0 = embeddings)"


def test_pca_categorical_numeric_and_placed_point():
    scores = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    fig = pca_figure(scores, ["direct", "cot", "direct"], "regime", [0.6, 0.3], hover=["a", "b", "c"], layer=4)
    assert [t.name for t in fig.data] == ["direct", "cot"]
    assert list(fig.data[0].x) == [0.0, 2.0] and fig.data[0].marker.color == regime_colour("direct")
    assert fig.layout.xaxis.title.text == "PC1 (60.0 % of variance)"
    assert fig.layout.title.text == "PCA of the read-out state I at layer 4"
    numeric = pca_figure(scores, [1.5, 2.5, 3.5], "H_int (bits)", [0.5, 0.2], point=np.array([9.0, 9.0]))
    assert list(numeric.data[0].marker.color) == [1.5, 2.5, 3.5]
    assert numeric.data[-1].name == "your prompt" and numeric.data[-1].x == (9.0,)
    correct = pca_figure(scores, ["correct", "wrong", "not graded"], "correctness", [0.5, 0.2])
    assert correct.data[1].marker.color == "#d73027"
    with pytest.raises(ValueError):
        pca_figure(scores[:, :1], [1, 2, 3], "x", [0.1, 0.1])


def test_token_entropy_bars():
    fig = token_entropy_bar_figure([" Paris", "."], [0.5, 1.25])
    assert list(fig.data[0].x) == ["0:·Paris", "1:."] and list(fig.data[0].y) == [0.5, 1.25]
    assert fig.layout.yaxis.title.text == "entropy (bits)"


def test_pca_colour_values_and_hover_from_a_run_table():
    frame = pd.DataFrame({"item_id": ["a", "b", "c"], "regime": ["direct", "cot", "cot"],
                          "question": ["<b>2+2</b>", "q" * 100, "x"], "readout_entropy_bits": [1.234, 2.0, 0.5],
                          "correct": pd.Series([True, None, False], dtype=object)})
    assert pca_colour_values(frame, "regime") == ["direct", "cot", "cot"]
    assert pca_colour_values(frame, "correctness") == ["correct", "not graded", "wrong"]
    assert pca_colour_values(frame, "H_int (bits)") == [1.234, 2.0, 0.5]
    assert pca_colour_values(frame, "H_slot (bits)") == pca_colour_values(frame, "read-out entropy (bits)")
    assert pca_colour_options("H_slot") == ("regime", "correctness", "H_slot (bits)")
    assert pca_colour_options("mixed")[2] == "read-out entropy (bits)"
    with pytest.raises(ValueError, match="colour must be one of"):
        pca_colour_values(frame, "size")
    hover = pca_hover(frame)
    assert hover[0] == "a · direct<br>&lt;b&gt;2+2&lt;/b&gt;<br>H=1.23 bits"
    assert hover[1] == "b · cot<br>" + "q" * 80 + "<br>H=2.00 bits"
    hostile = frame.assign(item_id=['<a href="http://127.0.0.1:9/x">id</a>'] * len(frame))
    assert pca_hover(hostile)[0].startswith("&lt;a href=&quot;http://127.0.0.1:9/x&quot;&gt;id&lt;/a&gt; · direct")
