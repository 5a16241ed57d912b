"""AppTest: a study runs as a background job (issue 17 item 3) — other pages, the way back, Stop, the sidebar panel."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ic_core.jobs import JobContext, job_queue
from ic_core.runs.store import load_run

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
STUDY = "pages/3_Study.py"
EXPLORE = "pages/1_Explore.py"
WAIT = 300


@pytest.fixture
def blocker():
    """A job queued ahead of the page's study, so the study waits (the queue runs one job at a time)."""
    started, release = threading.Event(), threading.Event()

    def hold(ctx: JobContext) -> None:
        started.set()
        assert release.wait(WAIT)

    job = job_queue().submit("fake", "ahead", hold)
    assert started.wait(WAIT)
    yield release
    release.set()
    job_queue().wait(job, WAIT)


def open_study(tiny):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["_injected_model"] = tiny
    at.run()
    at.switch_page(STUDY).run()
    assert not at.exception, at.exception
    return at


def start_examples(at, name: str):
    at.selectbox(key="keep:study.bundled").set_value("examples").run()
    at.number_input(key="keep:study.limit").set_value(2).run()
    at.number_input(key="keep:study.max_new").set_value(2).run()
    at.text_input(key="keep:study.run_name").input(name).run()
    at.button(key="study_run_btn").click().run()
    assert not at.exception, at.exception
    return at.session_state["study.job_id"]


def bars(at) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def test_the_study_keeps_running_on_another_page_and_is_picked_up_on_return(tiny, runs_dir, blocker):
    at = open_study(tiny)
    job = start_examples(at, "bg-run")
    assert job_queue().info(job).state == "queued"
    assert any("waiting for the job ahead" in t for t in bars(at))
    assert any(b.key.startswith("study_stop:") for b in at.button if b.key)  # the page's Stop while it runs
    at.switch_page(EXPLORE).run()
    assert not at.exception, at.exception
    assert any("Study: bg-run" in t for t in bars(at))  # the sidebar panel on another page
    blocker.set()
    assert job_queue().wait(job, WAIT).state == "complete"
    at.switch_page(STUDY).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="study_run_select").value == str(runs_dir / "bg-run")
    assert any("Saved" in s.value and "bg-run" in s.value for s in at.success)
    assert {m.label: m.value for m in at.metric}["Rows"] == "2 / 2"
    assert not [b.key for b in at.button if b.key and "stop" in b.key]  # no Stop beside a finished run
    assert any(c.value.startswith("✔ Study: bg-run") for c in at.sidebar.caption)
    assert load_run(runs_dir / "bg-run").status == "complete"


def test_stop_cancels_the_job_and_the_page_offers_resume(tiny, runs_dir, blocker):
    at = open_study(tiny)
    job = start_examples(at, "stopped")
    stop = next(b for b in at.button if b.key and b.key.startswith("study_stop:"))
    stop.click().run()
    assert not at.exception, at.exception
    info = job_queue().info(job)
    assert info.state == "cancelled" and info.cancel_requested
    at.run()
    assert not [b.key for b in at.button if b.key and "stop" in b.key]
    assert any("Stopped before stopped was started" in i.value for i in at.info)
    assert not (runs_dir / "stopped").exists()


def test_a_failing_study_shows_its_one_line_error(tiny, runs_dir):
    (runs_dir / "taken").mkdir(parents=True)
    (runs_dir / "taken" / "other.txt").write_text("not a run")
    at = open_study(tiny)
    job = start_examples(at, "taken")
    info = job_queue().wait(job, WAIT)
    assert info.state == "failed" and "is not a study run folder" in info.error
    at.run()
    assert any("The study stopped with an error" in e.value and "not a study run folder" in e.value for e in at.error)


def test_a_run_a_job_writes_is_named_being_written_and_its_live_rows_fit_the_screen(tiny, runs_dir):
    from ic_core.datasets import PromptItem
    from ic_core.study.runner import run_study

    folder = runs_dir / "half"
    run_study(tiny, [PromptItem(f"q{i}", f"what is {i} plus 1 ?", str(i + 1), kind="numeric", output=str(i + 1))
                     for i in range(3)], ["direct"], folder, generate=False)
    started, release = threading.Event(), threading.Event()

    def hold(ctx: JobContext) -> None:
        started.set()
        assert release.wait(WAIT)

    job = job_queue().submit("study", "Study: half", hold, result_path=str(folder))
    try:
        assert started.wait(WAIT)
        at = open_study(tiny)
        picker = at.selectbox(key="study_run_select")
        # No count (it would lag the live bar beside it), and not the manifest's "complete".
        assert picker.options == ["half · tiny-llama · direct · being written (progress above)"]
        [live] = at.dataframe  # the live view only: the saved-run view leaves this run to it
        assert list(live.value.columns) == ["item_id", "regime", "question", "expected", "extracted_answer",
                                            "correct", "readout_entropy_bits"]
        assert len(live.value) == 3
    finally:
        release.set()
        job_queue().wait(job, WAIT)
    at.run()
    assert at.selectbox(key="study_run_select").options == ["half · tiny-llama · direct · 3 rows · complete"]
