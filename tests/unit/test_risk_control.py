"""Learn-then-Test thresholds: binomial bounds by hand, fixed-sequence testing, refusals, repeated splits."""

import math

import numpy as np
import pytest
from scipy.stats import beta, binom

from ic_core.errors import DataError
from ic_core.stats.risk_control import (
    clopper_pearson_p_value,
    clopper_pearson_upper,
    held_out_risk,
    hoeffding_bentkus_p_value,
    learn_then_test,
    p_value,
    zero_error_items,
)
from ic_core.stats.risk_simulation import simulate_splits


class TestBounds:
    """Binomial tail bounds against hand-computed cases."""

    def test_clopper_pearson_zero_errors_closed_form(self):
        """0 errors in 10: the upper bound solves (1 − u)^10 = δ, so u = 1 − δ^(1/10) = 0.2057 at δ = 0.1."""
        assert clopper_pearson_upper(0, 10, 0.1) == pytest.approx(1 - 0.1 ** 0.1, abs=1e-12)
        assert clopper_pearson_upper(0, 10, 0.1) == pytest.approx(0.2057, abs=1e-4)

    def test_clopper_pearson_upper_is_the_beta_quantile(self):
        """2 errors in 20 at δ = 0.05: u = Beta(3, 18) 95 % quantile, and P(Binom(20, u) <= 2) = 0.05."""
        u = clopper_pearson_upper(2, 20, 0.05)
        assert u == pytest.approx(beta.ppf(0.95, 3, 18), abs=1e-12)
        assert binom.cdf(2, 20, u) == pytest.approx(0.05, abs=1e-9)

    def test_clopper_pearson_edge_cases(self):
        """No items or all wrong: nothing can be bounded below 1."""
        assert clopper_pearson_upper(0, 0, 0.1) == 1.0
        assert clopper_pearson_upper(5, 5, 0.1) == 1.0
        assert clopper_pearson_p_value(0, 0, 0.2) == 1.0

    def test_exact_p_value_by_hand(self):
        """P(Binom(10, 0.2) <= 0) = 0.8^10 = 0.107374; <= 1 adds 10·0.2·0.8^9 = 0.268435 → 0.375810."""
        assert clopper_pearson_p_value(0, 10, 0.2) == pytest.approx(0.8 ** 10, abs=1e-12)
        assert clopper_pearson_p_value(1, 10, 0.2) == pytest.approx(0.8 ** 10 + 10 * 0.2 * 0.8 ** 9, abs=1e-12)
        assert clopper_pearson_p_value(1, 10, 0.2) == pytest.approx(0.375810, abs=1e-6)

    def test_p_value_below_delta_iff_upper_bound_below_alpha(self):
        """The exact test rejects "risk > α" at δ exactly when the Clopper–Pearson bound is ≤ α."""
        for k, m in [(0, 10), (1, 30), (3, 40), (10, 60), (25, 100)]:
            for a in (0.05, 0.1, 0.2, 0.3):
                assert (clopper_pearson_p_value(k, m, a) <= 0.1) == (clopper_pearson_upper(k, m, 0.1) <= a)

    def test_hoeffding_bentkus_bentkus_side(self):
        """2 errors in 20, α = 0.3: Hoeffding exp(−20·h1(0.1, 0.3)) = 0.0976, Bentkus e·P(Binom(20, 0.3) <= 2) = 0.0965."""
        bentkus = math.e * sum(math.comb(20, j) * 0.3 ** j * 0.7 ** (20 - j) for j in range(3))
        h1 = 0.1 * math.log(0.1 / 0.3) + 0.9 * math.log(0.9 / 0.7)
        assert math.exp(-20 * h1) == pytest.approx(0.0976, abs=1e-4)
        assert hoeffding_bentkus_p_value(2, 20, 0.3) == pytest.approx(bentkus, abs=1e-12)
        assert hoeffding_bentkus_p_value(2, 20, 0.3) == pytest.approx(0.09645, abs=1e-5)

    def test_hoeffding_bentkus_hoeffding_side(self):
        """0 errors in 15, α = 0.2: h1(0, α) = −ln(0.8), so Hoeffding gives 0.8^15 = 0.0352 < e·0.8^15."""
        assert hoeffding_bentkus_p_value(0, 15, 0.2) == pytest.approx(0.8 ** 15, abs=1e-12)

    def test_hoeffding_bentkus_is_more_conservative_than_exact(self):
        """HB holds for any bounded loss, so for 0/1 errors it is never below the exact binomial p-value."""
        for k, m in [(0, 5), (2, 20), (7, 50), (30, 100)]:
            assert hoeffding_bentkus_p_value(k, m, 0.25) >= clopper_pearson_p_value(k, m, 0.25)

    def test_zero_error_items(self):
        """Exact: smallest m with 0.9^m <= 0.1 is 22 (0.9^21 = 0.109, 0.9^22 = 0.098)."""
        assert zero_error_items(0.1, 0.1, "clopper_pearson") == 22
        assert zero_error_items(0.25, 0.1, "clopper_pearson") == math.ceil(math.log(0.1) / math.log(0.75))

    def test_unknown_method_is_refused(self):
        """A method name outside the list is a one-line DataError."""
        with pytest.raises(DataError, match="Unknown risk-control method"):
            p_value(0, 10, 0.1, "wsr")


