"""A run that switches plans between frames (issue 16, Edgent's Algorithm 3 at run time).

`run_switching` streams frames through one of several plans at a time (a configuration map's plans:
the same model's exit branches and cuts, cluster.bandwidth.MapChooser picks among them). The stream
is cut into segments at frame boundaries (after at least `every` frames and at least MIN_SEGMENT_S of
them, at the frame interval or the pace rank 0 measured over the last segment; and at each forced
switch); a segment runs under one plan with the ordinary pipeline runtime (cluster.runtime.PipelineRank, restarted with
its engines warm) and drains before the next begins, so every frame is answered exactly once, in
order, by exactly one plan, and a switch can lose nothing in flight. At each boundary every rank
hands rank 0 the transfers it made on its link (end time, bytes, seconds: the emulated pacer's
duration, or on a real link the time until MPI completed the send), rank 0 feeds them to the
chooser, and it says (broadcast as text, never pickled) which plan runs next. While the running plan
sends nothing on the link (all on the device), rank 0 sends a probe of PROBE_BYTES (a real link:
REAL_PROBE_BYTES, timed to rank 1's acknowledgement) to rank 1 at most every PROBE_INTERVAL_S, so a
link that recovers is seen.

Plans may have fewer ranks than the run (an all-on-device plan on rank 0 alone): each plan runs on a
sub-communicator of its first n_ranks ranks and the others wait for the next boundary. A rank is the
same emulated device and link in every plan (the plans must agree on each rank's device kind).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph
from partitioners.plan import Plan

from . import transport
from .runtime import (DEFAULT_MIN_STALL_S, PipelineRank, RunOptions, check_input_frames, default_stall_timeout, host_names_watched, settle_baseline,
                      stall_margin)
from .watched import bcast_text_watched

PROBE_BYTES = 16384
REAL_PROBE_BYTES = 65536  # a real link's probe: as large as the smallest transfer counted on one (MPI's eager limit)
PROBE_INTERVAL_S = 0.25
MIN_SEGMENT_S = 0.25  # a boundary drains the pipeline: at most about one per this many seconds of frames
TAG_PROBE = 77


@dataclass
class SwitchingResult:
    """Rank 0's view of a switching run (other ranks: None). Per frame of the stream, in frame order."""

    plan_of_frame: np.ndarray  # index of the plan that answered each frame
    frame_ids: np.ndarray  # frames in the order their results arrived
    argmax: np.ndarray  # each frame's first output's argmax (its exit's class)
    latency_s: np.ndarray  # first-stage start to result at rank 0
    done_s: np.ndarray  # result time since the run started
    wall_s: float
    outputs: dict | None = None  # tensor -> (frames, ...); NaN rows for frames another plan (without that tensor) answered
    switches: list = field(default_factory=list)  # {"frame", "time_s", "from", "to", "reason"}
    transfers: np.ndarray | None = None  # (n, 3): time since the start, bytes, seconds of every link transfer and probe
    estimates: list = field(default_factory=list)  # (time_s, bit/s estimate) after each boundary that had samples
    segments: int = 0
    late_s: float = 0.0  # rank 0's emulation behind its device speed
    late_by_rank_s: list = field(default_factory=list)  # each rank's (a host faster than this machine falls behind)

    @property
    def every_frame_once(self) -> bool:
        return bool(np.array_equal(np.sort(self.frame_ids), np.arange(self.plan_of_frame.size))
                    and np.all(self.plan_of_frame >= 0))


def _segment_length(every: int, per_frame_s: float, n: int, min_segment_s: float | None) -> int:
    """Frames in the next segment: at least `every`, and enough to last `min_segment_s` (default
    MIN_SEGMENT_S) at `per_frame_s` a frame (the frame interval, or the last segment's pace if slower)."""
    least = MIN_SEGMENT_S if min_segment_s is None else float(min_segment_s)
    if not least >= 0:
        raise PisplitError(f"--min-segment {least * 1e3:g}: must be a number of milliseconds >= 0")
    if per_frame_s <= 0 or least <= 0:
        return max(int(every), 1)
    return int(min(max(int(every), math.ceil(least / per_frame_s)), max(n, 1)))


