"""A cost model whose memory counts the link codecs' buffers (issue 15), so the planner only picks a
codec whose encode and decode fit the ranks that run them.

CostModel prices each cut's transfer with a codec table (CostModel.cut_codec), but counts a rank's
frame buffers as raw float32 frames. An encoding rank also holds the codec's working set while it
encodes, and a decoding one its decoded tensors and the decoder's working set
(link_pricing.link_memory_bytes; a raw link's receiver computes on views of its buffer). CodecCostModel
adds them where the runtime has them: at the entry ranks of a stage (its lead, or every replica of a
data-parallel stage), the receive of the cut it starts at and the send of the cut it stops at; in the
first stage, rank 0 encodes the input frames it hands to the other replicas (Plan.input_codec) and
they decode them. The planners see the memory through CostModel.frame_buffer_bytes, so the dp planner,
the baselines and the predictions all count it, and link_pricing.with_link_codecs adds nothing more.

Kept apart from link_pricing because it imports the cost model, which imports link_pricing.
"""
from __future__ import annotations

import numpy as np

from .cost import CostModel
from .link_pricing import link_memory_bytes


def codec_cost_model(graph, cluster, calibration=None, codecs=None, codec_budget=None, splits=None) -> CostModel:
    """The cost model for a codec table (`codecs`, link_pricing.CodecTable in reference seconds): a
    CodecCostModel with one, a plain CostModel without."""
    cls = CodecCostModel if codecs is not None else CostModel
    return cls(graph, cluster, calibration, splits, codecs=codecs, codec_budget=codec_budget)


class CodecCostModel(CostModel):
    """CostModel with the link codecs' buffers in every entry rank's memory (module docstring)."""

    counts_link_buffers = True  # link_pricing.with_link_codecs: the memory prediction holds them already

    def _link_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """(encode bytes, decode bytes) of each cut 0..n's codec (0 for raw and for the results, cut n)."""
        cached = getattr(self, "_link_buffer_bytes", None)
        if cached is None:
            send, receive = np.zeros(self.n + 1), np.zeros(self.n + 1)
            for cut in range(self.n):
                names = self.graph.cut_tensors(cut)
                sizes = [int(np.prod(self.graph.shapes[t])) * 4 for t in names]  # float32 on the link
                send[cut], receive[cut] = link_memory_bytes(self.cut_codec[cut], sizes)
            cached = self._link_buffer_bytes = (send, receive)
        return cached

    def frame_buffer_bytes(self, start, stop, replicas: int, entry: bool, lead: bool):
        """CostModel's frame buffers plus the codec buffers of the links this rank ends (module
        docstring); `start` and `stop` may be index arrays, as there."""
        base = super().frame_buffer_bytes(start, stop, replicas, entry, lead)
        if not entry:
            return base
        send, receive = self._link_buffers()
        start, stop = np.asarray(start), np.asarray(stop)
        first = (send[0] if replicas > 1 else 0.0) if lead else receive[0]  # rank 0 hands inputs out, the replicas decode them
        extra = np.where(start == 0, first, receive[start]) + send[stop]
        return float(base + extra) if extra.ndim == 0 else base + extra
