"""Integer (int8) kernels of the numpy engine, in either of two arithmetics (int8_arithmetic): LiteRT's
default interpreter's (XNNPACK's qs8 kernels, the default) or TFLite's reference kernels', bit for bit.

Each kernel takes the node's integer inputs, attributes, raw integer weights (int8 filters, int32
biases) and a `QuantContext` with the quantization of its inputs, outputs and weights, and returns
integer outputs. The reference arithmetic is tensorflow/lite/kernels/internal/reference/integer_ops/*
with the kernels' Prepare steps: int32 accumulation of (x - input zero point) * filter, bias added, scaled
by a per-channel Q31 multiplier and shift (layers.quant), output zero point added, clamped to the fused
activation's range in the quantized domain. The XNNPACK one keeps the same exact int32 accumulators and
rescales them as XNNPACK does (see ARITHMETICS below for each op).

Accumulations run as float matrix products of integer values: int8 operands in float32 in chunks short
enough that every partial sum stays below 2**24 (EXACT_F32_TERMS products), summed in float64, so BLAS
is exact whatever its summation order, and fast.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from . import kernels as K
from .errors import PisplitError
from .quant import (TensorQuant, activation_range, multiply_by_quantized_multiplier, quantize_multiplier, requantize,
                    round_half_away, rounding_divide_by_pot)


# --- which arithmetic: LiteRT's default interpreter (XNNPACK) or TFLite's reference kernels ---------------
# LiteRT's default interpreter hands a full-integer model's int8 nodes to XNNPACK where it takes them, and
# XNNPACK's qs8 kernels round differently from TFLite's reference kernels (OpResolverType.BUILTIN_REF):
# 1 unit now and then per op, grown through a deep network to 9 units on ResNet50's logits. "xnnpack" (the
# default) computes what a user's litert run computes, measured node by node (each node alone as its own
# model, on the numpy run's own inputs) and whole-model equal bit for bit on the converter's MobileNetV2 and
# ResNet50 (int8 and float-I/O), EfficientNetB0 and MobileNetV3Small int8 and every small int8 op case
# (tests/layers/test_int8_kernels.py, test_int8_corpus.py, test_xnnpack_int8.py), with LiteRT 2.3 on x86-64
# (XNNPACK's ARM builds pick their own kernels: per-tensor fully-connected layers may take a "rndnu"
# fixed-point requantization there; not measured on a Pi):
# - CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED (qs8-qc8w / qs8 GEMM, IGEMM, DWCONV, "fp32"
#   requantization): the exact int32 accumulator (bias included) as float32, times the float32
#   scale (input_scale * filter_scale[c]) / output_scale (each step rounded to float32, as the operator's
#   set-up computes it), rounded half to even (magic bias / cvtps2dq), plus the output zero point, clamped.
# - MEAN (reduce-nd's qs8 mean): the int32 sum of x - input zero point as float32 times float32(input_scale
#   / output_scale) * float32(1 / count), rounded half to even, plus the zero point.
# - ADD (qs8-vadd): float32 scale ratios as fixed-point multipliers with 20 bits below the larger one's
#   leading bit (rounded half to even), an exact int32 sum plus 2**(shift - 1), arithmetic shift right (ties
#   toward +infinity), plus the zero point.
# - MUL (qs8-vmul fp32): (a - za) * (b - zb) as float32 times float32 (sa * sb) / so, then as the conv.
# - LEAKY_RELU (qs8-vlrelu) and int8 -> int8 QUANTIZE (qs8-vcvt): Q8 multipliers rint(256 * ratio),
#   (x - zi) * multiplier + 128 shifted right 8 bits, plus the zero point.
# - float -> int8 QUANTIZE (f32-qs8-vcvt): rint(x * float32(1 / scale)) + zero point (ties to even).
# Ops whose default-interpreter result equals the reference kernels' (measured, every int8 value or seeded
# inputs: SUB, HARD_SWISH, LOGISTIC, TANH, SOFTMAX, RELU(6), pools, PAD, DEQUANTIZE, data movement) keep one
# arithmetic in both modes. "reference" stays selectable; test_int8_corpus.py checks it against BUILTIN_REF
# bit for bit.
ARITHMETICS = ("xnnpack", "reference")
# the process's arithmetic: PISPLIT_INT8_ARITHMETIC chooses it for every process of a run (MPI ranks, the
# CLI, benchmarks); set_int8_arithmetic / int8_arithmetic(mode) within one
_ARITHMETIC = [os.environ.get("PISPLIT_INT8_ARITHMETIC") or "xnnpack"]


def int8_arithmetic(mode: str | None = None):
    """The int8 kernels' arithmetic now ('xnnpack' or 'reference'); with `mode`, a context manager that
    sets it for its block (`with int8_arithmetic("reference"): ...`), restoring the previous one after."""
    if mode is None:
        return _ARITHMETIC[0]
    if mode not in ARITHMETICS:
        raise PisplitError(f"int8 arithmetic {mode!r}: expected one of {', '.join(ARITHMETICS)}")
    from contextlib import contextmanager

    @contextmanager
    def scope():
        previous = _ARITHMETIC[0]
        _ARITHMETIC[0] = mode
        try:
            yield mode
        finally:
            _ARITHMETIC[0] = previous
    return scope()


def set_int8_arithmetic(mode: str) -> None:
    """Set the int8 kernels' arithmetic for the process ('xnnpack', the default, or 'reference')."""
    if mode not in ARITHMETICS:
        raise PisplitError(f"int8 arithmetic {mode!r}: expected one of {', '.join(ARITHMETICS)}")
    _ARITHMETIC[0] = mode


def _xnnpack() -> bool:
    mode = _ARITHMETIC[0]
    if mode not in ARITHMETICS:
        raise PisplitError(f"PISPLIT_INT8_ARITHMETIC={mode!r}: expected one of {', '.join(ARITHMETICS)}")
    return mode == "xnnpack"


@dataclass
class QuantContext:
    """Quantization of one node's inputs, outputs (None for float tensors) and weights."""

    inputs: list
    outputs: list
    weights: dict = field(default_factory=dict)


def _scalar(q: TensorQuant | None, what: str) -> tuple[float, int]:
    if q is None:
        raise PisplitError(f"{what} is not quantized")
    return q.scalar(what)


def _exp_f32(x: np.ndarray) -> np.ndarray:
    """expf as C computes it: the float32 nearest to exp of a float32 (numpy's float32 exp may be 1 ulp off)."""
    return np.exp(np.asarray(x, np.float32).astype(np.float64)).astype(np.float32)


# --- convolutions and fully connected -------------------------------------------------------------------

# float32 holds every integer below 2**24 exactly; an int8 product (x - zero point) * filter is at most
# 255 * 128 in magnitude, so a dot product of up to EXACT_F32_TERMS such products is exact in float32
# BLAS whatever its summation order (or FMA); longer ones are summed in chunks of that many, in float64.
EXACT_F32_TERMS = (1 << 24) // (255 * 128)


def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b of integer-valued matrices, exactly: float32 chunks of at most EXACT_F32_TERMS terms
    summed in float64 (float64 operands: one product)."""
    k = a.shape[-1]
    if a.dtype == np.float64 or k <= EXACT_F32_TERMS:
        return a @ b
    out = np.zeros((*a.shape[:-1], b.shape[-1]), np.float64)
    for c0 in range(0, k, EXACT_F32_TERMS):
        out += a[..., c0:c0 + EXACT_F32_TERMS] @ b[c0:c0 + EXACT_F32_TERMS]
    return out

def _out_scale_per_channel(in_scale: float, wq: TensorQuant, out_scale: float, n: int) -> np.ndarray:
    """input_scale * filter_scale[c] / output_scale in double, one per output channel (per-tensor broadcast)."""
    ws = np.asarray(wq.scale, np.float64)
    if ws.size == 1:
        ws = np.full(n, ws[0])
    elif ws.size != n:
        raise PisplitError(f"filter has {ws.size} scales for {n} output channels")
    return np.float64(in_scale) * ws / np.float64(out_scale)


def _layer_scaling(op: str, in_q: TensorQuant, wq: TensorQuant, out_q: TensorQuant, cout: int):
    """What _finisher scales a conv / fully-connected layer's accumulators by in the current arithmetic:
    ("xnnpack", float32 scales) or the reference real multipliers (output_multipliers)."""
    if _xnnpack():
        return "xnnpack", xnnpack_scales(_scalar(in_q, f"{op} input")[0], wq, _scalar(out_q, f"{op} output")[0], cout)
    return output_multipliers(op, in_q, wq, out_q, cout)


def output_multipliers(op: str, in_q: TensorQuant, wq: TensorQuant, out_q: TensorQuant, cout: int):
    """The real multipliers that scale a conv / fully-connected int32 accumulator to its output, as
    TFLite's Prepare computes them: per channel input_scale * filter_scale[c] / output_scale in double
    (conv, per-channel fc), or for a per-tensor fc the float32 product of the two scales, then double."""
    in_scale, _ = _scalar(in_q, f"{op} input")
    out_scale, _ = _scalar(out_q, f"{op} output")
    if op == "dense" and not wq.per_channel:
        # GetQuantizedConvolutionMultipler: the product of the two float scales, then double
        return np.float64(np.float32(in_scale) * np.float32(wq.scale[0])) / np.float64(out_scale)
    return _out_scale_per_channel(in_scale, wq, out_scale, cout)


def xnnpack_scales(in_scale: float, wq: TensorQuant, out_scale: float, n: int) -> np.ndarray:
    """XNNPACK's requantization scales of a qs8 conv / fully-connected layer: float32
    (input_scale * filter_scale[c]) / output_scale, each step rounded to float32, one per output channel."""
    ws = np.broadcast_to(np.asarray(wq.scale, np.float32), (n,))
    return (np.float32(in_scale) * ws) / np.float32(out_scale)


def xnnpack_activation_range(activation, quant: TensorQuant) -> tuple[int, int]:
    """A fused activation's clamp as XNNPACK quantizes it (xnn_qs8_quantize): rint(value / scale + zero point)
    in float32, ties to even (TFLite's reference adds the zero point after rounding value / scale half away
    from zero: RELU6 on output scale 12 clamps at 1 there, at 0 here)."""
    lo, hi = activation_range(activation, quant)  # (validates the activation)
    if activation in (None, "linear"):
        return lo, hi
    scale, zp = quant.scalar("activation output")
    reals = {"relu": (0.0, None), "relu6": (0.0, 6.0), "relu_n1_to_1": (-1.0, 1.0)}[activation]
    bounds = [None if r is None else int(np.rint(np.clip(np.float32(r) / np.float32(scale) + np.float32(zp), quant.qmin, quant.qmax)))
              for r in reals]
    return bounds[0], quant.qmax if bounds[1] is None else bounds[1]


def _activation_range(activation, quant: TensorQuant) -> tuple[int, int]:
    """The fused activation's clamp in the current arithmetic."""
    return xnnpack_activation_range(activation, quant) if _xnnpack() else activation_range(activation, quant)


def xnnpack_requantize(acc: np.ndarray, scale, zero_point: int, lo: int, hi: int, dtype=np.int8) -> np.ndarray:
    """XNNPACK's fp32 requantization of int32 accumulators (integers, any integer or float dtype holding
    them exactly): float32(acc) * scale in float32, rounded half to even, plus the zero point, clamped."""
    t = np.asarray(acc).astype(np.float32)  # int -> float32 rounds to nearest even, as cvtdq2ps
    t *= np.asarray(scale, np.float32)
    np.rint(t, out=t)
    t += np.float32(zero_point)
    np.clip(t, lo, hi, out=t)
    return t.astype(dtype)


