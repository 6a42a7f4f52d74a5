"""Benchmark: one model's forward pass in one process with the numpy engine, per node, against the
GFLOPS numpy.matmul reaches in the same run. Run via `scripts/bench_forward [MODEL] [--repeat N]`."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
from rich.table import Table

from layers import load_model

from cluster.output import console


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """Best-of-`repeat` GFLOPS of a float32 n x n matmul (the BLAS ceiling for the kernels)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_model(name: str, repeat: int) -> dict:
    """Per-node median times of `repeat` warm forward passes."""
    g = load_model(name)
    for n in g.nodes:  # materialise weights outside the timed region
        g.node_weights(n)
    env = g.random_input(0)
    times = {n.name: [] for n in g.nodes}
    totals = []
    for _ in range(repeat + 1):  # first pass warms caches and allocator
        tensors = dict(env)
        t_start = time.perf_counter()
        for i, node in enumerate(g.nodes):
            t0 = time.perf_counter()
            outs = g.run_node(node, [tensors[t] for t in node.inputs])
            times[node.name].append(time.perf_counter() - t0)
            tensors.update(zip(node.outputs, outs))
        totals.append(time.perf_counter() - t_start)
    per_node = []
    for i, node in enumerate(g.nodes):
        t = statistics.median(times[node.name][1:])
        per_node.append({"name": node.name, "op": node.op, "flops": g.cost(i).flops, "seconds": t})
    return {"model": g.name, "forward_seconds": statistics.median(totals[1:]), "nodes": per_node}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_forward", description=__doc__)
    p.add_argument("model", nargs="?", default="vgg16")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--matmul-size", type=int, default=2048, metavar="N", help="side of the matmul timed as the ceiling (default 2048)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    ceiling = matmul_gflops(args.matmul_size)
    res = bench_model(args.model, args.repeat)
    conv = [n for n in res["nodes"] if n["op"] in ("conv2d", "conv3d")]
    conv_flops = sum(n["flops"] for n in conv)
    conv_seconds = sum(n["seconds"] for n in conv)
    conv_gflops = conv_flops / conv_seconds / 1e9 if conv_seconds else 0.0
    ceiling_after = matmul_gflops(args.matmul_size)
    ceiling = max(ceiling, ceiling_after)
    res.update({"matmul_size": args.matmul_size, "matmul_gflops": ceiling, "conv_gflops": conv_gflops, "conv_fraction_of_matmul": conv_gflops / ceiling})
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    table = Table(title=f"{res['model']}: numpy engine, one frame, median of {args.repeat}")
    for c in ("node", "op", "GFLOP", "ms", "GFLOPS"):
        table.add_column(c, justify="left" if c in ("node", "op") else "right")
    for n in res["nodes"]:
        if n["seconds"] > 0.0005 or n["op"] in ("conv2d", "conv3d", "dense"):
            table.add_row(n["name"], n["op"], f"{n['flops'] / 1e9:.3f}", f"{n['seconds'] * 1e3:.1f}",
                          f"{n['flops'] / n['seconds'] / 1e9:.1f}" if n["seconds"] else "-")
    console.print(table)
    console.print(f"forward: {res['forward_seconds'] * 1e3:.0f} ms per frame; conv layers {conv_gflops:.1f} GFLOPS = "
                  f"{res['conv_fraction_of_matmul']:.2f} of numpy.matmul ({ceiling:.1f} GFLOPS, {args.matmul_size}^2, same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
