"""The benchmark's workloads: prompts by length, the analysis, generation, batching, loading, memory, throughput."""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ic_core.analysis import analyze
from ic_core.bench.timing import TARGETS, RatioStats, ratio_stats, rounded, time_rounds
from ic_core.capture import capture, capture_batch
from ic_core.errors import ICError
from ic_core.generate import GenerationConfig, generate
from ic_core.lens import LN2
from ic_core.model_registry import bundled_gguf
from ic_core.models import LoadedModel, ModelSpec, converted_cache_path
from ic_core.prompts import PromptTemplate, RenderedPrompt, custom_template, render

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = ROOT / "sample_prompts"

ANSWER_TEMPLATE = custom_template("{question}\nExplain your answer in detail: history, geography and culture.")
"""Asks for a long answer, so that greedy decoding writes the full 64 tokens before any end token
(checked: every figure reports the tokens each arm generated)."""

CONTEXT_SENTENCES = (
    "A capital city is the place where a country keeps its government, its parliament and most of its ministries.",
    "Some capitals grew out of old river ports and market towns, because trade made them rich and well connected.",
    "Others were planned on empty land, chosen as a compromise between rival regions that each wanted the seat.",
    "A few countries moved their capital after a war, a flood or independence, and kept the old one as a museum.",
    "In several states the largest city is not the capital, which surprises travellers who look only at a map.",
    "Capitals often host embassies, national libraries and courts, so their names appear daily in the news.",
    "Geography students learn them with flash cards, songs and quizzes, and still mix up neighbouring countries.",
    "When two cities share the role, one may hold the parliament while the other holds the courts or the palace.",
)
"""Padding for the longer prompts: a neutral paragraph placed before the question."""


# ------------------------------------------------------------------------------ prompts


def sample_questions(n: int, name: str = "capitals") -> list[str]:
    """The first ``n`` questions of a bundled prompt set (cycled when the set is shorter)."""
    path = SAMPLE_DIR / f"{name}.jsonl"
    with open(path, encoding="utf-8") as fh:
        questions = [json.loads(line)["question"] for line in fh if line.strip()]
    return [questions[i % len(questions)] for i in range(n)]


def _padded(question: str, n_sentences: int) -> str:
    if n_sentences == 0:
        return question
    context = " ".join(CONTEXT_SENTENCES[i % len(CONTEXT_SENTENCES)] for i in range(n_sentences))
    return f"Context: {context}\nQuestion: {question}"


def context_sentences_for(tokenizer: Any, template: PromptTemplate, question: str, target_tokens: int) -> int:
    """How many context sentences bring the rendered prompt closest to ``target_tokens``."""
    best_k, best_gap, k = 0, math.inf, 0
    while True:
        n = render(tokenizer, _padded(question, k), template).n_tokens
        gap = abs(n - target_tokens)
        if gap < best_gap:
            best_k, best_gap = k, gap
        if n >= target_tokens or k > 4 * target_tokens:
            return best_k
        k += 1


@dataclass(frozen=True)
class LengthPrompts:
    """The prompts of one target length: the timed one and a set for batching."""

    target_tokens: int
    question: str
    """The question (with its context padding) the per-prompt figures use."""
    rendered: RenderedPrompt
    batch: tuple[RenderedPrompt, ...]
    """Different questions with the same padding, for batched vs sequential capture."""

    @property
    def n_tokens(self) -> int:
        """Actual length of the timed prompt."""
        return self.rendered.n_tokens


def length_prompts(
    tokenizer: Any, target_tokens: int, n_batch: int, template: PromptTemplate = ANSWER_TEMPLATE
) -> LengthPrompts:
    """Prompts of about ``target_tokens`` tokens built from the capitals questions."""
    questions = sample_questions(max(n_batch, 1))
    k = context_sentences_for(tokenizer, template, questions[0], target_tokens)
    padded = [_padded(q, k) for q in questions]
    batch = tuple(render(tokenizer, q, template) for q in padded[:n_batch])
    return LengthPrompts(target_tokens, padded[0], batch[0], batch)


# ------------------------------------------------------------------------------ the arms


