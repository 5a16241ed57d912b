"""Background jobs on the pages: submit one, the sidebar panel of running/queued/finished jobs, a job's live bar.

The jobs themselves live in :func:`ic_core.jobs.job_queue` (owned by the server process), so
they keep running when the browser goes to another page; this module only draws them. Live
parts are ``st.fragment(run_every=…)`` blocks that refresh themselves while a job runs and
rerun the whole page once, when the job ends, so the page shows the finished result.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from ic_core.jobs import JobFn, JobInfo, job_queue
from ui.common import md_text

REFRESH_S = 2.0
"""How often a live part redraws while a job runs."""
SEEN_KEY = "jobs.seen_finished"
"""Job ids whose end this session has already rerun the page for."""
KIND_TITLES = {"study": "Study", "recoverability": "Recoverability", "governance_demo": "Governance demo"}
SHOWN_FINISHED = 3


XSRF_COOKIE = "_streamlit_xsrf"
"""Streamlit's per-browser XSRF cookie: ``2|mask|masked token|time``, a new mask on every page load."""


def browser_token(cookie: str | None) -> str | None:
    """A stable id of the browser from its XSRF cookie (hash of the unmasked token), or None.

    The cookie's mask changes on every load but the token under it stays for the browser's
    life, so a reload, or a second tab, is the same owner. Only a hash is kept: the token is
    the browser's secret.
    """
    import hashlib

    parts = (cookie or "").split("|")
    if len(parts) != 4 or parts[0] != "2":
        return None
    try:
        mask, masked = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except ValueError:
        return None
    if not mask or len(masked) < 16:
        return None
    token = bytes(b ^ mask[i % len(mask)] for i, b in enumerate(masked))
    return "browser:" + hashlib.sha256(token).hexdigest()[:32]


def session_owner() -> str | None:
    """The owner of the jobs this page submits: the browser (survives a reload), else the session; None outside a run.

    Without Streamlit's XSRF cookie (XSRF protection off, or a test harness) each session owns its own jobs.
    """
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None:
        return None
    try:
        cookie = st.context.cookies.get(XSRF_COOKIE)
    except Exception:  # noqa: BLE001 - no request context (AppTest): the session owns its jobs
        cookie = None
    return browser_token(cookie) or ctx.session_id


def submit(kind: str, label: str, fn: JobFn, *, result_path: str | None = None, unit: str = "rows",
           speed_task: str | None = None) -> str:
    """Queue ``fn`` as this session's background job and return its id."""
    return job_queue().submit(kind, label, fn, owner=session_owner(), result_path=result_path, unit=unit,
                              speed_task=speed_task)


def my_jobs(kind: str | None = None) -> list[JobInfo]:
    """The current session's jobs (of one kind), running and queued first, then finished (newest first)."""
    owner = session_owner()
    return [j for j in job_queue().jobs() if j.owner == owner and (kind is None or j.kind == kind)]


def active_job(kind: str) -> JobInfo | None:
    """The current session's running or queued job of ``kind``, if any."""
    return next((j for j in my_jobs(kind) if not j.finished), None)


def _title(job: JobInfo) -> str:
    return f"{KIND_TITLES.get(job.kind, job.kind)}: {md_text(job.label, 60)}"


def _rerun_when_finished(job_ids: list[str]) -> None:
    """Rerun the whole page once for each watched job that has ended since the last run."""
    seen: set[str] = st.session_state.setdefault(SEEN_KEY, set())
    ended = [j for j in job_ids if (info := job_queue().info(j)) is not None and info.finished and j not in seen]
    if ended:
        seen.update(ended)
        st.rerun(scope="app")


def job_bar(job: JobInfo, key: str) -> None:
    """One job's bar, its state, and (for its owner, while it runs) a Stop button."""
    st.progress(job.fraction, text=f"{_title(job)} · {md_text(job.progress_text())}")
    if job.finished or job.owner != session_owner():
        return
    st.button("Stop", key=f"{key}:{job.job_id}", disabled=job.cancel_requested, on_click=job_queue().cancel,
              args=(job.job_id,),
              help="Stops after the current row; every finished row stays saved and the run can be resumed.")


def _panel_body() -> None:
    queue_jobs = job_queue().jobs()
    owner = session_owner()
    active = [j for j in queue_jobs if not j.finished]
    mine_done = [j for j in queue_jobs if j.finished and j.owner == owner][:SHOWN_FINISHED]
    if not active and not mine_done:
        return
    st.subheader("Background jobs")
    for job in active:
        if job.owner == owner:
            job_bar(job, "jobs_panel_stop")
        else:
            st.progress(job.fraction, text=f"{KIND_TITLES.get(job.kind, job.kind)} of another browser session · "
                                           f"{md_text(job.progress_text())}")
    for job in mine_done:
        icon = {"complete": "✔", "cancelled": "■", "failed": "✘"}[job.state]
        st.caption(f"{icon} {_title(job)} · {md_text(job.progress_text())}")
    _rerun_when_finished([j.job_id for j in active if j.owner == owner])


def jobs_panel() -> None:
    """The sidebar's list of background jobs (app.py calls it on every page); live while one runs."""
    running = any(not j.finished for j in job_queue().jobs())
    st.fragment(_panel_body, run_every=REFRESH_S if running else None)()


def live_job(job_id: str, body: Callable[[JobInfo], None] | None = None, key: str = "live_job") -> None:
    """A page's live view of one job: its bar and Stop button, then ``body(job)``, redrawn every few seconds.

    When the job ends the whole page reruns once (so the finished result replaces the live view).
    """
    def _live() -> None:
        job = job_queue().info(job_id)
        if job is None:
            return
        job_bar(job, key)
        if body is not None:
            body(job)
        _rerun_when_finished([job_id])

    info = job_queue().info(job_id)
    st.fragment(_live, run_every=None if info is None or info.finished else REFRESH_S)()
