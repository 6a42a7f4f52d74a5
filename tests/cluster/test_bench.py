"""`pisplit bench`: pisplit's engines and the plain LiteRT interpreter side by side (no timing asserts)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess

import pytest

from layers import zoo_model
from tests.conftest import ROOT, require, run_pisplit
from tests.layers.tflite_models import chain_model

BENCH_MODULES = ("codecs", "emulate", "exits", "forward", "latency", "litert", "pipeline", "planner", "soak", "splits")
LEADS_WRAPPERS: tuple[str, ...] = ()  # wrappers that are not thin (none now)

pytestmark = pytest.mark.litert


def pisplit(*args):
    return run_pisplit(*args, check=False)

@pytest.fixture(autouse=True)
def _litert():
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")


def test_bench_zoo_model_json():
    proc = pisplit("bench", "lenet5", "--repeat", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {r["engine"]: r for r in doc["rows"]}
    assert set(rows) == {"numpy", "litert", "plain litert"} and doc["threads"] == 1
    assert rows["plain litert"]["speed_vs_plain_litert"] == 1.0
    assert all(r["median_ms"] > 0 and r["best_ms"] <= r["median_ms"] for r in rows.values())


def test_bench_tflite_file_and_one_layer_table(tmp_path):
    path = tmp_path / "chain.tflite"
    path.write_bytes(chain_model())
    proc = pisplit("bench", path, "--engine", "auto,litert", "--repeat", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["source"] == str(path) and [r["engine"].split()[0] for r in doc["rows"]] == ["auto", "litert", "plain"]
    proc = pisplit("bench", "vgg16", "--layer", "block1_conv2", "--engine", "litert", "--repeat", "1")
    assert proc.returncode == 0, proc.stderr
    assert "block1_conv2" in proc.stdout and "plain litert" in proc.stdout


def test_bench_bad_arguments_are_one_line_errors():
    proc = pisplit("bench", "lenet5", "--engine", "numpy,gpu")
    assert proc.returncode == 1 and "--engine 'numpy,gpu'" in proc.stderr and "Traceback" not in proc.stderr
    proc = pisplit("bench", "lenet5", "--layer", "conv9")
    assert proc.returncode == 1 and "no node named 'conv9'" in proc.stderr


# --- the benchmarks (bench/, run through scripts/bench_*), each briefly, through its own wrapper ----------
# Smoke tests: each runs with its usual arguments made small and its output is read back; the numbers
# are not judged (timing belongs to the benchmarks), the correctness figures they print are.

def bench(script: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """scripts/<script> ARGS from outside the repository (the wrappers find their root themselves)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / script), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd="/", env={**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    assert proc.returncode == 0, f"scripts/{script} {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def test_benchmarks_live_in_bench_and_every_wrapper_is_thin():
    wrappers = sorted(p for p in (ROOT / "scripts").glob("bench_*") if p.name not in LEADS_WRAPPERS)
    assert {f"bench_{m}" for m in BENCH_MODULES} <= {p.name for p in wrappers}
    for p in wrappers:
        text = p.read_text()
        assert "<<" not in text and f"-m bench.{p.name[6:]} " in text, f"{p.name} is not a thin wrapper of bench/{p.name[6:]}.py"
        assert (ROOT / "bench" / f"{p.name[6:]}.py").is_file()
    assert not list((ROOT / "cluster").glob("bench_*.py")) and not list((ROOT / "partitioners").glob("bench_*.py"))


def test_bench_codecs():
    (doc,) = json.loads(bench("bench_codecs", "--models", "alexnet", "--codecs", "raw,int8,zlib", "--frames", "1", "--repeat", "1",
                              "--json").stdout)
    assert doc["model"] == "alexnet" and doc["layers"]
    for layer in doc["layers"]:
        codecs = layer["codecs"]
        assert set(codecs) == {"raw", "int8", "zlib"}
        assert codecs["raw"]["rel_error"] == 0 and codecs["zlib"]["rel_error"] == 0  # lossless: bit for bit
        assert 0 < codecs["int8"]["rel_error"] <= 1 / 255  # half a step of at most 2 max|x| / 255
    assert max(doc["layers"], key=lambda layer: layer["bytes"])["codecs"]["int8"]["ratio"] > 3.9  # a byte for four, header aside
    fuzz = json.loads(bench("bench_codecs", "--fuzz", "40", "--codecs", "raw,int8,zlib", "--json").stdout)
    assert set(fuzz) == {"raw", "int8", "zlib"} and all(r["cases"] == 40 and r["failures"] == 0 for r in fuzz.values())


def test_bench_forward():
    doc = json.loads(bench("bench_forward", "lenet5", "--repeat", "1", "--matmul-size", "128", "--json").stdout)
    assert doc["model"] == "lenet5" and doc["matmul_size"] == 128 and doc["matmul_gflops"] > 0
    assert [n["name"] for n in doc["nodes"]] == [n.name for n in zoo_model("lenet5").nodes]
    assert doc["conv_gflops"] > 0 and doc["forward_seconds"] > 0


def test_bench_planner():
    doc = json.loads(bench("bench_planner", "--models", "lenet5", "--cluster", "rpi3:2@94mbit", "--repeat", "1", "--json").stdout)
    (timing,) = doc["planning"]
    assert (timing["model"], timing["devices"], timing["link"]) == ("lenet5", "rpi3:2", "94mbit") and len(timing["all_seconds"]) == 1
    (row,) = doc["predicted"]
    assert row["model"] == "lenet5" and row["dp"]["throughput_fps"] > 0
    assert {"dp", "paper", "memory", "single"} <= set(row)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "bench_planner"), "--cluster", "rpi3:2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--cluster: DEVICES@LINK" in proc.stderr


