"""Chains of split segments that keep their outputs on their parts (partitioners.layouts), as the
cost model and the dp planner price them.

Boundary b sits between planner segments b and b + 1 of a split stage. Keeping is legal for an
option pair (o, o') when o is a keepable kind (layouts.KEEPABLE_KINDS) whose split covers all of
segment b (nothing is left for the lead after it), o' splits segment b + 1, and
layouts.check_kept_output accepts the two plan segments (the next split reads the tensor and nothing
after it needs it). A kept pair pays the layout transition instead of the lead gathering o's output
and scattering o''s input: every rank sends every other rank the part of its piece that the other's
feeds need, peer to peer on full-duplex links (layouts.transition_seconds); inputs of o' other than
the kept tensor still come whole from the lead, in the same transition. Boxes are those of
splits.split_segment with the table's part sizes, part p on slot p (the lead is part 0 in both, so
its own pieces are free). So

    saving[b, o, o'] = max(0, out(b, o) + in(b + 1, o') - kept(b, o, o'))   (0 where not legal)

and a chain's time is the sum of its options' seconds less the savings at the boundaries it keeps
(it keeps exactly where the saving is positive). The best chain over segments [f, l] is a Viterbi
with the option as the state:

    V[f, f, o]  = seconds[f, o]
    V[f, l, o'] = min over o of (V[f, l - 1, o] - saving[l - 1, o, o']) + seconds[l, o']
    best(f, l)  = min over o of V[f, l, o]                 (ties: the lowest option, 'none' first)

`chain_tables` runs it for every first segment at once (the dp's split-stage tables), `best_chain`
for one first segment with back pointers (CostModel.stage_cost); both apply `_step` to the same rows,
so they give the same values and choices. Memory is the existing per-option accounting along the
chain (weights summed, largest working set): conservative, since a kept tensor's lead no longer
holds it whole.

Fused spans (fused-tiles over several segments, recomputing halos instead of exchanging them) are
more states of the same recurrence (partitioners.segment_table): F_d at the span's first segment,
C_(d-1) .. C_0 after it, with saving -inf on every move the span does not allow, so a chain takes a
span whole or not at all; `start_ok` and `end_ok` keep chains from starting or stopping inside one.
A span keeps and is kept like a kind: its input may come from the previous split's parts (pair into
F_d), its output stay on its parts for the next (pair out of C_0, the span's own strips). Exchange
spans (X_d) are the same states for a region run conv-spatial segment by segment, whose input stays
on the parts for every segment of it that reads it (a residual block's add): their pair in prices
every box the region reads of the kept tensor, their inner transitions are their own
(exchange_transitions), so the recurrence still sees one state per segment.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace

import numpy as np

from layers.errors import PisplitError
from layers.graph import DTYPE_BYTES, Graph

from .device_sets import candidate_counts
from .layouts import KEEPABLE_KINDS, check_kept_output, needed, produced
from .plan import Segment
from .segment_columns import EXCHANGE, SUBSET_PARTS, table_columns
from .split_parts import full_box

INF = float("inf")
# split parts built (real splits, ~40 us each) for the kept transitions of a model's device sets; above
# it only some sets search kept layouts (keep_counts; the plan notes it)
KEEP_BUDGET = 20_000


# --- which pairs may keep ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KeepPair:
    """Boundary `boundary` may keep column `option`'s output (a split of `kind` over nodes [start, end
    of segment boundary)) for column `next_option` of the next segment (a split of `next_kind` that
    stops at node `next_stop`). Columns as segment_table.table_columns: a kind's, or a fused span's
    (the producer: its last inside column C_0, the span starting at `start`; the consumer: its F_d)."""

    boundary: int
    option: int
    next_option: int
    next_stop: int
    kind: str = ""
    next_kind: str = ""
    start: int = -1
    next_span: int = 0  # > 0: the consumer is an exchange span over the next segment and this many more


def keep_pairs(model) -> tuple:
    """Every legal KeepPair of a CostModel's planner segments (independent of the devices; cached)."""
    cached = model.__dict__.get("_keep_pairs")
    if cached is not None:
        return cached
    from .split_costs import FUSED, span_kind

    cat, graph = model.splits, model.graph
    columns = table_columns(cat.max_span)
    ends = {}  # segment -> (start node, kind) of a span ending with it: its output strips are C_0's
    for s in range(len(cat.segments)):
        for d in cat.exchange_spans(s):
            ends.setdefault(s + d, (cat.segments[s + d][0], EXCHANGE))  # the last segment's own strips
        for d in cat.spans(s):
            ends[s + d] = (cat.segments[s][0], FUSED)

    def producers(b):
        start, stop = cat.segments[b]
        for kind in cat.kinds(b):
            if kind in KEEPABLE_KINDS and cat.kind_costs(b, kind).stop == stop:
                yield columns.index((kind, "kind", 0)), kind, start
        if b in ends:
            yield columns.index((FUSED, "inside", 0)), ends[b][1], ends[b][0]

    def consumers(b):
        for kind in cat.kinds(b):
            yield columns.index((kind, "kind", 0)), kind, cat.kind_costs(b, kind).stop, ()
        for d in cat.spans(b):
            yield columns.index((FUSED, "span", d)), FUSED, cat.kind_costs(b, span_kind(d)).stop, ()
        for d in cat.exchange_spans(b):
            yield (columns.index((EXCHANGE, "xspan", d)), EXCHANGE, cat.segments[b + d][1],
                   tuple(Segment(*cat.segments[k], EXCHANGE) for k in range(b, b + d + 1)))

    pairs = []
    for b in range(len(cat.segments) - 1):
        stop = cat.segments[b][1]
        nstart = cat.segments[b + 1][0]
        for o, kind, start in producers(b):
            for no, nkind, nstop, run in consumers(b + 1):
                if _kept_legal(graph, Segment(start, stop, kind), *(run or (Segment(nstart, nstop, nkind),))):
                    pairs.append(KeepPair(b, o, no, nstop, kind, nkind, start, len(run) - 1 if run else 0))
    model.__dict__["_keep_pairs"] = tuple(pairs)
    return model.__dict__["_keep_pairs"]


