"""Edgent (Li, Zeng, Zhou, Chen, "Edge AI: On-Demand Accelerating DNN Inference via Edge Computing",
IEEE TWC 2020; shared/seeds/004; issue 16): meet a latency requirement with two knobs, the exit point
of a branchy model and the partition point between a device and an edge host.

Strategies. A strategy is (exit E, cut c, codec k): the frame runs the *branch* of exit E (the nodes
its output needs, in the model's node order: `exit_branch`) and leaves there; the device (rank 0, the
frames' source) runs the branch's nodes [0, c), sends the cut's tensors with codec k, the host runs
the rest and sends the result back. Its latency, throughput and energy are those of
partitioners.edge_host (Ko et al.'s edge/host cut, one cost model for both issues): latency =
device compute + encode + transfer + decode + host compute + result back (what edge_host_plan
predicts), throughput = 1 / max(device period, host period). Cut c = n keeps the branch on the device
(no link). Cut 0 (everything on the host) is left out by default: pisplit's runtime needs rank 0 in a
stage (EdgeHostCandidate.runnable); `runnable_only=False` keeps it for planning only. Codecs are those
a codec table (partitioners.link_pricing, measured on the whole model) offers on a branch cut whose
live tensors are the same as the whole model's cut (`branch_codec_table`), admissible under the
LossBudget; raw always. A lossy codec's measured accuracy_loss is taken off the exit's accuracy.

The paper's Algorithm 1 line 8 writes the latency with the server's layers first
(sum ES_j for j < p, sum ED_k for k >= p, Input/B + D_(p-1)/B); pisplit keeps the device at the head,
as Ko et al. do and as pisplit's runtime needs (rank 0, the device, is the frames' source).

Several edge devices (beyond Edgent, e.g. rpi3:4,host:1): per exit branch the head [0, c) is planned
on the Pis by the dp planner and the tail runs on the host (edge_host.cluster_host_candidates), or the
Pis run the whole branch (the dp planner's latency plan): `pi_cluster_strategies`.

Accuracy per exit: the held-out test accuracy layers/trained/manifest.json records per output
(`exit_accuracies`), or the caller's.

Algorithm 1 (`select`, static environment): for each exit, the fastest cut (and codec) and the most
accurate strategy meeting the requirement; the choice is the most accurate strategy meeting it
(ties: faster, then deeper). The paper loops i = M..1 and returns the deepest exit whose fastest cut
meets the requirement; that is the same choice when accuracy grows with depth and no lossy codec is
offered. It does not always: branchy_alexnet_mnist's exit4 (0.977) beats its final output (0.976), so
pisplit ranks exits by accuracy, as the issue asks. When nothing meets the requirement the selection
says so and names the fastest strategy.

Algorithm 2 (`configuration_map`, dynamic environment): per bandwidth state s_i (and, beyond Edgent,
per device set, e.g. one Pi fewer or the host gone: `pisplit configmap --availability`), the strategy
of the best reward, the paper's

    reward = exp(accuracy) + throughput   if latency <= requirement,  else 0

(accuracy in [0, 1], throughput in frames per second: the slides give the formula, not the unit; in
frames per second it outweighs exp(accuracy) on small models, hence `objective="accuracy"`, Algorithm
1's choice per state, as an option) over the strategies in the order exits by depth, cuts ascending, raw before
the table's codecs, with the paper's `if reward_max <= reward_cj` (a later strategy wins a tie). The
paper's loop starts at reward_max = 0 and so would keep the last strategy when every reward is 0; pisplit
keeps the fastest strategy there instead and marks the entry `meets: false`.

The map is data (`ConfigMap`, validate()), a JSON object: "format": "pisplit-configmap", "version": 1,
"model" (the spec it was made from), "latency_req_s", "link_latency_s", "engine", "reward" (the
formula, for people), "objective" ("reward" or "accuracy"), and "entries", one per (device set,
bandwidth state): "devices" (e.g. "rpi3:1,host:1"), "bandwidth_bps", "exit", "cut" and "n_nodes" (of
the exit branch; cut = n_nodes: all on the device(s)), "after" (the node before the cut), "codec",
the predicted "latency_s", "throughput_fps", "accuracy", the paper's "reward" (0 when it misses),
"meets" (latency_s <= latency_req_s) and "plan" / "graph": the plan and exit-branch graph files,
relative to the map's folder. `pisplit configmap` writes it beside them; Algorithm 3
(cluster.bandwidth: estimate, detect the state, `ConfigMap.find`) reads it, and `pisplit run MAP`
(cluster.switching) runs its plans, switching between frames as the bandwidth it measures says.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from layers.errors import PisplitError
from layers.graph import Graph
from layers.jsonfile import read_json

from .cost import CostModel, make_cluster
from .edge_host import EdgeHostCandidate, edge_host_candidates
from .link_pricing import CodecTable, CutCodecs, LossBudget

CONFIGMAP_FORMAT = "pisplit-configmap"
CONFIGMAP_VERSION = 1
REWARD = ("exp(accuracy) + throughput_fps if latency_s <= latency_req_s else 0 "
          "(Edgent, Li et al., IEEE TWC 2020, the dynamic configurator's reward)")


# --- exits, branches, accuracies -------------------------------------------------------------------
def exit_names(graph: Graph) -> list[str]:
    """The graph's outputs ordered by the node that produces them (shallow to deep): each is an exit."""
    return sorted(graph.outputs, key=lambda t: graph.producer[t])


