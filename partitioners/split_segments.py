"""Segments: a primary node plus the followers that keep its split without communication.

A follower continues a chain: it is the next node in the order, it reads the running tensor, and the
running tensor has no other reader and is not a graph output. Its other inputs (the second operand of
an element-wise add, say) come from before the segment and are cut like the running tensor. Which ops
may follow depends on the axis being cut: channels (fc-output, conv-channel) or spatial axes
(conv-spatial, fused-tiles). Reduce kinds (fc-input, conv-filter) take no followers: nothing after
their sum is split.
"""
from __future__ import annotations

import weakref
from typing import Callable

from layers.errors import PisplitError
from layers.graph import Graph

POINTWISE_OPS = ("relu", "relu6", "sigmoid", "tanh", "dropout", "gelu")
ELEMENTWISE_OPS = ("add", "mul")
POOL_OPS = ("max_pool2d", "max_pool3d", "avg_pool2d", "avg_pool3d")
CONV_OPS = ("conv2d", "conv3d")
# Spatial ops a band or tile can run through, given its halo.
WINDOW_OPS = POOL_OPS + ("pad",)

_consumer_cache: "weakref.WeakKeyDictionary[Graph, dict]" = weakref.WeakKeyDictionary()


def consumers(graph: Graph) -> dict[str, list[int]]:
    """tensor -> indices of the nodes reading it (computed once per graph)."""
    found = _consumer_cache.get(graph)
    if found is None:
        found = {}
        for i, node in enumerate(graph.nodes):
            for t in dict.fromkeys(node.inputs):
                found.setdefault(t, []).append(i)
        _consumer_cache[graph] = found
    return found


def chain_next(graph: Graph, index: int) -> int | None:
    """The node continuing the chain after node `index`, or None where the chain ends."""
    node = graph.nodes[index]
    if len(node.outputs) != 1:
        return None
    t = node.outputs[0]
    nxt = index + 1
    if nxt >= len(graph.nodes) or t in graph.outputs or consumers(graph).get(t) != [nxt]:
        return None
    if len(graph.nodes[nxt].outputs) != 1:
        return None
    return nxt


def is_depthwise(graph: Graph, index: int) -> bool:
    """A conv whose every group is one input channel (groups == input channels)."""
    node = graph.nodes[index]
    if node.op not in CONV_OPS:
        return False
    cin = graph.shapes[node.inputs[0]][-1]
    return int(node.attrs.get("groups", 1)) == cin and node.weight_shapes["kernel"][-2] == 1


def _other_inputs(graph: Graph, index: int, running: str) -> list[str]:
    return [t for t in graph.nodes[index].inputs if t != running]


def channel_follower(graph: Graph, index: int, running: str) -> bool:
    """Whether node `index` can keep a channel (last-axis) split of `running` with no communication."""
    node = graph.nodes[index]
    shape = graph.shapes[running]
    c = shape[-1]
    if node.op in POINTWISE_OPS or node.op in ("batch_norm", "prelu"):
        return True
    if node.op in ELEMENTWISE_OPS:
        return graph.shapes[node.outputs[0]] == shape and all(
            len(graph.shapes[t]) == len(shape) and graph.shapes[t][-1] in (c, 1) for t in _other_inputs(graph, index, running))
    if node.op in POOL_OPS or node.op == "global_avg_pool":
        return len(shape) >= 3
    if node.op == "pad":
        return tuple(node.attrs["paddings"][-1]) == (0, 0)
    return is_depthwise(graph, index) and not is_hybrid(graph, index)  # a hybrid one quantizes all its channels at once


def is_hybrid(graph: Graph, index: int) -> bool:
    """A dynamic-range layer: a float conv / dense whose int8 filter the graph quantizes (LiteRT quantizes its
    input on the fly, over the whole image for a depthwise one, so a part holding some channels differs)."""
    node = graph.nodes[index]
    return not node.attrs.get("quantized") and "kernel" in node.weight_shapes and node.weight_key("kernel") in graph.quant


