"""Benchmark of the planner: planning time on large clusters, and the predicted throughput of dp
against the paper, memory and single baselines. Run via `scripts/bench_planner [--json]`."""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from rich.table import Table

from layers import load_model
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices, parse_link_bps
from partitioners.planners import PLANNERS, InfeasiblePlan, compare_plans, make_plan
from partitioners.profiles import Calibration

from cluster.output import console, print_json

TIMING_CASES = [("resnet50", "rpi3:6,rpi4:6,rpi5:4", "300mbit"), ("resnet50", "rpi3:8,rpi4:8", "94mbit"), ("vgg16", "rpi3:8", "94mbit")]
MODELS = ("alexnet", "vgg16", "resnet50", "xception", "c3d")
CLUSTERS = (("rpi3:4", "94mbit"), ("rpi3:8", "94mbit"), ("rpi4:4", "940mbit"))


def planning_seconds(model: str, devices: str, link: str, objective: str, repeat: int) -> dict:
    """Median seconds of cost model + dp plan from scratch (graph loading excluded)."""
    graph = load_model(model)
    calibration = Calibration("numpy")
    calibration.resolve("rpi3")  # reading the shipped reference profile is start-up, not planning
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        cost = CostModel(graph, make_cluster(parse_devices(devices), parse_link_bps(link)), calibration)
        plan = make_plan(graph, cost, "dp", objective)
        times.append(time.perf_counter() - t0)
    return {"model": model, "nodes": len(graph), "devices": devices, "link": link, "objective": objective,
            "seconds": statistics.median(times), "all_seconds": times, "stages": len(plan.stages),
            "throughput_fps": plan.predicted_throughput_fps}


def comparison(model: str, devices: str, link: str, objective: str) -> dict:
    """Predicted throughput and latency of every planner for one model and cluster."""
    graph = load_model(model)
    cost = CostModel(graph, make_cluster(parse_devices(devices), parse_link_bps(link)), Calibration("numpy"))
    row = {"model": model, "devices": devices, "link": link, "objective": objective}
    for name, r in zip(PLANNERS, compare_plans(graph, cost, objective, model)):
        if isinstance(r, InfeasiblePlan):
            row[name] = {"error": str(r)}
        else:
            row[name] = {"throughput_fps": r.throughput_fps, "latency_s": r.latency_s, "stages": len(r.plan.stages),
                         "modes": sorted({s.mode for s in r.plan.stages})}
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_planner", description=__doc__)
    p.add_argument("--repeat", type=int, default=3, help="planning runs per timing case (median kept)")
    p.add_argument("--objective", choices=("throughput", "latency"), default="throughput")
    p.add_argument("--models", help=f"comma-separated models (default {','.join(MODELS)}; timed: those of the timing cases)")
    p.add_argument("--cluster", action="append", metavar="DEVICES@LINK",
                   help="a cluster to compare the planners on, e.g. rpi3:4@94mbit (repeatable; default the three above)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    models = tuple(args.models.split(",")) if args.models else MODELS
    clusters = tuple(tuple(c.rsplit("@", 1)) for c in args.cluster) if args.cluster else CLUSTERS
    if any(len(c) != 2 for c in clusters):
        p.error("--cluster: DEVICES@LINK, e.g. rpi3:4@94mbit")
    cases = TIMING_CASES
    if args.models or args.cluster:  # the timing cases of those models, else each model on the first cluster
        cases = [c for c in TIMING_CASES if c[0] in models and not args.cluster] or [(m, *clusters[0]) for m in models]
    timings = [planning_seconds(m, d, l, args.objective, args.repeat) for m, d, l in cases]
    rows = [comparison(m, d, l, args.objective) for d, l in clusters for m in models]
    if args.json:
        print_json({"planning": timings, "predicted": rows})
        return 0
    table = Table(title=f"planning time (dp, {args.objective}, median of {args.repeat}, cost model included)")
    for col in ("model", "nodes", "devices", "link", "seconds", "stages"):
        table.add_column(col, justify="right" if col in ("nodes", "seconds", "stages") else "left")
    for t in timings:
        table.add_row(t["model"], str(t["nodes"]), t["devices"], t["link"], f"{t['seconds']:.2f}", str(t["stages"]))
    console.print(table)
    key = "throughput_fps" if args.objective == "throughput" else "latency_s"
    table = Table(title=f"predicted {'throughput (frames/s)' if key == 'throughput_fps' else 'latency (ms)'} per planner")
    for col in ("devices", "link", "model", *PLANNERS, "dp / best baseline"):
        table.add_column(col, justify="left" if col in ("devices", "link", "model") else "right")
    for r in rows:
        cells, values = [], {}
        for name in PLANNERS:
            if "error" in r[name]:
                cells.append("infeasible")
                continue
            v = r[name][key]
            values[name] = v
            cells.append(f"{v:.2f}" if key == "throughput_fps" else f"{v * 1e3:.0f}")
        others = [v for n, v in values.items() if n != "dp"]
        if "dp" in values and others:
            best = max(others) if key == "throughput_fps" else min(others)
            ratio = values["dp"] / best if key == "throughput_fps" else best / values["dp"]
            cells.append(f"{ratio:.2f}x")
        else:
            cells.append("-")
        table.add_row(r["devices"], r["link"], r["model"], *cells)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
