"""Unit tier for ic_core.probes: nested-CV probe AUROC, guards, baselines, saved probes (numpy only)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import ic_core.probes.cv as cv_mod
from ic_core import narrative
from ic_core.errors import DataError, PromptError
from ic_core.probes.baselines import score_auroc, signed_score_auroc
from ic_core.probes.cv import choose_C, probe_auroc, probe_by_layer, probe_last_layers, state_model, text_probe_auroc
from ic_core.probes.report import probe_column, probe_column_text, recoverability
from ic_core.probes.saved import SavedProbe, fit_saved_probe, fit_saved_probe_for_run
from ic_core.stats.auroc import (
    N_SHUFFLES_HELD_OUT,
    REASON_CONSTANT,
    REASON_FEW,
    REASON_MISSING,
    REASON_ONE_CLASS,
    REASON_SMALL,
    auroc,
    auroc_difference,
    bootstrap_ci,
    held_out_auroc,
    label_permutations,
    label_reason,
    make_folds,
)

FAST = dict(n_boot=200, n_shuffles=3)


def planted(n=150, d=40, strength=2.5, seed=0):
    """(X, y) where y follows X[:, 0] strongly (plus noise)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (strength * X[:, 0] + rng.normal(size=n) > 0.3).astype(int)
    return X, y


def null(n=150, d=40, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), (rng.random(n) < 0.35).astype(int)


