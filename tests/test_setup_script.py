"""scripts/setup refuses a Python older than pyproject's requires-python in one sentence, before it creates anything."""
from __future__ import annotations

import os
import shutil
import subprocess
import tomllib

from tests.conftest import ROOT, require_command


def _setup_copy(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup", tmp_path / "scripts" / "setup")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "scripts" / "setup"


def _fake_python(tmp_path, version: str):
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho {version}\n")  # what `python3 -c 'print(platform.python_version())'` prints
    fake.chmod(0o755)
    return fake


def test_requires_python_is_what_the_pins_need():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # numpy 2.4.x needs 3.11
    assert any(d.startswith("numpy==2.4.") for d in project["dependencies"])


def test_setup_refuses_an_old_python_in_one_sentence(tmp_path):
    require_command("bash")
    setup = _setup_copy(tmp_path)
    fake = _fake_python(tmp_path, "3.9.2")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHON": str(fake)})
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"setup: pisplit needs Python 3.11 or newer; this is 3.9.2 ({fake}); "
                                        f"set PYTHON=/path/to/python3.11 or newer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "setup created something before refusing"


def test_setup_names_a_missing_python(tmp_path):
    setup = _setup_copy(tmp_path)
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHON": "no-such-python3"})
    assert proc.returncode == 1 and "no-such-python3 not found; pisplit needs Python 3.11 or newer" in proc.stderr
    assert not (tmp_path / ".venv").exists()
