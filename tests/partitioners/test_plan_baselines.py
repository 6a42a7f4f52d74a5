"""Baselines (paper, memory, single), dp against them, and what an infeasible cluster is told."""
from __future__ import annotations

import numpy as np
import pytest

from layers import zoo_model
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import device_profile
from partitioners.planner_baselines import linear_partition
from partitioners.planners import InfeasiblePlan, compare_plans, make_plan

from .planner_cases import CALIBRATION


def model_of(name, entries, link=94e6):
    graph = zoo_model(name)
    return graph, CostModel(graph, make_cluster(entries, link), CALIBRATION)


@pytest.mark.parametrize("name,entries,link", [
    ("alexnet", [("rpi3", 4, None)], 94e6),
    ("vgg16", [("rpi3", 4, None)], 94e6),
    ("resnet50", [("rpi4", 4, None)], 940e6),
    ("c3d", [("rpi3", 2, None), ("rpi4", 2, None)], 300e6),
])
def test_dp_is_at_least_as_good_as_every_baseline(name, entries, link):
    graph, model = model_of(name, entries, link)
    for objective in ("throughput", "latency"):
        results = {r.planner: r for r in compare_plans(graph, model, objective) if not isinstance(r, InfeasiblePlan)}
        dp = results.pop("dp")
        for other in results.values():
            if objective == "throughput":
                assert dp.throughput_fps >= other.throughput_fps * (1 - 1e-9), other.planner
            else:
                assert dp.latency_s <= other.latency_s * (1 + 1e-9), other.planner


def test_paper_splits_the_layer_that_does_not_fit_with_output_splitting():
    graph = zoo_model("alexnet")
    fc6 = graph.node_index("fc6")
    memory = device_profile("rpi3").reserved_bytes + int(graph.cost(fc6).weight_bytes * 0.7)
    model = CostModel(graph, make_cluster([("rpi3", 6, memory)], 94e6), CALIBRATION)
    plan = make_plan(graph, model, "paper")
    stage = next(s for s in plan.stages if s.node_start <= fc6 < s.node_stop)
    assert stage.mode == "split" and stage.node_start == fc6 and len(stage.ranks) == 2
    assert [g.kind for g in stage.segments][0] == "fc-output"
    assert all(s.mode == "single" for s in plan.stages if s is not stage)
    for s in plan.stages:
        for rank, used in s.predicted.memory_bytes.items():
            assert used <= memory - device_profile("rpi3").reserved_bytes


def test_paper_groups_layers_into_stages_of_equal_latency():
    graph, model = model_of("vgg16", [("rpi3", 4, None)], 1e12)  # a free link isolates the grouping
    plan = make_plan(graph, model, "paper")
    computes = [s.predicted.compute_s for s in plan.stages]
    assert len(plan.stages) == 4 and max(computes) < 0.5 * sum(computes)


def test_linear_partition_minimises_the_largest_group():
    assert linear_partition(np.array([4.0, 1, 1, 4]), 2) == [2]
    assert linear_partition(np.array([1.0, 1, 1, 1, 1, 1]), 3) == [2, 4]
    assert linear_partition(np.array([5.0, 1]), 4) == [1]


def test_memory_baseline_follows_device_memory():
    graph, model = model_of("resnet50", [("rpi4", 1, None), ("rpi3", 3, None)])
    plan = make_plan(graph, model, "memory")
    assert plan.devices[plan.stages[0].ranks[0]].kind == "rpi4"  # the largest memory goes first
    weights = [model.prefix_weights[s.node_stop] - model.prefix_weights[s.node_start] for s in plan.stages]
    assert weights[0] > sum(weights[1:])  # 4 GB of 7 GB: the rpi4 takes more than half the weights


def test_single_takes_the_fastest_device_that_holds_the_model():
    graph, model = model_of("vgg16", [("rpi3", 2, None), ("rpi5", 1, None)])
    plan = make_plan(graph, model, "single")
    assert len(plan.stages) == 1 and plan.devices[0].kind == "rpi5"


def test_infeasible_clusters_name_the_node_where_and_how_much():
    graph = zoo_model("vgg16")
    fc1_bytes = graph.cost(graph.node_index("fc1")).weight_bytes
    small = device_profile("rpi3").reserved_bytes + int(fc1_bytes * 0.3)
    tiny = CostModel(graph, make_cluster([("rpi3", 2, small)], 94e6), CALIBRATION)
    with pytest.raises(InfeasiblePlan, match=r"^node fc1 \(dense, 392\.0 MiB of weights\) cannot be placed: .* short by [0-9.]+ MiB") as err:
        make_plan(graph, tiny, "dp")
    assert err.value.node == "fc1" and err.value.short_bytes > 0
    for planner in ("single", "memory", "paper"):
        with pytest.raises(InfeasiblePlan, match=r"cannot be placed"):
            make_plan(graph, tiny, planner)
    # every layer fits when split, but not all of them at once: the node where memory runs out is named
    roomy = device_profile("rpi3").reserved_bytes + int(fc1_bytes * 0.6)
    some = CostModel(graph, make_cluster([("rpi3", 2, roomy)], 94e6), CALIBRATION)
    with pytest.raises(InfeasiblePlan, match=r"cannot be placed .*short by"):
        make_plan(graph, some, "dp")
