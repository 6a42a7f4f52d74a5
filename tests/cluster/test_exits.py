"""Early exits under real mpirun (issue 14): every frame's answering exit and its answer equal a
single-process reference of the trained branchy model on held-out digits, frame for frame; no frame
is lost or duplicated when exits reorder them; later stages compute only the frames that reach them;
thresholds 0 and 1 as edge cases; a split stage and a data-parallel stage behind an exit."""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest

from layers import load_model
from layers.trained import held_out
from partitioners.exits import producer_index, reference_answers, resolve_exits

from .pipeline_plans import hand_plan
from .test_stalls_and_partial import mpirun

FRAMES = 120


@lru_cache(maxsize=None)
def reference(model: str):
    """(graph, the first FRAMES held-out frames, the whole model's outputs on them, one frame at a time)."""
    graph = load_model(model)
    feeds, _ = held_out(model)
    x = feeds["input"][:FRAMES]
    outs = [graph.execute({"input": x[i:i + 1]}) for i in range(FRAMES)]
    return graph, x, {t: np.concatenate([o[t] for o in outs]) for t in graph.outputs}


def run_with_exits(tmp_path, model: str, stages, exits: dict, n_ranks: int):
    graph, x, ref = reference(model)
    plan = hand_plan(graph, stages, model=model).save(tmp_path / "plan.json")
    np.save(tmp_path / "x.npy", x)
    args = ["run", plan, "--input", tmp_path / "x.npy", "--frames", FRAMES, "--no-progress", "--json",
            "--output", tmp_path / "y.npz"]
    for name, t in exits.items():
        args += ["--exit", f"{name}={t}"]
    proc, _ = mpirun(n_ranks, *args, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout[proc.stdout.index("{"):])
    with np.load(tmp_path / "y.npz", allow_pickle=False) as f:
        out = {k: f[k] for k in f.files}
    return graph, ref, doc, out


def check_against_reference(graph, ref, doc, out, exits: dict, stages):
    points = resolve_exits(graph, exits)
    want_index, want_answer = reference_answers(graph, ref, points)
    names = [p.name for p in points] + ["final"]
    # every frame exactly once, by frame id
    assert doc["every_frame_once"] and sorted(out["frame_ids"].tolist()) == list(range(FRAMES))
    assert list(out["exit_names"]) == names
    np.testing.assert_array_equal(out["exit_index"], want_index)
    outputs = {str(n): out[f"output_{i}"] for i, n in enumerate(out["names"])}
    for f in range(FRAMES):
        answer = outputs[names[want_index[f]]][f]
        np.testing.assert_allclose(answer.reshape(-1), want_answer[f], rtol=1e-5, atol=1e-6)
        # outputs made after the answering exit were never computed (a single or data-parallel stage
        # stops at an exit inside it; a split stage runs whole)
        if want_index[f] < len(points):
            node = points[want_index[f]].node
            split = stages[stage_of(stages, node)][3] == "split"
            end = stages[stage_of(stages, node)][1] - 1 if split else node
            for name in graph.outputs:
                assert np.isnan(outputs[name][f]).all() == (producer_index(graph, name) > end), (f, name)
    counts = np.bincount(want_index, minlength=len(names))
    assert doc["exits"] == {n: int(c) for n, c in zip(names, counts)}
    return want_index


def stage_of(stages, node: int) -> int:
    return next(i for i, (start, stop, *_) in enumerate(stages) if start <= node < stop)


LENET_TWO = [(0, 7, [0], "single"), (7, 14, [1], "single")]


@pytest.mark.mpi
@pytest.mark.parametrize("threshold", [0.05, 0.0, 1.0])
def test_branchy_lenet_on_two_ranks_answers_as_the_reference(tmp_path, threshold):
    graph, ref, doc, out = run_with_exits(tmp_path, "branchy_lenet_mnist", LENET_TWO, {"exit1": threshold}, 2)
    index = check_against_reference(graph, ref, doc, out, {"exit1": threshold}, LENET_TWO)
    went_on = int((index == 1).sum())
    rank1 = next(r for r in doc["ranks"] if r["rank"] == 1)
    assert rank1["frames"] == went_on  # stage 1 computed exactly the frames no exit took
    if threshold == 0.0:
        assert went_on == FRAMES  # nobody exits (no held-out frame's softmax is exactly one-hot)
    elif threshold == 1.0:
        assert went_on == 0  # everybody exits at the first exit
    else:
        assert 0 < went_on < FRAMES  # a mix, so answers come back out of order


@pytest.mark.mpi
def test_branchy_alexnet_four_ranks_with_a_data_parallel_stage_behind_exits(tmp_path):
    # exit1 on stage 0, exit2 on stage 1 (two replicas: frames leave them out of order), exit3 and exit4 on stage 2
    stages = [(0, 6, [0], "single"), (6, 12, [1, 2], "data-parallel"), (12, 29, [3], "single")]
    exits = {"exit1": 0.02, "exit2": 0.02, "exit3": 0.05, "exit4": 0.1}
    graph, ref, doc, out = run_with_exits(tmp_path, "branchy_alexnet_mnist", stages, exits, 4)
    index = check_against_reference(graph, ref, doc, out, exits, stages)
    assert len(set(index.tolist())) >= 3, "thresholds should spread the frames over several exits"
    replicas = sum(r["frames"] for r in doc["ranks"] if r["rank"] in (1, 2))
    assert replicas == int((index >= 1).sum())
    assert next(r for r in doc["ranks"] if r["rank"] == 3)["frames"] == int((index >= 2).sum())


