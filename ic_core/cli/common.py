"""Options and helpers shared by CLI commands."""

from __future__ import annotations

import argparse
import json
import sys

from ic_core.generate import GenerationConfig
from ic_core.models import ModelSpec, TransformersModel, get_model


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--trust-remote-code``."""
    parser.add_argument("--model", default="default", help="'default' (offline SmolLM2), a hub id, a folder or a .gguf file")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="run code shipped with a hub model (only if you trust its author)",
    )


def model_from_args(args: argparse.Namespace) -> TransformersModel:
    """Load (once per process) the model the options name."""
    spec = ModelSpec.parse(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    return get_model(spec)


def print_json(data: object) -> None:
    """One JSON object on stdout (any JSON-ready value: dicts, lists, str, numbers, None)."""
    json.dump(data, sys.stdout, ensure_ascii=False, allow_nan=False)
    sys.stdout.write("\n")


def add_decoding_options(parser: argparse.ArgumentParser, max_new_tokens_help: str = "new tokens per answer") -> None:
    """``--max-new-tokens``, ``--sample``, ``--temperature``, ``--seed``."""
    parser.add_argument("--max-new-tokens", type=int, default=64, help=max_new_tokens_help)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def gen_config_from_args(args: argparse.Namespace) -> GenerationConfig:
    """The :class:`GenerationConfig` the decoding options describe."""
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature, seed=args.seed
    )
