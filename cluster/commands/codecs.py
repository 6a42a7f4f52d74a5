"""`pisplit codecs MODEL`: what each link codec does to each cut of a model, and plans that use them.

Without --devices: per cut, the bytes live across it, and per codec its compression ratio, encode and
decode milliseconds on this machine and the resulting transfer at --link (encode + bytes on the link
+ decode). With --devices KIND:1,host:1: every cut with every admissible codec for an edge device and
a host (partitioners.edge_host: predicted throughput and edge energy per frame); with KIND:N,host:1 the
head on the N edge devices (dp planner) and the tail on the host, every cut. With other --devices:
the dp planner with codec pricing (partitioners.cost.CostModel.cut_transfer), each stage's transfer
naming its codec. --plan-output writes the chosen plan (`mpirun -n N pisplit run PLAN --emulate`).

A table saved with --save is what `pisplit plan MODEL --codecs T.json` and `pisplit emulate MODEL --codecs
T.json` plan with (planning_codecs: seconds turned into the reference machine's, a LossBudget from
--max-accuracy-loss / --max-rel-error). With edge-host devices and --plan-output or --emulate, a best
candidate with everything on the host is run as the model behind an input-passing node on the edge
(save_edge_input_graph, beside the plan).
"""
from __future__ import annotations

from dataclasses import asdict

from rich.table import Table

from layers import load_model
from layers.errors import PisplitError

from ..output import console, human_bytes, print_json

DEFAULT_LINK = "2mbit"


