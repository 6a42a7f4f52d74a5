"""`pisplit emulate MODEL --devices rpi3:4`: plan for emulated Pis and run the plan on this machine.

One mpirun rank per emulated device runs the real pipeline runtime (`pisplit run --emulate`): compute
is dilated to the device's calibrated speed and transfers are paced to the link. A one-device run of
the same model gives the speedup of the emulated cluster over one emulated device.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.table import Table

from layers import load_model
from layers.engine import ENGINES
from layers.errors import PisplitError
from partitioners.plan import Plan
from partitioners.vocabulary import NO_SPLIT

from ..emulation import parse_link
from ..mpirun import local_mpirun_command, mpirun_env, run_local, without_error_boxes
from ..output import console, human_bytes, print_json
from ..emulated_plans import plan_for_devices, single_device_plan
from ..report import late_share


def register(sub) -> None:
    p = sub.add_parser("emulate", help="plan for emulated Pis and run the pipeline on this machine, one rank per device")
    p.add_argument("model", metavar="MODEL", help="zoo name, .tflite file or pisplit .json graph")
    p.add_argument("--devices", required=True, metavar="KIND:N[,KIND:N]", help="emulated devices, e.g. rpi3:4 or rpi3:2,rpi4:2")
    p.add_argument("--link", default="94mbit", help="link bandwidth between devices (default 94mbit, the seed paper's network)")
    p.add_argument("--frames", type=int, default=24, help="frames through the emulated cluster (default 24)")
    p.add_argument("--single-frames", type=int, help="frames through one emulated device, for the speedup (default: about "
                   "5 s of them, 4 to 2000: a fast model's 40 frames lasted 80 ms)")
    p.add_argument("--planner", default="dp", help="planner that makes the plan (default dp)")
    p.add_argument("--objective", choices=("throughput", "latency"), default="throughput")
    p.add_argument("--resilient", action="store_true", help="survive a lost or stalled device: replan on the survivors and "
                   "rerun only the frames without a result, as `pisplit run --resilient` (no one-device baseline)")
    p.add_argument("--fail", action="append", default=[], metavar="RANK@FRAME[:MODE]",
                   help="with --resilient: fault injection, as `pisplit run --fail` (repeatable: one per attempt)")
    p.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                   help="as `pisplit run --stall-timeout`, for the emulated ranks: a wait with no progress this long names the rank "
                        "it waits for and ends the run (default: max(10 s, 20 predicted periods, 3 predicted latencies); 0: never)")
    p.add_argument("--on-slow", choices=("warn", "fail"),
                   help="as `pisplit run --on-slow`: a rank falling behind is named once and the run goes on (warn, the default) "
                        "or the run ends as that rank's error (fail)")
    p.add_argument("--engine", choices=[e for e in ENGINES if e != "auto"], default="numpy", help="engine of every rank (default numpy)")
    p.add_argument("--plan-output", metavar="PLAN.json", help="also keep the plan here")
    p.add_argument("--trace", metavar="T.json", help="Chrome Trace Event file of the cluster run")
    p.add_argument("--exit", action="append", default=[], metavar="NAME=T",
                   help="early exit in the cluster run (repeatable, as pisplit run --exit); the one-device baseline runs without exits")
    p.add_argument("--input", metavar="X.npy", help="input frames of both runs (default: seeded random frames)")
    p.add_argument("--codecs", dest="codec_table", metavar="T.json", help="a codec table of MODEL (pisplit codecs MODEL --save T.json): "
                   "the planner chooses a codec per cut and the emulated links carry it (lossless; lossy only within "
                   "--max-accuracy-loss / --max-rel-error)")
    p.add_argument("--max-accuracy-loss", metavar="P", help="with --codecs: lossy codecs losing at most P top-1 accuracy (e.g. 1%%)")
    p.add_argument("--max-rel-error", metavar="E", type=float, help="with --codecs: lossy codecs within E x max|x| of each cut tensor")
    p.add_argument("--recalibrate", action="store_true", help="measure this machine's speed again now instead of using "
                   "a measurement of the last hour (cluster.host_speed)")
    p.add_argument("--bandwidth-trace", metavar="TRACE.csv", help="the emulated links' bandwidth follows this trace (time_s,mbit_per_s "
                   "rows, e.g. cluster/traces/lte_a.csv, or a public 4G/LTE log) from the first frame on (issue 16)")
    p.add_argument("--latency-req", metavar="MS", help="Edgent (issue 16): build the configuration map for this latency requirement "
                   "(states from --states, else the trace's levels) and run its plans, switching between frames as the "
                   "bandwidth measured from the run's own transfers says")
    p.add_argument("--states", metavar="LIST", help="with --latency-req: the map's bandwidth states, e.g. 0.25,0.5,1,2,4,8mbit")
    p.add_argument("--configmap", metavar="MAP.json", help="run this configuration map's plans, switching between frames (issue 16)")
    p.add_argument("--frame-interval", metavar="MS", type=float, default=0.0, help="frames come every MS milliseconds (a camera)")
    p.add_argument("--json", action="store_true", help="print {throughput_fps, predicted_fps, latency_ms, speedup_vs_single, ...}")
    p.add_argument("--chart", metavar="FILE", help="draw the run into FILE (.svg, .png or .html): measured against predicted "
                   "per stage, throughput over time, memory (needs pip install 'pisplit[charts]')")
    p.set_defaults(func=run)


def run_emulated(plan_path: Path, n_ranks: int, frames: int, report_path: Path, engine: str, progress: bool,
                 trace: str | None = None, timeout: float | None = None, max_in_flight: int | None = None,
                 extra: list | None = None, recalibrate: bool = False) -> dict:
    """Run `pisplit run --emulate` under mpirun with one rank per device; returns rank 0's report.
    `max_in_flight=1` sends frames one at a time (single-frame latency)."""
    from ..host_speed import host_speed

    plan = _speed_plan(plan_path)
    # measured once per machine and model, then cached; with as many copies at once as ranks share the cores
    from ..host_speed import emulation_pace

    # one emulated device: its passes timed as it runs them, each after its padding's idle time (host_speed pace)
    speed = host_speed(plan.model, plan.model_seed, engine, concurrency=n_ranks, refresh=recalibrate, pace=emulation_pace(plan, engine))
    from .run import _is_configmap

    if _is_configmap(str(plan_path)):  # a configuration map: each exit branch's speed too (issue 16)
        from partitioners.edgent import ConfigMap

        from ..bandwidth import plan_speed_ratios

        plan_speed_ratios(ConfigMap.load(plan_path), Path(plan_path).parent, engine, n_ranks, plan.model_seed, measure=True)
    else:  # int8 stages: this machine's speed on each stage's own nodes, read by the ranks (cluster.host_speed.stage_speeds)
        from ..host_speed import stage_speeds

        stage_speeds(plan, engine, concurrency=n_ranks, refresh=recalibrate)
    warn_faster_than_host(plan_path, engine, speed)
    argv = [sys.executable, "-m", "cluster.cli", "run", str(plan_path), "--emulate", "--frames", str(frames),
            "--engine", engine, "--report", str(report_path), "--host-speed", repr(speed)]
    argv += [] if progress else ["--no-progress"]
    argv += ["--trace", trace] if trace else []
    argv += ["--max-in-flight", str(max_in_flight)] if max_in_flight else []
    argv += [str(a) for a in extra or ()]  # more `pisplit run` options (--exit NAME=T, --input X.npy)
    env = mpirun_env()
    # one BLAS thread per emulated device: the ranks share this machine's cores, and dilation scales CPU time
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    env.setdefault("COLUMNS", str(console.width))  # the ranks' pty has no size: tables would shrink to 80 columns
    if not sys.stdout.isatty():
        env.update(TERM="dumb", NO_COLOR="1")  # mpirun gives ranks a pty; keep escape codes out of pipes and files
    proc = run_local(local_mpirun_command(n_ranks, argv), env=env, stdout=None if progress else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0 or not report_path.exists():
        lines = [ln for ln in without_error_boxes(proc.stderr).splitlines() if ln.startswith("pisplit: error")]
        raise PisplitError(lines[0].removeprefix("pisplit: error: ") if lines else
                           f"emulated run on {n_ranks} ranks failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
    return json.loads(report_path.read_text())


_WARNED: set = set()


def warn_faster_than_host(plan_path: Path, engine: str, speed: float | None) -> list[str]:
    """One warning line per device kind that computes faster than this machine can emulate (its dilation
    below 1: an emulated rank can be slowed down to a device, never sped up past this machine), so its rank
    falls behind and adds to the measured latency. `speed` is this machine's seconds / the reference's.
    Returns the lines printed."""
    from ..emulation import device_slowdown
    from .run import _is_configmap

    if not speed or speed <= 0:
        return []
    if _is_configmap(str(plan_path)):
        from partitioners.edgent import ConfigMap

        from ..bandwidth import map_plans

        plans = [Plan.load(p) for _, _, p, _ in map_plans(ConfigMap.load(plan_path), Path(plan_path).parent)]
    else:
        plans = [Plan.load(plan_path)]
    lines, seen = [], set()
    for plan in plans:
        for d in plan.devices:
            factor = device_slowdown(d.kind, engine) / d.speed / speed
            if factor < 0.98 and (d.kind, d.speed) not in seen:  # 2%: the measurement's own noise
                seen.add((d.kind, d.speed))
                most = device_slowdown(d.kind, engine) / speed
                lines.append(f"warning: an emulated {d.kind}{'' if d.speed == 1 else f' at speed {d.speed:g}'} computes "
                             f"{1 / factor:.2f}x faster than this machine can emulate; its rank will fall behind and add to "
                             f"the measured latency (a configuration map takes --devices ...,{d.kind}:N*{min(most, 1.0) * 0.999:.3g})")
    from ..output import err_console

    for line in lines:
        if line not in _WARNED:  # once a run (its one-device baseline names the same device)
            _WARNED.add(line)
            err_console.print(f"[yellow]{line}[/yellow]", soft_wrap=True)
    return lines


def _speed_plan(path: Path) -> Plan:
    """The plan whose model host_speed measures: the plan itself, or a configuration map's first plan (issue 16)."""
    from .run import _is_configmap

    if not _is_configmap(str(path)):
        return Plan.load(path)
    from partitioners.edgent import ConfigMap

    from ..bandwidth import map_plans, speed_model

    cmap = ConfigMap.load(path)
    _, _, plan_path, graph_path = map_plans(cmap, Path(path).parent)[0]
    from dataclasses import replace

    return replace(Plan.load(plan_path), model=speed_model(cmap, graph_path))


