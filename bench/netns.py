"""Paced emulation against the network-namespace cluster (scripts/bench_netns): the same plan file run
(a) on the emulated Pi cluster of cluster/netns.py, one rank per Pi, launched with `pisplit launch
--emulate-compute` (mpirun over ssh, real TCP through veth links shaped by `tc tbf`, each rank's
compute dilated to its device), and (b) in paced emulation on this machine (`pisplit run --emulate`
as `pisplit emulate` runs it: shared-memory MPI, compute dilated the same way, transfers paced by
cluster.emulation.LinkPacer). Each side's ranks dilate by a host speed measured just before, alternately,
with that side's Python (the Pis' venv for (a), this one for (b)), so both bring compute to the devices'
time. Printed per plan: throughput and latency p50 of each, each over the plan's prediction, the host
speeds, and (a)/(b).

Default plans: AlexNet's throughput plan on 3 Pi 3B+ and its latency plan (one split stage whose
conv segments keep their row strips on the parts) on 4 Pi 3B+, links at 94 Mbit/s; a latency plan
is measured one frame in flight, as `pisplit emulate --objective latency` does. The cluster is
brought up (a running one of the same name and size is reused, and one with more Pis: its first Pis
run the plans), provisioned (a second provision only syncs changed files) and brought down at the end
unless --keep.

Needs root (namespaces, sshd). Options: --plans MODEL@KIND:N/OBJECTIVE,... --link 94mbit --repeat N
(alternate (a) and (b) N times, medians) --frames N --latency-frames N --speed-rounds N --name --state
--network --keep --json
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, as for the ranks (the host speed is measured apart)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from cluster.netns import PI_USER  # noqa: E402
from layers.errors import PisplitError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PLANS = "alexnet@rpi3:3/throughput,alexnet@rpi3:4/latency"
DEFAULT_NAME = "psbench"
DEFAULT_NETWORK = "10.213.9"  # not the tests' clusters' (10.213.7, 10.213.8)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the emulated cluster, ready to launch on ---------------------------------------------------------------
def check_can_host() -> None:
    """PisplitError naming what is missing when this machine cannot host the emulated cluster."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        raise PisplitError("the emulated cluster needs root (network namespaces, mounts, sshd)")
    for tool in ("ip", "tc", "unshare", "ssh-keygen", "ssh"):
        if shutil.which(tool) is None:
            raise PisplitError(f"{tool} is not installed (bash scripts/setup installs iproute2 and openssh as root)")
    if not os.access("/usr/sbin/sshd", os.X_OK):
        raise PisplitError("openssh-server is not installed (bash scripts/setup installs it as root)")


def link_rate(cluster) -> str | None:
    """The tbf rate pi-0's link is shaped to now, as tc prints it ('94Mbit'), or None."""
    import re

    out = subprocess.run(["tc", "-n", cluster.pis[0].namespace, "qdisc", "show", "dev", "eth0"], capture_output=True, text=True).stdout
    m = re.search(r"\brate (\S+)", out)
    return m.group(1) if m else None


def running_pis(cluster) -> int:
    """How many Pis a running emulated cluster of `cluster`'s name has (0: none runs)."""
    from cluster.netns import namespaces

    return sum(1 for ns in namespaces(cluster.name) if ns.startswith(f"{cluster.name}-pi-"))


def bring_up(cluster) -> bool:
    """Bring `cluster` up, reusing it when it already runs with its links at its rate; True if reused."""
    from cluster.emulation import parse_link
    from cluster.netns import cluster_down, cluster_up, is_up

    if is_up(cluster):
        rate = link_rate(cluster)
        if rate and abs(parse_link(rate) - parse_link(cluster.rate)) <= 0.01 * parse_link(cluster.rate):
            return True
        cluster_down(cluster, keep_state=True)  # shaped at another rate: rebuilt (host keys kept)
    cluster_up(cluster)
    return False


def shape_links(cluster, burst: str | None) -> str:
    """Shape every Pi's link (its egress and the bridge's towards it) at the cluster's rate with this token
    bucket `burst` (tc syntax; None: the cluster's own, cluster.netns: 10 ms of the rate, at least 32 KiB).
    A burst lets a message that follows a pause leave at the veth's speed: a Pi's wire never does.
    Returns the burst set."""
    from cluster.netns import _burst

    burst = burst or _burst(cluster.rate)
    for pi in cluster.pis:
        for ns, dev in ((pi.namespace, "eth0"), (cluster.lan, f"v-{pi.hostname}")):
            proc = subprocess.run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", cluster.rate,
                                   "burst", burst, "latency", "50ms"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise PisplitError(f"--burst {burst}: tc refused it on {pi.hostname}: {proc.stderr.strip()}")
    return burst


