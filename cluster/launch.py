"""Build the mpirun command that runs a plan's ranks on an inventory's hosts, over ssh.

The head node (where this runs) starts `mpirun`; Open MPI reaches each host with OpenSSH using the
ssh_config that `write_ssh_config` writes from the inventory (address, port, user, the cluster key
`pisplit provision` installed, known_hosts with strict checking, keep-alives that end the ssh of a Pi
that went silent within about 15 s: SSH_ALIVE_*), one host a line of the hostfile
in rank order (`--map-by seq`), and the remote venv as `--prefix` so every host finds `prted`.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from layers.errors import PisplitError

from .facts import read_facts, state_dir
from .inventory import Host, Inventory
from .mpirun import cluster_tcp_networks, mpirun_path

DEFAULT_RANK_COMMAND = "{pisplit} run {plan} --frames {frames}"
# mpirun's ssh to each host asks for an answer after this many seconds of silence and gives up after
# SSH_ALIVE_COUNT unanswered asks: a Pi that loses its link (Wi-Fi gone, powered off) is noticed within
# about 5 x 3 = 15 s, and its ssh then ends instead of holding mpirun (and its pipes) until TCP gives
# up, many minutes later. A live Pi on a LAN answers within milliseconds; a busy one within a second.
SSH_ALIVE_INTERVAL_S = 5
SSH_ALIVE_COUNT = 3


def default_known_hosts() -> Path:
    """The known_hosts file provision records host keys in and mpirun's ssh checks them against."""
    return Path("~/.ssh/known_hosts").expanduser()


def default_cluster_key() -> Path:
    """The passphrase-less key `pisplit provision` installs on every host so mpirun's ssh needs no prompt."""
    return Path("~/.ssh/pisplit_ed25519").expanduser()


def plan_ranks(plan: dict, source: str = "plan") -> list[dict]:
    """The ranks a plan asks for: one dict per rank with optional 'host' and 'device'.

    Reads a pisplit plan's `devices` (each with "rank", "kind" and maybe "host"), else `plan["ranks"]`
    (a list; items may carry "host" and "device"), else `plan["n_ranks"]`. This is the only place
    launch looks into a plan.
    """
    if isinstance(plan.get("devices"), list) and plan["devices"]:
        try:
            devices = sorted(plan["devices"], key=lambda d: int(d["rank"]))
        except (KeyError, TypeError, ValueError):
            raise PisplitError(f"{source}: every entry of 'devices' needs an integer 'rank'") from None
        if [int(d["rank"]) for d in devices] != list(range(len(devices))):
            raise PisplitError(f"{source}: device ranks are not 0..{len(devices) - 1}")
        return [{k: v for k, v in (("host", d.get("host")), ("device", d.get("kind"))) if v} for d in devices]
    if isinstance(plan.get("ranks"), list):
        ranks = []
        for i, item in enumerate(plan["ranks"]):
            item = item if isinstance(item, dict) else {}
            ranks.append({k: item[k] for k in ("host", "device") if item.get(k)})
        if not ranks:
            raise PisplitError(f"{source}: 'ranks' is empty")
        return ranks
    n = plan.get("n_ranks")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        return [{} for _ in range(n)]
    raise PisplitError(f"{source}: has neither a 'ranks' list nor a positive integer 'n_ranks'")


