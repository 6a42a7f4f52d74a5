"""Graph IR: shapes, DAG cuts, partial execution, save/load, batch-norm folding, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from layers import Graph, Node, PisplitError, load_graph, load_model, save_graph
from layers.builder import GraphBuilder
from layers.transforms import fold_batchnorm
from tests.conftest import varied


def residual_graph() -> Graph:
    """conv -> bn -> relu -> (conv, conv) -> add -> concat with the first relu -> pool -> dense."""
    b = GraphBuilder("tiny_dag", seed=3)
    x = b.input("image", (1, 9, 7, 3))
    a = b.conv(x, 4, 3, "c1", padding="same")
    a = b.batch_norm(a, "bn1")
    a = b.act(a, "relu", "r1")
    left = b.conv(a, 4, 3, "c2", padding="same", activation="relu")
    right = b.conv(a, 4, 1, "c3")
    s = b.add("add", [left, right], "sum")
    c = b.add("concat", [s, a], "cat", {"axis": -1})
    p = b.pool(c, "max", 2, "pool", padding="same")
    f = b.act(p, "flatten", "flat")
    y = b.dense(f, 5, "fc", init="glorot")
    return b.build(y)


def test_shapes_and_costs():
    g = residual_graph()
    assert g.shapes["cat"] == (1, 9, 7, 8)
    assert g.shapes["pool"] == (1, 5, 4, 8)
    assert g.shapes["fc"] == (1, 5)
    c1 = g.cost("c1")
    assert c1.flops == 2 * 9 * 7 * 4 * 3 * 3 * 3
    assert c1.weight_bytes == (3 * 3 * 3 * 4 + 4) * 4
    assert c1.output_bytes == 9 * 7 * 4 * 4
    assert c1.work_bytes > 0 and c1.peak_bytes == c1.weight_bytes + c1.input_bytes + c1.output_bytes + c1.work_bytes
    assert g.cost("c3").work_bytes == 0  # 1x1 stride-1 conv needs no im2col buffer
    t = g.totals()
    assert t["flops"] == sum(g.cost(i).flops for i in range(len(g)))
    assert t["params"] == sum(g.cost(i).params for i in range(len(g)))


def test_cut_tensors_follow_the_dag():
    g = residual_graph()
    names = [n.name for n in g.nodes]
    assert g.cut_tensors(0) == ["image"]
    # after c2 both r1 (read by c3 and cat) and c2 are live
    assert set(g.cut_tensors(names.index("c2") + 1)) == {"r1", "c2"}
    assert set(g.cut_tensors(names.index("sum") + 1)) == {"r1", "sum"}
    assert g.cut_tensors(len(g)) == ["fc"]
    assert g.cut_bytes(names.index("c2") + 1) == 2 * 9 * 7 * 4 * 4


def test_execute_in_stages_equals_whole(rng):
    g = residual_graph()
    x = varied(rng.standard_normal((1, 9, 7, 3)).astype(np.float32))
    whole = g.forward(x)
    for cut in range(len(g) + 1):
        mid = g.execute({"image": x}, 0, cut)
        assert set(mid) == set(g.cut_tensors(cut))
        out = g.execute(mid, cut)
        np.testing.assert_array_equal(out["fc"], whole)
    # a batch of frames gives the same as frame by frame
    xs = rng.standard_normal((3, 9, 7, 3)).astype(np.float32)
    batch = g.forward(xs)
    for i in range(3):
        np.testing.assert_allclose(batch[i:i + 1], g.forward(xs[i:i + 1]), rtol=1e-5, atol=1e-6)


def test_missing_or_misshapen_tensor_is_a_clear_error():
    g = residual_graph()
    with pytest.raises(PisplitError, match="tensor 'image' .* needed at cut 0"):
        g.execute({})
    with pytest.raises(PisplitError, match=r"tensor 'image' has shape \(1, 9, 9, 3\)"):
        g.execute({"image": np.zeros((1, 9, 9, 3), np.float32)})


def test_invalid_graphs_are_rejected():
    with pytest.raises(PisplitError, match="reads tensor 'nope'"):
        Graph("bad", {"x": (1, 4)}, [Node("r", "relu", ["nope"], ["r"])], ["r"])
    with pytest.raises(PisplitError, match="node name 'r' is used twice"):
        Graph("bad", {"x": (1, 4)}, [Node("r", "relu", ["x"], ["r"]), Node("r", "relu", ["x"], ["r2"])], ["r2"])
    with pytest.raises(PisplitError, match="unknown op kind"):
        Graph("bad", {"x": (1, 4)}, [Node("r", "frobnicate", ["x"], ["r"])], ["r"])
    with pytest.raises(PisplitError, match="lacks weights"):
        Graph("bad", {"x": (1, 4)}, [Node("d", "dense", ["x"], ["d"])], ["d"])
    with pytest.raises(PisplitError, match="do not broadcast"):
        Graph("bad", {"x": (1, 4), "y": (1, 3)}, [Node("a", "add", ["x", "y"], ["a"])], ["a"])
    with pytest.raises(PisplitError, match="no node named 'c9'"):
        residual_graph().node_index("c9")


def test_save_and_load_round_trip(tmp_path, rng):
    g = residual_graph()
    path, npz = save_graph(g, tmp_path / "model.json")
    assert npz.exists()
    loaded = load_graph(path)
    assert [n.name for n in loaded.nodes] == [n.name for n in g.nodes]
    assert loaded.shapes == g.shapes
    x = rng.standard_normal((1, 9, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), g.forward(x))
    np.testing.assert_array_equal(load_model(str(path)).forward(x), g.forward(x))


def test_loading_bad_files_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PisplitError, match="bad.json: not valid JSON"):
        load_graph(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PisplitError, match="not a pisplit graph"):
        load_graph(bad)
    with pytest.raises(PisplitError, match="cannot be read"):
        load_graph(tmp_path / "missing.json")
    g = residual_graph()
    path, npz = save_graph(g, tmp_path / "m.json")
    npz.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PisplitError, match="weights file"):
        load_graph(path).forward(np.zeros((1, 9, 7, 3), np.float32))


def test_weights_are_loaded_lazily_per_node(tmp_path):
    g = residual_graph()
    path, _ = save_graph(g, tmp_path / "m.json")
    loaded = load_graph(path)
    loaded.node_weights("c3")
    assert set(loaded.weights._cache) == {"c3/kernel", "c3/bias"}


def test_seeded_weights_are_deterministic_and_independent():
    a, b = residual_graph(), residual_graph()
    np.testing.assert_array_equal(a.weights["c2/kernel"], b.weights["c2/kernel"])
    assert not np.array_equal(a.weights["c2/kernel"], a.weights["c1/kernel"][..., :4].reshape(-1)[:1])
    varied(a.weights["c2/kernel"])


def test_fold_batchnorm_keeps_the_numbers(rng):
    g = residual_graph()
    folded = fold_batchnorm(g)
    assert "bn1" not in [n.name for n in folded.nodes]
    assert len(folded) == len(g) - 1
    x = varied(rng.standard_normal((2, 9, 7, 3)).astype(np.float32))
    np.testing.assert_allclose(folded.forward(x), g.forward(x), rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_on_mobilenet_is_exact(rng):
    g = load_model("mobilenet_v1")
    folded = fold_batchnorm(g)
    assert not any(n.op == "batch_norm" for n in folded.nodes)
    x = rng.standard_normal((1, 224, 224, 3)).astype(np.float32)
    relu = [n.name for n in g.nodes[:30] if n.op == "relu6"][-1]
    a = g.execute({"input": x}, 0, g.node_index(relu) + 1)
    b = folded.execute({"input": x}, 0, folded.node_index(relu) + 1)
    (ta, va), = a.items()
    np.testing.assert_allclose(b[ta], va, rtol=1e-4, atol=1e-4)
