"""Selective-prediction statistics on tiny tables computed by hand, their CIs, and the calibration figures."""

import numpy as np
import pytest

from ic_core.errors import DataError
from ic_core.plots.calibration import reliability_figure, simulation_figure
from ic_core.stats.auroc import auroc
from ic_core.stats.risk_simulation import simulate_splits
from ic_core.stats.selective import (
    augrc,
    aurc,
    brier_score,
    eaurc,
    expected_calibration_error,
    expected_errors,
    optimal_aurc,
    reliability_bins,
    selective_summary,
)

# Four items, most trusted first: right, wrong, right, wrong.
S4 = [0.9, 0.8, 0.7, 0.6]
C4 = [1, 0, 1, 0]


class TestRiskCoverage:
    """AURC, E-AURC and AUGRC by hand."""

    def test_aurc_by_hand(self):
        """Errors among the top k: E = 0, 1, 1, 2 → risks 0, 1/2, 1/3, 1/2 → AURC = (4/3)/4 = 1/3."""
        assert list(expected_errors(S4, C4)) == [0, 1, 1, 2]
        assert aurc(S4, C4) == pytest.approx(1 / 3)

    def test_eaurc_by_hand(self):
        """Perfect order (R R W W): risks 0, 0, 1/3, 1/2 → AURC* = (5/6)/4 = 5/24; E-AURC = 1/3 − 5/24 = 1/8."""
        assert optimal_aurc(4, 2) == pytest.approx(5 / 24)
        assert eaurc(S4, C4) == pytest.approx(1 / 8)
        assert eaurc([4, 3, 2, 1], [1, 1, 0, 0]) == pytest.approx(0.0)

    def test_augrc_by_hand(self):
        """Generalized risk E_k/n = 0, 1/4, 1/4, 1/2; trapezoids (0+0)/2, (0+1)/2, (1+1)/2, (1+2)/2 → 3/16 = 0.1875."""
        assert augrc(S4, C4) == pytest.approx(3 / 16)

    def test_augrc_matches_the_auroc_identity(self):
        """AUGRC = π(1−π)(1−AUROC) + (1−π)²/2: here 0.25·0.25 + 0.125 = 0.1875; and on random ties too."""
        rng = np.random.default_rng(0)
        s = rng.integers(0, 5, size=200).astype(float)
        c = rng.uniform(size=200) < 0.3 + 0.1 * s
        pi = c.mean()
        assert augrc(s, c) == pytest.approx(pi * (1 - pi) * (1 - auroc(s, c)) + (1 - pi) ** 2 / 2, abs=1e-12)

    def test_ties_share_errors_and_ignore_input_order(self):
        """Scores 1, 1, 0 with labels R, W, R: E_1 = 0.5, E_2 = 1, E_3 = 1 → AURC = (0.5 + 0.5 + 1/3)/3 = 4/9."""
        assert list(expected_errors([1, 1, 0], [1, 0, 1])) == pytest.approx([0.5, 1.0, 1.0])
        assert aurc([1, 1, 0], [1, 0, 1]) == pytest.approx(4 / 9)
        assert aurc([1, 1, 0], [0, 1, 1]) == pytest.approx(4 / 9)

    def test_a_random_score_is_worse_than_a_good_one(self):
        """On 400 items, a score that tracks correctness has a lower AURC and AUGRC than noise."""
        rng = np.random.default_rng(1)
        good = rng.normal(size=400)
        c = rng.uniform(size=400) < 1 / (1 + np.exp(-2 * good))
        noise = rng.normal(size=400)
        assert aurc(good, c) < aurc(noise, c) and augrc(good, c) < augrc(noise, c)

    def test_bad_input(self):
        """Misaligned, empty or NaN input raises a one-line DataError."""
        for s, c, match in [([1, 2], [1], "not aligned"), ([], [], "No graded items"), ([np.nan], [1], "not finite")]:
            with pytest.raises(DataError, match=match):
                aurc(s, c)


class TestSummary:
    """Bootstrap CIs follow the AUROC conventions."""

    def test_ci_brackets_the_value_and_is_seeded(self):
        """200 items, 300 resamples: each CI contains its point value; the same seed gives the same CI."""
        rng = np.random.default_rng(2)
        s = rng.normal(size=200)
        c = rng.uniform(size=200) < 1 / (1 + np.exp(-s))
        summ = selective_summary(s, c, name="x", n_boot=300, seed=4)
        for est in (summ.aurc, summ.eaurc, summ.augrc):
            assert est.ci_low <= est.value <= est.ci_high and est.n_boot_used == 300 and est.n == 200
        assert summ.aurc.value == pytest.approx(aurc(s, c)) and summ.eaurc.value == pytest.approx(eaurc(s, c))
        again = selective_summary(s, c, name="x", n_boot=300, seed=4)
        assert again.augrc.ci_low == summ.augrc.ci_low
        assert summ.to_json()["aurc"]["metric"] == "AURC"

    def test_too_few_items_give_a_reason(self):
        """Below 10 items: no value, reason "n too small" (never a stand-in number)."""
        summ = selective_summary(S4, C4)
        assert summ.aurc.value is None and summ.aurc.reason == "n too small"
        assert summ.augrc.ci_text() == "n too small"


