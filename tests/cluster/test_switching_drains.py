"""A run switching plans (issue 16, cluster.switching) drains its pipeline only where the plan changes:
under a real `mpirun -n 3`, four hand-made LeNet-5 plans (a 3-stage pipeline, all on rank 0, a
data-parallel last stage, a split stage) taken by a seeded chooser and forced switches at random
frames, decisions at every other frame: every frame answered once, in order, by the plan the
schedule says, equal to the unsplit model; PipelineRank.run (which ends in a drain) called once per
plan change plus once; every transfer made on a link reaches rank 0 exactly once (other ranks'
while the run goes on). And `pisplit run MAP --down-margin`: refused outside [0, 1) and on a plain
plan in one line, and a margin wide enough keeps the plan where the default drops."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from cluster.commands.run import parse_down_margin
from layers import zoo_model
from layers.errors import PisplitError
from tests.cluster.test_runtime import mpirun, reference_outputs
from tests.conftest import ROOT, require

from .pipeline_plans import hand_plan

SPLIT = [(2, 4, "conv-channel", (9, 7)), (4, 5, "none", ()), (5, 6, "fc-output", (70, 50)), (6, 9, "none", ())]
PLANS = [
    [(0, 2, [0], "single"), (2, 6, [1], "single"), (6, 9, [2], "single")],  # 2 link transfers a frame
    [(0, 9, [0], "single")],  # all on rank 0: none
    [(0, 4, [0], "single"), (4, 9, [1, 2], "data-parallel")],  # 1
    [(0, 2, [0], "single"), (2, 9, [1, 2], "split", SPLIT)],  # 1 (the split stage's own transfers are not the link's)
]
LINK_SENDS = [2, 0, 1, 1]

SCRIPT = '''
import json, sys
import numpy as np
from cluster import switching, transport
from cluster.runtime import PipelineRank, RunOptions
from layers import zoo_model
from partitioners.plan import Plan

folder, n, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
schedule = json.loads(sys.argv[4])  # {frame: the plan the chooser says at a boundary there}
forced = {int(f): p for f, p in json.loads(sys.argv[5]).items()}
plans = [Plan.load(f"{folder}/plan{i}.json") for i in range(4)]
comm = transport.world()
runs = [0]
plain_run = PipelineRank.run
def counted(self, *a, **k):
    runs[0] += 1
    return plain_run(self, *a, **k)
PipelineRank.run = counted
seen = []
def choose(rows, frame):
    seen.append(int(rows.shape[0]))
    return schedule[str(frame)], "the schedule's"
result = switching.run_switching(comm, plans, lambda i: zoo_model("lenet5"), RunOptions(frames=n, keep_outputs=True, stall_timeout=20),
                                 choose, initial=schedule["0"], every=every, forced=forced, probe=False, min_segment_s=0)
if comm.Get_rank() == 0:
    np.save(f"{folder}/y.npy", next(iter(result.outputs.values())))
    print(json.dumps({"frame_ids": result.frame_ids.tolist(), "plan_of_frame": result.plan_of_frame.tolist(),
                      "switches": result.switches, "drains": result.drains, "segments": result.segments, "runs": runs[0],
                      "transfers": int(result.transfers.shape[0]), "seen": seen}))
'''


@pytest.mark.mpi
def test_kept_plans_do_not_drain_and_switches_at_random_frames_answer_every_frame_once_in_order(tmp_path):
    check_a_switching_schedule(tmp_path, 16)


def check_a_switching_schedule(tmp_path, seed: int) -> None:
    """One seeded schedule of the chooser's choices and forced switches, run and checked (the test's body)."""
    from cluster.mpirun import local_mpirun_command, mpirun_env, run_local

    graph = zoo_model("lenet5")
    for i, stages in enumerate(PLANS):
        hand_plan(graph, stages).save(tmp_path / f"plan{i}.json")
    rng = np.random.default_rng(seed)
    n, every = 48, 2
    # the chooser keeps its plan for random stretches of boundaries (most boundaries keep it), forced switches at random frames
    schedule, plan = {}, 0
    for f in range(n):
        if rng.random() < 0.1:
            plan = int(rng.integers(len(PLANS)))
        schedule[str(f)] = plan
    forced = {int(f): int(rng.integers(len(PLANS))) for f in rng.choice(np.arange(1, n), 5, replace=False)}
    script = tmp_path / "switching.py"
    script.write_text(SCRIPT)
    try:
        cmd = local_mpirun_command(3, [sys.executable, str(script), str(tmp_path), str(n), str(every), json.dumps(schedule),
                                       json.dumps(forced)])
    except FileNotFoundError as exc:
        require(False, str(exc))
    env = mpirun_env()
    env.update(TERM="dumb", NO_COLOR="1", PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    proc = run_local(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    # boundaries every `every` frames from the last one, and at each forced frame; the plan of each frame: the last
    # boundary's choice (a forced switch overrides it)
    boundaries = [0]
    while boundaries[-1] < n:
        boundaries.append(min([boundaries[-1] + every, n] + [f for f in sorted(forced) if f > boundaries[-1]][:1]))
    boundaries.pop()
    expected, current = [], schedule["0"]
    for f in range(n):
        if f in boundaries and f:
            current = forced.get(f, schedule[str(f)])
        expected.append(current)
    changes = [f for f in range(1, n) if expected[f] != expected[f - 1]]
    assert 3 <= len(changes) < len(boundaries) - 3  # switches, and boundaries that keep the plan
    assert doc["frame_ids"] == list(range(n))  # each frame once, in order
    assert doc["plan_of_frame"] == expected
    assert [s["frame"] for s in doc["switches"]] == changes
    assert all(s["from"] == expected[s["frame"] - 1] and s["to"] == expected[s["frame"]] for s in doc["switches"])
    assert doc["runs"] == doc["drains"] == len(changes) + 1  # a drain per plan change, and the end's
    assert doc["segments"] == len(boundaries)
    # every link transfer once (rank 1's on the 3-stage pipeline reach rank 0 while it runs, or at the drain)
    assert doc["transfers"] == sum(LINK_SENDS[p] for p in expected)
    assert len(doc["seen"]) == len(boundaries) - 1 and sum(doc["seen"]) <= doc["transfers"]
    y = np.load(tmp_path / "y.npy", allow_pickle=False)
    np.testing.assert_allclose(y, reference_outputs(graph, n), rtol=1e-5, atol=1e-5)


def test_down_margin_is_a_fraction_below_one():
    assert parse_down_margin(None) == 0.1 and parse_down_margin(0.0) == 0.0 and parse_down_margin(0.5) == 0.5
    for bad in (1.0, -0.1, float("nan"), 3.0):
        with pytest.raises(PisplitError, match=r"--down-margin .*: must be a fraction in \[0, 1\)"):
            parse_down_margin(bad)


@pytest.mark.mpi
def test_run_down_margin_is_refused_in_one_line_and_decides_the_drop(tmp_path):
    from tests.cluster.test_configmap import pisplit

    out = tmp_path / "map"
    proc = pisplit("configmap", "branchy_alexnet_mnist", "--devices", "rpi3:1,host:1", "--states", "2,100mbit", "--latency-req", "3ms",
                   "--objective", "accuracy", "--output", out)
    assert proc.returncode == 0, proc.stderr
    m = out / "configmap.json"
    plain = next(out.glob("plan_*100mbit.json"))
    for run, target, value, message in [(mpirun, m, "1", "--down-margin 1: must be a fraction in [0, 1)"),
                                        (pisplit, plain, "0.2", "--down-margin: only for a configuration map (PLAN.json is a plan)")]:
        proc = run(1, "run", target, "--down-margin", value, timeout=60) if run is mpirun else run("run", target, "--down-margin", value)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len([ln for ln in proc.stderr.splitlines() if "pisplit: error" in ln]) == 1
    # the link falls from 150 to 60 Mbit/s, 40% below the 100 Mbit/s state: the default margin (10%) drops to the 2 Mbit/s
    # state's plan, a margin of 0.5 keeps the offloaded plan (and with --drain-every-boundary, the benchmarks' way of running
    # as before kept plans stopped draining, drains at each of its boundaries)
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,mbit_per_s\n0,150\n0.1,60\n")
    docs = []
    for extra in ([], ["--down-margin", "0.5", "--drain-every-boundary"]):
        proc = mpirun(2, "run", m, "--emulate", "--bandwidth-trace", trace, "--frames", 30, "--frame-interval", 10,
                      "--min-segment", 0, "--switch-every", 2, "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(proc.stdout))
    assert [d["down_margin"] for d in docs] == [0.1, 0.5]
    assert all(d["every_frame_once"] and d["frames"] == 30 for d in docs)
    assert docs[0]["drains"] == len(docs[0]["switches"]) + 1 and docs[1]["drains"] == docs[1]["segments"] > 10
    # --frame-interval: latency from each frame's capture too, never less than from its first stage's start (1 ms: two clocks)
    for d in docs:
        cap, lat = np.array(d["latency_from_capture_of_frame_ms"]), np.array(d["latency_of_frame_ms"])
        assert cap.shape == lat.shape == (30,) and np.all(cap >= lat - 1.0)
        assert d["meets_requirement_from_capture"] == pytest.approx(np.mean(cap <= d["latency_req_ms"]))
    offloaded = next(p["index"] for p in docs[0]["plans"] if p["ranks"] == 2)
    assert docs[0]["switches"] and docs[0]["switches"][0]["from"] == offloaded and "fell" in docs[0]["switches"][0]["reason"]
    assert docs[1]["switches"] == [] and set(docs[1]["plan_of_frame"]) == {offloaded}


def test_a_run_extended_at_every_boundary_answers_every_frame_once():
    """In process (one rank): PipelineRank.extend from options.more at the end of its frames, one to five
    frames at a time up to 30, through grown result buffers: every frame once, in order, equal to the reference."""
    from cluster import transport
    from cluster.runtime import PipelineRank, RunOptions

    graph = zoo_model("lenet5")
    plan = hand_plan(graph, PLANS[1])
    rank = PipelineRank(transport.self_comm(), plan, graph, RunOptions(frames=2, keep_outputs=True, warm_up_budget_s=-1), 0, {})
    steps = iter(np.random.default_rng(3).integers(1, 6, 40).tolist())

    def more(pr):
        if pr.n_frames >= 30:
            return False
        pr.extend(np.arange(pr.n_frames, min(pr.n_frames + next(steps), 30)))
        return True

    rank.restart(np.arange(2))
    rank.options.more = more
    rank.run()
    assert rank.n_frames == 30 and rank.done == 30
    assert rank.frame_order.tolist() == list(range(30)) and rank.arrived.all()
    y = next(iter(rank.outputs.values()))
    np.testing.assert_allclose(y.reshape(30, -1), reference_outputs(graph, 30).reshape(30, -1), rtol=1e-5, atol=1e-5)
    assert np.array_equal(rank.argmax, y.reshape(30, -1).argmax(1))
