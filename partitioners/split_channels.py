"""Channel splits of dense and conv nodes: output side (fc-output, conv-channel) and input side
(fc-input, conv-filter), grouped convolutions included.

Output side: part p holds output channels [c0, c1) of the primary (a column slice of a dense kernel,
a filter subset of a conv) and its followers run on those channels; outputs concatenate on the last
axis. A grouped conv part whose channels cross a group boundary runs one conv per piece (the channels
of one group, or a run of whole groups as one grouped conv), each reading only its groups' input
channels, and concatenates them.

Input side: part p holds input channels [i0, i1) (rows of a dense kernel, the matching depth of every
filter) and makes a partial sum of the output; the partial sums add up to the output. The bias rides
with the part holding the first input channel of each group, so it is added exactly once; the
activation runs on the root after the sum. For a grouped conv a part's partial sum covers only the
output channels of the groups it touches (`output_box`).
"""
from __future__ import annotations

from layers.graph import Graph

from .split_parts import FeedNames, Layout, PartBuilder, PartPlan, full_box
from .split_quant import check_partial_parts, halves_shape, quantized_attrs, requantize_attrs
from .split_segments import ELEMENTWISE_OPS

_LINEAR = (None, "linear")


def _last_axis_box(shape: tuple, c0: int, c1: int) -> tuple:
    """Box over the non-batch axes of `shape`: everything, but channels [c0, c1) on the last axis."""
    return (*full_box(shape[1:-1]), (c0, c1))


def _kernel_box(kernel_shape: tuple, cin: tuple, cout: tuple) -> tuple:
    return (*full_box(kernel_shape[:-2]), cin, cout)


def output_pieces(groups: int, cin_g: int, cout_g: int, o0: int, o1: int) -> list[tuple]:
    """Convs computing output channels [o0, o1) of a grouped conv: (in_c0, in_c1, out_c0, out_c1, groups).

    Example, groups=2, 4 input and 6 output channels per group, outputs [3, 12):
    [(0, 4, 3, 6, 1), (4, 8, 6, 12, 1)] - the tail of group 0, then group 1 whole.
    """
    pieces = []
    o = o0
    while o < o1:
        g = o // cout_g
        g_end = (g + 1) * cout_g
        if o == g * cout_g and o1 >= g_end:
            n_full = (o1 - o) // cout_g
            pieces.append((g * cin_g, (g + n_full) * cin_g, o, o + n_full * cout_g, n_full))
            o += n_full * cout_g
        else:
            b = min(o1, g_end)
            pieces.append((g * cin_g, (g + 1) * cin_g, o, b, 1))
            o = b
    return pieces


def input_pieces(groups: int, cin_g: int, cout_g: int, i0: int, i1: int) -> list[tuple]:
    """Convs making the partial sums of input channels [i0, i1) of a grouped conv:
    (in_c0, in_c1, kernel_c0, kernel_c1, out_c0, out_c1, groups, owns_bias).

    Example, groups=2, 4 input and 6 output channels per group, inputs [2, 8):
    [(2, 4, 2, 4, 0, 6, 1, False), (4, 8, 0, 4, 6, 12, 1, True)].
    """
    pieces = []
    i = i0
    while i < i1:
        g = i // cin_g
        g_start, g_end = g * cin_g, (g + 1) * cin_g
        if i == g_start and i1 >= g_end:
            n_full = (i1 - i) // cin_g
            pieces.append((i, i + n_full * cin_g, 0, cin_g, g * cout_g, (g + n_full) * cout_g, n_full, True))
            i += n_full * cin_g
        else:
            b = min(i1, g_end)
            pieces.append((i, b, i - g_start, b - g_start, g * cout_g, (g + 1) * cout_g, 1, i == g_start))
            i = b
    return pieces


def _conv_groups(graph: Graph, index: int) -> tuple[int, int, int]:
    node = graph.nodes[index]
    kshape = node.weight_shapes["kernel"]
    if node.op == "dense":
        return 1, kshape[0], kshape[1]
    groups = int(node.attrs.get("groups", 1))
    return groups, kshape[-2], kshape[-1] // groups


