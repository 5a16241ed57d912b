"""Transfer between runs (``ic_core.probes.transfer``) on runs built directly (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ic_core.errors import DataError
from ic_core.probes.cv import state_model
from ic_core.probes.transfer import (
    REASON_OVERLAP,
    REASON_SHAPES,
    SIGNAL_NAMES,
    task_rows,
    transfer_estimate,
    transfer_matrix,
    transfer_pair,
    transfer_report,
)
from ic_core.stats.auroc import REASON_FEW

FAST = dict(n_boot=100, n_shuffles=2)


def run(tmp_path: Path, name: str, n=80, d=8, L=3, seed=0, prefix="q", p_right=0.45, shift=1.5):
    """A run whose last layer's first unit and read-out entropy both carry correctness."""
    from ic_core.runs.store import StudyRun

    rng = np.random.default_rng(seed)
    y = rng.random(n) < p_right
    hidden = np.concatenate([np.ones((n, 1, d)), rng.normal(size=(n, L, d))], axis=1)
    hidden[:, L, 0] += shift * y
    table = pd.DataFrame([dict(
        row=i, item_id=f"{prefix}{i}", regime="direct", question=f"{prefix} question {i}?", kind="short_answer",
        expected="x", output_text="x", extracted_answer="x", correct=bool(c), grade_rule="exact",
        readout_entropy_bits=float(rng.normal(3, 1) - shift * c), readout_entropy_top100_bits=float(rng.normal(2, 1)),
        top1_prob=float(rng.random()), mean_token_entropy_bits=None, n_prompt_tokens=20, readout_token="is",
        signal="H_int", answer_prefix=None, tags=[]) for i, c in enumerate(y)])
    table["correct"] = table["correct"].astype(object)
    lens = rng.normal(3, 1, size=(n, L)).astype(np.float32)
    folder = tmp_path / name
    folder.mkdir()
    return StudyRun(folder, {"model": {}, "n_layers": L, "d_model": d, "regimes": ["direct"]}, table,
                    hidden.astype(np.float16), lens)


class TestTransfer:
    def test_a_shared_signal_transfers_and_the_shuffle_does_not(self, tmp_path):
        a = task_rows(run(tmp_path, "a", seed=1, prefix="a"))
        b = task_rows(run(tmp_path, "b", seed=2, prefix="b"))
        ests = transfer_pair(a, b, **FAST)
        assert [e.name for e in ests] == list(SIGNAL_NAMES)
        for e in ests:
            assert e.kind == "transfer" and e.auroc_pooled > 0.75 and e.ci_low > 0.5
            assert e.shuffle_mean < e.auroc_pooled and e.n == 80 and e.n_pos == int(b.y.sum())

    def test_the_report_gives_selective_statistics_of_each_estimates_own_scores(self, tmp_path):
        from ic_core.stats.selective import selective_summary

        a = task_rows(run(tmp_path, "a", seed=1, prefix="a"))
        b = task_rows(run(tmp_path, "b", seed=2, prefix="b"))
        report = transfer_report(a, b, seed=3, **FAST)
        ests = transfer_pair(a, b, seed=3, **FAST)
        for got, e in zip(report["estimates"], ests, strict=True):
            want = selective_summary(e.scores, np.asarray(e.labels).astype(bool), name=e.name, n_boot=100, seed=3)
            sel = got["selective"]
            assert sel == want.to_json()
            assert 0.0 < want.aurc.value < 1.0 and want.eaurc.value >= 0.0

    def test_nothing_of_b_is_used_to_fit(self, tmp_path):
        a = task_rows(run(tmp_path, "a", seed=1, prefix="a"))
        b = task_rows(run(tmp_path, "b", seed=2, prefix="b"))
        one = transfer_estimate(state_model, a.states, a.y, b.states, b.y, name="s", description="", **FAST)
        flipped = b.y.copy()
        flipped[:5] = 1 - flipped[:5]
        two = transfer_estimate(state_model, a.states, a.y, b.states, flipped, name="s", description="", **FAST)
        np.testing.assert_array_equal(one.scores, two.scores)  # B's labels never reach the fit

    def test_overlap_is_refused_by_question_whatever_the_folder(self, tmp_path):
        a = task_rows(run(tmp_path, "a", seed=1, prefix="a"))
        same_items = task_rows(run(tmp_path, "copy", seed=1, prefix="a"))
        with pytest.raises(DataError, match="share 80 question"):
            transfer_pair(a, same_items, **FAST)

    def test_too_few_and_other_shapes_are_reasons_not_numbers(self, tmp_path):
        a = task_rows(run(tmp_path, "a", seed=1, prefix="a"))
        few = task_rows(run(tmp_path, "few", n=40, seed=3, prefix="f", p_right=0.1))
        assert all(e.reason.startswith(REASON_FEW) and e.auroc_pooled is None for e in transfer_pair(a, few, **FAST))
        wide = task_rows(run(tmp_path, "wide", d=6, seed=4, prefix="w"))
        state, direction, scalar = transfer_pair(a, wide, **FAST)
        assert state.reason == REASON_SHAPES and direction.reason == REASON_SHAPES and scalar.ok

    def test_matrix_diagonal_is_within_task_and_overlap_cells_say_so(self, tmp_path):
        a = task_rows(run(tmp_path, "a", seed=1, prefix="a"))
        b = task_rows(run(tmp_path, "b", seed=2, prefix="b"))
        dup = task_rows(run(tmp_path, "dup", seed=5, prefix="b"))
        m = transfer_matrix([a, b, dup], **FAST)
        assert m.labels == ("a:direct", "b:direct", "dup:direct") and len(m.cells) == 9
        assert m.cells[0, 0][0].kind == "probe" and m.cells[0, 1][0].kind == "transfer"
        assert all(e.reason == REASON_OVERLAP for e in m.cells[1, 2])
        records = m.records()
        assert len(records) == 27 and {"n_correct", "n_wrong", "ci_low", "protocol"} <= set(records[0])
        out = m.to_json()
        assert out["runs"][0]["n_correct"] == int(a.y.sum()) and out["cells"][1]["within_task"] is False
        (tmp_path / "x").mkdir()
        twin = task_rows(run(tmp_path / "x", "a", seed=6, prefix="t"))
        assert transfer_matrix([a, twin], **FAST).labels == ("a:direct #1", "a:direct #2")  # same folder name
        with pytest.raises(DataError, match="at least two"):
            transfer_matrix([a])
