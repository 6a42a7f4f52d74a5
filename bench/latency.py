"""Single-frame latency on emulated Pi clusters (scripts/bench_latency; layouts kept on their ranks).
For each model and cluster, the dp planner's --objective latency plan runs frame after frame under
emulation; prints measured p50/p90 latency beside the plan's prediction, and the speedup over one
emulated device of the same kind (measured in the same run), beside the predicted one.
Options: --models a,b --configs rpi3:4@94mbit,... --frames N --engine numpy|litert --json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from cluster.commands.emulate import run_emulated
from cluster.emulated_plans import plan_for_devices, single_device_plan
from bench import cluster_config
from layers import zoo_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16,c3d,alexnet,resnet50")
    ap.add_argument("--configs", default="rpi3:2@94mbit,rpi3:4@94mbit,rpi3:8@94mbit,rpi4:4@940mbit")
    ap.add_argument("--frames", type=int, default=4, help="frames through each cluster, one at a time")
    ap.add_argument("--engine", default="numpy")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

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
                       "late_s": max(r["emulation_late_s"] for r in rep["ranks"])}
                rows.append(row)
                if not args.json:
                    print(f"{model:8s} {devices:7s} {row['link_mbit']:4.0f} Mbit/s | latency p50 {p50 * 1e3:8.1f} ms p90 {p90 * 1e3:8.1f} "
                          f"(pred {plan.predicted_latency_s * 1e3:8.1f}, x{row['measured_over_predicted']:.2f}) | one {kind} "
                          f"{one_s * 1e3:8.1f} ms (pred {one_pred * 1e3:8.1f}) | speedup {row['speedup']:.2f}x "
                          f"(pred {row['predicted_speedup']:.2f}x) | {kept} kept segments | {' '.join(row['stages'])}", flush=True)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
