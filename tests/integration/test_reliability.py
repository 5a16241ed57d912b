"""Reliability and security suite (issue #7): bad input, limits, concurrency, security, durability.

Everything runs on the tiny random Llama (milliseconds per forward pass).

Covered elsewhere, deliberately not repeated here:
  * grading never crashes on arbitrary output (tests/unit/test_grading.py, Hypothesis);
  * rendering never crashes on arbitrary text (tests/unit/test_prompts.py, Hypothesis);
  * the memory guard and IC_MEMORY_LIMIT_GB (tests/integration/test_models.py::test_memory_guard_refuses_a_model_too_big);
  * cancel/resume, a truncated last line of items.jsonl, a missing shard, format version 0
    (tests/integration/test_study.py::TestResume, ::TestFolders);
  * the audit log surviving a killed writer and concurrent writers (tests/unit/test_audit.py::TestDurability).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import make_tiny_model, make_tiny_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ic_core.study.runner as runner_mod
from ic_core import datasets
from ic_core.analysis import analyze
from ic_core.datasets import FIELDS, LoadResult, PromptItem, items_jsonl, load_items
from ic_core.errors import DataError, ModelLoadError, PromptError
from ic_core.generate import MAX_NEW_TOKENS_LIMIT, GenerationConfig, generate
from ic_core.io import atomic_write_json
from ic_core.models import ModelSpec, from_objects, load_model
from ic_core.prompts import MAX_PROMPT_CHARS, clean_prompt, custom_template
from ic_core.runs.lock import run_in_progress
from ic_core.runs.store import (
    FORMAT_VERSION,
    default_run_name,
    list_runs,
    load_run,
    run_path,
    sanitize_name,
)
from ic_core.study.runner import run_study

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
STUDY_PAGE = "pages/3_Study.py"
SOURCE_DIRS = ("ic_core", "ui", "pages")
FAST = GenerationConfig(max_new_tokens=3)
VOLATILE = ["generate_s"]
ITEMS = (
    PromptItem("i1", "what is the capital of france ?", "paris", kind="short_answer",
               answer_prefix="the capital of france is"),
    PromptItem("i2", "what is the capital of germany ?", "berlin", kind="short_answer"),
    PromptItem("i3", "what is 12 plus 7 ?", "19", kind="numeric"),
    PromptItem("i4", "what is the capital of italy ?", "rome", aliases=("roma",), kind="short_answer"),
    PromptItem("i5", "what is 3 times 4 ?", "12", kind="numeric"),
    PromptItem("i6", "what is 10 minus 4 ?", "6", kind="numeric"),
)


# ---------------------------------------------------------------- helpers and fixtures


class _Payload:
    """Pickles to a call of os.mkdir(marker): proof of code execution if it is ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def shared():
    """A LoadedModel of its own (same weights as ``tiny``), so hooks added here never leak into other tests."""
    tokenizer = make_tiny_tokenizer()
    return from_objects(make_tiny_model(len(tokenizer)), tokenizer, name="tiny-llama")


@pytest.fixture(scope="module")
def plain(shared):
    """The same weights behind a tokenizer without a chat template."""
    return from_objects(shared.model, make_tiny_tokenizer(chat_template=None), name="tiny-plain")


@pytest.fixture(scope="module")
def reference_run(shared, tmp_path_factory):
    """6 items, direct regime, batches of 2, uninterrupted: what every interrupted run must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "full"
    return run_study(shared, ITEMS, ["direct"], out, gen_config=FAST, batch_size=2, dataset_name="rel")


def _rerun(model, out: Path):
    """The same study as ``reference_run`` in another folder (resumes it when it exists)."""
    return run_study(model, ITEMS, ["direct"], out, gen_config=FAST, batch_size=2, dataset_name="rel")


def _same_runs(a, b) -> None:
    pd.testing.assert_frame_equal(a.table.drop(columns=VOLATILE), b.table.drop(columns=VOLATILE))
    np.testing.assert_array_equal(a.hidden, b.hidden)
    np.testing.assert_array_equal(a.lens_entropy_bits, b.lens_entropy_bits)


def _jsonl(*rows: object) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode("utf-8")


def _app(model, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["_injected_model"] = model
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


# ---------------------------------------------------------------- 1. bad input


class TestBadPrompts:
    """Typed or uploaded prompts that cannot be analysed get one PromptError that says why."""

    @pytest.mark.parametrize(("question", "message"), [
        ("", "empty"),
        ("  \n\t \r\n ", "empty"),
        ("\x00\x01\x02 what", "control character"),
        ("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "control character"),
        ("what is \x1b[31m red", "control character"),
        ("x" * (MAX_PROMPT_CHARS + 1), f"limit is {MAX_PROMPT_CHARS:,}"),
    ])
    def test_unusable_prompt_is_refused_with_the_reason(self, shared, question, message):
        """Empty, whitespace-only, binary and over-long prompts raise PromptError naming the problem."""
        with pytest.raises(PromptError, match=message):
            analyze(shared, question)

    def test_prompt_beyond_the_model_context_is_refused_before_the_forward_pass(self, shared):
        """A prompt under the character limit but over the model's 256 positions is refused, with both numbers."""
        question = "what " * 300
        assert len(question) < MAX_PROMPT_CHARS
        context = shared.model.config.max_position_embeddings
        with pytest.raises(PromptError, match=rf"tokens but the model reads at most {context:,}\. Shorten it"):
            analyze(shared, question)

    def test_prompt_just_inside_the_context_still_works(self, shared):
        """The context check is not off by one: a prompt that fits is analysed."""
        analysis = analyze(shared, "what " * 200, kind="free_text")
        assert analysis.rendered.n_tokens <= shared.model.config.max_position_embeddings
        assert 0.0 < analysis.state.readout_entropy_bits <= math.log2(shared.vocab_size)

    def test_lone_surrogate_is_a_prompt_error(self, shared):
        """A lone UTF-16 surrogate (e.g. from a JSON '\\ud800' escape) is refused as not text."""
        with pytest.raises(PromptError):
            analyze(shared, "\ud800 what is 2 plus 2 ?")

    def test_model_without_chat_template_still_analyses_and_generates(self, plain, shared):
        """No chat template: plain text is read, chat_template_used is False, and H_int/generation work."""
        question = "what is the capital of france ?"
        a = analyze(plain, question, kind="short_answer", do_generate=True, gen_config=GenerationConfig(max_new_tokens=4))
        assert a.rendered.chat_template_used is False and plain.has_chat_template is False
        assert a.rendered.text.endswith(f"\n\nQ: {question}\nA:")  # the few-shot plain-text form (issue 13)
        assert "<|im_start|>" not in a.rendered.tokens
        assert 0.0 < a.state.readout_entropy_bits <= math.log2(plain.vocab_size)
        assert 1 <= len(a.generation.token_ids) <= 4
        chat = analyze(shared, question, kind="short_answer")
        assert chat.rendered.chat_template_used is True and "<|im_start|>" in chat.rendered.tokens

    def test_study_on_a_model_without_chat_template_records_it(self, plain, tmp_path):
        """A study runs on such a model and its manifest says no chat template was used."""
        run = run_study(plain, ITEMS[:3], ["direct"], tmp_path / "plain", gen_config=FAST)
        assert run.manifest["chat_template_used"] is False and len(run.table) == 3
        assert run.hidden.shape == (3, plain.n_layers + 1, plain.d_model)

    @pytest.mark.parametrize(("data", "message"), [
        ("what is 2 ?".encode("utf-16"), "binary"),
        (b"\xef\xbb\xbf", "empty"),
        (b"first line ok\n" + "caf\u00e9 latin-1".encode("latin-1"), "not UTF-8"),
        (b"\r\n\r\n\t", "empty"),
    ])
    def test_explore_upload_refuses_other_encodings(self, data, message):
        """The Explore upload refuses UTF-16, a bare BOM, mixed encodings and blank files with the reason."""
        from ui.common import read_text_upload

        with pytest.raises(PromptError, match=message):
            read_text_upload("bad.txt", data)


