"""Execute a split over an MPI communicator: rank r runs part r, the root feeds the parts and merges.

Rank r builds only part r's graph (its own weight slices) and an engine for it. Per frame (batch 1):

1. input: each segment input the parts all need whole is broadcast (Bcast). One they need a box of
   is sent to each part straight from the root's array when every box is one contiguous run of it
   (row bands with halos: Isend, no copy); otherwise (channel slices, tiles) the boxes are packed on
   the root in rank order and scattered (Scatterv). The root's own part reads its boxes in place.
2. compute: every rank runs its part graph.
3. output: concatenated parts are gathered (Gatherv): straight into the merged array when each part's
   box is one contiguous run of it (row bands), else packed and then placed. Partial sums are reduced
   (Reduce) when each covers the whole output, else gathered and added into their channel boxes
   (grouped conv-filter). The root then runs the post graph (activation, followers).

data-parallel is frame-wise instead: frames are dealt by share; the root sends each frame to its part
(Isend), every part runs its frames whole and sends the results back, the root keeps frame order.
Everything goes through cluster.transport; the communicator is passed in (COMM_SELF in tests).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from layers.engine import make_engine
from layers.errors import PisplitError
from layers.graph import Graph
from layers.ops import numel
from partitioners.split_parts import box_index, box_shape, full_box
from partitioners.splits import Split, split_segment

from . import transport

log = logging.getLogger(__name__)

TAG_FRAME = 7000  # + frame index % TAG_SPAN: data-parallel frames and their results
TAG_SPAN = 20000


@dataclass
class PhaseTimes:
    """Seconds this rank spent per phase, summed over the frames it ran."""

    input_s: float = 0.0
    compute_s: float = 0.0
    output_s: float = 0.0
    post_s: float = 0.0
    frames: int = 0
    compute_each: list = field(default_factory=list)

    def to_array(self) -> np.ndarray:
        return np.array([self.input_s, self.compute_s, self.output_s, self.post_s, self.frames], np.float64)


def contiguous_offset(box: tuple, shape: tuple) -> int | None:
    """Element offset of a box of a C-ordered array of `shape` (non-batch axes) when the box is one
    contiguous run of it, else None. Example: rows (2, 5) of shape (8, 4, 3) -> 24; cols -> None."""
    extents = box_shape(box)
    k = 0
    while k < len(shape) and extents[k] == 1:
        k += 1
    if any(extents[a] != shape[a] for a in range(k + 1, len(shape))):
        return None
    strides = [numel(shape[a + 1:]) for a in range(len(shape))]
    return int(sum(start * s for (start, _), s in zip(box, strides)))


class _Input:
    """How one segment input tensor reaches the parts: broadcast whole; sent as one contiguous view per
    part (row bands of one frame: no copy on the root); or packed in rank order and scattered."""

    TAG = 6000  # + index of the input tensor, for the per-part sends

    def __init__(self, split: Split, index: int, tensor: str, rank: int, root: int):
        self.tensor = tensor
        self.tag = self.TAG + index
        self.shape = split.graph.shapes[tensor]
        self.feeds = [[f for f in p.feeds if f.tensor == tensor] for p in split.parts]
        whole = full_box(self.shape[1:])
        self.broadcast = split.n_parts > 1 and all(len(fs) == 1 and fs[0].box == whole for fs in self.feeds)
        self.views = not self.broadcast and all(
            len(fs) == 1 and contiguous_offset(fs[0].box, self.shape[1:]) is not None
            for r, fs in enumerate(self.feeds) if r != root)
        self.counts = [0 if r == root else sum(numel(f.shape) for f in fs) for r, fs in enumerate(self.feeds)]
        self.rank, self.root = rank, root
        self.packed = None
        if rank == root:
            if not self.broadcast and not self.views:
                self.packed = np.empty(sum(self.counts), np.float32)
            self.buffer = None
        elif self.broadcast:
            self.buffer = np.empty(self.shape, np.float32)
        else:
            self.buffer = np.empty(self.counts[rank], np.float32)

    def exchange(self, comm, x: np.ndarray | None) -> dict[str, np.ndarray]:
        """Collective: this rank's feeds of the tensor (the root passes the tensor, others None)."""
        mine = self.feeds[self.rank]
        if self.broadcast:
            if self.rank == self.root:
                transport.bcast(comm, np.ascontiguousarray(x), self.root)
                return {f.name: x for f in mine}
            transport.bcast(comm, self.buffer, self.root)
            return {f.name: self.buffer for f in mine}
        if self.rank == self.root:
            if self.views:
                x = np.ascontiguousarray(x)
                requests = [transport.isend(comm, np.ascontiguousarray(fs[0].take(x)), r, self.tag)
                            for r, fs in enumerate(self.feeds) if r != self.root]
                transport.wait_all(requests)
                return {f.name: f.take(x) for f in mine}
            offset = 0
            for r, fs in enumerate(self.feeds):
                if r == self.root:
                    continue
                for f in fs:
                    n = numel(f.shape)
                    self.packed[offset:offset + n].reshape(f.shape)[...] = f.take(x)
                    offset += n
            transport.scatterv(comm, self.packed, self.counts, np.empty(0, np.float32), self.root)
            return {f.name: f.take(x) for f in mine}
        if self.views:
            transport.recv(comm, self.buffer, self.root, self.tag)
        else:
            transport.scatterv(comm, None, self.counts, self.buffer, self.root)
        out, offset = {}, 0
        for f in mine:
            n = numel(f.shape)
            out[f.name] = self.buffer[offset:offset + n].reshape(f.shape)
            offset += n
        return out


