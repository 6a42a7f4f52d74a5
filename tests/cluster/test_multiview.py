"""DDNN's multi-device inference (issue 14): end devices on their own ranks, rank 0 aggregating.
Under real mpirun the local exit decisions and both outputs equal the one-process reference frame
for frame, with 0, 1 and 2 end devices missing; a missing device leaves max and average pooling of
the present devices unchanged (the fill is neutral), and a concatenation gets zeros."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.multiview import fill_missing, fill_rule, multiview_reference, parse_missing, split_multiview
from layers import load_model
from layers.errors import PisplitError
from layers.trained import held_out, trained_names
from partitioners.exits import normalised_entropy

from .test_stalls_and_partial import mpirun

FRAMES = 60


def test_the_ddnn_model_splits_into_devices_and_two_aggregators():
    views = split_multiview(load_model("ddnn_mnist"))
    assert views.n_devices == 4 and views.scores == [f"device{d}_fc" for d in range(4)]
    assert views.features == [f"device{d}_pool" for d in range(4)]
    assert fill_rule(views.graph, "device0_fc") == "mean" and fill_rule(views.graph, "device0_pool") == "zeros"
    with pytest.raises(PisplitError, match="not a multi-view model"):
        split_multiview(load_model("branchy_lenet_mnist"))
    with pytest.raises(PisplitError, match="at least one must be present"):
        parse_missing("0,1,2,3", 4)


def test_a_missing_device_is_left_out_of_the_max_pool(rng):
    views = split_multiview(load_model("ddnn_mnist"))
    feeds, _ = held_out("ddnn_mnist")
    feeds = {k: v[:40] for k, v in feeds.items()}
    ref = multiview_reference(views, feeds, [1, 2], 0.5)
    scores = [views.devices[d].execute({views.views[d]: feeds[views.views[d]]})[f"device{d}_fc"] for d in (0, 3)]
    z = np.maximum(scores[0], scores[1]).astype(np.float64)  # the local exit: max over present devices, then softmax
    p = np.exp(z - z.max(-1, keepdims=True))
    np.testing.assert_allclose(ref["local_all"], p / p.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    # the fill is neutral for max and average pooling alike: the mean of the present ones
    a, b = rng.standard_normal((2, 3, 10)).astype(np.float32)
    filled = fill_missing(views.graph, ["device0_fc", "device1_fc", "device2_fc"], {"device0_fc": a, "device2_fc": b})
    stack = np.stack(list(filled.values()))
    np.testing.assert_array_equal(stack.max(0), np.maximum(a, b))
    np.testing.assert_allclose(stack.mean(0), (a + b) / 2, rtol=1e-6, atol=1e-6)
    zeros = fill_missing(views.graph, ["device0_pool", "device1_pool"], {"device0_pool": np.ones((1, 10, 10, 8), np.float32)})
    assert not zeros["device1_pool"].any()


def splitting_threshold(views, feeds, absent) -> float:
    """A T halfway between two of the frames' local-exit entropies: about half the frames exit locally."""
    ref = multiview_reference(views, feeds, absent, 0.0)
    etas = np.sort(normalised_entropy(ref["local_all"], "probabilities"))
    return float((etas[len(etas) // 2 - 1] + etas[len(etas) // 2]) / 2)


SCHEMES = [m for m in trained_names() if m.startswith("ddnn_mnist_")]  # the other eight of DDNN's nine
# (model, missing devices, window, emulated): frames in flight several (a device runs ahead of rank 0's words;
# rank 0 decides later frames while earlier ones wait for their features) or one at a time; emulated Pi 3B+
# devices and links, or not
CASES = [("ddnn_mnist", "", 4, False), ("ddnn_mnist", "2", 7, True), ("ddnn_mnist", "0,3", 1, False), *[(m, "1", 4, False) for m in SCHEMES]]

# Each case is a `pisplit exits MODEL --run` of its own: cluster.cli.main on every rank, rank 0's stdout (the
# JSON report) into the case's file. The cases with the same number of ranks run one after the other in one
# mpirun (one start of Open MPI and of the ranks' Python for all of them).
WORKER = """
import contextlib, json, os, sys
from cluster.cli import main
rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
for case in json.load(open(sys.argv[1])):
    with open(case["stdout"] if rank == 0 else os.devnull, "w") as out, contextlib.redirect_stdout(out):
        code = main(case["argv"])
    if code:
        print(f"case {case['argv']}: exit {code} on rank {rank}", file=sys.stderr)
        sys.exit(code)
"""


def ranks_of(case) -> int:
    return 1 + 4 - len(parse_missing(case[1], 4))


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """case -> (threshold, report, outputs .npz, the mpirun): the first case of a rank count asked for
    launches every case of that count in one mpirun."""
    runs: dict = {}

    def get(case):
        if isinstance(runs.get(case), BaseException):
            raise runs[case]
        if case not in runs:
            group = [c for c in CASES if ranks_of(c) == ranks_of(case)]
            tmp = tmp_path_factory.mktemp(f"multiview{ranks_of(case)}")
            todo = []
            for i, (model, missing, window, emulate) in enumerate(group):
                feeds, _ = held_out(model)
                feeds = {k: v[:FRAMES] for k, v in feeds.items()}
                # some frames exit locally, some go on to the cloud
                threshold = splitting_threshold(split_multiview(load_model(model)), feeds, parse_missing(missing, 4))
                argv = ["exits", model, "--run", "--frames", str(FRAMES), "--threshold", repr(threshold), "--output", str(tmp / f"{i}.npz"),
                        "--json", "--window", str(window), *(["--emulate"] if emulate else []), *(["--missing", missing] if missing else [])]
                todo.append({"argv": argv, "stdout": str(tmp / f"{i}.json"), "threshold": threshold})
            (tmp / "cases.json").write_text(json.dumps(todo))
            try:
                proc, _ = mpirun(ranks_of(case), tmp / "cases.json", code=WORKER, timeout=120 * len(group))
            except BaseException as exc:  # a hang (pytest.fail) or no mpirun (skip): the outcome of every case of the group, launched once
                runs.update({c: exc for c in group})
                raise
            for i, c in enumerate(group):
                path = tmp / f"{i}.json"
                report = path.read_text() if path.exists() else ""
                runs[c] = (todo[i]["threshold"], report, tmp / f"{i}.npz", proc)
        return runs[case]

    return get


@pytest.mark.mpi
@pytest.mark.parametrize("model, missing, window, emulate", CASES)
def test_aggregated_results_under_mpirun_equal_the_reference(launched, model, missing, window, emulate):
    views = split_multiview(load_model(model))
    absent = parse_missing(missing, 4)
    feeds, labels = held_out(model)
    feeds = {k: v[:FRAMES] for k, v in feeds.items()}
    threshold, report, output, proc = launched((model, missing, window, emulate))
    assert proc.returncode == 0, proc.stderr[-2000:]  # the launch of this case and the others of its rank count
    assert "{" in report and output.exists(), proc.stderr[-2000:]
    doc = json.loads(report[report.index("{"):])
    ref = multiview_reference(views, feeds, absent, threshold)
    with np.load(output, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["exit_index"], ref["exit_index"])
        np.testing.assert_allclose(f["exit1"], ref["exit1"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["final"], ref["final"], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert 0 < (ref["exit_index"] == 0).sum() < FRAMES, "the threshold should split the frames"
    present = 4 - len(absent)
    went_on = (ref["exit_index"] == 1).mean()
    shapes = views.graph.shapes
    per_device = 4 * np.prod(shapes[views.scores[0]]) + went_on * 4 * np.prod(shapes[views.features[0]])
    assert doc["bytes_per_frame"] == pytest.approx(present * per_device)
    assert doc["window"] == window and doc["frames_per_s"] > 0
    assert (doc["emulated"] == {"devices": "rpi3", "aggregator": "rpi3", "link": "94mbit"}) if emulate else doc["emulated"] is None
    answer = np.where(ref["exit_index"] == 0, ref["local_all"].argmax(-1), ref["final_all"].argmax(-1))
    assert doc["accuracy"] == pytest.approx(float((answer == labels[:FRAMES]).mean()))
    assert doc["frames"] == FRAMES and doc["missing"] == absent and doc["threshold"] == threshold
