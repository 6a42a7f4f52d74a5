"""Splits of int8 layers (issue 12): every split kind of an int8 conv / depthwise / fully connected /
pool / add segment, in uneven parts, equals the unsplit segment bit for bit. Channel, spatial, tile and
frame splits run the same integer kernels on their slice; fc-input and conv-filter parts make int32
partial sums, sent as exact float32 16-bit halves, that the root adds and requantizes once
(partitioners.split_quant)."""
from __future__ import annotations

import numpy as np
import pytest

from layers.engine import make_engine
from partitioners.splits import legal_kinds, split_layer

from .int8_split_models import int8_split_graph

# (layer, kind, sizes, options): uneven sizes everywhere
CASES = [
    ("conv_2d_3", "conv-channel", (5, 3, 2), {}),                    # 10 filters
    ("conv_2d_3", "conv-spatial", (6, 4, 3), {}),                    # 13 rows, zero point -7 padding
    ("conv_2d_3", "conv-spatial", (5, 6), {"axis": "cols"}),
    ("conv_2d_3", "conv-filter", (1, 2, 3), {}),                     # 6 input channels: int32 partial sums
    ("conv_2d_3", "fused-tiles", ((6, 7), (5, 3, 3)), {"grid": (2, 3)}),
    ("depthwise_conv_2d_6", "fused-tiles", (4, 3), {"last": "max_pool_2d_11"}),  # through the 1x1, ADD, max pool
    ("conv_2d_3", "data-parallel", (0.7, 0.3), {}),
    ("depthwise_conv_2d_6", "conv-channel", (9, 7, 4), {}),          # 20 outputs of 10 groups x 2
    ("depthwise_conv_2d_6", "conv-spatial", (2, 5, 6), {}),
    ("depthwise_conv_2d_6", "conv-filter", (3, 4, 3), {}),           # grouped: partial sums by channel box
    ("conv_2d_9", "conv-channel", (6, 3, 1), {}),                    # followers: ADD (residual sliced), max pool
    ("conv_2d_9", "conv-spatial", (4, 2, 1), {}),                    # max pool 'same': -128 padding at the edges
    ("conv_2d_9", "conv-filter", (11, 5, 4), {}),                    # 20 input channels
    ("add_10", "fused-tiles", ((3, 4), (2, 4)), {"grid": (2, 2)}),
    ("max_pool_2d_11", "fused-tiles", (5, 2), {}),
    ("conv_2d_14", "conv-channel", (4, 5), {}),
    ("conv_2d_14", "conv-filter", (7, 3), {}),                       # then MEAN after the requantize
    ("conv_2d_14", "conv-spatial", (3, 1), {}),
    ("fully_connected_19", "fc-output", (6, 5), {}),                 # per-tensor filter scale
    ("fully_connected_19", "fc-input", (2, 4, 3), {}),
    ("fully_connected_22", "fc-output", (1, 4), {}),                 # per-channel filter scales
    ("fully_connected_22", "fc-input", (5, 4, 2), {}),
    ("fully_connected_22", "data-parallel", 3, {}),
]


def case_id(case) -> str:
    layer, kind, sizes, options = case
    return f"{layer}:{kind}:{sizes}" + (f":{options}" if options else "")