class SplitRunner:
    """Runs `split` on `comm`, whose rank r runs part r; `root` holds the input and gets the output.

    Raises PisplitError when the communicator's size differs from the number of parts.
    """

    def __init__(self, comm, split: Split, engine: str = "numpy", root: int = 0):
        self.comm = comm
        self.split = split
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.root = root
        if self.size != split.n_parts:
            raise PisplitError(f"layer {split.layer}: the {split.kind} split has {split.n_parts} parts, "
                               f"the communicator {self.size} ranks (one part per rank)")
        self.is_root = self.rank == root
        self.part = split.parts[self.rank]
        self.graph: Graph = split.part_graph(self.rank)
        self.engine = make_engine(self.graph, engine)
        post = split.post_graph() if self.is_root else None
        self.post = make_engine(post, engine) if post is not None else None
        self.post_input = next(iter(post.inputs)) if post is not None else None
        self.times = PhaseTimes()
        self.last_feeds: dict | None = None  # what this rank's part ran on last (for compute_alone)
        if split.kind == "data-parallel":
            return
        self.inputs = [_Input(split, i, t, self.rank, root) for i, t in enumerate(split.inputs)]
        self.merged_shape = split.partial_shape
        out_counts = [numel(p.output_shape) for p in split.parts]
        boxes = [p.output_box for p in split.parts]
        offsets = [contiguous_offset(b, self.merged_shape[1:]) for b in boxes]
        full = full_box(self.merged_shape[1:])
        if split.layout.merge == "sum" and all(b == full for b in boxes):
            self.output_mode = "reduce"
        elif split.layout.merge == "concat" and None not in offsets and offsets == sorted(offsets) and all(
                offsets[i] + out_counts[i] == (offsets[i + 1] if i + 1 < len(offsets) else numel(self.merged_shape))
                for i in range(len(offsets))) and offsets[0] == 0:
            self.output_mode = "gather-direct"  # the packed parts are the merged array
        else:
            self.output_mode = "gather-place"
        self.out_counts = out_counts if self.output_mode == "gather-direct" else [
            0 if r == root else c for r, c in enumerate(out_counts)]

    # --- one frame ---------------------------------------------------------------------------------------
    def run(self, x=None) -> np.ndarray | None:
        """Collective: one frame through the split. The root passes the segment input (an array, or a
        dict of arrays for several inputs; batch 1) and gets the merged output; other ranks get None."""
        if self.split.kind == "data-parallel":
            frames = None if not self.is_root else self._frames_of(x)
            out = self.run_frames(frames, 1)
            return out
        tensors = self._tensors(x) if self.is_root else {}
        t0 = time.perf_counter()
        feeds = {}
        for spec in self.inputs:
            feeds.update(spec.exchange(self.comm, tensors.get(spec.tensor)))
        t1 = time.perf_counter()
        self.last_feeds = feeds
        y = self.engine.run(feeds)[self.graph.outputs[0]]
        t2 = time.perf_counter()
        merged = self._merge(y)
        t3 = time.perf_counter()
        if self.is_root and self.post is not None:
            merged = self.post.run({self.post_input: merged})[self.split.output]
        t4 = time.perf_counter()
        self._account(t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        return merged if self.is_root else None

    def _account(self, input_s, compute_s, output_s, post_s, frames=1):
        t = self.times
        t.input_s += input_s
        t.compute_s += compute_s
        t.output_s += output_s
        t.post_s += post_s
        t.frames += frames
        t.compute_each.append(compute_s)

    def _tensors(self, x) -> dict[str, np.ndarray]:
        tensors = self.split._feeds_of(x)
        for t, arr in tensors.items():
            if arr.shape != self.split.graph.shapes[t]:
                raise PisplitError(f"layer {self.split.layer}: input {t} has shape {arr.shape}, "
                                   f"expected {self.split.graph.shapes[t]} (one frame)")
        return tensors

    def _merge(self, y: np.ndarray) -> np.ndarray | None:
        y = np.ascontiguousarray(y, np.float32)
        if self.output_mode == "reduce":
            out = np.empty(self.merged_shape, np.float32) if self.is_root else None
            return transport.reduce_sum(self.comm, y, out, self.root)
        if self.output_mode == "gather-direct":
            out = np.empty(self.merged_shape, np.float32) if self.is_root else None
            transport.gatherv(self.comm, y, self.out_counts, out, self.root)
            return out
        if not self.is_root:
            transport.gatherv(self.comm, y, self.out_counts, None, self.root)
            return None
        packed = transport.gatherv(self.comm, np.empty(0, np.float32), self.out_counts, None, self.root)
        summing = self.split.layout.merge == "sum"
        merged = (np.zeros if summing else np.empty)(self.merged_shape, np.float32)
        pieces = transport.unpack(packed, self.out_counts)
        for r, p in enumerate(self.split.parts):
            part_out = y if r == self.rank else pieces[r].reshape(p.output_shape)
            if summing:
                merged[box_index(p.output_box)] += part_out
            else:
                merged[box_index(p.output_box)] = part_out
        return merged

    def compute_alone(self, repeat: int) -> float:
        """Median seconds of this rank's part on its last input, run `repeat` times (not collective:
        run it while the other ranks wait, for compute time free of their contention); 0 if it ran none."""
        if self.last_feeds is None:
            return 0.0
        times = []
        for _ in range(max(1, repeat)):
            t = time.perf_counter()
            self.engine.run(self.last_feeds)
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    # --- data-parallel -----------------------------------------------------------------------------------
    def _frames_of(self, x) -> dict[str, np.ndarray]:
        return self.split._feeds_of(x)

    def run_frames(self, frames: dict | np.ndarray | None, n_frames: int) -> np.ndarray | None:
        """Collective (data-parallel): `n_frames` frames dealt to the parts by share; the root passes them
        stacked on the batch axis (array or dict of arrays) and gets the outputs in frame order."""
        if self.split.kind != "data-parallel":
            raise PisplitError(f"layer {self.split.layer}: run_frames is for data-parallel splits, not {self.split.kind}")
        order = self.split.deal(n_frames)
        feeds = self.split.parts[self.rank].feeds
        out_shape = self.split.output_shape
        out_name = self.graph.outputs[0]
        t_start = time.perf_counter()
        compute = 0.0
        if self.is_root:
            tensors = frames if isinstance(frames, dict) else self._frames_of(frames)
            stacked = [np.ascontiguousarray(tensors[f.tensor]) for f in feeds]
            result = np.empty((n_frames, *out_shape[1:]), np.float32)
            sends, recvs = [], []
            for i, part in enumerate(order):
                if part == self.rank:
                    continue
                tag = TAG_FRAME + i % TAG_SPAN
                for arr in stacked:
                    sends.append(transport.isend(self.comm, arr[i:i + 1], part, tag))
                recvs.append(transport.irecv(self.comm, result[i:i + 1], part, tag))
            for i, part in enumerate(order):
                if part != self.rank:
                    continue
                # large transfers only move while this rank is inside MPI: let them advance first
                transport.test_all(sends + recvs)
                t = time.perf_counter()
                self.last_feeds = {f.name: arr[i:i + 1] for f, arr in zip(feeds, stacked)}
                y = self.engine.run(self.last_feeds)[out_name]
                compute += time.perf_counter() - t
                result[i:i + 1] = y
            transport.wait_all(sends + recvs)
        else:
            result = None
            buffers = [np.empty(f.shape, np.float32) for f in feeds]
            pending = []  # results on their way back: sent without waiting, so the next frame starts
            for i, part in enumerate(order):
                if part != self.rank:
                    continue
                tag = TAG_FRAME + i % TAG_SPAN
                for buf in buffers:
                    transport.recv(self.comm, buf, self.root, tag)
                t = time.perf_counter()
                self.last_feeds = {f.name: buf for f, buf in zip(feeds, buffers)}
                y = np.ascontiguousarray(self.engine.run(self.last_feeds)[out_name], np.float32)
                compute += time.perf_counter() - t
                pending.append((transport.isend(self.comm, y, self.root, tag), y))
            transport.wait_all([r for r, _ in pending])
        wall = time.perf_counter() - t_start
        mine = sum(1 for part in order if part == self.rank)
        self._account(0.0, compute, wall - compute, 0.0, mine)
        return result


class SegmentRunner:
    """A plan segment's split for the pipeline runtime: `run(tensors)` maps the tensors live before
    the segment to those live after it on the segment's first rank (sub-communicator rank 0); the
    other ranks join and get {}."""

    def __init__(self, comm, graph: Graph, segment, engine: str = "numpy"):
        split = split_segment(graph, segment.node_start, segment.node_stop, segment.kind, segment.sizes, segment.options)
        self.runner = SplitRunner(comm, split, engine, root=0)
        self.split = split
        self.live_after = set(graph.cut_tensors(segment.node_stop))

    def run(self, tensors: dict) -> dict:
        if not self.runner.is_root:
            self.runner.run(None)
            return {}
        y = self.runner.run({t: tensors[t] for t in self.split.inputs})
        out = {t: v for t, v in tensors.items() if t in self.live_after}
        out[self.split.output] = y
        return out
