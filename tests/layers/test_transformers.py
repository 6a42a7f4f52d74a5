"""Transformers and sequence models (issue 19): the new ops (BATCH_MATMUL, GELU, RSQRT, SQUARED_DIFFERENCE,
SLICE, EQUAL, NOT_EQUAL, SELECT, SELECT_V2), constants as op inputs and the batch-1 axis rules, on the
builder models of tflite_models.TRANSFORMER_CASES (each also runs in test_tflite_import's per-op LiteRT
comparison) and, when scripts/build_corpus_torch has built them, on litert-torch conversions of
torchvision ViT-B/16, Swin-T, MaxViT-T, a keyword-spotting transformer and an LSTM."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from layers import kernels as K
from layers.errors import PisplitError
from layers.tflite import import_tflite_bytes
from tests.conftest import require

from .test_int8_corpus import CORPUS
from .tflite_models import TRANSFORMER_CASES

TORCH_MODELS = ("kws", "lstm", "vit_b_16", "swin_t", "maxvit_t")
TORCH_BUILT = [m for m in TORCH_MODELS if (CORPUS / f"torch_{m}.tflite").exists()]


def litert(model: bytes, feeds: list) -> list:
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def rel_err(got, want) -> float:
    return float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))


def test_erf_matches_math_erf_everywhere():
    x = np.concatenate([np.linspace(-8, 8, 40001), [0.0, -0.0, 0.4999999, 0.5, 3.9999999, 4.0, 30.0, -30.0]])
    want = np.array([math.erf(v) for v in x])
    assert float(np.abs(K.erf(x) - want).max()) < 1e-15


def test_gelu_and_batch_matmul_kernels_by_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5)).astype(np.float32) * 3
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.ravel().astype(np.float64)]).reshape(x.shape)
    np.testing.assert_allclose(K.gelu(x), exact, rtol=1e-6, atol=1e-6)
    wide = np.concatenate([np.linspace(-12, 12, 20001), [0.0, -0.0, 1e-8, -1e-8]]).astype(np.float32)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in wide.astype(np.float64)])
    assert float(np.abs(K.gelu(wide) - want).max()) < 5e-7
    big = np.abs(want) > 1e-6
    assert float((np.abs(K.gelu(wide) - want)[big] / np.abs(want[big])).max()) < 1e-5
    z = np.linspace(0, 9, 9001)
    # the fit is within 1.2e-7; float32 rounding of z * z moves exp(-z^2) by up to ~1e-5 relative at z = 9 (erfc 4e-37)
    np.testing.assert_allclose(K.erfc_nonnegative(z), [math.erfc(v) for v in z], rtol=2e-5, atol=1e-30)
    a, b = rng.standard_normal((2, 1, 4, 3)), rng.standard_normal((3, 5, 4))  # adj_x: (.., 3, 4); adj_y: (.., 4, 5)
    want = np.array([[a[i, 0].T @ b[j].T for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(K.batch_matmul(a, b, adj_x=True, adj_y=True), want, rtol=1e-5, atol=1e-5)


@pytest.mark.litert
@pytest.mark.parametrize("case", sorted(TRANSFORMER_CASES))
def test_transformer_case_matches_litert_on_several_inputs(case):
    model = TRANSFORMER_CASES[case]()
    graph = import_tflite_bytes(model)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        feeds = {k: (rng.standard_normal(s) * 2).astype(np.float32) for k, s in graph.inputs.items()}
        got = graph.execute(feeds)
        for t, w in zip(graph.outputs, litert(model, list(feeds.values()))):
            assert got[t].shape == w.shape
            assert rel_err(got[t], w) < 1e-4, f"{case} {t}"


def test_batch_axis_moves_are_imported_for_one_frame_and_refuse_a_batch():
    graph = import_tflite_bytes(TRANSFORMER_CASES["time_major_batch_axis_rules"]())
    moved = {n.op for n in graph.nodes if n.attrs.get("batch1")}
    assert moved == {"reshape", "strided_slice", "concat", "mean", "transpose"}
    x = np.random.default_rng(0).standard_normal((1, 7, 6)).astype(np.float32)
    graph.execute({"input0": x})  # one frame runs
    with pytest.raises(PisplitError, match=r"reshape .* one frame only"):
        graph.execute({"input0": np.concatenate([x, x])})


def test_constant_inputs_become_constant_nodes():
    graph = import_tflite_bytes(TRANSFORMER_CASES["class_token_concat_constant"]())
    consts = [n for n in graph.nodes if n.op == "constant"]
    assert len(consts) == 1 and graph.shapes[consts[0].outputs[0]] == (1, 1, 8)
    concat = next(n for n in graph.nodes if n.op == "concat")
    assert concat.inputs[0] == consts[0].outputs[0]
    assert graph.cost(graph.node_index(consts[0].name)).params == 8


@pytest.mark.litert
@pytest.mark.skipif(not TORCH_BUILT, reason=f"no litert-torch models in {CORPUS} (bash scripts/build_corpus_torch builds them)")
@pytest.mark.parametrize("arch", TORCH_BUILT or ["none"])
def test_torch_corpus_model_matches_litert(arch):
    path = CORPUS / f"torch_{arch}.tflite"
    model = path.read_bytes()
    graph = import_tflite_bytes(model, str(path), path.stem)
    rng = np.random.default_rng(0)
    feeds = {k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in graph.inputs.items()}
    got = graph.execute(feeds)
    for t, w in zip(graph.outputs, litert(model, list(feeds.values()))):
        assert got[t].shape == w.shape and np.isfinite(got[t]).all()
        assert rel_err(got[t], w) < 1e-4, f"{arch}: {t}"


@pytest.mark.litert
@pytest.mark.parametrize("case", sorted(TRANSFORMER_CASES))
def test_litert_engine_runs_the_new_ops_as_numpy_does(case):
    """The exporter writes every new op (constants as tensors, comparisons with a CAST to float, SELECT
    through NOT_EQUAL 0, batch-1 reshapes and slices with their whole shapes) for the litert engine."""
    from layers.engine import make_engine

    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    graph = import_tflite_bytes(TRANSFORMER_CASES[case]())
    rng = np.random.default_rng(3)
    feeds = {k: (rng.standard_normal(s) * 2).astype(np.float32) for k, s in graph.inputs.items()}
    want = graph.execute(feeds)
    engine = make_engine(graph, "litert")
    assert engine.name == "litert"
    got = engine.run(feeds)
    for t in graph.outputs:
        assert rel_err(got[t], want[t]) < 1e-4, f"{case} {t}"


@pytest.mark.parametrize("name, sizes", [("kwt3", 2), ("kwt3", 3), ("vit_b16", (5, 4, 3)), ("vit_b16", (1, 2, 3, 6))])
def test_zoo_transformer_head_split_equals_unsplit(name, sizes):
    """The zoo's transformers are built as converters write attention: every block is an attn-heads block."""
    from layers.zoo import zoo_model
    from partitioners.split_heads import HEADS_KIND, attention_block
    from partitioners.splits import split_layer

    g = zoo_model(name)
    starts = [i for i, n in enumerate(g.nodes) if n.op == "dense" and attention_block(g, i) is not None]
    assert len(starts) == 12
    split = split_layer(g, g.nodes[starts[-1]].name, HEADS_KIND, sizes)
    rng = np.random.default_rng(1)
    x = {t: rng.standard_normal(g.shapes[t]).astype(np.float32) for t in split.inputs}
    got, want = split.run(x), split.reference(x)
    assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())


