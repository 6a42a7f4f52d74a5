"""Splits under real MPI: `mpirun -n 2/3/4` runs every split case (equal, uneven and weighted parts,
tile grids, data-parallel frames, the pipeline's SegmentRunner) in one launch per rank count, and
`pisplit split` runs under mpirun for its JSON report and for a user error that must not hang."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.mpirun import local_mpirun_command, mpirun_env, mpirun_path, run_local
from partitioners.splits import split_layer
from tests.conftest import require
from tests.partitioners.split_graphs import CASES, GRAPHS, GRID_CASES, case_id
from tests.partitioners.test_splits import WEIGHTS, uneven

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("split_mpi_worker.py")

pytestmark = pytest.mark.mpi


def _mpirun_available() -> bool:
    try:
        mpirun_path()
        import mpi4py  # noqa: F401
    except (FileNotFoundError, ImportError):
        return False
    return True


def run_mpi(n_ranks: int, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    require(_mpirun_available(), "mpirun or mpi4py is not installed")
    env = mpirun_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "200"
    # ranks outnumber the cores here; idle ranks must yield instead of spinning in MPI waits
    env["OMPI_MCA_mpi_yield_when_idle"] = "1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return run_local(local_mpirun_command(n_ranks, argv), capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


@functools.cache
def extent(name: str, layer: str, kind: str, options: tuple) -> int | None:
    if kind == "data-parallel":
        return None
    return sum(split_layer(GRAPHS[name](), layer, kind, 1, **dict(options)).sizes)


def cases_for(n_ranks: int) -> list[dict]:
    """Every case with n_ranks parts: equal, uneven integer sizes and float weights."""
    out = []
    for case in CASES:
        name, layer, kind, options = case
        e = extent(name, layer, kind, tuple(options.items()))
        if e is not None and e < n_ranks:
            continue
        variants = [("equal", n_ranks), ("weights", WEIGHTS[:n_ranks])]
        if e is not None:
            variants.append(("uneven", uneven(e, n_ranks, case_id(case))))
        for label, sizes in variants:
            out.append({"id": f"{case_id(case)}/{label}", "graph": name, "layer": layer, "kind": kind,
                        "sizes": sizes, "options": options, "frames": 5 if kind == "data-parallel" else 1})
    grids = {2: [(1, 2), (2, 1)], 3: [(1, 3), (3, 1)], 4: [(2, 2)]}[n_ranks]
    for name, layer, options, _ in GRID_CASES:
        for grid in grids:
            out.append({"id": f"{name}:{layer}:tiles{grid[0]}x{grid[1]}", "graph": name, "layer": layer,
                        "kind": "fused-tiles", "sizes": n_ranks, "options": {**options, "grid": list(grid)}})
    for name, layer, kind in [("conv_chain", "conv", "conv-spatial"), ("dense_chain", "fc1", "fc-input"), ("grouped", "conv", "conv-filter")]:
        out.append({"id": f"{name}:{layer}:{kind}/segment-runner", "graph": name, "layer": layer, "kind": kind,
                    "sizes": n_ranks, "options": {}, "segment_runner": True})
    return out


@pytest.mark.parametrize("n_ranks", [2, 3, 4])
def test_every_split_case_under_mpirun(n_ranks, tmp_path):
    cases = cases_for(n_ranks)
    assert len(cases) > 100
    case_file, result_file = tmp_path / "cases.json", tmp_path / "results.json"
    case_file.write_text(json.dumps(cases))
    proc = run_mpi(n_ranks, [sys.executable, str(WORKER), str(case_file), str(result_file)])
    assert result_file.exists(), f"the worker wrote no results (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads(result_file.read_text())
    assert len(results) == len(cases) + 1
    failed = [f"{r['id']}: {r['error']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pisplit_split_json_under_mpirun():
    proc = run_mpi(2, [sys.executable, "-m", "cluster.cli", "split", "lenet5", "conv2", "--kind", "conv-spatial",
                       "--sizes", "3,2", "--repeat", "2", "--json"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # one document: only rank 0 prints
    assert doc["ok"] and doc["max_abs_error"] < 1e-5 and doc["speedup"] > 0
    assert doc["ranks"] == 2 and doc["nodes"] == ["conv2", "pool2"] and doc["followers"] == ["pool2"]
    assert doc["sizes"] == [3, 2] and doc["sizes_given_as"] == "sizes"
    assert [p["part"] for p in doc["parts"]] == [0, 1]
    assert all(p["compute_s"] > 0 and p["recv_bytes"] > 0 for p in doc["parts"])


@pytest.mark.parametrize("args, message", [
    (["lenet5", "conv1", "--kind", "fc-output"], "pisplit: error: layer conv1: kind fc-output does not apply to a conv2d node"),
    (["lenet5", "fc3", "--kind", "fc-output", "--sizes", "1,2,3"], "pisplit: error: --sizes '1,2,3': 3 values for 2 ranks"),
])
def test_pisplit_split_user_errors_end_every_rank(args, message):
    proc = run_mpi(2, [sys.executable, "-m", "cluster.cli", "split", *args], timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.count(message) == 1, proc.stderr  # rank 0 says it once
    assert "Traceback" not in proc.stderr
