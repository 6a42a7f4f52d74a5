"""Edgent (issue 16): exit branches, Algorithm 1 against an exhaustive search, Algorithm 2's reward,
and the configuration map's document."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layers import load_model
from layers.errors import PisplitError
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices
from partitioners.edgent import (ConfigMap, Strategy, best_by_reward, configuration_map, exit_accuracies, exit_branch,
                                 exit_names, reward, select, strategies)
from partitioners.link_pricing import CodecSample, CodecTable, CutCodecs, LossBudget, admissible, link_seconds

MODELS = ("branchy_lenet_mnist", "branchy_alexnet_mnist")
BANDWIDTHS = (50e3, 1e6, 10e6, 100e6)


@lru_cache(maxsize=None)
def graph_of(name):
    return load_model(name)


def test_exit_branch_computes_the_exit_as_the_whole_model_does():
    g = graph_of("branchy_alexnet_mnist")
    x = g.random_input(3)
    whole = g.execute(x)
    for name in exit_names(g):
        b = exit_branch(g, name)
        assert b.outputs == [name] and len(b) < len(g) or name == "final"
        assert {n.name for n in b.nodes} <= {n.name for n in g.nodes}
        got = b.execute(x)
        np.testing.assert_array_equal(got[name], whole[name])
    # the final branch leaves out every side branch
    assert not any(n.name.startswith("exit") for n in exit_branch(g, "final").nodes)
    with pytest.raises(PisplitError, match="exit nope: not an output"):
        exit_branch(g, "nope")


def test_accuracies_come_from_the_manifest_and_are_checked():
    g = graph_of("branchy_alexnet_mnist")
    acc = exit_accuracies(g)
    assert acc["exit1"] == 0.927 and acc["final"] == 0.976
    assert exit_accuracies(g, {"exit1": 0.5})["exit1"] == 0.5
    with pytest.raises(PisplitError, match="accuracy of exit1: 1.5 must be in"):
        exit_accuracies(g, {"exit1": 1.5})
    with pytest.raises(PisplitError, match="accuracy of nope: not an output"):
        exit_accuracies(g, {"nope": 0.5})


def random_table(graph, seed: int) -> CodecTable:
    """A codec table of the whole model: per cut a lossless and a lossy codec of random ratio and times."""
    rng = np.random.default_rng(seed)
    cuts = []
    for c in range(len(graph)):
        raw = graph.cut_bytes(c)
        cuts.append(CutCodecs(c, graph.nodes[c - 1].name if c else "input", raw, len(graph.cut_tensors(c)), (
            CodecSample("zstd", raw / rng.uniform(1.2, 6), rng.uniform(0, 4e-3), rng.uniform(0, 1e-3), 0.0, True),
            CodecSample("jpeg:50", raw / rng.uniform(5, 40), rng.uniform(0, 6e-3), rng.uniform(0, 2e-3), 0.03, False,
                        float(rng.uniform(0, 0.05))))))
    return CodecTable(graph.name, len(graph), "random", 1, "host", tuple(cuts)).validate()


@lru_cache(maxsize=None)
def table_of(name, seed):
    return None if seed is None else random_table(graph_of(name), seed)


BUDGET = LossBudget(max_accuracy_loss=0.03)


@lru_cache(maxsize=None)
def cached_strategies(name, bw, seed, budgeted):
    g = graph_of(name)
    cluster = make_cluster(parse_devices("rpi3:1,host:1"), bw, 2e-3)
    return tuple(strategies(g, cluster, exit_accuracies(g), None, table_of(name, seed), BUDGET if budgeted else None))


@lru_cache(maxsize=None)
def branch_models(name, bw):
    """Per exit: its branch and the branch's cost model on one Pi and a host at `bw` (what exhaustive prices from)."""
    g = graph_of(name)
    cluster = make_cluster(parse_devices("rpi3:1,host:1"), bw, 2e-3)
    return {t: (exit_branch(g, t), CostModel(exit_branch(g, t), cluster)) for t in g.outputs}


def exhaustive(name, bw, seed, budgeted, acc):
    """Every (exit, cut, codec) priced from the cost model directly: (exit, cut, codec, latency, accuracy)."""
    return [(e, c, k, lat, acc[e] - loss) for e, c, k, lat, loss in exhaustive_latencies(name, bw, seed, budgeted)]


