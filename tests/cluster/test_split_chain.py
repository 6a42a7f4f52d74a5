"""`pisplit split ... --chain N` under mpirun: N consecutive layers split, row strips and fc slices
kept on their ranks between them, checked against the unsplit nodes; `--star` gathers in between."""
from __future__ import annotations

import json
import sys

import pytest

from layers import save_graph
from tests.cluster.test_split_mpi import run_mpi
from tests.partitioners.test_layouts import conv_stack

pytestmark = pytest.mark.mpi


def _split(n_ranks, *args, timeout=120):
    return run_mpi(n_ranks, [sys.executable, "-m", "cluster.cli", "split", *map(str, args)], timeout=timeout)


def test_a_chain_keeps_strips_and_fc_slices_on_their_ranks(tmp_path):
    path, _ = save_graph(conv_stack(), tmp_path / "conv_stack.json")
    # conv1 -> conv2+pool2 -> conv3 (row strips), flatten on rank 0, fc1 -> fc2 (slices, one reduce)
    proc = _split(3, path, "conv1", "--kind", "conv-spatial,conv-spatial,conv-spatial,fc-output,fc-input", "--chain", 5,
                  "--sizes", "1,1.5,1", "--repeat", 1, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["max_abs_error"] < 1e-5
    kinds = [(s["kind"], s["output_layout"]) for s in doc["chain"]]
    assert kinds == [("conv-spatial", "parts"), ("conv-spatial", "parts"), ("conv-spatial", "lead"), ("none", "lead"),
                     ("fc-output", "parts"), ("fc-input", "lead")]
    assert doc["chain"][0]["layout"].startswith("rows[0:") and doc["chain"][0]["layout"].endswith("@0,1,2")
    assert doc["chain"][4]["layout"].startswith("channels[")
    assert all(c > 0 for c in doc["ranks_compute_s"])

    star = json.loads(_split(3, path, "conv1", "--kind", "conv-spatial", "--chain", 2, "--star", "--repeat", 1, "--json").stdout)
    assert star["ok"] and all(s["output_layout"] == "lead" for s in star["chain"])


@pytest.mark.parametrize("args, message", [
    (["lenet5", "conv1", "--kind", "conv-spatial", "--chain", 9], "pisplit: error: --chain 9: the model has only"),
    (["lenet5", "conv1", "--kind", "conv-spatial", "--chain", 2, "--grid", "1x2"], "pisplit: error: --grid does not apply to --chain"),
    (["lenet5", "conv1", "--kind", "fused-tiles", "--chain", 2], "pisplit: error: --kind fused-tiles: a chain splits layers"),
    (["lenet5", "conv1", "--kind", "conv-spatial,fc-output"], "pisplit: error: --kind conv-spatial,fc-output: unknown split kind"),
])
def test_chain_user_errors_are_one_line(args, message):
    proc = _split(2, *args, timeout=60)
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pisplit: error")]
    assert len(errors) == 1 and errors[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