def register(sub) -> None:
    p = sub.add_parser("codecs", help="link codecs per cut: ratio, encode/decode time, transfer time; edge-host and codec-priced plans")
    p.add_argument("model", metavar="MODEL", help="zoo name, trained model, .tflite file or pisplit .json graph")
    p.add_argument("--layer", metavar="L", help="only the cut after this node (name or index)")
    p.add_argument("--link", default=DEFAULT_LINK, metavar="BANDWIDTH", help=f"link bandwidth (default {DEFAULT_LINK}, a transmitter mode of Ko et al.)")
    p.add_argument("--link-latency", metavar="MS", type=float, help="per-message latency in ms (default: the devices' profile, 0.3 ms without --devices)")
    p.add_argument("--codecs", metavar="LIST", help="comma-separated codecs to measure (default: rle-huffman, zstd, lz4, fp16+zstd, int8+zstd, jpeg:90/50/20)")
    p.add_argument("--frames", type=int, default=2, help="sample frames the ratios and times are measured on (default 2)")
    p.add_argument("--accuracy-frames", type=int, default=100, help="held-out frames for lossy codecs' accuracy loss (trained models; default 100)")
    p.add_argument("--machine-speed", type=float, metavar="S", help="this machine's seconds per second of the reference profile, "
                   "stored in the table (default: measured on MODEL, cluster.host_speed; 1 takes this machine as the reference)")
    p.add_argument("--save", metavar="T.json", help="write the measured codec table (the planner's input)")
    p.add_argument("--table", metavar="T.json", help="use a codec table saved before instead of measuring")
    p.add_argument("--devices", metavar="KIND:N[,KIND:N]", help="plan with codecs: rpi3:1,host:1 edge and host; rpi3:4,host:1 Pis then host; rpi3:8 the dp planner")
    p.add_argument("--max-accuracy-loss", metavar="P", help="lossy codecs allowed when they lose at most P top-1 accuracy (e.g. 1%%)")
    p.add_argument("--max-rel-error", metavar="E", type=float, help="lossy codecs allowed when their error is at most E x max|x| of the cut")
    p.add_argument("--all", action="store_true", help="with edge-host devices: every cut and codec (default: raw and the best codec per cut)")
    p.add_argument("--plan-output", metavar="PLAN.json", help="write the chosen plan")
    p.add_argument("--emulate", type=int, metavar="FRAMES", help="also run the chosen plan on emulated devices for FRAMES frames "
                   "(mpirun, one rank per device, as `pisplit run --emulate`) and print its measured throughput")
    p.add_argument("--engine", default="numpy", help="engine the plan runs with (default numpy)")
    p.add_argument("--chart", metavar="FILE", help="also draw the codec table (.svg, .png or .html; needs pisplit[charts])")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def parse_fraction(text: str, what: str) -> float:
    """'1%' -> 0.01, '0.01' -> 0.01; PisplitError otherwise."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise PisplitError(f"{what} {text!r}: expected a fraction such as 1% or 0.01") from None
    if not 0.0 <= value <= 1.0:
        raise PisplitError(f"{what} {text!r}: must be between 0 and 100%")
    return value


def _cut_of(graph, layer: str | None) -> list | None:
    if layer is None:
        return None
    if layer.isdigit():
        index = int(layer)
        if not 0 <= index < len(graph) - 1:
            raise PisplitError(f"--layer {layer}: node index must be in 0..{len(graph) - 2} (the cut after it is sent)")
        return [index + 1]
    index = graph.node_index(layer)
    if index >= len(graph) - 1:
        raise PisplitError(f"--layer {layer}: the last node's output is the result, not a cut")
    return [index + 1]


def load_or_measure(args, graph):
    """The codec table the arguments name: loaded (--table) or measured now (and saved with --save)."""
    from partitioners.link_pricing import CodecTable

    from ..codec_table import DEFAULT_CODECS, check_table, measure_codec_table, this_machine_speed

    if args.frames < 1:
        raise PisplitError(f"--frames {args.frames}: must be at least 1")
    if args.table:
        table = check_table(CodecTable.load(args.table), graph)
    else:
        codecs = [c.strip() for c in args.codecs.split(",") if c.strip()] if args.codecs else list(DEFAULT_CODECS)
        status = console.status("measuring codecs ...") if not args.json else None
        if status:
            status.start()
        try:
            if args.machine_speed is not None and not args.machine_speed > 0:
                raise PisplitError(f"--machine-speed {args.machine_speed}: must be positive")
            if status:
                status.update("measuring this machine's speed ...")
            speed = args.machine_speed if args.machine_speed is not None else this_machine_speed(args.model, args.engine)
            table = measure_codec_table(graph, args.model, codecs, args.frames, args.accuracy_frames, _cut_of(graph, args.layer),
                                        progress=(lambda f, c: status.update(f"measuring codecs: frame {f + 1}, cut {c}")) if status else None,
                                        machine_speed=speed)
        finally:
            if status:
                status.stop()
        if args.save:
            table.save(args.save)
    wanted = _cut_of(graph, args.layer)
    if wanted is not None:
        from dataclasses import replace

        table = replace(table, cuts=tuple(c for c in table.cuts if c.cut in wanted))
    return table


def planning_codecs(path: str | None, graph, engine: str, max_accuracy_loss: str | None, max_rel_error: float | None):
    """(codec table in reference seconds, LossBudget) for `pisplit plan/emulate --codecs T.json`, or
    (None, None) without a table; one-line errors for a table of another model or a budget without one."""
    from partitioners.link_pricing import CodecTable, LossBudget, in_reference_seconds
    from partitioners.profiles import Calibration

    from ..codec_table import check_table

    if path is None:
        if max_accuracy_loss is not None or max_rel_error is not None:
            raise PisplitError("--max-accuracy-loss and --max-rel-error allow lossy link codecs: give the codec table with --codecs T.json")
        return None, None
    if max_rel_error is not None and not 0 <= max_rel_error < float("inf"):
        raise PisplitError(f"--max-rel-error {max_rel_error}: must be a non-negative number")
    loss = parse_fraction(max_accuracy_loss, "--max-accuracy-loss") if max_accuracy_loss is not None else None
    table = check_table(CodecTable.load(path), graph)
    if loss is not None and not any(s.accuracy_loss is not None for c in table.cuts for s in c.samples):
        raise PisplitError(f"--max-accuracy-loss: codec table {path} measured no accuracy (a trained model's held-out split "
                           "does; use --max-rel-error for other models)")
    budget = LossBudget(loss, max_rel_error) if loss is not None or max_rel_error is not None else None
    return in_reference_seconds(table, Calibration(engine)), budget


def lossy_links(plan) -> list:
    """The plan's links that carry a lossy codec: stage send codecs, and the input codec where rank 0
    hands frames to a data-parallel first stage's other replicas."""
    from partitioners.codecs import parse_codec
    from partitioners.vocabulary import StageMode

    out = [s.send_codec for s in plan.stages[:-1] if not parse_codec(s.send_codec).lossless]
    first = plan.stages[0]
    if first.mode == StageMode.DATA_PARALLEL and len(first.ranks) > 1 and not parse_codec(plan.input_codec).lossless:
        out.append(plan.input_codec)
    return out