@pytest.mark.litert
def test_layer_norm_kernel_and_litert_export():
    from layers.engine import make_engine
    from layers.zoo import zoo_model

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32) * 3 + 1
    gamma, beta = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    xd = x.astype(np.float64)
    want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-6) * gamma + beta
    np.testing.assert_allclose(K.layer_norm(x, gamma, beta, 1e-6), want, rtol=1e-5, atol=1e-5)
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    g = zoo_model("kwt3")
    feeds = g.random_input(3)
    got = make_engine(g, "litert").run(feeds)[g.outputs[0]]
    assert rel_err(got, g.forward(**feeds)) < 1e-4


def test_constant_nodes_have_no_split_but_data_parallel():
    from partitioners.splits import legal_kinds

    graph = import_tflite_bytes(TRANSFORMER_CASES["class_token_concat_constant"]())
    const = next(n for n in graph.nodes if n.op == "constant")
    assert legal_kinds(graph, const.name) == ("data-parallel",)


@pytest.mark.litert
@pytest.mark.skipif(not TORCH_BUILT, reason=f"no litert-torch models in {CORPUS} (bash scripts/build_corpus_torch builds them)")
@pytest.mark.parametrize("arch", TORCH_BUILT or ["none"])
def test_torch_corpus_model_on_the_litert_engine(arch):
    """Whole corpus models exported by pisplit and run by the litert engine equal LiteRT on the original file."""
    from layers.engine import make_engine

    path = CORPUS / f"torch_{arch}.tflite"
    model = path.read_bytes()
    graph = import_tflite_bytes(model, str(path), path.stem)
    rng = np.random.default_rng(1)
    feeds = {k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in graph.inputs.items()}
    got = make_engine(graph, "litert").run(feeds)
    for t, w in zip(graph.outputs, litert(model, list(feeds.values()))):
        assert rel_err(got[t], w) < 1e-4, f"{arch}: {t}"