def keep_counts(model) -> frozenset:
    """Device sets (counts per class, as planner_dp.candidate_counts) whose split stages may keep:
    every set while the split parts their kept transitions build stay within KEEP_BUDGET, else the
    single-kind sets, then the mixed ones, each from the largest, that still fit in what is left of
    the budget (a set whose speeds, or first k speeds for its subset columns, were counted already
    shares those splits); the others run every segment as a star. Decided once per model, so the
    dp and CostModel.stage_cost agree."""
    cached = model.__dict__.get("_keep_counts")
    if cached is not None:
        return cached
    pairs = keep_pairs(model)
    units = len({(p.boundary, p.option) for p in pairs} | {(p.boundary + 1, p.next_option) for p in pairs})  # splits per set size
    chosen, seen, spent = [], set(), 0
    sets = [a for a in candidate_counts(model.capacity, model.n) if sum(a) > 1]
    for a in sorted(sets, key=lambda a: (sum(1 for x in a if x) > 1, -sum(a), a)):  # one kind first, then the largest
        scales = [model.classes[k].seconds_scale for k in model.slots_of(a)]
        speeds = tuple(x / scales[0] for x in scales)  # what the part sizes depend on
        # the splits of its kinds over all its slots and over its first k (subset columns); a set of
        # equal speeds to one already counted shares them (split_boxes caches them)
        prefixes = {speeds[:k] for k in (len(speeds), *SUBSET_PARTS) if k <= len(speeds)} - seen
        cost = units * sum(len(p) for p in prefixes)
        if spent + cost > KEEP_BUDGET:
            continue  # a smaller set may still fit, or share what is built
        chosen.append(a)
        seen |= prefixes
        spent += cost
    model.__dict__["_keep_counts"] = frozenset(chosen)
    return model.__dict__["_keep_counts"]


def _kept_legal(graph: Graph, seg: Segment, *after: Segment) -> bool:
    try:
        check_kept_output(graph, (seg, *after), 0)
    except PisplitError:
        return False
    return True


# --- transition seconds -----------------------------------------------------------------------------