class TestBadModelIds:
    """Unknown, unreachable or malformed model ids fail fast with ModelLoadError that says what to do."""

    @pytest.mark.parametrize("name", [
        "no-such-org/no-such-model",
        "org/model with spaces",
        "a/b/c/d",
        "https://evil.example/model",
        "bad\x00id",
    ])
    def test_hub_ids_not_in_the_cache(self, name):
        """Offline, a hub id that is not cached is refused at once with the download command."""
        with pytest.raises(ModelLoadError, match="huggingface-cli download|local folder"):
            load_model(ModelSpec.parse(name))

    @pytest.mark.parametrize(("files", "message"), [
        ({}, "model_type"),
        ({"config.json": "{not json"}, "not a valid JSON"),
        ({"config.json": json.dumps({"model_type": "no-such-architecture"})}, "no-such-architecture"),
        ({"config.json": json.dumps({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100})},
         "tokenizer"),
    ])
    def test_broken_local_folders(self, tmp_path, files, message):
        """Empty folder, garbage config, unknown architecture, no tokenizer: ModelLoadError with the cause."""
        folder = tmp_path / "model"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        with pytest.raises(ModelLoadError, match=message):
            load_model(ModelSpec.parse(str(folder)))

    def test_a_file_or_missing_path_is_not_a_model_folder(self, tmp_path):
        """A plain file or a relative path that does not exist is refused by name."""
        (tmp_path / "notes.txt").write_text("hi")
        with pytest.raises(ModelLoadError, match="does not exist"):
            ModelSpec.parse(str(tmp_path / "notes.txt"))
        with pytest.raises(ModelLoadError, match="does not exist"):
            ModelSpec.parse("./no/such/model/folder")

    def test_overlong_model_name_is_a_model_load_error(self):
        """A 300-character id is refused as a model that cannot be loaded, not with OSError."""
        with pytest.raises(ModelLoadError):
            load_model(ModelSpec.parse("x" * 300))

    @pytest.mark.app
    def test_overlong_model_name_in_the_sidebar_is_an_error_not_a_crash(self, shared, monkeypatch):
        """An allow-listed 300-character hub id picked in the sidebar shows an error; the page still renders."""
        name = "hub:" + "x" * 300
        monkeypatch.setenv("IC_ALLOW_MODEL_SWITCH", "1")
        monkeypatch.setenv("IC_MODEL_ALLOWLIST", name)
        at = _app(shared)
        at.sidebar.selectbox(key="sb_model").set_value(name).run()
        at.sidebar.button[0].click()
        del at.session_state["_injected_model"]
        at.run()
        assert not at.exception
        assert [t.value for t in at.title] == ["Explore a prompt"]
        assert "Model not loaded" in _errors(at)


class TestBadUploads:
    """Prompt-set uploads: every malformed file or row gets a message; good rows are kept; nothing else is raised."""

    @pytest.mark.parametrize(("data", "fmt"), [
        pytest.param(b"", "csv", id="csv-empty"),
        pytest.param(b"", "jsonl", id="jsonl-empty"),
        pytest.param(b"  \n\t\n", "jsonl", id="jsonl-whitespace"),
        pytest.param(b"question,answer\n", "csv", id="csv-header-only"),
    ])
    def test_file_without_data_rows_says_it_is_empty(self, data, fmt):
        """A file with no data rows is refused with a message that says so."""
        with pytest.raises(DataError, match="empty|no data rows"):
            load_items(data, fmt=fmt)

    def test_utf16_files(self):
        """UTF-16 (Excel 'Unicode text'): CSV refused as not UTF-8; JSONL rows reported, nothing raised."""
        text = "question,answer\nwhat is 2,2\n"
        with pytest.raises(DataError, match="not UTF-8.*Save it as UTF-8"):
            load_items(text.encode("utf-16"), fmt="csv")
        result = load_items('{"question": "what is 2"}\n'.encode("utf-16"), fmt="jsonl")
        assert result.items == () and "Not UTF-8" in result.errors[0].message

    def test_pretty_printed_json_is_reported_line_by_line(self):
        """A .json document spread over lines (not JSON Lines) is rejected row by row, not with a crash."""
        data = json.dumps([{"question": "what is 2"}], indent=2).encode()
        result = load_items(data)
        assert result.items == () and result.errors[0].line == 1 and "Not valid JSON" in result.errors[0].message

    @pytest.mark.parametrize(("row", "message"), [
        ({"question": "   "}, "empty"),
        ({"question": None, "answer": "1"}, "Missing question"),
        ({"question": ["a", "b"]}, "'question' must be text, got list"),
        ({"question": {"text": "a"}}, "'question' must be text, got dict"),
        ({"question": "q", "id": True}, "'id' must be text, got true/false"),
        ({"question": "q", "choices": "a|b"}, "'choices' must be a list"),
        ({"question": "q", "aliases": [["x"]]}, "must contain only strings"),
        ({"question": "q", "tags": [1, 2]}, "must contain only strings"),
        ({"question": "q", "choices": [f"c{i}" for i in range(27)]}, "at most 26"),
        ({"question": "q", "choices": ["only one"], "kind": "multiple_choice"}, "at least two choices"),
        ({"question": "q", "choices": ["a", "b"], "answer": "neither"}, "neither an option letter"),
        ({"question": "q", "kind": "../../etc/passwd"}, "Unknown kind"),
        ({"question": "a\u0007b"}, "control character"),
        ({"question": "x" * (MAX_PROMPT_CHARS + 1)}, f"limit is {MAX_PROMPT_CHARS:,}"),
    ])
    def test_wrong_types_and_values_are_row_errors(self, row, message):
        """Each bad row is reported with its line and reason while the good row after it is kept."""
        result = load_items(_jsonl(row, {"id": "good", "question": "what is 2 plus 2 ?", "answer": 4}))
        assert [it.id for it in result.items] == ["good"]
        assert len(result.errors) == 1 and result.errors[0].line == 1
        assert message in result.errors[0].message

    def test_duplicate_ids_across_types(self):
        """Ids 1 (number) and "1" (text) are the same id: the second row is dropped and named."""
        result = load_items(_jsonl({"id": 1, "question": "a ?"}, {"id": "1", "question": "b ?"}))
        assert [it.id for it in result.items] == ["1"]
        assert "Duplicate id '1' (first used on line 1)" in result.errors[0].message

    @pytest.mark.parametrize(("data", "line", "message"), [
        (b"question,answer\nwhat\x00is,1\nfine ?,2\n", 2, "control character"),
        (b"question\n" + b"x" * 200_000 + b"\nfine ?\n", 2, "Unreadable CSV row"),
        (b'question,answer\n"unterminated,1\nfine ?,2\n', 2, "cells but the header has 2"),
    ])
    def test_csv_row_problems(self, data, line, message):
        """NUL bytes, a field beyond the csv module's limit and a broken quote are row errors."""
        result = load_items(data, fmt="csv")
        assert result.errors[0].line == line and message in result.errors[0].message

    def test_csv_with_old_mac_line_endings_is_read(self):
        """CR-only line endings are line endings, not one giant row."""
        result = load_items(b"question,answer\rwhat is 2,2\rwhat is 3,3\r", fmt="csv")
        assert [it.answer for it in result.items] == ["2", "3"] and result.ok

    def test_csv_header_with_repeated_names(self):
        """Two columns with the same name are refused: which one would be the question?"""
        with pytest.raises(DataError, match="repeats column name.*question"):
            load_items(b"question,question\na,b\n", fmt="csv")

    def test_column_map_to_a_column_that_is_not_there(self):
        """Mapping question to a missing column reports the missing field and the columns found."""
        with pytest.raises(DataError, match="Missing required column.*question.*Found: prompt"):
            load_items(_jsonl({"prompt": "a ?"}), column_map={"question": "text"})

    def test_deeply_nested_json_line_is_a_row_error(self):
        """A line of 100,000 nested brackets is one bad row, not a RecursionError."""
        result = load_items(b"[" * 100_000 + b"\n" + _jsonl({"question": "fine ?"}))
        assert [it.question for it in result.items] == ["fine ?"] and result.errors[0].line == 1

    def test_huge_integer_is_a_row_error(self):
        """An answer of 5,000 digits is one bad row, not a ValueError."""
        result = load_items(b'{"question": "q ?", "answer": ' + b"9" * 5000 + b"}\n" + _jsonl({"question": "fine ?"}))
        assert [it.question for it in result.items] == ["fine ?"] and result.errors[0].line == 1

    @pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
    def test_non_finite_numbers_are_row_errors(self, value):
        """A non-finite number where an answer or id is expected is a bad row."""
        result = load_items(f'{{"question": "q ?", "answer": {value}}}\n'.encode())
        assert result.items == () and len(result.errors) == 1

    def test_lone_surrogate_question_is_a_row_error(self):
        """A question holding a lone surrogate is rejected at upload, before any study runs."""
        result = load_items(b'{"question": "\\ud800 hi"}\n' + _jsonl({"question": "fine ?"}))
        assert [it.question for it in result.items] == ["fine ?"] and result.errors[0].line == 1

    @pytest.mark.app
    @pytest.mark.parametrize(("name", "message"), [("bin.csv", "not UTF-8"), ("bin.jsonl", "rejected")])
    def test_binary_upload_on_the_study_page(self, shared, runs_dir, name, message):
        """A PNG uploaded as a prompt set is refused with a message on the Study page; no exception."""
        at = _app(shared)
        at.switch_page(STUDY_PAGE).run()
        at.radio(key="keep:study.source").set_value("Upload CSV / JSONL").run()
        png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\xff\xfe\n\x80\x81"
        at.file_uploader(key="study_upload").upload(name, png, "application/octet-stream").run()
        assert not at.exception, at.exception
        shown = _errors(at) + " | " + " | ".join(w.value for w in at.warning)
        assert message in shown