def exit_branch(graph: Graph, name: str) -> Graph:
    """The nodes output `name` needs (its ancestors), in the model's node order, as a graph with the
    one output `name`: what a frame that leaves at exit `name` computes."""
    if name not in graph.outputs:
        raise PisplitError(f"exit {name}: not an output of {graph.name} (outputs: {', '.join(graph.outputs)})")
    need, keep = {name}, set()
    for i in range(len(graph.nodes) - 1, -1, -1):
        node = graph.nodes[i]
        if any(t in need for t in node.outputs):
            keep.add(i)
            need.update(node.inputs)
    nodes = [graph.nodes[i] for i in sorted(keep)]
    inputs = {k: v for k, v in graph.inputs.items() if k in need}
    return Graph(f"{graph.name}.{name}", inputs, nodes, [name], graph.weights, graph.meta)


def exit_accuracies(graph: Graph, overrides: dict | None = None) -> dict:
    """{exit: held-out accuracy}: layers/trained/manifest.json's test_accuracy for this model's name,
    updated with `overrides`; PisplitError naming the exits with none."""
    from layers.trained import manifest

    entry = manifest()["models"].get(graph.name, {})
    acc = {k: float(v) for k, v in entry.get("test_accuracy", {}).items() if k in graph.outputs}
    acc.update({k: float(v) for k, v in (overrides or {}).items()})
    for name, value in acc.items():
        if name not in graph.outputs:
            raise PisplitError(f"accuracy of {name}: not an output of {graph.name} (outputs: {', '.join(graph.outputs)})")
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise PisplitError(f"accuracy of {name}: {value} must be in [0, 1]")
    missing = [t for t in graph.outputs if t not in acc]
    if missing:
        raise PisplitError(f"model {graph.name}: no held-out accuracy for {', '.join(missing)} "
                           "(not in layers/trained/manifest.json; give --accuracy NAME=A)")
    return acc


def parse_accuracies(items) -> dict:
    """['exit1=0.9', ...] (--accuracy NAME=A) -> {'exit1': 0.9}."""
    out = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise PisplitError(f"--accuracy {item}: expected NAME=A with A in [0, 1], e.g. exit1=0.93")
    return out


def branch_codec_table(table: CodecTable | None, graph: Graph, branch: Graph) -> CodecTable | None:
    """The codec table of `branch` from one measured on the whole `graph`: a branch cut gets the
    samples of the whole model's cut whose live tensors are the same ones (same bytes, same codec
    work); other branch cuts get none (raw only)."""
    if table is None:
        return None
    if table.n_nodes != len(graph):
        raise PisplitError(f"codec table of {table.model}: {table.n_nodes} nodes, but {graph.name} has {len(graph)}")
    by_tensors = {}
    for entry in table.cuts:
        by_tensors.setdefault(frozenset(graph.cut_tensors(entry.cut)), entry)
    cuts = []
    for c in range(len(branch)):
        entry = by_tensors.get(frozenset(branch.cut_tensors(c)))
        if entry is not None:
            cuts.append(CutCodecs(c, branch.nodes[c - 1].name if c else "input", entry.raw_bytes, entry.messages, entry.samples,
                                  entry.entropy_bits, entry.nonzero))
    return CodecTable(branch.name, len(branch), table.frames, table.n_frames, table.machine, tuple(cuts), table.machine_speed)


