"""Transformers on emulated Pi clusters (issue 19), run via `scripts/bench_transformers`.

Part 1: ViT-B/16 (zoo vit_b16) on 4 emulated Pi 4 at 940 Mbit/s and 4 Pi 3B+ at 94 Mbit/s, one table per
cluster: for one emulated device and each plan, single-frame latency (frames sent one at a time, median)
and throughput (frames streamed), each next to its prediction (measured / predicted) and over one device.
Plans (--variants): the planner's choice ("all": dp latency plan with every split kind, the planner picks per
block), attention by heads ("heads": attn-heads, no attn-tokens; "heads-forced": every attention block by heads
over every device, the rest as the planner picks, priced by the cost model even where the planner would not
split attention), attention by tokens ("tokens": attn-tokens,
no attn-heads), the tokens plan with each token segment run through its whole block, MLP included
("tokens-block", a hand edit; the planner offers the same as token spans, split_costs.token_spans, so where it
chose them the edit changes nothing; no prediction), no attention kind ("fc-splits": fc-output / fc-input and
the rest), pipeline-only (dp throughput plan of stages of whole layers, one device each: no split kinds, no
data parallelism) and the planner's throughput choice ("throughput": dp throughput plan, every kind and mode).
Part 2 (--corpus): for every litert-torch model of ${XDG_CACHE_HOME:-~/.cache}/pisplit-corpus
(scripts/build_corpus_torch: ViT-B/16, Swin-T, MaxViT-T, KWS, LSTM), pisplit's litert engine against one plain
LiteRT interpreter on the same file (1 thread each, median CPU time of warm runs taken in turn, at least 5 and
0.5 s of each, outputs compared).

Usage: scripts/bench_transformers [--models vit_b16,kwt3] [--configs rpi4:4@940mbit,rpi3:4@94mbit]
       [--variants all,heads,heads-forced,tokens,tokens-block,fc-splits,pipeline-only,throughput] [--frames N]
       [--stream-frames N] [--corpus] [--corpus-models kws,lstm,...] [--no-emulate] [--json]
       (the full run, --corpus included: 15-20 minutes on 2 cores)
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
from partitioners.vocabulary import NO_SPLIT, SplitKind, StageMode  # noqa: E402


def say(args, line):
    if not args.json:
        print(line, flush=True)


ATTENTION = (SplitKind.ATTN_HEADS, SplitKind.ATTN_TOKENS)
VARIANTS = ("all", "heads", "heads-forced", "tokens", "tokens-block", "fc-splits", "pipeline-only", "throughput")


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
                ("pipeline-only", "throughput", ()),
                ("throughput", "throughput", every)]
    if "heads-forced" in names:
        variants.insert(2, ("heads-forced", "latency", tuple(k for k in every if k != SplitKind.ATTN_TOKENS)))
    made = {}
    for name, objective, kinds in variants:
        if name in names or (name == "tokens" and "tokens-block" in names):
            cost = CostModel(graph, cluster, Calibration(engine), splits=SplitCatalogue(graph, kinds))
            if name == "pipeline-only":
                made[name] = pipeline_only(cost, model, engine)
            elif name == "heads-forced":
                made[name] = heads_forced(cost, model, engine)
            else:
                made[name] = make_plan(graph, cost, "dp", objective, model, engine)
        if name in names:
            yield name, made[name]
        if name == "tokens" and "tokens-block" in names:
            yield "tokens-block", whole_blocks(made[name], graph)


def pipeline_only(cost, model: str, engine: str):
    """The dp throughput plan over stages of one device each (whole layers, no split, no data parallelism)."""
    from partitioners.planner_dp import StageTables, solve
    from partitioners.planners import build_plan

    units = [tuple(int(i == k) for i in range(len(cost.capacity))) for k in range(len(cost.capacity)) if cost.capacity[k]]
    stages, _, _ = solve(StageTables(cost, units), "throughput")
    return build_plan(cost, stages, "dp", "throughput", model, engine, ["pipeline-only: stages of whole layers, one device each"])


# table rows: each a dp plan under a constraint; where the planner finds a kind does not pay it leaves it out,
# and the row's split kinds say so (ViT-B/16 on 4 Pi 3B+ at 94 Mbit/s: no attention split at all)
def heads_forced(cost, model: str, engine: str):
    """One split stage over every device with every attention block split by heads (cost.split_choice's forced
    kinds, as the paper planner forces its splits; the other segments as the planner picks): a head-parallel plan
    priced by the cost model even where the planner would not split attention (slow links)."""
    from partitioners.planner_baselines import ForcedStage
    from partitioners.planners import build_plan

    splits = cost.splits
    forced = tuple((s, str(SplitKind.ATTN_HEADS)) for s in range(len(splits.segments)) if SplitKind.ATTN_HEADS in splits.kinds(s))
    stage = ForcedStage(0, cost.n, tuple(cost.capacity), StageMode.SPLIT, forced)
    return build_plan(cost, [stage], "dp", "latency", model, engine, ["every attention block split by heads (forced)"])


LABELS = {"all": "planner's choice (latency)", "heads": "head-parallel (no attn-tokens)", "heads-forced": "head-parallel, every block", "tokens": "token-parallel (no attn-heads)",
          "tokens-block": "tokens, whole blocks (hand edit)", "fc-splits": "fc splits only", "pipeline-only": "pipeline-only",
          "throughput": "planner's choice (throughput)"}


def describe(plan):
    kinds = {}
    for s in plan.stages:
        for seg in s.segments:
            if seg.kind != NO_SPLIT:
                kinds[seg.kind] = kinds.get(seg.kind, 0) + 1
    stages = " ".join(f"{s.mode}x{len(s.ranks)}" for s in plan.stages)
    return stages + (" [" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + "]" if kinds else "")


def _ratio(a, b) -> str:
    return f"x{a / b:.2f}" if a is not None and b else "-"


def _num(v, fmt) -> str:
    return format(v, fmt) if v is not None else "-"


def emulated_table(row: dict, args):
    """One cluster's results as a rich table: one device and each plan, latency and throughput, measured,
    predicted, measured / predicted, and over one device."""
    from rich.markup import escape
    from rich.table import Table

    one = row["one_device"]
    table = Table(title=f"{row['model']} on {row['devices']} at {row['link_mbit']:.0f} Mbit/s ({args.engine} engine): latency = "
                        f"median of {args.frames} frames sent one at a time; throughput = {args.stream_frames or 'the same'} "
                        f"frames streamed")
    for col in ("plan", "ranks", escape("stages [split kinds]"), "latency ms", "predicted", "meas/pred", "vs one", "fps", "predicted ",
                "meas/pred ", "vs one "):
        table.add_column(col, justify="left" if col in ("plan", escape("stages [split kinds]")) else "right")
    rows = [("one device", one)] + [(LABELS.get(name, name), r) for name, r in row["plans"].items()]
    for label, r in rows:
        table.add_row(label, str(r.get("ranks", 1)), escape(r.get("plan", "single")), _num(r["latency_ms"], ".0f"),
                      _num(r["predicted_latency_ms"], ".0f"), _ratio(r["latency_ms"], r["predicted_latency_ms"]),
                      _ratio(one["latency_ms"], r["latency_ms"]), _num(r["fps"], ".3f"), _num(r["predicted_fps"], ".3f"),
                      _ratio(r["fps"], r["predicted_fps"]), _ratio(r["fps"], one["fps"]))
    return table


def streamed_fps(rep: dict, plan) -> float:
    """Frames per second of a streamed run once its first frames are out: (n - k) / (t_n - t_k) over the
    completion times, k the most frames one stage finishes at once (its replicas: a data-parallel stage of 4
    finishes frames in bursts of 4; 1 otherwise: cluster.report.replica_burst). The report's steady rate
    (report_fps beside it) counts from the end of a group of completions about a quarter into the run
    (cluster.report.steady_throughput)."""
    from cluster.report import replica_burst

    done = {int(count): float(t) for t, count in rep["completed"]}
    n = max(done)
    k = replica_burst(plan)
    if k >= n or k not in done or done[n] <= done[k]:
        return rep["throughput_fps"]
    return (n - k) / (done[n] - done[k])


def run_plan(plan, name: str, tmp: Path, args) -> dict:
    """Measure one plan emulated: single-frame latency (args.frames sent one at a time) and throughput (frames
    streamed). A plan of one stage that is not data-parallel (one rank, or one split stage whose lead computes
    a part of every frame) starts no frame before the last one ends: its throughput is the latency run's."""
    from cluster.commands.emulate import run_emulated

    t = time.time()
    path = plan.save(tmp / f"{name}.json")
    rep = run_emulated(path, plan.n_ranks, args.frames, tmp / f"{name}-latency.json", args.engine, progress=False, max_in_flight=1)
    assert rep["every_frame_once"], rep
    out = {"ranks": plan.n_ranks, "frames": args.frames, "latency_ms": rep["latency_ms"]["p50"], "fps": rep["throughput_fps"]}
    # at least two frames per rank; four with a data-parallel stage, whose replicas finish frames in bursts
    # (the report's steady rate is fitted on the last three quarters of the completions: two bursts overstate it)
    bursts = any(st.mode == StageMode.DATA_PARALLEL for st in plan.stages)
    frames = max(args.stream_frames, (4 if bursts else 2) * plan.n_ranks) if args.stream_frames else 0
    if frames and (len(plan.stages) > 1 or bursts):
        rep = run_emulated(path, plan.n_ranks, frames, tmp / f"{name}-throughput.json", args.engine, progress=False)
        assert rep["every_frame_once"], rep
        out.update(fps=streamed_fps(rep, plan), report_fps=rep["throughput_fps"], stream_frames=frames,
                   streamed_latency_ms=rep["latency_ms"]["p50"])
    out["seconds"] = time.time() - t
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench_transformers")
    ap.add_argument("--models", default="vit_b16")
    ap.add_argument("--configs", default="rpi4:4@940mbit,rpi3:4@94mbit")
    ap.add_argument("--frames", type=int, default=3, help="frames per latency run (sent one at a time)")
    ap.add_argument("--stream-frames", type=int, default=8,
                    help="frames per throughput run (streamed; at least 2 per rank, 4 with data-parallel stages; 0: throughput "
                         "from the latency run)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"plans to run (of {', '.join(VARIANTS)})")
    ap.add_argument("--engine", default="numpy")
    ap.add_argument("--corpus", action="store_true", help="also the litert engine against plain LiteRT on the torch corpus")
    ap.add_argument("--no-emulate", action="store_true", help="only the corpus comparison")
    ap.add_argument("--corpus-models", help="only these corpus models (comma-separated: kws,lstm,vit_b_16,swin_t,maxvit_t)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        print(f"bench_transformers: error: variant {unknown[0]!r}: expected some of {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    corpus = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pisplit-corpus"
    missing = [m for m in (args.corpus_models or "").split(",") if m and not (corpus / f"torch_{m}.tflite").exists()]
    if missing:
        print(f"bench_transformers: error: corpus model {missing[0]} is not in {corpus} (torch_{missing[0]}.tflite)", file=sys.stderr)
        return 2

    from cluster.output import console

    out = {"load_average": open("/proc/loadavg").read().split()[:3], "emulated": [], "corpus": []}
    print(f"load average {' '.join(out['load_average'])}", file=sys.stderr)

    if not args.no_emulate:
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
                    one = run_plan(single, "single", tmp, args)
                    one.update(plan="single", predicted_latency_ms=1e3 * single.predicted_latency_s,
                               predicted_fps=single.predicted_throughput_fps)
                    row = {"model": model, "devices": devices, "link_mbit": link_bps / 1e6, "one_device": one, "plans": {}}
                    for name, plan in plans_for(graph, model, devices, link_bps, args.engine, args.variants.split(",")):
                        r = run_plan(plan, name, tmp, args)
                        predicted = name != "tokens-block"  # (a hand edit: no prediction)
                        r.update(plan=describe(plan), predicted_latency_ms=1e3 * plan.predicted_latency_s if predicted else None,
                                 predicted_fps=plan.predicted_throughput_fps if predicted else None)
                        r["latency_speedup_vs_one"] = one["latency_ms"] / r["latency_ms"]
                        r["throughput_speedup_vs_one"] = r["fps"] / one["fps"] if one["fps"] else None
                        row["plans"][name] = r
                        print(f"  {model} {config} {name}: {r['latency_ms']:.0f} ms, {r['fps']:.3f} fps ({r['seconds']:.0f} s)",
                              file=sys.stderr, flush=True)
                    out["emulated"].append(row)
                    if not args.json:
                        console.print(emulated_table(row, args))

    if args.corpus:
        from ai_edge_litert.interpreter import Interpreter
        from rich.table import Table

        from layers import load_model
        from layers.engine import make_engine

        corpus = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pisplit-corpus"
        paths = sorted(corpus.glob("torch_*.tflite"))
        if args.corpus_models:
            paths = [corpus / f"torch_{m}.tflite" for m in args.corpus_models.split(",") if m]
        if not paths:
            print(f"bench_transformers: error: no torch_*.tflite models in {corpus} (build them with scripts/build_corpus_torch)",
                  file=sys.stderr)
            return 1
        for path in paths:
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
            # side by side, alternating, in CPU seconds (other processes on a loaded machine do not count: at
            # load 8 five wall-clock runs of the 0.17 ms KWS model read x0.68), at least 5 runs and 0.5 s each
            while len(times["plain"]) < 5 or (min(sum(times["plain"]), sum(times["pisplit"])) < 0.5 and len(times["plain"]) < 2000):
                t = time.process_time()
                plain()
                times["plain"].append(time.process_time() - t)
                t = time.process_time()
                engine.run(feeds)
                times["pisplit"].append(time.process_time() - t)
            err = max(float(np.abs(got[o] - w).max()) / max(1.0, float(np.abs(w).max())) for o, w in zip(graph.outputs, want))
            plain_ms, ours_ms = 1e3 * float(np.median(times["plain"])), 1e3 * float(np.median(times["pisplit"]))
            out["corpus"].append({"model": path.stem, "nodes": len(graph.nodes), "runs": len(times["plain"]), "plain_litert_ms": plain_ms,
                                  "pisplit_litert_ms": ours_ms, "ratio": ours_ms / plain_ms, "max_rel_error": err})
            del engine, it
        if not args.json:
            table = Table(title="litert engine against one plain LiteRT interpreter (1 thread each, median CPU time of warm "
                                "runs taken in turn: at least 5 and 0.5 s each)")
            for col in ("model", "nodes", "plain LiteRT ms", "pisplit litert ms", "pisplit / plain", "max rel error"):
                table.add_column(col, justify="left" if col == "model" else "right")
            for r in out["corpus"]:
                table.add_row(r["model"], str(r["nodes"]), f"{r['plain_litert_ms']:.1f}", f"{r['pisplit_litert_ms']:.1f}",
                              f"x{r['ratio']:.2f}", f"{r['max_rel_error']:.1e}")
            console.print(table)

    if args.json:
        json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
