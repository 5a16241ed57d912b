"""The FastAPI app: an OpenAI-compatible chat endpoint with the gate in front of the model.

:func:`create_app` builds it around an already loaded model, a verified policy and its probe,
so tests run it in-process (``fastapi.testclient.TestClient``) and the CLI serves it with
uvicorn. Routes only parse, authenticate, queue and format: the check, the audit record and
the answer are :class:`ic_core.serve.engine.GatedEngine`'s. Every error is an OpenAI-style JSON
body (``{"error": {"type", "message"}}``), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ic_core.errors import ICError
from ic_core.generate import GenerationConfig
from ic_core.governance.policy import Policy
from ic_core.models import LoadedModel
from ic_core.serve.engine import AuditUnavailable, Checked, Completion, GatedEngine, intention
from ic_core.serve.jobs import ChatJob, GateJob, JobResult, StreamItem, batch_runner
from ic_core.serve.metrics import ServeMetrics
from ic_core.serve.schemas import MAX_STOP, ChatRequest, GateRequest, error_body
from ic_core.serve.settings import ServeSettings, bearer_token, key_fingerprint, match_api_key
from ic_core.serve.worker import ModelWorker, QueueFull

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.probes.saved import SavedProbe

ROUTES = ("/v1/chat/completions", "/v1/gate", "/v1/models", "/healthz", "/metrics")


class ServeError(Exception):
    """An error answered with ``status`` and an OpenAI-style body."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        """Remember the status, body and headers."""
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(kind, message, **extra), headers


def _json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class Timed:
    """ASGI middleware: each request's time to its last byte in the latency histogram (by route).

    A plain ASGI wrapper rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware``
    runs the route in another task behind a memory stream, a cost every request paid for a clock.
    """

    def __init__(self, app: ASGIApp, observe: Callable[[str, float], None]) -> None:
        """Wrap ``app``; ``observe(route, seconds)`` records one request."""
        self.app, self.observe = app, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            path = scope.get("path", "")
            self.observe(path if path in ROUTES else "other", time.perf_counter() - start)


class BodyLimit:
    """ASGI middleware: answer 413 for a body over ``limit`` bytes (declared or streamed) before any route runs."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        """Wrap ``app``."""
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the whole body (at most ``limit`` bytes), then replay it to the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > self.limit)
        chunks: list[bytes] = []
        size, more = 0, not too_big
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False) and size <= self.limit
        if too_big or size > self.limit:
            body = error_body("request_too_large", f"The request body exceeds {self.limit:,} bytes.")
            await _json_error(413, body)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def _gen_config(req: ChatRequest, settings: ServeSettings) -> tuple[GenerationConfig, list[str]]:
    """Decoding settings of a request (temperature absent or 0: greedy), checked before it is queued."""
    want = req.requested_tokens() or settings.default_max_tokens
    if want > settings.max_tokens_limit:
        raise ServeError(400, "invalid_request_error",
                         f"max_tokens {want} exceeds this server's limit of {settings.max_tokens_limit}.",
                         param="max_tokens")
    stop = req.stop_list()
    if len(stop) > MAX_STOP:
        raise ServeError(400, "invalid_request_error", f"At most {MAX_STOP} stop sequences; got {len(stop)}.",
                         param="stop")
    sample = bool(req.temperature)
    config = GenerationConfig(max_new_tokens=want, do_sample=sample, temperature=req.temperature or 1.0,
                              top_p=req.top_p or 1.0, seed=req.seed or 0)
    return config, stop


def _install_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    def counted(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.refused.labels(str(status)).inc()
        return _json_error(status, body, headers)

    @app.exception_handler(ServeError)
    async def _serve(_: Request, exc: ServeError) -> JSONResponse:
        return counted(exc.status, exc.body, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid request"))
        return counted(400, error_body("invalid_request_error", msg, param=where or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return counted(exc.status_code, error_body("not_found" if exc.status_code == 404 else "invalid_request_error",
                                                   str(exc.detail)))

    @app.exception_handler(QueueFull)
    async def _full(_: Request, exc: QueueFull) -> JSONResponse:
        return counted(429, error_body("rate_limit_exceeded", str(exc)), {"Retry-After": "1"})

    @app.exception_handler(AuditUnavailable)
    async def _audit(_: Request, exc: AuditUnavailable) -> JSONResponse:
        return counted(503, error_body("audit_unavailable", str(exc)))

    @app.exception_handler(ICError)
    async def _user(_: Request, exc: ICError) -> JSONResponse:
        return counted(400, error_body("invalid_request_error", str(exc)))

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        return counted(500, error_body("server_error", f"Internal error ({type(exc).__name__}); see the server log."))


def _completion_body(rid: str, model_id: str, done: Completion, intent: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                     "finish_reason": done.finish_reason, "logprobs": None}],
        "usage": _usage(done),
        "intention": intent,
    }


def _usage(done: Completion) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


async def _sse(rid: str, model_id: str, items: asyncio.Queue[StreamItem], job: asyncio.Future[Any],
               intent: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI's chunk stream, sent while the answer is generated.

    A role chunk, a content delta per piece, a finish chunk, (usage,) then ``data: [DONE]``. A
    failure mid-answer ends the stream with an error event.
    """
    created = int(time.time())

    def event(body: dict[str, Any]) -> bytes:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_id}
        return b"data: " + json.dumps(head | body, ensure_ascii=False).encode() + b"\n\n"

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return event({"choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra})

    yield chunk({"role": "assistant", "content": ""}, intention=intent)
    while True:
        kind, value = await items.get()
        if kind == "delta":
            yield chunk({"content": value})
        elif kind == "done":
            yield chunk({}, value.finish_reason, intention=intent)
            if include_usage:
                yield event({"choices": [], "usage": _usage(value)})
        elif kind == "end":
            break
    error = job.exception() if job.done() and not job.cancelled() else None
    if error is not None:
        kind = "invalid_request_error" if isinstance(error, ICError) else "server_error"
        message = str(error) if isinstance(error, ICError) else f"Internal error ({type(error).__name__})."
        yield b"data: " + json.dumps(error_body(kind, message)).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def create_app(loaded: LoadedModel, policy: Policy, probe: SavedProbe | None = None,
               settings: ServeSettings | None = None) -> FastAPI:
    """The gated endpoint around a loaded model and a verified policy.

    Args:
        loaded: The model (must be the policy's model: refused otherwise).
        policy: The active policy (load it with :meth:`Policy.load`, which verifies its signature).
        probe: The saved probe, for ``probe``/``combined`` policies.
        settings: Mode, API keys, limits and audit log (defaults: block mode, no keys).

    Raises:
        ModelMismatchError: the model is not the policy's.
        DataError: a missing or different probe, or a bad audit path.

    """
    settings = settings or ServeSettings()
    engine = GatedEngine(loaded, policy, probe, settings.audit_log, settings.prefix_cache_mb)
    metrics = ServeMetrics()
    worker = ModelWorker(settings.queue_size, batch_runner(engine, settings.mode), settings.batch_window_ms / 1000,
                         settings.max_batch, metrics.batch_size.observe)
    model_id = settings.model_id or loaded.spec.label

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.shutdown()

    app = FastAPI(title="Intention Collapse gated endpoint", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine, app.state.worker, app.state.metrics, app.state.settings = engine, worker, metrics, settings
    _install_error_handlers(app, metrics)

    app.add_middleware(Timed, observe=lambda path, s: metrics.latency.labels(path).observe(s))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    def caller(request: Request) -> str:
        """The audit actor of an authenticated request (401 without a configured key)."""
        if not settings.auth_required:
            return "api:no-auth"
        key = match_api_key(bearer_token(request.headers.get("authorization")), settings.api_keys)
        if key is None:
            raise ServeError(401, "invalid_api_key", "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                             {"WWW-Authenticate": "Bearer"})
        return f"api:{key_fingerprint(key)}"

    async def on_worker(job: GateJob | ChatJob) -> JobResult:
        """Run one micro-batched job (a gate check, or a chat completion's check and answer) on the model thread."""
        future = worker.submit_batched(job)
        metrics.queue_depth.set(worker.pending)
        try:
            return await asyncio.wrap_future(future)
        finally:
            metrics.queue_depth.set(worker.pending)

    def record(checked: Checked, endpoint: str) -> None:
        metrics.decisions.labels(checked.decision.decision, endpoint).inc()
        metrics.check_latency.observe(checked.decision.elapsed_s)

    def headers(checked: Checked, result: JobResult | None = None) -> dict[str, str]:
        out = {"X-Intention-Decision": checked.decision.decision,
               "X-Intention-Audit-Seq": str(checked.record.get("seq"))}
        if result is not None:
            out["Server-Timing"] = result.server_timing()
        return out

    def escalated(checked: Checked, result: JobResult | None = None) -> ServeError:
        """409 with the decision, marked ``x-should-retry: false``.

        OpenAI's clients retry a 409 by default; a retried escalation would be checked and audited
        again only to be escalated again.
        """
        intent = intention(checked, policy, settings.mode, "blocked")
        return ServeError(409, "escalated", f"The gate escalated this request to a human: {checked.decision.reason}",
                          headers(checked, result) | {"x-should-retry": "false"}, intention=intent)

    async def stream(req: ChatRequest, actor: str, config: GenerationConfig, stop: list[str]) -> Response:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[StreamItem] = asyncio.Queue()

        def put(item: StreamItem) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        job = asyncio.wrap_future(worker.submit_batched(ChatJob(req.messages, req.answer_prefix, actor, config, stop,
                                                                put)))
        metrics.queue_depth.set(worker.pending)
        job.add_done_callback(lambda _: items.put_nowait(("end", None)))
        kind, checked = await items.get()
        if kind != "checked":  # the check itself failed: answer with its JSON error
            await job
            raise RuntimeError("the model worker ended a streaming job without a check")
        record(checked, "chat")
        if checked.decision.escalate and settings.mode == "block":
            raise escalated(checked, await job)  # the job ends right after its check: nothing is generated
        intent = intention(checked, policy, settings.mode, "annotated" if checked.decision.escalate else "answered")
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(f"chatcmpl-{uuid.uuid4().hex}", model_id, items, job, intent, usage),
                                 media_type="text/event-stream", headers=headers(checked) | {"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, actor: str = Depends(caller)) -> Response:
        config, stop = _gen_config(req, settings)
        if req.stream:
            return await stream(req, actor, config, stop)
        result = await on_worker(ChatJob(req.messages, req.answer_prefix, actor, config, stop))
        checked, done = result.checked, result.completion
        record(checked, "chat")
        if done is None:
            raise escalated(checked, result)
        action = "annotated" if checked.decision.escalate else "answered"
        intent = intention(checked, policy, settings.mode, action)
        return JSONResponse(_completion_body(f"chatcmpl-{uuid.uuid4().hex}", model_id, done, intent),
                            headers=headers(checked, result))

    @app.post("/v1/gate")
    async def gate(req: GateRequest, actor: str = Depends(caller)) -> JSONResponse:
        result = await on_worker(GateJob(req.messages, req.answer_prefix, actor))
        checked = result.checked
        record(checked, "gate")
        body = {"object": "gate.decision", "model": model_id,
                "intention": intention(checked, policy, settings.mode, "checked")}
        return JSONResponse(body, headers=headers(checked, result))

    @app.get("/v1/models")
    async def models(_: str = Depends(caller)) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "ic_core"}]}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "policy_id": policy.policy_id, "mode": settings.mode}

    @app.get("/metrics")
    async def prometheus(_: str = Depends(caller)) -> Response:
        metrics.queue_depth.set(worker.pending)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
