"""How fast this machine runs a model compared with the reference profile that time dilation assumes.

An emulated device pads each compute step to `cpu_seconds x slowdown`, where slowdown = device time /
reference-machine time (partitioners.profiles.device_slowdown, from the shipped `host-<engine>`
profile). On a machine slower than that reference, every emulated device came out slower than its
calibration (VGG16 on one emulated Pi 3B+: 17-22% on a second 2-core machine). So an emulation first
measures this machine: whole-graph passes of the plan's model on one thread (as a rank runs it), CPU
seconds, against the reference profile's prediction for the same model. Dilation then uses
slowdown / speed, where speed = measured / predicted (> 1: this machine is slower).

A measurement is reused for an hour (FRESH_S), then taken again: the same fingerprint can be another
physical machine (a cloud VM, a CI runner) or this one under other neighbours, and an emulation trusting a
calibration from elsewhere ran every device 20-27% fast (one emulated Pi 3B+ at x0.73-0.82 of its
calibration, on a CI machine). `pisplit emulate --recalibrate` measures again now.

The measurement runs in a subprocess of its own (one model per process: after another model in the
same process nodes ran up to 30% slow, and the caller's BLAS threads are not the ranks'), and is cached
per machine (CPU model, cores, architecture), engine, library versions and model, in
$XDG_CACHE_HOME/pisplit/host-speed.json.

Per stage (`nodes`=(start, stop)): the same measurement on nodes [start, stop) alone, against the reference
profile's price of those nodes. An x86 host's int8 kernels gain over float32 unevenly across layers
(int8 MobileNetV2 on litert: this machine at 3.7x the reference price on its first 31 layers, 2.4x on the
next 32, 3.2x on the whole), while a Pi's int8 rate is one cited figure for every layer; dilating each
stage by the whole model's speed padded the first stage of a 2-stage plan past its plan and the second
short of it. An emulated int8 stage therefore dilates by its own nodes' speed (cluster.runtime, from this
cache; `pisplit emulate` measures it before launching, stage_speeds).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from layers.errors import PisplitError


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pisplit" / "host-speed.json"


def fingerprint(engine: str) -> str:
    """This machine and software as far as speed goes: CPU model, cores, architecture, numpy (and
    LiteRT for the litert engine) versions."""
    import numpy as np

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith(("model name", "cpu model"))), "")
    except OSError:
        pass
    parts = [cpu or platform.processor() or "cpu", str(os.cpu_count()), platform.machine(), f"numpy {np.__version__}", engine]
    if engine == "litert":
        try:
            from importlib.metadata import version

            parts.append(f"ai-edge-litert {version('ai-edge-litert')}")
        except Exception:  # the version is a cache key, never a reason to fail
            pass
    return " | ".join(parts)


def reference_digest(engine: str) -> str:
    """A digest of the shipped reference profile speeds are measured against: a speed is measured / that
    profile's prediction, so one taken before the profile changed (ViT-B/16's nodes measured into it:
    its prediction went from 1.39 s to 0.46 s) is not reused after."""
    import hashlib

    from partitioners.profiles import reference_profile_path

    path = reference_profile_path(engine)
    if not path.exists():
        path = reference_profile_path("numpy")  # what Calibration falls back to
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "none"


def _read_cache() -> dict:
    try:
        doc = json.loads(cache_path().read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(doc: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: the next emulation measures again


FRESH_S = 3600.0  # how long a measurement is reused before it is taken again


def host_speed(model: str, seed: int, engine: str, measure: bool = True, concurrency: int = 1,
               refresh: bool = False, nodes: tuple | None = None, pace: float | None = None) -> float | None:
    """This machine's seconds / the reference profile's seconds for `model` on `engine` (cached);
    None when not cached and `measure` is False. Raises PisplitError if the measurement fails.
    A cached measurement older than FRESH_S, or any with `refresh`, is taken again (when `measure`;
    without it, the cached value is returned however old).

    With `concurrency` n, n copies are timed at once (their median): emulated devices that compute
    side by side on this machine's cores slow each other (caches, memory bandwidth; VGG16 parts on
    2 cores: about a quarter), and dilation must not count that as the Pis' own slowness.

    With `nodes` (start, stop): the speed on those nodes alone (a pipeline stage), cached apart.

    With `pace` (the emulated device's slowdown, emulation_pace): passes timed as an emulated device
    runs them, each followed by the idle time its dilation pads it with (measure_here), cached apart."""
    concurrency = max(1, min(int(concurrency), os.cpu_count() or 1))
    key = f"{fingerprint(engine)} | {model} | seed {seed} | {MEASURE} | reference {reference_digest(engine)}"
    key += f" | {concurrency} at once" if concurrency > 1 else ""
    if nodes is not None:
        key += f" | nodes {int(nodes[0])}:{int(nodes[1])}"
    if pace:
        key += f" | paced {float(pace):.4g} {PACED}"
    cache = _read_cache()
    entry = cache.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speed"), (int, float)) and entry["speed"] > 0:
        age = time.time() - entry["measured_at"] if isinstance(entry.get("measured_at"), (int, float)) else None
        if not measure or (not refresh and age is not None and 0 <= age <= FRESH_S):
            return float(entry["speed"])
    if not measure:
        return None
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "cluster.host_speed", model, str(seed), engine]
    argv += [f"{int(nodes[0])}:{int(nodes[1])}"] if nodes is not None else []
    argv += [f"pace={float(pace)!r}"] if pace else []
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(concurrency)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            lines = err.strip().splitlines()
            raise PisplitError(f"measuring this machine's speed on {model}: {lines[-1] if lines else f'exit {proc.returncode}'}")
        results.append(json.loads(out))
    result = sorted(results, key=lambda r: r["speed"])[len(results) // 2]
    result["concurrency"] = concurrency
    result["measured_at"] = time.time()
    cache = _read_cache()  # another emulation may have written meanwhile
    cache[key] = result
    _write_cache(cache)
    return float(result["speed"])


MEASURE = "median of 8 and 0.25 s"  # how a pass is summarised (in the cache key: entries measured otherwise are not reused)
MIN_MEASURE_S = 0.25  # passes after the first 8 until their CPU seconds add up to this (at most MAX_PASSES)
MAX_PASSES = 400
PACED = "median, gaps to 0.1 s, 0.5 s, frames, below 10 ms"  # how paced passes are timed (in the cache key of a paced measurement)
MAX_GAP_S = 0.1  # a paced pass's idle time at most: a few ms already leave the caches cold, and big models' passes hardly notice
PACED_MEASURE_S = 0.5  # paced passes until their CPU seconds add up to this (at most PACED_MAX_PASSES)
PACED_MAX_PASSES = 2000
PACED_BELOW_S = 0.01  # passes are paced only if a warm one takes less: bigger models are timed back to back, as before


def emulation_pace(plan, engine: str) -> float | None:
    """The slowdown a one-device plan's emulated device dilates by before this machine's speed (its
    kind's device_slowdown / its speed), which host_speed paces its passes at; None for a plan of more
    ranks (their host speed is measured unpaced, as before)."""
    if plan is None or getattr(plan, "n_ranks", 0) != 1:
        return None
    from partitioners import profiles

    device = plan.devices[0]
    return float(profiles.device_slowdown(device.kind, engine)) / float(device.speed or 1.0)


def stage_speeds(plan, engine: str, concurrency: int = 1, refresh: bool = False, measure: bool = True) -> dict:
    """{(start, stop): speed} of the plan's stages that hold int8 nodes and run on one rank each
    (single, data-parallel: a split stage's ranks run parts of layers, not the stage's nodes), measured
    (host_speed with `nodes`) or, without `measure`, as cached."""
    from layers import load_model
    from partitioners.vocabulary import StageMode

    graph = load_model(plan.model, seed=plan.model_seed)
    out = {}
    for stage in plan.stages:
        a, b = stage.node_start, stage.node_stop
        if stage.mode == StageMode.SPLIT or not any(graph.nodes[i].attrs.get("quantized") for i in range(a, b)):
            continue
        speed = host_speed(plan.model, plan.model_seed, engine, measure=measure, concurrency=concurrency, refresh=refresh, nodes=(a, b),
                           pace=emulation_pace(plan, engine))
        if speed:
            out[(a, b)] = speed
    return out


def measure_here(model: str, seed: int, engine: str, passes: int = 8, nodes: tuple | None = None,
                 pace: float | None = None) -> dict:
    """CPU seconds of a whole-graph pass of `model` here (the median of `passes` after a warm-up
    pass that faults pages in: a rank's passes spread around it, and its dilated compute is its own
    CPU time, so the least pass made an emulated device run 5-10% slow against its calibration:
    ResNet50 0.90-0.93) and the reference profile's prediction.

    With `pace` (the emulated device's slowdown before this machine's speed) and a pass under
    PACED_BELOW_S: each pass is followed by
    the idle time an emulated device pads it with, pass x (pace / speed - 1) (at most MAX_GAP_S), as a
    rank runs its frames: a pass after idle time finds cold caches (other processes ran meanwhile) and
    costs more CPU. LeNet-5's 0.29 ms passes took 0.46 ms each after 2 ms of sleep and 0.69 ms after
    10 ms on a loaded 2-core machine, so one emulated Pi 3B+, timed against back-to-back passes, ran
    LeNet-5 at x0.65-0.89 of its calibration; a big model's passes hardly change."""
    import numpy as np

    from layers import load_model
    from layers.allocator import reuse_freed_memory
    from layers.engine import make_engine
    from partitioners.profiles import Calibration

    from cluster.runtime import settle_baseline

    reuse_freed_memory()  # as ranks run (cluster.runtime.run_plan), BLAS buffers set up first
    settle_baseline()
    graph = load_model(model, seed=seed)
    if nodes is None:
        predicted = Calibration(engine).base.model_seconds(graph)
    else:
        from cluster.runtime import shard_graph

        start, stop = int(nodes[0]), int(nodes[1])
        if not 0 <= start < stop <= len(graph):
            raise PisplitError(f"nodes {start}:{stop}: not a range of {graph.name}'s {len(graph)} nodes")
        calibration = Calibration(engine)  # the reference host's price of each node, int8 ones at its int8 rate
        predicted = sum(calibration.node_seconds("host", graph, i) for i in range(start, stop))
        graph = shard_graph(graph, start, stop)
    if predicted <= 0:
        raise PisplitError(f"the reference {engine} profile cannot predict {graph.name}")
    runner = make_engine(graph, engine)
    feeds = graph.random_input(0)
    seconds = []
    if pace:
        frame = None
        if nodes is None:  # the whole model: each pass on a new frame, made as rank 0 makes it (cluster.runtime)
            from cluster.runtime import synthetic_frame

            buffers = {t: np.empty(shape, np.float32) for t, shape in graph.inputs.items()}
            frame = lambda i: synthetic_frame(graph, 0, i, buffers)  # noqa: E731
        paced = _measure_paced(runner, feeds, predicted, float(pace), passes, frame)
        if paced is not None:
            return paced | {"model": graph.name, "engine": engine}
    # at least `passes`, and for a small model as many more as make MIN_MEASURE_S: eight of LeNet-5's
    # 0.3 ms passes took 2.4 ms, and one preemption by another process (its caches flushed) moved their
    # median 2.4x on a loaded machine (speed 4.6 for 1.7), so one emulated Pi ran LeNet-5 at twice its calibration
    while len(seconds) < passes + 1 or (sum(seconds[1:]) < MIN_MEASURE_S and len(seconds) < MAX_PASSES):
        t = time.process_time()
        runner.run(feeds)
        seconds.append(time.process_time() - t)
    measured = float(np.median(seconds[1:]))
    return {"model": graph.name, "engine": engine, "measured_s": measured, "least_s": float(np.min(seconds[1:])),
            "predicted_s": predicted, "speed": measured / predicted}


def _measure_paced(runner, feeds, predicted: float, pace: float, passes: int, frame=None) -> dict | None:
    """measure_here with `pace`: three back-to-back passes (the first faults pages in) estimate the
    speed, then at least `passes` more (and as many as make PACED_MEASURE_S of CPU time, at most
    PACED_MAX_PASSES) each followed by pass x (pace / speed - 1) of sleep, the speed re-estimated
    from the paced passes as they come; their median is the measurement. (Their mean would be what an
    emulated device's frames add up to, but at load 5-6 the measurement's outliers were not the
    rank's: LeNet-5's paced means of 0.40, 0.46 and 0.55 ms against medians of 0.39, 0.45 and 0.47
    while its rank's steps cost 0.40-0.41 ms, and one AlexNet pass of 183 ms among eleven of 31
    read a mean of 44 ms.)
    `frame(i)`, if given, makes pass i's input after its sleep, as rank 0 makes each frame before
    computing it (the rank's own work between steps warms what a pure sleep leaves cold).
    None when a warm pass takes PACED_BELOW_S or more: a big model's passes were timed ~5% below their
    back-to-back time after 0.1 s sleeps (VGG16 375 against 393 ms, ResNet50 117 against 124), and in one
    side-by-side run at load 4.5 one emulated Pi 3B+ ran them at x0.92-0.96 of their calibration against
    x1.01-1.04 timed back to back (within this machine's noise, but their measurement is kept as it was),
    while cold caches cost them well under 1%."""
    import numpy as np

    warm = []
    for _ in range(3):
        t = time.process_time()
        runner.run(feeds)
        warm.append(time.process_time() - t)
    typical = float(np.median(warm[1:]))
    if typical >= PACED_BELOW_S:
        return None
    paced = []
    while len(paced) < passes or (sum(paced) < PACED_MEASURE_S and len(paced) < PACED_MAX_PASSES):
        speed = typical / predicted
        time.sleep(min(MAX_GAP_S, max(0.0, typical * (pace / speed - 1.0))))
        if frame is not None:
            feeds = frame(len(paced))
        t = time.process_time()
        runner.run(feeds)
        paced.append(time.process_time() - t)
        typical = float(np.median(paced))
    return {"measured_s": typical, "mean_s": float(np.mean(paced)), "least_s": float(np.min(paced)), "warm_s": float(np.median(warm[1:])),
            "predicted_s": predicted, "speed": typical / predicted, "pace": pace, "passes": len(paced)}


if __name__ == "__main__":
    try:
        extra = sys.argv[4:]
        spans = [a for a in extra if not a.startswith("pace=")]
        paces = [float(a.split("=", 1)[1]) for a in extra if a.startswith("pace=")]
        span = tuple(int(v) for v in spans[0].split(":")) if spans else None
        print(json.dumps(measure_here(sys.argv[1], int(sys.argv[2]), sys.argv[3], nodes=span, pace=paces[0] if paces else None)))
    except PisplitError as exc:
        print(f"pisplit: error: {exc}", file=sys.stderr)
        sys.exit(1)
