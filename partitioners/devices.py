"""Device kinds pisplit knows: the hardware facts of each Raspberry Pi model.

The planner's calibrated speed profiles for these kinds build on this table (see profiles).
"""
from __future__ import annotations

from dataclasses import dataclass

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
}


def device_kind(name: str) -> DeviceKind:
    """Look up a device kind by name; raises PisplitError listing the known kinds."""
    try:
        return DEVICE_KINDS[name.lower()]
    except KeyError:
        raise PisplitError(f"device kind {name!r}: unknown (known: {', '.join(DEVICE_KINDS)})") from None
