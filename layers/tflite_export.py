"""Write a Graph as a .tflite flatbuffer (bytes) with the schema module's object API.

Used by the LiteRT engine (a whole model, a pipeline stage or one part of a split layer is compiled
to a flatbuffer and handed to the interpreter) and by tests that build .tflite models without
TensorFlow (`TfliteWriter`). Weight buffers are copied in as numpy vectors, 16-byte aligned, never
as Python lists: VGG16's 138M weights pack in about a second.

Layouts written: CONV_2D filters OHWI, DEPTHWISE_CONV_2D filters (1, KH, KW, Cin*M), FULLY_CONNECTED
weights (Cout, Cin). Activation tensors get a dynamic batch axis (shape signature -1) so an
interpreter can be resized to any batch. Ops without a TFLite builtin (3-D convolution and pooling)
raise PisplitError naming the node.

Dynamic-range layers (a float conv / depthwise / dense whose int8 filter the graph quantizes, as
layers.tflite imports them) are written as LiteRT's hybrid layers: the int8 filter with its scales on
TFLite's output-channel dimension, a float32 bias, float activations, so LiteRT runs its hybrid kernels
(int8 weights, activations quantized on the fly) as it does on the original file. A dynamic-range
filter that has no hybrid TFLite form here (a grouped convolution's per-group slices) is written as
its dequantized float32, never as bare integers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import PisplitError
from .graph import Graph
from .kernels import batch_norm_scale_shift, resolve_padding
from .ops import numel
from .tflite import ACTIVATION_CODES, FILE_IDENTIFIER, schema_module

_DTYPES = {np.dtype(np.float32): "FLOAT32", np.dtype(np.float16): "FLOAT16", np.dtype(np.int32): "INT32",
           np.dtype(np.int8): "INT8", np.dtype(np.uint8): "UINT8", np.dtype(np.int64): "INT64"}


# Activation operators, for activations TFLite kernels do not fuse (they only clamp: tanh, sigmoid)
# and for CONCATENATION, whose fused activation XNNPACK ignores.
_ACTIVATION_OPS = {"relu": "RELU", "relu6": "RELU6", "relu_n1_to_1": "RELU_N1_TO_1", "tanh": "TANH", "sigmoid": "LOGISTIC"}
_UNFUSED = ("tanh", "sigmoid")


class _AlignedBuffer:
    """A model buffer whose bytes go into the flatbuffer as one aligned memory copy."""

    def __init__(self, data: np.ndarray | None):
        self.data = None if data is None else np.ascontiguousarray(data).reshape(-1).view(np.uint8)

    def Pack(self, builder):  # noqa: N802 - the schema object API's name
        S = schema_module()
        vector = None
        if self.data is not None and self.data.size:
            n = int(self.data.size)
            builder.StartVector(1, n, 16)  # 16-byte alignment, as the TFLite converter writes buffers
            builder.head = builder.head - n
            builder.Bytes[builder.head:builder.head + n] = memoryview(self.data)
            vector = builder.EndVector()
        self.data = None  # in the flatbuffer now: the weights' memory can go (a writer is finished once)
        S.BufferStart(builder)
        if vector is not None:
            S.BufferAddData(builder, vector)
        return S.BufferEnd(builder)


class TfliteWriter:
    """Builds a one-subgraph .tflite model tensor by tensor and operator by operator."""

    def __init__(self, description: str = "pisplit"):
        self.S = schema_module()
        self.description = description
        self.buffers: list[_AlignedBuffer] = [_AlignedBuffer(None)]  # buffer 0 is the empty sentinel
        self.tensors: list = []
        self.operators: list = []
        self.opcodes: dict[int, int] = {}  # builtin code -> index in the operator code table
        self.data_bytes = 0
        self._by_key: dict[tuple, list[int]] = {}  # (bytes, sample) -> buffers with them (_buffer)

    def tensor(self, name: str, shape: Sequence[int], data: np.ndarray | None = None, dtype: str | None = None,
               dynamic_batch: bool = False, quantization=None) -> int:
        """Add a tensor (a constant when `data` is given); returns its index."""
        S = self.S
        t = S.TensorT()
        t.name = name
        t.shape = [int(s) for s in shape]
        if data is not None:
            data = np.asarray(data)
            if tuple(data.shape) != tuple(t.shape) and data.size != numel(t.shape):
                raise PisplitError(f"tensor {name!r}: data of shape {data.shape} does not fit shape {tuple(t.shape)}")
            dtype = dtype or _DTYPES.get(data.dtype)
            if dtype is None:
                raise PisplitError(f"tensor {name!r}: dtype {data.dtype} cannot be written to .tflite")
            t.buffer = self._buffer(data)
        else:
            t.buffer = 0
        t.type = getattr(S.TensorType, dtype or "FLOAT32")
        if dynamic_batch and t.shape:
            t.shapeSignature = [-1, *t.shape[1:]]
        if quantization is not None:
            t.quantization = quantization
        self.tensors.append(t)
        return len(self.tensors) - 1

    def _buffer(self, data: np.ndarray) -> int:
        """The index of a buffer holding `data`'s bytes: an earlier buffer with the very same bytes is
        shared (the converter shares them too; a recurrent layer's weights, written once per unrolled step,
        went in 50 times: 13 MB for a 0.7 MB LSTM, which the interpreter then streamed every frame)."""
        buf = _AlignedBuffer(data)
        raw = buf.data
        if raw is not None and raw.size:
            step = max(1, raw.size // 256)  # a cheap key: the size and a sample; equal bytes confirm it
            key = (int(raw.size), raw[::step].tobytes())
            for index in self._by_key.get(key, ()):
                if np.array_equal(self.buffers[index].data, raw):
                    return index
            self._by_key.setdefault(key, []).append(len(self.buffers))
        self.buffers.append(buf)
        self.data_bytes += 0 if raw is None else int(raw.size)
        return len(self.buffers) - 1

    def constant(self, name: str, value, dtype=np.int32) -> int:
        """A small constant tensor (shapes, axes, sizes, paddings)."""
        value = np.asarray(value, dtype=dtype)
        return self.tensor(name, value.shape, value)

    def operator(self, op: str | int, inputs: Sequence[int], outputs: Sequence[int], options=None) -> int:
        """Add a builtin operator by name ('CONV_2D') or code, with an object-API options instance."""
        S = self.S
        code = getattr(S.BuiltinOperator, op) if isinstance(op, str) else int(op)
        self.opcodes.setdefault(code, len(self.opcodes))
        o = S.OperatorT()
        o.opcodeIndex = self.opcodes[code]
        o.inputs = [int(i) for i in inputs]
        o.outputs = [int(i) for i in outputs]
        if options is not None:
            o.builtinOptionsType = getattr(S.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.operators.append(o)
        return len(self.operators) - 1

    def options(self, kind: str, **fields):
        """An object-API options instance, e.g. options('Conv2DOptions', strideW=2)."""
        o = getattr(self.S, kind + "T")()
        for k, v in fields.items():
            if not hasattr(o, k):
                raise AttributeError(f"{kind} has no field {k}")
            setattr(o, k, v)
        return o

    def finish(self, inputs: Sequence[int], outputs: Sequence[int]) -> bytes:
        """The model as .tflite flatbuffer bytes."""
        import flatbuffers

        S = self.S
        sg = S.SubGraphT()
        sg.tensors, sg.operators = self.tensors, self.operators
        sg.inputs, sg.outputs = [int(i) for i in inputs], [int(i) for i in outputs]
        sg.name = "main"
        model = S.ModelT()
        model.version = 3
        model.description = self.description
        model.subgraphs = [sg]
        model.buffers = self.buffers
        codes = sorted(self.opcodes, key=self.opcodes.get)
        model.operatorCodes = []
        for code in codes:
            oc = S.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, S.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            oc.version = 1
            model.operatorCodes.append(oc)
        size = self.data_bytes + 16 * len(self.buffers) + (1 << 20)
        if size >= flatbuffers.Builder.MAX_BUFFER_SIZE:
            raise PisplitError(f"model of {self.data_bytes / 2**30:.1f} GiB of weights is too large for one .tflite flatbuffer (2 GiB)")
        builder = flatbuffers.Builder(size)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(memoryview(builder.Bytes)[builder.Head():])  # one copy (Output() would add another)


def export_tflite(graph: Graph, description: str | None = None, *, flatten_into_dense: bool = False,
                  tile_as_concat: bool = False) -> bytes:
    """The graph as .tflite flatbuffer bytes: inputs and outputs in the graph's order.

    Raises PisplitError naming the first node that has no TFLite equivalent. An int8 graph is written
    with its quantization (issue 12): int8 activations with scale and zero point, int8 filters with
    per-channel scales on TFLite's output-channel dimension, int32 biases at input_scale * filter_scale,
    so LiteRT runs its integer kernels (XNNPACK's int8 path) on them. A split part's int32 partial sums
    and their requantize node have no TFLite form: refused, naming the node.

    Weights the export itself loaded into the graph's lazy weight overlays (a .tflite file's transposed
    filters, folded batch norms) are let go again once they are in the flatbuffer: a litert engine
    holds the flatbuffer and LiteRT's packed copy, and kept a third copy in the graph for nothing (25 MB
    for int8 ResNet50, 100 MB for float32); anything that reads them later loads them again.

    With `flatten_into_dense` (the litert engine), a flatten read only by dense layers writes no RESHAPE:
    FULLY_CONNECTED flattens its input itself, as the converter leaves it (an unrolled LSTM had 50 of them,
    one a step); the flatten's output tensor is then not in the flatbuffer. With `tile_as_concat` (the litert
    engine), a TILE of at most 5 copies per axis is written as CONCATENATIONs of its input, the same values:
    XNNPACK takes those and not TILE, which split a decoder's delegated graph in six around its TILEs.
    """
    overlays = _weight_overlays(graph)
    before = [set(o._cache) for o in overlays]
    exporter = _Exporter(graph, description)
    exporter.flatten_into_dense = flatten_into_dense
    exporter.tile_as_concat = tile_as_concat
    exporter.release = lambda: _release(overlays, before)  # after each node, as its weights are copied in
    try:
        return exporter.run()
    finally:
        _release(overlays, before)


def _release(overlays: list, before: list) -> None:
    """Drop what the export loaded into the weight overlays (see export_tflite)."""
    for o, had in zip(overlays, before):
        for key in [k for k in o._cache if k not in had]:
            del o._cache[key]


def _weight_overlays(graph: Graph) -> list:
    """The lazily loading weight overlays under a graph's weights (layers.weights.OverlayWeights chain)."""
    from .weights import OverlayWeights

    out, w = [], graph.weights
    while isinstance(w, OverlayWeights) and len(out) < 16:
        out.append(w)
        w = w.base
    return out


