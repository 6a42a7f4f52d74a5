"""`pisplit exits MODEL --data mnist`: DDNN's table for a model with early exits, over a sweep of T.

For each threshold T (the same for every exit, as DDNN sweeps it): each exit's share of the held-out
frames, the overall accuracy (test split only), the bytes a frame sends between the stages of an exit
plan (the front stage runs the model up to the first exit, the rest runs behind it on the other
devices; partitioners.exits.exit_split_plan picks the device split knowing the exit rates) and that
plan's predicted throughput on the given devices, next to the planner's plan of the model without
exits. DDNN (seed 002, T=0.8): 60.8% local exit, 97% accuracy, 62 B per frame.

`--run` (under mpirun -n 1+P) runs a multi-view model across ranks (cluster.multiview), `--window`
frames in flight, `--emulate` on emulated devices and links. `pisplit plan MODEL --exit NAME=T` plans
with exits (plan_with_exits here).
"""
from __future__ import annotations

import numpy as np
from rich.table import Table

from layers.errors import PisplitError

from ..output import console, human_bytes, print_json

SWEEP = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def register(sub) -> None:
    p = sub.add_parser("exits", help="early exits over a sweep of T: shares, accuracy, bytes per frame, predicted throughput")
    p.add_argument("model", metavar="MODEL", help="a model with exits, e.g. branchy_lenet_mnist")
    p.add_argument("--data", choices=("digits", "mnist"), help="data set whose held-out test split is used (default: the model's own)")
    p.add_argument("--thresholds", metavar="T,T,...", help=f"the sweep (default {','.join(f'{t:g}' for t in SWEEP)})")
    p.add_argument("--devices", default="rpi3:4", metavar="KIND:N", help="devices of the plans (default rpi3:4)")
    p.add_argument("--link", default="94mbit", help="link between devices (default 94mbit)")
    p.add_argument("--engine", default="numpy", help="engine the plans are costed for (default numpy)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    views = p.add_argument_group("multi-view models (DDNN: ddnn_mnist, ddnn_mnist_LOCAL_CLOUD)")
    views.add_argument("--run", action="store_true", help="under mpirun -n 1+P: rank 0 aggregates, one rank per present end "
                       "device holds its view and its part of the model (cluster.multiview); prints accuracy, local exits, bytes")
    views.add_argument("--missing", metavar="D,D", help="end devices absent from the run (their views missing)")
    views.add_argument("--threshold", type=float, default=0.8, help="local exit threshold T of --run and the missing-devices table (default 0.8)")
    views.add_argument("--frames", type=int, help="--run: held-out frames (default: the whole test split)")
    views.add_argument("--window", type=int, default=4, metavar="W", help="--run: frames in flight (default 4; 1 = one frame at a time)")
    views.add_argument("--emulate", action="store_true", help="--run: each end device computes at --device-kind's speed and rank 0 at "
                       "--aggregator-kind's (time dilation, as pisplit emulate), every message over a paced --link")
    views.add_argument("--device-kind", default="rpi3", metavar="KIND", help="--emulate: the end devices' kind (default rpi3)")
    views.add_argument("--aggregator-kind", default="rpi3", metavar="KIND", help="--emulate: rank 0's kind (default rpi3)")
    views.add_argument("--output", metavar="Y.npz", help="--run: per frame the answering exit (0 local, 1 final) and both outputs (NaN: not computed)")
    views.add_argument("--stall-timeout", type=float, metavar="S", help="--run: seconds a rank may take to reach the start's agreements "
                       "(three times S for the first, as ranks load at different paces) and a message may keep the run waiting before "
                       "the rank is named and the job ends (default: 10 s for the start, 60 s in the run; 0: never)")
    p.set_defaults(func=run)


def held_out_outputs(model: str, graph, data: str | None) -> tuple[dict, np.ndarray, str]:
    """The whole model's outputs on the held-out test split of `data` (default: the trained model's
    own data set): ({output: (frames, ...)}, labels (frames,), data set name)."""
    from layers.trained import manifest
    from layers.trained.data import load_split, model_inputs

    entry = manifest()["models"].get(model.lower())
    kind = entry["input"] if entry else "single"
    data = data or (entry["data"] if entry else None)
    if data is None:
        raise PisplitError(f"model {model}: not a trained model; name the data set with --data digits|mnist")
    split = load_split(data)
    feeds = model_inputs(data, kind, split.x_test, "test")
    for name, x in feeds.items():
        if name not in graph.inputs or tuple(graph.inputs[name][1:]) != x.shape[1:]:
            raise PisplitError(f"model {model}: input {name} {tuple(graph.inputs.get(name, ()))} does not take {data} frames {x.shape[1:]}")
    return graph.execute(feeds), split.y_test, data


def parse_thresholds(text: str | None) -> list[float]:
    from partitioners.exits import check_threshold

    if not text:
        return list(SWEEP)
    return [check_threshold("--thresholds", v) for v in text.split(",") if v.strip()]


def run(args) -> int:
    if args.run:
        from .. import transport

        return transport.on_every_rank(lambda comm, rank: _run_views(args, comm, rank), args.debug)
    from layers import load_model
    from partitioners.cost import CostModel, make_cluster
    from partitioners.devices import parse_devices
    from partitioners.exits import bytes_per_frame, calibrate, reach_from_fractions, resolve_exits, throughput_with_inner_exits
    from partitioners.planners import make_plan
    from partitioners.profiles import Calibration

    from ..emulation import parse_link

    graph = load_model(args.model)
    names = graph.outputs[:-1]
    if not names:
        raise PisplitError(f"model {args.model}: has one output, no exits")
    thresholds = parse_thresholds(args.thresholds)
    outputs, labels, data = held_out_outputs(args.model, graph, args.data)
    cost_model = CostModel(graph, make_cluster(parse_devices(args.devices), parse_link(args.link)), Calibration(args.engine))
    plain = make_plan(graph, cost_model, "dp", "throughput", args.model, args.engine)
    rows = []
    for t in thresholds:
        points = resolve_exits(graph, {n: t for n in names})
        cal = calibrate(graph, outputs, labels, points)
        fractions = [e["exit_fraction"] for e in cal["exits"]]
        from partitioners.exits import exit_split_plan

        plan = exit_split_plan(graph, cost_model, points, fractions, args.model, args.engine)
        reach = reach_from_fractions(plan.stages, points, fractions)
        rows.append({"threshold": t, "shares": {e["name"]: e["exit_fraction"] for e in cal["exits"] + [cal["final"]]},
                     "accuracy": cal["accuracy"], "bytes_per_frame": bytes_per_frame(plan, reach),
                     "predicted_fps": plan.predicted_throughput_fps,
                     "planner_plan_predicted_fps": throughput_with_inner_exits(cost_model, plain, points, fractions),
                     "split": [len(s.ranks) for s in plan.stages],
                     "cut_after": next(p.name for p in points if p.node + 1 == plan.stages[0].node_stop)})
    doc = {"model": args.model, "data": data, "split": "test", "frames": int(len(labels)), "devices": args.devices,
           "link": args.link, "without_exits": {"predicted_fps": plain.predicted_throughput_fps,
                                                "accuracy": float((outputs[graph.outputs[-1]].argmax(-1) == labels).mean())},
           "rows": rows}
    if len(graph.inputs) > 1:
        doc["missing_devices"] = missing_devices_rows(graph, args.model, args.threshold)
        doc["schemes"] = scheme_rows(args.threshold)
    if args.json:
        print_json(doc)
        return 0
    console.print(exits_table(doc))
    if "missing_devices" in doc:
        console.print(missing_devices_table(args.model, args.threshold, doc["missing_devices"]))
        console.print(schemes_table(args.threshold, doc["schemes"]))
    return 0


def missing_devices_rows(graph, model: str, threshold: float) -> list:
    """Per number of missing end devices (0..N-1): accuracy at the local exit, at the final exit and
    overall at `threshold` (the local exit answering when sure), the mean over every choice of
    devices, on the held-out test split (cluster.multiview.multiview_reference)."""
    import itertools

    from layers.trained import held_out

    from ..multiview import multiview_reference, split_multiview

    views = split_multiview(graph)
    feeds, labels = held_out(model)
    rows = []
    for k in range(views.n_devices):
        local, final, overall, share = [], [], [], []
        for missing in itertools.combinations(range(views.n_devices), k):
            ref = multiview_reference(views, feeds, list(missing), threshold)
            local.append(float((ref["local_all"].argmax(-1) == labels).mean()))
            final.append(float((ref["final_all"].argmax(-1) == labels).mean()))
            answer = np.where(ref["exit_index"] == 0, ref["local_all"].argmax(-1), ref["final_all"].argmax(-1))
            overall.append(float((answer == labels).mean()))
            share.append(float((ref["exit_index"] == 0).mean()))
        rows.append({"missing": k, "local_accuracy": float(np.mean(local)), "final_accuracy": float(np.mean(final)),
                     "overall_accuracy": float(np.mean(overall)), "local_exit_share": float(np.mean(share))})
    return rows


def missing_devices_table(model: str, threshold: float, rows: list) -> Table:
    table = Table(title=f"{model}: held-out accuracy with end devices missing (mean over which; T={threshold:g})")
    for col in ("missing devices", "local exit", "final exit", f"overall at T={threshold:g}", "local exit %"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["missing"]), f"{r['local_accuracy']:.2%}", f"{r['final_accuracy']:.2%}", f"{r['overall_accuracy']:.2%}",
                      f"{100 * r['local_exit_share']:.1f}")
    return table


