"""The adapters against a real uvicorn server on 127.0.0.1 serving the tiny model, and a load test.

- the OpenAI Agents SDK (``openai-agents``, tracing disabled): an agent whose model is our server
  (``OpenAIChatCompletionsModel`` over a local ``AsyncOpenAI``) and whose input guardrail is ours
  trips on the hard question, not on the easy one; ``needs_approval`` follows the gate;
- a LangChain v1 agent (``langchain`` + ``langchain-openai`` pointed at the server) with our
  middleware: answered, or interrupted to a human (and ended on rejection);
- load: 8 concurrent clients x 25 gate requests, each with exactly one audit record, seq contiguous,
  the log verified; the HTTP and in-process gates agree.

The threshold sits halfway between the two questions' H_int, read first with a permissive policy.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ic_core.governance.audit import read_audit
from ic_core.governance.audit_verify import verify_audit
from ic_core.governance.keys import operator_key
from ic_core.governance.policy import Policy
from ic_core.integrations.gate import GateUnavailable, HttpGate, LocalGate
from ic_core.serve.app import create_app
from ic_core.serve.settings import ServeSettings

KEY = "integration-api-key-0123456789"
SYSTEM = "answer in a few words"
EASY = "what is the capital of france?"
HARD = "what is the capital of italy or germany? think step by step"


def _policy(tiny, threshold, **kw):
    return Policy(signal="h_int", model=tiny.spec.to_dict(), t_entropy_bits=threshold, kind="short_answer",
                  model_n_layers=tiny.n_layers, model_d_model=tiny.d_model, **kw).sign()


def _turn(question):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def threshold(tiny, tmp_path_factory):
    """Halfway between the easy and the hard question's H_int (the hard one reads higher)."""
    log = str(tmp_path_factory.mktemp("probe-h") / "audit.jsonl")
    gate = LocalGate(tiny, _policy(tiny, 50.0), audit_log=log)
    easy, hard = (gate.check(_turn(q)).raw["signals"]["h_int_bits"] for q in (EASY, HARD))
    assert hard - easy > 0.05, (easy, hard)
    return (easy + hard) / 2


