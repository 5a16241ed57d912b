"""Options and helpers shared by CLI commands."""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Callable

from ic_core.generate import MAX_SEED, GenerationConfig
from ic_core.model_registry import GEMMA_NOTICE
from ic_core.models import ModelSpec, TransformersModel, get_model


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--trust-remote-code``."""
    parser.add_argument("--model", default="default",
                        help="'default' (offline SmolLM2), 'gemma3-270m' (offline Gemma 3 270M base; "
                             f"{GEMMA_NOTICE}), a hub id, a folder or a .gguf file")
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


MAX_CHOICES = 26
"""Multiple-choice options are lettered A … Z."""


def check_text(value: str, what: str) -> str:
    """``value`` when it is valid text; otherwise a one-line error naming ``what``.

    Raises:
        argparse.ArgumentTypeError: lone UTF-16 surrogates (undecodable bytes in the command line) or NUL.

    """
    if any(unicodedata.category(ch) == "Cs" for ch in value):
        raise argparse.ArgumentTypeError(
            f"{what} contains bytes that are not valid UTF-8 (lone surrogates such as '\\udc80'); it is not valid text"
        )
    if "\x00" in value:
        raise argparse.ArgumentTypeError(f"{what} contains a NUL character; it is not valid text")
    return value


def text_type(what: str) -> Callable[[str], str]:
    """An argparse ``type=`` that accepts only valid text (see :func:`check_text`)."""
    return lambda value: check_text(value, what)


def choices_type(value: str) -> list[str]:
    """``--choices``: options separated by ``|``, valid text, at most :data:`MAX_CHOICES` (lettered A … Z)."""
    options = check_text(value, "--choices").split("|") if value else []
    if len(options) > MAX_CHOICES:
        raise argparse.ArgumentTypeError(
            f"{len(options)} options given; multiple choice is lettered A … Z, so at most {MAX_CHOICES}"
        )
    return options


def seed_type(value: str) -> int:
    """``--seed``: an integer torch's generator takes (0 … 2**63 − 1)."""
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {value!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"the seed must be between 0 and 2**63 - 1; got {seed}")
    return seed


def add_decoding_options(parser: argparse.ArgumentParser, max_new_tokens_help: str = "new tokens per answer") -> None:
    """``--max-new-tokens``, ``--sample``, ``--temperature``, ``--seed``."""
    parser.add_argument("--max-new-tokens", type=int, default=64, help=max_new_tokens_help)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=seed_type, default=0)


def gen_config_from_args(args: argparse.Namespace) -> GenerationConfig:
    """The :class:`GenerationConfig` the decoding options describe."""
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature, seed=args.seed
    )
