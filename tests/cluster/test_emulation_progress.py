"""An emulated device computing makes no MPI progress (issue 18): a Pi's Open MPI moves messages only
inside MPI calls, and the runtime makes none during a compute step."""
from __future__ import annotations

import threading
import time

import numpy as np

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
