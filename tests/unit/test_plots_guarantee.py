"""Figures and sentences of issue 12 / the issue-17 cosmetics: integer count ticks, uncut matrix labels, % axes."""

from __future__ import annotations

import numpy as np
import pytest

from ic_core.governance.gate import OUT_OF_DISTRIBUTION, Decision
from ic_core.narrative import guarantee_line, quality_rows
from ic_core.plots.calibration import reliability_figure, simulation_figure
from ic_core.plots.gate import confusion_figure, integer_dtick, risk_coverage_figure, score_histogram_figure
from ic_core.stats.gating import confusion_from_decisions, risk_coverage
from ic_core.stats.risk_simulation import simulate_splits
from ic_core.stats.selective import reliability_bins


class TestIntegerTicks:
    @pytest.mark.parametrize(("top", "step"), [(0, 1), (1, 1), (6, 1), (7, 2), (12, 2), (13, 5), (30, 5), (31, 10),
                                               (60, 10), (61, 20), (250, 50), (1000, 200)])
    def test_steps_are_1_2_5_times_a_power_of_ten(self, top, step):
        assert integer_dtick(top) == step

    def test_histogram_of_few_items_has_whole_count_ticks(self):
        fig = score_histogram_figure([1.0, 1.2, 2.0, 3.5], [True, True, False, False], 2.5, "H_slot", "bits")
        assert fig.layout.yaxis.dtick == 1 and fig.layout.yaxis.tick0 == 0
        assert fig.layout.xaxis.title.text == "H_slot (bits)"

    def test_histogram_step_follows_the_tallest_bin(self):
        s = np.r_[np.full(40, 1.0), np.linspace(2, 3, 10)]
        fig = score_histogram_figure(s, s < 1.5, None, "H_int", "bits", n_bins=10)
        assert fig.layout.yaxis.dtick == 10  # 40 items in one bin: ticks 0, 10, 20, 30, 40


class TestMatrixAndAxes:
    def test_confusion_labels_are_broken_so_nothing_is_cut(self):
        conf = confusion_from_decisions(np.array([False, False, True, True]), np.array([True, False, True, False]))
        fig = confusion_figure(conf)
        text = fig.data[0].text
        assert text[1][0].startswith("approved, wrong<br>(slipped through)<br><b>1</b>")
        assert all(len(part) <= 20 for row in text for cell in row for part in cell.split("<br>")[:2])
        assert fig.layout.yaxis.automargin and fig.layout.xaxis.automargin

    def test_percent_axes_carry_no_zero_to_one_label(self):
        rc = risk_coverage(np.array([0.1, 0.5, 0.9, 1.2]), np.array([True, True, False, False]))
        fig = risk_coverage_figure({"H": rc})
        assert fig.layout.xaxis.tickformat == ".0%" and "0–1" not in fig.layout.xaxis.title.text
        assert "0–1" not in fig.layout.yaxis.title.text

    def test_reliability_and_simulation_use_percent_ticks_and_whole_counts(self):
        rng = np.random.default_rng(0)
        p = rng.uniform(0, 1, 200)
        c = rng.uniform(0, 1, 200) < p
        rel = reliability_figure(reliability_bins(p, c))
        assert rel.layout.xaxis.tickformat == ".0%" and rel.layout.yaxis.tickformat == ".0%"
        u = rng.uniform(0, 1, 400)
        sim = simulate_splits(u, rng.uniform(0, 1, 400) > u * 0.6, alpha=0.3, delta=0.1, n_splits=30, seed=0)
        fig = simulation_figure(sim)
        assert fig.layout.xaxis.tickformat == ".0%" and isinstance(fig.layout.yaxis.dtick, int)
        errors = sim.realised_errors[np.isfinite(sim.realised_errors)]
        assert fig.layout.yaxis.dtick == integer_dtick(np.histogram(errors, bins=np.arange(0, 1 + 2 / 30, 1 / 30))[0].max())
        assert f"error > α in {sim.exceedance_rate:.1%} (δ = 0.1)" in fig.layout.title.text


def _decision(guarantee, **signals):
    return Decision("approve", "ok", dict(signals), "p1", 0.1, "m", guarantee=guarantee)


class TestGuaranteeLine:
    def test_out_of_distribution_names_the_distance(self):
        line = guarantee_line(_decision(OUT_OF_DISTRIBUTION, ood_distance=53.04, ood_threshold=12.5))
        assert line.startswith("**Guarantee for this prompt: none — out of distribution** (distance 53.04 > "
                               "threshold 12.50)")

    def test_certified_empirical_and_inside(self):
        cert = "error among approved ≤ 0.25 with probability ≥ 0.9 (LTT, Clopper-Pearson, n=114)"
        line = guarantee_line(_decision(cert, ood_distance=3.0, ood_threshold=12.5))
        assert line == (f"**Guarantee for this prompt: certified (Learn then Test)** — {cert}, on prompts like the "
                        "calibration items. The prompt lies inside the calibration states (distance 3.00 ≤ 12.50).")
        assert guarantee_line(_decision("none (empirical threshold)")) == \
            "**Guarantee for this prompt: none (empirical threshold)**."


def test_quality_rows_put_aurc_beside_auroc():
    from ic_core.governance.compare import signal_quality

    rng = np.random.default_rng(1)
    c = rng.uniform(size=80) < 0.5
    s = np.where(c, 1.0, 0.0) + rng.normal(scale=0.8, size=80)
    q = signal_quality("−H", s, c, np.arange(40, 80), n_boot=200)
    (row,) = quality_rows([q])
    assert row["signal"] == "−H" and row["AURC [95 % CI]"] == q.selective.aurc.ci_text()
    assert row["held-out AUROC [95 % CI]"].startswith(f"{q.auroc.auroc_pooled:.2f} [")
    assert row["right / wrong"] == f"{int(c[40:].sum())} right / {int((~c[40:]).sum())} wrong"
