"""The served gate's benchmark figures (issue 16): concurrency, HTTP overhead, prefix caching.

Each figure is a ratio of two arms timed side by side in rounds (:func:`time_rounds`):

* ``gate_rps_8_over_1`` — gate requests per second with 8 concurrent clients ÷ with 1 client,
  the same number of ``POST /v1/gate`` requests per arm against uvicorn on 127.0.0.1
  (micro-batching; higher is better, target ≥ 1.5; the batch sizes seen are reported);
* ``served_over_inprocess`` — ``POST /v1/chat/completions`` (check + 64-token answer) ÷ the same
  check and answer called on the server's engine in-process (HTTP, JSON and queueing only);
* ``cached_prefix_over_uncached`` — a gate check of a ~400-token conversation whose ~350-token
  system prompt is in the prefix cache ÷ the same check on an engine without the cache (a new
  question each round, so only the system prompt is shared).
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from ic_core.bench.timing import RatioStats, ratio_stats, rounded, time_rounds
from ic_core.bench.workloads import ANSWER_TEMPLATE, CONTEXT_SENTENCES, sample_questions
from ic_core.errors import ICError
from ic_core.generate import GenerationConfig
from ic_core.models import LoadedModel
from ic_core.prompts import render

SERVE_TARGETS: dict[str, tuple[str, float]] = {
    "gate_rps_8_over_1": ("min", 1.5),
    "served_over_inprocess": ("max", 1.05),
    "cached_prefix_over_uncached": ("max", 0.3),
}
"""Each figure's bound: ``("min", x)`` passes at or above x, ``("max", x)`` at or below."""
CLIENTS = 8


def _policy(loaded: LoadedModel) -> Any:
    """An H_int policy on the benchmark's answer template (unsigned: nothing here is trusted)."""
    from ic_core.governance.policy import Policy

    return Policy(signal="h_int", model=loaded.spec.to_dict(), regime="custom", kind="free_text",
                  template_user=ANSWER_TEMPLATE.user, t_entropy_bits=50.0, model_n_layers=loaded.n_layers,
                  model_d_model=loaded.d_model)


@contextmanager
def _served(app: Any) -> Iterator[str]:
    """``app`` on uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise ICError("The benchmark's server on 127.0.0.1 did not start.")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def system_prompt(tokenizer: Any, target_tokens: int) -> str:
    """Neutral context sentences whose rendered system message reaches about ``target_tokens`` tokens."""
    sentences: list[str] = []
    base = render(tokenizer, "x", ANSWER_TEMPLATE).n_tokens
    while True:
        sentences.append(CONTEXT_SENTENCES[len(sentences) % len(CONTEXT_SENTENCES)])
        text = " ".join(sentences)
        n = render(tokenizer, "x", replace(ANSWER_TEMPLATE, system=text)).n_tokens - base
        if n >= target_tokens or len(sentences) > 4 * target_tokens:
            return text


class _Questions:
    """A new question per call (the bundled capitals, numbered so no two requests repeat)."""

    def __init__(self) -> None:
        self._pool, self._k, self._lock = sample_questions(193), 0, threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self._k += 1
            k = self._k
        return f"{self._pool[k % len(self._pool)]} (question {k})"


def _gate_figure(url: str, headers: dict[str, str], rounds: int, requests: int, questions: _Questions,
                 batch_sizes: Callable[[], list[float]]) -> RatioStats:
    import httpx

    def one(client: httpx.Client) -> None:
        r = client.post(f"{url}/v1/gate", json={"messages": [{"role": "user", "content": questions()}]},
                        headers=headers)
        if r.status_code != 200:
            raise ICError(f"The served gate answered {r.status_code}: {r.text[:200]}")

    clients = [httpx.Client(timeout=120) for _ in range(CLIENTS)]
    pool = ThreadPoolExecutor(CLIENTS)

    def sequential() -> None:
        for _ in range(requests):
            one(clients[0])

    def concurrent() -> None:
        per = requests // CLIENTS
        for f in [pool.submit(lambda c=c: [one(c) for _ in range(per)]) for c in clients]:
            f.result()

    try:
        before = batch_sizes()
        t = time_rounds({"one": sequential, "eight": concurrent}, rounds)
        sizes = batch_sizes()
    finally:
        pool.shutdown()
        for c in clients:
            c.close()
    seen = {k + 1: int(now - then) for k, (now, then) in enumerate(zip(sizes, before)) if now > then}
    return ratio_stats(t["one"], t["eight"], None, requests_per_arm=requests, clients=CLIENTS,
                       batch_sizes_seen=seen)


class _SameQuestions:
    """Each arm's k-th call gets the k-th question: the arms of a round answer the same prompt.

    The bare questions under :data:`ANSWER_TEMPLATE` (no numbering), so greedy answers run to the
    full length and both arms generate the same tokens (checked per round).
    """

    def __init__(self) -> None:
        self._pool, self._calls = sample_questions(193), {}

    def __call__(self, arm: str) -> str:
        k = self._calls.get(arm, 0)
        self._calls[arm] = k + 1
        return self._pool[k % len(self._pool)]


def _server_timing(header: str) -> dict[str, float]:
    """``Server-Timing`` (``name;dur=ms, ...``) → name → seconds."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            out[name] = float(dur) / 1000
    return out


