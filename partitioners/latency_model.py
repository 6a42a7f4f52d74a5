"""Latency of what was not measured: per op kind, a regression of seconds on FLOPs and bytes.

As Edgent and Neurosurgeon do, each op kind gets its own linear model

    seconds = fixed + per_flop * flops + per_byte * bytes        (all three coefficients >= 0)

where bytes = weights + inputs + outputs moved by the node. It is fitted on a profile's measured
nodes and parts (relative error is what is minimised, so a 50 us pool counts as much as a 50 ms conv),
and reports its own fit error so a user can judge how far to trust it.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from layers.graph import Graph

ANY_OP = "*"  # the fit over every sample, used for op kinds the profile never measured


def op_key(graph: Graph, index: int) -> str:
    """The latency-model key of a node: its op, with depthwise and grouped convs told apart.

    A depthwise conv does ~1/Cin the FLOPs of a dense one per byte moved and runs far below the
    BLAS rate, so pooling them with dense convs would wreck both fits.
    """
    node = graph.nodes[index]
    if node.op in ("conv2d", "conv3d"):
        groups = int(node.attrs.get("groups", 1))
        if groups > 1:
            cin = graph.shapes[node.inputs[0]][-1]
            return f"{node.op}/depthwise" if groups == cin else f"{node.op}/grouped"
    return node.op


def node_bytes(graph: Graph, index: int) -> int:
    """Bytes a node moves: weights + inputs + outputs (float32)."""
    c = graph.cost(index)
    return c.weight_bytes + c.input_bytes + c.output_bytes


@dataclass(frozen=True)
class Sample:
    """One measurement: op kind, its FLOPs and bytes, and the warm median seconds."""

    op: str
    flops: float
    bytes: float
    seconds: float


@dataclass(frozen=True)
class OpFit:
    """The fitted model of one op kind and how well it fits its own samples."""

    fixed_s: float
    per_flop_s: float
    per_byte_s: float
    samples: int
    median_error: float  # median |predicted - measured| / measured
    max_error: float

    def predict(self, flops: float, nbytes: float) -> float:
        return self.fixed_s + self.per_flop_s * flops + self.per_byte_s * nbytes


def _fit_nonnegative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares of relative error with all coefficients >= 0 (3 unknowns: try every support)."""
    w = 1.0 / np.maximum(y, 1e-9)
    xw, yw = x * w[:, None], y * w
    best, best_res = np.zeros(x.shape[1]), math.inf
    for k in range(1, x.shape[1] + 1):
        for cols in itertools.combinations(range(x.shape[1]), k):
            coef, *_ = np.linalg.lstsq(xw[:, cols], yw, rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(x.shape[1])
            full[list(cols)] = coef
            res = float(((xw @ full - yw) ** 2).sum())
            if res < best_res:
                best, best_res = full, res
    return best


def fit_op(samples: list[Sample]) -> OpFit:
    """Fit one op kind's model on its samples (at least one)."""
    x = np.array([[1.0, s.flops, s.bytes] for s in samples])
    y = np.array([s.seconds for s in samples])
    coef = _fit_nonnegative(x, y)
    err = np.abs(x @ coef - y) / np.maximum(y, 1e-9)
    return OpFit(float(coef[0]), float(coef[1]), float(coef[2]), len(samples), float(np.median(err)), float(err.max()))


class LatencyModel:
    """Per-op-kind fits, with a fit over all samples for op kinds never measured."""

    def __init__(self, fits: dict[str, OpFit]):
        self.fits = dict(fits)

    @classmethod
    def fit(cls, samples: list[Sample]) -> "LatencyModel":
        """Fit every op kind that has samples, plus the catch-all ANY_OP."""
        samples = [s for s in samples if s.seconds > 0]
        by_op: dict[str, list[Sample]] = {}
        for s in samples:
            by_op.setdefault(s.op, []).append(s)
        fits = {op: fit_op(group) for op, group in sorted(by_op.items())}
        if samples:
            fits[ANY_OP] = fit_op(samples)
        return cls(fits)

    def fit_for(self, op: str) -> OpFit | None:
        """The fit used for `op`: its own, else its base op's (conv2d for conv2d/depthwise), else ANY_OP."""
        return self.fits.get(op) or self.fits.get(op.split("/")[0]) or self.fits.get(ANY_OP)

    def predict(self, op: str, flops: float, nbytes: float) -> float:
        """Predicted seconds of one node (or part) of kind `op`; 0 with no fits at all."""
        fit = self.fit_for(op)
        return fit.predict(flops, nbytes) if fit else 0.0

    def error_report(self) -> dict:
        """Per op kind: samples, median and max relative error of the fit."""
        return {op: {"samples": f.samples, "median_error": f.median_error, "max_error": f.max_error} for op, f in self.fits.items()}

    def to_dict(self) -> dict:
        return {op: {"fixed_s": f.fixed_s, "per_flop_s": f.per_flop_s, "per_byte_s": f.per_byte_s, "samples": f.samples,
                     "median_error": f.median_error, "max_error": f.max_error} for op, f in self.fits.items()}

    @classmethod
    def from_dict(cls, doc: dict) -> "LatencyModel":
        return cls({op: OpFit(float(d["fixed_s"]), float(d["per_flop_s"]), float(d["per_byte_s"]), int(d.get("samples", 0)),
                              float(d.get("median_error", 0.0)), float(d.get("max_error", 0.0))) for op, d in doc.items()})
