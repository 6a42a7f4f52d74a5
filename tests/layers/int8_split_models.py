"""Small int8 models for split tests (issue 12), built in-repo from tflite_models' Int8Model (no
TensorFlow): every split kind has an int8 layer to cut, with followers (depthwise, residual ADD, max
pool with 'same' padding, MEAN), grouped (depthwise multiplier 2) and per-tensor / per-channel fully
connected layers."""
from __future__ import annotations

import functools

from layers.tflite import import_tflite_bytes

from .tflite_models import (Int8Model, _int8_binary, _int8_dequantize, _int8_mean, _int8_quantize_float, int8_conv, int8_depthwise,
                            int8_fully_connected, int8_pool)


def int8_split_model(float_io: bool = False, seed: int = 3, features: bool = False) -> bytes:
    """Input (1, 13, 11, 6) int8 (or float32 with QUANTIZE / DEQUANTIZE at the ends):
    conv 3x3 relu6 (10) -> depthwise x2 (20) -> conv 1x1 (10) + residual ADD -> max pool 3/2 same ->
    conv 3x3/2 relu (9) -> MEAN -> fully connected relu (11, per-tensor) -> fully connected (5, per-channel).
    `features`: the model ends at the max pool's (1, 7, 6, 10) output instead (more values to compare)."""
    m = Int8Model(seed)
    if float_io:
        x = _int8_quantize_float(m, m.input((1, 13, 11, 6), name="image"))
    else:
        x = m.qinput((1, 13, 11, 6), 0.05, -7, name="image")
    c1 = int8_conv(m, x, 10, 3, act="relu6")
    d = int8_depthwise(m, c1, 3, multiplier=2)
    c2 = int8_conv(m, d, 10, 1)
    a = _int8_binary("ADD")(m, c2, c1)
    p = int8_pool(m, a, "MAX_POOL_2D", 3, 2, "same")
    if features:
        return m.finish(_int8_dequantize(m, p) if float_io else p)
    c3 = int8_conv(m, p, 9, 3, stride=2, act="relu")
    mm = _int8_mean([1, 2], False)(m, c3)
    f1 = int8_fully_connected(m, mm, 11, act="relu")
    f2 = int8_fully_connected(m, f1, 5, per_channel=True)
    return m.finish(_int8_dequantize(m, f2) if float_io else f2)


@functools.cache
def int8_split_graph(float_io: bool = False, features: bool = False):
    return import_tflite_bytes(int8_split_model(float_io, features=features),
                               name=("int8_split_float_io" if float_io else "int8_split") + ("_features" if features else ""))
