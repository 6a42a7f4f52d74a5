"""Vectorised kernels == naive loops on small random shapes, plus hand-computed golden values."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers import kernels as K
from tests.conftest import varied
from tests.layers.naive import conv_naive, dense_naive, lrn_naive, pool_naive, softmax_naive

TOL = dict(rtol=1e-5, atol=1e-5)


def _check(y, ref):
    assert y.dtype == np.float32
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, **TOL)


@st.composite
def conv2d_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups == 1
    cin = draw(st.integers(1, 3)) * groups
    if depthwise:
        groups = cin
        cout = cin * draw(st.integers(1, 2))
    else:
        cout = draw(st.integers(1, 3)) * groups
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    strides = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers((kh - 1) * dilation[0] + 1, 8))
    w = draw(st.integers((kw - 1) * dilation[1] + 1, 8))
    padding = draw(st.sampled_from(["same", "valid", "explicit"]))
    if padding == "explicit":
        padding = [[draw(st.integers(0, 2)), draw(st.integers(0, 2))] for _ in range(2)]
    return dict(shape=(draw(st.integers(1, 2)), h, w, cin), kernel=(kh, kw, cin // groups, cout),
                strides=strides, dilation=dilation, padding=padding, groups=groups, seed=draw(st.integers(0, 2**16)))


@settings(max_examples=60, deadline=None)
@given(conv2d_cases())
def test_conv2d_matches_naive(case):
    rng = np.random.default_rng(case["seed"])
    x = varied(rng.standard_normal(case["shape"]).astype(np.float32))
    k = rng.standard_normal(case["kernel"]).astype(np.float32)
    b = rng.standard_normal(case["kernel"][-1]).astype(np.float32)
    y = K.conv2d(x, k, b, case["strides"], case["padding"], case["dilation"], case["groups"])
    pads = K.resolve_padding(case["shape"][1:3], case["kernel"][:2], case["strides"], case["dilation"], case["padding"])
    _check(y, conv_naive(x, k, b, case["strides"], pads, case["dilation"], case["groups"]))


def test_conv2d_banded_im2col_equals_single_band(monkeypatch, rng):
    # a tiny band forces many bands; results must not depend on where bands break
    x = varied(rng.standard_normal((1, 13, 11, 5)).astype(np.float32))
    k = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)
    whole = K.conv2d(x, k, None, (2, 1), "same")
    monkeypatch.setattr(K, "IM2COL_BAND_BYTES", 64)
    banded = K.conv2d(x, k, None, (2, 1), "same")
    np.testing.assert_array_equal(whole, banded)


@pytest.mark.parametrize("strides,padding,groups", [((1, 1, 1), "same", 1), ((2, 1, 2), "valid", 1), ((1, 2, 1), [[1, 0], [0, 1], [1, 1]], 2)])
def test_conv3d_matches_naive(rng, strides, padding, groups):
    x = varied(rng.standard_normal((1, 5, 6, 7, 4)).astype(np.float32))
    k = rng.standard_normal((3, 2, 3, 4 // groups, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    dil = (1, 2, 1)
    y = K.conv3d(x, k, b, strides, padding, dil, groups)
    pads = K.resolve_padding(x.shape[1:4], k.shape[:3], strides, dil, padding)
    _check(y, conv_naive(x, k, b, strides, pads, dil, groups))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.integers(3, 9), st.integers(3, 9),
       st.sampled_from(["same", "valid"]), st.sampled_from(["max", "avg"]), st.integers(0, 2**16))
def test_pool2d_matches_naive(ph, pw, sh, sw, h, w, padding, kind, seed):
    rng = np.random.default_rng(seed)
    x = varied(rng.standard_normal((2, h, w, 3)).astype(np.float32))
    fn = K.max_pool if kind == "max" else K.avg_pool
    y = fn(x, (ph, pw), (sh, sw), padding)
    pads = K.resolve_padding((h, w), (ph, pw), (sh, sw), (1, 1), padding)
    _check(y, pool_naive(x, (ph, pw), (sh, sw), pads, kind))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool3d_matches_naive(rng, kind):
    x = varied(rng.standard_normal((1, 5, 7, 6, 2)).astype(np.float32))
    fn = K.max_pool if kind == "max" else K.avg_pool
    y = fn(x, (2, 3, 2), (2, 2, 1), "same")
    pads = K.resolve_padding(x.shape[1:4], (2, 3, 2), (2, 2, 1), (1, 1, 1), "same")
    _check(y, pool_naive(x, (2, 3, 2), (2, 2, 1), pads, kind))


def test_dense_matches_naive(rng):
    x = varied(rng.standard_normal((3, 17)).astype(np.float32))
    k = rng.standard_normal((17, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    _check(K.dense(x, k, b), dense_naive(x, k, b))


def test_lrn_and_softmax_match_naive(rng):
    x = varied(rng.standard_normal((2, 3, 2, 7)).astype(np.float32))
    _check(K.local_response_norm(x, 2, 1.5, 0.3, 0.75), lrn_naive(x, 2, 1.5, 0.3, 0.75))
    v = varied(rng.standard_normal((3, 9)).astype(np.float32) * 10)
    _check(K.softmax(v), softmax_naive(v))


def test_elementwise_kernels(rng):
    x = varied(rng.standard_normal((2, 4, 4, 3)).astype(np.float32) * 5)
    np.testing.assert_array_equal(K.relu(x), np.where(x > 0, x, 0))
    np.testing.assert_array_equal(K.relu6(x), np.minimum(np.maximum(x, 0), 6))
    alpha = np.array([0.1, 0.2, 0.3], np.float32)
    np.testing.assert_allclose(K.prelu(x, alpha), np.where(x >= 0, x, x * alpha), **TOL)
    np.testing.assert_allclose(K.sigmoid(x), 1 / (1 + np.exp(-x.astype(np.float64))), **TOL)
    np.testing.assert_allclose(K.tanh(x), np.tanh(x.astype(np.float64)), **TOL)
    gamma, beta, mean, var = (rng.uniform(0.5, 1.5, 3).astype(np.float32) for _ in range(4))
    np.testing.assert_allclose(K.batch_norm(x, gamma, beta, mean, var, 1e-3), gamma * (x - mean) / np.sqrt(var + 1e-3) + beta, **TOL)
    np.testing.assert_allclose(K.global_avg_pool(x), x.mean(axis=(1, 2)), **TOL)
    assert K.global_avg_pool(x, keepdims=True).shape == (2, 1, 1, 3)
    assert K.pad(x, [[0, 0], [1, 2], [0, 1], [0, 0]]).shape == (2, 7, 5, 3)


# --- hand-computed golden values -----------------------------------------------------------------

def test_conv2d_golden():
    # 3x3 input 1..9, 2x2 all-ones kernel, valid: each output is the sum of a 2x2 window
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    k = np.ones((2, 2, 1, 1), np.float32)
    np.testing.assert_array_equal(K.conv2d(x, k)[0, :, :, 0], [[12, 16], [24, 28]])
    # same padding, stride 2: TF puts the odd pad after, output 2x2 reads windows at (0,0),(0,2),(2,0),(2,2)
    y = K.conv2d(x, k, np.array([1], np.float32), (2, 2), "same")
    np.testing.assert_array_equal(y[0, :, :, 0], [[13, 10], [16, 10]])


def test_pool_golden():
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32).reshape(1, 3, 3, 1)
    np.testing.assert_array_equal(K.max_pool(x, (2, 2), (2, 2), "same")[0, :, :, 0], [[5, 6], [8, 9]])
    # average excludes padded cells: the corner window holds only 9
    np.testing.assert_array_equal(K.avg_pool(x, (2, 2), (2, 2), "same")[0, :, :, 0], [[3, 4.5], [7.5, 9]])


@pytest.mark.parametrize("radius,beta", [(0, 0.75), (1, 0.5), (2, 0.75), (3, 1.0), (9, 0.6)])
def test_lrn_every_beta_path_matches_naive(rng, radius, beta):
    # beta 0.75 / 0.5 / 1.0 have their own paths; radius 9 is wider than the 7 channels
    x = varied(rng.standard_normal((2, 3, 2, 7)).astype(np.float32) * 3)
    _check(K.local_response_norm(x, radius, 1.2, 0.4, beta), lrn_naive(x, radius, 1.2, 0.4, beta))


def test_lrn_golden():
    x = np.array([1, 2, 3], np.float32).reshape(1, 1, 1, 3)
    # radius 1, bias 1, alpha 1, beta 1: channel 0 -> 1 / (1 + 1 + 4) = 1/6
    y = K.local_response_norm(x, 1, 1.0, 1.0, 1.0)
    np.testing.assert_allclose(y.ravel(), [1 / 6, 2 / 15, 3 / 14], rtol=1e-6)


def test_softmax_golden():
    np.testing.assert_allclose(K.softmax(np.array([[0.0, np.log(3.0)]], np.float32)), [[0.25, 0.75]], rtol=1e-6)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="padding 'middle'"):
        K.resolve_padding((4, 4), (3, 3), (1, 1), (1, 1), "middle")
    with pytest.raises(ValueError, match="groups=2 do not fit"):
        K.conv2d(np.zeros((1, 4, 4, 3), np.float32), np.zeros((3, 3, 1, 4), np.float32), groups=2)
    with pytest.raises(ValueError, match="smaller than kernel"):
        K.conv2d(np.zeros((1, 2, 2, 1), np.float32), np.zeros((3, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="activation 'swish'"):
        K.apply_activation(np.zeros(3, np.float32), "swish")
