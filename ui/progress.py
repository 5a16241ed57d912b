"""Progress bars with a time left measured on this machine, in one wording ("about 6 min left").

The wording is :func:`ic_core.progress_text.left_text`, shared with the CLI and the job queue.

:class:`MovingRate` keeps the speed of the last few steps, so the estimate comes from the
first items actually done here rather than from a constant; :func:`remember_speed` keeps the
last measured seconds per unit for the next pre-run estimate (shared by the sessions of this
server process, since they run on the same machine).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import streamlit as st

from ic_core.jobs import job_queue
from ic_core.progress_text import duration_text, left_text

__all__ = ["MovingRate", "ProgressBar", "duration_text", "left_text", "measured_speed", "remember_speed"]

WINDOW = 8
"""Progress updates the moving rate averages over."""


class MovingRate:
    """Units per second over the last :data:`WINDOW` updates (the first update starts the clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Start with no measurement; ``clock`` is injectable for tests."""
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=WINDOW + 1)

    def update(self, done: float) -> None:
        """Record that ``done`` units are finished now."""
        self._samples.append((self._clock(), float(done)))

    def seconds_per_unit(self) -> float | None:
        """Measured seconds per unit; None until two updates with progress between them."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (t1 - t0) / (d1 - d0) if d1 > d0 else None

    def eta_s(self, done: float, total: float) -> float | None:
        """Seconds left for ``total - done`` units at the measured speed."""
        per_unit = self.seconds_per_unit()
        return None if per_unit is None else per_unit * max(0.0, total - done)


def remember_speed(task: str, seconds_per_unit: float | None) -> None:
    """Keep the last measured speed of ``task`` (e.g. ``study:generate``) for the next estimate.

    Kept by the process's job queue (:meth:`ic_core.jobs.JobQueue.remember_speed`), where background
    jobs leave theirs too.
    """
    job_queue().remember_speed(task, seconds_per_unit)


def measured_speed(task: str) -> float | None:
    """The last measured seconds per unit of ``task`` on this server, or None."""
    return job_queue().speed(task)


class ProgressBar:
    """``st.progress`` with a measured time left; call it as the engine's progress callback."""

    def __init__(self, unit: str, task: str | None = None, bar: Any = None) -> None:
        """A bar counting ``unit`` (e.g. ``rows``); ``task`` names the speed kept for later estimates."""
        self.unit, self.task = unit, task
        self.bar = bar if bar is not None else st.progress(0.0, text=f"starting… · {left_text(None)}")
        self.rate = MovingRate()

    def __call__(self, done: int, total: int, eta_s: float | None = None, message: str = "") -> None:
        """Show ``done/total unit · about N min left · message`` (the engine's own ``eta_s`` is not used)."""
        self.rate.update(done)
        if self.task:
            remember_speed(self.task, self.rate.seconds_per_unit())
        text = f"{done}/{total} {self.unit} · {left_text(self.rate.eta_s(done, total))}"
        self.bar.progress(min(1.0, done / max(1, total)), text=text + (f" · {message[:50]}" if message else ""))
