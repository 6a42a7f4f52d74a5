"""Early exits (BranchyNet, DDNN, Edgent): a frame leaves the network at a side branch that is sure.

An exit is a graph output (a side branch's class scores) with a threshold T in [0, 1]. At the exit
the frame's normalised entropy is

    eta = -sum_i p_i log p_i / log C        (C = number of classes, 0 log 0 = 0, eta in [0, 1])

and the frame is answered there when eta <= T; otherwise it goes on to the next exit or the model's
final output. p is the exit's tensor itself when a softmax node produces it (the exit already holds
probabilities, as every trained model in layers/trained does); any other exit tensor is taken as
logits and p = softmax(logits). Entropies are computed in float64 from the float32 tensor (for
logits through log-softmax, so no probability underflows to 0 and eta > 0 unless the logits are
exactly one-hot-infinite). So T = 0 answers only frames whose probabilities are exactly one-hot (a
float32 softmax rounds the other classes to 0 only when a logit leads by more than ~100), and T = 1
answers every frame at the first exit (eta is clipped to 1 against rounding).

This module is pure (numpy and layers only): the runtime (cluster.exits), `pisplit calibrate`,
`pisplit exits` and the planner's throughput with exits all use it.

Pass fractions: of all frames, `reach[k]` is the fraction that arrives at pipeline stage k (not
answered by an exit in an earlier stage); a stage behind an exit carries only that fraction, so its
period (seconds per frame it takes) counts `reach[k]` times: `throughput_with_exits`. The planner
prices a plan with exits term by term (`stage_periods_with_exits`: each compute piece between exits
for the frames reaching it, each transfer for the frames it carries, skip headers, answers and go/skip
words included), which is partitioners.cost's period when nothing exits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph
from .vocabulary import StageMode

EXIT_KINDS = ("probabilities", "logits")
FINAL = "final"  # the name an answer from the model's final output is reported under


@dataclass(frozen=True)
class ExitPoint:
    """One active exit of a graph: its output tensor, threshold, how its values are read and the
    index of the node that produces it (exits are ordered by it)."""

    name: str
    threshold: float
    kind: str  # 'probabilities' or 'logits'
    node: int


def check_threshold(name: str, threshold) -> float:
    """A threshold as a float in [0, 1]; raises PisplitError naming the exit."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise PisplitError(f"exit {name}: threshold {threshold!r} is not a number") from None
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise PisplitError(f"exit {name}: threshold {threshold!r} must be in [0, 1] (normalised entropy)")
    return t


def parse_exit_overrides(items) -> dict:
    """['exit1=0.5', 'exit2=0.3'] (the CLI's --exit NAME=T) -> {'exit1': 0.5, 'exit2': 0.3}."""
    out: dict = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        if not sep or not name:
            raise PisplitError(f"--exit {item}: expected NAME=T, e.g. exit1=0.5")
        out[name] = check_threshold(name, value)
    return out


def exit_kind(graph: Graph, name: str) -> str:
    """'probabilities' if a softmax node produces `name`, else 'logits'."""
    for node in graph.nodes:
        if name in node.outputs:
            return "probabilities" if node.op == "softmax" else "logits"
    raise PisplitError(f"exit {name}: no node of {graph.name} produces it")


def producer_index(graph: Graph, name: str) -> int:
    for i, node in enumerate(graph.nodes):
        if name in node.outputs:
            return i
    raise PisplitError(f"exit {name}: no node of {graph.name} produces it")


def final_output(graph: Graph, exit_names) -> str:
    """The output that answers frames no exit took: the last graph output that is not an exit."""
    rest = [t for t in graph.outputs if t not in set(exit_names)]
    if not rest:
        raise PisplitError(f"model {graph.name}: every output is an exit; one output must stay the final answer")
    return rest[-1]


def resolve_exits(graph: Graph, thresholds: dict) -> list[ExitPoint]:
    """The active exits of `graph` for {name: T}, ordered by the node that produces them.

    Raises PisplitError naming the exit when it is not a graph output, has a bad threshold, is the
    model's only remaining output, or is produced by the last node (nothing after it to save)."""
    points = []
    for name, t in thresholds.items():
        if name not in graph.outputs:
            raise PisplitError(f"exit {name}: not an output of {graph.name} (outputs: {', '.join(graph.outputs)})")
        node = producer_index(graph, name)
        if node == len(graph.nodes) - 1:
            raise PisplitError(f"exit {name}: produced by the model's last node, so no later work is saved; "
                               "it answers every frame no exit took")
        points.append(ExitPoint(name, check_threshold(name, t), exit_kind(graph, name), node))
    if points:
        final_output(graph, [p.name for p in points])
    return sorted(points, key=lambda p: p.node)