_boxes: "weakref.WeakKeyDictionary[Graph, dict]" = weakref.WeakKeyDictionary()


def split_boxes(graph: Graph, start: int, stop: int, kind: str, sizes: tuple) -> tuple:
    """Boxes of split_segment(graph, start, stop, kind, sizes) with part p on rank p: (output tensor,
    produced (ranks, boxes) or None for sum kinds, {input tensor: needed (ranks, boxes)}).
    Cached per graph (graphs hash by identity): the planner asks again for every device set."""
    cache = _boxes.setdefault(graph, {})
    key = (start, stop, kind, sizes)
    if key not in cache:
        cache[key] = _split_boxes(graph, start, stop, kind, sizes)
    return cache[key]


def _split_boxes(graph: Graph, start: int, stop: int, kind: str, sizes: tuple) -> tuple:
    from .splits import split_segment

    split = split_segment(graph, start, stop, kind, sizes)
    ranks = range(split.n_parts)
    have = None
    if kind in KEEPABLE_KINDS:
        layout = produced(split, ranks)
        have = _arrays([(p.rank, p.box) for p in layout.pieces])
    need = {t: _arrays([(p.rank, p.box) for p, _ in needed(split, ranks, t)]) for t in split.inputs}
    return split.output, have, need


def _arrays(pieces: list) -> tuple:
    return np.array([r for r, _ in pieces], dtype=np.int64), np.array([b for _, b in pieces], dtype=np.int64).reshape(len(pieces), -1, 2)


def interface_seconds(have: tuple, need: tuple, n_ranks: int, bandwidth_bps: float, latency_s: float,
                      value_bytes: int = DTYPE_BYTES) -> tuple:
    """(seconds each rank sends, seconds each rank receives), (transitions, ranks) arrays, of
    layouts.transition(have, need) for a batch of transitions of equal shapes: pieces and needs as
    (ranks (T, P), boxes (T, P, axes, 2)) arrays. The array form of what layouts.transition_seconds
    sums: a need its own rank's piece covers is a free local copy; otherwise every holder sends its
    intersection, free when it is the same rank. `value_bytes`: bytes a value of the tensor (its dtype's:
    1 for an int8 model's int8 activations, issue 12)."""
    h_rank, h_box = have
    n_rank, n_box = need
    lo = np.maximum(h_box[:, :, None, :, 0], n_box[:, None, :, :, 0])
    hi = np.minimum(h_box[:, :, None, :, 1], n_box[:, None, :, :, 1])
    volume = np.prod(np.clip(hi - lo, 0, None), axis=3)  # (T, pieces, needs)
    same = h_rank[:, :, None] == n_rank[:, None, :]
    covers = ((h_box[:, :, None, :, 0] <= n_box[:, None, :, :, 0]) & (h_box[:, :, None, :, 1] >= n_box[:, None, :, :, 1])).all(axis=3)
    local = (covers & same).any(axis=1)  # (T, needs)
    wanted = np.prod(n_box[..., 1] - n_box[..., 0], axis=2)
    if (~local & (volume.sum(axis=1) != wanted)).any():
        raise PisplitError("layouts: kept pieces do not cover what the next split needs")
    moves = (volume > 0) & ~same & ~local[:, None, :]
    t = np.where(moves, latency_s + volume * (value_bytes * 8.0 / bandwidth_bps), 0.0)
    rows = np.arange(len(t))[:, None]
    sent, received = np.zeros((len(t), n_ranks)), np.zeros((len(t), n_ranks))
    np.add.at(sent, (rows, h_rank), t.sum(axis=2))
    np.add.at(received, (rows, n_rank), t.sum(axis=1))
    return sent, received


