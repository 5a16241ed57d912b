"""The benchmark: structure and arithmetic on the tiny model (no timing assertions: machines are noisy)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ic_core.bench.harness import TARGETS, BenchSettings, noisy_figures, quick_or_full, run_benchmark
from ic_core.bench.timing import ratio_stats, time_rounds
from ic_core.bench.workloads import ANSWER_TEMPLATE, length_prompts, load_in_subprocess, random_probe
from ic_core.errors import ICError
from ic_core.models import ModelSpec
from ic_core.prompts import render

ROOT = Path(__file__).resolve().parents[2]
PER_LENGTH = ("analysis_over_forward", "answer_with_check_over_answer", "gate_over_generate64",
              "batched_over_sequential", "ours_over_naive")
REQUIRED = (*PER_LENGTH, "warm_over_cold_load", "study_peak_mb_1000", "bytes_per_item", "items_per_s",
            "targets", "pass", "machine", "wall_time_s", "prompt_tokens", "memory", "throughput", "settings")
STAT_KEYS = {"median", "min", "max", "n", "numerator_median_s", "denominator_median_s", "target", "pass"}

TINY_SETTINGS = BenchSettings(
    repeats=2, lengths=(20, 60), new_tokens=6, forward_repeats=2, batch_prompts=5, batch_prompts_long=3,
    long_prompt_tokens=40, batch_repeats=1, load_repeats=1, memory_items=5, memory_target_items=40, study_items=1,
    direct_new_tokens=4, cot_new_tokens=4, serve=False, backends=False,  # served figures: test_bench_serve.py
)


@pytest.fixture(scope="module")
def tiny_result(tiny):
    messages = []
    result = run_benchmark(tiny, TINY_SETTINGS, messages.append)
    return result, messages


class TestRatioStats:
    def test_median_min_max_of_per_round_ratios(self):
        s = ratio_stats([2.0, 4.0, 6.0], [1.0, 1.0, 2.0], target=3.0, prompt_tokens=7)
        assert (s.median, s.min, s.max, s.n) == (3.0, 2.0, 4.0, 3)
        assert (s.numerator_median_s, s.denominator_median_s) == (4.0, 1.0)
        assert s.passed is True
        out = s.to_json()
        assert STAT_KEYS <= set(out) and out["prompt_tokens"] == 7 and out["pass"] is True

    def test_pass_is_false_above_and_none_without_target(self):
        assert ratio_stats([3.0], [1.0], target=2.9).passed is False
        assert ratio_stats([3.0], [1.0]).passed is None

    @pytest.mark.parametrize("num, den", [([], []), ([1.0, 2.0], [1.0]), ([1.0], [0.0]), ([-1.0], [1.0])])
    def test_bad_timings_are_refused(self, num, den):
        with pytest.raises(ICError):
            ratio_stats(num, den)


def test_time_rounds_warms_up_then_rotates_the_order():
    calls = []
    arms = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": lambda: calls.append("c")}
    times = time_rounds(arms, rounds=3)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(times) == {"a", "b", "c"} and all(len(v) == 3 and min(v) > 0 for v in times.values())
    calls.clear()
    time_rounds(arms, rounds=1, warmup=False)
    assert calls == ["a", "b", "c"]


class TestSettings:
    def test_quick_is_smaller_than_full(self):
        quick, full = quick_or_full(True, None), quick_or_full(False, None)
        assert quick.quick and not full.quick and full.lengths == (45, 100, 400)
        assert len(quick.lengths) < len(full.lengths) and quick.repeats <= full.repeats
        assert quick.batch_prompts < full.batch_prompts and quick.load_repeats == 1
        assert quick_or_full(False, 5).repeats == 5 and quick_or_full(True, 4).repeats == 4

    @pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"lengths": ()}, {"lengths": (45, 45)}, {"batch_prompts": 0}])
    def test_bad_settings_are_refused(self, kwargs):
        with pytest.raises(ICError):
            BenchSettings(**kwargs)


def test_length_prompts_reach_the_target_with_distinct_questions(tiny):
    short = length_prompts(tiny.tokenizer, 10, n_batch=4)
    long = length_prompts(tiny.tokenizer, 120, n_batch=4)
    assert "Context:" not in short.question and "Context:" in long.question
    assert abs(long.n_tokens - 120) <= 40 and long.n_tokens > short.n_tokens
    assert len(long.batch) == 4 and len({r.text for r in long.batch}) == 4
    assert long.rendered == render(tiny.tokenizer, long.question, ANSWER_TEMPLATE)


def test_random_probe_has_the_last_five_layers_shape(tiny):
    probe = random_probe(tiny)
    assert probe.layers == (1, 2, 3, 4) and probe.coef.shape == (4 * tiny.d_model,)
    p = probe.predict_proba_correct(__import__("numpy").zeros((tiny.n_layers + 1, tiny.d_model)))
    assert 0.0 < p < 1.0


class TestRunBenchmarkOnTiny:
    def test_every_key_is_present_and_json_clean(self, tiny_result):
        result, messages = tiny_result
        assert set(REQUIRED) <= set(result) and isinstance(result["noisy"], list)
        json.dumps(result, allow_nan=False)
        assert any("memory" in m for m in messages) and any("load" in m for m in messages)

    def test_per_length_figures_are_finite_positive_ratios(self, tiny_result):
        result, _ = tiny_result
        for key in PER_LENGTH:
            assert set(result[key]) == {"20", "60"}, key
            for length, stats in result[key].items():
                assert STAT_KEYS <= set(stats), (key, length)
                for name in ("median", "min", "max", "numerator_median_s", "denominator_median_s"):
                    assert math.isfinite(stats[name]) and stats[name] > 0, (key, length, name)
                assert stats["min"] <= stats["median"] <= stats["max"]
                assert stats["target"] == TARGETS[key] and stats["pass"] == (stats["median"] <= stats["target"])
        assert result["batched_over_sequential"]["20"]["n_prompts"] == 5
        assert result["batched_over_sequential"]["60"]["n_prompts"] == 3
        assert result["analysis_over_forward"]["20"]["n"] == 2 and result["gate_over_generate64"]["60"]["n"] == 2

    def test_answers_have_the_same_tokens_with_and_without_the_check(self, tiny_result):
        stats = tiny_result[0]["answer_with_check_over_answer"]
        for length in ("20", "60"):
            assert stats[length]["same_tokens_both_arms"] is True
            assert set(stats[length]["generated_tokens"]) == {"answer", "answer_with_check", "naive"}
            assert all(1 <= n <= 6 for n in stats[length]["generated_tokens"].values())

    def test_pass_flags_follow_the_per_length_medians(self, tiny_result):
        result, _ = tiny_result
        for key in PER_LENGTH:
            assert result["pass"][key] == all(s["median"] <= TARGETS[key] for s in result[key].values())
        assert result["pass"]["study_peak_mb_1000"] is None and result["pass"]["items_per_s"] is None

    def test_load_figure_is_not_applicable_to_an_in_memory_model(self, tiny_result):
        load = tiny_result[0]["warm_over_cold_load"]
        assert load["median"] is None and "not_applicable" in load and load["pass"] is None

    def test_memory_keeps_only_float16_states(self, tiny, tiny_result):
        result, _ = tiny_result
        L, d = tiny.n_layers, tiny.d_model
        assert result["bytes_per_item"] == (L + 1) * d * 2 + L * 4
        assert result["pass"]["bytes_per_item"] is True
        assert result["memory"]["hidden_dtype"] == "float16" and result["memory"]["hidden_shape"] == [5, L + 1, d]
        assert result["study_peak_mb_1000"] >= 40 * result["bytes_per_item"] / 1e6
        assert result["memory"]["measured_items"] == 5 and result["memory"]["extrapolated_to_items"] == 40

    def test_throughput_per_regime(self, tiny_result):
        result, _ = tiny_result
        assert set(result["items_per_s"]) == {"direct", "cot"}
        assert all(v > 0 and math.isfinite(v) for v in result["items_per_s"].values())
        assert result["throughput"]["direct"]["max_new_tokens"] == 4
        assert result["throughput"]["cot"]["max_new_tokens"] >= 4

    def test_no_serve_leaves_the_served_figures_out(self, tiny_result):
        result, messages = tiny_result
        assert "serve" not in result and not any(k.startswith("serve.") for k in result["pass"])
        assert result["settings"]["serve"] is False and not any("served gate" in m for m in messages)
        assert "backends" not in result and not any(k.startswith("backends.") for k in result["pass"])


@pytest.mark.slow  # three tiny studies and nnsight traces: minutes on a busy 2-core machine
def test_backends_figures_on_tiny(tiny):
    """Issue 14's figures through the harness: nnsight ÷ hf with its target, the merged shares equal the study."""
    from ic_core.bench.harness import _backends_figures

    messages: list[str] = []
    out = _backends_figures(tiny, 1, messages.append)
    if "skipped" in out:  # nnsight not installed here: the reason, never a number
        assert out["skipped"] and set(out) == {"skipped"}
        return
    assert set(out) == {"nnsight_over_hf", "sharded_over_unsharded"}
    # each figure is said as it is measured: its heading, then its numbers
    assert len(messages) == 4 and messages[0].startswith("nnsight backend") and messages[2].startswith("two shares")
    assert messages[1] == f"  {out['nnsight_over_hf']}" and messages[3] == f"  {out['sharded_over_unsharded']}"
    nn = out["nnsight_over_hf"]
    assert nn["target"] == 1.3 and nn["pass"] == (nn["median"] <= 1.3) and nn["median"] > 0 and nn["n"] == 1
    shards = out["sharded_over_unsharded"]
    assert shards["merged_table_equal"] is True and shards["target"] is None and shards["median"] > 0


