"""`pisplit run --resilient` / `pisplit emulate --resilient`: the supervisor's side of the command line
(cluster.supervisor runs the attempts; this turns its result into the report and the --output file)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.table import Table

from layers.errors import PisplitError
from partitioners.plan import Plan

from ..mpirun import mpirun_env
from ..output import console
from ..runtime import RunResult, parse_fault
from ..supervisor import ResilientResult, ResilientRunFailed, supervise

ROOT = Path(__file__).resolve().parents[2]


def under_mpirun() -> bool:
    """Whether this process is one of several ranks mpirun started."""
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def run_resilient(args) -> int:
    """`pisplit run PLAN --resilient`: the supervisor on this machine, mpirun with local ranks."""
    if under_mpirun():
        raise PisplitError("--resilient: run `pisplit run --resilient PLAN.json` without mpirun; it starts mpirun itself "
                           "(and again on the surviving devices after a failure)")
    for flag, given in (("--trace", args.trace), ("--frame-ids", args.frame_ids), ("--journal", args.journal)):
        if given:
            raise PisplitError(f"--resilient with {flag}: not supported (each attempt is a run of its own)")
    if args.stall_timeout is not None and not args.stall_timeout >= 0:
        raise PisplitError(f"--stall-timeout {args.stall_timeout}: must be a number of seconds >= 0 (0: never)")
    if args.host_speed is not None and not args.host_speed > 0:
        raise PisplitError(f"--host-speed {args.host_speed}: must be a positive number")
    plan = Plan.load(args.plan)
    child = ["--seed", str(args.seed), "--window", str(args.window)]
    if getattr(args, "exit", None):
        from ..launch import exit_arguments

        child += exit_arguments(Path(args.plan), args.exit)  # every attempt answers at the same exits
    if args.input:
        from ..arrays import load_npy

        load_npy(args.input)  # a bad input is said once, here, not met by every attempt
        child += ["--input", str(Path(args.input).resolve())]
    for flag, value in (("--engine", args.engine), ("--max-in-flight", args.max_in_flight), ("--stall-timeout", args.stall_timeout),
                        ("--host-speed", args.host_speed)):
        if value is not None:
            child += [flag, str(value)]
    if args.emulate:
        child.append("--emulate")
    engine = args.engine or plan.engine
    result = supervise_plan(plan, args.frames, child, args.fail, keep_outputs=bool(args.output), quiet=False, output=args.output,
                            env=child_env(one_thread=args.emulate))
    doc = resilient_report(plan, result, engine, args.emulate)
    return finish(args, doc, result)


def child_env(one_thread: bool) -> dict:
    """Environment of the attempts' mpirun: root allowed, this checkout importable, no colours in pipes."""
    env = mpirun_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(TERM="dumb", NO_COLOR="1")
    if one_thread:  # emulated devices share this machine's cores (as cluster.commands.emulate)
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def supervise_plan(plan: Plan, frames: int, child: list, fail_specs, keep_outputs: bool, quiet: bool, env: dict, site=None,
                   timeout: float | None = None, output: str | None = None, codecs=None, codec_budget=None) -> ResilientResult:
    """Check the arguments, load the model, run the supervisor; progress lines go to stderr."""
    from layers import load_model

    if frames < 1:
        raise PisplitError(f"--frames {frames}: must be at least 1")
    faults = [parse_fault(f) for f in fail_specs or []]
    if faults and not 0 <= faults[0][0] < plan.n_ranks:
        raise PisplitError(f"--fail {fail_specs[0]}: the plan has ranks 0-{plan.n_ranks - 1}")
    graph = load_model(plan.model, seed=plan.model_seed)
    if len(graph) != plan.n_nodes:
        raise PisplitError(f"plan for {plan.model}: covers {plan.n_nodes} nodes, the model has {len(graph)}")
    say = None if quiet else (lambda line: print(f"pisplit: resilient: {line}", file=sys.stderr, flush=True))
    try:
        return supervise(plan, frames, child, graph, env=env, faults=faults, keep_outputs=keep_outputs, say=say, site=site, timeout=timeout,
                         codecs=codecs, codec_budget=codec_budget)
    except ResilientRunFailed as exc:
        if not getattr(site, "dry_run", False):  # (a dry run answered nothing, and was to answer nothing)
            keep_partial(output, exc.partial)  # the run gives up: the frames answered are still written
        raise


