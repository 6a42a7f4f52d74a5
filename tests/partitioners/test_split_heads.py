"""Head-parallel attention (issue 19, partitioners.split_heads): the attention blocks converters write
are recognised (torch's fused Q/K/V projection as litert-torch converts it, and separate Q/K/V
projections), split by heads into 2, 3 and 4 parts with uneven heads, and every split equals the
unsplit block within 1e-5 relative, in one process (the MPI runs are tests/cluster/test_split_heads_mpi.py)."""
from __future__ import annotations

import numpy as np
import pytest

from layers.errors import PisplitError
from layers.tflite import import_tflite_bytes
from partitioners.split_heads import HEADS_KIND, attention_block
from partitioners.splits import legal_kinds, split_cost, split_layer
from tests.layers.tflite_models import TRANSFORMER_CASES


def graph_of(case):
    return import_tflite_bytes(TRANSFORMER_CASES[case]())


def blocks(graph):
    return [b for b in (attention_block(graph, i) for i, n in enumerate(graph.nodes) if n.op == "dense") if b is not None]


def test_blocks_recognised_with_their_heads():
    fused = blocks(graph_of("torch_attention_fused_qkv"))
    assert [(b.heads, b.head_dim, b.fused) for b in fused] == [(6, 4, True), (6, 4, True)]
    separate = blocks(graph_of("attention_block_gelu_mlp"))
    assert [(b.heads, b.head_dim, b.fused) for b in separate] == [(4, 4, False)]
    g = graph_of("attention_block_gelu_mlp")
    # the block ends at the output projection; the MLP's dense layers start no block
    assert g.nodes[separate[0].stop - 1].op == "dense"
    mlp = [i for i, n in enumerate(g.nodes) if n.op == "dense" and i >= separate[0].stop]
    assert mlp and all(HEADS_KIND not in legal_kinds(g, g.nodes[i].name) for i in mlp)
    assert HEADS_KIND in legal_kinds(g, g.nodes[separate[0].start].name)


@pytest.mark.parametrize("case, sizes", [
    *[("torch_attention_fused_qkv", s) for s in (2, 3, 4, (1, 5), (3, 2, 1), (1, 1, 3, 1), (0.2, 0.8))],  # 6 heads
    *[("attention_block_gelu_mlp", s) for s in (2, 3, 4, (1, 3), (2, 1, 1), (0.7, 0.3))],  # 4 heads
])
def test_head_split_equals_unsplit(case, sizes):
    g = graph_of(case)
    b = blocks(g)[0]
    split = split_layer(g, g.nodes[b.start].name, HEADS_KIND, sizes)
    assert (split.node_start, split.node_stop) == (b.start, b.stop) and sum(split.sizes) == b.heads
    rng = np.random.default_rng(len(split.sizes))
    x = {t: rng.standard_normal(g.shapes[t]).astype(np.float32) for t in split.inputs}
    got, want = split.run(x), split.reference(x)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())
    assert split.output_pattern == "reduce" and split.input_pattern == "broadcast"


def test_parts_hold_their_heads_only():
    g = graph_of("torch_attention_fused_qkv")
    b = blocks(g)[0]
    split = split_layer(g, g.nodes[b.start].name, HEADS_KIND, (1, 2, 3))
    c = g.shapes[b.x][-1]
    cost = split.cost()
    for part, h in zip(cost.parts, split.sizes):
        # Q/K/V columns and output-projection rows of its heads (+ the projection biases; the output bias on part 0)
        qkv = c * 3 * h * b.head_dim + 3 * h * b.head_dim
        out = h * b.head_dim * c + (c if part.index == 0 else 0)
        assert part.weight_bytes == 4 * (qkv + out + 1)  # + the scalar scale of Q
    assert sum(p.flops for p in cost.parts) == pytest.approx(cost.unsplit_flops, rel=0.01)
    whole = split_cost(g, g.nodes[b.start].name, HEADS_KIND, 1)
    assert whole.parts[0].flops == cost.unsplit_flops


def test_head_split_refusals():
    g = graph_of("attention_block_gelu_mlp")
    b = blocks(g)[0]
    layer = g.nodes[b.start].name
    with pytest.raises(PisplitError, match="cannot split 4 attention heads into 5 parts|4 attention heads"):
        split_layer(g, layer, HEADS_KIND, 5)
    mlp = next(n.name for i, n in enumerate(g.nodes) if n.op == "dense" and i >= b.stop)
    with pytest.raises(PisplitError, match=f"kind {HEADS_KIND} does not apply"):
        split_layer(g, mlp, HEADS_KIND, 2)
    with pytest.raises(PisplitError, match="covers the whole block"):
        split_layer(g, layer, HEADS_KIND, 2, last=g.nodes[b.stop - 2].name)


def test_refusal_says_why_the_node_starts_no_block():
    g = graph_of("attention_block_gelu_mlp")
    fc1 = next(i for i, n in enumerate(g.nodes) if n.op == "gelu") - 1
    with pytest.raises(PisplitError, match=r"does not apply to a dense node .*; node .* \(gelu\) cannot be part of a head-parallel block"):
        split_layer(g, g.nodes[fc1].name, HEADS_KIND, 2)
