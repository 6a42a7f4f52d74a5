"""Every way to run every segment in a split stage, for one stage's device slots, as numpy arrays.

Row s is planner segment s (split_costs.SplitCatalogue.segments), column o an option
(table_columns): 0 runs the segment unsplit on the lead, 1.. split it with PLANNER_KINDS[o - 1]
across all slots, later 'subset' columns with a kind across the stage's first k slots only; part
sizes weighted by device speed. Arrays hold per-frame compute and communication seconds and per-slot
weight and working-set bytes; an option that does not apply has infinite seconds. One table per set
of slots serves both the dp planner (all stage ranges at once) and CostModel.stage_cost (one range).

A part's compute is the split nodes' time on its device scaled by what the latency model predicts
for the part against the whole (its FLOPs share plus what a small part loses to fixed costs), plus
what the lead's profile measured a part of the kind to cost beyond that share (profiles'
split_overhead: an engine call of its own, slower kernels and each node's fixed costs at a part's
size, and the weights it streams beyond its share: a 1-row strip of a conv packs the whole filter);
the lead's network interface sends each remote part its input and receives its output one after the
other (`comm_in_s` and `comm_out_s`, their sum `comm_s`; the first outputs come in while the lead still
scatters: gather_after_scatter); the lead sums partial outputs (reduce
kinds, in `compute_s`) and runs the segment's nodes the split leaves.

Consecutive split segments may keep a tensor on their parts instead (partitioners.segment_chains):
`kept_s[b, o, o']` is the transition that replaces out(b, o) + in(b + 1, o'), `saving` what it saves.

Fused spans (split_costs.span_kind: fused-tiles over a segment and the d after it) take columns after
the kinds, as states of the chain: F_d at the span's first segment holds all of its compute, the
scatter of its input, its weights and working set; C_k at a segment inside it, k segments before its
end, holds nothing but, at the last one (C_0), the gather of the span's output (the same for every
span ending there: one tensor in the same rows). A chain may only go F_d -> C_(d-1) -> ... -> C_0,
and from C_0 or a kind's column on to a kind or a span: `allowed[b, o, o']`; it may not start inside
a span (`start_ok`) nor stop before a span's end (`end_ok`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from .latency_model import node_bytes, op_key, overhead_key, weight_term
from .segment_chains import kept_table, savings
from .segment_columns import EXCHANGE, OPTION_KINDS, table_columns  # the columns' home (importable from here as before)
from .split_costs import FUSED, span_kind, token_span_kind, token_span_length
from .vocabulary import NO_SPLIT, SplitKind


def column_parts(column: tuple, slots: int) -> int:
    """How many of a stage's `slots` a column's split uses (1 for 'none')."""
    kind, role, d = column
    return 1 if kind == NO_SPLIT else d if role == "subset" else slots


@dataclass(frozen=True)
class SegmentTable:
    """Options of every segment for one stage's slots (see the module docstring)."""

    slots: tuple
    compute_s: np.ndarray  # (segments, options)
    comm_in_s: np.ndarray  # (segments, options): the lead sends the remote parts their inputs
    comm_out_s: np.ndarray  # (segments, options): ... and receives their outputs (or partial sums)
    weight_bytes: np.ndarray  # (segments, options, slots)
    work_bytes: np.ndarray  # (segments, options, slots)
    split_stop: np.ndarray  # (segments, options): end of the split part of the segment
    sizes: dict  # (segment, option) -> part sizes
    kept_s: np.ndarray  # (segments - 1, options, options): kept transition seconds, inf where not legal
    saving: np.ndarray  # (segments - 1, options, options): what keeping saves (0: not kept; -inf: not allowed)
    columns: tuple = tuple((k, "kind", 0) for k in OPTION_KINDS)  # table_columns
    inner_s: np.ndarray | None = None  # (segments, options): an exchange span's transitions between its own segments
    start_ok: np.ndarray | None = None  # (options,): a chain may start in this column (None: every one)
    end_ok: np.ndarray | None = None  # (options,): a chain may end in this column (None: every one)

    @cached_property
    def comm_s(self) -> np.ndarray:
        return self.comm_in_s + self.comm_out_s

    @cached_property
    def seconds(self) -> np.ndarray:
        seconds = self.compute_s + self.comm_s
        return seconds if self.inner_s is None else seconds + self.inner_s


@lru_cache(maxsize=4096)
def _sizes(extent: int, weights: tuple) -> tuple | None:
    from .split_sizes import proportional_sizes

    return tuple(proportional_sizes(extent, list(weights))) if len(weights) <= extent else None


