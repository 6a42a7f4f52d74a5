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
            # dtype and quantization of the output and of the weights (int8 graphs; float32 without quantization)
            "dtype": str(graph.dtype(n.outputs[0])),
            "quantization": graph.quant[n.outputs[0]].to_dict() if n.outputs[0] in graph.quant else None,
            "weight_quantization": {p: graph.quant[n.weight_key(p)].to_dict() for p in n.weight_shapes if n.weight_key(p) in graph.quant},
        })
    return {"model": graph.name, "inputs": {k: list(v) for k, v in graph.inputs.items()}, "outputs": graph.outputs,
            "input_dtypes": {k: str(graph.dtype(k)) for k in graph.inputs},
            "input_quantization": {k: graph.quant[k].to_dict() for k in graph.inputs if k in graph.quant},
            "nodes": nodes, "totals": graph.totals()}


def run(args) -> int:
    graph = load_model(args.model)
    doc = model_document(graph)
    if args.json:
        print_json(doc)
        return 0
    quantized = bool(graph.quant)
    title = ", ".join(f"{k} {'x'.join(map(str, v))}" + (f" {graph.quant[k].describe()}" if k in graph.quant else "")
                      for k, v in graph.inputs.items())
    table = Table(title=f"{graph.name}: {len(graph)} nodes, input " + title)
    columns = ["#", "node", "op", "output (per frame)", *(["dtype / quantization"] if quantized else []), "FLOPs", "weights", "output",
               "work mem", "sent at cut"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("node", "op", "output (per frame)", "dtype / quantization") else "right")
    for r in doc["nodes"]:
        shape = r["output_shape"]
        shape_s = "x".join(map(str, shape[1:])) if shape and isinstance(shape[0], int) else "; ".join("x".join(map(str, s[1:])) for s in shape)
        node = graph.nodes[r["index"]]
        quant = [graph.quant[node.outputs[0]].describe() if node.outputs[0] in graph.quant else r["dtype"]]
        quant += [f"{p}: {graph.quant[node.weight_key(p)].describe()}" for p in node.weight_shapes if node.weight_key(p) in graph.quant]
        table.add_row(str(r["index"]), r["name"], r["op"], shape_s, *(["\n".join(quant)] if quantized else []),
                      human_count(r["flops"]), human_bytes(r["weight_bytes"]),
                      human_bytes(r["output_bytes"]), human_bytes(r["work_bytes"]) if r["work_bytes"] else "-", human_bytes(r["cut_bytes_after"]))
    t = doc["totals"]
    table.add_section()
    table.add_row("", "total", "", "", *([""] if quantized else []), human_count(t["flops"]), human_bytes(t["weight_bytes"]), human_bytes(t["output_bytes"]),
                  human_bytes(max(r["work_bytes"] for r in doc["nodes"])) + " max", "")
    console.print(table)
    console.print(f"{human_count(t['params'])} parameters, {human_count(t['flops'])} FLOPs per frame, "
                  f"largest node needs {human_bytes(t['max_peak_bytes'])} to run")
    return 0
