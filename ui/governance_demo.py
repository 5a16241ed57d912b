"""The Governance page's one-click demo on the bundled governance_ops set.

The demo's run is a background job (:mod:`ui.jobs`): its first figures come from the first
:data:`ic_core.governance.demo.DEMO_FIRST` items (four per topic) while the rest are answered,
then from the whole set; the page says which set and how many items it shows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ic_core.errors import ICError
from ic_core.governance.compare import SignalComparison, compare_signals
from ic_core.governance.demo import (
    DEMO_COMMAND,
    DEMO_FIRST,
    DEMO_LIMIT,
    DEMO_SET,
    demo_candidates,
    demo_run_path,
    demo_view,
    first_rows,
    make_demo_run,
)
from ic_core.governance.rule import escalates_everything, outcomes
from ic_core.jobs import JobContext, JobFn, JobInfo, job_queue
from ic_core.models import LoadedModel, ModelSpec
from ic_core.narrative import (
    comparison_headline,
    comparison_intro,
    comparison_rows,
    escalates_everything_warning,
    quality_rows,
    small_sample_note,
)
from ic_core.plots.gate import risk_coverage_figure
from ic_core.runs.store import run_mtime
from ui.common import cached_run, md_text, show_error
from ui.governance_cache import ITEM_COLUMN_CONFIG, cached_quality, list_saved_runs
from ui.jobs import live_job, submit
from ui.progress import duration_text, measured_speed

DEMO_ON_KEY = "gov.demo_on"
"""The run folder whose demo figures this session asked for (the button, or the one click that made the run)."""
PENDING_KEY = "gov.demo_pending_run"
"""The run folder name the demo should pick as soon as it is listed (set when the demo run is queued)."""


@st.cache_resource(max_entries=4, show_spinner="Comparing signals on the held-out items…")
def cached_comparison(path: str, n_rows: int, target: float, holdout: float, seed: int, spec: ModelSpec | None,
                      _loaded: LoadedModel | None) -> SignalComparison:
    """The demo's signal comparison on the run's first ``n_rows`` plan rows (cached on path, rows and model).

    Finished rows never change, so (path, n_rows) names the same rows while the run keeps growing.
    """
    # ``spec`` keys the cache on the model; ``_loaded`` is that model (not hashed).
    run = first_rows(cached_run(path, run_mtime(path)), n_rows)
    return compare_signals(run, _loaded, target, holdout=holdout, seed=seed)


def demo_job(loaded: LoadedModel, folder: str) -> JobFn:
    """The background job that answers the demo's items (the first figures come from its first rows)."""
    def run(ctx: JobContext) -> str:
        ctx.set_result_path(folder)
        return str(make_demo_run(loaded, ctx.progress, ctx.cancelled, out=folder).path)
    return run


def start_demo_run(loaded: LoadedModel) -> None:
    """Queue the demo run as a background job; the figures appear once its first items are answered."""
    folder = demo_run_path()  # named by the minute: computed once, the job keeps it
    if active_demo_job() is None:
        submit("governance_demo", Path(folder).name, demo_job(loaded, folder), result_path=folder,
               speed_task="study:generate")
    st.session_state[DEMO_ON_KEY] = folder  # one click: the demo runs on the new run as soon as it can
    # picked once its folder is listed (the job creates it a moment later; until then another run is shown)
    st.session_state[PENDING_KEY] = Path(folder).name
    st.rerun()


def active_demo_job() -> JobInfo | None:
    """The running or queued demo run (one at a time for the whole server), if any."""
    return next((j for j in job_queue().jobs() if j.kind == "governance_demo" and not j.finished), None)


def no_run_yet(loaded: LoadedModel | None) -> None:
    """What to do when there is no governance_ops run: make one here (in the background) or in a terminal."""
    per_row = measured_speed("study:generate")
    took = (f"the first figures after {DEMO_FIRST} items, in {duration_text(per_row * DEMO_FIRST)}, and all "
            f"{DEMO_LIMIT} in {duration_text(per_row * DEMO_LIMIT)} at the speed measured on this machine" if per_row
            else f"the first figures appear after {DEMO_FIRST} items, the bar shows the time left")
    st.info(f"No run of {DEMO_SET} yet. Make one here ({DEMO_LIMIT} items, direct regime, with the answer prefix, "
            f"answered in the background; {took}), or from a terminal:")
    st.code(DEMO_COMMAND, language="bash", wrap_lines=True)  # one long line: wrapped, never cut at the right
    if st.button("Make a governance_ops run now", key="gov_demo_make", disabled=loaded is None):
        start_demo_run(loaded)


