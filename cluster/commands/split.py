"""`mpirun -n K pisplit split MODEL LAYER --kind KIND`: one layer split K ways, checked and timed.

Every rank builds the split from shapes and only its own part's weights; rank 0 makes a seeded random
input and runs the unsplit segment (same engine) for the reference; then rank 0's unsplit run and
the split take turns, `--repeat` times, and each part is timed once more alone. Rank 0 reports the
largest difference to the unsplit output, per-part compute and communication times, the speedup and
the compute-only speedup (parts timed alone). The segment is the layer plus its followers (the nodes
that keep its split without communication) unless `--no-followers`; the output names them.

No wait is without a bound (cluster.watched): a rank that stops or hangs in any barrier, transfer or
gather is named in one line by the rank waiting on it, after --stall-timeout, and the job ends.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
from rich.table import Table

from layers import load_model
from layers.engine import ENGINES, make_engine
from layers.errors import PisplitError
from layers.quant import random_values
from partitioners.split_parts import SPLIT_KINDS
from partitioners.splits import split_layer, split_segment
from partitioners.vocabulary import NO_SPLIT, SplitKind

from ..output import console, human_bytes, print_json

TOLERANCE = 1e-4  # rtol and atol of the check: summation order differs between parts and whole


def register(sub) -> None:
    p = sub.add_parser("split", help="under mpirun -n K: run one layer split K ways, check it against the unsplit layer, time it")
    p.add_argument("model", metavar="MODEL", help="zoo name, .tflite file or pisplit .json graph")
    p.add_argument("layer", metavar="LAYER", help="the node to split (see `pisplit show MODEL`)")
    p.add_argument("--kind", required=True, metavar="KIND[,KIND..]", help=f"split kind ({', '.join(SPLIT_KINDS)}); with "
                   "--chain, one per chained layer (the last one repeats)")
    p.add_argument("--chain", type=int, metavar="N", help="split N consecutive layers from LAYER, each segment keeping its "
                   "output on its ranks for the next where it can (row strips exchange halo rows, fc-output feeds fc-input "
                   "in place); nodes no kind splits run on rank 0")
    p.add_argument("--star", action="store_true", help="with --chain: gather every segment's output to rank 0 and scatter "
                   "it again (the layout-free way, for comparison)")
    p.add_argument("--sizes", metavar="S1,S2,..", help="one per rank: sizes summing to the axis cut, else weights "
                   "(proportional sizes, e.g. device speeds); default equal parts")
    p.add_argument("--last", "--through", dest="last", metavar="NODE", help="end the segment at this node (fused-tiles: the run's last layer)")
    p.add_argument("--no-followers", action="store_true", help="split the layer alone, without its followers")
    p.add_argument("--grid", metavar="RxC", help="fused-tiles: a rows x columns grid of tiles (R*C ranks)")
    p.add_argument("--axis", default="rows", choices=("rows", "cols", "depth"), help="spatial axis cut by conv-spatial and fused-tiles bands")
    p.add_argument("--repeat", type=int, default=5, help="timed runs (median reported; default 5)")
    p.add_argument("--frames", type=int, help="data-parallel: frames per run (default 4 per rank)")
    p.add_argument("--engine", choices=ENGINES, default="numpy", help="engine of every part and of the unsplit reference (default numpy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--json", action="store_true", help="print a JSON document (rank 0)")
    p.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                   help="a wait with no progress for this long probes the rank it waits for and, if that rank does not answer, "
                        "names it and ends the job (default 20; loading the model gets three times as long; 0: never)")
    p.add_argument("--fail", metavar="RANK@POINT[:MODE]", help="fault injection for tests and demos: rank RANK fails at POINT, "
                   "one of load, start, end, exit (after the final gather, before MPI's shutdown) or N (before its N-th run, 0 the warm-up); MODE error (default), stop (SIGSTOP) or kill")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import transport  # imported here: loading mpi4py starts MPI

    from ..watched import guard_exit

    def body(comm, rank: int) -> int:
        status = _run(args, comm, rank, transport)
        if comm.Get_size() > 1:
            guard_exit(rank)  # this rank's work is done: MPI's shutdown is bounded too (cluster.watched)
        return status

    return transport.on_every_rank(body, args.debug)


def parse_sizes(text: str, n_ranks: int) -> list:
    """'3,2,2' -> [3, 2, 2]; '1.5,1' -> [1.5, 1.0]. Raises PisplitError unless there is one per rank."""
    try:
        values = [float(v) if any(c in v for c in ".eE") else int(v) for v in text.split(",")]
    except ValueError:
        raise PisplitError(f"--sizes {text!r}: expected numbers separated by commas") from None
    if len(values) != n_ranks:
        raise PisplitError(f"--sizes {text!r}: {len(values)} values for {n_ranks} ranks (one per rank)")
    return values


def parse_grid(text: str, n_ranks: int) -> tuple[int, int]:
    """'2x3' -> (2, 3); raises PisplitError unless rows * columns equals the rank count."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PisplitError(f"--grid {text!r}: expected ROWSxCOLS, e.g. 2x2") from None
    if rows * cols != n_ranks:
        raise PisplitError(f"--grid {text}: {rows * cols} tiles for {n_ranks} ranks (one tile per rank)")
    return rows, cols


