"""The `dp` planner: optimal pipeline stages, devices per stage and split kinds, by dynamic programming.

State: (node prefix j, devices used so far per device class u). Devices of a class are
interchangeable, so a 16-device cluster of two kinds has 9 x 9 states per prefix instead of 2^16.

    throughput:  F[j, u] = min over i < j, stage devices a <= u of max(F[i, u - a], period(i, j, a))
    latency:     F[j, u] = min over i < j, a of F[i, u - a] + latency(i, j, a)

period/latency(i, j, a) is the best mode (single, data-parallel, split with per-segment kinds) of the
stage [i, j) on `a` devices per class, from the cost model; infeasible (memory) stages are infinite.
For throughput a second pass takes, among plans reaching the optimal bottleneck, the one with the
least end-to-end latency. Stage tables are built with numpy over all (i, j) at once per device set,
and split stages only start and stop at segment boundaries.

A split stage over planner segments [f, l] runs the best chain of segment options (one option per
segment, 'none' or a split kind; consecutive splits may keep the tensor between them on their parts,
see partitioners.segment_chains), a Viterbi over segments with the option as state, run for every
first segment f at once:

    C[f, f, o]  = seconds(f, o)
    C[f, l, o'] = min over o of C[f, l - 1, o] - saving(l - 1, o, o') + seconds(l, o')
    inner(f, l) = min over o of C[f, l, o]

seconds(s, o) is the option alone (compute, the lead's scatter and gather) and saving(s, o, o') =
max(0, gather(s, o) + scatter(s + 1, o') - kept transition(s, o, o')) where keeping is legal, else 0.
Options include fused spans (fused-tiles over segments s..s+d) as states F_d, C_(d-1), ..., C_0 whose
moves are forced (saving -inf elsewhere; partitioners.segment_table), so the recurrence is unchanged.
Then period = cost.lead_period (inner with the stage's link terms overlapped, cost module), latency = inner + its send. Memory sums the options'
weights and takes their largest working set along the chosen chain, as for unchained segments
(conservative: the lead of a kept tensor no longer holds it whole); a range whose best chain does
not fit is chosen as CostModel.stage_cost does (repair_memory), so the two always agree.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from layers.errors import PisplitError

from .cost import INF, CostModel, LinkTerms, lead_period
from .device_sets import candidate_counts
from .segment_chains import chain_tables
from .vocabulary import NO_SPLIT

OBJECTIVES = ("throughput", "latency")
TIE = 1e-9  # relative slack when matching the optimal bottleneck in the second pass


@dataclass(frozen=True)
class StageChoice:
    """One stage of a solution: nodes [start, stop) on `counts` devices per class in `mode`."""

    start: int
    stop: int
    counts: tuple
    mode: str


def _lead_terms(terms: LinkTerms, index) -> LinkTerms:
    """The lead's terms (lead_in, lead_out, sink) of array-valued `terms` at `index`: what lead_period reads."""
    return LinkTerms(terms.lead_in[index], terms.lead_out[index], terms.sink[index], 0.0, 0.0, 0.0, 0.0, 0.0, False)


