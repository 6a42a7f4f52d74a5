"""Issue 17: `pisplit run --resilient` survives a lost rank. The supervisor relaunches mpirun on the
surviving devices with a new plan and reruns only the frames without a result; rank 0's journal keeps
what was answered before the job went down (a SIGKILL included). Real mpirun ranks, real faults
(--fail RANK@FRAME:kill|stop|slowN), outputs against the unsplit reference, under a timeout."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from cluster.supervisor import (Failure, ResultJournal, devices_in_plan, failed_rank, read_journal, recovery_phases, replan)
from layers import zoo_model
from layers.errors import PisplitError
from partitioners.plan import Device

from .pipeline_plans import hand_plan
from .test_runtime import reference_outputs
from .test_stalls_and_partial import THREE, end_job

ROOT = Path(__file__).resolve().parents[2]
HOST = os.uname().nodename


# --- in process ------------------------------------------------------------------------------------------
def test_the_journal_keeps_whole_records_and_drops_a_torn_one(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "j"
    journal = ResultJournal(path, ["b", "a"], [(1, 3), (1, 2, 2)], timeline={"options": 1700000000.5, "warm_up_s": 0.25, "none": None})
    frames = {f: {"b": rng.standard_normal((1, 3), np.float32), "a": rng.standard_normal((1, 2, 2), np.float32)} for f in (4, 0, 7)}
    for f, tensors in frames.items():
        journal.append(f, tensors)
    journal.close()
    with open(path, "ab") as f:  # a record cut short by a kill
        f.write(np.int64(9).tobytes() + b"\0" * 11)
    got = read_journal(path)
    assert got.names == ["b", "a"] and got.shapes == [(1, 3), (1, 2, 2)] and got.ids.tolist() == [4, 0, 7]
    assert got.timeline == {"options": 1700000000.5, "warm_up_s": 0.25}  # the run's set-up times, in the header
    assert np.all(np.diff(got.times) >= 0) and got.values.shape == (3, 7)
    for row, f in zip(got.values, (4, 0, 7)):
        np.testing.assert_array_equal(row, np.concatenate([frames[f]["b"].ravel(), frames[f]["a"].ravel()]))
    assert read_journal(tmp_path / "none") is None
    with pytest.raises(FileExistsError):  # never appended to a journal someone else made
        ResultJournal(path, ["b"], [(1, 3)])
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_the_failed_rank_is_read_from_what_the_job_printed():
    killed = ("--------\nprterun noticed that process rank 2 with PID 22565 on node vm exited on\nsignal 9 (Killed).\n---\n")
    assert failed_rank(killed) == Failure(2, "vm", "exited on signal 9 (Killed)")
    stall = "pisplit: error: rank 2 (host a): no input of frame 200 for stage 2 from rank 1 (host b) for 3.1 s (stalled or lost)\n"
    assert failed_rank(stall) == Failure(1, "b", stall.split("(host a): ")[1].strip())
    barrier = "pisplit: error: rank 0 (host a): rank 3 (host c) did not reach the start barrier for 6.0 s (stalled or lost)\n"
    assert failed_rank(barrier).rank == 3
    alone = "pisplit: partial: ...\npisplit: error: rank 2 (host a): injected fault at frame 5 (--fail 2@5:error)\n"
    assert failed_rank(alone) == Failure(2, "a", "injected fault at frame 5 (--fail 2@5:error)")
    assert failed_rank("pisplit: error: input x.npy: no such file\n") is None  # every rank agreed: not a device's fault
    node = ("PRTE has lost communication with a remote daemon.\n\n  HNP daemon   : [prterun-head-1@0,0] on node head\n"
            "  Remote daemon: [prterun-head-1@0,2] on node pi-1\n\nThis is usually due to either a failure of the TCP network\n")
    assert failed_rank(node) == Failure(-1, "pi-1", "its host stopped answering (mpirun lost its daemon there)")
    hung_up = ("An MPI communication peer process has unexpectedly disconnected.  This\nusually indicates a failure in the peer process "
               "...\n\n  Local host: pi-0\n  Local PID:  13180\n  Peer host:  pi-1\n-----\nprterun has exited due to process rank 0 "
               "with PID 13180 on node pi-0 calling\n\"abort\".\n")
    assert failed_rank(hung_up) == Failure(-1, "pi-1", "its MPI connection broke off (the rank there died, or the host went)")
    assert failed_rank("Connection to 10.213.7.11 closed by remote host.\r\n") == Failure(-1, "10.213.7.11", "its ssh connection was lost "
                                                                                      "(closed by the remote host)")


def test_a_recovery_is_split_into_its_phases_with_model_load_apart():
    t0 = 1000.0
    # the job ended at 10 s; the next mpirun at 10.2 s; its rank 0 started at 10.5, every rank agreed on its
    # options at 12.0, reached the start barrier at 15.0 after the slowest rank's 0.5 s warm-up; first result at 15.3 s
    timeline = {"process_start": t0 + 10.5, "options": t0 + 12.0, "loaded": t0 + 13.0, "set_up": t0 + 13.5, "started": t0 + 15.0,
                "weights_s": 1.0, "warm_up_s": 0.5}
    phases = recovery_phases(10.0, 10.2, timeline, 15.3, t0)
    assert phases == pytest.approx({"replan_s": 0.2, "launch_s": 0.3, "start_s": 1.5, "model_load_s": 2.5, "warm_up_s": 0.5,
                                    "first_result_s": 0.3})
    assert list(phases) == ["replan_s", "launch_s", "start_s", "model_load_s", "warm_up_s", "first_result_s"]
    # an attempt whose rank 0 could not say when it started: mpirun's start to the options' agreement is one phase
    partial = recovery_phases(10.0, 10.2, {k: v for k, v in timeline.items() if k != "process_start"}, 15.3, t0)
    assert partial["start_s"] == pytest.approx(1.8) and "launch_s" not in partial
    assert sum(recovery_phases(10.0, 10.2, {}, 15.3, t0).values()) == pytest.approx(5.3)


def test_a_replan_uses_the_survivors_and_says_when_the_model_no_longer_fits():
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, THREE)
    survivors = [d for d in plan.devices if d.rank != 1]
    new = replan(plan, survivors, graph)
    assert new.n_ranks <= 2 and new.planner == "dp" and new.model == plan.model
    assert devices_in_plan(new, survivors) == list(range(new.n_ranks))
    with pytest.raises(PisplitError, match="no devices left"):
        replan(plan, [], graph)
    tiny = [Device(0, "rpi3", 300 << 20)]
    with pytest.raises(PisplitError, match=r"vgg16: the model no longer fits on the 1 surviving device: "):
        replan(hand_plan(zoo_model("vgg16"), [(0, len(zoo_model("vgg16")), [0], "single")], kind="rpi3"), tiny, zoo_model("vgg16"))


def test_resilient_is_refused_under_mpirun(tmp_path, monkeypatch, capsys):
    from cluster.cli import main

    plan = hand_plan(zoo_model("lenet5"), THREE).save(tmp_path / "plan.json")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert main(["run", str(plan), "--resilient"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resilient: run `pisplit run --resilient PLAN.json` without mpirun" in err[0]


# --- real mpirun ------------------------------------------------------------------------------------------
def resilient(*args, timeout: float = 180) -> tuple[subprocess.CompletedProcess, dict]:
    """`pisplit run --resilient ... --json` in a subprocess -> (process, report). Anything the run leaves
    behind (stopped ranks) is continued and killed."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "PISPLIT_TEST_JOB": marker, "TERM": "dumb"}
    cmd = [sys.executable, "-m", "cluster.cli", "run", "--resilient", "--json", *map(str, args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"HANG: pisplit {' '.join(cmd[3:])} still running after {timeout} s")
    finally:
        end_job(marker)
    doc = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}
    return proc, doc


