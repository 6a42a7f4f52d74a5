"""`pisplit plan` and `pisplit profile` from the command line: documents, tables, files, errors, mpirun links.

A few cases run the real console script in a subprocess (exit codes, one-line errors, mpirun); the
rest parse and run the two sub-commands in this process, which is much faster.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from cluster.commands import plan as plan_command
from cluster.commands import profile as profile_command
from layers.errors import PisplitError
from partitioners.plan import Plan
from partitioners.profiles import Profile

from ..conftest import require, run_pisplit

ROOT = Path(__file__).resolve().parents[2]


def pisplit(*args, check=True):
    return run_pisplit(*args, check=check)

def run_here(capsys, *argv) -> str:
    """Run `pisplit plan|profile ...` in this process; returns what it printed."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    plan_command.register(sub)
    profile_command.register(sub)
    args = parser.parse_args([str(a) for a in argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_plan_console_script_writes_json_and_the_plan_file(tmp_path):
    doc = json.loads(pisplit("plan", "alexnet", "--devices", "rpi3:4", "--link", "94mbit", "--output", tmp_path / "p.json", "--json").stdout)
    plan = Plan.from_dict(doc).validate()
    assert plan.planner == "dp" and plan.link_bandwidth_bps == 94e6 and plan.n_ranks == 4
    assert Plan.load(tmp_path / "p.json") == plan


def test_plan_errors_are_one_line_without_traceback():
    proc = pisplit("plan", "vgg16", "--devices", "rpi3:2@420M", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pisplit: error: node fc1 (dense") and "short by" in proc.stderr and proc.stderr.count("\n") == 1


def test_plan_table_shows_stages_kinds_times_and_memory(capsys):
    out = run_here(capsys, "plan", "vgg16", "--devices", "rpi3:2,rpi4:2", "--objective", "latency")
    for word in ("stage", "ranks", "split kinds", "compute ms", "comm ms", "memory / device", "predicted throughput",
                 "block1_conv1", "2 rpi4 + "):
        assert word in out


def test_plan_compare_puts_dp_first_and_best(capsys, tmp_path):
    doc = json.loads(run_here(capsys, "plan", "alexnet", "--devices", "rpi3:4", "--link", "94mbit", "--compare", "--json"))
    plans = {p["planner"]: Plan.from_dict(p["plan"]) for p in doc["plans"]}
    assert list(plans) == ["dp", "paper", "memory", "single"]
    assert all(plans["dp"].predicted_throughput_fps >= p.predicted_throughput_fps for p in plans.values())
    table = run_here(capsys, "plan", "alexnet", "--devices", "rpi3:4", "--compare", "--planner", "paper", "--output", tmp_path / "paper.json")
    assert "throughput fps" in table and "vs single" in table and "infeasible" not in table
    assert Plan.load(tmp_path / "paper.json").planner == "paper"


def test_plan_rejects_unknown_kinds_and_bad_links(capsys):
    with pytest.raises(PisplitError, match="rpi9.*unknown.*rpi3"):
        run_here(capsys, "plan", "vgg16", "--devices", "rpi9:2")
    with pytest.raises(PisplitError, match="bandwidth"):
        run_here(capsys, "plan", "vgg16", "--devices", "rpi3:2", "--link", "fast")
    with pytest.raises(PisplitError, match="--hosts"):
        run_here(capsys, "plan", "vgg16", "--devices", "rpi3:2", "--hosts", "pi-a")


def test_plan_from_inventory(capsys, tmp_path):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[pis]\npi-a device=rpi4 slots=2\npi-b device=rpi3\n")
    plan = Plan.from_dict(json.loads(run_here(capsys, "plan", "alexnet", "--inventory", inventory, "--json")))
    assert plan.n_ranks >= 1 and {d.host for d in plan.devices} <= {"pi-a", "pi-b"}
    assert all((d.kind == "rpi4") == (d.host == "pi-a") for d in plan.devices)
    only_b = Plan.from_dict(json.loads(run_here(capsys, "plan", "alexnet", "--inventory", inventory, "--hosts", "pi-b", "--json")))
    assert [d.host for d in only_b.devices] == ["pi-b"]
    inventory.write_text("[pis]\npi-a\n")
    with pytest.raises(PisplitError, match="host pi-a: device kind unknown"):
        run_here(capsys, "plan", "alexnet", "--inventory", inventory)


def test_plan_from_inventory_uses_provisioned_facts(capsys, tmp_path, monkeypatch):
    from cluster.facts import write_facts

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[pis]\npi-a\npi-b device=rpi3\n")
    # provision measured pi-a: a Pi 4 with 2 GB, which no device= names
    write_facts(inventory, {"pi-a": {"model": "Raspberry Pi 4 Model B Rev 1.4", "memory_bytes": 2 << 30, "cores": 4}})
    plan = Plan.from_dict(json.loads(run_here(capsys, "plan", "alexnet", "--inventory", inventory, "--json")))
    by_host = {d.host: d for d in plan.devices}
    assert by_host["pi-a"].kind == "rpi4" and by_host["pi-a"].memory_bytes == 2 << 30
    assert by_host["pi-b"].kind == "rpi3" and by_host["pi-b"].memory_bytes == 1 << 30


def test_profile_measured_on_the_device_drives_the_plan(capsys, tmp_path):
    out = run_here(capsys, "profile", "--model", "lenet5", "--kind", "rpi3", "--repeat", "1", "--fractions", "0.5", "--output", tmp_path / "rpi3.json")
    assert "latency model" in out and "conv2d" in out and "median error" in out
    profile = Profile.load(tmp_path / "rpi3.json")
    assert profile.kind == "rpi3" and len(profile.models["lenet5"]) == 9 and profile.models["lenet5"][0].parts
    doc = json.loads(run_here(capsys, "plan", "lenet5", "--devices", "rpi3:1", "--profile", tmp_path / "rpi3.json", "--json"))
    assert doc["predicted_latency_s"] == pytest.approx(sum(n.seconds for n in profile.models["lenet5"]))  # used as measured
    with pytest.raises(PisplitError, match="fractions"):
        run_here(capsys, "profile", "--fractions", "2", "--output", tmp_path / "x.json")


@pytest.mark.mpi
def test_profile_under_mpirun_measures_the_link(capsys, tmp_path):
    from cluster.mpirun import local_mpirun_command, mpirun_env, mpirun_path, run_local

    try:
        mpirun_path()
        found = True
    except FileNotFoundError:
        found = False
    require(found, "mpirun is not installed")
    # two models: each is timed in a process of its own (not an MPI rank), merged into one profile
    cmd = local_mpirun_command(2, [sys.executable, "-m", "cluster.cli", "profile", "--model", "lenet5,mobilenet_v1", "--fractions", "none",
                                   "--repeat", "1", "--output", str(tmp_path / "p.json")])
    proc = run_local(cmd, capture_output=True, text=True, cwd=ROOT, env=mpirun_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    profile = Profile.load(tmp_path / "p.json")
    assert list(profile.models) == ["lenet5", "mobilenet_v1"]
    assert {"avg_pool2d", "conv2d/depthwise"} <= set(profile.latency.to_dict())  # one latency model fitted over both
    (link,) = profile.links
    assert link.ranks == (0, 1) and link.bandwidth_bps > 1e6 and link.latency_s >= 0 and len(link.sizes) == 4
    doc = json.loads(run_here(capsys, "plan", "lenet5", "--devices", "rpi3:2", "--profile", tmp_path / "p.json", "--json"))
    assert doc["link_bandwidth_bps"] == pytest.approx(link.bandwidth_bps)  # a measured link is the default


def test_plan_json_with_a_host_prints_the_plan_and_candidates_on_request(capsys, tmp_path):
    """Issue 15: `pisplit plan --json` with a host device prints a plan document like every other
    plan (the one --output writes); the edge-host candidates come with --candidates."""
    for devices in ("rpi3:1,host:1", "rpi3:2,host:1"):
        out = tmp_path / f"{devices.replace(':', '_').replace(',', '_')}.json"
        doc = json.loads(run_here(capsys, "plan", "lenet5_digits", "--devices", devices, "--link", "2mbit", "--json", "--output", str(out)))
        assert doc["format"] == "pisplit-plan" and "candidates" not in doc
        assert Plan.from_dict(doc) == Plan.load(out)
        both = json.loads(run_here(capsys, "plan", "lenet5_digits", "--devices", devices, "--link", "2mbit", "--json", "--candidates"))
        assert both["candidates"] and both["plan"] == doc
    with pytest.raises(PisplitError, match="--candidates: the edge-host candidates"):
        run_here(capsys, "plan", "lenet5_digits", "--devices", "rpi3:2", "--json", "--candidates")
