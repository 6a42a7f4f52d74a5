"""`pisplit emulate --exit` predicts with the exits (issue 14): the prediction it compares the run
with is the plan's throughput with each exit's held-out share (as `pisplit plan --exit` prices it),
and the run's frames are those held-out frames, so the exits fire as often as predicted."""
from __future__ import annotations

from argparse import Namespace

import numpy as np

from cluster.commands.emulate import exit_prediction
from cluster.commands.exits import held_out_outputs
from cluster.emulated_plans import plan_for_devices
from layers import load_model
from partitioners.cost import make_cluster
from partitioners.devices import parse_devices
from partitioners.exits import calibrate, resolve_exits, throughput_with_inner_exits
from partitioners.cost import CostModel
from partitioners.profiles import Calibration


def test_emulate_exit_prediction_uses_the_held_out_shares_and_frames():
    model, devices, link = "branchy_lenet_digits", "rpi3:2", 94e6
    graph = load_model(model)
    plan = plan_for_devices(graph, model, devices, link, "dp", "throughput", "numpy")
    args = Namespace(exit=["exit1=0.3"], model=model, devices=devices, engine="numpy", input=None)
    fps, note, frames = exit_prediction(args, graph, plan, link, None, None)
    points = resolve_exits(graph, {"exit1": 0.3})
    outputs, labels, _ = held_out_outputs(model, graph, None)
    share = calibrate(graph, outputs, labels, points)["exits"][0]["exit_fraction"]
    assert 0.5 < share < 1.0  # a real share from the test split, not all or nothing
    expected = throughput_with_inner_exits(CostModel(graph, make_cluster(parse_devices(devices), link), Calibration("numpy")),
                                           plan, points, [share])
    assert fps == expected and fps > plan.predicted_throughput_fps
    assert f"{share:.1%}" in note and f"{len(labels)} held-out digits frames" in note
    name = next(iter(graph.inputs))
    assert frames.dtype == np.float32 and frames.shape == (len(labels), *graph.inputs[name][1:])
    # the frames the shares were measured on: the model's exit fires on them as calibrated
    again = calibrate(graph, graph.execute({name: frames}), labels, points)["exits"][0]["exit_fraction"]
    assert again == share


def test_emulate_exit_prediction_without_held_out_data_says_so():
    graph = load_model("alexnet")
    args = Namespace(exit=[], model="alexnet", devices="rpi3:2", engine="numpy", input=None)
    fps, note, frames = exit_prediction(args, graph, None, 94e6, None, None)
    assert fps is None and frames is None and "not measured" in note
