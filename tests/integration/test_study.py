"""Study runs on the tiny model: shapes, persistence, resume, cancel, damaged folders, summaries, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

import ic_core.study.runner as runner_mod
from ic_core.capture import capture
from ic_core.compliance import check_compliance
from ic_core.datasets import PromptItem
from ic_core.errors import DataError
from ic_core.generate import GenerationConfig
from ic_core.grading import grade
from ic_core.prompts import readout_label, render, template_for
from ic_core.runs.lock import run_in_progress
from ic_core.runs.schema import TABLE_COLUMNS, RunRow, table_from_rows, verdict_label
from ic_core.runs.store import (
    FORMAT_VERSION,
    RunInfo,
    StudyRun,
    list_runs,
    load_run,
    read_rows,
    run_mtime,
    run_path,
    runs_root,
    sanitize_name,
    status_label,
)
from ic_core.stats.proportions import wilson_interval
from ic_core.study.compare import (
    dim_eff_by_regime,
    dim_eff_table,
    pca_of_layer,
    place_state,
    regime_comparison,
    summarize,
)
from ic_core.study.export import metrics_json
from ic_core.study.report import summary_markdown
from ic_core.study.runner import COT_MIN_NEW_TOKENS, MAX_LIMIT, eta_text, resume_run, run_study

ITEMS = (
    PromptItem("i1", "what is the capital of france", "paris", kind="short_answer",
               answer_prefix="the capital of france is"),
    PromptItem("i2", "what is the capital of germany", "berlin", kind="short_answer"),
    PromptItem("i3", "what is 12 plus 7", "19", kind="numeric"),
    PromptItem("i4", "what is the capital of italy", "rome", aliases=("roma",), kind="short_answer"),
    PromptItem("i5", "what is 3 times 4", "12", kind="numeric"),
)
VOLATILE = ["generate_s"]
FAST = GenerationConfig(max_new_tokens=3)


def _same_runs(a: StudyRun, b: StudyRun) -> None:
    pd.testing.assert_frame_equal(a.table.drop(columns=VOLATILE), b.table.drop(columns=VOLATILE))
    np.testing.assert_array_equal(a.hidden, b.hidden)
    np.testing.assert_array_equal(a.lens_entropy_bits, b.lens_entropy_bits)


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    """4 items × direct, babble, batches of 3, uninterrupted."""
    out = tmp_path_factory.mktemp("runs") / "full"
    return run_study(tiny, ITEMS, ["direct", "babble"], out, limit=4, gen_config=FAST, batch_size=3,
                     dataset_name="tiny-set")


class TestEndToEnd:
    def test_shapes_dtypes_and_columns(self, full_run, tiny):
        run = full_run
        assert run.hidden.shape == (8, tiny.n_layers + 1, tiny.d_model) and run.hidden.dtype == np.float16
        assert run.lens_entropy_bits.shape == (8, tiny.n_layers) and run.lens_entropy_bits.dtype == np.float32
        assert list(run.table.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
        assert run.table["row"].tolist() == list(range(8))
        assert run.table["item_id"].tolist() == ["i1", "i1", "i2", "i2", "i3", "i3", "i4", "i4"]
        assert run.table["regime"].tolist() == ["direct", "babble"] * 4
        assert run.status == "complete" and run.manifest["n_rows_done"] == 8
        assert run.manifest["format_version"] == FORMAT_VERSION

    def test_manifest_records_what_was_run(self, full_run, tiny):
        m = full_run.manifest
        assert m["model"] == tiny.spec.to_dict() and m["n_layers"] == tiny.n_layers
        assert m["dataset"] == {"name": "tiny-set", "sha256": None, "n_items_in_set": 5, "limit": 4}
        assert m["generation"]["max_new_tokens_by_regime"] == {"direct": 3, "babble": 3}
        assert set(m["versions"]) == {"python", "torch", "transformers", "numpy", "ic_core"}
        assert m["templates"]["babble"]["numeric"]["user"].startswith("Write a few sentences")

    def test_states_match_a_single_capture(self, full_run, tiny):
        t = full_run.table
        for _, r in t.iterrows():
            item = next(it for it in ITEMS if it.id == r["item_id"])
            prefix = item.answer_prefix if r["regime"] == "direct" else None
            rendered = render(tiny.tokenizer, item.question, template_for(r["regime"], item.kind, prefix))
            state, _ = capture(tiny, rendered)
            np.testing.assert_allclose(full_run.hidden[r["row"]], state.hidden.astype(np.float16), rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(full_run.lens_entropy_bits[r["row"]], state.lens.entropy_bits[0], atol=1e-4)
            assert r["readout_entropy_bits"] == pytest.approx(state.readout_entropy_bits, abs=1e-5)
            assert r["n_prompt_tokens"] == rendered.n_tokens

    def test_prefix_only_in_direct_and_signal_named(self, full_run):
        t = full_run.table.set_index(["item_id", "regime"])
        assert t.loc[("i1", "direct"), "answer_prefix"] == "the capital of france is"
        assert t.loc[("i1", "direct"), "signal"] == "H_slot" and t.loc[("i1", "direct"), "item_prefix_used"]
        assert t.loc[("i1", "babble"), "answer_prefix"] is None and t.loc[("i1", "babble"), "signal"] == "H_int"
        assert t.loc[("i2", "direct"), "signal"] == "H_int"
        assert t.loc[("i1", "direct"), "output_text"].startswith("the capital of france is")

    def test_grades_match_the_grader_and_babble_is_checked_not_graded(self, full_run):
        for _, r in full_run.table.iterrows():
            item = next(it for it in ITEMS if it.id == r["item_id"])
            if r["regime"] == "babble":
                c = check_compliance(r["output_text"], item.answer, item.kind, item.aliases, item.choices)
                assert (r["extracted_answer"], r["correct"], r["grade_rule"]) == (None, None, None)
                assert (r["complied"], r["compliance_reason"]) == (c.complied, c.reason)
            else:
                g = grade(r["output_text"], item.answer, item.kind, item.aliases, item.choices, item.question)
                assert (r["extracted_answer"], r["correct"], r["grade_rule"]) == (g.extracted, g.correct, g.rule)
                assert isinstance(r["correct"], bool) and r["complied"] is None
            assert r["output_source"] == "generated" and r["n_generated_tokens"] <= 3
            assert len(r["generated_tokens"]) == len(r["token_entropies_bits"])
            assert r["mean_token_entropy_bits"] == pytest.approx(np.mean(r["token_entropies_bits"]), abs=1e-3)

    def test_summary_and_metrics(self, full_run):
        s = summarize(full_run).set_index("regime")
        t = full_run.table
        for regime in ("direct", "babble"):
            sub = t[t["regime"] == regime]
            assert s.loc[regime, "mean_readout_entropy_bits"] == pytest.approx(sub["readout_entropy_bits"].mean())
            assert s.loc[regime, "median_readout_entropy_bits"] == pytest.approx(sub["readout_entropy_bits"].median())
        direct, babble = t[t["regime"] == "direct"], t[t["regime"] == "babble"]
        assert s.loc["direct", "n"] == 4 and s.loc["direct", "n_graded"] == 4 and s.loc["direct", "role"] == "answer"
        assert s.loc["direct", "accuracy"] == pytest.approx(np.mean([bool(c) for c in direct["correct"]]))
        ok = int(sum(bool(c) for c in babble["complied"]))
        assert s.loc["babble", "n"] == 4 and s.loc["babble", "n_graded"] == 0 and math.isnan(s.loc["babble", "accuracy"])
        assert s.loc["babble", "role"] == "control" and s.loc["babble", "n_complied"] == ok
        assert s.loc["babble", "result"] == f"control: {100 * ok / 4:.0f} % complied ({ok} of 4)"
        data = metrics_json(full_run)
        json.dumps(data, allow_nan=False)
        assert data["n_rows_done"] == 8 and data["pairs"][0]["note"].startswith("n too small")

    def test_cot_gets_at_least_192_tokens_recorded(self, tiny, tmp_path):
        run = run_study(tiny, ITEMS[:1], ["cot"], tmp_path / "cot", gen_config=FAST)
        assert run.manifest["generation"]["max_new_tokens_by_regime"] == {"cot": 192}
        assert run.table["max_new_tokens"].tolist() == [192]
        assert run.table["answer_prefix"].tolist() == [None]


class TestResume:
    def test_cancel_after_first_batch_then_resume_equals_uninterrupted(self, tiny, tmp_path, full_run):
        out = tmp_path / "resumed"
        calls = []

        def cancel() -> bool:
            calls.append(1)
            items = out / "items.jsonl"  # rows are written one by one: stop once batch 0's 3 rows are done
            return items.exists() and len(items.read_text().splitlines()) >= 3

        part = run_study(tiny, ITEMS, ["direct", "babble"], out, limit=4, gen_config=FAST, batch_size=3,
                         cancel=cancel, dataset_name="tiny-set")
        assert part.status == "cancelled" and len(part.table) == 3
        assert load_run(out).table["row"].tolist() == [0, 1, 2]
        done = run_study(tiny, ITEMS, ["direct", "babble"], out, limit=4, gen_config=FAST, batch_size=3,
                         dataset_name="tiny-set")
        assert done.status == "complete"
        _same_runs(done, full_run)

    def test_cancel_mid_batch_keeps_finished_rows_and_redoes_the_batch(self, tiny, tmp_path, full_run):
        out = tmp_path / "mid"
        progress = []
        run = run_study(tiny, ITEMS, ["direct", "babble"], out, limit=4, gen_config=FAST, batch_size=3,
                        progress=lambda d, t, e, m: progress.append((d, t, e, m)), cancel=lambda: len(progress) >= 3,
                        dataset_name="tiny-set")
        assert run.status == "cancelled" and len(run.table) == 2  # rows 0 and 1 of batch 0
        assert progress[0][:2] == (0, 8) and progress[-1][3] == "cancelled"
        assert all(e is None or e >= 0 for _, _, e, _ in progress)
        # A later batch size is ignored: the run keeps its own, so batches are the same.
        done = run_study(tiny, ITEMS, ["direct", "babble"], out, limit=4, gen_config=FAST, batch_size=5,
                         dataset_name="tiny-set")
        _same_runs(done, full_run)
        assert done.manifest["batch_size"] == 3

    def test_crash_leftovers_are_cleaned_on_resume(self, tiny, tmp_path, full_run):
        out = tmp_path / "crash"
        shutil.copytree(full_run.path, out)
        lines = (out / "items.jsonl").read_text().splitlines(keepends=True)
        # Crash while appending batch 2 (rows 6, 7): its shard exists, its records are half written.
        (out / "items.jsonl").write_text("".join(lines[:6]) + lines[6][:20])
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["status"] = "running"
        (out / "manifest.json").write_text(json.dumps(manifest))
        partial = load_run(out)
        assert len(partial.table) == 6 and partial.status == "running"
        done = run_study(tiny, ITEMS, ["direct", "babble"], out, limit=4, gen_config=FAST, batch_size=3,
                         dataset_name="tiny-set")
        _same_runs(done, full_run)

    def test_mismatching_study_is_refused(self, tiny, full_run):
        with pytest.raises(DataError, match="different study.*regimes"):
            run_study(tiny, ITEMS, ["direct"], full_run.path, limit=4, gen_config=FAST, batch_size=3)
        with pytest.raises(DataError, match="different study.*dataset_items_sha256"):
            run_study(tiny, ITEMS, ["direct", "babble"], full_run.path, limit=3, gen_config=FAST, batch_size=3)

    def test_non_run_folder_is_not_overwritten(self, tiny, tmp_path):
        (tmp_path / "notes.txt").write_text("mine")
        with pytest.raises(DataError, match="not a study run folder"):
            run_study(tiny, ITEMS, ["direct"], tmp_path, limit=1, gen_config=FAST)
        assert (tmp_path / "notes.txt").read_text() == "mine"


class TestInputs:
    def test_bad_arguments(self, tiny, tmp_path):
        with pytest.raises(DataError, match="Choose regimes"):
            run_study(tiny, ITEMS, ["chatty"], tmp_path / "a")
        with pytest.raises(DataError, match="limit must be at least 1"):
            run_study(tiny, ITEMS, ["direct"], tmp_path / "b", limit=0)
        with pytest.raises(DataError, match="no items"):
            run_study(tiny, [], ["direct"], tmp_path / "c")
        assert not (tmp_path / "a").exists()

    def test_dataset_outputs_are_graded_without_generating(self, tiny, tmp_path):
        items = [PromptItem("o1", "what is 12 plus 7", "19", kind="numeric", output="the answer is 19"),
                 PromptItem("o2", "what is 3 times 4", "12", kind="numeric", output="it is 13"),
                 PromptItem("o3", "what is the capital of france", "paris")]
        run = run_study(tiny, items, ["direct"], tmp_path / "given", generate=False)
        t = run.table
        assert t["output_source"].tolist() == ["dataset", "dataset", None]
        assert t["correct"].tolist() == [True, False, None]
        assert t["extracted_answer"].tolist()[:2] == ["19", "13"]
        assert t["n_generated_tokens"].isna().all() and t["mean_token_entropy_bits"].isna().all()
        assert summarize(run).loc[0, "n_graded"] == 2


    def test_prompt_plus_new_tokens_past_the_context_fails_before_any_work(self, tiny, tmp_path):
        long_q = " ".join(["what is the capital of france"] * 30)
        items = [ITEMS[1], PromptItem("long", long_q, "paris")]
        n_prompt = render(tiny.tokenizer, long_q, template_for("direct", "short_answer")).n_tokens
        assert n_prompt < tiny.max_context < n_prompt + 100  # the prompt fits; the answer would not
        with pytest.raises(DataError) as info:
            run_study(tiny, items, ["direct"], tmp_path / "ctx", gen_config=GenerationConfig(max_new_tokens=100))
        message = str(info.value)
        assert message.startswith("1 prompt(s) cannot be run") and "long (direct)" in message
        assert "max_new_tokens" in message and "\n" not in message
        assert not (tmp_path / "ctx").exists()
        given = [ITEMS[1], PromptItem("long", long_q, "paris", output="paris")]  # graded from its output: no generation
        run = run_study(tiny, given, ["direct"], tmp_path / "given", gen_config=GenerationConfig(max_new_tokens=100))
        assert run.table["output_source"].tolist() == ["generated", "dataset"]
        assert len(run_study(tiny, items, ["direct"], tmp_path / "states", generate=False).table) == 2

    @pytest.mark.parametrize("seed", [2**63 - 2, -1, "7"])
    def test_seed_range_of_the_rows_is_checked_before_any_work(self, tiny, tmp_path, seed):
        with pytest.raises(DataError, match="^Row r samples with seed \\+ r for 3 rows: The seed must be") as info:
            run_study(tiny, ITEMS[:3], ["direct"], tmp_path / "seed", gen_config=FAST, seed=seed)
        assert "\n" not in str(info.value) and not (tmp_path / "seed").exists()

    def test_last_row_may_use_the_largest_seed(self, tiny, tmp_path):
        run = run_study(tiny, ITEMS[:3], ["direct"], tmp_path / "top", gen_config=FAST, seed=2**63 - 3)
        assert len(run.table) == 3 and run.manifest["seed"] == 2**63 - 3

    def test_item_with_bad_alias_built_without_the_loader_fails_before_any_work(self, tiny, tmp_path):
        items = [ITEMS[1], PromptItem("bad", "what is the capital of italy", "rome", aliases=("ro\x00ma",))]
        with pytest.raises(DataError, match="bad \\(direct\\): An accepted alias contains a NUL character"):
            run_study(tiny, items, ["direct"], tmp_path / "alias", gen_config=FAST)
        assert not (tmp_path / "alias").exists()

    def test_states_beyond_float16_range_are_clipped_and_counted(self, tiny, tmp_path, monkeypatch):
        monkeypatch.setattr(runner_mod, "F16_MAX", 0.5)
        run = run_study(tiny, ITEMS[:2], ["direct"], tmp_path / "clip", generate=False)
        assert float(np.abs(run.hidden.astype(np.float32)).max()) == 0.5
        assert run.manifest["n_state_values_clipped"] > 0


class TestFolders:
    def test_sanitize_name(self):
        assert sanitize_name("../../etc/passwd") == "etc-passwd"
        assert sanitize_name("my run: v2") == "my-run-v2"
        assert sanitize_name("a..b") == "a.b"
        with pytest.raises(DataError, match="no usable characters"):
            sanitize_name("../")

    def test_runs_root_from_env_and_run_path_stays_inside(self, monkeypatch, tmp_path):
        monkeypatch.setenv("IC_RUNS_DIR", str(tmp_path))
        assert runs_root() == tmp_path
        assert run_path("../x/y") == tmp_path / "x-y"
        monkeypatch.delenv("IC_RUNS_DIR")
        assert str(runs_root()) == "runs"

    def test_list_runs_skips_damaged_folders(self, full_run, tmp_path):
        shutil.copytree(full_run.path, tmp_path / "good")
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "manifest.json").write_text("{")
        runs = list_runs(tmp_path)
        assert [r.name for r in runs] == ["good"]
        assert runs[0].n_rows_done == 8 and runs[0].regimes == ("direct", "babble")
        assert list_runs(tmp_path / "missing") == []

    def test_load_run_refuses_damaged_or_other_folders(self, full_run, tmp_path):
        with pytest.raises(DataError, match="has no manifest.json"):
            load_run(tmp_path)
        old = tmp_path / "old"
        shutil.copytree(full_run.path, old)
        m = json.loads((old / "manifest.json").read_text())
        (old / "manifest.json").write_text(json.dumps({**m, "format_version": 0}))
        with pytest.raises(DataError, match="format version 0"):
            load_run(old)
        (old / "manifest.json").write_text(json.dumps({**m, "kind": "something"}))
        with pytest.raises(DataError, match="not a study run folder"):
            load_run(old)
        (old / "manifest.json").write_text(json.dumps(m))
        shard = old / "states" / "shard-00001.npz"
        shard.write_bytes(b"PK\x03\x04 not really a zip")
        with pytest.raises(DataError, match="shard-00001.npz is damaged"):
            load_run(old)
        shard.unlink()
        with pytest.raises(DataError, match="states are missing"):
            load_run(old)
        (old / "items.jsonl").write_text("garbage\n" + (full_run.path / "items.jsonl").read_text())
        with pytest.raises(DataError, match="damaged at line 1"):
            load_run(old)

    def test_shards_are_plain_npz(self, full_run):
        with np.load(full_run.path / "states" / "shard-00000.npz", allow_pickle=False) as z:
            assert sorted(z.files) == ["hidden", "lens_entropy_bits", "rows"]
            assert z["rows"].tolist() == [0, 1, 2] and z["hidden"].dtype == np.float16


class TestRunRow:
    """The typed row of items.jsonl: exact round trip, typed validation, the table built from rows."""

    def test_round_trip_is_byte_identical_and_builds_the_loaded_table(self, full_run):
        """Every written line parses to a RunRow whose to_json() writes the same bytes; the table equals load_run's."""
        lines = (full_run.path / "items.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [RunRow.from_json(json.loads(line)) for line in lines]
        again = [json.dumps(r.to_json(), ensure_ascii=False, allow_nan=False) for r in rows]
        assert again == lines and [r.row for r in rows] == list(range(8))
        assert isinstance(rows[0].aliases, tuple) and isinstance(rows[0].to_json()["aliases"], list)
        assert rows[0].signal == "H_slot" and rows[0].answer_prefix == "the capital of france is"
        pd.testing.assert_frame_equal(table_from_rows(rows), full_run.table)

    def test_rows_written_with_the_old_h_int_bits_key_still_load(self, full_run):
        """Folders written before the rename (``h_int_bits`` even for H_slot rows) read it as readout_entropy_bits."""
        line = self._line(full_run)
        old = dict(line)
        old["h_int_bits"] = old.pop("readout_entropy_bits")
        old["h_int_top100_bits"] = old.pop("readout_entropy_top100_bits")
        row = RunRow.from_json(old)
        assert row == RunRow.from_json(line) and row.readout_entropy_bits == line["readout_entropy_bits"]
        assert "h_int_bits" not in row.to_json()

    def _line(self, full_run) -> dict:
        return json.loads((full_run.path / "items.jsonl").read_text(encoding="utf-8").splitlines()[0])

    @pytest.mark.parametrize(("key", "value", "message"), [
        ("correct", "yes", "'correct' must be true, false or null, got 'yes'"),
        ("row", True, "'row' must be an integer, got True"),
        ("row", "3", "'row' must be an integer, got '3'"),
        ("readout_entropy_bits", "2.5", "'readout_entropy_bits' must be a finite number or null"),
        ("readout_entropy_bits", float("nan"), "'readout_entropy_bits' must be a finite number or null, got nan"),
        ("top_tokens", [["a", 0.5, 1]], "'top_tokens' must be a list of \\[token, probability\\] pairs"),
        ("tags", ["ok", 3], "'tags' must be a list of texts"),
        ("signal", "H_other", "'signal' must be 'H_int' or 'H_slot'"),
    ])
    def test_wrong_types_are_refused_by_name(self, full_run, key, value, message):
        with pytest.raises(DataError, match=message):
            RunRow.from_json({**self._line(full_run), key: value})

    def test_missing_keys_and_non_objects_are_refused(self, full_run):
        line = self._line(full_run)
        del line["user_text"]
        with pytest.raises(DataError, match="lacks 'user_text'"):
            RunRow.from_json(line)
        with pytest.raises(DataError, match="must be a JSON object, got list"):
            RunRow.from_json([1, 2])
        extra = RunRow.from_json({**self._line(full_run), "later_key": 1})  # unknown keys are ignored
        assert "later_key" not in extra.to_json() and extra.to_json() == self._line(full_run)

    def test_a_mistyped_line_is_damage_except_as_the_torn_last_line(self, full_run, tmp_path):
        out = tmp_path / "typed"
        shutil.copytree(full_run.path, out)
        lines = (out / "items.jsonl").read_text(encoding="utf-8").splitlines()
        bad = json.dumps({**json.loads(lines[1]), "correct": "yes"})
        (out / "items.jsonl").write_text("\n".join([lines[0], bad, *lines[2:]]) + "\n", encoding="utf-8")
        with pytest.raises(DataError, match="damaged at line 2 \\('correct' must be true, false or null"):
            load_run(out)
        last = json.dumps({**json.loads(lines[7]), "correct": "yes"})
        (out / "items.jsonl").write_text("\n".join([*lines[:7], last]) + "\n", encoding="utf-8")
        rows, truncated = read_rows(out)
        assert truncated and sorted(rows) == list(range(7))

    def test_verdict_and_signal_labels(self):
        assert [verdict_label(v) for v in (True, False, None, np.bool_(True), math.nan)] == [
            "correct", "wrong", "not graded", "correct", "not graded"]
        assert readout_label(["H_slot", "H_slot"]) == "H_slot"
        assert readout_label(["H_int", "H_slot"]) == "mixed"
        assert readout_label(["H_int"]) == "H_int" and readout_label([]) == "H_int"

    def test_run_mtime_follows_the_newest_of_manifest_and_items(self, full_run, tmp_path):
        import os

        out = tmp_path / "m"
        shutil.copytree(full_run.path, out)
        os.utime(out / "manifest.json", (100.0, 100.0))
        os.utime(out / "items.jsonl", (200.0, 200.0))
        assert run_mtime(out) == 200.0 and list_runs(tmp_path)[0].mtime == 200.0
        (out / "items.jsonl").unlink()
        assert run_mtime(out) == 100.0
        assert run_mtime(tmp_path / "none") == 0.0


class TestRunTexts:
    """The short texts pages show about a run: state, picker label, ETA, header summary."""

    def test_status_label(self):
        assert status_label("running", True) == "in progress" and status_label("complete", True) == "in progress"
        assert status_label("running", False) == "interrupted"
        assert status_label("cancelled", False) == "cancelled" and status_label("complete", False) == "complete"

    def test_run_info_label(self, tmp_path):
        info = RunInfo("r1", tmp_path, "running", "", "HuggingFaceTB/SmolLM2-135M-Instruct", "caps", ("direct", "cot"),
                       3, 8, 0.0)
        assert info.label == "r1 · SmolLM2-135M-Instruct · direct,cot · 3/8 rows · interrupted"
        assert info.picker_label(writing=True) == "r1 · SmolLM2-135M-Instruct · direct,cot · being written (progress above)"
        done = dataclasses.replace(info, name="caps-direct-cot-n8", status="complete", n_rows_done=8)
        assert done.label == "caps-direct-cot-n8 · SmolLM2-135M-Instruct · 8 rows · complete"  # regimes in the name

    def test_eta_text(self):
        assert [eta_text(x) for x in (0.0, 42.4, 89.6, 90.0, 150.0)] == [
            "about 1 s left", "about 42 s left", "about 90 s left", "about 2 min left", "about 2 min left"]

    def test_summary_markdown_of_a_run(self, full_run):
        text = summary_markdown(full_run)
        lines = text.split("  \n")
        assert lines[0] == "**Model** tiny-llama" and lines[1] == "**Prompt set** tiny-set (n=4)"
        assert lines[2] == ("**Regimes** direct, babble · item answer prefixes (direct) used on 1 of 4 direct rows · "
                            "new tokens direct 3, babble 3")  # what the rows record: only i1 has a prefix
        assert lines[3].startswith("**Compute** ") and lines[3].endswith(" UTC")


def _synthetic_run(tmp_path, n_items=12, seed=0, constant_layer0=True) -> StudyRun:
    """A run built by hand (no model): 2 regimes, known H_int values."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_items):
        for regime, shift in (("direct", 0.0), ("cot", -1.0)):
            rows.append({"row": len(rows), "item_id": f"q{i}", "regime": regime, "correct": bool((i + (shift < 0)) % 3 == 0),
                         "readout_entropy_bits": 3.0 + shift + 0.1 * i + rng.normal(0, 0.2), "signal": "H_int"})
    table = pd.DataFrame(rows)
    table["readout_entropy_top100_bits"] = table["readout_entropy_bits"] - 0.5
    table["mean_token_entropy_bits"] = 1.0
    hidden = rng.normal(size=(len(rows), 4, 8)).astype(np.float16)
    if constant_layer0:
        hidden[:, 0, :] = 1.0
    lens = rng.normal(size=(len(rows), 3)).astype(np.float32)
    manifest = {"regimes": ["direct", "cot"], "n_layers": 3, "d_model": 8, "status": "complete", "n_rows_planned": len(rows)}
    return StudyRun(tmp_path, manifest, table, hidden, lens)


class TestComparison:
    def test_wilson_interval_known_values(self):
        lo, hi = wilson_interval(0, 10)
        assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
        lo, hi = wilson_interval(5, 10)
        assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
        assert wilson_interval(0, 0) is None

    def test_regime_comparison_values_and_paired_test(self, tmp_path):
        run = _synthetic_run(tmp_path)
        comp = regime_comparison(run, extra_columns={"Probe AUROC [95 % CI]": {"direct": "0.70 [0.6, 0.8]"}})
        per = comp.per_regime.set_index("regime")
        t = run.table
        direct = t[t["regime"] == "direct"]
        assert per.loc["direct", "accuracy"] == pytest.approx(direct["correct"].mean())
        lo, hi = wilson_interval(int(direct["correct"].sum()), 12)
        assert (per.loc["direct", "accuracy_ci_low"], per.loc["direct", "accuracy_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
        assert per.loc["direct", "dim_eff_rank_cap"] == 11
        assert 1.0 < per.loc["direct", "dim_eff_weighted_pr"] <= 8
        assert per.loc["direct", "Probe AUROC [95 % CI]"] == "0.70 [0.6, 0.8]" and pd.isna(per.loc["cot", "Probe AUROC [95 % CI]"])
        pair = comp.pairs.iloc[0]
        diff = t[t["regime"] == "cot"]["readout_entropy_bits"].to_numpy() - direct["readout_entropy_bits"].to_numpy()
        assert pair["n_pairs"] == 12 and pair["mean_diff_bits"] == pytest.approx(diff.mean())
        assert pair["p_value"] == pytest.approx(wilcoxon(diff).pvalue) and pair["p_value"] < 0.01
        table = comp.paper_table()
        assert list(table.columns) == ["direct", "cot"]
        assert table.loc["Probe AUROC [95 % CI]", "cot"] == "n/a"
        assert table.loc["dim_eff (weighted PR)", "direct"].endswith("(cap 11)")

    def test_pairs_need_enough_items(self, tmp_path):
        comp = regime_comparison(_synthetic_run(tmp_path, n_items=4))
        assert math.isnan(comp.pairs.iloc[0]["p_value"]) and "n too small" in comp.pairs.iloc[0]["note"]

    def test_dim_eff_marks_constant_layer_and_pca_refuses_it(self, tmp_path):
        run = _synthetic_run(tmp_path)
        dims = dim_eff_by_regime(run)
        assert dims["direct"].participation_ratio[0] is None and dims["direct"].rank_cap == 11
        table = dim_eff_table(dims)
        assert table["regime"].tolist() == ["direct", "cot"] and table["rank cap"].tolist() == [11, 11]
        assert table["weighted PR"].tolist() == [dims["direct"].weighted_participation_ratio,
                                                 dims["cot"].weighted_participation_ratio]
        with pytest.raises(DataError, match="identical for every item"):
            pca_of_layer(run, 0)
        p = pca_of_layer(run, 2)
        assert p.scores.shape == (24, 2) and 0 < p.explained_ratio.sum() <= 1
        with pytest.raises(DataError, match="out of range"):
            pca_of_layer(run, 9)

    def test_place_state_inside_and_outside(self, tmp_path):
        run = _synthetic_run(tmp_path)
        inside = place_state(run, run.hidden[3].astype(np.float32), layer=2)
        assert inside.nearest_row == 3 and inside.nearest_distance == pytest.approx(0.0, abs=1e-6)
        assert not inside.outside
        far = run.hidden[3].astype(np.float32) * 20
        outside = place_state(run, far, layer=2)
        assert outside.outside and outside.nn_percentile == 100.0 and outside.mahalanobis > inside.mahalanobis
        with pytest.raises(DataError, match="model the study used"):
            place_state(run, np.zeros((5, 8)), layer=2)
        with pytest.raises(DataError, match="Layer 0 is constant"):
            place_state(run, run.hidden[3], layer=0)

    def test_placed_study_row_is_on_the_plotted_pca_axes(self, tmp_path):
        """place_state and pca_of_layer share one PCA: a study row lands on its plotted scores, signs included."""
        run = _synthetic_run(tmp_path)
        rows = run.table.loc[run.table["regime"] == "cot", "row"].to_numpy()
        shown = pca_of_layer(run, 2, rows)
        for i in (0, 5):
            placed = place_state(run, run.hidden[rows[i]].astype(np.float32), layer=2, rows=rows)
            np.testing.assert_allclose(placed.point, shown.scores[i], rtol=0, atol=1e-12)
            np.testing.assert_allclose(placed.scores, shown.scores, rtol=0, atol=1e-12)
            assert placed.nearest_row == rows[i] and placed.nearest_distance == pytest.approx(0.0, abs=1e-12)
            assert placed.layer == 2


class TestCli:
    def test_map_and_kind_options_load_a_file_with_other_headers(self, tiny_dir, tmp_path, capsys):
        """Issue 17 item 2: --map / --kind / --kind-value do on the CLI what the Study page's mapping does."""
        from ic_core.cli import main

        data = tmp_path / "mine.csv"
        data.write_text("prompt,gold,type\nwhat is the capital of france,paris|paris france,short\n"
                        "what is 2 plus 2,4,math\n")
        out = tmp_path / "mapped"
        code = main(["study", "--data", str(data), "--map", "answer=gold", "--kind-value", "math=numeric",
                     "--map", "kind=type", "--regimes", "direct", "--out", str(out), "--model", str(tiny_dir),
                     "--max-new-tokens", "2", "--no-generate"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "columns: question ← prompt, answer ← gold" in captured.err
        items = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
        assert [(it["answer"], it["aliases"], it["kind"]) for it in items] == [
            ("paris", ["paris france"], "short_answer"), ("4", [], "numeric")]
        assert main(["study", "--data", str(data), "--map", "question", "--out", str(tmp_path / "x"),
                     "--model", str(tiny_dir)]) == 2
        assert "field=column" in capsys.readouterr().err

    def test_study_command_on_tiny_model(self, tiny_dir, tmp_path, capsys):
        from ic_core.cli import main

        data = tmp_path / "set.jsonl"
        data.write_text("\n".join(json.dumps(it.to_json()) for it in ITEMS[:3]) + "\n{broken\n")
        out = tmp_path / "cli-run"
        code = main(["study", "--data", str(data), "--regimes", "direct,babble", "--limit", "2", "--out", str(out),
                     "--model", str(tiny_dir), "--max-new-tokens", "2", "--batch-size", "2"])
        captured = capsys.readouterr()
        assert code == 0
        summary = json.loads(captured.out)
        assert summary["status"] == "complete" and summary["n_rows_done"] == 4 and summary["n_bad_rows"] == 1
        assert summary["dataset"] == "set" and [r["regime"] for r in summary["per_regime"]] == ["direct", "babble"]
        assert "skipped line 4" in captured.err and "[4/4]" in captured.err
        run = load_run(out)
        assert run.hidden.shape[0] == 4 and run.manifest["model"]["source"] == "local"

    def test_unknown_data_is_a_one_line_error(self, capsys):
        from ic_core.cli import main

        assert main(["study", "--data", "no-such-set"]) == 2
        assert "neither a bundled set" in capsys.readouterr().err


def test_module_constants():
    assert COT_MIN_NEW_TOKENS == 192 and MAX_LIMIT == 1000


@pytest.mark.model
def test_capitals_on_default_model(default_model, tmp_path):
    from ic_core.datasets import load_bundled

    items = load_bundled("capitals").items
    picks = [it for it in items if "well-known" in it.tags][:8]
    run = run_study(default_model, picks, ["direct"], tmp_path / "cap8", gen_config=GenerationConfig(max_new_tokens=16))
    assert run.status == "complete" and len(run.table) == 8
    assert run.hidden.shape == (8, 31, 576)
    acc = summarize(run).loc[0, "accuracy"]
    assert acc > 0
    assert (run.table["signal"] == "H_slot").all()


class TestResumeRunAndReport:
    def test_resume_run_uses_the_folders_own_items_and_settings(self, tiny, tmp_path, full_run):
        out = tmp_path / "part"
        run_study(tiny, ITEMS, ["direct", "babble"], out, limit=4, gen_config=FAST, batch_size=3,
                  cancel=lambda: (out / "states" / "shard-00000.npz").exists(), dataset_name="tiny-set")
        assert (out / "dataset.jsonl").read_text().count("\n") == 4
        done = resume_run(tiny, out)
        assert done.status == "complete"
        _same_runs(done, full_run)

    def test_resume_run_refuses_another_model(self, tiny, full_run, tmp_path):
        from ic_core.models import ModelSpec

        other = type(tiny)(ModelSpec(source="local", name="other"), tiny.model, tiny.tokenizer)
        with pytest.raises(DataError, match="load that model"):
            resume_run(other, full_run.path)

    def test_a_run_pins_its_weights_and_refuses_other_weights_on_resume(self, tiny, tmp_path):
        """Issue 11 case 6: rows from other weights never join a run that recorded its model's digest."""
        import dataclasses

        pinned = dataclasses.replace(tiny, weights_sha256="a" * 64)
        out = tmp_path / "pinned"
        run_study(pinned, ITEMS, ["direct"], out, limit=4, gen_config=FAST, batch_size=2, generate=False,
                  cancel=lambda: (out / "states" / "shard-00000.npz").exists())
        assert json.loads((out / "manifest.json").read_text())["model_weights_sha256"] == "a" * 64
        with pytest.raises(DataError, match="weights SHA-256 aaaaaaaaaaaaaaaa…, but the loaded model's weights are bbbb"):
            resume_run(dataclasses.replace(tiny, weights_sha256="b" * 64), out)
        with pytest.raises(DataError, match="weights are unknown"):
            run_study(tiny, ITEMS, ["direct"], out, limit=4, gen_config=FAST, batch_size=2, generate=False)
        assert resume_run(pinned, out).status == "complete"

    def test_html_report_is_self_contained_and_escaped(self, tiny, tmp_path):
        from ic_core.study.report import build_report

        items = [PromptItem(f"x{i}", q, "paris") for i, q in enumerate(
            ["what is <script>alert(1)</script> capital", "what is the capital of france", "what is 12 plus 7",
             "what is the capital of italy"])]
        run = run_study(tiny, items, ["direct", "babble"], tmp_path / "rep", generate=False)
        page = build_report(run, extra_sections=[("<Probe>", "<p id='probe'>AUROC 0.7</p>")])
        assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
        assert page.count("* plotly.js v") == 1  # the library is embedded exactly once
        assert page.count('class="plotly-graph-div"') == 5
        assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<h2>&lt;Probe&gt;</h2><p id='probe'>AUROC 0.7</p>" in page
        assert "<script src=" not in page and "<link " not in page  # nothing loaded from elsewhere


class TestLock:
    def _lock(self, folder, pid):
        import platform

        (folder / "run.lock").write_text(json.dumps({"pid": pid, "host": platform.node(), "started": "t"}))

    def test_a_live_writer_blocks_a_second_one(self, tiny, tmp_path, full_run):
        import os

        out = tmp_path / "locked"
        shutil.copytree(full_run.path, out)
        self._lock(out, os.getppid())  # a live process that is not this one
        assert run_in_progress(out) and list_runs(tmp_path)[0].in_progress
        with pytest.raises(DataError, match=f"being written by process {os.getppid()}"):
            run_study(tiny, ITEMS, ["direct", "babble"], out, limit=4, gen_config=FAST, batch_size=3,
                      dataset_name="tiny-set")
        assert len(load_run(out).table) == 8  # nothing was touched

    def test_stale_locks_are_ignored_and_removed(self, tiny, tmp_path, full_run):
        import os
        import subprocess

        out = tmp_path / "stale"
        shutil.copytree(full_run.path, out)
        proc = subprocess.Popen(["true"])
        proc.wait()
        self._lock(out, proc.pid)  # that process has exited
        assert not run_in_progress(out)
        run_study(tiny, ITEMS, ["direct", "babble"], out, limit=4, gen_config=FAST, batch_size=3, dataset_name="tiny-set")
        assert not (out / "run.lock").exists()
        self._lock(out, os.getpid())  # left by an interrupted thread of this process
        assert not run_in_progress(out)

    def test_lock_is_held_while_running(self, tiny, tmp_path):
        out = tmp_path / "live"
        seen = []
        run_study(tiny, ITEMS[:2], ["direct"], out, generate=False,
                  progress=lambda *a: seen.append(run_in_progress(out)))
        assert seen and all(seen) and not run_in_progress(out)

