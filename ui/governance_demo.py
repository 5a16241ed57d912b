"""The Governance page's one-click demo on the bundled governance_ops set."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ic_core.errors import ICError
from ic_core.governance.compare import SignalComparison, compare_signals
from ic_core.governance.demo import DEMO_COMMAND, DEMO_LIMIT, DEMO_SET, demo_candidates, make_demo_run
from ic_core.governance.rule import escalates_everything, outcomes
from ic_core.models import LoadedModel, ModelSpec
from ic_core.narrative import (
    comparison_headline,
    comparison_intro,
    comparison_rows,
    escalates_everything_warning,
    small_sample_note,
)
from ic_core.plots.gate import risk_coverage_figure
from ui.common import cached_run, show_error
from ui.governance_cache import ITEM_COLUMN_CONFIG, cached_probe_scores, cached_signals, list_saved_runs, run_label
from ui.progress import ProgressBar, duration_text, measured_speed


@st.cache_resource(max_entries=2, show_spinner="Comparing signals on the held-out items…")
def cached_comparison(path: str, mtime: float, target: float, holdout: float, seed: int, spec: ModelSpec | None,
                      _loaded: LoadedModel | None) -> SignalComparison:
    """The demo's signal comparison on a run (cached on path, mtime and model)."""
    # ``spec`` keys the cache on the model; ``_loaded`` is that model (not hashed).
    sig = cached_signals(path, mtime, None, holdout, seed)
    try:
        scores = cached_probe_scores(path, mtime, None, holdout, seed)
    except ICError:
        scores = None  # compare_signals fits again and records why it could not
    return compare_signals(cached_run(path, mtime), _loaded, target, signals=sig, scores=scores)


def demo_tab(loaded: LoadedModel | None) -> None:
    """The demo tab: make or pick a governance_ops run, then compare the signals on held-out items."""
    st.markdown(
        "A one-click walk-through for governance teams on the bundled **governance_ops** set (60 questions "
        "about shell, git, kubectl, SQL, Docker and deployment safety). The model answers each; we fit "
        "escalation thresholds on part of the items and gate the rest, then show what the gate caught and "
        "what slipped through — for raw **H_int** (the paper's read-out, at the last prompt token), **H_slot** "
        "(after the forced answer prefix *\"The answer is\"*) and a linear **probe** on the state."
    )
    demo_runs, candidates = demo_candidates(list_saved_runs())
    if not demo_runs:
        per_row = measured_speed("study:generate")
        took = (f"{duration_text(per_row * DEMO_LIMIT)} at the speed measured on this machine" if per_row
                else "the progress bar shows the time left once the first rows are done")
        st.info(f"No run of {DEMO_SET} yet. Make one here (about {DEMO_LIMIT} items, direct regime, with the "
                f"answer prefix; {took}), or from a terminal:")
        st.code(DEMO_COMMAND, language="bash")
        if st.button("Make a governance_ops run now", key="gov_demo_make", disabled=loaded is None):
            start_demo_run(loaded)
    if not candidates:
        return
    names = [r.name for r in candidates]
    if st.session_state.get("gov_demo_run_name") not in names:
        st.session_state["gov_demo_run_name"] = names[0]
    chosen = st.selectbox("Run to demo on (the newest governance_ops run first)", names, key="gov_demo_run_name",
                          format_func=lambda n: run_label(candidates[names.index(n)]))
    info = candidates[names.index(chosen)]
    c1, c2 = st.columns(2)
    target = c1.slider("Target error among auto-approved answers", 0.0, 0.9, 0.5, 0.05, key="gov_demo_target",
                       help="Thresholds are fitted on the training items to keep the error among approved "
                            "answers at or below this.")
    holdout = c2.slider("Held-out share", 0.2, 0.6, 0.4, 0.05, key="gov_demo_holdout")
    autorun = st.session_state.pop("gov.demo_autorun", False) and info.dataset_name == DEMO_SET
    if st.button("Run the demo", key="gov_demo_run", type="primary") or autorun:
        st.session_state["gov.demo_args"] = (str(info.path), info.mtime, float(target), float(holdout))
    args = st.session_state.get("gov.demo_args")
    if not args:
        return
    try:
        comp = cached_comparison(*args, 0, loaded.spec if loaded else None, loaded)
    except ICError as exc:
        show_error(exc)
        return
    show_comparison(comp)


def start_demo_run(loaded: LoadedModel) -> None:
    """Make the demo run with a progress bar, then rerun the page with the demo on it."""
    try:
        make_demo_run(loaded, ProgressBar("rows", "study:generate"))
    except ICError as exc:
        show_error(exc)
        return
    st.session_state["gov.demo_autorun"] = True  # one click: the demo runs on the new run right away
    st.rerun()


def show_comparison(comp: SignalComparison) -> None:
    """The comparison table, risk–coverage curves and the caught / slipped items."""
    sig = comp.signals
    st.markdown(comparison_intro(comp))
    st.dataframe(pd.DataFrame(comparison_rows(comp)), hide_index=True, key="gov_demo_table")
    st.markdown(comparison_headline(comp))
    for note in comp.notes:
        st.info(note)
    small = small_sample_note(sig.test_idx.size)
    if small:
        st.caption(small)
    curves = {r.name: r.held_out_curve for r in comp.results}
    st.plotly_chart(risk_coverage_figure(curves, target_error=comp.target_error), key="gov_demo_rc")
    names = [r.name for r in comp.results]
    default = next((i for i, r in enumerate(comp.results) if r.key != "h_int"), 0)
    chosen = st.selectbox("Show the held-out items for", names, index=default, key="gov_demo_signal")
    r = comp.results[names.index(chosen)]
    seen = outcomes(r.escalate, sig.correct, sig.test_idx)
    score = {"risk (bits, or −P)": r.risk}
    if escalates_everything(r.escalate, sig.test_idx):
        st.warning(escalates_everything_warning(chosen, r.threshold_text))
    c1, c2 = st.columns(2)
    c1.markdown(f"**Caught** — escalated, and the answer was wrong ({seen.caught.size})")
    c1.dataframe(sig.items_table(seen.caught, score), hide_index=True, key="gov_demo_caught", column_config=ITEM_COLUMN_CONFIG)
    c2.markdown(f"**Slipped through** — approved, but the answer was wrong ({seen.slipped.size})")
    c2.dataframe(sig.items_table(seen.slipped, score), hide_index=True, key="gov_demo_slipped", column_config=ITEM_COLUMN_CONFIG)
