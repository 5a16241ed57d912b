"""Two models on one prompt set: matched by id, paired AUROC differences, transfer on disjoint halves, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ic_core.errors import DataError
from ic_core.runs.store import StudyRun
from ic_core.stats.auroc import auroc
from ic_core.study.two_models import (
    PROBE_NAME,
    compare_two_models,
    cross_model_scalars,
    matched_rows,
    paired_difference,
    split_halves,
)

ROOT = Path(__file__).resolve().parents[2]


def fake_run(name: str, ids: list[str], correct: np.ndarray, entropy: np.ndarray, n_layers: int, d: int,
             seed: int) -> StudyRun:
    """A loaded run of ``ids`` whose read-out entropy and states are given (states carry the label weakly)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    table = pd.DataFrame({
        "row": np.arange(n), "item_id": ids, "regime": "direct", "question": [f"question {i}?" for i in ids],
        "correct": [bool(c) for c in correct], "readout_entropy_bits": entropy,
        "readout_entropy_top100_bits": entropy * 0.9, "top1_prob": 1 / (1 + np.exp(entropy - 3)), "signal": "H_slot",
    })
    hidden = rng.normal(size=(n, n_layers + 1, d))
    hidden[:, -3:, 0] += 1.5 * correct[:, None]
    lens = np.column_stack([entropy + rng.normal(0, 1, n) for _ in range(n_layers)])
    manifest = {"model": {"source": "default", "name": name}}
    return StudyRun(Path(f"/runs/{name}"), manifest, table, hidden.astype(np.float16), lens.astype(np.float32))


@pytest.fixture(scope="module")
def pair():
    """Model A's entropy separates its right and wrong answers; model B's is noise. Ids in other orders."""
    rng = np.random.default_rng(7)
    ids = [f"cap-{k:03d}" for k in range(80)]
    y_a = (np.arange(80) % 2 == 0).astype(int)
    y_b = (rng.random(80) < 0.6).astype(int)
    run_a = fake_run("model-a", ids, y_a, 4.0 - 2.5 * y_a + rng.normal(0, 0.8, 80), 6, 16, 1)
    order = rng.permutation(80)[:70]  # B misses 10 items and lists the rest in another order
    run_b_full = fake_run("model-b", ids, y_b, rng.normal(3.0, 1.0, 80), 4, 12, 2)
    table = run_b_full.table.iloc[order].reset_index(drop=True)
    table["row"] = np.arange(len(order))
    run_b = StudyRun(run_b_full.path, run_b_full.manifest, table, run_b_full.hidden[order],
                     run_b_full.lens_entropy_bits[order])
    return run_a, run_b, y_a, y_b, ids, order


class TestMatching:
    """Items are matched by id: the intersection, in one order, each model with its own labels."""

    def test_rows_are_the_shared_ids_in_the_same_order(self, pair):
        run_a, run_b, y_a, y_b, ids, order = pair
        a, b = matched_rows(run_a, run_b)
        shared = sorted(ids[k] for k in order)
        assert list(a.table["item_id"]) == shared == list(b.table["item_id"])
        assert a.y.tolist() == [int(y_a[ids.index(i)]) for i in shared]
        assert b.y.tolist() == [int(y_b[ids.index(i)]) for i in shared]
        assert a.state_shape == (7, 16) and b.state_shape == (5, 12)

    def test_no_shared_item_and_one_model_twice_are_refused(self, pair):
        run_a, run_b, *_ = pair
        other = fake_run("model-b", [f"x-{k}" for k in range(20)], np.arange(20) % 2, np.ones(20), 4, 12, 3)
        with pytest.raises(DataError, match="share no graded item"):
            matched_rows(run_a, other)
        with pytest.raises(DataError, match="needs two models"):
            compare_two_models(run_a, run_a, n_boot=50, n_shuffles=1)

    def test_lens_is_read_at_the_same_relative_depths(self, pair):
        run_a, run_b, *_ = pair
        a, b = matched_rows(run_a, run_b)
        xa, na = cross_model_scalars(a)
        xb, nb = cross_model_scalars(b)
        assert na == nb and na[-4:] == tuple(f"lens_entropy_bits@{d:g}" for d in (0.25, 0.5, 0.75, 1.0))
        assert np.allclose(xa[:, -1], a.lens[:, 5]) and np.allclose(xb[:, -1], b.lens[:, 3])
        assert np.allclose(xa[:, na.index("lens_entropy_bits@0.5")], a.lens[:, 2])

    def test_halves_are_disjoint_stable_and_cover_every_item(self):
        ids = [f"i{k}" for k in range(31)]
        first, second = split_halves(ids)
        assert len(first) == 15 and len(second) == 16 and not set(first) & set(second)
        assert sorted([*first, *second]) == list(range(31))
        again = split_halves(list(ids))
        assert first.tolist() == again[0].tolist()


