"""Small graphs with every layer kind the splits handle, and the (layer, kind, options) cases over them.

Shared by the in-process split tests and the MPI worker (tests/cluster/split_mpi_worker.py), so both
check the same cases. Shapes are odd on purpose (13 rows, 3 groups of channels, stride 2, dilation).
"""
from __future__ import annotations

from layers.builder import GraphBuilder
from layers.graph import Graph


def dense_chain() -> Graph:
    """dense (relu) -> dropout -> batch-norm -> prelu -> dense (tanh) -> softmax."""
    b = GraphBuilder("dense_chain", seed=11)
    x = b.input("features", (1, 23))
    y = b.dense(x, 17, "fc1", activation="relu")
    y = b.act(y, "dropout", "drop1", rate=0.5)
    y = b.batch_norm(y, "bn1")
    y = b.add("prelu", y, "prelu1", weights={"alpha": ((17,), "alpha")})
    y = b.dense(y, 11, "fc2", activation="tanh", init="glorot")
    y = b.act(y, "softmax", "prob")
    return b.build(y)


def conv_chain(stride=1, padding="same", dilation=1, pool_padding="same") -> Graph:
    """conv -> batch-norm -> relu -> max-pool 3x3/2 -> depthwise 3x3 -> avg-pool 2x2 -> conv 1x1."""
    b = GraphBuilder(f"conv_chain_s{stride}_{padding}_d{dilation}", seed=12)
    x = b.input("image", (1, 13, 11, 5))
    y = b.conv(x, 10, 3, "conv", strides=stride, padding=padding, dilation=dilation)
    y = b.batch_norm(y, "bn")
    y = b.act(y, "relu", "relu")
    y = b.pool(y, "max", 3, "maxpool", strides=2, padding=pool_padding)
    y = b.depthwise(y, 3, "dw", padding="same", use_bias=True, activation="relu6")
    y = b.pool(y, "avg", 2, "avgpool", strides=1, padding="same")
    y = b.conv(y, 6, 1, "pointwise", activation="sigmoid")
    return b.build(y)


def explicit_padding() -> Graph:
    """A 4x3 conv with explicit asymmetric padding and stride (2, 1), then tanh."""
    b = GraphBuilder("explicit_padding", seed=13)
    x = b.input("image", (1, 12, 9, 4))
    y = b.conv(x, 7, (4, 3), "conv", strides=(2, 1), padding=[[2, 1], [0, 3]], activation="tanh")
    y = b.act(y, "relu", "relu")
    return b.build(y)


def grouped() -> Graph:
    """AlexNet-style: a 3-group conv (relu) -> lrn -> max-pool, then a 3-group conv."""
    b = GraphBuilder("grouped", seed=14)
    x = b.input("image", (1, 11, 10, 6))
    y = b.conv(x, 12, 3, "conv", padding="same", groups=3, activation="relu")
    y = b.act(y, "lrn", "norm", depth_radius=2, bias=1.0, alpha=1e-4, beta=0.75)
    y = b.pool(y, "max", 3, "pool", strides=2)
    y = b.conv(y, 9, 3, "conv_b", padding="same", groups=3)
    return b.build(y)


def depthwise() -> Graph:
    """MobileNet-style: conv -> bn -> relu6 -> pad -> depthwise stride 2 (multiplier 2) -> bn -> pointwise."""
    b = GraphBuilder("depthwise", seed=15)
    x = b.input("image", (1, 14, 12, 3))
    y = b.conv(x, 6, 3, "conv", padding="same", use_bias=False)
    y = b.batch_norm(y, "bn")
    y = b.act(y, "relu6", "relu6")
    y = b.pad(y, [(0, 1), (0, 1)], "pad")
    y = b.depthwise(y, 3, "dw", strides=2, padding="valid", multiplier=2)
    y = b.batch_norm(y, "dw_bn")
    y = b.conv(y, 5, 1, "pw")
    return b.build(y)