def build_segment_table(model, slots: tuple) -> SegmentTable:
    """The SegmentTable of `model` (a CostModel) for a stage whose ranks are of classes `slots`."""
    segments = model.splits.segments
    columns = table_columns(model.splits.max_span, len(slots))
    n_seg, n_opt, m = len(segments), len(columns), len(slots)
    starts = np.array([a for a, _ in segments])
    stops = np.array([b for _, b in segments])
    lead = slots[0]
    pre = model.prefix_seconds
    compute = np.full((n_seg, n_opt), np.inf)
    comm_in = np.zeros((n_seg, n_opt))
    comm_out = np.zeros((n_seg, n_opt))
    weights = np.zeros((n_seg, n_opt, m))
    work = np.zeros((n_seg, n_opt, m))
    split_stop = np.tile(stops[:, None], (1, n_opt))
    seg_work = model.segment_work_max
    compute[:, 0] = pre[lead, stops] - pre[lead, starts]
    weights[:, 0, 0] = model.prefix_weights[stops] - model.prefix_weights[starts]
    work[:, 0, 0] = seg_work
    sizes: dict = {}
    overlap = np.zeros((n_seg, n_opt))  # gather seconds that come in while the lead still scatters (gather_after_scatter)
    if m >= 2:
        speed = tuple(1.0 / model.classes[k].seconds_scale for k in slots)
        slot_arr = np.array(slots)
        scales = np.array([model.classes[k].seconds_scale for k in slots])
        profile, _ = model.calibration.resolve(model.classes[lead].kind)
        add_fit = profile.latency.fit_for("add")
        link_latency, bits = model.cluster.link_latency_s, 8.0 / model.cluster.link_bandwidth_bps
        for o, (kind, role, d) in enumerate(columns):
            if role in ("inside", "xspan") or kind == NO_SPLIT:
                continue
            kind_rows = kind_arrays(model, (span_kind(d) if kind == FUSED else token_span_kind(d)) if role == "span" else kind, profile)
            if kind_rows is None:
                continue
            parts = column_parts(columns[o], m)
            # sizes depend only on the axis length and the speeds: one proportional split per length
            lengths, inverse = np.unique(kind_rows["extent"], return_inverse=True)
            per_length = [_sizes(int(e), speed[:parts]) for e in lengths]
            keep = np.array([per_length[i] is not None for i in inverse])
            if not keep.any():
                continue
            sel = {key: v[keep] for key, v in kind_rows.items()}
            rows_arr = sel["rows"]
            size = np.array([per_length[i] for i in inverse[keep]], dtype=float)  # (rows, parts)
            for r, part_sizes in zip(rows_arr.tolist(), size.astype(int).tolist()):
                sizes[(r, o)] = tuple(part_sizes)
            q = sel["fixed"][:, None, :] + sel["per_unit"][:, None, :] * size[:, :, None]  # (rows, parts, [flops, weights, recv, send])
            q[:, 0, :] += sel["first"]
            q[:, -1, :] += sel["last"]
            q = np.maximum(q, 0.0)
            s_stop = sel["stop"]
            s_start = starts[rows_arr]
            fit, whole_pred, whole_flops = sel["fit"], sel["whole_pred"], sel["whole_flops"]
            pred = fit[:, 0:1] + fit[:, 1:2] * q[..., 0] + fit[:, 2:3] * (q[..., 1] + q[..., 2] + q[..., 3])
            share = np.where(whole_pred[:, None] > 0, pred / np.where(whole_pred > 0, whole_pred, 1.0)[:, None],
                             q[..., 0] / whole_flops[:, None])
            base = (pre[slot_arr[:parts]][:, s_stop] - pre[slot_arr[:parts]][:, s_start]).T  # (rows, parts)
            # what a part costs beyond its share (its own engine call, fixed costs at its size), in
            # the lead profile's seconds, on each part's device
            # (a span's: fused-tiles', or attn-tokens' through its block; fc kinds over token rows: their own)
            overhead = profile.split_overhead_rows(kind, model.graph, s_start)
            fixed = overhead["per_step_s"] + overhead["per_node_s"] * (s_stop - s_start)
            # and the weights it streams beyond its share (a thin strip's conv packs the whole filter
            # for a few rows: latency_model.weight_term), at the profile's cost per byte
            streamed = _per_weight_byte_s(profile, kind, model.graph, s_start)[:, None] * weight_term(q[..., 1], share)
            part_compute = (base * (share * (1.0 + overhead["per_share"][:, None]) + overhead["per_whole"][:, None])
                            + (fixed[:, None] + streamed) * scales[:parts][None, :]).max(axis=1)
            remote = q[:, 1:, 2:4]
            part_comm = np.where(remote > 0, link_latency + remote * bits, 0.0).sum(axis=1)  # (rows, [in, out])
            if kind == SplitKind.ATTN_TOKENS:
                # the all-gather's messages as the lead receives them: each key-side tensor from each
                # remote part, one link latency each (their bytes are in the parts' recv bytes)
                part_comm[:, 0] += link_latency * (parts - 1) * _key_tensors(model.graph, s_start)
                # and its scatter: one message per input tensor to each remote part (a pre-norm block
                # reads two: the LayerNorm's output and the residual rows), priced above as one
                part_comm[:, 0] += link_latency * (parts - 1) * (_scatter_tensors(model.graph, s_start, s_stop) - 1.0)
            if role in ("kind", "subset") and kind != SplitKind.ATTN_TOKENS:  # (a token split's parts meet at the all-gather)
                overlap[rows_arr, o] = part_comm[:, 1] - gather_after_scatter(np.where(remote > 0, link_latency + remote * bits, 0.0))
            merge = sel["merge"] * (parts - 1)
            if add_fit is not None:
                part_compute += np.where(merge > 0, add_fit.predict(merge, 12.0 * merge), 0.0) * model.classes[lead].seconds_scale
            seg_stop = s_stop if role == "span" else stops[rows_arr]  # a span ends where its last segment does
            part_compute += pre[lead, seg_stop] - pre[lead, s_stop]
            compute[rows_arr, o] = part_compute
            comm_in[rows_arr, o] = part_comm[:, 0]
            # held for the whole run, like weights: each part's weight slices and the input boxes its
            # runner keeps from frame to frame (cluster.split_exec's feed buffers; its message
            # buffers are halos where strips are kept, and counted in the working set where not)
            w = q[..., 1] + q[..., 2]
            w[:, 0] += model.prefix_weights[seg_stop] - model.prefix_weights[s_stop]
            weights[rows_arr, o, :parts] = w
            work[rows_arr, o, 0] = _span_work(model, s_start, s_stop) if role == "span" else seg_work[rows_arr]
            # a remote part's working set: its messages in and out, and its share of the im2col
            # buffer (all of it for channel kinds: every output channel reads every patch)
            scratch = sel["scratch"][:, None] * (1.0 if kind in (SplitKind.CONV_CHANNEL, SplitKind.FC_OUTPUT) else size[:, 1:] / size.sum(axis=1, keepdims=True))
            work[rows_arr, o, 1:parts] = remote.sum(axis=2) + scratch
            split_stop[rows_arr, o] = s_stop
            if role != "span":
                comm_out[rows_arr, o] = part_comm[:, 1]
                continue
            # the span's inside columns: nothing to pay but, at its last segment, the gather
            for r, out_s in zip(rows_arr.tolist(), part_comm[:, 1].tolist()):
                for k in range(d):
                    c = columns.index((kind, "inside", k))
                    seg = r + d - k
                    compute[seg, c] = 0.0
                    split_stop[seg, c] = stops[r + d]
                    if k == 0:
                        comm_out[seg, c] = out_s
                        sizes.setdefault((seg, c), sizes[(r, o)])
    inner = _exchange_spans(model, tuple(slots), columns, compute, comm_in, comm_out, weights, work, split_stop, sizes) if m >= 2 else None
    kept = kept_table(model, tuple(slots), sizes, n_opt)
    comm_out -= np.where(_never_kept_into(kept, n_seg), overlap, 0.0) if len(kept) else overlap
    allowed = allowed_moves(columns, n_seg)
    saving = savings(kept, comm_in, comm_out)
    start_ok = np.array([role != "inside" for _, role, _ in columns])
    end_ok = np.array([role in ("kind", "subset") or (role == "inside" and d == 0) for (_, role, d) in columns])
    return SegmentTable(tuple(slots), compute, comm_in, comm_out, weights, work, split_stop, sizes, kept,
                        np.where(allowed, saving, -np.inf) if allowed is not None else saving, columns,
                        start_ok=start_ok if allowed is not None else None, end_ok=end_ok if allowed is not None else None,
                        inner_s=inner)


