"""The `pisplit` command line: one sub-command per module in `cluster.commands`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from layers.errors import PisplitError

# Each module defines `register(subparsers)`, which adds its parser and sets `func=run(args) -> int`.
COMMAND_MODULES = [
    "cluster.commands.models",
    "cluster.commands.show",
    "cluster.commands.infer",
    "cluster.commands.split",
    "cluster.commands.bench",
    "cluster.commands.run",
    "cluster.commands.emulate",
    "cluster.commands.provision",
    "cluster.commands.launch",
    "cluster.commands.plan",
    "cluster.commands.profile",
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"pisplit: error: {message} (see 'pisplit --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered sub-command."""
    parser = _Parser(prog="pisplit", description="Split and pipeline DNN inference over a cluster of Raspberry Pis.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if debug:
        argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pisplit: interrupted", file=sys.stderr)
        return 130
    except (PisplitError, ValueError, OSError, KeyError) as exc:
        if debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"pisplit: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
