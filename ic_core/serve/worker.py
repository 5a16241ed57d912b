"""One thread owns the model; requests wait in a bounded queue in front of it.

The model is never touched from the HTTP event loop: each request becomes one job (check,
audit record, and the answer when there is one) run to the end on the worker's thread, so a
check's prefill is consumed by its own answer before the next job starts. A job submitted
while :attr:`ModelWorker.queue_size` others are already waiting is refused with
:class:`QueueFull` (the app answers 429), so a burst cannot pile up unbounded latency.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The worker is busy and :attr:`ModelWorker.queue_size` requests are already waiting."""


class ModelWorker:
    """A single model thread with a bounded number of waiting jobs."""

    def __init__(self, queue_size: int) -> None:
        """Start the thread pool (one thread).

        Args:
            queue_size: Jobs that may wait while one runs (0: only the running one is accepted).

        """
        self.queue_size = queue_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ic-model")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Jobs accepted and not finished (running plus waiting)."""
        return self._pending

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Queue ``fn(*args)`` on the model thread.

        Raises:
            QueueFull: one job runs and ``queue_size`` wait already.

        """
        with self._lock:
            if self._pending > self.queue_size:
                raise QueueFull(f"The model is busy and {self.queue_size} request(s) are already waiting; retry later.")
            self._pending += 1
        try:
            future = self._pool.submit(fn, *args)
        except RuntimeError:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[object] | None) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        """Finish the running job, drop waiting ones, and stop the thread."""
        self._pool.shutdown(wait=True, cancel_futures=True)
