"""A rank reads only the box of a weight its part needs: seeded weights are generated and .npz arrays
read row chunk by row chunk (layers.weights.weight_box), never whole, and equal the whole weight's
slice exactly."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import layers.weights as W
from layers.errors import PisplitError
from layers.weights import NpzWeights, OverlayWeights, SeededWeights, weight_box

ROOT = Path(__file__).resolve().parents[2]


def sl(box):
    return tuple(slice(a, b) for a, b in box)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(W, "CHUNK_BYTES", 700)  # many chunks, some of a single row


@pytest.mark.parametrize("init,shape,box", [
    ("he", (300, 7, 5), ((10, 250), (2, 5), (0, 5))),
    ("glorot", (64, 96), ((0, 64), (30, 71))),
    ("bias", (1000,), ((100, 900),)),
    ("var", (3, 3, 8, 16), ((1, 3), (0, 3), (2, 7), (5, 16))),
    ("ones", (40, 9), ((3, 4), (0, 9))),
])
def test_seeded_boxes_equal_slices_of_the_whole(small_chunks, init, shape, box):
    weights = SeededWeights({"n/w": (shape, init)}, seed=4, cache=False)
    part = weight_box(weights, "n/w", box)
    np.testing.assert_array_equal(part, weights["n/w"][sl(box)])
    assert part.flags.c_contiguous and part.dtype == np.float32


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
def test_npz_boxes_equal_slices_of_the_whole(tmp_path, small_chunks, save, dtype):
    arr = (np.arange(300 * 7 * 5) % 113 - 50).astype(dtype).reshape(300, 7, 5)
    path = tmp_path / "w.npz"
    save(path, k=arr)
    weights = NpzWeights(str(path), {"n/kernel": "k"}, {"n/kernel": (300, 7, 5)})
    box = ((13, 299), (1, 6), (2, 4))
    part = weight_box(weights, "n/kernel", box)
    np.testing.assert_array_equal(part, weights["n/kernel"][sl(box)])
    assert part.dtype == (np.int8 if dtype == np.int8 else np.float32)


def test_npz_box_of_a_truncated_or_misshapen_array_is_one_line(tmp_path, small_chunks):
    path = tmp_path / "w.npz"
    np.savez(path, k=np.zeros((50, 4), np.float32))
    wrong = NpzWeights(str(path), {"n/kernel": "k"}, {"n/kernel": (40, 4)})
    with pytest.raises(PisplitError, match=r"array 'k' for n/kernel has shape \(50, 4\), expected \(40, 4\)"):
        weight_box(wrong, "n/kernel", ((0, 10), (0, 4)))
    with pytest.raises(KeyError):
        weight_box(wrong, "n/bias", ((0, 1),))


def test_overlays_read_boxes_from_their_base(small_chunks):
    base = SeededWeights({"a/w": ((64, 8), "he"), "b/w": ((8,), "bias")}, seed=1, cache=False)
    over = OverlayWeights(base, {"b/w": lambda: np.ones(8, np.float32)}, hidden=set())
    np.testing.assert_array_equal(weight_box(over, "a/w", ((5, 60), (2, 3))), base["a/w"][5:60, 2:3])
    np.testing.assert_array_equal(weight_box(over, "b/w", ((2, 5),)), np.ones(3, np.float32))
    assert "a/w" in over and "b/w" in over and "c/w" not in over


def test_a_part_never_holds_the_whole_weight_it_slices(tmp_path):
    # a 4096 x 4096 dense layer (64 MiB) split four ways by output: building part 1 must peak near its
    # 16 MiB slice, in a process of its own (peak RSS), for seeded weights and for an .npz file
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from cluster.runtime import current_rss_bytes, peak_rss_bytes, reset_peak_rss
        from layers.builder import GraphBuilder
        from layers import save_graph, load_graph
        from partitioners.splits import split_layer

        b = GraphBuilder("wide", seed=3)
        x = b.input("x", (1, 4096))
        graph = b.build(b.dense(x, 4096, "fc"))
        if sys.argv[1] == "npz":
            path, _ = save_graph(graph, sys.argv[2] + "/wide.json")
            graph = load_graph(path)
        split = split_layer(graph, "fc", "fc-output", 4)
        before = current_rss_bytes()
        reset_peak_rss()
        part = split.part_graph(1)
        held = sum(part.node_weights(n)["kernel"].nbytes for n in part.nodes)
        print((peak_rss_bytes() - before) / 2**20, held / 2**20)
    """)
    for source in ("seeded", "npz"):
        proc = subprocess.run([sys.executable, "-c", script, source, str(tmp_path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        peak, held = map(float, proc.stdout.split())
        assert held == 16.0
        assert peak < 32.0, (source, peak)  # the slice and a chunk; the whole kernel would be 64 MiB more