class Head:
    """The head node's side of an emulated cluster: its files in the cluster's state directory (known_hosts,
    cluster key, a pisplit cache), and pisplit commands run in the head's namespace."""

    def __init__(self, cluster, home: Path | None = None, inventory: Path | None = None, n_pis: int | None = None):
        """`home` and `inventory`: an existing head's instead (its known_hosts, cluster_key and cache/ in `home`,
        as tests/cluster/conftest_netns keeps them); `n_pis`: use only the cluster's first n_pis Pis (a
        larger running cluster reused: an inventory of those in `home`)."""
        from dataclasses import replace

        from cluster.netns import write_inventory

        self.cluster = cluster
        self.home = home or cluster.state / "bench-head"
        self.home.mkdir(mode=0o700, exist_ok=True)
        if inventory is None and n_pis is not None and n_pis < cluster.n_pis:
            inventory = write_inventory(replace(cluster, n_pis=n_pis), self.home / "inventory.ini")
        self.inventory = inventory or cluster.inventory
        self.known_hosts = self.home / "known_hosts"
        self.cluster_key = self.home / "cluster_key"
        self.env = {**os.environ, "XDG_CACHE_HOME": str(self.home / "cache"), "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def pisplit(self, *args, timeout: float = 600) -> subprocess.CompletedProcess:
        """`pisplit ARGS --inventory ... --known-hosts ... --cluster-key ...` in the head's namespace."""
        argv = [*map(str, args), "--inventory", str(self.inventory), "--known-hosts", str(self.known_hosts),
                "--cluster-key", str(self.cluster_key)]
        cmd = self.cluster.exec_argv(self.cluster.head, [sys.executable, "-m", "cluster.cli", *argv])
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=self.env, timeout=timeout)

    def provision(self, hosts: str | None = None) -> dict:
        """`pisplit provision` of every Pi (or the inventory's `hosts`) with a wheelhouse built on this machine's
        own network (the head's namespace has no route out); PisplitError naming the first host that failed."""
        from cluster.provision import Wheelhouses, project_requirements

        probe = "import platform; print(platform.python_version()); print(' '.join(platform.libc_ver()))"
        py = subprocess.run(["python3", "-c", probe], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin"}).stdout.split("\n")
        wheels = Wheelhouses(project_requirements()).for_host({"python": py[0], "libc": py[1], "arch": platform.machine()})
        proc = self.pisplit("provision", "--accept-new-hosts", "--wheelhouse", wheels, "--json", *(["--hosts", hosts] if hosts else []))
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            raise PisplitError(f"provision of the emulated cluster failed: {proc.stderr.strip()[-600:]}") from None
        failed = [h for h in doc["hosts"] if not h["ok"]]
        if failed or proc.returncode != 0:
            what = f"{failed[0]['name']}: {failed[0]['error']}" if failed else (doc.get("mpi") or {}).get("detail", proc.stderr.strip()[-400:])
            raise PisplitError(f"provision of the emulated cluster failed: {what}")
        return doc

    @property
    def pi_python(self) -> tuple[Path, Path]:
        """(the Pis' venv python, their synced code) as seen from this machine (pi-0's /home)."""
        workdir = self.cluster.pis[0].state / "home" / PI_USER / "pisplit"
        return workdir / "venv" / "bin" / "python", workdir / "pisplit"

    def launch(self, plan_path: Path, frames: int, run_args: list[str], launch_args: list[str] = (), timeout: float = 900) -> dict:
        """`pisplit launch PLAN --emulate-compute` on the Pis; returns rank 0's report (`pisplit run --json`)."""
        env = ["--env", "OPENBLAS_CORETYPE"] if os.environ.get("OPENBLAS_CORETYPE") else []
        command = " ".join(["{pisplit} run {plan} --frames {frames} --json --no-progress", *run_args])
        proc = self.pisplit("launch", plan_path, "--hosts", "pis", "--frames", frames, "--emulate-compute", *env, *launch_args,
                            "--json", "--command", command, timeout=timeout)
        try:
            launched = json.loads(proc.stdout)
        except ValueError:
            raise PisplitError(f"launch of {plan_path.name} failed: {proc.stderr.strip()[-600:]}") from None
        if launched["returncode"] != 0:
            errors = [ln for ln in launched["stderr"].splitlines() if "error" in ln.lower()]
            raise PisplitError(f"launch of {plan_path.name}: mpirun exited with {launched['returncode']}: "
                               f"{(errors or [launched['stderr'].strip()[-400:]])[0]}")
        return {**json.loads(launched["stdout"]), "rank_command": launched["argv"]}


def measure_speed(python: Path | str, code: Path | str, model: str, seed: int, engine: str, copies: int) -> float:
    """This machine's speed (its seconds over the reference profile's, cluster.host_speed's measurement)
    under `python` with pisplit's code from `code`, `copies` at once (as many as ranks share the cores,
    as `pisplit emulate` measures), the copy cluster.host_speed would pick."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    argv = [str(python), "-m", "cluster.host_speed", model, str(seed), engine]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
             for _ in range(max(1, min(copies, os.cpu_count() or 1)))]
    speeds = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise PisplitError(f"measuring this machine's speed on {model} with {python}: "
                               f"{(err.strip().splitlines() or ['exit %d' % proc.returncode])[-1]}")
        speeds.append(json.loads(out)["speed"])
    return float(sorted(speeds)[len(speeds) // 2])


def host_speeds(head: Head, plan, engine: str, rounds: int) -> tuple[float, float]:
    """(a)'s and (b)'s host speeds, measured alternately `rounds` times, each side's least (load only ever
    slows a pass; on a loaded 2-core machine one measurement strays by 10-40%): (a)'s with the Pis' venv
    and synced code, (b)'s with this Python. They may differ (the Pis' Python is the system's, this one
    a venv's), and each side's dilation must bring its own compute to the devices' time. One value a
    side, passed to every rank (never measured per Pi)."""
    a, b = [], []
    for _ in range(rounds):
        b.append(measure_speed(sys.executable, ROOT, plan.model, plan.model_seed, engine, plan.n_ranks))
        a.append(measure_speed(*head.pi_python, plan.model, plan.model_seed, engine, plan.n_ranks))
    return min(a), min(b)


# --- the comparison ------------------------------------------------------------------------------------------
def parse_plans(text: str) -> list[tuple[str, str, str]]:
    """'alexnet@rpi3:3/throughput,vgg16@rpi3:4/latency' -> [(model, devices, objective), ...]."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        model, at, rest = item.partition("@")
        devices, _, objective = rest.partition("/")
        if not at or not model or not devices or objective not in ("throughput", "latency"):
            raise PisplitError(f"--plans {item!r}: expected MODEL@KIND:N/throughput or MODEL@KIND:N/latency")
        out.append((model, devices, objective))
    if not out:
        raise PisplitError("--plans: no plan given")
    return out