def _hand_table(errors_at):
    """Scores 1..10, wrong exactly at the scores in ``errors_at``."""
    s = np.arange(1, 11, dtype=float)
    return s, ~np.isin(s, errors_at)


class TestLearnThenTest:
    """Fixed-sequence testing over an ordered grid."""

    def test_certifies_the_last_threshold_the_sequence_reaches(self):
        """Errors at 5, 8, 9, 10; grid 3, 6, 10; α = 0.5, δ = 0.2.

        t = 3: 0 errors of 3, p = 0.5^3 = 0.125 ≤ 0.2; t = 6: 1 of 6, p = 7/64 = 0.109 ≤ 0.2;
        t = 10: 4 of 10, p = (1+10+45+120+210)/1024 = 0.377 > 0.2 → certified t = 6, coverage 0.6.
        """
        s, c = _hand_table([5, 8, 9, 10])
        r = learn_then_test(s, c, alpha=0.5, delta=0.2, thresholds=[10, 3, 6])
        assert r.certified and r.threshold == 6.0
        assert r.coverage == pytest.approx(0.6) and (r.n_approved, r.errors_approved) == (6, 1)
        assert r.p_values == pytest.approx([0.125, 7 / 64, 386 / 1024])
        assert list(r.approved_counts) == [3, 6, 10] and list(r.error_counts) == [0, 1, 4]
        assert r.n_tested == 3 and r.reason is None

    def test_sequence_stops_at_the_first_failure(self):
        """Errors at 4, 8, 9, 10; grid 3, 4, 6: t = 4 has 1 of 4 (p = 5/16 = 0.31 > 0.2) so t = 6 (p = 0.109) is never reached."""
        s, c = _hand_table([4, 8, 9, 10])
        r = learn_then_test(s, c, alpha=0.5, delta=0.2, thresholds=[3, 4, 6])
        assert r.threshold == 3.0 and r.n_tested == 2
        assert r.p_values[2] <= 0.2

    def test_direction_ge_mirrors_le(self):
        """Negated scores with "approve score >= t" certify the negated threshold, same counts."""
        s, c = _hand_table([5, 8, 9, 10])
        r = learn_then_test(-s, c, alpha=0.5, delta=0.2, direction="ge", thresholds=[-3, -6, -10])
        assert r.threshold == -6.0 and r.coverage == pytest.approx(0.6)
        assert "score >= -6" in r.text()

    def test_hoeffding_bentkus_is_stricter_on_the_same_table(self):
        """HB at t = 3 (0 of 3): min(0.5^3, e·0.5^3) = 0.125 passes; t = 6 (1 of 6): e·7/64 = 0.297 fails."""
        s, c = _hand_table([5, 8, 9, 10])
        r = learn_then_test(s, c, alpha=0.5, delta=0.2, method="hoeffding_bentkus", thresholds=[3, 6, 10])
        assert r.threshold == 3.0
        assert r.p_values[1] == pytest.approx(min(math.e * 7 / 64, hoeffding_bentkus_p_value(1, 6, 0.5)))

    def test_refusal_states_the_items_needed(self):
        """90 items, α = 0.1: the reason names n and a need ≈ N that certifies at N and not at N − 1."""
        # Scores 0..89, wrong at 19, 39, 59, 79 (4.4 %): the first threshold approves 9 items, none wrong,
        # p = 0.9^9 = 0.387 > 0.1; 0 errors certify from 22 approved, i.e. ≈ 220 items at 10 % coverage.
        s = np.arange(90, dtype=float)
        c = np.arange(90) % 20 != 19
        r = learn_then_test(s, c, alpha=0.1, delta=0.1)
        assert not r.certified and r.threshold is None and r.coverage is None
        assert r.reason.startswith(f"cannot certify α = 0.1 with 90 items; need ≈ {r.needed_n} items")
        assert r.needed_n == 220 and r.p_values[0] == pytest.approx(0.9 ** 9)
        # The sequence stopped at its first threshold: N scales that threshold's coverage and error rate.
        assert r.needed_index == 0 and r.n_tested == 1 and r.p_values[0] > 0.1
        cov, rate = r.approved_counts[0] / 90, r.error_counts[0] / r.approved_counts[0]
        assert rate < 0.1

        def certifies(n):
            m = max(1, math.floor(cov * n + 1e-9))
            return clopper_pearson_p_value(math.ceil(rate * m - 1e-9), m, 0.1) <= 0.1
        assert certifies(r.needed_n) and not certifies(r.needed_n - 1)

    def test_refusal_when_more_items_cannot_help(self):
        """Error ≥ α at every threshold: no N is promised."""
        s = np.arange(40, dtype=float)
        c = np.arange(40) % 2 == 0
        r = learn_then_test(s, c, alpha=0.2, delta=0.1)
        assert r.needed_n is None and "will not help" in r.reason and "with 40 items" in r.reason

    @pytest.mark.parametrize("kwargs, match", [
        (dict(scores=[1.0, np.nan], correct=[1, 0]), "not finite"),
        (dict(scores=[1.0, 2.0], correct=[1]), "not aligned"),
        (dict(scores=[1.0], correct=[1], alpha=1.5), "strictly between 0 and 1"),
        (dict(scores=[1.0], correct=[1], direction="lt"), "Unknown direction"),
        (dict(scores=[], correct=[]), "No calibration items"),
    ])
    def test_bad_input_is_one_line(self, kwargs, match):
        """Bad input raises a DataError naming the problem."""
        args = dict(alpha=0.1, delta=0.1) | kwargs
        with pytest.raises(DataError, match=match):
            learn_then_test(args.pop("scores"), args.pop("correct"), **args)


