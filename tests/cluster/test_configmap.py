"""`pisplit plan --latency-req` (Algorithm 1) and `pisplit configmap` (Algorithm 2), issue 16: the
printed choice, one-line refusals, the map's plans and exit branches, and a map plan run under mpirun
answering exactly what the whole model's exit answers."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from layers import load_model
from partitioners.edgent import ConfigMap
from partitioners.plan import Plan
from tests.cluster.test_runtime import mpirun
from tests.conftest import ROOT


def pisplit(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200",
                                                "PYTHONPATH": str(ROOT)})


def test_plan_latency_req_prints_each_exit_and_the_choice():
    proc = pisplit("plan", "branchy_alexnet_mnist", "--devices", "rpi3:1,host:1", "--link", "2mbit", "--latency-req", "100ms")
    assert proc.returncode == 0, proc.stderr
    for name in ("exit1", "exit2", "exit3", "exit4", "final"):
        assert name in proc.stdout
    assert "meets 100 ms: exit exit4" in proc.stdout  # the most accurate held-out (0.977)
    proc = pisplit("plan", "branchy_alexnet_mnist", "--devices", "rpi3:1,host:1", "--link", "2mbit", "--latency-req", "0.5ms", "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["chosen"] is None and doc["message"].startswith("cannot meet 0.5 ms; the fastest is exit exit1")
    assert len(doc["exits"]) == 5


def test_plan_latency_req_searches_a_codec_tables_codecs(tmp_path):
    from tests.partitioners.test_link_pricing import hand_table

    table = hand_table(load_model("branchy_alexnet_mnist"), ratio=8.0, encode_s=1e-5).save(tmp_path / "t.json")
    args = ("plan", "branchy_alexnet_mnist", "--devices", "rpi3:1,host:1", "--link", "1gbit", "--latency-req", "2ms", "--json")
    raw = json.loads(pisplit(*args).stdout)
    coded = json.loads(pisplit(*args, "--codec-table", table).stdout)
    assert raw["chosen"]["codec"] == "raw" and coded["chosen"]["codec"] == "zstd"  # jpeg:50 is lossy: not without a budget
    assert coded["chosen"]["latency_s"] < raw["chosen"]["latency_s"]
    lossy = json.loads(pisplit(*args, "--codec-table", table, "--max-accuracy-loss", "1%").stdout)
    fastest = {e["exit"]: e["fastest"] for e in lossy["exits"]}
    assert fastest["exit4"]["codec"] == "jpeg:50" and fastest["exit4"]["accuracy"] == pytest.approx(0.977 - 0.004)
    assert lossy["chosen"]["codec"] == "zstd" and lossy["chosen"]["accuracy"] == 0.977  # more accurate, and it meets 2 ms too


@pytest.mark.parametrize("args, message", [
    (["--latency-req", "soon"], "--latency-req 'soon': expected a positive time"),
    (["--latency-req", "100ms", "--accuracy", "exit1=x"], "--accuracy exit1=x: expected NAME=A"),
    (["--latency-req", "100ms", "--accuracy", "exit9=0.5"], "accuracy of exit9: not an output"),
])
def test_plan_latency_req_refuses_bad_input_in_one_line(args, message):
    proc = pisplit("plan", "branchy_lenet_mnist", "--devices", "rpi3:1,host:1", "--link", "2mbit", *args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_configmap_writes_the_map_its_plans_and_branches(tmp_path):
    out = tmp_path / "map"
    proc = pisplit("configmap", "branchy_lenet_mnist", "--devices", "rpi3:1,host:1", "--states", "0.25,1,8,1000mbit",
                   "--latency-req", "50ms", "--availability", "--output", out)
    assert proc.returncode == 0, proc.stderr
    cmap = ConfigMap.load(out / "configmap.json")
    assert cmap.device_sets() == ["rpi3:1,host:1", "rpi3:1"] and cmap.states() == [0.25e6, 1e6, 8e6, 1e9]
    for e in cmap.entries:
        plan = Plan.load(out / e.plan)
        branch = load_model(plan.model)
        assert branch.outputs == [e.exit] and plan.n_nodes == len(branch) == e.n_nodes
        assert plan.stages[0].node_stop == e.cut and plan.n_ranks == (1 if e.cut == e.n_nodes else 2)
    proc = pisplit("configmap", "branchy_lenet_mnist", "--devices", "rpi3:1", "--states", "1mbit", "--latency-req", "50ms",
                   "--availability", "--output", out)
    assert proc.returncode != 0 and "--availability: --devices rpi3:1 has one device and no host: nothing can leave" in proc.stderr, \
        proc.stderr
    assert "Traceback" not in proc.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,mbit_per_s\n0,1\n1,oops\n")
    proc = pisplit("configmap", "branchy_lenet_mnist", "--devices", "rpi3:1,host:1", "--bandwidth-trace", bad, "--latency-req", "50ms",
                   "--output", out)
    assert proc.returncode != 0 and f"bandwidth trace {bad}: line 3: '1,oops' is not two numbers" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_configmap_takes_a_hosts_speed_factor_and_emulate_warns_of_a_device_faster_than_this_machine(tmp_path):
    """host:1*0.5 labels the map's device sets (the plans' host speed: tests/partitioners/test_edgent.py);
    `pisplit emulate` warns in one line when a device computes faster than this machine can emulate."""
    from cluster.commands.emulate import warn_faster_than_host
    from cluster.emulation import device_slowdown

    out = tmp_path / "map"
    proc = pisplit("configmap", "branchy_alexnet_mnist", "--devices", "rpi3:1,host:1*0.5", "--states", "1000mbit",
                   "--latency-req", "1000ms", "--availability", "--output", out)
    assert proc.returncode == 0, proc.stderr
    cmap = ConfigMap.load(out / "configmap.json")
    assert cmap.device_sets() == ["rpi3:1,host:1*0.5", "rpi3:1"]
    assert all(d.speed == 1.0 for e in cmap.entries for d in Plan.load(out / e.plan).devices if d.kind == "rpi3")
    plan = tmp_path / "plan.json"
    assert pisplit("plan", "alexnet", "--devices", "host:1", "--output", plan).returncode == 0
    assert warn_faster_than_host(plan, "numpy", 0.9) == []  # this machine faster than the reference: nothing to say
    lines = warn_faster_than_host(plan, "numpy", 2.0)
    assert len(lines) == 1 and "an emulated host computes 2.00x faster than this machine can emulate" in lines[0], lines
    assert warn_faster_than_host(out / "configmap.json", "numpy", 1.0) == []  # the host at 0.5, the Pi far slower
    slowest = device_slowdown("rpi3", "numpy") * 2
    assert any("rpi3" in ln for ln in warn_faster_than_host(out / "configmap.json", "numpy", slowest))
    proc = pisplit("configmap", "branchy_alexnet_mnist", "--devices", "rpi3:1,host:1*0", "--states", "1mbit", "--latency-req",
                   "50ms", "--output", out)
    assert proc.returncode != 0 and "devices 'host:1*0': speed '0' must be a positive number" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_configmap_of_a_pi_cluster_keyed_by_availability(tmp_path):
    out = tmp_path / "map"
    proc = pisplit("configmap", "branchy_lenet_mnist", "--devices", "rpi3:2,host:1", "--states", "1,1000mbit", "--latency-req", "2ms",
                   "--availability", "--objective", "accuracy", "--output", out)
    assert proc.returncode == 0, proc.stderr
    cmap = ConfigMap.load(out / "configmap.json")
    assert cmap.device_sets() == ["rpi3:2,host:1", "rpi3:1,host:1", "rpi3:2"]
    for e in cmap.entries:
        plan = Plan.load(out / e.plan)
        assert load_model(plan.model).outputs == [e.exit]
        assert plan.n_ranks <= (3 if e.devices == "rpi3:2,host:1" else 2)
        assert {d.kind for d in plan.devices} <= ({"rpi3", "host"} if "host" in e.devices else {"rpi3"})


@pytest.mark.mpi
def test_a_map_plan_with_a_cut_runs_and_answers_as_the_whole_models_exit(tmp_path):
    """At 1 Gbit/s the host takes most of the work: the plan cuts the exit branch across 2 ranks; under
    mpirun its answers equal the whole model's output at that exit."""
    out = tmp_path / "p"
    proc = pisplit("plan", "branchy_alexnet_mnist", "--devices", "rpi3:1,host:1", "--link", "1gbit", "--latency-req", "100ms",
                   "--output", out / "plan.json")
    assert proc.returncode == 0, proc.stderr
    plan = Plan.load(out / "plan.json")
    assert plan.n_ranks == 2 and len(plan.stages) == 2
    branch = load_model(plan.model)
    whole = load_model("branchy_alexnet_mnist")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 32, 32, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = mpirun(2, "run", out / "plan.json", "--frames", 5, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz")
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "y.npz", allow_pickle=False) as z:
        y = z["output_0"]
    exit_name = branch.outputs[0]
    ref = np.stack([whole.execute({"input": x[f % 3][None]})[exit_name][0] for f in range(5)])
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-5, atol=1e-6)


