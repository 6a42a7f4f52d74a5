"""The litert export refuses a conv-channel part of a dynamic-range depthwise layer (issue 12): LiteRT's hybrid
depthwise kernel quantizes its whole input on one range, so a part holding some of its channels would quantize
them on their own range and differ from the unsplit layer. partitioners.splits.legal_kinds refuses the split
and qkernels.run_hybrid the numpy run; a part graph made any other way is refused by the export too, in one
line naming the node. A conv-channel part of a hybrid full conv stays exportable (each part quantizes the
whole input)."""
from __future__ import annotations

import numpy as np
import pytest

from layers import PisplitError
from layers.graph import Graph, Node
from layers.tflite_export import export_tflite


def _part(depthwise: bool, kind: str) -> Graph:
    """One hybrid conv (int8 filter with per-channel scales, float activations) as the graph of a `kind` part."""
    rng = np.random.default_rng(4)
    cin, cout = 6, 6 if depthwise else 4
    shape = (3, 3, 1, cout) if depthwise else (3, 3, cin, cout)
    attrs = {"padding": "same", "groups": cin} if depthwise else {"padding": "same"}
    node = Node("dw_h" if depthwise else "conv_h", "conv2d", ["x"], ["y"], attrs, {"kernel": shape, "bias": (cout,)})
    weights = {f"{node.name}/kernel": rng.integers(-127, 128, shape).astype(np.int8),
               f"{node.name}/bias": rng.standard_normal(cout).astype(np.float32)}
    quant = {f"{node.name}/kernel": {"dtype": "int8", "scale": rng.uniform(0.001, 0.01, cout).tolist(), "zero_point": [0] * cout,
                                     "axis": 3}}
    return Graph(f"part_{kind}", {"x": (1, 8, 8, cin)}, [node], ["y"], weights, {"quant": quant, "split": {"kind": kind}})


def test_a_conv_channel_part_of_a_hybrid_depthwise_layer_is_refused():
    with pytest.raises(PisplitError) as info:
        export_tflite(_part(True, "conv-channel"))
    message = str(info.value)
    assert "\n" not in message and message.startswith("model part_conv-channel: node dw_h is a dynamic-range depthwise layer")
    assert "quantizes the whole input at once" in message and "conv-channel part" in message


def test_other_hybrid_parts_export_as_before():
    assert export_tflite(_part(False, "conv-channel"))[4:8] == b"TFL3"  # a full conv's output-channel part: exact
    assert export_tflite(_part(True, "data-parallel"))[4:8] == b"TFL3"  # a whole depthwise layer on each replica
    with pytest.raises(PisplitError, match=r"^model part_conv-spatial: node dw_h is a dynamic-range layer .* each conv-spatial part"):
        export_tflite(_part(True, "conv-spatial"))