def test_held_out_risk_by_hand():
    """Scores 1..10, errors at 5, 8, 9, 10, t = 6: 6 approved, 1 wrong → 1/6 error, coverage 0.6 (Wilson CIs)."""
    s, c = _hand_table([5, 8, 9, 10])
    h = held_out_risk(s, c, 6.0, "le")
    assert (h.n, h.n_approved, h.errors_approved) == (10, 6, 1)
    assert h.error_rate == pytest.approx(1 / 6) and h.coverage == pytest.approx(0.6)
    assert h.error_ci[0] < 1 / 6 < h.error_ci[1] and h.coverage_ci[0] < 0.6 < h.coverage_ci[1]
    assert held_out_risk(s, c, 0.0, "le").error_rate is None


def _known_curve(rng, n):
    """Scores U(0, 1), P(wrong | u) = u: the true error among approved at t is t/2."""
    u = rng.uniform(size=n)
    return u, rng.uniform(size=n) >= u


class TestGuarantee:
    """The exceedance rate stays within δ on scores with a known error curve."""

    def test_true_risk_exceeds_alpha_in_at_most_delta_of_calibrations(self):
        """600 fresh calibration sets of 300: true risk t/2 > α in ≤ δ + 3 SE; the empirical fit fails far more."""
        rng = np.random.default_rng(11)
        alpha, delta, k = 0.2, 0.1, 600
        ltt_exceed, emp_exceed, cov = 0, 0, []
        for _ in range(k):
            u, c = _known_curve(rng, 300)
            r = learn_then_test(u, c, alpha=alpha, delta=delta)
            if r.certified:
                ltt_exceed += r.threshold / 2 > alpha
                cov.append(r.threshold)
            ok = np.sort(u)[np.cumsum(~c[np.argsort(u)]) / np.arange(1, 301) <= alpha]
            emp_exceed += ok.size > 0 and ok.max() / 2 > alpha
        rate = ltt_exceed / k
        assert rate <= delta + 3 * math.sqrt(max(rate * (1 - rate), 1e-12) / k)
        assert emp_exceed / k > 0.3
        assert len(cov) > 0.7 * k and 0.25 < np.mean(cov) < 0.4

    def test_simulate_splits_within_delta(self):
        """500 splits of 20,000 items (300 calibration): exceedance ≤ δ + 3 SE, coverage below the true 0.4 limit."""
        u, c = _known_curve(np.random.default_rng(5), 20_000)
        sim = simulate_splits(u, c, alpha=0.2, delta=0.1, n_splits=500, n_calibration=300, seed=1)
        assert sim.n_splits == 500 and sim.n_test == 19_700
        assert sim.exceedance_rate <= sim.delta + 3 * sim.exceedance_se and sim.within_delta
        assert sim.share_certified > 0.7 and 0.15 < sim.mean_coverage < 0.4
        assert sim.mean_realised_error < 0.2
        assert "500 splits (300 calibration / 19700 test)" in sim.text()
        again = simulate_splits(u, c, alpha=0.2, delta=0.1, n_splits=500, n_calibration=300, seed=1)
        assert np.array_equal(sim.coverages, again.coverages)

    def test_simulate_splits_refuses_n_too_small(self):
        """30 items → 15 calibration items, but α = 0.1 at δ = 0.1 needs ≥ 22 approved even with no errors."""
        u, c = _known_curve(np.random.default_rng(0), 30)
        with pytest.raises(DataError, match=r"n too small: 15 calibration items .*\(need ≥ 22 approved"):
            simulate_splits(u, c, alpha=0.1, delta=0.1)
        with pytest.raises(DataError, match="≥ 10 test items"):
            simulate_splits(u, c, alpha=0.1, delta=0.1, n_calibration=25)
