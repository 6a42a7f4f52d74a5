"""Colour only where the user sees a terminal: under mpirun a rank's stdout is a pty whatever mpirun's
own stdout is, so `mpirun ... pisplit run > file` must still give plain text, and a terminal colour."""
from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

import pytest

from cluster.mpirun import local_mpirun_command, mpirun_env, run_local
from cluster.output import stdout_is_terminal
from tests.conftest import ROOT

PRINT = "from cluster.output import console; console.print('[bold red]colour[/]')"
ESC = "\x1b["
RED = "\x1b[1;31m"  # bold red, as rich writes [bold red]


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_the_decision_without_mpi():
    assert stdout_is_terminal(_Tty(), {}) is True
    assert stdout_is_terminal(io.StringIO(), {}) is False
    # a rank told by the pisplit that launched it
    assert stdout_is_terminal(_Tty(), {"OMPI_COMM_WORLD_SIZE": "2", "PISPLIT_STDOUT_TTY": "0"}) is False
    assert stdout_is_terminal(_Tty(), {"OMPI_COMM_WORLD_SIZE": "2", "PISPLIT_STDOUT_TTY": "1"}) is True
    # a rank that cannot find its launcher (here: none, this process's parents are no mpirun): plain text
    assert stdout_is_terminal(_Tty(), {"PMIX_RANK": "0"}) is False


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PISPLIT_STDOUT_TTY", "NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    return mpirun_env({**env, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT), **extra})


def _mpirun_to_pty(cmd, env) -> str:
    """Run mpirun with its stdout on a pseudo-terminal, as in a user's shell; returns what it printed."""
    main, child = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdout=child, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        os.close(child)
        chunks = []
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=60)
        assert proc.returncode == 0, proc.stderr.read().decode()
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(main)


@pytest.mark.mpi
def test_mpirun_to_a_file_is_plain_and_to_a_terminal_is_coloured(tmp_path):
    cmd = local_mpirun_command(1, [sys.executable, "-c", PRINT])
    to_file = run_local(cmd, capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert to_file.returncode == 0, to_file.stderr
    assert "colour" in to_file.stdout and ESC not in to_file.stdout  # the rank's pty does not fool it
    assert RED in _mpirun_to_pty(cmd, _env())  # mpirun's stdout is a terminal: the rank colours
    # NO_COLOR (rich keeps bold, drops colour) and TERM=dumb are honoured on a terminal too
    assert RED not in _mpirun_to_pty(cmd, _env(NO_COLOR="1"))
    assert RED not in _mpirun_to_pty(cmd, _env(TERM="dumb"))
    # a launching pisplit's word wins over what /proc says
    assert ESC not in _mpirun_to_pty(cmd, _env(PISPLIT_STDOUT_TTY="0"))
