"""Early exits, the pure part (issue 14): normalised entropy (golden values, probabilities vs logits),
the first exit that fires, plans that carry exits (and old plans that do not), the exit rates the
planner uses, and `pisplit calibrate` / `pisplit exits` on held-out digits."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from layers import load_model
from layers.errors import PisplitError
from partitioners.exits import (answering_exit, normalised_entropy, parse_exit_overrides, reach_from_fractions,
                                resolve_exits, throughput_with_exits)
from partitioners.plan import Exit, Plan
from tests.cluster.pipeline_plans import hand_plan
from tests.conftest import run_pisplit


def test_normalised_entropy_golden_values():
    c = 10
    uniform = np.full((1, c), 1 / c)
    one_hot = np.eye(c)[[3]]
    np.testing.assert_allclose(normalised_entropy(uniform, "probabilities"), [1.0])
    np.testing.assert_allclose(normalised_entropy(one_hot, "probabilities"), [0.0])
    half = np.array([[0.5, 0.5, 0, 0]])
    np.testing.assert_allclose(normalised_entropy(half, "probabilities"), [math.log(2) / math.log(4)])


def test_logits_and_their_softmax_give_the_same_entropy(rng):
    z = rng.standard_normal((50, 10)) * 3
    assert z.std() > 1
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(normalised_entropy(z, "logits"), normalised_entropy(p, "probabilities"), rtol=1e-9, atol=1e-12)
    # a logit lead no float32 softmax can hold still has positive entropy from the logits
    assert normalised_entropy(np.array([[30.0, 0, 0]]), "logits")[0] > 0


def test_the_first_exit_at_or_under_its_threshold_answers():
    etas = np.array([[0.1, 0.0], [0.5, 0.2], [0.5, 0.6], [0.3, 0.3]])
    np.testing.assert_array_equal(answering_exit(etas, [0.3, 0.3]), [0, 1, 2, 0])
    np.testing.assert_array_equal(answering_exit(etas, [0.0, 0.0]), [1, 2, 2, 2])  # eta exactly 0 is <= 0
    np.testing.assert_array_equal(answering_exit(etas, [1.0, 0.0]), [0, 0, 0, 0])


def test_exit_names_and_thresholds_are_checked():
    graph = load_model("branchy_alexnet_mnist")
    points = resolve_exits(graph, {"exit3": 0.1, "exit1": 0.5})
    assert [p.name for p in points] == ["exit1", "exit3"] and all(p.kind == "probabilities" for p in points)
    with pytest.raises(PisplitError, match="exit nope: not an output"):
        resolve_exits(graph, {"nope": 0.1})
    with pytest.raises(PisplitError, match="exit final: produced by the model's last node"):
        resolve_exits(graph, {"final": 0.1})
    with pytest.raises(PisplitError, match=r"exit exit1: threshold '1.5' must be in \[0, 1\]"):
        parse_exit_overrides(["exit1=1.5"])
    with pytest.raises(PisplitError, match="expected NAME=T"):
        parse_exit_overrides(["exit1"])


def test_plans_carry_exits_and_old_plans_still_load(tmp_path):
    graph = load_model("branchy_lenet_mnist")
    plan = hand_plan(graph, [(0, 7, [0], "single"), (7, 14, [1], "single")], model="branchy_lenet_mnist")
    doc = plan.to_dict()
    assert doc["exits"] == []
    del doc["exits"]  # a plan written before the field existed
    assert Plan.from_dict(doc).validate().exits == ()
    with_exits = Plan.from_dict({**doc, "exits": [{"name": "exit1", "threshold": 0.3, "exit_fraction": 0.9}]}).validate()
    assert with_exits.exits == (Exit("exit1", 0.3, 0.9),)
    assert Plan.from_dict(with_exits.to_dict()) == with_exits
    for bad, message in [([{"name": "exit1", "threshold": 2}], "threshold 2"),
                         ([{"name": "exit1", "threshold": 0.1, "exit_fraction": 1.5}], "exit_fraction 1.5"),
                         ([{"name": "a", "threshold": 0.1}, {"name": "a", "threshold": 0.2}], "empty or repeated"),
                         ([{"name": "exit1", "threshold": "x"}], "exits\\[0\\].threshold: expected a number")]:
        with pytest.raises(PisplitError, match=message):
            Plan.from_dict({**doc, "exits": bad}).validate()


def test_a_stage_behind_an_exit_carries_only_the_frames_that_pass():
    graph = load_model("branchy_alexnet_mnist")
    plan = hand_plan(graph, [(0, 6, [0], "single"), (6, 12, [1], "single"), (12, 29, [2], "single")], model="branchy_alexnet_mnist")
    points = resolve_exits(graph, {"exit1": 0.1, "exit2": 0.1, "exit4": 0.1})
    reach = reach_from_fractions(plan.stages, points, [0.5, 0.2, 0.1])
    np.testing.assert_allclose(reach, [1.0, 0.5, 0.3])
    # stage periods 1, 4, 2 s: without exits the bottleneck is 4 s; with them 4 x 0.5 = 2 s
    assert throughput_with_exits(0.25, [1.0, 4.0, 2.0], reach) == pytest.approx(0.5)
    assert throughput_with_exits(0.25, [1.0, 4.0, 2.0], [1, 1, 1]) == pytest.approx(0.25)


def test_calibrate_writes_the_held_out_shares_into_a_plan(tmp_path):
    graph = load_model("branchy_lenet_mnist")
    plan = hand_plan(graph, [(0, 7, [0], "single"), (7, 14, [1], "single")], model="branchy_lenet_mnist")
    path = plan.save(tmp_path / "plan.json")
    proc = run_pisplit("calibrate", "branchy_lenet_mnist", "--exit", "exit1=0.3", "--plan", path, "--json")
    doc = json.loads(proc.stdout)
    assert doc["split"] == "test" and doc["frames"] == 1000 and doc["data"] == "mnist"
    share = doc["exits"][0]["exit_fraction"]
    assert 0.5 < share < 1.0 and doc["final"]["exit_fraction"] == pytest.approx(1 - share)
    # the same share from the reference: exit1's entropy on the held-out split
    from cluster.commands.exits import held_out_outputs

    outputs, labels, _ = held_out_outputs("branchy_lenet_mnist", graph, None)
    assert share == pytest.approx(float((normalised_entropy(outputs["exit1"], "probabilities") <= 0.3).mean()))
    saved = Plan.load(path)
    assert saved.exits == (Exit("exit1", 0.3, share),)
    # stage periods 0.01 s each (hand_plan): both bottlenecks, so the rate is unchanged... the first stage still takes every frame
    assert saved.predicted_throughput_fps == pytest.approx(plan.predicted_throughput_fps)
    bad = run_pisplit("calibrate", "branchy_lenet_mnist", "--exit", "exit7=0.3", check=False)
    assert bad.returncode != 0 and "exit exit7: not an output" in bad.stderr and "Traceback" not in bad.stderr


def test_the_exits_table_sweeps_t():
    proc = run_pisplit("exits", "branchy_lenet_mnist", "--thresholds", "0,0.3,1", "--json")
    doc = json.loads(proc.stdout)
    rows = {r["threshold"]: r for r in doc["rows"]}
    assert rows[0.0]["shares"]["exit1"] == 0.0 and rows[1.0]["shares"]["exit1"] == 1.0
    assert 0 < rows[0.3]["shares"]["exit1"] < 1
    assert rows[1.0]["bytes_per_frame"] == 0 < rows[0.3]["bytes_per_frame"] < rows[0.0]["bytes_per_frame"]
    assert rows[0.0]["accuracy"] == pytest.approx(doc["without_exits"]["accuracy"])
    # the planner's plan with exits taken inside its stages: unchanged when nobody exits, faster when all do
    assert rows[0.0]["planner_plan_predicted_fps"] == pytest.approx(doc["without_exits"]["predicted_fps"])
    assert rows[1.0]["planner_plan_predicted_fps"] > 1.1 * rows[0.0]["planner_plan_predicted_fps"]


def test_the_multi_view_table_has_accuracy_with_devices_missing():
    from layers.trained import manifest

    proc = run_pisplit("exits", "ddnn_mnist", "--thresholds", "0.05", "--threshold", "0.05", "--json")
    doc = json.loads(proc.stdout)
    rows = doc["missing_devices"]
    assert [r["missing"] for r in rows] == [0, 1, 2, 3]
    # with every device there, the local and final exits are the model's own (its manifest, held-out)
    accuracy = manifest()["models"]["ddnn_mnist"]["test_accuracy"]
    assert rows[0]["local_accuracy"] == pytest.approx(accuracy["exit1"], abs=0.003)
    assert rows[0]["final_accuracy"] == pytest.approx(accuracy["final"], abs=0.003)
    assert rows[0]["overall_accuracy"] == pytest.approx(doc["rows"][0]["accuracy"])
    # views carry information: losing devices costs accuracy, monotonically
    finals = [r["final_accuracy"] for r in rows]
    assert finals == sorted(finals, reverse=True) and finals[-1] < finals[0] - 0.2
    # DDNN's nine aggregation schemes, each trained and measured on the held-out split
    schemes = {r["scheme"]: r for r in doc["schemes"]}
    assert set(schemes) == {f"{a}-{b}" for a in ("MP", "AP", "CC") for b in ("MP", "AP", "CC")}
    assert schemes["MP-CC"]["overall_accuracy"] == pytest.approx(rows[0]["overall_accuracy"])
    assert all(r["cloud_accuracy"] >= 0.9 for r in doc["schemes"])
