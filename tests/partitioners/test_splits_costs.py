"""Split costs: computed from shapes alone (no weight read), equal to what the part graphs really
hold and move, for the small test graphs and every conv and dense layer of the zoo."""
from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pytest

from layers import zoo_model
from layers.graph import Graph
from layers.ops import numel
from layers.errors import PisplitError
from partitioners.splits import legal_kinds, split_cost, split_layer, split_segment
from tests.partitioners.split_graphs import CASES, GRAPHS, case_id
from tests.partitioners.test_splits import graph


class NoWeights(Mapping):
    """A weight mapping that fails loudly when anything reads it."""

    def __init__(self, keys):
        self.keys_ = list(keys)

    def __getitem__(self, key):
        raise AssertionError(f"weight {key} was read")

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self):
        return len(self.keys_)


class RecordingWeights(Mapping):
    """Wraps a weight mapping and records which keys were read."""

    def __init__(self, base):
        self.base = base
        self.read: list[str] = []

    def __getitem__(self, key):
        self.read.append(key)
        return self.base[key]

    def __iter__(self):
        return iter(self.base)

    def __len__(self):
        return len(self.base)


def n_parts_for(split_one) -> int:
    return 3 if split_one.kind == "data-parallel" else min(3, sum(split_one.sizes))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_costs_match_the_part_graphs(case):
    name, layer, kind, options = case
    g = graph(name)
    n = n_parts_for(split_layer(g, layer, kind, 1, **options))
    split = split_layer(g, layer, kind, n, **options)
    cost = split.cost()
    assert cost.n_parts == n and cost.kind == kind and cost.layer == layer
    for p, pc in enumerate(cost.parts):
        part = split.part_graph(p)
        totals = part.totals()
        assert pc.flops == totals["flops"]
        assert pc.weight_bytes == totals["weight_bytes"]
        fed = split.slice_input({t: np.zeros(g.shapes[t], np.float32) for t in split.inputs}, p)
        if kind != "data-parallel":  # data-parallel bytes are per frame the part gets
            assert pc.recv_bytes == sum(a.nbytes for a in fed.values())
        assert pc.recv_bytes == sum(numel(s) * 4 for s in part.inputs.values())
        assert pc.send_bytes == numel(part.shapes[part.outputs[0]]) * 4
    seg = range(split.node_start, split.node_stop)
    assert cost.unsplit_flops == sum(g.cost(j).flops for j in seg)
    assert json.loads(json.dumps(cost.to_dict()))["parts"][0]["flops"] == cost.parts[0].flops


@pytest.mark.parametrize("case", [c for c in CASES if c[2] in ("fc-output", "conv-channel", "fc-input", "conv-filter")], ids=case_id)
def test_channel_kinds_do_not_duplicate_work_or_weights(case):
    name, layer, kind, options = case
    g = graph(name)
    n = min(3, sum(split_layer(g, layer, kind, 1, **options).sizes))
    split = split_layer(g, layer, kind, n, **options)
    cost = split.cost()
    if kind in ("fc-output", "conv-channel"):
        assert sum(p.flops for p in cost.parts) == cost.unsplit_flops
        assert sum(p.weight_bytes for p in cost.parts) == cost.unsplit_weight_bytes
    else:
        # the partial sums carry the multiply-adds; the root adds them up, then activation and followers
        adds = (n - 1) * numel(split.partial_shape) if cost.parts[0].send_bytes == numel(split.partial_shape) * 4 else None
        post = split.post_graph()
        post_flops = post.totals()["flops"] if post is not None else 0
        if adds is not None:
            assert cost.merge_flops == adds + post_flops
        primary = g.nodes[split.node_start]
        act = numel(split.partial_shape) if primary.attrs.get("activation") not in (None, "linear") else 0
        assert sum(p.flops for p in cost.parts) == g.cost(split.node_start).flops - act