@pytest.mark.mpi
def test_a_split_stage_behind_an_exit_joins_only_the_frames_that_reach_it(tmp_path):
    stages = [(0, 7, [0], "single"), (7, 14, [1, 2], "split", [(7, 8, "conv-channel", (9, 7)), (8, 14, "none", ())])]
    graph, ref, doc, out = run_with_exits(tmp_path, "branchy_lenet_mnist", stages, {"exit1": 0.05}, 3)
    index = check_against_reference(graph, ref, doc, out, {"exit1": 0.05}, stages)
    for r in doc["ranks"]:
        if r["rank"] in (1, 2):
            assert r["frames"] == int((index == 1).sum())


@pytest.mark.mpi
def test_an_exit_on_the_last_stage_and_a_plan_without_exits(tmp_path):
    one = [(0, 14, [0], "single")]
    graph, ref, doc, out = run_with_exits(tmp_path, "branchy_lenet_mnist", one, {"exit1": 0.05}, 1)
    check_against_reference(graph, ref, doc, out, {"exit1": 0.05}, one)
    graph, ref, doc, out = run_with_exits(tmp_path, "branchy_lenet_mnist", LENET_TWO, {}, 2)
    assert "exit_index" not in out and doc["exits"] is None
    np.testing.assert_allclose(out["output_1"], ref["final"], rtol=1e-5, atol=1e-6)


@pytest.mark.mpi
def test_an_unknown_exit_is_one_line(tmp_path):
    graph, x, _ = reference("branchy_lenet_mnist")
    plan = hand_plan(graph, LENET_TWO, model="branchy_lenet_mnist").save(tmp_path / "plan.json")
    proc, _ = mpirun(2, "run", plan, "--frames", 4, "--no-progress", "--exit", "exit9=0.5", timeout=60)
    assert proc.returncode != 0
    assert "exit exit9: not an output of branchy_lenet_mnist" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.mpi
