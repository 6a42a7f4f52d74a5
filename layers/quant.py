"""Quantized tensors in the IR: dtype and affine quantization per tensor, and TFLite's fixed-point arithmetic.

A graph's quantization is plain data in `graph.meta["quant"]`: tensor name (an activation, or a weight
key "node/param") -> {"dtype": "int8" | "int32", "scale": [...], "zero_point": [...], "axis": k}, real =
(q - zero_point) * scale, one scale per slice along `axis` when there are several. It is saved and
loaded with the graph's JSON, and passed on with `meta` to graphs cut from it (pipeline stages).
`Graph.quant` holds it parsed as `TensorQuant`s.

The integer arithmetic follows TFLite's reference kernels (tensorflow/lite/kernels/internal/common.h,
quantization_util.cc), vectorised: `quantize_multiplier` turns a real multiplier into a Q31 integer and
a power-of-two exponent (frexp, round half away from zero), `multiply_by_quantized_multiplier` applies
it with TFLite's two roundings (a saturating rounding doubling high multiply, then a rounding divide by
a power of two, ties away from zero), on int64 numpy arrays so no intermediate overflows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import PisplitError
from .ops import OpSpec, numel, register

# dtypes a quantized tensor may have; activations are int8 only for now (weights int8, biases int32)
QUANT_DTYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32}


@dataclass(frozen=True)
class TensorQuant:
    """Affine quantization of one tensor: real = (q - zero_point) * scale, per slice along `axis`."""

    dtype: str
    scale: tuple
    zero_point: tuple
    axis: int = 0

    @property
    def np_dtype(self):
        return np.dtype(QUANT_DTYPES[self.dtype])

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.np_dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.np_dtype).max)

    def scalar(self, what: str) -> tuple[float, int]:
        """(scale, zero point) of a per-tensor quantization; PisplitError naming `what` otherwise."""
        if len(self.scale) != 1 or len(self.zero_point) != 1:
            raise PisplitError(f"{what}: needs one quantization scale and zero point, has {len(self.scale)}")
        return float(self.scale[0]), int(self.zero_point[0])

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "scale": [float(s) for s in self.scale], "zero_point": [int(z) for z in self.zero_point],
                "axis": int(self.axis)}

    @classmethod
    def from_dict(cls, name: str, d) -> "TensorQuant":
        try:
            q = cls(str(d["dtype"]), tuple(float(np.float32(s)) for s in d["scale"]), tuple(int(z) for z in d["zero_point"]),
                    int(d.get("axis", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise PisplitError(f"quantization of tensor {name!r} is malformed ({exc!r})") from None
        if q.dtype not in QUANT_DTYPES:
            raise PisplitError(f"quantization of tensor {name!r}: dtype {q.dtype!r} is not one of {', '.join(QUANT_DTYPES)}")
        if not q.scale or len(q.zero_point) not in (1, len(q.scale)):
            raise PisplitError(f"quantization of tensor {name!r}: {len(q.scale)} scales with {len(q.zero_point)} zero points")
        if not all(np.isfinite(s) and s > 0 for s in q.scale):
            raise PisplitError(f"quantization of tensor {name!r}: scales must be positive and finite")
        return q

    def describe(self) -> str:
        """One short line: 'int8 scale 0.0235 zp -128' or 'int8 per-channel(axis 3, 32) scale 1e-3..4e-3 zp 0'."""
        if not self.per_channel:
            return f"{self.dtype} scale {self.scale[0]:.4g} zp {self.zero_point[0]}"
        zps = sorted(set(self.zero_point))
        zp = str(zps[0]) if len(zps) == 1 else f"{zps[0]}..{zps[-1]}"
        return f"{self.dtype} per-channel(axis {self.axis}, {len(self.scale)}) scale {min(self.scale):.3g}..{max(self.scale):.3g} zp {zp}"


def parse_quant(meta: Mapping) -> dict[str, TensorQuant]:
    """The TensorQuants of a graph's meta["quant"] (empty for float graphs)."""
    raw = meta.get("quant") or {}
    if not isinstance(raw, Mapping):
        raise PisplitError("graph meta 'quant' must map tensor names to quantizations")
    return {str(k): TensorQuant.from_dict(k, v) for k, v in raw.items()}


# --- TFLite's fixed-point arithmetic -------------------------------------------------------------------

