"""Fixtures for the inventory, launch and emulated-cluster tests (imported by those modules).

`no_network`: any attempt to open a socket connection fails the test loudly.
`emulated_cluster`: an emulated Pi cluster in network namespaces, brought up once for the session (the
netns modules share it: test_netns_cluster provisions it, test_netns_resilient, which runs after it and
tears Pis down, brings each back) and torn down at its end.
`netns_head`: the head node's side of that cluster (inventory, known_hosts, cluster key, cache, wheelhouse),
also once for the session, so a later module's provision finds the Pis provisioned and skips the done work.
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


@pytest.fixture(scope="session")
def emulated_cluster(tmp_path_factory):
    """Four emulated Pis (pi-0..pi-2 healthy, pi-3 for the failure cases) and a head, links at 94mbit."""
    from cluster.netns import Cluster, cluster_down, cluster_up

    ok, reason = netns_available()
    require(ok, reason)
    state = tmp_path_factory.mktemp("netns")
    # PISPLIT_NETNS_TEST_NAME: another name, for a second test run on this machine at the same time (each
    # run's cluster has namespaces of its own name; the same addresses in separate namespaces never meet)
    cluster = Cluster(name=os.environ.get("PISPLIT_NETNS_TEST_NAME", "pstest"), n_pis=6, rate="94mbit", head_rate="1gbit", state=state / "cluster")
    cluster_down(cluster)  # leftovers of an interrupted run
    try:
        cluster_up(cluster)
        yield cluster
    finally:
        cluster_down(cluster)


@pytest.fixture(scope="session")
def netns_head(emulated_cluster, tmp_path_factory):
    """The emulated cluster's head node's side: inventory, known_hosts, cluster key, its own cache (facts, hostfile) and a ready wheelhouse."""
    import platform

    from cluster.netns import PI_USER
    from cluster.provision import Wheelhouses, project_requirements

    cluster = emulated_cluster
    home = tmp_path_factory.mktemp("head")
    cache = home / "cache"
    # The head namespace has no route to a package index, like a head node without internet: the
    # wheelhouse for the Pis' platform is built beforehand on the machine's own network, with the code
    # provision uses, in this machine's pisplit cache (kept across runs), and given as --wheelhouse.
    py = subprocess.run(["python3", "-c", "import platform; print(platform.python_version()); print(' '.join(platform.libc_ver()))"],
                        capture_output=True, text=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, check=True).stdout.split("\n")
    wheels = Wheelhouses(project_requirements()).for_host({"python": py[0], "libc": py[1], "arch": platform.machine()})
    wrong_key = home / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    pis = cluster.pis
    unused = f"{cluster.network}.99"
    inventory = home / "inventory.ini"
    inventory.write_text(f"""
[pis]
pi-0 ansible_host={pis[0].address}
pi-1 ansible_host={pis[1].address}
pi-2 ansible_host={pis[2].address}

[broken]
wrong-key ansible_host={pis[3].address} ansible_ssh_private_key_file={wrong_key}
unwritable ansible_host={pis[4].address} workdir=/opt/pisplit-{cluster.name}
no-python ansible_host={pis[5].address} python=/opt/no-such-python3
unreachable ansible_host={unused}

[all:vars]
ansible_user={PI_USER}
ansible_ssh_private_key_file={cluster.admin_key}
device=rpi3
workdir=/home/{PI_USER}/pisplit
mpi_network={cluster.network}.0/24
""")
    return {"home": home, "inventory": inventory, "env": head_env(cache), "known_hosts": home / "known_hosts",
            "cluster_key": home / "cluster_key", "wheels": wheels}


def run_in_head(cluster, argv: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a pisplit command line in the head node's namespace."""
    cmd = cluster.exec_argv(cluster.head, [sys.executable, "-m", "cluster.cli", *map(str, argv)])
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
