"""int8 splits under real MPI (issue 12): `mpirun -n 3` runs int8 layers split by every kind through
cluster.split_exec, one part per rank, and the merged output equals the unsplit segment in every
integer. The runtime carries tensors as float32 buffers, which hold int8 values exactly, and int32
partial sums as two 16-bit halves each, which add exactly in float32."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.cluster.test_split_mpi import run_mpi

WORKER = Path(__file__).with_name("int8_split_mpi_worker.py")

pytestmark = pytest.mark.mpi

CASES = [
    {"layer": "conv_2d_3", "kind": "conv-channel", "sizes": [5, 3, 2]},
    {"layer": "conv_2d_3", "kind": "conv-spatial", "sizes": [6, 4, 3]},
    {"layer": "conv_2d_9", "kind": "conv-channel", "sizes": [6, 3, 1]},      # ADD and max pool follow
    {"layer": "conv_2d_9", "kind": "conv-spatial", "sizes": [4, 2, 1]},      # max pool 'same': -128 padding
    {"layer": "depthwise_conv_2d_6", "kind": "fused-tiles", "sizes": [3, 2, 2], "options": {"last": "max_pool_2d_11"}},
    {"layer": "depthwise_conv_2d_6", "kind": "conv-channel", "sizes": [9, 7, 4]},
    {"layer": "fully_connected_19", "kind": "fc-output", "sizes": [5, 4, 2]},
    # (fully_connected_22's 5 outputs barely vary with the image: 5 distinct values in 3 frames, too few to judge)
    {"layer": "fully_connected_19", "kind": "data-parallel", "sizes": 3},
    {"layer": "conv_2d_3", "kind": "conv-spatial", "sizes": [6, 4, 3], "segment_runner": True},
    {"layer": "conv_2d_4", "kind": "conv-channel", "sizes": [4, 4, 2], "float_io": True},
    # partial sums: int32 sums travel as exact float32 16-bit halves, added by the root, requantized once
    {"layer": "conv_2d_9", "kind": "conv-filter", "sizes": [11, 5, 4]},
    {"layer": "depthwise_conv_2d_6", "kind": "conv-filter", "sizes": [3, 4, 3]},
    {"layer": "fully_connected_19", "kind": "fc-input", "sizes": [2, 4, 3]},
    {"layer": "conv_2d_14", "kind": "conv-filter", "sizes": [4, 3, 3], "segment_runner": True},
]


def test_int8_splits_under_mpirun(tmp_path):
    cases = [{**c, "id": f"{c['layer']}:{c['kind']}:{c['sizes']}" + (":segment" if c.get("segment_runner") else "")
              + (":float-io" if c.get("float_io") else "")} for c in CASES]
    case_file, result_file = tmp_path / "cases.json", tmp_path / "results.json"
    case_file.write_text(json.dumps(cases))
    proc = run_mpi(3, [sys.executable, str(WORKER), str(case_file), str(result_file)], timeout=300)
    assert result_file.exists(), f"the worker wrote no results (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads(result_file.read_text())
    assert len(results) == len(cases)
    failed = [f"{r['id']}: {r['error']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert proc.returncode == 0, proc.stderr[-3000:]
