"""int8 graphs on the litert engine (issue 12): layers.tflite_export writes int8 activations, per-channel
int8 filters and int32 biases with their quantization, so LiteRT runs its integer kernels (XNNPACK's int8
path). pisplit's numpy kernels compute XNNPACK's arithmetic by default (layers.qkernels.int8_arithmetic),
so per op, per model and per split part the litert engine equals the numpy engine bit for bit. Split parts
on the litert engine merge to the unsplit litert graph's output exactly."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from layers import PisplitError
from layers.engine import make_engine
from layers.tflite import import_tflite_bytes
from partitioners.splits import split_layer
from tests.conftest import require

from .int8_split_models import int8_split_graph
from .test_int8_splits import CASES, case_id, segment_input
from .tflite_models import INT8_CASES

pytestmark = pytest.mark.litert

@pytest.fixture(autouse=True)
def _litert():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")


def units(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> float:
    assert a.dtype == b.dtype and a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / scale) if a.size else 0.0


@pytest.mark.parametrize("case", sorted(INT8_CASES))
def test_int8_op_on_litert_equals_numpy(case):
    graph = import_tflite_bytes(INT8_CASES[case]())
    numpy_engine = make_engine(graph, "numpy")
    try:
        litert = make_engine(graph, "litert")
    except PisplitError as exc:  # XNNPACK refuses per-tensor int8 conv filters: one line, not a crash
        assert case == "conv_3x3_dilation2_relu_per_tensor" and "rejected the model" in str(exc)
        return
    for seed in range(3):
        x = graph.random_input(seed)
        a, b = numpy_engine.run(x), litert.run(x)
        for t in graph.outputs:
            scale = graph.quant[graph.nodes[-1].inputs[0]].scale[0] if a[t].dtype.kind == "f" else 1.0
            d = units(a[t], b[t], scale)
            assert d == 0, f"{case}: {d} units from the numpy engine"


@pytest.mark.parametrize("float_io", [False, True])
def test_int8_model_on_litert_equals_numpy(float_io):
    graph = int8_split_graph(float_io)
    a, b = make_engine(graph, "numpy"), make_engine(graph, "litert")
    out = graph.outputs[0]
    scale = graph.quant[graph.nodes[-1].inputs[0]].scale[0] if float_io else 1.0
    for seed in range(3):
        x = graph.random_input(seed)
        ya, yb = a.run(x)[out], b.run(x)[out]
        assert ya.dtype == yb.dtype == (np.float32 if float_io else np.int8)
        assert units(ya, yb, scale) == 0


@pytest.mark.parametrize("case", [c for c in CASES if c[1] not in ("fc-input", "conv-filter")], ids=case_id)
def test_int8_split_on_litert_equals_unsplit_litert(case):
    """Each part is its own flatbuffer with its slice of the int8 weights and their scales."""
    layer, kind, sizes, options = case
    graph = int8_split_graph()
    split = split_layer(graph, layer, kind, sizes, **options)
    whole = split_layer(graph, layer, "data-parallel", 1, last=split.graph.nodes[split.node_stop - 1].name)
    x = segment_input(graph, split, 0, 3 if kind == "data-parallel" else 1)
    got = split.run(x, engine="litert")
    want = whole.run(x, engine="litert")
    assert got.dtype == np.int8 and np.array_equal(got, want)
    assert units(got, split.reference(x)) == 0  # the numpy engine's unsplit layer


def test_int8_partial_sums_are_refused_by_litert():
    split = split_layer(int8_split_graph(), "conv_2d_9", "conv-filter", (12, 8))
    with pytest.raises(PisplitError, match=r"node conv_2d_9\[0:12\] makes int32 partial sums .* use the numpy engine"):
        make_engine(split.part_graph(0), "litert")
