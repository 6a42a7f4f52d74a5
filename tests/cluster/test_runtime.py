"""The pipeline runtime: framing, routing and shards in-process; real `mpirun -n 1..4` runs against
the single-process reference (every frame exactly once, outputs equal), error paths that must not hang,
the report, the trace file and per-rank memory."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cluster.report import chrome_trace, percentiles_ms, steady_throughput
from cluster.runtime import FrameCodec, RankStats, RunResult, entry_rank, frames_of, shard_graph, synthetic_frame
from layers import zoo_model
from layers.builder import GraphBuilder
from layers.serialize import save_graph
from tests.conftest import require, varied

from .pipeline_plans import hand_plan

ROOT = Path(__file__).resolve().parents[2]


def skip_graph(seed: int = 3):
    """A small graph whose middle cut carries two tensors (a skip connection)."""
    b = GraphBuilder("skipnet", seed)
    x = b.input("input", (1, 12, 10, 3))
    a = b.conv(x, 8, 3, "conv_a", padding="same", activation="relu")
    c = b.conv(a, 8, 3, "conv_b", padding="same", activation="relu")
    c = b.conv(c, 8, 3, "conv_c", padding="same")
    y = b.add("add", [a, c], "join")
    y = b.pool(y, "max", 2, "pool")
    y = b.act(y, "flatten", "flatten")
    y = b.dense(y, 7, "fc")
    return b.build(y)


def reference_outputs(graph, n_frames: int, seed: int = 0) -> np.ndarray:
    """What `pisplit run` must produce for its default seeded random frames."""
    outs = []
    for f in range(n_frames):
        feeds = synthetic_frame(graph, seed, f)
        assert all(-1 <= x.min() and x.max() < 1 and x.std() > 0.3 for x in feeds.values())
        outs.append(graph.forward(**feeds)[0])
    return np.stack(outs)


# --- in-process -----------------------------------------------------------------------------------------
def test_frame_codec_round_trips_several_tensors(rng):
    g = skip_graph()
    cut = 3  # after conv_c: conv_a's and conv_c's outputs are both live
    codec = FrameCodec(g, g.cut_tensors(cut))
    assert len(codec.names) == 2
    tensors = {t: varied(rng.standard_normal(g.shapes[t]).astype(np.float32)) for t in codec.names}
    buf = codec.pack(41, tensors, start_ns=123, end_ns=456, duration_ns=7)
    assert buf.dtype == np.float32 and buf.size == codec.length
    assert FrameCodec.header(buf) == (41, 123, 456, 7)
    back = codec.unpack(buf)
    for t in codec.names:
        np.testing.assert_array_equal(back[t], tensors[t])


@pytest.mark.parametrize("mode,ranks", [("single", (2,)), ("split", (1, 4)), ("data-parallel", (3, 5, 6))])
def test_routing_gives_every_frame_to_exactly_one_entry_rank(mode, ranks):
    g = zoo_model("lenet5")
    plan = hand_plan(g, [(0, 4, [0], "single"), (4, 9, list(range(1, 1 + len(ranks))), mode)])
    stage = plan.stages[1]
    n = 11
    handled = sorted(f for r in stage.ranks for f in frames_of(stage, r, n))
    assert handled == list(range(n))
    for r in stage.ranks:
        assert all(entry_rank(stage, f) == r for f in frames_of(stage, r, n))


def test_shards_chained_equal_the_whole_model(rng):
    g = skip_graph()
    x = varied(rng.standard_normal(g.inputs["input"]).astype(np.float32))
    tensors = {"input": x}
    for a, b in [(0, 2), (2, 3), (3, 5), (5, len(g))]:
        shard = shard_graph(g, a, b)
        assert list(shard.inputs) == g.cut_tensors(a)
        tensors = shard.execute(tensors)
    np.testing.assert_allclose(tensors[g.outputs[0]], g.forward(x), rtol=1e-5, atol=1e-5)


def test_rank_stats_travel_as_float_arrays():
    s = RankStats(3, 1, frames=5, compute_s=0.5, memory_baseline_bytes=1 << 20, memory_peak_bytes=3 << 20,
                  events=[(0, 1, 0.25, 0.125), (1, -1, 0.5, 0.0625)])
    assert RankStats.from_array(s.to_array()) == s


def test_report_helpers():
    assert steady_throughput(np.arange(10) * 0.5) == pytest.approx(2.0)
    # 4 data-parallel replicas at 1 frame/s each, 16 frames in 4 bursts: 4 frames/s, not more
    bursts = np.repeat(0.5 + np.arange(4.0), 4) + np.tile([0.0, 0.01, 0.02, 0.03], 4)
    assert steady_throughput(bursts) == pytest.approx(4.0)  # counted from a burst's end: (n - 1) / span reads 4.95
    # two emulated VGG16 replicas (0.74 frames/s), one result taken a poll early: a line through every
    # second completion read 0.99 frames/s
    shifted = [2.7683, 2.7688, 5.4990, 5.4993, 8.0819, 10.6828, 10.6833, 13.4136, 13.4139, 16.1441, 16.1445, 16.1445,
               18.8286, 18.8290, 21.5299, 21.5303]
    assert steady_throughput(np.array(shifted)) == pytest.approx(12 / (21.5303 - 5.4993))
    assert steady_throughput(np.array([1.0, 1.0, 1.0])) == pytest.approx(3.0)  # one group: frames over its time
    lat = percentiles_ms(np.array([0.01, 0.02, 0.03]))
    assert lat["p50"] == pytest.approx(20.0) and lat["max"] == pytest.approx(30.0)
    g = zoo_model("lenet5")
    plan = hand_plan(g, [(0, 4, [0], "single"), (4, 9, [1], "single")])
    result = RunResult(ranks=[RankStats(0, 0, events=[(0, 0, 0.0, 0.001)]), RankStats(1, 1, events=[(1, 0, 0.0, 0.002)])])
    doc = json.loads(json.dumps(chrome_trace(plan, result)))
    tracks = {e["tid"] for e in doc["traceEvents"] if e["ph"] == "X"}
    assert tracks == {0, 1}


# --- real mpirun ------------------------------------------------------------------------------------------
def mpirun(n: int, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`mpirun -n n pisplit ...` through cluster.mpirun (root and oversubscription handled there)."""
    from cluster.mpirun import local_mpirun_command, mpirun_env, run_local

    try:
        cmd = local_mpirun_command(n, [sys.executable, "-m", "cluster.cli", *map(str, args)])
    except FileNotFoundError as exc:
        require(False, str(exc))
    env = mpirun_env()
    env.update(TERM="dumb", NO_COLOR="1", PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    return run_local(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


CASES = [
    # (name, model, stages, frames)
    ("lenet5-1", "lenet5", [(0, 9, [0], "single")], 5),
    ("lenet5-2", "lenet5", [(0, 4, [0], "single"), (4, 9, [1], "single")], 17),
    ("lenet5-3dp", "lenet5", [(0, 2, [0], "single"), (2, 9, [1, 2], "data-parallel")], 13),
    ("lenet5-4", "lenet5", [(0, 2, [0, 1], "data-parallel"), (2, 6, [2], "single"), (6, 9, [3], "single")], 12),
    ("lenet5-split", "lenet5", [(0, 2, [0], "single"),
                                (2, 9, [1, 2], "split", [(2, 4, "conv-channel", (9, 7)), (4, 5, "none", ()),
                                                         (5, 6, "fc-output", (70, 50)), (6, 9, "none", ())])], 7),
    ("skip-4", "skip", [(0, 1, [0], "single"), (1, 3, [1], "single"), (3, 4, [2], "single"), (4, 7, [3], "single")], 9),
]


@pytest.mark.mpi
def test_pipelines_under_mpirun_match_the_reference(tmp_path):
    skip = skip_graph()
    skip_path, _ = save_graph(skip, tmp_path / "skip.json")
    for name, model, stages, frames in CASES:
        graph = skip if model == "skip" else zoo_model(model)
        plan = hand_plan(graph, stages, model=str(skip_path) if model == "skip" else model)
        plan_path = plan.save(tmp_path / f"{name}.json")
        out, trace = tmp_path / f"{name}.npz", tmp_path / f"{name}-trace.json"
        proc = mpirun(plan.n_ranks, "run", plan_path, "--frames", frames, "--output", out, "--trace", trace, "--json")
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        doc = json.loads(proc.stdout)
        assert doc["every_frame_once"] and doc["frames"] == frames
        assert doc["throughput_fps"] > 0 and set(doc["latency_ms"]) >= {"p50", "p90", "p99"}
        assert [s["index"] for s in doc["stages"]] == list(range(len(stages)))
        with np.load(out, allow_pickle=False) as z:
            ids = z["frame_ids"]
            assert sorted(ids.tolist()) == list(range(frames)), f"{name}: frames lost or duplicated: {ids}"
            y = z["output_0"]
        ref = reference_outputs(graph, frames)
        assert y.shape == ref.shape and y.dtype == np.float32
        varied(ref[:, :])
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5, err_msg=name)
        events = json.loads(trace.read_text())["traceEvents"]
        assert {e["tid"] for e in events if e["ph"] == "X"} == set(range(plan.n_ranks)), name
        assert all(e["dur"] >= 0 and "ts" in e for e in events if e["ph"] == "X")


@pytest.mark.mpi
def test_given_input_frames_and_progress_bar_on_rank_0_only(tmp_path, rng):
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 4, [0], "single"), (4, 9, [1], "single")]).save(tmp_path / "plan.json")
    x = varied(rng.standard_normal((3, 32, 32, 1)).astype(np.float32))
    np.save(tmp_path / "x.npy", x)
    proc = mpirun(2, "run", plan, "--frames", 7, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("7/7 frames") == 1  # the bar's final state, printed by rank 0 alone
    assert "throughput" in proc.stdout
    with np.load(tmp_path / "y.npz", allow_pickle=False) as z:
        y = z["output_0"]
    ref = np.stack([graph.forward(x[f % 3][None])[0] for f in range(7)])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.mpi
def test_user_errors_end_every_rank_with_one_message(tmp_path):
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 4, [0], "single"), (4, 9, [1], "single")])
    good = plan.save(tmp_path / "plan.json")
    doc = plan.to_dict()
    doc["model"] = str(tmp_path / "missing.json")
    missing = tmp_path / "missing-model-plan.json"
    missing.write_text(json.dumps(doc))
    np.save(tmp_path / "bad.npy", np.ones((2, 28, 28, 1), np.float32))
    cases = [
        ((3, "run", good), "needs 2 ranks, this run has 3"),
        ((2, "run", missing), "missing.json: cannot be read"),
        ((2, "run", good, "--input", tmp_path / "bad.npy"), "does not match model input"),
        ((2, "run", tmp_path / "nope.json"), "cannot be read"),
    ]
    for (n, *args), message in cases:
        proc = mpirun(n, *args, timeout=60)  # a hang fails here with TimeoutExpired
        assert proc.returncode != 0
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pisplit: error")]
        assert len(errors) == 1 and message in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.mpi
