"""Accepted answers separated by ``|``, the column-mapping API and kind words (issue 17 items 1-2)."""

from __future__ import annotations

import json

import pytest

from ic_core.dataset_columns import (
    format_column_map,
    parse_kind_value_args,
    parse_map_args,
    split_accepted,
    suggest_column_map,
    suggest_kind_values,
)
from ic_core.dataset_load import file_headers, guess_column_map, load_with_mapping
from ic_core.datasets import FIELDS, items_jsonl, load_items
from ic_core.errors import DataError

OCEANS = (
    "prompt,gold,alts\n"
    "Which ocean is the largest?,Pacific|Pacific Ocean,\n"
    "What is the currency of Japan?,yen|JPY,Japanese yen|yen\n"
    "Longest river in South America?,Amazon,\n"
    "Name a bar character,pipe \\| bar|vertical bar,\n"
)


class TestAcceptedAnswers:
    """``|`` separates accepted answers in any answer cell; ``\\|`` is a literal bar."""

    def test_bar_in_the_answer_column_gives_answer_and_aliases(self):
        result = load_items(OCEANS.encode(), fmt="csv", column_map={"question": "prompt", "answer": "gold"})
        assert result.ok
        pacific, yen, amazon, bar = result.items
        assert (pacific.answer, pacific.aliases) == ("Pacific", ("Pacific Ocean",))
        assert (amazon.answer, amazon.aliases) == ("Amazon", ())
        assert (bar.answer, bar.aliases) == ("pipe | bar", ("vertical bar",))
        assert (yen.answer, yen.aliases) == ("yen", ("JPY",))  # alts not mapped: ignored

    def test_a_separate_aliases_column_merges_without_repeats(self):
        mapping = {"question": "prompt", "answer": "gold", "aliases": "alts"}
        yen = load_items(OCEANS.encode(), fmt="csv", column_map=mapping).items[1]
        assert (yen.answer, yen.aliases) == ("yen", ("JPY", "Japanese yen"))

    def test_the_same_column_may_be_answer_and_aliases(self):
        mapping = {"question": "prompt", "answer": "gold", "aliases": "gold"}
        items = load_items(OCEANS.encode(), fmt="csv", column_map=mapping).items
        assert [(it.answer, it.aliases) for it in items[:2]] == [("Pacific", ("Pacific Ocean",)), ("yen", ("JPY",))]

    def test_other_columns_mapped_twice_are_still_refused(self):
        with pytest.raises(DataError, match="mapped to both 'question' and 'answer'"):
            load_items(OCEANS.encode(), fmt="csv", column_map={"question": "gold", "answer": "gold"})

    def test_jsonl_answer_is_split_too_and_round_trips(self):
        rows = [{"id": "p", "question": "Largest ocean?", "answer": "Pacific|Pacific Ocean", "aliases": ["the Pacific"]},
                {"id": "b", "question": "Symbol?", "answer": "a\\|b"}]
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        items = load_items(data).items
        assert (items[0].answer, items[0].aliases) == ("Pacific", ("Pacific Ocean", "the Pacific"))
        assert items[1].answer == "a|b"
        assert load_items(items_jsonl(items).encode()).items == items

    def test_split_accepted(self):
        assert split_accepted(" a | b ||c\\|d ") == ["a", "b", "c|d"]
        assert split_accepted("") == []


