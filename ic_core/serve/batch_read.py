"""One left-padded forward pass for several chat checks, each keeping its own KV cache for its answer.

A micro-batch of ``/v1/chat/completions`` requests is read together like a batch of gate checks
(:func:`ic_core.capture.capture_batch`), but each approved request then answers from its check's
prefill. The batch's KV cache holds, for row *i*, its left padding, its own positions and (after
whitespace steps other rows took) masked filler; :func:`row_cache` keeps only the positions its
attention mask marks, in order. Position ids were computed from the mask, so those keys and values
are the ones a single read of the row computes (within float tolerance), and generation continues
from them exactly as from :func:`ic_core.capture.capture`'s prefill.

Only the in-process transformers path keeps a cache; under another capture backend
(:func:`ic_core.backends.using`) each row is read alone by :func:`ic_core.capture.capture`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ic_core.backends import current_backend
from ic_core.capture import (
    MAX_SKIPPED,
    TOP_K,
    IntentionState,
    Prefill,
    _read_batch,
    _to_states,
    capture,
    default_skip,
)
from ic_core.models import LoadedModel
from ic_core.prompts import RenderedPrompt

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import Cache


def row_cache(cache: Cache, row: int, keep: torch.Tensor) -> Cache | None:
    """Row ``row`` of a batch's KV cache at the positions ``keep`` ((T,) bool), as a one-row DynamicCache.

    Returns None for a cache that is not a plain per-layer key/value cache (e.g. sliding windows).
    """
    from transformers import DynamicCache

    from ic_core.serve.prefix_cache import _layers

    layers = _layers(cache)
    if layers is None:
        return None
    index = keep.nonzero().flatten()
    out = DynamicCache()
    for i, layer in enumerate(layers):
        out.update(layer.keys[row: row + 1, :, index], layer.values[row: row + 1, :, index], i)
    return out


def _chunks(order: Sequence[int], rendered: Sequence[RenderedPrompt], max_rows: int,
            max_tokens: int) -> list[list[int]]:
    """Consecutive groups of ``order`` (shortest first) with rows × width under ``max_tokens``."""
    chunks: list[list[int]] = []
    for i in order:
        width = rendered[i].readout_index + 1 + MAX_SKIPPED
        if chunks and len(chunks[-1]) < max_rows and (len(chunks[-1]) + 1) * width <= max_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def read_with_prefills(
    loaded: LoadedModel, rendered: Sequence[RenderedPrompt], keep: Sequence[bool], max_rows: int = 16,
    max_tokens: int = 8192, k: int = TOP_K,
) -> list[tuple[IntentionState, Prefill | None]]:
    """Read every prompt's state in left-padded batches; a prefill for each prompt with ``keep[i]``.

    Rows that skip whitespace after a forced answer prefix (:func:`ic_core.capture.default_skip`)
    and rows that do not are read in separate passes, so each is read where a single read would.

    Returns:
        Per prompt, in order: its state and its prefill (None where not kept, or where the cache
        cannot be split: generation then reads the prompt itself).

    """
    import torch

    if len(keep) != len(rendered):
        raise ValueError(f"keep has {len(keep)} flags for {len(rendered)} prompts")
    backend = current_backend()
    if backend is not None and backend.name != "hf":
        return [capture(loaded, r) for r in rendered]
    out: list[tuple[IntentionState, Prefill | None] | None] = [None] * len(rendered)
    for skip in (False, True):
        order = sorted((i for i, r in enumerate(rendered) if default_skip(r) == skip),
                       key=lambda i: rendered[i].readout_index)
        for chunk in _chunks(order, rendered, max_rows, max_tokens):
            rows = [list(rendered[i].input_ids[: rendered[i].readout_index + 1]) for i in chunk]
            with loaded.lock, torch.inference_mode():
                states, logits, skipped, sk_h, sk_p, past, mask, _ = _read_batch(loaded, rows, skip)
                read = _to_states(loaded, states, logits, [rendered[i] for i in chunk], skipped, sk_h, sk_p, k)
                for pos, i in enumerate(chunk):
                    prefill = None
                    if keep[i] and (cache := row_cache(past, pos, mask[pos].bool())) is not None:
                        prefill = Prefill(rows[pos] + skipped[pos], cache, logits[pos].clone(), list(skipped[pos]),
                                          list(sk_h[pos]), list(sk_p[pos]))
                    out[i] = (read[pos], prefill)
    return [o for o in out if o is not None]
