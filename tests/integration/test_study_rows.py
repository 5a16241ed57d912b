"""Study rows reach the disk one by one (issue 17 item 3): a killed run keeps every finished row and resumes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ic_core.datasets import PromptItem
from ic_core.generate import GenerationConfig
from ic_core.runs.store import load_run, read_rows, shard_files, shard_rows
from ic_core.study.runner import run_study

ITEMS = tuple(PromptItem(f"q{i}", f"what is {i} plus {i}", str(2 * i), kind="numeric") for i in range(5))
FAST = GenerationConfig(max_new_tokens=2)
BATCH = 4


class Killed(Exception):
    """Stands for the process dying between two rows."""


def study(tiny, out, **kw):
    return run_study(tiny, ITEMS, ["direct"], out, gen_config=FAST, batch_size=BATCH, dataset_name="rows", **kw)


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    return study(tiny, tmp_path_factory.mktemp("rows") / "full")


def test_every_finished_row_is_on_disk_while_the_batch_runs(tiny, tmp_path):
    out = tmp_path / "live"
    seen = []

    def progress(done, total, eta, message):
        if done and message not in ("complete", "cancelled"):
            run = load_run(out)  # what a page opening the folder now would see
            seen.append((done, len(run.table), json.loads((out / "manifest.json").read_text())["n_rows_done"]))

    study(tiny, out, progress=progress)
    assert seen == [(d, d, d) for d in range(1, 6)]  # rows 1..3 of the first batch appear before it ends


@pytest.mark.parametrize("k", [1, 2, 5])
def test_killed_after_k_rows_keeps_k_rows_and_resume_completes(tiny, tmp_path, uninterrupted, k):
    out = tmp_path / f"killed{k}"

    def progress(done, total, eta, message):
        if done == k and message not in ("complete", "cancelled"):
            raise Killed

    with pytest.raises(Killed):  # k = 5: killed after the last row, before the run was marked complete
        study(tiny, out, progress=progress)
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    records, truncated = read_rows(out)
    assert sorted(records) == list(range(k)) and not truncated
    stored = sorted(int(r) for f in shard_files(out) for r in shard_rows(f))
    assert stored == list(range(k))
    assert len(load_run(out).table) == k
    done = study(tiny, out)
    assert done.status == "complete" and len(done.table) == len(ITEMS)
    pd.testing.assert_frame_equal(done.table.drop(columns=["generate_s"]),
                                  uninterrupted.table.drop(columns=["generate_s"]))
    np.testing.assert_array_equal(done.hidden, uninterrupted.hidden)
    np.testing.assert_array_equal(done.lens_entropy_bits, uninterrupted.lens_entropy_bits)


def test_states_without_a_record_are_cut_from_the_shard_on_resume(tiny, tmp_path, uninterrupted):
    out = tmp_path / "torn"

    def progress(done, total, eta, message):
        if done == 2 and message not in ("complete", "cancelled"):
            raise Killed

    with pytest.raises(Killed):
        study(tiny, out, progress=progress)
    lines = (out / "items.jsonl").read_text().splitlines(keepends=True)
    (out / "items.jsonl").write_text(lines[0])  # the crash came after row 1's states, before its record
    assert sorted(int(r) for r in shard_rows(shard_files(out)[0])) == [0, 1]
    done = study(tiny, out)
    np.testing.assert_array_equal(done.hidden, uninterrupted.hidden)
    assert done.table["item_id"].tolist() == [it.id for it in ITEMS]
