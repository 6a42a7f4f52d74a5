"""The Chrome trace beside the plan: the predicted schedule as a second process with the measured
ranks' tracks, and flow arrows from each send of a frame to its receive (measured and predicted),
on synthetic run results and on a real mpirun run."""
from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import numpy as np
import pytest

from cluster.emulated_plans import plan_for_devices
from cluster.report import (MEASURED_PID, PREDICTED_PID, chrome_trace, completion_curve, predicted_schedule,
                            write_chrome_trace)
from cluster.runtime import COMPUTE, WAIT_INPUT, RankStats, RunResult, entry_rank
from layers import zoo_model
from partitioners.plan import StagePrediction

from .pipeline_plans import hand_plan
from .test_runtime import mpirun


def predicted(plan, per_stage):
    """`plan` with these (compute_s, comm_s) predictions per stage."""
    stages = tuple(dataclasses.replace(s, predicted=StagePrediction(c, m, {r: 1 << 20 for r in s.ranks}))
                   for s, (c, m) in zip(plan.stages, per_stage))
    return dataclasses.replace(plan, stages=stages).validate()


def flows(events):
    """{(pid, id): {'s': event, 'f': event}}, failing on a repeated end."""
    out = defaultdict(dict)
    for e in events:
        if e["ph"] in ("s", "f"):
            assert e["ph"] not in out[(e["pid"], e["id"])], f"flow end repeated: {e}"
            out[(e["pid"], e["id"])][e["ph"]] = e
    return out


def enclosing(events, pid, tid, ts):
    """The complete events of a track that contain the moment `ts` (microseconds)."""
    return [e for e in events if e["ph"] == "X" and e["pid"] == pid and e["tid"] == tid and e["ts"] <= ts <= e["ts"] + e["dur"]]


def check_flows(events, plan, n_frames, pid):
    """Every flow has one start and one finish; the start lies in the sender's slice, the finish in the
    receiver's and not before it; each frame crosses each cut once. Returns the flows by frame."""
    by_frame = defaultdict(list)
    for (p, flow_id), ends in flows(events).items():
        if p != pid:
            continue
        assert set(ends) == {"s", "f"}, f"flow {flow_id} has only {set(ends)}"
        s, f = ends["s"], ends["f"]
        assert s["name"] == f["name"] and s["cat"] == f["cat"] and f["bp"] == "e"
        assert s["ts"] <= f["ts"], f"flow {s['name']} arrives before it leaves: {s['ts']} > {f['ts']}"
        assert enclosing(events, pid, s["tid"], s["ts"]), f"flow start {s} binds to no slice"
        assert enclosing(events, pid, f["tid"], f["ts"]), f"flow finish {f} binds to no slice"
        by_frame[int(s["name"].split()[1])].append((s["tid"], f["tid"]))
    for frame in range(n_frames):
        hops = sorted(by_frame[frame])
        expect = [(entry_rank(a, frame), entry_rank(b, frame)) for a, b in zip(plan.stages, plan.stages[1:])]
        if entry_rank(plan.stages[-1], frame) != 0:
            expect.append((entry_rank(plan.stages[-1], frame), 0))
        assert hops == sorted(expect), f"frame {frame}: arrows {hops}, expected {sorted(expect)}"
    return by_frame


def synthetic_run(plan, n_frames, period=0.01, transfer=0.002, first=0):
    """Compute events of frames [first, n_frames) as a pipeline of `plan` would record them, with the
    waits for input between, and rank 0's result times."""
    ranks = {r: [] for r in range(plan.n_ranks)}
    done = np.zeros(n_frames)
    for f in range(n_frames):
        t = f * period
        for stage in plan.stages:
            r = entry_rank(stage, f)
            if f >= first:
                ranks[r].append((WAIT_INPUT, f, t - transfer, transfer))
                ranks[r].append((COMPUTE, f, t, period * 0.8))
            t += period * 0.8 + transfer
        done[f] = t
    stats = [RankStats(r, plan.stage_of_rank(r).index, events=np.array(ev, float).reshape(-1, 4), events_dropped=first * 2)
             for r, ev in ranks.items()]
    return RunResult(ranks=stats, frame_ids=np.arange(n_frames), done_s=done, frames_total=n_frames)