def keep_partial(output: str | None, result: ResilientResult) -> None:
    """A resilient run that gave up: write the frames it has to `output`, marked partial (as `pisplit run`
    does), and say on stderr which are missing."""
    from .run import frame_ranges, write_outputs

    delivered = np.setdiff1d(np.arange(result.frames), result.missing)
    where = "done (no --output to write them to)"
    if output and result.outputs is not None:
        partial = RunResult(ranks=[], frame_ids=result.frame_ids, outputs={n: a[delivered] for n, a in result.outputs.items()},
                            missing_frame_ids=result.missing, output_frame_ids=delivered)
        where = f"written to {write_outputs(Path(output), partial)}"
    print(f"pisplit: partial: {delivered.size} of {result.frames} frames {where}; missing frames {frame_ranges(result.missing) or 'none'}",
          file=sys.stderr, flush=True)


def resilient_report(plan: Plan, result: ResilientResult, engine: str, emulated: bool) -> dict:
    """The report of a resilient run: frames, exactly-once, each attempt, each failure (time lost), the
    final plan, and the last attempt's own per-stage report when it finished cleanly."""
    last = result.report or {}
    return {
        "model": plan.model, "engine": engine, "emulated": emulated, "resilient": True,
        "frames": result.frames, "every_frame_once": result.every_frame_once,
        "frames_duplicated": result.duplicated, "frames_missing": result.missing.tolist(),
        "wall_s": result.wall_s, "throughput_fps": result.frames / result.wall_s if result.wall_s > 0 else 0.0,
        "attempts": result.attempts, "failures": result.failures,
        "plan": result.plan.to_dict() if result.plan is not None else None,
        "ranks_total": result.plan.n_ranks if result.plan is not None else plan.n_ranks,
        "stages": last.get("stages"), "ranks": last.get("ranks"), "last_attempt_throughput_fps": last.get("throughput_fps"),
        "exits": result.exits,
    }


def finish(args, doc: dict, result: ResilientResult) -> int:
    from .run import emit_report, write_outputs

    if getattr(args, "output", None) and result.outputs is not None:
        done = RunResult(ranks=[], frame_ids=result.frame_ids, outputs=result.outputs, exit_index=result.exit_index, exit_names=result.exit_names)
        doc["output_file"] = str(write_outputs(Path(args.output), done))
    else:
        doc["argmax"] = result.argmax.tolist()
    return emit_report(args, doc, print_resilient)


def print_resilient(doc: dict) -> None:
    table = Table(title=f"{doc['model']}: {doc['frames']} frames, {len(doc['attempts'])} attempt{'s' if len(doc['attempts']) > 1 else ''}"
                        f" ({doc['engine']}{', emulated devices' if doc['emulated'] else ''})")
    for col in ("attempt", "ranks", "plan (nodes@ranks)", "frames asked", "delivered", "exit"):
        table.add_column(col, justify="left" if col.startswith("plan") else "right")
    for a in doc["attempts"]:
        table.add_row(str(a["attempt"]), str(a["ranks"]), a["stages"], str(a["frames_asked"]), str(a["frames_delivered"]), str(a["exit"]))
    console.print(table)
    for f in doc["failures"]:
        load = f": model load {f['model_load_s']:.1f} s, the rest {f['recovery_without_model_load_s']:.1f} s" \
            if f.get("model_load_s") is not None else ""
        lost = f"{f['time_lost_s']:.1f} s lost (detected after {f['detected_s']:.1f} s, first new result {f['recovery_s']:.1f} s later{load})" \
            if f.get("time_lost_s") is not None else "no frames left to rerun"
        console.print(f"failure in attempt {f['attempt']}: rank {f['rank']} ({f['device']}"
                      f"{', host ' + f['host'] if f['host'] else ''}): {f['cause']}; {f['frames_kept']} frames kept; {lost}",
                      highlight=False, markup=False)
    if doc.get("exits"):
        console.print("answered at " + ", ".join(f"{name} {n} ({n / max(doc['frames'], 1):.0%})" for name, n in doc["exits"].items()),
                      highlight=False)
    once = "every frame exactly once" if doc["every_frame_once"] else \
        f"{doc['frames_duplicated']} duplicated, {len(doc['frames_missing'])} missing"
    console.print(f"{doc['frames']} frames in {doc['wall_s']:.1f} s ({doc['throughput_fps']:.2f} frames/s overall), {once}; "
                  f"final plan on {doc['ranks_total']} rank{'s' if doc['ranks_total'] != 1 else ''}", highlight=False)
    if "output_file" in doc:
        console.print(f"wrote {doc['output_file']}")


