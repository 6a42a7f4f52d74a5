"""Emulated Pi clusters on this machine (scripts/bench_emulate), with the dp plan and the paper
planner's plan: measured vs predicted frames/s, speedup over one emulated device and over the paper
plan, and each model's single-device fidelity (one emulated device's measured / calibrated frames/s).
By default AlexNet, VGG16 and C3D on 4 Pi 3B+ at 94 Mbit/s (a few minutes); --full sweeps 2, 4 and 8
Pi 3B+ and 4 Pi 4 at 940 Mbit/s (about 15 minutes). --fidelity runs only the single-device fidelity, for
every zoo model by default (--models to choose) on each kind of --configs (issue 18: within 5% of the
device profile; this machine's speed measured again before each model unless --cached-speed), with
the host lateness the run reported (late_s: the host could not keep the device's
pace, so a fidelity below 1 with late_s is this machine's, not the device's) and how far behind its
emulated clock the device ended a frame on average (lateness not caught up: load, where a fidelity off
with nothing behind is the calibration's or the dilation's). A row whose host was behind the device
for more than 5% of its time says NOT A RESULT. --models takes zoo names and imported models (.tflite).
Options: --models a,b --configs rpi3:2@94mbit,... --full --fidelity [--cached-speed] --engine numpy|litert --json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from cluster.commands.emulate import implausible_speedup, run_emulated
from cluster.emulated_plans import plan_for_devices, single_device_plan
from cluster.report import late_share
from bench import cluster_config
from layers import ZOO, load_model, zoo_model
from partitioners.infeasible import InfeasiblePlan

FULL = "rpi3:2@94mbit,rpi3:4@94mbit,rpi3:8@94mbit,rpi4:4@940mbit"


LATE_BOUND = 0.05  # a run whose host was behind its emulated devices for more than this share of its time is not a result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_emulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="alexnet,vgg16,c3d")
    ap.add_argument("--configs", default="rpi3:4@94mbit")
    ap.add_argument("--full", action="store_true", help="the whole sweep: rpi3:2/4/8 at 94mbit and rpi4:4 at 940mbit")
    ap.add_argument("--fidelity", action="store_true", help="one emulated device per model and kind only (default: every zoo model)")
    ap.add_argument("--cached-speed", action="store_true",
                    help="with --fidelity: use the cached host speed (default: measure it again before each model)")
    ap.add_argument("--engine", default="numpy")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.full:
        args.configs = FULL
    if args.fidelity:
        return fidelity(args, argv)

    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", file=sys.stderr)
    rows, singles = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-emulate-") as tmpdir:
        tmp = Path(tmpdir)
        for model in args.models.split(","):
            graph = zoo_model(model)
            for config in args.configs.split(","):
                devices, kind, link_bps = cluster_config(config)
                if (model, kind) not in singles:
                    singles[(model, kind)] = single_fidelity(graph, model, kind, link_bps, args.engine, tmp)
                one_fps, one_pred = singles[(model, kind)][:2]
                plans = {}
                row = {"model": model, "devices": devices, "link_mbit": link_bps / 1e6, "single_fps": one_fps,
                       "single_predicted_fps": one_pred, "single_fidelity": one_fps / one_pred}
                for planner in ("dp", "paper"):
                    plan = plans[planner] = plan_for_devices(graph, model, devices, link_bps, planner, "throughput", args.engine)
                    # about eight rounds of every replica (data-parallel stages finish frames in bursts, and the
                    # throughput fit needs several) and at least 32 frames where that takes under ~40 s of emulated
                    # time (a two-stage AlexNet pipeline on 2 Pi 3B+ read x1.07-1.08 from 16 frames, x1.02 from 40:
                    # its fill was still in the estimate), at least 16 frames
                    frames = max(16, min(max(8 * plan.n_ranks, 32), int(40 * plan.predicted_throughput_fps)))
                    t = time.time()
                    rep = run_emulated(plan.save(tmp / f"{planner}.json"), plan.n_ranks, frames, tmp / f"{planner}-report.json",
                                       args.engine, progress=False)
                    if not rep["every_frame_once"]:
                        sys.exit(f"bench_emulate: {model} on {config}, {planner} plan: frames lost or duplicated "
                                 f"({rep.get('frames')} of {frames} reported)")
                    row[planner] = {"ranks": plan.n_ranks,
                                    "stages": [f"{s.mode}x{len(s.ranks)}[{s.node_start}:{s.node_stop})" for s in plan.stages],
                                    "measured_fps": rep["throughput_fps"], "predicted_fps": plan.predicted_throughput_fps,
                                    "measured_over_predicted": rep["throughput_fps"] / plan.predicted_throughput_fps,
                                    "latency_p50_ms": rep["latency_ms"]["p50"], "frames": frames, "seconds": time.time() - t,
                                    "late_s": max(r["emulation_late_s"] for r in rep["ranks"]), "late_share": late_share(rep)}
                row["speedup_vs_single"] = row["dp"]["measured_fps"] / one_fps
                row["measurement_problem"] = implausible_speedup(plans["dp"], row["speedup_vs_single"])  # the dp plan's ranks
                late = [f"{planner} plan's ranks behind their devices for {row[planner]['late_share']:.0%} of the run"
                        for planner in ("dp", "paper") if row[planner]["late_share"] > LATE_BOUND]
                if late and not row["measurement_problem"]:
                    # as the fidelity rows: this machine could not keep the emulated devices' pace (load), so the row
                    # measures this machine (a C3D dp row read x0.78 at load 5; alone, right after, x1.005)
                    row["measurement_problem"] = "this machine was late: " + "; ".join(late)
                row["speedup_vs_paper"] = row["dp"]["measured_fps"] / row["paper"]["measured_fps"]
                rows.append(row)
                if not args.json:
                    d, p = row["dp"], row["paper"]
                    print(f"{model:8s} {devices:7s} {row['link_mbit']:4.0f} Mbit/s | dp {d['measured_fps']:6.2f} fps "
                          f"(pred {d['predicted_fps']:6.2f}, x{d['measured_over_predicted']:.2f}) | paper {p['measured_fps']:6.2f} "
                          f"(pred {p['predicted_fps']:6.2f}, x{p['measured_over_predicted']:.2f}) | "
                          f"one {kind} {one_fps:5.2f} (pred {one_pred:5.2f}, x{one_fps / one_pred:.2f}) | speedup "
                          f"{row['speedup_vs_single']:.2f}x vs one, {row['speedup_vs_paper']:.2f}x vs paper | dp {' '.join(d['stages'])}"
                          + (f" | NOT A RESULT: {row['measurement_problem']}" if row["measurement_problem"] else ""), flush=True)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
    return 0


def single_fidelity(graph, model: str, kind: str, link_bps: float, engine: str, tmp: Path, recalibrate: bool = False) -> tuple:
    """(measured fps, calibrated fps, frames, host late seconds, ms behind its emulated clock at a frame's
    end, on average: lateness not caught up, frames / wall seconds, cluster.report.late_share) of the whole
    model on one emulated device of `kind`, over about 10 s of emulated time (4 to 2000 frames: long enough to be stable;
    40 frames of LeNet-5 lasted 80 ms, where one preemption moved the figure by 20%);
    `recalibrate`: this machine's speed measured again just before (cluster.host_speed), not the
    cached one of up to an hour ago, which other load may have skewed either way."""
    single = single_device_plan(graph, model, kind, link_bps, engine)
    frames = max(4, min(2000, int(10 * single.predicted_throughput_fps)))
    rep = run_emulated(single.save(tmp / "single.json"), 1, frames, tmp / "single-report.json", engine, progress=False,
                       recalibrate=recalibrate)
    return (rep["throughput_fps"], single.predicted_throughput_fps, frames, rep["ranks"][0]["emulation_late_s"],
            rep["ranks"][0].get("emulation_behind_ms_per_frame", 0.0), rep.get("wall_fps"), late_share(rep))


def fidelity(args, argv) -> int:
    """--fidelity: one emulated device per model and device kind, measured over calibrated frames/s."""
    models = args.models.split(",") if "--models" in (argv or sys.argv[1:]) else list(ZOO)
    kinds = dict.fromkeys(cluster_config(c)[1:] for c in args.configs.split(","))  # (kind, link) once each
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fidelity-") as tmpdir:
        for model in models:
            graph = load_model(model)  # a zoo name or an imported model (.tflite, pisplit .json)
            for kind, link_bps in kinds:
                t = time.time()
                load = Path("/proc/loadavg").read_text().split()[0]
                try:
                    fps, pred, frames, late, behind, wall_fps, behind_share = single_fidelity(
                        graph, model, kind, link_bps, args.engine, Path(tmpdir), not args.cached_speed)
                except InfeasiblePlan as exc:  # e.g. ViT-B/16 on the litert engine in one Pi 3B+'s memory
                    rows.append({"model": model, "kind": kind, "infeasible": str(exc)})
                    if not args.json:
                        print(f"{graph.name if Path(model).suffix else model:12s} one {kind:5s} | does not fit one device: "
                              f"{str(exc).rsplit(': ', 1)[-1]}", flush=True)
                    continue
                # this machine behind the emulated device for more than 5% of the run: the row measures this machine
                row = {"model": model, "kind": kind, "frames": frames, "measured_fps": fps, "calibrated_fps": pred,
                       "fidelity": fps / pred, "within_5pct": abs(fps / pred - 1) <= 0.05, "host_behind_share": behind_share,
                       "valid": behind_share <= LATE_BOUND,
                       # frames / the run's wall time: a fit over completions reads a late start caught up as speed
                       "wall_fidelity": wall_fps / pred if wall_fps else None,
                       "late_ms_per_frame": late / frames * 1e3, "behind_ms_per_frame": behind, "load_average": float(load),
                       "seconds": time.time() - t}
                rows.append(row)
                if not args.json:
                    print(f"{graph.name if Path(model).suffix else model:12s} one {kind:5s} | {fps:8.3f} fps (calibrated {pred:8.3f}) fidelity x{row['fidelity']:.3f}"
                          f"{'' if row['within_5pct'] else '  OUTSIDE 5%'} (by wall time x{row['wall_fidelity'] or 0:.3f}) | "
                          f"{frames:2d} frames | host late "
                          f"{row['late_ms_per_frame']:7.2f} ms/frame, behind at its end {behind:6.3f} ms | load {load} | "
                          f"{row['seconds']:.0f} s" + ("" if row["valid"] else f" | NOT A RESULT: this machine was behind the "
                                                         f"emulated device for {behind_share:.0%} of its time"), flush=True)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
