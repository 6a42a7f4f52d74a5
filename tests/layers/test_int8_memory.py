"""The int8 kernels' memory (issue 12): they compute in bands of output rows and blocks of output channels
(layers.qkernels BAND_BYTES), so a layer's temporaries stay about a band's size instead of ~30x its int8
output (MobileNetV2's first 1x1 expansion held 34 MiB for a 1.2 MiB output, ResNet50's residual ADDs
25 MiB for 0.8 MiB: an int8 rank measured 3-5x the plan's memory). Bands change no value: a kernel forced
to one row and one channel at a time equals it run whole, every value."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import layers.qkernels as qk
from layers.qkernels import QRUN, QuantContext
from layers.quant import TensorQuant


def tq(scale, zp=0, dtype="int8", axis=3) -> TensorQuant:
    scale = np.atleast_1d(np.asarray(scale, np.float64))
    zp = np.atleast_1d(zp)
    return TensorQuant(dtype, tuple(float(np.float32(s)) for s in scale), tuple(int(z) for z in zp), axis)


def conv_case(rng, n, hw, cin, cout, k, stride, padding, depthwise=False, partial=False, activation="relu6"):
    x = rng.integers(-128, 128, (n, hw, hw, cin)).astype(np.int8)
    kshape = (k, k, 1, cout) if depthwise else (k, k, cin, cout)
    w = {"kernel": rng.integers(-127, 128, kshape).astype(np.int8), "bias": rng.integers(-5000, 5000, cout).astype(np.int32)}
    attrs = {"strides": (stride, stride), "padding": padding, "activation": activation, "groups": cin if depthwise else 1}
    if partial:
        attrs["partial"] = True
    ctx = QuantContext([tq(0.02, -3)], [None if partial else tq(0.05, 7)],
                       {"kernel": tq(rng.uniform(0.001, 0.01, cout), np.zeros(cout, int)), "bias": tq(1.0, 0, "int32")})
    return "conv2d", [x], attrs, w, ctx


def cases(rng):
    yield conv_case(rng, 2, 9, 5, 7, 3, 2, "same")  # padded im2col, two images
    yield conv_case(rng, 1, 8, 6, 11, 1, 1, "valid")  # 1x1 stride 1: the input itself
    yield conv_case(rng, 1, 9, 6, 4, 1, 2, "valid")  # 1x1 strided
    yield conv_case(rng, 2, 7, 6, 12, 3, 1, "same", depthwise=True)  # depthwise, multiplier 2
    yield conv_case(rng, 1, 7, 5, 6, 3, 1, "same", partial=True)  # a conv-filter part's int32 sum
    x = rng.integers(-128, 128, (3, 40)).astype(np.int8)
    for per_channel in (False, True):
        scales = rng.uniform(0.001, 0.01, 9) if per_channel else 0.004
        yield "dense", [x], {"activation": None}, \
            {"kernel": rng.integers(-127, 128, (40, 9)).astype(np.int8), "bias": rng.integers(-999, 999, 9).astype(np.int32)}, \
            QuantContext([tq(0.03, 5)], [tq(0.07, -2)], {"kernel": tq(scales, np.zeros(np.size(scales), int), axis=1)})
    a = rng.integers(-128, 128, (1, 6, 5, 4)).astype(np.int8)
    b = rng.integers(-128, 128, (1, 6, 5, 4)).astype(np.int8)
    yield "add", [a, b], {"activation": "relu"}, {}, QuantContext([tq(0.02, 1), tq(0.03, -4)], [tq(0.04, 2)])
    row = rng.integers(-128, 128, (1, 1, 5, 4)).astype(np.int8)  # broadcast along axis 1
    yield "mul", [a, row], {}, {}, QuantContext([tq(0.02, 1), tq(0.03, -4)], [tq(0.01, 2)])
    yield "add", [a], {}, {"constant": rng.integers(-128, 128, (1, 6, 5, 4)).astype(np.int8)}, \
        QuantContext([tq(0.02, 1)], [tq(0.04, 2)], {"constant": tq(0.05, 3)})
    yield "relu6", [a], {}, {}, QuantContext([tq(0.02, 1)], [tq(0.03, -1)])
    yield "quantize", [rng.standard_normal((1, 6, 5, 4)).astype(np.float32)], {}, {}, QuantContext([None], [tq(0.02, 3)])
    yield "dequantize", [a], {}, {}, QuantContext([tq(0.02, 1)], [None])
    yield "int32_halves", [rng.integers(-(1 << 30), 1 << 30, (1, 6, 5, 4)).astype(np.int32)], {}, {}, QuantContext([tq(1.0, 0, "int32")], [None])


def test_bands_change_no_value(monkeypatch):
    rng = np.random.default_rng(12)
    whole = [QRUN[op](xs, attrs, w, ctx)[0] for op, xs, attrs, w, ctx in cases(rng)]
    monkeypatch.setattr(qk, "BAND_BYTES", 1)  # one output row (one value's row) and one channel at a time
    monkeypatch.setattr(qk, "KERNEL_BLOCK_BYTES", 1)
    rng = np.random.default_rng(12)
    for (op, xs, attrs, w, ctx), want in zip(cases(rng), whole):
        got = QRUN[op](xs, attrs, w, ctx)[0]
        assert got.dtype == want.dtype and got.shape == want.shape, op
        assert np.array_equal(got, want), f"{op}: {int((got != want).sum())} values differ in bands"
    assert len(whole) == 14 and all(np.unique(y).size > 3 for y in whole)


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return tracemalloc.get_traced_memory()[1] - base, out
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("what", ["conv 1x1", "conv 3x3", "depthwise", "add"])
def test_a_layer_holds_a_band_not_the_whole_layer(what):
    """MobileNetV2-sized layers (112 x 112): the peak of the int8 kernel is its output (and its padded
    int8 input) plus about a band (BAND_BYTES), where it was 30x its output."""
    rng = np.random.default_rng(3)
    if what == "add":
        a, b = (rng.integers(-128, 128, (1, 112, 112, 24)).astype(np.int8) for _ in range(2))
        op, xs, attrs, w, ctx = "add", [a, b], {}, {}, QuantContext([tq(0.02, 1), tq(0.03, -4)], [tq(0.04, 2)])
    else:
        k, cin, cout, dw = {"conv 1x1": (1, 16, 96, False), "conv 3x3": (3, 16, 32, False), "depthwise": (3, 96, 96, True)}[what]
        op, xs, attrs, w, ctx = conv_case(rng, 1, 112, cin, cout, k, 1, "same", depthwise=dw)
    peak, y = peak_bytes(lambda: QRUN[op](xs, attrs, w, ctx)[0])
    padded = xs[0].nbytes * 1.05 if what != "add" else 0  # the int8 input padded with its zero point
    assert y.dtype == np.int8 and y.nbytes >= 300_000
    assert peak <= y.nbytes + padded + 2.5 * qk.BAND_BYTES, f"{what}: {peak / 2**20:.1f} MiB for a {y.nbytes / 2**20:.1f} MiB output"


def test_binary_ops_read_large_outputs_from_their_pair_table(monkeypatch):
    """ADD, SUB and MUL of int8 tensors: the op's arithmetic on all 256 x 256 operand pairs, read back
    (qkernels.tabulated), equals the op run directly, broadcast operands and constants included."""
    rng = np.random.default_rng(21)
    a = rng.integers(-128, 128, (1, 9, 7, 5)).astype(np.int8)
    b = rng.integers(-128, 128, (1, 9, 7, 5)).astype(np.int8)
    row = rng.integers(-128, 128, (1, 1, 7, 5)).astype(np.int8)
    constant = rng.integers(-128, 128, (5,)).astype(np.int8)
    cases = [("add", [a, b], {"activation": "relu6"}, {}, QuantContext([tq(0.02, 1), tq(0.03, -4)], [tq(0.04, 2)])),
             ("sub", [a, row], {}, {}, QuantContext([tq(0.05, -3), tq(0.01, 9)], [tq(0.06, 0)])),
             ("mul", [row, a], {"activation": "relu"}, {}, QuantContext([tq(0.02, 1), tq(0.03, -4)], [tq(0.01, 2)])),
             ("add", [a], {"constant_first": True}, {"constant": constant},
              QuantContext([tq(0.02, 1)], [tq(0.04, 2)], {"constant": tq(0.05, 3)}))]
    direct = [QRUN[op](xs, attrs, w, ctx)[0] for op, xs, attrs, w, ctx in cases]  # small: computed directly
    monkeypatch.setattr(qk, "TABLE_MIN_VALUES", 0)
    for (op, xs, attrs, w, ctx), want in zip(cases, direct):
        got = QRUN[op](xs, attrs, w, ctx)[0]
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), op
    assert qk._PAIR_TABLES and all(t.size == 256 * 256 for t in qk._PAIR_TABLES.values())


# --- the plan's count of a node's working set (issue 12) ------------------------------------------------------

def _one_node_graph(op, xs, attrs, w, ctx, hybrid=False):
    """The node of a QRUN case as a one-node graph with its quantization (or a dynamic-range float node)."""
    from layers.graph import Graph, Node

    names = [f"x{i}" for i in range(len(xs))]
    quant = {} if hybrid else {**dict(zip(names, ctx.inputs)), "y": ctx.outputs[0]}
    for p, q in ctx.weights.items():
        quant[f"n/{p}"] = q
    node = Node("n", op, names, ["y"], {**attrs, **({} if hybrid else {"quantized": True})}, {p: a.shape for p, a in w.items()})
    weights = {f"n/{p}": a for p, a in w.items()}
    return Graph("one", {n: x.shape for n, x in zip(names, xs)}, [node], ["y"], weights,
                 {"quant": {k: v.to_dict() for k, v in quant.items() if v}})


def layer_cases(rng):
    """ResNet50- and MobileNetV2-sized int8 layers, and dynamic-range ones: several filter blocks (KERNEL_BLOCK_BYTES),
    sums past EXACT_F32_TERMS, one band or many."""
    yield "conv 1x1 512->2048", conv_case(rng, 1, 7, 512, 2048, 1, 1, "valid")
    yield "conv 3x3 512->512", conv_case(rng, 1, 7, 512, 512, 3, 1, "same")
    yield "conv 1x1 56x56", conv_case(rng, 1, 56, 64, 256, 1, 1, "valid")
    yield "conv 3x3 56x56", conv_case(rng, 1, 56, 64, 64, 3, 1, "same")
    yield "depthwise 112x112", conv_case(rng, 1, 112, 96, 96, 3, 2, "same", depthwise=True)
    x = rng.integers(-128, 128, (1, 2048)).astype(np.int8)
    yield "dense 2048->1000", ("dense", [x], {"activation": None},
                               {"kernel": rng.integers(-127, 128, (2048, 1000)).astype(np.int8), "bias": rng.integers(-999, 999, 1000).astype(np.int32)},
                               QuantContext([tq(0.03, 5)], [tq(0.07, -2)], {"kernel": tq(rng.uniform(0.001, 0.01, 1000), np.zeros(1000, int), axis=1),
                                                                             "bias": tq(1.0, 0, "int32")}))
    a, b = (rng.integers(-128, 128, (1, 56, 56, 256)).astype(np.int8) for _ in range(2))
    yield "add 56x56x256", ("add", [a, b], {"activation": "relu"}, {}, QuantContext([tq(0.02, 1), tq(0.03, -4)], [tq(0.04, 2)]))


def hybrid_cases(rng):
    """Dynamic-range layers (int8 filters with their scales, float activations): qkernels.run_hybrid."""
    for name, k, hw, cin, cout, depthwise in [("hybrid conv 1x1", 1, 7, 512, 2048, False), ("hybrid conv 3x3", 3, 7, 512, 512, False),
                                              ("hybrid depthwise", 3, 56, 64, 64, True)]:
        shape = (k, k, 1, cout) if depthwise else (k, k, cin, cout)
        attrs = {"padding": "same", "activation": "relu", **({"groups": cin} if depthwise else {})}
        w = {"kernel": rng.integers(-127, 128, shape).astype(np.int8), "bias": rng.standard_normal(cout).astype(np.float32)}
        x = rng.standard_normal((1, hw, hw, cin)).astype(np.float32)
        yield name, ("conv2d", [x], attrs, w, QuantContext([None], [None], {"kernel": tq(rng.uniform(0.001, 0.01, cout), np.zeros(cout, int))}))
    x = rng.standard_normal((1, 2048)).astype(np.float32)
    w = {"kernel": rng.integers(-127, 128, (2048, 1000)).astype(np.int8), "bias": rng.standard_normal(1000).astype(np.float32)}
    yield "hybrid dense", ("dense", [x], {}, w, QuantContext([None], [None], {"kernel": tq(rng.uniform(0.001, 0.01, 1000), np.zeros(1000, int), axis=1)}))


@pytest.mark.parametrize("kind", ["int8", "hybrid"])
def test_the_plan_counts_what_a_layer_holds(kind):
    """graph.cost's working set of an int8 or dynamic-range node (layers.qkernels.work_bytes, hybrid_work_bytes;
    partitioners.cost builds a rank's memory from it) covers what the kernel allocates beyond its output, and
    not by much: the float count it replaced said 0 to 1 MiB for layers that held 4.5 MiB (an int8 rank measured
    1.2-1.4x its plan), and a dynamic-range fully-connected layer held 4x its int8 filter as a float copy."""
    rng = np.random.default_rng(5)
    for name, (op, xs, attrs, w, ctx) in (layer_cases(rng) if kind == "int8" else hybrid_cases(rng)):
        graph = _one_node_graph(op, xs, attrs, w, ctx, hybrid=kind == "hybrid")
        graph.node_weights(graph.nodes[0], dequantize=False)  # weights are loaded before frames run
        peak, y = peak_bytes(lambda: graph.run_node(0, xs)[0])
        held = peak - y.nbytes
        model = graph.cost(0).work_bytes
        assert held <= 1.05 * model + (64 << 10), f"{name}: holds {held / 2**20:.2f} MiB, the plan counts {model / 2**20:.2f}"
        assert model <= 1.6 * held + (256 << 10), f"{name}: the plan counts {model / 2**20:.2f} MiB, it holds {held / 2**20:.2f}"
        assert graph.cost(0).scratch_bytes == 0  # no float im2col buffer kept from node to node
