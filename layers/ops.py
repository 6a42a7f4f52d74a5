"""The op registry: for every op kind, its shape rule, FLOPs, working memory and numpy kernel.

An op sees its input shapes (batch axis first, batch 1 in static shapes), its attributes (plain JSON
data) and its weight shapes; `run` sees arrays of any batch size. Add an op by registering an `OpSpec`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from . import kernels as K
from .errors import PisplitError

Shape = tuple
Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class OpSpec:
    """What the graph needs to know about one op kind."""

    infer: Callable[[list, dict, dict], list]           # (in_shapes, attrs, weight_shapes) -> out_shapes
    run: Callable[[list, dict, Weights], list]          # (inputs, attrs, weights) -> outputs
    flops: Callable[[list, list, dict, dict], int]      # (in_shapes, out_shapes, attrs, weight_shapes)
    work_bytes: Callable[[list, list, dict, dict], int] = lambda i, o, a, w: 0
    # of work_bytes, what lives in the kernels' kept im2col buffer (held from one node to the next)
    scratch_bytes: Callable[[list, list, dict, dict], int] = lambda i, o, a, w: 0
    params: tuple = ()                                   # required weight names
    optional_params: tuple = ()


OPS: dict[str, OpSpec] = {}


def register(name: str, spec: OpSpec) -> None:
    """Add (or replace) the op kind `name`."""
    OPS[name] = spec


def spec_of(op: str) -> OpSpec:
    """The registered OpSpec for `op`; raises PisplitError for an unknown op kind."""
    try:
        return OPS[op]
    except KeyError:
        raise PisplitError(f"op {op!r}: unknown op kind (known: {', '.join(sorted(OPS))})") from None


def numel(shape: Sequence[int]) -> int:
    """Number of elements of a shape."""
    return math.prod(int(s) for s in shape)


def _act(x, attrs):
    return K.apply_activation(x, attrs.get("activation"))


def _act_owned(x, attrs):
    """_act on an array the op has just made: clamps work in place."""
    return K.apply_activation(x, attrs.get("activation"), inplace=True)


def padded_bytes(in_shape: Shape, pads) -> int:
    """Bytes of the padded copy of an input a conv or pool makes (0 without padding)."""
    if not any(b or a for b, a in pads):
        return 0
    return 4 * int(in_shape[0]) * int(in_shape[-1]) * int(np.prod([s + b + a for s, (b, a) in zip(in_shape[1:-1], pads)], dtype=np.int64))


def _act_flops(out_shapes, attrs) -> int:
    return numel(out_shapes[0]) if attrs.get("activation") not in (None, "linear") else 0


# --- convolutions ----------------------------------------------------------------------------------

def conv_geometry(in_shape: Shape, attrs: dict, kernel_shape: Shape):
    """(kernel sizes, strides, dilation, explicit pads, output spatial sizes) of a conv node."""
    n_sp = len(kernel_shape) - 2
    ksize = tuple(kernel_shape[:n_sp])
    strides = tuple(attrs.get("strides") or (1,) * n_sp)
    dilation = tuple(attrs.get("dilation") or (1,) * n_sp)
    spatial = tuple(in_shape[1:-1])
    if len(spatial) != n_sp:
        raise PisplitError(f"conv: input shape {tuple(in_shape)} does not fit kernel {tuple(kernel_shape)}")
    pads = K.resolve_padding(spatial, ksize, strides, dilation, attrs.get("padding", "valid"))
    outs = tuple(K.conv_output_size(s, k, st, d, *p) for s, k, st, d, p in zip(spatial, ksize, strides, dilation, pads))
    if min(outs) < 1:
        raise PisplitError(f"conv: input {spatial} is smaller than kernel {ksize}")
    return ksize, strides, dilation, pads, outs


def _conv_infer(ins, attrs, ws):
    kshape = ws["kernel"]
    groups = int(attrs.get("groups", 1))
    cin = ins[0][-1]
    if kshape[-2] * groups != cin:
        raise PisplitError(f"conv: {cin} input channels do not match kernel {tuple(kshape)} with groups={groups}")
    *_, outs = conv_geometry(ins[0], attrs, kshape)
    return [(ins[0][0], *outs, kshape[-1])]


def _conv_run(xs, attrs, w):
    kernel = w["kernel"]
    ksize, strides, dilation, pads, _ = conv_geometry(xs[0].shape, attrs, kernel.shape)
    y = K.conv_nd(xs[0], kernel, w.get("bias"), strides, pads, dilation, int(attrs.get("groups", 1)))
    return [_act_owned(y, attrs)]


def _conv_flops(ins, outs, attrs, ws):
    kshape = ws["kernel"]
    n_sp = len(kshape) - 2
    return K.flops_conv(outs[0][1:-1], kshape[:n_sp], kshape[-2], kshape[-1]) + _act_flops(outs, attrs)


def _conv_work(ins, outs, attrs, ws):
    """The im2col band and, with padding, the padded copy of the input (conv_nd makes one)."""
    kshape = ws["kernel"]
    ksize, strides, _, pads, _ = conv_geometry(ins[0], attrs, kshape)
    return padded_bytes(ins[0], pads) + K.conv_work_bytes(outs[0][1:-1], ksize, ins[0][-1], int(attrs.get("groups", 1)), strides, kshape[-1])


def _conv_scratch(ins, outs, attrs, ws):
    """The im2col band (kernels._scratch), 0 for convolutions without one."""
    ksize, strides, _, _, _ = conv_geometry(ins[0], attrs, ws["kernel"])
    return K.conv_band_bytes(outs[0][1:-1], ksize, ins[0][-1], int(attrs.get("groups", 1)), strides)


_CONV = OpSpec(_conv_infer, _conv_run, _conv_flops, _conv_work, params=("kernel",), optional_params=("bias",), scratch_bytes=_conv_scratch)
register("conv2d", _CONV)
register("conv3d", _CONV)


def _dense_infer(ins, attrs, ws):
    kshape = ws["kernel"]
    if ins[0][-1] != kshape[0]:
        raise PisplitError(f"dense: input features {ins[0][-1]} do not match kernel {tuple(kshape)}")
    return [(*ins[0][:-1], kshape[1])]


register("dense", OpSpec(
    _dense_infer,
    lambda xs, a, w: [_act_owned(K.dense(xs[0], w["kernel"], w.get("bias")), a)],
    lambda i, o, a, ws: 2 * numel(i[0][:-1]) * ws["kernel"][0] * ws["kernel"][1] + _act_flops(o, a),
    params=("kernel",), optional_params=("bias",),
))


# --- pooling ---------------------------------------------------------------------------------------

def pool_geometry(in_shape: Shape, attrs: dict):
    """(window, strides, explicit pads, output spatial sizes) of a pooling node."""
    pool = tuple(attrs["pool"])
    strides = tuple(attrs.get("strides") or pool)
    spatial = tuple(in_shape[1:-1])
    if len(pool) != len(spatial) or len(strides) != len(spatial):
        raise PisplitError(f"pool: window {pool} does not fit input shape {tuple(in_shape)}")
    pads = K.resolve_padding(spatial, pool, strides, (1,) * len(pool), attrs.get("padding", "valid"))
    outs = tuple(K.conv_output_size(s, k, st, 1, *p) for s, k, st, p in zip(spatial, pool, strides, pads))
    if min(outs) < 1:
        raise PisplitError(f"pool: input {spatial} is smaller than window {pool}")
    return pool, strides, pads, outs


def _pool_infer(ins, attrs, ws):
    *_, outs = pool_geometry(ins[0], attrs)
    return [(ins[0][0], *outs, ins[0][-1])]


def _pool_flops(ins, outs, attrs, ws):
    return numel(outs[0]) * numel(attrs["pool"])


def _pool_work(ins, outs, attrs, ws):
    """The padded copy of the input (max pooling pads with -inf, average pooling with zeros)."""
    return padded_bytes(ins[0], pool_geometry(ins[0], attrs)[2])


def _pool_run(fn):
    def run(xs, attrs, w):
        pool, strides, pads, _ = pool_geometry(xs[0].shape, attrs)
        return [_act_owned(fn(xs[0], pool, strides, pads), attrs)]
    return run


for _name, _fn in [("max_pool2d", K.max_pool), ("max_pool3d", K.max_pool), ("avg_pool2d", K.avg_pool), ("avg_pool3d", K.avg_pool)]:
    register(_name, OpSpec(_pool_infer, _pool_run(_fn), _pool_flops, _pool_work))


def _gap_infer(ins, attrs, ws):
    s = ins[0]
    if attrs.get("keepdims", False):
        return [(s[0], *([1] * (len(s) - 2)), s[-1])]
    return [(s[0], s[-1])]


register("global_avg_pool", OpSpec(
    _gap_infer,
    lambda xs, a, w: [K.global_avg_pool(xs[0], a.get("keepdims", False))],
    lambda i, o, a, ws: numel(i[0]),
))


# --- normalisation and activations -----------------------------------------------------------------

def _same_shape(ins, attrs, ws):
    return [tuple(ins[0])]


def _bn_infer(ins, attrs, ws):
    c = ins[0][-1]
    for p in ("gamma", "beta", "mean", "var"):
        if tuple(ws[p]) != (c,):
            raise PisplitError(f"batch_norm: {p} has shape {tuple(ws[p])}, expected ({c},)")
    return [tuple(ins[0])]


register("batch_norm", OpSpec(
    _bn_infer,
    lambda xs, a, w: [_act_owned(K.batch_norm(xs[0], w["gamma"], w["beta"], w["mean"], w["var"], a.get("epsilon", 1e-3)), a)],
    lambda i, o, a, ws: 2 * numel(o[0]),
    params=("gamma", "beta", "mean", "var"),
))

for _name, _fn in [("relu", K.relu), ("relu6", K.relu6), ("sigmoid", K.sigmoid), ("tanh", K.tanh), ("hard_swish", K.hard_swish)]:
    register(_name, OpSpec(_same_shape, (lambda f: lambda xs, a, w: [f(xs[0])])(_fn), lambda i, o, a, ws: numel(o[0])))
register("leaky_relu", OpSpec(_same_shape, lambda xs, a, w: [K.leaky_relu(xs[0], a.get("alpha", 0.2))], lambda i, o, a, ws: 2 * numel(o[0])))


def _prelu_infer(ins, attrs, ws):
    try:
        np.broadcast_shapes(tuple(ins[0][1:]), tuple(ws["alpha"]))
    except ValueError:
        raise PisplitError(f"prelu: alpha {tuple(ws['alpha'])} does not broadcast to {tuple(ins[0][1:])}") from None
    return [tuple(ins[0])]


register("prelu", OpSpec(_prelu_infer, lambda xs, a, w: [K.prelu(xs[0], w["alpha"])], lambda i, o, a, ws: 2 * numel(o[0]), params=("alpha",)))
register("softmax", OpSpec(
    _same_shape,
    lambda xs, a, w: [K.softmax(xs[0], a.get("axis", -1), a.get("beta", 1.0))],
    lambda i, o, a, ws: 3 * numel(o[0]),
))
register("lrn", OpSpec(
    _same_shape,
    lambda xs, a, w: [K.local_response_norm(xs[0], a.get("depth_radius", 5), a.get("bias", 1.0), a.get("alpha", 1.0), a.get("beta", 0.5))],
    lambda i, o, a, ws: (2 * a.get("depth_radius", 5) + 1 + 3) * numel(o[0]),
    # the zero-padded squares, then sqrt(t): one temporary of about the output's size at a time
    lambda i, o, a, ws: 4 * numel(o[0]) * (o[0][-1] + 2 * a.get("depth_radius", 5)) // max(o[0][-1], 1),
))
register("dropout", OpSpec(_same_shape, lambda xs, a, w: [xs[0]], lambda i, o, a, ws: 0))


# --- element-wise and structure --------------------------------------------------------------------

def _operands(xs: list, attrs: dict, w) -> list:
    """Inputs (arrays or shapes) with the optional constant operand (weight "constant", e.g. a tensor
    plus a per-channel vector from a .tflite file) put first when attrs["constant_first"], else last."""
    if "constant" not in w:
        return list(xs)
    return [w["constant"], *xs] if attrs.get("constant_first") else [*xs, w["constant"]]


def _broadcast_infer(ins, attrs, ws):
    shapes = [tuple(s) for s in _operands(ins, attrs, ws)]
    if "constant" in ws and len(ws["constant"]) > max(len(s) for s in ins):
        raise PisplitError(f"element-wise op: constant {tuple(ws['constant'])} has more axes than the inputs {[tuple(s) for s in ins]}")
    try:
        return [tuple(np.broadcast_shapes(*shapes))]
    except ValueError:
        raise PisplitError(f"element-wise op: input shapes {shapes} do not broadcast") from None


def _reduce_inputs(fn):
    def run(xs, attrs, w):
        xs = _operands(xs, attrs, w)
        y = xs[0]
        for x in xs[1:]:
            y = fn(y, x)
        return [_act(np.asarray(y, dtype=np.float32), attrs)]
    return run


def _elementwise_flops(i, o, a, ws):
    return numel(o[0]) * (len(i) + ("constant" in ws) - 1) + _act_flops(o, a)


for _name, _fn in [("add", np.add), ("mul", np.multiply), ("sub", np.subtract)]:
    register(_name, OpSpec(_broadcast_infer, _reduce_inputs(_fn), _elementwise_flops, optional_params=("constant",)))


def _concat_axis(rank: int, axis: int, batch1: bool = False) -> int:
    axis = axis + rank if axis < 0 else axis
    if not (0 if batch1 else 1) <= axis < rank:
        raise PisplitError(f"concat: axis {axis} is not a non-batch axis of rank {rank}")
    return axis


def _concat_infer(ins, attrs, ws):
    rank = len(ins[0])
    axis = _concat_axis(rank, int(attrs.get("axis", -1)), bool(attrs.get("batch1")))
    for s in ins[1:]:
        if len(s) != rank or any(a != b for d, (a, b) in enumerate(zip(s, ins[0])) if d != axis):
            raise PisplitError(f"concat: shapes {[tuple(s) for s in ins]} differ off axis {axis}")
    out = list(ins[0])
    out[axis] = sum(s[axis] for s in ins)
    return [tuple(out)]


def _concat_run(xs, a):
    axis = _concat_axis(xs[0].ndim, int(a.get("axis", -1)), bool(a.get("batch1")))
    if a.get("batch1"):
        for x, n in zip(xs, a["axis0"]):
            batch1_only(x, f"concat on axis {axis}", {"axis0": n})
    return np.concatenate(xs, axis=axis)


register("concat", OpSpec(
    _concat_infer,
    lambda xs, a, w: [_act_owned(_concat_run(xs, a), a)],
    lambda i, o, a, ws: 0,
))

register("flatten", OpSpec(
    lambda ins, a, ws: [(ins[0][0], numel(ins[0][1:]))],
    lambda xs, a, w: [xs[0].reshape(xs[0].shape[0], -1)],
    lambda i, o, a, ws: 0,
))


def _reshape_infer(ins, attrs, ws):
    if attrs.get("batch1"):  # "full_shape" includes axis 0 (a reshape that moves the batch axis)
        full = [int(v) for v in attrs["full_shape"]]
        if numel(full) != numel(ins[0]) or min(full, default=1) < 0:
            raise PisplitError(f"reshape: cannot reshape {tuple(ins[0])} to {full}")
        return [tuple(full)]
    target = [int(v) for v in attrs["shape"]]
    total = numel(ins[0][1:])
    if target.count(-1) > 1:
        raise PisplitError(f"reshape: target {target} has more than one -1")
    if -1 in target:
        known = numel(v for v in target if v != -1)
        if known == 0 or total % known:
            raise PisplitError(f"reshape: cannot reshape {tuple(ins[0])} to {target}")
        target[target.index(-1)] = total // known
    if numel(target) != total:
        raise PisplitError(f"reshape: cannot reshape {tuple(ins[0])} (per frame {total} values) to {target}")
    return [(ins[0][0], *target)]


def _batch1_reshape(x, attrs):
    batch1_only(x, f"reshape {tuple(x.shape)} -> {tuple(attrs['full_shape'])}", attrs)
    return x.reshape(attrs["full_shape"])


register("reshape", OpSpec(
    _reshape_infer,
    lambda xs, a, w: [_batch1_reshape(xs[0], a) if a.get("batch1") else xs[0].reshape(xs[0].shape[0], *a["shape"])],
    lambda i, o, a, ws: 0,
))


def _pad_infer(ins, attrs, ws):
    p = attrs["paddings"]
    if len(p) != len(ins[0]) or (tuple(p[0]) != (0, 0) and not attrs.get("batch1")):
        raise PisplitError(f"pad: paddings {p} need one pair per axis of {tuple(ins[0])} and none on the batch axis")
    return [tuple(s + int(a) + int(b) for s, (a, b) in zip(ins[0], p))]


def _pad_run(x, a):
    if a.get("batch1"):  # pads axis 0 of one frame (a window partition's (T, C) rows)
        batch1_only(x, f"pad {a['paddings']}", a)
    return K.pad(x, a["paddings"], a.get("value", 0.0))


register("pad", OpSpec(
    _pad_infer,
    lambda xs, a, w: [_pad_run(xs[0], a)],
    lambda i, o, a, ws: 0,
))


# --- reductions, layout and resizing (what .tflite models use) -------------------------------------

def _non_batch_axes(axes, rank: int, what: str) -> list[int]:
    out = []
    for a in axes:
        a = int(a) + rank if int(a) < 0 else int(a)
        if not 0 < a < rank:
            raise PisplitError(f"{what}: axis {a} is not a non-batch axis of rank {rank}")
        out.append(a)
    return sorted(set(out))


def _mean_axes(attrs, rank: int, x=None) -> list[int]:
    """The axes a mean reduces: non-batch ones, or with attrs["batch1"] any (axis 0 of one frame)."""
    if not attrs.get("batch1"):
        return _non_batch_axes(attrs["axes"], rank, "mean")
    axes = sorted({int(a) % rank for a in attrs["axes"]})
    if x is not None and 0 in axes:
        batch1_only(x, f"mean over axes {axes}", attrs)
    return axes


def _mean_infer(ins, attrs, ws):
    s = ins[0]
    axes = _mean_axes(attrs, len(s))
    if attrs.get("keepdims", False):
        return [tuple(1 if d in axes else v for d, v in enumerate(s))]
    return [tuple(v for d, v in enumerate(s) if d not in axes)]


register("mean", OpSpec(
    _mean_infer,
    lambda xs, a, w: [K.mean(xs[0], _mean_axes(a, xs[0].ndim, xs[0]), a.get("keepdims", False))],
    lambda i, o, a, ws: numel(i[0]),
))


def _batch1_transpose(x, attrs):
    if attrs.get("batch1"):
        batch1_only(x, f"transpose {list(attrs['perm'])}", attrs)
    return np.ascontiguousarray(np.transpose(x, attrs["perm"]))


def _transpose_infer(ins, attrs, ws):
    perm = [int(p) for p in attrs["perm"]]
    if sorted(perm) != list(range(len(ins[0]))) or (perm[0] != 0 and not attrs.get("batch1")):
        raise PisplitError(f"transpose: perm {perm} is not a permutation of the axes of {tuple(ins[0])} keeping the batch axis first")
    return [tuple(ins[0][p] for p in perm)]


register("transpose", OpSpec(
    _transpose_infer,
    lambda xs, a, w: [_batch1_transpose(xs[0], a)],
    lambda i, o, a, ws: 0,
))


def _resize_infer(ins, attrs, ws):
    size = [int(v) for v in attrs["size"]]
    if len(ins[0]) != 4 or len(size) != 2 or min(size) < 1:
        raise PisplitError(f"resize: needs an NHWC input and a positive [height, width] size, got {tuple(ins[0])} and {size}")
    if attrs.get("align_corners") and attrs.get("half_pixel_centers"):
        raise PisplitError("resize: align_corners and half_pixel_centers cannot both be set")
    return [(ins[0][0], *size, ins[0][3])]


def _resize_run(fn):
    def run(xs, attrs, w):
        return [fn(xs[0], attrs["size"], bool(attrs.get("align_corners")), bool(attrs.get("half_pixel_centers")))]
    return run


register("resize_bilinear", OpSpec(_resize_infer, _resize_run(K.resize_bilinear), lambda i, o, a, ws: 8 * numel(o[0])))
register("resize_nearest", OpSpec(_resize_infer, _resize_run(K.resize_nearest), lambda i, o, a, ws: 0))


# --- quantization boundaries (int8 graphs: float32 <-> int8, int8 -> int8 requantization) ---------------

def _float_only(name):
    def run(xs, attrs, w):
        raise PisplitError(f"op {name} runs on quantized tensors only (its graph carries no quantization for it)")
    return run


for _name in ("quantize", "dequantize"):
    register(_name, OpSpec(_same_shape, _float_only(_name), lambda i, o, a, ws: numel(o[0])))


# --- converter patterns (issue 12): transposed convolution, activation slices, tiles, depth to space ----
# None of these starts a split (partitioners.split_costs.PRIMARY_OPS) or follows one
# (partitioners.split_segments): each is a segment of its own, run whole by one rank.

def _tconv_infer(ins, attrs, ws):
    kh, kw, cin, cout = ws["kernel"]
    if len(ins[0]) != 4 or ins[0][-1] != cin:
        raise PisplitError(f"conv2d_transpose: input {tuple(ins[0])} does not fit kernel {tuple(ws['kernel'])}")
    if "bias" in ws and tuple(ws["bias"]) != (cout,):
        raise PisplitError(f"conv2d_transpose: bias {tuple(ws['bias'])} does not fit {cout} output channels")
    oh, ow = (int(v) for v in attrs["output_size"])
    return [(ins[0][0], oh, ow, cout)]


def _tconv_run(xs, attrs, w):
    y = K.conv2d_transpose(xs[0], w["kernel"], w.get("bias"), attrs["strides"], attrs["output_size"], attrs.get("padding", "same"))
    return [_act_owned(y, attrs)]


def _tconv_full_bytes(ins, attrs, ws):
    (n, h, w, _), (kh, kw, _, cout), (sh, sw) = ins[0], ws["kernel"], attrs["strides"]
    return 4 * n * ((h - 1) * sh + kh) * ((w - 1) * sw + kw) * cout


register("conv2d_transpose", OpSpec(
    _tconv_infer, _tconv_run,
    lambda i, o, a, ws: 2 * numel(i[0]) * numel(ws["kernel"][:2]) * ws["kernel"][3] + _act_flops(o, a),
    lambda i, o, a, ws: _tconv_full_bytes(i, a, ws),
    params=("kernel",), optional_params=("bias",),
))


def _slice_check(s, starts, steps, counts, first: int) -> None:
    for d, (a, st, c) in enumerate(zip(starts, steps, counts), first):
        last = a + st * (c - 1)
        if c < 0 or st == 0 or (c and not (0 <= a < s[d] and 0 <= last < s[d])):
            raise PisplitError(f"strided_slice: axis {d} of {tuple(s)} has no indices {a}:{last}:{st}")


def _strided_slice_run(xs, a, w):
    if not a.get("batch1"):
        return [K.strided_slice(xs[0], a["starts"], a["steps"], a["counts"], a["out_shape"])]
    batch1_only(xs[0], "strided_slice over axis 0", a)
    index = tuple(K.axis_slice(s, st, c) for s, st, c in zip(a["starts"], a["steps"], a["counts"]))
    return [np.ascontiguousarray(xs[0][index]).reshape(a["out_shape"])]


def _slice_infer(ins, attrs, ws):
    s = ins[0]
    starts, steps, counts = attrs["starts"], attrs["steps"], attrs["counts"]
    if attrs.get("batch1"):  # one (start, step, count) for axis 0 too; out_shape is the whole shape
        if not (len(starts) == len(steps) == len(counts) == len(s)):
            raise PisplitError(f"strided_slice: needs one start, step and count per axis of {tuple(s)}")
        _slice_check(s, starts, steps, counts, 0)
        out = [int(v) for v in attrs["out_shape"]]
        if numel(out) != numel(counts):
            raise PisplitError(f"strided_slice: {counts} values do not make shape {out}")
        return [tuple(out)]
    if not (len(starts) == len(steps) == len(counts) == len(s) - 1):
        raise PisplitError(f"strided_slice: needs one start, step and count per non-batch axis of {tuple(s)}")
    _slice_check(s, starts, steps, counts, 1)
    out = [int(v) for v in attrs["out_shape"]]
    if numel(out) != numel(counts):
        raise PisplitError(f"strided_slice: {counts} values per frame do not make shape {out}")
    return [(s[0], *out)]


register("strided_slice", OpSpec(
    _slice_infer,
    _strided_slice_run,
    lambda i, o, a, ws: 0,
))


def _tile_infer(ins, attrs, ws):
    m = [int(v) for v in attrs["multiples"]]
    if len(m) != len(ins[0]) - 1 or min(m, default=1) < 1:
        raise PisplitError(f"tile: multiples {m} need one positive value per non-batch axis of {tuple(ins[0])}")
    return [(ins[0][0], *(s * k for s, k in zip(ins[0][1:], m)))]


register("tile", OpSpec(_tile_infer, lambda xs, a, w: [K.tile(xs[0], a["multiples"])], lambda i, o, a, ws: 0))


def _d2s_infer(ins, attrs, ws):
    b = int(attrs["block"])
    n, h, w, c = ins[0] if len(ins[0]) == 4 else (None,) * 4
    if n is None or b < 1 or c % (b * b):
        raise PisplitError(f"depth_to_space: block {b} does not fit input {tuple(ins[0])}")
    return [(n, h * b, w * b, c // (b * b))]


register("depth_to_space", OpSpec(_d2s_infer, lambda xs, a, w: [K.depth_to_space(xs[0], int(a["block"]))], lambda i, o, a, ws: 0))


# --- transformers and sequence models (issue 19) ------------------------------------------------------
# A converted transformer or unrolled LSTM moves the batch axis (attention's TRANSPOSE [2, 0, 1], an
# LSTM's RESHAPE (1, T, C) -> (T, 1, C), LayerNorm's MEAN over a reshaped axis 0). pisplit imports
# such a node with attrs["batch1"]: it treats axis 0 as an ordinary axis of one frame, its shapes are
# exact for batch 1, and it refuses any other batch size when run (frames go through one at a time
# everywhere pisplit runs them; a stacked batch would mix frames there, so it is refused, not guessed).

def batch1_only(x: np.ndarray, what: str, attrs: dict) -> None:
    """PisplitError unless `x` holds one frame: `what` moves or reduces the batch axis. attrs["axis0"] is
    the size of the input's axis 0 for one frame (1, or a sequence length after an earlier such node)."""
    if x.shape[0] != int(attrs.get("axis0", 1)):
        raise PisplitError(f"{what} treats the batch axis as a data axis (imported for one frame at a time); "
                           f"it runs on one frame only (axis 0 of {int(attrs.get('axis0', 1))}), got {x.shape[0]}")


