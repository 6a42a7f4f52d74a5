"""DDNN's multi-device inference (seed 002): end devices each see their own view, an aggregator combines them.

A multi-view model (layers/trained `ddnn_mnist*`: inputs view0..viewN-1, nodes `device{d}_*` per end
device, then a local aggregator and exit `exit1`, then a cloud aggregator and the final exit) runs on
one MPI rank per present end device plus rank 0, the aggregator:

- end device d (rank 1 + its position among the present devices) holds only its view's frames and
  the nodes `device{d}_*`; per frame it computes its class scores and features, sends rank 0 the
  scores (a float32 buffer), and reads rank 0's word on the frame (int64 [frame, go]): when the
  local exit was not sure, it sends its features too. Up to `window` frames are in flight: a device
  computes ahead and reads a frame's word when it must (run_multiview);
- rank 0 combines the scores of every device by the model's local aggregator (max pooling MP,
  average pooling AP, or concatenation CC, as the graph's nodes say), takes the local exit's
  normalised entropy (partitioners.exits) and answers the frame there when it is at most T;
  otherwise it asks for the features, combines them by the cloud aggregator and runs the rest.

A device absent from the run (`missing`) is filled in where its tensor enters an aggregator: for a
pooling aggregator with the element-wise mean of the present devices' tensors (which leaves both
max and average pooling of the present devices unchanged: the mean is never above the max), for a
concatenation with zeros (the layers after it were trained on every device). `multiview_reference`
computes the same thing in one process, the whole test split at once; runs under mpirun equal it.
An emulated run (ViewEmulation) dilates each rank's compute to its device kind and paces its sends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph
from partitioners.exits import normalised_entropy

TAG_SCORES, TAG_WORD, TAG_FEATURES = 120, 121, 122


@dataclass
class MultiViewModel:
    """A multi-view graph cut into its end devices' parts and the aggregator's two pieces."""

    graph: Graph
    views: list  # input names, view d of device d
    devices: list  # Graph per device: its view -> (scores, features)
    scores: list  # per device, the tensor its local aggregator reads
    features: list  # per device, the tensor its cloud aggregator reads
    local: Graph  # scores of every device -> the local exit
    cloud: Graph  # features of every device -> the final output
    exit_name: str
    final_name: str

    @property
    def n_devices(self) -> int:
        return len(self.views)


def _piece(graph: Graph, name: str, nodes: list, outputs: list) -> Graph:
    made = {t for n in nodes for t in n.outputs}
    inputs = {}
    for n in nodes:
        for t in n.inputs:
            if t not in made and t not in inputs and t in graph.shapes:
                inputs[t] = graph.shapes[t]
    return Graph(name, inputs, nodes, outputs, graph.weights, graph.meta)


def split_multiview(graph: Graph) -> MultiViewModel:
    """Cut a DDNN-style graph into device parts, the local piece and the cloud piece; raises
    PisplitError naming what does not fit (inputs view0.., nodes device{d}_*, outputs exit1, final)."""
    views = sorted((t for t in graph.inputs if t.startswith("view")), key=lambda t: int(t[4:]) if t[4:].isdigit() else -1)
    if len(views) < 2 or len(views) != len(graph.inputs) or len(graph.outputs) != 2:
        raise PisplitError(f"model {graph.name}: not a multi-view model (inputs view0..viewN-1, outputs local exit and final)")
    exit_name, final_name = graph.outputs
    devices, scores, features = [], [], []
    for d, view in enumerate(views):
        nodes = [n for n in graph.nodes if n.name.startswith(f"device{d}_")]
        if not nodes or nodes[0].inputs[0] != view:
            raise PisplitError(f"model {graph.name}: no nodes device{d}_* reading {view}")
        made = {t for n in nodes for t in n.outputs}
        rest = [n for n in graph.nodes if n not in nodes]
        leaving = [t for t in dict.fromkeys(t for n in rest for t in n.inputs) if t in made]
        readers = {t: [n for n in rest if t in n.inputs] for t in leaving}
        to_exit = [t for t in leaving if _leads_to(graph, readers[t][0], exit_name)]
        to_cloud = [t for t in leaving if t not in to_exit]
        if len(to_exit) != 1 or len(to_cloud) != 1:
            raise PisplitError(f"model {graph.name}: device {d} should hand one tensor to each aggregator, hands {leaving}")
        scores.append(to_exit[0])
        features.append(to_cloud[0])
        devices.append(_piece(graph, f"{graph.name}.device{d}", nodes, [to_exit[0], to_cloud[0]]))
    device_nodes = {n.name for g in devices for n in g.nodes}
    shared = [n for n in graph.nodes if n.name not in device_nodes]
    local_nodes = [n for n in shared if _leads_to(graph, n, exit_name)]
    cloud_nodes = [n for n in shared if n not in local_nodes]
    return MultiViewModel(graph, views, devices, scores, features, _piece(graph, f"{graph.name}.local", local_nodes, [exit_name]),
                          _piece(graph, f"{graph.name}.cloud", cloud_nodes, [final_name]), exit_name, final_name)


def _leads_to(graph: Graph, node, target: str) -> bool:
    """Whether `node`'s outputs reach tensor `target` through the graph."""
    frontier, seen = list(node.outputs), set()
    while frontier:
        t = frontier.pop()
        if t == target:
            return True
        if t in seen:
            continue
        seen.add(t)
        for n in graph.nodes:
            if t in n.inputs:
                frontier.extend(n.outputs)
    return False


