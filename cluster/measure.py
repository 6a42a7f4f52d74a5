"""Measuring this machine: the timers, tracemalloc peaks and machine facts behind a profile
(`pisplit profile`, partitioners.profiles.Profile), the node times emulation calibrates with, and
a link codec's size, speed and error on a tensor.

The planner package (partitioners/) only reads what is measured here; it imports nothing from this
module, so planning never times, traces or inspects the machine it runs on.
"""
from __future__ import annotations

import logging
import math
import os
import platform
import statistics
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from layers.allocator import reuse_freed_memory
from layers.engine import make_engine
from layers.errors import PisplitError
from layers.graph import Graph
from partitioners.codecs import Codec, decode, encode, error_bound, parse_codec
from partitioners.latency_model import LatencyModel, SplitStepSample, fit_split_overheads, node_bytes, op_key, overhead_key
from partitioners.profiles import DEFAULT_FRACTIONS, NodeProfile, PartProfile, Profile, pi_kind, samples_of

log = logging.getLogger(__name__)


# --- this machine ----------------------------------------------------------------------------------

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


def time_engine(engine, feeds: dict, repeat: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Warm median seconds of `engine.run(feeds)` (one untimed run first), on `clock`."""
    engine.run(feeds)
    times = []
    for _ in range(max(1, repeat)):
        t0 = clock()
        engine.run(feeds)
        times.append(clock() - t0)
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
# kinds live in partitioners.splits; profile_graph takes the measurer (measure_split_parts below, or none).
PartMeasurer = Callable[[Graph, int, str, tuple, int], list]


def stream_node_seconds(graph: Graph, repeat: int = 5, clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
    """Warm median wall seconds of each node run by numpy in sequence, each on its predecessor's
    output, as a rank runs a stream of frames: the other nodes' weights pass through the caches in
    between. Timed alone, with its weights still cached from the previous run, a node looks faster
    than it runs in a stream (AlexNet's fc layers by 30%), and time dilation of a whole stage would
    then make an emulated device slower than its calibration. `clock`: time.process_time for CPU
    seconds."""
    for node in graph.nodes:
        graph.node_weights(node)
    feeds = graph.random_input(0)
    passes = []
    for _ in range(max(1, repeat) + 1):  # the first pass is a warm-up
        env, seconds = dict(feeds), []
        for node in graph.nodes:
            t = clock()
            env.update(zip(node.outputs, graph.run_node(node, [env[x] for x in node.inputs])))
            seconds.append(clock() - t)
        passes.append(seconds)
    return np.median(np.array(passes[1:]), axis=0)


def profile_graph(graph: Graph, engine: str = "numpy", repeat: int = 5, fractions: tuple = DEFAULT_FRACTIONS,
                  measure_parts: PartMeasurer | None = None, nodes: list[int] | None = None,
                  clock: Callable[[], float] | None = None) -> list[NodeProfile]:
    """Time every node of `graph` (or `nodes`) whole and, with `measure_parts`, in parts.

    numpy whole-node times come from passes over the whole graph (stream_node_seconds, on `clock`:
    wall seconds by default); other engines run each node alone in an engine of its own. Parts are
    timed alone."""
    rng = np.random.default_rng(0)
    stream = None if engine != "numpy" else stream_node_seconds(graph, repeat, clock) if clock else stream_node_seconds(graph, repeat)
    env: dict = {}  # the graph's own tensors on one input, made when a node first needs them

    def activations() -> dict:
        if not env:
            env.update(graph.random_input(0))
            for node in graph.nodes:
                env.update(zip(node.outputs, graph.run_node(node, [env[x] for x in node.inputs])))
        return env

    out = []
    for i in (range(len(graph)) if nodes is None else nodes):
        sub = node_graph(graph, i)
        feeds = {t: rng.standard_normal(s, dtype=np.float32) for t, s in sub.inputs.items()}
        for n in sub.nodes:
            sub.node_weights(n)  # materialise lazy weights outside the timed region
        try:
            runner = make_engine(sub, engine)
            try:
                runner.run(feeds)
            except PisplitError:  # random inputs outside the node's domain (RSQRT of a negative variance): the graph's own
                feeds = {t: activations()[t] for t in sub.inputs}
                runner.run(feeds)
        except PisplitError as exc:  # e.g. an op the engine has no kernel for: the latency model predicts it
            log.warning("not profiled: %s", exc)
            continue
        seconds = float(stream[i]) if stream is not None else time_engine(runner, feeds, repeat, clock or time.perf_counter)
        cost = graph.cost(i)
        static_peak = cost.peak_bytes
        measured_peak = peak_bytes_of_run(runner, feeds, cost.weight_bytes + cost.input_bytes)
        parts = tuple(measure_parts(graph, i, engine, fractions, repeat)) if measure_parts else ()
        out.append(NodeProfile(graph.nodes[i].name, op_key(graph, i), cost.flops, node_bytes(graph, i), seconds,
                               max(static_peak, measured_peak), parts))
        log.debug("profiled %s/%s: %.3f ms", graph.name, graph.nodes[i].name, seconds * 1e3)
    return out


def measure_profile(graphs: list[Graph], engine: str = "numpy", repeat: int = 5, fractions: tuple = DEFAULT_FRACTIONS,
                    measure_parts: PartMeasurer | None = None, kind: str | None = None,
                    split_parts: tuple | None = None) -> Profile:
    """Measure this machine on `graphs` and fit its latency model. With `measure_parts`, also what
    split parts cost beyond their share (measure_split_overhead, with the segments split into each of
    `split_parts` parts: default 2 and 4; () measures none)."""
    reuse_freed_memory()  # as pipeline ranks do (cluster.runtime), so node times are theirs
    info = machine_info()
    profile = Profile(kind=kind or pi_kind(info.get("model", "")) or "host", engine=engine, machine=info)
    for g in graphs:
        profile.models[g.name] = profile_graph(g, engine, repeat, fractions, measure_parts)
    profile.latency = LatencyModel.fit(samples_of(profile))
    split_parts = (2, 4) if split_parts is None else tuple(split_parts)
    if measure_parts and split_parts:
        steps = [s for g in graphs for s in measure_split_overhead(g, profile, engine, split_parts, max(1, min(repeat, 3)))]
        profile.split_overhead = fit_split_overheads(steps)
    return profile


def measure_split_parts(graph: Graph, index: int, engine: str, fractions: tuple, repeat: int) -> list[PartProfile]:
    """Warm median seconds of part 0 of node `index` split two ways, (f, 1 - f), for every split kind
    the planner uses and every fraction f; the part graphs come from partitioners.splits."""
    from partitioners.split_costs import PLANNER_KINDS
    from partitioners.splits import legal_kinds, split_layer

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


def measure_split_overhead(graph: Graph, profile: Profile, engine: str = "numpy", part_counts: tuple = (2, 4, 7, 8),
                           repeat: int = 3, kinds: tuple | None = None) -> list[SplitStepSample]:
    """What a split part costs beyond its share of the whole nodes it splits, for every planner segment
    and kind (fused spans and token spans included; with `kinds`, only those) split evenly into each of
    `part_counts` parts (never more parts than units: 7 splits a 7-row layer into the 1-row strips 8
    ranks run), as partitioners.latency_model.SplitOverhead fits it. A token span (attn-tokens
    through its whole transformer block, split_costs.token_span_kind) counts as attn-tokens, the kind
    the segment table prices it with.

    Timed as a rank runs frames, in CPU seconds (what an emulated device dilates; other processes on
    the machine do not count): for one kind and part count and one part index, pass after pass over
    the model, that part of every segment the kind splits and the whole of every other segment, so
    each part finds the caches as the other segments left them (alone it would keep its weights
    cached and look faster). The whole split nodes are timed the same way, one engine call each. Each
    sample holds a part's warm median seconds and its share of the whole split nodes' seconds as the
    planner prices it from `profile`'s latency fit (latency_model.fit_share). A sample's kind is the key
    its overhead is fitted and priced under (latency_model.overhead_key: fc kinds over dense layers of
    many rows as "<kind>/rows")."""
    from partitioners.latency_model import fit_share
    from partitioners.split_costs import TOKENS, SplitCatalogue, span_kind, token_span_kind
    from partitioners.split_sizes import proportional_sizes
    from partitioners.splits import split_segment

    catalogue = SplitCatalogue(graph)
    rng = np.random.default_rng(0)

    def runner_of(g: Graph):
        for node in g.nodes:
            g.node_weights(node)
        try:
            return make_engine(g, engine), {t: rng.standard_normal(sh, dtype=np.float32) for t, sh in g.inputs.items()}
        except PisplitError as exc:
            log.warning("not profiled: %s", exc)
            return None

    def nodes_graph(a: int, b: int) -> Graph:  # nodes [a, b) as a graph (cluster.runtime.shard_graph)
        return Graph(f"{graph.name}[{a}:{b}]", {t: graph.shapes[t] for t in graph.cut_tensors(a)}, graph.nodes[a:b],
                     graph.cut_tensors(b), graph.weights, graph.meta)

    fillers = [runner_of(nodes_graph(a, b)) for a, b in catalogue.segments]
    configs: dict = {}  # (kind, parts) -> {segment: [(start, stop, split)]}
    ranges: dict = {}  # segment -> the node ranges its kinds split
    for s, (start, _) in enumerate(catalogue.segments):
        options = [(k, k) for k in catalogue.kinds(s)] + [(span_kind(d), "fused-tiles") for d in catalogue.spans(s)]
        options += [(token_span_kind(d), TOKENS) for d in catalogue.token_spans(s)]
        for label, kind in options:
            if kinds is not None and kind not in kinds:
                continue
            costs = catalogue.kind_costs(s, label)
            for n in part_counts:
                if n > costs.extent:
                    continue
                try:
                    split = split_segment(graph, start, costs.stop, kind, proportional_sizes(costs.extent, [1.0] * n))
                except PisplitError as exc:
                    log.debug("not measured: %s", exc)
                    continue
                configs.setdefault((kind, n), {}).setdefault(s, []).append((start, costs.stop, split))
                ranges.setdefault(s, set()).add((start, costs.stop))

    def stream(steps: list) -> list:
        """Warm median CPU seconds of each (_, runner, feeds) run in order, pass after pass."""
        times: list = [[] for _ in steps]
        for _ in range(max(1, repeat) + 1):  # the first pass is a warm-up
            for k, (_, runner, feeds) in enumerate(steps):
                t = time.process_time()
                runner.run(feeds)
                times[k].append(time.process_time() - t)
        return [float(np.median(t[1:])) for t in times]

    # the whole split nodes as one engine call each (what a one-device run calls, and what this
    # machine's speed against the profile is measured on: cluster.host_speed), in model order
    whole_steps = [(r, *built) for s in sorted(ranges) for r in sorted(ranges[s]) if (built := runner_of(nodes_graph(*r)))]
    whole = {r: t for (r, _, _), t in zip(whole_steps, stream(whole_steps))}
    samples = []
    for (kind, n), by_segment in configs.items():
        for p in range(n):
            steps = []  # (sample or None, runner, feeds), in model order
            for s in range(len(catalogue.segments)):
                for start, stop, split in by_segment.get(s, ()):
                    built = runner_of(split.part_graph(p))
                    if built:
                        steps.append(((start, stop, split), *built))
                if s not in by_segment and fillers[s]:
                    steps.append((None, *fillers[s]))
            for (what, _, _), seconds in zip(steps, stream(steps)):
                if what is None:
                    continue
                start, stop, split = what
                if (start, stop) not in whole:
                    continue
                cost = split.cost().parts[p]
                share = fit_share(profile, graph, start, stop, cost.flops, cost.weight_bytes + cost.recv_bytes + cost.send_bytes)
                reference = sum(profile.node_seconds(graph, t) for t in range(start, stop))
                samples.append(SplitStepSample(overhead_key(kind, graph, start), n, stop - start, whole[(start, stop)], seconds, whole[(start, stop)] * share, reference,
                                               float(cost.weight_bytes)))
    return samples


# --- link codecs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CodecMeasurement:
    """What the cost model needs of a codec on one tensor."""

    codec: str
    raw_bytes: int  # the tensor's own bytes
    encoded_bytes: int  # the whole message, header included
    encode_s: float
    decode_s: float
    max_abs_error: float  # over finite values (0 for lossless codecs, checked bit for bit)
    rel_error: float  # max_abs_error / max |x|
    error_bound: float  # error_bound(codec, x)
    lossless: bool
    rms_error: float = 0.0  # root mean square error over finite values

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.encoded_bytes if self.encoded_bytes else math.inf


def measure_codec(codec: str | Codec, x: np.ndarray, repeat: int = 3) -> CodecMeasurement:
    """Encode and decode `x` `repeat` times: message size, the fastest encode and decode (seconds) and
    the error introduced. A lossless codec that does not return `x` bit for bit, or a lossy one past its
    error bound, is a bug and raises AssertionError."""
    codec = parse_codec(codec)
    x = np.asarray(x)
    enc, dec = math.inf, math.inf
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        msg = encode(x, codec)
        t1 = time.perf_counter()
        y = decode(msg)
        t2 = time.perf_counter()
        enc, dec = min(enc, t1 - t0), min(dec, t2 - t1)
    bound = error_bound(codec, x)
    if codec.lossless:
        assert y.dtype == x.dtype and y.shape == x.shape and y.tobytes() == np.ascontiguousarray(x).tobytes(), f"{codec.name} did not round-trip"
        err = rms = 0.0
    else:
        assert np.array_equal(np.isnan(x), np.isnan(y)) and np.array_equal(x[np.isinf(x)], y[np.isinf(x)]), f"{codec.name} changed NaN/inf"
        fin = np.isfinite(x)
        diff = np.abs(x[fin].astype(np.float64) - y[fin])
        err = float(diff.max()) if fin.any() else 0.0
        rms = float(np.sqrt(np.mean(diff * diff))) if fin.any() else 0.0
        assert err <= bound, f"{codec.name}: error {err} beyond its bound {bound}"
    peak = float(np.abs(x[np.isfinite(x)]).max()) if x.size and np.isfinite(x).any() else 0.0
    return CodecMeasurement(codec.name, x.nbytes, len(msg), enc, dec, err, err / peak if peak else 0.0, bound, codec.lossless, rms)


def photo_frames(shape: tuple[int, ...], n: int) -> tuple[list[np.ndarray], str]:
    """n real-looking input frames of `shape` (1, H, W, 3) and where they come from: scikit-learn's two
    bundled photographs (china.jpg, flower.jpg) centre-cropped, resized and ImageNet-normalised when
    scikit-learn is installed, smooth synthetic images otherwise (and for frames past the two)."""
    _, h, w, _ = shape
    try:
        from sklearn.datasets import load_sample_images
        images = list(load_sample_images().images)
        source = "scikit-learn sample images (china.jpg, flower.jpg), centre-cropped and resized"
    except ImportError:
        images, source = [], "smooth synthetic images (scikit-learn is not installed)"
    rng = np.random.default_rng(0)
    while len(images) < n:  # smooth synthetic: a few low-frequency waves per colour channel
        yy, xx = np.mgrid[0:480, 0:640] / 640.0
        img = np.stack([sum(np.sin(rng.uniform(2, 12) * xx + rng.uniform(2, 12) * yy + rng.uniform(0, 6)) for _ in range(3))
                        for _ in range(3)], -1)
        images.append(((img - img.min()) / np.ptp(img) * 255).astype(np.uint8))
    out = []
    for img in images[:n]:
        side = min(img.shape[:2])
        y0, x0 = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        rows = y0 + (np.arange(h) + 0.5) * side / h
        cols = x0 + (np.arange(w) + 0.5) * side / w
        crop = img[rows.astype(int)[:, None], cols.astype(int)[None, :]].astype(np.float32) / 255.0
        crop = (crop - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
        out.append(crop[None].astype(np.float32))
    return out, source


def _measure_in_processes(models: list[str], code: str, **values) -> dict:
    """Run `code` once per model, each in a Python process of its own (as profiles are: one model after
    another in one process ran 30% slower); `code` reads NAME and OUT and writes JSON to OUT. Returns
    {model: that JSON}."""
    import json
    import subprocess
    import sys
    import tempfile

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = {}
    with tempfile.TemporaryDirectory(prefix="pisplit-measure-") as tmp:
        for name in models:
            path = Path(tmp) / f"{len(out)}.json"
            head = "".join(f"{k} = {v!r}\n" for k, v in {**values, "NAME": name, "OUT": str(path)}.items())
            done = subprocess.run([sys.executable, "-c", head + code], env=env, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                raise PisplitError(f"measuring {name}: {lines[-1] if lines else f'exit {done.returncode}'}")
            out[name] = json.loads(path.read_text())
    return out


def refit_split_overhead(profile_path: str | Path, models: list[str], engine: str | None = None, part_counts: tuple = (2, 4, 7, 8),
                         repeat: int = 2, kinds: tuple | None = None) -> Profile:
    """Measure the split overhead of `models` on this machine against the profile at `profile_path` (a
    shipped reference, partitioners/devices/host-<engine>.json) and write it into that profile: how its
    split_overhead figures were made (`python -m cluster.measure PROFILE.json resnet50,vgg16`), with
    `engine` (default: the profile's). Each
    model in a process of its own, as profiles are (one model after another ran 30% slower). With
    `kinds`, only those kinds are measured and only their figures replaced (the attention kinds from
    ViT-B/16: `python -m cluster.measure PROFILE.json vit_b16 --kinds attn-heads,attn-tokens`); the
    fit over all kinds (ANY_OP) is then kept."""
    import json

    from partitioners.latency_model import fit_split_overheads

    path = Path(profile_path)
    profile = Profile.load(path)
    engine = engine or profile.engine  # (the profile's engine unless told)
    code = ("import json; from dataclasses import asdict; from layers import load_model; "
            "from layers.allocator import reuse_freed_memory; reuse_freed_memory(); "
            "from cluster.measure import measure_split_overhead; from partitioners.profiles import Profile; "
            "s = measure_split_overhead(load_model(NAME), Profile.load(PROFILE), ENGINE, PARTS, REPEAT, KINDS); "
            "json.dump([asdict(x) for x in s], open(OUT, 'w'))")
    found = _measure_in_processes(models, code, PROFILE=str(path), ENGINE=engine, PARTS=tuple(part_counts), REPEAT=int(repeat),
                                  KINDS=None if kinds is None else tuple(sorted({k.split("/")[0] for k in kinds})))
    samples = [SplitStepSample(**d) for docs in found.values() for d in docs]
    fits = fit_split_overheads(samples)
    if kinds is None:
        profile.split_overhead = fits
    else:
        if not samples:
            raise PisplitError(f"{', '.join(models)}: no segment splits as {', '.join(kinds)}")
        # (a kind's "<kind>/rows" figures, latency_model.overhead_key, are that kind's; "--kinds fc-output/rows"
        # measures fc-output and replaces only its figures over many rows)
        profile.split_overhead = {**profile.split_overhead, **{k: v for k, v in fits.items() if k in kinds or k.split("/")[0] in kinds}}
    doc = profile.to_dict()
    raw = json.loads(path.read_text())
    raw["split_overhead"] = doc["split_overhead"]  # only that block changes
    path.write_text(json.dumps(raw, indent=1))
    return profile


def add_models(profile_path: str | Path, models: list[str], repeat: int = 5) -> Profile:
    """Measure every node of `models` on this machine as `pisplit profile` does (whole nodes, numpy in
    whole-graph passes, other engines node by node; no parts) with the profile's engine, in CPU seconds
    (other processes on the machine do not count; the engines run one thread), and
    add them to the profile at `profile_path` (a shipped reference, partitioners/devices/host-<engine>.json),
    refitting its latency model over all its samples: how the reference profiles got measured
    transformer nodes (layer_norm, gelu, batch_matmul, softmax over tokens, dense over token rows):
    `python -m cluster.measure PROFILE.json vit_b16,kwt3 --add-models`. Each model in a process of its
    own; a model measured before is replaced."""
    import json

    path = Path(profile_path)
    profile = Profile.load(path)
    code = ("import json, time; from dataclasses import asdict; from layers import load_model; "
            "from layers.allocator import reuse_freed_memory; reuse_freed_memory(); "
            "from cluster.measure import profile_graph; "
            "g = load_model(NAME); nodes = profile_graph(g, ENGINE, REPEAT, clock=time.process_time); "
            "json.dump({'graph': g.name, 'nodes': [asdict(n) for n in nodes]}, open(OUT, 'w'))")
    found = _measure_in_processes(models, code, ENGINE=profile.engine, REPEAT=int(repeat))
    for doc in found.values():
        profile.models[doc["graph"]] = [NodeProfile(**{**n, "parts": ()}) for n in doc["nodes"]]
    profile.latency = LatencyModel.fit(samples_of(profile))
    doc = profile.to_dict()
    raw = json.loads(path.read_text())
    for key in ("models", "latency_model", "latency_model_error"):  # only those blocks change
        raw[key] = doc[key]
    path.write_text(json.dumps(raw, indent=1))
    return profile


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m cluster.measure",
                                 description="refit a shipped profile's split_overhead here (or, with --add-models, add measured models)")
    ap.add_argument("profile", metavar="PROFILE.json")
    ap.add_argument("models", metavar="MODEL[,MODEL...]")
    ap.add_argument("--kinds", help="only these split kinds' overhead figures (comma-separated); the others are kept")
    ap.add_argument("--parts", default="2,4,7,8", help="part counts the segments are split into (default 2,4,7,8: 7 splits a 7-row layer into "
                    "1-row strips, as 8 ranks do, never more parts than rows)")
    ap.add_argument("--repeat", type=int, default=None, help="timed passes (default 2 for overhead, 5 for --add-models)")
    ap.add_argument("--add-models", action="store_true", help="measure every node of the models and add them to the profile, "
                    "refitting its latency model")
    args = ap.parse_args()
    try:
        names = [m for m in args.models.split(",") if m]
        if args.add_models:
            before = {op for op in Profile.load(args.profile).latency.fits}
            added = add_models(args.profile, names, args.repeat or 5)
            for op in sorted(added.latency.fits):
                fit = added.latency.fits[op]
                print(f"{op:18s} fixed {fit.fixed_s * 1e6:8.1f} us  {fit.per_flop_s * 1e12:8.3f} ps/flop  {fit.per_byte_s * 1e12:8.3f} ps/byte "
                      f"({fit.samples} samples, median error {fit.median_error:.0%}){'' if op in before else ' new'}")
            sys.exit(0)
        refitted = refit_split_overhead(args.profile, names, part_counts=tuple(int(v) for v in args.parts.split(",")),
                                        repeat=args.repeat or 2, kinds=tuple(args.kinds.split(",")) if args.kinds else None)
    except PisplitError as exc:
        sys.exit(f"error: {exc}")
    for kind, fit in refitted.split_overhead.items():
        print(f"{kind:13s} per_share {fit.per_share:.3f} per_whole {fit.per_whole:.3f} per_step {fit.per_step_s * 1e6:.1f} us "
              f"per_node {fit.per_node_s * 1e6:.1f} us per_weight_byte {fit.per_weight_byte_s * 1e12:.1f} ps ({fit.samples} parts; sum predicted / measured {fit.sum_ratio_without:.2f} -> "
              f"{fit.sum_ratio:.2f})")
