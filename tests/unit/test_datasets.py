"""Prompt sets: bundled files, JSONL/CSV validation with line numbers, column mapping."""

from __future__ import annotations

import json

import pytest

from ic_core import datasets
from ic_core.datasets import (
    PromptItem,
    bundled_path,
    bundled_sets,
    csv_headers,
    infer_kind,
    items_jsonl,
    items_sha256,
    load_bundled,
    load_items,
    suggest_column_map,
)
from ic_core.errors import DataError


def _jsonl(*rows: object) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode("utf-8") + b"\n"


class TestBundled:
    def test_lists_every_sample_file_with_counts_and_licences(self):
        sets = {s.name: s for s in bundled_sets()}
        assert {"capitals", "arithmetic", "gsm8k", "arc_easy", "arc_challenge", "governance_ops", "examples"} <= set(sets)
        assert sets["capitals"].n_items == 193
        assert sets["arc_challenge"].n_items == 100
        assert "CC BY-SA 4.0" in sets["arc_easy"].license
        assert sets["gsm8k"].license == "MIT"

    def test_every_bundled_set_loads_without_errors(self):
        for s in bundled_sets():
            result = load_bundled(s.name)
            assert result.errors == (), (s.name, result.errors[:3])
            assert len(result.items) == s.n_items
            assert result.warnings == ()

    def test_capitals_items_carry_prefix_aliases_and_kind(self):
        items = {it.id: it for it in load_bundled("capitals").items}
        alb = items["capitals-0002"]
        assert alb.answer == "Tirana" and "Tirane" in alb.aliases
        assert alb.kind == "short_answer" and alb.answer_prefix == "The capital of Albania is"
        assert alb.output is None

    def test_unknown_bundled_name_is_refused_not_used_as_a_path(self):
        with pytest.raises(DataError, match="No bundled prompt set named"):
            bundled_path("../pyproject")


