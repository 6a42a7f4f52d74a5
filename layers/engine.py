"""Execution engines: something that runs a (sub)graph on arrays.

An engine is built for one Graph (a whole model, a pipeline stage or one part of a split layer) and
then called once per frame: `engine.run(feeds) -> outputs`, both dicts of tensor name -> float32 array.
`numpy` is the reference engine; `litert` compiles the graph to a .tflite flatbuffer and runs it in the
LiteRT interpreter with XNNPACK (see layers.tflite_engine once it exists).
"""
from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np

from .errors import PisplitError
from .graph import Graph

ENGINES = ("numpy", "litert", "auto")


class Engine(Protocol):
    """Runs one graph: feeds are its inputs, the result holds its outputs."""

    name: str

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class NumpyEngine:
    """The reference engine: `Graph.execute` with the vectorised numpy kernels."""

    name = "numpy"

    def __init__(self, graph: Graph, threads: int | None = None):
        self.graph = graph

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.graph.execute(feeds)
        return {t: out[t] for t in self.graph.outputs}


def make_engine(graph: Graph, kind: str = "numpy", threads: int | None = None) -> Engine:
    """An engine of `kind` ('numpy', 'litert' or 'auto') for `graph`."""
    if kind == "numpy":
        return NumpyEngine(graph, threads)
    if kind in ("litert", "auto"):
        raise PisplitError(f"engine {kind!r}: not available yet (only 'numpy')")
    raise PisplitError(f"engine {kind!r}: expected one of {', '.join(ENGINES)}")
