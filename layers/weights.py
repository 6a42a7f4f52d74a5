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
    return _draw(init, tuple(int(s) for s in shape), rng, tuple(int(s) for s in shape))


def _draw(init: str, shape: tuple, rng: np.random.Generator, whole: tuple) -> np.ndarray:
    """generate()'s draws for `shape`, scaled as for a weight of shape `whole` (a chunk of its rows)."""
    if init in ("he", "glorot"):
        std = np.sqrt((2.0 if init == "he" else 1.0) / max(_fan_in(whole), 1))
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


# rows generated or read at once when a rank wants a box of a weight: the whole weight is never in
# memory, only its box and one chunk (VGG16's 392 MiB fc6 kernel on a 512 MB Pi)
CHUNK_BYTES = 8 << 20


def full_box_of(shape: tuple) -> tuple:
    return tuple((0, int(n)) for n in shape)


def _chunks(shape: tuple, itemsize: int, box: tuple):
    """(first row, rows) of the chunks along axis 0 that cover the box's rows [a, b), each at most
    CHUNK_BYTES (at least one row), from row 0: chunked generation must replay every draw."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * itemsize if len(shape) > 1 else itemsize
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    end = box[0][1]
    for r in range(0, end, step):
        yield r, min(step, end - r)


def _copy_box(out: np.ndarray, chunk: np.ndarray, r: int, box: tuple) -> None:
    """Copy the part of `chunk` (rows r.. of the whole weight) inside `box` into `out` (the box)."""
    a, b = box[0]
    lo, hi = max(a, r), min(b, r + len(chunk))
    if lo >= hi:
        return
    rest = tuple(slice(int(x), int(y)) for x, y in box[1:])
    out[lo - a:hi - a] = chunk[(slice(lo - r, hi - r), *rest)]


def generate_box(init: str, shape: tuple, rng: np.random.Generator, box: tuple) -> np.ndarray:
    """`generate(init, shape, rng)[box]`, generated in chunks of rows so the whole weight is never
    held: numpy's generators fill arrays draw after draw, so consecutive chunks replay one call."""
    shape = tuple(int(s) for s in shape)
    if box == full_box_of(shape) or len(shape) == 0:
        return generate(init, shape, rng)
    out = np.empty(tuple(int(b) - int(a) for a, b in box), np.float32)
    for r, n in _chunks(shape, 8, box):  # 8: the uniform initialisers draw float64 before the cast
        _copy_box(out, _draw(init, (n, *shape[1:]), rng, shape), r, box)
    return out


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

    def box(self, key: str, box: tuple) -> np.ndarray:
        """self[key][box] without generating the rest (a cached whole weight is sliced instead)."""
        if self._cache is not None and key in self._cache:
            return self._cache[key][tuple(slice(int(a), int(b)) for a, b in box)]
        shape, init = self.specs[key]
        return generate_box(init, shape, np.random.default_rng([self.seed, zlib.crc32(key.encode())]), tuple(box))

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __contains__(self, key) -> bool:  # Mapping's would generate the weight to find out
        return key in self.specs

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

    def box(self, key: str, box: tuple) -> np.ndarray:
        """self[key][box], reading the array's rows in chunks from the zip member so the whole array is
        never in memory (its header checked as __getitem__ checks the array); a cached one is sliced."""
        if key in self._cache:
            return self._cache[key][tuple(slice(int(a), int(b)) for a, b in box)]
        name = self.keys[key]
        try:
            with self._npz.zip.open(f"{name}.npy") as f:
                version = np.lib.format.read_magic(f)
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in readers:
                    return self[key][tuple(slice(int(a), int(b)) for a, b in box)]
                shape, fortran, dtype = readers[version](f)
                if fortran or dtype.hasobject or dtype.kind not in "iuf" or len(shape) == 0:
                    return self[key][tuple(slice(int(a), int(b)) for a, b in box)]  # as a whole (the checks name it)
                if key in self.shapes and tuple(shape) != tuple(self.shapes[key]):
                    raise PisplitError(f"weights file {self.path}: array {name!r} for {key} has shape {tuple(shape)}, "
                                       f"expected {tuple(self.shapes[key])}")
                out = np.empty(tuple(int(b) - int(a) for a, b in box), dtype)
                row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                for r, n in _chunks(tuple(shape), dtype.itemsize, tuple(box)):
                    data = f.read(n * row)
                    if len(data) != n * row:
                        raise EOFError(f"{len(data)} of {n * row} bytes at row {r}")
                    _copy_box(out, np.frombuffer(data, dtype).reshape((n, *shape[1:])), r, tuple(box))
        except PisplitError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt member: one line, as __getitem__
            raise PisplitError(f"weights file {self.path}: array {name!r} for {key} cannot be read ({exc})") from None
        return out if out.dtype.kind in "iu" else np.asarray(out, dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __contains__(self, key) -> bool:  # Mapping's would read the array to find out
        return key in self.keys

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

    def __contains__(self, key) -> bool:
        return key in self.overrides or (key not in self.hidden and key in self.base)

    def box(self, key: str, box: tuple) -> np.ndarray:
        """self[key][box]; from the base without loading the rest where it can (weight_box)."""
        if key in self.overrides or key in self.hidden:
            return self[key][tuple(slice(int(a), int(b)) for a, b in box)]
        return weight_box(self.base, key, box)

    def __iter__(self):
        yield from self.overrides
        for k in self.base:
            if k not in self.overrides and k not in self.hidden:
                yield k

    def __len__(self) -> int:
        return sum(1 for _ in self)


def weight_box(weights: Mapping, key: str, box: tuple) -> np.ndarray:
    """weights[key][box] (a C-contiguous array of its own), without the whole weight in memory when
    the mapping can read boxes (seeded and .npz weights); KeyError when the key is missing."""
    if hasattr(weights, "box"):
        if key not in weights:
            raise KeyError(key)
        return np.ascontiguousarray(weights.box(key, tuple(box)))
    return np.array(weights[key][tuple(slice(int(a), int(b)) for a, b in box)], order="C", copy=True)
