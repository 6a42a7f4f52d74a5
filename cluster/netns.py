"""An emulated cluster of Raspberry Pis on one Linux machine: network namespaces on a bridge, one sshd each.

Layout for a cluster called NAME with N Pis on the private network 10.213.7.0/24 (the default):

    NAME-lan    holds only the bridge br0; the machine's own network is never touched
    NAME-head   10.213.7.1, the head node: run `pisplit provision` and `pisplit launch` in it
    NAME-pi-I   10.213.7.(10+I), a "Pi": its own hostname (UTS namespace), its own /home and a user
                `pi` (mount namespace), its own sshd (config, host key, pid file and log under the
                state directory), key login only

Every link is shaped in both directions with `tc qdisc ... tbf` (the Pis' links at `rate`, the head's
at `head_rate`). The state directory keeps the admin key authorized for `pi` on every Pi (the key a
user would put on the SD card), the host keys (kept across down/up unless purged) and an
inventory.ini for the cluster. Needs root, iproute2 (ip, tc), util-linux (unshare) and openssh-server.

    python -m cluster.netns up --pis 3 [--rate 94mbit] [--name pisplit] [--state DIR]
    python -m cluster.netns down [--name pisplit] [--state DIR] [--keep-state]
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import stat
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from layers.errors import PisplitError

log = logging.getLogger(__name__)

DEFAULT_NAME = "pisplit"
DEFAULT_NETWORK = "10.213.7"  # a /24 used only by the emulated cluster, inside its own namespaces
DEFAULT_RATE = "94mbit"
DEFAULT_HEAD_RATE = "1gbit"
PI_USER = "pi"
SSHD = "/usr/sbin/sshd"

# Runs inside the Pi's network namespace, in fresh UTS and mount namespaces, then becomes its sshd.
_PI_INIT = r"""
set -e
hostname "$1"
mount --bind "$2/home" /home
for f in passwd group shadow hosts; do mount --bind "$3/$f" "/etc/$f"; done
mkdir -p /run/sshd
exec "$4" -f "$2/sshd_config" -E "$2/sshd.log"
"""


@dataclass(frozen=True)
class Node:
    """One namespace of the emulated cluster."""

    hostname: str  # "head" or "pi-I"
    namespace: str
    address: str
    state: Path  # this node's directory in the cluster's state directory

    @property
    def pid_file(self) -> Path:
        return self.state / "sshd.pid"


@dataclass(frozen=True)
class Cluster:
    """An emulated cluster: where its state lives and its nodes."""

    name: str = DEFAULT_NAME
    n_pis: int = 3
    network: str = DEFAULT_NETWORK  # first three octets of the /24
    rate: str = DEFAULT_RATE
    head_rate: str | None = DEFAULT_HEAD_RATE
    state: Path = field(default=None)  # default /tmp/NAME-netns

    def __post_init__(self):
        if not re.match(r"^[a-z][a-z0-9]{0,9}$", self.name):
            raise PisplitError(f"cluster name {self.name!r}: use 1-10 lower-case letters and digits, starting with a letter")
        if not 1 <= self.n_pis <= 200:
            raise PisplitError(f"cluster {self.name}: {self.n_pis} Pis; choose 1 to 200")
        if not re.match(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$", self.network):
            raise PisplitError(f"network {self.network!r}: give the first three octets of a /24, like 10.213.7")
        for rate in (self.rate, self.head_rate):
            if rate is not None and not re.match(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit)$", rate):
                raise PisplitError(f"rate {rate!r}: expected a tc rate like 94mbit or 1gbit")
        if self.state is None:
            object.__setattr__(self, "state", Path(f"/tmp/{self.name}-netns"))
        object.__setattr__(self, "state", Path(self.state).resolve())

    @property
    def lan(self) -> str:
        return f"{self.name}-lan"

    @property
    def head(self) -> Node:
        return Node("head", f"{self.name}-head", f"{self.network}.1", self.state / "head")

    @property
    def pis(self) -> list[Node]:
        return [Node(f"pi-{i}", f"{self.name}-pi-{i}", f"{self.network}.{10 + i}", self.state / f"pi-{i}")
                for i in range(self.n_pis)]

    @property
    def admin_key(self) -> Path:
        """Private key authorized for `pi` on every Pi (the key a user would flash onto the SD cards)."""
        return self.state / "id_ed25519"

    @property
    def inventory(self) -> Path:
        return self.state / "inventory.ini"

    def exec_argv(self, node: Node, argv: list[str]) -> list[str]:
        """argv that runs `argv` inside `node`'s network namespace."""
        return ["ip", "netns", "exec", node.namespace, *argv]


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    log.debug("run %s", argv)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PisplitError(f"emulated cluster: {' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _require_tools() -> None:
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        raise PisplitError("emulated cluster: needs root (network namespaces, mounts and sshd)")
    for tool in ("ip", "tc", "unshare", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise PisplitError(f"emulated cluster: {tool} not found (apt-get install iproute2 util-linux openssh-client)")
    if not os.access(SSHD, os.X_OK):
        raise PisplitError(f"emulated cluster: {SSHD} not found (apt-get install openssh-server)")


def namespaces(name: str) -> list[str]:
    """Existing network namespaces of cluster `name`."""
    proc = _run(["ip", "netns", "list"], check=False)
    pattern = re.compile(rf"^{re.escape(name)}-(lan|head|pi-\d+)$")
    found = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    return [ns for ns in found if pattern.match(ns)]


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def is_up(cluster: Cluster) -> bool:
    """True when every namespace exists and every Pi's sshd is running."""
    expected = {cluster.lan, cluster.head.namespace, *(pi.namespace for pi in cluster.pis)}
    return expected == set(namespaces(cluster.name)) and all(_alive(pi.pid_file) for pi in cluster.pis)


def cluster_up(cluster: Cluster) -> Cluster:
    """Bring the emulated cluster up; a cluster already up is left as it is, a broken one is rebuilt."""
    _require_tools()
    if is_up(cluster):
        log.info("cluster %s is already up", cluster.name)
        return cluster
    cluster_down(cluster, keep_state=True)
    try:
        _prepare_state(cluster)
        _run(["ip", "netns", "add", cluster.lan])
        _run(["ip", "-n", cluster.lan, "link", "set", "lo", "up"])
        _run(["ip", "-n", cluster.lan, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", cluster.lan, "link", "set", "br0", "up"])
        _attach(cluster, cluster.head, cluster.head_rate)
        for pi in cluster.pis:
            _attach(cluster, pi, cluster.rate)
            _start_sshd(cluster, pi)
        _wait_for_sshd(cluster)
    except BaseException:
        cluster_down(cluster, keep_state=True)
        raise
    return cluster


def _attach(cluster: Cluster, node: Node, rate: str | None) -> None:
    port = f"v-{node.hostname}"
    _run(["ip", "netns", "add", node.namespace])
    _run(["ip", "-n", node.namespace, "link", "set", "lo", "up"])
    _run(["ip", "-n", cluster.lan, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node.namespace])
    _run(["ip", "-n", cluster.lan, "link", "set", port, "master", "br0", "up"])
    _run(["ip", "-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", "eth0"])
    _run(["ip", "-n", node.namespace, "link", "set", "eth0", "up"])
    if rate:
        # Both directions: the node's egress, and the bridge port's egress towards the node.
        for ns, dev in ((node.namespace, "eth0"), (cluster.lan, port)):
            _run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                  "burst", _burst(rate), "latency", "50ms"])


def _burst(rate: str) -> str:
    """A token bucket of 2 ms at `rate`, at least 16 KiB so a full-size frame always fits. A larger
    bucket let a message after a pause leave at veth speed: with 10 ms (117 KB at 94 Mbit/s) a split
    plan's transfers took 45 ms a frame where the link model and paced emulation say 69 (with 16 KiB
    the namespace cluster and paced emulation agreed: scripts/bench_netns --burst)."""
    number, unit = re.match(r"^([\d.]+)(\w+)$", rate).groups()
    bits = float(number) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[unit]
    return f"{max(16 * 1024, int(bits / 8 / 500))}b"


def _free_uid() -> int:
    used = {int(line.split(":")[2]) for line in Path("/etc/passwd").read_text().splitlines() if line.count(":") >= 6}
    uid = 1001
    while uid in used:
        uid += 1
    return uid


def private_state_dir(state: Path) -> None:
    """Make the state directory, or accept an existing one only if this user owns it, it is not a
    symlink and nobody else may write to it: in a shared /tmp another local user could otherwise create
    it first and read what is copied in, or plant keys through symlinks that chown and chmod follow."""
    state.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(state, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(state)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PisplitError(f"state directory {state}: not a directory of its own (a symlink or a file); refusing to use it")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise PisplitError(f"state directory {state}: owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}; "
                           f"another user may have made it: remove it or give another --state")


def _prepare_state(cluster: Cluster) -> None:
    state = cluster.state
    private_state_dir(state)
    os.chmod(state, 0o755)  # the emulated Pis' user pi walks through it to its home
    if not cluster.admin_key.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{cluster.name}-admin", "-f", str(cluster.admin_key)])
    admin_pub = cluster.admin_key.with_suffix(".pub").read_text()

    # The Pis' /etc/passwd, group, shadow and hosts: the machine's own plus the user pi and the cluster's names.
    etc = state / "etc"
    etc.mkdir(exist_ok=True)
    passwd = Path("/etc/passwd").read_text()
    existing = re.search(rf"^{PI_USER}:[^:]*:(\d+):(\d+):", passwd, re.M)
    uid = int(existing.group(1)) if existing else _free_uid()
    gid = int(existing.group(2)) if existing else uid
    if not existing:
        passwd += f"{PI_USER}:x:{uid}:{gid}:Emulated Pi user:/home/{PI_USER}:/bin/bash\n"
    (etc / "passwd").write_text(passwd)
    group = Path("/etc/group").read_text()
    if not re.search(rf"^{PI_USER}:", group, re.M):
        group += f"{PI_USER}:x:{gid}:\n"
    (etc / "group").write_text(group)
    shadow = Path("/etc/shadow").read_text() if Path("/etc/shadow").exists() else ""
    # no password hash leaves /etc/shadow: every account is key-only ('*') inside the namespaces
    shadow = re.sub(r"^([^:\n]*):[^:\n]*:", r"\1:*:", shadow, flags=re.M)
    shadow = re.sub(rf"^{PI_USER}:.*\n", "", shadow, flags=re.M) + f"{PI_USER}:*:19000:0:99999:7:::\n"
    (etc / "shadow").write_text(shadow)
    os.chmod(etc / "shadow", 0o640)
    hosts = "127.0.0.1\tlocalhost\n" + "".join(f"{n.address}\t{n.hostname}\n" for n in [cluster.head, *cluster.pis])
    (etc / "hosts").write_text(hosts)

    for pi in cluster.pis:
        home = pi.state / "home" / PI_USER
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(pi.state / "home", 0o755)
        authorized = ssh_dir / "authorized_keys"
        if not authorized.exists():
            authorized.write_text(admin_pub)
        for path, mode in ((home, 0o755), (ssh_dir, 0o700), (authorized, 0o600)):
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        host_key = pi.state / "ssh_host_ed25519_key"
        if not host_key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{pi.hostname}-host", "-f", str(host_key)])
        (pi.state / "sshd_config").write_text(_sshd_config(pi, host_key))
    cluster.head.state.mkdir(exist_ok=True)
    write_inventory(cluster)


def _sshd_config(pi: Node, host_key: Path) -> str:
    return "\n".join([
        f"ListenAddress {pi.address}",
        "Port 22",
        f"HostKey {host_key}",
        f"PidFile {pi.pid_file}",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        "UsePAM no",
        # mpirun and a parallel provision open many sessions at once.
        "MaxStartups 100",
        "MaxSessions 64",
        "Subsystem sftp internal-sftp",
        "",
    ])


def _start_sshd(cluster: Cluster, pi: Node) -> None:
    pi.pid_file.unlink(missing_ok=True)
    init = ["unshare", "--mount", "--uts", "--propagation", "private", "--",
            "sh", "-c", _PI_INIT, "pi-init", pi.hostname, str(pi.state), str(cluster.state / "etc"), SSHD]
    _run(cluster.exec_argv(pi, init))


def _wait_for_sshd(cluster: Cluster, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for pi in cluster.pis:
        while not _alive(pi.pid_file):
            if time.monotonic() > deadline:
                log_text = (pi.state / "sshd.log").read_text() if (pi.state / "sshd.log").exists() else ""
                raise PisplitError(f"emulated cluster: sshd of {pi.hostname} did not start: {log_text.strip()[-500:]}")
            time.sleep(0.05)


def restart_sshd(cluster: Cluster, pi: Node) -> None:
    """Restart one Pi's sshd (for example after its host key was replaced)."""
    _stop_pid_file(pi.pid_file)
    _start_sshd(cluster, pi)
    deadline = time.monotonic() + 10
    while not _alive(pi.pid_file):
        if time.monotonic() > deadline:
            raise PisplitError(f"emulated cluster: sshd of {pi.hostname} did not restart")
        time.sleep(0.05)


def _stop_pid_file(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)


def cluster_down(cluster: Cluster, keep_state: bool = False) -> None:
    """Stop everything running in the cluster's namespaces and delete them; idempotent, safe after a failed up."""
    for ns in namespaces(cluster.name):
        pids = [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).stdout.split() if p.isdigit()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + 3
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if _exists(p)]
                time.sleep(0.05)
        _run(["ip", "netns", "del", ns], check=False)
    if not keep_state and cluster.state.exists():
        shutil.rmtree(cluster.state, ignore_errors=True)


def _exists(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting for its parent counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def write_inventory(cluster: Cluster, path: Path | None = None, device: str = "rpi3") -> Path:
    """Write an inventory.ini for the cluster's Pis (admin key, user pi, workdir in the Pi's home)."""
    path = path or cluster.inventory
    lines = [f"# Emulated cluster {cluster.name}: {cluster.n_pis} Pis on {cluster.network}.0/24, links at {cluster.rate}.",
             f"# Run pisplit in the head namespace: ip netns exec {cluster.head.namespace} pisplit provision --inventory {path}",
             "[pis]"]
    lines += [f"{pi.hostname} ansible_host={pi.address}" for pi in cluster.pis]
    lines += ["", "[pis:vars]", f"ansible_user={PI_USER}", f"ansible_ssh_private_key_file={cluster.admin_key}",
              f"device={device}", f"workdir=/home/{PI_USER}/pisplit", f"mpi_network={cluster.network}.0/24", ""]
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m cluster.netns up|down ...` (scripts/cluster_up and scripts/cluster_down)."""
    parser = argparse.ArgumentParser(prog="cluster_up / cluster_down", description="An emulated Pi cluster in network namespaces.")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--pis", type=int, default=3, help="number of emulated Pis (default 3)")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"namespace prefix (default {DEFAULT_NAME})")
    parser.add_argument("--rate", default=DEFAULT_RATE, help=f"the Pis' link rate, tc syntax (default {DEFAULT_RATE})")
    parser.add_argument("--head-rate", default=DEFAULT_HEAD_RATE, help=f"the head's link rate (default {DEFAULT_HEAD_RATE}; 'none' unshaped)")
    parser.add_argument("--network", default=DEFAULT_NETWORK, help=f"first three octets of the /24 (default {DEFAULT_NETWORK})")
    parser.add_argument("--state", help="state directory (default /tmp/NAME-netns)")
    parser.add_argument("--keep-state", action="store_true", help="down: keep keys and host keys for the next up")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.action == "down":
            n_pis = max(1, sum(1 for ns in namespaces(args.name) if "-pi-" in ns))
            cluster = Cluster(args.name, n_pis, args.network, state=args.state)
            cluster_down(cluster, keep_state=args.keep_state)
            print(f"cluster {cluster.name}: down")
            return 0
        cluster = Cluster(args.name, args.pis, args.network, args.rate,
                          None if args.head_rate == "none" else args.head_rate, state=args.state)
        if args.action == "status":
            print(f"cluster {cluster.name}: {'up' if is_up(cluster) else 'down'}")
            return 0 if is_up(cluster) else 1
        cluster_up(cluster)
    except PisplitError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"cluster {cluster.name}: up, {cluster.n_pis} Pis, links at {cluster.rate}")
    print(f"  head   {cluster.head.address:<14} namespace {cluster.head.namespace}")
    for pi in cluster.pis:
        print(f"  {pi.hostname:<6} {pi.address:<14} namespace {pi.namespace}, ssh {PI_USER}@{pi.address}")
    print(f"  inventory {cluster.inventory}  (admin key {cluster.admin_key})")
    print(f"  try: ip netns exec {cluster.head.namespace} .venv/bin/pisplit provision --inventory {cluster.inventory} --accept-new-hosts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
