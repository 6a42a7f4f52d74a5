"""Codec pricing in the cost model and planner, codec tables, and the edge-host planner (issue 15)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from layers import zoo_model
from layers.errors import PisplitError
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices
from partitioners.edge_host import POWER, best_candidate, edge_host_candidates, edge_host_plan, transmitter_watts
from partitioners.link_pricing import CodecSample, CodecTable, CutCodecs, LossBudget, choose_codec, link_seconds, with_link_codecs
from partitioners.plan import Plan
from partitioners.planners import make_plan


def hand_table(graph, ratio: float = 8.0, lossy_ratio: float = 30.0, encode_s: float = 1e-3, rel_error: float = 0.02,
               accuracy_loss: float | None = 0.004) -> CodecTable:
    """A codec table with a lossless codec at `ratio` and a lossy one at `lossy_ratio` on every cut."""
    cuts = []
    for c in range(len(graph)):
        raw = graph.cut_bytes(c)
        cuts.append(CutCodecs(c, graph.nodes[c - 1].name if c else "input", raw, len(graph.cut_tensors(c)), (
            CodecSample("zstd", raw / ratio, encode_s, encode_s / 4, 0.0, True),
            CodecSample("jpeg:50", raw / lossy_ratio, encode_s, encode_s / 2, rel_error, False, accuracy_loss))))
    return CodecTable(graph.name, len(graph), "hand-made", 1, "host", tuple(cuts)).validate()


def model_of(graph, devices: str, bps: float, table=None, budget=None, latency=0.0) -> CostModel:
    return CostModel(graph, make_cluster(parse_devices(devices), bps, latency), codecs=table, codec_budget=budget)


def test_codec_tables_round_trip_and_refuse_bad_documents(tmp_path):
    g = zoo_model("lenet5")
    table = hand_table(g)
    assert CodecTable.load(table.save(tmp_path / "t.json")) == table
    doc = table.to_dict()
    doc["cuts"][1]["codecs"][0]["encode_s"] = -1.0
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(PisplitError, match=r"codec table .*bad.json: cut 1: zstd has negative or non-finite measurements"):
        CodecTable.load(tmp_path / "bad.json")
    doc = table.to_dict()
    doc["cuts"][2]["codecs"][1]["lossless"] = True
    with pytest.raises(PisplitError, match="cut 2: jpeg:50 lossless flag is wrong"):
        CodecTable.from_dict(doc)
    del doc["cuts"][0]["raw_bytes"]
    with pytest.raises(PisplitError, match="malformed .*raw_bytes"):
        CodecTable.from_dict(doc)
    with pytest.raises(PisplitError, match="not a pisplit codec table"):
        CodecTable.from_dict({"format": "pisplit-plan"})


def test_a_link_costs_encode_plus_bytes_plus_decode():
    s = CodecSample("zstd", 1000.0, 0.002, 0.001, 0.0, True)
    assert link_seconds(s, 8000, 2, 1e6, 0.01, encode_scale=3.0, decode_scale=2.0) == pytest.approx(0.006 + 0.02 + 0.008 + 0.002)
    assert link_seconds(None, 8000, 2, 1e6, 0.01) == pytest.approx(0.02 + 0.064)
    entry = CutCodecs(1, "x", 8000, 1, (s, CodecSample("int8", 100.0, 0.0, 0.0, 0.01, False, 0.02)))
    assert choose_codec(entry, 8000, 1, 1e6, 0.0)[1] == "zstd"  # lossless only without a budget
    assert choose_codec(entry, 8000, 1, 1e6, 0.0, budget=LossBudget(max_rel_error=0.05))[1] == "int8"
    assert choose_codec(entry, 8000, 1, 1e6, 0.0, budget=LossBudget(max_accuracy_loss=0.01))[1] == "zstd"  # loses 2%
    assert choose_codec(entry, 8000, 1, 1e6, 0.0, budget=LossBudget(max_accuracy_loss=0.03))[1] == "int8"
    assert choose_codec(entry, 8000, 1, 1e9, 0.0) == (pytest.approx(8000 * 8 / 1e9), "raw")  # a fast link: not worth encoding


def test_the_cost_model_prices_inner_cuts_with_the_cheapest_codec_and_raw_when_the_link_is_fast():
    g = zoo_model("alexnet")
    plain = model_of(g, "rpi3:4", 94e6)
    assert plain.cut_codec == ["raw"] * (len(g) + 1)
    expected = [plain.message_seconds(plain.cut_bytes[c], plain.cut_messages[c]) for c in range(len(g) + 1)]
    np.testing.assert_array_equal(plain.transfer, expected)  # no table: exactly as before
    slow = model_of(g, "rpi3:4", 2e6, hand_table(g))
    inner = slow.cut_codec[1:-1]
    assert set(inner) == {"zstd"} and slow.cut_codec[0] == "zstd" and slow.cut_codec[-1] == "raw"  # the input too, never results
    assert (slow.transfer[1:-1] < plain.transfer[1:-1] * (94e6 / 2e6)).all()
    scale = max(c.seconds_scale for c in slow.classes)
    c = g.node_index("pool5") + 1
    assert slow.transfer[c] == pytest.approx(1e-3 * scale + slow.cut_bytes[c] / 8 * 8 / 2e6 + 0.25e-3 * scale)
    fast = model_of(g, "rpi3:4", 100e9, hand_table(g, encode_s=5e-3))
    assert fast.cut_codec == ["raw"] * (len(g) + 1)
    lossy = model_of(g, "rpi3:4", 2e6, hand_table(g), LossBudget(max_accuracy_loss=0.01))
    big = [c for c in range(1, len(g)) if lossy.cut_bytes[c] > 20_000]  # where bytes outweigh the slower decode
    assert big and all(lossy.cut_codec[c] == "jpeg:50" for c in big)


def test_plans_priced_with_codecs_name_them_and_predict_more_at_a_slow_link(tmp_path):
    g = zoo_model("alexnet")
    plain = make_plan(g, model_of(g, "rpi3:4", 10e6), "dp", "throughput", "alexnet", "numpy")
    model = model_of(g, "rpi3:4", 10e6, hand_table(g))
    plan = with_link_codecs(make_plan(g, model, "dp", "throughput", "alexnet", "numpy"), model)
    assert plan.predicted_throughput_fps > plain.predicted_throughput_fps
    # the links a plan uses carry the codec (rank 0's inputs at least), results travel raw
    assert all(s.send_codec == "zstd" for s in plan.stages[:-1]) and plan.stages[-1].send_codec == "raw"
    assert plan.input_codec == "zstd" and any(s.mode == "data-parallel" or s.index > 0 for s in plan.stages)
    assert Plan.load(plan.save(tmp_path / "p.json")) == plan


def test_edge_host_candidates_cover_every_cut_and_price_energy():
    g = zoo_model("alexnet")
    model = model_of(g, "rpi3:1,host:1", 2e6, latency=0.0)
    table = hand_table(g)
    cands = edge_host_candidates(model, table)
    n = len(g)
    assert {c.cut for c in cands} == set(range(n + 1))
    assert {c.codec for c in cands if 0 < c.cut < n} == {"raw", "zstd"}  # lossy only under a budget
    edge = next(k for k in model.classes if k.kind == "rpi3")
    c = next(c for c in cands if c.cut == g.node_index("pool5") + 1 and c.codec == "zstd")
    air = model.cut_bytes[c.cut] / 8 * 8 / 2e6
    assert c.transfer_s == pytest.approx(air) and c.encode_s == pytest.approx(1e-3 * edge.seconds_scale)
    assert c.period_s == pytest.approx(max(c.edge_s + c.encode_s + air + c.result_s, air + c.decode_s + c.host_s + c.result_s))
    idle, busy, _ = POWER["rpi3"]
    assert c.edge_energy_j == pytest.approx(idle * c.period_s + (busy - idle) * (c.edge_s + c.encode_s) + 0.099 * air)
    assert transmitter_watts(1e6) == 0.0627 and transmitter_watts(22e6) == 0.660 and transmitter_watts(5e6) == 0.660
    with pytest.raises(PisplitError, match="expected one edge device and one host"):
        edge_host_candidates(model_of(g, "rpi3:2", 2e6), table)


def test_edge_host_best_cut_moves_earlier_as_the_link_gets_faster_and_its_plan_runs():
    g = zoo_model("alexnet")
    table = hand_table(g, ratio=3.0)
    best = {}
    for bps in (1e6, 22e6, 1e9):
        best[bps] = best_candidate(edge_host_candidates(model_of(g, "rpi3:1,host:1", bps), table), runnable_only=True)
    assert best[1e6].cut >= best[22e6].cut >= best[1e9].cut
    assert best[1e6].cut > best[1e9].cut
    model = model_of(g, "rpi3:1,host:1", 2e6)
    chosen = best_candidate(edge_host_candidates(model, table), runnable_only=True)
    plan = edge_host_plan(model, chosen, "alexnet")
    assert [d.kind for d in plan.devices][0] == "rpi3" and plan.stages[0].ranks == (0,)
    if chosen.cut < len(g):
        assert plan.devices[1].kind == "host" and plan.stages[0].send_codec == chosen.codec and plan.stages[0].node_stop == chosen.cut
    assert plan.predicted_throughput_fps == pytest.approx(chosen.throughput_fps)
    all_on_host = next(c for c in edge_host_candidates(model, table) if c.cut == 0)
    with pytest.raises(PisplitError, match="rank 0 .* would run no stage"):
        edge_host_plan(model, all_on_host, "alexnet")


def test_host_is_a_device_kind_at_the_reference_rate():
    assert parse_devices("rpi3:1,host:1") == [("rpi3", 1, None), ("host", 1, None)]
    model = model_of(zoo_model("lenet5"), "rpi3:1,host:1", 2e6)
    scales = {c.kind: c.seconds_scale for c in model.classes}
    assert scales["host"] == 1.0 and scales["rpi3"] > 1.0


def test_a_pi_cluster_and_a_host_run_the_head_on_the_pis_and_the_tail_on_the_host():
    from partitioners.edge_host import cluster_host_candidates, cluster_host_plan

    g = zoo_model("alexnet")
    table = hand_table(g, ratio=4.0)
    edge = make_cluster(parse_devices("rpi3:3"), 10e6, 0.0)
    host = make_cluster(parse_devices("host:1"), 10e6, 0.0)
    cuts = [g.node_index(name) + 1 for name in ("pool2", "pool5", "fc6")]
    cands = cluster_host_candidates(g, edge, host, table=table, cuts=cuts)
    assert [c.cut for c in cands] == cuts and all(c.codec == "zstd" for c in cands)
    raw = cluster_host_candidates(g, edge, host, cuts=cuts)
    assert all(c.codec == "raw" for c in raw)
    for coded, plain in zip(cands, raw):  # the host's side pays the link: 4x fewer bytes
        assert coded.host_period_s < plain.host_period_s
    best = max(cands, key=lambda c: c.throughput_fps)
    plan = cluster_host_plan(g, best, host, "alexnet")
    assert plan.devices[-1].kind == "host" and plan.stages[-1].ranks == (plan.n_ranks - 1,)
    assert plan.stages[-1].node_start == best.cut and plan.stages[-2].send_codec == "zstd"
    assert all(d.kind == "rpi3" for d in plan.devices[:-1]) and plan.stages[0].ranks[0] == 0
    assert plan.predicted_throughput_fps == pytest.approx(best.throughput_fps)
    host_model = CostModel(g, host)
    tail = float(host_model.prefix_seconds[0, len(g)] - host_model.prefix_seconds[0, best.cut])
    on_link = g.cut_bytes(best.cut) / 4 * 8 / 10e6
    scale = host_model.classes[0].seconds_scale
    assert best.host_period_s == pytest.approx(on_link + 0.25e-3 * scale + tail + g.cut_bytes(len(g)) * 8 / 10e6)