def boundaries(n_frames: int, every: int, forced: dict) -> list[int]:
    """Segment starts: every `every` frames and at each forced switch's frame, then n_frames."""
    if every < 1:
        raise PisplitError(f"--switch-every {every}: must be at least 1 frame")
    bad = [f for f in forced if not 0 <= f < n_frames]
    if bad:
        raise PisplitError(f"--switch-at {bad[0]}: frame outside the run's 0..{n_frames - 1}")
    return sorted(set(range(0, n_frames, every)) | set(forced) | {n_frames})


def check_plans(plans: list[Plan], world: int) -> None:
    """What a switching run needs of its plans; PisplitError naming the first problem."""
    if not plans:
        raise PisplitError("switching run: no plans")
    most = max(p.n_ranks for p in plans)
    if world != most:
        raise PisplitError(f"switching run: its largest plan needs {most} ranks, this run has {world} (mpirun -n {most})")
    kinds = {}
    for i, p in enumerate(plans):
        if p.exits:
            raise PisplitError(f"switching run: plan {i} has early exits (cluster.exits); a map's plans are exit branches")
        for d in p.devices:
            if kinds.setdefault(d.rank, (d.kind, d.speed)) != (d.kind, d.speed):
                raise PisplitError(f"switching run: plan {i} puts a {d.kind} on rank {d.rank}, another plan a {kinds[d.rank][0]}")