def build_split(graph, args, n_ranks: int):
    """The split the arguments ask for, with n_ranks parts; says how --sizes was read."""
    options = dict(last=args.last, followers=not args.no_followers, axis=args.axis)
    if args.grid:
        if args.kind != SplitKind.FUSED_TILES:
            raise PisplitError(f"--grid applies to fused-tiles, not {args.kind}")
        if args.sizes:
            raise PisplitError("--grid makes equal tiles; leave out --sizes")
        return split_layer(graph, args.layer, args.kind, n_ranks, grid=parse_grid(args.grid, n_ranks), **options), None
    if not args.sizes:
        return split_layer(graph, args.layer, args.kind, n_ranks, **options), None
    values = parse_sizes(args.sizes, n_ranks)
    if args.kind == SplitKind.DATA_PARALLEL:
        return split_layer(graph, args.layer, args.kind, [float(v) for v in values], **options), "frame shares"
    probe = split_layer(graph, args.layer, args.kind, n_ranks, **options)
    if all(isinstance(v, int) for v in values) and sum(values) == sum(probe.sizes):
        return split_layer(graph, args.layer, args.kind, values, **options), "sizes"
    return split_layer(graph, args.layer, args.kind, [float(v) for v in values], **options), "weights"


def _median(values) -> float:
    return float(statistics.median(values)) if values else 0.0


def _watch(args, comm):
    """The run's bounded collectives (cluster.watched) and its --fail, checked (errors agreed later)."""
    from ..watched import DEFAULT_STALL_S, CommandWatch, parse_command_fault

    seconds = DEFAULT_STALL_S if args.stall_timeout is None else args.stall_timeout
    error = fail = None
    try:
        if not seconds >= 0:
            raise PisplitError(f"--stall-timeout {args.stall_timeout}: must be a number of seconds >= 0 (0: never)")
        fail = parse_command_fault(args.fail, comm.Get_size())
    except PisplitError as exc:
        error, seconds = str(exc), DEFAULT_STALL_S
    return CommandWatch(comm, seconds, fail, "run"), error


def _runner_hooks(watch, what: str):
    """split_exec hooks whose waits are under the run's stall bound; a stalled transfer is named as
    "no 'LABEL' transfer in run K of WHAT with PEERS" (`what`: the split or chain the run is of)."""
    from ..split_exec import Hooks

    def describe(peers: list, label: str) -> str:
        names = ", ".join(watch.name(p) for p in dict.fromkeys(peers)) or "its peers"
        return f"no '{label}' transfer in run {watch.step} of {what} with {names}"

    hooks = Hooks()
    hooks.watch = watch.watch(describe)
    return hooks


