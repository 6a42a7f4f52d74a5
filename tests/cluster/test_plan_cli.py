"""`pisplit plan` and `pisplit profile` from the command line: documents, tables, files, errors, mpirun links."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from partitioners.plan import Plan
from partitioners.profiles import Profile

from ..conftest import require

ROOT = Path(__file__).resolve().parents[2]
PISPLIT = [sys.executable, "-m", "cluster.cli"]


def pisplit(*args, check=True):
    proc = subprocess.run([*PISPLIT, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"pisplit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_plan_json_output_and_table(tmp_path):
    doc = json.loads(pisplit("plan", "alexnet", "--devices", "rpi3:4", "--link", "94mbit", "--output", tmp_path / "p.json", "--json").stdout)
    plan = Plan.from_dict(doc).validate()
    assert plan.planner == "dp" and plan.link_bandwidth_bps == 94e6 and plan.n_ranks == 4
    assert Plan.load(tmp_path / "p.json") == plan
    out = pisplit("plan", "vgg16", "--devices", "rpi3:2,rpi4:2", "--objective", "latency").stdout
    for word in ("stage", "ranks", "split kinds", "compute ms", "comm ms", "memory / device", "predicted throughput", "block1_conv1"):
        assert word in out


def test_plan_compare_puts_dp_first_and_best():
    doc = json.loads(pisplit("plan", "alexnet", "--devices", "rpi3:4", "--link", "94mbit", "--compare", "--json").stdout)
    plans = {p["planner"]: Plan.from_dict(p["plan"]) for p in doc["plans"]}
    assert list(plans) == ["dp", "paper", "memory", "single"]
    assert all(plans["dp"].predicted_throughput_fps >= p.predicted_throughput_fps for p in plans.values())
    table = pisplit("plan", "alexnet", "--devices", "rpi3:4", "--compare").stdout
    assert "throughput fps" in table and "paper" in table and "vs single" in table


def test_plan_errors_are_one_line():
    proc = pisplit("plan", "vgg16", "--devices", "rpi3:2@420M", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pisplit: error: node fc1 (dense") and "short by" in proc.stderr and proc.stderr.count("\n") == 1
    proc = pisplit("plan", "vgg16", "--devices", "rpi9:2", check=False)
    assert proc.returncode == 1 and "unknown" in proc.stderr and "rpi3" in proc.stderr
    proc = pisplit("plan", "vgg16", "--devices", "rpi3:2", "--link", "fast", check=False)
    assert proc.returncode == 1 and "bandwidth" in proc.stderr


def test_plan_from_inventory(tmp_path):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[pis]\npi-a device=rpi4 slots=2\npi-b device=rpi3\n")
    plan = Plan.from_dict(json.loads(pisplit("plan", "alexnet", "--inventory", inventory, "--json").stdout))
    assert plan.n_ranks >= 1 and {d.host for d in plan.devices} <= {"pi-a", "pi-b"}
    assert all((d.kind == "rpi4") == (d.host == "pi-a") for d in plan.devices)
    inventory.write_text("[pis]\npi-a\n")
    proc = pisplit("plan", "alexnet", "--inventory", inventory, check=False)
    assert proc.returncode == 1 and "pi-a has no device kind" in proc.stderr


def test_profile_measured_on_the_device_drives_the_plan(tmp_path):
    out = pisplit("profile", "--model", "lenet5", "--kind", "rpi3", "--repeat", "1", "--fractions", "0.5", "--output", tmp_path / "rpi3.json").stdout
    assert "latency model" in out and "conv2d" in out
    profile = Profile.load(tmp_path / "rpi3.json")
    assert profile.kind == "rpi3" and len(profile.models["lenet5"]) == 9
    doc = json.loads(pisplit("plan", "lenet5", "--devices", "rpi3:1", "--profile", tmp_path / "rpi3.json", "--json").stdout)
    measured = sum(n.seconds for n in profile.models["lenet5"])
    assert doc["predicted_latency_s"] == pytest.approx(measured)  # a Pi's own profile is used as measured


@pytest.mark.mpi
def test_profile_under_mpirun_measures_the_link(tmp_path):
    from cluster.mpirun import local_mpirun_command, mpirun_env

    try:
        from cluster.mpirun import mpirun_path

        mpirun_path()
        found = True
    except FileNotFoundError:
        found = shutil.which("mpirun") is not None
    require(found, "mpirun is not installed")
    cmd = local_mpirun_command(2, [sys.executable, "-m", "cluster.cli", "profile", "--model", "lenet5", "--fractions", "none",
                                   "--repeat", "1", "--output", str(tmp_path / "p.json")])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=mpirun_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    profile = Profile.load(tmp_path / "p.json")
    (link,) = profile.links
    assert link.ranks == (0, 1) and link.bandwidth_bps > 1e6 and link.latency_s >= 0 and len(link.sizes) == 4
    doc = json.loads(pisplit("plan", "lenet5", "--devices", "rpi3:2", "--profile", tmp_path / "p.json", "--json").stdout)
    assert doc["link_bandwidth_bps"] == pytest.approx(link.bandwidth_bps)  # a measured link is the default
