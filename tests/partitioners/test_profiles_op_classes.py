"""Per-op-class calibration of the litert engine (issue 12): a Pi runs conv and depthwise layers
relatively slower than the reference host does, so rpi3/rpi4 carry scales per op class fitted to ncnn's
published Pi tables (compute.op_classes.litert). These check the recorded fit against the shipped base
profile, the fit itself, and that numpy pricing and profiles giving one reference model are unchanged."""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from layers import load_model
from partitioners import devices
from partitioners.devices import device_profile
from partitioners.profiles import (OP_CLASSES, Calibration, Profile, class_dilation, class_seconds, fit_op_classes, int8_speedup,
                                   op_class, op_class_scales, reference_profile_path)

CORPUS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pisplit-corpus"


@pytest.mark.parametrize("kind", ["rpi3", "rpi4"])
def test_recorded_fit_is_what_the_shipped_base_prices(kind):
    """Every model the device profile lists: its recorded per-class host seconds are the shipped
    host-litert profile's, the recorded prediction is the scales times them, the recorded residual is
    log(predicted / cited), and the planner's calibration prices the graph at that prediction."""
    block = device_profile(kind).compute["op_classes"]["litert"]
    scales = block["scales"]
    assert op_class_scales(kind, "litert") == pytest.approx(scales)
    calibration = Calibration("litert")
    _, scale = calibration.resolve(kind)
    checked = 0
    for entry in block["models"] + block.get("int8_checks", []):  # int8 ones: priced at the kind's int8 rate too
        spec = entry["graph"]
        if spec.endswith(".tflite"):
            if not (CORPUS / spec).exists():
                if os.environ.get("CI") == "true":
                    pytest.fail(f"corpus model {spec} missing under CI (scripts/build_corpus)")
                continue
            spec = str(CORPUS / spec)
        graph = load_model(spec)
        rows = class_seconds(calibration.base, graph, int8_speedup(kind, "litert"))
        assert rows == pytest.approx(entry["base_s"], rel=1e-3, abs=2e-6), entry["model"]
        predicted = sum(scales[c] * entry["base_s"][c] for c in OP_CLASSES)
        assert predicted == pytest.approx(entry["predicted_s"], rel=1e-3)
        assert math.log(predicted / entry["seconds"]) == pytest.approx(entry["residual"], abs=2e-3)
        # the cited seconds are met within the recorded residual
        assert abs(math.log(predicted / entry["seconds"])) <= abs(entry["residual"]) + 2e-3
        assert any(n.attrs.get("quantized") for n in graph.nodes) == (entry in block.get("int8_checks", []))
        planned = scale * sum(calibration.node_seconds(kind, graph, i) for i in range(len(graph)))
        assert planned == pytest.approx(predicted, rel=2e-3), entry["model"]
        checked += 1
    assert checked >= 2
    fitted = [e for e in block["models"] if e["fit"]]
    used = {c for e in fitted for c in OP_CLASSES if e["base_s"][c] > 0}
    assert len(fitted) >= len(used) and any(e["graph"] == block["reference_model"] for e in fitted)


def test_fit_recovers_scales_and_reports_residuals():
    rows = {"a": {"conv": 1.0, "depthwise": 0.0, "fc": 2.0, "matmul": 0.5, "other": 1.0},
            "b": {"conv": 3.0, "depthwise": 1.0, "fc": 0.0, "matmul": 0.0, "other": 0.5},
            "c": {"conv": 1.0, "depthwise": 2.0, "fc": 0.1, "matmul": 0.2, "other": 0.2},
            "d": {"conv": 0.2, "depthwise": 0.1, "fc": 0.1, "matmul": 1.0, "other": 3.0},
            "e": {"conv": 2.0, "depthwise": 0.5, "fc": 1.0, "matmul": 0.0, "other": 1.0},
            "f": {"conv": 0.5, "depthwise": 0.5, "fc": 0.5, "matmul": 2.0, "other": 0.1}}
    truth = {"conv": 10.0, "depthwise": 40.0, "fc": 5.0, "matmul": 7.0, "other": 3.0}
    cited = {m: sum(truth[c] * r[c] for c in OP_CLASSES) for m, r in rows.items()}
    scales, fit = fit_op_classes(rows, cited, prior_scale=8.0, prior_weight=1e-9)
    assert scales == pytest.approx(truth, rel=1e-4)
    assert all(abs(res) < 1e-5 for _, res in fit.values())
    # inconsistent figures: residuals are what they say, the reference model weighted in, scales stay positive
    cited["b"] *= 2.0
    scales, fit = fit_op_classes(rows, cited, prior_scale=8.0, prior_weight=0.01, weights={"a": 10.0})
    assert all(v > 0 for v in scales.values())
    for m, (predicted, res) in fit.items():
        assert predicted == pytest.approx(sum(scales[c] * rows[m][c] for c in OP_CLASSES))
        assert res == pytest.approx(math.log(predicted / cited[m]))
    assert abs(fit["a"][1]) < abs(fit["b"][1])
    # a class no model uses stays at the prior (the single reference scale)
    unused = {m: {**r, "depthwise": 0.0} for m, r in rows.items()}
    scales, _ = fit_op_classes(unused, cited, prior_scale=8.0, prior_weight=0.01)
    assert scales["depthwise"] == pytest.approx(8.0)


