"""What split parts cost beyond their share: the fit (latency_model.SplitOverhead), the profile field that
carries it, and the segment table's prices with it."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from layers import zoo_model
from layers.errors import PisplitError
from partitioners.cost import CostModel, make_cluster
from partitioners.latency_model import ANY_OP, SplitOverhead, SplitStepSample, fit_split_overhead, fit_split_overheads
from partitioners.profiles import Calibration, Profile, reference_profile_path
from partitioners.segment_table import build_segment_table


def _samples(per_share: float, step: float, node: float, speed: float = 1.0, per_whole: float = 0.0) -> list[SplitStepSample]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(60):
        nodes = int(rng.integers(1, 6))
        whole = float(rng.uniform(1e-4, 2e-2))
        pred = whole * float(rng.uniform(0.1, 0.6))
        part = pred * (1 + per_share) + whole * speed * per_whole + (step + node * nodes) * speed
        out.append(SplitStepSample("conv-spatial", 2, nodes, whole * speed, part, pred, whole))
    return out


def test_fit_recovers_the_overhead_in_the_profiles_seconds():
    fit = fit_split_overhead(_samples(0.2, 50e-6, 10e-6, per_whole=0.05))
    assert fit.per_share == pytest.approx(0.2, rel=1e-6) and fit.per_whole == pytest.approx(0.05, rel=1e-6)
    assert fit.per_step_s == pytest.approx(50e-6, rel=1e-6) and fit.per_node_s == pytest.approx(10e-6, rel=1e-6)
    assert fit.median_error < 1e-9 < fit.median_error_without and fit.sum_ratio == pytest.approx(1.0)
    # measured on a machine twice as slow as the profile: its fixed costs are half as many profile seconds
    slow = fit_split_overhead(_samples(0.2, 50e-6, 10e-6, speed=2.0, per_whole=0.05))
    assert slow.per_whole == pytest.approx(0.05, rel=1e-6) and slow.per_step_s == pytest.approx(50e-6, rel=1e-6) and slow.per_node_s == pytest.approx(10e-6, rel=1e-6)
    # nothing to add: a part that takes its share fits no overhead (coefficients are never negative)
    none = fit_split_overhead(_samples(0.0, 0.0, 0.0))
    assert none.per_share == none.per_step_s == none.per_node_s == none.per_whole == 0.0
    fits = fit_split_overheads(_samples(0.2, 50e-6, 10e-6) + [dataclasses.replace(s, kind="fc-input") for s in _samples(0.0, 0.0, 0.0)])
    assert set(fits) == {"conv-spatial", "fc-input", ANY_OP} and fits["fc-input"].per_share == 0.0


def test_profile_carries_the_overhead_and_rejects_bad_figures(tmp_path):
    profile = Profile.load(reference_profile_path("numpy"))
    overhead = {"conv-spatial": SplitOverhead(0.2, 5e-5, 1e-5, 10), ANY_OP: SplitOverhead(0.1, 0.0, 2e-5, 20)}
    mine = dataclasses.replace(profile, split_overhead=overhead)
    again = Profile.load(mine.save(tmp_path / "p.json"))
    assert again.split_overhead == overhead
    assert again.split_overhead_for("conv-spatial") == overhead["conv-spatial"]
    assert again.split_overhead_for("fc-input") == overhead[ANY_OP]  # a kind not measured: the fit over all
    assert dataclasses.replace(profile, split_overhead={}).split_overhead_for("fc-input") == SplitOverhead()
    doc = json.loads((tmp_path / "p.json").read_text())
    for bad in ({"conv-spatial": {"per_step_s": -1.0}}, {"conv-spatial": {"per_share": "x"}}, {"conv-spatial": 3}, [1]):
        doc["split_overhead"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(doc))
        with pytest.raises(PisplitError) as exc:
            Profile.load(tmp_path / "bad.json")
        assert "split" in str(exc.value) and "\n" not in str(exc.value)


def test_segment_table_prices_each_part_with_the_overhead_of_its_kind():
    graph = zoo_model("alexnet")
    base = Profile.load(reference_profile_path("numpy"))
    cluster = make_cluster([("rpi3", 2, 1 << 30), ("rpi4", 2, 1 << 30)], 94e6)
    step = 1e-3  # profile seconds per part, on top of its share

    def table(overhead: dict):
        model = CostModel(graph, cluster, Calibration("numpy", [dataclasses.replace(base, split_overhead=overhead)]))
        slots = tuple(model.class_of_rank[r] for r in range(4))
        return model, slots, build_segment_table(model, slots)

    model, slots, plain = table({})
    _, _, priced = table({ANY_OP: SplitOverhead(per_step_s=step)})
    scales = np.array([model.classes[k].seconds_scale for k in slots])
    checked = 0
    for o, (kind, role, d) in enumerate(plain.columns):
        for r in range(len(plain.compute_s)):
            a, b = plain.compute_s[r, o], priced.compute_s[r, o]
            if not np.isfinite(a):
                assert not np.isfinite(b)
                continue
            if kind == "none" or role == "inside":
                assert b == a  # the lead's own nodes, and the states inside a span, pay no part
            elif role in ("kind", "span", "subset"):
                parts = d if role == "subset" else len(slots)
                # the slowest part pays most: every part's share and overhead, the largest of them
                assert a + step * scales[:parts].min() - 1e-12 <= b <= a + step * scales[:parts].max() + 1e-12, (r, kind, role, d)
                checked += 1
    assert checked > 10
    # a part that pays a tenth of the whole split nodes on top of its share: the slowest part pays most
    _, _, whole = table({ANY_OP: SplitOverhead(per_whole=0.1)})
    assert (whole.compute_s[np.isfinite(plain.compute_s[:, spatial_col := plain.columns.index(("conv-spatial", "kind", 0))]), spatial_col]
            > plain.compute_s[np.isfinite(plain.compute_s[:, spatial_col]), spatial_col]).all()
    # a kind's own figures take precedence over the fit over all kinds
    _, _, only_spatial = table({"conv-spatial": SplitOverhead(per_step_s=step)})
    spatial = plain.columns.index(("conv-spatial", "kind", 0))
    channel = plain.columns.index(("conv-channel", "kind", 0))
    rows = np.isfinite(plain.compute_s[:, spatial]) & np.isfinite(plain.compute_s[:, channel])
    assert rows.any()
    assert (only_spatial.compute_s[rows, spatial] > plain.compute_s[rows, spatial]).all()
    assert (only_spatial.compute_s[rows, channel] == plain.compute_s[rows, channel]).all()


def test_overheads_of_models_measured_apart_merge_by_samples():
    from partitioners.latency_model import merge_split_overheads

    a = {"conv-spatial": SplitOverhead(0.2, 1e-4, 0.0, 30), ANY_OP: SplitOverhead(0.1, 0.0, 0.0, 30)}
    b = {"conv-spatial": SplitOverhead(0.4, 0.0, 2e-5, 10), "fc-input": SplitOverhead(0.0, 5e-5, 0.0, 4), ANY_OP: SplitOverhead(0.3, 0.0, 0.0, 10)}
    merged = merge_split_overheads([a, b])
    assert set(merged) == {"conv-spatial", "fc-input", ANY_OP}
    assert merged["conv-spatial"].per_share == pytest.approx(0.25) and merged["conv-spatial"].samples == 40
    assert merged["conv-spatial"].per_step_s == pytest.approx(0.75e-4) and merged["conv-spatial"].per_node_s == pytest.approx(0.5e-5)
    assert merged["fc-input"] == SplitOverhead(0.0, 5e-5, 0.0, 4) and merged[ANY_OP].per_share == pytest.approx(0.15)


def test_measured_parts_cover_every_kind_span_and_part_count():
    from cluster.measure import measure_split_overhead
    from layers.builder import GraphBuilder
    from partitioners.latency_model import fit_share
    from partitioners.split_costs import SplitCatalogue

    b = GraphBuilder("chain", 1)
    x = b.input("image", (1, 16, 16, 3))
    for i in range(3):
        x = b.conv(x, 8, 3, f"conv{i}", padding="same", activation="relu")
    graph = b.build(b.dense(b.act(x, "flatten", "flat"), 4, "fc"))
    profile = Profile.load(reference_profile_path("numpy"))
    samples = measure_split_overhead(graph, profile, "numpy", (2, 4), repeat=1)
    catalogue = SplitCatalogue(graph)
    kinds = {k for s in range(len(catalogue.segments)) for k in catalogue.kinds(s)} | {"fused-tiles"}
    assert {s.kind for s in samples} == kinds and {s.parts for s in samples} == {2, 4}
    # every part of every split once per part count, timed, and priced by the planner's share
    spatial = [s for s in samples if s.kind == "conv-spatial" and s.parts == 4]
    assert len(spatial) == 4 * 3 and all(s.part_s > 0 and s.whole_s > 0 and s.nodes >= 1 for s in spatial)
    assert all(0 < s.predicted_s < s.whole_s for s in spatial)
    assert all(s.reference_whole_s == pytest.approx(sum(profile.node_seconds(graph, t) for t in range(0, s.nodes))) for s in spatial[:1])
    # with the weights each part holds: a strip all of its filters (SplitOverhead.per_weight_byte_s)
    assert spatial[0].weight_bytes == sum(graph.cost(t).weight_bytes for t in range(0, spatial[0].nodes)) > 0
    share = fit_share(profile, graph, 0, 1, graph.cost(0).flops, 0.0)
    assert 0 < share <= 1.0 + 1e-9


def test_fit_recovers_what_parts_pay_for_the_weights_they_stream():
    """part = share x whole + per_weight_byte_s x weights x (1 - share): the thin strips of a heavy conv
    (every part reads the whole filter) pay most; the fit recovers the figure in the profile's seconds."""
    from partitioners.latency_model import weight_term

    rng = np.random.default_rng(1)

    def samples(per_byte: float, speed: float) -> list[SplitStepSample]:
        out = []
        for _ in range(80):
            whole = float(rng.uniform(1e-3, 2e-2))
            share = float(rng.choice([1 / 7, 1 / 4, 1 / 2]))
            weights = float(rng.choice([0.0, 1e5, 2.4e6, 9.4e6]))
            part = whole * speed * share + per_byte * speed * weights * (1.0 - share) + 20e-6 * speed
            out.append(SplitStepSample("conv-spatial", round(1 / share), int(rng.integers(1, 6)), whole * speed, part, whole * speed * share,
                                       whole, weights))
        return out

    fit = fit_split_overhead(samples(2e-10, 1.0))
    assert fit.per_weight_byte_s == pytest.approx(2e-10, rel=1e-6) and fit.per_step_s == pytest.approx(20e-6, rel=1e-6)
    assert fit.per_share == pytest.approx(0.0, abs=1e-9) and fit.median_error < 1e-9 < fit.median_error_without
    slow = fit_split_overhead(samples(2e-10, 2.0))  # measured twice as slow: the same figure in profile seconds
    assert slow.per_weight_byte_s == pytest.approx(2e-10, rel=1e-6)
    # the priced term: nothing for a part that is the whole, all the weights for an empty share
    assert weight_term(np.array([8.0, 8.0, 8.0]), np.array([1.0, 0.25, 0.0])).tolist() == [0.0, 6.0, 8.0]
    o = SplitOverhead(per_weight_byte_s=1e-9)
    assert o.seconds(1e-3, 2, 0.0, 1e6, 0.25) == pytest.approx(1e-3 + 0.75e-3)
    # profiles written before the figure existed read it as 0; merged figures average it by samples
    assert SplitOverhead.from_dict({"per_share": 0.1, "samples": 3}).per_weight_byte_s == 0.0
    from partitioners.latency_model import merge_split_overheads
    merged = merge_split_overheads([{"conv-spatial": SplitOverhead(per_weight_byte_s=1e-10, samples=3)},
                                    {"conv-spatial": SplitOverhead(per_weight_byte_s=2e-10, samples=1)}])
    assert merged["conv-spatial"].per_weight_byte_s == pytest.approx(1.25e-10)