def emulate_resilient(args, plan: Plan) -> int:
    """`pisplit emulate ... --resilient`: the plan's emulated devices under the supervisor."""
    from ..host_speed import host_speed

    if not args.resilient:
        raise PisplitError("--fail: pisplit emulate injects faults with --resilient (without it, `pisplit run --emulate --fail` "
                           "shows a run that stops at the fault)")
    if args.trace:
        raise PisplitError("--resilient with --trace: not supported (each attempt is a run of its own)")
    if args.plan_output:
        plan.save(args.plan_output)
    # measured once per machine and model, then cached (as cluster.commands.emulate.run_emulated)
    speed = host_speed(plan.model, plan.model_seed, args.engine, concurrency=plan.n_ranks)
    child = ["--emulate", "--engine", args.engine, "--host-speed", repr(speed)]
    if getattr(args, "stall_timeout", None) is not None:  # every attempt's stall bound (checked >= 0 by emulate)
        child += ["--stall-timeout", repr(args.stall_timeout)]
    if getattr(args, "exit", None):  # every attempt answers at the same exits (checked by emulate)
        child += [a for e in args.exit for a in ("--exit", e)]
    if args.objective == "latency":
        child += ["--max-in-flight", "1"]
    table, budget = None, None
    if getattr(args, "codec_table", None):  # a replan chooses the links' codecs from the same table (and budget)
        from layers import load_model

        from .codecs import planning_codecs

        table, budget = planning_codecs(args.codec_table, load_model(plan.model, seed=plan.model_seed), args.engine,
                                        args.max_accuracy_loss, args.max_rel_error)
    if getattr(args, "input", None):
        child += ["--input", str(Path(args.input).resolve())]
    with tempfile.TemporaryDirectory(prefix="pisplit-resilient-input-") as tmp:  # private (0700)
        if getattr(args, "exit", None) and not getattr(args, "input", None):
            from layers.trained import held_out, trained_names

            if plan.model.lower() in trained_names():  # exits fire on real frames: the held-out split, as emulate feeds them
                feeds, _ = held_out(plan.model.lower())
                if len(feeds) == 1:
                    np.save(Path(tmp) / "held-out.npy", next(iter(feeds.values())).astype(np.float32), allow_pickle=False)
                    child += ["--input", str(Path(tmp) / "held-out.npy")]
        result = supervise_plan(plan, args.frames, child, args.fail, keep_outputs=False, quiet=False, env=child_env(one_thread=True),
                                codecs=table, codec_budget=budget)
    doc = resilient_report(plan, result, args.engine, True)
    return finish(args, doc, result)


class DryRunLaunch(Exception):
    """`launch --resilient --dry-run`: the first attempt's launch, built and not run (LaunchSite.command)."""

    def __init__(self, launch):
        super().__init__("dry run")
        self.launch = launch


