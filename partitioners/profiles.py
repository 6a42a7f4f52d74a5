"""Profiles: what one machine measured (per node, per part, links), how to read them, and the calibration
that turns them into a device's seconds. Measuring (timers, tracemalloc, machine info) is cluster.measure's:
this package only plans.

A profile is a JSON document (format "pisplit-profile") written by `pisplit profile`:

- machine: kind ('rpi3', 'rpi4', 'rpi5' when it runs on a Pi, else 'host'), cores, memory, numpy/BLAS
  build, LiteRT build;
- engine: the engine the nodes were timed with (plans must be costed with the engine that runs them);
- models: per model, per node, the warm median seconds of the whole node and of parts of it (each
  applicable split kind at several fractions), with FLOPs, bytes moved and peak memory;
- latency_model: per op kind regression fitted on those measurements (see latency_model), with its
  fit error;
- links: ping-pong results between ranks when measured under mpirun (latency and bandwidth);
- split_overhead (optional): per split kind, what a part costs beyond its share of the whole nodes
  (latency_model.SplitOverhead, measured by cluster.measure.measure_split_overhead).

The cost model reads a node's seconds from the profile when it was measured, else predicts them.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph
from layers.jsonfile import read_json

from .latency_model import ANY_OP, LatencyModel, Sample, SplitOverhead, node_bytes, op_key

PROFILE_FORMAT = "pisplit-profile"
PROFILE_VERSION = 1
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class PartProfile:
    """One part of a split node: kind, the fraction of the node it holds, its cost and warm seconds."""

    kind: str
    fraction: float
    flops: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class NodeProfile:
    """One node measured whole (and in parts)."""

    name: str
    op: str  # latency-model key (latency_model.op_key)
    flops: int
    bytes: int
    seconds: float
    peak_bytes: int
    parts: tuple = ()


@dataclass(frozen=True)
class LinkProfile:
    """Ping-pong between two ranks: one-way seconds per message size, and the fitted line."""

    ranks: tuple
    sizes: tuple
    seconds: tuple
    latency_s: float
    bandwidth_bps: float  # bits per second


@dataclass
class Profile:
    """A machine's measurements (see the module docstring)."""

    kind: str
    engine: str
    machine: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)  # model name -> list[NodeProfile]
    latency: LatencyModel = field(default_factory=lambda: LatencyModel({}))
    links: list = field(default_factory=list)
    source: str = ""  # the file it was read from, for messages
    # split kind -> what its parts cost beyond their share (latency_model.SplitOverhead; ANY_OP: all kinds)
    split_overhead: dict = field(default_factory=dict)

    # --- lookups -------------------------------------------------------------------------------------
    def measured_seconds(self, graph: Graph, index: int) -> float | None:
        """The measured whole-node seconds of node `index`, if this profile timed that very node."""
        table = self._index().get(graph.name)
        if not table:
            return None
        hit = table.get(graph.nodes[index].name)
        return hit.seconds if hit is not None and hit.flops == graph.cost(index).flops else None

    def node_seconds(self, graph: Graph, index: int) -> float:
        """Seconds of one whole node on this machine: measured when available, else predicted."""
        hit = self.measured_seconds(graph, index)
        if hit is not None:
            return hit
        return self.latency.predict(op_key(graph, index), graph.cost(index).flops, node_bytes(graph, index))

    def model_seconds(self, graph: Graph) -> float:
        """Seconds of a whole forward pass on the machine this profile measured (sum over nodes): an
        int8 node it did not time itself at that machine's int8 rate, as the planner prices it there
        (Calibration.node_seconds), so that a machine timed on an int8 model (cluster.host_speed) is
        compared with what the plans assume, not with the float32 node of the same shape."""
        seconds = [self.node_seconds(graph, i) for i in range(len(graph))]
        quantized = [i for i in range(len(graph)) if graph.nodes[i].attrs.get("quantized") and self.measured_seconds(graph, i) is None]
        if quantized:
            speedup = int8_speedup(self.kind, self.engine)
            for i in quantized:
                seconds[i] /= speedup
        return sum(seconds)

    def _index(self) -> dict:
        cached = self.__dict__.get("_index_cache")
        if cached is None or cached[0] is not self.models:
            cached = (self.models, {m: {n.name: n for n in nodes} for m, nodes in self.models.items()})
            self.__dict__["_index_cache"] = cached
        return cached[1]

    def split_overhead_for(self, kind: str) -> SplitOverhead:
        """What a part of a `kind` split costs beyond its share: the kind's fit, else the fit over all
        kinds, else nothing (a profile measured without it)."""
        return self.split_overhead.get(kind) or self.split_overhead.get(ANY_OP) or SplitOverhead()

    def split_overhead_rows(self, kind: str, graph: Graph, starts) -> dict:
        """split_overhead_for each split of `kind` starting at the nodes `starts`, keyed per split
        (latency_model.overhead_key: fc kinds over dense layers of many rows have their own fit, else the
        kind's): {figure: array over starts} for per_share, per_whole, per_step_s and per_node_s."""
        from .latency_model import overhead_key

        starts = tuple(np.asarray(starts).tolist())
        cache = self.__dict__.setdefault("_overhead_rows_cache", {})  # the planner asks per device set
        key = (str(kind), id(graph), starts, id(self.split_overhead))
        if key not in cache:
            fits = [self.split_overhead.get(overhead_key(kind, graph, int(s))) or self.split_overhead_for(kind) for s in starts]
            cache[key] = {name: np.array([getattr(f, name) for f in fits], dtype=float)
                          for name in ("per_share", "per_whole", "per_step_s", "per_node_s")}
        return cache[key]

    def link(self) -> LinkProfile | None:
        """The slowest measured link (the pessimistic figure for planning), if any."""
        return min(self.links, key=lambda l: l.bandwidth_bps, default=None)

    # --- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "kind": self.kind, "engine": self.engine,
            "machine": self.machine,
            "models": {m: [asdict(n) for n in nodes] for m, nodes in self.models.items()},
            "latency_model": self.latency.to_dict(),
            "latency_model_error": self.latency.error_report(),
            "links": [asdict(l) for l in self.links],
            **({"split_overhead": {k: v.to_dict() for k, v in self.split_overhead.items()}} if self.split_overhead else {}),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, doc: dict, source: str = "") -> "Profile":
        """Rebuild a profile from `to_dict()` data; raises PisplitError for other documents."""
        where = f"profile {source}" if source else "profile"
        if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
            raise PisplitError(f"{where}: not a pisplit profile (no \"format\": \"{PROFILE_FORMAT}\")")
        if doc.get("version") != PROFILE_VERSION:
            raise PisplitError(f"{where}: version {doc.get('version')!r} is not supported (expected {PROFILE_VERSION})")
        try:
            models = {m: [NodeProfile(**{**n, "parts": tuple(PartProfile(**p) for p in n.get("parts", ()))}) for n in nodes]
                      for m, nodes in doc.get("models", {}).items()}
            links = [LinkProfile(tuple(l["ranks"]), tuple(l["sizes"]), tuple(l["seconds"]), float(l["latency_s"]), float(l["bandwidth_bps"]))
                     for l in doc.get("links", ())]
            _check_measurements(models, links, where)
            overhead = _split_overhead(doc.get("split_overhead", {}), where)
            return cls(kind=str(doc["kind"]), engine=str(doc["engine"]), machine=dict(doc.get("machine", {})), models=models,
                       latency=LatencyModel.from_dict(doc.get("latency_model", {})), links=links, source=source,
                       split_overhead=overhead)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PisplitError(f"{where}: malformed document ({exc!r})") from None

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        """Read a profile file."""
        return cls.from_dict(read_json(path, "profile"), str(path))


