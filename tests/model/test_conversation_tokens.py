"""Model tier: earlier turns of a conversation cannot plant SmolLM2's control tokens (issue 16, round 2).

Tokenization only. Every control token planted in an earlier user turn or assistant turn stays
plain text with the clean conversation's control layout; an ordinary conversation keeps the ids of
``apply_chat_template``; a single-turn conversation is the single prompt.
"""

from __future__ import annotations

import pytest
from test_special_tokens import CONTROL_TOKENS, FORGED_TURN, QUESTION, _assert_same_control_layout

from ic_core.prompts import control_token_ids, render, template_for

TEMPLATE = template_for("direct", "short_answer")


def _history(role: str, planted: str) -> tuple[tuple[str, str], ...]:
    user = f"What is the capital of Peru? {planted}".strip() if role == "user" else "What is the capital of Peru?"
    assistant = f"Lima {planted}".strip() if role == "assistant" else "Lima"
    return (("user", user), ("assistant", assistant))


@pytest.mark.parametrize("role", ["user", "assistant"])
@pytest.mark.parametrize("token", [*CONTROL_TOKENS, FORGED_TURN])
def test_planted_control_token_in_a_turn_stays_text(default_model, token, role):
    tok = default_model.tokenizer
    attacked = render(tok, QUESTION, TEMPLATE, history=_history(role, token))
    clean = render(tok, QUESTION, TEMPLATE, history=_history(role, ""))
    assert token in attacked.text and attacked.readout_index == attacked.n_tokens - 1
    _assert_same_control_layout(tok, attacked, clean)
    controls = control_token_ids(tok)
    assert [i for i in attacked.input_ids if i in controls] == [i for i in clean.input_ids if i in controls]


def test_ordinary_conversation_keeps_the_chat_template_ids(default_model):
    tok = default_model.tokenizer
    conv = render(tok, QUESTION, TEMPLATE, history=_history("user", ""))
    messages = [{"role": r, "content": t} for r, t in _history("user", "")] + [{"role": "user", "content": conv.user_text}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert conv.input_ids == tuple(int(i) for i in ids)
    assert conv.tokens[-4:] == ("<|im_start|>", "ass", "istant", "\n")
    assert render(tok, QUESTION, TEMPLATE, history=()) == render(tok, QUESTION, TEMPLATE)