def segment_input(graph, split, seed: int, frames: int = 1) -> dict:
    """The segment's inputs as the whole model computes them from seeded int8 images."""
    envs = []
    for f in range(frames):
        x = graph.random_input(seed * 100 + f)
        envs.append(graph.execute(x, 0, split.node_start))
    return {t: np.concatenate([e[t] for e in envs]) for t in split.inputs}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_int8_split_equals_unsplit_bit_for_bit(case):
    layer, kind, sizes, options = case
    graph = int8_split_graph()
    assert kind in legal_kinds(graph, layer)
    split = split_layer(graph, layer, kind, sizes, **options)
    assert split.n_parts == (6 if "grid" in options and len(sizes[1]) == 3 else 4 if "grid" in options else
                             3 if isinstance(sizes, int) else len(sizes))
    frames = 5 if kind == "data-parallel" else 1
    summing = split.layout.merge == "sum"
    assert split.part_dtype == (np.float32 if summing else np.int8)
    if summing:  # the root requantizes once, with the layer's own activation clamp
        post = split.post_graph()
        assert post.nodes[0].op == "requantize" and post.dtype(post.outputs[0]) == np.int8
    for seed in range(3):
        x = segment_input(graph, split, seed, frames)
        want = split.reference(x)
        whole = graph.execute(graph.random_input(seed * 100), 0, split.node_stop)[split.output]
        assert np.array_equal(want[:1], whole)
        assert want.dtype == np.int8 and np.unique(want).size >= min(6, want.size // 2), "degenerate test data"
        outs = []
        for p in range(split.n_parts):
            g = split.part_graph(p)
            assert g.quantized and g.dtype(g.outputs[0]) == split.part_dtype
            engine = make_engine(g, "numpy")
            feeds = split.slice_input(x, p)
            n = next(iter(feeds.values())).shape[0]
            outs.append(np.concatenate([engine.run({k: v[i:i + 1] for k, v in feeds.items()})[g.outputs[0]] for i in range(n)])
                        if n else np.empty((0, *g.shapes[g.outputs[0]][1:]), split.part_dtype))
        if summing:  # int32 accumulators well outside the int8 range, as exact float32 halves (hi, lo)
            assert all(o.dtype == np.float32 and o.shape[-1] % 2 == 0 for o in outs)
            sums = [o[..., 0::2].astype(np.int64) * 65536 + o[..., 1::2].astype(np.int64) for o in outs]
            assert all(np.array_equal(o, np.rint(o)) and (o[..., 1::2] >= 0).all() and (o[..., 1::2] < 65536).all() for o in outs)
            assert max(int(np.abs(s).max()) for s in sums) > 1000
        got = split.merge(outs)
        assert got.dtype == np.int8 and got.shape == want.shape
        assert np.array_equal(got, want), f"{int((got != want).sum())} of {got.size} values differ"
        # a runtime that carries the int8 outputs as float32 buffers merges to the same integers
        if not summing:
            assert np.array_equal(split.merge([o.astype(np.float32) for o in outs]), want)


def test_int8_split_of_a_float_io_model():
    """QUANTIZE in front: the first conv's input-channel split reads the quantized image."""
    graph = int8_split_graph(float_io=True)
    first = next(n.name for n in graph.nodes if n.op == "conv2d")
    for kind, sizes in (("conv-filter", (4, 2)), ("conv-spatial", (8, 5)), ("conv-channel", (3, 7))):
        split = split_layer(graph, first, kind, sizes)
        x = {t: graph.execute(graph.random_input(1), 0, split.node_start)[t] for t in split.inputs}
        assert np.array_equal(split.run(x), split.reference(x))


def test_int8_partial_sums_are_not_requantized_per_part():
    """Requantizing each part's partial sum to int8 and adding those (what a float split's merge does
    with its activations) is not the layer: the test data makes it differ, so the bit-exact test above
    would catch a split that requantized before the reduce."""
    graph = int8_split_graph()
    split = split_layer(graph, "conv_2d_9", "conv-filter", (11, 5, 4))
    x = segment_input(graph, split, 0)
    post = split.post_graph()
    zp = graph.quant[split.output].zero_point[0]
    per_part = zp
    for p in range(split.n_parts):
        g = split.part_graph(p)
        partial = g.execute(split.slice_input(x, p))[g.outputs[0]]
        per_part = per_part + post.execute({next(iter(post.inputs)): partial})[post.outputs[0]].astype(np.int32) - zp
    want = split.reference(x)
    assert np.array_equal(split.run(x), want)
    assert not np.array_equal(np.clip(per_part, -128, 127).astype(np.int8), want)


def test_int8_split_costs_count_int8_bytes():
    graph = int8_split_graph()
    conv = graph.node("conv_2d_9")
    channel = split_layer(graph, "conv_2d_9", "conv-channel", (6, 4), followers=False).cost()
    cin = graph.shapes[conv.inputs[0]]
    assert [p.recv_bytes for p in channel.parts] == [int(np.prod(cin))] * 2  # the whole int8 input, 1 byte a value
    assert [p.send_bytes for p in channel.parts] == [13 * 11 * 6, 13 * 11 * 4]
    assert [p.weight_bytes for p in channel.parts] == [20 * 6 + 4 * 6, 20 * 4 + 4 * 4]  # int8 filters, int32 biases
    assert channel.output_bytes == 13 * 11 * 10 and channel.input_bytes == int(np.prod(cin))
    summing = split_layer(graph, "conv_2d_9", "conv-filter", (12, 8)).cost()
    assert [p.send_bytes for p in summing.parts] == [13 * 11 * 10 * 8] * 2  # int32 partial sums as two float32 halves
    assert [p.recv_bytes for p in summing.parts] == [13 * 11 * 12, 13 * 11 * 8]
    assert sum(p.weight_bytes for p in summing.parts) == 200 + 40  # the bias once
