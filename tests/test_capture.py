"""Integration tier (tiny random Llama): capture, lens, batching, generation."""

import numpy as np
import pytest
import torch

from ic_core.analysis import analyze
from ic_core.capture import capture, capture_batch
from ic_core.generate import GenerationConfig, generate
from ic_core.prompts import render, template_for
from ic_core.stats.entropy import entropy_bits, entropy_top_k_bits, kl_bits

QUESTIONS = [
    "What is 1 plus 2?",
    "What is the capital of France? Think about it and answer with just the number or letter",
    "answer 4",
    "What is 12 times 7 minus 3 plus 40?",
]


def _rendered(tiny, q, **kw):
    return render(tiny.tokenizer, q, template_for("direct", "numeric", **kw))


def test_state_shapes_and_h_int_is_final_entropy(tiny):
    r = _rendered(tiny, QUESTIONS[0])
    state, _ = capture(tiny, r)
    L, d = tiny.n_layers, tiny.d_model
    assert state.hidden.shape == (L + 1, d) and state.hidden.dtype == np.float32
    assert state.final_logits.shape == (tiny.vocab_size,)
    assert state.h_int_bits == pytest.approx(entropy_bits(state.final_logits), abs=1e-4)
    assert state.h_int_top100_bits == pytest.approx(entropy_top_k_bits(state.final_logits, 100), abs=1e-6)
    assert 0 < state.h_int_bits < np.log2(tiny.vocab_size)
    assert np.all(np.diff(state.top_probs) <= 0)


def test_lens_matches_manual_norm_unembed_and_last_row_is_final(tiny):
    r = _rendered(tiny, QUESTIONS[1])
    state, _ = capture(tiny, r)
    lens = state.lens
    assert list(lens.layers) == list(range(1, tiny.n_layers + 1))
    # last row: the model's own distribution
    assert lens.entropy_bits[0, -1] == pytest.approx(state.h_int_bits, abs=1e-5)
    assert lens.kl_to_final_bits[0, -1] == pytest.approx(0.0, abs=1e-6)
    # middle row: recompute by hand from the model's full hidden states
    ids = torch.tensor([r.input_ids])
    with torch.inference_mode():
        out = tiny.model(input_ids=ids, output_hidden_states=True)
        layer = 2
        manual = tiny.model.lm_head(tiny.model.model.norm(out.hidden_states[layer][0, -1])).numpy()
        final = out.logits[0, -1].numpy()
    assert lens.entropy_bits[0, layer - 1] == pytest.approx(entropy_bits(manual), abs=1e-4)
    assert lens.kl_to_final_bits[0, layer - 1] == pytest.approx(kl_bits(final, manual), abs=1e-3)
    assert np.allclose(state.hidden[layer], out.hidden_states[layer][0, -1].numpy(), atol=1e-5)


def test_batched_capture_equals_one_by_one(tiny):
    rendered = [_rendered(tiny, q) for q in QUESTIONS] + [render(tiny.tokenizer, QUESTIONS[0], template_for("cot", "numeric"))]
    batch = capture_batch(tiny, rendered, batch_size=3)
    assert len(batch) == len(rendered)
    for r, b in zip(rendered, batch, strict=True):
        single, _ = capture(tiny, r)
        assert np.allclose(single.hidden, b.hidden, atol=1e-4)
        assert single.h_int_bits == pytest.approx(b.h_int_bits, abs=1e-4)
        assert np.allclose(single.lens.entropy_bits, b.lens.entropy_bits, atol=1e-3)
        assert b.readout_index == r.readout_index


def test_earlier_readout_reads_that_token(tiny):
    r = render(tiny.tokenizer, QUESTIONS[0], template_for("direct", "numeric"), readout="user_end")
    state, _ = capture(tiny, r)
    ids = torch.tensor([r.input_ids[: r.readout_index + 1]])
    with torch.inference_mode():
        out = tiny.model(input_ids=ids, output_hidden_states=True)
    assert np.allclose(state.hidden[-1], out.hidden_states[-1][0, -1].numpy(), atol=1e-5)


def test_generation_with_prefill_equals_without(tiny):
    r = _rendered(tiny, QUESTIONS[3])
    cfg = GenerationConfig(max_new_tokens=12, stop_at_answer_line=False)
    _, prefill = capture(tiny, r)
    with_check = generate(tiny, r, cfg, prefill)
    plain = generate(tiny, r, cfg)
    assert with_check.token_ids == plain.token_ids
    assert np.allclose(with_check.entropy_bits, plain.entropy_bits, atol=1e-4)
    assert len(plain.entropy_bits) == len(plain.token_ids) == len(plain.chosen_probs)
    assert all(0 < p <= 1 for p in plain.chosen_probs)
    # a prefill serves one generation; reusing it falls back to a fresh prefill
    again = generate(tiny, r, cfg, prefill)
    assert again.token_ids == plain.token_ids


def test_sampling_is_seeded(tiny):
    r = _rendered(tiny, QUESTIONS[0])
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, seed=7, stop_at_answer_line=False)
    a, b = generate(tiny, r, cfg), generate(tiny, r, cfg)
    assert a.token_ids == b.token_ids
    other = generate(tiny, r, GenerationConfig(max_new_tokens=10, do_sample=True, seed=8, stop_at_answer_line=False))
    assert len(other.token_ids) > 0


def test_max_new_tokens_bounds(tiny):
    g = generate(tiny, _rendered(tiny, QUESTIONS[0]), GenerationConfig(max_new_tokens=3, stop_at_answer_line=False))
    assert len(g.token_ids) <= 3 and g.stop_reason in ("eos", "max_new_tokens")
    with pytest.raises(Exception, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)


def test_analyze_json_has_cli_keys(tiny):
    a = analyze(tiny, "what is 1 plus 2?", kind="numeric", do_generate=True, expected="3",
                gen_config=GenerationConfig(max_new_tokens=5))
    j = a.to_json()
    for key in ("model", "n_layers", "regime", "rendered_prompt", "last_token", "h_int_bits", "h_int_top100_bits",
                "top_tokens", "lens", "output_text", "token_entropies_bits", "extracted_answer", "correct"):
        assert key in j
    assert len(j["lens"]) == tiny.n_layers
    assert set(j["lens"][0]) == {"layer", "entropy_bits", "top_token", "kl_to_final_bits"}
    assert j["correct"] in (True, False)


@pytest.mark.parametrize("hooks", [True, False], ids=["last-position hooks", "output_hidden_states fallback"])
def test_every_state_row_equals_output_hidden_states(tiny, monkeypatch, hooks):
    from ic_core import capture as capture_module

    if not hooks:
        monkeypatch.setattr(capture_module._LastPositionRecorder, "for_model", classmethod(lambda cls, loaded: None))
    r = _rendered(tiny, QUESTIONS[1])
    state, _ = capture(tiny, r)
    with torch.inference_mode():
        out = tiny.model(input_ids=torch.tensor([r.input_ids]), output_hidden_states=True)
    expected = np.stack([h[0, -1].numpy() for h in out.hidden_states])
    assert state.hidden.shape == expected.shape
    assert np.allclose(state.hidden, expected, atol=1e-5)