def summary(report: dict, plan) -> dict:
    fps, lat = report["throughput_fps"], report["latency_ms"]["p50"]
    return {"throughput_fps": fps, "fps_over_predicted": fps / plan.predicted_throughput_fps if plan.predicted_throughput_fps else None,
            "latency_p50_ms": lat, "latency_over_predicted": lat / (plan.predicted_latency_s * 1e3) if plan.predicted_latency_s else None,
            "every_frame_once": report["every_frame_once"], "frames": report["frames"],
            "late_s": max(r["emulation_late_s"] for r in report["ranks"]),
            "comm_ms": [round(s["comm_ms"], 1) for s in report["stages"]], "compute_ms": [round(s["compute_ms"], 1) for s in report["stages"]]}


def median_of(runs: list[dict]) -> dict:
    keys = ("throughput_fps", "fps_over_predicted", "latency_p50_ms", "latency_over_predicted", "late_s")
    med = {k: statistics.median(r[k] for r in runs) if all(r[k] is not None for r in runs) else None for k in keys}
    return {**runs[-1], **med, "every_frame_once": all(r["every_frame_once"] for r in runs), "runs": len(runs)}


def compare_plan(head: Head, model: str, devices: str, objective: str, link_bps: float, args, tmp: Path) -> dict:
    from cluster.commands.emulate import run_emulated
    from cluster.emulated_plans import plan_for_devices
    from layers import load_model

    graph = load_model(model)
    plan = plan_for_devices(graph, model, devices, link_bps, "dp", objective, args.engine)
    name = f"{model}-{devices.replace(':', '')}-{objective}.json"
    # the plan file both runs read; in the head's directory, where the head namespace's launch reads it too
    plan_path = plan.save(head.home / name)
    latency = objective == "latency"
    frames = args.latency_frames if latency else (args.frames or max(24, int(6 * plan.predicted_throughput_fps)))
    in_flight = ["--max-in-flight", "1"] if latency else []
    pi_speed, speed = host_speeds(head, plan, args.engine, args.speed_rounds)
    stages = " ".join(f"{s.mode}x{len(s.ranks)}[{s.node_start}:{s.node_stop})" for s in plan.stages)
    say(f"{model} on {devices} ({objective}): {stages}; predicted {plan.predicted_throughput_fps:.2f} frames/s, "
        f"latency {plan.predicted_latency_s * 1e3:.0f} ms; {frames} frames, host speed {pi_speed:.3f} for (a), {speed:.3f} for (b)")
    cluster_runs, paced_runs = [], []
    for i in range(args.repeat):
        t = time.time()
        rep = head.launch(plan_path, frames, ["--engine", args.engine, *in_flight], ["--host-speed", repr(pi_speed)])
        cluster_runs.append(summary(rep, plan))
        say(f"  (a) namespace cluster: {cluster_runs[-1]['throughput_fps']:.2f} frames/s, p50 {cluster_runs[-1]['latency_p50_ms']:.0f} ms "
            f"({time.time() - t:.0f} s)")
        t = time.time()
        # run_emulated passes its cached host speed; the --host-speed given after it is the one the ranks take
        rep = run_emulated(plan_path, plan.n_ranks, frames, tmp / f"paced-{i}.json", args.engine, progress=False,
                           max_in_flight=1 if latency else None, extra=["--host-speed", repr(speed)])
        paced_runs.append(summary(rep, plan))
        say(f"  (b) paced emulation:   {paced_runs[-1]['throughput_fps']:.2f} frames/s, p50 {paced_runs[-1]['latency_p50_ms']:.0f} ms "
            f"({time.time() - t:.0f} s)")
    a, b = median_of(cluster_runs), median_of(paced_runs)
    return {"model": model, "devices": devices, "objective": objective, "link_mbit": link_bps / 1e6, "stages": stages, "frames": frames,
            "host_speed_cluster": pi_speed, "host_speed_paced": speed,
            "predicted_fps": plan.predicted_throughput_fps, "predicted_latency_ms": plan.predicted_latency_s * 1e3,
            "namespace_cluster": a, "paced_emulation": b,
            "fps_ratio": a["throughput_fps"] / b["throughput_fps"] if b["throughput_fps"] else None,
            "latency_ratio": a["latency_p50_ms"] / b["latency_p50_ms"] if b["latency_p50_ms"] else None}


