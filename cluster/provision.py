"""`pisplit provision`: take inventory hosts from a fresh OS to ready MPI nodes, in parallel, over SSH.

Steps per host, each checking first and skipped when already done:
  connect   key login; host key checked against known_hosts (--accept-new-hosts: trust on first use)
  facts     Pi model, architecture, cores, memory, OS, Python; saved to the inventory's facts.json
  packages  python3-venv when missing, with apt-get, if the user is root or has passwordless sudo
  venv      workdir, wheelhouse (built on this head node for the host's platform, copied over SFTP,
            so hosts need no internet), venv, the project's pinned requirements
  sync      project code, models and plans (--files) over SFTP, only files whose size or mtime changed
  ssh-key   this head node's cluster key in ~/.ssh/authorized_keys, so mpirun's ssh needs no prompt
Then once for the cluster: an MPI hostfile and an MPI smoke test across every host that succeeded.
A host that fails is reported and the others carry on.
"""
from __future__ import annotations

import hashlib
import logging
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from layers.errors import PisplitError

from .facts import cache_root, kind_from_model, unsupported_userland, userland_arch, write_facts
from .inventory import Host, Inventory
from .launch import build_launch, remote_workdir
from .mpirun import mpirun_env
from .ssh import HostError, Remote

log = logging.getLogger(__name__)

HOST_STEPS = ("connect", "facts", "packages", "venv", "sync", "ssh-key")
MPI_STEP = "mpi"
PROJECT_PACKAGES = ("layers", "partitioners", "cluster")
SMOKE_COMMAND = "{python} -m mpi4py.bench helloworld"

# What the host's own Python says about itself: its version and C library, and the userland it runs
# in (pointer size, machine, Debian multiarch), which `uname -m` does not tell: 32-bit Raspberry Pi OS
# on a Pi 4 or 5 runs an armhf userland on an aarch64 kernel. No single quotes (it goes inside '...').
PYTHON_FACTS = "; ".join([
    "import platform, struct, sysconfig",
    'print("python=" + platform.python_version())',
    'print("libc=" + " ".join(platform.libc_ver()))',
    'print("python_bits=%d" % (struct.calcsize("P") * 8))',
    'print("python_machine=" + platform.machine())',
    'print("python_multiarch=" + (sysconfig.get_config_var("MULTIARCH") or ""))',
])
assert "'" not in PYTHON_FACTS

# One shell round trip printing `key=value` lines; the python to ask is passed as $1.
FACTS_SCRIPT = "; ".join([
    'echo "arch=$(uname -m)"',
    'echo "cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc)"',
    "echo \"memory_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)\"",
    "echo \"model=$(tr -d '\\000' < /proc/device-tree/model 2>/dev/null)\"",
    'echo "os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"',
    'echo "hostname=$(hostname)"',
    'echo "uid=$(id -u)"',
    'echo "home=$HOME"',
    "if sudo -n true 2>/dev/null; then echo sudo=yes; else echo sudo=no; fi",
    '"$1" -c \'%s\' 2>/dev/null' % PYTHON_FACTS,
    """"$1" -c 'import venv, ensurepip' 2>/dev/null && echo venv=yes || echo venv=no""",
])


@dataclass
class Options:
    """What a provision run does, and where the head node keeps its keys and caches."""

    known_hosts: Path
    cluster_key: Path
    accept_new_hosts: bool = False
    dry_run: bool = False
    files: tuple = ()  # local models and plans copied to WORKDIR/files/
    wheelhouse: Path | None = None  # ready-made wheels for every host's platform; None: build them here
    timeout: float = 10.0  # seconds to connect
    workers: int = 8
    smoke_test: bool = True


@dataclass
class StepResult:
    """One step on one host: done (changed something), skipped (already in place), failed, or planned (dry run)."""

    step: str
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class HostReport:
    """All steps of one host, and its error if a step failed."""

    host: Host
    steps: list = field(default_factory=list)
    error: str | None = None
    facts: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Report:
    """The outcome of a provision run."""

    hosts: list
    mpi: StepResult | None = None
    facts_path: Path | None = None
    hostfile: Path | None = None

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts) and (self.mpi is None or self.mpi.status != "failed")


