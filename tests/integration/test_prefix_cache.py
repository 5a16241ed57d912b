"""Prefix KV caching (issue 16, round 2): a check after a shared system prompt prefills only the new tokens.

| requirement | test |
|---|---|
| cached check = uncached check within float tolerance; only new tokens prefilled | ``TestCachedEqualsUncached`` |
| the stored cache is copied, never extended (a second hit gives the same numbers) | ``TestCachedEqualsUncached`` |
| answers generated after a cached check equal uncached ones | ``TestCachedEqualsUncached.test_answer_*`` |
| bounded by memory (LRU), keyed by ids and the model's weights digest | ``TestPrefixCache`` |
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers import forward_lengths
from test_serve import AUTH, _client

from ic_core.generate import GenerationConfig
from ic_core.serve.prefix_cache import PrefixCache
from ic_core.serve.schemas import Message

SYSTEM = ("You are the assistant of a careful research team. Answer in one short line, say when you are not "
          "sure, never invent a source, and keep units and names exactly as the user wrote them. ") * 4


def _conv(question: str) -> list[Message]:
    return [Message(role="system", content=SYSTEM), Message(role="user", content=question)]


def _engines(tiny, tmp_path):
    cached = _client(tiny, tmp_path / "a", prefix_cache_mb=64).app.state.engine
    plain = _client(tiny, tmp_path / "b", prefix_cache_mb=0).app.state.engine
    return cached, plain


class TestCachedEqualsUncached:
    def test_second_check_prefills_only_the_new_tokens(self, tiny, tmp_path):
        cached, plain = _engines(tiny, tmp_path)
        cached.check(_conv("what is the capital of france?"), None, "t")
        with forward_lengths(tiny.model) as lengths:
            hit = cached.check(_conv("who wrote hamlet?"), None, "t")
        ref = plain.check(_conv("who wrote hamlet?"), None, "t")
        n = ref.analysis.rendered.n_tokens
        assert n > 150 and len(lengths) == 1 and lengths[0] < n - 120  # the system prompt was not read again
        assert hit.decision.decision == ref.decision.decision
        assert hit.analysis.state.readout_entropy_bits == pytest.approx(ref.analysis.state.readout_entropy_bits,
                                                                          abs=1e-4)
        assert hit.analysis.state.hidden == pytest.approx(ref.analysis.state.hidden, abs=1e-4)
        assert cached.prefix_cache.hits == 1

    def test_the_stored_cache_is_not_extended(self, tiny, tmp_path):
        cached, plain = _engines(tiny, tmp_path)
        cached.check(_conv("what is the capital of france?"), None, "t")
        first = cached.check(_conv("2+2?"), None, "t")
        cached.complete(first, GenerationConfig(max_new_tokens=6, stop_at_answer_line=False))  # extends its prefill
        again = cached.check(_conv("2+2?"), None, "t")
        ref = plain.check(_conv("2+2?"), None, "t")
        for got in (first, again):
            assert got.analysis.state.readout_entropy_bits == pytest.approx(
                ref.analysis.state.readout_entropy_bits, abs=1e-4)

    def test_answer_after_a_cached_check_equals_uncached(self, tiny, tmp_path):
        config = GenerationConfig(max_new_tokens=10, stop_at_answer_line=False)
        cached, plain = _engines(tiny, tmp_path)
        cached.check(_conv("what is the capital of france?"), None, "t")
        hit = cached.complete(cached.check(_conv("who wrote hamlet?"), None, "t"), config)
        ref = plain.complete(plain.check(_conv("who wrote hamlet?"), None, "t"), config)
        assert hit.text == ref.text and hit.completion_tokens == ref.completion_tokens

    def test_served_gate_uses_the_cache(self, tiny, tmp_path):
        with _client(tiny, tmp_path) as c:
            body = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x?"}]
            for q in ("first question?", "second question?"):
                body[-1]["content"] = q
                assert c.post("/v1/gate", json={"messages": body}, headers=AUTH).status_code == 200
            assert c.app.state.engine.prefix_cache.hits == 1


class TestPrefixCache:
    def _kv(self, tiny, ids):
        import torch

        with torch.inference_mode():
            return tiny.model(input_ids=torch.tensor([ids]), use_cache=True).past_key_values

    def test_lru_within_the_budget(self, tiny):
        ids = [list(range(5, 75)), list(range(6, 76)), list(range(7, 77))]
        one = sum(layer.keys.nbytes + layer.values.nbytes for layer in self._kv(tiny, ids[0]).layers)
        cache = PrefixCache(tiny, budget_bytes=2 * one)
        for row in ids:
            assert cache.store(tiny, row, self._kv(tiny, row))
        assert len(cache) == 2 and cache.nbytes <= 2 * one
        assert cache.lookup(tiny, ids[0] + [9]) is None  # the oldest was evicted
        n, kv = cache.lookup(tiny, ids[2] + [9])
        assert n == 70 and kv.get_seq_length() == 70

    def test_keyed_by_the_model_digest_and_long_enough(self, tiny):
        row = list(range(5, 80))
        cache = PrefixCache(tiny, budget_bytes=2**26)
        assert not cache.store(tiny, row[:10], self._kv(tiny, row[:10]))  # shorter than the minimum
        assert cache.store(tiny, row, self._kv(tiny, row))
        other = SimpleNamespace(weights_sha256="f" * 64, model=tiny.model)
        assert cache.lookup(other, row + [3]) is None
        n, kv = cache.lookup(tiny, row)  # the whole row is cached: the last token is still read
        assert n == len(row) - 1 and kv.get_seq_length() == len(row) - 1
        assert cache.lookup(tiny, [4] + row) is None  # no shared leading ids
