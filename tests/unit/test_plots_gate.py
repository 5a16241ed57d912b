"""Gate figures: traces, marked point, counts and threshold lines."""

from __future__ import annotations

import numpy as np
import pytest

from ic_core.plots.gate import confusion_figure, risk_coverage_figure, score_histogram_figure
from ic_core.stats.gating import Confusion, confusion_at, risk_coverage


def test_risk_coverage_figure_marks_point_and_target():
    correct = np.array([True, True, False, True, False, False])
    curves = {"H_slot": risk_coverage([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], correct),
              "H_int": risk_coverage([0.6, 0.1, 0.2, 0.5, 0.4, 0.3], correct)}
    fig = risk_coverage_figure(curves, point=(0.5, 1 / 3), target_error=0.2)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert [t.name.split(" (")[0] for t in lines] == ["H_slot", "H_int"]
    np.testing.assert_allclose(lines[0].x, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    np.testing.assert_allclose(lines[0].y, [0, 0, 1 / 3, 0.25, 0.4, 0.5])
    star = [t for t in fig.data if t.mode == "markers"][0]
    assert star.x == (0.5,) and star.y == pytest.approx((1 / 3,))
    hlines = [s.y0 for s in fig.layout.shapes]
    assert 0.2 in hlines and 0.5 in hlines  # target and the no-gate error rate
    assert "coverage" in fig.layout.xaxis.title.text and "error" in fig.layout.yaxis.title.text


def test_risk_coverage_figure_without_point():
    fig = risk_coverage_figure({"x": risk_coverage([1.0, 2.0], [True, False])}, point=(0.0, None))
    assert not [t for t in fig.data if t.mode == "markers"]


def test_confusion_figure_cells():
    conf = confusion_at(0.5, [0.1, 0.2, 0.8, 0.9, 0.6], [True, False, True, False, False])
    fig = confusion_figure(conf)
    z = np.array(fig.data[0].z)
    np.testing.assert_array_equal(z, [[1, 1], [1, 2]])  # [approved right, cost], [slipped, caught]
    assert "caught" in fig.data[0].text[1][1] and "<b>2</b>" in fig.data[0].text[1][1]
    assert "n = 5" in fig.layout.title.text
    assert confusion_figure(Confusion(0, 0, 0, 0)).data[0].z is not None  # empty: no division by zero


def test_score_histogram_split_by_correctness_with_threshold():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    correct = np.array([True, True, False, False, True])
    fig = score_histogram_figure(scores, correct, 2.5, "H_slot", "bits")
    right, wrong = fig.data
    np.testing.assert_allclose(right.x, [1.0, 2.0, 5.0])
    np.testing.assert_allclose(wrong.x, [3.0, 4.0])
    assert "n = 3" in right.name and "n = 2" in wrong.name
    assert fig.layout.shapes[0].x0 == 2.5 and "escalate →" in fig.layout.annotations[0].text
    assert fig.layout.xaxis.title.text == "H_slot (bits)"
    probe = score_histogram_figure(scores / 10, correct, 0.3, "P(correct)", "probability 0–1", escalate_above=False)
    assert "← escalate" in probe.layout.annotations[0].text
    assert not score_histogram_figure(scores, correct, None, "H", "bits").layout.shapes
    with pytest.raises(ValueError, match="labels"):
        score_histogram_figure(scores, correct[:2], 1.0, "H", "bits")