@lru_cache(maxsize=None)
def exhaustive_latencies(name, bw, seed, budgeted):
    """exhaustive's rows with the accuracy each codec loses instead of the accuracy (drawn per example)."""
    g = graph_of(name)
    table = table_of(name, seed)
    rows = []
    for exit_name in g.outputs:
        b, m = branch_models(name, bw)[exit_name]
        edge = next(c for c in m.classes if c.kind != "host")
        host = next(c for c in m.classes if c.kind == "host")
        n = len(b)
        for cut in range(1, n + 1):
            if not all(m.stage_cost(a, z, tuple(int(k == cls.index) for k in range(2)), "single").feasible
                       for a, z, cls in ((0, cut, edge), (cut, n, host)) if a < z):
                continue
            samples = [None]
            if table is not None and cut < n:
                live = set(b.cut_tensors(cut))
                for e in table.cuts:
                    if set(g.cut_tensors(e.cut)) == live:
                        samples += [s for s in e.samples if admissible(s, BUDGET if budgeted else None)]
                        break
            for s in samples:
                lat = float(m.prefix_seconds[edge.index, cut])
                if cut < n:
                    lat += link_seconds(s, float(b.cut_bytes(cut)), float(len(b.cut_tensors(cut))), bw, 2e-3,
                                        edge.seconds_scale, host.seconds_scale)
                    lat += float(m.prefix_seconds[host.index, n] - m.prefix_seconds[host.index, cut]) + float(m.transfer[n])
                rows.append((exit_name, cut, s.codec if s else "raw", lat, (s.accuracy_loss or 0.0) if s else 0.0))
    return tuple(rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(MODELS), bw=st.sampled_from(BANDWIDTHS), seed=st.sampled_from((None, 0, 1)),
       budgeted=st.booleans(), req=st.floats(1e-3, 2.0), data=st.data())
def test_algorithm1_equals_an_exhaustive_search(name, bw, seed, budgeted, req, data):
    """The choice is the most accurate (exit, cut, codec) meeting the requirement, fastest among equals,
    with accuracies drawn at random (not monotone in depth) so the order of exits matters."""
    g = graph_of(name)
    acc = {t: data.draw(st.floats(0.1, 1.0), label=t) for t in g.outputs}
    base = exit_accuracies(g)
    cands = [replace(s, accuracy=max(acc[s.exit] - (base[s.exit] - s.accuracy), 0.0))
             for s in cached_strategies(name, bw, seed, budgeted)]
    rows = exhaustive(name, bw, seed, budgeted, acc)
    assert len(rows) == len(cands)
    for s, r in zip(sorted(cands, key=lambda s: (s.exit, s.cut, s.codec)), sorted(rows, key=lambda r: r[:3])):
        assert (s.exit, s.cut, s.codec) == r[:3]
        assert s.latency_s == pytest.approx(r[3], rel=1e-9, abs=1e-12)
    sel = select(cands, req)
    meeting = [r for r in rows if r[3] <= req * (1 + 1e-9)]
    fastest = min(r[3] for r in rows)
    assert sel.fastest.latency_s == pytest.approx(fastest, rel=1e-9)
    if sel.chosen is None:
        assert all(r[3] >= req * (1 - 1e-9) for r in rows)
        assert sel.message().startswith(f"cannot meet {req * 1e3:g} ms; the fastest is exit ")
        return
    assert meeting and sel.chosen.latency_s <= req
    best_acc = max(max(r[4], 0.0) for r in meeting)
    assert sel.chosen.accuracy == pytest.approx(best_acc, abs=1e-12)
    assert sel.chosen.latency_s == pytest.approx(min(r[3] for r in meeting if abs(max(r[4], 0.0) - best_acc) < 1e-12), rel=1e-9)
    # each exit's entries: its fastest strategy, and its best meeting one is no worse than any of its meeting rows
    for f, m in zip(sel.fastest_per_exit, sel.meeting_per_exit):
        mine = [r for r in rows if r[0] == f.exit]
        assert f.latency_s == pytest.approx(min(r[3] for r in mine), rel=1e-9)
        if m is None:
            assert all(r[3] >= req * (1 - 1e-9) for r in mine)
        else:
            assert m.exit == f.exit and m.latency_s <= req
            assert m.accuracy == pytest.approx(max(max(r[4], 0.0) for r in mine if r[3] <= req * (1 + 1e-9)), abs=1e-12)


def test_cuts_move_with_the_bandwidth_and_slow_links_keep_work_on_the_device():
    g = graph_of("branchy_alexnet_mnist")
    acc = exit_accuracies(g)
    slow = select(strategies(g, make_cluster(parse_devices("rpi3:1,host:1"), 50e3), acc), 1.0)
    assert all(s.on_device for s in slow.fastest_per_exit)  # 4 KB of input takes 0.65 s at 50 kbit/s
    fast = select(strategies(g, make_cluster(parse_devices("rpi3:1,host:1"), 1e9), acc), 1.0)
    assert not fast.fastest_per_exit[-1].on_device  # the host is far faster than a Pi 3 on a 1 Gbit/s link
    assert fast.chosen.exit == "exit4"  # the most accurate held-out (0.977), not the deepest (final 0.976)


