"""Graph rewrites that keep the numbers: folding inference batch-norm into the preceding conv/dense."""
from __future__ import annotations

import copy

import numpy as np

from .graph import Graph
from .kernels import batch_norm_scale_shift
from .weights import OverlayWeights

_FOLDABLE = ("conv2d", "conv3d", "dense")


def fold_batchnorm(graph: Graph) -> Graph:
    """A copy of `graph` with each batch_norm folded into its producer where that is exact.

    Exact when the producer is a conv/dense without a fused activation whose output only the
    batch-norm reads: kernel' = kernel * scale (per output channel), bias' = (bias - mean) * scale +
    beta with scale = gamma / sqrt(var + eps). The batch-norm's activation moves to the producer and
    its output tensor name is kept, so consumers are unchanged. Weights are computed lazily.
    """
    nodes = [copy.deepcopy(n) for n in graph.nodes]
    by_output = {t: i for i, n in enumerate(nodes) for t in n.outputs}
    consumers: dict[str, int] = {}
    for n in nodes:
        for t in n.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    drop: set[int] = set()
    overrides = {}
    hidden = set()
    for i, bn in enumerate(nodes):
        if bn.op != "batch_norm" or bn.inputs[0] not in by_output:
            continue
        p_index = by_output[bn.inputs[0]]
        prod = nodes[p_index]
        if (prod.op not in _FOLDABLE or prod.attrs.get("activation") not in (None, "linear")
                or consumers.get(prod.outputs[0], 0) != 1 or prod.outputs[0] in graph.outputs):
            continue
        kkey, bkey = prod.weight_key("kernel"), prod.weight_key("bias")
        had_bias = "bias" in prod.weight_shapes
        eps = float(bn.attrs.get("epsilon", 1e-3))
        bn_keys = {p: bn.weight_key(p) for p in ("gamma", "beta", "mean", "var")}

        def scale_shift(bn_keys=bn_keys, eps=eps):
            w = graph.weights
            return batch_norm_scale_shift(w[bn_keys["gamma"]], w[bn_keys["beta"]], w[bn_keys["mean"]], w[bn_keys["var"]], eps)

        def kernel(kkey=kkey, scale_shift=scale_shift):
            return (np.asarray(graph.weights[kkey], np.float32) * scale_shift()[0]).astype(np.float32)

        def bias(bkey=bkey, had_bias=had_bias, scale_shift=scale_shift):
            scale, shift = scale_shift()
            b = np.asarray(graph.weights[bkey], np.float32) if had_bias else np.zeros_like(scale)
            return (b * scale + shift).astype(np.float32)

        overrides[kkey] = kernel
        overrides[bkey] = bias
        hidden.update(bn_keys.values())
        prod.weight_shapes["bias"] = (prod.weight_shapes["kernel"][-1],)
        prod.attrs["activation"] = bn.attrs.get("activation")
        # the producer now writes the batch-norm's output tensor, so readers of it need no change
        old = prod.outputs[0]
        prod.outputs = list(bn.outputs)
        by_output.pop(old, None)
        by_output[bn.outputs[0]] = p_index
        drop.add(i)
    kept = [n for i, n in enumerate(nodes) if i not in drop]
    return Graph(graph.name, graph.inputs, kept, graph.outputs, OverlayWeights(graph.weights, overrides, hidden), graph.meta)
