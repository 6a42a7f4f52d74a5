"""Reading pisplit's JSON documents (graphs, plans, profiles) with one-line errors naming the file."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import PisplitError


def read_json(path: str | Path, what: str):
    """The parsed JSON of `path`; raises PisplitError "<what> <path>: ..." when unreadable or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise PisplitError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PisplitError(f"{what} {path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise PisplitError(f"{what} {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
