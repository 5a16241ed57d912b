"""The typed row of a run table: its columns, the one definition of graded, the read-out label."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

TABLE_COLUMNS: tuple[str, ...] = (
    "row", "item_id", "regime", "question", "kind", "expected", "output_text", "extracted_answer", "correct",
    "grade_rule", "h_int_bits", "h_int_top100_bits", "top1_prob", "mean_token_entropy_bits", "n_prompt_tokens",
    "readout_token", "signal", "answer_prefix", "tags",
)
"""Columns every :attr:`StudyRun.table` has (more follow them)."""
READOUT_NAMES = {"H_int": "H_int (last prompt token)", "H_slot": "H_slot (after the answer prefix)"}


def _table(records: list[dict[str, Any]]) -> pd.DataFrame:
    extra = ("plan_row", "output_source", "stop_reason", "n_generated_tokens", "max_new_tokens", "generate_s",
             "readout_index", "readout_is_formatting", "skipped_tokens", "top_tokens", "choices", "aliases",
             "user_text", "item_prefix_used", "generated_tokens", "token_entropies_bits")
    columns = list(TABLE_COLUMNS) + list(extra)
    data = {c: [] for c in columns}
    for i, rec in enumerate(records):
        for c in columns:
            if c == "row":
                data[c].append(i)
            elif c == "plan_row":
                data[c].append(int(rec["row"]))
            else:
                data[c].append(rec.get(c))
    # object columns keep None as None (pandas 3 would turn missing text into NaN)
    table = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in data.items()}, columns=columns)
    for c in ("h_int_bits", "h_int_top100_bits", "top1_prob", "mean_token_entropy_bits", "generate_s"):
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
    for c in ("row", "plan_row", "n_prompt_tokens"):
        table[c] = table[c].astype(np.int64)
    return table


def is_graded(value: object) -> bool:
    """Whether a ``correct`` cell holds a verdict: ``True``/``False``, not ``None`` (ungraded) or NaN."""
    return isinstance(value, (bool, np.bool_))


def graded_mask(frame: pd.DataFrame) -> np.ndarray:
    """(n,) bool: which rows of a run table carry a verdict (:func:`is_graded`)."""
    return np.fromiter((is_graded(v) for v in frame["correct"]), dtype=bool, count=len(frame))


def graded_correct(frame: pd.DataFrame) -> pd.Series:
    """The ``correct`` column of the graded rows only, as booleans (index kept)."""
    return frame["correct"][graded_mask(frame)].astype(bool)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
