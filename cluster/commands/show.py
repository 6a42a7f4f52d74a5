"""`pisplit show MODEL`: the layer table of one model.

A weight a converter stores once and several ops read (an unrolled LSTM's recurrent weights, a LayerNorm
epsilon the converter deduplicated; found as equal shape, dtype and bytes) is one weight: its op rows show it (marked "shared"), the totals
count it once (`params`, `weight_bytes`); `params_per_use` and `weight_bytes_per_use` sum every op's.
"""
from __future__ import annotations

import numpy as np
from rich.table import Table

from layers import load_model
from layers.weights import SeededWeights

from ..output import console, human_bytes, human_count, print_json


def register(sub) -> None:
    p = sub.add_parser("show", help="layers of a model: shape, FLOPs, weights, activations, working memory")
    p.add_argument("model", metavar="MODEL", help="zoo name, .tflite file or pisplit .json graph")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.set_defaults(func=run)


def shared_weights(graph) -> dict[str, str]:
    """{weight key: key of the first op's weight with the same stored data} for the weights that repeat an
    earlier op's: same shape, dtype and bytes (a converter stores such a constant once and every op reads
    that one tensor: an unrolled LSTM's recurrent weights, a deduplicated epsilon). Seeded zoo weights are
    one per node and are not generated to find out."""
    import hashlib

    if isinstance(graph.weights, SeededWeights):
        return {}
    def digest(a: np.ndarray) -> bytes:
        return hashlib.blake2b(a.data, digest_size=16).digest()

    first: dict = {}  # (shape, dtype, digest of its first and last values) -> [(whole digest or None, key)]
    out = {}
    for n in graph.nodes:
        for p in n.weight_shapes:
            key = n.weight_key(p)
            try:
                a = np.ascontiguousarray(graph.weights[key])
            except KeyError:
                continue
            shape, a = a.shape, a.reshape(-1)
            seen = first.setdefault((shape, a.dtype.str, digest(np.concatenate([a[:64], a[-64:]]))), [])
            whole = digest(a) if seen else None  # whole arrays are hashed only where the ends agree
            for i, (other, k) in enumerate(seen):
                if other is None:
                    other = digest(np.ascontiguousarray(graph.weights[k]).reshape(-1))
                    seen[i] = (other, k)
                if other == whole:
                    out[key] = k
                    break
            else:
                seen.append((whole, key))
    return out


def model_document(graph) -> dict:
    """Per-node table and totals of a graph as JSON data (shared weights counted once in the totals)."""
    nodes = []
    shared = shared_weights(graph)
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
            # weights another op also reads (param -> the first op's weight key): counted once, at that op
            "shared_weights": {p: shared[n.weight_key(p)] for p in n.weight_shapes if n.weight_key(p) in shared},
        })
    totals = dict(graph.totals())
    repeated = [(n, p) for n in graph.nodes for p in n.weight_shapes if n.weight_key(p) in shared]
    repeat_params = sum(int(np.prod(n.weight_shapes[p])) for n, p in repeated)
    repeat_bytes = sum(graph.tensor_bytes(n.weight_key(p), n.weight_shapes[p]) for n, p in repeated)
    totals.update(params_per_use=totals["params"], weight_bytes_per_use=totals["weight_bytes"],
                  params=totals["params"] - repeat_params, weight_bytes=totals["weight_bytes"] - repeat_bytes,
                  shared_weights=len(set(shared.values())))
    return {"model": graph.name, "inputs": {k: list(v) for k, v in graph.inputs.items()}, "outputs": graph.outputs,
            "input_dtypes": {k: str(graph.dtype(k)) for k in graph.inputs},
            "input_quantization": {k: graph.quant[k].to_dict() for k in graph.inputs if k in graph.quant},
            "nodes": nodes, "totals": totals}


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
        weights = human_bytes(r["weight_bytes"]) + (" shared" if r["shared_weights"] else "")
        table.add_row(str(r["index"]), r["name"], r["op"], shape_s, *(["\n".join(quant)] if quantized else []),
                      human_count(r["flops"]), weights,
                      human_bytes(r["output_bytes"]), human_bytes(r["work_bytes"]) if r["work_bytes"] else "-", human_bytes(r["cut_bytes_after"]))
    t = doc["totals"]
    table.add_section()
    table.add_row("", "total", "", "", *([""] if quantized else []), human_count(t["flops"]), human_bytes(t["weight_bytes"]), human_bytes(t["output_bytes"]),
                  human_bytes(max(r["work_bytes"] for r in doc["nodes"])) + " max", "")
    console.print(table)
    shared_note = ""
    if t["shared_weights"]:
        shared_note = (f" ({t['shared_weights']} weights read by several ops, counted once; "
                       f"{human_count(t['params_per_use'])} counting every use)")
    console.print(f"{human_count(t['params'])} parameters{shared_note}, {human_count(t['flops'])} FLOPs per frame, "
                  f"largest node needs {human_bytes(t['max_peak_bytes'])} to run")
    return 0
