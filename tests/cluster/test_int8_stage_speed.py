"""This machine's speed per pipeline stage (issue 12, cluster.host_speed with `nodes`): an x86 host's int8
kernels gain unevenly across layers, so an emulated int8 stage dilates by its own nodes' seconds here
over the reference profile's price of those nodes, not by the whole model's (int8 MobileNetV2 on litert:
4.06 on nodes 0:28, 2.45 on 28:65, 3.25 whole). Real subprocess measurements on a small int8 model."""
from __future__ import annotations

import json

import pytest

from cluster.host_speed import cache_path, host_speed, stage_speeds
from layers.errors import PisplitError
from partitioners.profiles import Calibration
from tests.cluster.pipeline_plans import hand_plan
from tests.layers.int8_split_models import int8_split_graph, int8_split_model


def test_stage_speeds_are_measured_on_the_stages_own_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "int8.tflite"
    model.write_bytes(int8_split_model(float_io=True))
    graph = int8_split_graph(float_io=True)
    n, cut = len(graph), len(graph) // 2
    plan = hand_plan(graph, [(0, cut, [0], "single"), (cut, n, [1], "single")], model=str(model))
    assert host_speed(str(model), 0, "numpy", measure=False, nodes=(0, cut)) is None  # nothing cached yet
    speeds = stage_speeds(plan, "numpy")
    assert set(speeds) == {(0, cut), (cut, n)} and all(s > 0 for s in speeds.values())
    entries = json.loads(cache_path().read_text())
    calibration = Calibration("numpy")
    for (a, b), speed in speeds.items():
        key = next(k for k in entries if k.endswith(f"| nodes {a}:{b}"))
        entry = entries[key]
        # timed on the stage's nodes alone, against the reference host's price of exactly those nodes
        assert entry["model"] == f"{model.stem}[{a}:{b}]"
        assert entry["predicted_s"] == pytest.approx(sum(calibration.node_seconds("host", graph, i) for i in range(a, b)))
        assert entry["speed"] == pytest.approx(entry["measured_s"] / entry["predicted_s"]) == pytest.approx(speed)
        assert host_speed(str(model), 0, "numpy", measure=False, nodes=(a, b)) == speed  # what a rank reads
    assert stage_speeds(plan, "numpy", measure=False) == speeds
    assert not any(k.endswith("seed 0 | median of 8") for k in entries)  # the whole model is cached apart
    with pytest.raises(PisplitError, match=f"nodes 0:{n + 1}: not a range of .* {n} nodes"):
        host_speed(str(model), 0, "numpy", nodes=(0, n + 1))
