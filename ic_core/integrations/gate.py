"""The one call every adapter makes: check the conversation an agent is about to send to its model.

A gate reads the *current user turn* (with the system text before it), which is what the policy
was calibrated on; adapters send only that. Both gates fail closed: an unreachable server, a
refused key or a bad request raise :class:`GateUnavailable`, so the agent stops instead of
acting unchecked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ic_core.errors import ICError

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.governance.policy import Policy
    from ic_core.models import LoadedModel
    from ic_core.probes.saved import SavedProbe

ChatMessage = Mapping[str, Any]
"""An OpenAI-style message: ``{"role": "system" | "user" | ..., "content": str}``."""


class GateUnavailable(ICError):
    """The gate could not decide (unreachable, unauthorised, or the request was refused)."""


@dataclass(frozen=True)
class Intention:
    """The gate's decision as the adapters pass it on (the server's ``intention`` object)."""

    decision: str
    reason: str
    policy_id: str
    audit_seq: int | None
    raw: dict[str, Any] = field(repr=False)
    """The whole ``intention`` object (signals, policy_signed, guarantee, audit hash, ...)."""

    @property
    def escalate(self) -> bool:
        """True when a human should look before the agent acts."""
        return self.decision == "escalate"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Intention:
        """From the ``intention`` object of a server response."""
        audit = data.get("audit") or {}
        return cls(str(data["decision"]), str(data["reason"]), str(data["policy_id"]), audit.get("seq"), dict(data))


def current_turn(messages: Sequence[ChatMessage], system: str | None = None) -> list[dict[str, str]]:
    """The system text and the last user message: what the gate reads.

    Raises:
        GateUnavailable: there is no user message to check.

    """
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise GateUnavailable("No user message to check: the gate reads the current user turn.")
    systems = [str(m.get("content") or "") for m in messages if m.get("role") in ("system", "developer")]
    text = "\n\n".join(t for t in ([system] if system else []) + systems if t.strip())
    turn = [{"role": "system", "content": text}] if text else []
    return [*turn, {"role": "user", "content": str(users[-1].get("content") or "")}]


class Gate(Protocol):
    """Anything that checks a conversation and returns an :class:`Intention`."""

    def check(self, messages: Sequence[ChatMessage], answer_prefix: str | None = None) -> Intention:
        """Decide for ``messages`` (the current turn); blocking."""
        ...

    async def acheck(self, messages: Sequence[ChatMessage], answer_prefix: str | None = None) -> Intention:
        """:meth:`check` without blocking the event loop."""
        ...


class HttpGate:
    """The served ``POST /v1/gate`` of ``python -m ic_core serve``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        """Args: the server's ``/v1`` URL (e.g. ``http://127.0.0.1:8000/v1``), a bearer key, a timeout."""
        self.url = base_url.rstrip("/") + "/gate"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s

    def check(self, messages: Sequence[ChatMessage], answer_prefix: str | None = None) -> Intention:
        """POST the current turn; raises :class:`GateUnavailable` on any failure (fail closed)."""
        import httpx

        body: dict[str, Any] = {"messages": current_turn(messages)}
        if answer_prefix:
            body["answer_prefix"] = answer_prefix
        try:
            r = httpx.post(self.url, json=body, headers=self.headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise GateUnavailable(f"The gate at {self.url} cannot be reached: {exc}.") from exc
        try:
            data = r.json()
        except ValueError:
            data = {}
        if r.status_code != 200 or "intention" not in data:
            message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
            raise GateUnavailable(f"The gate at {self.url} answered HTTP {r.status_code}: {message or r.text[:200]}")
        return Intention.from_json(data["intention"])

    async def acheck(self, messages: Sequence[ChatMessage], answer_prefix: str | None = None) -> Intention:
        """:meth:`check` on a worker thread."""
        return await asyncio.to_thread(self.check, messages, answer_prefix)


class LocalGate:
    """The same check in this process, on a model already loaded here (audited with ``source="api"``)."""

    def __init__(self, loaded: LoadedModel, policy: Policy, probe: SavedProbe | None = None,
                 audit_log: str | None = None, actor: str = "api:in-process") -> None:
        """Build the engine (refuses a model or probe other than the policy's)."""
        from ic_core.serve.engine import GatedEngine

        self.engine, self.actor = GatedEngine(loaded, policy, probe, audit_log), actor
        self._lock = threading.Lock()

    def check(self, messages: Sequence[ChatMessage], answer_prefix: str | None = None) -> Intention:
        """Check the current turn; a prompt the engine refuses raises :class:`GateUnavailable`."""
        from ic_core.serve.engine import intention
        from ic_core.serve.schemas import Message

        turn = [Message(role=m["role"], content=m["content"]) for m in current_turn(messages)]
        try:
            with self._lock:
                checked = self.engine.check(turn, answer_prefix, self.actor)
        except ICError as exc:
            raise GateUnavailable(f"The gate refused the request: {exc}") from exc
        return Intention.from_json(intention(checked, self.engine.policy, "gate", "checked"))

    async def acheck(self, messages: Sequence[ChatMessage], answer_prefix: str | None = None) -> Intention:
        """:meth:`check` on a worker thread."""
        return await asyncio.to_thread(self.check, messages, answer_prefix)
