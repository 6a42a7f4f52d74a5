"""Real dynamic-range models from the TensorFlow Lite converter (Optimize.DEFAULT without a representative
dataset: int8 filters with per-channel scales on CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED, float
activations; Keras MobileNetV2 and ResNet50, random weights), built by scripts/build_corpus into
${XDG_CACHE_HOME:-~/.cache}/pisplit-corpus.

- The import keeps every int8 filter as int8 with its scales (never its integers alone, never a float
  copy), and the litert engine writes them back as hybrid layers: its output equals LiteRT on the file
  bit for bit, and its flatbuffer holds as many int8 filters as the file.
- The numpy engine runs LiteRT's hybrid arithmetic (layers.qkernels: XNNPACK's qd8 path for CONV_2D and
  FULLY_CONNECTED, TFLite's builtin hybrid DEPTHWISE_CONV_2D, the model's small float layers in XNNPACK's
  accumulation order): within 1e-4 of the largest output of LiteRT's default interpreter, tested on two
  seeds. Measured (seeds 0-2): MobileNetV2 7e-8..1.5e-7, ResNet50 1.3e-7..3.2e-7 of the largest output (a
  last-ulp difference in the final SOFTMAX); every hybrid layer equals LiteRT's bit for bit on the same
  input. Before, with float arithmetic on the dequantized filters, the numpy engine was 1-5% off, as far
  as LiteRT's XNNPACK and builtin kernels are from each other (9.6% / 8.0% on MobileNetV2, 1.6% / 0.7% on
  ResNet50). Integers read without their scales miss by far more.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from layers import PisplitError
from layers.engine import make_engine
from layers.graph import Graph
from layers.tflite import import_tflite

from .test_tflite_import import litert_outputs

pytestmark = pytest.mark.litert

CORPUS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pisplit-corpus"
MODELS = sorted(p.name for p in CORPUS.glob("*_dynamic_range.tflite")) if CORPUS.is_dir() else []


def _int8_tensors(model: bytes) -> int:
    from ai_edge_litert import schema_py_generated as S

    sg = S.Model.GetRootAs(model, 0).Subgraphs(0)
    return sum(sg.Tensors(i).Type() == S.TensorType.INT8 for i in range(sg.TensorsLength()))


@pytest.mark.skipif(not MODELS, reason=f"no dynamic-range models in {CORPUS} (bash scripts/build_corpus builds them)")
@pytest.mark.parametrize("name", MODELS or ["none"])
def test_corpus_dynamic_range_model(name):
    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert is not installed")
    data = (CORPUS / name).read_bytes()
    graph = import_tflite(CORPUS / name)
    assert not graph.quantized  # float activations: no integer kernels
    kernels = [n.weight_key("kernel") for n in graph.nodes if "kernel" in n.weight_shapes]
    hybrid = [k for k in kernels if k in graph.quant]
    assert hybrid and all(graph.quant[k].dtype == "int8" and graph.quant[k].per_channel for k in hybrid)
    assert all(np.asarray(graph.weights[k]).dtype == np.int8 for k in hybrid)  # kept as int8, 1 byte a weight
    node = next(n for n in graph.nodes if n.weight_key("kernel") in hybrid)
    assert graph.node_weights(node)["kernel"].dtype == np.float32  # read as reals only with the scales
    assert graph.cost(graph.node_index(node.name)).weight_bytes < 4 * graph.cost(graph.node_index(node.name)).params

    litert, numpy = make_engine(graph, "litert", threads=1), make_engine(graph, "numpy")
    assert _int8_tensors(litert.model) == _int8_tensors(data) == len(hybrid)  # LiteRT's hybrid layers, as in the file
    # the same numbers without the scales: what a reader that drops them would compute
    unscaled = Graph(graph.name, graph.inputs, graph.nodes, graph.outputs, graph.weights,
                     {k: v for k, v in graph.meta.items() if k != "quant"})
    for seed in (0, 1):
        feeds = graph.random_input(seed)
        want = litert_outputs(data, list(feeds.values()))
        got, ref = litert.run(feeds), numpy.run(feeds)
        for t, w in zip(graph.outputs, want):
            assert np.isfinite(w).all()
            assert got[t].dtype == w.dtype and np.array_equal(got[t], w), f"{name}: the litert engine differs from LiteRT on the file"
            assert np.isfinite(ref[t]).all(), f"{name}: the numpy engine made NaN or inf"
            error = float(np.abs(ref[t] - w).max() / np.abs(w).max())
            assert error < 1e-4 and ref[t].argmax() == w.argmax(), f"{name} seed {seed}: numpy engine {error:.3g} of the largest output off"
        try:  # the numpy engine refuses a non-finite answer to finite inputs (the NaN); or it is far off
            bad = make_engine(unscaled, "numpy").run(feeds)
        except PisplitError as exc:
            assert "NaN or infinite" in str(exc)
        else:
            assert any(np.abs(bad[t] - w).max() > 0.1 * np.abs(w).max() for t, w in zip(graph.outputs, want))
