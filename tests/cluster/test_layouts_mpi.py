"""Split stages whose segments keep their outputs on their parts (partitioners.layouts) under real
mpirun with 2, 3, 4 and 8 ranks: row strips that exchange halo rows peer to peer, uneven strips,
channel slices feeding conv-filter, strips feeding a channel split (an all-gather), fc-output
chained into fc-input; every frame equals the unsplit model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from layers import save_graph
from tests.cluster.pipeline_plans import hand_plan
from tests.cluster.test_runtime import mpirun, reference_outputs
from tests.conftest import varied
from tests.partitioners.test_layouts import conv_stack

pytestmark = pytest.mark.mpi

# conv_stack nodes: 0 conv1, 1 conv2, 2 pool2, 3 conv3, 4 flatten, 5 fc1, 6 fc2
CASES = [
    ("strips-2", [(0, 7, [0, 1], "split", [
        (0, 1, "conv-spatial", (8, 8), "parts"), (1, 3, "conv-spatial", (4, 4), "parts"), (3, 4, "conv-spatial", (4, 4)),
        (4, 5, "none", ()), (5, 6, "fc-output", (12, 8), "parts"), (6, 7, "fc-input", (12, 8))])]),
    ("uneven-3", [(0, 7, [0, 1, 2], "split", [
        (0, 1, "conv-spatial", (5, 6, 5), "parts"), (1, 3, "conv-spatial", (3, 2, 3), "parts"), (3, 4, "conv-spatial", (2, 3, 3)),
        (4, 5, "none", ()), (5, 6, "fc-output", (7, 7, 6), "parts"), (6, 7, "fc-input", (5, 8, 7))])]),
    ("channels-4", [(0, 7, [0, 1, 2, 3], "split", [
        (0, 1, "conv-channel", (2, 2, 2, 2), "parts"), (1, 2, "conv-filter", (1, 3, 2, 2)), (2, 3, "none", ()),
        (3, 4, "conv-spatial", (1, 2, 2, 3), "parts"), (4, 5, "none", ()), (5, 6, "fc-output", (5, 5, 5, 5)),
        (6, 7, "none", ())])]),
    ("allgather-4", [(0, 7, [0, 1, 2, 3], "split", [
        (0, 1, "conv-spatial", (4, 4, 4, 4), "parts"), (1, 3, "conv-channel", (2, 2, 2, 2), "parts"),
        (3, 4, "conv-spatial", (2, 2, 2, 2)), (4, 7, "none", ())])]),
    ("pipeline-8", [(0, 1, [0], "single"), (1, 7, [1, 2, 3, 4, 5, 6, 7], "split", [
        (1, 3, "conv-spatial", (2, 1, 1, 1, 1, 1, 1), "parts"), (3, 4, "conv-spatial", (1, 1, 1, 2, 1, 1, 1)),
        (4, 5, "none", ()), (5, 6, "fc-output", (3, 3, 3, 3, 3, 3, 2), "parts"), (6, 7, "fc-input", (3, 3, 3, 3, 3, 3, 2))])]),
]


def test_the_channels_case_is_rejected_where_a_kept_output_feeds_no_split(tmp_path):
    # (3, 4) keeps its strips but the flatten after it runs on the lead alone
    from layers.errors import PisplitError
    from cluster.runtime import _Step

    graph = conv_stack()
    plan = hand_plan(graph, CASES[2][1])
    with pytest.raises(PisplitError, match="tensor conv3: kept on the parts .* not split"):
        _Step(plan, graph, plan.stages[0], 0, "numpy", {0: None})


@pytest.mark.parametrize("name,stages", [c for c in CASES if c[0] != "channels-4"], ids=lambda v: v if isinstance(v, str) else "")
def test_kept_layouts_under_mpirun_equal_the_unsplit_model(tmp_path, name, stages):
    graph = conv_stack()
    path, _ = save_graph(graph, tmp_path / "conv_stack.json")
    plan = hand_plan(graph, stages, model=str(path))
    assert any(g.output_layout == "parts" for s in plan.stages for g in s.segments)
    frames = 3
    out = tmp_path / "y.npz"
    trace = tmp_path / "trace.json"
    proc = mpirun(plan.n_ranks, "run", plan.save(tmp_path / "plan.json"), "--frames", frames, "--output", out, "--json",
                  "--trace", trace)
    assert proc.returncode == 0, f"{name}: {proc.stderr}"
    assert json.loads(proc.stdout)["every_frame_once"]
    # every rank of the split stage traces each kept segment's compute and transfers, per frame
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    split = next(s for s in plan.stages if s.mode == "split")
    kept = next(g for g in split.segments if g.output_layout == "parts")
    for rank in split.ranks:
        names = {e["name"] for e in events if e["tid"] == rank}
        assert f"[{kept.node_start}:{kept.node_stop}) {kept.kind} kept compute" in names, (rank, names)
        assert f"[{kept.node_start}:{kept.node_stop}) {kept.kind} kept transfer" in names, (rank, names)
    with np.load(out, allow_pickle=False) as z:
        y = z["output_0"]
        assert sorted(z["frame_ids"].tolist()) == list(range(frames))
    ref = varied(reference_outputs(graph, frames))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5, err_msg=name)


def wide_stack():
    """Three 3x3 convs over a 768x768 map (9 MiB per activation), then a small head."""
    from layers.builder import GraphBuilder

    b = GraphBuilder("wide_stack", seed=7)
    x = b.input("image", (1, 768, 768, 4))
    y = b.conv(x, 4, 3, "conv1", padding="same", activation="relu")
    y = b.conv(y, 4, 3, "conv2", padding="same", activation="relu")
    y = b.conv(y, 4, 3, "conv3", padding="same", activation="relu")
    y = b.pool(y, "max", 8, "pool")
    y = b.act(y, "flatten", "flatten")
    y = b.dense(y, 10, "fc")
    return b.build(y)


def test_kept_strips_spare_the_lead_the_whole_activations(tmp_path):
    # the star gathers each conv's 9 MiB output to the lead and scatters it again; kept strips never
    # make it whole, so the lead's peak is lower by at least one activation
    graph = wide_stack()
    path, _ = save_graph(graph, tmp_path / "wide.json")
    peaks = {}
    for layout in ("parts", "lead"):
        segments = [(0, 1, "conv-spatial", (192,) * 4, layout), (1, 2, "conv-spatial", (192,) * 4, layout),
                    (2, 4, "conv-spatial", (24,) * 4), (4, 6, "none", ())]
        plan = hand_plan(graph, [(0, 6, [0, 1, 2, 3], "split", segments)], model=str(path))
        proc = mpirun(4, "run", plan.save(tmp_path / f"{layout}.json"), "--frames", 3, "--json")
        assert proc.returncode == 0, proc.stderr
        ranks = json.loads(proc.stdout)["ranks"]
        peaks[layout] = [r["memory_above_baseline_bytes"] for r in ranks]
    activation = 768 * 768 * 4 * 4
    assert peaks["parts"][0] < peaks["lead"][0] - activation, peaks
    # a worker holds its strips, their halos and its message buffers: no more than in the star
    assert all(p <= s + (1 << 20) for p, s in zip(peaks["parts"][1:], peaks["lead"][1:])), peaks


def runs_as_the_unsplit_model(tmp_path, graph, plan, ranks: int, frames: int = 3) -> None:
    """`pisplit run` of `plan` on `ranks` ranks under mpirun: every frame once, each equal to the
    unsplit model's (1e-5)."""
    out = tmp_path / "y.npz"
    proc = mpirun(ranks, "run", plan.save(tmp_path / "plan.json"), "--frames", frames, "--output", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["every_frame_once"]
    with np.load(out, allow_pickle=False) as z:
        y = z["output_0"]
    np.testing.assert_allclose(y, varied(reference_outputs(graph, frames)), rtol=1e-5, atol=1e-5)


def residual_net(rows=19, cols=14, width=12, projection=False):
    """A stem conv, two identity bottlenecks (1x1 -> 3x3 -> 1x1, + the block's input, relu) and a
    head: ResNet's shape, whose blocks the planner runs as fused spans that keep their row strips.
    With `projection` a first block as ResNet starts a stage: a strided 1x1 shortcut conv beside a
    strided main path, both reading the block's input (a fused region that is not a chain)."""
    from layers.builder import GraphBuilder

    b = GraphBuilder("residual_net", seed=11)
    x = b.input("image", (1, rows, cols, 6))
    x = b.conv(x, width, 3, "stem", padding="same", activation="relu")
    if projection:
        skip = b.conv(x, 2 * width, 1, "b0_shortcut", strides=2, padding="same")
        y = b.conv(x, width // 2, 1, "b0_reduce", strides=2, padding="same", activation="relu")
        y = b.conv(y, width // 2, 3, "b0_spatial", padding="same", activation="relu")
        y = b.conv(y, 2 * width, 1, "b0_expand", padding="same")
        y = b.add("add", [skip, y], "b0_add")
        x = b.act(y, "relu", "b0_out")
        width *= 2
    for k in (1, 2):
        y = b.conv(x, width // 2, 1, f"b{k}_reduce", padding="same", activation="relu")
        y = b.conv(y, width // 2, 3, f"b{k}_spatial", padding="same", activation="relu")
        y = b.conv(y, width, 1, f"b{k}_expand", padding="same")
        y = b.add("add", [y, x], f"b{k}_add")
        x = b.act(y, "relu", f"b{k}_out")
    y = b.pool(x, "max", 2, "pool", strides=2)
    y = b.act(y, "flatten", "flat")
    y = b.dense(y, 7, "fc")
    return b.build(y)


def share_calibration():
    """The shipped calibration with split parts priced at their share (no measured part overheads):
    these graphs are small enough to run in a test, and at their size the measured overheads make
    one rank cheapest (tests/partitioners/test_plan_chains.py plans bigger graphs with them)."""
    from partitioners.profiles import Calibration

    calibration = Calibration("numpy")
    calibration.base.split_overhead = {}
    return calibration


def fused_plan(graph, ranks: int, link_bps: float):
    """The dp latency plan of residual_net on `ranks` Pi 4s, with fused spans over its blocks."""
    from partitioners.cost import CostModel, make_cluster
    from partitioners.planners import make_plan

    model = CostModel(graph, make_cluster([("rpi4", ranks, None)], link_bps), share_calibration())
    return make_plan(graph, model, "dp", "latency")


@pytest.mark.parametrize("ranks,sizes", [(2, (9, 10)), (3, (5, 8, 6)), (4, (4, 5, 5, 5))])
def test_fused_spans_keep_residual_blocks_on_their_ranks(tmp_path, ranks, sizes):
    # each block is one fused-tiles span (halos recomputed, the add reads the block's own input from
    # the same strip); block 1's strips feed block 2 peer to peer, uneven strips included
    graph = residual_net()
    names = [n.name for n in graph.nodes]
    b1, b2, pool = names.index("b1_reduce"), names.index("b2_reduce"), names.index("pool")
    path, _ = save_graph(graph, tmp_path / "residual.json")
    segments = [(0, b1, "conv-spatial", sizes, "parts"), (b1, b2, "fused-tiles", sizes, "parts"),
                (b2, pool, "fused-tiles", sizes), (pool, len(names), "none", ())]
    plan = hand_plan(graph, [(0, len(names), list(range(ranks)), "split", segments)], model=str(path))
    runs_as_the_unsplit_model(tmp_path, graph, plan, ranks)


@pytest.mark.parametrize("projection", [False, True])
def test_the_planner_fuses_residual_blocks_and_its_plan_runs_exactly(tmp_path, projection):
    graph = residual_net(48, 40, 32, projection)
    path, _ = save_graph(graph, tmp_path / "residual.json")
    plan = fused_plan(graph, 3, 1e9)
    fused = [g for s in plan.stages for g in s.segments if g.kind == "fused-tiles"]
    assert fused, [(g.node_start, g.node_stop, g.kind) for s in plan.stages for g in s.segments]
    if projection:  # the projection block is one region: shortcut and main path read the same strips
        names = [n.name for n in graph.nodes]
        assert any(g.node_start == names.index("b0_shortcut") and g.node_stop == names.index("b0_out") + 1 for g in fused), \
            [(g.node_start, g.node_stop) for g in fused]
    plan = type(plan).from_dict({**plan.to_dict(), "model": str(path)})
    runs_as_the_unsplit_model(tmp_path, graph, plan, plan.n_ranks)


def test_segments_on_a_subset_of_the_stage_ranks_keep_and_equal_the_unsplit_model(tmp_path):
    # a split over the first 2 or 3 of a stage's 4 ranks (the others take no part in it), kept
    # between splits over different numbers of ranks: strips 4 -> 2 -> 4, fc-output on 3 -> fc-input on 2
    import dataclasses

    graph = conv_stack()
    path, _ = save_graph(graph, tmp_path / "conv_stack.json")
    ranks = [0, 1, 2, 3]
    segments = [(0, 1, "conv-spatial", (4, 4, 4, 4), "parts"), (1, 3, "conv-spatial", (3, 5), "parts"),
                (3, 4, "conv-spatial", (2, 2, 2, 2)), (4, 5, "none", ()), (5, 6, "fc-output", (7, 6, 7), "parts"),
                (6, 7, "fc-input", (10, 10))]
    # hand_plan puts every split on all the stage's ranks: build it so, then narrow each segment
    plan = hand_plan(graph, [(0, 7, ranks, "split", [(a, b, k, (1, 1, 1, 1) if k != "none" else (), *rest)
                                                     for a, b, k, _, *rest in segments])], model=str(path))
    stage = plan.stages[0]
    narrowed = tuple(dataclasses.replace(g, ranks=tuple(ranks[:len(s)]) if k != "none" else g.ranks, sizes=tuple(s))
                     for g, (_, _, k, s, *_) in zip(stage.segments, segments))
    plan = dataclasses.replace(plan, stages=(dataclasses.replace(stage, segments=narrowed),)).validate()
    assert [len(g.ranks) for g in plan.stages[0].segments if g.kind != "none"] == [4, 2, 4, 3, 2]
    runs_as_the_unsplit_model(tmp_path, graph, plan, 4)


@pytest.mark.parametrize("ranks", [2, 3])
def test_kept_strips_persist_until_a_later_segment_reads_them(tmp_path, ranks):
    # one conv per segment through residual blocks: a block's input stays on the parts while its
    # convs run and is read again by the block's add three segments later (no trip to the lead); the
    # projection block's input feeds its shortcut and its main path, its shortcut output waits for the add
    graph = residual_net(19, 14, 12, projection=True)
    names = [n.name for n in graph.nodes]
    path, _ = save_graph(graph, tmp_path / "residual.json")
    rows = {19: (6, 7, 6), 10: (3, 4, 3)}
    segments = []
    starts = [i for i, n in enumerate(graph.nodes) if n.op == "conv2d"] + [names.index("pool")]
    for a, b in zip(starts, starts[1:]):
        out_rows = graph.shapes[graph.nodes[b - 1].outputs[0]][1]
        segments.append((a, b, "conv-spatial", rows[out_rows][:ranks] if ranks == 3 else (out_rows // 2, out_rows - out_rows // 2),
                         "parts" if b < names.index("pool") else "lead"))
    segments.append((names.index("pool"), len(names), "none", ()))
    plan = hand_plan(graph, [(0, len(names), list(range(ranks)), "split", segments)], model=str(path))
    reread = [g for i, g in enumerate(plan.stages[0].segments) if g.output_layout == "parts"
              and graph.nodes[g.node_stop - 1].outputs[0] not in {t for n in graph.nodes[plan.stages[0].segments[i + 1].node_start:
                                                                                         plan.stages[0].segments[i + 1].node_stop] for t in n.inputs}]
    assert reread, "the shortcut's output is read two segments later, not by the next one"
    runs_as_the_unsplit_model(tmp_path, graph, plan, ranks)


def test_the_planners_exchange_span_plan_runs_exactly(tmp_path):
    # the dp's plan for a residual block on 3 Pi 3B+ at 94 Mbit/s: conv by conv on kept strips, the
    # block's input waiting on the parts for the add (tests/partitioners/test_plan_chains.py)
    from partitioners.cost import CostModel, make_cluster
    from partitioners.planners import make_plan
    from tests.partitioners.test_plan_chains import residual_block

    graph = residual_block()
    path, _ = save_graph(graph, tmp_path / "block.json")
    plan = make_plan(graph, CostModel(graph, make_cluster([("rpi3", 3, None)], 94e6), share_calibration()), "dp", "latency")
    kept = {graph.nodes[g.node_stop - 1].outputs[0] for s in plan.stages for g in s.segments if g.output_layout == "parts"}
    assert "stem" in kept, [(g.node_start, g.node_stop, g.kind) for s in plan.stages for g in s.segments]
    plan = type(plan).from_dict({**plan.to_dict(), "model": str(path)})
    runs_as_the_unsplit_model(tmp_path, graph, plan, plan.n_ranks)
