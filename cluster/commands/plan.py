"""`pisplit plan MODEL`: pipeline stages, devices and split kinds for a cluster, from the cost model."""
from __future__ import annotations

from collections import Counter

from rich.table import Table

from layers import load_model
from layers.engine import ENGINES
from layers.errors import PisplitError
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices, parse_link_bps
from partitioners.planners import PLANNERS, InfeasiblePlan, compare_plans, make_plan
from partitioners.profiles import Calibration, Profile
from partitioners.vocabulary import NO_SPLIT, StageMode

from ..output import console, human_bytes, print_json


def register(sub) -> None:
    p = sub.add_parser("plan", help="plan pipeline stages and layer splits of a model for a cluster")
    p.add_argument("model", metavar="MODEL", help="zoo name, .tflite file or pisplit .json graph")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--devices", metavar="KIND:N[,KIND:N]", help="devices, e.g. rpi3:4 or rpi3:4,rpi4:2 (KIND:N@512M sets memory)")
    where.add_argument("--inventory", metavar="FILE", help="an Ansible-style inventory (INI, YAML or `ansible-inventory --list` "
                       "JSON): one rank per slot of each host, of its device kind")
    p.add_argument("--hosts", metavar="NAMES", help="with --inventory: only these hosts or groups (comma-separated)")
    p.add_argument("--link", metavar="BANDWIDTH", help="link bandwidth, e.g. 94mbit or 1gbit (default: a measured link "
                   "from --profile, else the slowest device's Ethernet)")
    p.add_argument("--link-latency", metavar="MS", type=float, help="per-message link latency in ms (default: measured or the device profile's)")
    p.add_argument("--objective", choices=("throughput", "latency"), default="throughput", help="what to optimise (default throughput)")
    p.add_argument("--planner", choices=PLANNERS, default="dp", help="dp (default, optimal), paper, memory or single")
    p.add_argument("--compare", action="store_true", help="every planner side by side")
    p.add_argument("--engine", choices=[e for e in ENGINES if e != "auto"], default="numpy", help="engine the plan runs with (default numpy)")
    p.add_argument("--profile", metavar="P.json", action="append", default=[],
                   help="a profile from `pisplit profile` (repeatable): one measured on a Pi replaces that kind's shipped profile")
    p.add_argument("--output", metavar="PLAN.json", help="write the plan here")
    p.add_argument("--json", action="store_true", help="print the plan document (with --compare: every planner's)")
    p.add_argument("--candidates", action="store_true", help="with a host device and --json: print the edge-host candidates "
                   "document (every cut and codec, the best, the plan) instead of the plan")
    p.add_argument("--chart", metavar="FILE", help="draw the plan into FILE (.svg, .png or .html): devices and links, "
                   "each stage's layers and splits, predicted time and memory (needs pip install 'pisplit[charts]')")
    p.add_argument("--latency-req", metavar="MS", help="Edgent (issue 16): for a branchy model on one device and a host, each "
                   "exit's best cut and the most accurate one meeting this latency, e.g. 100ms")
    p.add_argument("--accuracy", metavar="NAME=A", action="append", default=[],
                   help="with --latency-req: an exit's accuracy (default: layers/trained/manifest.json's held-out accuracy)")
    p.add_argument("--codecs", "--codec-table", dest="codec_table", metavar="T.json",
                   help="a codec table of MODEL (pisplit codecs MODEL --save T.json): the planner prices every link with it and "
                        "names a codec per cut in the plan (lossless ones; lossy ones only within --max-accuracy-loss / "
                        "--max-rel-error); with --latency-req searched too")
    p.add_argument("--max-accuracy-loss", metavar="P", help="with --codecs: lossy codecs that lose at most P top-1 accuracy (e.g. 1%%) "
                   "on the held-out split the table measured")
    p.add_argument("--max-rel-error", metavar="E", type=float, help="with --codecs: lossy codecs whose error is at most E x max|x| of "
                   "each cut tensor (e.g. 0.01)")
    p.add_argument("--exit", action="append", default=[], metavar="NAME=T",
                   help="early exit (repeatable, as pisplit run --exit): the plan carries it, and its predicted throughput counts "
                        "each exit's share of frames (from --exit-shares, else measured on a trained model's held-out split)")
    p.add_argument("--exit-shares", metavar="CAL.json", help="with --exit: the shares measured by pisplit calibrate MODEL --exit ... --output CAL.json")
    p.set_defaults(func=run)