class StageTables:
    """period and latency of every stage (i, j) for every candidate device set and mode."""

    def __init__(self, model: CostModel, candidates: list[tuple] | None = None):
        self.model = model
        n = self.n = model.n
        self.candidates = candidates if candidates is not None else candidate_counts(model.capacity, n)
        pre = model.prefix_seconds
        self.compute = [pre[k][None, :] - pre[k][:, None] for k in range(len(model.classes))]
        self.weights = model.prefix_weights[None, :] - model.prefix_weights[:, None]
        # a rank's working set (cost.CostModel.held_work_bytes): the kept im2col buffer once beside the rest
        self.work_max = _running_max(model.work_bytes - model.scratch_bytes) + _running_max(model.scratch_bytes)
        self.start_index = np.arange(n + 1)[:, None]
        self.stop_index = np.arange(n + 1)[None, :]
        # the link terms of cost.LinkTerms for every (start, stop) at once: a frame's whole wait (latency),
        # the link's part (wire) and the ranks' part (busy) of each transfer (cost module docstring)
        first = (np.arange(n + 1) == 0)[:, None]
        last = (np.arange(n + 1) == n)[None, :]
        self.first, self.last = first, last
        self.whole = self._link_terms(*model.link_parts("whole"))
        self.wire = self._link_terms(*model.link_parts("wire"))
        self.busy = self._link_terms(*model.link_parts("rank"))
        self.lead_out = self.whole.lead_out
        self.replica_in_latency = np.where(first, model.transfer[0], 0.0) + np.zeros((1, n + 1))
        self.valid = np.triu(np.ones((n + 1, n + 1), dtype=bool), k=1)
        self.splittable = any(model.splits.kinds(s) for s in range(len(model.splits.segments)))
        self.tables: list[dict] = [self._tables(a) for a in self.candidates]

    def _link_terms(self, got: np.ndarray, sent: np.ndarray) -> LinkTerms:
        """cost.CostModel.link_terms for every (start, stop) at once, from per-cut seconds received and sent."""
        n, first, last = self.n, self.first, self.last
        x_in = np.broadcast_to(got[:, None], (n + 1, n + 1))
        x_out = np.broadcast_to(sent[None, :], (n + 1, n + 1))
        zero = np.zeros((n + 1, n + 1))
        return LinkTerms(lead_in=np.where(first, 0.0, x_in), lead_out=np.where(first & last, 0.0, x_out),
                         sink=np.where(first & ~last, got[n], 0.0), replica_in=x_in, replica_out=x_out,
                         replica_in_latency=np.where(first, self.model.transfer[0], 0.0) + zero,
                         source=np.where(first, sent[0], 0.0) + zero, result=np.where(first, got[n], 0.0) + zero, last=last)

    def single_period(self, compute: np.ndarray) -> np.ndarray:
        """Period of every stage (i, j) on one device taking `compute` seconds (cost.CostModel.stage_cost)."""
        return lead_period(compute, self.busy, self.wire)

    def _tables(self, a: tuple) -> dict:
        """mode -> (period matrix, latency matrix), inf where the stage is infeasible or invalid."""
        m = sum(a)
        used = [k for k, c in enumerate(a) if c]
        held = self.weights + self.work_max
        i, j = self.start_index, self.stop_index
        slots = self.model.slots_of(a)
        # the lead (rank 0 in a first stage: the source's frames) and, data-parallel, the other replicas
        lead = held + self.model.frame_buffer_bytes(i, j, m, True, True)
        fits = self.valid & (lead <= self.model.usable(slots[0]))
        if m > 1:
            replica = held + self.model.frame_buffer_bytes(i, j, m, True, False)
            fits &= np.logical_and.reduce([replica <= self.model.usable(k) for k in set(slots[1:])])
        out = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            if m == 1:
                k = used[0]
                out["single"] = (np.where(fits, self.single_period(self.compute[k]), INF), np.where(fits, self.compute[k] + self.lead_out, INF))
            else:
                out["data-parallel"] = self._data_parallel_tables(a, fits)
                if self.splittable:
                    out["split"] = self._split_tables(a)
        return out

    def _data_parallel_tables(self, a: tuple, fits: np.ndarray) -> tuple:
        """Round-robin replicas: replica 0 (rank 0 of a first stage, with the source's and sink's
        transfers) and the others; period = slowest replica's time per frame / replicas."""
        m = sum(a)
        slots = self.model.slots_of(a)
        b, w = self.busy, self.wire
        results = np.where(self.last, m - 1, m)
        # per round of m frames, as cost.CostModel.stage_cost: the lead's cycle or its interface's time
        # (rank 0 of a first stage: the other replicas' inputs out, the results in), each replica's likewise
        lead = np.maximum.reduce([self.compute[slots[0]] + b.lead_in + b.lead_out + (m - 1) * b.source + results * b.result,
                                  w.lead_in + results * w.result, w.lead_out + (m - 1) * w.source])
        others = [np.maximum.reduce([self.compute[k] + b.replica_in + b.replica_out, w.replica_in, w.replica_out])
                  for k in sorted(set(slots[1:]))]
        cycle = np.maximum.reduce([lead] + others)
        latency = np.maximum.reduce([self.compute[slots[0]] + self.lead_out] +
                                    [self.compute[k] + self.replica_in_latency + self.whole.replica_out for k in sorted(set(slots[1:]))])
        return np.where(fits, cycle / m, INF), np.where(fits, latency, INF)

    def _split_tables(self, a: tuple) -> tuple:
        """Split stages over every segment range: the best chain of options and kept boundaries
        (segment_chains.chain_tables); a range whose chain overflows some slot, while the least
        memory of its segments might not, is chosen as CostModel.stage_cost does (split_choice)."""
        model = self.model
        slots = model.slots_of(a)
        usable = np.array([model.usable(k) for k in slots])
        table = model.segment_table(slots)
        seconds = table.seconds
        value, memory, splits = chain_tables(seconds, table.saving, table.weight_bytes, table.work_bytes, table.start_ok, table.end_ok)
        # a lower bound on any choice's memory: the least weights and working set of each segment
        applies = np.isfinite(seconds)[:, :, None]
        w_low = np.where(applies, table.weight_bytes, np.inf).min(axis=1)
        k_low = np.where(applies, table.work_bytes, np.inf).min(axis=1)
        b = model.segment_bounds
        first, last = self._segment_pairs(len(seconds))  # every segment range [first, last]
        lead_buffers = model.frame_buffer_bytes(b[first], b[last + 1], 1, True, True)
        mem = memory[first, last]
        mem[:, 0] += lead_buffers
        # a split stage that splits nothing is one device with idle others: single mode covers it
        useful = splits[first, last] > 0
        fits = (mem <= usable).all(axis=1)
        ok = fits & useful
        inner = value[first, last]
        starts, stops = b[first], b[last + 1]
        out_lat = self.lead_out[starts, stops]
        busy, wire = _lead_terms(self.busy, (starts, stops)), _lead_terms(self.wire, (starts, stops))
        per = lead_period(inner, busy, wire)
        lat = inner + out_lat
        if not fits.all():
            pre_wl = np.vstack([np.zeros(len(slots)), np.cumsum(w_low, axis=0)])
            low = pre_wl[last + 1] - pre_wl[first] + _range_max(k_low, first, last)
            low[:, 0] += lead_buffers
            for q in np.nonzero(~fits & (low <= usable).all(axis=1))[0]:
                # the best chain overflows but some choice might not: trade time for memory
                chosen, inner_q, mem_q = model.split_choice(int(first[q]), int(last[q]), slots, lead_buffers[q])
                if all(mm <= u for mm, u in zip(mem_q, usable)) and any(o.kind != NO_SPLIT for o in chosen):
                    per[q], lat[q], ok[q] = float(lead_period(inner_q, _lead_terms(busy, q), _lead_terms(wire, q))), inner_q + out_lat[q], True
        n = self.n
        period = np.full((n + 1, n + 1), INF)
        latency = np.full((n + 1, n + 1), INF)
        period[starts, stops] = np.where(ok, per, INF)
        latency[starts, stops] = np.where(ok, lat, INF)
        return period, latency

    def _segment_pairs(self, segs: int) -> tuple:
        if getattr(self, "_pairs", None) is None:
            first, last = np.triu_indices(segs)
            self._pairs = (first, last)
        return self._pairs