def _run(args, comm, rank: int, transport) -> int:
    from ..split_exec import SplitRunner

    from ..runtime import FAULT_AT_END, FAULT_AT_LOAD, FAULT_AT_START
    from ..watched import FAULT_AT_EXIT

    if args.chain is not None:
        return _run_chain(args, comm, rank, transport)

    n_ranks = comm.Get_size()
    watch, error = _watch(args, comm)
    split = runner = how = None
    try:
        if error is not None:
            raise PisplitError(error)
        if args.repeat < 1:
            raise PisplitError(f"--repeat {args.repeat}: must be at least 1")
        if args.kind not in SPLIT_KINDS:
            raise PisplitError(f"--kind {args.kind}: unknown split kind (known: {', '.join(SPLIT_KINDS)}; several only with --chain)")
        if args.star:
            raise PisplitError("--star applies to --chain")
        graph = load_model(args.model)
        split, how = build_split(graph, args, n_ranks)
    except (PisplitError, OSError) as exc:
        error = str(exc)
    watch.at(FAULT_AT_LOAD)
    watch.agree(error, "the end of loading")
    watch.learn_hosts()
    # the split's transfers on a communicator of their own (their tags never meet the watch's pings)
    work = transport.split_communicator_watched(comm, 0, rank, "the split's communicator", watch.seconds, watch.name, watch.follow_s())

    try:
        runner = SplitRunner(work, split, args.engine, hooks=_runner_hooks(watch, f"the {split.kind} split of {split.layer}"))
    except (PisplitError, OSError) as exc:
        error = str(exc)
    watch.agree(error, "the end of the split's set-up")

    data_parallel = split.kind == SplitKind.DATA_PARALLEL
    n_frames = (args.frames or 4 * n_ranks) if data_parallel else 1
    rng = np.random.default_rng(args.seed)
    x = whole = reference = frames = None
    if rank == 0:
        # one frame of a tensor whose axis 0 a batch-1 node made a sequence (issue 19) is its whole shape
        # each tensor in its own type: an int8 model's int8 tensors quantized with their scale and zero point
        x = {t: random_values(graph, t, rng, (n_frames, *graph.shapes[t][1:]) if data_parallel else graph.shapes[t])
             for t in split.inputs}
        whole_graph = split_segment(graph, split.node_start, split.node_stop, "data-parallel", 1).part_graph(0)
        whole = make_engine(whole_graph, args.engine)
        frames = [{f.name: x[f.tensor][i:i + 1] for f in split.parts[0].feeds} if data_parallel
                  else {t: x[t] for t in split.inputs} for i in range(n_frames)]
        out_name = whole_graph.outputs[0]
        reference = np.concatenate([_unsplit(whole, f, watch)[out_name] for f in frames])  # also the warm-up
    watch.at(FAULT_AT_START)
    watch.barrier("the start of the split's runs")

    def once(k: int):
        watch.step = k
        watch.at(k)
        return runner.run_frames(x, n_frames) if data_parallel else runner.run(x)

    result = once(0)  # warm-up: first-touch allocations, engine set-up
    walls, phases, unsplit = [], [], []
    # Unsplit and split runs take turns, so a change in the machine's load hits both alike.
    for k in range(1, args.repeat + 1):
        if rank == 0:
            t0 = time.perf_counter()
            for f in frames:
                _unsplit(whole, f, watch)
            unsplit.append((time.perf_counter() - t0) / n_frames)
        before = runner.times.to_array()
        watch.barrier(f"the start of run {k}")
        t0 = time.perf_counter()
        once(k)
        walls.append((time.perf_counter() - t0) / n_frames)
        phases.append((runner.times.to_array() - before) / n_frames)
        watch.barrier(f"the end of run {k}")
    unsplit_s = _median(unsplit)
    # Each part alone, the others waiting: its compute time on a device of its own (the paper's
    # "compute only"); ranks sharing one machine slow each other down in the runs above.
    alone = 0.0
    for r in range(n_ranks):
        watch.barrier(f"rank {r}'s turn to time its part alone")
        if rank == r:
            alone = runner.compute_alone(args.repeat, watch.poll)
    my_frames = sum(1 for q in split.deal(n_frames) if q == rank) if data_parallel else 1
    mine = np.array([_median([p[i] for p in phases]) for i in range(4)] + [_median(walls), alone, my_frames], np.float64)
    watch.at(FAULT_AT_END)
    rows = watch.gather(mine, "the final gather of the timings")  # the job's last agreement
    watch.retire()
    watch.at(FAULT_AT_EXIT)
    if rank != 0:
        return 0

    error_abs = float(np.abs(result - reference).max()) if result.size else 0.0
    ok = bool(np.allclose(result, reference, rtol=TOLERANCE, atol=TOLERANCE))
    split_s = float(rows[0][4])
    slowest = max(float(r[1]) for r in rows)
    compute_only_s = max(float(r[5]) * float(r[6]) for r in rows) / n_frames
    cost = split.cost()
    doc = {
        "model": graph.name, "layer": split.layer, "kind": split.kind, "nodes": list(split.node_names),
        "followers": list(split.node_names[1:]), "ranks": n_ranks, "engine": runner.engine.name,
        "sizes": list(split.sizes), "sizes_given_as": how, "options": {k: v for k, v in split.options.items() if k != "shares"},
        "input_pattern": cost.input_pattern, "output_pattern": cost.output_pattern,
        "frames_per_run": n_frames, "repeat": args.repeat,
        "max_abs_error": error_abs, "ok": ok, "tolerance": TOLERANCE,
        "unsplit_s": unsplit_s, "split_s": split_s, "speedup": unsplit_s / split_s if split_s else 0.0,
        "comm_share": min(max(1.0 - slowest / split_s, 0.0), 1.0) if split_s else 0.0,
        "compute_only_s": compute_only_s, "compute_only_speedup": unsplit_s / compute_only_s if compute_only_s else 0.0,
        "parts": [{"part": p.index, "rank": p.index, "size": p.size, "frame_share": p.frame_share, "flops": p.flops,
                   "weight_bytes": p.weight_bytes, "recv_bytes": p.recv_bytes, "send_bytes": p.send_bytes,
                   "input_s": float(r[0]), "compute_s": float(r[1]), "output_s": float(r[2]), "post_s": float(r[3]),
                   "compute_alone_s": float(r[5])}
                  for p, r in zip(cost.parts, rows)],
    }
    return _report(args, doc, print_split_report, "merged output differs from the unsplit layer")