class Served:
    """create_app on uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(tiny, threshold, tmp_path_factory):
    """The tiny model in annotate mode (the adapters' gate decides; a human-approved turn is answered)."""
    log = tmp_path_factory.mktemp("served") / "audit.jsonl"
    app = create_app(tiny, _policy(tiny, threshold), None,
                     ServeSettings(mode="annotate", api_keys=(KEY,), audit_log=str(log)))
    with Served(app) as s:
        s.log = log
        yield s


class TestGates:
    def test_http_and_local_gates_agree(self, tiny, served, threshold, tmp_path):
        """Same decision and H_int from the served /v1/gate and the in-process engine."""
        local = LocalGate(tiny, _policy(tiny, threshold), audit_log=str(tmp_path / "a.jsonl"))
        remote = HttpGate(served.url, KEY)
        for q, want in ((EASY, "approve"), (HARD, "escalate")):
            a, b = remote.check(_turn(q)), local.check(_turn(q))
            assert a.decision == b.decision == want and a.policy_id == b.policy_id
            assert a.raw["signals"]["h_int_bits"] == pytest.approx(b.raw["signals"]["h_int_bits"], abs=1e-5)
            assert isinstance(a.audit_seq, int)

    def test_gates_fail_closed(self, served):
        """A wrong key or an unreachable server raises, never approves."""
        with pytest.raises(GateUnavailable, match="HTTP 401"):
            HttpGate(served.url, "wrong-key-0123456789abc").check(_turn(EASY))
        with pytest.raises(GateUnavailable, match="cannot be reached"):
            HttpGate("http://127.0.0.1:9/v1", KEY, timeout_s=2).check(_turn(EASY))
        with pytest.raises(GateUnavailable, match="No user message"):
            HttpGate(served.url, KEY).check([{"role": "system", "content": SYSTEM}])


@pytest.fixture(scope="module")
def agent_factory(served):
    """Agents SDK agents whose model is our server and whose input guardrail is ours."""
    import agents
    from openai import AsyncOpenAI

    from ic_core.integrations.openai_agents import intention_guardrail

    agents.set_tracing_disabled(True)

    def make():
        client = AsyncOpenAI(base_url=served.url, api_key=KEY, max_retries=0)
        model = agents.OpenAIChatCompletionsModel(model="tiny-llama", openai_client=client)
        return agents.Agent(name="ops", instructions=SYSTEM, model=model,
                            model_settings=agents.ModelSettings(max_tokens=4, temperature=0),
                            input_guardrails=[intention_guardrail(HttpGate(served.url, KEY))])
    return make


class TestOpenAIAgents:

    def test_easy_question_runs_and_hard_one_trips(self, agent_factory, served):
        """Easy: the agent answers through our server. Hard: the tripwire fires before any model call."""
        import agents

        before = len(read_audit(served.log)[0])
        result = asyncio.run(agents.Runner.run(agent_factory(), EASY))
        assert isinstance(result.final_output, str) and result.final_output.strip()
        assert len(read_audit(served.log)[0]) == before + 2  # the guardrail's check, then the server's
        with pytest.raises(agents.InputGuardrailTripwireTriggered) as info:
            asyncio.run(agents.Runner.run(agent_factory(), HARD))
        output = info.value.guardrail_result.output
        assert output.tripwire_triggered and output.output_info["decision"] == "escalate"
        assert output.output_info["reason"].startswith("H_int")
        recs = read_audit(served.log)[0]
        assert len(recs) == before + 3 and recs[-1]["decision"] == "escalate"  # no model call after the trip

    def test_needs_approval_follows_the_gate(self, served):
        """The tool-approval callable asks a human exactly when the gate escalates the described call."""
        from ic_core.integrations.openai_agents import needs_approval

        approve = needs_approval(HttpGate(served.url, KEY), describe=lambda p: p["question"], system=SYSTEM)
        assert asyncio.run(approve(None, {"question": HARD}, "call-1")) is True
        assert asyncio.run(approve(None, {"question": EASY}, "call-2")) is False


class TestLangChain:
    def _agent(self, served, interrupt_on_escalate=True):
        from langchain.agents import create_agent
        from langchain_openai import ChatOpenAI
        from langgraph.checkpoint.memory import InMemorySaver

        from ic_core.integrations.langchain import IntentionGateMiddleware

        model = ChatOpenAI(model="tiny-llama", base_url=served.url, api_key=KEY, max_tokens=4, temperature=0,
                           max_retries=0)
        gate = IntentionGateMiddleware(HttpGate(served.url, KEY), system_prompt=SYSTEM,
                                       interrupt_on_escalate=interrupt_on_escalate)
        return create_agent(model, tools=[], system_prompt=SYSTEM, middleware=[gate], checkpointer=InMemorySaver())

    def test_easy_question_is_answered_by_the_server(self, served):
        """Approve: the model (our server) answers; its intention says approve."""
        agent = self._agent(served)
        out = agent.invoke({"messages": [{"role": "user", "content": EASY}]}, {"configurable": {"thread_id": "e"}})
        assert "__interrupt__" not in out
        reply = out["messages"][-1]
        assert reply.type == "ai" and reply.content.strip()

    def test_hard_question_interrupts_then_ends_on_rejection(self, served):
        """Escalate: the run stops for a human with the intention; rejected, it ends without a model call."""
        from langgraph.types import Command

        agent = self._agent(served)
        config = {"configurable": {"thread_id": "h"}}
        out = agent.invoke({"messages": [{"role": "user", "content": HARD}]}, config)
        value = out["__interrupt__"][0].value
        assert value["type"] == "intention_escalation" and value["intention"]["decision"] == "escalate"
        n = len(read_audit(served.log)[0])
        done = agent.invoke(Command(resume={"approve": False}), config)
        last = done["messages"][-1]
        assert last.type == "ai" and last.content.startswith("Escalated to a human before answering: H_int")
        assert len(read_audit(served.log)[0]) == n + 1  # the re-run hook's check only; no model call

    def test_without_interrupt_the_run_ends(self, served):
        """``interrupt_on_escalate=False``: the hard question ends the run with the escalation message."""
        agent = self._agent(served, interrupt_on_escalate=False)
        out = agent.invoke({"messages": [{"role": "user", "content": HARD}]}, {"configurable": {"thread_id": "x"}})
        assert "__interrupt__" not in out and out["messages"][-1].content.startswith("Escalated to a human")


class TestLoad:
    def test_eight_clients_times_25_requests(self, tiny, threshold, tmp_path):
        """No request lost or duplicated: one audit record each (matched by prompt), seq contiguous, verified."""
        log = tmp_path / "audit.jsonl"
        app = create_app(tiny, _policy(tiny, threshold, store_prompt_text=True), None,
                         ServeSettings(api_keys=(KEY,), audit_log=str(log), queue_size=8))
        auth = {"Authorization": f"Bearer {KEY}"}
        with Served(app) as s:
            def client(c):
                with httpx.Client(base_url=s.url, headers=auth, timeout=60) as http:
                    out = []
                    for i in range(25):
                        q = f"what is the capital of france? {c * 25 + i}"
                        r = http.post("/gate", json={"messages": [{"role": "user", "content": q}]})
                        out.append((q, r.status_code, r.json()["intention"]["audit"]))
                    return out

            with ThreadPoolExecutor(8) as pool:
                results = [x for chunk in pool.map(client, range(8)) for x in chunk]
            assert httpx.get(f"{s.url}/models").status_code == 401
        assert [code for _, code, _ in results] == [200] * 200
        recs, skipped = read_audit(log)
        # 200 decisions; signed checkpoints follow seq 99 and seq 199 (taking seq 100 and 200)
        assert skipped == 0 and [r["seq"] for r in recs] == [*range(100), *range(101, 200), 201]
        by_seq = {r["seq"]: r for r in recs}
        assert sorted(a["seq"] for _, _, a in results) == sorted(by_seq)
        for q, _, audit in results:
            assert by_seq[audit["seq"]]["prompt"] == q and by_seq[audit["seq"]]["record_sha256"] == audit["record_sha256"]
        report = verify_audit(log, key=operator_key())
        assert report.status == "intact" and report.n_records == 202 and report.n_checkpoints == 2