def spatial_follower(graph: Graph, index: int, running: str, axes: tuple, allow_conv: bool) -> bool:
    """Whether node `index` can keep a split of `running` on tensor `axes` (with halos, no communication).

    Full convolutions qualify only inside fused tiles (`allow_conv`); conv-spatial takes depthwise ones.
    """
    node = graph.nodes[index]
    shape = graph.shapes[running]
    if len(shape) < 4:
        return False
    if node.op in POINTWISE_OPS or node.op in ("batch_norm", "lrn"):
        return True
    if node.op == "softmax":
        return int(node.attrs.get("axis", -1)) in (-1, len(shape) - 1)
    if node.op == "prelu":
        alpha = (1,) * (len(shape) - 1 - len(node.weight_shapes["alpha"])) + tuple(node.weight_shapes["alpha"])
        return all(alpha[a - 1] == 1 for a in axes)
    if node.op in ELEMENTWISE_OPS:
        # the running tensor must not be the one broadcast, so the output keeps its bands
        return graph.shapes[node.outputs[0]] == shape and all(
            len(graph.shapes[t]) == len(shape) for t in _other_inputs(graph, index, running))
    if node.op in WINDOW_OPS:
        return True
    if node.op in CONV_OPS:
        return allow_conv or is_depthwise(graph, index)
    return False


def spatial_region(graph: Graph, start: int, stop: int, axes: tuple) -> str | None:
    """Why nodes [start, stop) are not a fused-tiles region on tensor `axes`, or None when they are.

    A region is a chain's generalisation that a residual block with a projection shortcut satisfies:
    every node has one output and is a spatial op (spatial_follower, full convolutions allowed, its
    first input as the running tensor); every tensor made inside but the last node's output is read
    inside only, by exactly one node, and is not a model output. Tensors from before the region may
    be read by several of its nodes (each reads its own box: the block's input feeds both the
    shortcut and the main path).
    """
    inside = {}
    readers = consumers(graph)
    nodes = range(start, stop)
    for j in nodes:
        node = graph.nodes[j]
        if len(node.outputs) != 1:
            return f"{node.name} has {len(node.outputs)} outputs"
        inside[node.outputs[0]] = j
    for j in nodes:
        node = graph.nodes[j]
        if not spatial_follower(graph, j, node.inputs[0], axes, True):
            return f"{node.name} ({node.op}) cannot keep a split of its rows"
        t = node.outputs[0]
        if j == stop - 1:
            continue
        if t in graph.outputs or len(readers.get(t, [])) != 1 or not start <= readers[t][0] < stop:
            return f"{t} is read outside the region or by several of its nodes"
    return None


def chain_stop(graph: Graph, start: int, accept: Callable[[Graph, int, str], bool]) -> int:
    """End (exclusive) of the longest chain from node `start` whose followers `accept` takes."""
    stop = start + 1
    while True:
        nxt = chain_next(graph, stop - 1)
        if nxt is None or not accept(graph, nxt, graph.nodes[stop - 1].outputs[0]):
            return stop
        stop = nxt + 1


def run_stop(graph: Graph, start: int, last: str, accept: Callable[[Graph, int, str], bool], kind: str) -> int:
    """End (exclusive) of the run from node `start` through node `last`; every node on the way must
    continue the chain and be accepted. Raises PisplitError naming the node that breaks the run."""
    first = graph.nodes[start].name
    stop_index = graph.node_index(last)
    if stop_index < start:
        raise PisplitError(f"layer {first}: {kind} run end {last} comes before it in the model")
    for i in range(start, stop_index):
        nxt = chain_next(graph, i)
        if nxt is None:
            raise PisplitError(f"layer {first}: {kind} run to {last} breaks after {graph.nodes[i].name} "
                               "(its output has other readers or is a model output)")
        if not accept(graph, nxt, graph.nodes[i].outputs[0]):
            raise PisplitError(f"layer {first}: {kind} run to {last} cannot pass {graph.nodes[nxt].name} "
                               f"({graph.nodes[nxt].op})")
    return stop_index + 1
