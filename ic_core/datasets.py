"""Prompt sets: the bundled JSONL files and user uploads (CSV or JSONL), validated row by row.

Validation never stops at the first problem: every bad row is reported with its line
number and the good rows are kept. Problems with the file as a whole (not UTF-8, too
large, no ``question`` column) raise :class:`~ic_core.errors.DataError`. Uploaded content
is only parsed as data: nothing in it is executed, and no value is used as a file path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ic_core.dataset_columns import (
    LIST_SEPARATOR as LIST_SEPARATOR,
)
from ic_core.dataset_columns import (
    check_kind,
    escape_accepted,
    reverse_map,
    split_accepted,
    suggest_kind_values,
)
from ic_core.dataset_columns import (
    suggest_column_map as suggest_column_map,
)
from ic_core.errors import DataError, PromptError
from ic_core.grading import parse_number
from ic_core.prompts import MAX_CHOICES, TASK_KINDS, clean_prompt, invalid_text_reason

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_prompts"
"""Folder of the bundled prompt sets (``sample_prompts/*.jsonl``)."""

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
"""Largest accepted file (5 MB). Raise ``ic_core.datasets.MAX_UPLOAD_BYTES`` to accept more."""
MAX_ROWS = 5_000
"""Most data rows accepted in one file. Raise ``ic_core.datasets.MAX_ROWS`` to accept more."""

FIELDS: tuple[str, ...] = (
    "id", "question", "answer", "aliases", "choices", "kind", "answer_prefix", "tags", "source", "license", "output",
)
REQUIRED_FIELDS: tuple[str, ...] = ("question",)
IGNORED_FIELDS: tuple[str, ...] = ("note",)
"""Known keys that are allowed but not used by studies (``examples.jsonl`` carries notes)."""
ANSWER_FIELDS: tuple[str, ...] = ("answer", "aliases")
"""Fields whose cells may hold several accepted answers separated by ``|`` (``\\|`` is a literal bar)."""
LIST_FIELDS: tuple[str, ...] = ("aliases", "choices", "tags")
"""Fields that are lists (``|``-separated inside one CSV cell)."""


@dataclass(frozen=True)
class PromptItem:
    """One question of a prompt set."""

    id: str
    """Unique within its set."""
    question: str
    """The question as the user sees it (multiple choice: without the options)."""
    answer: str | None = None
    """Reference answer: a number, an option letter, or a short text; None if unknown."""
    aliases: tuple[str, ...] = ()
    """Other accepted answers."""
    choices: tuple[str, ...] = ()
    """Option texts of a multiple-choice question (lettered A, B, … in order)."""
    kind: str = "short_answer"
    """One of :data:`ic_core.prompts.TASK_KINDS`."""
    answer_prefix: str | None = None
    """Per-item forced start of the answer (e.g. ``The capital of France is``)."""
    tags: tuple[str, ...] = ()
    source: str = ""
    license: str = ""
    output: str | None = None
    """An existing model output: a study grades it instead of generating."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with lists instead of tuples."""
        data = asdict(self)
        for key in ("aliases", "choices", "tags"):
            data[key] = list(data[key])
        return data


@dataclass(frozen=True)
class RowError:
    """A rejected row."""

    line: int
    """1-based line number in the file (for CSV the header is line 1)."""
    message: str


@dataclass(frozen=True)
class LoadResult:
    """The good items of a file and a report of the rejected rows."""

    items: tuple[PromptItem, ...]
    errors: tuple[RowError, ...]
    sha256: str
    """SHA-256 of the raw file bytes."""
    fmt: str
    """``jsonl`` or ``csv``."""
    n_rows: int
    """Data rows read (good + bad)."""
    warnings: tuple[str, ...] = ()
    """Non-fatal remarks (e.g. unknown columns that were ignored)."""
    kind_words: tuple[tuple[str, str], ...] = ()
    """``(word, kind)`` pairs used to read the kind column's own words (``("short", "short_answer")``)."""

    @property
    def ok(self) -> bool:
        """True when no row was rejected."""
        return not self.errors


@dataclass(frozen=True)
class BundledSet:
    """A prompt set shipped in ``sample_prompts/``."""

    name: str
    """File stem, e.g. ``capitals``."""
    path: Path
    n_items: int
    license: str
    """Distinct licences of its items, joined by ``; ``."""
    kinds: tuple[str, ...] = field(default=())


def bundled_sets(folder: Path | None = None) -> list[BundledSet]:
    """The bundled prompt sets, sorted by name."""
    folder = folder or SAMPLE_DIR
    out = []
    for path in sorted(folder.glob("*.jsonl")):
        licences: dict[str, None] = {}
        kinds: dict[str, None] = {}
        n = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            n += 1
            licences[str(row.get("license", "")).strip() or "unknown"] = None
            kinds[str(row.get("kind", ""))] = None
        out.append(BundledSet(path.stem, path, n, "; ".join(licences), tuple(k for k in kinds if k)))
    return out


def bundled_path(name: str, folder: Path | None = None) -> Path:
    """The file of a bundled set, looked up by name among the listed sets (never built from input).

    Raises:
        DataError: no bundled set has that name.

    """
    sets = {s.name: s.path for s in bundled_sets(folder)}
    if name not in sets:
        raise DataError(f"No bundled prompt set named {name!r}; choose one of: {', '.join(sorted(sets))}.")
    return sets[name]


def load_bundled(name: str, folder: Path | None = None) -> LoadResult:
    """Load a bundled set by name (see :func:`bundled_sets`)."""
    return load_items(bundled_path(name, folder), fmt="jsonl")


def csv_headers(data: bytes) -> list[str]:
    """The header row of a CSV upload (for the column-mapping step).

    Raises:
        DataError: not UTF-8, too large, or no header row.

    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(_too_large(len(data)))
    text = _decode_all(data)
    first = text.split("\n", 1)[0]
    if not first.strip():
        raise DataError("The CSV file is empty: it needs a header row (question, answer, …) and data rows.")
    try:
        delimiter = csv.Sniffer().sniff(first, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    return [h.strip() for h in next(csv.reader([first], delimiter=delimiter))]


def items_jsonl(items: Sequence[PromptItem]) -> str:
    """Items as JSONL text that :func:`load_items` reads back to the same items."""
    rows = ({**item.to_json(), "answer": None if item.answer is None else escape_accepted(item.answer)} for item in items)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def items_sha256(items: Sequence[PromptItem]) -> str:
    """SHA-256 of the items' canonical JSON (the same items hash the same however they were read)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _read_bytes(source: bytes | bytearray | Path | str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"Prompt file {str(path)!r} does not exist.")
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise DataError(_too_large(path.stat().st_size))
        data = path.read_bytes()
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(_too_large(len(data)))
    return data


def _too_large(n_bytes: int) -> str:
    return (
        f"The file has {n_bytes / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.1f} MB. Split it, or raise "
        "ic_core.datasets.MAX_UPLOAD_BYTES (and Streamlit's server.maxUploadSize) if you need larger files."
    )


def _too_many_rows() -> str:
    return (
        f"The file has more than {MAX_ROWS:,} rows. Split it, or raise ic_core.datasets.MAX_ROWS if you need more."
    )


def _decode_all(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"The file is not UTF-8 text (first bad byte at line {line}, byte offset {exc.start}). "
            "Save it as UTF-8 (in Excel: 'CSV UTF-8'; in most editors: Save with encoding → UTF-8)."
        ) from exc


def load_items(
    source: bytes | bytearray | Path | str,
    fmt: Literal["jsonl", "csv"] = "jsonl",
    column_map: Mapping[str, str] | None = None,
    kind: str | None = None,
    kind_values: Mapping[str, str] | None = None,
) -> LoadResult:
    """Read and validate a prompt set.

    Args:
        source: The raw bytes of an upload, or the path of a local file (CLI, bundled sets).
        fmt: ``jsonl`` (one JSON object per line) or ``csv`` (header row; ``|``-separated lists).
        column_map: ``{field: column}`` for files whose names differ, e.g.
            ``{"question": "prompt", "answer": "target"}``. Unmapped fields use their own name.
            One column may be both ``answer`` and ``aliases``. In any answer cell ``|`` separates
            accepted answers (the first is the answer, the others aliases); ``\\|`` is a literal bar.
        kind: Task kind of the rows that do not name one (instead of guessing it from the answer).
        kind_values: ``{word in the kind column: task kind}``, e.g. ``{"short": "short_answer"}``; words
            recognised by :func:`~ic_core.dataset_columns.suggest_kind_values` are mapped without it.

    Returns:
        The good items and every rejected row with its line number.

    Raises:
        DataError: not UTF-8 (CSV) or not text, larger than :data:`MAX_UPLOAD_BYTES`, more than
            :data:`MAX_ROWS` rows, a required column missing, or an unknown format.

    """
    data = _read_bytes(source)
    digest = hashlib.sha256(data).hexdigest()
    mapping = reverse_map(column_map, FIELDS)
    default_kind = check_kind(kind, "kind") if kind else None
    explicit_words = {w: check_kind(k, f"kind value {w!r}") for w, k in (kind_values or {}).items()}
    if fmt == "jsonl":
        rows, errors, keys = _jsonl_rows(data, mapping)
    elif fmt == "csv":
        rows, errors, keys = _csv_rows(data, mapping)
    else:
        raise DataError(f"Unknown prompt-file format {fmt!r}; use 'jsonl' or 'csv'.")
    n_rows = len(rows) + len(errors)  # parse errors are one per row
    if n_rows == 0:
        raise DataError("The file has no data rows: it needs one item per line (JSONL) or a header and data rows (CSV).")
    missing = [f for f in REQUIRED_FIELDS if f not in keys]
    if missing and (rows or not errors):
        raise DataError(
            f"Missing required column(s): {', '.join(missing)}. Found: {', '.join(sorted(keys)) or 'none'}. "
            "Map your column names to these fields (e.g. question ← prompt)."
        )
    words = _kind_words(rows, explicit_words)
    items, seen = [], {}
    for line, raw in rows:
        try:
            item = _to_item(raw, line, default_kind, words)
        except DataError as exc:
            errors.append(RowError(line, str(exc)))
            continue
        if item.id in seen:
            errors.append(RowError(line, f"Duplicate id {item.id!r} (first used on line {seen[item.id]}); row dropped."))
            continue
        seen[item.id] = line
        items.append(item)
    unknown = sorted(keys - set(FIELDS) - set(IGNORED_FIELDS))
    warnings = (f"Ignored column(s) not used by studies: {', '.join(unknown)}.",) if unknown else ()
    errors.sort(key=lambda e: e.line)
    return LoadResult(tuple(items), tuple(errors), digest, fmt, n_rows, warnings, tuple(sorted(words.items())))


def _kind_words(rows: list[tuple[int, dict[str, Any]]], explicit: dict[str, str]) -> dict[str, str]:
    """``{word: kind}`` for the kind column's words: the recognised ones, then the caller's own."""
    seen = {str(raw["kind"]).strip() for _, raw in rows if isinstance(raw.get("kind"), str)}
    return {**suggest_kind_values(seen), **{w: k for w, k in explicit.items() if w in seen}}


def _rename(raw: dict[str, Any], mapping: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    if not mapping:
        return raw
    mapped_fields = {name for names in mapping.values() for name in names}
    out = {k: v for k, v in raw.items() if k not in mapping and k not in mapped_fields}
    for column, names in mapping.items():
        if column in raw:
            for name in names:
                out[name] = raw[column]
    return out


def _jsonl_rows(data: bytes, mapping: dict[str, tuple[str, ...]]) -> tuple[list[tuple[int, dict[str, Any]]], list[RowError], set[str]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    errors: list[RowError] = []
    keys: set[str] = set()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        if len(rows) + len(errors) >= MAX_ROWS:
            raise DataError(_too_many_rows())
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError:
            errors.append(RowError(number, "Not UTF-8 text; save the file as UTF-8."))
            continue
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            errors.append(RowError(number, f"Not valid JSON ({exc.msg} at column {exc.colno})."))
            continue
        except (ValueError, RecursionError) as exc:  # NaN/Infinity, integers over 4300 digits, deep nesting
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            errors.append(RowError(number, f"Not valid JSON ({reason})."))
            continue
        if not isinstance(value, dict):
            errors.append(RowError(number, f"Expected a JSON object {{...}}, got {type(value).__name__}."))
            continue
        value = _rename(value, mapping)
        keys.update(value)
        rows.append((number, value))
    return rows, errors, keys


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _csv_rows(data: bytes, mapping: dict[str, tuple[str, ...]]) -> tuple[list[tuple[int, dict[str, Any]]], list[RowError], set[str]]:
    text = _decode_all(data)
    first = text.split("\n", 1)[0]
    try:
        delimiter = csv.Sniffer().sniff(first, delimiters=",;\t").delimiter if first.strip() else ","
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration as exc:
        raise DataError("The CSV file is empty: it needs a header row (question, answer, …) and data rows.") from exc
    except csv.Error as exc:
        raise DataError(f"The CSV header could not be read: {exc}.") from exc
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"The CSV header repeats column name(s): {', '.join(dupes)}. Rename them.")
    keys = set(_rename(dict.fromkeys(header, ""), mapping))
    rows: list[tuple[int, dict[str, Any]]] = []
    errors: list[RowError] = []
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(RowError(start, f"Unreadable CSV row: {exc}."))
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(rows) + len(errors) >= MAX_ROWS:
            raise DataError(_too_many_rows())
        if len(cells) != len(header):
            errors.append(RowError(line, f"Has {len(cells)} cells but the header has {len(header)} columns."))
            continue
        renamed = _rename(dict(zip(header, cells)), mapping)
        rows.append((line, {name: _split_cell(name, cell) for name, cell in renamed.items()}))
    return rows, errors, keys


def _split_cell(name: str, cell: str) -> Any:
    """CSV cells are text; list fields are ``|``-separated (``\\|`` literal), empty cells are missing values."""
    cell = cell.strip()
    if name in LIST_FIELDS:
        return split_accepted(cell)
    return cell or None


def _text(raw: dict[str, Any], key: str, allow_number: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise DataError(f"Field {key!r} must be text, got true/false.")
    if allow_number and isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"Field {key!r} must be a finite number, got {value}.")
    if allow_number and isinstance(value, (int, float)):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if not isinstance(value, str):
        raise DataError(f"Field {key!r} must be text, got {type(value).__name__}.")
    return _valid_text(value, key).strip() or None


def _valid_text(value: str, key: str) -> str:
    """``value``, or a row error when it holds a lone surrogate (a ``\\ud800`` JSON escape) or a NUL."""
    reason = invalid_text_reason(value)
    if reason:
        raise DataError(f"Field {key!r} {reason}.")
    return value


def _text_list(raw: dict[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DataError(f"Field {key!r} must be a list of strings, got {type(value).__name__}.")
    out = []
    for v in value:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "tags":
            v = str(v)
        if not isinstance(v, str):
            raise DataError(f"Field {key!r} must contain only strings, found {type(v).__name__}.")
        if _valid_text(v, key).strip():
            out.append(v.strip())
    return tuple(out)


def infer_kind(answer: str | None, choices: Sequence[str]) -> str:
    """Default task kind: options → multiple_choice; a numeric answer → numeric; else short_answer."""
    if choices:
        return "multiple_choice"
    if answer is not None and parse_number(answer) is not None:
        return "numeric"
    return "short_answer"


def _accepted(raw: dict[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """The answer and the aliases: the answer cell's first accepted answer, then its others and the aliases."""
    answer = _text(raw, "answer", allow_number=True)
    parts = split_accepted(answer) if answer is not None else []
    if parts:
        answer = parts[0]
    aliases = dict.fromkeys(p for p in [*parts[1:], *_text_list(raw, "aliases")] if p != answer)
    return answer, tuple(aliases)


def _to_item(raw: dict[str, Any], line: int, default_kind: str | None = None,
             kind_words: Mapping[str, str] | None = None) -> PromptItem:
    """Validate one row (raises DataError with the reason)."""
    question = raw.get("question")
    if not isinstance(question, str):
        raise DataError("Missing question." if question is None else f"Field 'question' must be text, got {type(question).__name__}.")
    try:
        question = clean_prompt(question)
    except PromptError as exc:
        raise DataError(str(exc)) from exc
    item_id = _text(raw, "id", allow_number=True) or f"line-{line}"
    answer, aliases = _accepted(raw)
    choices = _text_list(raw, "choices")
    if len(choices) > MAX_CHOICES:
        raise DataError(f"{len(choices)} choices; at most {MAX_CHOICES} (A–Z) are supported.")
    kind = _text(raw, "kind")
    kind = (kind_words or {}).get(kind, kind) if kind else default_kind or infer_kind(answer, choices)
    if kind not in TASK_KINDS:
        raise DataError(f"Unknown kind {kind!r}; use one of {', '.join(TASK_KINDS)}, or map the word to one "
                        "(Study page: kind values; CLI: --kind-value WORD=KIND).")
    _check_answer(kind, answer, choices)
    return PromptItem(
        id=item_id,
        question=question,
        answer=answer,
        aliases=aliases,
        choices=choices,
        kind=kind,
        answer_prefix=_text(raw, "answer_prefix"),
        tags=_text_list(raw, "tags"),
        source=_text(raw, "source") or "",
        license=_text(raw, "license") or "",
        output=_text(raw, "output"),
    )


_LETTER = re.compile(r"^[A-Za-z]$")


def _check_answer(kind: str, answer: str | None, choices: tuple[str, ...]) -> None:
    if kind == "multiple_choice":
        if len(choices) < 2:
            raise DataError("A multiple_choice item needs at least two choices.")
        if answer is not None and _LETTER.match(answer):
            if ord(answer.upper()) - 65 >= len(choices):
                raise DataError(f"Answer {answer!r} is not one of the {len(choices)} options (A–{chr(64 + len(choices))}).")
        elif answer is not None and answer not in choices:
            raise DataError(f"Answer {answer!r} is neither an option letter nor one of the choices.")
    elif kind == "numeric" and answer is not None and parse_number(answer) is None:
        raise DataError(f"Kind is numeric but the answer {answer!r} is not a number.")
