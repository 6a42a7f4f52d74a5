"""Issue 17: the run's collectives are bounded too. A rank that never reaches the start barrier, or never
sends its statistics at the end, is named by rank 0 within a few stall bounds and the job ends; with
every result in, rank 0 still writes them. Real mpirun ranks under a timeout (tests.cluster.test_stalls_and_partial.mpirun)."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from cluster import transport
from cluster.watched import bcast_text_watched
from cluster.runtime import FAULT_AT_END, FAULT_AT_START, parse_fault
from layers import zoo_model
from layers.errors import PisplitError

from .pipeline_plans import hand_plan
from .test_runtime import reference_outputs
from .test_stalls_and_partial import THREE, mpirun, pisplit_lines

HOST = os.uname().nodename


def test_faults_at_the_start_and_the_end_of_a_run_parse():
    assert parse_fault("2@start:stop") == (2, FAULT_AT_START, "stop") and parse_fault("1@end") == (1, FAULT_AT_END, "error")


def test_a_watched_gather_on_one_rank_returns_its_row():
    row = np.arange(5.0)
    (got,) = transport.gather_rows_watched(transport.self_comm(), row, "the start barrier", 1.0)
    np.testing.assert_array_equal(got, row)


def one_error(proc, seconds: float) -> str:
    """The one pisplit error line of a run that failed, and did so within 30 s (never hung)."""
    assert proc.returncode != 0 and seconds < 30, (seconds, proc.stderr)
    errors = pisplit_lines(proc.stderr, "error")
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.mpi
def test_a_rank_that_never_reaches_the_start_barrier_is_named(tmp_path):
    plan = hand_plan(zoo_model("lenet5"), THREE).save(tmp_path / "plan.json")
    proc, seconds = mpirun(3, "run", plan, "--frames", 50, "--no-progress", "--stall-timeout", 1, "--fail", "2@start:stop")
    assert proc.returncode != 0 and seconds < 30, (seconds, proc.stderr)
    errors = pisplit_lines(proc.stderr, "error")
    assert len(errors) == 1, proc.stderr
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 2 \(host {HOST}\) did not reach the start barrier "
                    r"for \d+\.\d s \(stalled or lost\)", errors[0]), errors
    assert "Traceback" not in proc.stderr


@pytest.mark.mpi
def test_a_rank_that_never_sends_its_statistics_is_named_and_the_results_are_kept(tmp_path):
    graph = zoo_model("lenet5")
    plan = hand_plan(graph, THREE).save(tmp_path / "plan.json")
    out = tmp_path / "y.npz"
    proc, seconds = mpirun(3, "run", plan, "--frames", 40, "--no-progress", "--stall-timeout", 2, "--fail", "1@end:stop",
                           "--output", out)
    assert proc.returncode != 0 and seconds < 30, (seconds, proc.stderr)
    errors = pisplit_lines(proc.stderr, "error")
    assert len(errors) == 1, proc.stderr
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 1 \(host {HOST}\) did not reach the final statistics "
                    r"gather for \d+\.\d s \(stalled or lost\)", errors[0]), errors
    # (Open MPI's own box may follow on the same line: the ranks' stderr interleaves)
    partial = pisplit_lines(proc.stderr, "partial")
    assert len(partial) == 1 and partial[0].startswith(f"pisplit: partial: 40 of 40 frames written to {out}; missing frames none"), partial
    with np.load(out, allow_pickle=False) as z:
        assert z["output_frame_ids"].tolist() == list(range(40)) and z["missing_frame_ids"].size == 0
        np.testing.assert_allclose(z["output_0"], reference_outputs(graph, 40), rtol=1e-5, atol=1e-5)


@pytest.mark.mpi
def test_an_error_at_the_end_of_the_run_ends_the_job_with_one_line(tmp_path):
    plan = hand_plan(zoo_model("lenet5"), THREE).save(tmp_path / "plan.json")
    proc, seconds = mpirun(3, "run", plan, "--frames", 20, "--no-progress", "--fail", "2@end")
    assert proc.returncode != 0 and seconds < 30, (seconds, proc.stderr)
    errors = pisplit_lines(proc.stderr, "error")
    assert len(errors) == 1 and errors[0].startswith(f"pisplit: error: rank 2 (host {HOST}): injected fault at the end of the run "
                                                     "(--fail 2@end:error)"), proc.stderr


@pytest.mark.mpi
def test_a_rank_stuck_loading_the_model_is_named(tmp_path):
    """The setup agreement (every rank's loading error or none) was an Allreduce: a rank that never got
    there left the others waiting forever, silently."""
    plan = hand_plan(zoo_model("lenet5"), THREE).save(tmp_path / "plan.json")
    proc, seconds = mpirun(3, "run", plan, "--frames", 20, "--no-progress", "--stall-timeout", 1, "--fail", "2@load:stop")
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 2 did not reach the end of loading "
                    r"for \d+\.\d s \(stalled or lost\)", one_error(proc, seconds)), proc.stderr


@pytest.mark.mpi
def test_setup_errors_are_still_agreed_on_every_rank(tmp_path):
    plan = hand_plan(zoo_model("lenet5"), THREE).save(tmp_path / "plan.json")
    proc, _ = mpirun(3, "run", plan, "--frames", 0, "--no-progress")
    assert proc.returncode != 0
    errors = pisplit_lines(proc.stderr, "error")
    assert len(errors) == 1 and errors[0].startswith("pisplit: error: --frames 0: must be at least 1"), proc.stderr


# The options' agreement at the start of `pisplit run` (and of a configuration map's run: the same
# cluster.commands.run.agree_options) was an Allreduce, and the split stages' communicators an
# MPI_Comm_split: a rank stopped while starting, or between the end of loading and the split, left
# the others waiting forever, silently. The command's own code (_run) on real ranks, the named rank
# stopped first (before _run, or as it comes to runtime.stage_communicators).
OPTIONS = r"""
import os, signal, sys
from cluster import runtime, transport
from cluster.cli import build_parser
from cluster.commands.run import _run

stopped, point, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
args = build_parser(argv).parse_args(argv)
split = runtime.stage_communicators

def stop_then_split(comm, plan, seconds=0.0):
    if comm.Get_rank() == stopped:
        os.kill(os.getpid(), signal.SIGSTOP)
    return split(comm, plan, seconds)

runtime.stage_communicators = stop_then_split

def body(comm, rank):
    if rank == stopped and point == "options":
        os.kill(os.getpid(), signal.SIGSTOP)
    return _run(args, comm, rank)

sys.exit(transport.on_every_rank(body))
"""


@pytest.mark.mpi
def test_a_rank_that_never_reaches_the_options_agreement_is_named(tmp_path):
    plan = hand_plan(zoo_model("lenet5"), THREE).save(tmp_path / "plan.json")
    proc, seconds = mpirun(3, 2, "options", "run", plan, "--frames", 5, "--no-progress", "--stall-timeout", 0.5, code=OPTIONS)
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 2 did not reach the options' agreement "
                    r"for \d+\.\d s \(stalled or lost\)", one_error(proc, seconds)), proc.stderr


@pytest.mark.mpi
def test_a_rank_that_never_reaches_a_split_stages_communicator_is_named(tmp_path):
    from .test_stalls_and_partial import SPLIT

    plan = hand_plan(zoo_model("lenet5"), SPLIT).save(tmp_path / "plan.json")
    proc, seconds = mpirun(3, 2, "communicators", "run", plan, "--frames", 5, "--no-progress", "--stall-timeout", 0.5, code=OPTIONS)
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 2 did not reach stage 1's communicator "
                    r"for \d+\.\d s \(stalled or lost\)", one_error(proc, seconds)), proc.stderr


# --- pisplit split and pisplit profile: every barrier, transfer and gather is bounded too ---------------------
def test_a_command_fault_names_its_point_and_refuses_what_does_not_apply():
    from cluster.watched import parse_command_fault

    assert parse_command_fault("2@3:stop", 3) == (2, 3, "stop") and parse_command_fault(None, 3) is None
    from cluster.watched import FAULT_AT_EXIT

    assert parse_command_fault("1@exit:stop", 3) == (1, FAULT_AT_EXIT, "stop") and parse_command_fault("0@exit", 2)[1] == FAULT_AT_EXIT
    with pytest.raises(PisplitError, match="exit is not a point of this command"):
        parse_command_fault("1@exit", 3, ("load", "start"))
    with pytest.raises(PisplitError, match="slow applies to pisplit run"):
        parse_command_fault("1@2:slow", 3)
    with pytest.raises(PisplitError, match="end is not a point of this command"):
        parse_command_fault("1@end", 3, ("load", "start"))
    with pytest.raises(PisplitError, match="this run has ranks 0-1"):
        parse_command_fault("2@1", 2)


@pytest.mark.mpi
def test_a_rank_stopped_in_a_data_parallel_split_run_is_named(tmp_path):
    """`pisplit split --kind data-parallel` waited for frames and results in blocking MPI calls: a rank
    stopped in its second run left the others waiting forever, silently."""
    proc, seconds = mpirun(3, "split", "lenet5", "conv1", "--kind", "data-parallel", "--repeat", 2, "--stall-timeout", 1,
                           "--fail", "2@2:stop")
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): no 'frames' transfer in run 2 of the data-parallel "
                    rf"split of conv1 with rank 2 \(host {HOST}\) for \d+\.\d s \(stalled or lost\)", one_error(proc, seconds)), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.mpi
def test_a_rank_stopped_before_the_chains_last_gather_is_named_and_a_killed_one_by_open_mpi(tmp_path):
    proc, seconds = mpirun(2, "split", "lenet5", "conv1", "--kind", "conv-spatial", "--chain", 2, "--repeat", 1,
                           "--stall-timeout", 1, "--fail", "1@end:stop")
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 1 \(host {HOST}\) did not reach the final "
                    r"gather of the timings for \d+\.\d s \(stalled or lost\)", one_error(proc, seconds)), proc.stderr
    # a rank that dies is Open MPI's to name: it ends the job at once
    proc, seconds = mpirun(2, "split", "lenet5", "conv1", "--kind", "conv-spatial", "--chain", 2, "--repeat", 2, "--fail", "1@1:kill")
    assert proc.returncode != 0 and seconds < 30 and not pisplit_lines(proc.stderr, "error"), (seconds, proc.stderr)
    assert re.search(r"process rank 1 with PID \d+ on node \S+ exited on signal 9", " ".join(proc.stderr.split())), proc.stderr


@pytest.mark.mpi
def test_a_rank_stopped_or_killed_in_the_profiles_link_tests_is_named(tmp_path):
    """`pisplit profile` under mpirun timed every link between MPI barriers and blocking sends: a rank
    stopped in the link tests left the others waiting forever."""
    args = ("profile", "--model", "lenet5", "--fractions", "none", "--output", tmp_path / "p.json", "--stall-timeout", 1)
    proc, seconds = mpirun(3, *args, "--fail", "2@4:stop")
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 2 \(host {HOST}\) did not reach link test "
                    r"round trip 4 \(rank 0 and rank 1, 1024 bytes\) for \d+\.\d s \(stalled or lost\)", one_error(proc, seconds)), proc.stderr
    proc, seconds = mpirun(2, *args, "--fail", "1@3:kill")
    assert proc.returncode != 0 and seconds < 30 and not pisplit_lines(proc.stderr, "error"), (seconds, proc.stderr)
    assert re.search(r"process rank 1 with PID \d+ on node \S+ exited on signal 9", " ".join(proc.stderr.split())), proc.stderr
    assert not (tmp_path / "p.json").exists()


# --- the broadcasts outside the pipeline: the host speed under --emulate, a configuration map's switches -----
# The same code the commands call (cluster.commands.run._host_speed, cluster.watched.bcast_text_watched,
# which cluster.switching uses at every switch), on real mpirun ranks; the named rank stops (SIGSTOP) first.
BROADCAST = r"""
import argparse, os, signal, sys
from cluster import transport
from cluster.commands.run import _host_speed
from cluster.watched import bcast_text_watched
from partitioners.plan import Plan

what, stopped = sys.argv[1], int(sys.argv[2])

def body(comm, rank):
    if rank == stopped:
        os.kill(os.getpid(), signal.SIGSTOP)
    if what == "host-speed":
        got = _host_speed(argparse.Namespace(host_speed=None, stall_timeout=1.0), Plan.load(sys.argv[3]), "numpy", comm, rank)
    else:
        got = bcast_text_watched(comm, "3 0 17" if rank == 0 else None, "the switch before frame 40", 1.0, follow_s=2.0)
    print(f"rank {rank}: {got}", flush=True)
    return 0

sys.exit(transport.on_every_rank(body))
"""


def test_a_watched_broadcast_on_one_rank_returns_its_text():
    assert bcast_text_watched(transport.self_comm(), "7 1 30", "the switch before frame 9", 1.0) == "7 1 30"


@pytest.mark.mpi
def test_the_watched_broadcast_delivers_rank_0s_text_to_every_rank():
    proc, _ = mpirun(3, "switch", -1, code=BROADCAST)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n")[:-1]) == [f"rank {r}: 3 0 17" for r in range(3)], proc.stdout


@pytest.mark.mpi
def test_a_rank_stopped_at_the_host_speed_broadcast_is_named_in_one_line(tmp_path):
    """`pisplit run --emulate`'s host-speed broadcast was an MPI Bcast: a rank stopped before it left
    the others waiting forever, silently."""
    plan = hand_plan(zoo_model("lenet5"), THREE).save(tmp_path / "plan.json")
    proc, seconds = mpirun(3, "host-speed", 2, plan, code=BROADCAST)
    assert proc.returncode != 0 and seconds < 30, (seconds, proc.stderr)
    errors = pisplit_lines(proc.stderr, "error")
    assert len(errors) == 1, proc.stderr
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 2 did not reach the host speed's broadcast "
                    r"for \d+\.\d s \(stalled or lost\)", errors[0]), errors
    assert "Traceback" not in proc.stderr


@pytest.mark.mpi
def test_rank_0_stopped_at_a_switch_is_named_by_the_first_other_rank():
    proc, seconds = mpirun(3, "switch", 0, code=BROADCAST)
    assert proc.returncode != 0 and seconds < 30, (seconds, proc.stderr)
    errors = pisplit_lines(proc.stderr, "error")
    assert len(errors) == 1, proc.stderr
    assert re.match(rf"pisplit: error: rank 1 \(host {HOST}\): rank 0 did not complete the switch before frame 40 "
                    r"for \d+\.\d s \(stalled or lost\)", errors[0]), errors


def test_emulate_checks_its_stall_flags_in_one_line():
    import subprocess
    import sys

    for flags, message in ((["--stall-timeout", "-1"], "pisplit: error: --stall-timeout -1.0: must be a number of seconds >= 0 (0: never)"),
                           (["--resilient", "--on-slow", "warn"], "pisplit: error: --on-slow with --resilient: the supervisor's attempts")):
        proc = subprocess.run([sys.executable, "-m", "cluster.cli", "emulate", "lenet5", "--devices", "rpi3:2", *flags],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "TERM": "dumb", "NO_COLOR": "1"})
        assert proc.returncode != 0 and proc.stderr.startswith(message) and len(proc.stderr.splitlines()) == 1, proc.stderr


@pytest.mark.mpi
def test_a_rank_stopped_after_the_last_agreement_does_not_hold_mpis_shutdown(tmp_path):
    """After `pisplit split` finished (its result checked and printed), MPI_Finalize waited for every
    rank: one stopped right then kept the job waiting forever. Now rank 0's watchdog ends it in one line,
    after the command's stall bound (3.5 s here, not the old fixed 10 s)."""
    proc, seconds = mpirun(3, "split", "lenet5", "conv1", "--kind", "conv-spatial", "--repeat", 1, "--json", "--fail", "1@exit:stop",
                           "--stall-timeout", 3.5)
    assert proc.returncode != 0 and seconds < 3.5 + 30, (seconds, proc.stderr)
    assert json.loads(proc.stdout)["ok"] is True  # the result came before the shutdown
    errors = pisplit_lines(proc.stderr, "error")
    assert errors == [f"pisplit: error: rank 0 (host {HOST}): MPI's shutdown (MPI_Finalize) did not end within 3.5 s "
                      "after the job's last agreement: a rank stopped or was lost at the very end; ending the job (this rank's results "
                      "are written)"], proc.stderr


def test_mpis_shutdown_bound_follows_the_stall_bound():
    from cluster.watched import EXIT_GRACE_S, MIN_EXIT_GRACE_S, exit_grace

    assert exit_grace(20.0) == 20.0 and exit_grace(3.5) == 3.5  # a user's --stall-timeout, the end of the job included
    assert exit_grace(0.3) == MIN_EXIT_GRACE_S  # bounded below: MPI_Finalize itself needs a moment
    assert exit_grace(0.0) == exit_grace(None) == EXIT_GRACE_S  # no stall bound (0: never): the fixed bound


# --- pisplit exits --run (a multi-view model across ranks): its start was an Allreduce agreement and an MPI
# Bcast of the host speed; a rank stopped while starting left the others waiting forever, silently. The
# command's own code (cluster.commands.exits._run_views) on real ranks, the named rank stopped first.
VIEWS = r"""
import os, signal, sys
from cluster import transport
from cluster.cli import build_parser
from cluster.commands.exits import _run_views

stopped, argv = int(sys.argv[1]), sys.argv[2:]
args = build_parser(argv).parse_args(argv)

def body(comm, rank):
    if rank == stopped:
        os.kill(os.getpid(), signal.SIGSTOP)
    return _run_views(args, comm, rank)

sys.exit(transport.on_every_rank(body))
"""


@pytest.mark.mpi
def test_a_rank_that_never_reaches_a_multi_view_runs_start_is_named():
    # ddnn_mnist with three of its four end devices missing: rank 0 aggregates, rank 1 is device 3
    proc, seconds = mpirun(2, 1, "exits", "ddnn_mnist", "--run", "--missing", "0,1,2", "--frames", 4, "--stall-timeout", 0.3,
                           code=VIEWS, timeout=60)
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 1 did not reach the options' agreement "
                    r"for \d+\.\d s \(stalled or lost\)", one_error(proc, seconds)), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_multi_view_runs_stall_timeout_is_checked_in_one_line():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "exits", "ddnn_mnist", "--run", "--stall-timeout", "-1"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "TERM": "dumb", "NO_COLOR": "1"})
    assert proc.returncode != 0 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("pisplit: error: --stall-timeout -1.0: must be a number of seconds >= 0 (0: never)"), proc.stderr


# pisplit split's (and profile's) work communicator was an MPI_Comm_split right after the bounded
# agreement and host names: a rank stopped between them left the others waiting forever, silently.
AFTER_HOSTS = r"""
import os, signal, sys
from cluster.cli import main
from cluster.watched import CommandWatch

stopped, argv = int(sys.argv[1]), sys.argv[2:]
learn = CommandWatch.learn_hosts

def learn_then_stop(self):
    learn(self)
    if self.rank == stopped:
        os.kill(os.getpid(), signal.SIGSTOP)

CommandWatch.learn_hosts = learn_then_stop
sys.exit(main(argv))
"""


@pytest.mark.mpi
def test_a_rank_that_never_reaches_the_splits_communicator_is_named():
    proc, seconds = mpirun(3, 2, "split", "lenet5", "conv1", "--kind", "conv-spatial", "--repeat", 1, "--stall-timeout", 0.5,
                           code=AFTER_HOSTS, timeout=60)
    assert re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 2 \(host {HOST}\) did not reach the split's "
                    r"communicator for \d+\.\d s \(stalled or lost\)", one_error(proc, seconds)), proc.stderr
