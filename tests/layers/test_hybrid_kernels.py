"""The numpy engine's dynamic-range (hybrid) arithmetic (issue 12, layers.qkernels): the on-the-fly input
quantizers as LiteRT's kernels compute them, a graph mixing small float layers with hybrid ones equal to
LiteRT bit for bit, output-channel splits equal to the unsplit layer bit for bit (in process and over
three real MPI ranks on a converter's MobileNetV2), and the splits that would quantize a part on its own
range refused with one line naming the layer.

Single hybrid layers and the chain model against LiteRT: tests/layers/test_tflite_quantized.py; the
converter's MobileNetV2 / ResNet50 whole: tests/layers/test_tflite_dynamic_range_corpus.py."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from layers import PisplitError
from layers.engine import make_engine
from layers.graph import Graph, Node
from layers.qkernels import qd8_quantize, tflite_asymmetric_quantize
from layers.tflite import import_tflite_bytes
from tests.conftest import require, varied

CORPUS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pisplit-corpus"


# --- the quantizers -------------------------------------------------------------------------------------

def test_qd8_rows_as_xnnpack_quantizes_them():
    """XNNPACK's f32 -> qd8: range widened to hold 0, scale 255 / range, zero point from the end with the
    smaller error, rounding half to even; one quantization per row."""
    x = np.array([[0, 0.5, 1.5, 255],  # all >= 0: scale 64, zero point -128
                  [-255, -0.5, 0, 0],  # all <= 0: zero point 127
                  [-100, 50, 0, 155],  # both signs: zero point -128 + 100 = -28
                  [0, 0, 0, 0]], np.float32) / np.float32([[64], [64], [64], [1]])  # one value: scale 1, all 0
    centred, dq = qd8_quantize(x, (1,))
    assert centred.dtype == np.float32 and dq.shape == (4, 1)
    np.testing.assert_array_equal(dq.ravel(), [1 / 64, 1 / 64, 1 / 64, 1])
    np.testing.assert_array_equal(centred[0], [0, 0, 2, 255])  # 0.5 and 1.5 to even
    np.testing.assert_array_equal(centred[1], [-255, 0, 0, 0])  # -0.5 to even (0)
    np.testing.assert_array_equal(centred[2], [-100, 50, 0, 155])
    np.testing.assert_array_equal(centred[3], [0, 0, 0, 0])
    assert np.abs(centred * dq - x).max() <= dq.max() / 2 * 1.0001  # within half a step of the values


def test_tflite_asymmetric_quantization_rounds_half_away():
    """TFLite's AsymmetricQuantizeFloats: one range per image, std::round (ties away from zero) of
    x * (1 / scale) before the zero point is added; an all-zero image quantizes to zeros."""
    x = np.zeros((2, 1, 2, 2), np.float32)
    x[0, 0] = np.float32([[0, 0.5], [1.5, 255]]) / 64
    centred, factor = tflite_asymmetric_quantize(x, (1, 2, 3))
    assert factor.shape == (2, 1, 1, 1) and factor[1].item() == 1.0
    np.testing.assert_array_equal(centred[0].ravel(), [0, 1, 2, 255])  # 0.5 rounds up here, 1.5 to 2
    np.testing.assert_array_equal(centred[1], 0)


def _identity_layer(channels: int, depthwise: bool) -> Graph:
    """A hybrid 1x1 layer whose output is its quantized input, dequantized: (q - zero point) * input scale."""
    shape = (1, 1, 1, channels) if depthwise else (1, 1, channels, channels)
    kernel = np.ones(shape, np.int8) if depthwise else np.eye(channels, dtype=np.int8).reshape(shape)
    node = Node("q", "conv2d", ["x"], ["q"], {"groups": channels if depthwise else 1}, {"kernel": shape, "bias": (channels,)})
    quant = {"q/kernel": {"dtype": "int8", "scale": [1.0] * channels, "zero_point": [0] * channels, "axis": 3}}
    return Graph("identity", {"x": (1, 4, 4, channels)}, [node], ["q"], {"q/kernel": kernel, "q/bias": np.zeros(channels, np.float32)},
                 {"quant": quant})


@pytest.mark.litert
@pytest.mark.parametrize("depthwise", [False, True])
def test_quantized_inputs_equal_litert_including_ties(depthwise):
    """Through an identity filter LiteRT's output is its own quantization of the input: the numpy engine's
    equals it on random inputs of either sign and on inputs full of exact rounding ties (XNNPACK's qd8
    rounds them to even, TFLite's depthwise kernel away from zero)."""
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    graph = _identity_layer(8, depthwise)
    numpy_engine, litert = make_engine(graph, "numpy"), make_engine(graph, "litert", threads=1)
    rng = np.random.default_rng(11)
    for trial in range(60):
        x = (rng.standard_normal((1, 4, 4, 8)) * rng.uniform(0.01, 10)).astype(np.float32)
        x = [x, np.abs(x), -np.abs(x), np.round(x * 4) / 4][trial % 4]
        got, want = numpy_engine.run({"x": x})["q"], litert.run({"x": x})["q"]
        assert np.array_equal(got, want), f"trial {trial}: {np.flatnonzero(got != want).size} values differ"


# --- a float layer before hybrid ones ---------------------------------------------------------------------

def _mixed_graph() -> Graph:
    """A float 3x3 conv (kept float, as a converter keeps filters under 1024 weights), a float depthwise,
    a hybrid 3x3 conv, a hybrid depthwise, a hybrid 1x1 conv, a float spatial mean and a hybrid dense."""
    rng = np.random.default_rng(7)
    nodes, weights, quant = [], {}, {}
    spec = [("conv_f", "conv2d", {"strides": [2, 2], "padding": "same", "activation": "relu6"}, (3, 3, 3, 8), False),
            ("dw_f", "conv2d", {"padding": "same", "groups": 8, "activation": "relu6"}, (3, 3, 1, 8), False),
            ("conv_h", "conv2d", {"padding": "same", "activation": "relu"}, (3, 3, 8, 16), True),
            ("dw_h", "conv2d", {"strides": [2, 2], "padding": "same", "groups": 16, "activation": "relu6"}, (3, 3, 1, 16), True),
            ("pw_h", "conv2d", {}, (1, 1, 16, 24), True)]
    prev = "image"
    for name, op, attrs, shape, hybrid in spec:
        cout = shape[-1]
        nodes.append(Node(name, op, [prev], [name], attrs, {"kernel": shape, "bias": (cout,)}))
        weights[f"{name}/bias"] = rng.standard_normal(cout).astype(np.float32) * 0.1
        if hybrid:
            weights[f"{name}/kernel"] = rng.integers(-127, 128, shape).astype(np.int8)
            scale = rng.uniform(0.002, 0.01, cout) / np.sqrt(np.prod(shape[:-1]))
            quant[f"{name}/kernel"] = {"dtype": "int8", "scale": scale.tolist(), "zero_point": [0] * cout, "axis": 3}
        else:
            weights[f"{name}/kernel"] = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        prev = name
    nodes.append(Node("mean", "mean", [prev], ["mean"], {"axes": [1, 2], "keepdims": False}, {}))
    nodes.append(Node("logits", "dense", ["mean"], ["logits"], {}, {"kernel": (24, 10), "bias": (10,)}))
    weights["logits/kernel"] = rng.integers(-127, 128, (24, 10)).astype(np.int8)
    weights["logits/bias"] = np.zeros(10, np.float32)
    quant["logits/kernel"] = {"dtype": "int8", "scale": [0.01] * 10, "zero_point": [0] * 10, "axis": 1}
    return Graph("mixed", {"image": (1, 20, 18, 3)}, nodes, ["logits", "pw_h"], weights, {"quant": quant})


@pytest.mark.litert
def test_float_and_hybrid_layers_equal_litert_bit_for_bit():
    """The float layers run in XNNPACK's accumulation order and the hybrid ones quantize as LiteRT does,
    so the numpy engine equals the litert engine (LiteRT's own kernels on the exported hybrid layers)
    exactly; BLAS's order in the float layers would move hybrid inputs across rounding boundaries."""
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    graph = _mixed_graph()
    numpy_engine, litert = make_engine(graph, "numpy"), make_engine(graph, "litert", threads=1)
    for seed in range(3):
        x = {"image": varied(np.random.default_rng(seed).standard_normal((1, 20, 18, 3)).astype(np.float32) * 2)}
        got, want = numpy_engine.run(x), litert.run(x)
        for t in graph.outputs:
            assert np.array_equal(got[t], want[t]), f"seed {seed} {t}: {np.abs(got[t] - want[t]).max():.3g} off"


# --- splits ---------------------------------------------------------------------------------------------

def _chain():
    from .tflite_models import quantized_chain_model

    graph = import_tflite_bytes(quantized_chain_model(seed=3), "chain.tflite")
    x = varied(np.random.default_rng(5).standard_normal((1, 16, 16, 3)).astype(np.float32) * 2)
    return graph, x


def test_output_channel_splits_equal_the_unsplit_layer_bit_for_bit():
    """Every part of an output-channel split quantizes the layer's whole input, as the unsplit layer does."""
    from partitioners.splits import split_layer

    graph, x = _chain()
    for layer, kind, sizes in [("conv_2d_3", "conv-channel", [5, 11]), ("conv_2d_9", "conv-channel", 3),
                               ("fully_connected_15", "fc-output", [3, 3, 4])]:
        split = split_layer(graph, layer, kind, sizes)
        feed = x if split.node_start == 0 else graph.execute({"image": x}, 0, split.node_start)
        assert graph.nodes[split.node_start].weight_key("kernel") in graph.quant
        got, want = split.run(feed, "numpy"), split.reference(feed)
        assert np.array_equal(got, want), f"{layer} {kind}: {np.abs(got - want).max():.3g} off"
    # a channel segment ends before a hybrid depthwise layer, which would quantize its channels alone
    assert split_layer(graph, "conv_2d_3", "conv-channel", 2).node_stop == 1


def test_splits_that_quantize_a_part_alone_are_refused():
    from partitioners.splits import split_layer

    graph, x = _chain()
    with pytest.raises(PisplitError, match=r"layer depthwise_conv_2d_6: kind conv-channel does not apply .* a dynamic-range "
                                           r"depthwise layer quantizes its whole input at once"):
        split_layer(graph, "depthwise_conv_2d_6", "conv-channel", 2)
    feed = graph.execute({"image": x}, 0, 1)
    for kind in ("conv-spatial", "conv-filter", "fused-tiles"):
        split = split_layer(graph, "depthwise_conv_2d_6", kind, 2)
        with pytest.raises(PisplitError, match=r"^model \S+: node depthwise_conv_2d_6\S* is a dynamic-range layer .* each "
                                               rf"{kind} part's input on its own range"):
            split.run(feed, "numpy")


@pytest.mark.mpi
@pytest.mark.litert
def test_corpus_model_output_channel_split_over_three_ranks():
    """A converter's dynamic-range MobileNetV2: its last 1x1 conv split by output channels over three
    real MPI ranks equals the unsplit layer, every value."""
    from tests.cluster.test_split_mpi import run_mpi

    model = CORPUS / "mobilenet_v2_dynamic_range.tflite"
    require(model.is_file(), f"no {model} (bash scripts/build_corpus builds it)")
    layer = ("mobilenetv2_1.00_224_1/out_relu_1/Relu6;mobilenetv2_1.00_224_1/Conv_1_bn_1/batchnorm/add_1;"
             "mobilenetv2_1.00_224_1/Conv_1_1/convolution;mobilenetv2_1.00_224_1/Conv_1_bn_1/batchnorm/sub1")
    proc = run_mpi(3, [sys.executable, "-m", "cluster.cli", "split", model, layer, "--kind", "conv-channel", "--sizes", "640,384,256",
                       "--engine", "numpy", "--repeat", "1", "--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["ranks"] == 3 and doc["sizes"] == [640, 384, 256] and doc["max_abs_error"] == 0
