"""The planner prices the extra engine calls of a strip computed interior-first (cluster.overlap): the
call count it assumes per rank is the count the runtime's cut makes, on a real split of VGG16."""
from __future__ import annotations

import numpy as np

from cluster.overlap import InteriorFirst, held_rows
from layers import zoo_model
from partitioners.segment_chains import interior_first_seconds, split_boxes
from partitioners.splits import split_segment


def test_extra_calls_match_the_runtime_cut():
    graph = zoo_model("vgg16")
    first, second = graph.nodes[0], graph.nodes[1]
    assert first.op == second.op == "conv2d"
    sizes = (50, 70, 60, 44)  # uneven strips of 224 rows
    tensor, have, _ = split_boxes(graph, 0, 1, "conv-spatial", sizes)
    _, _, need = split_boxes(graph, 1, 2, "conv-spatial", sizes)
    split = split_segment(graph, 1, 2, "conv-spatial", sizes)
    for rank, part in enumerate(split.parts):
        (feed,) = part.feeds
        held = [b for r, b in zip(*have) if r == rank][0]
        cut = InteriorFirst.plan(split.part_graph(rank, graph.weights), feed.name, held_rows(feed.box, tuple(map(tuple, held))), "numpy")
        runtime_extra = len(cut.pieces) - 1 if cut is not None else 0
        one_hot = np.eye(len(sizes))[rank]
        assert interior_first_seconds(have, need, tensor, (one_hot, np.zeros(len(sizes))), 1) == runtime_extra
        assert runtime_extra == (rank > 0) + (rank < len(sizes) - 1)  # edges only toward a neighbour
    # per node: a call of `nodes` nodes costs per_step + per_node x nodes; the slowest rank counts
    assert interior_first_seconds(have, need, tensor, (np.full(4, 1e-4), np.full(4, 2e-5)), 3) == 2 * (1e-4 + 3 * 2e-5)
    # a part reading another tensor than the kept one is not cut interior-first: nothing extra
    assert interior_first_seconds(have, {"other": need[tensor]}, tensor, (np.ones(4), np.ones(4)), 1) == 0.0