def _run_views(args, comm, rank: int) -> int:
    """`mpirun -n 1+P pisplit exits MODEL --run`: the multi-view model across ranks (cluster.multiview)."""
    from layers import load_model
    from layers.trained import held_out
    from partitioners.exits import check_threshold

    from ..multiview import parse_missing, run_multiview, split_multiview
    from ..runtime import DEFAULT_MIN_STALL_S, host_names_watched
    from .run import agree_options

    error = model = feeds = labels = emulation = None
    missing: list = []
    frames = 0
    try:
        if args.stall_timeout is not None and not args.stall_timeout >= 0:
            raise PisplitError(f"--stall-timeout {args.stall_timeout}: must be a number of seconds >= 0 (0: never)")
        check_threshold("--threshold", args.threshold)
        model = split_multiview(load_model(args.model))
        missing = parse_missing(args.missing, model.n_devices)
        feeds, labels = held_out(args.model)
        frames = len(labels) if args.frames is None else int(args.frames)
        if args.window < 1:
            raise PisplitError(f"--window {args.window}: must be at least 1")
        emulation = _view_emulation(args, comm, rank) if args.emulate else None
        if not 1 <= frames <= len(labels):
            raise PisplitError(f"--frames {args.frames}: the test split has {len(labels)} frames")
        present = [d for d in range(model.n_devices) if d not in missing]
        if comm.Get_size() != len(present) + 1:
            raise PisplitError(f"{len(present)} present end devices: run under mpirun -n {len(present) + 1} (rank 0 aggregates)")
        if rank > 0:  # an end device keeps only its own view
            view = model.views[present[rank - 1]]
            feeds = {view: feeds[view]}
    except PisplitError as exc:
        error = str(exc)
    # no wait at the start is unbounded: a rank that never arrives (stopped or hung while starting) is named and the job ends
    agree_options(comm, error, args.stall_timeout, None)
    bound = DEFAULT_MIN_STALL_S if args.stall_timeout is None else float(args.stall_timeout)
    hosts = host_names_watched(comm, bound) if comm.Get_size() > 1 else []
    if emulation is not None:
        emulation.slowdown /= _shared_host_speed(comm, emulation.host_speed, bound, hosts)
    timeout_s = 60.0 if args.stall_timeout is None else (float(args.stall_timeout) or float("inf"))
    result = run_multiview(comm, model, feeds, frames, missing, args.threshold, timeout_s=timeout_s, window=args.window, emulation=emulation)
    if rank != 0:
        return 0
    labels = labels[:frames]
    index = result["exit_index"]
    answer = np.where(index == 0, np.nan_to_num(result[model.exit_name]).argmax(-1), np.nan_to_num(result[model.final_name]).argmax(-1))
    doc = {"model": args.model, "frames": frames, "missing": missing, "threshold": args.threshold,
           "emulated": {"devices": args.device_kind, "aggregator": args.aggregator_kind, "link": args.link} if args.emulate else None,
           "local_exit_share": float((index == 0).mean()), "accuracy": float((answer == labels).mean()),
           "bytes_per_frame": result["bytes_per_frame"], "seconds": result["seconds"], "window": args.window,
           "frames_per_s": frames / result["seconds"] if result["seconds"] > 0 else None}
    if args.output:
        np.savez(args.output, exit_index=index, exit_names=np.array([model.exit_name, model.final_name]),
                 **{model.exit_name: result[model.exit_name], model.final_name: result[model.final_name]})
        doc["output_file"] = args.output
    if args.json:
        print_json(doc)
    else:
        console.print(f"{args.model}: {frames} held-out frames on {comm.Get_size() - 1} end devices"
                      f"{' (missing ' + ','.join(map(str, missing)) + ')' if missing else ''}: local exit "
                      f"{doc['local_exit_share']:.1%} at T={args.threshold:g}, accuracy [bold]{doc['accuracy']:.2%}[/], "
                      f"{human_bytes(doc['bytes_per_frame'])} per frame from the devices, "
                      f"{doc['frames_per_s'] or 0:.0f} frames/s ({args.window} in flight"
                      + (f"; emulated {args.device_kind} devices, {args.aggregator_kind} aggregator, {args.link} links)" if args.emulate else ")"))
    return 0


