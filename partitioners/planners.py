"""Planning entry point: a model and a cluster in, a Plan out, by one of the planners.

- dp (default): optimal stages, devices and split kinds (partitioners.planner_dp).
- paper: the collaborative-execution procedure of Hadidi et al. (partitioners.planner_baselines).
- memory: exo-style, layers in proportion to device memory.
- single: the whole model on the one fastest device that holds it.

Every planner's stages are costed by the same CostModel, so their predictions compare.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from layers.errors import PisplitError
from layers.graph import Graph

from . import planner_baselines
from .cost import INF, CostModel, StageCost
from .infeasible import InfeasiblePlan, fmt_mib, memory_error
from .plan import Device, Plan, Segment, Stage, StagePrediction
from .planner_dp import OBJECTIVES, StageTables, placeable_prefix, solve
from .segment_chains import keep_counts, keep_pairs
from .vocabulary import NO_SPLIT, StageMode

log = logging.getLogger(__name__)

PLANNERS = ("dp", "paper", "memory", "single")


@dataclass(frozen=True)
class PlanResult:
    """A plan with the figures --compare prints (throughput in frames/s, latency in seconds)."""

    planner: str
    plan: Plan
    throughput_fps: float
    latency_s: float


def make_plan(graph: Graph, model: CostModel, planner: str = "dp", objective: str = "throughput",
              model_spec: str | None = None, engine: str = "numpy") -> Plan:
    """Plan `graph` on the cost model's cluster; raises InfeasiblePlan or PisplitError for bad input."""
    if planner not in PLANNERS:
        raise PisplitError(f"planner {planner!r}: expected one of {', '.join(PLANNERS)}")
    if objective not in OBJECTIVES:
        raise PisplitError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    notes = list(model.calibration.notes)
    if planner == "dp":
        tables = StageTables(model)
        if len(tables.candidates) < math.prod(c + 1 for c in model.capacity) - 1:
            notes.append(f"large cluster: mixed-kind stages limited to {len(tables.candidates)} device sets")
        multi = [a for a in tables.candidates if sum(a) > 1]
        if keep_pairs(model) and len(keep_counts(model)) < len(multi):
            notes.append(f"large cluster: split stages keep activations on their parts on {len(keep_counts(model))} of "
                         f"{len(multi)} device sets (the others gather to the lead between split segments)")
        try:
            stages, _, _ = solve(tables, objective)
        except PisplitError:
            raise diagnose(model, tables) from None
    else:
        stages = getattr(planner_baselines, f"plan_{planner}")(model, objective)
    return build_plan(model, stages, planner, objective, model_spec or graph.name, engine, notes)


def compare_plans(graph: Graph, model: CostModel, objective: str = "throughput", model_spec: str | None = None,
                  engine: str = "numpy") -> list:
    """Every planner's plan, or the InfeasiblePlan it ran into, in PLANNERS order."""
    out = []
    for name in PLANNERS:
        try:
            plan = make_plan(graph, model, name, objective, model_spec, engine)
            out.append(PlanResult(name, plan, plan.predicted_throughput_fps, plan.predicted_latency_s))
        except InfeasiblePlan as exc:
            out.append(exc)
    return out


# --- Plan building ---------------------------------------------------------------------------------

def stage_costs(model: CostModel, stages: list) -> list[StageCost]:
    """The cost model's StageCost of every chosen stage (raises InfeasiblePlan for a stage that does not fit)."""
    out = []
    for s in stages:
        cost = model.stage_cost(s.start, s.stop, s.counts, s.mode, dict(getattr(s, "forced", ()) or ()))
        if cost is None:
            raise PisplitError(f"planner: stage [{s.start}, {s.stop}) cannot run in mode '{s.mode}' on {s.counts}")
        if not cost.feasible:
            raise memory_error(model, cost)
        out.append(cost)
    return out