@pytest.mark.litert
@pytest.mark.parametrize("engine", ["numpy", "litert"])
def test_stacked_frames_on_a_one_frame_model_are_one_line_errors(engine, tmp_path):
    """A model with batch-moving nodes refuses a stacked batch on both engines, and `pisplit infer` says so in
    one line (no traceback); one frame runs."""
    from tests.conftest import run_pisplit

    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert is not installed")
    path = tmp_path / "attention.tflite"
    path.write_bytes(TRANSFORMER_CASES["torch_attention_fused_qkv"]())
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 9, 24)).astype(np.float32))
    proc = run_pisplit("infer", path, "--input", tmp_path / "x.npy", "--engine", engine, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "treats the batch axis as a data axis" in proc.stderr and "one frame only" in proc.stderr
    np.save(tmp_path / "x1.npy", np.random.default_rng(0).standard_normal((9, 24)).astype(np.float32))
    proc = run_pisplit("infer", path, "--input", tmp_path / "x1.npy", "--engine", engine, check=False)
    assert proc.returncode == 0, proc.stderr


def test_show_counts_a_weight_several_ops_read_once(tmp_path):
    """An unrolled recurrence as litert-torch writes an LSTM: three FULLY_CONNECTED steps read one stored
    weight tensor (and one bias); `pisplit show` counts it once in its totals and marks the rows that reuse it."""
    import json
    import subprocess
    import sys

    from tests.layers.tflite_models import Model, binary

    m = Model(3)
    x = m.input((1, 8))
    w, b = m.layer_weight((8, 8), axis=0), m.weight((8,))
    h = x
    for _ in range(3):
        h = binary(m, "ADD", x, m.op("FULLY_CONNECTED", [h, w, b], (1, 8), m.opts("FullyConnectedOptions")))
    path = tmp_path / "unrolled.tflite"
    path.write_bytes(m.finish(h))
    from cluster.commands.show import model_document
    from layers import load_model

    doc = json.loads(json.dumps(model_document(load_model(str(path)))))  # what --json prints
    t = doc["totals"]
    assert (t["params"], t["params_per_use"], t["shared_weights"]) == (8 * 8 + 8, 3 * (8 * 8 + 8), 2)
    assert t["weight_bytes"] == (8 * 8 + 8) * 4
    rows = [n for n in doc["nodes"] if n["op"] == "dense"]
    assert rows[0]["shared_weights"] == {} and all(r["shared_weights"] == {"kernel": f"{rows[0]['name']}/kernel", "bias": f"{rows[0]['name']}/bias"}
                                                   for r in rows[1:])
    table = subprocess.run([sys.executable, "-m", "cluster.cli", "show", str(path)], capture_output=True, text=True, timeout=120,
                           env={**__import__("os").environ, "COLUMNS": "200"}).stdout
    assert "72 parameters (2 weights read by several ops, counted once; 216 counting every use)" in table and "shared" in table


@pytest.mark.parametrize("engine", ["numpy", "litert"])
def test_reference_profile_prices_transformer_nodes_from_measurements(engine):
    """The shipped reference profiles (numpy and litert) have measured ViT-B/16 and KWT-3 node by node
    (cluster.measure --add-models): their latency models have fits of their own for LayerNorm, GELU,
    BATCH_MATMUL, softmax over tokens and dense layers over token rows ("dense/rows", apart from a classifier's
    single-row dense), each fitting its own samples within 15% (median), and split overheads measured for both
    attention kinds. Without them the lead-only nodes of a ViT plan (LayerNorm, GELU) were priced from other
    ops' fits, 8-28x too low."""
    from layers import zoo_model
    from partitioners.latency_model import op_key
    from partitioners.profiles import Profile, reference_profile_path

    base = Profile.load(reference_profile_path(engine))
    assert base.engine == engine
    for op in ("layer_norm", "gelu", "batch_matmul", "softmax", "dense/rows"):
        fit = base.latency.fits[op]
        assert fit.samples >= 20 and fit.median_error < 0.15, (op, fit)
    g = zoo_model("kwt3")
    keys = {op_key(g, i) for i in range(len(g))}
    assert {"dense/rows", "dense", "layer_norm", "gelu", "batch_matmul"} <= keys  # the classifier is one row
    assert all(base.measured_seconds(g, i) is not None for i in range(len(g)))
    for kind in ("attn-heads", "attn-tokens"):
        overhead = base.split_overhead[kind]
        assert overhead.samples > 0 and abs(overhead.sum_ratio - 1) < 0.05


def test_token_span_of_a_block_longer_than_max_span_ends_at_its_residual():
    """KWT-3's (as ViT-B/16's) last transformer block runs on through the encoder's final LayerNorm, one planner
    segment more than a span covers (MAX_SPAN): the catalogue offers that block's token span up to its residual
    add (the longest end within MAX_SPAN where the token split can end), as every other block's; priced as the
    split of exactly those nodes."""
    from layers import zoo_model
    from partitioners.split_costs import MAX_SPAN, SplitCatalogue, token_span_kind
    from partitioners.split_tokens import TOKENS_KIND, token_block
    from partitioners.splits import split_cost

    g = zoo_model("kwt3")
    cat = SplitCatalogue(g)
    starts = [s for s in range(len(cat.segments)) if TOKENS_KIND in cat.kinds(s)]
    assert len(starts) == 12 and all(len(cat.token_spans(s)) == 1 for s in starts)
    last = starts[-1]
    (d,) = cat.token_spans(last)
    start, stop = cat.segments[last][0], cat.segments[last + d][1]
    whole = token_block(g, start)
    assert g.nodes[whole.stop - 1].name == "encoder_ln" and whole.stop > stop  # beyond the span limit
    assert d == MAX_SPAN and g.nodes[stop - 1].name == "encoder_layer_11_add_2"
    k = cat.kind_costs(last, token_span_kind(d))
    want = split_cost(g, g.nodes[start].name, TOKENS_KIND, (40, 30, 29), last=g.nodes[stop - 1].name)
    assert k.stop == stop and [round(k.part(r, n, 3).flops) for r, n in enumerate((40, 30, 29))] == [round(p.flops) for p in want.parts]


def test_add_models_and_attention_overheads_are_measured_into_a_profile(tmp_path):
    """`python -m cluster.measure P.json MODEL --add-models` measures every node of a model (a process of its own)
    into a copy of the shipped profile and refits its latency model, leaving its other blocks alone; the
    attention split overheads are measured from real part graphs of the attention kinds only."""
    import json
    import shutil
    import subprocess
    import sys

    from cluster.measure import measure_split_overhead
    from layers import load_model
    from layers.builder import GraphBuilder
    from layers.serialize import save_graph
    from layers.zoo import _transformer_head
    from partitioners.profiles import Calibration, Profile, reference_profile_path

    b = GraphBuilder("tiny_vit", 0)  # two pre-norm blocks of 4 heads on 16 tokens, as kwt3 and vit_b16 are built
    x = b.dense(b.input("x", (1, 16, 24)), 32, "embed", init="glorot")
    model, _ = save_graph(b.build(b.act(_transformer_head(b, x, 2, 4, 64, 5, 1e-6), "softmax", "prob")), tmp_path / "tiny_vit.json")
    profile = tmp_path / "host.json"
    shutil.copy(reference_profile_path("numpy"), profile)
    before = json.loads(profile.read_text())
    proc = subprocess.run([sys.executable, "-m", "cluster.measure", str(profile), str(model), "--add-models", "--repeat", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    after = json.loads(profile.read_text())
    graph = load_model(str(model))
    assert set(after["models"]) == set(before["models"]) | {graph.name}
    assert {k: v for k, v in after.items() if k not in ("models", "latency_model", "latency_model_error")} == \
        {k: v for k, v in before.items() if k not in ("models", "latency_model", "latency_model_error")}
    p = Profile.load(profile)
    assert all(p.measured_seconds(graph, i) > 0 for i in range(len(graph)))
    assert sum(n["samples"] for n in after["latency_model_error"].values() if n) > sum(n["samples"] for n in before["latency_model_error"].values())
    samples = measure_split_overhead(graph, Calibration("numpy").base, "numpy", (2,), 1, kinds=("attn-heads", "attn-tokens"))
    assert {s.kind for s in samples} == {"attn-heads", "attn-tokens"} and all(s.part_s > 0 and s.whole_s > 0 for s in samples)
    # fc parts over token rows are fitted apart from single-row ones (latency_model.overhead_key)
    fc = measure_split_overhead(graph, Calibration("numpy").base, "numpy", (2,), 1, kinds=("fc-output",))
    assert {s.kind for s in fc} == {"fc-output/rows", "fc-output"} and all(s.part_s > 0 for s in fc)
    bad = subprocess.run([sys.executable, "-m", "cluster.measure", str(profile), str(tmp_path / "none.tflite"), "--add-models"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "none.tflite" in bad.stderr


def test_fc_split_overheads_over_token_rows_are_keyed_apart_and_priced():
    """A dense layer's split over many rows (ViT's MLP, op key dense/rows) is priced with the profile's
    "<kind>/rows" overhead, a classifier's single-row dense with the kind's (its parts each pay ~5-10% of
    the whole layer again, ViT's MLP parts do not: 297 ms predicted against 248 measured); a profile
    without the key prices both with the kind's. The segment table's fc-output prices follow."""
    from dataclasses import replace

    import numpy as np

    from layers import zoo_model
    from partitioners.cost import CostModel, make_cluster
    from partitioners.latency_model import SplitOverhead, op_key, overhead_key
    from partitioners.profiles import Calibration, Profile, reference_profile_path
    from partitioners.segment_table import build_segment_table
    from partitioners.vocabulary import SplitKind

    g = zoo_model("kwt3")
    dense = [i for i, n in enumerate(g.nodes) if n.op == "dense"]
    rows = [i for i in dense if op_key(g, i) == "dense/rows"]
    single = [i for i in dense if op_key(g, i) == "dense"]
    assert rows and single
    assert {overhead_key(SplitKind.FC_OUTPUT, g, i) for i in rows} == {"fc-output/rows"}
    assert {overhead_key(SplitKind.FC_INPUT, g, i) for i in single} == {"fc-input"}
    assert {overhead_key(SplitKind.ATTN_HEADS, g, i) for i in rows} == {"attn-heads"}
    base = Profile.load(reference_profile_path("numpy"))
    heavy, light = SplitOverhead(per_whole=0.5, per_step_s=1e-3), SplitOverhead(per_share=0.01)
    both = replace(base, split_overhead={"fc-output": heavy, "fc-output/rows": light})
    got = both.split_overhead_rows(SplitKind.FC_OUTPUT, g, rows[:2] + single)
    assert got["per_whole"].tolist() == [0.0, 0.0, 0.5] and got["per_share"].tolist() == [0.01, 0.01, 0.0]
    assert got["per_step_s"].tolist() == [0.0, 0.0, 1e-3]
    without = replace(base, split_overhead={"fc-output": heavy})
    assert without.split_overhead_rows(SplitKind.FC_OUTPUT, g, rows[:1])["per_whole"].tolist() == [0.5]

    def fc_prices(profile):
        model = CostModel(g, make_cluster([("rpi4", 2, 1 << 30)], 940e6), Calibration("numpy", [profile]))
        slots = tuple(model.class_of_rank[r] for r in range(2))
        table = build_segment_table(model, slots)
        o = table.columns.index((SplitKind.FC_OUTPUT, "kind", 0))
        return np.array([seg[0] for seg in model.splits.segments]), table.compute_s[:, o]

    starts, cheap = fc_prices(both)
    _, dear = fc_prices(without)
    on_rows = np.isin(starts, rows) & np.isfinite(cheap) & (cheap > 0)
    on_single = np.isin(starts, single) & np.isfinite(cheap) & (cheap > 0)
    assert on_rows.any() and on_single.any()
    assert (cheap[on_rows] < dear[on_rows]).all() and np.array_equal(cheap[on_single], dear[on_single])


def test_gather_after_scatter_is_the_emulated_links_timeline():
    """The segment table prices a split's gather as the emulated links run it (cluster.emulation: the lead's
    sends one after the other, each part computing once its input is in, the lead's interface taking the outputs
    one after the other as they come, receiving while it still sends): for equal part compute, the last output is
    in at the compute plus max over i of (inputs up to part i + outputs from part i on); checked against
    LinkPacer / receive_ready_at on random transfers. In the table, attn-heads (and every kind without an
    exchange) gather that way, attn-tokens (its parts meet at the all-gather) as the sum of its outputs."""
    import numpy as np

    from cluster.emulation import LinkPacer, receive_ready_at
    from layers import zoo_model
    from partitioners.cost import CostModel, make_cluster
    from partitioners.profiles import Calibration
    from partitioners.segment_table import build_segment_table, gather_after_scatter
    from partitioners.vocabulary import SplitKind

    rng = np.random.default_rng(7)
    for remote in range(0, 7):
        each = rng.uniform(0.0, 0.05, (20, remote, 2))
        each[:3, :, :] = np.round(each[:3] * 1000) / 1000  # ties
        got = gather_after_scatter(each)
        for row, compute in zip(range(len(each)), rng.uniform(0.0, 0.1, len(each))):
            lead = LinkPacer(8.0)  # 1 byte a second: seconds as bytes
            received = 0.0
            for i in range(remote):
                arrived, _ = lead.schedule(each[row, i, 0], now=0.0)
                ready = arrived + compute
                sent_end, duration = LinkPacer(8.0).schedule(each[row, i, 1], now=ready)
                received = receive_ready_at(sent_end, duration, received)
            last = max(compute, received)
            scatter = each[row, :, 0].sum()
            assert abs((last - compute - scatter) - got[row]) < 1e-9 or (remote == 0 and got[row] == 0)
        assert (got <= each[:, :, 1].sum(axis=1) + 1e-12).all()

    g = zoo_model("kwt3")
    model = CostModel(g, make_cluster([("rpi3", 4, 1 << 30)], 94e6), Calibration("numpy"))
    slots = tuple(model.class_of_rank[r] for r in range(4))
    table = build_segment_table(model, slots)
    heads = table.columns.index((SplitKind.ATTN_HEADS, "subset", 3))  # KWT-3 has 3 heads: 3 parts
    tokens = table.columns.index((SplitKind.ATTN_TOKENS, "kind", 0))
    rows = np.flatnonzero(table.comm_out_s[:, heads] > 0)
    assert len(rows) == 12  # the attention blocks
    # each remote part gets the whole block input and sends back a partial sum of the same shape: of the
    # 2 outputs, the first comes in while the lead sends the second input, the gather adds one transfer
    assert np.allclose(table.comm_out_s[rows, heads], table.comm_in_s[rows, heads] / 2, rtol=1e-9)
    # attn-tokens: its remote parts' output rows, one after the other
    lat, bw = model.cluster.link_latency_s, model.cluster.link_bandwidth_bps
    t_rows = np.flatnonzero(table.comm_out_s[:, tokens] > 0)
    assert len(t_rows) == 12
    for r in t_rows:
        width = g.shapes[g.nodes[model.splits.segments[r][0]].inputs[0]][-1]
        want = sum(lat + n * width * 4 * 8.0 / bw for n in table.sizes[(r, tokens)][1:])
        assert abs(table.comm_out_s[r, tokens] - want) < 1e-9 * max(1.0, want)


def test_token_all_gather_pays_a_link_latency_per_message():
    """attn-tokens: the lead receives each key-side tensor (K and V) from each remote part as a message of its own
    (cluster.split_exec.TokenPhases), and the emulated link charges each message its latency (cluster.emulation):
    a part's comm_in holds, beyond its scatter's one message per remote part, 2 x (parts - 1) latencies."""
    import numpy as np

    from layers import zoo_model
    from partitioners.cost import CostModel, make_cluster
    from partitioners.profiles import Calibration
    from partitioners.segment_table import build_segment_table
    from partitioners.split_tokens import token_block
    from partitioners.vocabulary import SplitKind

    g = zoo_model("kwt3")
    calibration = Calibration("numpy")

    def comm_in(latency):
        model = CostModel(g, make_cluster([("rpi4", 4, 1 << 30)], 940e6, latency), calibration)
        table = build_segment_table(model, tuple(model.class_of_rank[r] for r in range(4)))
        return model, table.comm_in_s[:, table.columns.index((SplitKind.ATTN_TOKENS, "kind", 0))]

    model, slow = comm_in(1e-3)
    _, fast = comm_in(0.0)
    rows = np.flatnonzero(np.isfinite(slow) & (slow > 0))
    assert len(rows) == 12
    for r in rows:
        keys = len(token_block(g, model.splits.segments[r][0]).keys)
        assert keys == 2  # K and V
        assert abs((slow[r] - fast[r]) - 1e-3 * (3 + 3 * keys)) < 1e-12
