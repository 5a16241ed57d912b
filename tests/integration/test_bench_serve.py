"""The served-gate benchmark figures on the tiny model: structure and arithmetic (no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest

from ic_core.bench.harness import BenchSettings, quick_or_full
from ic_core.bench.serve_workloads import SERVE_TARGETS, bench_serve, system_prompt
from ic_core.bench.workloads import ANSWER_TEMPLATE
from ic_core.errors import ICError
from ic_core.prompts import render


@pytest.fixture(scope="module")
def figures(tiny):
    return bench_serve(tiny, rounds=1, new_tokens=4, gate_requests=8, system_tokens=120)


def test_three_figures_with_their_bounds(figures):
    assert set(figures) == set(SERVE_TARGETS)
    json.dumps(figures, allow_nan=False)
    for name, fig in figures.items():
        side, bound = SERVE_TARGETS[name]
        assert fig["target"] == bound and fig["target_is"] == side and fig["n"] == 1
        assert math.isfinite(fig["median"]) and fig["median"] > 0
        assert fig["pass"] == (fig["median"] >= bound if side == "min" else fig["median"] <= bound)


def test_gate_figure_reports_batches_and_rates(figures):
    gate = figures["gate_rps_8_over_1"]
    assert gate["requests_per_arm"] == 8 and gate["clients"] == 8
    seen = gate["batch_sizes_seen"]
    # warm-up + one round: 2 × 8 single-client checks, and 2 × 8 concurrent ones in batches of 1 … 8
    assert sum(size * n for size, n in seen.items()) == 32 and all(1 <= int(s) <= 8 for s in seen)
    assert gate["median"] == pytest.approx(gate["numerator_median_s"] / gate["denominator_median_s"], rel=1e-3)


def test_chat_and_prefix_figures_compare_like_with_like(figures):
    chat = figures["served_over_inprocess"]
    # bench_serve raises when the arms' per-round token counts differ; one timed round here
    assert len(chat["generated_tokens"]) == 1 and 1 <= chat["generated_tokens"][0] <= 4
    assert chat["prefix_cache_hits"] == 0
    parts = chat["served_breakdown_ms"]
    assert set(parts) == {"queue", "check", "answer", "http_json", "total"}
    assert all(math.isfinite(v) and v >= 0 for k, v in parts.items() if k != "http_json")
    assert parts["total"] > 0 and parts["queue"] + parts["check"] + parts["answer"] <= parts["total"] * 1.01
    assert chat["served_over_its_model_time"] >= 1.0
    prefix = figures["cached_prefix_over_uncached"]
    # the untimed warm-up fills the cache; the one timed round hits it
    assert prefix["cache_hits"] == 1 and prefix["conversation_tokens"] > prefix["system_tokens"] >= 120


def test_system_prompt_reaches_its_length(tiny):
    from dataclasses import replace

    text = system_prompt(tiny.tokenizer, 120)
    base = render(tiny.tokenizer, "x", ANSWER_TEMPLATE).n_tokens
    n = render(tiny.tokenizer, "x", replace(ANSWER_TEMPLATE, system=text)).n_tokens - base
    assert 120 <= n < 200


def test_requests_must_be_a_multiple_of_the_clients(tiny):
    with pytest.raises(ICError, match="multiple of 8"):
        bench_serve(tiny, rounds=1, gate_requests=12)


def test_settings_register_the_serve_figures():
    assert BenchSettings().serve and BenchSettings().serve_gate_requests == 32
    assert quick_or_full(True, None).serve_gate_requests == 16
    assert BenchSettings().serve_chat_repeats == 5 and quick_or_full(True, None).serve_chat_repeats == 2
    assert quick_or_full(False, 4, serve=False).serve is False and quick_or_full(False, 4, serve=False).repeats == 4
    assert quick_or_full(True, None, serve=False).quick and not quick_or_full(True, None, serve=False).serve
    with pytest.raises(ICError, match="at least 1"):
        BenchSettings(serve_chat_repeats=0)


def test_cli_no_serve_flag_and_the_printed_serve_lines(figures):
    import argparse

    from ic_core.cli.bench import register, serve_summary

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["bench", "--no-serve"]).serve is False
    assert parser.parse_args(["bench"]).serve is True
    lines = serve_summary({"serve": figures})
    assert [line.split(" = ")[0] for line in lines] == [f"serve {name}" for name in figures]
    gate = figures["gate_rps_8_over_1"]
    assert f"= {gate['median']} (target >= 1.5: {'pass' if gate['pass'] else 'FAIL'})" in lines[0]
    assert "batch sizes seen" in lines[0] and "target <= 1.05" in lines[1] and "batch sizes" not in lines[1]
    assert serve_summary({}) == []