def rerun_at_first_figures() -> Callable[[JobInfo], None]:
    """The live bar's body: rerun the page once when the first :data:`DEMO_FIRST` rows are saved."""
    def body(job: JobInfo) -> None:
        flag = f"gov.demo_first_shown:{job.job_id}"
        if job.done >= DEMO_FIRST and not st.session_state.get(flag):
            st.session_state[flag] = True
            st.rerun(scope="app")
        if job.done < DEMO_FIRST:
            st.caption(f"The first figures appear when {DEMO_FIRST} items are answered ({job.done} so far); the "
                       f"other {DEMO_LIMIT - DEMO_FIRST} follow in the background and replace them when done.")
    return body


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
    job = active_demo_job()
    if job is not None:
        live_job(job.job_id, rerun_at_first_figures(), key="gov_demo_stop")
    elif not demo_runs:
        no_run_yet(loaded)
    if not candidates:
        return
    names = [r.name for r in candidates]
    if st.session_state.get(PENDING_KEY) in names:
        st.session_state["gov_demo_run_name"] = st.session_state.pop(PENDING_KEY)
    if st.session_state.get("gov_demo_run_name") not in names:
        st.session_state["gov_demo_run_name"] = names[0]
    writing = {r.name for r in candidates if job_queue().active_for(str(r.path)) is not None}
    chosen = st.selectbox("Run to demo on (the newest governance_ops run first)", names, key="gov_demo_run_name",
                          format_func=lambda n: candidates[names.index(n)].picker_label(n in writing))
    info = candidates[names.index(chosen)]
    view = demo_view(info.n_rows_done, info.n_rows_planned, chosen in writing)
    if not view.ready:
        st.info(f"{info.n_rows_done} of {info.n_rows_planned} items answered; the first figures need {DEMO_FIRST}.")
        return
    st.markdown(f"**{md_text(view.text(info.dataset_name))}.**")
    c1, c2 = st.columns(2)
    target = c1.slider("Target error among auto-approved answers", 0.0, 0.9, 0.5, 0.05, key="gov_demo_target",
                       help="Thresholds are fitted on the training items to keep the error among approved "
                            "answers at or below this.")
    holdout = c2.slider("Held-out share", 0.2, 0.6, 0.4, 0.05, key="gov_demo_holdout")
    if st.button("Run the demo", key="gov_demo_run", type="primary"):
        st.session_state[DEMO_ON_KEY] = str(info.path)
    if st.session_state.get(DEMO_ON_KEY) != str(info.path):
        return
    try:
        comp = cached_comparison(str(info.path), view.n_shown, float(target), float(holdout), 0,
                                 loaded.spec if loaded else None, loaded)
    except ICError as exc:
        show_error(exc)
        return
    show_comparison(comp)


def show_comparison(comp: SignalComparison) -> None:
    """The comparison table, risk–coverage curves and the caught / slipped items."""
    sig = comp.signals
    st.markdown(comparison_intro(comp))
    # a few rows of long text: a static table wraps it (a data grid cut the rule column off at 1400 px)
    st.table(pd.DataFrame(comparison_rows(comp)).set_index("signal"))
    st.markdown(comparison_headline(comp))
    quality_table(comp)
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
    # one above the other at the page's width: side by side, half-width grids hid the answer columns
    st.markdown(f"**Caught** — escalated, and the answer was wrong ({seen.caught.size})")
    st.dataframe(sig.items_table(seen.caught, score), hide_index=True, key="gov_demo_caught",
                 column_config=ITEM_COLUMN_CONFIG)
    st.markdown(f"**Slipped through** — approved, but the answer was wrong ({seen.slipped.size})")
    st.dataframe(sig.items_table(seen.slipped, score), hide_index=True, key="gov_demo_slipped",
                 column_config=ITEM_COLUMN_CONFIG)


def quality_table(comp: SignalComparison) -> None:
    """Each signal's held-out AUROC beside AURC, E-AURC and AUGRC (bootstrap CIs), on the same items."""
    sig = comp.signals
    try:
        qualities = [cached_quality(r.name, -np.asarray(r.risk, dtype=np.float64), sig.correct, sig.test_idx, sig.seed)
                     for r in comp.results]
    except ICError as exc:
        show_error(exc)
        return
    st.table(pd.DataFrame(quality_rows(qualities)).set_index("signal"))  # wrapped, every column seen
    st.caption("How well each signal ranks the held-out answers (risk negated: larger = more likely right). "
               "AURC: mean error among the k most trusted answers (lower is better); E-AURC: AURC above a "
               "perfect ranking's; AUGRC: area under the approved-and-wrong share. 95 % bootstrap CIs.")
