"""Baseline planners, to hold `dp` against: paper (Hadidi et al.), memory (exo-style), single.

Each returns stages (planner_dp.StageChoice, with forced split kinds for the paper's splits); the
planners module costs them with the same cost model as dp.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layers.errors import PisplitError

from .cost import CostModel
from .infeasible import InfeasiblePlan, memory_error
from .planner_dp import StageChoice
from .vocabulary import StageMode

# The paper's observations: output splitting beats input splitting for FC layers (activation on the
# parts); channel splitting keeps a conv's filters apart, so it is the one that relieves memory.
PAPER_KIND_PREFERENCE = ("fc-output", "conv-channel", "conv-filter", "fc-input", "conv-spatial")


@dataclass(frozen=True)
class ForcedStage(StageChoice):
    """A stage whose split segments use the given kinds: ((segment index, kind), ...)."""

    forced: tuple = ()


def _unit(model: CostModel, k: int) -> tuple:
    return tuple(int(q == k) for q in range(len(model.classes)))


def _device_order(model: CostModel) -> list[int]:
    """Class index of every device, fastest class first."""
    return [c.index for c in model.classes for _ in c.ranks]


def plan_single(model: CostModel, objective: str) -> list:
    """The whole model on one device: the fastest one that holds it."""
    attempts = [model.stage_cost(0, model.n, _unit(model, k), "single") for k in range(len(model.classes))]
    fitting = [c for c in attempts if c.feasible]
    if fitting:
        best = min(fitting, key=lambda c: c.period_s)
        return [StageChoice(0, model.n, best.counts, "single")]
    raise memory_error(model, min(attempts, key=lambda c: c.short[2]))


def plan_memory(model: CostModel, objective: str) -> list:
    """exo-style: devices by memory (largest first) each take a contiguous run of nodes whose weights
    are in proportion to the device's memory; a device whose share holds no node stays idle."""
    devices = sorted(_device_order(model), key=lambda k: (-model.classes[k].memory_bytes, k))
    memory = np.array([model.classes[k].memory_bytes for k in devices], dtype=float)
    bounds = np.cumsum(memory) / memory.sum()
    weights = model.weight_bytes
    total = weights.sum()
    # a node goes to the device whose share its weights' midpoint falls in (node count for weightless graphs)
    mid = (np.cumsum(weights) - weights / 2) / total if total > 0 else (np.arange(model.n) + 0.5) / model.n
    owner = np.minimum(np.searchsorted(bounds, mid, side="left"), len(devices) - 1)
    stages = []
    start = 0
    for t in range(1, model.n + 1):
        if t == model.n or owner[t] != owner[start]:
            stages.append(StageChoice(start, t, _unit(model, devices[owner[start]]), "single"))
            start = t
    for s in stages:
        cost = model.stage_cost(s.start, s.stop, s.counts, s.mode)
        if not cost.feasible:
            raise memory_error(model, cost)
    return _respect_capacity(model, stages)


def _respect_capacity(model: CostModel, stages: list) -> list:
    used = np.zeros(len(model.classes), dtype=int)
    for s in stages:
        used += np.array(s.counts)
    if (used > np.array(model.capacity)).any():
        raise PisplitError("planner: used more devices than the cluster has")
    return stages