def test_emulate_runs_the_cluster_with_exits_and_the_baseline_without(tmp_path):
    from .test_emulate import emulate

    graph, x, ref = reference("branchy_lenet_mnist")
    np.save(tmp_path / "x.npy", x[:40])
    proc = emulate("branchy_lenet_mnist", "--devices", "rpi3:2", "--frames", 40, "--single-frames", 2, "--input",
                   tmp_path / "x.npy", "--exit", "exit1=0.05", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    index, _ = reference_answers(graph, {t: v[:40] for t, v in ref.items()}, resolve_exits(graph, {"exit1": 0.05}))
    assert doc["every_frame_once"] and doc["exits"] == {"exit1": int((index == 0).sum()), "final": int((index == 1).sum())}
    bad = emulate("branchy_lenet_mnist", "--devices", "rpi3:2", "--exit", "exit1=high")
    assert bad.returncode == 1 and bad.stderr.startswith("pisplit: error: exit exit1: threshold 'high' is not a number")


@pytest.mark.mpi
def test_the_plans_own_exits_run_without_flags_and_a_flag_overrides_them(tmp_path):
    from dataclasses import replace

    from partitioners.plan import Exit, Plan

    graph, x, ref = reference("branchy_lenet_mnist")
    plan = replace(hand_plan(graph, LENET_TWO, model="branchy_lenet_mnist"), exits=(Exit("exit1", 0.05, 0.8),)).validate()
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path).exits == plan.exits
    np.save(tmp_path / "x.npy", x)
    for extra, t in (([], 0.05), (["--exit", "exit1=1"], 1.0)):
        proc, _ = mpirun(2, "run", path, "--input", tmp_path / "x.npy", "--frames", FRAMES, "--no-progress", "--json", *extra, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        doc = json.loads(proc.stdout[proc.stdout.index("{"):])
        index, _ = reference_answers(graph, ref, resolve_exits(graph, {"exit1": t}))
        assert doc["exits"] == {"exit1": int((index == 0).sum()), "final": int((index == 1).sum())}


@pytest.mark.mpi
def test_a_rank_failing_behind_an_exit_ends_the_run_with_partial_output(tmp_path):
    graph, x, _ = reference("branchy_lenet_mnist")
    plan = hand_plan(graph, LENET_TWO, model="branchy_lenet_mnist").save(tmp_path / "plan.json")
    np.save(tmp_path / "x.npy", x)
    proc, _ = mpirun(2, "run", plan, "--input", tmp_path / "x.npy", "--frames", FRAMES, "--no-progress", "--exit", "exit1=0.05",
                     "--fail", "1@5", "--output", tmp_path / "y.npz", timeout=120)
    assert proc.returncode != 0 and "injected fault at frame" in proc.stderr
    with np.load(tmp_path / "y.npz", allow_pickle=False) as f:
        assert bool(f["partial"]) and f["missing_frame_ids"].size > 0
        done = np.setdiff1d(np.arange(FRAMES), f["missing_frame_ids"])
        np.testing.assert_array_equal(np.sort(f["output_frame_ids"]), done)  # no frame twice


@pytest.mark.mpi
def test_a_multi_view_run_on_the_wrong_number_of_ranks_is_one_line():
    proc, _ = mpirun(2, "exits", "ddnn_mnist", "--run", "--frames", 4, timeout=60)
    assert proc.returncode != 0
    assert "4 present end devices: run under mpirun -n 5" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.mpi
def test_replicas_stop_at_an_exit_inside_their_stage(tmp_path):
    # the whole model data-parallel on 3 ranks (rank 0 one of them): exit1 sits inside the stage
    stages = [(0, 14, [0, 1, 2], "data-parallel")]
    graph, ref, doc, out = run_with_exits(tmp_path, "branchy_lenet_mnist", stages, {"exit1": 0.05}, 3)
    index = check_against_reference(graph, ref, doc, out, {"exit1": 0.05}, stages)
    assert 0 < (index == 0).sum() < FRAMES


def test_plan_takes_exits_and_predicts_with_their_held_out_shares(tmp_path, capsys):
    from cluster.cli import main
    from partitioners.cost import CostModel, make_cluster
    from partitioners.devices import parse_devices
    from partitioners.exits import throughput_with_inner_exits
    from partitioners.plan import Plan
    from partitioners.planners import make_plan
    from partitioners.profiles import Calibration

    graph = load_model("branchy_lenet_mnist")
    # exit1's share at T=0.3 on the held-out split (pisplit calibrate: checked against the reference in
    # tests/partitioners/test_exits.py)
    assert main(["calibrate", "branchy_lenet_mnist", "--exit", "exit1=0.3", "--output", str(tmp_path / "cal.json"), "--json"]) == 0
    share = json.loads((tmp_path / "cal.json").read_text())["exits"][0]["exit_fraction"]
    # the dp plan with exit1 at T=0.3 answering `share` of the frames, priced by the planner itself
    cost = CostModel(graph, make_cluster(parse_devices("rpi3:4"), 94e6), Calibration("numpy"))
    plain = make_plan(graph, cost, "dp", "throughput", "branchy_lenet_mnist", "numpy")
    want = throughput_with_inner_exits(cost, plain, resolve_exits(graph, {"exit1": 0.3}), [share])
    args = ["plan", "branchy_lenet_mnist", "--devices", "rpi3:4", "--link", "94mbit"]
    assert main([*args, "--exit", "exit1=0.3", "--output", str(tmp_path / "p.json"), "--json"]) == 0
    capsys.readouterr()
    plan = Plan.load(tmp_path / "p.json")
    assert [(e.name, e.threshold, e.exit_fraction) for e in plan.exits] == [("exit1", 0.3, pytest.approx(share))]
    assert plan.predicted_throughput_fps == pytest.approx(max(want, plan.predicted_throughput_fps))
    assert plan.predicted_throughput_fps > 1.1 * plain.predicted_throughput_fps
    # the shares of a calibration document give the same plan; shares measured at another T are refused
    assert main([*args, "--exit-shares", str(tmp_path / "cal.json"), "--output", str(tmp_path / "q.json")]) == 0
    assert Plan.load(tmp_path / "q.json").exits == plan.exits
    capsys.readouterr()
    for extra, message in ((["--exit", "exit1=0.5", "--exit-shares", str(tmp_path / "cal.json")], "measured exit1 at T=0.3, not 0.5"),
                           (["--exit", "exit7=0.3"], "exit exit7: not an output of branchy_lenet_mnist"),
                           (["--exit", "exit1=2"], "exit exit1: threshold '2' must be in [0, 1]"),
                           (["--exit", "exit1=0.3", "--compare"], "--exit: plans one planner's plan with exits")):
        assert main([*args, *extra]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_launch_passes_checked_exits_to_every_rank(tmp_path, monkeypatch, capsys):
    from cluster.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[pis]\npi-0 ansible_host=10.9.0.10 device=rpi4 slots=2 workdir=/home/pi/pisplit\n")
    graph = load_model("branchy_lenet_mnist")
    plan = hand_plan(graph, LENET_TWO, model="branchy_lenet_mnist").save(tmp_path / "plan.json")
    base = ["launch", str(plan), "--inventory", str(inventory), "--dry-run", "--json"]
    assert main([*base, "--exit", "exit1=0.3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["argv"][-4:] == ["--frames", "10", "--exit", "exit1=0.3"]
    for extra, message in ((["--exit", "exit9=0.3"], "exit exit9: not an output of branchy_lenet_mnist"),
                           (["--exit", "exit1"], "--exit exit1: expected NAME=T")):
        # (launch --resilient --exit runs: tests/cluster/test_resilient.py's exits test)
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
