"""Plans for emulated devices (the planner, partitioners.planners), and a measured balanced pipeline.

`balanced_plan` cuts a model into one contiguous stage per device with equal measured local seconds,
whatever the planner would choose: what scripts/bench_pipeline runs to compare a real 2-rank pipeline
with one rank.
"""
from __future__ import annotations

import time

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph
from partitioners.plan import Device, Plan, Stage, StagePrediction

from .emulation import device_slowdown



def parse_devices(spec: str) -> list[tuple[str, int]]:
    """'rpi3:4,rpi4:2' -> [('rpi3', 4), ('rpi4', 2)]."""
    out = []
    for part in str(spec).split(","):
        kind, _, count = part.strip().partition(":")
        try:
            n = int(count or 1)
        except ValueError:
            n = 0
        if not kind or n < 1:
            raise PisplitError(f"--devices {spec!r}: expected KIND:COUNT[,KIND:COUNT], e.g. rpi3:4")
        out.append((kind.lower(), n))
    return out


def plan_for_devices(graph: Graph, model: str, devices: str, link_bps: float, planner: str, objective: str, engine: str) -> Plan:
    """A plan of `model` for the devices in `devices` ('rpi3:4') with the named planner."""
    from partitioners.cost import CostModel, make_cluster
    from partitioners.planners import make_plan
    from partitioners.profiles import Calibration

    cluster = make_cluster([(kind, count, None) for kind, count in parse_devices(devices)], link_bps)
    return make_plan(graph, CostModel(graph, cluster, Calibration(engine)), planner, objective, model, engine)


def single_device_plan(graph: Graph, model: str, kind: str, link_bps: float, engine: str) -> Plan:
    """The whole model on one device of `kind`."""
    # on one device every planner gives the same plan; dp is always available
    return plan_for_devices(graph, model, f"{kind}:1", link_bps, "dp", "throughput", engine)


def _local_seconds(graph: Graph) -> np.ndarray:
    """CPU seconds of each node here (second of two runs, so weights are loaded)."""
    feeds = graph.random_input(0)
    env = dict(feeds)
    seconds = np.zeros(len(graph))
    for _ in range(2):
        env = dict(feeds)
        for i, node in enumerate(graph.nodes):
            t = time.process_time()
            outs = graph.run_node(node, [env[x] for x in node.inputs])
            seconds[i] = time.process_time() - t
            env.update(zip(node.outputs, outs))
    return seconds


def balanced_plan(graph: Graph, model: str, devices: list[tuple[str, int]], link_bps: float, engine: str) -> Plan:
    """One single-rank stage per device, contiguous, with about equal measured local seconds each;
    predictions scale those seconds by each device's calibrated slowdown."""
    kinds = [k for k, n in devices for _ in range(n)]
    n = min(len(kinds), len(graph))
    kinds = kinds[:n]
    seconds = _local_seconds(graph)
    cumulative = np.cumsum(seconds)
    cuts = [0]
    for s in range(1, n):
        cut = int(np.searchsorted(cumulative, cumulative[-1] * s / n)) + 1
        cuts.append(min(max(cut, cuts[-1] + 1), len(graph) - (n - s)))
    cuts.append(len(graph))
    stages = []
    periods = []
    latency = 0.0
    for i in range(n):
        a, b = cuts[i], cuts[i + 1]
        slow = device_slowdown(kinds[i], engine)
        compute = float(seconds[a:b].sum()) * slow
        t_in = graph.cut_bytes(a) * 8 / link_bps if i > 0 else 0.0
        t_out = graph.cut_bytes(b) * 8 / link_bps if i < n - 1 else 0.0
        weights = sum(graph.cost(j).weight_bytes for j in range(a, b))
        work = max(graph.cost(j).input_bytes + graph.cost(j).output_bytes + graph.cost(j).work_bytes for j in range(a, b))
        stages.append(Stage(i, a, b, (i,), "single", (), graph.cut_bytes(b) if i < n - 1 else 0,
                            StagePrediction(compute, t_in + t_out, {i: weights + work})))
        periods.append(compute + t_in + t_out)
        latency += compute + t_out
    devs = tuple(Device(r, k, 1 << 30) for r, k in enumerate(kinds))
    return Plan(model, len(graph), devs, tuple(stages), planner="balanced", engine=engine, link_bandwidth_bps=link_bps,
                predicted_throughput_fps=1.0 / max(periods), predicted_latency_s=latency,
                notes=("stages balanced on this machine's measured node times",)).validate()