class LaunchSite:
    """Attempts on the inventory's hosts (`pisplit launch --resilient`): each attempt's plan and frame
    ids are copied to WORKDIR/files/ under a name of this run's own, mpirun starts the ranks over ssh,
    and rank 0's journal and report are fetched back over sftp. A failure takes its whole host out
    (a Pi that lost power or network takes every rank it ran); a journal that cannot be fetched (rank
    0's host is the one that went) only means its frames are run again."""

    def __init__(self, inventory, hosts: list, known_hosts: Path, cluster_key: Path, env: dict, dry_run: bool = False,
                 source: str | None = None):
        from ..facts import read_facts

        self.inventory, self.alive, self.known_hosts, self.cluster_key, self.env = inventory, list(hosts), known_hosts, cluster_key, env
        self.all_hosts = list(hosts)
        self.dropped: dict = {}  # host name -> the failure (count) that took it out
        self.failures = 0
        self.homes = {name: f.get("home") for name, f in read_facts(inventory.path).items()}
        self.token = os.urandom(4).hex()
        self.dry_run = dry_run  # the first attempt's command is built, then DryRunLaunch: nothing copied or run
        self.source = source  # "plan p.json": begins a placement error's line
        self.placement: list = []
        self.remote: dict = {}

    def command(self, plan: Plan, run_args: list, files: dict) -> list:
        import shlex
        import shutil

        from ..launch import build_launch, read_plan_ranks
        from ..provision import copy_files

        alive = {h.name for h in self.alive}
        ranks = [{k: v for k, v in r.items() if k != "host" or v in alive} for r in read_plan_ranks(files["plan"])]
        names = {key: f"pisplit-{self.token}-{path.name}" for key, path in files.items()}
        template = ("{pisplit} run {workdir}/files/" + names["plan"] + " --frame-ids {workdir}/files/" + names["frames"] +
                    " --journal {workdir}/files/" + names["journal"] + " --report {workdir}/files/" + names["report"] +
                    " " + shlex.join(run_args))
        source = self.source if not self.failures or not self.source else f"{self.source} (replanned on the hosts left)"
        launch = build_launch(self.inventory, self.alive, ranks, template, env=self.env, known_hosts=self.known_hosts,
                              cluster_key=self.cluster_key, source=source)
        self.placement = launch.placement
        self.remote = {key: f"{launch.workdir}/files/{name}" for key, name in names.items()}
        if self.dry_run:
            raise DryRunLaunch(launch)
        from .launch import plan_with_model_files

        remote_dir = files["plan"].parent / "to-hosts"  # the attempt's plan naming its model file on the hosts
        remote_dir.mkdir(exist_ok=True)
        plan_copy, *model_files = plan_with_model_files(files["plan"], launch.workdir, remote_dir)
        copies = list(model_files)
        for key, source in (("plan", plan_copy), ("frames", files["frames"])):
            copy = files[key].with_name(names[key])
            shutil.copyfile(source, copy)
            copies.append(copy)
        errors = copy_files(list(dict.fromkeys(self.placement)), copies, self.homes, self.known_hosts)
        if errors:
            raise PisplitError("resilient launch: copying the plan failed: " + "; ".join(f"{h}: {e}" for h, e in errors.items()))
        return launch.argv

    def collect(self, files: dict) -> None:
        from ..ssh import Remote

        try:
            with Remote(self.placement[0], self.known_hosts) as remote:
                for key in ("journal", "report"):
                    try:
                        remote.sftp.get(self.remote[key], str(files[key]))
                        remote.sftp.remove(self.remote[key])
                    except OSError:
                        pass  # not written (the job ended before its first result, or failed)
        except PisplitError:
            pass  # rank 0's host is unreachable: its frames are run again

    def host_of(self, rank: int) -> str | None:
        return self.placement[rank].name if 0 <= rank < len(self.placement) else None

    def readmit(self) -> list:
        """Hosts dropped before that accept an ssh connection again (within 5 s), back among the alive."""
        from ..ssh import Remote

        back = []
        # hosts an earlier failure took out (the one just lost is not asked: a crashed rank's Pi answers at once)
        for host in [h for h in self.all_hosts if self.dropped.get(h.name, self.failures) < self.failures]:
            try:
                with Remote(host, self.known_hosts, timeout=5):
                    back.append(host.name)
                    del self.dropped[host.name]
            except PisplitError:
                continue
        self.alive = [h for h in self.all_hosts if h.name in {a.name for a in self.alive} | set(back)]
        return back

    def lost(self, plan: Plan, failure) -> list:
        if 0 <= failure.rank < len(self.placement):
            host = self.placement[failure.rank].name
        else:
            host = next((h.name for h in self.placement if failure.host in (h.name, h.address)), None)
        if host is None:
            return []
        self.failures += 1
        self.dropped[host] = self.failures
        self.alive = [h for h in self.alive if h.name != host]
        return [i for i, h in enumerate(self.placement) if h.name == host]


def launch_resilient(args, plan_path: Path, inventory, hosts: list, known_hosts: Path, exit_args: list | None = None) -> int:
    """`pisplit launch PLAN --resilient`: the supervisor on the head, ranks on the inventory's hosts."""
    from ..launch import DEFAULT_RANK_COMMAND, default_cluster_key, parse_env

    if args.command != DEFAULT_RANK_COMMAND:
        raise PisplitError("--resilient: runs `pisplit run` on the hosts itself (no --command)")
    plan = Plan.load(plan_path)
    cluster_key = Path(args.cluster_key).expanduser() if args.cluster_key else default_cluster_key()
    site = LaunchSite(inventory, hosts, known_hosts, cluster_key, parse_env(args.env), dry_run=args.dry_run, source=f"plan {plan_path}")
    # exit_args: the ranks' --exit and --stall-timeout (cluster.commands.launch), given to every attempt's `pisplit run`
    try:
        result = supervise_plan(plan, args.frames, list(exit_args or []), args.fail, keep_outputs=bool(args.output), quiet=args.dry_run,
                                env=mpirun_env(), output=args.output, site=site, timeout=args.timeout)
    except DryRunLaunch as dry:
        from .launch import print_dry_run

        print_dry_run(dry.launch, args.json, resilient=True)  # the first attempt's command; later ones run on the hosts left
        return 0
    doc = resilient_report(plan, result, plan.engine, False)
    return finish(args, doc, result)
