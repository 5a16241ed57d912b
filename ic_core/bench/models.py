"""The two headline ratios on each offline model, side by side, with the lens arithmetic.

``python -m ic_core.bench.models --model default --model gemma3-270m --json`` times, for each
model in turn (one loaded at a time), the harness's own arms (:mod:`ic_core.bench.workloads`):

* ``analysis_over_forward`` — the full pre-generation analysis ÷ one plain forward pass with
  hidden states;
* ``answer_with_check_over_answer`` — check, then answer from the check's cache ÷ answer alone
  (``new_tokens`` new tokens, greedy; same tokens in both arms).

Beside the timings it reports what the lens costs on that model. The lens reads one position
(the read-out) through the final norm and the unembedding at every layer, so it costs
``L · d · V`` multiply-adds, whereas the plain forward pass a user writes unembeds every one of
the prompt's T positions (``T · d · V``) on top of the blocks. Both counts are worked out from
the model's shapes and checked by counting the rows that actually pass through the unembedding
during one analysis (:func:`unembedding_rows`).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from ic_core.analysis import analyze
from ic_core.bench.timing import TARGETS, ratio_stats, rounded, time_rounds
from ic_core.bench.workloads import ANSWER_TEMPLATE, _Arms, bench_analysis_over_forward, length_prompts
from ic_core.models import LoadedModel, ModelSpec, load_model


def unembedding_rows(loaded: LoadedModel, question: str) -> dict[str, int]:
    """Rows (positions × layers) that pass through the unembedding in one analysis and in one plain forward.

    Returns:
        ``analysis`` (the lens and the model's own read-out) and ``plain_forward`` (every prompt position).

    """
    import torch

    from ic_core.bench.workloads import model_inputs
    from ic_core.prompts import render

    rows: list[int] = []

    def count(_module: Any, args: tuple[Any, ...]) -> None:
        rows.append(int(args[0].reshape(-1, args[0].shape[-1]).shape[0]))

    handle = loaded.arch.unembed.register_forward_pre_hook(count)
    try:
        analyze(loaded, question, template=ANSWER_TEMPLATE)
        in_analysis = sum(rows)
        rows.clear()
        with torch.no_grad():
            loaded.model(**model_inputs(render(loaded.tokenizer, question, ANSWER_TEMPLATE)), output_hidden_states=True)
        return {"analysis": in_analysis, "plain_forward": sum(rows)}
    finally:
        handle.remove()


def _non_embedding_params(loaded: LoadedModel) -> int:
    embed, unembed = loaded.arch.embed.weight, loaded.arch.unembed.weight
    skip = {id(embed), id(unembed)}
    return sum(p.numel() for p in loaded.model.parameters() if id(p) not in skip)


def lens_arithmetic(loaded: LoadedModel, prompt_tokens: int) -> dict[str, Any]:
    """Multiply-adds of the lens at one position versus a plain forward pass over ``prompt_tokens`` tokens."""
    n_layers, d, vocab = loaded.n_layers, loaded.d_model, loaded.vocab_size
    per_layer = d * vocab
    blocks = prompt_tokens * _non_embedding_params(loaded)  # ≈ one multiply-add per weight per token
    plain_unembed = prompt_tokens * per_layer
    return {
        "n_layers": n_layers, "d_model": d, "vocab_size": vocab, "prompt_tokens": prompt_tokens,
        "lens_macs_per_layer": per_layer, "lens_macs": n_layers * per_layer,
        "plain_forward_macs": blocks + plain_unembed, "plain_forward_unembedding_macs": plain_unembed,
        "lens_over_plain_forward_macs": rounded(n_layers * per_layer / (blocks + plain_unembed), 3),
    }


def bench_model(loaded: LoadedModel, length: int, forward_rounds: int, gen_rounds: int, new_tokens: int) -> dict[str, Any]:
    """Both ratios, the unembedding row counts and the lens arithmetic for one model at one prompt length."""
    prompts = length_prompts(loaded.tokenizer, length, 1)
    forward = bench_analysis_over_forward(loaded, prompts, forward_rounds)
    arms = _Arms(loaded, prompts.question, ANSWER_TEMPLATE, new_tokens)
    t = time_rounds({"answer": arms.answer, "answer_with_check": arms.answer_with_check}, gen_rounds)
    generation = ratio_stats(
        t["answer_with_check"], t["answer"], TARGETS["answer_with_check_over_answer"], prompt_tokens=prompts.n_tokens,
        generated_tokens=dict(arms.generated),
        same_tokens_both_arms=arms.token_ids["answer"] == arms.token_ids["answer_with_check"],
    )
    return {
        "model": loaded.spec.label, "prompt_tokens": prompts.n_tokens,
        "analysis_over_forward": forward.to_json(), "answer_with_check_over_answer": generation.to_json(),
        "answer_s_median": rounded(statistics.median(t["answer"]), 3),
        "unembedding_rows": unembedding_rows(loaded, prompts.question),
        "lens": lens_arithmetic(loaded, prompts.n_tokens),
    }


def bench_models(specs: Sequence[ModelSpec], length: int = 45, forward_rounds: int = 7, gen_rounds: int = 3,
                 new_tokens: int = 64) -> dict[str, Any]:
    """:func:`bench_model` on each spec in turn (each model freed before the next loads)."""
    results = []
    for spec in specs:
        loaded = load_model(spec)
        results.append(bench_model(loaded, length, forward_rounds, gen_rounds, new_tokens))
        del loaded
        gc.collect()
    out: dict[str, Any] = {"length_target": length, "new_tokens": new_tokens, "models": results}
    if len(results) >= 2:
        first, second = results[0]["lens"], results[1]["lens"]
        out["lens_cost_second_over_first"] = {
            "per_layer": rounded(second["lens_macs_per_layer"] / first["lens_macs_per_layer"], 3),
            "all_layers": rounded(second["lens_macs"] / first["lens_macs"], 3),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ic_core.bench.models [--model M ...] [--length N] [--json]``."""
    import json

    p = argparse.ArgumentParser(prog="python -m ic_core.bench.models", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="a model (repeat; default: default and gemma3-270m)")
    p.add_argument("--length", type=int, default=45, help="approximate prompt length in tokens")
    p.add_argument("--forward-rounds", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the generation comparison")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    args = p.parse_args(argv)
    specs = [ModelSpec.parse(m) for m in (args.model or ["default", "gemma3-270m"])]
    result = bench_models(specs, args.length, args.forward_rounds, args.rounds, args.new_tokens)
    json.dump(result, sys.stdout, ensure_ascii=False, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
