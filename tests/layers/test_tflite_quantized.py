"""Quantized weights in .tflite files (issue 12): dynamic-range models (int8 weights with per-channel
scales read directly by CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED, float activations) and int8 /
uint8 weights with zero points behind DEQUANTIZE, against the LiteRT interpreter; full-integer models
and quantization with no single meaning are refused, never run.

Tolerances, and why:
- Weights: pisplit's dequantized weights equal, bit for bit, those of the float32 twin model (the same
  draws written as (q - zero_point) * scale by tests/layers/tflite_models.py). Behind DEQUANTIZE LiteRT
  itself computes in float, so there the numpy engine on the quantized file matches LiteRT (and LiteRT
  on the twin) at 1e-4 like any float model.
- Dynamic range: LiteRT's hybrid kernels quantize each input to int8 on the fly (XNNPACK's qd8 path for
  CONV_2D and FULLY_CONNECTED: per row / pixel / image; TFLite's builtin kernel for DEPTHWISE_CONV_2D: per
  image), and the numpy engine does the same arithmetic (layers.qkernels): every single layer, per-channel
  and per-tensor, and the chain model (conv, depthwise, 1x1 conv with a residual ADD, MEAN, fully
  connected) equal LiteRT's default interpreter bit for bit, and differ from the float twin's numbers.
  Raw integers without their scales (what pisplit read before) miss by orders of magnitude: each test
  checks that too.
- The litert engine keeps a dynamic-range layer's int8 filter and scales and exports it as the same
  hybrid layer, so it equals LiteRT on the file itself too, split by output channels as well; splits
  that feed a part less than the whole input are refused on both engines (LiteRT would quantize each
  part on its own range). tests/layers/test_tflite_dynamic_range_corpus.py checks the converter's models.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from layers import PisplitError
from layers.engine import make_engine
from layers.graph import Graph, Node
from layers.tflite import import_tflite, import_tflite_bytes
from tests.conftest import require, run_pisplit, varied

from .test_tflite_import import assert_close, litert_outputs
from .tflite_models import (QUANTIZE_KINDS, QUANTIZED_INPUTS, QUANTIZED_LAYERS, Model, quantization_params,
                            quantized_case, quantized_chain_model)

pytestmark = pytest.mark.litert

HYBRID = ("hybrid", "hybrid_per_tensor")
DEQUANTIZE = ("dequantize_int8", "dequantize_uint8")
# LiteRT's depthwise kernel needs one scale per channel: a per-tensor hybrid depthwise is refused (tested below)
CASES = [(op, kind) for op in QUANTIZED_LAYERS for kind in QUANTIZE_KINDS if (op, kind) != ("depthwise", "hybrid_per_tensor")]


@pytest.fixture(autouse=True)
def _litert():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")


def litert_builtin_outputs(model: bytes, feeds: list[np.ndarray]) -> list[np.ndarray]:
    """The LiteRT interpreter with TFLite's own kernels only (no XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=model, num_threads=1, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def input_for(op: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return varied((rng.standard_normal(QUANTIZED_INPUTS[op]) * 2 + 0.5).astype(np.float32))


def numpy_output(model: bytes, x: np.ndarray) -> np.ndarray:
    graph = import_tflite_bytes(model)
    return make_engine(graph, "numpy").run({next(iter(graph.inputs)): x})[graph.outputs[0]]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def quantization_bound(model: bytes, x: np.ndarray) -> np.ndarray:
    """Per output channel, the most the layer's output can move when each input element moves by half
    a quantization step of at most max|x| / 127: max|x| / 254 * sum|w_c| (activations are 1-Lipschitz)."""
    graph = import_tflite_bytes(model)
    kernel = graph.node_weights(graph.nodes[-1])["kernel"]  # HWIO or (Cin, Cout)
    return float(np.abs(x).max()) / 254 * np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


