"""``audit``: check the gate's audit log chain (``verify``) or sign its head now (``checkpoint``).

``verify`` exits 0 when the chain holds (a torn last line is reported, not fatal), 1 when it is
broken or not chained (printing the first bad record), 2 on bad input. With an operator key
configured (``IC_POLICY_KEY`` / ``IC_POLICY_KEY_FILE``) checkpoint tags are checked too.
"""

from __future__ import annotations

import argparse

from ic_core.cli.common import print_json
from ic_core.governance.audit import configured_key, write_checkpoint
from ic_core.governance.audit_verify import verify_audit


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``audit`` command with its ``verify`` and ``checkpoint`` actions."""
    p = sub.add_parser("audit", help="verify the audit log's hash chain, or append a signed checkpoint")
    actions = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    verify = actions.add_parser("verify", help="check every record's hash and link; name the first bad record")
    verify.add_argument("file", help="the JSON Lines audit log")
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    verify.set_defaults(func=run_verify)
    cp = actions.add_parser("checkpoint", help="append a checkpoint signed with the operator key now")
    cp.add_argument("file", help="the JSON Lines audit log")
    cp.set_defaults(func=run_checkpoint)


def run_verify(args: argparse.Namespace) -> int:
    """Execute ``audit verify``."""
    report = verify_audit(args.file, key=configured_key())
    if args.json:
        data = report.to_dict()
        data["ok"] = report.ok
        print_json(data)
    else:
        print("\n".join(report.summary_lines()))
    return 0 if report.ok else 1


def run_checkpoint(args: argparse.Namespace) -> int:
    """Execute ``audit checkpoint``."""
    rec = write_checkpoint(args.file)
    print(f"checkpoint seq {rec['seq']} over head seq {rec['head_seq']} ({rec['head_sha256']}) appended to {args.file}")
    return 0
