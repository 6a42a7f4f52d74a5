"""Head-parallel attention (issue 19): split kind "attn-heads".

A multi-head attention block as converters write it runs from its Q/K/V projection (one fused
FULLY_CONNECTED of 3E columns, as litert-torch writes torch's MultiheadAttention, or three of E)
through RESHAPEs, TRANSPOSEs, STRIDED_SLICEs picking Q, K and V, a scale MUL, BATCH_MATMUL, SOFTMAX,
BATCH_MATMUL and back to the output projection (E rows). Every head computes alone until the output
projection, whose rows are the heads' outputs side by side; so part p holds heads [h0, h1): its
columns of Q, K and V, its rows of the output projection, and runs the whole block on them with no
exchange; the parts' outputs are partial sums of the projection, added once (one reduce), the bias
added by part 0, as fc-input does.

Recognising a block is a trace of where the head axis goes (`attention_block`): the projection's
columns are factors (qkv 3) x (heads H) x (head dim D); each RESHAPE regroups factors (a head factor
is never cut), each TRANSPOSE permutes axes, STRIDED_SLICE may pick one of Q/K/V on an axis holding
only the qkv factor, SOFTMAX and BATCH_MATMUL must reduce over axes without heads, element-wise ops
take constants whose axes are 1, span an axis without heads or hold the heads (a part takes its heads'
slice: Swin's relative position bias), and the block ends at the first FULLY_CONNECTED whose input rows are
(heads, head dim), with a BATCH_MATMUL on the way. Anything else, a tensor read outside the block or a
quantized node, means no block (the kind does not apply). A block whose input holds one frame's
sequence on axis 0 (torch's batch_first=False attention reading (T, C) rows, as KWS's first block and
Swin's windows) is split too: every part receives the whole input (cluster.split_exec moves such a
tensor behind a leading axis of one) and the partial sums are (T, C) as well. The trace uses the finest head count the shapes allow: a block of
12 heads also traces as 6 groups of 2, and 12 is taken.

A part's nodes are the block's nodes with every shape recomputed from the traced factors with H
replaced by the part's head count; the fused projection's weight is sliced through a view
(C, 3, H, D) -> its heads -> (C, 3 h D), so Q, K and V of the part's heads come from one box.
Batch: the converted block moves the batch axis (batch-1 nodes, layers.ops.batch1_only); parts run
one frame at a time as every split does.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph, Node
from layers.ops import numel, spec_of
from layers.weights import SeededWeights

from .split_parts import Layout, PartBuilder, PartNode, box_index, full_box

HEADS_KIND = "attn-heads"
# ops an attention block may hold between its projections and its output projection
BLOCK_OPS = ("dense", "reshape", "transpose", "strided_slice", "mul", "add", "sub", "softmax", "batch_matmul", "dropout")
MAX_BLOCK_NODES = 200  # (Swin's shifted windows compute their attention mask inside the block)

H = "heads"
QKV = "qkv"


class _NotAttention(Exception):
    """The trace failed: the reason, for debug logs and the kind's refusal message."""


@dataclass(frozen=True)
class AttentionBlock:
    """An attention block over nodes [start, stop): `heads` heads of `head_dim`, fed by tensor `x`."""

    start: int
    stop: int
    heads: int
    head_dim: int
    x: str
    fused: bool  # one Q/K/V projection of 3E columns (else one per Q, K, V)
    factors: Mapping = field(repr=False, compare=False)  # tensor -> per-axis ((label, size), ...)
    # tensors made before the block that it reads besides x (a converter's deduplicated constant, a mask
    # computed once for several blocks): every part receives them whole
    extra_inputs: tuple = ()
    head_constants: Mapping = field(default_factory=dict, repr=False, compare=False)  # constant node -> its reader's output


def _size(axis, h=None) -> int:
    return math.prod(h if (lab == H and h is not None) else s for lab, s in axis)


def _sizes(factors, h=None) -> list[int]:
    return [_size(a, h) for a in factors]


