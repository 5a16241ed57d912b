"""``python -m ic_core COMMAND``: headless access to the engine.

Each module in this package that defines ``register(subparsers)`` adds one command, so a
new command is a new file. User errors print one line to stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from ic_core.errors import ICError


class _Parser(argparse.ArgumentParser):
    """Argparse whose errors are a single line naming the (sub)command's own help once.

    ``prog`` is the whole command path (``ic_core``, ``ic_core study``, ``ic_core probe transfer``),
    so the hint is ``python -m`` followed by it.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see `{usage_hint(self.prog)}`)", file=sys.stderr)
        raise SystemExit(2)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> argparse.Namespace:
        """As argparse, but unknown options are blamed on the subcommand that was parsed, not the top level."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            prog = getattr(parsed, _PROG_KEY, self.prog)
            print(f"error: unrecognized arguments: {' '.join(extra)} (see `{usage_hint(prog)}`)", file=sys.stderr)
            raise SystemExit(2)
        return parsed


_PROG_KEY = "_usage_prog"
"""Namespace attribute each (sub)parser sets to its own ``prog``; the deepest parsed one wins."""


def _mark_progs(parser: argparse.ArgumentParser) -> None:
    """Give every subparser (at any depth) a default naming its own ``prog``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                sub.set_defaults(**{_PROG_KEY: sub.prog})
                _mark_progs(sub)


def usage_hint(prog: str) -> str:
    """``python -m ic_core study --help`` for the parser whose ``prog`` is ``ic_core study``."""
    return f"python -m {' '.join(prog.split())} --help"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command module registered."""
    parser = _Parser(prog="ic_core", description="Intention Collapse engine: read the state before the answer.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    _mark_progs(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ICError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