def _check_load_result(result: LoadResult) -> None:
    """Invariants of every successful parse: counts add up, ids unique, questions clean, round trip exact."""
    assert isinstance(result, LoadResult)
    assert result.n_rows == len(result.items) + len(result.errors)
    ids = [it.id for it in result.items]
    assert len(ids) == len(set(ids))
    assert all(it.question == clean_prompt(it.question) for it in result.items)
    lines = [e.line for e in result.errors]
    assert lines == sorted(lines) and all(n >= 1 for n in lines)
    if result.items:
        again = load_items(items_jsonl(result.items).encode("utf-8"))
        assert again.ok and again.items == result.items


def _parse_or_refuse(data: bytes, fmt: str) -> None:
    try:
        result = load_items(data, fmt=fmt)
    except DataError as exc:
        assert str(exc)  # a message, never an empty error
        return
    _check_load_result(result)


_CELL = st.text(alphabet=st.sampled_from(list("ab 1?,;\t\"|\n\r\x00é") + ["\ufeff"]), max_size=12)
_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
_ROW = st.dictionaries(st.sampled_from(FIELDS + ("note", "extra")), _JSON_VALUE, max_size=6)


class TestUploadParserProperties:
    """Hypothesis: load_items on arbitrary input returns a consistent LoadResult or raises DataError, nothing else."""

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.binary(max_size=600), fmt=st.sampled_from(["jsonl", "csv"]))
    def test_arbitrary_bytes(self, data, fmt):
        """Random bytes as a JSONL or CSV upload."""
        _parse_or_refuse(data, fmt)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(header=st.lists(st.sampled_from(FIELDS + ("prompt", "x", "")), min_size=1, max_size=5),
           rows=st.lists(st.lists(_CELL, max_size=6), max_size=6),
           sep=st.sampled_from([",", ";", "\t"]), newline=st.sampled_from(["\n", "\r\n", "\r"]))
    def test_csv_like_text(self, header, rows, sep, newline):
        """CSV-ish text: field names, ragged rows, quotes, separators, NULs and BOMs in cells."""
        text = newline.join(sep.join(cells) for cells in [header, *rows]) + newline
        _parse_or_refuse(text.encode("utf-8"), "csv")

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rows=st.lists(_ROW | _JSON_VALUE, max_size=6), cut=st.integers(0, 40))
    def test_json_lines(self, rows, cut):
        """JSON lines of field-shaped objects with values of any JSON type, the last line possibly cut short."""
        data = _jsonl(*[json.dumps(r) for r in rows])
        if cut and len(data) > cut:
            data = data[:-cut]
        _parse_or_refuse(data, "jsonl")


class TestUnparseableAnswers:
    """Outputs with nothing answer-like are graded wrong (extracted None) and kept, never an exception."""

    def test_dataset_outputs_that_cannot_be_parsed(self, shared, tmp_path):
        """A study grading given outputs: shrug, empty, binary junk, refusal, a 5,000-digit number."""
        outputs = ["¯\\_(ツ)_/¯", "", "\x00\x01\x02", "I will not answer that.", "9" * 5000]
        items = [PromptItem(f"o{i}", f"what is {i} plus {i} ?", str(2 * i), kind="numeric", output=o)
                 for i, o in enumerate(outputs)]
        run = run_study(shared, items, ["direct"], tmp_path / "unparseable", generate=False)
        t = run.table
        assert len(t) == len(outputs) and t["output_source"].tolist() == ["dataset"] * len(outputs)
        assert t["correct"].tolist() == [False] * len(outputs)
        assert t["extracted_answer"].tolist() == [None] * len(outputs)
        assert t["output_text"].tolist() == outputs


