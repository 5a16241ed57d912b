"""Exports of a study: JSON-safe metrics and the per-item CSV."""

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


def items_csv(run: StudyRun) -> str:
    """The per-item table as CSV text (list columns joined with ``|``)."""
    cols = [c for c in run.table.columns if c not in ("top_tokens",)]
    frame = run.table[cols].copy()
    for c in ("tags", "choices", "aliases", "skipped_tokens"):
        frame[c] = frame[c].map(lambda v: "|".join(v) if isinstance(v, list) else "")
    return frame.to_csv(index=False)
