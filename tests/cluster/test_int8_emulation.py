"""Emulating int8 devices (issue 12): one emulated device computing a whole int8 model is padded to the
planner's price of it. The emulator pads a stage's host CPU seconds by device_slowdown x
int8_stage_dilation / host speed, where the host speed (cluster.host_speed) is this machine's seconds over
the reference profile's `model_seconds`; the planner prices the same stage at the sum of
Calibration.node_seconds(kind) x scale. The two agree only if `model_seconds` prices int8 nodes as the
reference host runs them (before, it priced them as float32 nodes, so the host's x3.3 int8 gain on litert
was divided out twice: one emulated Pi 3B+ ran int8 MobileNetV2 at x0.28 of its calibration). These are
identities of the pricing, not timings."""
from __future__ import annotations

import pytest

from layers.tflite import import_tflite_bytes
from layers.zoo import zoo_model
from partitioners.profiles import Calibration, class_dilation, device_slowdown, int8_dilation, int8_speedup, int8_stage_dilation
from tests.layers.int8_split_models import int8_split_graph, int8_split_model


@pytest.mark.parametrize("engine", ["numpy", "litert"])
@pytest.mark.parametrize("float_io", [False, True])
def test_one_emulated_int8_device_is_padded_to_the_planner_price(engine, float_io):
    graph = int8_split_graph(float_io=float_io)
    calibration = Calibration(engine)
    n = len(graph)
    assert any(node.attrs.get("quantized") for node in graph.nodes)
    # what cluster.host_speed compares this machine with: the host's price of every node
    host = calibration.base.model_seconds(graph)
    assert host == pytest.approx(sum(calibration.node_seconds("host", graph, i) for i in range(n)))
    for kind in ("rpi3", "rpi4", "rpi5"):
        profile, scale = calibration.resolve(kind)
        planned = sum(calibration.node_seconds(kind, graph, i) for i in range(n)) * scale
        # a machine `speed` times slower than the reference runs the model in host x speed CPU seconds;
        # the emulator pads it by slowdown x int8 dilation / speed: the planner's seconds, whatever the speed
        for speed in (0.5, 1.0, 3.0):
            padded = (host * speed * device_slowdown(kind, engine) * int8_stage_dilation(kind, engine, graph, 0, n)
                      * class_dilation(kind, engine, graph, 0, n) / speed)  # litert: per-op-class prices
            assert padded == pytest.approx(planned, rel=1e-9), (kind, speed)


@pytest.mark.parametrize("engine", ["numpy", "litert"])
def test_stage_dilation_weights_int8_and_float_nodes(engine):
    full = int8_dilation("rpi3", engine)
    floats = zoo_model("lenet5")
    assert int8_stage_dilation("rpi3", engine, floats, 0, len(floats)) == 1.0  # no int8 node: no extra padding
    graph = int8_split_graph(float_io=True)
    assert all(node.attrs.get("quantized") for node in graph.nodes)
    assert int8_stage_dilation("rpi3", engine, graph, 0, len(graph)) == pytest.approx(full)
    # a stage mixing float nodes with int8 ones (a graph of our own: the cached one is shared)
    mixed = import_tflite_bytes(int8_split_model(True), name="int8_split_mixed")
    for i in (0, len(mixed) - 1):  # QUANTIZE and DEQUANTIZE priced as float nodes
        mixed.nodes[i].attrs.pop("quantized")
    calibration = Calibration(engine)
    seconds = [calibration.node_seconds("host", mixed, i) for i in range(len(mixed))]
    quantized = [bool(node.attrs.get("quantized")) for node in mixed.nodes]
    want = sum(s * (full if q else 1.0) for s, q in zip(seconds, quantized)) / sum(seconds)
    assert int8_stage_dilation("rpi3", engine, mixed, 0, len(mixed)) == pytest.approx(want)
    assert int8_stage_dilation("rpi3", engine, mixed, 0, 1) == 1.0
    if engine == "litert":  # the host's int8 gain is larger than a Pi's: int8 nodes are padded more, float ones not
        assert int8_speedup("host", engine) > int8_speedup("rpi3", engine)
        assert 1.0 < want < full


def test_a_tflite_rank_imports_its_reader_before_the_memory_baseline(tmp_path):
    """A .tflite plan's rank imports the model reader (flatbuffer schema, int8 kernels) and, for the
    litert engine, LiteRT's interpreter before it takes its memory baseline (runtime.preload_model_code):
    17 MiB of code that counted as the shard's memory (an int8 MobileNetV2 rank predicted 4.6 MiB,
    measured 21 before its first frame). A fresh interpreter: nothing of it is loaded before."""
    import subprocess
    import sys

    from tests.cluster.pipeline_plans import hand_plan

    model = tmp_path / "int8.tflite"
    model.write_bytes(int8_split_model())
    graph = int8_split_graph()
    path = hand_plan(graph, [(0, len(graph), [0], "single")], model=str(model)).save(tmp_path / "plan.json")
    code = ("import sys\nfrom partitioners.plan import Plan\nfrom cluster.runtime import preload_model_code\n"
            "mods = ('ai_edge_litert.schema_py_generated', 'layers.qkernels', 'ai_edge_litert.interpreter')\n"
            "before = [m in sys.modules for m in mods]\n"
            f"preload_model_code(Plan.load({str(path)!r}), sys.argv[1])\n"
            "print(before, [m in sys.modules for m in mods])\n")
    for engine, want in (("numpy", [True, True, False]), ("litert", [True, True, True])):
        out = subprocess.run([sys.executable, "-c", code, engine], capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"{[False, False, False]} {want}", (engine, out)
