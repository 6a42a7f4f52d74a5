"""Compute-only emulation (`pisplit run --emulate-compute`, `pisplit launch --emulate-compute`): ranks dilate
their compute to the plan's devices as `--emulate` does but pace no transfer, for the network-namespace
cluster whose tc-shaped links are the link. Correctness here, not timing (scripts/bench_netns compares
the namespace cluster with paced emulation).

The plan is AlexNet's latency plan on 3 Pi 3B+ (one split stage whose segments keep row strips on the
parts: messages between the parts go through the emulated device's unpaced stamp). Ranks are given a
host speed a quarter of this machine's, so their compute is dilated to about four times the device's:
each stage's compute then takes at least twice its predicted time, which undilated compute (a ninth
of it on this kind of machine, a few times that under load) does not reach.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import numpy as np
import pytest

from cluster.emulated_plans import plan_for_devices
from cluster.netns import PI_USER
from layers import zoo_model
from tests.conftest import ROOT, run_pisplit, varied

from .test_runtime import mpirun, reference_outputs

FRAMES = 3


@pytest.fixture(scope="module")
def plan_and_speed(tmp_path_factory):
    """AlexNet's latency plan on 3 Pi 3B+ at 94 Mbit/s and a host speed a quarter of this machine's."""
    from cluster.host_speed import host_speed

    graph = zoo_model("alexnet")
    plan = plan_for_devices(graph, "alexnet", "rpi3:3", 94e6, "dp", "latency", "numpy")
    assert [s.mode for s in plan.stages] == ["split"] and any(seg.output_layout == "parts" for seg in plan.stages[0].segments)
    path = plan.save(tmp_path_factory.mktemp("plan") / "alexnet-lat3.json")
    return graph, plan, path, 0.25 * host_speed(plan.model, plan.model_seed, "numpy", concurrency=1)


def check_dilated(report: dict, plan, paced: bool) -> None:
    assert report["emulated"] and report["links_paced"] is paced and report["every_frame_once"]
    busy = [r["link_busy_s"] for r in report["ranks"]]
    assert all(b > 0 for b in busy) if paced else busy == [0.0] * len(busy), busy
    for stage in report["stages"]:
        assert stage["compute_ms"] >= 2 * stage["predicted_compute_ms"], (stage, "compute not dilated")


def check_outputs(path, graph) -> None:
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z["frame_ids"].tolist()) == list(range(FRAMES))
        y = z["output_0"]
    ref = varied(reference_outputs(graph, FRAMES))
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# --- on this machine, under mpirun ---------------------------------------------------------------------------
@pytest.mark.mpi
@pytest.mark.slow
def test_emulate_compute_dilates_compute_paces_no_link_and_equals_the_reference(plan_and_speed, tmp_path):
    graph, plan, path, speed = plan_and_speed
    runs = {}
    for flag in ("--emulate-compute", "--emulate"):
        out = tmp_path / f"out{flag}.npz"
        proc = mpirun(3, "run", path, "--frames", FRAMES, flag, "--host-speed", repr(speed), "--output", out, "--json", timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs[flag] = json.loads(proc.stdout)
        check_outputs(out, graph)
    check_dilated(runs["--emulate-compute"], plan, paced=False)
    check_dilated(runs["--emulate"], plan, paced=True)  # the same plan paced: the parts' links were busy


@pytest.mark.mpi
def test_emulate_and_emulate_compute_together_are_refused_in_one_line(plan_and_speed):
    _, _, path, _ = plan_and_speed
    proc = mpirun(1, "run", path, "--emulate", "--emulate-compute", "--frames", 1)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--emulate and --emulate-compute: give one" in proc.stderr
    proc = run_pisplit("run", path, "--resilient", "--emulate-compute", check=False)  # its ranks share this machine: nothing to leave unpaced
    assert proc.returncode == 1 and proc.stderr.strip() == ("pisplit: error: --emulate-compute: not with --resilient (it runs its ranks "
                                                            "on this machine: --emulate paces their links too)")


# --- on the network-namespace cluster -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def head(emulated_cluster, netns_head):
    """The session's emulated cluster and head (conftest_netns: pi-0..pi-2 of the group `pis` at 94 Mbit/s),
    those three Pis provisioned (after test_netns_cluster a second provision, which skips the done work)."""
    from bench.netns import Head

    h = Head(emulated_cluster, home=netns_head["home"], inventory=netns_head["inventory"])
    assert (h.known_hosts, h.cluster_key, h.env["XDG_CACHE_HOME"]) == (netns_head["known_hosts"], netns_head["cluster_key"],
                                                                        netns_head["env"]["XDG_CACHE_HOME"])
    h.provision("pis")
    return h


@pytest.mark.netns
@pytest.mark.slow
def test_the_pis_share_this_machines_tmp_for_the_core_tokens(head):
    # Core tokens (one computing emulated device per core) are lock files in a directory rank 0 makes
    # in /tmp: every Pi's mount namespace must see the same /tmp, since every Pi computes on these cores.
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="pisplit-netns-probe-") as probe:
        for pi in head.cluster.pis:
            pid = pi.pid_file.read_text().strip()  # the Pi's sshd: its sessions (the ranks) live in its mount namespace
            seen = subprocess.run(["nsenter", "-t", pid, "-m", "test", "-e", probe.name], capture_output=True)
            assert seen.returncode == 0, f"{pi.hostname} does not see {probe.name}"
        pid = head.cluster.pis[2].pid_file.read_text().strip()  # pi-2, provisioned
        home = subprocess.run(["nsenter", "-t", pid, "-m", "ls", f"/home/{PI_USER}"], capture_output=True, text=True)
        assert home.returncode == 0 and "pisplit" in home.stdout.split()  # while /home is the Pi's own


@pytest.mark.netns
@pytest.mark.slow
def test_launch_emulate_compute_reaches_every_rank_and_equals_the_reference(head, plan_and_speed):
    graph, plan, path, speed = plan_and_speed
    local = plan.save(head.home / path.name)  # where the head's namespace reads it
    dry = head.pisplit("launch", local, "--hosts", "pis", "--emulate-compute", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    argv = json.loads(dry.stdout)["argv"]
    # without --host-speed the head measures this machine (every Pi runs on it) and passes the value on
    assert argv[argv.index("--emulate-compute") + 1] == "--host-speed" and float(argv[argv.index("--host-speed") + 1]) > 0
    assert "OPENBLAS_NUM_THREADS=1" in argv and argv[argv.index("OPENBLAS_NUM_THREADS=1") - 1] == "-x"

    out = head.cluster.pis[0].state / "home" / PI_USER / "pisplit" / "out.npz"  # rank 0 runs on pi-0
    out.unlink(missing_ok=True)
    report = head.launch(local, FRAMES, ["--output", "{workdir}/out.npz"], ["--host-speed", repr(speed)], timeout=600)
    assert report["rank_command"][-2:] == ["--host-speed", repr(speed)]
    check_dilated(report, plan, paced=False)  # every stage's compute dilated, no transfer paced: the veths' tc is the link
    check_outputs(out, graph)


@pytest.mark.netns
@pytest.mark.slow
def test_bench_netns_runs_a_plan_both_ways_on_a_running_cluster(head):
    # scripts/bench_netns, briefly, reusing the session's cluster (its first three Pis; leaving it up: the fixture takes it down)
    cluster = head.cluster
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "bench_netns"), "--name", cluster.name, "--state", str(cluster.state),
                           "--network", cluster.network, "--plans", "alexnet@rpi3:3/latency", "--latency-frames", "2", "--speed-rounds", "1", "--keep", "--json"],
                          capture_output=True, text=True, timeout=900, cwd="/", env={**os.environ, "TERM": "dumb", "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reused" in proc.stderr and f"cluster {cluster.name}: down" not in proc.stderr
    (row,) = json.loads(proc.stdout)["rows"]
    assert (row["model"], row["devices"], row["objective"], row["frames"]) == ("alexnet", "rpi3:3", "latency", 2)
    for side in ("namespace_cluster", "paced_emulation"):
        assert row[side]["every_frame_once"] and row[side]["frames"] == 2 and row[side]["throughput_fps"] > 0
    assert row["host_speed_cluster"] > 0 and row["host_speed_paced"] > 0 and row["fps_ratio"] > 0 and row["latency_ratio"] > 0
