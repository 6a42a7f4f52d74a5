"""Reading user-supplied arrays: .npy files loaded without pickle, with one-line errors."""
from __future__ import annotations

import os

import numpy as np

from layers.errors import PisplitError


def load_npy(path: str) -> np.ndarray:
    """A numeric array from an .npy file; raises PisplitError naming the file when it is missing,
    unreadable, pickled, not numeric, or when its header promises more data than the file holds (a
    corrupt shape would otherwise ask for terabytes)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f".npy format version {version[0]}.{version[1]} (pisplit reads 1.0 and 2.0)")
            shape, fortran, dtype = readers[version](f, max_header_size=10_000)
            offset = f.tell()
    except FileNotFoundError:
        raise PisplitError(f"input {path}: no such file") from None
    except IsADirectoryError:
        raise PisplitError(f"input {path}: a directory, not an .npy file") from None
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises ValueError, EOFError, TokenError, SyntaxError...
        raise PisplitError(f"input {path}: not a readable .npy array ({_reason(exc)})") from None
    if dtype.hasobject or not np.issubdtype(dtype, np.number):
        raise PisplitError(f"input {path}: expected a numeric array, got dtype {dtype}")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed > size - offset:
        raise PisplitError(f"input {path}: its header says shape {tuple(shape)} {dtype} ({needed} bytes) but the file holds "
                           f"{size - offset} bytes of data")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - as above, for whatever the header check let through
        raise PisplitError(f"input {path}: not a readable .npy array ({_reason(exc)})") from None
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
        raise PisplitError(f"input {path}: expected a numeric array, got {getattr(x, 'dtype', type(x).__name__)}")
    return x


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
