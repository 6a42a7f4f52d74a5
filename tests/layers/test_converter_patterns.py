"""Converter patterns (issue 12): kernels of the new ops against naive loops, shape arithmetic folded at
import, scalar constants, unsupported ops named with the tensor they write, and a plan over three
devices of a model that uses them. Each op is also compared with the LiteRT interpreter in
tests/layers/test_tflite_import.py (tflite_models.CONVERTER_CASES joins its CASES)."""
from __future__ import annotations

import importlib.util
import itertools
import json

import numpy as np
import pytest

from layers import PisplitError, kernels as K
from layers.tflite import _fold_values, _strided_slice_ranges, import_tflite_bytes
from tests.conftest import require, run_pisplit

from .tflite_models import CONVERTER_CASES, Model, conv, transpose_conv

pytestmark = pytest.mark.litert


@pytest.fixture(autouse=True)
def _schema():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")


def transpose_conv_naive(x, kernel, bias, strides, out_size, padding):
    """Every input pixel times every kernel tap added to its output pixel, then the crop."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    pads = K.transpose_conv_pads((h, w), (kh, kw), strides, out_size, padding)
    y = np.zeros((n, *out_size, cout))
    for b, i, j, a, c in itertools.product(range(n), range(h), range(w), range(kh), range(kw)):
        r, s = i * strides[0] + a - pads[0], j * strides[1] + c - pads[1]
        if 0 <= r < out_size[0] and 0 <= s < out_size[1]:
            y[b, r, s] += x[b, i, j].astype(np.float64) @ kernel[a, c]
    return y + (0 if bias is None else bias)


@pytest.mark.parametrize("hw, k, strides, out_size, padding", [
    ((3, 4), 3, (2, 2), (6, 8), "same"), ((3, 4), 4, (2, 3), (8, 12), "valid"), ((4, 3), 3, (1, 1), (4, 3), "same"),
    ((3, 3), 2, (2, 2), (7, 7), "valid"),  # output one larger than the scatter reaches: zeros and bias there
])
def test_transpose_conv_kernel_matches_naive_loops(hw, k, strides, out_size, padding):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    kernel = rng.standard_normal((k, k, 3, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    got = K.conv2d_transpose(x, kernel, bias, strides, out_size, padding)
    np.testing.assert_allclose(got, transpose_conv_naive(x, kernel, bias, strides, out_size, padding), rtol=1e-5, atol=1e-5)


def test_strided_slice_ranges_and_kernel_match_index_loops():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 7, 6, 5)).astype(np.float32)
    for begin, end, strides, bm, em, shrink in [([0, 1, -5, 0], [0, -1, 6, 3], [1, 2, 1, 1], 1, 1, 0),
                                                ([0, 6, 0, -1], [0, 0, 0, 0], [1, -2, 1, 1], 5, 5, 8),
                                                ([0, -100, 100, 0], [0, 100, -100, 5], [1, 3, -1, 2], 1, 1, 0)]:
        ranges, shrunk = _strided_slice_ranges(x.shape, begin, end, strides, bm, em, shrink)
        assert ranges[0] == (0, 1, 2)
        out = [c for d, (_, _, c) in enumerate(ranges) if d not in shrunk]
        got = K.strided_slice(x, [r[0] for r in ranges[1:]], [r[1] for r in ranges[1:]], [r[2] for r in ranges[1:]], out[1:])
        index = [list(range(s, s + st * c, st)) for s, st, c in ranges]
        want = np.array([x[i] for i in itertools.product(*index)]).reshape(out)
        np.testing.assert_array_equal(got, want)


def test_depth_to_space_and_tile_match_index_loops():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 3, 12)).astype(np.float32)
    got = K.depth_to_space(x, 2)
    for n, h, w, i, j, c in itertools.product(range(2), range(2), range(3), range(2), range(2), range(3)):
        assert got[n, h * 2 + i, w * 2 + j, c] == x[n, h, w, (i * 2 + j) * 3 + c]
    t = K.tile(x[:, :, :, :2], [2, 1, 3])
    for n, h, w, c in itertools.product(range(2), range(4), range(3), range(6)):
        assert t[n, h, w, c] == x[n, h % 2, w, c % 2]


def test_folding_semantics():
    shape = np.array([1, 7, 9, 16], np.int32)
    assert _fold_values("STRIDED_SLICE", [shape, np.array([0]), np.array([1]), np.array([1])],
                        {"beginMask": 0, "endMask": 0, "shrinkAxisMask": 1}, [()])[0].shape == ()
    assert _fold_values("GATHER", [shape, np.array([2, 1])], {"axis": 0}, [(2,)])[0].tolist() == [9, 7]
    assert _fold_values("PACK", [np.int32(1), np.int32(-1), np.int32(16)], {"axis": 0}, [(3,)])[0].tolist() == [1, -1, 16]
    assert _fold_values("REDUCE_PROD", [shape[1:3], np.array([0])], {"keepDims": False}, [()])[0] == 63
    assert _fold_values("DIV", [np.array([7, -7], np.int32), np.array([2, 2], np.int32)], {}, [(2,)])[0].tolist() == [3, -3]
    with pytest.raises(IndexError):
        _fold_values("GATHER", [shape, np.array([4])], {"axis": 0}, [(1,)])


def test_shape_chain_folds_to_plain_nodes():
    graph = import_tflite_bytes(CONVERTER_CASES["shape_chain_reshape_gather"]())
    ops = [n.op for n in graph.nodes]
    assert "shape" not in ops and ops.count("reshape") == 2  # SHAPE, STRIDED_SLICE, PACK, GATHER, ... left no node
    assert graph.shapes[graph.outputs[0]] == (1, 20, 3)


def test_scalar_constant_keeps_its_shape():
    graph = import_tflite_bytes(CONVERTER_CASES["scalar_rescaling_conv"]())
    mul = next(n for n in graph.nodes if n.op == "mul")
    assert graph.node_weights(mul)["constant"].shape == () and mul.weight_shapes["constant"] == ()


def _unsupported(op, build):
    m = Model(0)
    x = m.input((1, 6, 6, 3))
    y = conv(m, x, 4, 3)
    return m.finish(build(m, y))


@pytest.mark.parametrize("op, build", [
    ("FLOOR", lambda m, y: m.op("FLOOR", [y], (1, 6, 6, 4), name="floor_out")),
    ("GATHER", lambda m, y: m.op("GATHER", [y, m.const([0, 2])], (1, 6, 6, 2), m.opts("GatherOptions", axis=3), name="gather_out")),
    ("RELU", lambda m, y: m.op("RELU", [m.op("SPACE_TO_BATCH_ND", [y, m.const([2, 2]), m.const([[0, 0], [0, 0]])], (4, 3, 3, 4))],
                               (4, 3, 3, 4), name="relu_out")),  # only a dilated convolution may read SPACE_TO_BATCH_ND
])
def test_unsupported_op_names_op_and_tensor(op, build):
    with pytest.raises(PisplitError, match=rf"\({op}\) writing tensor '\w+_out': op {op} (is|reads)"):
        import_tflite_bytes(_unsupported(op, build))
    if op == "RELU":  # the batch-folded tensor as a graph output
        with pytest.raises(PisplitError, match="graph output 's2b' is written inside SPACE_TO_BATCH_ND"):
            import_tflite_bytes(_unsupported(op, lambda m, y: m.op("SPACE_TO_BATCH_ND", [y, m.const([2, 2]), m.const([[0, 0], [0, 0]])],
                                                                   (4, 3, 3, 4), name="s2b")))


def test_sparse_constant_with_bad_segments_is_a_clear_error():
    from layers.tflite import schema_module

    model = bytearray(CONVERTER_CASES["densify_float16_conv"]())
    S = schema_module()
    obj = S.ModelT.InitFromObj(S.Model.GetRootAs(bytes(model), 0))
    sparse = next(t for t in obj.subgraphs[0].tensors if t.sparsity is not None)
    sparse.sparsity.dimMetadata[3].arraySegments.values = [0, 250] + list(sparse.sparsity.dimMetadata[3].arraySegments.values[2:])
    import flatbuffers

    b = flatbuffers.Builder(0)
    b.Finish(obj.Pack(b), file_identifier=b"TFL3")
    with pytest.raises(PisplitError, match="sparse constant tensor"):
        import_tflite_bytes(bytes(b.Output()))


def new_ops_model() -> bytes:
    m = Model(7)
    x = m.input((1, 24, 24, 8))
    y = conv(m, x, 32, 3, act="relu")
    y = transpose_conv(m, y, 16, 3, 2, "same", (48, 48), act="relu")
    y = m.op("STRIDED_SLICE", [y, m.const([0, 2, 1, 0]), m.const([0, -2, 47, 16]), m.const([1, 1, 1, 1])], (1, 44, 46, 16),
             m.opts("StridedSliceOptions", beginMask=1, endMask=1))
    y = m.op("TILE", [y, m.const([1, 1, 1, 2])], (1, 44, 46, 32))
    y = m.op("DEPTH_TO_SPACE", [y], (1, 88, 92, 8), m.opts("DepthToSpaceOptions", blockSize=2))
    y = conv(m, y, 16, 3, stride=2, act="relu")
    return m.finish(y)


def test_plan_over_three_devices_with_new_ops(tmp_path):
    """TRANSPOSE_CONV, STRIDED_SLICE, TILE and DEPTH_TO_SPACE run whole on one rank (no split rule), the
    convolutions around them keep theirs: the planner prices and places every node."""
    (tmp_path / "decoder.tflite").write_bytes(new_ops_model())
    for planner in ("dp", "paper"):
        doc = json.loads(run_pisplit("plan", tmp_path / "decoder.tflite", "--devices", "rpi3:3", "--link", "1gbit",
                                     "--planner", planner, "--json").stdout)
        covered = sorted(i for s in doc["stages"] for i in range(s["node_start"], s["node_stop"]))
        assert covered == list(range(doc["n_nodes"]))


@pytest.mark.mpi
def test_three_rank_run_of_new_ops_equals_litert(tmp_path):
    """The plan over three ranks (the paper planner: three pipeline stages) runs under mpirun; every
    frame equals the LiteRT interpreter."""
    import sys

    from tests.cluster.test_split_mpi import run_mpi

    from .test_tflite_import import litert_outputs

    model = new_ops_model()
    (tmp_path / "m.tflite").write_bytes(model)
    x = np.random.default_rng(2).standard_normal((2, 24, 24, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_pisplit("plan", tmp_path / "m.tflite", "--devices", "rpi3:3", "--planner", "paper", "--output", tmp_path / "p.json")
    assert len({r for s in json.loads((tmp_path / "p.json").read_text())["stages"] for r in s["ranks"]}) == 3
    proc = run_mpi(3, [sys.executable, "-m", "cluster.cli", "run", tmp_path / "p.json", "--input", tmp_path / "x.npy",
                       "--frames", "2", "--output", tmp_path / "y.npz"])
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "y.npz") as y:
        for row, frame in enumerate(y["frame_ids"]):
            want = litert_outputs(model, [x[frame % 2][None]])[0][0]
            np.testing.assert_allclose(y["output_0"][row], want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_new_ops_are_not_split_and_open_input_sizes_are_refused():
    from layers.tflite_export import TfliteWriter
    from partitioners.splits import split_layer

    graph = import_tflite_bytes(new_ops_model())
    for node in graph.nodes:
        if node.op in ("conv2d_transpose", "strided_slice", "tile", "depth_to_space"):
            for kind in ("conv-channel", "conv-spatial", "conv-filter"):
                with pytest.raises(PisplitError, match=rf"kind {kind} does not apply to a {node.op} node"):
                    split_layer(graph, node.name, kind, 2)
    w = TfliteWriter()
    x = w.tensor("image", (1, 1, 1, 3))
    w.tensors[x].shapeSignature = [-1, -1, -1, 3]
    y = w.tensor("y", (1, 1, 1, 3))
    w.operator("RELU", [x], [y])
    with pytest.raises(PisplitError, match=r"graph input 'image' leaves dimensions after the batch open \(shape signature \[-1, -1, -1, 3\]\)"):
        import_tflite_bytes(w.finish([x], [y]))
