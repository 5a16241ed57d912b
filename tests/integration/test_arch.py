"""Integration tier (tiny random models): the architecture table in ic_core.arch."""

from __future__ import annotations

import pytest
import torch

from ic_core.arch import FAMILIES, family_of, layout_of
from ic_core.errors import ModelLoadError

SMALL = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
EXTRA = {"gemma": {"head_dim": 8}, "gemma2": {"head_dim": 8}, "gemma3_text": {"head_dim": 8}, "helium": {"head_dim": 8},
         "gptj": {"rotary_dim": 4}}
ALL_TYPES = sorted(t for f in FAMILIES for t in f.model_types)


def tiny_of(model_type: str, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**SMALL, **EXTRA.get(model_type, {}), **overrides})
    return AutoModelForCausalLM.from_config(config).eval()


class TestEveryFamily:
    @pytest.mark.parametrize("model_type", ALL_TYPES)
    def test_layout_reproduces_the_models_own_output(self, model_type):
        """The found norm is the last block's, and the found unembedding (+ cap) gives the model's logits."""
        model = tiny_of(model_type)
        arch = layout_of(model)
        assert arch.family == family_of(model_type).name
        assert arch.n_layers == 3 and arch.embed is model.get_input_embeddings()
        last_block = {}
        handle = arch.blocks[-1].register_forward_hook(
            lambda _m, _i, out: last_block.setdefault("h", out[0] if isinstance(out, tuple) else out))
        ids = torch.tensor([[5, 17, 42, 99, 7, 250]])
        with torch.inference_mode():
            out = model(input_ids=ids, output_hidden_states=True)
            handle.remove()
            normed = arch.final_norm(last_block["h"])
            logits = arch.logits(out.hidden_states[-1][0])
        assert len(out.hidden_states) == arch.n_layers + 1
        assert torch.allclose(normed, out.hidden_states[-1], atol=1e-5)
        assert torch.allclose(logits, out.logits[0].float(), atol=1e-4)


class TestSoftCap:
    def test_gemma_caps_and_the_layout_applies_it(self):
        model = tiny_of("gemma3_text", final_logit_softcapping=0.1)
        arch = layout_of(model)
        assert arch.logit_softcap == 0.1
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([[5, 17, 42]]), output_hidden_states=True)
            raw = arch.unembed(out.hidden_states[-1][0]).float()
            capped = arch.logits(out.hidden_states[-1][0])
        assert float(out.logits.abs().max()) < 0.1  # the model caps its own logits
        assert float(raw.abs().max()) > 0.1  # so without the cap the lens would be off
        assert torch.allclose(capped, torch.tanh(raw / 0.1) * 0.1)
        assert torch.allclose(capped, out.logits[0].float(), atol=1e-5)

    def test_families_without_a_cap_or_with_it_off(self):
        assert layout_of(tiny_of("gemma2")).logit_softcap == 30.0  # the config's default
        assert layout_of(tiny_of("gemma3_text", final_logit_softcapping=None)).logit_softcap is None
        assert layout_of(tiny_of("llama")).logit_softcap is None


class TestRefusals:
    def test_unknown_architecture_names_class_and_type(self):
        model = tiny_of("bloom")
        with pytest.raises(ModelLoadError, match=r"BloomForCausalLM \(model_type 'bloom'\) is not a known architecture"):
            layout_of(model)

    def test_missing_final_norm_is_named(self):
        model = tiny_of("llama")
        del model.model.norm
        with pytest.raises(ModelLoadError, match=r"LlamaForCausalLM \(family llama\) has no `model.norm` \(the final norm\)"):
            layout_of(model)

    def test_blocks_that_are_not_a_module_list(self):
        model = tiny_of("gpt2")
        model.transformer.h = torch.nn.Sequential(*model.transformer.h)
        with pytest.raises(ModelLoadError, match=r"`transformer.h` is a Sequential"):
            layout_of(model)

    def test_loading_an_unknown_architecture_fails_at_load(self):
        from helpers import make_tiny_tokenizer

        from ic_core.models import from_objects

        with pytest.raises(ModelLoadError, match="not a known architecture"):
            from_objects(tiny_of("bloom"), make_tiny_tokenizer())


class TestEmbeddingScale:
    def test_gemma_scales_by_sqrt_d_and_others_not(self):
        assert layout_of(tiny_of("gemma3_text")).embed_scale == pytest.approx(32**0.5)
        assert layout_of(tiny_of("gemma")).embed_scale == pytest.approx(32**0.5)
        assert layout_of(tiny_of("llama")).embed_scale == 1.0

    def test_a_scaling_family_whose_embedding_hides_the_scale_is_refused(self):
        model = tiny_of("gemma3_text")
        model.set_input_embeddings(torch.nn.Embedding(300, 32))
        with pytest.raises(ModelLoadError, match=r"Gemma3ForCausalLM \(family gemma2/3\) scales its token embeddings, "
                                                 r"but its embedding Embedding has no `scalar_embed_scale`"):
            layout_of(model)
