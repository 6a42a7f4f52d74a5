"""Plan documents as a user may hand-edit them: every malformed one is refused by Plan.from_dict /
validate with one line naming the field and the reason, never a traceback, and the invariants the
runtime relies on (stage i has index i, ranks, sizes, devices in rank order) are checked."""
from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layers.errors import PisplitError
from partitioners.plan import Device, Plan, Segment, Stage, StagePrediction


def valid_plan() -> Plan:
    """Three stages over five ranks, one of each mode, with predictions and a split stage's segments."""
    devices = tuple(Device(r, "rpi3", 1 << 30, host=f"pi-{r}" if r else None) for r in range(5))
    stages = (
        Stage(0, 0, 2, (0,), "single", (), 1024, StagePrediction(0.01, 0.002, {0: 1000})),
        Stage(1, 2, 6, (1, 2), "split", (Segment(2, 4, "conv-channel", (1, 2), (9, 7)), Segment(4, 6, "none", (1,))), 512,
              StagePrediction(0.02, 0.001, {1: 2000, 2: 1500})),
        Stage(2, 6, 9, (3, 4), "data-parallel", (), 0, None),
    )
    return Plan("lenet5", 9, devices, stages, planner="hand").validate()


def valid_doc() -> dict:
    return valid_plan().to_dict()


def test_a_valid_document_round_trips():
    plan = valid_plan()
    assert Plan.from_dict(json.loads(plan.to_json())).validate() == plan


def edited(change) -> dict:
    doc = valid_doc()
    change(doc)
    return doc


MALFORMED = [
    # (what, edit, words the message must hold)
    ("model is true", lambda d: d.update(model=True), ["model", "expected a string", "true"]),
    ("a rank as a string", lambda d: d["stages"][1]["ranks"].__setitem__(1, "2"), ["stages[1].ranks[1]", "integer", '"2"']),
    ("ranks as an object", lambda d: d["stages"][0].update(ranks={"0": 0}), ["stages[0].ranks", "expected a list"]),
    ("stages not a list", lambda d: d.update(stages={"0": {}}), ["stages", "expected a list"]),
    ("a stage not an object", lambda d: d["stages"].__setitem__(2, 7), ["stages[2]", "expected an object"]),
    ("host as a list", lambda d: d["devices"][1].update(host=[0, 0]), ["devices[1].host", "host name"]),
    ("devices missing", lambda d: d.pop("devices"), ["devices is missing"]),
    ("a stage without ranks", lambda d: d["stages"][0].pop("ranks"), ["stages[0].ranks is missing"]),
    ("an unknown field", lambda d: d.update(modle="lenet5"), ["unknown field", "modle"]),
    ("an unknown segment field", lambda d: d["stages"][1]["segments"][0].update(size=[1]), ["stages[1].segments[0]", "unknown field"]),
    ("sizes as a string", lambda d: d["stages"][1]["segments"][0].update(sizes="9,7"), ["sizes", "expected a list"]),
    ("memory keyed by a name", lambda d: d["stages"][0]["predicted"]["memory_bytes"].update(pi=1), ["memory_bytes", "not a rank"]),
    ("n_nodes as a float", lambda d: d.update(n_nodes=9.0), ["n_nodes", "integer"]),
    ("version true", lambda d: d.update(version=True), ["version true"]),
    ("NaN bandwidth", lambda d: d.update(link_bandwidth_bps=math.nan), ["link_bandwidth_bps", "number"]),
    # values the runtime relies on
    ("stage index 1 first", lambda d: d["stages"][0].update(index=1), ["stages[0] has index 1", "expected 0"]),
    ("stage index 5", lambda d: d["stages"][2].update(index=5), ["stages[2] has index 5"]),
    ("a rank twice in a stage", lambda d: d["stages"][2].update(ranks=[3, 3]), ["stage 2 ranks [3, 3]", "repeated"]),
    ("a segment rank outside its stage", lambda d: d["stages"][1]["segments"][0].update(ranks=[1, 4]), ["not among the stage's"]),
    ("a zero size", lambda d: d["stages"][1]["segments"][0].update(sizes=[16, 0]), ["sizes [16, 0]", "positive"]),
    ("an unknown split kind", lambda d: d["stages"][1]["segments"][0].update(kind="conv-diagonal"), ["kind 'conv-diagonal'"]),
    ("segments on a single stage", lambda d: d["stages"][0].update(segments=[{"node_start": 0, "node_stop": 2}]), ["has segments"]),
    ("devices out of rank order", lambda d: d["devices"].reverse(), ["devices[0] has rank 4"]),
    ("a zero speed", lambda d: d["devices"][2].update(speed=0), ["rank 2", "speed 0"]),
    ("an unknown engine", lambda d: d.update(engine="tpu"), ["engine 'tpu'"]),
    ("a negative latency", lambda d: d.update(link_latency_s=-1), ["link_latency_s"]),
]


@pytest.mark.parametrize("what,change,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_documents_are_refused_naming_the_field(what, change, words):
    with pytest.raises(PisplitError) as info:
        Plan.from_dict(edited(change)).validate()
    message = str(info.value)
    assert "\n" not in message and message.startswith("plan: ")
    for word in words:
        assert word in message, f"{what}: {message!r} lacks {word!r}"


def test_plan_load_names_the_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(edited(lambda d: d["stages"][0].update(index=1))))
    with pytest.raises(PisplitError, match=r"^plan .*plan\.json: stages\[0\] has index 1"):
        Plan.load(path)


# --- fuzz: mutations of a valid document end in a plan or a PisplitError --------------------------------
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                         st.sampled_from(["none", "split", "single", "data-parallel", "conv-channel", "fc-output",
                                          "numpy", "lead", "parts", "0", "1"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)


def paths(value, prefix=()) -> list:
    """Every place in a JSON document: tuples of keys and indices, the root () included."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


def mutate(doc, path: tuple, action: str, value, key: str):
    """`doc` with one change at `path`: replaced, deleted, given an extra key, or a list item repeated/dropped."""
    if not path:
        return value if action == "replace" else doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "add-key" and isinstance(parent[last], dict):
        parent[last][key] = value
    elif action == "repeat" and isinstance(parent[last], list) and parent[last]:
        parent[last].append(copy.deepcopy(parent[last][0]))
    elif action == "drop" and isinstance(parent[last], list) and parent[last]:
        parent[last].pop()
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_plan_documents_load_or_fail_with_one_line(data):
    doc = valid_doc()
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        places = paths(doc)
        path = data.draw(st.sampled_from(places), label="path")
        action = data.draw(st.sampled_from(["replace", "replace", "delete", "add-key", "repeat", "drop"]), label="action")
        value = data.draw(JSON_VALUES, label="value")
        key = data.draw(st.sampled_from(["extra", "index", "ranks", "kind", "host"]), label="key")
        doc = mutate(doc, path, action, value, key)
    try:
        Plan.from_dict(doc).validate()
    except PisplitError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("plan: ")