class TestAuroc:
    def test_matches_sklearn_with_ties(self):
        rng = np.random.default_rng(3)
        s = rng.integers(0, 5, size=80).astype(float)
        y = rng.integers(0, 2, size=80)
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))

    def test_perfect_reversed_and_one_class(self):
        assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
        assert auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
        assert auroc([1, 2, 3], [1, 1, 1]) is None

    def test_bootstrap_ci_brackets_estimate_and_is_seeded(self):
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, 200)
        s = y + rng.normal(size=200)
        a = auroc(s, y)
        low, high, used = bootstrap_ci(s, y, n_boot=500, seed=4)
        assert low < a < high and used == 500 and 0.05 < high - low < 0.25
        assert bootstrap_ci(s, y, n_boot=500, seed=4) == (low, high, used)

    def test_bootstrap_by_group_is_wider_when_rows_repeat(self):
        rng = np.random.default_rng(0)
        y0 = rng.integers(0, 2, 60)
        s0 = y0 + rng.normal(size=60)
        s, y, g = np.tile(s0, 3), np.tile(y0, 3), np.tile(np.arange(60), 3)
        rows = bootstrap_ci(s, y, n_boot=400, seed=1)
        groups = bootstrap_ci(s, y, n_boot=400, seed=1, groups=g)
        assert (groups[1] - groups[0]) > 1.3 * (rows[1] - rows[0])

    def test_paired_difference_of_two_scores(self):
        rng = np.random.default_rng(0)
        y = (rng.random(200) < 0.4).astype(int)
        strong = score_auroc(y * 2.0 + rng.normal(size=200), y, name="strong", description="d", **FAST)
        weak = score_auroc(y * 0.3 + rng.normal(size=200), y, name="weak", description="d", **FAST)
        same = score_auroc(y * 2.0 + rng.normal(size=200), y, name="same", description="d", **FAST)
        d = auroc_difference(strong, weak, n_boot=300)
        assert d.diff == pytest.approx(strong.auroc_pooled - weak.auroc_pooled)
        assert d.clear and d.ci_low > 0 and d.ci_low < d.diff < d.ci_high and d.text().startswith("+")
        assert not auroc_difference(strong, same, n_boot=300).clear
        missing = probe_auroc(np.zeros((200, 2)), np.zeros(200, int))
        assert auroc_difference(strong, missing) is None

    def test_held_out_auroc_scores_only_the_given_items(self):
        """A fixed score judged on held-out rows: the training rows cannot move it."""
        rng = np.random.default_rng(5)
        y = (rng.random(120) < 0.5).astype(int)
        s = y + rng.normal(size=120)
        test = np.arange(60, 120)
        est = held_out_auroc("sig", s, y.astype(bool), test, n_boot=300, seed=2, description="d")
        assert est.kind == "held_out" and est.n == 60 and est.n_pos == int(y[test].sum())
        assert est.auroc_pooled == pytest.approx(roc_auc_score(y[test], s[test]))
        assert (est.ci_low, est.ci_high, est.n_boot_used) == bootstrap_ci(s[test], y[test], n_boot=300, seed=2)
        assert est.ci95 == (est.ci_low, est.ci_high) and est.ci_low < est.auroc_pooled < est.ci_high
        assert est.fold_aurocs == () and est.auroc_fold_mean is None and est.description == "d"
        np.testing.assert_array_equal(est.scores, s[test])
        s2 = s.copy()
        s2[:60] = rng.normal(size=60) * 100  # change every training row's score
        again = held_out_auroc("sig", s2, y, test, n_boot=300, seed=2)
        assert (again.auroc_pooled, again.ci95, again.shuffle_mean) == (est.auroc_pooled, est.ci95, est.shuffle_mean)

    def test_held_out_shuffle_uses_the_shared_permutations(self):
        """One seed convention: the held-out shuffle control draws the same permutations as the baselines."""
        rng = np.random.default_rng(6)
        y = (rng.random(80) < 0.4).astype(int)
        s = 2 * y + rng.normal(size=80)
        idx = np.arange(80)
        est = held_out_auroc("sig", s, y, idx, n_boot=200, seed=3)
        expected = [auroc(s, yp) for yp in label_permutations(y, N_SHUFFLES_HELD_OUT, 3)]
        assert est.n_shuffles == N_SHUFFLES_HELD_OUT == 20
        assert est.shuffle_mean == pytest.approx(np.mean(expected))
        assert est.shuffle_range == (pytest.approx(min(expected)), pytest.approx(max(expected)))
        direct = np.random.default_rng(3 + 10_007)
        np.testing.assert_array_equal(label_permutations(y, 2, 3)[1],
                                      [direct.permutation(y) for _ in range(2)][1])
        base = score_auroc(s, y, name="sig", description="d", n_boot=200, n_shuffles=20, seed=3)
        assert base.shuffle_mean == pytest.approx(est.shuffle_mean)  # the same permutations as score_auroc
        assert base.ci95 == est.ci95  # and the same bootstrap

    def test_held_out_auroc_reasons_and_nan_rows(self):
        y = np.array([1, 0] * 20)
        s = np.linspace(0, 1, 40)
        one = held_out_auroc("sig", s, y, np.arange(0, 40, 2))
        assert one.reason == REASON_ONE_CLASS and one.auroc_pooled is None and one.ci95 is None
        assert one.shuffle_range is None and one.n == 20 and one.kind == "held_out"
        s_nan = s.copy()
        s_nan[[0, 1, 2]] = np.nan
        est = held_out_auroc("sig", s_nan, y, np.arange(40), n_boot=100)
        assert est.n == 37 and "3 held-out rows" in est.note
        assert est.auroc_pooled == pytest.approx(roc_auc_score(y[3:], s[3:]))
        assert held_out_auroc("sig", np.full(40, np.nan), y, np.arange(40)).reason == REASON_MISSING

    def test_label_reason(self):
        assert label_reason([1] * 30) == REASON_ONE_CLASS
        assert label_reason([0, 1] * 4) == REASON_FEW
        assert label_reason([1] * 9 + [0] * 40) == REASON_FEW  # 9 right answers < 10: too few to judge
        assert label_reason([0] * 9 + [1] * 40) == REASON_FEW  # the same for wrong answers
        assert label_reason([1] * 10 + [0] * 40) is None
        assert label_reason([1] * 10 + [0] * 40, n_folds=6) == REASON_SMALL  # 10 < 2 × 6 folds


