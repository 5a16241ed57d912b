"""The typed row of a run table: one :class:`RunRow` per line of ``items.jsonl``, the one definition of graded."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd

from ic_core.errors import DataError

TABLE_COLUMNS: tuple[str, ...] = (
    "row", "item_id", "regime", "question", "kind", "expected", "output_text", "extracted_answer", "correct",
    "grade_rule", "readout_entropy_bits", "readout_entropy_top100_bits", "top1_prob", "mean_token_entropy_bits", "n_prompt_tokens",
    "readout_token", "signal", "answer_prefix", "tags",
)
"""Columns every :attr:`StudyRun.table` has (more follow them)."""
EXTRA_COLUMNS: tuple[str, ...] = (
    "plan_row", "output_source", "stop_reason", "n_generated_tokens", "max_new_tokens", "generate_s",
    "readout_index", "readout_is_formatting", "skipped_tokens", "top_tokens", "choices", "aliases",
    "user_text", "item_prefix_used", "generated_tokens", "token_entropies_bits",
    "complied", "compliance_reason", "last_token_entropy_bits", "second_digit_entropy_bits",
)
"""Columns after :data:`TABLE_COLUMNS`, in this order."""
Signal = Literal["H_int", "H_slot"]
"""Where the state was read: the last prompt token (``H_int``) or after a forced answer prefix (``H_slot``)."""
SIGNALS: tuple[str, ...] = ("H_int", "H_slot")
CONTROL_REGIME = "babble"
"""The control regime: its rows are checked for compliance (:mod:`ic_core.compliance`), never graded."""


@dataclass(frozen=True)
class RunRow:
    """One finished (item, regime) row of a study, exactly as one line of ``items.jsonl`` holds it.

    Field order is the key order of the JSON object. Lists are tuples here and lists in JSON.
    """

    row: int
    """Place in the run's plan: item ``row // len(regimes)`` in regime ``regimes[row % len(regimes)]``."""
    item_id: str
    regime: str
    question: str
    kind: str
    """The item's task kind (:data:`ic_core.prompts.TASK_KINDS`)."""
    expected: str | None
    """Reference answer; None if the item has none."""
    aliases: tuple[str, ...]
    choices: tuple[str, ...]
    tags: tuple[str, ...]
    output_text: str | None
    """The graded output (the forced prefix followed by the generation, or the dataset's); None if none."""
    output_source: str | None
    """``generated``, ``dataset`` or None (nothing to grade)."""
    extracted_answer: str | None
    correct: bool | None
    """The verdict; None when ungraded (no output or no expected answer)."""
    grade_rule: str | None
    readout_entropy_bits: float | None
    """Entropy of the next-token distribution at the read-out, bits (H_slot when read after a prefix)."""
    readout_entropy_top100_bits: float | None
    """The same over the renormalised top-100 logits, bits."""
    top1_prob: float | None
    """Probability (0–1) of the most likely next token at the read-out."""
    top_tokens: tuple[tuple[str, float], ...]
    """Up to 5 ``(token text, probability)`` pairs at the read-out."""
    mean_token_entropy_bits: float | None
    """Mean entropy of the generated tokens, bits; None without generation."""
    generated_tokens: tuple[str, ...] | None
    token_entropies_bits: tuple[float, ...] | None
    """Entropy of each generated token, bits (rounded to 4 decimals)."""
    n_generated_tokens: int | None
    stop_reason: str | None
    max_new_tokens: int | None
    """The token budget of this row's generation; None without generation."""
    generate_s: float | None
    """Wall time of the generation, seconds."""
    n_prompt_tokens: int
    readout_index: int
    """Token position read (0-based, in the rendered prompt)."""
    readout_token: str
    readout_is_formatting: bool
    skipped_tokens: tuple[str, ...]
    """Whitespace tokens written greedily before the read-out, as text."""
    signal: Signal
    answer_prefix: str | None
    """The forced answer prefix the state was read after; None for H_int."""
    item_prefix_used: bool
    """The prefix came from the item (not from the run's ``answer_prefix``)."""
    user_text: str
    """The user message as rendered."""
    complied: bool | None = None
    """Control rows (babble) only: the output gave neither the answer nor an ``=`` result
    (:func:`ic_core.compliance.check_compliance`); None on other rows and without output."""
    compliance_reason: str | None = None
    """Why a control row complied or not (``complied``, ``contains the answer``, …); None elsewhere."""
    last_token_entropy_bits: float | None = None
    """Entropy at the last prompt token (H_int), bits, for every row: the read-out itself when it
    is H_int, an extra read of the prompt without the prefix when the read-out is H_slot. None in
    runs made before it was recorded."""
    second_digit_entropy_bits: float | None = None
    """Entropy after the answer prefix and the gold answer's first digit (teacher-forced), bits;
    only when the study asked for it, for direct rows of numeric items with answers of ≥ 2 digits."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``items.jsonl`` (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "top_tokens":
                value = [[t, p] for t, p in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, obj: object) -> RunRow:
        """A row from one parsed ``items.jsonl`` line; unknown keys are ignored.

        Fields of :data:`OPTIONAL_FIELDS` may be missing (rows written before them). A control
        (babble) row is never graded: a verdict stored by older versions is dropped on load, and
        its compliance is worked out from its output when the row does not carry it.

        Raises:
            DataError: not an object, a key missing, or a value of the wrong type (the message names it).

        """
        if not isinstance(obj, Mapping):
            raise DataError(f"a row must be a JSON object, got {type(obj).__name__}")
        obj = {LEGACY_KEYS.get(k, k): v for k, v in obj.items()}
        values = {}
        for name, (check, expected) in _FIELD_TYPES.items():
            if name not in obj:
                if name in OPTIONAL_FIELDS:
                    continue
                raise DataError(f"the row lacks {name!r}")
            try:
                values[name] = check(obj[name])
            except (TypeError, ValueError):
                raise DataError(f"{name!r} must be {expected}, got {_shown(obj[name])}") from None
        if values["regime"] == CONTROL_REGIME:
            values.update(_control_values(values))
        return cls(**values)


OPTIONAL_FIELDS: frozenset[str] = frozenset(
    {"complied", "compliance_reason", "last_token_entropy_bits", "second_digit_entropy_bits"}
)
"""Row fields added after the format's first version: missing in older rows, None then."""