# --- a map's plans switched between frames (Algorithm 3 at run time) --------------------------------
@pytest.fixture(scope="module")
def two_plan_map(tmp_path_factory):
    """At 2 Mbit/s and 3 ms an exit all on the Pi (one rank), at 100 Mbit/s a deeper exit cut to the host (two ranks)."""
    out = tmp_path_factory.mktemp("map")
    proc = pisplit("configmap", "branchy_alexnet_mnist", "--devices", "rpi3:1,host:1", "--states", "2,100mbit", "--latency-req", "3ms",
                   "--objective", "accuracy", "--output", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.mpi
def test_a_map_run_switches_plans_between_frames_answering_every_frame_once(tmp_path, two_plan_map):
    """Under mpirun, with the link following a trace, decisions every 4 frames and switches forced at random
    frames: every frame is answered once, by the plan the report says, with that plan's exit equal to the whole model's; the
    bandwidth the runtime measured from its own transfers lies within the trace's."""
    from cluster.bandwidth import map_plans

    plans = map_plans(ConfigMap.load(two_plan_map / "configmap.json"), two_plan_map)
    assert sorted(Plan.load(p).n_ranks for _, _, p, _ in plans) == [1, 2] and plans[0][0][0] != plans[1][0][0]
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,mbit_per_s\n0,150\n0.3,30\n0.6,150\n")
    rng = np.random.default_rng(16)
    frames = 30
    forced = {int(f): int(rng.integers(2)) for f in rng.choice(np.arange(1, frames), 4, replace=False)}
    x = rng.standard_normal((3, 32, 32, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = mpirun(2, "run", two_plan_map / "configmap.json", "--emulate", "--bandwidth-trace", trace, "--frames", frames,
                  "--frame-interval", 10, "--switch-every", 4, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz", "--json",
                  *[a for f, p in forced.items() for a in ("--switch-at", f"{f}:{p}")])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["every_frame_once"] and doc["frames"] == frames
    with np.load(tmp_path / "y.npz", allow_pickle=False) as z:
        plan_of = z["plan_of_frame"]
        ys = {str(n): z[f"output_{i}"] for i, n in enumerate(z["names"])}
        assert sorted(z["frame_ids"].tolist()) == list(range(frames))
    assert plan_of.tolist() == doc["plan_of_frame"]
    for f, p in forced.items():
        assert plan_of[f] == p
    # the switches the report lists are exactly where the answering plan changes
    replay, at = [plan_of[0]] * frames, {s["frame"]: s for s in doc["switches"]}
    for f in range(1, frames):
        replay[f] = at[f]["to"] if f in at else replay[f - 1]
        if f in at:
            assert at[f]["from"] == replay[f - 1] and at[f]["reason"]
    assert replay == plan_of.tolist()
    whole = load_model("branchy_alexnet_mnist")
    for f in range(frames):
        name = doc["plans"][plan_of[f]]["exit"]
        ref = whole.execute({"input": x[f % 3][None]})[name][0]
        np.testing.assert_allclose(ys[name][f].reshape(ref.shape), ref, rtol=1e-5, atol=1e-6)
        assert all(np.isnan(y[f]).all() for n, y in ys.items() if n != name)
    assert sum(r["frames"] for r in doc["plans"]) == frames
    assert doc["transfers"] > 0 and doc["estimates"]
    assert all(30e6 * 0.99 <= bps <= 150e6 * 1.01 for _, bps in doc["estimates"])


@pytest.mark.mpi
def test_a_map_run_refuses_bad_switching_options_in_one_line(two_plan_map):
    m = two_plan_map / "configmap.json"
    for args, message in [(["--switch-at", "5:7"], "--switch-at 5:7: expected FRAME:PLAN with PLAN one of the map's plans 0..1"),
                          (["--min-segment", "-1"], "--min-segment -1: must be a number of milliseconds >= 0")]:
        proc = mpirun(1, "run", m, *args, timeout=60)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len([ln for ln in proc.stderr.splitlines() if "pisplit: error" in ln]) == 1


@pytest.mark.mpi
def test_an_emulated_links_bandwidth_follows_the_trace(tmp_path, two_plan_map):
    """`pisplit run PLAN --emulate --bandwidth-trace`: the device's link is paced at the trace's bandwidth,
    not the plan's (a constant 5 Mbit/s trace under a plan priced at 100 Mbit/s: every transfer lasts
    its bytes at 5 Mbit/s plus the link's latency); --frame-interval spaces the frames."""
    from cluster.bandwidth import map_plans

    plan_path = next(p for _, _, p, _ in map_plans(ConfigMap.load(two_plan_map / "configmap.json"), two_plan_map)
                     if Plan.load(p).n_ranks == 2)
    plan = Plan.load(plan_path)
    assert plan.link_bandwidth_bps == 100e6
    trace = tmp_path / "five.csv"
    trace.write_text("time_s,mbit_per_s\n0,5\n")
    proc = mpirun(2, "run", plan_path, "--emulate", "--bandwidth-trace", trace, "--frames", 3, "--frame-interval", 40, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    graph = load_model(plan.model)
    tensors = graph.cut_tensors(plan.stages[0].node_stop)
    per_frame = len(tensors) * plan.link_latency_s + plan.stages[0].send_bytes * 8 / 5e6
    assert doc["every_frame_once"] and doc["ranks"][0]["link_busy_s"] == pytest.approx(3 * per_frame, rel=1e-6)
    # --frame-interval: frame i is not taken before i x 40 ms (a lower bound: no machine is too fast for it)
    assert [n for _, n in doc["completed"]] == [1, 2, 3]
    assert all(t >= i * 0.040 for i, (t, _) in enumerate(doc["completed"]))


@pytest.mark.mpi
def test_a_map_run_decides_at_most_once_per_min_segment(tmp_path, two_plan_map):
    """A boundary drains the pipeline, so a map run decides no more often than --min-segment of frames:
    with a bound longer than the run, the run is one segment (the initial plan's) plus one per forced switch,
    every frame still answered once; --min-segment 0 decides every --switch-every frames."""
    m = two_plan_map / "configmap.json"
    docs = []
    for extra in (["--min-segment", 1e7, "--frame-interval", 1], ["--min-segment", 0, "--switch-every", 4]):
        proc = mpirun(2, "run", m, "--emulate", "--link", "100mbit", "--frames", 20, "--switch-at", "12:0", "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(proc.stdout))
    assert all(d["every_frame_once"] and d["frames"] == 20 for d in docs)
    assert all(len(d["emulation_late_s_by_rank"]) == 2 and min(d["emulation_late_s_by_rank"]) >= 0 for d in docs)
    assert docs[0]["segments"] == 2 and set(docs[0]["plan_of_frame"][12:]) == {0}
    assert docs[1]["segments"] == 5  # from frames 0, 4, 8, 12 (also the forced switch) and 16


HANG_BEFORE_SPLIT = '''
import sys, time
from pathlib import Path
from cluster import switching, transport
from cluster.bandwidth import map_plans
from cluster.runtime import RunOptions
from layers import load_model
from partitioners.edgent import ConfigMap
from partitioners.plan import Plan

folder = Path(sys.argv[1])
comm = transport.world()
rank = comm.Get_rank()
entries = map_plans(ConfigMap.load(folder / "configmap.json"), folder)
plans = [Plan.load(p) for _, _, p, _ in entries]
if rank == 1:  # a rank that passes the checks and host names, then hangs before the plans' communicators
    switching.settle_baseline = lambda: time.sleep(60)
try:
    switching.run_switching(comm, plans, lambda i: load_model(str(entries[i][3])), RunOptions(frames=4, stall_timeout=1.0))
except Exception as exc:
    print(f"rank {rank}: {exc}", flush=True)
    time.sleep(0.5)
    transport.abort(comm, 3)
'''


@pytest.mark.mpi
def test_a_switching_runs_set_up_never_waits_unbounded_for_an_absent_rank(tmp_path, two_plan_map):
    """Under mpirun: a rank that hangs just before the plans' communicators are split (MPI_Comm_split, which
    used to wait for it forever) is named by rank 0 within its bound, and the job ends."""
    import os

    from cluster.mpirun import local_mpirun_command, mpirun_env, run_local
    from tests.conftest import require

    script = tmp_path / "hang.py"
    script.write_text(HANG_BEFORE_SPLIT)
    try:
        cmd = local_mpirun_command(2, [sys.executable, str(script), str(two_plan_map)])
    except FileNotFoundError as exc:
        require(False, str(exc))
    env = mpirun_env()
    env.update(TERM="dumb", NO_COLOR="1", PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    proc = run_local(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode != 0
    host = os.uname().nodename
    assert f"rank 0: rank 1 (host {host}) did not reach plan 0's communicator for" in proc.stdout, proc.stdout + proc.stderr
