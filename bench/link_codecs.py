"""Link codecs on plans (issue 15's Benchmarks), side by side in one run:

1. codec tables: per cut of the trained branchy AlexNet (held-out digits, with each lossy codec's
   accuracy loss) and of AlexNet / VGG16 (zoo weights, photographs: scikit-learn's china.jpg and
   flower.jpg, ImageNet-normalised): ratio of each codec and the best transfer at 94 and 2 Mbit/s;
2. emulated Pi 3B+ clusters (4 and 8) at 94 Mbit/s, AlexNet and VGG16: the dp plan priced without and
   with codecs (lossless; then lossy within 1% relative error), predicted and measured. Each cluster
   run comes right after a one-device run of its own (side by side: both see this machine's load
   then), on the frames the codec table was measured on, round-robin (so the links compress as the
   table says); a row gives measured/predicted for both and the measured ratio over a baseline it can
   trust: the pair's own one-device run when that ran within FIDELITY (5%) of its calibration and
   kept up, else (flagged) the median of this invocation's one-device runs of the model that did, else
   the calibrated one-device rate (baseline_of: a slow baseline read 6.85x for a 5.4x). The ratio is
   NOT A RESULT when this machine fell behind the emulated cluster (a rank's emulation_late_s above
   LATE_SHARE of its run, in every pair) or it exceeds the device count. The links' bytes per frame are
   measured from the senders' paced link time (cluster.link_codecs.measured_link_bytes) beside the
   table's compressed sizes: a run that did not use its plan's codecs shows (!);
3. edge (Pi 3B+) + host at 1, 2 and 22 Mbit/s on the trained branchy AlexNet and zoo AlexNet (on
   photographs; a setting whose 8 frames take over --edge-max-seconds is predicted only: AlexNet's raw
   input at 1 and 2 Mbit/s, 5 and 2.5 s a frame): all on the edge, all on the host with a raw and a
   coded input (run as the model behind an input-passing node on the edge,
   partitioners.edge_host.edge_input_graph), the best split with a raw link, the --top-cuts best
   predicted cuts with codecs (within 1% accuracy loss) and the best cut at the last conv layer, all
   emulated on held-out frames; edge energy per frame (partitioners.edge_host's power model) predicted
   and at the measured throughput (NOT A RESULT when a rank fell behind its device beyond what it caught
   up in its waits for input: uncaught_late_share); then where the best cut lies per link, predicted and measured, and
   whether the paper's trend (at the last conv layer at low bandwidth, earlier as bandwidth grows)
   holds, in one line each.

Codec seconds are measured on this machine and turned into the reference machine's with its measured
speed (cluster.host_speed) before the planner scales them to a Pi 3B+ (link_pricing.in_reference_seconds).

Run through scripts/bench_link_codecs, as root under `nice -n -20` (main then gives this session's
scheduling group that nice for the run, bench.edgent.session_nice: under autogroup scheduling other
sessions' jobs took the cores from 8 emulated VGG16 ranks at nice -20, which fell 8-30% behind; with
the group's nice, 0%). About 15 minutes on a quiet 2-core machine; `--full`: 3 pairs a plan, 15 s
runs, every edge-host setting emulated; `--quick`: a smoke run; `--json PATH`: every row.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.table import Table

from bench.edgent import AUTOGROUP, session_nice
from cluster.codec_table import check_table, measure_codec_table, sample_frames, this_machine_speed
from cluster.commands.codecs import save_edge_input_graph
from cluster.commands.emulate import implausible_speedup, run_emulated
from cluster.emulated_plans import single_device_plan
from cluster.link_codecs import frame_header_bytes, measured_link_bytes
from cluster.output import console, human_bytes
from cluster.report import late_share
from layers import load_model
from partitioners.codec_cost import codec_cost_model
from partitioners.codecs import link_codecs, parse_codec
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices
from partitioners.edge_host import POWER, best_candidate, edge_host_candidates, edge_host_plan, transmitter_watts
from partitioners.link_pricing import CodecTable, LossBudget, choose_codec, in_reference_seconds
from partitioners.planners import make_plan
from partitioners.profiles import Calibration
from partitioners.vocabulary import StageMode

FIDELITY = 0.05  # a one-device run further than this from its calibrated rate is no baseline (part 2 flags it)
MIN_EDGE_FRAMES = 8  # part 3: frames a run at least
LATE_SHARE = 0.05  # a run whose ranks fell behind their devices for more of its time is not a result (as `pisplit emulate` warns)
CODECS = ("rle-huffman", "zstd", "lz4", "fp16", "fp16+zstd", "int8", "int8+zstd", "jpeg:90", "jpeg:50", "jpeg:20")


def table_for(model: str, args, cache: Path):
    """The codec table of `model` (measured once per run, kept in `cache`), in this machine's seconds."""
    path = cache / f"{model}.json"
    graph = load_model(model)
    if path.exists():
        return graph, check_table(CodecTable.load(path), graph)
    t = time.perf_counter()
    table = measure_codec_table(graph, model, CODECS, n_frames=1 if args.quick else 2, accuracy_frames=50 if args.quick else args.accuracy_frames,
                                machine_speed=this_machine_speed(model))
    console.print(f"[dim]{model}: codec table measured in {time.perf_counter() - t:.0f} s on {table.n_frames} frames ({table.frames})[/dim]")
    table.save(path)
    return graph, table