@pytest.mark.parametrize("op,kind", CASES)
def test_dequantized_weights_equal_the_float_twin(op, kind):
    model, drawn = quantized_case(op, kind)
    twin, _ = quantized_case(op, kind, write="float")
    graph, twin_graph = import_tflite_bytes(model), import_tflite_bytes(twin)
    assert drawn.quantized and [n.name for n in graph.nodes] == [n.name for n in twin_graph.nodes]
    for node, twin_node in zip(graph.nodes, twin_graph.nodes):
        for param, w in graph.node_weights(node).items():
            np.testing.assert_array_equal(w, twin_graph.node_weights(twin_node)[param], err_msg=f"{node.name}/{param}")
    x = input_for(op, 1)
    if kind in HYBRID:  # LiteRT quantizes the input on the fly: the file's numbers, not the twin's
        assert np.array_equal(numpy_output(model, x), litert_outputs(model, [x])[0])
        assert relative_error(numpy_output(model, x), litert_outputs(twin, [x])[0]) > 1e-4
    else:
        assert_close(numpy_output(model, x), litert_outputs(twin, [x])[0])


@pytest.mark.parametrize("op,kind", [c for c in CASES if c[1] in DEQUANTIZE])
def test_weights_behind_dequantize_match_litert(op, kind):
    model, drawn = quantized_case(op, kind)
    assert any(np.any(info["zero_point"]) for info in drawn.quantized.values())
    x = input_for(op, 2)
    want = litert_outputs(model, [x])[0]
    assert_close(numpy_output(model, x), want)
    unscaled, _ = quantized_case(op, kind, write="unscaled")
    with pytest.raises(AssertionError):
        assert_close(numpy_output(unscaled, x), want)


@pytest.mark.parametrize("op,kind", [c for c in CASES if c[1] in HYBRID])
def test_dynamic_range_layer_equals_litert(op, kind):
    """The numpy engine runs LiteRT's hybrid arithmetic: equal to the default interpreter bit for bit.
    TFLite's builtin kernels (no XNNPACK) quantize differently; they stay within the quantization bound
    (max|x| / 254 * sum|w_c|, half a step of at most max|x| / 127 per input element) of it."""
    model, _ = quantized_case(op, kind)
    unscaled, _ = quantized_case(op, kind, write="unscaled")
    for seed in range(3):
        x = input_for(op, 10 + seed)
        got = numpy_output(model, x)
        want = litert_outputs(model, [x])[0]
        assert np.isfinite(want).all() and got.shape == want.shape and got.dtype == want.dtype
        assert np.array_equal(got, want), f"{op} {kind} seed {seed}: {relative_error(got, want):.3g} of the largest output off"
        bound = quantization_bound(model, x)
        builtin = litert_builtin_outputs(model, [x])[0]
        assert (np.abs(got - builtin) - (2 * bound * 1.001 + 1e-6 * np.abs(want).max())).max() <= 0
        assert (np.abs(numpy_output(unscaled, x) - want) > 10 * bound).any()


def test_dynamic_range_chain_on_both_engines():
    for seed in range(3):
        model, twin = quantized_chain_model(seed=seed), quantized_chain_model(write="float", seed=seed)
        graph = import_tflite_bytes(model)
        x = varied(np.random.default_rng(100 + seed).standard_normal((1, 16, 16, 3)).astype(np.float32) * 2)
        want, want_twin = litert_outputs(model, [x]), litert_outputs(twin, [x])
        unscaled = make_engine(import_tflite_bytes(quantized_chain_model(write="unscaled", seed=seed)), "numpy")
        for kind in ("numpy", "litert"):
            out = make_engine(graph, kind, threads=1).run({"image": x})
            for t, w, w_twin in zip(graph.outputs, want, want_twin):
                assert np.isfinite(out[t]).all()
                # the same hybrid arithmetic LiteRT runs on the file: its numbers, not the float twin's
                assert np.array_equal(out[t], w), f"{kind} {t}: {relative_error(out[t], w):.3g} of the largest value off"
                assert relative_error(out[t], w_twin) > 1e-4, f"{kind} {t}: ran float kernels, not LiteRT's hybrid ones"
        old = unscaled.run({"image": x})
        assert all(relative_error(old[t], w) > 0.5 for t, w in zip(graph.outputs, want))


def test_dynamic_range_cli_infer(tmp_path):
    path = tmp_path / "dynamic_range.tflite"
    path.write_bytes(quantized_chain_model())
    for engine in ("numpy", "litert"):
        doc = json.loads(run_pisplit("infer", path, "--random", "--engine", engine, "--json").stdout)
        assert doc["engine"] == engine
        assert all(np.isfinite([o["max"], o["min"]]).all() for o in doc["outputs"].values())


# --- refused: no single meaning, or not supported yet ----------------------------------------------

