"""Sharded studies on the tiny model: shares merge into the run an unsharded study makes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ic_core.datasets import PromptItem, items_jsonl
from ic_core.errors import DataError
from ic_core.generate import GenerationConfig
from ic_core.runs.store import ITEMS_FILE, MANIFEST_FILE, shard_files
from ic_core.study.runner import run_study
from ic_core.study.shards import SHARD_FILE, ShardSpec, merge_runs, parse_shard, run_shard, select, share_of

QUESTIONS = ["what is the capital of france", "what is the capital of germany", "what is 12 plus 7",
             "what is the capital of italy", "what is 3 times 4", "what is 5 plus 9", "what is 7 minus 2",
             "what is the capital of france ? answer in words", "what is 9 times 3", "what is 4 plus 4",
             "what is 11 minus 1", "what is 2 times 8"]
ANSWERS = ["paris", "berlin", "19", "rome", "12", "14", "5", "paris", "27", "8", "10", "16"]
ITEMS = tuple(PromptItem(f"q{i + 1}", q, a, kind="numeric" if a.isdigit() else "short_answer")
              for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)))
FAST = GenerationConfig(max_new_tokens=3)
VOLATILE_TABLE = ["generate_s"]
VOLATILE_MANIFEST = {"name", "created", "finished", "elapsed_s", "merged_from"}
ROOT = Path(__file__).resolve().parents[2]


def _kwargs(batch_size):
    return dict(gen_config=FAST, batch_size=batch_size, dataset_name="tiny-set")


def _sharded(tiny, tmp, count, batch_size=1, limit=None, regimes=("direct", "babble")):
    parts = []
    for i in range(1, count + 1):
        out = tmp / f"share-{i}"
        run_shard(tiny, ITEMS, list(regimes), out, ShardSpec(i, count), limit=limit, **_kwargs(batch_size))
        parts.append(out)
    return parts


def assert_same_run(merged, plain, exact=True):
    """Same rows in the same order, same states; manifests equal but for timings and names."""
    pd.testing.assert_frame_equal(merged.table.drop(columns=VOLATILE_TABLE), plain.table.drop(columns=VOLATILE_TABLE))
    if exact:
        np.testing.assert_array_equal(merged.hidden, plain.hidden)
        np.testing.assert_array_equal(merged.lens_entropy_bits, plain.lens_entropy_bits)
    else:
        np.testing.assert_allclose(merged.hidden.astype(np.float32), plain.hidden.astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(merged.lens_entropy_bits, plain.lens_entropy_bits, atol=1e-4)
    ma = {k: v for k, v in merged.manifest.items() if k not in VOLATILE_MANIFEST}
    mb = {k: v for k, v in plain.manifest.items() if k not in VOLATILE_MANIFEST}
    assert ma == mb


class TestSplit:
    """Which items a share holds."""

    def test_parse(self):
        """I/N is 1-based; anything else is one line."""
        assert parse_shard("2/4") == ShardSpec(2, 4) and str(parse_shard(" 1 / 3 ")) == "1/3"
        for bad in ("0/4", "5/4", "2", "a/b", "-1/2", ""):
            with pytest.raises(DataError, match="I/N"):
                parse_shard(bad)

    def test_deterministic_partition(self):
        """Every item is in exactly one share, the same one whatever else is in the set."""
        for count in (1, 2, 3, 4):
            picked = [select(ITEMS, ShardSpec(i, count)) for i in range(1, count + 1)]
            assert sorted(p for part in picked for p in part) == list(range(len(ITEMS)))
        assert select(ITEMS, ShardSpec(1, 4)) == [8, 11]  # q9, q12: SHA-256 of the id mod 4 == 0
        assert share_of("q9", 4) == 0 and share_of("q9", 4) == share_of("q9", 4)
        assert select(ITEMS[8:], ShardSpec(1, 4)) == [0, 3]  # same items, without the others


class TestMerge:
    """Merged shares equal the unsharded run."""

    def test_byte_identical_with_batch_one(self, tiny, tmp_path):
        """Batch size 1: every row is read alone in both, so states are byte-identical; shards on disk too."""
        plain = run_study(tiny, ITEMS, ["direct", "babble"], tmp_path / "plain", **_kwargs(1))
        merged = merge_runs(_sharded(tiny, tmp_path, 3), tmp_path / "merged")
        assert len(merged.table) == 2 * len(ITEMS)
        assert merged.table["item_id"].tolist()[:4] == ["q1", "q1", "q2", "q2"]
        assert_same_run(merged, plain)
        assert merged.manifest["merged_from"] == ["share-1", "share-2", "share-3"]
        assert (tmp_path / "merged" / "dataset.jsonl").read_bytes() == (tmp_path / "plain" / "dataset.jsonl").read_bytes()
        assert [f.name for f in shard_files(tmp_path / "merged")] == [f.name for f in shard_files(tmp_path / "plain")]

        def rows(folder):
            return [{k: v for k, v in json.loads(line).items() if k != "generate_s"}
                    for line in (folder / ITEMS_FILE).read_text().splitlines()]
        assert rows(tmp_path / "merged") == rows(tmp_path / "plain")

    def test_batched_with_limit(self, tiny, tmp_path):
        """Batches of 4 and a limit of 10: same table, states equal within float16 batching noise."""
        plain = run_study(tiny, ITEMS, ["direct"], tmp_path / "plain", limit=10, **_kwargs(4))
        merged = merge_runs(_sharded(tiny, tmp_path, 2, batch_size=4, limit=10, regimes=("direct",)),
                            tmp_path / "merged")
        assert merged.manifest["dataset"] == plain.manifest["dataset"] == {
            "name": "tiny-set", "sha256": None, "n_items_in_set": 12, "limit": 10}
        assert merged.manifest["n_rows_planned"] == 10
        assert_same_run(merged, plain, exact=False)

    def test_merged_run_resumes_as_complete(self, tiny, tmp_path):
        """run_study on the merged folder with the same settings sees the same study, with nothing left to do."""
        merged = merge_runs(_sharded(tiny, tmp_path, 2), tmp_path / "merged")
        again = run_study(tiny, ITEMS, ["direct", "babble"], tmp_path / "merged", **_kwargs(1))
        pd.testing.assert_frame_equal(again.table, merged.table)
        np.testing.assert_array_equal(again.hidden, merged.hidden)


class TestRefusals:
    """Shares that are not one study are refused with one line."""

    @pytest.fixture
    def parts(self, tiny, tmp_path):
        return _sharded(tiny, tmp_path, 2, regimes=("direct",))

    def test_missing_and_repeated_share(self, parts, tmp_path):
        with pytest.raises(DataError, match="missing share.*2/2"):
            merge_runs(parts[:1], tmp_path / "m1")
        with pytest.raises(DataError, match="1/2 given twice"):
            merge_runs([parts[0], parts[0], parts[1]], tmp_path / "m2")

    def test_other_weights(self, parts, tmp_path):
        """A share whose manifest pins other weights (a different model) is refused, naming the field."""
        file = parts[1] / MANIFEST_FILE
        m = json.loads(file.read_text())
        m["model_weights_sha256"] = "ab" * 32
        file.write_text(json.dumps(m))
        with pytest.raises(DataError, match="differ in model_weights_sha256") as err:
            merge_runs(parts, tmp_path / "m")
        assert "\n" not in str(err.value)
        assert not (tmp_path / "m").exists()

    def test_other_settings_and_template(self, tiny, parts, tmp_path):
        """A share run with another seed, or another answer prefix (template), is refused."""
        other = tmp_path / "other-2"
        run_shard(tiny, ITEMS, ["direct"], other, ShardSpec(2, 2), gen_config=FAST, batch_size=1,
                  dataset_name="tiny-set", answer_prefix="the answer is")
        with pytest.raises(DataError, match="differ in (templates|answer_prefix)"):
            merge_runs([parts[0], other], tmp_path / "m")

    def test_other_item_set(self, tiny, parts, tmp_path):
        other = tmp_path / "other-items"
        run_shard(tiny, ITEMS[:8], ["direct"], other, ShardSpec(2, 2), **_kwargs(1))
        with pytest.raises(DataError, match="split different item sets"):
            merge_runs([parts[0], other], tmp_path / "m")

    def test_not_a_share_and_not_empty_out(self, tiny, parts, tmp_path):
        plain = tmp_path / "plain"
        run_study(tiny, ITEMS[:2], ["direct"], plain, **_kwargs(1))
        with pytest.raises(DataError, match="not a study share"):
            merge_runs([plain, parts[1]], tmp_path / "m")
        with pytest.raises(DataError, match="not empty"):
            merge_runs(parts, plain)

    def test_sampling_and_empty_share(self, tiny, tmp_path):
        with pytest.raises(DataError, match="greedy"):
            run_shard(tiny, ITEMS, ["direct"], tmp_path / "s", ShardSpec(1, 2),
                      gen_config=GenerationConfig(max_new_tokens=2, do_sample=True))
        with pytest.raises(DataError, match="empty"):
            run_shard(tiny, ITEMS[:1], ["direct"], tmp_path / "e", ShardSpec(2, 2), gen_config=FAST)


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ic_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


class TestCli:
    """study --shard and study merge from the command line."""

    def test_shard_merge_equals_unsharded(self, tiny_dir, tmp_path):
        """Two --shard runs merged with `study merge` give the table and states of the unsharded run."""
        data = tmp_path / "items.jsonl"
        data.write_text(items_jsonl(ITEMS[:6]))
        common = ["--data", str(data), "--model", str(tiny_dir), "--max-new-tokens", "2", "--batch-size", "1", "--quiet"]
        for i in (1, 2):
            r = run_cli("study", *common, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}"))
            assert r.returncode == 0, r.stderr
            assert (tmp_path / f"s{i}" / SHARD_FILE).is_file()
        r = run_cli("study", "merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m"))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["merged_from"] == ["s1", "s2"]
        r = run_cli("study", *common, "--out", str(tmp_path / "plain"))
        assert r.returncode == 0, r.stderr
        from ic_core.runs.store import load_run

        assert_same_run(load_run(tmp_path / "m"), load_run(tmp_path / "plain"))

    def test_cli_refusals(self, tiny_dir, tmp_path):
        """Bad --shard, merge without --out, merge of one share: one line, exit 2."""
        r = run_cli("study", "--data", "x.jsonl", "--shard", "3/2")
        assert r.returncode == 2 and "I/N" in r.stderr and r.stderr.count("\n") == 1
        r = run_cli("study", "merge", str(tmp_path))
        assert r.returncode == 2 and "--out" in r.stderr and r.stderr.count("\n") == 1
        r = run_cli("study")
        assert r.returncode == 2 and "--data" in r.stderr
        data = tmp_path / "items.jsonl"
        data.write_text(items_jsonl(ITEMS[:4]))
        r = run_cli("study", "--data", str(data), "--model", str(tiny_dir), "--ray", "--shard", "1/2",
                    "--out", str(tmp_path / "r"))
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and "drop --shard" in errors[0]
        assert not (tmp_path / "r").exists()
