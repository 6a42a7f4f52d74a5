"""ruff and mypy over the tree with the configuration in pyproject.toml ([tool.ruff], [tool.mypy]), so
CI runs them with the tests. Both come with the test extra (scripts/setup installs it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, require


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    require(found is not None, f"{name} is not installed (it is in the test extra: bash scripts/setup)")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_ruff_finds_nothing():
    proc = _run([_tool("ruff"), "check", "--no-fix", "--output-format", "concise", "."])
    assert proc.returncode == 0, f"ruff check:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"


def test_mypy_finds_nothing():
    proc = _run([_tool("mypy")])  # the packages and options of [tool.mypy]
    assert proc.returncode == 0, f"mypy:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
    assert "Success: no issues found" in proc.stdout


# What measures the machine it runs on: timers, allocation tracing, machine facts. cluster.measure does
# that; the planner package only plans, so a plan is a function of its inputs alone.
MEASURING_MODULES = {"time", "timeit", "tracemalloc", "platform", "resource", "psutil", "cluster", "mpi4py"}
MEASURING_CALLS = {("os", "cpu_count"), ("os", "getloadavg"), ("os", "times"), ("os", "sched_getaffinity")}


def test_the_planner_package_imports_nothing_that_measures():
    import ast

    found = []
    for path in sorted((ROOT / "partitioners").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in MEASURING_MODULES]
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and (node.value.id, node.attr) in MEASURING_CALLS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not found, "measuring code in partitioners/ (it belongs in cluster/measure.py):\n" + "\n".join(found)


# The planning modules: no import cycle may pass through them. (Cycles among the split-kind modules,
# splits <-> split_heads and split_costs -> splits -> split_quant -> split_costs, each a lazy import
# inside a function, are not checked here.)
PLANNING = {"planners", "planner_dp", "planner_baselines", "planner_exhaustive", "infeasible", "cost", "segment_chains",
            "segment_table", "segment_columns", "device_sets", "plan", "profiles", "vocabulary"}


def test_no_import_cycles_through_the_planners():
    """Counting imports inside functions too: no planning module imports, directly or through others, one
    that imports it back (the planners once imported each other inside functions to dodge exactly that)."""
    import ast

    edges = {}
    for path in (ROOT / "partitioners").glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {n.split(".")[0] for n in ([node.module] if node.module else [a.name for a in node.names])}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("partitioners."):
                deps.add(node.module.split(".")[1])
        edges[path.stem] = deps - {path.stem}
    cycles = set()

    def walk(start, node, path):
        for d in sorted(edges.get(node, ())):
            if d == start:
                cycles.add(tuple(path))
            elif d not in path and d > start:
                walk(start, d, path + [d])

    for module in sorted(edges):
        walk(module, module, [module])
    assert PLANNING <= set(edges), f"planning modules renamed or gone: {sorted(PLANNING - set(edges))}"
    through = sorted(" -> ".join(c + (c[0],)) for c in cycles if PLANNING & set(c))
    assert not through, "import cycles through the planners:\n" + "\n".join(through)


# Split kinds and stage modes are partitioners.vocabulary's SplitKind / StageMode / NO_SPLIT: code that
# compares a `.kind` or `.mode` (or a plan dict's ["kind"] / .get("mode")) with the bare string of one
# of them brings back the stringly-typed vocabulary issue 13 removed. Other `.kind`s (dtype kinds 'f',
# codec kinds 'int8', device kinds 'host') are not words of that vocabulary and are left alone.
VOCABULARY_PACKAGES = ("layers", "partitioners", "cluster", "bench")


def _vocabulary_words() -> set:
    from partitioners.vocabulary import NO_SPLIT, SplitKind, StageMode

    return {m.value for m in SplitKind} | {m.value for m in StageMode} | {NO_SPLIT}


def _is_kind_or_mode(node) -> bool:
    import ast

    if isinstance(node, ast.Attribute):
        return node.attr in ("kind", "mode")
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value in ("kind", "mode")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        return isinstance(node.args[0], ast.Constant) and node.args[0].value in ("kind", "mode")
    return False


def _string_literals(node) -> list:
    import ast

    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def bare_vocabulary_comparisons(source: str, filename: str = "<source>") -> list:
    """'LINE: code' for each comparison (==, !=, in, not in; a match on .kind/.mode with string cases)
    of a kind/mode with a bare string literal that is a split kind or stage mode."""
    import ast

    words = _vocabulary_words()
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for side in sides:
                if _is_kind_or_mode(side) and any(w in words for o in sides if o is not side for w in _string_literals(o)):
                    found.append(f"{node.lineno}: {ast.unparse(node)}")
                    break
        elif isinstance(node, ast.Match) and _is_kind_or_mode(node.subject):
            for case in node.cases:
                for pattern in ast.walk(case.pattern):
                    if isinstance(pattern, ast.MatchValue) and any(w in words for w in _string_literals(pattern.value)):
                        found.append(f"{pattern.lineno}: case {ast.unparse(pattern.value)} (match {ast.unparse(node.subject)})")
    return found


def test_the_scan_finds_bare_split_kind_and_stage_mode_strings():
    bad = """
if seg.kind == "conv-channel": pass
if stage.mode != 'split': pass
if "fused-tiles" == s.kind: pass
if seg.kind in ("fc-output", "fc-input"): pass
if d["mode"] == "data-parallel": pass
if d.get("kind") not in {"none"}: pass
match seg.kind:
    case "attn-heads": pass
"""
    assert sorted(int(f.split(":")[0]) for f in bare_vocabulary_comparisons(bad)) == [2, 3, 4, 5, 6, 7, 9]
    fine = """
if seg.kind == SplitKind.CONV_CHANNEL or stage.mode is SPLIT_MODE: pass
if arr.dtype.kind in "iu" or codec.kind == "int8" or device.kind != "host": pass
if seg.kind == NO_SPLIT or name == "split": pass
"""
    assert bare_vocabulary_comparisons(fine) == []


def test_no_bare_split_kind_or_stage_mode_strings():
    found = []
    for package in VOCABULARY_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)}:{hit}" for hit in bare_vocabulary_comparisons(path.read_text(), str(path))]
    assert not found, ("split kinds and stage modes compared as bare strings (use partitioners.vocabulary's SplitKind, "
                       "StageMode, NO_SPLIT or the *_MODE constants):\n" + "\n".join(found))
