"""Soak (scripts/bench_soak): a small model (lenet5) through a K-rank pipeline (one stage per rank) for
many frames, with per-rank resident memory sampled as frames go (runtime.RankStats.memory_samples, 64
points a run). Reports each rank's memory above its baseline at checkpoints, its peak (the final gather
of the ranks' statistics included) and the slope per 1,000 frames fitted after the first quarter.
Options: --frames N (default 100000), --ranks K (default 4), --trace (also keep trace events, which
are capped per rank), --json
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy loads, as for the ranks

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from cluster.mpirun import local_mpirun_command, mpirun_env, run_local, without_error_boxes  # noqa: E402
from layers import zoo_model  # noqa: E402
from partitioners.plan import Device, Plan, Stage, StagePrediction  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--trace", action="store_true", help="also write a trace (events kept: the most recent 20,000 per rank)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    graph = zoo_model("lenet5")
    n = len(graph)
    k = max(1, min(args.ranks, n))
    cuts = [round(i * n / k) for i in range(k + 1)]
    stages = tuple(Stage(i, a, b, (i,), "single", (), graph.cut_bytes(b) if i < k - 1 else 0, StagePrediction(0.001, 0.0, {}))
                   for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])))
    plan = Plan("lenet5", n, tuple(Device(r, "rpi4", 4 << 30) for r in range(k)), stages, planner="soak", link_bandwidth_bps=940e6).validate()
    with tempfile.TemporaryDirectory(prefix="pisplit-soak-") as tmp:
        plan_path = plan.save(Path(tmp) / "plan.json")
        report = Path(tmp) / "report.json"
        argv = [sys.executable, "-m", "cluster.cli", "run", str(plan_path), "--frames", str(args.frames), "--no-progress",
                "--report", str(report), "--json"]
        if args.trace:
            argv += ["--trace", str(Path(tmp) / "trace.json")]
        env = {**mpirun_env(), "OPENBLAS_NUM_THREADS": "1", "TERM": "dumb", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        proc = run_local(local_mpirun_command(k, argv), capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not report.exists():
            sys.exit(f"bench_soak: the run failed (exit {proc.returncode}): {without_error_boxes(proc.stderr).strip()[-600:]}")
        doc = json.loads(report.read_text())

    out = {"model": "lenet5", "ranks": k, "frames": doc["frames"], "wall_s": round(wall, 1), "throughput_fps": round(doc["throughput_fps"], 1),
           "every_frame_once": doc["every_frame_once"], "per_rank": []}
    for r in doc["ranks"]:
        samples = r["memory_samples"]
        picks = [samples[min(len(samples) - 1, round(q * (len(samples) - 1)))] for q in (0.0, 0.25, 0.5, 0.75, 1.0)] if samples else []
        out["per_rank"].append({"rank": r["rank"], "checkpoints": [[f, b] for f, b in picks],
                                "peak_above_baseline_bytes": r["memory_above_baseline_bytes"],
                                "slope_bytes_per_1000_frames": r["memory_slope_bytes_per_1000_frames"]})
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"soak: lenet5, {k}-rank pipeline, {out['frames']} frames in {wall:.1f} s ({out['throughput_fps']:.0f} frames/s), "
          f"every frame once: {out['every_frame_once']}")

    def kib(b):
        return f"{b / 1024:8.1f}"

    for r in out["per_rank"]:
        marks = "  ".join(f"@{f}: {kib(b).strip()} KiB" for f, b in r["checkpoints"])
        slope = r["slope_bytes_per_1000_frames"]
        print(f"rank {r['rank']}: above baseline {marks}; peak {kib(r['peak_above_baseline_bytes']).strip()} KiB; "
              f"slope {'-' if slope is None else f'{slope / 1024:+.2f}'} KiB per 1,000 frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
