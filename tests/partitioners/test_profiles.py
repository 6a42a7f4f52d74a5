"""Profiles: measuring nodes and parts, the latency model, calibration to the shipped Pi profiles, links."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cluster.measure import measure_profile, measure_split_parts
from layers import zoo_model
from layers.errors import PisplitError
from partitioners.devices import DEVICE_KINDS, DEVICE_PROFILE_DIR, device_profile, parse_devices, parse_link_bps
from partitioners.latency_model import LatencyModel, Sample, op_key
from partitioners.profiles import Calibration, Profile, device_slowdown, fit_link, pi_kind, reference_profile_path

from ..conftest import require


@pytest.fixture(scope="module")
def lenet_profile():
    return measure_profile([zoo_model("lenet5")], "numpy", repeat=1, fractions=(0.25, 0.5), measure_parts=measure_split_parts)


def test_profile_measures_every_node_and_split_parts(lenet_profile, tmp_path):
    g = zoo_model("lenet5")
    nodes = lenet_profile.models["lenet5"]
    assert [n.name for n in nodes] == [n.name for n in g.nodes]
    assert all(n.seconds > 0 and n.peak_bytes >= g.cost(i).weight_bytes for i, n in enumerate(nodes))
    conv1, conv2 = nodes[g.node_index("conv1")], nodes[g.node_index("conv2")]
    assert {p.kind for p in conv1.parts} == {"conv-channel", "conv-spatial"}  # one input channel: no filter split
    assert {p.kind for p in conv2.parts} == {"conv-channel", "conv-spatial", "conv-filter"}
    assert {p.fraction for p in conv2.parts if p.kind == "conv-channel"} == {0.25, 0.5}  # 4 and 8 of 16 filters
    fc1 = nodes[g.node_index("fc1")]
    assert {p.kind for p in fc1.parts} == {"fc-output", "fc-input"}
    assert all(0 < p.flops < fc1.flops for p in fc1.parts)
    info = lenet_profile.machine
    assert info["cores"] >= 1 and info["memory_bytes"] > 0 and info["numpy"] == np.__version__ and "litert" in info
    again = Profile.load(lenet_profile.save(tmp_path / "p.json"))
    assert again.models == lenet_profile.models and again.kind == lenet_profile.kind
    # what split parts cost beyond their share, per kind measured and over all (latency_model.SplitOverhead)
    overhead = lenet_profile.split_overhead
    assert {"conv-spatial", "conv-channel", "fc-output", "*"} <= set(overhead) and again.split_overhead == overhead
    assert all(o.samples > 0 and min(o.per_share, o.per_step_s, o.per_node_s) >= 0 for o in overhead.values())
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["format"] == "pisplit-profile" and set(doc["latency_model_error"]) >= {"conv2d", "dense", "*"}


def test_numpy_node_times_come_from_whole_graph_passes(monkeypatch):
    # a node timed alone keeps its weights cached between runs; a rank streaming frames does not
    from cluster import measure

    g = zoo_model("lenet5")
    seen = []

    def stream(graph, repeat):
        seen.append(graph)
        return np.arange(1, len(graph) + 1) * 1e-3

    monkeypatch.setattr(measure, "stream_node_seconds", stream)
    nodes = measure.profile_graph(g, "numpy", repeat=1, fractions=(), nodes=[1, 3])
    assert seen == [g]  # one pass over the whole graph, not one node in isolation
    assert [n.seconds for n in nodes] == [2e-3, 4e-3]


def test_stream_node_seconds_times_each_node_in_sequence():
    from cluster.measure import stream_node_seconds

    g = zoo_model("lenet5")
    seconds = stream_node_seconds(g, repeat=2)
    assert seconds.shape == (len(g),) and np.all(seconds > 0)


def test_profile_uses_measurements_and_predicts_the_rest(lenet_profile):
    g = zoo_model("lenet5")
    i = g.node_index("conv2")
    assert lenet_profile.node_seconds(g, i) == lenet_profile.models["lenet5"][i].seconds
    other = zoo_model("alexnet")
    j = other.node_index("conv1")
    assert lenet_profile.measured_seconds(other, j) is None
    assert lenet_profile.node_seconds(other, j) == pytest.approx(
        lenet_profile.latency.predict("conv2d", other.cost(j).flops, other.cost(j).weight_bytes + other.cost(j).input_bytes + other.cost(j).output_bytes))


def test_profile_with_litert_engine():
    try:
        from layers.engine import make_engine

        make_engine(zoo_model("lenet5"), "litert")
        available = True
    except (PisplitError, ImportError):
        available = False
    require(available, "the LiteRT engine is not available")
    profile = measure_profile([zoo_model("lenet5")], "litert", repeat=1, fractions=(0.5,), measure_parts=measure_split_parts)
    assert profile.engine == "litert" and all(n.seconds > 0 for n in profile.models["lenet5"])


def test_latency_model_recovers_coefficients_and_reports_error():
    rng = np.random.default_rng(7)
    flops = rng.uniform(1e5, 1e9, 40)
    nbytes = rng.uniform(1e3, 1e7, 40)
    assert np.unique(flops).size == 40
    samples = [Sample("conv2d", f, b, 2e-5 + f / 5e10 + b / 4e9) for f, b in zip(flops, nbytes)]
    samples += [Sample("relu", b, b, b / 2e9) for b in nbytes]
    model = LatencyModel.fit(samples)
    fit = model.fits["conv2d"]
    assert fit.fixed_s == pytest.approx(2e-5, rel=1e-6) and fit.per_flop_s == pytest.approx(1 / 5e10, rel=1e-6)
    assert fit.median_error < 1e-9
    assert model.predict("conv2d/depthwise", 1e6, 1e4) == pytest.approx(fit.predict(1e6, 1e4))  # falls back to conv2d
    assert model.predict("never_seen", 1e6, 1e4) == pytest.approx(model.fits["*"].predict(1e6, 1e4))
    assert LatencyModel.from_dict(json.loads(json.dumps(model.to_dict()))).fits == model.fits


def test_latency_model_keeps_coefficients_non_negative():
    # time falls with size here: unconstrained least squares would give a negative slope
    samples = [Sample("pad", 1e6 * k, 1e6 * k, 1e-3 / k) for k in (1, 2, 4, 8)]
    fit = LatencyModel.fit(samples).fits["pad"]
    assert fit.fixed_s >= 0 and fit.per_flop_s >= 0 and fit.per_byte_s >= 0
    assert fit.max_error > 0.1  # and says it fits badly


def test_op_key_tells_depthwise_convs_apart():
    g = zoo_model("mobilenet_v1")
    keys = {op_key(g, i) for i in range(len(g))}
    assert {"conv2d", "conv2d/depthwise"} <= keys


def test_shipped_device_profiles_cite_their_figures():
    assert set(DEVICE_KINDS) == {"rpi3", "rpi4", "rpi5", "host"}
    for kind in DEVICE_KINDS:
        prof = device_profile(kind)
        doc = json.loads((DEVICE_PROFILE_DIR / f"{kind}.json").read_text())
        assert "http" in doc["compute"]["source"] and "http" in doc["link"]["source"]
        assert 0 < prof.reserved_bytes < prof.memory_bytes == DEVICE_KINDS[kind].memory_bytes
    assert device_profile("rpi3").compute["reference_seconds"] == 0.220
    assert device_profile("rpi3").link["paper_network_mbit"] == 94.1
    assert device_profile("rpi4").ethernet_bps == 940e6 and device_profile("rpi3").ethernet_bps == 300e6


def test_calibration_scales_this_machine_to_the_cited_figures():
    cal = Calibration("numpy")
    alexnet = zoo_model("alexnet")
    base = cal.base.model_seconds(alexnet)
    _, s3 = cal.resolve("rpi3")
    _, s4 = cal.resolve("rpi4")
    _, s5 = cal.resolve("rpi5")
    assert base * s3 == pytest.approx(0.220)  # ncnn AlexNet on a Pi 3B+, 4 threads
    assert base * s4 == pytest.approx(0.220 * 73 / 120, rel=1e-3)  # MobileNetV2 120 ms -> 73 ms
    assert s4 / s5 == pytest.approx(3.0)
    assert device_slowdown("rpi3") == pytest.approx(s3)
    assert reference_profile_path("numpy").exists()


def test_profile_measured_on_a_pi_replaces_the_shipped_one():
    base = Calibration("numpy").base
    pi = Profile(kind="rpi3", engine="numpy", models=base.models, latency=base.latency, source="pi.json")
    cal = Calibration("numpy", [pi])
    assert cal.resolve("rpi3") == (pi, 1.0)
    assert cal.resolve("rpi4") == (pi, pytest.approx(1 / 1.6438))
    notes = Calibration("litert", [pi]).notes
    assert any("measured with engine 'numpy'" in n for n in notes)


def test_pi_kind_from_device_tree_model():
    assert pi_kind("Raspberry Pi 3 Model B Plus Rev 1.3") == "rpi3"
    assert pi_kind("Raspberry Pi 4 Model B Rev 1.4") == "rpi4"
    assert pi_kind("Raspberry Pi 5 Model B Rev 1.0") == "rpi5"
    assert pi_kind("x86_64") is None


def test_fit_link_recovers_latency_and_bandwidth():
    sizes = [1024, 65536, 1 << 20, 8 << 20]
    seconds = [2e-4 + s * 8 / 94e6 for s in sizes]
    link = fit_link((0, 1), sizes, seconds)
    assert link.latency_s == pytest.approx(2e-4, rel=1e-6) and link.bandwidth_bps == pytest.approx(94e6, rel=1e-6)


def test_device_and_link_arguments_parse_and_reject_nonsense():
    assert parse_devices("rpi3:4,rpi4:2") == [("rpi3", 4, None), ("rpi4", 2, None)]
    assert parse_devices("RPI5")[0] == ("rpi5", 1, None)
    assert parse_devices("rpi3:2@512M")[0][2] == 512 << 20
    assert parse_link_bps("94mbit") == 94e6 and parse_link_bps("1gbit") == 1e9 and math.isclose(parse_link_bps("0.5Gbit"), 5e8)
    with pytest.raises(PisplitError, match="unknown"):
        parse_devices("rpi9:2")
    with pytest.raises(PisplitError, match="KIND"):
        parse_devices("rpi3:x")
    with pytest.raises(PisplitError, match="none given"):
        parse_devices(" , ")
    with pytest.raises(PisplitError, match="bandwidth"):
        parse_link_bps("fast")


def test_shipped_reference_profile_times_conv3d_like_conv2d():
    # both are one im2col + BLAS matmul per node, so their FLOP rates on one machine agree; C3D's
    # conv3d nodes were once shipped 2.5x slow (timed while the machine was busy), which made every
    # C3D prediction 2.5x too pessimistic against what emulated devices then measured
    ref = Profile.load(reference_profile_path("numpy"))

    def rate(model: str, op: str) -> float:
        nodes = [n for n in ref.models[model] if n.op == op]
        return sum(n.flops for n in nodes) / sum(n.seconds for n in nodes)

    assert 0.6 < rate("c3d", "conv3d") / rate("vgg16", "conv2d") < 1.6