def test_cli_skip_flags_reach_the_settings():
    assert quick_or_full(False, None, backends=False).backends is False and quick_or_full(False, None).backends
    assert quick_or_full(True, None).backends is False  # --quick leaves the backends out

    def test_machine_and_wall_time(self, tiny_result):
        result, _ = tiny_result
        m = result["machine"]
        assert m["logical_cores"] >= 1 and m["torch_threads"] >= 1 and m["cpu_model"]
        assert result["wall_time_s"] > 0 and result["model"]["n_layers"] == 4
        assert result["prompt_tokens"]["60"] > result["prompt_tokens"]["20"]


def test_load_in_a_fresh_process(tiny_dir):
    out = load_in_subprocess(ModelSpec.parse(str(tiny_dir)))
    assert out["load_s"] > 0 and out["import_s"] > 0 and Path(out["loaded_from"]) == Path(tiny_dir).resolve()


def test_load_in_a_fresh_process_reports_failure(tmp_path):
    with pytest.raises(ICError, match="fresh process failed"):
        load_in_subprocess(ModelSpec(source="local", name=str(tmp_path)))


def _cli(*args, timeout=1200):  # a hang guard, not a speed check (machines are noisy)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ic_core", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_refuses_zero_repeats():
    proc = _cli("--repeats", "0", "--json")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.model