class TestDamagedRunFolders:
    """Run folders from another format, half-written or tampered with: DataError naming the problem, or a loadable run."""

    def _copy(self, reference_run, tmp_path) -> Path:
        out = tmp_path / "copy"
        shutil.copytree(reference_run.path, out)
        return out

    @pytest.mark.parametrize(("change", "message"), [
        ({"format_version": FORMAT_VERSION + 1}, f"format version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"),
        ({"format_version": str(FORMAT_VERSION)}, "format version '1'"),
        ({"format_version": None}, "format version None"),
        ({"kind": "ic_core.policy"}, "not a study run folder"),
        ({"regimes": None}, "lacks 'regimes'"),
    ])
    def test_unknown_format_or_kind(self, reference_run, tmp_path, change, message):
        """A newer, older, string or missing format version, another kind, a missing key: refused by name."""
        out = self._copy(reference_run, tmp_path)
        manifest = json.loads((out / "manifest.json").read_text())
        manifest.update(change)
        manifest = {k: v for k, v in manifest.items() if not (k == "regimes" and v is None)}
        (out / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DataError, match=message):
            load_run(out)
        assert list_runs(tmp_path) == []  # skipped in the saved-runs list, not an error there

    @pytest.mark.parametrize("content", [b"", b'{"kind": "ic_core.study_run", "format', b"\xff\xfe{}", b"[1, 2]"])
    def test_manifest_cut_short_or_not_an_object(self, reference_run, tmp_path, content):
        """A manifest that is empty, cut mid-write, not UTF-8 or not an object: 'damaged' or 'not a run'."""
        out = self._copy(reference_run, tmp_path)
        (out / "manifest.json").write_bytes(content)
        with pytest.raises(DataError, match="damaged|not a study run folder"):
            load_run(out)

    def test_shard_of_another_shape(self, reference_run, tmp_path):
        """A shard whose states do not match the manifest's L and d is refused with both shapes."""
        out = self._copy(reference_run, tmp_path)
        np.savez(out / "states" / "shard-00000.npz", rows=np.array([0, 1]), hidden=np.zeros((2, 3, 5), np.float16),
                 lens_entropy_bits=np.zeros((2, 2), np.float32))
        with pytest.raises(DataError, match="shard-00000.npz has shapes"):
            load_run(out)

    def test_items_file_missing_entirely(self, shared, reference_run, tmp_path):
        """Without items.jsonl the run opens with no rows, and running it again restores every row."""
        out = self._copy(reference_run, tmp_path)
        (out / "items.jsonl").unlink()
        assert len(load_run(out).table) == 0
        _same_runs(_rerun(shared, out), reference_run)


# ---------------------------------------------------------------- 2. limits


class TestLimits:
    """Every limit refuses with a message that says how to change it (memory guard: see tests/integration/test_models.py)."""

    def test_upload_size_limit_names_both_settings(self, tmp_path):
        """One byte over MAX_UPLOAD_BYTES (bytes or a file path): the message names the constant and maxUploadSize."""
        data = b"x" * (datasets.MAX_UPLOAD_BYTES + 1)
        for source in (data, tmp_path / "big.jsonl"):
            if isinstance(source, Path):
                source.write_bytes(data)
            with pytest.raises(DataError, match=r"the limit is 5\.2 MB.*ic_core\.datasets\.MAX_UPLOAD_BYTES.*maxUploadSize"):
                load_items(source)
        with pytest.raises(DataError, match="MAX_UPLOAD_BYTES"):
            datasets.csv_headers(data)

    def test_upload_at_the_size_limit_is_accepted(self):
        """Exactly MAX_UPLOAD_BYTES is still read (padding with blank lines)."""
        head, tail = b'{"question": "what is 2 ?"', b"}\n"
        data = head + b" " * (datasets.MAX_UPLOAD_BYTES - len(head) - len(tail)) + tail
        assert len(data) == datasets.MAX_UPLOAD_BYTES and len(load_items(data).items) == 1

    @pytest.mark.parametrize("fmt", ["jsonl", "csv"])
    def test_row_limit_at_its_default(self, fmt):
        """MAX_ROWS rows load; one more is refused with the constant named (JSONL and CSV)."""
        n = datasets.MAX_ROWS
        if fmt == "jsonl":
            make = lambda k: b"".join(b'{"question": "q %d ?"}\n' % i for i in range(k))  # noqa: E731
        else:
            make = lambda k: b"question\n" + b"".join(b"q %d ?\n" % i for i in range(k))  # noqa: E731
        assert len(load_items(make(n), fmt=fmt).items) == n
        with pytest.raises(DataError, match=rf"more than {n:,} rows.*ic_core\.datasets\.MAX_ROWS"):
            load_items(make(n + 1), fmt=fmt)

    @pytest.mark.app
    def test_items_per_study_in_the_app(self, shared, runs_dir, monkeypatch):
        """The Study page caps the item limit at study.MAX_LIMIT, says the CLI has no cap, and clamps a larger value."""
        monkeypatch.setattr(runner_mod, "MAX_LIMIT", 4)
        at = _app(shared, **{"keep:study.limit": 50})
        at.switch_page(STUDY_PAGE).run()
        limit = at.number_input(key="keep:study.limit")
        assert limit.value == 4 and limit.proto.max == 4
        assert "at most 4 here" in limit.proto.help and "the CLI has no cap" in limit.proto.help
        assert at.number_input(key="keep:study.max_new").proto.max == MAX_NEW_TOKENS_LIMIT
        assert at.number_input(key="max_new_tokens").proto.max == MAX_NEW_TOKENS_LIMIT  # sidebar

    def test_the_engine_has_no_item_cap(self, shared, tmp_path, monkeypatch):
        """The app cap is not an engine cap: run_study takes more items than MAX_LIMIT."""
        monkeypatch.setattr(runner_mod, "MAX_LIMIT", 2)
        run = run_study(shared, ITEMS, ["direct"], tmp_path / "many", generate=False)
        assert len(run.table) == len(ITEMS) > runner_mod.MAX_LIMIT

    def test_max_new_tokens_bounds(self):
        """1 and MAX_NEW_TOKENS_LIMIT are accepted; 0 and one more are refused with the range."""
        assert GenerationConfig(max_new_tokens=1).max_new_tokens == 1
        assert GenerationConfig(max_new_tokens=MAX_NEW_TOKENS_LIMIT).max_new_tokens == MAX_NEW_TOKENS_LIMIT
        for bad in (0, -5, MAX_NEW_TOKENS_LIMIT + 1):
            with pytest.raises(PromptError, match=f"between 1 and {MAX_NEW_TOKENS_LIMIT}; got {bad}"):
                GenerationConfig(max_new_tokens=bad)

    def test_max_new_tokens_message_says_how_to_raise_it(self):
        """The refusal names ic_core.generate.MAX_NEW_TOKENS_LIMIT."""
        with pytest.raises(PromptError, match=r"ic_core\.generate\.MAX_NEW_TOKENS_LIMIT"):
            GenerationConfig(max_new_tokens=MAX_NEW_TOKENS_LIMIT + 1)

    def test_prompt_length_boundary(self):
        """MAX_PROMPT_CHARS characters are accepted; one more is refused with both numbers."""
        assert len(clean_prompt("x" * MAX_PROMPT_CHARS)) == MAX_PROMPT_CHARS
        with pytest.raises(PromptError, match=f"{MAX_PROMPT_CHARS + 1:,} characters; the limit is {MAX_PROMPT_CHARS:,}"):
            clean_prompt("x" * (MAX_PROMPT_CHARS + 1))

    def test_prompt_length_message_says_how_to_raise_it(self):
        """The refusal names ic_core.prompts.MAX_PROMPT_CHARS."""
        with pytest.raises(PromptError, match=r"ic_core\.prompts\.MAX_PROMPT_CHARS"):
            clean_prompt("x" * (MAX_PROMPT_CHARS + 1))

    def test_streamlit_upload_limit_matches_the_app_limit(self):
        """server.maxUploadSize (MiB) equals MAX_UPLOAD_BYTES, so the app's own message covers every size it lets through."""
        config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
        assert config["server"]["maxUploadSize"] * 2**20 == datasets.MAX_UPLOAD_BYTES


