"""``policy``: fit a gate policy on a saved study run (``fit``), or check a policy file (``show``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ic_core.cli.common import print_json
from ic_core.errors import DataError
from ic_core.governance.fit import fit_policy_on_run, with_probe_path
from ic_core.governance.policy import Policy


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``policy`` command with its ``fit`` and ``show`` actions."""
    p = sub.add_parser("policy", help="fit a gate policy on a study run, or check a policy file")
    actions = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    fit = actions.add_parser("fit", help="fit thresholds on training items, report held-out figures with CIs")
    fit.add_argument("--run", required=True, help="study run folder (from `python -m ic_core study`)")
    fit.add_argument("--signal", required=True, choices=["entropy", "probe", "combined"],
                     help="entropy = H_slot if the run read after answer prefixes, else H_int")
    fit.add_argument("--target-error", required=True, type=float, help="highest error rate among approved answers (0-1)")
    fit.add_argument("--out", required=True, help="policy JSON file to write")
    fit.add_argument("--probe", help="a saved probe fitted on ANOTHER run (default: fit one on the training items)")
    fit.add_argument("--probe-out", help="where to save the fitted probe (default: <out>.probe.json/.npz)")
    fit.add_argument("--regime", help="regime of the run (default: its only one, else direct)")
    fit.add_argument("--holdout", type=float, default=0.4, help="held-out share of graded items (default 0.4)")
    fit.add_argument("--seed", type=int, default=0, help="split and bootstrap seed")
    fit.add_argument("--store-prompt-text", action="store_true",
                     help="let the audit log keep prompt text (default: only its SHA-256)")
    fit.set_defaults(func=run_fit)
    show = actions.add_parser("show", help="validate a policy file and print it")
    show.add_argument("file")
    show.set_defaults(func=run_show)


def run_fit(args: argparse.Namespace) -> int:
    """Execute ``policy fit``."""
    from ic_core.runs.store import load_run

    out = Path(args.out)
    if out.is_dir():
        raise DataError(f"--out {str(out)!r} is a folder; give a file name such as policy.json.")
    run = load_run(args.run)
    probe = None
    if args.probe:
        from ic_core.probes.saved import SavedProbe

        # --probe names a file on the operator's command line: it is read from its own folder.
        probe = SavedProbe.load(args.probe, Path(os.path.abspath(Path(args.probe).expanduser())).parent)
    fit = fit_policy_on_run(
        run, args.signal, args.target_error, regime=args.regime, holdout=args.holdout, seed=args.seed,
        probe=probe, store_prompt_text=args.store_prompt_text,
    )
    if fit.probe_scores is not None:
        if probe is not None:
            fit = with_probe_path(fit, args.probe, save=False)
        else:
            fit = with_probe_path(fit, args.probe_out or out.with_name(out.stem + ".probe"))
    fit.policy.save(out)
    summary = fit.summary()
    summary["policy_file"] = str(out)
    if args.signal == "entropy":
        summary["note"] = f"signal 'entropy' read as {fit.signals.entropy_name} (prefix mode {fit.signals.prefix_mode})"
    print_json(summary)
    if not fit.target_met:
        print(f"warning: {fit.message}", file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Execute ``policy show``."""
    policy = Policy.load(args.file)
    data = policy.to_dict()
    data["rule"] = policy.describe()
    print_json(data)
    return 0
