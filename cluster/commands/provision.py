"""`pisplit provision`: make the inventory's hosts ready to run pisplit under mpirun (see cluster.provision)."""
from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from ..inventory import read_inventory
from ..launch import default_cluster_key, default_known_hosts
from ..output import console, print_json
from ..provision import HOST_STEPS, MPI_STEP, Options, Provisioner, Report

MARKS = {"done": "[green]done[/]", "skipped": "[dim]ok[/]", "failed": "[bold red]FAILED[/]", "planned": "[cyan]plan[/]"}


def register(sub) -> None:
    p = sub.add_parser("provision", help="set up the inventory's hosts over ssh: venv, code, keys, MPI check")
    add_inventory_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print what would run on each host; connect to none")
    p.add_argument("--accept-new-hosts", action="store_true",
                   help="trust and record the host key of hosts not yet in known_hosts (a changed key is always refused)")
    p.add_argument("--files", nargs="+", default=[], metavar="FILE", help="models and plans to copy to WORKDIR/files/ on every host")
    p.add_argument("--wheelhouse", metavar="DIR", help="wheels for the hosts' platform, prepared elsewhere at the lock's versions (pip download -c cluster/constraints.txt; default: pip download here)")
    p.add_argument("--no-smoke-test", action="store_true", help="skip the final MPI run across the hosts")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a host to answer (default 10)")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.set_defaults(func=run)


def add_inventory_arguments(p) -> None:
    """--inventory, --hosts, --known-hosts and --cluster-key, shared with `pisplit launch`."""
    p.add_argument("--inventory", default="inventory.ini", metavar="FILE", help="Ansible-style inventory (default inventory.ini)")
    p.add_argument("--hosts", metavar="H1,H2", help="only these hosts or groups (default: all)")
    p.add_argument("--known-hosts", metavar="FILE", help=f"known_hosts file (default {default_known_hosts()})")
    p.add_argument("--cluster-key", metavar="FILE", help=f"key mpirun's ssh uses, installed by provision (default {default_cluster_key()})")


def run(args) -> int:
    inventory = read_inventory(args.inventory)
    hosts = inventory.select(args.hosts)
    options = Options(
        known_hosts=Path(args.known_hosts).expanduser() if args.known_hosts else default_known_hosts(),
        cluster_key=Path(args.cluster_key).expanduser() if args.cluster_key else default_cluster_key(),
        accept_new_hosts=args.accept_new_hosts, dry_run=args.dry_run, files=tuple(args.files),
        wheelhouse=Path(args.wheelhouse) if args.wheelhouse else None, timeout=args.timeout,
        smoke_test=not args.no_smoke_test)
    if args.json or args.dry_run:
        report = Provisioner(inventory, options).run(hosts)
    else:
        report = _run_with_progress(inventory, options, hosts)
    if args.json:
        print_json(report_document(report))
    elif args.dry_run:
        _print_dry_run(report)
    else:
        _print_table(report)
    return 0 if report.ok else 1


def _run_with_progress(inventory, options, hosts) -> Report:
    total = len(HOST_STEPS)
    if not console.is_terminal:
        def events(host, step, status, detail):
            if status == "running" and detail and not detail.endswith("%"):  # the wheelhouse's download, wheel by wheel
                console.print(f"{host}: {step} {detail}", highlight=False, soft_wrap=True)
            if status != "running":
                console.print(f"{host}: {step} {status}" + (f" - {detail}" if detail else ""), highlight=False, soft_wrap=True)
        return Provisioner(inventory, options, events).run(hosts)
    with Progress(SpinnerColumn(), TextColumn("{task.fields[host]:<12}"), BarColumn(bar_width=20),
                  TextColumn("{task.description}"), console=console, transient=True) as progress:
        tasks = {h.name: progress.add_task("waiting", total=total, host=h.name) for h in hosts}

        def events(host, step, status, detail):
            if host not in tasks:
                tasks[host] = progress.add_task("", total=1, host=host)
            if status == "running":
                progress.update(tasks[host], description=f"{step}..." + (f" {detail}" if detail else ""))
            elif status == "failed":
                progress.update(tasks[host], description=f"[red]{step} failed", completed=total)
            else:
                done = HOST_STEPS.index(step) + 1 if step in HOST_STEPS else 1
                progress.update(tasks[host], description=f"{step} {status}", completed=done)

        return Provisioner(inventory, options, events).run(hosts)


def _print_table(report: Report) -> None:
    table = Table(title="pisplit provision")
    table.add_column("host")
    table.add_column("address")
    for step in HOST_STEPS:
        table.add_column(step)
    table.add_column("result")
    for r in report.hosts:
        marks = {s.step: MARKS.get(s.status, s.status) for s in r.steps}
        table.add_row(r.host.name, f"{r.host.address}:{r.host.port}", *(marks.get(s, "[dim]-[/]") for s in HOST_STEPS),
                      "[green]ready[/]" if r.ok else "[bold red]failed[/]")
    console.print(table)
    for r in report.hosts:
        if r.error:
            console.print(f"[bold red]{r.host.name}[/]: {r.error}", soft_wrap=True)
    if report.mpi is not None:
        mark = "[green]ok[/]" if report.mpi.status == "done" else "[bold red]FAILED[/]"
        console.print(f"{MPI_STEP} smoke test: {mark} {report.mpi.detail} ({report.mpi.seconds:.1f} s)", soft_wrap=True)
    if report.facts_path:
        console.print(f"facts: {report.facts_path}", soft_wrap=True)
    if report.hostfile:
        console.print(f"MPI hostfile: {report.hostfile}", soft_wrap=True)
    ok = sum(r.ok for r in report.hosts)
    console.print(f"{ok} of {len(report.hosts)} hosts ready")


def _print_dry_run(report: Report) -> None:
    for r in report.hosts:
        console.print(f"[bold]{r.host.name}[/] ({r.host.target}, workdir {r.host.workdir})")
        for number, s in enumerate(r.steps, start=1):
            first, *rest = s.detail.splitlines()
            console.print(f"  {number}. {s.step}: {first}", highlight=False, soft_wrap=True, markup=False)
            for line in rest:
                console.print(f"       {line}", highlight=False, soft_wrap=True, markup=False)
    console.print("then: an MPI hostfile and `mpirun` of mpi4py's hello world, one rank per host (dry run: nothing was run)")


def report_document(report: Report) -> dict:
    """The JSON form of a provision report."""
    return {
        "ok": report.ok,
        "hosts": [{"name": r.host.name, "address": r.host.address, "port": r.host.port, "ok": r.ok, "error": r.error,
                   "steps": [vars(s) for s in r.steps], "facts": r.facts} for r in report.hosts],
        "mpi": vars(report.mpi) if report.mpi else None,
        "facts_path": str(report.facts_path) if report.facts_path else None,
        "hostfile": str(report.hostfile) if report.hostfile else None,
    }
