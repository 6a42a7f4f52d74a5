"""bench_link_codecs' speedup over one device (issue 15): a paired one-device run off its calibration is
flagged and the speedup taken over a trusted baseline. A unit test of the row logic on synthetic
throughputs (the benchmark's runs take minutes; its numbers are not judged in tests)."""
from __future__ import annotations

import pytest

from bench.link_codecs import FIDELITY, LATE_SHARE, baseline_of, cluster_result, measured_best, trusted_singles, uncaught_late_share
from cluster.emulated_plans import plan_for_devices
from layers import zoo_model

ONE = 100.0  # the one-device plan's calibrated fps


def pair(single_fps: float, fps: float, single_late: float = 0.0, late: float = 0.0) -> dict:
    return {"single_fps": single_fps, "fps": fps, "single_late": single_late, "late": late, "report": {}, "frames": 64, "single_frames": 8}


@pytest.fixture(scope="module")
def plan8():
    return plan_for_devices(zoo_model("mobilenet_v1"), "mobilenet_v1", "rpi3:8", 94e6, "dp", "throughput", "numpy")  # all 8 used


def test_a_slow_paired_baseline_is_flagged_and_the_speedup_uses_the_trusted_runs(plan8):
    # the case: the paired one-device run at x0.79 made 6.85x of a 5.4x
    slow, ok1, ok2 = pair(79.0, 540.0), pair(97.0, 400.0), pair(99.0, 420.0)
    late_single = pair(100.0, 430.0, single_late=LATE_SHARE * 4)  # on its rate but fell behind: no baseline either
    trusted = trusted_singles([slow, ok1, ok2, late_single], ONE)
    assert trusted == [97.0, 99.0]
    row = cluster_result(plan8, [slow], trusted, ONE)
    assert row["baseline_flag"] is not None and "x0.79" in row["baseline_flag"]
    assert row["baseline_fps"] == pytest.approx(98.0) and row["measured_x"] == pytest.approx(540 / 98)
    assert row["paired_x"] == pytest.approx(540 / 79) and row["single_fidelity"] == pytest.approx(0.79)
    assert "median of 2 one-device runs" in row["baseline"] and "x0.97-0.99" in row["baseline"]
    assert row["problem"] is None and row["flagged_baselines"] == 1
    good = cluster_result(plan8, [ok1], trusted, ONE)
    assert good["baseline"] == "paired" and good["baseline_flag"] is None and good["measured_x"] == pytest.approx(400 / 97)
    flagged = cluster_result(plan8, [late_single], trusted, ONE)
    assert "late" in flagged["baseline_flag"] and flagged["measured_x"] == pytest.approx(430 / 98)


def test_within_the_tolerance_is_paired_and_with_no_trusted_run_the_calibrated_rate(plan8):
    edge = pair(ONE * (1 - FIDELITY) + 0.01, 500.0)
    assert baseline_of(edge, [], ONE)["baseline"] == "paired"
    fast = pair(ONE * (1 + FIDELITY + 0.02), 500.0)  # too fast is no baseline either
    row = cluster_result(plan8, [fast], trusted_singles([fast], ONE), ONE)
    assert row["baseline_fps"] == ONE and row["baseline"].startswith("the calibrated one-device rate")
    assert row["measured_x"] == pytest.approx(5.0) and "x1.07" in row["baseline_flag"]


def test_more_speedup_than_devices_or_a_late_cluster_stays_not_a_result(plan8):
    row = cluster_result(plan8, [pair(100.0, 900.0)], [100.0], ONE)  # 9x on 8 identical devices
    assert row["problem"] and "more than their number" in row["problem"]
    # a slow baseline alone no longer makes the ratio implausible: it is taken over the trusted one
    row = cluster_result(plan8, [pair(79.0, 790.0), pair(99.0, 700.0), pair(98.0, 650.0)], [99.0, 98.0], ONE)
    assert row["problem"] is None and row["all_x"] == [round(790 / 98.5, 3), round(700 / 99, 3), round(650 / 98, 3)]
    assert row["measured_x"] == pytest.approx(700 / 99) and row["baseline"] == "paired"  # the median pair
    late = cluster_result(plan8, [pair(100.0, 500.0, late=0.2), pair(100.0, 510.0, late=0.3)], [100.0], ONE)
    assert late["problem"] and "fell behind" in late["problem"] and late["late_pairs"] == 2
    mixed = cluster_result(plan8, [pair(100.0, 500.0, late=0.2), pair(100.0, 450.0)], [100.0], ONE)
    assert mixed["problem"] is None and mixed["measured_x"] == pytest.approx(4.5)  # the pair that kept up


def test_edge_host_validity_counts_lateness_a_rank_did_not_catch_up_in_its_waits():
    # the edge passes the input on (its device step is a reshape) and waits for results most of the run: late
    # by the runtime's own time each frame, caught up in the waits; the host, the bottleneck, kept up
    report = {"wall_s": 5.0, "ranks": [{"emulation_late_s": 0.4, "wait_s": 2.5}, {"emulation_late_s": 0.1, "wait_s": 0.05}]}
    assert uncaught_late_share(report) == pytest.approx(0.01)
    report["ranks"][1]["emulation_late_s"] = 0.45  # the bottleneck fell behind: counts
    assert uncaught_late_share(report) == pytest.approx(0.08)


def test_the_measured_best_is_known_only_when_no_late_run_could_have_beaten_it():
    def m(fps, late_share):
        return (fps, late_share > LATE_SHARE, f"{fps}", None, late_share)

    assert measured_best([m(300, 0.01), m(250, 0.08), m(100, 0.0)])[0] == 300  # 250 / 0.92 = 272 < 300
    assert measured_best([m(300, 0.01), m(290, 0.08)]) is None  # 290 / 0.92 = 315: it might have been the best
    assert measured_best([m(300, 0.2)]) is None and measured_best([]) is None


@pytest.mark.mpi
def test_bench_link_codecs_part_2_runs_through_its_wrapper(tmp_path):
    """Smoke test: the paired runs of a small dp plan under real mpirun, read back from --json; the link
    bytes each run measured must be the plan's (raw input frames: 4 KiB of LeNet-5's 32x32 float32),
    the speedup the cluster's fps over the baseline the row names. Timings are not judged."""
    import json
    import os
    import subprocess

    from tests.conftest import ROOT

    out = tmp_path / "rows.json"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "bench_link_codecs"), "--parts", "2", "--cluster-models", "lenet5",
                           "--emulate-models", "lenet5", "--sizes", "2", "--seconds", "0.05", "--frames", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd="/", env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["links"] for r in rows] == ["raw", "lossless codecs", "codecs, 1% rel. error"]
    for r in rows:
        assert (r["model"], r["devices"], r["part"]) == ("lenet5", "rpi3:2", 2) and r["pairs"] == 1
        assert r["link_bytes_match"] and r["link_bytes"].startswith("in ")
        assert r["measured_x"] == pytest.approx(r["measured_fps"] / r["baseline_fps"])
        assert (r["baseline"] == "paired") == (r["baseline_flag"] is None)
    assert "baseline" in proc.stdout and "meas. x" in proc.stdout