def with_budget(model, budget):
    """CostModel `model` again with another LossBudget (the same graph, cluster, calibration, splits, table)."""
    return type(model)(model.graph, model.cluster, model.calibration, model.splits, codecs=model.codecs, codec_budget=budget)


def accuracy_checked(make, graph, model_spec: str, budget, frames: int = 200, plan=None):
    """The plan `make(budget)` gives (or `plan`, made so), its lossy links checked together on the held-out split (the
    table measured each cut alone; losses at several cuts add up): while the plan loses more top-1
    accuracy than budget.max_accuracy_loss, plan again with half the per-cut budget, and with lossless
    codecs only when halving changes nothing. The plan says what was checked (a note)."""
    from dataclasses import replace

    from partitioners.link_pricing import LossBudget

    from ..codec_table import plan_accuracy

    plan = make(budget) if plan is None else plan
    if budget is None or budget.max_accuracy_loss is None:
        return plan
    limit, per_cut, tried = budget.max_accuracy_loss, budget.max_accuracy_loss, []
    while lossy_links(plan):
        measured = plan_accuracy(graph, model_spec, plan, frames)
        if measured is None:
            return plan
        exact, coded, n = measured
        tried.append(f"{', '.join(lossy_links(plan))}: {(exact - coded) * 100:+.1f}%")
        if exact - coded <= limit:
            return replace(plan, notes=plan.notes + (f"lossy links checked together on {n} held-out frames: top-1 "
                                                     f"{exact * 100:.1f}% exact, {coded * 100:.1f}% coded (budget {limit * 100:g}%)",))
        before = [s.send_codec for s in plan.stages] + [plan.input_codec]
        per_cut /= 2
        plan = make(LossBudget(per_cut, budget.max_rel_error))
        if [s.send_codec for s in plan.stages] + [plan.input_codec] == before:
            plan = make(None)  # halving the per-cut budget did not change the codecs: lossless links only
    if not tried:
        return plan
    return replace(plan, notes=plan.notes + (f"lossless links: lossy ones lost more top-1 than {limit * 100:g}% together "
                                             f"({'; '.join(tried)})",))


def emulate_plan(plan, args) -> dict | None:
    """With --emulate N: the chosen plan run on emulated devices (cluster.commands.emulate.run_emulated);
    {"frames", "throughput_fps", "predicted_fps", "every_frame_once"}, else None."""
    if not args.emulate:
        return None
    import tempfile
    from pathlib import Path

    from .emulate import run_emulated

    if args.emulate < 1:
        raise PisplitError(f"--emulate {args.emulate}: at least 1 frame")
    with tempfile.TemporaryDirectory(prefix="pisplit-codecs-") as tmp:
        report = run_emulated(plan.save(Path(tmp) / "plan.json"), plan.n_ranks, args.emulate, Path(tmp) / "report.json", args.engine,
                              progress=False)
    return {"frames": args.emulate, "throughput_fps": report["throughput_fps"], "predicted_fps": plan.predicted_throughput_fps,
            "every_frame_once": report["every_frame_once"]}


