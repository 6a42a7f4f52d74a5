"""MPI worker of test_split_mpi: runs many split cases in one mpirun launch.

Usage: mpirun -n K python split_mpi_worker.py CASES.json RESULTS.json
Every rank builds each case's split and only its own part; rank 0 feeds seeded inputs, compares the
merged output with the unsplit segment (shape, dtype, rtol = atol = 1e-5) and writes one result per
case. Ranks also report that they hold only their part's weight bytes and cached no full weight.
Exit status 0 when every case passed.
"""
from __future__ import annotations

import json
import sys
import traceback

import numpy as np

from cluster import transport
from cluster.split_exec import SegmentRunner, SplitRunner
from partitioners.plan import Segment
from partitioners.splits import split_layer
from tests.partitioners.split_graphs import GRAPHS

TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(split, batch: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {t: rng.standard_normal((batch, *split.graph.shapes[t][1:]), dtype=np.float32) for t in split.inputs}


def _compare(got, want) -> str | None:
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"shape/dtype {got.shape} {got.dtype} != {want.shape} {want.dtype}"
    if not np.allclose(got, want, **TOL):
        return f"max abs error {float(np.abs(got - want).max()):.3g}"
    return None


def run_case(comm, case: dict) -> dict | None:
    """Collective: one case on every rank; rank 0 returns its result."""
    rank = comm.Get_rank()
    error = None
    runner = split = g = None
    try:
        g = GRAPHS[case["graph"]]()
        options = dict(case.get("options", {}))
        if "grid" in options:
            options["grid"] = tuple(options["grid"])
        sizes = case["sizes"]
        if isinstance(sizes, list) and sizes and isinstance(sizes[0], list):
            sizes = tuple(tuple(s) for s in sizes)
        split = split_layer(g, case["layer"], case["kind"], sizes, **options)
        if case.get("segment_runner"):
            seg = Segment(split.node_start, split.node_stop, split.kind, tuple(range(split.n_parts)), split.sizes,
                          {k: v for k, v in split.options.items() if k != "shares"})
            runner = SegmentRunner(comm, g, seg)
        else:
            runner = SplitRunner(comm, split)
    except Exception as exc:  # reported, and agreed on so no rank waits for another
        error = f"{type(exc).__name__}: {exc}"
    message = transport.first_error(comm, error)
    if message is not None:
        return {"id": case["id"], "ok": False, "error": f"set-up: {message}"} if rank == 0 else None
    inner = runner.runner if isinstance(runner, SegmentRunner) else runner
    held = sum(a.nbytes for a in inner.graph.weights.values())
    cached = len(getattr(g.weights, "_cache", None) or {})
    problems = []
    frames = int(case.get("frames", 1))
    for repeat in range(2):  # the second frame reuses every buffer of the first
        x = _inputs(split, frames, seed=repeat) if rank == 0 else None
        if isinstance(runner, SegmentRunner):
            out = runner.run(x if rank == 0 else {})
            got = out.get(split.output) if rank == 0 else None
        elif split.kind == "data-parallel":
            got = runner.run_frames(x, frames)
        else:
            got = runner.run(x)
        if rank == 0:
            problem = _compare(got, split.reference(x))
            if problem:
                problems.append(f"run {repeat}: {problem}")
    rows = transport.gather_rows(comm, np.array([held, cached], np.float64), root=0)
    if rank != 0:
        return None
    want = [p.weight_bytes for p in split.cost().parts]
    for r, row in enumerate(rows):
        if int(row[0]) != want[r]:
            problems.append(f"rank {r} holds {int(row[0])} weight bytes, its part has {want[r]}")
        if int(row[1]) != 0:
            problems.append(f"rank {r} cached {int(row[1])} full weights of the model")
    return {"id": case["id"], "ok": not problems, "error": "; ".join(problems) or None}


def transport_checks(comm) -> dict | None:
    """Collective: every transport helper once, with uneven counts; rank 0 returns the result."""
    rank, size = comm.Get_rank(), comm.Get_size()
    problems = []
    try:
        counts = [r + 2 for r in range(size)]
        total = sum(counts)
        full = np.arange(total, dtype=np.float32)
        mine = np.empty(counts[rank], np.float32)
        transport.scatterv(comm, full if rank == 0 else None, counts, mine, 0)
        start = sum(counts[:rank])
        if not np.array_equal(mine, full[start:start + counts[rank]]):
            problems.append(f"scatterv on rank {rank}")
        gathered = transport.gatherv(comm, mine * 2, counts, None, 0)
        if rank == 0 and not np.array_equal(gathered, full * 2):
            problems.append("gatherv")
        every = transport.allgatherv(comm, mine + 1, counts)
        if not np.array_equal(every, full + 1):
            problems.append(f"allgatherv on rank {rank}")
        part = np.full((3, 2), rank + 1, np.float64)
        summed = transport.reduce_sum(comm, part, None, 0)
        if rank == 0 and not np.all(summed == size * (size + 1) / 2):
            problems.append("reduce_sum")
        if not np.all(transport.allreduce_sum(comm, part) == size * (size + 1) / 2):
            problems.append(f"allreduce_sum on rank {rank}")
        buf = np.arange(5, dtype=np.float32) if rank == 0 else np.zeros(5, np.float32)
        if not np.array_equal(transport.bcast(comm, buf, 0), np.arange(5, dtype=np.float32)):
            problems.append(f"bcast on rank {rank}")
        # a ring: blocking send to the right after a posted receive from the left
        left, right = (rank - 1) % size, (rank + 1) % size
        got = np.empty(4, np.float32)
        req = transport.irecv(comm, got, left, tag=5)
        transport.send(comm, np.full(4, rank, np.float32), right, tag=5)
        transport.wait_all([req])
        if not np.all(got == left):
            problems.append(f"send/irecv ring on rank {rank}")
        out = np.full(2, rank, np.float32)
        back = np.empty(2, np.float32)
        reqs = [transport.isend(comm, out, right, tag=6), transport.irecv(comm, back, left, tag=6)]
        transport.wait_all(reqs)
        if not np.all(back == left):
            problems.append(f"isend/irecv ring on rank {rank}")
        transport.quiet_barrier(comm)
    except Exception as exc:
        problems.append(f"rank {rank}: {type(exc).__name__}: {exc}")
    message = transport.first_error(comm, "; ".join(problems) or None)
    if rank == 0:
        return {"id": "transport", "ok": message is None, "error": message}
    return None


def main(argv: list[str]) -> int:
    return run_cases(argv, run_case, transport_checks)


def run_cases(argv: list[str], run_case, first=None) -> int:
    """Every case of the JSON file argv[1] through `run_case(comm, case)` (after `first(comm)`, if
    given); rank 0 writes the results to argv[2]. A case that fails mid-collective aborts the job."""
    comm = transport.world()
    with open(argv[1]) as fh:
        cases = json.load(fh)
    results = [first(comm)] if first is not None else []
    for case in cases:
        try:
            results.append(run_case(comm, case))
        except Exception:  # a failure mid-collective: stop every rank rather than hang
            traceback.print_exc()
            transport.abort(comm, 3)
    if comm.Get_rank() == 0:
        with open(argv[2], "w") as fh:
            json.dump(results, fh, indent=1)
        return 0 if all(r["ok"] for r in results) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
