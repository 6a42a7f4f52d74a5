"""Fixtures for the inventory, launch and emulated-cluster tests (imported by those modules).

`no_network`: any attempt to open a socket connection fails the test loudly.
`emulated_cluster`: an emulated Pi cluster in network namespaces (module scope, torn down after).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]


class NetworkTouched(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Make every outgoing connection raise: unit tests must not reach any host."""
    def refuse(*args, **kwargs):
        raise NetworkTouched(f"unit test tried to open a network connection: {args[:1]}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def netns_available() -> tuple[bool, str]:
    """Whether this machine can host the emulated cluster, and why not."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return False, "the emulated cluster needs root (network namespaces, mounts, sshd)"
    for tool in ("ip", "tc", "unshare", "ssh-keygen", "ssh"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed (bash scripts/setup installs iproute2 and openssh as root)"
    if not os.access("/usr/sbin/sshd", os.X_OK):
        return False, "openssh-server is not installed (bash scripts/setup installs it as root)"
    probe = subprocess.run(["ip", "netns", "add", "pisplitprobe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"cannot create network namespaces here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "pisplitprobe"], capture_output=True)
    return True, ""


def head_env(cache: Path) -> dict:
    """Environment of pisplit on the head node: its own cache (facts, wheelhouse), wide rich output."""
    return {**os.environ, "XDG_CACHE_HOME": str(cache), "COLUMNS": "200"}


@pytest.fixture(scope="module")
def emulated_cluster(tmp_path_factory):
    """Four emulated Pis (pi-0..pi-2 healthy, pi-3 for the failure cases) and a head, links at 94mbit."""
    from cluster.netns import Cluster, cluster_down, cluster_up

    ok, reason = netns_available()
    require(ok, reason)
    state = tmp_path_factory.mktemp("netns")
    cluster = Cluster(name="pstest", n_pis=6, rate="94mbit", head_rate="1gbit", state=state / "cluster")
    cluster_down(cluster)  # leftovers of an interrupted run
    try:
        cluster_up(cluster)
        yield cluster
    finally:
        cluster_down(cluster)


def run_in_head(cluster, argv: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a pisplit command line in the head node's namespace."""
    cmd = cluster.exec_argv(cluster.head, [sys.executable, "-m", "cluster.cli", *map(str, argv)])
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
