"""Governance pages' shared pieces: cached engine calls on a run, the run list and its labels."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import streamlit as st

from ic_core.governance.compare import SignalQuality, signal_quality
from ic_core.governance.demo import runs_with_rows
from ic_core.governance.fit import ProbeScores, probe_scores
from ic_core.governance.fit_ltt import ReadoutOption, readout_options
from ic_core.governance.signals import RunSignals, run_signals
from ic_core.runs.store import RunInfo, list_runs
from ui.common import cached_run

# Item ids shown whole in the item tables: "medium" cut ids such as "governance_ops-0042" at 1400 px, "large"
# (400 px) pushed the expected answer off the table; 190 px fits a 24-character id.
ITEM_COLUMN_CONFIG = {"item_id": st.column_config.TextColumn("item id", width=190, pinned=True)}
LTT_FITS_KEPT = 8
"""Learn-then-Test fits kept per server (each holds its run's split and a 200-split simulation)."""


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_signals(path: str, mtime: float, regime: str | None, holdout: float, seed: int,
                   readout: str = "auto") -> RunSignals:
    """The run's signals and split at ``readout`` (cached on path and mtime)."""
    return run_signals(cached_run(path, mtime), regime, holdout, seed, readout=readout)


@st.cache_resource(max_entries=4, show_spinner="Fitting a probe on the training items (nested CV)…")
def cached_probe_scores(path: str, mtime: float, regime: str | None, holdout: float, seed: int,
                        readout: str = "auto") -> ProbeScores:
    """Probe P(correct) on the run by nested CV on the training items (cached)."""
    return probe_scores(cached_run(path, mtime), cached_signals(path, mtime, regime, holdout, seed, readout))


@st.cache_resource(max_entries=8, show_spinner=False)
def cached_readout_options(path: str, mtime: float, regime: str | None) -> list[ReadoutOption]:
    """The read-outs the run can be gated on, agent-ready first (cached on path and mtime)."""
    return readout_options(cached_run(path, mtime), regime)


@st.cache_data(max_entries=16, show_spinner="Bootstrapping AUROC, AURC, E-AURC and AUGRC on the held-out items…")
def cached_quality(name: str, score_correct: np.ndarray, correct: np.ndarray, test_idx: np.ndarray,
                   seed: int) -> SignalQuality:
    """AUROC and the selective-prediction statistics of one signal on the held-out items (cached on the arrays)."""
    return signal_quality(name, score_correct, correct, test_idx, seed=seed)


@st.cache_resource(max_entries=1)
def ltt_fits() -> OrderedDict[tuple[Any, ...], Any]:
    """Learn-then-Test fits of this server, newest last (at most :data:`LTT_FITS_KEPT`; read-only once stored)."""
    return OrderedDict()


def keep_ltt_fit(key: tuple[Any, ...], fit: Any) -> None:
    """Store a fit under ``key``, dropping the oldest beyond :data:`LTT_FITS_KEPT`."""
    fits = ltt_fits()
    fits[key] = fit
    fits.move_to_end(key)
    while len(fits) > LTT_FITS_KEPT:
        fits.popitem(last=False)


def list_saved_runs() -> list[RunInfo]:
    """Saved runs that have rows."""
    return runs_with_rows(list_runs())