def inventory_devices(path: str, hosts: str | None) -> tuple[list, list]:
    """(kind, 1, memory) entries and host names, one per MPI slot of each chosen inventory host.

    Kind and memory come from what `pisplit provision` measured on a real Pi (its facts), else from
    the host's device= kind; memory None means the kind's nominal memory.
    """
    from ..facts import host_devices
    from ..inventory import read_inventory

    inventory = read_inventory(path)
    chosen = {h.name for h in inventory.select(hosts)}
    if not chosen:
        raise PisplitError(f"inventory {path}: no hosts selected")
    entries, names = [], []
    for device in host_devices(inventory):
        if device.host not in chosen:
            continue
        memory = device.memory_bytes if device.source == "facts" else None
        for _ in range(device.slots):
            entries.append((device.kind, 1, memory))
            names.append(device.host)
    return entries, names


def build_model(args, graph) -> CostModel:
    """The cost model of `graph` on the devices, link and profiles the arguments name."""
    profiles = [Profile.load(p) for p in args.profile]
    if args.inventory:
        entries, hosts = inventory_devices(args.inventory, args.hosts)
    else:
        if args.hosts:
            raise PisplitError("--hosts selects inventory hosts: use it with --inventory")
        entries, hosts = parse_devices(args.devices), None
    measured = min((l for p in profiles for l in p.links), key=lambda l: l.bandwidth_bps, default=None)
    link = parse_link_bps(args.link) if args.link else (measured.bandwidth_bps if measured else None)
    latency = args.link_latency / 1e3 if args.link_latency is not None else (measured.latency_s if measured else None)
    if latency is not None and latency < 0:
        raise PisplitError(f"--link-latency {args.link_latency}: must not be negative")
    cluster = make_cluster(entries, link, latency, hosts)
    calibration = Calibration(args.engine, profiles)
    if args.latency_req:  # Edgent reads the table itself (configmap)
        return CostModel(graph, cluster, calibration)
    from .codecs import planning_codecs

    table, budget = planning_codecs(args.codec_table, graph, args.engine, args.max_accuracy_loss, args.max_rel_error)
    from partitioners.codec_cost import codec_cost_model  # the codecs' buffers in the memory the planner sees

    return codec_cost_model(graph, cluster, calibration, codecs=table, codec_budget=budget)


