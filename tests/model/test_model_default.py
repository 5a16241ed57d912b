"""Model tier: the bundled SmolLM2-135M-Instruct, offline."""

import math

import numpy as np
import pytest

from ic_core.analysis import analyze
from ic_core.capture import capture, capture_batch
from ic_core.generate import GenerationConfig
from ic_core.models import ModelSpec, converted_cache_path, find_default_gguf
from ic_core.prompts import render, template_for

pytestmark = pytest.mark.model


def test_default_model_shape(default_model):
    assert default_model.n_layers == 30 and default_model.d_model == 576 and default_model.vocab_size == 49152
    assert default_model.spec == ModelSpec() and default_model.has_chat_template
    assert (converted_cache_path(find_default_gguf()) / "model.safetensors").is_file()


def test_capital_of_france_is_answered_and_graded(default_model):
    a = analyze(default_model, "What is the capital of France?", kind="short_answer", expected="Paris",
                do_generate=True, gen_config=GenerationConfig(max_new_tokens=24))
    assert "Paris" in a.generation.answer_text
    assert a.grade.correct is True
    assert 0 < a.state.readout_entropy_bits < math.log2(default_model.vocab_size)
    assert len(a.state.lens.layers) == 30
    # the read-out is the '\n' after the assistant header, a formatting token (DESIGN §7)
    assert a.rendered.readout_token == "\n" and a.rendered.readout_is_formatting


def test_answer_prefix_reads_past_the_space_before_digits(default_model):
    a = analyze(default_model, "What is 47 + 38?", kind="numeric", answer_prefix="The answer is")
    assert a.signal_name == "H_slot" and a.skipped_tokens == (" ",)
    assert a.top_tokens[0][0].strip().isdigit()  # the slot now predicts a digit, not a space


def test_batched_equals_single_on_real_model(default_model):
    tpl = template_for("direct", "short_answer")
    rendered = [render(default_model.tokenizer, q, tpl) for q in
                ("What is the capital of Peru?", "What is the capital of the United Kingdom of Great Britain?")]
    for r, b in zip(rendered, capture_batch(default_model, rendered), strict=True):
        s, _ = capture(default_model, r)
        assert abs(s.readout_entropy_bits - b.readout_entropy_bits) < 1e-3
        assert np.allclose(s.hidden[1:], b.hidden[1:], atol=2e-3, rtol=1e-3)


def test_layer_zero_is_constant_under_chat_template(default_model):
    tpl = template_for("direct", "short_answer")
    states = capture_batch(default_model, [render(default_model.tokenizer, q, tpl) for q in ("Hi?", "What is 2+2?")])
    assert np.array_equal(states[0].hidden[0], states[1].hidden[0])
    assert not np.allclose(states[0].hidden[15], states[1].hidden[15])
