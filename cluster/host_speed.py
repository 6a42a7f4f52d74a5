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
               refresh: bool = False) -> float | None:
    """This machine's seconds / the reference profile's seconds for `model` on `engine` (cached);
    None when not cached and `measure` is False. Raises PisplitError if the measurement fails.
    A cached measurement older than FRESH_S, or any with `refresh`, is taken again (when `measure`;
    without it, the cached value is returned however old).

    With `concurrency` n, n copies are timed at once (their median): emulated devices that compute
    side by side on this machine's cores slow each other (caches, memory bandwidth; VGG16 parts on
    2 cores: about a quarter), and dilation must not count that as the Pis' own slowness."""
    concurrency = max(1, min(int(concurrency), os.cpu_count() or 1))
    key = f"{fingerprint(engine)} | {model} | seed {seed} | {MEASURE}" + (f" | {concurrency} at once" if concurrency > 1 else "")
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


MEASURE = "median of 8"  # how a pass is summarised (in the cache key: entries measured otherwise are not reused)


def measure_here(model: str, seed: int, engine: str, passes: int = 8) -> dict:
    """CPU seconds of a whole-graph pass of `model` here (the median of `passes` after a warm-up
    pass that faults pages in: a rank's passes spread around it, and its dilated compute is its own
    CPU time, so the least pass made an emulated device run 5-10% slow against its calibration:
    ResNet50 0.90-0.93) and the reference profile's prediction."""
    import numpy as np

    from layers import load_model
    from layers.allocator import reuse_freed_memory
    from layers.engine import make_engine
    from partitioners.profiles import Calibration

    from cluster.runtime import settle_baseline

    reuse_freed_memory()  # as ranks run (cluster.runtime.run_plan), BLAS buffers set up first
    settle_baseline()
    graph = load_model(model, seed=seed)
    predicted = Calibration(engine).base.model_seconds(graph)
    if predicted <= 0:
        raise PisplitError(f"the reference {engine} profile cannot predict {graph.name}")
    runner = make_engine(graph, engine)
    feeds = graph.random_input(0)
    seconds = []
    for _ in range(passes + 1):
        t = time.process_time()
        runner.run(feeds)
        seconds.append(time.process_time() - t)
    measured = float(np.median(seconds[1:]))
    return {"model": graph.name, "engine": engine, "measured_s": measured, "least_s": float(np.min(seconds[1:])),
            "predicted_s": predicted, "speed": measured / predicted}


if __name__ == "__main__":
    try:
        print(json.dumps(measure_here(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
    except PisplitError as exc:
        print(f"pisplit: error: {exc}", file=sys.stderr)
        sys.exit(1)
