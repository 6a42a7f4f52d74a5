"""Layouts and their transitions (partitioners.layouts): what moves between the segments of a split
stage when a segment keeps its output on its parts, and what a hand-edited layout may not do."""
from __future__ import annotations

import pytest

from layers.builder import GraphBuilder
from layers.errors import PisplitError
from partitioners import layouts
from partitioners.plan import Segment
from partitioners.splits import split_layer, split_segment


def conv_stack():
    """3x3 'same' convs on 16 rows, a pool, then two dense layers."""
    b = GraphBuilder("conv_stack", seed=5)
    x = b.input("image", (1, 16, 12, 3))
    y = b.conv(x, 8, 3, "conv1", padding="same", activation="relu")
    y = b.conv(y, 8, 3, "conv2", padding="same", activation="relu")
    y = b.pool(y, "max", 2, "pool2")
    y = b.conv(y, 6, 3, "conv3", padding="same", activation="relu")
    y = b.act(y, "flatten", "flatten")
    y = b.dense(y, 20, "fc1", activation="relu")
    y = b.dense(y, 10, "fc2")
    return b.build(y)


def test_strips_that_agree_exchange_only_halo_rows():
    g = conv_stack()
    a = split_layer(g, "conv1", "conv-spatial", (8, 8), followers=False)
    b = split_layer(g, "conv2", "conv-spatial", (8, 8), followers=False)
    have = layouts.produced(a, (0, 1))
    assert have.describe() == "rows[0:8|8:16]@0,1"
    messages = layouts.transition(have, [p for p, _ in layouts.needed(b, (0, 1), a.output)])
    remote = [m for m in messages if m.src != m.dst]
    # one row each way: rank 0 needs row 8, rank 1 needs row 7
    assert sorted((m.src, m.dst, m.box[0]) for m in remote) == [(0, 1, (7, 8)), (1, 0, (8, 9))]
    assert all(m.nbytes == 12 * 8 * 4 for m in remote)
    # the same transition through the lead would move both whole strips twice
    assert layouts.transition_seconds(messages, 94e6) == pytest.approx(12 * 8 * 4 * 8 / 94e6)


def test_fc_output_then_fc_input_with_equal_sizes_moves_nothing():
    g = conv_stack()
    a = split_layer(g, "fc1", "fc-output", (12, 8))
    b = split_layer(g, "fc2", "fc-input", (12, 8))
    messages = layouts.transition(layouts.produced(a, (0, 1)), [p for p, _ in layouts.needed(b, (0, 1), a.output)])
    assert messages and all(m.src == m.dst for m in messages)
    assert layouts.transition_seconds(messages, 94e6) == 0.0
    # unequal sizes move only the rows that change ranks
    c = split_layer(g, "fc2", "fc-input", (10, 10))
    moved = [m for m in layouts.transition(layouts.produced(a, (0, 1)), [p for p, _ in layouts.needed(c, (0, 1), a.output)])
             if m.src != m.dst]
    assert [(m.src, m.dst, m.box) for m in moved] == [(1, 0, ((10, 12),))] or \
        [(m.src, m.dst, m.box) for m in moved] == [(0, 1, ((10, 12),))]


def test_gather_and_scatter_are_transitions_to_and_from_the_lead():
    g = conv_stack()
    a = split_layer(g, "conv1", "conv-spatial", (5, 6, 5), followers=False)
    have = layouts.produced(a, (0, 1, 2))
    whole = layouts.Piece(0, ((0, 16), (0, 12), (0, 8)))
    gather = layouts.transition(have, [whole])
    assert [(m.src, m.dst, m.box[0]) for m in gather] == [(0, 0, (0, 5)), (1, 0, (5, 11)), (2, 0, (11, 16))]
    scatter = layouts.transition(layouts.whole("image", (16, 12, 3), 0), [p for p, _ in layouts.needed(a, (0, 1, 2), "image")])
    assert [(m.src, m.dst) for m in scatter] == [(0, 0), (0, 1), (0, 2)]


def test_layouts_that_do_not_cover_a_need_are_refused_naming_the_tensor():
    have = layouts.TensorLayout("act", (8, 4, 2), (layouts.Piece(0, ((0, 3), (0, 4), (0, 2))), layouts.Piece(1, ((4, 8), (0, 4), (0, 2)))))
    with pytest.raises(PisplitError, match=r"tensor act: layout rows\[0:3\|4:8\]@0,1 does not cover"):
        layouts.transition(have, [layouts.Piece(1, ((2, 8), (0, 4), (0, 2)))])
    with pytest.raises(PisplitError, match="tensor act: rank 0 needs box .* outside its shape"):
        layouts.transition(have, [layouts.Piece(0, ((0, 9), (0, 4), (0, 2)))])


def test_kept_outputs_must_feed_the_next_split_segment_and_nothing_after():
    g = conv_stack()
    n = g.node_index
    ok = [Segment(n("conv1"), n("conv2"), "conv-spatial", (0, 1), (8, 8), output_layout="parts"),
          Segment(n("conv2"), n("conv3"), "conv-spatial", (0, 1), (4, 4))]
    layouts.check_kept_output(g, ok, 0)
    split_segment(g, ok[1].node_start, ok[1].node_stop, ok[1].kind, ok[1].sizes)
    with pytest.raises(PisplitError, match="tensor pool2: kept on the parts .* next segment of the stage is not split"):
        layouts.check_kept_output(g, [ok[1], Segment(n("conv3"), n("flatten") + 1)], 0)
    with pytest.raises(PisplitError, match=r"tensor fc2: segment at node \d+ \(fc-input\) cannot keep"):
        layouts.check_kept_output(g, [Segment(n("fc2"), n("fc2") + 1, "fc-input", (0, 1), (10, 10))], 0)
    with pytest.raises(PisplitError, match="cannot keep its output"):
        layouts.produced(split_layer(g, "fc2", "fc-input", 2), (0, 1))


def test_part_weights_own_their_memory_so_the_full_weight_can_go():
    # fc-input's rows of a (Cin, Cout) kernel are a contiguous slice: a view would keep the whole
    # kernel alive on every rank (VGG16 fc6: 411 MB where a quarter is 103 MB)
    g = conv_stack()
    for kind in ("fc-input", "fc-output"):
        part = split_layer(g, "fc1", kind, 2).part_graph(1)
        assert part.weights and all(w.base is None for w in part.weights.values()), kind


def test_layouts_describe_the_axis_they_cut():
    P = layouts.Piece
    assert layouts.describe_pieces((6,), (P(0, ((0, 4),)), P(1, ((4, 6),)))) == "channels[0:4|4:6]@0,1"
    assert layouts.describe_pieces((4, 5, 8), (P(2, ((0, 4), (0, 5), (0, 3))), P(3, ((0, 4), (0, 5), (3, 8))))) == "channels[0:3|3:8]@2,3"
    assert layouts.describe_pieces((2, 6, 5, 3), (P(0, ((0, 2), (0, 3), (0, 5), (0, 3))), P(1, ((0, 2), (3, 6), (0, 5), (0, 3))))) == "rows[0:3|3:6]@0,1"
    assert layouts.describe_pieces((2, 6, 5, 3), (P(0, ((0, 1), (0, 6), (0, 5), (0, 3))), P(1, ((1, 2), (0, 6), (0, 5), (0, 3))))) == "depth[0:1|1:2]@0,1"
    assert layouts.describe_pieces((4, 5, 8), (P(0, ((0, 4), (0, 5), (0, 8))),)) == "whole@0"