def kept_table(model, slots: tuple, sizes: dict, n_options: int) -> np.ndarray:
    """kept[b, o, o'] seconds of every legal pair whose options apply to these slots (inf elsewhere):
    the transition a kept pair makes, its kept tensor from the parts' pieces and the next split's
    other inputs from the lead (rank 0), all at once (layouts.transition_seconds)."""
    n_seg, n = len(model.splits.segments), len(slots)
    kept = np.full((max(n_seg - 1, 0), n_options, n_options), INF)
    counts = tuple(slots.count(k) for k in range(len(model.classes)))
    if n < 2 or counts not in keep_counts(model):
        return kept
    graph, segments = model.graph, model.splits.segments
    # a kind's pair also keeps between its subsets of the slots (segment_table's 'subset' columns)
    columns = table_columns(model.splits.max_span, n)
    variants = {o: [o] + [c for c, (k, role, _) in enumerate(columns) if role == "subset" and k == kind]
                for o, (kind, role, _) in enumerate(columns) if role == "kind"}
    candidates = (replace(base, option=o, next_option=no) for base in keep_pairs(model)
                  for o in variants.get(base.option, [base.option]) for no in variants.get(base.next_option, [base.next_option]))
    pairs, jobs = [], {}  # jobs by array shapes: (pair index, pieces, needs)
    for pair in candidates:
        a, z = sizes.get((pair.boundary, pair.option)), sizes.get((pair.boundary + 1, pair.next_option))
        if a is None or z is None:
            continue
        stop = segments[pair.boundary][1]
        tensor, have, _ = split_boxes(graph, pair.start, stop, pair.kind, a)
        if pair.next_span:
            cs = columns.index((EXCHANGE, "kind", 0))
            run = range(pair.boundary + 1, pair.boundary + 2 + pair.next_span)
            if any((k, cs) not in sizes for k in run):
                continue
            need, _ = exchange_boxes(graph, segments, pair.boundary + 1, pair.next_span, tuple(sizes[(k, cs)] for k in run))
        else:
            _, _, need = split_boxes(graph, stop, pair.next_stop, pair.next_kind, z)
        for t, wants in need.items():
            source = have if t == tensor else _lead_piece(graph, t)
            jobs.setdefault((source[1].shape, wants[1].shape, value_bytes(graph, t)), []).append((len(pairs), source, wants))
        pairs.append(pair)
    sent, received = np.zeros((len(pairs), n)), np.zeros((len(pairs), n))
    link = model.cluster
    for (_, _, size), group in jobs.items():
        index = np.array([i for i, _, _ in group])
        stack = [np.stack([job[k][j] for job in group]) for k in (1, 2) for j in (0, 1)]
        s, r = interface_seconds(stack[:2], stack[2:], n, link.link_bandwidth_bps, link.link_latency_s, size)
        np.add.at(sent, index, s)
        np.add.at(received, index, r)
    seconds = np.maximum(np.maximum(sent.max(axis=1, initial=0.0), received.max(axis=1, initial=0.0)), 0.0)
    call_s = extra_call_seconds(model, slots)
    for pair, value in zip(pairs, seconds.tolist()):
        if call_s is not None and pair.next_kind == EXCHANGE and not pair.next_span:
            stop = segments[pair.boundary][1]
            tensor, have, _ = split_boxes(graph, pair.start, stop, pair.kind, sizes[(pair.boundary, pair.option)])
            _, made, need = split_boxes(graph, stop, pair.next_stop, pair.next_kind, sizes[(pair.boundary + 1, pair.next_option)])
            out = graph.nodes[pair.next_stop - 1].outputs[0]
            stride = graph.shapes[tensor][1] / graph.shapes[out][1] if len(graph.shapes[out]) > 2 else 1.0
            value += interior_first_seconds(have, need, tensor, call_s, pair.next_stop - stop, (*made, stride))
        kept[pair.boundary, pair.option, pair.next_option] = value
    return kept


def extra_call_seconds(model, slots: tuple) -> tuple | None:
    """(seconds per engine call, per split node) a conv-spatial part pays for each call beyond its
    first, on each slot's device (the lead profile's split overhead, scaled): what the interior-first
    cut of a part fed from a kept strip (cluster.overlap: top edge, interior, bottom edge as three
    engine calls) adds to the part. None when there is nothing to pay."""
    profile, _ = model.calibration.resolve(model.classes[slots[0]].kind)
    overhead = profile.split_overhead_for(EXCHANGE)
    if overhead.per_step_s <= 0 and overhead.per_node_s <= 0:
        return None
    scales = np.array([model.classes[k].seconds_scale for k in slots])
    return overhead.per_step_s * scales, overhead.per_node_s * scales


