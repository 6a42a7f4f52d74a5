"""scripts/bench_edgent (issue 16), briefly, through its wrapper: its rows are read back; timing is not judged."""
from __future__ import annotations

import json

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
