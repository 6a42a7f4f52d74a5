"""Issue 17's security pass, where it can be tested: no pickle, Open MPI's TCP kept off the network on
one machine and to the cluster's interfaces on many, remote paths a shell cannot misread, private keys
and state directories nobody else can read or plant (README, "Security")."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cluster.arrays import load_npy
from cluster.inventory import parse_inventory
from cluster.launch import LaunchFiles, mpirun_command, place_ranks
from cluster.mpirun import local_mpirun_command, mpirun_env, run_local
from cluster.netns import private_state_dir
from cluster.ssh import HostError, Remote
from layers.errors import PisplitError
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]


def test_every_np_load_refuses_pickles():
    """A static check over the packages and scripts: np.load is always called with allow_pickle=False."""
    calls = []
    for package in ("layers", "partitioners", "cluster", "bench", "scripts"):
        for path in (ROOT / package).rglob("*"):
            if path.suffix == ".py" or (path.parent.name == "scripts" and path.is_file() and not path.suffix):
                text = path.read_text(errors="replace")
                calls += [(path, m.group(0)) for m in re.finditer(r"np\.load\([^\n]*", text)]
    assert calls and all("allow_pickle=False" in call for _, call in calls), [c for c in calls if "allow_pickle=False" not in c[1]]


def test_a_pickled_npy_is_refused_in_one_line(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PisplitError, match=r"x\.npy: expected a numeric array, got dtype object"):
        load_npy(str(path))


@pytest.mark.mpi
def test_local_ranks_open_no_tcp_listener():
    """Ranks on one machine talk over shared memory: Open MPI's TCP transport listened on 0.0.0.0 and [::]
    with one unauthenticated port per rank."""
    require(bool(subprocess.run(["sh", "-c", "command -v ss"], capture_output=True).stdout), "ss (iproute2) is needed")
    code = ("from mpi4py import MPI; import numpy as np, os, subprocess\n"
            "c = MPI.COMM_WORLD; a = np.ones(64); b = np.empty_like(a); c.Allreduce(a, b)\n"
            "pids = c.gather(os.getpid())\n"
            "if c.rank == 0:\n"
            "    out = subprocess.run(['ss', '-ltnpH'], capture_output=True, text=True).stdout\n"
            "    print('LISTENING', [l for l in out.splitlines() if any(f'pid={p},' in l for p in pids)])\n"
            "c.Barrier()\n")
    proc = run_local(local_mpirun_command(2, [sys.executable, "-c", code]), capture_output=True, text=True, timeout=120,
                          env=mpirun_env())
    assert proc.returncode == 0, proc.stderr
    assert "LISTENING []" in proc.stdout, proc.stdout


def test_a_launch_without_mpi_network_keeps_mpi_to_the_hosts_interfaces(tmp_path):
    inventory = parse_inventory("[p]\na ansible_host=127.0.0.2 workdir=/w\nb ansible_host=127.0.0.3 workdir=/w\n")
    files = LaunchFiles(tmp_path / "hostfile", tmp_path / "ssh_config")
    argv = mpirun_command(place_ranks([{}, {}], inventory.hosts), ["true"], "/w/venv", files)
    btl = argv[argv.index("btl_tcp_if_include") + 1]
    assert argv[argv.index("oob_tcp_if_include") + 1] == btl
    networks = btl.split(",")
    assert {"127.0.0.2/32", "127.0.0.3/32"} <= set(networks) and all(n.endswith("/32") for n in networks)
    # the inventory's own network wins
    fixed = parse_inventory("[p]\na ansible_host=127.0.0.2 workdir=/w mpi_network=10.1.0.0/16\n")
    assert "btl_tcp_if_include 10.1.0.0/16" in shlex.join(mpirun_command(fixed.hosts, ["true"], "/w/venv", files))


@pytest.mark.parametrize("workdir", ["/opt/$(id)", "/opt/a;reboot", "/opt/`id`", "/opt/'a'", "/opt/-x", "~/a|b"])
def test_a_workdir_the_remote_shell_would_misread_is_refused(workdir):
    with pytest.raises(PisplitError, match=r"inventory\.ini:2: host a: workdir .* may hold only"):
        parse_inventory(f"[p]\na workdir={shlex.quote(workdir)}\n")
    assert parse_inventory("[p]\na workdir=/opt/pi-split_2.0/x+y\n").hosts[0].workdir == "/opt/pi-split_2.0/x+y"


def test_a_private_key_others_can_read_is_refused_before_connecting(tmp_path):
    key = tmp_path / "id"
    key.write_text("not used\n")
    key.chmod(0o644)
    host = parse_inventory(f"[p]\na ansible_host=127.0.0.1 ansible_port=9 ansible_ssh_private_key_file={key}\n").hosts[0]
    with pytest.raises(HostError, match=rf"host a: key file {re.escape(str(key))} is accessible by others \(mode 0644\); run chmod 600"):
        Remote(host, tmp_path / "known_hosts").connect()


def test_a_state_directory_someone_else_made_is_refused(tmp_path):
    fresh = tmp_path / "fresh" / "state"
    private_state_dir(fresh)
    assert fresh.stat().st_mode & 0o777 == 0o700
    private_state_dir(fresh)  # ours: used again (cluster_down --keep-state, then cluster_up)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(PisplitError, match=r"state directory .*open: owned by uid \d+ with mode 0777"):
        private_state_dir(open_dir)
    link = tmp_path / "link"
    link.symlink_to(fresh)
    with pytest.raises(PisplitError, match="a symlink or a file"):
        private_state_dir(link)
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 4242, 4242)
        with pytest.raises(PisplitError, match="owned by uid 4242"):
            private_state_dir(theirs)
