"""Probe P(correct) from arrays and a split (``ic_core.probes.scores``): today's numbers, no leakage (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ic_core.errors import DataError
from ic_core.probes.cv import last_layer_indices, nested_cv, state_model, training_scale
from ic_core.probes.saved import fit_saved_probe
from ic_core.probes.scores import (
    INNER_FOLDS,
    OOF_FOLDS,
    calibrated_probe_scores,
    external_probe_scores,
    probe_fitted_on_run,
)
from ic_core.stats.gating import PlattCalibration, fit_platt_on_scores, split_items

SPEC = {"source": "default", "name": "Tiny", "dtype": "float32", "device": "cpu", "trust_remote_code": False}


def states(n=70, L=4, d=10, seed=3):
    """(hidden (n, L + 1, d) float16, correct (n,) bool): the last layer's first unit carries correctness."""
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.45
    hidden = np.concatenate([np.ones((n, 1, d)), rng.normal(size=(n, L, d))], axis=1)
    hidden[:, L, 0] += 2.0 * correct
    return hidden.astype(np.float16), correct


def write_items(folder: Path, ids, questions):
    """A run folder's items.jsonl holding only these items (all that the overlap check reads)."""
    from ic_core.runs.schema import RunRow
    from ic_core.runs.store import append_rows

    folder.mkdir(parents=True, exist_ok=True)
    base = dict(regime="direct", kind="short_answer", expected="x", aliases=[], choices=[], tags=[], output_text="x",
                output_source="dataset", extracted_answer="x", correct=True, grade_rule="exact",
                readout_entropy_bits=1.0, readout_entropy_top100_bits=1.0, top1_prob=0.5, top_tokens=[],
                mean_token_entropy_bits=None, generated_tokens=None, token_entropies_bits=None,
                n_generated_tokens=None, stop_reason=None, max_new_tokens=None, generate_s=None, n_prompt_tokens=5,
                readout_index=4, readout_token="is", readout_is_formatting=False, skipped_tokens=[], signal="H_int",
                answer_prefix=None, item_prefix_used=False, user_text="u")
    append_rows(folder, [RunRow.from_json(dict(base, row=i, item_id=str(a), question=str(q)))
                         for i, (a, q) in enumerate(zip(ids, questions))])


