"""Models without a chat template: plain-text regime templates, the answer-cue read-out, and the stop rules."""

from __future__ import annotations

import dataclasses

import pytest

from ic_core import generate as gen_mod
from ic_core.analysis import analyze
from ic_core.generate import GenerationConfig, _base_cut, base_model_stops, generate
from ic_core.models import from_objects
from ic_core.prompts import base_prompt_text, custom_template, render, template_for
from tests.helpers import make_tiny_model, make_tiny_tokenizer

QUESTION = "what is the capital of france ?"


@pytest.fixture(scope="module")
def base():
    """The tiny random Llama with a tokenizer that has no chat template (a base model)."""
    tokenizer = make_tiny_tokenizer(chat_template=None)
    return from_objects(make_tiny_model(len(tokenizer)), tokenizer, name="tiny-base")


class TestPlainTextTemplates:
    """Built-in regimes render as plain text when the tokenizer has no chat template."""

    def test_direct_is_few_shot_q_a_read_on_the_answer_cue(self, base):
        r = render(base.tokenizer, QUESTION, template_for("direct", "short_answer"))
        assert r.text.startswith("Q: What is the largest planet in the Solar System?\nA: Jupiter\n\n")
        assert r.text.endswith(f"\n\nQ: {QUESTION}\nA:")
        assert r.plain_text_template and not r.chat_template_used
        assert r.readout_index == r.n_tokens - 1 and r.readout_token == ":"
        assert r.readout_is_formatting and r.readout_is_answer_cue and r.signal == "H_int"

    def test_an_answer_prefix_follows_the_cue_after_a_space_and_reads_h_slot(self, base):
        r = render(base.tokenizer, QUESTION, template_for("direct", "short_answer", "the capital of france is"))
        assert r.text.endswith(f"Q: {QUESTION}\nA: the capital of france is")
        assert r.signal == "H_slot" and r.readout_token == "is" and not r.readout_is_answer_cue

    def test_numeric_and_multiple_choice_shots_match_the_task_kind(self, base):
        numeric = render(base.tokenizer, "what is 2 plus 3 ?", template_for("direct", "numeric")).text
        assert "Q: How many days are in a week?\nA: 7\n\n" in numeric and numeric.endswith("\nA:")
        mc = render(base.tokenizer, QUESTION, template_for("direct", "multiple_choice"), ("paris", "rome")).text
        assert "D. octopus\nA: B\n\n" in mc and mc.endswith(f"Q: {QUESTION}\nA. paris\nB. rome\nA:")

    def test_cot_is_zero_shot_step_by_step_and_babble_talks_about_the_topic(self, base):
        cot = render(base.tokenizer, QUESTION, template_for("cot", "short_answer"))
        assert cot.text == f"Q: {QUESTION}\nA: Let's think step by step." and cot.readout_is_answer_cue
        babble = render(base.tokenizer, QUESTION, template_for("babble", "short_answer")).text
        assert babble.endswith(f"Question: {QUESTION}\nText about the topic:") and "does not answer" in babble

    def test_user_end_reads_the_question_line_s_last_token(self, base):
        r = render(base.tokenizer, QUESTION, template_for("direct", "short_answer"), readout="user_end")
        assert r.readout_token == "?" and r.readout_index == r.n_tokens - 3  # before "\nA" and ":"

    def test_chat_models_and_custom_templates_keep_their_rendering(self, base, tiny):
        chat = render(tiny.tokenizer, QUESTION, template_for("direct", "short_answer"))
        assert chat.chat_template_used and not chat.plain_text_template and "Q:" not in chat.text
        custom = render(base.tokenizer, QUESTION, custom_template("Q: {question}", answer_prefix="A: the"))
        assert custom.text == f"Q: {QUESTION}\n\nA: the" and not custom.plain_text_template

    def test_a_custom_template_has_no_plain_text_form(self):
        with pytest.raises(Exception, match="built-in regime"):
            base_prompt_text(custom_template("{question}"), QUESTION)


