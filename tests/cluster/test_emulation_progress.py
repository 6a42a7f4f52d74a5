"""An emulated device computing makes no MPI progress (issue 18): a Pi's Open MPI moves messages only
inside MPI calls, and the runtime makes none during a compute step."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cluster.emulation import ComputeDilation, CoreTokens, EmulatedDevice, LinkPacer


def test_an_emulated_device_polls_while_it_waits_for_data_never_while_it_computes(tmp_path):
    polls = []
    device = EmulatedDevice(ComputeDilation(20.0), CoreTokens(tmp_path, 1), LinkPacer(94e6), poll=lambda: polls.append(1))
    a = np.random.default_rng(0).random((120, 120))
    device.compute(lambda: [a @ a for _ in range(10)])  # padded to 20x its CPU time, in one sleep
    assert polls == []
    # waiting for a core belongs to the step as well (the emulated device is computing from its start)
    other = CoreTokens(tmp_path, 1)
    other.acquire()
    threading.Timer(0.05, other.release).start()
    t = time.perf_counter()
    device.compute(lambda: None)
    assert time.perf_counter() - t >= 0.04 and polls == []
    # a message still on its way: the device is inside MPI, waiting, and progress goes on
    now = time.time()
    device.hold(int((now + 0.03) * 1e9), int(0.01 * 1e9))
    assert time.time() >= now + 0.03 and polls


class _Clock:
    """time for cluster.emulation: a wall clock and a CPU clock that advance only when told, and a
    sleep that wakes `late` seconds after it was due (a loaded host)."""

    def __init__(self, late: float):
        self.now, self.cpu, self.late = 100.0, 0.0, late

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.late

    def work(self, seconds: float) -> None:
        self.now += seconds
        self.cpu += seconds


def test_waking_late_does_not_add_up_over_steps(tmp_path, monkeypatch):
    from cluster import emulation

    clock = _Clock(late=0.005)
    monkeypatch.setattr(emulation, "time", clock)
    device = EmulatedDevice(ComputeDilation(4.0), CoreTokens(tmp_path, 1), LinkPacer(94e6))
    start = clock.now
    for step in range(1, 6):
        device.compute(lambda: clock.work(0.01))  # 10 ms here, 40 ms on the device
        # each sleep wakes 5 ms late, but the next step is due that much earlier: 5 ms late in all
        assert clock.now - start == pytest.approx(0.04 * step + 0.005)
    # a wait between steps absorbs lateness: after 3 ms idle, the next step is due 2 ms early only
    clock.now += 0.003
    before = clock.now
    device.compute(lambda: clock.work(0.01))
    assert clock.now - before == pytest.approx(0.04 - 0.002 + 0.005)
    # the device never ends a step before its own host time: 10 ms of CPU dilated to 2 ms still takes 10
    fast = EmulatedDevice(ComputeDilation(0.2), CoreTokens(tmp_path, 1), LinkPacer(94e6))
    before = clock.now
    fast.compute(lambda: clock.work(0.01))
    assert clock.now - before == pytest.approx(0.01)


def test_a_message_the_host_delivers_late_is_caught_up_not_device_time(tmp_path, monkeypatch):
    from cluster import emulation

    clock = _Clock(late=0.0)
    monkeypatch.setattr(emulation, "time", clock)
    device = EmulatedDevice(ComputeDilation(4.0), CoreTokens(tmp_path, 1), LinkPacer(94e6))
    device.compute(lambda: clock.work(0.01))  # on time: 40 ms
    # a halo due 2 ms after the wait began (the link's time), delivered 20 ms after (its sender's host
    # woke late): 18 ms of host lateness, which the next step catches up
    device.wait([])
    due = clock.now + 0.002
    clock.now += 0.02
    device.hold(int(due * 1e9), int(0.001 * 1e9))
    assert device.behind_s == pytest.approx(0.018) and device.dilation.late_s == pytest.approx(0.018)
    before = clock.now
    device.compute(lambda: clock.work(0.01))
    assert clock.now - before == pytest.approx(0.04 - 0.018)
    # a message due later than it arrives is waited for on the device's time: nothing to catch up
    device.wait([])
    due = clock.now + 0.005
    device.hold(int(due * 1e9), int(0.001 * 1e9))
    assert clock.now == pytest.approx(due) and device.behind_s == pytest.approx(0.0)
    # a sender behind its emulated time stamps its message as sent on time
    sender = EmulatedDevice(ComputeDilation(4.0), CoreTokens(tmp_path, 1), LinkPacer(8e6))
    sender.behind_s, sender.ended_at = 0.01, clock.now
    end_ns, duration_ns = sender.stamp(1000)
    assert duration_ns == pytest.approx(1e6) and end_ns / 1e9 == pytest.approx(clock.now + 0.001 - 0.01)


def test_the_runtimes_own_time_between_steps_is_taken_in_and_its_waits_are_not(tmp_path, monkeypatch):
    from cluster import emulation

    clock = _Clock(late=0.0)
    monkeypatch.setattr(emulation, "time", clock)
    device = EmulatedDevice(ComputeDilation(4.0), CoreTokens(tmp_path, 1), LinkPacer(94e6))
    clock.now += 5.0  # loading and warming up: not the device's frames
    device.begin()
    start = clock.now
    clock.work(0.001)  # making the first frame (no wait): its 1 ms is inside the step's 40
    device.compute(lambda: clock.work(0.01), absorb=True)
    assert clock.now - start == pytest.approx(0.04) and device.absorbed_s == pytest.approx(0.001)
    # a frame's bookkeeping and its next frame, 3 ms: the frame period stays 40 ms
    clock.work(0.003)
    before = clock.now
    device.compute(lambda: clock.work(0.01), absorb=True)
    assert clock.now - start == pytest.approx(0.08) and clock.now - before == pytest.approx(0.037)
    # a wait (the runtime says so: idle) is the device's time too: 2 ms waiting and 1 ms of its own
    clock.now += 0.002
    device.idle(0.002)
    clock.work(0.001)
    before = clock.now
    device.compute(lambda: clock.work(0.01), absorb=True)
    assert clock.now - before == pytest.approx(0.039) and clock.now - start == pytest.approx(0.122)
    # without absorb (a split stage's steps) the time between steps is added, as before
    clock.work(0.003)
    before = clock.now
    device.compute(lambda: clock.work(0.01))
    assert clock.now - before == pytest.approx(0.04)
    assert device.dilation.late_s == 0.0
    # more of its own time than the step's padding: the step ends past its due time, which late_s says
    clock.work(0.035)
    before = clock.now
    device.compute(lambda: clock.work(0.01), absorb=True)
    assert clock.now - before == pytest.approx(0.01) and device.dilation.late_s == pytest.approx(0.005)


def test_a_calibrated_whole_stage_step_takes_its_device_time_whatever_this_machine_does(tmp_path, monkeypatch):
    """Issue 18: a whole stage's step lasts its nodes' calibrated device time, scaled by its CPU time here over
    this rank's typical one (lower quartile of its latest steps, seeded by the warm-up): a step this machine
    slowed is not the device's, a step with less work is shorter, and before the rank has a typical time
    the measured speed's dilation applies."""
    from cluster import emulation

    clock = _Clock(late=0.0)
    monkeypatch.setattr(emulation, "time", clock)
    device = EmulatedDevice(ComputeDilation(4.0), CoreTokens(tmp_path, 1), LinkPacer(94e6))
    device.begin()
    device.compute(lambda: clock.work(0.01), absorb=True)  # not calibrated: 10 ms x 4
    assert clock.now - 100.0 == pytest.approx(0.04)
    device.calibrate(0.05, [0.012, 0.010])  # 50 ms on the device; warm passes of 12 and 10 ms here
    for cpu in (0.010, 0.013, 0.020):  # as fast as warm or slowed by this machine: 50 ms each
        before = clock.now
        device.compute(lambda: clock.work(cpu), absorb=True)
        assert clock.now - before == pytest.approx(0.05)
    before = clock.now
    device.compute(lambda: clock.work(0.004), absorb=True)  # less work than typical (the quartile, 10 ms): shorter
    typical = float(np.percentile([0.012, 0.010, 0.010, 0.013, 0.020, 0.004], 25))
    assert clock.now - before == pytest.approx(0.05 * 0.004 / typical)
    assert device.dilation.late_s == 0.0
    before = clock.now
    device.compute(lambda: clock.work(0.08), absorb=True)  # this machine cannot keep up: the step ends late, said in late_s
    assert clock.now - before == pytest.approx(0.08) and device.dilation.late_s == pytest.approx(0.03)
    fresh = EmulatedDevice(ComputeDilation(4.0), CoreTokens(tmp_path, 1), LinkPacer(94e6))
    fresh.calibrate(0.05, [])  # no warm-up (a resilient retry): the measured dilation until two steps are in
    fresh.begin()
    before = clock.now
    fresh.compute(lambda: clock.work(0.01), absorb=True)
    assert clock.now - before == pytest.approx(0.04)
    before = clock.now
    fresh.compute(lambda: clock.work(0.01), absorb=True)
    assert clock.now - before == pytest.approx(0.05)
    before = clock.now
    fresh.compute(lambda: clock.work(0.01))  # without absorb (a split stage's step): dilated as before
    assert clock.now - before == pytest.approx(0.04)


