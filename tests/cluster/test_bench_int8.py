"""scripts/bench_int8 (issue 12), briefly: one architecture in float32 and int8 from the corpus
(scripts/build_corpus), its engines side by side, its 2 x Pi 3B+ plans and the same cluster emulated
(a few frames); the speeds are not judged, the int8 link bytes are (a quarter of float32's at the same
cut), and every frame of an emulated run comes out."""
from __future__ import annotations

import importlib.util

import pytest

from tests.cluster.test_bench import bench
from tests.conftest import require
from tests.layers.test_int8_corpus import CORPUS

pytestmark = pytest.mark.litert


def sections(out: str) -> dict:
    """The bench's tables by their first words: {'one', 'int8', 'predicted', 'emulated'} -> rows (split)."""
    tables: dict = {}
    current = None
    for line in out.splitlines():
        if not line.strip():
            current = None
        elif current is None:
            current = line.split()[0]
            tables[current] = []
        else:
            tables[current].append(line.split())
    return tables


@pytest.mark.skipif(not (CORPUS / "mobilenet_v2_int8.tflite").exists(), reason=f"no corpus in {CORPUS} (bash scripts/build_corpus)")
def test_bench_int8_smoke():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    out = bench("bench_int8", "--models", "mobilenet_v2_float32,mobilenet_v2_int8", "--plan-models", "mobilenet_v2",
                "--repeat", "1", "--devices", "rpi3:2", "--emulate-models", "mobilenet_v2", "--forms", "float32,int8",
                "--emulate-frames", "4").stdout
    tables = sections(out)
    assert {"one", "int8", "predicted", "emulated"} <= set(tables), out
    assert any(r[0] == "mobilenet_v2_int8" for r in tables["one"]) and any(r[:2] == ["mobilenet_v2", "int8"] for r in tables["int8"])
    plans = {tuple(r[:2]): r for r in tables["predicted"] if r[0].startswith("mobilenet_v2_")}
    assert ("mobilenet_v2_float32", "numpy") in plans and ("mobilenet_v2_int8", "litert") in plans
    for engine in ("numpy", "litert"):
        f, q = plans[("mobilenet_v2_float32", engine)], plans[("mobilenet_v2_int8", engine)]
        if int(f[5]) and int(q[5]) and f[4] == q[4]:
            assert int(q[5]) < int(f[5])  # int8 links carry fewer bytes
    # model engine frames/s predicted measured/pred p50 stages bytes MiB MiB-predicted [int8/float32]
    emulated = {r[0]: r for r in tables["emulated"] if r[0].startswith("mobilenet_v2_")}
    assert set(emulated) == {"mobilenet_v2_float32", "mobilenet_v2_int8"}, out
    for r in emulated.values():
        assert r[1] == "litert" and float(r[2]) > 0 and float(r[3]) > 0 and float(r[4]) > 0 and float(r[8]) > 0 and float(r[9]) > 0
    f, q = emulated["mobilenet_v2_float32"], emulated["mobilenet_v2_int8"]
    assert float(q[-1]) == pytest.approx(float(q[2]) / float(f[2]), rel=0.01)  # the int8/float32 column
    if f[6] == q[6] and int(f[7]):  # the same number of stages: int8 sends at most a quarter of the bytes (+ headers)
        assert int(q[7]) < int(f[7]) / 3
