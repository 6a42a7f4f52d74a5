"""Ansible's YAML inventory (hosts.yml / inventory.yaml), read with the INI reader's meaning: the forms
Ansible's inventory guide and its yaml inventory plugin document, group_vars/ and host_vars/ beside the
file, and one-line errors naming the file and line."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster.inventory import is_yaml_inventory, parse_inventory, read_inventory
from layers.errors import PisplitError

from .test_inventory_ansible import ANSIBLE_LAYOUT, write

ROOT = Path(__file__).resolve().parents[2]


def hosts_of(inv):
    return {h.name: (h.address, h.port, h.user, h.device, h.slots, h.workdir, h.key_file, h.mpi_network, h.groups)
            for h in inv.hosts}


# The inventory guide's first example: the same inventory in INI and in YAML.
GUIDE_INI = """\
mail.example.com

[webservers]
foo.example.com
bar.example.com

[dbservers]
one.example.com
two.example.com
three.example.com

[east]
foo.example.com
one.example.com
two.example.com

[west]
bar.example.com
three.example.com

[prod:children]
east

[test:children]
west
"""

GUIDE_YAML = """\
all:
  hosts:
    mail.example.com:
  children:
    webservers:
      hosts:
        foo.example.com:
        bar.example.com:
    dbservers:
      hosts:
        one.example.com:
        two.example.com:
        three.example.com:
    east:
      hosts:
        foo.example.com:
        one.example.com:
        two.example.com:
    west:
      hosts:
        bar.example.com:
        three.example.com:
    prod:
      children:
        east:
    test:
      children:
        west:
"""


def test_the_guides_example_reads_as_its_ini_twin(no_network):
    ini, yml = parse_inventory(GUIDE_INI, "hosts"), parse_inventory(GUIDE_YAML, "hosts.yml")
    assert hosts_of(yml) == hosts_of(ini)
    assert {g: sorted(n) for g, n in yml.groups.items()} == {g: sorted(n) for g, n in ini.groups.items()}
    assert yml.groups["ungrouped"] == ["mail.example.com"]
    assert sorted(yml.groups["prod"]) == ["foo.example.com", "one.example.com", "two.example.com"]
    assert [h.name for h in yml.select("test")] == ["bar.example.com", "three.example.com"]


def test_the_yaml_plugins_documented_example():
    # ansible.builtin.yaml's EXAMPLES: host vars under a host, 'hosts: test5' without a colon, groups
    # defined at the top level and again under children, vars at every level
    text = """\
all: # keys must be unique, i.e. only one 'hosts' per group
    hosts:
        test1:
        test2:
            host_var: value
    vars:
        group_all_var: value
    children:   # key order does not matter, indentation does
        other_group:
            children:
                group_x:
                    hosts:
                        test5   # one machine works without a colon
                group_y:
                    hosts:
                        test6:  # so always use a colon
            vars:
                g2_var2: value3
            hosts:
                test4:
                    ansible_host: 127.0.0.1
        last_group:
            hosts:
                test1 # same host as above, additional group membership
            vars:
                group_last_var: value
"""
    inv = parse_inventory(text, "inventory.yaml")
    assert [h.name for h in inv.hosts] == ["test1", "test2", "test5", "test6", "test4"]
    assert inv.host("test4").address == "127.0.0.1" and inv.host("test4").groups == ("other_group",)
    assert inv.host("test5").groups == ("other_group", "group_x")
    assert inv.host("test1").groups == ("last_group",)
    assert sorted(inv.groups["other_group"]) == ["test4", "test5", "test6"]
    assert inv.groups["ungrouped"] == ["test2"]


def test_ranges_ports_and_variables_as_in_ini(no_network):
    ini = """\
jumper:2222 ansible_port=5555 ansible_host=192.0.2.50

[pis]
pi-[0:2] device=rpi4
node[01:02]:2200 ansible_user=pi

[pis:vars]
workdir=/opt/pisplit
ansible_ssh_private_key_file=~/.ssh/pis

[all:vars]
mpi_network=10.0.0.0/24
"""
    yml = """\