def fill_rule(graph: Graph, tensor: str) -> str:
    """How a missing device's `tensor` is filled: 'mean' where a pooling aggregator reads it (through
    a reshape into the device stack), 'zeros' where a concatenation does."""
    reader = next(n for n in graph.nodes if tensor in n.inputs)
    return "mean" if reader.op == "reshape" else "zeros"


def fill_missing(graph: Graph, names: list, present: dict) -> dict:
    """{tensor: array} for every device tensor in `names`: the present ones as given, the missing ones
    filled (fill_rule) from the present ones. Arrays may carry a batch of frames."""
    if not present:
        raise PisplitError("multi-view: every end device is missing")
    mean = np.mean(np.stack(list(present.values())), axis=0, dtype=np.float32)
    out = {}
    for t in names:
        if t in present:
            out[t] = present[t]
        else:
            out[t] = mean.copy() if fill_rule(graph, t) == "mean" else np.zeros_like(mean)
    return out


def parse_missing(text: str | None, n_devices: int) -> list[int]:
    """'1,3' -> [1, 3]: devices absent from the run; raises PisplitError for unknown or all devices."""
    if not text:
        return []
    try:
        missing = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise PisplitError(f"--missing {text}: expected device numbers, e.g. 1,3") from None
    if any(not 0 <= d < n_devices for d in missing) or len(missing) >= n_devices:
        raise PisplitError(f"--missing {text}: devices are 0-{n_devices - 1} and at least one must be present")
    return missing


def multiview_reference(model: MultiViewModel, feeds: dict, missing: list, threshold: float) -> dict:
    """One process, every frame at once: {'exit_index' (0 local exit, 1 final), exit name: (F, C),
    final name: (F, C) NaN where the local exit answered, 'local_all' and 'final_all' (both computed
    for every frame, for accuracy tables)}."""
    present = [d for d in range(model.n_devices) if d not in missing]
    outs = {d: model.devices[d].execute({model.views[d]: feeds[model.views[d]]}) for d in present}
    scores = fill_missing(model.graph, model.scores, {model.scores[d]: outs[d][model.scores[d]] for d in present})
    local = model.local.execute(scores)[model.exit_name]
    features = fill_missing(model.graph, model.features, {model.features[d]: outs[d][model.features[d]] for d in present})
    final = model.cloud.execute(features)[model.final_name]
    kind = "probabilities" if any(n.op == "softmax" and model.exit_name in n.outputs for n in model.graph.nodes) else "logits"
    exits = normalised_entropy(local.reshape(len(local), -1), kind) <= threshold
    shown = final.copy()
    shown[exits] = np.nan
    return {"exit_index": np.where(exits, 0, 1).astype(np.int64), model.exit_name: local, model.final_name: shown,
            "local_all": local, "final_all": final}


