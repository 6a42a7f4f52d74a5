"""The emulated cluster end to end: real sshd in network namespaces, real provisioning from the head
namespace with the real inventory code, then mpirun over ssh across the emulated Pis.

Pis: pi-0..pi-2 healthy, pi-3 reachable but the inventory gives it a key it does not accept, pi-4 with
a workdir its user may not write, pi-5 without the python the inventory names (and no right to install
one); plus an address where nothing answers. Runs as root (CI); elsewhere
it skips with the reason. The tests build on each other in file order (one cluster and head for the session,
shared with test_netns_resilient).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import numpy as np
import pytest

from cluster.netns import PI_USER, restart_sshd
from cluster.provision import HOST_STEPS
from layers import zoo_model
from tests.conftest import varied

from .conftest_netns import run_in_head
from .pipeline_plans import hand_plan
from .test_runtime import reference_outputs

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LINK_BYTES_PER_S = 94e6 / 8


@pytest.fixture(scope="module")
def head(netns_head):
    """The session's head node (conftest_netns.netns_head): this module provisions with it first."""
    return netns_head


def pisplit(cluster, head, *args, timeout=300):
    keys = ["--known-hosts", head["known_hosts"], "--cluster-key", head["cluster_key"]]
    return run_in_head(cluster, [*args, "--inventory", head["inventory"], *keys], head["env"], timeout=timeout)


def by_name(doc):
    return {h["name"]: h for h in doc["hosts"]}


def step_status(host):
    return {s["step"]: s["status"] for s in host["steps"]}


def test_provision_three_pis_while_each_broken_host_fails_clearly(emulated_cluster, head):
    cluster = emulated_cluster
    start = time.monotonic()
    proc = pisplit(cluster, head, "provision", "--accept-new-hosts", "--timeout", "5", "--wheelhouse", head["wheels"], "--json")
    seconds = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr  # some hosts failed
    doc = json.loads(proc.stdout)
    hosts = by_name(doc)
    for name in ("pi-0", "pi-1", "pi-2"):
        assert hosts[name]["ok"], f"{name}: {hosts[name]['error']}"
        assert step_status(hosts[name]) == {s: ("skipped" if s == "packages" else "done") for s in HOST_STEPS}
        facts = hosts[name]["facts"]
        assert facts["hostname"] == name and facts["cores"] >= 1 and facts["memory_bytes"] > 0 and facts["python"]
        assert facts["home"] == f"/home/{PI_USER}" and facts["kind"] == "rpi3"
    assert doc["mpi"]["status"] == "done" and "3 ranks answered from pi-0, pi-1, pi-2" in doc["mpi"]["detail"], doc["mpi"]

    errors = {name: hosts[name]["error"] for name in ("wrong-key", "unwritable", "unreachable", "no-python")}
    assert not any(hosts[n]["ok"] for n in errors)
    assert re.search(r"^connect: host wrong-key \(pi@[\d.]+:22\): login refused with key .*wrong_key", errors["wrong-key"]), errors
    assert re.search(rf"^venv: host unwritable: workdir /opt/pisplit-{cluster.name} cannot be created or written by pi "
                     r"\(.*Permission denied\)", errors["unwritable"]), errors
    assert re.search(r"^connect: host unreachable \(pi@[\d.]+\.99:22\): unreachable", errors["unreachable"]), errors
    assert step_status(hosts["unwritable"]) == {"connect": "done", "facts": "done", "packages": "skipped", "venv": "failed"}
    assert errors["no-python"] == ("packages: host no-python: python3, python3-venv missing and user pi may not install packages "
                                   "(not root, no passwordless sudo); run on the host: sudo apt-get install python3 python3-venv")

    # What the Pis now hold, seen from the machine (each Pi's /home lives in the cluster's state directory).
    for pi in cluster.pis[:3]:
        workdir = pi.state / "home" / PI_USER / "pisplit"
        assert (workdir / "venv" / "bin" / "pisplit").exists() and (workdir / "pisplit" / "cluster" / "inventory.py").exists()
        assert head["cluster_key"].with_suffix(".pub").read_text().split()[1] in \
            (pi.state / "home" / PI_USER / ".ssh" / "authorized_keys").read_text()
    facts = json.loads(open(doc["facts_path"]).read())["hosts"]
    assert set(facts) >= {"pi-0", "pi-1", "pi-2", "unwritable"}
    known = head["known_hosts"].read_text()
    assert all(pi.address in known for pi in cluster.pis[:3])
    steps = {n: {s["step"]: round(s["seconds"], 1) for s in h["steps"]} for n, h in hosts.items()}
    print(f"first provision of 3 Pis (+4 failing hosts): {seconds:.1f} s; mpi {doc['mpi']['seconds']:.1f} s; steps {steps}")


