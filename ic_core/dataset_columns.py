"""Column mapping for prompt files: which column holds which field, accepted answers, kinds.

The app and the CLI share these functions, so a file maps the same way in both:
:func:`suggest_column_map` is the automatic guess (the app pre-fills its column pickers with
it and the CLI prints it), :func:`parse_map_args` reads the CLI's ``--map field=column``
flags, and :func:`suggest_kind_values` guesses what a kind column's own words mean
(``short`` → ``short_answer``).

Accepted answers: in any answer cell, ``|`` separates accepted answers (``Pacific|Pacific
Ocean`` → answer ``Pacific``, alias ``Pacific Ocean``); ``\\|`` is a literal bar.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from ic_core.errors import DataError
from ic_core.prompts import TASK_KINDS

LIST_SEPARATOR = "|"
"""Separator of accepted answers, aliases, choices and tags inside one cell."""
ESCAPED_SEPARATOR = "\\|"
"""A literal ``|`` inside an answer or a list cell."""

SYNONYMS: dict[str, tuple[str, ...]] = {
    "id": ("id", "qid", "item_id", "uid", "question_id", "key"),
    "question": ("question", "prompt", "input", "query", "problem", "text", "instruction"),
    "answer": ("answer", "target", "expected", "gold", "label", "reference", "solution", "short_answer"),
    "aliases": ("aliases", "alias", "alts", "alternatives", "other_answers"),
    "choices": ("choices", "options", "answers_options"),
    "kind": ("kind", "task_kind", "type", "task_type"),
    "answer_prefix": ("answer_prefix", "prefix", "answer_start"),
    "tags": ("tags", "tag", "category", "categories", "subject"),
    "source": ("source", "origin", "dataset"),
    "license": ("license", "licence"),
    "output": ("output", "model_output", "response", "completion", "generation", "prediction"),
}
"""Header names recognised for each field (case-insensitive), first match wins."""

KIND_SYNONYMS: dict[str, tuple[str, ...]] = {
    "numeric": ("numeric", "number", "num", "math", "arithmetic", "integer", "float"),
    "multiple_choice": ("multiple_choice", "mc", "mcq", "choice", "multiple-choice", "multiplechoice"),
    "short_answer": ("short_answer", "short", "short-answer", "qa", "factual", "span"),
    "free_text": ("free_text", "free", "free-text", "open"),
}
"""Words in a kind column recognised for each task kind (case-insensitive)."""

SHARED_COLUMN_FIELDS = frozenset({"answer", "aliases"})
"""The one pair of fields that may read the same column (its first answer is the answer)."""

_SPLIT = re.compile(r"(?<!\\)\|")


def split_accepted(cell: str) -> list[str]:
    """The accepted answers in one cell: split at ``|``, ``\\|`` kept as a literal bar, blanks dropped."""
    parts = (p.replace(ESCAPED_SEPARATOR, LIST_SEPARATOR).strip() for p in _SPLIT.split(cell))
    return [p for p in parts if p]


def escape_accepted(text: str) -> str:
    """``text`` written so that :func:`split_accepted` reads it back as one answer."""
    return text.replace(LIST_SEPARATOR, ESCAPED_SEPARATOR)


def suggest_column_map(headers: Sequence[str]) -> dict[str, str]:
    """Guess which header holds each field (case-insensitive synonyms).

    Returns:
        ``{field: header}`` for the fields whose header was recognised, e.g.
        ``{"question": "prompt", "answer": "target"}``.

    """
    lowered = {h.strip().lower(): h for h in headers}
    found: dict[str, str] = {}
    used: set[str] = set()
    for name, synonyms in SYNONYMS.items():
        for syn in synonyms:
            header = lowered.get(syn)
            if header is not None and header not in used:
                found[name] = header
                used.add(header)
                break
    return found


def format_column_map(column_map: Mapping[str, str]) -> str:
    """One line such as ``question ← prompt, answer ← gold`` (``none`` when empty)."""
    return ", ".join(f"{name} ← {column}" for name, column in column_map.items() if column) or "none"


def parse_map_args(values: Iterable[str], fields: Sequence[str]) -> dict[str, str]:
    """``{field: column}`` from ``field=column`` texts (the CLI's ``--map``).

    Raises:
        DataError: a text without ``=``, an unknown field, or a field given twice.

    """
    out: dict[str, str] = {}
    for value in values:
        name, sep, column = value.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise DataError(f"--map {value!r}: write field=column, e.g. --map question=prompt.")
        if name not in fields:
            raise DataError(f"--map {value!r}: unknown field {name!r}; fields are: {', '.join(fields)}.")
        if name in out:
            raise DataError(f"--map gives the field {name!r} twice ({out[name]!r} and {column!r}).")
        out[name] = column
    return out


def parse_kind_value_args(values: Iterable[str]) -> dict[str, str]:
    """``{word in the file: kind}`` from ``word=kind`` texts (the CLI's ``--kind-value``).

    Raises:
        DataError: a text without ``=`` or a kind that is not a task kind.

    """
    out: dict[str, str] = {}
    for value in values:
        word, sep, kind = value.partition("=")
        if not sep or not word.strip():
            raise DataError(f"--kind-value {value!r}: write value=kind, e.g. --kind-value short=short_answer.")
        out[word.strip()] = check_kind(kind.strip(), "--kind-value")
    return out


def check_kind(kind: str, where: str = "kind") -> str:
    """``kind`` if it is a task kind.

    Raises:
        DataError: naming the kinds to choose from.

    """
    if kind not in TASK_KINDS:
        raise DataError(f"{where}: unknown kind {kind!r}; use one of {', '.join(TASK_KINDS)}.")
    return kind


def suggest_kind_values(values: Iterable[str]) -> dict[str, str]:
    """Guess the task kind of each distinct word in a kind column.

    Returns:
        ``{word: kind}`` for the words that are not already a task kind but are recognised
        (``short`` → ``short_answer``, ``MC`` → ``multiple_choice``); unrecognised words are left out.

    """
    lookup = {syn: kind for kind, syns in KIND_SYNONYMS.items() for syn in syns}
    out: dict[str, str] = {}
    for value in values:
        word = value.strip()
        if word and word not in TASK_KINDS and word.lower() in lookup:
            out[word] = lookup[word.lower()]
    return out


def reverse_map(column_map: Mapping[str, str] | None, fields: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``{column in the file: fields it fills}``.

    A column may fill both ``answer`` and ``aliases`` (its first accepted answer is the answer, the
    others are aliases); any other column mapped twice is refused.

    Raises:
        DataError: an unknown field, or a column mapped to two fields other than answer and aliases.

    """
    if not column_map:
        return {}
    reverse: dict[str, tuple[str, ...]] = {}
    for name, column in column_map.items():
        if name not in fields:
            raise DataError(f"Unknown field {name!r} in the column mapping; fields are: {', '.join(fields)}.")
        if not column:
            continue
        before = reverse.get(column, ())
        if before and not {*before, name} <= SHARED_COLUMN_FIELDS:
            raise DataError(f"Column {column!r} is mapped to both {before[0]!r} and {name!r}.")
        reverse[column] = (*before, name)
    return reverse
