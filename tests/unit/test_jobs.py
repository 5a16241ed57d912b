"""The background job queue (issue 17 item 3): one job at a time, order, cancel, errors, progress, speed."""

from __future__ import annotations

import threading

import pytest

from ic_core.errors import DataError
from ic_core.jobs import JobCancelled, JobContext, JobQueue, job_queue, one_line_error
from ic_core.progress_text import duration_text, left_text

WAIT = 30.0  # generous upper bound for a blocked test; never reached when the code works


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def queue():
    q = JobQueue()
    yield q
    q.shutdown(timeout=WAIT)


def gated_job(started: threading.Event, release: threading.Event, log: list[str], name: str):
    """A fake job that says it started, then waits to be released."""
    def fn(ctx: JobContext) -> str:
        log.append(f"start {name}")
        started.set()
        assert release.wait(WAIT)
        log.append(f"end {name}")
        return f"result {name}"
    return fn


class TestOrder:
    def test_one_job_at_a_time_in_submission_order(self, queue):
        log: list[str] = []
        gates = [(threading.Event(), threading.Event()) for _ in range(3)]
        ids = [queue.submit("fake", f"job {i}", gated_job(s, r, log, str(i))) for i, (s, r) in enumerate(gates)]
        assert gates[0][0].wait(WAIT)
        assert [queue.info(j).state for j in ids] == ["running", "queued", "queued"]
        assert [i.job_id for i in queue.jobs()] == ids  # running first, then queued in order
        assert not gates[1][0].is_set()  # the second has not started while the first runs
        for _, release in gates:
            release.set()
        for j in ids:
            assert queue.wait(j, WAIT).state == "complete"
        assert log == ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
        assert queue.result(ids[1]) == "result 1"

    def test_finished_jobs_listed_newest_first_and_old_ones_forgotten(self):
        q = JobQueue(keep_finished=2)
        try:
            ids = [q.submit("fake", str(i), lambda ctx, i=i: i) for i in range(4)]
            for j in ids:
                q.wait(j, WAIT)
            listed = [i.job_id for i in q.jobs()]
            assert listed == [ids[3], ids[2]]
            assert q.info(ids[0]) is None
        finally:
            q.shutdown(WAIT)


class TestCancel:
    def test_cancel_running_job_stops_between_rows(self, queue):
        rows_done: list[int] = []
        in_row = threading.Event()
        go_on = threading.Event()

        def fn(ctx: JobContext) -> int:
            for row in range(100):
                if ctx.cancelled():
                    break
                if row == 2:
                    in_row.set()
                    assert go_on.wait(WAIT)
                rows_done.append(row)
                ctx.progress(row + 1, 100)
            return len(rows_done)

        job = queue.submit("study", "s", fn)
        assert in_row.wait(WAIT)
        assert queue.cancel(job)
        assert queue.info(job).cancel_requested and queue.info(job).state == "running"
        assert "stopping after this row" in queue.info(job).progress_text()
        go_on.set()
        info = queue.wait(job, WAIT)
        assert info.state == "cancelled" and rows_done == [0, 1, 2] and info.done == 3
        assert queue.result(job) == 3
        assert not queue.cancel(job)  # already finished

    def test_cancel_queued_job_never_runs_it(self, queue):
        started, release = threading.Event(), threading.Event()
        log: list[str] = []
        first = queue.submit("fake", "first", gated_job(started, release, log, "a"))
        second = queue.submit("fake", "second", lambda ctx: log.append("second ran"))
        assert started.wait(WAIT)
        assert queue.cancel(second)
        assert queue.info(second).state == "cancelled"
        release.set()
        queue.wait(first, WAIT)
        third = queue.submit("fake", "third", lambda ctx: "ok")
        assert queue.wait(third, WAIT).state == "complete"
        assert "second ran" not in log

    def test_job_cancelled_exception_is_a_cancel(self, queue):
        def fn(ctx: JobContext) -> None:
            ctx.progress(1, 3, message="step 1")
            raise JobCancelled

        info = queue.wait(queue.submit("recoverability", "r", fn, unit="steps"), WAIT)
        assert info.state == "cancelled" and info.error is None and info.progress_text() == "1/3 steps · cancelled"

    def test_unknown_job(self, queue):
        assert queue.info("job-999") is None and not queue.cancel("job-999")


