"""Adapters that put the gate where agent frameworks already expect guardrails.

Each is a page of glue around one :class:`~ic_core.integrations.gate.Gate`: the served
``/v1/gate`` (:class:`~ic_core.integrations.gate.HttpGate`) or the in-process engine
(:class:`~ic_core.integrations.gate.LocalGate`). No gate logic is copied here.

- :mod:`ic_core.integrations.openai_agents`: an OpenAI Agents SDK input guardrail (tripwire on
  escalate, the decision in ``output_info``) and a ``needs_approval`` callable for tools;
- :mod:`ic_core.integrations.langchain`: a LangChain v1 middleware that gates before the model
  is called and interrupts to a human on escalate.

The framework packages are imported only by the module that adapts to them.
"""
