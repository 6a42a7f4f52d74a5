"""Package boundaries: importing every module of `layers` and `partitioners` loads neither mpi4py nor
paramiko (only cluster/ talks to processes and hosts) nor rich (only the CLI prints), and within
cluster/ exactly one module imports mpi4py."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, json, pkgutil, sys
loaded = []
for package in ("layers", "partitioners"):
    module = importlib.import_module(package)
    loaded.append(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
        loaded.append(info.name)
print(json.dumps({"modules": loaded, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("mpi4py", "paramiko", "rich"))}))
"""


def test_layers_and_partitioners_load_no_mpi_ssh_or_rich():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "partitioners.splits" in doc["modules"] and "layers.graph" in doc["modules"]
    assert doc["loaded"] == [], f"importing layers/partitioners loaded {doc['loaded']}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_cluster_transport_imports_mpi4py():
    users = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("*/**/*.py")
                   if ".venv" not in p.parts and "tests" not in p.parts and "mpi4py" in _imports(p))
    assert users == ["cluster/transport.py"]