def _view_emulation(args, comm, rank: int):
    """This rank's ViewEmulation: its kind's dilation (cluster.emulation.device_slowdown, divided by
    this machine's speed once rank 0 has measured it: _shared_host_speed), the --link and the device
    profiles' per-message latency."""
    from partitioners.devices import device_profile

    from ..emulation import device_slowdown, parse_link
    from ..multiview import ViewEmulation

    kind = args.aggregator_kind if rank == 0 else args.device_kind
    # each message also costs the link latency of the slower end, as the planner's cluster links do (make_cluster)
    latency = max(device_profile(args.device_kind).link_latency_s, device_profile(args.aggregator_kind).link_latency_s)
    emulation = ViewEmulation(device_slowdown(kind, "numpy"), parse_link(args.link), latency)
    if rank == 0:
        import os

        from ..host_speed import host_speed

        # as pisplit emulate: this machine against the reference profile, as many copies at once as ranks share the cores
        emulation.host_speed = host_speed(args.model, 0, "numpy", concurrency=min(comm.Get_size(), os.cpu_count() or 1))
    return emulation


def _shared_host_speed(comm, speed, seconds: float, hosts: list) -> float:
    """Collective: rank 0's measured host speed on every rank, with no wait unbounded (a rank that does
    not come within `seconds`, <= 0: no bound, is named with its host: transport.bcast_text_watched)."""
    from .. import transport
    from ..runtime import stall_margin

    def name(r: int) -> str:
        return f"rank {r} (host {hosts[r]})" if 0 <= r < len(hosts) else f"rank {r}"

    text = repr(float(speed)) if comm.Get_rank() == 0 and speed else "1.0"
    return float(transport.bcast_text_watched(comm, text, "the host speed's broadcast", seconds, name, follow_s=stall_margin(seconds)))