def random_probe(loaded: LoadedModel, seed: int = 0) -> Any:
    """A :class:`ic_core.probes.saved.SavedProbe` of the right shape (last 5 layers) with random weights."""
    from ic_core.probes.cv import last_layer_indices
    from ic_core.probes.saved import SavedProbe

    layers = last_layer_indices(loaded.n_layers + 1)
    f = len(layers) * loaded.d_model
    rng = np.random.default_rng(seed)
    return SavedProbe(
        layers=layers, scaler_mean=rng.normal(0.0, 1.0, f), scaler_scale=np.abs(rng.normal(1.0, 0.2, f)) + 0.1,
        coef=rng.normal(0.0, 1.0 / math.sqrt(f), f), intercept=0.0, C=1.0, n_layers=loaded.n_layers,
        d_model=loaded.d_model, model_spec=loaded.spec.to_dict(), run_path="(benchmark: random weights)",
        selection="custom", cv_auroc=None, cv_ci_low=None, cv_ci_high=None, n_train=0, n_train_correct=0,
        created="1970-01-01T00:00:00+00:00", choice="benchmark: random weights of the right shape",
    )


def benchmark_policy(loaded: LoadedModel, probe: Any, template: PromptTemplate = ANSWER_TEMPLATE) -> Any:
    """A ``combined`` gate policy (H_int and the probe) for this model and template."""
    from ic_core.governance.policy import Policy

    return Policy(
        signal="combined", model=loaded.spec.to_dict(), regime="custom", kind="free_text",
        template_user=template.user, prefix_mode="none", t_entropy_bits=3.0, entropy_signal="h_int", t_probe=0.5,
        probe={"path": "(benchmark: in memory)", "id": probe.probe_id, "platt_coef": 1.0, "platt_intercept": 0.0},
        model_n_layers=loaded.n_layers, model_d_model=loaded.d_model,
    )


def answer_config(new_tokens: int) -> GenerationConfig:
    """Greedy, exactly ``new_tokens`` when the engine can ignore the end token, no answer-line stop."""
    extra: dict[str, Any] = {}
    if "min_new_tokens" in GenerationConfig.__dataclass_fields__:
        extra["min_new_tokens"] = new_tokens
    return GenerationConfig(max_new_tokens=new_tokens, stop_at_answer_line=False, base_model_stops=False, **extra)


