"""Head-parallel attention under real mpirun (issue 19): `pisplit split MODEL LAYER --kind attn-heads` on 2, 3
and 4 ranks with even and uneven heads, numpy and litert engines, on a two-block model with torch's fused
Q/K/V projection as litert-torch writes it (tests/layers/tflite_models.torch_attention); the merged output
equals the unsplit block within 1e-5 of its largest value."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from layers.tflite import import_tflite_bytes
from partitioners.split_heads import HEADS_KIND, attention_block
from partitioners.splits import split_layer
from tests.cluster.test_split_mpi import run_mpi
from tests.layers.tflite_models import TRANSFORMER_CASES

pytestmark = [pytest.mark.mpi]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    data = TRANSFORMER_CASES["torch_attention_fused_qkv"]()
    path = tmp_path_factory.mktemp("heads") / "attention.tflite"
    path.write_bytes(data)
    graph = import_tflite_bytes(data)
    layers = [graph.nodes[i].name for i, n in enumerate(graph.nodes) if n.op == "dense" and attention_block(graph, i)]
    assert len(layers) == 2
    return path, graph, layers


@pytest.mark.parametrize("ranks, sizes, block, engine", [
    (2, None, 0, "numpy"), (3, "1,2,3", 0, "numpy"), (4, "1,1,1,3", 1, "numpy"), (3, "4,1,1", 1, "litert"), (2, "5,1", 0, "litert"),
])
def test_head_split_under_mpirun_equals_unsplit(model, ranks, sizes, block, engine):
    path, graph, layers = model
    if engine == "litert":
        pytest.importorskip("ai_edge_litert")
    argv = [sys.executable, "-m", "cluster.cli", "split", path, layers[block], "--kind", HEADS_KIND, "--engine", engine,
            "--repeat", "1", "--json", "--seed", "3"]
    if sizes:
        argv += ["--sizes", sizes]
    proc = run_mpi(ranks, argv)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    split = split_layer(graph, layers[block], HEADS_KIND, [int(v) for v in sizes.split(",")] if sizes else ranks)
    assert doc["ranks"] == ranks and doc["kind"] == HEADS_KIND and doc["sizes"] == list(split.sizes)
    assert doc["output_pattern"] == "reduce" and doc["engine"] == engine
    rng = np.random.default_rng(3)  # the command's input: one seeded standard-normal frame
    x = {t: rng.standard_normal(graph.shapes[t], dtype=np.float32) for t in split.inputs}
    scale = float(np.abs(split.reference(x)).max())
    assert doc["ok"] and doc["max_abs_error"] <= 1e-5 * scale


@pytest.mark.parametrize("ranks, sizes", [(2, "1,3"), (3, "3,2,1"), (4, "1,2,2,3")])
def test_transformer_mlp_as_fc_output_then_fc_input_under_mpirun(ranks, sizes):
    """A transformer MLP (FC, GELU, FC): fc-output keeps its slices (GELU follows them) for fc-input, one reduce."""
    data = TRANSFORMER_CASES["attention_block_gelu_mlp"]()
    graph = import_tflite_bytes(data)
    fc1 = next(i for i, n in enumerate(graph.nodes) if n.op == "gelu") - 1
    assert graph.nodes[fc1].op == "dense" and graph.nodes[fc1 + 2].op == "dense"
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "block.tflite"
        path.write_bytes(data)
        proc = run_mpi(ranks, [sys.executable, "-m", "cluster.cli", "split", path, graph.nodes[fc1].name, "--kind", "fc-output,fc-input",
                               "--chain", "2", "--sizes", sizes, "--repeat", "1", "--json", "--seed", "5"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert [(c["kind"], c["output_layout"]) for c in doc["chain"]] == [("fc-output", "parts"), ("fc-input", "lead")]
    assert doc["chain"][0]["nodes"] == [graph.nodes[fc1].name, graph.nodes[fc1 + 1].name]  # GELU on the slices
    rng = np.random.default_rng(5)  # the command's input: the tensors live at the chain's start
    feeds = {t: rng.standard_normal(graph.shapes[t], dtype=np.float32) for t in graph.cut_tensors(fc1)}
    scale = float(np.abs(graph.execute(feeds, fc1, fc1 + 3)[graph.nodes[fc1 + 2].outputs[0]]).max())
    assert doc["ok"] and doc["max_abs_error"] <= 1e-5 * scale


@pytest.mark.parametrize("ranks, sizes, engine", [(3, "1,2,3", "litert")])
def test_head_split_of_axis0_rows_under_mpirun(ranks, sizes, engine, tmp_path):
    """A block fed (T, C) rows on axis 0 (torch's batch_first=False attention: KWS, Swin windows): the input
    travels whole to every rank behind a leading axis of one, the (T, C) partial sums are reduced on rank 0."""
    from tests.partitioners.test_split_heads_sequences import sequence_model

    pytest.importorskip("ai_edge_litert")
    data = sequence_model()
    path = tmp_path / "rows.tflite"
    path.write_bytes(data)
    graph = import_tflite_bytes(data)
    (layer,) = [n.name for i, n in enumerate(graph.nodes) if n.op == "dense" and attention_block(graph, i)]
    proc = run_mpi(ranks, [sys.executable, "-m", "cluster.cli", "split", path, layer, "--kind", HEADS_KIND, "--engine", engine,
                           "--sizes", sizes, "--repeat", "1", "--json", "--seed", "6"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    split = split_layer(graph, layer, HEADS_KIND, [int(v) for v in sizes.split(",")])
    assert graph.shapes[split.inputs[0]][0] == 7 and doc["sizes"] == list(split.sizes) and doc["input_pattern"] == "broadcast"
    rng = np.random.default_rng(6)
    x = {t: rng.standard_normal(graph.shapes[t], dtype=np.float32) for t in split.inputs}
    scale = float(np.abs(split.reference(x)).max())
    assert doc["ok"] and doc["max_abs_error"] <= 1e-5 * scale
