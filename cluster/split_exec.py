"""Execute a split over an MPI communicator: part p runs on rank ranks[p]; tensors move peer to peer.

Rank r builds only its part's graph (its own weight slices) and an engine for it. Per frame (batch 1):

1. input: each segment input tensor has a layout (partitioners.layouts): whole on the root (the
   stage lead), or the pieces the previous segment's parts kept. Every part needs boxes of it (its
   feeds, halos included); the transition sends each holder's intersection with each box straight to
   the part that needs it (non-blocking, buffer based), and a part copies what it already holds. So
   a scatter from the root, a broadcast, and strips that exchange only halo rows with their
   neighbours are the same code.
2. compute: every part runs its graph (under `hooks.compute`: an emulated device takes a core of
   this machine only here, never while it waits for data).
3. output: a part keeps its output box when the plan says so (`keep_output`), else concatenated
   outputs are gathered to the root by the same transition (to the layout whole@root), and partial
   sums are sent to the root and added into their boxes (grouped conv-filter: channel boxes); the
   root then runs the post graph (activation, followers).

Every remote message is a float32 buffer behind a four-int64 header (the emulated link's transfer
end and duration), so paced emulation delays the receiver as the link would. Waiting polls with
short sleeps, so ranks that outnumber the cores leave them to the computing ones.

data-parallel is frame-wise instead: frames are dealt by share; the root sends each frame to its part
(Isend), every part runs its frames whole and sends the results back, the root keeps frame order.
Every wait, there too, is `hooks.wait`: under a stall bound when the caller set one (Hooks.watch:
the pipeline runtime's, or cluster.watched's for `pisplit split`), naming the rank that went silent.
Everything goes through cluster.transport; the communicator is passed in (COMM_SELF in tests).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from layers.engine import make_engine
from layers.errors import PisplitError
from layers.graph import Graph
from layers.ops import numel
from partitioners import layouts
from partitioners.split_parts import box_index, box_shape, full_box
from partitioners.splits import Split, split_segment
from partitioners.vocabulary import SplitKind

from . import transport

log = logging.getLogger(__name__)

TAG_FRAME = 7000  # + frame index % TAG_SPAN: data-parallel frames and their results
TAG_SPAN = 20000
TAG_MOVE = 30000  # transition messages: 1 + (base + message index) % TAG_MOVE
HEADER = 8  # float32 slots of a message's int64 header [end_ns, duration_ns, 0, 0]


@dataclass
class PhaseTimes:
    """Seconds this rank spent per phase, summed over the frames it ran."""

    input_s: float = 0.0
    compute_s: float = 0.0
    output_s: float = 0.0
    post_s: float = 0.0
    frames: int = 0

    def to_array(self) -> np.ndarray:
        return np.array([self.input_s, self.compute_s, self.output_s, self.post_s, self.frames], np.float64)


class Hooks:
    """How a runner computes, waits and stamps messages: as this machine (the default) or, in
    cluster.emulation.EmulatedDevice, as an emulated device on a paced link."""

    def compute(self, fn: Callable[[], object], step: object = None):
        """Run one compute step (`step`: the engine it runs, the same every frame)."""
        return fn()

    def reference(self, step: object, cpu_seconds: float) -> None:
        """What `step` costs with warm caches on this machine (emulation: see EmulatedDevice)."""

    watch: "transport.Watch | None" = None  # a stall bound for waits (the pipeline runtime sets one)

    def wait(self, requests: list, label: str = "", peers: list | None = None) -> None:
        """Wait for requests without holding a core (sleep between polls); `peers[i]` is the rank at
        the other end of `requests[i]`, named if the wait exceeds `watch`'s stall bound."""
        transport.wait_quietly(requests, watch=self.watch, label=label, peers=peers)

    def stamp(self, nbytes: int) -> tuple[int, int]:
        """(end_ns, duration_ns) of a message of `nbytes` leaving this rank now; (0, 0) unpaced."""
        return 0, 0

    def hold(self, end_ns: int, duration_ns: int) -> None:
        """Wait until a received message would have arrived over the emulated link."""