def exits_table(doc: dict) -> Table:
    rows = doc["rows"]
    names = list(rows[0]["shares"]) if rows else []
    table = Table(title=f"{doc['model']}: early exits on {doc['frames']} held-out {doc['data']} frames, plans for {doc['devices']} at {doc['link']}")
    for col in ["T", *[f"{n} %" for n in names], "accuracy", "bytes / frame", "predicted fps", "cut after", "devices front/rest",
                "planner's plan + exits fps"]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['threshold']:g}", *[f"{100 * r['shares'][n]:.1f}" for n in names], f"{r['accuracy']:.2%}",
                      human_bytes(r["bytes_per_frame"]), f"{r['predicted_fps']:.1f}", r["cut_after"], "/".join(map(str, r["split"])),
                      f"{r['planner_plan_predicted_fps']:.1f}")
    plain = doc["without_exits"]
    table.caption = (f"without exits: the planner's plan {plain['predicted_fps']:.1f} frames/s, accuracy {plain['accuracy']:.2%}; "
                     "bytes / frame: between the exit plan's two stages")
    return table


def scheme_name(model: str) -> str:
    """'ddnn_mnist_ap_cc' -> 'AP-CC'; the committed 'ddnn_mnist' is DDNN's MP-CC."""
    parts = model.split("_")[2:]
    return "-".join(p.upper() for p in parts) if len(parts) == 2 else "MP-CC"


