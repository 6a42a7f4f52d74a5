"""The graph IR: nodes in topological order over named tensors, with static shapes and lazy weights.

A `Graph` is a DAG: a node reads tensors produced by earlier nodes (or graph inputs) and writes its own
output tensors. Weights live in a mapping keyed "node/param" that may be lazy (seeded generation, an
.npz file, a .tflite buffer), so a process materialises only the weights of the nodes it runs.

Cuts: cut i lies between node i-1 and node i (cut 0 before the first node, cut n after the last).
The tensors live across a cut are what a pipeline stage boundary there must send.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import PisplitError
from .ops import numel, spec_of
from .quant import TensorQuant, parse_quant

log = logging.getLogger(__name__)

DTYPE_BYTES = 4  # float32 tensors and weights; quantized ones count their own dtype (Graph.tensor_bytes)


@dataclass
class Node:
    """One operation: `op` reads `inputs` (tensor names) and writes `outputs` (tensor names)."""

    name: str
    op: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    weight_shapes: dict = field(default_factory=dict)  # param -> shape

    def weight_key(self, param: str) -> str:
        """Key of one of this node's weights in the graph's weight mapping."""
        return f"{self.name}/{param}"


@dataclass(frozen=True)
class NodeCost:
    """Static costs of one node for one frame (batch 1). Bytes are float32 bytes."""

    flops: int
    weight_bytes: int
    params: int
    input_bytes: int
    output_bytes: int
    work_bytes: int
    scratch_bytes: int = 0  # of work_bytes, the kept im2col buffer (a rank holds the largest of its nodes')

    @property
    def peak_bytes(self) -> int:
        """Memory to execute the node: weights + inputs + outputs + working buffers."""
        return self.weight_bytes + self.input_bytes + self.output_bytes + self.work_bytes


class _QuantData(dict):
    """meta["quant"] as a Graph keeps it: the same plain data, carrying the TensorQuants parsed from it, so
    a graph made from this graph's meta (cluster.runtime.shard_graph: every rank's shard) shares them instead
    of parsing every per-channel scale again (issue 12: a ResNet50 int8 rank held its 55k scales twice as
    Python floats, 2.1 MiB). Changing the data drops them."""

    parsed = None

    def _changing(self):
        self.parsed = None

    def __setitem__(self, key, value):
        self._changing()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._changing()
        super().__delitem__(key)

    def pop(self, *args):
        self._changing()
        return super().pop(*args)

    def popitem(self):
        self._changing()
        return super().popitem()

    def clear(self):
        self._changing()
        super().clear()

    def update(self, *args, **kwargs):
        self._changing()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._changing()
        return super().setdefault(key, default)


def _shared_quant(meta: dict) -> dict:
    """parse_quant(meta), shared with the graphs made from the same meta["quant"] (_QuantData)."""
    raw = meta.get("quant")
    if isinstance(raw, _QuantData) and raw.parsed is not None:
        return raw.parsed
    parsed = parse_quant(meta)
    if isinstance(raw, Mapping) and raw:
        meta["quant"] = shared = _QuantData(raw)
        shared.parsed = parsed
    return parsed


class Graph:
    """A model: graph inputs, nodes in topological order, graph outputs, shapes and weights."""

    def __init__(
        self,
        name: str,
        inputs: Mapping[str, Sequence[int]],
        nodes: Sequence[Node],
        outputs: Sequence[str],
        weights: Mapping[str, np.ndarray] | None = None,
        meta: dict | None = None,
    ):
        self.name = name
        self.inputs = {k: tuple(int(s) for s in v) for k, v in inputs.items()}
        self.nodes = list(nodes)
        self.outputs = list(outputs)
        self.weights = weights if weights is not None else {}
        self.meta = dict(meta or {})
        # tensor name or weight key -> TensorQuant: int8 graphs (layers.quant); empty for float graphs
        self.quant: dict[str, TensorQuant] = _shared_quant(self.meta)
        self.shapes: dict[str, tuple] = dict(self.inputs)
        self.producer: dict[str, int] = {}
        self._index: dict[str, int] = {}
        self._infer()
        self._costs = [self._node_cost(i) for i in range(len(self.nodes))]
        self._last_use = self._compute_last_use()

    # --- construction checks -----------------------------------------------------------------------
    def _infer(self) -> None:
        for i, node in enumerate(self.nodes):
            if node.name in self._index:
                raise PisplitError(f"model {self.name}: node name {node.name!r} is used twice")
            self._index[node.name] = i
            spec = spec_of(node.op)
            for t in node.inputs:
                if t not in self.shapes:
                    raise PisplitError(f"model {self.name}: node {node.name} reads tensor {t!r}, which no earlier node produces")
            missing = [p for p in spec.params if p not in node.weight_shapes]
            if missing:
                raise PisplitError(f"model {self.name}: node {node.name} ({node.op}) lacks weights {missing}")
            try:
                outs = spec.infer([self.shapes[t] for t in node.inputs], node.attrs, node.weight_shapes)
            except PisplitError as exc:
                raise PisplitError(f"model {self.name}: node {node.name}: {exc}") from None
            if len(outs) != len(node.outputs):
                raise PisplitError(f"model {self.name}: node {node.name} makes {len(outs)} outputs, lists {len(node.outputs)}")
            for t, s in zip(node.outputs, outs):
                if t in self.shapes:
                    raise PisplitError(f"model {self.name}: tensor {t!r} is written twice")
                self.shapes[t] = tuple(int(v) for v in s)
                self.producer[t] = i
        for t in self.outputs:
            if t not in self.shapes:
                raise PisplitError(f"model {self.name}: output tensor {t!r} is never produced")
        self._check_quantized_nodes()

    def _check_quantized_nodes(self) -> None:
        """A node marked quantized runs integer kernels: it needs the quantization of its outputs and
        weights in this graph. A graph cut from a quantized one without it (a split part, a one-node
        profile graph) is refused here rather than run with float kernels on integers."""
        if not any(node.attrs.get("quantized") for node in self.nodes):
            return  # (the int8 kernels' module is only loaded for graphs that need it)
        from .qkernels import QRUN

        for node in self.nodes:
            if not node.attrs.get("quantized"):
                continue
            if node.op not in QRUN:
                raise PisplitError(f"model {self.name}: node {node.name} ({node.op}) is quantized, and pisplit has no int8 kernel for it")
            needed = [t for t in node.outputs if node.op not in ("dequantize", "int32_halves")] + \
                [node.weight_key(p) for p in node.weight_shapes]
            missing = [t for t in needed if t not in self.quant]
            if missing:
                raise PisplitError(f"model {self.name}: node {node.name} ({node.op}) is quantized (int8) but the graph carries no "
                                   f"quantization for {missing[0]!r}; int8 layers run only with their model's quantization "
                                   "(a split part or stage of an int8 model takes its quantization along)")

    def dtype(self, tensor: str) -> np.dtype:
        """The numpy dtype of a tensor: its quantized integer type, else float32."""
        q = self.quant.get(tensor)
        return q.np_dtype if q is not None else np.dtype(np.float32)

    def tensor_bytes(self, tensor: str, shape=None) -> int:
        """Bytes of a tensor (batch 1) or weight (`shape` given, keyed by Node.weight_key) in its own dtype:
        int8 activations and weights of quantized graphs 1 byte an element, int32 biases 4, floats
        DTYPE_BYTES. The one place node costs, cuts and `pisplit show` take sizes from."""
        n = numel(self.shapes[tensor] if shape is None else shape)
        return n * (self.quant[tensor].np_dtype.itemsize if tensor in self.quant else DTYPE_BYTES)

    @property
    def quantized(self) -> bool:
        """True when some node runs integer kernels (an int8 model)."""
        return any(n.attrs.get("quantized") for n in self.nodes)

    def _compute_last_use(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for t in node.inputs:
                last[t] = i
        for t in self.outputs:
            last[t] = len(self.nodes)  # graph outputs live to the end
        return last

    def _node_cost(self, i: int) -> NodeCost:
        node = self.nodes[i]
        spec = spec_of(node.op)
        ins = [self.shapes[t] for t in node.inputs]
        outs = [self.shapes[t] for t in node.outputs]
        params = sum(numel(s) for s in node.weight_shapes.values())
        work = scratch = None
        if node.attrs.get("quantized") and node.inputs:  # the int8 kernels' own bands (issue 12), no kept float im2col
            from .qkernels import work_bytes as int8_work_bytes

            work, scratch = int8_work_bytes(node.op, ins, outs, node.attrs, node.weight_shapes, self.dtype(node.inputs[0])), 0
        elif "kernel" in node.weight_shapes and node.weight_key("kernel") in self.quant and node.inputs:  # a dynamic-range layer
            from .qkernels import hybrid_work_bytes

            work = hybrid_work_bytes(node.op, ins, outs, node.attrs, node.weight_shapes)
            scratch = None if work is None else 0
        return NodeCost(
            flops=int(spec.flops(ins, outs, node.attrs, node.weight_shapes)),
            weight_bytes=sum(self.tensor_bytes(node.weight_key(p), s) for p, s in node.weight_shapes.items()),
            params=params,
            input_bytes=sum(self.tensor_bytes(t) for t in node.inputs),
            output_bytes=sum(self.tensor_bytes(t) for t in node.outputs),
            work_bytes=int(spec.work_bytes(ins, outs, node.attrs, node.weight_shapes) if work is None else work),
            scratch_bytes=int(spec.scratch_bytes(ins, outs, node.attrs, node.weight_shapes) if scratch is None else scratch),
        )

    # --- lookup --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes, inputs={self.inputs})"

    def node_index(self, name: str) -> int:
        """Position of node `name` in the order; raises PisplitError naming close matches."""
        try:
            return self._index[name]
        except KeyError:
            close = [n.name for n in self.nodes if name.lower() in n.name.lower()][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PisplitError(f"model {self.name}: no node named {name!r}{hint}") from None

    def node(self, name_or_index) -> Node:
        """A node by name or index."""
        if isinstance(name_or_index, (int, np.integer)):
            return self.nodes[int(name_or_index)]
        return self.nodes[self.node_index(name_or_index)]

    def cost(self, name_or_index) -> NodeCost:
        """Static costs of one node."""
        i = name_or_index if isinstance(name_or_index, (int, np.integer)) else self.node_index(name_or_index)
        return self._costs[int(i)]

    def consumers(self, tensor: str) -> list[int]:
        """Indices of the nodes reading `tensor`."""
        return [i for i, n in enumerate(self.nodes) if tensor in n.inputs]

    def node_weights(self, node: Node | str, dequantize: bool = True) -> dict[str, np.ndarray]:
        """The node's weights as float32 arrays (materialised from the weight mapping on demand); the
        weights of quantized nodes come in their integer dtype (int8 filters, int32 biases), and integer
        weights are never read as floats without their quantization. A float node's quantized weight
        (a dynamic-range layer's int8 filter, layers.tflite) comes dequantized with its scales, or as
        its integers with `dequantize=False` (the .tflite export writes them with their scales)."""
        node = self.node(node) if isinstance(node, str) else node
        out = {}
        for p, shape in node.weight_shapes.items():
            key = node.weight_key(p)
            try:
                arr = self.weights[key]
            except KeyError:
                raise PisplitError(f"model {self.name}: weight {key!r} is missing") from None
            if key in self.quant:
                arr = np.asarray(arr)
                if arr.dtype != self.quant[key].np_dtype:
                    raise PisplitError(f"model {self.name}: weight {key!r} is {arr.dtype}, its quantization says {self.quant[key].dtype}")
                if dequantize and not node.attrs.get("quantized"):
                    from .quant import dequantize as dequantized

                    arr = dequantized(arr, self.quant[key])
            elif np.asarray(arr).dtype.kind in "iu" and node.attrs.get("quantized"):
                raise PisplitError(f"model {self.name}: integer weight {key!r} has no quantization")
            else:
                arr = np.asarray(arr, dtype=np.float32)
            if arr.shape != tuple(shape):
                raise PisplitError(f"model {self.name}: weight {node.weight_key(p)!r} has shape {arr.shape}, expected {tuple(shape)}")
            out[p] = arr
        return out

    # --- totals and cuts -----------------------------------------------------------------------------
    def totals(self) -> dict:
        """Sums over all nodes: params, flops, weight_bytes, output_bytes, and the largest peak_bytes."""
        return {
            "nodes": len(self.nodes),
            "params": sum(c.params for c in self._costs),
            "flops": sum(c.flops for c in self._costs),
            "weight_bytes": sum(c.weight_bytes for c in self._costs),
            "output_bytes": sum(c.output_bytes for c in self._costs),
            "max_peak_bytes": max((c.peak_bytes for c in self._costs), default=0),
        }

    def cut_tensors(self, cut: int) -> list[str]:
        """Tensors live across cut `cut` (0..n): made before it and read at or after it, or graph outputs."""
        if not 0 <= cut <= len(self.nodes):
            raise PisplitError(f"model {self.name}: cut {cut} is outside 0..{len(self.nodes)}")
        if cut == 0:
            return list(self.inputs)
        live = []
        for t in list(self.inputs) + [o for n in self.nodes[:cut] for o in n.outputs]:
            if self._last_use.get(t, -1) >= cut:
                live.append(t)
        return live

    def cut_bytes(self, cut: int) -> int:
        """Bytes of the tensors live across cut `cut` (batch 1)."""
        return sum(self.tensor_bytes(t) for t in self.cut_tensors(cut))

    # --- execution -----------------------------------------------------------------------------------
    def run_node(self, node: Node | int, inputs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Execute one node on its input arrays with the numpy reference kernels."""
        node = self.nodes[node] if isinstance(node, (int, np.integer)) else node
        if node.attrs.get("quantized"):
            from .qkernels import QRUN, QuantContext

            ctx = QuantContext([self.quant.get(t) for t in node.inputs], [self.quant.get(t) for t in node.outputs],
                               {p: self.quant[node.weight_key(p)] for p in node.weight_shapes if node.weight_key(p) in self.quant})
            return QRUN[node.op](list(inputs), node.attrs, self.node_weights(node) if weights is None else weights, ctx)
        if weights is None and self.quant:
            from .qkernels import run_dynamic_range  # a dynamic-range layer: its int8 filter with its scales

            # (before reading the float weights: a hybrid layer reads its int8 filter itself, and its dequantized
            # copy, 4x the filter's bytes, was made and dropped every frame: issue 12)
            out = run_dynamic_range(self, node, list(inputs))
            if out is not None:
                return out
        return spec_of(node.op).run(list(inputs), node.attrs, self.node_weights(node) if weights is None else weights)

    def execute(self, tensors: Mapping[str, np.ndarray], start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Run nodes [start, stop) given the tensors live at cut `start`; return those live at cut `stop`.

        Intermediate tensors are freed after their last use in the range. Raises PisplitError when a
        needed tensor is missing or has the wrong shape (the batch axis may be any size).
        """
        stop = len(self.nodes) if stop is None else stop
        env = {}
        for t in self.cut_tensors(start):
            if t not in tensors:
                raise PisplitError(f"model {self.name}: tensor {t!r} (shape {self.shapes[t]}) is needed at cut {start} but was not given")
            arr = self._as_tensor(t, tensors[t])
            if arr.shape[1:] != self.shapes[t][1:] or arr.ndim != len(self.shapes[t]):
                raise PisplitError(f"model {self.name}: tensor {t!r} has shape {arr.shape}, expected {self.shapes[t]}")
            env[t] = arr
        for i in range(start, stop):
            node = self.nodes[i]
            outs = self.run_node(node, [env[t] for t in node.inputs])
            for t, y in zip(node.outputs, outs):
                env[t] = y
            for t in set(node.inputs):
                if self._last_use.get(t, -1) <= i:
                    env.pop(t, None)
        return {t: env[t] for t in self.cut_tensors(stop)}

    def _as_tensor(self, t: str, value) -> np.ndarray:
        """A fed array as tensor t's dtype: float32, or its quantized integer type (integers in range only)."""
        want = self.dtype(t)
        arr = np.asarray(value)
        if want.kind == "f":
            return np.asarray(arr, dtype=np.float32)
        if arr.dtype == want:
            return arr
        info = np.iinfo(want)
        # floats are taken when they hold exactly such integers and the type fits in float32 (int8 /
        # int16: a runtime that carries tensors as float32 buffers); never int32, which float32 rounds
        exact = arr.dtype.kind == "f" and want.itemsize <= 2 and (not arr.size or np.array_equal(arr, np.rint(arr)))
        if (arr.dtype.kind not in "iu" and not exact) or (arr.size and (arr.min() < info.min or arr.max() > info.max)):
            raise PisplitError(f"model {self.name}: tensor {t!r} is {want} (quantized: {self.quant[t].describe()}); "
                               f"got {arr.dtype} values{' out of range' if arr.dtype.kind in 'iu' or exact else ''}")
        return arr.astype(want)

    def forward(self, *args: np.ndarray, **named: np.ndarray):
        """Whole-model inference; positional arrays feed the inputs in order. Returns one array for a
        single-output model, else a dict of outputs."""
        feeds = dict(zip(self.inputs, args))
        feeds.update(named)
        out = self.execute(feeds)
        return out[self.outputs[0]] if len(self.outputs) == 1 else out

    def random_input(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded standard-normal float32 arrays for every graph input (uniform integers for int8 inputs)."""
        rng = np.random.default_rng(seed)
        out = {}
        for k, s in self.inputs.items():
            want = self.dtype(k)
            if want.kind == "f":
                out[k] = rng.standard_normal(s, dtype=np.float32)
            else:  # quantized inputs: uniform over the integer type's range
                info = np.iinfo(want)
                out[k] = rng.integers(info.min, info.max, s, endpoint=True).astype(want)
        return out

    def subgraph_weight_keys(self, node_indices: Iterable[int]) -> list[str]:
        """Weight keys of the given nodes (what a rank running them must load)."""
        return [n.weight_key(p) for i in node_indices for n in [self.nodes[i]] for p in n.weight_shapes]
