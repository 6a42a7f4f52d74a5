"""Read an Ansible-compatible inventory.ini: the hosts of a cluster, how to reach them, what they are.

    [pis]
    pi-0 ansible_host=192.168.1.10 ansible_user=pi device=rpi4 slots=1
    pi-1 ansible_host=192.168.1.11 ansible_user=pi device=rpi3

    [pis:vars]
    ansible_ssh_private_key_file=~/.ssh/id_ed25519
    workdir=/home/pi/pisplit

Sections are `[group]` (one host a line, `key=value` host variables after the name), `[group:vars]`
(one `key=value` a line), `[group:children]` (one group name a line) and `[all:vars]`. A host may be
listed in several groups; its variables are merged as Ansible does: `all` first, then parent groups
before child groups (alphabetical among equals), then the host line. Every problem is reported as
`FILE:LINE: reason`.
"""
from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from layers.errors import PisplitError
from partitioners.devices import device_kind

DEFAULT_WORKDIR = "~/pisplit"
DEFAULT_PYTHON = "python3"

# Keys pisplit reads; the aliases are Ansible's older spellings of the same variables.
KNOWN_KEYS = {
    "ansible_host": "address to connect to (default: the host name)",
    "ansible_port": "ssh port (default 22)",
    "ansible_user": "login user (default: your user on the head node)",
    "ansible_ssh_private_key_file": "private key for ssh (default: ssh-agent and ~/.ssh/id_*)",
    "ansible_python_interpreter": "python used to create the venv when python= is not set",
    "device": "device kind (rpi3, rpi4, rpi5); default: from the Pi model found by pisplit provision",
    "slots": "MPI ranks this host runs (default 1)",
    "workdir": "remote directory for the venv, code, models and plans (default ~/pisplit)",
    "python": "remote python that creates the venv (default python3)",
    "mpi_network": "CIDR of the network MPI uses between hosts, e.g. 192.168.1.0/24 (default: any)",
}
ALIASES = {"ansible_ssh_host": "ansible_host", "ansible_ssh_port": "ansible_port",
           "ansible_ssh_user": "ansible_user", "ansible_private_key_file": "ansible_ssh_private_key_file"}

_SECTION = re.compile(r"^\[([A-Za-z0-9_.-]+)(?::(vars|children))?\]$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]+$")


@dataclass(frozen=True)
class Host:
    """One inventory host with its merged variables resolved and checked."""

    name: str
    address: str
    port: int = 22
    user: str | None = None  # None: the head node's user, as ssh does
    key_file: str | None = None  # as written (~ not expanded): expanded on the head node when used
    device: str | None = None  # a key of partitioners.devices.DEVICE_KINDS
    slots: int = 1
    workdir: str = DEFAULT_WORKDIR  # absolute or ~/...; ~ is the remote user's home
    python: str = DEFAULT_PYTHON
    mpi_network: str | None = None
    groups: tuple = ()
    line: int = 0  # line of the host's first entry

    @property
    def target(self) -> str:
        """user@address:port, for messages."""
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.address}:{self.port}"