def fixture_run(tmp_path: Path, n=70, seed=3):
    """A StudyRun built directly: one regime, answer prefixes (H_slot), every row graded."""
    from ic_core.runs.store import StudyRun

    hidden, correct = states(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    table = pd.DataFrame([dict(
        row=i, item_id=f"q{i}", regime="direct", question=f"q {i}?", kind="short_answer", expected="x",
        output_text="x", extracted_answer="x", correct=bool(c), grade_rule="exact",
        readout_entropy_bits=float(rng.normal(3, 1)), readout_entropy_top100_bits=float(rng.normal(2, 1)), top1_prob=0.5,
        mean_token_entropy_bits=1.0, n_prompt_tokens=20, readout_token="is", signal="H_slot",
        answer_prefix="The answer is", tags=[]) for i, c in enumerate(correct)])
    table["correct"] = table["correct"].astype(object)
    manifest = {"model": SPEC, "n_layers": 4, "d_model": 10, "regimes": ["direct"]}
    lens = rng.normal(3, 1, size=(n, 4)).astype(np.float32)
    return StudyRun(tmp_path, manifest, table, hidden, lens)


def reference_p_correct(hidden, correct, tr, te, seed):
    """Today's recipe written out step by step (the pre-refactor governance code), for comparison."""
    y = correct.astype(int)
    layers = last_layer_indices(hidden.shape[1])
    x_tr = hidden[tr][:, list(layers), :].reshape(tr.size, -1).astype(np.float64)
    oof = nested_cv(state_model, x_tr, y[tr], n_folds=5, n_inner=3, seed=seed)
    coef, intercept = fit_platt_on_scores(oof.scores, correct[tr])
    final = fit_saved_probe(hidden[tr], y[tr], layers=layers, model_spec=SPEC, n_folds=3, seed=seed)
    dv = final.decision_values(hidden[tr])
    mean, sd = float(dv.mean()), float(dv.std()) or 1.0
    calibration = PlattCalibration(coef / sd, intercept - coef * mean / sd)
    p = np.empty(correct.size)
    p[tr] = 1.0 / (1.0 + np.exp(-(coef * oof.scores + intercept)))
    p[te] = calibration.apply(final.predict_proba_correct_batch(hidden[te]))
    return p, calibration


class TestTrainingScale:
    def test_mean_and_sd_of_the_training_values(self):
        assert training_scale([1.0, 2.0, 3.0, 6.0]) == pytest.approx((3.0, np.std([1.0, 2.0, 3.0, 6.0])))

    def test_constant_training_output_divides_by_one(self):
        assert training_scale(np.full(5, 2.5)) == (2.5, 1.0)


class TestCalibratedProbeScores:
    def test_same_numbers_as_the_step_by_step_recipe(self):
        """The arrays function reproduces today's p_correct exactly (bit for bit)."""
        hidden, correct = states()
        tr, te = split_items(correct, 0.4, 2)
        ps = calibrated_probe_scores(hidden, correct, tr, te, model_spec=SPEC, seed=2)
        p, calibration = reference_p_correct(hidden, correct, tr, te, 2)
        np.testing.assert_array_equal(ps.p_correct, p)
        assert ps.calibration == calibration and ps.probe.n_train == tr.size
        assert (OOF_FOLDS, INNER_FOLDS) == (5, 3) and ps.source.startswith("last-5-layers probe fitted on the training")

    def test_wrapper_on_a_run_gives_the_arrays_result(self, tmp_path):
        """``governance.fit.probe_scores(run, signals)`` is the arrays function on the run's rows."""
        from ic_core.governance.fit import probe_scores, run_signals

        run = fixture_run(tmp_path)
        sig = run_signals(run, holdout=0.4, seed=2)
        wrapped = probe_scores(run, sig)
        direct = calibrated_probe_scores(np.asarray(run.hidden)[sig.hidden_rows], sig.correct, sig.train_idx,
                                         sig.test_idx, model_spec=sig.model, seed=sig.seed)
        np.testing.assert_array_equal(wrapped.p_correct, direct.p_correct)
        assert wrapped.probe.probe_id == direct.probe.probe_id and wrapped.calibration == direct.calibration
        assert wrapped.probe.run_path == str(tmp_path) and "holdout 0.4, seed 2" in wrapped.probe.selection
        p, _ = reference_p_correct(np.asarray(run.hidden)[sig.hidden_rows], sig.correct, sig.train_idx,
                                   sig.test_idx, sig.seed)
        np.testing.assert_array_equal(wrapped.p_correct, p)

    def test_flipping_a_held_out_label_changes_no_score(self):
        """No leakage: a held-out row's label never reaches the probe that scores it."""
        hidden, correct = states()
        tr, te = split_items(correct, 0.4, 0)
        before = calibrated_probe_scores(hidden, correct, tr, te, model_spec=SPEC)
        flipped = correct.copy()
        flipped[te[:3]] = ~flipped[te[:3]]
        after = calibrated_probe_scores(hidden, flipped, tr, te, model_spec=SPEC)
        np.testing.assert_array_equal(after.p_correct, before.p_correct)
        # The check can fail: flipping training labels does move the scores.
        moved = correct.copy()
        moved[tr[:3]] = ~moved[tr[:3]]
        assert not np.array_equal(calibrated_probe_scores(hidden, moved, tr, te, model_spec=SPEC).p_correct,
                                  before.p_correct)

    def test_training_rows_are_one_platt_map_of_their_out_of_fold_scores(self):
        """Training rows are scored by the nested CV on the training rows (out of fold), then one Platt map."""
        hidden, correct = states()
        tr, te = split_items(correct, 0.4, 0)
        ps = calibrated_probe_scores(hidden, correct, tr, te, model_spec=SPEC)
        x_tr = hidden[tr][:, list(last_layer_indices(hidden.shape[1])), :].reshape(tr.size, -1).astype(np.float64)
        oof = nested_cv(state_model, x_tr, correct[tr].astype(int), n_folds=5, n_inner=3, seed=0)
        logit = np.log(ps.p_correct[tr] / (1 - ps.p_correct[tr]))
        slope, icpt = np.polyfit(oof.scores, logit, 1)
        np.testing.assert_allclose(logit, slope * oof.scores + icpt, atol=1e-8)  # one Platt map of the OOF scores

    def test_overlapping_indices_are_refused_and_unlisted_rows_are_nan(self):
        hidden, correct = states()
        tr, te = split_items(correct, 0.4, 0)
        with pytest.raises(DataError, match="share rows"):
            calibrated_probe_scores(hidden, correct, tr, np.append(te, tr[0]), model_spec=SPEC)
        with pytest.raises(DataError, match="outside 0..69"):
            calibrated_probe_scores(hidden, correct, tr, np.append(te, 70), model_spec=SPEC)
        ps = calibrated_probe_scores(hidden, correct, tr, te[1:], model_spec=SPEC)
        assert np.isnan(ps.p_correct[te[0]]) and np.isfinite(np.delete(ps.p_correct, te[0])).all()

    def test_too_few_training_rows_of_a_class(self):
        hidden, correct = states(n=30)
        with pytest.raises(DataError, match="Cannot fit a probe on the training items"):
            calibrated_probe_scores(hidden, correct, np.arange(15), np.arange(15, 30), model_spec=SPEC)

    def test_external_probe_is_calibrated_on_training_rows_and_refused_on_its_own_items(self, tmp_path):
        hidden, correct = states(seed=3)
        other_hidden, other_correct = states(seed=9)
        write_items(tmp_path / "r", [f"q{i}" for i in range(70)], [f"what is {i} plus 1?" for i in range(70)])
        probe = fit_saved_probe(other_hidden, other_correct.astype(int), model_spec=SPEC, run_path=str(tmp_path / "o"),
                                item_ids=[f"q{i}" for i in range(70)], questions=[f"name {i}" for i in range(70)])
        tr, te = split_items(correct, 0.4, 0)
        ps = calibrated_probe_scores(hidden, correct, tr, te, model_spec=SPEC, probe=probe, run_path=str(tmp_path / "r"))
        raw = probe.predict_proba_correct_batch(hidden)
        np.testing.assert_allclose(ps.p_correct, ps.calibration.apply(raw))
        assert ps.probe is probe and "another run" in ps.source and ps.calibration.coef > 0
        # Same ids, other questions: not the same items (prompt sets reuse ids such as q0).
        assert not probe_fitted_on_run(probe, tmp_path / "r")
        # A probe trained on this run's questions — its folder path is never looked at — is refused.
        mine = fit_saved_probe(hidden, correct.astype(int), model_spec=SPEC, run_path="/somewhere/else",
                               item_ids=[f"x{i}" for i in range(70)], questions=[f"What is {i}  plus 1?" for i in range(70)])
        assert probe_fitted_on_run(mine, tmp_path / "r")
        with pytest.raises(DataError, match="held-out ones included"):
            external_probe_scores(hidden, correct, tr, mine, run_path=str(tmp_path / "r"))

    def test_a_probe_without_recorded_items_is_refused_for_held_out_scoring(self, tmp_path):
        hidden, correct = states(seed=3)
        write_items(tmp_path / "r", [f"q{i}" for i in range(70)], [f"q {i}?" for i in range(70)])
        old = fit_saved_probe(*states(seed=9)[:1], states(seed=9)[1].astype(int), model_spec=SPEC,
                              run_path=str(tmp_path / "elsewhere"))
        assert old.train_item_ids == () and probe_fitted_on_run(old, tmp_path / "r")
        with pytest.raises(DataError, match="does not record which items"):
            external_probe_scores(hidden, correct, np.arange(40), old, run_path=str(tmp_path / "r"))

    def test_a_probe_fitted_on_training_rows_records_those_items_only(self, tmp_path):
        hidden, correct = states(seed=3)
        ids, qs = [f"q{i}" for i in range(70)], [f"question {i}?" for i in range(70)]
        tr, te = split_items(correct, 0.4, 0)
        ps = calibrated_probe_scores(hidden, correct, tr, te, model_spec=SPEC, item_ids=ids, questions=qs)
        assert set(ps.probe.train_item_ids) == {ids[i] for i in tr}
        write_items(tmp_path / "held", [ids[i] for i in te], [qs[i] for i in te])
        write_items(tmp_path / "train", [ids[i] for i in tr[:3]], [qs[i] for i in tr[:3]])
        assert not probe_fitted_on_run(ps.probe, tmp_path / "held")  # it never saw the held-out items
        assert probe_fitted_on_run(ps.probe, tmp_path / "train")
        with pytest.raises(DataError, match="item ids/questions"):
            calibrated_probe_scores(hidden, correct, tr, te, model_spec=SPEC, item_ids=ids[:5], questions=qs)

    def test_a_negative_platt_slope_is_refused(self, tmp_path):
        hidden, correct = states(seed=3)
        write_items(tmp_path / "r", [f"q{i}" for i in range(70)], [f"q {i}?" for i in range(70)])
        flipped = ~correct  # the probe learns the opposite direction of this run's labels
        probe = fit_saved_probe(hidden, flipped.astype(int), model_spec=SPEC, run_path="x",
                                item_ids=["o"], questions=["another question"])
        tr, te = split_items(correct, 0.4, 0)
        with pytest.raises(DataError, match=r"wrong way round \(Platt slope -"):
            calibrated_probe_scores(hidden, correct, tr, te, model_spec=SPEC, probe=probe, run_path=str(tmp_path / "r"))
        ok = fit_saved_probe(hidden, correct.astype(int), model_spec=SPEC, item_ids=["o"], questions=["another"])
        assert calibrated_probe_scores(hidden, correct, tr, te, model_spec=SPEC, probe=ok,
                                       run_path=str(tmp_path / "r")).calibration.coef > 0
