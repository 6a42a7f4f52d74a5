"""The converter patterns of issue 12 on the litert engine: TRANSPOSE_CONV (its output shape taken from
the input's batch, so any batch runs), TILE and DEPTH_TO_SPACE are exported to LiteRT (they were refused:
"has no TFLite equivalent"), and LiteRT's kernels equal pisplit's numpy ones (float32, 1e-5 relative),
for one frame and for three."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from layers.builder import GraphBuilder
from layers.engine import make_engine
from tests.conftest import require

pytestmark = pytest.mark.litert


def decoder(padding: str, activation):
    b = GraphBuilder(f"decoder_{padding}", seed=4)
    x = b.input("x", (1, 5, 6, 8))
    y = b.add("conv2d_transpose", x, "up1", {"strides": (2, 2), "padding": padding, "activation": activation,
                                            "output_size": (10, 12) if padding == "same" else (11, 13)},
              {"kernel": ((3, 3, 8, 6), "he"), "bias": ((6,), "he")})
    y = b.add("tile", y, "tile", {"multiples": (2, 1, 2)})
    y = b.add("conv2d_transpose", y, "up2", {"strides": (1, 1), "padding": "valid", "output_size": (
        b.shape(y)[1] + 1, b.shape(y)[2] + 1)}, {"kernel": ((2, 2, 12, 8), "he")})
    y = b.add("depth_to_space", y, "d2s", {"block": 2})
    return b.build(y)


@pytest.mark.parametrize("padding,activation", [("same", "relu"), ("valid", None)])
def test_transpose_conv_tile_and_depth_to_space_run_on_litert(padding, activation):
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    graph = decoder(padding, activation)
    assert [n.op for n in graph.nodes] == ["conv2d_transpose", "tile", "conv2d_transpose", "depth_to_space"]
    litert, reference = make_engine(graph, "litert"), make_engine(graph, "numpy")
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 5, 6, 8), dtype=np.float32)
        got, want = litert.run({"x": x})[graph.outputs[0]], reference.run({"x": x})[graph.outputs[0]]
        assert got.shape == want.shape == (batch, *graph.shapes[graph.outputs[0]][1:])
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), np.abs(got - want).max()


def test_export_lets_the_weights_it_loaded_go():
    """export_tflite copies each node's weights into the flatbuffer and lets the graph's loaded copies go
    again (a litert engine kept the model's weights a third time: float32 ResNet50 peaked at 551 MiB,
    now 378); weights loaded before the export stay, and a second export reads them again, byte for byte."""
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    from layers.tflite import import_tflite_bytes
    from layers.tflite_export import export_tflite
    from tests.layers.int8_split_models import int8_split_model

    graph = import_tflite_bytes(int8_split_model(float_io=True), name="release")
    overlay = graph.weights
    kept = graph.nodes[1]
    graph.node_weights(kept)  # loaded before: stays
    had = set(overlay._cache)
    assert had and all(k.startswith(kept.name) for k in had)
    first = export_tflite(graph)
    assert set(overlay._cache) == had
    assert export_tflite(graph) == first
    litert, reference = make_engine(graph, "litert"), make_engine(graph, "numpy")
    assert set(overlay._cache) == had
    name = next(iter(graph.inputs))
    x = np.random.default_rng(0).uniform(-2, 2, graph.inputs[name]).astype(np.float32)
    got, want = litert.run({name: x})[graph.outputs[0]], reference.run({name: x})[graph.outputs[0]]
    scale = graph.quant[graph.nodes[-1].inputs[0]].scale[0]
    assert np.abs(got - want).max() <= 1.0001 * scale  # XNNPACK's int8 rounding: within one output unit
