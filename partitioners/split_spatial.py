"""Spatial splits (conv-spatial bands, fused-tiles bands and grids) with exact halos.

A part owns a box of the segment's final output (a band of rows, or a tile of rows x columns).
Walking the segment backwards, each node's window (kernel, stride, dilation, padding; 1x1 for
point-wise nodes) says which input rows produce the rows asked of it; the part receives exactly the
input box the first node needs (its halo included) and recomputes the overlapping rows of the
intermediate tensors itself, so nothing is exchanged inside the segment. Where a window runs off the
tensor, that is the original padding: the part's node gets it as explicit padding, so zero padding,
max-pool's -inf and average-pool's cell count stay exactly as in the unsplit node.
"""
from __future__ import annotations

import itertools

from layers.errors import PisplitError
from layers.graph import Graph
from layers.ops import conv_geometry, pool_geometry

from .split_parts import FeedNames, Layout, PartBuilder, full_box
from .split_quant import max_pool_pad_value, quantized_attrs
from .split_segments import CONV_OPS, POOL_OPS

# Tensor axes by name: NHWC for 2-D, NDHWC for 3-D.
SPATIAL_AXES = {4: {"rows": 1, "cols": 2}, 5: {"depth": 1, "rows": 2, "cols": 3}}


def spatial_axis(graph: Graph, tensor: str, name: str, layer: str) -> int:
    """Tensor axis of spatial axis `name` ('rows', 'cols', or 'depth' for 3-D) of `tensor`."""
    rank = len(graph.shapes[tensor])
    axes = SPATIAL_AXES.get(rank)
    if axes is None:
        raise PisplitError(f"layer {layer}: tensor {tensor} of shape {graph.shapes[tensor]} has no rows to split")
    if name not in axes:
        raise PisplitError(f"layer {layer}: axis {name!r} is not one of {', '.join(axes)} for shape {graph.shapes[tensor]}")
    return axes[name]


def node_windows(graph: Graph, index: int, running: str) -> list[tuple]:
    """Per spatial axis of the running input, the node's window: (kernel, stride, dilation, (before, after))."""
    node = graph.nodes[index]
    in_shape = graph.shapes[running]
    n_sp = len(in_shape) - 2
    if node.op in CONV_OPS:
        ksize, strides, dilation, pads, _ = conv_geometry(in_shape, node.attrs, node.weight_shapes["kernel"])
        return list(zip(ksize, strides, dilation, pads))
    if node.op in POOL_OPS:
        pool, strides, pads, _ = pool_geometry(in_shape, node.attrs)
        return list(zip(pool, strides, (1,) * n_sp, pads))
    if node.op == "pad":
        return [(1, 1, 1, tuple(int(v) for v in p)) for p in node.attrs["paddings"][1:-1]]
    return [(1, 1, 1, (0, 0))] * n_sp


def input_range(o0: int, o1: int, window: tuple, in_size: int) -> tuple[int, int, int, int]:
    """Input rows [lo, hi) that output rows [o0, o1) read, and the padding (before, after) they need.

    Example: 3x3 'same' conv (pads (1, 1)) on 8 rows, output rows [0, 4): input rows [0, 5), padding (1, 0).
    """
    k, s, d, (pad_before, _) = window
    lo = o0 * s - pad_before
    hi = (o1 - 1) * s + (k - 1) * d + 1 - pad_before
    if hi <= 0:  # every window lies in the padding before the data: read no rows
        return 0, 0, hi - lo, 0
    if lo >= in_size:  # ... or after it
        return in_size, in_size, 0, hi - lo
    return max(lo, 0), min(hi, in_size), max(0, -lo), max(0, hi - in_size)


def _part_attrs(node, windows: list, pads: dict, split_axes: list) -> dict:
    attrs = dict(node.attrs)
    explicit = [list(w[3]) for w in windows]
    for axis in split_axes:
        explicit[axis - 1] = list(pads[axis])
    if node.op == "pad":
        attrs["paddings"] = [[0, 0], *explicit, list(node.attrs["paddings"][-1])]
    elif node.op in CONV_OPS or node.op in POOL_OPS:
        attrs["padding"] = explicit
    return attrs