def _labelled(axis) -> bool:
    return any(lab is not None for lab, _ in axis)


def _regroup(factors, target) -> list:
    """The factors of a tensor after a reshape to `target`: labelled factors are never cut, free ones
    (adjacent ones merged first) may be."""
    queue: list = []
    for lab, s in (f for axis in factors for f in axis):
        if s == 1:
            continue
        if lab is None and queue and queue[-1][0] is None:
            queue[-1] = (None, queue[-1][1] * s)
        else:
            queue.append((lab, s))
    out = []
    for d in target:
        group, prod = [], 1
        while prod < d:
            if not queue or d % prod:
                raise _NotAttention(f"a reshape to {tuple(target)} cuts across axes")
            lab, s = queue.pop(0)
            need = d // prod
            if s == need or (s < need and need % s == 0):
                group.append((lab, s))
                prod *= s
            elif lab is None and s % need == 0:
                group.append((None, need))
                queue.insert(0, (None, s // need))
                prod = d
            else:
                raise _NotAttention(f"a reshape to {tuple(target)} cuts the {lab or 'free'} factor {s}")
        if prod != d:
            raise _NotAttention(f"a reshape to {tuple(target)} does not regroup the factors")
        out.append(tuple(group))
    if queue:
        raise _NotAttention(f"a reshape to {tuple(target)} leaves factors over")
    return out


def _slice_ranges(node: Node, rank: int) -> list[tuple]:
    a = node.attrs
    ranges = list(zip(a["starts"], a["steps"], a["counts"]))
    return ranges if a.get("batch1") else [None, *ranges]


def _trace(graph: Graph, start: int, heads: int, fused: bool) -> AttentionBlock:
    """_trace_nodes; a failure carries the index of the node the trace stopped at (`at`: how far it got)."""
    state = {"at": start}
    try:
        return _trace_nodes(graph, start, heads, fused, state)
    except _NotAttention as exc:
        exc.at = state["at"]  # type: ignore[attr-defined]
        raise


def _trace_nodes(graph: Graph, start: int, heads: int, fused: bool, state: dict) -> AttentionBlock:
    x = graph.nodes[start].inputs[0]
    fac: dict[str, list] = {}
    consts: set[str] = set()  # tensors computed from constants alone (Swin's shifted-window mask): every part runs them whole
    extra: list[str] = []
    head_consts: dict[str, str] = {}  # constant node output -> the element-wise output it is an operand of
    qkv_cols = None
    for j in range(start, min(len(graph.nodes), start + MAX_BLOCK_NODES)):
        node = graph.nodes[j]
        state["at"] = j
        if node.attrs.get("quantized") or len(node.outputs) != 1:
            raise _NotAttention(f"node {node.name} ({node.op}) cannot be part of a head-parallel block")
        for t in node.inputs:
            if t not in fac and t != x and graph.shapes[t] and _from_constants(graph, t, start):  # (a scalar cannot travel)
                fac[t] = [((None, s),) for s in graph.shapes[t]]  # read whole by every part (no heads in it)
                consts.add(t)
                extra.append(t)
        out = node.outputs[0]
        shape = graph.shapes[out]
        if node.op == "constant" or (node.inputs and all(t in consts for t in node.inputs)):
            fac[out] = [((None, s),) for s in shape]
            consts.add(out)
            continue
        outside = [t for t in node.inputs if t not in fac and t != x]
        if outside:
            what = " (a scalar made before it: only tensors with an axis travel to the parts)" if not graph.shapes[outside[0]] else ""
            raise _NotAttention(f"node {node.name} reads {outside[0]!r} from outside the block{what}")
        if node.op not in BLOCK_OPS:
            raise _NotAttention(f"node {node.name} ({node.op}) cannot be part of a head-parallel block")
        if node.op == "dense" and node.inputs[0] == x:
            cols = node.weight_shapes["kernel"][1]
            if node.attrs.get("activation") not in (None, "linear"):
                raise _NotAttention(f"projection {node.name} has an activation")
            if fused:
                if qkv_cols is not None or cols % (3 * heads):
                    raise _NotAttention("not one fused Q/K/V projection")
                last = ((QKV, 3), (H, heads), (None, cols // (3 * heads)))
            else:
                if cols % heads:
                    raise _NotAttention(f"{cols} projection columns do not hold {heads} heads")
                last = ((H, heads), (None, cols // heads))
            qkv_cols = cols
            fac[out] = [((None, s),) for s in shape[:-1]] + [tuple(f for f in last if f[1] != 1 or f[0] is not None)]
            continue
        missing = [t for t in node.inputs if t not in fac]
        if missing:
            raise _NotAttention(f"node {node.name} reads {missing[0]!r} from outside the block")
        ins = [fac[t] for t in node.inputs]
        if node.op == "dense":  # the output projection: rows are (heads, head dim)
            *lead, last = ins[0]
            if any(_labelled(a) for a in lead) or [lab for lab, _ in last] != [H, None] or last[0][1] != heads:
                raise _NotAttention(f"dense {node.name} reads the heads in another layout")
            if node.attrs.get("activation") not in (None, "linear"):
                raise _NotAttention(f"output projection {node.name} has an activation")
            stop = j + 1
            _check_contained(graph, start, stop)
            if qkv_cols is None:
                raise _NotAttention("no projection")
            if not any(graph.nodes[i].op == "batch_matmul" for i in range(start, stop)):
                # a dense -> reshape -> dense chain splits as fc-output -> fc-input; attn-heads is for attention
                raise _NotAttention("no BATCH_MATMUL between the projections")
            return AttentionBlock(start, stop, heads, last[1][1], x, fused, fac, tuple(extra), head_consts)
        if node.op == "reshape":
            fac[out] = _regroup(ins[0], shape)
        elif node.op == "transpose":
            fac[out] = [ins[0][p] for p in node.attrs["perm"]]
        elif node.op == "dropout":
            fac[out] = ins[0]
        elif node.op == "strided_slice":
            sliced = []
            for axis, (size, r) in enumerate(zip(_sizes(ins[0]), _slice_ranges(node, len(ins[0])))):
                f = ins[0][axis]
                if r is None or tuple(r) == (0, 1, size):
                    sliced.append(f)
                elif f == ((QKV, 3),) and r[2] == 1:
                    sliced.append(())  # Q, K or V: the qkv factor is gone
                elif _is_chunk(f, r):
                    sliced.append(f[1:])  # torch.chunk(qkv, 3, -1) (MaxViT): a third of the axis, the qkv factor gone
                elif _labelled(f):
                    raise _NotAttention(f"slice {node.name} cuts the heads")
                else:
                    sliced.append(((None, r[2]),) if r[2] != 1 else ())
            fac[out] = _regroup(sliced, shape)
        elif node.op in ("mul", "add", "sub"):
            # a constant node read only here (Swin's last stage adds its relative position bias this way) is a
            # constant operand: held whole, or cut by heads like a weight operand
            operands = [t for t in node.inputs if t in consts and graph.nodes[_producers(graph)[t]].op == "constant"
                        and start <= _producers(graph)[t] < j and graph.consumers(t) == [j] and len(node.inputs) > 1]
            if operands and len(operands) < len(node.inputs):
                fac[out] = _elementwise(graph, node, [fac[t] for t in node.inputs if t not in operands], shape, operands=[
                    tuple(graph.shapes[t]) for t in operands])
                head_consts.update((t, out) for t in operands)
            else:
                fac[out] = _elementwise(graph, node, ins, shape)
        elif node.op == "softmax":
            if _labelled(ins[0][int(node.attrs.get("axis", -1))]):
                raise _NotAttention(f"softmax {node.name} normalises over the heads")
            fac[out] = ins[0]
        elif node.op == "batch_matmul":
            fac[out] = _matmul(node, ins, shape)
        if any(lab == QKV for axis in fac[out] for lab, _ in axis) and node.op not in ("reshape", "transpose", "strided_slice"):
            raise _NotAttention(f"node {node.name} ({node.op}) mixes Q, K and V")
    raise _NotAttention("no output projection within reach")


@functools.lru_cache(maxsize=64)
def _producers(graph: Graph) -> dict:
    return {t: i for i, n in enumerate(graph.nodes) for t in n.outputs}


def _from_constants(graph: Graph, tensor: str, before: int) -> bool:
    """Whether `tensor` is made before node `before` from constants alone (no input, no quantized node)."""
    producers = _producers(graph)
    seen, todo = set(), [tensor]
    while todo:
        i = producers.get(todo.pop())
        if i is None or i >= before or len(seen) > MAX_BLOCK_NODES:
            return False
        node = graph.nodes[i]
        if node.attrs.get("quantized") or (node.op != "constant" and not node.inputs):
            return False
        if i not in seen:
            seen.add(i)
            todo.extend(node.inputs)
    return True


def _is_chunk(axis, r) -> bool:
    """A slice range (start, step, count) taking one of three equal chunks of an axis whose first factor is
    qkv: Q, K or V of every head (torch.chunk of a fused projection's last axis)."""
    return (r is not None and len(axis) > 1 and axis[0] == (QKV, 3) and r[1] == 1
            and r[2] * 3 == _size(axis) and r[0] % r[2] == 0)


def _elementwise(graph: Graph, node: Node, ins: list, shape, operands: list | None = None) -> list:
    if node.attrs.get("activation") not in (None, "linear"):
        raise _NotAttention(f"{node.op} {node.name} has an activation")
    rank = len(shape)
    padded = [[((None, 1),)] * (rank - len(f)) + list(f) for f in ins]
    out = []
    for axis in range(rank):
        cands = [f[axis] for f in padded if _size(f[axis]) != 1] or [padded[0][axis]]
        if any(c != cands[0] for c in cands):
            raise _NotAttention(f"{node.op} {node.name} combines tensors laid out differently")
        out.append(cands[0])
    for const in [tuple(node.weight_shapes.get("constant", ())), *(operands or [])]:
        for k in range(1, len(const) + 1):
            # a constant operand (Swin's relative position bias (1, H, T, T), a window mask): each of its axes is 1,
            # or spans an axis without heads whole, or holds exactly the heads (a part takes its heads' slice)
            axis = [f for f in out[-k] if f[1] != 1] if k <= len(out) else []
            if const[-k] == 1 or (not _labelled(axis) and const[-k] == _size(axis)):
                continue
            if len(axis) == 1 and axis[0][0] == H and const[-k] == axis[0][1]:
                continue
            raise _NotAttention(f"{node.op} {node.name} takes a constant of shape {const}")
    return out


def _heads_box(block: "AttentionBlock", node: Node, h0: int, h1: int, const: tuple | None = None, reader: str | None = None) -> tuple:
    """The box of an element-wise node's constant operand a part takes: its heads on an axis of heads (or of
    a constant node's value `const` read by element-wise output `reader`)."""
    const = tuple(node.weight_shapes["constant"]) if const is None else const
    out = block.factors[node.outputs[0] if reader is None else reader]
    box = list(full_box(const))
    for k in range(1, len(const) + 1):
        if const[-k] != 1 and k <= len(out) and any(lab == H for lab, _ in out[-k]):
            box[-k] = (h0, h1)
    return tuple(box)


def _matmul(node: Node, ins: list, shape) -> list:
    a, b = (list(f) for f in ins)
    if node.attrs.get("adj_x"):
        a[-1], a[-2] = a[-2], a[-1]
    if node.attrs.get("adj_y"):
        b[-1], b[-2] = b[-2], b[-1]
    if any(_labelled(f) for f in (a[-1], b[-2], a[-2], b[-1])):
        raise _NotAttention(f"batch_matmul {node.name} multiplies over the heads")
    lead_rank = len(shape) - 2
    pa = [((None, 1),)] * (lead_rank - len(a[:-2])) + a[:-2]
    pb = [((None, 1),)] * (lead_rank - len(b[:-2])) + b[:-2]
    lead = []
    for fa, fb in zip(pa, pb):
        if _size(fa) == 1 and not _labelled(fa):
            lead.append(fb)
        elif _size(fb) == 1 and not _labelled(fb) or fa == fb:
            lead.append(fa)
        else:
            raise _NotAttention(f"batch_matmul {node.name} pairs heads with something else")
    return lead + [a[-2], b[-1]]


def _check_contained(graph: Graph, start: int, stop: int) -> None:
    """Every tensor made inside the block but its output is read only inside it."""
    for j in range(start, stop - 1):
        for t in graph.nodes[j].outputs:
            if t in graph.outputs or any(not start <= c < stop for c in graph.consumers(t)):
                raise _NotAttention(f"tensor {t!r} of the block is read outside it")


@functools.lru_cache(maxsize=4096)
def attention_block(graph: Graph, start: int) -> AttentionBlock | None:
    """The attention block starting at dense node `start` (its first Q/K/V projection), or None."""
    node = graph.nodes[start]
    if node.op != "dense":
        return None
    cols = node.weight_shapes["kernel"][1]
    for fused in (True, False):
        for heads in sorted((d for d in range(2, cols + 1) if cols % d == 0), reverse=True):
            try:
                return _trace(graph, start, heads, fused)
            except _NotAttention:
                continue
    return None


def why_not_attention(graph: Graph, start: int) -> str:
    """Why node `start` starts no attention block: the reason of the trace (over every head count, fused
    projection or not) that got furthest before it stopped."""
    node = graph.nodes[start]
    if node.op != "dense":
        return f"{node.name} is a {node.op} node, not a Q/K/V projection"
    cols = node.weight_shapes["kernel"][1]
    best: tuple | None = None
    for fused in (True, False):
        for heads in sorted((d for d in range(2, cols + 1) if cols % d == 0), reverse=True):
            try:
                _trace(graph, start, heads, fused)
            except _NotAttention as exc:
                if best is None or getattr(exc, "at", start) > best[0]:
                    best = (getattr(exc, "at", start), str(exc))
    return best[1] if best else f"its {cols} columns hold no heads"


# --- parts ---------------------------------------------------------------------------------------------

class _Builder(PartBuilder):
    def view_node(self, name: str, op: str, inputs, attrs: dict, source: str, boxes: dict, shapes: dict, output: str | None = None) -> str:
        """PartBuilder.node with weights whose boxes are cut from a view of the source weight (the fused
        projection's (C, 3, H, D)); `shapes` are the part's weight shapes."""
        boxes = {p: tuple((int(a), int(b)) for a, b in box) for p, box in boxes.items()}
        out = output or name
        node = Node(name, op, list(inputs), [out], dict(attrs), {p: tuple(shapes[p]) for p in boxes})
        spec = spec_of(op)
        in_shapes = [self.shapes[t] for t in inputs]
        (out_shape,) = spec.infer(in_shapes, node.attrs, node.weight_shapes)
        self.shapes[out] = tuple(int(s) for s in out_shape)
        self.flops += int(spec.flops(in_shapes, [self.shapes[out]], node.attrs, node.weight_shapes))
        self.weight_params += sum(numel(s) for s in node.weight_shapes.values())
        self.nodes.append(PartNode(node, source, tuple(boxes.items())))
        return out


def plan_heads(graph: Graph, block: AttentionBlock, sizes: tuple) -> tuple[Layout, dict]:
    """Part p runs the block on heads sum(sizes[:p]) + [0, sizes[p]); returns the layout and the weight
    views {(source node, param): view shape} the part graphs are sliced through."""
    nodes = graph.nodes[block.start:block.stop]
    out_node = nodes[-1]
    out_shape = graph.shapes[out_node.outputs[0]]
    partial = f"{out_node.outputs[0]}/partial"
    d, heads = block.head_dim, block.heads
    views: dict = {}
    parts = []
    h0 = 0
    for p, h in enumerate(sizes):
        h1 = h0 + h
        b = _Builder(p, h)
        x_shape = graph.shapes[block.x]
        x = b.feed(block.x, block.x, full_box(x_shape[1:]), x_shape[0])  # axis 0: a sequence after batch-1 nodes
        names = {block.x: x}
        for t in block.extra_inputs:
            names[t] = b.feed(t, t, full_box(graph.shapes[t][1:]), graph.shapes[t][0])
        for node in nodes:
            ins = [names[t] for t in node.inputs]
            fac = block.factors.get(node.outputs[0])
            attrs = dict(node.attrs)
            boxes = {q: full_box(s) for q, s in node.weight_shapes.items()}
            shapes = dict(node.weight_shapes)
            output = None
            if node.op == "dense" and node is not out_node:  # a projection: its heads' columns
                cin, cols = node.weight_shapes["kernel"]
                lead = (3,) if block.fused else ()
                view = (cin, *lead, heads, cols // (math.prod(lead) * heads))
                views[(node.name, "kernel")] = view
                boxes["kernel"] = ((0, cin), *[(0, v) for v in lead], (h0, h1), (0, view[-1]))
                shapes["kernel"] = (cin, math.prod(lead) * h * view[-1])
                if "bias" in node.weight_shapes:
                    views[(node.name, "bias")] = view[1:]
                    boxes["bias"] = boxes["kernel"][1:]
                    shapes["bias"] = (shapes["kernel"][1],)
            elif node is out_node:  # the output projection: its heads' rows, the bias on part 0
                cout = node.weight_shapes["kernel"][1]
                boxes["kernel"] = ((h0 * d, h1 * d), (0, cout))
                shapes["kernel"] = (h * d, cout)
                if "bias" in node.weight_shapes and p > 0:
                    del boxes["bias"], shapes["bias"]
                output = partial
            elif node.op == "constant" and node.outputs[0] in block.head_constants:  # its heads' slice
                boxes["value"] = _heads_box(block, node, h0, h1, tuple(node.weight_shapes["value"]), block.head_constants[node.outputs[0]])
                shapes["value"] = tuple(b1 - b0 for b0, b1 in boxes["value"])
            elif node.op in ("mul", "add", "sub") and "constant" in node.weight_shapes:
                boxes["constant"] = _heads_box(block, node, h0, h1)
                shapes["constant"] = tuple(b1 - b0 for b0, b1 in boxes["constant"])
            elif node.op == "reshape":
                dims = _sizes(fac, h)
                attrs["shape"] = dims[1:]
                if attrs.get("batch1"):
                    attrs["full_shape"] = dims
            elif node.op == "strided_slice":
                in_fac = block.factors[node.inputs[0]]
                ranges = _slice_ranges(node, len(in_fac))
                counts = [(_size(f[1:], h) if _is_chunk(f, r) else r[2] if r is not None and tuple(r) != (0, 1, _size(f))
                           else _size(f, h)) for f, r in zip(in_fac, ranges)]
                starts = [(r[0] // r[2] * _size(f[1:], h) if _is_chunk(f, r) else r[0] if r is not None else 0)
                          for f, r in zip(in_fac, ranges)]
                if any(_is_chunk(f, r) for f, r in zip(in_fac, ranges)):
                    attrs["starts"] = starts if attrs.get("batch1") else starts[1:]
                dims = _sizes(fac, h)
                attrs["counts"] = counts if attrs.get("batch1") else counts[1:]
                attrs["out_shape"] = dims if attrs.get("batch1") else dims[1:]
            if attrs.get("batch1") and "axis0" in attrs:
                attrs["axis0"] = _size(block.factors[node.inputs[0]][0], h)
            names[node.outputs[0]] = b.view_node(node.name, node.op, ins, attrs, node.name, boxes, shapes, output)
        parts.append(b.finish(partial, full_box(out_shape[1:])))
        h0 = h1
    return Layout(tuple(parts), "sum", None), views


def split_heads(graph: Graph, start: int, sizes, last: str | None, split_class):
    """The head-parallel split of the attention block starting at node `start` (see the module), as an
    instance of a subclass of `split_class` (partitioners.splits.Split)."""
    from .split_sizes import resolve_sizes

    layer = graph.nodes[start].name
    block = attention_block(graph, start)
    if block is None:
        raise PisplitError(f"layer {layer}: {HEADS_KIND} needs an attention block starting at this projection "
                           f"({why_not_attention(graph, start)})")
    if last is not None and graph.node_index(last) != block.stop - 1:
        raise PisplitError(f"layer {layer}: {HEADS_KIND} covers the whole block through {graph.nodes[block.stop - 1].name}, "
                           f"not through {last}")
    sizes_ = resolve_sizes(block.heads, sizes, layer, "attention heads")
    layout, views = plan_heads(graph, block, sizes_)
    return head_split_class(split_class)(graph, HEADS_KIND, layer, block.start, block.stop, tuple(sizes_), layout, {}, views=views)


def _uncached(weights: Mapping) -> Mapping:
    # as splits._uncached: a seeded mapping read without its cache, so only the slices stay in memory
    if isinstance(weights, SeededWeights) and weights._cache is not None:
        return SeededWeights(weights.specs, weights.seed, cache=False)
    return weights


def _head_split_class(Split):
    @dataclass(frozen=True)
    class HeadSplit(Split):
        """An attn-heads Split: partial sums of the output projection (merge 'sum', no post graph);
        the projections' weights are cut through `views` {(node, param): view shape}."""

        views: dict = field(default_factory=dict, repr=False, compare=False)

        @property
        def partial_shape(self) -> tuple:
            return self.output_shape

        def run(self, x, engine: str = "numpy") -> np.ndarray:
            """Split.run; a block fed by a sequence (a feed whose axis 0 is not frames) runs as one frame."""
            if not any(f.axis0 != 1 for p in self.parts for f in p.feeds):
                return super().run(x, engine)
            from layers.engine import make_engine

            outputs = []
            for p in range(self.n_parts):
                g = self.part_graph(p)
                outputs.append(make_engine(g, engine).run(self.slice_input(x, p))[g.outputs[0]])
            return self.merge(outputs)

        def _graph_of(self, plan, suffix: str, weights: Mapping | None) -> Graph:
            base = _uncached(self.graph.weights if weights is None else weights)
            sliced = {}
            for pn in plan.nodes:
                for param, box in pn.weight_boxes:
                    key = f"{pn.source}/{param}"
                    try:
                        full = np.asarray(base[key], np.float32)
                    except KeyError:
                        raise PisplitError(f"model {self.graph.name}: weight {key!r} is missing") from None
                    view = self.views.get((pn.source, param), full.shape)
                    shape = pn.node.weight_shapes[param]
                    if box == full_box(full.shape) and full.flags.c_contiguous:
                        sliced[pn.node.weight_key(param)] = full  # shared, not copied
                    else:
                        sliced[pn.node.weight_key(param)] = np.array(full.reshape(view)[box_index(box, batch=False)],
                                                                     order="C", copy=True).reshape(shape)
            return Graph(f"{self.graph.name}:{self.layer}:{self.kind}:{suffix}", {f.name: f.shape for f in plan.feeds},
                         [pn.node for pn in plan.nodes], [plan.output], sliced,
                         {"split": {"kind": self.kind, "layer": self.layer, "part": suffix, "of": self.n_parts}})

    return HeadSplit


@functools.cache
def head_split_class(split_class):
    """The Split subclass of attn-heads, made from partitioners.splits.Split, which splits.split_layer passes
    in (this module never imports splits: splits imports it)."""
    return _head_split_class(split_class)
