"""Vectorised float32 numpy reference kernels, NHWC (NDHWC for 3-D) as TFLite.

Every kernel takes and returns numpy arrays whose first axis is the batch; no Python loops run over
pixels. Convolutions gather windows with strided views and multiply with BLAS in bands of output rows,
so the im2col buffer stays small (`conv_band_rows` gives its size).
"""
from __future__ import annotations

import math
import threading
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

# Upper bound of one im2col band: 4 MiB measured fastest here (172 vs 137 GFLOPS at 16 MiB on VGG16 block1).
IM2COL_BAND_BYTES = 4 * 1024 * 1024

Padding = "str | Sequence[Sequence[int]]"


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad_before: int, pad_after: int) -> int:
    """Output length of one spatial axis of a convolution or pooling window."""
    effective = (kernel - 1) * dilation + 1
    return (size + pad_before + pad_after - effective) // stride + 1


def resolve_padding(
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    padding,
) -> list[tuple[int, int]]:
    """Explicit (before, after) pads per spatial axis for 'same', 'valid' or explicit padding.

    'same' follows TensorFlow: output = ceil(input / stride), the odd pixel of padding goes after.
    Raises ValueError for an unknown padding or one with the wrong number of axes.
    """
    n = len(in_sizes)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return [(0, 0)] * n
        if mode == "same":
            pads = []
            for size, k, s, d in zip(in_sizes, kernel, strides, dilation):
                out = -(-size // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                pads.append((total // 2, total - total // 2))
            return pads
        raise ValueError(f"padding {padding!r}: expected 'same', 'valid' or explicit [[before, after], ...]")
    pads = [tuple(int(v) for v in p) for p in padding]
    if len(pads) != n or any(len(p) != 2 or min(p) < 0 for p in pads):
        raise ValueError(f"padding {padding!r}: expected {n} non-negative [before, after] pairs")
    return pads


def _windows(x: np.ndarray, kernel, strides, dilation, out_sizes) -> np.ndarray:
    """Strided view (N, *out, *kernel, C) of an already padded (N, *spatial, C) array; no copy."""
    n_spatial = len(kernel)
    sN, *s_sp, sC = x.strides
    shape = (x.shape[0], *out_sizes, *kernel, x.shape[-1])
    strides_ = (sN, *(s * st for s, st in zip(s_sp, strides)), *(s * d for s, d in zip(s_sp, dilation)), sC)
    assert len(shape) == 2 * n_spatial + 2
    return as_strided(x, shape=shape, strides=strides_, writeable=False)


def _pad_spatial(x: np.ndarray, pads, value: float = 0.0) -> np.ndarray:
    if not any(b or a for b, a in pads):
        return x
    return np.pad(x, [(0, 0), *pads, (0, 0)], mode="constant", constant_values=value)


_SCRATCH = threading.local()


def _scratch(shape: tuple) -> np.ndarray:
    """A float32 array of `shape` in this thread's im2col buffer, which grows to the largest band
    asked for and is kept: each band reuses it instead of allocating 4 MiB (no page faults, and no
    hole in the heap that the next frame's smaller buffers split so the band no longer fits)."""
    n = int(np.prod(shape, dtype=np.int64))
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < n:
        buf = _SCRATCH.buf = np.empty(n, np.float32)
    return buf[:n].reshape(shape)


def conv_band_rows(out_sizes: Sequence[int], kernel: Sequence[int], cin: int) -> int:
    """How many output rows (first spatial axis) one im2col band holds."""
    row_bytes = int(np.prod(out_sizes[1:], dtype=np.int64)) * int(np.prod(kernel)) * cin * 4
    return max(1, min(out_sizes[0], IM2COL_BAND_BYTES // max(row_bytes, 1)))


def conv_band_bytes(out_sizes: Sequence[int], kernel: Sequence[int], cin: int, groups: int, strides) -> int:
    """Bytes of the im2col band `conv_nd` gathers into the kept buffer (_scratch): one group's share
    of it for grouped convolutions; none for 1x1 stride-1 and depthwise ones."""
    cin_g = cin // groups
    if (all(k == 1 for k in kernel) and all(s == 1 for s in strides) and groups == 1) or (cin_g == 1 and groups > 1):
        return 0
    rows = conv_band_rows(out_sizes, kernel, cin)
    return rows * int(np.prod(out_sizes[1:], dtype=np.int64)) * int(np.prod(kernel)) * cin_g * 4


def conv_work_bytes(out_sizes: Sequence[int], kernel: Sequence[int], cin: int, groups: int, strides, cout: int | None = None) -> int:
    """Bytes of the scratch `conv_nd` allocates for one frame besides its output: the im2col band
    (conv_band_bytes), or the product buffer of a depthwise convolution (`cout` channels, default
    `cin`). The padded input copy is the caller's to add (ops: _conv_work)."""
    if cin // groups == 1 and groups > 1:
        return 4 * int(np.prod(out_sizes, dtype=np.int64)) * int(cout or cin)
    return conv_band_bytes(out_sizes, kernel, cin, groups, strides)


def conv_nd(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    strides: Sequence[int] | None = None,
    padding="valid",
    dilation: Sequence[int] | None = None,
    groups: int = 1,
) -> np.ndarray:
    """N-d convolution (cross-correlation) of x (N, *spatial, Cin) with kernel (*K, Cin/groups, Cout).

    Output channels of group g are [g*Cout/groups, (g+1)*Cout/groups) and read input channels
    [g*Cin/groups, (g+1)*Cin/groups); a depthwise convolution is groups == Cin. Returns float32
    (N, *out, Cout). Raises ValueError when channel counts do not match the kernel or groups.
    """
    x = np.asarray(x, dtype=np.float32)
    kernel = np.asarray(kernel, dtype=np.float32)
    n_sp = kernel.ndim - 2
    if x.ndim != n_sp + 2:
        raise ValueError(f"conv: input of rank {x.ndim} does not fit a {n_sp}-d kernel of shape {kernel.shape}")
    strides = tuple(strides or (1,) * n_sp)
    dilation = tuple(dilation or (1,) * n_sp)
    ksize = kernel.shape[:n_sp]
    cin = x.shape[-1]
    cin_g, cout = kernel.shape[-2], kernel.shape[-1]
    if groups < 1 or cin % groups or cout % groups or cin_g * groups != cin:
        raise ValueError(f"conv: {cin} input channels, kernel {kernel.shape} and groups={groups} do not fit")
    pads = resolve_padding(x.shape[1:-1], ksize, strides, dilation, padding)
    out_sizes = [conv_output_size(s, k, st, d, *p) for s, k, st, d, p in zip(x.shape[1:-1], ksize, strides, dilation, pads)]
    if min(out_sizes) < 1:
        raise ValueError(f"conv: input {x.shape[1:-1]} is smaller than kernel {ksize} (dilation {dilation})")
    xp = _pad_spatial(x, pads)
    n = x.shape[0]
    out = np.empty((n, *out_sizes, cout), dtype=np.float32)
    cout_g = cout // groups

    if all(k == 1 for k in ksize) and groups == 1:
        view = xp[(slice(None), *(slice(None, (o - 1) * s + 1, s) for o, s in zip(out_sizes, strides)))]
        np.matmul(view.reshape(-1, cin), kernel.reshape(cin, cout), out=out.reshape(-1, cout))
    elif cin_g == 1 and groups > 1:
        # Depthwise: accumulate one kernel tap at a time, elementwise over channels, into `out`
        # with one product buffer (conv_work_bytes counts it)
        mult = cout_g
        win = _windows(xp, ksize, strides, dilation, out_sizes)
        w = kernel.reshape(*ksize, cin, mult)
        acc = out.reshape(n, *out_sizes, cin, mult)
        acc.fill(0)
        prod = np.empty_like(acc)
        for tap in np.ndindex(*ksize):
            np.multiply(win[(slice(None),) * (n_sp + 1) + tap][..., None], w[tap], out=prod)
            acc += prod
    else:
        win = _windows(xp, ksize, strides, dilation, out_sizes)
        k_taps = int(np.prod(ksize))
        band = conv_band_rows(out_sizes, ksize, cin)
        # (K*Cin_g, Cout): rows in (tap, input channel of the group) order; group g's filters are
        # columns [g*Cout_g, (g+1)*Cout_g), a strided view BLAS takes as it is (no copy per call)
        w2 = kernel.reshape(k_taps * cin_g, cout)
        for b in range(n):
            for r0 in range(0, out_sizes[0], band):
                r1 = min(r0 + band, out_sizes[0])
                cols = win[b, r0:r1]  # (rows, *out[1:], *K, Cin) strided view
                m_size = int(np.prod(cols.shape[: n_sp]))
                out2 = out[b, r0:r1].reshape(m_size, cout)
                for g in range(groups):
                    # one group's columns at a time (a band of 1/groups the size), gathered into the
                    # im2col scratch buffer
                    src = cols if groups == 1 else cols[..., g * cin_g:(g + 1) * cin_g]
                    cols_g = _scratch(src.shape)
                    np.copyto(cols_g, src)
                    np.matmul(cols_g.reshape(m_size, k_taps * cin_g), w2[:, g * cout_g:(g + 1) * cout_g],
                              out=out2 if groups == 1 else out2[:, g * cout_g:(g + 1) * cout_g])
    if bias is not None:
        out += np.asarray(bias, dtype=np.float32)
    return out


def conv2d(x, kernel, bias=None, strides=(1, 1), padding="valid", dilation=(1, 1), groups=1) -> np.ndarray:
    """2-D convolution: x (N, H, W, Cin), kernel (KH, KW, Cin/groups, Cout) -> (N, OH, OW, Cout)."""
    return conv_nd(x, kernel, bias, strides, padding, dilation, groups)


def conv3d(x, kernel, bias=None, strides=(1, 1, 1), padding="valid", dilation=(1, 1, 1), groups=1) -> np.ndarray:
    """3-D convolution: x (N, D, H, W, Cin), kernel (KD, KH, KW, Cin/groups, Cout) -> (N, OD, OH, OW, Cout)."""
    return conv_nd(x, kernel, bias, strides, padding, dilation, groups)


def dense(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Fully connected on the last axis: x (..., Cin) @ kernel (Cin, Cout) + bias -> (..., Cout)."""
    y = np.matmul(np.asarray(x, dtype=np.float32), np.asarray(kernel, dtype=np.float32))
    if bias is not None:
        y += np.asarray(bias, dtype=np.float32)
    return y


def _pool_geometry(x, pool, strides, padding):
    n_sp = x.ndim - 2
    pool = tuple(pool)
    strides = tuple(strides or pool)
    if len(pool) != n_sp or len(strides) != n_sp:
        raise ValueError(f"pool: window {pool} / strides {strides} do not fit an input of rank {x.ndim}")
    pads = resolve_padding(x.shape[1:-1], pool, strides, (1,) * n_sp, padding)
    out_sizes = [conv_output_size(s, k, st, 1, *p) for s, k, st, p in zip(x.shape[1:-1], pool, strides, pads)]
    if min(out_sizes) < 1:
        raise ValueError(f"pool: input {x.shape[1:-1]} is smaller than window {pool}")
    return pool, strides, pads, out_sizes


def max_pool(x: np.ndarray, pool: Sequence[int], strides=None, padding="valid") -> np.ndarray:
    """Max pooling over the spatial axes of (N, *spatial, C); padded cells never win."""
    x = np.asarray(x, dtype=np.float32)
    pool, strides, pads, out_sizes = _pool_geometry(x, pool, strides, padding)
    xp = _pad_spatial(x, pads, value=-np.inf)
    win = _windows(xp, pool, strides, (1,) * len(pool), out_sizes)
    n_sp = len(pool)
    # Reduce one kernel axis at a time: cheaper than one reduction over a strided multi-axis view.
    out = None
    for tap in np.ndindex(*pool):
        v = win[(slice(None),) * (n_sp + 1) + tap]
        out = v.copy() if out is None else np.maximum(out, v, out=out)
    return out


def avg_pool(x: np.ndarray, pool: Sequence[int], strides=None, padding="valid") -> np.ndarray:
    """Average pooling of (N, *spatial, C); padded cells are excluded from the count (as TFLite)."""
    x = np.asarray(x, dtype=np.float32)
    pool, strides, pads, out_sizes = _pool_geometry(x, pool, strides, padding)
    n_sp = len(pool)
    xp = _pad_spatial(x, pads)
    win = _windows(xp, pool, strides, (1,) * n_sp, out_sizes)
    total = np.zeros((x.shape[0], *out_sizes, x.shape[-1]), dtype=np.float32)
    for tap in np.ndindex(*pool):
        total += win[(slice(None),) * (n_sp + 1) + tap]
    # Count of real (unpadded) cells per output position: separable, one axis at a time.
    count = np.ones((), dtype=np.float32)
    for axis, (size, k, s, (pb, _pa), o) in enumerate(zip(x.shape[1:-1], pool, strides, pads, out_sizes)):
        starts = np.arange(o) * s - pb
        c = (np.minimum(starts + k, size) - np.maximum(starts, 0)).astype(np.float32)
        shape = [1] * n_sp
        shape[axis] = o
        count = count * c.reshape(shape)
    total /= count[None, ..., None]
    return total


def global_avg_pool(x: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """Mean over all spatial axes of (N, *spatial, C) -> (N, C), or (N, 1, .., 1, C) with keepdims."""
    x = np.asarray(x, dtype=np.float32)
    return x.mean(axis=tuple(range(1, x.ndim - 1)), keepdims=keepdims, dtype=np.float32)


def batch_norm(x, gamma, beta, mean, var, epsilon: float = 1e-3) -> np.ndarray:
    """Inference batch-norm on the last axis: gamma * (x - mean) / sqrt(var + eps) + beta."""
    scale, shift = batch_norm_scale_shift(gamma, beta, mean, var, epsilon)
    y = np.multiply(x, scale, dtype=np.float32)
    y += shift  # in place: one output-sized array, not two
    return y


def batch_norm_scale_shift(gamma, beta, mean, var, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel affine form (scale, shift) of an inference batch-norm."""
    scale = (np.asarray(gamma, np.float32) / np.sqrt(np.asarray(var, np.float32) + np.float32(epsilon))).astype(np.float32)
    shift = (np.asarray(beta, np.float32) - np.asarray(mean, np.float32) * scale).astype(np.float32)
    return scale, shift


def relu(x):
    """max(x, 0)."""
    return np.maximum(x, np.float32(0), dtype=np.float32)


def relu6(x):
    """min(max(x, 0), 6)."""
    return np.clip(x, np.float32(0), np.float32(6)).astype(np.float32, copy=False)


def prelu(x, alpha):
    """x where x >= 0, alpha * x elsewhere; alpha broadcasts against the non-batch axes."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x >= 0, x, x * np.asarray(alpha, dtype=np.float32))


def sigmoid(x):
    """1 / (1 + exp(-x)), without overflow warnings for large |x|."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


def tanh(x):
    """Hyperbolic tangent."""
    return np.tanh(np.asarray(x, dtype=np.float32))


def softmax(x, axis: int = -1, beta: float = 1.0):
    """exp(beta*x) normalised over `axis`, computed stably."""
    x = np.asarray(x, dtype=np.float32) * np.float32(beta)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def local_response_norm(x, depth_radius: int = 5, bias: float = 1.0, alpha: float = 1.0, beta: float = 0.5):
    """TFLite LOCAL_RESPONSE_NORMALIZATION on the channel axis:
    x / (bias + alpha * sum_{|j-c| <= r} x_j^2) ** beta.

    The window sums are 2r+1 shifted slices of the zero-padded squares (float32, as TFLite), and
    beta = 0.75 (AlexNet's) is sqrt(t) * sqrt(sqrt(t)): about 10x faster than a float64 cumsum with
    np.power, and LRN was a tenth of AlexNet's time."""
    x = np.asarray(x, dtype=np.float32)
    c, r = x.shape[-1], max(int(depth_radius), 0)
    sq = np.zeros(x.shape[:-1] + (c + 2 * r,), np.float32)
    np.square(x, out=sq[..., r:r + c])
    t = sq[..., 0:c].copy()
    for k in range(1, 2 * r + 1):
        t += sq[..., k:k + c]
    del sq  # one temporary of about the output's size beside it at a time (the op's work_bytes)
    t *= np.float32(alpha)
    t += np.float32(bias)
    if beta == 0.75:
        s = np.sqrt(t)
        np.sqrt(s, out=t)
        t *= s
    elif beta == 0.5:
        np.sqrt(t, out=t)
    elif beta != 1.0:
        np.power(t, np.float32(beta), out=t)
    return np.divide(x, t, out=t)


def hard_swish(x):
    """x * relu6(x + 3) / 6 (MobileNetV3's activation, TFLite HARD_SWISH)."""
    x = np.asarray(x, dtype=np.float32)
    return (x * np.clip(x + np.float32(3), 0, 6) / np.float32(6)).astype(np.float32, copy=False)


def leaky_relu(x, alpha: float = 0.2):
    """x where x >= 0, alpha * x elsewhere (a scalar slope)."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x >= 0, x, x * np.float32(alpha))


def relu_n1_to_1(x):
    """min(max(x, -1), 1) (TFLite's RELU_N1_TO_1)."""
    return np.clip(x, np.float32(-1), np.float32(1)).astype(np.float32, copy=False)


ACTIVATIONS = {
    None: None,
    "linear": None,
    "relu": relu,
    "relu6": relu6,
    "relu_n1_to_1": relu_n1_to_1,
    "sigmoid": sigmoid,
    "tanh": tanh,
}


_CLAMPS = {"relu": (0.0, None), "relu6": (0.0, 6.0), "relu_n1_to_1": (-1.0, 1.0)}


def apply_activation(x: np.ndarray, activation: str | None, inplace: bool = False) -> np.ndarray:
    """Apply a fused activation by name (None/'linear' leaves x as it is). With `inplace` (x is a
    float32 buffer the caller owns, e.g. a conv's fresh output) the clamps overwrite x instead of
    allocating a second output-sized array."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: expected one of {sorted(k for k in ACTIVATIONS if k)}")
    fn = ACTIVATIONS[activation]
    if fn is None:
        return x
    if inplace and activation in _CLAMPS and x.dtype == np.float32 and x.flags.writeable:
        lo, hi = _CLAMPS[activation]
        if hi is None:
            return np.maximum(x, np.float32(lo), out=x)
        return np.clip(x, np.float32(lo), np.float32(hi), out=x)
    return fn(x)


def pad(x, paddings, value: float = 0.0):
    """Constant padding; `paddings` has one [before, after] pair per axis of x."""
    return np.pad(np.asarray(x, dtype=np.float32), [tuple(p) for p in paddings], constant_values=np.float32(value))


def flops_conv(out_sizes: Sequence[int], kernel: Sequence[int], cin_per_group: int, cout: int) -> int:
    """2 x multiply-accumulates of one convolution output (batch 1)."""
    return 2 * math.prod(out_sizes) * math.prod(kernel) * cin_per_group * cout


def mean(x, axes: Sequence[int], keepdims: bool = False) -> np.ndarray:
    """Mean of x over `axes` (TFLite MEAN), accumulated in float32 as TFLite does."""
    return np.asarray(x, dtype=np.float32).mean(axis=tuple(int(a) for a in axes), keepdims=keepdims, dtype=np.float32)


def _resize_scale(in_size: int, out_size: int, align_corners: bool) -> np.float32:
    # float32 on purpose: TFLite computes the scale in float, and nearest-neighbour indices depend on it
    if align_corners and out_size > 1:
        return np.float32(in_size - 1) / np.float32(out_size - 1)
    return np.float32(in_size) / np.float32(out_size)


def _bilinear_axis(in_size: int, out_size: int, align_corners: bool, half_pixel_centers: bool):
    """Per output index: lower and upper source index and the weight of the upper one (TFLite reference)."""
    scale = _resize_scale(in_size, out_size, align_corners)
    pos = np.arange(out_size, dtype=np.float32)
    src = (pos + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel_centers else pos * scale
    lower = np.maximum(np.floor(src), 0).astype(np.int64)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    # the weight uses the clamped lower index, as TFLite does: equal indices make it harmless
    return lower, upper, (src - lower).astype(np.float32)


def resize_bilinear(x, size: Sequence[int], align_corners: bool = False, half_pixel_centers: bool = False) -> np.ndarray:
    """Bilinear resize of (N, H, W, C) to (N, size[0], size[1], C), as TFLite RESIZE_BILINEAR."""
    x = np.asarray(x, dtype=np.float32)
    y0, y1, wy = _bilinear_axis(x.shape[1], int(size[0]), align_corners, half_pixel_centers)
    x0, x1, wx = _bilinear_axis(x.shape[2], int(size[1]), align_corners, half_pixel_centers)
    wy = wy[None, :, None, None]
    wx = wx[None, None, :, None]
    top = x[:, y0]
    bottom = x[:, y1]
    top = top[:, :, x0] * (1 - wx) + top[:, :, x1] * wx
    bottom = bottom[:, :, x0] * (1 - wx) + bottom[:, :, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32, copy=False)


def _nearest_axis(in_size: int, out_size: int, align_corners: bool, half_pixel_centers: bool) -> np.ndarray:
    scale = _resize_scale(in_size, out_size, align_corners)
    offset = np.float32(0.5) if half_pixel_centers else np.float32(0)
    src = (np.arange(out_size, dtype=np.float32) + offset) * scale
    # TfLiteRound rounds halves away from zero; np.round would round them to even
    idx = np.floor(src + np.float32(0.5)) if align_corners else np.floor(src)
    idx = np.minimum(idx.astype(np.int64), in_size - 1)
    return np.maximum(idx, 0) if half_pixel_centers else idx


def resize_nearest(x, size: Sequence[int], align_corners: bool = False, half_pixel_centers: bool = False) -> np.ndarray:
    """Nearest-neighbour resize of (N, H, W, C) to (N, size[0], size[1], C), as TFLite RESIZE_NEAREST_NEIGHBOR."""
    x = np.asarray(x, dtype=np.float32)
    rows = _nearest_axis(x.shape[1], int(size[0]), align_corners, half_pixel_centers)
    cols = _nearest_axis(x.shape[2], int(size[1]), align_corners, half_pixel_centers)
    return x[:, rows][:, :, cols]


# --- converter patterns: transposed convolution, slices, tiles, depth to space ---------------------

def transpose_conv_pads(in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], out_sizes: Sequence[int],
                        padding: str) -> list[int]:
    """Leading crop per spatial axis of a transposed convolution, as TFLite computes it: the padding of
    the forward convolution from `out_sizes` to `in_sizes` ('same': half the total, the odd one after)."""
    if padding == "valid":
        return [0] * len(kernel)
    return [max((i - 1) * s + k - o, 0) // 2 for i, k, s, o in zip(in_sizes, kernel, strides, out_sizes)]


def conv2d_transpose(x: np.ndarray, kernel: np.ndarray, bias, strides: Sequence[int], out_size: Sequence[int],
                     padding: str = "same") -> np.ndarray:
    """Transposed 2-D convolution (TFLite TRANSPOSE_CONV), NHWC, kernel HWIO (KH, KW, Cin, Cout).

    Every input pixel scatters x @ kernel[kh, kw] to output pixel (i*s + kh - pad, j*s + kw - pad): one
    matmul per kernel tap over all pixels, accumulated into the uncropped output, then cropped."""
    n, h, w, cin = x.shape
    kh, kw, kcin, cout = kernel.shape
    if kcin != cin:
        raise ValueError(f"conv2d_transpose: {cin} input channels do not match kernel {kernel.shape}")
    sh, sw = strides
    oh, ow = out_size
    ph, pw = transpose_conv_pads((h, w), (kh, kw), strides, out_size, padding)
    full_h, full_w = max((h - 1) * sh + kh, ph + oh), max((w - 1) * sw + kw, pw + ow)
    y = np.zeros((n, full_h, full_w, cout), np.float32)
    flat = x.reshape(-1, cin).astype(np.float32, copy=False)
    for a in range(kh):
        for b in range(kw):
            y[:, a:a + sh * (h - 1) + 1:sh, b:b + sw * (w - 1) + 1:sw, :] += (flat @ kernel[a, b]).reshape(n, h, w, cout)
    y = y[:, ph:ph + oh, pw:pw + ow, :]
    if bias is not None:
        y = y + bias
    return np.ascontiguousarray(y, dtype=np.float32)


def axis_slice(start: int, step: int, count: int) -> slice:
    """The python slice of `count` indices start, start + step, ... (step may be negative)."""
    stop = start + step * count
    return slice(start, stop if stop >= 0 else None, step)


def strided_slice(x: np.ndarray, starts: Sequence[int], steps: Sequence[int], counts: Sequence[int],
                  out_shape: Sequence[int]) -> np.ndarray:
    """x[:, ...] with one (start, step, count) per non-batch axis, reshaped to (batch, *out_shape)
    (TFLite STRIDED_SLICE with resolved masks; shrunk axes are dropped by the reshape)."""
    index = (slice(None), *(axis_slice(s, st, c) for s, st, c in zip(starts, steps, counts)))
    return np.ascontiguousarray(x[index]).reshape(x.shape[0], *out_shape)


def tile(x: np.ndarray, multiples: Sequence[int]) -> np.ndarray:
    """x repeated multiples[d] times along each non-batch axis d + 1."""
    return np.tile(x, (1, *[int(m) for m in multiples]))


def depth_to_space(x: np.ndarray, block: int) -> np.ndarray:
    """TFLite DEPTH_TO_SPACE (DCR): y[n, h*b + i, w*b + j, c] = x[n, h, w, (i*b + j) * C + c]."""
    n, h, w, c = x.shape
    cout = c // (block * block)
    y = x.reshape(n, h, w, block, block, cout).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(y.reshape(n, h * block, w * block, cout))


# --- transformers and sequence models (issue 19) ------------------------------------------------------

def erf(x: np.ndarray) -> np.ndarray:
    """The error function, vectorised (numpy has none): W. J. Cody's rational approximations, evaluated
    in float64 (relative error below 1e-15 over the whole line; |x| >= 6 gives +-1 in float64)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.empty_like(a)
    small = a < 0.5
    if small.any():
        z = a[small] ** 2
        p = ((((1.85777706184603153e-1 * z + 3.16112374387056560e0) * z + 1.13864154151050156e2) * z
              + 3.77485237685302021e2) * z + 3.20937758913846947e3)
        q = ((((z + 2.36012909523441209e1) * z + 2.44024637934444173e2) * z + 1.28261652607737228e3) * z
             + 2.84423683343917062e3)
        out[small] = a[small] * p / q
    mid = (a >= 0.5) & (a < 4.0)
    if mid.any():
        y = a[mid]
        c = [5.64188496988670089e-1, 8.88314979438837594e0, 6.61191906371416295e1, 2.98635138197400131e2,
             8.81952221241769090e2, 1.71204761263407058e3, 2.05107837782607147e3, 1.23033935479799725e3,
             2.15311535474403846e-8]
        d = [1.57449261107098347e1, 1.17693950891312499e2, 5.37181101862009858e2, 1.62138957456669019e3,
             3.29079923573345963e3, 4.36261909014324716e3, 3.43936767414372164e3, 1.23033935480374942e3]
        p = c[8] * y
        q = y.copy()
        for k in range(7):  # Horner forms of Cody's erfc numerator and denominator
            p = (p + c[k]) * y
            q = (q + d[k]) * y
        p = p + c[7]
        q = q + d[7]
        out[mid] = 1.0 - np.exp(-y * y) * p / q
    big = a >= 4.0
    if big.any():
        y = a[big]
        z = 1.0 / (y * y)
        pp = [3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
              6.58749161529837803e-4, 1.63153871373020978e-2]
        qq = [2.56852019228982242e0, 1.87295284992346725e0, 5.27905102951428412e-1, 6.05183413124413191e-2,
              2.33520497626869185e-3]
        p = pp[5] * z
        q = z.copy()
        for k in range(4):
            p = (p + pp[k]) * z
            q = (q + qq[k]) * z
        r = z * (p + pp[4]) / (q + qq[4])
        r = (1.0 / np.sqrt(np.pi) - r) / y
        out[big] = 1.0 - np.exp(-y * y) * r
    return np.copysign(out, x)


_ERFC_FIT = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
             -0.82215223, 0.17087277)


def erfc_nonnegative(z: np.ndarray) -> np.ndarray:
    """erfc(z) for z >= 0 in float32: the Chebyshev fit of Numerical Recipes' erfcc (relative error below
    1.2e-7 in exact arithmetic; float32 rounding of z * z adds up to ~1e-6 relative at z = 3, ~1e-5 at
    z = 9 where erfc is 4e-37), t exp(-z^2 + P(t)) with t = 1 / (1 + z / 2). Ten times faster than `erf`."""
    z = np.asarray(z, dtype=np.float32)
    t = np.float32(1) / (np.float32(1) + np.float32(0.5) * z)
    p = np.full_like(z, np.float32(_ERFC_FIT[9]))
    for c in _ERFC_FIT[8:0:-1]:
        p *= t
        p += np.float32(c)
    p *= t
    p += np.float32(_ERFC_FIT[0])
    p -= z * z
    np.exp(p, out=p)
    p *= t
    return p


def gelu(x: np.ndarray, approximate: bool = False) -> np.ndarray:
    """TFLite GELU: 0.5 x (1 + erf(x / sqrt 2)), or with `approximate` the tanh form
    0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). The exact form is 0.5 x (2 - erfc(|x| / sqrt 2))
    for x >= 0 and 0.5 x erfc(|x| / sqrt 2) below, so negative inputs keep erfc's relative accuracy
    (within 3e-7 of the float64 definition in absolute terms; 70 -> 7 ms on ViT-B/16's (197, 3072) MLP)."""
    x = np.asarray(x, dtype=np.float32)
    if approximate:
        t = np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x))
        t += np.float32(1)
    else:
        c = erfc_nonnegative(np.abs(x) * np.float32(1.0 / math.sqrt(2.0)))
        t = np.where(x >= 0, np.float32(2) - c, c)
    t *= x
    t *= np.float32(0.5)
    return t


def rsqrt(x: np.ndarray) -> np.ndarray:
    """1 / sqrt(x) (TFLite RSQRT)."""
    x = np.asarray(x, dtype=np.float32)
    return np.divide(np.float32(1), np.sqrt(x), dtype=np.float32)


def batch_matmul(a: np.ndarray, b: np.ndarray, adj_x: bool = False, adj_y: bool = False) -> np.ndarray:
    """TFLite BATCH_MATMUL: a @ b over the last two axes, leading axes broadcast; `adj_x`/`adj_y`
    transpose the last two axes of a / b first."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if adj_x:
        a = np.swapaxes(a, -1, -2)
    if adj_y:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float = 1e-6) -> np.ndarray:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta (float32, as the
    converter's MEAN, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, MUL, MUL, ADD chain computes it)."""
    x = np.asarray(x, dtype=np.float32)
    mu = x.mean(axis=-1, keepdims=True, dtype=np.float32)
    d = x - mu
    var = np.mean(np.square(d), axis=-1, keepdims=True, dtype=np.float32)
    d *= rsqrt(var + np.float32(epsilon))
    d *= np.asarray(gamma, np.float32)
    d += np.asarray(beta, np.float32)
    return d
