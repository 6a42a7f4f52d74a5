"""`pisplit profile`: measure this device (per node, whole and in parts) and, under mpirun, its links."""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
from rich.table import Table

from layers import load_model
from layers.engine import ENGINES
from layers.errors import PisplitError
from partitioners.profiles import DEFAULT_FRACTIONS, fit_link

from ..measure import measure_profile, measure_split_parts
from ..output import console, human_bytes, print_json

LINK_SIZES = (1 << 10, 64 << 10, 1 << 20, 8 << 20)  # bytes per ping-pong message


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure this device (and its links under mpirun) for the planner")
    p.add_argument("--model", metavar="MODEL", action="append", default=[],
                   help="model(s) to time node by node, each in a process of its own (repeatable or comma-separated; default alexnet, the calibration reference)")
    p.add_argument("--engine", choices=[e for e in ENGINES if e != "auto"], default="numpy", help="engine to time with: the one plans will run (default numpy)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per node after one warm-up; the median is kept (default 5)")
    p.add_argument("--fractions", default=",".join(map(str, DEFAULT_FRACTIONS)),
                   help="part sizes to time each split kind at, as fractions of the node (default 0.25,0.5,0.75; 'none' for whole nodes only)")
    p.add_argument("--kind", help="device kind to record (default: from /proc/device-tree/model, else 'host')")
    p.add_argument("--output", metavar="P.json", required=True, help="write the profile here")
    p.add_argument("--json", action="store_true", help="print the profile document")
    p.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                   help="under mpirun: a wait with no progress for this long probes the rank it waits for and, if that rank does not "
                        "answer, names it and ends the job (default 20; rank 0 loading the models gets six times as long; 0: never)")
    p.add_argument("--fail", metavar="RANK@POINT[:MODE]", help="under mpirun, fault injection for tests and demos: rank RANK fails "
                   "at POINT, one of load, start (before the link tests), end (after them), exit (after the last agreement, before MPI's "
                   "shutdown) or N (the N-th link round trip); MODE error (default), stop or kill")
    p.set_defaults(func=run)


