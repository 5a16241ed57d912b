"""``policy``: fit a gate policy on a saved study run (``fit``), or check a policy file (``show``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ic_core.cli.common import print_json
from ic_core.errors import DataError
from ic_core.governance.fit import fit_policy_on_run, with_probe_path
from ic_core.governance.keys import DEFAULT_KEY_FILE, create_key_file
from ic_core.governance.policy import Policy
from ic_core.governance.signals import READOUTS
from ic_core.weights import pinned_weights_label


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``policy`` command with its ``fit`` and ``show`` actions."""
    p = sub.add_parser("policy", help="fit a gate policy on a study run, or check a policy file")
    actions = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    fit = actions.add_parser("fit", help="fit thresholds on training items, report held-out figures with CIs")
    fit.add_argument("--run", required=True, help="study run folder (from `python -m ic_core study`)")
    fit.add_argument("--signal", required=True, choices=["entropy", "probe", "combined"],
                     help="entropy = H_slot if the run read after answer prefixes, else H_int")
    fit.add_argument("--target-error", type=float,
                     help="method empirical: highest error rate among approved training answers (0-1)")
    fit.add_argument("--method", choices=["empirical", "ltt"], default="empirical",
                     help="empirical (no guarantee, default) or ltt (Learn then Test: a certified threshold or none)")
    fit.add_argument("--alpha", type=float, help="ltt: error among approved to certify (0-1)")
    fit.add_argument("--delta", type=float, default=0.1, help="ltt: allowed failure probability (default 0.1)")
    fit.add_argument("--bound", choices=["clopper_pearson", "hoeffding_bentkus"], default="clopper_pearson",
                     help="ltt: binomial tail bound (default clopper_pearson)")
    fit.add_argument("--readout", choices=list(READOUTS), default="auto",
                     help="last-token (H_int, agent-ready), kind-prefix (one generic prefix, agent-ready), "
                          "item-prefix (research only), auto (whatever the run read)")
    fit.add_argument("--ood", action=argparse.BooleanOptionalAction, default=None,
                     help="store a distance model of the training states and escalate prompts outside it "
                          "(default: on with --method ltt when the run's states are at the read-out)")
    fit.add_argument("--ood-layer", type=int, help="layer the distance model reads (default: the last)")
    fit.add_argument("--out", required=True, help="policy JSON file to write")
    fit.add_argument("--probe", help="a saved probe fitted on ANOTHER run (default: fit one on the training items)")
    fit.add_argument("--probe-out", help="where to save the fitted probe (default: <out>.probe.json/.npz)")
    fit.add_argument("--regime", help="regime of the run (default: its only one, else direct)")
    fit.add_argument("--holdout", type=float, default=0.4, help="held-out share of graded items (default 0.4)")
    fit.add_argument("--seed", type=int, default=0, help="split and bootstrap seed")
    fit.add_argument("--store-prompt-text", action="store_true",
                     help="let the audit log keep prompt text (default: only its SHA-256)")
    fit.set_defaults(func=run_fit)
    show = actions.add_parser("show", help="validate a policy file and print it with its signature status")
    show.add_argument("file")
    show.set_defaults(func=run_show)
    sign = actions.add_parser("sign", help="check a policy file's fields and sign it with the operator key")
    sign.add_argument("file")
    sign.add_argument("--out", help="signed copy to write (default: sign the file in place)")
    sign.set_defaults(func=run_sign)
    verify = actions.add_parser("verify", help="exit 0 only if the policy is valid and signed with the operator key")
    verify.add_argument("file")
    verify.set_defaults(func=run_verify)
    keygen = actions.add_parser("keygen", help=f"create the operator key file (default {DEFAULT_KEY_FILE})")
    keygen.add_argument("--out", help="key file to create (never overwritten)")
    keygen.set_defaults(func=run_keygen)


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
        probe=probe, store_prompt_text=args.store_prompt_text, **_ltt_options(args),
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
    if fit.risk is not None:
        for line in readout_lines(run, fit.signals.regime, fit.signals.readout, fit.signals.prefix_mode):
            print(line, file=sys.stderr)
        for line in fit.risk.lines():
            print(line, file=sys.stderr)
    if fit.ood_note:
        print(f"note: {fit.ood_note}", file=sys.stderr)
    if not fit.target_met:
        print(f"warning: {fit.message}", file=sys.stderr)
    return 0