def check_every_frame_once(out: Path, graph, frames: int) -> None:
    with np.load(out, allow_pickle=False) as z:
        assert "partial" not in z and sorted(z["frame_ids"].tolist()) == list(range(frames))
        np.testing.assert_allclose(z["output_0"], reference_outputs(graph, frames), rtol=1e-5, atol=1e-5)


@pytest.mark.mpi
def test_a_killed_rank_costs_seconds_not_frames(tmp_path):
    """SIGKILL of rank 2 at frame 30 (Open MPI takes the whole job down): the 30 frames answered are
    kept, the plan is remade on the two survivors and the other 170 frames run there. The frames come
    from --input with fewer rows than the stream (used round-robin): a retry's frame i is the stream's
    frame IDS[i], so it reads row IDS[i] % F of the input, not row i."""
    graph = zoo_model("lenet5")
    name, shape = next(iter(graph.inputs.items()))
    x = np.random.default_rng(5).uniform(-1, 1, (7, *shape[1:])).astype(np.float32)
    assert x.std() > 0.3
    np.save(tmp_path / "x.npy", x, allow_pickle=False)
    plan = hand_plan(graph, THREE).save(tmp_path / "plan.json")
    out = tmp_path / "y.npz"
    proc, doc = resilient(plan, "--frames", 200, "--input", tmp_path / "x.npy", "--fail", "2@30:kill", "--output", out)
    assert proc.returncode == 0, proc.stderr
    rows = np.stack([graph.forward(**{name: x[i][None]})[0] for i in range(7)])
    with np.load(out, allow_pickle=False) as z:
        assert "partial" not in z and sorted(z["frame_ids"].tolist()) == list(range(200))
        np.testing.assert_allclose(z["output_0"], rows[np.arange(200) % 7], rtol=1e-5, atol=1e-5)
    assert doc["every_frame_once"] and doc["frames_duplicated"] == 0 and doc["frames_missing"] == []
    (failure,) = doc["failures"]
    assert failure["rank"] == 2 and failure["cause"] == "exited on signal 9 (Killed)" and failure["host"] == HOST
    assert failure["frames_kept"] == 30 and failure["time_lost_s"] > 0
    # the recovery by phase (the next attempt's timeline), model load apart: the phases add up to it
    phases = failure["recovery"]
    assert list(phases) == ["replan_s", "launch_s", "start_s", "model_load_s", "warm_up_s", "first_result_s"], phases
    assert sum(phases.values()) == pytest.approx(failure["recovery_s"], abs=0.05) and failure["model_load_s"] == phases["model_load_s"]
    assert failure["recovery_without_model_load_s"] == pytest.approx(failure["recovery_s"] - phases["model_load_s"])
    first, second = doc["attempts"]
    assert (first["ranks"], first["frames_delivered"], first["exit"] != 0) == (3, 30, True)
    assert (second["ranks"], second["frames_asked"], second["frames_delivered"], second["exit"]) == (doc["ranks_total"], 170, 170, 0)
    assert doc["ranks_total"] < 3 and doc["plan"]["planner"] == "dp"
    assert "rank 2 (rpi4, host " in proc.stderr and "lost: exited on signal 9 (Killed); 30 of 200 frames kept; replanning on 2 devices" in proc.stderr


