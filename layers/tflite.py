"""Read a .tflite file into a Graph: ops, op options, float32/float16/int8-quantized weights, several outputs.

The file is parsed with the flatbuffer schema module shipped with ai-edge-litert and memory-mapped, so
weights are read (and transposed to pisplit's layouts) only when a node asks for them. Layouts:
TFLite CONV_2D filters are OHWI and DEPTHWISE_CONV_2D filters (1, KH, KW, Cin*M); pisplit kernels are
HWIO (KH, KW, Cin/groups, Cout) with depthwise = groups == Cin; FULLY_CONNECTED weights (Cout, Cin)
become a dense kernel (Cin, Cout). Tensor names are kept: node names are their output tensor's name.

Quantized constants: an integer tensor with quantization scales is only ever read with them. Weights
behind DEQUANTIZE (float16, or int8 with scales) become float32 weights, (q - zero_point) * scale per
channel along the quantized dimension, in the tensor's own layout before any transpose
(`_constant_loader`); integers without scales are never taken as float weights. Dynamic-range layers
(symmetric int8 filters read directly by CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED on float
activations) keep their int8 filters, transposed to pisplit's layout, with their per-channel scales in
graph.meta["quant"] (the quantized axis renumbered): the litert engine writes them back as the same
hybrid layers (layers.tflite_export), so LiteRT runs its hybrid kernels as on the original file, and
Graph.node_weights hands a float node's int8 filter out only dequantized (layers.quant.dequantize). The
numpy engine then runs float arithmetic: LiteRT's hybrid kernels also quantize each activation to
int8 on the fly, which pisplit does not emulate (see tests/layers/test_tflite_quantized.py for the
error this leaves). Full-integer int8 models run on integer kernels (layers.qkernels).

Converter patterns (issue 12): shape arithmetic is folded at import on static shapes with batch 1
(SHAPE of any tensor, and STRIDED_SLICE, PACK, GATHER, CONCATENATION, ... whose inputs are all constants:
FOLDED_OPS), so the SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE chains the converter writes for a dynamic
batch leave no node; a tensor whose shape signature leaves a non-batch dimension open takes the shape
pisplit infers for it. Sparse constants (TFLite SparsityParameters, dense and CSR levels, blocks) are
read dense, so DENSIFY is a constant. Scalar constants keep their shape ().

Every problem with the file (not a .tflite, truncated, corrupt, quantized activations, an op pisplit
lacks) is a PisplitError naming the file and, for ops, the operator index, op and output tensor. The
file is only parsed in Python here, never handed to the LiteRT interpreter, which may crash on
malformed files.
"""
from __future__ import annotations

import logging
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import PisplitError
from .graph import Graph, Node
from .ops import numel
from .weights import OverlayWeights

log = logging.getLogger(__name__)

FILE_IDENTIFIER = b"TFL3"

# TFLite ActivationFunctionType -> pisplit fused activation name. TFLite kernels clamp for these three
# only and silently ignore a fused TANH or SIGN_BIT, so those are refused rather than guessed.
ACTIVATION_NAMES = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6"}
ACTIVATION_CODES = {name: code for code, name in ACTIVATION_NAMES.items()}

