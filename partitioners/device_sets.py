"""The device sets a pipeline stage may use, as counts per device class: every sub-multiset of the
cluster while the dp's work stays within budget, else the cheapest ones (planner_dp, the exhaustive
planner and segment_chains' keep budget all draw from the same list)."""
from __future__ import annotations

import itertools
import math

WORK_BUDGET = 1.5e8  # elementary DP steps; above it, mixed-class stages are limited to the cheapest
MOVE_BUDGET = 30_000  # (prefix, device set) pairs, each a handful of numpy calls


def candidate_counts(capacity: tuple, n_nodes: int) -> list[tuple]:
    """Device sets a stage may use: every sub-multiset of the cluster while the DP's work stays within
    WORK_BUDGET (and MOVE_BUDGET numpy steps), else every single-class set plus the mixed sets that
    cost the DP least: the large ones (a stage using most devices leaves few states to extend)."""
    every = [a for a in itertools.product(*[range(c + 1) for c in capacity]) if sum(a) > 0]

    def work(a):  # DP states a stage of `a` devices can extend, times the (i, j) pairs
        return math.prod(c - x + 1 for c, x in zip(capacity, a)) * n_nodes * n_nodes / 2

    if sum(work(a) for a in every) <= WORK_BUDGET and len(every) * n_nodes <= MOVE_BUDGET:
        return every
    chosen = [a for a in every if sum(1 for x in a if x) == 1]
    spent = sum(work(a) for a in chosen)
    for a in sorted((a for a in every if sum(1 for x in a if x) > 1), key=lambda a: (work(a), a)):
        if spent + work(a) > WORK_BUDGET or (len(chosen) + 1) * n_nodes > MOVE_BUDGET:
            break
        chosen.append(a)
        spent += work(a)
    return chosen