register("constant", OpSpec(
    # a constant read where a computed tensor is expected (ViT's class token into CONCATENATION, a
    # constant operand of BATCH_MATMUL or SELECT): its value, in its own shape, for every frame
    lambda ins, a, ws: [tuple(ws["value"])],
    lambda xs, a, w: [w["value"]],
    lambda i, o, a, ws: 0,
    params=("value",),
))


def _bmm_shapes(ins, attrs):
    a, b = (list(s) for s in ins)
    if len(a) < 2 or len(b) < 2:
        raise PisplitError(f"batch_matmul: inputs {[tuple(s) for s in ins]} need at least two axes")
    if attrs.get("adj_x"):
        a[-1], a[-2] = a[-2], a[-1]
    if attrs.get("adj_y"):
        b[-1], b[-2] = b[-2], b[-1]
    if a[-1] != b[-2]:
        raise PisplitError(f"batch_matmul: {tuple(ins[0])} and {tuple(ins[1])} do not multiply (adj_x={bool(attrs.get('adj_x'))}, "
                           f"adj_y={bool(attrs.get('adj_y'))})")
    try:
        lead = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    except ValueError:
        raise PisplitError(f"batch_matmul: leading axes of {tuple(ins[0])} and {tuple(ins[1])} do not broadcast") from None
    return a, b, lead


