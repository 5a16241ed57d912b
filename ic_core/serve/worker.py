"""One thread owns the model; requests wait in a bounded queue in front of it.

The model is never touched from the HTTP event loop: each request becomes one job (check,
audit record, and the answer when there is one) run to the end on the worker's thread, so a
check's prefill is consumed by its own answer before the next job starts. A job submitted
while :attr:`ModelWorker.queue_size` others are already waiting is refused with
:class:`QueueFull` (the app answers 429), so a burst cannot pile up unbounded latency.

Gate checks are micro-batched (:meth:`ModelWorker.submit_batched`): the model thread collects
the checks that arrive within ``batch_window_s`` of the first (at most ``max_batch``) and runs
them as one call of the batch function, i.e. one left-padded forward pass. Each check still
counts as one waiting job for the queue limit. Chat completions are batched the same way: the
batch function checks them together and returns a :class:`Deferred` for each answer to write;
the worker first delivers the batch's other results (gate decisions, blocked requests), then
runs the deferred answers one after another on the model thread, so each answer still consumes
its own check's prefill before the next batch starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
BatchFn = Callable[[Sequence[Any]], Sequence[Any]]
"""Runs a batch of items; returns one result per item (an Exception instance fails that item alone,
a :class:`Deferred` is computed after the others are delivered)."""


class Deferred:
    """A batch result to compute after the batch's other results are delivered (a chat answer)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        """``fn()`` gives the item's result (or raises: that item fails alone)."""
        self.fn = fn


class QueueFull(Exception):
    """The worker is busy and :attr:`ModelWorker.queue_size` requests are already waiting."""


class ModelWorker:
    """A single model thread with a bounded number of waiting jobs, and a micro-batcher for checks."""

    def __init__(self, queue_size: int, batch_fn: BatchFn | None = None, batch_window_s: float = 0.005,
                 max_batch: int = 8, on_batch: Callable[[int], None] | None = None) -> None:
        """Start the thread pool (one thread).

        Args:
            queue_size: Jobs that may wait while one runs (0: only the running one is accepted).
            batch_fn: What :meth:`submit_batched` runs on a batch of items.
            batch_window_s: How long the model thread waits for more items once a batch starts.
            max_batch: Most items in one batch.
            on_batch: Told each batch's size (a metric).

        """
        self.queue_size = queue_size
        self.batch_window_s, self.max_batch = batch_window_s, max(1, max_batch)
        self._batch_fn, self._on_batch = batch_fn, on_batch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ic-model")
        self._lock = threading.Lock()
        self._pending = 0
        self._ready = threading.Condition()
        self._items: list[tuple[Any, Future[Any]]] = []
        self._drain_queued = False

    @property
    def pending(self) -> int:
        """Jobs accepted and not finished (running plus waiting)."""
        return self._pending

    def _admit(self) -> None:
        with self._lock:
            if self._pending > self.queue_size:
                raise QueueFull(f"The model is busy and {self.queue_size} request(s) are already waiting; retry later.")
            self._pending += 1

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Queue ``fn(*args)`` on the model thread.

        Raises:
            QueueFull: one job runs and ``queue_size`` wait already.

        """
        self._admit()
        try:
            future = self._pool.submit(fn, *args)
        except RuntimeError:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def submit_batched(self, item: object) -> Future[Any]:
        """Queue ``item`` for the batch function; it runs with the others that arrive within the window.

        Raises:
            QueueFull: as :meth:`submit`.
            RuntimeError: the worker has no batch function, or is shut down.

        """
        if self._batch_fn is None:
            raise RuntimeError("this worker has no batch function")
        self._admit()
        future: Future[Any] = Future()
        future.add_done_callback(self._done)
        with self._ready:
            self._items.append((item, future))
            start = not self._drain_queued
            self._drain_queued = True
            self._ready.notify()
        if start:
            try:
                self._pool.submit(self._drain)
            except RuntimeError as exc:
                self._fail_waiting(exc)
                raise
        return future

    def _take_batch(self) -> list[tuple[Any, Future[Any]]]:
        """On the model thread: wait up to the window for a full batch, then take it."""
        with self._ready:
            deadline = time.monotonic() + self.batch_window_s
            while len(self._items) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._ready.wait(left)
            batch, self._items = self._items[: self.max_batch], self._items[self.max_batch:]
            more = self._drain_queued = bool(self._items)
        if more:  # more arrived than one batch holds: another drain after this one
            self._pool.submit(self._drain)
        return batch

    def _drain(self) -> None:
        batch = self._take_batch()
        if not batch:
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            assert self._batch_fn is not None
            results = list(self._batch_fn([item for item, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # one failure of the whole batch fails each of its items
            for _, future in batch:
                future.set_exception(exc)
            return
        later: list[tuple[Future[Any], Deferred]] = []
        for (_, future), result in zip(batch, results):
            if isinstance(result, Exception):
                future.set_exception(result)
            elif isinstance(result, Deferred):
                later.append((future, result))
            else:
                future.set_result(result)
        for future, deferred in later:
            try:
                future.set_result(deferred.fn())
            except Exception as exc:  # this item alone fails; the next answer still runs
                future.set_exception(exc)

    def _fail_waiting(self, exc: BaseException) -> None:
        with self._ready:
            waiting, self._items = self._items, []
            self._drain_queued = False
        for _, future in waiting:
            if not future.done():
                future.set_exception(exc)

    def _done(self, _future: Future[object] | None) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        """Finish the running job, drop waiting ones, and stop the thread."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._fail_waiting(RuntimeError("the server is shutting down"))
