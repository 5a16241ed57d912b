"""OOD distance model: Gaussian clusters, the conformal quantile, plain-JSON storage and its checks."""

import json

import numpy as np
import pytest

from ic_core.errors import DataError
from ic_core.stats.ood import MAX_OOD_FLOATS, OODModel, conformal_threshold, fit_ood, ledoit_wolf

D = 50
SCALE = np.linspace(3.0, 0.3, D)


def _cluster(rng, n, shift=0.0):
    """n states from N(shift, diag(SCALE²))."""
    return rng.normal(size=(n, D)) * SCALE + shift


@pytest.fixture(scope="module")
def model():
    """A model fitted on 400 states of the training cluster (ε = 0.05)."""
    return fit_ood(_cluster(np.random.default_rng(0), 400), n_components=10, outside_rate=0.05)


class TestClusters:
    """In-cluster states mostly inside (≈ 1 − ε), a shifted cluster mostly outside."""

    def test_training_cluster_is_inside_at_about_one_minus_epsilon(self, model):
        """4,000 fresh states of the training cluster: outside share ≈ ε = 0.05."""
        share = np.mean(model.distances(_cluster(np.random.default_rng(1), 4000)) > model.threshold)
        assert 0.015 < share < 0.10

    def test_shifted_cluster_is_outside(self, model):
        """The cluster moved by 2 in every coordinate: nearly all states outside."""
        share = np.mean(model.distances(_cluster(np.random.default_rng(2), 2000, shift=2.0)) > model.threshold)
        assert share > 0.95

    def test_shift_along_the_main_direction_is_outside(self, model):
        """A move of 8 standard deviations along the first axis (sd 3): most states outside.

        In 50 dimensions the in-cluster squared distance is ≈ χ²₅₀ (95 % point ≈ 67.5), so a single
        direction must move by well over √67.5 ≈ 8 of its sds before nearly every state is flagged.
        """
        shift = np.zeros(D)
        shift[0] = 24.0
        share = np.mean(model.distances(_cluster(np.random.default_rng(3), 2000, shift=shift)) > model.threshold)
        assert share > 0.9

    def test_single_state_api(self, model):
        """distance and is_outside agree with distances and the threshold; the mean itself is inside."""
        state = _cluster(np.random.default_rng(4), 1, shift=2.0)[0]
        assert model.distance(state) == pytest.approx(model.distances(state[None, :])[0])
        assert model.is_outside(state) == (model.distance(state) > model.threshold)
        assert model.distance(model.mean) == pytest.approx(0.0, abs=1e-9) and not model.is_outside(model.mean)

    def test_fit_records_its_split(self, model):
        """400 states: 200 fit the PCA and covariance, 200 set the threshold; k = 10, shrinkage in [0, 1]."""
        assert (model.n_fit, model.n_calibration, model.k, model.d) == (200, 200, 10, D)
        assert 0.0 <= model.shrinkage <= 1.0 and model.residual_scale > 0


class TestConformalQuantile:
    """The threshold is the ⌈(m + 1)(1 − ε)⌉-th smallest held-back distance."""

    def test_rank_by_hand(self):
        """m = 5: ε = 0.2 → rank ⌈4.8⌉ = 5 → 5.0; ε = 0.34 → rank ⌈3.96⌉ = 4 → 4.0."""
        assert conformal_threshold([5, 1, 4, 2, 3], 0.2) == 5.0
        assert conformal_threshold([5, 1, 4, 2, 3], 0.34) == 4.0

    def test_too_few_states_are_refused(self):
        """m = 3 at ε = 0.2 needs rank 4: refused, naming the 4 states needed."""
        with pytest.raises(DataError, match="3 held back, need ≥ 4"):
            conformal_threshold([1, 2, 3], 0.2)
        with pytest.raises(DataError, match="Too few calibration states"):
            fit_ood(_cluster(np.random.default_rng(0), 20), outside_rate=0.05)


class TestLedoitWolf:
    """Shrinkage towards a scaled identity."""

    def test_isotropic_target_needs_no_shrinkage_term(self):
        """Rows ±e_i (6 rows, k = 3) give S = 2I/6 = I/3, already the target: shrinkage 1, covariance I/3."""
        z = np.vstack([np.eye(3), -np.eye(3)])
        cov, s = ledoit_wolf(z)
        assert s == 1.0 and cov == pytest.approx(np.eye(3) / 3)

    def test_many_rows_shrink_little(self):
        """20,000 rows of a strongly anisotropic Gaussian: shrinkage near 0, covariance near the truth."""
        z = np.random.default_rng(0).normal(size=(20_000, 3)) * [1.0, 3.0, 9.0]
        cov, s = ledoit_wolf(z - z.mean(axis=0))
        assert s < 0.01 and np.diag(cov) == pytest.approx([1, 9, 81], rel=0.05)


class TestJson:
    """Stored as plain JSON, read back with its checks."""

    def test_round_trip(self, model):
        """json.dumps → loads → from_json gives the same distances (8 significant digits kept)."""
        text = json.dumps(model.to_json())
        assert len(text) < 300_000 and "pickle" not in text
        back = OODModel.from_json(json.loads(text))
        y = _cluster(np.random.default_rng(5), 50, shift=0.5)
        assert back.distances(y) == pytest.approx(model.distances(y), rel=1e-6)
        assert back.threshold == pytest.approx(model.threshold, rel=1e-7) and back.k == model.k

    @pytest.mark.parametrize("change, match", [
        (dict(kind="pickle"), "Not an OOD model"),
        (dict(version=2), "Not an OOD model"),
        (dict(k=10**6), "beyond the bound"),
        (dict(mean=[0.0, 1.0]), "inconsistent shapes"),
        (dict(threshold=float("nan")), "non-finite"),
        (dict(outside_rate=1.5), "outside_rate"),
        (dict(precision="abc"), "not numeric"),
    ])
    def test_malformed_model_is_refused(self, model, change, match):
        """Wrong kind or version, oversize, mismatched shapes, NaN, ranges and non-numbers: one-line DataError."""
        data = model.to_json() | change
        with pytest.raises(DataError, match=match):
            OODModel.from_json(data)

    def test_wide_states_are_capped_to_the_bound(self):
        """States of width 3,000 with 20 components asked: k is cut so the model stays within the bound."""
        x = np.random.default_rng(0).normal(size=(60, 3000))
        m = fit_ood(x, n_components=20, outside_rate=0.1)
        assert m.d * (m.k + 1) + m.k**2 <= MAX_OOD_FLOATS and m.k == 7

    def test_bad_states(self, model):
        """Wrong width or NaN states are refused in one line."""
        with pytest.raises(DataError, match="width 50"):
            model.distances(np.zeros(3))
        with pytest.raises(DataError, match="NaN or inf"):
            model.distances(np.full(D, np.nan))
        with pytest.raises(DataError, match="all the same"):
            fit_ood(np.ones((100, 4)))