def print_codec_table(graph, table) -> None:
    names = list(dict.fromkeys(s.codec for c in table.cuts for s in c.samples))
    out = Table(title=f"{graph.name}: compression ratio per cut ({table.n_frames} frames: {table.frames}); "
                      f"best transfer at 94 / 2 Mbit/s with this machine's encode+decode (lossless | any)")
    for col in ("after", "raw", "H", "nz", *names, "94M", "2M"):
        out.add_column(col, justify="left" if col == "after" else "right")
    for c in table.cuts:
        cells = []
        for n in names:
            s = next((s for s in c.samples if s.codec == n), None)
            acc = "" if s is None or s.accuracy_loss is None else f" ({s.accuracy_loss * 100:+.1f})"
            cells.append("-" if s is None else f"{c.raw_bytes / s.encoded_bytes:.1f}{acc}")
        best = []
        for bps in (94e6, 2e6):
            lossless = choose_codec(c, c.raw_bytes, c.messages, bps, 3e-4)[1]
            any_ = choose_codec(c, c.raw_bytes, c.messages, bps, 3e-4, budget=LossBudget(max_rel_error=1.0))[1]
            best.append(f"{lossless} | {any_}")
        out.add_row(c.name, human_bytes(c.raw_bytes), f"{c.entropy_bits:.1f}", f"{c.nonzero:.2f}", *cells, *best)
    console.print(out)
    console.print("[dim]H: entropy in bits per value at 256 levels; nz: non-zero share; (+x.x): top-1 accuracy points lost on "
                  "held-out digits with that cut encoded (trained models)[/dim]")


def real_frames(graph, model: str, tmp: Path, n: int = 64) -> tuple[Path | None, str]:
    """The run's input frames as an .npy (used round-robin) and what they are: the frames the codec
    table was measured on (cluster.codec_table.sample_frames: held-out digits of a trained model,
    the photographs for an image model), so the run's compressed sizes are the table's. None for a
    model of several inputs (the runtime's seeded random frames)."""
    frames, source, _ = sample_frames(graph, model, n)
    if len(graph.inputs) != 1:
        return None, "seeded random frames (a model of several inputs)"
    name = next(iter(graph.inputs))
    path = tmp / f"{graph.name}-frames.npy"
    np.save(path, np.concatenate([f[name] for f in frames]).astype(np.float32), allow_pickle=False)
    return path, source


def predicted_link_bytes(plan, graph, table) -> dict:
    """Bytes per frame the plan's links should carry with its codecs: {"input": ..., k: ...} as
    cluster.link_codecs.measured_link_bytes measures them; an encoded cut's bytes are the codec table's
    (its mean over the table's frames, per tensor for a per-tensor codec) plus the frame's length slots."""
    def coded(cut: int, codec: str) -> float | None:
        names = graph.cut_tensors(cut)
        raw = float(sum(graph.tensor_bytes(t) for t in names))
        if all(c.kind == "raw" for c in link_codecs(parse_codec(codec), len(names))):
            return raw
        entry = table.cut(cut) if table is not None else None
        if entry is None:
            return None
        if ";" in codec:  # one codec per tensor, each tensor's own figures
            each = codec.split(";")
            found = [next((s.encoded_bytes for s in t.samples if s.codec == c), None) for t, c in zip(entry.tensors, each)]
            if len(entry.tensors) != len(each) or None in found:
                return None
            return sum(found) + frame_header_bytes(len(names), codec)
        s = next((s for s in entry.samples if s.codec == codec), None)
        return None if s is None else s.encoded_bytes + frame_header_bytes(len(names), codec)

    out = {k: coded(s.node_stop, s.send_codec) for k, s in enumerate(plan.stages[:-1])}
    out["input"] = coded(0, plan.input_codec)
    return out


def emulate(plan, path: Path, frames: int, inputs: Path | None, timeout: float = 3600) -> dict:
    """One emulated run of `plan` (every frame once, else the bench stops)."""
    extra = ["--input", str(inputs)] if inputs else []
    report = run_emulated(plan.save(path), plan.n_ranks, frames, path.with_suffix(".report.json"), "numpy", progress=False,
                          timeout=timeout, extra=extra)
    if not report["every_frame_once"]:
        raise SystemExit(f"bench_link_codecs: {plan.model} on {plan.n_ranks} ranks: frames lost or duplicated")
    return report


def measured_best(measured: list):
    """The best of a link's measured settings, (fps, late, label, candidate, late share) tuples: the
    fastest run that kept up, when no run that fell behind could have beaten it (one late for a share
    L of its time would at most have run 1 / (1 - L) times faster); else None (not known)."""
    valid = [m for m in measured if not m[1]]
    if not valid:
        return None
    best = max(valid, key=lambda m: m[0])
    beaten = [m for m in measured if m[1] and (m[4] >= 1 or m[0] / (1 - m[4]) >= best[0])]
    return None if beaten else best


