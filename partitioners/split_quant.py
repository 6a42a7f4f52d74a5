"""Splits of int8 layers: the quantization a part graph carries, and the int32 partial sums of
input-channel splits.

A part of a quantized graph runs the same integer kernels as the unsplit graph, so it needs the
quantization of every tensor and weight it holds (`part_quant`): a feed takes that of the tensor it is
a box of; a node's output that of the node it was copied from (a piece of a grouped conv, the concat of
pieces, the -128 padding before a split max pool all share the source's output quantization); a weight
slice takes its slice of a per-channel quantization (the scales of the output channels it holds).

Channel, spatial and frame splits are exact as they stand: every output value is computed by one part
from the same integers with the same multiplier. fc-input and conv-filter parts instead stop before
requantizing (attrs["partial"]): each makes the int32 sum of (x - input zero point) * filter over its
input channels (bias on the part that owns it) and sends it as two exact float32 halves (int32_halves:
sum >> 16 and sum & 0xffff, the last axis doubled), because every runtime buffer is float32 and float32
rounds integers past 2**24; the root adds the parts' halves (exact for up to 255 parts, in any order)
and one `requantize` node rebuilds the int32 total and scales it as the unsplit kernel would (the same
multipliers, the same fused-activation clamp). A split int8 layer equals the unsplit one bit for bit,
in process and under mpirun; a partial sum costs 8 bytes a value on the link (two float32).
"""
from __future__ import annotations

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph
from layers.quant import TensorQuant

from .split_parts import PartPlan, box_shape
from .vocabulary import SplitKind

def halves_shape(shape: tuple) -> tuple:
    """Shape of the float32 halves of an int32 partial sum of `shape` (last axis doubled)."""
    return (*shape[:-1], 2 * shape[-1])


def check_partial_parts(graph: Graph, index: int, n_parts: int) -> None:
    from layers.quant import MAX_PARTIAL_PARTS

    if n_parts > MAX_PARTIAL_PARTS:
        raise PisplitError(f"layer {graph.nodes[index].name}: an int8 input-channel split adds its partial sums exactly in at most "
                           f"{MAX_PARTIAL_PARTS} parts, not {n_parts}")


def quantized_attrs(graph: Graph, source: str, attrs: dict) -> dict:
    """`attrs` of a node a split adds for `source` (a concat of pieces, a pad before a max pool),
    marked quantized when `source` is, so it runs the integer kernel."""
    if graph.node(source).attrs.get("quantized"):
        return {**attrs, "quantized": True}
    return attrs


def max_pool_pad_value(graph: Graph, source: str) -> dict:
    """The quantized value a max pool's explicit padding takes: the int8 minimum (it never wins)."""
    node = graph.node(source)
    if not node.attrs.get("quantized"):
        return {}
    return {"qvalue": graph.quant[node.outputs[0]].qmin}


def _sliced(q: TensorQuant, box: tuple, shape: tuple) -> TensorQuant:
    """A per-channel quantization restricted to the weight slice `box` of a weight of `shape`."""
    if not q.per_channel:
        return q
    axis = q.axis % len(shape)
    a, b = box[axis]
    zp = q.zero_point if len(q.zero_point) == 1 else q.zero_point[a:b]
    return TensorQuant(q.dtype, q.scale[a:b], zp, q.axis)


def partial_quant(graph: Graph, index: int, c0: int, c1: int) -> TensorQuant:
    """The int32 partial sum of output channels [c0, c1) of conv / dense node `index`: scale
    input_scale * filter_scale (the accumulator's unit, as TFLite quantizes a bias), zero point 0."""
    node = graph.nodes[index]
    in_scale = graph.quant[node.inputs[0]].scale[0]
    wq = graph.quant[node.weight_key("kernel")]
    ws = np.broadcast_to(np.asarray(wq.scale, np.float64), (graph.shapes[node.outputs[0]][-1],))[c0:c1]
    scales = tuple(float(np.float32(in_scale * s)) for s in ws)
    return TensorQuant("int32", scales, (0,), len(graph.shapes[node.outputs[0]]) - 1)


def requantize_attrs(graph: Graph, index: int) -> dict:
    """Attributes of the `requantize` node that ends a split int8 conv / dense node `index`."""
    from layers.qkernels import output_multipliers

    node = graph.nodes[index]
    cout = graph.shapes[node.outputs[0]][-1]
    mults = np.atleast_1d(output_multipliers(node.op, graph.quant[node.inputs[0]], graph.quant[node.weight_key("kernel")],
                                             graph.quant[node.outputs[0]], cout))
    from layers.qkernels import xnnpack_scales

    scales = np.atleast_1d(xnnpack_scales(graph.quant[node.inputs[0]].scalar("input")[0], graph.quant[node.weight_key("kernel")],
                                          graph.quant[node.outputs[0]].scalar("output")[0], mults.size))
    # "scale": the float32 scales of the default (XNNPACK) int8 arithmetic, layers.qkernels
    return {"quantized": True, "activation": node.attrs.get("activation"), "multiplier": [float(m) for m in mults],
            "scale": [float(s) for s in scales]}


