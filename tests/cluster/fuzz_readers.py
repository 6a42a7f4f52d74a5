"""Mutation fuzzing of the files pisplit reads, through the command line as a user meets it.

Each reader has a valid file (`base`), a way to mutate it (structured edits of JSON trees, line edits
of INI text, byte edits of binary files; hypothesis draws them) and the command that reads it. A case
passes when `pisplit` (cluster.cli.main, in this process, without --debug) either succeeds or prints
exactly one line `pisplit: error: ...` naming the file, with a non-zero status: never a traceback,
never a hang (each case runs under an alarm). Used by tests/cluster/test_fuzz_readers.py (a few
hundred cases per reader) and scripts/bench_fuzz (thousands).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import signal
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import strategies as st

CASE_SECONDS = 10  # a case still running after this is a hang


class Hang(BaseException):
    """A case that did not finish within CASE_SECONDS (BaseException: the CLI must not catch it)."""


@dataclass
class Outcome:
    status: int
    stderr: str
    stdout: str
    trace: str | None = None  # an exception that escaped main()

    def problem(self, names: tuple) -> str | None:
        """Why this outcome breaks the contract, or None."""
        if self.trace is not None:
            return f"escaped main(): {self.trace}"
        if "Traceback" in self.stderr:
            return f"traceback on stderr: {self.stderr[-2000:]}"
        if self.status == 0:
            return None
        lines = self.stderr.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("pisplit: error: "):
            return f"status {self.status}, expected one 'pisplit: error:' line, got {lines!r}"
        if not any(n in lines[0] for n in names):
            return f"the error does not name the file ({' or '.join(names)}): {lines[0]}"
        return None


def run_cli(argv: list[str], seconds: int = CASE_SECONDS) -> Outcome:
    """`pisplit ARGV` in this process: status, stderr, stdout, and any exception that escaped main()."""
    from cluster.cli import main

    def alarm(signum, frame):
        raise Hang(f"pisplit {' '.join(argv)}: still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    err, out = io.StringIO(), io.StringIO()
    trace = None
    status = 0
    signal.alarm(seconds)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                status = int(main(list(argv)) or 0)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except Hang:
                raise
            except BaseException as exc:  # noqa: BLE001 - what the test reports
                trace = "".join(traceback.format_exception(exc))[-3000:]
                status = -1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return Outcome(status, err.getvalue(), out.getvalue(), trace)


# --- mutations ---------------------------------------------------------------------------------------------
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([-1, 0, 2 ** 31, 2 ** 63, 10 ** 30, -(2 ** 63)]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.sampled_from(["", "../../etc/passwd", "-x", "$(id)", "1e9"]),
    st.lists(st.integers(-2, 5), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(-1, 3), max_size=2),
)


def _paths(tree, prefix=()):
    """Every path (tuple of keys/indices) into a JSON tree, the root included."""
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_json(draw, doc, edits: int = 3):
    """`doc` after 1..`edits` structural edits: a value replaced by an odd one, a key dropped or added,
    a list shortened, emptied or grown, a value wrapped in a list."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, edits))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "drop", "add", "shorten", "empty", "grow", "wrap"]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        target = parent[path[-1]] if path else doc
        if op == "replace" and path:
            parent[path[-1]] = draw(ODD_VALUES)
        elif op == "drop" and path:
            del parent[path[-1]]
        elif op == "add" and isinstance(target, dict):
            target[draw(st.sampled_from(["x", "name", "op", "inputs", "weights", "attrs", "shape", "kind"]))] = draw(ODD_VALUES)
        elif op == "shorten" and isinstance(target, (list, str)) and len(target):
            cut = draw(st.integers(0, len(target) - 1))
            if path:
                parent[path[-1]] = target[:cut]
        elif op == "empty" and isinstance(target, (list, dict)):
            target.clear()
        elif op == "grow" and isinstance(target, list) and target:
            target.append(copy.deepcopy(draw(st.sampled_from(target))))
        elif op == "wrap" and path:
            parent[path[-1]] = [target]
    return doc


