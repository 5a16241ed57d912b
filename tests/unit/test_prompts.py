"""Unit tier: templates, rendering, read-out positions, prompt validation."""

import pytest
from helpers import make_tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from ic_core.errors import PromptError
from ic_core.prompts import (
    MAX_CHOICES,
    MAX_PROMPT_CHARS,
    check_text,
    clean_prompt,
    custom_template,
    format_choices,
    is_formatting_token,
    render,
    template_for,
)

TOK = make_tiny_tokenizer()


class TestTemplates:
    def test_every_regime_and_kind_has_a_template_with_question(self):
        for regime in ("direct", "cot", "babble"):
            for kind in ("numeric", "multiple_choice", "short_answer", "free_text"):
                assert "{question}" in template_for(regime, kind).user

    def test_cot_asks_for_answer_marker(self):
        assert "####" in template_for("cot", "numeric").user

    def test_unknown_regime_and_kind(self):
        with pytest.raises(PromptError, match="Unknown regime"):
            template_for("shout")
        with pytest.raises(PromptError, match="Unknown task kind"):
            template_for("direct", "poem")

    def test_custom_template_must_hold_question(self):
        with pytest.raises(PromptError, match="question"):
            custom_template("Say hi")
        with pytest.raises(PromptError, match="field"):
            custom_template("{question} {other}")
        assert custom_template("Q: {question}", "The answer is").answer_prefix == "The answer is"

    def test_choices_are_lettered(self):
        assert format_choices(["x", "y"]) == "A. x\nB. y"


class TestRender:
    def test_chat_template_and_last_token(self):
        r = render(TOK, "What is the capital of France?", template_for("direct", "free_text"))
        assert r.chat_template_used
        assert r.text.startswith("<|im_start|> user what".replace("what", "What"))
        assert r.readout_index == r.n_tokens - 1 and r.readout_token == "assistant"
        assert len(r.tokens) == len(r.input_ids)

    def test_answer_prefix_is_the_end_of_the_text(self):
        r = render(TOK, "What is 1 plus 2?", template_for("direct", "numeric", answer_prefix="The answer is"))
        assert r.text.endswith("The answer is") and r.readout_token == "is"
        assert r.answer_prefix == "The answer is"

    def test_user_end_readout_points_at_end_of_user_text(self):
        r = render(TOK, "What is the capital of France?", template_for("direct", "free_text"), readout="user_end")
        assert r.readout_token == "?" and r.readout_is_formatting
        assert r.readout_index < r.n_tokens - 1

    def test_integer_readout(self):
        r = render(TOK, "What is 5?", template_for("direct", "free_text"), readout=-2)
        assert r.readout_index == r.n_tokens - 2
        with pytest.raises(PromptError, match="outside"):
            render(TOK, "What is 5?", template_for("direct", "free_text"), readout=999)

    def test_choices_rendered_into_message(self):
        r = render(TOK, "Pick one?", template_for("direct", "multiple_choice"), choices=["paris", "rome"])
        assert "A. paris\nB. rome" in r.user_text

    def test_model_without_chat_template_uses_plain_text(self):
        plain = make_tiny_tokenizer(chat_template=None)
        r = render(plain, "What is 5?", template_for("direct", "free_text"))
        assert not r.chat_template_used and r.text.endswith("\n\nQ: What is 5?\nA:")  # few-shot Q:/A:
        custom = render(plain, "What is 5?", custom_template("{question}"))
        assert not custom.plain_text_template and custom.text == "What is 5?\n\n"

    def test_too_long_for_context_is_refused(self):
        with pytest.raises(PromptError, match="at most 5"):
            render(TOK, "what is the capital of france", template_for("direct", "free_text"), max_tokens=5)


class TestCleanPrompt:
    @pytest.mark.parametrize("bad", ["", "   \n\t ", "a\x00b", "x" * (MAX_PROMPT_CHARS + 1)])
    def test_bad_prompts_raise_clear_errors(self, bad):
        with pytest.raises(PromptError):
            clean_prompt(bad)

    def test_strips_and_normalises_newlines(self):
        assert clean_prompt("  hi\r\nthere ") == "hi\nthere"

    def test_formatting_tokens(self):
        assert is_formatting_token("\n") and is_formatting_token(" ") and is_formatting_token("<|im_start|>")
        assert is_formatting_token("?") and not is_formatting_token(" Paris") and not is_formatting_token("7")


class TestInvalidText:
    """Lone surrogates, NUL and letters past Z are refused in the engine, not only on the CLI (issue 11 case 8)."""

    @pytest.mark.parametrize("bad, reason", [("a\ud800b", "unpaired UTF-16 surrogates"), ("a\x00b", "NUL character")])
    @pytest.mark.parametrize("where", ["prefix", "system", "custom", "choice"])
    def test_render_refuses_bad_text_in_every_user_field(self, where, bad, reason):
        question, choices, template = "what is the capital of france?", (), template_for("direct", "free_text")
        if where == "prefix":
            template, label = template_for("direct", "free_text", answer_prefix=f"the answer is {bad}"), "The answer prefix"
        elif where == "system":
            template, label = custom_template("{question}", system=f"sure {bad}"), "The system message"
        elif where == "custom":
            template, label = custom_template(f"{bad} {{question}}"), "The template"
        else:
            choices, template, label = ("paris", f"rome {bad}"), template_for("direct", "multiple_choice"), "Option B"
        with pytest.raises(PromptError, match=f"^{label} contains .*{reason}.*not valid text\\.$") as info:
            render(TOK, question, template, choices)
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize("bad", ["a\ud800b", "a\udfffb", "\x00"])
    def test_question_with_surrogate_or_nul_is_refused(self, bad):
        with pytest.raises(PromptError, match="surrogates|control character"):
            render(TOK, f"what is {bad}", template_for("direct", "free_text"))

    def test_at_most_26_choices(self):
        tpl = template_for("direct", "multiple_choice")
        options = [str(i) for i in range(MAX_CHOICES)]
        r = render(TOK, "what is the number?", tpl, options)
        assert "Z. 25" in r.user_text and "[." not in r.user_text
        with pytest.raises(PromptError, match="^27 options given; .* at most 26\\.$"):
            render(TOK, "what is the number?", tpl, [*options, "26"])
        with pytest.raises(PromptError, match="27 options"):
            format_choices([*options, "26"])

    def test_check_text_passes_valid_text_through(self):
        assert check_text("paris \U0001F600 \t\n", "x") == "paris \U0001F600 \t\n"  # a paired astral char is fine
        with pytest.raises(PromptError, match="^The answer must be text, got int\\.$"):
            check_text(7, "The answer")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_render_never_crashes_on_arbitrary_text(text):
    """Any string either renders or raises PromptError: nothing else escapes."""
    try:
        r = render(TOK, text, template_for("cot", "numeric"))
    except PromptError:
        return
    assert 0 <= r.readout_index < r.n_tokens
