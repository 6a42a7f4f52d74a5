"""Encoded links (issue 15): plans naming a codec per cut, in process and under real mpirun.

Lossless codecs must give outputs bit-identical to the raw plan's; lossy ones exactly what the model
gives when the cut tensor is encoded and decoded in one process (codecs are deterministic), and the
decoded cut within codecs.error_bound; a corrupt message sent over real MPI is an error naming the link.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cluster.link_codecs import EncodedFrameCodec, frame_codec
from cluster.runtime import FrameCodec, synthetic_frame
from layers import zoo_model
from layers.errors import PisplitError
from layers.serialize import save_graph
from partitioners.codecs import decode, encode, error_bound
from partitioners.plan import Plan
from tests.conftest import require, varied

from .pipeline_plans import hand_plan
from .test_runtime import mpirun, skip_graph

ROOT = Path(__file__).resolve().parents[2]


def with_codecs(plan: Plan, codecs: list[str]) -> Plan:
    """`plan` with send_codec of stage i = codecs[i] (the last stage stays raw)."""
    stages = tuple(replace(s, send_codec=c) for s, c in zip(plan.stages, [*codecs, "raw"]))
    return replace(plan, stages=stages).validate()


# --- in process -------------------------------------------------------------------------------------------
def test_encoded_frame_round_trips_two_tensors_in_a_capacity_buffer(rng):
    g = skip_graph()
    names = g.cut_tensors(3)
    assert len(names) == 2
    tensors = {t: np.maximum(varied(rng.standard_normal(g.shapes[t])), 0).astype(np.float32) for t in names}
    for name in ("zstd", "rle-huffman", "lz4", "zlib:9"):
        codec = EncodedFrameCodec(g, names, name, "stage 0 -> stage 1")
        codec.reserve(2)
        buf = codec.pack(7, tensors, start_ns=11)
        assert buf.dtype == np.float32 and buf.size <= codec.length and buf.base is not None
        assert FrameCodec.header(buf) == (7, 11, 0, 0)
        assert codec.sent_bytes < codec.raw_bytes  # half the values are zero
        received = np.zeros(codec.length, np.float32)  # what an MPI receive into a capacity buffer holds
        received[: buf.size] = buf
        back = codec.unpack(received)
        for t in names:
            assert back[t].dtype == np.float32 and back[t].tobytes() == tensors[t].tobytes(), name
        codec.release(buf)
        assert codec.free[-1].shape == (codec.length,)


def test_raw_links_keep_the_float32_frame_codec():
    g = skip_graph()
    assert type(frame_codec(g, g.cut_tensors(3), "raw", "x", FrameCodec)) is FrameCodec
    assert type(frame_codec(g, g.cut_tensors(3), "int8", "x", FrameCodec)) is EncodedFrameCodec


def test_every_corruption_of_an_encoded_frame_names_the_link(rng):
    g = skip_graph()
    names = g.cut_tensors(3)
    tensors = {t: varied(rng.standard_normal(g.shapes[t]).astype(np.float32)) for t in names}
    codec = EncodedFrameCodec(g, names, "int8+zstd", "stage 1 -> stage 2")
    good = np.zeros(codec.length, np.float32)
    buf = codec.pack(3, tensors)
    good[: buf.size] = buf
    data_bytes = codec.sent_bytes - codec.data_start * 4
    for trial in range(300):
        bad = good.copy()
        raw = bad.view(np.uint8)
        where = codec.data_start * 4 + int(rng.integers(0, data_bytes))
        raw[where] ^= np.uint8(1 << int(rng.integers(0, 8)))
        with pytest.raises(PisplitError, match=r"^link stage 1 -> stage 2, frame 3: tensor '.*': "):
            codec.unpack(bad)
    bad = good.copy()
    bad[8:10].view(np.int64)[0] = 1 << 40  # a length beyond the buffer
    with pytest.raises(PisplitError, match="link stage 1 -> stage 2, frame 3: message lengths .* do not fit"):
        codec.unpack(bad)
    bad = good.copy()
    bad[8:8 + 2 * len(names)].view(np.int64)[:] = 1 << 62  # lengths whose sum wraps around
    with pytest.raises(PisplitError, match="message lengths .* do not fit"):
        codec.unpack(bad)
    bad = good.copy()
    bad[8:10].view(np.int64)[0] -= 5  # truncated first message
    with pytest.raises(PisplitError, match="link stage 1 -> stage 2, frame 3: tensor"):
        codec.unpack(bad)


def test_a_tensor_a_lossy_codec_refuses_is_an_error_naming_the_link():
    g = skip_graph()
    names = g.cut_tensors(3)
    tensors = {t: np.full(g.shapes[t], 1e6, np.float32) for t in names}
    codec = EncodedFrameCodec(g, names, "fp16", "stage 0 -> stage 1")
    with pytest.raises(PisplitError, match=r"link stage 0 -> stage 1, frame 2: tensor '.*': fp16: .*range"):
        codec.pack(2, tensors)
    assert len(codec.free) == 1  # the buffer came back


def test_plans_name_codecs_and_old_plans_load_as_raw(tmp_path):
    g = zoo_model("lenet5")
    plan = hand_plan(g, [(0, 4, [0], "single"), (4, 9, [1], "single")])
    assert [s.send_codec for s in plan.stages] == ["raw", "raw"]
    coded = with_codecs(plan, ["int8+rle-huffman"])
    assert Plan.load(coded.save(tmp_path / "p.json")).stages[0].send_codec == "int8+rle-huffman"
    doc = plan.to_dict()
    for s in doc["stages"]:
        del s["send_codec"]  # a plan written before the field
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert Plan.load(tmp_path / "old.json") == plan
    with pytest.raises(PisplitError, match="stage 0 send_codec: codec 'gzip': unknown codec"):
        replace(plan, stages=(replace(plan.stages[0], send_codec="gzip"), plan.stages[1])).validate()
    with pytest.raises(PisplitError, match="last stage's send_codec is 'zstd': results travel raw"):
        replace(plan, stages=(plan.stages[0], replace(plan.stages[1], send_codec="zstd"))).validate()
    doc = coded.to_dict()
    doc["stages"][0]["send_codec"] = 5
    with pytest.raises(PisplitError, match="stages\\[0\\].send_codec: expected a string"):
        Plan.from_dict(doc)
    assert plan.input_codec == "raw" and "input_codec" not in json.dumps(doc["stages"])
    with pytest.raises(PisplitError, match="plan: input_codec: codec 'jpeg:101': jpeg quality factor must be in 1..100"):
        replace(plan, input_codec="jpeg:101").validate()


# --- real mpirun ------------------------------------------------------------------------------------------
def run_outputs(tmp_path: Path, plan: Plan, name: str, frames: int) -> tuple[np.ndarray, dict]:
    proc = mpirun(plan.n_ranks, "run", plan.save(tmp_path / f"{name}.json"), "--frames", frames,
                  "--output", tmp_path / f"{name}.npz", "--json", timeout=120)
    assert proc.returncode == 0, f"{name}: {proc.stderr}"
    doc = json.loads(proc.stdout)
    assert doc["every_frame_once"] and doc["frames"] == frames
    with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as z:
        assert sorted(z["frame_ids"].tolist()) == list(range(frames))
        return z["output_0"], doc


def lossy_reference(graph, cuts: dict, frames: int) -> tuple[np.ndarray, float]:
    """The model's outputs when the tensors at each cut in `cuts` (cut -> codec) are encoded and
    decoded, in one process; and the largest decoded error as a fraction of its error bound."""
    outs, worst = [], 0.0
    for f in range(frames):
        env = dict(synthetic_frame(graph, 0, f))
        start = 0
        for cut in sorted(cuts) + [len(graph)]:
            env = graph.execute(env, start, cut)
            if cut < len(graph):
                for t, x in list(env.items()):
                    y = decode(encode(x, cuts[cut]))
                    bound = error_bound(cuts[cut], x)
                    err = float(np.abs(y.astype(np.float64) - x).max())
                    assert err <= bound, (cut, t, err, bound)
                    worst = max(worst, err / bound if bound else 0.0)
                    env[t] = y
            start = cut
        outs.append(env[graph.outputs[0]])
    return np.concatenate(outs), worst


@pytest.mark.mpi
def test_lossless_links_under_mpirun_give_the_raw_plans_outputs_bit_for_bit(tmp_path):
    skip = skip_graph()
    skip_path, _ = save_graph(skip, tmp_path / "skip.json")
    cases = [
        ("lenet5", zoo_model("lenet5"), [(0, 2, [0], "single"), (2, 5, [1], "single"), (5, 9, [2], "single")],
         ["zstd", "rle-huffman"]),
        ("skip", skip, [(0, 3, [0], "single"), (3, 7, [1, 2], "data-parallel")], ["lz4"]),  # two tensors on the link
    ]
    for name, graph, stages, codecs in cases:
        plan = hand_plan(graph, stages, model=str(skip_path) if name == "skip" else name)
        raw, _ = run_outputs(tmp_path, plan, f"{name}-raw", 9)
        coded, _ = run_outputs(tmp_path, with_codecs(plan, codecs), f"{name}-coded", 9)
        varied(raw)
        assert coded.dtype == raw.dtype and coded.shape == raw.shape
        assert coded.tobytes() == raw.tobytes(), name


@pytest.mark.mpi
def test_lossy_links_under_mpirun_give_the_encoded_models_outputs(tmp_path):
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 2, [0], "single"), (2, 5, [1], "single"), (5, 9, [2], "single")])
    for codecs in (["int8", "fp16+zstd"], ["jpeg:50", "int8+rle-huffman"]):
        cuts = {2: codecs[0], 5: codecs[1]}
        expected, worst = lossy_reference(graph, cuts, 6)
        got, _ = run_outputs(tmp_path, with_codecs(plan, codecs), "-".join(codecs).replace(":", ""), 6)
        assert worst > 0  # the codecs did change the cut tensors, by more than the comparison's tolerance
        exact = np.concatenate([graph.forward(**synthetic_frame(graph, 0, f)).reshape(1, -1) for f in range(6)])
        assert np.abs(expected - exact).max() > 10 * (1e-7 + 1e-6 * np.abs(exact).max())
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=str(codecs))


WORKER = """
import sys
import numpy as np
from cluster import transport
from cluster.link_codecs import EncodedFrameCodec
from layers import zoo_model
from layers.errors import PisplitError

