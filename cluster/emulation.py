"""Emulate slower devices and links on this machine: time dilation of compute, pacing of transfers.

A rank emulating a Raspberry Pi measures the CPU time of each compute step here and pads the step's wall
time to `cpu_seconds x slowdown`, where `slowdown` is the calibrated device time / local time for the
same work. CPU time rather than wall time is scaled, so several emulated devices sharing two cores do
not see each other's load as their own slowness (as long as the host keeps up: `late_s` says when not).

A link transfer of b bytes in m messages takes m x latency + b x 8 / bandwidth and occupies the link,
and the ranks only in part (issue 18): a pipeline rank hands a frame to its network interface and
computes on once no more than partitioners.cost.SEND_OVERLAP_BYTES of each destination's transfers are
left to leave (a Pi has no MPI progress thread: the rest of a send moves only while its sender is in MPI
calls), and an output it sent just before a compute step leaves after that step (the runtime hands it
to the link at the rank's next real wait: cluster.runtime._flush_sends). Its transfers serialise on its interface, at most window + 1 to one receiver, as MPI sends over
TCP complete once their bytes are out; the receiver, whose receive is posted ahead, has the frame when
it has arrived, arrivals serialising on its own interface. The frame header carries the
transfer's end and duration so the receiver can do this. This is the planner's link model
(partitioners.cost). Holding both ends for the whole transfer, as this emulation and the planner did
before, came out 19% slow against real TCP through tc-shaped links for a send-heavy throughput plan
(scripts/bench_netns): the kernel drains a socket's buffer while both processes compute. A split stage's
scatters and gathers (cluster.split_exec) wait for each other, so they still hold their ends.
"""
from __future__ import annotations

import fcntl
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

CALIBRATION_WINDOW = 31  # EmulatedDevice.calibrate: a whole stage's typical CPU time is the lower quartile of this many latest steps
MIN_CALIBRATION_STEPS = 2  # ... once it has this many (warm-up passes count)



def parse_link(text: str) -> float:
    """'94mbit' -> 94e6 bits per second: partitioners.devices.parse_link_bps, the one parser `plan`,
    `emulate` and `run` share ('94mbit/s' was a plan's link and not an emulation's)."""
    from partitioners.devices import parse_link_bps

    return parse_link_bps(text)


def device_slowdown(kind: str, engine: str = "numpy") -> float:
    """Calibrated device time / this machine's time for the same work, from the shipped device
    profiles (partitioners.profiles: e.g. a Pi 3B+ takes 220 ms for AlexNet)."""
    from partitioners import profiles

    return float(profiles.device_slowdown(kind, engine))


@dataclass
class ComputeDilation:
    """Pads compute steps to cpu_seconds x slowdown; `late_s` sums how far the host fell behind."""

    slowdown: float = 1.0
    late_s: float = 0.0

    def start(self) -> tuple[float, float]:
        """Mark the start of a compute step: (wall, cpu) clocks."""
        return time.perf_counter(), time.process_time()

    def deadline(self, mark: tuple[float, float]) -> float:
        """perf_counter time at which the step started at `mark` would end on the emulated device."""
        wall0, cpu0 = mark
        return self.deadline_for(wall0, time.process_time() - cpu0)

    def deadline_for(self, wall0: float, cpu_seconds: float) -> float:
        """perf_counter time at which a step started at `wall0` taking `cpu_seconds` here ends on
        the emulated device."""
        return self.due(wall0, cpu_seconds * self.slowdown)

    def due(self, wall0: float, device_seconds: float) -> float:
        """perf_counter time at which a step started at `wall0` lasting `device_seconds` on the emulated
        device ends (late_s counts how far the host is past it already)."""
        target = wall0 + device_seconds
        behind = time.perf_counter() - target
        if behind > 0:
            self.late_s += behind
        return target


class CoreTokens:
    """At most one computing emulated device per core of this machine (a lock file per core).

    Without it, eight emulated devices on two cores would each run at a quarter speed and count the
    others' work as their own CPU time (caches, memory bandwidth); dilation then overshoots.
    """

    def __init__(self, directory: str | Path, cores: int):
        self.paths = [Path(directory) / f"core-{i}.lock" for i in range(max(1, int(cores)))]
        self.held: int | None = None

    def acquire(self, poll: Callable[[], object] | None = None) -> None:
        """Take a free core, calling `poll()` (e.g. MPI progress) while none is free."""
        pause = 1e-4
        while True:
            for path in self.paths:
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.held = fd
                    return
                except BlockingIOError:
                    os.close(fd)
            if poll:
                poll()
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    def release(self) -> None:
        if self.held is not None:
            fcntl.flock(self.held, fcntl.LOCK_UN)
            os.close(self.held)
            self.held = None