def uncaught_late_share(report: dict) -> float:
    """The largest share of an emulated run's wall time a rank fell behind its device beyond the time it
    then waited for its input (max(0, emulation_late_s - wait_s) over wall_s): part 3's validity. A rank
    with slack waits for its next frame each period, and a compute step that ended late is due that much
    earlier after a wait (cluster.emulation.EmulatedDevice.compute), so lateness it caught up in its
    waits did not set the pipeline's rate. On an edge-host pipeline of 100-400 fps, the rank that is not
    the bottleneck is late by the runtime's own 0.15-0.3 ms a frame (its device step is a reshape, or a
    few ms) and waits 5-10 times that: plain late_share called such runs late at 5-8%. Conservative: time
    a rank spent blocked in a send (the receiver busy) is slack too, but is not counted (it is in comm_s
    with the transfers)."""
    return max((max(0.0, r["emulation_late_s"] - r["wait_s"]) for r in report["ranks"]), default=0.0) / max(report["wall_s"], 1e-9)


def cluster_plans(model: str, graph, table, devices: str):
    """(label, plan) of part 2: plain dp, dp with lossless codecs, dp with lossy codecs (1% relative error)."""
    cluster = make_cluster(parse_devices(devices), 94e6)
    for label, codecs, budget in (("raw", None, None), ("lossless codecs", table, None),
                                  ("codecs, 1% rel. error", table, LossBudget(max_rel_error=0.01))):
        priced = None if codecs is None else in_reference_seconds(codecs, Calibration("numpy"))
        cost = codec_cost_model(graph, cluster, Calibration("numpy"), codecs=priced, codec_budget=budget)
        yield label, make_plan(graph, cost, "dp", "throughput", model, "numpy")  # with a table: each link's codec (build_plan)


def codecs_used(plan) -> str:
    links = [s.send_codec for s in plan.stages[:-1]]
    first = plan.stages[0]
    handed = len(first.ranks) > 1 and first.mode == StageMode.DATA_PARALLEL or 0 not in first.ranks
    return (f"in {plan.input_codec}" if handed else "") + (" | " if handed and links else "") + " ".join(links) or "-"


def bytes_check(plan, graph, table, report) -> tuple[str, bool]:
    """'measured/predicted' bytes per frame of every coded link of the run, and whether all match
    within 5% (a run that did not use the plan's codecs would not)."""
    measured, predicted = measured_link_bytes(plan, graph, report), predicted_link_bytes(plan, graph, table)
    cells, ok = [], True
    for key in ["input", *range(len(plan.stages) - 1)]:
        m, p = measured.get(key), predicted.get(key)
        if m is None or p is None:
            continue
        good = abs(m / p - 1) <= 0.05
        ok &= good
        cells.append(f"{'in ' if key == 'input' else ''}{m / 1024:.1f}/{p / 1024:.1f}" + ("" if good else " (!)"))
    return " ".join(cells) or "-", ok


def paired_run(plan, single, tmp: Path, inputs, frames: int, single_frames: int) -> dict:
    """The one-device baseline and the cluster run side by side (one right after the other, so both
    see the same load on this machine): their throughputs and each run's host lateness."""
    one = emulate(single, tmp / "single.json", single_frames, inputs)
    many = emulate(plan, tmp / "plan.json", frames, inputs)
    return {"single_fps": one["throughput_fps"], "fps": many["throughput_fps"], "single_late": late_share(one), "late": late_share(many),
            "report": many, "frames": frames, "single_frames": single_frames}


def trusted_singles(pairs: list, one_pred: float) -> list:
    """The one-device throughputs among `pairs` (every pair of a model and device kind in this
    invocation) that are baselines to trust: within FIDELITY of the device's calibrated rate
    (`one_pred`) and not late."""
    return [p["single_fps"] for p in pairs if abs(p["single_fps"] / one_pred - 1) <= FIDELITY and p["single_late"] <= LATE_SHARE]


def baseline_of(pair: dict, trusted: list, one_pred: float) -> dict:
    """The one-device rate a pair's cluster run is divided by: its own one-device run when that ran
    within FIDELITY of its calibration and was not late; else (flagged) the median of the trusted
    one-device runs of the same model and device kind in this invocation (`trusted`, trusted_singles),
    or the calibrated rate when there is none."""
    fidelity = pair["single_fps"] / one_pred
    if abs(fidelity - 1) <= FIDELITY and pair["single_late"] <= LATE_SHARE:
        return {"baseline_fps": pair["single_fps"], "baseline": "paired", "baseline_flag": None}
    flag = (f"its paired one-device run was x{fidelity:.2f} of its calibration"
            + (f" and {pair['single_late']:.0%} late" if pair["single_late"] > LATE_SHARE else ""))
    if trusted:
        lo, hi = min(trusted) / one_pred, max(trusted) / one_pred
        return {"baseline_fps": float(np.median(trusted)), "baseline_flag": flag,
                "baseline": f"median of {len(trusted)} one-device run{'s' if len(trusted) > 1 else ''} of this invocation within "
                            f"{FIDELITY:.0%} of calibration (x{lo:.2f}" + ("" if len(trusted) == 1 else f"-{hi:.2f}") + ")"}
    return {"baseline_fps": one_pred, "baseline_flag": flag,
            "baseline": f"the calibrated one-device rate ({one_pred:.2f} fps; no one-device run of this invocation within {FIDELITY:.0%})"}


