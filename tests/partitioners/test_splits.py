"""Split kinds in one process: every layer kind x every legal split kind x 1-4 parts (equal, uneven,
weighted): the merged output equals the unsplit segment (float32, rtol = atol = 1e-5)."""
from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest

from layers.errors import PisplitError
from partitioners.splits import legal_kinds, split_layer
from tests.conftest import varied
from tests.partitioners.split_graphs import CASES, GRAPHS, GRID_CASES, case_id

TOL = dict(rtol=1e-5, atol=1e-5)


@functools.cache
def graph(name: str):
    return GRAPHS[name]()


def uneven(extent: int, n: int, salt: str) -> list[int]:
    """A seeded composition of `extent` into `n` positive, mostly unequal sizes."""
    rng = np.random.default_rng([zlib.crc32(salt.encode()), extent, n])
    cuts = sorted(rng.choice(np.arange(1, extent), n - 1, replace=False).tolist()) if n > 1 else []
    edges = [0, *cuts, extent]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


WEIGHTS = [1.0, 2.5, 0.7, 1.3]


def split_input(split, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    return {t: varied(rng.standard_normal((batch, *split.graph.shapes[t][1:]), dtype=np.float32)) for t in split.inputs}


def check_equivalent(split, batch: int = 2, seed: int = 0):
    x = split_input(split, batch, seed)
    want = split.reference(x)
    outputs = []
    for p in range(split.n_parts):
        g = split.part_graph(p)
        got = g.execute(split.slice_input(x, p))[g.outputs[0]]
        outputs.append(got)
    merged = split.merge(outputs)
    assert merged.shape == want.shape and merged.dtype == want.dtype == np.float32
    np.testing.assert_allclose(merged, want, **TOL)
    return merged


def sizes_variants(extent: int | None, n: int, salt: str):
    """(label, sizes): equal parts, uneven integer sizes, float weights."""
    yield "equal", n
    if extent is not None and extent >= n:
        yield "uneven", uneven(extent, n, salt)
    yield "weights", WEIGHTS[:n]


@pytest.mark.parametrize("n_parts", [1, 2, 3, 4])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_merged_equals_unsplit(case, n_parts):
    name, layer, kind, options = case
    g = graph(name)
    assert kind in legal_kinds(g, layer)
    one = split_layer(g, layer, kind, 1, **options)
    extent = None if kind == "data-parallel" else sum(one.sizes)
    for label, sizes in sizes_variants(extent, n_parts, case_id(case)):
        if extent is not None and n_parts > extent:
            with pytest.raises(PisplitError, match=rf"layer {layer}: cannot split {extent} .* into {n_parts} parts"):
                split_layer(g, layer, kind, sizes, **options)
            continue
        split = split_layer(g, layer, kind, sizes, **options)
        assert split.n_parts == n_parts, label
        if label == "uneven":
            assert list(split.sizes) == sizes
        if extent is not None:
            assert sum(split.sizes) == extent and min(split.sizes) >= 1
        check_equivalent(split, batch=5 if kind == "data-parallel" else 2, seed=n_parts)


@pytest.mark.parametrize("case", GRID_CASES, ids=lambda c: f"{c[0]}:{c[1]}:{c[3][0]}x{c[3][1]}")
def test_fused_tile_grids(case):
    name, layer, options, grid = case
    g = graph(name)
    split = split_layer(g, layer, "fused-tiles", grid[0] * grid[1], grid=grid, **options)
    assert split.n_parts == grid[0] * grid[1]
    check_equivalent(split)
    rows, cols = split.options["row_sizes"], split.options["col_sizes"]
    uneven_rows = uneven(sum(rows), grid[0], "rows")
    uneven_cols = uneven(sum(cols), grid[1], "cols")
    split = split_layer(g, layer, "fused-tiles", (uneven_rows, uneven_cols), grid=grid, **options)
    assert split.options["row_sizes"] == uneven_rows and split.options["col_sizes"] == uneven_cols
    check_equivalent(split)


def test_conv_spatial_halo_rows_are_exact():
    """3x3 'same' conv on 13 rows (no followers), parts of 6 and 7 rows: part 0 reads rows 0-6 and
    pads one row above, part 1 reads rows 5-12 and pads one row below."""
    split = split_layer(graph("conv_chain"), "conv", "conv-spatial", [6, 7], followers=False)
    (f0,), (f1,) = split.parts[0].feeds, split.parts[1].feeds
    assert f0.box[0] == (0, 7) and f1.box[0] == (5, 13)
    assert split.parts[0].nodes[0].node.attrs["padding"][0] == [1, 0]
    assert split.parts[1].nodes[0].node.attrs["padding"][0] == [0, 1]
    assert [p.output_box[0] for p in split.parts] == [(0, 6), (6, 13)]


def test_followers_keep_the_split():
    g = graph("conv_chain")
    assert split_layer(g, "conv", "conv-channel", 2).node_names == ("conv", "bn", "relu", "maxpool", "dw", "avgpool")
    assert split_layer(g, "conv", "conv-spatial", 2).node_names == ("conv", "bn", "relu", "maxpool", "dw", "avgpool")
    # lrn mixes neighbouring channels: it follows a row split, not a channel split
    assert split_layer(graph("grouped"), "conv", "conv-channel", 2).node_names == ("conv",)
    assert split_layer(graph("grouped"), "conv", "conv-spatial", 2).node_names == ("conv", "norm", "pool")
    # the add's second operand is cut like the running tensor
    split = split_layer(graph("residual"), "conv", "conv-channel", [2, 4])
    assert split.node_names == ("conv", "bn", "add", "relu")
    assert [f.tensor for f in split.parts[1].feeds] == ["image", "shortcut"]
    assert split.parts[1].feeds[1].box[-1] == (2, 6)


def test_grouped_conv_channel_split_crossing_a_group():
    """12 filters in 3 groups of 4: part [2, 9) runs the tail of group 0, group 1 whole and the head
    of group 2, each reading only its group's input channels."""
    split = split_layer(graph("grouped"), "conv", "conv-channel", [2, 7, 3])
    boxes = [f.box[-1] for f in split.parts[1].feeds]
    assert boxes == [(0, 2), (2, 4), (4, 6)]
    assert split.input_pattern == "scatter"
    check_equivalent(split)


def test_data_parallel_deals_frames_by_share():
    split = split_layer(graph("conv_chain"), "conv", "data-parallel", [2.0, 1.0])
    assert split.deal(6) == (0, 1, 0, 0, 1, 0)
    x = split_input(split, 6, 3)
    assert split.slice_input(x, 1)["image"].shape[0] == 2
    check_equivalent(split, batch=6)


def test_run_in_process_with_the_numpy_engine():
    split = split_layer(graph("dense_chain"), "fc1", "fc-input", [0.3, 0.7])
    x = split_input(split, 1, 4)
    np.testing.assert_allclose(split.run(x, engine="numpy"), split.reference(x), **TOL)


# --- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, match", [
    (("conv_chain", "conv", "conv-channel", 11), r"layer conv: cannot split 10 output channels into 11 parts"),
    (("conv_chain", "conv", "conv-filter", 6), r"layer conv: cannot split 5 input channels into 6 parts"),
    (("conv_chain", "conv", "conv-spatial", 8), r"layer conv: cannot split 7 output rows into 8 parts"),
    (("dense_chain", "fc1", "fc-input", 24), r"layer fc1: cannot split 23 input features into 24 parts"),
    (("conv_chain", "conv", "fc-output", 2), r"layer conv: kind fc-output does not apply to a conv2d node"),
    (("dense_chain", "fc1", "conv-spatial", 2), r"layer fc1: kind conv-spatial does not apply to a dense node"),
    (("conv_chain", "relu", "conv-channel", 2), r"layer relu: kind conv-channel does not apply to a relu node"),
    (("conv_chain", "conv", "conv-channel", [3, 3]), r"layer conv: part sizes \[3, 3\] sum to 6, not to the 10 output channels"),
    (("conv_chain", "conv", "conv-channel", [5, 0, 5]), r"layer conv: part sizes \[5, 0, 5\] must all be positive"),
    (("conv_chain", "conv", "conv-channel", [1.0, -2.0]), r"must all be positive"),
    (("conv_chain", "conv", "conv-channel", 0), r"layer conv: a split needs at least one part"),
    (("conv_chain", "conv", "data-parallel", [1.0, 0.0]), r"layer conv: frame shares \[1.0, 0.0\] must all be positive"),
    (("conv_chain", "conv", "conv-split", 2), r"split kind 'conv-split': unknown"),
    (("conv_chain", "convv", "conv-channel", 2), r"no node named 'convv'"),
])
def test_impossible_requests_name_the_layer(args, match):
    name, layer, kind, sizes = args
    with pytest.raises(PisplitError, match=match):
        split_layer(graph(name), layer, kind, sizes)