@st.composite
def mutated_bytes(draw, data: bytes, edits: int = 4, head: int | None = None):
    """`data` after 1..`edits` byte edits (flips, overwrites with odd bytes, a truncation, an insertion,
    a duplicated slice); with `head`, edits fall in the first `head` bytes half of the time (headers)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, edits))):
        n = len(out)
        if n == 0:
            out += draw(st.binary(min_size=1, max_size=8))
            continue
        limit = min(head, n) if head and draw(st.booleans()) else n
        at = draw(st.integers(0, limit - 1))
        op = draw(st.sampled_from(["flip", "flip", "set", "truncate", "insert", "duplicate"]))
        if op == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            value = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("9"), ord("{"), ord("'")]))
            width = draw(st.integers(1, 8))
            out[at: at + width] = bytes([value]) * len(out[at: at + width])
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            size = draw(st.integers(1, 64))
            out[at:at] = out[at: at + size]
    return bytes(out)


@st.composite
def mutated_npz(draw, data: bytes, edits: int = 2):
    """An .npz's arrays after 1..`edits` edits: one dropped, cut short, flattened, given another dtype
    (int8, bool, complex, strings, objects), or an array added."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _edit_arrays(draw, arrays, edits)


def _edit_arrays(draw, arrays: dict, edits: int) -> bytes:
    for _ in range(draw(st.integers(1, edits))):
        key = draw(st.sampled_from(sorted(arrays))) if arrays else None
        op = draw(st.sampled_from(["drop", "short", "flat", "dtype", "add", "scalar"]))
        if key is None or op == "add":
            arrays[draw(st.sampled_from(["n0_w", "n99_b", "x"]))] = np.zeros(draw(st.integers(0, 4)), np.float32)
        elif op == "drop":
            del arrays[key]
        elif op == "short":
            arrays[key] = arrays[key].reshape(-1)[: draw(st.integers(0, max(arrays[key].size - 1, 0)))]
        elif op == "flat":
            arrays[key] = arrays[key].reshape(-1)
        elif op == "scalar":
            arrays[key] = np.array(draw(st.floats(allow_nan=True)), np.float32)
        else:
            dtype = draw(st.sampled_from(["int8", "bool", "complex64", "U3", "object", "float16", ">f4"]))
            try:
                arrays[key] = arrays[key].astype(dtype)
            except ValueError:  # strings left by an earlier edit that are no numbers: keep them
                pass
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


INI_TOKENS = ["[", "]", "=", ":", "pi-[0:3]", "pi-[0:999999999]", "pi-[a:9]", "[pis:children]", "[pis:vars]", "[all:vars]",
              "slots=0", "slots=-1", "slots=x", "slots=100000", "device=rpi9", "ansible_port=0", "ansible_port=99999",
              "ansible_host=-oProxyCommand=x", "workdir=$(id)", "mpi_network=300.1.1.0/99", "\"", "'", "\\", "#", "\t", "\x00",
              "é", "ansible_group_priority=x", "pis", "a" * 300]