class _Exporter:
    def __init__(self, graph: Graph, description: str | None):
        self.g = graph
        self.w = TfliteWriter(description or f"pisplit export of {graph.name}")
        self.index: dict[str, int] = {}
        self.release = None  # called after each node with weights (export_tflite: lets the graph's loaded copies go)
        self.flatten_into_dense = False  # export_tflite's option: _flatten writes no RESHAPE before dense readers
        self.tile_as_concat = False  # export_tflite's option: _tile writes CONCATENATIONs (XNNPACK has no TILE)
        self.readers: dict | None = None  # tensor -> the nodes reading it (built on first use, _only_dense_reads)

    def run(self) -> bytes:
        g = self.g
        for name, shape in g.inputs.items():
            self.index[name] = self.w.tensor(name, shape, dynamic_batch=True, **self._qargs(name))
        for node in g.nodes:
            handler = getattr(self, "_" + node.op, None)
            if handler is None:
                raise PisplitError(f"model {g.name}: node {node.name} ({node.op}) has no TFLite equivalent; use the numpy engine")
            self.node = node
            self.pending = None
            # conv2d / dense write a dynamic-range filter as int8 with its scales (_wconst); every other
            # op reads weights as reals
            handler(node, g.node_weights(node, dequantize=node.op not in ("conv2d", "dense")) if node.weight_shapes else {})
            if node.weight_shapes and self.release is not None:
                self.release()
            if self.pending is not None:
                before = self.w.operators[-1].outputs[0]
                self.w.operator(_ACTIVATION_OPS[node.attrs["activation"]], [before], [self.pending])
        return self.w.finish([self.index[t] for t in g.inputs], [self.index[t] for t in g.outputs])

    # --- helpers -----------------------------------------------------------------------------------
    def _in(self, i: int = 0) -> int:
        return self.index[self.node.inputs[i]]

    def _out(self, fusable: bool = True) -> int:
        """The output tensor of the node's main operator: an intermediate when an activation op follows."""
        t = self.node.outputs[0]
        self.index[t] = self.w.tensor(t, self.g.shapes[t], dynamic_batch=True, **self._qargs(t))
        act = self.node.attrs.get("activation")
        if act in _UNFUSED or (not fusable and act in _ACTIVATION_OPS):
            if self.node.attrs.get("quantized"):
                raise PisplitError(f"model {self.g.name}: node {self.node.name}: an int8 {self.node.op} with activation {act!r} "
                                   "has no TFLite form")
            self.pending = self.index[t]
            return self.w.tensor(f"{t}/before_activation", self.g.shapes[t], dynamic_batch=True)
        return self.index[t]

    # --- int8 graphs ---------------------------------------------------------------------------------
    def _qparams(self, q, dim: int = 0):
        p = self.w.S.QuantizationParametersT()
        p.scale = [float(s) for s in q.scale]
        p.zeroPoint = [int(z) for z in (q.zero_point if len(q.zero_point) == len(q.scale) else q.zero_point * len(q.scale))]
        p.quantizedDimension = int(dim)
        return p

    def _qargs(self, tensor: str) -> dict:
        """dtype and quantization of a graph tensor: its int8 quantization, or nothing (float32)."""
        q = self.g.quant.get(tensor)
        if q is None:
            return {}
        if q.dtype != "int8":
            raise PisplitError(f"model {self.g.name}: tensor {tensor!r} is {q.dtype}; the litert engine runs int8 and float tensors only "
                               "(an int8 split's int32 partial sums run on the numpy engine)")
        return {"dtype": "INT8", "quantization": self._qparams(q)}

    def _wconst(self, suffix: str, value: np.ndarray, param: str, dim: int) -> int:
        """A weight of the current node as written: integers with their quantization (per channel on
        TFLite dimension `dim`) when the graph quantizes it, else float32."""
        key = self.node.weight_key(param)
        q = self.g.quant.get(key)
        if q is None:
            return self._const(suffix, value)
        value = np.asarray(value)
        return self.w.tensor(f"{self.node.name}/{suffix}", value.shape, value, quantization=self._qparams(q, dim))

    def _qbias(self, cout: int, w: dict) -> int:
        """An int8 layer's int32 bias; a missing one is zeros at input_scale * filter_scale, as TFLite's."""
        if "bias" in w:
            return self._wconst("bias", w["bias"], "bias", 0)
        in_scale = self.g.quant[self.node.inputs[0]].scale[0]
        ws = np.broadcast_to(np.asarray(self.g.quant[self.node.weight_key("kernel")].scale, np.float64), (cout,))
        from .quant import TensorQuant

        q = TensorQuant("int32", tuple(float(np.float32(in_scale * s)) for s in ws), (0,) * cout, 0)
        return self.w.tensor(f"{self.node.name}/bias", (cout,), np.zeros(cout, np.int32), quantization=self._qparams(q))

    def _check_hybrid_part(self, node) -> None:
        """A dynamic-range layer in a part of a split that feeds it less than the layer's whole input (rows,
        input channels): LiteRT's hybrid kernel would quantize that part on its own range, so the part
        could not equal the unsplit layer; likewise a conv-channel part of a depthwise one (its own channels'
        range). Refused, naming the node (partitioners.split_quant and splits.legal_kinds keep such parts out
        of plans)."""
        kind = str((self.g.meta.get("split") or {}).get("kind", ""))
        hybrid = not node.attrs.get("quantized") and node.weight_key("kernel") in self.g.quant
        if not hybrid:
            return
        if kind in ("fc-input", "conv-filter", "conv-spatial", "fused-tiles"):
            raise PisplitError(f"model {self.g.name}: node {node.name} is a dynamic-range layer (int8 weights, float activations); "
                               f"LiteRT's hybrid kernels quantize each {kind} part's input on its own range, so a part cannot equal "
                               "the unsplit layer: split it by output channels (conv-channel, fc-output) or use the numpy engine")
        depthwise = int(node.attrs.get("groups", 1)) > 1 and node.weight_shapes["kernel"][-2] == 1
        if kind == "conv-channel" and depthwise:  # as qkernels.run_hybrid and splits.legal_kinds refuse it
            raise PisplitError(f"model {self.g.name}: node {node.name} is a dynamic-range depthwise layer (int8 weights, float "
                               "activations); LiteRT's hybrid depthwise kernel quantizes the whole input at once, so a conv-channel "
                               "part, which quantizes only its own channels, cannot equal the unsplit layer: leave the layer unsplit "
                               "(or data-parallel)")

    def _check_not_partial(self, node) -> None:
        if node.attrs.get("partial"):
            raise PisplitError(f"model {self.g.name}: node {node.name} makes int32 partial sums (an int8 conv-filter / fc-input part), "
                               "which have no TFLite form; use the numpy engine")

    def _quantize(self, node, w):
        self.w.operator("QUANTIZE", [self._in()], [self._out()])

    def _dequantize(self, node, w):
        self.w.operator("DEQUANTIZE", [self._in()], [self._out()])

    def _const(self, suffix: str, value, dtype=np.float32) -> int:
        value = np.asarray(value, dtype=dtype)
        return self.w.tensor(f"{self.node.name}/{suffix}", value.shape, value)

    def _act(self) -> int:
        act = self.node.attrs.get("activation")
        act = None if act in ("linear", *_UNFUSED) else act
        if act not in ACTIVATION_CODES:
            raise PisplitError(f"model {self.g.name}: node {self.node.name}: activation {act!r} has no fused TFLite form")
        return ACTIVATION_CODES[act]

    def _unary(self, op: str, options=None) -> None:
        self.w.operator(op, [self._in()], [self._out()], options)

    def _padding_code(self, in_shape, kernel, strides, dilation, padding, allow_pad_op: bool):
        """(TFLite padding code, input tensor): explicit pads that are neither SAME nor VALID become a PAD op."""
        S = self.w.S
        spatial = in_shape[1:-1]
        pads = resolve_padding(spatial, kernel, strides, dilation, padding)
        if pads == resolve_padding(spatial, kernel, strides, dilation, "valid"):
            return S.Padding.VALID, self._in()
        if pads == resolve_padding(spatial, kernel, strides, dilation, "same"):
            return S.Padding.SAME, self._in()
        if not allow_pad_op:
            raise PisplitError(f"model {self.g.name}: node {self.node.name}: explicit padding {pads} has no TFLite pooling form")
        padded = [in_shape[0], *(s + a + b for s, (a, b) in zip(spatial, pads)), in_shape[-1]]
        t = self.w.tensor(f"{self.node.name}/pad", padded, dynamic_batch=True, **self._qargs(self.node.inputs[0]))
        self.w.operator("PAD", [self._in(), self._const("paddings", [[0, 0], *pads, [0, 0]], np.int32)], [t])
        return S.Padding.VALID, t

    # --- ops ---------------------------------------------------------------------------------------
    def _conv2d(self, node, w):
        kernel = w["kernel"]
        kh, kw, cin_g, cout = kernel.shape
        a = node.attrs
        cin = self.g.shapes[node.inputs[0]][-1]
        groups = int(a.get("groups", 1))
        strides = list(a.get("strides") or (1, 1))
        dilation = list(a.get("dilation") or (1, 1))
        self._check_not_partial(node)
        self._check_hybrid_part(node)
        pad_code, x = self._padding_code(self.g.shapes[node.inputs[0]], (kh, kw), strides, dilation, a.get("padding", "valid"), True)
        bias = w.get("bias", np.zeros(cout, np.float32))
        quantized = bool(a.get("quantized"))
        if groups > 1 and cin_g == 1:
            filt = self._wconst("filter", kernel.reshape(1, kh, kw, cout), "kernel", 3)
            opts = self.w.options("DepthwiseConv2DOptions", padding=pad_code, strideH=strides[0], strideW=strides[1],
                                  depthMultiplier=cout // cin, dilationHFactor=dilation[0], dilationWFactor=dilation[1],
                                  fusedActivationFunction=self._act())
            b = self._qbias(cout, w) if quantized else self._const("bias", bias)
            self.w.operator("DEPTHWISE_CONV_2D", [x, filt, b], [self._out()], opts)
            return
        opts = dict(padding=pad_code, strideH=strides[0], strideW=strides[1], dilationHFactor=dilation[0], dilationWFactor=dilation[1])
        if groups == 1:
            filt = self._wconst("filter", np.ascontiguousarray(kernel.transpose(3, 0, 1, 2)), "kernel", 0)  # HWIO -> OHWI
            b = self._qbias(cout, w) if quantized else self._const("bias", bias)
            self.w.operator("CONV_2D", [x, filt, b], [self._out()],
                            self.w.options("Conv2DOptions", fusedActivationFunction=self._act(), **opts))
            return
        if quantized:
            raise PisplitError(f"model {self.g.name}: node {node.name}: grouped int8 convolutions have no TFLite form here")
        if node.weight_key("kernel") in self.g.quant:  # a dynamic-range grouped filter: its reals, per group below
            from .quant import dequantize

            kernel = dequantize(kernel, self.g.quant[node.weight_key("kernel")])
        # Grouped convolution: one CONV_2D per group on a SLICE of the channels, concatenated; the
        # (clamping) activation is fused into each group's convolution.
        out_shape = self.g.shapes[node.outputs[0]]
        in_shape = self.g.shapes[node.inputs[0]]
        cout_g = cout // groups
        slices = []
        for gi in range(groups):
            part_in = self.w.tensor(f"{node.name}/group{gi}/input", [*in_shape[:-1], cin_g], dynamic_batch=True)
            begin = self._const(f"group{gi}/begin", [0, 0, 0, gi * cin_g], np.int32)
            size = self._const(f"group{gi}/size", [-1, -1, -1, cin_g], np.int32)
            self.w.operator("SLICE", [x, begin, size], [part_in])
            part_out = self.w.tensor(f"{node.name}/group{gi}", [*out_shape[:-1], cout_g], dynamic_batch=True)
            filt = self._const(f"group{gi}/filter", kernel[..., gi * cout_g:(gi + 1) * cout_g].transpose(3, 0, 1, 2))
            self.w.operator("CONV_2D", [part_in, filt, self._const(f"group{gi}/bias", bias[gi * cout_g:(gi + 1) * cout_g])], [part_out],
                            self.w.options("Conv2DOptions", fusedActivationFunction=self._act(), **opts))
            slices.append(part_out)
        self.w.operator("CONCATENATION", slices, [self._out()], self.w.options("ConcatenationOptions", axis=3))

    def _dense(self, node, w):
        kernel = w["kernel"]
        cin, cout = kernel.shape
        self._check_not_partial(node)
        self._check_hybrid_part(node)
        weights = self._wconst("weights", np.ascontiguousarray(kernel.T), "kernel", 0)  # (Cin, Cout) -> (Cout, Cin)
        bias = self._qbias(cout, w) if node.attrs.get("quantized") else self._const("bias", w.get("bias", np.zeros(cout, np.float32)))
        opts = self.w.options("FullyConnectedOptions", fusedActivationFunction=self._act(),
                              keepNumDims=len(self.g.shapes[node.inputs[0]]) > 2,
                              asymmetricQuantizeInputs=bool(node.attrs.get("asymmetric_inputs")))
        self.w.operator("FULLY_CONNECTED", [self._in(), weights, bias], [self._out()], opts)

    def _pool(self, node, op):
        a = node.attrs
        pool = list(a["pool"])
        strides = list(a.get("strides") or pool)
        if len(pool) != 2:
            raise PisplitError(f"model {self.g.name}: node {node.name} ({node.op}) has no TFLite equivalent; use the numpy engine")
        pad_code, x = self._padding_code(self.g.shapes[node.inputs[0]], pool, strides, (1, 1), a.get("padding", "valid"), False)
        opts = self.w.options("Pool2DOptions", padding=pad_code, strideH=strides[0], strideW=strides[1], filterHeight=pool[0],
                              filterWidth=pool[1], fusedActivationFunction=self._act())
        self.w.operator(op, [x], [self._out()], opts)

    def _max_pool2d(self, node, w):
        self._pool(node, "MAX_POOL_2D")

    def _avg_pool2d(self, node, w):
        self._pool(node, "AVERAGE_POOL_2D")

    def _mean_op(self, axes, keepdims):
        axes_t = self._const("axes", axes, np.int32)
        self.w.operator("MEAN", [self._in(), axes_t], [self._out()], self.w.options("ReducerOptions", keepDims=bool(keepdims)))

    def _global_avg_pool(self, node, w):
        rank = len(self.g.shapes[node.inputs[0]])
        self._mean_op(list(range(1, rank - 1)), node.attrs.get("keepdims", False))

    def _mean(self, node, w):
        rank = len(self.g.shapes[node.inputs[0]])
        self._mean_op(sorted({int(a) % rank for a in node.attrs["axes"]}), node.attrs.get("keepdims", False))

    def _batch_norm(self, node, w):
        scale, shift = batch_norm_scale_shift(w["gamma"], w["beta"], w["mean"], w["var"], node.attrs.get("epsilon", 1e-3))
        scaled = self.w.tensor(f"{node.name}/scaled", self.g.shapes[node.outputs[0]], dynamic_batch=True)
        self.w.operator("MUL", [self._in(), self._const("scale", scale)], [scaled], self.w.options("MulOptions"))
        self.w.operator("ADD", [scaled, self._const("shift", shift)], [self._out()],
                        self.w.options("AddOptions", fusedActivationFunction=self._act()))

    def _relu(self, node, w):
        self._unary("RELU")

    def _relu6(self, node, w):
        self._unary("RELU6")

    def _sigmoid(self, node, w):
        self._unary("LOGISTIC")

    def _tanh(self, node, w):
        self._unary("TANH")

    def _hard_swish(self, node, w):
        self._unary("HARD_SWISH")

    def _leaky_relu(self, node, w):
        self._unary("LEAKY_RELU", self.w.options("LeakyReluOptions", alpha=float(node.attrs.get("alpha", 0.2))))

    def _prelu(self, node, w):
        self.w.operator("PRELU", [self._in(), self._const("alpha", w["alpha"])], [self._out()])

    def _softmax(self, node, w):
        rank = len(self.g.shapes[node.inputs[0]])
        if int(node.attrs.get("axis", -1)) % rank != rank - 1:
            raise PisplitError(f"model {self.g.name}: node {node.name}: TFLite SOFTMAX works on the last axis only")
        self._unary("SOFTMAX", self.w.options("SoftmaxOptions", beta=float(node.attrs.get("beta", 1.0))))

    def _lrn(self, node, w):
        a = node.attrs
        self._unary("LOCAL_RESPONSE_NORMALIZATION", self.w.options(
            "LocalResponseNormalizationOptions", radius=int(a.get("depth_radius", 5)), bias=float(a.get("bias", 1.0)),
            alpha=float(a.get("alpha", 1.0)), beta=float(a.get("beta", 0.5))))

    def _dropout(self, node, w):
        self.index[node.outputs[0]] = self._in()  # identity at inference: the output is the input tensor

    def _reshape_to(self, shape) -> None:
        shape = [-1, *[int(s) for s in shape]]
        self.w.operator("RESHAPE", [self._in(), self._const("shape", shape, np.int32)], [self._out()],
                        self.w.options("ReshapeOptions", newShape=shape))

    def _flatten(self, node, w):
        if self.flatten_into_dense and self._only_dense_reads(node):
            # FULLY_CONNECTED flattens its input to (frames, Cin) itself: the dense layers read the flatten's
            # input and no RESHAPE is written (export_tflite's flatten_into_dense)
            self.index[node.outputs[0]] = self._in()
            return
        self._reshape_to([numel(self.g.shapes[node.inputs[0]][1:])])

    def _only_dense_reads(self, node) -> bool:
        """True when every reader of the flatten's output is a dense layer, the output is no graph output,
        and it carries its input's quantization (or neither has one)."""
        if self.readers is None:
            self.readers = {}
            for n in self.g.nodes:
                for t in n.inputs:
                    self.readers.setdefault(t, []).append(n)
        out = node.outputs[0]
        readers = self.readers.get(out, [])
        return (bool(readers) and all(n.op == "dense" for n in readers) and out not in self.g.outputs
                and self.g.quant.get(out) == self.g.quant.get(node.inputs[0]))

    def _reshape(self, node, w):
        if node.attrs.get("batch1"):  # moves the batch axis: the whole shape of one frame
            shape = [int(s) for s in node.attrs["full_shape"]]
            self.w.operator("RESHAPE", [self._in(), self._const("shape", shape, np.int32)], [self._out()],
                            self.w.options("ReshapeOptions", newShape=shape))
            return
        self._reshape_to(self.g.shapes[node.outputs[0]][1:])

    def _pad(self, node, w):
        pads = self._const("paddings", node.attrs["paddings"], np.int32)
        value = float(node.attrs.get("value", 0.0))
        if node.attrs.get("quantized"):  # int8: PAD pads with the zero point (real 0), PADV2 with its int8 value
            q = self.g.quant[node.outputs[0]]
            qvalue = int(node.attrs.get("qvalue", q.zero_point[0]))
            if qvalue == q.zero_point[0]:
                self.w.operator("PAD", [self._in(), pads], [self._out()], self.w.options("PadOptions"))
            else:
                v = self.w.tensor(f"{node.name}/value", (1,), np.array([qvalue], np.int8), quantization=self._qparams(q))
                self.w.operator("PADV2", [self._in(), pads, v], [self._out()], self.w.options("PadV2Options"))
            return
        if value == 0.0:
            self.w.operator("PAD", [self._in(), pads], [self._out()], self.w.options("PadOptions"))
        else:
            self.w.operator("PADV2", [self._in(), pads, self._const("value", [value])], [self._out()], self.w.options("PadV2Options"))

    def _elementwise(self, node, w, op: str, options: str):
        operands = [self.index[t] for t in node.inputs]
        if "constant" in w:
            c = self._wconst("constant", w["constant"], "constant", 0)
            operands = [c, *operands] if node.attrs.get("constant_first") else [*operands, c]
        acc = operands[0]
        for k, b in enumerate(operands[1:], start=1):
            last = k == len(operands) - 1
            out = self._out() if last else self.w.tensor(f"{node.name}/partial{k}", self.g.shapes[node.outputs[0]], dynamic_batch=True)
            self.w.operator(op, [acc, b], [out], self.w.options(options, fusedActivationFunction=self._act() if last else 0))
            acc = out

    def _add(self, node, w):
        self._elementwise(node, w, "ADD", "AddOptions")

    def _mul(self, node, w):
        self._elementwise(node, w, "MUL", "MulOptions")

    def _sub(self, node, w):
        self._elementwise(node, w, "SUB", "SubOptions")

    def _concat(self, node, w):
        rank = len(self.g.shapes[node.outputs[0]])
        opts = self.w.options("ConcatenationOptions", axis=int(node.attrs.get("axis", -1)) % rank)
        self.w.operator("CONCATENATION", [self.index[t] for t in node.inputs], [self._out(fusable=False)], opts)

    def _conv2d_transpose(self, node, w):
        """TRANSPOSE_CONV (filter OHWI, bias, a separate activation op); its output shape is the
        input's batch (SHAPE, STRIDED_SLICE) beside the node's output size, so the interpreter resizes
        to any batch as the other ops do."""
        kernel = w["kernel"]
        kh, kw, cin, cout = kernel.shape
        a = node.attrs
        strides = [int(v) for v in a["strides"]]
        oh, ow = (int(v) for v in a["output_size"])
        padding = {"same": self.w.S.Padding.SAME, "valid": self.w.S.Padding.VALID}.get(a.get("padding", "same"))
        if padding is None:
            raise PisplitError(f"model {self.g.name}: node {node.name}: padding {a.get('padding')!r} has no TRANSPOSE_CONV form")
        x = self._in()
        if a.get("quantized") and a.get("shape_constant"):
            # the file's constant output shape, as read (LiteRT hands such an int8 layer to XNNPACK, a computed
            # one to its own kernel, which round differently: layers.qkernels.qconv2d_transpose)
            out_shape = self._const("output_shape", [int(v) for v in self.g.shapes[node.outputs[0]]], np.int32)
        else:
            shape = self.w.tensor(f"{node.name}/input_shape", [4], dtype="INT32")
            self.w.operator("SHAPE", [x], [shape], self.w.options("ShapeOptions", outType=self.w.S.TensorType.INT32))
            batch = self.w.tensor(f"{node.name}/batch", [1], dtype="INT32")
            self.w.operator("STRIDED_SLICE", [shape, self._const("begin", [0], np.int32), self._const("end", [1], np.int32),
                                              self._const("step", [1], np.int32)], [batch], self.w.options("StridedSliceOptions"))
            out_shape = self.w.tensor(f"{node.name}/output_shape", [4], dtype="INT32")
            self.w.operator("CONCATENATION", [batch, self._const("size", [oh, ow, cout], np.int32)], [out_shape],
                            self.w.options("ConcatenationOptions", axis=0))
        if a.get("quantized"):  # int8: the filter's integers per channel on O, an int32 bias (layers.qkernels.qconv2d_transpose)
            filt = self._wconst("filter", np.ascontiguousarray(kernel.transpose(3, 0, 1, 2)), "kernel", 0)
        else:
            filt = self._const("filter", np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 0, 1, 2)))  # HWIO -> OHWI
        inputs = [out_shape, filt, x]
        if "bias" in w:
            inputs.append(self._wconst("bias", w["bias"], "bias", 0) if a.get("quantized") else self._const("bias", w["bias"]))
        if a.get("quantized"):  # int8: the activation fused, as the converter writes it (an int8 RELU op would requantize)
            opts = self.w.options("TransposeConvOptions", padding=padding, strideH=strides[0], strideW=strides[1],
                                  fusedActivationFunction=self._act())
            self.w.operator("TRANSPOSE_CONV", inputs, [self._out()], opts)
            return
        opts = self.w.options("TransposeConvOptions", padding=padding, strideH=strides[0], strideW=strides[1])
        self.w.operator("TRANSPOSE_CONV", inputs, [self._out(fusable=False)], opts)

    def _tile(self, node, w):
        """TILE, the batch axis once (multiples per non-batch axis, as the graph holds them)."""
        multiples = [1, *[int(v) for v in node.attrs["multiples"]]]
        # XNNPACK's CONCATENATION takes 2 to 5 inputs; an int8 one copies integers only at one quantization
        if self.tile_as_concat and max(multiples) <= 5 and self.g.quant.get(node.inputs[0]) == self.g.quant.get(node.outputs[0]):
            shape = list(self.g.shapes[node.inputs[0]])
            t = self._in()
            last = max(d for d, m in enumerate(multiples) if m > 1) if max(multiples) > 1 else -1
            if last < 0:
                self.w.operator("RESHAPE", [t, self._const("shape", [-1, *shape[1:]], np.int32)], [self._out()],
                                self.w.options("ReshapeOptions", newShape=[-1, *shape[1:]]))
                return
            for d, m in enumerate(multiples):
                if m == 1:
                    continue
                shape[d] *= m
                out = self._out() if d == last else self.w.tensor(f"{node.name}/tiled{d}", shape, dynamic_batch=True,
                                                                   **self._qargs(node.outputs[0]))
                self.w.operator("CONCATENATION", [t] * m, [out], self.w.options("ConcatenationOptions", axis=d))
                t = out
            return
        self.w.operator("TILE", [self._in(), self._const("multiples", multiples, np.int32)], [self._out()], self.w.options("TileOptions"))

    def _depth_to_space(self, node, w):
        self.w.operator("DEPTH_TO_SPACE", [self._in()], [self._out()],
                        self.w.options("DepthToSpaceOptions", blockSize=int(node.attrs["block"])))

    def _transpose(self, node, w):
        self.w.operator("TRANSPOSE", [self._in(), self._const("perm", node.attrs["perm"], np.int32)], [self._out()],
                        self.w.options("TransposeOptions"))

    def _resize(self, node, op: str, options: str):
        a = node.attrs
        opts = self.w.options(options, alignCorners=bool(a.get("align_corners")), halfPixelCenters=bool(a.get("half_pixel_centers")))
        self.w.operator(op, [self._in(), self._const("size", a["size"], np.int32)], [self._out()], opts)

    def _resize_bilinear(self, node, w):
        self._resize(node, "RESIZE_BILINEAR", "ResizeBilinearOptions")

    def _resize_nearest(self, node, w):
        self._resize(node, "RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions")

    # --- transformers and sequence models (issue 19) ---------------------------------------------------
    def _constant(self, node, w):
        self.index[node.outputs[0]] = self._const("value", w["value"])  # a constant tensor, no operator

    def _batch_matmul(self, node, w):
        opts = self.w.options("BatchMatMulOptions", adjX=bool(node.attrs.get("adj_x")), adjY=bool(node.attrs.get("adj_y")))
        self.w.operator("BATCH_MATMUL", [self._in(0), self._in(1)], [self._out()], opts)

    def _gelu(self, node, w):
        self._unary("GELU", self.w.options("GeluOptions", approximate=bool(node.attrs.get("approximate"))))

    def _rsqrt(self, node, w):
        self._unary("RSQRT")

    def _binary_operands(self, node, w) -> list:
        operands = [self.index[t] for t in node.inputs]
        if "constant" in w:
            c = self._const("constant", w["constant"])
            operands = [c, *operands] if node.attrs.get("constant_first") else [*operands, c]
        return operands

    def _squared_difference(self, node, w):
        self.w.operator("SQUARED_DIFFERENCE", self._binary_operands(node, w), [self._out()])

    def _compare(self, node, w, op: str):
        """EQUAL / NOT_EQUAL write BOOL; pisplit's tensors are float32 0/1, so a CAST follows."""
        flag = self.w.tensor(f"{node.name}/bool", self.g.shapes[node.outputs[0]], dtype="BOOL", dynamic_batch=True)
        self.w.operator(op, self._binary_operands(node, w), [flag])
        self.w.operator("CAST", [flag], [self._out()])

    def _equal(self, node, w):
        self._compare(node, w, "EQUAL")

    def _not_equal(self, node, w):
        self._compare(node, w, "NOT_EQUAL")

    def _select(self, node, w):
        cond = self.w.tensor(f"{node.name}/condition", self.g.shapes[node.inputs[0]], dtype="BOOL", dynamic_batch=True)
        self.w.operator("NOT_EQUAL", [self._in(0), self._const("zero", 0.0)], [cond])
        self.w.operator("SELECT_V2", [cond, self._in(1), self._in(2)], [self._out()])

    def _strided_slice(self, node, w):
        a = node.attrs
        in_shape = self.g.shapes[node.inputs[0]]
        starts, steps, counts = list(a["starts"]), list(a["steps"]), list(a["counts"])
        if not a.get("batch1"):
            starts, steps, counts = [0, *starts], [1, *steps], [in_shape[0], *counts]
        ends = [s + st * c for s, st, c in zip(starts, steps, counts)]
        end_mask = sum(1 << d for d, e in enumerate(ends) if e < 0)  # a negative step down to index 0
        if not a.get("batch1"):
            end_mask |= 1  # the whole batch axis, whatever its size
        sliced_shape = [in_shape[0] if not a.get("batch1") and d == 0 else c for d, c in enumerate(counts)]
        out_shape = self.g.shapes[node.outputs[0]]
        same = tuple(sliced_shape) == tuple(out_shape)
        t = self._out() if same else self.w.tensor(f"{node.name}/sliced", sliced_shape, dynamic_batch=True)
        self.w.operator("STRIDED_SLICE", [self._in(), self._const("begin", starts, np.int32), self._const("end", [max(e, 0) for e in ends], np.int32),
                                          self._const("strides", steps, np.int32)], [t], self.w.options("StridedSliceOptions", endMask=end_mask))
        if not same:
            shape = list(out_shape) if a.get("batch1") else [-1, *out_shape[1:]]
            self.w.operator("RESHAPE", [t, self._const("shape", shape, np.int32)], [self._out()], self.w.options("ReshapeOptions", newShape=shape))

    def _layer_norm(self, node, w):
        """MEAN, SQUARED_DIFFERENCE, MEAN, ADD eps, RSQRT, SUB, MUL, MUL gamma, ADD beta (as converters write it)."""
        shape = self.g.shapes[node.outputs[0]]
        keep = [*shape[:-1], 1]
        rank = len(shape)
        t = lambda suffix, s: self.w.tensor(f"{node.name}/{suffix}", s, dynamic_batch=True)  # noqa: E731
        axis = self._const("axis", [rank - 1], np.int32)
        mu, sq, var, ve, inv, d, y, yg = t("mean", keep), t("sq", shape), t("var", keep), t("var_eps", keep), t("rsqrt", keep), \
            t("centred", shape), t("normed", shape), t("scaled", shape)
        self.w.operator("MEAN", [self._in(), axis], [mu], self.w.options("ReducerOptions", keepDims=True))
        self.w.operator("SQUARED_DIFFERENCE", [self._in(), mu], [sq])
        self.w.operator("MEAN", [sq, axis], [var], self.w.options("ReducerOptions", keepDims=True))
        self.w.operator("ADD", [var, self._const("epsilon", float(node.attrs.get("epsilon", 1e-6)))], [ve], self.w.options("AddOptions"))
        self.w.operator("RSQRT", [ve], [inv])
        self.w.operator("SUB", [self._in(), mu], [d], self.w.options("SubOptions"))
        self.w.operator("MUL", [d, inv], [y], self.w.options("MulOptions"))
        self.w.operator("MUL", [y, self._const("gamma", w["gamma"])], [yg], self.w.options("MulOptions"))
        self.w.operator("ADD", [yg, self._const("beta", w["beta"])], [self._out()], self.w.options("AddOptions"))
