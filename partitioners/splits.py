"""Split kinds: one layer (plus its followers, or a run of layers) cut into parts that ranks run.

`split_layer(graph, layer, kind, sizes)` returns a `Split`, built from shapes only. Its parts are
small `layers.Graph`s (`part_graph(p)`, weights sliced from the model's lazy weights when asked for),
so any engine runs them; `slice_input(x, p)` cuts what part p receives and `merge(outputs)` puts the
results back together, so a split is checkable in one process. `split_cost(...)` is the planner's
view: per-part FLOPs, weight bytes, bytes received and sent, and the communication pattern.

Kinds (see design.md): fc-output, fc-input, conv-channel, conv-spatial, conv-filter, fused-tiles,
data-parallel. The unit cut is a segment: the primary node and the followers that keep its split
(split_segments). conv-spatial cuts rows (H; also for 3-D, where depth shrinks to 1 in C3D's late
layers; pass axis='depth' or 'cols' for another axis); fused-tiles cuts a run of layers into row
bands or a rows x cols grid.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from layers.errors import PisplitError
from layers.graph import DTYPE_BYTES, Graph
from layers.ops import numel
from layers.weights import SeededWeights, weight_box

from .split_channels import plan_input_channels, plan_output_channels
from .split_frames import plan_frames
from .split_parts import SPLIT_KINDS, Layout, PartCost, PartPlan, SplitCost, box_index, full_box
from .split_quant import as_integers, halves_shape, part_bytes, part_quant
from .split_segments import CONV_OPS, chain_stop, channel_follower, is_depthwise, is_hybrid, run_stop, spatial_follower, spatial_region
from .split_sizes import deal_frames, frame_shares, resolve_sizes
from .split_spatial import SPATIAL_AXES, plan_spatial, spatial_axis
from .vocabulary import SplitKind

__all__ = ["SPLIT_KINDS", "Split", "SplitCost", "PartCost", "legal_kinds", "split_layer", "split_segment", "split_cost"]


def legal_kinds(graph: Graph, layer: str) -> tuple[str, ...]:
    """The split kinds that apply to node `layer`."""
    index = graph.node_index(layer)
    node = graph.nodes[index]
    if node.op == "dense":
        from .split_heads import HEADS_KIND, attention_block  # issue 19: an attention block's Q/K/V projection

        heads = (HEADS_KIND,) if graph.quant == {} and attention_block(graph, index) is not None else ()
        from .split_tokens import TOKENS_KIND, token_block  # issue 19: the block's tokens

        tokens = (TOKENS_KIND,) if heads and token_block(graph, index) is not None else ()
        return ("fc-output", "fc-input", *heads, *tokens, "data-parallel")
    if node.op in CONV_OPS:
        if is_depthwise(graph, index) and is_hybrid(graph, index):  # its parts would quantize their channels alone
            return ("conv-spatial", "conv-filter", "fused-tiles", "data-parallel")
        return ("conv-channel", "conv-spatial", "conv-filter", "fused-tiles", "data-parallel")
    if not node.inputs:  # a constant node (issue 19): nothing to cut
        return ("data-parallel",)
    if len(graph.shapes[node.inputs[0]]) in SPATIAL_AXES and spatial_follower(graph, index, node.inputs[0], (), True):
        return ("fused-tiles", "data-parallel")
    return ("data-parallel",)


@dataclass(frozen=True)
class Split:
    """A segment [node_start, node_stop) cut into parts; build it with `split_layer`."""

    graph: Graph = field(repr=False, compare=False)
    kind: str
    layer: str
    node_start: int
    node_stop: int
    sizes: tuple
    layout: Layout = field(repr=False)
    options: dict = field(default_factory=dict)
    _post_graph: Graph | None = field(default=None, init=False, repr=False, compare=False)

    # --- what it is ----------------------------------------------------------------------------------
    @property
    def parts(self) -> tuple[PartPlan, ...]:
        return self.layout.parts

    @property
    def n_parts(self) -> int:
        return len(self.layout.parts)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.graph.nodes[self.node_start:self.node_stop])

    @property
    def inputs(self) -> tuple[str, ...]:
        """The segment's input tensors (model tensor names), the primary's input first."""
        return tuple(dict.fromkeys(f.tensor for p in self.parts for f in p.feeds))

    @property
    def output(self) -> str:
        """The segment's output tensor."""
        return self.graph.nodes[self.node_stop - 1].outputs[0] if self.kind != SplitKind.DATA_PARALLEL else self.parts[0].output

    @property
    def output_shape(self) -> tuple:
        return self.graph.shapes[self.output]

    @property
    def partial_shape(self) -> tuple:
        """Shape of the tensor the parts' outputs merge into: the segment output, or for sum kinds the
        primary's output before the root's activation and followers (int8: its int32 sums as float32
        halves, the last axis doubled; split_quant)."""
        if self.layout.merge == "sum":
            primary = self.graph.nodes[self.node_start]
            shape = self.graph.shapes[primary.outputs[0]]
            return halves_shape(shape) if primary.attrs.get("quantized") else shape
        return self.output_shape

    @property
    def shares(self) -> tuple[float, ...]:
        """Fraction of the frames each part gets (data-parallel), else all 1.0."""
        return tuple(self.options.get("shares", (1.0,) * self.n_parts))

    @property
    def input_pattern(self) -> str:
        """'broadcast' when every part receives the whole input, else 'scatter'."""
        if self.kind == SplitKind.DATA_PARALLEL:
            return "scatter"
        whole = all(f.box == full_box(self.graph.shapes[f.tensor][1:]) for p in self.parts for f in p.feeds)
        return "broadcast" if whole and self.n_parts > 1 else "scatter"

    @property
    def output_pattern(self) -> str:
        """'reduce' for partial sums, else 'gather'."""
        return "reduce" if self.layout.merge == "sum" else "gather"

    def deal(self, n_frames: int) -> tuple[int, ...]:
        """The part each of `n_frames` frames goes to (data-parallel; other kinds give every part all)."""
        return deal_frames(n_frames, self.shares)

    # --- costs ---------------------------------------------------------------------------------------
    def cost(self, output_to: str = "root") -> SplitCost:
        """Per-part costs; with output_to='all' every part also receives the whole merged output."""
        if output_to not in ("root", "all"):
            raise PisplitError(f"layer {self.layer}: output_to {output_to!r} is not 'root' or 'all'")
        shares = self.shares
        parts = []
        out_bytes = numel(self.output_shape) * DTYPE_BYTES
        if self.graph.quant:  # int8: every tensor and weight in its own dtype (split_quant)
            out_bytes = self.graph.tensor_bytes(self.output)
        for p, share in zip(self.parts, shares):
            weight_bytes, recv, send = p.weight_bytes, p.recv_bytes, p.send_bytes
            if self.graph.quant:
                weight_bytes, recv, send = part_bytes(self.graph, p, self.part_quant(p.index))
            if output_to == "all":
                recv += out_bytes - (send if self.layout.merge == "concat" else 0)
            parts.append(PartCost(p.index, p.size, p.flops, weight_bytes, recv, send, share))
        pattern = self.output_pattern
        if output_to == "all":
            pattern = "allreduce" if pattern == "reduce" else "allgather"
        merge_flops = 0
        if self.layout.merge == "sum":
            merge_flops = sum(numel(p.output_shape) for p in self.parts[1:])
            if self.layout.post is not None:
                merge_flops += self.layout.post.flops
        seg = range(self.node_start, self.node_stop)
        return SplitCost(
            kind=self.kind, layer=self.layer, nodes=self.node_names, node_start=self.node_start, node_stop=self.node_stop,
            sizes=self.sizes, input_pattern=self.input_pattern, output_pattern=pattern, parts=tuple(parts),
            unsplit_flops=sum(self.graph.cost(j).flops for j in seg),
            unsplit_weight_bytes=sum(self.graph.cost(j).weight_bytes for j in seg),
            input_bytes=(sum(self.graph.tensor_bytes(t) for t in self.inputs) if self.graph.quant
                         else sum(numel(self.graph.shapes[t]) for t in self.inputs) * DTYPE_BYTES),
            output_bytes=out_bytes, merge_flops=merge_flops,
        )

    # --- graphs --------------------------------------------------------------------------------------
    def part_graph(self, index: int, weights: Mapping | None = None) -> Graph:
        """Part `index` as a Graph whose weights (a plain dict) are only its own slices.

        Only the weights of the segment's nodes are read from the model's lazy mapping (or `weights`),
        and a seeded mapping is read without its cache, so after slicing only the slices stay in memory.
        """
        return self._graph_of(self._part(index), f"part{index}", weights)

    def post_graph(self, weights: Mapping | None = None) -> Graph | None:
        """What the root runs on the sum of the partial outputs (activation, followers), or None.
        int8: first a `requantize` of the int32 sum to the layer's output (split_quant)."""
        post = self.layout.post
        return None if post is None else self._graph_of(post, "post", weights)

    def part_quant(self, index: int | None) -> dict:
        """The quantization (meta["quant"] data) of part `index`'s graph, or of the post graph (None);
        {} for float graphs."""
        if not self.graph.quant:
            return {}
        plan = self.layout.post if index is None else self._part(index)
        return part_quant(self.graph, plan)

    @property
    def part_dtype(self) -> np.dtype:
        """The dtype of the parts' outputs: float32 (also the exact halves of int8 partial sums), or the
        int8 output of an int8 segment."""
        if not self.graph.quant or self.layout.merge == "sum":
            return np.dtype(np.float32)
        return self.graph.dtype(self.output)

    def _graph_of(self, plan: PartPlan, suffix: str, weights: Mapping | None) -> Graph:
        quant = self.part_quant(None if suffix == "post" else plan.index) if self.graph.quant else {}
        base = _uncached(self.graph.weights if weights is None else weights)
        sliced = {}
        for pn in plan.nodes:
            for param, box in pn.weight_boxes:
                key = f"{pn.source}/{param}"
                source = self.graph.nodes[self.graph.node_index(pn.source)]
                whole = box == full_box(tuple(source.weight_shapes.get(param, ())))
                try:
                    # all of it (conv-spatial keeps every filter): shared, not copied; else the box alone,
                    # read or generated without the rest of the weight (layers.weights.weight_box)
                    arr = base[key] if whole else weight_box(base, key, box)
                except KeyError:
                    raise PisplitError(f"model {self.graph.name}: weight {key!r} is missing") from None
                arr = np.asarray(arr) if key in self.graph.quant else np.asarray(arr, np.float32)
                if arr.shape != tuple(b - a for a, b in box):
                    raise PisplitError(f"model {self.graph.name}: weight {key!r} has shape {arr.shape}, its part "
                                       f"needs {[list(b) for b in box]}")
                sliced[pn.node.weight_key(param)] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
        return Graph(f"{self.graph.name}:{self.layer}:{self.kind}:{suffix}", {f.name: f.shape for f in plan.feeds},
                     [pn.node for pn in plan.nodes], [plan.output], sliced,
                     {"split": {"kind": self.kind, "layer": self.layer, "part": suffix, "of": self.n_parts},
                      **({"quant": quant} if quant else {})})

    def _part(self, index: int) -> PartPlan:
        if not 0 <= index < self.n_parts:
            raise PisplitError(f"layer {self.layer}: part {index} is outside 0..{self.n_parts - 1}")
        return self.parts[index]

    # --- in-process data path ------------------------------------------------------------------------
    def _feeds_of(self, x) -> dict[str, np.ndarray]:
        if isinstance(x, Mapping):
            missing = [t for t in self.inputs if t not in x]
            if missing:
                raise PisplitError(f"layer {self.layer}: split input {missing[0]!r} was not given")
            return {t: self._as_input(t, x[t]) for t in self.inputs}
        if len(self.inputs) != 1:
            raise PisplitError(f"layer {self.layer}: the split reads {list(self.inputs)}; pass a dict of arrays")
        return {self.inputs[0]: self._as_input(self.inputs[0], x)}

    def _as_input(self, t: str, value) -> np.ndarray:
        # float32; an int8 tensor's integers are checked (in range, integral if they come as floats) and
        # carried as float32 too, as every runtime buffer is (exact for int8; part graphs take them back)
        if t in self.graph.quant:
            return np.asarray(self.graph._as_tensor(t, value), np.float32)
        return np.asarray(value, np.float32)

    def slice_input(self, x, part: int) -> dict[str, np.ndarray]:
        """What part `part` receives: its part-graph input name -> array (views where possible).

        `x` is the segment's input array (or a dict of them), batch axis first. Example, conv-spatial
        of a 3x3 'same' conv on 8 rows in two parts: part 1 gets x[:, 3:8] (rows 3..7, halo row 3).
        For data-parallel the batch axis holds frames and part p gets those `deal` assigns to it.
        """
        tensors = self._feeds_of(x)
        plan = self._part(part)
        if self.kind == SplitKind.DATA_PARALLEL:
            n = next(iter(tensors.values())).shape[0]
            mine = [i for i, q in enumerate(self.deal(n)) if q == part]
            return {f.name: tensors[f.tensor][mine] for f in plan.feeds}
        return {f.name: f.take(tensors[f.tensor]) for f in plan.feeds}

    def merge(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """The segment's output from the parts' outputs (in part order), as float32.

        concat kinds place each output in its box; sum kinds add the partial sums, then apply the
        post graph (the activation). Example, fc-input in two parts: relu(out0 + out1).
        For data-parallel, the outputs' frames go back in frame order.
        """
        if len(outputs) != self.n_parts:
            raise PisplitError(f"layer {self.layer}: merge needs {self.n_parts} part outputs, got {len(outputs)}")
        dtype = self.part_dtype
        outs = [np.asarray(o, np.float32) if dtype == np.float32 else as_integers(o, dtype, self.layer) for o in outputs]
        for p, o in zip(self.parts, outs):
            if o.shape[1:] != p.output_shape[1:]:
                raise PisplitError(f"layer {self.layer}: part {p.index} output has shape {o.shape}, expected {p.output_shape}")
        if self.layout.merge == "frames":
            n = sum(o.shape[0] for o in outs)
            merged = np.empty((n, *self.output_shape[1:]), dtype)
            order = self.deal(n)
            for p, o in enumerate(outs):
                merged[[i for i, q in enumerate(order) if q == p]] = o
            return merged
        n = outs[0].shape[0]
        if self.layout.merge == "concat":
            merged = np.empty((n, *self.output_shape[1:]), dtype)
            for p, o in zip(self.parts, outs):
                merged[box_index(p.output_box)] = o
            return merged
        merged = np.zeros((n, *self.partial_shape[1:]), np.float32)
        for p, o in zip(self.parts, outs):
            merged[box_index(p.output_box)] += o  # int8 partial sums: 16-bit halves, exact in float32
        return self.finish_sum(merged)

    def finish_sum(self, summed: np.ndarray) -> np.ndarray:
        """Apply the post graph (activation after the sum) to the summed partial outputs."""
        post = self.post_graph() if self._post_graph is None else self._post_graph
        if post is None:
            return summed
        object.__setattr__(self, "_post_graph", post)
        return post.execute({next(iter(post.inputs)): summed})[post.outputs[0]]

    def run(self, x, engine: str = "numpy") -> np.ndarray:
        """Run every part in this process with `engine` and merge: the whole split without MPI.

        Frames go through the part graphs one at a time (batch 1), as engines with static shapes need.
        """
        from layers.engine import make_engine

        outputs = []
        for p in range(self.n_parts):
            g = self.part_graph(p)
            runner = make_engine(g, engine)
            feeds = self.slice_input(x, p)
            n = next(iter(feeds.values())).shape[0]
            shape = (0, *g.shapes[g.outputs[0]][1:])
            frames = [runner.run({k: v[i:i + 1] for k, v in feeds.items()})[g.outputs[0]] for i in range(n)]
            outputs.append(np.concatenate(frames) if frames else np.empty(shape, np.float32))
        return self.merge(outputs)

    def reference(self, x) -> np.ndarray:
        """The unsplit segment on `x` (numpy kernels of the full graph): what `merge` must equal."""
        env = {t: self.graph._as_tensor(t, v) for t, v in self._feeds_of(x).items()}
        for j in range(self.node_start, self.node_stop):
            node = self.graph.nodes[j]
            env.update(zip(node.outputs, self.graph.run_node(node, [env[t] for t in node.inputs])))
        return env[self.output]


def _uncached(weights: Mapping) -> Mapping:
    # A seeded mapping keeps every array it generated; reading through a fresh uncached one means the
    # full weight is garbage once its slice is cut.
    if isinstance(weights, SeededWeights) and weights._cache is not None:
        return SeededWeights(weights.specs, weights.seed, cache=False)
    return weights


# --- building splits -----------------------------------------------------------------------------------

def split_layer(graph: Graph, layer: str, kind: str, sizes, *, last: str | None = None, followers: bool = True,
                axis: str = "rows", grid: Sequence[int] | None = None) -> Split:
    """Split node `layer` (and its followers, or the run through node `last`) into parts of `sizes`.

    `sizes`: a part count, integer sizes summing to the axis cut (output channels, input channels,
    output rows ...), or float weights (proportional, e.g. device speeds). For fused-tiles with
    `grid=(R, C)`, sizes is R*C or a pair (row sizes, column sizes). For data-parallel, sizes are
    frame shares. Raises PisplitError naming the layer for an unknown kind, a kind that does not
    apply, or sizes that cannot be met (e.g. "layer conv3: cannot split 64 output channels into 80
    parts"). Example: split_layer(vgg16(), "block1_conv2", "conv-channel", 2) -> parts holding
    filters [0, 32) and [32, 64), each also running block1_pool on its channels.
    """
    if kind not in SPLIT_KINDS:
        raise PisplitError(f"split kind {kind!r}: unknown (known: {', '.join(SPLIT_KINDS)})")
    start = graph.node_index(layer)
    node = graph.nodes[start]
    legal = legal_kinds(graph, layer)
    if kind not in legal:
        why = ""
        if kind == SplitKind.ATTN_HEADS:  # why the node starts no attention block (issue 19)
            from .split_heads import why_not_attention

            why = f"; {why_not_attention(graph, start)}"
        elif kind == SplitKind.ATTN_TOKENS:  # why the node starts no token-splittable block (issue 19)
            from .split_tokens import why_not_tokens

            why = f"; {why_not_tokens(graph, start)}"
        elif kind == SplitKind.CONV_CHANNEL and is_hybrid(graph, start):
            why = ("; a dynamic-range depthwise layer quantizes its whole input at once (LiteRT's hybrid kernel), so a part "
                   "holding some of its channels cannot equal it")
        raise PisplitError(f"layer {layer}: kind {kind} does not apply to a {node.op} node (legal: {', '.join(legal)}){why}")
    if grid is not None and kind != SplitKind.FUSED_TILES:
        raise PisplitError(f"layer {layer}: a grid applies to fused-tiles only, not {kind}")
    options: dict = {}
    if kind in (SplitKind.FC_OUTPUT, SplitKind.CONV_CHANNEL):
        stop = _segment_stop(graph, start, last, followers, channel_follower, kind)
        sizes_ = resolve_sizes(node.weight_shapes["kernel"][-1], sizes, layer,
                               "output units" if kind == SplitKind.FC_OUTPUT else "output channels")
        layout = plan_output_channels(graph, start, stop, sizes_)
    elif kind in (SplitKind.FC_INPUT, SplitKind.CONV_FILTER):
        stop = _segment_stop(graph, start, last, followers, _after_sum_follower, kind)
        sizes_ = resolve_sizes(graph.shapes[node.inputs[0]][-1], sizes, layer,
                               "input features" if kind == SplitKind.FC_INPUT else "input channels")
        layout = plan_input_channels(graph, start, stop, sizes_)
    elif kind == SplitKind.ATTN_HEADS:  # head-parallel attention (partitioners.split_heads): the whole block
        from .split_heads import split_heads

        return split_heads(graph, start, sizes, last, Split)
    elif kind == SplitKind.ATTN_TOKENS:  # sequence split of a transformer block (partitioners.split_tokens)
        from .split_tokens import split_tokens

        return split_tokens(graph, start, sizes, last, Split)
    elif kind in (SplitKind.CONV_SPATIAL, SplitKind.FUSED_TILES):
        stop, axis_sizes, sizes_, options = _spatial_plan(graph, start, kind, sizes, last, followers, axis, grid)
        layout = plan_spatial(graph, start, stop, axis_sizes)
    else:
        stop = _segment_stop(graph, start, last, followers, _frame_follower, kind)
        shares = frame_shares(sizes, layer)
        sizes_ = tuple(sizes) if not isinstance(sizes, int) else (1,) * int(sizes)
        options = {"shares": shares}
        layout = plan_frames(graph, start, stop, shares, layer)
    _refuse_sequences(graph, layout, layer, kind)
    return Split(graph, kind, layer, start, stop, tuple(sizes_), layout, options)


def _refuse_sequences(graph: Graph, layout, layer: str, kind: str) -> None:
    """Issue 19: a batch-1 node may leave axis 0 a sequence of one frame ((T, C) rows); split transfers
    cut boxes after the batch axis, so a split whose input (or gathered output) is such a tensor is refused."""
    if kind == SplitKind.DATA_PARALLEL and len(layout.parts) == 1:
        return
    tensors = [f.tensor for p in layout.parts for f in p.feeds] + ([] if layout.merge == "sum" else [p.output for p in layout.parts])
    seq = next((t for t in tensors if t in graph.shapes and graph.shapes[t][0] != 1), None)
    if seq is not None:
        raise PisplitError(f"layer {layer}: {kind} cannot split tensor {seq!r} {graph.shapes[seq]}: its axis 0 holds one frame's "
                           "sequence (a batch-1 node moved the batch axis there), and splits cut boxes after the batch axis")


def split_cost(graph: Graph, layer: str, kind: str, sizes, output_to: str = "root", **options) -> SplitCost:
    """The costs of `split_layer(graph, layer, kind, sizes, **options)` from shapes only (no weights).

    Answers are cached per graph object, so the planner may ask the same question many times.
    """
    return _cached_cost(graph, layer, kind, _freeze(sizes), tuple(sorted((k, _freeze(v)) for k, v in options.items())), output_to)


def _freeze(v):
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


@functools.lru_cache(maxsize=8192)
def _cached_cost(graph: Graph, layer: str, kind: str, sizes, options: tuple, output_to: str) -> SplitCost:
    # Graphs hash by identity, so an answer is only reused for the very same graph object.
    return split_layer(graph, layer, kind, sizes, **dict(options)).cost(output_to)


def _after_sum_follower(graph: Graph, index: int, running: str) -> bool:
    # runs on the root after the sum, so anything reading only the running tensor, short of a layer
    # that could be split itself (a depthwise conv still follows)
    node = graph.nodes[index]
    if set(node.inputs) != {running}:
        return False
    return node.op != "dense" and (node.op not in CONV_OPS or is_depthwise(graph, index))


def _frame_follower(graph: Graph, index: int, running: str) -> bool:
    # a replica runs anything; a default data-parallel segment stops at the next conv or dense layer
    return graph.nodes[index].op not in CONV_OPS + ("dense",)


def _segment_stop(graph: Graph, start: int, last, followers: bool, accept, kind: str) -> int:
    if last is not None:
        if kind == SplitKind.DATA_PARALLEL:
            stop = graph.node_index(last) + 1
            if stop <= start:
                raise PisplitError(f"layer {graph.nodes[start].name}: {kind} run end {last} comes before it in the model")
            return stop
        return run_stop(graph, start, last, accept, kind)
    if not followers:
        return start + 1
    return chain_stop(graph, start, accept)


def _spatial_plan(graph: Graph, start: int, kind: str, sizes, last, followers: bool, axis: str, grid):
    node = graph.nodes[start]
    x = node.inputs[0]
    if kind == SplitKind.FUSED_TILES and grid is not None:
        axis_names = ["rows", "cols"]
    else:
        axis_names = [axis]
    axes = tuple(spatial_axis(graph, x, a, node.name) for a in axis_names)

    def accept(g, j, running, allow_conv=(kind == SplitKind.FUSED_TILES)):
        return spatial_follower(g, j, running, axes, allow_conv and last is not None)

    try:
        stop = _segment_stop(graph, start, last, followers, accept, kind)
    except PisplitError:
        # fused tiles also run through a region that is not a chain (a residual block with a
        # projection shortcut: split_segments.spatial_region)
        end = graph.node_index(last) + 1 if kind == SplitKind.FUSED_TILES and last is not None else None
        if end is None or end <= start or spatial_region(graph, start, end, axes) is not None:
            raise
        stop = end
    out_shape = graph.shapes[graph.nodes[stop - 1].outputs[0]]
    what = {"rows": "output rows", "cols": "output columns", "depth": "output depth slices"}
    if grid is None:
        sizes_ = resolve_sizes(out_shape[axes[0]], sizes, node.name, what[axis_names[0]])
        return stop, [(axes[0], sizes_)], sizes_, {"axis": axis_names[0]}
    grid = tuple(int(v) for v in grid)
    if len(grid) != 2 or min(grid) < 1:
        raise PisplitError(f"layer {node.name}: grid {list(grid)} must be two positive counts (rows, columns)")
    if isinstance(sizes, int) or sizes is None:
        if sizes is not None and sizes != grid[0] * grid[1]:
            raise PisplitError(f"layer {node.name}: a {grid[0]}x{grid[1]} grid has {grid[0] * grid[1]} tiles, not {sizes} parts")
        row_sizes, col_sizes = grid[0], grid[1]
    else:
        pair = list(sizes)
        if len(pair) != 2 or isinstance(pair[0], (int, float)):
            raise PisplitError(f"layer {node.name}: grid sizes must be a tile count or a pair (row sizes, column sizes)")
        row_sizes, col_sizes = pair
    rows = resolve_sizes(out_shape[axes[0]], row_sizes, node.name, what["rows"])
    cols = resolve_sizes(out_shape[axes[1]], col_sizes, node.name, what["cols"])
    if (len(rows), len(cols)) != grid:
        raise PisplitError(f"layer {node.name}: sizes give a {len(rows)}x{len(cols)} grid, not {grid[0]}x{grid[1]}")
    tiles = tuple(r * c for r in rows for c in cols)
    return stop, [(axes[0], rows), (axes[1], cols)], tiles, {"grid": list(grid), "row_sizes": list(rows), "col_sizes": list(cols)}


def split_segment(graph: Graph, node_start: int, node_stop: int, kind: str, sizes, options: Mapping | None = None) -> Split:
    """The split of nodes [node_start, node_stop) a plan segment describes (kind, sizes, options).

    Options: 'axis' for conv-spatial; 'grid' with 'row_sizes' and 'col_sizes' for fused-tiles grids.
    """
    options = dict(options or {})
    if not 0 <= node_start < node_stop <= len(graph.nodes):
        raise PisplitError(f"model {graph.name}: segment [{node_start}, {node_stop}) is outside its {len(graph.nodes)} nodes")
    grid = options.get("grid")
    if grid is not None and "row_sizes" in options:
        sizes = (tuple(options["row_sizes"]), tuple(options["col_sizes"]))
    elif not isinstance(sizes, int):
        sizes = tuple(sizes)
    return split_layer(graph, graph.nodes[node_start].name, kind, sizes, last=graph.nodes[node_stop - 1].name,
                       axis=options.get("axis", "rows"), grid=grid)