class TestProbe:
    def test_planted_signal_is_recovered(self):
        X, y = planted()
        r = probe_auroc(X, y, **FAST)
        assert r.auroc_pooled > 0.85 and r.ci_low > 0.5 and r.auroc_fold_mean > 0.8
        assert 0.3 < r.shuffle_mean < 0.7 and r.shuffle_max < r.auroc_pooled
        assert r.n == 150 and r.n_pos == int(y.sum()) and len(r.chosen_C) == 5 and r.reason is None
        assert r.scores.shape == (150,) and set(np.unique(r.labels)) == {0, 1}

    def test_no_signal_ci_covers_chance(self):
        results = [probe_auroc(*null(seed=100 + k), n_boot=300, n_shuffles=2) for k in range(5)]
        assert sum(r.ci_low < 0.5 < r.ci_high for r in results) >= 4
        assert abs(np.mean([r.auroc_pooled for r in results]) - 0.5) < 0.06
        shuffles = [r.shuffle_mean for r in results]
        assert abs(np.mean(shuffles) - 0.5) < 0.06
        assert all(r.shuffle_min <= r.shuffle_mean <= r.shuffle_max and r.n_shuffles == 2 for r in results)

    @pytest.mark.parametrize(("y", "reason"), [
        (np.ones(60, int), REASON_ONE_CLASS),
        (np.array([0, 1] * 4), REASON_FEW),
        (np.array([1] * 6 + [0] * 50), REASON_FEW),
    ])
    def test_guards_return_reason_not_number(self, y, reason):
        X = np.random.default_rng(0).normal(size=(y.size, 5))
        r = probe_auroc(X, y, **FAST)
        assert r.auroc_pooled is None and r.auroc_fold_mean is None and r.ci_low is None
        assert r.reason == reason and not r.ok and r.ci_text() == reason
        assert r.to_json()["auroc_pooled"] is None and r.to_json()["reason"] == reason

    def test_optional_pca_is_a_pipeline_step_fitted_in_fold(self):
        assert list(state_model(1.0, 5).named_steps) == ["scale", "pca", "logreg"]
        assert list(state_model(1.0).named_steps) == ["scale", "logreg"]
        X, y = planted(n=100, d=30)
        r = probe_auroc(X, y, pca_components=8, n_boot=100, n_shuffles=0)
        assert r.auroc_pooled > 0.8

    def test_nonfinite_features_raise(self):
        X, y = planted(n=40)
        X[3, 2] = np.inf
        with pytest.raises(DataError, match="inf/NaN"):
            probe_auroc(X, y, **FAST)

    def test_constant_layer_is_marked_not_probed(self):
        X, y = planted(n=80, d=12)
        hidden = np.stack([np.ones_like(X), X, X * 0.5], axis=1).astype(np.float16)  # layer 0 constant
        results = probe_by_layer(hidden, y, n_boot=100, n_shuffles=1)
        assert len(results) == 3
        assert results[0].reason == REASON_CONSTANT and results[0].auroc_pooled is None
        assert results[1].auroc_pooled > 0.8 and results[2].auroc_pooled > 0.8

    def test_last_layers_concatenates_the_last_five(self):
        rng = np.random.default_rng(0)
        n, d = 120, 8
        hidden = rng.normal(size=(n, 9, d))
        y = (rng.random(n) < 0.4).astype(int)
        hidden[:, 2, 0] += 3 * y  # signal only in an early layer: outside layers 4..8
        early = probe_last_layers(hidden, y, **FAST)
        assert "layers 4–8" in early.description and "40 features" in early.description
        assert early.auroc_pooled < 0.7
        hidden[:, 7, 0] += 3 * y
        assert probe_last_layers(hidden, y, **FAST).auroc_pooled > 0.9