def _accumulator(acc: np.ndarray, bias) -> np.ndarray:
    acc = acc.astype(np.int64)  # float64 sums of integer products are exact integers: no rounding needed
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)
    return acc


def _partial(acc: np.ndarray, bias, what: str) -> np.ndarray:
    """A part's int32 partial sum (attrs["partial"]: a conv-filter / fc-input part), bias included when
    the part owns it; requantized once, after the parts' sums are added (qrequantize)."""
    acc = _accumulator(acc, bias)
    if acc.size and (acc.min() < -(1 << 31) or acc.max() >= 1 << 31):
        raise PisplitError(f"{what}: an int8 partial sum leaves the int32 range")
    return acc.astype(np.int32)


def _finish(acc: np.ndarray, bias, multipliers, out_q: TensorQuant, activation) -> np.ndarray:
    acc = _accumulator(acc, bias)
    _, zp = out_q.scalar("output")
    lo, hi = activation_range(activation, out_q)
    return requantize(acc, multipliers, zp, lo, hi, out_q.np_dtype)


def _check_symmetric_filter(wq: TensorQuant, what: str) -> None:
    if any(wq.zero_point):
        raise PisplitError(f"{what}: int8 filters must have zero point 0 (TFLite's integer kernels ignore it)")


def _filtered_operands(xs, w, ctx: QuantContext, what: str) -> tuple:
    """(x, kernel, input scale, input zero point, output quantization, filter quantization) of an int8 layer
    with a filter (conv, fully connected, transpose conv), its filter checked symmetric."""
    in_scale, in_zp = _scalar(ctx.inputs[0], f"{what} input")
    wq = ctx.weights["kernel"]
    _check_symmetric_filter(wq, what)
    return xs[0], w["kernel"], in_scale, in_zp, ctx.outputs[0], wq


# The integer kernels hold their temporaries (float operands, int64 accumulators and their rescaling,
# ~16 bytes an output value) for a band of output rows and a block of output channels at a time, at
# most about BAND_BYTES, instead of for the whole layer: a node's memory is then its int8 input and
# output and the float kernels' working set the cost model counts (layers.ops work_bytes), not 30x its
# output (MobileNetV2's first 1x1 expansion held 34 MiB for a 1.2 MiB output). Bands change no value:
# every sum is an exact integer and the rescaling is element-wise.
BAND_BYTES = 1 << 20
# the float copy of a block of a conv / fully-connected filter's output channels: each block rebuilds the
# layer's im2col bands, so blocks are few (one for every filter of up to half a million weights)
KERNEL_BLOCK_BYTES = 1 << 21
TEMP_BYTES_PER_VALUE = 16  # float product (4), int64 accumulator rescaled in place (8), sign mask (1), int8 result


def _operand_type(x_dtype, kernel_dtype, zero_point: int):
    """float32 when both operands are int8 (exact products, see EXACT_F32_TERMS), else float64."""
    if x_dtype == np.int8 and kernel_dtype == np.int8 and -128 <= zero_point <= 127:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _int8_operands(x: np.ndarray, zero_point: int, kernel: np.ndarray):
    """(x - zero point, kernel) in _operand_type."""
    ftype = _operand_type(x.dtype, kernel.dtype, zero_point)
    return x.astype(ftype) - ftype.type(zero_point), kernel.astype(ftype)


def _finisher(bias, mults, out_q: TensorQuant | None, activation, partial: str | None):
    """finish(acc, c0, c1): output channels [c0, c1) of an accumulator block as the layer's output dtype:
    the int32 partial sum (`partial` names the op) or the requantized int8 values."""
    if partial:
        return lambda acc, c0, c1: _partial(acc, None if bias is None else bias[c0:c1], partial)
    _, zp = out_q.scalar("output")
    lo, hi = (xnnpack_activation_range if isinstance(mults, tuple) else activation_range)(activation, out_q)
    if isinstance(mults, tuple):  # ("xnnpack", float32 scales): XNNPACK's fp32 requantization
        scales = mults[1]

        def finish_xnnpack(acc, c0, c1):
            if bias is not None:
                acc = acc.astype(np.int64)  # exact integers
                acc += np.asarray(bias[c0:c1], np.int64)
            return xnnpack_requantize(acc, scales if scales.ndim == 0 else scales[c0:c1], zp, lo, hi, out_q.np_dtype)
        return finish_xnnpack
    m, e = quantize_multiplier(mults)

    def finish(acc, c0, c1):
        acc = acc.astype(np.int64)  # float sums of integer products are exact integers
        if bias is not None:
            acc += np.asarray(bias[c0:c1], np.int64)
        t = multiply_by_quantized_multiplier(acc, m if m.ndim == 0 else m[c0:c1], e if e.ndim == 0 else e[c0:c1], overwrite=True)
        t += int(zp)
        np.clip(t, lo, hi, out=t)
        return t.astype(out_q.np_dtype)
    return finish


def _accumulator_bytes(k: int, ftype) -> int:
    """Bytes per output value of _exact_matmul's result: the float32 product; past EXACT_F32_TERMS terms a
    float64 sum beside each chunk's float32 product; float64 operands: their float64 product."""
    ftype = np.dtype(ftype)
    return 8 if ftype == np.float64 else 4 if k <= EXACT_F32_TERMS else 12


def _matmul_row_bytes(row_values: int, k: int, channels: int, ftype, operand_itemsize: int = 1) -> int:
    """A band row's temporaries in _matmul_bands: its integer operand (int8, or a hybrid layer's float32
    integers) and its float copy (k values a row value), the accumulator and the finisher's int64 rescaling
    for `channels` output channels."""
    per_value = np.dtype(ftype).itemsize + operand_itemsize
    return row_values * (k * per_value + channels * (_accumulator_bytes(k, ftype) + TEMP_BYTES_PER_VALUE))


