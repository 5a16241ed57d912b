"""What a request asks the model worker to do, and the batch function that does it.

Gate checks and chat completions go through the same micro-batcher
(:meth:`ic_core.serve.worker.ModelWorker.submit_batched`): the checks of one batch are read in one
left-padded forward pass and audited in order (:meth:`GatedEngine.check_batch`); then each chat
completion that may be answered (approved, or escalated in ``annotate`` mode) is answered from its
own check's prefill, one after another, as a :class:`ic_core.serve.worker.Deferred` result. A
streaming request hears about its check (``("checked", Checked)``) as soon as the batch is checked,
then each piece of its answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ic_core.errors import ICError
from ic_core.generate import GenerationConfig
from ic_core.serve.engine import Checked, Completion, GatedEngine
from ic_core.serve.schemas import Message
from ic_core.serve.worker import BatchFn, Deferred

StreamItem = tuple[str, Any]
"""What the model thread sends a streaming response: ``("checked", Checked)``, ``("delta", str)``,
``("done", Completion)``, then ``("end", None)`` when the job is over (whatever happened)."""


@dataclass
class GateJob:
    """``POST /v1/gate``: check only."""

    messages: Sequence[Message]
    answer_prefix: str | None
    actor: str
    submitted: float = field(default_factory=time.perf_counter)
    """When the request was queued (``time.perf_counter``)."""


@dataclass
class ChatJob:
    """``POST /v1/chat/completions``: check, then answer unless blocked."""

    messages: Sequence[Message]
    answer_prefix: str | None
    actor: str
    config: GenerationConfig
    stop: Sequence[str] = ()
    put: Callable[[StreamItem], None] | None = None
    """Streaming: told the check, each answer piece and the completion (called on the model thread)."""
    submitted: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class JobResult:
    """A request's check, its answer (None: a gate check or a blocked request) and where its time went."""

    checked: Checked
    completion: Completion | None
    timing_s: dict[str, float]
    """``queue`` (queued → its batch starts, including the batching window), ``check`` (the batch's
    checks and audit records), and for an answer ``wait`` (earlier answers of the same batch) and
    ``answer`` (generation)."""

    def server_timing(self) -> str:
        """The ``Server-Timing`` header value (milliseconds), e.g. ``queue;dur=5.1, check;dur=92.0``."""
        return ", ".join(f"{name};dur={1000 * s:.1f}" for name, s in self.timing_s.items())


def batch_runner(engine: GatedEngine, mode: str) -> BatchFn:
    """The worker's batch function: check every job in one pass, then answer the chat jobs (deferred)."""

    def run(jobs: Sequence[GateJob | ChatJob]) -> list[JobResult | ICError | Deferred]:
        began = time.perf_counter()
        checks = engine.check_batch([(j.messages, j.answer_prefix, j.actor) for j in jobs],
                                    [isinstance(j, ChatJob) for j in jobs])
        checked_at = time.perf_counter()
        out: list[JobResult | ICError | Deferred] = []
        for job, checked in zip(jobs, checks):
            if isinstance(checked, ICError):
                out.append(checked)
                continue
            timing = {"queue": began - job.submitted, "check": checked_at - began}
            if isinstance(job, ChatJob) and job.put is not None:
                job.put(("checked", checked))
            if isinstance(job, GateJob) or (checked.decision.escalate and mode == "block"):
                out.append(JobResult(checked, None, timing))
            else:
                out.append(Deferred(partial(_answer, engine, job, checked, timing)))
        return out

    return run


def _answer(engine: GatedEngine, job: ChatJob, checked: Checked, timing: dict[str, float]) -> JobResult:
    start = time.perf_counter()
    timing["wait"] = start - job.submitted - timing["queue"] - timing["check"]
    put = job.put
    on_delta = (lambda piece: put(("delta", piece))) if put is not None else None
    done = engine.complete(checked, job.config, job.stop, on_delta)
    timing["answer"] = time.perf_counter() - start
    if put is not None:
        put(("done", done))
    return JobResult(checked, done, timing)