# --- strategies --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    """One (exit, cut, codec) with its predicted latency, throughput and accuracy."""

    exit: str
    depth: int  # position of the exit among the model's exits, shallow (0) to deep
    cut: int  # in the exit branch's node order (n_nodes: all on the device)
    n_nodes: int  # of the exit branch
    after: str  # the branch node before the cut
    codec: str
    latency_s: float
    throughput_fps: float
    accuracy: float
    # what strategy_plan builds the plan from: an EdgeHostCandidate (one device and a host, or the device
    # alone), a ClusterHostCandidate (Pis and a host) or a Plan (the Pis alone)
    candidate: object = field(default=None, compare=False, repr=False)

    @property
    def on_device(self) -> bool:
        return self.cut == self.n_nodes

    def describe(self) -> str:
        where = "all on the device(s)" if self.on_device else f"cut {self.cut} (after {self.after}), {self.codec}"
        return f"exit {self.exit} {where}"


def candidate_latency(c: EdgeHostCandidate) -> float:
    """Seconds one frame takes through an edge-host candidate (edge_host_plan's predicted latency)."""
    return c.edge_s + c.encode_s + c.transfer_s + c.decode_s + c.host_s + c.result_s


def device_only_candidate(model: CostModel) -> EdgeHostCandidate:
    """A one-device cluster (the host gone): the whole branch on the device."""
    n = model.n
    cost = model.stage_cost(0, n, (1,), "single")
    edge_s = float(model.prefix_seconds[0, n])
    return EdgeHostCandidate(n, model.graph.nodes[n - 1].name, "raw", edge_s, 0.0, 0.0, 0.0, 0.0, 0.0, edge_s, 0.0, 0.0,
                             bool(cost is not None and cost.feasible))


def split_cluster(cluster):
    """(the edge devices as a Cluster, the host as a Cluster or None), each renumbered from rank 0."""
    from dataclasses import replace

    from .cost import Cluster

    hosts = [d for d in cluster.devices if d.kind == "host"]
    edges = [d for d in cluster.devices if d.kind != "host"]
    if len(hosts) > 1 or not edges:
        raise PisplitError(f"edgent: expected edge devices and at most one host (e.g. rpi3:1,host:1 or rpi3:4,host:1), got "
                           f"{', '.join(d.kind for d in cluster.devices)}")
    edge = Cluster(tuple(replace(d, rank=i) for i, d in enumerate(edges)), cluster.link_bandwidth_bps, cluster.link_latency_s)
    host = Cluster((replace(hosts[0], rank=0),), cluster.link_bandwidth_bps, cluster.link_latency_s) if hosts else None
    return edge, host


def pi_cluster_strategies(graph: Graph, branch: Graph, name: str, depth: int, edge, host, accuracy: float, calibration,
                          table, budget) -> list[Strategy]:
    """Beyond Edgent, several Pis: the branch's head planned on the Pis by the dp planner, its tail on the host
    (edge_host.cluster_host_candidates: latency = the head plan's latency + the host's part), and the
    whole branch on the Pis alone (the dp planner's latency plan)."""
    from .edge_host import cluster_host_candidates
    from .planners import InfeasiblePlan, make_plan

    out = []
    if host is not None:
        for c in cluster_host_candidates(branch, edge, host, calibration, branch_codec_table(table, graph, branch), budget):
            out.append(Strategy(name, depth, c.cut, len(branch), c.after, c.codec, c.head.predicted_latency_s + c.host_period_s,
                                c.throughput_fps, accuracy, c))
    try:
        plan = make_plan(branch, CostModel(branch, edge, calibration), "dp", "latency", branch.name, "numpy")
    except InfeasiblePlan:
        return out
    out.append(Strategy(name, depth, len(branch), len(branch), branch.nodes[-1].name, "raw", plan.predicted_latency_s,
                        plan.predicted_throughput_fps, accuracy, plan))
    return out


