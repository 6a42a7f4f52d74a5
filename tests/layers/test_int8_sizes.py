"""int8 graphs count their own byte sizes (issue 12): int8 weights and activations 1 byte an element,
int32 biases 4, float tensors 4, in node costs (`pisplit show`) and in the bytes live at a cut."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from layers.graph import DTYPE_BYTES
from layers.ops import numel
from layers.tflite import import_tflite_bytes
from tests.conftest import require

from .tflite_models import INT8_CASES, int8_float_io_case

pytestmark = pytest.mark.litert


@pytest.fixture(autouse=True)
def _schema():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")


def test_int8_conv_costs_count_one_byte_elements():
    graph = import_tflite_bytes(INT8_CASES["conv_3x3_same_stride2_relu6"]())
    node = next(n for n in graph.nodes if n.op == "conv2d")
    cost = graph.cost(node.name)
    kernel, bias = node.weight_shapes["kernel"], node.weight_shapes["bias"]
    assert graph.node_weights(node)["kernel"].dtype == np.int8 and graph.node_weights(node)["bias"].dtype == np.int32
    assert cost.weight_bytes == numel(kernel) + 4 * numel(bias)
    assert cost.output_bytes == numel(graph.shapes[node.outputs[0]])
    assert cost.input_bytes == numel(graph.shapes[node.inputs[0]])
    assert graph.cut_bytes(0) == numel(graph.shapes[node.inputs[0]])


def test_float_io_int8_model_counts_float_ends_at_four_bytes():
    graph = import_tflite_bytes(int8_float_io_case())
    first = graph.nodes[0]
    assert first.op == "quantize"
    assert graph.cut_bytes(0) == DTYPE_BYTES * sum(numel(s) for s in graph.inputs.values())
    assert graph.cost(first.name).output_bytes == numel(graph.shapes[first.outputs[0]])
    last = graph.nodes[-1]
    assert last.op == "dequantize" and graph.cost(last.name).output_bytes == DTYPE_BYTES * numel(graph.shapes[last.outputs[0]])