def scheme_rows(threshold: float) -> list:
    """DDNN's aggregation table on every trained multi-view model (layers/trained ddnn_mnist*): local
    and cloud (final) exit accuracy, overall accuracy at `threshold`, the local exit's share and the
    bytes a frame sends from all the devices, on the held-out test split."""
    from layers import load_model
    from layers.trained import held_out, manifest

    from ..multiview import multiview_reference, split_multiview

    rows = []
    for model in sorted(m for m in manifest()["models"] if m.startswith("ddnn_mnist")):
        views = split_multiview(load_model(model))
        feeds, labels = held_out(model)
        ref = multiview_reference(views, feeds, [], threshold)
        local = ref["exit_index"] == 0
        answer = np.where(local, ref["local_all"].argmax(-1), ref["final_all"].argmax(-1))
        shapes = views.graph.shapes
        score_bytes = sum(4 * int(np.prod(shapes[t])) for t in views.scores)
        feature_bytes = sum(4 * int(np.prod(shapes[t])) for t in views.features)
        rows.append({"model": model, "scheme": scheme_name(model),
                     "local_accuracy": float((ref["local_all"].argmax(-1) == labels).mean()),
                     "cloud_accuracy": float((ref["final_all"].argmax(-1) == labels).mean()),
                     "overall_accuracy": float((answer == labels).mean()), "local_exit_share": float(local.mean()),
                     "bytes_per_frame": score_bytes + (1 - float(local.mean())) * feature_bytes})
    order = {"MP": 0, "AP": 1, "CC": 2}  # DDNN's table order
    return sorted(rows, key=lambda r: tuple(order.get(p, 3) for p in r["scheme"].split("-")))


def schemes_table(threshold: float, rows: list) -> Table:
    table = Table(title=f"DDNN aggregation schemes (local-cloud) on held-out MNIST views, T={threshold:g}")
    for col in ("scheme", "local exit acc.", "cloud exit acc.", "overall acc.", "local exit %", "bytes / frame"):
        table.add_column(col, justify="left" if col == "scheme" else "right")
    for r in rows:
        table.add_row(r["scheme"], f"{r['local_accuracy']:.2%}", f"{r['cloud_accuracy']:.2%}", f"{r['overall_accuracy']:.2%}",
                      f"{100 * r['local_exit_share']:.1f}", human_bytes(r["bytes_per_frame"]))
    return table


# --- pisplit plan MODEL --exit NAME=T [--exit-shares CAL.json] -----------------------------------------
def check_plan_exit_arguments(args, graph) -> None:
    """`plan --exit` / `--exit-shares`: the exits name outputs of the model with thresholds in [0, 1]
    (as run --exit), the calibration document is one of this model at these thresholds."""
    from partitioners.exits import parse_exit_overrides, resolve_exits

    if args.compare or args.latency_req:
        raise PisplitError("--exit: plans one planner's plan with exits; not with --compare or --latency-req")
    resolve_exits(graph, plan_exit_thresholds(args))
    if args.exit_shares:
        exit_shares_document(args.exit_shares, args.model, parse_exit_overrides(args.exit))


def plan_exit_thresholds(args) -> dict:
    from partitioners.exits import parse_exit_overrides

    thresholds = parse_exit_overrides(args.exit)
    if not thresholds and args.exit_shares:  # the thresholds the shares were measured at
        thresholds = {e["name"]: e["threshold"] for e in exit_shares_document(args.exit_shares, args.model, {})["exits"]}
    return thresholds


