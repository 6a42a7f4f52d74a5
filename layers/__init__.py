"""The graph IR, numpy reference kernels, model zoo and model files of pisplit."""
from __future__ import annotations

from pathlib import Path

from .errors import PisplitError
from .graph import Graph, Node, NodeCost
from .serialize import load_graph, save_graph
from .zoo import ZOO, zoo_model

__all__ = ["Graph", "Node", "NodeCost", "PisplitError", "ZOO", "load_model", "load_graph", "save_graph", "zoo_model"]


def load_model(spec: str, seed: int = 0) -> Graph:
    """A model from a zoo name, a trained model's name (layers/trained/, e.g. `branchy_lenet_mnist`;
    `seed` does not apply), a .tflite file or a pisplit graph (.json + .npz).

    Raises PisplitError naming the model when it is none of these or cannot be read.
    """
    path = Path(spec)
    if path.suffix.lower() == ".tflite":
        from .tflite import import_tflite  # imported lazily: it loads ai-edge-litert

        return import_tflite(path)
    if path.suffix.lower() == ".json":
        return load_graph(path)
    if path.exists():
        raise PisplitError(f"model {spec!r}: unknown file type (expected .tflite or a pisplit .json graph)")
    from .trained import trained_model, trained_names

    if spec.lower() in trained_names():
        return trained_model(spec)
    try:
        return zoo_model(spec, seed=seed)
    except PisplitError:
        raise PisplitError(f"model {spec!r}: not a zoo model ({', '.join(ZOO)}), a trained model "
                           f"({', '.join(trained_names())}) nor a .tflite or .json file") from None