PLAIN = Hooks()


def _offset(inner: tuple, outer: tuple) -> tuple:
    """`inner` (tensor coordinates) relative to the box `outer` that contains it."""
    return tuple((a - o, b - o) for (a, b), (o, _) in zip(inner, outer))


class Transfer:
    """One transition of one tensor, from this rank's side: what it sends, receives and copies.

    `have` is the tensor's layout (ranks in the communicator), `wants` the boxes needed, as
    (layouts.Piece, key) pairs; every rank builds the same message list, so both ends of a message
    agree on its tag. `start(held)` posts the receives and sends (`held`: this rank's piece of the
    tensor, or None); `finish(out)` waits and fills this rank's needed arrays, `out[key]`.
    """

    def __init__(self, have: layouts.TensorLayout, wants: Sequence[tuple], rank: int, tag_base: int):
        self.rank = rank
        self.have = have
        mine = [p for p in have.pieces if p.rank == rank]
        self.held_box = mine[0].box if mine else None
        self.sends, self.recvs, self.copies = [], [], []
        index = 0
        for piece, key in wants:
            for m in layouts.transition(have, [piece]):
                tag = 1 + (tag_base + index) % TAG_MOVE
                index += 1
                if m.src == rank and m.dst == rank:
                    self.copies.append((m, key, piece.box))
                elif m.src == rank:
                    self.sends.append((m, tag, np.empty(HEADER + numel(box_shape(m.box)), np.float32)))
                elif m.dst == rank:
                    self.recvs.append((m, tag, key, piece.box, np.empty(HEADER + numel(box_shape(m.box)), np.float32)))
        self.n_messages = index
        self.requests: list = []
        self.copied = False
        # needed boxes filled by one local copy and nothing else: read as a view of the held piece
        filled: dict = {}
        for m, key, _ in self.copies:
            filled[key] = filled.get(key, 0) + 1
        for _, _, key, _, _ in self.recvs:
            filled[key] = filled.get(key, 0) + 2
        self.views = {key for key, n in filled.items() if n == 1}

    @property
    def remote_bytes(self) -> int:
        return sum(m.nbytes for m, *_ in self.sends) + sum(m.nbytes for m, *_ in self.recvs)

    def _held(self, box: tuple) -> np.ndarray:
        return self.held[box_index(_offset(box, self.held_box))]

    def start(self, comm, held: np.ndarray | None, hooks: Hooks) -> dict:
        """Post this rank's receives, then pack and send its pieces (`held` is its piece, batch 1).
        Returns the needed arrays that are views of `held` (no copy)."""
        if self.held_box is not None and (held is None or held.shape[1:] != box_shape(self.held_box)):
            raise PisplitError(f"tensor {self.have.tensor}: rank {self.rank} holds "
                               f"{None if held is None else held.shape}, its piece is {list(self.held_box)}")
        self.held = held
        self.requests = [transport.irecv(comm, buf, m.src, tag) for m, tag, _, _, buf in self.recvs]
        for m, tag, buf in self.sends:
            buf[:HEADER].view(np.int64)[:2] = hooks.stamp(m.nbytes)
            buf[HEADER:].reshape(box_shape(m.box))[...] = self._held(m.box)[0]
            self.requests.append(transport.isend(comm, buf, m.dst, tag))
        return {key: self._held(m.box) for m, key, _ in self.copies if key in self.views}

    def copy_local(self, out: dict) -> None:
        """Place this rank's local copies into `out[key]` now, before the messages arrive (`finish`
        then leaves them)."""
        for m, key, box in self.copies:
            if key not in self.views:
                out[key][box_index(_offset(m.box, box))] = self._held(m.box)
        self.copied = True

    def finish(self, out: dict, hooks: Hooks, label: str = "") -> None:
        """Wait for this rank's messages and place them (and its local copies) into `out[key]`."""
        if self.requests:
            peers = [m.src for m, *_ in self.recvs] + [m.dst for m, *_ in self.sends]  # as start() posted them
            hooks.wait(self.requests, label, peers)
        for m, _, key, box, buf in self.recvs:
            end_ns, duration_ns = (int(v) for v in buf[:HEADER].view(np.int64)[:2])
            if duration_ns:
                hooks.hold(end_ns, duration_ns)
            out[key][box_index(_offset(m.box, box))] = buf[HEADER:].reshape(1, *box_shape(m.box))
        if not self.copied:
            for m, key, box in self.copies:
                if key not in self.views:
                    out[key][box_index(_offset(m.box, box))] = self._held(m.box)
        self.requests = []
        self.held = None
        self.copied = False


