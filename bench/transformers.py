"""Transformers on emulated Pi clusters (issue 19), run via `scripts/bench_transformers`.

Part 1: ViT-B/16 (zoo vit_b16) on 4 emulated Pi 4 at 940 Mbit/s and 4 Pi 3B+ at 94 Mbit/s: single-frame
latency (frames sent one at a time) and throughput of one emulated device and of plans side by side
(--variants): dp latency plans with every split kind ("all": the planner picks per block), attention by heads
("heads": attn-heads, no attn-tokens), attention by tokens ("tokens": attn-tokens, no attn-heads), the tokens
plan with each token segment run through its whole block, MLP included ("tokens-block", a hand edit; the
planner now offers the same as token spans, split_costs.token_spans, so where it chose them the edit changes
nothing; no prediction), no attention kind ("fc-splits": fc-output / fc-input and the rest),
pipeline-only (no split kinds), and the dp throughput plan; each measured next to its prediction.
Part 2 (--corpus): for every litert-torch model of ${XDG_CACHE_HOME:-~/.cache}/pisplit-corpus
(scripts/build_corpus_torch), pisplit's litert engine against one plain LiteRT interpreter on the same
file (1 thread each, median of 5 warm runs taken in turn, outputs compared).

Usage: scripts/bench_transformers [--models vit_b16,kwt3] [--configs rpi4:4@940mbit,rpi3:4@94mbit]
       [--variants all,heads,tokens,tokens-block,fc-splits,pipeline-only,throughput] [--frames N] [--corpus] [--no-emulate]
       [--json]
       (15-30 minutes on 2 cores by default)
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread, as the ranks and the interpreters get

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from partitioners.vocabulary import NO_SPLIT, SplitKind  # noqa: E402


def say(args, line):
    if not args.json:
        print(line, flush=True)


ATTENTION = (SplitKind.ATTN_HEADS, SplitKind.ATTN_TOKENS)
VARIANTS = ("all", "heads", "tokens", "tokens-block", "fc-splits", "pipeline-only", "throughput")


def whole_blocks(plan, graph):
    """The tokens plan hand-edited so that each attn-tokens segment runs through its whole transformer block
    (attention, residual, LayerNorm, MLP, residual: each rank its rows of all of it, as `pisplit split` runs
    the kind); the planner offers it as a token span (split_costs.token_spans) and this edit extends only the
    segments where it chose the attention alone; no prediction (a hand edit)."""
    from dataclasses import replace

    from partitioners.split_tokens import token_block

    stages = []
    for st in plan.stages:
        segments, merged_to = [], -1
        for seg in st.segments:
            if seg.node_start < merged_to:
                if seg.node_stop <= merged_to:
                    continue
                if seg.kind != NO_SPLIT:
                    raise ValueError(f"segment [{seg.node_start}, {seg.node_stop}) {seg.kind} straddles a block's end {merged_to}")
                seg = replace(seg, node_start=merged_to, predicted=())  # the unsplit nodes after the block
            if seg.kind == SplitKind.ATTN_TOKENS:
                block = token_block(graph, seg.node_start)
                seg = replace(seg, node_stop=block.stop, output_layout="lead", predicted=())
                merged_to = block.stop
            segments.append(seg)
        stages.append(replace(st, segments=tuple(segments)))
    return replace(plan, stages=tuple(stages))


def plans_for(graph, model, devices, link_bps, engine, names=VARIANTS):
    """(name, plan) per variant (module docstring): dp latency plans over different split kinds; dp throughput."""
    from partitioners.cost import CostModel, make_cluster
    from partitioners.devices import parse_devices
    from partitioners.planners import make_plan
    from partitioners.profiles import Calibration
    from partitioners.split_costs import FUSED, PLANNER_KINDS, SplitCatalogue

    cluster = make_cluster(parse_devices(devices), link_bps)
    every = PLANNER_KINDS + (FUSED,)
    variants = [("all", "latency", every),
                ("heads", "latency", tuple(k for k in every if k != SplitKind.ATTN_TOKENS)),
                ("tokens", "latency", tuple(k for k in every if k != SplitKind.ATTN_HEADS)),
                ("fc-splits", "latency", tuple(k for k in every if k not in ATTENTION)),
                ("pipeline-only", "latency", ()),
                ("throughput", "throughput", every)]
    made = {}
    for name, objective, kinds in variants:
        if name in names or (name == "tokens" and "tokens-block" in names):
            cost = CostModel(graph, cluster, Calibration(engine), splits=SplitCatalogue(graph, kinds))
            made[name] = make_plan(graph, cost, "dp", objective, model, engine)
        if name in names:
            yield name, made[name]
        if name == "tokens" and "tokens-block" in names:
            yield "tokens-block", whole_blocks(made[name], graph)


def describe(plan):
    kinds = {}
    for s in plan.stages:
        for seg in s.segments:
            if seg.kind != NO_SPLIT:
                kinds[seg.kind] = kinds.get(seg.kind, 0) + 1
    stages = " ".join(f"{s.mode}x{len(s.ranks)}" for s in plan.stages)
    return stages + (" [" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + "]" if kinds else "")


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench_transformers")
    ap.add_argument("--models", default="vit_b16")
    ap.add_argument("--configs", default="rpi4:4@940mbit,rpi3:4@94mbit")
    ap.add_argument("--frames", type=int, default=3, help="frames per latency run (sent one at a time)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"plans to run (of {', '.join(VARIANTS)})")
    ap.add_argument("--engine", default="numpy")
    ap.add_argument("--corpus", action="store_true", help="also the litert engine against plain LiteRT on the torch corpus")
    ap.add_argument("--no-emulate", action="store_true", help="only the corpus comparison")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    out = {"load_average": open("/proc/loadavg").read().split()[:3], "emulated": [], "corpus": []}
    print(f"load average {' '.join(out['load_average'])}", file=sys.stderr)

    if not args.no_emulate:
        from cluster.commands.emulate import run_emulated
        from cluster.emulated_plans import single_device_plan
        from bench import cluster_config
        from layers import zoo_model

        with tempfile.TemporaryDirectory(prefix="bench-transformers-") as tmp:
            tmp = Path(tmp)
            for model in args.models.split(","):
                graph = zoo_model(model)
                for config in args.configs.split(","):
                    devices, kind, link_bps = cluster_config(config)
                    single = single_device_plan(graph, model, kind, link_bps, args.engine)
                    t = time.time()
                    rep = run_emulated(single.save(tmp / "single.json"), 1, args.frames, tmp / "single-report.json", args.engine,
                                       progress=False, max_in_flight=1)
                    one = {"latency_ms": rep["latency_ms"]["p50"], "predicted_latency_ms": 1e3 * single.predicted_latency_s,
                           "fps": rep["throughput_fps"], "predicted_fps": single.predicted_throughput_fps, "seconds": time.time() - t}
                    row = {"model": model, "devices": devices, "link_mbit": link_bps / 1e6, "one_device": one, "plans": {}}
                    say(args, f"{model} {devices} {link_bps / 1e6:.0f} Mbit/s | one {kind}: latency {one['latency_ms']:.0f} ms "
                        f"(pred {one['predicted_latency_ms']:.0f}, x{one['latency_ms'] / one['predicted_latency_ms']:.2f}), "
                        f"{one['fps']:.3f} fps")
                    for name, plan in plans_for(graph, model, devices, link_bps, args.engine, args.variants.split(",")):
                        t = time.time()
                        latency_run = name != "throughput"
                        frames = args.frames if latency_run else max(2 * plan.n_ranks, args.frames)
                        rep = run_emulated(plan.save(tmp / f"{name}.json"), plan.n_ranks, frames, tmp / f"{name}-report.json",
                                           args.engine, progress=False, max_in_flight=1 if latency_run else None)
                        assert rep["every_frame_once"], rep
                        predicted = name != "tokens-block"  # (a hand edit: no prediction)
                        r = {"ranks": plan.n_ranks, "plan": describe(plan), "frames": frames, "latency_ms": rep["latency_ms"]["p50"],
                             "predicted_latency_ms": 1e3 * plan.predicted_latency_s if predicted else None,
                             "fps": rep["throughput_fps"], "predicted_fps": plan.predicted_throughput_fps if predicted else None,
                             "seconds": time.time() - t}
                        r["latency_speedup_vs_one"] = one["latency_ms"] / r["latency_ms"]
                        r["throughput_speedup_vs_one"] = r["fps"] / one["fps"] if one["fps"] else None
                        row["plans"][name] = r
                        pred = (f"pred {r['predicted_latency_ms']:7.0f}, x{r['latency_ms'] / r['predicted_latency_ms']:.2f}" if predicted
                                else "no prediction ")
                        fps_pred = f"pred {r['predicted_fps']:.3f}; " if predicted else ""
                        say(args, f"  {name:13s} {r['ranks']} ranks: latency {r['latency_ms']:7.0f} ms ({pred}; {r['latency_speedup_vs_one']:.2f}x "
                            f"one device) | {r['fps']:.3f} fps ({fps_pred}{r['throughput_speedup_vs_one']:.2f}x one) | {r['plan']}")
                    out["emulated"].append(row)

    if args.corpus:
        from ai_edge_litert.interpreter import Interpreter

        from layers import load_model
        from layers.engine import make_engine

        corpus = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pisplit-corpus"
        for path in sorted(corpus.glob("torch_*.tflite")):
            graph = load_model(str(path))
            rng = np.random.default_rng(0)
            feeds = {k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in graph.inputs.items()}
            it = Interpreter(model_path=str(path), num_threads=1)
            it.allocate_tensors()

            def plain():
                for d, x in zip(it.get_input_details(), feeds.values()):
                    it.set_tensor(d["index"], x)
                it.invoke()
                return [it.get_tensor(d["index"]) for d in it.get_output_details()]

            engine = make_engine(graph, "litert", threads=1)
            times = {"plain": [], "pisplit": []}
            want, got = plain(), engine.run(feeds)  # warm-up
            for _ in range(5):  # side by side, alternating
                t = time.perf_counter()
                plain()
                times["plain"].append(time.perf_counter() - t)
                t = time.perf_counter()
                engine.run(feeds)
                times["pisplit"].append(time.perf_counter() - t)
            err = max(float(np.abs(got[o] - w).max()) / max(1.0, float(np.abs(w).max())) for o, w in zip(graph.outputs, want))
            plain_ms, ours_ms = 1e3 * float(np.median(times["plain"])), 1e3 * float(np.median(times["pisplit"]))
            row = {"model": path.stem, "nodes": len(graph.nodes), "plain_litert_ms": plain_ms, "pisplit_litert_ms": ours_ms,
                   "ratio": ours_ms / plain_ms, "max_rel_error": err}
            out["corpus"].append(row)
            say(args, f"{path.stem:18s} {len(graph.nodes):5d} nodes | plain LiteRT {plain_ms:8.1f} ms | pisplit litert engine {ours_ms:8.1f} ms "
                f"(x{ours_ms / plain_ms:.2f}) | max rel error {err:.1e}")

    if args.json:
        json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
