"""scripts/bench_transformers, briefly (issue 19): KWT-3 on 2 emulated Pi 4, one frame per run; the numbers
are not judged (timing belongs to the benchmark), the plans it compares are."""
from __future__ import annotations

import json

import pytest

from tests.cluster.test_bench import bench

pytestmark = [pytest.mark.mpi]


def test_bench_transformers_compares_head_parallel_with_pipeline_only():
    doc = json.loads(bench("bench_transformers", "--models", "kwt3", "--configs", "rpi4:2@940mbit", "--frames", "1", "--json").stdout)
    (row,) = doc["emulated"]
    assert row["model"] == "kwt3" and row["one_device"]["latency_ms"] > 0
    plans = row["plans"]
    assert set(plans) == {"heads", "no-heads", "pipeline-only", "throughput"}
    assert "attn-heads 12" in plans["heads"]["plan"] and "attn-heads" not in plans["no-heads"]["plan"]
    assert "[" not in plans["pipeline-only"]["plan"]  # no split kinds
    assert all(p["latency_ms"] > 0 and p["predicted_latency_ms"] > 0 for p in plans.values())
