"""A LangChain v1 agent middleware: gate each new user turn before the model is called.

::

    from langchain.agents import create_agent
    from langgraph.checkpoint.memory import InMemorySaver
    from ic_core.integrations.gate import HttpGate
    from ic_core.integrations.langchain import IntentionGateMiddleware

    agent = create_agent(model, tools, middleware=[IntentionGateMiddleware(HttpGate(url, KEY))],
                         checkpointer=InMemorySaver())

On escalate the run is interrupted (``langgraph.types.interrupt``) with ``{"type":
"intention_escalation", "intention": {...}}``; resuming with ``Command(resume={"approve": True})``
lets the model answer, anything else ends the run with an AI message naming the reason. With
``interrupt_on_escalate=False`` the run ends at once (no checkpointer needed). Model calls after a
tool result are not re-gated: the gate read the user turn that started them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from ic_core.integrations.gate import ChatMessage, Gate

_ROLES = {"human": "user", "system": "system", "ai": "assistant", "tool": "tool"}


def chat_messages(messages: list[BaseMessage]) -> list[ChatMessage]:
    """LangChain messages as OpenAI-style role/content dicts (text content only)."""
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else m.text
        out.append({"role": _ROLES.get(m.type, m.type), "content": content})
    return out


class IntentionGateMiddleware(AgentMiddleware):
    """Checks the current user turn with the gate; interrupts to a human (or ends the run) on escalate."""

    def __init__(self, gate: Gate, system_prompt: str | None = None, interrupt_on_escalate: bool = True) -> None:
        """Args: the gate; the agent's system prompt (state messages do not carry it); interrupt or end."""
        super().__init__()
        self.gate, self.system_prompt, self.interrupt_on_escalate = gate, system_prompt, interrupt_on_escalate

    def _turn(self, state: AgentState) -> list[ChatMessage] | None:
        messages = chat_messages(list(state["messages"]))
        if not messages or messages[-1]["role"] != "user":
            return None  # after a tool result: the user turn was gated already
        return ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + messages

    def _after(self, intent: Any) -> dict[str, Any] | None:
        if not intent.escalate:
            return None
        if self.interrupt_on_escalate:
            answer = interrupt({"type": "intention_escalation", "intention": intent.raw})
            if isinstance(answer, Mapping) and answer.get("approve") is True:
                return None
        note = AIMessage(content=f"Escalated to a human before answering: {intent.reason}",
                         response_metadata={"intention": intent.raw})
        return {"messages": [note], "jump_to": "end"}

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: AgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Gate the new user turn (blocking)."""
        turn = self._turn(state)
        return None if turn is None else self._after(self.gate.check(turn))

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: AgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Gate the new user turn (async)."""
        turn = self._turn(state)
        return None if turn is None else self._after(await self.gate.acheck(turn))