Events = Callable[[str, str, str, str], None]  # (host name, step, status, detail)


def project_root() -> Path:
    """The directory holding the layers/, partitioners/ and cluster/ packages."""
    return Path(__file__).resolve().parents[1]


def project_requirements() -> str:
    """The project's pinned requirements (pyproject.toml, else the installed metadata), one a line."""
    pyproject = project_root() / "pyproject.toml"
    deps = None
    if pyproject.exists():
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            tomllib = None
        if tomllib is not None:
            deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    if deps is None:
        from importlib.metadata import requires

        deps = [r for r in requires("pisplit") or [] if "extra ==" not in r]
    return "".join(f"{d}\n" for d in deps)


LOCK_FILE = Path(__file__).with_name("constraints.txt")  # scripts/lock.py writes it; package data of cluster


def project_constraints() -> str:
    """The project's lock (every transitive dependency pinned), used as pip constraints for the wheelhouse
    and on the hosts, so the Pis run the versions scripts/setup installed on this head node."""
    try:
        return LOCK_FILE.read_text()
    except OSError as exc:
        raise PisplitError(f"lock file {LOCK_FILE}: {exc.strerror or exc}; reinstall pisplit "
                           f"(or run scripts/lock.py in a source tree)") from None


def project_files() -> list[tuple[Path, str]]:
    """(local path, path relative to the remote code directory) of every file of the project's packages."""
    root = project_root()
    files = [(root / "pyproject.toml", "pyproject.toml")] if (root / "pyproject.toml").exists() else []
    for package in PROJECT_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                files.append((path, str(path.relative_to(root))))
    return files


def ensure_cluster_key(path: Path) -> str:
    """The head node's passphrase-less cluster key (created with ssh-keygen when missing); returns its public line."""
    path = Path(path).expanduser()
    pub = path.with_name(path.name + ".pub")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pisplit-cluster", "-f", str(path)],
                           check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise PisplitError("ssh-keygen not found on this head node; install openssh-client (mpirun needs ssh too)") from None
        except subprocess.CalledProcessError as exc:
            raise PisplitError(f"cluster key {path}: ssh-keygen failed: {exc.stderr.strip()}") from None
    if not pub.exists():
        raise PisplitError(f"cluster key {path}: its public half {pub} is missing; delete {path} to get a new pair")
    return pub.read_text().strip()


def _platforms(arch: str, libc: str) -> list[str]:
    """pip --platform tags a host accepts: manylinux_2_G down to 2_17, and the legacy aliases."""
    match = re.match(r"glibc (\d+)\.(\d+)", libc or "")
    if not match or match.group(1) != "2":
        raise PisplitError(f"C library {libc or 'unknown'}: pisplit needs glibc (manylinux wheels)")
    newest = int(match.group(2))
    tags = [f"manylinux_2_{m}_{arch}" for m in range(newest, 16, -1)]
    return tags + [f"manylinux2014_{arch}"] + ([f"manylinux2010_{arch}", f"manylinux1_{arch}"] if arch in ("x86_64", "i686") else [])


