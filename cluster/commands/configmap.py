"""`pisplit configmap MODEL`: Edgent's configuration map (Algorithm 2) per bandwidth state and device set,
written with the plans and exit branches it names; and `pisplit plan MODEL --latency-req` (Algorithm 1),
whose printing lives here too. The planning is partitioners.edgent's; this module reads arguments and prints."""
from __future__ import annotations

import re
from pathlib import Path

from rich.table import Table

from layers import load_model
from layers.errors import PisplitError

from ..output import console, print_json


def register(sub) -> None:
    p = sub.add_parser("configmap", help="Edgent's configuration map: per bandwidth state the exit and cut of the best reward")
    p.add_argument("model", metavar="MODEL", help="a branchy model: trained name (e.g. branchy_alexnet_mnist), .tflite or .json")
    p.add_argument("--devices", required=True, metavar="KIND:N,host:1", help="one edge device and a host, e.g. rpi3:1,host:1")
    p.add_argument("--states", metavar="LIST", help="bandwidth states, e.g. 0.25,0.5,1,2,4,8mbit (a unit on the last applies to all)")
    p.add_argument("--bandwidth-trace", metavar="TRACE.csv", help="take the states from a trace's bandwidths (its distinct levels, "
                   "at most 8 quantiles) instead of --states")
    p.add_argument("--latency-req", required=True, metavar="MS", help="latency requirement, e.g. 100ms or 0.5s")
    p.add_argument("--availability", action="store_true",
                   help="also key the map by device availability: one edge device fewer at a time, and the host gone")
    p.add_argument("--link-latency", metavar="MS", type=float, help="per-message link latency in ms (default: the devices' profile)")
    p.add_argument("--accuracy", metavar="NAME=A", action="append", default=[],
                   help="accuracy of an exit (repeatable; default: layers/trained/manifest.json's held-out accuracy)")
    p.add_argument("--codec-table", metavar="T.json", help="a codec table of MODEL (pisplit codecs --save): its codecs join the search")
    p.add_argument("--max-accuracy-loss", metavar="P", help="lossy codecs allowed when they lose at most P top-1 accuracy (e.g. 1%%)")
    p.add_argument("--objective", choices=("reward", "accuracy"), default="reward",
                   help="reward: the paper's exp(accuracy) + frames/s (default); accuracy: per state the most accurate strategy "
                   "meeting the requirement (Algorithm 1)")
    p.add_argument("--engine", default="numpy", help="engine the plans run with (default numpy)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for configmap.json, its plans and exit-branch graphs")
    p.add_argument("--json", action="store_true", help="print the map document")
    p.set_defaults(func=run)