# --- under mpirun --------------------------------------------------------------------------------------------
class ViewEmulation:
    """One rank of an emulated multi-view run (`pisplit exits MODEL --run --emulate`): its compute
    steps are padded to `slowdown` x their CPU time (the emulated device's time, as cluster.emulation
    dilates pipeline ranks) and each message it sends first occupies its link (LinkPacer: latency +
    bytes / bandwidth, one transfer at a time), as a pipeline rank's sends do."""

    def __init__(self, slowdown: float, link_bps: float, latency_s: float = 0.0):
        from .emulation import LinkPacer

        self.slowdown = float(slowdown)
        self.link = LinkPacer(float(link_bps), float(latency_s))
        self.host_speed: float | None = None  # this machine's speed, where measured (the dilation divides by it)

    def compute(self, fn):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        out = fn()
        left = wall0 + (time.process_time() - cpu0) * self.slowdown - time.perf_counter()
        if left > 0:
            time.sleep(left)
        return out

    def send(self, nbytes: int) -> None:
        """Hold this rank until a message of `nbytes` handed to its link now would have left."""
        end, _ = self.link.schedule(int(nbytes))
        left = end - time.time()
        if left > 0:
            time.sleep(left)


class _Native:
    """A multi-view rank that is not emulated: compute as is, sends leave at once."""

    @staticmethod
    def compute(fn):
        return fn()

    @staticmethod
    def send(nbytes: int) -> None:
        pass