def _control_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A control row as loaded: no verdict, and its compliance (from the output if not stored)."""
    from ic_core.compliance import check_compliance

    out: dict[str, Any] = {"correct": None, "extracted_answer": None, "grade_rule": None}
    if values.get("complied") is None and values["output_text"] is not None:
        verdict = check_compliance(
            values["output_text"], values["expected"], values["kind"], values["aliases"], values["choices"],
        )
        out.update(complied=verdict.complied, compliance_reason=verdict.reason)
    return out


LEGACY_KEYS: dict[str, str] = {
    "h_int_bits": "readout_entropy_bits", "h_int_top100_bits": "readout_entropy_top100_bits",
}
"""Keys of rows written before the read-out entropy had its own name (it was ``h_int_bits`` even
when the row was read after an answer prefix, i.e. H_slot); such run folders still load."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError
    return v


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError
    return v


def _float(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TypeError
    return float(v)


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError
    return v


def _strs(v: object) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise TypeError
    return tuple(_str(x) for x in v)


def _floats(v: object) -> tuple[float, ...]:
    if not isinstance(v, list):
        raise TypeError
    return tuple(_float(x) for x in v)


def _top(v: object) -> tuple[tuple[str, float], ...]:
    if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 for p in v):
        raise TypeError
    return tuple((_str(t), _float(p)) for t, p in v)


def _signal(v: object) -> Signal:
    if v not in SIGNALS:
        raise ValueError
    return v  # type: ignore[return-value]


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda v: None if v is None else check(v)


