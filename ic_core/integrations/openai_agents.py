"""OpenAI Agents SDK adapters: an input guardrail that trips on escalate, and ``needs_approval`` for tools.

::

    from agents import Agent
    from ic_core.integrations.gate import HttpGate
    from ic_core.integrations.openai_agents import intention_guardrail

    gate = HttpGate("http://127.0.0.1:8000/v1", api_key=KEY)
    agent = Agent(name="ops", instructions="...", input_guardrails=[intention_guardrail(gate)])

The guardrail runs before the model (``run_in_parallel=False``), so an escalated request never
reaches it; ``Runner.run`` then raises ``InputGuardrailTripwireTriggered`` whose
``guardrail_result.output.output_info`` is the gate's ``intention`` object.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from agents import Agent, GuardrailFunctionOutput, InputGuardrail, RunContextWrapper

from ic_core.integrations.gate import ChatMessage, Gate


def _text(content: Any) -> str:
    """A message's text: a string, or its ``input_text``/``text`` parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p)
    return ""


def input_messages(agent_input: str | list[Any]) -> list[ChatMessage]:
    """The run's input as chat messages (input items without a role, e.g. tool outputs, are left out)."""
    if isinstance(agent_input, str):
        return [{"role": "user", "content": agent_input}]
    items = [item if isinstance(item, Mapping) else getattr(item, "model_dump", dict)() for item in agent_input]
    return [{"role": i["role"], "content": _text(i.get("content"))} for i in items if i.get("role")]


def intention_guardrail(gate: Gate, name: str = "intention_gate") -> InputGuardrail[Any]:
    """An input guardrail that checks the agent's instructions and the current user turn.

    Args:
        gate: :class:`~ic_core.integrations.gate.HttpGate` or :class:`~ic_core.integrations.gate.LocalGate`.
        name: The guardrail's name in traces.

    """
    async def check(ctx: RunContextWrapper[Any], agent: Agent[Any], agent_input: str | list[Any]) -> GuardrailFunctionOutput:
        system = await agent.get_system_prompt(ctx)
        messages = ([{"role": "system", "content": system}] if system else []) + input_messages(agent_input)
        intent = await gate.acheck(messages)
        return GuardrailFunctionOutput(output_info=intent.raw, tripwire_triggered=intent.escalate)

    return InputGuardrail(guardrail_function=check, name=name, run_in_parallel=False)


def needs_approval(gate: Gate, describe: Callable[[dict[str, Any]], str] | None = None, system: str | None = None
                   ) -> Callable[[RunContextWrapper[Any], dict[str, Any], str], Any]:
    """A ``needs_approval`` callable for ``function_tool``: ask a human when the gate escalates the call.

    The gate reads ``describe(arguments)`` as the user turn (default: the arguments as JSON), after
    ``system`` when given, so a policy fitted on such requests decides whether the tool may run unattended.
    """
    to_text = describe or (lambda params: json.dumps(params, ensure_ascii=False, sort_keys=True))
    head: list[ChatMessage] = [{"role": "system", "content": system}] if system else []

    async def approve(_ctx: RunContextWrapper[Any], params: dict[str, Any], _call_id: str) -> bool:
        intent = await gate.acheck([*head, {"role": "user", "content": to_text(params)}])
        return intent.escalate

    return approve
