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
        version = json.dumps(doc.get("version"), default=repr)[:60]  # quoted and escaped: a version with a newline is one line too (bench_fuzz)
        raise PisplitError(f"model file {path}: graph format version {version} is not supported (expected {VERSION})")
    _check_graph_fields(doc, path)
    try:
        nodes = [
            Node(n["name"], n["op"], list(n["inputs"]), list(n["outputs"]), dict(n.get("attrs", {})),
                 {p: tuple(s) for p, s in n.get("weights", {}).items()})
            for n in doc["nodes"]
        ]
        keys = {node.weight_key(p): f"n{i}_{p}" for i, node in enumerate(nodes) for p in node.weight_shapes}
        npz_path = path.parent / doc.get("weights_file", path.with_suffix(".npz").name)
        shapes = {node.weight_key(p): s for node in nodes for p, s in node.weight_shapes.items()}
        weights = NpzWeights(npz_path, keys, shapes) if keys else {}
        return Graph(doc["name"], doc["inputs"], nodes, doc["outputs"], weights, doc.get("meta"))
    except PisplitError as exc:  # a graph that does not hold together (shapes, tensors, ops): name the file too
        raise PisplitError(f"model file {path}: {exc}") from None
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, ArithmeticError) as exc:
        # a field of the wrong type or length (hand-edited or corrupt): one line, never a traceback
        raise PisplitError(f"model file {path}: malformed graph ({type(exc).__name__}: {exc})") from None


def _check_graph_fields(doc: dict, path: Path) -> None:
    """The types load_graph relies on (names are strings, shapes lists of non-negative integers, ...),
    so a hand-edited or corrupt file is refused naming the field, not deep inside the graph code."""
    def fail(where: str, what: str, value) -> PisplitError:
        return PisplitError(f"model file {path}: {where}: expected {what}, got {json.dumps(value, default=repr)[:60]}")

    def shape(value, where: str) -> None:
        if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in value):
            raise fail(where, "a shape (a list of integers >= 0)", value)

    def names(value, where: str) -> None:
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise fail(where, "a list of tensor names", value)

    if not isinstance(doc.get("name"), str):
        raise fail("name", "a string", doc.get("name"))
    if not isinstance(doc.get("inputs"), dict):
        raise fail("inputs", "an object of input name -> shape", doc.get("inputs"))
    for k, v in doc["inputs"].items():
        shape(v, f"inputs.{k}")
    names(doc.get("outputs"), "outputs")
    if not isinstance(doc.get("nodes"), list) or not doc["nodes"]:  # no nodes: `show` failed on max() of nothing (bench_fuzz)
        raise fail("nodes", "a list of at least one node", doc.get("nodes"))
    if not isinstance(doc.get("meta", {}), (dict, type(None))):
        raise fail("meta", "an object", doc.get("meta"))
    if not isinstance(doc.get("weights_file", ""), str):
        raise fail("weights_file", "a file name", doc.get("weights_file"))
    for i, n in enumerate(doc["nodes"]):
        if not isinstance(n, dict):
            raise fail(f"nodes[{i}]", "an object", n)
        for key in ("name", "op"):
            if not isinstance(n.get(key), str):
                raise fail(f"nodes[{i}].{key}", "a string", n.get(key))
        names(n.get("inputs"), f"nodes[{i}].inputs")
        names(n.get("outputs"), f"nodes[{i}].outputs")
        if not isinstance(n.get("attrs", {}), dict):
            raise fail(f"nodes[{i}].attrs", "an object", n.get("attrs"))
        if not isinstance(n.get("weights", {}), dict):
            raise fail(f"nodes[{i}].weights", "an object of parameter -> shape", n.get("weights"))
        for p, s in n.get("weights", {}).items():
            shape(s, f"nodes[{i}].weights.{p}")