@pytest.mark.parametrize("options, match", [
    ({"last": "pointwise"}, r"layer conv: conv-channel run to pointwise cannot pass pointwise \(conv2d\)"),
    ({"last": "image"}, r"no node named 'image'"),
    ({"grid": (2, 2)}, r"a grid applies to fused-tiles only"),
    ({"axis": "depth"}, r"axis 'depth' is not one of rows, cols"),
])
def test_bad_options_name_the_layer(options, match):
    kind = "conv-spatial" if "axis" in options else "conv-channel"
    with pytest.raises(PisplitError, match=match):
        split_layer(graph("conv_chain"), "conv", kind, 2, **options)


def test_bad_grids():
    g = graph("conv_chain")
    with pytest.raises(PisplitError, match=r"a 2x2 grid has 4 tiles, not 3 parts"):
        split_layer(g, "conv", "fused-tiles", 3, grid=(2, 2))
    with pytest.raises(PisplitError, match=r"cannot split 6 output columns into 7 parts"):
        split_layer(g, "conv", "fused-tiles", 7, grid=(1, 7))
    with pytest.raises(PisplitError, match=r"layer bn: fused-tiles run end conv comes before it"):
        split_layer(g, "bn", "fused-tiles", 2, last="conv")


def test_run_must_continue_the_chain():
    # conv-spatial runs are chains: the shortcut's output is read by the add, not by the conv beside it
    with pytest.raises(PisplitError, match=r"layer shortcut: conv-spatial run to relu breaks after shortcut"):
        split_layer(graph("residual"), "shortcut", "conv-spatial", 2, last="relu")
    # fused tiles also take a region: the shortcut and the main path both read the block's input
    g = graph("residual")
    split = split_layer(g, "shortcut", "fused-tiles", (4, 5), last="relu")
    x = np.random.default_rng(5).standard_normal(g.shapes["image"], dtype=np.float32)
    np.testing.assert_allclose(split.run(x), split.reference(x), rtol=1e-5, atol=1e-6)
    assert [len([f for f in p.feeds if f.tensor == "image"]) for p in split.parts] == [2, 2]  # a box per reader
    # ... but not one whose inside tensor is read after it
    with pytest.raises(PisplitError, match=r"layer shortcut: fused-tiles run to bn breaks after shortcut"):
        split_layer(g, "shortcut", "fused-tiles", 2, last="bn")
    with pytest.raises(PisplitError, match=r"fc-input sums partial outputs|cannot pass fc2"):
        split_layer(graph("dense_chain"), "fc1", "fc-input", 2, last="fc2")


def test_merge_checks_part_outputs():
    split = split_layer(graph("dense_chain"), "fc1", "fc-output", 2)
    with pytest.raises(PisplitError, match=r"merge needs 2 part outputs, got 1"):
        split.merge([np.zeros((1, 9), np.float32)])
    with pytest.raises(PisplitError, match=r"part 1 output has shape \(1, 9\), expected \(1, 8\)"):
        split.merge([np.zeros((1, 9), np.float32), np.zeros((1, 9), np.float32)])
