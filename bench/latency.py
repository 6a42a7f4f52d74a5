"""Single-frame latency on emulated Pi clusters (scripts/bench_latency; layouts kept on their ranks).
For each model and cluster, the dp planner's --objective latency plan runs frame after frame under
emulation; prints measured p50/p90 latency beside the plan's prediction, and the speedup over one
emulated device of the same kind (measured in the same run), beside the predicted one.
--static: no cluster run; each plan's compute steps (every part of every split segment, the lead's
unsplit segments and merges) timed here one after the other as the ranks run them (warm median CPU
seconds, pass after pass in the stage's order), dilated as an emulated device dilates them, beside the
plan's predicted compute per segment: what an emulation on an idle machine charges, so a compute
model error shows apart from host load (a loaded host adds its lateness to a cluster run's
latency, not to this). --segments also prints the segments off by more than 15%.
Options: --models a,b --configs rpi3:4@94mbit,... --frames N --engine numpy|litert --static [--segments] --json
"""
from __future__ import annotations

import os

# one BLAS thread, as a rank has (before numpy loads): --static times compute steps in this process, and
# more threads both run them faster and, on a loaded machine, spin (2 threads: AlexNet's steps x4-6 in CPU time)
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from cluster.commands.emulate import implausible_speedup, run_emulated  # noqa: E402
from cluster.emulated_plans import plan_for_devices, single_device_plan  # noqa: E402
from cluster.report import late_share  # noqa: E402
from bench import cluster_config  # noqa: E402
from layers import zoo_model  # noqa: E402


LATE_SHARE = 0.25  # a rank behind its emulated device for more of the run than this: the machine did not keep up


def late_problem(share: float) -> str | None:
    """Why a row is not a result when a rank fell behind its emulated device for more than LATE_SHARE of the
    run (this machine could not run the ranks at the devices' pace: ResNet50 on 8 Pi 4 at 940 Mbit/s, seven
    ranks on 2 cores, was behind for 35-47% of its runs; late_s also counts lateness caught up later, so a
    smaller share can still be a result: ResNet50 on 4 Pi 4 at 11% came within 8%), else None."""
    if share <= LATE_SHARE:
        return None
    return f"a rank fell behind its emulated device for {share:.0%} of the run (this machine could not keep up)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16,c3d,alexnet,resnet50")
    ap.add_argument("--configs", default="rpi3:2@94mbit,rpi3:4@94mbit,rpi3:8@94mbit,rpi4:4@940mbit")
    ap.add_argument("--frames", type=int, default=4, help="frames through each cluster, one at a time")
    ap.add_argument("--engine", default="numpy")
    ap.add_argument("--static", action="store_true", help="no cluster run: the plans' compute steps timed here and dilated")
    ap.add_argument("--segments", action="store_true", help="with --static: the segments off by more than 15%%")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.static:
        return static(args)

    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", file=sys.stderr)
    rows, singles = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmpdir:
        tmp = Path(tmpdir)
        for model in args.models.split(","):
            graph = zoo_model(model)
            for config in args.configs.split(","):
                devices, kind, link_bps = cluster_config(config)
                if (model, kind) not in singles:
                    single = single_device_plan(graph, model, kind, link_bps, args.engine)
                    rep = run_emulated(single.save(tmp / "single.json"), 1, args.frames, tmp / "single-report.json", args.engine,
                                       progress=False, max_in_flight=1)
                    singles[(model, kind)] = (rep["latency_ms"]["p50"] / 1e3, single.predicted_latency_s)
                one_s, one_pred = singles[(model, kind)]
                plan = plan_for_devices(graph, model, devices, link_bps, "dp", "latency", args.engine)
                load = float(Path("/proc/loadavg").read_text().split()[0])  # other work on this machine adds its lateness
                t = time.time()
                rep = run_emulated(plan.save(tmp / "plan.json"), plan.n_ranks, args.frames, tmp / "report.json", args.engine,
                                   progress=False, max_in_flight=1)
                if not rep["every_frame_once"]:
                    sys.exit(f"bench_latency: {model} on {config}: frames lost or duplicated ({rep.get('frames')} frames reported)")
                p50, p90 = rep["latency_ms"]["p50"] / 1e3, rep["latency_ms"]["p90"] / 1e3
                kept = sum(1 for s in plan.stages for g in s.segments if g.output_layout == "parts")
                row = {"model": model, "devices": devices, "link_mbit": link_bps / 1e6, "ranks": plan.n_ranks,
                       "stages": [f"{s.mode}x{len(s.ranks)}[{s.node_start}:{s.node_stop})" for s in plan.stages], "kept_segments": kept,
                       "predicted_s": plan.predicted_latency_s, "p50_s": p50, "p90_s": p90,
                       "measured_over_predicted": p50 / plan.predicted_latency_s,
                       "single_p50_s": one_s, "single_predicted_s": one_pred, "speedup": one_s / p50,
                       "predicted_speedup": one_pred / plan.predicted_latency_s, "seconds": time.time() - t,
                       "late_s": max(r["emulation_late_s"] for r in rep["ranks"]), "load_average": load}
                row["late_share"] = late_share(rep)
                row["measurement_problem"] = (implausible_speedup(plan, row["speedup"])  # above N identical devices: not a result
                                              or late_problem(row["late_share"]))
                rows.append(row)
                if not args.json:
                    print(f"{model:8s} {devices:7s} {row['link_mbit']:4.0f} Mbit/s | latency p50 {p50 * 1e3:8.1f} ms p90 {p90 * 1e3:8.1f} "
                          f"(pred {plan.predicted_latency_s * 1e3:8.1f}, x{row['measured_over_predicted']:.2f}) | one {kind} "
                          f"{one_s * 1e3:8.1f} ms (pred {one_pred * 1e3:8.1f}) | speedup {row['speedup']:.2f}x "
                          f"(pred {row['predicted_speedup']:.2f}x) | {kept} kept segments | {' '.join(row['stages'])}"
                          + (f" | NOT A RESULT: {row['measurement_problem']}" if row["measurement_problem"] else ""), flush=True)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} at the end", file=sys.stderr)
    return 0


