"""The CLI imports only the command that runs: an MPI rank running `pisplit run` never loads paramiko,
cryptography (provision, launch) or, for --help, mpi4py; every command is still listed; --version."""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tomllib

import pytest

from cluster.cli import COMMANDS, build_parser, command_word
from tests.conftest import ROOT, run_pisplit

HEAVY = ("paramiko", "cryptography", "mpi4py", "invoke", "nacl", "bcrypt")

PROBE = """
import json, sys
import cluster.cli
argv = json.loads(sys.argv[1])
parser = cluster.cli.build_parser(argv)
try:
    parser.parse_args(argv)
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy})))
""".replace("{heavy}", repr(set(HEAVY)))


def loaded_after(argv: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["run", "--help"], ["--help"], ["plan", "--help"], ["provision", "--help"],
                                  ["launch", "--help"], ["emulate", "--help"], ["split", "--help"]])
def test_building_the_parser_and_dispatching_help_loads_no_ssh_or_mpi(argv):
    assert loaded_after(argv) == [], f"pisplit {' '.join(argv)} imported heavy modules"


def test_the_static_table_agrees_with_each_commands_register():
    for command in COMMANDS:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(command.module).register(sub)
        (action,) = sub._choices_actions
        assert (action.dest, action.help) == (command.name, command.help), f"{command.module}: table entry out of date"
        assert sub.choices[command.name].get_default("func") is not None


def test_every_command_is_listed_and_only_the_chosen_one_is_registered():
    parser = build_parser(["run", "plan.json"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [c.name for c in COMMANDS]
    assert sub.choices["run"].get_default("func") is not None
    assert sub.choices["provision"].get_default("func") is None
    full = build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert all(p.get_default("func") is not None for p in sub.choices.values())


def test_command_word():
    assert command_word(["--version"]) is None
    assert command_word(["-h", "run", "x"]) == "run"
    assert command_word(["--", "run"]) is None
    assert command_word(["plan", "vgg16"]) == "plan"


def test_version_and_unknown_commands():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = run_pisplit("--version").stdout
    assert out.startswith(f"pisplit {version} (Python ")
    proc = run_pisplit("frobnicate", check=False)
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_pisplit(check=False)
    assert proc.returncode == 2 and "required: COMMAND" in proc.stderr