---
all:
  vars:
    mpi_network: 10.0.0.0/24
  hosts:
    jumper:2222:
      ansible_port: 5555     # as Ansible: the variable beats NAME:PORT
      ansible_host: 192.0.2.50
  children:
    pis:
      hosts:
        pi-[0:2]:
          device: rpi4
        node[01:02]:2200:
          ansible_user: pi
      vars:
        workdir: /opt/pisplit
        ansible_ssh_private_key_file: ~/.ssh/pis
"""
    a, b = parse_inventory(ini), parse_inventory(yml, "hosts.yml")
    assert hosts_of(a) == hosts_of(b)
    assert [h.target for h in b.hosts] == ["192.0.2.50:5555", "pi-0:22", "pi-1:22", "pi-2:22", "pi@node01:2200", "pi@node02:2200"]
    assert b.host("pi-1").key_file == "~/.ssh/pis" and b.host("node02").mpi_network == "10.0.0.0/24"


def test_yaml_values_read_as_ini_text():
    inv = parse_inventory("all:\n  hosts:\n    pi-0:\n      ansible_port: 2222\n      slots: 2\n      ansible_user: 'pi'\n"
                          "      ansible_become: true\n      extra: [1, 2]\n", "hosts.yml")
    assert (inv.host("pi-0").port, inv.host("pi-0").slots, inv.host("pi-0").user) == (2222, 2, "pi")


def test_a_host_listed_twice_gets_its_variables_merged():
    inv = parse_inventory("all:\n  children:\n    a:\n      hosts:\n        pi-0: {ansible_user: pi, slots: 2}\n"
                          "    b:\n      hosts:\n        pi-0: {slots: 3}\n", "hosts.yml")
    assert (inv.host("pi-0").user, inv.host("pi-0").slots, inv.host("pi-0").groups) == ("pi", 3, ("a", "b"))


def test_group_vars_and_host_vars_beside_a_yaml_inventory(tmp_path, no_network):
    # ANSIBLE_LAYOUT's inventory.ini written as hosts.yml; its group_vars/ and host_vars/ unchanged
    files = {k: v for k, v in ANSIBLE_LAYOUT.items() if k != "inventory.ini"}
    files["hosts.yml"] = """\
        all:
          children:
            pis:
              hosts:
                pi-0: {ansible_host: 10.0.0.10}
                pi-1: {ansible_host: 10.0.0.11, slots: 3}
                pi-2: {ansible_host: 10.0.0.12}
              children:
                fast:
                  hosts:
                    pi-2:
              vars:
                workdir: /srv/inline-pis
                ansible_user: inline
                mpi_network: 10.0.0.0/24
        """
    write(tmp_path, files)
    ini_dir = tmp_path / "ini"
    ini = read_inventory(write(ini_dir, ANSIBLE_LAYOUT))
    yml = read_inventory(tmp_path / "hosts.yml")
    assert hosts_of(yml) == hosts_of(ini)
    pi0, pi1, pi2 = yml.hosts
    assert (pi0.user, pi0.port, pi0.device, pi0.workdir) == ("pi", 22, "rpi4", "/home/pi/pisplit")  # host_vars, group_vars/all
    assert (pi1.user, pi1.slots) == ("admin", 3) and (pi2.device, pi2.slots, pi2.groups) == ("rpi5", 4, ("pis", "fast"))
    (tmp_path / "host_vars" / "pi-9.yml").write_text("slots: 2\n")
    with pytest.raises(PisplitError, match=r"host_vars/pi-9.yml: names no host of .*hosts.yml"):
        read_inventory(tmp_path / "hosts.yml")


@pytest.mark.parametrize("text,message", [
    ("all:\n  hosts:\n    a:\n   b:\n", r"hosts.yml:4: not valid YAML \(expected <block end>"),
    ("all:\n  hosts: {a: 1: 2}\n", r"hosts.yml:2: not valid YAML"),
    ("all:\n  host:\n    a:\n", r"hosts.yml:2: group all: unknown key 'host'"),
    ("all:\n  hosts:\n    a:\n      slot: 2\n", r"hosts.yml:4: host a: unknown key 'slot': did you mean 'slots'\?"),
    ("all:\n  hosts:\n    a:\n    a:\n", r"hosts.yml:4: group all hosts: 'a' given twice \(first on line 3\)"),
    ("all:\n  hosts:\n    - a\n", r"hosts.yml:2: group all: hosts must be a mapping"),
    ("all:\n  hosts:\n    a:\n      ansible_port: [1]\n", r"hosts.yml:4: host a: ansible_port must be a single value"),
    ("all:\n  hosts:\n    a: {ansible_port: x}\n", r"hosts.yml:3: host a: ansible_port 'x' is not an integer"),
    ("all:\n  hosts:\n    pi-[3:0]:\n", r"hosts.yml:3: host 'pi-\[3:0\]': range \[3:0\]: end is before start"),
    ("all:\n  hosts:\n    '-oProxyCommand=x':\n", r"hosts.yml:3: host '-oProxyCommand=x': a name starting with '-'"),
    ("all:\n  hosts:\n    a: some text\n", r"hosts.yml:3: host a: expected its variables"),
    ("- all\n", r"hosts.yml:1: a YAML inventory is a mapping of groups"),
    ("all:\n  children:\n    pis:\n", r"inventory .*hosts.yml: no hosts"),
    ("", r"inventory .*hosts.yml: no hosts"),
    ("all:\n  children:\n    a:\n      children:\n        b:\n          children:\n            a:\n",
     r"hosts.yml: group '[ab]' is its own descendant"),
])
def test_bad_yaml_inventories_are_one_line_errors_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "hosts.yml"
    path.write_text(text)
    with pytest.raises(PisplitError, match=message) as info:
        read_inventory(path)
    assert "\n" not in str(info.value)


def test_yaml_is_recognised_by_name_or_by_its_first_key():
    assert is_yaml_inventory("[pis]\npi-0\n", Path("x.yml")) and is_yaml_inventory("# c\nall:\n  hosts:\n", Path("hosts"))
    assert is_yaml_inventory("---\nall:\n", Path("inventory"))
    assert not is_yaml_inventory("pi-0:2222\n[pis]\n", Path("inventory.ini"))
    assert not is_yaml_inventory("[all:vars]\nx=1\n", Path("inventory"))


def test_provision_reads_a_yaml_inventory_and_a_bad_one_fails_in_one_line(tmp_path, no_network):
    path = tmp_path / "hosts.yml"
    path.write_text(textwrap.dedent("""\
        all:
          children:
            pis:
              hosts:
                pi-[0:1]: {device: rpi4}
        """))
    good = subprocess.run([sys.executable, "-m", "cluster.cli", "provision", "--dry-run", "--json", "--inventory", str(path),
                           "--known-hosts", str(tmp_path / "kh")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert good.returncode == 0, good.stderr
    assert [h["name"] for h in json.loads(good.stdout)["hosts"]] == ["pi-0", "pi-1"]
    path.write_text("all:\n  hosts:\n    a:\n   b:\n")
    bad = subprocess.run([sys.executable, "-m", "cluster.cli", "provision", "--dry-run", "--inventory", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert f"{path}:4: not valid YAML" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_json_in_the_yaml_form_is_read_as_yaml(tmp_path):
    # Ansible's yaml plugin reads .json files too: the YAML structure written as JSON (hosts and children
    # as objects), unlike ansible-inventory --list's lists
    doc = {"all": {"vars": {"ansible_user": "pi"},
                   "children": {"pis": {"hosts": {"pi-[0:1]": {"device": "rpi4"}},
                                        "children": {"fast": {"hosts": {"pi-1": {"slots": 2}}}}}}}}
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(doc, indent=1))
    inv = read_inventory(path)
    assert [(h.name, h.user, h.device, h.slots, h.groups) for h in inv.hosts] == [
        ("pi-0", "pi", "rpi4", 1, ("pis",)), ("pi-1", "pi", "rpi4", 2, ("pis", "fast"))]
