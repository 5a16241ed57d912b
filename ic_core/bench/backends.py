"""Benchmark of issue 14: the nnsight backend against the transformers one, and a merged two-share study.

* ``nnsight_over_hf`` — :func:`ic_core.analysis.analyze` through the nnsight backend ÷ the same
  analysis through the default ``hf`` backend, on the same prompts (target ≤ 1.3);
* ``sharded_over_unsharded`` — two ``--shard`` runs one after the other plus their merge ÷ the
  unsharded study of the same items, wall time on this machine (no target: one machine does not
  speed up; the point is that the merged run is the same run).

Both are measured in alternating rounds (:func:`ic_core.bench.timing.time_rounds`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ic_core.bench.timing import ratio_stats, time_rounds

NNSIGHT_TARGET = 1.3
PROMPTS = (
    "What is the capital of France?", "What is 17 + 25?", "Name the largest planet in the solar system.",
    "Who wrote Romeo and Juliet?",
)


def nnsight_over_hf(loaded: Any, rounds: int = 5, prompts: tuple[str, ...] = PROMPTS) -> dict[str, Any]:
    """The median ratio of one analysis per prompt through nnsight ÷ through hf (``RatioStats.to_json``)."""
    from ic_core.analysis import analyze
    from ic_core.backends import get_backend, using

    backend = get_backend("nnsight")

    def run_hf() -> None:
        for p in prompts:
            analyze(loaded, p)

    def run_nn() -> None:
        with using(backend):
            for p in prompts:
                analyze(loaded, p)

    times = time_rounds({"nnsight": run_nn, "hf": run_hf}, rounds)
    return ratio_stats(times["nnsight"], times["hf"], NNSIGHT_TARGET, n_prompts=len(prompts)).to_json()


def sharded_over_unsharded(loaded: Any, n_items: int = 12, rounds: int = 3, max_new_tokens: int = 8,
                           dataset: str = "capitals") -> dict[str, Any]:
    """The median ratio of (two shares + merge) ÷ the unsharded study, wall time, with the merged table checked equal."""
    from ic_core.datasets import load_bundled
    from ic_core.generate import GenerationConfig
    from ic_core.study.runner import run_study
    from ic_core.study.shards import ShardSpec, merge_runs, run_shard

    items = load_bundled(dataset).items[:n_items]
    kwargs = dict(gen_config=GenerationConfig(max_new_tokens=max_new_tokens), batch_size=4, dataset_name=dataset)
    root = Path(tempfile.mkdtemp(prefix="ic-bench-shards-"))
    counter = iter(range(10_000))
    same: list[bool] = []

    def fresh() -> Path:
        return root / f"r{next(counter)}"

    def unsharded() -> None:
        run_study(loaded, items, ["direct"], fresh(), **kwargs)

    def sharded() -> None:
        parts = [fresh(), fresh()]
        for i, part in enumerate(parts, start=1):
            run_shard(loaded, items, ["direct"], part, ShardSpec(i, 2), **kwargs)
        merged = merge_runs(parts, fresh())
        plain = run_study(loaded, items, ["direct"], root / "reference", **kwargs)  # resumed: no work after the first
        cols = ["item_id", "regime", "output_text", "correct"]
        same.append(merged.table[cols].equals(plain.table[cols]))

    arms: dict[str, Callable[[], None]] = {"sharded": sharded, "unsharded": unsharded}
    try:
        times = time_rounds(arms, rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return ratio_stats(times["sharded"], times["unsharded"], None, n_items=len(items),
                       merged_table_equal=all(same)).to_json()


def backends_benchmark(loaded: Any, rounds: int = 5, say: Callable[[str], None] = print,
                       n_items: int = 12) -> dict[str, Any]:
    """Both figures in one run: ``{"nnsight_over_hf": …, "sharded_over_unsharded": …}``."""
    say("nnsight backend ÷ hf backend (analysis per prompt)")
    out = {"nnsight_over_hf": nnsight_over_hf(loaded, rounds)}
    say(f"  {out['nnsight_over_hf']}")
    say("two shares + merge ÷ unsharded study (wall time)")
    out["sharded_over_unsharded"] = sharded_over_unsharded(loaded, n_items=n_items, rounds=max(1, rounds // 2))
    say(f"  {out['sharded_over_unsharded']}")
    return out


if __name__ == "__main__":  # python -m ic_core.bench.backends
    import json
    import sys

    from ic_core.models import get_model

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    result = backends_benchmark(get_model(), rounds, say=lambda m: print(m, file=sys.stderr, flush=True),
                                n_items=int(sys.argv[2]) if len(sys.argv) > 2 else 12)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
