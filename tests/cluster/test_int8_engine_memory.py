"""A litert rank's memory (issue 12): beside the graph's weights it holds the exported flatbuffer, XNNPACK's
packed weights and LiteRT's arena (partitioners.cost.LITERT_EXTRA_WEIGHT_COPIES, measured per weight byte
on ResNet50); the cost model counts them on litert plans, for whole stages and for split parts alike,
and not on numpy ones (emulated litert ResNet50 float32 measured 407 MiB a rank against 112 planned)."""
from __future__ import annotations

import numpy as np
import pytest

from layers.zoo import zoo_model
from partitioners.cost import LITERT_EXTRA_WEIGHT_COPIES, CostModel, engine_weight_factors, make_cluster
from partitioners.profiles import Calibration
from partitioners.segment_table import build_segment_table
from partitioners.vocabulary import StageMode
from tests.layers.int8_split_models import int8_split_graph


@pytest.mark.parametrize("graph_of", [lambda: int8_split_graph(float_io=True), lambda: zoo_model("lenet5")],
                         ids=["int8", "float32"])
def test_litert_stages_count_the_engines_weight_copies(graph_of):
    graph = graph_of()
    n = len(graph)
    weights = np.array([graph.cost(i).weight_bytes for i in range(n)], dtype=float)
    assert weights.sum() > 0
    quantized = np.array([bool(node.attrs.get("quantized")) for node in graph.nodes])
    extra = np.where(quantized, LITERT_EXTRA_WEIGHT_COPIES["int8"], LITERT_EXTRA_WEIGHT_COPIES["float"])
    np.testing.assert_allclose(engine_weight_factors(graph, "litert"), 1.0 + extra)
    np.testing.assert_array_equal(engine_weight_factors(graph, "numpy"), np.ones(n))
    cluster = make_cluster([("rpi3", 2, None)])
    models = {e: CostModel(graph, cluster, Calibration(e)) for e in ("numpy", "litert")}
    for mode, counts in ((StageMode.SINGLE, (1,)), (StageMode.DATA_PARALLEL, (2,))):
        numpy_stage = models["numpy"].stage_cost(0, n, counts, mode)
        litert_stage = models["litert"].stage_cost(0, n, counts, mode)
        for a, b in zip(numpy_stage.memory_bytes, litert_stage.memory_bytes):
            assert b - a == pytest.approx(float((weights * extra).sum()))
    # split parts: every option of a segment carries the engine's copies of the part's weights
    litert = models["litert"]
    table, built = litert.segment_table((0, 0)), build_segment_table(litert, (0, 0))  # built: the catalogue's own part bytes
    assert np.isfinite(table.compute_s[:, 1:]).any()  # some segment can be split
    for k, (a, b) in enumerate(litert.splits.segments):
        np.testing.assert_allclose(table.weight_bytes[k, 1:], built.weight_bytes[k, 1:] * (1.0 + extra[a:b].max()))
        np.testing.assert_allclose(table.weight_bytes[k, 0, 0], (weights[a:b] * (1.0 + extra[a:b])).sum())


def test_dynamic_range_layers_count_as_int8_on_litert():
    """A dynamic-range layer (float node, int8 filter with its scales) holds its weights as int8 in the
    graph and in LiteRT's hybrid kernels: 1 byte a weight, the int8 factor of the engine's copies."""
    from layers.tflite import import_tflite_bytes
    from tests.layers.tflite_models import quantized_chain_model

    graph = import_tflite_bytes(quantized_chain_model(), "chain.tflite")
    hybrid = np.array([not n.attrs.get("quantized") and n.weight_key("kernel") in graph.quant for n in graph.nodes])
    assert hybrid.any() and not graph.quantized
    for i in np.flatnonzero(hybrid):
        node = graph.nodes[i]
        assert graph.cost(i).weight_bytes == graph.cost(i).params + 3 * node.weight_shapes.get("bias", (0,))[0]  # int8 + float32 bias
    extra = np.where(hybrid, LITERT_EXTRA_WEIGHT_COPIES["int8"], LITERT_EXTRA_WEIGHT_COPIES["float"])
    np.testing.assert_allclose(engine_weight_factors(graph, "litert"), 1.0 + extra)