class TestColumnMappingApi:
    """One mapping API for the app and the CLI: --map, --kind and kind values."""

    def test_parse_map_args(self):
        assert parse_map_args(["question=prompt", " answer = gold "], FIELDS) == {"question": "prompt", "answer": "gold"}
        for bad, msg in [("question", "write field=column"), ("prompt=question", "unknown field 'prompt'"),
                         ("=x", "write field=column")]:
            with pytest.raises(DataError, match=msg):
                parse_map_args([bad], FIELDS)
        with pytest.raises(DataError, match="twice"):
            parse_map_args(["answer=a", "answer=b"], FIELDS)

    def test_guess_is_printable(self):
        guess = suggest_column_map(["prompt", "gold", "alts"])
        assert guess == {"question": "prompt", "answer": "gold", "aliases": "alts"}
        assert format_column_map(guess) == "question ← prompt, answer ← gold, aliases ← alts"
        assert format_column_map({}) == "none"

    def test_kind_for_the_whole_file(self):
        data = b"q,a\nSeven?,seven\nTwo?,2\n"
        plain = load_items(data, fmt="csv", column_map={"question": "q", "answer": "a"})
        assert [it.kind for it in plain.items] == ["short_answer", "numeric"]
        forced = load_items(data, fmt="csv", column_map={"question": "q", "answer": "a"}, kind="free_text")
        assert [it.kind for it in forced.items] == ["free_text", "free_text"]
        with pytest.raises(DataError, match="unknown kind 'essay'"):
            load_items(data, fmt="csv", column_map={"question": "q", "answer": "a"}, kind="essay")

    def test_kind_words_are_mapped(self):
        data = b"q,a,type\nCapital of Peru?,Lima,short\nTwo plus two?,4,Math\nSay hi,,chat\n"
        mapping = {"question": "q", "answer": "a", "kind": "type"}
        auto = load_items(data, fmt="csv", column_map=mapping)
        assert [it.kind for it in auto.items] == ["short_answer", "numeric"]
        assert auto.kind_words == (("Math", "numeric"), ("short", "short_answer"))
        assert [e.line for e in auto.errors] == [4] and "--kind-value" in auto.errors[0].message
        given = load_items(data, fmt="csv", column_map=mapping, kind_values={"chat": "free_text", "short": "free_text"})
        assert [it.kind for it in given.items] == ["free_text", "numeric", "free_text"]
        with pytest.raises(DataError, match="unknown kind 'poem'"):
            load_items(data, fmt="csv", column_map=mapping, kind_values={"chat": "poem"})

    def test_suggest_and_parse_kind_values(self):
        assert suggest_kind_values(["short", "MC", "numeric", "banana", " num "]) == {
            "short": "short_answer", "MC": "multiple_choice", "num": "numeric"}
        assert parse_kind_value_args(["short=short_answer"]) == {"short": "short_answer"}
        with pytest.raises(DataError, match="write value=kind"):
            parse_kind_value_args(["short"])


class TestLoadWithMapping:
    """``load_with_mapping``: the guess the app uses, the user's --map entries winning over it."""

    def test_guess_then_user_entries(self, tmp_path):
        path = tmp_path / "oceans.csv"
        path.write_text("prompt,input,gold,type\nignored,Largest ocean?,Pacific|Pacific Ocean,short\n", encoding="utf-8")
        assert guess_column_map(path.read_bytes(), "csv") == {"question": "prompt", "answer": "gold", "kind": "type"}
        loaded = load_with_mapping(path, "csv", ["question=input"], kind_value_args=["short=free_text"])
        assert loaded.column_map == {"answer": "gold", "kind": "type", "question": "input"}
        assert loaded.guessed == ("answer", "kind")
        item = loaded.result.items[0]
        assert (item.question, item.answer, item.aliases, item.kind) == (
            "Largest ocean?", "Pacific", ("Pacific Ocean",), "free_text")

    def test_a_column_the_user_maps_is_not_guessed_for_another_field(self):
        loaded = load_with_mapping(b"q,gold\nTwo?,2\n", "csv", ["question=q", "id=gold"])
        assert loaded.column_map == {"question": "q", "id": "gold"}
        assert (loaded.result.items[0].id, loaded.result.items[0].answer) == ("2", None)

    def test_jsonl_keys_are_guessed_too(self):
        data = b'{"prompt": "What is 2 + 2?", "target": 4}\nnot json\n{"prompt": "Peru?", "target": "Lima", "qid": "p"}\n'
        assert file_headers(data, "jsonl") == ["prompt", "target", "qid"]
        loaded = load_with_mapping(data, "jsonl", kind="short_answer")
        assert [(it.id, it.question, it.answer, it.kind) for it in loaded.result.items] == [
            ("line-1", "What is 2 + 2?", "4", "short_answer"), ("p", "Peru?", "Lima", "short_answer")]
        assert [e.line for e in loaded.result.errors] == [2]

    def test_bad_entries_are_one_line_errors(self):
        with pytest.raises(DataError, match="write field=column"):
            load_with_mapping(b"q\nx?\n", "csv", ["question"])
        with pytest.raises(DataError, match="unknown kind 'essay'"):
            load_with_mapping(b"q\nx?\n", "csv", ["question=q"], kind="essay")