def strategies(graph: Graph, cluster, accuracies: dict, calibration=None, table: CodecTable | None = None,
               budget: LossBudget | None = None, runnable_only: bool = True) -> list[Strategy]:
    """Every feasible (exit, cut, codec) of `graph` on `cluster` (one device and one host, or one device
    alone), in Algorithm 2's order: exits by depth, cuts ascending, raw before the table's codecs.
    Several edge devices (with or without a host): pi_cluster_strategies."""
    out = []
    edge, host = split_cluster(cluster)
    alone = len(cluster.devices) == 1
    for depth, name in enumerate(exit_names(graph)):
        branch = exit_branch(graph, name)
        if len(edge.devices) > 1:
            out += pi_cluster_strategies(graph, branch, name, depth, edge, host, accuracies[name], calibration, table, budget)
            continue
        model = CostModel(branch, cluster, calibration)
        if alone:
            candidates = [device_only_candidate(model)]
        else:
            candidates = edge_host_candidates(model, branch_codec_table(table, graph, branch), budget)
        for c in candidates:
            if not c.feasible or (runnable_only and not c.runnable):
                continue
            acc = accuracies[name] - (c.accuracy_loss or 0.0)
            out.append(Strategy(name, depth, c.cut, len(branch), c.after, c.codec, candidate_latency(c), c.throughput_fps,
                                max(acc, 0.0), c))
    if not out:
        raise PisplitError(f"edgent: no (exit, cut) of {graph.name} fits the devices' memory")
    return out


# --- Algorithm 1 -------------------------------------------------------------------------------------
def _faster(s: Strategy) -> tuple:
    return (s.latency_s, -s.accuracy, -s.depth, s.cut, s.codec)


def _better(s: Strategy) -> tuple:
    """Sort key, smallest best: more accurate, then faster, then deeper, then earlier cut, then codec name."""
    return (-s.accuracy, s.latency_s, -s.depth, s.cut, s.codec)


@dataclass(frozen=True)
class Selection:
    """Algorithm 1's answer: each exit's fastest strategy and best one meeting the requirement, the choice."""

    requirement_s: float
    fastest_per_exit: tuple  # Strategy per exit, shallow to deep
    meeting_per_exit: tuple  # Strategy or None per exit
    chosen: Strategy | None
    fastest: Strategy

    def message(self) -> str:
        req = f"{self.requirement_s * 1e3:g} ms"
        if self.chosen is None:
            f = self.fastest
            return f"cannot meet {req}; the fastest is {f.describe()} at {f.latency_s * 1e3:.1f} ms"
        c = self.chosen
        return (f"meets {req}: {c.describe()}, predicted {c.latency_s * 1e3:.1f} ms, "
                f"accuracy {c.accuracy:.3f}, {c.throughput_fps:.1f} frames/s")


def select(candidates: list[Strategy], requirement_s: float) -> Selection:
    """Algorithm 1 over `candidates` (strategies()): the most accurate strategy whose latency meets
    `requirement_s` (module docstring), each exit's fastest, or None and the fastest overall."""
    if not requirement_s > 0 or math.isinf(requirement_s):
        raise PisplitError(f"latency requirement {requirement_s!r} s: must be a positive number")
    if not candidates:
        raise PisplitError("edgent: no strategies to choose from")
    exits = sorted({(s.depth, s.exit) for s in candidates})
    fastest, meeting = [], []
    for depth, _ in exits:
        mine = [s for s in candidates if s.depth == depth]
        fastest.append(min(mine, key=_faster))
        ok = [s for s in mine if s.latency_s <= requirement_s]
        meeting.append(min(ok, key=_better) if ok else None)
    met = [s for s in meeting if s is not None]
    chosen = min(met, key=_better) if met else None
    return Selection(requirement_s, tuple(fastest), tuple(meeting), chosen, min(fastest, key=_faster))


# --- Algorithm 2 -------------------------------------------------------------------------------------
def reward(s: Strategy, requirement_s: float) -> float:
    """The paper's reward of a strategy (module docstring)."""
    return math.exp(s.accuracy) + s.throughput_fps if s.latency_s <= requirement_s else 0.0