def emulate_map(args) -> int:
    """Issue 16: `pisplit emulate MODEL --devices ... --latency-req MS` (build the configuration map) or
    `--configmap MAP.json`: the map's plans on emulated devices, the link at --link or following
    --bandwidth-trace, switching between frames (`pisplit run MAP.json --emulate`)."""
    from partitioners.edgent import ConfigMap

    from ..bandwidth import load_trace, map_plans
    from .configmap import build_map
    from .run import print_map_report

    if args.bandwidth_trace:
        load_trace(args.bandwidth_trace)  # a bad row fails here, in one line
    if args.resilient or args.fail or args.exit or args.trace or args.chart:
        raise PisplitError("a configuration map run: not with --resilient, --fail, --exit, --trace or --chart")
    with tempfile.TemporaryDirectory(prefix="pisplit-emulate-") as tmp:
        tmp = Path(tmp)
        if args.configmap:
            map_path = Path(args.configmap)
        else:
            map_path = build_map(args.model, args.devices, args.latency_req, tmp / "map", states=args.states,
                                 trace=args.bandwidth_trace, engine=args.engine, quiet=args.json)
        n_ranks = max(Plan.load(p).n_ranks for _, _, p, _ in map_plans(ConfigMap.load(map_path), map_path.parent))
        extra = ["--bandwidth-trace", str(Path(args.bandwidth_trace).resolve())] if args.bandwidth_trace else ["--link", args.link]
        extra += ["--frame-interval", repr(args.frame_interval)]
        extra += ["--input", str(Path(args.input).resolve())] if args.input else []
        doc = run_emulated(map_path.resolve(), n_ranks, args.frames, tmp / "report.json", args.engine, progress=False,
                           extra=extra, recalibrate=args.recalibrate)
    if args.json:
        print_json(doc)
    else:
        print_map_report(doc)
    return 0 if doc["every_frame_once"] else 1