@st.composite
def mutated_ini(draw, text: str, edits: int = 3):
    """`text` after 1..`edits` line edits: a line dropped, duplicated or swapped, an odd token inserted."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, edits))):
        if not lines:
            lines.append(draw(st.sampled_from(INI_TOKENS)))
            continue
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "duplicate", "token", "token", "line", "swap"]))
        if op == "drop":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "token":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.sampled_from(INI_TOKENS)) + lines[i][at:]
        elif op == "line":
            lines.insert(i, " ".join(draw(st.lists(st.sampled_from(INI_TOKENS), min_size=1, max_size=3))))
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines) + "\n"


# --- the readers --------------------------------------------------------------------------------------------
@dataclass
class Reader:
    """A file pisplit reads: how to make a valid one in `folder`, how to mutate it, how the CLI reads it."""

    name: str
    make: Callable[[Path], Path]  # writes the valid file(s) into the folder; returns the file to mutate
    mutations: Callable[[Path], st.SearchStrategy]  # of the mutated file's content (bytes or str), given the valid file
    argv: Callable[[Path], list]  # the command that reads the file at this path
    names: Callable[[Path], tuple] = lambda p: (p.name,)  # what the error line must name (one of them)


def _write(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogateescape")
    else:
        path.write_text(json.dumps(content))


def write_case(reader: Reader, base: Path, content) -> Path:
    """The mutated file, written next to the valid one under the same name pattern."""
    _write(base, content)
    return base


def _graph_files(folder: Path) -> Path:
    from layers import zoo_model
    from layers.serialize import save_graph

    path, _ = save_graph(zoo_model("lenet5"), folder / "g.json")
    return path


def _npz_file(folder: Path) -> Path:
    _graph_files(folder)
    return folder / "g.npz"


def _npy_file(folder: Path) -> Path:
    from layers import zoo_model

    shape = zoo_model("lenet5").inputs["input"] if "input" in zoo_model("lenet5").inputs else next(iter(zoo_model("lenet5").inputs.values()))
    x = np.random.default_rng(0).random((2, *shape[1:]), dtype=np.float32)
    np.save(folder / "x.npy", x, allow_pickle=False)
    return folder / "x.npy"


def _tflite_file(folder: Path) -> Path:
    src = Path(__file__).resolve().parents[2] / "layers" / "trained" / "lenet5_digits.tflite"
    (folder / "m.tflite").write_bytes(src.read_bytes())
    return folder / "m.tflite"


def _profile_file(folder: Path) -> Path:
    from cluster.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["profile", "--model", "lenet5", "--output", str(folder / "p.json"), "--json"])
    return folder / "p.json"


def _inventory_file(folder: Path) -> Path:
    src = Path(__file__).resolve().parents[2] / "inventory.ini"
    (folder / "inventory.ini").write_text(src.read_text())
    return folder / "inventory.ini"


def _json_of(path: Path):
    return json.loads(path.read_text())


READERS = {
    # a pisplit graph's structure: read and shape-checked by `show` (no activations are allocated)
    "graph-json": Reader("graph-json", _graph_files, lambda p: mutated_json(_json_of(p)), lambda p: ["show", str(p)],
                         lambda p: (p.name, p.with_suffix(".npz").name)),
    # its weights: read by a forward pass on random input
    "graph-npz": Reader("graph-npz", _npz_file, lambda p: mutated_bytes(p.read_bytes(), head=512),
                        lambda p: ["infer", str(p.with_suffix(".json")), "--random"], lambda p: (p.name, p.with_suffix(".json").name)),
    "graph-npz-arrays": Reader("graph-npz-arrays", _npz_file, lambda p: mutated_npz(p.read_bytes()),
                               lambda p: ["infer", str(p.with_suffix(".json")), "--random"], lambda p: (p.name, p.with_suffix(".json").name)),
    ".tflite": Reader(".tflite", _tflite_file, lambda p: mutated_bytes(p.read_bytes(), edits=3, head=4096),
                      lambda p: ["show", str(p)]),
    ".npy": Reader(".npy", _npy_file, lambda p: mutated_bytes(p.read_bytes(), head=128), lambda p: ["infer", "lenet5", "--input", str(p)]),
    "profile": Reader("profile", _profile_file, lambda p: mutated_json(_json_of(p)),
                      lambda p: ["plan", "lenet5", "--devices", "rpi3:2", "--profile", str(p)]),
    "inventory": Reader("inventory", _inventory_file, lambda p: mutated_ini(p.read_text()),
                        lambda p: ["plan", "lenet5", "--inventory", str(p)]),
}