def mpi_world_size() -> int:
    """Ranks mpirun started (1 outside mpirun); read from the environment so plain runs never load MPI."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def ping_pong(comm, work, watch, sizes=LINK_SIZES, repeat: int = 5) -> list:
    """Rank 0 against every other rank: one-way seconds per message size (half the median round trip).
    No wait is without `watch`'s bound (cluster.watched.CommandWatch over `comm`): the rank that does
    not come to a round trip's barrier, or does not answer a message, is named; the round trips are
    the steps --fail RANK@N counts. The messages go over `work`, a communicator with the same ranks
    as `comm` (their tags never meet the watch's pings)."""
    from .. import transport

    rank, size = comm.Get_rank(), comm.Get_size()
    links = []
    trip = 0
    for peer in range(1, size):
        seconds = []
        for nbytes in sizes:
            buf, echo = np.zeros(nbytes // 4, np.float32), np.zeros(nbytes // 4, np.float32)
            stall = watch.watch(lambda peers, label: f"no {label} in link test round trip {watch.step} ({nbytes} bytes) "
                                                     f"with {watch.name(peers[0]) if peers else 'its peer'}")
            trips = []
            for _ in range(repeat + 1):
                watch.step = trip
                watch.at(trip)
                watch.barrier(f"link test round trip {trip} (rank 0 and rank {peer}, {nbytes} bytes)")
                trip += 1
                if rank == 0:  # the message out and its echo back, both posted at once
                    t0 = time.perf_counter()
                    transport.wait_quietly([transport.isend(work, buf, peer, tag=7), transport.irecv(work, echo, peer, tag=8)],
                                           watch=stall, label="echo", peers=[peer, peer])
                    trips.append(time.perf_counter() - t0)
                elif rank == peer:
                    transport.wait_quietly([transport.irecv(work, buf, 0, tag=7)], watch=stall, label="message", peers=[0])
                    transport.wait_quietly([transport.isend(work, buf, 0, tag=8)], watch=stall, label="echo taken", peers=[0])
            seconds.append(statistics.median(trips[1:]) / 2 if rank == 0 else 0.0)
        if rank == 0:
            links.append(fit_link((0, peer), list(sizes), seconds))
    return links


def run(args) -> int:
    if args.repeat < 1:
        raise PisplitError(f"--repeat {args.repeat}: must be at least 1")
    fractions = _fractions(args.fractions)
    names = [m.strip() for spec in (args.model or ["alexnet"]) for m in spec.split(",") if m.strip()]
    if args.fail and mpi_world_size() <= 1:
        raise PisplitError(f"--fail {args.fail}: profile injects faults under mpirun (in its link tests)")
    if mpi_world_size() > 1:
        from .. import transport

        from ..watched import guard_exit

        def body(comm, rank: int) -> int:
            status = _run_ranks(args, names, fractions, comm, rank, transport)
            if rank == 0:  # its device profile written; the others wait for it in MPI's shutdown (cluster.watched)
                guard_exit(rank)
            return status

        return transport.on_every_rank(body, args.debug)
    return _profile(args, names, fractions, [load_model(name) for name in names], [])


def _run_ranks(args, names: list, fractions: tuple, comm, rank: int, transport) -> int:
    """Under mpirun: rank 0 loads the models (its errors reach every rank), every rank times its link
    to rank 0, then rank 0 profiles its own device and writes the file. No wait is without a bound
    (cluster.watched): a rank that stops or hangs is named in one line and the job ends."""
    from ..runtime import FAULT_AT_END, FAULT_AT_LOAD, FAULT_AT_START
    from ..watched import DEFAULT_STALL_S, CommandWatch, parse_command_fault

    graphs, error, fail = [], None, None
    seconds = DEFAULT_STALL_S if args.stall_timeout is None else args.stall_timeout
    try:
        if not seconds >= 0:
            raise PisplitError(f"--stall-timeout {args.stall_timeout}: must be a number of seconds >= 0 (0: never)")
        fail = parse_command_fault(args.fail, comm.Get_size(), ("load", "start", "end", "exit"))
    except PisplitError as exc:
        error, seconds = str(exc), DEFAULT_STALL_S
    watch = CommandWatch(comm, seconds, fail, "link test round trip")
    watch.at(FAULT_AT_LOAD)
    if rank == 0 and error is None:
        try:
            graphs = [load_model(name) for name in names]
        except PisplitError as exc:
            error = str(exc)
    watch.agree(error, "the end of loading the models", scale=6.0)  # rank 0 loads them all, the others wait
    watch.learn_hosts()
    # collective, bounded: a rank that stops right after the agreement is named, not waited for
    work = transport.split_communicator_watched(comm, 0, rank, "the link tests' communicator", watch.seconds, watch.name, watch.follow_s())
    watch.at(FAULT_AT_START)
    links = ping_pong(comm, work, watch)
    watch.at(FAULT_AT_END)
    watch.finish("the end of the link tests")  # the job's last agreement; then rank 0 profiles its own device
    watch.retire()
    if rank != 0:
        return 0
    return _profile(args, names, fractions, graphs, links)


def _profile(args, names: list, fractions: tuple, graphs: list, links: list) -> int:
    """Measure this device on `graphs` (each in a process of its own when several), add `links`, write and show it."""
    if len(graphs) > 1:
        profile = profile_each_in_own_process(names, args)
    else:
        parts = measure_split_parts if fractions else None
        profile = measure_profile(graphs, args.engine, args.repeat, fractions, parts, args.kind)
    profile.links = links
    profile.save(args.output)
    if args.json:
        print_json(profile.to_dict())
        return 0
    show(profile, graphs)
    console.print(f"wrote {args.output}")
    return 0


def profile_each_in_own_process(names: list[str], args):
    """One `pisplit profile --model NAME` process per model, merged into one profile (one latency
    model fitted over all of them). A rank holds one model; measured in one process after VGG16,
    Xception's nodes ran 30% slower than in a process of their own."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from partitioners.latency_model import LatencyModel, merge_split_overheads
    from partitioners.profiles import Profile, samples_of

    # the children are plain processes, whatever this one runs under (they must not join an MPI job)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    merged = None
    overheads = []  # each model's split-part overheads, merged by their samples at the end
    with tempfile.TemporaryDirectory(prefix="pisplit-profile-") as tmp:
        for i, name in enumerate(names):
            out = Path(tmp) / f"{i}.json"
            cmd = [sys.executable, "-m", "cluster.cli", "profile", "--model", name, "--engine", args.engine,
                   "--repeat", str(args.repeat), "--fractions", args.fractions, "--output", str(out), "--json"]
            if args.kind:
                cmd += ["--kind", args.kind]
            with console.status(f"profiling {name} ({i + 1} of {len(names)}) in a process of its own"):
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
                raise PisplitError(f"profile of {name}: {lines[-1] if lines else f'exit status {proc.returncode}'}")
            one = Profile.load(out)
            overheads.append(one.split_overhead)
            if merged is None:
                merged = one
            else:
                merged.models.update(one.models)
    merged.latency = LatencyModel.fit(samples_of(merged))
    merged.split_overhead = merge_split_overheads(overheads)  # not only the first model's
    return merged


def _fractions(text: str) -> tuple:
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(not 0 < v < 1 for v in values):
        raise PisplitError(f"--fractions {text!r}: expected fractions between 0 and 1, e.g. 0.25,0.5,0.75, or 'none'")
    return values


def show(profile, graphs) -> None:
    """Summary: the machine, per-model times, the latency model's fit error, the links."""
    m = profile.machine
    console.print(f"{profile.kind}: {m.get('model')} ({m.get('cores')} cores, {human_bytes(m.get('memory_bytes', 0))}), "
                  f"numpy {m.get('numpy')} with {m.get('blas', {}).get('name')} {m.get('blas', {}).get('version')}, "
                  f"LiteRT {m.get('litert', {}).get('version')}; engine {profile.engine}")
    for g in graphs:
        nodes = profile.models[g.name]
        parts = sum(len(n.parts) for n in nodes)
        console.print(f"{g.name}: {len(nodes)} nodes, {parts} parts, whole model {sum(n.seconds for n in nodes) * 1e3:.1f} ms "
                      f"(sum of warm node medians), largest node peak {human_bytes(max(n.peak_bytes for n in nodes))}")
    table = Table(title="latency model per op kind: fixed + FLOPs / rate + bytes / bandwidth")
    for col in ("op", "samples", "fixed us", "GFLOP/s", "GB/s", "median error", "max error"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for op, fit in profile.latency.fits.items():
        table.add_row(op, str(fit.samples), f"{fit.fixed_s * 1e6:.1f}", f"{1e-9 / fit.per_flop_s:.1f}" if fit.per_flop_s else "-",
                      f"{1e-9 / fit.per_byte_s:.2f}" if fit.per_byte_s else "-", f"{fit.median_error:.1%}", f"{fit.max_error:.1%}")
    console.print(table)
    for link in profile.links:
        console.print(f"link rank {link.ranks[0]} <-> {link.ranks[1]}: latency {link.latency_s * 1e6:.0f} us, "
                      f"bandwidth {link.bandwidth_bps / 1e6:.0f} Mbit/s")