class SplitRunner:
    """Runs `split` on `comm`: part p on communicator rank `ranks[p]` (default: rank p), `root` holds
    the inputs whole and gets the merged output.

    `sources` gives a layout (ranks in `comm`) for inputs that are not whole on the root: the pieces
    a previous segment kept. With `keep_output` (concat kinds) each part keeps its output box instead
    of gathering it. Ranks of `comm` outside `ranks` (and not the root) take no part. Raises
    PisplitError when the ranks do not fit the parts.
    """

    def __init__(self, comm, split: Split, engine: str = "numpy", root: int = 0, ranks: Sequence[int] | None = None,
                 sources: Mapping[str, layouts.TensorLayout] | None = None, keep_output: bool = False,
                 hooks: Hooks | None = None, tag_base: int = 0):
        self.comm = comm
        self.split = split
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.root = root
        self.hooks = hooks or PLAIN
        self.ranks = tuple(range(split.n_parts)) if ranks is None else tuple(int(r) for r in ranks)
        if len(self.ranks) != split.n_parts or len(set(self.ranks)) != len(self.ranks) or \
                not all(0 <= r < self.size for r in self.ranks) or not 0 <= root < self.size:
            raise PisplitError(f"layer {split.layer}: the {split.kind} split has {split.n_parts} parts, "
                               f"the communicator {self.size} ranks (one part per rank)")
        self.is_root = self.rank == root
        self.index = self.ranks.index(self.rank) if self.rank in self.ranks else None
        self.part = split.parts[self.index] if self.index is not None else None
        self.tokens: TokenPhases | None = None
        if split.kind == SplitKind.ATTN_TOKENS:  # two compute steps with an all-gather between (partitioners.split_tokens)
            self.tokens = TokenPhases(split, self.index, self.ranks, self.rank, root, engine, tag_base)
            tag_base = self.tokens.tag_end
            self.graph, self.engine = self.tokens.graph_b, self.tokens.engine_b
        else:
            self.graph = split.part_graph(self.index) if self.index is not None else None
            self.engine = make_engine(self.graph, engine) if self.graph is not None else None
        post = split.post_graph() if self.is_root else None
        self.post = make_engine(post, engine) if post is not None else None
        self.post_input = next(iter(post.inputs)) if post is not None else None
        self.times = PhaseTimes()
        self.last_feeds: dict | None = None  # what this rank's part ran on last (for compute_alone)
        if split.kind == SplitKind.DATA_PARALLEL:
            return
        self.keep_output = bool(keep_output)
        if self.keep_output:
            layouts.produced(split, self.ranks)  # raises for kinds that cannot keep
        sources = dict(sources or {})
        self.sources = sources
        tag = tag_base
        self.transfers: list[Transfer] = []
        self.sequences: dict = {}  # inputs whose axis 0 holds one frame's sequence: moved behind a leading axis of one
        for t in split.inputs:
            have = sources.get(t) or layouts.whole(t, split.graph.shapes[t][1:], root)
            wants = layouts.needed(split, self.ranks, t)
            axis0 = split.graph.shapes[t][0]
            if axis0 != 1 and t not in sources:  # issue 19: (T, C) rows of a batch-1 layout, boxes over the whole shape
                self.sequences[t] = split.graph.shapes[t]
                have = layouts.whole(t, self.sequences[t], root)
                wants = tuple((layouts.Piece(p.rank, ((0, axis0), *p.box)), key) for p, key in wants)
            transfer = Transfer(have, wants, self.rank, tag)
            tag += transfer.n_messages
            self.transfers.append(transfer)
        feeds_ = self.part.feeds if self.part else ()
        self.seq_feeds = {f.name: f.shape for f in feeds_ if f.tensor in self.sequences}
        self.feed_buffers = {f.name: np.empty((1, *f.shape) if f.name in self.seq_feeds else f.shape, np.float32) for f in feeds_}
        self.overlap = self._plan_overlap(engine)
        self.merged_shape = split.partial_shape
        self.summing = split.layout.merge == "sum"
        self.gather = None
        if not self.keep_output and not self.summing and self.tokens is None:  # (attn-tokens: TokenPhases.gather)
            shape = tuple(split.output_shape[1:])
            have = layouts.produced(split, self.ranks)
            self.gather = Transfer(have, [(layouts.Piece(root, full_box(shape)), "out")], self.rank, tag)
            tag += self.gather.n_messages
        elif self.summing:
            # partial sums: every remote part sends its output box to the root, which adds them
            self.partials = []
            for p, r in enumerate(self.ranks):
                if r == root:
                    continue
                shape = split.parts[p].output_shape
                if self.rank == r or self.is_root:
                    buf = np.empty(HEADER + numel(shape), np.float32)
                    self.partials.append((p, r, 1 + tag % TAG_MOVE, buf))
                tag += 1
        self.tag_end = tag

    def _plan_overlap(self, engine: str):
        """For a row strip fed mostly from this rank's own kept strip: the interior-first cut of its
        part (cluster.overlap), so the halo rows travel while the interior computes; else None."""
        from .overlap import InteriorFirst, held_rows

        split, transfer = self.split, self.transfers[0] if self.transfers else None
        if split.kind != SplitKind.CONV_SPATIAL or split.options.get("axis", "rows") != "rows" or self.part is None \
                or transfer is None or transfer.have.tensor not in self.sources or not transfer.recvs or transfer.held_box is None:
            return None
        feeds = [f for f in self.part.feeds if f.tensor == transfer.have.tensor]
        if len(feeds) != 1 or len(self.part.feeds) != 1:
            return None
        return InteriorFirst.plan(self.graph, feeds[0].name, held_rows(feeds[0].box, transfer.held_box), engine)

    @property
    def output_layout(self) -> layouts.TensorLayout:
        """Where the output lives after `run`: the parts' boxes (keep_output) or whole on the root."""
        if self.keep_output:
            return layouts.produced(self.split, self.ranks)
        return layouts.whole(self.split.output, self.split.output_shape[1:], self.root)

    # --- one frame ---------------------------------------------------------------------------------------
    def run(self, x=None) -> np.ndarray | None:
        """Collective: one frame through the split. The root passes the segment input (an array, or a
        dict of arrays for several inputs; batch 1) and gets the merged output; other ranks get None.
        Ranks holding kept pieces pass them in the dict. With keep_output every part gets its box."""
        if self.split.kind == SplitKind.DATA_PARALLEL:
            frames = None if not self.is_root else self._frames_of(x)
            out = self.run_frames(frames, 1)
            return out
        tensors = self._tensors(x)
        hooks = self.hooks
        t0 = time.perf_counter()
        feeds = dict(self.feed_buffers)
        for t, shape in self.sequences.items():
            if t in tensors:
                tensors[t] = tensors[t].reshape(1, *shape)
        for transfer in self.transfers:
            feeds.update(transfer.start(self.comm, tensors.get(transfer.have.tensor), hooks))
        if self.overlap is not None:
            # held rows now, the interior while the halo rows travel, the edges once they are in
            self.transfers[0].copy_local(feeds)
            x = feeds[self.overlap.feed]
            c0 = time.perf_counter()
            out = self.overlap.run_interior(x, hooks)
            c1 = time.perf_counter()
            for transfer in self.transfers:
                transfer.finish(feeds, hooks, "input")
            c2 = time.perf_counter()
            self.last_feeds = feeds
            y = self.overlap.run_edges(x, out, hooks)
            t2 = time.perf_counter()
            t1 = t2 - (c1 - c0) - (t2 - c2)  # input_s: what the halo rows kept this rank waiting
            return self._finish_frame(y, t0, t1, t2)
        for transfer in self.transfers:
            transfer.finish(feeds, hooks, "input")
        for name, shape in self.seq_feeds.items():
            feeds[name] = feeds[name].reshape(shape)
        t1 = time.perf_counter()
        y = None
        if self.tokens is not None and self.engine is not None:
            self.last_feeds = feeds
            y = self.tokens.run(self.comm, feeds, hooks)
            t1 += self.tokens.exchange_s  # the all-gather is communication (input_s), not compute
        elif self.engine is not None:
            self.last_feeds = feeds
            y = hooks.compute(lambda: self.engine.run(feeds)[self.graph.outputs[0]], self.engine)
            y = np.ascontiguousarray(y, np.float32)
        t2 = time.perf_counter()
        return self._finish_frame(y, t0, t1, t2)

    def _finish_frame(self, y, t0: float, t1: float, t2: float):
        """Keep the part's output or merge it (and run the post graph), then count the phases."""
        hooks = self.hooks
        if self.keep_output:
            self._account(t1 - t0, t2 - t1, 0.0, 0.0)
            return y
        merged = self._merge(y)
        t3 = time.perf_counter()
        if self.is_root and self.post is not None:
            merged = hooks.compute(lambda: self.post.run({self.post_input: merged})[self.split.output], self.post)
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

    def _tensors(self, x) -> dict[str, np.ndarray]:
        """The tensors this rank holds for the split: whole inputs on the root, kept pieces anywhere."""
        if x is None:
            return {}
        if not self.is_root:
            return {t: np.asarray(v, np.float32) for t, v in x.items()} if isinstance(x, Mapping) else {}
        given = dict(x) if isinstance(x, Mapping) else None
        whole = [t for t in self.split.inputs if t not in self.sources]
        if given is None:
            tensors = self.split._feeds_of(x)
        else:
            missing = [t for t in whole if t not in given]
            if missing:
                raise PisplitError(f"layer {self.split.layer}: split input {missing[0]!r} was not given")
            tensors = {t: np.asarray(v, np.float32) for t, v in given.items()}
        for t in whole:
            if tensors[t].shape != self.split.graph.shapes[t]:
                raise PisplitError(f"layer {self.split.layer}: input {t} has shape {tensors[t].shape}, "
                                   f"expected {self.split.graph.shapes[t]} (one frame)")
        return tensors

    def _merge(self, y: np.ndarray | None) -> np.ndarray | None:
        hooks = self.hooks
        if self.tokens is not None:
            return self.tokens.gather(self.comm, y, hooks)
        if self.gather is not None:
            out = {"out": np.empty(self.merged_shape, np.float32)} if self.is_root else {}
            out.update(self.gather.start(self.comm, y, hooks))
            self.gather.finish(out, hooks, "output")
            return out.get("out")
        requests, peers = [], []
        for p, r, tag, buf in self.partials:
            if self.rank == r:
                buf[:HEADER].view(np.int64)[:2] = hooks.stamp(y.nbytes)
                buf[HEADER:] = y.reshape(-1)
                requests.append(transport.isend(self.comm, buf, self.root, tag))
                peers.append(self.root)
            else:
                requests.append(transport.irecv(self.comm, buf, r, tag))
                peers.append(r)
        if requests:
            hooks.wait(requests, "output", peers)
        if not self.is_root:
            return None
        merged = np.zeros(self.merged_shape, np.float32)
        if y is not None:
            merged[box_index(self.part.output_box)] += y
        for p, r, tag, buf in self.partials:
            end_ns, duration_ns = (int(v) for v in buf[:HEADER].view(np.int64)[:2])
            if duration_ns:
                hooks.hold(end_ns, duration_ns)
            part = self.split.parts[p]
            merged[box_index(part.output_box)] += buf[HEADER:].reshape(part.output_shape)
        return merged

    def engines(self) -> list:
        """(engine, its part graph) of every compute step this rank runs in the split."""
        steps = [(self.engine, self.graph)] if self.engine is not None else []
        if self.tokens is not None and self.engine is not None:
            steps = [(self.tokens.engine_a, self.tokens.graph_a), (self.tokens.engine_b, self.tokens.graph_b)]
        if self.post is not None:
            steps.append((self.post, self.post.graph))
        if self.overlap is not None:
            steps += [(engine, engine.graph) for engine, *_ in self.overlap.pieces]
        return steps

    def compute_alone(self, repeat: int, between: Callable[[], object] | None = None) -> float:
        """Median seconds of this rank's part on its last input, run `repeat` times (not collective:
        run it while the other ranks wait, for compute time free of their contention); 0 if it ran none.
        `between()` runs before each run (answering the waiting ranks' pings)."""
        if self.last_feeds is None:
            return 0.0
        times = []
        run = self.engine.run if self.tokens is None else self.tokens.alone
        for _ in range(max(1, repeat)):
            if between is not None:
                between()
            t = time.perf_counter()
            run(self.last_feeds)
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    # --- data-parallel -----------------------------------------------------------------------------------
    def _frames_of(self, x) -> dict[str, np.ndarray]:
        return self.split._feeds_of(x)

    def run_frames(self, frames: dict | np.ndarray | None, n_frames: int) -> np.ndarray | None:
        """Collective (data-parallel): `n_frames` frames dealt to the parts by share; the root passes them
        stacked on the batch axis (array or dict of arrays) and gets the outputs in frame order."""
        if self.split.kind != SplitKind.DATA_PARALLEL:
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
            requests, peers = [], []  # every wait is the hooks' (under the runtime's or the command's stall bound)
            for i, part in enumerate(order):
                if part == self.rank:
                    continue
                tag = TAG_FRAME + i % TAG_SPAN
                for arr in stacked:
                    requests.append(transport.isend(self.comm, arr[i:i + 1], part, tag))
                    peers.append(part)
                requests.append(transport.irecv(self.comm, result[i:i + 1], part, tag))
                peers.append(part)
            watch = self.hooks.watch
            for i, part in enumerate(order):
                if part != self.rank:
                    continue
                # large transfers only move while this rank is inside MPI: let them advance first
                transport.test_all(requests)
                if watch is not None and watch.check is not None:
                    watch.check()  # answer pings: the parts waiting on this rank see it alive
                t = time.perf_counter()
                self.last_feeds = {f.name: arr[i:i + 1] for f, arr in zip(feeds, stacked)}
                y = self.engine.run(self.last_feeds)[out_name]
                compute += time.perf_counter() - t
                result[i:i + 1] = y
            self.hooks.wait(requests, "frames", peers)
        else:
            result = None
            buffers = [np.empty(f.shape, np.float32) for f in feeds]
            pending = []  # results on their way back: sent without waiting, so the next frame starts
            for i, part in enumerate(order):
                if part != self.rank:
                    continue
                tag = TAG_FRAME + i % TAG_SPAN
                self.hooks.wait([transport.irecv(self.comm, buf, self.root, tag) for buf in buffers], "input", [self.root] * len(buffers))
                t = time.perf_counter()
                self.last_feeds = {f.name: buf for f, buf in zip(feeds, buffers)}
                y = np.ascontiguousarray(self.engine.run(self.last_feeds)[out_name], np.float32)
                compute += time.perf_counter() - t
                pending.append((transport.isend(self.comm, y, self.root, tag), y))
            self.hooks.wait([r for r, _ in pending], "output", [self.root] * len(pending))
        wall = time.perf_counter() - t_start
        mine = sum(1 for part in order if part == self.rank)
        self._account(0.0, compute, wall - compute, 0.0, mine)
        return result


