"""`mpirun -n N pisplit run PLAN.json`: stream frames through a plan's pipeline stages."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
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
from ..report import run_report, write_chrome_trace
from ..runtime import FAULT_MODES, RunOptions, RunResult, parse_fault, run_plan


def register(sub) -> None:
    p = sub.add_parser("run", help="run a plan under mpirun: frames stream through its pipeline stages")
    p.add_argument("plan", metavar="PLAN.json", help="a plan written by `pisplit plan --output`, or a configuration map "
                   "(`pisplit configmap`'s configmap.json): its plans, switched between frames as the measured bandwidth says")
    p.add_argument("--frames", type=int, default=16, help="frames to run (default 16)")
    p.add_argument("--input", metavar="X.npy", help="input frames (F, *input shape) or one frame, used round-robin; default: seeded random frames")
    p.add_argument("--seed", type=int, default=0, help="seed of the random frames (default 0)")
    p.add_argument("--output", metavar="Y.npz", help="write every frame's outputs, in frame order, with the frame ids as they arrived")
    p.add_argument("--trace", metavar="T.json", help="write a Chrome Trace Event file (one track per rank; opens in Perfetto)")
    p.add_argument("--engine", choices=ENGINES, help="engine of every rank's shard (default: the plan's)")
    p.add_argument("--emulate", action="store_true", help="emulate the plan's devices and links: pad compute by the device's "
                   "calibrated slowdown and pace transfers to the plan's link (what `pisplit emulate` runs)")
    p.add_argument("--emulate-compute", action="store_true", help="emulate the plan's devices' compute as --emulate does, "
                   "but leave transfers unpaced: the links are real (the emulated cluster's tc-shaped links, scripts/cluster_up)")
    p.add_argument("--host-speed", type=float, metavar="S", help="with --emulate: this machine's seconds over the reference "
                   "profile's for the same work (default: as `pisplit emulate` measured and cached it for the model, else 1)")
    p.add_argument("--window", type=int, default=2, help="receives posted ahead and sends outstanding per rank (default 2, what plans count memory for)")
    p.add_argument("--max-in-flight", type=int, help="frames admitted at once (default: pipeline depth + 2 per stage)")
    p.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                   help="a wait with no progress for this long probes the rank it waits for and, if that rank does not answer, "
                        "names it and aborts the job (default: max(10 s, 20 predicted periods, 3 predicted latencies); 0: never)")
    p.add_argument("--fail", metavar="RANK@FRAME[:MODE]", action="append", default=[],
                   help=f"fault injection for tests and demos: rank RANK fails when it reaches frame FRAME, MODE one of "
                        f"{', '.join(FAULT_MODES)} (default error: an error that rank meets alone; stop: SIGSTOP, a hung device; "
                        "kill: SIGKILL, a lost device; slow or slowN: from that frame it computes N times slower, default 10, see --on-slow); FRAME may be 'load', 'start' or 'end' (before the setup agreement / the start "
                        "barrier / the final gather). With --resilient: repeatable, the k-th for the k-th attempt (its plan's ranks; FRAME a frame of the stream)")
    p.add_argument("--on-slow", choices=("warn", "fail"), default="warn",
                   help="a rank falling behind (its compute at least 2x slower than its own first frames, until it is a stall bound "
                        "behind): warn names it once and the run goes on (default); fail ends the run as that rank's error "
                        "(--resilient attempts use fail: the supervisor replans without it)")
    p.add_argument("--resilient", action="store_true",
                   help="run WITHOUT mpirun: pisplit starts mpirun itself on this machine and, when a rank dies or stalls, replans "
                        "on the surviving devices and reruns only the frames without a result (each frame exactly once, in order); "
                        "the report lists each failure, the time lost and the new plan")
    p.add_argument("--frame-ids", metavar="IDS.npy", help=argparse.SUPPRESS)  # a resilient retry: frame i is the stream's IDS[i]
    p.add_argument("--journal", metavar="PATH", help=argparse.SUPPRESS)  # ... rank 0 appends each result there (cluster.supervisor)
    p.add_argument("--warm-up-budget", type=float, default=3.0, help=argparse.SUPPRESS)  # ... and warms up for at most this (0: one pass, negative: none)
    p.add_argument("--exit", action="append", metavar="NAME=T", default=[],
                   help="early exit: output NAME answers a frame when its normalised entropy is at most T (0-1); "
                        "overrides the plan's threshold for NAME or adds the exit (repeatable; cluster.exits)")
    p.add_argument("--bandwidth-trace", metavar="TRACE.csv", help="with --emulate: the emulated links' bandwidth follows this "
                   "trace (time_s,mbit_per_s rows, or a public 4G/LTE log of van der Hooft et al.; cluster.bandwidth) from the first frame on")
    p.add_argument("--link", metavar="BW", help="with --emulate: pace the links at BW (e.g. 2mbit) instead of the plan's bandwidth")
    p.add_argument("--frame-interval", metavar="MS", type=float, default=0.0,
                   help="frames come every MS milliseconds (a camera) instead of as fast as the pipeline takes them")
    p.add_argument("--switch-every", type=int, default=1, metavar="K",
                   help="a configuration map run decides its plan after at least K frames (default 1), and no more often than "
                   "every --min-segment of frames")
    p.add_argument("--min-segment", type=float, default=None, metavar="MS",
                   help="a configuration map run decides its plan at most once per MS milliseconds of frames (at the frame "
                   "interval, or the pace measured; default 250; 0: every K frames); only a switch drains the pipeline")
    p.add_argument("--map-devices", metavar="KIND:N,...", help="a configuration map run uses the map's entries of this device set "
                   "(a map made with --availability: e.g. rpi3:1 when the host is gone; default: the map's first)")
    p.add_argument("--switch-at", action="append", default=[], metavar="FRAME:PLAN",
                   help="a configuration map run switches to its plan PLAN (an index of the report's plans) at FRAME, "
                        "whatever the bandwidth says (repeatable; for tests and demos)")
    p.add_argument("--down-margin", type=float, metavar="F",
                   help="a configuration map run drops to a lower bandwidth state once the measured bandwidth is a fraction F below "
                   "the state's (0 <= F < 1; default 0.1: a state's plan is priced at that bandwidth; rises keep the detector's 0.25)")
    p.add_argument("--drain-every-boundary", action="store_true", help=argparse.SUPPRESS)  # benchmarks: kept plans drain too (before issue 16's change)
    p.add_argument("--report", metavar="R.json", help="also write the report document to this file")
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON (rank 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    if _is_configmap(args.plan):
        if args.resilient or args.fail or args.exit or args.frame_ids or args.journal or args.trace:
            raise PisplitError("a configuration map run: not with --resilient, --fail, --exit, --trace or --frame-ids")
        return transport.on_every_rank(lambda comm, rank: _run_map(args, comm, rank), args.debug)
    if args.map_devices or args.down_margin is not None:
        raise PisplitError(f"{'--map-devices' if args.map_devices else '--down-margin'}: only for a configuration map (PLAN.json is a plan)")
    if args.resilient:
        from .resilient import run_resilient

        if args.emulate_compute:
            raise PisplitError("--emulate-compute: not with --resilient (it runs its ranks on this machine: --emulate paces their links too)")
        return run_resilient(args)
    return transport.on_every_rank(lambda comm, rank: _run(args, comm, rank), args.debug)


def _run(args, comm, rank: int) -> int:
    error = None
    frame_ids = None
    plan = inputs = fail = exits = None
    link: dict = {}
    try:
        plan = Plan.load(args.plan)
        if args.emulate and args.emulate_compute:
            raise PisplitError("--emulate and --emulate-compute: give one (--emulate paces the links too)")
        if args.host_speed is not None and not args.host_speed > 0:
            raise PisplitError(f"--host-speed {args.host_speed}: must be a positive number")
        if args.stall_timeout is not None and not args.stall_timeout >= 0:
            raise PisplitError(f"--stall-timeout {args.stall_timeout}: must be a number of seconds >= 0 (0: never)")
        if len(args.fail) > 1:
            raise PisplitError(f"--fail given {len(args.fail)} times: more than one fault is for --resilient runs (one per attempt)")
        fail = parse_fault(args.fail[0] if args.fail else None)
        frame_ids = _frame_ids(args) if rank == 0 else None
        exits = _exit_overrides(args)
        link = _link_options(args)
        if rank == 0 and args.input:
            inputs = load_npy(args.input)
    except PisplitError as exc:
        error = str(exc)
    agree_options(comm, error, args.stall_timeout, plan)
    timeline = {"process_start": process_start_time(), "options": time.time()} if rank == 0 else {}
    engine = args.engine or plan.engine
    options = RunOptions(frames=args.frames, inputs=inputs, input_seed=args.seed, keep_outputs=bool(args.output), engine=engine,
                         emulate=args.emulate or args.emulate_compute, emulate_links=not args.emulate_compute,
                         window=args.window, max_in_flight=args.max_in_flight,
                         host_speed=_host_speed(args, plan, engine, comm, rank) if args.emulate or args.emulate_compute else None,
                         stall_timeout=args.stall_timeout, keep_events=bool(args.trace), fail=fail, exits=exits, **link, on_slow=args.on_slow,
                         warm_up_budget_s=float(args.warm_up_budget))
    if rank == 0:
        options.on_failure = lambda partial, exc: keep_partial(args, partial)
        options.frame_ids = frame_ids
        if args.journal:
            options.on_started = timeline.update  # the set-up's timeline, in the journal's header
            options.on_result = _journal_writer(args.journal, timeline)
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
    doc = run_report(plan, result, engine, args.emulate or args.emulate_compute)
    doc["links_paced"] = bool(args.emulate)  # --emulate-compute: compute dilated, the real links carry the time
    if args.output:
        doc["output_file"] = str(write_outputs(Path(args.output), result))
    else:
        doc["argmax"] = result.argmax.tolist()
    if args.trace:
        from ..runtime import default_max_in_flight  # the trace's predicted schedule admits frames as this run did
        write_chrome_trace(args.trace, plan, result, args.max_in_flight or default_max_in_flight(plan, args.window))
        doc["trace_file"] = args.trace
    return emit_report(args, doc, print_report)


def agree_options(comm, error: str | None, stall_timeout: float | None, plan: Plan | None) -> None:
    """Collective: the ranks' agreement on their options (every rank's error or none, as runtime.agree)
    with no wait unbounded: a rank that never arrives (stopped or hung while starting) is named by rank
    0 after three stall bounds ("rank 2 (host pi-2) did not reach the options' agreement for 30.0 s
    (stalled or lost)", ranks start and import at different paces) and the job ends. The bound is
    --stall-timeout's (0: none), else the plan's default, else the smallest default (the plan did not load)."""
    from ..runtime import DEFAULT_MIN_STALL_S, default_stall_timeout, stall_margin

    if stall_timeout is not None and stall_timeout >= 0:
        bound = float(stall_timeout)
    else:
        bound = default_stall_timeout(plan) if plan is not None else DEFAULT_MIN_STALL_S
    seconds = 3.0 * bound
    transport.agree_watched(comm, error, "the options' agreement", seconds, follow_s=stall_margin(seconds))


def emit_report(args, doc: dict, print_table) -> int:
    """The end of a run on rank 0: the report to --report, JSON or `print_table(doc)` on stdout, and
    exit status 1 when a frame was lost or duplicated (run, map runs and resilient runs alike)."""
    if getattr(args, "report", None):
        Path(args.report).write_text(json.dumps(doc, indent=1))
    if args.json:
        print_json(doc)
    else:
        print_table(doc)
    if not doc["every_frame_once"]:
        err_console.print("[red]frames were lost or duplicated[/]")
        return 1
    return 0


def _frame_ids(args) -> np.ndarray | None:
    """--frame-ids: the stream's frame of each of this run's frames (a resilient retry), checked."""
    if not args.frame_ids:
        return None
    ids = load_npy(args.frame_ids)
    if ids.ndim != 1 or ids.size != args.frames or not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < 0):
        raise PisplitError(f"--frame-ids {args.frame_ids}: expected {args.frames} frame ids >= 0, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)


def _journal_writer(path: str, timeline: dict | None = None):
    """Rank 0's on_result for --journal: the journal is opened at the first result (its tensors'
    shapes), its header carrying `timeline` (the run's set-up times, filled in by then)."""
    from ..supervisor import ResultJournal

    journal = None

    def write(frame: int, tensors: dict) -> None:
        nonlocal journal
        if journal is None:
            journal = ResultJournal(path, list(tensors), [np.shape(a) for a in tensors.values()], timeline=timeline)
        journal.append(frame, tensors)
    return write


def process_start_time() -> float | None:
    """When this process started, as a time.time() (from /proc: Linux); None when unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def write_outputs(out: Path, result: RunResult) -> Path:
    """The .npz of a run: `output_i` (rows by frame), `names`, `frame_ids` (in arrival order). A
    partial result also has `partial` (True), `output_frame_ids` (the frame of each row) and
    `missing_frame_ids`. Written to a temporary name and renamed, so a run aborted while writing
    leaves no half file."""
    arrays = {f"output_{i}": a for i, a in enumerate(result.outputs.values())}
    extra = {}
    if result.exit_index is not None:
        # per frame, which exit answered it (an index into exit_names); outputs it never computed are NaN
        extra.update(exit_index=result.exit_index, exit_names=np.array(list(result.exit_names)))
    if result.partial:
        extra = {"partial": np.array(True), "output_frame_ids": result.output_frame_ids, "missing_frame_ids": result.missing_frame_ids}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, frame_ids=result.frame_ids, names=np.array(list(result.outputs)), **arrays, **extra)
    os.replace(tmp, out)
    return out


def _exit_overrides(args) -> dict | None:
    """--exit NAME=T options as {name: T} (None when there are none)."""
    from partitioners.exits import parse_exit_overrides

    return parse_exit_overrides(getattr(args, "exit", None)) or None


def frame_ranges(ids) -> str:
    """[3, 4, 5, 9, 11, 12] -> '3-5, 9, 11-12'."""
    ids = [int(i) for i in ids]
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ", ".join(parts)


def keep_partial(args, result: RunResult) -> None:
    """Rank 0 of a run that failed: write the results it has to --output, marked partial, and say on
    stderr which frames are missing (the error line itself is printed by transport.on_every_rank)."""
    missing = result.missing_frame_ids
    done = result.frames_total - missing.size
    if args.output and result.outputs is not None:
        where = f"written to {write_outputs(Path(args.output), result)}"
    else:
        where = "done (no --output to write them to)"
    print(f"pisplit: partial: {done} of {result.frames_total} frames {where}; missing frames {frame_ranges(missing) or 'none'}",
          file=sys.stderr, flush=True)


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
    for s in doc["stages"]:
        if s.get("segments"):
            console.print(segment_table(s))
    lat = doc["latency_ms"]
    predicted = f" (predicted {doc['predicted_fps']:.2f})" if doc["predicted_fps"] else ""
    console.print(f"throughput [bold]{doc['throughput_fps']:.2f} frames/s[/]{predicted}, "
                  f"latency p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms")
    for r in doc["ranks"]:
        pred = f" (predicted {human_bytes(r['memory_predicted_bytes'])})" if r["memory_predicted_bytes"] else ""
        late = f", emulation behind by {r['emulation_late_s']:.2f} s" if r["emulation_late_s"] > 0.05 else ""
        console.print(f"rank {r['rank']} ({r['kind']}): memory {human_bytes(r['memory_above_baseline_bytes'])} above a "
                      f"{human_bytes(r['memory_baseline_bytes'])} baseline{pred}{late}")
    if doc.get("exits"):
        console.print("answered at " + ", ".join(f"{name} {n} ({n / max(doc['frames'], 1):.0%})" for name, n in doc["exits"].items()))
    for key in ("output_file", "trace_file"):
        if key in doc:
            console.print(f"wrote {doc[key]}")


def segment_table(stage: dict) -> Table:
    """A split stage's segments as its lead measured them per frame, beside the plan's prediction
    (report.run_report's "segments"): which transfer or compute makes a latency plan slow."""
    table = Table(title=f"stage {stage['index']}: segments on its lead, per frame")
    for col in ["segment", "ranks", "compute ms", "pred.", "transfer ms", "pred."]:
        table.add_column(col, justify="left" if col == "segment" else "right")
    for g in stage["segments"]:
        table.add_row(g["name"], str(g["ranks"]), _ms(g["compute_ms"]), _ms(g["predicted_compute_ms"]),
                      _ms(g["transfer_ms"]), _ms(g["predicted_transfer_ms"]))
    return table


def _host_speed(args, plan, engine: str, comm, rank: int) -> float:
    """Collective: the machine speed emulated ranks dilate by (--host-speed, else rank 0's cached
    measurement for the plan's model, else 1)."""
    from ..host_speed import host_speed

    if args.host_speed is not None:
        return float(args.host_speed)
    from ..runtime import default_stall_timeout, stall_margin
    from ..watched import bcast_text_watched

    speed = (host_speed(plan.model, plan.model_seed, engine, measure=False) or 1.0) if rank == 0 else 0.0
    bound = default_stall_timeout(plan) if args.stall_timeout is None else float(args.stall_timeout)
    return float(bcast_text_watched(comm, repr(speed), "the host speed's broadcast", bound, follow_s=stall_margin(bound)))


# --- issue 16: a configuration map's plans, switched between frames (cluster.switching) -----------------
def _is_configmap(path: str) -> bool:
    """Whether PLAN.json is a configuration map (its "format"); anything unreadable is left to Plan.load's message."""
    from partitioners.edgent import CONFIGMAP_FORMAT

    try:
        with open(path) as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return f'"format": "{CONFIGMAP_FORMAT}"' in head


def _link_options(args) -> dict:
    """RunOptions for --bandwidth-trace, --link and --frame-interval (checked)."""
    from ..bandwidth import load_trace
    from ..emulation import parse_link

    if (args.bandwidth_trace or args.link) and not args.emulate:
        raise PisplitError("--bandwidth-trace and --link pace emulated links: give --emulate too")
    if not args.frame_interval >= 0:
        raise PisplitError(f"--frame-interval {args.frame_interval}: must be a number of milliseconds >= 0")
    return {"bandwidth_trace": load_trace(args.bandwidth_trace) if args.bandwidth_trace else None,
            "link_bps": parse_link(args.link) if args.link else None, "frame_interval_s": args.frame_interval / 1e3}


def parse_switch_at(items, n_plans: int) -> dict:
    """['40:1', ...] (--switch-at FRAME:PLAN) -> {40: 1}."""
    out = {}
    for item in items or ():
        frame, sep, plan = str(item).partition(":")
        try:
            f, i = int(frame), int(plan)
        except ValueError:
            sep = ""
        if not sep or f < 0 or not 0 <= i < n_plans:
            raise PisplitError(f"--switch-at {item}: expected FRAME:PLAN with PLAN one of the map's plans 0..{n_plans - 1}")
        out[f] = i
    return out


def parse_down_margin(value: float | None) -> float:
    """--down-margin F (None: cluster.bandwidth.MAP_DOWN_MARGIN), checked: a fraction in [0, 1)."""
    from ..bandwidth import MAP_DOWN_MARGIN

    if value is None:
        return MAP_DOWN_MARGIN
    if not 0 <= value < 1:
        raise PisplitError(f"--down-margin {value:g}: must be a fraction in [0, 1) (0.1: drop 10% below a state's bandwidth)")
    return float(value)


def _run_map(args, comm, rank: int) -> int:
    from dataclasses import replace as dc_replace

    from layers import load_model
    from partitioners.edgent import ConfigMap

    from ..bandwidth import MapChooser, map_plans
    from ..switching import run_switching

    error = None
    plans, chooser, forced, options, graphs, cmap, strategies = [], None, {}, None, [], None, []
    try:
        down_margin = parse_down_margin(args.down_margin)
        cmap = ConfigMap.load(args.plan)
        strategies = map_plans(cmap, Path(args.plan).parent, args.map_devices)
        for key, entry, plan_path, graph_path in strategies:
            plans.append(dc_replace(Plan.load(plan_path), model=str(graph_path)))
            graphs.append(str(graph_path))
        forced = parse_switch_at(args.switch_at, len(plans))
        if args.host_speed is not None and not args.host_speed > 0:
            raise PisplitError(f"--host-speed {args.host_speed}: must be a positive number")
        if args.emulate_compute:
            raise PisplitError("--emulate-compute: a configuration map run paces its links (--emulate) or runs on real ones")
        link = _link_options(args)
        if args.emulate and link["bandwidth_trace"] is None and link["link_bps"] is None:
            raise PisplitError("a configuration map run with --emulate needs the link's bandwidth: --bandwidth-trace TRACE.csv or --link BW")
        inputs = load_npy(args.input) if rank == 0 and args.input else None
        first_bps = (link["bandwidth_trace"].bps_at(0.0) if link["bandwidth_trace"] is not None else link["link_bps"])
        if rank == 0:  # a real link's small sends complete when copied out (MPI sends them eagerly): not samples
            chooser = MapChooser(cmap, [k for k, *_ in strategies], args.map_devices, initial_bps=first_bps, min_bytes=1024 if args.emulate else 65536,
                                 detector_options={"down_margin": down_margin})
        engine = args.engine or plans[0].engine
        options = RunOptions(frames=args.frames, inputs=inputs, input_seed=args.seed, keep_outputs=bool(args.output), engine=engine,
                             emulate=args.emulate, window=args.window, max_in_flight=args.max_in_flight,
                             stall_timeout=args.stall_timeout, **link)
    except PisplitError as exc:
        error = str(exc)
    agree_options(comm, error, args.stall_timeout, plans[0] if plans else None)
    if args.emulate:
        from ..bandwidth import speed_model

        options.host_speed = _host_speed(args, dc_replace(plans[0], model=speed_model(cmap, graphs[0])), options.engine, comm, rank)

    def load(i: int):
        graph = load_model(graphs[i])
        if len(graph) != plans[i].n_nodes:
            raise PisplitError(f"configmap {args.plan}: {graphs[i]} has {len(graph)} nodes, its plan {plans[i].n_nodes}")
        return graph

    progress = None
    if rank == 0 and not args.json and not args.no_progress:
        progress = Progress(TextColumn(f"[bold]{cmap.model}[/] switching among {len(plans)} plans"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("frames"), TimeElapsedColumn(), console=console)
        task = progress.add_task("frames", total=args.frames)
        options.on_start = progress.start
        options.progress = lambda done, total: progress.update(task, completed=done)
    try:
        ratios = None
        if args.emulate and rank == 0:  # each plan dilated by this machine's speed on its own exit branch (cached)
            from ..bandwidth import plan_speed_ratios

            ratios = plan_speed_ratios(cmap, Path(args.plan).parent, options.engine, comm.Get_size(), plans[0].model_seed,
                                       args.map_devices)
        result = run_switching(comm, plans, load, options, chooser, chooser.index if chooser else 0, args.switch_every, forced,
                               speed_ratios=ratios, min_segment_s=None if args.min_segment is None else args.min_segment / 1e3,
                               drain_always=args.drain_every_boundary)
    finally:
        if progress is not None:
            progress.stop()
    if rank != 0:
        return 0
    doc = map_report(args, cmap, strategies, plans, result)
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, frame_ids=result.frame_ids, plan_of_frame=result.plan_of_frame, names=np.array(list(result.outputs)),
                 **{f"output_{i}": a for i, a in enumerate(result.outputs.values())})
        os.replace(tmp, out)
        doc["output_file"] = str(out)
    return emit_report(args, doc, print_map_report)


def map_report(args, cmap, strategies, plans, result) -> dict:
    """The report of a configuration map run: which plan answered each frame, each switch, latencies."""
    from ..report import percentiles_ms, steady_throughput

    req = cmap.latency_req_s
    rows = []
    for i, ((exit_, cut, codec), entry, plan_path, _) in enumerate(strategies):
        mine = result.plan_of_frame == i
        lat = result.latency_s[mine]
        rows.append({"index": i, "exit": exit_, "cut": cut, "n_nodes": entry.n_nodes, "codec": codec, "plan": str(plan_path),
                     "ranks": plans[i].n_ranks, "accuracy": entry.accuracy, "frames": int(mine.sum()),
                     "latency_ms": percentiles_ms(lat) if lat.size else None,
                     "predicted_latency_ms_at_state": entry.latency_s * 1e3, "state_bps": entry.bandwidth_bps})
    acc = np.array([rows[i]["accuracy"] for i in result.plan_of_frame])
    # with --frame-interval: a frame's latency from its capture (its due time: frame i at i x interval), which also counts
    # the time it waited for the pipeline (behind a drain, a busy first stage); `latency_ms` starts at its first stage
    capture = {}
    if args.frame_interval > 0:
        since = result.done_s - np.arange(result.done_s.size) * args.frame_interval / 1e3
        capture = {"meets_requirement_from_capture": float(np.mean(since <= req)), "latency_from_capture_ms": percentiles_ms(since),
                   "latency_from_capture_of_frame_ms": (since * 1e3).round(3).tolist()}
    return {
        "model": cmap.model, "configmap": str(args.plan), "devices": args.map_devices or cmap.entries[0].devices, "engine": args.engine or plans[0].engine, "emulated": bool(args.emulate),
        "bandwidth_trace": args.bandwidth_trace, "link": args.link, "frame_interval_ms": args.frame_interval,
        "switch_every": args.switch_every, "down_margin": parse_down_margin(args.down_margin), "frames": int(result.frame_ids.size), "every_frame_once": result.every_frame_once,
        "latency_req_ms": req * 1e3, "meets_requirement": float(np.mean(result.latency_s <= req)),
        "mean_accuracy": float(acc.mean()) if acc.size else None,
        "throughput_fps": steady_throughput(result.done_s), "wall_s": result.wall_s,
        "latency_ms": percentiles_ms(result.latency_s), "segments": result.segments, "drains": result.drains, "emulation_late_s": result.late_s,
        "emulation_late_s_by_rank": result.late_by_rank_s,
        "plans": rows, "switches": result.switches, "plan_of_frame": result.plan_of_frame.tolist(),
        "latency_of_frame_ms": (result.latency_s * 1e3).round(3).tolist(), "done_s": result.done_s.round(4).tolist(),
        "argmax": result.argmax.tolist(), **capture,
        "estimates": [[round(t, 4), b] for t, b in result.estimates], "transfers": int(result.transfers.shape[0]),
    }


def print_map_report(doc: dict) -> None:
    """Rank 0's human report of a configuration map run."""
    table = Table(title=f"{doc['model']}: {doc['frames']} frames switching among {len(doc['plans'])} plans "
                        f"(requirement {doc['latency_req_ms']:g} ms{', emulated' if doc['emulated'] else ''})")
    for col in ["plan", "exit", "cut", "codec", "ranks", "frames", "p50 ms", "p99 ms", "accuracy"]:
        table.add_column(col, justify="left" if col in ("exit", "codec") else "right")
    for r in doc["plans"]:
        lat = r["latency_ms"] or {}
        table.add_row(str(r["index"]), r["exit"], f"{r['cut']}/{r['n_nodes']}", r["codec"], str(r["ranks"]), str(r["frames"]),
                      _ms(lat.get("p50")), _ms(lat.get("p99")), f"{r['accuracy']:.3f}")
    console.print(table)
    for s in doc["switches"]:
        console.print(f"frame {s['frame']} at {s['time_s']:.2f} s: plan {s['from']} -> {s['to']} ({s['reason']})")
    lat = doc["latency_ms"]
    console.print(f"{len(doc['switches'])} switches at {doc['segments'] - 1} decisions ({doc['drains']} drain{'s' if doc['drains'] != 1 else ''}); "
                  f"{doc['meets_requirement']:.1%} of frames within {doc['latency_req_ms']:g} ms, "
                  f"mean accuracy {doc['mean_accuracy']:.4f}; latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms; "
                  f"{doc['throughput_fps']:.2f} frames/s")
    if "meets_requirement_from_capture" in doc:
        cap = doc["latency_from_capture_ms"]
        console.print(f"from each frame's capture (every {doc['frame_interval_ms']:g} ms): {doc['meets_requirement_from_capture']:.1%} "
                      f"within {doc['latency_req_ms']:g} ms; p50 {cap['p50']:.1f} ms, p99 {cap['p99']:.1f} ms")
    if "output_file" in doc:
        console.print(f"wrote {doc['output_file']}")