def exit_shares_document(path: str, model: str, thresholds: dict) -> dict:
    """A `pisplit calibrate --output` document of `model`, checked against `thresholds` (when given)."""
    from layers.jsonfile import read_json

    from .calibrate import CALIBRATION_FORMAT

    doc = read_json(path, "--exit-shares")
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT or not isinstance(doc.get("exits"), list):
        raise PisplitError(f"--exit-shares {path}: not a {CALIBRATION_FORMAT} document (pisplit calibrate MODEL --output CAL.json writes one)")
    if str(doc.get("model")) != model:
        raise PisplitError(f"--exit-shares {path}: measured on {doc.get('model')}, not {model}")
    try:
        measured = {str(e["name"]): (float(e["threshold"]), float(e["exit_fraction"])) for e in doc["exits"]}
    except (KeyError, TypeError, ValueError):
        raise PisplitError(f"--exit-shares {path}: each exit needs a name, a threshold and an exit_fraction") from None
    for name, t in thresholds.items():
        if name not in measured:
            raise PisplitError(f"--exit-shares {path}: has no share for exit {name} (it measured {', '.join(measured) or 'none'})")
        if measured[name][0] != t:
            raise PisplitError(f"--exit-shares {path}: measured {name} at T={measured[name][0]:g}, not {t:g} "
                               f"(pisplit calibrate {model} --exit {name}={t:g} ... --output {path})")
    if thresholds and set(measured) != set(thresholds):
        extra = sorted(set(measured) - set(thresholds))
        raise PisplitError(f"--exit-shares {path}: also measured exit(s) {', '.join(extra)}, which change the others' shares; "
                           "give them with --exit too, or calibrate these exits alone")
    return doc


def plan_with_exits(args, graph, cost_model, plan):
    """The plan of `pisplit plan ... --exit` with its exits and their shares (from --exit-shares, else
    measured on a trained model's held-out split; unknown otherwise), its predicted throughput counting
    them (partitioners.exits.throughput_with_inner_exits). For a throughput plan on devices of one
    kind the two-stage plan cut after an exit (exit_split_plan) is taken instead when it is predicted
    faster; either way a note says what the plan predicts without exits."""
    from dataclasses import replace

    from partitioners.exits import calibrate, exit_split_plan, resolve_exits, throughput_with_inner_exits
    from partitioners.plan import Exit

    points = resolve_exits(graph, plan_exit_thresholds(args))
    fractions, source = None, None
    if args.exit_shares:
        doc = exit_shares_document(args.exit_shares, args.model, {p.name: p.threshold for p in points})
        share = {str(e["name"]): float(e["exit_fraction"]) for e in doc["exits"]}
        fractions = [share[p.name] for p in points]
        source = f"{args.exit_shares} ({doc.get('frames', '?')} held-out {doc.get('data', '?')} frames)"
    else:
        try:
            outputs, labels, data = held_out_outputs(args.model, graph, None)
        except PisplitError:
            pass  # not a trained model: no held-out data to measure the shares on
        else:
            fractions = [e["exit_fraction"] for e in calibrate(graph, outputs, labels, points)["exits"]]
            source = f"{len(labels)} held-out {data} frames (test split)"
    named = ", ".join(f"{p.name} T={p.threshold:g}" for p in points)
    if fractions is None:
        exits = tuple(Exit(p.name, p.threshold, None) for p in points)
        note = (f"exits {named}: shares not measured, so the predicted throughput counts every frame to the end "
                f"(pisplit calibrate {args.model} --data digits|mnist --plan PLAN.json writes them in)")
        return replace(plan, exits=exits, notes=(*plan.notes, note)).validate()
    without = plan.predicted_throughput_fps
    fps = throughput_with_inner_exits(cost_model, plan, points, fractions)
    chosen = replace(plan, exits=tuple(Exit(p.name, p.threshold, float(f)) for p, f in zip(points, fractions)),
                     predicted_throughput_fps=fps)
    if args.objective == "throughput" and len(cost_model.classes) == 1 and len(cost_model.cluster.devices) >= 2:
        try:
            split = exit_split_plan(graph, cost_model, points, fractions, args.model, args.engine)
        except PisplitError:
            split = None
        if split is not None and split.predicted_throughput_fps > fps:
            chosen = replace(split, notes=(*split.notes, f"the {plan.planner} plan with these exits: {fps:.1f} frames/s; "
                                                         f"this plan cut after an exit: {split.predicted_throughput_fps:.1f}"))
    shares = ", ".join(f"{p.name} {f:.1%}" for p, f in zip(points, fractions))
    note = (f"exits {named} answer {shares} of frames (measured on {source}); predicted throughput counts them "
            f"(the {plan.planner} plan without exits: {without:.1f} frames/s)")
    return replace(chosen, notes=(*chosen.notes, note)).validate()
