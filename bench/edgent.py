"""Edgent (issue 16's Benchmarks), run through scripts/bench_edgent:

1. static (Edgent's Figures 8 and 9): for link bandwidths 50 kbit/s .. 10 Mbit/s and latency
   requirements 50 .. 1000 ms, Algorithm 1's exit and cut on one Pi 3B+ and a host for the trained
   branchy AlexNet, its predicted latency and accuracy; with --measure F, each distinct plan also runs
   on the emulated devices and paced link (`pisplit run --emulate`, one frame in flight) for F frames:
   the measured median latency beside the prediction. --scaled adds a grid of faster links and tighter
   requirements (10 .. 1000 Mbit/s, 1.5 .. 4 ms) where the two knobs bite for this small model.
2. dynamic (predicted): frames every --interval
   seconds over a bandwidth trace (default the shipped cluster/traces/lte_a.csv, x --trace-scale), each
   with the cost model's latency at the trace's bandwidth of its time, for Edgent-style dynamic
   (configuration map + cluster.bandwidth's estimator, detector and Algorithm 3, fed with each frame's
   transfer, or a 16 KB probe while the plan sends nothing), the best single static strategy (by mean
   reward), all on the device (final exit) and all on the host (final exit, input sent): frames meeting
   the requirement, mean accuracy, mean reward (the paper's), switches.

3. dynamic, measured (--measure-dynamic S): the first S seconds of the trace (x --trace-scale) replayed
   on the emulated link (`pisplit run MAP --emulate --bandwidth-trace`, frames every --interval): the
   configuration map's plans switched by the runtime from its own measured transfers (cluster.switching),
   beside each static policy run the same way (a one-entry map: same runtime, never switching): frames
   meeting the requirement, mean accuracy (the held-out accuracy of the exit that answered each frame),
   latency, switches; with the cost model's prediction for the same frames beside it. The host is emulated
   at what this machine can do now (emulable_devices: an emulated rank is never faster than this machine,
   and gets only its share of a core while other jobs run; `nice -n -20` reaches the session's scheduling
   group, session_nice), and a verdict says whether the target holds (>= 95% of frames in time, a mean
   reward above every static plan's) and whether the emulation kept up (measured_verdict). Frames in time
   are counted from each frame's first stage (the verdict's) and from its capture (its due time, the wait
   for the pipeline included). A boundary that keeps the plan does not drain the pipeline;
   --drain-every-boundary drains at each (the runtime before it stopped), to measure what that cost.

`--chart FILE` draws the dynamic run: latency and frames/s over time, dynamic vs the best static
strategy, the bandwidth beneath. `--quick` shrinks everything (a smoke run); `--json` prints the rows.
"""
from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from rich.table import Table

from cluster.bandwidth import MAP_DOWN_MARGIN, HarmonicEstimator, RuntimeOptimizer, read_trace
from cluster.commands.configmap import parse_latency, parse_states, write_strategy
from cluster.output import console, print_json
from layers import load_model
from partitioners.devices import parse_devices
from partitioners.edgent import configuration_map, device_cluster, exit_accuracies, parse_device_speeds, select, strategies

ROOT = Path(__file__).resolve().parents[1]

SCALED_MODEL = "branchy_alexnet_scaled"
TRAINED = "branchy_alexnet_mnist"


