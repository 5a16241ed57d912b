"""Prefix KV caching: agents resend the same system prompt and earlier turns on every call.

:class:`PrefixCache` keeps the KV caches of recent single-row reads (LRU, bounded by a memory
budget), keyed by their token ids and the model's weights digest. A new check looks for the
entry sharing the longest run of leading ids with its prompt; because attention is causal,
the keys and values of those shared positions are the same whatever follows, so the check
copies them (never the stored cache itself: a forward pass extends a cache in place) and
prefills only the new tokens. Results equal an uncached read within float tolerance.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ic_core.models import LoadedModel

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Cache

MIN_SHARED_TOKENS = 64
"""A hit must save at least this many tokens (a chat template's own header is shorter)."""


@dataclass
class _Entry:
    ids: tuple[int, ...]
    cache: Cache
    nbytes: int


def model_digest(loaded: LoadedModel) -> str:
    """The weights digest the cache keys carry (the object's identity when the model has none)."""
    digest = getattr(loaded, "weights_sha256", None)
    return digest or f"object:{id(loaded.model)}"


def _layers(cache: Cache) -> list | None:
    """The cache's per-layer key/value holders, or None for a cache this module cannot copy safely."""
    layers = getattr(cache, "layers", None)
    if not layers or any(getattr(cache, "is_sliding", [False]) or [False]):
        return None
    if not all(getattr(layer, "keys", None) is not None and getattr(layer, "values", None) is not None
               for layer in layers):
        return None
    return list(layers)


def copy_prefix(cache: Cache, n: int) -> Cache | None:
    """A new DynamicCache holding the first ``n`` positions of ``cache`` (None: not a plain KV cache)."""
    import torch
    from transformers import DynamicCache

    layers = _layers(cache)
    if layers is None:
        return None
    out = DynamicCache()
    with torch.inference_mode():
        for i, layer in enumerate(layers):
            out.update(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone(), i)
    return out


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Recent prompts' KV caches, LRU within ``budget_bytes``, for one model (its digest in every key)."""

    def __init__(self, loaded: LoadedModel, budget_bytes: int, min_shared: int = MIN_SHARED_TOKENS) -> None:
        """An empty cache for ``loaded``."""
        self.digest, self.budget_bytes, self.min_shared = model_digest(loaded), budget_bytes, min_shared
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        """Entries held."""
        return len(self._entries)

    def lookup(self, loaded: LoadedModel, ids: Sequence[int]) -> tuple[int, Cache] | None:
        """``(n, cache over ids[:n])`` for the longest stored prefix of ``ids`` (a copy), or None.

        ``n`` is below ``len(ids)`` (the last token is always read, for its logits) and at least
        :attr:`min_shared`; another model's entries are never returned.
        """
        if model_digest(loaded) != self.digest or len(ids) <= self.min_shared:
            return None
        with self._lock:
            best_key, best = None, 0
            for key, entry in self._entries.items():
                if key[0] == self.digest and (n := _shared(entry.ids, ids)) > best:
                    best_key, best = key, n
            best = min(best, len(ids) - 1)
            if best_key is None or best < self.min_shared:
                self.misses += 1
                return None
            self._entries.move_to_end(best_key)
            entry = self._entries[best_key]
        copied = copy_prefix(entry.cache, best)
        if copied is None:
            return None
        self.hits += 1
        return best, copied

    def store(self, loaded: LoadedModel, ids: Sequence[int], cache: Cache) -> bool:
        """Keep a copy of ``cache`` (over ``ids``); evict least recently used entries past the budget.

        Returns:
            Whether it was stored (too short, another model, an uncopyable cache or one over the
            whole budget is not).

        """
        if model_digest(loaded) != self.digest or len(ids) < self.min_shared:
            return False
        copied = copy_prefix(cache, len(ids))
        if copied is None:
            return False
        nbytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in copied.layers)
        if nbytes > self.budget_bytes:
            return False
        key = (self.digest, tuple(int(i) for i in ids))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._entries[key] = _Entry(key[1], copied, nbytes)
            self.nbytes += nbytes
            while self.nbytes > self.budget_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.nbytes -= dropped.nbytes
        return True
