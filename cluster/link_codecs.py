"""Encoded links (issue 15): a stage-to-stage transfer whose plan names a codec (Stage.send_codec)
carries each cut tensor as one partitioners.codecs message instead of its float32 values: one codec
for every tensor ('zstd') or one per tensor in Graph.cut_tensors order ('zstd;int8+zstd', a residual
block's two tensors each with its own).

A frame still travels as one MPI buffer (never pickled), of a fixed capacity the receiver allocates
before anything arrives: the largest frame the codec can write (codecs.max_encoded_bytes per tensor).
The sender sends only the bytes it wrote; MPI lets a receive buffer be longer than its message.

Layout of the buffer (a float32 array, as cluster.runtime.FrameCodec's, so its header reads the same):

    slots 0-7     int64 [frame id, start ns, emulated transfer end ns, its duration ns] (FrameCodec.HEADER)
    next 2 n      int64 byte length of each of the n tensors' messages, in the codec's tensor order
    then          the messages back to back, padded to a multiple of 4 bytes

The receiver checks the lengths against the capacity, then decodes each message expecting the codec,
shape and dtype it waits for; a corrupt or truncated message (codecs' header and CRC-32 checks) raises
a one-line PisplitError naming the link, the frame and the tensor, never a wrong tensor. Lossless
codecs hand the next stage the sender's tensors bit for bit; lossy ones (fp16, int8, jpeg) within
codecs.error_bound of them.
"""
from __future__ import annotations

import time

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph
from partitioners.codecs import decode, encode, link_codecs, max_encoded_bytes, parse_codec
from partitioners.vocabulary import StageMode

HEADER = 8  # float32 slots of the int64 frame header (cluster.runtime.FrameCodec.HEADER)


