"""Kept layouts in the planner: kept transition costs, the best chain of options, dp choosing chains."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from layers import zoo_model
from layers.builder import GraphBuilder
from partitioners import segment_chains
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import device_profile
from partitioners.layouts import check_kept_output, needed, produced, transition, transition_seconds, whole
from partitioners.plan import Plan
from partitioners.planner_dp import StageTables, solve
from partitioners.planner_exhaustive import exhaustive
from partitioners.planners import make_plan
from partitioners.segment_chains import best_chain, keep_counts, keep_pairs
from partitioners.segment_table import OPTION_KINDS
from partitioners.split_costs import PLANNER_KINDS, SplitCatalogue
from partitioners.splits import split_segment

from .planner_cases import CALIBRATION, small_models


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def conv_stack(side=28, channels=192, layers=3):
    """3x3 'same' convs on a small image with many channels: compute-heavy, big activations."""
    b = GraphBuilder("conv_stack", 3)
    x = b.input("image", (1, side, side, 16))
    for i in range(layers):
        x = b.conv(x, channels, 3, f"conv{i}", padding="same", activation="relu")
    return b.build(x)


def bottleneck(rows=13, cols=11, width=6):
    """A residual bottleneck: conv 1x1 -> conv 3x3 -> conv 1x1 + skip -> relu (-> max-pool), then a
    conv and a dense head."""
    b = GraphBuilder("bottleneck", 5)
    x = b.input("image", (1, rows, cols, 8))
    skip = b.conv(x, 2 * width, 1, "proj", padding="same")
    y = b.conv(x, width, 1, "reduce", padding="same", activation="relu")
    y = b.conv(y, width, 3, "spatial", padding="same", activation="relu")
    y = b.conv(y, 2 * width, 1, "expand", padding="same")
    y = b.add("add", [y, skip], "sum")
    y = b.act(y, "relu", "out")
    y = b.pool(y, "max", 2, "pool", strides=2)
    y = b.conv(y, 10, 3, "head", padding="same", activation="relu")
    y = b.act(y, "flatten", "flat")
    y = b.dense(y, 9, "fc1", activation="relu")
    y = b.dense(y, 5, "fc2")
    return b.build(y)


def reference_kept_seconds(model, pair, sizes, next_sizes, slots=None) -> float:
    """layouts.transition_seconds of the pair's transition, from the real splits (the definition)."""
    graph = model.graph
    stop = model.splits.segments[pair.boundary][1]
    a = split_segment(graph, pair.start, stop, pair.kind, sizes)
    z = split_segment(graph, stop, pair.next_stop, pair.next_kind, next_sizes)
    ranks = range(len(sizes))
    messages = []
    for t in z.inputs:
        have = produced(a, ranks) if t == a.output else whole(t, graph.shapes[t][1:], 0)
        messages += transition(have, [p for p, _ in needed(z, ranks, t)])
    return transition_seconds(messages, model.cluster.link_bandwidth_bps, model.cluster.link_latency_s) + _interior_first_s(model, a, z, slots, pair.next_stop - stop)


def _interior_first_s(model, a, z, slots, nodes) -> float:
    """The engine calls beyond one that the runtime's interior-first cut (cluster.overlap) gives each
    conv-spatial part fed only from the kept strips, at the lead profile's per-call cost on the part's
    device (segment_chains prices them in the kept transition): the slowest part's."""
    from cluster.overlap import InteriorFirst, held_rows

    if slots is None or z.kind != "conv-spatial" or any(len(p.feeds) != 1 or p.feeds[0].tensor != a.output for p in z.parts):
        return 0.0
    overhead = model.calibration.resolve(model.classes[slots[0]].kind)[0].split_overhead_for("conv-spatial")
    worst = 0.0
    for rank, part in enumerate(z.parts):
        (feed,) = part.feeds
        cut = InteriorFirst.plan(z.part_graph(rank, model.graph.weights), feed.name, held_rows(feed.box, a.parts[rank].output_box), "numpy")
        calls = len(cut.pieces) - 1 if cut is not None else 0
        worst = max(worst, calls * (overhead.per_step_s + overhead.per_node_s * nodes) * model.classes[slots[rank]].seconds_scale)
    return worst


