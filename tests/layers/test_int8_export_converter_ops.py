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