def test_numpy_pricing_and_reference_only_profiles_keep_one_scale(monkeypatch):
    graph = load_model("mobilenet_v1")
    numpy = Calibration("numpy")
    for kind in ("rpi3", "rpi4", "rpi5"):
        assert numpy.class_scales(kind) is None
        profile, _ = numpy.resolve(kind)
        assert [numpy.node_seconds(kind, graph, i) for i in range(len(graph))] == [profile.node_seconds(graph, i) for i in range(len(graph))]
        assert class_dilation(kind, "numpy", graph, 0, len(graph)) == 1.0
    # litert: depthwise layers dearer than the one AlexNet scale says, the model's price follows
    litert = Calibration("litert")
    classes = litert.class_scales("rpi3")
    _, scale = litert.resolve("rpi3")
    assert classes["depthwise"] > classes["conv"] > scale
    assert classes["matmul"] == pytest.approx(scale, rel=0.02)  # no reference model has one: the AlexNet scale
    dw = next(i for i in range(len(graph)) if op_class(graph, i) == "depthwise")
    assert litert.node_seconds("rpi3", graph, dw) == pytest.approx(litert.base.node_seconds(graph, dw) * classes["depthwise"] / scale)
    assert litert.class_scales("rpi5") == pytest.approx({c: v / 3.0 for c, v in litert.class_scales("rpi4").items()})
    # a device profile giving only reference_model / reference_seconds (a user's): one scale, as before
    shipped = device_profile("rpi3")
    plain = replace(shipped, compute={k: v for k, v in shipped.compute.items() if k != "op_classes"})
    monkeypatch.setattr(devices, "device_profile", lambda kind: plain if kind == "rpi3" else device_profile(kind))
    user = Calibration("litert")
    assert user.class_scales("rpi3") is None
    profile, single = user.resolve("rpi3")
    assert single == pytest.approx(scale)
    assert [user.node_seconds("rpi3", graph, i) for i in range(len(graph))] == [profile.node_seconds(graph, i) for i in range(len(graph))]


def test_a_measured_host_base_keeps_one_scale():
    """The class scales are fitted to the shipped host-litert profile's seconds: a plan calibrated on a
    host profile the user measured keeps the single reference-model scale."""
    shipped = Profile.load(reference_profile_path("litert"))
    measured = replace(shipped, source="my-host.json")
    calibration = Calibration("litert", [measured])
    assert calibration.class_scales("rpi3") is None
    assert Calibration("litert").class_scales("rpi3") is not None
    # a Pi 4 measured itself: its seconds as measured, and a Pi 5 (relative to it) divides them, no classes
    pi4 = replace(shipped, kind="rpi4", source="my-pi4.json")
    calibration = Calibration("litert", [pi4])
    graph = load_model("mobilenet_v1")
    assert calibration.class_scales("rpi4") is None and calibration.class_scales("rpi5") is None
    assert calibration.class_scales("rpi3") is not None
    profile, scale = calibration.resolve("rpi5")
    assert profile is pi4 and scale == pytest.approx(1 / 3.0)
    assert calibration.node_seconds("rpi5", graph, 1) == profile.node_seconds(graph, 1)