@pytest.mark.parametrize("graph,entries", [
    (bottleneck(), [("rpi4", 1, None), ("rpi3", 2, None)]),
    (conv_stack(13, 8, 3), [("rpi3", 3, None)]),
    (zoo_model("alexnet"), [("rpi5", 1, None), ("rpi3", 2, None)]),
])
def test_kept_seconds_are_the_layout_transitions_of_the_real_splits(graph, entries):
    model = CostModel(graph, make_cluster(entries, 94e6, 2e-4), CALIBRATION)
    pairs = keep_pairs(model)
    kinds = {(p.kind, p.next_kind) for p in pairs}
    assert ("conv-spatial", "conv-spatial") in kinds or ("fc-output", "fc-input") in kinds
    checked = 0
    for counts in [(1, 2), (0, 2), (1, 1)] if len(model.classes) == 2 else [(2,), (3,)]:
        slots = model.slots_of(counts)
        table = model.segment_table(slots)
        for p in pairs:
            sizes, next_sizes = table.sizes.get((p.boundary, p.option)), table.sizes.get((p.boundary + 1, p.next_option))
            if sizes is None or next_sizes is None:
                assert not np.isfinite(table.kept_s[p.boundary, p.option, p.next_option])
                continue
            expected = reference_kept_seconds(model, p, sizes, next_sizes, slots)
            assert close(table.kept_s[p.boundary, p.option, p.next_option], expected), (p, sizes, next_sizes)
            checked += 1
    assert checked >= 4


def test_only_legal_pairs_keep():
    graph = bottleneck()
    model = CostModel(graph, make_cluster([("rpi3", 3, None)], 94e6), CALIBRATION)
    names = {(graph.nodes[model.splits.segments[p.boundary][0]].name, p.kind, p.next_kind)
             for p in keep_pairs(model) if p.option < len(OPTION_KINDS) and p.next_option < len(OPTION_KINDS)}
    producers = {n for n, _, _ in names}
    # proj's output waits for the add, not for 'reduce'; 'head' leaves the flatten to the lead; sum
    # kinds never keep; 'spatial' -> 'expand' keeps although the add also reads the skip (from the lead)
    assert producers == {"reduce", "spatial", "expand", "fc1"}
    assert not {k for _, k, _ in names} & {"fc-input", "conv-filter"}
    assert ("fc1", "fc-output", "fc-input") in names and ("spatial", "conv-spatial", "conv-spatial") in names


def legal_sequence(table, first: int, chosen) -> bool:
    """Whether a sequence of columns is a chain: fused spans whole (F_d, C_(d-1), ..., C_0), nothing
    else inside them, starting and ending outside them (segment_table's module docstring)."""
    cols = [table.columns[o] for o in chosen]
    expect = None  # the inside column the next segment must take
    for i, (kind, role, d) in enumerate(cols):
        if expect is not None:
            if (role, d) != ("inside", expect):
                return False
        elif role == "inside":
            return False
        expect = d - 1 if role in ("span", "xspan") else (d - 1 if role == "inside" and d > 0 else None)
    return expect is None