def _print_emulated(run: dict | None) -> None:
    if run is not None:
        console.print(f"emulated: {run['throughput_fps']:.2f} frames/s measured over {run['frames']} frames, "
                      f"{run['predicted_fps']:.2f} predicted" + ("" if run["every_frame_once"] else " (frames lost or duplicated!)"))


def run(args) -> int:
    from partitioners.devices import parse_devices, parse_link_bps
    from partitioners.link_pricing import LossBudget

    graph = load_model(args.model)
    bandwidth = parse_link_bps(args.link)
    if args.link_latency is not None and args.link_latency < 0:
        raise PisplitError(f"--link-latency {args.link_latency}: must not be negative")
    budget = LossBudget(parse_fraction(args.max_accuracy_loss, "--max-accuracy-loss") if args.max_accuracy_loss else None, args.max_rel_error)
    entries = parse_devices(args.devices) if args.devices else None
    if args.emulate is not None and entries is None:
        raise PisplitError("--emulate runs the plan --devices makes: give --devices")
    if args.chart:
        from ..charts import check_chart_path

        check_chart_path(args.chart)  # before measuring, not after
    table = load_or_measure(args, graph)
    from partitioners.link_pricing import in_reference_seconds
    from partitioners.profiles import Calibration

    priced = in_reference_seconds(table, Calibration(args.engine))  # the planner's seconds: the reference machine's
    if args.chart:
        from ..codec_chart import codec_chart

        codec_chart(table, args.chart)
    if entries is None:
        latency = args.link_latency / 1e3 if args.link_latency is not None else 3e-4
        return print_codec_table(graph, table, bandwidth, latency, args, budget)
    from partitioners.cost import CostModel, make_cluster
    from partitioners.profiles import Calibration

    cluster = make_cluster(entries, bandwidth, args.link_latency / 1e3 if args.link_latency is not None else None)
    kinds = [d.kind for d in cluster.devices]
    if len(kinds) == 2 and kinds.count("host") == 1:
        return edge_host(graph, CostModel(graph, cluster, Calibration(args.engine)), priced, budget, args)
    if kinds.count("host") == 1:
        return cluster_host(graph, entries, cluster, priced, budget, args)
    if "host" in kinds:
        raise PisplitError("--devices: at most one host (the rest are edge devices; the head runs on them, the tail on the host)")
    from partitioners.codec_cost import codec_cost_model

    return codec_plan(graph, codec_cost_model(graph, cluster, Calibration(args.engine), codecs=priced, codec_budget=budget), args)


def lowest_quality_in_budget(cut, budget) -> tuple[str, float] | None:
    """(codec, ratio) of the jpeg codec of lowest quality factor (the most compression) whose measured
    accuracy loss is within the budget's max_accuracy_loss (the paper's Figure 4(b)/5(b))."""
    from partitioners.codecs import parse_codec

    if budget is None or budget.max_accuracy_loss is None:
        return None
    fits = [s for s in cut.samples if parse_codec(s.codec).kind == "jpeg" and s.accuracy_loss is not None
            and s.accuracy_loss <= budget.max_accuracy_loss]
    if not fits:
        return None
    s = min(fits, key=lambda s: parse_codec(s.codec).param)
    return s.codec, cut.raw_bytes / s.encoded_bytes


