"""Save and load a graph: structure in JSON, weights in an .npz beside it (loaded without pickle).

An int8 graph's quantization (tensor dtypes, scales, zero points, axes) is plain data in its meta
(meta["quant"], layers.quant) and so in the JSON; its integer weights stay integers in the .npz."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import PisplitError
from .graph import Graph, Node
from .jsonfile import read_json
from .weights import NpzWeights

FORMAT = "pisplit-graph"
VERSION = 1


def graph_to_dict(graph: Graph) -> dict:
    """The graph structure as plain JSON data (no weights)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": graph.name,
        "inputs": {k: list(v) for k, v in graph.inputs.items()},
        "outputs": list(graph.outputs),
        "meta": graph.meta,
        "nodes": [
            {
                "name": n.name,
                "op": n.op,
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "attrs": n.attrs,
                "weights": {p: list(s) for p, s in n.weight_shapes.items()},
            }
            for n in graph.nodes
        ],
    }


def save_graph(graph: Graph, path: str | Path) -> tuple[Path, Path]:
    """Write `path` (.json structure) and the .npz of its weights beside it; returns both paths."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_suffix(".json")
    npz_path = path.with_suffix(".npz")
    doc = graph_to_dict(graph)
    arrays = {}
    for i, node in enumerate(graph.nodes):
        for p in node.weight_shapes:
            key = node.weight_key(p)
            # quantized weights keep their integer dtype (their scales are in meta["quant"]); the rest is float32
            dtype = graph.quant[key].np_dtype if key in graph.quant else np.float32
            arrays[f"n{i}_{p}"] = np.ascontiguousarray(graph.weights[key], dtype=dtype)
    doc["weights_file"] = npz_path.name
    path.write_text(json.dumps(doc, indent=1))
    np.savez(npz_path, **arrays)
    return path, npz_path


def load_graph(path: str | Path) -> Graph:
    """Read a graph written by `save_graph`; weights stay on disk until a node asks for them."""
    path = Path(path)
    doc = read_json(path, "model file")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PisplitError(f"model file {path}: not a pisplit graph (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise PisplitError(f"model file {path}: graph format version {doc.get('version')} is not supported (expected {VERSION})")
    try:
        nodes = [
            Node(n["name"], n["op"], list(n["inputs"]), list(n["outputs"]), dict(n.get("attrs", {})),
                 {p: tuple(s) for p, s in n.get("weights", {}).items()})
            for n in doc["nodes"]
        ]
        keys = {node.weight_key(p): f"n{i}_{p}" for i, node in enumerate(nodes) for p in node.weight_shapes}
        npz_path = path.parent / doc.get("weights_file", path.with_suffix(".npz").name)
        weights = NpzWeights(npz_path, keys) if keys else {}
        return Graph(doc["name"], doc["inputs"], nodes, doc["outputs"], weights, doc.get("meta"))
    except (KeyError, TypeError) as exc:
        raise PisplitError(f"model file {path}: malformed graph ({exc!r})") from None
