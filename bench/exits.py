"""Early exits (issue 14), side by side on 4 emulated Raspberry Pi 3B+ at 94 Mbit/s (scripts/bench_exits):
for the branchy LeNet and AlexNet, a sweep of T with each exit's share and the accuracy on the held-out
test split, bytes per frame between the exit plan's stages, predicted and measured throughput of the
exit plan against the planner's plan of the same model without exits (both on the same held-out
frames), and the planner's plan with the exits taken inside its stages (predicted as `pisplit plan
--exit` prices it, partitioners.exits.throughput_with_inner_exits, and measured); then the DDNN
model's aggregation schemes and its accuracy with 1..N end devices missing.
Options: --frames N, --thresholds T,T,..., --models a,b, --devices rpi3:4, --ddnn all|none
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.table import Table

from cluster.commands.emulate import run_emulated
from cluster.commands.exits import (held_out_outputs, missing_devices_rows, missing_devices_table, scheme_name, scheme_rows,
                                    schemes_table)
from cluster.emulated_plans import plan_for_devices
from cluster.output import console, human_bytes
from layers import load_model
from layers.trained import held_out, trained_names
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices
from partitioners.exits import (bytes_per_frame, calibrate, exit_split_plan, reach_from_fractions, resolve_exits,
                                throughput_with_inner_exits)
from partitioners.profiles import Calibration

DEVICES, LINK = "rpi3:4", 94e6


def exit_sweep(model: str, frames: int, thresholds: list[float], devices: str = DEVICES) -> None:
    """One model's table: no exits, then each T (the exit-aware plan, and the dp plan with the exits taken inside it)."""
    graph = load_model(model)
    outputs, labels, data = held_out_outputs(model, graph, None)
    feeds, _ = held_out(model)
    cost_model = CostModel(graph, make_cluster(parse_devices(devices), LINK), Calibration("numpy"))
    where = "4 emulated Pi 3B+" if devices == "rpi3:4" else f"emulated {devices}"
    with tempfile.TemporaryDirectory(prefix="bench-exits-") as tmpdir:
        tmp = Path(tmpdir)
        np.save(tmp / "x.npy", feeds["input"][:frames])
        plain = plan_for_devices(graph, model, devices, LINK, "dp", "throughput", "numpy")
        base = run_emulated(plain.save(tmp / "plain.json"), plain.n_ranks, frames, tmp / "plain-report.json", "numpy",
                            progress=False, extra=["--input", tmp / "x.npy"])
        table = Table(title=f"{model}: early exits on {where} at 94 Mbit/s ({frames} held-out frames; "
                            f"accuracy on all {len(labels)} held-out)")
        names = graph.outputs[:-1]
        for col in ["T", *[f"{n} %" for n in names], "final %", "accuracy", "bytes/frame", "exit plan: cut, devices", "predicted fps",
                    "measured fps", "vs no exits", "dp plan + exits predicted", "measured", "vs no exits "]:
            table.add_column(col, justify="right")
        acc_plain = float((outputs[graph.outputs[-1]].argmax(-1) == labels).mean())
        table.add_row("no exits", *["-"] * len(names), "100.0", f"{acc_plain:.2%}", "-", f"dp {len(plain.stages)} stage(s)",
                      f"{plain.predicted_throughput_fps:.1f}", f"{base['throughput_fps']:.1f}", "1.00x", "-", "-", "-")
        report = None
        for t in thresholds:
            points = resolve_exits(graph, {n: t for n in names})
            cal = calibrate(graph, outputs, labels, points)
            fractions = [e["exit_fraction"] for e in cal["exits"]]
            plan = exit_split_plan(graph, cost_model, points, fractions, model, "numpy")
            reach = reach_from_fractions(plan.stages, points, fractions)
            exit_args = [a for n in names for a in ("--exit", f"{n}={t}")]
            report = run_emulated(plan.save(tmp / "exits.json"), plan.n_ranks, frames, tmp / "exits-report.json", "numpy",
                                  progress=False, extra=["--input", tmp / "x.npy", *exit_args])
            # the planner's own plan (no exit-aware cut), the exits taken inside its stages
            same = run_emulated(tmp / "plain.json", plain.n_ranks, frames, tmp / "plain-exits-report.json", "numpy",
                                progress=False, extra=["--input", tmp / "x.npy", *exit_args])
            if not (base["every_frame_once"] and report["every_frame_once"] and same["every_frame_once"]):
                sys.exit(f"bench_exits: {model} at T={t:g}: frames lost or duplicated")
            shares = [e["exit_fraction"] for e in cal["exits"]] + [cal["final"]["exit_fraction"]]
            table.add_row(f"{t:g}", *[f"{100 * s:.1f}" for s in shares], f"{cal['accuracy']:.2%}",
                          human_bytes(bytes_per_frame(plan, reach)),
                          next(p.name for p in points if p.node + 1 == plan.stages[0].node_stop) + " "
                          + "/".join(str(len(s.ranks)) for s in plan.stages),
                          f"{plan.predicted_throughput_fps:.1f}", f"{report['throughput_fps']:.1f}",
                          f"{report['throughput_fps'] / base['throughput_fps']:.2f}x",
                          f"{throughput_with_inner_exits(cost_model, plain, points, fractions):.1f}", f"{same['throughput_fps']:.1f}",
                          f"{same['throughput_fps'] / base['throughput_fps']:.2f}x")
        console.print(table)
        if report is not None:
            console.print(f"run answers per exit (last T): {report['exits']}")