def _unsplit(engine, feeds: dict, watch) -> dict:
    """Rank 0's unsplit run of one frame, answering the waiting ranks' pings first (it is alive)."""
    watch.poll()
    return engine.run(feeds)


def _report(args, doc: dict, printer, mismatch: str) -> int:
    """Print the document (JSON or `printer`); exit status 1 with `mismatch` when the check failed."""
    if args.json:
        print_json(doc)
    else:
        printer(doc)
    if not doc["ok"]:
        console.print(f"[red]{mismatch} by {doc['max_abs_error']:.3g} (tolerance {TOLERANCE:g})[/]")
        return 1
    return 0


def print_split_report(doc: dict) -> None:
    """Rank 0's human report: what was split how, a row per part, the check and the speedup."""
    extra = f", with followers {', '.join(doc['followers'])}" if doc["followers"] else ", no followers"
    sizes = ", ".join(str(s) for s in doc["sizes"])
    given = f" (--sizes read as {doc['sizes_given_as']})" if doc["sizes_given_as"] else ""
    console.print(f"[bold]{doc['model']} {doc['layer']}[/]{extra}: {doc['kind']} over {doc['ranks']} rank(s), "
                  f"sizes {sizes}{given}; input {doc['input_pattern']}, output {doc['output_pattern']}; engine {doc['engine']}",
                  highlight=False)
    per = "per frame" if doc["frames_per_run"] == 1 else f"per frame, {doc['frames_per_run']} frames per run"
    table = Table(title=f"median of {doc['repeat']} runs, {per}")
    for col in ("part", "size", "GFLOP", "weights", "recv", "send", "compute ms", "alone ms", "input ms", "output ms"):
        table.add_column(col, justify="right")
    for p in doc["parts"]:
        table.add_row(str(p["part"]), str(p["size"]), f"{p['flops'] / 1e9:.3f}", human_bytes(p["weight_bytes"]),
                      human_bytes(p["recv_bytes"]), human_bytes(p["send_bytes"]), f"{p['compute_s'] * 1e3:.2f}",
                      f"{p['compute_alone_s'] * 1e3:.2f}",
                      f"{p['input_s'] * 1e3:.2f}", f"{p['output_s'] * 1e3:.2f}")
    console.print(table)
    status = "[green]ok[/]" if doc["ok"] else "[red]MISMATCH[/]"
    console.print(f"max abs error {doc['max_abs_error']:.3g} vs unsplit ({status}); unsplit {doc['unsplit_s'] * 1e3:.2f} ms, "
                  f"split {doc['split_s'] * 1e3:.2f} ms: speedup [bold]{doc['speedup']:.2f}x[/], "
                  f"communication share {doc['comm_share'] * 100:.0f}%; parts alone (compute only) "
                  f"{doc['compute_only_s'] * 1e3:.2f} ms: {doc['compute_only_speedup']:.2f}x", highlight=False)