class Wheelhouses:
    """Wheel directories per host platform, built once on this head node with `pip download`."""

    def __init__(self, requirements: str, given: Path | None = None, cache: Path | None = None,
                 constraints: str | None = None):
        self.requirements = requirements
        self.constraints = project_constraints() if constraints is None else constraints
        self.given = given
        self.cache = cache or cache_root() / "wheelhouse"
        self.lock = threading.Lock()
        self.built: dict[str, Path] = {}

    def for_host(self, facts: dict, progress: Callable[[str], None] | None = None) -> Path:
        """Wheelhouse for a host's architecture, Python and glibc (downloaded now unless cached), resolved
        against the lock. `progress` is told what is being downloaded as it goes (text lines)."""
        if self.given is not None:
            if not self.given.is_dir():
                raise PisplitError(f"wheelhouse {self.given}: not a directory")
            return self.given
        refused = unsupported_userland(facts.get("hostname") or "?", facts)
        if refused:
            raise PisplitError(refused)
        arch = userland_arch(facts)
        version = ".".join(facts["python"].split(".")[:2])
        tag = f"cp{version.replace('.', '')}-{arch}-{facts['libc'].replace(' ', '')}"
        with self.lock:
            if tag in self.built:
                return self.built[tag]
            target = self.cache / tag
            stamp = target / ".requirements.sha256"
            digest = hashlib.sha256((self.requirements + self.constraints).encode()).hexdigest()
            if not (stamp.exists() and stamp.read_text() == digest):
                target.mkdir(parents=True, exist_ok=True)
                (target / "requirements.txt").write_text(self.requirements)
                (target / "constraints.txt").write_text(self.constraints)
                cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--retries", "2", "--dest", str(target),
                       "--only-binary=:all:", "--implementation", "cp", "--python-version", version]
                for platform in _platforms(arch, facts["libc"]):
                    cmd += ["--platform", platform]
                cmd += ["-r", str(target / "requirements.txt"), "-c", str(target / "constraints.txt")]
                log.info("building wheelhouse %s", target)
                returncode, output = _pip_download(cmd, tag, progress)
                if returncode != 0:
                    tail = " | ".join(line for line in output if line.startswith("ERROR"))[-600:] or " | ".join(output[-4:])
                    raise PisplitError(f"cannot get wheels for {arch} Python {version} ({facts['libc']}): {tail}; "
                                       f"prepare them with pip download -c {LOCK_FILE} and pass --wheelhouse DIR")
                stamp.write_text(digest)
            self.built[tag] = target
            return target


def _pip_download(cmd: list[str], tag: str, progress: Callable[[str], None] | None) -> tuple[int, list[str]]:
    """Run `pip download`, telling `progress` which wheel is coming and how far it is (pip's raw progress
    lines, at most 5 a second); returns pip's exit status and its output lines."""
    try:
        from importlib.metadata import version as installed_version

        raw = tuple(int(p) for p in installed_version("pip").split(".")[:2]) >= (24, 1)  # --progress-bar raw
    except Exception:
        raw = False
    cmd = cmd[:4] + ["--progress-bar", "raw" if raw and progress else "off"] + cmd[4:]
    lines: list[str] = []
    started, saved, done_bytes, current, last = 0, 0, 0, "", 0.0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            match = re.match(r"Progress (\d+) of (\d+)$", line)
            if match:
                got, total = int(match.group(1)), int(match.group(2))
                if got == total:
                    done_bytes += total
                now = time.monotonic()
                if progress and total and now - last >= 0.2:
                    last = now
                    progress(f"wheelhouse {tag}: wheel {started}, {(done_bytes + (got if got < total else 0)) / 1e6:.1f} MB so far; "
                             f"{current} {100 * got // total}%")
                continue
            lines.append(line)
            match = re.match(r"\s*Downloading (\S+\.whl) \((.+)\)$", line)
            if match:
                current, started = match.group(1), started + 1
                if progress:
                    progress(f"wheelhouse {tag}: wheel {started}, {done_bytes / 1e6:.1f} MB so far; downloading {current} ({match.group(2)})")
            elif line.startswith("Saved ") or line.startswith("File was already downloaded"):
                saved += 1
    if progress and proc.returncode == 0:
        progress(f"wheelhouse {tag}: {saved} wheels ready, {done_bytes / 1e6:.1f} MB downloaded")
    return proc.returncode, lines