def _wait(requests, what: str, timeout_s: float) -> None:
    from . import transport

    t = time.perf_counter()
    pause = 2e-5
    while not all(transport.request_done(r) for r in requests):
        if time.perf_counter() - t > timeout_s:
            raise PisplitError(f"multi-view: {what} for {timeout_s:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)


def run_multiview(comm, model: MultiViewModel, feeds: dict | None, frames: int, missing: list, threshold: float,
                  timeout_s: float = 60.0, window: int = 4, emulation: ViewEmulation | None = None) -> dict | None:
    """Collective over `comm` (1 + present devices ranks): rank 0 aggregates, rank 1 + i is present
    device i. `feeds` on a device rank: its view's frames {view: (F, ...)} (F >= frames). Returns on
    rank 0 {'exit_index', exit name, final name (NaN where not computed), 'bytes_per_frame' (received
    from the devices, mean), 'seconds'}; None elsewhere.

    Pipelined over `window` frames (1: one frame at a time): a device computes its next frames while
    rank 0 decides earlier ones, waiting for rank 0's word on a frame only when `window` of its frames
    are undecided; rank 0 decides frames in order as their scores arrive and runs the cloud part of a
    frame whose features have come while later frames' scores are still on their way. Every message
    of a kind between two ranks is in frame order (MPI keeps the order of messages with one tag between
    two ranks, and receives match in the order they were posted), so each is checked against its frame.
    Nothing waits longer than `timeout_s` without progress: a one-line error says what is missing.

    `emulation` (this rank's ViewEmulation): compute steps take the emulated device's time and
    sends leave over its paced link."""
    from collections import deque

    from . import transport

    if window < 1:
        raise PisplitError(f"multi-view: window {window}: must be at least 1")
    present = [d for d in range(model.n_devices) if d not in missing]
    rank, size = comm.Get_rank(), comm.Get_size()
    if size != len(present) + 1:
        raise PisplitError(f"multi-view: {len(present)} present devices need mpirun -n {len(present) + 1}, this run has {size}")
    kind = "probabilities" if any(n.op == "softmax" and model.exit_name in n.outputs for n in model.graph.nodes) else "logits"
    shapes = model.graph.shapes
    emu = emulation or _Native()
    t0 = time.perf_counter()
    if rank > 0:
        d = present[rank - 1]
        x = feeds[model.views[d]]
        pending: deque = deque()  # (frame, features, word request, word): frames whose word has not been read
        sends: list = []  # (request, buffer) of scores and features still leaving

        def settle() -> None:
            f, feature, request, word = pending.popleft()
            _wait([request], f"frame {f}: no word from rank 0 to device {d}", timeout_s)
            if int(word[0]) != f:
                raise PisplitError(f"multi-view: device {d} expected word on frame {f}, got frame {int(word[0])}")
            if word[1]:
                emu.send(feature.nbytes)
                sends.append((transport.isend_buffer(comm, feature, 0, TAG_FEATURES), feature))

        for f in range(frames):
            while pending and (len(pending) >= window or transport.request_done(pending[0][2])):
                settle()
            out = emu.compute(lambda: model.devices[d].execute({model.views[d]: x[f:f + 1]}))
            score = np.ascontiguousarray(out[model.scores[d]], np.float32)
            feature = np.ascontiguousarray(out[model.features[d]], np.float32)
            emu.send(score.nbytes)
            sends.append((transport.isend_buffer(comm, score, 0, TAG_SCORES), score))
            word = np.zeros(2, np.int64)
            pending.append((f, feature, transport.irecv_buffer(comm, word, 0, TAG_WORD), word))
            sends = [(r, b) for r, b in sends if not transport.request_done(r)]
        while pending:
            settle()
        _wait([r for r, _ in sends], f"rank 0 did not take device {d}'s last scores and features", timeout_s)
        return None
    index = np.zeros(frames, np.int64)
    local_out = np.full((frames, *shapes[model.exit_name][1:]), np.nan, np.float32)
    final_out = np.full((frames, *shapes[model.final_name][1:]), np.nan, np.float32)
    received = 0
    posted: dict = {}  # frame -> ({device: scores buffer}, requests)
    waiting: deque = deque()  # (frame, {device: features buffer}, requests): frames going on to the cloud
    words: list = []  # (request, buffer) of words still leaving
    next_post = next_decide = 0
    last, pause = time.perf_counter(), 2e-5
    while next_decide < frames or waiting:
        while next_post < min(frames, next_decide + window):
            bufs = {dv: np.empty(shapes[model.scores[dv]], np.float32) for dv in present}
            posted[next_post] = (bufs, [transport.irecv_buffer(comm, bufs[dv], 1 + i, TAG_SCORES) for i, dv in enumerate(present)])
            next_post += 1
        progressed = False
        if next_decide < frames and all(transport.request_done(r) for r in posted[next_decide][1]):
            f = next_decide
            bufs, _ = posted.pop(f)
            received += sum(b.nbytes for b in bufs.values())
            scores = fill_missing(model.graph, model.scores, {model.scores[dv]: bufs[dv] for dv in present})
            local = emu.compute(lambda: model.local.execute(scores)[model.exit_name])
            local_out[f] = local[0]
            go = int(normalised_entropy(local.reshape(1, -1), kind)[0] > threshold)
            for i, _ in enumerate(present):
                w = np.array([f, go], np.int64)
                emu.send(w.nbytes)
                words.append((transport.isend_buffer(comm, w, 1 + i, TAG_WORD), w))
            index[f] = go
            if go:
                feats = {dv: np.empty(shapes[model.features[dv]], np.float32) for dv in present}
                waiting.append((f, feats, [transport.irecv_buffer(comm, feats[dv], 1 + i, TAG_FEATURES) for i, dv in enumerate(present)]))
            next_decide += 1
            progressed = True
        if waiting and all(transport.request_done(r) for r in waiting[0][2]):
            f, feats, _ = waiting.popleft()
            received += sum(b.nbytes for b in feats.values())
            filled = fill_missing(model.graph, model.features, {model.features[dv]: feats[dv] for dv in present})
            final_out[f] = emu.compute(lambda: model.cloud.execute(filled)[model.final_name])[0]
            progressed = True
        words = [(r, w) for r, w in words if not transport.request_done(r)]
        now = time.perf_counter()
        if progressed:
            last, pause = now, 2e-5
            continue
        if now - last > timeout_s:
            what = (f"frame {next_decide}: scores missing from devices {present}" if next_decide < frames
                    else f"frame {waiting[0][0]}: features missing from devices {present}")
            raise PisplitError(f"multi-view: {what} for {timeout_s:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)
    _wait([r for r, _ in words], "devices did not take rank 0's last words", timeout_s)
    return {"exit_index": index, model.exit_name: local_out, model.final_name: final_out,
            "bytes_per_frame": received / max(frames, 1), "seconds": time.perf_counter() - t0}
