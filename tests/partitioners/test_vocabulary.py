"""Split kinds and stage modes are string enums (partitioners.vocabulary): the same strings as before
on disk and in comparisons, one closed set for validation."""
from __future__ import annotations

import json

import pytest

from layers import zoo_model
from layers.errors import PisplitError
from partitioners.plan import SEGMENT_KINDS, STAGE_MODES, Device, Plan, Stage, StagePrediction
from partitioners.split_parts import SPLIT_KINDS
from partitioners.splits import legal_kinds, split_layer
from partitioners.vocabulary import NO_SPLIT, SplitKind, StageMode


def test_members_are_the_strings_plans_are_written_with():
    assert SPLIT_KINDS == ("fc-output", "fc-input", "conv-channel", "conv-spatial", "conv-filter", "fused-tiles", "data-parallel",
                           "attn-heads", "attn-tokens")
    assert STAGE_MODES == ("single", "split", "data-parallel") and SEGMENT_KINDS == (NO_SPLIT, *SPLIT_KINDS) == ("none", *SPLIT_KINDS)
    assert SplitKind("conv-channel") is SplitKind.CONV_CHANNEL and StageMode("split") is StageMode.SPLIT
    assert {"fc-output": 1}[SplitKind.FC_OUTPUT] == 1 and f"{StageMode.DATA_PARALLEL}" == "data-parallel"
    assert json.dumps([SplitKind.FC_INPUT, StageMode.SINGLE]) == '["fc-input", "single"]'
    with pytest.raises(ValueError):
        SplitKind("conv-depth")


def test_every_kind_a_layer_can_take_is_in_the_vocabulary():
    g = zoo_model("lenet5")
    for node in g.nodes:
        assert set(legal_kinds(g, node.name)) <= set(SplitKind), node.name
    assert split_layer(g, "fc1", SplitKind.FC_OUTPUT, (0.5, 0.5)).kind == "fc-output"


def _plan(mode: str) -> Plan:
    g = zoo_model("lenet5")
    stage = Stage(0, 0, len(g), (0,), mode, (), 0, StagePrediction(0.001, 0.0, {}))
    return Plan("lenet5", len(g), (Device(0, "rpi4", 4 << 30),), (stage,), planner="test", link_bandwidth_bps=1e9)


def test_plan_validation_takes_the_enum_or_its_string_and_writes_the_string(tmp_path):
    as_string, as_member = _plan("single").validate(), _plan(StageMode.SINGLE).validate()
    a, b = as_string.save(tmp_path / "a.json"), as_member.save(tmp_path / "b.json")
    assert a.read_text() == b.read_text() and json.loads(a.read_text())["stages"][0]["mode"] == "single"
    assert Plan.load(b).stages[0].mode == StageMode.SINGLE
    with pytest.raises(PisplitError) as err:
        _plan("solo").validate()
    assert str(err.value) == "plan: stage 0 has mode 'solo' (expected one of single, split, data-parallel)"