def plan_table(plan: Plan, graph) -> Table:
    """Stages of a plan: ranks and devices, nodes, mode, predicted compute / communication and memory."""
    table = Table(title=f"{plan.model} on {plan.n_ranks} emulated device{'s' if plan.n_ranks > 1 else ''} "
                        f"({plan.planner} plan, link {plan.link_bandwidth_bps / 1e6:.0f} Mbit/s)")
    for col in ["stage", "ranks", "mode", "nodes", "predicted compute ms", "comm ms", "memory / rank", "sends"]:
        table.add_column(col, justify="left" if col in ("ranks", "mode", "nodes") else "right")
    coded = any(s.send_codec != "raw" for s in plan.stages)
    for s in plan.stages:
        kinds = ",".join(sorted({plan.devices[r].kind for r in s.ranks}))
        nodes = f"{graph.nodes[s.node_start].name} .. {graph.nodes[s.node_stop - 1].name}"
        pred = s.predicted
        mem = max(pred.memory_bytes.values()) if pred and pred.memory_bytes else None
        kinds_of = [seg.kind for seg in s.segments if seg.kind != NO_SPLIT]
        mode = s.mode + (f" ({', '.join(sorted(set(kinds_of)))})" if kinds_of else "")
        table.add_row(str(s.index), f"{','.join(map(str, s.ranks))} ({kinds})", mode, nodes,
                      f"{pred.compute_s * 1e3:.1f}" if pred else "-", f"{pred.comm_s * 1e3:.1f}" if pred else "-",
                      human_bytes(mem) if mem else "-", (human_bytes(s.send_bytes) if s.send_bytes else "-")
                      + (f" {s.send_codec}" if coded and s.send_bytes else ""))
    return table


