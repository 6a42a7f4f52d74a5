"""Naive loop implementations: the reference the vectorised kernels are checked against."""
from __future__ import annotations

import itertools

import numpy as np


def conv_naive(x, kernel, bias, strides, pads, dilation, groups=1):
    """Direct N-d convolution with explicit pads [(before, after), ...]; loops over everything."""
    x = np.asarray(x, np.float64)
    n_sp = kernel.ndim - 2
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    ksize = kernel.shape[:n_sp]
    cin_g, cout = kernel.shape[-2:]
    cout_g = cout // groups
    outs = [(xp.shape[1 + d] - (ksize[d] - 1) * dilation[d] - 1) // strides[d] + 1 for d in range(n_sp)]
    y = np.zeros((x.shape[0], *outs, cout))
    for b in range(x.shape[0]):
        for pos in itertools.product(*[range(o) for o in outs]):
            for co in range(cout):
                g = co // cout_g
                acc = 0.0
                for tap in itertools.product(*[range(k) for k in ksize]):
                    src = tuple(p * s + t * d for p, s, t, d in zip(pos, strides, tap, dilation))
                    for ci in range(cin_g):
                        acc += xp[(b, *src, g * cin_g + ci)] * kernel[(*tap, ci, co)]
                y[(b, *pos, co)] = acc + (0.0 if bias is None else bias[co])
    return y


def pool_naive(x, pool, strides, pads, kind):
    """Direct max / average pooling; average counts only unpadded cells."""
    n_sp = len(pool)
    outs = [(x.shape[1 + d] + sum(pads[d]) - pool[d]) // strides[d] + 1 for d in range(n_sp)]
    y = np.zeros((x.shape[0], *outs, x.shape[-1]))
    for b in range(x.shape[0]):
        for pos in itertools.product(*[range(o) for o in outs]):
            for c in range(x.shape[-1]):
                vals = []
                for tap in itertools.product(*[range(k) for k in pool]):
                    src = tuple(p * s + t - pb for p, s, t, (pb, _) in zip(pos, strides, tap, pads))
                    if all(0 <= v < x.shape[1 + d] for d, v in enumerate(src)):
                        vals.append(x[(b, *src, c)])
                y[(b, *pos, c)] = max(vals) if kind == "max" else sum(vals) / len(vals)
    return y


def dense_naive(x, kernel, bias):
    y = np.zeros((x.shape[0], kernel.shape[1]))
    for b in range(x.shape[0]):
        for o in range(kernel.shape[1]):
            y[b, o] = sum(float(x[b, i]) * float(kernel[i, o]) for i in range(kernel.shape[0])) + (0 if bias is None else bias[o])
    return y


def lrn_naive(x, r, bias, alpha, beta):
    y = np.zeros(x.shape)
    c = x.shape[-1]
    for idx in itertools.product(*[range(s) for s in x.shape[:-1]]):
        for ch in range(c):
            s = sum(float(x[(*idx, j)]) ** 2 for j in range(max(0, ch - r), min(c, ch + r + 1)))
            y[(*idx, ch)] = x[(*idx, ch)] / (bias + alpha * s) ** beta
    return y


def softmax_naive(v):
    out = np.zeros(v.shape)
    for b in range(v.shape[0]):
        m = max(v[b])
        e = [np.exp(float(t) - m) for t in v[b]]
        out[b] = [t / sum(e) for t in e]
    return out