@pytest.mark.mpi
def test_a_stalled_rank_and_a_slow_one_are_dropped(tmp_path):
    """A rank stopped (SIGSTOP) in the first attempt is named by its neighbour after the stall bound; a
    rank of the second plan turns a thousand times slower (--fail R@F:slow1000: alive, answering
    pings, each frame well within the stall bound) and, once it is a stall bound behind its own pace,
    fails as a rank falling behind; the third attempt finishes on what is left."""
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 2, [0], "single"), (2, 4, [1], "single"), (4, 6, [2], "single"), (6, 9, [3], "single")])
    out = tmp_path / "y.npz"
    proc, doc = resilient(plan.save(tmp_path / "plan.json"), "--frames", 150, "--stall-timeout", 2,
                          "--fail", "1@20:stop", "--fail", "1@70:slow1000", "--output", out)
    assert proc.returncode == 0, proc.stderr
    check_every_frame_once(out, graph, 150)
    first, second = doc["failures"]
    assert first["rank"] == 1 and first["cause"].endswith("(stalled or lost)") and first["frames_kept"] >= 19
    assert second["rank"] == 1 and second["cause"].startswith("falling behind: frames ") and second["cause"].endswith(
        "beyond the stall bound of 2 s (slow)"), second
    assert [a["ranks"] for a in doc["attempts"]][0] == 4 and len(doc["attempts"]) == 3
    assert sum(a["frames_delivered"] for a in doc["attempts"]) == 150