def test_a_codec_step_queued_for_a_core_carries_the_wait_as_behind_not_late(tmp_path, monkeypatch):
    """A link's encode or decode (a few ms) that waited for a core behind other ranks' whole steps: the wait
    is carried as behind, for the frame's next steps and waits to catch up, not counted as late_s; an
    ordinary step's wait for a core is the host falling behind (late_s), as before."""
    from cluster import emulation

    clock = _Clock(late=0.0)
    monkeypatch.setattr(emulation, "time", clock)

    class QueuedCores:  # another rank holds the only core for 0.3 s
        def acquire(self, poll=None):
            clock.now += 0.3

        def release(self):
            pass

    device = EmulatedDevice(ComputeDilation(4.0), QueuedCores(), LinkPacer(94e6))
    device.begin()
    device.compute(lambda: clock.work(0.001), codec=True)  # a decode: 1 ms here, 4 ms on the device
    assert device.dilation.late_s == 0.0 and device.behind_s == pytest.approx(0.3 - 0.003)
    clock.now += 0.4  # the rank waits for its next frame: the device catches up
    device.idle(0.4)
    assert device.behind_at(clock.now) == 0.0
    plain = EmulatedDevice(ComputeDilation(4.0), QueuedCores(), LinkPacer(94e6))
    plain.begin()
    plain.compute(lambda: clock.work(0.001))
    assert plain.dilation.late_s == pytest.approx(0.3 - 0.003)
