""".tflite import: every supported op with non-trivial options, read by pisplit and run with the numpy
kernels, equals the LiteRT interpreter on the same file (API and `pisplit infer`)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from layers import load_model
from layers.tflite import SUPPORTED_OPS, import_tflite
from tests.conftest import require, run_pisplit, varied

from .tflite_models import CASES, chain_model

pytestmark = pytest.mark.litert


@pytest.fixture(autouse=True)
def _litert():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")


def litert_outputs(model: bytes, feeds: list[np.ndarray]) -> list[np.ndarray]:
    """The plain LiteRT interpreter (default delegates, XNNPACK) on flatbuffer bytes."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def feeds_for(graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: varied(rng.standard_normal(s).astype(np.float32) * 2) for k, s in graph.inputs.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_litert(case, tmp_path):
    model = CASES[case]()
    path = tmp_path / f"{case}.tflite"
    path.write_bytes(model)
    graph = import_tflite(path)
    feeds = feeds_for(graph, seed=len(case))
    want = litert_outputs(model, list(feeds.values()))
    got = graph.execute(feeds)
    assert len(want) == len(graph.outputs)
    for t, w in zip(graph.outputs, want):
        assert_close(got[t], w)


def test_cases_cover_every_supported_op():
    from ai_edge_litert import schema_py_generated as S

    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    seen = set()
    for make in [*CASES.values(), chain_model]:
        model = S.Model.GetRootAs(make() if make is not chain_model else make(), 0)
        seen |= {names[model.OperatorCodes(i).BuiltinCode()] for i in range(model.OperatorCodesLength())}
    # SQUEEZE (a reshape) and LOCAL_RESPONSE_NORMALIZATION (AlexNet's export) are covered elsewhere, QUANTIZE in
    # the int8 tests (tests/layers/test_int8_kernels.py)
    assert set(SUPPORTED_OPS) - seen <= {"SQUEEZE", "LOCAL_RESPONSE_NORMALIZATION", "QUANTIZE"}


def test_chain_model_keeps_names_weights_and_both_outputs(tmp_path):
    model = chain_model()
    path = tmp_path / "chain.tflite"
    path.write_bytes(model)
    graph = load_model(str(path))
    assert list(graph.inputs) == ["image"] and graph.outputs == ["probabilities", "features_relu"]
    assert graph.node("features").op == "mean"  # tflite tensor names are the node names
    conv = graph.nodes[0]
    assert conv.op == "conv2d" and conv.attrs["strides"] == [2, 2] and conv.attrs["activation"] == "relu"
    assert graph.node_weights(conv)["kernel"].shape == (3, 3, 3, 8)  # OHWI -> HWIO
    depthwise = graph.nodes[1]
    assert depthwise.attrs["groups"] == 8 and depthwise.attrs["dilation"] == [2, 2]
    assert graph.node_weights(depthwise)["kernel"].dtype == np.float32  # float16 behind DEQUANTIZE
    feeds = feeds_for(graph, seed=5)
    got = graph.execute(feeds)
    for t, w in zip(graph.outputs, litert_outputs(model, [feeds["image"]])):
        assert_close(got[t], w)


def pisplit(*args):
    return run_pisplit(*args)

@pytest.mark.parametrize("engine", ["numpy", "litert"])
def test_infer_cli_on_tflite_files(engine, tmp_path):
    rng = np.random.default_rng(11)
    # one output: Y.npy
    single = CASES["depthwise_same_stride2_multiplier2_float16"]()
    (tmp_path / "dw.tflite").write_bytes(single)
    x = varied(rng.standard_normal((1, 9, 9, 3)).astype(np.float32))
    np.save(tmp_path / "x.npy", x)
    doc = json.loads(pisplit("infer", tmp_path / "dw.tflite", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
                             "--engine", engine, "--json").stdout)
    assert doc["engine"] == engine
    assert_close(np.load(tmp_path / "y.npy"), litert_outputs(single, [x])[0])
    # two outputs: an .npz with both, in the model's order
    chain = chain_model(seed=2)
    (tmp_path / "chain.tflite").write_bytes(chain)
    image = varied(rng.standard_normal((16, 16, 3)).astype(np.float32))  # batch axis optional
    np.save(tmp_path / "image.npy", image)
    pisplit("infer", tmp_path / "chain.tflite", "--input", tmp_path / "image.npy", "--output", tmp_path / "out.npz", "--engine", engine)
    with np.load(tmp_path / "out.npz") as out:
        for i, want in enumerate(litert_outputs(chain, [image[None]])):
            assert_close(out[f"output_{i}"], want)