class TestErrors:
    def test_engine_error_is_its_one_line_message(self, queue):
        def fn(ctx: JobContext) -> None:
            raise DataError("Run folder 'x' holds a different study.\nChoose another name.")

        info = queue.wait(queue.submit("study", "x", fn), WAIT)
        assert info.state == "failed"
        assert info.error == "Run folder 'x' holds a different study. Choose another name."
        assert info.progress_text().startswith("failed: Run folder")

    def test_unexpected_error_names_its_type_and_the_queue_keeps_working(self, queue):
        info = queue.wait(queue.submit("study", "x", lambda ctx: 1 / 0), WAIT)
        assert info.state == "failed" and info.error == "Unexpected error (ZeroDivisionError): division by zero"
        assert queue.wait(queue.submit("study", "y", lambda ctx: "fine"), WAIT).state == "complete"

    def test_long_messages_are_cut(self):
        assert len(one_line_error(ValueError("x" * 1000))) == 300


class TestProgress:
    def test_eta_from_the_measured_speed(self):
        clock = FakeClock()
        q = JobQueue(clock=clock)
        seen: list = []

        def fn(ctx: JobContext) -> None:
            for done, advance in ((0, 0.0), (1, 5.0), (2, 5.0), (4, 2.0)):
                clock.now += advance
                ctx.progress(done, 10, 999.0, f"row {done}")  # the engine's own eta is not used
                seen.append(q.info(ctx.job_id))
            ctx.set_result_path("/runs/a")

        try:
            job = q.submit("study", "s", fn, speed_task="study:generate")
            info = q.wait(job, WAIT)
        finally:
            q.shutdown(WAIT)
        assert [s.eta_s for s in seen[:1]] == [None]  # one update: no speed yet
        assert seen[1].eta_s == pytest.approx(5.0 * 9)
        assert seen[2].eta_s == pytest.approx(5.0 * 8)
        assert seen[3].eta_s == pytest.approx(3.0 * 6)  # 12 s for 4 rows
        assert seen[3].progress_text() == "4/10 rows · about 18 s left" and seen[3].fraction == pytest.approx(0.4)
        assert info.state == "complete" and info.result_path == "/runs/a" and info.eta_s is None
        assert q.speed("study:generate") == pytest.approx(3.0)
        assert q.active_for("/runs/a") is None

    def test_active_for_finds_the_job_writing_a_folder(self, queue):
        started, release = threading.Event(), threading.Event()
        job = queue.submit("study", "s", gated_job(started, release, [], "a"), result_path="/runs/b")
        assert queue.active_for("/runs/b").job_id == job
        assert queue.active_for("/runs/c") is None
        release.set()
        queue.wait(job, WAIT)
        assert queue.active_for("/runs/b") is None

    def test_queued_and_unknown_totals(self, queue):
        started, release = threading.Event(), threading.Event()
        first = queue.submit("fake", "a", gated_job(started, release, [], "a"))
        second = queue.submit("fake", "b", lambda ctx: None)
        assert started.wait(WAIT)
        assert queue.info(first).progress_text() == "starting · measuring the speed…"
        assert queue.info(second).progress_text() == "waiting for the job ahead to finish"
        release.set()
        queue.wait(second, WAIT)

    def test_remembered_speed_ignores_non_positive(self, queue):
        queue.remember_speed("t", 0.0)
        queue.remember_speed("u", None)
        queue.remember_speed("v", 2.5)
        assert queue.speed("t") is None and queue.speed("u") is None and queue.speed("v") == 2.5


def test_one_queue_per_process():
    assert job_queue() is job_queue()


@pytest.mark.parametrize("seconds, text", [(None, "measuring the speed…"), (42.4, "about 42 s left"),
                                           (150, "about 2 min left"), (5400, "about 1 h 30 min left")])
def test_one_time_left_wording(seconds, text):
    assert left_text(seconds) == text


def test_duration_text():
    assert duration_text(42) == "about 42 s"
