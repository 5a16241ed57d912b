"""``serve``: the gated OpenAI-compatible endpoint (FastAPI + uvicorn) in front of the policy's model."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from ic_core.cli.gate import policy_model_spec, probe_root
from ic_core.cli.policy import warn_if_unverified
from ic_core.errors import DataError
from ic_core.governance.gate import load_policy_probe
from ic_core.governance.policy import Policy, check_model_spec
from ic_core.models import get_model
from ic_core.serve.settings import ENV_API_KEY_FILE, ENV_API_KEYS, MODES, ServeSettings, load_api_keys


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"the port must be between 1 and 65535; got {port}")
    return port


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative; got {number}")
    return number


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command."""
    p = sub.add_parser("serve", help="serve the model behind the gate as an OpenAI-compatible endpoint")
    p.add_argument("--policy", required=True, help="signed policy JSON file (from `policy fit` or the Governance page)")
    p.add_argument("--model", help="model to load (default: the policy's model; any other is refused)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the policy's dtype")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
    p.add_argument("--probe", help="saved probe file (default: the path the policy names)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--mode", choices=MODES, default="block",
                   help="on escalate: block (HTTP 409, nothing generated) or annotate (generate and mark)")
    p.add_argument("--audit-log", help="JSON Lines audit log (default: $IC_AUDIT_LOG or audit/gate_audit.jsonl)")
    p.add_argument("--queue-size", type=_positive, default=8, help="requests that may wait for the model (then 429)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long to collect concurrent gate checks into one forward pass (default 5)")
    p.add_argument("--max-batch", type=_positive, default=8, help="most gate checks in one forward pass")
    p.add_argument("--prefix-cache-mb", type=int, default=256,
                   help="memory for KV caches of recent shared prefixes (system prompts, earlier turns); 0: off")
    p.add_argument("--max-tokens-limit", type=_positive, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=_positive, default=1_000_000, help="largest request body (then 413)")
    p.add_argument("--no-auth", action="store_true",
                   help=f"serve without API keys (only on a loopback address); otherwise set {ENV_API_KEYS} or {ENV_API_KEY_FILE}")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept a policy without a valid signature (anyone who can edit it can change its thresholds)")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _settings(args: argparse.Namespace) -> ServeSettings:
    keys = load_api_keys()
    if not keys and not args.no_auth:
        raise DataError(f"No API keys: set {ENV_API_KEYS} (comma-separated) or {ENV_API_KEY_FILE}, "
                        "or pass --no-auth to serve this machine only without keys.")
    if args.no_auth and not _is_loopback(args.host):
        raise DataError(f"--no-auth is refused on {args.host}: anyone who reaches it could use the model; set API keys.")
    if keys and args.no_auth:
        raise DataError(f"--no-auth contradicts the API keys in {ENV_API_KEYS}/{ENV_API_KEY_FILE}; drop one of them.")
    return ServeSettings(mode=args.mode, api_keys=keys, max_body_bytes=args.max_body_bytes,
                         max_tokens_limit=args.max_tokens_limit, queue_size=args.queue_size,
                         default_max_tokens=min(64, args.max_tokens_limit), audit_log=args.audit_log,
                         batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
                         prefix_cache_mb=args.prefix_cache_mb)


def run(args: argparse.Namespace) -> int:
    """Execute ``serve``: check everything cheap, load the model, then serve until interrupted."""
    policy = Policy.load(args.policy, allow_unsigned=args.allow_unsigned)
    warn_if_unverified(policy)
    settings = _settings(args)
    spec = policy_model_spec(args, policy)
    check_model_spec(policy, spec)
    probe = load_policy_probe(policy, probe_root(args.policy, policy, args.probe), args.probe)
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: every machine that reaches it can send requests "
              "(API keys are required).", file=sys.stderr)
    import uvicorn

    from ic_core.serve.app import create_app

    app = create_app(get_model(spec), policy, probe, settings)
    print(f"serving http://{args.host}:{args.port}/v1 (policy {policy.policy_id}, mode {settings.mode}, "
          f"audit log {app.state.engine.audit_path})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
