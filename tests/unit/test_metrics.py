"""Unit tier: entropies, KL, participation ratio, PCA on known inputs."""

import math

import numpy as np
import pytest

from ic_core.errors import DataError
from ic_core.stats.entropy import entropy_bits, entropy_top_k_bits, kl_bits
from ic_core.stats.geometry import (
    constant_layers,
    covariance_eigenvalues,
    dim_eff,
    n_components_for_variance,
    participation_ratio,
    pca,
    pca_fit,
    place,
)


class TestEntropy:
    def test_uniform_is_log2_vocab(self):
        assert entropy_bits(np.zeros(1024)) == pytest.approx(10.0)

    def test_peaked_is_near_zero(self):
        logits = np.full(50, -1e4)
        logits[3] = 0.0
        assert entropy_bits(logits) == pytest.approx(0.0, abs=1e-9)

    def test_two_equal_tokens_is_one_bit(self):
        logits = np.array([5.0, 5.0, -1e4, -1e4])
        assert entropy_bits(logits) == pytest.approx(1.0)

    def test_batched_rows(self):
        out = entropy_bits(np.stack([np.zeros(8), np.zeros(16)[:8]]))
        assert out.shape == (2,) and np.allclose(out, 3.0)

    def test_top_k_renormalises_over_k(self):
        rng = np.random.default_rng(0)
        logits = rng.normal(size=500)
        logits[:100] += 50  # top-100 are these, uniform-ish among themselves
        full = entropy_bits(logits)
        top = entropy_top_k_bits(logits, 100)
        assert top == pytest.approx(entropy_bits(np.sort(logits)[-100:]))
        assert top <= math.log2(100) + 1e-9 and full >= top - 1e-6

    def test_kl_zero_for_same_and_positive_otherwise(self):
        a = np.array([1.0, 2.0, 3.0])
        assert kl_bits(a, a) == pytest.approx(0.0, abs=1e-12)
        # KL(p||q) for p=(1/2,1/2), q=(1/4,3/4) in bits
        p = np.log([0.5, 0.5])
        q = np.log([0.25, 0.75])
        expected = 0.5 * math.log2(0.5 / 0.25) + 0.5 * math.log2(0.5 / 0.75)
        assert kl_bits(p, q) == pytest.approx(expected)


class TestDimensionality:
    def test_isotropic_k_dims_gives_pr_near_k(self):
        rng = np.random.default_rng(1)
        x = np.zeros((4000, 20))
        x[:, :5] = rng.normal(size=(4000, 5))
        assert participation_ratio(x) == pytest.approx(5.0, rel=0.05)

    def test_known_spectrum(self):
        # Exact eigenvalues via orthogonal design: variances 4 and 1 on two axes.
        x = np.array([[2.0, 0], [-2.0, 0], [0, 1.0], [0, -1.0]])
        lam = covariance_eigenvalues(x)
        assert np.allclose(lam[:2], [8 / 3, 2 / 3])
        assert participation_ratio(x) == pytest.approx((10 / 3) ** 2 / ((8 / 3) ** 2 + (2 / 3) ** 2))

    def test_ninety_percent_count(self):
        x = np.array([[2.0, 0], [-2.0, 0], [0, 1.0], [0, -1.0]])  # 80 % / 20 %
        assert n_components_for_variance(x, 0.9) == 2
        assert n_components_for_variance(x, 0.8) == 1

    def test_constant_states_are_undefined_not_numbers(self):
        x = np.ones((10, 4))
        assert participation_ratio(x) is None
        assert n_components_for_variance(x) is None

    def test_dim_eff_marks_constant_layer_and_caps_rank(self):
        rng = np.random.default_rng(2)
        states = rng.normal(size=(6, 3, 50))
        states[:, 0, :] = 1.5  # layer 0 constant, as under a chat template
        d = dim_eff(states)
        assert d.participation_ratio[0] is None and d.rank_cap == 5
        assert all(pr <= 5 + 1e-9 for pr in d.participation_ratio[1:])
        assert constant_layers(states) == [0]
        assert d.weighted_participation_ratio == pytest.approx(
            np.average(d.participation_ratio[1:], weights=d.trace[1:])
        )

    def test_pca_explains_planted_axis(self):
        rng = np.random.default_rng(3)
        x = rng.normal(size=(200, 10)) * 0.01
        x[:, 4] += rng.normal(size=200) * 5
        scores, comps, mean, ratio = pca(x, 2)
        assert scores.shape == (200, 2) and comps.shape == (2, 10)
        assert abs(comps[0, 4]) > 0.99 and ratio[0] > 0.99


class TestPlacement:
    """Placing one state on the PCA of N states: the same axes as :func:`pca`, distances in k components."""

    def _states(self):
        rng = np.random.default_rng(7)
        return rng.normal(size=(15, 20)) * np.linspace(3.0, 0.1, 20)

    def test_a_study_row_lands_on_its_own_pca_scores_signs_included(self):
        x = self._states()
        scores, _, _, ratio = pca(x, 2)
        for i in (0, 6, 14):
            p = place(x, x[i])
            np.testing.assert_allclose(p.point, scores[i], rtol=0, atol=1e-12)
            np.testing.assert_allclose(p.scores, scores, rtol=0, atol=1e-12)
            assert p.nearest_index == i and p.nearest_distance == pytest.approx(0.0, abs=1e-12)
            assert p.nn_percentile == 0.0 and not p.outside
        np.testing.assert_allclose(p.explained_ratio, ratio)
        assert p.n_components == 10  # min(10, N - 1 = 14)

    def test_distances_and_mahalanobis_on_known_values(self):
        x = self._states()
        fit = pca_fit(x, 10)
        new = x.mean(axis=0) + 2.0 * fit.components[0] * np.sqrt(fit.variance[0])
        p = place(x, new)
        assert p.mahalanobis == pytest.approx(2.0)  # two standard deviations along PC1 only
        d = np.sqrt(((fit.scores - fit.transform(new)) ** 2).sum(-1))
        assert p.nearest_distance == pytest.approx(d.min()) and p.nearest_index == int(np.argmin(d))
        pair = np.sqrt(((fit.scores[:, None] - fit.scores[None]) ** 2).sum(-1)) + np.diag(np.full(15, np.inf))
        np.testing.assert_allclose(p.study_nn_distances, pair.min(axis=1))
        assert p.nn_percentile == pytest.approx(100.0 * (pair.min(axis=1) < d.min()).mean())
        far = place(x, x[0] * 50)
        assert far.outside and far.nn_percentile == 100.0

    def test_rank_one_states_use_one_component(self):
        t = np.arange(5.0)[:, None]
        x = t * np.array([[1.0, 2.0, 0.0]])
        p = place(x, np.array([0.5, 1.0, 0.0]))
        assert p.n_components == 1 and p.scores[:, 1].tolist() == [0.0] * 5 and p.point[1] == 0.0
        assert p.nearest_distance == pytest.approx(np.sqrt(5.0) / 2)

    def test_refusals(self):
        x = self._states()
        with pytest.raises(ValueError, match="N ≥ 3"):
            place(x[:2], x[0])
        with pytest.raises(ValueError, match="got \\(15, 20\\) and \\(19,\\)"):
            place(x, x[0, :19])
        with pytest.raises(DataError, match="identical"):
            place(np.ones((5, 4)), np.zeros(4))