def quantize_multiplier(real) -> tuple[np.ndarray, np.ndarray]:
    """TFLite QuantizeMultiplier, vectorised: real (float64) ~= q * 2**(shift - 31), q in [2**30, 2**31)."""
    real = np.asarray(real, dtype=np.float64)
    frac, exp = np.frexp(real)
    q = np.floor(np.abs(frac) * 2.0 ** 31 + 0.5) * np.sign(frac)  # std::round: ties away from zero
    full = q == 2.0 ** 31
    q = np.where(full, q / 2, q)
    exp = np.where(full, exp + 1, exp)
    tiny = exp < -31
    q = np.where(tiny, 0, q)
    exp = np.where(tiny, 0, exp)
    return q.astype(np.int64), exp.astype(np.int64)


def _trunc_shift(x: np.ndarray, n: int) -> np.ndarray:
    """x / 2**n rounded toward zero (C integer division) for int64 arrays."""
    return np.where(x >= 0, x >> n, -((-x) >> n))


def saturating_rounding_doubling_high_mul(a: np.ndarray, b) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64 arrays."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    out = _trunc_shift(ab + nudge, 31)
    overflow = (a == b) & (a == -(1 << 31))
    return np.where(overflow, np.int64((1 << 31) - 1), out) if overflow.any() else out


def rounding_divide_by_pot(x: np.ndarray, exponent) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2**exponent rounded to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, multiplier, shift, overwrite: bool = False) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier (the default, double-rounding build): x * multiplier * 2**(shift - 31).

    For multipliers >= 0 (every multiplier TFLite derives from scales) it runs as three in-place passes
    that give the same integers: the rounding doubling high multiply, nudge included, is
    floor((x * m + 2**30) / 2**31) for either sign of x * m (C's truncation of (ab + 1 - 2**30) / 2**31
    for ab < 0 is that floor), and can only saturate for m = -2**31; the rounding divide by 2**r with
    ties away from zero is floor((t + 2**(r-1) - [t < 0]) / 2**r) for r > 0. The general gemmlowp
    functions above stay the reference (tests compare the two). With `overwrite`, an int64 array x is
    used as the result's buffer (the caller's temporary, no copy of it)."""
    overwrite = overwrite and isinstance(x, np.ndarray) and x.dtype == np.int64 and x.flags.writeable
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    if (multiplier < 0).any():
        return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x << left, multiplier), right)
    if overwrite and left.shape in ((), x.shape[-1:]):
        t = np.left_shift(x, left, out=x) if left.any() else x
    else:
        t = np.left_shift(x, left) if left.any() else x.copy()
    t *= multiplier
    t += np.int64(1 << 30)
    t >>= 31
    if right.any():
        negative = t < 0
        if right.ndim:
            negative &= right > 0
        elif int(right) == 0:
            return t
        t += (np.int64(1) << right) >> 1
        t -= negative
        t >>= right
    return t


def requantize(acc, real_multiplier, zero_point: int, lo: int, hi: int, dtype=np.int8) -> np.ndarray:
    """An int32 accumulator scaled by real_multiplier (per last-axis channel when a vector), plus the
    output zero point, clamped to [lo, hi]: the end of every TFLite integer conv / fc / mean kernel."""
    m, s = quantize_multiplier(real_multiplier)
    out = multiply_by_quantized_multiplier(acc, m, s) + int(zero_point)
    return np.clip(out, lo, hi).astype(dtype)


def round_half_away(x) -> np.ndarray:
    """std::round on floats: ties away from zero (numpy rounds ties to even)."""
    x = np.asarray(x)
    return np.sign(x) * np.floor(np.abs(x) + x.dtype.type(0.5))


def quantize_value(value: float, quant: TensorQuant) -> int:
    """zero_point + round(value / scale) in float32, as TFLite's activation-range helper does (unclamped)."""
    scale, zp = quant.scalar("quantize")
    return zp + int(round_half_away(np.float32(value) / np.float32(scale)))


