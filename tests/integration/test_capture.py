"""Integration tier (tiny random Llama, GPT-2 and Gemma 3): capture, lens, batching, generation, answer."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import GEMMA_SOFTCAP

from ic_core.analysis import analyze, answer, check_choices
from ic_core.capture import capture, capture_batch
from ic_core.errors import PromptError
from ic_core.generate import GenerationConfig, generate
from ic_core.prompts import render, template_for
from ic_core.stats.entropy import entropy_bits, entropy_top_k_bits, kl_bits

QUESTIONS = [
    "What is 1 plus 2?",
    "What is the capital of France? Think about it and answer with just the number or letter",
    "answer 4",
    "What is 12 times 7 minus 3 plus 40?",
]


def _rendered(tiny_family, q, **kw):
    return render(tiny_family.tokenizer, q, template_for("direct", "numeric", **kw))


def manual_lens_logits(loaded, residual):
    """Norm → unembed (→ soft-cap) spelled out per family, independently of ic_core.arch."""
    m = loaded.model
    if loaded.spec.name == "tiny-gpt2":
        return m.lm_head(m.transformer.ln_f(residual))
    logits = m.lm_head(m.model.norm(residual))
    if loaded.spec.name == "tiny-gemma3":
        logits = torch.tanh(logits / GEMMA_SOFTCAP) * GEMMA_SOFTCAP
    return logits


def test_state_shapes_and_h_int_is_final_entropy(tiny_family):
    r = _rendered(tiny_family, QUESTIONS[0])
    state, _ = capture(tiny_family, r)
    L, d = tiny_family.n_layers, tiny_family.d_model
    assert state.hidden.shape == (L + 1, d) and state.hidden.dtype == np.float32
    assert state.final_logits.shape == (tiny_family.vocab_size,)
    assert state.readout_entropy_bits == pytest.approx(entropy_bits(state.final_logits), abs=1e-4)
    assert state.readout_entropy_top100_bits == pytest.approx(entropy_top_k_bits(state.final_logits, 100), abs=1e-6)
    assert 0 < state.readout_entropy_bits < np.log2(tiny_family.vocab_size)
    assert np.all(np.diff(state.top_probs) <= 0)


def test_lens_matches_manual_norm_unembed_and_last_row_is_final(tiny_family):
    r = _rendered(tiny_family, QUESTIONS[1])
    state, _ = capture(tiny_family, r)
    lens = state.lens
    assert list(lens.layers) == list(range(1, tiny_family.n_layers + 1))
    # last row: the model's own distribution
    assert lens.entropy_bits[0, -1] == pytest.approx(state.readout_entropy_bits, abs=1e-5)
    assert lens.kl_to_final_bits[0, -1] == pytest.approx(0.0, abs=1e-6)
    # middle row: recompute by hand from the model's full hidden states
    ids = torch.tensor([r.input_ids])
    with torch.inference_mode():
        out = tiny_family.model(input_ids=ids, output_hidden_states=True)
        layer = 2
        manual = manual_lens_logits(tiny_family, out.hidden_states[layer][0, -1]).numpy()
        final = out.logits[0, -1].numpy()
    # last row: the entropy of the model's own logits, from a plain forward pass
    assert lens.entropy_bits[0, -1] == pytest.approx(entropy_bits(final), abs=1e-4)
    assert lens.entropy_bits[0, layer - 1] == pytest.approx(entropy_bits(manual), abs=1e-4)
    assert lens.kl_to_final_bits[0, layer - 1] == pytest.approx(kl_bits(final, manual), abs=1e-3)
    assert np.allclose(state.hidden[layer], out.hidden_states[layer][0, -1].numpy(), atol=1e-5)


def test_batched_capture_equals_one_by_one(tiny_family):
    rendered = [_rendered(tiny_family, q) for q in QUESTIONS] + [render(tiny_family.tokenizer, QUESTIONS[0], template_for("cot", "numeric"))]
    batch = capture_batch(tiny_family, rendered, batch_size=3)
    assert len(batch) == len(rendered)
    for r, b in zip(rendered, batch, strict=True):
        single, _ = capture(tiny_family, r)
        assert np.allclose(single.hidden, b.hidden, atol=1e-4)
        assert single.readout_entropy_bits == pytest.approx(b.readout_entropy_bits, abs=1e-4)
        assert np.allclose(single.lens.entropy_bits, b.lens.entropy_bits, atol=1e-3)
        assert b.readout_index == r.readout_index


def test_earlier_readout_reads_that_token(tiny_family):
    r = render(tiny_family.tokenizer, QUESTIONS[0], template_for("direct", "numeric"), readout="user_end")
    state, _ = capture(tiny_family, r)
    ids = torch.tensor([r.input_ids[: r.readout_index + 1]])
    with torch.inference_mode():
        out = tiny_family.model(input_ids=ids, output_hidden_states=True)
    assert np.allclose(state.hidden[-1], out.hidden_states[-1][0, -1].numpy(), atol=1e-5)


def test_generation_with_prefill_equals_without(tiny_family):
    r = _rendered(tiny_family, QUESTIONS[3])
    cfg = GenerationConfig(max_new_tokens=12, stop_at_answer_line=False)
    _, prefill = capture(tiny_family, r)
    with_check = generate(tiny_family, r, cfg, prefill)
    plain = generate(tiny_family, r, cfg)
    assert with_check.token_ids == plain.token_ids
    assert np.allclose(with_check.entropy_bits, plain.entropy_bits, atol=1e-4)
    assert len(plain.entropy_bits) == len(plain.token_ids) == len(plain.chosen_probs)
    assert all(0 < p <= 1 for p in plain.chosen_probs)
    # a prefill serves one generation; reusing it falls back to a fresh prefill
    again = generate(tiny_family, r, cfg, prefill)
    assert again.token_ids == plain.token_ids


def test_sampling_is_seeded(tiny_family):
    r = _rendered(tiny_family, QUESTIONS[0])
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, seed=7, stop_at_answer_line=False)
    a, b = generate(tiny_family, r, cfg), generate(tiny_family, r, cfg)
    assert a.token_ids == b.token_ids
    other = generate(tiny_family, r, GenerationConfig(max_new_tokens=10, do_sample=True, seed=8, stop_at_answer_line=False))
    assert len(other.token_ids) > 0


def test_max_new_tokens_bounds(tiny_family):
    g = generate(tiny_family, _rendered(tiny_family, QUESTIONS[0]), GenerationConfig(max_new_tokens=3, stop_at_answer_line=False))
    assert len(g.token_ids) <= 3 and g.stop_reason in ("eos", "max_new_tokens")
    with pytest.raises(Exception, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)


def test_analyze_json_has_cli_keys(tiny_family):
    a = analyze(tiny_family, "what is 1 plus 2?", kind="numeric", do_generate=True, expected="3",
                gen_config=GenerationConfig(max_new_tokens=5))
    j = a.to_json()
    for key in ("model", "n_layers", "regime", "rendered_prompt", "last_token", "h_int_bits", "h_int_top100_bits",
                "top_tokens", "lens", "output_text", "token_entropies_bits", "extracted_answer", "correct"):
        assert key in j
    assert len(j["lens"]) == tiny_family.n_layers
    assert set(j["lens"][0]) == {"layer", "entropy_bits", "top_token", "kl_to_final_bits"}
    assert j["correct"] in (True, False)
    assert j["signal"] == "H_int" == a.state.signal
    assert j["readout_entropy_bits"] == j["h_int_bits"] == a.state.readout_entropy_bits  # h_int_bits: documented alias


def test_state_after_a_prefix_is_named_h_slot(tiny):
    a = analyze(tiny, "what is the capital of france?", kind="short_answer", answer_prefix="the capital of france is")
    assert a.state.signal == "H_slot" == a.signal_name == a.to_json()["signal"]
    assert a.to_json()["readout_entropy_bits"] == a.state.readout_entropy_bits


@pytest.mark.parametrize("hooks", [True, False], ids=["last-position hooks", "output_hidden_states fallback"])
def test_every_state_row_equals_output_hidden_states(tiny_family, monkeypatch, hooks):
    from ic_core import capture as capture_module

    if not hooks:
        monkeypatch.setattr(capture_module._LastPositionRecorder, "for_model", classmethod(lambda cls, loaded: None))
    r = _rendered(tiny_family, QUESTIONS[1])
    state, _ = capture(tiny_family, r)
    with torch.inference_mode():
        out = tiny_family.model(input_ids=torch.tensor([r.input_ids]), output_hidden_states=True)
    expected = np.stack([h[0, -1].numpy() for h in out.hidden_states])
    assert state.hidden.shape == expected.shape
    assert np.allclose(state.hidden, expected, atol=1e-5)


def test_recorder_keeps_the_last_block_when_the_family_does_not_norm_last(tiny_family):
    from ic_core import capture as capture_module

    arch = dataclasses.replace(tiny_family.arch, last_hidden_is_normed=False)
    seen = {}
    handle = arch.blocks[-1].register_forward_hook(lambda _m, _i, out: seen.setdefault("h", out[0] if isinstance(out, tuple) else out))
    ids = torch.tensor([_rendered(tiny_family, QUESTIONS[0]).input_ids])
    try:
        with torch.inference_mode(), capture_module._LastPositionRecorder(arch) as recorder:
            out = tiny_family.model(input_ids=ids, output_hidden_states=True)
    finally:
        handle.remove()
    states = recorder.stacked()[0]
    assert torch.allclose(states[-1], seen["h"][0, -1], atol=1e-6)  # not the normed hidden_states[L]
    assert not torch.allclose(states[-1], out.hidden_states[-1][0, -1], atol=1e-3)
    assert torch.allclose(states[:-1], torch.stack([h[0, -1] for h in out.hidden_states[:-1]]), atol=1e-5)


class TestAnswer:
    def test_read_then_answer_reads_the_prompt_once(self, tiny_family):
        from helpers import forward_lengths

        cfg = GenerationConfig(max_new_tokens=6, stop_at_answer_line=False)
        with forward_lengths(tiny_family.model) as lengths:
            checked = analyze(tiny_family, QUESTIONS[3], kind="numeric")
            answered = answer(tiny_family, checked, cfg)
        n = checked.rendered.n_tokens
        assert lengths.count(n) == 1 and all(t == 1 for t in lengths if t != n)
        assert answered.generation.token_ids == generate(tiny_family, checked.rendered, cfg).token_ids
        assert answered.prefill is None and answered.state is checked.state
        with forward_lengths(tiny_family.model) as again:  # the cache is used up: answering again re-reads
            second = answer(tiny_family, checked, cfg)
        assert again.count(n) == 1 and second.generation.token_ids == answered.generation.token_ids

    def test_grades_when_an_answer_is_known_or_the_kind_grades(self, tiny_family):
        cfg = GenerationConfig(max_new_tokens=4)
        free = answer(tiny_family, analyze(tiny_family, QUESTIONS[0]), cfg)
        assert not free.graded and free.grade is None
        with_expected = answer(tiny_family, analyze(tiny_family, QUESTIONS[0], expected="3"), cfg)
        assert with_expected.graded and with_expected.grade is not None
        assert with_expected.to_json()["expected"] == "3"
        numeric = answer(tiny_family, analyze(tiny_family, QUESTIONS[0], kind="numeric"), cfg)
        assert numeric.graded and numeric.grade.correct is None  # extracted, nothing to compare with

    def test_refuses_a_read_out_of_another_model(self, tiny_family):
        checked = analyze(tiny_family, QUESTIONS[0])
        other = dataclasses.replace(checked, model_spec=dataclasses.replace(tiny_family.spec, dtype="bfloat16"))
        assert checked.made_by(tiny_family) and not other.made_by(tiny_family)
        with pytest.raises(PromptError, match="read the state again"):
            answer(tiny_family, other, GenerationConfig(max_new_tokens=2))


def test_multiple_choice_needs_two_options(tiny):
    check_choices("multiple_choice", ("a", "b"))
    check_choices("short_answer", ())
    with pytest.raises(PromptError, match="at least two options"):
        check_choices("multiple_choice", ("only one",))
    with pytest.raises(PromptError, match="at least two options"):
        analyze(tiny, QUESTIONS[0], kind="multiple_choice", choices=("only one",))
