"""Integration tier: the engine on tiny random models of every family in ``helpers.ARCH_FAMILIES``.

Eight families (Llama, GPT-2, Gemma 3, Qwen3, Mistral, Phi-3, GPT-NeoX, OLMo 2), two layers,
d = 32. For each: the lens's last row is the model's own next-token distribution, batched
capture equals one prompt at a time, the KV hand-off (``analysis.answer`` from the check's
prefill) gives exactly the tokens of a plain greedy ``model.generate``, and the embedding the
layout reports (with Gemma's √d scale) is the model's ``hidden_states[0]``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ARCH_FAMILIES, make_tiny_model, make_tiny_tokenizer

from ic_core.analysis import analyze, answer
from ic_core.capture import capture, capture_batch
from ic_core.generate import GenerationConfig
from ic_core.prompts import render, template_for
from ic_core.stats.entropy import entropy_bits

QUESTIONS = [
    "What is 1 plus 2?",
    "What is the capital of France? answer with just the number or letter",
    "answer 4",
    "What is 12 times 7 minus 3 plus 40?",
]


@pytest.fixture(scope="module", params=ARCH_FAMILIES)
def family_model(request):
    """A two-layer tiny model of each family, loaded through :func:`ic_core.models.from_objects`."""
    from ic_core.models import from_objects

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer), n_layers=2, family=request.param)
    return from_objects(model, tokenizer, name=f"tiny-{request.param}")


def test_eight_families_with_distinct_layouts():
    assert len(ARCH_FAMILIES) >= 6
    tokenizer = make_tiny_tokenizer()
    types = {make_tiny_model(len(tokenizer), n_layers=1, family=f).config.model_type for f in ARCH_FAMILIES}
    assert types == {"llama", "gpt2", "gemma3_text", "qwen3", "mistral", "phi3", "gpt_neox", "olmo2"}


def test_last_lens_row_is_the_models_own_distribution(family_model):
    r = render(family_model.tokenizer, QUESTIONS[1], template_for("direct", "numeric"))
    state, _ = capture(family_model, r)
    with torch.inference_mode():
        out = family_model.model(input_ids=torch.tensor([r.input_ids]))
    own = out.logits[0, -1].float().numpy()
    probs = np.exp(own - own.max())
    probs /= probs.sum()
    lens = state.lens
    assert family_model.n_layers == 2 and list(lens.layers) == [1, 2]
    assert np.allclose(state.final_logits, own, atol=1e-4)
    assert lens.entropy_bits[0, -1] == pytest.approx(entropy_bits(own), abs=1e-4)
    assert lens.kl_to_final_bits[0, -1] == pytest.approx(0.0, abs=1e-6)
    top = np.argsort(-probs)[: lens.top_ids.shape[2]]
    assert list(lens.top_ids[0, -1]) == list(top)
    assert np.allclose(lens.top_probs[0, -1], probs[top], atol=1e-5)
    # the first layer is a different distribution (the lens reads each layer, not the output twice)
    assert lens.kl_to_final_bits[0, 0] > 1e-4


def test_batched_capture_equals_one_by_one(family_model):
    rendered = [render(family_model.tokenizer, q, template_for("direct", "numeric")) for q in QUESTIONS]
    lengths = {r.n_tokens for r in rendered}
    assert len(lengths) > 1  # the batch is padded
    batch = capture_batch(family_model, rendered, batch_size=3)
    for r, b in zip(rendered, batch, strict=True):
        single, _ = capture(family_model, r)
        assert np.allclose(single.hidden, b.hidden, atol=1e-4)
        assert np.allclose(single.final_logits, b.final_logits, atol=1e-4)
        assert np.allclose(single.lens.entropy_bits, b.lens.entropy_bits, atol=1e-3)
        assert np.array_equal(single.lens.top_ids[0, -1], b.lens.top_ids[0, -1])


@pytest.mark.parametrize("question", [QUESTIONS[0], QUESTIONS[3]])
def test_kv_hand_off_gives_the_tokens_of_plain_generate(family_model, question):
    cfg = GenerationConfig(max_new_tokens=12, stop_at_answer_line=False)
    checked = analyze(family_model, question, kind="numeric")
    assert checked.prefill is not None  # the answer continues from the check's cache
    answered = answer(family_model, checked, cfg)
    eos = sorted(family_model.eos_token_ids)
    with torch.inference_mode():
        hf = family_model.model.generate(
            input_ids=torch.tensor([checked.rendered.input_ids]), attention_mask=torch.ones(1, checked.rendered.n_tokens,
                                                                                          dtype=torch.long),
            max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0,
        )[0, checked.rendered.n_tokens:].tolist()
    if hf and hf[-1] in eos:  # our generation leaves the end token out of the answer
        hf = hf[:-1]
        assert answered.generation.stop_reason == "eos"
    assert list(answered.generation.token_ids) == hf
    assert len(hf) > 0


def test_the_layout_embedding_is_the_first_hidden_state(family_model):
    arch = family_model.arch
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.inference_mode():
        out = family_model.model(input_ids=ids, output_hidden_states=True)
        embedded = arch.embed(ids)
        raw = arch.embed.weight[ids]
    assert torch.allclose(embedded, raw * arch.embed_scale, atol=1e-5)
    if family_model.spec.name == "tiny-gemma3":
        assert arch.embed_scale == pytest.approx(32**0.5)
    else:
        assert arch.embed_scale == 1.0
    if family_model.spec.name != "tiny-gpt2":  # GPT-2 adds learned position embeddings before block 0
        assert torch.allclose(out.hidden_states[0], embedded, atol=1e-5)
