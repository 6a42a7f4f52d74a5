"""Interior first (cluster.overlap): a row strip's interior reads only the rows its rank holds, so it
can be computed while the halo rows are in flight; interior + edges equal the whole part."""
from __future__ import annotations

import numpy as np
import pytest

from cluster.overlap import InteriorFirst, held_rows
from cluster.split_exec import PLAIN
from layers.engine import make_engine
from partitioners.splits import split_segment
from tests.partitioners.test_layouts import conv_stack


@pytest.mark.parametrize("segment,sizes,part", [((1, 3), (3, 2, 3), 0), ((1, 3), (3, 2, 3), 2), ((0, 1), (5, 6, 5), 1)])
def test_the_interior_reads_only_held_rows_and_the_edges_complete_the_part(segment, sizes, part):
    g = conv_stack()
    split = split_segment(g, *segment, "conv-spatial", sizes)
    graph = split.part_graph(part)
    (feed,) = split.parts[part].feeds
    # the previous segment kept strips of the same split as its rows: this part holds its own rows
    rows = split.parts[part].output_box[0]
    scale = g.shapes[feed.tensor][1] // g.shapes[split.output][1]
    held = (rows[0] * scale, rows[1] * scale)
    lo, hi = held_rows(feed.box, (held, (0, 12), (0, 8)))
    plan = InteriorFirst.plan(graph, feed.name, (lo, hi), "numpy")
    assert plan is not None and len(plan.pieces) >= 2
    x = np.random.default_rng(1).standard_normal(graph.inputs[feed.name], dtype=np.float32)
    want = make_engine(graph, "numpy").run({feed.name: x})[graph.outputs[0]]
    poisoned = x.copy()
    poisoned[:, :lo] = np.nan  # halo rows not here yet
    poisoned[:, hi:] = np.nan
    out = plan.run_interior(poisoned, PLAIN)
    _, _, (o0, o1), _, _ = plan.pieces[plan.interior]
    np.testing.assert_allclose(out[:, o0:o1], want[:, o0:o1], rtol=1e-6, atol=1e-6)
    assert np.isfinite(out[:, o0:o1]).all()
    np.testing.assert_allclose(plan.run_edges(x, out, PLAIN), want, rtol=1e-6, atol=1e-6)
    # the sub-parts share the part's weights instead of copying them
    weights = {id(w) for w in graph.weights.values()}
    for engine, *_ in plan.pieces:
        assert {id(w) for w in engine.graph.weights.values()} <= weights


def test_a_strip_of_two_rows_has_no_interior():
    g = conv_stack()
    split = split_segment(g, 1, 3, "conv-spatial", (3, 2, 3))
    graph = split.part_graph(1)
    (feed,) = split.parts[1].feeds
    assert InteriorFirst.plan(graph, feed.name, held_rows(feed.box, ((6, 10), (0, 12), (0, 8))), "numpy") is None


def test_the_cut_is_kept_only_where_its_edges_cost_less_than_the_halo_it_hides():
    from types import SimpleNamespace as NS

    from cluster.runtime import _Step
    from partitioners.layouts import Message

    whole, top, interior, bottom = object(), object(), object(), object()

    def stage(halo_bytes, link_bps):
        runner = NS(engine=whole, overlap=NS(pieces=[(top,), (interior,), (bottom,)], interior=1),
                    transfers=[NS(recvs=[(Message(0, 1, "x", ((0, 1), (0, halo_bytes // 4))),)])])
        step = object.__new__(_Step)
        step.parts, step.hooks, step.link_bps, step.link_latency_s = [("conv-spatial", runner, None)], NS(), link_bps, 0.0
        # whole part 10 ms; cut: interior 8 ms and two edges of 2 ms each (they repeat fixed costs)
        step.keep_paying_overlaps({id(whole): 0.010, id(top): 0.002, id(interior): 0.008, id(bottom): 0.002})
        return runner.overlap

    assert stage(halo_bytes=40_000, link_bps=94e6) is not None  # 3.4 ms of halo: the cut saves 1.4 ms
    assert stage(halo_bytes=40_000, link_bps=940e6) is None  # 0.3 ms of halo: the edges cost more
