"""inventory.ini parsing: groups, vars precedence, children, errors with file and line; facts -> devices."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.facts import host_devices, kind_from_model, read_facts, write_facts
from cluster.inventory import parse_inventory, read_inventory
from layers.errors import PisplitError


ROOT = Path(__file__).resolve().parents[2]

EXAMPLE = """\
# a comment
[pis]
pi-0 ansible_host=192.168.1.10 ansible_user=pi device=rpi4 slots=2
pi-1 ansible_host=192.168.1.11 ansible_user=pi device=rpi3
"""


def test_the_issue_example_parses(no_network):
    inv = parse_inventory("""
[pis]
pi-0 ansible_host=192.168.1.10 ansible_user=pi device=rpi4 slots=1
pi-1 ansible_host=192.168.1.11 ansible_user=pi device=rpi3

[pis:vars]
ansible_ssh_private_key_file=~/.ssh/id_ed25519
workdir=/home/pi/pisplit
""")
    a, b = inv.hosts
    assert (a.name, a.address, a.user, a.device, a.slots, a.port) == ("pi-0", "192.168.1.10", "pi", "rpi4", 1, 22)
    assert (b.device, b.slots, b.workdir, b.key_file) == ("rpi3", 1, "/home/pi/pisplit", "~/.ssh/id_ed25519")
    assert a.groups == ("pis",) and inv.groups["pis"] == ["pi-0", "pi-1"] and inv.groups["all"] == ["pi-0", "pi-1"]
    assert a.target == "pi@192.168.1.10:22"


def test_repository_example_documents_every_key(no_network):
    from cluster.inventory import KNOWN_KEYS

    text = (ROOT / "inventory.ini").read_text()
    inv = read_inventory(ROOT / "inventory.ini")
    assert len(inv.hosts) >= 2
    for key in KNOWN_KEYS:
        assert f"#   {key}" in text, f"inventory.ini does not document {key}"
    assert inv.host("pi-3").port == 2222 and inv.host("pi-0").mpi_network == "192.168.1.0/24"


def test_precedence_all_then_parents_then_children_then_host():
    inv = parse_inventory("""
[all:vars]
workdir=/srv/all
slots=3
python=python3.11

[rack]
r-0 ansible_host=10.0.0.1

[rack:children]
fast

[fast]
f-0 ansible_host=10.0.0.2 slots=4
f-1 ansible_host=10.0.0.3

[fast:vars]
workdir=/srv/fast
device=rpi5

[rack:vars]
workdir=/srv/rack
device=rpi3
ansible_port=2200
""")
    r0, f0, f1 = inv.hosts
    assert (r0.workdir, r0.device, r0.slots, r0.port, r0.python) == ("/srv/rack", "rpi3", 3, 2200, "python3.11")
    assert (f1.workdir, f1.device, f1.slots, f1.port) == ("/srv/fast", "rpi5", 3, 2200)  # child group beats parent
    assert f0.slots == 4  # host line beats groups
    assert inv.groups["rack"] == ["r-0", "f-0", "f-1"]
    assert [h.name for h in inv.select("fast")] == ["f-0", "f-1"]
    assert [h.name for h in inv.select("f-1,r-0")] == ["r-0", "f-1"]


def test_defaults_aliases_quotes_and_user_variables():
    inv = parse_inventory("""
