"""Execution engines: something that runs a (sub)graph on arrays.

An engine is built for one Graph (a whole model, a pipeline stage or one part of a split layer) and
then called once per frame: `engine.run(feeds) -> outputs`, both dicts of tensor name -> float32 array.
`numpy` is the reference engine; `litert` compiles the graph to a .tflite flatbuffer and runs it in the
LiteRT interpreter with XNNPACK (layers.tflite_engine); `auto` picks whichever is faster for the graph
(see `make_engine`).
"""
from __future__ import annotations

import logging
import time
from typing import Mapping, Protocol

import numpy as np

from .errors import PisplitError
from .graph import Graph

log = logging.getLogger(__name__)

ENGINES = ("numpy", "litert", "auto")

# `auto` measures both engines on graphs below this many FLOPs per frame (a numpy pass then takes
# some milliseconds, so measuring costs little); above it, it takes litert without measuring: one
# thread each, LiteRT with XNNPACK ran 1.4-3.7x faster than numpy on AlexNet, VGG16, ResNet50 and
# MobileNetV1, 2.6x on VGG16's block1_conv2 alone and 7-13x on imported MediaPipe models
# (scripts/bench_litert); conv/dense layers, which carry such FLOPs, are where it wins most.
AUTO_MEASURE_FLOPS = 50_000_000


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
        result = {t: out[t] for t in self.graph.outputs}
        check_finite(self.graph, feeds, result)
        return result


def _finite(a: np.ndarray) -> bool:
    # a sum carries any NaN/inf through and costs one pass; only a non-finite sum needs the exact test
    return bool(np.isfinite(np.sum(a))) or bool(np.isfinite(a).all())


def check_finite(graph: Graph, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """PisplitError when an output holds NaN or inf although every fed tensor is finite: a wrong
    weight (say, one read without its quantization scale) must never pass as an answer."""
    bad = next((t for t, y in outputs.items() if not _finite(np.asarray(y))), None)
    if bad is None or not all(_finite(np.asarray(x)) for x in feeds.values()):
        return
    raise PisplitError(f"model {graph.name}: output {bad!r} holds NaN or infinite values although every input is finite")


def make_engine(graph: Graph, kind: str = "numpy", threads: int | None = None) -> Engine:
    """An engine of `kind` ('numpy', 'litert' or 'auto') for `graph`; `threads` is the engine's own
    thread count (litert; numpy uses BLAS's). The returned engine's `name` says which one runs.

    'auto' is numpy when the graph has an op without a TFLite form (or LiteRT is missing); litert
    when the graph has at least AUTO_MEASURE_FLOPS FLOPs; otherwise whichever was faster in a short
    measurement (a warm-up and three timed passes each on seeded random input).
    """
    if kind == "numpy":
        return NumpyEngine(graph, threads)
    if kind == "litert":
        from .tflite_engine import LiteRTEngine  # imported lazily: it loads ai-edge-litert

        return LiteRTEngine(graph, threads)
    if kind == "auto":
        return _fastest_engine(graph, threads)
    raise PisplitError(f"engine {kind!r}: expected one of {', '.join(ENGINES)}")


def _fastest_engine(graph: Graph, threads: int | None) -> Engine:
    try:
        litert = make_engine(graph, "litert", threads)
    except PisplitError as exc:
        log.info("engine auto for %s: numpy (%s)", graph.name, exc)
        return NumpyEngine(graph, threads)
    flops = graph.totals()["flops"]
    if flops >= AUTO_MEASURE_FLOPS:
        log.info("engine auto for %s: litert (%d FLOPs per frame)", graph.name, flops)
        return litert
    numpy_engine = NumpyEngine(graph, threads)
    feeds = graph.random_input(0)
    seconds = {e.name: _best_seconds(e, feeds) for e in (numpy_engine, litert)}
    chosen = litert if seconds["litert"] < seconds["numpy"] else numpy_engine
    log.info("engine auto for %s: %s (numpy %.3g s, litert %.3g s)", graph.name, chosen.name, seconds["numpy"], seconds["litert"])
    return chosen


def _best_seconds(engine: Engine, feeds, runs: int = 3) -> float:
    engine.run(feeds)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        engine.run(feeds)
        best = min(best, time.perf_counter() - t0)
    return best
