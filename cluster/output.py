"""Shared CLI output helpers: a rich console, JSON printing and human units."""
from __future__ import annotations

import json
import sys

from rich.console import Console

import os

# Launchers whose stdout is what a user sees when an MPI rank's output reaches them: Open MPI 5's
# mpirun/mpiexec are prterun (PRRTE); older ones orterun.
LAUNCHERS = ("mpirun", "mpiexec", "prterun", "orterun", "prte")
MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PRTE_LAUNCHED", "PMI_RANK")
TTY_ENV = "PISPLIT_STDOUT_TTY"  # "1"/"0": whether the launcher's stdout is a terminal (cluster.cli.main sets it for
# the mpiruns a pisplit starts; `pisplit launch` passes it to remote ranks: remote_rank_env)


def _proc_parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _launcher_stdout_is_terminal() -> bool | None:
    """Whether the stdout of the mpirun that started this rank is a terminal: found by walking up
    /proc's parents to the launcher (a rank on the machine mpirun runs on). None when it cannot be
    known (a rank on another host, under prted; no /proc; not permitted)."""
    try:
        pid = os.getppid()
        for _ in range(16):
            if pid <= 1:
                return None
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            if name in LAUNCHERS:
                target = os.readlink(f"/proc/{pid}/fd/1")
                return target.startswith(("/dev/pts/", "/dev/tty")) and target != "/dev/tty"
            if name == "prted":
                return None  # a remote daemon: the launcher is on another machine
            pid = _proc_parent(pid)
    except (OSError, ValueError, IndexError):
        return None
    return None


def stdout_is_terminal(stream=None, environ=None) -> bool:
    """Whether stdout is a terminal the user looks at. Under mpirun a rank's stdout is a pty that
    Open MPI forwards to mpirun's stdout, which may be a file or a pipe (`mpirun ... pisplit run > f`):
    then a rank answers as mpirun's stdout is (PISPLIT_STDOUT_TTY, which a pisplit that launches
    mpirun sets, else mpirun's own stdout found through /proc), and plain text when that cannot be known."""
    stream = sys.stdout if stream is None else stream
    environ = os.environ if environ is None else environ
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    if not any(name in environ for name in MPI_ENV):
        return True
    told = environ.get(TTY_ENV, "")
    if told in ("0", "1"):
        return told == "1"
    return bool(_launcher_stdout_is_terminal())


_is_terminal = stdout_is_terminal()


def _width() -> int | None:
    """COLUMNS when set (rich ignores it on a dumb terminal, as mpirun's ranks have), else the
    terminal's width, else 160: rich's fallback of 80 columns is too narrow for layer tables."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return int(columns)
    return None if _is_terminal else 160


_columns = _width()
# Colour and live displays only on a terminal the user sees (rich itself honours NO_COLOR, TERM=dumb
# and FORCE_COLOR; FORCE_COLOR wins over the detection here too).
_force = None if _is_terminal or os.environ.get("FORCE_COLOR") else False
# rich reports 80x25 for a dumb terminal unless both width and height are given
console = Console(width=_columns, height=None if _columns is None else int(os.environ.get("LINES", "25") or 25),
                  force_terminal=_force)
err_console = Console(stderr=True)


def remote_rank_env(captured: bool) -> dict[str, str]:
    """The variables a launch passes to ranks on other hosts (`mpirun -x`) so they print as this pisplit's
    stdout is: PISPLIT_STDOUT_TTY ("0" when the launch captures their output; a remote rank cannot find
    the launcher through /proc) and COLUMNS (their pty has no size: tables would shrink to 80 columns)."""
    tty = "0" if captured else (os.environ.get(TTY_ENV) if os.environ.get(TTY_ENV) in ("0", "1") else
                                ("1" if stdout_is_terminal() else "0"))
    return {TTY_ENV: tty, "COLUMNS": str(console.width)}


def print_json(doc) -> None:
    """Print a JSON document on stdout (plain, machine-readable)."""
    sys.stdout.write(json.dumps(doc, indent=2, default=_default) + "\n")
    sys.stdout.flush()


def _default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def human_count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
