"""Loading a prompt file with the automatic column guess plus the user's own mapping (app and CLI).

The CLI's ``study --data FILE --map question=prompt --kind numeric --kind-value short=short_answer``
and the Study page's upload both end in :func:`load_with_mapping`, so one file maps the same
way in both; :func:`guess_column_map` is the guess the app pre-fills and the CLI prints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ic_core.dataset_columns import parse_kind_value_args, parse_map_args, suggest_column_map
from ic_core.datasets import FIELDS, LoadResult, _read_bytes, csv_headers, load_items

GUESS_LINES = 50
"""JSONL lines whose keys are looked at for the guess."""


@dataclass(frozen=True)
class MappedLoad:
    """A loaded file and the mapping that read it."""

    result: LoadResult
    column_map: dict[str, str]
    """``{field: column}`` used: the guess, overridden by the user's own entries."""
    guessed: tuple[str, ...]
    """Fields whose column came from the guess (not from the user)."""


def file_headers(data: bytes, fmt: Literal["jsonl", "csv"]) -> list[str]:
    """Column names: the CSV header row, or the keys of the first JSONL objects (in order of appearance)."""
    if fmt == "csv":
        return csv_headers(data)
    keys: dict[str, None] = {}
    for line in data.decode("utf-8-sig", errors="replace").splitlines()[:GUESS_LINES]:
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            keys.update(dict.fromkeys(str(k) for k in value))
    return list(keys)


def guess_column_map(data: bytes, fmt: Literal["jsonl", "csv"]) -> dict[str, str]:
    """The automatic ``{field: column}`` guess for a file (the one the Study page pre-fills)."""
    return suggest_column_map(file_headers(data, fmt))


def load_with_mapping(
    source: bytes | Path | str,
    fmt: Literal["jsonl", "csv"],
    map_args: Sequence[str] = (),
    kind: str | None = None,
    kind_value_args: Sequence[str] = (),
) -> MappedLoad:
    """Load a file with the guessed mapping, the user's ``field=column`` entries winning over it.

    Args:
        source: Raw bytes or a file path.
        fmt: ``jsonl`` or ``csv``.
        map_args: ``field=column`` texts (CLI ``--map``); a column the user maps is not also guessed
            for another field.
        kind: Task kind of rows that name none (CLI ``--kind``).
        kind_value_args: ``word=kind`` texts for a kind column's words (CLI ``--kind-value``).

    Raises:
        DataError: a malformed entry, an unknown field or kind, or any file problem of
            :func:`~ic_core.datasets.load_items`.

    """
    data = _read_bytes(source)
    explicit = parse_map_args(map_args, FIELDS)
    taken = set(explicit.values())
    guess = {f: c for f, c in guess_column_map(data, fmt).items() if f not in explicit and c not in taken}
    column_map = {**guess, **explicit}
    result = load_items(data, fmt=fmt, column_map=column_map, kind=kind,
                        kind_values=parse_kind_value_args(kind_value_args))
    return MappedLoad(result, column_map, tuple(f for f in guess if f != guess[f]))