def normalised_entropy(values: np.ndarray, kind: str) -> np.ndarray:
    """eta of each row of `values` (..., C) as float64 (...,), in [0, 1]: `kind` 'probabilities'
    reads the rows as p, 'logits' as the inputs of a softmax. A (1, C) exit tensor gives shape (1,)."""
    x = np.asarray(values, np.float64)
    c = x.shape[-1]
    if c < 2:
        raise PisplitError(f"normalised entropy: {c} class(es); an exit needs at least 2")
    if kind == "logits":
        z = x - x.max(axis=-1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        h = -(np.exp(log_p) * log_p).sum(axis=-1)
    elif kind == "probabilities":
        p = np.clip(x, 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        h = -terms.sum(axis=-1)
    else:
        raise PisplitError(f"exit kind {kind!r}: expected one of {', '.join(EXIT_KINDS)}")
    return np.clip(h / math.log(c), 0.0, 1.0)


def exit_fires(values, kind: str, threshold: float) -> bool:
    """Whether one frame's exit tensor `values` (1, C) answers at `threshold`: exactly
    normalised_entropy(values) <= threshold, decided cheaply (the runtime asks once per exit per
    frame, and at a few classes numpy's per-call overhead is most of the cost).

    Up to FAST_CLASSES classes the entropy is computed in Python floats (math.fsum); only a value
    within 1e-9 (relative) of the threshold, far beyond the rounding that separates it from
    normalised_entropy's, is left to normalised_entropy itself, as are rows with negative
    probabilities or values that are not finite, and wider rows. T >= 1 fires for finite values (eta is
    clipped to 1)."""
    row = np.asarray(values).reshape(-1)
    if 2 <= row.size <= FAST_CLASSES:
        vals = row.tolist()
        if all(math.isfinite(v) for v in vals):
            if threshold >= 1.0:
                return True
            h = None
            if kind == "probabilities" and min(vals) >= 0.0:
                h = -math.fsum(v * math.log(v) for v in vals if v > 0.0)
            elif kind == "logits":
                top = max(vals)
                z = [v - top for v in vals]
                lse = math.log(math.fsum(math.exp(v) for v in z))
                h = -math.fsum(math.exp(v - lse) * (v - lse) for v in z)
            if h is not None:
                eta = h / math.log(len(vals))
                if eta > threshold * (1.0 + 1e-9) + 1e-12:
                    return False
                if eta < threshold * (1.0 - 1e-9) - 1e-12:
                    return True
    return bool(normalised_entropy(row.reshape(1, -1), kind)[0] <= threshold)


FAST_CLASSES = 64  # exit_fires: rows up to this many classes are decided in Python floats


def answering_exit(etas: np.ndarray, thresholds) -> np.ndarray:
    """Per frame, the index of the first exit with eta <= T, or len(thresholds) (the final output).

    etas: (frames, exits) float64; thresholds: (exits,). Returns (frames,) int64."""
    etas = np.asarray(etas, np.float64)
    t = np.asarray(thresholds, np.float64)
    n = t.size
    if etas.ndim != 2 or etas.shape[1] != n:
        raise PisplitError(f"answering_exit: entropies of shape {etas.shape} for {n} exits")
    fires = etas <= t[None, :]
    first = np.argmax(fires, axis=1)
    return np.where(fires.any(axis=1), first, n).astype(np.int64)


def exit_entropies(outputs: dict, points: list[ExitPoint]) -> np.ndarray:
    """(frames, exits) normalised entropies of every exit, from outputs {name: (frames, ..., C)}."""
    if not points:
        return np.zeros((0, 0))
    cols = [normalised_entropy(np.asarray(outputs[p.name]).reshape(len(outputs[p.name]), -1), p.kind) for p in points]
    return np.stack(cols, axis=1)


def reference_answers(graph: Graph, outputs: dict, points: list[ExitPoint]) -> tuple[np.ndarray, np.ndarray]:
    """What a run with exits `points` answers, from the whole model's outputs {name: (frames, ...)}:
    (answering exit index per frame, len(points) = final; the answer's probabilities or logits per
    frame, (frames, C))."""
    final = final_output(graph, [p.name for p in points])
    n = len(outputs[final])
    index = answering_exit(exit_entropies(outputs, points), [p.threshold for p in points]) if points else np.zeros(n, np.int64)
    names = [p.name for p in points] + [final]
    stacked = np.stack([np.asarray(outputs[t]).reshape(n, -1) for t in names], axis=0)
    return index, stacked[index, np.arange(n)]


def stage_of_node(stages, node: int) -> int:
    """Index of the stage whose [node_start, node_stop) holds `node` (stages: objects with those fields)."""
    for s in stages:
        if s.node_start <= node < s.node_stop:
            return s.index
    raise PisplitError(f"node {node}: in no stage of the plan")


def reach_per_stage(stages, points: list[ExitPoint], answered: np.ndarray) -> np.ndarray:
    """Fraction of frames that arrive at each stage: not answered by an exit of an earlier stage.

    answered: per frame, the index of the exit that answered it (len(points) = final), e.g. from
    `answering_exit` on a calibration set, or one fraction per exit as a dict {exit index: share}."""
    answered = np.asarray(answered)
    at_stage = np.array([stage_of_node(stages, p.node) for p in points], np.int64)
    reach = np.ones(len(stages))
    for k in range(len(stages)):
        earlier = np.flatnonzero(at_stage < k)
        reach[k] = 1.0 - (np.isin(answered, earlier).mean() if answered.size else 0.0)
    return reach


def throughput_with_exits(predicted_fps: float, stage_periods, reach) -> float:
    """A plan's predicted throughput when stage k takes only `reach[k]` of the frames.

    stage_periods: seconds per frame each stage needs (its predicted compute + communication, over
    its replicas). The plan's own prediction is scaled by max(periods) / max(periods x reach), so
    with no exits (reach all 1) it is the plan's figure unchanged."""
    periods = np.asarray(stage_periods, np.float64)
    reach = np.asarray(reach, np.float64)
    slowest = periods.max() if periods.size else 0.0
    with_exits = (periods * reach).max() if periods.size else 0.0
    if predicted_fps <= 0 or slowest <= 0 or with_exits <= 0:
        return predicted_fps
    return predicted_fps * slowest / with_exits


def plan_stage_periods(plan) -> np.ndarray:
    """Seconds per frame of each stage of a Plan, from its predictions (0 without one): a
    data-parallel stage's replicas share its frames."""
    out = []
    for s in plan.stages:
        p = s.predicted
        total = (p.compute_s + p.comm_s) if p else 0.0
        out.append(total / (len(s.ranks) if s.mode == StageMode.DATA_PARALLEL else 1))
    return np.array(out)


def bytes_per_frame(plan, reach) -> float:
    """Mean bytes a frame sends between stages: each stage's send_bytes times the fraction of frames
    that reach it and go on (reach of the next stage)."""
    reach = np.asarray(reach, np.float64)
    total = 0.0
    for k, s in enumerate(plan.stages[:-1]):
        total += s.send_bytes * reach[k + 1]
    return float(total)


# --- calibration on held-out data and plans that know their exit rates ---------------------------------
def calibrate(graph: Graph, outputs: dict, labels: np.ndarray, points: list[ExitPoint]) -> dict:
    """Each exit's share of the frames (answered there), the accuracy of those answers and overall,
    from the whole model's outputs on held-out frames {name: (frames, C)} and their labels (frames,).

    Returns {"frames", "exits": [{"name", "threshold", "exit_fraction", "accuracy"}], "final": {...},
    "accuracy"} ('final' is the model's final output, answering what no exit took)."""
    labels = np.asarray(labels)
    index, answer = reference_answers(graph, outputs, points)
    correct = answer.argmax(axis=-1) == labels
    n = max(len(labels), 1)
    rows = []
    for i, name in enumerate([p.name for p in points] + [final_output(graph, [p.name for p in points])]):
        mine = index == i
        rows.append({"name": name, "threshold": points[i].threshold if i < len(points) else None,
                     "exit_fraction": float(mine.sum() / n), "accuracy": float(correct[mine].mean()) if mine.any() else None})
    return {"frames": int(len(labels)), "exits": rows[:-1], "final": rows[-1], "accuracy": float(correct.mean()),
            "answered": index}


def reach_from_fractions(stages, points: list[ExitPoint], fractions) -> np.ndarray:
    """Fraction of frames reaching each stage from each exit's measured share of all frames."""
    at_stage = [stage_of_node(stages, p.node) for p in points]
    return np.array([1.0 - sum(f for f, s in zip(fractions, at_stage) if s < k) for k in range(len(stages))])


def exit_split_plan(graph: Graph, cost_model, points: list[ExitPoint], fractions, model_spec: str, engine: str):
    """A two-stage plan for a model with exits, chosen knowing the exit rates: the front stage runs the
    model up to one of the exits (its branch included), the rest runs behind it on the other devices;
    of every exit to cut after and every split of the devices (front / rest, each stage data-parallel
    over its devices) the one with the best throughput when each stage carries only the work and
    the transfers its frames still need (stage_periods_with_exits: exits inside a stage stop frames
    there too).

    fractions: each exit's share of all frames (calibrate). Returns the Plan (with its exits, their
    fractions, and predicted_throughput_fps counting the exit rates), or raises PisplitError when
    the devices are not of one class or number fewer than 2."""
    from .plan import Exit
    from .planner_dp import StageChoice
    from .planners import build_plan, stage_costs

    classes = cost_model.classes
    if len(classes) != 1 or len(cost_model.cluster.devices) < 2:
        raise PisplitError("exit plan: needs at least 2 devices of one kind (front stage up to the first exit, the rest behind it)")
    if not points:
        raise PisplitError("exit plan: no exits")
    n_devices = len(cost_model.cluster.devices)
    best = None
    for cut in sorted({p.node + 1 for p in points if p.node + 1 < len(graph)}):
        for front in range(1, n_devices):
            choices = [StageChoice(0, cut, (front,), "data-parallel" if front > 1 else "single"),
                       StageChoice(cut, len(graph), (n_devices - front,), "data-parallel" if n_devices - front > 1 else "single")]
            try:
                costs = stage_costs(cost_model, choices)
            except PisplitError:
                continue
            if not all(c.feasible for c in costs):
                continue
            stages = [_Range(0, 0, cut, (front,), choices[0].mode), _Range(1, cut, len(graph), (n_devices - front,), choices[1].mode)]
            period = float(stage_periods_with_exits(cost_model, stages, points, fractions).max())
            if best is None or period < best[0]:
                best = (period, choices, reach_from_fractions(stages, points, fractions))
    if best is None:
        raise PisplitError(f"exit plan: no split of {n_devices} devices after an exit fits in memory")
    period, choices, reach = best
    plan = build_plan(cost_model, choices, "exits", "throughput", model_spec, engine,
                      notes=[f"stage 1 carries {reach[1]:.1%} of the frames (exit rates measured on held-out data)"])
    from dataclasses import replace

    exits = tuple(Exit(p.name, p.threshold, float(f)) for p, f in zip(points, fractions))
    return replace(plan, exits=exits, predicted_throughput_fps=1.0 / period if period > 0 else plan.predicted_throughput_fps).validate()


@dataclass(frozen=True)
class _Range:
    """A stage as far as the exit arithmetic needs it (before a Plan exists)."""

    index: int
    node_start: int
    node_stop: int
    counts: tuple = (1,)
    mode: str = "single"

    @property
    def ranks(self) -> tuple:
        return tuple(range(self.counts[0]))


def reach_at_node(points: list[ExitPoint], fractions, node: int) -> float:
    """Fraction of frames that get to compute `node`: not answered by an exit made before it."""
    return 1.0 - float(sum(f for p, f in zip(points, fractions) if p.node < node))


def throughput_with_inner_exits(cost_model, plan, points: list[ExitPoint], fractions) -> float:
    """Predicted throughput of `plan` with exits taken inside its stages too: the plan's figure scaled
    by how much its slowest stage period shrinks (stage_periods_with_exits with these shares over
    the same without exits), so a plan's own calibration carries over."""
    return scaled_throughput(plan.predicted_throughput_fps, stage_periods_with_exits(cost_model, plan.stages, [], []),
                             stage_periods_with_exits(cost_model, plan.stages, points, fractions))


def scaled_throughput(fps: float, periods_before, periods_after) -> float:
    """fps x max(periods_before) / max(periods_after) (fps unchanged when either is 0)."""
    before = float(np.max(periods_before)) if len(periods_before) else 0.0
    after = float(np.max(periods_after)) if len(periods_after) else 0.0
    return fps * before / after if fps > 0 and before > 0 and after > 0 else fps


def stage_counts(cost_model, stage) -> tuple:
    """Devices per cost-model class of a plan stage (a _Range carries its own)."""
    if hasattr(stage, "counts"):
        return tuple(stage.counts)
    classes = cost_model.classes
    if len(classes) == 1:
        return (len(stage.ranks),)
    counts = tuple(sum(1 for r in stage.ranks if r in c.ranks) for c in classes)
    if sum(counts) != len(stage.ranks):
        raise PisplitError(f"stage {stage.index}: its ranks {list(stage.ranks)} are not all devices of the cost model's cluster")
    return counts


SKIP_BYTES = 32  # a skip header (cluster.exits)
GATE_BYTES = 16  # a split stage's go/skip word to a worker


def stage_periods_with_exits(cost_model, stages, points: list[ExitPoint], fractions) -> np.ndarray:
    """Seconds per frame each stage needs when exits answer `fractions` of all frames (one share per
    point), every term of partitioners.cost's stage cost weighted by the frames it applies to:

    - compute: a single or data-parallel stage runs in pieces cut after each exit inside it (the
      runtime's ExitingRunner), each piece for the frames that reach it; a split stage (compute and
      its inner transfers) for the frames reaching the stage;
    - input: the stage's input for the frames reaching it, a skip header (cluster.exits) for the others;
    - output: the next stage's input for the frames going on, a skip header for the others, and an
      answer (priced as a result) to rank 0 for each frame answered inside the stage (rank 0 answers
      its own frames in place);
    - rank 0 as source and sink: every frame's input goes out, every frame's answer comes back;
    - a split stage behind an exit: the lead's go/skip word to each worker, every frame.

    With no exits (no points) every stage's period is partitioners.cost's period_s. As there, a transfer
    occupies the link, not the ranks: a rank's cycle (its compute, the go/skip words of a split stage,
    and its transfers' own cost to it: a codec's encode and decode) and its interface's time in each
    direction are counted apart, the period the largest. Stages: a Plan's, or objects with index,
    node_start, node_stop, mode and counts (per cost-model class)."""
    n = cost_model.n
    # a skip header or a go/skip word leaves eagerly (MPI sends a message this small at once): the
    # sender pays its bytes on the link, not a message latency
    bps = cost_model.cluster.link_bandwidth_bps
    got, sent = cost_model.link_parts("rank")  # a codec's encode and decode, the sender's hold (cost.CostModel.send_hold)
    parts = {"rank": ((got, sent), 0.0), "wire": (cost_model.link_parts("wire"), SKIP_BYTES * 8.0 / bps)}
    gate = GATE_BYTES * 8.0 / bps
    exit_nodes = [p.node for p in points]
    periods = []
    for s in stages:
        a, b = s.node_start, s.node_stop
        counts = stage_counts(cost_model, s)
        m = sum(counts)
        mode = "single" if m == 1 else s.mode
        first, last = a == 0, b == n
        r_in = reach_at_node(points, fractions, a)
        r_out = reach_at_node(points, fractions, b) if not last else 0.0
        answered = r_in - r_out  # of all frames, answered inside this stage
        gated = any(node < a for node in exit_nodes)
        whole = cost_model.stage_cost(a, b, counts, mode)
        if whole is None:
            raise PisplitError(f"stage {s.index}: the cost model has no {mode} cost for nodes [{a}, {b}) on {m} device(s)")
        # per part (the rank's, the link's): what a rank sends per frame it takes, what the lead of a first
        # stage (rank 0) sends, what a rank receives, rank 0's result of a frame
        t = {}
        for part, ((x_in, x_out), skip) in parts.items():
            result = float(x_in[n])  # rank 0 receives it; a stage answering a frame sends one
            out_remote = float(x_out[n]) * r_in if last else x_out[b] * r_out + skip * (1.0 - r_out) + float(x_out[n]) * answered
            out_rank0 = 0.0 if last else x_out[b] * r_out + skip * (1.0 - r_out)
            into = x_in[a] * r_in + (skip * (1.0 - r_in) if gated else 0.0)
            t[part] = dict(out_remote=out_remote, out_rank0=out_rank0, into=into, result=result, source=float(x_out[0]),
                           sink=result * r_out if first and not last else 0.0)
        rk, wr = t["rank"], t["wire"]
        if mode == StageMode.SPLIT:
            inner = whole.latency_s - cost_model.link_terms(a, b).lead_out  # its segments' seconds (StageCost.latency_s)
            cost = inner * r_in + (gate * (m - 1) if gated else 0.0)
            if first:
                periods.append(max(cost + rk["out_rank0"] + rk["sink"], wr["sink"], wr["out_rank0"]))
            else:
                periods.append(max(cost + rk["into"] + rk["out_remote"], wr["into"], wr["out_remote"]))
            continue
        slots = cost_model.slots_of(counts)
        cuts = sorted({node + 1 for node in exit_nodes if a < node + 1 < b})
        bounds = [a, *cuts, b]
        computes = [sum(float(cost_model.prefix_seconds[k, hi] - cost_model.prefix_seconds[k, lo]) * reach_at_node(points, fractions, lo)
                        for lo, hi in zip(bounds[:-1], bounds[1:])) for k in slots]
        if mode == StageMode.SINGLE:
            if first:
                periods.append(max(computes[0] + rk["out_rank0"] + rk["sink"], wr["sink"], wr["out_rank0"]))
            else:
                periods.append(max(computes[0] + rk["into"] + rk["out_remote"], wr["into"], wr["out_remote"]))
            continue
        if first:
            # rank 0: its own frames, and per round of m frames the inputs of the other replicas and
            # the answers of every frame it does not answer itself
            back = (m - 1) * answered + (m * r_out if not last else 0.0)
            lead = max(computes[0] + rk["out_rank0"] + (m - 1) * rk["source"] + back * rk["result"],
                       wr["out_rank0"] + (m - 1) * wr["source"], back * wr["result"])
            replica_in = {"rank": rk["source"], "wire": wr["source"]}
        else:
            lead = max(computes[0] + rk["into"] + rk["out_remote"], wr["into"], wr["out_remote"])
            replica_in = {"rank": rk["into"], "wire": wr["into"]}
        cycle = [lead] + [max(c + replica_in["rank"] + rk["out_remote"], replica_in["wire"], wr["out_remote"]) for c in computes[1:]]
        periods.append(max(cycle) / m)
    return np.array(periods, dtype=float)


def latency_to_exits(cost_model, stages, points: list[ExitPoint]) -> tuple[np.ndarray, float]:
    """(seconds from a frame's input to its answer at each exit, the same at the model's end), as
    partitioners.cost prices a stage's latency: the stages before the exit's stage whole, then the
    exit's stage up to the exit node on its slowest replica and the answer's way to rank 0 (none when
    rank 0 answers the frame itself, in a first stage). A split stage runs whole before its exit answers."""
    x = cost_model.transfer
    n = cost_model.n
    costs = []
    for s in stages:
        counts = stage_counts(cost_model, s)
        mode = "single" if sum(counts) == 1 else s.mode
        cost = cost_model.stage_cost(s.node_start, s.node_stop, counts, mode)
        if cost is None:
            raise PisplitError(f"stage {s.index}: the cost model has no {mode} cost for nodes [{s.node_start}, {s.node_stop}) on {sum(counts)} device(s)")
        costs.append(cost)
    full = float(sum(c.latency_s for c in costs))
    out = []
    for p in points:
        j = stage_of_node(stages, p.node)
        s, cost = stages[j], costs[j]
        a, b, first = s.node_start, s.node_stop, s.node_start == 0
        answer = float(x[n])
        before = float(sum(c.latency_s for c in costs[:j]))
        if cost.mode == StageMode.SPLIT:
            link = cost_model.link_terms(a, b)
            here = cost.latency_s - link.lead_out + (0.0 if first else answer)
        else:
            link = cost_model.link_terms(a, b)
            pieces = [float(cost_model.prefix_seconds[k, p.node + 1] - cost_model.prefix_seconds[k, a]) for k in cost.slots]
            here = max(c + (0.0 if first and slot == 0 else answer + (link.replica_in_latency if first else 0.0))
                       for slot, c in enumerate(pieces))
        out.append(before + here)
    return np.array(out, dtype=float), full


def latency_with_exits(cost_model, plan, points: list[ExitPoint], fractions) -> float:
    """Predicted mean latency of `plan` when exits answer `fractions` of all frames: each exit's
    share at its latency (latency_to_exits), the rest at the plan's; the plan's own figure scaled by
    the cost model's mean over its latency without exits, so its calibration carries over."""
    to_exit, full = latency_to_exits(cost_model, plan.stages, points)
    rest = 1.0 - float(sum(fractions))
    mean = float(np.dot(np.asarray(fractions, dtype=float), to_exit)) + rest * full
    return plan.predicted_latency_s * mean / full if full > 0 else plan.predicted_latency_s