def build_plan(model: CostModel, stages: list, planner: str, objective: str, model_spec: str, engine: str,
               notes: list | None = None) -> Plan:
    """Turn chosen stages into a Plan: concrete ranks (renumbered in stage order), segments, predictions."""
    costs = stage_costs(model, stages)
    free = {c.index: list(c.ranks) for c in model.classes}
    devices: list[Device] = []
    plan_stages = []
    for index, cost in enumerate(costs):
        ranks = []
        for k in cost.slots:
            original = model.cluster.devices[free[k].pop(0)]
            rank = len(devices)
            devices.append(Device(rank, original.kind, original.memory_bytes, original.host, original.speed))
            ranks.append(rank)
        segments = _segments(model, cost, ranks) if cost.mode == StageMode.SPLIT else ()
        mode = "single" if len(ranks) == 1 else cost.mode
        prediction = StagePrediction(cost.compute_s, cost.comm_s, {r: int(b) for r, b in zip(ranks, cost.memory_bytes)})
        plan_stages.append(Stage(index, cost.start, cost.stop, tuple(ranks), mode, segments,
                                 int(model.cut_bytes[cost.stop]) if cost.stop < model.n else 0, prediction))
    unused = sum(len(v) for v in free.values())
    notes = list(notes or [])
    if unused:
        notes.append(f"{unused} of {len(model.cluster.devices)} devices unused: more would not improve the {objective}")
    period = max(c.period_s for c in costs)
    plan = Plan(model=model_spec, n_nodes=model.n, devices=tuple(devices), stages=tuple(plan_stages), planner=planner,
                objective=objective, engine=engine, link_bandwidth_bps=model.cluster.link_bandwidth_bps,
                link_latency_s=model.cluster.link_latency_s, predicted_throughput_fps=1.0 / period if period > 0 else INF,
                predicted_latency_s=sum(c.latency_s for c in costs), notes=tuple(notes))
    if getattr(model, "codecs", None) is not None:  # a codec table priced the links: each stage sends with its cut's codec
        from .link_pricing import with_link_codecs

        return with_link_codecs(plan, model, model.codecs)
    return plan.validate()


def _segments(model: CostModel, cost: StageCost, ranks: list) -> tuple:
    """Plan segments of a split stage: unsplit runs merged on the lead, split ones with ranks, sizes
    and output layout ('parts' where the chain keeps the output on the parts for the next segment)."""
    out: list[Segment] = []

    def on_lead(start: int, stop: int, predicted: tuple) -> None:
        if out and out[-1].kind == NO_SPLIT:
            before = out[-1].predicted or (0.0, 0.0)
            out[-1] = Segment(out[-1].node_start, stop, "none", (ranks[0],), predicted=(before[0] + predicted[0], before[1] + predicted[1]))
        else:
            out.append(Segment(start, stop, "none", (ranks[0],), predicted=predicted))

    for option in cost.segments:
        start, stop = model.splits.segments[option.segment]
        if option.kind == NO_SPLIT:
            on_lead(start, stop, (option.compute_s, option.comm_s))
            continue
        # the lead's rest of the segment after the split is inside the option's compute: the split's
        # segment carries it (one prediction per option)
        out.append(Segment(start, option.split_stop, option.kind, tuple(ranks[:len(option.sizes)]), tuple(option.sizes),
                           model.splits.options(option.segment, option.kind, option.sizes), option.output_layout,
                           (option.compute_s, option.comm_s)))
        if option.split_stop < stop:
            on_lead(option.split_stop, stop, (0.0, 0.0))
    return tuple(out)


# --- infeasibility ---------------------------------------------------------------------------------

def diagnose(model: CostModel, tables: StageTables) -> InfeasiblePlan:
    """Why the dp planner found nothing: the first segment no device set can hold, else where memory runs out."""
    everything = model.capacity
    for s, (start, stop) in enumerate(model.splits.segments):
        if any(math.isfinite(per[start, stop]) for modes in tables.tables for per, _ in modes.values()):
            continue
        attempts = [c for c in (model.stage_cost(start, stop, everything, "split"),
                                *(model.stage_cost(start, stop, tuple(int(q == k) for q in range(len(everything))), "single")
                                  for k in range(len(everything)))) if c is not None]
        best = min(attempts, key=lambda c: c.short[2] if c.short else 0.0)
        if best.short:
            return memory_error(model, best)
    placed, left = placeable_prefix(tables)
    node = model.graph.nodes[placed]
    free = sum(n * c.usable_bytes for n, c in zip(left, model.classes))
    need = float(model.prefix_weights[-1] - model.prefix_weights[placed] + model.work_bytes[placed:].max())
    short = max(need - free, 0.0)
    used = len(model.cluster.devices) - sum(left)
    where = (f"after nodes {model.graph.nodes[0].name}..{model.graph.nodes[placed - 1].name} take {used} of the "
             f"{len(model.cluster.devices)} devices" if placed else "on any set of the devices")
    return InfeasiblePlan(f"node {node.name} ({node.op}) cannot be placed {where}: it and the nodes after it need at least "
                          f"{fmt_mib(need)}, the devices left have {fmt_mib(free)} usable: short by {fmt_mib(short)}"
                          + ("" if short else " (no device set holds a stage with them)"), node.name, short)
