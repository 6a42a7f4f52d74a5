"""Benchmark: split layers over 1 and 2 MPI ranks of this machine with each applicable kind.

For each (layer, kind, ranks) it launches `mpirun -n K pisplit split MODEL LAYER --kind KIND
--no-followers --json` and reports time per frame, speedup over the unsplit layer (same engine, same
threads per rank) and the communication share (1 - slowest part's compute / split time). Each rank
gets `--threads` BLAS threads (default 1: a rank stands for one device with one core here, so two
ranks on this two-core machine compare like two devices against one). 'compute-only' is the speedup
with each part timed alone (what separate devices would compute, as the paper's figures); two ranks
on this machine's two vCPUs slow each other (two 1-thread matmuls run at about half speed each).
Layers: VGG16 block1_conv2
(224x224x64 -> 64, 3x3, same) and AlexNet fc6 (9216 -> 4096). Run via `scripts/bench_splits`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.table import Table

from cluster.mpirun import local_mpirun_command, mpirun_env, run_local
from cluster.output import console
from partitioners.vocabulary import SplitKind

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    ("vgg16", "block1_conv2", ["conv-channel", "conv-spatial", "conv-filter", "fused-tiles", "data-parallel"]),
    ("alexnet", "fc6", ["fc-output", "fc-input", "data-parallel"]),
]


def run_case(model: str, layer: str, kind: str, ranks: int, repeat: int, threads: int, engine: str) -> dict:
    """One `pisplit split` launch; returns its JSON document (or {'error': ...})."""
    argv = [sys.executable, "-m", "cluster.cli", "split", model, layer, "--kind", kind, "--no-followers",
            "--repeat", str(repeat), "--engine", engine, "--json"]
    if kind == SplitKind.FUSED_TILES and ranks == 2:
        argv += ["--grid", "1x2"]  # one layer in bands is conv-spatial; tiles here cut columns
    env = mpirun_env()
    env.update({"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT),
                "OMPI_MCA_mpi_yield_when_idle": "1"})  # a rank waiting for another leaves it the core
    proc = run_local(local_mpirun_command(ranks, argv), capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        return {"model": model, "layer": layer, "kind": kind, "ranks": ranks, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_splits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2", help="rank counts (default 1,2)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per case (median; default 5)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per rank (default 1)")
    p.add_argument("--engine", default="numpy", help="engine of the parts and of the unsplit layer (default numpy)")
    p.add_argument("--only", help="run only this layer name (block1_conv2 or fc6)")
    p.add_argument("--kinds", help="run only these split kinds (comma-separated)")
    p.add_argument("--output", metavar="OUT.json", help="also write the JSON document here")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    args = p.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    results = []
    for model, layer, kinds in LAYERS:
        if args.only and args.only != layer:
            continue
        for kind in kinds:
            if args.kinds and kind not in args.kinds.split(","):
                continue
            for k in ranks:
                doc = run_case(model, layer, kind, k, args.repeat, args.threads, args.engine)
                results.append(doc)
                if not args.json:
                    console.print(f"{model} {layer} {kind} x{k}: " + (f"{doc['split_s'] * 1e3:.1f} ms" if "error" not in doc else f"error {doc['error']}"))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    summary = {"threads_per_rank": args.threads, "repeat": args.repeat, "engine": args.engine, "cpus": os.cpu_count(),
               "load_average_after": load, "results": results}
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=1))
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    table = Table(title=f"split layers on this machine: {args.threads} BLAS thread(s) per rank, engine {args.engine}, median of {args.repeat}")
    for col in ("layer", "kind", "ranks", "sizes", "unsplit ms", "split ms/frame", "speedup", "comm share", "compute-only", "max abs err"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for r in results:
        if "error" in r:
            table.add_row(f"{r['model']} {r['layer']}", r["kind"], str(r["ranks"]), "-", "-", "-", "-", "-", "-", "error")
            continue
        table.add_row(f"{r['model']} {r['layer']}", r["kind"], str(r["ranks"]), ",".join(map(str, r["sizes"])),
                      f"{r['unsplit_s'] * 1e3:.1f}", f"{r['split_s'] * 1e3:.1f}", f"{r['speedup']:.2f}x",
                      f"{r['comm_share'] * 100:.0f}%", f"{r['compute_only_speedup']:.2f}x", f"{r['max_abs_error']:.1e}")
    console.print(table)
    if load:
        console.print(f"load average after the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
