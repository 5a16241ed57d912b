"""Shortcut checks that see (char n-grams, item metadata, within-strata AUROC), too-few refusal, diff-of-means probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ic_core import narrative
from ic_core.probes.baselines import metadata_baselines, one_hot, shortcut_strata
from ic_core.probes.cv import MAX_ITER, fitted_auroc, probe_auroc, text_probe_auroc
from ic_core.probes.report import recoverability
from ic_core.probes.signals import DiffMeansDirection, diff_means_auroc, scalar_features
from ic_core.stats.auroc import REASON_FEW, auroc, held_out_auroc
from ic_core.stats.strata import REASON_ONE_STRATUM, strata_auroc, within_strata_auroc

FAST = dict(n_boot=200, n_shuffles=3)


def operator_questions(n=120, seed=0):
    """Arithmetic on single digits whose correctness is decided by the operator alone ('+' right, '×' wrong)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    qs = [f"What is {rng.integers(0, 10)} {'+' if c else '×'} {rng.integers(0, 10)}?" for c in y]
    return qs, y


def word_tfidf(C):
    """The old question-text shortcut: word 1–2-grams with the default token pattern."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline([("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                     ("logreg", LogisticRegression(C=C, max_iter=MAX_ITER))])


class TestTextShortcut:
    def test_char_ngrams_see_the_operator_the_word_tokenizer_drops(self):
        qs, y = operator_questions()
        new = text_probe_auroc(qs, y, **FAST)
        old = fitted_auroc(word_tfidf, np.asarray(qs, dtype=object), y, **FAST)
        assert new.auroc_pooled > 0.95 and "character 1–4-grams" in new.description
        # vocabulary {what, is, what is}: every row of a fold gets the same score
        assert all(a == pytest.approx(0.5) for a in old.fold_aurocs) and abs(old.auroc_pooled - 0.5) < 0.1

    def test_char_ngrams_see_digit_counts(self):
        rng = np.random.default_rng(1)
        y = (rng.random(100) < 0.5).astype(int)
        qs = [f"What is {rng.integers(1, 10) if c else rng.integers(100, 1000)} + 1?" for c in y]
        assert text_probe_auroc(qs, y, **FAST).auroc_pooled > 0.9


class TestWithinStrata:
    def test_by_hand_on_a_small_table(self):
        # stratum a: right scores (3, 4) vs wrong (1, 5) → 2 of 4 pairs ordered → 0.5 with 4 pairs
        # stratum b: right (2) vs wrong (0, 6, 7) → 1 of 3 pairs → 1/3 with 3 pairs
        # stratum c: only right answers → no pair, drops out
        scores = np.array([3, 4, 1, 5, 2, 0, 6, 7, 9, 9], float)
        labels = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1])
        strata = np.array(list("aaaabbbbcc"))
        value, pairs = within_strata_auroc(scores, labels, strata)
        assert pairs == 4 + 3
        assert value == pytest.approx((0.5 * 4 + (1 / 3) * 3) / 7)
        # the same as counting within-stratum pairs ordered directly
        ordered = sum((scores[i] > scores[j]) + 0.5 * (scores[i] == scores[j])
                      for i in range(10) for j in range(10)
                      if labels[i] == 1 and labels[j] == 0 and strata[i] == strata[j])
        assert value == pytest.approx(ordered / 7)

    def test_a_signal_that_is_only_the_shortcut_is_near_half_within(self):
        rng = np.random.default_rng(0)
        tag = rng.random(300) < 0.5
        y = (rng.random(300) < np.where(tag, 0.8, 0.2)).astype(int)  # the tag decides most of correctness
        score = tag + rng.normal(size=300) * 0.1  # the "signal" only knows the tag
        r = strata_auroc(score, y, tag, signal="s", shortcut="tags", n_boot=300)
        assert r.auroc_pooled > 0.75
        assert abs(r.auroc_within - 0.5) < 0.08 and r.ci_low < 0.5 < r.ci_high
        assert r.n == 300 and r.n_strata == 2 and r.n_pos + r.n_neg == 300
        real = strata_auroc(y + rng.normal(size=300), y, tag, signal="s", shortcut="tags", n_boot=300)
        assert real.auroc_within > 0.7 and real.ci_low > 0.5

    def test_refusals(self):
        y = np.array([1] * 30 + [0] * 30)
        one = strata_auroc(np.arange(60.0), y, ["x"] * 60, signal="s", shortcut="kind", n_boot=50)
        assert one.auroc_within is None and one.reason == REASON_ONE_STRATUM and one.auroc_pooled == 0.0
        few = np.array([1] * 4 + [0] * 30 + [1] * 4 + [0] * 30)
        r = strata_auroc(np.arange(68.0), few, ["a"] * 34 + ["b"] * 34, signal="s", shortcut="kind", n_boot=50)
        assert r.auroc_within is None and r.reason == REASON_FEW


class TestTooFewToJudge:
    def test_either_class_under_ten_is_refused_everywhere(self):
        rng = np.random.default_rng(0)
        y = np.array([1] * 9 + [0] * 91)
        X = rng.normal(size=(100, 3))
        assert probe_auroc(X, y, **FAST).reason == REASON_FEW
        assert held_out_auroc("s", X[:, 0], y, np.arange(100)).reason == REASON_FEW
        assert held_out_auroc("s", X[:, 0], 1 - y, np.arange(100)).reason == REASON_FEW  # 9 wrong answers
        ok = held_out_auroc("s", X[:, 0], np.array([1] * 10 + [0] * 90), np.arange(100))
        assert ok.ok and ok.n_pos == 10 and ok.n_neg == 90 and ok.counts_text() == "10 right / 90 wrong"
        assert ok.to_json()["n_wrong"] == 90


    def test_a_selection_without_graded_rows_gives_a_reason(self):
        from ic_core.probes.cv import probe_last_layers
        from ic_core.stats.auroc import REASON_ONE_CLASS

        r = probe_last_layers(np.zeros((0, 5, 4)), np.zeros(0, int), **FAST)
        assert r.reason == REASON_ONE_CLASS and r.n == 0 and r.ci_text() == REASON_ONE_CLASS


class TestMetadata:
    def test_tag_baseline_and_strata(self):
        rng = np.random.default_rng(0)
        tags = [("well-known",) if rng.random() < 0.5 else ("obscure",) for _ in range(120)]
        y = np.asarray([rng.random() < (0.85 if t == ("well-known",) else 0.15) for t in tags], int)
        graded = pd.DataFrame({"tags": tags, "kind": ["short_answer"] * 120})
        strata = shortcut_strata(graded)
        assert list(strata) == ["tags"]  # kind does not vary: no stratum, no baseline
        (tag,) = metadata_baselines(graded, y, **FAST)
        assert tag.name == "item tags (one-hot)" and "2 values: obscure, well-known" in tag.description
        assert tag.auroc_pooled == pytest.approx(auroc([t == ("well-known",) for t in tags], y), abs=0.02)

    def test_one_hot_of_several_tags(self):
        X, levels = one_hot([("a", "b"), ("b",), ()])
        assert levels == ("a", "b")
        np.testing.assert_array_equal(X, [[1, 1], [0, 1], [0, 0]])


class TestDiffMeans:
    def test_direction_is_the_mean_difference(self):
        X = np.array([[1.0, 0], [3, 0], [0, 1], [0, 3]])
        m = DiffMeansDirection().fit(X, [1, 1, 0, 0])
        np.testing.assert_allclose(m.direction_, [2, -2])
        np.testing.assert_allclose(m.decision_function(X), [2, 6, -2, -6])

    def test_separable_synthetic_data(self):
        rng = np.random.default_rng(0)
        y = (rng.random(160) < 0.4).astype(int)
        X = rng.normal(size=(160, 40))
        X[:, :5] += 1.2 * y[:, None]
        r = diff_means_auroc(X, y, **FAST)
        assert r.auroc_pooled > 0.9 and r.ci_low > 0.8 and r.chosen_C == ()
        assert 0.3 < r.shuffle_mean < 0.7
        null = diff_means_auroc(rng.normal(size=(160, 40)), y, **FAST)
        assert null.ci_low < 0.5 < null.ci_high


def shortcut_run(tmp_path: Path, n=160, seed=0):
    """A run where a tag decides most of correctness and the state carries a little more."""
    from ic_core.runs.store import StudyRun

    rng = np.random.default_rng(seed)
    L, d = 3, 8
    rows, hidden = [], []
    for i in range(n):
        known = bool(rng.random() < 0.5)
        c = bool(rng.random() < (0.8 if known else 0.2))
        h = np.concatenate([np.ones((1, d)), rng.normal(size=(L, d))])
        h[L, 0] += 1.5 * c
        hidden.append(h)
        rows.append(dict(row=i, item_id=f"c{i}", regime="direct", question=f"What is the capital of country {i}?",
                         kind="short_answer", expected="x", output_text="x", extracted_answer="x", correct=c,
                         grade_rule="exact", readout_entropy_bits=float(rng.normal(3, 1) - 1.5 * known),
                         readout_entropy_top100_bits=float(rng.normal(2, 1)), top1_prob=float(rng.random()),
                         mean_token_entropy_bits=1.0, n_prompt_tokens=20, readout_token="is", signal="H_int",
                         answer_prefix=None, tags=["well-known" if known else "obscure"]))
    table = pd.DataFrame(rows)
    table["correct"] = table["correct"].astype(object)
    lens = rng.normal(3, 1, size=(n, L))
    manifest = {"model": {"name": "Tiny"}, "n_layers": L, "d_model": d, "regimes": ["direct"]}
    return StudyRun(tmp_path, manifest, table, np.asarray(hidden, np.float16), np.asarray(lens, np.float32))


class TestReport:
    def test_report_shows_within_strata_and_says_when_a_shortcut_is_not_beaten(self, tmp_path):
        rep = recoverability(shortcut_run(tmp_path), n_boot=200, n_shuffles=2, n_shuffles_per_layer=0)
        names = [b.name for b in rep.baselines]
        assert "item tags (one-hot)" in names and "question text only (char n-grams)" in names
        assert [s.name for s in rep.signals] == ["difference-of-means direction", "scalar read-out probe"]
        entropy = next(r for r in rep.strata if r.signal == "−H_int" and r.shortcut == "tags")
        assert entropy.auroc_pooled > 0.65 and entropy.ci_low < 0.5 < entropy.ci_high  # entropy only knows the tag
        probe = next(r for r in rep.strata if r.signal == rep.last_layers.name)
        assert probe.auroc_within is not None and probe.n == rep.n
        text = " ".join(narrative.reading(rep))
        assert "does not beat the shortcut item tags (one-hot)" in text
        assert "Within tags strata" in text and "no signal beyond the shortcut" in text
        assert f"({rep.n_pos} right, {rep.n - rep.n_pos} wrong)" in text
        out = rep.to_json()
        assert {r["signal"] for r in out["within_strata"]} >= {"−H_int", rep.last_layers.name}
        assert out["baselines"][0]["n_wrong"] == rep.n - rep.n_pos

    def test_scalar_features_skip_columns_with_missing_values(self):
        table = pd.DataFrame({"readout_entropy_bits": [1.0, 2.0], "readout_entropy_top100_bits": [1.0, None],
                              "top1_prob": [0.2, 0.9]})
        X, names = scalar_features(table, np.array([[1.0, 2.0], [3.0, 4.0]]))
        assert names == ("readout_entropy_bits", "top1_prob", "lens_entropy_bits[0]", "lens_entropy_bits[1]")
        np.testing.assert_allclose(X[1], [2.0, 0.9, 3.0, 4.0])
