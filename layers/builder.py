"""A small builder for graphs with seeded weights (the zoo, tests): one method call per layer."""
from __future__ import annotations

from typing import Sequence

from .errors import PisplitError
from .graph import Graph, Node
from .ops import spec_of
from .weights import SeededWeights


def _tuple(v, n: int) -> list:
    return [int(v)] * n if isinstance(v, int) else [int(x) for x in v]


class GraphBuilder:
    """Builds a Graph layer by layer; each node's single output tensor is named after the node."""

    def __init__(self, name: str, seed: int = 0):
        self.name = name
        self.seed = seed
        self.inputs: dict[str, tuple] = {}
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple] = {}
        self.specs: dict[str, tuple] = {}

    def input(self, name: str, shape: Sequence[int]) -> str:
        """Declare a graph input (shape includes the batch axis, normally 1)."""
        self.inputs[name] = tuple(int(s) for s in shape)
        self.shapes[name] = self.inputs[name]
        return name

    def shape(self, tensor: str) -> tuple:
        """Static shape of a tensor built so far."""
        return self.shapes[tensor]

    def add(self, op: str, inputs: Sequence[str] | str, name: str, attrs: dict | None = None,
            weights: dict[str, tuple[Sequence[int], str]] | None = None) -> str:
        """Append a node; `weights` maps param -> (shape, initialiser). Returns its output tensor."""
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        weights = weights or {}
        node = Node(name, op, inputs, [name], dict(attrs or {}), {p: tuple(int(v) for v in s) for p, (s, _) in weights.items()})
        try:
            (out,) = spec_of(op).infer([self.shapes[t] for t in inputs], node.attrs, node.weight_shapes)
        except PisplitError as exc:
            raise PisplitError(f"model {self.name}: node {name}: {exc}") from None
        self.nodes.append(node)
        self.shapes[name] = tuple(out)
        for p, (s, init) in weights.items():
            self.specs[node.weight_key(p)] = (tuple(int(v) for v in s), init)
        return name

    def build(self, outputs: Sequence[str] | str, meta: dict | None = None) -> Graph:
        """The finished Graph with lazily generated seeded weights."""
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        return Graph(self.name, self.inputs, self.nodes, outputs, SeededWeights(self.specs, self.seed), meta)

    # --- layers --------------------------------------------------------------------------------------
    def conv(self, x: str, filters: int, kernel, name: str, strides=1, padding="valid", dilation=1, groups=1,
             activation=None, use_bias=True, init="he") -> str:
        """Conv2D or Conv3D (by input rank) with HWIO kernel (*K, Cin/groups, filters)."""
        n_sp = len(self.shapes[x]) - 2
        ksize = _tuple(kernel, n_sp)
        cin = self.shapes[x][-1]
        weights = {"kernel": ((*ksize, cin // groups, filters), init)}
        if use_bias:
            weights["bias"] = ((filters,), "bias")
        attrs = {"strides": _tuple(strides, n_sp), "padding": padding, "dilation": _tuple(dilation, n_sp),
                 "groups": int(groups), "activation": activation}
        return self.add("conv3d" if n_sp == 3 else "conv2d", x, name, attrs, weights)

    def depthwise(self, x: str, kernel, name: str, strides=1, padding="valid", multiplier=1, dilation=1,
                  activation=None, use_bias=False) -> str:
        """Depthwise conv: groups == input channels, `multiplier` outputs per channel."""
        cin = self.shapes[x][-1]
        return self.conv(x, cin * multiplier, kernel, name, strides, padding, dilation, groups=cin,
                         activation=activation, use_bias=use_bias)

    def separable(self, x: str, filters: int, kernel, name: str, padding="same", use_bias=False) -> str:
        """Keras SeparableConv2D as two nodes: `{name}_depthwise` then the pointwise `name`."""
        y = self.depthwise(x, kernel, f"{name}_depthwise", padding=padding)
        return self.conv(y, filters, 1, name, use_bias=use_bias)

    def dense(self, x: str, units: int, name: str, activation=None, use_bias=True, init="he") -> str:
        """Fully connected on the last axis."""
        weights = {"kernel": ((self.shapes[x][-1], units), init)}
        if use_bias:
            weights["bias"] = ((units,), "bias")
        return self.add("dense", x, name, {"activation": activation}, weights)

    def batch_norm(self, x: str, name: str, epsilon: float = 1e-3, gamma: str = "gamma", activation=None) -> str:
        """Inference batch-norm over the channel axis."""
        c = self.shapes[x][-1]
        w = {"gamma": ((c,), gamma), "beta": ((c,), "beta"), "mean": ((c,), "mean"), "var": ((c,), "var")}
        return self.add("batch_norm", x, name, {"epsilon": float(epsilon), "activation": activation}, w)

    def pool(self, x: str, kind: str, pool, name: str, strides=None, padding="valid") -> str:
        """Max or average pooling ('max'/'avg'), 2-D or 3-D by input rank."""
        n_sp = len(self.shapes[x]) - 2
        attrs = {"pool": _tuple(pool, n_sp), "strides": _tuple(strides if strides is not None else pool, n_sp), "padding": padding}
        return self.add(f"{kind}_pool{n_sp}d", x, name, attrs)

    def act(self, x: str, op: str, name: str, **attrs) -> str:
        """An attribute-only op of one input (relu, relu6, sigmoid, tanh, softmax, lrn, dropout, flatten, ...)."""
        return self.add(op, x, name, attrs)

    def pad(self, x: str, pads, name: str) -> str:
        """Zero padding of the spatial axes: pads is one (before, after) pair per spatial axis."""
        return self.add("pad", x, name, {"paddings": [[0, 0], *[list(p) for p in pads], [0, 0]]})
