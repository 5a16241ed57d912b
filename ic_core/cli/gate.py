"""``gate``: check one prompt against a policy before an agent acts on it (and log the decision)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ic_core.backends import using
from ic_core.backends.options import add_backend_options, backend_from_args, load_for_args
from ic_core.cli.common import print_json
from ic_core.cli.policy import warn_if_unverified
from ic_core.governance.gate import gate_check, load_policy_probe, resolve_answer_prefix
from ic_core.governance.policy import Policy, check_model_spec
from ic_core.models import ModelSpec, get_model
from ic_core.prompts import TASK_KINDS
from ic_core.runs.store import runs_root


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``gate`` command."""
    p = sub.add_parser("gate", help="approve or escalate one prompt under a policy (one forward pass, audited)")
    p.add_argument("--policy", required=True, help="policy JSON file (from `policy fit` or the Governance page)")
    p.add_argument("--prompt", required=True, help="the question the agent is about to answer")
    p.add_argument("--answer-prefix", help="this prompt's forced answer prefix (policies fitted with per-item prefixes)")
    p.add_argument("--kind", choices=TASK_KINDS, help="task kind (default: the one the policy was fitted on)")
    p.add_argument("--choices", help="multiple-choice options separated by '|'")
    p.add_argument("--probe", help="saved probe file (default: the path the policy names)")
    p.add_argument("--audit-log", help="JSON Lines audit log (default: $IC_AUDIT_LOG or audit/gate_audit.jsonl)")
    p.add_argument("--no-audit", action="store_true", help="do not append an audit record")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of one line")
    p.add_argument("--model", help="model to load (default: the policy's model; any other is refused)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the policy's dtype")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept a policy without a valid signature (anyone who can edit it can change its thresholds)")
    add_backend_options(p)
    p.set_defaults(func=run)


def policy_model_spec(args: argparse.Namespace, policy: Policy) -> ModelSpec:
    """The model to load: the policy's own (with this command's dtype/device), or ``--model`` (checked against the policy later)."""
    dtype = args.dtype or policy.model.get("dtype", "float32")
    if args.model is None:
        base = ModelSpec.from_dict({k: v for k, v in policy.model.items() if k in ModelSpec.__dataclass_fields__})
        return ModelSpec(base.source, base.name, dtype, args.device, args.trust_remote_code)
    return ModelSpec.parse(args.model, dtype=dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def probe_root(policy_file: str | Path, policy: Policy, probe_arg: str | None) -> Path:
    """The folder this command reads the policy's probe from (``SavedProbe.load`` refuses anything outside it).

    ``--probe`` names a file on the operator's command line: its own folder. Otherwise the
    policy's recorded path is trusted only inside the policy file's folder (where ``policy fit``
    saves the probe by default) or else inside the runs root.

    Args:
        policy_file: The ``--policy`` file.
        policy: That policy.
        probe_arg: The ``--probe`` value, if given.

    """
    if probe_arg:
        return Path(os.path.abspath(Path(probe_arg).expanduser())).parent
    recorded = Path(os.path.abspath(Path(str((policy.probe or {}).get("path", ""))).expanduser()))
    policy_dir = Path(os.path.abspath(Path(policy_file).expanduser())).parent
    for folder in (policy_dir, policy_dir.resolve()):  # the recorded path is usually already resolved
        if recorded.is_relative_to(folder):
            return folder
    return runs_root()


def run(args: argparse.Namespace) -> int:
    """Execute ``gate``."""
    policy = Policy.load(args.policy, allow_unsigned=args.allow_unsigned)
    warn_if_unverified(policy)
    spec = policy_model_spec(args, policy)
    # Refuse a different model or a missing prefix before spending time loading the model.
    check_model_spec(policy, spec)
    resolve_answer_prefix(policy, args.answer_prefix)
    probe = load_policy_probe(policy, probe_root(args.policy, policy, args.probe), args.probe)
    backend = backend_from_args(args)
    loaded = load_for_args(spec, args, backend) or get_model(spec)
    with using(backend):
        decision = gate_check(
            loaded, policy, args.prompt, kind=args.kind, probe=probe,
            audit_log=False if args.no_audit else args.audit_log, answer_prefix=args.answer_prefix,
            choices=args.choices.split("|") if args.choices else (), source="cli",
        )
    if args.json:
        print_json(decision.to_json())
    else:
        sys.stdout.write(f"{decision.decision.upper()}: {decision.reason} (policy {decision.policy_id}, "
                         f"{decision.elapsed_s:.2f} s; guarantee: {decision.guarantee})\n")
    return 0