def run(args) -> int:
    if args.chart:
        from ..charts import check_chart_path

        check_chart_path(args.chart)  # a missing extra or a bad name, before any planning
    graph = load_model(args.model)
    if args.exit or args.exit_shares:
        from .exits import check_plan_exit_arguments

        check_plan_exit_arguments(args, graph)  # a bad --exit fails before any planning
    model = build_model(args, graph)
    if args.latency_req:
        from .configmap import plan_latency_req

        return plan_latency_req(args, graph, model)
    kinds = [d.kind for d in model.cluster.devices]
    if kinds.count("host") == 1 and len(kinds) > 1 and args.planner == "dp" and not (args.compare or args.chart or args.exit or args.exit_shares):
        from .codecs import plan_with_host  # edge devices and a host (issue 15): rank 0, the frames' source, stays on the edge

        if not args.json or args.candidates:
            return plan_with_host(args, graph, model)
        import contextlib
        import io
        import json

        out = io.StringIO()  # --json prints the plan, as for every other plan (the candidates: --candidates)
        with contextlib.redirect_stdout(out):
            code = plan_with_host(args, graph, model)
        print_json(json.loads(out.getvalue())["plan"])
        return code
    if args.candidates:
        raise PisplitError("--candidates: the edge-host candidates of one host beside edge devices (--devices KIND:N,host:1, "
                           "the dp planner, no --compare/--chart/--exit); print the plan with --json")
    if args.compare:
        results = compare_plans(graph, model, args.objective, args.model, args.engine)
        chosen = next((r.plan for r in results if not isinstance(r, InfeasiblePlan) and r.planner == args.planner), None)
        if args.output and chosen is not None:
            chosen.save(args.output)
        if args.json:
            print_json({"model": graph.name, "objective": args.objective, "plans": [
                {"planner": name, "error": str(r)} if isinstance(r, InfeasiblePlan) else {"planner": name, "plan": r.plan.to_dict()}
                for name, r in zip(PLANNERS, results)]})
        else:
            print_comparison(graph, model, results, args)
            if args.output and chosen is not None:
                console.print(f"wrote the {args.planner} plan to {args.output}")
        if args.output and chosen is None:
            raise PisplitError(f"planner {args.planner}: no feasible plan to write to {args.output}")
        if args.chart:
            if chosen is None:
                raise PisplitError(f"planner {args.planner}: no feasible plan to draw into {args.chart}")
            _chart(args, chosen, graph)
        return 0
    plan = make_plan(graph, model, args.planner, args.objective, args.model, args.engine)
    if model.codec_budget is not None and model.codec_budget.max_accuracy_loss is not None:
        from .codecs import accuracy_checked, with_budget  # lossy links checked together on the held-out split

        plan = accuracy_checked(lambda b: make_plan(graph, with_budget(model, b), args.planner, args.objective, args.model, args.engine),
                                graph, args.model, model.codec_budget, plan=plan)
    if args.exit or args.exit_shares:
        from .exits import plan_with_exits

        plan = plan_with_exits(args, graph, model, plan)
        plan = exit_latency(graph, model, plan)
    if args.output:
        plan.save(args.output)
    if args.json:
        print_json(plan.to_dict())
    else:
        print_plan(graph, plan)
        if args.output:
            console.print(f"wrote {args.output}")
    if args.chart:
        _chart(args, plan, graph)
    return 0


def exit_latency(graph, model, plan):
    """`plan` (with --exit) with its predicted latency counting the exits' shares: a frame answered at
    an exit has the latency up to that exit (partitioners.exits.latency_with_exits), and a note saying
    what it is without them. Unchanged when the shares are unknown."""
    from dataclasses import replace

    from partitioners.exits import latency_with_exits, resolve_exits

    if not plan.exits or any(e.exit_fraction is None for e in plan.exits):
        return plan
    points = resolve_exits(graph, {e.name: e.threshold for e in plan.exits})
    share = {e.name: e.exit_fraction for e in plan.exits}
    latency = latency_with_exits(model, plan, points, [share[p.name] for p in points])
    note = f"predicted mean latency counts the exits: {latency * 1e3:.1f} ms (without exits {plan.predicted_latency_s * 1e3:.1f} ms)"
    return replace(plan, predicted_latency_s=latency, notes=(*plan.notes, note)).validate()


def _chart(args, plan, graph) -> None:
    from ..charts import plan_chart

    plan_chart(plan, graph, args.chart)
    if not args.json:
        console.print(f"wrote the chart {args.chart}")


def _kinds(stage) -> str:
    if stage.mode == StageMode.DATA_PARALLEL:
        return f"data-parallel x{len(stage.ranks)}"
    if stage.mode != StageMode.SPLIT:
        return "-"
    counts = Counter(g.kind for g in stage.segments if g.kind != NO_SPLIT)
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in counts.items()) or "none"