def interior_first_seconds(have: tuple | None, need: dict, tensor: str, call_s: tuple, nodes: int, made: tuple | None = None) -> float:
    """Seconds the slowest part of a conv-spatial split fed from the kept strips `have` of `tensor`
    spends on extra engine calls: as cluster.split_exec runs it, a part whose only input is that
    tensor and that reads rows above (below) its own strip computes a top (bottom) edge as a call of
    its own, after the interior. Rows are the first box axis. With `made` (the split's output boxes,
    part p's on rank p) a part too short to leave an interior row between its edges (each edge the
    output rows its halo rows reach, at the whole tensors' input/output row ratio `made[2]`) is not cut."""
    if have is None or set(need) != {tensor}:
        return 0.0
    h_rank, h_box = have
    n_rank, n_box = need[tensor]
    per_step, per_node = call_s
    worst = 0.0
    for r, box in zip(n_rank.tolist(), n_box):
        held = h_box[h_rank == r]
        if len(held) != 1 or r >= len(per_step):
            continue  # nothing held on this rank (or in pieces): no interior-first cut
        (h0, h1), (f0, f1) = held[0][0], box[0]
        if max(h0, f0) >= min(h1, f1):
            continue
        calls = int(f0 < h0) + int(f1 > h1)
        if made is not None and calls and r < len(made[1]):
            (o0, o1) = made[1][r][0]
            stride = made[2] if len(made) > 2 else 1.0  # input rows per output row of the whole tensors
            edges = math.ceil(max(h0 - f0, 0) / stride - 1e-9) + math.ceil(max(f1 - h1, 0) / stride - 1e-9)
            if o1 - o0 - max(edges, calls) < 1:
                calls = 0
        worst = max(worst, calls * (per_step[r] + per_node[r] * nodes))
    return worst


def exchange_boxes(graph: Graph, segments: list, first: int, d: int, sizes: tuple) -> tuple:
    """An exchange span over planner segments first..first + d (conv-spatial each, part sizes
    `sizes` per segment): ({tensor from before the span: every (ranks, boxes) its segments need},
    [(have, need) per segment after the first: its inputs from the strips of the span's own
    segments]). Cached per graph with split_boxes."""
    cache = _boxes.setdefault(graph, {})
    key = ("exchange", first, d, sizes)
    if key not in cache:
        made, entry, inner = {}, {}, []
        for i, k in enumerate(range(first, first + d + 1)):
            start, stop = segments[k]
            out, have, need = split_boxes(graph, start, stop, EXCHANGE, sizes[i])
            moves = []
            for t, wants in need.items():
                if t in made:
                    moves.append((made[t], wants, value_bytes(graph, t)))
                else:
                    entry.setdefault(t, []).append(wants)
            inner.append(moves)
            made[out] = have
        entry = {t: (np.concatenate([w[0] for w in ws]), np.concatenate([w[1] for w in ws])) for t, ws in entry.items()}
        cache[key] = (entry, inner)
    return cache[key]


def _moves_seconds(moves: list, n: int, bandwidth_bps: float, latency_s: float) -> float:
    """layouts.transition_seconds of one transition: (have, need, bytes a value) arrays per tensor, every
    rank's interface sending and receiving its messages one after the other."""
    sent, received = np.zeros(n), np.zeros(n)
    for have, need, size in moves:
        s, r = interface_seconds((have[0][None], have[1][None]), (need[0][None], need[1][None]), n, bandwidth_bps, latency_s, size)
        sent += s[0]
        received += r[0]
    return float(max(sent.max(initial=0.0), received.max(initial=0.0)))