def ddnn_tables() -> None:
    """DDNN: the aggregation schemes, and accuracy with end devices missing (one process, held-out split)."""
    T = 0.8
    for t in (0.8, 0.05):  # DDNN's T, and the T where about 60% of frames exit locally here
        console.print(schemes_table(t, scheme_rows(t)))
    for model in ("ddnn_mnist",):
        console.print(missing_devices_table(model, T, missing_devices_rows(load_model(model), model, T)))
    # every scheme: accuracy as end devices drop out (mean over which devices), at T=0.05
    t = 0.05
    table = Table(title=f"DDNN schemes: held-out accuracy (final exit / overall at T={t:g}) with 0..3 of 4 end devices missing")
    table.add_column("scheme")
    for k in range(4):
        table.add_column(f"{k} missing", justify="right")
    rows = []
    for model in [m for m in trained_names() if m.startswith("ddnn_mnist")]:
        by_k = missing_devices_rows(load_model(model), model, t)
        rows.append((scheme_name(model), [f"{r['final_accuracy']:.1%} / {r['overall_accuracy']:.1%}" for r in by_k]))
    order = {"MP": 0, "AP": 1, "CC": 2}
    for name, cells in sorted(rows, key=lambda r: tuple(order[p] for p in r[0].split("-"))):
        table.add_row(name, *cells)
    console.print(table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_exits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--thresholds", default="0,0.05,0.3")
    parser.add_argument("--models", default="branchy_lenet_mnist,branchy_alexnet_mnist")
    parser.add_argument("--devices", default=DEVICES, help="the emulated cluster of the sweeps (default rpi3:4)")
    parser.add_argument("--ddnn", choices=("all", "none"), default="all",
                        help="the DDNN tables after the sweeps (all, the default) or not (none)")
    args = parser.parse_args(argv)
    try:
        thresholds = [float(v) for v in args.thresholds.split(",")]
    except ValueError:
        parser.error(f"--thresholds {args.thresholds!r}: numbers separated by commas (0,0.05,0.3)")
    for model in filter(None, args.models.split(",")):
        exit_sweep(model, args.frames, thresholds, args.devices)
    if args.ddnn == "all":
        ddnn_tables()
    return 0


if __name__ == "__main__":
    sys.exit(main())
