"""What a pipeline run measured, as plain data: throughput, latency, per-stage times, predicted vs
measured, memory per rank, and a Chrome Trace Event document (one track per rank; opens in Perfetto)."""
from __future__ import annotations

import numpy as np

from partitioners.plan import Plan

from .runtime import EVENT_NAMES, RunResult, segment_event


def steady_throughput(done_s: np.ndarray) -> float:
    """Frames per second once the pipeline is full: 1 / slope of completion time over completion
    count, fitted on the last three quarters of the run. A fit rather than (n - 1) / span because
    data-parallel stages complete frames in bursts, and a span that starts mid-burst overstates."""
    t = np.sort(np.asarray(done_s, float))
    if t.size < 2:
        return 1.0 / t[0] if t.size and t[0] > 0 else 0.0
    if t.size >= 8:
        t = t[t.size // 4:]
    slope = np.polyfit(np.arange(t.size, dtype=float), t, 1)[0]
    return 1.0 / slope if slope > 0 else 0.0


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


def run_report(plan: Plan, result: RunResult, engine: str, emulated: bool) -> dict:
    """The report document of a finished run (rank 0)."""
    n = int(result.frame_ids.size)
    by_rank = {s.rank: s for s in result.ranks}
    stages = []
    for stage in plan.stages:
        rows = [by_rank[r] for r in stage.ranks]
        frames = max(sum(r.frames for r in rows) if stage.mode == "data-parallel" else rows[0].frames, 1)
        # per frame: a data-parallel stage's replicas share the frames; a split stage's lead carries the frame
        if stage.mode == "data-parallel":
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
        })
    ranks = []
    for s in sorted(result.ranks, key=lambda r: r.rank):
        predicted = s.memory_predicted_bytes if s.memory_predicted_bytes >= 0 else None
        above = max(s.memory_peak_bytes - s.memory_baseline_bytes, 0)
        ranks.append({
            "rank": s.rank, "stage": s.stage, "kind": plan.devices[s.rank].kind, "frames": s.frames,
            "compute_s": s.compute_s, "comm_s": s.comm_s, "wait_s": s.wait_s, "emulation_late_s": s.late_s,
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
        "stages": stages, "ranks": ranks,
    }


def _trace_events(plan: Plan, result: RunResult):
    yield {"name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": f"pisplit {plan.model}"}}
    for s in sorted(result.ranks, key=lambda r: r.rank):
        label = f"rank {s.rank} · stage {s.stage} · {plan.devices[s.rank].kind}"
        yield {"name": "thread_name", "ph": "M", "pid": 0, "tid": s.rank, "args": {"name": label}}
        yield {"name": "thread_sort_index", "ph": "M", "pid": 0, "tid": s.rank, "args": {"sort_index": s.rank}}
        stage = plan.stage_of_rank(s.rank)
        for kind, frame, start, duration in s.events:
            doc = {"name": _event_name(plan, stage, int(kind)), "cat": "pipeline", "ph": "X", "pid": 0, "tid": s.rank,
                   "ts": round(start * 1e6, 3), "dur": round(duration * 1e6, 3)}
            if frame >= 0:
                doc["args"] = {"frame": int(frame)}
            yield doc


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


def _trace_other(result: RunResult) -> dict | None:
    dropped = {s.rank: s.events_dropped for s in result.ranks if s.events_dropped}
    if not dropped:
        return None
    return {"note": "each rank keeps its most recent trace events only (runtime.EventLog); older ones were dropped",
            "events_dropped_by_rank": {str(r): n for r, n in dropped.items()}}


def chrome_trace(plan: Plan, result: RunResult) -> dict:
    """Chrome Trace Event JSON: one track (thread) per rank, complete events in microseconds."""
    doc = {"traceEvents": list(_trace_events(plan, result)), "displayTimeUnit": "ms"}
    other = _trace_other(result)
    if other:
        doc["otherData"] = other
    return doc


def write_chrome_trace(path, plan: Plan, result: RunResult) -> None:
    """chrome_trace's document written event by event: a long run's trace is never whole in memory
    (400,000 events as dicts and one string took rank 0 about 390 MiB)."""
    import json

    with open(path, "w") as f:
        f.write('{"traceEvents": [')
        for i, event in enumerate(_trace_events(plan, result)):
            f.write(("," if i else "") + json.dumps(event, ensure_ascii=False))
        f.write('], "displayTimeUnit": "ms"')
        other = _trace_other(result)
        if other:
            f.write(', "otherData": ' + json.dumps(other))
        f.write("}")
