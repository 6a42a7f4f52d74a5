"""`pisplit codecs` (issue 15): the per-cut table, saved tables, edge-host candidates and plans, a
codec-priced dp plan, one-line errors; an edge-host plan with an encoded link run under mpirun --emulate."""
from __future__ import annotations

import json

import numpy as np
import pytest

from layers import zoo_model
from partitioners.link_pricing import CodecTable
from partitioners.plan import Plan
from tests.conftest import run_pisplit

from .test_runtime import mpirun


@pytest.fixture(scope="module")
def lenet_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("codecs") / "lenet5.json"
    proc = run_pisplit("codecs", "lenet5", "--frames", 2, "--codecs", "zstd,lz4,int8+zstd,jpeg:50", "--save", path, "--json")
    doc = json.loads(proc.stdout)
    assert doc["frames"].startswith("seeded random frames") and doc["n_frames"] == 2
    return path, doc


def test_codecs_table_per_cut_with_ratios_times_and_transfer(lenet_table):
    path, doc = lenet_table
    g = zoo_model("lenet5")
    assert [c["cut"] for c in doc["cuts"]] == list(range(len(g)))
    for c in doc["cuts"]:
        assert c["raw_bytes"] == g.cut_bytes(c["cut"])
        assert c["raw_ms"] == pytest.approx(0.3 + c["raw_bytes"] * 8 / 2e6 * 1e3)
        assert set(c["codecs"]) == {"zstd", "lz4", "int8+zstd", "jpeg:50"}
        for name, v in c["codecs"].items():
            assert v["ratio"] > 0 and v["encode_ms"] >= 0 and v["decode_ms"] >= 0
            on_link = c["raw_bytes"] / v["ratio"] * 8 / 2e6 * 1e3
            assert v["transfer_ms"] == pytest.approx(v["encode_ms"] + 0.3 + on_link + v["decode_ms"])
    table = CodecTable.load(path)
    assert table.model == "lenet5" and len(table.cuts) == len(g)
    assert all(s.max_rel_error > 0 for c in table.cuts for s in c.samples if not s.lossless)
    proc = run_pisplit("codecs", "lenet5", "--table", path, "--layer", "pool1", "--link", "1mbit")
    assert "pool1" in proc.stdout and "conv1 " not in proc.stdout and "1 Mbit/s" in proc.stdout


def test_codecs_edge_host_prints_candidates_and_writes_a_plan(lenet_table, tmp_path):
    path, _ = lenet_table
    plan_path = tmp_path / "plan.json"
    proc = run_pisplit("codecs", "lenet5", "--table", path, "--devices", "rpi3:1,host:1", "--link", "2mbit", "--all",
                       "--max-rel-error", "0.05", "--plan-output", plan_path, "--json")
    doc = json.loads(proc.stdout)
    cuts = {c["cut"] for c in doc["candidates"]}
    assert cuts == set(range(len(zoo_model("lenet5")) + 1))
    assert {"raw", "jpeg:50", "int8+zstd"} <= {c["codec"] for c in doc["candidates"]}
    assert all(c["edge_energy_j"] > 0 and c["throughput_fps"] > 0 for c in doc["candidates"])
    plan = Plan.load(plan_path)
    assert plan.devices[0].kind == "rpi3" and plan.planner == "edge-host"


def test_codecs_dp_plan_names_a_codec_per_link(lenet_table, tmp_path):
    path, _ = lenet_table
    plan_path = tmp_path / "plan.json"
    run_pisplit("codecs", "lenet5", "--table", path, "--devices", "rpi3:3", "--link", "1mbit", "--plan-output", plan_path)
    plan = Plan.load(plan_path)
    assert plan.stages[-1].send_codec == "raw"
    if len(plan.stages) > 1:
        assert all(s.send_codec in ("raw", "zstd", "lz4") for s in plan.stages[:-1])  # lossless without a budget


@pytest.mark.parametrize("args,message", [
    (("--layer", "nope"), "nope"),
    (("--layer", "99"), "--layer 99: node index must be in"),
    (("--max-accuracy-loss", "2x"), "--max-accuracy-loss '2x': expected a fraction"),
    (("--codecs", "gzip"), "unknown codec 'gzip'"),
    (("--link", "fast"), "link 'fast'"),
    (("--devices", "rpi3:2,host:1", "--codecs", "zstd"), None),  # not edge-host: the dp planner, fine
    (("--emulate", "4"), "--emulate runs the plan --devices makes"),
])
def test_codecs_errors_are_one_line(args, message):
    proc = run_pisplit("codecs", "lenet5", "--frames", 1, *args, check=message is None)
    if message is None:
        return
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pisplit: error")]
    assert len(errors) == 1 and message in errors[0], proc.stderr


@pytest.mark.mpi
def test_an_edge_host_plan_with_an_encoded_link_runs_emulated(lenet_table, tmp_path):
    from partitioners.cost import CostModel, make_cluster
    from partitioners.devices import parse_devices
    from partitioners.edge_host import edge_host_candidates, edge_host_plan

    path, _ = lenet_table
    g = zoo_model("lenet5")
    model = CostModel(g, make_cluster(parse_devices("rpi3:1,host:1"), 2e6))
    cut = g.node_index("pool1") + 1
    chosen = next(c for c in edge_host_candidates(model, CodecTable.load(path)) if c.cut == cut and c.codec == "zstd")
    plan = edge_host_plan(model, chosen, "lenet5")
    assert plan.stages[0].send_codec == "zstd" and plan.devices[1].kind == "host"
    proc = mpirun(2, "run", plan.save(tmp_path / "plan.json"), "--frames", 6, "--emulate", "--host-speed", 1.0,
                  "--output", tmp_path / "y.npz", "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["every_frame_once"] and doc["frames"] == 6
    from cluster.runtime import synthetic_frame

    with np.load(tmp_path / "y.npz", allow_pickle=False) as z:
        y = z["output_0"]
    ref = np.concatenate([g.forward(**synthetic_frame(g, 0, f)) for f in range(6)])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)  # a lossless link: the model's own outputs


