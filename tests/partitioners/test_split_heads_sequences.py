"""Head-parallel attention on blocks fed (T, C) rows on axis 0 (issue 19): torch's batch_first=False attention
as litert-torch converts it (KWS's first block, Swin's windows): the block's input holds one frame's sequence
on axis 0, scores take per-head bias constants (Swin's relative position bias: each part takes its heads'
slice) and masks computed from constants inside the block (every part computes them) or before it (Swin's
shifted windows share one: every part receives it). Split by heads into 2, 3 and 4 uneven parts, equal to the unsplit block within 1e-5 relative, in one
process; under mpirun in tests/cluster/test_split_heads_mpi.py; on the litert-torch corpus (KWS, Swin-T)
when scripts/build_corpus_torch has built it."""
from __future__ import annotations

import numpy as np
import pytest

from layers.tflite import import_tflite_bytes
from partitioners.split_heads import HEADS_KIND, attention_block
from partitioners.splits import legal_kinds, split_layer
from tests.layers.test_int8_corpus import CORPUS
from tests.layers.tflite_models import Model, binary, fully_connected, strided_slice


def sequence_attention(m, x, heads):
    """(1, T, C) -> RESHAPE (T, C) -> torch's fused-projection attention on rows of axis 0, scores + a
    (heads, T, T) bias operand + a (1, heads, T, T) bias constant node (Swin's last stage) + a mask PADded from
    a constant before the block (Swin's shifted windows share one) + one PADded inside it, output projection,
    residual -> (1, T, C)."""
    _, t, c = m.shapes[x]
    d = c // heads
    ramp = np.where(np.arange(t - 2)[:, None] < np.arange(t)[None, :], -3.0, 0.0)
    early = m.op("PAD", [m.w.constant(f"early{m.count}", ramp, np.float32), m.const(np.array([[2, 0], [0, 0]], np.int32))], (t, t))
    rows = m.op("RESHAPE", [x, m.const([t, c])], (t, c))
    qkv = fully_connected(m, rows, 3 * c, keep_num_dims=True)  # (T, 3C)
    r = m.op("RESHAPE", [qkv, m.const([t, 1, 3, c])], (t, 1, 3, c))
    r = m.op("TRANSPOSE", [r, m.const([2, 0, 1, 3])], (3, t, 1, c))
    q, k, v = (strided_slice(m, r, [i, 0, 0, 0], [i + 1, t, 1, c], [1, 1, 1, 1], (1, t, 1, c)) for i in range(3))
    q = binary(m, "MUL", q, m.w.constant(f"scale{m.count}", 1 / np.sqrt(d), np.float32))
    hf = [m.op("TRANSPOSE", [m.op("RESHAPE", [p, m.const([t, heads, d])], (t, heads, d)), m.const(perm)],
               tuple((t, heads, d)[i] for i in perm)) for p, perm in ((q, [1, 0, 2]), (k, [1, 2, 0]), (v, [1, 0, 2]))]
    s = m.op("BATCH_MATMUL", hf[:2], (heads, t, t), m.opts("BatchMatMulOptions"))
    bias = m.weight((heads, t, t))
    m.shapes[bias] = (heads, t, t)
    s = binary(m, "ADD", s, bias)  # per-head bias, a weight operand
    node_bias = m.weight((1, heads, t, t))
    m.shapes[node_bias] = (1, heads, t, t)
    s = binary(m, "ADD", s, node_bias)  # per-head bias with more axes than the scores: a constant node
    mask = m.op("PAD", [m.w.constant(f"mask{m.count}", ramp, np.float32), m.const(np.array([[0, 2], [0, 0]], np.int32))], (t, t))
    s = binary(m, "ADD", binary(m, "ADD", s, mask), early)
    s = m.op("RESHAPE", [s, m.const([heads, t, t])], (heads, t, t))
    p = m.op("SOFTMAX", [s], (heads, t, t), m.opts("SoftmaxOptions", beta=1.0))
    o = m.op("BATCH_MATMUL", [p, hf[2]], (heads, t, d), m.opts("BatchMatMulOptions"))
    o = m.op("RESHAPE", [m.op("TRANSPOSE", [o, m.const([1, 0, 2])], (t, heads, d)), m.const([t, c])], (t, c))
    y = binary(m, "ADD", rows, fully_connected(m, o, c, keep_num_dims=True))
    return m.op("RESHAPE", [y, m.const([1, t, c])], (1, t, c))


def sequence_model(heads: int = 6, t: int = 7, c: int = 24) -> bytes:
    m = Model(5)
    return m.finish(sequence_attention(m, m.input((1, t, c)), heads))


def check(split, engine="numpy"):
    g = split.graph
    rng = np.random.default_rng(len(split.sizes))
    x = {t: rng.standard_normal(g.shapes[t]).astype(np.float32) for t in split.inputs}
    got, want = split.run(x, engine), split.reference(x)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())