def run(args) -> int:
    if args.latency_req or args.configmap:
        return emulate_map(args)
    if args.bandwidth_trace:
        from ..bandwidth import load_trace

        load_trace(args.bandwidth_trace)  # a bad row fails here, in one line
    if args.chart:
        from ..charts import check_chart_path

        check_chart_path(args.chart)  # a missing extra or a bad name, before minutes of emulation
    graph = load_model(args.model)
    from partitioners.exits import parse_exit_overrides

    parse_exit_overrides(args.exit)  # a bad --exit fails here, in one line
    inputs = ["--input", str(Path(args.input).resolve())] if args.input else []
    with_exits = inputs + [a for e in args.exit for a in ("--exit", e)]
    with_exits += ["--bandwidth-trace", str(Path(args.bandwidth_trace).resolve())] if args.bandwidth_trace else []
    with_exits += ["--frame-interval", repr(args.frame_interval)] if args.frame_interval else []
    if args.stall_timeout is not None and not args.stall_timeout >= 0:
        raise PisplitError(f"--stall-timeout {args.stall_timeout}: must be a number of seconds >= 0 (0: never)")
    if args.resilient and args.on_slow:
        raise PisplitError("--on-slow with --resilient: the supervisor's attempts always end on a slow rank (fail) and replan without it")
    watch_flags = (["--stall-timeout", repr(args.stall_timeout)] if args.stall_timeout is not None else []) + \
        (["--on-slow", args.on_slow] if args.on_slow else [])
    inputs += watch_flags  # both runs, the one-device baseline too
    with_exits += watch_flags
    link_bps = parse_link(args.link)
    if args.frames < 1 or (args.single_frames is not None and args.single_frames < 1):
        raise PisplitError("--frames and --single-frames: must be at least 1")
    from .codecs import planning_codecs

    table, budget = planning_codecs(args.codec_table, graph, args.engine, args.max_accuracy_loss, args.max_rel_error)
    from .codecs import accuracy_checked, host_plan  # lossy links checked together on the held-out split (with --max-accuracy-loss)

    # edge devices and a host (issue 15): the edge-host planner, the frames' source (rank 0) on the edge
    plan = host_plan(graph, args.model, args.devices, link_bps, args.engine, table, budget) if args.planner == "dp" else None
    plan = plan or accuracy_checked(lambda b: plan_for_devices(graph, args.model, args.devices, link_bps, args.planner, args.objective,
                                                       args.engine, table, b), graph, args.model, budget)
    # all on the host: the plan's model is the model behind the edge's input-passing node
    plan_graph = load_model(plan.model) if plan.model != args.model else graph
    if args.resilient or args.fail:
        from .resilient import emulate_resilient

        return emulate_resilient(args, plan)
    single = single_device_plan(graph, args.model, plan.devices[0].kind, link_bps, args.engine)
    # with --exit: the plan's prediction with the exits' held-out shares, as `pisplit plan --exit` prints it
    exit_fps, exit_note, held_out = (exit_prediction(args, graph, plan, link_bps, table, budget) if args.exit and plan_graph is graph
                                     else (None, None, None))
    with tempfile.TemporaryDirectory(prefix="pisplit-emulate-") as tmp:
        tmp = Path(tmp)
        plan_path = plan.save(Path(args.plan_output) if args.plan_output else tmp / "plan.json")
        single_path = single.save(tmp / "single.json")
        if held_out is not None and not args.input:  # exits fire on real frames: the held-out ones the shares were measured on
            np.save(tmp / "held-out.npy", held_out, allow_pickle=False)
            with_exits += ["--input", str(tmp / "held-out.npy")]
        # the one-device baseline long enough to be stable: about 5 s of emulated frames
        single_frames = args.single_frames or max(4, min(2000, int(5 * single.predicted_throughput_fps)))
        if not args.json:
            console.print(plan_table(plan, plan_graph))
            console.print(f"predicted {plan.predicted_throughput_fps:.2f} frames/s on {plan.n_ranks} emulated "
                          f"{'devices' if plan.n_ranks > 1 else 'device'}, {single.predicted_throughput_fps:.2f} on one {single.devices[0].kind}")
            if exit_note:
                console.print(exit_note)
            console.print(f"emulating one {single.devices[0].kind} ({single_frames} frames) ...")
        # a latency plan is measured frame after frame (one in flight), as single-frame latency is meant
        in_flight = 1 if args.objective == "latency" else None
        one = run_emulated(single_path, 1, single_frames, tmp / "single-report.json", args.engine, progress=False,
                           max_in_flight=in_flight, extra=inputs, recalibrate=args.recalibrate)
        many = run_emulated(plan_path, plan.n_ranks, args.frames, tmp / "report.json", args.engine, progress=not args.json,
                            trace=args.trace, max_in_flight=in_flight, extra=with_exits,
                            recalibrate=args.recalibrate and plan.n_ranks > 1)  # one rank: measured just above
    if args.chart:
        from ..charts import run_chart

        run_chart(plan, many, args.chart, in_flight)
        if not args.json:
            console.print(f"wrote the chart {args.chart}")
    speedup = many["throughput_fps"] / one["throughput_fps"] if one["throughput_fps"] else None
    latency_speedup = one["latency_ms"]["p50"] / many["latency_ms"]["p50"] if many["latency_ms"]["p50"] else None
    problem = implausible_speedup(plan, latency_speedup if args.objective == "latency" else speedup)
    doc = {
        "model": graph.name, "devices": args.devices, "link_bps": link_bps, "planner": plan.planner, "engine": args.engine,
        "frames": many["frames"], "throughput_fps": many["throughput_fps"], "predicted_fps": exit_fps or plan.predicted_throughput_fps,
        "measured_over_predicted": many["throughput_fps"] / (exit_fps or plan.predicted_throughput_fps) if plan.predicted_throughput_fps else None,
        "predicted_fps_without_exits": plan.predicted_throughput_fps if exit_fps else None, "exit_prediction": exit_note,
        "latency_ms": many["latency_ms"], "predicted_latency_ms": plan.predicted_latency_s * 1e3,
        "single_fps": one["throughput_fps"], "single_predicted_fps": single.predicted_throughput_fps,
        "speedup_vs_single": speedup,
        "predicted_speedup_vs_single": (exit_fps or plan.predicted_throughput_fps) / single.predicted_throughput_fps if single.predicted_throughput_fps else None,
        "single_latency_ms": one["latency_ms"], "latency_speedup_vs_single": latency_speedup,
        "predicted_latency_speedup_vs_single": single.predicted_latency_s / plan.predicted_latency_s if plan.predicted_latency_s else None,
        "single_fidelity": one["throughput_fps"] / single.predicted_throughput_fps if single.predicted_throughput_fps else None,
        "measurement_problem": problem,
        "every_frame_once": many["every_frame_once"], "exits": many.get("exits"),
        # host lateness (issue 15): the largest share of a run's wall time a rank fell behind its emulated device
        "late_share": late_share(many), "single_late_share": late_share(one),
        "link_codecs": [s.send_codec for s in plan.stages[:-1]], "input_codec": plan.input_codec,
        "stages": many["stages"], "ranks": many["ranks"],
    }
    if args.chart:
        doc["chart_file"] = args.chart
    if args.json:
        print_json(doc)
        return 0
    lat = doc["latency_ms"]
    console.print(f"measured [bold]{doc['throughput_fps']:.2f} frames/s[/] (predicted {doc['predicted_fps']:.2f}{' with exits' if exit_fps else ''}), "
                  f"latency p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f} ms")
    if doc.get("exits"):
        console.print("answered at " + ", ".join(f"{name} {n} ({n / max(doc['frames'], 1):.0%})" for name, n in doc["exits"].items())
                      + f"; the one-{single.devices[0].kind} baseline ran without exits")
    kind = single.devices[0].kind
    console.print(f"one emulated {kind}: {doc['single_fps']:.2f} frames/s, x{doc['single_fidelity']:.2f} of its calibration "
                  f"({single.predicted_throughput_fps:.2f})")
    if args.objective == "latency":
        shown, predicted, what = latency_speedup, doc["predicted_latency_speedup_vs_single"], "latency speedup"
        console.print(f"single-frame latency p50 {lat['p50']:.0f} ms against {doc['single_latency_ms']['p50']:.0f} ms on one {kind}")
    else:
        shown, predicted, what = speedup, doc["predicted_speedup_vs_single"], "speedup"
    if problem:
        console.print(f"[yellow]{what} not reported: {problem}[/]")
    else:
        console.print(f"[bold green]{what} {shown:.2f}x[/] with {plan.n_ranks} devices (predicted {predicted:.2f}x)")
    late = [r for r in many["ranks"] if r["emulation_late_s"] > 0.05 * max(many["wall_s"], 1e-9)]
    if late:
        console.print(f"[yellow]note: this machine fell behind the emulated device speed on rank(s) "
                      f"{', '.join(str(r['rank']) for r in late)}; measured figures are pessimistic[/]")
    if doc["single_late_share"] > 0.05:
        console.print(f"[yellow]note: this machine fell behind the one emulated {kind} for {doc['single_late_share']:.0%} of its run; "
                      f"the speedup is optimistic[/]")
    return 0