def _primary_output_channels(b: PartBuilder, feeds: FeedNames, graph: Graph, index: int, o0: int, o1: int) -> str:
    node = graph.nodes[index]
    x = node.inputs[0]
    x_shape = graph.shapes[x]
    kshape = node.weight_shapes["kernel"]
    out = node.outputs[0]
    groups, cin_g, cout_g = _conv_groups(graph, index)
    pieces = output_pieces(groups, cin_g, cout_g, o0, o1)
    names = []
    for k, (ic0, ic1, a, z, g) in enumerate(pieces):
        name = node.name if len(pieces) == 1 else f"{node.name}[{a}:{z}]"
        boxes = {"kernel": _kernel_box(kshape, (0, kshape[-2]), (a, z))}
        if "bias" in node.weight_shapes:
            boxes["bias"] = ((a, z),)
        attrs = dict(node.attrs)
        if node.op != "dense":
            attrs["groups"] = g
        src = feeds(x, _last_axis_box(x_shape, ic0, ic1))
        names.append(b.node(name, node.op, [src], attrs, node.name, boxes, out if len(pieces) == 1 else name))
    if len(pieces) > 1:
        b.node(f"{node.name}[concat]", "concat", names, quantized_attrs(graph, node.name, {"axis": -1}), node.name, {}, out)
    return out


def _channel_follower(b: PartBuilder, feeds: FeedNames, graph: Graph, index: int, c0: int, c1: int) -> tuple[int, int]:
    """Add follower `index` to the part running channels [c0, c1); returns its output channel range."""
    node = graph.nodes[index]
    running = graph.nodes[index - 1].outputs[0]
    c = graph.shapes[running][-1]
    boxes: dict = {}
    attrs = dict(node.attrs)
    inputs = []
    for t in node.inputs:
        if t == running:
            inputs.append(t)
        else:
            shape = graph.shapes[t]
            inputs.append(feeds(t, _last_axis_box(shape, c0, c1) if shape[-1] == c else full_box(shape[1:])))
    if node.op == "batch_norm":
        boxes = {p: ((c0, c1),) for p in node.weight_shapes}
    elif node.op == "prelu":
        alpha = node.weight_shapes["alpha"]
        boxes = {"alpha": (*full_box(alpha[:-1]), (c0, c1) if alpha[-1] == c else (0, alpha[-1]))}
    elif node.op in ("conv2d", "conv3d"):  # depthwise: channel k makes outputs [k*m, (k+1)*m)
        kshape = node.weight_shapes["kernel"]
        m = kshape[-1] // c
        boxes = {"kernel": _kernel_box(kshape, (0, 1), (c0 * m, c1 * m))}
        if "bias" in node.weight_shapes:
            boxes["bias"] = ((c0 * m, c1 * m),)
        attrs["groups"] = c1 - c0
        c0, c1 = c0 * m, c1 * m
    elif node.op not in ELEMENTWISE_OPS and node.weight_shapes:
        raise AssertionError(f"channel follower {node.op} has weights it does not slice")
    b.node(node.name, node.op, inputs, attrs, node.name, boxes)
    return c0, c1


def plan_output_channels(graph: Graph, start: int, stop: int, sizes: tuple) -> Layout:
    """fc-output / conv-channel: part p computes output channels sizes[:p].sum() + [0, sizes[p]) of
    node `start` and runs followers [start+1, stop) on them; outputs concatenate on the last axis.

    Example, a conv with 64 filters and sizes (40, 24): part 0 holds filters [0, 40) and makes
    channels [0, 40) of the output, part 1 filters [40, 64); merge = concatenate(outs, axis=-1).
    """
    out_shape = graph.shapes[graph.nodes[stop - 1].outputs[0]]
    parts = []
    o0 = 0
    for p, size in enumerate(sizes):
        b = PartBuilder(p, size)
        feeds = FeedNames(b)
        o1 = o0 + size
        _primary_output_channels(b, feeds, graph, start, o0, o1)
        c0, c1 = o0, o1
        for j in range(start + 1, stop):
            c0, c1 = _channel_follower(b, feeds, graph, j, c0, c1)
        parts.append(b.finish(graph.nodes[stop - 1].outputs[0], _last_axis_box(out_shape, c0, c1)))
        o0 = o1
    return Layout(tuple(parts), "concat")


