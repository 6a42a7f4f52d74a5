"""`pisplit bench MODEL`: pisplit's engines side by side with the whole model in one plain LiteRT
interpreter, which is what a user would run on a single Pi."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from rich.table import Table

from layers import Graph, PisplitError, load_model
from layers.engine import ENGINES, make_engine

from ..output import console, print_json

BASELINE = "plain litert"


def register(sub) -> None:
    p = sub.add_parser("bench", help="pisplit's engines against the whole model in one plain LiteRT interpreter")
    p.add_argument("model", metavar="MODEL", help="zoo name, .tflite file or pisplit .json graph")
    p.add_argument("--engine", default="numpy,litert", metavar="LIST",
                   help=f"comma-separated pisplit engines to time, of {', '.join(ENGINES)} (default numpy,litert)")
    p.add_argument("--repeat", type=int, default=5, help="timed passes per engine after one warm-up (default 5)")
    p.add_argument("--threads", type=int, default=1, help="threads of every interpreter (default 1)")
    p.add_argument("--layer", metavar="NODE", help="time this one node instead of the whole model")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.set_defaults(func=run)


def single_node_graph(graph: Graph, name: str) -> Graph:
    """The node `name` alone as a graph: its input tensors in, its outputs out, the same weights."""
    node = graph.node(name)
    return Graph(f"{graph.name}:{node.name}", {t: graph.shapes[t] for t in dict.fromkeys(node.inputs)}, [node],
                 node.outputs, graph.weights, graph.meta)


def plain_litert_model(spec: str, graph: Graph, whole_model: bool) -> bytes:
    """The flatbuffer a user would run: the .tflite file itself, else (zoo and .json models, single
    layers) the flatbuffer pisplit writes with batch-norms folded, as the TFLite converter folds them."""
    if whole_model and Path(spec).suffix.lower() == ".tflite":
        return Path(spec).read_bytes()  # import_tflite has parsed it: safe to hand to the interpreter
    from layers.tflite_export import export_tflite
    from layers.transforms import fold_batchnorm

    return export_tflite(fold_batchnorm(graph))


class PlainInterpreter:
    """One LiteRT interpreter on a flatbuffer, fed and read by position: no pisplit code in the loop."""

    name = BASELINE

    def __init__(self, model: bytes, graph: Graph, threads: int):
        from layers.tflite_engine import make_interpreter

        self.interpreter = make_interpreter(model, threads)
        self.inputs = [d["index"] for d in self.interpreter.get_input_details()]
        self.outputs = [d["index"] for d in self.interpreter.get_output_details()]
        self.order = list(graph.inputs)

    def run(self, feeds):
        for index, name in zip(self.inputs, self.order):
            self.interpreter.set_tensor(index, feeds[name])
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i) for i in self.outputs]


def time_engines(engines: list, feeds, repeat: int) -> list[dict]:
    """Median and best milliseconds of `repeat` timed passes of each engine. The engines take turns,
    so a change in the machine's load hits them all alike, in an order reversed every round, so none
    always follows the same engine; each timed pass follows an untimed one of the same engine, so it
    finds its own data in the caches, as in a stream of frames."""
    times: list[list[float]] = [[] for _ in engines]
    order = list(range(len(engines)))
    for _ in range(repeat):
        for i in order:
            engines[i].run(feeds)
            t0 = time.perf_counter()
            engines[i].run(feeds)
            times[i].append(time.perf_counter() - t0)
        order.reverse()
    return [{"median_ms": statistics.median(t) * 1e3, "best_ms": min(t) * 1e3} for t in times]


def bench(spec: str, engines: list[str], repeat: int, threads: int, layer: str | None = None) -> dict:
    """Times of each pisplit engine and of the plain interpreter on one model (or one of its nodes)."""
    graph = load_model(spec)
    if layer:
        graph = single_node_graph(graph, layer)
    for node in graph.nodes:  # materialise weights outside the timed region
        graph.node_weights(node)
    feeds = graph.random_input(0)
    rows, runners = [], []
    for kind in engines:
        t0 = time.perf_counter()
        engine = make_engine(graph, kind, threads)
        rows.append({"engine": kind if kind != "auto" else f"auto ({engine.name})", "build_s": time.perf_counter() - t0})
        runners.append(engine)
    t0 = time.perf_counter()
    runners.append(PlainInterpreter(plain_litert_model(spec, graph, layer is None), graph, threads))
    rows.append({"engine": BASELINE, "build_s": time.perf_counter() - t0})
    for row, timing in zip(rows, time_engines(runners, feeds, repeat)):
        row.update(timing)
    base = rows[-1]
    for r in rows:
        # speed relative to the plain interpreter: 1.0 = as fast, 0.5 = half as fast; the best-pass
        # ratio is the steadier one on a machine busy with other work
        r["speed_vs_plain_litert"] = base["median_ms"] / r["median_ms"]
        r["best_speed_vs_plain_litert"] = base["best_ms"] / r["best_ms"]
    return {"model": graph.name, "source": spec, "layer": layer, "threads": threads, "repeat": repeat,
            "flops": graph.totals()["flops"], "rows": rows}


def run(args) -> int:
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise PisplitError(f"--engine {args.engine!r}: expected a comma-separated list of {', '.join(ENGINES)}")
    if args.repeat < 1:
        raise PisplitError(f"--repeat {args.repeat}: must be at least 1")
    doc = bench(args.model, engines, args.repeat, args.threads, args.layer)
    if args.json:
        print_json(doc)
        return 0
    what = f"{doc['model']}" + (f" (node {doc['layer']})" if doc["layer"] else "")
    table = Table(title=f"{what}: {doc['flops'] / 1e9:.2f} GFLOP per frame, {args.threads} thread(s), median of {args.repeat}")
    for col in ("engine", "median ms", "best ms", "speed vs plain LiteRT (median, best)", "build s"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for r in doc["rows"]:
        table.add_row(r["engine"], f"{r['median_ms']:.2f}", f"{r['best_ms']:.2f}",
                      f"{r['speed_vs_plain_litert']:.3f}, {r['best_speed_vs_plain_litert']:.3f}", f"{r['build_s']:.2f}")
    console.print(table)
    return 0
