"""Shared CLI output helpers: a rich console, JSON printing and human units."""
from __future__ import annotations

import json
import sys

from rich.console import Console

import os



def _width() -> int | None:
    """COLUMNS when set (rich ignores it on a dumb terminal, as mpirun's ranks have), else the
    terminal's width, else 160: rich's fallback of 80 columns is too narrow for layer tables."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return int(columns)
    return None if sys.stdout.isatty() else 160


_columns = _width()
# rich reports 80x25 for a dumb terminal unless both width and height are given
console = Console(width=_columns, height=None if _columns is None else int(os.environ.get("LINES", "25") or 25))
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
