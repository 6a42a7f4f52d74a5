"""An mpirun that fails before any rank runs (Open MPI's "PMIx server's listener thread failed to start",
seen on a CI machine) is started again; any other failure is not."""
from __future__ import annotations

import os
import stat

from cluster.mpirun import never_started, run_local, run_mpirun

BOX = ("-" * 74 + "\nThe PMIx server's listener thread failed to start. We cannot\ncontinue.\n" + "-" * 74 + "\n")


def fake_mpirun(tmp_path, fail_times: int, message: str = BOX) -> list[str]:
    """A stand-in for mpirun that fails `fail_times` times with `message`, then prints 'ran'."""
    script = tmp_path / "mpirun"
    count = tmp_path / "count"
    (tmp_path / "message").write_text(message)
    script.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {count}
if [ $n -le {fail_times} ]; then cat {tmp_path / 'message'} >&2; exit 213; fi
echo ran
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def starts(tmp_path) -> int:
    return int((tmp_path / "count").read_text())


def test_a_start_failure_is_retried(tmp_path, capfd):
    proc = run_local(fake_mpirun(tmp_path, 2), capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "ran\n" and starts(tmp_path) == 3
    assert capfd.readouterr().err.count("pisplit: mpirun failed to start") == 2


def test_retries_are_bounded(tmp_path):
    proc = run_local(fake_mpirun(tmp_path, 10), capture_output=True, text=True)
    assert proc.returncode == 213 and "listener thread" in proc.stderr and starts(tmp_path) == 3


def test_other_failures_are_not_retried(tmp_path):
    proc = run_local(fake_mpirun(tmp_path, 1, "pisplit: error: rank 1: no input\n"), capture_output=True, text=True)
    assert proc.returncode == 213 and starts(tmp_path) == 1
    # a rank that ran and failed says so in pisplit's words: never a start failure, whatever follows
    assert not never_started(1, "pisplit: error: rank 0: x\n" + BOX)
    assert not never_started(0, BOX)


def test_run_mpirun_retries_too(tmp_path):
    proc = run_mpirun(fake_mpirun(tmp_path, 1), dict(os.environ), timeout=30, capture=True)
    assert proc.returncode == 0 and proc.stdout == "ran\n" and starts(tmp_path) == 2