SUPPORTED_OPS = (
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DENSIFY", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
    "EXPAND_DIMS", "FULLY_CONNECTED", "HARD_SWISH", "LEAKY_RELU", "LOCAL_RESPONSE_NORMALIZATION", "LOGISTIC", "MAX_POOL_2D",
    "MEAN", "MUL", "PAD", "PADV2", "PRELU", "QUANTIZE", "RELU", "RELU6", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "SHAPE", "SOFTMAX", "SPACE_TO_BATCH_ND", "SQUEEZE", "STRIDED_SLICE", "SUB", "TANH", "TILE",
    "TRANSPOSE", "TRANSPOSE_CONV",
    # transformers and sequence models (issue 19)
    "BATCH_MATMUL", "EQUAL", "GELU", "NOT_EQUAL", "RSQRT", "SELECT", "SELECT_V2", "SLICE", "SQUARED_DIFFERENCE",
)
# ops that may read a tensor inside SPACE_TO_BATCH_ND ... BATCH_TO_SPACE_ND (TensorFlow's dilated convolution,
# e.g. a dilated Conv1D), which pisplit imports as one dilated convolution
_DILATED_PATTERN_OPS = ("EXPAND_DIMS", "CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "SQUEEZE", "BATCH_TO_SPACE_ND")
# Ops pisplit evaluates at import when every input is a constant (shape arithmetic the converter emits
# for a dynamic batch size: SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE, GATHER of constants, ...); they
# are not supported on computed tensors unless SUPPORTED_OPS lists them too. SHAPE of a computed tensor
# is its static shape with batch 1.
FOLDED_OPS = (
    "ADD", "CAST", "CONCATENATION", "DIV", "EXPAND_DIMS", "FILL", "FLOOR_DIV", "GATHER", "MAXIMUM", "MINIMUM", "MUL",
    "PACK", "RANGE", "REDUCE_PROD", "RESHAPE", "SHAPE", "SLICE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TILE",
    "TRANSPOSE", "UNPACK",
    "EQUAL", "NOT_EQUAL", "SELECT", "SELECT_V2", "LOGICAL_AND", "LOGICAL_OR", "LOGICAL_NOT", "LESS", "GREATER",
)

# How constant tensors are stored; integer types carry affine quantization when they have scales.
_STORAGE_DTYPES = {"BOOL": np.bool_, "FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8,
                   "UINT8": np.uint8, "INT16": np.int16}
_INTEGER_TYPES = ("INT32", "INT64", "INT8", "UINT8", "INT16")
# Activation types of quantized (full-integer) models, which pisplit does not run yet.
_QUANTIZED_ACTIVATION_TYPES = ("INT8", "UINT8", "INT16")
# pisplit's dtype names of quantized tensors (layers.quant)
_QUANT_DTYPE_NAMES = {"INT8": "int8", "UINT8": "uint8", "INT16": "int16", "INT32": "int32"}


@dataclass(frozen=True)
class _Quantization:
    """Affine quantization of one tensor: real = (q - zero_point) * scale, per channel along `axis`."""

    scale: np.ndarray       # float32, one or one per channel
    zero_point: np.ndarray  # int64, one or one per channel
    axis: int


# Errors the flatbuffer reader raises on out-of-range offsets and garbage: all mean "corrupt file".
_PARSE_ERRORS = (struct.error, IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError, AttributeError, KeyError,
                 MemoryError, ZeroDivisionError, RecursionError)


def schema_module():
    """The flatbuffer schema module of .tflite files (from ai-edge-litert); PisplitError if missing."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise PisplitError(".tflite files need the ai-edge-litert package (pip install ai-edge-litert)") from None
    return schema_py_generated


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def import_tflite(path: str | Path) -> Graph:
    """The model in the .tflite file `path` as a Graph with lazily read weights.

    Raises PisplitError for a missing, empty, truncated, corrupt or non-tflite file, quantized
    activations, or an op pisplit does not implement (naming the op, operator index and tensor).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            if size == 0:
                raise PisplitError(f"model file {path}: empty file, not a .tflite model")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise PisplitError(f"model file {path}: no such file") from None
    except IsADirectoryError:
        raise PisplitError(f"model file {path}: is a directory, not a .tflite file") from None
    except OSError as exc:
        raise PisplitError(f"model file {path}: cannot be read ({exc.strerror or exc})") from None
    return import_tflite_bytes(data, str(path), path.stem)


def import_tflite_bytes(data, source: str = "<bytes>", name: str = "model") -> Graph:
    """The model in .tflite flatbuffer `data` (bytes, mmap) as a Graph; `source` names it in errors."""
    if len(data) < 8 or bytes(data[4:8]) != FILE_IDENTIFIER:
        raise PisplitError(f"model file {source}: not a .tflite model (no {FILE_IDENTIFIER.decode()} file identifier)")
    try:
        return _Importer(data, source, name).build()
    except PisplitError:
        raise
    except _PARSE_ERRORS as exc:
        raise PisplitError(f"model file {source}: corrupt or truncated .tflite file ({type(exc).__name__}: {exc})") from None


class _Importer:
    """One pass over subgraph 0: constants are kept as lazy loaders, ops become pisplit nodes."""

    def __init__(self, data, source: str, name: str):
        self.S = schema_module()
        self.data = data
        self.source = source
        self.name = name
        self.op_names = _enum_names(self.S.BuiltinOperator)
        self.type_names = _enum_names(self.S.TensorType)
        self.model = self.S.Model.GetRootAs(data, 0)
        self.nodes: list[Node] = []
        self.loaders: dict[str, Callable[[], np.ndarray]] = {}
        self.constants: dict[int, Callable[[], np.ndarray]] = {}  # tensor index -> value (any dtype)
        # tensor index -> stored integers of a quantized constant: read only into an int8 node's weights,
        # which carry the constant's quantization with them (graph.meta["quant"])
        self.raw_constants: dict[int, Callable[[], np.ndarray]] = {}
        self.quant: dict[str, dict] = {}  # tensor name or weight key -> quantization (layers.quant.TensorQuant.to_dict)
        self.raw_bytes: dict[int, np.ndarray] = {}  # tensor index -> its stored bytes (a view of the file where it is mapped)
        # the memory-mapped file: the pages of a weight pisplit has copied (transposed, converted) are handed
        # back after the copy (_release_pages), so a rank does not hold a weight twice (file pages + copy)
        self.mapped = data if isinstance(data, mmap.mmap) else None
        self.mapped_base = np.frombuffer(data, np.uint8, 1).ctypes.data if self.mapped is not None and len(data) else 0

    # --- checks ------------------------------------------------------------------------------------
    def _fail(self, message: str):
        raise PisplitError(f"model file {self.source}: {message}")

    def _count(self, n: int, what: str) -> int:
        # each element of a vector of tables takes at least 4 bytes: a larger count is garbage
        if n < 0 or n * 4 > len(self.data):
            self._fail(f"corrupt .tflite file ({what} count {n} exceeds the file size)")
        return n

    # --- tensors -----------------------------------------------------------------------------------
    def _read_tensors(self, sg) -> None:
        n = self._count(sg.TensorsLength(), "tensor")
        self.tensor_names: list[str] = []
        self.tensor_shapes: list[tuple] = []
        self.dynamic: set[int] = set()  # tensors whose non-batch dimensions the file leaves open
        # tensors between SPACE_TO_BATCH_ND and BATCH_TO_SPACE_ND -> (pisplit tensor holding them un-batched,
        # its rank, {axis: block}, the conv seen yet, the tensor's file rank)
        self.pending: dict[int, dict] = {}
        self.tensor_types: list[str] = []
        self.quantization: list[_Quantization | None] = []
        seen: set[str] = set()
        n_buffers = self._count(self.model.BuffersLength(), "buffer")
        for i in range(n):
            t = sg.Tensors(i)
            name = (t.Name() or b"").decode("utf-8", errors="replace") or f"tensor_{i}"
            if name in seen:
                name = f"{name}_{i}"
            seen.add(name)
            self.tensor_names.append(name)
            shape = t.ShapeAsNumpy() if t.ShapeLength() else np.zeros(0, np.int32)
            self.tensor_shapes.append(tuple(int(v) for v in shape))
            signature = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else ()
            if any(int(v) < 0 for v in signature[1:]):
                # a dimension the converter left open: the file's shape holds 1 there, pisplit infers it
                self.dynamic.add(i)
            self.tensor_types.append(self.type_names.get(t.Type(), f"type {t.Type()}"))
            self.quantization.append(self._read_quantization(i, t))
            b = t.Buffer()
            if not 0 <= b < max(n_buffers, 1):
                self._fail(f"corrupt .tflite file (tensor {name!r} uses buffer {b} of {n_buffers})")
            raw = self._buffer_bytes(b) if b > 0 else None
            if raw is not None and t.Sparsity() is not None:
                raw = self._densify(i, t.Sparsity(), raw)  # DENSIFY reads it as the dense tensor
            if raw is not None:
                self.raw_bytes[i] = raw
                self.constants[i] = self._constant_loader(i, raw)
                if self.quantization[i] is not None:
                    dtype, shape = _STORAGE_DTYPES[self.tensor_types[i]], self.tensor_shapes[i]
                    self.raw_constants[i] = lambda raw=raw, dtype=dtype, shape=shape: np.frombuffer(raw, dtype=dtype).reshape(shape)

    def _densify(self, i: int, sparsity, raw: np.ndarray) -> np.ndarray:
        """The bytes of sparse constant tensor i written dense, as TFLite's FormatConverter::SparseToDense
        does it: dimensions in traversal order, each dense (every index) or CSR (array_segments of the
        previous level's position, array_indices), block dimensions last, mapped onto their dimensions
        by block_map. Values are the buffer's stored values in traversal order."""
        name, shape = self.tensor_names[i], self.tensor_shapes[i]
        dtype = _STORAGE_DTYPES.get(self.tensor_types[i])
        if dtype is None:
            self._fail(f"sparse constant tensor {name!r} has type {self.tensor_types[i]}, which pisplit cannot read")
        sp = self.S.SparsityParametersT.InitFromObj(sparsity)
        order = [int(v) for v in (sp.traversalOrder if sp.traversalOrder is not None else range(len(shape)))]
        block_map = [int(v) for v in (sp.blockMap if sp.blockMap is not None else [])]
        dims = sp.dimMetadata or []
        rank = len(shape)
        bad = lambda why: self._fail(f"corrupt .tflite file (sparse constant tensor {name!r}: {why})")  # noqa: E731
        if len(order) != rank + len(block_map) or sorted(order) != list(range(len(order))) or len(dims) != len(order) \
                or sorted(order[:rank]) != list(range(rank)) or any(not 0 <= d < rank for d in block_map):
            bad(f"traversal order {order}, block map {block_map} and {len(dims)} dimensions do not fit shape {shape}")
        block_sizes = [int(dims[rank + k].denseSize) for k in range(len(block_map))]
        prev = np.zeros(1, np.int64)
        idx: list[np.ndarray] = []
        for level, d in enumerate(dims):
            if d.format == self.S.DimensionType.DENSE:
                size = int(d.denseSize)
                if size < 0:
                    bad(f"dimension {level} has dense size {size}")
                idx = [np.repeat(a, size) for a in idx] + [np.tile(np.arange(size, dtype=np.int64), prev.size)]
                prev = (prev[:, None] * size + np.arange(size, dtype=np.int64)).ravel()
                continue
            if d.arraySegments is None or d.arrayIndices is None:
                bad(f"sparse dimension {level} has no segments or indices")
            seg = np.asarray(d.arraySegments.values, np.int64)
            ind = np.asarray(d.arrayIndices.values, np.int64)
            if seg.size == 0 or prev.max(initial=0) + 1 >= seg.size or np.any(np.diff(seg) < 0) or seg[0] < 0 or seg[-1] > ind.size:
                bad(f"sparse dimension {level} has segments that do not fit its {ind.size} indices")
            starts, counts = seg[prev], seg[prev + 1] - seg[prev]
            pos = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
            idx = [np.repeat(a, counts) for a in idx] + [ind[pos]]
            prev = pos
        values = np.frombuffer(raw, dtype=dtype)
        if values.size != prev.size or len(raw) != values.nbytes:
            bad(f"{len(raw)} bytes of values, the sparsity describes {prev.size} values")
        orig: list = [None] * rank
        for level in range(rank):
            orig[order[level]] = idx[level]
        for level in range(rank, len(order)):
            k = order[level] - rank
            orig[block_map[k]] = orig[block_map[k]] * block_sizes[k] + idx[level]
        for d in range(rank):
            if orig[d].size and (orig[d].min() < 0 or orig[d].max() >= shape[d]):
                bad(f"indices on dimension {d} fall outside shape {shape}")
        dense = np.zeros(shape, dtype)
        dense[tuple(orig)] = values
        return dense.reshape(-1).view(np.uint8)

    def _buffer_bytes(self, index: int):
        buf = self.model.Buffers(index)
        offset, size = int(buf.Offset()), int(buf.Size())
        if offset > 1:  # large models keep data after the flatbuffer, addressed from the file start
            if offset + size > len(self.data):
                self._fail(f"truncated .tflite file (buffer {index} ends at byte {offset + size}, the file has {len(self.data)})")
            return np.frombuffer(self.data, np.uint8, size, offset) if size else None
        if buf.DataIsNone() or buf.DataLength() == 0:
            return None
        return buf.DataAsNumpy()

    def _release_pages(self, i: int, value: np.ndarray) -> np.ndarray:
        """`value` (constant tensor i as pisplit holds it); when it is a copy, the file pages holding the
        tensor's bytes are handed back to the kernel (MADV_DONTNEED on whole pages inside them): they
        stay in the page cache and come back from the file if read again, but stop counting in the rank's
        memory, so a transposed or converted weight is not held twice."""
        raw = self.raw_bytes.get(i)
        if self.mapped is None or raw is None or not raw.size or np.shares_memory(value, raw):
            return value
        offset = raw.ctypes.data - self.mapped_base
        if not 0 <= offset <= len(self.mapped) - raw.size:
            return value  # a densified copy, not the file's bytes
        start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = (offset + raw.size) // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start and hasattr(self.mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self.mapped.madvise(mmap.MADV_DONTNEED, start, stop - start)
            except (OSError, ValueError):
                pass  # only memory is at stake, never the values
        return value

    def _constant_loader(self, i: int, raw: np.ndarray) -> Callable[[], np.ndarray]:
        """Loader of constant tensor i's value: quantized integers come back dequantized (float32),
        everything else as stored. The one place a constant's bytes become numbers."""
        dtype = _STORAGE_DTYPES.get(self.tensor_types[i])
        shape = self.tensor_shapes[i]
        name = self.tensor_names[i]
        if dtype is None:
            return lambda: self._fail(f"constant tensor {name!r} has type {self.tensor_types[i]}, which pisplit cannot read")
        expected = numel(shape) * np.dtype(dtype).itemsize
        if raw.size != expected:
            self._fail(f"corrupt .tflite file (constant tensor {name!r} of shape {shape} holds {raw.size} bytes, expected {expected})")
        quant = self.quantization[i]
        if quant is None:
            return lambda: np.frombuffer(raw, dtype=dtype).reshape(shape)
        return lambda: self._dequantize(np.frombuffer(raw, dtype=dtype).reshape(shape), quant)

    def _read_quantization(self, i: int, t) -> _Quantization | None:
        """The affine quantization of an integer tensor (None without scales), checked against its shape."""
        q = t.Quantization()
        if q is None or q.ScaleLength() == 0 or self.tensor_types[i] not in _INTEGER_TYPES:
            return None  # TFLite ignores quantization parameters on float tensors
        name, shape = self.tensor_names[i], self.tensor_shapes[i]
        if q.DetailsType() != 0:
            self._fail(f"tensor {name!r} uses custom quantization (details type {q.DetailsType()}), which pisplit cannot read")
        scale = q.ScaleAsNumpy().astype(np.float32)
        zero = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(1, np.int64)
        axis = int(q.QuantizedDimension())
        if scale.size > 1 and not (0 <= axis < len(shape) and shape[axis] == scale.size):
            self._fail(f"tensor {name!r} of shape {shape} has {scale.size} quantization scales for dimension {axis}")
        if zero.size not in (1, scale.size):
            self._fail(f"tensor {name!r} has {zero.size} zero points for {scale.size} quantization scales")
        info = np.iinfo(_STORAGE_DTYPES[self.tensor_types[i]])
        widest = max(abs(info.min - int(zero.max())), abs(info.max - int(zero.min())))  # largest |q - zero_point|
        if not np.all(np.isfinite(scale)) or float(np.abs(scale).max()) * widest >= float(np.finfo(np.float32).max):
            self._fail(f"tensor {name!r} has a quantization scale that is not finite or makes values overflow float32")
        return _Quantization(scale, zero, axis)

    @staticmethod
    def _dequantize(q: np.ndarray, quant: _Quantization) -> np.ndarray:
        """(q - zero_point) * scale as float32, per channel along the quantized dimension."""
        bshape = [1] * q.ndim
        if quant.scale.size > 1:
            bshape[quant.axis] = quant.scale.size
        zero = quant.zero_point.reshape(bshape if quant.zero_point.size > 1 else [1] * q.ndim)
        # float64 is exact for int8/int16 products, so the float32 result equals TFLite's float32 formula
        return ((q.astype(np.float64) - zero) * quant.scale.reshape(bshape)).astype(np.float32)

    def _const(self, i: int, what: str) -> np.ndarray:
        """The value of constant tensor i now (dequantized when it is quantized)."""
        if i not in self.constants:
            self._fail(f"{what}: tensor {self.tensor_names[i]!r} must be a constant")
        return self.constants[i]()

    def _ints(self, i: int, what: str) -> np.ndarray:
        """The integers of constant tensor i (shapes, axes, paddings, sizes): never a quantized tensor."""
        value = self._const(i, what)
        if self.quantization[i] is not None or not np.issubdtype(value.dtype, np.integer):
            self._fail(f"{what}: tensor {self.tensor_names[i]!r} ({self.tensor_types[i]}"
                       f"{', quantized' if self.quantization[i] is not None else ''}) must hold plain integers")
        return value

    def _float_loader(self, i: int, transform=None) -> Callable[[], np.ndarray]:
        """Loader of constant tensor i as float32 weights, `transform` applied after dequantization
        (so per-channel scales follow the tensor's own layout); integers without scales are refused."""
        if self.tensor_types[i] not in ("FLOAT32", "FLOAT16") and self.quantization[i] is None:
            self._fail(f"{self.where}: constant tensor {self.tensor_names[i]!r} is {self.tensor_types[i]} without quantization "
                       "scales; pisplit does not read integers as float weights")
        load = self.constants[i]

        def loader():
            arr = np.asarray(load(), dtype=np.float32)
            out = transform(arr) if transform else arr
            # np.ascontiguousarray makes a 0-d array 1-d: a scalar constant (Keras Rescaling) keeps its shape
            return self._release_pages(i, np.ascontiguousarray(out, dtype=np.float32).reshape(np.shape(out)))
        return loader

    # --- graph -------------------------------------------------------------------------------------
    def build(self) -> Graph:
        n_sub = self._count(self.model.SubgraphsLength(), "subgraph")
        if n_sub == 0:
            self._fail("the model has no subgraph")
        sg = self.model.Subgraphs(0)
        self._read_tensors(sg)
        self._check_activation_types()
        n_tensors = len(self.tensor_names)
        self.n_opcodes = self._count(self.model.OperatorCodesLength(), "operator code")

        inputs = {}
        for k in range(self._count(sg.InputsLength(), "input")):
            i = int(sg.Inputs(k))
            self._check_index(i, n_tensors, "a graph input")
            shape = self.tensor_shapes[i]
            self._check_activation(i, "graph input")
            if not shape or shape[0] != 1:
                self._fail(f"graph input {self.tensor_names[i]!r} has shape {shape}; pisplit needs a leading batch axis of 1")
            if i in self.dynamic:
                self._fail(f"graph input {self.tensor_names[i]!r} leaves dimensions after the batch open (shape signature "
                           f"{[int(v) for v in sg.Tensors(i).ShapeSignatureAsNumpy()]}); pisplit needs their sizes: convert "
                           "the model with a fixed input shape")
            inputs[self.tensor_names[i]] = shape
        if not inputs:
            self._fail("the model has no inputs")

        self.tensor_index = {name: i for i, name in enumerate(self.tensor_names)}
        self.shape_by_name = dict(inputs)
        for k in range(self._count(sg.OperatorsLength(), "operator")):
            self._convert(k, sg.Operators(k), n_tensors)

        outputs = []
        for k in range(self._count(sg.OutputsLength(), "output")):
            i = int(sg.Outputs(k))
            self._check_index(i, n_tensors, "a graph output")
            if i in self.constants:
                self._fail(f"graph output {self.tensor_names[i]!r} is a constant; pisplit needs computed outputs")
            if i in self.pending:
                self._fail(f"graph output {self.tensor_names[i]!r} is written inside SPACE_TO_BATCH_ND ... BATCH_TO_SPACE_ND, "
                           "which pisplit imports only as a whole dilated convolution")
            outputs.append(self.tensor_names[i])
        meta = {"source": "tflite", "file": self.source, "description": (self.model.Description() or b"").decode("utf-8", "replace")}
        if self.quant:
            for t in list(inputs) + outputs:
                i = self.tensor_names.index(t)
                if self.tensor_types[i] == "INT8":
                    self.quant[t] = self._quant_dict(i)
            meta["quant"] = self.quant
        graph = Graph(self.name, inputs, self.nodes, outputs, OverlayWeights({}, self.loaders), meta)
        self._check_shapes(graph)
        return graph

    def _check_activation_types(self) -> None:
        """Computed tensors are float32 or int8 with quantization scales (full-integer models); uint8 and
        int16 activations are refused with one clear error."""
        for i, kind in enumerate(self.tensor_types):
            if i in self.constants or kind not in _QUANTIZED_ACTIVATION_TYPES:
                continue
            if kind != "INT8":
                self._fail(f"tensor {self.tensor_names[i]!r} is {kind}: pisplit runs int8 quantized activations only "
                           "(and float32 ones with float32, float16 or int8 dynamic-range weights)")
            if self.quantization[i] is None:
                self._fail(f"tensor {self.tensor_names[i]!r} is INT8 without quantization scales; pisplit cannot give it a meaning")
            if self.quantization[i].scale.size != 1:
                self._fail(f"tensor {self.tensor_names[i]!r} is an INT8 activation quantized per channel, which TFLite's kernels do not take")

    def _quant_dict(self, i: int, axis: int | None = None) -> dict:
        """Tensor i's quantization as plain data (layers.quant), `axis` renumbered for a transposed weight."""
        q = self.quantization[i]
        return {"dtype": _QUANT_DTYPE_NAMES[self.tensor_types[i]], "scale": [float(v) for v in q.scale],
                "zero_point": [int(v) for v in q.zero_point], "axis": int(q.axis if axis is None else axis)}

    def _is_quantized(self, i: int) -> bool:
        return self.tensor_types[i] == "INT8" and self.quantization[i] is not None

    def _check_activation(self, i: int, what: str) -> None:
        # BOOL: what EQUAL / NOT_EQUAL make and SELECT reads; pisplit holds it as float32 0/1
        if self.tensor_types[i] not in ("FLOAT32", "BOOL") and not self._is_quantized(i):
            self._check_float(i, what)

    def _check_index(self, i: int, n: int, what: str) -> None:
        if not 0 <= i < n:
            self._fail(f"corrupt .tflite file ({what} refers to tensor {i} of {n})")

    def _check_float(self, i: int, what: str) -> None:
        if self.tensor_types[i] != "FLOAT32":
            self._fail(f"{what} {self.tensor_names[i]!r} is {self.tensor_types[i]}; pisplit runs float32 models only "
                       "(quantized models are not supported)")

    def _check_shapes(self, graph: Graph) -> None:
        index = {name: i for i, name in enumerate(self.tensor_names)}
        for node in graph.nodes:
            for t in node.outputs:
                i = index.get(t)
                if i is None or not self.tensor_shapes[i]:
                    continue
                got, want = graph.shapes[t], self.tensor_shapes[i]
                if tuple(got) != tuple(want):
                    self._fail(f"node {node.name!r} ({node.op}): pisplit computes shape {tuple(got)}, the file says {tuple(want)}")

    # --- operators ---------------------------------------------------------------------------------
    def _convert(self, k: int, op, n_tensors: int) -> None:
        code_index = op.OpcodeIndex()
        if not 0 <= code_index < self.n_opcodes:
            self._fail(f"corrupt .tflite file (operator {k} uses operator code {code_index} of {self.n_opcodes})")
        oc = self.model.OperatorCodes(code_index)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        op_name = self.op_names.get(code, f"builtin {code}")
        if op_name == "CUSTOM":
            op_name = f"CUSTOM {(oc.CustomCode() or b'').decode('utf-8', 'replace')!r}"
        ins = [int(v) for v in (op.InputsAsNumpy() if op.InputsLength() else [])]
        outs = [int(v) for v in (op.OutputsAsNumpy() if op.OutputsLength() else [])]
        for i in ins:
            if i != -1:
                self._check_index(i, n_tensors, f"operator {k} ({op_name})")
        for i in outs:
            self._check_index(i, n_tensors, f"operator {k} ({op_name})")
        where = f"operator {k} ({op_name}) writing tensor {self.tensor_names[outs[0]]!r}" if outs else f"operator {k} ({op_name})"
        self.where = where
        self.k = k
        if op_name in FOLDED_OPS and outs and (op_name == "SHAPE" or all(i == -1 or i in self.constants for i in ins)):
            self._fold(op_name, op, ins, outs)
            return
        if any(i in self.pending for i in ins):
            before = len(self.nodes)
            self._pending_op(op_name, op, ins, outs)
            self._infer_new_nodes(before)
            return
        handler = getattr(self, "_op_" + op_name.lower(), None) if op_name in SUPPORTED_OPS else None
        if handler is None:
            if op_name in FOLDED_OPS:
                self._fail(f"{where}: op {op_name} is supported on constants only (pisplit folds it at import), "
                           "not on computed tensors")
            self._fail(f"{where}: op {op_name} is not supported by pisplit (supported: {', '.join(SUPPORTED_OPS)})")
        if len(outs) != 1:
            self._fail(f"{where}: expected one output, found {len(outs)}")
        before = len(self.nodes)
        handler(op, ins, outs[0])
        self._infer_new_nodes(before)

    def _infer_new_nodes(self, start: int) -> None:
        """Shapes of the nodes just made, from their inputs: a tensor the file leaves open takes the
        inferred shape (SHAPE of it folds to that), any other must equal the file's."""
        from .ops import spec_of

        for node in self.nodes[start:]:
            try:
                shapes = spec_of(node.op).infer([self.shape_by_name[t] for t in node.inputs], node.attrs, node.weight_shapes)
            except PisplitError as exc:
                self._fail(f"{self.where}: {exc}")
            for t, got in zip(node.outputs, shapes):
                got = tuple(int(v) for v in got)
                self.shape_by_name[t] = got
                i = self.tensor_index.get(t)
                if i is None:
                    continue
                if i in self.dynamic or not self.tensor_shapes[i]:
                    self.tensor_shapes[i] = got
                elif got != tuple(self.tensor_shapes[i]):
                    self._fail(f"node {node.name!r} ({node.op}): pisplit computes shape {got}, the file says {tuple(self.tensor_shapes[i])}")

    # --- constant folding (shape arithmetic on static shapes, batch 1) ------------------------------
    def _fold(self, op_name: str, op, ins: list[int], outs: list[int]) -> None:
        """Make the outputs of an op whose inputs are all constants (or SHAPE of any tensor) constants
        themselves, computed with numpy when first read (folding.py-like semantics of the TFLite ops)."""
        for i in [*ins, *outs]:
            if i != -1 and self.quantization[i] is not None and (op_name != "SHAPE" or i in outs):
                self._fail(f"{self.where}: folding quantized constant {self.tensor_names[i]!r} is not supported")
        where = self.where
        if op_name == "SHAPE":
            o = self._options(op, "ShapeOptions")
            dtype = np.int64 if o.outType == self.S.TensorType.INT64 else np.int32
            value = np.asarray(self.tensor_shapes[ins[0]], dtype)
            self.constants[outs[0]] = lambda: value
            return
        args = [None if i == -1 else i for i in ins]
        options = self._fold_options(op_name, op)
        cache: list = []

        def compute() -> list:
            if not cache:
                values = [None if i is None else np.asarray(self.constants[i]()) for i in args]
                try:
                    results = _fold_values(op_name, values, options, [self.tensor_shapes[t] for t in outs])
                except (ValueError, IndexError, TypeError) as exc:
                    raise PisplitError(f"model file {self.source}: {where}: cannot fold constants ({exc})") from None
                for t, r in zip(outs, results):
                    dtype = _STORAGE_DTYPES.get(self.tensor_types[t])
                    r = np.asarray(r, dtype=dtype) if dtype is not None else np.asarray(r)
                    if t not in self.dynamic and self.tensor_shapes[t] and numel(self.tensor_shapes[t]) == r.size:
                        r = r.reshape(self.tensor_shapes[t])
                    cache.append(r)
            return cache

        for k, t in enumerate(outs):
            self.constants[t] = lambda k=k: compute()[k]
        compute()  # folded values are small (shapes, axes); errors belong to import

    def _fold_options(self, op_name: str, op) -> dict:
        names = {"STRIDED_SLICE": "StridedSliceOptions", "PACK": "PackOptions", "UNPACK": "UnpackOptions", "GATHER": "GatherOptions",
                 "CONCATENATION": "ConcatenationOptions", "SQUEEZE": "SqueezeOptions", "REDUCE_PROD": "ReducerOptions",
                 "SUM": "ReducerOptions", "ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}
        if op_name not in names:
            return {}
        o = self._options(op, names[op_name])
        if getattr(o, "fusedActivationFunction", 0):
            self._fail(f"{self.where}: folding constants with a fused activation is not supported")
        if op_name == "STRIDED_SLICE" and (o.ellipsisMask or o.newAxisMask or getattr(o, "offset", False)):
            self._fail(f"{self.where}: strided slice with ellipsis, new-axis masks or offsets is not supported")
        return {k: v for k, v in vars(o).items()}

    def _options(self, op, cls_name: str):
        """The op's builtin options as an object-API instance (defaults when the table is absent)."""
        cls = getattr(self.S, cls_name + "T")
        table = op.BuiltinOptions()
        if table is None:
            return cls()
        expected = getattr(self.S.BuiltinOptions, cls_name)
        if op.BuiltinOptionsType() != expected:
            self._fail(f"{self.where}: carries options of type {op.BuiltinOptionsType()}, expected {cls_name}")
        return cls.InitFromBuf(table.Bytes, table.Pos)

    def _activation(self, code: int):
        if code not in ACTIVATION_NAMES:
            self._fail(f"{self.where}: fused activation {_enum_names(self.S.ActivationFunctionType).get(code, code)} is not supported")
        return ACTIVATION_NAMES[code]

    def _window(self, what: str, *values: int) -> list[int]:
        """Strides, dilations and window sizes: absent options read as 0, which no op can use."""
        if min(values) < 1:
            self._fail(f"{self.where}: {what} {list(values)} must be at least 1")
        return [int(v) for v in values]

    def _padding(self, code: int) -> str:
        if code not in (self.S.Padding.SAME, self.S.Padding.VALID):
            self._fail(f"{self.where}: padding {code} is unknown")
        return "same" if code == self.S.Padding.SAME else "valid"

    def _activation_input(self, i: int) -> str:
        if i == -1:
            self._fail(f"{self.where}: a required input is missing")
        if i in self.constants:
            return self._constant_node(i)
        self._check_activation(i, f"{self.where}: input")
        return self.tensor_names[i]

    def _constant_node(self, i: int) -> str:
        """A constant read where a computed tensor goes (ViT's class token into CONCATENATION, a constant
        operand of BATCH_MATMUL or SELECT): a "constant" node holding its value as float32 (BOOL as 0/1),
        made once, before its first reader."""
        name = self.tensor_names[i]
        if name in self.shape_by_name:
            return name
        kind = self.tensor_types[i]
        if kind not in ("FLOAT32", "FLOAT16", "BOOL") and self.quantization[i] is None:
            self._fail(f"{self.where}: constant input {name!r} is {kind}; pisplit takes float (or BOOL) constants as op inputs")
        if self._is_quantized(i):
            self._fail(f"{self.where}: int8 constant input {name!r} of an int8 operator is not supported by pisplit yet")
        load = self.constants[i]
        shape = self.tensor_shapes[i]
        node = Node(name, "constant", [], [name], {}, {"value": shape})
        self.loaders[node.weight_key("value")] = lambda: np.asarray(load(), dtype=np.float32).reshape(shape)
        self.nodes.append(node)
        self.shape_by_name[name] = shape
        return name

    def _node(self, op: str, inputs: list[int], out: int, attrs: dict | None = None, weights: dict | None = None) -> None:
        """Append a node named after its output tensor; weights: param -> (tflite tensor, transform,
        shape after the transform) or (tflite tensor, None)."""
        self._check_activation(out, f"{self.where}: output")
        if self._is_quantized(out) or any(i != -1 and self._is_quantized(i) for i in inputs):
            return self._quantized_node(op, inputs, out, attrs, weights)
        name = self.tensor_names[out]
        node = Node(name, op, [self._activation_input(i) for i in inputs], [name], dict(attrs or {}), {})
        for param, (i, transform, *rest) in (weights or {}).items():
            if i not in self.constants:
                self._fail(f"{self.where}: {param} tensor {self.tensor_names[i]!r} must be a constant")
            node.weight_shapes[param] = tuple(rest[0]) if rest else self.tensor_shapes[i]
            if param == "kernel":  # CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED
                self._check_hybrid_weights(i)
                if self._is_quantized(i):
                    # dynamic range: the int8 filter stays int8 with its scales (graph.meta["quant"]), so the
                    # litert engine writes it back as LiteRT's hybrid layer; the numpy engine reads it
                    # dequantized (Graph.node_weights), never its integers alone
                    axis_map = rest[1] if len(rest) > 1 else {}
                    q = self.quantization[i]
                    self.quant[node.weight_key(param)] = self._quant_dict(i, axis_map.get(q.axis, q.axis))
                    load = self.raw_constants[i]
                    self.loaders[node.weight_key(param)] = (lambda load=load, transform=transform, i=i: self._release_pages(
                        i, np.ascontiguousarray(transform(load()) if transform else load())))
                    continue
            self.loaders[node.weight_key(param)] = self._float_loader(i, transform)
        self.nodes.append(node)

    def _quantized_node(self, op: str, inputs: list[int], out: int, attrs: dict | None, weights: dict | None) -> None:
        """An int8 node: integer kernels (layers.qkernels), raw integer weights with their quantization.
        weights: param -> (tflite tensor, transform, shape after it, {old axis: new axis})."""
        from .qkernels import QRUN

        op_name = self.where.split("(")[1].split(")")[0] if "(" in self.where else op
        if op not in QRUN:
            self._fail(f"{self.where}: op {op_name} on int8 tensors is not supported by pisplit yet "
                       f"(int8 kernels: {', '.join(sorted(QRUN))})")
        float_in = op == "quantize"
        float_out = op == "dequantize"
        for i in inputs:
            if i != -1 and not (self._is_quantized(i) or (float_in and self.tensor_types[i] == "FLOAT32")):
                self._fail(f"{self.where}: input {self.tensor_names[i]!r} is {self.tensor_types[i]} in an int8 operator")
        if not (self._is_quantized(out) or (float_out and self.tensor_types[out] == "FLOAT32")):
            self._fail(f"{self.where}: output {self.tensor_names[out]!r} is {self.tensor_types[out]} in an int8 operator")
        name = self.tensor_names[out]
        node = Node(name, op, [self._activation_input(i) for i in inputs], [name], {**(attrs or {}), "quantized": True}, {})
        for i in [*inputs, out]:
            if i != -1 and self._is_quantized(i):
                self.quant[self.tensor_names[i]] = self._quant_dict(i)
        for param, (i, transform, *rest) in (weights or {}).items():
            if i not in self.constants:
                self._fail(f"{self.where}: {param} tensor {self.tensor_names[i]!r} must be a constant")
            if i not in self.raw_constants:
                self._fail(f"{self.where}: {param} tensor {self.tensor_names[i]!r} is {self.tensor_types[i]} without quantization "
                           "in an int8 operator")
            shape = tuple(rest[0]) if rest else self.tensor_shapes[i]
            axis_map = rest[1] if len(rest) > 1 else {}
            q = self.quantization[i]
            node.weight_shapes[param] = shape
            self.quant[node.weight_key(param)] = self._quant_dict(i, axis_map.get(q.axis, q.axis))
            load = self.raw_constants[i]
            # (reshaped to the weight's shape: a scalar constant's buffer reads as one value of shape (1,))
            self.loaders[node.weight_key(param)] = (lambda load=load, transform=transform, i=i, shape=shape: self._release_pages(
                i, np.ascontiguousarray(transform(load()) if transform else load()).reshape(shape)))
        self.nodes.append(node)

    def _check_hybrid_weights(self, i: int) -> None:
        """Quantized weights read directly by CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED must be symmetric
        int8: LiteRT's float-input (hybrid) kernels read the bytes as int8 times the scale, ignoring any zero
        point, so other weights mean one thing in the file and another in LiteRT."""
        quant = self.quantization[i]
        if quant is None:
            return
        name, kind = self.tensor_names[i], self.tensor_types[i]
        if kind != "INT8":
            self._fail(f"{self.where}: weights {name!r} are quantized {kind}; LiteRT's float-input kernels take int8 "
                       "weights only (uint8 bytes are read as int8), so pisplit does too (or any behind DEQUANTIZE)")
        if np.any(quant.zero_point):
            zero = int(quant.zero_point[np.flatnonzero(quant.zero_point)[0]])
            self._fail(f"{self.where}: weights {name!r} are INT8 with zero point {zero}; LiteRT's float-input kernels "
                       "ignore weight zero points, so pisplit takes only symmetric ones here (or any behind DEQUANTIZE)")

    def _op_conv_2d(self, op, ins, out):
        o = self._options(op, "Conv2DOptions")
        x, w = ins[0], ins[1]
        cout, kh, kw, cin_g = self._shape_of(w, 4, "filter")
        cin = self.tensor_shapes[x][-1]
        if cin_g < 1 or cin % cin_g:
            self._fail(f"{self.where}: filter {self.tensor_shapes[w]} does not fit {cin} input channels")
        weights = {"kernel": (w, lambda a: a.transpose(1, 2, 3, 0), (kh, kw, cin_g, cout), {0: 3})}  # OHWI -> HWIO
        if len(ins) > 2 and ins[2] != -1:
            weights["bias"] = (ins[2], None)
        attrs = {"strides": self._window("strides", o.strideH, o.strideW), "padding": self._padding(o.padding),
                 "dilation": self._window("dilation", o.dilationHFactor, o.dilationWFactor), "groups": cin // cin_g,
                 "activation": self._activation(o.fusedActivationFunction)}
        self._node("conv2d", [x], out, attrs, weights)

    def _op_depthwise_conv_2d(self, op, ins, out):
        o = self._options(op, "DepthwiseConv2DOptions")
        x, w = ins[0], ins[1]
        one, kh, kw, cout = self._shape_of(w, 4, "filter")
        cin = self.tensor_shapes[x][-1]
        if one != 1 or cout % cin:
            self._fail(f"{self.where}: depthwise filter {self.tensor_shapes[w]} does not fit {cin} input channels")
        quant = self.quantization[w]
        if quant is not None and (quant.scale.size != cout or quant.axis != 3):
            # LiteRT's kernel reads scale[c] for every output channel c, past the end of a shorter list
            self._fail(f"{self.where}: quantized depthwise filter {self.tensor_names[w]!r} needs one scale per output channel "
                       f"on dimension 3 ({cout}), it has {quant.scale.size} on dimension {quant.axis}")
        # output channel c*M + m reads input channel c: exactly groups == Cin with Cout/groups = M
        weights = {"kernel": (w, lambda a: a.reshape(kh, kw, 1, cout), (kh, kw, 1, cout), {3: 3})}
        if len(ins) > 2 and ins[2] != -1:
            weights["bias"] = (ins[2], None)
        attrs = {"strides": self._window("strides", o.strideH, o.strideW), "padding": self._padding(o.padding),
                 "dilation": self._window("dilation", o.dilationHFactor, o.dilationWFactor), "groups": cin,
                 "activation": self._activation(o.fusedActivationFunction)}
        self._node("conv2d", [x], out, attrs, weights)

    def _op_fully_connected(self, op, ins, out):
        o = self._options(op, "FullyConnectedOptions")
        if o.weightsFormat != 0:
            self._fail(f"{self.where}: shuffled weights format {o.weightsFormat} is not supported")
        x, w = ins[0], ins[1]
        cout, cin = self._shape_of(w, 2, "weights")
        shape = self.tensor_shapes[x]
        weights = {"kernel": (w, lambda a: a.T, (cin, cout), {0: 1, 1: 0})}  # (Cout, Cin) -> (Cin, Cout)
        if len(ins) > 2 and ins[2] != -1:
            weights["bias"] = (ins[2], None)
        attrs = {"activation": self._activation(o.fusedActivationFunction)}
        if self._is_quantized(w) and not self._is_quantized(x):  # dynamic range: how LiteRT quantizes the input
            attrs["asymmetric_inputs"] = bool(o.asymmetricQuantizeInputs)
        if len(shape) > 2 and numel(shape[1:]) == cin and not (o.keepNumDims and shape[-1] == cin):
            # TFLite flattens the input to (batch, Cin) itself; pisplit makes that a node of its own
            flat = self.tensor_names[out] + "/flatten"
            if self._is_quantized(x):  # the same integers in another shape: the input's quantization
                self.quant[flat] = self._quant_dict(x)
            self.nodes.append(Node(flat, "flatten", [self._activation_input(x)], [flat], {"quantized": True} if self._is_quantized(x) else {}, {}))
            node_before = len(self.nodes)
            self._node("dense", [x], out, attrs, weights)
            self.nodes[node_before].inputs = [flat]
            return
        if shape[-1] == cin and len(shape) > 2 and not o.keepNumDims and not self._is_quantized(x):
            # TFLite folds the leading axes into rows: (1, T, C) -> (T, C) @ W. pisplit keeps the dense on
            # (1, T, C) (its input stays batch-led, so splits of it apply) and folds its output into the
            # rows after it, a batch-1 reshape (T, Cout): a sequence of one frame
            before = len(self.nodes)
            self._node("dense", [x], out, attrs, weights)
            node = self.nodes[before]
            name = self.tensor_names[out]
            kept = name + "/keep_dims"
            old_keys = {param: node.weight_key(param) for param in node.weight_shapes}
            node.name, node.outputs = kept, [kept]
            for param, key in old_keys.items():  # weights are keyed by node name
                self.loaders[node.weight_key(param)] = self.loaders.pop(key)
                if key in self.quant:  # a dynamic-range filter's scales go with it
                    self.quant[node.weight_key(param)] = self.quant.pop(key)
            rows = [numel(shape[:-1]), cout]
            self.nodes.append(Node(name, "reshape", [kept], [name], {"shape": rows[1:], "full_shape": rows,
                                                                     "batch1": self._batch1(x, f"fully connected on {shape}"),
                                                                     "axis0": int(shape[0])}, {}))
            return
        if shape[-1] != cin or (len(shape) > 2 and not o.keepNumDims):
            self._fail(f"{self.where}: input {shape} with weights {self.tensor_shapes[w]} would mix the batch axis")
        self._node("dense", [x], out, attrs, weights)

    def _pool(self, op, ins, out, kind: str):
        o = self._options(op, "Pool2DOptions")
        attrs = {"pool": self._window("window", o.filterHeight, o.filterWidth), "strides": self._window("strides", o.strideH, o.strideW),
                 "padding": self._padding(o.padding), "activation": self._activation(o.fusedActivationFunction)}
        self._node(kind, [ins[0]], out, attrs)

    def _op_max_pool_2d(self, op, ins, out):
        self._pool(op, ins, out, "max_pool2d")

    def _op_average_pool_2d(self, op, ins, out):
        self._pool(op, ins, out, "avg_pool2d")

    def _op_mean(self, op, ins, out):
        o = self._options(op, "ReducerOptions")
        axes = [int(a) for a in np.atleast_1d(self._ints(ins[1], self.where))]
        rank = len(self.tensor_shapes[ins[0]])
        attrs = {"axes": axes, "keepdims": bool(o.keepDims)}
        if any((a + rank if a < 0 else a) == 0 for a in axes):  # LayerNorm over a reshaped tensor
            attrs["batch1"] = self._batch1(ins[0], f"a mean over axes {axes}")
            attrs["axis0"] = int(self.tensor_shapes[ins[0]][0])
        self._node("mean", [ins[0]], out, attrs)

    def _elementwise(self, op, ins, out, kind: str, options: str):
        o = self._options(op, options)
        act = self._activation(o.fusedActivationFunction)
        a, b = ins[0], ins[1]
        if a in self.constants and b in self.constants:
            self._fail(f"{self.where}: both inputs are constants (constant folding is not supported)")
        c, x = (a, b) if a in self.constants else (b, a)
        if c in self.constants and len(self.tensor_shapes[c]) > len(self.tensor_shapes[x]):
            # a constant with more axes than the tensor (Swin's (1, H, T, T) bias on (H, T, T) scores): a
            # constant node, so the output takes the constant's leading axes as the file says
            self._node(kind, [a, b], out, {"activation": act})
        elif a in self.constants or b in self.constants:
            self._node(kind, [x], out, {"activation": act, "constant_first": c == a}, {"constant": (c, None)})
        else:
            self._node(kind, [a, b], out, {"activation": act})

    def _op_add(self, op, ins, out):
        self._elementwise(op, ins, out, "add", "AddOptions")

    def _op_mul(self, op, ins, out):
        self._elementwise(op, ins, out, "mul", "MulOptions")

    def _op_sub(self, op, ins, out):
        self._elementwise(op, ins, out, "sub", "SubOptions")

    def _op_concatenation(self, op, ins, out):
        o = self._options(op, "ConcatenationOptions")
        if o.fusedActivationFunction:
            # the builtin kernel refuses it and XNNPACK ignores it: no single meaning to import
            self._fail(f"{self.where}: a fused activation on CONCATENATION is not supported")
        rank = len(self.tensor_shapes[out])
        attrs = {"axis": int(o.axis)}
        if rank and int(o.axis) % rank == 0:
            attrs["batch1"] = self._batch1(ins[0], f"concatenation on axis {o.axis}")
            attrs["axis0"] = [int(self.tensor_shapes[i][0]) for i in ins]
        self._node("concat", ins, out, attrs)

    def _batch1(self, i: int, what: str) -> bool:
        """A node that moves or reduces the batch axis: imported for one frame at a time (ops.batch1_only
        refuses another batch size at run time); float tensors only."""
        if i != -1 and self._is_quantized(i):
            self._fail(f"{self.where}: {what} moves the batch axis, which pisplit supports on float tensors only")
        log.debug("%s: %s moves the batch axis; the node runs on one frame at a time", self.where, what)
        return True

    def _reshape_like_output(self, ins, out, dst=None):
        if ins[0] in self.constants:
            self._fail(f"{self.where}: reshaping a constant is not supported")
        src = self.tensor_shapes[ins[0]]
        if dst is None and out in self.dynamic and len(ins) > 1 and ins[1] != -1 and ins[1] in self.constants:
            # the file's shape is open: the (folded) shape operand says it, -1 resolved on the input's size
            target = [int(v) for v in np.asarray(self._ints(ins[1], self.where)).reshape(-1)]
            if target.count(-1) == 1 and numel(v for v in target if v != -1):
                target[target.index(-1)] = numel(src) // numel(v for v in target if v != -1)
            dst = tuple(target)
        dst = self.tensor_shapes[out] if dst is None else tuple(dst)
        if not dst or not src or -1 in dst:
            self._fail(f"{self.where}: reshape from {src} to {dst} must keep the leading batch axis")
        if dst[0] != src[0]:  # e.g. an unrolled LSTM's (1, 50, 128) -> (50, 1, 128): one frame at a time
            self._node("reshape", [ins[0]], out, {"shape": list(dst[1:]), "full_shape": list(dst),
                                                  "batch1": self._batch1(ins[0], f"reshape from {src} to {dst}"), "axis0": int(src[0])})
            return
        self._node("reshape", [ins[0]], out, {"shape": list(dst[1:])})

    def _op_reshape(self, op, ins, out):
        self._reshape_like_output(ins, out)

    def _op_squeeze(self, op, ins, out):
        o = self._options(op, "SqueezeOptions")
        src = self.tensor_shapes[ins[0]]
        dims = {int(d) % len(src) for d in (o.squeezeDims if o.squeezeDims is not None else []) if len(src)}
        dims = dims or {d for d, v in enumerate(src) if v == 1 and d > 0}
        if 0 in dims or any(src[d] != 1 for d in dims):
            self._fail(f"{self.where}: cannot squeeze axes {sorted(dims)} of {src}")
        self._reshape_like_output(ins, out, [v for d, v in enumerate(src) if d not in dims])

    # --- TensorFlow's dilated convolution: SPACE_TO_BATCH_ND -> [EXPAND_DIMS] -> conv -> [RESHAPE] -> BATCH_TO_SPACE_ND
    def _op_space_to_batch_nd(self, op, ins, out):
        """The start of a dilated convolution: pad the input (the paddings), remember the block per
        spatial axis; the conv that follows becomes one convolution dilated by the block on the
        un-batched tensor, BATCH_TO_SPACE_ND its crop. Any other reader is refused."""
        x = ins[0]
        block = [int(v) for v in np.asarray(self._ints(ins[1], self.where)).reshape(-1)]
        pads = np.asarray(self._ints(ins[2], self.where)).reshape(-1, 2).astype(int).tolist()
        shape = self.tensor_shapes[x]
        if len(block) != len(pads) or len(block) + 2 > len(shape) or min(block, default=0) < 1:
            self._fail(f"{self.where}: block {block} and paddings {pads} do not fit input {shape}")
        padded = [shape[1 + d] + a + b for d, (a, b) in enumerate(pads)]
        if any(p % b for p, b in zip(padded, block)):
            self._fail(f"{self.where}: padded sizes {padded} are not multiples of the block {block}")
        if self._is_quantized(x) != self._is_quantized(out) or (self._is_quantized(x) and self._quant_dict(x) != self._quant_dict(out)):
            self._fail(f"{self.where}: input and output must share their type and quantization (TFLite requires it)")
        src = self._activation_input(x)
        name = self.tensor_names[out] + "/dilation_pad"
        paddings = [[0, 0], *pads, *[[0, 0]] * (len(shape) - 1 - len(pads))]
        # int8: SPACE_TO_BATCH_ND pads with the output zero point, as the quantized PAD does (qpad)
        self._pattern_node(name, "pad", src, {"paddings": paddings}, out)
        self.pending[out] = {"tensor": name, "rank": len(shape), "blocks": {1 + d: b for d, b in enumerate(block)}, "conv": False}

    def _pattern_node(self, name: str, op: str, src: str, attrs: dict, like: int) -> None:
        """A node of the dilated-convolution pattern that only moves values (pad, reshape, crop): int8 when
        tflite tensor `like` is, with its quantization (the pattern's tensors all share it)."""
        if self._is_quantized(like):
            attrs = {**attrs, "quantized": True}
            self.quant[name] = self._quant_dict(like)
        self.nodes.append(Node(name, op, [src], [name], attrs, {}))

    def _pending_op(self, op_name: str, op, ins: list[int], outs: list[int]) -> None:
        p = next(self.pending[i] for i in ins if i in self.pending)
        if op_name not in _DILATED_PATTERN_OPS or ins[0] not in self.pending or len(outs) != 1 or \
                any(i in self.pending for i in ins[1:]):
            self._fail(f"{self.where}: op {op_name} reads a SPACE_TO_BATCH_ND tensor; pisplit imports SPACE_TO_BATCH_ND only "
                       "as part of a dilated convolution (EXPAND_DIMS, CONV_2D or DEPTHWISE_CONV_2D, RESHAPE, BATCH_TO_SPACE_ND)")
        out = outs[0]
        name = self.tensor_names[out] + "/dilated"
        file_rank = len(self.tensor_shapes[ins[0]])
        real = self.shape_by_name[p["tensor"]]
        if op_name in ("EXPAND_DIMS", "RESHAPE", "SQUEEZE"):
            # the same change of rank on the un-batched tensor: axes of size 1 added or removed
            new_file = self.tensor_shapes[out]
            if op_name == "EXPAND_DIMS":
                axis = int(np.asarray(self._ints(ins[1], self.where)).reshape(-1)[0])
                axis = axis + file_rank + 1 if axis < 0 else axis
                if not 0 < axis <= len(real):
                    self._fail(f"{self.where}: a new axis {axis} is not supported here")
                shape = [*real[1:axis], 1, *real[axis:]]
                blocks = {a + (a >= axis): b for a, b in p["blocks"].items()}
            else:
                ones = [d for d, v in enumerate(real) if v == 1 and d > 0 and d not in p["blocks"]]
                if len(new_file) != len(real) - 1 or not ones:
                    self._fail(f"{self.where}: only removing one axis of size 1 is supported inside a dilated convolution")
                drop = next((d for d in ones if d < len(new_file) and [*real[:d], *real[d + 1:]][1:] == list(new_file[1:])), ones[0])
                shape = [*real[1:drop], *real[drop + 1:]]
                blocks = {a - (a > drop): b for a, b in p["blocks"].items()}
            if self._is_quantized(out) and self._quant_dict(out) != self.quant.get(p["tensor"]):
                self._fail(f"{self.where}: input and output must share their quantization (TFLite requires it)")
            self._pattern_node(name, "reshape", p["tensor"], {"shape": shape}, out)
            self.pending[out] = {**p, "tensor": name, "rank": len(shape) + 1, "blocks": blocks}
            return
        if op_name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            if p["conv"]:
                self._fail(f"{self.where}: two convolutions inside one SPACE_TO_BATCH_ND ... BATCH_TO_SPACE_ND")
            if len(real) != 4 or any(a not in (1, 2) for a in p["blocks"]):
                self._fail(f"{self.where}: the dilated convolution's blocks {p['blocks']} are not on its spatial axes")
            before = len(self.nodes)
            getattr(self, "_op_" + op_name.lower())(op, ins, out)
            node = self.nodes[before]
            if node.attrs["padding"] != "valid" or node.attrs["strides"] != [1, 1] or node.attrs["dilation"] != [1, 1]:
                self._fail(f"{self.where}: a convolution between SPACE_TO_BATCH_ND and BATCH_TO_SPACE_ND must be valid, "
                           "stride 1, not dilated")
            node.inputs = [p["tensor"]]
            old_keys = {param: node.weight_key(param) for param in node.weight_shapes}
            node.name, node.outputs = name, [name]
            for param, key in old_keys.items():  # weights are keyed by node name
                self.loaders[node.weight_key(param)] = self.loaders.pop(key)
                if key in self.quant:
                    self.quant[node.weight_key(param)] = self.quant.pop(key)
            if self.tensor_names[out] in self.quant:
                self.quant[name] = self.quant[self.tensor_names[out]]
            node.attrs["dilation"] = [p["blocks"].get(1, 1), p["blocks"].get(2, 1)]
            self.pending[out] = {**p, "tensor": name, "conv": True}
            return
        # BATCH_TO_SPACE_ND: crop the dilated convolution's output
        block = [int(v) for v in np.asarray(self._ints(ins[1], self.where)).reshape(-1)]
        crops = np.asarray(self._ints(ins[2], self.where)).reshape(-1, 2).astype(int).tolist()
        if not p["conv"] or block != [p["blocks"].get(1 + d) for d in range(len(block))] or len(crops) != len(block):
            self._fail(f"{self.where}: block {block} does not close the SPACE_TO_BATCH_ND of blocks {p['blocks']} around a convolution")
        starts = [crops[d][0] if d < len(crops) else 0 for d in range(len(real) - 1)]
        counts = [real[1 + d] - (crops[d][0] + crops[d][1] if d < len(crops) else 0) for d in range(len(real) - 1)]
        if min(counts) < 1:
            self._fail(f"{self.where}: crops {crops} remove the whole output {real}")
        self._check_activation(out, f"{self.where}: output")
        if self._is_quantized(out) and self._quant_dict(out) != self.quant.get(p["tensor"]):
            self._fail(f"{self.where}: input and output must share their quantization (TFLite requires it)")
        node_name = self.tensor_names[out]
        self._pattern_node(node_name, "strided_slice", p["tensor"],
                           {"starts": starts, "steps": [1] * len(starts), "counts": counts, "out_shape": counts}, out)

    def _op_expand_dims(self, op, ins, out):
        axis = int(np.asarray(self._ints(ins[1], self.where)).reshape(-1)[0])
        src = list(self.tensor_shapes[ins[0]])
        axis = axis + len(src) + 1 if axis < 0 else axis
        if not 0 < axis <= len(src):
            self._fail(f"{self.where}: a new axis {axis} before the batch axis or past the last is not supported")
        self._reshape_like_output(ins, out, src[:axis] + [1] + src[axis:])

    def _op_strided_slice(self, op, ins, out):
        from .kernels import axis_slice  # noqa: F401  (the kernel's own slice rule)

        o = self._options(op, "StridedSliceOptions")
        if o.ellipsisMask or o.newAxisMask or getattr(o, "offset", False):
            self._fail(f"{self.where}: strided slice with ellipsis, new-axis masks or offsets is not supported")
        shape = self.tensor_shapes[ins[0]]
        begin, end = (np.asarray(self._ints(i, self.where)).reshape(-1) for i in ins[1:3])
        strides = np.asarray(self._ints(ins[3], self.where)).reshape(-1) if len(ins) > 3 and ins[3] != -1 else np.ones(len(shape), int)
        if not len(begin) == len(end) == len(strides) == len(shape):
            self._fail(f"{self.where}: begin, end and strides need one value per axis of {shape}")
        try:
            ranges, shrunk = _strided_slice_ranges(shape, begin, end, strides, int(o.beginMask), int(o.endMask), int(o.shrinkAxisMask))
        except ValueError as exc:
            self._fail(f"{self.where}: {exc}")
        out_shape = [c for d, (_, _, c) in enumerate(ranges) if d not in shrunk]
        if 0 in shrunk or ranges[0] != (0, 1, shape[0]):  # slices axis 0 (a sequence of one frame)
            self._node("strided_slice", [ins[0]], out, {"starts": [r[0] for r in ranges], "steps": [r[1] for r in ranges],
                                                        "counts": [r[2] for r in ranges], "out_shape": out_shape,
                                                        "batch1": self._batch1(ins[0], "a strided slice of axis 0"), "axis0": int(shape[0])})
            return
        self._node("strided_slice", [ins[0]], out, {"starts": [r[0] for r in ranges[1:]], "steps": [r[1] for r in ranges[1:]],
                                                    "counts": [r[2] for r in ranges[1:]], "out_shape": out_shape[1:]})

    def _op_tile(self, op, ins, out):
        multiples = [int(m) for m in np.asarray(self._ints(ins[1], self.where)).reshape(-1)]
        if not multiples or multiples[0] != 1:
            self._fail(f"{self.where}: tiling {multiples} repeats the batch axis")
        self._node("tile", [ins[0]], out, {"multiples": multiples[1:]})

    def _op_depth_to_space(self, op, ins, out):
        o = self._options(op, "DepthToSpaceOptions")
        self._node("depth_to_space", [ins[0]], out, {"block": self._window("block size", o.blockSize)[0]})

    def _op_densify(self, op, ins, out):
        if ins[0] not in self.constants:
            self._fail(f"{self.where}: densifying a computed tensor is not supported")
        if self.tensor_shapes[ins[0]] != self.tensor_shapes[out] or self.tensor_types[ins[0]] != self.tensor_types[out]:
            self._fail(f"{self.where}: output {self.tensor_shapes[out]} {self.tensor_types[out]} differs from its input")
        self.constants[out] = self.constants[ins[0]]  # sparse constants are read dense (_densify)
        if ins[0] in self.raw_constants:
            self.raw_constants[out] = self.raw_constants[ins[0]]
        self.quantization[out] = self.quantization[ins[0]]

    def _op_transpose_conv(self, op, ins, out):
        o = self._options(op, "TransposeConvOptions")
        if getattr(o, "quantizedBiasType", 0):
            self._fail(f"{self.where}: a quantized bias type is not supported")
        shape_i, w, x = ins[0], ins[1], ins[2]
        out_shape = [int(v) for v in np.asarray(self._ints(shape_i, self.where)).reshape(-1)]
        cout, kh, kw, cin = self._shape_of(w, 4, "filter")
        xs = self.tensor_shapes[x]
        if len(out_shape) != 4 or out_shape[3] != cout or len(xs) != 4 or xs[3] != cin or out_shape[0] != xs[0]:
            self._fail(f"{self.where}: output shape {out_shape}, filter {self.tensor_shapes[w]} and input {xs} do not fit")
        weights = {"kernel": (w, lambda a: a.transpose(1, 2, 3, 0), (kh, kw, cin, cout), {0: 3})}  # OHWI -> HWIO
        if len(ins) > 3 and ins[3] != -1:
            weights["bias"] = (ins[3], None)
        attrs = {"strides": self._window("strides", o.strideH, o.strideW), "padding": self._padding(o.padding),
                 "output_size": out_shape[1:3], "activation": self._activation(getattr(o, "fusedActivationFunction", 0))}
        if self._is_quantized(x) and shape_i in self.raw_bytes:
            attrs["shape_constant"] = True  # LiteRT's default interpreter hands it to XNNPACK (qconv2d_transpose)
        self._node("conv2d_transpose", [x], out, attrs, weights)  # int8: layers.qkernels.qconv2d_transpose

    def _op_pad(self, op, ins, out):
        pads = np.asarray(self._ints(ins[1], self.where)).reshape(-1, 2)
        attrs = {"paddings": pads.astype(int).tolist()}
        if len(pads) and tuple(pads[0]) != (0, 0):  # pads axis 0 (rows of one frame)
            attrs.update(batch1=self._batch1(ins[0], f"padding {attrs['paddings']}"), axis0=int(self.tensor_shapes[ins[0]][0]))
        self._node("pad", [ins[0]], out, attrs)

    def _op_padv2(self, op, ins, out):
        pads = np.asarray(self._ints(ins[1], self.where)).reshape(-1, 2)
        has_value = len(ins) > 2 and ins[2] != -1
        value = float(np.asarray(self._const(ins[2], self.where), np.float32).reshape(-1)[0]) if has_value else 0.0
        attrs = {"paddings": pads.astype(int).tolist(), "value": value}
        if has_value and self._is_quantized(out):
            if ins[2] not in self.raw_constants or self.quantization[ins[2]].scale.size != 1 or \
                    self._quant_dict(ins[2]) != self._quant_dict(out):
                self._fail(f"{self.where}: the int8 pad value must share the output's quantization")
            attrs["qvalue"] = int(self.raw_constants[ins[2]]().reshape(-1)[0])
        self._node("pad", [ins[0]], out, attrs)

    def _op_prelu(self, op, ins, out):
        self._node("prelu", [ins[0]], out, {}, {"alpha": (ins[1], None)})

    def _op_relu(self, op, ins, out):
        self._node("relu", [ins[0]], out)

    def _op_relu6(self, op, ins, out):
        self._node("relu6", [ins[0]], out)

    def _op_logistic(self, op, ins, out):
        self._node("sigmoid", [ins[0]], out)

    def _op_tanh(self, op, ins, out):
        self._node("tanh", [ins[0]], out)

    def _op_hard_swish(self, op, ins, out):
        self._node("hard_swish", [ins[0]], out)

    def _op_leaky_relu(self, op, ins, out):
        o = self._options(op, "LeakyReluOptions")
        self._node("leaky_relu", [ins[0]], out, {"alpha": float(o.alpha)})

    def _op_softmax(self, op, ins, out):
        o = self._options(op, "SoftmaxOptions")
        self._node("softmax", [ins[0]], out, {"axis": -1, "beta": float(o.beta)})

    def _op_local_response_normalization(self, op, ins, out):
        o = self._options(op, "LocalResponseNormalizationOptions")
        self._node("lrn", [ins[0]], out, {"depth_radius": int(o.radius), "bias": float(o.bias), "alpha": float(o.alpha), "beta": float(o.beta)})

    def _op_quantize(self, op, ins, out):
        if ins[0] in self.constants:
            self._fail(f"{self.where}: quantizing a constant is not supported")
        self._node("quantize", [ins[0]], out)

    def _op_dequantize(self, op, ins, out):
        i = ins[0]
        if i not in self.constants and self._is_quantized(i):
            self._node("dequantize", [i], out)
            return
        if i not in self.constants:
            self._fail(f"{self.where}: dequantizing a computed {self.tensor_types[i]} tensor is not supported")
        if self.tensor_types[i] != "FLOAT16" and self.quantization[i] is None:
            self._fail(f"constant tensor {self.tensor_names[i]!r} ({self.tensor_types[i]}) has no quantization scales")
        load = self.constants[i]  # already dequantized when quantized
        self.constants[out] = lambda: load().astype(np.float32)
        self.tensor_types[out] = "FLOAT32"

    def _op_transpose(self, op, ins, out):
        perm = [int(p) for p in np.atleast_1d(self._ints(ins[1], self.where))]
        attrs = {"perm": perm}
        if not perm or perm[0] != 0:  # attention's [2, 0, 1]: one frame at a time
            attrs["batch1"] = self._batch1(ins[0], f"transpose {perm}")
            attrs["axis0"] = int(self.tensor_shapes[ins[0]][0])
        self._node("transpose", [ins[0]], out, attrs)

    def _resize(self, op, ins, out, kind: str, options: str):
        o = self._options(op, options)
        size = [int(v) for v in np.atleast_1d(self._ints(ins[1], self.where))]
        self._node(kind, [ins[0]], out, {"size": size, "align_corners": bool(o.alignCorners),
                                          "half_pixel_centers": bool(o.halfPixelCenters)})

    def _op_resize_bilinear(self, op, ins, out):
        self._resize(op, ins, out, "resize_bilinear", "ResizeBilinearOptions")

    def _op_resize_nearest_neighbor(self, op, ins, out):
        self._resize(op, ins, out, "resize_nearest", "ResizeNearestNeighborOptions")

    # --- transformers and sequence models (issue 19) -------------------------------------------------
    def _op_batch_matmul(self, op, ins, out):
        o = self._options(op, "BatchMatMulOptions")
        if any(self._is_quantized(i) for i in ins[:2]) or self._is_quantized(out):
            self._fail(f"{self.where}: op BATCH_MATMUL on int8 tensors is not supported by pisplit yet")
        self._node("batch_matmul", ins[:2], out, {"adj_x": bool(o.adjX), "adj_y": bool(o.adjY)})

    def _op_gelu(self, op, ins, out):
        o = self._options(op, "GeluOptions")
        self._node("gelu", [ins[0]], out, {"approximate": bool(o.approximate)})

    def _op_rsqrt(self, op, ins, out):
        self._node("rsqrt", [ins[0]], out)

    def _binary(self, ins, out, kind: str):
        a, b = ins[0], ins[1]
        if (a in self.constants or b in self.constants) and self.tensor_types[a if a in self.constants else b] != "BOOL":
            c, x = (a, b) if a in self.constants else (b, a)
            self._node(kind, [x], out, {"constant_first": c == a}, {"constant": (c, None)})
        else:
            self._node(kind, [a, b], out)

    def _op_squared_difference(self, op, ins, out):
        self._binary(ins, out, "squared_difference")

    def _op_equal(self, op, ins, out):
        self._binary(ins, out, "equal")

    def _op_not_equal(self, op, ins, out):
        self._binary(ins, out, "not_equal")

    def _op_select(self, op, ins, out):
        if self._is_quantized(out):
            self._fail(f"{self.where}: op SELECT on int8 tensors is not supported by pisplit yet")
        self._node("select", ins[:3], out)

    def _op_select_v2(self, op, ins, out):
        self._op_select(op, ins, out)

    def _op_slice(self, op, ins, out):
        shape = self.tensor_shapes[ins[0]]
        begin = [int(v) for v in np.asarray(self._ints(ins[1], self.where)).reshape(-1)]
        size = [int(v) for v in np.asarray(self._ints(ins[2], self.where)).reshape(-1)]
        if not len(begin) == len(size) == len(shape):
            self._fail(f"{self.where}: begin {begin} and size {size} need one value per axis of {shape}")
        counts = [n - b if s == -1 else s for n, b, s in zip(shape, begin, size)]
        if any(b < 0 or c < 0 or b + c > n for n, b, c in zip(shape, begin, counts)):
            self._fail(f"{self.where}: begin {begin} and size {size} fall outside {shape}")
        if begin[0] == 0 and counts[0] == shape[0]:
            self._node("strided_slice", [ins[0]], out, {"starts": begin[1:], "steps": [1] * (len(shape) - 1), "counts": counts[1:],
                                                        "out_shape": counts[1:]})
            return
        self._node("strided_slice", [ins[0]], out, {"starts": begin, "steps": [1] * len(shape), "counts": counts, "out_shape": counts,
                                                    "batch1": self._batch1(ins[0], "a slice of axis 0"), "axis0": int(shape[0])})

    def _shape_of(self, i: int, rank: int, what: str) -> tuple:
        shape = self.tensor_shapes[i]
        if len(shape) != rank:
            self._fail(f"{self.where}: {what} {self.tensor_names[i]!r} has shape {shape}, expected rank {rank}")
        return shape


def _strided_slice_ranges(shape, begin, end, strides, begin_mask: int, end_mask: int, shrink_mask: int):
    """(start, step, count) per axis of TFLite STRIDED_SLICE on `shape` (masks resolved as TFLite does,
    negative indices counted from the end, clamped), and which axes are shrunk away."""
    out = []
    for d, n in enumerate(shape):
        b, e, s = int(begin[d]), int(end[d]), int(strides[d]) if d < len(strides) else 1
        if s == 0:
            raise ValueError("strided slice with stride 0")
        if shrink_mask >> d & 1:
            b = b + n if b < 0 else b
            if not 0 <= b < n:
                raise ValueError(f"index {int(begin[d])} is outside axis {d} of size {n}")
            out.append((b, 1, 1))
            continue
        lo, hi = (0, n) if s > 0 else (-1, n - 1)
        b = (0 if s > 0 else n - 1) if begin_mask >> d & 1 else min(max(b + n if b < 0 else b, lo), hi)
        e = (n if s > 0 else -1) if end_mask >> d & 1 else min(max(e + n if e < 0 else e, lo), hi)
        out.append((b, s, len(range(b, e, s))))
    shrunk = [d for d in range(len(shape)) if shrink_mask >> d & 1]
    return out, shrunk


def _fold_values(op: str, v: list, o: dict, out_shapes: list) -> list:
    """numpy evaluation of one TFLite op on constant inputs `v` (options `o`)."""
    from .kernels import axis_slice

    x = v[0]
    if op in ("ADD", "SUB", "MUL", "DIV", "FLOOR_DIV", "MAXIMUM", "MINIMUM"):
        a, b = v
        if op == "DIV" and np.issubdtype(a.dtype, np.integer):
            return [np.trunc(a / b).astype(a.dtype)]
        fn = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "DIV": np.divide, "FLOOR_DIV": np.floor_divide,
              "MAXIMUM": np.maximum, "MINIMUM": np.minimum}[op]
        return [fn(a, b)]
    if op == "CAST":
        return [x]  # the caller casts to the output tensor's type
    if op in ("EQUAL", "NOT_EQUAL", "LESS", "GREATER", "LOGICAL_AND", "LOGICAL_OR"):
        fn = {"EQUAL": np.equal, "NOT_EQUAL": np.not_equal, "LESS": np.less, "GREATER": np.greater,
              "LOGICAL_AND": np.logical_and, "LOGICAL_OR": np.logical_or}[op]
        return [fn(v[0], v[1])]
    if op == "LOGICAL_NOT":
        return [np.logical_not(x)]
    if op in ("SELECT", "SELECT_V2"):
        return [np.where(v[0].astype(bool), v[1], v[2])]
    if op == "CONCATENATION":
        return [np.concatenate([np.atleast_1d(a) for a in v], axis=int(o["axis"]))]
    if op == "PACK":
        return [np.stack(v, axis=int(o["axis"]))]
    if op == "UNPACK":
        return list(np.moveaxis(x, int(o["axis"]), 0))
    if op == "GATHER":
        axis = int(o["axis"]) + (x.ndim if int(o["axis"]) < 0 else 0)
        idx = v[1].astype(np.int64)
        if np.any(idx < 0) or np.any(idx >= x.shape[axis]):
            raise IndexError(f"gather indices {idx.tolist()} outside axis {axis} of size {x.shape[axis]}")
        return [np.take(x, idx, axis=axis)]
    if op in ("RESHAPE", "SQUEEZE", "EXPAND_DIMS"):
        shape = out_shapes[0]
        if op == "RESHAPE" and len(v) > 1 and v[1] is not None and v[1].size:
            shape = [int(s) for s in v[1].reshape(-1)]
        elif op == "EXPAND_DIMS":
            axis = int(v[1].reshape(-1)[0])
            return [np.expand_dims(x, axis if axis >= 0 else axis + x.ndim + 1)]
        elif op == "SQUEEZE":
            dims = [int(d) for d in (o.get("squeezeDims") if o.get("squeezeDims") is not None else [])]
            return [np.squeeze(x, axis=tuple(dims) if dims else None)]
        return [x.reshape(shape)]
    if op == "TRANSPOSE":
        return [np.transpose(x, [int(p) for p in v[1].reshape(-1)])]
    if op == "TILE":
        return [np.tile(x, [int(m) for m in v[1].reshape(-1)])]
    if op == "FILL":
        return [np.full([int(d) for d in x.reshape(-1)], v[1].reshape(()))]
    if op == "RANGE":
        return [np.arange(x.reshape(()), v[1].reshape(()), v[2].reshape(()))]
    if op in ("REDUCE_PROD", "SUM"):
        axes = tuple(int(a) for a in np.atleast_1d(v[1]))
        fn = np.prod if op == "REDUCE_PROD" else np.sum
        return [fn(x, axis=axes, keepdims=bool(o["keepDims"])).astype(x.dtype)]
    if op == "SLICE":
        begin, size = v[1].reshape(-1), v[2].reshape(-1)
        index = tuple(slice(int(b), None if int(s) == -1 else int(b) + int(s)) for b, s in zip(begin, size))
        return [x[index]]
    if op == "STRIDED_SLICE":
        ranges, shrunk = _strided_slice_ranges(x.shape, v[1].reshape(-1), v[2].reshape(-1), v[3].reshape(-1) if v[3] is not None else [],
                                               int(o["beginMask"]), int(o["endMask"]), int(o["shrinkAxisMask"]))
        y = x[tuple(axis_slice(*r) for r in ranges)]
        return [y.reshape([c for d, (_, _, c) in enumerate(ranges) if d not in shrunk])]
    raise ValueError(f"no folding rule for {op}")
