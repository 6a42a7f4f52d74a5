"""`pisplit split` on int8 layers (issue 12): the command's seeded input of an int8 tensor is int8, drawn as
the float input would be and quantized with the tensor's scale and zero point (layers.quant.random_values),
not float32 values the int8 kernels refuse; the split layer (and a chain) equals the unsplit one exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from layers.quant import random_values, round_half_away
from tests.cluster.test_runtime import mpirun
from tests.layers.int8_split_models import int8_split_graph, int8_split_model


def test_random_values_of_an_int8_tensor_use_its_quantization():
    graph = int8_split_graph()
    conv = next(n for n in graph.nodes if n.op == "conv2d")
    t = conv.outputs[0]
    q = graph.quant[t]
    x = random_values(graph, t, np.random.default_rng(5))
    assert x.dtype == q.np_dtype and x.shape == graph.shapes[t]
    reals = np.random.default_rng(5).standard_normal(graph.shapes[t], dtype=np.float32)  # the float draw, quantized
    want = np.clip(round_half_away(reals / np.float32(q.scale[0])) + q.zero_point[0], q.qmin, q.qmax)
    assert np.array_equal(x, want) and np.unique(x).size > 10
    batch = random_values(graph, t, np.random.default_rng(5), (3, *graph.shapes[t][1:]))
    assert batch.shape[0] == 3 and batch.dtype == q.np_dtype
    floats = int8_split_graph(float_io=True)
    first = next(iter(floats.inputs))
    assert random_values(floats, first, np.random.default_rng(0)).dtype == np.float32  # a float tensor: as before


@pytest.mark.mpi
def test_split_command_on_an_int8_layer(tmp_path):
    model = tmp_path / "int8.tflite"
    model.write_bytes(int8_split_model())
    graph = int8_split_graph()
    conv = next(n for n in graph.nodes if n.op == "conv2d" and n.attrs.get("groups", 1) == 1)
    for args in (["--kind", "conv-filter"], ["--kind", "conv-spatial", "--chain", "2"]):
        proc = mpirun(2, "split", model, conv.name, *args, "--repeat", 1, "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        doc = json.loads(proc.stdout)
        assert doc["ok"] and doc["max_abs_error"] == 0.0, doc
