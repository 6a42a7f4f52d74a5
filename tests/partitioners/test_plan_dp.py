"""The dp planner: equal to exhaustive search on small cases, plan invariants, JSON round trip, speed-weighted sizes."""
from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings

from layers import zoo_model
from layers.errors import PisplitError
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import device_profile
from partitioners.plan import Plan
from partitioners.planner_dp import StageTables, candidate_counts, solve
from partitioners.planner_exhaustive import exhaustive
from partitioners.planners import InfeasiblePlan, make_plan
from partitioners.splits import split_layer, split_segment

from .planner_cases import CALIBRATION, small_models

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


@SETTINGS
@given(small_models())
def test_dp_equals_exhaustive_throughput(model):
    tables = StageTables(model)
    stages, period, latency = exhaustive(model, "throughput")
    if not stages:
        with pytest.raises(PisplitError):
            solve(tables, "throughput")
        return
    dp_stages, dp_period, dp_latency = solve(tables, "throughput")
    assert close(dp_period, period), (dp_stages, stages)
    assert close(dp_latency, latency), (dp_stages, stages)


@SETTINGS
@given(small_models())
def test_dp_equals_exhaustive_latency(model):
    stages, _, latency = exhaustive(model, "latency")
    if not stages:
        with pytest.raises(InfeasiblePlan):
            make_plan(model.graph, model, "dp", "latency")
        return
    plan = make_plan(model.graph, model, "dp", "latency")
    assert close(plan.predicted_latency_s, latency)


@SETTINGS
@given(small_models())
def test_plans_keep_invariants_and_round_trip(model):
    for objective in ("throughput", "latency"):
        try:
            plan = make_plan(model.graph, model, "dp", objective)
        except InfeasiblePlan as exc:
            assert exc.node in {n.name for n in model.graph.nodes} and "cannot be placed" in str(exc)
            continue
        plan.validate()
        covered = [i for s in plan.stages for i in range(s.node_start, s.node_stop)]
        assert covered == list(range(len(model.graph)))  # each node exactly once, stages contiguous
        for s in plan.stages:
            if s.mode == "split":
                assert [i for g in s.segments for i in range(g.node_start, g.node_stop)] == list(range(s.node_start, s.node_stop))
                for g in s.segments:
                    if g.kind != "none":
                        last = model.graph.nodes[g.node_stop - 1].name if g.kind == "fused-tiles" else None  # a span's end
                        built = split_layer(model.graph, model.graph.nodes[g.node_start].name, g.kind, list(g.sizes), last=last)
                        assert (built.node_stop, built.sizes, len(g.ranks)) == (g.node_stop, g.sizes, len(s.ranks))
            for rank, used in s.predicted.memory_bytes.items():
                device = plan.devices[rank]
                usable = next(c.usable_bytes for c in model.classes if c.kind == device.kind and c.memory_bytes == device.memory_bytes)
                assert used <= usable
        assert Plan.from_dict(json.loads(plan.to_json())) == plan


def test_dp_tables_agree_with_scalar_stage_costs():
    graph = zoo_model("alexnet")
    model = CostModel(graph, make_cluster([("rpi3", 2, None), ("rpi4", 1, None)], 94e6), CALIBRATION)
    tables = StageTables(model)
    for a, modes in zip(tables.candidates, tables.tables):
        for mode, (period, latency) in modes.items():
            for i, j in [(0, len(graph)), (0, 3), (3, 11), (11, len(graph))]:
                cost = model.stage_cost(i, j, a, mode)
                if cost is None or not cost.feasible:
                    assert not math.isfinite(period[i, j])
                else:
                    assert close(period[i, j], cost.period_s) and close(latency[i, j], cost.latency_s)


def test_mixed_devices_get_speed_weighted_parts():
    graph = zoo_model("vgg16")
    model = CostModel(graph, make_cluster([("rpi5", 1, None), ("rpi3", 1, None)], 1e9), CALIBRATION)
    plan = make_plan(graph, model, "dp", "latency")
    split = [g for s in plan.stages for g in s.segments if g.kind not in ("none",)]
    assert split, "a fast link and two devices should split some layer for latency"
    for g in split:
        fast, slow = g.sizes
        assert fast > 2 * slow  # an rpi5 is ~4.9x an rpi3: its part is the larger one
        assert plan.devices[g.ranks[0]].kind == "rpi5"
        built = split_segment(graph, g.node_start, g.node_stop, g.kind, g.sizes, g.options)
        assert (built.node_stop, built.sizes) == (g.node_stop, g.sizes)  # what the runtime will build


def test_layer_bigger_than_one_device_is_split_not_rejected():
    graph = zoo_model("alexnet")
    fc6 = graph.node_index("fc6")
    fc6_bytes = graph.cost(fc6).weight_bytes  # ~151 MB
    memory = device_profile("rpi3").reserved_bytes + int(fc6_bytes * 0.6)
    model = CostModel(graph, make_cluster([("rpi3", 4, memory)], 94e6), CALIBRATION)
    with pytest.raises(InfeasiblePlan, match=r"node fc6 .* short by"):
        make_plan(graph, CostModel(graph, make_cluster([("rpi3", 1, memory)], 94e6), CALIBRATION), "dp")
    plan = make_plan(graph, model, "dp")
    stage = next(s for s in plan.stages if s.node_start <= fc6 < s.node_stop)
    assert stage.mode == "split"
    segment = next(g for g in stage.segments if g.node_start <= fc6 < g.node_stop)
    assert segment.kind in ("fc-output", "fc-input") and len(segment.ranks) >= 2


def test_large_clusters_keep_every_single_kind_stage_and_the_largest_mixed_ones():
    capacity, nodes = (6, 6, 4), 177  # ResNet50 on 16 devices of three kinds
    every = [a for a in itertools.product(*[range(c + 1) for c in capacity]) if sum(a)]
    chosen = candidate_counts(capacity, nodes)
    assert len(chosen) < len(every)
    assert {a for a in every if sum(1 for x in a if x) == 1} <= set(chosen)
    assert (6, 6, 4) in chosen and (5, 6, 4) in chosen  # large mixed sets cost the DP least
    assert candidate_counts((2, 2), 30) == every_counts((2, 2))


def every_counts(capacity):
    return [a for a in itertools.product(*[range(c + 1) for c in capacity]) if sum(a)]