def print_codec_table(graph, table, bandwidth: float, latency: float, args, budget=None) -> int:
    from partitioners.link_pricing import choose_codec, link_seconds

    names = list(dict.fromkeys(s.codec for c in table.cuts for s in c.samples))
    several = any(c.tensors for c in table.cuts)  # a cut of several tensors: the cheapest codec per tensor too
    rows = []
    for c in table.cuts:
        raw_s = link_seconds(None, c.raw_bytes, c.messages, bandwidth, latency)
        cells = {}
        for s in c.samples:
            cells[s.codec] = {"ratio": c.raw_bytes / s.encoded_bytes, "encode_ms": s.encode_s * 1e3, "decode_ms": s.decode_s * 1e3,
                              "transfer_ms": link_seconds(s, c.raw_bytes, c.messages, bandwidth, latency) * 1e3,
                              "rel_error": s.max_rel_error, "accuracy_loss": s.accuracy_loss}
        best = min(cells, key=lambda k: cells[k]["transfer_ms"], default=None)
        in_budget = lowest_quality_in_budget(c, budget)
        per_tensor = None
        if c.tensors:  # what the planner would send each tensor with at this link (lossless, or within the budget)
            seconds, name = choose_codec(c, c.raw_bytes, c.messages, bandwidth, latency, budget=budget)
            per_tensor = {"codecs": name, "transfer_ms": seconds * 1e3}
        rows.append({"cut": c.cut, "after": c.name, "raw_bytes": c.raw_bytes, "raw_ms": raw_s * 1e3, "entropy_bits": c.entropy_bits,
                     "nonzero": c.nonzero, "codecs": cells, "best": best,
                     "jpeg_in_budget": None if in_budget is None else {"codec": in_budget[0], "ratio": in_budget[1]},
                     "tensors": [t.name for t in c.tensors] or None, "planned": per_tensor})
    if args.json:
        print_json({"model": table.model, "frames": table.frames, "n_frames": table.n_frames, "link_bps": bandwidth, "cuts": rows})
        return 0
    out = Table(title=f"{graph.name}: link codecs per cut at {bandwidth / 1e6:g} Mbit/s ({table.n_frames} frames: {table.frames}; "
                      f"times on this machine)")
    out.add_column("after")
    out.add_column("raw", justify="right")
    out.add_column("raw ms", justify="right")
    out.add_column("H bits", justify="right")
    out.add_column("non-zero", justify="right")
    for n in names:
        out.add_column(f"{n}\nratio enc/dec ms\n= transfer ms", justify="right")
    show_budget = budget is not None and budget.max_accuracy_loss is not None
    if show_budget:
        out.add_column(f"jpeg within\n{budget.max_accuracy_loss * 100:g}% loss", justify="right")
    if several:
        out.add_column("per tensor\n= transfer ms", justify="right")
    for r in rows:
        shown: list[str] = []
        for n in names:
            v = r["codecs"].get(n)
            if v is None:
                shown.append("-")
                continue
            mark = "[bold]" if n == r["best"] and v["transfer_ms"] < r["raw_ms"] else ""
            loss = "" if v["accuracy_loss"] is None else f"\ntop-1 {-v['accuracy_loss'] * 100:+.1f}%"
            shown.append(f"{mark}{v['ratio']:.1f}x {v['encode_ms']:.1f}/{v['decode_ms']:.1f}\n= {v['transfer_ms']:.1f}{loss}")
        if show_budget:
            q = r["jpeg_in_budget"]
            shown.append("-" if q is None else f"{q['codec']}\n{q['ratio']:.1f}x")
        if several:
            t = r["planned"]
            shown.append("-" if t is None else "\n".join(t["codecs"].split(";")) + f"\n= {t['transfer_ms']:.1f}")
        out.add_row(r["after"], human_bytes(r["raw_bytes"]), f"{r['raw_ms']:.1f}", f"{r['entropy_bits']:.2f}", f"{r['nonzero']:.2f}", *shown)
    console.print(out)
    console.print("[dim]transfer = encode + bytes on the link + decode; bold: the fastest codec where it beats raw. "
                  "Lossy codecs show the accuracy they lose on the held-out split where the model has one."
                  + (" Per tensor: the codec the planner would send each tensor of a cut of several with (one per tensor, "
                     "'a;b'; lossless, lossy ones only within --max-accuracy-loss / --max-rel-error)." if several else "") + "[/dim]")
    return 0


