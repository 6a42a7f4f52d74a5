"""Profiles: what one machine measured (per node, per part, links) and how to read and measure them.

A profile is a JSON document (format "pisplit-profile") written by `pisplit profile`:

- machine: kind ('rpi3', 'rpi4', 'rpi5' when it runs on a Pi, else 'host'), cores, memory, numpy/BLAS
  build, LiteRT build;
- engine: the engine the nodes were timed with (plans must be costed with the engine that runs them);
- models: per model, per node, the warm median seconds of the whole node and of parts of it (each
  applicable split kind at several fractions), with FLOPs, bytes moved and peak memory;
- latency_model: per op kind regression fitted on those measurements (see latency_model), with its
  fit error;
- links: ping-pong results between ranks when measured under mpirun (latency and bandwidth).

The cost model reads a node's seconds from the profile when it was measured, else predicts them.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from layers.allocator import reuse_freed_memory
from layers.engine import make_engine
from layers.errors import PisplitError
from layers.graph import Graph
from layers.jsonfile import read_json

from .latency_model import LatencyModel, Sample, node_bytes, op_key

log = logging.getLogger(__name__)

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
        """Seconds of a whole forward pass (sum over nodes)."""
        return sum(self.node_seconds(graph, i) for i in range(len(graph)))

    def _index(self) -> dict:
        cached = self.__dict__.get("_index_cache")
        if cached is None or cached[0] is not self.models:
            cached = (self.models, {m: {n.name: n for n in nodes} for m, nodes in self.models.items()})
            self.__dict__["_index_cache"] = cached
        return cached[1]

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
            raise PisplitError(f"{where}: version {doc.get('version')} is not supported (expected {PROFILE_VERSION})")
        try:
            models = {m: [NodeProfile(**{**n, "parts": tuple(PartProfile(**p) for p in n.get("parts", ()))}) for n in nodes]
                      for m, nodes in doc.get("models", {}).items()}
            links = [LinkProfile(tuple(l["ranks"]), tuple(l["sizes"]), tuple(l["seconds"]), float(l["latency_s"]), float(l["bandwidth_bps"]))
                     for l in doc.get("links", ())]
            return cls(kind=str(doc["kind"]), engine=str(doc["engine"]), machine=dict(doc.get("machine", {})), models=models,
                       latency=LatencyModel.from_dict(doc.get("latency_model", {})), links=links, source=source)
        except (KeyError, TypeError, ValueError) as exc:
            raise PisplitError(f"{where}: malformed document ({exc!r})") from None

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        """Read a profile file."""
        return cls.from_dict(read_json(path, "profile"), str(path))


def samples_of(profile: Profile) -> list[Sample]:
    """Every whole-node and part measurement of a profile as latency-model samples."""
    out = []
    for nodes in profile.models.values():
        for n in nodes:
            out.append(Sample(n.op, n.flops, n.bytes, n.seconds))
            out += [Sample(n.op, p.flops, p.bytes, p.seconds) for p in n.parts]
    return out


# --- this machine ----------------------------------------------------------------------------------

def pi_kind(model_string: str) -> str | None:
    """'rpi3' / 'rpi4' / 'rpi5' from a /proc/device-tree/model string, None for anything else."""
    for number in ("3", "4", "5"):
        if model_string.startswith(f"Raspberry Pi {number}"):
            return f"rpi{number}"
    return None


def machine_info() -> dict:
    """Cores, memory, CPU, Pi model string, numpy/BLAS and LiteRT builds of this machine."""
    info: dict = {"hostname": platform.node(), "machine": platform.machine(), "system": platform.system(),
                  "python": platform.python_version(), "cores": os.cpu_count() or 1, "numpy": np.__version__}
    try:
        info["model"] = Path("/proc/device-tree/model").read_text().rstrip("\0\n")
    except OSError:
        info["model"] = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        config = np.show_config(mode="dicts")  # numpy >= 1.25; reads the build, loads no thread pools
        blas = config.get("Build Dependencies", {}).get("blas", {})
        info["blas"] = {"name": blas.get("name"), "version": blas.get("version"), "configuration": blas.get("openblas configuration")}
        info["simd"] = config.get("SIMD Extensions", {}).get("found", [])
    except (TypeError, AttributeError):
        info["blas"] = {}
    info["litert"] = litert_info()
    info["thread_settings"] = {v: os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if v in os.environ}
    return info


def litert_info() -> dict:
    """Which LiteRT (or tflite-runtime) build is installed, without loading it."""
    from importlib import metadata

    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            return {"package": dist, "version": metadata.version(dist)}
        except metadata.PackageNotFoundError:
            continue
    return {"package": None, "version": None}


# --- measuring nodes -------------------------------------------------------------------------------

def node_graph(graph: Graph, index: int) -> Graph:
    """A one-node Graph of node `index` that shares the model's weights (what an engine times)."""
    node = graph.nodes[index]
    inputs = {t: graph.shapes[t] for t in dict.fromkeys(node.inputs)}
    return Graph(f"{graph.name}.{node.name}", inputs, [node], list(node.outputs), graph.weights)


