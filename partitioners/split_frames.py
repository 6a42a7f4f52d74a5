"""Data parallelism: every part holds the whole segment and gets whole frames, dealt by share."""
from __future__ import annotations

from layers.errors import PisplitError
from layers.graph import Graph

from .split_parts import FeedNames, Layout, PartBuilder, full_box


def range_io(graph: Graph, start: int, stop: int) -> tuple[list[str], list[str]]:
    """Tensors nodes [start, stop) read from before `start`, and tensors they make that live past `stop`."""
    made = {t for n in graph.nodes[start:stop] for t in n.outputs}
    reads = list(dict.fromkeys(t for n in graph.nodes[start:stop] for t in n.inputs if t not in made))
    live = set(graph.cut_tensors(stop))
    outs = [t for n in graph.nodes[start:stop] for t in n.outputs if t in live]
    return reads, outs


def plan_frames(graph: Graph, start: int, stop: int, shares: tuple, layer: str) -> Layout:
    """data-parallel: each part runs nodes [start, stop) whole on the frames dealt to it.

    Example, shares (0.5, 0.5) and frames f0..f3: part 0 runs f0 and f2, part 1 f1 and f3; the merge
    puts the four results back in frame order.
    """
    reads, outs = range_io(graph, start, stop)
    if len(outs) != 1:
        raise PisplitError(f"layer {layer}: a data-parallel segment needs exactly one output tensor, "
                           f"nodes {graph.nodes[start].name}..{graph.nodes[stop - 1].name} leave {outs}")
    out = outs[0]
    sequences = [t for t in reads if graph.shapes[t][0] != 1]
    if sequences and len(shares) > 1:  # issue 19: axis 0 there is a sequence of one frame, not frames
        raise PisplitError(f"layer {layer}: data-parallel deals frames, and input {sequences[0]!r} {graph.shapes[sequences[0]]} "
                           "holds one frame's sequence on axis 0 (a batch-1 node moved the batch axis)")
    parts = []
    for p, _share in enumerate(shares):
        b = PartBuilder(p, 1)
        feeds = FeedNames(b, graph.shapes)
        names = {t: feeds(t, full_box(graph.shapes[t][1:])) for t in reads}
        for node in graph.nodes[start:stop]:
            boxes = {q: full_box(s) for q, s in node.weight_shapes.items()}
            b.node(node.name, node.op, [names.get(t, t) for t in node.inputs], node.attrs, node.name, boxes, node.outputs[0])
        parts.append(b.finish(out, full_box(graph.shapes[out][1:])))
    return Layout(tuple(parts), "frames")
