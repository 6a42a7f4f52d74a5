"""Link codecs on plans (issue 15's Benchmarks), side by side in one run:

1. codec tables: per cut of the trained branchy AlexNet (held-out digits, with each lossy codec's
   accuracy loss) and of AlexNet / VGG16 (zoo weights, photographs: scikit-learn's china.jpg and
   flower.jpg, ImageNet-normalised): ratio of each codec and the best transfer at 94 and 2 Mbit/s;
2. emulated Pi 3B+ clusters at 94 Mbit/s: the dp plan priced without and with codecs (lossless; then
   lossy within 1% relative error), predicted and (for --emulate-models) measured throughput against
   one emulated device;
3. edge (Pi 3B+) + host at 1, 2 and 22 Mbit/s on the trained branchy AlexNet: all on the edge, all on
   the host with a raw and a coded (JPEG/int8) input (run as the model behind an input-passing node
   on the edge, partitioners.edge_host.edge_input_graph), and the best cut with codecs within 1%
   accuracy loss, all emulated; predicted edge energy per frame (partitioners.edge_host's power
   model) and the measured throughput.

Codec seconds are measured on this machine and turned into the reference machine's with its measured
speed (cluster.host_speed) before the planner scales them to a Pi 3B+ (link_pricing.in_reference_seconds).

Run through scripts/bench_link_codecs. `--quick` shrinks everything (a smoke run).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.table import Table

from cluster.codec_table import check_table, measure_codec_table, this_machine_speed
from cluster.commands.codecs import save_edge_input_graph
from cluster.commands.emulate import run_emulated
from cluster.emulated_plans import single_device_plan
from cluster.output import console, human_bytes
from layers import load_model
from partitioners.codec_cost import codec_cost_model
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices
from partitioners.edge_host import POWER, best_candidate, edge_host_candidates, edge_host_plan, transmitter_watts
from partitioners.link_pricing import CodecTable, LossBudget, choose_codec, in_reference_seconds
from partitioners.planners import make_plan
from partitioners.profiles import Calibration

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


def cluster_rows(model: str, graph, table, devices: str, emulate: bool, frames: int, tmp: Path, single_fps: float | None):
    """Rows of part 2 for one model and device set: plain dp, dp with lossless codecs, dp with lossy codecs."""
    rows = []
    cluster = make_cluster(parse_devices(devices), 94e6)
    runs: dict = {}  # the same plan is run once
    for label, codecs, budget in (("raw", None, None), ("lossless codecs", table, None),
                                  ("codecs, 1% rel. error", table, LossBudget(max_rel_error=0.01))):
        priced = None if codecs is None else in_reference_seconds(codecs, Calibration("numpy"))
        model_ = codec_cost_model(graph, cluster, Calibration("numpy"), codecs=priced, codec_budget=budget)
        plan = make_plan(graph, model_, "dp", "throughput", model, "numpy")  # with a table: each link's codec (build_plan)
        used = sorted({s.send_codec for s in plan.stages[:-1]}) or ["-"]
        key = (plan.input_codec, tuple((s.node_start, s.node_stop, s.ranks, s.mode, s.send_codec) for s in plan.stages))
        measured = runs.get(key)
        if emulate and measured is None:
            report = run_emulated(plan.save(tmp / "plan.json"), plan.n_ranks, frames, tmp / "report.json", "numpy", progress=False,
                                  timeout=3600)
            assert report["every_frame_once"], "frames lost or duplicated"
            measured = runs[key] = report["throughput_fps"]
        rows.append((model, devices, label, len(plan.stages), ",".join(used), plan.predicted_throughput_fps, measured, single_fps))
    return rows


def part_clusters(args, cache: Path, tmp: Path) -> None:
    out = Table(title="dp plans on emulated Pi 3B+ at 94 Mbit/s, without and with link codecs (codec seconds at the Pi's "
                      "calibrated slowdown)")
    for col in ("model", "devices", "links", "stages", "codecs used", "predicted fps", "measured fps", "vs one device (measured)"):
        out.add_column(col, justify="left" if col in ("model", "devices", "links", "codecs used") else "right")
    for model in args.cluster_models.split(","):
        graph, table = table_for(model, args, cache)
        emulate = model in args.emulate_models.split(",")
        single = None
        if emulate:
            plan = single_device_plan(graph, model, "rpi3", 94e6, "numpy")
            single = run_emulated(plan.save(tmp / "single.json"), 1, max(4, args.frames // 4), tmp / "single-report.json", "numpy",
                                  progress=False, timeout=3600)["throughput_fps"]
        for n in args.sizes.split(","):
            for r in cluster_rows(model, graph, table, f"rpi3:{n}", emulate, args.frames, tmp, single):
                m, d, label, stages, used, pred, meas, one = r
                out.add_row(m, d, label, str(stages), used, f"{pred:.2f}", "-" if meas is None else f"{meas:.2f}",
                            "-" if meas is None or not one else f"{meas / one:.2f}x")
    console.print(out)


def part_edge_host(args, cache: Path, tmp: Path) -> None:
    edge_inputs: dict = {}  # model -> its edge_input_graph, saved for the all-on-host runs
    for model in args.edge_models.split(","):
        graph, table = table_for(model, args, cache)
        priced = in_reference_seconds(table, Calibration("numpy"))
        measured_accuracy = any(s.accuracy_loss is not None for c in table.cuts for s in c.samples)
        budget = LossBudget(max_accuracy_loss=0.01) if measured_accuracy else LossBudget(max_rel_error=0.05)
        what = "within 1% top-1 accuracy on held-out digits" if measured_accuracy else \
            "within 5% relative error of the cut (no labelled data: not an accuracy)"
        out = Table(title=f"{model}: Pi 3B+ (edge) + host, lossy codecs {what}; edge energy predicted "
                          f"({POWER['rpi3'][0]}/{POWER['rpi3'][1]} W idle/busy, transmitter per mode)")
        for col in ("link", "setting", "cut after", "codec", "sent", "predicted fps", "measured fps", "edge mJ/frame (pred.)",
                    "edge mJ/frame (at measured fps)"):
            out.add_column(col, justify="left" if col in ("setting", "cut after", "codec") else "right")
        n = len(graph)
        runs: dict = {}  # the same candidate is run once (everything on the edge: once for every link)
        for bps in (1e6, 2e6, 22e6):
            cost = CostModel(graph, make_cluster(parse_devices("rpi3:1,host:1"), bps), Calibration("numpy"))
            cands = edge_host_candidates(cost, priced, budget)
            split = [c for c in cands if 0 < c.cut < n]
            settings = (("all on edge", next(c for c in cands if c.cut == n)),
                        ("all on host, raw input", next(c for c in cands if c.cut == 0 and c.codec == "raw")),
                        ("all on host, coded input", min((c for c in cands if c.cut == 0), key=lambda c: c.period_s)),
                        ("best split, raw link", best_candidate([c for c in split if c.codec == "raw"])),
                        ("best split with codecs", best_candidate(split)))
            idle, busy, _ = POWER["rpi3"]
            for label, c in settings:
                key = ("edge",) if c.cut == n else (bps, c.cut, c.codec)
                measured = runs.get(key)
                if not args.quick and measured is None:
                    if not c.runnable and model not in edge_inputs:  # saved once per model (AlexNet's weights: 244 MB)
                        edge_inputs[model] = save_edge_input_graph(graph, tmp / f"{graph.name}-edge-input.json")
                    spec = None if c.runnable else edge_inputs[model]
                    plan = edge_host_plan(cost, c, model, "numpy", spec)
                    report = run_emulated(plan.save(tmp / "eh.json"), plan.n_ranks, args.frames, tmp / "eh-report.json", "numpy",
                                          progress=False, timeout=3600)
                    assert report["every_frame_once"], "frames lost or duplicated"
                    measured = runs[key] = report["throughput_fps"]
                air = c.sent_bytes * 8 / bps
                energy = None if measured is None else idle / measured + (busy - idle) * (c.edge_s + c.encode_s) + transmitter_watts(bps) * air
                out.add_row(f"{bps / 1e6:g} Mbit/s", label, c.after if c.cut < n else "-", c.codec if c.cut < n else "-",
                            human_bytes(c.sent_bytes), f"{c.throughput_fps:.1f}", "-" if measured is None else f"{measured:.1f}",
                            f"{c.edge_energy_j * 1e3:.1f}", "-" if energy is None else f"{energy * 1e3:.1f}")
        console.print(out)
        console.print("[dim]all on host runs as the model behind an input-passing node on the edge (rank 0, the frames' source), "
                      "which encodes the input and sends it[/dim]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_link_codecs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default="branchy_alexnet_mnist,alexnet,vgg16", help="models whose codec table is printed")
    parser.add_argument("--cluster-models", default="alexnet,vgg16")
    parser.add_argument("--emulate-models", default="alexnet", help="models of part 2 that are also emulated ('' for none)")
    parser.add_argument("--sizes", default="4,8")
    parser.add_argument("--edge-models", default="branchy_alexnet_mnist,alexnet")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--accuracy-frames", type=int, default=200)
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--cache", help="keep measured codec tables here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="small everything (smoke run)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-link-codecs-") as tmp:
        tmp = Path(tmp)
        cache = Path(args.cache) if args.cache else tmp
        cache.mkdir(parents=True, exist_ok=True)
        parts = set(args.parts.split(","))
        if "1" in parts:
            for model in args.tables.split(","):
                print_codec_table(*table_for(model, args, cache))
        if "2" in parts:
            part_clusters(args, cache, tmp)
        if "3" in parts:
            part_edge_host(args, cache, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
