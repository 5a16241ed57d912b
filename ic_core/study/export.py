"""Exports of a study: JSON-safe metrics and the per-item CSV (spreadsheet formulas neutralised)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ic_core.runs.store import StudyRun
from ic_core.study.compare import RegimeComparison, regime_comparison, summarize


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (np.floating,)):
        return _json_safe(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records (NaN → null)."""
    return [_json_safe(r) for r in frame.to_dict(orient="records")]


def metrics_json(run: StudyRun, comparison: RegimeComparison | None = None) -> dict[str, Any]:
    """The run's headline numbers as one JSON-ready dict (CLI output, metrics download)."""
    comparison = comparison or regime_comparison(run)
    m = run.manifest
    return _json_safe({
        "run": run.name,
        "status": run.status,
        "model": m.get("model_label"),
        "dataset": m.get("dataset", {}).get("name"),
        "regimes": list(run.regimes),
        "n_rows_done": len(run.table),
        "n_rows_planned": run.n_planned,
        "elapsed_s": m.get("elapsed_s"),
        "per_regime": frame_records(comparison.per_regime),
        "pairs": frame_records(comparison.pairs),
        "summary": frame_records(summarize(run)),
    })


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is run as a formula by spreadsheets (OWASP CSV injection)."""


def neutralise_cell(value: Any) -> Any:
    """A text cell made inert for spreadsheets: prefixed with ``'`` when it starts a formula.

    Numbers (including negative ones) and missing values pass unchanged, so numeric columns stay numeric.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def safe_csv(frame: pd.DataFrame) -> str:
    """A DataFrame as RFC 4180 CSV text, every text cell and header neutralised; the one CSV writer of exports."""
    safe = frame.copy()
    safe.columns = [neutralise_cell(str(c)) for c in safe.columns]
    for c in safe.columns:
        if safe[c].dtype == object or pd.api.types.is_string_dtype(safe[c]):
            safe[c] = safe[c].map(neutralise_cell)
    return safe.to_csv(index=False, lineterminator="\r\n")  # RFC 4180: a cell holding a bare CR is quoted


def items_csv(run: StudyRun) -> str:
    """The per-item table as CSV text (list columns joined with ``|``; formula-like text prefixed with ``'``)."""
    cols = [c for c in run.table.columns if c not in ("top_tokens",)]
    frame = run.table[cols].copy()
    for c in ("tags", "choices", "aliases", "skipped_tokens"):
        frame[c] = frame[c].map(lambda v: "|".join(v) if isinstance(v, list) else "")
    return safe_csv(frame)
