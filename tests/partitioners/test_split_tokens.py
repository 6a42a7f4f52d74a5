"""Sequence (token) split of transformer blocks (issue 19, partitioners.split_tokens): each part takes its
rows of the tokens through the Q/K/V projections, gathers every part's K and V rows, attends with its own
queries and runs the output projection and the MLP on its rows. Exact against the unsplit block (1e-5
relative) on 2, 3 and 4 parts with uneven token counts, for the zoo's blocks, separate Q/K/V projections
and torch's fused projection as litert-torch writes it (batch-1 layouts: keys as (heads, head dim,
tokens)); priced in the cost model with the all-gather. The MPI runs are tests/cluster/test_split_tokens_mpi.py."""
from __future__ import annotations

import numpy as np
import pytest

from layers import zoo_model
from layers.errors import PisplitError
from layers.graph import DTYPE_BYTES
from layers.tflite import import_tflite_bytes
from partitioners.split_costs import SplitCatalogue
from partitioners.split_tokens import TOKENS_KIND, token_block
from partitioners.splits import legal_kinds, split_cost, split_layer
from tests.layers.tflite_models import TRANSFORMER_CASES


def graph_of(case):
    return zoo_model(case) if case == "kwt3" else import_tflite_bytes(TRANSFORMER_CASES[case]())


def first_block(g):
    return next(i for i, n in enumerate(g.nodes) if n.op == "dense" and token_block(g, i) is not None)


def check(split, engine="numpy", seed=0):
    g = split.graph
    rng = np.random.default_rng(seed)
    x = {t: rng.standard_normal(g.shapes[t]).astype(np.float32) for t in split.inputs}
    got, want = split.run(x, engine), split.reference(x)
    assert got.shape == want.shape
    err = float(np.abs(got - want).max())
    assert err <= 1e-5 * float(np.abs(want).max()), err


@pytest.mark.parametrize("case, sizes, engine", [
    ("kwt3", 2, "numpy"), ("kwt3", (1, 30, 30, 38), "numpy"), ("kwt3", (0.2, 0.5, 0.3), "numpy"),  # 99 tokens
    ("attention_block_gelu_mlp", (3, 7), "numpy"), ("attention_block_gelu_mlp", (2, 3, 1, 4), "litert"),  # 10 tokens
    ("torch_attention_fused_qkv", (1, 2, 6), "numpy"), ("torch_attention_fused_qkv", (5, 4), "litert"),  # 9 tokens
])
def test_token_split_equals_unsplit(case, sizes, engine):
    if engine == "litert":
        pytest.importorskip("ai_edge_litert")
    g = graph_of(case)
    start = first_block(g)
    split = split_layer(g, g.nodes[start].name, TOKENS_KIND, sizes)
    assert split.output_pattern == "gather" and split.input_pattern == "scatter" and sum(split.sizes) == g.shapes[g.nodes[start].inputs[0]][1]
    check(split, engine)


def test_zoo_block_runs_attention_and_mlp_on_rows_and_gathers_only_k_and_v():
    g = zoo_model("kwt3")
    name = "encoder_layer_0_attention_in_proj"
    assert TOKENS_KIND in legal_kinds(g, name)
    split = split_layer(g, name, TOKENS_KIND, (40, 59))
    # the whole pre-norm block: attention, residual, LayerNorm, MLP, residual; its inputs are the LayerNorm's
    # output and the block input (the residual), both as rows
    assert split.node_names[-1] == "encoder_layer_0_add_2" and "encoder_layer_0_mlp_2" in split.node_names
    assert set(split.inputs) == {"encoder_layer_0_ln_1", "pos_embedding"}
    assert [t for t, _ in split.block.keys] == ["encoder_layer_0_attention_k", "encoder_layer_0_attention_v"]
    for p, (a, b) in enumerate(split.phases):
        assert {n.node.op for n in a.nodes} <= {"dense", "reshape", "transpose", "strided_slice"}
        assert b.nodes[0].node.op == "batch_matmul"
        assert {f.name for f in b.feeds} >= {"encoder_layer_0_attention_k@all", "encoder_layer_0_attention_v@all"}
        assert split.parts[p].output_box == ((sum(split.sizes[:p]), sum(split.sizes[:p + 1])), (0, 192))
    # through the output projection only (what the planner prices next to attn-heads)
    short = split_layer(g, name, TOKENS_KIND, 3, last="encoder_layer_0_attention_out_proj")
    assert short.node_names[-1] == "encoder_layer_0_attention_out_proj" and short.inputs == ("encoder_layer_0_ln_1",)
    check(short)