def test_segment_table_prices_the_whole_filter_each_spatial_part_streams():
    """A conv-spatial part of a conv holds every filter: each pays per_weight_byte_s x the filter's bytes
    x (1 - its share) on its device, the slowest part sets the segment's compute; kinds without the
    figure are priced as before."""
    from partitioners.latency_model import fit_share, weight_term
    from partitioners.splits import split_segment

    graph = zoo_model("alexnet")
    base = Profile.load(reference_profile_path("numpy"))
    cluster = make_cluster([("rpi3", 2, 1 << 30), ("rpi4", 2, 1 << 30)], 94e6)
    per_byte = 1e-9

    def table(overhead: dict):
        model = CostModel(graph, cluster, Calibration("numpy", [dataclasses.replace(base, split_overhead=overhead)]))
        slots = tuple(model.class_of_rank[r] for r in range(4))
        return model, slots, build_segment_table(model, slots)

    model, slots, plain = table({})
    _, _, priced = table({"conv-spatial": SplitOverhead(per_weight_byte_s=per_byte)})
    scales = np.array([model.classes[k].seconds_scale for k in slots])
    spatial = plain.columns.index(("conv-spatial", "kind", 0))
    channel = plain.columns.index(("conv-channel", "kind", 0))
    assert (priced.compute_s[:, channel] == plain.compute_s[:, channel]).all()
    checked = 0
    for r, (start, _) in enumerate(model.splits.segments):
        if not np.isfinite(plain.compute_s[r, spatial]):
            continue
        stop = int(plain.split_stop[r, spatial])
        split = split_segment(graph, start, stop, "conv-spatial", plain.sizes[(r, spatial)])
        filters = sum(graph.cost(t).weight_bytes for t in range(start, stop))
        extra = []
        for p, cost in enumerate(split.cost().parts):
            assert cost.weight_bytes == filters  # every strip holds the whole filter
            share = fit_share(base, graph, start, stop, cost.flops, cost.weight_bytes + cost.recv_bytes + cost.send_bytes)
            extra.append(per_byte * float(weight_term(cost.weight_bytes, share)) * scales[p])
        added = priced.compute_s[r, spatial] - plain.compute_s[r, spatial]
        assert min(extra) > 0 and min(extra) * (1 - 1e-9) <= added <= max(extra) * (1 + 1e-9), (r, added, extra)
        checked += 1
    assert checked >= 4
