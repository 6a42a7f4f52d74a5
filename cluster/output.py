"""Shared CLI output helpers: a rich console, JSON printing and human units."""
from __future__ import annotations

import json
import sys

from rich.console import Console

import os

# Rich falls back to 80 columns when stdout is not a terminal; tables of layers need more.
_width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(width=_width)
err_console = Console(stderr=True)


def print_json(doc) -> None:
    """Print a JSON document on stdout (plain, machine-readable)."""
    sys.stdout.write(json.dumps(doc, indent=2, default=_default) + "\n")
    sys.stdout.flush()


def _default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def human_count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