def test_trace_has_the_predicted_schedule_and_flow_arrows_from_sends_to_receives(tmp_path):
    graph = zoo_model("lenet5")
    plan = predicted(hand_plan(graph, [(0, 2, [0], "single"), (2, 6, [1, 2], "data-parallel"), (6, 9, [3], "single")]),
                     [(0.004, 0.001), (0.007, 0.002), (0.003, 0.0005)])
    n = 9
    result = synthetic_run(plan, n)
    doc = chrome_trace(plan, result)
    events = doc["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert "measured" in names[MEASURED_PID] and "predicted" in names[PREDICTED_PID]
    tracks = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {t for p, t in tracks if p == PREDICTED_PID} == {t for p, t in tracks if p == MEASURED_PID} == {0, 1, 2, 3}
    assert tracks[(PREDICTED_PID, 2)] == "rank 2 · stage 1 · rpi4 · predicted"
    # predicted: each frame computed once per stage, on its entry rank, for the predicted time
    computed = [(e["tid"], e["args"]["frame"], e["dur"]) for e in events
                if e["pid"] == PREDICTED_PID and e["ph"] == "X" and e["name"] == "compute"]
    assert sorted(computed) == sorted((entry_rank(s, f), f, pytest.approx(s.predicted.compute_s * 1e6))
                                      for s in plan.stages for f in range(n))
    comm = [e for e in events if e["pid"] == PREDICTED_PID and e["name"] == "communication"]
    assert len(comm) == 3 * n and all(e["dur"] > 0 for e in comm)
    for pid in (MEASURED_PID, PREDICTED_PID):
        check_flows(events, plan, n, pid)
    ids = [k for k in flows(events)]
    assert len(ids) == len(set(ids)) == 2 * n * 3  # two cuts and the results, measured and predicted
    # the streaming writer writes the same document
    write_chrome_trace(tmp_path / "t.json", plan, result)
    assert json.loads((tmp_path / "t.json").read_text()) == json.loads(json.dumps(doc))


def test_a_trace_whose_ring_dropped_events_keeps_arrows_and_predictions_from_the_first_kept_frame():
    graph = zoo_model("lenet5")
    plan = predicted(hand_plan(graph, [(0, 4, [0], "single"), (4, 9, [1], "single")]), [(0.004, 0.001), (0.005, 0.001)])
    result = synthetic_run(plan, 20, first=12)
    events = chrome_trace(plan, result)["traceEvents"]
    frames = {e["args"]["frame"] for e in events if e["pid"] == PREDICTED_PID and e["ph"] == "X"}
    assert frames == set(range(12, 20))
    measured = {int(e["name"].split()[1]) for e in events if e["pid"] == MEASURED_PID and e["ph"] == "s"}
    assert measured == set(range(12, 20))


def test_ranks_whose_clocks_started_late_are_aligned_so_no_frame_arrives_before_it_left():
    graph = zoo_model("lenet5")
    plan = predicted(hand_plan(graph, [(0, 2, [0], "single"), (2, 9, [1, 2], "data-parallel")]), [(0.004, 0.001), (0.006, 0.001)])
    n, skew, transfer = 10, 0.02, 0.002
    result = synthetic_run(plan, n, transfer=transfer)
    for stats in result.ranks[1:]:  # these ranks left the barrier 20 ms late: their times read 20 ms early
        stats.events = stats.events - np.array([0, 0, skew, 0])
    doc = chrome_trace(plan, result)
    check_flows(doc["traceEvents"], plan, n, MEASURED_PID)
    offsets = doc["otherData"]["clock_offsets_us_by_rank"]
    assert set(offsets) == {"1", "2"}
    for rank in ("1", "2"):  # within one transfer of the true skew, the least shift that orders every arrow
        assert abs(offsets[rank] - skew * 1e6) <= transfer * 1e6 + 5, offsets
    assert "clock_note" in doc["otherData"]
    assert "otherData" not in chrome_trace(plan, synthetic_run(plan, n, transfer=transfer))  # nothing to shift


def test_the_predicted_schedule_runs_at_the_plans_throughput_and_respects_the_admission_window():
    graph = zoo_model("alexnet")
    plan = plan_for_devices(graph, "alexnet", "rpi3:3", 94e6, "dp", "throughput", "numpy")
    schedule = predicted_schedule(plan, 120)
    gaps = np.diff(schedule.done_s[60:])
    assert gaps.mean() == pytest.approx(1 / plan.predicted_throughput_fps, rel=1e-9)
    assert np.all(schedule.start <= schedule.compute_end) and np.all(schedule.compute_end <= schedule.busy_end)
    assert np.all(schedule.start[1:] >= schedule.handoff[:-1] - 1e-12)  # a stage starts a frame after it arrived
    one = predicted_schedule(plan, 5, max_in_flight=1)  # frame after frame: each waits for the one before
    assert np.allclose(one.start[0, 1:], one.done_s[:-1])
    first = one.done_s[0]
    assert first == pytest.approx(sum(s.predicted.compute_s + s.send_bytes * 8 / plan.link_bandwidth_bps
                                      + (plan.link_latency_s if s.send_bytes else 0) for s in plan.stages))
    split = plan_for_devices(graph, "alexnet", "rpi3:4", 94e6, "dp", "latency", "numpy")
    assert [s.mode for s in split.stages] == ["split"]
    # a split stage's transfers between its parts lie on the frame's path: one frame takes the plan's latency
    assert predicted_schedule(split, 1).done_s[0] == pytest.approx(split.predicted_latency_s, rel=1e-9)
    assert predicted_schedule(dataclasses.replace(plan, stages=(dataclasses.replace(plan.stages[0], predicted=None),
                                                                *plan.stages[1:])), 4) is None


def test_completion_curve_is_bounded_and_ends_at_the_last_frame():
    done = np.random.default_rng(5).uniform(0, 10, 5000)
    curve = completion_curve(done, points=100)
    assert len(curve) == 100 and curve[0] == [pytest.approx(done.min()), 1] and curve[-1] == [pytest.approx(done.max()), 5000]
    t, n = np.array(curve).T
    assert np.all(np.diff(t) >= 0) and np.all(np.diff(n) > 0)
    assert completion_curve(None) == [] and completion_curve(np.array([2.0])) == [[2.0, 1]]


@pytest.mark.mpi
def test_a_real_runs_trace_has_matched_arrows_and_the_predicted_process(tmp_path):
    graph = zoo_model("lenet5")
    plan = predicted(hand_plan(graph, [(0, 2, [0], "single"), (2, 9, [1, 2], "data-parallel")]), [(0.002, 0.0005), (0.003, 0.001)])
    path = plan.save(tmp_path / "plan.json")
    frames = 14
    proc = mpirun(3, "run", path, "--frames", frames, "--trace", tmp_path / "t.json", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["every_frame_once"] and doc["completed"][-1][1] == frames
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    check_flows(events, plan, frames, MEASURED_PID)
    check_flows(events, plan, frames, PREDICTED_PID)
    predicted_frames = {e["args"]["frame"] for e in events if e["pid"] == PREDICTED_PID and e["name"] == "compute"}
    assert predicted_frames == set(range(frames))


def test_a_latency_plan_predicts_each_segment_and_its_trace_shows_them_beside_the_measured_ones(tmp_path):
    # the dp's latency plan for AlexNet on 4 Pi 4: every segment carries its predicted compute and
    # transfer (the transition into it and the gather out of it), which add up to the plan's latency;
    # the trace lays them out frame by frame on a track of the lead's, named as the measured segments
    from partitioners.plan import Plan

    plan = plan_for_devices(zoo_model("alexnet"), "alexnet", "rpi4:4", 940e6, "dp", "latency", "numpy")
    (stage,) = plan.stages
    assert all(len(g.predicted) == 2 for g in stage.segments)
    assert sum(sum(g.predicted) for g in stage.segments) == pytest.approx(plan.predicted_latency_s, rel=1e-9)
    kept = [g for g in stage.segments if g.output_layout == "parts"]
    assert kept and all(g.predicted[1] >= 0 for g in kept)
    assert Plan.from_dict(json.loads(plan.to_json())) == plan
    frames = 2
    proc = mpirun(4, "run", plan.save(tmp_path / "plan.json"), "--frames", frames, "--max-in-flight", 1, "--trace", tmp_path / "t.json",
                  "--json")
    assert proc.returncode == 0, proc.stderr
    # the run report has the same segments, measured on the lead per frame, beside their predictions
    rows = json.loads(proc.stdout)["stages"][0]["segments"]
    assert [r["predicted_compute_ms"] for r in rows] == pytest.approx([g.predicted[0] * 1e3 for g in stage.segments])
    assert all(r["compute_ms"] > 0 for r in rows if r["predicted_compute_ms"] > 0)
    assert sum(r["transfer_ms"] for r in rows) > 0 and rows[0]["name"].startswith(f"[0:{stage.segments[0].node_stop})")
    events = [e for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"] if e["ph"] == "X"]
    predicted_names = {e["name"] for e in events if e["pid"] == PREDICTED_PID and e["tid"] >= 100_000}
    measured_names = {e["name"] for e in events if e["pid"] == MEASURED_PID}
    assert predicted_names and predicted_names <= measured_names, predicted_names - measured_names
    per_frame = defaultdict(float)
    for e in events:
        if e["pid"] == PREDICTED_PID and e["tid"] >= 100_000:
            per_frame[e["args"]["frame"]] += e["dur"]
    assert sorted(per_frame) == list(range(frames))
    assert all(v == pytest.approx(plan.predicted_latency_s * 1e6, rel=1e-6) for v in per_frame.values())