# --- a chain of split layers --------------------------------------------------------------------------------
def build_chain(graph, layer: str, kinds: list, n_layers: int, n_ranks: int, weights, star: bool) -> tuple:
    """Segments [(node_start, node_stop, kind, sizes, options, output_layout)] covering nodes from
    `layer` through the `n_layers`-th split layer: each conv/dense layer the next kind applies to is
    split (with its followers), anything else runs on rank 0 ('none'). A split segment keeps its output
    on its parts when the next segment is split and reads it, unless `star`. Raises PisplitError
    naming the layer when the model runs out of layers or a kind does not apply to LAYER."""
    from partitioners.layouts import KEEPABLE_KINDS, check_kept_output
    from partitioners.plan import Segment
    from partitioners.splits import legal_kinds

    if n_layers < 1:
        raise PisplitError(f"--chain {n_layers}: must be at least 1")
    for kind in kinds:
        if kind not in SPLIT_KINDS or kind in (SplitKind.DATA_PARALLEL, SplitKind.FUSED_TILES):
            raise PisplitError(f"--kind {kind}: a chain splits layers with fc-output, fc-input, conv-channel, conv-spatial "
                               "or conv-filter")
    start = i = graph.node_index(layer)
    segments, done = [], 0
    ranks = tuple(range(n_ranks))
    while done < n_layers:
        if i >= len(graph):
            raise PisplitError(f"--chain {n_layers}: the model has only {done} layers to split from {layer}")
        node = graph.nodes[i]
        kind = kinds[min(done, len(kinds) - 1)]
        if node.op in ("conv2d", "conv3d", "dense") and kind in legal_kinds(graph, node.name):
            split = split_layer(graph, node.name, kind, weights)
            options = {k: v for k, v in split.options.items() if k != "shares"}
            segments.append(Segment(split.node_start, split.node_stop, kind, ranks, tuple(split.sizes), options))
            i, done = split.node_stop, done + 1
            continue
        if i == start:
            raise PisplitError(f"layer {layer}: kind {kind} does not apply to a {node.op} node "
                               f"(legal: {', '.join(legal_kinds(graph, layer))})")
        if segments and segments[-1].kind == NO_SPLIT:
            last = segments.pop()
            segments.append(Segment(last.node_start, i + 1))
        else:
            segments.append(Segment(i, i + 1))
        i += 1
    if not star:
        for k, seg in enumerate(segments):
            if seg.kind in KEEPABLE_KINDS:
                keep = Segment(seg.node_start, seg.node_stop, seg.kind, seg.ranks, seg.sizes, seg.options, "parts")
                try:
                    check_kept_output(graph, segments[:k] + [keep] + segments[k + 1:], k)
                except PisplitError:
                    continue
                segments[k] = keep
    return tuple(segments)