def test_second_provision_skips_done_work_and_refuses_a_changed_host_key(emulated_cluster, head):
    cluster = emulated_cluster
    pi2 = cluster.pis[2]
    key = pi2.state / "ssh_host_ed25519_key"
    saved = {p: p.read_bytes() for p in (key, key.with_suffix(".pub"))}
    # pi-2 is "re-flashed": a new host key, as a man in the middle would present.
    key.unlink()
    key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    restart_sshd(cluster, pi2)
    try:
        start = time.monotonic()
        proc = pisplit(cluster, head, "provision", "--hosts", "pis", "--accept-new-hosts",  # even with --accept-new-hosts
                       "--wheelhouse", head["wheels"])
        seconds = time.monotonic() - start
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
        restart_sshd(cluster, pi2)
    assert proc.returncode == 1
    out = proc.stdout
    assert "HOST KEY CHANGED - refusing to connect" in out and "pi-2" in out, out
    assert re.search(r"pi-0 .*│ done .*│ done .*│ ok .*│ ok .*│ ok .*│ ok .*│ ready", out), out
    assert "mpi smoke test: ok 2 ranks answered from pi-0, pi-1" in out
    assert "Traceback" not in proc.stderr
    print(f"second provision (all skipped, pi-2 refused): {seconds:.1f} s")

    # An unknown host is refused without --accept-new-hosts, naming its fingerprint.
    fresh = head["home"] / "empty_known_hosts"
    proc = run_in_head(cluster, ["provision", "--inventory", head["inventory"], "--hosts", "pi-0", "--json", "--wheelhouse", head["wheels"],
                                 "--known-hosts", fresh, "--cluster-key", head["cluster_key"]], head["env"])
    error = by_name(json.loads(proc.stdout))["pi-0"]["error"]
    assert proc.returncode == 1 and "unknown host key ssh-ed25519 SHA256:" in error and "--accept-new-hosts" in error
    assert not fresh.exists()


def test_launch_a_plan_across_three_pis_equals_the_reference(emulated_cluster, head):
    cluster = emulated_cluster
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 2, [0], "single"), (2, 5, [1], "single"), (5, 9, [2], "single")], kind="rpi3")
    plan_path = plan.save(head["home"] / "lenet5-3.json")
    frames = 6
    env = ["--env", "OPENBLAS_CORETYPE"] if os.environ.get("OPENBLAS_CORETYPE") else []
    out = cluster.pis[0].state / "home" / PI_USER / "pisplit" / "out.npz"  # rank 0 runs on pi-0
    out.unlink(missing_ok=True)
    dry = pisplit(cluster, head, "launch", plan_path, "--hosts", "pis", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [r["host"] for r in json.loads(dry.stdout)["ranks"]] == ["pi-0", "pi-1", "pi-2"]
    start = time.monotonic()
    proc = pisplit(cluster, head, "launch", plan_path, "--hosts", "pis", "--frames", frames, *env, "--json",
                   "--command", "{pisplit} run {plan} --frames {frames} --output {workdir}/out.npz --json")
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    launched = json.loads(proc.stdout)
    assert launched["returncode"] == 0, launched["stderr"]
    report = json.loads(launched["stdout"])
    assert report["every_frame_once"] and report["frames"] == frames
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z["frame_ids"].tolist()) == list(range(frames))
        y = z["output_0"]
    ref = varied(reference_outputs(graph, frames))
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert (cluster.pis[1].state / "home" / PI_USER / "pisplit" / "files" / "lenet5-3.json").exists()  # launch copied the plan
    print(f"launch of lenet5 on 3 Pis, {frames} frames: {seconds:.1f} s")


def test_bandwidth_between_two_pis_matches_the_link_shaping(emulated_cluster, head):
    cluster = emulated_cluster
    plan_path = head["home"] / "pingpong.json"
    plan_path.write_text(json.dumps({"ranks": [{"host": "pi-0"}, {"host": "pi-1"}]}))
    proc = pisplit(cluster, head, "launch", plan_path, "--json",
                   "--command", "{python} -m mpi4py.bench pingpong --min-size 2097152 --max-size 2097152 --loop 3 --skip 1 --no-header")
    assert proc.returncode == 0, proc.stderr
    stdout = json.loads(proc.stdout)["stdout"]
    size, bandwidth_mb = map(float, re.search(r"^\s*(\d+)\s+([\d.]+)\s*\|", stdout, re.M).groups())
    assert size == 2097152
    measured = bandwidth_mb * 1e6
    # Loose: tbf lets a burst through and MPI adds headers; what matters is ~94 Mbit/s, not the 1 Gbit/s+ of an unshaped veth.
    assert 0.5 * LINK_BYTES_PER_S < measured < 1.3 * LINK_BYTES_PER_S, f"{measured / 1e6:.2f} MB/s vs {LINK_BYTES_PER_S / 1e6:.2f} MB/s shaped"
    print(f"pingpong pi-0 <-> pi-1, 2 MiB messages: {measured / 1e6:.2f} MB/s (link shaped at {LINK_BYTES_PER_S / 1e6:.2f} MB/s)")


def test_cluster_down_and_up_are_idempotent(emulated_cluster, tmp_path):
    from cluster.netns import Cluster, cluster_down, cluster_up, is_up, namespaces

    cluster = Cluster(name="pstesttwo", n_pis=1, state=tmp_path / "c")
    try:
        cluster_up(cluster)
        assert is_up(cluster)
        cluster_up(cluster)  # already up: left alone
        assert is_up(cluster)
        host_key = (cluster.pis[0].state / "ssh_host_ed25519_key.pub").read_text()
        cluster_down(cluster, keep_state=True)
        assert namespaces("pstesttwo") == [] and not is_up(cluster)
        cluster_up(cluster)  # the host keys survive a down/up with kept state
        assert (cluster.pis[0].state / "ssh_host_ed25519_key.pub").read_text() == host_key
        address = subprocess.run(cluster.exec_argv(cluster.pis[0], ["ip", "-o", "addr", "show", "eth0"]), capture_output=True, text=True)
        assert f"{cluster.network}.10/24" in address.stdout
        qdisc = subprocess.run(["tc", "-n", cluster.pis[0].namespace, "qdisc", "show", "dev", "eth0"], capture_output=True, text=True)
        assert "tbf" in qdisc.stdout and "94Mbit" in qdisc.stdout
    finally:
        cluster_down(cluster)
        cluster_down(cluster)  # twice: nothing left to do, no error
    assert namespaces("pstesttwo") == [] and not (tmp_path / "c").exists()
