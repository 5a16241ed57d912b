"""``probe``: recoverability of a saved study run (probe AUROC by layer, last-5 probe, baselines)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ic_core.cli.common import print_json
from ic_core.errors import DataError
from ic_core.probes.cv import LAST_K, N_SHUFFLES_PER_LAYER
from ic_core.stats.auroc import N_BOOT, N_SHUFFLES

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.probes.report import RecoverabilityReport
    from ic_core.runs.store import StudyRun


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``probe`` command."""
    p = sub.add_parser("probe", help="probe AUROC by layer, last-5-layers probe, shuffle control and baselines of a run; "
                                     "`probe transfer --train A --test B` scores a probe fitted on one run on another")
    p.add_argument("--run", help="a run folder, or the name of a run under IC_RUNS_DIR (default runs/)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--regime", help="the regime to probe (required when the run has several, unless --pooled)")
    group.add_argument("--pooled", action="store_true", help="pool all regimes (folds keep each item's rows together)")
    p.add_argument("--last-k", type=int, default=LAST_K, help=f"layers concatenated for the headline probe (default {LAST_K})")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples for the 95 %% CI")
    p.add_argument("--shuffles", type=int, default=N_SHUFFLES, help="label permutations for the last-k probe and baselines")
    p.add_argument("--layer-shuffles", type=int, default=N_SHUFFLES_PER_LAYER, help="label permutations per layer")
    p.add_argument("--pca", type=int, help="PCA components fitted inside each training fold (default: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", metavar="PATH",
                   help="also fit and save the last-k-layers probe (fixed choice, not picked from these results) "
                        "as PATH.json + PATH.npz; 'auto' saves to <run>/probes/")
    p.add_argument("--progress", action="store_true", help="print progress to stderr")
    p.add_argument("--html", metavar="PATH",
                   help="also write the run's self-contained HTML study report with these results (AUROCs beside "
                        "AURC, E-AURC, AUGRC; the probe's calibration and reliability diagram)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    p.set_defaults(func=run)
    inner = p.add_subparsers(dest="probe_command")
    t = inner.add_parser("transfer", help="fit on run A (C in A's inner folds), score run B: AUROC, CI, shuffle control")
    t.add_argument("--train", required=True, help="run A: a run folder or a run name under IC_RUNS_DIR")
    t.add_argument("--test", required=True, help="run B (must not share questions with A)")
    t.add_argument("--train-regime", help="regime of A (default: direct, else its first)")
    t.add_argument("--test-regime", help="regime of B (default: direct, else its first)")
    t.add_argument("--last-k", type=int, default=LAST_K, help=f"layers concatenated for the state probes (default {LAST_K})")
    t.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples of B's items for the 95 %% CI")
    t.add_argument("--shuffles", type=int, default=N_SHUFFLES, help="permutations of A's labels (each refitted)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    t.set_defaults(func=run_transfer)


def _run_folder(text: str) -> Path:
    from ic_core.runs.store import run_path

    path = Path(text).expanduser()
    if path.is_dir():
        return path
    candidate = run_path(text)
    if candidate.is_dir():
        return candidate
    raise DataError(f"No run folder {text!r} (looked at {path} and {candidate}); make one with `python -m ic_core study`.")


def run_transfer(args: argparse.Namespace) -> int:
    """Execute ``probe transfer``."""
    from ic_core.probes.transfer import task_rows, transfer_report
    from ic_core.runs.store import load_run

    if args.n_boot < 1 or args.last_k < 1 or args.shuffles < 0:
        raise DataError("--n-boot and --last-k must be at least 1, --shuffles at least 0.")
    train = task_rows(load_run(_run_folder(args.train)), args.train_regime, k=args.last_k)
    test = task_rows(load_run(_run_folder(args.test)), args.test_regime, k=args.last_k)
    print_json(transfer_report(train, test, n_boot=args.n_boot, n_shuffles=args.shuffles, seed=args.seed))
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute ``probe``."""
    if not args.run:
        raise DataError("probe needs --run RUN (or the transfer subcommand: probe transfer --train A --test B).")
    from ic_core.probes.report import recoverability
    from ic_core.probes.saved import default_probe_path, fit_saved_probe_for_run
    from ic_core.runs.store import load_run

    for name in ("n_boot", "shuffles", "layer_shuffles", "last_k"):
        if getattr(args, name) < (1 if name in ("n_boot", "last_k") else 0):
            raise DataError(f"--{name.replace('_', '-')} must be at least {1 if name in ('n_boot', 'last_k') else 0}.")
    if args.html and not Path(args.html).expanduser().parent.is_dir():  # before minutes of probing, not after
        raise DataError(f"Cannot write the HTML report to {args.html}: its folder does not exist.")
    study = load_run(_run_folder(args.run))

    def progress(done: int, total: int, label: str) -> None:
        print(f"[{done}/{total}] {label}", file=sys.stderr, flush=True)

    report = recoverability(
        study, regime=args.regime, pooled=args.pooled, k=args.last_k, n_boot=args.n_boot, n_shuffles=args.shuffles,
        n_shuffles_per_layer=args.layer_shuffles, seed=args.seed, pca_components=args.pca,
        progress=progress if args.progress else None,
    )
    out = report.to_json()
    if args.save:
        probe = fit_saved_probe_for_run(study, regime=args.regime, pooled=args.pooled, k=args.last_k,
                                        cv_result=report.last_layers, seed=args.seed)
        target = default_probe_path(study, report.selection, len(probe.layers)) if args.save == "auto" else Path(args.save)
        path = probe.save(target)
        out["saved_probe"] = {
            "path": str(path), "probe_id": probe.probe_id, "layers": list(probe.layers), "C": probe.C,
            "choice": f"{probe.choice} (fixed before looking at results; fitted on all {probe.n_train} graded rows)",
            "cv_auroc": out["last_layers"]["auroc_pooled"], "cv_ci95": out["last_layers"]["ci95"],
            "cv_selective": out["last_layers"].get("selective"), "cv_calibration": out["calibration"],
        }
    if args.html:
        out["html_report"] = str(write_html_report(study, report, Path(args.html)))
    print_json(out)
    return 0


def write_html_report(study: StudyRun, report: RecoverabilityReport, path: Path) -> Path:
    """Write the run's HTML report with the recoverability section (atomic); returns the path.

    Raises:
        DataError: the folder to write into does not exist.

    """
    from ic_core.io import atomic_write_text
    from ic_core.study.report import build_report

    path = path.expanduser()
    if not path.parent.is_dir():
        raise DataError(f"Cannot write the HTML report to {path}: the folder {path.parent} does not exist.")
    return atomic_write_text(path, build_report(study, recoverability=report))