@dataclass
class Inventory:
    """The hosts of an inventory file, in file order, and its groups."""

    path: Path
    hosts: list[Host]
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> host names (children included)

    def host(self, name: str) -> Host:
        """The host called `name`; raises PisplitError listing the known names."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise PisplitError(f"inventory {self.path}: no host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    def select(self, names: str | list[str] | None) -> list[Host]:
        """Hosts named by a comma-separated list of host and group names (None: every host), in file order."""
        if not names:
            return list(self.hosts)
        wanted: set[str] = set()
        for name in names.split(",") if isinstance(names, str) else names:
            name = name.strip()
            if not name:
                continue
            if name in self.groups:
                wanted.update(self.groups[name])
            else:
                wanted.add(self.host(name).name)
        return [h for h in self.hosts if h.name in wanted]


def read_inventory(path: str | Path) -> Inventory:
    """Parse and check an inventory file; raises PisplitError as 'FILE:LINE: reason'."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PisplitError(f"inventory {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PisplitError(f"inventory {path}: cannot read ({exc})") from None
    return parse_inventory(text, path)


def parse_inventory(text: str, path: str | Path = "inventory.ini") -> Inventory:
    """Parse inventory text (see the module docstring); `path` is only used in messages."""
    return _Parser(Path(path)).parse(text)


class _Parser:
    def __init__(self, path: Path):
        self.path = path
        self.host_lines: dict[str, int] = {}  # host -> first line
        self.host_vars: dict[str, dict[str, tuple[str, int]]] = {}  # host -> key -> (value, line)
        self.members: dict[str, list[str]] = {"all": [], "ungrouped": []}  # group -> direct hosts
        self.group_vars: dict[str, dict[str, tuple[str, int]]] = {}
        self.children: dict[str, list[tuple[str, int]]] = {}

    def fail(self, line: int, reason: str) -> PisplitError:
        return PisplitError(f"{self.path}:{line}: {reason}")

    def parse(self, text: str) -> Inventory:
        group, kind = "ungrouped", "hosts"
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                match = _SECTION.match(line)
                if not match:
                    raise self.fail(number, f"malformed section header {line!r} (expected [group], [group:vars] or [group:children])")
                group, kind = match.group(1), match.group(2) or "hosts"
                if kind == "hosts" and group == "all":
                    raise self.fail(number, "[all] cannot list hosts; put them in a group (every host is in 'all')")
                if kind == "hosts":
                    self.members.setdefault(group, [])
                elif kind == "children":
                    self.children.setdefault(group, [])
                continue
            if kind == "hosts":
                self.host_line(group, line, number)
            elif kind == "vars":
                key, value = self.assignment(line, number)
                self.group_vars.setdefault(group, {})[key] = (value, number)
            else:
                if not _NAME.match(line):
                    raise self.fail(number, f"[{group}:children]: {line!r} is not a group name")
                self.children[group].append((line, number))
        return self.finish()

    def split(self, line: str, number: int) -> list[str]:
        try:
            return shlex.split(line, comments=True)
        except ValueError as exc:
            raise self.fail(number, f"malformed line ({exc}): {line!r}") from None

    def assignment(self, line: str, number: int) -> tuple[str, str]:
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise self.fail(number, f"malformed variable line {line!r} (expected key=value)")
        words = self.split(value, number) if value.strip() else [""]
        if len(words) != 1:
            raise self.fail(number, f"variable {key}: value {value.strip()!r} has spaces; quote it")
        return self.check_key(key, number), words[0]

    def check_key(self, key: str, number: int) -> str:
        key = ALIASES.get(key, key)
        if key in KNOWN_KEYS or key.startswith("ansible_"):
            return key
        # Other variables are the user's own (Ansible allows any); a near miss of ours is a typo.
        close = difflib.get_close_matches(key, list(KNOWN_KEYS), n=1, cutoff=0.8)
        if close:
            raise self.fail(number, f"unknown key {key!r}: did you mean {close[0]!r}?")
        return key

    def host_line(self, group: str, line: str, number: int) -> None:
        words = self.split(line, number)
        if not words:
            return
        name, pairs = words[0], words[1:]
        if "[" in name or "]" in name:
            raise self.fail(number, f"host {name!r}: host ranges like pi-[0:3] are not supported; list each host")
        if not _NAME.match(name) or "=" in name:
            raise self.fail(number, f"malformed host line {line!r} (expected: NAME key=value ...)")
        if name in self.members[group]:
            raise self.fail(number, f"duplicate host {name!r} in group [{group}] (first on line {self.host_lines[name]})")
        values: dict[str, tuple[str, int]] = {}
        for pair in pairs:
            if "=" not in pair:
                raise self.fail(number, f"host {name}: {pair!r} is not key=value")
            key, value = pair.split("=", 1)
            if not key:
                raise self.fail(number, f"host {name}: {pair!r} has no key")
            key = self.check_key(key, number)
            if key in values:
                raise self.fail(number, f"host {name}: key {key} given twice")
            values[key] = (value, number)
        if name in self.host_lines and values:
            previous = self.host_vars[name]
            if previous and {k: v for k, (v, _) in previous.items()} != {k: v for k, (v, _) in values.items()}:
                raise self.fail(number, f"duplicate host {name!r} with other variables than on line {self.host_lines[name]}")
        self.host_lines.setdefault(name, number)
        if values:
            self.host_vars[name] = values
        else:
            self.host_vars.setdefault(name, {})
        self.members[group].append(name)

    def finish(self) -> Inventory:
        for parent, kids in self.children.items():
            for child, number in kids:
                if child not in self.members and child not in self.children:
                    raise self.fail(number, f"[{parent}:children]: no group {child!r}")
        depth = self.depths()
        groups = {g: self.hosts_of(g) for g in set(self.members) | set(self.children)}
        groups["all"] = list(self.host_lines)
        if not self.host_lines:
            raise PisplitError(f"inventory {self.path}: no hosts")
        hosts = []
        for name, first_line in self.host_lines.items():
            in_groups = sorted((g for g, names in groups.items() if name in names and g not in ("all", "ungrouped")),
                               key=lambda g: (depth.get(g, 1), g))
            merged: dict[str, tuple[str, int]] = dict(self.group_vars.get("all", {}))
            for g in in_groups:
                merged.update(self.group_vars.get(g, {}))
            merged.update(self.host_vars.get(name, {}))
            hosts.append(self.make_host(name, first_line, merged, tuple(in_groups)))
        self.check_addresses(hosts)
        return Inventory(self.path, hosts, {g: [h for h in self.host_lines if h in names] for g, names in groups.items()})

    def depths(self) -> dict[str, int]:
        depth: dict[str, int] = {}

        def visit(group: str, level: int, trail: tuple) -> None:
            if group in trail:
                raise PisplitError(f"{self.path}: group {group!r} is its own descendant ({' -> '.join(trail + (group,))})")
            depth[group] = max(depth.get(group, 0), level)
            for child, _ in self.children.get(group, []):
                visit(child, level + 1, trail + (group,))

        for group in set(self.members) | set(self.children):
            visit(group, 1, ())
        return depth

    def hosts_of(self, group: str, trail: tuple = ()) -> list[str]:
        names = list(self.members.get(group, []))
        for child, _ in self.children.get(group, []):
            if child not in trail:
                names += [n for n in self.hosts_of(child, trail + (group,)) if n not in names]
        return names

    def make_host(self, name: str, first_line: int, values: dict[str, tuple[str, int]], groups: tuple) -> Host:
        def get(key: str):
            return values.get(key, (None, first_line))

        def text(key: str, what: str) -> str | None:
            value, number = get(key)
            if value is None:
                return None
            if not value or any(c.isspace() for c in value):
                raise self.fail(number, f"host {name}: {key} {value!r} is not a valid {what}")
            return value

        def integer(key: str, default: int, low: int, high: int) -> int:
            value, number = get(key)
            if value is None:
                return default
            try:
                n = int(value)
            except ValueError:
                n = None
            if n is None or not low <= n <= high:
                raise self.fail(number, f"host {name}: {key} {value!r} is not an integer in [{low}, {high}]")
            return n

        device, device_line = get("device")
        if device is not None:
            try:
                device = device_kind(device).name
            except PisplitError as exc:
                raise self.fail(device_line, f"host {name}: {exc}") from None
        workdir, workdir_line = get("workdir")
        workdir = DEFAULT_WORKDIR if workdir is None else workdir
        if not (workdir.startswith("/") or workdir == "~" or workdir.startswith("~/")) or "\n" in workdir:
            raise self.fail(workdir_line, f"host {name}: workdir {workdir!r} must be an absolute path or start with ~/")
        network = text("mpi_network", "CIDR network (like 192.168.1.0/24)")
        if network is not None and not re.match(r"^[0-9A-Fa-f.:]+/\d{1,3}$", network):
            raise self.fail(get("mpi_network")[1], f"host {name}: mpi_network {network!r} is not a CIDR network like 192.168.1.0/24")
        return Host(
            name=name,
            address=text("ansible_host", "address") or name,
            port=integer("ansible_port", 22, 1, 65535),
            user=text("ansible_user", "user name"),
            key_file=text("ansible_ssh_private_key_file", "key file path"),
            device=device,
            slots=integer("slots", 1, 1, 1024),
            workdir=workdir.rstrip("/") or "/",
            python=text("python", "python command") or text("ansible_python_interpreter", "python command") or DEFAULT_PYTHON,
            mpi_network=network,
            groups=groups,
            line=first_line,
        )

    def check_addresses(self, hosts: list[Host]) -> None:
        seen: dict[tuple[str, int], Host] = {}
        for host in hosts:
            key = (host.address, host.port)
            if key in seen:
                first = seen[key]
                raise self.fail(host.line, f"duplicate host: {host.name} has the address {host.address}:{host.port} of "
                                           f"{first.name} (line {first.line}); list it once with slots=N instead")
            seen[key] = host