def _conv_with_filter(q: np.ndarray, quantization, name="filter") -> bytes:
    m = Model(0)
    x = m.input((1, 5, 5, q.shape[-1]))
    filt = m.w.tensor(name, q.shape, q, quantization=quantization)
    bias = m.weight((q.shape[0],))
    y = m.op("CONV_2D", [x, filt, bias], (1, 5, 5, q.shape[0]), m.opts("Conv2DOptions", strideH=1, strideW=1))
    return m.finish(y)


def test_dynamic_range_weights_with_zero_points_or_uint8_are_refused():
    """LiteRT's float-input kernels ignore weight zero points and read uint8 bytes as int8."""
    model = _conv_with_filter(np.ones((3, 3, 3, 2), np.int8), quantization_params([0.1, 0.2, 0.3], [0, 4, 0], 0))
    with pytest.raises(PisplitError, match=r"operator 0 \(CONV_2D\).*weights 'filter' are INT8 with zero point 4; .* ignore"):
        import_tflite_bytes(model, "zp.tflite")
    model = _conv_with_filter(np.full((3, 3, 3, 2), 200, np.uint8), quantization_params([0.1, 0.2, 0.3], [0, 0, 0], 0))
    with pytest.raises(PisplitError, match=r"operator 0 \(CONV_2D\).*weights 'filter' are quantized UINT8; .* int8 weights only"):
        import_tflite_bytes(model, "uint8.tflite")


def test_per_tensor_quantized_depthwise_is_refused():
    model, _ = quantized_case("depthwise", "hybrid_per_tensor")
    with pytest.raises(PisplitError, match=r"DEPTHWISE_CONV_2D.*needs one scale per output channel on dimension 3 \(8\), it has 1"):
        import_tflite_bytes(model, "dw.tflite")


def test_integers_without_scales_are_never_float_weights():
    model = _conv_with_filter(np.ones((2, 3, 3, 2), np.int8), None)
    with pytest.raises(PisplitError, match=r"CONV_2D.*'filter' is INT8 without quantization scales"):
        import_tflite_bytes(model, "noscale.tflite")


@pytest.mark.parametrize("scale,zero,axis,message", [
    ([0.1, 0.2, 0.3], [0], 3, r"has 3 quantization scales for dimension 3"),
    ([0.1, 0.2], [0, 0, 0], 0, r"has 3 zero points for 2 quantization scales"),
    ([0.1, float("inf")], [0], 0, r"quantization scale that is not finite or makes values overflow float32"),
    ([1e37, 0.1], [0], 0, r"quantization scale that is not finite or makes values overflow float32"),
])
def test_bad_quantization_parameters(scale, zero, axis, message):
    model = _conv_with_filter(np.ones((2, 3, 3, 2), np.int8), quantization_params(scale, zero, axis))
    with pytest.raises(PisplitError, match=f"bad.tflite: tensor 'filter' .*{message}"):
        import_tflite_bytes(model, "bad.tflite")


def test_quantized_axes_are_not_integers():
    m = Model(0)
    x = m.input((1, 4, 4, 3))
    axes = m.w.tensor("axes", (2,), np.array([1, 2], np.int32), quantization=quantization_params([0.5], [0]))
    y = m.op("MEAN", [x, axes], (1, 3), m.opts("ReducerOptions"))
    with pytest.raises(PisplitError, match=r"MEAN.*tensor 'axes' \(INT32, quantized\) must hold plain integers"):
        import_tflite_bytes(m.finish(y), "axes.tflite")