def exit_prediction(args, graph, plan: Plan, link_bps: float, table, budget) -> tuple[float | None, str, np.ndarray | None]:
    """The plan's predicted throughput with the --exit thresholds, each exit's share measured on the
    trained model's held-out split (partitioners.exits.throughput_with_inner_exits, as `pisplit plan
    --exit` prices it), a note saying so and the held-out frames (one-input models; the run's input
    without --input, so the exits fire as often as predicted); (None, why, None) without held-out data."""
    from partitioners.codec_cost import codec_cost_model
    from partitioners.cost import make_cluster
    from partitioners.devices import parse_devices
    from partitioners.exits import calibrate, parse_exit_overrides, resolve_exits, throughput_with_inner_exits
    from partitioners.profiles import Calibration

    from .exits import held_out_outputs

    points = resolve_exits(graph, parse_exit_overrides(args.exit))
    try:
        outputs, labels, data = held_out_outputs(args.model, graph, None)
    except PisplitError:
        return None, "exit shares not measured (not a trained model): the prediction counts every frame to the end", None
    fractions = [e["exit_fraction"] for e in calibrate(graph, outputs, labels, points)["exits"]]
    model = codec_cost_model(graph, make_cluster(parse_devices(args.devices), link_bps), Calibration(args.engine),
                             codecs=table, codec_budget=budget)
    fps = throughput_with_inner_exits(model, plan, points, fractions)
    from layers.trained import manifest
    from layers.trained.data import load_split, model_inputs

    entry = manifest()["models"][args.model.lower()]
    feeds = model_inputs(data, entry["input"], load_split(data).x_test, "test")
    frames = next(iter(feeds.values())).astype(np.float32) if len(feeds) == 1 and not args.input else None
    shares = ", ".join(f"{p.name} {f:.1%}" for p, f in zip(points, fractions))
    return fps, (f"with exits {shares} of {len(labels)} held-out {data} frames (test split): predicted {fps:.2f} frames/s "
                 f"(without exits {plan.predicted_throughput_fps:.2f})" + ("; the run's frames: those held-out frames" if frames is not None else "")), frames


def implausible_speedup(plan: Plan, speedup: float | None) -> str | None:
    """Why a measured speedup over one device cannot be a result (identical devices: above their
    count, with 5% for timing noise), else None."""
    kinds = {(d.kind, d.speed) for d in plan.devices}
    if speedup is None or len(kinds) != 1 or speedup <= plan.n_ranks * 1.05:
        return None
    return (f"measured {speedup:.2f}x on {plan.n_ranks} identical devices, more than their number: the one-device "
            "baseline ran slow or the cluster's short run read fast on this machine (a measurement problem, not a "
            "result; rerun with more frames and --single-frames on a quieter machine)")
