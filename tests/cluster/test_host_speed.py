"""Emulation calibrated on the machine that runs it (cluster.host_speed): this machine's speed for a
model is measured once, cached per machine, engine and versions, and one emulated device then runs at
its calibrated speed (loose bounds: machines are noisy; scripts/bench_emulate has the figures)."""
from __future__ import annotations

import json

import pytest

from cluster import host_speed
from tests.cluster.test_emulate import cluster_run_ratio


def test_host_speed_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert host_speed.host_speed("lenet5", 0, "numpy", measure=False) is None
    speed = host_speed.host_speed("lenet5", 0, "numpy")
    assert 0.05 < speed < 20
    doc = json.loads((tmp_path / "pisplit" / "host-speed.json").read_text())
    ((key, entry),) = doc.items()
    assert "lenet5" in key and "numpy" in key and entry["measured_s"] > 0 and entry["predicted_s"] > 0
    assert host_speed.host_speed("lenet5", 0, "numpy", measure=False) == speed
    assert host_speed.host_speed("lenet5", 1, "numpy", measure=False) is None  # another seed, another entry
    # ranks that compute side by side are measured side by side: an entry of its own
    assert host_speed.host_speed("lenet5", 0, "numpy", measure=False, concurrency=2) is None
    assert host_speed.host_speed("lenet5", 0, "numpy", concurrency=2) > 0
    assert len(json.loads((tmp_path / "pisplit" / "host-speed.json").read_text())) == 2
    # passes paced as one emulated device runs them (its padding's idle time after each): an entry of its own
    assert host_speed.host_speed("lenet5", 0, "numpy", measure=False, pace=9.0) is None


class _Clock:
    """time for cluster.host_speed: CPU and wall clocks that advance only when told; sleeps recorded."""

    def __init__(self):
        self.now, self.cpu, self.sleeps = 0.0, 0.0, []

    def process_time(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_paced_passes_sleep_out_the_padding_and_count_cold_ones(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(host_speed, "time", clock)

    class Runner:  # 1 ms a pass back to back, 1.5 ms after a sleep (cold caches), 3 ms once in ten
        passes = 0

        def run(self, feeds):
            cold = bool(clock.sleeps) and self.passes >= 3
            self.passes += 1
            clock.cpu += 0.003 if cold and self.passes % 10 == 0 else 0.0015 if cold else 0.001

    made = []
    out = host_speed._measure_paced(Runner(), {}, predicted=0.0005, pace=8.0, passes=8, frame=lambda i: made.append(i) or {})
    assert made == list(range(out["passes"]))  # a new frame for every paced pass, as rank 0 makes them
    # the padding after a pass of t seconds is pace x predicted - t: the device's 4 ms less the pass
    # (the pass then re-estimated from the paced passes so far: their median)
    cost = [0.003 if i % 10 == 0 else 0.0015 for i in range(4, 4 + out["passes"])]  # passes 4, 5, ... are paced
    assert clock.sleeps[0] == pytest.approx(0.004 - 0.001)
    assert clock.sleeps[-1] == pytest.approx(0.004 - 0.0015)
    # at least PACED_MEASURE_S of CPU time in paced passes; their median is the paced (cold) pass, not the warm one
    assert sum(cost) >= host_speed.PACED_MEASURE_S > sum(cost[:-1]) and len(clock.sleeps) == len(cost)
    assert out["measured_s"] == pytest.approx(0.0015) and out["warm_s"] == pytest.approx(0.001)
    assert out["mean_s"] == pytest.approx(sum(cost) / len(cost)) and out["speed"] == pytest.approx(0.0015 / 0.0005)
    # a medium model's padding is capped: a few ms already leave the caches cold
    clock.sleeps.clear()
    host_speed._measure_paced(Runner(), {}, predicted=0.05, pace=8.0, passes=8)
    assert max(clock.sleeps) == pytest.approx(host_speed.MAX_GAP_S)

    class Big:  # 20 ms a pass: timed back to back, as before (measure_here's unpaced passes)
        def run(self, feeds):
            clock.cpu += 0.02

    clock.sleeps.clear()
    assert host_speed._measure_paced(Big(), {}, predicted=0.01, pace=8.0, passes=8) is None and clock.sleeps == []


def test_an_old_or_refreshed_measurement_is_taken_again(tmp_path, monkeypatch):
    # the same fingerprint can be another machine (a CI runner) or this one under other load: a cached
    # speed from there ran one emulated Pi at x0.73 of its calibration
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "pisplit" / "host-speed.json"
    host_speed.host_speed("lenet5", 0, "numpy")
    ((key, entry),) = json.loads(path.read_text()).items()

    def plant(speed, age_s):
        path.write_text(json.dumps({key: {**entry, "speed": speed, "measured_at": entry["measured_at"] - age_s}}))

    plant(123.0, 60)
    assert host_speed.host_speed("lenet5", 0, "numpy") == 123.0  # fresh: reused
    assert host_speed.host_speed("lenet5", 0, "numpy", refresh=True) != 123.0  # --recalibrate
    plant(123.0, host_speed.FRESH_S + 60)
    assert host_speed.host_speed("lenet5", 0, "numpy", measure=False) == 123.0  # `run --emulate` takes what there is
    assert host_speed.host_speed("lenet5", 0, "numpy") != 123.0  # stale: measured again
    assert json.loads(path.read_text())[key]["speed"] != 123.0


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("model,kind", [("alexnet", "rpi3"), ("vgg16", "rpi4")])
def test_one_emulated_device_runs_at_its_calibration(model, kind, tmp_path):
    # this VM's speed changes from run to run and minute to minute by up to ~20%: a miscalibration fails
    # every attempt, a slow moment only one (the later attempts measure this machine again first)
    ratios = cluster_run_ratio(model, f"{kind}:1", 3, tmp_path, attempts=3, bounds=(0.85, 1.15))
    assert 0.85 <= ratios[-1] <= 1.15, f"one emulated {kind} ran at {ratios} of its calibration (three attempts)"
