"""Part sizes: exact sizes, equal parts or speed weights turned into whole sizes; frame dealing."""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Sequence

from layers.errors import PisplitError


def resolve_sizes(total: int, sizes, layer: str, what: str) -> tuple[int, ...]:
    """Whole part sizes summing to `total` (the length of the axis being cut).

    `sizes` is a part count (equal parts, the first ones one larger), integer sizes that sum to
    `total`, or float weights (e.g. device speeds) turned into proportional sizes of at least 1 each.
    Example, 64 output channels: 2 -> (32, 32); (40, 24) -> (40, 24); (2.0, 1.0) -> (43, 21).
    Raises PisplitError naming `layer` for more parts than `total`, sizes that do not sum to `total`,
    or non-positive sizes or weights.
    """
    total = int(total)
    if isinstance(sizes, Integral) and not isinstance(sizes, bool):
        n = int(sizes)
        _check_count(total, n, layer, what)
        return tuple(total // n + (1 if i < total % n else 0) for i in range(n))
    values = list(sizes)
    _check_count(total, len(values), layer, what)
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        raise PisplitError(f"layer {layer}: part sizes {values} must be numbers")
    if any(not math.isfinite(float(v)) or v <= 0 for v in values):
        raise PisplitError(f"layer {layer}: part sizes {values} must all be positive")
    if all(isinstance(v, Integral) for v in values):
        if sum(values) != total:
            raise PisplitError(f"layer {layer}: part sizes {values} sum to {sum(values)}, not to the {total} {what}"
                               " (give float weights for proportional sizes)")
        return tuple(int(v) for v in values)
    return proportional_sizes(total, [float(v) for v in values])


def _check_count(total: int, n: int, layer: str, what: str) -> None:
    if n < 1:
        raise PisplitError(f"layer {layer}: a split needs at least one part, got {n}")
    if n > total:
        raise PisplitError(f"layer {layer}: cannot split {total} {what} into {n} parts")


def proportional_sizes(total: int, weights: Sequence[float]) -> tuple[int, ...]:
    """Sizes proportional to `weights`, each at least 1, summing to `total` (len(weights) <= total).

    Example: proportional_sizes(10, [3, 2]) -> (6, 4); proportional_sizes(3, [100, 1, 1]) -> (1, 1, 1).
    """
    s = sum(weights)
    ideal = [total * w / s for w in weights]
    alloc = [max(1, int(math.floor(v))) for v in ideal]
    # Largest-remainder adjustment; ties go to the earlier part so the result is deterministic.
    while sum(alloc) > total:
        i = max((i for i in range(len(alloc)) if alloc[i] > 1), key=lambda i: (alloc[i] - ideal[i], -i))
        alloc[i] -= 1
    while sum(alloc) < total:
        i = max(range(len(alloc)), key=lambda i: (ideal[i] - alloc[i], -i))
        alloc[i] += 1
    return tuple(alloc)


def frame_shares(sizes, layer: str) -> tuple[float, ...]:
    """Data-parallel shares: a replica count (equal shares) or positive weights, normalised to sum 1."""
    if isinstance(sizes, Integral) and not isinstance(sizes, bool):
        if int(sizes) < 1:
            raise PisplitError(f"layer {layer}: a split needs at least one part, got {sizes}")
        return tuple([1.0 / int(sizes)] * int(sizes))
    values = list(sizes)
    if not values:
        raise PisplitError(f"layer {layer}: a split needs at least one part, got 0")
    if any(isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)) or v <= 0 for v in values):
        raise PisplitError(f"layer {layer}: frame shares {values} must all be positive numbers")
    s = float(sum(values))
    return tuple(float(v) / s for v in values)


def deal_frames(n_frames: int, shares: Sequence[float]) -> tuple[int, ...]:
    """The part each frame goes to: smooth weighted round-robin, so frames interleave by share.

    Example: deal_frames(5, [0.6, 0.4]) -> (0, 1, 0, 1, 0); deal_frames(4, [0.5, 0.5]) -> (0, 1, 0, 1).
    """
    current = [0.0] * len(shares)
    out = []
    for _ in range(int(n_frames)):
        for i, w in enumerate(shares):
            current[i] += w
        pick = max(range(len(shares)), key=lambda i: (current[i], -i))
        current[pick] -= 1.0
        out.append(pick)
    return tuple(out)
