"""The ``study`` command's sharding options: ``--shard I/N``, ``--ray --shards N`` and ``study merge RUN… --out RUN``.

Kept apart from :mod:`ic_core.cli.study` so that command only adds the options and calls
:func:`merge_if_asked`, :func:`sharded_runner` and :func:`run_ray_if_asked`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ic_core.errors import DataError
from ic_core.study.export import metrics_json
from ic_core.study.shards import merge_runs, parse_shard


def add_shard_options(parser: argparse.ArgumentParser) -> None:
    """``merge RUN…``, ``--shard``, ``--ray``, ``--shards``, ``--ray-address``."""
    parser.add_argument("merge", nargs="*", metavar="merge RUN",
                        help="`study merge RUN_1 … RUN_N --out RUN`: merge the run folders of every --shard of one study")
    parser.add_argument("--shard", type=_shard_type, metavar="I/N",
                        help="run only share I of N (items split by a hash of their id; 1 <= I <= N)")
    parser.add_argument("--ray", action="store_true", help="run --shards N shares as Ray tasks and merge them into --out")
    parser.add_argument("--shards", type=int, default=2, help="number of Ray tasks with --ray (default 2)")
    parser.add_argument("--ray-address", help="a running Ray cluster (default: start Ray on this machine)")


def _shard_type(text: str) -> Any:
    try:
        return parse_shard(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def merge_if_asked(args: argparse.Namespace) -> int | None:
    """Run ``study merge RUN… --out RUN`` when asked (the exit code), else None.

    Raises:
        DataError: not ``merge`` followed by folders, no ``--out``, or what :func:`merge_runs` raises.

    """
    words = list(getattr(args, "merge", None) or [])
    if not words:
        if not getattr(args, "data", None):
            raise DataError("study needs --data (a bundled set or a file), or `study merge RUN_1 … RUN_N --out RUN`.")
        return None
    if words[0] != "merge" or len(words) < 2:
        raise DataError(f"unexpected argument {words[0]!r}: use `study merge RUN_1 … RUN_N --out RUN` to merge shares.")
    if not args.out:
        raise DataError("study merge needs --out RUN, the merged run folder.")
    run = merge_runs([Path(w) for w in words[1:]], Path(args.out))
    summary = metrics_json(run)
    summary["path"] = str(args.out)
    summary["merged_from"] = run.manifest.get("merged_from", [])
    json_out(summary)
    return 0


def json_out(summary: dict[str, Any]) -> None:
    """Print the summary the way ``study`` does."""
    from ic_core.cli.common import print_json

    print_json(summary)


def sharded_runner(args: argparse.Namespace, run_study: Callable[..., Any]) -> Callable[..., Any]:
    """``run_study``, or :func:`ic_core.study.shards.run_shard` for ``--shard I/N`` (same arguments)."""
    if getattr(args, "shard", None) is None:
        return run_study
    from ic_core.study.shards import run_shard

    return functools.partial(run_shard, shard=args.shard)


def run_ray_if_asked(args: argparse.Namespace, name: str, result: Any, regimes: list[str], config: Any,
                     out: Path) -> int | None:
    """``study --ray --shards N``: the exit code after the tasks ran and merged, else None."""
    if not getattr(args, "ray", False):
        return None
    if args.shard is not None:
        raise DataError("--ray runs every share itself: drop --shard (or run one share without --ray).")
    if getattr(args, "remote", False):
        raise DataError("--ray with --remote: NDIF already runs the model; run the study without --ray.")
    from ic_core.models import ModelSpec
    from ic_core.study.ray_launcher import run_with_ray

    spec = ModelSpec.parse(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    run = run_with_ray(
        spec, result.items, regimes, out, args.shards, backend=args.backend, address=args.ray_address,
        limit=args.limit, gen_config=config, use_item_prefix=not args.no_item_prefix, answer_prefix=args.answer_prefix,
        batch_size=args.batch_size, generate=not args.no_generate, seed=args.seed, dataset_name=name,
        dataset_sha256=result.sha256, second_digit_slot=args.second_digit_slot,
    )
    if not args.quiet:
        sys.stderr.write(f"{args.shards} Ray shares merged → {out}\n")
    summary = metrics_json(run)
    summary["path"] = str(out)
    summary["n_bad_rows"] = len(result.errors)
    summary["merged_from"] = run.manifest.get("merged_from", [])
    json_out(summary)
    return 0
