"""The TensorFlow converter's int8 patterns that pisplit once refused (issue 12), on the converter's own
models (scripts/build_corpus: conv1d_int8, decoder_int8, decoder_fixed_batch_int8 in
${XDG_CACHE_HOME:-~/.cache}/pisplit-corpus; tests/layers/test_int8_corpus.py runs each whole model against
LiteRT's default interpreter and reference kernels too):

- a dilated Conv1D, written SPACE_TO_BATCH_ND -> EXPAND_DIMS -> CONV_2D -> RESHAPE -> BATCH_TO_SPACE_ND,
  imports as one dilated int8 convolution (pad with the zero point, dilated conv, crop);
- TRANSPOSE_CONV on int8 tensors (layers.qkernels.qconv2d_transpose). LiteRT's default interpreter runs
  TFLite's optimized kernel when the output shape is computed (the Keras converter's SHAPE -> PACK) and
  XNNPACK's deconvolution when it is a constant (a fixed batch): each node alone equals it bit for bit in
  the default arithmetic, and the reference kernels (BUILTIN_REF) in the reference one;
- their splits equal the unsplit segments bit for bit (TRANSPOSE_CONV is split only by frames).
Skipped when the corpus has not been built (the converter needs TensorFlow, never a pisplit dependency)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from layers import load_model
from layers.engine import make_engine
from layers.graph import Graph
from layers.qkernels import int8_arithmetic
from layers.tflite_export import export_tflite
from partitioners.splits import legal_kinds, split_layer

from .test_int8_corpus import CORPUS
from .test_int8_kernels import interpreter_outputs

pytestmark = pytest.mark.litert


def corpus_model(name: str):
    path = CORPUS / f"{name}.tflite"
    if not path.exists():
        pytest.skip(f"{path} is not built (bash scripts/build_corpus builds it)")
    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert is not installed")
    return path, load_model(str(path))


def test_int8_dilated_conv1d_imports_as_one_dilated_convolution():
    path, graph = corpus_model("conv1d_int8")
    dilated = [n for n in graph.nodes if n.op == "conv2d" and n.attrs.get("dilation") != [1, 1]]
    assert len(dilated) == 1 and dilated[0].attrs["dilation"] == [1, 2] and dilated[0].attrs["quantized"]
    pad = graph.nodes[graph.node_index(dilated[0].name) - 2]  # pad, reshape (EXPAND_DIMS), the conv
    assert pad.op == "pad" and pad.attrs["quantized"]
    data = path.read_bytes()
    feeds = graph.random_input(3)
    with int8_arithmetic("reference"):
        got = make_engine(graph, "numpy").run(feeds)[graph.outputs[0]]
    want = interpreter_outputs(data, list(feeds.values()))[0]
    assert np.unique(want).size >= 3 and np.array_equal(got, want)
    # the padding is really there and is not 0 in int8 (the zero point fills it, as SPACE_TO_BATCH_ND's)
    assert any(a or b for a, b in pad.attrs["paddings"]) and graph.meta["quant"][pad.outputs[0]]["zero_point"][0] != 0


def _node_alone(graph: Graph, node) -> Graph:
    """One node of `graph` as its own graph (its input, weights and quantization)."""
    x = node.inputs[0]
    return Graph(f"{graph.name}/{node.name}", {x: graph.shapes[x]}, [node], [node.outputs[0]], graph.weights, graph.meta)


@pytest.mark.parametrize("model", ["decoder_int8", "decoder_fixed_batch_int8"])
def test_int8_transpose_conv_alone_equals_litert_in_both_arithmetics(model):
    """Each TRANSPOSE_CONV node on the whole model's own input to it, written alone as a model: the numpy
    engine equals the default interpreter (default arithmetic) and BUILTIN_REF (reference arithmetic) bit
    for bit; the two arithmetics differ somewhere (the test tells them apart). The decoder's own file
    cannot be checked whole against BUILTIN_REF: its int8 TILE (version 3) is not among the reference kernels."""
    path, graph = corpus_model(model)
    nodes = [n for n in graph.nodes if n.op == "conv2d_transpose"]
    assert len(nodes) == 2 and all(n.attrs["quantized"] for n in nodes)
    assert all(bool(n.attrs.get("shape_constant")) == model.startswith("decoder_fixed") for n in nodes)
    differ = 0
    for node in nodes:
        alone = _node_alone(graph, node)
        data = export_tflite(alone)
        for seed in (0, 1):
            env = graph.execute(graph.random_input(seed), 0, graph.node_index(node.name))
            x = env[node.inputs[0]]
            runs = {}
            for mode, resolver in (("xnnpack", "AUTO"), ("reference", "BUILTIN_REF")):
                with int8_arithmetic(mode):
                    runs[mode] = make_engine(alone, "numpy").run({node.inputs[0]: x})[node.outputs[0]]
                want = interpreter_outputs(data, [x], resolver)[0]
                assert np.unique(want).size >= 20
                assert np.array_equal(runs[mode], want), \
                    f"{node.name} ({mode}): {int((runs[mode] != want).sum())} of {want.size} outputs differ from {resolver}"
            differ += int((runs["xnnpack"] != runs["reference"]).sum())
    assert differ > 0


def test_int8_pattern_splits_equal_the_unsplit_segments():
    """Every legal split of the dilated conv (uneven parts) and of the decoder's layers around its
    TRANSPOSE_CONVs equals the unsplit segment bit for bit; TRANSPOSE_CONV itself splits only by frames."""
    _, conv1d = corpus_model("conv1d_int8")
    _, decoder = corpus_model("decoder_int8")
    dilated = next(n.name for n in conv1d.nodes if n.op == "conv2d" and n.attrs.get("dilation") == [1, 2])
    tconvs = [n.name for n in decoder.nodes if n.op == "conv2d_transpose"]
    assert all(legal_kinds(decoder, t) == ("data-parallel",) for t in tconvs)
    cases = [(conv1d, dilated, k) for k in legal_kinds(conv1d, dilated)]
    cases += [(decoder, decoder.nodes[0].name, k) for k in ("conv-channel", "conv-spatial", "conv-filter")]
    cases += [(decoder, t, "data-parallel") for t in tconvs]
    for graph, layer, kind in cases:
        options = {"axis": "cols"} if graph is conv1d and kind in ("conv-spatial", "fused-tiles") else {}  # a Conv1D: H = 1
        split = split_layer(graph, layer, kind, 3 if kind == "data-parallel" else (0.5, 0.3, 0.2), **options)
        frames = 3 if kind == "data-parallel" else 1
        envs = [graph.execute(graph.random_input(10 + f), 0, split.node_start) for f in range(frames)]
        x = {t: np.concatenate([e[t] for e in envs]) for t in split.inputs}
        want = split.reference(x)
        got = split.run(x)
        assert want.dtype == np.int8 and np.unique(want).size >= 10
        assert np.array_equal(got, want), f"{layer} {kind}: {int((got != want).sum())} of {want.size} values differ"