def test_the_requirement_must_be_positive():
    g = graph_of("branchy_lenet_mnist")
    cands = strategies(g, make_cluster(parse_devices("rpi3:1,host:1"), 1e6), exit_accuracies(g))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(PisplitError, match="latency requirement"):
            select(cands, bad)


def hand(exit, depth, latency, fps, acc, cut=1):
    return Strategy(exit, depth, cut, 5, "x", "raw", latency, fps, acc)


def test_algorithm2_follows_the_papers_reward_and_tie_rule():
    a, b, c = hand("e1", 0, 0.01, 100.0, 0.9), hand("e2", 1, 0.05, 20.0, 0.95), hand("e3", 2, 0.2, 5.0, 0.99)
    assert reward(a, 0.1) == pytest.approx(math.exp(0.9) + 100.0) and reward(c, 0.1) == 0.0
    best, r, meets = best_by_reward([a, b, c], 0.1)
    assert best is a and meets and r == pytest.approx(math.exp(0.9) + 100.0)
    # a tie goes to the later strategy (the paper's `if reward_max <= reward_cj`)
    twin = hand("e2", 1, 0.01, 100.0, 0.9, cut=2)
    assert best_by_reward([a, twin], 0.1)[0] is twin
    # nothing meets the requirement: the fastest, reward 0, not meeting
    best, r, meets = best_by_reward([b, c], 0.001)
    assert best is b and r == 0.0 and not meets
    # exhaustively: the chosen reward is the largest
    rng = np.random.default_rng(0)
    many = [hand(f"e{i}", i, float(rng.uniform(0.001, 0.3)), float(rng.uniform(1, 50)), float(rng.uniform(0.5, 1))) for i in range(40)]
    best, r, _ = best_by_reward(many, 0.1)
    assert r == max(reward(s, 0.1) for s in many)


def test_configuration_map_round_trips_finds_states_and_refuses_bad_documents(tmp_path):
    g = graph_of("branchy_lenet_mnist")
    sets = [("rpi3:1,host:1", parse_devices("rpi3:1,host:1")), ("rpi3:1", parse_devices("rpi3:1"))]
    cmap, chosen = configuration_map(g, sets, [0.25e6, 2e6, 8e6], 0.1, exit_accuracies(g), "branchy_lenet_mnist")
    assert len(cmap.entries) == 6 and set(chosen) == {(e.devices, e.bandwidth_bps) for e in cmap.entries}
    for e in cmap.entries:  # each entry is Algorithm 2's choice for its state
        cluster = make_cluster(parse_devices(e.devices), e.bandwidth_bps)
        cands = strategies(g, cluster, exit_accuracies(g))
        assert e.reward == pytest.approx(max(reward(s, 0.1) for s in cands))
    alone = [e for e in cmap.entries if e.devices == "rpi3:1"]
    assert all(e.cut == e.n_nodes for e in alone)  # the host gone: all on the device
    path = cmap.save(tmp_path / "m.json")
    assert ConfigMap.load(path) == cmap
    assert cmap.find(1e6).bandwidth_bps == 0.25e6 and cmap.find(100e6).bandwidth_bps == 8e6
    assert cmap.find(1e3).bandwidth_bps == 0.25e6 and cmap.find(2e6, "rpi3:1").devices == "rpi3:1"
    doc = cmap.to_dict()
    bad = json.loads(json.dumps(doc))
    bad["entries"][0]["meets"] = not bad["entries"][0]["meets"]
    with pytest.raises(PisplitError, match="entry 0 .*meets="):
        ConfigMap.from_dict(bad)
    bad = json.loads(json.dumps(doc))
    bad["entries"][1]["reward"] += 1
    with pytest.raises(PisplitError, match="entry 1 .*reward"):
        ConfigMap.from_dict(bad)
    bad = json.loads(json.dumps(doc))
    bad["entries"][0]["plan"] = "../elsewhere.json"
    with pytest.raises(PisplitError, match="must be relative"):
        ConfigMap.from_dict(bad)
    bad = json.loads(json.dumps(doc))
    del bad["entries"][0]["cut"]
    with pytest.raises(PisplitError, match="malformed"):
        ConfigMap.from_dict(bad)
    bad = json.loads(json.dumps(doc))
    bad["entries"][2]["bandwidth_bps"] = bad["entries"][1]["bandwidth_bps"]
    with pytest.raises(PisplitError, match="a second entry"):
        ConfigMap.from_dict(bad)
    with pytest.raises(PisplitError, match="not a pisplit configuration map"):
        ConfigMap.from_dict({"format": "x"})
    missing = json.loads(json.dumps(doc))
    missing["entries"][0]["plan"] = "plan.json"
    (tmp_path / "n.json").write_text(json.dumps(missing))
    with pytest.raises(PisplitError, match="plan.json .* is missing"):
        ConfigMap.load(tmp_path / "n.json")


