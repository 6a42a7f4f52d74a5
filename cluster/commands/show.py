"""`pisplit show MODEL`: the layer table of one model."""
from __future__ import annotations

from rich.table import Table

from layers import load_model

from ..output import console, human_bytes, human_count, print_json


def register(sub) -> None:
    p = sub.add_parser("show", help="layers of a model: shape, FLOPs, weights, activations, working memory")
    p.add_argument("model", metavar="MODEL", help="zoo name, .tflite file or pisplit .json graph")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.set_defaults(func=run)


def model_document(graph) -> dict:
    """Per-node table and totals of a graph as JSON data."""
    nodes = []
    for i, n in enumerate(graph.nodes):
        c = graph.cost(i)
        nodes.append({
            "index": i, "name": n.name, "op": n.op, "inputs": list(n.inputs),
            "output_shape": list(graph.shapes[n.outputs[0]]) if len(n.outputs) == 1 else [list(graph.shapes[t]) for t in n.outputs],
            "flops": c.flops, "params": c.params, "weight_bytes": c.weight_bytes, "output_bytes": c.output_bytes,
            "work_bytes": c.work_bytes, "peak_bytes": c.peak_bytes, "cut_bytes_after": graph.cut_bytes(i + 1),
        })
    return {"model": graph.name, "inputs": {k: list(v) for k, v in graph.inputs.items()}, "outputs": graph.outputs,
            "nodes": nodes, "totals": graph.totals()}


def run(args) -> int:
    graph = load_model(args.model)
    doc = model_document(graph)
    if args.json:
        print_json(doc)
        return 0
    table = Table(title=f"{graph.name}: {len(graph)} nodes, input " + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in graph.inputs.items()))
    for col in ["#", "node", "op", "output (per frame)", "FLOPs", "weights", "output", "work mem", "sent at cut"]:
        table.add_column(col, justify="left" if col in ("node", "op", "output (per frame)") else "right")
    for r in doc["nodes"]:
        shape = r["output_shape"]
        shape_s = "x".join(map(str, shape[1:])) if shape and isinstance(shape[0], int) else "; ".join("x".join(map(str, s[1:])) for s in shape)
        table.add_row(str(r["index"]), r["name"], r["op"], shape_s, human_count(r["flops"]), human_bytes(r["weight_bytes"]),
                      human_bytes(r["output_bytes"]), human_bytes(r["work_bytes"]) if r["work_bytes"] else "-", human_bytes(r["cut_bytes_after"]))
    t = doc["totals"]
    table.add_section()
    table.add_row("", "total", "", "", human_count(t["flops"]), human_bytes(t["weight_bytes"]), human_bytes(t["output_bytes"]),
                  human_bytes(max(r["work_bytes"] for r in doc["nodes"])) + " max", "")
    console.print(table)
    console.print(f"{human_count(t['params'])} parameters, {human_count(t['flops'])} FLOPs per frame, "
                  f"largest node needs {human_bytes(t['max_peak_bytes'])} to run")
    return 0