@dataclass
class LinkPacer:
    """The sending rank's network interface: transfers serialise at `bandwidth_bps`, each message
    costs `latency_s` more."""

    bandwidth_bps: float
    latency_s: float = 0.0
    free_at: float = 0.0
    busy_s: float = 0.0
    # issue 16: a cluster.bandwidth.BandwidthTrace replayed from wall-clock `epoch` (bandwidth_bps then unused)
    trace: Any = None
    epoch: float = 0.0

    def seconds(self, nbytes: int, messages: int = 1, start: float | None = None) -> float:
        """Duration of one transfer on this link (with a trace: one starting at wall-clock `start`)."""
        if self.trace is not None and start is not None:
            at = start - self.epoch
            return messages * self.latency_s + self.trace.transfer_end(at, nbytes) - at
        return messages * self.latency_s + nbytes * 8.0 / self.bandwidth_bps

    def schedule(self, nbytes: int, messages: int = 1, now: float | None = None) -> tuple[float, float]:
        """(end, duration) of a transfer handed to the interface at wall-clock (time.time) `now`."""
        now = time.time() if now is None else now
        start = max(now, self.free_at)
        duration = self.seconds(nbytes, messages, start)
        self.free_at = start + duration
        self.busy_s += duration
        return self.free_at, duration


def drop_ended(queue, now: float) -> None:
    """Drop from a destination's deque of (end, bytes) transfers, oldest first, those ended by `now`."""
    while queue and queue[0][0] <= now:
        queue.popleft()


def hold_before_compute(free_at: float, on_link: dict, now: float, seconds: Callable[[int], float], overlap_bytes: int) -> float:
    """Seconds a rank whose link is busy until `free_at` must stay in MPI calls at wall-clock `now` before
    it computes: until no more than `overlap_bytes` of each destination's transfers are left to leave (one
    TCP connection, with its own socket buffer, per destination; partitioners.cost.SEND_OVERLAP_BYTES).
    `on_link` maps destination -> deque of (end, bytes) of the transfers to it, oldest first (those ended
    by `now` are dropped); `seconds(nbytes)` is how long the link takes for `nbytes`."""
    overlap = 0
    for queue in on_link.values():
        drop_ended(queue, now)
        overlap += min(overlap_bytes, sum(nbytes for _, nbytes in queue))
    return free_at - now - (seconds(overlap) if overlap else 0.0)


def receive_ready_at(sender_end: float, duration: float, receiver_ready: float) -> float:
    """Wall-clock time a paced frame is in the receiver's hands: the transfer ends no earlier than the
    sender says, and lasts `duration` from when the receiver was ready for it."""
    return max(sender_end, receiver_ready + duration)


