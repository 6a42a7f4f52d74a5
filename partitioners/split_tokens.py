"""Sequence (token) split of a transformer block (issue 19): split kind "attn-tokens".

A transformer block on (1, T, C) rows is token-wise except where attention mixes tokens: part p takes
tokens [t0, t1) and runs the block in two phases with one exchange between them:

- phase A: its rows of the Q/K/V projection(s) and everything the converter writes before the first
  BATCH_MATMUL (the reshape into heads, transposes, the Q/K/V slices, a scale), on its t1 - t0 rows;
- exchange: the key-side tensors (what a BATCH_MATMUL reads as its right operand: K, and V) are
  all-gathered along their token axis (cluster.split_exec: each rank sends its rows to every other
  rank, peer to peer; Q never moves);
- phase B: the attention of its queries against all keys (scores (t1 - t0) x T, softmax over the keys,
  context), the output projection, and the token-wise followers: the residual add (its rows of the
  block input), LayerNorm, the MLP (FC, GELU, FC), the second residual add.

The parts' outputs are their rows of the block output, gathered to the root (a concat merge; an output
whose tokens sit on axis 0, litert-torch's (T, C) before the output projection's RESHAPE, is put together
on axis 0 over the whole shape: cluster.split_exec.TokenPhases). Every part holds every weight of the
block: the split trades weights for activations, so it pays where T is long against C (and on fast links).
`pisplit split` runs the whole block by default (attention, residual, LayerNorm, MLP on the part's rows);
the planner prices the kind through the attention block's output projection, where attn-heads stops
(split_costs.SplitCatalogue), leaving the MLP's FC layers to their own segments (fc-output -> fc-input).
Costs: a part's rows of its inputs and outputs, all the block's weights, and its rows of K and V once
more as received (the all-gather as the root's interface sees it: it receives every other part's rows).

Recognising a block is a trace of where the tokens go (as split_heads traces heads): the projection
output's row axis is the token factor (label "tokens"); reshapes regroup factors without cutting it,
transposes permute it, slices and softmax must not cut or normalise over it, element-wise ops take
scalar constants; a BATCH_MATMUL whose right operand carries tokens turns that operand key-side
(label "keys": all T rows in phase B) and must keep the left operand's tokens as its output rows.
Followers after the output projection are dense, layer_norm, activations and element-wise ops whose
other operands are (1, T, ...) row tensors (fed as rows) or constants without a token axis; the
segment ends at the last follower whose intermediate tensors nothing outside reads.

Not covered: a block whose input holds the sequence on axis 0 ((T, C) rows, torch's batch_first=False:
KWS's first block, Swin's windows; attn-heads splits those), windowed attention whose reshape cuts the
token factor (Swin, MaxViT), blocks reading other tensors from before them, int8 blocks.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from layers.errors import PisplitError
from layers.graph import DTYPE_BYTES, Graph
from layers.ops import numel

from .split_heads import MAX_BLOCK_NODES, _elementwise, _labelled, _NotAttention, _regroup, _slice_ranges, attention_block
from .split_parts import Layout, PartBuilder, PartPlan, full_box

TOKENS_KIND = "attn-tokens"
TOK = "tokens"  # a part's own rows (queries, and everything token-wise)
KEY = "keys"  # all T rows, gathered (keys and values in phase B)
ACTIVATIONS = ("gelu", "relu", "relu6", "sigmoid", "tanh", "dropout", "leaky_relu")
FOLLOWER_OPS = ("dense", "layer_norm", "add", "sub", "mul", "reshape") + ACTIVATIONS
MAX_FOLLOWERS = 16


@dataclass(frozen=True)
class TokenBlock:
    """A transformer block over nodes [start, stop) on `tokens` rows: phase A nodes (token-wise, before the
    first BATCH_MATMUL), phase B nodes (attention and followers), the key-side tensors gathered between."""

    start: int
    stop: int
    tokens: int
    x: str  # the projection input
    phase_a: tuple  # node indices
    phase_b: tuple
    keys: tuple  # phase A tensors gathered for phase B: (tensor, token axis)
    factors: Mapping = field(repr=False, compare=False)  # tensor -> per-axis ((label, size), ...)


def _dims(factors, sizes: Mapping) -> list[int]:
    return [math.prod(sizes.get(lab, s) for lab, s in axis) for axis in factors]


def _has(factors, label: str) -> bool:
    return any(lab == label for axis in factors for lab, _ in axis)


def _token_axis(factors) -> int | None:
    """The axis holding the token factor alone (with size-1 factors at most), else None."""
    for a, axis in enumerate(factors):
        if any(lab in (TOK, KEY) for lab, _ in axis):
            return a if [f for f in axis if f[1] != 1] == [f for f in axis if f[0] in (TOK, KEY)] else None
    return None


def _rows_factors(shape) -> list:
    return [((None, 1),), ((TOK, int(shape[1])),)] + [((None, int(s)),) for s in shape[2:]]


def _relabel(factors, old: str, new: str) -> list:
    return [tuple((new if lab == old else lab, s) for lab, s in axis) for axis in factors]


def _matmul(node, a, b, shape) -> list:
    a, b = list(a), list(b)
    if node.attrs.get("adj_x"):
        a[-1], a[-2] = a[-2], a[-1]
    if node.attrs.get("adj_y"):
        b[-1], b[-2] = b[-2], b[-1]
    if a[-1] != b[-2] or any(_has([f], TOK) for f in (a[-1], b[-1])) or _has(a[:-2] + b[:-2], TOK) or _has(a[:-2] + b[:-2], KEY):
        raise _NotAttention(f"batch_matmul {node.name} does not multiply queries by keys")
    lead_rank = len(shape) - 2
    pa = [((None, 1),)] * (lead_rank - len(a[:-2])) + a[:-2]
    pb = [((None, 1),)] * (lead_rank - len(b[:-2])) + b[:-2]
    lead = []
    for fa, fb in zip(pa, pb):
        lead.append(fb if math.prod(s for _, s in fa) == 1 else fa)
        if math.prod(s for _, s in fa) != 1 and math.prod(s for _, s in fb) != 1 and math.prod(s for _, s in fa) != math.prod(s for _, s in fb):
            raise _NotAttention(f"batch_matmul {node.name} does not broadcast")
    return lead + [a[-2], b[-1]]


def _trace(graph: Graph, start: int, stop_hint: int, last: int | None) -> TokenBlock:
    first = graph.nodes[start]
    x = first.inputs[0]
    shape = graph.shapes[x]
    if len(shape) != 3 or shape[0] != 1 or shape[1] < 2:
        raise _NotAttention(f"its input {x!r} {shape} is not (1, tokens, channels) rows")
    tokens = int(shape[1])
    fac: dict[str, list] = {x: _rows_factors(shape)}
    phase_b: set[int] = set()
    b_tensors: set[str] = set()
    keys: dict[str, None] = {}
    order = []
    j = start
    end = min(len(graph.nodes), start + MAX_BLOCK_NODES + MAX_FOLLOWERS)
    candidates = []
    while j < end:
        node = graph.nodes[j]
        in_block = j < stop_hint
        if node.attrs.get("quantized") or len(node.outputs) != 1:
            if in_block:
                raise _NotAttention(f"node {node.name} ({node.op}) cannot be part of a token split")
            break
        if not in_block and node.op not in FOLLOWER_OPS:
            break
        ins = []
        ok = True
        for t in node.inputs:
            if t in fac:
                ins.append(fac[t])
            elif not in_block and graph.shapes.get(t, ())[:2] == (1, tokens) and t not in graph.outputs:
                ins.append(_rows_factors(graph.shapes[t]))
            else:
                ok = False
        if not ok or (node.inputs and not any(t in fac for t in node.inputs)):
            if in_block:
                raise _NotAttention(f"node {node.name} reads a tensor from outside the block")
            break
        out = node.outputs[0]
        oshape = graph.shapes[out]
        try:
            if node.op == "constant" and in_block:
                f = [((None, int(s)),) for s in oshape]
            elif node.op == "dense":
                *lead, lastf = ins[0]
                if _labelled(lastf) or (node.inputs[0] != x and _has(ins[0], KEY)):
                    raise _NotAttention(f"dense {node.name} mixes tokens")
                f = [tuple(a) for a in lead] + [((None, int(oshape[-1])),)]
            elif node.op == "reshape":
                f = _regroup(ins[0], oshape)
            elif node.op == "transpose":
                f = [ins[0][p] for p in node.attrs["perm"]]
            elif node.op in ACTIVATIONS:
                f = ins[0]
            elif node.op == "layer_norm":
                if _labelled(ins[0][-1]):
                    raise _NotAttention(f"layer_norm {node.name} normalises over tokens")
                f = ins[0]
            elif node.op == "strided_slice":
                sliced = []
                for axis, r in zip(ins[0], _slice_ranges(node, len(ins[0]))):
                    size = math.prod(s for _, s in axis)
                    if r is None or tuple(r) == (0, 1, size):
                        sliced.append(axis)
                    elif _labelled(axis):
                        raise _NotAttention(f"slice {node.name} cuts the tokens")
                    else:
                        sliced.append(((None, r[2]),) if r[2] != 1 else ())
                f = _regroup(sliced, oshape)
            elif node.op in ("mul", "add", "sub"):
                if "constant" in node.weight_shapes:
                    cshape = tuple(node.weight_shapes["constant"])
                    if numel(cshape) != 1 and not (in_block is False and numel(cshape) == cshape[-1] == oshape[-1]):
                        raise _NotAttention(f"{node.op} {node.name} takes a constant of shape {cshape}")
                    w = dict(node.weight_shapes)
                    del w["constant"]
                    from layers.graph import Node

                    stripped = Node(node.name, node.op, node.inputs, node.outputs, node.attrs, w)
                    f = _elementwise(graph, stripped, ins, oshape) if len(ins) > 1 else ins[0]
                else:
                    f = _elementwise(graph, node, ins, oshape)
            elif node.op == "softmax":
                axis = int(node.attrs.get("axis", -1))
                if _has([ins[0][axis]], TOK):
                    raise _NotAttention(f"softmax {node.name} normalises over the query tokens")
                f = ins[0]
            elif node.op == "batch_matmul":
                a, b = ins
                if _has(b, TOK):  # the right operand carries tokens: key-side, gathered
                    if node.inputs[1] in b_tensors or _token_axis(b) is None or len(graph.shapes[node.inputs[1]]) < 2:
                        raise _NotAttention(f"batch_matmul {node.name} reads keys laid out across axes")
                    keys[node.inputs[1]] = None
                    b = _relabel(b, TOK, KEY)
                if node.inputs[0] in keys or _has(a, TOK) and _token_axis(a) != len(a) - (1 if node.attrs.get("adj_x") else 2):
                    raise _NotAttention(f"batch_matmul {node.name} does not keep the queries as its rows")
                f = _matmul(node, a, b, oshape)
                phase_b.add(j)
            else:
                raise _NotAttention(f"node {node.name} ({node.op}) cannot be part of a token split")
        except _NotAttention:
            if in_block:
                raise
            break
        if any(t in b_tensors for t in node.inputs):
            phase_b.add(j)
        if j in phase_b:
            b_tensors.add(out)
        fac[out] = [tuple(a) for a in f]
        order.append(j)
        j += 1
        if j >= stop_hint:
            candidates.append(j)
        if last is not None and j > last:
            break
    if not keys:
        raise _NotAttention("no BATCH_MATMUL reads keys")
    for k in keys:
        if any(c in phase_b and graph.nodes[c].op != "batch_matmul" for c in graph.consumers(k)):
            raise _NotAttention(f"key-side tensor {k!r} is read by more than attention")
    stop = None
    for cand in reversed(candidates):
        if last is not None and cand != last + 1:
            continue
        out = graph.nodes[cand - 1].outputs[0]
        if _token_axis(fac[out]) not in (0, 1) or _has(fac[out], KEY):  # (1, T, ...) rows, or (T, ...) (batch-1 layouts)
            continue
        if all(t not in graph.outputs and all(start <= c < cand for c in graph.consumers(t))
               for i in range(start, cand - 1) for t in graph.nodes[i].outputs):
            stop = cand
            break
    if stop is None:
        raise _NotAttention("its tensors are read outside the block" if last is None else
                            f"it cannot end at {graph.nodes[last].name}")
    phase_a = tuple(i for i in range(start, stop) if i not in phase_b)
    if any(t in b_tensors for i in phase_a for t in graph.nodes[i].inputs):
        raise _NotAttention("a token-wise node reads attention output before the attention ends")
    return TokenBlock(start, stop, tokens, x, phase_a, tuple(i for i in range(start, stop) if i in phase_b),
                      tuple((k, _token_axis(_relabel(fac[k], TOK, KEY))) for k in keys), fac)


@functools.lru_cache(maxsize=4096)
def _token_block(graph: Graph, start: int, last: int | None) -> TokenBlock | str:
    node = graph.nodes[start]
    if node.op != "dense":
        return f"{node.name} is a {node.op} node, not a Q/K/V projection"
    if graph.quant:
        return "the model is quantized"
    attention = attention_block(graph, start)
    if attention is None:
        from .split_heads import why_not_attention

        return f"it starts no attention block ({why_not_attention(graph, start)})"
    try:
        return _trace(graph, start, attention.stop, last)
    except _NotAttention as exc:
        return str(exc)


def token_block(graph: Graph, start: int, last: int | None = None) -> TokenBlock | None:
    """The token-splittable block starting at dense node `start` (its first Q/K/V projection), or None."""
    found = _token_block(graph, start, last)
    return found if isinstance(found, TokenBlock) else None


def why_not_tokens(graph: Graph, start: int, last: int | None = None) -> str:
    found = _token_block(graph, start, last)
    return "it does" if isinstance(found, TokenBlock) else found


def scatter_tensors(graph: Graph, start: int, stop: int) -> int:
    """How many tensors a token split of nodes [start, stop) scatters: those live before `start` that
    the nodes read (a pre-norm block: the LayerNorm's output and the residual rows). cluster.split_exec
    moves each as a Transfer of its own, so each remote part receives one message per tensor, each
    paying a link latency (the emulated link charges it per message)."""
    live = set(graph.cut_tensors(start))
    return len({t for node in graph.nodes[start:stop] for t in node.inputs if t in live})


# --- parts -------------------------------------------------------------------------------------------

def _part_node(b: PartBuilder, graph: Graph, block: TokenBlock, j: int, names: dict, sizes: dict) -> None:
    node = graph.nodes[j]
    fac = block.factors
    attrs = dict(node.attrs)
    out_f = fac[node.outputs[0]]
    batch1 = bool(attrs.get("batch1"))  # a converter's node that moved the batch axis: shapes hold axis 0
    if node.op == "reshape":
        attrs["shape"] = _dims(out_f, sizes)[1:]
        if batch1:
            attrs["full_shape"] = _dims(out_f, sizes)
    elif node.op == "strided_slice":
        in_f = fac[node.inputs[0]]
        ranges = _slice_ranges(node, len(in_f))
        counts = [(r[2] if r is not None and tuple(r) != (0, 1, math.prod(s for _, s in f)) else _dims([f], sizes)[0])
                  for f, r in zip(in_f, ranges)]
        attrs["counts"] = counts if batch1 else counts[1:]
        attrs["out_shape"] = _dims(out_f, sizes) if batch1 else _dims(out_f, sizes)[1:]
    if batch1 and "axis0" in attrs:
        attrs["axis0"] = _dims(fac[node.inputs[0]], sizes)[0]
    boxes = {p: full_box(s) for p, s in node.weight_shapes.items()}
    names[node.outputs[0]] = b.node(node.name, node.op, [names[t] for t in node.inputs], attrs, node.name, boxes, node.outputs[0])


def plan_tokens(graph: Graph, block: TokenBlock, sizes_: tuple):
    """Per part p (tokens sum(sizes[:p]) + [0, sizes[p])): (phase A plan, phase B plan, combined plan).

    Phase A's feeds are its rows of the projection input; its outputs the key-side tensors (its rows)
    and the query-side ones phase B reads. Phase B's feeds are those query-side tensors (by name), the
    gathered key-side tensors (name@all, all rows) and its rows of other segment inputs."""
    keys = dict(block.keys)
    b_set = set(block.phase_b)
    made = {t for i in range(block.start, block.stop) for t in graph.nodes[i].outputs}
    out_name = graph.nodes[block.stop - 1].outputs[0]
    out_shape = graph.shapes[out_name]
    a_outputs = [t for i in block.phase_a for t in graph.nodes[i].outputs if t in keys or any(c in b_set for c in graph.consumers(t))]
    parts = []
    t0 = 0
    for p, tp in enumerate(sizes_):
        sizes = {TOK: tp, KEY: block.tokens}
        rows = (t0, t0 + tp)

        def rows_box(t):
            return (rows, *full_box(graph.shapes[t][2:]))

        # phase A
        a = PartBuilder(p, tp)
        names: dict = {}
        for i in block.phase_a:
            for t in graph.nodes[i].inputs:
                if t not in made and t not in names:
                    names[t] = a.feed(t, t, rows_box(t))
            _part_node(a, graph, block, i, names, sizes)
        a_feeds = tuple(a.feeds)
        # phase B
        bb = PartBuilder(p, tp)
        bnames: dict = {}
        for i in block.phase_b:  # rows of segment inputs first: engines read a frame off the first input
            for t in graph.nodes[i].inputs:
                if t not in made and t not in bnames:
                    bnames[t] = bb.feed(t, t, rows_box(t))
        for t in a_outputs:
            if t in keys:
                shape = _dims(_relabel(block.factors[t], TOK, KEY), sizes)
                bnames[t] = bb.feed(f"{t}@all", t, full_box(shape[1:]), shape[0])
            else:
                bnames[t] = bb.feed(t, t, full_box(a.shapes[t][1:]), a.shapes[t][0])
        for i in block.phase_b:
            _part_node(bb, graph, block, i, bnames, sizes)
        ext_b = tuple(f for f in bb.feeds if f.tensor not in made)
        out_axis = _token_axis(block.factors[out_name])
        # where the part's rows go in the merged output; an output with the tokens on axis 0 ((T, C), a batch-1
        # layout) has no box after the batch axis: its parts are put together on axis 0 (TokenSplit.merge)
        out_box = rows_box(out_name) if out_axis == 1 else full_box(out_shape[1:])
        plan_b = bb.finish(out_name, out_box)
        plan_a = PartPlan(p, tp, a_feeds, tuple(a.nodes), a_outputs[0], a.shapes[a_outputs[0]], (), a.flops, a.weight_params * DTYPE_BYTES)
        feeds = {f.name: f for f in a_feeds + ext_b}
        combined = PartPlan(p, tp, tuple(feeds.values()), tuple(a.nodes) + tuple(bb.nodes), out_name,
                            plan_b.output_shape, out_box, a.flops + bb.flops,
                            (a.weight_params + bb.weight_params) * DTYPE_BYTES)
        parts.append((plan_a, plan_b, combined))
        t0 += tp
    return parts, tuple(a_outputs)


def split_tokens(graph: Graph, start: int, sizes, last: str | None, split_class):
    """The token split of the block starting at node `start` (see the module), as an instance of a
    subclass of `split_class` (partitioners.splits.Split)."""
    from .split_sizes import resolve_sizes

    layer = graph.nodes[start].name
    last_i = graph.node_index(last) if last is not None else None
    block = token_block(graph, start, last_i)
    if block is None:
        raise PisplitError(f"layer {layer}: {TOKENS_KIND} needs a transformer block starting at this projection "
                           f"({why_not_tokens(graph, start, last_i)})")
    sizes_ = tuple(resolve_sizes(block.tokens, sizes, layer, "tokens"))
    phases, a_outputs = plan_tokens(graph, block, sizes_)
    layout = Layout(tuple(c for _, _, c in phases), "concat", None)
    cls = token_split_class(split_class)
    return cls(graph, TOKENS_KIND, layer, block.start, block.stop, sizes_, layout, {}, block=block,
               phases=tuple((a, b) for a, b, _ in phases), a_outputs=a_outputs)


def _token_split_class(Split):
    @dataclass(frozen=True)
    class TokenSplit(Split):
        """An attn-tokens Split: parts run phase A, all-gather the key-side tensors, run phase B; their
        outputs are their rows of the block output (merge 'concat')."""

        block: TokenBlock | None = field(default=None, repr=False, compare=False)
        phases: tuple = field(default=(), repr=False, compare=False)
        a_outputs: tuple = field(default=(), repr=False, compare=False)

        def key_rows(self, p: int) -> dict:
            """{key-side tensor: (token axis, (start, stop), whole shape)} of part p; axis 0 may be a data
            axis (a converter's batch-1 layout, e.g. (heads, head dim, tokens)), so exchanges carry the
            whole shape behind a leading axis of one."""
            t0 = sum(self.sizes[:p])
            out = {}
            for t, axis in self.block.keys:
                shape = _dims(_relabel(self.block.factors[t], TOK, KEY), {KEY: self.block.tokens})
                out[t] = (axis, (t0, t0 + self.sizes[p]), tuple(shape))
            return out

        @property
        def output_axis(self) -> int:
            """The output's token axis: 1 for (1, T, ...) rows, 0 for a batch-1 layout's (T, ...)."""
            return _token_axis(self.block.factors[self.output])

        def output_rows(self, p: int) -> tuple:
            """(token axis, (start, stop), whole output shape) of part p's output rows."""
            t0 = sum(self.sizes[:p])
            return self.output_axis, (t0, t0 + self.sizes[p]), tuple(self.output_shape)

        def merge(self, outputs):
            """The parts' rows put together on the output's token axis (frames on axis 0 for (1, T, ...) rows)."""
            if len(outputs) != self.n_parts:
                raise PisplitError(f"layer {self.layer}: merge needs {self.n_parts} part outputs, got {len(outputs)}")
            for p, o in zip(self.parts, outputs):
                if np.shape(o)[1:] != p.output_shape[1:]:
                    raise PisplitError(f"layer {self.layer}: part {p.index} output has shape {np.shape(o)}, expected {p.output_shape}")
            return np.concatenate([np.asarray(o, np.float32) for o in outputs], axis=self.output_axis)

        def exchange_bytes(self, p: int) -> int:
            """Bytes of part p's rows of the key-side tensors (what it sends each other part)."""
            return sum(numel(shape) // self.block.tokens * (b - a) for _, (a, b), shape in self.key_rows(p).values()) * DTYPE_BYTES

        def cost(self, output_to: str = "root"):
            """Split.cost, with the all-gather priced as the lead's interface sees it: each remote
            part's rows of the key-side tensors counted once more as received (their sum is what
            the lead receives; every part sends its rows to each other part at the same time)."""
            from dataclasses import replace

            base = super().cost(output_to)
            parts = tuple(replace(c, recv_bytes=c.recv_bytes + self.exchange_bytes(c.index)) for c in base.parts)
            return replace(base, parts=parts, input_pattern="scatter")

        @property
        def input_pattern(self) -> str:
            return "scatter"

        def phase_graph(self, index: int, phase: str, weights: Mapping | None = None) -> Graph:
            """Phase 'a' or 'b' of part `index` as a Graph (phase a's outputs: a_outputs)."""
            plan_a, plan_b = self.phases[self._part(index).index]
            plan = plan_a if phase == "a" else plan_b
            outputs = list(self.a_outputs) if phase == "a" else [plan_b.output]
            return self._graph_with(plan, f"part{index}{phase}", weights, outputs)

        def part_graph(self, index: int, weights: Mapping | None = None) -> Graph:
            """Both phases of part `index` as one Graph whose inputs also hold the gathered key-side
            tensors (name@all): what one part computes, for profiling and inspection."""
            plan = self._part(index)
            plan_b = self.phases[index][1]
            gathered = tuple(f for f in plan_b.feeds if f.name.endswith("@all"))
            whole = PartPlan(plan.index, plan.size, plan.feeds + gathered, plan.nodes, plan.output, plan.output_shape,
                             plan.output_box, plan.flops, plan.weight_bytes)
            return self._graph_with(whole, f"part{index}", weights, [plan.output])

        def _graph_with(self, plan, suffix, weights, outputs) -> Graph:
            g = self._graph_of(plan, suffix, weights)
            return Graph(g.name, g.inputs, g.nodes, outputs, g.weights, g.meta)

        def run(self, x, engine: str = "numpy") -> np.ndarray:
            """Every part's phase A, the key-side rows put together, every part's phase B, merged."""
            from layers.engine import make_engine

            feeds = [self.slice_input(x, p) for p in range(self.n_parts)]
            n = next(iter(feeds[0].values())).shape[0]
            graphs = [(self.phase_graph(p, "a"), self.phase_graph(p, "b")) for p in range(self.n_parts)]
            engines = [(make_engine(ga, engine), make_engine(gb, engine)) for ga, gb in graphs]
            axes = {t: self.key_rows(0)[t][0] for t, _ in self.block.keys}
            outputs = []
            for i in range(n):
                a_out = [ea.run({f.name: feeds[p][f.name][i:i + 1] for f in self.phases[p][0].feeds})
                         for p, (ea, _) in enumerate(engines)]
                gathered = {f"{t}@all": np.concatenate([o[t] for o in a_out], axis=axis) for t, axis in axes.items()}
                frame = []
                for p, (_, eb) in enumerate(engines):
                    g = graphs[p][1]
                    fb = {k: (gathered[k] if k in gathered else a_out[p][k] if k in a_out[p] else feeds[p][k][i:i + 1])
                          for k in g.inputs}
                    frame.append(eb.run(fb)[g.outputs[0]])
                outputs.append(frame)
            return self.merge([np.concatenate([o[p] for o in outputs]) for p in range(self.n_parts)])

    return TokenSplit


@functools.cache
def token_split_class(split_class):
    """The Split subclass of attn-tokens, made from partitioners.splits.Split (passed in by splits)."""
    return _token_split_class(split_class)
