"""int8 pipelines under real MPI (issue 12): stages of an int8 model (float I/O around QUANTIZE /
DEQUANTIZE) pass int8 activations between ranks, packed at 1 byte a value by FrameCodec, through single,
data-parallel and split stages (conv-channel, conv-spatial, conv-spatial through ADD and max pool, and
conv-filter on a conv, a depthwise and a 1x1 conv, whose int32 partial sums travel as float32 halves); the outputs
equal the whole model's, every value, on the numpy engine (litert: within one unit; it refuses the
partial-sum parts in one line)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.runtime import FrameCodec, synthetic_frame
from tests.cluster.pipeline_plans import hand_plan
from tests.cluster.test_runtime import mpirun
from tests.layers.int8_split_models import int8_split_graph, int8_split_model

pytestmark = pytest.mark.mpi

PLANS = [
    # (name, stages): nodes 0 quantize, 1 conv, 2 depthwise, 3 conv 1x1, 4 add, 5 max pool, 6 dequantize
    ("singles", [(0, 2, [0], "single"), (2, 4, [1], "single"), (4, 7, [2], "single")]),
    ("data-parallel", [(0, 3, [0], "single"), (3, 7, [1, 2], "data-parallel")]),
    ("split", [(0, 1, [0], "single"),
               (1, 7, [1, 2], "split", [(1, 2, "conv-channel", (6, 4)), (2, 3, "conv-spatial", (9, 4)), (3, 6, "conv-spatial", (4, 3)),
                                        (6, 7, "none", ())])]),
    ("partial-sums", [(0, 1, [0], "single"),
                      (1, 7, [1, 2], "split", [(1, 2, "conv-filter", (4, 2)), (2, 3, "conv-filter", (6, 4)), (3, 4, "conv-filter", (11, 9)),
                                               (4, 7, "none", ())])]),
]


@pytest.mark.parametrize("engine", ["numpy", "litert"])
def test_int8_pipelines_under_mpirun_equal_the_whole_model(tmp_path, engine):
    model = tmp_path / "int8.tflite"
    model.write_bytes(int8_split_model(float_io=True, features=True))
    graph = int8_split_graph(float_io=True, features=True)
    frames = 5
    ref = np.concatenate([graph.forward(**synthetic_frame(graph, 0, f)) for f in range(frames)])
    assert np.unique(ref).size >= 50
    for name, stages in PLANS:
        plan = hand_plan(graph, stages, model=str(model))
        for stage in plan.stages[:-1]:  # int8 links: a quarter of the float32 bytes
            codec = FrameCodec(graph, graph.cut_tensors(stage.node_stop))
            assert codec.payload_bytes < sum(4 * int(np.prod(graph.shapes[t])) for t in codec.names) / 3.9
        out = tmp_path / f"{name}-{engine}.npz"
        proc = mpirun(plan.n_ranks, "run", plan.save(tmp_path / f"{name}.json"), "--frames", frames, "--engine", engine,
                      "--output", out, "--json")
        if name == "partial-sums" and engine == "litert":  # int32 partial sums have no TFLite form: one line, every rank ends
            assert proc.returncode != 0 and "makes int32 partial sums" in proc.stderr and "Traceback" not in proc.stderr
            continue
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        assert json.loads(proc.stdout)["every_frame_once"]
        with np.load(out, allow_pickle=False) as z:
            assert sorted(z["frame_ids"].tolist()) == list(range(frames))
            y = z["output_0"][np.argsort(z["frame_ids"])]
        if engine == "numpy":  # the reference kernels on every rank: the very same values
            assert np.array_equal(y, ref), f"{name}: {np.abs(y - ref).max()}"
        else:  # XNNPACK's int8 rounding: within one output unit of the reference (float out: scale units)
            scale = graph.quant[graph.nodes[-1].inputs[0]].scale[0]
            assert np.abs(y - ref).max() <= 1.0001 * scale, f"{name}: {np.abs(y - ref).max() / scale} units"
