"""`mpirun -n K pisplit split MODEL LAYER --kind KIND`: one layer split K ways, checked and timed.

Every rank builds the split from shapes and only its own part's weights; rank 0 makes a seeded random
input and runs the unsplit segment (same engine) for the reference; then rank 0's unsplit run and
the split take turns, `--repeat` times, and each part is timed once more alone. Rank 0 reports the
largest difference to the unsplit output, per-part compute and communication times, the speedup and
the compute-only speedup (parts timed alone). The segment is the layer plus its followers (the nodes
that keep its split without communication) unless `--no-followers`; the output names them.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
from rich.table import Table

from layers import load_model
from layers.engine import ENGINES, make_engine
from layers.errors import PisplitError
from partitioners.split_parts import SPLIT_KINDS
from partitioners.splits import split_layer, split_segment

from ..output import console, human_bytes, print_json

TOLERANCE = 1e-4  # rtol and atol of the check: summation order differs between parts and whole


def register(sub) -> None:
    p = sub.add_parser("split", help="under mpirun -n K: run one layer split K ways, check it against the unsplit layer, time it")
    p.add_argument("model", metavar="MODEL", help="zoo name, .tflite file or pisplit .json graph")
    p.add_argument("layer", metavar="LAYER", help="the node to split (see `pisplit show MODEL`)")
    p.add_argument("--kind", required=True, choices=SPLIT_KINDS, help="split kind")
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
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import transport  # imported here: loading mpi4py starts MPI

    return transport.on_every_rank(lambda comm, rank: _run(args, comm, rank, transport), args.debug)


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
        if args.kind != "fused-tiles":
            raise PisplitError(f"--grid applies to fused-tiles, not {args.kind}")
        if args.sizes:
            raise PisplitError("--grid makes equal tiles; leave out --sizes")
        return split_layer(graph, args.layer, args.kind, n_ranks, grid=parse_grid(args.grid, n_ranks), **options), None
    if not args.sizes:
        return split_layer(graph, args.layer, args.kind, n_ranks, **options), None
    values = parse_sizes(args.sizes, n_ranks)
    if args.kind == "data-parallel":
        return split_layer(graph, args.layer, args.kind, [float(v) for v in values], **options), "frame shares"
    probe = split_layer(graph, args.layer, args.kind, n_ranks, **options)
    if all(isinstance(v, int) for v in values) and sum(values) == sum(probe.sizes):
        return split_layer(graph, args.layer, args.kind, values, **options), "sizes"
    return split_layer(graph, args.layer, args.kind, [float(v) for v in values], **options), "weights"


def _median(values) -> float:
    return float(statistics.median(values)) if values else 0.0


def _run(args, comm, rank: int, transport) -> int:
    from ..split_exec import SplitRunner

    n_ranks = comm.Get_size()
    error = None
    split = runner = how = None
    try:
        if args.repeat < 1:
            raise PisplitError(f"--repeat {args.repeat}: must be at least 1")
        graph = load_model(args.model)
        split, how = build_split(graph, args, n_ranks)
        runner = SplitRunner(comm, split, args.engine)
    except (PisplitError, OSError) as exc:
        error = str(exc)
    transport.agree(comm, error)

    data_parallel = split.kind == "data-parallel"
    n_frames = (args.frames or 4 * n_ranks) if data_parallel else 1
    rng = np.random.default_rng(args.seed)
    x = whole = reference = frames = None
    if rank == 0:
        x = {t: rng.standard_normal((n_frames, *graph.shapes[t][1:]), dtype=np.float32) for t in split.inputs}
        whole_graph = split_segment(graph, split.node_start, split.node_stop, "data-parallel", 1).part_graph(0)
        whole = make_engine(whole_graph, args.engine)
        frames = [{f.name: x[f.tensor][i:i + 1] for f in split.parts[0].feeds} if data_parallel
                  else {t: x[t] for t in split.inputs} for i in range(n_frames)]
        out_name = whole_graph.outputs[0]
        reference = np.concatenate([whole.run(f)[out_name] for f in frames])  # also the warm-up
    transport.quiet_barrier(comm)

    def once():
        return runner.run_frames(x, n_frames) if data_parallel else runner.run(x)

    result = once()  # warm-up: first-touch allocations, engine set-up
    walls, phases, unsplit = [], [], []
    # Unsplit and split runs take turns, so a change in the machine's load hits both alike.
    for _ in range(args.repeat):
        if rank == 0:
            t0 = time.perf_counter()
            for f in frames:
                whole.run(f)
            unsplit.append((time.perf_counter() - t0) / n_frames)
        before = runner.times.to_array()
        transport.quiet_barrier(comm)
        t0 = time.perf_counter()
        once()
        walls.append((time.perf_counter() - t0) / n_frames)
        phases.append((runner.times.to_array() - before) / n_frames)
        transport.quiet_barrier(comm)
    unsplit_s = _median(unsplit)
    # Each part alone, the others waiting: its compute time on a device of its own (the paper's
    # "compute only"); ranks sharing one machine slow each other down in the runs above.
    alone = 0.0
    for r in range(n_ranks):
        transport.quiet_barrier(comm)
        if rank == r:
            alone = runner.compute_alone(args.repeat)
    transport.quiet_barrier(comm)
    my_frames = sum(1 for q in split.deal(n_frames) if q == rank) if data_parallel else 1
    mine = np.array([_median([p[i] for p in phases]) for i in range(4)] + [_median(walls), alone, my_frames], np.float64)
    rows = transport.gather_rows(comm, mine, root=0)
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
    if args.json:
        print_json(doc)
    else:
        print_split_report(doc)
    if not ok:
        console.print(f"[red]merged output differs from the unsplit layer by {error_abs:.3g} (tolerance {TOLERANCE:g})[/]")
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
