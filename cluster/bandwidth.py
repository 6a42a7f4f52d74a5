"""Bandwidth over time (issue 16, Edgent's Algorithm 3): trace files, an estimator from the runtime's
own transfers, a state detector with hysteresis, and the runtime optimizer that picks the
configuration map's strategy for the detected state (`MapChooser`: the same as the index of a plan,
for cluster.switching, which runs a map's plans and measures the transfers). Pure: no MPI, no clocks
(the caller passes bytes and seconds it measured).

Trace files (`read_trace`, `write_trace`): CSV, one header line `time_s,mbit_per_s`, then one row per
change: the time in seconds from the start (the first row at 0, strictly increasing) and the
bandwidth in Mbit/s (positive, finite) from that time until the next row's (the last row for the
median interval between rows; past the end a trace repeats). Lines starting with '#'
are comments. A bad row is refused with its line number, in one line.

Public logs (`read_throughput_log`; `load_trace`, what --bandwidth-trace reads, takes either): the 4G/LTE bandwidth logs of van der Hooft et al. (IEEE Comm.
Letters 20(11), 2016; https://users.ugent.be/~jvdrhoof/dataset-4g/ - the logs Edgent replayed) and
Riiser et al.'s 3G/HSDPA logs (MMSys 2013) share one format: whitespace-separated columns (1) a
timestamp, (2) milliseconds since the start, (3, 4) GPS latitude and longitude, (5) bytes received
since the previous line, (6) milliseconds since the previous line; column 5 / column 6 is the
throughput of that interval. Read as a trace, row i lasts from column 2's time (less its interval) on.

Estimator (`HarmonicEstimator`): each transfer the runtime makes (bytes, seconds on the link less the
per-message latency) is one sample of bits/second; the estimate is the harmonic mean of the last
`window` samples. The harmonic mean is what FESTIVE (Jiang, Sekar, Zhang, CoNEXT 2012, section 5: the
last 20 chunks) and MPC (Yin, Jindal, Sekar, Sinopoli, SIGCOMM 2015, section 5: the last 5 chunks)
use for throughput prediction: one fast outlier moves it little, a slow sample (the case that
breaks a latency requirement) a lot. Transfers below `min_bytes` are not samples (their time is
mostly latency).

Detector (`StateDetector`): the states are the configuration map's bandwidths s_1 < ... < s_N; the
nominal state of a bandwidth b is the largest s_i <= b (s_1 below every state). With margin m, the
detector moves up to state j only when b / (1 + m) >= s_j and down from state i only when
b < s_i x (1 - m), and only after the same direction held for `up_patience` / `down_patience`
consecutive estimates; so an estimate wandering within +-m of a state boundary never flaps. The
default m = 0.25 keeps +-30% noise per transfer around a boundary, through a 5-sample harmonic mean,
from switching at all (30 seeds x 3000 transfers at 2 Mbit/s; m = 0.1 switched 37 to 53 times a
run, m = 0.2 up to 3; tests/cluster/test_bandwidth.py). Drops
are confirmed sooner than rises by default (a slow link breaks the requirement; a fast one only
wastes some accuracy). `down_margin` (default: m) sets the drop's margin apart: a state's strategy is
priced at s_i, so below s_i it may miss the requirement; down_margin 0 drops as soon as b < s_i,
trading flaps for met requirements (scripts/bench_edgent --down-margin shows both; with +-30% noise
per transfer at means 1.7 to 2.6 Mbit/s, 30 seeds x 3000 transfers each: m = down_margin = 0.25 changed
state at most once a run, down_margin 0.1 up to 18 times, 0 up to 57). A map run's chooser (MapChooser)
drops with MAP_DOWN_MARGIN = 0.1: its plans are priced at their state's bandwidth, and with 0.25 a plan kept
running 25% below it (bench_edgent's scaled model, the host's part offloaded over lte_a.csv at 150 ms:
97.3% of frames in time predicted, 87.9% measured on 60 s of it; 0.1: 99.4% predicted).
"""
from __future__ import annotations

