"""scripts/bench_int8 (issue 12), briefly: one architecture in float32 and int8 from the corpus
(scripts/build_corpus), its engines side by side and its 2 x Pi 3B+ plans; the numbers are not judged,
the int8 link bytes are (a quarter of float32's at the same cut)."""
from __future__ import annotations

import importlib.util

import pytest

from tests.cluster.test_bench import bench
from tests.conftest import require
from tests.layers.test_int8_corpus import CORPUS

pytestmark = pytest.mark.litert


@pytest.mark.skipif(not (CORPUS / "mobilenet_v2_int8.tflite").exists(), reason=f"no corpus in {CORPUS} (bash scripts/build_corpus)")
def test_bench_int8_smoke():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    out = bench("bench_int8", "--models", "mobilenet_v2_float32,mobilenet_v2_int8", "--plan-models", "mobilenet_v2",
                "--repeat", "1", "--devices", "rpi3:2").stdout
    lines = out.splitlines()
    assert any(l.startswith("mobilenet_v2_int8 ") for l in lines) and any(l.startswith("mobilenet_v2     int8") for l in lines)
    plans = {tuple(l.split()[:2]): l.split() for l in lines if l.startswith("mobilenet_v2_") and len(l.split()) >= 6
             and l.split()[1] in ("numpy", "litert")}
    assert ("mobilenet_v2_float32", "numpy") in plans and ("mobilenet_v2_int8", "litert") in plans
    for engine in ("numpy", "litert"):
        f, q = int(plans[("mobilenet_v2_float32", engine)][5]), int(plans[("mobilenet_v2_int8", engine)][5])
        if f and q and plans[("mobilenet_v2_float32", engine)][4] == plans[("mobilenet_v2_int8", engine)][4]:
            assert q < f  # int8 links carry fewer bytes