class TestBaseStopRules:
    """A base model's answer ends at a blank line or a new Q: line (trimmed); chat prompts get no such rule."""

    def test_which_prompts_get_which_stops(self, base, tiny):
        assert base_model_stops(render(tiny.tokenizer, QUESTION, template_for("direct"))) == ()
        assert base_model_stops(render(base.tokenizer, QUESTION, template_for("direct"))) == ("\n\n", "\nQ:")
        assert base_model_stops(render(base.tokenizer, QUESTION, template_for("cot"))) == ("\nQ:",)

    @pytest.mark.parametrize(("text", "cut"), [
        (" Paris.\n\nQ: What is", 7), (" Paris\nQ: next", 6), ("\n\nParis", None), ("  \n\n Paris.\n\n", 11),
        (" Paris, France.", None), ("", None),
    ])
    def test_the_cut_skips_leading_blank_text(self, text, cut):
        assert _base_cut(text, ("\n\n", "\nQ:")) == cut

    def _scripted(self, base, monkeypatch, script: list[str]):
        """``base`` whose greedy choices follow ``script`` and whose decoder spells "then" as a newline, "q" as "Q"."""
        vocab = base.tokenizer.get_vocab()
        ids = [vocab[w] for w in script]
        steps = iter(ids)
        monkeypatch.setattr(gen_mod, "_choose", lambda logits, config, g: next(steps))
        real = base.tokenizer
        spelled = {vocab["then"]: "\n", vocab["q"] if "q" in vocab else vocab["question"]: "Q", vocab[":"]: ":"}

        class Spelling:
            def __getattr__(self, name):
                return getattr(real, name)

            def decode(self, token_ids, skip_special_tokens=False):
                return "".join(spelled.get(int(i), " " + real.decode([int(i)])) for i in token_ids)

        return dataclasses.replace(base, tokenizer=Spelling()), [vocab[w] for w in script]

    def test_generation_stops_at_a_new_question_and_trims_it(self, base, monkeypatch):
        rendered = render(base.tokenizer, QUESTION, template_for("direct", "short_answer"))
        script = ["paris", ".", "then", "question", ":", "what", "is", "the", "capital", "of", "italy"]
        loaded, ids = self._scripted(base, monkeypatch, script)
        g = generate(loaded, rendered, GenerationConfig(max_new_tokens=10))
        assert g.text == " paris ." and g.stop_reason == "stop" and g.token_ids == tuple(ids[:5])  # through the ":" that completes "\nQ:"
        assert "Q:" not in g.answer_text
        assert g.n_trimmed_tokens == 3  # "\n", "Q", ":" hold the stop string; " paris", " ." are the answer

    def test_generation_stops_at_a_blank_line(self, base, monkeypatch):
        rendered = render(base.tokenizer, QUESTION, template_for("direct", "short_answer"))
        loaded, _ = self._scripted(base, monkeypatch, ["then", "rome", "then", "then", "berlin", "berlin"])
        g = generate(loaded, rendered, GenerationConfig(max_new_tokens=6))
        assert g.text == "\n rome" and g.stop_reason == "stop" and len(g.token_ids) == 4

    def test_turned_off_a_base_model_runs_to_max_new_tokens(self, base, monkeypatch):
        rendered = render(base.tokenizer, QUESTION, template_for("direct", "short_answer"))
        loaded, _ = self._scripted(base, monkeypatch, ["paris", "then", "then", "rome", "rome"])
        g = generate(loaded, rendered, GenerationConfig(max_new_tokens=5, base_model_stops=False))
        assert g.stop_reason == "max_new_tokens" and g.text == " paris\n\n rome rome"

    def test_cot_keeps_its_paragraphs_and_stops_at_the_next_question(self, base, monkeypatch):
        rendered = render(base.tokenizer, QUESTION, template_for("cot", "short_answer"))
        loaded, _ = self._scripted(base, monkeypatch, ["paris", "then", "then", "rome", "then", "question", ":", "a"])
        g = generate(loaded, rendered, GenerationConfig(max_new_tokens=8))
        assert g.text == " paris\n\n rome" and g.stop_reason == "stop"

    def test_analyze_on_a_base_model_reads_the_plain_prompt_and_grades(self, base):
        a = analyze(base, QUESTION, kind="short_answer", expected="paris", do_generate=True,
                    gen_config=GenerationConfig(max_new_tokens=3))
        j = a.to_json()
        assert j["rendered_prompt"].endswith("\nA:") and j["last_token"] == ":" and j["signal"] == "H_int"
        assert a.generation is not None and a.grade is not None and "\nQ:" not in a.generation.answer_text