def dequantize(q: np.ndarray, quant: TensorQuant) -> np.ndarray:
    """(q - zero_point) * scale as float32, per slice along quant.axis when it has several scales: the
    one way pisplit reads a quantized weight as reals (a dynamic-range layer's int8 filter on the numpy
    engine). Computed in float32 in place, one float32 copy at a time: q - zero_point of an 8-bit weight
    is an integer float32 holds exactly, and its product with a float32 scale is rounded once, as
    TFLite's float32 formula (and a float64 product rounded to float32) rounds it. Wider integers go
    through float64."""
    q = np.asarray(q)
    if q.dtype != quant.np_dtype:
        raise PisplitError(f"a {quant.dtype} quantized weight holds {q.dtype} values")
    bshape = [1] * q.ndim
    if quant.per_channel:
        if not 0 <= quant.axis < q.ndim or q.shape[quant.axis] != len(quant.scale):
            raise PisplitError(f"a weight of shape {q.shape} has {len(quant.scale)} quantization scales for dimension {quant.axis}")
        bshape[quant.axis] = len(quant.scale)
    zero = np.asarray(quant.zero_point).reshape(bshape if len(quant.zero_point) > 1 else [1] * q.ndim)
    if q.dtype.itemsize == 1:
        out = q.astype(np.float32)
        if np.any(zero):
            out -= zero.astype(np.float32)
        out *= np.asarray(quant.scale, np.float32).reshape(bshape)
        return out
    scale = np.asarray(quant.scale, np.float32).astype(np.float64).reshape(bshape)
    return ((q.astype(np.float64) - zero.astype(np.float64)) * scale).astype(np.float32)


def random_values(graph, tensor: str, rng: np.random.Generator, shape=None) -> np.ndarray:
    """Seeded test values of `tensor` (shape: its own, or `shape`): standard normal float32 for a float
    tensor; for a quantized one the same normal reals as its model sees them, quantized with the tensor's
    scale and zero point (round half away from zero, clamped to its type), in its integer dtype."""
    shape = graph.shapes[tensor] if shape is None else shape
    x = rng.standard_normal(shape, dtype=np.float32)
    quant = graph.quant.get(tensor)
    if quant is None:
        return x
    scale, zp = quant.scalar(f"tensor {tensor!r}")
    q = round_half_away(x / np.float32(scale)) + zp
    return np.clip(q, quant.qmin, quant.qmax).astype(quant.np_dtype)


def activation_range(activation, quant: TensorQuant) -> tuple[int, int]:
    """TFLite CalculateActivationRangeQuantized: the clamp of a fused activation in the quantized domain."""
    lo, hi = quant.qmin, quant.qmax
    if activation in (None, "linear"):
        return lo, hi
    if activation == "relu":
        return max(lo, quantize_value(0.0, quant)), hi
    if activation == "relu6":
        return max(lo, quantize_value(0.0, quant)), min(hi, quantize_value(6.0, quant))
    if activation == "relu_n1_to_1":
        return max(lo, quantize_value(-1.0, quant)), min(hi, quantize_value(1.0, quant))
    raise PisplitError(f"fused activation {activation!r} has no quantized form")


# --- the end of a split int8 layer ----------------------------------------------------------------------
# A split int8 conv / fully connected layer whose parts hold input channels (conv-filter, fc-input) makes
# int32 partial sums (the parts' nodes carry attrs["partial"]). `int32_halves` writes each as two exact
# float32 values, hi = sum >> 16 and lo = sum & 0xffff, interleaved on the last axis (C channels -> 2C):
# sums of up to 255 parts' halves stay below 2**24, so adding them in float32 (every runtime buffer is
# float32) is exact in any order. The root adds the parts' halves and one `requantize` node rebuilds
# hi * 65536 + lo and scales it to the layer's int8 output exactly as the unsplit kernel does (attrs: the
# real multipliers input_scale * filter_scale / output_scale per output channel, or one; the fused
# activation's clamp). Neither has a float form: they run as integer kernels (layers.qkernels).

def _int8_only(name):
    def run(xs, attrs, w):
        raise PisplitError(f"op {name} runs on quantized tensors only (its graph carries no quantization for it)")
    return run


register("int32_halves", OpSpec(lambda ins, a, ws: [(*ins[0][:-1], 2 * ins[0][-1])], _int8_only("int32_halves"),
                                lambda i, o, a, ws: numel(o[0])))
register("requantize", OpSpec(lambda ins, a, ws: [(*ins[0][:-1], ins[0][-1] // 2)], _int8_only("requantize"),
                              lambda i, o, a, ws: numel(i[0])))

MAX_PARTIAL_PARTS = 255  # parts whose 16-bit halves add exactly in float32 (255 * 65535 < 2**24)