def edge_host(graph, model, table, budget, args) -> int:
    from partitioners.edge_host import POWER, best_candidate, edge_host_candidates, edge_host_plan, transmitter_watts

    candidates = edge_host_candidates(model, table, budget)
    best = best_candidate(candidates)
    runnable = best_candidate(candidates, runnable_only=True)
    shown = candidates
    if not args.all:  # per cut: raw and its fastest codec
        shown = []
        for cut in sorted({c.cut for c in candidates}):
            here = [c for c in candidates if c.cut == cut]
            shown += [c for c in here if c.codec == "raw"]
            coded = [c for c in here if c.codec != "raw"]
            if coded:
                shown.append(min(coded, key=lambda c: c.period_s))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="pisplit-codecs-") as tmp:
        # everything on the host runs as a plan of the model behind an input-passing node on the edge, saved beside
        # the plan (or, for --emulate alone, for the run)
        where = Path(args.plan_output).resolve().parent if args.plan_output else (Path(tmp) if args.emulate else None)
        one_float_input = len(graph.inputs) == 1 and graph.dtype(next(iter(graph.inputs))).kind == "f"
        chosen = best if best.runnable or (where is not None and one_float_input) else runnable
        spec = None
        if not chosen.runnable:
            spec = save_edge_input_graph(graph, where / f"{Path(args.plan_output).stem if args.plan_output else 'plan'}.edge-input.json")
        plan = edge_host_plan(model, chosen, args.model, args.engine, spec)
        if args.plan_output:
            plan.save(args.plan_output)
        emulated = emulate_plan(plan, args)
    if args.json:
        print_json({"model": graph.name, "link_bps": model.cluster.link_bandwidth_bps, "candidates": [
            {**asdict(c), "throughput_fps": c.throughput_fps, "runnable": c.runnable} for c in shown],
            "best": {"cut": best.cut, "codec": best.codec}, "plan": plan.to_dict(), "emulated": emulated})
        return 0
    edge = next(d.kind for d in model.cluster.devices if d.kind != "host")
    out = Table(title=f"{graph.name}: {edge} (edge) + host at {model.cluster.link_bandwidth_bps / 1e6:g} Mbit/s, "
                      f"transmitter {transmitter_watts(model.cluster.link_bandwidth_bps) * 1e3:.1f} mW, {edge} {POWER[edge][0]}/{POWER[edge][1]} W idle/busy")
    for col in ("cut after", "codec", "sent", "edge ms", "encode ms", "link ms", "decode ms", "host ms", "throughput fps", "edge mJ/frame", "top-1 change"):
        out.add_column(col, justify="left" if col in ("cut after", "codec") else "right")
    for c in shown:
        style = "bold" if c is best else ("dim" if not c.feasible else None)
        acc = "" if c.accuracy_loss is None else f"{-c.accuracy_loss * 100:+.1f}%"
        out.add_row(c.after if c.cut < model.n else "(all on edge)", c.codec, human_bytes(c.sent_bytes), f"{c.edge_s * 1e3:.1f}",
                    f"{c.encode_s * 1e3:.1f}", f"{c.transfer_s * 1e3:.1f}", f"{c.decode_s * 1e3:.1f}", f"{c.host_s * 1e3:.1f}",
                    f"{c.throughput_fps:.2f}", f"{c.edge_energy_j * 1e3:.1f}", acc, style=style)
    console.print(out)
    best_where = ("everything on the edge" if best.cut == model.n else
                  f"everything on the host, input sent with {best.codec}" if best.cut == 0 else f"cut after {best.after} with {best.codec}")
    console.print(f"best: {best_where}: {best.throughput_fps:.2f} frames/s, "
                  f"{best.edge_energy_j * 1e3:.1f} mJ per frame on the edge" + ("" if chosen is best else
                  " (all on the host runs with --plan-output or --emulate: the edge passes the input on; the plan is the best "
                  "cut of the model itself: " +
                  ("everything on the edge)" if runnable.cut == model.n else f"after {runnable.after} with {runnable.codec})")))
    if spec:
        console.print(f"all on the host: the plan runs {spec}, {graph.name} behind node edge_input (the edge's stage)")
    if args.plan_output:
        console.print(f"wrote the plan to {args.plan_output} (run it: mpirun -n {plan.n_ranks} pisplit run {args.plan_output} --emulate)")
    _print_emulated(emulated)
    return 0


