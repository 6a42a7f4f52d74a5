"""The records a split is made of: what each part receives, runs and sends, and what that costs.

A part's work is described with shapes only (no weights): its feeds (boxes cut from the segment's
input tensors), its nodes (copies of the segment's nodes with sliced weight shapes and adjusted
attributes, each naming the weight box it takes from the full node) and the box its output fills in
the merged output. Boxes are tuples of half-open (start, stop) pairs, one per axis after the batch
axis for tensors and one per axis for weights. `PartBuilder` assembles a part and counts its costs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from layers.graph import DTYPE_BYTES, Node
from layers.ops import numel, spec_of

from .vocabulary import SplitKind

SPLIT_KINDS = tuple(SplitKind)  # partitioners.vocabulary: each member equals its string ("fc-output", ...)
# How the segment input reaches the parts, and how the part outputs come back together.
INPUT_PATTERNS = ("broadcast", "scatter")
OUTPUT_PATTERNS = ("gather", "reduce", "allgather", "allreduce")


def box_shape(box: Sequence[tuple]) -> tuple:
    """Extent of a box: ((0, 3), (2, 5)) -> (3, 3)."""
    return tuple(int(b) - int(a) for a, b in box)


def full_box(shape: Sequence[int]) -> tuple:
    """The box covering a whole shape: (4, 5) -> ((0, 4), (0, 5))."""
    return tuple((0, int(s)) for s in shape)


def box_index(box: Sequence[tuple], batch: bool = True) -> tuple:
    """Numpy index of a box; with `batch` a leading full slice covers the batch axis."""
    index = tuple(slice(int(a), int(b)) for a, b in box)
    return (slice(None), *index) if batch else index


@dataclass(frozen=True)
class Feed:
    """One input of a part graph: tensor `name` there is the `box` of segment input `tensor`."""

    name: str
    tensor: str
    box: tuple
    # axis 0's size for one frame: 1 (the batch), or a sequence length where a converter's batch-1 node
    # made axis 0 a data axis (issue 19); the part always receives that axis whole
    axis0: int = 1

    @property
    def shape(self) -> tuple:
        """Static shape in the part graph (one frame: batch 1)."""
        return (self.axis0, *box_shape(self.box))

    def take(self, x: np.ndarray) -> np.ndarray:
        """The box of `x` (any batch size), as a view."""
        return x[box_index(self.box)]


@dataclass(frozen=True)
class PartNode:
    """A node of a part graph; its weights are boxes of the weights of node `source` of the full graph."""

    node: Node
    source: str
    weight_boxes: tuple  # ((param, box), ...)


@dataclass(frozen=True)
class PartCost:
    """Per-frame costs of one part. Bytes are float32 bytes; recv/send count the part as remote.

    For data-parallel, flops and bytes are per frame the part processes and `frame_share` is the
    fraction of the frames it gets; for every other kind the share is 1.
    """

    index: int
    size: int
    flops: int
    weight_bytes: int
    recv_bytes: int
    send_bytes: int
    frame_share: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SplitCost:
    """What a split costs, per frame, without any weight materialised: the planner's input."""

    kind: str
    layer: str
    nodes: tuple  # names of the segment's nodes, in order
    node_start: int
    node_stop: int
    sizes: tuple
    input_pattern: str
    output_pattern: str
    parts: tuple  # PartCost per part
    unsplit_flops: int
    unsplit_weight_bytes: int
    input_bytes: int
    output_bytes: int
    merge_flops: int  # work left for the root after the merge (bias/activation after a reduce)

    @property
    def n_parts(self) -> int:
        return len(self.parts)

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["parts"] = [p.to_dict() for p in self.parts]
        return doc


@dataclass(frozen=True)
class PartPlan:
    """One part: feeds, nodes and where its output lands. `output_box` is over the merged output."""

    index: int
    size: int
    feeds: tuple
    nodes: tuple
    output: str
    output_shape: tuple
    output_box: tuple
    flops: int
    weight_bytes: int

    @property
    def recv_bytes(self) -> int:
        return sum(numel(f.shape) for f in self.feeds) * DTYPE_BYTES

    @property
    def send_bytes(self) -> int:
        return numel(self.output_shape) * DTYPE_BYTES


class PartBuilder:
    """Assembles one part from shapes: feeds, then nodes in order; counts FLOPs and weight bytes."""

    def __init__(self, index: int, size: int):
        self.index = index
        self.size = size
        self.shapes: dict[str, tuple] = {}
        self.feeds: list[Feed] = []
        self.nodes: list[PartNode] = []
        self.flops = 0
        self.weight_params = 0

    def feed(self, name: str, tensor: str, box: Sequence[tuple], axis0: int = 1) -> str:
        """Declare an input of the part: the `box` of segment input `tensor`; returns `name`."""
        f = Feed(name, tensor, tuple((int(a), int(b)) for a, b in box), int(axis0))
        self.feeds.append(f)
        self.shapes[name] = f.shape
        return name

    def node(self, name: str, op: str, inputs: Sequence[str], attrs: dict, source: str,
             weight_boxes: dict | None = None, output: str | None = None) -> str:
        """Append a node reading part tensors `inputs`; its weights are boxes of `source`'s weights."""
        weight_boxes = {p: tuple((int(a), int(b)) for a, b in box) for p, box in (weight_boxes or {}).items()}
        weight_shapes = {p: box_shape(box) for p, box in weight_boxes.items()}
        out = output or name
        node = Node(name, op, list(inputs), [out], dict(attrs), weight_shapes)
        spec = spec_of(op)
        in_shapes = [self.shapes[t] for t in inputs]
        (out_shape,) = spec.infer(in_shapes, node.attrs, weight_shapes)
        self.shapes[out] = tuple(int(s) for s in out_shape)
        self.flops += int(spec.flops(in_shapes, [self.shapes[out]], node.attrs, weight_shapes))
        self.weight_params += sum(numel(s) for s in weight_shapes.values())
        self.nodes.append(PartNode(node, source, tuple(weight_boxes.items())))
        return out

    def finish(self, output: str, output_box: Sequence[tuple]) -> PartPlan:
        """The finished part; `output` is its result tensor, `output_box` where it goes in the merge."""
        return PartPlan(self.index, self.size, tuple(self.feeds), tuple(self.nodes), output, self.shapes[output],
                        tuple((int(a), int(b)) for a, b in output_box), self.flops, self.weight_params * DTYPE_BYTES)


@dataclass(frozen=True)
class Layout:
    """How a segment is cut: its parts, how their outputs merge ('concat', 'sum' or 'frames') and the
    work left for the root after a sum (`post`, a part whose single feed is the summed tensor)."""

    parts: tuple
    merge: str
    post: PartPlan | None = None


class FeedNames:
    """Unique part-graph names for boxes of segment inputs: the tensor's own name first, then name#k."""

    def __init__(self, builder: PartBuilder, shapes: dict | None = None):
        self.builder = builder
        self.known: dict[tuple, str] = {}
        self.shapes = shapes  # the graph's shapes: a feed's axis 0 keeps its size for one frame

    def __call__(self, tensor: str, box: Sequence[tuple]) -> str:
        key = (tensor, tuple((int(a), int(b)) for a, b in box))
        if key not in self.known:
            name = tensor if tensor not in self.builder.shapes else f"{tensor}#{len(self.known)}"
            axis0 = self.shapes[tensor][0] if self.shapes is not None else 1
            self.known[key] = self.builder.feed(name, tensor, key[1], axis0)
        return self.known[key]
