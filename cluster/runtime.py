"""The pipeline runtime: every rank runs its part of a Plan and frames stream through the stages.

Roles of a rank (all decided from the plan alone, so no rank needs to ask another):
- entry rank of a stage: the rank that receives a frame at the stage (the lead of a 'single' or
  'split' stage; for a 'data-parallel' stage, replica `frame % replicas`). It computes the frame and
  sends the tensors live at the stage's end to the next stage's entry rank for that frame.
- worker of a 'split' stage (not its lead): joins the stage's split segments for every frame.
- rank 0 is also the source (it makes or reads the input frames and hands each to the first stage)
  and the sink (it receives every result, in any order, and keeps them by frame id).

Transfers are non-blocking and buffer based: a frame travels as one float32 buffer whose first four
slots hold an int64 header [frame id, first-stage start time, emulated transfer end, its duration]
followed by the cut tensors in a fixed order. An entry rank keeps `window` receives posted ahead
(receiving frame i+1 while it computes frame i) and at most `window` sends outstanding (frame i-1
still leaving); a full send window blocks the rank, which is the pipeline's back pressure. Rank 0
admits at most `max_in_flight` frames that have not come back, so memory stays bounded.
"""
from __future__ import annotations

import logging
import math
import mmap
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from layers.allocator import reuse_freed_memory
from layers.engine import make_engine
from layers.errors import PisplitError
from layers.graph import Graph
from layers.ops import numel
from partitioners.cost import RUNTIME_WINDOW, SEND_OVERLAP_BYTES, frame_buffer_bytes, working_sets
from partitioners.plan import Plan, Stage
from partitioners.vocabulary import DATA_PARALLEL_MODE, NO_SPLIT, StageMode

from . import link_codecs, transport
from .emulation import ComputeDilation, CoreTokens, EmulatedDevice, LinkPacer, device_slowdown, drop_ended, hold_before_compute

log = logging.getLogger(__name__)

TAG_RESULT = 90
TAG_STAGE = 100  # + stage index: frames entering that stage

# trace event kinds (codes travel in float64 arrays to rank 0)
EVENT_NAMES = ("compute", "wait input", "send blocked", "link", "wait results", "split part")
COMPUTE, WAIT_INPUT, SEND_BLOCKED, LINK, WAIT_RESULTS, SPLIT_PART = range(len(EVENT_NAMES))
# a split stage's segment i: SEGMENT_EVENTS + 2 i for its compute, + 2 i + 1 for its transfers
SEGMENT_EVENTS = 100


def segment_event(code: int) -> tuple[int, str] | None:
    """(segment index, 'compute' or 'transfer') of a per-segment event code, else None."""
    if code < SEGMENT_EVENTS:
        return None
    index, what = divmod(code - SEGMENT_EVENTS, 2)
    return index, ("compute", "transfer")[what]