class TestCalibration:
    """ECE (binning stated), Brier and reliability bins by hand."""

    P = [0.1, 0.2, 0.3, 0.9]
    Y = [0, 1, 0, 1]

    def test_ece_equal_width_by_hand(self):
        """2 equal-width bins: [0, .5) = {.1, .2, .3} conf .2 acc 1/3, [.5, 1] = {.9} conf .9 acc 1.

        ECE = 3/4·|1/3 − 0.2| + 1/4·|1 − 0.9| = 0.1 + 0.025 = 0.125.
        """
        b = reliability_bins(self.P, self.Y, n_bins=2, binning="equal_width")
        assert list(b.counts) == [3, 1] and list(b.edges) == [0.0, 0.5, 1.0]
        assert b.mean_confidence == pytest.approx([0.2, 0.9]) and b.accuracy == pytest.approx([1 / 3, 1.0])
        assert b.ece == pytest.approx(0.125) and b.label == "ECE (2 equal-width bins)"

    def test_ece_equal_mass_by_hand(self):
        """2 equal-mass bins: {.1, .2} conf .15 acc .5, {.3, .9} conf .6 acc .5 → ECE = ½·0.35 + ½·0.1 = 0.225."""
        b = reliability_bins(self.P, self.Y, n_bins=2, binning="equal_mass")
        assert list(b.counts) == [2, 2] and list(b.edges) == pytest.approx([0.1, 0.3, 0.9])
        assert expected_calibration_error(self.P, self.Y, n_bins=2, binning="equal_mass") == pytest.approx(0.225)
        assert b.label == "ECE (2 equal-mass bins)"

    def test_empty_bins_and_p_equal_one(self):
        """p = 1.0 falls in the last equal-width bin; empty bins hold NaN and do not count."""
        b = reliability_bins([1.0, 1.0, 0.05], [1, 1, 0], n_bins=10)
        assert b.counts[9] == 2 and b.counts[0] == 1 and np.isnan(b.accuracy[5])
        assert b.ece == pytest.approx(1 / 3 * 0.05)

    def test_brier_by_hand(self):
        """(0.1² + 0.8² + 0.3² + 0.1²)/4 = (0.01 + 0.64 + 0.09 + 0.01)/4 = 0.1875."""
        assert brier_score(self.P, self.Y) == pytest.approx(0.1875)

    def test_not_probabilities_and_bad_binning(self):
        """Scores outside [0, 1], an unknown binning, or zero bins are refused in one line."""
        with pytest.raises(DataError, match=r"probabilities in \[0, 1\]"):
            brier_score([1.5, 0.2], [1, 0])
        with pytest.raises(DataError, match="Unknown binning"):
            reliability_bins(self.P, self.Y, binning="quantile")
        with pytest.raises(DataError, match="n_bins"):
            reliability_bins(self.P, self.Y, n_bins=0)


class TestFigures:
    """The calibration figures show the computed data."""

    def test_reliability_figure(self):
        """Diagonal plus one marker per non-empty bin, the legend naming ECE and its binning."""
        b = reliability_bins([0.1, 0.2, 0.3, 0.9], [0, 1, 0, 1], n_bins=4)
        fig = reliability_figure(b)
        assert len(fig.data) == 2 and list(fig.data[0].x) == [0, 1]
        assert list(fig.data[1].customdata) == [2, 1, 1]
        assert fig.data[1].name.startswith("ECE (4 equal-width bins) = ")

    def test_simulation_figure(self):
        """The histogram holds the realised errors of the splits that approved something; α is marked."""
        rng = np.random.default_rng(0)
        u = rng.uniform(size=400)
        c = rng.uniform(size=400) >= u
        sim = simulate_splits(u, c, alpha=0.25, delta=0.1, n_splits=20, seed=0)
        fig = simulation_figure(sim)
        assert len(fig.data[0].x) == int(np.isfinite(sim.realised_errors).sum())
        assert fig.layout.shapes[0].x0 == 0.25 and "20 splits" in fig.layout.title.text