def _bmm_infer(ins, attrs, ws):
    a, b, lead = _bmm_shapes(ins, attrs)
    return [(*lead, a[-2], b[-1])]


register("batch_matmul", OpSpec(
    _bmm_infer,
    lambda xs, a, w: [K.batch_matmul(xs[0], xs[1], bool(a.get("adj_x")), bool(a.get("adj_y")))],
    lambda i, o, a, ws: 2 * numel(o[0]) * _bmm_shapes(i, a)[0][-1],
))
register("gelu", OpSpec(_same_shape, lambda xs, a, w: [K.gelu(xs[0], bool(a.get("approximate")))], lambda i, o, a, ws: 8 * numel(o[0])))
register("rsqrt", OpSpec(_same_shape, lambda xs, a, w: [K.rsqrt(xs[0])], lambda i, o, a, ws: 2 * numel(o[0])))


def _binary_run(fn):
    def run(xs, attrs, w):
        a, b = _operands(xs, attrs, w)
        return [np.asarray(fn(np.asarray(a, np.float32), np.asarray(b, np.float32)), dtype=np.float32)]
    return run


def _binary_infer(ins, attrs, ws):
    if len(_operands(ins, attrs, ws)) != 2:
        raise PisplitError(f"binary op: needs two operands, got {len(_operands(ins, attrs, ws))}")
    return _broadcast_infer(ins, attrs, ws)


