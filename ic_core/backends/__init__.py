"""Capture backends: who runs the forward pass that reads the pre-collapse state I.

Every backend turns rendered prompts into the same :class:`ic_core.capture.IntentionState`
(last-position residual per layer, final logits, then the shared lens and entropy code).

* ``hf`` (default) — the in-process transformers path of :mod:`ic_core.capture`, with the KV
  cache handed to generation.
* ``nnsight`` — the same read-out as an ``nnsight`` trace over the loaded model
  (:mod:`ic_core.backends.nnsight_backend`); with ``remote=True`` the trace runs on NDIF.

A command picks the backend for everything it reads with :func:`using`; code that calls
:func:`ic_core.capture.capture` / :func:`~ic_core.capture.capture_batch` (analysis, the study
runner, the gate) then reads through it without knowing. No backend chosen = ``hf``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from ic_core.errors import ICError

if TYPE_CHECKING:
    import numpy as np

    from ic_core.capture import IntentionState, Prefill
    from ic_core.models import LoadedModel
    from ic_core.prompts import RenderedPrompt

BackendName = Literal["hf", "nnsight"]
BACKENDS: tuple[str, ...] = ("hf", "nnsight")


class BackendError(ICError):
    """A capture backend cannot run here (package missing, NDIF key missing or NDIF unreachable)."""


@runtime_checkable
class CaptureBackend(Protocol):
    """What a capture backend does. Shapes: B prompts, L blocks, d residual width, V vocabulary."""

    name: str
    """``hf`` or ``nnsight`` (recorded where a read-out is reported)."""
    remote: bool
    """Whether the forward pass runs somewhere else (NDIF)."""

    def capture(self, loaded: LoadedModel, rendered: RenderedPrompt, skip_whitespace: bool | None = None,
                k: int = 10) -> tuple[IntentionState, Prefill | None]:
        """One prompt → its state (hidden (L + 1, d), logits (V,), lens) and, where kept, the KV cache."""
        ...

    def capture_batch(self, loaded: LoadedModel, rendered: Sequence[RenderedPrompt], batch_size: int = 16,
                      skip_whitespace: bool | None = None, k: int = 10,
                      max_batch_tokens: int = 8192) -> list[IntentionState]:
        """B prompts → B states, the same numbers as :meth:`capture` on each."""
        ...

    def next_token_entropy_bits(self, loaded: LoadedModel, rows: Sequence[Sequence[int]],
                                batch_size: int = 16) -> np.ndarray:
        """(n,) entropy in bits of the next-token distribution after each row of token ids."""
        ...


class HFBackend:
    """The in-process transformers path (:mod:`ic_core.capture`): the default."""

    name = "hf"
    remote = False

    def capture(self, loaded: LoadedModel, rendered: RenderedPrompt, skip_whitespace: bool | None = None,
                k: int = 10) -> tuple[IntentionState, Prefill | None]:
        """See :func:`ic_core.capture.capture`."""
        from ic_core.capture import hf_capture

        return hf_capture(loaded, rendered, skip_whitespace, k)

    def capture_batch(self, loaded: LoadedModel, rendered: Sequence[RenderedPrompt], batch_size: int = 16,
                      skip_whitespace: bool | None = None, k: int = 10,
                      max_batch_tokens: int = 8192) -> list[IntentionState]:
        """See :func:`ic_core.capture.capture_batch`."""
        from ic_core.capture import hf_capture_batch

        return hf_capture_batch(loaded, rendered, batch_size, skip_whitespace, k, max_batch_tokens)

    def next_token_entropy_bits(self, loaded: LoadedModel, rows: Sequence[Sequence[int]],
                                batch_size: int = 16) -> np.ndarray:
        """See :func:`ic_core.capture.next_token_entropy_bits`."""
        from ic_core.capture import hf_next_token_entropy_bits

        return hf_next_token_entropy_bits(loaded, rows, batch_size)


_ACTIVE: contextvars.ContextVar[CaptureBackend | None] = contextvars.ContextVar("ic_capture_backend", default=None)


def current_backend() -> CaptureBackend | None:
    """The backend chosen with :func:`using` in this context, or None (= ``hf``)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def using(backend: CaptureBackend | None) -> Iterator[CaptureBackend | None]:
    """Read every state captured inside the block through ``backend`` (None: the default ``hf``)."""
    token = _ACTIVE.set(backend)
    try:
        yield backend
    finally:
        _ACTIVE.reset(token)


def get_backend(name: str = "hf", remote: bool = False) -> CaptureBackend:
    """The backend called ``name``; ``remote`` only with ``nnsight`` (checked before anything is loaded).

    Raises:
        BackendError: an unknown name, ``remote`` with ``hf``, nnsight not installed, or (remote)
            no NDIF key / NDIF unreachable (:func:`ic_core.backends.ndif.check_ndif`).

    """
    if name not in BACKENDS:
        raise BackendError(f"Unknown capture backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    if name == "hf":
        if remote:
            raise BackendError("--remote runs the read-out on NDIF through nnsight: add --backend nnsight.")
        return HFBackend()
    from ic_core.backends.nnsight_backend import NnsightBackend

    return NnsightBackend(remote=remote)
