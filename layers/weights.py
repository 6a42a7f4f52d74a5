"""Lazy weight mappings keyed "node/param": seeded generation (zoo) and .npz files.

Both load a weight only when it is asked for, so a process holds just the weights of the nodes it runs.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from .errors import PisplitError


def _fan_in(shape: tuple) -> int:
    # kernels are (*K, Cin, Cout) (conv, HWIO) or (Cin, Cout) (dense): fan-in is everything but Cout
    return int(np.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])


def generate(init: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """One float32 weight array from an initialiser name.

    'he' (normal, std sqrt(2/fan_in): keeps ReLU activations at unit scale), 'glorot' (normal, std
    sqrt(1/fan_in): for layers not followed by ReLU), 'bias' U(-0.1, 0.1), 'gamma' U(0.8, 1.2), 'gamma_small' U(0.1, 0.3),
    'beta'/'mean' U(-0.1, 0.1), 'var' U(0.5, 1.5), 'alpha' U(0.1, 0.3), 'ones', 'zeros'.
    """
    shape = tuple(int(s) for s in shape)
    if init in ("he", "glorot"):
        std = np.sqrt((2.0 if init == "he" else 1.0) / max(_fan_in(shape), 1))
        arr = rng.standard_normal(shape, dtype=np.float32)
        arr *= np.float32(std)  # in place: a 144 MiB kernel must not briefly take twice its size
        return arr
    ranges = {"bias": (-0.1, 0.1), "gamma": (0.8, 1.2), "gamma_small": (0.1, 0.3), "beta": (-0.1, 0.1), "mean": (-0.1, 0.1),
              "var": (0.5, 1.5), "alpha": (0.1, 0.3)}
    if init in ranges:
        lo, hi = ranges[init]
        return rng.uniform(lo, hi, shape).astype(np.float32)
    if init == "ones":
        return np.ones(shape, np.float32)
    if init == "zeros":
        return np.zeros(shape, np.float32)
    raise ValueError(f"weight initialiser {init!r} is unknown")


class SeededWeights(Mapping):
    """Deterministic weights: each key is generated from (seed, crc32(key)), independent of the others."""

    def __init__(self, specs: dict[str, tuple[tuple, str]], seed: int = 0, cache: bool = True):
        self.specs = dict(specs)  # key -> (shape, init)
        self.seed = int(seed)
        self._cache: dict[str, np.ndarray] | None = {} if cache else None

    def __getitem__(self, key: str) -> np.ndarray:
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        shape, init = self.specs[key]
        arr = generate(init, shape, np.random.default_rng([self.seed, zlib.crc32(key.encode())]))
        arr.flags.writeable = False
        if self._cache is not None:
            self._cache[key] = arr
        return arr

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


class NpzWeights(Mapping):
    """Weights read lazily from an .npz file (no pickle); `keys` maps "node/param" to the array name."""

    def __init__(self, path: str, keys: dict[str, str], shapes: dict[str, tuple] | None = None):
        self.path = str(path)
        self.keys = dict(keys)
        self.shapes = dict(shapes or {})  # "node/param" -> the shape the graph expects: checked as read, naming this file
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - a corrupt zip raises BadZipFile, EOFError, zlib.error, ...: one line each
            raise PisplitError(f"weights file {self.path}: cannot be read ({type(exc).__name__}: {exc})") from None
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            name = self.keys[key]
            try:
                arr = self._npz[name]
            except Exception as exc:  # noqa: BLE001 - as above (EOFError, zlib.error, a header numpy cannot parse, ...)
                raise PisplitError(f"weights file {self.path}: array {name!r} for {key} cannot be read ({exc})") from None
            if arr.dtype.kind not in "iuf":
                raise PisplitError(f"weights file {self.path}: array {name!r} for {key} has dtype {arr.dtype} (expected float or integer)")
            if key in self.shapes and arr.shape != tuple(self.shapes[key]):
                raise PisplitError(f"weights file {self.path}: array {name!r} for {key} has shape {arr.shape}, "
                                   f"expected {tuple(self.shapes[key])}")
            # integer arrays are quantized weights (Graph.node_weights checks them against their quantization)
            self._cache[key] = arr if arr.dtype.kind in "iu" else np.asarray(arr, dtype=np.float32)
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class OverlayWeights(Mapping):
    """A base mapping with some keys replaced (lazily, by zero-argument functions) or hidden."""

    def __init__(self, base: Mapping, overrides: dict, hidden: set | None = None):
        self.base = base
        self.overrides = dict(overrides)
        self.hidden = set(hidden or ())
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.overrides:
            if key not in self._cache:
                self._cache[key] = self.overrides[key]()
            return self._cache[key]
        if key in self.hidden:
            raise KeyError(key)
        return self.base[key]

    def __iter__(self):
        yield from self.overrides
        for k in self.base:
            if k not in self.overrides and k not in self.hidden:
                yield k

    def __len__(self) -> int:
        return sum(1 for _ in self)
