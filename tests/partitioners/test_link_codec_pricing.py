"""Codec pricing beyond one codec per cut (issue 15): per-tensor codecs on a cut of several tensors,
codec seconds turned into the reference machine's, and the memory encoded links add to a plan."""
from __future__ import annotations

import pytest

from layers import zoo_model
from layers.errors import PisplitError
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices
from partitioners.link_pricing import (CodecSample, CodecTable, CutCodecs, LossBudget, TensorCodecSamples, choose_codec,
                                       in_reference_seconds, link_memory_bytes)
from partitioners.planners import make_plan
from partitioners.profiles import Calibration
from tests.cluster.test_runtime import skip_graph


def two_tensor_cut(graph, cut: int = 3) -> CutCodecs:
    """Cut `cut` of the skip graph: tensor a compresses 10x with zstd and not with lz4, tensor b the
    other way round; jpeg:50 (lossy) 40x on both, a 1% error on a and 5% on b."""
    a, b = graph.cut_tensors(cut)
    ra, rb = graph.tensor_bytes(a), graph.tensor_bytes(b)
    per = (TensorCodecSamples(a, ra, (CodecSample("zstd", ra / 10, 1e-4, 1e-4), CodecSample("lz4", ra, 1e-4, 1e-4),
                                      CodecSample("jpeg:50", ra / 40, 1e-4, 1e-4, 0.01, False))),
           TensorCodecSamples(b, rb, (CodecSample("zstd", rb, 1e-4, 1e-4), CodecSample("lz4", rb / 10, 1e-4, 1e-4),
                                      CodecSample("jpeg:50", rb / 40, 1e-4, 1e-4, 0.05, False))))
    whole = tuple(CodecSample(name, sum(next(s for s in t.samples if s.codec == name).encoded_bytes for t in per), 2e-4, 2e-4,
                              max(next(s for s in t.samples if s.codec == name).max_rel_error for t in per), name != "jpeg:50",
                              0.001 if name == "jpeg:50" else None)
                  for name in ("zstd", "lz4", "jpeg:50"))
    return CutCodecs(cut, graph.nodes[cut - 1].name, ra + rb, 2, whole, tensors=per)


def test_a_cut_of_two_tensors_gets_a_codec_per_tensor_where_that_is_cheaper():
    g = skip_graph()
    entry = two_tensor_cut(g)
    a, b = g.cut_tensors(3)
    bw, lat = 1e6, 1e-3
    seconds, name = choose_codec(entry, entry.raw_bytes, 2, bw, lat)
    assert name == "zstd;lz4"
    expected = 2 * lat + (g.tensor_bytes(a) / 10 + g.tensor_bytes(b) / 10) * 8 / bw + 4 * 1e-4
    assert seconds == pytest.approx(expected)
    uniform = min(choose_codec(entry, entry.raw_bytes, 2, bw, lat, allowed=(c,))[0] for c in ("zstd", "lz4"))
    assert seconds < uniform
    # an error budget applies per tensor: jpeg on a (1%), zstd... no: lz4 on b (jpeg's 5% is over)
    assert choose_codec(entry, entry.raw_bytes, 2, bw, lat, budget=LossBudget(max_rel_error=0.02))[1] == "jpeg:50;lz4"
    assert choose_codec(entry, entry.raw_bytes, 2, bw, lat, budget=LossBudget(max_rel_error=0.1))[1] == "jpeg:50"
    # encode seconds scaled 1000x (a slow device): raw beats every codec
    assert choose_codec(entry, entry.raw_bytes, 2, 1e9, 0.0, encode_scale=1e3, decode_scale=1e3)[1] == "raw"


def test_codec_tables_keep_per_tensor_samples_and_machine_speed(tmp_path):
    g = skip_graph()
    table = CodecTable(g.name, len(g), "hand-made", 1, "host", (two_tensor_cut(g),), machine_speed=1.5).validate()
    assert CodecTable.load(table.save(tmp_path / "t.json")) == table
    doc = table.to_dict()
    del doc["machine_speed"]
    assert CodecTable.from_dict(doc).machine_speed == 1.0  # a table written before the field
    doc["cuts"][0]["tensors"] = doc["cuts"][0]["tensors"][:1]
    with pytest.raises(PisplitError, match="cut 3: its per-tensor samples do not add up to its 2 tensors"):
        CodecTable.from_dict(doc)
    doc = table.to_dict()
    doc["machine_speed"] = 0
    with pytest.raises(PisplitError, match="machine_speed 0.0 must be a positive number"):
        CodecTable.from_dict(doc)