def part_quant(graph: Graph, plan: PartPlan, partials: dict | None = None) -> dict:
    """The meta["quant"] of a part graph of quantized `graph` (plain data, as layers.quant documents).

    `partials`: part tensor name -> TensorQuant for the int32 partial sums the part makes.
    """
    partials = dict(partials or {})
    out: dict = {}
    for f in plan.feeds:
        q = partials.get(f.name) or graph.quant.get(f.tensor)
        if q is not None:
            out[f.name] = q
    for pn in plan.nodes:
        node = pn.node
        source = graph.node(pn.source)
        if node.attrs.get("partial"):  # a part's partial sum: the output channels its filters make
            kbox = dict(pn.weight_boxes)["kernel"]
            partials[node.outputs[0]] = partial_quant(graph, graph.node_index(pn.source), *kbox[-1])
        elif node.op == "concat" and node.inputs and all(t in partials for t in node.inputs):
            qs = [partials[t] for t in node.inputs]  # pieces of a grouped conv's partial sum, by channel
            partials[node.outputs[0]] = TensorQuant("int32", tuple(s for q in qs for s in q.scale), (0,), qs[0].axis)
        for t in node.outputs:
            if node.op == "int32_halves":  # float32 halves of a partial sum: not quantized
                continue
            q = partials.get(t) or graph.quant.get(t) or graph.quant.get(source.outputs[0])
            if q is not None and (node.attrs.get("quantized") or t in graph.quant):
                out[t] = q
        for param, box in pn.weight_boxes:
            key = f"{pn.source}/{param}"
            if key in graph.quant:
                out[node.weight_key(param)] = _sliced(graph.quant[key], box, source.weight_shapes[param])
    return {k: v.to_dict() for k, v in out.items()}


def dtype_itemsize(quant: dict, tensor: str) -> int:
    """Bytes an element of part tensor `tensor` takes (its quantized dtype, else float32)."""
    q = quant.get(tensor)
    return np.dtype(q.np_dtype if isinstance(q, TensorQuant) else TensorQuant.from_dict(tensor, q).np_dtype).itemsize \
        if q is not None else 4


def part_bytes(graph: Graph, plan: PartPlan, quant: dict) -> tuple[int, int, int]:
    """(weight bytes, bytes received, bytes sent) of a part of a quantized graph, each in its dtype."""
    weights = 0
    for pn in plan.nodes:
        for param, box in pn.weight_boxes:
            n = int(np.prod(box_shape(box)))
            key = f"{pn.source}/{param}"
            weights += n * (graph.quant[key].np_dtype.itemsize if key in graph.quant else 4)
    recv = sum(int(np.prod(f.shape)) * dtype_itemsize(quant, f.name) for f in plan.feeds)
    send = int(np.prod(plan.output_shape)) * dtype_itemsize(quant, plan.output)
    return weights, recv, send


def as_integers(value, dtype, layer: str) -> np.ndarray:
    """`value` as integer `dtype` without loss: integers in range, or floats holding exactly such
    integers (a runtime that carries tensors as float32); PisplitError naming `layer` otherwise."""
    arr = np.asarray(value)
    dtype = np.dtype(dtype)
    if arr.dtype == dtype:
        return arr
    info = np.iinfo(dtype)
    bad = arr.dtype.kind not in "iuf" or (arr.size and (arr.min() < info.min or arr.max() > info.max))
    if not bad and arr.dtype.kind == "f":
        bad = not np.array_equal(arr, np.rint(arr))
    if bad:
        raise PisplitError(f"layer {layer}: a part's output should be {dtype} integers, got {arr.dtype} values that are not")
    return arr.astype(dtype)


# Splits whose parts feed a dynamic-range layer another input than the whole layer's (a band of rows, some
# input channels): LiteRT's hybrid kernels quantize each part's input on that part's own range, so no part
# computes what the unsplit layer does (layers.tflite_export refuses them on the litert engine, and
# layers.qkernels.run_hybrid on the numpy engine). A dynamic-range depthwise layer quantizes its whole image
# at once, so it also takes no conv-channel split (partitioners.splits.legal_kinds) and ends a channel segment.
HYBRID_INEXACT_KINDS = (SplitKind.FC_INPUT, SplitKind.CONV_FILTER, SplitKind.CONV_SPATIAL, SplitKind.FUSED_TILES)


def hybrid_layers(graph: Graph) -> list[str]:
    """Names of the dynamic-range layers of `graph`: float nodes with a quantized (int8) weight."""
    return [n.name for n in graph.nodes if not n.attrs.get("quantized") and any(n.weight_key(p) in graph.quant for p in n.weight_shapes)]


def planner_kinds(graph: Graph, engine: str) -> dict:
    """SplitCatalogue keyword arguments for planning `graph` on `engine`: the litert engine cannot run
    an int8 part's int32 partial sums (no TFLite form), so an int8 graph planned for it is offered no
    fc-input / conv-filter; nor a graph with dynamic-range layers, on either engine, the kinds that change
    their parts' inputs (HYBRID_INEXACT_KINDS; the numpy engine runs LiteRT's hybrid arithmetic,
    layers.qkernels, and refuses such parts as the litert export does); {} (every planner kind) otherwise."""
    if not graph.quant:
        return {}
    from .split_costs import FUSED, PLANNER_KINDS

    if graph.quantized:
        if engine != "litert":
            return {}
        return {"kinds": tuple(k for k in (*PLANNER_KINDS, FUSED) if k not in (SplitKind.FC_INPUT, SplitKind.CONV_FILTER))}
    if hybrid_layers(graph):  # either engine: the numpy engine runs LiteRT's hybrid arithmetic and refuses them too
        return {"kinds": tuple(k for k in (*PLANNER_KINDS, FUSED) if k not in HYBRID_INEXACT_KINDS)}
    return {}