class FrameCodec:
    """Packs the named tensors of one frame into one float32 buffer behind an int64 header.

    The header is [frame_id, start_ns, end_ns, duration_ns] as int64 (8 float32 slots): the frame, when
    the first stage started it (wall clock, for latency), and an emulated link transfer's end and
    duration (0 when not emulating). Shapes are static
    (batch 1), so the receiver allocates the right buffer before anything arrives.
    """

    HEADER = 8  # float32 slots holding four int64

    def __init__(self, graph: Graph, names: list[str]):
        self.names = list(names)
        self.shapes = [graph.shapes[t] for t in self.names]
        # each tensor in its own dtype (int8 tensors of quantized models 1 byte a value, issue 12), at a
        # byte offset rounded up to 4 so float32 views stay aligned; offsets in float32 slots as before
        self.dtypes = [graph.dtype(t) for t in self.names]
        sizes = [-(-numel(s) * d.itemsize // 4) for s, d in zip(self.shapes, self.dtypes)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int) + self.HEADER
        self.length = int(self.offsets[-1])
        self.free: list[np.ndarray] = []  # buffers back from finished transfers, for the next frames

    def reserve(self, n: int) -> None:
        """Make `n` buffers now, written once so their pages are in: a rank's frame buffers are then
        allocated once, before its first frame, not between the frame's temporaries (where the heap
        would fragment around them)."""
        self.free.extend(np.zeros(self.length, np.float32) for _ in range(max(n - len(self.free), 0)))

    def release(self, buf: np.ndarray) -> None:
        """Hand back a buffer whose transfer has finished and whose tensors are no longer used."""
        self.free.append(buf)

    @property
    def payload_bytes(self) -> int:
        return (self.length - self.HEADER) * 4

    def empty(self) -> np.ndarray:
        return self.free.pop() if self.free else np.empty(self.length, np.float32)

    def pack(self, frame_id: int, tensors: Mapping[str, np.ndarray], start_ns: int = 0, end_ns: int = 0, duration_ns: int = 0) -> np.ndarray:
        buf = self.empty()
        buf[: self.HEADER].view(np.int64)[:] = (frame_id, start_ns, end_ns, duration_ns)
        for t, shape, dtype, a, b in zip(self.names, self.shapes, self.dtypes, self.offsets[:-1], self.offsets[1:]):
            arr = tensors[t]
            if arr.shape != shape:
                raise PisplitError(f"frame {frame_id}: tensor {t!r} has shape {arr.shape}, expected {shape}")
            if dtype == np.float32:
                buf[a:b] = arr.reshape(-1)
            else:
                buf[a:b].view(dtype)[: numel(shape)] = arr.reshape(-1)
        return buf

    @staticmethod
    def header(buf: np.ndarray) -> tuple[int, int, int, int]:
        """(frame_id, start_ns, end_ns, duration_ns)."""
        return tuple(int(v) for v in buf[: FrameCodec.HEADER].view(np.int64))

    def unpack(self, buf: np.ndarray) -> dict[str, np.ndarray]:
        return {t: (buf[a:b] if d == np.float32 else buf[a:b].view(d)[: numel(shape)]).reshape(shape)
                for t, shape, d, a, b in zip(self.names, self.shapes, self.dtypes, self.offsets[:-1], self.offsets[1:])}


# --- routing: pure functions of the plan --------------------------------------------------------------
def entry_rank(stage: Stage, frame: int) -> int:
    """The rank of `stage` that receives, computes and sends `frame`."""
    if stage.mode == DATA_PARALLEL_MODE:
        return stage.ranks[frame % len(stage.ranks)]
    return stage.ranks[0]


def frames_of(stage: Stage, rank: int, n_frames: int) -> range:
    """Frames `rank` handles as an entry rank of `stage` (all frames for a lead, every k-th for a
    replica), as a range: nothing per frame is held for a long stream."""
    if stage.mode == StageMode.DATA_PARALLEL:
        k, i = len(stage.ranks), stage.ranks.index(rank)
        return range(i, n_frames, k)
    return range(n_frames) if rank == stage.ranks[0] else range(0)


def synthetic_frame(graph: Graph, seed: int, frame: int, out: dict | None = None) -> dict[str, np.ndarray]:
    """Frame `frame` of the default input stream: uniform in [-1, 1), seeded by (seed, frame).
    Uniform, not normal: rank 0 makes one per frame, and a normal AlexNet frame took 1.3 ms of the
    first stage's 12 (uniform, 0.3 ms). With `out` (input name -> array) the frame is written there."""
    rng = np.random.default_rng([seed, frame])
    feeds = {}
    for name, shape in graph.inputs.items():
        want = graph.dtype(name)
        if want.kind != "f":  # a quantized input (int8 models): uniform over the integer type's range
            info = np.iinfo(want)
            x = rng.integers(info.min, info.max, shape, endpoint=True).astype(want)
            if out is not None:
                out[name][...] = x
                x = out[name]
            feeds[name] = x
            continue
        x = rng.random(shape, dtype=np.float32, out=out[name] if out is not None else None)
        x *= np.float32(2)
        x -= np.float32(1)
        feeds[name] = x
    return feeds


def _output_rank(graph: Graph):
    """Sort key of tensors: graph outputs in the model's order first, then the rest as they were."""
    order = {t: i for i, t in enumerate(graph.outputs)}
    return lambda t: order.get(t, len(order))


def shard_graph(graph: Graph, start: int, stop: int) -> Graph:
    """Nodes [start, stop) of `graph` as a graph of their own: inputs are the tensors live at cut
    `start`, outputs those live at cut `stop`; the weight mapping is shared (and lazy)."""
    inputs = {t: graph.shapes[t] for t in graph.cut_tensors(start)}
    return Graph(f"{graph.name}[{start}:{stop}]", inputs, graph.nodes[start:stop], graph.cut_tensors(stop), graph.weights, graph.meta)


def default_stall_timeout(plan: Plan) -> float:
    """Seconds a wait may see no progress before its peer is probed and, silent, named as stalled:
    a few seconds beyond the plan's timing, max(10 s, 20 predicted periods, 3 predicted latencies).
    Emulated devices run at the plan's (device) speed, so its periods hold there too; the first frame
    pays no warm-up inside the bound (shards warm up before the start barrier), and 3 latencies
    cover a frame's way through a cold pipeline."""
    period = 1.0 / plan.predicted_throughput_fps if plan.predicted_throughput_fps > 0 else 0.0
    latency = max(plan.predicted_latency_s, sum(s.predicted.compute_s + s.predicted.comm_s for s in plan.stages if s.predicted))
    return max(DEFAULT_MIN_STALL_S, 20.0 * period, 3.0 * latency)


DEFAULT_MIN_STALL_S = 10.0  # the default stall bound's floor (default_stall_timeout)


def stall_margin(bound: float) -> float:
    """Extra time for waits that only follow others: rank 0 waiting for results and a split stage's
    workers waiting for their lead both start waiting later than the rank next to a stall, which
    then speaks first (the ping protocol also keeps a live waiting peer from being named). Every wait
    of rank 0 gets it: when another rank sees the stall too, its notice reaches rank 0 first and the
    job ends with one line."""
    return max(2.0, 0.5 * bound)


def parse_fault(text: str | None) -> tuple[int, int, str] | None:
    """'RANK@FRAME[:kill|stop|error|slow[N]]' -> (rank, frame, mode) (default mode: error). FRAME may also be
    'start' (before the start barrier: FAULT_AT_START) or 'end' (before the final gather: FAULT_AT_END).
    slowN (N > 1, default 10: 'slow'): from that frame on the rank computes N times slower (slow_factor)."""
    if not text:
        return None
    head, _, mode = str(text).partition(":")
    rank, _, frame = head.partition("@")
    mode = mode or "error"
    try:
        r, f = int(rank), FAULT_POINTS[frame] if frame in FAULT_POINTS else int(frame)
    except ValueError:
        r = f = -1
    if r < 0 or f < 0 or (mode not in FAULT_MODES and slow_factor(mode) is None):
        raise PisplitError(f"--fail {text}: expected RANK@FRAME[:{'|'.join(FAULT_MODES)}[N]], e.g. 2@100:stop or 1@50:slow4")
    return r, f, mode


FAULT_MODES = ("error", "stop", "kill", "slow")
SLOW_DEFAULT = 10.0  # --fail R@F:slow: ten times slower
FAULT_AT_START, FAULT_AT_END = 1 << 62, (1 << 62) + 1  # --fail RANK@start / RANK@end (beyond any frame)
FAULT_AT_LOAD = FAULT_AT_START + 2  # --fail RANK@load: before the setup agreement (loading the model)
FAULT_POINTS = {"start": FAULT_AT_START, "end": FAULT_AT_END, "load": FAULT_AT_LOAD}


def slow_factor(mode: str) -> float | None:
    """'slow' -> 10.0, 'slow4' / 'slow2.5' -> the factor (> 1); None for any other mode."""
    if not str(mode).startswith("slow"):
        return None
    rest = str(mode)[4:]
    try:
        factor = float(rest) if rest else SLOW_DEFAULT
    except ValueError:
        return None
    return factor if math.isfinite(factor) and factor > 1 else None


class PaceWatch:
    """Whether this rank falls behind (a gray failure: alive, answering, but far slower than it was).

    Each frame's busy seconds (its compute, not its waits) are compared with its own pace: the median
    of its first `reference_frames` frames. A CUSUM of (busy - `factor` x reference), floored at 0,
    is how far it has fallen behind a pace `factor` times slower than its own; past `bound` seconds it
    is behind (`check` returns the one-line reason, once). Noise and brief slowdowns drain away (a
    frame at its normal pace takes (factor - 1) x reference off), and a rank whose whole compute is
    shorter than the bound can never be flagged; a rank under `factor` times slower never is."""

    def __init__(self, bound: float, factor: float = 2.0, reference_frames: int = 10):
        self.bound, self.factor, self.n_ref = float(bound), float(factor), int(reference_frames)
        self.first = np.zeros(self.n_ref)
        self.seen = 0
        self.reference = 0.0
        self.behind = 0.0
        self.since = -1  # the frame the lag began at (the CUSUM left 0)
        self.busy = 0.0  # busy seconds and frames since then
        self.frames = 0
        self.said = False

    def check(self, frame: int, busy: float) -> str | None:
        if self.bound <= 0 or self.said:
            return None
        if self.seen < self.n_ref:
            self.first[self.seen] = busy
            self.seen += 1
            if self.seen == self.n_ref:
                self.reference = float(np.median(self.first))
            return None
        self.behind = max(0.0, self.behind + busy - self.factor * self.reference)
        if self.behind == 0.0:
            self.since, self.busy, self.frames = -1, 0.0, 0
            return None
        if self.since < 0:
            self.since = frame
        self.busy += busy
        self.frames += 1
        if self.behind <= self.bound:
            return None
        self.said = True
        per = self.busy / self.frames
        return (f"falling behind: frames {self.since}-{frame} took {per / self.reference if self.reference else math.inf:.1f}x "
                f"its first {self.n_ref} frames' compute ({per * 1e3:.2f} ms a frame against {self.reference * 1e3:.2f} ms), "
                f"{self.behind:.1f} s behind a {self.factor:g}x slower pace, beyond the stall bound of {self.bound:g} s (slow)")


def inject_fault(rank: int, frame: int, mode: str) -> None:
    """What `--fail` does to this rank when it reaches `frame`: an error it meets alone (error), or the
    process stopped (stop: SIGSTOP, a hung Pi; it goes on if continued) or killed (kill: SIGKILL, a Pi
    that lost power); slow modes act where the rank computes (PipelineRank.slow), not here."""
    if slow_factor(mode) is not None:
        return
    if mode == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return  # continued (SIGCONT): a device that came back goes on
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    point = next((word for word, value in FAULT_POINTS.items() if value == frame), None)
    where = ("loading the model" if point == "load" else f"the {point} of the run") if point else f"frame {frame}"
    raise PisplitError(f"injected fault at {where} (--fail {rank}@{point or frame}:{mode})")


def default_max_in_flight(plan: Plan, window: int) -> int:
    """Frames admitted at once: enough to keep every replica and every link busy, and no more."""
    depth = sum(len(s.ranks) if s.mode == StageMode.DATA_PARALLEL else 1 for s in plan.stages)
    return depth + window * len(plan.stages)


# --- memory ------------------------------------------------------------------------------------------
def _status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc), else the peak so far."""
    return _status_bytes("VmRSS") or peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size since the process started or since `reset_peak_rss()`."""
    return _status_bytes("VmHWM") or int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_rss() -> bool:
    """Start a new peak measurement (Linux: 5 > /proc/self/clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def preload_model_code(plan: Plan, engine: str | None) -> None:
    """Code, not shard memory, imported before the baseline: a .tflite model's reader with its flatbuffer
    schema and the int8 kernels (10 MiB), LiteRT's interpreter for the litert engine (7 MiB more); after
    the baseline they counted as shard memory, and an int8 MobileNetV2 rank whose plan predicts 4.6 MiB
    measured 21 MiB before computing a frame (issue 12)."""
    if str(plan.model).lower().endswith(".tflite"):
        from layers import qkernels, tflite  # noqa: F401

        try:
            tflite.schema_module()
        except PisplitError:
            pass  # loading the model says so, on every rank
    if engine in ("litert", "auto"):
        try:
            from layers import tflite_engine  # noqa: F401
            from ai_edge_litert import interpreter  # noqa: F401
        except ImportError:
            pass  # the engine says so when it is made


def settle_baseline() -> int:
    """The interpreter's fixed memory before any shard: after numpy's BLAS has set up its buffers
    and numpy.random's extension modules are in (seeded weights and frames use them: 6 MiB, whatever
    the shard).

    BLAS packs blocks of up to about a thousand rows per thread into buffers of its own, touched as
    far as the largest product so far reached (2 MiB more for AlexNet's conv1 with two threads), so
    the product here is that large."""
    n = 1024
    with mmap.mmap(-1, 4 * n * n) as ma, mmap.mmap(-1, 4 * n * n) as mc:
        # operands outside the malloc heap: unmapped on close, not kept for the shard to reuse
        a = np.frombuffer(ma, np.float32).reshape(n, n)
        c = np.frombuffer(mc, np.float32).reshape(n, n)
        a.fill(1.0)
        np.matmul(a, a, out=c)
        del a, c
    rng = np.random.default_rng(0)
    rng.standard_normal(16, dtype=np.float32)
    rng.random(16, dtype=np.float32)
    rng.uniform(0, 1, 16)
    return current_rss_bytes()


# --- options and results -----------------------------------------------------------------------------
@dataclass
class RunOptions:
    """What to run: frames, their source, engine, emulation and how much to keep."""

    frames: int = 16
    inputs: np.ndarray | None = None  # rank 0: (F, *input shape) frames, used round-robin
    input_seed: int = 0  # random frames otherwise: synthetic_frame(graph, seed, frame)
    keep_outputs: bool = False
    engine: str | None = None  # None: the plan's engine
    emulate: bool = False
    emulate_links: bool = True  # with emulate: pace transfers to the plan's link; False: compute only, the real links carry the time
    host_speed: float | None = None  # emulation: this machine's seconds / the reference profile's (cluster.host_speed); None: cached or 1
    host_cores: int = os.cpu_count() or 1  # emulation: devices computing at once on this machine
    core_lock_dir: str | None = None  # emulation: where the per-core lock files live (shared by the ranks)
    window: int = RUNTIME_WINDOW
    max_in_flight: int | None = None
    progress: Callable[[int, int], None] | None = None  # rank 0: (frames done, frames total)
    on_start: Callable[[], None] | None = None  # rank 0: setup succeeded everywhere, frames start
    # rank 0, as frames start: the set-up's timeline (wall-clock times of its agreements, the slowest rank's weight load and
    # warm-up; run_plan's docstring), for a resilient run's recovery time (cluster.supervisor)
    on_started: Callable[[dict], None] | None = None
    stall_timeout: float | None = None  # seconds without progress before a peer is probed and named; None: default_stall_timeout, 0: off
    keep_events: bool = False  # keep trace events (for --trace), the most recent `event_capacity` per rank
    event_capacity: int = 20_000  # 0.6 MiB a rank; rank 0 holds every rank's at the end (about 5 MiB a rank as tuples)
    fail: tuple | None = None  # (rank, frame, mode): inject_fault on that rank at that frame (--fail)
    on_failure: Callable[["RunResult", BaseException], None] | None = None  # rank 0: the run failed; what it has (partial)
    frame_ids: np.ndarray | None = None  # frame i of this run is frame frame_ids[i] of the stream (its input); None: i
    on_result: Callable[[int, dict], None] | None = None  # rank 0: each result as it is taken (frame, tensors): a resilient run's journal
    exits: dict | None = None  # early-exit thresholds {output name: T} over the plan's exits (--exit NAME=T; cluster.exits)
    # issue 16: the emulated links replay this cluster.bandwidth.BandwidthTrace from the first frame on (link_bps then unused);
    # link_bps: the emulated links' bandwidth instead of the plan's (a run switching plans priced at other bandwidths)
    bandwidth_trace: object = None
    link_bps: float | None = None
    # frames come at this interval (a camera): the source admits the stream's frame i no earlier than i x interval after
    # `stream_start` (perf_counter; None: this run's start); 0: as fast as the pipeline takes them
    frame_interval_s: float = 0.0
    stream_start: float | None = None
    record_transfers: bool = False  # keep (end, bytes, seconds) of each frame this rank sends on its link (PipelineRank.transfers)
    on_slow: str = "warn"  # a rank falling behind (PaceWatch): "warn" (one line, the run goes on) or "fail" (its error: --resilient replans)
    # a single stage's warm-up passes stop once they took this long (_Step.warm_up); 0: one pass; negative: none (a
    # resilient retry: the first result waits on the warm-up, a whole frame's compute on a Pi; its first frame takes the
    # first-use costs instead). A split stage still times its steps alone (_warm_references: its emulated references)
    warm_up_budget_s: float = 3.0
    # issue 16, a run switching plans (cluster.switching): at the end of this rank's frames, more(rank) may give the run
    # more frames (PipelineRank.extend: its plan was kept at a boundary, nothing drains) and return True to go on with them
    more: Callable[["PipelineRank"], bool] | None = None


class EventLog:
    """Trace events (kind, frame, start_s, duration_s) of one rank: the most recent `capacity` of them
    in a float64 ring (0: none kept, only counted), so a long stream's records stay bounded."""

    def __init__(self, capacity: int):
        self.capacity = max(int(capacity), 0)
        self.ring = np.zeros((self.capacity, 4))
        self.count = 0

    def append(self, kind: int, frame: int, start: float, duration: float) -> None:
        if self.capacity:
            self.ring[self.count % self.capacity] = (kind, frame, start, duration)
        self.count += 1

    def array(self) -> np.ndarray:
        """The kept events, oldest first, as an (n, 4) array."""
        if self.count <= self.capacity:
            return self.ring[: self.count]
        if not self.capacity:
            return self.ring
        i = self.count % self.capacity
        return np.concatenate([self.ring[i:], self.ring[:i]])

    @property
    def dropped(self) -> int:
        return self.count - min(self.count, self.capacity)


MEMORY_SAMPLES = 64  # per rank over a run: (frame, resident bytes above baseline), for the slope


@dataclass
class RankStats:
    """What one rank measured."""

    rank: int
    stage: int
    frames: int = 0
    compute_s: float = 0.0
    comm_s: float = 0.0
    wait_s: float = 0.0
    late_s: float = 0.0
    link_busy_s: float = 0.0
    memory_baseline_bytes: int = 0
    memory_load_peak_bytes: int = 0
    memory_peak_bytes: int = 0
    memory_predicted_bytes: int = -1  # the plan's prediction for this rank's run (memory_prediction); -1: none
    events_dropped: int = 0  # trace events older than the kept ones (EventLog)
    events: list = field(default_factory=list)  # (kind, frame, start_s, duration_s), or an (n, 4) array
    memory_samples: list = field(default_factory=list)  # (frame, resident bytes) at up to MEMORY_SAMPLES points
    segment_s: list = field(default_factory=list)  # a split stage's lead: (compute, transfer) seconds per segment, all frames
    # an emulated device: how far behind its emulated clock it ended each frame's compute, summed over its frames
    # (late_s also counts lateness that later steps caught up; this is what was left at each frame's end)
    behind_s: float = 0.0

    FIELDS = ("rank", "stage", "frames", "compute_s", "comm_s", "wait_s", "late_s", "link_busy_s",
              "memory_baseline_bytes", "memory_load_peak_bytes", "memory_peak_bytes", "memory_predicted_bytes",
              "events_dropped", "behind_s")

    def to_array(self) -> np.ndarray:
        head = [float(getattr(self, f)) for f in self.FIELDS]
        return np.concatenate([np.array(head + [len(self.events)], np.float64),
                               np.asarray(self.events, np.float64).reshape(-1),
                               np.array([len(self.memory_samples)], np.float64),
                               np.asarray(self.memory_samples, np.float64).reshape(-1),
                               np.array([len(self.segment_s)], np.float64),
                               np.asarray(self.segment_s, np.float64).reshape(-1)])

    @classmethod
    def from_array(cls, arr: np.ndarray) -> "RankStats":
        n = len(cls.FIELDS)
        values = dict(zip(cls.FIELDS, arr[:n].tolist()))
        for f in ("rank", "stage", "frames", "memory_baseline_bytes", "memory_load_peak_bytes", "memory_peak_bytes",
                  "memory_predicted_bytes", "events_dropped"):
            values[f] = int(values[f])
        n_events = int(arr[n])
        at = n + 1 + 4 * n_events
        events = [(int(k), int(fr), s, d) for k, fr, s, d in arr[n + 1: at].reshape(-1, 4).tolist()]
        n_samples = int(arr[at]) if arr.size > at else 0
        samples = [(int(f), int(b)) for f, b in arr[at + 1: at + 1 + 2 * n_samples].reshape(-1, 2).tolist()]
        at += 1 + 2 * n_samples
        n_segments = int(arr[at]) if arr.size > at else 0
        segments = [tuple(v) for v in arr[at + 1: at + 1 + 2 * n_segments].reshape(-1, 2).tolist()]
        return cls(**values, events=events, memory_samples=samples, segment_s=segments)


@dataclass
class RunResult:
    """Rank 0's view of a finished run (other ranks get `None` fields except their own stats)."""

    ranks: list  # RankStats of every rank (rank 0) or just this rank's
    frame_ids: np.ndarray | None = None  # order in which results arrived
    outputs: dict | None = None  # tensor -> (frames, ...) in frame order
    argmax: np.ndarray | None = None  # first output's argmax per frame
    latency_s: np.ndarray | None = None  # per frame, first-stage start to result at rank 0
    done_s: np.ndarray | None = None  # per frame, result time since the run started
    wall_s: float = 0.0
    frames_total: int = 0  # frames the run was asked for
    missing_frame_ids: np.ndarray | None = None  # a partial result (the run failed): frames without a result
    output_frame_ids: np.ndarray | None = None  # a partial result: the frame of each row of `outputs` (and argmax, latency_s, done_s)
    exit_index: np.ndarray | None = None  # a run with early exits: per frame, the index in exit_names of the exit that answered it
    exit_names: tuple = ()

    @property
    def partial(self) -> bool:
        return self.missing_frame_ids is not None


# --- setup -------------------------------------------------------------------------------------------
def agree(comm, error: str | None) -> None:
    """Collective: if any rank has an error, every rank raises the lowest such rank's message as a
    transport.AgreedError (errors a rank meets alone are any other exception, and abort the job)."""
    transport.agree(comm, error)


def check_input_frames(graph: Graph, frames: np.ndarray) -> np.ndarray:
    """Input frames as (F, *input shape[1:]) float32; raises PisplitError naming the shapes."""
    if len(graph.inputs) != 1:
        raise PisplitError(f"model {graph.name}: has {len(graph.inputs)} inputs; --input feeds only single-input models")
    name, shape = next(iter(graph.inputs.items()))
    x = np.asarray(frames)
    if x.shape == tuple(shape[1:]):
        x = x[None]
    if x.ndim != len(shape) or x.shape[1:] != tuple(shape[1:]) or x.shape[0] < 1:
        raise PisplitError(f"input: shape {x.shape} does not match model input {name} {tuple(shape)} (frames stack on the batch axis)")
    return x.astype(np.float32, copy=False)


def stage_communicators(comm, plan: Plan, seconds: float = 0.0) -> dict:
    """Collective over `comm` (every rank, same order): one communicator per split stage over its
    ranks, ordered as the stage lists them (the lead is rank 0 of it). With `seconds` > 0 each
    MPI_Comm_split comes after a watched barrier (transport.split_communicator_watched): a rank that
    does not come within `seconds` is named, where a bare split would wait for it forever.

    Returns {stage index: communicator} for the split stage this rank is in (or {}).
    """
    rank = comm.Get_rank()
    mine = {}
    for stage in plan.stages:
        if stage.mode != StageMode.SPLIT:
            continue
        members = list(stage.ranks)
        color, key = (0 if rank in members else None), (members.index(rank) if rank in members else 0)
        if seconds > 0:
            sub = transport.split_communicator_watched(comm, color, key, f"stage {stage.index}'s communicator", seconds,
                                                       follow_s=stall_margin(seconds))
        else:
            sub = transport.split_communicator(comm, color, key)
        if sub is not None:
            mine[stage.index] = sub
    return mine


class _Step:
    """Runs this rank's share of its stage for one frame: one engine, or the stage's segments in order
    (unsplit ones on the lead, split ones through the split-kinds executor on the segment's ranks,
    each split segment's output gathered to the lead or kept on its parts for the next segment as
    its `output_layout` says: partitioners.layouts)."""

    def __init__(self, plan: Plan, graph: Graph, stage: Stage, rank: int, engine: str, communicators: dict, hooks=None):
        self.parts: list = []  # (kind, runner, tensors live after it): one per plan segment of a split stage
        self.record = None  # record(event code, perf_counter start, seconds): per-segment trace events
        self.link_bps = plan.link_bandwidth_bps if plan is not None else None
        self.link_latency_s = plan.link_latency_s if plan is not None else 0.0
        self.split = stage.mode == StageMode.SPLIT
        self.compute_s = self.comm_s = 0.0  # a split stage's time in compute steps and in transfers, so far
        self.warm_cpu: list = []  # CPU seconds of warm_up's whole-stage passes
        self.segment_s = np.zeros((len(stage.segments), 2)) if stage.mode == StageMode.SPLIT else None  # ... per segment
        self.is_lead = rank == stage.ranks[0]
        if not self.split:
            self.parts.append(("none", make_engine(shard_graph(graph, stage.node_start, stage.node_stop), engine), None))
            return
        from partitioners.layouts import check_kept_output
        from partitioners.splits import split_segment

        from .split_exec import PLAIN, SplitRunner  # the split-kinds executor (only split stages load it)

        self.hooks = hooks or PLAIN
        for i, segment in enumerate(stage.segments):
            if segment.output_layout == "parts":
                check_kept_output(graph, stage.segments, i)
        comm = communicators[stage.index]
        index = {r: i for i, r in enumerate(stage.ranks)}
        kept: dict = {}  # tensor -> its layout on the parts of the segment that kept it, while a later one reads it
        tag = 0
        for i, segment in enumerate(stage.segments):
            live_after = set(graph.cut_tensors(segment.node_stop))
            if segment.kind == NO_SPLIT:
                engine_ = make_engine(shard_graph(graph, segment.node_start, segment.node_stop), engine) if self.is_lead else None
                self.parts.append(("none", engine_, live_after))
                continue
            keep = segment.output_layout == "parts"
            split = split_segment(graph, segment.node_start, segment.node_stop, segment.kind, segment.sizes, segment.options)
            runner = SplitRunner(comm, split, engine, root=0, ranks=[index[r] for r in segment.ranks],
                                 sources={t: kept[t] for t in split.inputs if t in kept} or None, keep_output=keep,
                                 hooks=self.hooks, tag_base=tag)
            tag = runner.tag_end
            kept = {t: layout for t, layout in kept.items() if t in live_after}
            if keep:
                kept[split.output] = runner.output_layout
            self.parts.append((segment.kind, runner, live_after))

    def materialise(self) -> None:
        """Load the weights of the unsplit parts now, so the first frame does not pay for it."""
        for kind, runner, _ in self.parts:
            if kind == NO_SPLIT and runner is not None:
                for node in runner.graph.nodes:
                    runner.graph.node_weights(node)

    def warm_up(self, passes: int = 5, budget_s: float = 3.0) -> None:
        """Untimed passes on seeded random input until one is within 5% of the one before (at most
        `passes`, or `budget_s` seconds), so the first frames do not pay for first use (activation
        pages, the im2col buffer, BLAS's buffers, LiteRT's allocation): a pass here settles over 3-5
        runs (VGG16: 0.47, 0.41, 0.39, 0.37 s of CPU), and with time dilation a Pi 3 would pay the
        difference 8 times over. A split stage times each of its compute steps alone instead (its
        parts' transfers are collective): _warm_references."""
        self.warm_cpu = []
        if self.split:
            self._warm_references()
            return
        if budget_s < 0:
            return
        runner = self.parts[0][1]
        feeds = runner.graph.random_input(0)
        start, last = time.perf_counter(), None
        for _ in range(max(1, passes)):
            t = time.process_time()
            runner.run(feeds)
            seconds = time.process_time() - t
            self.warm_cpu.append(seconds)  # the last ones seed an emulated device's typical step (EmulatedDevice.calibrate)
            if (last is not None and seconds >= 0.95 * last) or time.perf_counter() - start > budget_s:
                break
            last = seconds

    def _warm_references(self, passes: int = 5) -> None:
        """A split stage's compute steps, each run alone on random input (no communication): their
        least CPU time is the warm reference an emulated device charges at most (EmulatedDevice),
        and what decides whether a strip's interior-first cut pays for its edges (keep_paying_overlaps)."""
        # split parts only: the lead's unsplit segments are charged as a single stage is (their
        # live CPU time; ResNet50's many small ones came out 15% under their calibration warm)
        steps = [step for kind, runner, _ in self.parts if kind != NO_SPLIT for step in runner.engines()]
        # in the stage's order, pass after pass, as a rank runs them (and as profiles time nodes):
        # one step repeated alone would keep its weights in cache and look faster than it runs
        # (the median pass of each step: the least of each would add up to a pass faster than any)
        feeds = [graph.random_input(0) for _, graph in steps]
        times: dict = {}
        for _ in range(passes):
            for (engine, _), x in zip(steps, feeds):
                t = time.process_time()
                engine.run(x)
                times.setdefault(id(engine), []).append(time.process_time() - t)
        warm = {key: float(np.median(seconds)) for key, seconds in times.items()}
        for engine, _ in steps:
            self.hooks.reference(engine, warm[id(engine)])
        self.keep_paying_overlaps(warm)

    def keep_paying_overlaps(self, warm: dict) -> None:
        """Drop the interior-first cut of a strip where its two extra edge runs cost more than the
        halo wait it hides: interior + edges + what of the halo outlasts the interior must beat the
        whole part + the halo (VGG16 on 4 Pi 3B+ at 94 Mbit/s: the edges cost about what the halos
        did, so the cut only pays on slower links). CPU seconds count as device seconds times the
        emulated slowdown; the halo at the plan's link."""
        if not self.link_bps:
            return
        scale = getattr(getattr(self.hooks, "dilation", None), "slowdown", 1.0)
        for kind, runner, _ in self.parts:
            plan = getattr(runner, "overlap", None)
            if kind == NO_SPLIT or plan is None:
                continue
            recvs = [m for transfer in runner.transfers for m, *_ in transfer.recvs]
            halo = sum(self.link_latency_s + m.nbytes * 8.0 / self.link_bps for m in recvs)
            pieces = [warm.get(id(engine), 0.0) * scale for engine, *_ in plan.pieces]
            interior = pieces[plan.interior]
            with_cut = sum(pieces) + max(halo - interior, 0.0)
            if with_cut >= warm.get(id(runner.engine), 0.0) * scale + halo:
                runner.overlap = None

    def run(self, tensors: dict) -> dict:
        """The frame's tensors live at the stage's end (on the lead; {} on the other ranks). A split
        stage's runners take an emulated device's core per compute step (hooks), so a rank waiting
        for its peers holds none; a single stage is one compute step for the caller to pace."""
        if not self.split:
            return self.parts[0][1].run(tensors)
        pieces: dict = {}  # what this rank holds of the tensors segments kept on their parts
        record = self.record
        for i, (kind, runner, live_after) in enumerate(self.parts):
            code = SEGMENT_EVENTS + 2 * i
            if kind == NO_SPLIT:
                if self.is_lead:
                    t = time.perf_counter()
                    tensors = self.hooks.compute(lambda: runner.run(tensors))
                    self.compute_s += time.perf_counter() - t
                    self.segment_s[i, 0] += time.perf_counter() - t
                    if record:
                        record(code, t, time.perf_counter() - t)
                continue
            inputs = {t: tensors[t] for t in runner.split.inputs if t in tensors} if self.is_lead else {}
            inputs.update({t: pieces[t] for t in runner.split.inputs if t in pieces})
            before = runner.times.to_array()
            t = time.perf_counter()
            y = runner.run(inputs)
            input_s, compute_s, output_s, post_s, _ = runner.times.to_array() - before
            self.compute_s += compute_s + post_s
            self.comm_s += input_s + output_s
            self.segment_s[i] += (compute_s + post_s, input_s + output_s)
            if record:  # the phases in their order (an overlapped strip's halo wait sits inside its compute)
                record(code + 1, t, input_s)
                record(code, t + input_s, compute_s)
                if output_s + post_s > 0:
                    record(code + 1, t + input_s + compute_s, output_s + post_s)
            pieces = {t: v for t, v in pieces.items() if t in live_after}
            if self.is_lead:
                tensors = {t: v for t, v in tensors.items() if t in live_after}
            if runner.keep_output:
                if y is not None:
                    pieces[runner.split.output] = y
            elif self.is_lead:
                tensors[runner.split.output] = y
        return tensors if self.is_lead else {}


def link_bytes(codec) -> int:
    """Bytes a frame packed by `codec` puts on the link: an encoded link's written bytes (of the frame it
    packed last), else the fixed payload."""
    return codec.sent_bytes if getattr(codec, "encoded", False) else codec.payload_bytes


def memory_prediction(plan: Plan, rank: int, graph: Graph | None = None, window: int = RUNTIME_WINDOW) -> int | None:
    """The plan's predicted memory for `rank`, if it has one. The plan counts the frame buffers of
    the default window (partitioners.cost.frame_buffer_bytes); with another `window` they are
    counted again at it."""
    stage = plan.stage_of_rank(rank)
    if stage.predicted is None or rank not in stage.predicted.memory_bytes:
        return None
    predicted = int(stage.predicted.memory_bytes[rank])
    if graph is not None and window != RUNTIME_WINDOW:
        cut = working_sets(graph)[0]
        replicas = len(stage.ranks) if stage.mode == StageMode.DATA_PARALLEL else 1
        args = (cut, stage.node_start, stage.node_stop, replicas, stage.mode == StageMode.DATA_PARALLEL or rank == stage.ranks[0], rank == stage.ranks[0])
        predicted = max(int(predicted + frame_buffer_bytes(*args, window=window) - frame_buffer_bytes(*args)), 0)
    return predicted


# --- the rank ----------------------------------------------------------------------------------------
class PipelineRank:
    """One rank of a running plan. `run()` processes every frame this rank has a part in.

    No wait is silent: a wait that makes no progress for the stall bound (RunOptions.stall_timeout)
    probes the rank it waits for and, if that rank does not answer, raises transport.StallError naming
    it, the frame and what was awaited (transport.StallClock); a failure mid-run reaches rank 0 first,
    which keeps the results it has (`on_failure`, transport's failure notices)."""

    def __init__(self, comm, plan: Plan, graph: Graph, options: RunOptions, baseline_bytes: int, communicators: dict,
                 hosts: list | None = None, shared: tuple | None = None):
        self.comm = comm
        self.plan = plan
        self.graph = graph
        self.options = options
        self.rank = comm.Get_rank()
        self.hosts = hosts or [None] * plan.n_ranks
        self.n_frames = int(options.frames)
        self.stage = plan.stage_of_rank(self.rank)
        self.stats = RankStats(self.rank, self.stage.index, memory_baseline_bytes=baseline_bytes)
        self.events = EventLog(options.event_capacity if options.keep_events else 0)
        self.window = max(1, int(options.window))
        predicted = memory_prediction(plan, self.rank, graph, self.window)
        self.stats.memory_predicted_bytes = -1 if predicted is None else predicted
        self.stall_s = default_stall_timeout(plan) if options.stall_timeout is None else max(float(options.stall_timeout), 0.0)
        self.liveness = transport.Liveness(comm) if comm.Get_size() > 1 else None
        self.running = False  # frames are flowing (after the start barrier): failures go through rank 0
        self.frame = -1  # the frame this rank is on, for messages
        self.fail = options.fail if options.fail and int(options.fail[0]) == self.rank else None
        self.slow = 1.0  # --fail R@F:slowN: from frame F this rank computes N times slower
        self.pace = PaceWatch(self.stall_s)  # falling behind its own pace beyond the stall bound: said or failed (options.on_slow)
        self.last = plan.stages[-1]
        # a link whose plan names a codec carries codec messages (cluster.link_codecs), else float32 values
        i = self.stage.index
        self.in_codec = link_codecs.frame_codec(graph, graph.cut_tensors(self.stage.node_start),
                                                plan.stages[i - 1].send_codec if i else plan.input_codec,
                                                f"stage {i - 1} -> stage {i}" if i else "source -> stage 0", FrameCodec)
        self.out_codec = link_codecs.frame_codec(graph, graph.cut_tensors(self.stage.node_stop), self.stage.send_codec,
                                                 f"stage {i} -> stage {i + 1}", FrameCodec)
        # results in the model's output order (output_0 is the model's first output)
        self.result_codec = FrameCodec(graph, sorted(graph.cut_tensors(plan.n_nodes), key=_output_rank(graph)))
        self.source_codec = link_codecs.frame_codec(graph, graph.cut_tensors(0), plan.input_codec, "source -> stage 0", FrameCodec)
        kind = plan.devices[self.rank].kind
        engine = options.engine or plan.engine
        host = options.host_speed or 1.0
        slowdown = device_slowdown(kind, engine) / plan.devices[self.rank].speed / host
        if options.emulate and any(graph.nodes[i].attrs.get("quantized") for i in range(self.stage.node_start, self.stage.node_stop)):
            from partitioners.profiles import int8_stage_dilation

            # this machine's speed on the stage's own nodes (int8 kernels gain unevenly by layer; cluster.host_speed)
            if shared is None and self.stage.mode != StageMode.SPLIT and options.host_speed:
                from .host_speed import emulation_pace, host_speed

                own = host_speed(plan.model, plan.model_seed, engine, measure=False, concurrency=plan.n_ranks,
                                 nodes=(self.stage.node_start, self.stage.node_stop), pace=emulation_pace(plan, engine))
                if own:
                    slowdown = slowdown * host / own

            # int8 layers: the host's int8 path gains more over float32 than a Pi's does (litert)
            slowdown *= int8_stage_dilation(kind, engine, graph, self.stage.node_start, self.stage.node_stop)
        if options.emulate:
            from partitioners.profiles import class_dilation

            # the device's per-op-class prices (litert): a split stage's parts dilate by its nodes' mix
            slowdown *= class_dilation(kind, engine, graph, self.stage.node_start, self.stage.node_stop)
        self.dilation = ComputeDilation(slowdown) if options.emulate else None
        self.link = (LinkPacer(options.link_bps or plan.link_bandwidth_bps, plan.link_latency_s, trace=options.bandwidth_trace)
                     if options.emulate and options.emulate_links else None)
        self.cores = CoreTokens(options.core_lock_dir, options.host_cores) if options.emulate else None
        # compute-only emulation: the device's messages leave unpaced (a link of no duration)
        self.device = EmulatedDevice(self.dilation, self.cores, self.link or LinkPacer(math.inf), self._poll) if options.emulate else None
        self.shared_device = shared is not None
        if shared is not None:  # issue 16, a run switching plans (cluster.switching): one emulated device and link per rank
            self.device, self.link = shared
            self.dilation, self.cores = (self.device.dilation, self.device.cores) if self.device else (None, None)
        self.transfers: list = []  # (end, bytes, seconds) per frame sent on the link, with options.record_transfers
        self.on_link: dict = {}  # emulated links: destination rank -> (end (time.time), bytes) of this rank's transfers to it still leaving
        self.deferred: list = []  # emulated links: outputs packed, handed to the link at this rank's next MPI call (_flush_sends)
        self.sending: dict = {}  # real links: id(request) -> (time handed to MPI, bytes) until the send completes
        self.my_frames = frames_of(self.stage, self.rank, self.n_frames)
        self.is_worker = self.stage.mode == StageMode.SPLIT and self.rank != self.stage.ranks[0]
        hooks = self.device
        if self.stage.mode == StageMode.SPLIT:
            from .split_exec import Hooks

            hooks = hooks or Hooks()
            follows = self.is_worker or self.rank == 0
            bound = self.stall_s + (stall_margin(self.stall_s) if follows and self.stall_s > 0 else 0.0)
            hooks.watch = transport.Watch(bound, self._describe_split_wait, self._check, self.liveness,
                                          world_rank=lambda p: self.stage.ranks[p])
        self.step = _Step(plan, graph, self.stage, self.rank, engine, communicators, hooks)
        self.exits = None  # early exits (cluster.exits): answers leave from the stage that is sure, later stages skip
        if plan.exits or options.exits:
            from .exits import ExitRouting, active_exits

            points = active_exits(plan, graph, options.exits)
            self.exits = ExitRouting(self, points) if points else None
        self.sends: list = []  # outstanding (request, buffer, codec, destination rank, frame)
        self.recvs: dict = {}  # frame -> (request, buffer)
        self.t0 = 0.0
        n_mine = self.n_frames if self.is_worker else len(self.my_frames)
        self.sample_every = max(1, math.ceil(n_mine / MEMORY_SAMPLES))
        if self.rank == 0:
            self._init_source_and_sink()
        self._reserve_frame_buffers()

    # --- naming what a wait is for -------------------------------------------------------------------
    def _name(self, rank: int) -> str:
        host = self.hosts[rank] if 0 <= rank < len(self.hosts) else None
        return f"rank {rank} (host {host})" if host else f"rank {rank}"

    def _describe_split_wait(self, peers: list, label: str) -> str:
        ranks = self.stage.ranks
        names = ", ".join(self._name(ranks[p]) for p in dict.fromkeys(peers)) or "its peers"
        what = f"'{label}' transfer" if label else "transfer"
        return f"no {what} of frame {self.frame} in split stage {self.stage.index} with {names}"

    def _describe_send(self) -> str:
        _, _, codec, dest, frame = self.sends[0]
        what = "result" if codec is self.result_codec and dest == 0 and self.stage.index == self.last.index else "output"
        return f"{what} of frame {frame} not taken by {self._name(dest)}"

    def _oldest_missing_result(self) -> int:
        while self.first_missing < self.n_frames and self.arrived[self.first_missing]:
            self.first_missing += 1
        return self.first_missing

    def _describe_results(self) -> str:
        f = self._oldest_missing_result()
        return f"no result of frame {f} from {self._name(entry_rank(self.last, f))}"

    def _check(self) -> None:
        """Between polls: answer pings; notices of failures elsewhere (transport.Liveness.check)."""
        if self.liveness is not None:
            self.liveness.check()

    def _reserve_frame_buffers(self) -> None:
        """This rank's frame buffers, made before anything else runs (what the plan counts for it:
        partitioners.cost.frame_buffer_bytes)."""
        held = self.window + 1
        if self.my_frames:
            if self.stage.index > 0 or self.rank != 0:
                self.in_codec.reserve(held)
            (self.result_codec if self.stage.index == self.last.index else self.out_codec).reserve(held)
        if self.rank == 0:
            # the replicas of the first stage that rank 0's frames go to (round-robin)
            remote = {entry_rank(self.first, f) for f in range(min(self.n_frames, len(self.first.ranks)))} - {0}
            self.source_codec.reserve(held * len(remote))
            self.result_codec.reserve(self.result_window)

    # --- rank 0: source and sink ---------------------------------------------------------------------
    def _init_source_and_sink(self) -> None:
        first = self.plan.stages[0]
        self.first = first
        self.injected = 0
        self.local_inputs: dict = {}  # frames the source has admitted for rank 0 itself (made when computed)
        self.source_sends: dict = {}  # replica -> requests of input frames still leaving for it
        self.local_buffers = {t: np.empty(s, np.float32) for t, s in self.graph.inputs.items()}
        self.source_buffers = None  # made with the first frame packed for a replica
        self.max_in_flight = self.options.max_in_flight or default_max_in_flight(self.plan, self.window)
        self.done = 0
        self.first_missing = 0
        # per frame, a few numbers and nothing else (about 33 bytes a frame), written now so that their
        # pages are in from the start: a long stream's memory is flat, not growing as frames arrive
        self.arrived = np.full(self.n_frames, False)
        self.frame_order = np.full(self.n_frames, -1, np.int64)
        self.latency = np.full(self.n_frames, 0.0)
        self.done_at = np.full(self.n_frames, 0.0)
        self.argmax = np.full(self.n_frames, 0, np.int64)
        self.outputs = None
        if self.options.keep_outputs:
            self.outputs = {t: np.empty((self.n_frames, *self.graph.shapes[t][1:]), np.float32) for t in self.result_codec.names}
        self.next_remote = self._next_remote_frame(0)  # the next frame whose result comes from another rank
        self.result_recvs: list = []  # (frame, request, buffer) in frame order
        self.result_window = self.window * (len(self.last.ranks) if self.last.mode == StageMode.DATA_PARALLEL else 1)

    def _next_remote_frame(self, f: int) -> int:
        while f < self.n_frames and entry_rank(self.last, f) == 0:
            f += 1
        return f

    def _source_frame(self, frame: int, local: bool = False) -> dict:
        if self.options.frame_ids is not None:  # a resilient run's retry: the stream's frames still missing
            frame = int(self.options.frame_ids[frame])
        name, shape = next(iter(self.graph.inputs.items())) if len(self.graph.inputs) == 1 else (None, None)
        if self.options.inputs is not None:
            x = self.options.inputs[frame % len(self.options.inputs)]
            return {name: x[None]}
        # two sets of buffers: the frame rank 0 computes itself, and the one it is packing for a
        # replica (which it may make while its own waits for an emulated core)
        if not local and self.source_buffers is None:
            self.source_buffers = {t: np.empty(s, np.float32) for t, s in self.graph.inputs.items()}
        return synthetic_frame(self.graph, self.options.input_seed, frame, self.local_buffers if local else self.source_buffers)

    def _inject(self) -> bool:
        """Admit frames while fewer than max_in_flight are out; True if any was admitted."""
        admitted = False
        while self.injected < self.n_frames and self.injected - self.done < self.max_in_flight:
            f = self.injected
            if self.options.frame_interval_s > 0 and time.perf_counter() < self._due(f):
                break  # the camera has not taken it yet
            target = entry_rank(self.first, f)
            if target == 0:
                self.local_inputs[f] = None  # admitted; made when rank 0 computes it (one frame held at a time)
            else:
                pending = self.source_sends.setdefault(target, [])
                while pending and transport.request_done(pending[0]):
                    pending.pop(0)
                if len(pending) > self.window or self._link_full(target):
                    break  # window + 1 frames already leaving for this replica (the plan counts as many)
                tensors = self._source_frame(f)
                # the input leaves over rank 0's link, which carries it while rank 0 goes on (partitioners.cost:
                # a transfer occupies the link, not the rank). An encoded input is dilated without polling
                # (_inject runs inside the poll)
                buf, end, _ = link_codecs.pack_for_link(self.source_codec, f, tensors, 0, self.link, self.device, poll=False)
                if self.link:
                    self.on_link.setdefault(target, deque()).append((end, link_bytes(self.source_codec)))
                request = transport.isend_buffer(self.comm, buf, target, TAG_STAGE + 0)
                self.sends.append((request, buf, self.source_codec, target, f))
                pending.append(request)
            self.injected += 1
            admitted = True
        return admitted

    def _due(self, f: int) -> float:
        """perf_counter time at which frame `f` of this run is taken (RunOptions.frame_interval_s)."""
        stream = int(self.options.frame_ids[f]) if self.options.frame_ids is not None else f
        start = self.options.stream_start if self.options.stream_start is not None else self.t0
        return start + stream * self.options.frame_interval_s

    def _record_transfer(self, codec, end: float, duration: float, request) -> None:
        """One frame sent on this rank's link, for bandwidth estimation (issue 16): an emulated link's
        transfer is what its pacer made it last; a real one's lasts until MPI completes the send (_poll)."""
        nbytes = link_bytes(codec)
        if self.link is not None:
            self.transfers.append((end, nbytes, duration))
        else:
            self.sending[id(request)] = (time.time(), nbytes)

    def restart(self, frame_ids: np.ndarray) -> None:
        """Issue 16, a run switching plans between frames (cluster.switching): run the stream's frames
        `frame_ids` next with this rank's engines (warm), emulated device and link as they are; the
        per-run state starts again, the statistics add up. Call run(warm=False) next."""
        self.options.frame_ids = np.asarray(frame_ids, np.int64)
        self.n_frames = len(self.options.frame_ids)
        self.my_frames = frames_of(self.stage, self.rank, self.n_frames)
        self.sends, self.recvs, self.frame = [], {}, -1
        if self.liveness is not None:
            self.liveness.probes.clear()  # pings the last segment cancelled when it retired
        if self.device is not None:
            self.device.poll = self._poll
        if self.rank == 0:
            self._init_source_and_sink()

    def extend(self, frame_ids: np.ndarray) -> None:
        """Issue 16: the stream's `frame_ids` follow this run's frames (cluster.switching keeps the plan at
        a boundary): called from options.more while the run is under way, the frames in flight go on."""
        more = np.asarray(frame_ids, np.int64)
        base = self.options.frame_ids if self.options.frame_ids is not None else np.arange(self.n_frames)
        old, self.n_frames = self.n_frames, self.n_frames + more.size
        self.options.frame_ids = self._with_room("frame_ids", np.asarray(base, np.int64), -1)
        self.options.frame_ids[old:] = more
        self.my_frames = frames_of(self.stage, self.rank, self.n_frames)
        if self.rank == 0:
            for name, fill in (("arrived", False), ("frame_order", -1), ("latency", 0.0), ("done_at", 0.0), ("argmax", 0)):
                setattr(self, name, self._with_room(name, getattr(self, name), fill))
            if self.outputs is not None:
                self.outputs = {t: self._with_room(("output", t), a, 0.0) for t, a in self.outputs.items()}
            self.next_remote = self._next_remote_frame(self.next_remote)

    def _with_room(self, key, a: np.ndarray, fill) -> np.ndarray:
        """A per-frame array `a` (rank 0's results, the frame ids) grown to n_frames rows (new ones `fill`): a view of a buffer that
        doubles when full, so a long run extended at every boundary copies each row a few times, not once a boundary."""
        room = self.__dict__.setdefault("_room", {})
        buf = room.get(key)
        if buf is None or a.base is not buf or buf.shape[0] < self.n_frames:
            buf = np.full((max(self.n_frames, 2 * a.shape[0]), *a.shape[1:]), fill, a.dtype)
            buf[: a.shape[0]] = a
            room[key] = buf
        return buf[: self.n_frames]

    def _frames(self):
        """This rank's frames (a split stage's worker: every frame) in order; at their end options.more may
        extend the run (issue 16) and they go on."""
        i = 0
        while True:
            mine = range(self.n_frames) if self.is_worker else self.my_frames
            while i < len(mine):
                yield mine[i]
                i += 1
            if self.deferred:
                self._flush_sends()
            if self.options.more is None or not self.options.more(self):
                return

    def await_request(self, request, what: str, peer: int) -> float:
        """Issue 16: wait for `request` (a message on another communicator, from `peer` of this one) while
        this rank's pipeline goes on, under its stall bound; returns the seconds waited."""
        return self._wait_until(lambda: transport.request_done(request), WAIT_INPUT, self.frame, waiting=lambda: (what, peer), follows=True)

    def _calibrate_device(self) -> None:
        """An emulated device running a whole stage (single or a data-parallel replica) takes its nodes'
        calibrated device time per frame, scaled by each frame's CPU time here over this rank's typical one
        (EmulatedDevice.calibrate, issue 18). Not for a split stage (its parts dilate by the measured host
        speed), a run with early exits (a frame's work depends on where it leaves) or a switching run's
        shared device."""
        if self.device is None or self.shared_device or self.step.split or self.exits is not None:
            return
        from partitioners.profiles import device_seconds

        engine = self.options.engine or self.plan.engine
        seconds = device_seconds(self.plan.devices[self.rank].kind, engine, self.graph, self.stage.node_start, self.stage.node_stop)
        self.device.calibrate(seconds / float(self.plan.devices[self.rank].speed or 1.0), self.step.warm_cpu[-2:])

    def _post_results(self) -> None:
        if self.exits is not None:
            return self.exits.post_sink(self)
        while len(self.result_recvs) < self.result_window and self.next_remote < self.n_frames:
            f = self.next_remote
            buf = self.result_codec.empty()
            src = entry_rank(self.last, f)
            self.result_recvs.append((f, transport.irecv_buffer(self.comm, buf, src, TAG_RESULT), buf))
            self.next_remote = self._next_remote_frame(f + 1)

    def _take_result(self, frame: int, tensors: dict, start_ns: int) -> None:
        if frame < 0 or frame >= self.n_frames or self.arrived[frame]:
            raise PisplitError(f"runtime: result for frame {frame} is unexpected or duplicated")
        now_ns = time.time_ns()
        self.arrived[frame] = True
        self.frame_order[self.done] = frame
        self.latency[frame] = (now_ns - start_ns) / 1e9
        self.done_at[frame] = time.perf_counter() - self.t0
        first = tensors[self.result_codec.names[0]]
        self.argmax[frame] = int(np.argmax(first.reshape(-1)))
        if self.outputs is not None:
            for t in self.result_codec.names:
                self.outputs[t][frame] = tensors[t][0]
        self.done += 1
        if self.options.on_result:
            self.options.on_result(frame, tensors)
        if self.options.progress:
            self.options.progress(self.done, self.n_frames)

    def _poll_sink(self) -> bool:
        if self.exits is not None:
            return self.exits.poll_sink(self)
        progressed = False
        while self.result_recvs and transport.request_done(self.result_recvs[0][1]):
            f, _, buf = self.result_recvs.pop(0)
            frame, start_ns, _, _ = FrameCodec.header(buf)
            if frame != f:
                raise PisplitError(f"runtime: expected the result of frame {f}, got frame {frame}")
            self._take_result(frame, self.result_codec.unpack(buf), start_ns)
            self.result_codec.release(buf)
            progressed = True
        self._post_results()
        return progressed

    # --- progress and waiting ------------------------------------------------------------------------
    def _poll(self) -> bool:
        """Advance everything non-blocking: finished sends, rank 0's sink and source; answer pings
        and look for failure notices (`_check`)."""
        progressed = False
        while self.sends and transport.request_done(self.sends[0][0]):
            request, buf, codec, _, _ = self.sends.pop(0)
            if self.sending and id(request) in self.sending:
                started, nbytes = self.sending.pop(id(request))
                now = time.time()
                self.transfers.append((now, nbytes, now - started))
            codec.release(buf)
            progressed = True
        if self.rank == 0:
            progressed |= self._poll_sink()
            progressed |= self._inject()
        if self.running:
            self._check()
        return progressed

    def _wait_until(self, ready: Callable[[], bool], kind: int, frame: int, deadline: float | None = None,
                    waiting: Callable[[], tuple] | None = None, follows: bool = False) -> float:
        """Poll until `ready()` (or perf_counter reaches `deadline`); sleeps a little between polls
        so waiting ranks leave the cores to computing ones. Returns seconds waited.

        `waiting()` -> (what is awaited, the rank it is awaited from) puts the wait under the stall
        bound (a wait that only `follows` others gets stall_margin more): no progress for that long
        and no answer from the rank to a ping raise transport.StallError naming both."""
        t = time.perf_counter()
        pause = 2e-5
        clock = None
        if waiting is not None and self.stall_s > 0:
            # rank 0 speaks last: another rank next to the stall names it first and rank 0, told, keeps its results
            follows = follows or self.rank == 0
            clock = transport.StallClock(self.stall_s + (stall_margin(self.stall_s) if follows else 0.0), self.liveness)
        while True:
            if self._poll() and clock is not None:
                clock.progressed()
            if ready() and (deadline is None or time.perf_counter() >= deadline):
                break
            if self.deferred:
                self._flush_sends()  # this rank waits in MPI calls: its earlier outputs move on (one that was ready at once did not)
            if clock is not None:
                what, peer = waiting()
                if clock.stalled(peer):
                    raise transport.StallError(f"{what} for {clock.waited:.1f} s {clock.verdict()}")
            now = time.perf_counter()
            step = pause if deadline is None else min(pause, max(deadline - now, 0.0))
            time.sleep(step)
            pause = min(pause * 2, 1e-3)
        waited = time.perf_counter() - t
        if waited > 1e-4:
            self.events.append(kind, frame, t - self.t0, waited)
        if self.device is not None:
            self.device.idle(waited)  # a wait, not the runtime's own time that a compute step takes in (EmulatedDevice.compute)
        return waited

    def _waiting_for_results(self) -> tuple:
        f = self._oldest_missing_result()
        return self._describe_results(), entry_rank(self.last, f) if f < self.n_frames else None

    def _waiting_for_send(self) -> tuple:
        return self._describe_send(), self.sends[0][3]

    def _waiting_at_end(self) -> tuple:
        if self.sends:
            return self._waiting_for_send()
        return self._waiting_for_results()

    # --- the entry rank's work -----------------------------------------------------------------------
    def _source_of(self, frame: int) -> int:
        if self.stage.index == 0:
            return 0
        return entry_rank(self.plan.stages[self.stage.index - 1], frame)

    def _post_inputs(self, upto: int) -> None:
        for f in self.my_frames[upto: upto + self.window]:
            if f in self.recvs or (self.rank == 0 and self.stage.index == 0):
                continue
            buf = self.in_codec.empty()
            self.recvs[f] = (transport.irecv_buffer(self.comm, buf, self._source_of(f), TAG_STAGE + self.stage.index), buf)

    def _receive(self, index: int, frame: int) -> tuple[dict, int, np.ndarray | None]:
        """The frame's tensors, its start time and the buffer they live in (for in_codec.release)."""
        if self.rank == 0 and self.stage.index == 0:
            self.stats.wait_s += self._wait_until(lambda: frame in self.local_inputs, WAIT_RESULTS, frame,
                                                  waiting=self._waiting_for_results, follows=True)
            del self.local_inputs[frame]
            return self._source_frame(frame, local=True), 0, None
        self._post_inputs(index)
        request, buf = self.recvs[frame]
        src = self._source_of(frame)
        what = f"no input of frame {frame} for stage {self.stage.index} from {self._name(src)}"
        # the first stage's frames come from rank 0, which admits them as results return: it follows
        self.stats.wait_s += self._wait_until(lambda: transport.request_done(request), WAIT_INPUT, frame,
                                              waiting=lambda: (what, src), follows=self.stage.index == 0)
        del self.recvs[frame]
        got, start_ns, end_ns, duration_ns = FrameCodec.header(buf)
        if got != frame:
            raise PisplitError(f"runtime: rank {self.rank} expected frame {frame}, received frame {got}")
        if self.exits is not None and self.exits.is_skip(buf):
            self._post_inputs(index + 1)
            return None, start_ns, buf  # answered at an earlier exit (a header only)
        if duration_ns:
            hold = self._arrival(end_ns / 1e9, duration_ns / 1e9) - time.time()
            if hold > 0:
                self.stats.comm_s += self._wait_until(lambda: True, LINK, frame, time.perf_counter() + hold)
        self._post_inputs(index + 1)
        return link_codecs.unpack_from_link(self.in_codec, buf, self.device), start_ns, buf

    def _send(self, frame: int, tensors: dict, start_ns: int) -> None:
        if self.exits is not None and self.exits.route(self, frame, tensors, start_ns):
            return  # answered to rank 0 here (an exit fired, or the last stage in a run with exits)
        if self.stage.index == len(self.plan.stages) - 1:
            if self.rank == 0:
                self._take_result(frame, tensors, start_ns)
                return
            buf = self.result_codec.pack(frame, tensors, start_ns)
            self.sends.append((transport.isend_buffer(self.comm, buf, 0, TAG_RESULT), buf, self.result_codec, 0, frame))
        else:
            nxt = self.plan.stages[self.stage.index + 1]
            dest = entry_rank(nxt, frame)
            if self.link:
                # an emulated link: packed now (the next compute reuses the output's buffers), handed to the link
                # at this rank's next MPI call (_flush_sends). The link then carries the frame while this rank
                # goes on (partitioners.cost: a transfer occupies the link), but no more than window + 1 of them
                # to one rank: the receiver posts `window` receives ahead, and an MPI send over TCP completes
                # once its bytes are out
                buf, _, _ = link_codecs.pack_for_link(self.out_codec, frame, tensors, start_ns, None, self.device)
                self.deferred.append((buf, dest, nxt.index, frame, link_bytes(self.out_codec), len(self.out_codec.names)))
                if self._link_full(dest):
                    hold = self.on_link[dest][0][0] - time.time()
                    self.stats.comm_s += self._wait_until(lambda: True, SEND_BLOCKED, frame, time.perf_counter() + hold)
            else:
                buf, end, duration = link_codecs.pack_for_link(self.out_codec, frame, tensors, start_ns, None, self.device)
                self.sends.append((transport.isend_buffer(self.comm, buf, dest, TAG_STAGE + nxt.index), buf, self.out_codec, dest, frame))
                if self.options.record_transfers:
                    self._record_transfer(self.out_codec, end, duration, self.sends[-1][0])
        if len(self.sends) > self.window:
            # back pressure: the oldest send must finish before this rank takes another frame
            limit = self.window
            self.stats.comm_s += self._wait_until(lambda: len(self.sends) <= limit, SEND_BLOCKED, frame, waiting=self._waiting_for_send)

    def _flush_sends(self) -> None:
        """An emulated link: the outputs this rank packed since its last MPI call leave now. Open MPI moves
        a message's bytes beyond its first fragment (64 KiB) only inside its sender's MPI calls (a Pi has no
        progress thread): an output sent just before a compute step, as a pipelined stage whose next input
        is in hand does, leaves after that step (the namespace cluster's AlexNet throughput plan had its
        frames 80 ms later than a link taking them at once: one 83 ms compute of its first stage)."""
        deferred, self.deferred = self.deferred, []
        for buf, dest, index, frame, nbytes, messages in deferred:
            end, duration = self.link.schedule(nbytes, messages)
            buf[: FrameCodec.HEADER].view(np.int64)[2:4] = (int(end * 1e9), int(duration * 1e9))
            self.sends.append((transport.isend_buffer(self.comm, buf, dest, TAG_STAGE + index), buf, self.out_codec, dest, frame))
            if self.options.record_transfers:
                self._record_transfer(self.out_codec, end, duration, self.sends[-1][0])
            self.on_link.setdefault(dest, deque()).append((end, nbytes))

    def _link_full(self, dest: int) -> bool:
        """An emulated link: whether window + 1 of this rank's transfers to `dest` are still leaving."""
        queue = self.on_link.get(dest)
        if not queue:
            return False
        drop_ended(queue, time.time())
        return len(queue) > self.window

    def _sends_left_at_compute(self) -> float:
        """An emulated link: seconds this rank must stay in MPI calls before it computes, for its transfers
        still leaving (emulation.hold_before_compute: a Pi has no MPI progress thread, so no more of a send
        moves while it computes than the kernel already holds)."""
        now = time.time()
        return hold_before_compute(self.link.free_at, self.on_link, now, lambda nbytes: self.link.seconds(nbytes, 0, start=now),
                                   SEND_OVERLAP_BYTES)

    def _arrival(self, end: float, duration: float) -> float:
        """Wall-clock time (time.time) a paced frame whose sender's link finishes it at `end` is in this
        rank's hands: its receive is posted ahead, so the frame is there when it has arrived, whatever
        this rank was doing, and arrivals serialise on this rank's interface (EmulatedDevice.received_at,
        which a split stage's transfers share): max(end, previous arrival + duration)."""
        holder = self.device if self.device is not None else self
        at = max(end, getattr(holder, "received_at", 0.0) + duration)
        holder.received_at = at
        return at

    def _compute(self, frame: int, tensors: dict) -> dict:
        if self.link and self.link.free_at > time.time():
            hold = self._sends_left_at_compute()
            if hold > 0 and self.deferred:
                # this rank stays in MPI calls first: the outputs it deferred move now too, and it computes
                # once no more than SEND_OVERLAP_BYTES of theirs are left either (each send is held once)
                self._flush_sends()
                hold = self._sends_left_at_compute()
            if hold > 0:
                self.stats.comm_s += self._wait_until(lambda: True, LINK, frame, time.perf_counter() + hold)
        t = time.perf_counter()
        if self.step.split:
            # a split stage's runners pace each compute step (holding no core while they wait for
            # their peers) and time their transfers apart from their compute
            if self.events.capacity:
                self.step.record = lambda code, start, seconds: self.events.append(code, frame, start - self.t0, seconds)
            compute0, comm0 = self.step.compute_s, self.step.comm_s
            out = self.step.run(tensors)
            self.stats.compute_s += self.step.compute_s - compute0
            self.stats.comm_s += self.step.comm_s - comm0
        elif self.device:
            out = self.device.compute(lambda: self.step.run(tensors), absorb=True)  # one compute step of the emulated device
        else:
            out = self.step.run(tensors)
        seconds = time.perf_counter() - t
        if self.device is not None:
            self.stats.behind_s += self.device.behind_at(time.perf_counter())  # the frame's compute ended this far behind
        if not self.step.split:
            self.stats.compute_s += seconds
        busy = self.step.compute_s - compute0 if self.step.split else seconds
        if self.slow > 1.0:  # an injected slow device: its compute takes `slow` times as long
            extra = (self.slow - 1.0) * busy
            time.sleep(extra)
            if self.device is not None:
                self.device.idle(extra)  # the injected slowness is the device's, not runtime time to take in
            busy += extra
            seconds += extra
            self.stats.compute_s += extra
        self.events.append(SPLIT_PART if self.is_worker else COMPUTE, frame, t - self.t0, seconds)
        if self.deferred:
            self._flush_sends()  # the step is over: this rank's MPI calls move its earlier outputs on
        behind = self.pace.check(frame, busy)
        if behind is not None:
            if self.options.on_slow == "fail":
                raise PisplitError(behind)  # this rank's alone: rank 0 keeps what it has, a resilient run replans without it
            print(f"pisplit: warning: {self._name(self.rank)}: {behind}; the run goes on", file=sys.stderr, flush=True)
        return out

    def _begin_frame(self, frame: int) -> None:
        self.frame = frame
        if self.fail is not None and frame >= int(self.fail[1]) and int(self.fail[1]) < FAULT_AT_START:
            rank, at, mode = self.fail
            self.fail = None
            if slow_factor(mode) is not None:
                self.slow = slow_factor(mode)
                return
            inject_fault(rank, frame, mode)

    def fault_at(self, point: int) -> None:
        """--fail RANK@start / RANK@end: this rank's fault before the start barrier / the final gather."""
        if self.fail is not None and int(self.fail[1]) == point:
            rank, at, mode = self.fail
            self.fail = None
            self.slow = slow_factor(mode) or 1.0
            inject_fault(rank, at, mode)

    def _end_frame(self, frame: int) -> None:
        self.stats.frames += 1
        if self.stats.frames % self.sample_every == 0:
            self.stats.memory_samples.append((frame, current_rss_bytes()))

    def run(self, warm: bool = True, timeline: dict | None = None) -> RankStats:
        """Process every frame this rank has a part in; returns this rank's measurements. `warm`
        False: the engines are warm already (a restarted rank, issue 16). `timeline` (rank 0): the
        set-up's times so far, completed at the start barrier and given to options.on_started."""
        load_s = warm_s = 0.0
        if warm:
            t = time.perf_counter()
            self.step.materialise()
            load_s = time.perf_counter() - t
            # the weights are in; from here the peak is the running shard's (loading may briefly need
            # more: a seeded weight is generated through a temporary of its own size)
            self.stats.memory_load_peak_bytes = peak_rss_bytes()
            self.step.warm_up(budget_s=self.options.warm_up_budget_s)
            warm_s = time.perf_counter() - t - load_s
            reset_peak_rss()
            self._calibrate_device()
        self.fault_at(FAULT_AT_START)
        # loading weights and warming up take longer than a frame: three stall bounds to arrive
        bound = 3.0 * self.stall_s
        rows = transport.gather_rows_watched(self.comm, np.array([load_s, warm_s]), "the start barrier", bound, self.liveness, self._name,
                                             follow_s=stall_margin(bound))
        self.running = True
        if self.rank == 0 and self.options.on_started:
            # the rank the start barrier waited for longest: its weight load and its warm-up
            slowest = max(rows, key=lambda r: float(r.sum()) if r.size == 2 else 0.0)
            self.options.on_started({**(timeline or {}), "started": time.time(), "weights_s": float(slowest[0]),
                                     "warm_up_s": float(slowest[1])})
        if self.rank == 0 and self.options.on_start:
            self.options.on_start()
        self.t0 = time.perf_counter()
        if self.device is not None:
            self.device.begin(self.t0)  # its clock takes in the runtime's time between steps from here (absorb)
        if self.link is not None and self.link.trace is not None and not self.link.epoch:
            self.link.epoch = time.time()  # a bandwidth trace starts with the first frame
        if self.rank == 0:
            self._inject()
            self._post_results()
        if self.is_worker:
            for f in self._frames():
                self._begin_frame(f)
                if self.exits is not None and self.exits.worker_skips(self, f):
                    continue
                self._compute(f, {})
                self._end_frame(f)
        else:
            self._post_inputs(0)
            for i, f in enumerate(self._frames()):
                self._begin_frame(f)
                tensors, start_ns, buf = self._receive(i, f)
                if self.exits is not None and self.exits.arrived(self, f, buf, start_ns):
                    self.in_codec.release(buf)
                    continue
                if self.stage.index == 0:
                    start_ns = time.time_ns()
                out = self._compute(f, tensors)
                self._send(f, out, start_ns)  # packs a copy: `out` may be a view of `buf`
                if buf is not None:
                    self.in_codec.release(buf)
                self._end_frame(f)
        self.stats.comm_s += self._wait_until(lambda: not self.sends and (self.rank != 0 or self.done == self.n_frames), WAIT_RESULTS, -1,
                                              waiting=self._waiting_at_end, follows=not self.sends)
        self.running = False
        if self.liveness is not None:
            self.liveness.retire()
        self.wall_s = time.perf_counter() - self.t0
        self.stats.late_s = self.dilation.late_s if self.dilation else 0.0
        self.stats.link_busy_s = self.link.busy_s if self.link else 0.0
        self.stats.memory_peak_bytes = max(peak_rss_bytes(), current_rss_bytes())
        self.stats.events = self.events.array()
        self.stats.events_dropped = self.events.dropped
        if getattr(self.step, "segment_s", None) is not None:
            self.stats.segment_s = [tuple(v) for v in self.step.segment_s.tolist()]
        return self.stats

    def on_failure(self, exc: BaseException) -> None:
        """This rank failed alone mid-run (called by transport.on_every_rank after printing the error,
        before aborting the job). Rank 0 tells every rank it is ending the job and hands what it has to
        `options.on_failure`; another rank tells rank 0 and waits for it to end the job."""
        if not self.running:
            return
        if self.rank != 0:
            if not isinstance(exc, transport.PeerFailed):
                transport.notify_rank_0(self.comm, f"rank {self.rank}: {transport.describe_error(exc)}", liveness=self.liveness)
            else:
                time.sleep(transport.FINISH_GRACE_S)  # rank 0 is ending the job
            return
        if self.liveness is not None:
            transport.acknowledge_all(self.comm)
            # results already on their way (a failing rank sent them before its notice) are kept too
            end = time.perf_counter() + 0.1
            try:
                while time.perf_counter() < end and self.result_recvs:
                    self._poll_sink()
                    time.sleep(1e-3)
            except Exception:  # noqa: BLE001 - keep what arrived before whatever went wrong
                pass
        if self.options.on_failure:
            self.options.on_failure(self.partial_result(), exc)

    def partial_result(self) -> RunResult:
        """Rank 0: the results that arrived before the run failed, by frame."""
        delivered = np.flatnonzero(self.arrived)
        stats = self.stats
        stats.events, stats.events_dropped = self.events.array(), self.events.dropped
        return RunResult(ranks=[stats], frame_ids=self.frame_order[: self.done].copy(),
                         outputs={t: a[delivered] for t, a in self.outputs.items()} if self.outputs is not None else None,
                         argmax=self.argmax[delivered], latency_s=self.latency[delivered], done_s=self.done_at[delivered],
                         wall_s=time.perf_counter() - self.t0, frames_total=self.n_frames,
                         missing_frame_ids=np.flatnonzero(~self.arrived), output_frame_ids=delivered)

    def result(self, all_stats: list) -> RunResult:
        if self.rank != 0:
            return RunResult(ranks=all_stats, frames_total=self.n_frames)
        result = RunResult(ranks=all_stats, frame_ids=self.frame_order[: self.done], outputs=self.outputs,
                           argmax=self.argmax, latency_s=self.latency, done_s=self.done_at, wall_s=self.wall_s,
                           frames_total=self.n_frames)
        if self.exits is not None:
            self.exits.annotate(result)
        return result


def run_plan(comm, plan: Plan, options: RunOptions, load_graph: Callable[[], Graph] | None = None) -> RunResult:
    """Collective over `comm`: run `plan` for `options.frames` frames. Setup errors on any rank raise
    the same PisplitError on every rank (no rank is left waiting); rank 0's result holds everything.
    An error a rank meets alone during the run (a stall included) carries the rank's `on_failure`
    for transport.on_every_rank, which runs it before aborting the job. As frames start, rank 0's
    `options.on_started` gets the set-up's timeline: wall-clock times (time.time()) of the end of
    loading ('loaded'), of the shards' set-up ('set_up') and of the start barrier ('started'), and the
    weight load and warm-up seconds of the rank the start barrier waited for longest ('weights_s', 'warm_up_s')."""
    reuse_freed_memory()
    if any(stage.mode == StageMode.SPLIT for stage in plan.stages):
        # code, not shard memory: imported before the baseline (after it, it counted as ~1.4 MB of shard)
        from . import overlap, split_exec  # noqa: F401
    preload_model_code(plan, options.engine or plan.engine)
    baseline = settle_baseline()
    reset_peak_rss()  # the settling's own transients are not the shard's
    error = None
    graph = None
    # setup (loading, building engines) takes longer than a frame: three stall bounds, as the start barrier
    setup_s = 3.0 * (default_stall_timeout(plan) if options.stall_timeout is None else max(float(options.stall_timeout), 0.0))
    if options.fail is not None and int(options.fail[0]) == comm.Get_rank() and int(options.fail[1]) == FAULT_AT_LOAD:
        inject_fault(int(options.fail[0]), FAULT_AT_LOAD, options.fail[2])
    if comm.Get_size() != plan.n_ranks:
        error = f"plan for {plan.model}: needs {plan.n_ranks} ranks, this run has {comm.Get_size()} (mpirun -n {plan.n_ranks})"
    elif options.frames < 1:
        error = f"--frames {options.frames}: must be at least 1"
    elif options.fail is not None and not 0 <= int(options.fail[0]) < plan.n_ranks:
        error = f"--fail {options.fail[0]}@...: the plan has ranks 0-{plan.n_ranks - 1}"
    else:
        try:
            graph = load_graph() if load_graph else _load_plan_model(plan)
            if comm.Get_rank() == 0 and options.inputs is not None:
                options.inputs = check_input_frames(graph, options.inputs)
        except PisplitError as exc:
            error = str(exc)
    transport.agree_watched(comm, error, "the end of loading", setup_s, follow_s=stall_margin(setup_s))
    timeline = {"loaded": time.time()}
    communicators = stage_communicators(comm, plan, setup_s)
    hosts = host_names_watched(comm, setup_s)
    made_lock_dir = None
    if options.emulate and options.core_lock_dir is None:
        made_lock_dir = tempfile.mkdtemp(prefix="pisplit-cores-") if comm.Get_rank() == 0 else None
        options.core_lock_dir = transport.bcast_text_watched(comm, made_lock_dir, "the lock folder's broadcast", setup_s,
                                                             lambda r: f"rank {r} (host {hosts[r]})", follow_s=stall_margin(setup_s))
        if not os.path.isdir(options.core_lock_dir):  # a rank on another machine: its cores, its own directory
            os.makedirs(options.core_lock_dir, mode=0o700, exist_ok=True)
            made_lock_dir = options.core_lock_dir
    rank = None
    try:
        rank = PipelineRank(comm, plan, graph, options, baseline, communicators, hosts)
    except PisplitError as exc:
        error = f"rank {comm.Get_rank()}: {exc}"
    transport.agree_watched(comm, error, "the end of the shards' set-up", setup_s, lambda r: f"rank {r} (host {hosts[r]})",
                            follow_s=stall_margin(setup_s))
    timeline["set_up"] = time.time()
    try:
        stats = rank.run(timeline=timeline)
    except transport.AgreedError:
        raise
    except Exception as exc:
        transport.attach_failure_handler(exc, rank.on_failure)
        raise
    rank.fault_at(FAULT_AT_END)
    liveness = transport.Liveness(comm) if comm.Get_size() > 1 else None
    try:
        rows = transport.gather_rows_watched(comm, stats.to_array(), "the final statistics gather", rank.stall_s, liveness,
                                             rank._name, follow_s=stall_margin(rank.stall_s))
    except Exception as exc:
        if comm.Get_rank() == 0 and options.on_failure is not None:
            # every result is in: keep them (written as a partial run with no frame missing)
            transport.attach_failure_handler(exc, lambda e: options.on_failure(rank.partial_result(), e))
        raise
    finally:
        if liveness is not None:
            liveness.retire()
    stats.events = []  # sent; rank 0 has them now
    all_stats = [RankStats.from_array(r) for r in rows] if rows is not None else [stats]
    if made_lock_dir:
        shutil.rmtree(made_lock_dir, ignore_errors=True)
    return rank.result(all_stats)


def host_names_watched(comm, seconds: float) -> list[str]:
    """Collective: every rank's host name (up to 64 bytes), in rank order, on every rank, with no wait
    unbounded (transport.host_names is an Allgather: a rank that never came kept the others waiting):
    the names go to rank 0 under gather_rows_watched and back under bcast_text_watched, a rank that
    does not come within `seconds` (<= 0: no bound) named as at any watched collective."""
    name = socket.gethostname().encode()[:64]
    rows = transport.gather_rows_watched(comm, np.frombuffer(name, np.uint8).astype(np.float64), "the host names' gather", seconds,
                                         follow_s=stall_margin(seconds))
    text = "\n".join(bytes(r.astype(np.uint8)).decode(errors="replace") for r in rows) if rows is not None else None
    return transport.bcast_text_watched(comm, text, "the host names' broadcast", seconds, follow_s=stall_margin(seconds)).split("\n")


def _load_plan_model(plan: Plan) -> Graph:
    from layers import load_model

    graph = load_model(plan.model, seed=plan.model_seed)
    if len(graph) != plan.n_nodes:
        raise PisplitError(f"plan for {plan.model}: covers {plan.n_nodes} nodes, the model has {len(graph)}")
    return graph
