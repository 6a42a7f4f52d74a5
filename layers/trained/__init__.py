"""Trained models (issue 14): small networks trained on real digits, loadable by name like the zoo.

Each model is a pisplit graph (`NAME.json` + `NAME.npz`) and a .tflite export (`NAME.tflite`) in this
folder, with one graph output per exit (`exit1`, `exit2`, ..., `final`: softmax probabilities; the
logits before each are `EXIT_logits`). `manifest.json` says for each the command and seed that made it,
its data set, its held-out test split and its measured test accuracy per exit. They were made by
`scripts/train` (scripts/train_models.py, PyTorch); loading and running them needs only numpy.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import PisplitError
from ..graph import Graph
from ..jsonfile import read_json

TRAINED_DIR = Path(__file__).resolve().parent
MANIFEST = TRAINED_DIR / "manifest.json"


@lru_cache(maxsize=1)
def manifest() -> dict:
    """The manifest: {"models": {name: entry}}, entry as written by scripts/train_models.py."""
    if not MANIFEST.exists():
        return {"models": {}}
    return read_json(MANIFEST, "trained-model manifest")


def trained_names() -> list[str]:
    """Names of the committed trained models."""
    return list(manifest()["models"])


def trained_model(name: str) -> Graph:
    """The trained model `name` as a pisplit graph; PisplitError when there is none of that name."""
    from ..serialize import load_graph

    key = name.lower()
    if key not in manifest()["models"]:
        raise PisplitError(f"model {name!r}: not a trained model ({', '.join(trained_names()) or 'none'})")
    return load_graph(TRAINED_DIR / f"{key}.json")


def held_out(name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The held-out test split of trained model `name`: (graph feeds, labels (N,) int64)."""
    from .data import load_split, model_inputs

    entry = manifest()["models"][name]
    split = load_split(entry["data"])
    return model_inputs(entry["data"], entry["input"], split.x_test, "test"), split.y_test
