"""``analyze``: the pre-generation read-out of one prompt, optionally with the answer."""

from __future__ import annotations

import argparse

from ic_core.analysis import analyze
from ic_core.backends import using
from ic_core.backends.options import add_backend_options, backend_from_args, model_for_args
from ic_core.cli.common import (
    add_decoding_options,
    add_model_options,
    choices_type,
    gen_config_from_args,
    print_json,
    text_type,
)
from ic_core.prompts import REGIMES, TASK_KINDS, custom_template


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` command."""
    p = sub.add_parser("analyze", help="read the state before the answer (and optionally generate)")
    p.add_argument("--prompt", required=True, help="the question")
    p.add_argument("--regime", default="direct", choices=REGIMES)
    p.add_argument("--kind", default="free_text", choices=TASK_KINDS, help="task kind (template wording, grading)")
    p.add_argument("--template", type=text_type("--template"), help="custom user template containing {question} (overrides --regime)")
    p.add_argument("--answer-prefix", type=text_type("--answer-prefix"), help="forced start of the answer; the state is read after it (H_slot)")
    p.add_argument("--choices", type=choices_type, default=[], help="multiple-choice options separated by '|' (at most 26)")
    p.add_argument("--readout", default="last", help="'last', 'user_end' or a token index")
    p.add_argument("--generate", action="store_true", help="generate an answer after the check")
    p.add_argument("--expected", type=text_type("--expected"), help="reference answer, to grade the generation")
    p.add_argument("--aliases", type=text_type("--aliases"), help="other accepted answers separated by '|'")
    add_decoding_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(func=run)


def _readout(text: str) -> str | int:
    try:
        return int(text)
    except ValueError:
        return text


def run(args: argparse.Namespace) -> int:
    """Execute ``analyze``."""
    config = gen_config_from_args(args)
    template = custom_template(args.template) if args.template else None
    backend = backend_from_args(args, generates=args.generate)
    loaded = model_for_args(args, backend)
    with using(backend):
        result = analyze(
            loaded, args.prompt, regime=args.regime, kind=args.kind, template=template,
            answer_prefix=args.answer_prefix, choices=args.choices,
            readout=_readout(args.readout), expected=args.expected,
            aliases=args.aliases.split("|") if args.aliases else (), do_generate=args.generate, gen_config=config,
        )
    out = result.to_json()
    out["capture_backend"] = "nnsight (NDIF)" if args.remote else args.backend
    print_json(out)
    return 0