# ---------------------------------------------------------------- 3. concurrency


@dataclass
class _Session:
    question: str
    readout_entropy_bits: float
    shown_h_int: str
    generated_ids: tuple[int, ...]
    generated_text: str
    label: str
    start: float
    end: float


class _ForwardCounter:
    """Forward hooks counting how many forward passes of one model run at the same moment."""

    def __init__(self, model):
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self._lock = threading.Lock()
        self._handles = [model.register_forward_pre_hook(self._enter), model.register_forward_hook(self._leave)]

    def _enter(self, *_):
        with self._lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)

    def _leave(self, *_):
        with self._lock:
            self.active -= 1

    def remove(self):
        for h in self._handles:
            h.remove()


def _explore_session(model, question: str, max_new_tokens: int, barrier: threading.Barrier | None = None) -> _Session:
    """One browser session: open the app, type a question, read the state, generate."""
    from ui.common import EXPLORE_KEYS, EXPLORE_RESULT_KEY

    at = _app(model, max_new_tokens=max_new_tokens)
    if barrier is not None:
        barrier.wait(timeout=120)
    start = time.perf_counter()
    at.text_area(key=EXPLORE_KEYS["question"]).input(question)
    at.button(key="explore_read_btn").click().run()
    assert not at.exception and not at.error, (at.exception, _errors(at))
    at.button(key="explore_generate_btn").click().run()
    assert not at.exception and not at.error, (at.exception, _errors(at))
    end = time.perf_counter()
    result = at.session_state[EXPLORE_RESULT_KEY]
    assert result["inputs"]["question"] == question
    shown = {m.label: m.value for m in at.metric}
    return _Session(question, result["analysis"].state.readout_entropy_bits, shown["H_int (bits)"],
                    tuple(result["generation"].token_ids), result["generation"].text, result["analysis"].model_label,
                    start, end)


QUESTIONS = (
    "what is the capital of france ?",
    "what is the capital of italy ?",
    "what is 3 plus 4 ?",
    "write a few sentences about rome",
    "what is 12 times 7 ?",
)


@pytest.fixture
def apptests_in_threads(monkeypatch):
    """Let several AppTest instances run at once, the way one Streamlit server serves several sessions.

    AppTest was written for one session at a time; three of its process-wide shortcuts would make
    concurrent AppTests fail where the real server does not:

    * each run installs its own mock ``Runtime`` singleton and sets it back to None when it ends,
      so a session still running would find no runtime. The server has one runtime for its whole
      life, so ``Runtime.instance()`` here falls back to the last runtime installed.
    * each run patches ``streamlit.config.get_option`` (``global.appTest``) and unpatches it when
      it ends, which undoes the patch of a run still going. Here the option is set once for the test.
    * each run compiles the page scripts with a cache of its own, so concurrent runs call
      ``ast.parse`` from several threads, which CPython 3.11.7 does not survive (gh-106905,
      "AST constructor recursion depth mismatch"). The server's single ScriptCache holds a lock
      while compiling, so compilation is serialised here too.

    Nothing else is serialised: the page scripts, and the model calls in them, run concurrently.
    """
    import contextlib

    from streamlit import config
    from streamlit.runtime import Runtime
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test
    from streamlit.testing.v1.util import build_mock_config_get_option

    compile_lock = threading.Lock()
    last_runtime: list = []
    original_get_bytecode = ScriptCache.get_bytecode

    def get_bytecode(self, script_path):
        with compile_lock:
            return original_get_bytecode(self, script_path)

    def instance(cls):
        if cls._instance is not None:
            last_runtime[:] = [cls._instance]
            return cls._instance
        if last_runtime:
            return last_runtime[0]
        raise RuntimeError("Runtime hasn't been created!")

    monkeypatch.setattr(config, "get_option", build_mock_config_get_option({"global.appTest": True}))
    monkeypatch.setattr(app_test, "patch_config_options", lambda overrides: contextlib.nullcontext())
    monkeypatch.setattr(ScriptCache, "get_bytecode", get_bytecode)
    monkeypatch.setattr(Runtime, "instance", classmethod(instance))
    monkeypatch.setattr(Runtime, "exists", classmethod(lambda cls: cls._instance is not None or bool(last_runtime)))


@pytest.mark.app
@pytest.mark.usefixtures("apptests_in_threads")
class TestConcurrency:
    """Several sessions share one model safely; a running study does not block other sessions."""

    def test_concurrent_explore_sessions_get_their_own_results(self, shared):
        """5 AppTest sessions in threads, one shared LoadedModel: each gets its own serial H_int and generation."""
        from concurrent.futures import ThreadPoolExecutor

        config = GenerationConfig(max_new_tokens=6)
        serial = {}
        for q in QUESTIONS:
            a = analyze(shared, q, kind="short_answer")
            serial[q] = (a.state.readout_entropy_bits, generate(shared, a.rendered, config))
        assert len({round(h, 6) for h, _ in serial.values()}) == len(QUESTIONS)  # results are distinguishable
        counter = _ForwardCounter(shared.model)
        barrier = threading.Barrier(len(QUESTIONS))
        try:
            with ThreadPoolExecutor(len(QUESTIONS)) as pool:
                futures = [pool.submit(_explore_session, shared, q, 6, barrier) for q in QUESTIONS]
                sessions = [f.result(timeout=300) for f in futures]
        finally:
            counter.remove()
        for s in sessions:
            h, gen = serial[s.question]
            assert s.readout_entropy_bits == pytest.approx(h, abs=1e-6)
            assert s.shown_h_int == f"{h:.2f}"
            assert s.generated_ids == gen.token_ids and s.generated_text == gen.text
            assert s.label == shared.spec.label
        assert max(s.start for s in sessions) < min(s.end for s in sessions)  # the sessions did overlap
        assert counter.calls >= len(QUESTIONS) and counter.max_active == 1  # the model lock serialised them

    def test_a_running_study_does_not_block_another_session(self, shared, tmp_path):
        """While a study thread uses the model, an Explore session reads and generates; the study keeps going meanwhile."""
        question = QUESTIONS[0]
        h_serial = analyze(shared, question, kind="short_answer").state.readout_entropy_bits
        items = [PromptItem(f"s{i}", f"what is {i} plus {i + 1} ?", str(2 * i + 1), kind="numeric") for i in range(150)]
        progress_at: list[float] = []
        started, page_done = threading.Event(), threading.Event()
        outcome: dict[str, object] = {}

        def progress(done, total, eta, message):
            progress_at.append(time.perf_counter())
            if done >= 2:
                started.set()

        def study():
            try:
                outcome["run"] = run_study(shared, items, ["direct", "babble"], tmp_path / "background",
                                           gen_config=GenerationConfig(max_new_tokens=8), batch_size=4,
                                           progress=progress, cancel=page_done.is_set)
            except BaseException as exc:  # re-raised in the test thread below
                outcome["error"] = exc
            finally:
                started.set()
                outcome["end"] = time.perf_counter()

        worker = threading.Thread(target=study, daemon=True)
        worker.start()
        assert started.wait(120) and "error" not in outcome, outcome.get("error")
        try:
            session = _explore_session(shared, question, 6)
        finally:
            page_done.set()
            worker.join(120)
        assert "error" not in outcome, outcome.get("error")
        run = outcome["run"]
        assert run.status == "cancelled" and len(run.table) < 2 * len(items)  # still running when the page was done
        assert outcome["end"] > session.end
        during = [t for t in progress_at if session.start <= t <= session.end]
        assert during, "the study made no progress while the page was working: they did not interleave"
        assert session.readout_entropy_bits == pytest.approx(h_serial, abs=1e-6)
        assert load_run(run.path).table["plan_row"].tolist() == list(range(len(run.table)))  # a loadable prefix