def exchange_transitions(model, slots: tuple, first: int, d: int, sizes: list) -> tuple:
    """(seconds the lead takes to hand an exchange span what it reads from before it, seconds of
    the transitions between its own segments), on the model's link."""
    graph, link, n = model.graph, model.cluster, len(slots)
    entry, inner = exchange_boxes(graph, model.splits.segments, first, d, tuple(tuple(z) for z in sizes))
    args = (n, link.link_bandwidth_bps, link.link_latency_s)
    entry_s = _moves_seconds([(_lead_piece(graph, t), need, value_bytes(graph, t)) for t, need in entry.items()], *args)
    inner_s = sum(_moves_seconds(moves, *args) for moves in inner)
    call_s = extra_call_seconds(model, slots)
    if call_s is not None:  # each segment after the first reads its own strips: interior first
        for k, moves in zip(range(first + 1, first + d + 1), inner):
            if len(moves) == 1:
                start, stop = model.splits.segments[k]
                out, made, need = split_boxes(graph, start, stop, EXCHANGE, tuple(sizes[k - first]))
                stride = graph.shapes[next(iter(need))][1] / graph.shapes[out][1] if len(graph.shapes[out]) > 2 else 1.0
                inner_s += interior_first_seconds(moves[0][0], {"kept": moves[0][1]}, "kept", call_s, stop - start, (*made, stride))
    return entry_s, inner_s


def value_bytes(graph: Graph, tensor: str) -> int:
    """Bytes a value of `tensor` takes on a link: its dtype's (int8 activations 1, float32 4)."""
    return int(graph.dtype(tensor).itemsize)


def _lead_piece(graph: Graph, tensor: str) -> tuple:
    """`tensor` whole on rank 0, as (ranks, boxes) arrays."""
    return _arrays([(0, full_box(graph.shapes[tensor][1:]))])


