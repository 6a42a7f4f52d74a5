"""The cost model: stage times per mode, link transfers, memory of split parts, split costs from partitioners.splits."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from layers import zoo_model
from layers.errors import PisplitError
from partitioners.cost import FRAME_BUFFERS, RUNTIME_WINDOW, SEND_OVERLAP_BYTES, CostModel, make_cluster, shard_memory_bytes
from partitioners.devices import device_profile
from partitioners.split_costs import PLANNER_KINDS, SplitCatalogue
from partitioners.splits import legal_kinds, split_cost

from .planner_cases import CALIBRATION


@pytest.fixture(scope="module")
def alexnet_model():
    graph = zoo_model("alexnet")
    return CostModel(graph, make_cluster([("rpi3", 4, None)], 94e6, 3e-4), CALIBRATION)


def test_single_and_data_parallel_stages(alexnet_model):
    m = alexnet_model
    n = m.n
    whole = m.stage_cost(0, n, (1,), "single")
    assert whole.compute_s == pytest.approx(0.220)  # the calibration figure, whole model on one Pi 3B+
    assert whole.comm_s == 0 and whole.period_s == whole.latency_s == pytest.approx(0.220)
    replicas = m.stage_cost(0, n, (4,), "data-parallel")
    source, result = m.transfer[0], m.transfer[n]  # rank 0 hands out inputs and takes results back
    assert source == pytest.approx(3e-4 + 227 * 227 * 3 * 4 * 8 / 94e6) and result == pytest.approx(3e-4 + 1000 * 4 * 8 / 94e6)
    # round-robin: per round of 4 frames rank 0 computes one while its interface sends 3 inputs and takes
    # 3 results (a transfer occupies the link): rank 0 stays in MPI calls (it cannot compute) while each
    # input's bytes beyond SEND_OVERLAP_BYTES leave, the rest leaves while it computes
    assert m.wire[0] == source and m.wire[n] == result  # raw links: the whole transfer is the link's
    hold = source - 3e-4 - SEND_OVERLAP_BYTES * 8 / 94e6
    assert hold > 0 and m.send_hold()[0] == pytest.approx(hold) and m.send_hold()[n] == 0  # a result is small
    assert 3 * source < 0.220 + 3 * hold
    assert replicas.period_s == pytest.approx((0.220 + 3 * hold) / 4)
    slow = CostModel(m.graph, make_cluster([("rpi3", 4, None)], 10e6, 3e-4), CALIBRATION)
    s_src = slow.transfer[0]
    s_hold = slow.send_hold()[0]
    assert 3 * s_src > 0.220 + 3 * s_hold  # on a slow link rank 0's interface is the bottleneck: 3 inputs a round
    assert slow.stage_cost(0, n, (4,), "data-parallel").period_s == pytest.approx(3 * s_src / 4)
    assert replicas.latency_s == pytest.approx(0.220 + source + result)
    # every replica holds everything; their frame buffers differ: rank 0 makes the inputs and keeps
    # FRAME_BUFFERS of them leaving for each other replica, a replica receives FRAME_BUFFERS
    inp, out = m.cut_bytes[0], m.cut_bytes[n]
    held = m.prefix_weights[n] + m.held_work_bytes(0, n)
    assert whole.memory_bytes[0] == pytest.approx(held + inp + FRAME_BUFFERS * out + RUNTIME_WINDOW * out)
    assert replicas.memory_bytes[0] == pytest.approx(held + (1 + 3 * FRAME_BUFFERS) * inp + FRAME_BUFFERS * out + RUNTIME_WINDOW * out)
    assert replicas.memory_bytes[1:] == (pytest.approx(held + FRAME_BUFFERS * (inp + out)),) * 3
    assert m.stage_cost(0, n, (2,), "single") is None and m.stage_cost(0, n, (1,), "data-parallel") is None


def test_the_kept_im2col_buffer_is_counted_once_beside_every_node(alexnet_model):
    m, g = alexnet_model, alexnet_model.graph
    conv1, norm1 = g.node_index("conv1"), g.node_index("norm1")
    band = g.cost(conv1).scratch_bytes
    assert 0 < band <= g.cost(conv1).work_bytes and g.cost(norm1).scratch_bytes == 0
    # norm1 runs while conv1's band is still held: its working set plus the band, not the larger one
    norm_set = m.cut_bytes[norm1] + g.cost(norm1).output_bytes + g.cost(norm1).work_bytes
    assert m.held_work_bytes(conv1, norm1 + 1) == pytest.approx(max(norm_set, m.work_bytes[conv1] - band) + band)
    assert m.held_work_bytes(conv1, norm1 + 1) > m.work_bytes[conv1:norm1 + 1].max()


def test_shard_memory_without_a_cluster_is_the_cost_models(alexnet_model):
    m = alexnet_model
    for start, stop in [(0, m.n), (0, 3), (3, 7), (7, m.n), (11, m.n)]:
        assert shard_memory_bytes(m.graph, start, stop) == pytest.approx(m.stage_cost(start, stop, (1,), "single").memory_bytes[0])


def test_stage_boundaries_pay_for_the_tensors_live_across_the_cut(alexnet_model):
    m = alexnet_model
    cut = m.graph.node_index("pool5") + 1
    nbytes = m.graph.cut_bytes(cut)
    expected = 3e-4 + nbytes * 8 / 94e6
    assert m.transfer[cut] == pytest.approx(expected)
    first, second = m.stage_cost(0, cut, (1,), "single"), m.stage_cost(cut, m.n, (1,), "single")
    result = m.transfer[m.n]
    # a transfer occupies the link, not the ranks: each stage's period is its compute unless its
    # interface's time in one direction is longer (rank 0 also takes every result back)
    assert first.period_s == pytest.approx(max(first.compute_s, expected, result))
    assert second.period_s == pytest.approx(max(second.compute_s, expected, result))
    assert first.comm_s == pytest.approx(first.period_s - first.compute_s)
    assert first.latency_s + second.latency_s == pytest.approx(m.stage_cost(0, m.n, (1,), "single").latency_s + expected + result)


def test_split_stage_holds_only_parts_of_the_weights(alexnet_model):
    m = alexnet_model
    fc6 = m.graph.node_index("fc6")
    seg = m.segment_at[fc6]
    start, stop = m.splits.segments[seg]
    options = {o.kind: o for o in m.segment_options(seg, (0, 0))}
    assert set(options) == {"none", "fc-output", "fc-input"}
    whole = m.graph.cost(fc6).weight_bytes
    x = 4 * int(np.prod(m.graph.shapes[m.graph.nodes[fc6].inputs[0]][1:]))  # fc6's input vector
    for kind, held_inputs in (("fc-output", 2 * x), ("fc-input", x)):  # each part keeps its input box (all of it, or half)
        o = options[kind]
        assert sum(o.weight_bytes) == pytest.approx(whole + (m.prefix_weights[stop] - m.prefix_weights[o.split_stop]) + held_inputs, rel=1e-6)
        assert max(o.weight_bytes) < 0.6 * whole
        assert o.comm_s > 0 and o.compute_s < options["none"].compute_s
    assert options["none"].weight_bytes == (m.prefix_weights[stop] - m.prefix_weights[start], 0.0)
    stage = m.stage_cost(start, stop, (2,), "split")
    assert stage.mode == "split" and max(stage.memory_bytes) < whole


def test_split_costs_match_partitioners_splits():
    graph = zoo_model("vgg16")
    catalogue = SplitCatalogue(graph)
    covered = [i for a, b in catalogue.segments for i in range(a, b)]
    assert covered == list(range(len(graph)))
    for s, (start, _) in enumerate(catalogue.segments):
        layer = graph.nodes[start].name
        if not catalogue.kinds(s):
            continue
        assert set(catalogue.kinds(s)) == set(legal_kinds(graph, layer)) & set(PLANNER_KINDS)
        for kind in catalogue.kinds(s):
            sizes = catalogue.part_sizes(s, kind, [3.0, 1.0, 2.0, 1.5, 1.0])
            if sizes is None:  # block1_conv1 has 3 input channels: no 5-way filter split
                assert kind == "conv-filter"
                continue
            exact = split_cost(graph, layer, kind, sizes)
            assert exact.sizes == sizes  # the plan's sizes are the ones split_layer builds
            for mine, theirs in zip(catalogue.part_costs(s, kind, sizes), exact.parts):
                for field in ("flops", "weight_bytes", "recv_bytes", "send_bytes"):
                    value, truth = getattr(mine, field), getattr(theirs, field)
                    assert value == pytest.approx(truth, rel=1e-9, abs=1e-6), (layer, kind, field)


def test_mixed_stage_puts_the_fastest_device_first():
    graph = zoo_model("lenet5")
    model = CostModel(graph, make_cluster([("rpi3", 1, None), ("rpi5", 1, None)], 1e9), CALIBRATION)
    assert [c.kind for c in model.classes] == ["rpi5", "rpi3"]
    assert model.slots_of((1, 1)) == (0, 1)


def test_memory_below_what_the_os_takes_is_rejected():
    reserved = device_profile("rpi3").reserved_bytes
    with pytest.raises(PisplitError, match="OS and rank process"):
        make_cluster([("rpi3", 1, reserved)])


def test_partitioners_import_no_mpi_ssh_or_rich():
    code = ("import sys, partitioners.planners, partitioners.profiles, partitioners.cost, partitioners.planner_baselines, "
            "partitioners.planner_exhaustive, partitioners.segment_table, partitioners.split_costs\n"
            "bad = [m for m in ('mpi4py', 'paramiko', 'rich') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
