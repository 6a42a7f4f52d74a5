"""Predicted latency with early exits (issue 14): a frame answered at an exit has the latency up to
that exit (the stages before it whole, its stage up to the exit node, the answer's way to rank 0);
the plan's mean latency weighs each exit's share, and is the plan's own figure when no frame exits."""
from __future__ import annotations

import numpy as np
import pytest

from layers import load_model
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices
from partitioners.exits import latency_to_exits, latency_with_exits, resolve_exits
from partitioners.planners import make_plan
from partitioners.profiles import Calibration
from tests.cluster.pipeline_plans import hand_plan

MODEL = "branchy_alexnet_mnist"


def test_latency_up_to_each_exit_term_by_term():
    graph = load_model(MODEL)
    cost = CostModel(graph, make_cluster(parse_devices("rpi3:4"), 94e6), Calibration("numpy"))
    points = resolve_exits(graph, {"exit1": 0.3, "exit2": 0.3})  # made after nodes 5 and 11
    x, n, seconds = cost.transfer, cost.n, cost.prefix_seconds
    # three single stages: exit1 inside stage 0 (rank 0 answers in place), exit2 inside stage 1
    plan = hand_plan(graph, [(0, 8, [0], "single"), (8, 20, [1], "single"), (20, 29, [2], "single")], model=MODEL)
    stage = [cost.stage_cost(s.node_start, s.node_stop, (1,), "single") for s in plan.stages]
    to_exit, full = latency_to_exits(cost, plan.stages, points)
    assert full == pytest.approx(sum(c.latency_s for c in stage), rel=1e-12)
    assert to_exit[0] == pytest.approx(seconds[0, 6] - seconds[0, 0], rel=1e-12)
    assert to_exit[1] == pytest.approx(stage[0].latency_s + seconds[0, 12] - seconds[0, 8] + x[n], rel=1e-12)
    assert to_exit[0] < to_exit[1] < full
    # the plan's mean latency: its own figure without exits, each share at its exit's latency with them
    planned = make_plan(graph, cost, "dp", "latency", MODEL, "numpy")
    assert latency_with_exits(cost, planned, points, [0.0, 0.0]) == pytest.approx(planned.predicted_latency_s, rel=1e-12)
    shares = [0.6, 0.3]
    to_exit, full = latency_to_exits(cost, planned.stages, points)
    want = planned.predicted_latency_s * (shares[0] * to_exit[0] + shares[1] * to_exit[1] + 0.1 * full) / full
    assert latency_with_exits(cost, planned, points, shares) == pytest.approx(want, rel=1e-12)
    # more frames leaving early: never slower
    means = [latency_with_exits(cost, planned, points, [f, 0.0]) for f in np.linspace(0, 1, 6)]
    assert all(a > b for a, b in zip(means, means[1:]))