def savings(kept: np.ndarray, comm_in: np.ndarray, comm_out: np.ndarray) -> np.ndarray:
    """saving[b, o, o'] = out(b, o) + in(b + 1, o') - kept(b, o, o') where positive, else 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        gain = comm_out[:-1, :, None] + comm_in[1:, None, :] - kept
    return np.where(np.isfinite(gain) & (gain > 0), gain, 0.0)


# --- best chains ------------------------------------------------------------------------------------

def _step(value, sums, peaks, seconds, saving, add, work):
    """Extend chains (rows: first segments; columns: the last option) by one segment. `sums` holds
    what adds up along a chain (weights per slot, then split segments), `peaks` the largest working
    set per slot. Returns the new rows and the back pointers (each new state's previous option)."""
    rows = np.arange(len(value))[:, None]
    if not saving.any():  # nothing kept here: every option extends the best chain so far
        best = value.argmin(axis=1)[:, None]
        return (value[rows, best] + seconds, sums[rows, best] + add, np.maximum(peaks[rows, best], work),
                np.broadcast_to(best, value.shape))
    cand = value[:, :, None] - saving  # (rows, previous option, option)
    back = cand.argmin(axis=1)
    value = cand[rows, back, np.arange(value.shape[1])] + seconds
    return value, sums[rows, back] + add, np.maximum(peaks[rows, back], work), back


def _addends(weights: np.ndarray) -> np.ndarray:
    """Per segment and option: its weights per slot and 1 if it splits (summed along a chain)."""
    is_split = np.broadcast_to((np.arange(weights.shape[1]) > 0)[None, :, None], (*weights.shape[:2], 1))
    return np.concatenate([weights, is_split], axis=2)


def chain_tables(seconds: np.ndarray, saving: np.ndarray, weights: np.ndarray, work: np.ndarray,
                 start_ok: np.ndarray | None = None, end_ok: np.ndarray | None = None) -> tuple:
    """Best chain of every segment range [f, l] (module docstring): (seconds (S, S), memory per slot
    (S, S, slots) = summed weights + largest working set, split segments (S, S)); only f <= l is set.
    `start_ok` / `end_ok` (per column) say where a chain may start and end (fused spans:
    segment_table), `saving` is -inf for the moves a chain may not make."""
    if start_ok is None and not saving.any():
        return _independent_tables(seconds, weights, work)
    first_seconds = seconds if start_ok is None else np.where(start_ok[None, :], seconds, INF)
    n_seg, n_opt, n_slots = weights.shape
    add = _addends(weights)
    values = np.full((n_seg, n_seg, n_opt), INF)  # [first, last, option]
    sums = np.zeros((n_seg, n_seg, n_opt, n_slots + 1))
    peaks = np.zeros((n_seg, n_seg, n_opt, n_slots))
    for last in range(n_seg):
        if last:
            values[:last, last], sums[:last, last], peaks[:last, last], _ = _step(
                values[:last, last - 1], sums[:last, last - 1], peaks[:last, last - 1], seconds[last], saving[last - 1],
                add[last], work[last])
        values[last, last], sums[last, last], peaks[last, last] = first_seconds[last], add[last], work[last]
    pick = (values if end_ok is None else np.where(end_ok, values, INF)).argmin(axis=2)[..., None]
    best_sums = np.take_along_axis(sums, pick[..., None], axis=2)[:, :, 0]
    memory = best_sums[..., :n_slots] + np.take_along_axis(peaks, pick[..., None], axis=2)[:, :, 0]
    return np.take_along_axis(values, pick, axis=2)[..., 0], memory, best_sums[..., n_slots]


def _independent_tables(seconds: np.ndarray, weights: np.ndarray, work: np.ndarray) -> tuple:
    """chain_tables where nothing may keep: each segment's fastest option ('none' on ties), summed
    in order from each first segment."""
    n_seg = len(seconds)
    rows = np.arange(n_seg)
    pick = seconds.argmin(axis=1)
    upper = (rows[None, :] >= rows[:, None])  # [first, last]
    value = np.add.accumulate(np.where(upper, seconds[rows, pick][None, :], 0.0), axis=1)
    summed = np.add.accumulate(np.where(upper[..., None], weights[rows, pick][None], 0.0), axis=1)
    peak = np.maximum.accumulate(np.where(upper[..., None], work[rows, pick][None], 0.0), axis=1)
    splits = np.add.accumulate(np.where(upper, (pick > 0)[None, :], 0), axis=1)
    return np.where(upper, value, INF), summed + peak, splits


@dataclass(frozen=True)
class Chain:
    """The best chain over segments [first, first + len(options)): option per segment, whether each
    keeps its output on its parts, its seconds and its memory per slot (as chain_tables)."""

    options: tuple
    kept: tuple
    seconds: float
    memory: tuple


def best_chain(seconds: np.ndarray, saving: np.ndarray, weights: np.ndarray, work: np.ndarray, first: int, last: int,
               start_ok: np.ndarray | None = None, end_ok: np.ndarray | None = None) -> Chain:
    """The best chain over segments [first, last], as chain_tables finds it for that range."""
    if start_ok is None and not saving.any():
        value, memory, _ = _independent_tables(seconds[first:last + 1], weights[first:last + 1], work[first:last + 1])
        options = tuple(int(o) for o in seconds[first:last + 1].argmin(axis=1))
        return Chain(options, (False,) * len(options), float(value[0, -1]), tuple(float(v) for v in memory[0, -1]))
    n_slots = weights.shape[2]
    add = _addends(weights)
    start = seconds[first] if start_ok is None else np.where(start_ok, seconds[first], INF)
    value, sums, peaks = start[None], add[first][None], work[first][None]
    backs = []
    for s in range(first + 1, last + 1):
        value, sums, peaks, back = _step(value, sums, peaks, seconds[s], saving[s - 1], add[s], work[s])
        backs.append(back[0])
    o = int((value[0] if end_ok is None else np.where(end_ok, value[0], INF)).argmin())
    memory = sums[0, o, :n_slots] + peaks[0, o]
    options = [o]
    for back in reversed(backs):
        options.append(int(back[options[-1]]))
    options.reverse()
    return Chain(tuple(options), kept_flags(saving, first, options), float(value[0, o]), tuple(float(v) for v in memory))


def kept_flags(saving: np.ndarray, first: int, options) -> tuple:
    """Per segment of a chain starting at `first`: whether it keeps its output (a positive saving)."""
    return tuple(bool(saving[first + i, o, options[i + 1]] > 0) for i, o in enumerate(options[:-1])) + (False,)


def chain_seconds(seconds: np.ndarray, saving: np.ndarray, first: int, options) -> float:
    """Seconds of a given chain of options over segments first, first + 1, ...: their seconds less
    the savings of the boundaries it keeps."""
    total = sum(float(seconds[first + i, o]) for i, o in enumerate(options))
    return total - sum(float(saving[first + i, o, options[i + 1]]) for i, o in enumerate(options[:-1]))