def _range_max(values: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """max(values[first[q]:last[q] + 1]) along axis 0 for every q, with a sparse table (log2 levels)."""
    levels = [values]
    span = 1
    while 2 * span <= len(values):
        prev = levels[-1]
        levels.append(np.maximum(prev[:-span], prev[span:]))
        span *= 2
    length = last - first + 1
    level = np.floor(np.log2(length)).astype(int)
    out = np.empty((len(first), values.shape[1]))
    for lv in np.unique(level):
        q = level == lv
        table = levels[lv]
        out[q] = np.maximum(table[first[q]], table[last[q] - (1 << lv) + 1])
    return out


def _running_max(values: np.ndarray) -> np.ndarray:
    """M[i, j] = max(values[i:j]) for j > i (0 elsewhere)."""
    n = len(values)
    out = np.zeros((n + 1, n + 1))
    for i in range(n):
        out[i, i + 1:] = np.maximum.accumulate(values[i:])
    return out


def solve(tables: StageTables, objective: str = "throughput") -> tuple[list[StageChoice], float, float]:
    """The optimal stages, with (bottleneck period, end-to-end latency) of the solution.

    Raises PisplitError (caught by the planner, which names the node) when nothing is feasible.
    """
    if objective not in OBJECTIVES:
        raise PisplitError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if objective == "throughput":
        best = _dp(tables, "max", lambda per, lat: per)[:2]
        bottleneck = best[0]
        if not math.isfinite(bottleneck):
            raise PisplitError("no feasible plan")
        limit = bottleneck * (1 + TIE) + 1e-15
        _, stages, _ = _dp(tables, "sum", lambda per, lat: np.where(per <= limit, lat, INF))
    else:
        _, stages, _ = _dp(tables, "sum", lambda per, lat: lat)
    if not stages:
        raise PisplitError("no feasible plan")
    return stages, *evaluate(tables, stages)


def evaluate(tables: StageTables, stages: list[StageChoice]) -> tuple[float, float]:
    """(bottleneck period, end-to-end latency) of a solution, from the stage tables."""
    periods, latencies = [], []
    for s in stages:
        per, lat = tables.tables[tables.candidates.index(s.counts)][s.mode]
        periods.append(per[s.start, s.stop])
        latencies.append(lat[s.start, s.stop])
    return max(periods), sum(latencies)


def _dp(tables: StageTables, combine: str, value) -> tuple[float, list[StageChoice], np.ndarray]:
    """One DP pass: `value(period, latency)` is the stage's cost matrix, combined by max or sum.
    Returns the optimum, its stages and the table F[prefix, devices used] (inf: unreachable)."""
    n = tables.n
    capacity = tables.model.capacity
    radices = [c + 1 for c in capacity]
    strides = [math.prod(radices[k + 1:]) for k in range(len(radices))]
    n_states = math.prod(radices)
    grid = np.array(list(itertools.product(*[range(r) for r in radices]))).reshape(n_states, len(radices))
    moves = []  # per candidate: counts, cost by [stop, start], mode costs, mode names, source states, offset, first start
    for a, modes in zip(tables.candidates, tables.tables):
        names = list(modes)
        costs = [value(*modes[name]) for name in names]
        cost = np.minimum.reduce(costs) if len(costs) > 1 else costs[0]
        finite = np.isfinite(cost)
        if not finite.any():
            continue
        src = np.nonzero((grid + np.array(a) <= np.array(capacity)).all(axis=1))[0]
        offset = int(sum(x * s for x, s in zip(a, strides)))
        first = np.where(finite.any(axis=0), finite.argmax(axis=0), n + 1)  # first feasible start per stop
        moves.append((a, np.ascontiguousarray(cost.T), costs, names, src, src + offset, first, np.arange(len(src))))
    # F is kept as [state, prefix] so each source state's history is one contiguous row
    f = np.full((n_states, n + 1), INF)
    f[0, 0] = 0.0
    back = np.full((n + 1, n_states, 2), -1, dtype=np.int64)  # (start node, move index)
    for j in range(1, n + 1):
        best = f[:, j]
        for mi, (a, cost_t, _, _, src, dst, first, lanes) in enumerate(moves):
            lo = first[j]
            if lo >= j:
                continue
            # starts with an infinite stage cost come out infinite by themselves: no need to select them
            cand = f[src, lo:j]
            if combine == "max":
                np.maximum(cand, cost_t[j, lo:j], out=cand)
            else:
                cand += cost_t[j, lo:j]
            pick = cand.argmin(axis=1)
            val = cand[lanes, pick]
            better = val < best[dst]
            hit = dst[better]
            best[hit] = val[better]
            back[j, hit, 0] = lo + pick[better]
            back[j, hit, 1] = mi
        f[:, j] = best
    f = f.T
    end = int(np.argmin(f[n]))
    if not math.isfinite(f[n, end]):
        return INF, [], f
    stages, j, u = [], n, end
    while j > 0:
        i, mi = back[j, u]
        a, _, costs, names, src, dst, _, _ = moves[mi]
        mode = names[int(np.argmin([c[i, j] for c in costs]))]
        stages.append(StageChoice(int(i), j, tuple(int(x) for x in a), mode))
        j, u = int(i), u - int(dst[0] - src[0])
    return float(f[n, end]), stages[::-1], f


def placeable_prefix(tables: StageTables) -> tuple[int, tuple]:
    """The longest node prefix some plan can place, and the devices per class it leaves unused (the
    most memory left among the ways to place it): where an infeasible model gets stuck."""
    _, _, f = _dp(tables, "sum", lambda per, lat: lat)
    capacity = tables.model.capacity
    states = list(itertools.product(*[range(c + 1) for c in capacity]))
    reach = [j for j in range(tables.n + 1) if np.isfinite(f[j]).any()]
    j = max(reach)
    usable = [c.usable_bytes for c in tables.model.classes]
    left = [tuple(c - u for c, u in zip(capacity, states[x])) for x in np.nonzero(np.isfinite(f[j]))[0]]
    return j, max(left, key=lambda r: sum(n * b for n, b in zip(r, usable)))
