"""Hand-computed golden values for the kernels .tflite models brought in (resize, mean, hard-swish)."""
from __future__ import annotations

import numpy as np

from layers import kernels as K


def grid(values) -> np.ndarray:
    return np.asarray(values, np.float32)[None, :, :, None]


def test_resize_bilinear_golden():
    x = grid([[0, 1], [2, 3]])
    np.testing.assert_allclose(K.resize_bilinear(x, (3, 3), align_corners=True)[0, :, :, 0],
                               [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])
    # plain: source = out * in/out, the last row and column clamp to the edge
    np.testing.assert_allclose(K.resize_bilinear(x, (4, 4))[0, :, :, 0],
                               [[0, 0.5, 1, 1], [1, 1.5, 2, 2], [2, 2.5, 3, 3], [2, 2.5, 3, 3]])
    # half-pixel centres: source = (out + 0.5) * in/out - 0.5, clamped below at 0
    np.testing.assert_allclose(K.resize_bilinear(x, (4, 4), half_pixel_centers=True)[0, 0, :, 0], [0, 0.25, 0.75, 1])


def test_resize_nearest_golden():
    x = grid([[0, 1, 2]])
    np.testing.assert_array_equal(K.resize_nearest(x, (1, 5), align_corners=True)[0, 0, :, 0], [0, 1, 1, 2, 2])  # halves round up
    np.testing.assert_array_equal(K.resize_nearest(x, (1, 6))[0, 0, :, 0], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(K.resize_nearest(x, (1, 2), half_pixel_centers=True)[0, 0, :, 0], [0, 2])


def test_mean_and_activations_golden():
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    np.testing.assert_allclose(K.mean(x, [1, 2])[0], [10, 11, 12, 13])
    assert K.mean(x, [3], keepdims=True).shape == (1, 2, 3, 1)
    np.testing.assert_allclose(K.hard_swish(np.float32([-4, -1, 0, 1, 4])), [0, -1 / 3, 0, 2 / 3, 4], rtol=1e-6)
    np.testing.assert_allclose(K.leaky_relu(np.float32([-2, 3]), 0.1), [-0.2, 3], rtol=1e-6)
    np.testing.assert_allclose(K.relu_n1_to_1(np.float32([-2, 0.5, 2])), [-1, 0.5, 1])