@pytest.fixture(scope="module")
def result(pair):
    """The comparison of the pair (few resamples: the figures are checked, not the CI widths)."""
    run_a, run_b, *_ = pair
    return compare_two_models(run_a, run_b, n_boot=300, n_shuffles=2)


class TestComparison:
    """Each signal's AUROC per model on the matched items, and the paired difference."""

    def test_accuracy_and_counts(self, result, pair):
        run_a, run_b, y_a, y_b, ids, order = pair
        assert result.n_matched == 70 and result.labels == ("model-a", "model-b")
        assert result.n_correct == (int(y_a[order].sum()), int(y_b[order].sum()))
        assert f"({result.n_correct[0]} of 70)" in result.accuracy_text(0)

    def test_entropy_auroc_matches_a_direct_computation_and_the_difference_is_clear(self, result, pair):
        run_a, run_b, *_ = pair
        a, b = matched_rows(run_a, run_b)
        h = result.signals[0]
        assert h.name == "−H_slot"
        want_a = auroc(-a.table["readout_entropy_bits"].to_numpy(), a.y.astype(bool))
        want_b = auroc(-b.table["readout_entropy_bits"].to_numpy(), b.y.astype(bool))
        assert h.a.auroc_pooled == pytest.approx(want_a) and h.b.auroc_pooled == pytest.approx(want_b)
        assert want_a > 0.9 and 0.3 < want_b < 0.7
        assert h.diff == pytest.approx(want_a - want_b) and h.ci_low > 0 and h.ci_low < h.diff < h.ci_high

    def test_the_state_probe_learns_model_a_and_shapes_stop_its_transfer(self, result):
        probe = next(s for s in result.signals if s.name == PROBE_NAME)
        assert probe.a.auroc_pooled > 0.7 and probe.a.shuffle_mean is not None
        assert "state shapes differ" in result.state_transfer_reason and "(7, 16) vs (5, 12)" in result.state_transfer_reason

    def test_transfer_both_ways_with_a_same_model_reference(self, result):
        there, back = result.transfers
        assert (there.train, there.test) == ("model-a", "model-b") and (back.train, back.test) == ("model-b", "model-a")
        # A's entropy rule is right for A's own held-out half, and says nothing about B's noise
        assert there.reference.auroc_pooled > 0.85 and there.estimate.auroc_pooled < 0.75
        assert there.estimate.n + there.reference.n <= 70  # scored on the second half only

    def test_text_and_json_carry_the_figures(self, result):
        text = result.text()
        assert "70 items matched by id" in text and "A − B" in text and "not transferable" in text
        j = json.loads(json.dumps(result.to_json(), allow_nan=False))
        assert j["n_matched"] == 70 and j["signals"][0]["diff"] == pytest.approx(result.signals[0].diff, abs=1e-4)
        assert len(j["transfers"]) == 2

    def test_a_missing_auroc_gives_no_difference(self):
        from ic_core.stats.auroc import missing_estimate

        gone = missing_estimate("x", "only one class", 10, 10)
        assert paired_difference(gone, gone) == (None, None, None, 0)


@pytest.mark.slow
def test_cli_study_on_two_models_writes_two_runs_and_the_comparison(tmp_path, tiny_dir, tiny):
    """``study --model A --model B``: one run folder per model, a comparison file, the paired lines printed."""
    from tests.helpers import make_tiny_model

    other = tmp_path / "tiny-gpt2"
    make_tiny_model(len(tiny.tokenizer), n_layers=3, family="gpt2").save_pretrained(other)
    tiny.tokenizer.save_pretrained(other)
    data = tmp_path / "set.jsonl"
    rows = [{"id": f"q{k}", "question": f"what is {k} plus {k} ?", "answer": str(2 * k), "kind": "numeric"}
            for k in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ic_core", "study", "--data", str(data), "--model", str(tiny_dir),
                           "--model", str(other), "--max-new-tokens", "2", "--quiet", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "6 items matched by id" in proc.stdout and "accuracy  A" in proc.stdout and "accuracy  B" in proc.stdout
    report = json.loads((out / "comparison.json").read_text())
    assert report["comparison"]["n_matched"] == 6 and len(report["runs"]) == 2
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2 and all((out / f / "manifest.json").is_file() for f in folders)
    assert "state shapes differ" in report["comparison"]["state_transfer_reason"]


def test_cli_refuses_three_models_and_one_model_twice():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for models, word in ((["a", "b", "c"], "at most 2"), (["x", "x"], "given twice")):
        args = [a for m in models for a in ("--model", m)]
        proc = subprocess.run([sys.executable, "-m", "ic_core", "study", "--data", "capitals", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and word in proc.stderr and "Traceback" not in proc.stderr