def brute_force(table, first: int, last: int) -> float:
    """The least time of any options and keep choices over segments [first, last], from the raw parts."""
    options = [np.nonzero(np.isfinite(table.compute_s[s]))[0] for s in range(first, last + 1)]
    best = math.inf
    for chosen in itertools.product(*options):
        if not legal_sequence(table, first, chosen):
            continue
        boundaries = []
        for i in range(len(chosen) - 1):
            star = table.comm_out_s[first + i, chosen[i]] + table.comm_in_s[first + i + 1, chosen[i + 1]]
            boundaries.append((star, table.kept_s[first + i, chosen[i], chosen[i + 1]]))
        base = sum(table.compute_s[first + i, o] for i, o in enumerate(chosen))
        if table.inner_s is not None:  # an exchange span's transitions between its own segments
            base += sum(table.inner_s[first + i, o] for i, o in enumerate(chosen))
        base += table.comm_in_s[first, chosen[0]] + table.comm_out_s[last, chosen[-1]]
        for keep in itertools.product((False, True), repeat=len(boundaries)):
            total = base + sum(k if kept else s for (s, k), kept in zip(boundaries, keep))
            best = min(best, total)
    return best


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_models())
def test_best_chain_is_the_least_of_every_choice(model):
    for m in range(2, len(model.cluster.devices) + 1):
        counts = tuple(min(c, m - sum(model.capacity[:k])) if m > sum(model.capacity[:k]) else 0 for k, c in enumerate(model.capacity))
        table = model.segment_table(model.slots_of(counts))
        n = len(table.compute_s)
        for first in range(n):
            for last in range(first, min(n, first + 4)):
                chain = best_chain(table.seconds, table.saving, table.weight_bytes, table.work_bytes, first, last,
                               table.start_ok, table.end_ok)
                assert math.isclose(chain.seconds, brute_force(table, first, last), rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("graph,entries,link", [
    (conv_stack(20, 256, 6), [("rpi3", 3, None)], 94e6),  # six layers: parts pay their overhead (profiles split_overhead), still kept
    (bottleneck(29, 27, 256), [("rpi4", 1, None), ("rpi3", 2, None)], 1e9),
    (zoo_model("vgg16"), [("rpi3", 4, None)], 94e6),
])
def test_best_chains_that_keep_are_the_least_of_every_choice(graph, entries, link):
    model = CostModel(graph, make_cluster(entries, link, 1e-4), CALIBRATION)
    table = model.segment_table(model.slots_of(model.capacity))
    n = len(table.compute_s)
    kept = 0
    for first in range(n):
        for last in range(first, min(n, first + 4)):
            chain = best_chain(table.seconds, table.saving, table.weight_bytes, table.work_bytes, first, last,
                               table.start_ok, table.end_ok)
            assert math.isclose(chain.seconds, brute_force(table, first, last), rel_tol=1e-9)
            kept += any(chain.kept)
    assert kept >= 3


def test_dp_keeps_row_strips_through_a_conv_stack():
    graph = conv_stack(36)  # rows enough for three parts to pay their overhead (profiles' split_overhead)
    # without fused spans (with them, one span over the three convs wins: test_dp_fuses_...)
    model = CostModel(graph, make_cluster([("rpi3", 3, None)], 94e6), CALIBRATION, SplitCatalogue(graph, PLANNER_KINDS))
    plan = make_plan(graph, model, "dp", "latency")
    _, _, latency = exhaustive(model, "latency")
    assert close(plan.predicted_latency_s, latency)
    (stage,) = plan.stages
    assert stage.mode == "split"
    assert [(g.kind, g.output_layout) for g in stage.segments] == [("conv-spatial", "parts")] * 2 + [("conv-spatial", "lead")]
    single = make_plan(graph, model, "single", "latency")
    assert plan.predicted_latency_s < 0.95 * single.predicted_latency_s
    # the same options as a star (every output gathered, every input scattered) would lose to one device
    cost = model.stage_cost(stage.node_start, stage.node_stop, (len(stage.ranks),), "split")
    slots = model.slots_of((len(stage.ranks),))
    star = sum(next(s for s in model.segment_options(o.segment, slots) if s.kind == o.kind).seconds for o in cost.segments)
    assert star > single.predicted_latency_s > cost.latency_s
    # the chain's options carry what moves along the chain: their compute and transfers add up to it
    assert close(sum(o.seconds for o in cost.segments), cost.latency_s)


@pytest.mark.parametrize("memory,link,fused", [(None, 94e6, False), (None, 1e9, False), (0.8, 94e6, False),
                                               (None, 94e6, True), (None, 1e9, True), (0.8, 94e6, True)])
def test_dp_equals_exhaustive_with_chains(memory, link, fused):
    graph = conv_stack(20, 256, 4)
    kinds = PLANNER_KINDS + (("fused-tiles",) if fused else ())
    if memory is not None:  # a little less than the unconstrained plan takes: chains are repaired for memory
        plan = make_plan(graph, CostModel(graph, make_cluster([("rpi3", 3, None)], link), CALIBRATION, SplitCatalogue(graph, kinds)),
                         "dp", "latency")
        memory = device_profile("rpi3").reserved_bytes + int(memory * max(plan.stages[0].predicted.memory_bytes.values()))
    model = CostModel(graph, make_cluster([("rpi3", 3, memory)], link), CALIBRATION, SplitCatalogue(graph, kinds))
    for objective in ("throughput", "latency"):
        _, period, latency = exhaustive(model, objective)
        plan = make_plan(graph, model, "dp", objective)
        assert close(1.0 / plan.predicted_throughput_fps, period) and close(plan.predicted_latency_s, latency)
        if objective == "latency" and not fused:
            assert sum(g.output_layout == "parts" for s in plan.stages for g in s.segments) == 3


def test_kept_plan_segments_are_legal_and_round_trip():
    graph = zoo_model("vgg16")
    model = CostModel(graph, make_cluster([("rpi3", 4, None)], 94e6), CALIBRATION)
    plan = make_plan(graph, model, "dp", "latency")
    kept = 0
    for stage in plan.stages:
        for i, g in enumerate(stage.segments):
            if g.output_layout == "parts":
                check_kept_output(graph, stage.segments, i)
                split = split_segment(graph, g.node_start, g.node_stop, g.kind, g.sizes, g.options)
                assert produced(split, g.ranks).describe().startswith(("rows[", "channels["))
                kept += 1
    assert kept >= 8  # VGG16's conv stack keeps its row strips
    assert Plan.from_dict(plan.to_dict()) == plan


def test_dp_tables_agree_with_stage_costs_on_chains():
    graph = zoo_model("vgg16")
    model = CostModel(graph, make_cluster([("rpi3", 3, None)], 94e6), CALIBRATION)
    tables = StageTables(model)
    n = len(graph)
    ranges = [(0, n), (0, 12), (1, 16), (3, 20), (19, n)]
    for a, modes in zip(tables.candidates, tables.tables):
        if "split" not in modes:
            continue
        period, latency = modes["split"]
        for i, j in ranges:
            cost = model.stage_cost(i, j, a, "split")
            if cost is None or not cost.feasible:
                assert not math.isfinite(period[i, j])
            else:
                assert close(period[i, j], cost.period_s) and close(latency[i, j], cost.latency_s)
    stages, _, latency = solve(tables, "latency")
    assert any(o.output_layout == "parts" for s in stages for o in model.stage_cost(s.start, s.stop, s.counts, s.mode).segments)


def test_large_clusters_keep_on_a_budget(monkeypatch):
    monkeypatch.setattr(segment_chains, "KEEP_BUDGET", 60)
    graph = conv_stack(13, 8, 3)
    model = CostModel(graph, make_cluster([("rpi3", 3, None), ("rpi4", 2, None)], 94e6), CALIBRATION)
    assert [c.kind for c in model.classes] == ["rpi4", "rpi3"]
    allowed = keep_counts(model)
    assert {(0, 3), (0, 2), (2, 0)} <= allowed and (2, 3) not in allowed  # one kind first, then the largest
    assert not (model.segment_table(model.slots_of((2, 3))).saving > 0).any()  # -inf: moves into and out of spans
    assert (model.segment_table(model.slots_of((0, 3))).saving > 0).any()
    plan = make_plan(graph, model, "dp", "latency")
    assert any("keep activations on their parts" in note for note in plan.notes)
    _, _, latency = exhaustive(model, "latency")
    assert close(plan.predicted_latency_s, latency)


def test_dp_splits_a_segment_over_a_subset_of_its_stage_and_equals_exhaustive():
    # on 4 Pi 3B+ at 400 Mbit/s the bottleneck's last conv (few rows after the pool) pays best on 3 of
    # the stage's 4 ranks; its strips still come from the 4-way fused block peer to peer (at 1 Gbit/s, with
    # the first parts' outputs priced as coming in while the lead still scatters, it pays on all 4)
    graph = bottleneck(29, 27, 64)
    model = CostModel(graph, make_cluster([("rpi3", 4, None)], 400e6, 1e-4), CALIBRATION)
    plan = make_plan(graph, model, "dp", "latency")
    _, _, latency = exhaustive(model, "latency")
    assert close(plan.predicted_latency_s, latency)
    (stage,) = [s for s in plan.stages if s.mode == "split"]
    used = [len(g.ranks) for g in stage.segments if g.kind != "none"]
    assert max(used) == len(stage.ranks) and min(used) < len(stage.ranks), used
    for g in stage.segments:
        assert g.ranks == stage.ranks[:len(g.ranks)]  # the stage's first ranks: the lead and the fastest
        if g.kind != "none":
            split = split_segment(graph, g.node_start, g.node_stop, g.kind, g.sizes, g.options)
            assert split.n_parts == len(g.ranks)
    assert Plan.from_dict(plan.to_dict()) == plan


def residual_block(rows=40, width=192):
    """A stem conv, one identity bottleneck whose add reads the stem's output three convs later, a
    pool and a dense head."""
    b = GraphBuilder("residual_block", 11)
    x = b.input("image", (1, rows, rows, 6))
    x = b.conv(x, width, 3, "stem", padding="same", activation="relu")
    y = b.conv(x, width // 4, 1, "reduce", padding="same", activation="relu")
    y = b.conv(y, width // 4, 3, "spatial", padding="same", activation="relu")
    y = b.conv(y, width, 1, "expand", padding="same")
    y = b.add("add", [y, x], "add")
    y = b.act(y, "relu", "out")
    y = b.pool(y, "max", 4, "pool", strides=4)
    y = b.act(y, "flatten", "flat")
    return b.build(b.dense(y, 10, "fc"))


def test_dp_exchanges_narrow_halos_while_the_block_input_waits_on_the_parts():
    # on 3 Pi 3B+ at 94 Mbit/s the block runs conv by conv on kept strips: the 3x3 conv's halo rows
    # are of the narrow (48-channel) tensor, and the 192-channel block input stays on the parts until
    # the add reads it (an exchange span); the same as exhaustive search
    graph = residual_block(48)
    model = CostModel(graph, make_cluster([("rpi3", 3, None)], 94e6, 1e-4), CALIBRATION)
    plan = make_plan(graph, model, "dp", "latency")
    _, _, latency = exhaustive(model, "latency")
    assert close(plan.predicted_latency_s, latency)
    (stage,) = [s for s in plan.stages if s.mode == "split"]
    n = graph.node_index
    kept = {graph.nodes[g.node_stop - 1].outputs[0] for g in stage.segments if g.output_layout == "parts"}
    assert "stem" in kept, [(g.node_start, g.node_stop, g.kind, g.output_layout) for g in stage.segments]
    readers = [g for g in stage.segments if g.node_start <= n("add") < g.node_stop]
    assert readers and readers[0].kind == "conv-spatial" and readers[0].node_start > n("reduce")  # read again, later
    for i, g in enumerate(stage.segments):
        if g.output_layout == "parts":
            check_kept_output(graph, stage.segments, i)
    cost = model.stage_cost(stage.node_start, stage.node_stop, (len(stage.ranks),), "split")
    assert len(plan.stages) == 1 and close(cost.latency_s, plan.predicted_latency_s)
    assert Plan.from_dict(plan.to_dict()) == plan