def plan_input_channels(graph: Graph, start: int, stop: int, sizes: tuple) -> Layout:
    """fc-input / conv-filter: part p holds input channels [i0, i1) of node `start` and makes a partial
    sum; the partial sums add up, then the root applies the activation and followers [start+1, stop).

    Example, a dense 9216 -> 4096 (relu) with sizes (4608, 4608): part 0 computes x[:, :4608] @
    W[:4608] + b, part 1 x[:, 4608:] @ W[4608:]; merge = relu(out0 + out1).
    """
    node = graph.nodes[start]
    x = node.inputs[0]
    x_shape = graph.shapes[x]
    out = node.outputs[0]
    out_shape = graph.shapes[out]
    kshape = node.weight_shapes["kernel"]
    groups, cin_g, cout_g = _conv_groups(graph, start)
    partial = f"{out}/partial"
    quantized = bool(node.attrs.get("quantized"))
    if quantized:  # int8: int32 sums leave the parts as exact float32 halves (layers.quant, split_quant)
        check_partial_parts(graph, start, len(sizes))
        out_shape = halves_shape(out_shape)
    acc = f"{out}/acc" if quantized else partial
    parts = []
    i0 = 0
    for p, size in enumerate(sizes):
        b = PartBuilder(p, size)
        feeds = FeedNames(b)
        i1 = i0 + size
        if node.op == "dense":
            pieces = [(i0, i1, i0, i1, 0, kshape[1], 1, i0 == 0)]
        else:
            pieces = input_pieces(groups, cin_g, cout_g, i0, i1)
        names = []
        for ic0, ic1, k0, k1, a, z, g, owns_bias in pieces:
            name = f"{node.name}[{ic0}:{ic1}]"
            boxes = {"kernel": _kernel_box(kshape, (k0, k1), (a, z))}
            if owns_bias and "bias" in node.weight_shapes:
                boxes["bias"] = ((a, z),)
            attrs = {**node.attrs, "activation": None}
            if attrs.get("quantized"):  # an int32 partial sum, requantized once after the sum (split_quant)
                attrs["partial"] = True
            if node.op != "dense":
                attrs["groups"] = g
            src = feeds(x, _last_axis_box(x_shape, ic0, ic1))
            names.append(b.node(name, node.op, [src], attrs, node.name, boxes, acc if len(pieces) == 1 else name))
        if len(pieces) > 1:
            b.node(f"{node.name}[concat]", "concat", names, quantized_attrs(graph, node.name, {"axis": -1}), node.name, {}, acc)
        c0, c1 = pieces[0][4], pieces[-1][5]
        if quantized:
            b.node(f"{node.name}[halves]", "int32_halves", [acc], {"quantized": True}, node.name, {}, partial)
            c0, c1 = 2 * c0, 2 * c1
        parts.append(b.finish(partial, _last_axis_box(out_shape, c0, c1)))
        i0 = i1
    return Layout(tuple(parts), "sum", _after_sum(graph, start, stop, partial))


def _after_sum(graph: Graph, start: int, stop: int, partial: str) -> PartPlan | None:
    """The root's work on the summed partial outputs: the primary's activation, then its followers."""
    node = graph.nodes[start]
    activation = node.attrs.get("activation")
    quantized = bool(node.attrs.get("quantized"))
    if activation in _LINEAR and stop == start + 1 and not quantized:
        return None
    out_shape = graph.shapes[node.outputs[0]]
    b = PartBuilder(-1, 0)
    b.feed(partial, partial, full_box((halves_shape(out_shape) if quantized else out_shape)[1:]))
    running = partial
    if quantized:  # int8: the int32 sum scaled to the output once, the activation's clamp included
        running = b.node(f"{node.name}[requantize]", "requantize", [partial], requantize_attrs(graph, start), node.name, {},
                         node.outputs[0])
    elif activation not in _LINEAR:
        running = b.node(f"{node.name}[{activation}]", activation, [partial], {}, node.name, {}, node.outputs[0])
    for j in range(start + 1, stop):
        f = graph.nodes[j]
        inputs = [running if t == graph.nodes[j - 1].outputs[0] else t for t in f.inputs]
        boxes = {q: full_box(s) for q, s in f.weight_shapes.items()}
        running = b.node(f.name, f.op, inputs, f.attrs, f.name, boxes)
    return b.finish(running, full_box(graph.shapes[running][1:]))
