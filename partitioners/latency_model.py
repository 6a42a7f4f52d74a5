"""Latency of what was not measured: per op kind, a regression of seconds on FLOPs and bytes.

As Edgent and Neurosurgeon do, each op kind gets its own linear model

    seconds = fixed + per_flop * flops + per_byte * bytes        (all three coefficients >= 0)

where bytes = weights + inputs + outputs moved by the node. It is fitted on a profile's measured
nodes and parts (relative error is what is minimised, so a 50 us pool counts as much as a 50 ms conv),
and reports its own fit error so a user can judge how far to trust it.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from layers.graph import Graph

ANY_OP = "*"  # the fit over every sample, used for op kinds the profile never measured


def op_key(graph: Graph, index: int) -> str:
    """The latency-model key of a node: its op, with depthwise and grouped convs told apart.

    A depthwise conv does ~1/Cin the FLOPs of a dense one per byte moved and runs far below the
    BLAS rate, so pooling them with dense convs would wreck both fits. Likewise a dense layer over
    many rows (a transformer's token-wise projections: a matrix product at the BLAS rate) and one
    over a single row (a classifier's: it streams its weights once) are told apart, "dense/rows"
    (ViT-B/16's projections ran 3.3x faster than the single-row fit predicted).
    """
    node = graph.nodes[index]
    if node.op == "dense" and math.prod(graph.shapes[node.inputs[0]][:-1]) > 1:
        return "dense/rows"
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


def _fit_nonnegative(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Least squares of relative error (or of error weighted by `w`) with all coefficients >= 0 (a few
    unknowns: try every support)."""
    w = 1.0 / np.maximum(y, 1e-9) if w is None else w
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


# --- what a split part costs beyond its share ---------------------------------------------------------

def fit_share(profile, graph: Graph, start: int, stop: int, flops: float, nbytes: float) -> float:
    """The share of nodes [start, stop)'s seconds that a part of `flops` and `nbytes` takes, as the
    planner prices it (partitioners.segment_table): the primary op's latency fit for the part over its
    fit for the whole nodes (so the fit's fixed cost is paid once per part), else the FLOPs share."""
    fit = profile.latency.fit_for(op_key(graph, start))
    whole_flops = float(sum(graph.cost(t).flops for t in range(start, stop))) or 1.0
    if fit is not None:
        whole = fit.predict(whole_flops, float(sum(node_bytes(graph, t) for t in range(start, stop))))
        if whole > 0:
            return fit.predict(flops, nbytes) / whole
    return flops / whole_flops


@dataclass(frozen=True)
class SplitStepSample:
    """One part of a split segment timed in stream order (cluster.measure.measure_split_overhead)."""

    kind: str
    parts: int  # how many even parts the segment was split into
    nodes: int  # nodes of the graph the split covers
    whole_s: float  # the whole split nodes, measured in the same run
    part_s: float  # this part, warm median
    predicted_s: float  # whole_s x fit_share: what the planner predicts without the overhead
    reference_whole_s: float = 0.0  # the whole split nodes as the profile says (0: not known)
    weight_bytes: float = 0.0  # the part's weights (a spatial part reads the whole filter; 0: not recorded)


@dataclass(frozen=True)
class SplitOverhead:
    """What a part of a split segment takes beyond its share of the whole split nodes (fit_share), in a
    profile's seconds: a part is a smaller problem run as an engine call of its own, with its own
    halos, crops and im2col buffers, so its kernels run below the whole layer's rate, and each node
    pays its fixed costs again at the part's size (ops that do little per element: batch norm, relu,
    add). Per kind:

        part seconds = share seconds x (1 + per_share) + whole seconds x per_whole
                       + per_step_s + per_node_s x nodes split

(per_whole: what every part pays whatever its size, in proportion to the layer: a channel split's
parts each build the im2col patches of the whole input, so eight of them came out ~25% above their
share and the whole-size term alone).

    ResNet50's parts on the reference machine took 1.2-1.5x their share (2 to 8 parts): with 46 split
    segments, the share alone predicted its Pi 3B+ latency plans 20-40% optimistic.

    per_weight_byte_s: what a part pays per byte of its weights that the whole layer's share does not
    (weight_term: weights x (1 - share)): a thin part's matrix product streams (packs) the whole weight
    matrix for a few rows, as the whole layer does once for all of them. ResNet50's 7x7 convs (2.4M
    weights) split into 1-row strips on 7 ranks took ~2 ms each here whether of 1 or 2 rows, 1.8-2.6x
    their share: ~2e-10 s per weight byte, 20x the per-byte slope of the op's latency fit."""

    per_share: float = 0.0
    per_step_s: float = 0.0
    per_node_s: float = 0.0
    samples: int = 0
    per_whole: float = 0.0
    median_error: float = 0.0  # median |predicted with overhead - measured| / measured over the samples
    median_error_without: float = 0.0  # ... with the share alone
    sum_ratio: float = 1.0  # sum of predictions with overhead / sum of measurements
    sum_ratio_without: float = 1.0  # ... with the share alone
    per_weight_byte_s: float = 0.0  # x weight_term(part's weight bytes, its share)

    def seconds(self, share_s, nodes, whole_s=0.0, weight_bytes=0.0, share=1.0):
        """A part's seconds from its share's seconds, the split's node count, the whole split nodes'
        seconds, and its weight bytes and share (numbers or arrays)."""
        return (share_s * (1.0 + self.per_share) + whole_s * self.per_whole + self.per_step_s + self.per_node_s * nodes
                + self.per_weight_byte_s * weight_term(weight_bytes, share))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> "SplitOverhead":
        names = ("per_share", "per_step_s", "per_node_s", "per_whole", "median_error", "median_error_without", "sum_ratio",
                 "sum_ratio_without", "per_weight_byte_s")
        values = {k: doc.get(k, 1.0 if k.startswith("sum_ratio") else 0.0) for k in names}
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values.values()):
            raise ValueError(f"every figure must be a finite number >= 0 ({json.dumps(values)[:80]})")
        samples = doc.get("samples", 0)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise ValueError(f"samples {samples!r} is not a count")
        return cls(**{k: float(v) for k, v in values.items()}, samples=samples)


def weight_term(weight_bytes, share):
    """The weight bytes a part streams beyond its share of the whole layer's: weights x (1 - share),
    share clipped to [0, 1] (numbers or arrays). The whole layer streams its weights once and a part's
    share of its seconds holds share x that; a part that reads all of them (a spatial part: the whole
    filter) pays the rest again, one holding a slice (a channel part: share x the weights) little."""
    return np.asarray(weight_bytes, dtype=float) * (1.0 - np.clip(share, 0.0, 1.0))


def fit_split_overhead(samples: list[SplitStepSample]) -> SplitOverhead:
    """Fit SplitOverhead on measured parts (coefficients >= 0, error relative to the square root of
    each part's seconds: relative error alone lets the many small parts outvote the large ones, whose
    sum is what a plan's latency adds up), in the profile's seconds: when the samples' whole nodes
    ran `speed` times the profile's seconds (another machine, another day), the fixed terms are
    divided by it."""
    samples = [s for s in samples if s.part_s > 0 and s.whole_s > 0]
    if not samples:
        return SplitOverhead()
    known = [s for s in samples if s.reference_whole_s > 0]
    speed = sum(s.whole_s for s in known) / sum(s.reference_whole_s for s in known) if known else 1.0
    part = np.array([s.part_s for s in samples])
    pred = np.array([s.predicted_s for s in samples])
    streamed = np.array([float(weight_term(s.weight_bytes, s.predicted_s / s.whole_s)) for s in samples])
    x = np.array([[p, 1.0, float(s.nodes), s.whole_s, w] for p, s, w in zip(pred, samples, streamed)])
    coef = _fit_nonnegative(x, part - pred, 1.0 / np.sqrt(part))
    fitted = pred + x @ coef
    err = np.abs(fitted - part) / part
    return SplitOverhead(float(coef[0]), float(coef[1]) / speed, float(coef[2]) / speed, len(samples), float(coef[3]),
                         float(np.median(err)), float(np.median(np.abs(pred - part) / part)), float(fitted.sum() / part.sum()),
                         float(pred.sum() / part.sum()), per_weight_byte_s=float(coef[4]) / speed)


ROWS_KINDS = ("fc-output", "fc-input")  # split kinds whose overhead is fitted apart over dense layers of many rows


def overhead_key(kind: str, graph: Graph, start: int) -> str:
    """The split_overhead key a `kind` split of the nodes from `start` is priced with: "<kind>/rows" for a
    dense layer's split over many rows (op key dense/rows: a transformer's token-wise projections and
    MLP), else the kind. A classifier's single-row dense streams its weights once, so each of its
    parts pays ~10% of the whole layer again (per_whole), where a part of a token-wise matrix product
    runs at the whole one's rate: ViT-B/16's MLP parts were priced 297 ms against 248 ms measured
    with the single-row figures. Profiles without the key price it with the kind's (Profile.split_overhead_for)."""
    if str(kind) in ROWS_KINDS and op_key(graph, start) == "dense/rows":
        return f"{kind}/rows"
    return str(kind)


def fit_split_overheads(samples: list[SplitStepSample]) -> dict[str, SplitOverhead]:
    """One SplitOverhead per kind measured, and ANY_OP over them all (for kinds never measured)."""
    by_kind: dict[str, list] = {}
    for s in samples:
        by_kind.setdefault(s.kind, []).append(s)
    fits = {kind: fit_split_overhead(group) for kind, group in sorted(by_kind.items())}
    if samples:
        fits[ANY_OP] = fit_split_overhead(samples)
    return fits


def merge_split_overheads(fits: list[dict]) -> dict[str, SplitOverhead]:
    """Profiles of several models measured apart (one process each, `pisplit profile --model a,b`)
    as one: per kind, each figure averaged over the profiles weighted by their samples."""
    out: dict[str, SplitOverhead] = {}
    for kind in sorted({k for f in fits for k in f}):
        have = [f[kind] for f in fits if kind in f and f[kind].samples > 0]
        total = sum(o.samples for o in have)
        if not total:
            continue
        mean = {name: sum(getattr(o, name) * o.samples for o in have) / total
                for name in ("per_share", "per_step_s", "per_node_s", "per_whole", "median_error", "median_error_without",
                             "sum_ratio", "sum_ratio_without", "per_weight_byte_s")}
        out[kind] = SplitOverhead(**mean, samples=total)
    return out
