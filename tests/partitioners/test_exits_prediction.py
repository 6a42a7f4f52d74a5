"""Early exits, what the planner predicts and the runtime's quick decision (issue 14): exit_fires is the
entropy rule exactly (knife-edge thresholds included); stage_periods_with_exits is partitioners.cost's
stage period when no frame exits, and with exits weights each compute piece and each transfer by the
frames it applies to, term by term."""
from __future__ import annotations

import math

import numpy as np
import pytest

from layers import load_model
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices
from partitioners.exits import (SKIP_BYTES, ExitPoint, exit_fires, normalised_entropy, resolve_exits, stage_counts,
                                stage_periods_with_exits, throughput_with_inner_exits)
from partitioners.planners import make_plan
from partitioners.profiles import Calibration
from tests.cluster.pipeline_plans import hand_plan


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def test_exit_fires_is_the_entropy_rule_on_every_row_and_threshold(rng):
    scales = rng.uniform(0.05, 40.0, (400, 1))
    logits = (rng.standard_normal((400, 10)) * scales).astype(np.float32)
    probs = _softmax(logits)
    probs[:5] = np.eye(10, dtype=np.float32)[:5]  # exactly one-hot: eta 0
    probs[5] = np.full(10, 0.1, np.float32)  # uniform: eta 1
    probs[6] = [0.5, 0.5] + [0.0] * 8  # zeros among the classes
    wide = (rng.standard_normal((30, 100)) * 5).astype(np.float32)  # more classes than exit_fires sums in Python
    for kind, rows in (("probabilities", probs), ("logits", logits), ("probabilities", _softmax(wide)), ("logits", wide)):
        eta = normalised_entropy(rows, kind)
        for i, row in enumerate(rows):
            # fixed thresholds, the row's own entropy and one step either side of it (knife edges)
            for t in (0.0, 0.01, 0.3, 0.8, 1.0, eta[i], np.nextafter(eta[i], 0.0), np.nextafter(eta[i], 1.0)):
                t = float(min(max(t, 0.0), 1.0))
                assert exit_fires(row[None], kind, t) == bool(eta[i] <= t), (kind, i, t, eta[i])
    # rows that are not finite take the reference's path whatever T (engines refuse NaN outputs anyway)
    for row in (np.full((1, 10), np.nan, np.float32), np.array([[np.inf] + [0.0] * 9], np.float32)):
        for kind in ("probabilities", "logits"):
            for t in (0.0, 0.5, 1.0):
                with np.errstate(invalid="ignore"):
                    assert exit_fires(row, kind, t) == bool(normalised_entropy(row, kind)[0] <= t)


@pytest.fixture(scope="module")
def alexnet_cost():
    graph = load_model("branchy_alexnet_mnist")
    return graph, CostModel(graph, make_cluster(parse_devices("rpi3:4"), 94e6), Calibration("numpy"))


def test_without_exits_each_stage_period_is_the_cost_models(alexnet_cost):
    graph, cost = alexnet_cost
    plans = [make_plan(graph, cost, planner, objective, "branchy_alexnet_mnist", "numpy")
             for planner, objective in (("dp", "throughput"), ("dp", "latency"), ("paper", "throughput"))]
    plans.append(hand_plan(graph, [(0, 6, [0], "single"), (6, 12, [1, 2], "data-parallel"), (12, 29, [3], "single")],
                           model="branchy_alexnet_mnist"))
    plans.append(hand_plan(graph, [(0, 12, [0, 1], "data-parallel"), (12, 29, [2, 3], "data-parallel")], model="branchy_alexnet_mnist"))
    for plan in plans:
        got = stage_periods_with_exits(cost, plan.stages, [], [])
        want = [cost.stage_cost(s.node_start, s.node_stop, stage_counts(cost, s), "single" if len(s.ranks) == 1 else s.mode).period_s
                for s in plan.stages]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # so the planner's own plan keeps its figure when no frame exits
    points = resolve_exits(graph, {"exit1": 0.0, "exit2": 0.0})
    assert throughput_with_inner_exits(cost, plans[0], points, [0.0, 0.0]) == pytest.approx(plans[0].predicted_throughput_fps)