# Comparisons make float32 0/1 (pisplit's tensors are float32; TFLite's are BOOL: the exporter casts)
register("squared_difference", OpSpec(_binary_infer, _binary_run(lambda a, b: np.square(a - b)), lambda i, o, a, ws: 2 * numel(o[0]),
                                      optional_params=("constant",)))
register("equal", OpSpec(_binary_infer, _binary_run(np.equal), lambda i, o, a, ws: numel(o[0]), optional_params=("constant",)))
register("not_equal", OpSpec(_binary_infer, _binary_run(np.not_equal), lambda i, o, a, ws: numel(o[0]), optional_params=("constant",)))


def _select_infer(ins, attrs, ws):
    if len(ins) != 3:
        raise PisplitError(f"select: needs a condition and two values, got {len(ins)} inputs")
    try:
        return [tuple(np.broadcast_shapes(*(tuple(s) for s in ins)))]
    except ValueError:
        raise PisplitError(f"select: input shapes {[tuple(s) for s in ins]} do not broadcast") from None


register("select", OpSpec(
    _select_infer,
    lambda xs, a, w: [np.where(np.asarray(xs[0]) != 0, np.asarray(xs[1], np.float32), np.asarray(xs[2], np.float32)).astype(np.float32)],
    lambda i, o, a, ws: numel(o[0]),
))


def _ln_infer(ins, attrs, ws):
    c = ins[0][-1]
    for p in ("gamma", "beta"):
        if tuple(ws[p]) != (c,):
            raise PisplitError(f"layer_norm: {p} has shape {tuple(ws[p])}, expected ({c},)")
    return [tuple(ins[0])]


register("layer_norm", OpSpec(
    _ln_infer,
    lambda xs, a, w: [K.layer_norm(xs[0], w["gamma"], w["beta"], a.get("epsilon", 1e-6))],
    lambda i, o, a, ws: 8 * numel(o[0]),
    lambda i, o, a, ws: 4 * numel(o[0]),  # the centred copy
    params=("gamma", "beta"),
))