def _pad_for_max_pool(b: PartBuilder, node, x: str, attrs: dict, graph: Graph) -> str:
    # Padding cells never win a max, so padding with -inf first and pooling 'valid' is the same pool;
    # unlike an explicit pool padding it has a TFLite form (PADV2), so any engine runs the part.
    # (int8: padded with the int8 minimum, which never wins either.)
    pad_attrs = {"paddings": [[0, 0], *attrs["padding"], [0, 0]], "value": float("-inf"), **max_pool_pad_value(graph, node.name)}
    padded = b.node(f"{node.name}[pad]", "pad", [x], quantized_attrs(graph, node.name, pad_attrs),
                    node.name, {}, f"{node.name}[padded]")
    attrs["padding"] = "valid"
    return padded


def plan_spatial(graph: Graph, start: int, stop: int, axis_sizes: list[tuple[int, tuple]]) -> Layout:
    """Split nodes [start, stop) over the output boxes given by `axis_sizes`: (tensor axis, sizes) pairs;
    parts are the row-major product of the per-axis ranges (one pair: bands; two: a grid).

    The nodes are a chain or, for fused tiles, a region (split_segments.spatial_region): each node's
    first input is the tensor its window reads; a tensor made inside is read by one node inside,
    one from before the region by any number, each reading its own box (a feed of the part).

    Example, a 3x3 'same' conv on 8 rows, axis_sizes [(1, (4, 4))]: part 0 receives input rows [0, 5)
    and pads 1 row above, part 1 rows [3, 8) and pads 1 row below; merge = concatenate on axis 1.
    """
    final = graph.nodes[stop - 1].outputs[0]
    out_shape = graph.shapes[final]
    split_axes = [a for a, _ in axis_sizes]
    ranges_per_axis = []
    for _, sizes in axis_sizes:
        edges = [0, *itertools.accumulate(sizes)]
        ranges_per_axis.append([(edges[i], edges[i + 1]) for i in range(len(sizes))])
    made = {graph.nodes[j].outputs[0]: j for j in range(start, stop)}

    def running(j: int) -> str:
        # a chain's node reads the one before it (an add's first operand may come from before the run)
        node = graph.nodes[j]
        if j > start and graph.nodes[j - 1].outputs[0] in node.inputs and made.get(node.inputs[0]) is None:
            return graph.nodes[j - 1].outputs[0]
        return node.inputs[0]

    windows = [node_windows(graph, j, running(j)) for j in range(start, stop)]
    parts = []
    for p, combo in enumerate(itertools.product(*ranges_per_axis)):
        want = {final: dict(zip(split_axes, combo))}
        out_box = tuple(want[final].get(a, (0, n)) for a, n in enumerate(out_shape[1:], start=1))
        # Backwards: the rows each node must produce, the input rows it reads and its edge padding.
        produce, reads, pads = {}, {}, {}
        for j in range(stop - 1, start - 1, -1):
            node = graph.nodes[j]
            run = running(j)
            in_shape = graph.shapes[run]
            produce[j] = want[node.outputs[0]]
            need, pad = {}, {}
            for a in split_axes:
                lo, hi, before, after = input_range(*produce[j][a], windows[j - start][a - 1], in_shape[a])
                need[a], pad[a] = (lo, hi), (before, after)
            pads[j], reads[j] = pad, need
            if run in made:
                want[run] = need
            for t in node.inputs:  # second operands (an add's other input) at the rows the node produces
                if t != run and t in made:
                    want[t] = dict(produce[j])
        size = 1
        for r0, r1 in combo:
            size *= r1 - r0
        b = PartBuilder(p, size)
        feeds = FeedNames(b)
        for j in range(start, stop):
            node = graph.nodes[j]
            run = running(j)
            out_len = graph.shapes[node.outputs[0]]
            inputs = []
            for t in node.inputs:
                if t in made:
                    inputs.append(t)
                    continue
                shape = graph.shapes[t]
                if t == run:
                    box = tuple(reads[j].get(a, (0, n)) for a, n in enumerate(shape[1:], start=1))
                else:  # a second operand: cut like the output, except on axes it broadcasts along
                    box = tuple(produce[j][a] if a in produce[j] and n == out_len[a] else (0, n)
                                for a, n in enumerate(shape[1:], start=1))
                inputs.append(feeds(t, box))
            boxes = {p_: full_box(s) for p_, s in node.weight_shapes.items()}
            attrs = _part_attrs(node, windows[j - start], pads[j], split_axes)
            if node.op in ("max_pool2d", "max_pool3d") and any(v for pair in attrs["padding"] for v in pair):
                inputs = [_pad_for_max_pool(b, node, inputs[0], attrs, graph)]
            b.node(node.name, node.op, inputs, attrs, node.name, boxes)
        parts.append(b.finish(final, out_box))
    return Layout(tuple(parts), "concat")
