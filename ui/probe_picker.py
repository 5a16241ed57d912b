"""Saved correctness probes on the pages: the picker over the run folders' probes, and the weak-probe note.

Probes are read through :func:`ic_core.library.load_saved_probe` (confined to the runs folder);
the note's reasons come from :func:`ic_core.library.weak_probe_reasons`, i.e. from what the
saved probe records about its own training.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ic_core.errors import ICError
from ic_core.library import load_saved_probe, saved_probe_files, weak_probe_reasons
from ic_core.probes.saved import SavedProbe
from ic_core.runs.store import runs_root
from ui.common import GATE_PROBE_KEY, md_text


def probe_label(path: str, root: Path) -> str:
    """``<run>/probes/<name>`` for a probe's ``.json`` path."""
    p = Path(path)
    try:
        return str(p.with_suffix("").relative_to(root))
    except ValueError:
        return p.stem


def saved_probe_picker(key: str) -> SavedProbe | None:
    """A picker over the probes saved in run folders; the chosen probe becomes the session's probe.

    Args:
        key: Widget-key prefix of the page (two pages may show a picker).

    Returns:
        The loaded probe after the user pressed "Load", else None.

    """
    root = runs_root()
    files = saved_probe_files(root)
    if not files:
        st.caption("No correctness probe saved yet — train and save one on the Recoverability page.")
        return None
    paths = {probe_label(str(p), root): str(p) for p in files}
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    choice = c1.selectbox("Saved probe", list(paths), key=f"{key}_saved_probe",
                          help=f"Correctness probes saved in the run folders under {root}.")
    if not c2.button("Load", key=f"{key}_load_probe"):
        return None
    try:
        probe = load_saved_probe(Path(paths[choice]), root)
    except ICError as exc:
        st.error(f"**Probe refused.** {md_text(exc)}")
        return None
    st.session_state[GATE_PROBE_KEY] = probe
    return probe


def weak_probe_note(probe: SavedProbe) -> None:
    """A warning beside a P(correct) when the probe barely separates right from wrong answers."""
    reasons = weak_probe_reasons(probe)
    if reasons:
        st.warning("**This probe barely separates right from wrong answers:** " + "; ".join(reasons)
                   + ". Read its P(correct) as close to the base rate of its training run "
                   f"({probe.n_train_correct} of {probe.n_train} right), not as a verdict on this answer.")