def dilated_steps(plan, graph, engine: str, passes: int = 5) -> list:
    """Per segment of the plan's stages: (stage, segment, predicted compute s, [dilated s of each
    part], dilated s of the lead's merge/post graph). Every compute step is built as the ranks build
    it (cluster.runtime shard_graph for unsplit segments, splits.split_segment parts and post graph)
    and timed in CPU seconds, warm median over `passes` passes in stage order (as the runtime's
    warm references), times the emulated slowdown (device profile / this machine's cached speed)."""
    from cluster.emulation import device_slowdown
    from cluster.host_speed import host_speed
    from cluster.runtime import shard_graph
    from layers.engine import make_engine
    from partitioners.profiles import class_dilation
    from partitioners.splits import split_segment
    from partitioners.vocabulary import NO_SPLIT

    speed = host_speed(plan.model, plan.model_seed, engine, concurrency=plan.n_ranks) or 1.0
    steps = []  # (stage, segment, [part engines + graphs], post engine + graph or None)
    for stage in plan.stages:
        for seg in stage.segments or ():
            if seg.kind == NO_SPLIT:
                shard = shard_graph(graph, seg.node_start, seg.node_stop)
                steps.append((stage, seg, [(make_engine(shard, engine, threads=1), shard)], None))
                continue
            split = split_segment(graph, seg.node_start, seg.node_stop, seg.kind, seg.sizes, seg.options)
            parts = [(make_engine(g, engine, threads=1), g) for g in (split.part_graph(i) for i in range(split.n_parts))]
            post = split.post_graph()
            steps.append((stage, seg, parts, (make_engine(post, engine, threads=1), post) if post is not None else None))
    feeds, times = {}, {}
    for _ in range(passes):
        for _, _, parts, post in steps:
            for e, g in parts + ([post] if post else []):
                x = feeds.setdefault(id(e), g.random_input(0))
                t = time.process_time()
                e.run(x)
                times.setdefault(id(e), []).append(time.process_time() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    rows = []
    for stage, seg, parts, post in steps:
        kind = plan.devices[stage.ranks[0]].kind
        slow = (device_slowdown(kind, engine) * class_dilation(kind, engine, graph, seg.node_start, seg.node_stop)
                / plan.devices[stage.ranks[0]].speed / speed)  # the segment's nodes at their op classes' prices (litert)
        rows.append((stage, seg, seg.predicted[0] if seg.predicted else None, [med[id(e)] * slow for e, _ in parts],
                     med[id(post[0])] * slow if post else 0.0))
    return rows


def static(args) -> int:
    """--static: per plan, the dilated compute of its split stages' segments beside the prediction."""
    out = []
    for model in args.models.split(","):
        graph = zoo_model(model)
        for config in args.configs.split(","):
            devices, kind, link_bps = cluster_config(config)
            plan = plan_for_devices(graph, model, devices, link_bps, "dp", "latency", args.engine)
            rows = [r for r in dilated_steps(plan, graph, args.engine) if r[2] is not None]
            if not rows:
                print(f"{model:8s} {devices:7s}: no split stage with per-segment predictions", flush=True)
                continue
            pred = sum(r[2] for r in rows)
            emul = sum(max(r[3]) + r[4] for r in rows)
            spread = sum(max(r[3]) - min(r[3]) for r in rows)
            segs = [{"segment": f"[{g.node_start}:{g.node_stop}) {g.kind}", "parts": len(parts), "predicted_ms": p * 1e3,
                     "dilated_max_ms": max(parts) * 1e3, "dilated_min_ms": min(parts) * 1e3, "merge_ms": m * 1e3,
                     "ratio": (max(parts) + m) / p if p > 0 else None} for _, g, p, parts, m in rows]
            row = {"model": model, "devices": devices, "predicted_compute_ms": pred * 1e3, "dilated_compute_ms": emul * 1e3,
                   "ratio": emul / pred, "part_spread_ms": spread * 1e3, "predicted_latency_ms": plan.predicted_latency_s * 1e3,
                   "segments": segs}
            out.append(row)
            if not args.json:
                print(f"{model:8s} {devices:7s} {link_bps / 1e6:4.0f} Mbit/s | split-stage compute: dilated {emul * 1e3:8.1f} ms, "
                      f"predicted {pred * 1e3:8.1f} (x{emul / pred:.2f}) | slowest-fastest part {spread * 1e3:6.1f} ms | "
                      f"plan latency {plan.predicted_latency_s * 1e3:8.1f} ms", flush=True)
                for g in segs if args.segments else ():
                    if g["ratio"] is not None and abs(g["ratio"] - 1) > 0.15:  # (a node priced at 0, flatten: no ratio)
                        print(f"    {g['segment']:28s} {g['parts']} parts: dilated {g['dilated_max_ms']:7.2f} ms "
                              f"(fastest {g['dilated_min_ms']:6.2f}, merge {g['merge_ms']:5.2f}) predicted {g['predicted_ms']:7.2f} "
                              f"x{g['ratio']:.2f}", flush=True)
    if args.json:
        json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
