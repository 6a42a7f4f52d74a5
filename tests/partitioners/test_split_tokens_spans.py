"""Token spans (issue 19): the dp planner is offered attn-tokens through a whole transformer block (attention,
residual, LayerNorm, MLP, residual: several planner segments, as fused-tiles spans are), priced from shapes with
each part's rows through every node of the block and its K/V slice all-gathered. The block's best chain equals
every legal choice of the table's columns (the span whole, nothing inside it), and the plan carries one
attn-tokens segment over the block. The runs of such a plan under mpirun: tests/cluster/test_split_tokens_mpi.py."""
from __future__ import annotations

import math

from layers import zoo_model
from layers.tflite import import_tflite_bytes
from partitioners.cost import CostModel, make_cluster
from partitioners.planners import make_plan
from partitioners.segment_chains import best_chain
from partitioners.split_costs import SplitCatalogue, token_span_kind
from partitioners.split_tokens import TOKENS_KIND, token_block
from partitioners.splits import split_cost
from tests.layers.tflite_models import TRANSFORMER_CASES
from tests.partitioners.planner_cases import CALIBRATION
from tests.partitioners.test_plan_chains import brute_force

FIELDS = ("flops", "weight_bytes", "recv_bytes", "send_bytes")


def test_catalogue_offers_the_whole_block_and_prices_it_as_the_split():
    g = zoo_model("kwt3")
    cat = SplitCatalogue(g)
    s = next(i for i, (a, _) in enumerate(cat.segments) if g.nodes[a].name == "encoder_layer_0_attention_in_proj")
    block = token_block(g, cat.segments[s][0])
    (d,) = cat.token_spans(s)
    assert cat.segments[s + d][1] == block.stop > cat.segments[s][1]  # beyond the attention segment: the MLP too
    assert g.nodes[block.stop - 1].name == "encoder_layer_0_add_2"
    k = cat.kind_costs(s, token_span_kind(d))
    assert k.stop == block.stop and k.extent == 99
    # the MLP's segments are no token spans' starts, and spans start only where attn-tokens applies
    assert all(cat.token_spans(t) == () for t in range(len(cat.segments)) if TOKENS_KIND not in cat.kinds(t))
    for sizes in ((20, 33, 46), (50, 49), (1, 30, 30, 38)):
        want = split_cost(g, "encoder_layer_0_attention_in_proj", TOKENS_KIND, sizes, last="encoder_layer_0_add_2")
        got = [k.part(r, n, len(sizes)) for r, n in enumerate(sizes)]
        for a, b in zip(got, want.parts):
            for f in FIELDS:
                assert abs(getattr(a, f) - getattr(b, f)) <= 1e-6 * max(1.0, getattr(b, f)) + 1, (sizes, f)
    # K and V travel: every part receives the others' rows of both (beyond its own input rows)
    assert want.parts[1].recv_bytes > 2 * 30 * 192 * 4


def test_best_chain_with_token_spans_is_the_least_of_every_choice():
    g = import_tflite_bytes(TRANSFORMER_CASES["attention_block_gelu_mlp"]())
    model = CostModel(g, make_cluster([("rpi3", 3, None)], 1e12, 0.0), CALIBRATION)
    (s,) = [t for t in range(len(model.splits.segments)) if model.splits.token_spans(t)]
    table = model.segment_table(model.slots_of(model.capacity))
    d = model.splits.token_spans(s)[0]
    span = table.columns.index((TOKENS_KIND, "span", d))
    assert math.isfinite(table.compute_s[s, span])
    n = len(table.compute_s)
    for first in range(max(0, s - 1), s + 1):
        for last in range(s + d, min(n, s + d + 2)):
            chain = best_chain(table.seconds, table.saving, table.weight_bytes, table.work_bytes, first, last,
                               table.start_ok, table.end_ok)
            assert math.isclose(chain.seconds, brute_force(table, first, last), rel_tol=1e-9, abs_tol=1e-12)


def test_dp_plans_attn_tokens_through_each_whole_block():
    g = zoo_model("kwt3")
    model = CostModel(g, make_cluster([("rpi4", 3, None)], 1e12, 0.0), CALIBRATION)
    plan = make_plan(g, model, "dp", "latency")
    token = [seg for st in plan.stages for seg in st.segments if seg.kind == TOKENS_KIND]
    assert len(token) == 12
    whole = [seg for seg in token if seg.node_stop == token_block(g, seg.node_start).stop]
    assert len(whole) >= 11 and all(sum(seg.sizes) == 99 for seg in token)
    assert all(any("mlp" in g.nodes[j].name for j in range(seg.node_start, seg.node_stop)) for seg in whole)
    # without the span (attn-tokens through the attention only, the MLP its own segments) the plan is slower
    kinds = tuple(k for k in model.splits.allowed)
    narrow = CostModel(g, model.cluster, CALIBRATION, SplitCatalogue(g, kinds))
    narrow.splits._token_spans.clear()
    narrow.splits.max_span = 0
    assert plan.predicted_latency_s < make_plan(g, narrow, "dp", "latency").predicted_latency_s