def save_edge_input_graph(graph, path) -> str:
    """Save partitioners.edge_host.edge_input_graph(graph) (structure .json and weights .npz) at `path`;
    returns its absolute path, the plan's model."""
    from layers.serialize import save_graph
    from partitioners.edge_host import edge_input_graph

    saved, _ = save_graph(edge_input_graph(graph), path)
    return str(saved.resolve())


def plan_with_host(args, graph, model) -> int:
    """`pisplit plan MODEL --devices KIND:1,host:1` (or KIND:N,host:1): the edge-host planning of
    `pisplit codecs --devices` (every cut with every admissible codec, throughput and edge energy; or
    the head planned on the edge devices and the tail on the host), with the codec table of --codecs
    (raw links without one). The frames' source, rank 0, stays on the edge."""
    from types import SimpleNamespace

    shim = SimpleNamespace(model=args.model, engine=args.engine, json=args.json, plan_output=args.output, emulate=None, all=False, layer=None)
    if len(model.cluster.devices) == 2:
        return edge_host(graph, model, model.codecs, model.codec_budget, shim)
    entries = [(d.kind, 1, d.memory_bytes) for d in model.cluster.devices]
    return cluster_host(graph, entries, model.cluster, model.codecs, model.codec_budget, shim)


def host_plan(graph, model_spec: str, devices: str, link_bps: float, engine: str, table=None, budget=None):
    """For `pisplit emulate --devices KIND:1,host:1` (or KIND:N,host:1): the best edge-host plan (every
    cut and admissible codec), or the head on the edge devices and the tail on the host; None when
    `devices` hold no host or only hosts. Everything on the host runs as edge_input_graph, saved in a
    private temporary folder removed when the process ends."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from partitioners.cost import CostModel, make_cluster
    from partitioners.devices import parse_devices
    from partitioners.edge_host import (best_candidate, cluster_host_candidates, cluster_host_plan, edge_host_candidates,
                                        edge_host_plan)
    from partitioners.profiles import Calibration

    entries = parse_devices(devices)
    cluster = make_cluster(entries, link_bps)
    kinds = [d.kind for d in cluster.devices]
    if kinds.count("host") != 1 or len(kinds) < 2:
        return None
    if len(kinds) == 2:
        model = CostModel(graph, cluster, Calibration(engine))
        candidates = edge_host_candidates(model, table, budget)
        best = best_candidate(candidates)
        spec = None
        if not best.runnable:
            if len(graph.inputs) != 1 or graph.dtype(next(iter(graph.inputs))).kind != "f":
                best = best_candidate(candidates, runnable_only=True)
            else:
                folder = tempfile.mkdtemp(prefix="pisplit-edge-input-")
                atexit.register(shutil.rmtree, folder, True)
                spec = save_edge_input_graph(graph, Path(folder) / "model.json")
        return edge_host_plan(model, best, model_spec, engine, spec)
    edge = make_cluster([e for e in entries if e[0] != "host"], link_bps)
    host = make_cluster([e for e in entries if e[0] == "host"], link_bps)
    candidates = cluster_host_candidates(graph, edge, host, Calibration(engine), table, budget)
    if not candidates:
        raise PisplitError("cluster + host: no cut whose head fits the edge devices")
    return cluster_host_plan(graph, max(candidates, key=lambda c: c.throughput_fps), host, model_spec, engine)


def cluster_host(graph, entries, cluster, table, budget, args) -> int:
    from partitioners.cost import make_cluster
    from partitioners.edge_host import cluster_host_candidates, cluster_host_plan
    from partitioners.profiles import Calibration

    edge = make_cluster([e for e in entries if e[0] != "host"], cluster.link_bandwidth_bps, cluster.link_latency_s)
    host = make_cluster([e for e in entries if e[0] == "host"], cluster.link_bandwidth_bps, cluster.link_latency_s)
    cuts = [c.cut for c in table.cuts if c.cut > 0] if args.layer else None
    candidates = cluster_host_candidates(graph, edge, host, Calibration(args.engine), table, budget, cuts)
    if not candidates:
        raise PisplitError("cluster + host: no cut whose head fits the edge devices")
    best = max(candidates, key=lambda c: c.throughput_fps)
    plan = cluster_host_plan(graph, best, host, args.model, args.engine)
    if args.plan_output:
        plan.save(args.plan_output)
    emulated = emulate_plan(plan, args)
    if args.json:
        print_json({"model": graph.name, "candidates": [{"cut": c.cut, "after": c.after, "codec": c.codec, "head_stages": len(c.head.stages),
                                                          "head_devices": c.head.n_ranks, "head_period_s": c.head_period_s,
                                                          "host_period_s": c.host_period_s, "throughput_fps": c.throughput_fps}
                                                         for c in candidates], "plan": plan.to_dict(), "emulated": emulated})
        return 0
    out = Table(title=f"{graph.name}: head on {len(edge.devices)} edge device(s) (dp planner), tail on the host, "
                      f"at {cluster.link_bandwidth_bps / 1e6:g} Mbit/s")
    for col in ("cut after", "codec", "head stages", "head devices", "head period ms", "host period ms", "throughput fps"):
        out.add_column(col, justify="left" if col in ("cut after", "codec") else "right")
    for c in candidates:
        out.add_row(c.after, c.codec, str(len(c.head.stages)), str(c.head.n_ranks), f"{c.head_period_s * 1e3:.1f}",
                    f"{c.host_period_s * 1e3:.1f}", f"{c.throughput_fps:.2f}", style="bold" if c is best else None)
    console.print(out)
    console.print(f"best: cut after {best.after} with {best.codec}: {best.throughput_fps:.2f} frames/s on {plan.n_ranks} devices")
    if args.plan_output:
        console.print(f"wrote the plan to {args.plan_output} (run it: mpirun -n {plan.n_ranks} pisplit run {args.plan_output} --emulate)")
    _print_emulated(emulated)
    return 0


def codec_plan(graph, model, args) -> int:
    from partitioners.planners import make_plan

    plan = make_plan(graph, model, "dp", "throughput", args.model, args.engine)  # with the table: each link's codec (build_plan)
    plan = accuracy_checked(lambda b: make_plan(graph, with_budget(model, b), "dp", "throughput", args.model, args.engine), graph,
                            args.model, model.codec_budget, plan=plan)  # several lossy links: checked together
    if args.plan_output:
        plan.save(args.plan_output)
    emulated = emulate_plan(plan, args)
    if args.json:
        print_json({"plan": plan.to_dict(), "emulated": emulated})
        return 0
    out = Table(title=f"{graph.name}: dp plan with link codecs on {plan.n_ranks} devices at {plan.link_bandwidth_bps / 1e6:g} Mbit/s")
    for col in ("stage", "ranks", "nodes", "sends", "codec", "compute ms", "comm ms"):
        out.add_column(col, justify="right" if col.endswith("ms") else "left")
    for s in plan.stages:
        out.add_row(str(s.index), ",".join(map(str, s.ranks)), f"{graph.nodes[s.node_start].name}..{graph.nodes[s.node_stop - 1].name}",
                    human_bytes(s.send_bytes) if s.send_bytes else "-", s.send_codec if s.index < len(plan.stages) - 1 else "-",
                    f"{s.predicted.compute_s * 1e3:.1f}", f"{s.predicted.comm_s * 1e3:.1f}")
    console.print(out)
    console.print(f"input frames from rank 0 to the first stage's other ranks: {plan.input_codec}; "
                  f"predicted throughput {plan.predicted_throughput_fps:.2f} frames/s")
    for note in plan.notes:
        console.print(f"[dim]note: {note}[/dim]")
    if args.plan_output:
        console.print(f"wrote the plan to {args.plan_output}")
    _print_emulated(emulated)
    return 0

