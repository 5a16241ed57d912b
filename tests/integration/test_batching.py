"""Micro-batched gate checks (issue 16, round 2): concurrent checks share one left-padded forward pass.

| requirement | test |
|---|---|
| 8 checks batched = one by one: decisions identical, entropies within 1e-4 bits | ``TestBatchedEqualsSingle`` |
| concurrent ``/v1/gate`` requests are read in one forward pass; batch sizes in ``/metrics`` | ``TestServedBatching`` |
| a bad request fails alone; every check is audited once | ``TestServedBatching`` |
| the worker collects up to ``max_batch`` within the window and maps results back | ``TestWorker`` |
| chat checks batched keep each row's own KV cache: checks and answers equal one by one | ``TestBatchedChat`` |
| concurrent chat (plain and streaming) and gate requests share one pass; every request answered once, one audit record each, seq contiguous, verified | ``TestServedChatBatching`` |
| a deferred answer runs after the batch's other results are delivered; its failure is its own | ``TestWorker`` |
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time

import pytest
from helpers import forward_lengths
from test_serve import AUTH, _client, _policy

from ic_core.errors import PromptError
from ic_core.generate import GenerationConfig
from ic_core.governance.audit import read_audit
from ic_core.governance.audit_verify import verify_audit
from ic_core.serve.schemas import Message
from ic_core.serve.worker import Deferred, ModelWorker

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


def _threshold(tiny, tmp_path) -> float:
    """The median H_int of the eight questions: half escalate, half are approved."""
    with _client(tiny, tmp_path / "probe") as c:
        engine = c.app.state.engine
        return statistics.median(engine.check(m, None, "t").analysis.state.readout_entropy_bits
                                 for m in _conversations())


class TestBatchedChat:
    def test_chat_checks_batched_keep_their_own_cache_and_answer_as_one_by_one(self, tiny, tmp_path):
        """Batched with answers: the same signals (1e-4 bits) and the same greedy answers as check + complete alone."""
        config = GenerationConfig(max_new_tokens=8)
        with _client(tiny, tmp_path, prefix_cache_mb=0) as c:
            engine = c.app.state.engine
            single = [engine.check(m, None, "t") for m in _conversations()]
            single_answers = [engine.complete(s, config).text for s in single]
            with forward_lengths(tiny.model) as lengths:
                batched = engine.check_batch([(m, None, "t") for m in _conversations()], [True] * 8)
            assert len(lengths) == 1  # the eight checks in one pass
            assert all(b.analysis.prefill is not None for b in batched)
            assert [len(b.analysis.prefill.ids) for b in batched] == [len(s.analysis.rendered.input_ids) for s in single]
            with forward_lengths(tiny.model) as lengths:
                batched_answers = [engine.complete(b, config).text for b in batched]
            assert min(lengths) == 1  # each answer continued from its cache: no prompt was read again
            gate_only = engine.check_batch([(m, None, "t") for m in _conversations()])
        assert batched_answers == single_answers and len(set(single_answers)) > 1
        for b, s, g in zip(batched, single, gate_only):
            assert b.decision.signals["h_int_bits"] == pytest.approx(s.decision.signals["h_int_bits"], abs=1e-4)
            assert b.decision.signals["top1_prob"] == pytest.approx(s.decision.signals["top1_prob"], abs=1e-5)
            assert b.decision.decision == s.decision.decision
            assert g.analysis.prefill is None  # gate checks keep no cache

    def test_answers_flags_must_match_the_requests(self, tiny, tmp_path):
        with _client(tiny, tmp_path) as c, pytest.raises(ValueError, match="2 flags for 1"):
            c.app.state.engine.check_batch([(_conversations()[0], None, "t")], [True, False])


def _stream_text(response) -> str:
    events = [json.loads(e[6:]) for e in response.text.split("\n\n") if e and e != "data: [DONE]"]
    return "".join(ev["choices"][0]["delta"].get("content", "") for ev in events if ev["choices"])


class TestServedChatBatching:
    def test_concurrent_chat_and_gate_requests_share_one_pass(self, tiny, tmp_path):
        """5 chat, 2 streaming chat and 1 gate request at once: one check pass, answers as sequential ones."""
        policy = _policy(tiny, t_entropy_bits=_threshold(tiny, tmp_path), store_prompt_text=True)
        kinds = ["chat"] * 5 + ["stream"] * 2 + ["gate"]

        def ask(c, kind: str, q: str):
            body = {"messages": [{"role": "user", "content": q}], "max_tokens": 6}
            if kind == "gate":
                return c.post("/v1/gate", json=body, headers=AUTH)
            return c.post("/v1/chat/completions", json={**body, "stream": kind == "stream"}, headers=AUTH)

        def outcome(kind: str, r) -> tuple:
            if r.status_code == 409:
                return ("blocked", r.json()["error"]["intention"]["signals"]["h_int_bits"])
            if kind == "gate":
                return (r.json()["intention"]["decision"], r.json()["intention"]["signals"]["h_int_bits"])
            text = _stream_text(r) if kind == "stream" else r.json()["choices"][0]["message"]["content"]
            return ("answered", text)

        with _client(tiny, tmp_path / "one", policy=policy, batch_window_ms=0, max_batch=1) as c:
            reference = [outcome(k, ask(c, k, q)) for k, q in zip(kinds, QUESTIONS)]
        assert {o[0] for o in reference} >= {"answered", "blocked"}

        responses: dict[int, object] = {}
        with _client(tiny, tmp_path, policy=policy, batch_window_ms=1000, max_batch=8) as c:
            c.post("/v1/gate", json={"messages": [{"role": "user", "content": "warm up"}]}, headers=AUTH)
            with forward_lengths(tiny.model) as lengths:
                threads = [threading.Thread(target=lambda i=i: responses.__setitem__(i, ask(c, kinds[i], QUESTIONS[i])))
                           for i in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
            metrics = c.get("/metrics", headers=AUTH).text
        assert sorted(responses) == list(range(8))
        assert [lng for lng in lengths if lng > 1] == [max(lengths)]  # one check pass; answers step one token
        assert _sample(metrics, "ic_gate_batch_size_count") == 2 and _sample(metrics, "ic_gate_batch_size_sum") == 9
        got = [outcome(k, responses[i]) for i, k in enumerate(kinds)]
        for g, want in zip(got, reference):
            assert g[0] == want[0]
            if g[0] == "answered":
                assert g[1] == want[1]
            else:
                assert g[1] == pytest.approx(want[1], abs=1e-4)
        seqs = [int(r.headers["x-intention-audit-seq"]) for r in (responses[i] for i in range(8))]
        records, skipped = read_audit(tmp_path / "audit.jsonl")
        assert skipped == 0 and [r["seq"] for r in records] == list(range(9))  # warm-up + one each
        assert sorted(seqs) == list(range(1, 9))
        by_seq = {r["seq"]: r for r in records}
        assert [by_seq[s]["prompt"] for s in seqs] == list(QUESTIONS)
        # Server-Timing on every response whose timing is known when its headers go out (not an answered stream)
        timed = [r for i, r in responses.items() if kinds[i] != "stream" or r.status_code == 409]
        assert len(timed) >= 6 and all("check;dur=" in r.headers["server-timing"] for r in timed)
        report = verify_audit(tmp_path / "audit.jsonl")
        assert report.status == "intact" and report.n_records == 9


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

    def test_deferred_results_run_after_the_others_are_delivered(self):
        """Immediate results are set before any deferred one runs; a deferred failure fails its item alone."""
        seen_when_deferred_ran: list[bool] = []
        futures = []

        def later(value):
            seen_when_deferred_ran.append(futures[0].done())
            if value == "bad":
                raise PromptError("answer failed")
            return value.upper()

        def run(items):
            return [Deferred(lambda i=i: later(i)) if i != "now" else "done" for i in items]

        worker = ModelWorker(8, run, batch_window_s=0.5, max_batch=3)
        try:
            futures.extend(worker.submit_batched(x) for x in ("now", "a", "bad"))
            values = [f.exception(5) or f.result(5) for f in futures]
        finally:
            worker.shutdown()
        assert values[:2] == ["done", "A"] and isinstance(values[2], PromptError)
        assert seen_when_deferred_ran == [True, True] and worker.pending == 0

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
