"""The litert engine and .tflite export: zoo models, pipeline stages and split-layer parts compiled to
flatbuffers and run in the LiteRT interpreter (XNNPACK) equal the numpy engine; `auto` picks one."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from layers import Graph, PisplitError, zoo_model
from layers.builder import GraphBuilder
from layers.engine import AUTO_MEASURE_FLOPS, make_engine
from layers.tflite import import_tflite_bytes
from layers.tflite_engine import make_interpreter
from layers.tflite_export import export_tflite
from layers.transforms import fold_batchnorm
from tests.conftest import require, varied

from .test_tflite_import import assert_close

pytestmark = pytest.mark.litert


@pytest.fixture(autouse=True)
def _litert():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")


def random_feeds(graph: Graph, seed: int, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: varied(rng.standard_normal((batch, *s[1:])).astype(np.float32)) for k, s in graph.inputs.items()}


@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v1", "resnet50", "alexnet", "xception"])
def test_zoo_model_in_litert_equals_numpy(name):
    graph = zoo_model(name)
    feeds = random_feeds(graph, seed=1)
    want = graph.execute(feeds)
    engine = make_engine(graph, "litert", threads=1)
    assert engine.name == "litert"
    got = engine.run(feeds)
    for t in graph.outputs:
        assert_close(got[t], want[t])


@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v1", "resnet50"])
def test_exported_flatbuffer_imports_back(name):
    graph = fold_batchnorm(zoo_model(name))
    again = import_tflite_bytes(export_tflite(graph), f"{name} export", name)
    assert list(again.inputs) == list(graph.inputs) and again.outputs == graph.outputs
    # tensor names survive the round trip (a dropout is an identity: its tensor is its input's)
    assert {n.outputs[0] for n in graph.nodes if n.op != "dropout"} <= set(again.shapes)
    feeds = random_feeds(graph, seed=2)
    want, got = graph.execute(feeds), again.execute(feeds)
    for t in graph.outputs:
        assert_close(got[t], want[t])


def stage(graph: Graph, start: int, stop: int) -> Graph:
    """Nodes [start, stop) as a graph fed by the tensors live at cut `start` (a pipeline stage)."""
    return Graph(f"{graph.name}[{start}:{stop}]", {t: graph.shapes[t] for t in graph.cut_tensors(start)},
                 graph.nodes[start:stop], graph.cut_tensors(stop), graph.weights)


def test_pipeline_stage_with_two_inputs_and_outputs_and_batches():
    graph = zoo_model("resnet50")
    i = graph.node_index("conv2_block2_1_conv")
    part = stage(graph, i - 3, i + 9)  # starts inside a block: the shortcut and the branch are both live
    assert len(part.inputs) >= 1 and len(part.outputs) >= 1
    engine = make_engine(part, "litert", threads=2)
    assert engine.threads == 2
    for batch in (1, 3, 1):
        feeds = random_feeds(part, seed=batch, batch=batch)
        want, got = part.execute(feeds), engine.run(feeds)
        for t in part.outputs:
            assert got[t].shape[0] == batch
            assert_close(got[t], want[t])
    passing = stage(graph, i, i + 2)  # the block's shortcut passes through untouched: an input is an output
    assert set(passing.inputs) & set(passing.outputs)
    feeds = random_feeds(passing, seed=7)
    want, got = passing.execute(feeds), make_engine(passing, "litert").run(feeds)
    for t in passing.outputs:
        assert_close(got[t], want[t])


def test_one_part_of_a_split_layer():
    """A conv-channel part (a slice of the filters) and a conv-filter part (a slice of the input
    channels, no bias, no activation) compile and run like the numpy kernels."""
    graph = zoo_model("vgg16")
    node = graph.node("block3_conv2")
    w = graph.node_weights(node)
    in_shape = graph.shapes[node.inputs[0]]
    b = GraphBuilder("parts")
    x = b.input("x", in_shape)
    b.conv(x, 100, 3, "channel_part", padding="same", activation="relu")
    y = b.input("x_channels", (*in_shape[:-1], 90))
    b.conv(y, 256, 3, "filter_part", padding="same", use_bias=False)
    parts = b.build(["channel_part", "filter_part"])
    weights = {"channel_part/kernel": w["kernel"][..., 100:200], "channel_part/bias": w["bias"][100:200],
               "filter_part/kernel": w["kernel"][:, :, 30:120, :]}
    parts = Graph(parts.name, parts.inputs, parts.nodes, parts.outputs, weights)
    feeds = random_feeds(parts, seed=4)
    want, got = parts.execute(feeds), make_engine(parts, "litert").run(feeds)
    for t in parts.outputs:
        assert_close(got[t], want[t])


def test_xnnpack_runs_the_convolutions():
    graph = zoo_model("mobilenet_v1")
    engine = make_engine(graph, "litert")
    # the default delegate replaced the graph's ops by a DELEGATE node (XNNPACK, the only default one)
    assert "DELEGATE" in {d["op_name"] for d in engine.interpreter._get_ops_details()}


def test_auto_engine_choices():
    conv3d = GraphBuilder("clip")
    x = conv3d.input("x", (1, 4, 8, 8, 3))
    no_tflite = conv3d.build(conv3d.conv(x, 4, 3, "conv3d", padding="same"))
    assert make_engine(no_tflite, "auto").name == "numpy"  # no TFLite form: numpy
    big = GraphBuilder("big")
    x = big.input("x", (1, 56, 56, 64))
    big_graph = big.build(big.conv(x, 64, 3, "conv", padding="same"))
    assert big_graph.totals()["flops"] >= AUTO_MEASURE_FLOPS
    assert make_engine(big_graph, "auto").name == "litert"
    small = zoo_model("lenet5")
    engine = make_engine(small, "auto")  # measured: either may win, both give the same numbers
    assert engine.name in ("numpy", "litert")
    feeds = random_feeds(small, seed=6)
    assert_close(engine.run(feeds)["prob"], small.execute(feeds)["prob"])


def test_engine_errors():
    conv3d = GraphBuilder("clip")
    x = conv3d.input("x", (1, 4, 8, 8, 3))
    g = conv3d.build(conv3d.conv(x, 4, 3, "conv3d_1"))
    with pytest.raises(PisplitError, match=r"node conv3d_1 \(conv3d\) has no TFLite equivalent"):
        make_engine(g, "litert")
    with pytest.raises(PisplitError, match="threads must be at least 1"):
        make_engine(zoo_model("lenet5"), "litert", threads=0)
    with pytest.raises(PisplitError, match="engine 'tpu'"):
        make_engine(zoo_model("lenet5"), "tpu")
    engine = make_engine(zoo_model("lenet5"), "litert")
    with pytest.raises(PisplitError, match="input 'input' has shape"):
        engine.run({"input": np.zeros((1, 28, 28, 1), np.float32)})


def test_every_exportable_op_round_trips_through_litert():
    """Graphs of pisplit ops (as the zoo and the split kinds build them) exported and run in LiteRT."""
    b = GraphBuilder("ops", seed=3)
    x = b.input("x", (1, 12, 12, 4))
    y = b.conv(x, 8, 3, "conv", strides=2, padding=[[0, 1], [2, 0]], dilation=1, activation="tanh")  # explicit pads: PAD op
    y = b.depthwise(y, 3, "dw", multiplier=2, padding="same", activation="sigmoid", use_bias=True)
    y = b.batch_norm(y, "bn", activation="relu6")  # after a fused activation: not foldable, MUL + ADD
    y = b.act(y, "hard_swish", "hswish")
    y = b.act(y, "leaky_relu", "leaky", alpha=0.1)
    z = b.pool(y, "avg", 2, "avg", strides=1, padding="same")
    y = b.add("sub", [y, z], "sub", {"activation": "relu_n1_to_1"})
    y = b.add("mul", [y, z, y], "mul3", {"activation": None})  # three operands: a chain of MULs
    y = b.add("add", y, "add_constant", {"constant_first": True}, {"constant": ((16,), "bias")})
    y = b.add("concat", [y, z], "concat", {"axis": -1, "activation": "relu"})
    y = b.add("resize_bilinear", y, "up", {"size": [9, 7], "half_pixel_centers": True})
    y = b.add("resize_nearest", y, "down", {"size": [4, 5], "align_corners": True})
    y = b.add("transpose", y, "transpose", {"perm": [0, 2, 1, 3]})
    y = b.add("pad", y, "pad_value", {"paddings": [[0, 0], [1, 0], [0, 2], [0, 0]], "value": -0.5})
    m = b.add("mean", y, "mean", {"axes": [1, -1], "keepdims": False})
    y = b.act(y, "lrn", "lrn", depth_radius=2, alpha=1e-3, beta=0.75)
    y = b.add("prelu", y, "prelu", {}, {"alpha": ((32,), "alpha")})
    y = b.add("reshape", y, "reshape", {"shape": [8, -1]})
    y = b.dense(y, 5, "dense3d")  # keep_num_dims: a 3-D input
    y = b.act(y, "flatten", "flatten")
    y = b.act(y, "dropout", "dropout", rate=0.5)
    y = b.act(y, "softmax", "softmax", beta=2.0)
    graph = b.build([y, m, "hswish"])
    feeds = random_feeds(graph, seed=9)
    want = graph.execute(feeds)
    got = make_engine(graph, "litert").run(feeds)
    for t in graph.outputs:
        varied(want[t])
        assert_close(got[t], want[t])


def test_a_batch_litert_cannot_run_is_one_line_not_a_traceback():
    # an input with no frame on axis 0 (a mutated .npy of the reader fuzz) made XNNPACK fail to
    # reshape, a RuntimeError from inside LiteRT
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    engine = make_engine(zoo_model("lenet5"), "litert")
    with pytest.raises(PisplitError, match=r"model lenet5: input 'input' holds no frame \(axis 0 is 0\)"):
        engine.run({"input": np.zeros((0, 32, 32, 1), np.float32)})
    assert engine.run({"input": np.zeros((2, 32, 32, 1), np.float32)})["prob"].shape == (2, 10)


def test_every_frame_is_checked_whether_it_goes_in_as_it_is_or_is_converted():
    """run() hands an input that is already a C-contiguous array of the input's dtype and the batch the
    interpreter holds straight to it; every other feed (float64, a strided view, a list, a new batch, a
    wrong shape, a missing input) takes the converting, validating path, with the same results and errors."""
    graph = zoo_model("lenet5")
    engine = make_engine(graph, "litert")
    x = random_feeds(graph, seed=11)["input"]
    want = graph.execute({"input": x})["prob"]
    first = engine.run({"input": x})["prob"]
    assert_close(first, want)
    wide = np.zeros((1, 32, 64, 1), np.float32)
    wide[:, :, ::2] = x
    for feed in (x.astype(np.float64), wide[:, :, ::2], x.tolist(), np.asfortranarray(x), x):
        assert np.array_equal(engine.run({"input": feed})["prob"], first)
    three = np.concatenate([x, -x, 2 * x])
    assert_close(engine.run({"input": three})["prob"], graph.execute({"input": three})["prob"])
    assert np.array_equal(engine.run({"input": x})["prob"], first)  # back to one frame: resized again
    out = engine.run({"input": x})
    out["prob"][:] = 7  # outputs are copies: a later frame is not written into them, nor they into it
    assert np.array_equal(engine.run({"input": x})["prob"], first)
    with pytest.raises(PisplitError, match=r"input 'input' has shape \(1, 32, 31, 1\)"):
        engine.run({"input": x[:, :, :31]})
    with pytest.raises(PisplitError, match=r"input 'input' \(shape \(1, 32, 32, 1\)\) was not given"):
        engine.run({"x": x})
    assert np.array_equal(engine.run({"input": x})["prob"], first)


def test_int8_inputs_are_checked_on_every_frame():
    from .int8_split_models import int8_split_graph

    graph = int8_split_graph(False)
    name = next(iter(graph.inputs))
    engine = make_engine(graph, "litert")
    x = graph.random_input(3)[name]
    assert x.dtype == np.int8
    first = engine.run({name: x})
    again = engine.run({name: x.astype(np.float32)})  # a float array of int8 integers: converted
    assert all(np.array_equal(again[t], first[t]) for t in graph.outputs)
    with pytest.raises(PisplitError, match=f"tensor {name!r} is int8"):
        engine.run({name: x.astype(np.int16) * 300})


def test_equal_weights_share_one_buffer_in_the_flatbuffer():
    """Constants with the very same bytes (an unrolled recurrent layer's weights, one copy a step) are
    written once; ones that differ in a single byte the sampled key does not look at stay apart."""
    rng = np.random.default_rng(5)
    k = rng.standard_normal((64, 64)).astype(np.float32)
    b = GraphBuilder("shared")
    x = b.input("x", (1, 64))
    y = b.dense(b.dense(b.dense(x, 64, "d1", activation="tanh"), 64, "d2", activation="tanh"), 64, "d3")
    graph = b.build(y)
    near = k.copy()
    near[1, 0] += 1.0  # written transposed: element 1, outside the key's sample (every 16th): only the full compare tells
    bias = np.zeros(64, np.float32)
    shared = Graph("shared", graph.inputs, graph.nodes, graph.outputs,
                   {"d1/kernel": k, "d1/bias": bias, "d2/kernel": k, "d2/bias": bias, "d3/kernel": near, "d3/bias": bias + 1})
    apart = Graph("apart", graph.inputs, graph.nodes, graph.outputs,
                  {"d1/kernel": k, "d1/bias": bias, "d2/kernel": k + 1, "d2/bias": bias + 2, "d3/kernel": near, "d3/bias": bias + 1})
    assert len(export_tflite(apart)) - len(export_tflite(shared)) >= k.nbytes + bias.nbytes
    for g in (shared, apart):
        feeds = random_feeds(g, seed=12)
        assert_close(make_engine(g, "litert").run(feeds)[g.outputs[0]], g.execute(feeds)[g.outputs[0]])


def test_a_flatten_read_only_by_dense_layers_writes_no_reshape_on_the_engine():
    """The litert engine leaves a flatten before dense layers to FULLY_CONNECTED (which flattens its input
    itself); a flatten that is a graph output, or has another reader, stays a RESHAPE; same numbers."""
    b = GraphBuilder("flat", seed=4)
    x = b.input("x", (1, 3, 4, 5))
    f = b.act(x, "flatten", "f")
    y = b.add("add", [b.dense(f, 6, "d1"), b.dense(f, 6, "d2", activation="relu")], "sum")
    g = b.act(b.conv(x, 2, 1, "c"), "flatten", "g")  # read by a dense and a graph output
    z = b.dense(g, 3, "d3")
    graph = b.build([y, z, g])
    engine = make_engine(graph, "litert")
    ops = [d["op_name"] for d in engine.interpreter._get_ops_details()]
    assert ops.count("RESHAPE") == 1 and ops.count("FULLY_CONNECTED") == 3
    written = [d["op_name"] for d in make_interpreter(export_tflite(graph))._get_ops_details()]
    assert written.count("RESHAPE") == 2  # export_tflite's default keeps every tensor (round trips by name)
    for batch in (1, 2):
        feeds = random_feeds(graph, seed=13, batch=batch)
        got, want = engine.run(feeds), graph.execute(feeds)
        for t in graph.outputs:
            assert got[t].shape == want[t].shape
            assert_close(got[t], want[t])


def test_a_graph_built_for_several_frames_runs_any_batch():
    """The interpreter starts at the graph's own batch (4 here): frames of 4 go in as they are, 1 and 2
    resize it, 4 again resizes it back."""
    b = GraphBuilder("four", seed=1)
    x = b.input("x", (4, 6))
    graph = b.build(b.dense(x, 3, "d"))
    engine = make_engine(graph, "litert")
    for n in (4, 1, 4, 2):
        feeds = {"x": np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)}
        assert_close(engine.run(feeds)["d"], graph.execute(feeds)["d"])


def test_tiles_run_in_xnnpack_as_concatenations_on_the_engine():
    """The litert engine writes a TILE of at most 5 copies per axis as CONCATENATIONs (XNNPACK runs those, not
    TILE), with the same numbers as the numpy engine at batch 1 and 2; 6 copies stay a TILE."""
    b = GraphBuilder("tiles", seed=5)
    x = b.input("x", (1, 3, 4, 2))
    y = b.add("tile", x, "t1", {"multiples": [2, 1, 3]})
    y = b.add("tile", b.act(y, "relu", "r"), "t2", {"multiples": [1, 1, 1]})
    z = b.add("tile", x, "t3", {"multiples": [1, 6, 1]})
    graph = b.build([y, z])
    engine = make_engine(graph, "litert")
    ops = [d["op_name"] for d in engine.interpreter._get_ops_details()]
    assert ops.count("TILE") == 1 and ops.count("CONCATENATION") == 2
    for batch in (1, 2):
        feeds = random_feeds(graph, seed=14, batch=batch)
        got, want = engine.run(feeds), graph.execute(feeds)
        for t in graph.outputs:
            assert got[t].shape == want[t].shape and np.array_equal(got[t], want[t])
