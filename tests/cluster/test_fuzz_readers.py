"""Issue 17: every file pisplit reads, mutated from a valid one (hypothesis), ends in success or one line
`pisplit: error: ...` naming the file, with a non-zero status: never a traceback or a hang. The CLI runs
in this process (cluster.cli.main, no --debug); each case under an alarm (tests/cluster/fuzz_readers.py).
A few hundred cases per reader here; scripts/bench_fuzz runs thousands and counts them."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from .fuzz_readers import READERS, run_cli, write_case

CASES = {".npy": 300, "graph-json": 300, "graph-npz": 300, "graph-npz-arrays": 250, ".tflite": 300, "profile": 200, "inventory": 120}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_mutated_file_gives_one_line_naming_it(name, tmp_path):
    reader = READERS[name]
    base = reader.make(tmp_path)
    valid = run_cli(reader.argv(base))
    assert valid.status == 0 and valid.problem(reader.names(base)) is None, valid  # the unmutated file is read
    failures, errors = [], []

    @settings(max_examples=CASES[name], database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(reader.mutations(base))
    def case(content):
        outcome = run_cli(reader.argv(write_case(reader, base, content)))
        why = outcome.problem(reader.names(base))
        errors.append(outcome.status != 0)
        if why:
            failures.append(why)
        assert why is None, why

    case()
    assert not failures
    assert sum(errors) >= len(errors) // 5, f"{name}: only {sum(errors)} of {len(errors)} mutations were refused"  # the fuzz bites


def test_bench_fuzz_counts_cases_per_reader():
    import json
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["bash", str(root / "scripts" / "bench_fuzz"), "--cases", "20", "--readers", ".npy,graph-npz", "--json"],
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["reader"]: r for r in json.loads(proc.stdout)["readers"]}
    assert set(rows) == {".npy", "graph-npz"}
    for r in rows.values():
        assert r["cases"] == 20 and r["read"] + r["refused"] == 20 and r["broken"] == 0


def test_a_graph_without_nodes_is_refused_naming_the_file(tmp_path):
    """Found by bench_fuzz at 10,000 cases: a graph whose nodes were emptied and whose output is its
    input ended `pisplit show` in 'max() arg is an empty sequence', naming nothing."""
    import json

    reader = READERS["graph-json"]
    base = reader.make(tmp_path)
    doc = json.loads(base.read_text())
    doc["nodes"], doc["outputs"] = [], list(doc["inputs"])
    base.write_text(json.dumps(doc))
    outcome = run_cli(reader.argv(base))
    assert outcome.problem(reader.names(base)) is None and outcome.status == 1, outcome
    assert outcome.stderr.strip() == f"pisplit: error: model file {base}: nodes: expected a list of at least one node, got []"


def test_a_format_version_with_a_line_break_is_one_line(tmp_path):
    """Found by bench_fuzz at 10,000 cases: the unsupported version was printed as it was, its newline too."""
    import json

    reader = READERS["graph-json"]
    base = reader.make(tmp_path)
    doc = json.loads(base.read_text())
    doc["version"] = "\x07\n\xa8"
    base.write_text(json.dumps(doc))
    outcome = run_cli(reader.argv(base))
    assert outcome.problem(reader.names(base)) is None and outcome.status == 1, outcome
    assert outcome.stderr.strip() == (f"pisplit: error: model file {base}: graph format version \"\\u0007\\n\\u00a8\" is not supported "
                                      "(expected 1)")


def test_an_input_with_no_frame_is_refused_naming_the_file(tmp_path):
    """Found by bench_fuzz at 10,000 cases: an .npy of shape (0, 32, 32, 1) reached the engine, whose
    error named the model and not the file."""
    import numpy as np

    reader = READERS[".npy"]
    base = reader.make(tmp_path)
    np.save(base, np.zeros((0, 32, 32, 1), np.float32), allow_pickle=False)
    outcome = run_cli(reader.argv(base))
    assert outcome.problem(reader.names(base)) is None and outcome.status == 1, outcome
    assert outcome.stderr.strip() == f"pisplit: error: input {base}: shape (0, 32, 32, 1) holds no frame (axis 0 is 0)"
