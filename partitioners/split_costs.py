"""The split kinds as the cost model sees them: planner segments, applicable kinds, part costs.

Everything geometric comes from partitioners.splits (`split_cost`, from shapes only). This module
adapts it for the planner, which asks the same question for many device sets:

- Planner segments: walking the nodes in order, a conv or dense node starts a segment that reaches
  as far as its longest-reaching split kind takes followers (conv-channel takes the pool after a
  conv, conv-filter takes nothing). A kind whose split stops earlier runs the rest of the segment on
  the lead after the merge. Other nodes are segments of their own and are never split.
- Per (segment, kind), one `split_cost` call with two unequal parts gives every per-part quantity
  (FLOPs, weight bytes, bytes received and sent) as `fixed + per_unit * size`; a part of any size is
  then priced without another call. This is exact for the channel, filter and FC kinds (their costs
  are affine in the part size) and, for conv-spatial, exact up to one halo on middle parts.
  Whole part sizes come from splits' own proportional sizing, so the plan's sizes are the ones
  `split_layer` builds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from layers.errors import PisplitError
from layers.graph import Graph

log = logging.getLogger(__name__)

# Kinds the planner chooses per segment. data-parallel is a stage mode here, not a segment kind;
# fused-tiles needs a choice of run end the planner does not search yet.
PLANNER_KINDS = ("fc-output", "fc-input", "conv-channel", "conv-spatial", "conv-filter")
PRIMARY_OPS = ("dense", "conv2d", "conv3d")
_FIELDS = ("flops", "weight_bytes", "recv_bytes", "send_bytes")


@dataclass(frozen=True)
class PartCost:
    """Cost of one part of a split segment, from shapes only (bytes are float32 bytes)."""

    flops: float
    weight_bytes: float
    recv_bytes: float  # what the part's rank receives from the lead before computing
    send_bytes: float  # what it sends back (its output slice, or a partial sum)


@dataclass(frozen=True)
class KindCosts:
    """One kind applied to one segment: where its split stops and its affine per-part costs."""

    kind: str
    layer: str
    stop: int  # the split covers nodes [segment start, stop); the rest runs on the lead
    extent: int  # units the part sizes divide (output channels, rows, input features ...)
    fixed: tuple  # per _FIELDS
    per_unit: tuple
    merge_flops_per_part: float  # work the lead adds per extra part (summing partial outputs)
    input_pattern: str
    output_pattern: str

    def part(self, size: int) -> PartCost:
        return PartCost(*(max(f + u * size, 0.0) for f, u in zip(self.fixed, self.per_unit)))


class SplitCatalogue:
    """The split options of one graph: planner segments, kinds per segment, part costs (cached)."""

    def __init__(self, graph: Graph, kinds: tuple = PLANNER_KINDS):
        self.graph = graph
        self.allowed = tuple(kinds)
        self._kinds: dict[int, dict[str, KindCosts]] = {}
        self.segments: list[tuple[int, int]] = self._segments()

    def _segments(self) -> list[tuple[int, int]]:
        n = len(self.graph)
        out: list[tuple[int, int]] = []
        t = 0
        while t < n:
            node = self.graph.nodes[t]
            found = self._kind_costs(t) if node.op in PRIMARY_OPS and self.allowed else {}
            stop = max([k.stop for k in found.values()] + [t + 1])
            if found:
                self._kinds[len(out)] = found
            out.append((t, stop))
            t = stop
        return out

    def _kind_costs(self, start: int) -> dict[str, KindCosts]:
        from .splits import legal_kinds, split_cost

        layer = self.graph.nodes[start].name
        found = {}
        for kind in legal_kinds(self.graph, layer):
            if kind not in self.allowed:
                continue
            try:
                cost = split_cost(self.graph, layer, kind, (1.0, 3.0))
            except PisplitError as exc:  # e.g. fewer units than parts
                log.debug("layer %s: %s does not apply (%s)", layer, kind, exc)
                continue
            p0, p1 = cost.parts
            values0 = [float(getattr(p0, f)) for f in _FIELDS]
            values1 = [float(getattr(p1, f)) for f in _FIELDS]
            if p1.size != p0.size:
                per_unit = tuple((b - a) / (p1.size - p0.size) for a, b in zip(values0, values1))
                fixed = tuple(a - u * p0.size for a, u in zip(values0, per_unit))
            else:
                per_unit, fixed = tuple(a / p0.size for a in values0), (0.0,) * len(_FIELDS)
            found[kind] = KindCosts(kind, layer, cost.node_stop, int(sum(cost.sizes)), fixed, per_unit,
                                    float(cost.merge_flops), cost.input_pattern, cost.output_pattern)
        return found

    def kinds(self, segment: int) -> tuple[str, ...]:
        """Split kinds applicable to a segment (empty when it cannot be split)."""
        return tuple(self._kinds.get(segment, {}))

    def kind_costs(self, segment: int, kind: str) -> KindCosts:
        return self._kinds[segment][kind]

    def part_sizes(self, segment: int, kind: str, weights: list[float]) -> tuple[int, ...] | None:
        """Whole part sizes proportional to `weights` (device speeds), as splits sizes them; None when
        there are more parts than units."""
        from .split_sizes import proportional_sizes

        extent = self._kinds[segment][kind].extent
        if len(weights) > extent:
            return None
        return tuple(proportional_sizes(extent, weights))

    def part_costs(self, segment: int, kind: str, sizes: tuple) -> tuple[PartCost, ...]:
        """Per-part costs of splitting a segment with `kind` into parts of `sizes`."""
        k = self._kinds[segment][kind]
        return tuple(k.part(s) for s in sizes)

    def options(self, segment: int, kind: str, sizes: tuple) -> dict:
        """Kind-specific plan options of a split segment; the planner uses each kind's defaults."""
        return {}
