"""Plans of int8 models (issue 12): links carry int8 activations at 1 byte a value (the runtime's
FrameCodec packs them so), the cost model counts int8 weights and activations in their own dtype,
and device profiles price int8 layers at each kind's cited int8 rate (compute.int8 per engine)."""
from __future__ import annotations

import statistics

import numpy as np
import pytest

from cluster.runtime import FrameCodec
from layers.ops import numel
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import device_profile
from partitioners.planners import make_plan
from partitioners.profiles import Calibration, int8_dilation, int8_speedup, op_class
from tests.layers.int8_split_models import int8_split_graph


def test_frame_codec_packs_int8_tensors_at_one_byte():
    graph = int8_split_graph(float_io=True)
    first_conv = next(i for i, n in enumerate(graph.nodes) if n.op == "conv2d")
    cut = first_conv + 1  # after the first conv: its int8 output, read by the depthwise and the residual ADD
    names = graph.cut_tensors(cut)
    assert [graph.dtype(t) for t in names] == [np.int8]
    codec = FrameCodec(graph, names)
    n = numel(graph.shapes[names[0]])
    assert n % 4 != 0 and codec.payload_bytes == -(-n // 4) * 4  # 1430 values in 1432 bytes, not 5720
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, graph.shapes[names[0]]).astype(np.int8)
    buf = codec.pack(9, {names[0]: x}, start_ns=5)
    assert buf.dtype == np.float32 and FrameCodec.header(buf) == (9, 5, 0, 0)
    back = codec.unpack(buf)[names[0]]
    assert back.dtype == np.int8 and np.array_equal(back, x)
    # float and int8 tensors in one frame: each at its own offset and dtype
    mixed = FrameCodec(graph, [next(iter(graph.inputs)), names[0]])
    image = rng.standard_normal(graph.inputs[next(iter(graph.inputs))]).astype(np.float32)
    out = mixed.unpack(mixed.pack(1, {next(iter(graph.inputs)): image, names[0]: x}))
    assert out[names[0]].dtype == np.int8 and np.array_equal(out[names[0]], x)
    assert out[next(iter(graph.inputs))].dtype == np.float32 and np.array_equal(out[next(iter(graph.inputs))], image)
    assert mixed.payload_bytes == image.nbytes + codec.payload_bytes


def test_int8_speedups_are_the_cited_medians():
    for kind in ("rpi3", "rpi4"):
        block = device_profile(kind).compute["int8"]["litert"]
        ratios = [c["float32_ms"] / c["int8_ms"] for c in block["checks"]]
        assert all(abs(c["speedup"] - r) < 1e-3 for c, r in zip(block["checks"], ratios))
        assert int8_speedup(kind, "litert") == pytest.approx(statistics.median(ratios), abs=1e-3)
        assert "github.com/Tencent/ncnn" in block["source"]
    assert 1.4 < int8_speedup("rpi3", "litert") < 1.7
    assert int8_speedup("rpi5", "litert") == int8_speedup("rpi4", "litert")  # relative_to rpi4
    assert int8_speedup("rpi3", "numpy") < 1  # pisplit's numpy int8 kernels: slower than its float32 ones
    # the reference host's int8 path gains more than a Pi's: emulation dilates int8 layers by the ratio
    assert int8_speedup("host", "litert") > 2 * int8_speedup("rpi3", "litert")
    assert int8_dilation("rpi3", "litert") == pytest.approx(int8_speedup("host", "litert") / int8_speedup("rpi3", "litert"))
    assert int8_dilation("rpi4", "numpy") == 1.0


@pytest.mark.parametrize("engine", ["numpy", "litert"])
def test_int8_nodes_are_priced_at_the_kind_int8_rate(engine):
    graph = int8_split_graph(float_io=True)
    calibration = Calibration(engine)
    for kind in ("rpi3", "rpi4"):
        profile, scale = calibration.resolve(kind)
        classes = calibration.class_scales(kind)  # litert: the kind's per-op-class scale over the reference one
        assert (classes is None) == (engine == "numpy")
        for i, node in enumerate(graph.nodes):
            base = profile.node_seconds(graph, i) * (classes[op_class(graph, i)] / scale if classes else 1.0)
            want = base / int8_speedup(kind, engine) if node.attrs.get("quantized") else base
            assert calibration.node_seconds(kind, graph, i) == pytest.approx(want)
    conv = next(i for i, n in enumerate(graph.nodes) if n.op == "conv2d")
    assert calibration.node_seconds("rpi3", graph, conv) > 0


def test_plan_of_an_int8_model_counts_int8_bytes():
    graph = int8_split_graph(float_io=True)
    model = CostModel(graph, make_cluster([("rpi3", 3, None)], 94e6), Calibration("numpy"))
    for c in range(1, len(graph)):
        assert model.cut_bytes[c] == sum(numel(graph.shapes[t]) * (1 if graph.dtype(t) == np.int8 else 4)
                                         for t in graph.cut_tensors(c))
    assert model.weight_bytes.sum() == graph.totals()["weight_bytes"]
    int8_weights = sum(numel(s) for n in graph.nodes for p, s in n.weight_shapes.items() if p == "kernel")
    assert graph.totals()["weight_bytes"] < 4 * int8_weights  # int8 filters, int32 biases: not float32
    for objective in ("throughput", "latency"):
        plan = make_plan(graph, model, "dp", objective)
        assert plan.predicted_throughput_fps > 0
    # the planner's split catalogue offers int8 conv / dense layers every kind, partial sums included
    for i, node in enumerate(graph.nodes):
        if node.op in ("conv2d", "dense") and i in model.segment_at:
            offered = set(model.splits._kind_costs(i))
            assert offered & {"fc-input", "conv-filter"}, (node.name, offered)


def test_litert_plans_of_int8_models_leave_partial_sums_out():
    """The litert engine has no TFLite form for an int8 part's int32 partial sums: planning for it, the
    catalogue offers int8 layers no fc-input / conv-filter (the numpy engine gets them)."""
    graph = int8_split_graph(float_io=True)
    cluster = make_cluster([("rpi3", 3, None)], 94e6)
    for engine, partial in (("litert", False), ("numpy", True)):
        model = CostModel(graph, cluster, Calibration(engine))
        offered = set().union(*(set(model.splits._kind_costs(i)) for i, n in enumerate(graph.nodes)
                                if n.op in ("conv2d", "dense") and i in model.segment_at))
        assert bool(offered & {"fc-input", "conv-filter"}) == partial and "conv-channel" in offered
        plan = make_plan(graph, model, "dp", "latency")
        assert partial or not {s.kind for st in plan.stages for s in st.segments} & {"fc-input", "conv-filter"}
