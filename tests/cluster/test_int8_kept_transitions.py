"""Kept transitions of int8 layers (issue 12): where consecutive split segments keep the tensor between them
on their parts, the planner prices the peer-to-peer transition in the tensor's own bytes, 1 a value for an
int8 model's int8 activations (it counted 4, as for float32): segment_chains' kept table equals the layout
transitions of the real splits with the tensor's byte size, and moves a quarter of the float32 bytes."""
from __future__ import annotations

import math

import numpy as np

from partitioners.cost import CostModel, make_cluster
from partitioners.layouts import needed, produced, transition, transition_seconds, whole
from partitioners.profiles import Calibration
from partitioners.segment_chains import keep_pairs, value_bytes
from partitioners.splits import split_segment
from tests.layers.int8_split_models import int8_split_graph


def reference(model, pair, sizes, next_sizes, bytes_of) -> tuple[float, int]:
    """(seconds, bytes moved) of the pair's transition from the real splits, values of `bytes_of(t)` bytes."""
    graph = model.graph
    stop = model.splits.segments[pair.boundary][1]
    a = split_segment(graph, pair.start, stop, pair.kind, sizes)
    z = split_segment(graph, stop, pair.next_stop, pair.next_kind, next_sizes)
    ranks = range(len(sizes))
    messages = []
    for t in z.inputs:
        have = produced(a, ranks) if t == a.output else whole(t, graph.shapes[t][1:], 0)
        messages += transition(have, [p for p, _ in needed(z, ranks, t)], bytes_of(t))
    link = model.cluster
    moved = sum(m.nbytes for m in messages if m.src != m.dst)
    return transition_seconds(messages, link.link_bandwidth_bps, link.link_latency_s), moved


def test_kept_int8_transitions_count_one_byte_a_value():
    graph = int8_split_graph(features=True)
    model = CostModel(graph, make_cluster([("rpi3", 2, None)], 94e6, 2e-4), Calibration("numpy"))
    table = model.segment_table(model.slots_of((2,)))
    checked = spans = 0
    for p in keep_pairs(model):
        if p.next_span:  # an exchange span: priced from its boxes (segment_chains.exchange_boxes), below
            spans += 1
            continue
        sizes, next_sizes = table.sizes.get((p.boundary, p.option)), table.sizes.get((p.boundary + 1, p.next_option))
        if sizes is None or next_sizes is None:
            continue
        out = graph.nodes[model.splits.segments[p.boundary][1] - 1].outputs[0]
        assert value_bytes(graph, out) == 1 and graph.dtype(out) == np.int8
        seconds, moved = reference(model, p, sizes, next_sizes, lambda t: value_bytes(graph, t))
        as_float, moved_float = reference(model, p, sizes, next_sizes, lambda t: 4)
        assert math.isclose(table.kept_s[p.boundary, p.option, p.next_option], seconds, rel_tol=1e-9, abs_tol=1e-15), p
        if moved_float:
            assert moved * 4 == moved_float and seconds < as_float
            checked += 1
    assert checked >= 1


def test_exchange_spans_of_int8_layers_move_int8_bytes(monkeypatch):
    """An exchange span (conv-spatial segments handing each other their strips, peer to peer): its
    entry scatter and inner transitions carry the int8 tensors at 1 byte a value, a quarter of the time
    the same transfers take as float32 (no per-message latency: the ratio is exactly 4)."""
    from partitioners import segment_chains
    from partitioners.segment_columns import EXCHANGE

    graph = int8_split_graph(features=True)
    model = CostModel(graph, make_cluster([("rpi3", 2, None)], 94e6, 0.0), Calibration("numpy"))
    slots = model.slots_of((2,))
    table = model.segment_table(slots)
    columns = segment_chains.table_columns(model.splits.max_span, len(slots))
    cs = columns.index((EXCHANGE, "kind", 0))
    spans = [(s, d) for s in range(len(model.splits.segments)) for d in model.splits.exchange_spans(s)
             if all((k, cs) in table.sizes for k in range(s, s + d + 1))]
    assert spans
    for s, d in spans:
        sizes = [table.sizes[(k, cs)] for k in range(s, s + d + 1)]
        entry, inner = segment_chains.exchange_transitions(model, slots, s, d, sizes)
        segment_chains._boxes.pop(graph, None)  # the boxes' cache holds each move's bytes a value
        monkeypatch.setattr(segment_chains, "value_bytes", lambda graph, t: 4)
        entry4, inner4 = segment_chains.exchange_transitions(model, slots, s, d, sizes)
        monkeypatch.undo()
        segment_chains._boxes.pop(graph, None)
        assert entry > 0 and math.isclose(entry4, 4 * entry, rel_tol=1e-9)
        assert math.isclose(inner4, 4 * inner, rel_tol=1e-9, abs_tol=1e-15)