def run_switching(comm, plans: list[Plan], load_graph: Callable[[int], Graph], options: RunOptions,
                  choose: Callable[[np.ndarray, int], tuple[int, str | None]] | None = None, initial: int = 0, every: int = 1,
                  forced: dict | None = None, probe: bool = True, speed_ratios: list | None = None,
                  min_segment_s: float | None = None) -> SwitchingResult | None:
    """Collective over `comm`: `options.frames` frames of one stream through `plans`, switching between
    frames (module docstring). `load_graph(i)` loads plan i's graph. On rank 0, `choose(transfers, frame)`
    -> (plan index, reason) sees the new (end, bytes, seconds) rows before `frame` and picks the plan of
    the next segment; `forced` {frame: plan index} switches there whatever it says. Rank 0's `initial` counts.
    `min_segment_s` (default MIN_SEGMENT_S) bounds how often a boundary drains the pipeline.
    Emulated: rank 0's `speed_ratios` (cluster.bandwidth.plan_speed_ratios, one per plan) divide each
    rank's dilation while that plan runs (the host speed was measured on the whole model, not the branch)."""
    forced = dict(forced or {})
    rank, size = comm.Get_rank(), comm.Get_size()
    error = None
    try:
        _segment_length(int(every), 1.0, 1, min_segment_s)  # --min-segment
        check_plans(plans, size)
        if options.frames < 1:
            raise PisplitError(f"--frames {options.frames}: must be at least 1")
        boundaries(int(options.frames), int(every), forced)  # checks --switch-every and --switch-at
        if not 0 <= initial < len(plans) or any(not 0 <= i < len(plans) for i in forced.values()):
            raise PisplitError(f"switching run: a plan index outside 0..{len(plans) - 1}")
    except PisplitError as exc:
        error = str(exc)
    try:
        stall = max(default_stall_timeout(p) for p in plans) if options.stall_timeout is None else max(float(options.stall_timeout), 0.0)
    except (PisplitError, ValueError):  # no plans: refused above, agreed below
        stall = DEFAULT_MIN_STALL_S
    # every collective of the set-up is bounded: a rank that never comes is named, never waited for
    transport.agree_watched(comm, error, "the switching run's checks", 3.0 * stall, follow_s=stall_margin(3.0 * stall))
    hosts = host_names_watched(comm, stall)
    who = lambda r: f"rank {r} (host {hosts[r]})"  # noqa: E731
    initial = int(bcast_text_watched(comm, str(initial), "the first plan's broadcast", stall, follow_s=stall_margin(stall)))  # rank 0's chooser says where to start
    text = " ".join(repr(float(r)) for r in speed_ratios) if rank == 0 and speed_ratios is not None else ""
    ratios = [float(v) for v in bcast_text_watched(comm, text, "the plans' speeds' broadcast", stall, follow_s=stall_margin(stall)).split()]
    if ratios and (len(ratios) != len(plans) or not all(r > 0 for r in ratios)):
        ratios = []  # not one positive ratio per plan: every plan keeps the run's host speed
    baseline = settle_baseline()
    setup_s = 3.0 * stall
    # every plan on its own communicator (its first n_ranks ranks): no message of one plan's segment can match another's
    comms = [transport.split_communicator_watched(comm, 0 if rank < p.n_ranks else None, rank, f"plan {i}'s communicator", stall, who,
                                                  follow_s=stall_margin(stall)) for i, p in enumerate(plans)]
    made_lock_dir = None
    if options.emulate and options.core_lock_dir is None:
        made_lock_dir = tempfile.mkdtemp(prefix="pisplit-cores-") if rank == 0 else None
        options.core_lock_dir = bcast_text_watched(comm, made_lock_dir, "the lock folder's broadcast", stall, follow_s=stall_margin(stall))
        if not os.path.isdir(options.core_lock_dir):
            os.makedirs(options.core_lock_dir, mode=0o700, exist_ok=True)
            made_lock_dir = options.core_lock_dir
    ranks: list = [None] * len(plans)
    shared = None
    try:
        if rank == 0 and options.inputs is not None:
            options.inputs = check_input_frames(load_graph(initial), options.inputs)
        for i, (plan, sub) in enumerate(zip(plans, comms)):
            if sub is None:
                continue
            own = replace(options, record_transfers=True, frame_ids=None, on_start=None, progress=None)
            ranks[i] = PipelineRank(sub, plan, load_graph(i), own, baseline, {}, hosts[: plan.n_ranks], shared)
            shared = shared or (ranks[i].device, ranks[i].link)
            ranks[i].step.materialise()
            ranks[i].step.warm_up()
    except PisplitError as exc:
        error = f"rank {rank}: {exc}"
    transport.agree_watched(comm, error, "the end of the plans' set-up", setup_s, lambda r: f"rank {r} (host {hosts[r]})",
                            follow_s=stall_margin(setup_s))
    base_slowdown = shared[0].dilation.slowdown if shared and shared[0] is not None else None
    n = int(options.frames)
    interval = float(options.frame_interval_s)
    worst = max(max(p.predicted_latency_s for p in plans), interval)
    current, last_probe = initial, -1e9
    sink = _Sink(n, options.keep_outputs) if rank == 0 else None
    t_start, wall_start = time.perf_counter(), time.time()
    epoch = None
    switches, estimates, rows = [], [], []
    if options.on_start and rank == 0:
        options.on_start()
    forced_at = sorted(forced)
    length = _segment_length(every, interval, n, min_segment_s)  # the first segment's frames (nothing measured yet)
    lo, k, prev_len, seg_t0 = 0, 0, 0, t_start
    while lo < n:
        if k:
            # the boundary: transfers to rank 0, its choice to everyone
            mine = np.zeros((0, 3))
            for r in ranks:
                if r is not None and r.transfers:
                    mine = np.concatenate([mine, np.asarray(r.transfers, np.float64)])
                    r.transfers.clear()
            bound = stall + 3.0 * prev_len * worst
            got = transport.gather_rows_watched(comm, mine.reshape(-1), f"the switch before frame {lo}", bound,
                                                name=lambda r: f"rank {r} (host {hosts[r]})", follow_s=stall_margin(bound))
            text = None
            if rank == 0:
                new = np.concatenate([g.reshape(-1, 3) for g in got]) if got else np.zeros((0, 3))
                new = new[np.argsort(new[:, 0], kind="stable")]
                epoch = epoch if epoch is not None else _epoch(shared, wall_start)
                rows.append(new)
                nxt, reason = current, None
                if choose is not None:
                    nxt, reason = choose(new, lo)
                    estimate = getattr(choose, "estimate", None)
                    if estimate is not None and new.size:
                        estimates.append((float(new[-1, 0] - epoch), float(estimate)))
                if lo in forced:
                    nxt, reason = forced[lo], f"forced at frame {lo} (--switch-at)"
                if nxt != current:
                    switches.append({"frame": lo, "time_s": time.perf_counter() - t_start, "from": current, "to": nxt,
                                     "reason": reason or "the chooser's"})
                idle = not new.size and time.perf_counter() - last_probe >= PROBE_INTERVAL_S
                do_probe = probe and size > 1 and idle and plans[nxt].n_ranks == 1
                per_frame = (time.perf_counter() - seg_t0) / max(prev_len, 1)  # the last segment's pace, its drain included
                text = f"{nxt} {int(do_probe)} {_segment_length(every, max(interval, per_frame), n, min_segment_s)}"
            nxt_s, probe_s, length_s = bcast_text_watched(comm, text, f"the switch before frame {lo}", bound, lambda r: f"rank {r} (host {hosts[r]})",
                                                          follow_s=stall_margin(bound)).split()
            current, length = int(nxt_s), int(length_s)
            if probe_s == "1":
                sample = _probe(comm, shared)
                if rank == 0:
                    last_probe = time.perf_counter()
                    if sample is not None:
                        ranks[current].transfers.append(sample)
        # a segment ends after `length` frames, at the next forced switch or at the end of the stream
        hi = min([lo + length, n] + [f for f in forced_at if f > lo][:1])
        seg_t0 = time.perf_counter()
        r = ranks[current]
        if r is not None:  # else not in this plan: wait at the next boundary
            if base_slowdown is not None and ratios:
                r.device.dilation.slowdown = base_slowdown / ratios[current]  # this plan's own speed here
            r.restart(np.arange(lo, hi))
            r.options.stream_start = t_start
            r.options.progress = None
            r.run(warm=False)
            if rank == 0:
                sink.take(r, current, lo, t_start)
                if options.progress:
                    options.progress(sink.done, n)
        lo, prev_len, k = hi, hi - lo, k + 1
    # the last segment's transfers, for the report
    mine = np.zeros((0, 3))
    for r in ranks:
        if r is not None and r.transfers:
            mine = np.concatenate([mine, np.asarray(r.transfers, np.float64)])
    got = transport.gather_rows_watched(comm, mine.reshape(-1), "the end of the run", stall + 3.0 * prev_len * worst,
                                        name=lambda r: f"rank {r} (host {hosts[r]})", follow_s=stall_margin(stall))
    late = shared[0].dilation.late_s if shared and shared[0] is not None else 0.0
    lates = transport.gather_rows_watched(comm, np.array([late]), "the end of the run", stall,
                                          name=lambda r: f"rank {r} (host {hosts[r]})", follow_s=stall_margin(stall))
    for r in ranks:
        if r is not None and r.liveness is not None:
            r.liveness.retire()
    if made_lock_dir:
        shutil.rmtree(made_lock_dir, ignore_errors=True)
    if rank != 0:
        return None
    rows.append(np.concatenate([g.reshape(-1, 3) for g in got]))
    transfers = np.concatenate(rows) if rows else np.zeros((0, 3))
    epoch = epoch if epoch is not None else _epoch(shared, wall_start)
    if transfers.size:
        transfers[:, 0] -= epoch
    result = sink.result(time.perf_counter() - t_start, switches, transfers, estimates, k, late)
    result.late_by_rank_s = [float(g[0]) for g in lates]
    return result


