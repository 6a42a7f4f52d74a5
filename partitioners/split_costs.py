"""The split kinds as the cost model sees them: planner segments, applicable kinds, part costs.

Everything geometric comes from partitioners.splits (`split_cost`, from shapes only). This module
adapts it for the planner, which asks the same question for many device sets:

- Planner segments: walking the nodes in order, a conv or dense node starts a segment that reaches
  as far as its longest-reaching split kind takes followers (conv-channel takes the pool after a
  conv, conv-filter takes nothing). A kind whose split stops earlier runs the rest of the segment on
  the lead after the merge. Other nodes are segments of their own and are never split.
- Per (segment, kind), one `split_cost` call with four parts, two middle ones of different sizes,
  gives every per-part quantity (FLOPs, weight bytes, bytes received and sent) as
  `fixed + per_unit * size`, plus what the first part adds (a bias, a one-sided halo) and what the
  last part adds; a part of any size is then priced without another call. Split costs are affine in
  the part size, so this matches `split_cost` (tests/partitioners/test_cost.py checks it); an axis
  too short for four parts is calibrated with two, without the first/last terms.
  Whole part sizes come from splits' own proportional sizing, so the plan's sizes are the ones
  `split_layer` builds.
- Fused spans: fused-tiles from a conv segment through the next d planner segments (1 <= d <=
  MAX_SPAN, full convolutions included, halos recomputed instead of exchanged), wherever the rows
  of the whole run can be cut with no communication (split_segments.spatial_region: a chain, or a
  residual block whose shortcut and main path both read the block's input). A span is priced as a
  kind, by the same affine calibration, under the pseudo-kind `span_kind(d)`.
- Token spans (issue 19): attn-tokens from an attention segment through its whole transformer block
  (attention, residual, LayerNorm, MLP, residual: the segment and the d after it), each part's rows
  through every node, its K and V rows all-gathered; priced the same way under `token_span_kind(d)`,
  in the table's own span columns (segment_columns: the plan's segment is attn-tokens over the block).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from layers.errors import PisplitError
from layers.graph import Graph

log = logging.getLogger(__name__)

# Kinds the planner chooses per segment. data-parallel is a stage mode here, not a segment kind;
# fused-tiles is chosen as spans over several segments (span_kind).
PLANNER_KINDS = ("fc-output", "fc-input", "conv-channel", "conv-spatial", "conv-filter", "attn-heads",  # attn-heads: issue 19
                 "attn-tokens")  # issue 19: a transformer block's tokens (split_tokens)
FUSED = "fused-tiles"
TOKENS = "attn-tokens"
MAX_SPAN = 4  # a fused span covers its first segment and at most this many more


def span_kind(d: int) -> str:
    """The pseudo-kind of a fused span over a segment and the d after it (SplitCatalogue.kind_costs)."""
    return f"{FUSED}+{d}"


def span_length(kind: str) -> int | None:
    """d of span_kind(d), None for a real kind."""
    head, plus, d = kind.partition("+")
    return int(d) if plus and head == FUSED else None


def token_span_kind(d: int) -> str:
    """The pseudo-kind of a token span (issue 19): attn-tokens from an attention segment through the d
    segments after it, the whole transformer block (attention, residual, LayerNorm, MLP) on each part's
    rows, only K and V all-gathered (SplitCatalogue.token_spans)."""
    return f"{TOKENS}+{d}"


def token_span_length(kind: str) -> int | None:
    """d of token_span_kind(d), None otherwise."""
    head, plus, d = kind.partition("+")
    return int(d) if plus and head == TOKENS else None
PRIMARY_OPS = ("dense", "conv2d", "conv3d")
_FIELDS = ("flops", "weight_bytes", "recv_bytes", "send_bytes")


@dataclass(frozen=True)
class PartCost:
    """Cost of one part of a split segment, from shapes only (bytes are float32 bytes)."""

    flops: float
    weight_bytes: float
    recv_bytes: float  # what the part's rank receives from the lead before computing
    send_bytes: float  # what it sends back (its output slice, or a partial sum)


def _calibration_split(graph: Graph, layer: str, kind: str, **options):
    """split_cost with four parts whose middle two differ in size, else two unequal parts, else None."""
    from .splits import split_cost

    for weights in ((1.0, 1.0, 2.0, 1.0), (1.0, 3.0)):
        try:
            cost = split_cost(graph, layer, kind, weights, **options)
        except PisplitError as exc:
            log.debug("layer %s: %s into %d parts does not apply (%s)", layer, kind, len(weights), exc)
            continue
        if len(weights) == 2 or cost.parts[1].size != cost.parts[2].size:
            return cost
    return None


def _affine(kind: str, layer: str, cost) -> "KindCosts":
    """KindCosts from a calibration split (see the module docstring)."""
    values = [[float(getattr(p, f)) for f in _FIELDS] for p in cost.parts]
    sizes = [p.size for p in cost.parts]
    zero = (0.0,) * len(_FIELDS)
    if len(sizes) == 4:
        a, b = 1, 2  # the middle parts: no bias, halos on both sides
    else:
        a, b = 0, 1
    if sizes[a] != sizes[b]:
        per_unit = tuple((vb - va) / (sizes[b] - sizes[a]) for va, vb in zip(values[a], values[b]))
        fixed = tuple(va - u * sizes[a] for va, u in zip(values[a], per_unit))
    else:
        per_unit, fixed = tuple(v / sizes[a] for v in values[a]), zero
    first, last = zero, zero
    if len(sizes) == 4:
        first = tuple(v - f - u * sizes[0] for v, f, u in zip(values[0], fixed, per_unit))
        last = tuple(v - f - u * sizes[-1] for v, f, u in zip(values[-1], fixed, per_unit))
    return KindCosts(kind, layer, cost.node_stop, int(sum(sizes)), fixed, per_unit, first, last,
                     float(cost.merge_flops) / (len(sizes) - 1), cost.input_pattern, cost.output_pattern)


@dataclass(frozen=True)
class KindCosts:
    """One kind applied to one segment: where its split stops and its affine per-part costs."""

    kind: str
    layer: str
    stop: int  # the split covers nodes [segment start, stop); the rest runs on the lead
    extent: int  # units the part sizes divide (output channels, rows, input features ...)
    fixed: tuple  # per _FIELDS
    per_unit: tuple
    first_extra: tuple  # what the first part adds (a bias, a one-sided halo)
    last_extra: tuple  # what the last part adds
    merge_flops_per_part: float  # work the lead adds per extra part (summing partial outputs)
    input_pattern: str
    output_pattern: str

    def part(self, index: int, size: int, n_parts: int) -> PartCost:
        """Costs of part `index` (of `n_parts`) holding `size` units."""
        values = [f + u * size for f, u in zip(self.fixed, self.per_unit)]
        if index == 0:
            values = [v + e for v, e in zip(values, self.first_extra)]
        if index == n_parts - 1:
            values = [v + e for v, e in zip(values, self.last_extra)]
        return PartCost(*(max(v, 0.0) for v in values))


class SplitCatalogue:
    """The split options of one graph: planner segments, kinds per segment, part costs (cached)."""

    def __init__(self, graph: Graph, kinds: tuple = PLANNER_KINDS + (FUSED,)):
        self.graph = graph
        self.allowed = tuple(kinds)
        self._kinds: dict[int, dict[str, KindCosts]] = {}
        self.segments: list[tuple[int, int]] = self._segments()
        # regions of several segments that conv-spatial runs segment by segment, exchanging halos,
        # while the region's input stays on the parts for every segment that reads it (segment -> d)
        self._exchange: dict[int, tuple] = {}
        self._spans: dict[int, dict[int, KindCosts]] = self._fused_spans() if FUSED in self.allowed else {}
        self._token_spans: dict[int, dict[int, KindCosts]] = self._block_spans() if TOKENS in self.allowed else {}
        self.max_span = max([d for spans in self._spans.values() for d in spans] + [d for ds in self._exchange.values() for d in ds]
                            + [d for spans in self._token_spans.values() for d in spans], default=0)

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
        from .splits import legal_kinds

        layer = self.graph.nodes[start].name
        found = {}
        for kind in legal_kinds(self.graph, layer):
            if kind not in self.allowed or kind in (FUSED, TOKENS):  # fused-tiles: spans (_fused_spans)
                continue
            cost = _calibration_split(self.graph, layer, kind)
            if cost is None:  # fewer units than parts
                continue
            found[kind] = _affine(kind, layer, cost)
        if TOKENS in self.allowed and TOKENS in legal_kinds(self.graph, layer):
            # the token split runs through the attention block (its output projection, where attn-heads stops),
            # not through the block's MLP: its FC layers stay segments of their own
            from .split_heads import attention_block

            block = attention_block(self.graph, start)
            stop = max([k.stop for k in found.values()] + [block.stop if block is not None else start + 1])
            cost = _calibration_split(self.graph, layer, TOKENS, last=self.graph.nodes[stop - 1].name)
            if cost is not None:
                found[TOKENS] = _affine(TOKENS, layer, cost)
        return found

    def _fused_spans(self) -> dict[int, dict[int, KindCosts]]:
        """segment -> {d: KindCosts of fused-tiles from it to the end of segment + d}, where the run's
        rows split with no communication (a region of spatial ops, convolutions included:
        split_segments.spatial_region, a chain or a residual block with its shortcut)."""
        from .split_segments import spatial_region
        from .split_spatial import spatial_axis
        from .splits import legal_kinds

        graph, out = self.graph, {}
        ends = {stop: k for k, (_, stop) in enumerate(self.segments)}
        for s, (start, _) in enumerate(self.segments):
            node = graph.nodes[start]
            if node.op not in PRIMARY_OPS or FUSED not in legal_kinds(graph, node.name):
                continue
            try:
                axis = spatial_axis(graph, node.inputs[0], "rows", node.name)
            except PisplitError:
                continue
            for d in range(1, MAX_SPAN + 1):
                if s + d >= len(self.segments):
                    break
                stop = self.segments[s + d][1]
                if ends.get(stop) != s + d or spatial_region(graph, start, stop, (axis,)) is not None:
                    continue
                # (only where the region's input is read again after its first segment: elsewhere
                # a chain of kept conv-spatial segments is the same thing)
                again = any(node.inputs[0] in n.inputs for n in graph.nodes[self.segments[s + 1][0]:stop])
                if again and "conv-spatial" in self.allowed and all(
                        "conv-spatial" in self._kinds.get(k, {}) and self._kinds[k]["conv-spatial"].stop == self.segments[k][1]
                        for k in range(s, s + d + 1)):
                    self._exchange[s] = self._exchange.get(s, ()) + (d,)
                cost = _calibration_split(graph, node.name, FUSED, last=graph.nodes[stop - 1].name)
                if cost is None or cost.node_stop != stop:
                    continue
                out.setdefault(s, {})[d] = _affine(span_kind(d), node.name, cost)
        return out

    def _block_spans(self) -> dict[int, dict[int, KindCosts]]:
        """segment -> {d: KindCosts of attn-tokens from it through its whole transformer block}, where the
        block (split_tokens.token_block: attention, residual, LayerNorm, MLP, residual) ends where
        planner segment + d does (1 <= d <= MAX_SPAN). Priced by the same affine calibration: each
        part's rows through every node of the block, its K/V slice sent to every other part. A block
        reaching further than MAX_SPAN segments (ViT's last: its residual, then the encoder's final
        LayerNorm, d=5) spans the longest run of it that ends at a segment's end within MAX_SPAN and
        where the token split can end (token_block with `last`: the residual); the rest runs on the
        lead after the gather."""
        from .split_tokens import token_block

        graph, out = self.graph, {}
        ends = {stop: k for k, (_, stop) in enumerate(self.segments)}
        for s, (start, stop) in enumerate(self.segments):
            if TOKENS not in self._kinds.get(s, {}):
                continue
            block = token_block(graph, start)
            d = ends.get(block.stop, -1) - s if block is not None else -1
            if d > MAX_SPAN:
                shorter = (token_block(graph, start, last=self.segments[s + e][1] - 1) for e in range(MAX_SPAN, 0, -1))
                block = next((b for b in shorter if b is not None), None)
                d = ends[block.stop] - s if block is not None else -1
            if not 1 <= d <= MAX_SPAN or block.stop <= stop:
                continue
            cost = _calibration_split(graph, graph.nodes[start].name, TOKENS, last=graph.nodes[block.stop - 1].name)
            if cost is None or cost.node_stop != block.stop:
                continue
            out.setdefault(s, {})[d] = _affine(token_span_kind(d), graph.nodes[start].name, cost)
        return out

    def token_spans(self, segment: int) -> tuple[int, ...]:
        """The d of every token span from `segment` (token_span_kind): its transformer block's end."""
        return tuple(self._token_spans.get(segment, {}))

    def kinds(self, segment: int) -> tuple[str, ...]:
        """Split kinds applicable to a segment (empty when it cannot be split)."""
        return tuple(self._kinds.get(segment, {}))

    def spans(self, segment: int) -> tuple[int, ...]:
        """The d of every fused span from `segment` (span_kind)."""
        return tuple(self._spans.get(segment, {}))

    def exchange_spans(self, segment: int) -> tuple[int, ...]:
        """The d of every region from `segment` over segment + d that conv-spatial runs segment by
        segment, its input kept on the parts for each of its readers (a residual block's convs
        exchanging halos of their narrow tensors instead of recomputing them)."""
        return self._exchange.get(segment, ())

    def kind_costs(self, segment: int, kind: str) -> KindCosts:
        d = span_length(kind)
        if d is not None:
            return self._spans[segment][d]
        d = token_span_length(kind)
        if d is not None:
            return self._token_spans[segment][d]
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
        return tuple(k.part(r, size, len(sizes)) for r, size in enumerate(sizes))

    def options(self, segment: int, kind: str, sizes: tuple) -> dict:
        """Kind-specific plan options of a split segment; the planner uses each kind's defaults."""
        return {}
