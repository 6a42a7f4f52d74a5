"""scripts/bench_transformers, briefly (issue 19): KWT-3 on 2 emulated Pi 4 at 10 Gbit/s (at 940 Mbit/s its 3 small
heads lose to the fc splits: 64-wide Q/K/V slices, 165 us more per part), one frame per latency run; the
numbers are not judged (timing belongs to the benchmark), the plans it compares are: attention by heads, by
tokens (emulated under mpirun: the token split's K/V all-gather between emulated devices) and pipeline-only
(stages of whole layers, one device each, its throughput from frames streamed), each with its prediction."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.cluster.test_bench import ROOT, bench
from tests.conftest import require
from tests.layers.test_int8_corpus import CORPUS

pytestmark = [pytest.mark.mpi]


def test_bench_transformers_compares_heads_tokens_and_pipeline_only():
    doc = json.loads(bench("bench_transformers", "--models", "kwt3", "--configs", "rpi4:2@10gbit", "--frames", "1",
                           "--stream-frames", "2", "--variants", "heads,tokens,pipeline-only", "--json").stdout)
    (row,) = doc["emulated"]
    assert row["model"] == "kwt3" and row["one_device"]["latency_ms"] > 0
    plans = row["plans"]
    assert set(plans) == {"heads", "tokens", "pipeline-only"}
    assert "attn-heads 12" in plans["heads"]["plan"] and "attn-tokens" not in plans["heads"]["plan"]
    assert "attn-tokens" in plans["tokens"]["plan"] and "attn-heads" not in plans["tokens"]["plan"]
    assert plans["pipeline-only"]["plan"] == "singlex1 singlex1"  # two stages, no split kinds, no data parallelism
    assert plans["pipeline-only"]["stream_frames"] == 4  # at least two frames per rank, streamed
    assert all(p["latency_ms"] > 0 and p["predicted_latency_ms"] > 0 and p["fps"] > 0 and p["predicted_fps"] > 0
               for p in plans.values())


def test_bench_transformers_corpus_compares_the_litert_engine_with_plain_litert():
    """--corpus --corpus-models kws: the litert engine against one plain LiteRT interpreter on the litert-torch KWS
    model, in CPU seconds over at least 5 alternating warm runs, outputs equal (the ratio is not judged); a corpus
    model that is not there is a one-line error."""
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    require((CORPUS / "torch_kws.tflite").exists(), f"no torch_kws.tflite in {CORPUS} (bash scripts/build_corpus_torch)")
    doc = json.loads(bench("bench_transformers", "--no-emulate", "--corpus", "--corpus-models", "kws", "--json").stdout)
    (row,) = doc["corpus"]
    assert row["model"] == "torch_kws" and row["runs"] >= 5 and row["max_rel_error"] < 1e-4
    assert row["plain_litert_ms"] > 0 and row["pisplit_litert_ms"] > 0
    bad = subprocess.run([sys.executable, "-m", "bench.transformers", "--no-emulate", "--corpus", "--corpus-models", "nosuch"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "nosuch" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