class TestNoLeakage:
    def test_C_is_chosen_from_training_rows_only(self, monkeypatch):
        X, y = planted(n=100, d=20, strength=0.8)
        folds = make_folds(y, seed=0)
        seen = []
        real = cv_mod.choose_C

        def spy(make_model, X_train, y_train, **kw):
            seen.append((X_train.copy(), y_train.copy()))
            return real(make_model, X_train, y_train, **kw)

        monkeypatch.setattr(cv_mod, "choose_C", spy)
        r = probe_auroc(X, y, n_boot=50, n_shuffles=0)
        assert len(seen) == 5
        for (tr, te), (X_seen, y_seen), C in zip(folds, seen, r.chosen_C):
            assert np.array_equal(X_seen, X[tr]) and np.array_equal(y_seen, y[tr])
            assert not any((X_seen == row).all(axis=1).any() for row in X[te])
            # reproducible from the training fold alone
            assert choose_C(state_model, X[tr], y[tr], seed=0) == C

    def test_changing_test_rows_does_not_change_C(self):
        X, y = planted(n=100, d=20, strength=0.8)
        r1 = probe_auroc(X, y, n_boot=50, n_shuffles=0)
        _, te0 = make_folds(y, seed=0)[0]
        X2 = X.copy()
        X2[te0] = np.random.default_rng(9).normal(size=(te0.size, X.shape[1])) * 10
        r2 = probe_auroc(X2, y, n_boot=50, n_shuffles=0)
        assert r1.chosen_C[0] == r2.chosen_C[0]

    def test_fold_scores_are_on_their_training_scale(self):
        X, y = planted(n=100, d=20, strength=1.0)
        r = probe_auroc(X, y, n_boot=50, n_shuffles=0)
        tr, te = make_folds(y, seed=0)[0]
        model = state_model(r.chosen_C[0]).fit(X[tr], y[tr])
        train_dv = model.decision_function(X[tr])
        expected = (model.decision_function(X[te]) - train_dv.mean()) / train_dv.std()
        np.testing.assert_allclose(r.scores[te], expected, rtol=1e-4, atol=1e-6)
        assert r.fold_aurocs[0] == pytest.approx(auroc(expected, y[te]))


class TestBaselines:
    def test_score_auroc_and_nan_rows(self):
        rng = np.random.default_rng(0)
        y = (rng.random(120) < 0.4).astype(int)
        h = 3.0 - 1.5 * y + rng.normal(size=120)  # lower entropy when correct
        r = score_auroc(-h, y, name="−H_int", description="d", **FAST)
        assert r.auroc_pooled == pytest.approx(roc_auc_score(y, -h)) and r.auroc_pooled > 0.75
        assert r.kind == "score" and r.chosen_C == () and r.ci_low < r.auroc_pooled < r.ci_high
        h[:5] = np.nan
        r2 = score_auroc(-h, y, name="x", description="d", **FAST)
        assert r2.n == 115 and "5 rows" in r2.note
        assert score_auroc(np.full(120, np.nan), y, name="x", description="d").reason == REASON_MISSING

    def test_prompt_length_direction_is_chosen_in_fold(self):
        rng = np.random.default_rng(2)
        y = (rng.random(150) < 0.4).astype(int)
        length = 40 - 8 * y + rng.normal(size=150) * 4  # shorter prompts are answered correctly
        r = signed_score_auroc(length, y, name="prompt length", description="d", **FAST)
        assert r.auroc_pooled > 0.8 and "smaller in 5" in r.note
        # per fold, the sign only depends on the training fold
        assert all(a > 0.5 for a in r.fold_aurocs)

    def test_question_text_probe_finds_a_surface_shortcut(self):
        rng = np.random.default_rng(0)
        y = (rng.random(100) < 0.4).astype(int)
        words = ["paris", "berlin", "rome", "madrid", "oslo", "lima"]
        qs = [f"what is the capital of {'france' if c else 'atlantis'} {words[i % 6]}" for i, c in enumerate(y)]
        r = text_probe_auroc(qs, y, **FAST)
        assert r.auroc_pooled > 0.95 and "TF-IDF" in r.description
        qs_null = [f"what is the capital of {words[rng.integers(6)]}" for _ in y]
        assert text_probe_auroc(qs_null, y, **FAST).auroc_pooled < 0.75


# ---------------------------------------------------------------- study runs (constructed directly)