@pytest.mark.slow
def test_a_rank_holds_only_its_shard(tmp_path):
    # the planner's own memory prediction (weights, working set with the kept im2col buffer, frame
    # buffers) for AlexNet cut in two on two Pi 3: convolutions on rank 0, the 234 MB of fc on rank 1
    from cluster.emulated_plans import plan_for_devices

    graph = zoo_model("alexnet")
    plan = plan_for_devices(graph, "alexnet", "rpi3:2", 94e6, "paper", "throughput", "numpy")
    assert [s.mode for s in plan.stages] == ["single", "single"] and plan.stages[1].node_start <= graph.node_index("fc6")
    proc = mpirun(2, "run", plan.save(tmp_path / "plan.json"), "--frames", 4, "--json")
    assert proc.returncode == 0, proc.stderr
    conv_rank, fc_rank = json.loads(proc.stdout)["ranks"]
    assert 0.8 <= fc_rank["memory_ratio"] <= 1.2, fc_rank
    # 13 MiB predicted: heap fragmentation between frames and the source's and sink's message buffers
    # are what this rank adds beyond it (1.21-1.28x in CI runs: 2 MiB of slack on top of 20%)
    predicted = conv_rank["memory_predicted_bytes"]
    assert 0.8 * predicted <= conv_rank["memory_above_baseline_bytes"] <= 1.2 * predicted + (2 << 20), conv_rank
    # and the conv rank holds none of the fc weights
    assert conv_rank["memory_above_baseline_bytes"] < 0.1 * fc_rank["memory_above_baseline_bytes"], (conv_rank, fc_rank)


