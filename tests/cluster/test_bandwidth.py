"""Bandwidth traces, the estimator, the state detector and Algorithm 3 (issue 16)."""
from __future__ import annotations

import numpy as np
import pytest

from cluster.bandwidth import (BandwidthTrace, HarmonicEstimator, RuntimeOptimizer, StateDetector, read_throughput_log, read_trace,
                               write_trace)
from layers.errors import PisplitError
from partitioners.edgent import ConfigEntry, ConfigMap
from tests.conftest import ROOT

GOOD = "# a comment\ntime_s,mbit_per_s\n0,2.5\n1.5,0.25\n3,8\n"


def test_a_trace_round_trips_and_steps(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(GOOD)
    tr = read_trace(p)
    assert list(tr.time_s) == [0, 1.5, 3] and list(tr.mbit_per_s) == [2.5, 0.25, 8] and tr.duration_s == 4.5
    assert tr.bps_at(0) == 2.5e6 and tr.bps_at(1.49) == 2.5e6 and tr.bps_at(1.5) == 0.25e6 and tr.bps_at(4.4) == 8e6
    assert tr.bps_at(4.5) == 2.5e6  # repeats
    np.testing.assert_array_equal(tr.bps_at([0.1, 2, 3.1]), [2.5e6, 0.25e6, 8e6])
    assert tr.mean_mbit() == pytest.approx((1.5 * 2.5 + 1.5 * 0.25 + 1.5 * 8) / 4.5)
    back = read_trace(write_trace(tmp_path / "u.csv", tr, ["made here"]))
    np.testing.assert_array_equal(back.mbit_per_s, tr.mbit_per_s)


@pytest.mark.parametrize("text, line, reason", [
    ("time,mbit\n0,1\n", 1, "expected the header"),
    ("time_s,mbit_per_s\n0,1\n1,x\n", 3, "is not two numbers"),
    ("time_s,mbit_per_s\n0,1\n1,2,3\n", 3, "expected 2 fields"),
    ("time_s,mbit_per_s\n0,1\n1,0\n", 3, "must be positive"),
    ("time_s,mbit_per_s\n0,1\n1,-2\n", 3, "must be positive"),
    ("time_s,mbit_per_s\n0,1\n1,inf\n", 3, "must be positive and finite"),
    ("time_s,mbit_per_s\n0,1\n2,1\n# c\n2,1\n", 5, "is not after"),
    ("time_s,mbit_per_s\n1,1\n", 2, "the first row must be at time 0"),
    ("time_s,mbit_per_s\n0,1\nnan,1\n", 3, "finite number of seconds"),
])
def test_a_bad_row_is_refused_with_its_line(tmp_path, text, line, reason):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(PisplitError, match=f"line {line}: .*{reason}"):
        read_trace(p)


def test_empty_and_missing_traces_are_refused(tmp_path):
    (tmp_path / "e.csv").write_text("# nothing\n")
    with pytest.raises(PisplitError, match="empty"):
        read_trace(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("time_s,mbit_per_s\n")
    with pytest.raises(PisplitError, match="no rows"):
        read_trace(tmp_path / "h.csv")
    with pytest.raises(PisplitError, match="cannot read"):
        read_trace(tmp_path / "absent.csv")


def test_the_public_4g_log_format_reads_as_a_trace(tmp_path):
    # the example rows of https://users.ugent.be/~jvdrhoof/dataset-4g/ (format documented there)
    p = tmp_path / "report.log"
    p.write_text("1453121790686 39287 51.0386528885778 3.73220785642186 2493100 1000\n"
                 "1453121791687 40288 51.0386532820580 3.73222847166054 2763504 1001\n"
                 "1453121792686 41287 51.0386553301824 3.73225142858955 2728896 0999\n")
    tr = read_throughput_log(p)
    assert tr.mbit_per_s[0] == pytest.approx(2493100 * 8 / 1000 / 1e3)
    assert tr.mbit_per_s[2] == pytest.approx(2728896 * 8 / 999 / 1e3)
    np.testing.assert_allclose(tr.time_s, [0.0, 1.0, 2.001])
    assert tr.duration_s == pytest.approx(3.0)
    from cluster.bandwidth import load_trace  # what --bandwidth-trace reads: either format

    np.testing.assert_array_equal(load_trace(p).mbit_per_s, tr.mbit_per_s)
    np.testing.assert_array_equal(load_trace(ROOT / "cluster" / "traces" / "lte_a.csv").mbit_per_s,
                                  read_trace(ROOT / "cluster" / "traces" / "lte_a.csv").mbit_per_s)
    p.write_text("1 2 3 4 5\n")
    with pytest.raises(PisplitError, match="line 1: expected 6 columns"):
        read_throughput_log(p)


def test_shipped_traces_read_and_are_small():
    traces = sorted((ROOT / "cluster" / "traces").glob("*.csv"))
    assert len(traces) >= 3
    for path in traces:
        tr = read_trace(path)
        assert path.stat().st_size < 8192 and tr.duration_s >= 60


def test_the_estimator_is_a_harmonic_mean_of_recent_transfers():
    est = HarmonicEstimator(window=3, min_bytes=100)
    assert est.estimate is None
    assert est.add(50, 1.0) is None  # too small to count
    est.add(1000, 1.0)  # 8000 bit/s
    est.add(1000, 0.5)  # 16000
    assert est.estimate == pytest.approx(2 / (1 / 8000 + 1 / 16000))
    est.add(1000, 0.25)
    est.add(1000, 0.25)  # the first sample leaves the window
    assert est.estimate == pytest.approx(3 / (1 / 16000 + 2 / 32000))
    # one outlier burst barely moves it; one slow transfer moves it a lot
    steady = HarmonicEstimator(window=5, min_bytes=1)
    for _ in range(4):
        steady.add(1e5, 0.4)  # 2 Mbit/s
    assert steady.add(1e5, 0.04) < 2.6e6
    slow = HarmonicEstimator(window=5, min_bytes=1)
    for _ in range(4):
        slow.add(1e5, 0.4)
    assert slow.add(1e5, 4.0) < 1.1e6
    lat = HarmonicEstimator(window=1, min_bytes=1, latency_s=0.1)
    assert lat.add(1e5, 0.5) == pytest.approx(1e5 * 8 / 0.4)


STATES = [0.25e6, 0.5e6, 1e6, 2e6, 4e6, 8e6]


def test_the_detector_follows_steps_within_a_few_samples():
    det = StateDetector(STATES, margin=0.1, up_patience=3, down_patience=2, initial=0)
    stream = [0.3e6] * 10 + [6e6] * 10 + [0.6e6] * 10
    states = [det.update(b) for b in stream]
    assert states[:10] == [0] * 10
    assert states[10:12] == [0, 0] and states[12:20] == [4] * 8  # up after 3 samples (6 / 1.1 >= 4)
    assert states[20] == 4 and states[21:] == [1] * 9  # down after 2
    assert det.update(None) == 1


def test_noise_around_a_threshold_does_not_flap():
    rng = np.random.default_rng(0)
    for start in (2, 3):
        det = StateDetector(STATES, margin=0.1, initial=start)
        noise = 2e6 * (1 + rng.uniform(-0.09, 0.09, 2000))
        seen = [det.update(b) for b in noise]
        assert len(set(seen)) == 1, f"flapped from state {start}: {sorted(set(seen))}"
    # through the estimator, with per-transfer noise of +-30% around 2 Mbit/s (a state): no switch
    det = StateDetector(STATES, initial=3)  # the default margin
    est = HarmonicEstimator(window=5, min_bytes=1)
    seen = [det.update(est.add(1e5, 1e5 * 8 / (2e6 * f))) for f in 1 + rng.uniform(-0.3, 0.3, 3000)]
    assert np.count_nonzero(np.diff(seen)) == 0, sorted(set(seen))


def test_a_zero_down_margin_drops_as_soon_as_the_estimate_is_below_the_state():
    det = StateDetector(STATES, margin=0.25, down_margin=0.0, down_patience=2, initial=3)
    assert [det.update(b) for b in (2.1e6, 1.99e6, 1.99e6, 2.2e6, 2.4e6, 2.4e6, 2.4e6)] == [3, 3, 2, 2, 2, 2, 2]
    assert [det.update(2.5e6) for _ in range(3)] == [2, 2, 3]  # back up only at 2 x 1.25
    symmetric = StateDetector(STATES, margin=0.25, down_patience=2, initial=3)
    assert [symmetric.update(b) for b in (1.6e6, 1.6e6, 1.49e6, 1.49e6)] == [3, 3, 3, 2]
    with pytest.raises(PisplitError, match="down margin 1"):
        StateDetector(STATES, down_margin=1)


def test_the_detector_refuses_bad_settings():
    with pytest.raises(PisplitError, match="positive, finite"):
        StateDetector([])
    with pytest.raises(PisplitError, match="margin"):
        StateDetector(STATES, margin=1.0)
    with pytest.raises(PisplitError, match="initial state 9"):
        StateDetector(STATES, initial=9)


def entry(bw, exit, cut, acc=0.9, lat=0.05, fps=20.0):
    import math

    return ConfigEntry("rpi3:1,host:1", bw, exit, cut, 10, "x", "raw", lat, fps, acc, math.exp(acc) + fps, True)


def test_algorithm3_switches_only_when_the_state_changes():
    cmap = ConfigMap("m", 0.1, 0.0, "numpy", (entry(0.5e6, "exit1", 10), entry(2e6, "exit3", 4), entry(8e6, "final", 2))).validate()
    opt = RuntimeOptimizer(cmap, initial_bps=2e6, detector_options={"margin": 0.1, "up_patience": 3, "down_patience": 2})
    assert opt.strategy.exit == "exit3"
    picked = []
    for frame, mbit in enumerate([2.5] * 10 + [0.6] * 10 + [9.5] * 12 + [2.1] * 10):
        picked.append(opt.observe(mbit * 1e6 / 8 * 0.1, 0.1, at=frame * 0.1, frame=frame).exit)
    # down 2 transfers into the drop (down_patience 2), up once the window is fast enough for 3 estimates
    assert [(s.frame, s.from_bps, s.to_bps) for s in opt.switches] == [(11, 2e6, 0.5e6), (25, 0.5e6, 8e6), (33, 8e6, 2e6)]
    assert len(opt.switches) == 3 and picked[0] == "exit3" and picked[-1] == "exit3" and "final" in picked
    assert all("bandwidth" in s.reason and "exit" in s.reason for s in opt.switches)
    assert opt.state_changes == 3
    # a new state with the same strategy is no switch
    same = ConfigMap("m", 0.1, 0.0, "numpy", (entry(0.5e6, "exit1", 10), entry(2e6, "exit1", 10))).validate()
    opt = RuntimeOptimizer(same, initial_bps=2e6, detector_options={"margin": 0.1, "up_patience": 3, "down_patience": 2})
    for frame in range(10):
        opt.observe(0.1e6 / 8, 1.0, frame=frame)
    assert opt.state_changes == 1 and opt.switches == []


def test_a_trace_must_be_well_formed():
    with pytest.raises(PisplitError, match="start at 0"):
        BandwidthTrace(np.array([1.0]), np.array([1.0]), 2.0)
    with pytest.raises(PisplitError, match="duration"):
        BandwidthTrace(np.array([0.0, 1.0]), np.array([1.0, 2.0]), 1.0)


def test_a_transfer_across_trace_pieces_is_served_at_each_rate():
    tr = BandwidthTrace(np.array([0.0, 1.0, 2.0]), np.array([8.0, 0.8, 80.0]), 3.0)  # 1 MB/s, 0.1 MB/s, 10 MB/s
    assert tr.transfer_end(0.0, 0) == 0.0
    assert tr.transfer_end(0.25, 0.5e6) == pytest.approx(0.75)  # within the first piece
    assert tr.transfer_end(0.5, 0.6e6) == pytest.approx(1.0 + 0.1e6 / 0.1e6)  # 0.5 MB by t=1, 0.1 MB at 0.1 MB/s
    assert tr.transfer_end(0.5, 0.65e6) == pytest.approx(2.0 + 0.05e6 / 10e6)  # into the third piece
    # past the end the trace repeats: 10 MB/s for 1 s (to t=3), then 1 MB/s again
    assert tr.transfer_end(2.5, 5.5e6) == pytest.approx(3.0 + 0.5)
    assert tr.transfer_end(5.5, 0.5e6) == pytest.approx(5.55)  # second lap, third piece: 0.5 MB at 10 MB/s
    # the same as a sum over a fine grid of the pieces
    rng = np.random.default_rng(1)
    for _ in range(50):
        start, nbytes = rng.uniform(0, 9), rng.uniform(1, 3e6)
        end = tr.transfer_end(start, nbytes)
        grid = np.linspace(start, end, 20001)
        served = np.sum(tr.bps_at(grid[:-1] + np.diff(grid) / 2) * np.diff(grid)) / 8
        assert served == pytest.approx(nbytes, rel=2e-3)


def test_a_paced_link_replays_a_trace():
    from cluster.emulation import LinkPacer

    tr = BandwidthTrace(np.array([0.0, 1.0, 2.0]), np.array([8.0, 0.8, 80.0]), 3.0)  # 1 MB/s, 0.1 MB/s, 10 MB/s
    link = LinkPacer(1e9, 0.001, trace=tr, epoch=100.0)
    end, duration = link.schedule(0.5e6, 1, now=100.25)
    assert end == pytest.approx(100.751) and duration == pytest.approx(0.501)
    end, duration = link.schedule(0.6e6, 1, now=100.5)  # queued behind the first, from 100.751 on
    # 0.249 MB at 1 MB/s to t=1, 0.1 MB at 0.1 MB/s to t=2, the last 0.251 MB at 10 MB/s; + 1 ms latency
    assert end == pytest.approx(100.0 + 2.0 + 0.251e6 / 10e6 + 0.001) and duration == pytest.approx(end - 100.751)
    plain = LinkPacer(8e6, 0.001)
    assert plain.schedule(1e6, 1, now=5.0) == (pytest.approx(6.001), pytest.approx(1.001))  # no trace: as before


def test_the_map_chooser_picks_a_plan_index_from_the_runtimes_transfers(tmp_path):
    """MapChooser (cluster.switching's `choose`): rows (end, bytes, seconds) in, the index of the plan of
    the detected state out; states that chose the same strategy share one plan."""
    from dataclasses import replace

    from cluster.bandwidth import MapChooser, map_plans

    entries = [entry(0.5e6, "exit1", 10), entry(1e6, "exit1", 10), entry(2e6, "exit3", 4), entry(8e6, "final", 2)]
    entries = [replace(e, plan=f"p{i}.json", graph=f"{e.exit}.json") for i, e in enumerate(entries)]
    cmap = ConfigMap("m", 0.1, 0.001, "numpy", tuple(entries)).validate()
    plans = map_plans(cmap, tmp_path)
    assert [k for k, *_ in plans] == [("exit1", 10, "raw"), ("exit3", 4, "raw"), ("final", 2, "raw")]
    assert plans[0][2] == tmp_path / "p0.json" and plans[2][3] == tmp_path / "final.json"
    chooser = MapChooser(cmap, [k for k, *_ in plans], initial_bps=2.5e6)
    assert chooser.index == 1 and chooser.estimate is None

    def rows(mbit, n, t0):  # 20 KB transfers at `mbit` (plus the link's 1 ms a message)
        return np.array([(t0 + i, 20e3, 20e3 * 8 / (mbit * 1e6) + 0.001) for i in range(n)])

    assert chooser(rows(2.2, 4, 0), 4) == (1, None) and chooser.estimate == pytest.approx(2.2e6)
    index, reason = chooser(rows(0.6, 3, 4), 7)  # two slow estimates confirm the drop
    assert index == 0 and reason.startswith("bandwidth fell to") and "exit exit1" in reason
    assert chooser(rows(0.9, 3, 7), 10) == (0, None)  # 0.5 -> 1 Mbit/s: the same strategy, no switch
    index, reason = chooser(rows(20, 10, 10), 20)
    assert index == 2 and reason.startswith("bandwidth rose to") and chooser.estimate == pytest.approx(20e6)
    with pytest.raises(PisplitError, match="names no plan or graph file"):
        map_plans(replace(cmap, entries=tuple(replace(e, plan=None) for e in cmap.entries)), tmp_path)
    # a map's plan is priced at its state's bandwidth: the chooser drops 10% below it (MAP_DOWN_MARGIN), where the
    # detector's own margin (25%) kept the plan running and missing the requirement
    for options, dropped in ((None, True), ({"down_margin": 0.25}, False)):
        chooser = MapChooser(cmap, [k for k, *_ in plans], initial_bps=2.5e6, detector_options=options)
        assert chooser(rows(2.1, 4, 0), 4) == (1, None)
        assert chooser(rows(1.7, 6, 4), 10)[0] == (0 if dropped else 1)  # 15% below the 2 Mbit/s state


def test_each_map_plan_is_dilated_by_its_own_branchs_speed(tmp_path, monkeypatch):
    """plan_speed_ratios: this machine's speed on each plan's exit branch over its speed on the whole model
    (host_speed's cached measurements, here in a private cache): 1 while nothing is measured, then the
    measured ratios, which cluster.switching divides each plan's dilation by."""
    from cluster.bandwidth import map_plans, plan_speed_ratios, speed_model
    from cluster.commands.configmap import build_map
    from cluster.host_speed import host_speed

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = build_map("branchy_lenet_mnist", "rpi3:1,host:1", "2ms", tmp_path / "map", states="1,1000mbit", quiet=True)
    cmap = ConfigMap.load(path)
    plans = map_plans(cmap, path.parent)
    assert len(plans) == 2 and plan_speed_ratios(cmap, path.parent, "numpy", 1) == [1.0, 1.0]
    ratios = plan_speed_ratios(cmap, path.parent, "numpy", 1, measure=True)
    whole = host_speed(speed_model(cmap, plans[0][3]), 0, "numpy", measure=False)
    own = [host_speed(str(g), 0, "numpy", measure=False) for *_, g in plans]
    assert whole > 0 and all(o > 0 for o in own)
    assert ratios == [o / whole for o in own]


@pytest.mark.netns
def test_a_trace_changes_the_namespace_clusters_shaping_live(emulated_cluster, tmp_path, capsys):
    """cluster.bandwidth.TraceShaper on the network-namespace cluster: tc changes the tbf shaping of a Pi's link
    (both directions) at each row of the trace, in order, while the cluster runs; the last rate holds."""
    import subprocess

    from cluster.bandwidth import TraceShaper, netns_links
    from cluster.emulation import parse_link

    cluster = emulated_cluster
    links = netns_links(cluster, [cluster.n_pis - 1])  # the last Pi: the failure cases' host, its rate unused
    assert len(links) == 2

    def rates():
        out = [subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True, text=True, check=True).stdout
               for ns, dev in links]
        return [o.split(" rate ")[1].split()[0] for o in out]

    trace = BandwidthTrace(np.array([0.0, 0.3, 1.2]), np.array([5.0, 40.0, 0.5]), 1.5, "steps")
    shaper = TraceShaper(trace, links).start()
    try:
        seen = []
        while shaper.running:
            seen.append(tuple(rates()))
        shaper.wait(10)
        assert shaper.error is None
        assert [m for _, m in shaper.changes] == [5.0, 40.0, 0.5]
        assert all(t >= float(trace.time_s[i]) for i, (t, _) in enumerate(shaper.changes))
        assert rates() == ["500Kbit", "500Kbit"]
        assert ("40Mbit", "40Mbit") in seen  # seen live, while the shaper ran
    finally:
        shaper.stop()
        TraceShaper(trace, links).apply(parse_link(cluster.rate) / 1e6)
    assert rates() == ["94Mbit", "94Mbit"]
    # the command a user runs beside `pisplit launch`: the trace replayed, then the cluster's rate again
    from cluster.bandwidth import shape_main

    path = tmp_path / "t.csv"
    path.write_text("time_s,mbit_per_s\n0,3\n0.1,7\n")
    args = [str(path), "--name", cluster.name, "--state", str(cluster.state), "--pis", str(cluster.n_pis - 1)]
    assert shape_main(args) == 0 and rates() == ["94Mbit", "94Mbit"]
    assert "replayed 2 rates" in capsys.readouterr().out
    assert shape_main([*args[:-1], "9"]) == 1 and "--pis 9: the cluster has Pis 0..5" in capsys.readouterr().err
    with pytest.raises(PisplitError, match="tc on eth0 in nosuchns"):
        TraceShaper(trace, [("nosuchns", "eth0")]).apply(1.0)