def _x(v) -> str:
    return "-" if v is None else f"x{v:.2f}"


def print_table(rows: list[dict]) -> None:
    print(f"{'plan (link rate/burst)':44} {'run':22} {'frames/s':>9} {'/pred':>6} {'p50 ms':>8} {'/pred':>6} {'late s':>7}  comm ms per stage")
    for r in rows:
        label = f"{r['model']} {r['devices']} {r['objective']} @{r['link_mbit']:.0f}Mbit/{r['burst']}"
        for what, key in (("(a) namespace cluster", "namespace_cluster"), ("(b) paced emulation", "paced_emulation")):
            m = r[key]
            print(f"{label:44} {what:22} {m['throughput_fps']:9.2f} {_x(m['fps_over_predicted']):>6} {m['latency_p50_ms']:8.1f} "
                  f"{_x(m['latency_over_predicted']):>6} {m['late_s']:7.2f}  {m['comm_ms']}")
            label = ""
        within = all(v is not None and abs(v - 1) <= 0.10 for v in (r["fps_ratio"], r["latency_ratio"]))
        print(f"{'':44} {'(a)/(b)':22} {_x(r['fps_ratio']):>9} {'':6} {_x(r['latency_ratio']):>8} {'':6} {'':7}  "
              f"{'within 10%' if within else 'NOT within 10%'}; predicted {r['predicted_fps']:.2f} frames/s, {r['predicted_latency_ms']:.0f} ms; "
              f"host speed (a) {r['host_speed_cluster']:.3f}, (b) {r['host_speed_paced']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_netns", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plans", default=DEFAULT_PLANS, help=f"MODEL@KIND:N/OBJECTIVE,... (default {DEFAULT_PLANS})")
    ap.add_argument("--link", default="94mbit", help="the Pis' links (tc rate; the plans' link bandwidth), default 94mbit")
    ap.add_argument("--frames", type=int, help="frames of a throughput plan (default: about 6 s of them at the predicted rate, at least 24)")
    ap.add_argument("--latency-frames", type=int, default=12, help="frames of a latency plan, one in flight (default 12)")
    ap.add_argument("--burst", help="the links' token bucket, tc syntax (default: the emulated cluster's, 10 ms of the rate, "
                    "at least 32 KiB); e.g. 16kb: close to a wire, which never sends faster than its rate")
    ap.add_argument("--repeat", type=int, default=1, help="alternate (a) and (b) this many times; medians (default 1)")
    ap.add_argument("--speed-rounds", type=int, default=3, help="host speed measurements of each side, alternated (default 3; the least counts)")
    ap.add_argument("--engine", default="numpy", choices=("numpy", "litert"))
    ap.add_argument("--name", default=DEFAULT_NAME, help=f"the emulated cluster's name (default {DEFAULT_NAME})")
    ap.add_argument("--state", help="its state directory (default /tmp/NAME-netns)")
    ap.add_argument("--network", default=DEFAULT_NETWORK, help=f"first three octets of its /24 (default {DEFAULT_NETWORK})")
    ap.add_argument("--keep", action="store_true", help="leave the cluster up at the end (the next run reuses it)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except PisplitError as exc:
        if args.debug:
            raise
        print(f"bench_netns: error: {exc}", file=sys.stderr)
        return 1


def run(args) -> int:
    from cluster.emulation import parse_link
    from cluster.netns import Cluster, cluster_down

    plans = parse_plans(args.plans)
    link_bps = parse_link(args.link)
    if args.repeat < 1 or args.speed_rounds < 1 or args.latency_frames < 1 or (args.frames is not None and args.frames < 1):
        raise PisplitError("--repeat, --speed-rounds, --frames and --latency-frames: at least 1")
    check_can_host()
    from partitioners.devices import parse_devices

    n_pis = max(sum(count for _, count, *_ in parse_devices(devices)) for _, devices, _ in plans)
    say(f"load average {' '.join(open('/proc/loadavg').read().split()[:3])} on {os.cpu_count()} cores")
    cluster = Cluster(name=args.name, n_pis=n_pis, network=args.network, rate=args.link.lower(), state=args.state)
    running = running_pis(cluster)
    if running > n_pis:  # a running cluster of this name with more Pis (the tests' session cluster): reused, its first Pis used
        cluster = Cluster(name=args.name, n_pis=running, network=args.network, rate=args.link.lower(), state=args.state)
    t = time.time()
    reused = bring_up(cluster)
    rows = []
    try:
        burst = shape_links(cluster, args.burst)
        head = Head(cluster, n_pis=n_pis)
        say(f"cluster {cluster.name}: {n_pis} Pis at {cluster.rate}, burst {burst}, {'reused' if reused else 'up'} ({time.time() - t:.0f} s); "
            "provisioning ...")
        t = time.time()
        head.provision()
        say(f"provisioned ({time.time() - t:.0f} s)")
        with tempfile.TemporaryDirectory(prefix="bench-netns-") as tmp:
            for model, devices, objective in plans:
                rows.append({**compare_plan(head, model, devices, objective, link_bps, args, Path(tmp)), "burst": burst})
    finally:
        if not args.keep:
            cluster_down(cluster)
            say(f"cluster {cluster.name}: down")
    say(f"load average {' '.join(open('/proc/loadavg').read().split()[:3])} at the end")
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
    else:
        print_table(rows)
    every = all(r[k]["every_frame_once"] for r in rows for k in ("namespace_cluster", "paced_emulation"))
    return 0 if every else 1


if __name__ == "__main__":
    sys.exit(main())