[pis]
a ansible_ssh_host=10.1.1.1 ansible_ssh_port=2022 ansible_ssh_user=ubuntu ansible_python_interpreter=/usr/bin/python3 ansible_become=true rack_row=4
b  workdir="~/my_work"  # a comment after a host
c
""")
    a, b, c = inv.hosts
    assert (a.address, a.port, a.user, a.python) == ("10.1.1.1", 2022, "ubuntu", "/usr/bin/python3")
    assert b.workdir == "~/my_work" and b.address == "b"
    assert (c.user, c.key_file, c.device, c.slots, c.workdir, c.python, c.port) == (None, None, None, 1, "~/pisplit", "python3", 22)


def test_a_host_in_two_groups_is_one_host():
    inv = parse_inventory("[a]\nh ansible_host=10.0.0.9 slots=2\n[b]\nh\n[b:vars]\ndevice=rpi4\n")
    (h,) = inv.hosts
    assert h.groups == ("a", "b") and h.device == "rpi4" and h.slots == 2


@pytest.mark.parametrize("text,message", [
    ("[pis\npi-0\n", r"inventory.ini:1: malformed section header '\[pis'"),
    ("[pis:hosts]\npi-0\n", r":1: malformed section header"),
    ("[pis]\npi-0 ansible_host=10.0.0.1\npi-0 ansible_host=10.0.0.1\n", r":3: duplicate host 'pi-0' in group \[pis\] \(first on line 2\)"),
    ("[a]\npi-0 ansible_host=10.0.0.1\n[b]\npi-0 ansible_host=10.0.0.2\n", r":4: duplicate host 'pi-0' with other variables than on line 2"),
    ("[pis]\npi-0 ansible_host=10.0.0.1\npi-1 ansible_host=10.0.0.1\n", r":3: duplicate host: pi-1 has the address 10.0.0.1:22 of pi-0 \(line 2\)"),
    ("[pis]\npi-0 device=rpi9\n", r":2: host pi-0: device kind 'rpi9': unknown \(known: rpi3, rpi4, rpi5, host\)"),
    ("[pis]\npi-0\n\n[pis:vars]\ndevice=jetson\n", r":5: host pi-0: device kind 'jetson': unknown"),
    ("[pis]\npi-0 slots=two\n", r":2: host pi-0: slots 'two' is not an integer in \[1, 1024\]"),
    ("[pis]\npi-0 slots=0\n", r":2: host pi-0: slots '0' is not an integer"),
    ("[pis]\npi-0\n[all:vars]\nansible_port=70000\n", r":4: host pi-0: ansible_port '70000' is not an integer in \[1, 65535\]"),
    ("[pis]\npi-0 workdir=pisplit\n", r":2: host pi-0: workdir 'pisplit' must be an absolute path or start with ~/"),
    ("[pis]\npi-0 slot=2\n", r":2: unknown key 'slot': did you mean 'slots'\?"),
    ("[pis]\npi-0 sots=2\n", r":2: unknown key 'sots': did you mean 'slots'\?"),
    ("[pis]\npi-0 ansible_host\n", r":2: host pi-0: 'ansible_host' is not key=value"),
    ("[pis]\npi-0 ansible_host=\"10.0.0.1\n", r":2: malformed line \(No closing quotation\)"),
    ("[pis]\npi-[3:0]\n", r":2: host 'pi-\[3:0\]': range \[3:0\]: end is before start"),
    ("[pis]\npi-0\n[pis:vars]\njust words\n", r":4: malformed variable line 'just words'"),
    ("[pis]\npi-0\n[pis:vars]\nworkdir=/a b\n", r":4: variable workdir: value '/a b' has spaces; quote it"),
    ("[pis:children]\nnothere\n", r":2: \[pis:children\]: no group 'nothere'"),
    ("[all]\npi-0\n", r":1: \[all\] cannot list hosts"),
    ("[pis]\npi-0 mpi_network=lan\n", r":2: host pi-0: mpi_network 'lan' is not a CIDR"),
    ("# nothing\n", r"inventory inventory.ini: no hosts"),
    ("[a:children]\nb\n[b:children]\na\n[b]\nh\n", r"group '(a|b)' is its own descendant"),
])
def test_mistakes_name_file_and_line(text, message, no_network):
    with pytest.raises(PisplitError, match=message):
        parse_inventory(text)


def test_read_inventory_errors(tmp_path):
    with pytest.raises(PisplitError, match="no such file"):
        read_inventory(tmp_path / "missing.ini")
    bad = tmp_path / "cluster.ini"
    bad.write_text("[pis]\npi-0 slots=-1\n")
    with pytest.raises(PisplitError, match=rf"^{bad}:2: host pi-0: slots"):
        read_inventory(bad)


def test_selecting_unknown_hosts_lists_the_known_ones():
    inv = parse_inventory(EXAMPLE)
    with pytest.raises(PisplitError, match=r"no host 'pi-9' \(hosts: pi-0, pi-1\)"):
        inv.select("pi-0,pi-9")


def test_facts_round_trip_and_devices_for_the_planner(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "inventory.ini"
    path.write_text("[pis]\nreal ansible_host=10.0.0.1\nnamed ansible_host=10.0.0.2 device=rpi3 slots=2\nemulated ansible_host=10.0.0.3 device=rpi4\n")
    inv = read_inventory(path)
    assert read_facts(path) == {}
    with pytest.raises(PisplitError, match=r"host real: device kind unknown \(no facts"):
        host_devices(inv)
    write_facts(path, {"real": {"model": "Raspberry Pi 4 Model B Rev 1.4", "cores": 4, "memory_bytes": 1_933_000_000},
                       "named": {"model": "Raspberry Pi 3 Model B Plus Rev 1.3", "cores": 4, "memory_bytes": 950_000_000},
                       "emulated": {"model": None, "arch": "x86_64", "cores": 2, "memory_bytes": 25 << 30}})
    write_facts(path, {"named": {**read_facts(path)["named"], "memory_bytes": 960_000_000}})  # merges, not replaces
    assert set(read_facts(path)) == {"real", "named", "emulated"}
    real, named, emulated = host_devices(inv)
    assert (real.kind, real.memory_bytes, real.cores, real.source) == ("rpi4", 1_933_000_000, 4, "facts")  # a 2 GB Pi 4
    assert (named.kind, named.memory_bytes, named.slots) == ("rpi3", 960_000_000, 2)
    assert (emulated.kind, emulated.memory_bytes, emulated.source) == ("rpi4", 4 << 30, "device table")  # not a Pi: nominal
    doc = json.loads((tmp_path / "cache").rglob("facts.json").__next__().read_text())
    assert doc["format"] == "pisplit-facts" and doc["version"] == 1


@pytest.mark.parametrize("model,kind", [("Raspberry Pi 4 Model B Rev 1.4", "rpi4"), ("Raspberry Pi 3 Model B Rev 1.2", "rpi3"),
                                        ("Raspberry Pi 5 Model B Rev 1.0", "rpi5"), ("Raspberry Pi Zero 2 W Rev 1.0", None),
                                        (None, None), ("Jetson Nano", None)])
def test_kind_from_model(model, kind):
    assert kind_from_model(model) == kind


def test_cli_reports_inventory_errors_in_one_line(tmp_path):
    bad = tmp_path / "inv.ini"
    bad.write_text("[pis]\npi-0 device=rpi7\n")
    for command in (["provision", "--dry-run"], ["launch", str(tmp_path / "plan.json"), "--dry-run"]):
        if command[0] == "launch":
            (tmp_path / "plan.json").write_text('{"n_ranks": 1}')
        proc = subprocess.run([sys.executable, "-m", "cluster.cli", *command, "--inventory", str(bad)],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"pisplit: error: {bad}:2: host pi-0: device kind 'rpi7': unknown (known: rpi3, rpi4, rpi5, host)"
