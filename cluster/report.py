"""What a pipeline run measured, as plain data: throughput, latency, per-stage times, predicted vs
measured, memory per rank, and a Chrome Trace Event document (opens in Perfetto): the measured run
as one process with a track per rank, the plan's predicted schedule of the same frames as a second
process with the same tracks, and flow arrows from each stage's send of a frame to the next stage's
receive of it."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from partitioners.cost import RUNTIME_WINDOW
from partitioners.plan import Plan
from partitioners.vocabulary import NO_SPLIT, SPLIT_MODE, StageMode

from .runtime import COMPUTE, EVENT_NAMES, SEGMENT_EVENTS, RunResult, default_max_in_flight, entry_rank, segment_event

MEASURED_PID, PREDICTED_PID = 0, 1
SEGMENT_TRACK = 100_000  # predicted process: a split stage lead's per-segment track is this + its rank
COMPLETION_POINTS = 256  # (seconds, frames done) points a report keeps of its completion curve


def steady_throughput(done_s: np.ndarray) -> float:
    """Frames per second once the pipeline is full: the frames completed after about the first quarter of
    the run over the time they took, counted from the end of a group of completions (frames that finish
    together: a data-parallel stage's burst, results rank 0 takes at one poll) to the last completion.
    Not (n - 1) / span, whose start mid-burst overstates (4 replicas finishing 16 frames in 4 bursts read
    5x one replica), and not a line fitted through every burst's end: a single result taken one poll
    early shifts which completions end a burst, and the fit read 0.86-0.99 frames/s where two emulated
    VGG16 replicas ran 0.74 (their rank 0 took a replica's result during its own link hold)."""
    t = np.sort(np.asarray(done_s, float))
    n = t.size
    if n < 2:
        return 1.0 / t[0] if n and t[0] > 0 else 0.0
    together = 0.25 * (t[-1] - t[0]) / (n - 1)  # closer than a quarter of the mean spacing: one group
    k = max(0, n // 4 - 1)
    while k < n - 1 and t[k + 1] - t[k] <= together:
        k += 1
    if k >= n - 1:  # one group to the end: from the first group's end
        k = 0
        while k < n - 1 and t[k + 1] - t[k] <= together:
            k += 1
        if k >= n - 1:
            return 0.0 if t[-1] <= 0 else n / t[-1]
    span = t[-1] - t[k]
    return (n - 1 - k) / span if span > 0 else 0.0


def replica_burst(plan: Plan) -> int:
    """How many frames the plan's widest data-parallel stage finishes at once (1 without one)."""
    return max([len(st.ranks) for st in plan.stages if st.mode == StageMode.DATA_PARALLEL] + [1])


def late_share(report: dict) -> float:
    """The largest share of an emulated run's wall time any of its ranks fell behind its device
    (emulation_late_s over wall_s of a run_report document): the host lateness benches and emulate judge by."""
    return max((r["emulation_late_s"] for r in report["ranks"]), default=0.0) / max(report["wall_s"], 1e-9)


def percentiles_ms(seconds: np.ndarray) -> dict:
    """p50, p90, p99, mean and max of per-frame latencies, in milliseconds."""
    s = np.asarray(seconds, float) * 1e3
    if s.size == 0:
        return {}
    return {"p50": float(np.percentile(s, 50)), "p90": float(np.percentile(s, 90)), "p99": float(np.percentile(s, 99)),
            "mean": float(s.mean()), "max": float(s.max())}


def memory_slope(samples, baseline: int = 0) -> float | None:
    """Resident memory growth in bytes per 1,000 frames: a line fitted to a rank's (frame, bytes)
    samples over the second half of the run (before it, the pipeline fills and the allocators and
    MPI's buffer pools grow to their working size: about 100 KiB over the first 2,000 lenet5 frames,
    then flat); None with fewer than 4 such samples."""
    s = np.asarray(samples, float).reshape(-1, 2)
    if s.shape[0] == 0:
        return None
    s = s[s[:, 0] >= s[:, 0].max() / 2]
    if s.shape[0] < 4 or np.ptp(s[:, 0]) <= 0:
        return None
    return float(np.polyfit(s[:, 0], s[:, 1] - baseline, 1)[0] * 1000)


def completion_curve(done_s, points: int = COMPLETION_POINTS) -> list:
    """[[seconds since the start, frames done by then], ...]: the run's completions at up to
    `points` evenly spaced frame counts (the first and the last included), for a throughput chart
    whose size does not grow with the run."""
    t = np.sort(np.asarray(done_s if done_s is not None else [], float))
    if t.size == 0:
        return []
    at = np.unique(np.linspace(0, t.size - 1, min(points, t.size)).round().astype(int))
    return [[float(t[i]), int(i + 1)] for i in at]


def run_report(plan: Plan, result: RunResult, engine: str, emulated: bool) -> dict:
    """The report document of a finished run (rank 0)."""
    n = int(result.frame_ids.size)
    by_rank = {s.rank: s for s in result.ranks}
    stages = []
    for stage in plan.stages:
        rows = [by_rank[r] for r in stage.ranks]
        frames = max(sum(r.frames for r in rows) if stage.mode == StageMode.DATA_PARALLEL else rows[0].frames, 1)
        # per frame: a data-parallel stage's replicas share the frames; a split stage's lead carries the frame
        if stage.mode == StageMode.DATA_PARALLEL:
            per = lambda attr: sum(getattr(r, attr) for r in rows) / frames  # noqa: E731
        else:
            per = lambda attr: getattr(rows[0], attr) / frames  # noqa: E731
        pred = stage.predicted
        stages.append({
            "index": stage.index, "ranks": list(stage.ranks), "mode": stage.mode, "nodes": [stage.node_start, stage.node_stop],
            "frames": frames,
            "compute_ms": per("compute_s") * 1e3, "comm_ms": per("comm_s") * 1e3, "wait_ms": per("wait_s") * 1e3,
            "predicted_compute_ms": pred.compute_s * 1e3 if pred else None,
            "predicted_comm_ms": pred.comm_s * 1e3 if pred else None,
            "send_bytes": stage.send_bytes,
            "segments": _segment_rows(plan, stage, rows[0], frames) if stage.mode == StageMode.SPLIT else None,
        })
    ranks = []
    for s in sorted(result.ranks, key=lambda r: r.rank):
        predicted = s.memory_predicted_bytes if s.memory_predicted_bytes >= 0 else None
        above = max(s.memory_peak_bytes - s.memory_baseline_bytes, 0)
        ranks.append({
            "rank": s.rank, "stage": s.stage, "kind": plan.devices[s.rank].kind, "frames": s.frames,
            "compute_s": s.compute_s, "comm_s": s.comm_s, "wait_s": s.wait_s, "emulation_late_s": s.late_s,
            # how far behind its emulated clock the device ended a frame's compute, on average: lateness
            # not caught up (this machine's load), where emulation_late_s also counts what was
            "emulation_behind_ms_per_frame": s.behind_s / s.frames * 1e3 if s.frames else 0.0,
            "link_busy_s": s.link_busy_s,
            "memory_baseline_bytes": s.memory_baseline_bytes, "memory_peak_bytes": s.memory_peak_bytes,
            "memory_load_peak_above_baseline_bytes": max(s.memory_load_peak_bytes - s.memory_baseline_bytes, 0),
            "memory_above_baseline_bytes": above, "memory_predicted_bytes": predicted,
            "memory_ratio": above / predicted if predicted else None,
            "memory_samples": [[f, b - s.memory_baseline_bytes] for f, b in s.memory_samples],
            "memory_slope_bytes_per_1000_frames": memory_slope(s.memory_samples, s.memory_baseline_bytes),
            "trace_events_dropped": s.events_dropped,
        })
    ordered = bool(np.array_equal(np.sort(result.frame_ids), np.arange(n)))
    return {
        "model": plan.model, "planner": plan.planner, "engine": engine, "emulated": emulated,
        "ranks_total": plan.n_ranks, "frames": n,
        "throughput_fps": steady_throughput(result.done_s),
        "wall_fps": n / result.wall_s if result.wall_s > 0 else 0.0, "wall_s": result.wall_s,
        "predicted_fps": plan.predicted_throughput_fps or None,
        "latency_ms": percentiles_ms(result.latency_s),
        "predicted_latency_ms": plan.predicted_latency_s * 1e3 if plan.predicted_latency_s else None,
        "every_frame_once": ordered,
        # rank 0 (the source and sink): how far behind its emulated clock it ended a frame, on average
        "emulation_behind_ms_per_frame": ranks[0]["emulation_behind_ms_per_frame"] if emulated and ranks else None,
        "completed": completion_curve(result.done_s),
        "stages": stages, "ranks": ranks,
        "exits": _exit_counts(result),  # frames answered per exit (runs with early exits), else None
    }


def _segment_rows(plan: Plan, stage, lead, frames: int) -> list:
    """A split stage's segments as its lead measured them, per frame, beside the plan's prediction:
    where a latency plan's time goes, segment by segment."""
    measured = list(lead.segment_s) if len(lead.segment_s) == len(stage.segments) else [(None, None)] * len(stage.segments)
    rows = []
    for k, (g, (compute, transfer)) in enumerate(zip(stage.segments, measured)):
        rows.append({"name": _event_name(plan, stage, SEGMENT_EVENTS + 2 * k).removesuffix(" compute"),
                     "ranks": len(g.ranks) if g.kind != NO_SPLIT else 1,
                     "compute_ms": compute / frames * 1e3 if compute is not None else None,
                     "transfer_ms": transfer / frames * 1e3 if transfer is not None else None,
                     "predicted_compute_ms": g.predicted[0] * 1e3 if g.predicted else None,
                     "predicted_transfer_ms": g.predicted[1] * 1e3 if g.predicted else None})
    return rows


def _exit_counts(result: RunResult) -> dict | None:
    from .exits import exit_counts

    return exit_counts(result)


# --- the plan's predicted schedule ---------------------------------------------------------------------
@dataclass(frozen=True)
class PredictedSchedule:
    """When the plan's cost model expects each stage to handle each of frames 0..n-1, in seconds from
    the start of the run: arrays of shape (stages, frames).

    Each frame's entry rank (every rank, in a split stage) computes it from `start` to `compute_end`
    and then communicates until `busy_end` (the stage's predicted comm_s: its receive, send and, for
    rank 0, results); the next stage may start on the frame once it has crossed the link, at
    `handoff` (compute end + the send_bytes' transfer at the plan's link, and in a split stage its
    transfers between the parts before that). A rank takes its next frame when its previous one is
    done (busy_end), and rank 0 admits frame f once frame f - max_in_flight has left the last
    stage, as the runtime does. So one stage's frames are
    1 / (compute_s + comm_s) apart (a data-parallel stage's replicas take turns): the plan's
    predicted throughput, once the pipeline is full. One frame alone takes the plan's predicted
    latency through single and split stages; a data-parallel replica's input from rank 0 and result
    back to it are not in the plan file, so the schedule's latency is short of the plan's by them.
    """

    start: np.ndarray
    compute_end: np.ndarray
    busy_end: np.ndarray
    handoff: np.ndarray

    @property
    def done_s(self) -> np.ndarray:
        """Per frame: when its result leaves the last stage."""
        return self.handoff[-1]


def predicted_schedule(plan: Plan, n_frames: int, max_in_flight: int | None = None) -> PredictedSchedule | None:
    """The plan's predicted timeline of `n_frames` frames (None when a stage has no prediction, as
    hand-made plans may not). `max_in_flight` as the run was given it (None: the runtime's default)."""
    if any(s.predicted is None for s in plan.stages):
        return None
    limit = max(int(max_in_flight or default_max_in_flight(plan, RUNTIME_WINDOW)), 1)
    n_stages, n = len(plan.stages), max(int(n_frames), 0)
    start, compute_end, busy_end, handoff = (np.zeros((n_stages, n)) for _ in range(4))
    free = [0.0] * plan.n_ranks

    def transfer(nbytes: int) -> float:
        return nbytes * 8.0 / plan.link_bandwidth_bps + plan.link_latency_s if nbytes else 0.0

    steps = []
    for i, s in enumerate(plan.stages):
        receive, send = transfer(plan.stages[i - 1].send_bytes) if i else 0.0, transfer(s.send_bytes)
        # a split stage's scatters, exchanges and gathers lie on the frame's path: its comm_s less its
        # own input and output transfers (the stage costs keep no finer split of comm_s)
        inner = max(s.predicted.comm_s - receive - send, 0.0) if s.mode == StageMode.SPLIT else 0.0
        steps.append((s, s.predicted.compute_s, s.predicted.compute_s + s.predicted.comm_s, s.predicted.compute_s + inner + send))
    done: deque = deque(maxlen=limit)  # the last `limit` frames' exits from the last stage
    for f in range(n):  # a recurrence over frames, on plain floats (100,000 frames in a second or two)
        ready = done[0] if len(done) == limit else 0.0
        for i, (stage, compute, busy, path) in enumerate(steps):
            ranks = stage.ranks if stage.mode == SPLIT_MODE else (entry_rank(stage, f),)
            t = max(ready, *(free[r] for r in ranks))
            start[i, f], compute_end[i, f], busy_end[i, f] = t, t + compute, t + busy
            handoff[i, f] = ready = t + path
            for r in ranks:
                free[r] = t + busy
        done.append(ready)
    return PredictedSchedule(start, compute_end, busy_end, handoff)


def run_frames(result: RunResult) -> int:
    """Frames the run was asked for (else as many as came back, else the highest traced frame + 1)."""
    if result.frames_total:
        return int(result.frames_total)
    if result.frame_ids is not None and result.frame_ids.size:
        return int(result.frame_ids.size)
    return max((int(np.max(_events(s)[:, 1])) + 1 for s in result.ranks if len(s.events)), default=0)


def _events(stats) -> np.ndarray:
    """A rank's trace events as an (n, 4) float array (kind, frame, start_s, duration_s)."""
    return np.asarray(stats.events, np.float64).reshape(-1, 4)


def _track_names(plan: Plan, pid: int, rank: int, stage: int, what: str):
    label = f"rank {rank} · stage {stage} · {plan.devices[rank].kind}{what}"
    yield {"name": "thread_name", "ph": "M", "pid": pid, "tid": rank, "args": {"name": label}}
    yield {"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": rank, "args": {"sort_index": rank}}


def _trace_events(plan: Plan, result: RunResult, hops: list, offsets: np.ndarray, max_in_flight: int | None = None):
    yield {"name": "process_name", "ph": "M", "pid": MEASURED_PID, "tid": 0, "args": {"name": f"pisplit {plan.model} · measured"}}
    yield {"name": "process_sort_index", "ph": "M", "pid": MEASURED_PID, "tid": 0, "args": {"sort_index": 0}}
    for s in sorted(result.ranks, key=lambda r: r.rank):
        yield from _track_names(plan, MEASURED_PID, s.rank, s.stage, "")
        stage = plan.stage_of_rank(s.rank)
        shift = float(offsets[s.rank]) if s.rank < offsets.size else 0.0
        ev = _events(s)
        ts, dur = np.round((ev[:, 2] + shift) * 1e6, 3).tolist(), np.round(ev[:, 3] * 1e6, 3).tolist()
        for kind, frame, start, duration in zip(ev[:, 0].astype(int).tolist(), ev[:, 1].astype(int).tolist(), ts, dur):
            doc = {"name": _event_name(plan, stage, kind), "cat": "pipeline", "ph": "X", "pid": MEASURED_PID, "tid": s.rank,
                   "ts": start, "dur": duration}
            if frame >= 0:
                doc["args"] = {"frame": frame}
            yield doc
    n_stages = len(plan.stages)
    for hop in hops:
        send = np.round((hop.send_s + offsets[hop.src]) * 1e6, 3).tolist()
        receive = np.round((hop.receive_s + offsets[hop.dst]) * 1e6, 3).tolist()
        for f, t_send, t_got in zip(hop.frames.tolist(), send, receive):
            if hop.result:  # rank 0 took the result: a slice of no duration for the arrow to land on
                yield {"name": "result", "cat": "pipeline", "ph": "X", "pid": MEASURED_PID, "tid": hop.dst,
                       "ts": t_got, "dur": 0.0, "args": {"frame": f}}
            yield from _flow_us(2 * (f * n_stages + hop.stage), f, MEASURED_PID, hop.src, t_send, hop.dst, t_got)
    yield from _predicted_events(plan, result, max_in_flight)


def _compute_slices(stats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames, start_s, duration_s) of a rank's kept compute events, sorted by frame."""
    ev = _events(stats)
    ev = ev[(ev[:, 0] == COMPUTE) & (ev[:, 1] >= 0)]
    ev = ev[np.argsort(ev[:, 1], kind="stable")]
    return ev[:, 1].astype(np.int64), ev[:, 2], ev[:, 3]


def _flow_us(flow_id: int, frame: int, pid: int, src: int, send_us: float, dst: int, receive_us: float):
    """A flow arrow's two ends (microseconds): 's' inside the sender's slice, 'f' bound to the
    receiver's enclosing slice ("bp": "e"); Perfetto pairs them by id, category and name."""
    name = f"frame {frame}"
    yield {"name": name, "cat": "frame", "ph": "s", "id": flow_id, "pid": pid, "tid": src, "ts": send_us}
    yield {"name": name, "cat": "frame", "ph": "f", "bp": "e", "id": flow_id, "pid": pid, "tid": dst, "ts": receive_us}


def _inside(start: np.ndarray, duration: np.ndarray, at_end: bool) -> np.ndarray:
    """A moment just inside each slice (1 us from its end or its start, or its middle if shorter),
    so a flow's end binds to that slice and not to its neighbour."""
    step = np.minimum(duration / 2, 1e-6)
    return start + duration - step if at_end else start + step


@dataclass(frozen=True)
class _Hops:
    """Frames rank `src` (of stage `stage`) sent rank `dst`, with when each left and arrived, in the
    two ranks' own clocks (seconds since each one's start)."""

    src: int
    dst: int
    stage: int
    frames: np.ndarray
    send_s: np.ndarray
    receive_s: np.ndarray
    result: bool = False  # the last stage's result, taken by rank 0


def measured_hops(plan: Plan, result: RunResult) -> list:
    """Every send of a frame the trace kept both ends of: from the end of a stage's compute of the
    frame (its send follows) to the start of the next stage's compute of it (its receive precedes),
    and from the last stage's compute to rank 0 taking the result (the run's done_s), where the
    last stage is not on rank 0."""
    by_rank = {s.rank: s for s in result.ranks}
    slices: dict = {}
    hops = []
    for stage, nxt in zip(plan.stages, plan.stages[1:]):
        for a in (stage.ranks if stage.mode == StageMode.DATA_PARALLEL else stage.ranks[:1]):
            if a not in by_rank:
                continue
            fa, sa, da = slices.setdefault(a, _compute_slices(by_rank[a]))
            dest = np.asarray(nxt.ranks)[fa % len(nxt.ranks)] if nxt.mode == StageMode.DATA_PARALLEL else np.full(fa.shape, nxt.ranks[0])
            for b in np.unique(dest).tolist():
                if b not in by_rank:
                    continue
                fb, sb, db = slices.setdefault(b, _compute_slices(by_rank[b]))
                mine = dest == b
                common, ia, ib = np.intersect1d(fa[mine], fb, assume_unique=True, return_indices=True)
                hops.append(_Hops(a, b, stage.index, common, _inside(sa[mine][ia], da[mine][ia], at_end=True),
                                  _inside(sb[ib], db[ib], at_end=False)))
    if result.done_s is None or not len(result.done_s) or 0 not in by_rank:
        return hops
    done = np.asarray(result.done_s, float)
    frames = (np.asarray(result.output_frame_ids, np.int64) if result.output_frame_ids is not None
              else np.arange(done.size, dtype=np.int64))
    order = np.argsort(frames)
    frames, done = frames[order], done[order]
    last = plan.stages[-1]
    for a in (last.ranks if last.mode == StageMode.DATA_PARALLEL else last.ranks[:1]):
        if a == 0 or a not in by_rank:
            continue
        fa, sa, da = slices.setdefault(a, _compute_slices(by_rank[a]))
        common, ia, ib = np.intersect1d(fa, frames, assume_unique=True, return_indices=True)
        hops.append(_Hops(a, 0, last.index, common, _inside(sa[ia], da[ia], at_end=True), done[ib], result=True))
    return hops


def clock_offsets(n_ranks: int, hops: list, margin_s: float = 1e-9) -> np.ndarray:
    """Seconds to add to each rank's trace times so that no frame arrives before it left.

    Each rank times its events from its own start after a barrier, so the ranks' clocks differ by
    when each left it (tens of microseconds on one machine, more between Pis). Every send and its
    receive bound two ranks' difference (offset[src] <= offset[dst] + receive - send); the smallest
    shifts meeting every bound are the shortest paths of these difference constraints
    (Bellman-Ford), then moved so rank 0 keeps its clock. Bounds that contradict each other (a round
    trip measured as negative: no common clock explains it) leave every clock as it was (zeros)."""
    offsets = np.zeros(n_ranks)
    bounds = {}
    for hop in hops:
        if hop.frames.size and max(hop.src, hop.dst) < n_ranks:
            w = float(np.min(hop.receive_s - hop.send_s)) - margin_s
            bounds[(hop.src, hop.dst)] = min(w, bounds.get((hop.src, hop.dst), w))
    for _ in range(n_ranks + 1):
        changed = False
        for (a, b), w in bounds.items():
            if offsets[b] + w < offsets[a] - 1e-15:
                offsets[a] = offsets[b] + w
                changed = True
        if not changed:
            return offsets - offsets[0]
    return np.zeros(n_ranks)


def _first_kept_frame(result: RunResult) -> int:
    """The earliest frame any rank still has a trace event of, when some were dropped (else 0): the
    predicted schedule is traced from there, so the trace stays as bounded as the event ring."""
    if not any(s.events_dropped for s in result.ranks):
        return 0
    firsts = [int(ev[ev[:, 1] >= 0, 1].min()) for ev in map(_events, result.ranks) if (ev[:, 1] >= 0).any()]
    return min(firsts, default=0)


def _predicted_events(plan: Plan, result: RunResult, max_in_flight: int | None):
    """The predicted schedule as process PREDICTED_PID: per frame, each stage's compute and
    communication slices on its ranks, and arrows from each send to the next stage's start."""
    schedule = predicted_schedule(plan, run_frames(result), max_in_flight)
    if schedule is None:
        return
    label = (f"pisplit {plan.model} · predicted ({plan.planner} plan: {plan.predicted_throughput_fps:.2f} frames/s, "
             f"latency {plan.predicted_latency_s * 1e3:.1f} ms)")
    yield {"name": "process_name", "ph": "M", "pid": PREDICTED_PID, "tid": 0, "args": {"name": label}}
    yield {"name": "process_sort_index", "ph": "M", "pid": PREDICTED_PID, "tid": 0, "args": {"sort_index": 1}}
    for stage in plan.stages:
        for r in stage.ranks:
            yield from _track_names(plan, PREDICTED_PID, r, stage.index, " · predicted")
    # a split stage's segments, one after the other on a track of the lead's: each one's transfer
    # (the transition into it, the gather out of it) then its compute, named as the measured ones are
    by_segment = {s.index: [(SEGMENT_EVENTS + 2 * k, g.predicted) for k, g in enumerate(s.segments) if g.predicted]
                  for s in plan.stages if s.mode == StageMode.SPLIT and s.segments and all(g.predicted for g in s.segments)}
    for stage in plan.stages:
        if stage.index in by_segment:
            tid = SEGMENT_TRACK + stage.ranks[0]
            yield {"name": "thread_name", "ph": "M", "pid": PREDICTED_PID, "tid": tid,
                   "args": {"name": f"rank {stage.ranks[0]} · stage {stage.index} · segments · predicted"}}
            yield {"name": "thread_sort_index", "ph": "M", "pid": PREDICTED_PID, "tid": tid, "args": {"sort_index": stage.ranks[0]}}
    n_stages, first = len(plan.stages), _first_kept_frame(result)
    t0, t1, t2, t3 = (a[:, first:] for a in (schedule.start, schedule.compute_end, schedule.busy_end, schedule.handoff))
    us = lambda a: np.round(a * 1e6, 3).tolist()  # noqa: E731 - plain floats in microseconds
    start, compute_end, busy_end, handoff, compute_us, comm_us = (us(a) for a in (t0, t1, t2, t3, t1 - t0, t2 - t1))
    # arrows leave from just inside the sender's compute slice and land just inside the receiver's
    sent, got = us(_inside(t0, t1 - t0, at_end=True)), us(_inside(t0, t1 - t0, at_end=False))
    for j, f in enumerate(range(first, schedule.start.shape[1])):
        for i, stage in enumerate(plan.stages):
            ranks = stage.ranks if stage.mode == SPLIT_MODE else (entry_rank(stage, f),)
            for r in ranks:
                yield {"name": "compute" if r == ranks[0] else "split part", "cat": "predicted", "ph": "X", "pid": PREDICTED_PID,
                       "tid": r, "ts": start[i][j], "dur": compute_us[i][j], "args": {"frame": f}}
                if busy_end[i][j] > compute_end[i][j]:
                    yield {"name": "communication", "cat": "predicted", "ph": "X", "pid": PREDICTED_PID, "tid": r,
                           "ts": compute_end[i][j], "dur": comm_us[i][j], "args": {"frame": f}}
            if stage.index in by_segment:
                at = start[i][j]
                for code, (compute_s, transfer_s) in by_segment[stage.index]:
                    for what, seconds in ((code + 1, transfer_s), (code, compute_s)):
                        if seconds > 0:
                            yield {"name": _event_name(plan, stage, what), "cat": "predicted", "ph": "X", "pid": PREDICTED_PID,
                                   "tid": SEGMENT_TRACK + ranks[0], "ts": at, "dur": round(seconds * 1e6, 3), "args": {"frame": f}}
                            at = round(at + seconds * 1e6, 3)
            if i + 1 < n_stages:
                yield from _flow_us(2 * (f * n_stages + i) + 1, f, PREDICTED_PID, ranks[0], sent[i][j],
                                    entry_rank(plan.stages[i + 1], f), got[i + 1][j])
            elif ranks[0] != 0:  # the result goes back to rank 0
                yield {"name": "result", "cat": "predicted", "ph": "X", "pid": PREDICTED_PID, "tid": 0,
                       "ts": handoff[i][j], "dur": 0.0, "args": {"frame": f}}
                yield from _flow_us(2 * (f * n_stages + i) + 1, f, PREDICTED_PID, ranks[0], sent[i][j], 0, handoff[i][j])


def _event_name(plan: Plan, stage, code: int) -> str:
    """A trace event's name: the runtime's phase, or for a split stage's segment its nodes, kind and
    layout ('block1_conv2..block1_pool conv-spatial rows[..] transfer')."""
    segment = segment_event(code)
    if segment is None:
        return EVENT_NAMES[code]
    index, what = segment
    if index >= len(stage.segments):
        return f"segment {index} {what}"
    seg = stage.segments[index]
    return f"[{seg.node_start}:{seg.node_stop}) {seg.kind}{' kept' if seg.output_layout == 'parts' else ''} {what}"


def _trace_other(result: RunResult, offsets: np.ndarray) -> dict | None:
    other = {}
    dropped = {s.rank: s.events_dropped for s in result.ranks if s.events_dropped}
    if dropped:
        other.update(note="each rank keeps its most recent trace events only (runtime.EventLog); older ones were dropped",
                     events_dropped_by_rank={str(r): n for r, n in dropped.items()})
    if np.any(offsets != 0):
        other.update(clock_note="each rank's measured times are shifted by its clock offset so that no frame arrives "
                                "before it left (report.clock_offsets); rank 0 keeps its clock",
                     clock_offsets_us_by_rank={str(r): round(float(o) * 1e6, 3) for r, o in enumerate(offsets) if o})
    return other or None


def _trace_parts(plan: Plan, result: RunResult, max_in_flight: int | None):
    """(events, otherData) of a run's trace; the events are a generator."""
    hops = measured_hops(plan, result)
    offsets = clock_offsets(plan.n_ranks, hops)
    return _trace_events(plan, result, hops, offsets, max_in_flight), _trace_other(result, offsets)


def chrome_trace(plan: Plan, result: RunResult, max_in_flight: int | None = None) -> dict:
    """Chrome Trace Event JSON, times in microseconds: process 0 is the run as measured (one track
    per rank, complete events), process 1 the plan's predicted schedule of the same frames (the same
    tracks), each with flow arrows from a stage's send of a frame to the next stage's receive.
    `max_in_flight` as the run was given it (the predicted schedule admits frames as the run did)."""
    events, other = _trace_parts(plan, result, max_in_flight)
    doc = {"traceEvents": list(events), "displayTimeUnit": "ms"}
    if other:
        doc["otherData"] = other
    return doc


def write_chrome_trace(path, plan: Plan, result: RunResult, max_in_flight: int | None = None) -> None:
    """chrome_trace's document written event by event: a long run's trace is never whole in memory
    (400,000 events as dicts and one string took rank 0 about 390 MiB)."""
    import json

    events, other = _trace_parts(plan, result, max_in_flight)
    encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder for every event
    with open(path, "w") as f:
        f.write('{"traceEvents": [')
        for i, event in enumerate(events):
            f.write(("," if i else "") + encode(event))
        f.write('], "displayTimeUnit": "ms"')
        if other:
            f.write(', "otherData": ' + json.dumps(other))
        f.write("}")
