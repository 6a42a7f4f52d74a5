"""Layouts: how a tensor lives across ranks between the segments of a split stage, and what it costs
to move it from the layout its producer leaves to the layout its consumer needs.

A layout is a set of pieces, each a box of the tensor (half-open (start, stop) per axis after the
batch axis) held by one rank. The lead's whole tensor is one piece, `whole@r`. A concat split
(fc-output, conv-channel, conv-spatial, fused-tiles) that keeps its output on its parts leaves one
piece per part, its output box: row strips, channel slices or tiles. A consumer states what it needs
the same way: one box per rank (its feeds, halos included). The transition between the two is the
set of intersections: rank p sends rank q the part of its piece that q's box needs, peer to peer,
and nothing else moves. So strips that agree exchange only halo rows with their neighbours,
fc-output -> fc-input (and conv-channel -> conv-filter) with equal sizes move nothing, a gather is
the transition to `whole@lead`, a scatter the one from it, and anything else is a sized all-gather.

Example, 8 rows in strips [0, 4) on rank 1 and [4, 8) on rank 2, consumed by a 3x3 'same' conv in
the same strips: rank 1 needs rows [0, 5), rank 2 rows [3, 8): rank 2 sends row 4 to rank 1 and
rank 1 sends row 3 to rank 2 (two messages of one row each); everything else stays.

Sum kinds (fc-input, conv-filter) leave partial sums, which are always reduced to the lead; a
segment keeps its output on its parts only when the next segment of the stage reads it and nothing
after that needs it whole (`check_kept_output`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from layers.errors import PisplitError
from layers.graph import DTYPE_BYTES, Graph
from layers.ops import numel

from .split_parts import box_shape, full_box
from .vocabulary import NO_SPLIT, SplitKind

# kinds whose parts' outputs are disjoint boxes of the output (may stay on their ranks)
KEEPABLE_KINDS = ("fc-output", "conv-channel", "conv-spatial", "fused-tiles")
OUTPUT_LAYOUTS = ("lead", "parts")  # a plan segment's `output_layout`


@dataclass(frozen=True)
class Piece:
    """Box `box` of a tensor (axes after the batch axis), held by `rank`."""

    rank: int
    box: tuple


@dataclass(frozen=True)
class TensorLayout:
    """Where the pieces of tensor `tensor` (non-batch shape `shape`) live."""

    tensor: str
    shape: tuple
    pieces: tuple

    def describe(self) -> str:
        """Short text: 'whole@0', 'rows[0:4|4:8]@1,2', 'channels[0:32|32:64]@0,1', 'tiles[...]@...'."""
        return describe_pieces(self.shape, self.pieces)


@dataclass(frozen=True)
class Message:
    """Box `box` (tensor coordinates) of tensor `tensor` from rank `src` to rank `dst` (a local copy
    when they are the same rank)."""

    src: int
    dst: int
    tensor: str
    box: tuple
    value_bytes: int = DTYPE_BYTES  # bytes a value: the tensor's dtype's (1 for int8 activations, issue 12)

    @property
    def nbytes(self) -> int:
        return numel(box_shape(self.box)) * self.value_bytes


def describe_pieces(shape: Sequence[int], pieces: Sequence[Piece]) -> str:
    """Text for a set of pieces; the axis named is the one the pieces differ on."""
    ranks = ",".join(str(p.rank) for p in pieces)
    if len(pieces) == 1 and pieces[0].box == full_box(shape):
        return f"whole@{ranks}"
    cut = [a for a in range(len(shape)) if len({p.box[a] for p in pieces}) > 1]
    if len(cut) == 1:
        a = cut[0]
        if a == len(shape) - 1:
            name = "channels"  # also the features of a 1-D (fc) tensor
        elif a == 0:
            name = "depth" if len(shape) == 4 else "rows"  # NDHWC: the first axis after batch is depth
        else:
            name = "rows" if len(shape) == 4 and a == 1 else f"axis{a + 1}"
        spans = "|".join(f"{p.box[a][0]}:{p.box[a][1]}" for p in pieces)
        return f"{name}[{spans}]@{ranks}"
    return f"tiles[{len(pieces)}]@{ranks}"


def whole(tensor: str, shape: Sequence[int], rank: int) -> TensorLayout:
    """The layout of a tensor held whole by `rank` (shape without the batch axis)."""
    shape = tuple(int(s) for s in shape)
    return TensorLayout(tensor, shape, (Piece(rank, full_box(shape)),))


def produced(split, ranks: Sequence[int]) -> TensorLayout:
    """The layout a concat split leaves when its parts keep their outputs: part p's output box on
    `ranks[p]`. Raises PisplitError for sum kinds and data-parallel (their outputs are not boxes)."""
    if split.kind not in KEEPABLE_KINDS or split.layout.merge != "concat":
        raise PisplitError(f"tensor {split.output}: a {split.kind} split cannot keep its output on its parts "
                           f"(only {', '.join(KEEPABLE_KINDS)} leave disjoint boxes)")
    shape = tuple(split.output_shape[1:])
    return TensorLayout(split.output, shape, tuple(Piece(int(r), p.output_box) for r, p in zip(ranks, split.parts)))


def needed(split, ranks: Sequence[int], tensor: str) -> tuple:
    """What the parts of `split` on `ranks` need of segment input `tensor`: (Piece, feed name) per feed."""
    return tuple((Piece(int(r), f.box), f.name) for r, p in zip(ranks, split.parts) for f in p.feeds if f.tensor == tensor)


def _intersect(a: tuple, b: tuple) -> tuple | None:
    box = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b))
    return box if all(lo < hi for lo, hi in box) else None


def transition(have: TensorLayout, need: Sequence[Piece], value_bytes: int = DTYPE_BYTES) -> list[Message]:
    """The messages that give every needed piece its box from the pieces `have` holds.

    A rank whose own piece covers its need copies locally; otherwise each holder sends its
    intersection. Raises PisplitError naming the tensor when the pieces do not cover a need (a
    hand-edited plan whose strips miss rows, or a halo beyond the tensor). `value_bytes`: bytes a value
    of the tensor, for the messages' sizes (the tensor's dtype's: segment_chains.value_bytes).
    """
    messages = []
    for want in need:
        if len(want.box) != len(have.shape) or any(not 0 <= lo <= hi <= s for (lo, hi), s in zip(want.box, have.shape)):
            raise PisplitError(f"tensor {have.tensor}: rank {want.rank} needs box {list(want.box)}, outside its shape {list(have.shape)}")
        if numel(box_shape(want.box)) == 0:
            continue  # a part that reads only padding needs nothing
        local = [p for p in have.pieces if p.rank == want.rank and _intersect(p.box, want.box) == want.box]
        if local:
            messages.append(Message(want.rank, want.rank, have.tensor, want.box, value_bytes))
            continue
        covered = 0
        for p in have.pieces:
            box = _intersect(p.box, want.box)
            if box is not None:
                messages.append(Message(p.rank, want.rank, have.tensor, box, value_bytes))
                covered += numel(box_shape(box))
        if covered != numel(box_shape(want.box)):
            raise PisplitError(f"tensor {have.tensor}: layout {have.describe()} does not cover box {list(want.box)} "
                               f"that rank {want.rank} needs (pieces overlap or leave a gap)")
    return messages


def transition_seconds(messages: Sequence[Message], bandwidth_bps: float, latency_s: float = 0.0) -> float:
    """Time to deliver `messages` on full-duplex links through a switch: each rank's interface sends
    its messages one after the other and receives its messages one after the other, at the same
    time; the slowest interface sets the time. Local copies are free."""
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    for m in messages:
        if m.src == m.dst:
            continue
        t = latency_s + m.nbytes * 8.0 / bandwidth_bps
        sent[m.src] = sent.get(m.src, 0.0) + t
        received[m.dst] = received.get(m.dst, 0.0) + t
    return max([0.0, *sent.values(), *received.values()])


def check_kept_output(graph: Graph, segments: Sequence, index: int) -> None:
    """A segment that keeps its output on its parts (`output_layout` 'parts') must be a concat split
    whose output is read by later segments of its stage, every one of them split (each takes what
    it needs from the parts, peer to peer: the next segment, or one further on, as a residual
    block's add reads the block's input), and that nothing after the stage needs. Raises
    PisplitError naming the tensor otherwise."""
    seg = segments[index]
    node = graph.nodes[seg.node_stop - 1]
    tensor = node.outputs[0]
    if seg.kind not in KEEPABLE_KINDS:
        raise PisplitError(f"tensor {tensor}: segment at node {seg.node_start} ({seg.kind}) cannot keep its output on its "
                           f"parts (output_layout 'parts' needs one of {', '.join(KEEPABLE_KINDS)})")
    readers = [g for g in segments[index + 1:] if tensor in {t for n in graph.nodes[g.node_start:g.node_stop] for t in n.inputs}]
    if index + 1 >= len(segments) or (segments[index + 1].kind in (NO_SPLIT, SplitKind.DATA_PARALLEL) and segments[index + 1] in readers):
        raise PisplitError(f"tensor {tensor}: kept on the parts of the segment at node {seg.node_start}, "
                           "but the next segment of the stage is not split (output_layout must be 'lead')")
    if not readers:
        raise PisplitError(f"tensor {tensor}: kept on its parts, but no later segment of the stage "
                           f"(from node {segments[index + 1].node_start}) reads it")
    for g in readers:
        if g.kind in (NO_SPLIT, SplitKind.DATA_PARALLEL):
            raise PisplitError(f"tensor {tensor}: kept on the parts of the segment at node {seg.node_start}, but the segment "
                               f"at node {g.node_start} that reads it is not split (output_layout must be 'lead')")
    if tensor in graph.outputs or tensor in graph.cut_tensors(segments[-1].node_stop):
        raise PisplitError(f"tensor {tensor}: kept on its parts, but nodes after node {segments[-1].node_stop} need it whole "
                           "(output_layout must be 'lead')")