def test_the_accuracy_objective_takes_algorithm_1s_choice_per_state():
    g = graph_of("branchy_alexnet_mnist")
    sets = [("rpi3:1,host:1", parse_devices("rpi3:1,host:1"))]
    acc = exit_accuracies(g)
    cmap, _ = configuration_map(g, sets, [0.25e6, 1e9], 2e-3, acc, "m", objective="accuracy")
    assert cmap.objective == "accuracy"
    for e in cmap.entries:
        sel = select(strategies(g, make_cluster(parse_devices(e.devices), e.bandwidth_bps), acc), 2e-3)
        assert (e.exit, e.cut, e.codec) == (sel.chosen.exit, sel.chosen.cut, sel.chosen.codec)
        assert e.reward == pytest.approx(reward(sel.chosen, 2e-3))
    assert [e.exit for e in cmap.entries] == ["exit1", "exit4"]  # 2 ms: only a 1 Gbit/s link lets exit4 offload in time
    assert ConfigMap.from_dict(json.loads(json.dumps(cmap.to_dict()))) == cmap
    with pytest.raises(PisplitError, match="objective 'speed'"):
        configuration_map(g, sets, [1e6], 2e-3, acc, "m", objective="speed")


@pytest.mark.parametrize("devices", ["rpi3:2,host:1", "rpi3:3"])
def test_a_pi_cluster_prices_heads_on_the_pis_and_the_tail_on_the_host(devices, tmp_path):
    from partitioners.edgent import strategy_plan

    g = graph_of("branchy_lenet_mnist")
    cluster = make_cluster(parse_devices(devices), 1e9)
    cands = strategies(g, cluster, exit_accuracies(g))
    assert {s.exit for s in cands} == set(g.outputs)
    if "host" in devices:
        assert any(not s.on_device for s in cands) and any(s.on_device for s in cands)
    else:
        assert all(s.on_device for s in cands)
    for s in cands:
        plan = strategy_plan(g, s, cluster, "branch.json")
        assert plan.model == "branch.json" and plan.n_nodes == s.n_nodes
        assert plan.predicted_latency_s == pytest.approx(s.latency_s, rel=1e-9)
        assert plan.stages[-1].node_stop == s.n_nodes and (s.on_device or plan.stages[-1].node_start == s.cut)
    with pytest.raises(PisplitError, match="at most one host"):
        strategies(g, make_cluster(parse_devices("rpi3:1,host:2"), 1e6), exit_accuracies(g))


def random_branchy(seed: int, blocks: int, exits: tuple, width: int, side: int):
    """A small branchy CNN: `blocks` conv blocks, a side exit (pool, flatten, dense, softmax) after
    each block in `exits`, a final dense head."""
    from layers.builder import GraphBuilder

    b = GraphBuilder(f"branchy_{seed}", seed=seed)
    y = b.input("input", (1, side, side, 1))
    outs = []
    for k in range(blocks):
        y = b.conv(y, width * (k + 1), 3, f"conv{k}", padding="same", activation="relu")
        if k < blocks - 1:
            y = b.pool(y, "max", 2, f"pool{k}", strides=2)
        if k in exits and k < blocks - 1:
            e = b.pool(y, "max", 2, f"e{k}_pool", strides=2, padding="same")
            e = b.act(e, "flatten", f"e{k}_flat")
            e = b.dense(e, 10, f"e{k}_logits")
            outs.append(b.act(e, "softmax", f"exit{k}"))
    f = b.act(y, "flatten", "flat")
    f = b.dense(f, 10, "logits")
    outs.append(b.act(f, "softmax", "final"))
    return b.build(outs)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1000), blocks=st.integers(2, 4), exits=st.sets(st.integers(0, 2), max_size=3),
       width=st.integers(2, 32), side=st.sampled_from((16, 32, 64)), bw=st.sampled_from((1e5, 1e7, 1e8, 1e9)),
       factor=st.floats(0.8, 3.0), data=st.data())
