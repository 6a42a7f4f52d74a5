"""Plans for emulated devices (the planner, partitioners.planners), and a measured balanced pipeline.

`balanced_plan` cuts a model into one contiguous stage per device with equal measured local seconds,
whatever the planner would choose: what scripts/bench_pipeline runs to compare a real 2-rank pipeline
with one rank.
"""
from __future__ import annotations

import numpy as np

from layers.allocator import reuse_freed_memory
from layers.engine import make_engine
from layers.errors import PisplitError
from layers.graph import Graph
from partitioners.cost import shard_memory_bytes
from partitioners.plan import Device, Plan, Stage, StagePrediction

from .emulation import device_slowdown



def plan_for_devices(graph: Graph, model: str, devices: str, link_bps: float, planner: str, objective: str, engine: str,
                     codecs=None, codec_budget=None) -> Plan:
    """A plan of `model` for the devices in `devices` ('rpi3:4', 'rpi3:8@512M') with the named planner;
    with a codec table (`codecs`, partitioners.link_pricing) its links carry the codec the planner
    chose per cut (lossy ones only within `codec_budget`)."""
    from partitioners.cost import make_cluster
    from partitioners.devices import parse_devices
    from partitioners.planners import make_plan
    from partitioners.profiles import Calibration

    cluster = make_cluster(parse_devices(devices), link_bps)
    from partitioners.codec_cost import codec_cost_model  # the codecs' buffers in the memory the planner sees

    model_ = codec_cost_model(graph, cluster, Calibration(engine), codecs=codecs, codec_budget=codec_budget)
    return make_plan(graph, model_, planner, objective, model, engine)


def single_device_plan(graph: Graph, model: str, kind: str, link_bps: float, engine: str) -> Plan:
    """The whole model on one device of `kind`."""
    # on one device every planner gives the same plan; dp is always available
    return plan_for_devices(graph, model, f"{kind}:1", link_bps, "dp", "throughput", engine)


def local_node_seconds(graph: Graph, engine: str, repeat: int = 3) -> np.ndarray:
    """Warm median wall seconds of each node here, as a rank runs it with `engine`.

    Measured in this process, so its thread settings must be a rank's: one BLAS thread each when N
    ranks share this machine's cores (OPENBLAS_NUM_THREADS=1 before numpy loads; a LiteRT engine is
    built with one thread); more BLAS threads make the BLAS-heavy nodes look faster than they will
    run. numpy nodes are timed in sequence (cluster.measure.stream_node_seconds); other engines
    run each node alone (a node `engine` cannot run is timed with numpy); balanced_plan then times
    whole stages to settle the cuts.
    """
    from .measure import profile_graph, stream_node_seconds

    if engine == "numpy":
        return stream_node_seconds(graph, repeat)
    measured = {n.name: n.seconds for n in profile_graph(graph, engine, repeat, fractions=())}
    missing = [i for i, node in enumerate(graph.nodes) if node.name not in measured]
    if missing:
        measured.update({n.name: n.seconds for n in profile_graph(graph, "numpy", repeat, fractions=(), nodes=missing)})
    return np.array([measured[node.name] for node in graph.nodes])


class StageTimer:
    """Warm median seconds of nodes [a, b) run as one stage by `engine` (one thread), memoised."""

    def __init__(self, graph: Graph, engine: str, repeat: int = 3):
        self.graph, self.engine, self.repeat = graph, engine, repeat
        self.seconds: dict[tuple[int, int], float] = {}

    def __call__(self, a: int, b: int) -> float:
        if (a, b) not in self.seconds:
            from .measure import time_engine

            from .runtime import shard_graph

            shard = shard_graph(self.graph, a, b)
            self.seconds[(a, b)] = time_engine(make_engine(shard, self.engine, threads=1), shard.random_input(0), self.repeat)
        return self.seconds[(a, b)]