def parse_latency(text: str) -> float:
    """'100ms' / '0.1s' / '100' (ms) -> seconds; PisplitError naming the value."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|s)?\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise PisplitError(f"--latency-req {text!r}: expected a positive time such as 100ms or 0.5s")
    return float(m.group(1)) * (1.0 if m.group(2) == "s" else 1e-3)


def parse_states(text: str) -> list[float]:
    """'0.25,0.5,1,2,4,8mbit' -> bit/s; a plain number without any unit is Mbit/s."""
    from partitioners.devices import parse_link_bps

    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise PisplitError(f"--states {text!r}: expected bandwidths such as 0.25,0.5,1,2mbit")
    unit = re.sub(r"^[0-9.e]+", "", items[-1].lower()) or "mbit"
    out = []
    for t in items:
        spec = t if re.search(r"[a-z]", t.lower().replace("e", "")) else t + unit
        try:
            out.append(parse_link_bps(spec))
        except PisplitError:
            raise PisplitError(f"--states: {t!r} is not a bandwidth (e.g. 0.5mbit, 200kbit)") from None
    return sorted(set(out))


def trace_states(path: str, most: int = 8) -> list[float]:
    """Bandwidth states from a trace: its distinct levels if few, else `most` quantiles (bit/s)."""
    import numpy as np

    from ..bandwidth import load_trace

    trace = load_trace(path)
    levels = np.unique(trace.mbit_per_s)
    if len(levels) > most:
        levels = np.unique(np.round(np.quantile(trace.mbit_per_s, np.linspace(0, 1, most + 1)[:-1]), 3))
    return [float(v) * 1e6 for v in levels]


def availability_sets(entries: list, text: str, speeds: dict | None = None) -> list:
    """Device sets of the map keyed by availability: all of `entries` (parse_devices'), then one edge
    device fewer at a time down to one (taken from the last edge entry first), then the edge devices
    without the host. Labels are KIND:N lists."""
    def label(es):
        return ",".join(f"{k}:{n}" + (f"*{speeds[k]:g}" if speeds and k in speeds else "") for k, n, _ in es)

    edges = [list(e) for e in entries if e[0] != "host"]
    hosts = [e for e in entries if e[0] == "host"]
    if not edges:
        raise PisplitError(f"--availability: --devices {text} has no edge device")
    out = [(label(entries), entries)]
    while sum(e[1] for e in edges) > 1:
        last = next(e for e in reversed(edges) if e[1] > 0)
        last[1] -= 1
        kept = [tuple(e) for e in edges if e[1] > 0]
        out.append((label(kept + hosts), kept + hosts))
    if hosts:
        alone = [e for e in entries if e[0] != "host"]
        out.append((label(alone), alone))
    if len(out) == 1:
        raise PisplitError(f"--availability: --devices {text} has one device and no host: nothing can leave")
    return out


def _inputs(args, graph):
    from partitioners.edgent import exit_accuracies, parse_accuracies
    from partitioners.link_pricing import CodecTable, LossBudget

    from .codecs import parse_fraction

    acc = exit_accuracies(graph, parse_accuracies(args.accuracy))
    table = CodecTable.load(args.codec_table) if getattr(args, "codec_table", None) else None
    loss = getattr(args, "max_accuracy_loss", None)
    budget = LossBudget(parse_fraction(loss, "--max-accuracy-loss")) if loss else None
    return acc, table, budget


# --- pisplit plan --latency-req (Algorithm 1) ---------------------------------------------------------
def plan_latency_req(args, graph, model) -> int:
    """Algorithm 1 for `pisplit plan`: `model` is the CostModel build_model made (its cluster and calibration)."""
    from partitioners.edgent import select, strategies

    requirement = parse_latency(args.latency_req)
    acc, table, budget = _inputs(args, graph)
    sel = select(strategies(graph, model.cluster, acc, model.calibration, table, budget), requirement)
    if args.json:
        print_json({"model": graph.name, "latency_req_s": requirement, "bandwidth_bps": model.cluster.link_bandwidth_bps,
                    "exits": [{"exit": f.exit, "fastest": _row(f), "meeting": _row(m) if m else None}
                              for f, m in zip(sel.fastest_per_exit, sel.meeting_per_exit)],
                    "chosen": _row(sel.chosen) if sel.chosen else None, "fastest": _row(sel.fastest), "message": sel.message()})
    else:
        table_out = Table(title=f"{graph.name}: exits x cuts on {', '.join(d.kind for d in model.cluster.devices)}, link "
                                f"{model.cluster.link_bandwidth_bps / 1e6:g} Mbit/s, requirement {requirement * 1e3:g} ms")
        for col in ("exit", "accuracy", "best cut", "after", "codec", "latency ms", "frames/s", "meets"):
            table_out.add_column(col, justify="right" if col in ("accuracy", "best cut", "latency ms", "frames/s") else "left")
        for f, m in zip(sel.fastest_per_exit, sel.meeting_per_exit):
            s = m or f  # an exit's best strategy meeting the requirement, else its fastest
            mark = "[bold]chosen[/bold]" if s is sel.chosen else ("yes" if m else "[red]no[/red]")
            cut = f"{s.cut}/{s.n_nodes}" + (" (device)" if s.on_device else "")
            table_out.add_row(s.exit, f"{s.accuracy:.3f}", cut, s.after, s.codec, f"{s.latency_s * 1e3:.2f}", f"{s.throughput_fps:.1f}", mark)
        console.print(table_out)
        console.print(sel.message())
    if args.output:
        if sel.chosen is None:
            raise PisplitError(f"{sel.message()}: no plan to write to {args.output}")
        write_strategy(graph, sel.chosen, model.cluster, Path(args.output), model.calibration, args.engine)
        if not args.json:
            console.print(f"wrote {args.output} (and its exit branch beside it)")
    return 0 if sel.chosen is not None else 1


def _row(s) -> dict:
    return {"exit": s.exit, "cut": s.cut, "n_nodes": s.n_nodes, "after": s.after, "codec": s.codec, "latency_s": s.latency_s,
            "throughput_fps": s.throughput_fps, "accuracy": s.accuracy}


def write_strategy(graph, strategy, cluster, plan_path: Path, calibration, engine: str, branch_dir: Path | None = None) -> tuple[Path, Path]:
    """Save the strategy's exit branch (as MODEL.EXIT.json/.npz) and its plan; returns (plan, graph) paths."""
    from layers.serialize import save_graph
    from partitioners.edgent import exit_branch, strategy_plan

    folder = branch_dir or plan_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    branch_path = folder / f"{graph.name}.{strategy.exit}.json"
    if not branch_path.exists():
        save_graph(exit_branch(graph, strategy.exit), branch_path)
    plan = strategy_plan(graph, strategy, cluster, str(branch_path), calibration, engine)
    plan.save(plan_path)
    return plan_path, branch_path


# --- pisplit configmap (Algorithm 2) ----------------------------------------------------------------
def run(args) -> int:
    from dataclasses import replace

    from partitioners.devices import parse_devices
    from partitioners.edgent import configuration_map, device_cluster, parse_device_speeds

    requirement = parse_latency(args.latency_req)
    if bool(args.states) == bool(args.bandwidth_trace):
        raise PisplitError("configmap: give the bandwidth states with exactly one of --states and --bandwidth-trace")
    states = parse_states(args.states) if args.states else trace_states(args.bandwidth_trace)
    graph = load_model(args.model)
    devices, speeds = parse_device_speeds(args.devices)  # host:1*0.7: a host at 0.7 of the reference's speed
    entries = parse_devices(devices)
    label = ",".join(f"{k}:{n}" + (f"*{speeds[k]:g}" if k in speeds else "") for k, n, _ in entries)
    sets = [(label, entries)]
    if args.availability:
        sets = availability_sets(entries, devices, speeds)
    acc, table, budget = _inputs(args, graph)
    latency = args.link_latency / 1e3 if args.link_latency is not None else None
    if latency is not None and latency < 0:
        raise PisplitError(f"--link-latency {args.link_latency}: must not be negative")
    cmap, chosen = configuration_map(graph, sets, states, requirement, acc, args.model, latency, None, table, budget, args.engine,
                                    args.objective, speeds=speeds)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for e in cmap.entries:
        devs = dict(sets)[e.devices]
        cluster = device_cluster(devs, e.bandwidth_bps, latency, speeds)
        tag = e.devices.replace(":", "").replace(",", "_").replace("*", "x")
        plan_path, branch_path = write_strategy(graph, chosen[(e.devices, e.bandwidth_bps)], cluster,
                                                out / f"plan_{tag}_{e.bandwidth_bps / 1e6:g}mbit.json", None, args.engine, out)
        written.append(replace(e, plan=plan_path.name, graph=branch_path.name))
    cmap = replace(cmap, entries=tuple(written))
    path = cmap.save(out / "configmap.json")
    if args.json:
        print_json(cmap.to_dict())
        return 0
    how = "reward exp(accuracy) + frames/s" if args.objective == "reward" else "most accurate meeting it; reward shown"
    t = Table(title=f"{graph.name}: configuration map, requirement {requirement * 1e3:g} ms ({how})")
    for col in ("devices", "state Mbit/s", "exit", "cut", "codec", "latency ms", "frames/s", "accuracy", "reward", "plan"):
        t.add_column(col, justify="left" if col in ("devices", "exit", "codec", "plan") else "right")
    for e in cmap.entries:
        t.add_row(e.devices, f"{e.bandwidth_bps / 1e6:g}", e.exit, f"{e.cut}/{e.n_nodes}", e.codec, f"{e.latency_s * 1e3:.2f}",
                  f"{e.throughput_fps:.1f}", f"{e.accuracy:.3f}", f"{e.reward:.2f}" if e.meets else "[red]0 (misses)[/red]", e.plan or "-")
    console.print(t)
    console.print(f"wrote {path} and {len(cmap.entries)} plans beside it")
    return 0


def build_map(model: str, devices: str, latency_req: str, output: Path, states: str | None = None, trace: str | None = None,
              objective: str = "accuracy", engine: str = "numpy", quiet: bool = False, accuracy: list | None = None) -> Path:
    """`pisplit configmap` for another command (emulate --latency-req, bench/edgent): the map of `model`
    on `devices` at `states` (else a trace's levels) written to `output`; returns configmap.json's path.
    The objective defaults to accuracy: the paper's reward keeps the fastest exit on small models.
    `accuracy`: --accuracy NAME=A items (default: the held-out accuracies of layers/trained)."""
    import argparse
    import contextlib
    import io

    if not states and not trace:
        raise PisplitError("--latency-req: give the map's bandwidth states with --states or --bandwidth-trace")
    args = argparse.Namespace(model=model, devices=devices, states=states, bandwidth_trace=None if states else trace,
                              latency_req=latency_req, availability=False, link_latency=None, accuracy=list(accuracy or []), codec_table=None,
                              max_accuracy_loss=None, objective=objective, engine=engine, output=str(output), json=False)
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        run(args)
    return Path(output) / "configmap.json"