class Provisioner:
    """Runs the steps on many hosts in parallel; reports progress through `events`."""

    def __init__(self, inventory: Inventory, options: Options, events: Events | None = None):
        self.inventory = inventory
        self.options = options
        self.events = events or (lambda *_: None)
        self.requirements = project_requirements()
        self.constraints = project_constraints()
        self.wheelhouses = Wheelhouses(self.requirements, options.wheelhouse, constraints=self.constraints)
        self.code = project_files()
        self.files = [Path(f) for f in options.files]
        for f in self.files:
            if not f.is_file():
                raise PisplitError(f"--files {f}: no such file")
        self.key_lock = threading.Lock()
        self.public_key: str | None = None

    def run(self, hosts: list[Host]) -> Report:
        """Provision `hosts`; never raises for a single host's failure."""
        if self.options.dry_run:
            return Report([HostReport(h, steps=self.dry_run(h)) for h in hosts])
        with ThreadPoolExecutor(max_workers=max(1, min(self.options.workers, len(hosts)))) as pool:
            reports = list(pool.map(self.provision_host, hosts))
        facts = {r.host.name: r.facts for r in reports if r.facts}
        report = Report(reports)
        if facts:
            report.facts_path = write_facts(self.inventory.path, facts)
        ready = [r for r in reports if r.ok]
        if ready and self.options.smoke_test:
            report.mpi, report.hostfile = self.smoke_test(ready)
        return report

    # --- one host -------------------------------------------------------------------------------

    def provision_host(self, host: Host) -> HostReport:
        report = HostReport(host)
        remote = Remote(host, self.options.known_hosts, self.options.accept_new_hosts, self.options.timeout)
        steps = [("connect", lambda: self.connect(remote)),
                 ("facts", lambda: self.gather_facts(remote, report)),
                 ("packages", lambda: self.ensure_packages(remote, report.facts)),
                 ("venv", lambda: self.ensure_venv(remote, report.facts)),
                 ("sync", lambda: self.sync(remote, report.facts)),
                 ("ssh-key", lambda: self.ensure_key(remote, report.facts))]
        try:
            for name, action in steps:
                self.events(host.name, name, "running", "")
                start = time.monotonic()
                try:
                    status, detail = action()
                except HostError as exc:
                    report.steps.append(StepResult(name, "failed", str(exc), time.monotonic() - start))
                    report.error = f"{name}: {exc}"
                    self.events(host.name, name, "failed", str(exc))
                    break
                except Exception as exc:  # a bug or an unexpected remote state: report it for this host only
                    log.debug("host %s step %s", host.name, name, exc_info=True)
                    message = f"host {host.name}: {type(exc).__name__}: {exc}"
                    report.steps.append(StepResult(name, "failed", message, time.monotonic() - start))
                    report.error = f"{name}: {message}"
                    self.events(host.name, name, "failed", message)
                    break
                report.steps.append(StepResult(name, status, detail, time.monotonic() - start))
                self.events(host.name, name, status, detail)
        finally:
            remote.close()
        return report

    def connect(self, remote: Remote) -> tuple[str, str]:
        remote.connect()
        return "done", f"logged in as {remote.client.get_transport().get_username()}"

    def gather_facts(self, remote: Remote, report: HostReport) -> tuple[str, str]:
        out = remote.run(facts_command(remote.host.python), timeout=60, what="gathering facts").stdout
        raw = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        facts = {
            "address": remote.host.address,
            "hostname": raw.get("hostname", ""),
            "model": raw.get("model") or None,
            "arch": raw.get("arch", ""),
            "cores": int(raw.get("cores") or 0),
            "memory_bytes": int(raw.get("memory_kib") or 0) * 1024,
            "os": raw.get("os", ""),
            **python_facts(raw),
            "home": raw.get("home", ""),
            "uid": int(raw.get("uid") or -1),
            "sudo": raw.get("sudo") == "yes",
            "venv": raw.get("venv") == "yes",
            "gathered": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        facts["kind"] = remote.host.device or kind_from_model(facts["model"])
        if not facts["home"].startswith("/"):
            raise HostError(f"host {remote.host.name}: cannot tell the home directory of {remote.host.user or 'the user'}")
        report.facts = facts
        refuse_unsupported_userland(remote.host.name, facts)  # before anything is installed or copied
        what = facts["model"] or f"{facts['arch']} (not a Pi)"
        return "done", f"{what}, {facts['cores']} cores, {facts['memory_bytes'] / 2**30:.1f} GiB, Python {facts['python'] or 'missing'}"

    def ensure_packages(self, remote: Remote, facts: dict) -> tuple[str, str]:
        missing = missing_packages(facts)
        if not missing:
            return "skipped", "python3 and venv present"
        host = remote.host
        if facts["uid"] != 0 and not facts["sudo"]:
            raise HostError(f"host {host.name}: {', '.join(missing)} missing and user {host.user or facts['uid']} may not install "
                            f"packages (not root, no passwordless sudo); run on the host: sudo apt-get install {' '.join(missing)}")
        for command in apt_commands(missing, facts["uid"] == 0):
            remote.run(command, timeout=1800, what=f"installing {' '.join(missing)}")
        if remote.run([host.python, "-c", "import venv, ensurepip"], check=False).returncode != 0:
            raise HostError(f"host {host.name}: {host.python} still cannot create a venv after installing {' '.join(missing)}")
        facts["venv"] = True
        if not facts.get("python"):  # python3 was just installed: ask it what it is
            out = remote.run([host.python, "-c", PYTHON_FACTS], what=f"asking the new {host.python} about itself").stdout
            facts.update(python_facts(dict(line.split("=", 1) for line in out.splitlines() if "=" in line)))
            refuse_unsupported_userland(host.name, facts)
        return "done", f"installed {' '.join(missing)}"

    def ensure_venv(self, remote: Remote, facts: dict) -> tuple[str, str]:
        host = remote.host
        workdir = remote_workdir(host, facts["home"])
        probe = remote.run(workdir_command(workdir), check=False)
        if probe.returncode != 0:
            reason = (probe.stderr.strip().splitlines() or ["not writable"])[-1]
            raise HostError(f"host {host.name}: workdir {workdir} cannot be created or written by {host.user or 'the user'} "
                            f"({reason}); choose a workdir= the user owns")
        if not facts.get("python"):
            raise HostError(f"host {host.name}: {host.python} not found")
        wheels = self.wheelhouses.for_host(facts, lambda text: self.events(host.name, "venv", "running", text))
        copied = remote.sync([(p, f"{workdir}/wheelhouse/{p.name}") for p in sorted(wheels.glob("*.whl"))])
        remote.write_text(f"{workdir}/requirements.txt", self.requirements)
        remote.write_text(f"{workdir}/constraints.txt", self.constraints)
        venv = f"{workdir}/venv"
        changed = []
        if remote.run(["test", "-x", f"{venv}/bin/python"], check=False).returncode != 0:
            remote.run(venv_command(host.python, venv), timeout=600, what="creating the venv")
            changed.append("venv created")
        stamp = f"{venv}/.pisplit-requirements.sha256"
        digest = hashlib.sha256((self.requirements + self.constraints).encode()).hexdigest()
        if (remote.read_text(stamp) or "").strip() != digest:
            remote.run(pip_install_command(venv, workdir), timeout=1800, what="installing the requirements")
            remote.write_text(stamp, digest + "\n")
            changed.append("requirements installed")
        if copied.copied:
            changed.insert(0, f"wheelhouse: {copied}")
        return ("done", "; ".join(changed)) if changed else ("skipped", f"venv {venv} up to date")

    def sync(self, remote: Remote, facts: dict) -> tuple[str, str]:
        workdir = remote_workdir(remote.host, facts["home"])
        venv = f"{workdir}/venv"
        code = remote.sync([(local, f"{workdir}/pisplit/{rel}") for local, rel in self.code])
        files = remote.sync([(f, f"{workdir}/files/{f.name}") for f in self.files])
        site = remote.run([f"{venv}/bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
        wrote = remote.write_text(f"{site}/pisplit-code.pth", f"{workdir}/pisplit\n")
        wrote |= remote.write_text(f"{venv}/bin/pisplit", launcher_script(venv), mode=0o755)
        if code.copied or wrote:
            remote.run([f"{venv}/bin/python", "-c", "import cluster.cli, layers, partitioners"], timeout=120,
                       what="checking that the venv imports pisplit")
        detail = f"code: {code}" + (f"; files: {files}" if self.files else "")
        return ("done" if code.copied or files.copied or wrote else "skipped"), detail

    def ensure_key(self, remote: Remote, facts: dict) -> tuple[str, str]:
        with self.key_lock:
            if self.public_key is None:
                self.public_key = ensure_cluster_key(self.options.cluster_key)
        key_type, key_body = self.public_key.split()[:2]
        path = f"{facts['home']}/.ssh/authorized_keys"
        current = remote.read_text(path) or ""
        if any(line.split()[:2] == [key_type, key_body] or line.split()[1:3] == [key_type, key_body]
               for line in current.splitlines() if len(line.split()) >= 2):
            return "skipped", "cluster key already authorized"
        remote.makedirs(f"{facts['home']}/.ssh")
        remote.sftp.chmod(f"{facts['home']}/.ssh", 0o700)
        text = current + ("" if not current or current.endswith("\n") else "\n") + self.public_key + "\n"
        remote.write_text(path, text, mode=0o600)
        return "done", f"added {self.options.cluster_key.name}.pub to {path}"

    # --- the cluster ------------------------------------------------------------------------------

    def smoke_test(self, ready: list[HostReport]) -> tuple[StepResult, Path | None]:
        """mpirun one rank per ready host with mpi4py's hello world; every rank must answer."""
        start = time.monotonic()
        hosts = [r.host for r in ready]
        self.events("cluster", MPI_STEP, "running", "")
        try:
            launch = build_launch(self.inventory, hosts, [{"host": h.name} for h in hosts], SMOKE_COMMAND,
                                  cluster_key=self.options.cluster_key, known_hosts=self.options.known_hosts)
            proc = subprocess.run(launch.argv, capture_output=True, text=True, env=mpirun_env(), timeout=180)
        except PisplitError as exc:
            return self._mpi_result("failed", str(exc), start), None
        except subprocess.TimeoutExpired:
            return self._mpi_result("failed", "mpirun did not finish within 180 s", start), None
        answered = re.findall(r"I am process (\d+) of (\d+) on (\S+?)\.?$", proc.stdout, re.M)
        if proc.returncode != 0 or len(answered) != len(hosts):
            tail = " | ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-4:])
            return self._mpi_result("failed", f"mpirun exit {proc.returncode}, {len(answered)} of {len(hosts)} ranks answered: {tail}",
                                    start), launch.files.hostfile
        names = sorted({name for _, _, name in answered})
        return self._mpi_result("done", f"{len(hosts)} ranks answered from {', '.join(names)}", start), launch.files.hostfile

    def _mpi_result(self, status: str, detail: str, start: float) -> StepResult:
        self.events("cluster", MPI_STEP, status, detail)
        return StepResult(MPI_STEP, status, detail, time.monotonic() - start)

    # --- dry run --------------------------------------------------------------------------------

    def dry_run(self, host: Host) -> list[StepResult]:
        """What each step would run on `host` (the home directory shows as ~, decided on the host)."""
        workdir = host.workdir
        venv = f"{workdir}/venv"
        key = host.key_file or "ssh-agent / ~/.ssh/id_*"
        trust = "unknown hosts trusted and recorded" if self.options.accept_new_hosts else "unknown hosts refused"
        plan = [
            ("connect", f"ssh {host.target} with {key}; host key checked against {self.options.known_hosts} ({trust})"),
            ("facts", facts_command(host.python)),
            ("packages", "if python3-venv is missing:\n" + "\n".join(apt_commands(["python3-venv"], host.user == "root"))),
            ("venv", "\n".join([workdir_command(workdir),
                                 f"sftp: wheels for the host's platform -> {workdir}/wheelhouse/ (changed files only)",
                                 f"sftp: requirements.txt, constraints.txt (the lock) -> {workdir}/",
                                 "if missing: " + venv_command(host.python, venv),
                                 "if requirements changed: " + pip_install_command(venv, workdir)])),
            ("sync", f"sftp: {len(self.code)} project files -> {workdir}/pisplit/"
                     + (f", {len(self.files)} files -> {workdir}/files/" if self.files else "")
                     + f"; {workdir}/pisplit on the venv's path (pisplit-code.pth), {venv}/bin/pisplit"),
            ("ssh-key", f"append {self.options.cluster_key}.pub to ~/.ssh/authorized_keys unless present"),
        ]
        return [StepResult(step, "planned", what) for step, what in plan]


def python_facts(raw: dict[str, str]) -> dict:
    """The Python part of a host's facts, from the key=value lines PYTHON_FACTS prints (None/absent when unknown)."""
    bits = raw.get("python_bits", "")
    return {"python": raw.get("python") or None, "libc": raw.get("libc") or None,
            "python_bits": int(bits) if bits.isdigit() else None,
            "python_machine": raw.get("python_machine") or None,
            "python_multiarch": raw.get("python_multiarch") or None}


def refuse_unsupported_userland(name: str, facts: dict) -> None:
    """Raise HostError with one line saying what to do when the host's userland has no wheels (32-bit
    Raspberry Pi OS, also on a Pi 4/5's 64-bit kernel). A host whose Python is still unknown passes."""
    message = unsupported_userland(name, facts)
    if message:
        raise HostError(message)


def facts_command(python: str) -> str:
    """The one remote command that prints a host's facts as key=value lines."""
    return shlex.join(["sh", "-c", FACTS_SCRIPT, "facts", python])


def missing_packages(facts: dict) -> list[str]:
    """System packages a host lacks for pisplit (python3, python3-venv)."""
    if not facts.get("python"):
        return ["python3", "python3-venv"]
    return [] if facts.get("venv") else ["python3-venv"]


def apt_commands(packages: list[str], as_root: bool) -> list[str]:
    """apt-get update and install of `packages`, through sudo -n unless root (never prompts for a password)."""
    sudo = [] if as_root else ["sudo", "-n"]
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    return [shlex.join(sudo + env + ["apt-get", "update", "-q"]),
            shlex.join(sudo + env + ["apt-get", "install", "-y", "-q", *packages])]


def workdir_command(workdir: str) -> str:
    return shlex.join(["sh", "-c", 'mkdir -p -- "$1" || exit 1; test -w "$1" || { echo "$1: not writable" >&2; exit 1; }',
                       "workdir", workdir])


def venv_command(python: str, venv: str) -> str:
    return shlex.join([python, "-m", "venv", venv])


def pip_install_command(venv: str, workdir: str) -> str:
    """Install the pinned requirements, at the lock's versions, from the synced wheelhouse only: hosts may have no internet.
    --no-compile: pip would byte-compile every installed module (numpy's thousands: about a third of the
    install on a Pi); Python writes each .pyc itself, once, the first time a rank imports the module."""
    return shlex.join([f"{venv}/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-index", "--no-compile",
                       "--find-links", f"{workdir}/wheelhouse", "-r", f"{workdir}/requirements.txt",
                       "-c", f"{workdir}/constraints.txt"])


def launcher_script(venv: str) -> str:
    """The remote `pisplit` console script (the code is on the venv's path through pisplit-code.pth)."""
    return f"#!{venv}/bin/python\nimport sys\n\nfrom cluster.cli import main\n\nsys.exit(main())\n"


def copy_files(hosts: list[Host], files: list[Path], homes: dict[str, str], known_hosts: Path,
               timeout: float = 10.0) -> dict[str, str]:
    """Copy `files` to WORKDIR/files/ on every host in parallel (changed files only); returns host -> error."""
    def copy(host: Host) -> str | None:
        try:
            with Remote(host, known_hosts, accept_new=False, timeout=timeout) as remote:
                workdir = remote_workdir(host, homes.get(host.name))
                remote.sync([(f, f"{workdir}/files/{f.name}") for f in files])
        except PisplitError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(hosts)))) as pool:
        errors = dict(zip((h.name for h in hosts), pool.map(copy, hosts)))
    return {name: error for name, error in errors.items() if error}
