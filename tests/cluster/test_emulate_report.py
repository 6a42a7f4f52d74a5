"""What `pisplit emulate` may report: a speedup above the number of identical devices is a
measurement problem (a slow one-device baseline), never a result."""
from __future__ import annotations

from cluster.commands.emulate import implausible_speedup
from partitioners.plan import Device, Plan, Stage


def _plan(kinds):
    devices = tuple(Device(r, k, 1 << 30) for r, k in enumerate(kinds))
    return Plan("m", 1, devices, (Stage(0, 0, 1, tuple(range(len(kinds))), "data-parallel"),))


def test_a_speedup_above_the_device_count_is_reported_as_a_measurement_problem():
    eight = _plan(["rpi3"] * 8)
    assert implausible_speedup(eight, 7.9) is None
    assert implausible_speedup(eight, 8.3) is None  # within timing noise
    problem = implausible_speedup(eight, 10.66)
    assert problem and "10.66x on 8 identical devices" in problem and "measurement problem" in problem
    # mixed devices can beat their count in units of the slowest one
    assert implausible_speedup(_plan(["rpi3", "rpi4"]), 3.0) is None
    assert implausible_speedup(eight, None) is None


def test_emulated_devices_take_a_memory_size_as_plans_do():
    from cluster.emulated_plans import plan_for_devices
    from layers import zoo_model

    plan = plan_for_devices(zoo_model("lenet5"), "lenet5", "rpi3:2@512M", 94e6, "dp", "throughput", "numpy")
    assert [d.memory_bytes for d in plan.devices] == [512 << 20] * 2


def test_a_step_costs_at_most_its_warm_reference(tmp_path):
    import time

    import numpy as np

    from cluster.emulation import ComputeDilation, CoreTokens, EmulatedDevice, LinkPacer

    a = np.random.default_rng(0).random((200, 200))
    work = lambda: [a @ a for _ in range(20)]  # noqa: E731
    seen = []
    for _ in range(3):  # wall clocks: a busy machine can stretch one attempt's referenced step
        device = EmulatedDevice(ComputeDilation(4.0), CoreTokens(tmp_path, 1), LinkPacer(94e6))
        t = time.perf_counter()
        device.compute(work)  # no reference: its own CPU time, dilated
        unreferenced = time.perf_counter() - t
        device.reference("step", 0.001)  # warm, it took 1 ms here
        t = time.perf_counter()
        device.compute(work, "step")
        referenced = time.perf_counter() - t
        assert device.dilation.late_s >= 0
        seen.append((unreferenced, referenced))
        if unreferenced > 4 * 0.004 and referenced < unreferenced:
            return
    raise AssertionError(f"(unreferenced, referenced) seconds of three attempts: {seen}")


def test_the_report_says_how_far_behind_its_clock_each_emulated_frame_ended():
    import numpy as np

    from cluster.report import run_report
    from cluster.runtime import RankStats, RunResult

    plan = _plan(["rpi3"] * 2)
    # rank 0 ended its 4 frames 6 ms behind in all, rank 1 on time; late_s also counts lateness caught up later
    ranks = [RankStats(0, 0, frames=4, late_s=0.05, behind_s=0.006), RankStats(1, 0, frames=4, late_s=0.01)]
    back = RankStats.from_array(ranks[0].to_array())  # as ranks gather them
    assert back.behind_s == 0.006 and back.late_s == 0.05
    result = RunResult(ranks=[back, ranks[1]], frame_ids=np.arange(8), latency_s=np.full(8, 0.1),
                       done_s=np.arange(1, 9) * 0.1, wall_s=0.8)
    rep = run_report(plan, result, "numpy", emulated=True)
    assert [r["emulation_behind_ms_per_frame"] for r in rep["ranks"]] == [1.5, 0.0]
    assert rep["emulation_behind_ms_per_frame"] == 1.5 and rep["ranks"][0]["emulation_late_s"] == 0.05
    assert run_report(plan, result, "numpy", emulated=False)["emulation_behind_ms_per_frame"] is None
