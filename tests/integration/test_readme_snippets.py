"""The README's "Put the gate in front of an agent" snippets run as written against a served tiny model.

The three Python blocks of that section (any OpenAI client, the OpenAI Agents SDK, LangChain v1) are
read from README.md and executed unchanged except for the port: the server listens on a free
port of 127.0.0.1 instead of 8000, with the README's API key. Once under a policy that approves
(the answer is printed) and once under one that escalates everything (each snippet prints
"ask a human: ..." and nothing is generated).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from test_integrations import Served
from test_serve import _policy

from ic_core.governance.audit import read_audit
from ic_core.serve.app import create_app
from ic_core.serve.settings import ServeSettings

README = Path(__file__).resolve().parents[2] / "README.md"
README_KEY = "my-agent-key-0123456789"
README_BASE = "http://127.0.0.1:8000"


def section_snippets(title: str = "Put the gate in front of an agent") -> list[str]:
    """The ```python blocks of one ``##`` section of the README, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start: end if end > 0 else None]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


def _run(snippet: str, base: str) -> str:
    """Execute a snippet with its base URL pointed at ``base``; what it printed."""
    assert snippet.count(README_BASE) >= 1
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet.replace(README_BASE, base), "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def snippets() -> dict[str, str]:
    blocks = section_snippets()
    assert len(blocks) == 3, "the section should hold the OpenAI, Agents SDK and LangChain snippets"
    names = ("openai", "agents", "langchain")
    for name, block in zip(names, blocks):
        assert name.replace("openai", "OpenAI(") in block or name in block, name
        assert README_KEY in block
    return dict(zip(names, blocks))


def _served(tiny, tmp_path, threshold: float) -> Served:
    log = tmp_path / "audit.jsonl"
    app = create_app(tiny, _policy(tiny, t_entropy_bits=threshold), None,
                     ServeSettings(api_keys=(README_KEY,), audit_log=str(log), default_max_tokens=8))
    served = Served(app)
    served.log = log
    return served


@pytest.mark.parametrize("name", ["openai", "agents", "langchain"])
def test_snippet_answers_when_the_gate_approves(snippets, name, tiny, tmp_path):
    with _served(tiny, tmp_path, threshold=50.0) as s:  # tiny H_int ≈ 7 bits: every question approved
        printed = _run(snippets[name], s.url.removesuffix("/v1"))
        records, _ = read_audit(s.log)
    assert printed and "ask a human" not in printed
    assert {r["decision"] for r in records} == {"approve"}
    if name == "openai":
        assert printed.endswith(" approve")
    # the guardrail / middleware checks, then the server checks again before it answers
    assert len(records) == (1 if name == "openai" else 2)


@pytest.mark.parametrize("name", ["openai", "agents", "langchain"])
def test_snippet_asks_a_human_when_the_gate_escalates(snippets, name, tiny, tmp_path):
    with _served(tiny, tmp_path, threshold=0.0) as s:  # every question escalates
        printed = _run(snippets[name], s.url.removesuffix("/v1"))
        records, _ = read_audit(s.log)
    lines = printed.splitlines()
    assert lines[0].startswith("ask a human: H_int ") and "> threshold 0.00 bits" in lines[0]
    assert [r["decision"] for r in records] == ["escalate"] * len(records) and records
    if name == "langchain":  # resumed with approve False: the run ends with the escalation, no model call
        assert lines[1].startswith("Escalated to a human before answering: H_int") and len(records) == 2
    else:
        assert len(lines) == 1 and len(records) == 1
