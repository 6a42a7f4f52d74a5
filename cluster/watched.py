"""Bounded collectives for the commands whose ranks work in lock step outside the pipeline runtime
(`pisplit split`, `pisplit profile` under mpirun): no wait is without a bound, and the rank that did
not come is named in one line.

Every barrier, gather and agreement goes through transport's watched, point-to-point collectives
(gather_rows_watched / agree_watched: rank 0 names the ranks that did not arrive), and every transfer
wait through a transport.Watch (the split runner's Hooks.watch): a wait with no progress for the
stall bound pings the awaited peer and names it if it does not answer. A rank that computes answers
pings between its steps (`poll`), so only a stopped, hung or lost rank stays silent.

So that one line ends the job, rank 0 waits the bound and the others a margin more, staggered by
rank (rank 1 before rank 2 ...): the first to speak aborts the job before the next would. A rank
that dies is Open MPI's to report: it ends the job at once, naming the rank ("process rank N ...
exited on signal 9"). Faults for tests and demos: --fail RANK@POINT[:error|stop|kill], POINT 'load'
(before the setup agreement), 'start' (before the first barrier), 'end' (before the last gather) or
N, the command's N-th step (split: its N-th run, 0 the warm-up; profile: its N-th link round trip).
"""
from __future__ import annotations

import os
import socket
from typing import Callable

import numpy as np

from layers.errors import PisplitError

from . import transport
from .runtime import FAULT_AT_END, FAULT_AT_LOAD, FAULT_AT_START, inject_fault, parse_fault, slow_factor

DEFAULT_STALL_S = 20.0  # a single layer's part, a link test message: seconds on a Pi, well within this
STAGGER_S = 1.0  # a later rank's extra wait, so that the lowest rank that sees a stall speaks alone
FAULT_AT_EXIT = FAULT_AT_LOAD + 1  # --fail RANK@exit: after the job's last agreement, before MPI's shutdown
POINT_NAMES = {FAULT_AT_LOAD: "load", FAULT_AT_START: "start", FAULT_AT_END: "end", FAULT_AT_EXIT: "exit"}
EXIT_GRACE_S = 10.0  # MPI's shutdown bound when the command has no stall bound (--stall-timeout 0) or no CommandWatch
MIN_EXIT_GRACE_S = 3.0  # the least shutdown bound: MPI_Finalize of ranks that all reached the end takes well under a second


def exit_grace(stall_s: float | None) -> float:
    """How long MPI's shutdown may take after the job's last agreement (guard_exit): the command's
    stall bound (a wait with no progress that long is a stall, the end of the job included), at least
    MIN_EXIT_GRACE_S; EXIT_GRACE_S when there is no bound (None, or 0: never)."""
    if stall_s is None or not stall_s > 0:
        return EXIT_GRACE_S
    return max(float(stall_s), MIN_EXIT_GRACE_S)


def margin(bound: float) -> float:
    """What ranks other than 0 wait beyond the bound (rank 0 names a stall first)."""
    return max(2.0, 0.5 * bound)


class CommandWatch:
    """One rank's bounded collectives over `comm` (every rank makes one, with the same `seconds`;
    `seconds` <= 0: no bound). `step` names what the ranks are doing, for messages; `fail` is the
    parsed --fail (rank, point, mode) or None."""

    last_seconds: float | None = None  # the stall bound of this process's latest CommandWatch (guard_exit's default)

    def __init__(self, comm, seconds: float, fail: tuple | None = None, step_word: str = "step"):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.seconds = max(float(seconds), 0.0)
        CommandWatch.last_seconds = self.seconds
        self.liveness = transport.Liveness(comm) if self.size > 1 else None
        self.hosts: list | None = None
        self.fail = fail if fail is not None and int(fail[0]) == self.rank else None
        self.step_word = step_word
        self.step = -1

    # --- names and bounds ------------------------------------------------------------------------------
    def name(self, rank: int) -> str:
        host = self.hosts[rank] if self.hosts and 0 <= rank < len(self.hosts) else None
        return f"rank {rank} (host {host})" if host else f"rank {rank}"

    def follow_s(self) -> float:
        """Rank 0: 0; rank r: the margin and (r - 1) staggers more."""
        if self.seconds <= 0 or self.rank == 0:
            return 0.0
        return margin(self.seconds) + STAGGER_S * (self.rank - 1)

    def bound(self) -> float:
        return self.seconds + self.follow_s() if self.seconds > 0 else 0.0

    def poll(self) -> None:
        """Between compute steps: answer pings (this rank is alive, only busy)."""
        if self.liveness is not None:
            self.liveness.answer_pings()

    def watch(self, describe: Callable[[list, str], str]) -> transport.Watch:
        """A stall bound for transfer waits (split_exec.Hooks.watch); `describe(peers, label)` says what
        was awaited from whom."""
        return transport.Watch(self.bound(), describe, self.poll, self.liveness)

    # --- collectives -----------------------------------------------------------------------------------
    def agree(self, error: str | None, what: str, scale: float = 3.0) -> None:
        """transport.agree with a bound of `scale` stall bounds (loading takes longer than a step)."""
        seconds = scale * self.seconds
        transport.agree_watched(self.comm, error, what, seconds, self.name, follow_s=scale * self.follow_s())

    def learn_hosts(self) -> None:
        """Every rank's host name, for messages (right after an agreement; bounded as the agreements are:
        a rank that stops between them is named, where an MPI Allgather would wait for it forever)."""
        from .runtime import host_names_watched

        self.hosts = host_names_watched(self.comm, self.seconds) if self.size > 1 else [socket.gethostname()]

    def barrier(self, what: str) -> None:
        transport.gather_rows_watched(self.comm, np.zeros(0), what, self.seconds, self.liveness, self.name, follow_s=self.follow_s())

    def gather(self, row: np.ndarray, what: str) -> list | None:
        return transport.gather_rows_watched(self.comm, row, what, self.seconds, self.liveness, self.name, follow_s=self.follow_s())

    def finish(self, what: str = "the end of the job") -> None:
        """The job's last agreement: a bounded barrier (a rank stopped at the end is named), then
        --fail RANK@exit. Call on every rank before returning; see guard_exit for MPI's shutdown."""
        self.barrier(what)
        self.at(FAULT_AT_EXIT)

    def retire(self) -> None:
        if self.liveness is not None:
            self.liveness.retire()

    # --- faults ----------------------------------------------------------------------------------------
    def at(self, point: int) -> None:
        """--fail on this rank at `point` (FAULT_AT_* or a step number): error, stop or kill now."""
        if self.fail is None or int(self.fail[1]) != point:
            return
        rank, _, mode = self.fail
        self.fail = None
        where = POINT_NAMES.get(point, str(point))
        if mode == "error":
            what = {"load": "loading", "start": "the start", "end": "the end", "exit": "the exit"}.get(where, f"{self.step_word} {point}")
            raise PisplitError(f"injected fault at {what} (--fail {rank}@{where}:error)")
        inject_fault(rank, point, mode)


