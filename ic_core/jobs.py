"""Background jobs owned by the server process: one queue, one worker thread, one job at a time.

A page submits a job (a study, a Recoverability computation, the governance demo's run) and
returns; the job keeps running when the browser goes to another page, and any page can show
it (:func:`job_queue` is one module-level queue per process). Each job reports progress
(done/total, a time left from its measured speed), checks a cancel flag between rows (through
:meth:`JobContext.cancelled`), ends ``complete``, ``cancelled`` or ``failed`` with a one-line
message, and may name a result folder (the run it writes) as soon as it starts.

Jobs run one at a time, so two studies never compete for the CPU. The model is shared with the
interactive pages: model work inside a job takes the model's lock per forward pass and per
generation (:attr:`ic_core.models.LoadedModel.lock`, as :mod:`ic_core.capture` and
:mod:`ic_core.generate` do), so an Explore check waits for at most one row, not for the study.

This module imports nothing from the rest of the engine.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from ic_core.progress_text import left_text

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "complete", "cancelled", "failed"]
FINISHED_STATES: frozenset[str] = frozenset({"complete", "cancelled", "failed"})
KEEP_FINISHED = 20
"""Finished jobs kept for display (the oldest are forgotten first)."""
RATE_WINDOW = 8
"""Progress updates the measured speed averages over."""
MESSAGE_CHARS = 300
"""Longest error message kept (one line)."""


class JobCancelled(Exception):  # noqa: N818 — it is a signal, not an error
    """Raised by a job function that stops between steps because its cancel flag is set."""


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job, safe to read from any thread.

    Attributes:
        job_id: Unique within the process (``job-1``, ``job-2``, …).
        kind: What it computes (``study``, ``recoverability``, ``governance_demo``).
        label: One line for people (e.g. the run name).
        owner: Who submitted it (a session id), or None.
        state: ``queued``, ``running``, ``complete``, ``cancelled`` or ``failed``.
        done: Units finished (rows, steps).
        total: Units planned (0 until the job says).
        unit: What a unit is (``rows``, ``steps``).
        eta_s: Seconds left at the measured speed; None until two progress updates apart.
        message: The job's last progress message.
        error: The one-line error of a failed job.
        result_path: The folder the job writes (a run folder), once it is known.
        cancel_requested: Stop was asked for.
        created_s: Clock time the job was submitted.
        started_s: Clock time it started running (None while queued).
        finished_s: Clock time it ended (None until then).

    """

    job_id: str
    kind: str
    label: str
    owner: str | None
    state: JobState
    done: int = 0
    total: int = 0
    unit: str = "rows"
    eta_s: float | None = None
    message: str = ""
    error: str | None = None
    result_path: str | None = None
    cancel_requested: bool = False
    created_s: float = 0.0
    started_s: float | None = None
    finished_s: float | None = None

    @property
    def finished(self) -> bool:
        """The job has ended (complete, cancelled or failed)."""
        return self.state in FINISHED_STATES

    @property
    def fraction(self) -> float:
        """Share done, 0–1 (0 while the total is unknown)."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    def progress_text(self) -> str:
        """``3/8 rows · about 40 s left`` (or the state of a job that is not running)."""
        counts = f"{self.done}/{self.total} {self.unit}" if self.total else "starting"
        if self.state == "queued":
            return "waiting for the job ahead to finish"
        if self.state == "running":
            stopping = " · stopping after this row" if self.cancel_requested else ""
            return f"{counts} · {left_text(self.eta_s)}{stopping}"
        if self.state == "failed":
            return f"failed: {self.error}"
        return f"{counts} · {self.state}"


class JobContext:
    """What a running job function gets: progress reporting and its cancel flag."""

    def __init__(self, queue: JobQueue, job_id: str) -> None:
        """Bound to one job of one queue."""
        self._queue, self.job_id = queue, job_id

    def progress(self, done: int, total: int, eta_s: float | None = None, message: str = "") -> None:
        """Report ``done`` of ``total`` units (the engine's ``ProgressFn`` signature; its ``eta_s`` is not used).

        The time left comes from the job's own measured speed over the last :data:`RATE_WINDOW` updates.
        """
        self._queue._progress(self.job_id, int(done), int(total), str(message))

    def cancelled(self) -> bool:
        """True once Stop was asked for (the engine's ``CancelFn``): finish the current row, then return."""
        return self._queue._cancel_requested(self.job_id)

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` when Stop was asked for (between the steps of a multi-step job)."""
        if self.cancelled():
            raise JobCancelled

    def set_result_path(self, path: str) -> None:
        """Name the folder the job writes, so pages can show it while it grows."""
        self._queue._update(self.job_id, result_path=str(path))


JobFn = Callable[[JobContext], Any]
"""A job: called on the worker thread with its context; its return value is the job's result."""


@dataclass
class _Entry:
    info: JobInfo
    fn: JobFn
    cancel: threading.Event
    samples: deque[tuple[float, int]]
    speed_task: str | None
    result: Any = None


def one_line_error(exc: BaseException) -> str:
    """The message a person sees for a failed job: the engine's own sentence, or the type and text."""
    from ic_core.errors import ICError  # local: this module stays free of engine imports at load time

    text = str(exc) if isinstance(exc, ICError) else f"Unexpected error ({type(exc).__name__}): {exc}"
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


class JobQueue:
    """One worker thread running queued jobs one at a time, oldest first."""

    def __init__(self, keep_finished: int = KEEP_FINISHED, clock: Callable[[], float] = time.monotonic) -> None:
        """An empty queue; the worker thread starts with the first job. ``clock`` is injectable for tests."""
        self._clock, self._keep = clock, keep_finished
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._order: list[str] = []
        self._ids = itertools.count(1)
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._speeds: dict[str, float] = {}

    # ------------------------------------------------------------ public API

    def submit(self, kind: str, label: str, fn: JobFn, *, owner: str | None = None, result_path: str | None = None,
               unit: str = "rows", speed_task: str | None = None) -> str:
        """Queue a job and return its id; it starts when the jobs ahead of it have finished.

        Args:
            kind: What it computes (shown, and used to find a page's jobs).
            label: One line for people.
            fn: Called as ``fn(context)`` on the worker thread.
            owner: Who submitted it (a session id).
            result_path: The folder it will write, when known before it starts.
            unit: What its progress counts.
            speed_task: Name under which its measured seconds per unit are kept (:meth:`speed`).

        """
        with self._cond:
            job_id = f"job-{next(self._ids)}"
            info = JobInfo(job_id, kind, label, owner, "queued", unit=unit, result_path=result_path,
                           created_s=self._clock())
            self._entries[job_id] = _Entry(info, fn, threading.Event(), deque(maxlen=RATE_WINDOW + 1), speed_task)
            self._order.append(job_id)
            self._start_worker()
            self._cond.notify_all()
        return job_id

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop: a queued job is cancelled at once, a running one after its current row.

        Returns:
            False when there is no such job or it has already finished.

        """
        with self._cond:
            entry = self._entries.get(job_id)
            if entry is None or entry.info.finished:
                return False
            entry.cancel.set()
            if entry.info.state == "queued":
                entry.info = replace(entry.info, state="cancelled", cancel_requested=True, finished_s=self._clock())
            else:
                entry.info = replace(entry.info, cancel_requested=True)
            self._cond.notify_all()
            return True

    def info(self, job_id: str) -> JobInfo | None:
        """The job's current snapshot (None when unknown or forgotten)."""
        with self._cond:
            entry = self._entries.get(job_id)
            return None if entry is None else entry.info

    def result(self, job_id: str) -> Any:
        """What the job's function returned (None until it completes)."""
        with self._cond:
            entry = self._entries.get(job_id)
            return None if entry is None else entry.result

    def jobs(self) -> list[JobInfo]:
        """Every job kept: running, then queued (in queue order), then finished (newest first)."""
        with self._cond:
            infos = [self._entries[j].info for j in self._order]
        active = [i for i in infos if i.state == "running"] + [i for i in infos if i.state == "queued"]
        done = sorted((i for i in infos if i.finished), key=lambda i: i.finished_s or 0.0, reverse=True)
        return active + done

    def active_for(self, result_path: str) -> JobInfo | None:
        """The queued or running job that writes ``result_path``, if any (so it is not started twice)."""
        return next((i for i in self.jobs() if not i.finished and i.result_path == str(result_path)), None)

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo | None:
        """Block until the job has finished (or ``timeout`` seconds pass); its snapshot then."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                entry = self._entries.get(job_id)
                if entry is None or entry.info.finished:
                    return None if entry is None else entry.info
                left = None if deadline is None else deadline - self._clock()
                if left is not None and left <= 0:
                    return entry.info
                self._cond.wait(left)

    def speed(self, task: str) -> float | None:
        """The last measured seconds per unit of jobs with ``speed_task == task`` (for pre-run estimates)."""
        with self._cond:
            return self._speeds.get(task)

    def remember_speed(self, task: str, seconds_per_unit: float | None) -> None:
        """Keep a measured speed of ``task`` (pages that time work themselves add theirs)."""
        if seconds_per_unit is not None and seconds_per_unit > 0:
            with self._cond:
                self._speeds[task] = float(seconds_per_unit)

    def shutdown(self, timeout: float | None = None) -> None:
        """Cancel every job and stop the worker thread (tests; the app's queue lives as long as the server)."""
        with self._cond:
            self._stopping = True
            for job_id in list(self._order):
                entry = self._entries[job_id]
                if not entry.info.finished:
                    entry.cancel.set()
                    if entry.info.state == "queued":
                        entry.info = replace(entry.info, state="cancelled", cancel_requested=True,
                                             finished_s=self._clock())
            self._cond.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)

    # ------------------------------------------------------------ called by JobContext

    def _progress(self, job_id: str, done: int, total: int, message: str) -> None:
        with self._cond:
            entry = self._entries[job_id]
            now = self._clock()
            if entry.samples and done < entry.samples[-1][1]:
                entry.samples.clear()  # a job that starts counting again (a second phase)
            entry.samples.append((now, done))
            per_unit = self._per_unit(entry)
            eta = None if per_unit is None else per_unit * max(0, total - done)
            entry.info = replace(entry.info, done=done, total=total, eta_s=eta, message=message[:120])
            if per_unit is not None and entry.speed_task:
                self._speeds[entry.speed_task] = per_unit
            self._cond.notify_all()

    @staticmethod
    def _per_unit(entry: _Entry) -> float | None:
        if len(entry.samples) < 2:
            return None
        (t0, d0), (t1, d1) = entry.samples[0], entry.samples[-1]
        return (t1 - t0) / (d1 - d0) if d1 > d0 else None

    def _cancel_requested(self, job_id: str) -> bool:
        return self._entries[job_id].cancel.is_set()

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._cond:
            entry = self._entries[job_id]
            entry.info = replace(entry.info, **changes)
            self._cond.notify_all()

    # ------------------------------------------------------------ the worker

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._stopping = False
            self._worker = threading.Thread(target=self._work, name="ic-jobs", daemon=True)
            self._worker.start()

    def _next(self) -> _Entry | None:
        """The oldest queued job, marked running; None when the queue is stopping (waits otherwise)."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                queued = next((self._entries[j] for j in self._order if self._entries[j].info.state == "queued"), None)
                if queued is not None:
                    queued.info = replace(queued.info, state="running", started_s=self._clock())
                    self._cond.notify_all()
                    return queued
                self._cond.wait()

    def _work(self) -> None:
        while (entry := self._next()) is not None:
            self._run(entry)

    def _run(self, entry: _Entry) -> None:
        job_id = entry.info.job_id
        state: JobState
        result, error = None, None
        try:
            result = entry.fn(JobContext(self, job_id))
            state = "cancelled" if entry.cancel.is_set() else "complete"
        except JobCancelled:
            state = "cancelled"
        except Exception as exc:  # a job's failure is shown as one line; the traceback goes to the log
            if not _is_engine_error(exc):
                log.exception("background job %s (%s) failed", job_id, entry.info.label)
            state, error = "failed", one_line_error(exc)
        with self._cond:
            entry.result = result
            entry.info = replace(entry.info, state=state, error=error, eta_s=None, finished_s=self._clock())
            self._forget_old()
            self._cond.notify_all()

    def _forget_old(self) -> None:
        finished = [j for j in self._order if self._entries[j].info.finished]
        for job_id in finished[: max(0, len(finished) - self._keep)]:
            self._order.remove(job_id)
            del self._entries[job_id]


def _is_engine_error(exc: BaseException) -> bool:
    from ic_core.errors import ICError

    return isinstance(exc, ICError)


_QUEUE: JobQueue | None = None
_QUEUE_LOCK = threading.Lock()


def job_queue() -> JobQueue:
    """The process's one job queue (created on first use)."""
    global _QUEUE
    with _QUEUE_LOCK:
        if _QUEUE is None:
            _QUEUE = JobQueue()
        return _QUEUE