def test_algorithm1_equals_an_exhaustive_search_on_random_small_branchy_models(seed, blocks, exits, width, side, bw, factor, data):
    """As above, over the structure too: random depth, widths and exit positions, raw links; the
    requirement a random multiple of the fastest strategy's latency (some cannot be met)."""
    g = random_branchy(seed, blocks, tuple(sorted(exits)), width, side)
    acc = {t: data.draw(st.floats(0.1, 1.0), label=t) for t in g.outputs}
    cluster = make_cluster(parse_devices("rpi3:1,host:1"), bw, 1e-4)  # a short message latency: offloading pays on some
    cands = strategies(g, cluster, acc)
    rows = []
    for name in g.outputs:
        b = exit_branch(g, name)
        m = CostModel(b, cluster)
        edge = next(c for c in m.classes if c.kind != "host")
        host = next(c for c in m.classes if c.kind == "host")
        n = len(b)
        for cut in range(1, n + 1):
            lat = float(m.prefix_seconds[edge.index, cut])
            if cut < n:
                lat += (1e-4 * len(b.cut_tensors(cut)) + b.cut_bytes(cut) * 8 / bw
                        + float(m.prefix_seconds[host.index, n] - m.prefix_seconds[host.index, cut]) + float(m.transfer[n]))
            rows.append((name, cut, lat, acc[name]))
    assert sorted((s.exit, s.cut) for s in cands) == sorted(r[:2] for r in rows)
    req = factor * min(r[2] for r in rows)
    sel = select(cands, req)
    meeting = [r for r in rows if r[2] <= req * (1 + 1e-9)]
    if sel.chosen is None:
        assert all(r[2] >= req * (1 - 1e-9) for r in rows)
        assert sel.fastest.latency_s == pytest.approx(min(r[2] for r in rows), rel=1e-9)
        return
    best = max(r[3] for r in meeting)
    assert sel.chosen.accuracy == best
    assert sel.chosen.latency_s == pytest.approx(min(r[2] for r in meeting if r[3] == best), rel=1e-9)


def test_a_host_speed_factor_scales_the_hosts_compute_and_is_written_into_the_plans(tmp_path):
    """host:1*0.1 (partitioners.edgent.parse_device_speeds): a host at a tenth of the reference's speed,
    e.g. a slower desktop or the machine emulating it; the device side and the link are unchanged."""
    from partitioners.edgent import device_cluster, parse_device_speeds, strategy_plan

    assert parse_device_speeds("rpi3:1, host:1*0.1") == ("rpi3:1,host:1", {"host": 0.1})
    assert parse_device_speeds("rpi3:2,host") == ("rpi3:2,host", {})
    for bad in ("host:1*0", "host:1*-2", "host:1*x", "host:1*", "*0.5"):
        with pytest.raises(PisplitError, match="devices"):
            parse_device_speeds(bad)
    g = graph_of("branchy_alexnet_mnist")
    acc = exit_accuracies(g)
    text, speeds = parse_device_speeds("rpi3:1,host:1*0.1")
    slow = device_cluster(parse_devices(text), 1e6, None, speeds)
    assert [d.speed for d in slow.devices] == [1.0, 0.1]
    fast = {(s.exit, s.cut, s.codec): s for s in strategies(g, make_cluster(parse_devices(text), 1e6), acc, runnable_only=False)}
    tenth = {(s.exit, s.cut, s.codec): s for s in strategies(g, slow, acc, runnable_only=False)}
    assert fast.keys() == tenth.keys()
    offloaded = 0
    for key, s in fast.items():
        t = tenth[key]
        if s.on_device:
            assert t.latency_s == pytest.approx(s.latency_s)
            continue
        offloaded += 1
        assert t.candidate.host_s == pytest.approx(10 * s.candidate.host_s)
        assert t.candidate.edge_s == pytest.approx(s.candidate.edge_s) and t.candidate.transfer_s == pytest.approx(s.candidate.transfer_s)
        assert t.latency_s == pytest.approx(s.latency_s + 9 * s.candidate.host_s)
    assert offloaded
    key = next(k for k, s in tenth.items() if not s.on_device and s.candidate.runnable)
    plan = strategy_plan(g, tenth[key], slow, str(tmp_path / "branch.json"))
    assert [d.speed for d in plan.devices] == [1.0, 0.1]
    cmap, chosen = configuration_map(g, [("rpi3:1,host:1*0.1", parse_devices(text))], [1e6], 1.0, acc, g.name, speeds=speeds)
    assert cmap.entries[0].latency_s == pytest.approx(tenth[(cmap.entries[0].exit, cmap.entries[0].cut, cmap.entries[0].codec)].latency_s)
