"""Read an Ansible-compatible inventory.ini: the hosts of a cluster, how to reach them, what they are.

    [pis]
    pi-0 ansible_host=192.168.1.10 ansible_user=pi device=rpi4 slots=1
    pi-1 ansible_host=192.168.1.11 ansible_user=pi device=rpi3

    [pis:vars]
    ansible_ssh_private_key_file=~/.ssh/id_ed25519
    workdir=/home/pi/pisplit

Sections are `[group]` (one host a line, `key=value` host variables after the name), `[group:vars]`
(one `key=value` a line), `[group:children]` (one group name a line) and `[all:vars]`. A host may be
listed in several groups. As in Ansible, a host line may name a range of hosts (`pi-[0:3]`,
`pi-[01:04]`, `rack-[a:c]`, `pi-[0:8:2]`) and a port (`pi-0:2222`, `pi-[0:3]:2222`).

Beside the inventory file, `group_vars/` and `host_vars/` hold variables as Ansible reads them: for
a group or host NAME, the YAML (or JSON) files NAME, NAME.yml, NAME.yaml, NAME.json and every such
file in a directory NAME/. A file there that pisplit cannot read or that names no group or host of
the inventory is an error naming the file, never skipped (hidden files and `~` backups aside).

Variables are merged with Ansible's precedence, later winning:
  1. [all:vars]                 2. [group:vars], parents before children (ansible_group_priority,
  3. group_vars/all                then name, among equals)
  4. group_vars/GROUP, in the order of 2    5. the host's line    6. host_vars/HOST
The JSON that `ansible-inventory -i ... --list` prints is read too (a file whose text starts with
`{`): its `_meta.hostvars` are the hosts' merged variables. JSON in the YAML form below (groups'
`hosts`/`children` as objects) is read as YAML, as Ansible's yaml plugin reads .json files.

Ansible's YAML inventory (`hosts.yml`, `inventory.yaml`: a file named .yml/.yaml, or whose first line
is a top-level `NAME:` key) is read with the same meaning: top-level keys are groups (usually `all`),
each with optional `hosts:` (host pattern -> its variables, ranges and `:port` as in INI), `vars:`
and `children:` (group -> the same structure, to any depth); hosts directly under `all` are
ungrouped. A host listed several times gets its variables merged, later winning, as Ansible does.
A key other than hosts/vars/children, a duplicate key or YAML that does not parse is an error
naming the file and line.

Every problem is reported as `FILE:LINE: reason` (`FILE: reason` for vars and JSON files).
"""
from __future__ import annotations

import difflib
import json
import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

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
_RANGE = re.compile(r"\[([^\]]*)\]")
VARS_EXTENSIONS = ("", ".yml", ".yaml", ".json")  # as Ansible's host_group_vars plugin, in its load order