def time_engine(engine, feeds: dict, repeat: int) -> float:
    """Warm median seconds of `engine.run(feeds)` (one untimed run first)."""
    engine.run(feeds)
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        engine.run(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes_of_run(engine, feeds: dict, resident_bytes: int) -> int:
    """Peak memory of one run: resident bytes (weights, inputs) + what the run allocated at most.

    numpy reports its allocations to tracemalloc; an engine whose buffers live outside Python
    (LiteRT) shows only its Python-side allocations, so the static estimate is the floor.
    """
    tracemalloc.start()
    try:
        engine.run(feeds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return resident_bytes + peak


# A part measurer: (graph, node index, engine name, fractions, repeat) -> list[PartProfile]. The split
# kinds live in partitioners.splits; profile_graph takes the measurer so this module needs no geometry.
PartMeasurer = Callable[[Graph, int, str, tuple, int], list]


def stream_node_seconds(graph: Graph, repeat: int = 5) -> np.ndarray:
    """Warm median wall seconds of each node run by numpy in sequence, each on its predecessor's
    output, as a rank runs a stream of frames: the other nodes' weights pass through the caches in
    between. Timed alone, with its weights still cached from the previous run, a node looks faster
    than it runs in a stream (AlexNet's fc layers by 30%), and time dilation of a whole stage would
    then make an emulated device slower than its calibration."""
    for node in graph.nodes:
        graph.node_weights(node)
    feeds = graph.random_input(0)
    passes = []
    for _ in range(max(1, repeat) + 1):  # the first pass is a warm-up
        env, seconds = dict(feeds), []
        for node in graph.nodes:
            t = time.perf_counter()
            env.update(zip(node.outputs, graph.run_node(node, [env[x] for x in node.inputs])))
            seconds.append(time.perf_counter() - t)
        passes.append(seconds)
    return np.median(np.array(passes[1:]), axis=0)


def profile_graph(graph: Graph, engine: str = "numpy", repeat: int = 5, fractions: tuple = DEFAULT_FRACTIONS,
                  measure_parts: PartMeasurer | None = None, nodes: list[int] | None = None) -> list[NodeProfile]:
    """Time every node of `graph` (or `nodes`) whole and, with `measure_parts`, in parts.

    numpy whole-node times come from passes over the whole graph (stream_node_seconds); other engines
    run each node alone in an engine of its own. Parts are timed alone."""
    rng = np.random.default_rng(0)
    stream = stream_node_seconds(graph, repeat) if engine == "numpy" else None
    out = []
    for i in (range(len(graph)) if nodes is None else nodes):
        sub = node_graph(graph, i)
        feeds = {t: rng.standard_normal(s, dtype=np.float32) for t, s in sub.inputs.items()}
        for n in sub.nodes:
            sub.node_weights(n)  # materialise lazy weights outside the timed region
        try:
            runner = make_engine(sub, engine)
        except PisplitError as exc:  # e.g. an op the engine has no kernel for: the latency model predicts it
            log.warning("not profiled: %s", exc)
            continue
        seconds = float(stream[i]) if stream is not None else time_engine(runner, feeds, repeat)
        cost = graph.cost(i)
        static_peak = cost.peak_bytes
        measured_peak = peak_bytes_of_run(runner, feeds, cost.weight_bytes + cost.input_bytes)
        parts = tuple(measure_parts(graph, i, engine, fractions, repeat)) if measure_parts else ()
        out.append(NodeProfile(graph.nodes[i].name, op_key(graph, i), cost.flops, node_bytes(graph, i), seconds,
                               max(static_peak, measured_peak), parts))
        log.debug("profiled %s/%s: %.3f ms", graph.name, graph.nodes[i].name, seconds * 1e3)
    return out


def measure_profile(graphs: list[Graph], engine: str = "numpy", repeat: int = 5, fractions: tuple = DEFAULT_FRACTIONS,
                    measure_parts: PartMeasurer | None = None, kind: str | None = None) -> Profile:
    """Measure this machine on `graphs` and fit its latency model."""
    reuse_freed_memory()  # as pipeline ranks do (cluster.runtime), so node times are theirs
    info = machine_info()
    profile = Profile(kind=kind or pi_kind(info.get("model", "")) or "host", engine=engine, machine=info)
    for g in graphs:
        profile.models[g.name] = profile_graph(g, engine, repeat, fractions, measure_parts)
    profile.latency = LatencyModel.fit(samples_of(profile))
    return profile


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


class Calibration:
    """Seconds on each device kind: a base profile's seconds times the kind's scale factor.

    The base is a measured profile of a machine that is not a Pi (given, else the shipped reference
    for the engine). A shipped device profile says what the device takes for a reference model (rpi3:
    AlexNet 220 ms) or how much faster it is than another kind (rpi4 = rpi3 x 1.64); the scale is then
    device seconds / base seconds for the same model. A profile measured on the Pi itself replaces all
    that: its own seconds, scale 1.
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
        return Profile.load(path)

    def resolve(self, kind: str) -> tuple[Profile, float]:
        """(profile, scale): a node on `kind` takes profile.node_seconds(...) * scale seconds."""
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


_DEFAULT_CALIBRATIONS: dict[str, Calibration] = {}


def device_slowdown(kind: str, engine: str = "numpy") -> float:
    """Device seconds / reference-machine seconds for the same work (the emulator's time dilation)."""
    if engine not in _DEFAULT_CALIBRATIONS:
        _DEFAULT_CALIBRATIONS[engine] = Calibration(engine)
    return _DEFAULT_CALIBRATIONS[engine].resolve(kind)[1]


def measure_split_parts(graph: Graph, index: int, engine: str, fractions: tuple, repeat: int) -> list[PartProfile]:
    """Warm median seconds of part 0 of node `index` split two ways, (f, 1 - f), for every split kind
    the planner uses and every fraction f; the part graphs come from partitioners.splits."""
    from .split_costs import PLANNER_KINDS
    from .splits import legal_kinds, split_layer

    node = graph.nodes[index]
    out = []
    rng = np.random.default_rng(index)
    for kind in legal_kinds(graph, node.name):
        if kind not in PLANNER_KINDS:
            continue
        for f in fractions:
            try:
                split = split_layer(graph, node.name, kind, (float(f), 1.0 - float(f)), followers=False)
            except PisplitError:  # too few units for two parts
                continue
            part = split.part_graph(0)
            feeds = {t: rng.standard_normal(s, dtype=np.float32) for t, s in part.inputs.items()}
            try:
                runner = make_engine(part, engine)
            except PisplitError as exc:
                log.warning("not profiled: %s", exc)
                continue
            seconds = time_engine(runner, feeds, repeat)
            cost = split.cost().parts[0]
            extent = sum(split.sizes)
            out.append(PartProfile(kind, cost.size / extent, int(cost.flops), int(cost.weight_bytes + cost.recv_bytes + cost.send_bytes), seconds))
    return out