def scaled_branchy_alexnet(seed: int = 0):
    """Edgent's setting for the measured runs (--model branchy_alexnet_scaled): the trained branchy
    AlexNet's layout (scripts/train_models.py's branchy_alexnet: five 3x3 convs, three fcs, side exits
    of a max pool and an fc after conv1, conv2, conv3 and conv4) grown until the Pi 3B+ takes hundreds of
    ms a frame, as Edgent's AlexNet does: a 128x128 input, conv1 5x5 stride 2 (16 channels: the cut after
    pool1 is 64 KB, half a megabit, so a 4G/LTE link decides whether offloading pays), conv2 384,
    conv3 and conv4 768, conv5 384 channels. About 2.6 G multiply-adds: the cost model predicts 0.44 s
    on a Pi 3B+ for the final exit, 0.12 s for exit3, 13 ms for exit2, and 0.05 s for the host's part
    of an offloaded final exit. The weights are seeded, not trained: the accuracy of each exit is the
    trained small model's held-out accuracy (layers/trained/manifest.json), unless --accuracy says
    otherwise. The emulator's fixed costs per frame (about a millisecond) are small beside such frames."""
    from layers.builder import GraphBuilder

    b = GraphBuilder(SCALED_MODEL, seed=seed)
    x = b.input("input", (1, 128, 128, 1))
    outs = []

    def side_exit(x: str, i: int) -> None:
        e = b.pool(x, "max", b.shape(x)[1] // 4, f"exit{i}_pool")  # to 4x4, as the trained model's
        e = b.act(e, "flatten", f"exit{i}_flatten")
        outs.append(b.act(b.dense(e, 10, f"exit{i}_logits"), "softmax", f"exit{i}"))

    x = b.conv(x, 16, 5, "conv1", strides=2, padding="same", activation="relu")
    x = b.pool(x, "max", 2, "pool1")  # 32x32x16
    side_exit(x, 1)
    x = b.conv(x, 384, 3, "conv2", padding="same", activation="relu")
    x = b.pool(x, "max", 2, "pool2")  # 16x16x384
    side_exit(x, 2)
    x = b.conv(x, 768, 3, "conv3", padding="same", activation="relu")
    side_exit(x, 3)
    x = b.conv(x, 768, 3, "conv4", padding="same", activation="relu")
    side_exit(x, 4)
    x = b.conv(x, 384, 3, "conv5", padding="same", activation="relu")
    x = b.pool(x, "max", 4, "pool5")  # 4x4x384
    x = b.act(x, "flatten", "flatten")
    x = b.dense(x, 128, "fc6", activation="relu")
    x = b.dense(x, 64, "fc7", activation="relu")
    outs.append(b.act(b.dense(x, 10, "final_logits"), "softmax", "final"))
    return b.build(outs, meta={"exits": list(outs)})


def bench_model(name: str, folder: Path, overrides=None):
    """(graph, the model spec plans and maps refer to, accuracy per exit) for --model: the scaled variant
    is written to `folder` as a pisplit graph (its accuracies borrowed from the trained model)."""
    from layers.serialize import save_graph
    from partitioners.edgent import parse_accuracies

    if name != SCALED_MODEL:
        graph = load_model(name)
        return graph, name, exit_accuracies(graph, parse_accuracies(overrides))
    graph = scaled_branchy_alexnet()
    path, _ = save_graph(graph, folder / f"{SCALED_MODEL}.json")
    borrowed = exit_accuracies(load_model(TRAINED))
    acc = exit_accuracies(graph, {**borrowed, **parse_accuracies(overrides)})
    return load_model(str(path)), str(path), acc


def _cluster(devices: str, bw: float):
    """The Cluster of a --devices text, KIND*SPEED entries at that speed (partitioners.edgent.parse_device_speeds)."""
    text, speeds = parse_device_speeds(devices)
    return device_cluster(parse_devices(text), bw, None, speeds)


HEADROOM = 1.25  # an emulated host is given this much more time than this machine takes now (a pass 1.0-1.6x its median here)

WALL_PASSES = r"""
import sys, time
from layers import load_model
from layers.engine import make_engine
graph = load_model(sys.argv[1])
runner, feeds = make_engine(graph, "numpy"), graph.random_input(0)
runner.run(feeds)
rows = []
for _ in range(int(sys.argv[2])):
    w, c = time.perf_counter(), time.process_time()
    runner.run(feeds)
    rows.append(f"{time.perf_counter() - w!r},{time.process_time() - c!r}")
print(" ".join(rows))
"""


AUTOGROUP = Path("/proc/self/autogroup")


def session_nice() -> int | None:
    """Make `nice -n -N scripts/bench_edgent` take effect against other sessions' jobs: under the kernel's
    autogroup scheduling (kernel.sched_autogroup_enabled, on by default) a process's nice ranks it only
    within its session's group, and the groups share the cores as equals, so the niced ranks got 0.20 of
    a core beside 8 other sessions' jobs on this 2-core machine (0.96 with the group's nice at -20: the
    49.3% of the dynamic run, its host rank 59 ms a frame behind). With a negative nice (root), this
    session's group gets it for the run. Returns the group's nice before (to restore), None if unchanged."""
    import os

    mine = os.nice(0)
    if mine >= 0:
        return None
    try:
        before = int(AUTOGROUP.read_text().split()[-1])
        if before <= mine:
            return None
        AUTOGROUP.write_text(str(mine))
    except (OSError, ValueError, IndexError):
        return None
    return before


def core_share(model: str, copies: int = 2, passes: int = 5) -> float:
    """The share of a core an emulated rank gets on this machine now: CPU seconds over wall seconds of
    whole-model passes, `copies` processes at once (as the measured runs' ranks), one BLAS thread each.
    Dilation pads CPU time (cluster.emulation), so a rank given less than a core (other jobs on a shared
    machine) takes longer in wall time than its CPU time says, and a device emulated near this machine's
    own speed falls behind: 1.0 on an idle machine; 0.3 here with 8 other jobs on the 2 cores."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", WALL_PASSES, model, str(passes)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(max(1, copies))]
    shares = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"bench_edgent: timing {model} failed: {err.strip()[-300:]}")
        for pair in out.split():
            wall, cpu = (float(v) for v in pair.split(","))
            shares.append(min(cpu / wall, 1.0) if wall > 0 else 1.0)
    return float(np.median(shares))


def emulable_devices(devices: str, model: str, seed: int, n_ranks: int = 2) -> tuple[str, float, float]:
    """`devices` with the host slowed to what this machine can emulate now: an emulated rank can be
    dilated to a slower device, never sped up to a faster one, and it gets only its share of a core
    (core_share) while other jobs run. The host's factor is 1 / (speed / share x HEADROOM), where speed
    is this machine's CPU seconds / the reference's (cluster.host_speed, the ranks computing at once),
    when that is below 1 (a host given as KIND*F is kept). The measured benchmark then tests the
    switching, not this machine. Returns (devices, speed, share)."""
    from cluster.host_speed import host_speed

    speed = host_speed(model, seed, "numpy", concurrency=n_ranks)
    text, speeds = parse_device_speeds(devices)
    if "host" in speeds or "host" not in text:
        return devices, speed, 1.0
    share = core_share(model, n_ranks)
    pace = speed / share * HEADROOM
    if pace <= 1.0:
        return devices, speed, share
    return ",".join(e + (f"*{1.0 / pace:.3f}" if e.split(":")[0].split("@")[0] == "host" else "") for e in text.split(",")), speed, share


def static_rows(graph, devices, bandwidths, requirements, acc):
    rows = []
    for bw in bandwidths:
        cluster = _cluster(devices, bw)
        cands = strategies(graph, cluster, acc)
        for req in requirements:
            sel = select(cands, req)
            s = sel.chosen or sel.fastest
            rows.append({"bandwidth_bps": bw, "latency_req_s": req, "meets": sel.chosen is not None, "exit": s.exit, "cut": s.cut,
                         "n_nodes": s.n_nodes, "after": s.after, "codec": s.codec, "predicted_ms": s.latency_s * 1e3,
                         "accuracy": s.accuracy, "strategy": s, "cluster": cluster})
    return rows


def measure(rows, graph, frames: int, tmp: Path) -> None:
    """Emulate each distinct plan once (one frame in flight) and put its median latency into its rows."""
    from cluster.commands.emulate import run_emulated

    done: dict = {}
    for r in rows:
        s = r["strategy"]
        key = (s.exit, s.cut, s.codec, None if s.on_device else r["bandwidth_bps"])
        if key not in done:
            plan_path = tmp / f"plan{len(done)}.json"
            write_strategy(graph, s, r["cluster"], plan_path, None, "numpy", tmp)
            from partitioners.plan import Plan

            plan = Plan.load(plan_path)
            report = run_emulated(plan_path, plan.n_ranks, frames, tmp / f"report{len(done)}.json", "numpy", progress=False,
                                  timeout=3600, max_in_flight=1)
            assert report["every_frame_once"], "frames lost or duplicated"
            done[key] = report["latency_ms"]["p50"]
        r["measured_ms"] = done[key]


def print_static(rows, title):
    t = Table(title=title)
    for col in ("link", "requirement", "exit", "cut", "codec", "predicted ms", "measured ms", "accuracy", "meets"):
        t.add_column(col, justify="left" if col in ("exit", "codec", "meets") else "right")
    for r in rows:
        bw = r["bandwidth_bps"]
        link = f"{bw / 1e3:g} kbit/s" if bw < 1e6 else f"{bw / 1e6:g} Mbit/s"
        cut = "device" if r["cut"] == r["n_nodes"] else f"{r['cut']} ({r['after']})"
        t.add_row(link, f"{r['latency_req_s'] * 1e3:g} ms", r["exit"], cut, r["codec"], f"{r['predicted_ms']:.2f}",
                  f"{r['measured_ms']:.2f}" if r.get("measured_ms") is not None else "-", f"{r['accuracy']:.3f}",
                  "yes" if r["meets"] else "[red]no: the fastest[/red]")
    console.print(t)


# --- dynamic ------------------------------------------------------------------------------------------
def fitted(graph, devices, acc, b0=1e6, b1=1e8):
    """Per (exit, cut, codec): latency, device period and host period as A + B / bandwidth (the cost
    model's link terms are bytes x 8 / bandwidth plus fixed parts), fitted exactly from two bandwidths;
    and the bytes each frame sends."""
    def table(bw):
        cl = _cluster(devices, bw)
        return {(s.exit, s.cut, s.codec): s for s in strategies(graph, cl, acc, runnable_only=False)}

    t0, t1 = table(b0), table(b1)
    out = {}
    for key, s0 in t0.items():
        s1 = t1[key]
        c0, c1 = s0.candidate, s1.candidate

        def fit(v0, v1):
            b = (v0 - v1) / (1 / b0 - 1 / b1)
            return (v0 - b / b0, b)

        periods0 = (c0.edge_s + c0.encode_s + c0.transfer_s + c0.result_s, c0.transfer_s + c0.decode_s + c0.host_s + c0.result_s)
        periods1 = (c1.edge_s + c1.encode_s + c1.transfer_s + c1.result_s, c1.transfer_s + c1.decode_s + c1.host_s + c1.result_s)
        out[key] = {"strategy": s0, "latency": fit(s0.latency_s, s1.latency_s), "edge": fit(periods0[0], periods1[0]),
                    "host": fit(periods0[1], periods1[1]) if s0.cut < s0.n_nodes else (0.0, 0.0), "sent_bytes": c0.sent_bytes}
    return out


def at(f, bw):
    a, b = f
    return a + b / bw


SERIES: dict = {}  # policy -> (latency, frames/s) per frame, for --chart


def simulate(model, bps, req, policy, name=None):
    """Per frame (bandwidths `bps`): latency, accuracy, reward of the strategy `policy(i)` picks."""
    lat = np.empty(len(bps))
    accs = np.empty(len(bps))
    rew = np.empty(len(bps))
    fps = np.empty(len(bps))
    for i, bw in enumerate(bps):
        m = model[policy(i)]
        s = m["strategy"]
        lat[i] = at(m["latency"], bw)
        fps[i] = 1.0 / max(at(m["edge"], bw), at(m["host"], bw))
        accs[i] = s.accuracy
        rew[i] = math.exp(s.accuracy) + fps[i] if lat[i] <= req else 0.0
    if name:
        SERIES[name] = (lat, fps)
    return lat, accs, rew


def static_score(row, req: float, objective: str) -> float:
    """What makes a static strategy the best one over a trace's frames (row: per-frame latency, accuracy,
    reward): the paper's mean reward, or with the accuracy objective the mean accuracy of the answers
    within the requirement (a frame answered late counts 0), so a plan that misses often cannot win on
    accuracy alone."""
    lat, accs, rew = row
    return float(rew.mean()) if objective == "reward" else float(np.mean(np.where(lat <= req, accs, 0.0)))


def dynamic_rows(graph, devices, acc, trace_path, scale, req, interval, objective, states, down_margin=None):
    trace = read_trace(trace_path)
    times = np.arange(0.0, trace.duration_s, interval)
    bps = np.asarray(trace.bps_at(times)) * scale
    model = fitted(graph, devices, acc)
    label = devices
    text, speeds = parse_device_speeds(devices)
    cmap, _ = configuration_map(graph, [(label, parse_devices(text))], states, req, acc, graph.name, objective=objective, speeds=speeds)
    latency = cmap.link_latency_s
    opt = RuntimeOptimizer(cmap, label, initial_bps=float(bps[0]), estimator=HarmonicEstimator(latency_s=latency),
                           detector_options={"down_margin": MAP_DOWN_MARGIN if down_margin is None else down_margin})
    picks = []
    for i, bw in enumerate(bps):
        e = opt.strategy
        key = (e.exit, e.cut, e.codec)
        picks.append(key)
        sent = model[key]["sent_bytes"] or 16384.0  # on the device: an idle probe
        opt.observe(sent, sent * 8.0 / bw + latency, at=float(times[i]), frame=i)
    rows = []
    lat, accs, rew = simulate(model, bps, req, lambda i: picks[i], "dynamic")
    rows.append(("Edgent-style dynamic", lat, accs, rew, len(opt.switches)))  # strategy changes (not state changes)
    static = {}
    for key, m in model.items():
        if not m["strategy"].candidate.runnable:
            continue
        static[key] = simulate(model, bps, req, lambda i, k=key: k)
    best = max(static, key=lambda k: (static_score(static[k], req, objective), static[k][2].mean()))  # ties: the better reward
    name = f"best static: {best[0]} cut {best[1]} {best[2]}"
    simulate(model, bps, req, lambda i: best, name)
    rows.append((name, *static[best], 0))
    final = [k for k in model if k[0] == model_final(model)]
    on_device = next(k for k in final if model[k]["strategy"].on_device)
    rows.append(("all on the device (final exit)", *simulate(model, bps, req, lambda i: on_device), 0))
    on_host = (model_final(model), 0, "raw")
    rows.append(("all on the host (final exit; predicted only)", *simulate(model, bps, req, lambda i: on_host), 0))
    SERIES["_times"] = times
    SERIES["_switches"] = [sw.at for sw in opt.switches]
    return [{"policy": name, "meets": float(np.mean(lat <= req)), "mean_accuracy": float(accs.mean()), "mean_reward": float(rew.mean()),
             "accuracy_in_time": static_score((lat, accs, rew), req, "accuracy"),
             "p50_ms": float(np.median(lat) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3), "switches": sw}
            for name, lat, accs, rew, sw in rows], trace, bps


def measured_dynamic(graph, devices, acc, trace_path, scale, req, interval, objective, states, seconds, tmp: Path,
                     down_margin=None, spec: str | None = None, every: int = 1, drain_always: bool = False) -> tuple[list, dict]:
    """Issue 16's dynamic benchmark measured (module docstring, 3): rows per policy, and the predicted rows
    of the same frames."""
    from cluster.bandwidth import BandwidthTrace, map_plans, write_trace
    from cluster.commands.configmap import build_map
    from cluster.commands.emulate import run_emulated
    from partitioners.edgent import ConfigEntry, ConfigMap, reward
    from partitioners.plan import Plan

    full = read_trace(trace_path)
    keep = full.time_s < seconds
    cut = BandwidthTrace(full.time_s[keep], full.mbit_per_s[keep] * scale, min(float(seconds), full.duration_s), str(trace_path))
    trace_csv = write_trace(tmp / "trace.csv", cut, [f"first {seconds:g} s of {Path(trace_path).name} x{scale:g}"])
    predicted, _, _ = dynamic_rows(graph, devices, acc, trace_csv, 1.0, req, interval, objective, states, down_margin)
    exit_, _, cut_at, codec = predicted[1]["policy"].removeprefix("best static: ").split(" ")  # of these frames
    best_key = (exit_, int(cut_at), codec)
    frames = max(1, int(round(cut.duration_s / interval)))
    extra = ["--bandwidth-trace", str(trace_csv), "--frame-interval", repr(interval * 1e3), "--switch-every", str(every)]
    if down_margin is not None:  # the measured runs' chooser drops as the predicted one does
        extra += ["--down-margin", repr(float(down_margin))]
    if drain_always:  # every boundary drains the pipeline, the plan kept or not (the runtime before issue 16's kept plans)
        extra += ["--drain-every-boundary"]
    model = fitted(graph, devices, acc)
    final = model_final(model)
    on_device = next(k for k in model if k[0] == final and model[k]["strategy"].on_device)
    policies = [("Edgent-style dynamic", None), (f"best static: {best_key[0]} cut {best_key[1]} {best_key[2]}", best_key),
                ("all on the device (final exit)", on_device)]
    rows = []
    for i, (name, key) in enumerate(policies):
        if key is None:
            map_path = build_map(spec or graph.name, devices, f"{req * 1e3:g}ms", tmp / "map",
                                 states=",".join(f"{s / 1e6:g}" for s in states) + "mbit", objective=objective, engine="numpy",
                                 quiet=True, accuracy=[f"{k}={v!r}" for k, v in acc.items()])
        else:  # a one-entry map: the same runtime as the dynamic run, never switching
            s = model[key]["strategy"]
            folder = tmp / f"static{i}"
            cluster = _cluster(devices, float(np.median(cut.mbit_per_s)) * 1e6)
            plan_path, graph_path = write_strategy(graph, s, cluster, folder / "plan.json", None, "numpy", folder)
            entry = ConfigEntry(devices, 1e6, s.exit, s.cut, s.n_nodes, s.after, s.codec, s.latency_s, s.throughput_fps, s.accuracy,
                                reward(s, req), s.latency_s <= req, plan_path.name, graph_path.name)
            map_path = ConfigMap(spec or graph.name, req, _cluster(devices, 1e6).link_latency_s, "numpy", (entry,)).save(
                folder / "configmap.json")
        n_ranks = max(Plan.load(p).n_ranks for _, _, p, _ in map_plans(ConfigMap.load(map_path), map_path.parent))
        doc = run_emulated(map_path.resolve(), n_ranks, frames, tmp / f"measured{i}.json", "numpy", progress=False, timeout=3600,
                           extra=extra)
        assert doc["every_frame_once"], "frames lost or duplicated"
        lat = np.array(doc["latency_of_frame_ms"])
        plan_of = np.asarray(doc["plan_of_frame"])
        acc_of_frame = np.array([p["accuracy"] for p in doc["plans"]])[plan_of]
        # the paper's reward of each frame: exp(accuracy) + the strategy's frames/s at the trace's bandwidth then, if in time
        bw = np.asarray(cut.bps_at(np.arange(lat.size) * interval))
        fps = np.empty(lat.size)
        for j, p in enumerate(doc["plans"]):
            m = model[(p["exit"], int(p["cut"]), p["codec"])]
            mine = plan_of == j
            fps[mine] = [1.0 / max(at(m["edge"], b), at(m["host"], b)) for b in bw[mine]]
        reward_of_frame = np.where(lat <= req * 1e3, np.exp(acc_of_frame) + fps, 0.0)
        rows.append({"policy": name + " (measured)", "meets": doc["meets_requirement"], "mean_accuracy": doc["mean_accuracy"],
                     "mean_reward": float(reward_of_frame.mean()), "accuracy_in_time": float(np.mean(np.where(lat <= req * 1e3, acc_of_frame, 0.0))),
                     "p50_ms": float(np.median(lat)), "p99_ms": float(np.percentile(lat, 99)),
                     "switches": len(doc["switches"]), "drains": doc.get("drains"), "frames": doc["frames"],
                     # from each frame's capture (its due time), the wait for the pipeline included (behind a drain, a busy stage)
                     "meets_from_capture": doc.get("meets_requirement_from_capture"),
                     "p99_from_capture_ms": (doc.get("latency_from_capture_ms") or {}).get("p99"), "emulation_late_s": doc["emulation_late_s"],
                     "late_ms_per_frame_by_rank": [round(v / max(doc["frames"], 1) * 1e3, 2) for v in doc.get("emulation_late_s_by_rank", [])],
                     "plans": [{k: p[k] for k in ("exit", "cut", "codec", "frames")} for p in doc["plans"]],
                     "latency_of_frame_ms": doc["latency_of_frame_ms"], "plan_of_frame": doc["plan_of_frame"],
                     "switch_frames": [sw["frame"] for sw in doc["switches"]]})
    return rows, {"trace": str(trace_csv), "seconds": cut.duration_s, "frames": frames, "predicted": predicted[:3],
                  "bps": np.asarray(cut.bps_at(np.arange(frames) * interval))}


LATE_LIMIT = 0.05  # a measured run whose emulated ranks fell behind by more than this fraction of the requirement a frame is not valid


def measured_verdict(rows, req: float) -> dict:
    """Issue 16's target over the measured rows (the dynamic run first, then the static ones): the dynamic
    run meets the requirement on at least 95% of frames and its mean reward beats every static plan's; and
    whether the emulation kept up (no rank behind its device by more than LATE_LIMIT of the requirement a
    frame: else the latencies measured this machine's load, not the devices)."""
    dynamic, static = rows[0], rows[1:]
    behind = max((max(r["late_ms_per_frame_by_rank"] or [0.0]) for r in rows), default=0.0)
    kept_up = behind <= LATE_LIMIT * req * 1e3
    met = dynamic["meets"] >= 0.95 and all(dynamic["mean_reward"] > r["mean_reward"] for r in static)
    lines = [f"target {'met' if met else 'NOT met'}: dynamic meets the requirement on {dynamic['meets']:.1%} of frames (>= 95%), "
             f"mean reward {dynamic['mean_reward']:.3f} against the static plans' "
             f"{', '.join(format(r['mean_reward'], '.3f') for r in static)} (must beat each)"]
    if not kept_up:
        lines.append(f"NOT VALID: an emulated rank fell {behind:.1f} ms a frame behind its device (more than {LATE_LIMIT:.0%} of the "
                     f"requirement): the latencies measured this machine's load, not the devices'; rerun on a quieter machine, or "
                     "with a slower host (--devices rpi3:1,host:1*F)")
    return {"target_met": bool(met), "emulation_kept_up": bool(kept_up), "most_behind_ms_per_frame": float(behind), "verdict": lines}


def note(text: str, quiet_stdout: bool) -> None:
    """A line for the reader: on stdout with the tables, on stderr under --json (stdout is the document)."""
    from cluster.output import err_console

    (err_console if quiet_stdout else console).print(text)


def plain_vs_map(graph, spec: str, devices: str, acc, bandwidth: float, frames: int, interval: float, tmp: Path) -> list:
    """Item 2 of the measured benchmark (--plain-vs-map F): the same plan run plainly (`pisplit run PLAN
    --emulate`) and as a one-entry configuration map (`pisplit run MAP --emulate`: the switching runtime,
    never switching), taking turns, for the final exit on the device and the fastest offloaded final exit
    at `bandwidth`: what switching itself adds to a frame's latency, beside the prediction."""
    from cluster.commands.emulate import run_emulated
    from partitioners.edgent import ConfigEntry, ConfigMap, reward
    from partitioners.plan import Plan

    cluster = _cluster(devices, bandwidth)
    cands = strategies(graph, cluster, acc)
    final = max(cands, key=lambda s: s.depth).exit
    picks = [("final on the device", next(s for s in cands if s.exit == final and s.on_device))]
    off = [s for s in cands if s.exit == final and not s.on_device]
    if off:
        picks.append(("final offloaded", min(off, key=lambda s: s.latency_s)))
    extra = ["--link", f"{bandwidth / 1e6:g}mbit", "--frame-interval", repr(interval * 1e3)]
    rows = []
    for label, s in picks:
        folder = tmp / label.replace(" ", "_")
        plan_path, graph_path = write_strategy(graph, s, cluster, folder / "plan.json", None, "numpy", folder)
        entry = ConfigEntry(devices, bandwidth, s.exit, s.cut, s.n_nodes, s.after, s.codec, s.latency_s, s.throughput_fps, s.accuracy,
                            reward(s, 1.0), True, plan_path.name, graph_path.name)
        map_path = ConfigMap(spec, 1.0, cluster.link_latency_s, "numpy", (entry,)).save(folder / "configmap.json")
        n_ranks = Plan.load(plan_path).n_ranks
        got: dict = {"plain": [], "map": []}
        for turn in range(2):
            for kind, path in (("plain", plan_path), ("map", map_path)):
                doc = run_emulated(path.resolve(), n_ranks, frames, folder / f"{kind}{turn}.json", "numpy", progress=False, timeout=3600,
                                   max_in_flight=1, extra=extra)
                assert doc["every_frame_once"], "frames lost or duplicated"
                got[kind].append(doc["latency_ms"]["p50"])
        rows.append({"plan": f"{label}: {s.exit} cut {s.cut}", "predicted_ms": s.latency_s * 1e3, "plain_p50_ms": got["plain"],
                     "map_p50_ms": got["map"]})
    return rows


def measured_chart(path, rows, bps, interval, req, title) -> None:
    """The measured dynamic run: each frame's latency over time per policy (dynamic vs static), the exit
    that answered each of the dynamic run's frames (its switches as grey lines), the bandwidth beneath."""
    from cluster.charts import _figure_class, _save

    times = np.arange(len(bps)) * interval
    fig = _figure_class()(figsize=(11, 7.5))
    ax_lat, ax_exit, ax_bw = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1.2, 1.3]})
    for r in rows:
        ax_lat.plot(times, r["latency_of_frame_ms"], lw=0.8, label=r["policy"])
    ax_lat.axhline(req * 1e3, color="#d62728", ls="--", lw=1, label=f"requirement {req * 1e3:g} ms")
    ax_lat.set_ylabel("latency ms (measured)")
    ax_lat.set_yscale("log")
    ax_lat.legend(fontsize=8, loc="upper right")
    dyn = rows[0]
    names = [f"{p['exit']} cut {p['cut']}" for p in dyn["plans"]]
    ax_exit.step(times, dyn["plan_of_frame"], where="post", color="#1f77b4", lw=0.9)
    ax_exit.set_yticks(range(len(names)), names, fontsize=8)
    ax_exit.set_ylabel("dynamic's plan")
    for f in dyn["switch_frames"]:
        for ax in (ax_lat, ax_exit):
            ax.axvline(f * interval, color="#bbbbbb", lw=0.5)
    ax_bw.step(times, bps / 1e6, where="post", color="#555555", lw=0.9)
    ax_bw.set_ylabel("Mbit/s")
    ax_bw.set_xlabel("time s (grey lines: the dynamic run's switches)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    head = ("time s", "Mbit/s", "dynamic plan") + tuple(f"{r['policy']} ms" for r in rows)
    table = [(f"{t:.2f}", f"{b / 1e6:.3f}", str(dyn["plan_of_frame"][i])) + tuple(f"{r['latency_of_frame_ms'][i]:.3f}" for r in rows)
             for i, (t, b) in enumerate(zip(times, bps))]
    _save(fig, Path(path), title, (head, table[:: max(1, len(table) // 300)]), [])


def model_final(model) -> str:
    return max((m["strategy"] for m in model.values()), key=lambda s: s.depth).exit


def print_dynamic(rows, title):
    t = Table(title=title)
    for col in ("policy", "frames meeting", "from capture", "mean accuracy", "accuracy in time", "mean reward", "p50 ms", "p99 ms", "switches"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        reward_text = "-" if r["mean_reward"] is None else f"{r['mean_reward']:.1f}"
        capture = "-" if r.get("meets_from_capture") is None else f"{r['meets_from_capture']:.1%}"  # measured: the wait for the pipeline counted
        t.add_row(r["policy"], f"{r['meets']:.1%}", capture, f"{r['mean_accuracy']:.4f}", f"{r['accuracy_in_time']:.4f}", reward_text,
                  f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", str(r["switches"]))
    console.print(t)


def chart(path, bps, req, title) -> None:
    """Latency and throughput over time, dynamic vs the best static strategy, the bandwidth beneath."""
    from cluster.charts import _figure_class, _save

    times = SERIES["_times"]
    fig = _figure_class()(figsize=(11, 7.5))
    ax_lat, ax_fps, ax_bw = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [2, 2, 1.3]})
    for name, (lat, fps) in ((k, v) for k, v in SERIES.items() if not k.startswith("_")):
        ax_lat.plot(times, lat * 1e3, lw=0.9, label=name)
        ax_fps.plot(times, fps, lw=0.9, label=name)
    ax_lat.axhline(req * 1e3, color="#d62728", ls="--", lw=1, label=f"requirement {req * 1e3:g} ms")
    for t in SERIES["_switches"]:
        ax_lat.axvline(t, color="#bbbbbb", lw=0.5)
    ax_lat.set_ylabel("latency ms (predicted)")
    ax_lat.legend(fontsize=8, loc="upper right")
    ax_fps.set_ylabel("frames/s (predicted)")
    ax_bw.step(times, bps / 1e6, where="post", color="#555555", lw=0.9)
    ax_bw.set_ylabel("Mbit/s")
    ax_bw.set_yscale("log")
    ax_bw.set_xlabel("time s (grey lines above: strategy switches)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    rows = [(f"{t:.1f}", f"{b / 1e6:.3f}") + tuple(f"{v[0][i] * 1e3:.3f}" for k, v in SERIES.items() if not k.startswith("_"))
            for i, (t, b) in enumerate(zip(times, bps))]
    head = ("time s", "Mbit/s") + tuple(f"{k} ms" for k in SERIES if not k.startswith("_"))
    _save(fig, Path(path), title, (head, rows[:: max(1, len(rows) // 300)]), [])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_edgent")
    p.add_argument("--model", default=TRAINED, help=f"a branchy model; {SCALED_MODEL}: Edgent's setting, hundreds of ms a frame on "
                   "the Pi (scaled_branchy_alexnet)")
    p.add_argument("--accuracy", metavar="NAME=A", action="append", default=[], help="accuracy of an exit (repeatable)")
    p.add_argument("--devices", default="rpi3:1,host:1")
    p.add_argument("--bandwidths", default="0.05,0.1,0.25,0.5,1,2,5,10mbit")
    p.add_argument("--requirements", default="50,100,200,500,1000", help="ms")
    p.add_argument("--scaled", action="store_true", help="also 10..1000 Mbit/s x 1.5..4 ms")
    p.add_argument("--measure", type=int, default=0, metavar="F", help="emulate each distinct plan for F frames (0: predicted only)")
    p.add_argument("--trace", default=str(ROOT / "cluster" / "traces" / "lte_a.csv"))
    p.add_argument("--trace-scale", type=float, default=1.0, help="multiply the trace's bandwidths")
    p.add_argument("--requirement", default="100ms", help="of the dynamic run")
    p.add_argument("--states", default="0.25,0.5,1,2,4,8,16mbit", help="bandwidth states of the dynamic run's map (before --trace-scale)")
    p.add_argument("--objective", choices=("reward", "accuracy"), default="reward", help="of the dynamic run's map")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between frames of the dynamic run")
    p.add_argument("--switch-every", type=int, default=1, metavar="K", help="the measured dynamic run may switch every K frames")
    p.add_argument("--down-margin", type=float, help=f"the state detector's margin for drops in the dynamic run, predicted and measured "
                   f"(`pisplit run --down-margin`; default: a map run's, {MAP_DOWN_MARGIN})")
    p.add_argument("--drain-every-boundary", action="store_true",
                   help="the measured runs drain their pipeline at every boundary, the plan kept or not (how the switching runtime "
                   "ran before kept plans stopped draining): run the same command with and without it to see what draining cost")
    p.add_argument("--measure-dynamic", type=float, default=0.0, metavar="S",
                   help="also replay the first S seconds of the trace on the emulated link: dynamic and static policies measured")
    p.add_argument("--measured-chart", metavar="FILE", help="with --measure-dynamic: draw the measured run (.svg, .png or .html)")
    p.add_argument("--chart", metavar="FILE", help="draw the dynamic run (.svg, .png or .html; needs pisplit[charts])")
    p.add_argument("--plain-vs-map", type=int, default=0, metavar="F",
                   help="run the final exit's plans (on the device; offloaded at the --bandwidths' last) plainly and as a "
                   "one-entry map, F frames each, twice taking turns: what the switching runtime adds")
    p.add_argument("--reference-host", action="store_true",
                   help="measured runs keep the host at the reference machine's speed even where this machine is slower (by "
                   "default such a host is slowed to this machine's speed, host*F: an emulated rank cannot run faster than it)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for path in (args.chart, args.measured_chart):
        if path:
            from cluster.charts import check_chart_path

            check_chart_path(path)
    model_dir = Path(tempfile.mkdtemp(prefix="bench_edgent_model_"))
    before = session_nice()
    if before is not None:
        note(f"this session's scheduling group at nice {AUTOGROUP.read_text().split()[-1]} for the run (was {before}): under autogroup "
             "scheduling a process's nice alone does not rank it against other sessions' jobs", args.json)
    try:
        return _main(args, model_dir)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
        if before is not None:
            try:
                AUTOGROUP.write_text(str(before))
            except OSError:
                pass


def _main(args, model_dir: Path) -> int:
    graph, spec, acc = bench_model(args.model, model_dir, args.accuracy)
    if (args.measure or args.measure_dynamic > 0 or args.plain_vs_map) and not args.reference_host:
        devices, speed, share = emulable_devices(args.devices, spec, 0)
        if devices != args.devices:
            note(f"this machine computes {args.model} {speed:.2f}x slower than the host's reference (CPU time) and gives an emulated "
                 f"rank {share:.2f} of a core now: it cannot emulate the reference host; the host is emulated at 1 / ({speed:.2f} / "
                 f"{share:.2f} x {HEADROOM:g} headroom) of its speed, --devices {devices} (--reference-host keeps the reference host)",
                 args.json)
            args.devices = devices
        if share < 0.8:
            note(f"this machine is busy (an emulated rank gets {share:.2f} of a core): measured latencies are slower than on a quiet "
                 "machine", args.json)
    bandwidths = parse_states(args.bandwidths)
    requirements = [parse_latency(r) for r in args.requirements.split(",")]
    if args.quick:
        bandwidths, requirements = bandwidths[:2], requirements[:2]
    grids = [("static", bandwidths, requirements)]
    if args.scaled:
        grids.append(("scaled", parse_states("10,50,100,200,500,1000mbit")[: 2 if args.quick else None],
                      [parse_latency(r) for r in ("1.5", "2", "3", "4")][: 2 if args.quick else None]))
    doc: dict = {"model": args.model, "devices": args.devices, "accuracy": acc}
    with tempfile.TemporaryDirectory(prefix="bench_edgent_") as tmp:
        for name, bws, reqs in grids:
            rows = static_rows(graph, args.devices, bws, reqs, acc)
            if args.measure:
                measure(rows, graph, args.measure, Path(tmp))
            doc[name] = [{k: v for k, v in r.items() if k not in ("strategy", "cluster")} for r in rows]
            if not args.json:
                print_static(rows, f"{args.model} on {args.devices}: Algorithm 1's exit and cut ({name})")
    if args.plain_vs_map:
        with tempfile.TemporaryDirectory(prefix="bench_edgent_") as tmp:
            doc["plain_vs_map"] = plain_vs_map(graph, spec, args.devices, acc, bandwidths[-1], args.plain_vs_map, args.interval, Path(tmp))
        if not args.json:
            t = Table(title=f"the same plan run plainly and as a one-entry map ({args.plain_vs_map} frames every "
                            f"{args.interval * 1e3:g} ms, twice taking turns; p50 latency ms)")
            for col in ("plan", "predicted", "plain", "map"):
                t.add_column(col, justify="left" if col == "plan" else "right")
            for r in doc["plain_vs_map"]:
                t.add_row(r["plan"], f"{r['predicted_ms']:.2f}", " / ".join(f"{v:.2f}" for v in r["plain_p50_ms"]),
                          " / ".join(f"{v:.2f}" for v in r["map_p50_ms"]))
            console.print(t)
    req = parse_latency(args.requirement)
    states = [s * args.trace_scale for s in parse_states(args.states)]
    rows, trace, bps = dynamic_rows(graph, args.devices, acc, args.trace, args.trace_scale, req, args.interval * (5 if args.quick else 1),
                                    args.objective, states, args.down_margin)
    doc["dynamic"] = {"trace": args.trace, "trace_scale": args.trace_scale, "requirement_s": req, "objective": args.objective,
                      "down_margin": args.down_margin,
                      "frames": len(bps), "mean_mbit": float(np.mean(bps) / 1e6), "rows": rows}
    title = (f"{args.model} on {args.devices}: {Path(args.trace).name} x{args.trace_scale:g}, requirement {req * 1e3:g} ms, "
             f"map by {args.objective} (predicted)")
    if args.chart:
        chart(args.chart, bps, req, title)
    if args.measure_dynamic > 0:
        with tempfile.TemporaryDirectory(prefix="bench_edgent_") as tmp:
            measured, same = measured_dynamic(graph, args.devices, acc, args.trace, args.trace_scale, req, args.interval, args.objective,
                                              states, args.measure_dynamic, Path(tmp), args.down_margin, spec, args.switch_every,
                                              args.drain_every_boundary)
        doc["dynamic_measured"] = {"seconds": same["seconds"], "frames": same["frames"], "interval_s": args.interval,
                                   "drain_every_boundary": args.drain_every_boundary,
                                   "rows": measured, "predicted_same_frames": same["predicted"]}
        if args.measured_chart:
            measured_chart(args.measured_chart, measured, same["bps"], args.interval, req,
                           f"{args.model} on {args.devices}: first {same['seconds']:g} s of {Path(args.trace).name} x{args.trace_scale:g}, "
                           f"requirement {req * 1e3:g} ms (measured on the emulated devices and link)")
        verdict = measured_verdict(measured, req)
        doc["dynamic_measured"].update(verdict)
        if not args.json:
            for r in measured:  # an emulated rank behind its device's speed (a host faster than this machine) adds to latency
                console.print(f"{r['policy']}: emulated ranks behind their devices' speed by "
                              f"{', '.join(f'{v:g}' for v in r['late_ms_per_frame_by_rank'])} ms a frame (rank 0, 1, ...)")
            print_dynamic(same["predicted"] + measured, f"the first {same['seconds']:g} s of {Path(args.trace).name} "
                          f"x{args.trace_scale:g}, {same['frames']} frames every {args.interval * 1e3:g} ms, requirement "
                          f"{req * 1e3:g} ms: predicted, then measured on the emulated devices and link")
        for line in verdict["verdict"]:
            note(line, args.json)
    if args.json:
        print_json(doc)
    else:
        print_dynamic(rows, f"dynamic over {Path(args.trace).name} x{args.trace_scale:g} (mean {np.mean(bps) / 1e6:.2f} Mbit/s, "
                            f"{len(bps)} frames), requirement {req * 1e3:g} ms, map by {args.objective}, down margin "
                            f"{MAP_DOWN_MARGIN if args.down_margin is None else args.down_margin} (predicted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
