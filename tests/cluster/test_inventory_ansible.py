"""Inventories as Ansible users write them (forms from Ansible's inventory guide): host ranges, host:port,
group_vars/ and host_vars/ beside the inventory (YAML and JSON files, files without extension,
directories of files), Ansible's variable precedence, ansible_group_priority, and the JSON that
`ansible-inventory --list` prints. A vars file pisplit cannot use is an error naming it, never skipped."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster.inventory import expand_host_pattern, parse_inventory, read_inventory, split_port
from layers.errors import PisplitError


ROOT = Path(__file__).resolve().parents[2]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "inventory.ini"


@pytest.mark.parametrize("pattern,names", [
    ("www[01:50].example.com", [f"www{i:02d}.example.com" for i in range(1, 51)]),
    ("www[01:50:2].example.com", [f"www{i:02d}.example.com" for i in range(1, 51, 2)]),
    ("db-[a:f].example.com", [f"db-{c}.example.com" for c in "abcdef"]),
    ("pi-[0:3]", ["pi-0", "pi-1", "pi-2", "pi-3"]),
    ("pi-[:2]", ["pi-0", "pi-1", "pi-2"]),
    ("rack[1:2]-pi[a:b]", ["rack1-pia", "rack1-pib", "rack2-pia", "rack2-pib"]),
    ("plain", ["plain"]),
])
def test_host_ranges(pattern, names):
    assert expand_host_pattern(pattern) == names


@pytest.mark.parametrize("pattern,message", [("pi-[3:0]", "end is before start"), ("pi-[0]", "not \\[start:end\\]"),
                                             ("pi-[a:3]", "numbers or both single letters"), ("pi-[0:4:0]", "stride")])
def test_malformed_ranges(pattern, message):
    with pytest.raises(ValueError, match=message):
        expand_host_pattern(pattern)


def test_host_port_and_ranges_in_an_ini_inventory(no_network):
    assert split_port("badwolf.example.com:5309") == ("badwolf.example.com", 5309)
    assert split_port("pi-[0:3]:2222") == ("pi-[0:3]", 2222) and split_port("pi-[0:3]") == ("pi-[0:3]", None)
    inv = parse_inventory("""