def test_codec_seconds_become_the_reference_machines_then_a_pis():
    g = skip_graph()
    entry = two_tensor_cut(g)
    calibration = Calibration("numpy")
    slow_here = CodecTable(g.name, len(g), "x", 1, "host", (entry,), machine_speed=2.0)
    ref = in_reference_seconds(slow_here, calibration)
    assert ref.machine == "host" and ref.machine_speed == 1.0
    assert ref.cuts[0].samples[0].encode_s == pytest.approx(1e-4)  # 2e-4 on a machine twice as slow
    assert ref.cuts[0].tensors[1].samples[1].decode_s == pytest.approx(5e-5)
    _, pi = calibration.resolve("rpi3")
    on_pi = in_reference_seconds(CodecTable(g.name, len(g), "x", 1, "rpi3", (entry,)), calibration)
    assert on_pi.cuts[0].samples[0].encode_s == pytest.approx(2e-4 / pi)  # measured on a Pi: its own seconds
    assert in_reference_seconds(ref, calibration) is ref
    with pytest.raises(PisplitError, match="machine 'toaster'"):
        in_reference_seconds(CodecTable(g.name, len(g), "x", 1, "toaster", (entry,)), calibration)
    # the cost model scales reference seconds to the slowest device class (here a Pi 3B+)
    table = CodecTable(g.name, len(g), "x", 1, "host", (entry,))
    model = CostModel(g, make_cluster(parse_devices("rpi3:2"), 1e6, 0.0), codecs=table)
    seconds, name = model.cut_transfer(3)
    a, b = g.cut_tensors(3)
    assert name == "zstd;lz4"
    assert seconds == pytest.approx((g.tensor_bytes(a) + g.tensor_bytes(b)) / 10 * 8 / 1e6 + 4 * 1e-4 * pi)


def test_encoded_links_add_their_buffers_to_the_memory_prediction():
    assert link_memory_bytes("raw", [1000, 400]) == (0.0, 0.0)
    assert link_memory_bytes("zstd", [1000]) == (2000.0, 1000.0 + 2000.0)
    send, receive = link_memory_bytes("raw;rle-huffman", [1000, 400])
    assert send == pytest.approx(14.1 * 400) and receive == pytest.approx(1400 + 12.2 * 400)
    g = zoo_model("lenet5")
    # 256 KiB usable per Pi: two stages that fill most of it (the planner packs memory); zstd's buffers fit, rle-huffman's
    # (14x the tensor while encoding) do not, so that link stays raw
    for codec, coded in (("zstd", True), ("rle-huffman", False)):
        cuts = tuple(CutCodecs(c, g.nodes[c - 1].name if c else "input", g.cut_bytes(c), len(g.cut_tensors(c)),
                               (CodecSample(codec, g.cut_bytes(c) / 8, 1e-5, 1e-5),)) for c in range(len(g)))
        table = CodecTable(g.name, len(g), "hand-made", 1, "host", cuts)
        model = CostModel(g, make_cluster(parse_devices("rpi3:2@300.25M"), 1e5, 0.0), codecs=table)
        plain = CostModel(g, make_cluster(parse_devices("rpi3:2@300.25M"), 1e5, 0.0))
        plan = make_plan(g, model, "dp", "throughput", "lenet5", "numpy")
        assert len(plan.stages) == 2, plan.stages
        first, second = plan.stages
        raw_first = plain.stage_cost(first.node_start, first.node_stop, (1,), "single").memory_bytes[0]
        raw_second = plain.stage_cost(second.node_start, second.node_stop, (1,), "single").memory_bytes[0]
        note = next(n for n in plan.notes if n.startswith("link codecs from"))
        if coded:
            assert first.send_codec == codec
            send, receive = link_memory_bytes(codec, [g.cut_bytes(first.node_stop)])
            assert first.predicted.memory_bytes[first.ranks[0]] == int(raw_first + send)
            assert second.predicted.memory_bytes[second.ranks[0]] == int(raw_second + receive)
        else:
            assert first.send_codec == "raw" and f"raw, as {codec}'s encode/decode buffers" in note
            assert first.predicted.memory_bytes[first.ranks[0]] == int(raw_first)
            assert second.predicted.memory_bytes[second.ranks[0]] == int(raw_second)


