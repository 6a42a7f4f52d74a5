"""Reading user-supplied arrays: .npy files loaded without pickle, with one-line errors."""
from __future__ import annotations

import numpy as np

from layers.errors import PisplitError


def load_npy(path: str) -> np.ndarray:
    """A numeric array from an .npy file; raises PisplitError naming the file when it is missing,
    unreadable, pickled or not numeric."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PisplitError(f"input {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise PisplitError(f"input {path}: not a readable .npy array ({exc})") from None
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
        raise PisplitError(f"input {path}: expected a numeric array, got {getattr(x, 'dtype', type(x).__name__)}")
    return x