def readout_lines(run: object, regime: str, readout: str, prefix_mode: str) -> list[str]:
    """The run's read-outs, agent-ready first, marking the one fitted; a note when it is research only."""
    from ic_core.governance.fit_ltt import NATIVE_READOUT, readout_options

    fitted = NATIVE_READOUT[prefix_mode] if readout == "auto" else readout
    out = ["read-outs of this run, agent-ready first:"]
    for opt in readout_options(run, regime):  # type: ignore[arg-type]
        mark = "  <- this fit" if opt.readout == fitted else ""
        out.append(f"  --readout {opt.readout:<12} {opt.label}{mark}")
    if fitted not in ("last-token", "kind-prefix"):
        out.append("note: this policy needs each prompt's own answer prefix (research only): `gate` refuses an "
                   "agent's prompt without --answer-prefix; --readout last-token makes an agent-ready policy.")
    return out


LTT_DEFAULTS = {"method": "empirical", "alpha": None, "delta": 0.1, "bound": "clopper_pearson", "readout": "auto",
                "ood": None, "ood_layer": None}
"""The issue-12 options and their defaults (a Namespace built by a caller may lack them)."""


def _ltt_options(args: argparse.Namespace) -> dict[str, object]:
    """The fit's method/guarantee/read-out keywords; ``--ood`` unset means ``auto`` for LTT fits, off otherwise."""
    opts = {k: getattr(args, k, v) for k, v in LTT_DEFAULTS.items()}
    if opts["ood"] is None:
        opts["ood"] = "auto" if opts["method"] == "ltt" else False
    return opts


def signature_status(policy: Policy) -> str:
    """``valid``, ``unsigned``, ``wrong`` or ``unverifiable (…)`` under the operator key."""
    if not policy.is_signed:
        return "unsigned"
    try:
        return "valid" if policy.signature_valid() else "wrong"
    except DataError as exc:
        return f"unverifiable ({exc})"


def warn_if_unverified(policy: Policy) -> None:
    """One stderr line when a policy was accepted without a valid signature (``--allow-unsigned``)."""
    status = signature_status(policy)
    if status != "valid":
        print(f"warning: policy {policy.policy_id} is {status.split(' (')[0]}: accepted only because of "
              "--allow-unsigned; anyone who can edit the file can change what it approves.", file=sys.stderr)


def run_show(args: argparse.Namespace) -> int:
    """Execute ``policy show`` (fields are validated; the signature is reported, not required)."""
    policy = Policy.load(args.file, allow_unsigned=True)
    data = policy.to_dict()
    data["rule"] = policy.describe()
    data["guarantee"] = policy.guarantee
    data["agent_ready"] = policy.agent_ready
    if policy.ood is not None:  # the distance model's arrays are long; show what it is
        data["ood"] = {k: policy.ood[k] for k in ("kind", "d", "k", "threshold", "outside_rate", "n_fit", "n_calibration")}
    data["signature_status"] = signature_status(policy)
    data["weights"] = pinned_weights_label(policy.model)
    print_json(data)
    return 0


def run_sign(args: argparse.Namespace) -> int:
    """Execute ``policy sign``: validate every field, then sign (the operator vouches for the content)."""
    policy = Policy.load(args.file, allow_unsigned=True)
    out = Path(args.out or args.file)
    policy.save(out, sign=True)
    print(f"signed policy {policy.policy_id} -> {out}: {policy.describe()}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Execute ``policy verify``: a refused policy is a one-line error and exit 2."""
    policy = Policy.load(args.file)
    print(f"OK: policy {policy.policy_id} is signed with the operator key: {policy.describe()}")
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    """Execute ``policy keygen``."""
    path = create_key_file(Path(args.out) if args.out else None)
    print(f"created operator key {path} (mode 0600); keep it secret, back it up: policies signed with it "
          "verify only with it")
    return 0
