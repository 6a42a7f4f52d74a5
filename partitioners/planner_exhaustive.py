"""Exhaustive search over every stage partition, device set and mode: the reference the dp planner is
tested against on small graphs and clusters (it costs each stage with the scalar CostModel.stage_cost,
not with the dp's numpy tables; a split stage's options and kept layouts are the best chain of that
one range, segment_chains.best_chain, itself tested against every choice of options and keeps)."""
from __future__ import annotations

import math

from .cost import MODES, CostModel
from .planner_dp import TIE, StageChoice, candidate_counts


def exhaustive(model: CostModel, objective: str = "throughput", candidates: list | None = None) -> tuple[list, float, float]:
    """(stages, bottleneck period, latency) of the best plan; ([], inf, inf) when none fits.

    Throughput: least bottleneck, then least latency among plans within TIE of it. Latency: least
    latency. Exponential in the number of nodes: for tests on a handful of nodes and devices.
    """
    capacity = model.capacity
    candidates = candidates if candidates is not None else candidate_counts(capacity, model.n)
    stage_cache: dict = {}

    def stage(i, j, a, mode):
        key = (i, j, a, mode)
        if key not in stage_cache:
            c = model.stage_cost(i, j, a, mode)
            stage_cache[key] = c if c is not None and c.feasible else None
        return stage_cache[key]

    solutions = []

    def extend(i, used, chosen, period, latency):
        if i == model.n:
            solutions.append((period, latency, list(chosen)))
            return
        for j in range(i + 1, model.n + 1):
            for a in candidates:
                if any(u + x > c for u, x, c in zip(used, a, capacity)):
                    continue
                for mode in MODES:
                    c = stage(i, j, a, mode)
                    if c is None:
                        continue
                    chosen.append(StageChoice(i, j, a, mode))
                    extend(j, tuple(u + x for u, x in zip(used, a)), chosen, max(period, c.period_s), latency + c.latency_s)
                    chosen.pop()

    extend(0, (0,) * len(capacity), [], 0.0, 0.0)
    if not solutions:
        return [], math.inf, math.inf
    if objective == "throughput":
        bottleneck = min(p for p, _, _ in solutions)
        period, latency, stages = min((s for s in solutions if s[0] <= bottleneck * (1 + TIE) + 1e-15), key=lambda s: s[1])
    else:
        period, latency, stages = min(solutions, key=lambda s: (s[1], s[0]))
    return stages, period, latency
