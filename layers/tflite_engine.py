"""The LiteRT engine: a Graph compiled to a .tflite flatbuffer, run by the LiteRT interpreter with XNNPACK.

The graph may be a whole model, a pipeline stage or one part of a split layer. Batch-norms are folded
into their convolutions first (as the TFLite converter does), then `export_tflite` writes the
flatbuffer, which only ever holds what pisplit wrote itself: user files reach the interpreter only
after `import_tflite` has parsed them (the interpreter may crash on malformed bytes).

ai-edge-litert's Interpreter applies the XNNPACK delegate by default; tflite_runtime's is used when
only it is installed. The thread count is set per engine (one rank, one interpreter).
"""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from .errors import PisplitError
from .graph import Graph
from .tflite_export import export_tflite
from .transforms import fold_batchnorm

log = logging.getLogger(__name__)


def interpreter_class():
    """The LiteRT Interpreter class: ai-edge-litert's, else tflite_runtime's; PisplitError if neither."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise PisplitError("engine 'litert': needs the ai-edge-litert package (or tflite-runtime)") from None
    return Interpreter


def make_interpreter(model: bytes, threads: int = 1):
    """A LiteRT interpreter (default delegates, i.e. XNNPACK) for flatbuffer bytes, tensors allocated."""
    if int(threads) < 1:
        raise PisplitError(f"engine 'litert': threads must be at least 1, got {threads}")
    try:
        interpreter = interpreter_class()(model_content=model, num_threads=int(threads))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise PisplitError(f"engine 'litert': the interpreter rejected the model ({str(exc).strip()})") from None
    return interpreter


class LiteRTEngine:
    """Runs one graph in a LiteRT interpreter; `run(feeds)` returns its outputs as float32 arrays (int8
    outputs of an int8 graph as int8)."""

    name = "litert"

    def __init__(self, graph: Graph, threads: int | None = None):
        self.graph = graph
        self.threads = 1 if threads is None else int(threads)
        if self.threads < 1:
            raise PisplitError(f"engine 'litert': threads must be at least 1, got {threads}")
        # a flatten before dense layers is left to FULLY_CONNECTED (no RESHAPE copy a frame, as converters write
        # it); a TILE goes in as CONCATENATIONs, which XNNPACK runs (TILE split its graph into several delegates)
        self.model = export_tflite(fold_batchnorm(graph), flatten_into_dense=True, tile_as_concat=True)
        self.interpreter = make_interpreter(self.model, self.threads)
        self._inputs = [d["index"] for d in self.interpreter.get_input_details()]
        self._outputs = [d["index"] for d in self.interpreter.get_output_details()]
        # the batch the interpreter holds: the graph's own (1, or a one-frame graph's data axis, e.g. (50, 128))
        self._batch = int(next(iter(graph.inputs.values()))[0]) if graph.inputs else 1
        # a node that moves the batch axis (issue 19, layers.ops.batch1_only) makes the graph one frame's
        self._one_frame = next((n for n in graph.nodes if n.attrs.get("batch1")), None)
        # per input, what a frame's array must be to go to the interpreter as it is (run's fast path):
        # its dtype (float32, or an int8 input's integer type) and its shape at the current batch
        self._dtypes = [graph.dtype(name) for name in graph.inputs]
        self._shapes = [tuple(shape) for shape in graph.inputs.values()]
        self._fed = list(zip(graph.inputs, self._inputs, self._dtypes, self._shapes))
        self._read = list(zip(graph.outputs, self._outputs))
        self._set = self.interpreter.set_tensor
        self._get = self.interpreter.get_tensor

    def _resize(self, batch: int) -> None:
        try:
            for name, index in zip(self.graph.inputs, self._inputs):
                self.interpreter.resize_tensor_input(index, [batch, *self.graph.inputs[name][1:]])
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:  # e.g. "XNNPack delegate failed to reshape runtime"
            raise PisplitError(f"model {self.graph.name}: LiteRT cannot run a batch of {batch} frames "
                               f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
        self._batch = batch
        self._shapes = [(batch, *shape[1:]) for shape in self.graph.inputs.values()]
        self._fed = list(zip(self.graph.inputs, self._inputs, self._dtypes, self._shapes))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # the per-frame path: every input already a C-contiguous array of its dtype and of the shape the
        # interpreter holds (the batch of the previous frame) goes in as it is; anything else (another
        # dtype, batch or shape, a missing input, a list) takes _checked, which converts and validates it
        # as before. The checks are the same: an array passing these is what _checked would hand on.
        set_tensor = self._set
        for name, index, dtype, shape in self._fed:
            x = feeds.get(name)
            if type(x) is not np.ndarray or x.dtype != dtype or x.shape != shape or not x.flags.c_contiguous:
                self._checked(feeds)
                break
            set_tensor(index, x)
        self.interpreter.invoke()
        get_tensor = self._get
        return {t: get_tensor(index) for t, index in self._read}

    def _checked(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Validate and convert every input (dtype, shape, batch), resize the interpreter to a new batch,
        and set the inputs."""
        arrays = []
        for name, shape in self.graph.inputs.items():
            if name not in feeds:
                raise PisplitError(f"model {self.graph.name}: input {name!r} (shape {shape}) was not given")
            # float32, or an int8 input's integers (int8 graphs run LiteRT's integer kernels)
            x = np.ascontiguousarray(self.graph._as_tensor(name, feeds[name]) if name in self.graph.quant else
                                     np.asarray(feeds[name], dtype=np.float32))
            if x.ndim != len(shape) or x.shape[1:] != tuple(shape[1:]):
                raise PisplitError(f"model {self.graph.name}: input {name!r} has shape {x.shape}, expected {shape}")
            arrays.append(x)
        batch = arrays[0].shape[0] if arrays else 1
        if batch < 1:
            raise PisplitError(f"model {self.graph.name}: input {next(iter(self.graph.inputs))!r} holds no frame (axis 0 is 0)")
        if self._one_frame is not None and any(x.shape[0] != shape[0] for x, shape in zip(arrays, self.graph.inputs.values())):
            n = self._one_frame
            raise PisplitError(f"model {self.graph.name}: node {n.name} ({n.op}) treats the batch axis as a data axis (imported for "
                               f"one frame at a time); it runs on one frame only, got {batch} on axis 0")
        if batch != self._batch:
            self._resize(batch)
        for index, x in zip(self._inputs, arrays):
            self.interpreter.set_tensor(index, x)