@pytest.mark.mpi
@pytest.mark.slow
def test_bench_splits():
    doc = json.loads(bench("bench_splits", "--only", "fc6", "--kinds", "fc-output", "--ranks", "2", "--repeat", "1", "--json").stdout)
    (r,) = doc["results"]
    assert "error" not in r, r
    assert (r["layer"], r["kind"], r["ranks"], r["sizes"]) == ("fc6", "fc-output", 2, [2048, 2048])
    assert r["max_abs_error"] < 1e-3  # the split layer equals the unsplit one


@pytest.mark.mpi
@pytest.mark.slow
def test_bench_pipeline():
    out = bench("bench_pipeline", "--models", "lenet5", "--engines", "numpy", "--frames", "8", "--spin-seconds", "0.2").stdout
    assert out.startswith("load: ") and "two-core capacity now" in out
    (line,) = [line for line in out.splitlines() if line.startswith("lenet5 [numpy]: 1 rank ")]
    assert "2-rank pipeline (cut before" in line and "-> ratio" in line and "(8 frames;" in line


@pytest.mark.mpi
@pytest.mark.slow
def test_bench_soak():
    doc = json.loads(bench("bench_soak", "--frames", "300", "--ranks", "2", "--json").stdout)
    assert doc["frames"] == 300 and doc["ranks"] == 2 and doc["every_frame_once"] is True
    assert [r["rank"] for r in doc["per_rank"]] == [0, 1] and all(len(r["checkpoints"]) == 5 for r in doc["per_rank"])


@pytest.mark.slow
def test_bench_litert():
    out = bench("bench_litert", "--models", "lenet5", "--repeat", "1").stdout.splitlines()
    assert out[0].startswith("one thread each") and "1 passes taking turns" in out[0]
    rows = [line.split()[0] for line in out[3:]]
    assert rows == ["lenet5", "vgg16:block1_conv2"]


@pytest.mark.mpi
@pytest.mark.slow
def test_bench_latency():
    """The table as the lead reads it: one line per model and cluster, every frame through (the bench exits otherwise)."""
    proc = bench("bench_latency", "--models", "lenet5", "--configs", "rpi3:2@94mbit", "--frames", "2")
    assert proc.stderr.splitlines()[-1].startswith("load average ")
    (line,) = proc.stdout.splitlines()
    m = re.fullmatch(r"lenet5   rpi3:2    94 Mbit/s \| latency p50 +([\d.]+) ms p90 +([\d.]+) \(pred +([\d.]+), x[\d.]+\) \| one rpi3 +([\d.]+) ms "
                     r"\(pred +([\d.]+)\) \| speedup [\d.]+x \(pred [\d.]+x\) \| (\d+) kept segments \| (.+?)"
                     r"( \| NOT A RESULT: .+)?", line)  # the suffix: this machine fell behind the emulated devices
    assert m, line
    p50, p90 = float(m[1]), float(m[2])
    assert 0 < p50 <= p90 and float(m[3]) > 0 and float(m[4]) > 0
    graph = zoo_model("lenet5")
    stages = [re.fullmatch(r"(single|split|data-parallel)x(\d)\[(\d+):(\d+)\)", s) for s in m[7].split()]
    assert all(stages) and stages[0][3] == "0" and stages[-1][4] == str(len(graph))  # the whole model, stage after stage
    assert all(a[4] == b[3] for a, b in zip(stages, stages[1:]))


@pytest.mark.mpi
@pytest.mark.slow
def test_bench_emulate():
    (row,) = json.loads(bench("bench_emulate", "--models", "lenet5", "--configs", "rpi3:2@94mbit", "--json").stdout)
    assert (row["model"], row["devices"], row["link_mbit"]) == ("lenet5", "rpi3:2", 94.0)
    for planner in ("dp", "paper"):
        r = row[planner]
        assert 1 <= r["ranks"] <= 2 and r["frames"] >= 16 and r["measured_fps"] > 0 and r["predicted_fps"] > 0
    assert row["single_fps"] > 0 and row["speedup_vs_paper"] == row["dp"]["measured_fps"] / row["paper"]["measured_fps"]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "bench_emulate"), "--configs", "rpi3:2@94mbit", "--frames", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unrecognized arguments: --frames 3" in proc.stderr  # its flags, as before


@pytest.mark.mpi
@pytest.mark.slow
def test_bench_exits():
    """One model, one T, a few frames on 2 emulated devices (the default is 4), without the DDNN tables (one
    process, tested in tests/cluster/test_exits*)."""
    out = bench("bench_exits", "--models", "branchy_lenet_mnist", "--thresholds", "0.3", "--frames", "4", "--ddnn", "none",
                "--devices", "rpi3:2").stdout
    assert "branchy_lenet_mnist: early exits on emulated rpi3:2 at 94 Mbit/s (4 held-out frames;" in out
    cells = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in out.splitlines() if line.startswith("│")}
    assert set(cells) == {"no exits", "0.3"}
    exit1, final = float(cells["0.3"][0]), float(cells["0.3"][1])
    assert abs(exit1 + final - 100) < 0.15 and cells["no exits"][1] == "100.0"  # every frame leaves at one exit
    assert cells["0.3"][4].startswith("exit1 ")  # the exit plan cuts at the exit
    (answers,) = [line for line in out.splitlines() if line.startswith("run answers per exit (last T): ")]
    assert sum(json.loads(answers.split(": ", 1)[1].replace("'", '"')).values()) == 4  # each frame answered once
    assert "DDNN" not in out