def matmul_work_bytes(n_rows: int, row_values: int, k: int, cout: int, ftype, operand_itemsize: int = 1) -> int:
    """What _matmul_bands holds besides its output (for layers.graph's cost model, issue 12): the float copy
    of a block of filters and the temporaries of one band, as it chooses them."""
    itemsize = np.dtype(ftype).itemsize
    block = max(1, min(cout, KERNEL_BLOCK_BYTES // max(k * itemsize, 1)))
    per_row = _matmul_row_bytes(row_values, k, block, ftype, operand_itemsize)
    band = max(1, min(n_rows, BAND_BYTES // max(per_row, 1)))
    return k * block * itemsize + band * per_row


def _matmul_bands(rows, n_rows: int, row_values: int, kernel: np.ndarray, zp: int, ftype, finish, out: np.ndarray,
                  operand_itemsize: int = 1) -> None:
    """out[r0:r1, ..., c0:c1] = finish(exact (rows(r0, r1) - zp) @ kernel[:, c0:c1]) over bands of rows and
    blocks of output channels; rows(r0, r1) gives the integer operand of rows [r0, r1) as a (m, K) matrix
    of m = (r1 - r0) * row_values rows (an im2col band, or a slice of the input)."""
    k, cout = kernel.shape
    block = max(1, min(cout, KERNEL_BLOCK_BYTES // max(k * ftype.itemsize, 1)))
    for c0 in range(0, cout, block):
        c1 = min(cout, c0 + block)
        kf = kernel[:, c0:c1].astype(ftype)
        per_row = _matmul_row_bytes(row_values, k, c1 - c0, ftype, operand_itemsize)
        band = max(1, min(n_rows, BAND_BYTES // max(per_row, 1)))
        for r0 in range(0, n_rows, band):
            r1 = min(n_rows, r0 + band)
            a = rows(r0, r1).astype(ftype)
            a -= ftype.type(zp)
            acc = _exact_matmul(a, kf)
            del a  # (the next band's temporaries do not meet this one's)
            out[r0:r1, ..., c0:c1] = finish(acc, c0, c1).reshape(out[r0:r1, ..., c0:c1].shape)
            del acc
        del kf  # the next block's copy does not meet this one (it held two blocks, 4 MiB, at once)


def _conv_geometry(x, kernel, attrs) -> tuple:
    """(KH, KW, Cin/groups, Cout, groups, strides, dilation, pads, output (OH, OW)) of a conv of NHWC input `x`
    with `kernel` (KH, KW, Cin/groups, Cout): what qconv2d and hybrid_conv2d both start from."""
    kh, kw, cin_g, cout = kernel.shape
    groups = int(attrs.get("groups", 1))
    strides = tuple(attrs.get("strides") or (1, 1))
    dilation = tuple(attrs.get("dilation") or (1, 1))
    pads = K.resolve_padding(x.shape[1:3], (kh, kw), strides, dilation, attrs.get("padding", "valid"))
    outs = [K.conv_output_size(s, k, st, d, *p) for s, k, st, d, p in zip(x.shape[1:3], (kh, kw), strides, dilation, pads)]
    return kh, kw, cin_g, cout, groups, strides, dilation, pads, outs


def qconv2d(xs, attrs, w, ctx: QuantContext):
    """CONV_2D / DEPTHWISE_CONV_2D int8 with per-channel filter scales (reference ConvPerChannel /
    DepthwiseConvPerChannel): padding contributes (zero point - zero point) = 0, so the int8 input is
    padded with its zero point. Computed in bands of output rows (BAND_BYTES)."""
    x, kernel, in_scale, in_zp, out_q, wq = _filtered_operands(xs, w, ctx, "conv")
    kh, kw, cin_g, cout, groups, strides, dilation, pads, outs = _conv_geometry(x, kernel, attrs)
    if groups != 1 and cin_g != 1:
        raise PisplitError("conv: grouped int8 convolutions other than depthwise are not supported")
    ftype = _operand_type(x.dtype, kernel.dtype, in_zp)
    padded = any(a or b for a, b in pads)
    if padded and not np.can_cast(np.min_scalar_type(in_zp), x.dtype):
        x = x.astype(np.int64)  # a zero point the input's type cannot hold (never from TFLite): pad wider
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=in_zp) if padded else x
    win = K._windows(xp, (kh, kw), strides, dilation, outs)  # (N, OH, OW, KH, KW, C), a view
    n, (oh, ow) = x.shape[0], outs
    partial = "conv" if attrs.get("partial") else None
    finish = _finisher(w.get("bias"), None if partial else _layer_scaling("conv", ctx.inputs[0], wq, out_q, cout), out_q,
                       attrs.get("activation"), partial)
    y = np.empty((n, oh, ow, cout), np.int32 if partial else out_q.np_dtype)
    flat = y.reshape(n * oh, ow, cout)
    if groups == 1:
        depth = kh * kw * cin_g
        direct = (kh, kw) == (1, 1) and strides == (1, 1) and not padded
        src = xp.reshape(n * oh, ow, cin_g) if direct else None

        def rows(r0, r1):
            if direct:
                return src[r0:r1].reshape(-1, depth)
            band = [win[b, i] for b, i in (divmod(r, oh) for r in range(r0, r1))]  # output rows of any image
            return np.stack(band).reshape(-1, depth)

        _matmul_bands(rows, n * oh, ow, kernel.reshape(depth, cout), in_zp, ftype, finish, flat)
        return [y]
    # depthwise: kh * kw products per output, exact in float32 up to EXACT_F32_TERMS taps
    mult = cout // groups
    atype = ftype if kh * kw <= EXACT_F32_TERMS else np.dtype(np.float64)
    wk = kernel.reshape(kh, kw, groups, mult).astype(ftype)
    band = max(1, min(n * oh, BAND_BYTES // max(ow * cout * (2 * atype.itemsize + TEMP_BYTES_PER_VALUE), 1)))
    for r0 in range(0, n * oh, band):
        r1 = min(n * oh, r0 + band)
        acc = np.zeros((r1 - r0, ow, groups, mult), atype)
        for b in range(r0 // oh, (r1 - 1) // oh + 1):  # the images the band spans
            i0, i1 = max(r0, b * oh) - b * oh, min(r1, (b + 1) * oh) - b * oh
            part = acc[b * oh + i0 - r0:b * oh + i1 - r0]
            for i in range(kh):
                for j in range(kw):
                    tap = win[b, i0:i1, :, i, j, :].astype(ftype)
                    tap -= ftype.type(in_zp)
                    part += tap[..., None] * wk[i, j]
        flat[r0:r1] = finish(acc.reshape(r1 - r0, ow, cout), 0, cout)
    return [y]


def qdense(xs, attrs, w, ctx: QuantContext):
    """FULLY_CONNECTED int8 (reference FullyConnected / per-channel FullyConnectedPerChannel), in blocks of
    output channels and rows (BAND_BYTES)."""
    x, kernel, in_scale, in_zp, out_q, wq = _filtered_operands(xs, w, ctx, "fully connected")
    cout = kernel.shape[1]
    partial = "fully connected" if attrs.get("partial") else None
    finish = _finisher(w.get("bias"), None if partial else _layer_scaling("dense", ctx.inputs[0], wq, out_q, cout), out_q,
                       attrs.get("activation"), partial)
    rows2d = x.reshape(-1, x.shape[-1])
    y = np.empty((rows2d.shape[0], cout), np.int32 if partial else out_q.np_dtype)
    _matmul_bands(lambda r0, r1: rows2d[r0:r1], rows2d.shape[0], 1, kernel, in_zp, _operand_type(x.dtype, kernel.dtype, in_zp), finish, y)
    return [y.reshape(*x.shape[:-1], cout)]


def qint32_halves(xs, attrs, w, ctx: QuantContext):
    """A part's int32 partial sum as exact float32 halves (layers.quant): [..., c] -> [..., 2c] = sum >> 16
    and sum & 0xffff, so partial sums add exactly in float32 buffers."""
    x = np.asarray(xs[0], np.int64)
    out = np.empty((*x.shape[:-1], 2 * x.shape[-1]), np.float32)
    out[..., 0::2] = x >> 16
    out[..., 1::2] = x & 0xFFFF
    return [out]


def qrequantize(xs, attrs, w, ctx: QuantContext):
    """The end of a split int8 conv / fully connected layer: the parts' summed halves rebuilt into the
    int32 sum (hi * 65536 + lo), scaled by the layer's multipliers (attrs["multiplier"], per output
    channel or one), plus the output zero point, clamped to the fused activation's range: what qconv2d /
    qdense do after accumulating."""
    # the parts' halves add exactly in float32 (at most MAX_PARTIAL_PARTS of them: split_quant), so the
    # sums are integers; rint only matters for warm-up passes on random float input
    halves = np.rint(np.asarray(xs[0], np.float64)).astype(np.int64)
    acc = halves[..., 0::2] * 65536 + halves[..., 1::2]
    out_q = ctx.outputs[0]
    _, zp = _scalar(out_q, "requantize output")
    mults = np.asarray(attrs["multiplier"], np.float64)
    mults = mults[0] if mults.size == 1 else mults
    lo, hi = _activation_range(attrs.get("activation"), out_q)
    if _xnnpack():
        return [xnnpack_requantize(acc, _requantize_scales(attrs, mults, out_q), zp, lo, hi, out_q.np_dtype)]
    return [requantize(acc, mults, zp, lo, hi, out_q.np_dtype)]


def _requantize_scales(attrs, mults, out_q: TensorQuant) -> np.ndarray:
    """The float32 scales XNNPACK's unsplit layer uses (xnnpack_scales), for a `requantize` node: its
    attrs["scale"] (partitioners.split_quant writes them), or, for a node made without them, rebuilt from
    the real multipliers: multiplier * output_scale is input_scale * filter_scale within a few float64 ulps
    (the exact product of two float32 values), whose float32 rounding is XNNPACK's first step."""
    if "scale" in attrs:
        scales = np.asarray(attrs["scale"], np.float32)
        return scales[0] if scales.size == 1 else scales
    so = np.float32(_scalar(out_q, "requantize output")[0])
    return (np.asarray(mults, np.float64) * np.float64(so)).astype(np.float32) / so


# --- element-wise -----------------------------------------------------------------------------------

def _operand_quants(ctx: QuantContext, attrs, w) -> list:
    """Quantizations in operand order (the constant operand first or last, as layers.ops._operands)."""
    qs = list(ctx.inputs)
    if "constant" in w:
        c = ctx.weights["constant"]
        qs = [c, *qs] if attrs.get("constant_first") else [*qs, c]
    return qs


def _operands(xs, attrs, w):
    if "constant" not in w:
        return list(xs)
    return [w["constant"], *xs] if attrs.get("constant_first") else [*xs, w["constant"]]


def _xnnpack_add_multiplier(scale: np.float32, shift: int) -> int:
    """round-half-even(|scale| * 2**shift) with the scale's sign (XNNPACK adds `shift` to the exponent)."""
    return int(np.copysign(np.rint(np.float32(abs(scale)) * np.float32(2.0 ** shift)), scale))


def xnnpack_add(a, b, sa, za, sb, zb, so, zo, lo, hi, dtype, b_sign: int = 1):
    """XNNPACK's qs8 add (qs8-vadd, its scalar and SIMD forms alike): the float32 ratios sa / so and sb / so
    (b's negated for a subtraction) as fixed-point multipliers of 20 bits below the larger one's leading
    bit (round half to even), (a - za) * ma + (b - zb) * mb + 2**(shift - 1) shifted right arithmetically
    by `shift` (ties toward +infinity), plus the output zero point, clamped. None when a ratio is outside
    [2**-10, 2**8), which XNNPACK does not take."""
    ra = np.float32(sa) / np.float32(so)
    rb = np.float32(b_sign) * (np.float32(sb) / np.float32(so))
    if not (2.0 ** -10 <= abs(ra) < 2.0 ** 8 and 2.0 ** -10 <= abs(rb) < 2.0 ** 8):
        return None  # XNNPACK's delegate declines such a node: TFLite's own kernel (the reference arithmetic) runs it
    exponent = int(np.frexp(max(abs(ra), abs(rb)))[1]) - 1  # the larger ratio's binary exponent
    shift = 20 - exponent
    ma, mb = _xnnpack_add_multiplier(ra, shift), _xnnpack_add_multiplier(rb, shift)
    # int32 holds every step: |x - z| <= 255 and multipliers <= 2**21, so |acc| < 2**31 (one int32 temporary)
    acc = np.add((np.asarray(a).astype(np.int32) - np.int32(za)) * np.int32(ma), (np.asarray(b).astype(np.int32) - np.int32(zb)) * np.int32(mb))
    acc += np.int32(1 << (shift - 1))
    acc >>= shift
    acc += np.int32(zo)
    np.clip(acc, lo, hi, out=acc)
    return acc.astype(dtype)


def qadd(xs, attrs, w, ctx: QuantContext):
    """ADD int8 (reference integer_ops::Add; Prepare in add.cc): both inputs shifted left 20 bits and
    scaled to twice the larger input scale, summed, scaled to the output."""
    a, b = _operands(xs, attrs, w)
    qa, qb = _operand_quants(ctx, attrs, w)
    sa, za = _scalar(qa, "add input")
    sb, zb = _scalar(qb, "add input")
    out_q = ctx.outputs[0]
    so, zo = _scalar(out_q, "add output")
    if _xnnpack():
        lo, hi = xnnpack_activation_range(attrs.get("activation"), out_q)
        out = xnnpack_add(a, b, sa, za, sb, zb, so, zo, lo, hi, out_q.np_dtype)
        if out is not None:
            return [out]
    left_shift = 20
    twice_max = np.float64(np.float32(2) * max(np.float32(sa), np.float32(sb)))
    ma, ea = quantize_multiplier(np.float64(sa) / twice_max)
    mb, eb = quantize_multiplier(np.float64(sb) / twice_max)
    mo, eo = quantize_multiplier(twice_max / np.float64(np.float32(1 << left_shift) * np.float32(so)))
    va = multiply_by_quantized_multiplier((a.astype(np.int64) - za) << left_shift, ma, ea)
    vb = multiply_by_quantized_multiplier((b.astype(np.int64) - zb) << left_shift, mb, eb)
    out = multiply_by_quantized_multiplier(va + vb, mo, eo) + zo
    lo, hi = activation_range(attrs.get("activation"), out_q)
    return [np.clip(out, lo, hi).astype(out_q.np_dtype)]


def qsub(xs, attrs, w, ctx: QuantContext):
    """SUB int8 (sub.cc PrepareGeneralSubOp with op_sign -1, then the Add arithmetic): as ADD with the
    second input's multiplier negated, so its rounding is that of a negative multiplier."""
    a, b = _operands(xs, attrs, w)
    qa, qb = _operand_quants(ctx, attrs, w)
    sa, za = _scalar(qa, "sub input")
    sb, zb = _scalar(qb, "sub input")
    out_q = ctx.outputs[0]
    so, zo = _scalar(out_q, "sub output")
    if _xnnpack():  # XNNPACK's subtract: its add with the second ratio negated
        lo, hi = xnnpack_activation_range(attrs.get("activation"), out_q)
        out = xnnpack_add(a, b, sa, za, sb, zb, so, zo, lo, hi, out_q.np_dtype, b_sign=-1)
        if out is not None:
            return [out]
    left_shift = 20
    twice_max = np.float64(np.float32(2) * max(np.float32(sa), np.float32(sb)))
    ma, ea = quantize_multiplier(np.float64(sa) / twice_max)
    mb, eb = quantize_multiplier(np.float64(sb) / twice_max)
    mo, eo = quantize_multiplier(twice_max / np.float64(np.float32(1 << left_shift) * np.float32(so)))
    va = multiply_by_quantized_multiplier((a.astype(np.int64) - za) << left_shift, ma, ea)
    vb = multiply_by_quantized_multiplier((b.astype(np.int64) - zb) << left_shift, -mb, eb)
    out = multiply_by_quantized_multiplier(va + vb, mo, eo) + zo
    lo, hi = activation_range(attrs.get("activation"), out_q)
    return [np.clip(out, lo, hi).astype(out_q.np_dtype)]


def qmul(xs, attrs, w, ctx: QuantContext):
    """MUL int8 (reference integer_ops::Mul): (a - za) * (b - zb) scaled by sa * sb / so."""
    a, b = _operands(xs, attrs, w)
    qa, qb = _operand_quants(ctx, attrs, w)
    sa, za = _scalar(qa, "mul input")
    sb, zb = _scalar(qb, "mul input")
    out_q = ctx.outputs[0]
    so, zo = _scalar(out_q, "mul output")
    lo, hi = _activation_range(attrs.get("activation"), out_q)
    scale = (np.float32(sa) * np.float32(sb)) / np.float32(so)
    if _xnnpack() and 2.0 ** -16 <= scale < 2.0 ** 8:  # XNNPACK's qs8 mul (fp32 requantization), where it takes it
        return [xnnpack_requantize((a.astype(np.int32) - za) * (b.astype(np.int32) - zb), scale, zo, lo, hi, out_q.np_dtype)]
    m, e = quantize_multiplier(np.float64(np.float32(sa) * np.float32(sb)) / np.float64(so))
    out = multiply_by_quantized_multiplier((a.astype(np.int64) - za) * (b.astype(np.int64) - zb), m, e) + zo
    return [np.clip(out, lo, hi).astype(out_q.np_dtype)]


# A binary int8 op's output depends only on its two int8 operands: for large tensors, the op's own
# arithmetic is run once on all 256 x 256 pairs and the output read from that table (the same integers,
# by construction), instead of ~30 passes of int64 arithmetic over the tensor (ResNet50's residual ADDs
# took a quarter of the int8 model's numpy time).
TABLE_MIN_VALUES = 1 << 17


def _pair_table(kernel, qa: TensorQuant, qb: TensorQuant, out_q: TensorQuant, attrs_key: tuple) -> np.ndarray:
    key = (kernel.__name__, qa, qb, out_q, attrs_key, int8_arithmetic())
    table = _PAIR_TABLES.get(key)
    if table is None:
        ga = np.arange(qa.qmin, qa.qmax + 1).astype(qa.np_dtype)[:, None]
        gb = np.arange(qb.qmin, qb.qmax + 1).astype(qb.np_dtype)[None, :]
        table = kernel([ga, gb], dict(attrs_key), {}, QuantContext([qa, qb], [out_q]))[0].reshape(-1)
        if len(_PAIR_TABLES) > 256:
            _PAIR_TABLES.clear()
        _PAIR_TABLES[key] = table
    return table


_PAIR_TABLES: dict = {}


def kept_bytes(graph, index: int) -> int:
    """Bytes node `index` of `graph` keeps from frame to frame on the numpy engine: the pair table of a
    tabulated binary op (for layers' cost model, issue 12: ResNet50's 13 residual ADDs keep 0.8 MiB)."""
    node = graph.nodes[index]
    if not node.attrs.get("quantized") or node.op not in ("add", "sub", "mul"):
        return 0
    shapes = [graph.shapes[t] for t in node.inputs] + [s for p, s in node.weight_shapes.items() if p == "constant"]
    quants = [graph.quant.get(t) for t in node.inputs] + [graph.quant.get(node.weight_key("constant"))] * ("constant" in node.weight_shapes)
    if len(shapes) != 2 or max(int(np.prod(s, dtype=np.int64)) for s in shapes) < TABLE_MIN_VALUES:
        return 0
    if any(q is None or q.per_channel or q.np_dtype.itemsize != 1 for q in quants):
        return 0
    return 256 * 256 * graph.dtype(node.outputs[0]).itemsize


def tabulated(kernel):
    """A binary element-wise int8 kernel that reads large outputs from its 256 x 256 table (_pair_table),
    in bands (in_bands); small ones, and operands of other types, run `kernel` in bands."""
    banded = in_bands(kernel)

    def run(xs, attrs, w, ctx: QuantContext):
        a, b = (np.asarray(v) for v in _operands(xs, attrs, w))
        qa, qb = _operand_quants(ctx, attrs, w)
        out_q = ctx.outputs[0]
        if max(a.size, b.size) < TABLE_MIN_VALUES or qa is None or qb is None or out_q is None or a.dtype != qa.np_dtype \
                or b.dtype != qb.np_dtype or a.dtype.itemsize != 1 or b.dtype.itemsize != 1 or qa.per_channel or qb.per_channel:
            return banded(xs, attrs, w, ctx)
        attrs_key = tuple(sorted((k, v) for k, v in attrs.items() if k == "activation"))
        table = _pair_table(kernel, qa, qb, out_q, attrs_key)
        width = qb.qmax - qb.qmin + 1

        def lookup(xs_, attrs_, w_, ctx_):
            a_, b_ = _operands(xs_, attrs_, w_)
            index = (np.asarray(a_).astype(np.int32) - qa.qmin) * width
            return [table[index + (np.asarray(b_).astype(np.int32) - qb.qmin)]]  # broadcast as the op does

        return in_bands(lookup)(xs, attrs, w, ctx)
    run.__name__ = kernel.__name__
    run.__doc__ = kernel.__doc__
    return run


# --- pooling and reductions ----------------------------------------------------------------------------

def _same_quant(ctx: QuantContext, what: str) -> None:
    if ctx.inputs[0] != ctx.outputs[0]:
        raise PisplitError(f"{what}: int8 input and output must share scale and zero point (TFLite requires it)")


def _pool_windows(x, attrs, fill):
    from .ops import pool_geometry

    pool, strides, pads, outs = pool_geometry(x.shape, attrs)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill) if any(a or b for a, b in pads) else x
    return K._windows(xp, pool, strides, (1, 1), outs), pool, strides, pads, outs


def qmax_pool(xs, attrs, w, ctx: QuantContext):
    """MAX_POOL_2D int8: the window maximum over valid positions, clamped to the activation range."""
    _same_quant(ctx, "max pool")
    x = xs[0]
    # padded with the type's least value: a window's maximum is that of its valid positions (or that least
    # value, when they all hold it), in the input's own type (no wider copy)
    win, *_ = _pool_windows(x, attrs, np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -(1 << 20))
    out = win.max(axis=(3, 4))
    lo, hi = _activation_range(attrs.get("activation"), ctx.outputs[0])  # XNNPACK takes MAX_POOL_2D
    return [np.clip(out, lo, hi).astype(ctx.outputs[0].np_dtype)]


def qavg_pool(xs, attrs, w, ctx: QuantContext):
    """AVERAGE_POOL_2D int8 (reference integer_ops::AveragePool): the sum over valid positions divided
    by their count, rounded half away from zero."""
    _same_quant(ctx, "average pool")
    x = xs[0]
    win, pool, strides, pads, outs = _pool_windows(x.astype(np.int64), attrs, 0)
    total = win.sum(axis=(3, 4))
    ones = np.ones((1, *x.shape[1:3], 1), np.int64)
    count = _pool_windows(ones, attrs, 0)[0].sum(axis=(3, 4))
    half = count // 2
    out = np.where(total > 0, (total + half) // count, -((-(total - half)) // count))
    lo, hi = activation_range(attrs.get("activation"), ctx.outputs[0])
    return [np.clip(out, lo, hi).astype(ctx.outputs[0].np_dtype)]


def qmean(xs, attrs, w, ctx: QuantContext):
    """MEAN int8 (reference QuantizedMeanOrSum): sum of (x - input zero point) over the axes, scaled by
    input_scale / output_scale folded with 1 / count into one multiplier, as TFLite folds it; XNNPACK's
    (the default arithmetic): the sum as float32 times float32(input_scale / output_scale) * float32(1 /
    count) (reduce-nd's qs8 mean), rounded half to even, plus the output zero point."""
    from .ops import _non_batch_axes

    x = xs[0]
    axes = tuple(_non_batch_axes(attrs["axes"], x.ndim, "mean"))
    si, zi = _scalar(ctx.inputs[0], "mean input")
    out_q = ctx.outputs[0]
    so, zo = _scalar(out_q, "mean output")
    count = int(np.prod([x.shape[a] for a in axes]))
    x = x if x.dtype.kind in "iu" else x.astype(np.int64)  # integers held in a float buffer
    total = x.sum(axis=axes, keepdims=bool(attrs.get("keepdims", False)), dtype=np.int64) - zi * count
    if _xnnpack():  # XNNPACK's qs8 mean: float32(input_scale / output_scale) * float32(1 / count), fp32 requantized
        scale = (np.float32(si) / np.float32(so)) * (np.float32(1) / np.float32(count))
        return [xnnpack_requantize(total, scale, zo, out_q.qmin, out_q.qmax, out_q.np_dtype)]
    m, e = quantize_multiplier(np.float64(si) / np.float64(so))
    m, e = int(m), int(e)
    shift = min(count.bit_length() - 1, 32, 31 + e)
    m = (m << shift) // count
    e = e - shift
    out = multiply_by_quantized_multiplier(total, m, e) + zo
    return [np.clip(out, out_q.qmin, out_q.qmax).astype(out_q.np_dtype)]


# --- activations ----------------------------------------------------------------------------------------

def _lookup(x: np.ndarray, table: np.ndarray, q: TensorQuant) -> np.ndarray:
    return table[x.astype(np.int64) - q.qmin]


def _table(in_q: TensorQuant, out_q: TensorQuant, fn) -> np.ndarray:
    """TFLite PopulateLookupTable: for every int8 value, dequantize (float32), transform, requantize."""
    si, zi = in_q.scalar("input")
    so, zo = out_q.scalar("output")
    vals = np.arange(in_q.qmin, in_q.qmax + 1)
    deq = np.float32(si) * (vals - zi).astype(np.float32)
    y = fn(deq)
    q = round_half_away(y * (np.float32(1) / np.float32(so))).astype(np.int64) + zo
    return np.clip(q, out_q.qmin, out_q.qmax).astype(out_q.np_dtype)


def qsigmoid(xs, attrs, w, ctx: QuantContext):
    """LOGISTIC int8: TFLite's lookup table of 1 / (1 + expf(-x)) over the 256 int8 values."""
    table = _table(ctx.inputs[0], ctx.outputs[0], lambda v: np.float32(1) / (np.float32(1) + _exp_f32(-v)))
    return [_lookup(xs[0], table, ctx.inputs[0])]


def qtanh(xs, attrs, w, ctx: QuantContext):
    """TANH int8: TFLite's lookup table of tanhf."""
    table = _table(ctx.inputs[0], ctx.outputs[0], lambda v: np.tanh(v.astype(np.float64)).astype(np.float32))
    return [_lookup(xs[0], table, ctx.inputs[0])]


def qsoftmax(xs, attrs, w, ctx: QuantContext):
    """SOFTMAX int8 (optimized_ops::Softmax with PopulateSoftmaxLookupTable, the kernel every TFLite
    resolver runs): exp(-beta * input_scale * (max - x)) from a float table, summed in order in float32,
    scaled by 1 / (sum * output_scale), rounded, plus the output zero point."""
    x = xs[0]
    si, _ = _scalar(ctx.inputs[0], "softmax input")
    out_q = ctx.outputs[0]
    so, zo = _scalar(out_q, "softmax output")
    axis = int(attrs.get("axis", -1)) % x.ndim
    if axis != x.ndim - 1:
        raise PisplitError("softmax: int8 softmax works on the last axis only")
    scale = np.float32(-np.float32(si) * np.float32(attrs.get("beta", 1.0)))
    table = _exp_f32(scale * np.arange(256, dtype=np.float32))  # table[d] = exp(scale * d), d = max - x
    diff = x.max(axis=-1, keepdims=True).astype(np.int64) - x.astype(np.int64)
    e = table[diff]
    total = np.cumsum(e, axis=-1, dtype=np.float32)[..., -1:]  # sequential float32 sum, as the C loop
    inv = np.float32(1) / (total * np.float32(so))
    q = round_half_away(e * inv).astype(np.int64) + zo
    return [np.clip(q, out_q.qmin, out_q.qmax).astype(out_q.np_dtype)]


def _i16(x):
    """Wrap to int16 as a C cast does (the values held in int64 arrays)."""
    return ((np.asarray(x, np.int64) + (1 << 15)) & 0xFFFF) - (1 << 15)


def _srdhm16(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul on int16: (a * b + nudge) / 2**15, C truncation."""
    ab = np.asarray(a, np.int64) * np.int64(b)
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    x = ab + nudge
    out = _i16(np.where(x >= 0, x >> 15, -((-x) >> 15)))
    return np.where((np.asarray(a) == b) & (np.asarray(a) == -(1 << 15)), (1 << 15) - 1, out)


def _sdhm16(a, b):
    """TFLite's SaturatingDoublingHighMul on int16 (no rounding nudge): a * b / 2**15, C truncation."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    out = _i16(np.where(ab >= 0, ab >> 15, -((-ab) >> 15)))
    return np.where((a == b) & (a == -(1 << 15)), (1 << 15) - 1, out)


def _shift_left16(x, offset: int):
    """gemmlowp ShiftLeft on int16: x * 2**offset, saturated to the int16 range."""
    return np.clip(np.asarray(x, np.int64) << offset, -(1 << 15), (1 << 15) - 1)


def _int16_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier, then DownScaleInt32ToInt16Multiplier: a Q15 multiplier and its exponent."""
    m, e = quantize_multiplier(np.float64(real))
    m, e = int(m), int(e)
    m16 = (1 << 15) - 1 if m >= (1 << 31) - 1 - (1 << 15) else (m + (1 << 15)) >> 16
    return m16, e


def qhard_swish(xs, attrs, w, ctx: QuantContext):
    """HARD_SWISH int8 (reference_ops::HardSwish with activations.cc's HardSwishPrepare), as a table
    over the 256 int8 values: the input on a 'hires' scale (x 128), a Q15 output multiplier, a
    'reluish' factor in [0, 1] from x rescaled so 3.0 is 32768 (saturating left shifts, rounding right
    shifts), multiplied without rounding, shifted to the output scale, plus its zero point."""
    in_q, out_q = ctx.inputs[0], ctx.outputs[0]
    si, zi = _scalar(in_q, "hard swish input")
    so, zo = _scalar(out_q, "hard swish output")
    hires = np.float32(np.float32(1.0 / 128.0) * np.float32(si))
    out_m, out_e = _int16_multiplier(np.float32(hires / np.float32(so)))
    if out_e > 0:
        raise PisplitError("hard swish: output multiplier above 1 (TFLite refuses such a model)")
    relu_m, relu_e = _int16_multiplier(np.float32(hires / np.float32(3.0 / 32768.0)))
    vals = np.arange(in_q.qmin, in_q.qmax + 1, dtype=np.int64)
    hi_in = _i16((vals - zi) * 128)
    pre_out = _srdhm16(hi_in, out_m)
    reluish = hi_in
    if relu_e > 0:
        reluish = _shift_left16(reluish, relu_e - 1)
    reluish = _srdhm16(reluish, relu_m)
    if relu_e > 0:
        reluish = _shift_left16(reluish, 1)
    if relu_e < 0:
        reluish = rounding_divide_by_pot(reluish, -relu_e)
    reluish = _i16((reluish + (1 << 15)) >> 1)
    out = rounding_divide_by_pot(_sdhm16(reluish, pre_out), -out_e) + zo
    table = np.clip(out, out_q.qmin, out_q.qmax).astype(out_q.np_dtype)
    return [_lookup(xs[0], table, in_q)]


def qleaky_relu(xs, attrs, w, ctx: QuantContext):
    """LEAKY_RELU int8 (reference_ops::QuantizeLeakyRelu, LeakyReluPrepare): x - input zero point scaled
    by input_scale / output_scale where it is >= 0, by input_scale * alpha / output_scale below (both
    computed in float, as the Prepare step does), plus the output zero point, clamped."""
    x = xs[0]
    si, zi = _scalar(ctx.inputs[0], "leaky relu input")
    out_q = ctx.outputs[0]
    so, zo = _scalar(out_q, "leaky relu output")
    alpha = np.float32(attrs.get("alpha", 0.2))
    positive = np.float32(si) / np.float32(so)
    if _xnnpack() and _q8_takes(positive) and _q8_takes(positive * alpha, negative=True):
        # XNNPACK's qs8 lrelu: Q8 multipliers rint(256 * si / so) and rint(256 * (si / so) * alpha)
        return [_xnnpack_q8(x, zi, zo, (_q8_multiplier(positive), _q8_multiplier(positive * alpha)), out_q)]
    m_id, e_id = quantize_multiplier(np.float64(np.float32(np.float32(si) / np.float32(so))))
    m_al, e_al = quantize_multiplier(np.float64(np.float32(np.float32(np.float32(si) * alpha) / np.float32(so))))
    v = x.astype(np.int64) - zi
    out = np.where(v >= 0, multiply_by_quantized_multiplier(v, m_id, e_id), multiply_by_quantized_multiplier(v, m_al, e_al)) + zo
    return [np.clip(out, out_q.qmin, out_q.qmax).astype(out_q.np_dtype)]


def _q8_multiplier(scale) -> int:
    """lrintf(256 * scale): a Q8 fixed-point multiplier, rounded half to even."""
    return int(np.rint(np.float32(256) * np.float32(scale)))


def _q8_takes(scale, negative: bool = False) -> bool:
    """Whether XNNPACK takes a Q8 rescaling by `scale` (its parameter set-up's range, 2**-8 to 2**7; a negative
    slope's may be negative); outside it the delegate declines the node and TFLite's own kernel runs."""
    return 2.0 ** -8 <= (abs(scale) if negative else scale) <= 2.0 ** 7


def _xnnpack_q8(x, zi: int, zo: int, multipliers: tuple, out_q: TensorQuant) -> np.ndarray:
    """XNNPACK's Q8 int8 -> int8 rescaling (qs8-vcvt, qs8-vlrelu): (x - zi) times the first multiplier where
    it is >= 0, the second below, plus 128, shifted right 8 bits arithmetically (ties toward +infinity),
    plus the output zero point, clamped to the type."""
    v = np.asarray(x).astype(np.int32) - zi
    mp, mn = multipliers
    acc = v * mp if mp == mn else np.where(v >= 0, v * mp, v * mn)
    out = ((acc + 128) >> 8) + zo
    return np.clip(out, out_q.qmin, out_q.qmax).astype(out_q.np_dtype)


def _relu_family(lo_real, hi_real):
    def run(xs, attrs, w, ctx: QuantContext):
        """RELU / RELU6 int8 (QuantizedReluX): requantize input to output, clamp to the real range."""
        x = xs[0]
        si, zi = _scalar(ctx.inputs[0], "relu input")
        out_q = ctx.outputs[0]
        so, zo = _scalar(out_q, "relu output")
        lo = max(out_q.qmin, zo + int(round_half_away(np.float32(lo_real) / np.float32(so))))
        hi = out_q.qmax if hi_real is None else min(out_q.qmax, zo + int(round_half_away(np.float32(hi_real) / np.float32(so))))
        m, e = quantize_multiplier(np.float64(si) / np.float64(so))
        out = multiply_by_quantized_multiplier(x.astype(np.int64) - zi, m, e) + zo
        return [np.clip(out, lo, hi).astype(out_q.np_dtype)]
    return run


# --- structure ------------------------------------------------------------------------------------------

def qconcat(xs, attrs, w, ctx: QuantContext):
    """CONCATENATION int8: TFLite requires every input to share the output's scale and zero point."""
    from .ops import _concat_axis

    if ctx.outputs[0] is not None and ctx.outputs[0].dtype == "int32":  # a split layer's partial sums, by channel
        return [np.concatenate(xs, axis=_concat_axis(xs[0].ndim, int(attrs.get("axis", -1))))]
    if any(q != ctx.outputs[0] for q in ctx.inputs):
        raise PisplitError("concat: int8 inputs must share the output's scale and zero point (TFLite requires it)")
    return [np.concatenate(xs, axis=_concat_axis(xs[0].ndim, int(attrs.get("axis", -1))))]


def qreshape(fn):
    def run(xs, attrs, w, ctx: QuantContext):
        _same_quant(ctx, "reshape")
        return [fn(xs[0], attrs)]
    return run


def qmove(op: str):
    """An op that only moves int8 values (TRANSPOSE, RESIZE_NEAREST_NEIGHBOR, STRIDED_SLICE, TILE,
    DEPTH_TO_SPACE): TFLite's int8 kernels copy them, with the same scale and zero point in and out."""
    def run(xs, attrs, w, ctx: QuantContext):
        from .ops import spec_of

        _same_quant(ctx, op.replace("_", " "))
        return [np.asarray(spec_of(op).run(list(xs), attrs, w)[0]).astype(ctx.outputs[0].np_dtype)]
    return run


def qpad(xs, attrs, w, ctx: QuantContext):
    """PAD / PADV2 int8: pads with the output zero point (real 0), or PADV2's quantized constant."""
    _same_quant(ctx, "pad")
    _, zp = ctx.outputs[0].scalar("pad output")
    value = attrs.get("qvalue", zp)
    x = np.asarray(xs[0]).astype(ctx.outputs[0].np_dtype, copy=False)  # padded in its own type (no float32 copy)
    return [np.pad(x, [tuple(p) for p in attrs["paddings"]], constant_values=x.dtype.type(value))]


def qquantize(xs, attrs, w, ctx: QuantContext):
    """QUANTIZE: float32 -> int8 as round(x / scale) + zero point (float32 division, ties away from
    zero), or int8 -> int8 requantization by input_scale / output_scale (the reference kernels); XNNPACK's
    (the default arithmetic): rint(x * float32(1 / scale)) + zero point (ties to even), and int8 -> int8
    with a Q8 multiplier (_xnnpack_q8)."""
    x = xs[0]
    out_q = ctx.outputs[0]
    so, zo = _scalar(out_q, "quantize output")
    if ctx.inputs[0] is None and _xnnpack():  # XNNPACK's f32 -> qs8 convert: x * float32(1 / scale), ties to even
        q = np.asarray(x, np.float32) * (np.float32(1) / np.float32(so))
        np.clip(q, out_q.qmin - zo, out_q.qmax - zo, out=q)
        q = np.rint(np.nan_to_num(q)).astype(np.int64) + zo
    elif ctx.inputs[0] is None:
        q = round_half_away(np.asarray(x, np.float32) / np.float32(so))
        q = np.clip(np.nan_to_num(q), -(1 << 30), 1 << 30).astype(np.int64) + zo
    else:
        si, zi = _scalar(ctx.inputs[0], "quantize input")
        if _xnnpack() and _q8_takes(np.float32(si) / np.float32(so)):  # XNNPACK's qs8 convert: a Q8 multiplier
            m = _q8_multiplier(np.float32(si) / np.float32(so))
            return [_xnnpack_q8(x, zi, zo, (m, m), out_q)]
        m, e = quantize_multiplier(np.float64(si) / np.float64(so))
        q = multiply_by_quantized_multiplier(x.astype(np.int64) - zi, m, e) + zo
    return [np.clip(q, out_q.qmin, out_q.qmax).astype(out_q.np_dtype)]


def qdequantize(xs, attrs, w, ctx: QuantContext):
    """DEQUANTIZE: (q - zero point) * scale as float32."""
    si, zi = _scalar(ctx.inputs[0], "dequantize input")
    return [((xs[0].astype(np.int64) - zi).astype(np.float64) * np.float64(np.float32(si))).astype(np.float32)]


def float_only(name):
    def run(xs, attrs, w):
        raise PisplitError(f"op {name} runs on quantized tensors only")
    return run


# an element-wise int8 kernel's temporaries: operands widened to int64, shifted, rescaled, summed, clamped
ELEMENTWISE_BYTES_PER_VALUE = 48


def in_bands(kernel):
    """An element-wise int8 kernel run over bands of axis 1 (rows of an image, tokens) of its output, so
    that its int64 temporaries (ELEMENTWISE_BYTES_PER_VALUE bytes a value) take about BAND_BYTES, not 40x the
    tensor (ResNet50's first residual ADD held 25 MiB for a 0.8 MiB output). Operands broadcast along axis
    1 (size 1 there, or fewer axes) are passed whole; tensors of fewer than 3 axes in one piece."""
    def run(xs, attrs, w, ctx: QuantContext):
        operands = [*xs, *([w["constant"]] if "constant" in w else [])]
        shape = np.broadcast_shapes(*(np.shape(a) for a in operands))
        values = int(np.prod(shape, dtype=np.int64))
        if len(shape) < 3 or shape[1] < 2 or values * ELEMENTWISE_BYTES_PER_VALUE <= BAND_BYTES:
            return kernel(xs, attrs, w, ctx)
        rows = shape[1]
        band = max(1, BAND_BYTES // (values // rows * ELEMENTWISE_BYTES_PER_VALUE))

        def cut(a, r0, r1):
            a = np.asarray(a)
            k = 1 - (len(shape) - a.ndim)  # the operand's axis under the output's axis 1
            return a if k < 0 or a.shape[k] == 1 else a[(slice(None),) * k + (slice(r0, r1),)]

        out = None
        for r0 in range(0, rows, band):
            r1 = min(rows, r0 + band)
            ws = {**w, "constant": cut(w["constant"], r0, r1)} if "constant" in w else w
            y = kernel([cut(x, r0, r1) for x in xs], attrs, ws, ctx)[0]
            if out is None:
                out = np.empty((y.shape[0], rows, *y.shape[2:]), y.dtype)
            out[:, r0:r1] = y
        return [out]
    run.__doc__ = kernel.__doc__
    return run


def _in_band_values(shape) -> int:
    """Output values in_bands computes at once: the whole output, or a band of its axis 1."""
    values = int(np.prod(shape, dtype=np.int64))
    if len(shape) < 3 or shape[1] < 2 or values * ELEMENTWISE_BYTES_PER_VALUE <= BAND_BYTES:
        return values
    per_row = values // shape[1]
    return min(values, max(1, BAND_BYTES // (per_row * ELEMENTWISE_BYTES_PER_VALUE)) * per_row)


def work_bytes(op: str, ins: list, outs: list, attrs: dict, weight_shapes: dict, in_dtype) -> int | None:
    """Bytes the int8 kernel of `op` holds for a frame besides its inputs and outputs, as it computes in bands
    (issue 12: layers.graph counts this for quantized nodes; the float kernels' count, layers.ops, has a
    kept float im2col buffer these kernels never make and none of their filter blocks and int64 bands).
    None where the float count stands. `in_dtype`: the first input's integer type."""
    in_dtype = np.dtype(in_dtype)
    if op == "conv2d" and len(ins[0]) == 4:
        kh, kw, cin_g, cout = weight_shapes["kernel"]
        strides = tuple(attrs.get("strides") or (1, 1))
        dilation = tuple(attrs.get("dilation") or (1, 1))
        pads = K.resolve_padding(ins[0][1:3], (kh, kw), strides, dilation, attrs.get("padding", "valid"))
        n, oh, ow = (int(v) for v in outs[0][:3])
        padded = 0
        if any(a or b for a, b in pads):
            padded = int(ins[0][0]) * int(ins[0][3]) * int(np.prod([s + a + b for s, (a, b) in zip(ins[0][1:3], pads)])) * in_dtype.itemsize
        ftype = _operand_type(in_dtype, np.dtype(np.int8), 0)
        if int(attrs.get("groups", 1)) == 1:
            return padded + matmul_work_bytes(n * oh, ow, kh * kw * cin_g, cout, ftype)
        atype = ftype if kh * kw <= EXACT_F32_TERMS else np.dtype(np.float64)
        per_row = ow * cout * (2 * atype.itemsize + TEMP_BYTES_PER_VALUE)
        band = max(1, min(n * oh, BAND_BYTES // max(per_row, 1)))
        return padded + kh * kw * cout * ftype.itemsize + band * per_row
    if op == "dense":
        k, cout = weight_shapes["kernel"][-2:]
        rows = int(np.prod(ins[0][:-1], dtype=np.int64))
        return matmul_work_bytes(rows, 1, int(k), int(cout), _operand_type(in_dtype, np.dtype(np.int8), 0))
    if op in BANDED_OPS:
        return _in_band_values(outs[0]) * ELEMENTWISE_BYTES_PER_VALUE
    if op in ("max_pool2d", "avg_pool2d") and len(ins[0]) == 4:
        from .ops import pool_geometry

        padded = int(np.prod([s + a + b for s, (a, b) in zip(ins[0][1:3], pool_geometry(ins[0], attrs)[2])])) * int(ins[0][0] * ins[0][3])
        out_values = int(np.prod(outs[0], dtype=np.int64))
        if op == "max_pool2d":  # the input padded in its own type, numpy's reduction buffers over the window view
            return padded * in_dtype.itemsize + 2 * out_values * in_dtype.itemsize
        return 16 * padded + 40 * out_values  # int64 input and its padded copy, int64 sums, counts and quotients
    if op == "mean":  # an int64 sum over a reduction's buffered copy of the input
        return int(np.prod(ins[0], dtype=np.int64)) * in_dtype.itemsize + 16 * int(np.prod(outs[0], dtype=np.int64))
    if op == "conv2d_transpose" and len(ins[0]) == 4:  # qconv2d_transpose
        (n, h, w, cin), (kh, kw, _, cout), (sh, sw) = ins[0], weight_shapes["kernel"], attrs["strides"]
        full = int(n) * ((h - 1) * sh + kh) * ((w - 1) * sw + kw) * int(cout)  # the float64 uncropped accumulator
        taps = int(n) * h * w * int(cout)  # one tap's float32 product, and its reshaped sum
        out_values = int(np.prod(outs[0], dtype=np.int64))
        return 8 * full + 4 * int(n) * h * w * int(cin) + 4 * kh * kw * int(cin) * int(cout) + 8 * taps + \
            (8 + TEMP_BYTES_PER_VALUE) * out_values
    return None


QRUN = {
    "conv2d": qconv2d,
    "dense": qdense,
    "add": tabulated(qadd),
    "sub": tabulated(qsub),
    "mul": tabulated(qmul),
    "max_pool2d": qmax_pool,
    "avg_pool2d": qavg_pool,
    "mean": qmean,
    "sigmoid": in_bands(qsigmoid),
    "tanh": in_bands(qtanh),
    "softmax": in_bands(qsoftmax),
    "hard_swish": in_bands(qhard_swish),
    "leaky_relu": in_bands(qleaky_relu),
    "relu": in_bands(_relu_family(0.0, None)),
    "relu6": in_bands(_relu_family(0.0, 6.0)),
    "concat": qconcat,
    "reshape": qreshape(lambda x, a: x.reshape(x.shape[0], *a["shape"])),
    "flatten": qreshape(lambda x, a: x.reshape(x.shape[0], -1)),
    "pad": qpad,
    **{op: qmove(op) for op in ("transpose", "resize_nearest", "strided_slice", "tile", "depth_to_space")},
    "quantize": in_bands(qquantize),
    "dequantize": in_bands(qdequantize),
    "requantize": in_bands(qrequantize),
    "int32_halves": in_bands(qint32_halves),
}


def optimized_requantize(acc, real_multiplier, zero_point: int, lo: int, hi: int, dtype=np.int8) -> np.ndarray:
    """TFLite's optimized per-channel Quantize (optimized_ops.h, its NEON form, which x86 builds run through
    NEON_2_SSE): acc << left shift, the rounding doubling high multiply (vqrdmulhq_s32), then a rounding
    right shift with ties toward +infinity (vrshlq_s32), where the reference's RoundingDivideByPOT rounds
    ties away from zero; plus the zero point, clamped."""
    m, e = quantize_multiplier(real_multiplier)
    acc = np.asarray(acc).astype(np.int64)
    left, right = np.maximum(e, 0), np.maximum(-e, 0)
    t = acc << left if np.any(left) else acc.copy()
    t *= m
    t += np.int64(1 << 30)  # SaturatingRoundingDoublingHighMul for multipliers >= 0 (layers.quant)
    t >>= 31
    t += (np.int64(1) << right) >> 1
    t >>= right
    t += int(zero_point)
    np.clip(t, lo, hi, out=t)
    return t.astype(dtype)


def qconv2d_transpose(xs, attrs, w, ctx: QuantContext):
    """TRANSPOSE_CONV int8 with per-channel filter scales: every input pixel scatters (x - input zero
    point) @ filter[tap] into an exact int32 accumulator of the uncropped output (as
    layers.kernels.conv2d_transpose), cropped to the output, bias added, then rescaled per channel by
    input_scale * filter_scale[c] / output_scale, plus the output zero point, clamped.
    The rescaling, by arithmetic: "reference" is reference_integer_ops::TransposeConv (BUILTIN_REF,
    MultiplyByQuantizedMultiplier); "xnnpack" is what LiteRT's default interpreter runs, which is NOT
    XNNPACK for the Keras converter's TRANSPOSE_CONV (its output shape is computed, SHAPE -> PACK, and the
    delegate takes only a constant one: measured, the default interpreter equals the no-delegate one on
    it) but TFLite's optimized TransposeConvV2, whose Quantize rescales output channels 8 at a time as
    optimized_requantize does (ties toward +infinity in the final shift) and the channels left over as the
    reference does (up to 6 outputs of 12288 differ from the reference on a 16x16x16 -> 32x32x12 layer).
    A TRANSPOSE_CONV whose output shape is a constant in the file (attrs["shape_constant"], e.g. a
    tf.function with a fixed batch) is XNNPACK's qs8-qc8w deconvolution there: the conv's fp32
    requantization (xnnpack_requantize), measured equal on such a layer. A fused activation's clamp is
    the reference's (no converter model with one measured)."""
    x, kernel, in_scale, in_zp, out_q, wq = _filtered_operands(xs, w, ctx, "transpose conv")
    n, h, wd, cin = x.shape
    kh, kw, kcin, cout = kernel.shape
    if kcin != cin:
        raise PisplitError(f"transpose conv: {cin} input channels do not match filter {kernel.shape}")
    (sh, sw), (oh, ow) = attrs["strides"], attrs["output_size"]
    ph, pw = K.transpose_conv_pads((h, wd), (kh, kw), (sh, sw), (oh, ow), attrs.get("padding", "same"))
    full_h, full_w = max((h - 1) * sh + kh, ph + oh), max((wd - 1) * sw + kw, pw + ow)
    xf, kf = _int8_operands(x, in_zp, kernel)
    flat = xf.reshape(-1, cin)
    acc = np.zeros((n, full_h, full_w, cout), np.float64)  # integer sums of at most KH * KW taps: exact
    for a in range(kh):
        for b in range(kw):
            acc[:, a:a + sh * (h - 1) + 1:sh, b:b + sw * (wd - 1) + 1:sw, :] += _exact_matmul(flat, kf[a, b]).reshape(n, h, wd, cout)
    acc = _accumulator(acc[:, ph:ph + oh, pw:pw + ow, :], w.get("bias"))
    mults = output_multipliers("conv", ctx.inputs[0], wq, out_q, cout)
    _, zp = out_q.scalar("output")
    lo, hi = activation_range(attrs.get("activation"), out_q)
    if not _xnnpack():
        return [requantize(acc, mults, zp, lo, hi, out_q.np_dtype)]
    if attrs.get("shape_constant"):  # XNNPACK's qs8-qc8w deconvolution: the conv's fp32 requantization
        lo, hi = xnnpack_activation_range(attrs.get("activation"), out_q)
        return [xnnpack_requantize(acc, xnnpack_scales(in_scale, wq, out_q.scalar("output")[0], cout), zp, lo, hi, out_q.np_dtype)]
    # the optimized Quantize takes channels 8 at a time in its NEON form, the rest as the reference does
    mults = np.broadcast_to(np.asarray(mults, np.float64), (cout,))
    c8 = cout - cout % 8
    y = np.empty(acc.shape, out_q.np_dtype)
    y[..., :c8] = optimized_requantize(acc[..., :c8], mults[:c8], zp, lo, hi, out_q.np_dtype)
    y[..., c8:] = requantize(acc[..., c8:], mults[c8:], zp, lo, hi, out_q.np_dtype)
    return [y]


QRUN["conv2d_transpose"] = qconv2d_transpose


# the int8 kernels that run in bands of axis 1 (in_bands; tabulated ones too): work_bytes
BANDED_OPS = ("add", "sub", "mul", "sigmoid", "tanh", "softmax", "hard_swish", "leaky_relu", "relu", "relu6", "quantize", "dequantize",
              "requantize", "int32_halves")


# --- dynamic-range (hybrid) layers: float activations, int8 filters ------------------------------------
# A dynamic-range conv / depthwise / fully-connected node (a float node whose int8 filter the graph
# quantizes, layers.tflite) runs as LiteRT's default interpreter runs it, which quantizes each activation
# to int8 on the fly (measured layer by layer against LiteRT 2.3 on the corpus models: these equal it bit
# for bit, tests/layers/test_hybrid_kernels.py):
# - FULLY_CONNECTED and CONV_2D go to XNNPACK's dynamically quantized path (qd8 input, qc8w filter). The
#   input is quantized per row (xnn_f32_qd8_asymmetric_quantization_params): range [min(0, lo), max(0, hi)]
#   of the row, scale 255 / range in float32, the zero point nudged to whichever of -128 - min * scale and
#   127 - max * scale the smaller error picks, rounded half to even; q = round-half-even(x * scale) + zero
#   point, clamped. The int32 sum of (q - zero point) * filter is scaled float(acc) * (1 / scale), then
#   fused multiply-add with the filter scale and the bias, then the activation's clamp. A row is one
#   fully-connected input vector and one pixel of a 1x1 stride-1 convolution (XNNPACK runs it as a matrix
#   product); a whole image for every other convolution, whose padding is a real zero.
# - DEPTHWISE_CONV_2D stays on TFLite's builtin hybrid kernel (DepthwiseConvHybridPerChannel): the image is
#   quantized as a whole with tensor_utils::AsymmetricQuantizeFloats (range [min(0, lo), max(0, hi)], its
#   width taken in float32 then / 255 in double, zero point from the smaller-error end rounded half away
#   from zero, q = round-half-away(x * float(1 / scale)) + zero point, clamped), padding skipped, and
#   (float(acc) * filter_scale) * input_scale + bias, then the clamp.
# XNNPACK takes per-tensor filter scales and either asymmetric_quantize_inputs option of a fully-connected
# layer alike (both measured equal). Not emulated: TFLite's own hybrid CONV_2D / FULLY_CONNECTED kernels, which
# run only where XNNPACK declines a layer (none of the corpus's); a grouped (not depthwise) dynamic-range
# convolution computes in float on its dequantized filter, as the litert export writes it.
# Accumulations are exact (integer-valued float32 products in chunks, summed in float64). A part of a split
# that feeds such a layer less than its whole input would quantize on its own range: run_hybrid refuses
# the kinds that do (HYBRID_PART_KINDS), as the litert export does.

HYBRID_PART_KINDS = ("fc-input", "conv-filter", "conv-spatial", "fused-tiles")


def qd8_quantize(x: np.ndarray, axes: tuple) -> tuple[np.ndarray, np.ndarray]:
    """XNNPACK's f32 -> qd8 conversion over `axes` (the rest are its rows): (q - zero point as float32
    integers, the dequantizing scale 1 / scale per row, float32, broadcastable to x)."""
    x = np.asarray(x, np.float32)
    zero = np.float32(0)
    rmin = np.minimum(x.min(axis=axes, keepdims=True), zero)
    rmax = np.maximum(x.max(axis=axes, keepdims=True), zero)
    width = rmax - rmin
    same = width == 0
    scale = np.float32(255) / np.where(same, np.float32(1), width)
    scale[same] = 1
    dmin, dmax = rmin * scale, rmax * scale
    zp = np.where((np.float32(-128) + dmin) + (np.float32(127) + dmax) > 0, np.float32(-128) - dmin, np.float32(127) - dmax)
    zp = np.rint(np.clip(zp, -128, 127))  # lrintf: ties to even
    q = x * scale
    np.rint(q, out=q)
    q += zp
    np.clip(q, -128, 127, out=q)
    q -= zp
    return q, (np.float32(1) / scale).astype(np.float32)


def tflite_asymmetric_quantize(x: np.ndarray, axes: tuple) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's tensor_utils::AsymmetricQuantizeFloats over `axes`, as LiteRT 2.3 runs it: (q - zero point
    as float32 integers, the scaling factor per row, float32)."""
    x = np.asarray(x, np.float32)
    zero = np.float32(0)
    rmin = np.minimum(x.min(axis=axes, keepdims=True), zero)
    rmax = np.maximum(x.max(axis=axes, keepdims=True), zero)
    same = rmin == rmax
    scale = np.where(same, 1.0, (rmax - rmin).astype(np.float64) / 255.0)
    lo, hi = rmin / scale, rmax / scale  # float64
    zd = np.where(128.0 + np.abs(lo) < 127.0 + np.abs(hi), -128.0 - lo, 127.0 - hi)
    zp = np.where(zd <= -128, -128.0, np.where(zd >= 127, 127.0, np.sign(zd) * np.floor(np.abs(zd) + 0.5)))
    zp = np.where(same, 0.0, zp).astype(np.float32)
    factor = np.where(same, 1.0, scale).astype(np.float32)
    inv = (1.0 / factor.astype(np.float64)).astype(np.float32)
    v = x * inv
    q = np.rint(v)  # std::round of the float32 product: to nearest, and ties (an exact .5 fraction) away from zero
    tie = np.abs(v - np.trunc(v)) == 0.5
    if tie.any():
        q[tie] = np.trunc(v[tie]) + np.sign(v[tie])
    q += zp
    np.clip(q, -128, 127, out=q)
    q -= zp
    if same.any():
        q[np.broadcast_to(same, q.shape)] = 0
    return q, factor


FMA_CHUNK = 1 << 15  # output values per float64 pass of _fma32: its temporaries stay in cache


def _fma32(a: np.ndarray, b, c) -> np.ndarray:
    """float32 a * b + c rounded once (a fused multiply-add), b and c per last-axis channel: the float64
    product of two float32 values is exact, and its sum with a float32 rounds to float32 as the fused
    operation does (but for double rounding in ties far below these outputs' resolution). In place on a
    (float32, C-contiguous) a, in chunks of rows."""
    b64 = np.asarray(b, np.float64)
    c64 = None if c is None else np.asarray(c, np.float64)
    flat = a.reshape(-1, a.shape[-1])
    step = max(1, FMA_CHUNK // max(a.shape[-1], 1))
    for r0 in range(0, flat.shape[0], step):
        t = flat[r0:r0 + step].astype(np.float64)
        t *= b64
        if c64 is not None:
            t += c64
        flat[r0:r0 + step] = t
    return a


def _centered_matmul(rows, n_rows: int, row_values: int, kernel: np.ndarray, out: np.ndarray) -> None:
    """out[...] = exact integer (rows @ kernel) of centred int8 activations (|v| <= 255) and an int8 filter."""
    _matmul_bands(rows, n_rows, row_values, kernel, 0, np.dtype(np.float32), lambda acc, c0, c1: acc, out, operand_itemsize=4)


def hybrid_conv2d(xs, attrs, w, wq: TensorQuant):
    """A dynamic-range CONV_2D (XNNPACK qd8) or DEPTHWISE_CONV_2D (TFLite's builtin hybrid kernel); w holds
    the int8 kernel (KH, KW, Cin/groups, Cout) and the float32 bias."""
    x = np.asarray(xs[0], np.float32)
    kernel = w["kernel"]
    if kernel.dtype != np.int8:
        raise PisplitError(f"a dynamic-range conv's filter is {kernel.dtype}, expected int8 with its scales")
    kh, kw, cin_g, cout, groups, strides, dilation, pads, outs = _conv_geometry(x, kernel, attrs)
    n, (oh, ow) = x.shape[0], outs
    fscale = np.broadcast_to(np.asarray(wq.scale, np.float32), (cout,))
    bias = w.get("bias")
    padded = any(a or b for a, b in pads)
    if groups == 1:
        pointwise = (kh, kw) == (1, 1) and strides == (1, 1) and not padded
        centred, dq = qd8_quantize(x, (3,) if pointwise else (1, 2, 3))
        xp = np.pad(centred, [(0, 0), *pads, (0, 0)]) if padded else centred  # padding: a real zero
        depth = kh * kw * cin_g
        acc = np.empty((n, oh, ow, cout), np.float32)
        if pointwise:  # a matrix product over every pixel, in bands of rows and blocks of filters (exact sums)
            pixels = xp.reshape(n * oh, ow, depth)

            def rows(r0, r1):
                return pixels[r0:r1].reshape(-1, depth)
        else:
            win = K._windows(xp, (kh, kw), strides, dilation, outs)

            def rows(r0, r1):
                return np.stack([win[b, i] for b, i in (divmod(r, oh) for r in range(r0, r1))]).reshape(-1, depth)
        _centered_matmul(rows, n * oh, ow, kernel.reshape(depth, cout), acc.reshape(n * oh, ow, cout))
        acc *= dq
        y = _fma32(acc, fscale, bias)
    elif cin_g == 1:
        centred, factor = tflite_asymmetric_quantize(x, (1, 2, 3))
        xp = np.pad(centred, [(0, 0), *pads, (0, 0)]) if padded else centred
        win = K._windows(xp, (kh, kw), strides, dilation, outs)  # (N, OH, OW, KH, KW, C)
        mult = cout // groups
        wk = kernel.reshape(kh, kw, groups, mult).astype(np.float32)
        atype = np.float32 if kh * kw <= EXACT_F32_TERMS else np.float64
        acc = np.zeros((n, oh, ow, groups, mult), atype)
        tap = np.empty_like(acc)
        for i in range(kh):
            for j in range(kw):
                np.multiply(win[:, :, :, i, j, :, None], wk[i, j], out=tap)
                acc += tap
        y = acc.reshape(n, oh, ow, cout).astype(np.float32)
        y *= fscale
        y *= factor
        if bias is not None:
            y += np.asarray(bias, np.float32)
    else:
        raise PisplitError("a dynamic-range grouped convolution (other than depthwise) has no hybrid kernel in pisplit")
    return [K.apply_activation(y, attrs.get("activation"), inplace=True)]


def hybrid_dense(xs, attrs, w, wq: TensorQuant):
    """A dynamic-range FULLY_CONNECTED (XNNPACK qd8, one quantization per input row); w holds the int8
    kernel (Cin, Cout) and the float32 bias."""
    x = np.asarray(xs[0], np.float32)
    kernel = w["kernel"]
    if kernel.dtype != np.int8:
        raise PisplitError(f"a dynamic-range fully connected layer's filter is {kernel.dtype}, expected int8 with its scales")
    cin, cout = kernel.shape
    rows2d = x.reshape(-1, cin)
    centred, dq = qd8_quantize(rows2d, (1,))
    acc = np.empty((rows2d.shape[0], cout), np.float32)
    # exact sums in bands and blocks of filters (the whole filter as float32 was 4x its int8 bytes: 8 MiB for ResNet50's)
    _centered_matmul(lambda r0, r1: centred[r0:r1], rows2d.shape[0], 1, kernel, acc)
    acc *= dq
    y = _fma32(acc, np.broadcast_to(np.asarray(wq.scale, np.float32), (cout,)), w.get("bias"))
    return [K.apply_activation(y.reshape(*x.shape[:-1], cout), attrs.get("activation"), inplace=True)]


HYBRID = {"conv2d": hybrid_conv2d, "dense": hybrid_dense}


def hybrid_work_bytes(op: str, ins: list, outs: list, attrs: dict, weight_shapes: dict) -> int | None:
    """Bytes a dynamic-range conv / dense (hybrid_conv2d, hybrid_dense) holds for a frame besides its float
    input and output (layers.graph's cost model, issue 12): its quantized input (float32 integers, then
    padded), the banded products (matmul_work_bytes), a depthwise layer's accumulator and tap product;
    None for other ops."""
    values = int(np.prod(ins[0], dtype=np.int64))
    f32 = np.dtype(np.float32)
    if op == "dense":
        cin, cout = weight_shapes["kernel"][-2:]
        return 4 * values + matmul_work_bytes(values // max(int(cin), 1), 1, int(cin), int(cout), f32, 4)
    if op != "conv2d" or len(ins[0]) != 4:
        return None
    kh, kw, cin_g, cout = weight_shapes["kernel"]
    groups = int(attrs.get("groups", 1))
    strides = tuple(attrs.get("strides") or (1, 1))
    dilation = tuple(attrs.get("dilation") or (1, 1))
    pads = K.resolve_padding(ins[0][1:3], (kh, kw), strides, dilation, attrs.get("padding", "valid"))
    padded = 0
    if any(a or b for a, b in pads):
        padded = 4 * int(ins[0][0]) * int(ins[0][3]) * int(np.prod([s + a + b for s, (a, b) in zip(ins[0][1:3], pads)]))
    n, oh, ow = (int(v) for v in outs[0][:3])
    if groups == 1:
        return 8 * values + padded + matmul_work_bytes(n * oh, ow, kh * kw * cin_g, cout, f32, 4)  # input quantized, its product
    if cin_g != 1:
        return None  # a grouped filter runs in float (its reals): the float count stands
    atype = 4 if kh * kw <= EXACT_F32_TERMS else 8
    return 2 * 4 * values + padded + 2 * n * oh * ow * cout * atype  # quantizer's copies, accumulator and tap product


def run_hybrid(graph, node, inputs: list) -> list:
    """Node `node` of `graph`, a dynamic-range conv / dense, on float inputs: the one place the numpy engine
    reads a float node's int8 filter, always with its scales (graph.node_weights reads it dequantized
    everywhere else). A part of a split whose kind feeds the layer less than its whole input is refused in
    one line naming the node, as the litert export refuses it."""
    kind = str((graph.meta.get("split") or {}).get("kind", ""))
    depthwise = int(node.attrs.get("groups", 1)) > 1 and kind == "conv-channel"  # a depthwise part's channels alone
    if kind in HYBRID_PART_KINDS or depthwise:
        raise PisplitError(f"model {graph.name}: node {node.name} is a dynamic-range layer (int8 weights, float activations); "
                           f"LiteRT's hybrid kernels quantize each {kind} part's input on its own range, so a part cannot equal "
                           "the unsplit layer: split it by output channels (conv-channel, fc-output)")
    key = node.weight_key("kernel")
    w = graph.node_weights(node, dequantize=False)
    return HYBRID[node.op](inputs, node.attrs, w, graph.quant[key])


# --- the float layers of a dynamic-range graph, in XNNPACK's order ---------------------------------------
# Quantizing on the fly makes a dynamic-range model chaotic in its float layers' last bits: one ulp of
# difference in a hybrid layer's input moves a value across a rounding boundary now and then, which moves
# that value by a whole quantization step (1/255 of the row's range), and such steps grow through the
# layers. MobileNetV2's first three (float) layers computed with BLAS's summation order differ from
# XNNPACK's by an ulp here and there, and its output then by 3% of the largest one. So the float conv,
# dense and spatial mean nodes of a graph with hybrid layers run in XNNPACK's order (measured equal bit
# for bit, node by node): a convolution or fully-connected output starts at its bias and takes one fused
# multiply-add per filter tap in (kernel row, kernel column, input channel) order (XNNPACK's GEMM / IGEMM);
# a depthwise one in column-major tap order (XNNPACK packs its 2-D depthwise filters kernel column first);
# a mean over the spatial axes is a sequential float32 sum times float32(1 / count) (f32-rdsum). Only small
# layers stay float in such a graph (the converter quantizes every filter of 1024 weights or more), so the
# one vectorised pass per tap is cheap; a bigger one (XNNPACK_ORDER_MAX_TAPS) takes BLAS's order instead.

XNNPACK_ORDER_MAX_TAPS = 1024


def _fma_acc(acc: np.ndarray, a: np.ndarray, b) -> None:
    """acc = fma(a, b, acc) in float32, in place (the float64 product of float32 values is exact)."""
    t = a.astype(np.float64) * np.asarray(b, np.float64)
    t += acc
    acc[...] = t


def xnnpack_conv2d(xs, attrs, w):
    """A float conv2d (plain or depthwise) in XNNPACK's accumulation order; None when it has no such
    form here (grouped, or more than XNNPACK_ORDER_MAX_TAPS taps per output)."""
    x = np.asarray(xs[0], np.float32)
    kernel = np.asarray(w["kernel"], np.float32)
    if kernel.ndim != 4 or x.ndim != 4:
        return None
    kh, kw, cin_g, cout = kernel.shape
    groups = int(attrs.get("groups", 1))
    if (groups != 1 and cin_g != 1) or kh * kw * cin_g > XNNPACK_ORDER_MAX_TAPS:
        return None
    strides = tuple(attrs.get("strides") or (1, 1))
    dilation = tuple(attrs.get("dilation") or (1, 1))
    pads = K.resolve_padding(x.shape[1:3], (kh, kw), strides, dilation, attrs.get("padding", "valid"))
    outs = [K.conv_output_size(s, k, st, d, *p) for s, k, st, d, p in zip(x.shape[1:3], (kh, kw), strides, dilation, pads)]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)]) if any(a or b for a, b in pads) else x
    win = K._windows(xp, (kh, kw), strides, dilation, outs)  # (N, OH, OW, KH, KW, C), a view
    bias = w.get("bias")
    out = np.empty((x.shape[0], *outs, cout), np.float32)
    band = max(1, FMA_CHUNK // max(outs[1] * cout, 1))  # output rows whose float64 temporaries stay in cache
    for r0 in range(0, outs[0], band):
        r1 = min(outs[0], r0 + band)
        acc = out[:, r0:r1]
        acc[...] = 0 if bias is None else np.asarray(bias, np.float32)
        if groups == 1:
            for i in range(kh):
                for j in range(kw):
                    for c in range(cin_g):
                        _fma_acc(acc, win[:, r0:r1, :, i, j, c, None], kernel[i, j, c])
        else:
            mult = cout // groups
            view = acc.reshape(*acc.shape[:3], groups, mult)
            for j in range(kw):
                for i in range(kh):
                    _fma_acc(view, win[:, r0:r1, :, i, j, :, None], kernel[i, j, 0].reshape(groups, mult))
    return [K.apply_activation(out, attrs.get("activation"), inplace=True)]


def xnnpack_dense(xs, attrs, w):
    """A float fully-connected layer in XNNPACK's GEMM order (None past XNNPACK_ORDER_MAX_TAPS inputs)."""
    x = np.asarray(xs[0], np.float32)
    kernel = np.asarray(w["kernel"], np.float32)
    cin, cout = kernel.shape
    if cin > XNNPACK_ORDER_MAX_TAPS:
        return None
    rows = x.reshape(-1, cin)
    bias = w.get("bias")
    acc = np.empty((rows.shape[0], cout), np.float32)
    acc[...] = 0 if bias is None else np.asarray(bias, np.float32)
    for k in range(cin):
        _fma_acc(acc, rows[:, k, None], kernel[k])
    return [K.apply_activation(acc.reshape(*x.shape[:-1], cout), attrs.get("activation"), inplace=True)]


def xnnpack_mean(xs, attrs, w):
    """A mean over a run of middle axes (a global average pool) as XNNPACK's f32-rdsum computes it: a
    sequential float32 sum over the reduced positions, times float32(1 / count); None for other axes."""
    x = np.asarray(xs[0], np.float32)
    axes = sorted({a % x.ndim for a in attrs.get("axes", ())})
    if not axes or axes[0] == 0 or axes[-1] == x.ndim - 1 or axes != list(range(axes[0], axes[-1] + 1)):
        return None
    a0, a1 = axes[0], axes[-1] + 1
    lead, count, tail = int(np.prod(x.shape[:a0])), int(np.prod(x.shape[a0:a1])), int(np.prod(x.shape[a1:]))
    rows = x.reshape(lead, count, tail)
    acc = np.zeros((lead, tail), np.float32)
    for r in range(count):
        acc += rows[:, r]
    acc *= np.float32(1) / np.float32(count)
    shape = [1 if i in axes else s for i, s in enumerate(x.shape)] if attrs.get("keepdims") else \
        [s for i, s in enumerate(x.shape) if i not in axes]
    return [acc.reshape(shape)]


XNNPACK_FLOAT = {"conv2d": xnnpack_conv2d, "dense": xnnpack_dense, "mean": xnnpack_mean}


def has_hybrid_layers(graph) -> bool:
    """Whether `graph` holds a dynamic-range layer (a float node with an int8 weight); cached on the graph."""
    cached = graph.__dict__.get("_has_hybrid")
    if cached is None:
        cached = bool(graph.quant) and any(not n.attrs.get("quantized") and n.weight_key("kernel") in graph.quant
                                           for n in graph.nodes if "kernel" in n.weight_shapes)
        graph.__dict__["_has_hybrid"] = cached
    return cached


def run_dynamic_range(graph, node, inputs: list):
    """A float node of a graph with dynamic-range layers as LiteRT runs it: a hybrid layer (run_hybrid), or
    a float conv / dense / spatial mean in XNNPACK's order; None for any other node (the float kernels)."""
    if node.op in HYBRID and node.weight_key("kernel") in graph.quant:
        if node.op == "conv2d" and int(node.attrs.get("groups", 1)) > 1 and node.weight_shapes["kernel"][-2] > 1:
            return None  # a grouped (not depthwise) filter: its reals, as the litert export writes it (per-group CONV_2Ds)
        return run_hybrid(graph, node, inputs)
    if node.op in XNNPACK_FLOAT and has_hybrid_layers(graph):
        return XNNPACK_FLOAT[node.op](inputs, node.attrs, graph.node_weights(node))
    return None
