"""SSH to one inventory host with paramiko: key login, checked host keys, remote commands, SFTP sync.

Host keys are checked against an OpenSSH known_hosts file (the same file `ssh` and mpirun use).
An unknown host is refused unless `accept_new` (trust on first use: its key is recorded); a host
whose key changed is always refused. Passwords are never asked for, used or stored.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import select
import shlex
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from layers.errors import PisplitError

from .inventory import Host

if TYPE_CHECKING:  # paramiko (and cryptography under it) is imported when a connection opens, not with this module
    import paramiko

log = logging.getLogger(__name__)

_known_hosts_lock = threading.Lock()  # parallel provisioning records new keys in one file


class HostError(PisplitError):
    """A problem with one host; provisioning reports it for that host and carries on with the others."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint: 'ssh-ed25519 SHA256:...'."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def known_hosts_name(address: str, port: int) -> str:
    """The name a host is recorded under in known_hosts: 'addr', or '[addr]:port' off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def check_private_key_file(path: str | os.PathLike, what: str = "key file") -> None:
    """Refuse a private key other users can read or write (mode & 0o077), as OpenSSH does ("UNPROTECTED
    PRIVATE KEY FILE"): paramiko would use it silently, and mpirun's ssh would then refuse it anyway."""
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise HostError(f"{what} {path} is accessible by others (mode {mode:04o}); run chmod 600 {path}")


class _TrustOnFirstUse:
    """Accept an unknown host's key and append it to known_hosts (under a lock, re-read first).

    A paramiko missing-host-key policy (paramiko calls `missing_host_key`; it needs no base class,
    so this module does not import paramiko until a connection opens)."""

    def __init__(self, known_hosts: Path, accept: bool, host: Host):
        self.known_hosts, self.accept, self.host = known_hosts, accept, host

    def missing_host_key(self, client, hostname, key):
        if not self.accept:
            raise HostError(f"host {self.host.name} ({hostname}): unknown host key {fingerprint(key)}, not in "
                            f"{self.known_hosts}; check it, then run again with --accept-new-hosts to trust it")
        # Appended, as ssh does: rewriting the file would drop lines paramiko does not parse (@cert-authority ...).
        with _known_hosts_lock:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            existing = self.known_hosts.read_text() if self.known_hosts.exists() else ""
            separator = "" if not existing or existing.endswith("\n") else "\n"
            with open(self.known_hosts, "a") as f:
                f.write(f"{separator}{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning("host %s (%s): trusted new host key %s, recorded in %s", self.host.name, hostname, fingerprint(key), self.known_hosts)


@dataclass
class Completed:
    """A finished remote command."""

    command: str
    returncode: int
    stdout: str
    stderr: str


@dataclass
class SyncResult:
    """What one sync copied."""

    copied: int = 0
    unchanged: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return f"{self.copied} of {self.copied + self.unchanged} files copied ({self.bytes / 1e6:.1f} MB)"


class Remote:
    """An open SSH connection to one host. Use as a context manager."""

    def __init__(self, host: Host, known_hosts: Path, accept_new: bool = False, timeout: float = 10.0):
        self.host = host
        self.known_hosts = Path(known_hosts).expanduser()
        self.accept_new = accept_new
        self.timeout = timeout
        self.client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> "Remote":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection; raises HostError saying why it failed (unreachable, host key, login)."""
        import paramiko

        host = self.host
        client = paramiko.SSHClient()
        if self.known_hosts.exists():
            client.load_system_host_keys(str(self.known_hosts))  # "system": checked, never rewritten by paramiko
        client.set_missing_host_key_policy(_TrustOnFirstUse(self.known_hosts, self.accept_new, host))
        key_file = os.path.expanduser(host.key_file) if host.key_file else None
        if key_file and not os.path.isfile(key_file):
            raise HostError(f"host {host.name}: key file {key_file} does not exist (ansible_ssh_private_key_file)")
        if key_file:
            check_private_key_file(key_file, f"host {host.name}: key file")
        try:
            client.connect(host.address, port=host.port, username=host.user or None, key_filename=key_file,
                           allow_agent=key_file is None, look_for_keys=key_file is None, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout)
        except HostError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = known_hosts_name(host.address, host.port)
            raise HostError(
                f"host {host.name} ({name}): HOST KEY CHANGED - refusing to connect. Expected {fingerprint(exc.expected_key)} "
                f"from {self.known_hosts}, got {fingerprint(exc.key)}. Someone may be intercepting the connection, or the "
                f"host was reinstalled; if you are sure, remove the old key (ssh-keygen -R '{name}' -f {self.known_hosts}) "
                f"and run again with --accept-new-hosts") from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise HostError(f"host {host.name}: key {key_file} is passphrase-protected; load it into ssh-agent and "
                            f"remove ansible_ssh_private_key_file, or use a key without a passphrase") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            how = f"key {key_file}" if key_file else "ssh-agent and ~/.ssh/id_* keys"
            raise HostError(f"host {host.name} ({host.target}): login refused with {how} ({exc}); is the public key in "
                            f"~/.ssh/authorized_keys of {host.user or 'the user'} on the host?") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise HostError(f"host {host.name} ({host.target}): unreachable (no answer within {self.timeout:g} s)") from None
        except (paramiko.ssh_exception.NoValidConnectionsError, OSError, paramiko.SSHException) as exc:
            client.close()
            if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
                reason = "; ".join(sorted({e.strerror or str(e) for e in exc.errors.values()}))
            else:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise HostError(f"host {host.name} ({host.target}): unreachable ({reason})") from None
        transport = client.get_transport()
        transport.set_keepalive(15)
        self.client = client

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def run(self, argv: list[str] | str, timeout: float = 600.0, check: bool = True, what: str = "") -> Completed:
        """Run a command (argv is quoted with shlex.join; a str is sent as it is) and collect its output.

        With `check`, a non-zero exit raises HostError naming `what` (or the command) and the output's tail.
        """
        command = argv if isinstance(argv, str) else shlex.join(argv)
        log.debug("%s$ %s", self.host.name, command)
        channel = self.client.get_transport().open_session(timeout=self.timeout)
        channel.exec_command(command)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            if channel.recv_ready():
                out += channel.recv(1 << 16)
            elif channel.recv_stderr_ready():
                err += channel.recv_stderr(1 << 16)
            elif channel.exit_status_ready():
                break
            elif time.monotonic() > deadline:
                channel.close()
                raise HostError(f"host {self.host.name}: {what or command} did not finish within {timeout:g} s")
            else:
                select.select([channel], [], [], 0.2)
        while channel.recv_ready():
            out += channel.recv(1 << 16)
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(1 << 16)
        result = Completed(command, channel.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace"))
        channel.close()
        if check and result.returncode != 0:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
            raise HostError(f"host {self.host.name}: {what or command} failed (exit {result.returncode}): {' | '.join(tail)}")
        return result

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def read_text(self, path: str) -> str | None:
        """A remote file's text, or None when it does not exist."""
        try:
            with self.sftp.open(path, "r") as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    def write_text(self, path: str, text: str, mode: int = 0o644) -> bool:
        """Write a remote file unless it already holds `text`; returns True when it wrote."""
        if self.read_text(path) == text:
            return False
        self.makedirs(str(PurePosixPath(path).parent))
        tmp = f"{path}.pisplit-tmp"
        with self.sftp.open(tmp, "w") as f:
            f.write(text.encode())
        self.sftp.chmod(tmp, mode)
        self.sftp.posix_rename(tmp, path)
        return True

    def makedirs(self, path: str) -> None:
        """mkdir -p over SFTP."""
        missing = []
        current = PurePosixPath(path)
        while True:
            try:
                if not stat.S_ISDIR(self.sftp.stat(str(current)).st_mode):
                    raise HostError(f"host {self.host.name}: {current} exists and is not a directory")
                break
            except FileNotFoundError:
                missing.append(current)
                if current.parent == current:
                    break
                current = current.parent
        for directory in reversed(missing):
            try:
                self.sftp.mkdir(str(directory))
            except OSError as exc:
                raise HostError(f"host {self.host.name}: cannot create {directory} ({exc.strerror or exc})") from None

    def sync(self, files: list[tuple[Path, str]]) -> SyncResult:
        """Copy local files to remote absolute paths, only those whose size or mtime differ; keeps mtimes."""
        result = SyncResult()
        by_dir: dict[str, list[tuple[Path, str]]] = {}
        for local, remote in files:
            by_dir.setdefault(str(PurePosixPath(remote).parent), []).append((local, remote))
        for directory, entries in sorted(by_dir.items()):
            self.makedirs(directory)
            present = {a.filename: a for a in self.sftp.listdir_attr(directory)}
            for local, remote in entries:
                st = local.stat()
                have = present.get(PurePosixPath(remote).name)
                if have is not None and have.st_size == st.st_size and int(have.st_mtime) == int(st.st_mtime):
                    result.unchanged += 1
                    continue
                tmp = f"{remote}.pisplit-tmp"
                try:
                    self.sftp.put(str(local), tmp)
                    self.sftp.chmod(tmp, stat.S_IMODE(st.st_mode))
                    self.sftp.utime(tmp, (int(st.st_mtime), int(st.st_mtime)))
                    self.sftp.posix_rename(tmp, remote)
                except OSError as exc:
                    raise HostError(f"host {self.host.name}: copying {local} to {remote} failed ({exc.strerror or exc})") from None
                result.copied += 1
                result.bytes += st.st_size
        return result