def best_by_reward(candidates: list[Strategy], requirement_s: float) -> tuple[Strategy, float, bool]:
    """Algorithm 2's inner loop: (strategy of the best reward, its reward, whether it meets the
    requirement); with none meeting it, the fastest and 0."""
    best, best_reward = None, 0.0
    for s in candidates:
        r = reward(s, requirement_s)
        if r > 0 and best_reward <= r:
            best, best_reward = s, r
    if best is None:
        return min(candidates, key=_faster), 0.0, False
    return best, best_reward, True


@dataclass(frozen=True)
class ConfigEntry:
    """One bandwidth state (and device set) of the configuration map and its strategy."""

    devices: str  # e.g. "rpi3:1,host:1"
    bandwidth_bps: float
    exit: str
    cut: int
    n_nodes: int
    after: str
    codec: str
    latency_s: float
    throughput_fps: float
    accuracy: float
    reward: float
    meets: bool
    plan: str | None = None  # path of its plan, relative to the map's folder
    graph: str | None = None  # path of its exit branch graph, relative to the map's folder


@dataclass(frozen=True)
class ConfigMap:
    """Algorithm 2's configuration map (module docstring). Entries are sorted by devices, then bandwidth."""

    model: str
    latency_req_s: float
    link_latency_s: float
    engine: str
    entries: tuple  # ConfigEntry
    reward: str = REWARD
    objective: str = "reward"  # what chose the entries: the paper's reward, or Algorithm 1's accuracy (configuration_map)

    def validate(self) -> "ConfigMap":
        """Check what Algorithm 3 relies on; PisplitError naming the first problem."""
        if not (isinstance(self.latency_req_s, (int, float)) and 0 < self.latency_req_s < math.inf):
            raise PisplitError(f"configmap: latency_req_s {self.latency_req_s!r} must be a positive number")
        if not (isinstance(self.link_latency_s, (int, float)) and 0 <= self.link_latency_s < math.inf):
            raise PisplitError(f"configmap: link_latency_s {self.link_latency_s!r} must be a non-negative number")
        if not self.entries:
            raise PisplitError("configmap: no entries")
        if self.objective not in OBJECTIVES:
            raise PisplitError(f"configmap: objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        seen = set()
        for i, e in enumerate(self.entries):
            where = f"configmap: entry {i} ({e.devices} at {e.bandwidth_bps:g} bit/s)"
            numbers = (e.bandwidth_bps, e.latency_s, e.throughput_fps, e.accuracy, e.reward)
            if not all(isinstance(v, (int, float)) and 0 <= v < math.inf for v in numbers) or e.bandwidth_bps <= 0:
                raise PisplitError(f"{where}: negative, zero or non-finite numbers")
            if not 0 <= e.accuracy <= 1:
                raise PisplitError(f"{where}: accuracy {e.accuracy} not in [0, 1]")
            if not 0 <= e.cut <= e.n_nodes or e.n_nodes < 1:
                raise PisplitError(f"{where}: cut {e.cut} outside the branch's 0..{e.n_nodes}")
            if e.meets != (e.latency_s <= self.latency_req_s):
                raise PisplitError(f"{where}: meets={e.meets} but latency {e.latency_s * 1e3:.3f} ms vs requirement "
                                   f"{self.latency_req_s * 1e3:.3f} ms")
            want = math.exp(e.accuracy) + e.throughput_fps if e.meets else 0.0
            if not math.isclose(e.reward, want, rel_tol=1e-9, abs_tol=1e-12):
                raise PisplitError(f"{where}: reward {e.reward} is not {want} ({REWARD})")
            key = (e.devices, e.bandwidth_bps)
            if key in seen:
                raise PisplitError(f"{where}: a second entry for this state")
            seen.add(key)
            for name, path in (("plan", e.plan), ("graph", e.graph)):
                if path is not None and (Path(path).is_absolute() or ".." in Path(path).parts):
                    raise PisplitError(f"{where}: {name} path {path!r} must be relative to the map's folder, without '..'")
        return self

    def device_sets(self) -> list[str]:
        return list(dict.fromkeys(e.devices for e in self.entries))

    def states(self, devices: str | None = None) -> list[float]:
        """The bandwidth states (bit/s, ascending) of a device set (default: the first)."""
        devices = devices or self.entries[0].devices
        return sorted(e.bandwidth_bps for e in self.entries if e.devices == devices)

    def find(self, bandwidth_bps: float, devices: str | None = None) -> ConfigEntry:
        """Algorithm 3's find(s): the entry of the largest state not above `bandwidth_bps` (the lowest
        state below every state), for the device set `devices` (default: the first)."""
        devices = devices or self.entries[0].devices
        mine = sorted((e for e in self.entries if e.devices == devices), key=lambda e: e.bandwidth_bps)
        if not mine:
            raise PisplitError(f"configmap: no entries for devices {devices} (known: {', '.join(self.device_sets())})")
        below = [e for e in mine if e.bandwidth_bps <= bandwidth_bps * (1 + 1e-12)]
        return below[-1] if below else mine[0]

    def to_dict(self) -> dict:
        return {"format": CONFIGMAP_FORMAT, "version": CONFIGMAP_VERSION, "model": self.model, "latency_req_s": self.latency_req_s,
                "link_latency_s": self.link_latency_s, "engine": self.engine, "reward": self.reward, "objective": self.objective,
                "entries": [asdict(e) for e in self.entries]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.validate().to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, doc: dict, where: str = "configmap") -> "ConfigMap":
        if not isinstance(doc, dict) or doc.get("format") != CONFIGMAP_FORMAT:
            raise PisplitError(f"{where}: not a pisplit configuration map (no \"format\": \"{CONFIGMAP_FORMAT}\")")
        if doc.get("version") != CONFIGMAP_VERSION:
            raise PisplitError(f"{where}: version {doc.get('version')!r} is not supported (expected {CONFIGMAP_VERSION})")
        try:
            entries = tuple(ConfigEntry(str(e["devices"]), _num(e["bandwidth_bps"]), str(e["exit"]), _int(e["cut"]),
                                        _int(e["n_nodes"]), str(e["after"]), str(e["codec"]), _num(e["latency_s"]),
                                        _num(e["throughput_fps"]), _num(e["accuracy"]), _num(e["reward"]), _bool(e["meets"]),
                                        _path(e.get("plan")), _path(e.get("graph")))
                            for e in doc["entries"])
            cmap = cls(str(doc["model"]), _num(doc["latency_req_s"]), _num(doc["link_latency_s"]), str(doc["engine"]), entries,
                       str(doc.get("reward", REWARD)), str(doc.get("objective", "reward")))
        except (KeyError, TypeError, ValueError) as exc:
            raise PisplitError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None
        try:
            return cmap.validate()
        except PisplitError as exc:
            raise PisplitError(f"{where}: {str(exc).removeprefix('configmap: ')}") from None

    @classmethod
    def load(cls, path: str | Path) -> "ConfigMap":
        """Read a map and check that every plan and graph it names exists beside it."""
        path = Path(path)
        cmap = cls.from_dict(read_json(path, "configmap"), f"configmap {path}")
        for e in cmap.entries:
            for name in (e.plan, e.graph):
                if name is not None and not (path.parent / name).is_file():
                    raise PisplitError(f"configmap {path}: {name} (the {e.devices} at {e.bandwidth_bps:g} bit/s entry's) is missing")
        return cmap


def _num(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{v!r} is not a number")
    return float(v)


def _int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{v!r} is not an integer")
    return v


def _bool(v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{v!r} is not true or false")
    return v


def _path(v) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError(f"{v!r} is not a path")
    return v


OBJECTIVES = ("reward", "accuracy")


def parse_device_speeds(text: str) -> tuple[str, dict]:
    """'rpi3:1,host:1*0.7' -> ('rpi3:1,host:1', {'host': 0.7}): an entry ending in *SPEED computes at SPEED
    times its kind's profile (host*0.7: a host at 0.7 of the reference machine's speed, e.g. a slower
    desktop, or this machine when it emulates the host: emulation cannot run a device faster than the
    machine it runs on). Raises PisplitError naming a bad factor."""
    import re

    kept, speeds = [], {}
    for entry in [e.strip() for e in str(text).split(",") if e.strip()]:
        m = re.fullmatch(r"(.*?)\*\s*(\S*)", entry)
        if not m:
            kept.append(entry)
            continue
        try:
            speed = float(m.group(2))
        except ValueError:
            speed = math.nan
        if not 0 < speed < math.inf:
            raise PisplitError(f"devices {entry!r}: speed {m.group(2)!r} must be a positive number (e.g. host:1*0.7)")
        kind = re.match(r"[A-Za-z0-9_-]+", m.group(1).strip())
        if kind is None:
            raise PisplitError(f"devices {entry!r}: expected KIND[:COUNT][@MEMORY][*SPEED], e.g. host:1*0.7")
        speeds[kind.group(0).lower()] = speed
        kept.append(m.group(1).strip())
    return ",".join(kept), speeds


def device_cluster(entries: list, link_bps: float | None = None, link_latency_s: float | None = None, speeds: dict | None = None):
    """make_cluster, each device at its kind's speed factor in `speeds` (parse_device_speeds; default 1)."""
    from dataclasses import replace

    cluster = make_cluster(entries, link_bps, link_latency_s)
    if not speeds:
        return cluster
    return replace(cluster, devices=tuple(replace(d, speed=float(speeds.get(d.kind, d.speed))) for d in cluster.devices))


def configuration_map(graph: Graph, device_sets: list, states_bps: list, requirement_s: float, accuracies: dict,
                      model_spec: str, link_latency_s: float | None = None, calibration=None, table: CodecTable | None = None,
                      budget: LossBudget | None = None, engine: str = "numpy", objective: str = "reward",
                      speeds: dict | None = None) -> tuple[ConfigMap, dict]:
    """Algorithm 2 over every device set (a list of (label, parse_devices entries)) and bandwidth state.

    objective "reward" is the paper's; "accuracy" takes Algorithm 1's choice per state instead (the most
    accurate strategy meeting the requirement): with small models the reward's throughput term (hundreds
    of frames/s) outweighs exp(accuracy) (1 to e) so much that the paper's map always keeps the fastest
    exit. Entries record the paper's reward of what was chosen either way.
    Returns the map (no plan paths yet) and {(devices label, state): Strategy} for writing the plans."""
    if not states_bps:
        raise PisplitError("configmap: no bandwidth states")
    if objective not in OBJECTIVES:
        raise PisplitError(f"configmap: objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    entries, chosen = [], {}
    latency = None
    for label, devs in device_sets:
        for bw in sorted(set(states_bps)):
            cluster = device_cluster(devs, bw, link_latency_s, speeds)
            latency = cluster.link_latency_s
            cands = strategies(graph, cluster, accuracies, calibration, table, budget)
            if objective == "reward":
                s, r, meets = best_by_reward(cands, requirement_s)
            else:
                sel = select(cands, requirement_s)
                s = sel.chosen or sel.fastest
                r, meets = reward(s, requirement_s), sel.chosen is not None
            chosen[(label, bw)] = s
            entries.append(ConfigEntry(label, float(bw), s.exit, s.cut, s.n_nodes, s.after, s.codec, s.latency_s, s.throughput_fps,
                                       s.accuracy, r, meets))
    return ConfigMap(model_spec, float(requirement_s), float(latency or 0.0), engine, tuple(entries), objective=objective).validate(), chosen


def strategy_plan(graph: Graph, strategy: Strategy, cluster, branch_spec: str, calibration=None, engine: str = "numpy"):
    """The runnable Plan of a strategy, over its exit branch graph (saved at `branch_spec`)."""
    from .edge_host import edge_host_plan

    from dataclasses import replace

    from .edge_host import ClusterHostCandidate, cluster_host_plan
    from .plan import Plan

    branch = exit_branch(graph, strategy.exit)
    if isinstance(strategy.candidate, Plan):  # the Pis alone
        return replace(strategy.candidate, model=branch_spec, engine=engine).validate()
    if isinstance(strategy.candidate, ClusterHostCandidate):
        return replace(cluster_host_plan(branch, strategy.candidate, split_cluster(cluster)[1], branch_spec, engine))
    model = CostModel(branch, cluster, calibration)
    if len(cluster.devices) == 1:
        from .planners import make_plan

        return make_plan(branch, model, "single", "latency", branch_spec, engine)
    return edge_host_plan(model, strategy.candidate, branch_spec, engine)
