"""Property tests: random conv geometry (kernel, stride, dilation, same/valid/explicit padding, groups,
a pooling follower) x random split kind x random part count and weights: merged == unsplit."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from layers.builder import GraphBuilder
from layers.errors import PisplitError
from partitioners.splits import split_layer
from tests.partitioners.test_splits import check_equivalent

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_graphs(draw):
    rank3 = draw(st.booleans()) and draw(st.booleans())  # about one in four is a 3-D conv
    n_sp = 3 if rank3 else 2
    spatial = [draw(st.integers(2, 5))] if rank3 else []
    spatial += [draw(st.integers(3, 14)), draw(st.integers(3, 10))]
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 4)) for _ in range(n_sp)]
    strides = [draw(st.integers(1, 3)) for _ in range(n_sp)]
    dilation = [draw(st.integers(1, 2)) for _ in range(n_sp)]
    padding = draw(st.one_of(st.sampled_from(["same", "valid"]),
                             st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), min_size=n_sp, max_size=n_sp)))
    follower = draw(st.sampled_from(["none", "max", "avg", "bn_relu"]))
    b = GraphBuilder("random_conv", seed=draw(st.integers(0, 1000)))
    x = b.input("x", (1, *spatial, cin))
    try:
        y = b.conv(x, cout, kernel, "conv", strides=strides, padding=padding, dilation=dilation, groups=groups,
                   activation=draw(st.sampled_from([None, "relu", "tanh"])))
        if follower in ("max", "avg"):
            y = b.pool(y, follower, [draw(st.integers(1, 3)) for _ in range(n_sp)], "pool",
                       strides=[draw(st.integers(1, 2)) for _ in range(n_sp)], padding=draw(st.sampled_from(["same", "valid"])))
        elif follower == "bn_relu":
            y = b.batch_norm(y, "bn", activation="relu")
    except PisplitError:
        assume(False)  # the window does not fit the input
    return b.build(y)


@SETTINGS
@given(g=conv_graphs(), kind=st.sampled_from(["conv-channel", "conv-spatial", "conv-filter", "fused-tiles"]),
       n_parts=st.integers(1, 4), weights=st.lists(st.floats(0.2, 3.0), min_size=4, max_size=4), use_weights=st.booleans(),
       axis=st.sampled_from(["rows", "cols"]))
def test_random_conv_splits_merge_to_the_unsplit_output(g, kind, n_parts, weights, use_weights, axis):
    options = {"axis": axis} if kind in ("conv-spatial", "fused-tiles") else {}
    extent = sum(split_layer(g, "conv", kind, 1, **options).sizes)
    sizes = weights[:n_parts] if use_weights else n_parts
    if n_parts > extent:
        try:
            split_layer(g, "conv", kind, sizes, **options)
        except PisplitError as exc:
            assert "cannot split" in str(exc)
            return
        raise AssertionError("an impossible split was accepted")
    check_equivalent(split_layer(g, "conv", kind, sizes, **options), batch=2, seed=n_parts)


@SETTINGS
@given(g=conv_graphs(), rows=st.integers(1, 3), cols=st.integers(1, 3))
def test_random_tile_grids(g, rows, cols):
    one = split_layer(g, "conv", "fused-tiles", 1, grid=(1, 1))
    assume(rows <= one.options["row_sizes"][0] and cols <= one.options["col_sizes"][0])
    check_equivalent(split_layer(g, "conv", "fused-tiles", rows * cols, grid=(rows, cols)))


@SETTINGS
@given(n_in=st.integers(1, 40), n_out=st.integers(1, 40), n_parts=st.integers(1, 4), kind=st.sampled_from(["fc-output", "fc-input"]),
       activation=st.sampled_from([None, "relu", "sigmoid", "relu6"]), weights=st.lists(st.floats(0.1, 5.0), min_size=4, max_size=4))
def test_random_dense_splits(n_in, n_out, n_parts, kind, activation, weights):
    b = GraphBuilder("random_dense", seed=n_in * 41 + n_out)
    y = b.dense(b.input("x", (1, n_in)), n_out, "fc", activation=activation)
    g = b.build(y)
    extent = n_out if kind == "fc-output" else n_in
    assume(n_parts <= extent)
    split = split_layer(g, "fc", kind, weights[:n_parts])
    merged = check_equivalent(split, batch=3)
    assert np.isfinite(merged).all()