@pytest.mark.mpi
@pytest.mark.litert
def test_litert_engine_runs_each_shard(tmp_path):
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        require(False, "ai-edge-litert is not installed")
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 4, [0], "single"), (4, 9, [1], "single")]).save(tmp_path / "plan.json")
    proc = mpirun(2, "run", plan, "--frames", 5, "--engine", "litert", "--output", tmp_path / "y.npz", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["engine"] == "litert"
    with np.load(tmp_path / "y.npz", allow_pickle=False) as z:
        np.testing.assert_allclose(z["output_0"], reference_outputs(graph, 5), rtol=1e-4, atol=1e-4)


def test_memory_prediction_counts_the_frame_buffers_of_the_run_window():
    from cluster.emulated_plans import plan_for_devices
    from cluster.runtime import memory_prediction

    graph = zoo_model("alexnet")
    plan = plan_for_devices(graph, "alexnet", "rpi3:3", 94e6, "dp", "throughput", "numpy")
    first, second = plan.stages[0], plan.stages[1]
    assert (first.mode, second.mode) == ("single", "data-parallel")
    cut = [graph.cut_bytes(c) for c in range(len(graph) + 1)]
    assert memory_prediction(plan, 0, graph) == first.predicted.memory_bytes[0]  # the default window: as planned
    # two more frames: rank 0 keeps two more outputs and posts two more result receives; a replica
    # keeps two more inputs and outputs
    assert memory_prediction(plan, 0, graph, window=4) - memory_prediction(plan, 0, graph) == 2 * cut[first.node_stop] + 2 * cut[-1]
    replica = second.ranks[1]
    extra = 2 * (cut[second.node_start] + cut[second.node_stop])
    assert memory_prediction(plan, replica, graph, window=4) - memory_prediction(plan, replica, graph) == extra


def test_ranks_sharing_a_host_split_its_cores_between_their_blas_threads():
    from cluster import share_cores_between_local_ranks

    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    assert share_cores_between_local_ranks(env, cores=8) == 2
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "8"}
    assert share_cores_between_local_ranks(env, cores=2) == 1 and env["OPENBLAS_NUM_THREADS"] == "1"
    mine = {"OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OPENBLAS_NUM_THREADS": "3"}
    assert share_cores_between_local_ranks(mine, cores=8) is None and mine["OPENBLAS_NUM_THREADS"] == "3"  # the user's choice
    alone = {"OMPI_COMM_WORLD_LOCAL_SIZE": "1"}  # one rank per Pi: all its cores
    assert share_cores_between_local_ranks(alone, cores=4) is None and "OPENBLAS_NUM_THREADS" not in alone