def parse_command_fault(text: str | None, size: int, points: tuple = ("load", "start", "end", "exit")):
    """--fail for a command run by CommandWatch: (rank, point, mode) or None; slow is for `pisplit run`."""
    at_exit = bool(text) and text.split(":")[0].endswith("@exit")
    fail = parse_fault(text.replace("@exit", "@end", 1) if at_exit else text)
    if fail is None:
        return None
    rank, point, mode = fail
    point = FAULT_AT_EXIT if at_exit else point
    if slow_factor(mode) is not None:
        raise PisplitError(f"--fail {text}: slow applies to pisplit run and emulate (frames streaming through a pipeline)")
    if point in POINT_NAMES and POINT_NAMES[point] not in points:
        raise PisplitError(f"--fail {text}: {POINT_NAMES[point]} is not a point of this command (points: {', '.join(points)} or a number)")
    if rank >= size:
        raise PisplitError(f"--fail {text}: this run has ranks 0-{size - 1}")
    return rank, point, mode


def bcast_text_watched(comm, text: str | None, what: str, seconds: float, name: Callable[[int], str] | None = None,
                       follow_s: float = 0.0) -> str:
    """Collective: rank 0's `text` on every rank with no wait unbounded (transport.bcast_text_watched),
    a rank above 1 waiting STAGGER_S more per rank so that one rank speaks."""
    follow_s += STAGGER_S * max(comm.Get_rank() - 1, 0)
    return transport.bcast_text_watched(comm, text, what, seconds, name, follow_s)


WATCHDOG = r"""
import os, sys, time
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
end = time.monotonic() + seconds
while time.monotonic() < end:
    if os.getppid() != pid:
        sys.exit(0)  # the rank has exited: MPI's shutdown ended in time
    time.sleep(0.1)
try:
    os.kill(pid, 0)
except OSError:
    sys.exit(0)
sys.stderr.write(message + chr(10))
sys.stderr.flush()
os.kill(pid, 9)
"""


def guard_exit(rank: int, seconds: float | None = None):
    """Bound MPI's shutdown on this rank: MPI_Finalize (at interpreter exit) waits for every rank, so
    a rank that stops or is lost after the job's last agreement (CommandWatch.finish) would keep this
    one waiting forever. A small watchdog process, started now, ends this rank if it is still alive
    `seconds` later, with one line ("rank 0 (host pi-0): MPI's shutdown did not end within 20.0 s
    ..."); Open MPI then ends the job, the stopped rank too. It leaves as soon as this rank exits.
    `seconds` None: exit_grace of the command's stall bound (its CommandWatch's, i.e. --stall-timeout).
    Call it once this rank's own work is done (its results written). Returns the watchdog's Popen."""
    import subprocess
    import sys

    if seconds is None:
        seconds = exit_grace(CommandWatch.last_seconds)
    seconds += STAGGER_S * 2 * rank  # rank 0 first: one line, then Open MPI ends the job (the stopped rank too)
    message = (f"pisplit: error: rank {rank} (host {socket.gethostname()}): MPI's shutdown (MPI_Finalize) did not end within "
               f"{seconds:.1f} s after the job's last agreement: a rank stopped or was lost at the very end; ending the job "
               "(this rank's results are written)")
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), repr(float(seconds)), message],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
