"""`pisplit models`, `show`, `infer`: documents, files and one-line errors without tracebacks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from layers import zoo_model
from tests.conftest import run_pisplit



def pisplit(*args, check=True):
    return run_pisplit(*args, check=check)

def test_models_json_lists_the_zoo():
    doc = json.loads(pisplit("models", "--json").stdout)
    names = {m["name"]: m for m in doc["models"]}
    assert {"lenet5", "alexnet", "vgg16", "resnet50", "xception", "mobilenet_v1", "c3d"} <= set(names)
    assert names["vgg16"]["params"] == 138_357_544
    assert names["c3d"]["inputs"]["input"] == [1, 16, 112, 112, 3]


def test_show_json_has_nodes_and_totals():
    doc = json.loads(pisplit("show", "alexnet", "--json").stdout)
    assert doc["totals"]["params"] == 60_965_224
    assert doc["totals"]["flops"] == sum(n["flops"] for n in doc["nodes"])
    assert doc["totals"]["weight_bytes"] == sum(n["weight_bytes"] for n in doc["nodes"])
    fc6 = next(n for n in doc["nodes"] if n["name"] == "fc6")
    assert fc6["output_shape"] == [1, 4096] and fc6["weight_bytes"] == (9216 * 4096 + 4096) * 4


def test_show_table_is_readable():
    out = pisplit("show", "lenet5").stdout
    for word in ("conv1", "fc3", "total", "FLOPs"):
        assert word in out


def test_infer_reads_and_writes_arrays(tmp_path, rng):
    g = zoo_model("lenet5")
    x = rng.standard_normal((32, 32, 1)).astype(np.float32)  # batch axis optional
    np.save(tmp_path / "x.npy", x)
    doc = json.loads(pisplit("infer", "lenet5", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--json").stdout)
    y = np.load(tmp_path / "y.npy", allow_pickle=False)
    np.testing.assert_allclose(y, g.forward(x[None]), rtol=1e-6)
    assert doc["outputs"]["prob"]["argmax"] == int(y.argmax())
    r = json.loads(pisplit("infer", "lenet5", "--random", "--seed", "3", "--json").stdout)
    assert r["outputs"]["prob"]["shape"] == [1, 10]


@pytest.mark.parametrize("args,message", [
    (["show", "resnet51"], "model 'resnet51': not a zoo model"),
    (["infer", "lenet5", "--input", "/nonexistent/x.npy"], "input /nonexistent/x.npy: no such file"),
    (["infer", "lenet5"], "one of the arguments --input --random is required"),
    (["show", "alexnet", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["show", "/etc/hostname"], "unknown file type"),
])
def test_errors_are_one_line_without_traceback(args, message):
    proc = pisplit(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_wrongly_shaped_and_unreadable_inputs(tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((28, 28, 1), np.float32))
    proc = pisplit("infer", "lenet5", "--input", tmp_path / "wrong.npy", check=False)
    assert proc.returncode == 1 and "shape (28, 28, 1) does not match model input input (1, 32, 32, 1)" in proc.stderr
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    proc = pisplit("infer", "lenet5", "--input", tmp_path / "junk.npy", check=False)
    assert proc.returncode == 1 and "not a readable .npy array" in proc.stderr and "Traceback" not in proc.stderr
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    proc = pisplit("infer", "lenet5", "--input", tmp_path / "obj.npy", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback():
    proc = pisplit("--debug", "show", "resnet51", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