def test_patterns():
    g = graph("conv_chain")
    assert (split_cost(g, "conv", "conv-channel", 2).input_pattern, split_cost(g, "conv", "conv-channel", 2).output_pattern) == ("broadcast", "gather")
    assert (split_cost(g, "conv", "conv-filter", 2).input_pattern, split_cost(g, "conv", "conv-filter", 2).output_pattern) == ("scatter", "reduce")
    assert (split_cost(g, "conv", "conv-spatial", 2).input_pattern, split_cost(g, "conv", "conv-spatial", 2).output_pattern) == ("scatter", "gather")
    d = graph("dense_chain")
    assert split_cost(d, "fc1", "fc-output", 2).input_pattern == "broadcast"
    assert split_cost(d, "fc1", "fc-input", 2).output_pattern == "reduce"
    assert split_cost(d, "fc1", "fc-output", 2, output_to="all").output_pattern == "allgather"
    assert split_cost(d, "fc1", "fc-input", 2, output_to="all").output_pattern == "allreduce"
    dp = split_cost(g, "conv", "data-parallel", [3.0, 1.0])
    assert [p.frame_share for p in dp.parts] == [0.75, 0.25]
    assert all(p.weight_bytes == dp.unsplit_weight_bytes for p in dp.parts)


def test_spatial_halo_costs_bytes_and_recomputation():
    g = graph("conv_chain")
    cost = split_cost(g, "conv", "conv-spatial", 3)
    assert sum(p.recv_bytes for p in cost.parts) > cost.input_bytes  # overlapping halos
    assert sum(p.flops for p in cost.parts) > cost.unsplit_flops  # halo rows recomputed by neighbours
    assert sum(p.send_bytes for p in cost.parts) == cost.output_bytes
    assert all(p.weight_bytes == cost.unsplit_weight_bytes for p in cost.parts)


def test_costs_read_no_weights():
    base = graph("grouped")
    g = Graph(base.name, base.inputs, base.nodes, base.outputs, NoWeights(base.weights))
    for kind in ("conv-channel", "conv-spatial", "conv-filter", "fused-tiles", "data-parallel"):
        assert split_cost(g, "conv", kind, 3).n_parts == 3


def test_a_part_reads_only_its_own_nodes_weights_and_keeps_only_slices():
    base = zoo_model("alexnet")
    recorder = RecordingWeights(base.weights)
    g = Graph(base.name, base.inputs, base.nodes, base.outputs, recorder)
    split = split_layer(g, "fc6", "fc-output", [1000, 3096])
    part = split.part_graph(0)
    assert sorted(set(recorder.read)) == ["fc6/bias", "fc6/kernel"]
    assert part.weights["fc6/kernel"].shape == (9216, 1000) and part.weights["fc6/bias"].shape == (1000,)
    assert sum(a.nbytes for a in part.weights.values()) == split.cost().parts[0].weight_bytes
    # a seeded mapping is read through an uncached copy: the model keeps no full fc6 kernel
    zoo = zoo_model("alexnet")
    split_layer(zoo, "fc6", "fc-input", 2).part_graph(1)
    assert "fc6/kernel" not in zoo.weights._cache


@pytest.mark.parametrize("model", ["vgg16", "resnet50", "mobilenet_v1", "alexnet", "c3d", "lenet5"])
def test_every_zoo_layer_splits_by_shapes(model):
    """Each conv and dense node of the zoo, each legal kind, two parts: costs from shapes alone, and
    split_segment (what a plan segment rebuilds) gives back the same segment."""
    g = zoo_model(model)
    checked = 0
    for node in g.nodes:
        if node.op not in ("conv2d", "conv3d", "dense"):
            continue
        for kind in legal_kinds(g, node.name):
            try:
                cost = split_cost(g, node.name, kind, 2)
            except PisplitError as exc:
                assert "cannot split" in str(exc)
                continue
            assert all(p.flops > 0 and p.send_bytes > 0 for p in cost.parts)
            split = split_segment(g, cost.node_start, cost.node_stop, kind, cost.sizes,
                                  split_layer(g, node.name, kind, 2).options)
            assert split.node_names == cost.nodes
            checked += 1
    assert checked >= 10


def test_split_cost_reuses_the_same_answer():
    g = GRAPHS["conv_chain"]()
    assert split_cost(g, "conv", "conv-channel", (4, 6)) is split_cost(g, "conv", "conv-channel", [4, 6])
