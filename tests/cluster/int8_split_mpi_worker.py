"""MPI worker of test_int8_split_mpi: int8 splits run by the real runtime (cluster.split_exec).

Usage: mpirun -n K python int8_split_mpi_worker.py CASES.json RESULTS.json
Every rank builds the int8 test model (tests/layers/int8_split_models.py) and each case's split, and
runs only its own part; rank 0 feeds the segment's int8 input as the whole model computes it from a
seeded int8 image and compares the merged output with the unsplit segment: the same integers, every
value. A case with "error" expects that one-line error from the root instead (and no hang).
"""
from __future__ import annotations

import sys

import numpy as np

from cluster import transport
from cluster.split_exec import SegmentRunner, SplitRunner
from layers.errors import PisplitError
from partitioners.plan import Segment
from partitioners.split_quant import as_integers
from partitioners.splits import split_layer
from tests.cluster.split_mpi_worker import run_cases
from tests.layers.int8_split_models import int8_split_graph


def _options(case: dict) -> dict:
    options = dict(case.get("options", {}))
    if "grid" in options:
        options["grid"] = tuple(options["grid"])
    return options


def _sizes(sizes):
    if isinstance(sizes, list) and sizes and isinstance(sizes[0], list):
        return tuple(tuple(s) for s in sizes)
    return tuple(sizes) if isinstance(sizes, list) else sizes


def run_case(comm, case: dict) -> dict | None:
    """Collective: one case on every rank; rank 0 returns its result."""
    rank = comm.Get_rank()
    error = None
    runner = split = None
    graph = int8_split_graph(bool(case.get("float_io")))
    try:
        split = split_layer(graph, case["layer"], case["kind"], _sizes(case["sizes"]), **_options(case))
        if case.get("segment_runner"):
            seg = Segment(split.node_start, split.node_stop, split.kind, tuple(range(split.n_parts)), split.sizes,
                          {k: v for k, v in split.options.items() if k != "shares"})
            runner = SegmentRunner(comm, graph, seg)
        else:
            runner = SplitRunner(comm, split)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    message = transport.first_error(comm, error)
    if message is not None:
        return {"id": case["id"], "ok": False, "error": f"set-up: {message}"} if rank == 0 else None
    problems = []
    frames = 3 if split.kind == "data-parallel" else 1
    for seed in range(2):
        x = None
        if rank == 0:
            envs = [graph.execute(graph.random_input(seed * 10 + f), 0, split.node_start) for f in range(frames)]
            x = {t: np.concatenate([e[t] for e in envs]) for t in split.inputs}
        failure = None
        try:
            if isinstance(runner, SegmentRunner):
                got = runner.run(x if rank == 0 else {}).get(split.output) if rank == 0 else runner.run({})
            elif split.kind == "data-parallel":  # frames given stacked go out as they are: float32, as the runtime carries them
                got = runner.run_frames({t: v.astype(np.float32) for t, v in x.items()} if rank == 0 else None, frames)
            else:
                got = runner.run(x)
        except PisplitError as exc:  # only the root raises (after every part has sent): no rank waits
            failure = str(exc)
        failure = transport.first_error(comm, failure)  # every rank stops together
        if failure is not None:
            problems.append(f"error: {failure}")
            break
        if rank == 0:
            want = split.reference(x)
            got = as_integers(got, np.int8, split.layer)  # carried as float32 buffers: exactly integers
            if got.shape != want.shape or not np.array_equal(got, want):
                problems.append(f"seed {seed}: {int((got != want).sum())} of {want.size} values differ")
            elif np.unique(want).size < min(6, want.size // 2):
                problems.append(f"seed {seed}: degenerate data")
    transport.quiet_barrier(comm)
    if rank != 0:
        return None
    expected = case.get("error")
    if expected is not None:
        ok = len(problems) == 1 and problems[0].startswith("error: ") and expected in problems[0]
        return {"id": case["id"], "ok": ok, "error": None if ok else f"expected error {expected!r}, got {problems}"}
    return {"id": case["id"], "ok": not problems, "error": "; ".join(problems) or None}


def main(argv: list[str]) -> int:
    return run_cases(argv, run_case)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