def make_run(tmp_path: Path, n_items=80, regimes=("direct",), L=4, d=12, seed=0, signal="H_slot",
             ungraded=3, one_class_regime=None):
    from ic_core.runs.store import StudyRun

    rng = np.random.default_rng(seed)
    rows, hidden, lens = [], [], []
    for i in range(n_items):
        for regime in regimes:
            c = bool(rng.random() < 0.4)
            if regime == one_class_regime:
                c = False
            h = np.concatenate([np.ones((1, d)), rng.normal(size=(L, d))])
            h[L, 0] += 2.5 * c
            hidden.append(h)
            lens.append(rng.normal(3, 1, size=L) - c)
            correct = None if (regime == regimes[0] and i < ungraded) else c
            rows.append(dict(
                row=len(rows), item_id=f"q{i}", regime=regime, question=f"what is the capital of {i}?",
                kind="short_answer", expected="x", output_text="x", extracted_answer="x", correct=correct,
                grade_rule="exact", readout_entropy_bits=float(rng.normal(3, 1) - 0.3 * c), readout_entropy_top100_bits=float(rng.normal(2, 1)),
                top1_prob=float(rng.random()), mean_token_entropy_bits=float(rng.normal(2, 1)),
                n_prompt_tokens=int(20 + rng.integers(0, 10)), readout_token="is", signal=signal,
                answer_prefix="The capital is" if signal == "H_slot" else None, tags=[],
            ))
    table = pd.DataFrame(rows)
    table["correct"] = table["correct"].astype(object)
    manifest = {"model": {"source": "default", "name": "Tiny", "dtype": "float32", "device": "cpu",
                          "trust_remote_code": False}, "n_layers": L, "d_model": d, "regimes": list(regimes)}
    return StudyRun(tmp_path, manifest, table, np.asarray(hidden, np.float16), np.asarray(lens, np.float32))


class TestRecoverability:
    def test_report_on_a_run(self, tmp_path):
        run = make_run(tmp_path)
        rep = recoverability(run, n_boot=100, n_shuffles=2, n_shuffles_per_layer=1)
        assert rep.selection == "direct" and rep.n_rows == 80 and rep.n_ungraded == 3 and rep.n == 77
        assert rep.constant_layers == (0,) and rep.by_layer[0].reason == REASON_CONSTANT
        assert len(rep.by_layer) == 5 and rep.last_layer_indices == (1, 2, 3, 4)
        assert rep.last_layers.auroc_pooled > 0.75
        names = [b.name for b in rep.baselines]
        assert names[0] == "−H_slot" and "−H_int" not in names
        assert {"top-1 probability", "lens-entropy profile probe", "question text only (char n-grams)",
                "prompt length"} <= set(names)
        assert all(b.n == 77 for b in rep.baselines)
        out = json.loads(json.dumps(rep.to_json(), allow_nan=False))
        assert out["by_layer"][0]["auroc_pooled"] is None and out["by_layer"][0]["reason"] == REASON_CONSTANT
        text = " ".join(narrative.reading(rep))
        assert "3 of 80 rows could not be graded" in text and "−H_slot" in text and "not probed" in text
        d = rep.difference("−H_slot")
        assert d.diff == pytest.approx(rep.last_layers.auroc_pooled - rep.baselines[0].auroc_pooled)
        assert d.clear and "The probe beats −H_slot" in text  # the planted signal is in the state only
        assert out["probe_minus_baseline"][0]["b"] == "−H_slot"

    def test_entropy_baseline_is_labelled_by_signal(self, tmp_path):
        run = make_run(tmp_path, signal="H_int", n_items=40)
        rep = recoverability(run, n_boot=50, n_shuffles=1, n_shuffles_per_layer=0)
        assert rep.baselines[0].name == "−H_int" and rep.signal_name == "H_int"

    def test_regime_choice_and_pooling(self, tmp_path):
        run = make_run(tmp_path, n_items=50, regimes=("direct", "cot"), one_class_regime="cot")
        with pytest.raises(DataError, match="choose one"):
            recoverability(run)
        with pytest.raises(DataError, match="not in this run"):
            recoverability(run, regime="babble")
        cot = recoverability(run, regime="cot", n_boot=50, n_shuffles=1, n_shuffles_per_layer=0)
        assert cot.last_layers.reason == REASON_ONE_CLASS
        assert all(b.auroc_pooled is None for b in cot.baselines)
        assert "only one class" in " ".join(narrative.reading(cot))
        pooled = recoverability(run, pooled=True, n_boot=50, n_shuffles=1, n_shuffles_per_layer=0)
        assert pooled.selection == "pooled" and pooled.n == 97 and pooled.settings["grouped_by_item"]

    def test_probe_column_per_regime(self, tmp_path):
        run = make_run(tmp_path, n_items=50, regimes=("direct", "cot"), one_class_regime="cot")
        col = probe_column(run, n_boot=50, n_shuffles=1)
        assert set(col) == {"direct", "cot"}
        assert col["direct"].ok and col["cot"].reason == REASON_ONE_CLASS
        text = probe_column_text(col)
        (values,) = text.values()
        assert values["cot"] == REASON_ONE_CLASS and values["direct"].startswith("0.")


