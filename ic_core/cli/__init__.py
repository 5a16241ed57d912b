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
    """Argparse whose errors are a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see `python -m ic_core {self.prog.split()[-1]} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command module registered."""
    parser = _Parser(prog="ic_core", description="Intention Collapse engine: read the state before the answer.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
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