badwolf.example.com:5309
[pis]
pi-[0:2] device=rpi4
node[01:02]:2200 ansible_user=pi
jumper:2222 ansible_port=5555 ansible_host=192.0.2.50
""")
    names = [h.name for h in inv.hosts]
    assert names == ["badwolf.example.com", "pi-0", "pi-1", "pi-2", "node01", "node02", "jumper"]
    assert inv.host("badwolf.example.com").port == 5309 and inv.host("badwolf.example.com").groups == ()
    assert inv.host("node02").target == "pi@node02:2200" and inv.host("pi-1").device == "rpi4"
    assert inv.host("jumper").port == 5555  # as Ansible: the variable on the line beats NAME:PORT
    assert inv.groups["pis"][:3] == ["pi-0", "pi-1", "pi-2"] and inv.groups["ungrouped"] == ["badwolf.example.com"]


@pytest.mark.parametrize("text,message", [
    ("[pis]\npi-0 ansible_host=-oProxyCommand=touch_pwned\n", r":2: host pi-0: ansible_host '-oProxyCommand=touch_pwned' starts with '-'"),
    ("[pis]\npi-0 ansible_user=-oProxyCommand=x\n", r":2: host pi-0: ansible_user '-oProxyCommand=x' starts with '-'"),
    ("[pis]\n-oProxyCommand=x\n", r":2: host '-oProxyCommand=x': a name starting with '-'"),
    ("[pis]\npi-0\n[pis:vars]\nansible_host=-x\n", r":4: host pi-0: ansible_host '-x' starts with '-'"),
])
def test_options_disguised_as_hosts_are_refused(text, message):
    with pytest.raises(PisplitError, match=message):
        parse_inventory(text)


ANSIBLE_LAYOUT = {
    "inventory.ini": """\
        [pis]
        pi-0 ansible_host=10.0.0.10
        pi-1 ansible_host=10.0.0.11 slots=3
        pi-2 ansible_host=10.0.0.12

        [fast]
        pi-2

        [pis:children]
        fast

        [pis:vars]
        workdir=/srv/inline-pis
        ansible_user=inline
        mpi_network=10.0.0.0/24
        """,
    # group_vars/all: every host; beats the inventory file's [group:vars] (Ansible's precedence)
    "group_vars/all.yml": """\
        ansible_user: pi
        ansible_port: 2222
        ansible_ssh_private_key_file: ~/.ssh/pis_ed25519
        device: rpi3
        """,
    # a file without extension is YAML too
    "group_vars/pis": """\
        ---
        workdir: /home/pi/pisplit
        rack_notes: [a, b]   # the user's own structured variable
        """,
    # a directory of files, read in name order (later wins)
    "group_vars/fast/10-kind.yml": "device: rpi5\nslots: 2\n",
    "group_vars/fast/20-more.yaml": "slots: 4\n",
    "host_vars/pi-0.yml": "ansible_port: 22\ndevice: rpi4\n",
    "host_vars/pi-1.json": '{"ansible_user": "admin"}',
    "group_vars/.hidden": "not: read\n",
    "group_vars/all.yml~": "editor backup: skipped\n",
}


def test_group_vars_and_host_vars_with_ansibles_precedence(tmp_path, no_network):
    inv = read_inventory(write(tmp_path, ANSIBLE_LAYOUT))
    pi0, pi1, pi2 = inv.hosts
    assert (pi0.user, pi0.port, pi0.device, pi0.workdir, pi0.key_file) == ("pi", 22, "rpi4", "/home/pi/pisplit", "~/.ssh/pis_ed25519")
    assert (pi1.user, pi1.port, pi1.device, pi1.slots) == ("admin", 2222, "rpi3", 3)  # host_vars JSON; the host line's slots
    assert (pi2.device, pi2.slots, pi2.groups) == ("rpi5", 4, ("pis", "fast"))  # child group over parent, later file wins
    assert pi2.mpi_network == "10.0.0.0/24" and pi2.target == "pi@10.0.0.12:2222"


def test_parse_inventory_reads_vars_directories_only_when_asked(tmp_path):
    path = write(tmp_path, ANSIBLE_LAYOUT)
    assert parse_inventory(path.read_text(), path).host("pi-0").user == "inline"
    assert parse_inventory(path.read_text(), path, vars_dir=tmp_path).host("pi-0").user == "pi"


def test_ansible_group_priority_orders_groups_of_equal_depth():
    text = "[a]\nh\n[b]\nh\n[a:vars]\ndevice=rpi5\n[b:vars]\ndevice=rpi3\n"
    assert parse_inventory(text).host("h").device == "rpi3"  # b after a by name
    assert parse_inventory(text + "[a:vars]\nansible_group_priority=10\n").host("h").device == "rpi5"


@pytest.mark.parametrize("files,message", [
    ({"group_vars/pi.yml": "device: rpi4\n"}, r"group_vars/pi.yml: names no group of .*inventory.ini \(groups: all, pis, ungrouped\).*'pi'"),
    ({"host_vars/pi-9": "device: rpi4\n"}, r"host_vars/pi-9: names no host of .*\(hosts: pi-0\)"),
    ({"group_vars/pis.ini": "device=rpi4\n"}, r"group_vars/pis.ini: names no group"),
    ({"group_vars/pis.yml": "device=rpi4\n"}, r"group_vars/pis.yml: expected a mapping of variables .* \(YAML is key: value, not key=value\)"),
    ({"group_vars/pis.yml": "device: [rpi4\n"}, r"group_vars/pis.yml: not valid YAML \(.* at line 2\)"),
    ({"group_vars/pis.json": "{device: 1}"}, r"group_vars/pis.json: not valid JSON"),
    ({"group_vars/pis/a.yml": "slots: 2\n", "group_vars/pis/notes.txt": "x"}, r"group_vars/pis/notes.txt: not a vars file pisplit reads"),
    ({"group_vars/all.yml": "$ANSIBLE_VAULT;1.1;AES256\n6162\n"}, r"group_vars/all.yml: encrypted with ansible-vault"),
    ({"group_vars/all.yml": "slots:\n  - 1\n  - 2\n"}, r"group_vars/all.yml: slots must be a single value, not a list"),
    ({"group_vars/all.yml": "slot: 2\n"}, r"group_vars/all.yml: unknown key 'slot': did you mean 'slots'\?"),
    ({"host_vars/pi-0.yml": "ansible_port: 70000\n"}, r"host_vars/pi-0.yml: host pi-0: ansible_port '70000' is not an integer"),
    ({"host_vars/pi-0.yml": "ansible_host: -oProxyCommand=x\n"}, r"host_vars/pi-0.yml: host pi-0: ansible_host '-oProxyCommand=x' starts with '-'"),
    ({"group_vars": "a file, not a directory\n"}, r"group_vars: not a directory"),
])
def test_a_vars_file_pisplit_cannot_use_is_an_error_naming_it(tmp_path, files, message):
    path = write(tmp_path, {"inventory.ini": "[pis]\npi-0 ansible_host=10.0.0.10\n", **files})
    with pytest.raises(PisplitError, match=message):
        read_inventory(path)


ANSIBLE_INVENTORY_LIST = {
    "_meta": {"hostvars": {
        "pi-0": {"ansible_host": "10.0.0.10", "ansible_user": "pi", "ansible_port": 2222, "device": "rpi4", "slots": 2,
                 "rack_notes": ["a"]},
        "pi-1": {"ansible_host": "10.0.0.11", "ansible_user": "pi", "device": "rpi3"},
        "lonely": {"ansible_host": "10.0.0.12"}}},
    "all": {"children": ["ungrouped", "pis"]},
    "pis": {"hosts": ["pi-0", "pi-1"], "children": ["fast"]},
    "fast": {"hosts": ["pi-0"]},
    "ungrouped": {"hosts": ["lonely"]},
}


def test_ansible_inventory_list_json(tmp_path, no_network):
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(ANSIBLE_INVENTORY_LIST, indent=2))
    inv = read_inventory(path)
    pi0, pi1, lonely = (inv.host(n) for n in ("pi-0", "pi-1", "lonely"))
    assert (pi0.target, pi0.device, pi0.slots, pi0.groups) == ("pi@10.0.0.10:2222", "rpi4", 2, ("pis", "fast"))
    assert (pi1.device, lonely.device, lonely.groups) == ("rpi3", None, ())
    assert [h.name for h in inv.select("pis")] == ["pi-0", "pi-1"] and inv.groups["all"] == ["pi-0", "pi-1", "lonely"]
    bad = {**ANSIBLE_INVENTORY_LIST, "_meta": {"hostvars": {"pi-0": {"ansible_host": "-oProxyCommand=x"}}}}
    path.write_text(json.dumps(bad))
    with pytest.raises(PisplitError, match=r"inventory.json: _meta.hostvars.pi-0: host pi-0: ansible_host '-oProxyCommand=x' starts with '-'"):
        read_inventory(path)
    path.write_text("{not json")
    with pytest.raises(PisplitError, match=r"inventory.json: not valid JSON"):
        read_inventory(path)


def test_provision_dry_run_connects_as_group_vars_say(tmp_path, no_network):
    path = write(tmp_path, ANSIBLE_LAYOUT)
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "provision", "--dry-run", "--json", "--inventory", str(path),
                           "--known-hosts", str(tmp_path / "kh")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    connect = {h["name"]: h["steps"][0]["detail"] for h in json.loads(proc.stdout)["hosts"]}
    assert "ssh pi@10.0.0.10:22 with ~/.ssh/pis_ed25519" in connect["pi-0"] and "ssh admin@10.0.0.11:2222" in connect["pi-1"]