def residual() -> Graph:
    """A shortcut conv, then conv -> bn -> add(shortcut) -> relu, so the add takes a second operand."""
    b = GraphBuilder("residual", seed=16)
    x = b.input("image", (1, 9, 10, 4))
    skip = b.conv(x, 6, 1, "shortcut")
    y = b.conv(x, 6, 3, "conv", padding="same")
    y = b.batch_norm(y, "bn")
    y = b.add("add", [y, skip], "add")
    y = b.act(y, "relu", "relu")
    return b.build(y)


def video() -> Graph:
    """C3D-style conv3d (relu) -> max-pool (1, 2, 2) -> conv3d."""
    b = GraphBuilder("video", seed=17)
    x = b.input("clip", (1, 6, 9, 8, 3))
    y = b.conv(x, 5, 3, "conv3d", padding="same", activation="relu")
    y = b.pool(y, "max", (1, 2, 2), "pool")
    y = b.conv(y, 4, 3, "conv3d_b", padding="same")
    return b.build(y)


GRAPHS = {f.__name__: f for f in (dense_chain, explicit_padding, grouped, depthwise, residual, video)}
GRAPHS.update({
    "conv_chain": conv_chain,
    "conv_chain_stride2": lambda: conv_chain(stride=2, padding="valid", pool_padding="valid"),
    "conv_chain_dilated": lambda: conv_chain(dilation=2, padding="same"),
})

_CONV_KINDS = ("conv-channel", "conv-spatial", "conv-filter", "fused-tiles", "data-parallel")

# (graph, layer, kind, options): every layer kind with every split kind that applies to it.
CASES = [
    ("dense_chain", "fc1", "fc-output", {}),
    ("dense_chain", "fc1", "fc-input", {}),
    ("dense_chain", "fc1", "data-parallel", {}),
    ("dense_chain", "fc2", "fc-output", {}),
    ("dense_chain", "fc2", "fc-input", {}),
    *[("conv_chain", "conv", k, {}) for k in _CONV_KINDS],
    *[("conv_chain_stride2", "conv", k, {}) for k in _CONV_KINDS[:3]],
    *[("conv_chain_dilated", "conv", k, {}) for k in _CONV_KINDS[:3]],
    ("conv_chain", "conv", "fused-tiles", {"last": "pointwise"}),
    ("conv_chain", "conv", "conv-spatial", {"axis": "cols"}),
    ("conv_chain", "conv", "conv-channel", {"followers": False}),
    ("conv_chain", "maxpool", "fused-tiles", {"last": "avgpool"}),
    ("conv_chain", "pointwise", "conv-channel", {}),
    *[("explicit_padding", "conv", k, {}) for k in _CONV_KINDS[:3]],
    ("explicit_padding", "conv", "conv-spatial", {"axis": "cols"}),
    *[("grouped", "conv", k, {}) for k in _CONV_KINDS[:4]],
    *[("grouped", "conv_b", k, {}) for k in _CONV_KINDS[:3]],
    *[("depthwise", "conv", k, {}) for k in _CONV_KINDS[:3]],
    *[("depthwise", "dw", k, {}) for k in _CONV_KINDS[:3]],
    ("depthwise", "conv", "fused-tiles", {"last": "pw"}),
    *[("residual", "conv", k, {}) for k in ("conv-channel", "conv-spatial", "data-parallel")],
    ("residual", "conv", "conv-filter", {"followers": False}),
    *[("video", "conv3d", k, {}) for k in _CONV_KINDS[:3]],
    ("video", "conv3d", "conv-spatial", {"axis": "depth"}),
    ("video", "conv3d", "fused-tiles", {"last": "conv3d_b"}),
    ("video", "conv3d_b", "conv-filter", {}),
]

# Tile grids: (graph, layer, options, grid) - parts = rows x cols.
GRID_CASES = [
    ("conv_chain", "conv", {"last": "pointwise"}, (2, 2)),
    ("conv_chain", "conv", {"last": "avgpool"}, (1, 3)),
    ("depthwise", "conv", {"last": "pw"}, (2, 1)),
    ("video", "conv3d", {"last": "conv3d_b"}, (2, 2)),
]


def case_id(case) -> str:
    graph, layer, kind, options = case
    extra = ",".join(f"{k}={v}" for k, v in options.items())
    return f"{graph}:{layer}:{kind}" + (f"[{extra}]" if extra else "")
