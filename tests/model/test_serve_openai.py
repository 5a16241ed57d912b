"""The gated endpoint as a real server (``python -m ic_core serve`` on 127.0.0.1) on the default model,
driven by the official ``openai`` client: three requests in all.

The policy reads H_slot after each question's own answer prefix ("The capital of X is", sent as
the ``answer_prefix`` extension through ``extra_body``). Measured on SmolLM2-135M-Instruct:
France 0.49 bits (" Paris" at 0.96), Kyrgyzstan 5.53 bits; the threshold 3.0 sits between them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from ic_core.governance.audit import read_audit
from ic_core.governance.audit_verify import verify_audit
from ic_core.governance.policy import Policy
from ic_core.models import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "model-tier-api-key-0123456789"
EASY = ("What is the capital of France?", "The capital of France is")
OBSCURE = ("What is the capital of Kyrgyzstan?", "The capital of Kyrgyzstan is")
STARTUP_S = 240


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _root_conftest(request):
    """The root ``tests/conftest.py`` module (every tier's conftest is named ``conftest``)."""
    root = ROOT / "tests" / "conftest.py"
    for plugin in request.config.pluginmanager.get_plugins():
        if Path(getattr(plugin, "__file__", "") or "") == root:
            return plugin
    raise LookupError("the root tests/conftest.py is not loaded")


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """The served default model under a signed per-item H_slot policy; stopped by its pid afterwards.

    Module-scoped, so the root conftest's per-test key fixture has not run yet: the same test key
    is set here (and the default key file pointed into tmp) while the policy is signed.
    """
    from ic_core.governance import keys

    TEST_OPERATOR_KEY = _root_conftest(request).TEST_OPERATOR_KEY  # noqa: N806 - the root conftest's constant

    tmp = tmp_path_factory.mktemp("serve")
    policy = Policy(signal="h_slot", model=ModelSpec().to_dict(), t_entropy_bits=3.0, kind="short_answer",
                    prefix_mode="per_item")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(keys.ENV_KEY, TEST_OPERATOR_KEY)
        mp.delenv(keys.ENV_KEY_FILE, raising=False)
        mp.setattr(keys, "DEFAULT_KEY_FILE", tmp / "operator-home" / "operator.key")
        path = policy.save(tmp / "policy.json")
    port, log = _free_port(), tmp / "audit.jsonl"
    env = {k: v for k, v in os.environ.items() if k != keys.ENV_KEY_FILE} | {
        keys.ENV_KEY: TEST_OPERATOR_KEY, "IC_API_KEYS": API_KEY, "IC_AUDIT_LOG": str(log),
        "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ic_core", "serve", "--policy", str(path), "--port", str(port)],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start within {STARTUP_S} s")
            time.sleep(0.5)
        yield {"base": base, "log": log, "policy": policy}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server['base']}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _ask(client, question, **kw):
    q, prefix = question
    return client.chat.completions.create(model="default", messages=[{"role": "user", "content": q}], max_tokens=8,
                                          extra_body={"answer_prefix": prefix}, **kw)


class TestOpenAIClient:
    def test_well_known_question_is_approved_and_answered(self, client, server):
        """France: approved, answered from the check's prefill with the forced prefix, intention attached."""
        resp = _ask(client, EASY)
        text = resp.choices[0].message.content
        assert text.startswith("The capital of France is") and "Paris" in text
        intent = resp.model_extra["intention"]
        assert intent["decision"] == "approve" and intent["action"] == "answered"
        assert intent["signals"]["h_slot_bits"] < 3.0 and intent["policy_signed"] is True
        assert intent["policy_id"] == server["policy"].policy_id
        assert resp.usage.completion_tokens >= 1 and resp.model == "SmolLM2-135M-Instruct"
        server["easy_text"] = text

    def test_streaming_returns_the_same_text(self, client, server):
        """The SSE stream's deltas join to the non-streamed answer (greedy decoding)."""
        chunks = list(_ask(client, EASY, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == server["easy_text"]
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    def test_obscure_question_is_escalated_with_409(self, client, server):
        """Kyrgyzstan: HTTP 409 ``escalated`` with the intention object; then the log holds three records."""
        with pytest.raises(openai.ConflictError) as info:
            _ask(client, OBSCURE)
        err = info.value
        assert err.status_code == 409
        body = err.body if isinstance(err.body, dict) else json.loads(err.response.text)["error"]
        assert body["type"] == "escalated"
        intent = body["intention"]
        assert intent["decision"] == "escalate" and intent["action"] == "blocked"
        assert intent["signals"]["h_slot_bits"] > 3.0 and intent["audit"]["seq"] == 2
        recs, skipped = read_audit(server["log"])
        assert skipped == 0 and [r["decision"] for r in recs] == ["approve", "approve", "escalate"]
        assert [r["seq"] for r in recs] == [0, 1, 2] and {r["source"] for r in recs} == {"api"}
        assert verify_audit(server["log"]).status == "intact"