comm = transport.world()
g = zoo_model("lenet5")
names = g.cut_tensors(2)
codec = EncodedFrameCodec(g, names, sys.argv[1], "stage 0 -> stage 1")
if comm.Get_rank() == 0:
    rng = np.random.default_rng(5)
    buf = codec.pack(4, {t: rng.standard_normal(g.shapes[t]).astype(np.float32) for t in names})
    where = int(sys.argv[2])
    raw = buf.view(np.uint8)
    if where >= 0:
        raw[codec.data_start * 4 + where] ^= 0x10
    else:
        buf = buf[: buf.size + where]  # the message cut short
    transport.send(comm, buf, 1, tag=3)
else:
    buf = codec.empty()
    req = transport.irecv_buffer(comm, buf, 0, 3)
    req.Wait()
    try:
        codec.unpack(buf)
        print("decoded")
    except PisplitError as exc:
        print("error:", exc)
"""


@pytest.mark.mpi
def test_a_corrupt_message_over_real_mpi_is_an_error_naming_the_link(tmp_path):
    from cluster.mpirun import local_mpirun_command, mpirun_env, run_local

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = mpirun_env()
    env.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    for codec, where in (("zstd", 40), ("int8", 100), ("jpeg:75", 30), ("rle-huffman", -3), ("zstd", -200)):
        try:
            cmd = local_mpirun_command(2, [sys.executable, str(script), codec, str(where)])
        except FileNotFoundError as exc:
            require(False, str(exc))
        proc = run_local(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("error:", "decoded"))]
        assert len(lines) == 1 and lines[0].startswith("error: link stage 0 -> stage 1, frame 4: tensor "), (codec, where, proc.stdout)


@pytest.mark.mpi
def test_a_tensor_the_links_codec_refuses_ends_the_run_with_one_line_naming_the_link(tmp_path):
    graph = skip_graph()
    model, _ = save_graph(graph, tmp_path / "skip.json")
    plan = with_codecs(hand_plan(graph, [(0, 1, [0], "single"), (1, 7, [1], "single")], model=str(model)), ["fp16"])
    x = np.full((1, *graph.inputs["input"][1:]), 1e6, np.float32)
    assert np.abs(graph.execute({"input": x}, 0, 1)[graph.cut_tensors(1)[0]]).max() > 65504  # beyond half precision
    np.save(tmp_path / "x.npy", x)
    proc = mpirun(2, "run", plan.save(tmp_path / "plan.json"), "--frames", 3, "--input", tmp_path / "x.npy", timeout=90)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pisplit: error")]
    assert len(errors) == 1 and "link stage 0 -> stage 1, frame 0: tensor" in errors[0] and "fp16" in errors[0], proc.stderr


@pytest.mark.mpi
def test_input_codecs_on_the_source_link_under_mpirun(tmp_path):
    # a data-parallel first stage: rank 0 hands every other frame to rank 1 over the source link
    from cluster.runtime import entry_rank

    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 2, [0, 1], "data-parallel"), (2, 9, [2], "single")])
    raw, _ = run_outputs(tmp_path, plan, "input-raw", 8)
    lossless, _ = run_outputs(tmp_path, replace(plan, input_codec="zstd").validate(), "input-zstd", 8)
    assert lossless.tobytes() == raw.tobytes()
    got, _ = run_outputs(tmp_path, replace(plan, input_codec="int8").validate(), "input-int8", 8)
    expected = []
    for f in range(8):
        feeds = dict(synthetic_frame(graph, 0, f))
        if entry_rank(plan.stages[0], f) != 0:  # crossed the link: encoded; rank 0's own frames did not
            x = feeds["input"]
            feeds["input"] = decode(encode(x, "int8"))
            assert 0 < np.abs(feeds["input"] - x).max() <= error_bound("int8", x)
        expected.append(graph.forward(**feeds).reshape(1, -1))
    expected = np.concatenate(expected)
    assert np.abs(expected - raw).max() > 10 * (1e-7 + 1e-6 * np.abs(raw).max())
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


# --- the planner chooses the codecs (pisplit plan --codecs), per tensor where a cut has several -----------
@pytest.fixture(scope="module")
def lenet_codec_table(tmp_path_factory):
    from cluster.codec_table import measure_codec_table

    graph = zoo_model("lenet5")
    table = measure_codec_table(graph, "lenet5", ["zstd", "int8+zstd", "jpeg:50"], n_frames=1, machine_speed=1.0)
    # measured bytes and errors; encode and decode seconds fixed, so no choice depends on this machine's speed
    table = replace(table, cuts=tuple(replace(c, samples=tuple(replace(s, encode_s=2e-5, decode_s=1e-5) for s in c.samples))
                                      for c in table.cuts))
    return graph, table.save(tmp_path_factory.mktemp("codecs") / "lenet5.json")


def cut_codecs(plan: Plan) -> dict:
    return {s.node_stop: s.send_codec for s in plan.stages[:-1] if s.send_codec != "raw"}


@pytest.mark.mpi
def test_pisplit_plan_with_codecs_chooses_them_and_mpirun_runs_them(tmp_path, lenet_codec_table):
    from tests.conftest import run_pisplit

    graph, table = lenet_codec_table
    # 204 KiB usable per Pi: lenet5 (fc1 alone holds 188 KiB of weights) needs two stages; a 1 Mbit/s link
    devices = ("--devices", "rpi3:3@300.25M", "--link", "1mbit", "--codecs", table)
    from cluster.commands.codecs import planning_codecs
    from partitioners.cost import CostModel, make_cluster
    from partitioners.planners import make_plan

    priced, budget = planning_codecs(str(table), graph, "numpy", None, None)  # what plan --codecs without a budget plans with
    assert budget is None
    cluster = make_cluster([("rpi3", 3, 314834944)], 1e6)
    lossless = make_plan(graph, CostModel(graph, cluster, codecs=priced), "dp", "throughput", "lenet5", "numpy")
    assert set(cut_codecs(lossless).values()) <= {"zstd"}  # no budget: lossless codecs only
    proc = run_pisplit("plan", "lenet5", *devices, "--max-rel-error", "0.05", "--output", tmp_path / "lossy.json")
    assert "link codecs from the codec table of lenet5" in proc.stdout
    plan = Plan.load(tmp_path / "lossy.json")
    chosen = cut_codecs(plan)
    assert len(plan.stages) > 1 and chosen and all(c in ("int8+zstd", "jpeg:50") for c in chosen.values()), chosen
    assert plan.predicted_throughput_fps > lossless.predicted_throughput_fps
    plain = CostModel(graph, cluster)
    for s in plan.stages[1:]:  # a decoding rank's prediction holds its decoded tensors beyond the raw link's
        if plan.stages[s.index - 1].send_codec != "raw" and s.mode == "single":
            raw_link = plain.stage_cost(s.node_start, s.node_stop, (1,), "single").memory_bytes[0]
            assert s.predicted.memory_bytes[s.ranks[0]] >= raw_link + graph.cut_bytes(s.node_start)
    expected, worst = lossy_reference(graph, chosen, 5)
    assert worst > 0
    got, doc = run_outputs(tmp_path, plan, "chosen", 5)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    exact = np.concatenate([graph.forward(**synthetic_frame(graph, 0, f)).reshape(1, -1) for f in range(5)])
    assert np.abs(got - exact).max() > 10 * (1e-7 + 1e-6 * np.abs(exact).max())  # the codecs did act on the run
    for command in ("plan", "emulate"):  # a lossy budget needs the table
        proc = run_pisplit(command, "lenet5", "--devices", "rpi3:2", "--max-rel-error", "0.05", check=False)
        assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "give the codec table with --codecs" in proc.stderr
    with pytest.raises(PisplitError, match="codec table of lenet5: does not match model skipnet"):
        planning_codecs(str(table), skip_graph(), "numpy", None, None)
    with pytest.raises(PisplitError, match="--max-accuracy-loss: codec table .* measured no accuracy"):
        planning_codecs(str(table), graph, "numpy", "1%", None)


def test_per_tensor_codecs_round_trip_and_refuse_wrong_lists(rng):
    from partitioners.codecs import link_codecs, parse_codec

    g = skip_graph()
    names = g.cut_tensors(3)
    tensors = {t: np.maximum(varied(rng.standard_normal(g.shapes[t])), 0).astype(np.float32) for t in names}
    codec = frame_codec(g, names, "zstd;int8", "stage 0 -> stage 1", FrameCodec)
    assert isinstance(codec, EncodedFrameCodec) and [c.name for c in codec.codecs] == ["zstd", "int8"]
    received = np.zeros(codec.length, np.float32)
    buf = codec.pack(1, tensors)
    received[: buf.size] = buf
    back = codec.unpack(received)
    assert back[names[0]].tobytes() == tensors[names[0]].tobytes()  # zstd: bit for bit
    assert back[names[1]].tobytes() == decode(encode(tensors[names[1]], "int8")).tobytes()
    assert type(frame_codec(g, names, "raw;raw", "x", FrameCodec)) is FrameCodec
    assert parse_codec("zstd;jpeg:50").name == "zstd;jpeg:50" and not parse_codec("zstd;jpeg:50").lossless
    with pytest.raises(PisplitError, match=r"link stage 0 -> stage 1: codecs 'zstd;int8;lz4': 3 codecs for a link of 2 tensor"):
        frame_codec(g, names, "zstd;int8;lz4", "stage 0 -> stage 1", FrameCodec)
    with pytest.raises(PisplitError, match="a per-tensor list names a link's codecs"):
        encode(tensors[names[0]], "zstd;int8")
    with pytest.raises(PisplitError, match="an empty codec"):
        link_codecs("zstd;", 2)
    with pytest.raises(PisplitError, match="stage 0 send_codec: codec 'gzip': unknown"):
        plan = hand_plan(g, [(0, 3, [0], "single"), (3, 7, [1], "single")])
        with_codecs(plan, ["zstd;gzip"])


@pytest.mark.mpi
def test_per_tensor_codecs_under_mpirun_give_the_encoded_models_outputs(tmp_path):
    graph = skip_graph()
    model, _ = save_graph(graph, tmp_path / "skip.json")
    names = graph.cut_tensors(3)
    plan = with_codecs(hand_plan(graph, [(0, 3, [0], "single"), (3, 7, [1], "single")], model=str(model)), ["lz4;int8+zstd"])
    expected = []
    for f in range(5):
        env = graph.execute(dict(synthetic_frame(graph, 0, f)), 0, 3)
        env[names[1]] = decode(encode(env[names[1]], "int8+zstd"))  # the first tensor travels losslessly
        expected.append(graph.execute(env, 3)[graph.outputs[0]])
    expected = np.concatenate(expected)
    got, _ = run_outputs(tmp_path, plan, "per-tensor", 5)
    exact = np.concatenate([graph.forward(**synthetic_frame(graph, 0, f)).reshape(1, -1) for f in range(5)])
    assert np.abs(expected.reshape(exact.shape) - exact).max() > 10 * (1e-7 + 1e-6 * np.abs(exact).max())
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.mpi
def test_everything_on_the_host_runs_with_the_input_coded_on_the_edge(tmp_path, lenet_codec_table):
    from cluster.commands.codecs import save_edge_input_graph
    from partitioners.cost import CostModel, make_cluster
    from partitioners.devices import parse_devices
    from partitioners.edge_host import edge_host_candidates, edge_host_plan
    from partitioners.link_pricing import CodecTable, LossBudget

    graph, table = lenet_codec_table
    model = CostModel(graph, make_cluster(parse_devices("rpi3:1,host:1"), 22e6))
    candidates = edge_host_candidates(model, CodecTable.load(table), LossBudget(max_rel_error=0.05))
    on_host = next(c for c in candidates if c.cut == 0 and c.codec == "int8+zstd")
    with pytest.raises(PisplitError, match="rank 0 .* would run no stage of the model"):
        edge_host_plan(model, on_host, "lenet5")
    spec = save_edge_input_graph(graph, tmp_path / "lenet5-edge.json")
    plan = edge_host_plan(model, on_host, "lenet5", "numpy", spec)
    assert [(s.node_start, s.node_stop, s.send_codec) for s in plan.stages] == [(0, 1, "int8+zstd"), (1, 10, "raw")]
    assert [plan.devices[s.ranks[0]].kind for s in plan.stages] == ["rpi3", "host"]
    expected = []
    for f in range(5):
        x = synthetic_frame(graph, 0, f)["input"]
        expected.append(graph.forward(input=decode(encode(x, "int8+zstd"))).reshape(1, -1))
    expected = np.concatenate(expected)
    got, _ = run_outputs(tmp_path, plan, "on-host", 5)
    exact = np.concatenate([graph.forward(**synthetic_frame(graph, 0, f)).reshape(1, -1) for f in range(5)])
    assert np.abs(expected - exact).max() > 10 * (1e-7 + 1e-6 * np.abs(exact).max())
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.mpi
def test_an_emulated_runs_link_time_gives_the_bytes_its_codecs_wrote(tmp_path):
    # bench_link_codecs checks a measured run used its plan's codecs with measured_link_bytes: the
    # bytes each link carried per frame, from the senders' paced link time in the run's report
    from cluster.link_codecs import frame_header_bytes, measured_link_bytes

    graph = zoo_model("lenet5")
    plan = replace(hand_plan(graph, [(0, 2, [0, 1], "data-parallel"), (2, 9, [2], "single")], kind="rpi3", link_bps=94e6),
                   input_codec="zstd")
    plan = with_codecs(plan, ["int8"])
    frames = 6
    proc = mpirun(3, "run", plan.save(tmp_path / "plan.json"), "--frames", frames, "--emulate", "--host-speed", 1.0, "--json",
                  timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["every_frame_once"]
    got = measured_link_bytes(plan, graph, report)
    # what the encoders wrote: rank 0 hands frames 1, 3, 5 to rank 1 (zstd input), every frame's
    # pool1 output leaves stage 0 as int8 (rank 1's frames give the link's figure)
    handed = [f for f in range(frames) if f % 2 == 1]
    header = frame_header_bytes(1, "zstd")
    want_input = np.mean([header + len(encode(synthetic_frame(graph, 0, f)["input"], "zstd")) for f in handed])
    cut = graph.cut_tensors(2)
    want_link = np.mean([header + len(encode(graph.execute(dict(synthetic_frame(graph, 0, f)), 0, 2)[cut[0]], "int8"))
                         for f in handed])
    assert len(cut) == 1 and header == 40  # the int64 frame header and one length
    assert got["input"] == pytest.approx(want_input, rel=1e-6) and got[0] == pytest.approx(want_link, rel=1e-6)
    assert got[0] < 0.3 * graph.cut_bytes(2)  # int8, not the raw float32 pool1
