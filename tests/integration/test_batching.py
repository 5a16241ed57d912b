"""Micro-batched gate checks (issue 16, round 2): concurrent checks share one left-padded forward pass.

| requirement | test |
|---|---|
| 8 checks batched = one by one: decisions identical, entropies within 1e-4 bits | ``TestBatchedEqualsSingle`` |
| concurrent ``/v1/gate`` requests are read in one forward pass; batch sizes in ``/metrics`` | ``TestServedBatching`` |
| a bad request fails alone; every check is audited once | ``TestServedBatching`` |
| the worker collects up to ``max_batch`` within the window and maps results back | ``TestWorker`` |
"""

from __future__ import annotations

import re
import statistics
import threading
import time

import pytest
from helpers import forward_lengths
from test_serve import AUTH, _client, _policy

from ic_core.errors import PromptError
from ic_core.governance.audit import read_audit
from ic_core.serve.schemas import Message
from ic_core.serve.worker import ModelWorker

QUESTIONS = (
    "what is the capital of france?", "2+2?", "name a prime number bigger than ten and smaller than twenty",
    "who wrote hamlet?", "what colour is the sky on a clear day at noon in summer?", "h2o is?",
    "what is the largest planet?", "translate hello into french, please, in one word",
)


def _conversations() -> list[list[Message]]:
    convs = [[Message(role="user", content=q)] for q in QUESTIONS]
    convs[2] = [Message(role="system", content="answer briefly"), *convs[2]]
    convs[5] = [Message(role="user", content="hi"), Message(role="assistant", content="hello"), *convs[5]]
    return convs


class TestBatchedEqualsSingle:
    def test_eight_checks_batched_equal_one_by_one(self, tiny, tmp_path):
        with _client(tiny, tmp_path) as c:
            probe = c.app.state.engine
            h = [probe.check(m, None, "t").analysis.state.readout_entropy_bits for m in _conversations()]
        policy = _policy(tiny, t_entropy_bits=statistics.median(h))  # half escalate, half approve
        with _client(tiny, tmp_path, policy=policy) as c:
            engine = c.app.state.engine
            single = [engine.check(m, None, "t") for m in _conversations()]
            with forward_lengths(tiny.model) as lengths:
                batched = engine.check_batch([(m, None, "t") for m in _conversations()])
        assert len(lengths) == 1 and len({len(s.analysis.rendered.input_ids) for s in single}) > 4  # padded
        assert [b.decision.decision for b in batched] == [s.decision.decision for s in single]
        assert {s.decision.decision for s in single} == {"approve", "escalate"}
        for b, s in zip(batched, single):
            assert b.analysis.rendered.input_ids == s.analysis.rendered.input_ids
            assert b.decision.signals["h_int_bits"] == pytest.approx(s.decision.signals["h_int_bits"], abs=1e-4)
            assert b.analysis.state.readout_entropy_bits == pytest.approx(s.analysis.state.readout_entropy_bits,
                                                                            abs=1e-4)
        seqs = [b.record["seq"] for b in batched]
        assert seqs == list(range(seqs[0], seqs[0] + 8))

    def test_a_bad_request_fails_alone(self, tiny, tmp_path):
        with _client(tiny, tmp_path) as c:
            engine = c.app.state.engine
            convs = _conversations()[:3]
            bad = [Message(role="assistant", content="no question")]
            out = engine.check_batch([(convs[0], None, "t"), (bad, None, "t"), (convs[1], None, "t")])
        assert isinstance(out[1], PromptError) and out[0].decision and out[2].decision
        assert out[2].record["seq"] == out[0].record["seq"] + 1  # nothing audited for the refused one


class TestServedBatching:
    def test_concurrent_gate_requests_share_a_forward_pass(self, tiny, tmp_path):
        results: list[int] = []
        with _client(tiny, tmp_path, batch_window_ms=1000, max_batch=8) as c:
            c.post("/v1/gate", json={"messages": [{"role": "user", "content": "warm up"}]}, headers=AUTH)

            def ask(q: str) -> None:
                r = c.post("/v1/gate", json={"messages": [{"role": "user", "content": q}]}, headers=AUTH)
                results.append(r.status_code)

            with forward_lengths(tiny.model) as lengths:
                threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS]
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                took = time.perf_counter() - start
            metrics = c.get("/metrics", headers=AUTH).text
        assert results == [200] * 8 and len(lengths) == 1 and took < 10
        assert _sample(metrics, "ic_gate_batch_size_count") == 2 and _sample(metrics, "ic_gate_batch_size_sum") == 9
        assert _sample(metrics, 'ic_gate_batch_size_bucket{le="7.0"}') == 1  # the warm-up; the 8 went together
        records, _ = read_audit(tmp_path / "audit.jsonl")
        assert [r["seq"] for r in records] == list(range(records[0]["seq"], records[0]["seq"] + 9))

    def test_bad_settings_are_refused(self, tiny, tmp_path):
        from ic_core.errors import DataError

        for bad in ({"batch_window_ms": -1}, {"max_batch": 0}, {"batch_window_ms": True}):
            with pytest.raises(DataError):
                _client(tiny, tmp_path, **bad)


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


class TestWorker:
    def test_collects_up_to_max_batch_and_maps_results(self):
        sizes: list[int] = []
        gate = threading.Event()

        def run(items):
            gate.wait(5)
            return [ValueError(i) if i == 3 else i * 10 for i in items]

        worker = ModelWorker(20, run, batch_window_s=0.5, max_batch=4, on_batch=sizes.append)
        try:
            futures = [worker.submit_batched(i) for i in range(6)]
            gate.set()
            values = [f.exception(5) or f.result(5) for f in futures]
        finally:
            worker.shutdown()
        assert sizes == [4, 2] and isinstance(values[3], ValueError)
        assert [v for i, v in enumerate(values) if i != 3] == [0, 10, 20, 40, 50] and worker.pending == 0

    def test_window_zero_runs_at_once_and_a_crash_fails_the_batch(self):
        def boom(items):
            raise RuntimeError("model fell over")

        worker = ModelWorker(4, boom, batch_window_s=0.0, max_batch=8)
        try:
            start = time.perf_counter()
            future = worker.submit_batched("x")
            assert isinstance(future.exception(5), RuntimeError) and time.perf_counter() - start < 1
        finally:
            worker.shutdown()