import csv
import math
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layers.errors import PisplitError

TRACE_HEADER = ("time_s", "mbit_per_s")


# --- traces ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandwidthTrace:
    """A piecewise-constant bandwidth: `mbit_per_s[i]` from `time_s[i]` until `time_s[i + 1]` (the last
    until `duration_s`)."""

    time_s: np.ndarray
    mbit_per_s: np.ndarray
    duration_s: float
    source: str = ""

    def __post_init__(self):
        t, b = np.asarray(self.time_s, np.float64), np.asarray(self.mbit_per_s, np.float64)
        if t.ndim != 1 or t.shape != b.shape or t.size == 0:
            raise PisplitError(f"bandwidth trace {self.source}: needs one bandwidth per time, at least one row")
        if t[0] != 0 or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(b)) or np.any(b <= 0):
            raise PisplitError(f"bandwidth trace {self.source}: times must start at 0 and increase, bandwidths be positive")
        if not self.duration_s > t[-1]:
            raise PisplitError(f"bandwidth trace {self.source}: duration {self.duration_s} must be after the last row's time")

    def bps_at(self, t) -> np.ndarray | float:
        """Bandwidth in bit/s at time(s) `t` (seconds from the start; past the end the trace repeats)."""
        tt = np.mod(np.asarray(t, np.float64), self.duration_s)
        out = np.asarray(self.mbit_per_s)[np.searchsorted(self.time_s, tt, side="right") - 1] * 1e6
        return float(out) if np.ndim(out) == 0 else out

    def transfer_end(self, start_s: float, nbytes: float) -> float:
        """When a transfer of `nbytes` handed to the link at `start_s` (seconds from the trace's start)
        ends, the bits served at each piece's rate in turn (exact, not the start's rate throughout):
        what a paced link replaying the trace needs (LinkPacer's hook, the report of issue 16)."""
        bits = float(nbytes) * 8.0
        if bits <= 0:
            return float(start_s)
        period = self.duration_s
        laps, t = divmod(float(start_s), period)
        edges = np.append(self.time_s, period)
        i = int(np.searchsorted(self.time_s, t, side="right")) - 1
        while True:
            rate = float(self.mbit_per_s[i]) * 1e6
            room = (edges[i + 1] - t) * rate
            if bits <= room:
                return laps * period + t + bits / rate
            bits -= room
            i += 1
            if i == len(self.time_s):
                i, laps = 0, laps + 1
            t = float(edges[i])

    def mean_mbit(self) -> float:
        """Time-weighted mean bandwidth in Mbit/s."""
        edges = np.append(self.time_s, self.duration_s)
        return float(np.sum(np.diff(edges) * self.mbit_per_s) / self.duration_s)


def _row_error(path, line: int, reason: str) -> PisplitError:
    return PisplitError(f"bandwidth trace {path}: line {line}: {reason}")