class TestJsonl:
    def test_good_rows_kept_bad_rows_reported_with_line_numbers(self):
        data = _jsonl(
            {"id": "a", "question": "What is 2 + 2?", "answer": 4},
            "{not json",
            {"id": "b", "question": "", "answer": "x"},
            {"id": "c", "question": "Capital of France?", "answer": "Paris", "aliases": "Paname"},
            {"id": "d", "question": "Pick one", "choices": ["x", "y"], "answer": "C"},
            {"id": "e", "question": "Which?", "kind": "essay"},
            {"id": "a", "question": "Duplicate id", "answer": "1"},
            [1, 2, 3],
            {"id": "f", "question": 42},
            {"id": "g", "question": "How many legs has a spider?", "answer": "eight", "kind": "numeric"},
            {"id": "h", "question": "Pick", "choices": ["x", "y", "z"], "answer": "B", "tags": ["t1"]},
        )
        result = load_items(data)
        assert [it.id for it in result.items] == ["a", "h"]
        lines = {e.line: e.message for e in result.errors}
        assert sorted(lines) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
        assert "Not valid JSON" in lines[2]
        assert "empty" in lines[3]
        assert "'aliases' must be a list" in lines[4]
        assert "not one of the 2 options" in lines[5]
        assert "Unknown kind 'essay'" in lines[6]
        assert "Duplicate id 'a'" in lines[7] and "line 1" in lines[7]
        assert "JSON object" in lines[8]
        assert "'question' must be text" in lines[9]
        assert "not a number" in lines[10]
        assert result.n_rows == 11
        assert not result.ok

    def test_numbers_become_text_and_kinds_are_inferred(self):
        result = load_items(_jsonl(
            {"question": "What is 3 + 4?", "answer": 7},
            {"question": "Largest planet?", "answer": "Jupiter"},
            {"question": "Pick", "choices": ["a", "b"], "answer": "A"},
            {"question": "Say something"},
        ))
        assert result.ok
        a, b, c, d = result.items
        assert (a.answer, a.kind) == ("7", "numeric")
        assert b.kind == "short_answer" and c.kind == "multiple_choice" and d.kind == "short_answer"
        assert [it.id for it in result.items] == ["line-1", "line-2", "line-3", "line-4"]

    def test_missing_question_column_names_it(self):
        with pytest.raises(DataError, match="Missing required column.*question.*Found: answer, prompt"):
            load_items(_jsonl({"prompt": "What?", "answer": "x"}, {"prompt": "Why?", "answer": "y"}))

    def test_column_map_renames_fields(self):
        data = _jsonl({"prompt": "What is 1 + 1?", "target": "2", "qid": "q1"})
        result = load_items(data, column_map={"question": "prompt", "answer": "target", "id": "qid"})
        assert result.items[0] == PromptItem(id="q1", question="What is 1 + 1?", answer="2", kind="numeric")

    def test_non_utf8_line_is_reported_and_others_kept(self):
        data = _jsonl({"id": "a", "question": "ok?"}) + b'{"id": "b", "question": "caf\xe9"}\n' + _jsonl({"id": "c", "question": "fine"})
        result = load_items(data)
        assert [it.id for it in result.items] == ["a", "c"]
        assert result.errors[0].line == 2 and "UTF-8" in result.errors[0].message

    def test_utf8_bom_is_accepted(self):
        result = load_items(b"\xef\xbb\xbf" + _jsonl({"id": "a", "question": "Où est Paris ?"}))
        assert result.ok and result.items[0].question == "Où est Paris ?"

    def test_size_and_row_limits(self, monkeypatch):
        monkeypatch.setattr(datasets, "MAX_UPLOAD_BYTES", 200)
        with pytest.raises(DataError, match=r"limit is 0\.0 MB.*MAX_UPLOAD_BYTES"):
            load_items(b"x" * 201)
        monkeypatch.setattr(datasets, "MAX_UPLOAD_BYTES", 5_000_000)
        monkeypatch.setattr(datasets, "MAX_ROWS", 3)
        rows = [{"question": f"q {i}?"} for i in range(4)]
        with pytest.raises(DataError, match="more than 3 rows.*MAX_ROWS"):
            load_items(_jsonl(*rows))
        assert len(load_items(_jsonl(*rows[:3])).items) == 3

    def test_existing_outputs_and_unknown_columns(self):
        result = load_items(_jsonl({"question": "2+2?", "answer": "4", "output": "It is 4.", "extra": 1, "note": "n"}))
        assert result.items[0].output == "It is 4."
        assert result.warnings == ("Ignored column(s) not used by studies: extra.",)

    def test_sha256_of_items_is_independent_of_the_file_layout(self):
        a = load_items(_jsonl({"id": "x", "question": "Q?", "answer": "1"}))
        b = load_items(b'{"answer": 1,   "question": "Q?", "id": "x"}\n\n')
        assert a.sha256 != b.sha256
        assert items_sha256(a.items) == items_sha256(b.items)


class TestInvalidText:
    """A lone surrogate or NUL in any text field is a row error, not a crash (issue 11 case 8)."""

    @pytest.mark.parametrize("bad, reason", [("\ud800", "unpaired UTF-16 surrogates"), ("\x00", "NUL character")])
    @pytest.mark.parametrize("field", ["id", "answer", "aliases", "choices", "answer_prefix", "tags", "source", "output"])
    def test_bad_text_field_is_a_row_error(self, field, bad, reason):
        row = {"id": "x", "question": "Capital of France?", "answer": "Paris"}
        row[field] = ["Paris", f"Lutèce{bad}"] if field in ("aliases", "choices", "tags") else f"Par{bad}is"
        result = load_items(_jsonl({"id": "ok", "question": "What is 2 + 2?", "answer": 4}, row))
        assert [it.id for it in result.items] == ["ok"]
        assert [e.line for e in result.errors] == [2]
        assert result.errors[0].message.startswith(f"Field {field!r} contains ") and reason in result.errors[0].message
        assert items_jsonl(result.items)  # the kept rows write out as UTF-8

    @pytest.mark.parametrize("bad", ["\ud800", "\udc80", "\x00"])
    def test_bad_question_is_a_row_error(self, bad):
        result = load_items(_jsonl({"question": f"What{bad}?", "answer": "x"}, {"question": "Fine?", "answer": "y"}))
        assert len(result.items) == 1 and [e.line for e in result.errors] == [1]

    def test_nul_in_a_csv_cell_is_a_row_error(self):
        result = load_items(b"question,answer\nWhat is 2+2?,4\nCapital?,Par\x00is\n", fmt="csv")
        assert [it.question for it in result.items] == ["What is 2+2?"]
        assert [e.line for e in result.errors] == [3] and "NUL" in result.errors[0].message


