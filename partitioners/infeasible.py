"""Why no plan fits: the InfeasiblePlan error and the one-line message for a stage that runs out of
memory. Shared by the dp planner (partitioners.planners) and the baselines
(partitioners.planner_baselines), which then need not import each other."""
from __future__ import annotations

from typing import TYPE_CHECKING

from layers.errors import PisplitError

from .vocabulary import StageMode

if TYPE_CHECKING:
    from .cost import CostModel, StageCost

MIB = float(1 << 20)


class InfeasiblePlan(PisplitError):
    """No plan fits: names the node that cannot be placed, where, and by how many bytes it is short."""

    def __init__(self, message: str, node: str | None = None, short_bytes: float = 0.0):
        super().__init__(message)
        self.node = node
        self.short_bytes = short_bytes


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f} MiB"


def memory_error(model: CostModel, cost: StageCost) -> InfeasiblePlan:
    """The message for a stage that does not fit: which node, on which device, how much short."""
    slot, node_index, short = cost.short
    cls = model.classes[cost.slots[slot]]
    node = model.graph.nodes[node_index]
    names = model.graph.nodes
    span = "" if cost.stop - cost.start == 1 else f" together with nodes {names[cost.start].name}..{names[cost.stop - 1].name}"
    kinds = "+".join(sorted({model.classes[k].kind for k in cost.slots}))
    where = {"single": f"on one {cls.kind}", "data-parallel": f"on each of {len(cost.slots)} {kinds} replicas",
             "split": f"split over {len(cost.slots)} {kinds}"}[cost.mode]
    who = ("the lead" if slot == 0 else f"part {slot} (a {cls.kind})") if cost.mode == StageMode.SPLIT else "it"
    return InfeasiblePlan(
        f"node {node.name} ({node.op}, {fmt_mib(model.weight_bytes[node_index])} of weights) cannot be placed: {where}{span}, "
        f"{who} needs {fmt_mib(cost.memory_bytes[slot])} of the {fmt_mib(cls.usable_bytes)} usable: short by {fmt_mib(short)}",
        node.name, short)
