"""Device kinds pisplit knows: the hardware facts of each Raspberry Pi model, and 'host', a desktop or
server beside them (the edge-host setting of Ko et al.) that computes at the reference machine's rate.

The planner's calibrated speed profiles for these kinds build on this table: each kind has a shipped
profile in partitioners/devices/<kind>.json citing the public figures its speed and link come from.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from layers.errors import PisplitError


@dataclass(frozen=True)
class DeviceKind:
    """Hardware facts of one device kind."""

    name: str
    description: str
    cores: int
    memory_bytes: int
    ethernet_mbit: float  # typical measured Ethernet throughput


GIB = 1 << 30

DEVICE_KINDS: dict[str, DeviceKind] = {
    # Pi 3B+: Gigabit PHY behind USB 2.0, ~300 Mbit/s measured
    "rpi3": DeviceKind("rpi3", "Raspberry Pi 3 Model B+ (4x Cortex-A53 1.4 GHz, 1 GB)", 4, 1 * GIB, 300.0),
    "rpi4": DeviceKind("rpi4", "Raspberry Pi 4 Model B (4x Cortex-A72 1.5 GHz, 4 GB)", 4, 4 * GIB, 940.0),
    "rpi5": DeviceKind("rpi5", "Raspberry Pi 5 (4x Cortex-A76 2.4 GHz, 8 GB)", 4, 8 * GIB, 940.0),
    # a desktop or server beside the Pis (Ko et al.'s edge-host setting): it computes at the planner's
    # reference machine's rate (calibration scale 1, partitioners/devices/host.json)
    "host": DeviceKind("host", "Host (desktop or server): the reference machine of the calibration", 4, 16 * GIB, 1000.0),
}


def device_kind(name: str) -> DeviceKind:
    """Look up a device kind by name; raises PisplitError listing the known kinds."""
    try:
        return DEVICE_KINDS[name.lower()]
    except KeyError:
        raise PisplitError(f"device kind {name!r}: unknown (known: {', '.join(DEVICE_KINDS)})") from None


# --- shipped device profiles (partitioners/devices/<kind>.json) ------------------------------------

DEVICE_PROFILE_FORMAT = "pisplit-device"
DEVICE_PROFILE_DIR = Path(__file__).resolve().parent / "devices"


@dataclass(frozen=True)
class DeviceProfile:
    """A shipped device profile: the kind's hardware facts and how its speed is calibrated.

    `compute` either names a reference model and the seconds the device takes for it
    ({"reference_model": "alexnet", "reference_seconds": 0.22}) or a speed relative to another kind
    ({"relative_to": "rpi3", "speedup": 1.64}); either way the file cites the public figure.
    """

    kind: str
    description: str
    cores: int
    memory_bytes: int
    reserved_bytes: int  # OS and the rank's own process: not available to weights and activations
    compute: dict
    link: dict
    path: str = ""

    @property
    def usable_bytes(self) -> int:
        return self.memory_bytes - self.reserved_bytes

    @property
    def ethernet_bps(self) -> float:
        return float(self.link.get("ethernet_mbit", 100.0)) * 1e6

    @property
    def link_latency_s(self) -> float:
        return float(self.link.get("latency_s", 0.0))


def device_profile(kind: str) -> DeviceProfile:
    """The shipped profile of a device kind; raises PisplitError for unknown kinds or bad files."""
    name = device_kind(kind).name
    return _load_device_profile(name)


@lru_cache(maxsize=None)
def _load_device_profile(name: str) -> DeviceProfile:
    path = DEVICE_PROFILE_DIR / f"{name}.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PisplitError(f"device profile {path}: cannot be read ({exc})") from None
    if doc.get("format") != DEVICE_PROFILE_FORMAT or doc.get("kind") != name:
        raise PisplitError(f"device profile {path}: not a {DEVICE_PROFILE_FORMAT} document for {name!r}")
    try:
        return DeviceProfile(name, str(doc["description"]), int(doc["cores"]), int(doc["memory_bytes"]), int(doc["reserved_bytes"]),
                             dict(doc["compute"]), dict(doc["link"]), str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise PisplitError(f"device profile {path}: malformed ({exc!r})") from None


# --- parsing the CLI's device and link arguments ---------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
               "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
_LINK_UNITS = {"": 1.0, "bit": 1.0, "bps": 1.0, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6, "mbit/s": 1e6,
               "gbit": 1e9, "gbps": 1e9, "gbit/s": 1e9}


def parse_bytes(text: str) -> int:
    """'512M' -> 536870912 (B, K/KiB, M/MiB, G/GiB; binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise PisplitError(f"memory {text!r}: expected a positive size such as 512M or 1G")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def parse_link_bps(text: str) -> float:
    """'94mbit' -> 94e6 bits per second ('1gbit', '940Mbit', '100kbit', a plain number of bit/s)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z/]*)\s*", str(text).lower())
    if not m or m.group(2) not in _LINK_UNITS or float(m.group(1)) <= 0:
        raise PisplitError(f"link {text!r}: expected a positive bandwidth such as 94mbit, 940mbit or 1gbit")
    return float(m.group(1)) * _LINK_UNITS[m.group(2)]


def parse_devices(text: str) -> list[tuple[str, int, int | None]]:
    """'rpi3:4,rpi4:2' -> [('rpi3', 4, None), ('rpi4', 2, None)]; 'rpi3:2@512M' sets each one's memory.

    Raises PisplitError naming the bad entry (unknown kind, count below 1, bad memory).
    """
    out = []
    for entry in [e.strip() for e in str(text).split(",") if e.strip()]:
        m = re.fullmatch(r"([A-Za-z0-9_-]+)(?::(\d+))?(?:@(\S+))?", entry)
        if not m:
            raise PisplitError(f"devices {entry!r}: expected KIND[:COUNT][@MEMORY], e.g. rpi3:4 or rpi4:2@2G")
        kind = device_kind(m.group(1)).name
        count = int(m.group(2) or 1)
        if count < 1:
            raise PisplitError(f"devices {entry!r}: count must be at least 1")
        out.append((kind, count, parse_bytes(m.group(3)) if m.group(3) else None))
    if not out:
        raise PisplitError("devices: none given (e.g. --devices rpi3:4)")
    return out