@pytest.mark.mpi
@pytest.mark.parametrize("n_ranks", [3, 4, 8])
def test_a_rank_killed_at_a_random_frame(tmp_path, n_ranks):
    rng = np.random.default_rng([17, n_ranks])
    victim, frame = int(rng.integers(0, n_ranks)), int(rng.integers(1, 120))
    graph = zoo_model("lenet5")
    n = len(graph)
    cuts = np.linspace(0, n, n_ranks + 1).astype(int) if n_ranks <= n else None
    stages = [(int(a), int(b), [i], "single") for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))] if n_ranks <= n else \
        [(0, n, list(range(n_ranks)), "data-parallel")]
    out = tmp_path / "y.npz"
    proc, doc = resilient(hand_plan(graph, stages).save(tmp_path / "plan.json"), "--frames", 160, "--fail", f"{victim}@{frame}:kill",
                          "--output", out, timeout=240)
    assert proc.returncode == 0, (victim, frame, proc.stderr)
    check_every_frame_once(out, graph, 160)
    (failure,) = doc["failures"]
    assert failure["rank"] == victim and failure["cause"] == "exited on signal 9 (Killed)", (victim, frame, failure)


@pytest.mark.mpi
def test_emulate_resilient_survives_a_stalled_emulated_pi(tmp_path):
    """A stopped (SIGSTOP) emulated Pi is named after emulate's --stall-timeout, which reaches every
    attempt's ranks: the wait that named it is under the default bound's 10 s floor (1 s, then a 2 s ping)."""
    from cluster.runtime import DEFAULT_MIN_STALL_S

    graph = zoo_model("lenet5")
    marker = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PISPLIT_TEST_JOB": marker, "TERM": "dumb"}
    try:
        proc = subprocess.run([sys.executable, "-m", "cluster.cli", "emulate", "lenet5", "--devices", "rpi4:3", "--frames", "40",
                               "--resilient", "--stall-timeout", "1", "--fail", "1@10:stop", "--json"], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=240)
    finally:
        end_job(marker)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["emulated"] and doc["every_frame_once"] and len(doc["failures"]) == 1
    (failure,) = doc["failures"]
    waited = re.search(r"for (\d+\.\d) s \(stalled or lost\)$", failure["cause"])
    assert failure["rank"] == 1 and waited and float(waited.group(1)) < DEFAULT_MIN_STALL_S, failure
    expected = np.argmax(reference_outputs(graph, 40).reshape(40, -1), axis=1)
    assert doc["argmax"] == expected.tolist()