_FIELD_TYPES: dict[str, tuple[Callable[[object], Any], str]] = {
    "row": (_int, "an integer"), "item_id": (_str, "text"), "regime": (_str, "text"), "question": (_str, "text"),
    "kind": (_str, "text"), "expected": (_optional(_str), "text or null"), "aliases": (_strs, "a list of texts"),
    "choices": (_strs, "a list of texts"), "tags": (_strs, "a list of texts"),
    "output_text": (_optional(_str), "text or null"), "output_source": (_optional(_str), "text or null"),
    "extracted_answer": (_optional(_str), "text or null"), "correct": (_optional(_bool), "true, false or null"),
    "grade_rule": (_optional(_str), "text or null"), "readout_entropy_bits": (_optional(_float), "a finite number or null"),
    "readout_entropy_top100_bits": (_optional(_float), "a finite number or null"),
    "top1_prob": (_optional(_float), "a finite number or null"),
    "top_tokens": (_top, "a list of [token, probability] pairs"),
    "mean_token_entropy_bits": (_optional(_float), "a finite number or null"),
    "generated_tokens": (_optional(_strs), "a list of texts or null"),
    "token_entropies_bits": (_optional(_floats), "a list of finite numbers or null"),
    "n_generated_tokens": (_optional(_int), "an integer or null"), "stop_reason": (_optional(_str), "text or null"),
    "max_new_tokens": (_optional(_int), "an integer or null"),
    "generate_s": (_optional(_float), "a finite number or null"), "n_prompt_tokens": (_int, "an integer"),
    "readout_index": (_int, "an integer"), "readout_token": (_str, "text"), "readout_is_formatting": (_bool, "true or false"),
    "skipped_tokens": (_strs, "a list of texts"), "signal": (_signal, "'H_int' or 'H_slot'"),
    "answer_prefix": (_optional(_str), "text or null"), "item_prefix_used": (_bool, "true or false"),
    "user_text": (_str, "text"), "complied": (_optional(_bool), "true, false or null"),
    "compliance_reason": (_optional(_str), "text or null"),
    "last_token_entropy_bits": (_optional(_float), "a finite number or null"),
    "second_digit_entropy_bits": (_optional(_float), "a finite number or null"),
}


def table_from_rows(rows: Sequence[RunRow]) -> pd.DataFrame:
    """The run table of some rows, in the given order.

    Columns :data:`TABLE_COLUMNS` then :data:`EXTRA_COLUMNS`. ``row`` is the position in this
    table (it indexes the run's state arrays), ``plan_row`` the row's place in the plan. Cells hold
    the JSON values (lists, None), so a table of loaded rows equals one of the rows as written.
    """
    columns = list(TABLE_COLUMNS) + list(EXTRA_COLUMNS)
    records = [r.to_json() for r in rows]
    data: dict[str, list[Any]] = {c: [] for c in columns}
    for i, rec in enumerate(records):
        for c in columns:
            data[c].append(i if c == "row" else rec["row"] if c == "plan_row" else rec[c])
    # object columns keep None as None (pandas 3 would turn missing text into NaN)
    table = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in data.items()}, columns=columns)
    for c in ("readout_entropy_bits", "readout_entropy_top100_bits", "top1_prob", "mean_token_entropy_bits", "generate_s",
              "last_token_entropy_bits", "second_digit_entropy_bits"):
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
    for c in ("row", "plan_row", "n_prompt_tokens"):
        table[c] = table[c].astype(np.int64)
    return table


def is_graded(value: object) -> bool:
    """Whether a ``correct`` cell holds a verdict: ``True``/``False``, not ``None`` (ungraded) or NaN."""
    return isinstance(value, (bool, np.bool_))


def graded_mask(frame: pd.DataFrame) -> np.ndarray:
    """(n,) bool: which rows of a run table carry a verdict (:func:`is_graded`); control (babble) rows never do."""
    graded = np.fromiter((is_graded(v) for v in frame["correct"]), dtype=bool, count=len(frame))
    if "regime" in frame:
        graded &= (frame["regime"] != CONTROL_REGIME).to_numpy(dtype=bool)
    return graded


def graded_correct(frame: pd.DataFrame) -> pd.Series:
    """The ``correct`` column of the graded rows only, as booleans (index kept)."""
    return frame["correct"][graded_mask(frame)].astype(bool)


def verdict_label(value: object) -> str:
    """``correct``, ``wrong`` or ``not graded`` for a ``correct`` cell (:func:`is_graded` decides)."""
    return ("correct" if value else "wrong") if is_graded(value) else "not graded"


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, or None when it is None, NaN or infinite (JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else float(x)