def _run_chain(args, comm, rank: int, transport) -> int:
    """`--chain N`: the chained segments as one split stage (the pipeline runtime's own executor),
    checked against the unsplit nodes and timed against them, in turns."""
    from partitioners.layouts import produced
    from partitioners.plan import Stage

    from ..runtime import FAULT_AT_END, FAULT_AT_LOAD, FAULT_AT_START, _Step, shard_graph
    from ..watched import FAULT_AT_EXIT

    n_ranks = comm.Get_size()
    watch, error = _watch(args, comm)
    step = segments = graph = stage = None
    try:
        if error is not None:
            raise PisplitError(error)
        if args.repeat < 1:
            raise PisplitError(f"--repeat {args.repeat}: must be at least 1")
        for flag, name in ((args.grid, "--grid"), (args.last, "--last"), (args.no_followers, "--no-followers"), (args.frames, "--frames")):
            if flag:
                raise PisplitError(f"{name} does not apply to --chain")
        graph = load_model(args.model)
        weights = [float(v) for v in parse_sizes(args.sizes, n_ranks)] if args.sizes else n_ranks
        segments = build_chain(graph, args.layer, args.kind.split(","), args.chain, n_ranks, weights, args.star)
        stage = Stage(0, segments[0].node_start, segments[-1].node_stop, tuple(range(n_ranks)), "split", segments)
    except (PisplitError, OSError) as exc:
        error = str(exc)
    watch.at(FAULT_AT_LOAD)
    watch.agree(error, "the end of loading")
    watch.learn_hosts()
    communicator = transport.split_communicator_watched(comm, 0, rank, "the chain's communicator", watch.seconds, watch.name,
                                                        watch.follow_s())

    try:
        step = _Step(None, graph, stage, rank, args.engine, {0: communicator}, _runner_hooks(watch, f"the chain from {args.layer}"))
    except (PisplitError, OSError) as exc:
        error = str(exc)
    watch.agree(error, "the end of the chain's set-up")

    start, stop = segments[0].node_start, segments[-1].node_stop
    inputs = whole = reference = None
    out_name = graph.nodes[stop - 1].outputs[0]
    if rank == 0:
        rng = np.random.default_rng(args.seed)
        inputs = {t: random_values(graph, t, rng) for t in graph.cut_tensors(start)}  # int8 tensors as int8
        whole = make_engine(shard_graph(graph, start, stop), args.engine)
        reference = _unsplit(whole, inputs, watch)[out_name]  # also the unsplit warm-up
    watch.at(FAULT_AT_START)
    watch.barrier("the start of the chain's runs")

    def once(k: int):
        watch.step = k
        watch.at(k)
        return step.run(inputs if rank == 0 else {})

    result = once(0)  # warm-up
    walls, unsplit = [], []
    compute0, comm0 = step.compute_s, step.comm_s
    for k in range(1, args.repeat + 1):  # unsplit and split in turns: a change of load hits both alike
        if rank == 0:
            t0 = time.perf_counter()
            _unsplit(whole, inputs, watch)
            unsplit.append(time.perf_counter() - t0)
        watch.barrier(f"the start of run {k}")
        t0 = time.perf_counter()
        once(k)
        walls.append(time.perf_counter() - t0)
        watch.barrier(f"the end of run {k}")
    mine = np.array([(step.compute_s - compute0) / args.repeat, (step.comm_s - comm0) / args.repeat], np.float64)
    watch.at(FAULT_AT_END)
    rows = watch.gather(mine, "the final gather of the timings")  # the job's last agreement
    watch.retire()
    watch.at(FAULT_AT_EXIT)
    if rank != 0:
        return 0
    got = result[out_name]
    error_abs = float(np.abs(got - reference).max()) if got.size else 0.0
    ok = bool(got.shape == reference.shape and np.allclose(got, reference, rtol=TOLERANCE, atol=TOLERANCE))
    unsplit_s, split_s = _median(unsplit), _median(walls)
    chain = []
    for seg in segments:
        entry = {"nodes": [n.name for n in graph.nodes[seg.node_start:seg.node_stop]], "kind": seg.kind,
                 "sizes": list(seg.sizes), "output_layout": seg.output_layout}
        if seg.output_layout == "parts":
            entry["layout"] = produced(split_segment(graph, seg.node_start, seg.node_stop, seg.kind, seg.sizes, seg.options),
                                       seg.ranks).describe()
        chain.append(entry)
    doc = {"model": graph.name, "layer": args.layer, "chain": chain, "ranks": n_ranks, "engine": args.engine, "star": bool(args.star),
           "repeat": args.repeat, "max_abs_error": error_abs, "ok": ok, "tolerance": TOLERANCE,
           "unsplit_s": unsplit_s, "split_s": split_s, "speedup": unsplit_s / split_s if split_s else 0.0,
           "ranks_compute_s": [float(r[0]) for r in rows], "ranks_comm_s": [float(r[1]) for r in rows]}
    return _report(args, doc, print_chain_report, "chained output differs from the unsplit nodes")


def print_chain_report(doc: dict) -> None:
    """Rank 0's report of a chain: each segment with its kind, sizes and kept layout; then the check,
    per-rank compute and transfer times and the speedup over the unsplit nodes."""
    table = Table(title=f"{doc['model']}: {len(doc['chain'])} segments from {doc['layer']} over {doc['ranks']} ranks"
                        f"{' (star: gathered to rank 0 between segments)' if doc['star'] else ''}")
    for col in ("nodes", "kind", "sizes", "output"):
        table.add_column(col)
    for seg in doc["chain"]:
        nodes = seg["nodes"][0] + (f" .. {seg['nodes'][-1]}" if len(seg["nodes"]) > 1 else "")
        table.add_row(nodes, seg["kind"], ",".join(map(str, seg["sizes"])) or "-", seg.get("layout", "rank 0" if seg["kind"] != NO_SPLIT else "-"))
    console.print(table)
    per_rank = ", ".join(f"rank {r}: {c * 1e3:.1f} / {m * 1e3:.1f}" for r, (c, m) in enumerate(zip(doc["ranks_compute_s"], doc["ranks_comm_s"])))
    status = "[green]ok[/]" if doc["ok"] else "[red]MISMATCH[/]"
    console.print(f"max abs error {doc['max_abs_error']:.3g} vs unsplit ({status}); compute / transfer ms per frame: {per_rank}", highlight=False)
    console.print(f"unsplit {doc['unsplit_s'] * 1e3:.2f} ms, chained split {doc['split_s'] * 1e3:.2f} ms: "
                  f"speedup [bold]{doc['speedup']:.2f}x[/] (median of {doc['repeat']})", highlight=False)