@pytest.mark.mpi
def test_bench_resilience_reports_the_failure_and_no_frame_lost():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "bench_resilience"), "--models", "lenet5", "--devices", "rpi4:3", "--failures", "1",
                           "--frames", "24", "--no-baseline", "--json"], capture_output=True, text=True, timeout=300, cwd="/",
                          env={**os.environ, "TERM": "dumb", "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["every_frame_once"] and run["frames_lost"] == 0 and run["frames_duplicated"] == 0
    (failure,) = run["failures"]
    assert failure["cause"] == "exited on signal 9 (Killed)" and failure["time_lost_s"] > 0 and len(run["attempts"]) == 2


@pytest.mark.mpi
def test_when_no_device_is_left_the_frames_answered_are_still_written(tmp_path):
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, [(0, 4, [0], "single"), (4, 9, [1], "single")]).save(tmp_path / "plan.json")
    out = tmp_path / "y.npz"
    proc, _ = resilient(plan, "--frames", 100, "--fail", "1@20:kill", "--fail", "0@50:kill", "--output", out)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("pisplit: error", "pisplit: partial"))]
    assert len(lines) == 2 and lines[1] == ("pisplit: error: resilient run of lenet5: no devices left (after 2 failures; the last: "
                                            "rank 0: exited on signal 9 (Killed))"), proc.stderr
    with np.load(out, allow_pickle=False) as z:
        kept = z["output_frame_ids"].tolist()
        assert bool(z["partial"]) and sorted(kept) == kept and sorted(kept + z["missing_frame_ids"].tolist()) == list(range(100))
        assert len(kept) >= 50  # 20 from the first attempt, up to frame 50 from the second
        np.testing.assert_allclose(z["output_0"], reference_outputs(graph, 100)[kept], rtol=1e-5, atol=1e-5)
    assert lines[0] == f"pisplit: partial: {len(kept)} of 100 frames written to {out}; missing frames {len(kept)}-99"


def test_a_job_stuck_after_a_ranks_error_line_is_stopped():
    """A vanished host's daemon can keep mpirun from ever ending the job after a rank has said what went
    wrong: the supervisor's mpirun is stopped once the error line is that old."""
    from cluster.mpirun import run_mpirun

    t = time.monotonic()
    # exec: the process stopped is the one holding the pipes, as mpirun is (a shell's child kept them open:
    # the readers then waited out their 5 s joins, 10 s of this test)
    proc = run_mpirun(["sh", "-c", "echo 'pisplit: error: rank 2 (host h): no input' >&2; exec sleep 60"], dict(os.environ),
                      capture=True, error_grace_s=1.0)
    assert time.monotonic() - t < 15 and proc.returncode != 0
    assert proc.stderr.startswith("pisplit: error: rank 2 (host h): no input")


def test_fault_and_output_flags_outside_a_resilient_run_are_one_line_errors(tmp_path, capsys):
    from cluster.cli import main

    plan = hand_plan(zoo_model("lenet5"), THREE).save(tmp_path / "plan.json")
    (tmp_path / "inventory.ini").write_text("[p]\na ansible_host=127.0.0.1\n")
    cases = [(["emulate", "lenet5", "--devices", "rpi4:2", "--fail", "1@3:kill"], "--fail: pisplit emulate injects faults with --resilient"),
             (["launch", str(plan), "--inventory", str(tmp_path / "inventory.ini"), "--fail", "1@3"], "--fail and --output: with --resilient"),
             (["run", str(plan), "--resilient", "--trace", str(tmp_path / "t.json")], "--resilient with --trace: not supported"),
             (["run", str(plan), "--fail", "1@3", "--fail", "2@4"], "--fail given 2 times")]
    for argv, words in cases:
        status = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 1 and len(err) == 1 and err[0].startswith("pisplit: error: ") and words in err[0], (argv, err)