@pytest.mark.mpi
def test_mpirun_ranks_on_one_host_get_their_share_of_the_cores():
    import os

    from cluster.mpirun import local_mpirun_command, mpirun_env, run_local

    env = {k: v for k, v in mpirun_env().items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = "import cluster, os; print(os.environ['OPENBLAS_NUM_THREADS'])"
    proc = run_local(local_mpirun_command(2, [sys.executable, "-c", code]), capture_output=True, text=True,
                     env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(max(1, (os.cpu_count() or 1) // 2))] * 2


@pytest.mark.mpi
def test_outputs_are_written_in_the_models_output_order(tmp_path):
    # the model lists a late tensor first: output_0 must be it, not the first one computed
    b = GraphBuilder("two_heads", 4)
    x = b.input("input", (1, 6, 6, 2))
    early = b.conv(x, 3, 3, "early", padding="same")
    late = b.conv(early, 4, 3, "late", padding="same")
    graph = b.build([late, early])
    path, _ = save_graph(graph, tmp_path / "two_heads.json")
    plan = hand_plan(graph, [(0, 1, [0], "single"), (1, 2, [1], "single")], model=str(path))
    out = tmp_path / "y.npz"
    proc = mpirun(2, "run", plan.save(tmp_path / "plan.json"), "--frames", 2, "--output", out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as z:
        assert list(z["names"]) == ["late", "early"]
        ref = graph.forward(**synthetic_frame(graph, 0, 0))
        np.testing.assert_allclose(z["output_0"][0], ref["late"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["output_1"][0], ref["early"][0], rtol=1e-5, atol=1e-6)


@pytest.mark.mpi
@pytest.mark.slow
def test_split_ranks_hold_their_slices_while_loading_and_running(tmp_path):
    # AlexNet's latency plan on 4 ranks: every rank's fc weights are slices (fc6's 144 MiB kernel
    # split four ways); loading reads only each rank's box (it used to generate the whole kernel, a
    # 150 MiB peak for a 59 MiB rank), and the running rank is near the plan's prediction
    from cluster.emulated_plans import plan_for_devices

    graph = zoo_model("alexnet")
    plan = plan_for_devices(graph, "alexnet", "rpi4:4", 940e6, "dp", "latency", "numpy")
    (stage,) = plan.stages
    assert stage.mode == "split" and any(g.kind.startswith("fc-") for g in stage.segments)
    proc = mpirun(4, "run", plan.save(tmp_path / "plan.json"), "--frames", 4, "--json")
    assert proc.returncode == 0, proc.stderr
    for rank in json.loads(proc.stdout)["ranks"]:
        predicted = rank["memory_predicted_bytes"]
        assert 0.85 <= rank["memory_ratio"] <= 1.2, rank
        assert rank["memory_load_peak_above_baseline_bytes"] <= 1.2 * predicted, rank


def test_synthetic_frames_of_a_quantized_input_are_integers_of_its_type():
    # an int8 model's input stream (pisplit run without --input): uniform over int8, written into the
    # frame buffers rank 0 reuses, the same for the same (seed, frame)
    from cluster.runtime import synthetic_frame

    class Inputs:  # what synthetic_frame reads of a graph
        inputs = {"image": (1, 4, 5, 3), "scale": (1, 2)}

        def dtype(self, name):
            return np.dtype(np.int8 if name == "image" else np.float32)

    graph = Inputs()
    out = {"image": np.zeros((1, 4, 5, 3), np.int8), "scale": np.zeros((1, 2), np.float32)}
    x = synthetic_frame(graph, 3, 7, out)
    assert x["image"] is out["image"] and x["image"].dtype == np.int8 and x["scale"].dtype == np.float32
    assert x["image"].min() < -60 and x["image"].max() > 60  # the whole int8 range, not [-1, 1)
    again = synthetic_frame(graph, 3, 7)
    np.testing.assert_array_equal(again["image"], out["image"])
    assert -1 <= again["scale"].min() and again["scale"].max() < 1


@pytest.mark.mpi
@pytest.mark.slow
def test_int8_ranks_hold_what_their_plan_predicts(tmp_path):
    # issue 12: full-integer MobileNetV2 on the numpy engine, two ranks in a pipeline (nodes 0-20, 21-64);
    # every rank's memory above its baseline is near the plan's prediction (its int8 kernels' bands and
    # filter blocks, the model's quantization parameters every rank holds): 0.96 and 0.82 measured, where
    # the float count the plan used before gave 1.21 and 2.74. Under-prediction is the failure that places
    # a stage on a Pi that then runs out of memory: the upper bound is the tight one. (The rank holding most
    # weights is the low one: the interpreter's free heap at the baseline and the model file's pages handed
    # back as it copies its weights take part of them.)
    from cluster.emulated_plans import plan_for_devices
    from layers import load_model
    from tests.layers.test_int8_corpus import CORPUS

    model = CORPUS / "mobilenet_v2_int8.tflite"
    require(model.is_file(), f"no {model} (bash scripts/build_corpus builds it)")
    plan = plan_for_devices(load_model(str(model)), str(model), "rpi3:2", 94e6, "dp", "throughput", "numpy")
    assert plan.n_ranks == 2 and all(s.predicted for s in plan.stages)
    proc = mpirun(2, "run", plan.save(tmp_path / "plan.json"), "--frames", 2, "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    for rank in json.loads(proc.stdout)["ranks"]:
        assert 0.7 <= rank["memory_ratio"] <= 1.15, rank