class TestSavedProbe:
    def _fit(self, tmp_path):
        run = make_run(tmp_path, n_items=60)
        return run, fit_saved_probe_for_run(run)

    def test_round_trip_gives_identical_probabilities(self, tmp_path):
        run, probe = self._fit(tmp_path)
        path = probe.save(tmp_path / "probes" / "direct_last5")
        assert path.suffix == ".json" and path.with_suffix(".npz").is_file()
        loaded = SavedProbe.load(path, tmp_path)
        for i in range(5):
            state = run.hidden[i].astype(np.float32)
            assert loaded.predict_proba_correct(state) == probe.predict_proba_correct(state)
        np.testing.assert_array_equal(loaded.predict_proba_correct_batch(run.hidden),
                                      probe.predict_proba_correct_batch(run.hidden))
        assert loaded.probe_id == probe.probe_id and loaded.layers == (1, 2, 3, 4)
        assert loaded.model_spec["name"] == "Tiny" and loaded.n_train == 57

    def test_matches_the_sklearn_pipeline(self, tmp_path):
        run = make_run(tmp_path, n_items=60)
        graded = run.table[run.table["correct"].map(lambda v: v is not None)]
        rows = graded["row"].to_numpy()
        y = graded["correct"].astype(int).to_numpy()
        X = run.hidden[rows][:, 1:, :].reshape(len(rows), -1).astype(np.float64)
        probe = fit_saved_probe(run.hidden[rows], y, model_spec={})
        ref = state_model(probe.C).fit(X, y).predict_proba(X)[:, 1]
        np.testing.assert_allclose(probe.predict_proba_correct_batch(run.hidden[rows]), ref, rtol=1e-6)

    def test_accepts_an_intention_state_like_object(self, tmp_path):
        run, probe = self._fit(tmp_path)

        class State:
            hidden = run.hidden[0].astype(np.float32)

        assert probe.predict_proba_correct(State()) == probe.predict_proba_correct(run.hidden[0])
        assert 0.0 < probe.predict_proba_correct(State()) < 1.0

    def test_no_pickle_in_saved_files(self, tmp_path):
        _, probe = self._fit(tmp_path)
        path = probe.save(tmp_path / "p")
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            assert sorted(z.files) == ["coef", "scaler_mean", "scaler_scale"]
            assert all(z[k].dtype == np.float64 for k in z.files)
        with zipfile.ZipFile(path.with_suffix(".npz")) as zf:
            for name in zf.namelist():
                assert b"\x80" not in zf.read(name)[:2]  # no pickle protocol header
        meta = json.loads(path.read_text())
        assert meta["kind"] == "ic_core.SavedProbe" and meta["probe_id"] == probe.probe_id

    def test_load_validates(self, tmp_path):
        _, probe = self._fit(tmp_path)
        path = probe.save(tmp_path / "p")
        np.savez(path.with_suffix(".npz"), scaler_mean=probe.scaler_mean[:-1], scaler_scale=probe.scaler_scale,
                 coef=probe.coef)
        with pytest.raises(DataError, match="shape"):
            SavedProbe.load(path, tmp_path)
        np.savez(path.with_suffix(".npz"), scaler_mean=probe.scaler_mean, scaler_scale=probe.scaler_scale,
                 coef=probe.coef * 2)
        with pytest.raises(DataError, match="probe_id"):
            SavedProbe.load(path, tmp_path)
        with pytest.raises(DataError, match="not found"):
            SavedProbe.load(tmp_path / "missing", tmp_path)

    def test_load_inside_the_root_by_any_spelling(self, tmp_path):
        """Inside the root: the .json, the .npz, the stem, a path through '..' that stays inside, a symlink inside."""
        _, probe = self._fit(tmp_path)
        root = tmp_path / "runs"
        path = probe.save(root / "r" / "probes" / "p")
        (root / "r" / "other").mkdir()
        (root / "linked.json").symlink_to(path)
        (root / "linked.npz").symlink_to(path.with_suffix(".npz"))
        for spelling in (path, path.with_suffix(".npz"), path.with_suffix(""), root / "r" / "other" / ".." / "probes" / "p",
                         root / "linked"):
            assert SavedProbe.load(spelling, root).probe_id == probe.probe_id

    def test_load_refuses_a_probe_outside_the_root(self, tmp_path):
        _, probe = self._fit(tmp_path)
        root = tmp_path / "runs"
        root.mkdir()
        path = probe.save(tmp_path / "elsewhere" / "p")
        with pytest.raises(DataError, match="outside the runs folder") as err:
            SavedProbe.load(path, root)
        assert str(root.resolve()) in str(err.value) and str(err.value).count(". ") == 0  # one sentence

    def test_load_refuses_a_dotdot_escape(self, tmp_path):
        _, probe = self._fit(tmp_path)
        root = tmp_path / "runs"
        root.mkdir()
        probe.save(tmp_path / "elsewhere" / "p")
        with pytest.raises(DataError, match="outside the runs folder"):
            SavedProbe.load(root / ".." / "elsewhere" / "p", root)
        with pytest.raises(DataError, match="outside the runs folder"):
            SavedProbe.load(root / ".." / "elsewhere" / "p.json", root)

    @pytest.mark.parametrize("linked", [".json", ".npz"])
    def test_load_refuses_a_symlink_inside_the_root_pointing_outside(self, tmp_path, linked):
        """Either file of the pair may be the symlink: both are resolved before reading."""
        _, probe = self._fit(tmp_path)
        root = tmp_path / "runs"
        inside = probe.save(root / "r" / "probes" / "p")
        outside = probe.save(tmp_path / "elsewhere" / "p")
        target = inside.with_suffix(linked)
        target.unlink()
        target.symlink_to(outside.with_suffix(linked))
        with pytest.raises(DataError, match="outside the runs folder"):
            SavedProbe.load(inside, root)

    def test_load_refuses_a_root_that_is_only_a_prefix(self, tmp_path):
        """``runs-evil`` is not inside ``runs`` although its name starts the same way."""
        _, probe = self._fit(tmp_path)
        root = tmp_path / "runs"
        root.mkdir()
        path = probe.save(tmp_path / "runs-evil" / "p")
        with pytest.raises(DataError, match="outside the runs folder"):
            SavedProbe.load(path, root)

    def test_saving_inside_a_run_folder_then_loading_from_the_runs_root(self, tmp_path):
        from ic_core.probes.saved import default_probe_path

        run, probe = self._fit(tmp_path / "runs" / "r")
        path = probe.save(default_probe_path(run, "direct"))
        assert path.parent == tmp_path / "runs" / "r" / "probes"
        assert SavedProbe.load(path, tmp_path / "runs").probe_id == probe.probe_id

    def test_wrong_state_shape_says_so(self, tmp_path):
        _, probe = self._fit(tmp_path)
        with pytest.raises(PromptError, match="L=4, d=12"):
            probe.predict_proba_correct(np.zeros((31, 576)))

    def test_one_class_cannot_be_saved(self, tmp_path):
        run = make_run(tmp_path, n_items=40, regimes=("direct", "cot"), one_class_regime="cot")
        with pytest.raises(DataError, match="only one class"):
            fit_saved_probe_for_run(run, regime="cot")