@pytest.mark.parametrize("sizes, engine", [(2, "numpy"), ((1, 2, 3), "numpy"), ((3, 1, 1, 1), "numpy"), ((1, 5), "litert")])
def test_head_split_of_a_block_on_axis0_rows_equals_unsplit(sizes, engine):
    if engine == "litert":
        pytest.importorskip("ai_edge_litert")
    g = import_tflite_bytes(sequence_model())
    (start,) = [i for i, n in enumerate(g.nodes) if n.op == "dense" and attention_block(g, i) is not None]
    x = g.nodes[start].inputs[0]
    assert g.shapes[x] == (7, 24)  # one frame's 7 rows on axis 0
    assert HEADS_KIND in legal_kinds(g, g.nodes[start].name)
    split = split_layer(g, g.nodes[start].name, HEADS_KIND, sizes)
    assert split.input_pattern == "broadcast" and split.output_pattern == "reduce"
    assert [f.shape for f in split.parts[0].feeds] == [(7, 24), (7, 7)]  # the input rows, the mask made before the block
    # the biases are cut by heads: part p holds its heads' slices; the masks are whole everywhere, the one made
    # before the block (from constants alone) sent to every part as an input
    block = attention_block(g, start)
    bias = next(n for n in g.nodes if n.op == "add" and n.weight_shapes.get("constant") == (6, 7, 7))
    node_bias = next(n for n in g.nodes if n.op == "constant" and n.weight_shapes["value"] == (1, 6, 7, 7))
    assert block.extra_inputs == tuple(n.outputs[0] for n in g.nodes[:start] if n.op == "pad")
    assert list(block.head_constants) == node_bias.outputs
    for p, h in zip(split.parts, split.sizes):
        (pn,) = [pn for pn in p.nodes if pn.source == bias.name]
        assert pn.node.weight_shapes["constant"] == (h, 7, 7)
        (pn,) = [pn for pn in p.nodes if pn.source == node_bias.name]
        assert pn.node.weight_shapes["value"] == (1, h, 7, 7)
        assert sum(pn.node.op == "pad" for pn in p.nodes) == 1 and {f.tensor for f in p.feeds} == {x, *block.extra_inputs}
    check(split, engine)


def chunked_attention(m, x, heads):
    """MaxViT's attention: the fused projection's last axis cut into Q, K and V by three STRIDED_SLICEs (torch.chunk),
    each RESHAPEd to heads and TRANSPOSEd, scores + a (1, heads, T, T) bias operand, output projection."""
    n, t, c = m.shapes[x]
    d = c // heads
    qkv = fully_connected(m, x, 3 * c, keep_num_dims=True)
    q, k, v = (strided_slice(m, qkv, [0, 0, i * c], [1, t, (i + 1) * c], [1, 1, 1], (1, t, c)) for i in range(3))
    hf = [m.op("TRANSPOSE", [m.op("RESHAPE", [p, m.const([1, t, heads, d])], (1, t, heads, d)), m.const([0, 2, 1, 3])],
               (1, heads, t, d)) for p in (q, k, v)]
    s = m.op("BATCH_MATMUL", hf[:2], (1, heads, t, t), m.opts("BatchMatMulOptions", adjY=True))
    bias = m.weight((1, heads, t, t))
    m.shapes[bias] = (1, heads, t, t)
    p = m.op("SOFTMAX", [binary(m, "ADD", s, bias)], (1, heads, t, t), m.opts("SoftmaxOptions", beta=1.0))
    o = m.op("BATCH_MATMUL", [p, hf[2]], (1, heads, t, d), m.opts("BatchMatMulOptions"))
    o = m.op("RESHAPE", [m.op("TRANSPOSE", [o, m.const([0, 2, 1, 3])], (1, t, heads, d)), m.const([1, t, c])], (1, t, c))
    return binary(m, "ADD", x, fully_connected(m, o, c, keep_num_dims=True))


@pytest.mark.parametrize("sizes", [(1, 3), (2, 1, 1)])
def test_head_split_of_chunked_qkv_equals_unsplit(sizes):
    m = Model(7)
    g = import_tflite_bytes(m.finish(chunked_attention(m, m.input((1, 6, 16)), 4)))
    (start,) = [i for i, n in enumerate(g.nodes) if n.op == "dense" and attention_block(g, i) is not None]
    split = split_layer(g, g.nodes[start].name, HEADS_KIND, sizes)
    for p, h in zip(split.parts, split.sizes):  # Q, K and V of its heads: three chunks of h x 4 columns
        slices = [pn.node for pn in p.nodes if pn.node.op == "strided_slice"]
        assert [(n.attrs["starts"][-1], n.attrs["counts"][-1]) for n in slices] == [(i * h * 4, h * 4) for i in range(3)]
    check(split)


CORPUS_CASES = [a for a in ("kws", "swin_t", "maxvit_t") if (CORPUS / f"torch_{a}.tflite").exists()]


@pytest.mark.skipif(not CORPUS_CASES, reason=f"no litert-torch models in {CORPUS} (bash scripts/build_corpus_torch builds them)")
@pytest.mark.parametrize("arch", CORPUS_CASES or ["none"])
def test_corpus_blocks_on_axis0_rows_split_by_heads(arch):
    """KWS's first block reads (T, C) rows; Swin-T's window blocks read (windows x T, C) rows; MaxViT-T chunks
    its fused projection: head splits apply to the first block of each and are exact."""
    from layers import load_model

    g = load_model(str(CORPUS / f"torch_{arch}.tflite"))
    first = next(i for i, n in enumerate(g.nodes) if n.op == "dense" and HEADS_KIND in legal_kinds(g, n.name))
    assert arch == "maxvit_t" or g.shapes[g.nodes[first].inputs[0]][0] != 1  # fed rows on axis 0
    heads = attention_block(g, first).heads
    check(split_layer(g, g.nodes[first].name, HEADS_KIND, (1, heads - 1)))