def read_plan_ranks(path: str | Path) -> list[dict]:
    """plan_ranks of a plan JSON file; raises PisplitError when it is missing or malformed."""
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise PisplitError(f"plan {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise PisplitError(f"plan {path}: not readable JSON ({exc})") from None
    if not isinstance(plan, dict):
        raise PisplitError(f"plan {path}: expected a JSON object")
    return plan_ranks(plan, f"plan {path}")


def place_ranks(ranks: list[dict], hosts: list[Host], kinds: dict[str, str] | None = None, source: str | None = None) -> list[Host]:
    """The host of each rank: its 'host', else a host of its 'device' kind, else the next free slot.

    Hosts fill slot by slot in inventory order; `kinds` (host -> device kind) stands in for hosts
    without device=. Raises PisplitError when ranks outnumber slots or name unknown hosts, in one
    line beginning with `source` when given ("plan p.json: rank 1: no host has a free rpi3 slot: ...").
    Example: ranks [{}, {"device": "rpi4"}, {}] on pi-0 (rpi3, slots=2) and pi-1 (rpi4) -> pi-0, pi-1, pi-0.
    """
    kinds = kinds or {}
    free = {h.name: h.slots for h in hosts}
    by_name = {h.name: h for h in hosts}
    placed: list[Host | None] = [None] * len(ranks)
    head = f"{source}: " if source else ""

    def kind_of(h: Host) -> str | None:
        return h.device or kinds.get(h.name)

    def take(name: str, rank: int) -> None:
        if free[name] < 1:
            raise PisplitError(f"{head}rank {rank}: host {name} has no free slot (slots={by_name[name].slots}); raise slots= in the inventory")
        free[name] -= 1
        placed[rank] = by_name[name]

    for rank, want in enumerate(ranks):  # pinned ranks first, so they get their hosts
        if "host" in want:
            if want["host"] not in by_name:
                raise PisplitError(f"{head}rank {rank}: host {want['host']!r} is not among the hosts ({', '.join(by_name)})")
            take(want["host"], rank)
    for rank, want in enumerate(ranks):
        if placed[rank] is not None:
            continue
        kind = want.get("device")
        candidates = [h for h in hosts if free[h.name] > 0 and (kind is None or kind_of(h) == kind)]
        if not candidates and kind is None:
            raise PisplitError(f"{head}rank {rank}: no host has a free slot ({len(ranks)} ranks, {sum(h.slots for h in hosts)} slots on "
                               f"{len(hosts)} hosts); add hosts or raise slots=")
        if not candidates:
            of_kind = [h for h in hosts if kind_of(h) == kind]
            wanted = sum(1 for w in ranks if w.get("device") == kind and "host" not in w)
            if not of_kind:
                known = sorted({k for k in map(kind_of, hosts) if k})
                why = (f"no host is a {kind} (the hosts' kinds: {', '.join(known) or 'none known'}); give hosts device={kind} "
                       "in the inventory, or plan for the hosts' kinds")
            else:
                slots = sum(h.slots for h in of_kind)
                why = (f"{wanted} rank{'s' if wanted != 1 else ''} want{'' if wanted != 1 else 's'} a {kind}, its hosts "
                       f"({', '.join(h.name for h in of_kind)}) have {slots} slot{'s' if slots != 1 else ''}, all taken; "
                       f"add {kind} hosts or raise their slots=")
            raise PisplitError(f"{head}rank {rank}: no host has a free {kind} slot: {why}")
        take(candidates[0].name, rank)
    return placed


def remote_workdir(host: Host, home: str | None) -> str:
    """The host's workdir as an absolute path; '~' needs the remote home from provision's facts."""
    if host.workdir.startswith("~"):
        if not home:
            raise PisplitError(f"host {host.name}: workdir {host.workdir} is relative to the remote home, which is not "
                               f"known yet; run pisplit provision first or give an absolute workdir=")
        return str(PurePosixPath(home) / host.workdir[1:].lstrip("/"))
    return host.workdir


def common_venv(hosts: list[Host], homes: dict[str, str]) -> str:
    """The one remote venv path of all `hosts` (mpirun takes a single --prefix); PisplitError if they differ."""
    paths = {h.name: str(PurePosixPath(remote_workdir(h, homes.get(h.name))) / "venv") for h in hosts}
    if len(set(paths.values())) > 1:
        listing = ", ".join(f"{n}: {p}" for n, p in paths.items())
        raise PisplitError(f"hosts have different remote venvs ({listing}); mpirun needs one path: give every host the same absolute workdir=")
    return next(iter(paths.values()))


def write_ssh_config(path: Path, hosts: list[Host], cluster_key: Path, known_hosts: Path) -> Path:
    """An OpenSSH config with one `Host` block per inventory host, for mpirun (and for `ssh -F` by hand)."""
    blocks = []
    for h in hosts:
        lines = [f"Host {h.name}", f"  HostName {h.address}", f"  Port {h.port}"]
        if h.user:
            lines.append(f"  User {h.user}")
        lines += [f"  IdentityFile {_ssh_config_quote(str(cluster_key))}", "  IdentitiesOnly yes",
                  f"  UserKnownHostsFile {_ssh_config_quote(str(known_hosts))}", "  StrictHostKeyChecking yes",
                  "  BatchMode yes", "  ConnectTimeout 10",
                  f"  ServerAliveInterval {SSH_ALIVE_INTERVAL_S}", f"  ServerAliveCountMax {SSH_ALIVE_COUNT}"]
        blocks.append("\n".join(lines))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by pisplit from the inventory; overwritten on every launch.\n" + "\n\n".join(blocks) + "\n")
    return path


def _ssh_config_quote(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


def write_hostfile(path: Path, placement: list[Host]) -> Path:
    """Hostfile for `--map-by seq`: line i is the host of rank i."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{h.name}\n" for h in placement))
    return path


@dataclass(frozen=True)
class LaunchFiles:
    """The head-side files a launch uses."""

    hostfile: Path
    ssh_config: Path


def mpirun_command(placement: list[Host], rank_argv: list[str], venv: str, files: LaunchFiles,
                   env: dict[str, str | None] | None = None) -> list[str]:
    """The full mpirun argv: N = len(placement) ranks, rank i on placement[i], each running `rank_argv`.

    `env` maps variable names to values to set on the ranks (None: forward the head's value).
    """
    networks = sorted({h.mpi_network for h in placement if h.mpi_network})
    if len(networks) > 1:
        raise PisplitError(f"hosts disagree on mpi_network ({', '.join(networks)}); set it once in [all:vars]")
    cmd = [mpirun_path(), "-n", str(len(placement)), "--hostfile", str(files.hostfile), "--map-by", "seq",
           "--bind-to", "none", "--prefix", venv,
           "--prtemca", "plm_ssh_agent", "ssh",
           "--prtemca", "plm_ssh_args", f"-F {shlex.quote(str(files.ssh_config))}",
           # Only the head reaches the hosts; no host needs keys for the others.
           "--prtemca", "plm_ssh_no_tree_spawn", "1"]
    if not networks:
        # no mpi_network: MPI's unauthenticated TCP still keeps to the interfaces the hosts are reached on
        networks = [n for n in [cluster_tcp_networks(list(dict.fromkeys(h.address for h in placement)))] if n]
    if networks:
        cmd += ["--mca", "btl_tcp_if_include", networks[0], "--prtemca", "oob_tcp_if_include", networks[0]]
    for name, value in (env or {}).items():
        cmd += ["-x", name if value is None else f"{name}={value}"]
    return cmd + list(rank_argv)


def rank_argv(template: str, venv: str, workdir: str, plan_name: str | None, frames: int | None) -> list[str]:
    """The command each rank runs: `template` split like a shell line, with {python}, {pisplit},
    {workdir}, {plan} (the remote path of the plan) and {frames} filled in."""
    values = {"python": f"{venv}/bin/python", "pisplit": f"{venv}/bin/pisplit", "workdir": workdir,
              "plan": f"{workdir}/files/{plan_name}" if plan_name else "", "frames": "" if frames is None else str(frames)}
    try:
        words = shlex.split(template)
        return [w.format(**values) for w in words]
    except (ValueError, KeyError, IndexError) as exc:
        raise PisplitError(f"rank command {template!r}: {exc} (placeholders: {', '.join('{' + k + '}' for k in values)})") from None


@dataclass(frozen=True)
class Launch:
    """Everything a launch runs: the argv and where each rank goes."""

    argv: list[str]
    placement: list[Host]
    files: LaunchFiles
    venv: str
    workdir: str


def build_launch(inventory: Inventory, hosts: list[Host], ranks: list[dict], template: str, plan_name: str | None = None,
                 frames: int | None = None, env: dict | None = None, cluster_key: Path | None = None,
                 known_hosts: Path | None = None, files_dir: Path | None = None, source: str | None = None) -> Launch:
    """Place the ranks, write the hostfile and ssh_config into the inventory's state directory, build mpirun's argv.
    `source` ("plan p.json") begins a placement error's line."""
    facts = read_facts(inventory.path)
    kinds = {name: f.get("kind") for name, f in facts.items() if f.get("kind")}
    placement = place_ranks(ranks, hosts, kinds, source)
    used = [h for h in hosts if h in placement]
    homes = {name: f.get("home") for name, f in facts.items()}
    venv = common_venv(used, homes)
    workdir = str(PurePosixPath(venv).parent)
    files_dir = files_dir or state_dir(inventory.path)
    files = LaunchFiles(files_dir / "hostfile", files_dir / "ssh_config")
    write_hostfile(files.hostfile, placement)
    write_ssh_config(files.ssh_config, used, cluster_key or default_cluster_key(), known_hosts or default_known_hosts())
    argv = mpirun_command(placement, rank_argv(template, venv, workdir, plan_name, frames), venv, files, env)
    return Launch(argv, placement, files, venv, workdir)


def parse_env(items: list[str]) -> dict[str, str | None]:
    """['A=1', 'B'] -> {'A': '1', 'B': None} (None: forward the head's value)."""
    env: dict[str, str | None] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name.isidentifier():
            raise PisplitError(f"--env {item!r}: expected NAME or NAME=VALUE")
        env[name] = value if sep else None
    return env


def exit_arguments(plan_path: Path, items: list[str]) -> list[str]:
    """`launch --exit NAME=T` as the ranks' `--exit` arguments, checked as `pisplit run` checks them:
    NAME=T with T in [0, 1] and, for a pisplit plan, NAME an output of the plan's model that is not its
    final answer (partitioners.exits.resolve_exits, with the plan's own exits)."""
    from partitioners.exits import parse_exit_overrides

    overrides = parse_exit_overrides(items)
    if not overrides:
        return []
    from layers.jsonfile import read_json

    doc = read_json(plan_path, "plan")
    if isinstance(doc, dict) and "format" in doc:
        from layers import load_model
        from partitioners.exits import resolve_exits
        from partitioners.plan import Plan

        plan = Plan.load(plan_path)
        thresholds = {e.name: e.threshold for e in plan.exits}
        thresholds.update(overrides)
        resolve_exits(load_model(plan.model, seed=plan.model_seed), thresholds)
    return [a for name, t in overrides.items() for a in ("--exit", f"{name}={t!r}")]
