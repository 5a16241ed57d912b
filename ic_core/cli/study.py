"""``study``: run a prompt set × regimes headless into a run folder the app can open."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ic_core.backends import using
from ic_core.backends.options import add_backend_options, backend_from_args, model_for_args
from ic_core.cli.common import (
    add_decoding_options,
    add_model_options,
    gen_config_from_args,
    print_json,
    text_type,
)
from ic_core.cli.study_shards import add_shard_options, merge_if_asked, run_ray_if_asked, sharded_runner
from ic_core.cli.study_two_models import allow_two_models, models_from_args, run_two_models
from ic_core.dataset_columns import format_column_map
from ic_core.dataset_load import load_with_mapping
from ic_core.datasets import LoadResult, bundled_sets, load_bundled
from ic_core.errors import DataError
from ic_core.prompts import REGIMES, TASK_KINDS
from ic_core.runs.store import default_run_name, run_path
from ic_core.study.export import metrics_json
from ic_core.study.runner import eta_text, run_study


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``study`` command."""
    p = sub.add_parser("study", help="run a prompt set in one or more regimes and save a run folder")
    p.add_argument("--data", help="a bundled set name (e.g. capitals) or a .jsonl/.csv file (required unless merging)")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                   help="which column holds a field, e.g. --map question=prompt --map answer=gold (repeatable; "
                        "other fields use the printed guess)")
    p.add_argument("--kind", choices=TASK_KINDS, help="task kind of the rows that name none (default: guessed per row)")
    p.add_argument("--kind-value", action="append", default=[], metavar="WORD=KIND",
                   help="what a word of the kind column means, e.g. --kind-value short=short_answer (repeatable)")
    p.add_argument("--regimes", default="direct", help=f"comma-separated, among {','.join(REGIMES)}")
    p.add_argument("--limit", type=int, help="use only the first N items")
    p.add_argument("--out", help="run folder (default: $IC_RUNS_DIR/<set>-<regimes>-n<N>-<time>); resumed if it exists")
    p.add_argument("--no-item-prefix", action="store_true", help="do not read after the items' answer prefixes (direct)")
    p.add_argument("--answer-prefix", type=text_type("--answer-prefix"), help="forced answer prefix for direct-regime items without their own")
    p.add_argument("--no-generate", action="store_true", help="only read states (and grade outputs the file carries)")
    p.add_argument("--second-digit-slot", action="store_true",
                   help="also read the entropy after the answer prefix + the gold answer's first digit (numeric answers of >= 2 digits, direct)")
    p.add_argument("--batch-size", type=int, default=8)
    add_decoding_options(p, "new tokens per answer (CoT gets at least 192)")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    add_model_options(p)
    add_backend_options(p)
    add_shard_options(p)
    allow_two_models(p)
    p.set_defaults(func=run)


def _load_data(args: argparse.Namespace) -> tuple[str, LoadResult]:
    names = {s.name for s in bundled_sets()}
    if args.data in names:
        return args.data, load_bundled(args.data)
    path = Path(args.data)
    if not path.is_file():
        raise DataError(f"--data {args.data!r} is neither a bundled set ({', '.join(sorted(names))}) nor an existing file.")
    fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    loaded = load_with_mapping(path, fmt, args.map, args.kind, args.kind_value)
    print(f"columns: {format_column_map(loaded.column_map)}", file=sys.stderr)
    return path.stem, loaded.result


def _progress_line(done: int, total: int, eta_s: float | None, message: str) -> None:
    eta = "" if eta_s is None else f" · {eta_text(eta_s)}"
    sys.stderr.write(f"\r[{done}/{total}]{eta} · {message[:60]:<60}")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Execute ``study`` (on two models when ``--model`` is given twice: :mod:`ic_core.cli.study_two_models`)."""
    models = models_from_args(args)
    if len(models) > 1:
        return run_two_models(args, models, _run_one)
    return _run_one(args)


def _run_one(args: argparse.Namespace) -> int:
    merged = merge_if_asked(args)
    if merged is not None:
        return merged
    name, result = _load_data(args)
    for err in result.errors[:10]:
        print(f"skipped line {err.line}: {err.message}", file=sys.stderr)
    if len(result.errors) > 10:
        print(f"… and {len(result.errors) - 10} more bad rows", file=sys.stderr)
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    config = gen_config_from_args(args)
    n_items = min(len(result.items), args.limit or len(result.items))
    out = Path(args.out) if args.out else run_path(default_run_name(name, regimes, n_items))
    backend = backend_from_args(args, generates=not args.no_generate)
    ray_code = run_ray_if_asked(args, name, result, regimes, config, out)
    if ray_code is not None:
        return ray_code
    loaded = model_for_args(args, backend)
    start = time.perf_counter()
    with using(backend):
        study = sharded_runner(args, run_study)(
            loaded, result.items, regimes, out, limit=args.limit, gen_config=config,
            use_item_prefix=not args.no_item_prefix, answer_prefix=args.answer_prefix, batch_size=args.batch_size,
            progress=None if args.quiet else _progress_line, generate=not args.no_generate, seed=args.seed,
            dataset_name=name, dataset_sha256=result.sha256, second_digit_slot=args.second_digit_slot,
        )
    if not args.quiet:
        sys.stderr.write(f"\ndone in {time.perf_counter() - start:.1f} s → {out}\n")
    summary = metrics_json(study)
    summary["path"] = str(out)
    summary["n_bad_rows"] = len(result.errors)
    print_json(summary)
    return 0