def read_trace(path: str | Path) -> BandwidthTrace:
    """A trace file (module docstring); PisplitError naming the file and the line of the first bad row."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PisplitError(f"bandwidth trace {path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    times, rates = [], []
    header_seen = False
    for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in row]
        if not header_seen:
            if tuple(fields) != TRACE_HEADER:
                raise _row_error(path, line_no, f"expected the header {','.join(TRACE_HEADER)}, got {','.join(fields)[:60]!r}")
            header_seen = True
            continue
        if len(fields) != 2:
            raise _row_error(path, line_no, f"expected 2 fields (time_s, mbit_per_s), got {len(fields)}")
        try:
            t, b = float(fields[0]), float(fields[1])
        except ValueError:
            raise _row_error(path, line_no, f"{','.join(fields)[:60]!r} is not two numbers") from None
        if not math.isfinite(t) or t < 0:
            raise _row_error(path, line_no, f"time {fields[0]} must be a finite number of seconds >= 0")
        if not times and t != 0:
            raise _row_error(path, line_no, f"the first row must be at time 0, not {fields[0]}")
        if times and t <= times[-1]:
            raise _row_error(path, line_no, f"time {fields[0]} is not after the previous row's {times[-1]:g}")
        if not math.isfinite(b) or b <= 0:
            raise _row_error(path, line_no, f"bandwidth {fields[1]} Mbit/s must be positive and finite")
        times.append(t)
        rates.append(b)
    if not header_seen:
        raise PisplitError(f"bandwidth trace {path}: empty (expected the header {','.join(TRACE_HEADER)} and rows)")
    if not times:
        raise PisplitError(f"bandwidth trace {path}: no rows after the header")
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    return BandwidthTrace(np.array(times), np.array(rates), times[-1] + step, str(path))


def write_trace(path: str | Path, trace: BandwidthTrace, comments=()) -> Path:
    """Write `trace` as a trace file (3 decimals of seconds and Mbit/s), `comments` as '#' lines first."""
    path = Path(path)
    lines = [f"# {c}" for c in comments] + [",".join(TRACE_HEADER)]
    lines += [f"{t:.3f},{b:.3f}" for t, b in zip(trace.time_s, trace.mbit_per_s)]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_throughput_log(path: str | Path, floor_mbit: float = 0.01) -> BandwidthTrace:
    """A 4G/LTE (van der Hooft et al.) or 3G/HSDPA (Riiser et al.) log as a trace (module docstring).

    An interval that received nothing becomes `floor_mbit` (a trace's bandwidth is positive)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PisplitError(f"throughput log {path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    starts, rates = [], []
    end = None
    for line_no, line in enumerate(text.splitlines(), start=1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != 6:
            raise PisplitError(f"throughput log {path}: line {line_no}: expected 6 columns (timestamp, ms since start, "
                               f"latitude, longitude, bytes, ms), got {len(cols)}")
        try:
            at_ms, nbytes, ms = float(cols[1]), float(cols[4]), float(cols[5])
        except ValueError:
            raise PisplitError(f"throughput log {path}: line {line_no}: columns 2, 5 and 6 must be numbers") from None
        if not (math.isfinite(at_ms) and math.isfinite(nbytes) and math.isfinite(ms)) or nbytes < 0 or ms <= 0:
            raise PisplitError(f"throughput log {path}: line {line_no}: bytes must be >= 0 and milliseconds > 0")
        start = at_ms - ms
        if end is not None and start < end - 0.5 * ms:
            raise PisplitError(f"throughput log {path}: line {line_no}: time {cols[1]} ms goes back")
        starts.append(start)
        rates.append(max(nbytes * 8.0 / ms / 1e3, floor_mbit))
        end = at_ms
    if not starts:
        raise PisplitError(f"throughput log {path}: no rows")
    t = (np.array(starts) - starts[0]) / 1e3
    t = np.maximum.accumulate(t)
    keep = np.append(True, np.diff(t) > 0)  # an interval that overlaps its predecessor's start is merged into it
    return BandwidthTrace(t[keep], np.array(rates)[keep], (end - starts[0]) / 1e3, str(path))


def load_trace(path: str | Path) -> BandwidthTrace:
    """What --bandwidth-trace reads: a trace file (read_trace), or a public 4G/LTE or HSDPA throughput
    log (read_throughput_log) when its first line is six whitespace-separated columns and no comma."""
    try:
        with open(path) as f:
            first = next((ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")), "")
    except (OSError, UnicodeDecodeError):
        first = ""  # read_trace says why, in one line
    if "," not in first and len(first.split()) == 6:
        return read_throughput_log(path)
    return read_trace(path)


# --- estimation and detection ------------------------------------------------------------------------
class HarmonicEstimator:
    """Link bandwidth from the runtime's transfers: harmonic mean of the last `window` samples."""

    def __init__(self, window: int = 5, min_bytes: int = 1024, latency_s: float = 0.0):
        if window < 1 or min_bytes < 0 or latency_s < 0:
            raise PisplitError(f"bandwidth estimator: window {window} must be >= 1, min_bytes and latency >= 0")
        self.window, self.min_bytes, self.latency_s = int(window), int(min_bytes), float(latency_s)
        self.samples: deque = deque(maxlen=self.window)

    def add(self, nbytes: float, seconds: float) -> float | None:
        """Count one transfer of `nbytes` that took `seconds`; returns the estimate (bit/s) or None before the first sample."""
        if nbytes >= max(self.min_bytes, 1) and seconds > 0:
            on_link = max(seconds - self.latency_s, seconds * 1e-3)
            self.samples.append(nbytes * 8.0 / on_link)
        return self.estimate

    @property
    def estimate(self) -> float | None:
        if not self.samples:
            return None
        s = np.fromiter(self.samples, np.float64, len(self.samples))
        return float(len(s) / np.sum(1.0 / s))


class StateDetector:
    """Bandwidth state with hysteresis (module docstring): `update(estimate)` returns the state index."""

    def __init__(self, states_bps, margin: float = 0.25, up_patience: int = 3, down_patience: int = 2, initial: int = 0,
                 down_margin: float | None = None):
        self.states = np.array(sorted(set(float(s) for s in states_bps)))
        if self.states.size == 0 or np.any(self.states <= 0) or not np.all(np.isfinite(self.states)):
            raise PisplitError("state detector: needs positive, finite bandwidth states")
        if not 0 <= margin < 1 or up_patience < 1 or down_patience < 1:
            raise PisplitError(f"state detector: margin {margin} must be in [0, 1), patience at least 1")
        if not 0 <= initial < self.states.size:
            raise PisplitError(f"state detector: initial state {initial} outside 0..{self.states.size - 1}")
        down_margin = margin if down_margin is None else down_margin
        if not 0 <= down_margin < 1:
            raise PisplitError(f"state detector: down margin {down_margin} must be in [0, 1)")
        self.margin, self.up_patience, self.down_patience = float(margin), int(up_patience), int(down_patience)
        self.down_margin = float(down_margin)
        self.state = int(initial)
        self._pending: int | None = None
        self._count = 0

    def nominal(self, bps: float) -> int:
        """The largest state <= bps (0 below every state)."""
        return max(int(np.searchsorted(self.states, bps, side="right")) - 1, 0)

    def update(self, bps: float | None) -> int:
        """Feed one estimate (None: no information, the state stays); returns the current state index."""
        if bps is None or not math.isfinite(bps):
            return self.state
        up = self.nominal(bps / (1 + self.margin))
        m = self.down_margin
        down = self.nominal(bps / (1 - m)) if bps < self.states[self.state] * (1 - m) else self.state
        target = up if up > self.state else down if down < self.state else self.state
        if target == self.state:
            self._pending, self._count = None, 0
            return self.state
        direction = target > self.state
        if self._pending is None or (self._pending > self.state) != direction:
            self._count = 0
        self._pending = target
        self._count += 1
        if self._count >= (self.up_patience if direction else self.down_patience):
            self.state, self._pending, self._count = target, None, 0
        return self.state


@dataclass(frozen=True)
class Switch:
    """One change of strategy: when (the caller's clock or frame), from which state to which, and why."""

    at: float
    frame: int
    from_bps: float
    to_bps: float
    estimate_bps: float
    reason: str


class RuntimeOptimizer:
    """Edgent's Algorithm 3: C_t = C_(t-1); s_t = D(B_1..t); if s_t != s_(t-1): C_t = find(s_t).

    D is HarmonicEstimator + StateDetector over the configuration map's states of one device set;
    find is ConfigMap.find. `observe` takes each transfer, `strategy` is the current map entry."""

    def __init__(self, configmap, devices: str | None = None, initial_bps: float | None = None, estimator=None,
                 detector_options: dict | None = None):
        self.map = configmap
        self.devices = devices or configmap.entries[0].devices
        self.states = configmap.states(self.devices)
        if not self.states:
            raise PisplitError(f"runtime optimizer: the map has no states for devices {self.devices}")
        self.estimator = estimator or HarmonicEstimator(latency_s=configmap.link_latency_s)
        start = 0 if initial_bps is None else max(int(np.searchsorted(self.states, initial_bps, side="right")) - 1, 0)
        self.detector = StateDetector(self.states, initial=start, **(detector_options or {}))
        self.strategy = configmap.find(self.states[start], self.devices)
        self.switches: list[Switch] = []  # changes of strategy (a new state with the same strategy is no switch)
        self.state_changes = 0

    def observe(self, nbytes: float, seconds: float, at: float = 0.0, frame: int = -1):
        """One transfer measured by the runtime; returns the strategy (map entry) for the next frame."""
        before = self.detector.state
        estimate = self.estimator.add(nbytes, seconds)
        state = self.detector.update(estimate)
        if state != before:
            self.state_changes += 1
            entry = self.map.find(self.states[state], self.devices)
            if (entry.exit, entry.cut, entry.codec) == (self.strategy.exit, self.strategy.cut, self.strategy.codec):
                return self.strategy  # the same strategy (each state's plan file prices it at its own bandwidth)
            direction = "rose" if state > before else "fell"
            self.switches.append(Switch(at, frame, self.states[before], self.states[state], float(estimate or 0.0),
                                        f"bandwidth {direction} to {(estimate or 0) / 1e6:.3g} Mbit/s: state "
                                        f"{self.states[before] / 1e6:g} -> {self.states[state] / 1e6:g} Mbit/s, "
                                        f"exit {entry.exit} cut {entry.cut} {entry.codec}"))
            self.strategy = entry
        return self.strategy


# --- the runtime's side (cluster.switching) ----------------------------------------------------------
def strategy_key(entry) -> tuple:
    """What a map entry runs: (exit, cut, codec); entries with the same key run the same stages."""
    return (entry.exit, entry.cut, entry.codec)


def map_plans(configmap, folder, devices: str | None = None) -> list:
    """The distinct strategies of a map's device set, by state (lowest first): one (key, entry, plan
    path, graph path) each, the entry and files of the lowest state that chose it. PisplitError when
    an entry has no plan or graph file (a map made by `pisplit configmap` has both)."""
    from pathlib import Path

    devices = devices or configmap.entries[0].devices
    out, seen = [], set()
    for e in sorted((e for e in configmap.entries if e.devices == devices), key=lambda e: e.bandwidth_bps):
        if e.plan is None or e.graph is None:
            raise PisplitError(f"configmap: the {devices} at {e.bandwidth_bps:g} bit/s entry names no plan or graph file "
                               "(write the map with pisplit configmap)")
        if strategy_key(e) not in seen:
            seen.add(strategy_key(e))
            out.append((strategy_key(e), e, Path(folder) / e.plan, Path(folder) / e.graph))
    if not out:
        raise PisplitError(f"configmap: no entries for devices {devices} (known: {', '.join(configmap.device_sets())})")
    return out


MAP_DOWN_MARGIN = 0.1  # a map run's state detector drops once the estimate is 10% below its state (module docstring)


class MapChooser:
    """Algorithm 3 for a run switching plans (cluster.switching.run_switching's `choose`): the
    runtime's transfers (end, bytes, seconds rows) in, the index of the plan for the next frames out;
    plan i runs `keys[i]` (map_plans' order). A RuntimeOptimizer underneath (its switches have the reasons)."""

    def __init__(self, configmap, keys: list, devices: str | None = None, initial_bps: float | None = None,
                 detector_options: dict | None = None, min_bytes: int = 1024):
        estimator = HarmonicEstimator(min_bytes=min_bytes, latency_s=configmap.link_latency_s)
        options = {"down_margin": MAP_DOWN_MARGIN, **(detector_options or {})}
        self.optimizer = RuntimeOptimizer(configmap, devices, initial_bps, estimator, options)
        self.keys = list(keys)
        self.index  # the initial state's strategy is one of the plans

    @property
    def index(self) -> int:
        key = strategy_key(self.optimizer.strategy)
        if key not in self.keys:
            raise PisplitError(f"map chooser: strategy {key} has no plan")
        return self.keys.index(key)

    @property
    def estimate(self) -> float | None:
        return self.optimizer.estimator.estimate

    def __call__(self, transfers, frame: int) -> tuple[int, str | None]:
        before = len(self.optimizer.switches)
        for end, nbytes, seconds in np.asarray(transfers, np.float64).reshape(-1, 3):
            self.optimizer.observe(nbytes, seconds, at=float(end), frame=frame)
        return self.index, (self.optimizer.switches[-1].reason if len(self.optimizer.switches) > before else None)


def speed_model(configmap, graph_path) -> str:
    """The model whose speed on this machine dilates a map's emulated plans (cluster.host_speed): the whole
    model the map was made from when it can be loaded from here (a zoo name, or a file that exists), else
    the exit branch `graph_path`: one measurement (and cache entry) for all of the map's exit branches."""
    from pathlib import Path

    spec = str(configmap.model)
    return spec if (not Path(spec).suffix or Path(spec).exists()) else str(graph_path)


def plan_speed_ratios(configmap, folder, engine: str, concurrency: int, seed: int = 0, devices: str | None = None,
                      measure: bool = False) -> list[float]:
    """Per plan of `map_plans` (same order): this machine's speed on the plan's own exit branch over its
    speed on the map's `speed_model` (cluster.host_speed's seconds here / reference seconds, measured
    with `concurrency` copies at once), 1.0 where either is not known (`measure`: take them now).

    An emulated switching run dilates every plan by one host speed, measured on the whole model; a
    branch's mix of layers runs at another speed here (on branchy_alexnet_mnist the final branch
    measured 2.85 against the whole model's 2.27, 2 at once: its frames were emulated 25% slow, about
    a millisecond a frame; a conv-heavy early exit of bench/edgent's scaled model about 50% slow).
    cluster.switching divides each plan's dilation by its ratio."""
    from .host_speed import host_speed

    plans = map_plans(configmap, folder, devices)
    whole = host_speed(speed_model(configmap, plans[0][3]), seed, engine, measure=measure, concurrency=concurrency)
    ratios = []
    for _, _, _, graph_path in plans:
        own = host_speed(str(graph_path), seed, engine, measure=measure, concurrency=concurrency)
        ratios.append(own / whole if own and whole else 1.0)
    return ratios


# --- a trace on the network-namespace cluster's links (tc changing the shaping live) ------------------------
def tc_rate(mbit_per_s: float) -> str:
    """A tc rate for `mbit_per_s` (in kbit, so 0.25 Mbit/s stays exact enough)."""
    return f"{max(1, round(float(mbit_per_s) * 1e3))}kbit"


def netns_links(cluster, pis=None) -> list[tuple[str, str]]:
    """(namespace, device) of both directions of each emulated Pi's link (cluster.netns: the Pi's eth0 and
    the bridge port towards it), for `pis` (indices; default all)."""
    chosen = cluster.pis if pis is None else [cluster.pis[i] for i in pis]
    return [pair for pi in chosen for pair in ((pi.namespace, "eth0"), (cluster.lan, f"v-{pi.hostname}"))]


class TraceShaper:
    """Replays a BandwidthTrace on real links shaped by `tc ... tbf` (cluster.netns), changing the shaping
    live: at each row's time (from start()) every (namespace, device) in `links` gets that row's rate
    (`tc qdisc change ... tbf rate R burst B latency 50ms`, the burst as cluster.netns sizes it: 2 ms at
    the rate, at least 16 KiB). `repeat`: the trace starts again at its end (as the paced link's does);
    else the last row's rate holds after it. Runs in a thread of its own; `changes` lists (seconds since
    start, Mbit/s) of each change made, and `error` the first tc failure (the shaping then stops)."""

    def __init__(self, trace: BandwidthTrace, links: list[tuple[str, str]], repeat: bool = False, tc: str = "tc"):
        self.trace, self.links, self.repeat, self.tc = trace, list(links), bool(repeat), tc
        self.changes: list[tuple[float, float]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0

    def apply(self, mbit: float) -> None:
        """Shape every link at `mbit` Mbit/s now; PisplitError naming the link tc refused."""
        import subprocess

        from .netns import _burst

        rate = tc_rate(mbit)
        for ns, dev in self.links:
            proc = subprocess.run([self.tc, "-n", ns, "qdisc", "change", "dev", dev, "root", "tbf", "rate", rate, "burst", _burst(rate),
                                   "latency", "50ms"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise PisplitError(f"tc on {dev} in {ns}: {proc.stderr.strip() or 'failed'} (is the cluster up, its links shaped by tbf?)")

    def start(self) -> "TraceShaper":
        import time

        self._stop.clear()
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="trace-shaper", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import time

        times, rates, period = self.trace.time_s, self.trace.mbit_per_s, self.trace.duration_s
        lap = 0
        while not self._stop.is_set():
            for t, mbit in zip(times, rates):
                at = lap * period + float(t)
                if self._stop.wait(max(0.0, self.t0 + at - time.perf_counter())):
                    return
                try:
                    self.apply(float(mbit))
                except PisplitError as exc:
                    self.error = str(exc)
                    return
                self.changes.append((time.perf_counter() - self.t0, float(mbit)))
            if not self.repeat:
                return
            lap += 1

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Until the trace has been replayed (not with `repeat`) or `timeout` seconds."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self.wait()


def shape_main(argv=None) -> int:
    """python -m cluster.bandwidth TRACE [--name pisplit] [--state DIR] [--pis 0,1] [--repeat]: replay a bandwidth trace
    (CSV or a public 4G/LTE log) on a running network-namespace cluster's links (its Pis', or those of --pis) with tc, live, until it ends
    (with --repeat: until interrupted); then the links go back to the cluster's rate. Run it beside `pisplit launch`."""
    import argparse
    import sys

    from .netns import DEFAULT_NAME, Cluster, is_up, namespaces

    p = argparse.ArgumentParser(prog="python -m cluster.bandwidth", description=shape_main.__doc__)
    p.add_argument("trace")
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--state", help="the cluster's state directory (as given to python -m cluster.netns up)")
    p.add_argument("--rate", default="94mbit", help="the cluster's own rate, restored at the end")
    p.add_argument("--pis", help="indices of the Pis whose links follow the trace (default: all)")
    p.add_argument("--repeat", action="store_true")
    args = p.parse_args(argv)
    try:
        trace = load_trace(args.trace)
        kw = {"state": Path(args.state)} if args.state else {}
        n_pis = sum(1 for ns in namespaces(args.name) if ns.startswith(f"{args.name}-pi-"))  # the running cluster's
        cluster = Cluster(name=args.name, n_pis=max(n_pis, 1), rate=args.rate, **kw)
        if not n_pis or not is_up(cluster):
            raise PisplitError(f"the emulated cluster {args.name} is not up (python -m cluster.netns up)")
        pis = [int(i) for i in args.pis.split(",")] if args.pis else None
        if pis is not None and any(not 0 <= i < cluster.n_pis for i in pis):
            raise PisplitError(f"--pis {args.pis}: the cluster has Pis 0..{cluster.n_pis - 1}")
        import signal

        def interrupted(*_):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupted)  # kill PID ends it as Ctrl-C does: the cluster's rate comes back
        shaper = TraceShaper(trace, netns_links(cluster, pis), repeat=args.repeat).start()
        try:
            while shaper.running:  # a join with a timeout: signals are handled between the waits
                shaper.wait(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            shaper.stop()
            from .emulation import parse_link

            TraceShaper(trace, shaper.links).apply(parse_link(args.rate) / 1e6)
        if shaper.error:
            raise PisplitError(shaper.error)
        print(f"replayed {len(shaper.changes)} rates of {args.trace} on {len(shaper.links)} links")
        return 0
    except (PisplitError, ValueError) as exc:
        print(f"pisplit: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(shape_main())