def _epoch(shared, wall_start: float) -> float:
    """time.time() of the run's first frame on rank 0's link (a trace's start), else of the run's start."""
    link = shared[1] if shared else None
    return float(link.epoch) if link is not None and link.epoch else wall_start


def _probe(comm, shared) -> tuple | None:
    """Rank 0 sends PROBE_BYTES to rank 1 (the link is idle); returns rank 0's (end, bytes, seconds) sample.
    An emulated link's probe lasts what its pacer says for the bytes now (not occupying it: nothing
    else is on it); a real one's lasts until rank 1 acknowledges it (less nothing: a round trip)."""
    rank = comm.Get_rank()
    link = shared[1] if shared else None
    nbytes = PROBE_BYTES if link is not None else REAL_PROBE_BYTES
    if rank == 0:
        buf = np.zeros(nbytes // 4, np.float32)
        now = time.time()
        request = transport.isend_buffer(comm, buf, 1, TAG_PROBE)
        ack = np.zeros(1, np.float32)
        back = transport.irecv_buffer(comm, ack, 1, TAG_PROBE)
        transport.wait_quietly([request, back])
        if link is not None:
            return (now, float(nbytes), link.seconds(nbytes, 1, now))
        end = time.time()
        return (end, float(nbytes), end - now)
    if rank == 1:
        buf = np.zeros(nbytes // 4, np.float32)
        transport.wait_quietly([transport.irecv_buffer(comm, buf, 0, TAG_PROBE)])
        transport.wait_quietly([transport.isend_buffer(comm, np.ones(1, np.float32), 0, TAG_PROBE)])
    return None


class _Sink:
    """Rank 0: every segment's results put together, by frame of the stream."""

    def __init__(self, n: int, keep: bool):
        self.n = n
        self.plan_of_frame = np.full(n, -1, np.int64)
        self.order = np.full(n, -1, np.int64)
        self.argmax = np.zeros(n, np.int64)
        self.latency = np.zeros(n)
        self.done_at = np.zeros(n)
        self.outputs: dict | None = {} if keep else None
        self.done = 0

    def take(self, r: PipelineRank, plan: int, lo: int, t_start: float) -> None:
        got = r.frame_order[: r.done]
        if r.done != r.n_frames:
            raise PisplitError(f"switching run: plan {plan} answered {r.done} of frames {lo}..{lo + r.n_frames - 1}")
        frames = lo + got
        if np.any(self.plan_of_frame[frames] >= 0):
            raise PisplitError(f"switching run: frame {int(frames[self.plan_of_frame[frames] >= 0][0])} answered twice")
        self.plan_of_frame[frames] = plan
        self.order[self.done: self.done + got.size] = frames
        self.done += got.size
        seg = slice(lo, lo + r.n_frames)
        self.argmax[seg] = r.argmax
        self.latency[seg] = r.latency
        self.done_at[seg] = r.done_at + (r.t0 - t_start)
        if self.outputs is not None:
            for t, a in r.outputs.items():
                have = self.outputs.get(t)
                if have is None:
                    have = self.outputs[t] = np.full((self.n, *a.shape[1:]), np.nan, np.float32)
                elif have.shape[1:] != a.shape[1:]:
                    raise PisplitError(f"switching run: output {t} is {have.shape[1:]} in one plan, {a.shape[1:]} in plan {plan}")
                have[seg] = a

    def result(self, wall_s, switches, transfers, estimates, segments, late_s) -> SwitchingResult:
        return SwitchingResult(self.plan_of_frame, self.order[: self.done], self.argmax, self.latency, self.done_at, wall_s,
                               self.outputs, switches, transfers, estimates, segments, late_s)