def test_full_integer_model_imports_with_its_quantization(tmp_path):
    """Quantized activations (full-integer models) import into int8 nodes (tests/layers/test_int8_kernels.py
    checks their numbers); the litert engine exports them with their quantization (test_int8_litert.py)."""
    m = Model(0)
    x = m.input((1, 6, 6, 3))
    xq = m.w.tensor("image_int8", (1, 6, 6, 3), dtype="INT8", quantization=quantization_params([0.02], [-3]))
    m.w.operator("QUANTIZE", [x], [xq])
    filt = m.w.tensor("filter", (4, 3, 3, 3), np.ones((4, 3, 3, 3), np.int8), quantization=quantization_params([0.01] * 4, [0] * 4))
    bias = m.w.tensor("bias", (4,), np.zeros(4, np.int32), quantization=quantization_params([0.0002] * 4, [0] * 4))
    yq = m.w.tensor("conv_int8", (1, 6, 6, 4), dtype="INT8", quantization=quantization_params([0.05], [1]))
    m.w.operator("CONV_2D", [xq, filt, bias], [yq], m.opts("Conv2DOptions", strideH=1, strideW=1))
    y = m.w.tensor("output", (1, 6, 6, 4))
    m.w.operator("DEQUANTIZE", [yq], [y])
    path = tmp_path / "int8.tflite"
    path.write_bytes(m.w.finish([x], [y]))
    graph = import_tflite(path)
    assert [n.op for n in graph.nodes] == ["quantize", "conv2d", "dequantize"]
    assert graph.quant["image_int8"].scale == (np.float32(0.02),) and graph.quant["image_int8"].zero_point == (-3,)
    assert graph.quant["conv_int8/kernel"].axis == 3 and graph.node_weights("conv_int8")["kernel"].dtype == np.int8
    x = graph.random_input(0)
    want = make_engine(graph, "numpy").run(x)[graph.outputs[0]]
    got = make_engine(graph, "litert").run(x)[graph.outputs[0]]
    assert got.dtype == want.dtype == np.float32 and np.abs(got - want).max() <= 0.05 * 1.0001  # within one output unit
    assert make_engine(graph, "auto").name in ("numpy", "litert")


# --- the numpy engine never passes NaN or inf off as an answer to finite input -----------------------

def test_numpy_engine_refuses_non_finite_output_from_finite_input():
    node = Node("huge", "dense", ["x"], ["huge"], {}, {"kernel": (4, 2)})
    graph = Graph("overflow", {"x": (1, 4)}, [node], ["huge"], {"huge/kernel": np.full((4, 2), 3e38, np.float32)})
    engine = make_engine(graph, "numpy")
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(
            PisplitError, match=r"model overflow: output 'huge' holds NaN or infinite values although every input is finite"):
        engine.run({"x": np.ones((1, 4), np.float32)})
    with np.errstate(over="ignore", invalid="ignore"):
        out = engine.run({"x": np.full((1, 4), np.inf, np.float32)})  # non-finite in, non-finite out: not the engine's doing
    assert not np.isfinite(out["huge"]).all()
    assert np.isfinite(engine.run({"x": np.zeros((1, 4), np.float32)})["huge"]).all()


def test_dynamic_range_splits_on_the_litert_engine():
    """A dynamic-range layer split by output channels runs LiteRT's hybrid kernels on the whole input in
    every part: equal to the unsplit layer bit for bit on both engines. Splits that feed a part less than
    the whole input (rows, input channels) would have LiteRT quantize each part on its own range: refused
    on both engines, naming the node, and never offered to a plan."""
    from partitioners.split_quant import HYBRID_INEXACT_KINDS, planner_kinds
    from partitioners.splits import split_layer

    graph = import_tflite_bytes(quantized_chain_model(seed=3), "chain.tflite")
    x = varied(np.random.default_rng(5).standard_normal((1, 16, 16, 3)).astype(np.float32) * 2)
    first = graph.nodes[0]
    assert first.weight_key("kernel") in graph.quant and not first.attrs.get("quantized")
    split = split_layer(graph, first.name, "conv-channel", [5, 11])
    layer = Graph(graph.name, graph.inputs, [first], [first.outputs[0]], graph.weights, graph.meta)  # the unsplit layer alone
    want = make_engine(layer, "litert", threads=1).run({"image": x})[first.outputs[0]]
    assert np.array_equal(split.reference(x), want)  # the numpy engine's unsplit layer: LiteRT's numbers
    assert np.array_equal(split.run(x, "litert"), want) and np.array_equal(split.run(x, "numpy"), want)
    for kind in ("conv-spatial", "conv-filter"):
        inexact = split_layer(graph, first.name, kind, 2)
        for engine in ("litert", "numpy"):
            with pytest.raises(PisplitError, match=rf"node {first.name}\S* is a dynamic-range layer .* each {kind} part's input"):
                inexact.run(x, engine)
    for engine in ("litert", "numpy"):
        kinds = planner_kinds(graph, engine)["kinds"]
        assert "conv-channel" in kinds and "fc-output" in kinds and not set(HYBRID_INEXACT_KINDS) & set(kinds)