def test_codecs_cluster_and_host_prints_every_cut_and_writes_a_plan(lenet_table, tmp_path):
    path, _ = lenet_table
    plan_path = tmp_path / "plan.json"
    proc = run_pisplit("codecs", "lenet5", "--table", path, "--devices", "rpi3:2,host:1", "--link", "1mbit", "--max-rel-error", "0.05",
                       "--plan-output", plan_path, "--json")
    doc = json.loads(proc.stdout)
    assert [c["cut"] for c in doc["candidates"]] == list(range(1, len(zoo_model("lenet5"))))
    best = max(doc["candidates"], key=lambda c: c["throughput_fps"])
    plan = Plan.load(plan_path)
    assert plan.planner == "cluster-host" and plan.devices[-1].kind == "host" and plan.stages[-1].node_start == best["cut"]
    assert plan.predicted_throughput_fps == pytest.approx(best["throughput_fps"])
    proc = run_pisplit("codecs", "lenet5", "--table", path, "--devices", "host:2", check=False)
    assert proc.returncode == 1 and "at most one host" in proc.stderr


def test_codecs_chart_draws_the_table(lenet_table, tmp_path):
    import importlib.util

    from tests.conftest import require

    require(importlib.util.find_spec("matplotlib") is not None, "matplotlib (pisplit[charts]) is not installed")
    path, _ = lenet_table
    run_pisplit("codecs", "lenet5", "--table", path, "--chart", tmp_path / "c.html")
    text = (tmp_path / "c.html").read_text()
    assert "<svg" in text and "jpeg:50" in text and "conv1" in text
    proc = run_pisplit("codecs", "lenet5", "--table", path, "--chart", tmp_path / "c.gif", check=False)
    assert proc.returncode == 1 and "unknown format '.gif'" in proc.stderr


@pytest.mark.mpi
def test_codecs_emulates_the_plan_it_chose(lenet_table):
    path, _ = lenet_table
    proc = run_pisplit("codecs", "lenet5", "--table", path, "--devices", "rpi3:1,host:1", "--link", "2mbit", "--max-rel-error", "0.05",
                       "--emulate", 6, "--json")
    doc = json.loads(proc.stdout)
    run = doc["emulated"]
    assert run["frames"] == 6 and run["every_frame_once"] and run["throughput_fps"] > 0
    assert run["predicted_fps"] == pytest.approx(doc["plan"]["predicted_throughput_fps"])


def test_pisplit_plan_with_a_host_plans_edge_and_host(lenet_table, tmp_path):
    path, _ = lenet_table
    g = zoo_model("lenet5")
    proc = run_pisplit("plan", "lenet5", "--devices", "rpi3:1,host:1", "--link", "2mbit", "--codecs", path, "--max-rel-error", "0.05",
                       "--output", tmp_path / "eh.json", "--json", "--candidates")
    doc = json.loads(proc.stdout)
    assert {c["cut"] for c in doc["candidates"]} == set(range(len(g) + 1))  # every cut, raw and its best codec
    assert all(c["edge_energy_j"] > 0 for c in doc["candidates"]) and any(c["codec"] != "raw" for c in doc["candidates"])
    plan = Plan.load(tmp_path / "eh.json")
    assert plan.planner == "edge-host" and plan.devices[0].kind == "rpi3"  # rank 0, the frames' source, is the edge
    proc = run_pisplit("plan", "lenet5", "--devices", "rpi3:2,host:1", "--link", "2mbit", "--json")
    doc = json.loads(proc.stdout)  # --json without --candidates: the bare plan, as other plans print
    assert doc["planner"] == "cluster-host" and doc["devices"][-1]["kind"] == "host"


def test_emulate_plans_edge_and_host_with_the_edge_as_rank_0(lenet_table):
    from cluster.commands.codecs import host_plan
    from layers import load_model
    from partitioners.link_pricing import CodecSample, CutCodecs

    path, _ = lenet_table
    g = zoo_model("lenet5")
    table = CodecTable.load(path)
    assert host_plan(g, "lenet5", "rpi3:2", 22e6, "numpy", table) is None  # no host: the dp planner's
    # an input that zstd shrinks 100x for free: everything on the host is the best candidate
    free = CodecTable("lenet5", len(g), "hand-made", 1, "host", (CutCodecs(0, "input", g.cut_bytes(0), 1,
                                                                            (CodecSample("zstd", g.cut_bytes(0) / 100, 0.0, 0.0),)),))
    plan = host_plan(g, "lenet5", "rpi3:1,host:1", 22e6, "numpy", free)
    assert plan.planner == "edge-host" and [d.kind for d in plan.devices] == ["rpi3", "host"]
    assert [(s.node_start, s.node_stop, s.send_codec) for s in plan.stages] == [(0, 1, "zstd"), (1, len(g) + 1, "raw")]
    wrapped = load_model(plan.model)  # saved for the run: the model behind the edge's input-passing node
    assert len(wrapped) == len(g) + 1 and wrapped.nodes[0].name == "edge_input"
    plan = host_plan(g, "lenet5", "rpi3:2,host:1", 2e6, "numpy", table)
    assert plan.planner == "cluster-host" and [d.kind for d in plan.devices][-1] == "host"