def test_cost_counts_each_parts_rows_and_the_all_gather():
    g = zoo_model("kwt3")
    split = split_layer(g, "encoder_layer_0_attention_in_proj", TOKENS_KIND, (10, 50, 39))
    cost = split.cost()
    c, whole = 192, sum(g.cost(j).weight_bytes for j in range(split.node_start, split.node_stop))
    for p, size in zip(cost.parts, (10, 50, 39)):
        # its rows of the two inputs, and its rows of K and V once more (the lead's share of the all-gather)
        assert p.recv_bytes == (2 * size * c + 2 * size * c) * DTYPE_BYTES
        assert p.send_bytes == size * c * DTYPE_BYTES and p.weight_bytes == whole
    assert sum(p.flops for p in cost.parts) >= cost.unsplit_flops  # the LayerNorms and biases per row, nothing more
    assert sum(p.flops for p in cost.parts) <= 1.01 * cost.unsplit_flops


def test_planner_catalogue_prices_tokens_on_the_attention_segment():
    g = zoo_model("kwt3")
    cat = SplitCatalogue(g)
    s = next(i for i, (a, _) in enumerate(cat.segments) if g.nodes[a].name == "encoder_layer_0_attention_in_proj")
    assert {"attn-heads", TOKENS_KIND} <= set(cat.kinds(s))
    k = cat.kind_costs(s, TOKENS_KIND)
    assert k.stop == cat.kind_costs(s, "attn-heads").stop == cat.segments[s][1] and k.extent == 99
    sizes = (20, 33, 46)
    want = split_cost(g, "encoder_layer_0_attention_in_proj", TOKENS_KIND, sizes, last=g.nodes[k.stop - 1].name)
    for got, part in zip(cat.part_costs(s, TOKENS_KIND, sizes), want.parts):
        for f in ("flops", "weight_bytes", "recv_bytes", "send_bytes"):
            assert abs(getattr(got, f) - getattr(part, f)) <= 1e-6 * max(1, getattr(part, f)) + 1, f



def test_scatter_pays_a_link_latency_per_input_tensor():
    """The lead scatters each tensor a token split reads from before it as a message of its own to each remote
    part (cluster.split_exec: one Transfer per split input), and the emulated link charges each message its
    latency: the whole pre-norm block reads two (the LayerNorm's output and the residual rows), the attention
    segment one. comm_in holds (parts - 1) x (inputs + key-side tensors) latencies: scatter and all-gather."""
    from partitioners.cost import CostModel, make_cluster
    from partitioners.profiles import Calibration
    from partitioners.segment_table import build_segment_table
    from partitioners.split_tokens import scatter_tensors
    from partitioners.splits import split_segment

    g = zoo_model("kwt3")
    calibration = Calibration("numpy")

    def comm_in(latency):
        model = CostModel(g, make_cluster([("rpi4", 4, 1 << 30)], 940e6, latency), calibration)
        return model, build_segment_table(model, tuple(model.class_of_rank[r] for r in range(4)))

    model, slow = comm_in(1e-3)
    _, fast = comm_in(0.0)
    checked = set()
    for column, parts in (((TOKENS_KIND, "span", 4), 4), ((TOKENS_KIND, "subset", 3), 3)):
        o = slow.columns.index(column)
        rows = np.flatnonzero(np.isfinite(slow.comm_in_s[:, o]) & (slow.comm_in_s[:, o] > 0))
        assert len(rows) == 12
        for r in rows:
            start, stop = model.splits.segments[r][0], int(slow.split_stop[r, o])
            inputs = scatter_tensors(g, start, stop)
            assert inputs == len(split_segment(g, start, stop, TOKENS_KIND, (25,) * 3 + (24,)).inputs)
            keys = len(token_block(g, start).keys)
            assert keys == 2
            want = 1e-3 * (parts - 1) * (inputs + keys)
            assert abs((slow.comm_in_s[r, o] - fast.comm_in_s[r, o]) - want) < 1e-12
            checked.add((column[1], inputs))
    assert checked == {("span", 2), ("subset", 1)}  # the whole block reads the residual too, attention alone not


def test_refusals_are_one_line_and_say_why():
    g = zoo_model("kwt3")
    with pytest.raises(PisplitError, match=r"layer encoder_layer_0_mlp_1: kind attn-tokens does not apply .*starts no attention block"):
        split_layer(g, "encoder_layer_0_mlp_1", TOKENS_KIND, 2)
    with pytest.raises(PisplitError, match="100 parts"):
        split_layer(g, "encoder_layer_0_attention_in_proj", TOKENS_KIND, 100)
    with pytest.raises(PisplitError, match="cannot end at encoder_layer_0_attention_scores"):
        split_layer(g, "encoder_layer_0_attention_in_proj", TOKENS_KIND, 2, last="encoder_layer_0_attention_scores")
