"""`pisplit infer MODEL`: one forward pass in one process."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from layers import PisplitError, load_model
from layers.engine import ENGINES, make_engine

from ..arrays import load_npy
from ..output import console, print_json


def register(sub) -> None:
    p = sub.add_parser("infer", help="one forward pass in this process")
    p.add_argument("model", metavar="MODEL", help="zoo name, .tflite file or pisplit .json graph")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="X.npy", help="input array (float32, the model's input shape, batch axis optional)")
    src.add_argument("--random", action="store_true", help="seeded random input")
    p.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    p.add_argument("--output", metavar="Y.npy", help="write the output array here")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="numpy (reference kernels), litert (LiteRT interpreter with XNNPACK) or auto: the faster (default)")
    p.add_argument("--threads", type=int, default=1, help="threads of the litert engine (default 1)")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.set_defaults(func=run)


def read_input(path: str, graph) -> dict[str, np.ndarray]:
    """Load X.npy (no pickle) and check it against the model's single input shape."""
    if len(graph.inputs) != 1:
        raise PisplitError(f"model {graph.name}: has {len(graph.inputs)} inputs; --input feeds only single-input models")
    name, shape = next(iter(graph.inputs.items()))
    x = load_npy(path)
    if x.shape == shape[1:]:
        x = x[None]
    if x.ndim != len(shape) or x.shape[1:] != shape[1:]:
        raise PisplitError(f"input {path}: shape {x.shape} does not match model input {name} {shape}")
    if x.shape[0] == 0:  # an engine's own message named the model, not the file (bench_fuzz)
        raise PisplitError(f"input {path}: shape {x.shape} holds no frame (axis 0 is 0)")
    return {name: x.astype(np.float32)}


def run(args) -> int:
    graph = load_model(args.model)
    feeds = read_input(args.input, graph) if args.input else graph.random_input(args.seed)
    engine = make_engine(graph, args.engine, args.threads)
    t0 = time.perf_counter()
    out = engine.run(feeds)
    seconds = time.perf_counter() - t0
    y = out[graph.outputs[0]]
    if args.output:
        if len(out) == 1:
            np.save(args.output, y)
        else:
            np.savez(Path(args.output).with_suffix(".npz"), **{f"output_{i}": out[t] for i, t in enumerate(graph.outputs)})
    doc = {"model": graph.name, "engine": engine.name, "seconds": seconds,
           "outputs": {t: {"shape": list(v.shape), "argmax": int(v.reshape(v.shape[0], -1)[0].argmax()),
                           "max": float(v.max()), "min": float(v.min())} for t, v in out.items()}}
    if args.json:
        print_json(doc)
    else:
        for t, info in doc["outputs"].items():
            console.print(f"{graph.name}: output {t} shape {tuple(info['shape'])}, argmax {info['argmax']} "
                          f"(max {info['max']:.4g}), {seconds * 1e3:.1f} ms with the {engine.name} engine")
        if args.output:
            console.print(f"wrote {args.output}")
    return 0