def test_a_replan_keeps_the_plans_link_codecs():
    """Issue 15 with 17: a replan on the survivors chooses codecs again from the plan's codec table
    (the plan the planner makes for those devices with it); without a table a cut the new plan shares
    with the old keeps the old plan's lossless codec, never a lossy one (unchecked on the new plan)."""
    from dataclasses import replace

    from partitioners.cost import make_cluster
    from partitioners.codec_cost import codec_cost_model
    from partitioners.devices import parse_devices
    from partitioners.planners import make_plan
    from tests.partitioners.test_link_pricing import hand_table

    from cluster.supervisor import kept_codecs

    graph = zoo_model("alexnet")
    table = hand_table(graph, accuracy_loss=None)
    four = make_plan(graph, codec_cost_model(graph, make_cluster(parse_devices("rpi3:4"), 94e6), codecs=table), "dp", "throughput", "alexnet", "numpy")
    assert four.input_codec == "zstd"  # (links overlap compute, issue 18: its stage links stay raw)
    survivors = [d for d in four.devices if d.rank != 3]
    new = replan(four, survivors, graph, table)
    direct = make_plan(graph, codec_cost_model(graph, make_cluster(parse_devices("rpi3:3"), 94e6), codecs=table), "dp", "throughput", "alexnet", "numpy")
    assert [(s.node_start, s.node_stop, s.send_codec) for s in new.stages] == [(s.node_start, s.node_stop, s.send_codec) for s in direct.stages]
    assert new.input_codec == direct.input_codec == "zstd" and new.predicted_throughput_fps == pytest.approx(direct.predicted_throughput_fps)
    assert new.predicted_throughput_fps > replan(four, survivors, graph).predicted_throughput_fps  # raw links: slower
    # no table: the old plan's lossless codecs where the cuts coincide, lossy ones dropped (a two-stage plan
    # whose first link was zstd)
    assert len(direct.stages) == 2
    zstd = replace(direct, stages=tuple(replace(s, send_codec="zstd") if s.index == 0 else s for s in direct.stages))
    coded = replace(direct, stages=tuple(replace(s, send_codec="jpeg:50") if s.index == 0 else s for s in direct.stages))
    bare = replace(direct, stages=tuple(replace(s, send_codec="raw") for s in direct.stages), notes=())
    kept = kept_codecs(zstd, bare)
    assert [s.send_codec for s in kept.stages] == [s.send_codec for s in zstd.stages] == ["zstd", "raw"]
    assert kept.notes[-1].startswith(f"link codecs of the plan before the failure kept at cut {zstd.stages[0].node_stop} ")
    assert kept_codecs(coded, bare) == bare  # a lossy codec is not carried over
    unchanged = replan(hand_plan(zoo_model("lenet5"), THREE), [d for d in hand_plan(zoo_model("lenet5"), THREE).devices if d.rank != 1], zoo_model("lenet5"))
    assert all(s.send_codec == "raw" for s in unchanged.stages) and not any("kept at cut" in n for n in unchanged.notes)


@pytest.mark.mpi
def test_a_resilient_run_with_early_exits_answers_as_the_reference(tmp_path):
    """Issue 14 with 17: `pisplit run --resilient --exit` after a killed rank: every frame once, each
    answered by the exit the single-process reference picks, with that exit's output (the journal
    keeps the answering exit), and the exit counts over both attempts."""
    from layers import load_model
    from layers.trained.data import load_split, model_inputs
    from partitioners.exits import reference_answers, resolve_exits

    graph = load_model("branchy_lenet_digits")
    x = model_inputs("digits", "single", load_split("digits").x_test, "test")["input"][:40].astype(np.float32)
    np.save(tmp_path / "x.npy", x, allow_pickle=False)
    plan = hand_plan(graph, [(0, len(graph), [0, 1, 2], "data-parallel")], kind="rpi3", model="branchy_lenet_digits").save(tmp_path / "p.json")
    out = tmp_path / "y.npz"
    proc, doc = resilient(plan, "--frames", 40, "--input", tmp_path / "x.npy", "--fail", "2@12:kill", "--exit", "exit1=0.05", "--output", out)
    assert proc.returncode == 0, proc.stderr
    points = resolve_exits(graph, {"exit1": 0.05})
    index, answer = reference_answers(graph, graph.execute({"input": x}), points)
    assert 0 < (index == 0).sum() < 40  # both exits answer some frames
    assert doc["every_frame_once"] and len(doc["failures"]) == 1
    assert doc["exits"] == {"exit1": int((index == 0).sum()), "final": int((index == 1).sum())}
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z["frame_ids"].tolist()) == list(range(40)) and z["exit_names"].tolist() == ["exit1", "final"]
        np.testing.assert_array_equal(z["exit_index"], index)
        names = z["names"].tolist()
        got = np.stack([z[f"output_{names.index(t)}"][i].reshape(-1) for i, t in enumerate(np.where(index == 0, "exit1", names[-1]))])
    np.testing.assert_allclose(got, answer, rtol=1e-5, atol=1e-6)
