"""Integration tier: the per-model benchmark (ic_core.bench.models) on the tiny models."""

from __future__ import annotations

import pytest
from helpers import make_tiny_model, make_tiny_tokenizer

from ic_core.bench.models import bench_model, lens_arithmetic, unembedding_rows
from ic_core.bench.workloads import ANSWER_TEMPLATE
from ic_core.models import from_objects
from ic_core.prompts import render

QUESTION = "what is the capital of france ?"


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def loaded(request):
    tokenizer = make_tiny_tokenizer()
    return from_objects(make_tiny_model(len(tokenizer), family=request.param), tokenizer, name=f"tiny-{request.param}")


def test_the_lens_unembeds_the_read_out_position_only(loaded):
    n_tokens = render(loaded.tokenizer, QUESTION, ANSWER_TEMPLATE).n_tokens
    rows = unembedding_rows(loaded, QUESTION)
    assert n_tokens > loaded.n_layers
    assert rows == {"analysis": loaded.n_layers, "plain_forward": n_tokens}


def test_lens_arithmetic_from_the_shapes(loaded):
    a = lens_arithmetic(loaded, 10)
    v, d, n_layers = loaded.vocab_size, loaded.d_model, loaded.n_layers
    assert (a["lens_macs_per_layer"], a["lens_macs"]) == (d * v, n_layers * d * v)
    assert a["plain_forward_unembedding_macs"] == 10 * d * v
    blocks = a["plain_forward_macs"] - a["plain_forward_unembedding_macs"]
    embed_params = v * d * (1 if loaded.arch.unembed.weight is loaded.arch.embed.weight else 2)
    assert blocks == 10 * (sum(p.numel() for p in loaded.model.parameters()) - embed_params)


def test_bench_model_reports_both_ratios_with_the_same_tokens(loaded):
    out = bench_model(loaded, length=30, forward_rounds=2, gen_rounds=1, new_tokens=4)
    assert out["model"] == loaded.spec.label and out["prompt_tokens"] >= 20
    for figure in ("analysis_over_forward", "answer_with_check_over_answer"):
        assert out[figure]["median"] > 0 and out[figure]["min"] <= out[figure]["median"] <= out[figure]["max"]
    assert out["answer_with_check_over_answer"]["same_tokens_both_arms"] is True
    assert out["unembedding_rows"]["analysis"] == loaded.n_layers
