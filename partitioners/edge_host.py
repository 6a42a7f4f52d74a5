"""Edge and host (Ko et al., AVSS 2018; issue 15): the network's head on an edge device (a Pi), its
tail on a host, the cut's tensors encoded on the link between them.

Every cut c in 0..n is a candidate with every admissible codec of the codec table at c (and raw):
c = 0 sends the input (all on the host; a codec at cut 0 is how the paper's 'JPEG input' is priced),
c = n keeps everything on the edge (its results stay there: rank 0 is pisplit's sink). With the
cost model's seconds (partitioners.cost) and link_pricing's codec price, as a two-stage pipeline whose
ranks block in their transfers as MPI sends over TCP do:

    edge period = edge compute + encode + transfer(c) + result back (c < n)
    host period = transfer(c) + decode + host compute + result back
    throughput = 1 / max(edge period, host period)

Edge energy per frame = idle watts x period + (busy - idle) watts x (edge compute + encode)
+ transmitter watts x seconds on the air (the cut's bytes). POWER cites its figures; a link rate
uses the slowest transmitter mode that carries it (else the fastest).

All on the host (c = 0) runs too: the runtime's rank 0 is the edge, the frames' source, and must run a
stage, so its plan is one of `edge_input_graph(graph)`, the model behind a first node that hands the
input on unchanged (a reshape to its own shape): the edge runs that node and sends the input with the
candidate's codec (the paper's JPEG input), the host runs the model. The caller saves that graph and
names it in the plan (edge_host_plan's edge_input_spec).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from layers.errors import PisplitError

from layers.graph import Graph, Node

from .cost import CostModel
from .link_pricing import CodecTable, LossBudget, admissible, in_reference_seconds, link_seconds, per_tensor_sample
from .plan import Device, Plan, Stage, StagePrediction

# Device power: (idle W, busy W, source). Transmitter modes: bit/s -> W (Ko et al.'s transmitter).
POWER = {
    "rpi3": (1.9, 5.1, "The MagPi, 'Raspberry Pi 4 specs and benchmarks' (2019), power table: Pi 3B+ idle 1.9 W, "
                       "400% CPU load (stress --cpu 4) 5.1 W. https://magpi.raspberrypi.com/articles/raspberry-pi-4-specs-benchmarks "
                       "(read from copies of the table: the 5.1 W / 1010 mA row is quoted verbatim there, the idle figure should "
                       "be checked against the original)"),
    "rpi4": (2.7, 6.4, "same table: Pi 4 idle 2.7 W (540 mA), 400% CPU load 6.4 W (1280 mA)"),
}
TRANSMITTER_W = {1e6: 0.0627, 2e6: 0.099, 22e6: 0.660}
TRANSMITTER_SOURCE = ("Ko et al. 2018 section 4.1 (shared/seeds/001): 'ultra low power 2.4GHz 802.11bgn transmitter module [12] "
                      "that has 1, 2, and 22 Mbps datarate modes with 62.7, 99, and 660 mW'")


def transmitter_watts(bandwidth_bps: float) -> float:
    """Watts of the transmitter mode that carries `bandwidth_bps` (the slowest that does, else the fastest)."""
    for rate in sorted(TRANSMITTER_W):
        if bandwidth_bps <= rate * (1 + 1e-9):
            return TRANSMITTER_W[rate]
    return TRANSMITTER_W[max(TRANSMITTER_W)]


@dataclass(frozen=True)
class EdgeHostCandidate:
    """One cut and codec: its per-frame seconds, throughput and edge energy."""

    cut: int
    after: str  # the node before the cut ('input' for cut 0)
    codec: str
    edge_s: float  # edge compute
    encode_s: float
    transfer_s: float  # the cut's bytes on the link (with per-message latency)
    decode_s: float
    host_s: float
    result_s: float  # the results back to the edge (rank 0 is the sink)
    period_s: float
    sent_bytes: float
    edge_energy_j: float
    feasible: bool  # both parts fit their device's memory
    accuracy_loss: float | None = None
    rel_error: float = 0.0

    @property
    def throughput_fps(self) -> float:
        return 1.0 / self.period_s if self.period_s > 0 else float("inf")

    @property
    def runnable(self) -> bool:
        """Runs on the model as it is: the runtime needs rank 0 (the edge, the frames' source) in a
        stage, so everything on the host runs only on edge_input_graph(model) (edge_host_plan)."""
        return self.cut > 0


EDGE_INPUT_NODE = "edge_input"


def edge_input_graph(graph: Graph) -> Graph:
    """`graph` behind one node, EDGE_INPUT_NODE, that passes its input on unchanged (a reshape to the
    input's own shape; the new input is '<input>_at_edge'): nodes [0, 1) are the edge's stage of an
    all-on-the-host plan, cut 1 carries the input to the host. Models of one input; PisplitError else.

    E.g. lenet5 (9 nodes, input 'input' (1, 28, 28, 1)) -> 10 nodes, input 'input_at_edge', node 0
    edge_input: reshape input_at_edge -> input, then conv1 ... as before; same outputs."""
    if len(graph.inputs) != 1:
        raise PisplitError(f"edge-host: all on the host needs a model of one input, {graph.name} has {len(graph.inputs)}")
    (name, shape), = graph.inputs.items()
    if graph.dtype(name).kind != "f":
        raise PisplitError(f"edge-host: all on the host sends a float input; {graph.name}'s input {name!r} is {graph.dtype(name)}")
    at_edge = f"{name}_at_edge"
    node = Node(EDGE_INPUT_NODE, "reshape", [at_edge], [name], {"shape": list(shape[1:])})
    return Graph(f"{graph.name}+edge-input", {at_edge: shape}, [node, *graph.nodes], graph.outputs, graph.weights, graph.meta)


def edge_host_candidates(model: CostModel, table: CodecTable | None, budget: LossBudget | None = None) -> list[EdgeHostCandidate]:
    """Every cut with every admissible codec (and raw), for a cluster of one edge device and one host.
    The table's seconds are turned into the reference machine's first (link_pricing.in_reference_seconds)."""
    table = in_reference_seconds(table, model.calibration) if table is not None else None
    kinds = [d.kind for d in model.cluster.devices]
    if len(kinds) != 2 or kinds.count("host") != 1:
        raise PisplitError(f"edge-host: expected one edge device and one host (e.g. --devices rpi3:1,host:1), got {', '.join(d.kind for d in model.cluster.devices)}")
    host = next(c for c in model.classes if c.kind == "host")
    edge = next(c for c in model.classes if c.kind != "host")
    if edge.kind not in POWER:
        raise PisplitError(f"edge-host: no power model for {edge.kind} (known: {', '.join(POWER)})")
    idle_w, busy_w, _ = POWER[edge.kind]
    tx_w = transmitter_watts(model.cluster.link_bandwidth_bps)
    n = model.n
    bw, lat = model.cluster.link_bandwidth_bps, model.cluster.link_latency_s
    result = float(model.transfer[n])
    out = []
    for cut in range(n + 1):
        edge_s = float(model.prefix_seconds[edge.index, cut])
        host_s = float(model.prefix_seconds[host.index, n] - model.prefix_seconds[host.index, cut])
        raw, messages = float(model.cut_bytes[cut]), float(model.cut_messages[cut])
        feasible = all(model.stage_cost(a, b, tuple(int(k == cls.index) for k in range(len(model.classes))), "single").feasible
                       for a, b, cls in ((0, cut, edge), (cut, n, host)) if a < b)
        entry = table.cut(cut) if table is not None and cut < n else None
        options = [(None, "raw")] + [(s, s.codec) for s in (entry.samples if entry else ()) if admissible(s, budget)]
        mixed = per_tensor_sample(entry, bw, edge.seconds_scale, host.seconds_scale, budget) if entry is not None else None
        if mixed is not None:  # a cut of several tensors: each with its own codec
            options.append((mixed, mixed.codec))
        for sample, name in options:
            if cut == n and sample is not None:
                continue
            air = 0.0 if cut == n else (sample.encoded_bytes if sample else raw) * 8.0 / bw
            transfer = 0.0 if cut == n else link_seconds(replace(sample, encode_s=0.0, decode_s=0.0) if sample else None, raw, messages, bw, lat)
            enc = sample.encode_s * edge.seconds_scale if sample else 0.0
            dec = sample.decode_s * host.seconds_scale if sample else 0.0
            back = result if cut < n else 0.0
            edge_period = edge_s + enc + transfer + back
            host_period = transfer + dec + host_s + back if cut < n else 0.0
            period = max(edge_period, host_period)
            energy = idle_w * period + (busy_w - idle_w) * (edge_s + enc) + tx_w * air
            out.append(EdgeHostCandidate(cut, model.graph.nodes[cut - 1].name if cut else "input", name, edge_s, enc, transfer, dec,
                                         host_s, back, period, (sample.encoded_bytes if sample else raw) if cut < n else 0.0,
                                         energy, feasible, sample.accuracy_loss if sample else None,
                                         sample.max_rel_error if sample else 0.0))
    return out


def best_candidate(candidates: list[EdgeHostCandidate], runnable_only: bool = False) -> EdgeHostCandidate:
    """The feasible candidate of highest throughput (least edge energy on ties)."""
    pool = [c for c in candidates if c.feasible and (c.runnable or not runnable_only)]
    if not pool:
        raise PisplitError("edge-host: no cut fits the devices' memory")
    return min(pool, key=lambda c: (round(c.period_s, 12), c.edge_energy_j))


def edge_host_plan(model: CostModel, candidate: EdgeHostCandidate, model_spec: str, engine: str = "numpy",
                   edge_input_spec: str | None = None) -> Plan:
    """The plan of a candidate: the edge (rank 0) runs [0, cut) and sends with the candidate's codec;
    the host (rank 1) runs the rest. A cut at n is one stage on the edge alone. Everything on the host
    (cut 0) is a plan of edge_input_graph(model's graph), saved where `edge_input_spec` names it."""
    if not candidate.runnable:
        if edge_input_spec is None:
            raise PisplitError("edge-host: with everything on the host, rank 0 (the edge, the frames' source) would run no stage of "
                               "the model: plan edge_input_graph(model) instead (give edge_input_spec)")
        return _all_on_host_plan(model, candidate, edge_input_spec, engine)
    edge_dev = next(d for d in model.cluster.devices if d.kind != "host")
    host_dev = next(d for d in model.cluster.devices if d.kind == "host")
    n = model.n
    edge_period = candidate.edge_s + candidate.encode_s + candidate.transfer_s + candidate.result_s
    if candidate.cut == n:
        devices = (Device(0, edge_dev.kind, edge_dev.memory_bytes, edge_dev.host, edge_dev.speed),)
        cost = model.stage_cost(0, n, tuple(int(c.kind != "host") for c in model.classes), "single")
        stages = (Stage(0, 0, n, (0,), "single", (), 0, StagePrediction(candidate.edge_s, 0.0, {0: int(cost.memory_bytes[0])})),)
        latency = candidate.edge_s
    else:
        devices = (Device(0, edge_dev.kind, edge_dev.memory_bytes, edge_dev.host, edge_dev.speed),
                   Device(1, host_dev.kind, host_dev.memory_bytes, host_dev.host, host_dev.speed))
        counts = {kind: tuple(int(c.kind == kind) for c in model.classes) for kind in ("host", edge_dev.kind)}
        edge_cost = model.stage_cost(0, candidate.cut, counts[edge_dev.kind], "single")
        host_cost = model.stage_cost(candidate.cut, n, counts["host"], "single")
        stages = (Stage(0, 0, candidate.cut, (0,), "single", (), int(model.cut_bytes[candidate.cut]),
                        StagePrediction(candidate.edge_s + candidate.encode_s, edge_period - candidate.edge_s - candidate.encode_s,
                                        {0: int(edge_cost.memory_bytes[0])}), candidate.codec),
                  Stage(1, candidate.cut, n, (1,), "single", (), 0,
                        StagePrediction(candidate.host_s + candidate.decode_s, candidate.transfer_s + candidate.result_s,
                                        {1: int(host_cost.memory_bytes[0])})))
        latency = candidate.edge_s + candidate.encode_s + candidate.transfer_s + candidate.decode_s + candidate.host_s + candidate.result_s
    note = (f"edge-host: cut after {candidate.after} with {candidate.codec}; predicted edge energy "
            f"{candidate.edge_energy_j * 1e3:.1f} mJ per frame")
    return Plan(model=model_spec, n_nodes=n, devices=devices, stages=stages, planner="edge-host", objective="throughput",
                engine=engine, link_bandwidth_bps=model.cluster.link_bandwidth_bps, link_latency_s=model.cluster.link_latency_s,
                predicted_throughput_fps=candidate.throughput_fps, predicted_latency_s=latency, notes=(note,)).validate()


def _all_on_host_plan(model: CostModel, candidate: EdgeHostCandidate, spec: str, engine: str) -> Plan:
    """Everything on the host as a plan of edge_input_graph: the edge's stage [0, 1) passes the input on
    and sends it with the candidate's codec, the host's stage runs the model's n nodes."""
    from .cost import shard_memory_bytes

    graph = edge_input_graph(model.graph)
    edge_dev = next(d for d in model.cluster.devices if d.kind != "host")
    host_dev = next(d for d in model.cluster.devices if d.kind == "host")
    n = model.n
    host_cost = model.stage_cost(0, n, tuple(int(c.kind == "host") for c in model.classes), "single")
    devices = (Device(0, edge_dev.kind, edge_dev.memory_bytes, edge_dev.host, edge_dev.speed),
               Device(1, host_dev.kind, host_dev.memory_bytes, host_dev.host, host_dev.speed))
    send, receive = _input_link_memory(candidate.codec, graph)
    stages = (Stage(0, 0, 1, (0,), "single", (), int(graph.cut_bytes(1)),
                    StagePrediction(candidate.encode_s, candidate.transfer_s + candidate.result_s,
                                    {0: int(shard_memory_bytes(graph, 0, 1) + send)}), candidate.codec),
              Stage(1, 1, n + 1, (1,), "single", (), 0,
                    StagePrediction(candidate.host_s + candidate.decode_s, candidate.transfer_s + candidate.result_s,
                                    {1: int(host_cost.memory_bytes[0] + receive)})))
    latency = candidate.encode_s + candidate.transfer_s + candidate.decode_s + candidate.host_s + candidate.result_s
    note = (f"edge-host: everything on the host, the input sent with {candidate.codec} (node {EDGE_INPUT_NODE} on the edge "
            f"passes it on); predicted edge energy {candidate.edge_energy_j * 1e3:.1f} mJ per frame")
    return Plan(model=spec, n_nodes=n + 1, devices=devices, stages=stages, planner="edge-host", objective="throughput",
                engine=engine, link_bandwidth_bps=model.cluster.link_bandwidth_bps, link_latency_s=model.cluster.link_latency_s,
                predicted_throughput_fps=candidate.throughput_fps, predicted_latency_s=latency, notes=(note,)).validate()


def _input_link_memory(codec: str, graph: Graph) -> tuple[float, float]:
    from .link_pricing import link_memory_bytes

    return link_memory_bytes(codec, [int(graph.tensor_bytes(t)) for t in graph.cut_tensors(1)])


# --- a Pi cluster and a host: the head's stages on the Pis, the tail on the host -----------------------------
@dataclass(frozen=True)
class ClusterHostCandidate:
    """The head [0, cut) planned on the edge devices (the dp planner), the tail on the host."""

    cut: int
    after: str
    codec: str
    head: Plan  # the head's plan (over the head graph's `cut` nodes)
    head_period_s: float
    host_period_s: float

    @property
    def period_s(self) -> float:
        return max(self.head_period_s, self.host_period_s)

    @property
    def throughput_fps(self) -> float:
        return 1.0 / self.period_s if self.period_s > 0 else float("inf")


def head_graph(graph, cut: int):
    """Nodes [0, cut) of `graph` as a graph whose outputs are the tensors live at the cut."""
    from layers.graph import Graph

    return Graph(f"{graph.name}[0:{cut}]", graph.inputs, graph.nodes[:cut], graph.cut_tensors(cut), graph.weights, graph.meta)


def cluster_host_candidates(graph, edge_cluster, host_cluster, calibration=None, table: CodecTable | None = None,
                            budget: LossBudget | None = None, cuts=None) -> list[ClusterHostCandidate]:
    """For every cut (or `cuts`): the head planned by the dp planner on `edge_cluster` (a Cluster of Pis,
    rank 0 the frames' source), its output sent to the host with the cheapest admissible codec, the
    tail on `host_cluster`'s one host. The head's last stage pays the encode and the link (its
    output's transfer, CostModel.transfer[cut], is priced so before planning); the host the link,
    the decode, its compute and the results back to rank 0. A head of several stages has rank 0's
    sink priced at the cut's transfer too (the cost model's result is the head's output): conservative;
    a head of one stage is repriced here with its send and the results it gets back. The dp planner
    itself does not see a one-stage head's send, so it may prefer one stage where a real chain would
    not (a hook in planner_dp for an output that leaves the cluster would settle this)."""
    from .link_pricing import choose_codec
    from .planners import InfeasiblePlan, make_plan
    from .profiles import Calibration

    table = in_reference_seconds(table, calibration or Calibration()) if table is not None else None

    full_host = CostModel(graph, host_cluster, calibration)
    n = len(graph)
    out = []
    for cut in (range(1, n) if cuts is None else cuts):
        head = head_graph(graph, cut)
        model = CostModel(head, edge_cluster, calibration)
        pi_scale = max(c.seconds_scale for c in model.classes)
        host_scale = full_host.classes[0].seconds_scale
        entry = table.cut(cut) if table is not None else None
        raw, messages = float(graph.cut_bytes(cut)), float(len(graph.cut_tensors(cut)))
        _, codec = choose_codec(entry, raw, messages, edge_cluster.link_bandwidth_bps, edge_cluster.link_latency_s, pi_scale,
                                host_scale, budget)
        sample = next((s for s in entry.samples if s.codec == codec), None) if entry is not None else None
        send = link_seconds(replace(sample, decode_s=0.0) if sample else None, raw, messages, edge_cluster.link_bandwidth_bps,
                            edge_cluster.link_latency_s, pi_scale, host_scale)
        model.transfer[cut] = send  # the head's output leaves for the host, encoded (rank 0's sink is priced so too: conservative)
        model.wire[cut] = link_seconds(sample, raw, messages, edge_cluster.link_bandwidth_bps, edge_cluster.link_latency_s, 0.0, 0.0)
        try:
            plan = make_plan(head, model, "dp", "throughput", graph.name, "numpy")
        except InfeasiblePlan:
            continue
        receive = link_seconds(replace(sample, encode_s=0.0) if sample else None, raw, messages, edge_cluster.link_bandwidth_bps,
                               edge_cluster.link_latency_s, pi_scale, host_scale)
        host_s = float(full_host.prefix_seconds[0, n] - full_host.prefix_seconds[0, cut])
        result = link_seconds(None, float(graph.cut_bytes(n)), float(len(graph.cut_tensors(n))), edge_cluster.link_bandwidth_bps,
                              edge_cluster.link_latency_s)
        head_period = 1.0 / plan.predicted_throughput_fps
        if len(plan.stages) == 1:  # one stage is first and last: the cost model has it send nothing, here it sends to the host
            only = plan.stages[0].predicted
            head_period = only.compute_s + only.comm_s + send + result
        out.append(ClusterHostCandidate(cut, graph.nodes[cut - 1].name, codec, plan, head_period, receive + host_s + result))
    return out


def cluster_host_plan(graph, candidate: ClusterHostCandidate, host_cluster, model_spec: str, engine: str = "numpy") -> Plan:
    """The whole plan of a candidate: the head's stages and devices as planned, then one stage on the host."""
    head = candidate.head
    host = host_cluster.devices[0]
    rank = head.n_ranks
    last = head.stages[-1]
    stages = head.stages[:-1] + (replace(last, send_bytes=int(graph.cut_bytes(candidate.cut)), send_codec=candidate.codec),)
    full_host = CostModel(graph, host_cluster)
    tail = full_host.stage_cost(candidate.cut, len(graph), (1,), "single")
    stages += (Stage(len(stages), candidate.cut, len(graph), (rank,), "single", (), 0,
                     StagePrediction(tail.compute_s, candidate.host_period_s - tail.compute_s, {rank: int(tail.memory_bytes[0])})),)
    devices = head.devices + (Device(rank, host.kind, host.memory_bytes, host.host, host.speed),)
    note = f"cluster + host: head on {head.n_ranks} device(s), cut after {candidate.after} with {candidate.codec}, tail on the host"
    return Plan(model=model_spec, n_nodes=len(graph), devices=devices, stages=stages, planner="cluster-host", objective="throughput",
                engine=engine, link_bandwidth_bps=head.link_bandwidth_bps, link_latency_s=head.link_latency_s,
                predicted_throughput_fps=candidate.throughput_fps, predicted_latency_s=head.predicted_latency_s + candidate.host_period_s,
                notes=head.notes + (note,)).validate()