def _split_overhead(doc, where: str) -> dict:
    """A profile's split_overhead object: split kind -> latency_model.SplitOverhead."""
    if not isinstance(doc, dict):
        raise PisplitError(f"{where}: split_overhead must be an object of split kinds, not {type(doc).__name__}")
    out = {}
    for kind, figures in doc.items():
        if not isinstance(figures, dict):
            raise PisplitError(f"{where}: split_overhead.{kind} must be an object of figures, not {json.dumps(figures)[:40]}")
        try:
            out[str(kind)] = SplitOverhead.from_dict(figures)
        except ValueError as exc:
            raise PisplitError(f"{where}: split_overhead.{kind}: {exc}") from None
    return out


def _check_measurements(models: dict, links: list, where: str) -> None:
    """Field types of a profile read from a file (the dataclasses take anything): names are strings,
    counts non-negative integers, times and rates finite non-negative numbers (bandwidth positive)."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def check(ok: bool, field_name: str, value) -> None:
        if not ok:
            raise PisplitError(f"{where}: {field_name} {json.dumps(value, default=repr)[:60]} is not valid")

    for model, nodes in models.items():
        for n in nodes:
            check(isinstance(n.name, str) and isinstance(n.op, str), f"models.{model} node name/op", [n.name, n.op])
            for f in ("flops", "bytes", "peak_bytes"):
                check(count(getattr(n, f)), f"models.{model}.{n.name}.{f}", getattr(n, f))
            check(number(n.seconds), f"models.{model}.{n.name}.seconds", n.seconds)
            for p in n.parts:
                check(isinstance(p.kind, str) and number(p.fraction) and count(p.flops) and count(p.bytes) and number(p.seconds),
                      f"models.{model}.{n.name}.parts", asdict(p))
    for i, l in enumerate(links):
        check(all(count(r) for r in l.ranks) and all(count(b) for b in l.sizes) and all(number(t) for t in l.seconds)
              and len(l.sizes) == len(l.seconds), f"links[{i}] ranks/sizes/seconds", [l.ranks, l.sizes, l.seconds])
        check(number(l.latency_s) and number(l.bandwidth_bps) and l.bandwidth_bps > 0, f"links[{i}] latency/bandwidth",
              [l.latency_s, l.bandwidth_bps])


def samples_of(profile: Profile) -> list[Sample]:
    """Every whole-node and part measurement of a profile as latency-model samples."""
    out = []
    for nodes in profile.models.values():
        for n in nodes:
            out.append(Sample(n.op, n.flops, n.bytes, n.seconds))
            out += [Sample(n.op, p.flops, p.bytes, p.seconds) for p in n.parts]
    return out


# --- device kinds ---------------------------------------------------------------------------------

def pi_kind(model_string: str) -> str | None:
    """'rpi3' / 'rpi4' / 'rpi5' from a /proc/device-tree/model string, None for anything else."""
    for number in ("3", "4", "5"):
        if model_string.startswith(f"Raspberry Pi {number}"):
            return f"rpi{number}"
    return None


def fit_link(ranks: tuple, sizes: list[int], seconds: list[float]) -> LinkProfile:
    """Fit one-way seconds = latency + bytes * 8 / bandwidth on ping-pong results (least squares, >= 0)."""
    x = np.array([[1.0, float(s)] for s in sizes])
    y = np.array(seconds, dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    latency, per_byte = float(coef[0]), float(coef[1])
    if per_byte <= 0:  # all sizes took the same time: no bandwidth limit seen; use the largest message
        per_byte = max(y[-1] - max(latency, 0.0), 1e-12) / max(sizes[-1], 1)
    if latency < 0:
        latency = 0.0
    return LinkProfile(tuple(ranks), tuple(int(s) for s in sizes), tuple(float(v) for v in seconds), latency, 8.0 / per_byte)


# --- calibration: from this machine's measurements to a device's seconds ---------------------------

def reference_profile_path(engine: str) -> Path:
    """The shipped profile of the reference machine for `engine` (partitioners/devices/host-<engine>.json)."""
    from .devices import DEVICE_PROFILE_DIR

    return DEVICE_PROFILE_DIR / f"host-{engine}.json"


_SHIPPED: dict = {}  # path -> ((mtime_ns, size), Profile): each shipped reference read and checked once a process


def _load_shipped(path: Path) -> Profile:
    """A shipped reference profile, read and checked once per process while the file is unchanged (every
    plan calibrates against it); each caller gets its own containers, so one that adds a model or refits
    does not change what the next caller reads."""
    stat = path.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    hit = _SHIPPED.get(path)
    if hit is None or hit[0] != key:
        hit = _SHIPPED[path] = (key, Profile.load(path))
    p = hit[1]
    return replace(p, machine=dict(p.machine), models={m: list(nodes) for m, nodes in p.models.items()},
                   links=list(p.links), split_overhead=dict(p.split_overhead))


class Calibration:
    """Seconds on each device kind: a base profile's seconds times the kind's scale factor.

    The base is a measured profile of a machine that is not a Pi (given, else the shipped reference
    for the engine). A shipped device profile says what the device takes for a reference model (rpi3:
    AlexNet 220 ms) or how much faster it is than another kind (rpi4 = rpi3 x 1.64); the scale is then
    device seconds / base seconds for the same model. On an engine the kind's profile fits per op class
    (compute.op_classes.<engine>: litert on rpi3/rpi4, so rpi5 too), each node is priced at its class's
    scale instead, when the base is the shipped profile the classes were fitted on (class_scales). A
    profile measured on the Pi itself replaces all that: its own seconds, scale 1.
    """

    def __init__(self, engine: str = "numpy", profiles: list[Profile] = ()):
        self.engine = engine
        self.notes: list[str] = []
        self.measured: dict[str, Profile] = {}
        base = None
        for p in profiles:
            if p.engine != engine:
                self.notes.append(f"profile {p.source or p.kind} was measured with engine {p.engine!r}, the plan runs {engine!r}")
            if p.kind == "host":
                base = p
            else:
                self.measured[p.kind] = p
        self.base = base or self._shipped_base()
        self._cache: dict[str, tuple[Profile, float]] = {}

    def _shipped_base(self) -> Profile:
        path = reference_profile_path(self.engine)
        if not path.exists():
            fallback = reference_profile_path("numpy")
            self.notes.append(f"no shipped {self.engine} profile: node proportions come from the numpy reference "
                              f"(run `pisplit profile --engine {self.engine}` on the devices for better predictions)")
            path = fallback
        return _load_shipped(path)

    def resolve(self, kind: str) -> tuple[Profile, float]:
        """(profile, scale): a node on `kind` takes self.node_seconds(kind, ...) * scale seconds (the
        scale of the reference model; node_seconds carries a per-op-class correction to it where the
        kind's profile fits one, class_scales)."""
        if kind in self._cache:
            return self._cache[kind]
        if kind in self.measured:
            result = (self.measured[kind], 1.0)
        elif kind == "host":
            result = (self.base, 1.0)
        else:
            from layers.zoo import zoo_model

            from .devices import device_profile

            compute = device_profile(kind).compute
            if "relative_to" in compute:
                profile, scale = self.resolve(str(compute["relative_to"]))
                result = (profile, scale / float(compute["speedup"]))
            else:
                reference = zoo_model(str(compute["reference_model"]))
                base_seconds = self.base.model_seconds(reference)
                if base_seconds <= 0:
                    raise PisplitError(f"profile {self.base.source}: cannot predict {reference.name}, so cannot calibrate {kind}")
                result = (self.base, float(compute["reference_seconds"]) / base_seconds)
        self._cache[kind] = result
        return result

    def node_seconds(self, kind: str, graph: Graph, index: int) -> float:
        """Seconds of node `index` on one device of `kind`, before the kind's scale: the profile's
        seconds, and for an int8 node (attrs["quantized"]) not measured itself, those of the float node
        of its shape divided by the kind's int8 speedup for this engine (int8_speedup)."""
        profile, scale = self.resolve(kind)
        seconds = profile.node_seconds(graph, index)
        if graph.nodes[index].attrs.get("quantized") and profile.measured_seconds(graph, index) is None:
            seconds /= int8_speedup(kind, self.engine)
        classes = self.class_scales(kind)
        if classes is not None:
            seconds *= classes[op_class(graph, index)] / scale
        return seconds

    def class_scales(self, kind: str) -> dict | None:
        """Per op class (OP_CLASSES) the kind's device seconds per base-profile second for this engine, when
        its device profile fits them (compute.op_classes.<engine>, see op_class_scales) and it is priced
        from the shipped reference profile they were fitted on; None otherwise (one scale for every node:
        a kind measured itself or relative to one that was, a user-measured host base, a profile giving
        only reference_model)."""
        key = ("classes", kind)
        if key not in self._cache:
            found = None
            # the kind priced from the shipped base (not from a Pi's own profile, also by way of relative_to)
            if kind != "host" and self.resolve(kind)[0] is self.base and self.base.source == str(reference_profile_path(self.engine)):
                found = op_class_scales(kind, self.engine)
            self._cache[key] = found
        return self._cache[key]


def int8_speedup(kind: str, engine: str = "numpy") -> float:
    """How many times faster an int8 layer runs than the float32 layer of the same shape on `kind` with
    `engine`: the device profile's compute.int8.<engine> figure (cited there: ncnn's published Pi int8 /
    float32 benchmark for litert, pisplit's own kernels measured for numpy), following 'relative_to'
    to another kind's; 1.0 when a profile gives none."""
    from .devices import device_profile

    seen = set()
    while kind not in seen:
        seen.add(kind)
        block = (device_profile(kind).compute.get("int8") or {}).get(engine)
        if not block:
            return 1.0
        if "relative_to" in block:
            kind = str(block["relative_to"])
            continue
        speedup = float(block.get("speedup", 1.0))
        if not speedup > 0:
            raise PisplitError(f"device profile {kind}: int8 speedup for engine {engine} must be positive, is {speedup}")
        return speedup
    raise PisplitError(f"device profile {kind}: int8 'relative_to' entries form a cycle")


def int8_dilation(kind: str, engine: str = "numpy") -> float:
    """The extra time dilation an emulated `kind` applies to int8 layers, beyond its float one
    (device_slowdown): the reference host's int8 gain over the device's, int8_speedup('host') /
    int8_speedup(kind). numpy: 1 (the same kernels on both); litert: an x86 host's int8 path gains
    ~4x over float32, a Pi's 1.56x, so int8 layers run ~2.6x too fast on the host before this."""
    return int8_speedup("host", engine) / int8_speedup(kind, engine)


def int8_stage_dilation(kind: str, engine: str, graph: Graph, start: int, stop: int) -> float:
    """The extra dilation of an emulated `kind` computing nodes [start, stop): int8_dilation weighted
    by the nodes' reference seconds (1 with no int8 node, int8_dilation with only int8 nodes), so that a
    stage mixing float nodes (a float-I/O model's QUANTIZE, a dynamic-range model's float layers) with
    int8 ones is padded to the planner's price of each, not all at the int8 factor."""
    nodes = range(start, stop)
    if not any(graph.nodes[i].attrs.get("quantized") for i in nodes):
        return 1.0
    calibration = default_calibration(engine)
    host = [calibration.node_seconds("host", graph, i) for i in nodes]  # as the reference host runs them
    device = [s * (int8_dilation(kind, engine) if graph.nodes[i].attrs.get("quantized") else 1.0) for s, i in zip(host, nodes)]
    return sum(device) / sum(host) if sum(host) > 0 else int8_dilation(kind, engine)


def class_dilation(kind: str, engine: str, graph: Graph, start: int, stop: int) -> float:
    """The extra dilation of an emulated `kind` computing nodes [start, stop) for its per-op-class prices
    (Calibration.class_scales), beyond device_slowdown x int8_stage_dilation: the stage's device seconds
    with each node at its class's scale over those at the reference model's one scale. 1 where the kind
    has no class fit (numpy, user profiles); so that device_slowdown x int8_stage_dilation x this, times
    the stage's host seconds, is the planner's price of the stage (device_seconds)."""
    calibration = default_calibration(engine)
    classes = calibration.class_scales(kind)
    if classes is None or stop <= start:
        return 1.0
    _, scale = calibration.resolve(kind)
    single = [calibration.node_seconds(kind, graph, i) * scale / classes[op_class(graph, i)] for i in range(start, stop)]
    priced = [s * classes[op_class(graph, i)] / scale for s, i in zip(single, range(start, stop))]
    return sum(priced) / sum(single) if sum(single) > 0 else 1.0


_DEFAULT_CALIBRATIONS: dict[str, Calibration] = {}


def default_calibration(engine: str) -> Calibration:
    """The shipped calibration of `engine`, made once per process (int8_stage_dilation, device_seconds,
    device_slowdown share it)."""
    if engine not in _DEFAULT_CALIBRATIONS:
        _DEFAULT_CALIBRATIONS[engine] = Calibration(engine)
    return _DEFAULT_CALIBRATIONS[engine]


def device_seconds(kind: str, engine: str, graph: Graph, start: int, stop: int) -> float:
    """Seconds of nodes [start, stop) of `graph` on one device of `kind` by the shipped calibration (its
    int8 nodes at the kind's int8 rate): what an emulated device's whole-stage step lasts
    (cluster.emulation.EmulatedDevice.calibrate)."""
    calibration = default_calibration(engine)
    scale = calibration.resolve(kind)[1]
    return scale * sum(calibration.node_seconds(kind, graph, i) for i in range(start, stop))


def device_slowdown(kind: str, engine: str = "numpy") -> float:
    """Device seconds / reference-machine seconds for the same work (the emulator's time dilation)."""
    return default_calibration(engine).resolve(kind)[1]


# --- per-op-class calibration (issue 12: a Pi runs conv and depthwise layers relatively slower) ------

OP_CLASSES = ("conv", "depthwise", "fc", "matmul", "other")


def op_class(graph: Graph, index: int) -> str:
    """The calibration class of a node (its latency-model key, latency_model.op_key): 'depthwise'
    (depthwise conv), 'conv' (every other convolution, grouped included), 'fc' (a dense layer over
    one row: a classifier's, streaming its weights once), 'matmul' (a dense layer over many rows and
    batch_matmul: a transformer's matrix products, compute-bound where 'fc' is memory-bound; no CNN
    reference model has them, so the fit leaves them at the reference-model scale) or 'other'
    (pooling, elementwise, normalisation, data movement)."""
    key = op_key(graph, index)
    if key.startswith("conv2d/depthwise"):
        return "depthwise"
    if key.startswith("conv"):
        return "conv"
    if key == "dense/rows" or key == "batch_matmul":
        return "matmul"
    if key.startswith("dense"):
        return "fc"
    return "other"


def op_class_scales(kind: str, engine: str) -> dict | None:
    """The kind's fitted per-class scales for `engine` (device profile compute.op_classes.<engine>.scales:
    device seconds per second of the shipped host-<engine> profile), following compute.relative_to
    (divided by its speedup) when the kind has no block of its own; None when no kind on the way has one."""
    from .devices import device_profile

    divide, seen = 1.0, set()
    while kind not in seen:
        seen.add(kind)
        compute = device_profile(kind).compute
        block = (compute.get("op_classes") or {}).get(engine)
        if block:
            scales = block.get("scales") if isinstance(block, dict) else None
            if not isinstance(scales, dict) or set(scales) != set(OP_CLASSES):
                raise PisplitError(f"device profile {kind}: op_classes.{engine}.scales must give each of {list(OP_CLASSES)}")
            out = {}
            for c in OP_CLASSES:
                v = scales[c]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                    raise PisplitError(f"device profile {kind}: op_classes.{engine}.scales.{c} must be a positive number, is {v!r}")
                out[c] = float(v) / divide
            return out
        if "relative_to" not in compute:
            return None
        divide *= float(compute["speedup"])
        kind = str(compute["relative_to"])
    raise PisplitError(f"device profile {kind}: 'relative_to' entries form a cycle")


def class_seconds(profile: Profile, graph: Graph, int8_rate: float = 1.0) -> dict:
    """Seconds of a forward pass of `graph` on the machine `profile` measured, per op class (its
    node_seconds: measured nodes as timed, others predicted); an int8 node it did not time divided by
    `int8_rate` (a device's int8 speedup, as Calibration.node_seconds prices it)."""
    out = dict.fromkeys(OP_CLASSES, 0.0)
    for i in range(len(graph)):
        seconds = profile.node_seconds(graph, i)
        if graph.nodes[i].attrs.get("quantized") and profile.measured_seconds(graph, i) is None:
            seconds /= int8_rate
        out[op_class(graph, i)] += seconds
    return out


def fit_op_classes(rows: dict, cited: dict, prior_scale: float, prior_weight: float = 0.01,
                   weights: dict | None = None) -> tuple[dict, dict]:
    """Per-class scales s_c >= 0 with sum_c s_c * rows[m][c] ~ cited[m] for each model m: least squares
    of the log ratio predicted / cited (a relative error, so a 20 ms and a 500 ms model count alike),
    weighted per model (`weights`, default 1), plus prior_weight * (log s_c - log prior_scale)^2 per
    class, which keeps a class the models barely use near the single reference-model scale instead of
    0 or infinity. Solved over log s (positive by construction) by Gauss-Newton.
    Returns ({class: scale}, {model: (predicted, log residual)})."""
    models = list(cited)
    a = np.array([[float(rows[m][c]) for c in OP_CLASSES] for m in models])
    target = np.log(np.array([float(cited[m]) for m in models]))
    w = np.sqrt(np.array([float((weights or {}).get(m, 1.0)) for m in models]))
    u0 = math.log(prior_scale)
    u = np.full(len(OP_CLASSES), u0)
    for _ in range(100):
        s = np.exp(u)
        pred = a @ s
        residual = np.concatenate([w * (np.log(pred) - target), math.sqrt(prior_weight) * (u - u0)])
        jac = np.vstack([w[:, None] * a * s / pred[:, None], math.sqrt(prior_weight) * np.eye(len(OP_CLASSES))])
        step = np.linalg.lstsq(jac, -residual, rcond=None)[0]
        u = u + np.clip(step, -2.0, 2.0)
        if np.abs(step).max() < 1e-12:
            break
    scales = dict(zip(OP_CLASSES, np.exp(u).tolist()))
    pred = a @ np.exp(u)
    return scales, {m: (float(p), float(math.log(p / cited[m]))) for m, p in zip(models, pred)}


def refit_op_classes(kind: str, engine: str = "litert") -> dict:
    """Redo the fit a device profile records (compute.op_classes.<engine>) on the shipped host-<engine>
    profile: each listed model's graph (`graph`: a zoo name or a corpus .tflite under
    ~/.cache/pisplit-corpus) priced per class, the models marked "fit" fitted (fit_op_classes, with the
    block's prior_weight and reference_weight on the reference model), every model's prediction and
    log residual. Returns the block with new scales and figures (`python -m partitioners.profiles
    refit KIND` prints it). A model whose corpus file is missing raises PisplitError."""
    import os

    from layers import load_model

    from .devices import device_profile

    compute = device_profile(kind).compute
    if not isinstance((compute.get("op_classes") or {}).get(engine), dict):
        raise PisplitError(f"device profile {kind}: no compute.op_classes.{engine} block to refit")
    block = dict(compute["op_classes"][engine])
    base = _load_shipped(reference_profile_path(engine))
    corpus = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pisplit-corpus"
    rows = {}
    for entry in block["models"]:
        spec = str(entry["graph"])
        path = corpus / spec if spec.endswith(".tflite") else None
        if path is not None and not path.exists():
            raise PisplitError(f"refit {kind}: corpus model {path} is missing (scripts/build_corpus builds it)")
        rows[spec] = class_seconds(base, load_model(str(path) if path else spec))
    reference = str(block.get("reference_model", compute.get("reference_model", "alexnet")))  # a zoo name, its graph
    fitted = {str(e["graph"]): float(e["seconds"]) for e in block["models"] if e.get("fit", True)}
    prior = fitted[reference] / sum(rows[reference].values())  # the single scale of the reference model
    scales, _ = fit_op_classes({g: rows[g] for g in fitted}, fitted, prior, float(block.get("prior_weight", 0.01)),
                               {reference: float(block.get("reference_weight", 1.0))})
    block["scales"] = {c: round(v, 4) for c, v in scales.items()}
    models = []
    for entry in block["models"]:
        row = rows[str(entry["graph"])]
        predicted = sum(block["scales"][c] * row[c] for c in OP_CLASSES)
        models.append({**entry, "base_s": {c: round(row[c], 6) for c in OP_CLASSES},
                       "predicted_s": round(predicted, 4), "residual": round(math.log(predicted / float(entry["seconds"])), 3)})
    block["models"] = models
    # int8 models of the same table: priced at the fitted float scales and the kind's int8 rate, not fitted
    checks = []
    for entry in block.get("int8_checks", ()):
        path = corpus / str(entry["graph"])
        if not path.exists():
            raise PisplitError(f"refit {kind}: corpus model {path} is missing (scripts/build_corpus builds it)")
        row = class_seconds(base, load_model(str(path)), int8_speedup(kind, engine))
        predicted = sum(block["scales"][c] * row[c] for c in OP_CLASSES)
        checks.append({**entry, "base_s": {c: round(row[c], 6) for c in OP_CLASSES}, "predicted_s": round(predicted, 4),
                       "residual": round(math.log(predicted / float(entry["seconds"])), 3)})
    if checks:
        block["int8_checks"] = checks
    return block


if __name__ == "__main__":  # python -m partitioners.profiles refit rpi3 [litert]
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "refit":
        sys.exit("usage: python -m partitioners.profiles refit KIND [ENGINE]")
    try:
        print(json.dumps(refit_op_classes(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "litert"), indent=1))
    except PisplitError as exc:
        sys.exit(f"refit: {exc}")
