"""`mpirun -n N pisplit run PLAN.json`: stream frames through a plan's pipeline stages."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from layers.engine import ENGINES
from layers.errors import PisplitError
from partitioners.plan import Plan

from .. import transport
from ..arrays import load_npy
from ..output import console, err_console, human_bytes, print_json
from ..report import chrome_trace, run_report
from ..runtime import RunOptions, agree, run_plan


def register(sub) -> None:
    p = sub.add_parser("run", help="run a plan under mpirun: frames stream through its pipeline stages")
    p.add_argument("plan", metavar="PLAN.json", help="a plan written by `pisplit plan --output`")
    p.add_argument("--frames", type=int, default=16, help="frames to run (default 16)")
    p.add_argument("--input", metavar="X.npy", help="input frames (F, *input shape) or one frame, used round-robin; default: seeded random frames")
    p.add_argument("--seed", type=int, default=0, help="seed of the random frames (default 0)")
    p.add_argument("--output", metavar="Y.npz", help="write every frame's outputs, in frame order, with the frame ids as they arrived")
    p.add_argument("--trace", metavar="T.json", help="write a Chrome Trace Event file (one track per rank; opens in Perfetto)")
    p.add_argument("--engine", choices=ENGINES, help="engine of every rank's shard (default: the plan's)")
    p.add_argument("--emulate", action="store_true", help="emulate the plan's devices and links: pad compute by the device's "
                   "calibrated slowdown and pace transfers to the plan's link (what `pisplit emulate` runs)")
    p.add_argument("--host-speed", type=float, metavar="S", help="with --emulate: this machine's seconds over the reference "
                   "profile's for the same work (default: as `pisplit emulate` measured and cached it for the model, else 1)")
    p.add_argument("--window", type=int, default=2, help="receives posted ahead and sends outstanding per rank (default 2, what plans count memory for)")
    p.add_argument("--max-in-flight", type=int, help="frames admitted at once (default: pipeline depth + 2 per stage)")
    p.add_argument("--report", metavar="R.json", help="also write the report document to this file")
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON (rank 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    return transport.on_every_rank(lambda comm, rank: _run(args, comm, rank), args.debug)


def _run(args, comm, rank: int) -> int:
    error = None
    plan = inputs = None
    try:
        plan = Plan.load(args.plan)
        if args.host_speed is not None and not args.host_speed > 0:
            raise PisplitError(f"--host-speed {args.host_speed}: must be a positive number")
        if rank == 0 and args.input:
            inputs = load_npy(args.input)
    except PisplitError as exc:
        error = str(exc)
    agree(comm, error)
    engine = args.engine or plan.engine
    options = RunOptions(frames=args.frames, inputs=inputs, input_seed=args.seed, keep_outputs=bool(args.output), engine=engine,
                         emulate=args.emulate, window=args.window, max_in_flight=args.max_in_flight,
                         host_speed=_host_speed(args, plan, engine, comm, rank) if args.emulate else None)
    progress = None
    if rank == 0 and not args.json and not args.no_progress:
        progress = Progress(TextColumn(f"[bold]{plan.model}[/] on {plan.n_ranks} rank{'s' if plan.n_ranks > 1 else ''}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("frames"), TimeElapsedColumn(), console=console)
        task = progress.add_task("frames", total=args.frames)
        options.on_start = progress.start
        options.progress = lambda done, total: progress.update(task, completed=done)
    try:
        result = run_plan(comm, plan, options)
    finally:
        if progress is not None:
            progress.stop()
    if rank != 0:
        return 0
    doc = run_report(plan, result, engine, args.emulate)
    if args.output:
        out = Path(args.output)
        arrays = {f"output_{i}": a for i, a in enumerate(result.outputs.values())}
        np.savez(out, frame_ids=result.frame_ids, names=np.array(list(result.outputs)), **arrays)
        doc["output_file"] = str(out)
    else:
        doc["argmax"] = result.argmax.tolist()
    if args.trace:
        Path(args.trace).write_text(json.dumps(chrome_trace(plan, result)))
        doc["trace_file"] = args.trace
    if args.report:
        Path(args.report).write_text(json.dumps(doc, indent=1))
    if args.json:
        print_json(doc)
    else:
        print_report(doc)
    if not doc["every_frame_once"]:
        err_console.print("[red]frames were lost or duplicated[/]")
        return 1
    return 0


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def print_report(doc: dict) -> None:
    """Rank 0's human report: per-stage table, throughput, latency, memory."""
    table = Table(title=f"{doc['model']}: {doc['frames']} frames on {doc['ranks_total']} ranks ({doc['engine']}"
                        f"{', emulated devices' if doc['emulated'] else ''})")
    for col in ["stage", "ranks", "mode", "nodes", "compute ms", "pred.", "comm ms", "pred.", "wait ms"]:
        table.add_column(col, justify="left" if col in ("mode", "ranks") else "right")
    for s in doc["stages"]:
        table.add_row(str(s["index"]), ",".join(map(str, s["ranks"])), s["mode"], f"{s['nodes'][0]}-{s['nodes'][1] - 1}",
                      _ms(s["compute_ms"]), _ms(s["predicted_compute_ms"]), _ms(s["comm_ms"]), _ms(s["predicted_comm_ms"]), _ms(s["wait_ms"]))
    console.print(table)
    lat = doc["latency_ms"]
    predicted = f" (predicted {doc['predicted_fps']:.2f})" if doc["predicted_fps"] else ""
    console.print(f"throughput [bold]{doc['throughput_fps']:.2f} frames/s[/]{predicted}, "
                  f"latency p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms")
    for r in doc["ranks"]:
        pred = f" (predicted {human_bytes(r['memory_predicted_bytes'])})" if r["memory_predicted_bytes"] else ""
        late = f", emulation behind by {r['emulation_late_s']:.2f} s" if r["emulation_late_s"] > 0.05 else ""
        console.print(f"rank {r['rank']} ({r['kind']}): memory {human_bytes(r['memory_above_baseline_bytes'])} above a "
                      f"{human_bytes(r['memory_baseline_bytes'])} baseline{pred}{late}")
    for key in ("output_file", "trace_file"):
        if key in doc:
            console.print(f"wrote {doc[key]}")


def _host_speed(args, plan, engine: str, comm, rank: int) -> float:
    """Collective: the machine speed emulated ranks dilate by (--host-speed, else rank 0's cached
    measurement for the plan's model, else 1)."""
    from ..host_speed import host_speed

    if args.host_speed is not None:
        return float(args.host_speed)
    speed = (host_speed(plan.model, plan.model_seed, engine, measure=False) or 1.0) if rank == 0 else 0.0
    return float(transport.bcast_text(comm, repr(speed)))
