"""Real pipelines on this machine, no emulation (scripts/bench_pipeline).

Each model as a 2-rank pipeline (two stages balanced on node times measured as a rank runs them: the
plan's engine, one thread) vs the whole model on 1 rank, one thread per rank, measured in one run. The
cut is then tried against its two neighbours in short real 2-rank runs and the fastest kept. The
ratio's limit is 2.0 on two cores. With the litert engine the whole model in one plain LiteRT
interpreter (what a user would run on one Pi) is timed beside them, with one thread (the fair
comparison: two ranks on two cores with one thread each) and with two. First it measures how much of
two cores this machine gives right now: two one-thread matmul loops side by side vs one alone (a VM
whose host is busy gives less than 2.0, and no pipeline can beat that).
Options: --models a,b --engines numpy,litert --frames N [--spin-seconds S]
"""
import os

# One BLAS thread in this process too, before numpy loads: the stage cut is balanced on node times measured here.
os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from cluster.commands.bench import PlainInterpreter, plain_litert_model  # noqa: E402
from cluster.emulated_plans import balanced_plan  # noqa: E402
from cluster.mpirun import local_mpirun_command, mpirun_env  # noqa: E402
from layers import zoo_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SPIN = """
import sys, time, numpy as np
a = np.random.default_rng(0).random((384, 384), dtype=np.float32)
t0, n = time.perf_counter(), 0
while time.perf_counter() - t0 < float(sys.argv[1]):
    a @ a; n += 1
print(n / (time.perf_counter() - t0))
"""


def two_core_capacity(seconds: float = 3.0) -> float:
    """Work per second of two one-thread loops side by side / one loop alone (2.0 = two full cores)."""
    spin = [sys.executable, "-c", SPIN, str(seconds)]
    one = float(subprocess.run(spin, capture_output=True, text=True, check=True).stdout)
    procs = [subprocess.Popen(spin, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    return sum(float(p.communicate()[0]) for p in procs) / one


def run(env, plan_path, n, frames, engine):
    cmd = local_mpirun_command(n, [sys.executable, "-m", "cluster.cli", "run", str(plan_path), "--frames", str(frames),
                                   "--engine", engine, "--json"])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    return json.loads(proc.stdout)


def plain_fps(model, graph, threads, frames):
    """Frames per second of the whole model in one plain LiteRT interpreter (after two warm passes)."""
    interp = PlainInterpreter(plain_litert_model(model, graph, True), graph, threads)
    feeds = graph.random_input(0)
    for _ in range(2):
        interp.run(feeds)
    t0 = time.perf_counter()
    for _ in range(frames):
        interp.run(feeds)
    return frames / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16,alexnet")
    ap.add_argument("--engines", "--engine", default="numpy,litert")
    ap.add_argument("--frames", type=int, default=0, help="frames per run (default: about 8 s of work)")
    ap.add_argument("--spin-seconds", type=float, default=3.0, help="length of each two-core capacity loop (default 3)")
    args = ap.parse_args(argv)
    env = mpirun_env()
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", TERM="dumb", NO_COLOR="1", PYTHONPATH=str(ROOT))

    print(f"load: {open('/proc/loadavg').read().split()[:3]}; two-core capacity now {two_core_capacity(args.spin_seconds):.2f} (of 2.0)",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            graph = zoo_model(model)
            for engine in args.engines.split(","):
                two = balanced_plan(graph, model, [("host", 2)], 1e12, engine)
                one = balanced_plan(graph, model, [("host", 1)], 1e12, engine)
                frames = args.frames or max(8, int(8 / max(sum(s.predicted.compute_s for s in one.stages), 1e-3)))
                plain = {}
                if engine == "litert":
                    plain[1] = plain_fps(model, graph, 1, frames)
                r1 = run(env, one.save(Path(tmp) / "one.json"), 1, frames, engine)
                # the settled cut and its neighbours, each in a short real 2-rank run: the stage times
                # measured alone miss how the two ranks slow each other (caches, the memory bus)
                cut = two.stages[1].node_start
                trial_frames = max(6, frames // 6)
                trials = {}
                for c in (cut - 1, cut, cut + 1):
                    if 0 < c < len(graph):
                        plan_c = two if c == cut else balanced_plan(graph, model, [("host", 2)], 1e12, engine, cuts=[c])
                        trials[c] = (run(env, plan_c.save(Path(tmp) / f"two-{c}.json"), 2, trial_frames, engine)["throughput_fps"], plan_c)
                best = max(trials, key=lambda c: trials[c][0])
                two = trials[best][1]
                tried = ", ".join(f"{graph.nodes[c].name} {fps:.1f}" for c, (fps, _) in sorted(trials.items()))
                r2 = run(env, two.save(Path(tmp) / "two.json"), 2, frames, engine)
                if engine == "litert":
                    plain[2] = plain_fps(model, graph, 2, frames)
                cut = two.stages[1].node_start
                predicted = "/".join(f"{s.predicted.compute_s * 1e3:.1f}" for s in two.stages)
                stages = ", ".join(f"stage {s['index']} {s['compute_ms']:.1f} ms compute, {s['wait_ms']:.1f} ms waiting" for s in r2["stages"])
                line = (f"{model} [{engine}]: 1 rank {r1['throughput_fps']:.2f} frames/s, 2-rank pipeline (cut before {graph.nodes[cut].name}, "
                        f"balanced {predicted} ms; trial frames/s by cut: {tried}) {r2['throughput_fps']:.2f} frames/s -> ratio "
                        f"{r2['throughput_fps'] / r1['throughput_fps']:.2f}")
                if plain:
                    line += (f"; plain LiteRT 1 thread {plain[1]:.2f} frames/s -> 2-rank / plain {r2['throughput_fps'] / plain[1]:.2f}, "
                             f"plain LiteRT 2 threads {plain[2]:.2f} -> {r2['throughput_fps'] / plain[2]:.2f}")
                print(line + f" ({frames} frames; {stages}; latency p50 {r1['latency_ms']['p50']:.0f} -> {r2['latency_ms']['p50']:.0f} ms)",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