# Where a value came from: a line of the inventory file, or a vars file (its path).
Origin = Union[int, str]


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
    """Parse and check an inventory file (INI, or `ansible-inventory --list` JSON) with the
    group_vars/ and host_vars/ beside it; raises PisplitError as 'FILE:LINE: reason'."""
    path = Path(path)
    if path.is_dir():
        raise PisplitError(f"inventory {path}: a directory; give the inventory file inside it")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PisplitError(f"inventory {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PisplitError(f"inventory {path}: cannot read ({exc})") from None
    return parse_inventory(text, path, vars_dir=path.parent)


def parse_inventory(text: str, path: str | Path = "inventory.ini", vars_dir: str | Path | None = None) -> Inventory:
    """Parse inventory text (see the module docstring); `path` is only used in messages. With
    `vars_dir`, the group_vars/ and host_vars/ directories in it are read too."""
    parser = _Parser(Path(path), Path(vars_dir) if vars_dir is not None else None)
    if text.lstrip().startswith("{"):
        return parser.parse_list_json(text)
    if is_yaml_inventory(text, Path(path)):
        return parser.parse_yaml(text)
    return parser.parse(text)


_YAML_TOP_KEY = re.compile(r"^(---\s*$|[A-Za-z0-9_.-]+:\s*(#.*)?$)")


def is_yaml_inventory(text: str, path: Path) -> bool:
    """An Ansible YAML inventory: named .yml/.yaml, or its first significant line is `---` or a
    top-level `NAME:` key (an INI line never ends in ':' and a host:port ends in digits)."""
    if path.suffix.lower() in (".yml", ".yaml"):
        return True
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        return bool(_YAML_TOP_KEY.match(line))
    return False


MAX_RANGE_HOSTS = 4096  # hosts one host line's ranges may make: 'pi-[0:999999999]' is a typo, not a cluster


def expand_host_pattern(pattern: str) -> list[str]:
    """Ansible's host ranges: 'pi-[0:3]' -> pi-0..pi-3, '[01:04]' keeps the leading zeros, '[a:c]'
    letters, '[0:8:2]' a stride; several ranges multiply. Raises ValueError for a malformed range or
    one that makes more than MAX_RANGE_HOSTS hosts."""
    match = _RANGE.search(pattern)
    if not match:
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    parts = match.group(1).split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"range [{match.group(1)}] is not [start:end] or [start:end:stride]")
    start, end = parts[0] or "0", parts[1]
    try:
        stride = int(parts[2]) if len(parts) == 3 and parts[2] else 1
    except ValueError:
        raise ValueError(f"range [{match.group(1)}]: stride {parts[2]!r} is not a number") from None
    if stride < 1:
        raise ValueError(f"range [{match.group(1)}]: stride must be at least 1")
    if start.isdigit() and end.isdigit():
        if int(end) < int(start):
            raise ValueError(f"range [{match.group(1)}]: end is before start")
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        if len(range(int(start), int(end) + 1, stride)) > MAX_RANGE_HOSTS:
            raise ValueError(f"range [{match.group(1)}] makes {len(range(int(start), int(end) + 1, stride))} hosts "
                             f"(at most {MAX_RANGE_HOSTS})")
        items = [str(i).zfill(width) for i in range(int(start), int(end) + 1, stride)]
    elif len(start) == 1 and len(end) == 1 and start in string.ascii_letters and end in string.ascii_letters:
        letters = string.ascii_letters
        if letters.index(end) < letters.index(start):
            raise ValueError(f"range [{match.group(1)}]: end is before start")
        items = list(letters[letters.index(start):letters.index(end) + 1:stride])
    else:
        raise ValueError(f"range [{match.group(1)}]: start and end must both be numbers or both single letters")
    rests = expand_host_pattern(tail)
    if len(items) * len(rests) > MAX_RANGE_HOSTS:
        raise ValueError(f"{pattern}: its ranges make {len(items) * len(rests)} hosts (at most {MAX_RANGE_HOSTS})")
    return [head + item + rest for item in items for rest in rests]


def split_port(token: str) -> tuple[str, int | None]:
    """'pi-0:2222' -> ('pi-0', 2222); a colon inside a range's brackets is not a port."""
    match = re.match(r"^(.+):(\d+)$", token)
    if match and ":" not in _RANGE.sub("", match.group(1)):
        return match.group(1), int(match.group(2))
    return token, None