def test_edge_host_candidates_include_a_codec_per_tensor():
    from partitioners.edge_host import edge_host_candidates
    from partitioners.link_pricing import per_tensor_sample

    g = skip_graph()
    entry = two_tensor_cut(g)
    a, b = g.cut_tensors(3)
    mixed = per_tensor_sample(entry, 1e6)
    assert mixed.codec == "zstd;lz4" and mixed.lossless and mixed.accuracy_loss is None
    assert mixed.encoded_bytes == pytest.approx(g.tensor_bytes(a) / 10 + g.tensor_bytes(b) / 10)
    assert mixed.encode_s == pytest.approx(2e-4) and mixed.decode_s == pytest.approx(2e-4)
    lossy = per_tensor_sample(entry, 1e6, budget=LossBudget(max_rel_error=0.02))
    assert lossy.codec == "jpeg:50;lz4" and not lossy.lossless and lossy.max_rel_error == 0.01 and lossy.accuracy_loss == 0.001
    assert per_tensor_sample(entry, 1e6, budget=LossBudget(max_rel_error=0.1)) is None  # jpeg:50 on both: one codec
    table = CodecTable(g.name, len(g), "hand-made", 1, "host", (entry,))
    model = CostModel(g, make_cluster(parse_devices("rpi3:1,host:1"), 1e6, 0.0))
    here = {c.codec: c for c in edge_host_candidates(model, table) if c.cut == 3}
    assert set(here) == {"raw", "zstd", "lz4", "zstd;lz4"}
    assert here["zstd;lz4"].sent_bytes == pytest.approx(mixed.encoded_bytes)
    assert here["zstd;lz4"].transfer_s < min(here[c].transfer_s for c in ("raw", "zstd", "lz4"))


def test_the_codec_cost_model_plans_with_the_codecs_buffers_in_memory():
    import numpy as np

    from partitioners.codec_cost import CodecCostModel, codec_cost_model
    from partitioners.devices import device_profile

    g = zoo_model("lenet5")
    cuts = tuple(CutCodecs(c, g.nodes[c - 1].name if c else "input", g.cut_bytes(c), len(g.cut_tensors(c)),
                           (CodecSample("rle-huffman", g.cut_bytes(c) / 8, 1e-5, 1e-5),)) for c in range(len(g)))
    table = CodecTable(g.name, len(g), "hand-made", 1, "host", cuts)
    cluster = make_cluster(parse_devices("rpi3:3@300.25M"), 1e5, 0.0)
    assert type(codec_cost_model(g, cluster)) is CostModel
    model = codec_cost_model(g, cluster, codecs=table)
    plain = CostModel(g, cluster, codecs=table)
    assert isinstance(model, CodecCostModel)
    # per rank: the plain frame buffers plus the encoder of the cut it sends and the decoder of the one it receives
    for start, stop in ((0, 4), (4, 9), (2, 6)):
        sizes = lambda c: [g.cut_bytes(c)]  # noqa: E731 (one tensor per lenet5 cut)
        send = link_memory_bytes(model.cut_codec[stop], sizes(stop))[0] if stop < len(g) else 0.0
        receive = link_memory_bytes(model.cut_codec[start], sizes(start))[1] if start > 0 else 0.0
        assert model.frame_buffer_bytes(start, stop, 1, True, True) == pytest.approx(plain.frame_buffer_bytes(start, stop, 1, True, True)
                                                                                    + send + receive)
    starts, stops = np.array([0, 4, 2]), np.array([4, 9, 6])  # the dp planner's index arrays
    assert np.allclose(model.frame_buffer_bytes(starts, stops, 2, True, False),
                       [model.frame_buffer_bytes(a, b, 2, True, False) for a, b in zip(starts, stops)])
    # plain pricing left rle-huffman's links raw (their buffers did not fit after planning); here the planner
    # finds stages where they fit, and every rank's prediction holds them within its memory
    plan = make_plan(g, model, "dp", "throughput", "lenet5", "numpy")
    assert any(s.send_codec == "rle-huffman" for s in plan.stages) and not any("raw, as" in n for n in plan.notes)
    usable = 300.25 * 2**20 - device_profile("rpi3").reserved_bytes
    assert all(b <= usable for s in plan.stages for b in s.predicted.memory_bytes.values())
    for s in plan.stages:
        raw = plain.stage_cost(s.node_start, s.node_stop, (1,), "single").memory_bytes[0]
        assert s.predicted.memory_bytes[s.ranks[0]] == int(model.stage_cost(s.node_start, s.node_stop, (1,), "single").memory_bytes[0])
        assert s.predicted.memory_bytes[s.ranks[0]] > raw
