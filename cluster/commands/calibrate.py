"""`pisplit calibrate MODEL --data mnist`: measure each early exit's share of held-out frames.

For the exits' thresholds (`--exit NAME=T`, else the plan's, else every exit at DDNN's 0.8) the whole
model runs once on the data set's held-out test split (layers.trained.data; never the training
part); each frame is answered by the first exit whose normalised entropy is at most its threshold
(partitioners.exits). Printed per exit: its share of the frames, the accuracy of its answers and the
frames that go on. `--plan P.json` writes the shares into the plan's exits and rescales its predicted
throughput (a stage behind an exit carries only the frames that pass); `--output` keeps the
calibration as a JSON document beside the plan.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from rich.table import Table

from layers.errors import PisplitError

from ..output import console, print_json

CALIBRATION_FORMAT = "pisplit-exit-calibration"
DEFAULT_THRESHOLD = 0.8  # DDNN's


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="measure each early exit's share of held-out frames for its threshold")
    p.add_argument("model", metavar="MODEL", help="a model with exits, e.g. branchy_alexnet_mnist")
    p.add_argument("--data", choices=("digits", "mnist"), help="data set whose held-out test split is used (default: the model's own)")
    p.add_argument("--exit", action="append", default=[], metavar="NAME=T", help="exit threshold (repeatable; default: the plan's, else 0.8 each)")
    p.add_argument("--plan", metavar="PLAN.json", help="write the measured shares into this plan's exits and rescale its predicted throughput")
    p.add_argument("--output", metavar="CAL.json", help="write the calibration document here")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from layers import load_model
    from partitioners.exits import parse_exit_overrides, resolve_exits
    from partitioners.plan import Plan

    from .exits import held_out_outputs

    graph = load_model(args.model)
    plan = Plan.load(args.plan) if args.plan else None
    if plan is not None and plan.model != args.model:
        raise PisplitError(f"--plan {args.plan}: is a plan for {plan.model}, not {args.model}")
    thresholds = {e.name: e.threshold for e in plan.exits} if plan is not None else {}
    thresholds.update(parse_exit_overrides(args.exit))
    if not thresholds:
        thresholds = {t: DEFAULT_THRESHOLD for t in graph.outputs[:-1]}
    if not thresholds:
        raise PisplitError(f"model {args.model}: has one output, no exit to calibrate")
    points = resolve_exits(graph, thresholds)
    outputs, labels, data = held_out_outputs(args.model, graph, args.data)
    doc = calibration_document(graph, args.model, data, outputs, labels, points)
    if plan is not None:
        plan = plan_with_fractions(plan, graph, points, [e["exit_fraction"] for e in doc["exits"]])
        plan.save(args.plan)
        doc["plan"] = {"file": args.plan, "predicted_throughput_fps": plan.predicted_throughput_fps}
    if args.output:
        Path(args.output).write_text(json.dumps(doc, indent=1))
    if args.json:
        print_json(doc)
        return 0
    table = Table(title=f"{args.model}: exits on {doc['frames']} held-out {data} frames (test split)")
    for col in ("exit", "threshold", "answered", "accuracy of its answers", "go on"):
        table.add_column(col, justify="left" if col == "exit" else "right")
    left = 1.0
    for row in doc["exits"] + [doc["final"]]:
        left -= row["exit_fraction"]
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.1%}"
        t = "-" if row["threshold"] is None else f"{row['threshold']:g}"
        table.add_row(row["name"], t, f"{row['exit_fraction']:.1%}", acc, f"{max(left, 0.0):.1%}")
    console.print(table)
    console.print(f"overall accuracy [bold]{doc['accuracy']:.2%}[/]")
    if plan is not None:
        console.print(f"wrote the exit shares into {args.plan}: predicted {plan.predicted_throughput_fps:.2f} frames/s with exits")
    if args.output:
        console.print(f"wrote {args.output}")
    return 0


def calibration_document(graph, model: str, data: str, outputs: dict, labels, points) -> dict:
    from partitioners.exits import calibrate

    cal = calibrate(graph, outputs, labels, points)
    cal.pop("answered")
    return {"format": CALIBRATION_FORMAT, "version": 1, "model": model, "data": data, "split": "test", **cal}


def plan_with_fractions(plan, graph, points, fractions):
    """`plan` with its exits' measured shares, and its predicted throughput counting them: the plan's
    figure scaled by how much its slowest stage period changes from the shares it recorded before
    (none: every frame to the end) to these (stage_periods)."""
    from partitioners.exits import resolve_exits, scaled_throughput
    from partitioners.plan import Exit

    old = [e for e in plan.exits if e.exit_fraction is not None]
    old_points = resolve_exits(graph, {e.name: e.threshold for e in old}) if old else []
    share = {e.name: e.exit_fraction for e in old}
    before = stage_periods(plan, graph, old_points, [share[p.name] for p in old_points])
    after = stage_periods(plan, graph, points, fractions)
    exits = tuple(Exit(p.name, p.threshold, float(f)) for p, f in zip(points, fractions))
    return replace(plan, exits=exits, predicted_throughput_fps=scaled_throughput(plan.predicted_throughput_fps, before, after)).validate()


def stage_periods(plan, graph, points, fractions):
    """Per stage, seconds per frame with these exits: from the cost model when the plan's devices are
    of one kind (partitioners.exits.stage_periods_with_exits: compute pieces and transfers weighted
    by the frames they apply to), else the plan's predicted stage periods times the share of frames
    that reach each stage."""
    from partitioners.cost import CostModel, make_cluster
    from partitioners.devices import parse_devices
    from partitioners.exits import plan_stage_periods, reach_from_fractions, stage_periods_with_exits
    from partitioners.profiles import Calibration

    kinds = {d.kind for d in plan.devices}
    if len(kinds) == 1:
        try:
            cluster = make_cluster(parse_devices(f"{kinds.pop()}:{plan.n_ranks}"), plan.link_bandwidth_bps, plan.link_latency_s)
            return stage_periods_with_exits(CostModel(graph, cluster, Calibration(plan.engine)), plan.stages, points, fractions)
        except PisplitError:
            pass
    return plan_stage_periods(plan) * reach_from_fractions(plan.stages, points, fractions)