def cluster_result(plan, pairs: list, trusted: list, one_pred: float) -> dict:
    """Part 2's measured figures of one plan from its side-by-side `pairs` (paired_run; `trusted`:
    trusted_singles of every pair of the model in this invocation; `one_pred`: the one-device plan's
    calibrated rate): each pair's speedup over its baseline (baseline_of), the median of the pairs
    whose cluster run kept up (all pairs when none did), and why it is NOT A RESULT, if it is not
    (the cluster's ranks fell behind in every pair, or more speedup than devices)."""
    for p in pairs:
        p.update(baseline_of(p, trusted, one_pred))
        p["ratio"] = p["fps"] / p["baseline_fps"]
    good = [p for p in pairs if p["late"] <= LATE_SHARE] or pairs
    ratios = sorted(p["ratio"] for p in good)
    pick = min(good, key=lambda p: abs(p["ratio"] - ratios[len(ratios) // 2]))  # the median pair
    if all(p["late"] > LATE_SHARE for p in pairs):
        problem = f"this machine fell behind the emulated devices ({pick['late']:.0%} of a run's time): not a result"
    else:
        problem = implausible_speedup(plan, pick["ratio"])
    return {"measured_fps": pick["fps"], "single_fps": pick["single_fps"], "single_fidelity": pick["single_fps"] / one_pred,
            "single_late_share": pick["single_late"], "paired_x": pick["fps"] / pick["single_fps"],
            "baseline_fps": pick["baseline_fps"], "baseline": pick["baseline"], "baseline_flag": pick["baseline_flag"],
            "measured_x": pick["ratio"], "late_share": pick["late"], "pairs": len(pairs),
            "late_pairs": sum(p["late"] > LATE_SHARE for p in pairs), "flagged_baselines": sum(p["baseline_flag"] is not None for p in pairs),
            "frames": pick["frames"], "single_frames": pick["single_frames"], "problem": problem,
            "all_x": [round(p["ratio"], 3) for p in pairs], "report": pick["report"]}


def part_clusters(args, cache: Path, tmp: Path, rows_out: list) -> None:
    out = Table(title="dp plans on emulated Pi 3B+ at 94 Mbit/s, without and with link codecs; each cluster run beside its own "
                      "one-device run (measured x = cluster fps / a trusted one-device fps: see baseline)")
    for col in ("model", "devices", "links", "stages", "codecs used", "pred. fps", "pred. x", "meas. fps", "meas./pred.",
                "one dev. meas./pred.", "baseline", "meas. x", "late", "link KiB/frame meas./pred."):
        out.add_column(col, justify="left" if col in ("model", "devices", "links", "codecs used", "baseline") else "right")
    notes = []
    for model in args.cluster_models.split(","):
        graph, table = table_for(model, args, cache)
        emulate_it = model in args.emulate_models.split(",")
        # the table's own frames, round-robin: the run's compressed sizes are then the table's
        inputs, source = real_frames(graph, model, tmp, table.n_frames) if emulate_it else (None, "")
        if emulate_it:
            notes.append(f"{model}: frames {source}")
        single = single_device_plan(graph, model, "rpi3", 94e6, "numpy")
        one_pred = single.predicted_throughput_fps
        pending = []  # (n, label, plan, row, key): the rows are judged once every one-device run of the model is in
        runs: dict = {}  # (n, plan key) -> its pairs: the same plan is run once
        for n in args.sizes.split(","):
            for label, plan in cluster_plans(model, graph, table, f"rpi3:{n}"):
                pred = plan.predicted_throughput_fps
                row = {"model": model, "devices": f"rpi3:{n}", "links": label, "stages": len(plan.stages), "codecs": codecs_used(plan),
                       "predicted_fps": pred, "predicted_x": pred / one_pred, "single_predicted_fps": one_pred}
                key = (n, plan.input_codec, tuple((s.node_start, s.node_stop, s.ranks, s.mode, s.send_codec) for s in plan.stages))
                if emulate_it and key not in runs:
                    frames = max(args.frames, args.rounds * plan.n_ranks, min(args.max_frames, int(args.seconds * pred)))
                    single_frames = max(4, min(60, int(args.seconds * one_pred)))
                    runs[key] = [paired_run(plan, single, tmp, inputs, frames, single_frames) for _ in range(args.repeats)]
                pending.append((n, label, plan, row, key))
        every = [p for pairs in runs.values() for p in pairs]
        trusted = trusted_singles(every, one_pred)
        results: dict = {}
        for n, label, plan, row, key in pending:
            pred = row["predicted_fps"]
            if key in runs and key not in results:
                results[key] = cluster_result(plan, runs[key], trusted, one_pred)
                text, same = bytes_check(plan, graph, table, results[key].pop("report"))
                results[key].update(link_bytes=text, link_bytes_match=same)
            row.update(results.get(key, {}))
            rows_out.append({"part": 2, **row})
            m = row.get("measured_fps")
            flagged = m is not None and row["baseline_flag"] is not None
            out.add_row(model, row["devices"], label, str(row["stages"]), row["codecs"], f"{pred:.2f}", f"{row['predicted_x']:.2f}x",
                        "-" if m is None else f"{m:.2f}", "-" if m is None else f"{m / pred:.2f}",
                        "-" if m is None else f"{row['single_fidelity']:.2f}" + (" (!)" if flagged else ""),
                        "-" if m is None else ("paired" if not flagged else
                                               "calibrated" if row["baseline"].startswith("the calibrated") else "median of trusted"),
                        "-" if m is None else f"{row['measured_x']:.2f}x" + (" NOT A RESULT" if row["problem"] else ""),
                        "-" if m is None else f"{row['late_share']:.0%}", row.get("link_bytes", "-"))
            if flagged:
                notes.append(f"{model} rpi3:{n} {label}: baseline flagged: {row['baseline_flag']} ({row['paired_x']:.2f}x over it); "
                             f"measured x over {row['baseline']}")
            if row.get("problem"):
                notes.append(f"{model} rpi3:{n} {label}: {row['problem']}")
            if m is not None and not row["link_bytes_match"]:
                notes.append(f"{model} rpi3:{n} {label}: the links' bytes differ from the plan's codec sizes by more than 5% (!)")
        if every:
            fid = sorted(p["single_fps"] / one_pred for p in every)
            notes.append(f"{model}: {len(every)} one-device run(s) at x{fid[0]:.2f}-{fid[-1]:.2f} of calibration ({one_pred:.2f} fps), "
                         f"{len(trusted)} within {FIDELITY:.0%} and not late (trusted)")
    console.print(out)
    target = [r for r in rows_out if r.get("part") == 2 and r["model"] == "alexnet" and r["devices"] == "rpi3:8"]
    if target:
        best_pred = max(target, key=lambda r: r["predicted_x"])
        valid = [r for r in target if r.get("measured_x") is not None and not r.get("problem")]
        best = max(valid, key=lambda r: r["measured_x"]) if valid else None
        console.print(f"target AlexNet on 8 Pi 3B+ at least 5x one: predicted {best_pred['predicted_x']:.2f}x ({best_pred['links']}); measured "
                      + ("no valid result" if best is None else f"{best['measured_x']:.2f}x ({best['links']}; baseline {best['baseline']}) -> "
                         + ("met" if best["measured_x"] >= 5 else "not met")))
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    console.print(f"[dim]late: the largest share of a run's wall time an emulated rank fell behind its device's time (this machine "
                  f"could not keep up); above {LATE_SHARE:.0%} in every pair: not a result. baseline: the pair's own one-device run "
                  f"when it ran within {FIDELITY:.0%} of its calibration and kept up, else (!) the median of this invocation's "
                  f"one-device runs of the model that did, else the calibrated rate. link bytes: per frame, measured from "
                  f"the senders' paced link time / predicted from the codec table ('in' the input frames rank 0 hands out, then "
                  f"each stage's link)[/dim]")


def last_conv_cuts(graph) -> tuple[int, ...]:
    """Cuts at the model's last conv layer: after its last conv node, and after the pooling and
    flatten/reshape nodes right behind it (the paper's 'last conv layer': its output, pooled or not,
    in whatever shape)."""
    convs = [i for i, node in enumerate(graph.nodes) if node.op.startswith("conv")]
    if not convs:
        return ()
    cuts = [convs[-1] + 1]
    while cuts[-1] < len(graph) and ("pool" in graph.nodes[cuts[-1]].op or graph.nodes[cuts[-1]].op in ("flatten", "reshape")):
        cuts.append(cuts[-1] + 1)
    return tuple(cuts)


def trend_verdict(graph, verdict: dict, conv_cuts: tuple) -> str:
    """The paper's trend checked in numbers: is the best split at the last conv layer at the lowest
    bandwidth, and does it move no later (and somewhere earlier) as bandwidth grows; predicted and
    measured (the best of the measured settings); and whether a split wins at all."""
    n = len(graph)

    def where(cut):
        return "-" if cut is None else ("all on edge" if cut == n else "all on host" if cut == 0 else graph.nodes[cut - 1].name)

    lines = []
    for what, i in (("predicted best split", 0), ("measured best setting", 1), ("predicted best setting", 2)):
        cuts = [verdict[b][i] for b in sorted(verdict)]
        if any(c is None for c in cuts):
            lines.append(f"{what}: not known at every link (not emulated, or a run fell behind: see above)")
            continue
        at_conv = cuts[0] in conv_cuts
        earlier = all(b <= a for a, b in zip(cuts, cuts[1:])) and cuts[-1] < cuts[0]
        lines.append(f"{what} at {', '.join(f'{b / 1e6:g} Mbit/s: {where(c)}' for b, c in zip(sorted(verdict), cuts))}: "
                     f"{'at' if at_conv else 'not at'} the last conv layer at the lowest bandwidth; "
                     f"{'moves earlier' if earlier else 'does not move earlier'} as bandwidth grows -> the paper's trend "
                     f"{'holds' if at_conv and earlier else 'does not hold'} here")
    return "\n".join(lines)


def edge_host_cluster(bps: float, host_speed: float):
    """A Pi 3B+ and a host at `host_speed` x the reference host's speed (partitioners.devices host
    profile): this machine cannot emulate a device faster than itself (its rank falls behind, and the
    run is not a result), and it is slower than the reference."""
    cluster = make_cluster(parse_devices("rpi3:1,host:1"), bps)
    return replace(cluster, devices=tuple(replace(d, speed=host_speed) if d.kind == "host" else d for d in cluster.devices))


def part_edge_host(args, cache: Path, tmp: Path, rows_out: list) -> None:
    edge_inputs: dict = {}  # model -> its edge_input_graph, saved for the all-on-host runs
    emulated = set(args.edge_emulate_models.split(",")) if args.edge_emulate else set()
    for model in args.edge_models.split(","):
        verdict: dict = {}  # link -> (best split cut predicted, best cut measured)
        graph, table = table_for(model, args, cache)
        # held-out frames of a trained model; else the table's own frames (photo_frames makes synthetic ones past two)
        inputs, source = (real_frames(graph, model, tmp, 64 if "held-out" in table.frames else table.n_frames) if model in emulated
                          else (None, table.frames + " (the codec table's; not emulated)"))
        priced = in_reference_seconds(table, Calibration("numpy"))
        measured_accuracy = any(s.accuracy_loss is not None for c in table.cuts for s in c.samples)
        budget = LossBudget(max_accuracy_loss=0.01) if measured_accuracy else LossBudget(max_rel_error=0.05)
        what = "within 1% top-1 accuracy on held-out digits" if measured_accuracy else \
            "within 5% relative error of the cut (no labelled data: not an accuracy)"
        out = Table(title=f"{model}: Pi 3B+ (edge) + host at {args.host_speed:g}x the reference host's speed, lossy codecs {what}; edge energy "
                          f"({POWER['rpi3'][0]}/{POWER['rpi3'][1]} W idle/busy, transmitter per mode)")
        for col in ("link", "setting", "cut after", "codec", "sent", "pred. fps", "meas. fps", "meas./pred.", "late / not caught up",
                    "edge mJ/frame pred.", "edge mJ/frame at meas. fps"):
            out.add_column(col, justify="left" if col in ("setting", "cut after", "codec") else "right")
        trend = Table(title=f"{model}: where the best cut lies (Ko et al.: at the last conv layer at low bandwidth, earlier as "
                            f"bandwidth grows); last conv layer: cut after {', '.join(graph.nodes[c - 1].name for c in last_conv_cuts(graph))}")
        for col in ("link", "best (pred.)", "best split with codecs (pred.)", "best measured (fps)", "last conv layer pred. / meas. fps",
                    "last conv meas. / best meas."):
            trend.add_column(col, justify="left" if col.startswith("best") else "right")
        n = len(graph)
        conv_cuts = last_conv_cuts(graph)
        runs: dict = {}  # the same candidate is run once (everything on the edge: once for every link)
        skipped: list = []  # settings not emulated: their predicted frames take longer than --edge-max-seconds
        for bps in (1e6, 2e6, 22e6):
            cost = CostModel(graph, edge_host_cluster(bps, args.host_speed), Calibration("numpy"))
            cands = edge_host_candidates(cost, priced, budget)
            split = [c for c in cands if 0 < c.cut < n]
            best_per_cut = {}
            for c in sorted(split, key=lambda c: (round(c.period_s, 12), c.edge_energy_j)):
                best_per_cut.setdefault(c.cut, c)
            top = sorted(best_per_cut.values(), key=lambda c: c.period_s)[: args.top_cuts]
            at_conv = best_candidate([best_per_cut[c] for c in conv_cuts if c in best_per_cut]) if conv_cuts else None
            settings = [("all on edge", next(c for c in cands if c.cut == n)),
                        ("all on host, raw input", next(c for c in cands if c.cut == 0 and c.codec == "raw")),
                        ("all on host, coded input", min((c for c in cands if c.cut == 0), key=lambda c: c.period_s)),
                        ("best split, raw link", best_candidate([c for c in split if c.codec == "raw"]))]
            settings += [(f"split #{i + 1} with codecs", c) for i, c in enumerate(top)]
            if at_conv is not None and at_conv not in top:
                settings.append(("last conv layer, codecs", at_conv))
            idle, busy, _ = POWER["rpi3"]
            measured_here = []
            for label, c in settings:
                key = ("edge",) if c.cut == n else (bps, c.cut, c.codec)
                run = runs.get(key)
                too_slow = MIN_EDGE_FRAMES / c.throughput_fps > args.edge_max_seconds  # e.g. AlexNet's raw input at 1 Mbit/s: 5 s a frame
                if model in emulated and too_slow:
                    skipped.append(f"{bps / 1e6:g} Mbit/s {label}")
                if model in emulated and run is None and not too_slow:
                    if not c.runnable and model not in edge_inputs:  # saved once per model (AlexNet's weights: 244 MB)
                        edge_inputs[model] = save_edge_input_graph(graph, tmp / f"{graph.name}-edge-input.json")
                    spec = None if c.runnable else edge_inputs[model]
                    plan = edge_host_plan(cost, c, model, "numpy", spec)
                    # about --seconds of frames, at least 8 (all on the host at 1 Mbit/s: AlexNet's raw input takes 5 s a frame)
                    frames = max(MIN_EDGE_FRAMES, min(args.edge_max_frames, int(args.seconds * c.throughput_fps)))
                    report = emulate(plan, tmp / "eh.json", frames, inputs)
                    run = runs[key] = {"fps": report["throughput_fps"], "late": uncaught_late_share(report), "late_all": late_share(report),
                                       "frames": frames,
                                       "wall_s": report["wall_s"],
                                       "ranks_late_s": [round(r["emulation_late_s"], 4) for r in report["ranks"]],
                                       "ranks_wait_s": [round(r["wait_s"], 4) for r in report["ranks"]]}
                measured = None if run is None else run["fps"]
                air = c.sent_bytes * 8 / bps
                energy = None if measured is None else idle / measured + (busy - idle) * (c.edge_s + c.encode_s) + transmitter_watts(bps) * air
                late = run is not None and run["late"] > LATE_SHARE
                if measured is not None:
                    measured_here.append((measured, late, label, c, run["late"]))
                rows_out.append({"part": 3, "model": model, "link_mbit": bps / 1e6, "setting": label, "cut": c.cut,
                                 "after": c.after if c.cut < n else None, "codec": c.codec if c.cut < n else None, "sent_bytes": c.sent_bytes,
                                 "predicted_fps": c.throughput_fps, "measured_fps": measured, "late_share": None if run is None else run["late_all"],
                                 "uncaught_late_share": None if run is None else run["late"],
                                 "not_a_result": late, "edge_mj_predicted": c.edge_energy_j * 1e3,
                                 "edge_mj_at_measured": None if energy is None else energy * 1e3,
                                 "frames": None if run is None else run["frames"], "wall_s": None if run is None else run["wall_s"],
                                 "ranks_late_s": None if run is None else run["ranks_late_s"],
                                 "ranks_wait_s": None if run is None else run["ranks_wait_s"]})
                out.add_row(f"{bps / 1e6:g} Mbit/s", label, c.after if c.cut < n else "-", c.codec if c.cut < n else "-",
                            human_bytes(c.sent_bytes), f"{c.throughput_fps:.1f}",
                            "-" if measured is None else (f"{measured:.1f}" + (" NOT A RESULT" if late else "")),
                            "-" if measured is None else f"{measured / c.throughput_fps:.2f}",
                            "-" if run is None else f"{run['late_all']:.0%} / {run['late']:.0%}",
                            f"{c.edge_energy_j * 1e3:.1f}", "-" if energy is None else f"{energy * 1e3:.1f}")
            overall = best_candidate(cands)
            best_split = top[0] if top else None

            def name(c):
                return "all on edge" if c.cut == n else ("all on host (" + c.codec + " input)" if c.cut == 0 else f"after {c.after} ({c.codec})")

            best_meas = measured_best(measured_here)
            conv_run = runs.get((bps, at_conv.cut, at_conv.codec)) if at_conv is not None else None
            conv_fps = None if conv_run is None or conv_run["late"] > LATE_SHARE else conv_run["fps"]
            trend.add_row(f"{bps / 1e6:g} Mbit/s", f"{name(overall)} {overall.throughput_fps:.1f} fps",
                          "-" if best_split is None else f"{name(best_split)} {best_split.throughput_fps:.1f} fps",
                          ("not a result (late runs)" if measured_here else "-") if best_meas is None else f"{name(best_meas[3])} {best_meas[0]:.1f}",
                          "-" if at_conv is None else f"{at_conv.throughput_fps:.1f} / " + ("-" if conv_fps is None else f"{conv_fps:.1f}"),
                          "-" if conv_fps is None or best_meas is None else f"{conv_fps / best_meas[0]:.2f}")
            verdict[bps] = (None if best_split is None else best_split.cut, None if best_meas is None else best_meas[3].cut,
                            overall.cut)
            rows_out.append({"part": "3-trend", "model": model, "link_mbit": bps / 1e6, "best_predicted": name(overall),
                             "best_predicted_cut": overall.cut, "best_split_predicted": None if best_split is None else name(best_split),
                             "best_split_predicted_cut": None if best_split is None else best_split.cut,
                             "best_measured": None if best_meas is None else name(best_meas[3]),
                             "best_measured_cut": None if best_meas is None else best_meas[3].cut,
                             "last_conv_cut": None if at_conv is None else at_conv.cut, "last_conv_measured_fps": conv_fps})
        console.print(out)
        console.print(trend)
        console.print(trend_verdict(graph, verdict, conv_cuts))
        if skipped:
            console.print(f"[dim]not emulated (their {MIN_EDGE_FRAMES} frames predicted to take over {args.edge_max_seconds:g} s, "
                          f"--edge-max-seconds; the measured best is among the rest): {'; '.join(skipped)}[/dim]")
        console.print(f"[dim]frames: {source}. All on host runs as the model behind an input-passing node on the edge (rank 0, the "
                      f"frames' source), which encodes the input and sends it. Energy at measured fps: idle watts over the measured "
                      f"period, plus busy and transmitter watts over the predicted edge compute and air time. late: the largest share of "
                      f"the run a rank fell behind its device / of that, "
                      f"beyond the time the rank then waited for input (caught up there, it did not set the rate); the latter above "
                      f"{LATE_SHARE:.0%}: NOT A RESULT (this machine fell behind the emulated devices)[/dim]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_link_codecs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default="branchy_alexnet_mnist,alexnet,vgg16", help="models whose codec table is printed")
    parser.add_argument("--cluster-models", default="alexnet,vgg16")
    parser.add_argument("--emulate-models", default="alexnet,vgg16", help="models of part 2 that are also emulated ('' for none)")
    parser.add_argument("--sizes", default="4,8")
    parser.add_argument("--edge-models", default="branchy_alexnet_mnist,alexnet", help="part 3's models (predicted)")
    parser.add_argument("--edge-emulate-models", default="branchy_alexnet_mnist,alexnet", help="part 3's models that are also emulated")
    parser.add_argument("--frames", type=int, default=24, help="at least this many frames a run")
    parser.add_argument("--seconds", type=float, default=6.0, help="about this many emulated seconds a run (more frames where "
                                                                   "the prediction says they take less)")
    parser.add_argument("--rounds", type=int, default=4, help="part 2: at least this many frames per rank a cluster run")
    parser.add_argument("--max-frames", type=int, default=200, help="part 2: at most this many frames a cluster run (unless "
                                                                    "--frames or --rounds ask for more)")
    parser.add_argument("--repeats", type=int, default=1, help="part 2: side-by-side pairs (one device, cluster) per plan; "
                                                               "the median pair's ratio is reported")
    parser.add_argument("--top-cuts", type=int, default=3, help="part 3: emulate the best N predicted cuts with codecs per link")
    parser.add_argument("--edge-max-frames", type=int, default=1000, help="part 3: at most this many frames a run")
    parser.add_argument("--edge-max-seconds", type=float, default=20.0, help=f"part 3: settings whose {MIN_EDGE_FRAMES} frames are "
                                                                             "predicted to take longer are not emulated (--full: 120)")
    parser.add_argument("--host-speed", type=float, default=0.4, help="part 3: the host's speed over the reference host's, one "
                                                                     "this machine can emulate (default 0.4)")
    parser.add_argument("--no-edge-emulate", dest="edge_emulate", action="store_false", help="part 3: predictions only")
    parser.add_argument("--accuracy-frames", type=int, default=200)
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--cache", help="keep measured codec tables here (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="also write every row of parts 2 and 3 as JSON")
    parser.add_argument("--quick", action="store_true", help="small everything (smoke run): AlexNet only, few frames")
    parser.add_argument("--full", action="store_true", help="the long sweep: 3 pairs per plan, longer runs, every edge-host "
                                                            "setting emulated (about 45 minutes on a quiet 2-core machine)")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.seconds, args.repeats, args.top_cuts = 8, 1.0, 1, 2
        args.tables = args.cluster_models = args.emulate_models = "alexnet"
        args.edge_models = args.edge_emulate_models = "branchy_alexnet_mnist"
        args.edge_max_frames = 60
    if args.full:
        args.seconds, args.repeats = max(args.seconds, 15.0), max(args.repeats, 3)
        args.edge_emulate_models = args.edge_models
        args.edge_max_seconds = max(args.edge_max_seconds, 120.0)
    console.print(f"[dim]load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}[/dim]")
    before = session_nice()
    if before is not None:
        console.print(f"[dim]this session's scheduling group at nice {AUTOGROUP.read_text().split()[-1]} for the run (was {before}): "
                      f"under autogroup scheduling a process's nice alone does not rank its ranks against other sessions' jobs[/dim]")
    elif os.nice(0) >= 0:
        console.print("[dim]not run under a negative nice: other sessions' jobs share the cores with the emulated ranks as equals "
                      "(`nice -n -20 scripts/bench_link_codecs` as root gives this session's group the cores first)[/dim]")
    try:
        return _run(args)
    finally:
        if before is not None:
            try:
                AUTOGROUP.write_text(str(before))
            except OSError:
                pass


def _run(args) -> int:
    rows: list = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-link-codecs-") as tmp:
        tmp = Path(tmp)
        cache = Path(args.cache) if args.cache else tmp
        cache.mkdir(parents=True, exist_ok=True)
        parts = set(args.parts.split(","))
        if "1" in parts:
            for model in args.tables.split(","):
                print_codec_table(*table_for(model, args, cache))
        if "2" in parts:
            part_clusters(args, cache, tmp, rows)
        if "3" in parts:
            part_edge_host(args, cache, tmp, rows)
    console.print(f"[dim]{time.perf_counter() - started:.0f} s; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}[/dim]")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
