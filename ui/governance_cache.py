"""Governance pages' shared pieces: cached engine calls on a run, the run list and its labels."""

from __future__ import annotations

import streamlit as st

from ic_core.governance.demo import runs_with_rows
from ic_core.governance.fit import ProbeScores, probe_scores
from ic_core.governance.signals import RunSignals, run_signals
from ic_core.runs.store import RunInfo, list_runs
from ui.common import cached_run

# item ids shown whole in the item tables (they were cut at the default width)
ITEM_COLUMN_CONFIG = {"item_id": st.column_config.TextColumn("item id", width="medium")}


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_signals(path: str, mtime: float, regime: str | None, holdout: float, seed: int) -> RunSignals:
    """The run's signals and split (cached on path and mtime)."""
    return run_signals(cached_run(path, mtime), regime, holdout, seed)


@st.cache_resource(max_entries=4, show_spinner="Fitting a probe on the training items (nested CV)…")
def cached_probe_scores(path: str, mtime: float, regime: str | None, holdout: float, seed: int) -> ProbeScores:
    """Probe P(correct) on the run by nested CV on the training items (cached)."""
    return probe_scores(cached_run(path, mtime), cached_signals(path, mtime, regime, holdout, seed))


def list_saved_runs() -> list[RunInfo]:
    """Saved runs that have rows."""
    return runs_with_rows(list_runs())


def run_label(info: RunInfo) -> str:
    """One line naming a run: folder, set, model, rows."""
    return f"{info.name} · {info.dataset_name or 'custom'} · {info.model_label} · {info.n_rows_done} rows"
