"""All on the host as a runnable plan (issue 15): the model behind an input-passing node on the edge."""
from __future__ import annotations

import numpy as np
import pytest

from layers import zoo_model
from layers.builder import GraphBuilder
from layers.errors import PisplitError
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import parse_devices
from partitioners.edge_host import EDGE_INPUT_NODE, edge_host_candidates, edge_host_plan, edge_input_graph


def test_the_edge_input_graph_computes_the_model(rng):
    g = zoo_model("lenet5")
    w = edge_input_graph(g)
    assert len(w) == len(g) + 1 and w.nodes[0].name == EDGE_INPUT_NODE and list(w.inputs) == ["input_at_edge"]
    assert w.cut_tensors(1) == ["input"] and w.cut_bytes(1) == g.cut_bytes(0) and w.outputs == g.outputs
    x = rng.standard_normal(g.inputs["input"]).astype(np.float32)
    assert np.array_equal(w.forward(input_at_edge=x), g.forward(input=x))
    b = GraphBuilder("two", 0)
    y = b.add("add", [b.input("a", (1, 4)), b.input("b", (1, 4))], "sum")
    with pytest.raises(PisplitError, match="needs a model of one input, two has 2"):
        edge_input_graph(b.build(y))


def test_an_all_on_host_plan_is_two_stages_priced_as_its_candidate():
    g = zoo_model("lenet5")
    model = CostModel(g, make_cluster(parse_devices("rpi3:1,host:1"), 2e6))
    raw = next(c for c in edge_host_candidates(model, None) if c.cut == 0)
    plan = edge_host_plan(model, raw, "lenet5", "numpy", "/somewhere/lenet5-edge.json")
    assert plan.model == "/somewhere/lenet5-edge.json" and plan.n_nodes == len(g) + 1
    edge, host = plan.stages
    assert (edge.node_start, edge.node_stop, edge.ranks, edge.send_codec) == (0, 1, (0,), "raw")
    assert (host.node_start, host.node_stop, host.ranks) == (1, len(g) + 1, (1,))
    assert plan.devices[1].kind == "host" and edge.send_bytes == g.cut_bytes(0)
    assert plan.predicted_throughput_fps == pytest.approx(raw.throughput_fps)
    assert host.predicted.compute_s == pytest.approx(raw.host_s)
