"""The split kinds as the cost model sees them: segments, applicable kinds, part costs from shapes.

Everything here asks partitioners.splits (the split geometry lives there, once); this module only
adapts it to what the planner needs and caches the answers, since the planner asks the same
(segment, kind, part sizes) question many times.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from layers.graph import Graph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartCost:
    """Cost of one part of a split segment, from shapes only (bytes are float32 bytes)."""

    flops: int
    weight_bytes: int
    recv_bytes: int  # what the part's rank receives from the lead before computing
    send_bytes: int  # what it sends back (its output slice, or a partial sum)


class SplitCatalogue:
    """The split options of one graph: segment boundaries, kinds per segment, cached part costs.

    Without partitioners.splits every node is its own segment and nothing can be split.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self._splits = _splits_module()
        self.segments: list[tuple[int, int]] = self._segments()
        self._cache: dict = {}

    def _segments(self) -> list[tuple[int, int]]:
        n = len(self.graph)
        if self._splits is None:
            return [(i, i + 1) for i in range(n)]
        out, i = [], 0
        for start, stop in self._splits.planner_segments(self.graph):
            while i < start:  # nodes no split segment covers run unsplit, one segment each
                out.append((i, i + 1))
                i += 1
            out.append((start, stop))
            i = stop
        out += [(t, t + 1) for t in range(i, n)]
        return out

    def kinds(self, segment: int) -> tuple[str, ...]:
        """Split kinds applicable to a segment (empty when it cannot be split)."""
        if self._splits is None:
            return ()
        start, stop = self.segments[segment]
        return tuple(self._splits.planner_kinds(self.graph, start, stop))

    def extent(self, segment: int, kind: str) -> int:
        """How many units (channels, rows, features) the kind's part sizes divide."""
        start, stop = self.segments[segment]
        return int(self._splits.planner_extent(self.graph, start, stop, kind))

    def options(self, segment: int, kind: str, sizes: tuple) -> dict:
        """Kind-specific plan options of a split segment (e.g. a fused-tiles grid); {} for most kinds."""
        if self._splits is None or not hasattr(self._splits, "planner_options"):
            return {}
        start, stop = self.segments[segment]
        return dict(self._splits.planner_options(self.graph, start, stop, kind, list(sizes)))

    def part_costs(self, segment: int, kind: str, sizes: tuple) -> tuple[PartCost, ...]:
        """Per-part costs of splitting a segment with `kind` into parts of `sizes` (cached)."""
        key = (segment, kind, sizes)
        hit = self._cache.get(key)
        if hit is None:
            start, stop = self.segments[segment]
            parts = self._splits.planner_part_costs(self.graph, start, stop, kind, list(sizes))
            hit = tuple(PartCost(int(p["flops"]), int(p["weight_bytes"]), int(p["recv_bytes"]), int(p["send_bytes"])) for p in parts)
            self._cache[key] = hit
        return hit


@lru_cache(maxsize=1)
def _splits_module():
    try:
        from . import splits  # noqa: F401  (written by the split-kinds work; absent until it lands)
    except ImportError:
        log.info("partitioners.splits is not available: plans will not split layers")
        return None
    return None


def speed_weighted_sizes(extent: int, weights: list[float]) -> tuple[int, ...] | None:
    """Integer part sizes summing to `extent`, proportional to `weights` (largest remainder), each >= 1.

    None when there are more parts than units. Example: extent 10, weights [2, 1, 1] -> (5, 3, 2)
    (exact shares 5, 2.5, 2.5; the first remainder wins the spare unit).
    """
    m = len(weights)
    if extent < m:
        return None
    total = float(sum(weights))
    exact = [extent * w / total for w in weights]
    sizes = [int(e) for e in exact]
    left = extent - sum(sizes)
    for r in sorted(range(m), key=lambda r: (-(exact[r] - sizes[r]), r))[:left]:
        sizes[r] += 1
    for r in range(m):  # a very slow device still gets one unit rather than none
        if sizes[r] == 0:
            sizes[max(range(m), key=lambda q: sizes[q])] -= 1
            sizes[r] = 1
    return tuple(sizes)
