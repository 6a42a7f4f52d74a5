"""Resilience (scripts/bench_resilience): emulated Pi clusters that lose devices mid-stream under
`pisplit emulate --resilient`'s supervisor (cluster.supervisor). For each model, cluster and number of
failures, the devices' ranks are SIGKILLed (or SIGSTOPped: --mode stop; or made ten times slower:
--mode slow, a rank that falls behind its own pace) one per attempt at evenly spaced frames; the
supervisor replans on the survivors and reruns the frames without a result.

Reported per failure: frames kept (answered before it), detection (last result before the failure to
the job's end: the stall bound for a stopped rank, until it is a stall bound behind for a slow one), recovery (the job's end to the first new result:
replanning, mpirun, model load and warm-up on the survivors), split into model load and the rest (the
target: the rest under 10 s), and the rest by phase (cluster.supervisor.recovery_phases: replan, launch,
start, model load, warm-up, first result), time lost (last result before to first result after); per run: frames lost and duplicated (target 0 and 0), the attempts' plans, wall time and
its excess over the same frames on the same plan without failures (run first, once per model and cluster).

Options: --models alexnet,vgg16 --devices rpi3:4,rpi3:8 --failures 1,2 --frames N (default 60)
--mode kill|stop|slow --stall-timeout S (with stop and slow; default 5) --link 94mbit --no-baseline --json
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy loads, as for the ranks

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from cluster.commands.resilient import child_env  # noqa: E402
from cluster.emulated_plans import plan_for_devices  # noqa: E402
from cluster.emulation import parse_link  # noqa: E402
from cluster.host_speed import host_speed  # noqa: E402
from cluster.supervisor import supervise  # noqa: E402
from layers import load_model  # noqa: E402


def one_run(model: str, devices: str, failures: int, frames: int, mode: str, stall: float, link: str, baseline: dict | None) -> dict:
    graph = load_model(model)
    plan = plan_for_devices(graph, model, devices, parse_link(link), "dp", "throughput", "numpy")
    speed = host_speed(plan.model, plan.model_seed, "numpy", concurrency=plan.n_ranks)
    child = ["--emulate", "--engine", "numpy", "--host-speed", repr(speed)]
    if mode in ("stop", "slow"):
        child += ["--stall-timeout", str(stall)]
    # failure k at frame (k + 1) * frames / (failures + 1) - a little, on the last rank of the plan then in use
    # (a middle-of-pipeline rank when the plan has one stage per device; rank 0 is the source and sink)
    faults, ranks = [], plan.n_ranks
    for k in range(failures):
        faults.append((max(ranks - 1, 0), int((k + 1) * frames / (failures + 1.5)), mode))
        ranks -= 1
    say = lambda line: print(f"  {line}", file=sys.stderr, flush=True)  # noqa: E731
    if baseline is not None and (model, devices) not in baseline:
        t0 = time.perf_counter()
        supervise(plan, frames, child, graph, env=child_env(one_thread=True), say=say)  # the same frames, nothing failing
        baseline[(model, devices)] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = supervise(plan, frames, child, graph, env=child_env(one_thread=True), faults=faults, say=say)
    wall = time.perf_counter() - t0
    base = baseline.get((model, devices)) if baseline is not None else None
    return {"model": model, "devices": devices, "failures_injected": failures, "mode": mode, "frames": frames,
            "every_frame_once": result.every_frame_once, "frames_lost": int(result.missing.size), "frames_duplicated": result.duplicated,
            "wall_s": round(wall, 1), "wall_without_failures_s": round(base, 1) if base else None,
            "extra_wall_s": round(wall - base, 1) if base else None, "ranks_at_end": result.plan.n_ranks if result.plan else None,
            "attempts": [{k: a[k] for k in ("attempt", "ranks", "stages", "frames_asked", "frames_delivered", "exit", "predicted_fps")}
                         for a in result.attempts],
            "failures": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in f.items()} for f in result.failures]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_resilience", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="alexnet,vgg16")
    ap.add_argument("--devices", default="rpi3:4,rpi3:8")
    ap.add_argument("--failures", default="1,2")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--mode", choices=("kill", "stop", "slow"), default="kill")
    ap.add_argument("--stall-timeout", type=float, default=5.0)
    ap.add_argument("--link", default="94mbit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run without failures (extra wall time is then not reported)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    runs = []
    baseline: dict | None = None if args.no_baseline else {}
    for model in args.models.split(","):
        for devices in args.devices.split(","):
            for failures in (int(f) for f in args.failures.split(",")):
                print(f"{model} on {devices}, {failures} failure{'s' if failures > 1 else ''} ({args.mode}):", file=sys.stderr, flush=True)
                runs.append(one_run(model, devices, failures, args.frames, args.mode, args.stall_timeout, args.link, baseline))
    if args.json:
        print(json.dumps({"runs": runs}, indent=1))
        return 0
    print(f"{'model':9} {'devices':8} {'fail':>4} {'frames':>6} {'lost':>4} {'dup':>3} {'kept':>12} {'detect s':>9} {'recover s':>9} "
          f"{'load s':>9} {'rest s':>9} {'lost s':>7} {'wall s':>7} {'+wall s':>7}  plans")
    for r in runs:
        fs = r["failures"]
        kept = ",".join(str(f["frames_kept"]) for f in fs) or "-"
        col = lambda key: ",".join("-" if f.get(key) is None else f"{f[key]:.1f}" for f in fs) or "-"  # noqa: E731
        plans = " -> ".join(f"{a['ranks']}r" for a in r["attempts"])
        print(f"{r['model']:9} {r['devices']:8} {r['failures_injected']:>4} {r['frames']:>6} {r['frames_lost']:>4} {r['frames_duplicated']:>3} "
              f"{kept:>12} {col('detected_s'):>9} {col('recovery_s'):>9} {col('model_load_s'):>9} {col('recovery_without_model_load_s'):>9} "
              f"{col('time_lost_s'):>7} {r['wall_s']:>7.1f} {'-' if r['extra_wall_s'] is None else r['extra_wall_s']:>7}  {plans}")
    print("\nrecovery by phase, seconds (replan, launch, start, model load, warm-up, first result):")
    for r in runs:
        for f in r["failures"]:
            phases = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f}" for k, v in (f.get("recovery") or {}).items())
            print(f"  {r['model']} {r['devices']} failure in attempt {f['attempt']}: {phases or '-'}")
    return 0 if all(r["every_frame_once"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
