"""Issue 17: the run's collectives are bounded too. A rank that never reaches the start barrier, or never
sends its statistics at the end, is named by rank 0 within a few stall bounds and the job ends; with
every result in, rank 0 still writes them. Real mpirun ranks under a timeout (tests.cluster.test_stalls_and_partial.mpirun)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from cluster import transport
from cluster.runtime import FAULT_AT_END, FAULT_AT_START, parse_fault
from layers import zoo_model

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
    assert proc.returncode != 0 and seconds < 30, (seconds, proc.stderr)
    errors = pisplit_lines(proc.stderr, "error")
    assert len(errors) == 1 and re.match(rf"pisplit: error: rank 0 \(host {HOST}\): rank 2 did not reach the end of loading "
                                             r"for \d+\.\d s \(stalled or lost\)", errors[0]), proc.stderr


@pytest.mark.mpi
def test_setup_errors_are_still_agreed_on_every_rank(tmp_path):
    plan = hand_plan(zoo_model("lenet5"), THREE).save(tmp_path / "plan.json")
    proc, _ = mpirun(3, "run", plan, "--frames", 0, "--no-progress")
    assert proc.returncode != 0
    errors = pisplit_lines(proc.stderr, "error")
    assert len(errors) == 1 and errors[0].startswith("pisplit: error: --frames 0: must be at least 1"), proc.stderr
