"""Hand-made plans for the pipeline tests (the planner is not needed to exercise the runtime)."""
from __future__ import annotations

from partitioners.plan import Device, Plan, Segment, Stage, StagePrediction


def hand_plan(graph, stages, kind: str = "rpi4", model: str | None = None, link_bps: float = 940e6, seed: int = 0) -> Plan:
    """A plan from [(node_start, node_stop, ranks, mode[, segments]), ...]. A 'split' stage's segments are
    [(node_start, node_stop, kind, sizes[, output_layout])], split ones across all the stage's ranks
    (default: one unsplit segment; output_layout 'lead' unless given)."""
    built = []
    for i, (start, stop, ranks, mode, *rest) in enumerate(stages):
        segments = ()
        if mode == "split":
            given = rest[0] if rest else [(start, stop, "none", ())]
            segments = tuple(Segment(a, b, kind, tuple(ranks) if kind != "none" else (), tuple(sizes), {}, *layout)
                             for a, b, kind, sizes, *layout in given)
        send = graph.cut_bytes(stop) if i < len(stages) - 1 else 0
        built.append(Stage(i, start, stop, tuple(ranks), mode, segments, send, StagePrediction(0.01, 0.0, {})))
    n_ranks = sum(len(s[2]) for s in stages)
    devices = tuple(Device(r, kind, 4 << 30) for r in range(n_ranks))
    return Plan(model or graph.name, len(graph), devices, tuple(built), planner="hand", link_bandwidth_bps=link_bps,
                model_seed=seed).validate()