def test_a_split_stage_is_the_cost_models_and_runs_whole_for_the_frames_it_takes():
    graph = load_model("alexnet")
    cost = CostModel(graph, make_cluster(parse_devices("rpi3:6"), 94e6), Calibration("numpy"))
    plan = make_plan(graph, cost, "dp", "latency", "alexnet", "numpy")
    assert [s.mode for s in plan.stages] == ["split"]
    whole = stage_periods_with_exits(cost, plan.stages, [], [])
    np.testing.assert_allclose(whole, [cost.stage_cost(0, len(graph), stage_counts(cost, plan.stages[0]), "split").period_s])
    # an exit inside a split stage is decided at the stage's end (cluster.exits): no compute is saved
    inside = [ExitPoint("some_output", 0.5, "logits", 4)]
    np.testing.assert_allclose(stage_periods_with_exits(cost, plan.stages, inside, [0.7]), whole)


def test_each_transfer_and_compute_piece_counts_the_frames_it_carries(alexnet_cost):
    graph, cost = alexnet_cost
    x, n = cost.transfer, cost.n
    skip = SKIP_BYTES * 8 / 94e6  # eager: its bytes, no message latency
    secs = cost.prefix_seconds[0]
    points = resolve_exits(graph, {"exit1": 0.5, "exit2": 0.5})  # nodes 5 and 11
    f1, f2 = 0.4, 0.25
    # two single stages cut after exit2's branch (node 12): exit1 stops frames inside stage 0 after
    # node 5, exit2 at its end; 35% of the frames go on
    plan = hand_plan(graph, [(0, 12, [0], "single"), (12, 29, [1], "single")], model="branchy_alexnet_mnist")
    on = 1 - f1 - f2
    # a transfer occupies the link, not the ranks (raw links): each stage's period is its compute or
    # its interface's time in one direction, whichever is longer
    stage0 = max(secs[6] + (secs[12] - secs[6]) * (1 - f1), x[12] * on + skip * (1 - on), x[n] * on)
    stage1 = max((secs[29] - secs[12]) * on, x[12] * on + skip * (1 - on), x[n] * on)
    assert (cost.wire == x).all()
    np.testing.assert_allclose(stage_periods_with_exits(cost, plan.stages, points, [f1, f2]), [stage0, stage1], rtol=1e-12)
    # the whole model data-parallel on 4 ranks: rank 0 sends 3 inputs and takes back the answers of
    # the other replicas' frames per round of 4; every replica stops its frames at the exits
    plan = hand_plan(graph, [(0, 29, [0, 1, 2, 3], "data-parallel")], model="branchy_alexnet_mnist")
    compute = secs[6] + (secs[12] - secs[6]) * (1 - f1) + (secs[29] - secs[12]) * on
    lead = max(compute, 3 * x[0], 3 * x[n])
    replica = max(compute, x[0], x[n])
    np.testing.assert_allclose(stage_periods_with_exits(cost, plan.stages, points, [f1, f2]), [max(lead, replica) / 4], rtol=1e-12)
    # every frame answered at exit1: the data-parallel plan's prediction grows by its period's shrink
    plain = make_plan(graph, cost, "dp", "throughput", "branchy_alexnet_mnist", "numpy")
    fast = throughput_with_inner_exits(cost, plain, points, [1.0, 0.0])
    whole = stage_periods_with_exits(cost, plain.stages, [], [])
    assert fast == pytest.approx(plain.predicted_throughput_fps * whole.max() /
                                 stage_periods_with_exits(cost, plain.stages, points, [1.0, 0.0]).max())
    assert fast > plain.predicted_throughput_fps
    assert math.isfinite(fast)
