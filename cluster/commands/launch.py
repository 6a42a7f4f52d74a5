"""`pisplit launch PLAN.json`: run a plan's ranks on the inventory's hosts with mpirun over ssh."""
from __future__ import annotations

import shlex
import subprocess
import tempfile
from pathlib import Path

from rich.table import Table

from layers.errors import PisplitError
from layers.jsonfile import read_json
from partitioners.plan import Plan

from ..facts import read_facts
from ..inventory import read_inventory
from ..launch import DEFAULT_RANK_COMMAND, build_launch, default_cluster_key, default_known_hosts, exit_arguments, parse_env, read_plan_ranks
from ..mpirun import mpirun_env, run_mpirun
from ..output import console, print_json, remote_rank_env
from ..provision import copy_files
from ..ssh import check_private_key_file
from .provision import add_inventory_arguments


def register(sub) -> None:
    p = sub.add_parser("launch", help="run a plan on the inventory's hosts with mpirun over ssh")
    p.add_argument("plan", metavar="PLAN.json", help="plan whose 'ranks' (or 'n_ranks') say how many ranks run where")
    add_inventory_arguments(p)
    p.add_argument("--frames", type=int, default=10, help="frames to run (default 10)")
    p.add_argument("--dry-run", action="store_true", help="print the mpirun command and where each rank goes (with --resilient: the first "
                   "attempt's); copy and run nothing")
    p.add_argument("--command", default=DEFAULT_RANK_COMMAND, metavar="TEMPLATE",
                   help="what each rank runs (default %(default)r; placeholders {python} {pisplit} {workdir} {plan} {frames})")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="environment variable for the ranks (NAME alone forwards this machine's value); repeatable")
    p.add_argument("--no-sync", action="store_true", help="do not copy the plan to the hosts first")
    p.add_argument("--emulate-compute", action="store_true", help="the ranks dilate their compute to the plan's devices "
                   "(`pisplit run --emulate-compute`, one BLAS thread each) while the real links carry the transfers: for the "
                   "emulated cluster (scripts/cluster_up), whose Pis all run on this machine")
    p.add_argument("--host-speed", type=float, metavar="S", help="with --emulate-compute: the ranks' machine's seconds over the "
                   "reference profile's (default: this machine's, measured once and cached as `pisplit emulate` does)")
    p.add_argument("--timeout", type=float, default=None, help="stop mpirun after this many seconds (default: no limit)")
    p.add_argument("--json", action="store_true", help="print a JSON document (the ranks' output is captured into it)")
    p.add_argument("--resilient", action="store_true", help="survive a lost Pi: when a rank or host dies or stalls, replan on the "
                   "hosts left and rerun only the frames without a result (as `pisplit run --resilient`; rank 0's results are "
                   "fetched back over sftp after each attempt)")
    p.add_argument("--fail", action="append", default=[], metavar="RANK@FRAME[:MODE]",
                   help="with --resilient: fault injection, as `pisplit run --fail` (repeatable: one per attempt)")
    p.add_argument("--output", metavar="Y.npz", help="with --resilient: every frame's outputs, written on this machine")
    p.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                   help="as `pisplit run --stall-timeout`, for every rank (with --resilient: every attempt's ranks): a wait with no "
                        "progress this long names the rank and ends the attempt (default: a few seconds beyond the plan's period; 0: never)")
    p.add_argument("--exit", action="append", default=[], metavar="NAME=T",
                   help="early exit in the ranks' run (repeatable, as pisplit run --exit): checked against the plan's model here, "
                        "then added to each rank's command")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.frames < 1:
        raise PisplitError(f"--frames {args.frames}: must be at least 1")
    plan = Path(args.plan)
    check_pisplit_plan(plan)
    ranks = read_plan_ranks(plan)
    inventory = read_inventory(args.inventory)
    hosts = inventory.select(args.hosts)
    known_hosts = Path(args.known_hosts).expanduser() if args.known_hosts else default_known_hosts()
    exit_args = exit_arguments(plan, args.exit)  # a bad --exit fails here, before anything reaches a host
    if args.stall_timeout is not None:
        if not args.stall_timeout >= 0:
            raise PisplitError(f"--stall-timeout {args.stall_timeout}: must be a number of seconds >= 0 (0: never)")
        exit_args = [*exit_args, "--stall-timeout", repr(args.stall_timeout)]  # the ranks' `pisplit run` flags
    if args.resilient or args.fail or args.output:
        from .resilient import launch_resilient

        if not args.resilient:
            raise PisplitError("--fail and --output: with --resilient (without it, give them to the ranks' --command)")
        return launch_resilient(args, plan, inventory, hosts, known_hosts, exit_args)
    command, env = args.command, {**remote_rank_env(captured=args.json), **parse_env(args.env)}  # the user's --env wins
    if exit_args:
        command = f"{command} {shlex.join(exit_args)}"
    if args.emulate_compute:
        command, env = emulate_compute_command(args, plan, len(ranks), command, env)
    launch = build_launch(inventory, hosts, ranks, command, plan_name=plan.name, frames=args.frames,
                          env=env, known_hosts=known_hosts, source=f"plan {plan}",
                          cluster_key=Path(args.cluster_key).expanduser() if args.cluster_key else default_cluster_key())
    doc = launch_doc(launch)
    if args.dry_run:
        print_dry_run(launch, args.json)
        return 0
    cluster_key = Path(args.cluster_key).expanduser() if args.cluster_key else default_cluster_key()
    if cluster_key.exists():
        check_private_key_file(cluster_key, "cluster key")  # OpenSSH under mpirun would refuse it with less to say
    if not args.no_sync:
        used = list(dict.fromkeys(launch.placement))
        homes = {name: f.get("home") for name, f in read_facts(inventory.path).items()}
        with tempfile.TemporaryDirectory(prefix="pisplit-launch-") as tmp:  # private (0700)
            # a plan of a model file (an all-on-host edge+host plan's wrapped graph, a .tflite): the file goes too
            errors = copy_files(used, plan_with_model_files(plan, launch.workdir, Path(tmp)), homes, known_hosts)
        if errors:
            raise PisplitError("copying the plan failed: " + "; ".join(errors.values()))
    try:
        # Open MPI's own boxes after a rank's one-line pisplit error are dropped (cluster.mpirun)
        proc = run_mpirun(launch.argv, mpirun_env(), timeout=args.timeout, capture=args.json)
    except subprocess.TimeoutExpired:
        raise PisplitError(f"mpirun did not finish within {args.timeout:g} s") from None
    if args.json:
        print_json({**doc, "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr})
    elif proc.returncode != 0:
        console.print(f"[red]mpirun exited with {proc.returncode}[/]")
    return 0 if proc.returncode == 0 else 1


def emulate_compute_command(args, plan_path: Path, n_ranks: int, command: str, env: dict) -> tuple[str, dict]:
    """--emulate-compute: the rank command with `--emulate-compute --host-speed S` appended (S given, else this
    machine's for the plan's model with as many copies at once as ranks, as `pisplit emulate` dilates) and
    one BLAS thread per rank (dilation scales a rank's CPU time)."""
    from ..host_speed import host_speed

    if args.host_speed is not None and not args.host_speed > 0:
        raise PisplitError(f"--host-speed {args.host_speed}: must be a positive number")
    speed = args.host_speed
    if speed is None:
        doc = read_json(plan_path, "plan")
        if not (isinstance(doc, dict) and "format" in doc):
            raise PisplitError(f"--emulate-compute: plan {plan_path} is not a pisplit plan (no devices to emulate)")
        plan = Plan.load(plan_path)
        speed = host_speed(plan.model, plan.model_seed, plan.engine, concurrency=n_ranks)
    threads = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return f"{command} --emulate-compute --host-speed {speed!r}", {**threads, **env}


def plan_with_model_files(plan: Path, workdir: str, tmp: Path) -> list[Path]:
    """The files a launch copies to WORKDIR/files/ on the hosts: the plan, and when the plan's model is
    a file here (a pisplit .json graph with its weights .npz, as an all-on-host edge+host plan's
    wrapped graph, or a .tflite) that file too, with a copy of the plan (same name, in `tmp`) naming
    it at its place on the hosts. A zoo or trained model's plan goes as it is."""
    import json

    doc = read_json(plan, "plan")
    model = doc.get("model") if isinstance(doc, dict) and "format" in doc else None
    path = Path(model) if isinstance(model, str) else None
    if path is None or path.suffix.lower() not in (".json", ".tflite") or not path.is_file():
        return [plan]
    files = [path]
    if path.suffix.lower() == ".json":
        graph = read_json(path, "model")
        weights = path.parent / (graph.get("weights_file") if isinstance(graph, dict) and graph.get("weights_file") else path.with_suffix(".npz").name)
        if weights.is_file():
            files.append(weights)
    names = [f.name for f in files]
    if plan.name in names:
        raise PisplitError(f"plan {plan}: has the name of its model file {path}; both go to the hosts' files/ folder")
    copy = tmp / plan.name
    copy.write_text(json.dumps({**doc, "model": f"{workdir}/files/{path.name}"}, indent=1))
    return [copy, *files]


def check_pisplit_plan(path: Path) -> None:
    """A pisplit plan (one with a "format") is read and validated in full before anything starts: a
    plan every rank would refuse is refused here, with the field and the reason."""
    doc = read_json(path, "plan")
    if isinstance(doc, dict) and "format" in doc:
        Plan.load(path)


def launch_doc(launch) -> dict:
    """The mpirun command of a launch and where each rank goes (the --json document)."""
    return {"command": shlex.join(launch.argv), "argv": launch.argv, "hostfile": str(launch.files.hostfile),
            "ssh_config": str(launch.files.ssh_config),
            "ranks": [{"rank": i, "host": h.name, "address": h.address} for i, h in enumerate(launch.placement)]}


def print_dry_run(launch, as_json: bool, **extra) -> None:
    """--dry-run: the placement and the mpirun command (JSON with `extra` keys), nothing run."""
    if as_json:
        print_json({**launch_doc(launch), "dry_run": True, **extra})
    else:
        _print_placement(launch)
        console.print(shlex.join(launch.argv), highlight=False, soft_wrap=True, markup=False)


def _print_placement(launch) -> None:
    table = Table(title=f"{len(launch.placement)} ranks, venv {launch.venv}")
    table.add_column("rank", justify="right")
    table.add_column("host")
    table.add_column("address")
    for i, h in enumerate(launch.placement):
        table.add_row(str(i), h.name, f"{h.address}:{h.port}")
    console.print(table)