# ---------------------------------------------------------------- 4. security


def _python_sources() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def _call_name(node: ast.Call) -> str:
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword_constant(node: ast.Call, name: str) -> object:
    for kw in node.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return "<missing>"


BANNED_MODULES = {"pickle", "_pickle", "cPickle", "joblib", "dill", "cloudpickle", "shelve", "marshal"}


class TestSecurity:
    """No pickles or code execution on load paths, remote code only by explicit choice, inert uploads, no path escapes."""

    def test_source_scan_no_pickle_or_code_execution(self):
        """AST scan of app.py, ic_core/, ui/, pages/: no pickle modules, np.load/torch.load only pickle-free, no eval/exec."""
        problems, np_loads = [], 0
        for file in _python_sources():
            tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
            rel = file.relative_to(ROOT)
            for node in ast.walk(tree):
                where = lambda n, rel=rel: f"{rel}:{n.lineno}"  # noqa: E731
                if isinstance(node, ast.Import):
                    problems += [f"{where(node)} imports {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
                    problems.append(f"{where(node)} imports from {node.module}")
                elif isinstance(node, ast.Call):
                    name = _call_name(node)
                    if name in ("np.load", "numpy.load"):
                        np_loads += 1
                        if _keyword_constant(node, "allow_pickle") is not False:
                            problems.append(f"{where(node)} np.load without allow_pickle=False")
                    elif name == "torch.load" and _keyword_constant(node, "weights_only") is not True:
                        problems.append(f"{where(node)} torch.load without weights_only=True")
                    elif name in ("eval", "exec", "compile", "os.system", "os.popen", "yaml.load") or name.endswith(
                            ("read_pickle", "to_pickle", "yaml.unsafe_load")):
                        problems.append(f"{where(node)} calls {name}")
                    elif name.startswith("subprocess.") and _keyword_constant(node, "shell") is True:
                        problems.append(f"{where(node)} runs a shell")
                    elif _keyword_constant(node, "trust_remote_code") is True:
                        problems.append(f"{where(node)} hard-codes trust_remote_code=True")
        assert np_loads >= 3  # the scan does see the real load calls (study shards, probes)
        assert problems == []

    def test_pickled_weights_with_code_are_not_run(self, tiny_dir, tmp_path):
        """A model folder whose pytorch_model.bin carries a code payload: loading fails and the payload never runs."""
        import torch

        folder = tmp_path / "evil-model"
        shutil.copytree(tiny_dir, folder)
        for f in folder.glob("*.safetensors"):
            f.unlink()
        marker = tmp_path / "PAYLOAD_RAN"
        torch.save({"model.embed_tokens.weight": _Payload(marker)}, folder / "pytorch_model.bin")
        raised = None
        try:
            load_model(ModelSpec.parse(str(folder)))
        except Exception as exc:  # whatever is raised, the payload must not have run
            raised = exc
        assert raised is not None and not marker.exists()

    def test_pickled_weights_with_code_give_a_clear_message(self, tiny_dir, tmp_path):
        """The refusal is a ModelLoadError that says the weights were not loaded."""
        import torch

        folder = tmp_path / "evil-model"
        shutil.copytree(tiny_dir, folder)
        for f in folder.glob("*.safetensors"):
            f.unlink()
        torch.save({"model.embed_tokens.weight": _Payload(tmp_path / "PAYLOAD_RAN")}, folder / "pytorch_model.bin")
        with pytest.raises(ModelLoadError, match="safetensors"):
            load_model(ModelSpec.parse(str(folder)))

    def test_shard_with_pickled_objects_is_refused_unrun(self, reference_run, tmp_path):
        """A run shard holding an object array with a code payload is 'damaged', and the payload never runs."""
        out = tmp_path / "evil-run"
        shutil.copytree(reference_run.path, out)
        marker = tmp_path / "PAYLOAD_RAN"
        np.savez(out / "states" / "shard-00000.npz", rows=np.array([_Payload(marker)], dtype=object),
                 hidden=np.zeros((1, 5, 32), np.float16), lens_entropy_bits=np.zeros((1, 4), np.float32))
        with pytest.raises(DataError, match="shard-00000.npz is damaged or not a study shard"):
            load_run(out)
        assert not marker.exists()

    def test_trust_remote_code_defaults_off_everywhere(self):
        """ModelSpec default and parse, and every CLI command's --trust-remote-code flag, default to off."""
        from ic_core.cli import build_parser

        assert ModelSpec.__dataclass_fields__["trust_remote_code"].default is False
        assert ModelSpec.parse("org/model").trust_remote_code is False
        assert ModelSpec.from_dict({"source": "hub", "name": "org/model"}).trust_remote_code is False
        subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        flags = {}
        for name, parser in subparsers.choices.items():
            for action in parser._actions:
                if action.dest == "trust_remote_code":
                    flags[name] = (type(action).__name__, action.default)
        assert {"analyze", "study"} <= set(flags)
        assert set(flags.values()) == {("_StoreTrueAction", False)}

    @pytest.mark.app
    def test_sidebar_checkbox_is_off_even_for_a_hub_model_from_the_environment(self, shared, monkeypatch):
        """With IC_MODEL naming a hub id, the sidebar offers no trust_remote_code checkbox and it stays off."""
        monkeypatch.setenv("IC_MODEL", "some-org/some-model")
        at = _app(shared)
        # Not even offered (issue 11 case 7: only an administrator's setting shows it), and off.
        assert "trust_remote_code" not in [c.label for c in at.sidebar.checkbox]
        assert at.session_state["sb_trust_remote_code"] is False
        assert any("some-org/some-model" in c.value for c in at.sidebar.caption)

    def test_a_policy_file_cannot_switch_on_remote_code(self, tmp_path, monkeypatch):
        """`gate --policy file` loads the policy's model with trust_remote_code off unless the flag is given."""
        from ic_core.cli import gate as gate_cli
        from ic_core.cli import main
        from ic_core.governance.policy import Policy

        model = {"source": "hub", "name": "org/remote-code-model", "dtype": "float32", "device": "cpu",
                 "trust_remote_code": True}
        path = Policy(signal="h_int", model=model, kind="short_answer", t_entropy_bits=3.0).save(tmp_path / "p.json")
        seen = []

        def fake_get_model(spec):
            seen.append(spec)
            raise ModelLoadError("stopped by the test before loading")

        monkeypatch.setattr(gate_cli, "get_model", fake_get_model)
        assert main(["gate", "--policy", str(path), "--prompt", "what is 2 ?", "--no-audit"]) == 2
        assert len(seen) == 1 and seen[0].trust_remote_code is False

    def test_uploaded_text_stays_data(self, shared, tmp_path, monkeypatch):
        """Path-like, template-like and code-like fields are kept verbatim, never executed, never used as paths."""
        monkeypatch.chdir(tmp_path)
        payloads = ["../../etc/passwd", "{__import__('os').system('touch PWNED')}", "$(touch PWNED)",
                    "`touch PWNED`", "{question} {choices}", "%s%s%n", "/etc/shadow"]
        rows = [{"id": p, "question": f"what is {p} ?", "answer": p, "answer_prefix": p, "output": p,
                 "tags": [p], "source": p, "license": p} for p in payloads]
        rows.append({"id": "k", "question": "what is 2 ?", "kind": "../../etc/passwd"})
        result = load_items(_jsonl(*rows))
        assert [it.id for it in result.items] == payloads and "Unknown kind" in result.errors[0].message
        assert [it.question for it in result.items] == [f"what is {p} ?" for p in payloads]
        before = _files_under(tmp_path)
        runs = tmp_path / "runs"
        run = run_study(shared, result.items, ["direct"], run_path("../../" + payloads[1], runs), generate=False)
        created = _files_under(tmp_path) - before
        assert run.path.parent == runs and all(runs in p.parents or p == runs for p in created)
        assert not any(p.name == "PWNED" for p in tmp_path.rglob("*"))
        t = run.table
        assert t["question"].tolist() == [f"what is {p} ?" for p in payloads]
        assert t["answer_prefix"].tolist() == payloads  # the prefix is read as the start of the answer, literally
        assert t["user_text"].tolist() == [f"what is {p} ?\nAnswer in a few words." for p in payloads]
        assert t["output_text"].tolist() == payloads

    @settings(max_examples=300, deadline=None)
    @given(name=st.lists(st.sampled_from(list("a./\\-_ ~:$*") + ["..", "\x00", "é", "\n"]), max_size=30).map("".join))
    def test_run_names_never_leave_the_runs_folder(self, name):
        """Any run name is a single child folder of the runs root, or a DataError."""
        root = Path("/srv/runs")
        try:
            path = run_path(name, root)
        except DataError:
            return
        assert path.parent == root and path.name not in (".", "..", "") and "/" not in path.name
        assert path.name == sanitize_name(path.name)  # already clean: stable

    def test_default_run_name_from_a_hostile_upload_name(self):
        """The dataset name comes from the upload's file name; the default run folder is still a plain name."""
        name = default_run_name("../../etc/passwd;rm -rf", ["direct"], 3)
        assert "/" not in name and ".." not in name and name.startswith("etc-passwd-rm--rf-direct-n3-")

    @settings(max_examples=300, deadline=None)
    @given(raw=st.lists(st.sampled_from(["a", "b.jsonl", "/", "..", ".", "~/", "audit", " "]), max_size=12).map("".join))
    def test_audit_log_path_stays_inside_its_base(self, raw, tmp_path_factory):
        """resolve_audit_path(p, base) is a file path inside base, or a DataError."""
        from ic_core.governance.audit import resolve_audit_path

        base = tmp_path_factory.getbasetemp() / "audit-base"
        base.mkdir(exist_ok=True)
        try:
            path = resolve_audit_path(raw, base=base)
        except DataError:
            return
        assert path.is_relative_to(base.resolve()) and path != base.resolve()

    def test_audit_log_path_of_an_unknown_users_home(self, tmp_path):
        """`--audit-log ~nosuchuser/audit.jsonl` is a DataError, not a RuntimeError traceback."""
        from ic_core.governance.audit import resolve_audit_path

        with pytest.raises(DataError):
            resolve_audit_path("~no-such-user-xyz/audit.jsonl", base=tmp_path)

    def test_probe_paths_from_selection_names_stay_in_the_run(self, tmp_path):
        """A probe's default file stem is built from the selection label and stays under <run>/probes/."""
        from ic_core.probes.saved import default_probe_path

        run = SimpleNamespace(path=tmp_path / "run")
        for label in ("../../etc/passwd", "/abs/path", "direct\x00x", "..", "a/../../b"):
            path = default_probe_path(run, label)
            assert path.parent == tmp_path / "run" / "probes" and ".." not in path.parts

    def _gate_log(self, loaded, tmp_path, prompt: str, **policy):
        from ic_core.governance.gate import gate_check
        from ic_core.governance.policy import Policy

        log = tmp_path / f"audit-{loaded.spec.name}.jsonl"
        for threshold in (0.5, 50.0):  # one escalation, one approval
            p = Policy(model=loaded.spec.to_dict(), t_entropy_bits=threshold, store_prompt_text=False, **policy)
            gate_check(loaded, p, prompt, audit_log=log)
        return log

    def test_hash_only_audit_never_holds_the_prompt(self, shared, tmp_path):
        """With store_prompt_text False the audit file holds a keyed hash of the prompt and no word of it."""
        from ic_core.governance.audit import prompt_hmac, read_audit
        from ic_core.governance.keys import operator_key

        prompt = "what is the capital of germany ?"
        log = self._gate_log(shared, tmp_path, prompt, signal="h_int", kind="short_answer")
        raw = log.read_bytes()
        records, skipped = read_audit(log)
        assert len(records) == 2 and skipped == 0 and {r["decision"] for r in records} == {"approve", "escalate"}
        assert all(r["prompt_hmac"] == prompt_hmac(operator_key(), prompt) and "prompt" not in r for r in records)
        assert all("prompt_sha256" not in r for r in records)  # an unkeyed hash of a short prompt can be guessed
        assert b"germany" not in raw and prompt.encode() not in raw

    def test_hash_only_audit_never_holds_a_prompt_token(self, plain, tmp_path):
        """Even without a chat template (read-out = the prompt's last word) no prompt word reaches the audit file."""
        log = self._gate_log(plain, tmp_path, "what is the capital of germany", signal="h_int", kind="free_text")
        assert b"germany" not in log.read_bytes()

    def test_streamlit_server_config(self):
        """CORS and XSRF protection stay on, uploads are capped, and error details are not sent to browsers."""
        config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
        server = config["server"]
        assert server["enableCORS"] is True and server["enableXsrfProtection"] is True
        assert isinstance(server["maxUploadSize"], int) and 0 < server["maxUploadSize"] <= 50
        assert config["client"]["showErrorDetails"] in ("none", False)
        assert config["browser"]["gatherUsageStats"] is False

    def test_token_html_escapes_user_and_model_text(self):
        """Prompt and generated tokens shown with unsafe_allow_html are escaped, attributes included."""
        from ic_core.plots.explore import prompt_tokens_html, token_spans_html

        img = '<img src=x onerror="alert(1)">'
        script = "</span><script>alert(2)</script>"
        attr = '" onmouseover="alert(3)'
        prompt_html = prompt_tokens_html(["<|im_start|>", img, script, attr], readout_index=2, skipped_tokens=[img])
        gen_html = token_spans_html([img, script, attr], [1.0, 2.0, 3.0], [0.5, 0.4, 0.3], prefix=script)
        for out in (prompt_html, gen_html):
            assert "<img" not in out and "<script" not in out and 'onmouseover="' not in out
            assert "&lt;img" in out and "&lt;script&gt;" in out

    @pytest.mark.parametrize("template", [
        "{question} {question.__class__}",
        "{question} {question.__class__.__init__.__globals__}",
    ])
    def test_custom_template_allows_only_plain_fields(self, template):
        """A template may use {question} and {choices}; attribute access in a field is a PromptError."""
        with pytest.raises(PromptError):
            custom_template(template)


# ---------------------------------------------------------------- 5. durability


class TestDurability:
    """Run folders are written atomically; interrupted runs load and resume to the uninterrupted table."""

    def test_crash_while_writing_a_shard(self, shared, reference_run, tmp_path, monkeypatch):
        """A failure half-way through writing shard 1 leaves no partial shard or temp file; the run loads and resumes."""
        real_savez = np.savez
        calls = []

        def crash_on_second(file, **arrays):
            calls.append(file)
            if len(calls) == 3:  # rows are written one by one: rows 0 and 1 fill shard 0, row 2 starts shard 1
                Path(file).write_bytes(b"PK\x03\x04 half a zip archive")
                raise OSError("simulated power cut while writing a shard")
            return real_savez(file, **arrays)

        out = tmp_path / "crashed"
        monkeypatch.setattr(np, "savez", crash_on_second)
        with pytest.raises(OSError, match="power cut"):
            _rerun(shared, out)
        monkeypatch.setattr(np, "savez", real_savez)
        assert sorted(p.name for p in (out / "states").iterdir()) == ["shard-00000.npz"]
        assert not (out / "run.lock").exists()
        partial = load_run(out)
        assert partial.table["row"].tolist() == [0, 1] and partial.status == "running"
        _same_runs(_rerun(shared, out), reference_run)

    def test_crash_between_shard_and_records(self, shared, reference_run, tmp_path):
        """A shard whose records were never appended is ignored on load and redone on resume."""
        out = tmp_path / "orphan"
        shutil.copytree(reference_run.path, out)
        lines = (out / "items.jsonl").read_text().splitlines(keepends=True)
        (out / "items.jsonl").write_text("".join(lines[:4]))  # batch 2 (rows 4, 5): shard written, records lost
        assert (out / "states" / "shard-00002.npz").exists()
        partial = load_run(out)
        assert partial.table["row"].tolist() == [0, 1, 2, 3] and partial.hidden.shape[0] == 4
        _same_runs(_rerun(shared, out), reference_run)

    def test_leftover_temp_files_are_ignored(self, reference_run, tmp_path):
        """Temp files of interrupted atomic writes do not count as shards or manifests."""
        out = tmp_path / "leftovers"
        shutil.copytree(reference_run.path, out)
        (out / "states" / ".shard-00001.x1y2.npz").write_bytes(b"partial")
        (out / ".manifest.json.abc.tmp").write_text("{")
        (out / ".items.jsonl.def.tmp").write_text("garbage")
        _same_runs(load_run(out), reference_run)
        assert [r.name for r in list_runs(tmp_path)] == ["leftovers"]

    @pytest.mark.parametrize("target", ["manifest", "policy"])
    def test_failed_rename_keeps_the_old_file(self, tmp_path, monkeypatch, target):
        """If the final rename fails, the previous manifest or policy file is intact and no temp file remains."""
        from ic_core.governance.policy import Policy

        path = tmp_path / ("manifest.json" if target == "manifest" else "policy.json")
        old = Policy(signal="h_int", model={"source": "hub", "name": "a/b", "dtype": "float32"}, t_entropy_bits=2.0)
        if target == "manifest":
            atomic_write_json(path, {"version": "old"})
        else:
            old.save(path)
        before = path.read_bytes()

        def no_rename(src, dst):
            raise OSError("simulated crash before the rename")

        monkeypatch.setattr(os, "replace", no_rename)
        with pytest.raises(OSError, match="before the rename"):
            if target == "manifest":
                atomic_write_json(path, {"version": "new"})
            else:
                Policy(signal="h_int", model=old.model, t_entropy_bits=9.0).save(path)
        assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]

    def test_killed_study_process_loads_and_resumes_to_the_same_table(self, tiny_dir, tmp_path):
        """SIGKILL a real `run_study` process mid-run: the folder loads, and resuming equals an uninterrupted run."""
        items_file = tmp_path / "items.jsonl"
        items_file.write_text(items_jsonl(ITEMS))
        out = tmp_path / "killed"
        script = (
            "import sys\n"
            "from ic_core.datasets import load_items\n"
            "from ic_core.generate import GenerationConfig\n"
            "from ic_core.models import ModelSpec, load_model\n"
            "from ic_core.study.runner import run_study\n"
            "loaded = load_model(ModelSpec.parse(sys.argv[1]))\n"
            "items = load_items(sys.argv[2]).items\n"
            "def progress(done, total, eta, message):\n"
            "    print(done, flush=True)\n"
            "run_study(loaded, items, ['direct', 'babble'], sys.argv[3], gen_config=GenerationConfig(max_new_tokens=24),\n"
            "          batch_size=3, progress=progress, dataset_name='rel')\n"
            "print('finished', flush=True)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with open(tmp_path / "stderr.txt", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", script, str(tiny_dir), str(items_file), str(out)],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                seen = []
                for line in proc.stdout:
                    seen.append(line.strip())
                    if line.strip().isdigit() and int(line) >= 5:
                        proc.send_signal(signal.SIGKILL)
                        break
                proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert proc.returncode == -signal.SIGKILL, (seen, (tmp_path / "stderr.txt").read_text()[-2000:])
        assert "finished" not in seen
        partial = load_run(out)
        assert partial.status == "running" and len(partial.table) < 2 * len(ITEMS)
        assert not run_in_progress(out)  # the dead writer's lock does not block a resume
        loaded = load_model(ModelSpec.parse(str(tiny_dir)))
        config = GenerationConfig(max_new_tokens=24)
        resumed = run_study(loaded, ITEMS, ["direct", "babble"], out, gen_config=config, batch_size=3, dataset_name="rel")
        fresh = run_study(loaded, ITEMS, ["direct", "babble"], tmp_path / "fresh", gen_config=config, batch_size=3,
                          dataset_name="rel")
        assert resumed.status == "complete" and len(resumed.table) == 2 * len(ITEMS)
        _same_runs(resumed, fresh)