@pytest.mark.slow
def test_cli_quick_on_the_default_model(tmp_path):
    out_file = tmp_path / "bench.json"
    proc = _cli("--quick", "--no-serve", "--json", "--quiet", "--out", str(out_file))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert json.loads(out_file.read_text()) == result
    assert set(REQUIRED) <= set(result) and result["settings"]["quick"] is True and "serve" not in result
    for key in PER_LENGTH:
        assert set(result[key]) == {"45"} and result[key]["45"]["median"] > 0
    assert 35 <= result["prompt_tokens"]["45"] <= 60
    load = result["warm_over_cold_load"]
    assert 0 < load["median"] < 1 and load["n"] == 1
    assert result["bytes_per_item"] == 31 * 576 * 2 + 30 * 4
    assert result["model"]["n_layers"] == 30 and result["items_per_s"]["direct"] > 0


def test_noisy_figures_flags_wide_spreads():
    steady = {"median": 1.0, "min": 0.95, "max": 1.05}
    wild = {"median": 1.0, "min": 0.5, "max": 2.0}
    result = {"analysis_over_forward": {"45": steady, "400": wild}, "gate_over_generate64": {"45": steady},
              "warm_over_cold_load": wild, "batched_over_sequential": {}}
    assert noisy_figures(result) == ["analysis_over_forward/400", "warm_over_cold_load"]
    assert noisy_figures({"warm_over_cold_load": {"median": None, "min": None, "max": None}}) == []
