"""A run that switches plans between frames (issue 16, Edgent's Algorithm 3 at run time).

`run_switching` streams frames through one of several plans at a time (a configuration map's plans:
the same model's exit branches and cuts, cluster.bandwidth.MapChooser picks among them). The stream
has boundaries at frames (after at least `every` frames and at least MIN_SEGMENT_S of them, at the
frame interval or the pace rank 0 measured since the last boundary; and at each forced switch). A
plan runs with the ordinary pipeline runtime (cluster.runtime.PipelineRank, restarted with its engines
warm). Rank 0 decides at a boundary as soon as its own part of the frames before it is done, the
frames in flight still flowing: the plan kept, every rank of it extends its run to the next boundary
(PipelineRank.extend) and nothing drains; a switch (or the stream's end) drains the pipeline at the
boundary before the next plan begins, so every frame is answered exactly once, in order, by exactly
one plan, and a switch can lose nothing in flight. Rank 0 tells every other rank at each boundary
(a three-number buffer, never pickled); a rank of the plan hears it when its frames before the
boundary are done, a rank outside the plan waits for it. The chooser sees every transfer made on a
link (end time, bytes, seconds: the emulated pacer's duration, or on a real link the time until MPI
completed the send): rank 0's own as they are made, another rank's as it sends them to rank 0 at
each boundary it passes (and all that are left at a drain, counted so none is lost), so it decides
on rank 0's (the Pi's, in Edgent's set-up) up to the boundary and the others' up to their previous
one. While the running plan sends nothing on the link (all on the device), rank 0 sends a probe of
PROBE_BYTES (a real link: REAL_PROBE_BYTES, timed to rank 1's acknowledgement) to rank 1 at most
every PROBE_INTERVAL_S, so a link that recovers is seen.

Plans may have fewer ranks than the run (an all-on-device plan on rank 0 alone): each plan runs on a
sub-communicator of its first n_ranks ranks and the others wait for the next drain (hearing rank 0
at each boundary, so a silent rank 0 is named within a segment's bound; such a rank that stops is
named by rank 0 at the next drain, the frames going on meanwhile). A rank is the same emulated
device and link in every plan (the plans must agree on each rank's device kind).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph
from partitioners.plan import Plan

from . import transport
from .runtime import (DEFAULT_MIN_STALL_S, PipelineRank, RunOptions, check_input_frames, default_stall_timeout, host_names_watched, settle_baseline,
                      stage_communicators, stall_margin)
from .watched import STAGGER_S, bcast_text_watched

PROBE_BYTES = 16384
REAL_PROBE_BYTES = 65536  # a real link's probe: as large as the smallest transfer counted on one (MPI's eager limit)
PROBE_INTERVAL_S = 0.25
MIN_SEGMENT_S = 0.25  # rank 0 decides at most about once per this many seconds of frames
TAG_PROBE = 77
TAG_CONTROL = 76  # rank 0's word at a boundary to every other rank (_Boundaries)
TAG_SAMPLES = 75  # a rank's link transfers to rank 0 while the run goes on


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
    segments: int = 0  # boundaries + 1 (each boundary a decision)
    drains: int = 0  # runs of a plan, each ending in a drain: the switches + 1
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
                  min_segment_s: float | None = None, drain_always: bool = False) -> SwitchingResult | None:
    """Collective over `comm`: `options.frames` frames of one stream through `plans`, switching between
    frames (module docstring). `load_graph(i)` loads plan i's graph. On rank 0, `choose(transfers, frame)`
    -> (plan index, reason) sees the new (end, bytes, seconds) rows before `frame` and picks the plan of
    the next segment; `forced` {frame: plan index} switches there whatever it says. Rank 0's `initial` counts.
    `min_segment_s` (default MIN_SEGMENT_S) bounds how often rank 0 decides (only a switch drains the pipeline;
    `drain_always` on rank 0: every boundary drains, as before issue 16's kept plans, for benchmarks).
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
    # and each split stage on one of its plan's (the stage's ranks, its lead first)
    split_comms = [stage_communicators(sub, p, stall) if sub is not None else {} for p, sub in zip(plans, comms)]
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
            ranks[i] = PipelineRank(sub, plan, load_graph(i), own, baseline, split_comms[i], hosts[: plan.n_ranks], shared)
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
    sink = _Sink(n, options.keep_outputs) if rank == 0 else None
    t_start, wall_start = time.perf_counter(), time.time()
    if options.on_start and rank == 0:
        options.on_start()
    forced_at = sorted(forced)

    def segment_end(lo: int, length: int) -> int:  # the next boundary: after `length` frames, at a forced switch, at the end
        return min([lo + length, n] + [f for f in forced_at if f > lo][:1])

    talk = _Boundaries(comm, plans, ranks, shared, hosts, stall, worst)
    if rank == 0:
        talk.start_deciding(choose, forced, probe, every, interval, n, min_segment_s, t_start, wall_start, initial, drain_always)
    current, lo = initial, 0
    hi = segment_end(0, _segment_length(every, interval, n, min_segment_s))  # the first segment (nothing measured yet)
    while True:
        # plan `current` from frame lo; at each boundary before the end rank 0 decides while the frames go on: the plan
        # kept, the run takes the next segment's frames (PipelineRank.extend); else it drains at the boundary
        r = ranks[current]
        talk.last_len = hi - lo
        if r is not None:
            if base_slowdown is not None and ratios:
                r.device.dilation.slowdown = base_slowdown / ratios[current]  # this plan's own speed here
            r.restart(np.arange(lo, hi))
            r.options.stream_start = t_start
            r.options.progress = (lambda done, total: options.progress(sink.done + done, n)) if rank == 0 and options.progress else None
            r.options.more = (lambda pr, at=lo: talk.decide(pr, at, segment_end)) if rank == 0 else (lambda pr, at=lo: talk.follow(pr, at))
            r.run(warm=False)
            stop = lo + r.n_frames
            if rank == 0:
                sink.take(r, current, lo, t_start)
                if options.progress:
                    options.progress(sink.done, n)
        else:  # not in this plan: rank 0's word at each boundary, until the one where the run drains
            stop = talk.idle(lo, hi)
        # the drain's boundary: every rank's transfers not yet with rank 0 to it, its choice to everyone
        talk.drains += 1
        talk.collect(f"the switch before frame {stop}" if stop < n else "the end of the run")
        if stop >= n:
            break
        text = talk.decided if rank == 0 else None
        bound = stall + 3.0 * talk.last_len * worst
        nxt_s, probe_s, length_s = bcast_text_watched(comm, text, f"the switch before frame {stop}", bound, who,
                                                      follow_s=stall_margin(bound)).split()
        current, lo = int(nxt_s), stop
        hi = segment_end(lo, int(length_s))
        if probe_s == "1":
            talk.probe(current)
    late = shared[0].dilation.late_s if shared and shared[0] is not None else 0.0
    lates = transport.gather_rows_watched(comm, np.array([late]), "the end of the run", stall,
                                          name=lambda r: f"rank {r} (host {hosts[r]})", follow_s=stall_margin(stall))
    talk.finish()
    for r in ranks:
        if r is not None and r.liveness is not None:
            r.liveness.retire()
    if made_lock_dir:
        shutil.rmtree(made_lock_dir, ignore_errors=True)
    if rank != 0:
        return None
    transfers = np.concatenate(talk.rows) if talk.rows else np.zeros((0, 3))
    epoch = talk.epoch if talk.epoch is not None else _epoch(shared, wall_start)
    if transfers.size:
        transfers = transfers[np.argsort(transfers[:, 0], kind="stable")]
        transfers[:, 0] -= epoch
    result = sink.result(time.perf_counter() - t_start, talk.switches, transfers, talk.estimates, talk.segments, late)
    result.drains = talk.drains
    result.late_by_rank_s = [float(g[0]) for g in lates]
    return result


KEEP, STOP = 1, 0  # rank 0's word at a boundary: [KEEP, the next boundary, probe] or [STOP, this boundary, 0]


class _Boundaries:
    """The boundaries of a switching run, as each rank sees them.

    Rank 0 decides at each boundary (`decide`, called by its PipelineRank as its frames before the
    boundary are done, the later frames still flowing): it takes the transfers it has (its own, those
    other ranks sent it), asks the chooser, and tells every other rank [KEEP, next boundary, probe] or
    [STOP, boundary, 0] (TAG_CONTROL on the run's communicator, buffers). KEEP: every rank of the plan
    extends its run, nothing drains; STOP (a switch, or the end of the stream): the run drains at the
    boundary, then `collect` gathers every rank's transfers and the next plan is broadcast. A rank of
    the plan other than 0 hears rank 0 in `follow` when its own frames are done (and sends rank 0 the
    transfers it made meanwhile, TAG_SAMPLES, counted so that `collect` loses none); a rank outside the
    plan in `idle`. Every rank other than 0 receives exactly one word per boundary, in order."""

    def __init__(self, comm, plans, ranks, shared, hosts, stall: float, worst: float):
        self.comm, self.plans, self.ranks, self.shared, self.hosts = comm, plans, ranks, shared, hosts
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.stall, self.worst = stall, worst
        self.sends: dict = {}  # destination -> [(request, buffer)] of words (rank 0) or transfer rows (other ranks) leaving
        self.sent = 0  # messages of transfer rows this rank sent to rank 0 while running
        self.received = [0] * self.size  # rank 0: of each rank's
        self.drains = 0
        self.segments = 1
        self.rows: list = []  # rank 0: every transfer row, in the order they came
        self.pending: list = []  # rank 0: rows not yet shown to the chooser
        self.switches: list = []
        self.estimates: list = []
        self.epoch = None
        self.decided = None
        self.last_len = 1  # frames between the last two boundaries: a drain's bound is counted in them

    def _who(self, r: int) -> str:
        return f"rank {r} (host {self.hosts[r]})"

    def _mine(self) -> np.ndarray:
        """This rank's transfers not yet handed on (all its plans' PipelineRanks), cleared."""
        mine = [np.asarray(r.transfers, np.float64).reshape(-1, 3) for r in self.ranks if r is not None and r.transfers]
        for r in self.ranks:
            if r is not None:
                r.transfers.clear()
        return np.concatenate(mine) if mine else np.zeros((0, 3))

    def _send(self, buf: np.ndarray, dest: int, tag: int) -> None:
        leaving = self.sends.setdefault(dest, deque())
        while leaving and transport.request_done(leaving[0][0]):  # in order: a rank that takes none costs one test
            leaving.popleft()
        leaving.append((transport.isend_buffer(self.comm, buf, dest, tag), buf))

    # --- rank 0 ------------------------------------------------------------------------------------
    def start_deciding(self, choose, forced, probe, every, interval, n, min_segment_s, t_start, wall_start, current,
                       drain_always: bool = False) -> None:
        self.drain_always = drain_always
        self.choose, self.forced, self.probing, self.every, self.interval = choose, forced, probe, every, interval
        self.n, self.min_segment_s, self.t_start, self.wall_start = n, min_segment_s, t_start, wall_start
        self.current, self.last_probe, self.since, self.since_frame = current, -1e9, t_start, 0

    def _receive_rows(self, source: int, block_s: float | None = None) -> bool:
        """Rank 0: one message of transfer rows from `source` (MPI.ANY_SOURCE: any) if one is there (block_s:
        wait up to that long for it, then name the rank); True if one came."""
        MPI = transport.MPI
        status, clock, pause = MPI.Status(), transport.StallClock(block_s or 0.0), 2e-5
        while not self.comm.Iprobe(source=source, tag=TAG_SAMPLES, status=status):
            if block_s is None:
                return False
            if clock.stalled(None):
                raise transport.StallError(f"{self._who(source)}'s transfers did not come for {clock.waited:.1f} s (stalled or lost)")
            time.sleep(pause)
            pause = min(pause * 2, 5e-4)
        buf = np.empty(status.Get_count(MPI.DOUBLE), np.float64)
        got = status.Get_source()
        self.comm.Recv(buf, source=got, tag=TAG_SAMPLES)
        self.received[got] += 1
        self.pending.append(buf.reshape(-1, 3))
        return True

    def decide(self, pr: PipelineRank, lo: int, segment_end) -> bool:
        """Rank 0's PipelineRank `pr` (running from frame `lo`) is done with its frames before the boundary: the
        plan from there. True: kept, `pr` extended to the next boundary, every other rank told; False: the run
        drains here (told too), `decided` holds the broadcast for after the drain."""
        b = lo + pr.n_frames
        if b >= self.n:
            self._tell(STOP, b, 0)
            return False
        self.segments += 1
        while self._receive_rows(transport.MPI.ANY_SOURCE):
            pass
        self.pending.append(self._mine())
        new = np.concatenate(self.pending)
        self.pending = []
        new = new[np.argsort(new[:, 0], kind="stable")]
        self.epoch = self.epoch if self.epoch is not None else _epoch(self.shared, self.wall_start)
        self.rows.append(new)
        now = time.perf_counter()
        nxt, reason = self.current, None
        if self.choose is not None:
            nxt, reason = self.choose(new, b)
            estimate = getattr(self.choose, "estimate", None)
            if estimate is not None and new.size:
                self.estimates.append((float(new[-1, 0] - self.epoch), float(estimate)))
        if b in self.forced:
            nxt, reason = self.forced[b], f"forced at frame {b} (--switch-at)"
        if nxt != self.current:
            self.switches.append({"frame": b, "time_s": now - self.t_start, "from": self.current, "to": nxt,
                                  "reason": reason or "the chooser's"})
        idle = not new.size and now - self.last_probe >= PROBE_INTERVAL_S
        do_probe = self.probing and self.size > 1 and idle and self.plans[nxt].n_ranks == 1
        per_frame = (now - self.since) / max(b - self.since_frame, 1)  # the pace since the last boundary
        self.since, self.since_frame = now, b
        length = _segment_length(self.every, max(self.interval, per_frame), self.n, self.min_segment_s)
        if nxt != self.current or self.drain_always:
            self._tell(STOP, b, 0)
            self.decided = f"{nxt} {int(do_probe)} {length}"
            self.current = nxt
            return False
        hi = segment_end(b, length)
        self.last_len = hi - b
        self._tell(KEEP, hi, int(do_probe))
        if do_probe:  # the plan is all on rank 0: its link is idle
            self.probe(nxt)
        pr.extend(np.arange(b, hi))
        return True

    def _tell(self, kind: int, frame: int, probe: int) -> None:
        for r in range(1, self.size):
            self._send(np.array([kind, frame, probe], np.int64), r, TAG_CONTROL)

    def probe(self, current: int) -> None:
        """Both ends of the idle link's probe (rank 0's sample goes to its plan's transfers)."""
        bound = self.stall + 3.0 * self.worst
        sample = _probe(self.comm, self.shared, bound + stall_margin(bound), self._who)
        if self.rank == 0:
            self.last_probe = time.perf_counter()
            if sample is not None:
                self.ranks[current].transfers.append(sample)

    # --- the other ranks ---------------------------------------------------------------------------
    def _word(self, wait, lo: int) -> tuple[int, int, int]:
        buf = np.zeros(3, np.int64)
        request = transport.irecv_buffer(self.comm, buf, 0, TAG_CONTROL)
        wait(request)
        kind, frame, probe = (int(v) for v in buf)
        if kind not in (KEEP, STOP) or frame < lo:
            raise PisplitError(f"switching run: rank {self.rank} got a boundary word {buf.tolist()} after frame {lo}")
        return kind, frame, probe

    def follow(self, pr: PipelineRank, lo: int) -> bool:
        """A rank of the running plan other than 0, its frames before the boundary done: its transfers so far to
        rank 0, then rank 0's word (waiting under the run's stall bound, the pipeline going on). True: extended."""
        mine = self._mine()
        if mine.size:
            self._send(mine.reshape(-1), 0, TAG_SAMPLES)
            self.sent += 1
        b = lo + pr.n_frames
        kind, frame, _ = self._word(lambda q: pr.await_request(q, f"no word from rank 0 on the frames after {b - 1}", 0), b)
        if kind == STOP:
            if frame != b:
                raise PisplitError(f"switching run: rank {self.rank} ran frames to {b}, rank 0 stopped at {frame}")
            return False
        pr.extend(np.arange(b, frame))
        self.last_len = frame - b
        return True

    def idle(self, lo: int, hi: int) -> int:
        """A rank outside the running plan: rank 0's words until the one where the run drains (probing with
        rank 0 when told); returns that boundary's frame."""
        while True:
            bound = self.stall + 3.0 * (hi - lo) * self.worst

            def wait(request):
                clock, pause = transport.StallClock(bound + stall_margin(bound) + STAGGER_S * (self.rank - 1)), 2e-5  # one rank speaks
                while not transport.request_done(request):
                    if clock.stalled(None):
                        raise transport.StallError(f"{self._who(0)} said nothing of the frames after {hi - 1} for {clock.waited:.1f} s "
                                                   "(stalled or lost)")
                    time.sleep(pause)
                    pause = min(pause * 2, 5e-4)

            kind, frame, probe = self._word(wait, hi)
            if probe:
                self.probe(-1)
            if kind == STOP:
                return frame
            lo, hi = hi, frame
            self.last_len = hi - lo

    # --- after a drain, every rank ----------------------------------------------------------------------
    def collect(self, what: str) -> None:
        """Collective: every rank's transfers not yet with rank 0, and how many messages of them it sent while
        running (rank 0 takes those still on their way): none is lost."""
        mine = self._mine()
        bound = self.stall + 3.0 * self.last_len * self.worst  # the frames in flight at the drain: at most a segment's
        got = transport.gather_rows_watched(self.comm, np.concatenate([[float(self.sent)], mine.reshape(-1)]), what, bound,
                                            name=self._who, follow_s=stall_margin(bound))
        if self.rank != 0:
            return
        for r, row in enumerate(got):
            if r:
                while self.received[r] < int(row[0]):
                    self._receive_rows(r, self.stall)
            self.pending.append(row[1:].reshape(-1, 3))
        if got and self.epoch is None:
            self.epoch = _epoch(self.shared, self.wall_start)

    def finish(self) -> None:
        """The end of the run: the last rows into the record (rank 0); this rank's messages gone."""
        if self.rank == 0 and self.pending:
            self.rows.extend(self.pending)
            self.pending = []
        transport.wait_quietly([q for leaving in self.sends.values() for q, _ in leaving])
        self.sends = {}


def _epoch(shared, wall_start: float) -> float:
    """time.time() of the run's first frame on rank 0's link (a trace's start), else of the run's start."""
    link = shared[1] if shared else None
    return float(link.epoch) if link is not None and link.epoch else wall_start


def _probe(comm, shared, seconds: float = 0.0, name: Callable[[int], str] | None = None) -> tuple | None:
    """Rank 0 sends PROBE_BYTES to rank 1 (the link is idle); returns rank 0's (end, bytes, seconds) sample.
    An emulated link's probe lasts what its pacer says for the bytes now (not occupying it: nothing
    else is on it); a real one's lasts until rank 1 acknowledges it (less nothing: a round trip).
    Either end waits at most `seconds` (> 0) for the other, then names it (StallError)."""
    rank = comm.Get_rank()
    name = name or (lambda r: f"rank {r}")
    watch = (transport.Watch(seconds, lambda peers, _: f"{name(peers[0] if peers else 1 - rank)} did not answer the link's probe")
             if seconds > 0 else None)
    link = shared[1] if shared else None
    nbytes = PROBE_BYTES if link is not None else REAL_PROBE_BYTES
    if rank == 0:
        buf = np.zeros(nbytes // 4, np.float32)
        now = time.time()
        request = transport.isend_buffer(comm, buf, 1, TAG_PROBE)
        ack = np.zeros(1, np.float32)
        back = transport.irecv_buffer(comm, ack, 1, TAG_PROBE)
        transport.wait_quietly([request, back], watch=watch, peers=[1, 1])
        if link is not None:
            return (now, float(nbytes), link.seconds(nbytes, 1, now))
        end = time.time()
        return (end, float(nbytes), end - now)
    if rank == 1:
        buf = np.zeros(nbytes // 4, np.float32)
        transport.wait_quietly([transport.irecv_buffer(comm, buf, 0, TAG_PROBE)], watch=watch, peers=[0])
        transport.wait_quietly([transport.isend_buffer(comm, np.ones(1, np.float32), 0, TAG_PROBE)], watch=watch, peers=[0])
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
