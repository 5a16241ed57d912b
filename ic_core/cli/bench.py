"""``bench``: the performance benchmark (every budget figure as a ratio measured in one run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ic_core.bench.harness import quick_or_full, run_benchmark
from ic_core.cli.common import add_model_options, model_from_args, print_json
from ic_core.errors import ICError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command."""
    p = sub.add_parser("bench", help="measure the performance budget (ratios, medians over repeats)")
    p.add_argument("--repeats", type=int, help="rounds of the generation comparisons (default 3; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="about one minute: shortest prompt length, fewer repeats")
    p.add_argument("--no-serve", dest="serve", action="store_false",
                   help="skip the served-gate figures (uvicorn on 127.0.0.1: 8 vs 1 clients, served vs in-process, "
                        "cached system prompt)")
    p.add_argument("--no-backends", dest="backends", action="store_false",
                   help="skip the capture backends' figures (nnsight vs transformers, sharded study; off in --quick)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``bench``."""
    if args.repeats is not None and args.repeats < 1:
        raise ICError(f"--repeats must be at least 1 (got {args.repeats}).")
    settings = quick_or_full(args.quick, args.repeats, getattr(args, "serve", True), getattr(args, "backends", True))
    loaded = model_from_args(args)

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    result = run_benchmark(loaded, settings, progress)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    if not args.quiet:
        for line in serve_summary(result):
            print(f"bench: {line}", file=sys.stderr, flush=True)
    print_json(result)
    return 0


def serve_summary(result: dict) -> list[str]:
    """One line per served-gate figure: its ratio against the target, and the batch sizes seen."""
    lines = []
    for name, fig in (result.get("serve") or {}).items():
        sign = ">=" if fig["target_is"] == "min" else "<="
        line = f"serve {name} = {fig['median']} (target {sign} {fig['target']}: {'pass' if fig['pass'] else 'FAIL'})"
        if "batch_sizes_seen" in fig:
            line += "; batch sizes seen " + ", ".join(f"{k}×{v}" for k, v in sorted(fig["batch_sizes_seen"].items()))
        lines.append(line)
    return lines