def settle_cuts(cuts: list[int], stage_seconds) -> list[int]:
    """Place each inner cut, left to right, where the slower of its two stages is fastest, judged by
    measured `stage_seconds(a, b)`: a bisection for the first cut at which the left stage is no
    faster than the right, then the better of it and the cut before. A sum of node times misses what
    a node costs within its stage (caches; LiteRT fuses an activation into its conv, while alone it
    pays a whole interpreter run), so cuts placed on node times can be several nodes off.

    E.g. ten 1 s nodes with 0.5 s per stage on top, cuts [0, 2, 10]: [0, 5) and [5, 10) both take
    5.5 s, [0, 4) and [4, 10) 4.5 s and 6.5 s, so the cut moves to 5.
    """
    cuts = list(cuts)
    for i in range(1, len(cuts) - 1):
        left, right = cuts[i - 1], cuts[i + 1]
        lo, hi = left + 1, right - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if stage_seconds(left, mid) >= stage_seconds(mid, right):
                hi = mid
            else:
                lo = mid + 1
        worst = lambda c: max(stage_seconds(left, c), stage_seconds(c, right))  # noqa: E731
        cuts[i] = min([c for c in (lo, lo - 1) if left < c < right], key=worst)
    return cuts


def balanced_plan(graph: Graph, model: str, devices: list[tuple[str, int]], link_bps: float, engine: str,
                  cuts: list[int] | None = None) -> Plan:
    """One single-rank stage per device, contiguous, with about equal local seconds each: cut on node
    times (local_node_seconds), then settled on measured stage times (settle_cuts), or at the given
    inner `cuts`; predictions scale each stage's measured seconds by its device's calibrated slowdown."""
    reuse_freed_memory()  # as every rank does (runtime.run_plan), so the times here are a rank's
    kinds = [k for k, n in devices for _ in range(n)]
    n = min(len(kinds), len(graph))
    kinds = kinds[:n]
    stage_seconds = StageTimer(graph, engine)
    if cuts is not None:
        cuts = [0, *cuts, len(graph)]
        if len(cuts) != n + 1 or any(a >= b for a, b in zip(cuts, cuts[1:])):
            raise PisplitError(f"balanced plan: inner cuts {cuts[1:-1]} do not make {n} stages of {len(graph)} nodes")
    else:
        cumulative = np.cumsum(local_node_seconds(graph, engine))
        cuts = [0]
        for s in range(1, n):
            target = cumulative[-1] * s / n
            cut = int(np.searchsorted(cumulative, target)) + 1
            # the node that crosses the target goes to whichever side leaves the boundary nearer to it
            if cut > 1 and target - cumulative[cut - 2] < cumulative[cut - 1] - target:
                cut -= 1
            cuts.append(min(max(cut, cuts[-1] + 1), len(graph) - (n - s)))
        cuts.append(len(graph))
        cuts = settle_cuts(cuts, stage_seconds)
    stages = []
    periods = []
    latency = 0.0
    for i in range(n):
        a, b = cuts[i], cuts[i + 1]
        slow = device_slowdown(kinds[i], engine)
        compute = stage_seconds(a, b) * slow
        t_in = graph.cut_bytes(a) * 8 / link_bps if i > 0 else 0.0
        t_out = graph.cut_bytes(b) * 8 / link_bps if i < n - 1 else 0.0
        stages.append(Stage(i, a, b, (i,), "single", (), graph.cut_bytes(b) if i < n - 1 else 0,
                            StagePrediction(compute, t_in + t_out, {i: int(shard_memory_bytes(graph, a, b))})))
        periods.append(compute + t_in + t_out)
        latency += compute + t_out
    devs = tuple(Device(r, k, 1 << 30) for r, k in enumerate(kinds))
    return Plan(model, len(graph), devs, tuple(stages), planner="balanced", engine=engine, link_bandwidth_bps=link_bps,
                predicted_throughput_fps=1.0 / max(periods), predicted_latency_s=latency,
                notes=("stages balanced on this machine's measured stage times",)).validate()
