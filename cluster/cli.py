"""The `pisplit` command line: one sub-command per module in `cluster.commands`.

The sub-commands are a static table, so the parser is built without importing them: only the
command that runs is imported (its module defines `register(subparsers)`, which adds its parser
and sets `func=run(args) -> int`). An MPI rank running `pisplit run` therefore never loads what
other commands use (paramiko and cryptography for provision and launch, ...).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

from layers.errors import PisplitError


class Command(NamedTuple):
    name: str
    help: str  # as the module's register() gives it (a test checks they agree)
    module: str


COMMANDS = (
    Command("models", "list the model zoo", "cluster.commands.models"),
    Command("show", "layers of a model: shape, FLOPs, weights, activations, working memory", "cluster.commands.show"),
    Command("infer", "one forward pass in this process", "cluster.commands.infer"),
    Command("split", "under mpirun -n K: run one layer split K ways, check it against the unsplit layer, time it",
            "cluster.commands.split"),
    Command("bench", "pisplit's engines against the whole model in one plain LiteRT interpreter", "cluster.commands.bench"),
    Command("run", "run a plan under mpirun: frames stream through its pipeline stages", "cluster.commands.run"),
    Command("emulate", "plan for emulated Pis and run the pipeline on this machine, one rank per device", "cluster.commands.emulate"),
    Command("provision", "set up the inventory's hosts over ssh: venv, code, keys, MPI check", "cluster.commands.provision"),
    Command("launch", "run a plan on the inventory's hosts with mpirun over ssh", "cluster.commands.launch"),
    Command("plan", "plan pipeline stages and layer splits of a model for a cluster", "cluster.commands.plan"),
    Command("profile", "measure this device (and its links under mpirun) for the planner", "cluster.commands.profile"),
    Command("codecs", "link codecs per cut: ratio, encode/decode time, transfer time; edge-host and codec-priced plans",
            "cluster.commands.codecs"),
    Command("calibrate", "measure each early exit's share of held-out frames for its threshold", "cluster.commands.calibrate"),
    Command("exits", "early exits over a sweep of T: shares, accuracy, bytes per frame, predicted throughput", "cluster.commands.exits"),
    Command("configmap", "Edgent's configuration map: per bandwidth state the exit and cut of the best reward",
            "cluster.commands.configmap"),
)
COMMAND_MODULES = [c.module for c in COMMANDS]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"pisplit: error: {message} (see 'pisplit --help')\n")


def package_version() -> str:
    """pisplit's version: from the pyproject.toml beside the packages (a checkout, or the code
    `pisplit provision` copies to a host), else from the installed distribution's metadata."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
        except (OSError, ValueError):
            project = {}
        if project.get("name") == "pisplit" and project.get("version"):
            return str(project["version"])
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pisplit")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """--version, with the version looked up only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"pisplit {package_version()} (Python {sys.version.split()[0]})")
        parser.exit(0)


def command_word(argv: Sequence[str]) -> str | None:
    """The sub-command `argv` names: its first word that is not an option (None if there is none)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: every sub-command is listed (name and help), but only the one `argv`
    names is imported and registered in full. With argv None, every sub-command is registered."""
    parser = _Parser(prog="pisplit", description="Split and pipeline DNN inference over a cluster of Raspberry Pis.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action=_VersionAction, help="print pisplit's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    wanted = None if argv is None else command_word(argv)
    for command in COMMANDS:
        if argv is None or command.name == wanted:
            importlib.import_module(command.module).register(sub)
        else:
            sub.add_parser(command.name, help=command.help, add_help=False)  # listed, never parsed into
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not any(name in os.environ for name in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PRTE_LAUNCHED", "PMI_RANK")):
        # not an MPI rank: tell the ranks of any mpirun started from here whether the user's stdout is a
        # terminal (theirs is a pty either way; cluster.output reads this to colour or not)
        os.environ.setdefault("PISPLIT_STDOUT_TTY", "1" if sys.stdout.isatty() else "0")
    debug = "--debug" in argv
    if debug:
        argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser(argv)
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