def print_plan(graph, plan) -> None:
    """The plan as a table: stage, ranks/hosts, node range, split kinds, predicted times, memory; then
    the layout of every segment output a chain keeps on its parts."""
    table = Table(title=f"{graph.name}: {plan.planner} plan for {plan.objective} on {plan.n_ranks} devices, "
                        f"link {plan.link_bandwidth_bps / 1e6:g} Mbit/s")
    for col in ("stage", "ranks (hosts)", "nodes", "split kinds", "compute ms", "comm ms", "memory / device"):
        table.add_column(col, justify="right" if col.endswith("ms") else "left")
    for s in plan.stages:
        devices = [plan.devices[r] for r in s.ranks]
        hosts = {d.host for d in devices if d.host}
        kinds = " + ".join(f"{n} {k}" if n > 1 else k for k, n in Counter(d.kind for d in devices).items())
        ranks = ",".join(map(str, s.ranks)) + f": {kinds}" + (f" ({','.join(sorted(hosts))})" if hosts else "")
        nodes = f"[{s.node_start},{s.node_stop}) {graph.nodes[s.node_start].name}..{graph.nodes[s.node_stop - 1].name}"
        p = s.predicted
        worst = max(s.ranks, key=lambda r: p.memory_bytes.get(r, 0) / plan.devices[r].memory_bytes)
        memory = f"{human_bytes(p.memory_bytes.get(worst, 0))} / {human_bytes(plan.devices[worst].memory_bytes)}"
        table.add_row(str(s.index), ranks, nodes, _kinds(s), f"{p.compute_s * 1e3:.1f}", f"{p.comm_s * 1e3:.1f}", memory)
    console.print(table)
    from partitioners.layouts import produced
    from partitioners.splits import split_segment

    for s in plan.stages:  # where a chain keeps a segment's output: the pieces its parts hold
        for g in (g for g in s.segments if g.output_layout == "parts"):
            split = split_segment(graph, g.node_start, g.node_stop, g.kind, g.sizes, g.options)
            console.print(f"stage {s.index} keeps {graph.nodes[g.node_stop - 1].name} ({g.kind}) on its parts: "
                          f"{produced(split, g.ranks).describe()}")
    console.print(f"predicted throughput {plan.predicted_throughput_fps:.2f} frames/s, latency {plan.predicted_latency_s * 1e3:.1f} ms per frame")
    for note in plan.notes:
        console.print(f"[dim]note: {note}[/dim]")


def print_comparison(graph, model, results, args) -> None:
    """Every planner's predicted throughput and latency side by side."""
    table = Table(title=f"{graph.name} on {len(model.cluster.devices)} devices, link "
                        f"{model.cluster.link_bandwidth_bps / 1e6:g} Mbit/s, objective {args.objective}")
    for col in ("planner", "stages", "devices", "split kinds", "throughput fps", "latency ms", "vs single"):
        table.add_column(col, justify="left" if col in ("planner", "split kinds") else "right")
    single = next((r for r in results if not isinstance(r, InfeasiblePlan) and r.planner == "single"), None)
    for name, r in zip(PLANNERS, results):
        if isinstance(r, InfeasiblePlan):
            table.add_row(name, "-", "-", f"[red]infeasible[/red]: {r}", "-", "-", "-")
            continue
        kinds = Counter(g.kind for s in r.plan.stages for g in s.segments if g.kind != NO_SPLIT)
        kinds.update(["data-parallel"] * sum(1 for s in r.plan.stages if s.mode == StageMode.DATA_PARALLEL))
        ratio = f"{r.throughput_fps / single.throughput_fps:.2f}x" if single and args.objective == "throughput" else (
            f"{single.latency_s / r.latency_s:.2f}x" if single else "-")
        table.add_row(name, str(len(r.plan.stages)), str(r.plan.n_ranks), ", ".join(sorted(kinds)) or "-",
                      f"{r.throughput_fps:.2f}", f"{r.latency_s * 1e3:.1f}", ratio)
    console.print(table)
