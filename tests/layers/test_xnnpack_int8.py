"""The numpy engine's two int8 arithmetics (issue 12, layers.qkernels.int8_arithmetic): by default XNNPACK's,
which LiteRT's default interpreter runs, else TFLite's reference kernels'. Where the two round differently
(exact ties: conv / fully-connected / mean requantization rounds them to even on XNNPACK, ADD toward
+infinity, float QUANTIZE to even; the reference kernels away from zero) the default arithmetic equals the
litert engine (LiteRT with XNNPACK) and the reference one does not; the switch is scoped and validated; the
splits whose parts make int32 partial sums (conv-filter, fc-input) equal the unsplit layer bit for bit in
both arithmetics, requantized once with the unsplit layer's own scales.

The whole converter models against the default interpreter: test_int8_corpus.py; every small int8 op case
in both arithmetics: test_int8_kernels.py."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from layers import PisplitError
from layers.engine import make_engine
from layers.graph import Graph, Node
from layers.qkernels import ARITHMETICS, int8_arithmetic, set_int8_arithmetic
from layers.tflite_export import export_tflite
from partitioners.splits import split_layer
from tests.conftest import require

from .int8_split_models import int8_split_graph
from .test_int8_kernels import interpreter_outputs
from .test_int8_splits import segment_input


def _q(scale, zp=0, dtype="int8", axis=0) -> dict:
    scale = list(np.atleast_1d(np.asarray(scale, np.float64)))
    return {"dtype": dtype, "scale": scale, "zero_point": [zp] * len(scale), "axis": axis}


def _ties_graph(op: str) -> tuple[Graph, dict]:
    """A one-node int8 graph whose exact result lands on half units for every odd input, and its feeds."""
    x = np.arange(-9, 10, dtype=np.int8).reshape(1, 1, 19, 1)
    if op == "conv":  # 1x1 filter 1, bias 0, scales 1 * 0.5 / 1: the accumulator times 0.5
        node = Node("c", "conv2d", ["x"], ["y"], {"quantized": True}, {"kernel": (1, 1, 1, 1), "bias": (1,)})
        quant = {"x": _q(1.0), "y": _q(1.0), "c/kernel": _q(0.5, axis=3), "c/bias": _q(0.5, dtype="int32")}
        weights = {"c/kernel": np.ones((1, 1, 1, 1), np.int8), "c/bias": np.zeros(1, np.int32)}
    elif op == "add":  # (a + b) * 0.5, b = 0: halves of a
        node = Node("a", "add", ["x", "z"], ["y"], {"quantized": True}, {})
        quant = {"x": _q(0.5), "z": _q(0.5), "y": _q(1.0)}
        weights = {}
        return Graph("ties", {"x": x.shape, "z": x.shape}, [node], ["y"], weights, {"quant": quant}), \
            {"x": x, "z": np.zeros_like(x)}
    elif op == "mean":  # the mean of two values, one of them 0
        node = Node("m", "mean", ["x"], ["y"], {"quantized": True, "axes": [1, 2], "keepdims": False}, {})
        x = np.stack([np.arange(-9, 10, dtype=np.int8), np.zeros(19, np.int8)]).T.reshape(1, 1, 2, 19)
        quant = {"x": _q(1.0), "y": _q(1.0)}
        weights = {}
    else:  # quantize: float x / scale on half units
        node = Node("q", "quantize", ["x"], ["y"], {"quantized": True}, {})
        quant = {"y": _q(0.25)}
        g = Graph("ties", {"x": x.shape}, [node], ["y"], {}, {"quant": quant})
        return g, {"x": (x.astype(np.float32) * np.float32(0.125))}
    return Graph("ties", {"x": x.shape}, [node], ["y"], weights, {"quant": quant}), {"x": x}


@pytest.mark.litert
@pytest.mark.parametrize("op", ["conv", "add", "mean", "quantize"])
def test_ties_round_as_xnnpack_by_default_and_as_the_reference_when_asked(op):
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    graph, feeds = _ties_graph(op)
    exact = {"conv": feeds["x"] * 0.5, "add": feeds["x"] * 0.5, "quantize": feeds["x"] * 4,
             "mean": feeds["x"].astype(np.float64).mean(axis=(1, 2))}[op].astype(np.float64).ravel()
    assert np.count_nonzero(exact % 1 == 0.5) >= 9  # every odd value a tie
    numpy_engine = make_engine(graph, "numpy")
    default = numpy_engine.run(feeds)["y"].astype(np.int64).ravel()
    with int8_arithmetic("reference"):
        reference = numpy_engine.run(feeds)["y"].astype(np.int64).ravel()
    # qs8-vadd adds 2**(shift - 1) and shifts right arithmetically: ties toward +infinity; the rest: to even
    np.testing.assert_array_equal(default, np.floor(exact + 0.5) if op == "add" else np.rint(exact))
    model = export_tflite(graph)
    xs = [feeds[t] for t in graph.inputs]
    np.testing.assert_array_equal(default, interpreter_outputs(model, xs, "AUTO")[0].astype(np.int64).ravel())
    np.testing.assert_array_equal(reference, interpreter_outputs(model, xs, "BUILTIN_REF")[0].astype(np.int64).ravel())
    assert not np.array_equal(default, reference)  # the two kernels' roundings do differ on these ties
    np.testing.assert_array_equal(default, make_engine(graph, "litert", threads=1).run(feeds)["y"].astype(np.int64).ravel())


def test_the_arithmetic_is_scoped_and_checked(monkeypatch):
    from layers import qkernels

    assert ARITHMETICS == ("xnnpack", "reference") and int8_arithmetic() == "xnnpack"
    with int8_arithmetic("reference"):
        assert int8_arithmetic() == "reference"
        with pytest.raises(RuntimeError):
            with int8_arithmetic("xnnpack"):
                raise RuntimeError("inner")
        assert int8_arithmetic() == "reference"  # restored after an exception too
    assert int8_arithmetic() == "xnnpack"
    with pytest.raises(PisplitError, match=r"^int8 arithmetic 'fast': expected one of xnnpack, reference$"):
        int8_arithmetic("fast")
    with pytest.raises(PisplitError, match="expected one of"):
        set_int8_arithmetic("tflite")
    graph, feeds = _ties_graph("conv")
    monkeypatch.setattr(qkernels, "_ARITHMETIC", ["ref"])  # as a bad PISPLIT_INT8_ARITHMETIC leaves it
    with pytest.raises(PisplitError, match=r"^PISPLIT_INT8_ARITHMETIC='ref': expected one of xnnpack, reference$"):
        make_engine(graph, "numpy").run(feeds)


@pytest.mark.parametrize("arithmetic", ARITHMETICS)
@pytest.mark.parametrize("layer,kind,sizes", [("conv_2d_9", "conv-filter", (11, 5, 4)), ("fully_connected_19", "fc-input", (2, 4, 3)),
                                              ("fully_connected_22", "fc-input", (5, 4, 2)), ("conv_2d_3", "conv-channel", (5, 3, 2))])
def test_partial_sum_splits_equal_the_unsplit_layer_in_both_arithmetics(arithmetic, layer, kind, sizes):
    """The root's requantize scales the summed int32 partial sums as the unsplit layer does in the arithmetic
    in force: XNNPACK's float32 scales (split_quant's attrs["scale"], or rebuilt from the real multipliers for a
    node made without them) or the reference multipliers."""
    graph = int8_split_graph()
    split = split_layer(graph, layer, kind, sizes)
    with int8_arithmetic(arithmetic):
        for seed in range(2):
            x = segment_input(graph, split, seed)
            want = split.reference(x)
            assert np.unique(want).size >= 4
            outs = [make_engine(split.part_graph(p), "numpy").run(split.slice_input(x, p))[split.part_graph(p).outputs[0]]
                    for p in range(split.n_parts)]
            assert np.array_equal(split.merge(outs), want)
            if split.layout.merge == "sum":
                post = split.post_graph()
                node = post.nodes[0]
                assert node.op == "requantize" and "scale" in node.attrs
                summed = np.sum([o.astype(np.float64) for o in outs], axis=0).astype(np.float32)
                without = dict(node.attrs)
                del without["scale"]
                old = Graph("old", post.inputs, [Node(node.name, node.op, node.inputs, node.outputs, without, {})], post.outputs, {}, post.meta)
                assert np.array_equal(old.run_node(0, [summed])[0], post.run_node(0, [summed])[0])


@pytest.mark.litert
@pytest.mark.parametrize("op", ["conv2d", "add", "sub", "mul", "max_pool2d"])
def test_fused_activation_clamps_quantize_as_xnnpack(op):
    """RELU6 on output scale 12 (6 / 12 = 0.5) and RELU_N1_TO_1 on 2 (+-0.5): XNNPACK's clamp is rint(value /
    scale + zero point), ties to even (0 and 0), the reference kernels' zero point + round-half-away (1, -1 and
    1): the default arithmetic equals the default interpreter, the reference one BUILTIN_REF."""
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 2, 128, 1)
    for activation, scale in (("relu6", 12.0), ("relu_n1_to_1", 2.0)):
        attrs = {"quantized": True, "activation": activation}
        weights, feeds, quant = {}, {"x": x}, {"x": _q(scale), "y": _q(scale)}
        if op == "conv2d":
            node = Node("n", op, ["x"], ["y"], attrs, {"kernel": (1, 1, 1, 1), "bias": (1,)})
            quant.update({"x": _q(1.0), "n/kernel": _q(1.0, axis=3), "n/bias": _q(1.0, dtype="int32")})
            weights = {"n/kernel": np.ones((1, 1, 1, 1), np.int8), "n/bias": np.zeros(1, np.int32)}
        elif op == "max_pool2d":
            node = Node("n", op, ["x"], ["y"], {**attrs, "pool": [1, 1], "strides": [1, 1], "padding": "valid"}, {})
        else:
            node = Node("n", op, ["x", "z"], ["y"], attrs, {})
            feeds["z"], quant["z"] = x[:, :, ::-1].copy(), _q(scale)
        graph = Graph("clamp", {t: v.shape for t, v in feeds.items()}, [node], ["y"], weights, {"quant": quant})
        engine = make_engine(graph, "numpy")
        default = engine.run(feeds)["y"]
        with int8_arithmetic("reference"):
            reference = engine.run(feeds)["y"]
        assert (default.min(), default.max()) == (0, 0) and reference.max() == 1
        model = export_tflite(graph)
        assert np.array_equal(default, interpreter_outputs(model, list(feeds.values()), "AUTO")[0])
        assert np.array_equal(reference, interpreter_outputs(model, list(feeds.values()), "BUILTIN_REF")[0])


@pytest.mark.litert
def test_a_scalar_int8_constant_operand_imports_and_equals_xnnpack():
    """A MUL by a scalar (shape ()) int8 constant, as the converter writes Keras Rescaling in a full-integer
    model: its one-value buffer loads as the weight's shape (it read as (1,) and the node refused it), and the
    numpy engine equals the default interpreter."""
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    from layers.tflite import import_tflite_bytes

    from .tflite_models import ACT, Int8Model

    m = Int8Model(3)
    x = m.qinput((1, 5, 7, 3), 0.05, -7)
    y = m.qop("MUL", [x, m.qconst((), 0.01, 3)], (1, 5, 7, 3), 0.03, 2, m.opts("MulOptions", fusedActivationFunction=ACT["none"]))
    model = m.finish(y)
    graph = import_tflite_bytes(model)
    assert graph.nodes[0].weight_shapes["constant"] == ()
    feeds = {t: np.arange(-128, 127, 2, dtype=np.int8)[:105].reshape(1, 5, 7, 3) for t in graph.inputs}
    got = make_engine(graph, "numpy").run(feeds)[graph.outputs[0]]
    want = interpreter_outputs(model, list(feeds.values()), "AUTO")[0]
    assert np.unique(want).size >= 20 and np.array_equal(got, want)