def _chat_figure(url: str, headers: dict[str, str], engine: Any, rounds: int, new_tokens: int) -> RatioStats:
    """Served check + answer ÷ the same check + answer in-process, the same question in both arms of a round.

    The served responses' ``Server-Timing`` splits each request: ``queue`` (hand-off to the model
    thread and the batching window), ``check`` and ``answer`` on the model thread, and the rest
    (HTTP, JSON, authentication, the client) as ``http_json``.
    """
    import statistics

    import httpx

    from ic_core.serve.schemas import Message

    config = GenerationConfig(max_new_tokens=new_tokens)  # what the server builds for a greedy request
    tokens: dict[str, list[int]] = {"served": [], "in_process": []}
    parts: list[dict[str, float]] = []
    questions = _SameQuestions()
    client = httpx.Client(timeout=300)
    hits_before = engine.prefix_cache.hits if engine.prefix_cache is not None else 0

    def served() -> None:
        body = {"messages": [{"role": "user", "content": questions("served")}], "max_tokens": new_tokens}
        start = time.perf_counter()
        r = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        total = time.perf_counter() - start
        if r.status_code != 200:
            raise ICError(f"The served chat answered {r.status_code}: {r.text[:200]}")
        tokens["served"].append(r.json()["usage"]["completion_tokens"])
        timing = _server_timing(r.headers.get("server-timing", ""))
        parts.append({**timing, "http_json": total - sum(timing.values()), "total": total})

    def inprocess() -> None:
        checked = engine.check([Message(role="user", content=questions("in_process"))], None, "bench")
        tokens["in_process"].append(engine.complete(checked, config).completion_tokens)

    try:
        t = time_rounds({"served": served, "in_process": inprocess}, rounds)
    finally:
        client.close()
    if tokens["served"] != tokens["in_process"]:
        raise ICError(f"The two arms generated different token counts per round: {tokens}.")
    timed = parts[1:]  # the first served call is the warm-up
    breakdown = {name: rounded(1000 * statistics.median(p.get(name, 0.0) for p in timed), 2)
                 for name in ("queue", "check", "answer", "http_json", "total")}
    same_request = statistics.median(p["total"] / (p.get("check", 0.0) + p.get("answer", 0.0)) for p in timed)
    hits = (engine.prefix_cache.hits if engine.prefix_cache is not None else 0) - hits_before
    return ratio_stats(t["served"], t["in_process"], SERVE_TARGETS["served_over_inprocess"][1],
                       new_tokens=new_tokens, generated_tokens=tokens["in_process"][1:],
                       served_breakdown_ms=breakdown, served_over_its_model_time=rounded(same_request),
                       prefix_cache_hits=hits)


def _prefix_figure(loaded: LoadedModel, rounds: int, system_tokens: int, questions: _Questions,
                   audit_dir: Path) -> RatioStats:
    from ic_core.serve.engine import GatedEngine
    from ic_core.serve.schemas import Message

    policy = _policy(loaded)
    cached = GatedEngine(loaded, policy, None, str(audit_dir / "cached.jsonl"), prefix_cache_mb=512)
    plain = GatedEngine(loaded, policy, None, str(audit_dir / "plain.jsonl"), prefix_cache_mb=0)
    system = system_prompt(loaded.tokenizer, system_tokens)
    context = " ".join(CONTEXT_SENTENCES[:2])
    seen: dict[str, int] = {}

    def conversation() -> list[Message]:
        return [Message(role="system", content=system), Message(role="user", content=f"{context} {questions()}")]

    def with_cache() -> None:
        seen["tokens"] = cached.check(conversation(), None, "bench").analysis.rendered.n_tokens

    def without() -> None:
        plain.check(conversation(), None, "bench")

    t = time_rounds({"cached": with_cache, "uncached": without}, rounds)
    assert cached.prefix_cache is not None
    return ratio_stats(t["cached"], t["uncached"], SERVE_TARGETS["cached_prefix_over_uncached"][1],
                       conversation_tokens=seen.get("tokens"), system_tokens=system_tokens,
                       cache_hits=cached.prefix_cache.hits)


