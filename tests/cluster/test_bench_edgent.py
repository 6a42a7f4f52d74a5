"""scripts/bench_edgent (issue 16), briefly, through its wrapper: its rows are read back; timing is not judged."""
from __future__ import annotations

import json

import numpy as np

from tests.cluster.test_bench import bench


def test_bench_edgent_quick(tmp_path):
    chart = tmp_path / "dynamic.svg"
    doc = json.loads(bench("bench_edgent", "--quick", "--scaled", "--json", "--chart", chart).stdout)
    assert chart.read_text().lstrip().startswith("<?xml") and "requirement 100 ms" in chart.read_text()
    assert doc["model"] == "branchy_alexnet_mnist" and len(doc["static"]) == 4 and len(doc["scaled"]) == 4
    for r in doc["static"] + doc["scaled"]:
        assert r["meets"] == (r["predicted_ms"] <= r["latency_req_s"] * 1e3)
    dyn = doc["dynamic"]
    assert [r["policy"].split(":")[0] for r in dyn["rows"]] == ["Edgent-style dynamic", "best static", "all on the device (final exit)",
                                                               "all on the host (final exit; predicted only)"]
    best = dyn["rows"][1]["mean_reward"]
    assert all(r["mean_reward"] <= best + 1e-9 for r in dyn["rows"][2:3])  # the best static is the best of the runnable statics
    assert all(0 <= r["meets"] <= 1 and r["switches"] >= 0 for r in dyn["rows"])


def test_the_scaled_model_is_edgents_setting(tmp_path):
    """bench_edgent --model branchy_alexnet_scaled: the trained branchy AlexNet's exits on a model the Pi
    takes hundreds of ms for, written as a loadable graph with the trained model's accuracies; at 100 ms the
    Pi alone must leave early, a good link lets the final exits meet it offloaded, a poor one does not."""
    from bench.edgent import SCALED_MODEL, TRAINED, bench_model
    from layers import load_model
    from partitioners.cost import make_cluster
    from partitioners.devices import parse_devices
    from partitioners.edgent import exit_accuracies, select, strategies

    graph, spec, acc = bench_model(SCALED_MODEL, tmp_path)
    assert spec.endswith(f"{SCALED_MODEL}.json") and load_model(spec).outputs == graph.outputs == load_model(TRAINED).outputs
    assert acc == exit_accuracies(load_model(TRAINED))
    x = np.random.default_rng(0).standard_normal((1, 128, 128, 1)).astype(np.float32)
    out = graph.execute({"input": x})
    assert all(np.isclose(out[e].sum(), 1.0, atol=1e-5) for e in graph.outputs)  # every exit a softmax
    picks = {}
    for mbit in (1, 16):
        cands = strategies(graph, make_cluster(parse_devices("rpi3:1,host:1"), mbit * 1e6), acc)
        device_final = next(s for s in cands if s.exit == "final" and s.on_device)
        assert 0.2 < device_final.latency_s < 1.0  # hundreds of ms on the Pi
        picks[mbit] = select(cands, 0.1).chosen
    assert picks[1].on_device and picks[1].exit in ("exit1", "exit2")
    assert not picks[16].on_device and acc[picks[16].exit] > acc[picks[1].exit]


def test_the_measured_verdict_needs_95_percent_a_better_reward_and_an_emulation_that_kept_up():
    from bench.edgent import measured_verdict

    def row(meets, reward, late):
        return {"meets": meets, "mean_reward": reward, "late_ms_per_frame_by_rank": late}

    ok = measured_verdict([row(0.97, 12.0, [0.0, 1.0]), row(0.99, 11.0, [0.5]), row(0.0, 0.0, [0.0])], 0.15)
    assert ok["target_met"] and ok["emulation_kept_up"] and len(ok["verdict"]) == 1 and ok["verdict"][0].startswith("target met")
    assert not measured_verdict([row(0.94, 12.0, [0.0, 0.0]), row(0.99, 11.0, [0.0])], 0.15)["target_met"]  # under 95%
    assert not measured_verdict([row(0.99, 11.0, [0.0, 0.0]), row(0.99, 11.0, [0.0])], 0.15)["target_met"]  # a tie is no win
    late = measured_verdict([row(0.99, 12.0, [0.0, 59.0]), row(0.99, 11.0, [0.0])], 0.15)
    assert not late["emulation_kept_up"] and late["most_behind_ms_per_frame"] == 59.0 and late["verdict"][1].startswith("NOT VALID")


def test_core_share_is_the_cpu_share_of_a_rank_here():
    from bench.edgent import core_share

    assert 0.0 < core_share("lenet5", copies=1, passes=3) <= 1.0