def _per_weight_byte_s(profile, kind: str, graph, starts: np.ndarray) -> np.ndarray:
    """SplitOverhead.per_weight_byte_s of each `kind` split starting at the nodes `starts`, from the
    figures Profile.split_overhead_rows prices the split's other terms with (its overhead_key's,
    else the kind's, else the fit over all kinds)."""
    fits = profile.split_overhead
    return np.array([(fits.get(overhead_key(kind, graph, int(a))) or profile.split_overhead_for(kind)).per_weight_byte_s
                     for a in np.asarray(starts).tolist()], dtype=float)


def _key_tensors(graph, starts: np.ndarray) -> np.ndarray:
    """How many key-side tensors (K, V: partitioners.split_tokens.TokenBlock.keys) the token split of the
    block at each of `starts` all-gathers: messages from each part to every other."""
    from .split_tokens import token_block

    return np.array([len(block.keys) if (block := token_block(graph, int(a))) is not None else 0
                     for a in np.asarray(starts).tolist()], dtype=float)


def _scatter_tensors(graph, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """How many tensors the token split of nodes [start, stop) scatters, per row (at least one:
    partitioners.split_tokens.scatter_tensors)."""
    from .split_tokens import scatter_tensors

    return np.array([max(1, scatter_tensors(graph, int(a), int(b))) for a, b in zip(np.asarray(starts).tolist(), np.asarray(stops).tolist())],
                    dtype=float)


def _never_kept_into(kept: np.ndarray, n_seg: int) -> np.ndarray:
    """(segments, options): True where no chain can keep the segment's input on its parts (no kept
    transition from the segment before): its lead always scatters, so its gather overlaps the scatter
    (gather_after_scatter). Where a kept input may start the parts together, the gather is priced whole
    (a kept output drops the gather, overlap and all)."""
    out = np.ones((n_seg, kept.shape[-1]), dtype=bool)
    out[1:] = ~np.isfinite(kept).any(axis=1)
    return out


def gather_after_scatter(each: np.ndarray) -> np.ndarray:
    """What the lead's gather adds once its scatter is done, (rows,), from each remote part's (input,
    output) transfer seconds (rows, remote parts, 2) in the order the lead sends and receives them.

    The lead sends the parts their inputs one after the other and computes its own part meanwhile; a
    part starts when its input is in, and the lead's interface takes their outputs one after the
    other, each as soon as it is ready (full duplex: receiving while it still sends; cluster.emulation).
    With the parts' compute equal (the sizes are proportional to the devices' speeds), the last output is
    in at the compute plus the longest chain of transfers, the inputs up to some part i and the
    outputs from i on:

        transfers = max over i of (in_1 + ... + in_i) + (out_i + ... + out_last)

    (a two-machine flow shop), so the gather adds that less the scatter. Summing every input and every
    output instead priced ViT-B/16's head-parallel blocks on 4 Pi 3B+ at 94 Mbit/s at 311 ms of transfer
    against 209 ms emulated (4 of 6 transfers of 52 ms: the first outputs come in while the lead still
    sends the last inputs)."""
    if each.shape[1] == 0:
        return np.zeros(each.shape[0])
    sent = np.cumsum(each[:, :, 0], axis=1)
    received = np.cumsum(each[:, ::-1, 1], axis=1)[:, ::-1]
    return (sent + received).max(axis=1) - sent[:, -1]


def _exchange_spans(model, slots, columns, compute, comm_in, comm_out, weights, work, split_stop, sizes) -> np.ndarray | None:
    """Fill the xspan columns X_d of every exchange span: its segments' conv-spatial options summed
    (compute, weights; the largest working set), the lead's scatter of what the span reads from
    before it (every box of it any of its segments reads) as comm_in, the gather at its end on
    C_0; returns inner_s, the transitions between its own segments (each segment's inputs from the
    parts of the segment in the span that made them, peer to peer)."""
    from .segment_chains import exchange_transitions

    if not any(role == "xspan" for _, role, _ in columns):
        return None
    inner = np.zeros_like(compute)
    cs = columns.index((EXCHANGE, "kind", 0))
    for s in range(len(compute)):
        for d in model.splits.exchange_spans(s):
            o = columns.index((EXCHANGE, "xspan", d))
            segs = range(s, s + d + 1)
            if any(not np.isfinite(compute[k, cs]) or (k, cs) not in sizes for k in segs):
                continue
            entry_s, inner_s = exchange_transitions(model, slots, s, d, [sizes[(k, cs)] for k in segs])
            compute[s, o] = sum(compute[k, cs] for k in segs)
            comm_in[s, o] = entry_s
            inner[s, o] = inner_s
            weights[s, o] = sum(weights[k, cs] for k in segs)
            work[s, o] = np.max([work[k, cs] for k in segs], axis=0)
            split_stop[s, o] = split_stop[s + d, cs]
            sizes[(s, o)] = sizes[(s, cs)]
            for k in range(d):  # the inside columns it goes through, and its gather at the end
                c = columns.index((FUSED, "inside", k))
                seg = s + d - k
                if not np.isfinite(compute[seg, c]):
                    compute[seg, c] = 0.0
                    split_stop[seg, c] = split_stop[seg, cs]
                    if k == 0:
                        comm_out[seg, c] = comm_out[seg, cs]
                        sizes[(seg, c)] = sizes[(seg, cs)]
    return inner


def _span_work(model, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """The lead's largest working set over nodes [start, stop) of each span (whole-tensor bound)."""
    return np.array([model.work_bytes[a:b].max() for a, b in zip(start.tolist(), stop.tolist())])


def allowed_moves(columns: tuple, n_seg: int) -> np.ndarray | None:
    """allowed[b, o, o']: whether a chain may go from column o at segment b to o' at b + 1 (module
    docstring); None when the table has no span columns (every move is allowed)."""
    if not any(role in ("span", "xspan", "inside") for _, role, _ in columns):
        return None
    n = len(columns)
    ok = np.zeros((n, n), dtype=bool)
    free = [i for i, (_, role, d) in enumerate(columns) if role in ("kind", "subset") or (role == "inside" and d == 0)]
    starts = [i for i, (_, role, _) in enumerate(columns) if role in ("kind", "subset", "span", "xspan")]
    ok[np.ix_(free, starts)] = True
    for i, (kind, role, d) in enumerate(columns):
        nxt = d - 1 if role in ("span", "xspan") else d - 1 if role == "inside" and d > 0 else None
        if nxt is not None:
            ok[i, columns.index((FUSED if kind == EXCHANGE else kind, "inside", nxt))] = True
    return np.broadcast_to(ok, (max(n_seg - 1, 0), n, n))


def kind_arrays(model, kind: str, profile) -> dict | None:
    """Per segment `kind` applies to: its affine part costs and latency-model figures as arrays
    (independent of the stage's devices, so computed once per kind and lead profile)."""
    key = (kind, id(profile))
    cache = model.__dict__.setdefault("_kind_arrays", {})
    if key in cache:
        return cache[key]
    d = token_span_length(kind)
    rows = model.split_rows(kind) if d is None else [s for s in range(len(model.splits.segments)) if d in model.splits.token_spans(s)]
    if not rows:
        cache[key] = None
        return None
    kc = [model.splits.kind_costs(s, kind) for s in rows]
    fits = [split_fit(profile, model.graph, model.splits.segments[s][0], k.stop) for s, k in zip(rows, kc)]
    cache[key] = {
        "rows": np.array(rows), "extent": np.array([k.extent for k in kc]), "stop": np.array([k.stop for k in kc]),
        "fixed": np.array([k.fixed for k in kc]), "per_unit": np.array([k.per_unit for k in kc]),
        "first": np.array([k.first_extra for k in kc]), "last": np.array([k.last_extra for k in kc]),
        "merge": np.array([k.merge_flops_per_part for k in kc]), "fit": np.array([f[:3] for f in fits]),
        "whole_pred": np.array([f[3] for f in fits]), "whole_flops": np.array([f[4] for f in fits]),
        "scratch": np.array([model.scratch_bytes[model.splits.segments[s][0]:k.stop].max() for s, k in zip(rows, kc)]),
    }
    return cache[key]


def split_fit(profile, graph, start: int, stop: int) -> tuple:
    """(fixed, per flop, per byte) of the primary op's latency fit, its prediction for the whole split
    nodes [start, stop), and their FLOPs: what part shares are measured against."""
    key = op_key(graph, start)
    fit = profile.latency.fit_for(key)
    flops = float(sum(graph.cost(t).flops for t in range(start, stop))) or 1.0
    nbytes = float(sum(node_bytes(graph, t) for t in range(start, stop)))
    if fit is None:
        return 0.0, 0.0, 0.0, 0.0, flops
    return fit.fixed_s, fit.per_flop_s, fit.per_byte_s, fit.predict(flops, nbytes), flops
