"""`pisplit bench`: pisplit's engines and the plain LiteRT interpreter side by side (no timing asserts)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import require, run_pisplit
from tests.layers.tflite_models import chain_model

pytestmark = pytest.mark.litert


def pisplit(*args):
    return run_pisplit(*args, check=False)

@pytest.fixture(autouse=True)
def _litert():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")


def test_bench_zoo_model_json():
    proc = pisplit("bench", "lenet5", "--repeat", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {r["engine"]: r for r in doc["rows"]}
    assert set(rows) == {"numpy", "litert", "plain litert"} and doc["threads"] == 1
    assert rows["plain litert"]["speed_vs_plain_litert"] == 1.0
    assert all(r["median_ms"] > 0 and r["best_ms"] <= r["median_ms"] for r in rows.values())


def test_bench_tflite_file_and_one_layer_table(tmp_path):
    path = tmp_path / "chain.tflite"
    path.write_bytes(chain_model())
    proc = pisplit("bench", path, "--engine", "auto,litert", "--repeat", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["source"] == str(path) and [r["engine"].split()[0] for r in doc["rows"]] == ["auto", "litert", "plain"]
    proc = pisplit("bench", "vgg16", "--layer", "block1_conv2", "--engine", "litert", "--repeat", "1")
    assert proc.returncode == 0, proc.stderr
    assert "block1_conv2" in proc.stdout and "plain litert" in proc.stdout


def test_bench_bad_arguments_are_one_line_errors():
    proc = pisplit("bench", "lenet5", "--engine", "numpy,gpu")
    assert proc.returncode == 1 and "--engine 'numpy,gpu'" in proc.stderr and "Traceback" not in proc.stderr
    proc = pisplit("bench", "lenet5", "--layer", "conv9")
    assert proc.returncode == 1 and "no node named 'conv9'" in proc.stderr