def _vars_value(value):
    """A variable's value from a YAML/JSON vars file as the string an INI file would hold (None for lists and maps)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


class _Parser:
    def __init__(self, path: Path, vars_dir: Path | None = None):
        self.path = path
        self.vars_dir = vars_dir
        self.host_lines: dict[str, int] = {}  # host -> first line
        self.host_vars: dict[str, dict[str, tuple[str, Origin]]] = {}  # host -> key -> (value, origin)
        self.members: dict[str, list[str]] = {"all": [], "ungrouped": []}  # group -> direct hosts
        self.group_vars: dict[str, dict[str, tuple[str, Origin]]] = {}
        self.children: dict[str, list[tuple[str, int]]] = {}
        self.file_group_vars: dict[str, dict[str, tuple[str, Origin]]] = {}  # group_vars/
        self.file_host_vars: dict[str, dict[str, tuple[str, Origin]]] = {}  # host_vars/

    def fail(self, origin: Origin, reason: str) -> PisplitError:
        if isinstance(origin, str):
            return PisplitError(f"{origin}: {reason}")
        return PisplitError(f"{self.path}:{origin}: {reason}")

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

    def parse_list_json(self, text: str) -> Inventory:
        """The JSON `ansible-inventory --list` prints: groups with hosts, children and vars; `_meta.hostvars`."""
        where = str(self.path)
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise self.fail(where, f"not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise self.fail(where, "not an ansible-inventory --list document (expected a JSON object)")
        if any(isinstance(body, dict) and any(isinstance(body.get(k), dict) for k in ("hosts", "children"))
               for group, body in doc.items() if group != "_meta"):
            return self.parse_yaml(text)  # the YAML inventory's structure written as JSON (Ansible's yaml plugin reads .json too)
        meta = doc.get("_meta", {})
        hostvars = meta.get("hostvars", {}) if isinstance(meta, dict) else None
        if not isinstance(hostvars, dict):
            raise self.fail(where, "_meta.hostvars is not an object of host -> variables")
        for group, body in doc.items():
            if group == "_meta":
                continue
            if not _NAME.match(group) or not isinstance(body, dict):
                raise self.fail(where, f"group {group!r}: expected an object with hosts, children and vars")
            unknown = set(body) - {"hosts", "children", "vars"}
            if unknown:
                raise self.fail(where, f"group {group}: unknown fields {', '.join(sorted(unknown))}")
            self.members.setdefault(group, [])
            for name in body.get("hosts", []):
                self.check_name(str(name), where)
                if name not in self.host_lines:
                    self.host_lines[name] = 0
                    self.host_vars[name] = self.mapping(hostvars.get(name, {}) or {}, f"{where}: _meta.hostvars.{name}")
                if name not in self.members[group]:
                    self.members[group].append(name)
            for child in body.get("children", []):
                self.children.setdefault(group, []).append((str(child), 0))
            if body.get("vars"):
                self.group_vars[group] = self.mapping(body["vars"], f"{where}: group {group} vars")
        for name in hostvars:
            if name not in self.host_lines:
                raise self.fail(where, f"_meta.hostvars has host {name!r}, which no group lists")
        self.members["all"] = []  # 'all' is every host anyway
        self.children.pop("all", None)
        return self.finish()

    def parse_yaml(self, text: str) -> Inventory:
        """Ansible's YAML inventory (see the module docstring), walked as YAML nodes so that every
        error names its line."""
        import yaml  # a runtime dependency; imported only for YAML inventories

        try:
            loader = yaml.SafeLoader(text)
            try:
                root = loader.get_single_node()
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            if mark is not None:
                raise self.fail(mark.line + 1, f"not valid YAML ({problem}, column {mark.column + 1})") from None
            raise self.fail(str(self.path), f"not valid YAML ({problem})") from None
        if root is None:
            raise PisplitError(f"inventory {self.path}: no hosts (the YAML file is empty)")
        if not isinstance(root, yaml.MappingNode):
            raise self.fail(root.start_mark.line + 1, "a YAML inventory is a mapping of groups (all:, then hosts:, "
                                                      "vars:, children:)")
        for key, body, _ in self.yaml_items(root, "the inventory"):
            self.yaml_group(key, body, None)
        self.members.setdefault("all", [])
        self.children.pop("all", None)  # every group is in 'all'; as INI, top-level groups are depth 1
        return self.finish()

    def yaml_items(self, node, what: str):
        """(key, value node) pairs of a mapping node, keys as strings; refuses non-scalar and duplicate keys."""
        import yaml

        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                raise self.fail(line, f"{what}: keys must be plain names")
            key = str(key_node.value)
            if key in seen:
                raise self.fail(line, f"{what}: {key!r} given twice (first on line {seen[key]})")
            seen[key] = line
            yield key, value_node, line

    def yaml_group(self, group: str, node, parent: str | None) -> None:
        import yaml

        line = node.start_mark.line + 1
        if not _NAME.match(group):
            raise self.fail(line, f"{group!r} is not a group name")
        if group == "ungrouped" and parent not in (None, "all"):
            raise self.fail(line, "'ungrouped' cannot be a child group")
        self.members.setdefault(group, [])
        if parent is not None and parent != "all":
            kids = self.children.setdefault(parent, [])
            if group not in [k for k, _ in kids]:
                kids.append((group, line))
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null", "Null", "NULL"):
            return  # 'group:' with nothing under it
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(line, f"group {group}: expected hosts:, vars: and children: under it")
        for section, body, where in self.yaml_items(node, f"group {group}"):
            if section not in ("hosts", "vars", "children"):
                raise self.fail(where, f"group {group}: unknown key {section!r} (a group has hosts:, vars: and children:"
                                       f"; a host goes under hosts:)")
            if isinstance(body, yaml.ScalarNode) and body.value in ("", "~", "null", "Null", "NULL"):
                continue
            if isinstance(body, yaml.ScalarNode) and section != "vars":
                entries = [(body.value, None, where)]  # 'hosts: pi-0' is one host, as Ansible reads it
            elif isinstance(body, yaml.MappingNode):
                entries = list(self.yaml_items(body, f"group {group} {section}"))
            else:
                raise self.fail(where, f"group {group}: {section} must be a mapping (name: ...), not a "
                                       f"{'list' if isinstance(body, yaml.SequenceNode) else 'value'}")
            if section == "vars":
                values = self.yaml_vars(body, f"group {group} vars")
                self.group_vars.setdefault(group, {}).update(values)
            elif section == "children":
                for child, child_node, _ in entries:
                    if child_node is None:
                        raise self.fail(where, f"group {group}: children must be a mapping (child:), not a value")
                    self.yaml_group(child, child_node, group)
            else:
                for pattern, host_node, key_line in entries:
                    self.yaml_host(group, pattern, host_node, key_line)

    def yaml_vars(self, node, what: str) -> dict[str, tuple[str, Origin]]:
        """A YAML mapping of variables, checked as INI ones; every value's origin is its line."""
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node.start_mark.line + 1, f"{what}: expected key: value lines")
        constructor = yaml.SafeLoader("")
        out: dict[str, tuple[str, Origin]] = {}
        for key, value_node, _ in self.yaml_items(node, what):
            line = value_node.start_mark.line + 1
            try:
                value = constructor.construct_object(value_node, deep=True)
            except yaml.YAMLError as exc:
                raise self.fail(line, f"{what}: {key}: {getattr(exc, 'problem', None) or exc}") from None
            checked = self.mapping({key: value}, f"{self.path}:{line}: {what}")
            out.update({k: (v, line) for k, (v, _) in checked.items()})
        return out

    def yaml_host(self, group: str, pattern: str, node, line: int) -> None:
        import yaml

        pattern, port = split_port(str(pattern))
        try:
            names = expand_host_pattern(pattern)
        except ValueError as exc:
            raise self.fail(line, f"host {pattern!r}: {exc}") from None
        for name in names:
            self.check_name(name, line)
        values: dict[str, tuple[str, Origin]] = {}
        if port is not None:
            values["ansible_port"] = (str(port), line)
        if node is not None and not (isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null", "Null", "NULL")):
            if not isinstance(node, yaml.MappingNode):
                raise self.fail(line, f"host {pattern}: expected its variables as key: value lines under it "
                                      "(or nothing: 'host:')")
            values.update(self.yaml_vars(node, f"host {pattern}"))
        target = "ungrouped" if group == "all" else group
        for name in names:
            self.host_lines.setdefault(name, line)
            self.host_vars.setdefault(name, {}).update(values)  # Ansible merges a host's entries, later winning
            if name not in self.members[target]:
                self.members[target].append(name)

    def mapping(self, values, where: str) -> dict[str, tuple[str, Origin]]:
        """Variables of a vars file or JSON object, checked like INI ones; `where` names the file in messages."""
        if not isinstance(values, dict):
            raise PisplitError(f"{where}: expected a mapping of variables (key: value), got {type(values).__name__}"
                               + (" (YAML is key: value, not key=value)" if isinstance(values, str) and "=" in values else ""))
        out: dict[str, tuple[str, Origin]] = {}
        for key, value in values.items():
            if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise PisplitError(f"{where}: {key!r} is not a variable name")
            key = self.check_key(key, where)
            text = _vars_value(value)
            if text is None:
                if key in KNOWN_KEYS:
                    raise PisplitError(f"{where}: {key} must be a single value, not a {type(value).__name__}")
                continue  # the user's own structured variable: pisplit does not use it
            out[key] = (text, where)
        return out

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

    def check_key(self, key: str, origin: Origin) -> str:
        key = ALIASES.get(key, key)
        if key in KNOWN_KEYS or key.startswith("ansible_"):
            return key
        # Other variables are the user's own (Ansible allows any); a near miss of ours is a typo.
        close = difflib.get_close_matches(key, list(KNOWN_KEYS), n=1, cutoff=0.8)
        if close:
            raise self.fail(origin, f"unknown key {key!r}: did you mean {close[0]!r}?")
        return key

    def check_name(self, name: str, origin: Origin) -> None:
        if name.startswith("-"):
            raise self.fail(origin, f"host {name!r}: a name starting with '-' would be read as an option; refused")
        if not _NAME.match(name) or "=" in name:
            raise self.fail(origin, f"malformed host name {name!r}")

    def host_line(self, group: str, line: str, number: int) -> None:
        words = self.split(line, number)
        if not words:
            return
        pattern, pairs = words[0], words[1:]
        pattern, port = split_port(pattern)
        try:
            names = expand_host_pattern(pattern)
        except ValueError as exc:
            raise self.fail(number, f"host {pattern!r}: {exc}") from None
        for name in names:
            if name.startswith("-"):
                raise self.fail(number, f"host {name!r}: a name starting with '-' would be read as an option; refused")
            if not _NAME.match(name) or "=" in name:
                raise self.fail(number, f"malformed host line {line!r} (expected: NAME[:PORT] key=value ...)")
        values: dict[str, tuple[str, Origin]] = {}
        if port is not None:
            values["ansible_port"] = (str(port), number)
        explicit = set()
        for pair in pairs:
            if "=" not in pair:
                raise self.fail(number, f"host {pattern}: {pair!r} is not key=value")
            key, value = pair.split("=", 1)
            if not key:
                raise self.fail(number, f"host {pattern}: {pair!r} has no key")
            key = self.check_key(key, number)
            if key in explicit:
                raise self.fail(number, f"host {pattern}: key {key} given twice")
            explicit.add(key)
            values[key] = (value, number)  # as Ansible: ansible_port=N on the line beats NAME:PORT
        for name in names:
            self.add_host(group, name, dict(values), number)

    def add_host(self, group: str, name: str, values: dict[str, tuple[str, Origin]], number: int) -> None:
        if name in self.members[group]:
            raise self.fail(number, f"duplicate host {name!r} in group [{group}] (first on line {self.host_lines[name]})")
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

    # --- group_vars/ and host_vars/ ---------------------------------------------------------------

    def read_vars_dirs(self, groups: list[str]) -> None:
        if self.vars_dir is None:
            return
        self.file_group_vars = self.read_vars_dir("group_vars", "group", groups)
        self.file_host_vars = self.read_vars_dir("host_vars", "host", list(self.host_lines))

    def read_vars_dir(self, folder: str, what: str, names: list[str]) -> dict[str, dict[str, tuple[str, Origin]]]:
        base = self.vars_dir / folder
        if not base.exists():
            return {}
        if not base.is_dir():
            raise PisplitError(f"{base}: not a directory (Ansible's {folder}/ holds one vars file or directory per {what})")
        found: dict[str, dict[str, tuple[str, Origin]]] = {}
        claimed: set[Path] = set()
        for name in names:
            for ext in VARS_EXTENSIONS:
                entry = base / f"{name}{ext}"
                if not entry.exists():
                    continue
                claimed.add(entry)
                files = self.vars_files(entry) if entry.is_dir() else [entry]
                for file in files:
                    found.setdefault(name, {}).update(self.read_vars_file(file))
        for entry in sorted(base.iterdir()):
            if entry in claimed or entry.name.startswith(".") or entry.name.endswith("~"):
                continue
            stem = entry.stem if entry.is_file() and entry.suffix in VARS_EXTENSIONS else entry.name
            known = ", ".join(sorted(names)) or "none"
            raise PisplitError(f"{entry}: names no {what} of {self.path} ({what}s: {known}); vars files are YAML or JSON "
                               f"named {what.upper()}, {what.upper()}.yml, {what.upper()}.yaml, {what.upper()}.json or "
                               f"a directory {what.upper()}/ (this one would be for {stem!r})")
        return found

    def vars_files(self, folder: Path) -> list[Path]:
        """The vars files in a group_vars/NAME/ directory, recursively, in name order (Ansible's order)."""
        files = []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or entry.name.endswith("~"):
                continue
            if entry.is_dir():
                files += self.vars_files(entry)
            elif entry.suffix in VARS_EXTENSIONS:
                files.append(entry)
            else:
                raise PisplitError(f"{entry}: not a vars file pisplit reads (YAML or JSON: no extension, .yml, .yaml or .json)")
        return files

    def read_vars_file(self, file: Path) -> dict[str, tuple[str, Origin]]:
        try:
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PisplitError(f"{file}: cannot read ({exc})") from None
        if text.startswith("$ANSIBLE_VAULT"):
            raise PisplitError(f"{file}: encrypted with ansible-vault; pisplit cannot read it (keep pisplit's keys in a plain file)")
        if file.suffix == ".json":
            try:
                values = json.loads(text) if text.strip() else {}
            except ValueError as exc:
                raise PisplitError(f"{file}: not valid JSON ({exc})") from None
        else:
            import yaml  # only inventories with vars files need it

            try:
                values = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise PisplitError(f"{file}: not valid YAML ({problem}{where})") from None
            values = {} if values is None else values
        return self.mapping(values, str(file))

    # --- merging ------------------------------------------------------------------------------------

    def finish(self) -> Inventory:
        for parent, kids in self.children.items():
            for child, number in kids:
                if child not in self.members and child not in self.children:
                    raise self.fail(number if number else str(self.path), f"[{parent}:children]: no group {child!r}")
        depth = self.depths()
        groups = {g: self.hosts_of(g) for g in set(self.members) | set(self.children)}
        groups["all"] = list(self.host_lines)
        groups["ungrouped"] = [h for h in self.host_lines
                               if not any(h in names for g, names in groups.items() if g not in ("all", "ungrouped"))]
        if not self.host_lines:
            raise PisplitError(f"inventory {self.path}: no hosts")
        self.read_vars_dirs(sorted(groups))
        priority = {g: self.group_priority(g) for g in groups}
        hosts = []
        for name, first_line in self.host_lines.items():
            in_groups = sorted((g for g, names in groups.items() if name in names and g != "all"),
                               key=lambda g: (depth.get(g, 1), priority[g], g))
            merged: dict[str, tuple[str, Origin]] = dict(self.group_vars.get("all", {}))
            for g in in_groups:
                merged.update(self.group_vars.get(g, {}))
            merged.update(self.file_group_vars.get("all", {}))
            for g in in_groups:
                merged.update(self.file_group_vars.get(g, {}))
            merged.update(self.host_vars.get(name, {}))
            merged.update(self.file_host_vars.get(name, {}))
            hosts.append(self.make_host(name, first_line, merged, tuple(g for g in in_groups if g != "ungrouped")))
        self.check_addresses(hosts)
        return Inventory(self.path, hosts, {g: [h for h in self.host_lines if h in names] for g, names in groups.items()})

    def group_priority(self, group: str) -> int:
        """ansible_group_priority of a group's [group:vars] (default 1): a higher one's variables win among equals."""
        value, origin = self.group_vars.get(group, {}).get("ansible_group_priority", ("1", 0))
        try:
            return int(value)
        except ValueError:
            raise self.fail(origin, f"[{group}:vars]: ansible_group_priority {value!r} is not an integer") from None

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

    def make_host(self, name: str, first_line: int, values: dict[str, tuple[str, Origin]], groups: tuple) -> Host:
        default_origin: Origin = first_line if first_line else str(self.path)

        def get(key: str):
            return values.get(key, (None, default_origin))

        def text(key: str, what: str) -> str | None:
            value, origin = get(key)
            if value is None:
                return None
            if not value or any(c.isspace() for c in value):
                raise self.fail(origin, f"host {name}: {key} {value!r} is not a valid {what}")
            if value.startswith("-") and key in ("ansible_host", "ansible_user"):
                raise self.fail(origin, f"host {name}: {key} {value!r} starts with '-' and would be read as an ssh option; refused")
            return value

        def integer(key: str, default: int, low: int, high: int) -> int:
            value, origin = get(key)
            if value is None:
                return default
            try:
                n = int(value)
            except ValueError:
                n = None
            if n is None or not low <= n <= high:
                raise self.fail(origin, f"host {name}: {key} {value!r} is not an integer in [{low}, {high}]")
            return n

        device, device_origin = get("device")
        if device is not None:
            try:
                device = device_kind(device).name
            except PisplitError as exc:
                raise self.fail(device_origin, f"host {name}: {exc}") from None
        workdir, workdir_origin = get("workdir")
        workdir = DEFAULT_WORKDIR if workdir is None else workdir
        if not (workdir.startswith("/") or workdir == "~" or workdir.startswith("~/")) or "\n" in workdir:
            raise self.fail(workdir_origin, f"host {name}: workdir {workdir!r} must be an absolute path or start with ~/")
        if not re.fullmatch(r"[A-Za-z0-9._/~+@%,=-]+", workdir) or "/-" in workdir:
            # mpirun puts --prefix WORKDIR/venv into a command line the remote shell runs: no $(...), ;, quotes or spaces
            raise self.fail(workdir_origin, f"host {name}: workdir {workdir!r} may hold only letters, digits and ._/~+@%,=- "
                                            "(mpirun passes it through the remote shell), and no part may start with '-'")
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
                raise self.fail(host.line or str(self.path), f"duplicate host: {host.name} has the address {host.address}:{host.port} of "
                                                             f"{first.name} (line {first.line}); list it once with slots=N instead")
            seen[key] = host
