"""Figures of the recoverability page: values, bands, reasons instead of numbers."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from ic_core.plots.probes import auroc_by_layer_figure, baselines_figure, roc_figure, roc_points
from ic_core.stats.auroc import REASON_CONSTANT, REASON_SMALL, AurocEstimate, auroc


def result(name, a, lo=None, hi=None, kind="probe", reason=None, seed=0):
    if reason:
        return AurocEstimate(name, None, None, None, None, None, None, None, 50, 20, reason=reason, kind=kind)
    rng = np.random.default_rng(seed)
    labels = (rng.random(60) < 0.4).astype(np.int8)
    scores = labels * (a - 0.5) * 4 + rng.normal(size=60)
    return AurocEstimate(name, a, a - 0.01, lo if lo is not None else a - 0.1, hi if hi is not None else a + 0.1,
                       0.5, 0.45, 0.55, 60, int(labels.sum()), scores=scores, labels=labels, kind=kind)


def trace(fig, name_start):
    return next(t for t in fig.data if t.name and t.name.startswith(name_start))


class TestAurocByLayer:
    def test_values_band_shuffle_and_constant_layer(self):
        results = [result("layer 0", None, reason=REASON_CONSTANT)] + [result(f"layer {i}", 0.5 + 0.05 * i)
                                                                      for i in range(1, 5)]
        last = result("last 5 layers", 0.71, 0.65, 0.77)
        fig = auroc_by_layer_figure(results, last_layers=last)
        assert isinstance(fig, go.Figure)
        line = trace(fig, "probe AUROC")
        assert line.y[0] is None and line.y[1:] == pytest.approx((0.55, 0.6, 0.65, 0.7))
        band = trace(fig, "probe 95 % CI")
        assert band.fill == "tonexty" and band.y[0] is None and band.y[2] == pytest.approx(0.5)
        assert trace(fig, "shuffled labels (mean)").y[1] == pytest.approx(0.5)
        assert trace(fig, "shuffled labels (min").y[1] == pytest.approx(0.45)
        texts = [a.text for a in fig.layout.annotations]
        assert REASON_CONSTANT in texts and "chance (0.5)" in texts
        assert any("last 5 layers: 0.71 [0.65, 0.77]" in t for t in texts)
        shapes = [s for s in fig.layout.shapes if s.type == "rect"]
        assert len(shapes) == 1 and shapes[0].x0 < 0 < shapes[0].x1
        assert "layer" in fig.layout.xaxis.title.text and "AUROC" in fig.layout.yaxis.title.text

    def test_no_shuffle_band_without_shuffles(self):
        r = result("layer 1", 0.6)
        r = AurocEstimate(**{**r.__dict__, "shuffle_mean": None, "shuffle_min": None, "shuffle_max": None})
        fig = auroc_by_layer_figure([r])
        assert not any(t.name and t.name.startswith("shuffled") for t in fig.data)


class TestRoc:
    def test_curves_end_at_corners_and_label_auroc(self):
        probe, ent = result("last 5 layers", 0.8, seed=1), result("−H_slot", 0.7, kind="score", seed=2)
        small = result("prompt length", None, reason=REASON_SMALL, kind="score")
        fig = roc_figure([probe, ent, small])
        t = trace(fig, "last 5 layers")
        assert t.x[0] == 0 and t.y[-1] == 1 and t.x[-1] == 1
        # the area under the drawn step curve equals the AUROC of the scores
        fpr, tpr = np.asarray(t.x), np.asarray(t.y)
        area = float(np.sum(np.diff(fpr) * tpr[:-1]))
        assert area == pytest.approx(auroc(probe.scores, probe.labels), abs=0.02)
        assert trace(fig, "prompt length").name == "prompt length: n too small"
        assert trace(fig, "chance").x == (0, 1)
        assert "false-positive rate" in fig.layout.xaxis.title.text

    def test_roc_points_monotone(self):
        fpr, tpr = roc_points(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


class TestBaselines:
    def test_bars_with_ci_and_reason_text(self):
        rs = [result("last 5 layers", 0.78, 0.72, 0.83), result("−H_slot", 0.7, 0.6, 0.8, kind="score"),
              result("question text only (TF-IDF)", None, reason=REASON_SMALL)]
        fig = baselines_figure(rs)
        bar = fig.data[0]
        assert list(bar.y) == [r.name for r in rs]
        assert bar.x[0] == pytest.approx(0.78) and bar.x[2] is None
        assert bar.error_x.array[0] == pytest.approx(0.05) and bar.error_x.arrayminus[0] == pytest.approx(0.06)
        assert list(bar.marker.color[:2]) == ["#1f77b4", "#ff7f0e"]
        notes = [a.text for a in fig.layout.annotations]
        assert REASON_SMALL in notes and "chance" in notes
        assert "AUROC" in fig.layout.xaxis.title.text
