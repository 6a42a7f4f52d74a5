"""Random small graphs and clusters for the planner's property tests (hypothesis strategies)."""
from __future__ import annotations

from hypothesis import strategies as st

from layers.builder import GraphBuilder
from partitioners.cost import CostModel, make_cluster
from partitioners.devices import device_profile
from partitioners.profiles import Calibration

CALIBRATION = Calibration("numpy")  # shared: reading the reference profile once keeps examples fast


@st.composite
def small_graphs(draw, max_layers: int = 4):
    """A chain of conv / pool / relu layers with an optional residual add and an optional dense head."""
    b = GraphBuilder("random", draw(st.integers(0, 10_000)))
    side = draw(st.integers(4, 9))
    x = b.input("input", (1, side, side, draw(st.integers(1, 3))))
    skip = None
    for i in range(draw(st.integers(1, max_layers))):
        choice = draw(st.sampled_from(["conv", "conv", "pool", "relu", "add"]))
        if choice == "conv":
            x = b.conv(x, draw(st.integers(2, 6)), draw(st.sampled_from([1, 3])), f"conv{i}", padding="same",
                       activation=draw(st.sampled_from([None, "relu"])))
        elif choice == "pool" and b.shape(x)[1] >= 2:
            x = b.pool(x, "max", 2, f"pool{i}")
        elif choice == "add" and skip is not None and b.shape(skip) == b.shape(x) and skip != x:
            x = b.add("add", [x, skip], f"add{i}")
        else:
            x = b.act(x, "relu", f"relu{i}")
        if draw(st.booleans()):
            skip = x
    if draw(st.booleans()):
        x = b.act(x, "flatten", "flatten")
        x = b.dense(x, draw(st.integers(2, 8)), "fc")
    return b.build(x)


@st.composite
def small_models(draw, max_devices: int = 3):
    """A CostModel of a random small graph on 1-3 rpi3/rpi4 devices with tight memory and a slow link."""
    graph = draw(small_graphs())
    # memory from a quarter to 1.5x what the whole model needs on one device: pipelines and splits
    # become necessary, data parallelism sometimes impossible
    whole = sum(graph.cost(i).weight_bytes for i in range(len(graph))) + max(graph.cost(i).peak_bytes for i in range(len(graph)))
    entries = []
    total = 0
    for kind in draw(st.lists(st.sampled_from(["rpi3", "rpi4"]), min_size=1, max_size=2, unique=True)):
        count = draw(st.integers(1, max_devices - total)) if total < max_devices else 0
        if count:
            usable = int(whole * draw(st.floats(0.25, 1.5)))
            entries.append((kind, count, device_profile(kind).reserved_bytes + usable))
            total += count
    link = draw(st.sampled_from([1e5, 1e6, 94e6, 1e9]))
    return CostModel(graph, make_cluster(entries, link, draw(st.sampled_from([0.0, 1e-4]))), CALIBRATION)
