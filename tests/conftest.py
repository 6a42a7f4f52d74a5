"""Shared test helpers: seeded inputs and the CI rule for components the test command installs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip when a component is missing, except in CI, where the test command installs everything
    and a missing component is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def require_root(what: str) -> None:
    require(hasattr(os, "geteuid") and os.geteuid() == 0, f"{what} needs root")


def require_command(cmd: str) -> None:
    require(shutil.which(cmd) is not None, f"{cmd} is not installed")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def varied(a: np.ndarray) -> np.ndarray:
    """Assert a test input is not degenerate (constant, all zero), then return it."""
    a = np.asarray(a)
    if a.size >= 2:
        assert float(a.std()) > 0 and np.unique(a).size > a.size // 2, "test input does not vary"
    else:
        assert a.size == 0 or float(np.abs(a).max()) > 0, "test input is zero"
    return a


def run_pisplit(*args, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `pisplit` CLI in a subprocess from the repository root (wide tables); with
    `check`, a non-zero exit fails the test and shows stderr."""
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"pisplit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