class TestCsv:
    def test_mapping_lists_and_line_numbers(self):
        text = (
            "qid,prompt,target,options,alts\n"
            "1,What is 2+2?,4,,\n"
            "2,Pick the fruit,B,car|apple|stone,\n"
            "3,,x,,\n"
            "4,\"Multi\nline question\",Rome,,Roma|Rom\n"
            "5,Too,many,cells,here,extra\n"
            "1,Duplicate,1,,\n"
        )
        headers = ["qid", "prompt", "target", "options", "alts"]
        mapping = suggest_column_map(headers)
        assert mapping == {"id": "qid", "question": "prompt", "answer": "target", "aliases": "alts", "choices": "options"}
        result = load_items(text.encode(), fmt="csv", column_map=mapping)
        assert [it.id for it in result.items] == ["1", "2", "4"]
        assert result.items[1].choices == ("car", "apple", "stone") and result.items[1].kind == "multiple_choice"
        assert result.items[2].question == "Multi\nline question" and result.items[2].aliases == ("Roma", "Rom")
        assert [(e.line, e.message.split(" ")[0]) for e in result.errors] == [(4, "Missing"), (7, "Has"), (8, "Duplicate")]

    def test_missing_question_column_in_csv(self):
        with pytest.raises(DataError, match="Missing required column.*question"):
            load_items(b"prompt,answer\nWhat?,x\n", fmt="csv")

    def test_non_utf8_csv_names_the_line(self):
        with pytest.raises(DataError, match=r"not UTF-8 text \(first bad byte at line 3"):
            load_items(b"question,answer\nfine,1\ncaf\xe9,2\n", fmt="csv")

    def test_semicolon_delimiter_is_sniffed(self):
        result = load_items(b"question;answer\nWhat is 5+5?;10\n", fmt="csv")
        assert result.items[0].answer == "10" and result.items[0].kind == "numeric"

    def test_bad_column_map(self):
        with pytest.raises(DataError, match="Unknown field 'prompt'"):
            load_items(b"question\nq?\n", fmt="csv", column_map={"prompt": "question"})
        with pytest.raises(DataError, match="mapped to both"):
            load_items(b"q\nx?\n", fmt="csv", column_map={"question": "q", "answer": "q"})

    def test_unknown_format(self):
        with pytest.raises(DataError, match="Unknown prompt-file format"):
            load_items(b"x", fmt="xlsx")  # type: ignore[arg-type]


def test_infer_kind():
    assert infer_kind("3.5", ()) == "numeric"
    assert infer_kind("Paris", ()) == "short_answer"
    assert infer_kind(None, ("a", "b")) == "multiple_choice"
    assert infer_kind(None, ()) == "short_answer"


def test_csv_headers_for_the_mapping_step():
    assert csv_headers(b"\xef\xbb\xbfPrompt;Target ;id\nq;a;1\n") == ["Prompt", "Target", "id"]
    assert suggest_column_map(["Prompt", "Target", "id"]) == {"id": "id", "question": "Prompt", "answer": "Target"}
    with pytest.raises(DataError, match="empty"):
        csv_headers(b"\n")
    with pytest.raises(DataError, match="not UTF-8"):
        csv_headers(b"qu\xe9stion\n")


def test_items_jsonl_round_trip():
    items = load_bundled("arc_challenge").items[:5] + load_bundled("capitals").items[:5]
    again = load_items(items_jsonl(items).encode("utf-8"))
    assert again.ok and again.items == items