def model_inputs(rendered: RenderedPrompt) -> dict[str, Any]:
    """The keyword inputs of one forward pass over the rendered prompt's own (safe) ids, shape (1, T) each.

    Never re-tokenizes ``rendered.text``: that would parse control strings in user text again.
    """
    import torch

    ids = torch.tensor([rendered.input_ids], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class _Arms:
    """The timed operations on one prompt; remembers the last generation of each answering arm."""

    def __init__(self, loaded: LoadedModel, question: str, template: PromptTemplate, new_tokens: int) -> None:
        self.loaded, self.question, self.template = loaded, question, template
        self.config = answer_config(new_tokens)
        self.new_tokens = new_tokens
        self.probe = random_probe(loaded)
        self.policy = benchmark_policy(loaded, self.probe, template)
        self.rendered = render(loaded.tokenizer, question, template)
        self.inputs = model_inputs(self.rendered)
        self.generated: dict[str, int] = {}
        self.token_ids: dict[str, tuple[int, ...]] = {}

    def analysis(self) -> float:
        """Render + forward + H_int + lens (all layers) + probe P(correct)."""
        result = analyze(self.loaded, self.question, template=self.template)
        return self.probe.predict_proba_correct(result.state)

    def forward(self) -> Any:
        """What a user writes: one forward pass with hidden states (inputs tokenised beforehand)."""
        import torch

        with torch.no_grad():
            return self.loaded.model(**self.inputs, output_hidden_states=True)

    def gate(self) -> Any:
        """A stand-alone gate check (no generation, no audit record)."""
        from ic_core.governance.gate import gate_check

        return gate_check(self.loaded, self.policy, self.question, probe=self.probe, audit_log=False)

    def answer(self) -> None:
        """Render and answer, without a check."""
        rendered = render(self.loaded.tokenizer, self.question, self.template)
        self._keep("answer", generate(self.loaded, rendered, self.config).token_ids)

    def answer_with_check(self) -> None:
        """Check (capture) and answer from the check's cache."""
        result = analyze(self.loaded, self.question, template=self.template, do_generate=True, gen_config=self.config)
        assert result.generation is not None
        self._keep("answer_with_check", result.generation.token_ids)

    def naive(self) -> None:
        """Plain transformers: hidden states of the whole prompt, lens at every position and layer, generate."""
        import torch

        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        inputs = model_inputs(self.rendered)
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
            for h in (*out.hidden_states[1:-1], None):
                logits = out.logits[0] if h is None else self.loaded.arch.lens_logits(h[0])
                logp = torch.log_softmax(logits.float(), dim=-1)
                _entropy_bits = -(logp.exp() * logp).sum(-1) / LN2
                _top = logp.topk(5, dim=-1)
            # Force the length only when our own arms can be forced too, so both write as many tokens.
            forced = {"min_new_tokens": self.new_tokens} if hasattr(self.config, "min_new_tokens") else {}
            generated = model.generate(
                **inputs, max_new_tokens=self.new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, **forced,
            )
        self._keep("naive", tuple(int(i) for i in generated[0, inputs["input_ids"].shape[1]:]))

    def _keep(self, arm: str, ids: Sequence[int]) -> None:
        self.generated[arm] = len(ids)
        self.token_ids[arm] = tuple(ids)


# ------------------------------------------------------------------------------ figures


def bench_analysis_over_forward(loaded: LoadedModel, prompts: LengthPrompts, rounds: int) -> RatioStats:
    """Full pre-generation analysis ÷ one plain forward pass with hidden states."""
    arms = _Arms(loaded, prompts.question, ANSWER_TEMPLATE, 1)
    t = time_rounds({"analysis": arms.analysis, "forward": arms.forward}, rounds)
    return ratio_stats(
        t["analysis"], t["forward"], TARGETS["analysis_over_forward"], prompt_tokens=prompts.n_tokens,
        probe="ic_core.probes.saved.SavedProbe, random weights, last 5 layers",
    )


def bench_generation(
    loaded: LoadedModel, prompts: LengthPrompts, rounds: int, new_tokens: int, warmup: bool = True
) -> dict[str, RatioStats]:
    """Gate, answer, check+answer and the naive baseline on one prompt, in shared rounds.

    Returns:
        ``answer_with_check_over_answer``, ``gate_over_generate64`` and ``ours_over_naive``.

    """
    arms = _Arms(loaded, prompts.question, ANSWER_TEMPLATE, new_tokens)
    t = time_rounds(
        {"gate": arms.gate, "answer": arms.answer, "answer_with_check": arms.answer_with_check, "naive": arms.naive},
        rounds, warmup,
    )
    generated = dict(arms.generated)
    same = arms.token_ids["answer"] == arms.token_ids["answer_with_check"]
    common = {"prompt_tokens": prompts.n_tokens, "generated_tokens": generated}
    return {
        "answer_with_check_over_answer": ratio_stats(
            t["answer_with_check"], t["answer"], TARGETS["answer_with_check_over_answer"], **common,
            same_tokens_both_arms=same,
        ),
        "gate_over_generate64": ratio_stats(t["gate"], t["answer"], TARGETS["gate_over_generate64"], **common),
        "ours_over_naive": ratio_stats(t["answer_with_check"], t["naive"], TARGETS["ours_over_naive"], **common),
    }


def bench_batched_over_sequential(loaded: LoadedModel, prompts: Sequence[RenderedPrompt], rounds: int) -> RatioStats:
    """:func:`capture_batch` over the prompts ÷ :func:`capture` on each in turn."""
    prompts = list(prompts)
    warm = prompts[: min(4, len(prompts))]
    capture_batch(loaded, warm)
    for r in warm:
        capture(loaded, r)
    t = time_rounds(
        {"batched": lambda: capture_batch(loaded, prompts), "sequential": lambda: [capture(loaded, r) for r in prompts]},
        rounds, warmup=False,
    )
    return ratio_stats(
        t["batched"], t["sequential"], TARGETS["batched_over_sequential"], n_prompts=len(prompts),
        prompt_tokens_mean=round(statistics.mean(r.n_tokens for r in prompts), 1), batch_size=16,
    )


_LOAD_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
import transformers.activations, transformers.modeling_utils
from transformers import AutoModelForCausalLM, AutoTokenizer
from ic_core.models import ModelSpec, load_model
t1 = time.perf_counter()
loaded = load_model(ModelSpec.from_dict(json.loads(sys.argv[1])))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "loaded_from": loaded.loaded_from}))
"""


def load_in_subprocess(spec: ModelSpec, cache_dir: Path | None = None, timeout_s: float = 300.0) -> dict[str, Any]:
    """Time the first :func:`load_model` call of a fresh Python process (generic imports timed apart).

    Args:
        spec: What to load.
        cache_dir: ``IC_MODEL_CACHE`` for the child; None keeps this process' setting.
        timeout_s: Give up after this long.

    Returns:
        ``{"import_s", "load_s", "loaded_from"}``.

    Raises:
        ICError: the child failed (its last stderr line is quoted).

    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if cache_dir is not None:
        env["IC_MODEL_CACHE"] = str(cache_dir)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LOAD_CHILD, json.dumps(spec.to_dict())], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ICError(f"Loading {spec.label} in a fresh process took over {timeout_s:.0f} s.") from exc
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ICError(f"Loading {spec.label} in a fresh process failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_load(spec: ModelSpec, rounds: int) -> dict[str, Any]:
    """Warm load (converted cache) ÷ cold load (GGUF into an empty cache), each in a fresh process.

    Returns:
        :meth:`RatioStats.to_json` plus load details, or ``{"median": None, ..., "not_applicable": why}``
        for models that have no GGUF source.

    """
    if spec.source not in ("default", "gguf"):
        return {"median": None, "min": None, "max": None, "n": 0, "target": TARGETS["warm_over_cold_load"],
                "pass": None, "not_applicable": f"{spec.source} models are not converted from GGUF"}
    gguf = bundled_gguf(spec.name) if spec.source == "default" else Path(spec.name)
    if not (converted_cache_path(gguf) / "config.json").is_file():
        load_in_subprocess(spec)  # convert once, so that warm loads read the cache
    warm, cold, details = [], [], []
    for k in range(rounds):
        order = ("warm", "cold") if k % 2 == 0 else ("cold", "warm")
        for arm in order:
            if arm == "warm":
                out = load_in_subprocess(spec)
                warm.append(out["load_s"])
            else:
                with tempfile.TemporaryDirectory(prefix="ic-bench-cache-") as tmp:
                    out = load_in_subprocess(spec, Path(tmp))
                if not str(out["loaded_from"]).endswith(".gguf"):
                    raise ICError(f"The cold load read {out['loaded_from']}, not the GGUF file.")
                cold.append(out["load_s"])
            details.append({"arm": arm, **{k2: (rounded(v) if isinstance(v, float) else v) for k2, v in out.items()}})
    with_imports = ratio_stats(
        [d["import_s"] + d["load_s"] for d in details if d["arm"] == "warm"],
        [d["import_s"] + d["load_s"] for d in details if d["arm"] == "cold"],
    )
    stats = ratio_stats(warm, cold, TARGETS["warm_over_cold_load"])
    return {**stats.to_json(), "including_imports": {"median": rounded(with_imports.median), "min": rounded(with_imports.min),
                                                     "max": rounded(with_imports.max)},
            "loads": details,
            "method": "load_model() timed inside a fresh Python process, after importing torch, transformers and "
                      "its generic model machinery (modeling_utils, activations: timed apart as import_s); "
                      "cold = IC_MODEL_CACHE pointed at an empty temporary folder (GGUF dequantised and saved)"}


class _RssSampler:
    """Samples this process' resident set size every few milliseconds (Linux ``/proc``)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.available = Path("/proc/self/statm").is_file()
        self.baseline = self.peak = self.rss() if self.available else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        """Current RSS in bytes."""
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> _RssSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int | None:
        """Peak RSS above the baseline, bytes (None off Linux)."""
        return self.peak - self.baseline if self.available else None


def _study_items(n: int) -> list[Any]:
    from ic_core.datasets import load_bundled

    items = list(load_bundled("capitals").items)
    return [items[i % len(items)] for i in range(n)]


def bench_memory(loaded: LoadedModel, n_items: int, target_items: int = 1000) -> dict[str, Any]:
    """Memory of a study that keeps float16 last-token states for every layer.

    Runs :func:`ic_core.study.runner.run_study` (states only, no generation) over ``n_items`` real
    capitals items in a temporary folder, with an RSS sampler running; the study returns its
    run loaded from disk, whose arrays give the bytes held per item (tracemalloc confirms them).
    A two-item study runs first, unmeasured (first-call allocations are not per-study memory).
    The peak for ``target_items`` is the measured peak plus ``(target_items − n_items)`` × bytes
    per item: the capture transient does not grow with N, the held states do.
    """
    from ic_core.runs.store import load_run
    from ic_core.study.runner import run_study

    items = _study_items(n_items)
    with tempfile.TemporaryDirectory(prefix="ic-bench-study-") as tmp:
        # Warm-up: first-call allocations (thread pools, kernels, lazy imports) are not per-study memory.
        run_study(loaded, items[:2], ["direct"], Path(tmp) / "warmup", generate=False, batch_size=16)
        gc.collect()
        with _RssSampler() as rss:
            run = run_study(loaded, items, ["direct"], Path(tmp) / "run", generate=False, batch_size=16,
                            dataset_name="capitals (benchmark)")
        n = len(run.table)
        held_arrays = int(run.hidden.nbytes + run.lens_entropy_bits.nbytes)
        hidden_dtype, shape = str(run.hidden.dtype), list(run.hidden.shape)
        del run
        gc.collect()
        tracemalloc.start()
        reopened = load_run(Path(tmp) / "run")
        held_traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del reopened
    L, d = loaded.n_layers, loaded.d_model
    float16_only = (L + 1) * d * 2 + L * 4
    per_item = held_arrays / n
    growth = rss.growth
    peak_n = growth if growth is not None else held_traced
    peak_target = peak_n + (target_items - n) * per_item
    return {
        "study_peak_mb_1000": rounded(peak_target / 1e6, 2),
        "bytes_per_item": int(round(per_item)),
        "details": {
            "measured_items": n, "extrapolated_to_items": target_items,
            "measured_peak_rss_growth_mb": rounded(growth / 1e6, 2) if growth is not None else None,
            "held_arrays_mb_measured": rounded(held_arrays / 1e6, 3),
            "held_traced_mb_measured": rounded(held_traced / 1e6, 3),
            "held_mb_1000": rounded(per_item * target_items / 1e6, 2),
            "hidden_dtype": hidden_dtype, "hidden_shape": shape,
            "float16_states_bytes_per_item": float16_only,
            "float32_intention_state_bytes_per_item": (L + 1) * d * 4 + loaded.vocab_size * 4,
            "method": (
                f"run_study(generate=False) over {n} real capitals items with an RSS sampler (2 ms); bytes per "
                f"item from the reopened run's arrays (tracemalloc agrees); peak for {target_items} items = "
                f"measured peak + ({target_items} - {n}) x bytes per item"
            ),
        },
        "bytes_per_item_target": int(math.ceil(float16_only * 1.05)),
    }


def bench_throughput(loaded: LoadedModel, n_items: int, direct_new_tokens: int, cot_new_tokens: int) -> dict[str, Any]:
    """Study items per second (read the state, generate, grade, write) in the direct and CoT regimes."""
    from ic_core.study.runner import run_study

    items = _study_items(n_items)
    out: dict[str, Any] = {}
    for regime, new_tokens in (("direct", direct_new_tokens), ("cot", cot_new_tokens)):
        with tempfile.TemporaryDirectory(prefix="ic-bench-study-") as tmp:
            start = time.perf_counter()
            run = run_study(loaded, items, [regime], Path(tmp) / "run", gen_config=GenerationConfig(max_new_tokens=new_tokens),
                            dataset_name="capitals (benchmark)")
            wall = time.perf_counter() - start
        generated = [len(str(t)) for t in run.table["output_text"]]
        out[regime] = {
            "items_per_s": rounded(len(run.table) / wall),
            "items": len(run.table), "wall_s": rounded(wall, 3),
            "max_new_tokens": int(run.manifest["generation"]["max_new_tokens_by_regime"][regime]),
            "output_chars_mean": rounded(statistics.mean(generated), 1),
        }
    return out