class EncodedFrameCodec:
    """Packs the named tensors of one frame as codec messages in one MPI buffer (module docstring).

    The same interface as cluster.runtime.FrameCodec: `pack` returns the buffer to send (a view of
    the used slots of a capacity buffer), `unpack` the tensors of a received buffer, `release` takes
    either back for the next frames. `label` names the link in errors ('stage 0 -> stage 1')."""

    encoded = True

    def __init__(self, graph: Graph, names: list[str], codec: str, label: str):
        self.codec = parse_codec(codec)
        self.label = label
        self.names = list(names)
        try:
            self.codecs = link_codecs(self.codec, len(self.names))  # one per tensor
        except PisplitError as exc:
            raise PisplitError(f"link {label}: {exc}") from None
        self.shapes = [tuple(graph.shapes[t]) for t in self.names]
        self.capacity_bytes = sum(max_encoded_bytes(c, s, "float32") for c, s in zip(self.codecs, self.shapes))
        self.data_start = HEADER + 2 * len(self.names)
        self.length = self.data_start + -(-self.capacity_bytes // 4)
        self.free: list[np.ndarray] = []
        self.sent_bytes = 0  # bytes of the last frame packed (header included)
        self.raw_bytes = sum(int(np.prod(s)) * 4 for s in self.shapes)

    def reserve(self, n: int) -> None:
        """Make `n` capacity buffers now (see FrameCodec.reserve)."""
        self.free.extend(np.zeros(self.length, np.float32) for _ in range(max(n - len(self.free), 0)))

    def release(self, buf: np.ndarray) -> None:
        """Hand back a buffer (or the view `pack` returned) whose transfer has finished."""
        base = buf.base if buf.base is not None and buf.base.shape == (self.length,) else buf
        self.free.append(base)

    @property
    def payload_bytes(self) -> int:
        """The largest payload a frame may take (what the receiver holds per buffer)."""
        return (self.length - HEADER) * 4

    def empty(self) -> np.ndarray:
        return self.free.pop() if self.free else np.empty(self.length, np.float32)

    def pack(self, frame_id: int, tensors, start_ns: int = 0, end_ns: int = 0, duration_ns: int = 0) -> np.ndarray:
        """Encode the frame's tensors into a buffer; returns the view of its used slots (to send)."""
        buf = self.empty()
        buf[:HEADER].view(np.int64)[:] = (frame_id, start_ns, end_ns, duration_ns)
        lengths = buf[HEADER: self.data_start].view(np.int64)
        data = buf[self.data_start:].view(np.uint8)
        at = 0
        try:
            for i, (t, shape, codec) in enumerate(zip(self.names, self.shapes, self.codecs)):
                arr = tensors[t]
                if tuple(arr.shape) != shape:
                    raise PisplitError(f"tensor {t!r} has shape {arr.shape}, expected {shape}")
                try:
                    msg = encode(np.asarray(arr, np.float32), codec)
                except PisplitError as exc:
                    raise PisplitError(f"tensor {t!r}: {exc}") from None
                data[at: at + len(msg)] = np.frombuffer(msg, np.uint8)
                lengths[i] = len(msg)
                at += len(msg)
        except PisplitError as exc:
            self.free.append(buf)
            raise PisplitError(f"link {self.label}, frame {frame_id}: {exc}") from None
        self.sent_bytes = self.data_start * 4 + at
        return buf[: self.data_start + -(-at // 4)]

    @staticmethod
    def set_link_times(buf: np.ndarray, end_ns: int, duration_ns: int) -> None:
        """Write an emulated transfer's end and duration into a packed buffer's header."""
        buf[:HEADER].view(np.int64)[2:4] = (end_ns, duration_ns)

    def unpack(self, buf: np.ndarray) -> dict[str, np.ndarray]:
        """The tensors of a received buffer, decoded; PisplitError naming the link, frame and tensor
        when a length or a message is wrong."""
        frame = int(buf[:HEADER].view(np.int64)[0])
        lengths = buf[HEADER: self.data_start].view(np.int64)
        data = buf[self.data_start:].view(np.uint8)
        where = f"link {self.label}, frame {frame}"
        if (lengths < 0).any() or (lengths > len(data)).any() or int(lengths.sum()) > len(data):  # (each first: no overflow)
            raise PisplitError(f"{where}: message lengths {lengths.tolist()} do not fit the {len(data)}-byte buffer (corrupt frame)")
        out, at = {}, 0
        for t, shape, codec, n in zip(self.names, self.shapes, self.codecs, lengths.tolist()):
            try:
                out[t] = decode(data[at: at + n], expect_codec=codec, shape=shape, dtype=np.float32)
            except PisplitError as exc:
                raise PisplitError(f"{where}: tensor {t!r}: {exc}") from None
            at += n
        return out


def frame_codec(graph: Graph, names: list[str], codec: str, label: str, raw_codec):
    """The codec of one link: `raw_codec(graph, names)` (cluster.runtime.FrameCodec, float32 values)
    for 'raw' (or 'raw' for every tensor), else an EncodedFrameCodec."""
    try:
        each = link_codecs(codec, len(names))
    except PisplitError as exc:
        raise PisplitError(f"link {label}: {exc}") from None
    if all(c.kind == "raw" for c in each):
        return raw_codec(graph, names)
    return EncodedFrameCodec(graph, names, codec, label)


def pack_for_link(codec, frame: int, tensors, start_ns: int, link, device, poll: bool = True) -> tuple[np.ndarray, float, float]:
    """(buffer, emulated end, duration) of a frame leaving over a link: a raw codec schedules its
    fixed payload and packs; an encoded one encodes first (a compute step of the emulated device when
    emulating: a Pi encodes slower than this machine), then schedules the bytes it wrote. `poll`
    False: the encode is padded to the device's time without polling the rank's progress (for a
    caller that runs inside the poll, such as rank 0 handing out inputs)."""
    if not getattr(codec, "encoded", False):
        end = duration = 0.0
        if link:
            end, duration = link.schedule(codec.payload_bytes, len(codec.names))
        return codec.pack(frame, tensors, start_ns, int(end * 1e9), int(duration * 1e9)), end, duration
    if device and poll:
        buf = device.compute(lambda: codec.pack(frame, tensors, start_ns), codec=True)
    elif device:
        mark = device.dilation.start()
        buf = codec.pack(frame, tensors, start_ns)
        left = device.dilation.deadline(mark) - time.perf_counter()
        if left > 0:
            time.sleep(left)
    else:
        buf = codec.pack(frame, tensors, start_ns)
    end = duration = 0.0
    if link:
        end, duration = link.schedule(codec.sent_bytes, len(codec.names))
        codec.set_link_times(buf, int(end * 1e9), int(duration * 1e9))
    return buf, end, duration


def unpack_from_link(codec, buf: np.ndarray, device) -> dict:
    """The tensors of a received frame; an encoded link's decoding is a compute step of the emulated
    device when emulating."""
    if getattr(codec, "encoded", False) and device:
        return device.compute(lambda: codec.unpack(buf), codec=True)
    return codec.unpack(buf)


# --- what the emulated links carried (bench_link_codecs checks a run used its plan's codecs) -----------------
def frame_header_bytes(n_tensors: int, codec: str) -> int:
    """Bytes a frame of `n_tensors` adds to its tensors' messages on a link: none for raw float32
    (FrameCodec.payload_bytes), the length slots for an encoded link (EncodedFrameCodec.sent_bytes)."""
    each = link_codecs(parse_codec(codec), n_tensors)
    return 0 if all(c.kind == "raw" for c in each) else (HEADER + 2 * n_tensors) * 4


def measured_link_bytes(plan, graph: Graph, report: dict) -> dict:
    """Bytes per frame each link of an emulated run carried, from its senders' paced link time
    (report ranks' link_busy_s: every frame a rank sends costs messages x latency + bytes x 8 /
    bandwidth on its emulated link, cluster.emulation.LinkPacer): {"input": bytes or None, k: bytes or
    None} for the input frames rank 0 hands to the first stage's other entry ranks and for stage k's
    transfer to stage k + 1. None where the run had no such transfer, or where a split stage's halos
    share the link (not separable).

    A stage's other senders than rank 0 give its link's bytes; rank 0, which sends its own frames of
    the first stage on and hands out the input frames, gives the input's with its own frames' share
    taken off."""
    by_rank = {r["rank"]: r for r in report["ranks"]}
    bw, lat = plan.link_bandwidth_bps, plan.link_latency_s
    total = int(report["frames"])
    stages = plan.stages

    def per_frame(seconds: float, frames: int, messages: int) -> float | None:
        return (seconds / frames - messages * lat) * bw / 8.0 if frames > 0 else None

    out: dict = {}
    for k, stage in enumerate(stages[:-1]):
        m = len(graph.cut_tensors(stage.node_stop))
        if stage.mode == StageMode.SPLIT:
            out[k] = None
            continue
        others = [by_rank[r] for r in stage.ranks if r != 0]
        if others:
            out[k] = per_frame(sum(r["link_busy_s"] for r in others), sum(r["frames"] for r in others), m)
        elif k == 0 and len(stage.ranks) == 1:  # rank 0 alone: it hands out no input frames
            out[k] = per_frame(by_rank[0]["link_busy_s"], by_rank[0]["frames"], m)
        else:
            out[k] = None
    first = stages[0]
    handed = total - by_rank[0]["frames"] if 0 in first.ranks else total
    if handed <= 0 or first.mode == StageMode.SPLIT:
        out["input"] = None
        return out
    busy = by_rank[0]["link_busy_s"]
    if len(stages) > 1 and 0 in first.ranks:  # rank 0's own frames of the first stage left on the same link
        own = out.get(0)
        if own is None:
            out["input"] = None
            return out
        m0 = len(graph.cut_tensors(first.node_stop))
        busy -= by_rank[0]["frames"] * (m0 * lat + own * 8.0 / bw)
    out["input"] = per_frame(busy, handed, len(graph.inputs))
    return out
