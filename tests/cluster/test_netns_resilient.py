"""Issue 17 on the emulated cluster: `pisplit launch --resilient` across three Pis (network namespaces with
their own sshd) survives a Pi whose namespace is torn down mid-run (every process in it killed, its link
down): the supervisor drops that host, replans on the two left and every frame comes out once, equal to
the reference. Runs as root (CI); elsewhere it skips with the reason."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cluster.netns import PI_USER, restart_sshd
from layers import zoo_model

from .pipeline_plans import hand_plan
from .test_netns_cluster import head  # noqa: F401 - fixture
from .test_netns_cluster import pisplit
from .test_runtime import reference_outputs

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def bring_back(cluster, pi) -> None:
    """The Pi powered up again: its links up, its sshd started."""
    links = subprocess.run(["ip", "-n", pi.namespace, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        subprocess.run(["ip", "-n", pi.namespace, "link", "set", line.split(":")[1].strip().split("@")[0], "up"], capture_output=True)
    restart_sshd(cluster, pi)


def wait_for_results(run, files, attempt: int, count: int = 200, timeout: float = 240) -> None:
    """Until rank 0's journal of `attempt` (0-based) holds about `count` results (lenet5: 60 bytes each)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        journals = list(files.glob(f"pisplit-*-journal-{attempt}"))
        if journals and journals[0].stat().st_size > count * 60:
            return
        time.sleep(0.2)
    if run.poll() is not None:
        stdout, stderr = run.communicate()
        raise AssertionError(f"the run ended (exit {run.returncode}) before attempt {attempt + 1} had {count} results:\n{stderr[-6000:]}")
    raise AssertionError(f"attempt {attempt + 1}: no {count} results within {timeout} s")


def tear_down(cluster, pi) -> None:
    """A Pi that lost power: every process in its namespace killed, its link down."""
    pids = subprocess.run(["ip", "netns", "pids", pi.namespace], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            import os

            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    links = subprocess.run(["ip", "-n", pi.namespace, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name != "lo":
            subprocess.run(["ip", "-n", pi.namespace, "link", "set", name, "down"], capture_output=True)


def launch_resilient(cluster, head, plan_path, frames: int, out) -> subprocess.Popen:  # noqa: F811
    keys = ["--known-hosts", head["known_hosts"], "--cluster-key", head["cluster_key"], "--inventory", head["inventory"]]
    cmd = cluster.exec_argv(cluster.head, [sys.executable, "-m", "cluster.cli", "launch", str(plan_path), "--hosts", "pis", "--resilient",
                                           "--frames", str(frames), "--output", str(out), "--json", *map(str, keys)])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=head["env"])


@pytest.fixture(scope="module")
def provisioned(emulated_cluster, head):  # noqa: F811
    proc = pisplit(emulated_cluster, head, "provision", "--hosts", "pis", "--accept-new-hosts", "--timeout", "5", "--wheelhouse", head["wheels"],
                   "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_pi_torn_down_mid_run_costs_no_frame(emulated_cluster, head, provisioned, tmp_path):  # noqa: F811
    cluster = emulated_cluster
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 2, [0], "single"), (2, 5, [1], "single"), (5, 9, [2], "single")], kind="rpi3")
    plan_path = plan.save(head["home"] / "resilient-3.json")
    frames = 3000
    out = head["home"] / "resilient.npz"
    run = launch_resilient(cluster, head, plan_path, frames, out)
    try:
        wait_for_results(run, cluster.pis[0].state / "home" / PI_USER / "pisplit" / "files", 0)
        tear_down(cluster, cluster.pis[1])
        stdout, stderr = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr[-4000:]
    doc = json.loads(stdout)
    assert doc["every_frame_once"] and len(doc["failures"]) == 1, doc["failures"]
    failure = doc["failures"][0]
    assert failure["frames_kept"] > 0 and failure["devices_lost"] == 1, failure
    assert doc["attempts"][-1]["ranks"] == 2 and doc["attempts"][-1]["exit"] == 0
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z["frame_ids"].tolist()) == list(range(frames))
        np.testing.assert_allclose(z["output_0"], reference_outputs(graph, frames), rtol=1e-5, atol=1e-5)
    print(f"pi-1 torn down: {failure}")


def test_a_pi_that_comes_back_is_readmitted_at_the_next_replan(emulated_cluster, head, provisioned):  # noqa: F811
    """pi-1 (torn down by the test before) comes back during the second attempt; when pi-2 goes, the
    replan takes pi-1 in again: the third attempt runs on pi-0 and pi-1."""
    cluster = emulated_cluster
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 2, [0], "single"), (2, 5, [1], "single"), (5, 9, [2], "single")], kind="rpi3")
    plan_path = plan.save(head["home"] / "resilient-back.json")
    frames = 4000
    out = head["home"] / "resilient-back.npz"
    bring_back(cluster, cluster.pis[1])
    files = cluster.pis[0].state / "home" / PI_USER / "pisplit" / "files"
    for old in files.glob("pisplit-*"):
        old.unlink()
    run = launch_resilient(cluster, head, plan_path, frames, out)
    try:
        wait_for_results(run, files, 0)
        tear_down(cluster, cluster.pis[1])
        wait_for_results(run, files, 1)
        bring_back(cluster, cluster.pis[1])
        tear_down(cluster, cluster.pis[2])
        stdout, stderr = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
        bring_back(cluster, cluster.pis[2])
    assert run.returncode == 0, stderr[-4000:]
    doc = json.loads(stdout)
    assert doc["every_frame_once"] and [f["host"] for f in doc["failures"]] == ["pi-1", "pi-2"], doc["failures"]
    assert doc["failures"][1]["readmitted"] == ["pi-1"] and [a["ranks"] for a in doc["attempts"]] == [3, 2, 2]
    assert "pi-1 answers again: re-admitted" in stderr
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z["frame_ids"].tolist()) == list(range(frames))
        np.testing.assert_allclose(z["output_0"], reference_outputs(graph, frames), rtol=1e-5, atol=1e-5)