class EmulatedDevice:
    """An emulated device as a split runner sees it (cluster.split_exec.Hooks): compute steps take a
    core of this machine and are padded to the device's time; waiting for data holds no core;
    messages leave over the device's paced link and arrive no earlier than the link allows.

    `poll()` (e.g. the pipeline's progress) is called while the device waits for a message to arrive
    (hold), never while it computes (compute).
    Receives are full duplex and serialise on the receiver's interface: a message of duration d that
    the sender's link finishes at `end` is in hand at max(end, previous arrival + d).
    """

    def __init__(self, dilation: ComputeDilation, cores: CoreTokens, link: LinkPacer, poll: Callable[[], object] | None = None):
        self.dilation = dilation
        self.cores = cores
        self.link = link
        self.poll = poll
        self.received_at = 0.0  # wall clock (time.time) when the receiving interface is next free
        self.ended_at = 0.0  # perf_counter time the last compute step ended ...
        self.behind_s = 0.0  # ... and how far past its due time
        self.warm: dict = {}  # id(step) -> its warm CPU seconds (reference)
        self.waiting_since: float | None = None  # emulated wall time (time.time) a wait for messages began ...
        self.waiting_behind = 0.0  # ... and how far behind the device was then (counted in late_s since)
        self.idle_s = 0.0  # seconds the runtime waited (for a frame, a link, a send) since the last compute step ended
        self.absorbed_s = 0.0  # the runtime's own time between steps that the device's clock took in (absorb)
        self.step_device_s: float | None = None  # calibrate: a whole stage's step on the device, from its calibration ...
        self.recent_cpu: deque = deque(maxlen=CALIBRATION_WINDOW)  # ... and this rank's CPU seconds of its latest steps

    def calibrate(self, device_seconds: float, warm_cpu: list) -> None:
        """Issue 18: a whole stage's steps (`compute` with `absorb`) last `device_seconds` (its nodes'
        price on the emulated device, from the device's calibration) times the step's CPU time here over
        this rank's typical CPU time for it, at most 1 (_step_seconds). Typical is the lower quartile of
        its latest CALIBRATION_WINDOW steps, seeded with `warm_cpu` (its warm-up passes): most of this
        machine's noise slows a step, and with the median half the steps came out short of their
        calibrated time (one emulated Pi at x1.01-1.02 of its calibration).

        The speed of this machine is thus measured in the process that runs the frames, while it runs
        them. A speed measured beforehand in another process (cluster.host_speed) was off by up to 20%:
        on a quiet 2-core VM, one emulated Pi 3B+ ran MobileNet-v1 at x0.86 and x1.00 of its calibration
        in two runs of the same `pisplit emulate` with the same measured speed (rank medians 28.6 and
        30.3 ms of CPU a frame against 27.8 ms measured), and the whole zoo read x0.77-1.19 at load 0.1-0.6.
        A split stage's parts still dilate by the measured speed (cluster.host_speed): what they cost
        beyond their share of the layer (SplitOverhead) is what emulating them measures."""
        if not device_seconds > 0:
            return
        self.step_device_s = float(device_seconds)
        self.recent_cpu.clear()
        self.recent_cpu.extend(float(c) for c in warm_cpu if c > 0)

    def _step_seconds(self, cpu: float) -> float:
        """A whole stage's step that took `cpu` seconds here, in device seconds (calibrate): none longer
        than the device's calibrated step (a step slower than this rank's typical one was slowed by this
        machine, another rank's work in its caches or a preemption, which a Pi running its own work
        does not see; the host falling behind still shows as late_s), shorter ones shorter. Before
        MIN_CALIBRATION_STEPS steps (no warm-up): the measured speed's dilation."""
        self.recent_cpu.append(cpu)
        if len(self.recent_cpu) < MIN_CALIBRATION_STEPS:
            return cpu * self.dilation.slowdown
        typical = float(np.percentile(self.recent_cpu, 25))
        return self.step_device_s * min(1.0, cpu / typical) if typical > 0 else self.step_device_s

    def compute(self, fn: Callable[[], object], step: object = None, absorb: bool = False, codec: bool = False):
        """Run `fn` as one compute step of the emulated device. A `step` with a warm reference costs
        at most that much CPU time: a split stage's steps last a few milliseconds of host CPU, and
        emulated devices taking turns on this machine's cores find each other's data in its caches
        (AlexNet's parts ran 1.3-1.5x their warm time, cold), where a Pi keeps its own caches.

        The device is busy computing from the start of the step to its padded end, so nothing else
        of it moves meanwhile: no `poll()` while it waits for a core or pads. A Pi's Open MPI
        progresses only inside MPI calls (no progress thread), and the runtime makes none during a
        compute step: a send posted before it moves at most its first eager fragment, which the
        kernel carries, and the rest (and the source's next frames, the sink's results) wait for the
        step to end. Polling while padding let rank 0 hand out frames during its emulated compute,
        so emulated throughput came out above the planner's model, where a rank's sends do not
        overlap its compute (AlexNet on 4 Pi 3B+: x1.32 of its prediction).

        With `absorb` (a whole stage's step: the runtime calls `idle` for its waits between steps), the
        rank's own time since the last step that was not a wait (receiving and making the frame, sending
        the result, bookkeeping) is taken into this step's emulated time, not added to it: the device
        time of a calibration and a plan's compute is the frame's whole work, and those 0.2-0.3 ms a
        frame made one emulated Pi 3B+ run LeNet-5's 1.9 ms frames ~10% slow. When the step's padding
        is shorter than that time, the step ends past its due time (late_s).

        A `codec` step (a link's encode or decode: milliseconds) that queued for a core behind other
        ranks' whole steps carries that wait as behind, not as late_s: the frame's whole step, due that
        much earlier, catches it up or counts its own overshoot (8 emulated VGG16 ranks with lz4 input
        links: each decode waited 0.1-1.2 s for a core and counted it, late 23-35% of the run, while
        every rank ended its frames on time, 0-1 ms behind)."""
        wall0 = time.perf_counter()
        self.waiting_since = None
        # what this device's earlier steps ended past their deadlines (the host woke it late), less
        # any wait since: this step is due that much earlier, so the lateness of a loaded host
        # does not add up step after step (a split stage runs ~50 steps a frame)
        start = wall0  # the step's start on the device's clock
        if absorb and self.ended_at > 0:
            gap = max(0.0, wall0 - self.ended_at)
            idle = min(self.idle_s, gap)
            start -= gap - idle  # the runtime's own time since the last step, taken in
            self.absorbed_s += gap - idle
            behind = max(0.0, self.behind_s - idle)
        else:
            behind = self.behind_at(wall0)
        queued = time.perf_counter()
        self.cores.acquire()
        queued = time.perf_counter() - queued if codec else 0.0
        cpu0 = time.process_time()
        try:
            out = fn()
        finally:
            self.cores.release()
        cpu = time.process_time() - cpu0
        if step is not None:
            cpu = min(cpu, self.warm.get(id(step), cpu))
        if absorb and self.step_device_s is not None:
            due = self.dilation.due(start, self._step_seconds(cpu)) - behind
        else:
            due = self.dilation.deadline_for(start + queued, cpu) - behind - queued
        self._sleep_until(due, time.perf_counter, poll=False)
        self.ended_at = time.perf_counter()
        self.behind_s = self.ended_at - due
        self.idle_s = 0.0
        return out

    def idle(self, seconds: float) -> None:
        """The runtime waited `seconds` (for a frame, a link, a send) since the last compute step:
        time the emulated device spends too, which a step with `absorb` does not take in."""
        self.idle_s += max(0.0, float(seconds))

    def begin(self, now: float | None = None) -> None:
        """The run starts (after the start barrier) at perf_counter time `now`: a step with `absorb`
        counts the runtime's time from here, never the set-up's."""
        self.ended_at = time.perf_counter() if now is None else float(now)
        self.behind_s = self.idle_s = 0.0

    def behind_at(self, now: float) -> float:
        """Seconds this device is behind its emulated time at perf_counter time `now`: host lateness
        (compute steps that ended past their deadlines, messages that arrived after they were due)
        not yet absorbed by time spent waiting."""
        return max(0.0, self.behind_s - max(0.0, now - self.ended_at))

    def reference(self, step: object, cpu_seconds: float) -> None:
        """The warm CPU time of `step` (measured alone at warm-up): what its compute costs at most."""
        self.warm[id(step)] = float(cpu_seconds)

    def wait(self, requests: list, label: str = "", peers: list | None = None) -> None:
        """Wait for requests without a core; under the stall bound of `watch` if the runtime set one
        (cluster.split_exec.Hooks.wait)."""
        from . import transport

        if self.waiting_since is None:
            self.waiting_behind = self.behind_at(time.perf_counter())
            self.waiting_since = time.time() - self.waiting_behind
        transport.wait_quietly(requests, watch=getattr(self, "watch", None), label=label, peers=peers)

    def stamp(self, nbytes: int) -> tuple[int, int]:
        """(end_ns, duration_ns) of a message of `nbytes` handed to this device's link now: its end is
        when the link would finish it had the host woken this device on time (less how far behind it
        is), so a receiver does not count the sender's host lateness as link time."""
        end, duration = self.link.schedule(nbytes, 1)
        return int((end - self.behind_at(time.perf_counter())) * 1e9), int(duration * 1e9)

    def hold(self, end_ns: int, duration_ns: int) -> None:
        """Wait until a received message would be in hand. After a `wait`, the device's emulated time
        is the later of when the wait began and when the message was due; how far the host delivered
        it past that (a sender woken late, ranks taking turns on this machine's cores: 8 ranks on 2
        cores waited 49 ms for halos a 940 Mbit/s link moves in 27) is host lateness, which the
        device's next compute steps catch up as they do their own (`compute`), not device time."""
        self.received_at = max(end_ns / 1e9, self.received_at + duration_ns / 1e9)
        self._sleep_until(self.received_at, time.time)
        if self.waiting_since is not None:
            self.waiting_since = max(self.waiting_since, self.received_at)
            self.behind_s = max(0.0, time.time() - self.waiting_since)
            self.ended_at = time.perf_counter()
            if self.behind_s > self.waiting_behind:  # the report's late_s counts it (the host could not keep up)
                self.dilation.late_s += self.behind_s - self.waiting_behind
                self.waiting_behind = self.behind_s

    def _sleep_until(self, deadline: float, clock: Callable[[], float], poll: bool = True) -> None:
        """Sleep until `clock()` reaches `deadline`, calling `poll()` in between unless `poll` is
        False (then in one sleep: nothing to wake up for)."""
        pause = 2e-5
        while True:
            left = deadline - clock()
            if left <= 0:
                return
            if not poll:
                time.sleep(left)
                continue
            if self.poll:
                self.poll()
            time.sleep(min(pause, left))
            pause = min(pause * 2, 1e-3)