class TokenPhases:
    """attn-tokens on one rank (partitioners.split_tokens): phase A on its rows, the all-gather of the
    key-side tensors (each rank's rows to every other part's rank, peer to peer, by Transfer), phase B.
    Every rank of the communicator builds the same exchange messages (their tags); engines only on a
    part's rank (`index` not None)."""

    def __init__(self, split: Split, index: int | None, ranks: Sequence[int], rank: int, root: int, engine: str, tag: int):
        self.transfers: list[Transfer] = []
        self.buffers: dict = {}
        for t, _ in split.block.keys:
            pieces = []
            for p, r in enumerate(ranks):  # boxes over the whole shape, behind a leading axis of one
                axis, rows, shape = split.key_rows(p)[t]
                box = list(full_box(shape))
                box[axis] = rows
                pieces.append(layouts.Piece(int(r), tuple(box)))
            have = layouts.TensorLayout(t, shape, tuple(pieces))
            transfer = Transfer(have, [(layouts.Piece(int(r), full_box(shape)), f"{t}@all") for r in ranks], rank, tag)
            tag += transfer.n_messages
            self.transfers.append(transfer)
            self.buffers[f"{t}@all"] = np.empty((1, *shape), np.float32)
        self.shapes = {k: v.shape[1:] for k, v in self.buffers.items()}
        # the parts' output rows to the root, over the whole output shape (its tokens may be on axis 0)
        pieces = []
        for p, r in enumerate(ranks):
            axis, rows, shape = split.output_rows(p)
            box = list(full_box(shape))
            box[axis] = rows
            pieces.append(layouts.Piece(int(r), tuple(box)))
        self.out_shape = shape
        self.is_root = rank == root
        self.collect = Transfer(layouts.TensorLayout(split.output, shape, tuple(pieces)),
                                [(layouts.Piece(int(root), full_box(shape)), "out")], rank, tag)
        tag += self.collect.n_messages
        self.tag_end = tag
        self.exchange_s = 0.0  # the last frame's all-gather
        self.graph_a = self.graph_b = self.engine_a = self.engine_b = None
        if index is not None:
            self.graph_a, self.graph_b = split.phase_graph(index, "a"), split.phase_graph(index, "b")
            self.engine_a, self.engine_b = make_engine(self.graph_a, engine), make_engine(self.graph_b, engine)

    def run(self, comm, feeds: dict, hooks: Hooks) -> np.ndarray:
        a_in = {k: feeds[k] for k in self.graph_a.inputs}
        a = hooks.compute(lambda: self.engine_a.run(a_in), self.engine_a)
        out = dict(self.buffers)
        t = time.perf_counter()
        for transfer in self.transfers:
            held = np.ascontiguousarray(a[transfer.have.tensor], np.float32)
            out.update(transfer.start(comm, held.reshape(1, *held.shape), hooks))
        for transfer in self.transfers:
            transfer.finish(out, hooks, "exchange")
        self.exchange_s = time.perf_counter() - t
        b_in = {k: out[k].reshape(self.shapes[k]) if k in out else a[k] if k in a else feeds[k] for k in self.graph_b.inputs}
        y = hooks.compute(lambda: self.engine_b.run(b_in)[self.graph_b.outputs[0]], self.engine_b)
        return np.ascontiguousarray(y, np.float32)

    def gather(self, comm, y: np.ndarray | None, hooks: Hooks) -> np.ndarray | None:
        """The parts' rows to the root (the merged output there; None elsewhere)."""
        out = {"out": np.empty((1, *self.out_shape), np.float32)} if self.is_root else {}
        out.update(self.collect.start(comm, None if y is None else y.reshape(1, *y.shape), hooks))
        self.collect.finish(out, hooks, "output")
        return out["out"].reshape(self.out_shape) if self.is_root else None

    def alone(self, feeds: dict) -> None:
        """Both phases on `feeds` with the last gathered key-side tensors, no exchange (compute_alone)."""
        a = self.engine_a.run({k: feeds[k] for k in self.graph_a.inputs})
        self.engine_b.run({k: self.buffers[k].reshape(self.shapes[k]) if k in self.buffers else a[k] if k in a else feeds[k]
                           for k in self.graph_b.inputs})


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