def bench_serve(loaded: LoadedModel, rounds: int, new_tokens: int = 64, gate_requests: int = 32,
                system_tokens: int = 350, chat_rounds: int | None = None) -> dict[str, Any]:
    """The three served-gate figures (module docstring), each with its pass flag against :data:`SERVE_TARGETS`.

    Args:
        loaded: The model.
        rounds: Rounds per figure.
        new_tokens: Tokens per answer in ``served_over_inprocess``.
        gate_requests: Requests per arm in ``gate_rps_8_over_1`` (a multiple of 8).
        system_tokens: Cached system prompt length in ``cached_prefix_over_uncached`` (at most half
            the model's context, so the conversation fits a small model too).
        chat_rounds: Rounds of ``served_over_inprocess`` (default ``rounds``): a few per cent
            resolve only over several rounds.

    Returns:
        Per figure name (:data:`SERVE_TARGETS`): ``median``/``min``/``max`` of the per-round ratios,
        ``n`` rounds, ``numerator_median_s``/``denominator_median_s``, ``target``, ``target_is``
        (``min``: higher is better) and ``pass``; plus ``gate_rps_8_over_1``: ``requests_per_arm``,
        ``clients``, ``batch_sizes_seen`` (batch size → batches, over warm-up and rounds);
        ``served_over_inprocess``: ``new_tokens``, ``generated_tokens`` (per timed round, equal in
        both arms), ``served_breakdown_ms`` (median ``queue``/``check``/``answer``/``http_json``/
        ``total`` of a served request), ``served_over_its_model_time`` (a served request's time ÷
        its own check + answer on the model thread) and ``prefix_cache_hits`` (0: no arm was
        helped by the other's prompt); ``cached_prefix_over_uncached``: ``conversation_tokens``,
        ``system_tokens``, ``cache_hits``.

    """
    from ic_core.serve.app import create_app
    from ic_core.serve.settings import ServeSettings

    if gate_requests < CLIENTS or gate_requests % CLIENTS:
        raise ICError(f"gate_requests must be a positive multiple of {CLIENTS}; got {gate_requests}.")
    if loaded.max_context is not None:
        system_tokens = min(system_tokens, loaded.max_context // 2)
    key = "bench-" + "k" * 24
    headers = {"Authorization": f"Bearer {key}"}
    questions = _Questions()
    with tempfile.TemporaryDirectory(prefix="ic-bench-serve-") as tmp:
        settings = ServeSettings(mode="annotate", api_keys=(key,), audit_log=str(Path(tmp) / "audit.jsonl"),
                                 queue_size=4 * CLIENTS, max_tokens_limit=max(512, new_tokens))
        app = create_app(loaded, _policy(loaded), None, settings)
        histogram = app.state.metrics.batch_size

        def batch_sizes() -> list[float]:
            counts = {s.labels.get("le"): s.value for s in next(iter(histogram.collect())).samples
                      if s.name.endswith("_bucket")}
            cumulative = [counts.get(f"{float(k)}", 0.0) for k in range(CLIENTS + 1)]
            return [cumulative[k] - cumulative[k - 1] for k in range(1, CLIENTS + 1)]

        with _served(app) as url:
            gate = _gate_figure(url, headers, rounds, gate_requests, questions, batch_sizes)
            chat = _chat_figure(url, headers, app.state.engine, chat_rounds or rounds, new_tokens)
        prefix = _prefix_figure(loaded, rounds, system_tokens, questions, Path(tmp))
    out: dict[str, Any] = {}
    for name, stats in (("gate_rps_8_over_1", gate), ("served_over_inprocess", chat),
                        ("cached_prefix_over_uncached", prefix)):
        side, bound = SERVE_TARGETS[name]
        passed = stats.median >= bound if side == "min" else stats.median <= bound
        out[name] = {**stats.to_json(), "target": bound, "target_is": side, "pass": bool(passed),
                     "median": rounded(stats.median)}
    return out
