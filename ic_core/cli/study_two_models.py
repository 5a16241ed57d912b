"""``study --model A --model B``: one prompt set on two models, one run folder each, and their comparison.

The ``--model`` option of ``study`` takes up to two models (:func:`allow_two_models`). With two,
each model's run goes into ``<out>/<model>`` (resumed if it exists, like any run), then
:func:`ic_core.study.two_models.compare_two_models` matches the items by id and the comparison
is printed and written to ``<out>/comparison.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ic_core.errors import DataError
from ic_core.io import atomic_write_text
from ic_core.runs.store import default_run_name, load_run, run_path, sanitize_name

MAX_MODELS = 2


def allow_two_models(parser: argparse.ArgumentParser) -> None:
    """Make ``--model`` repeatable (at most twice) on ``parser``, which already has it (:func:`add_model_options`)."""
    old = parser._option_string_actions["--model"]
    group = next(g for g in parser._action_groups if old in g._group_actions)
    group.conflict_handler = "resolve"  # the group that holds --model checks the conflict, not the parser
    try:
        group.add_argument("--model", action="append", dest="models", metavar="MODEL",
                           help=f"{old.help}; give it twice (--model A --model B) to run the set on both models "
                                "and compare them (accuracy, each signal's AUROC with a paired CI of the difference, "
                                "transfer)")
    finally:
        group.conflict_handler = "error"


def models_from_args(args: argparse.Namespace) -> list[str]:
    """The models asked for (default ``default``); ``args.model`` is set to the first.

    Raises:
        DataError: more than two models, or the same model twice.

    """
    models = list(getattr(args, "models", None) or [getattr(args, "model", None) or "default"])
    if len(models) > MAX_MODELS:
        raise DataError(f"--model was given {len(models)} times; study compares at most {MAX_MODELS} models.")
    if len(models) == MAX_MODELS and models[0] == models[1]:
        raise DataError(f"--model {models[0]} was given twice; a comparison needs two different models.")
    args.model = models[0]
    return models


def model_folder(model: str) -> str:
    """The folder name of one model's run inside a two-model study (``default``, ``gemma3-270m``, ``org_name``)."""
    return sanitize_name(model.replace("/", "_").replace("\\", "_").replace(":", "_"))[:80] or "model"


def run_two_models(args: argparse.Namespace, models: list[str], run_one: Callable[[argparse.Namespace], int]) -> int:
    """Run ``run_one`` once per model into ``<out>/<model>``, then print and save the comparison.

    Args:
        args: The parsed ``study`` options.
        models: Two model words.
        run_one: The one-model ``study`` (prints its summary as JSON; captured here).

    """
    from ic_core.study.two_models import compare_two_models

    if not args.data:
        raise DataError("A two-model study needs --data (merging shards works on one model's runs).")
    if args.no_generate:
        raise DataError("A two-model study grades both models' answers; drop --no-generate.")
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    base = Path(args.out) if args.out else run_path(default_run_name(f"{Path(args.data).stem}-2models", regimes, args.limit or 0))
    summaries = []
    for model in models:
        one = argparse.Namespace(**vars(args))
        one.model, one.models, one.out = model, None, str(base / model_folder(model))
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            code = run_one(one)
        if code != 0:
            return code
        summaries.append(json.loads(captured.getvalue().strip().splitlines()[-1]))
    regime = "direct" if "direct" in regimes else regimes[0]
    comparison = compare_two_models(*(load_run(base / model_folder(m)) for m in models), regime, seed=args.seed)
    report = {"runs": summaries, "comparison": comparison.to_json()}
    atomic_write_text(base / "comparison.json", json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False))
    print(comparison.text())
    print(f"runs: {', '.join(str(base / model_folder(m)) for m in models)}; comparison: {base / 'comparison.json'}")
    sys.stdout.flush()
    return 0