def linear_partition(times: np.ndarray, parts: int) -> list[int]:
    """Cut points splitting `times` into at most `parts` contiguous groups with the least largest sum.

    Example: times [4, 1, 1, 4], 2 parts -> [2] (groups [4, 1] and [1, 4], largest sum 5).
    """
    n = len(times)
    parts = max(1, min(parts, n))
    pre = np.concatenate([[0.0], np.cumsum(times)])
    best = np.full((parts + 1, n + 1), np.inf)
    cut = np.zeros((parts + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for p in range(1, parts + 1):
        for j in range(1, n + 1):
            cand = np.maximum(best[p - 1, :j], pre[j] - pre[:j])
            i = int(np.argmin(cand))
            best[p, j], cut[p, j] = cand[i], i
    p = int(np.argmin(best[1:, n])) + 1
    cuts, j = [], n
    while p > 0 and j > 0:
        j = int(cut[p, j])
        cuts.append(j)
        p -= 1
    return sorted(c for c in cuts if 0 < c < n)


def plan_paper(model: CostModel, objective: str) -> list:
    """Hadidi et al.'s procedure: (1) profile every layer's memory; (2) split the layers that do not fit
    one device (FC output splitting, conv channel splitting) over as few devices as hold them; (3) group
    the other layers into stages of equal latency, one device each; (4) check memory and repeat."""
    order = _device_order(model)
    must_split: set[int] = set()
    for _ in range(len(model.splits.segments) + 1):
        # (1)-(2): a segment needs splitting when one device of the first class cannot hold it
        for s, (start, stop) in enumerate(model.splits.segments):
            if s not in must_split and not model.stage_cost(start, stop, _unit(model, order[0]), "single").feasible:
                must_split.add(s)
        split_stages, taken = [], 0
        for s in sorted(must_split):
            stage = _paper_split(model, s, order[taken:])
            if stage is None:
                start, _ = model.splits.segments[s]
                cost = model.stage_cost(start, model.splits.segments[s][1], _unit(model, order[0]), "single")
                raise memory_error(model, cost) if cost.short else InfeasiblePlan(
                    f"node {model.graph.nodes[start].name}: the paper planner cannot split it", model.graph.nodes[start].name)
            split_stages.append(stage)
            taken += sum(stage.counts)
        # (3): the runs of nodes between split layers share the remaining devices by latency
        runs, start = [], 0
        for st in split_stages:
            if st.start > start:
                runs.append((start, st.start))
            start = st.stop
        if start < model.n:
            runs.append((start, model.n))
        remaining = order[taken:]
        if len(remaining) < len(runs):
            node = model.graph.nodes[runs[len(remaining)][0]]
            raise InfeasiblePlan(f"node {node.name} cannot be placed: the paper planner needs one device per group of "
                                 f"unsplit layers ({len(runs)} groups) but {len(remaining)} devices are left after splitting", node.name)
        ref = remaining[0] if remaining else order[0]
        seconds = model.node_seconds[ref]
        run_time = np.array([seconds[a:b].sum() for a, b in runs])
        share = _allot(run_time, len(remaining), [b - a for a, b in runs])
        groups, di = [], 0
        for (a, b), count in zip(runs, share):
            cuts = [a] + [a + c for c in linear_partition(seconds[a:b], count)] + [b]
            for lo, hi in zip(cuts, cuts[1:]):
                groups.append(StageChoice(lo, hi, _unit(model, remaining[di]), "single"))
                di += 1
        stages = sorted(split_stages + groups, key=lambda s: s.start)
        # (4): a group that does not fit marks its heaviest segment for splitting; repeat
        grew = False
        for s in stages:
            cost = model.stage_cost(s.start, s.stop, s.counts, s.mode, dict(getattr(s, "forced", ()) or ()))
            if not cost.feasible and s.mode == StageMode.SINGLE:
                heavy = _heaviest_segment(model, s.start, s.stop)
                if heavy is not None and heavy not in must_split:
                    must_split.add(heavy)
                    grew = True
        if not grew:
            return _respect_capacity(model, stages)
    return _respect_capacity(model, stages)


def _allot(run_time: np.ndarray, devices: int, run_nodes: list[int]) -> list[int]:
    """Devices per run in proportion to its latency: one each, the rest to the longest per device."""
    share = [1] * len(run_time)
    for _ in range(devices - len(run_time)):
        candidates = [r for r in range(len(run_time)) if share[r] < run_nodes[r]]
        if not candidates:
            break
        r = max(candidates, key=lambda r: run_time[r] / share[r])
        share[r] += 1
    return share


def _heaviest_segment(model: CostModel, start: int, stop: int) -> int | None:
    best, best_bytes = None, -1.0
    for s, (a, b) in enumerate(model.splits.segments):
        if a >= start and b <= stop and model.splits.kinds(s):
            w = float(model.weight_bytes[a:b].sum())
            if w > best_bytes:
                best, best_bytes = s, w
    return best


def _paper_split(model: CostModel, segment: int, devices: list[int]) -> ForcedStage | None:
    """The paper's split of one segment: its preferred kind over the fewest devices that hold it."""
    start, stop = model.splits.segments[segment]
    kinds = model.splits.kinds(segment)
    kind = next((k for k in PAPER_KIND_PREFERENCE if k in kinds), kinds[0] if kinds else None)
    if kind is None:
        return None
    for m in range(2, len(devices) + 1):
        counts = tuple(sum(1 for k in devices[:m] if k == q) for q in range(len(model.classes)))
        cost = model.stage_cost(start, stop, counts, "split", {segment: kind})
        if cost is not None and cost.feasible:
            return ForcedStage(start, stop, counts, "split", ((segment, kind),))
    return None
