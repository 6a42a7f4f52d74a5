"""The cost model: seconds and memory of a pipeline stage on a set of devices, per frame.

A stage is nodes [i, j) on `counts[k]` devices of each device class k, in one mode:

- single: one device runs every node. compute = sum of its node seconds.
- data-parallel: every device holds the whole stage and takes whole frames in turn (round-robin).
  Its period is max(T_r) / replicas, its latency that of the slowest replica.
- split: the devices cooperate on every frame. The stage's segments each run on the lead (kind
  "none") or split across all its devices with one split kind, part sizes weighted by device speed.
  A split segment costs its slowest part plus the lead's scatter and gather (the lead's one network
  interface sends and receives each part's bytes in turn), except where consecutive split segments
  keep the tensor between them on their parts (output_layout 'parts'): that boundary costs the
  peer-to-peer layout transition instead of the gather and the scatter. The segments' options and
  boundaries are the best chain (partitioners.segment_chains), the same the dp planner finds.

Communication between stages: the tensors live across a cut (Graph.cut_tensors) sent together as one
message, `latency + bytes * 8 / bandwidth` (the runtime packs a frame's tensors into one buffer,
cluster.runtime.FrameCodec / cluster.link_codecs; a message per tensor priced branchy AlexNet's
five-tensor result at 1.52 ms against 0.32 ms as sent). A transfer occupies the link, and the ranks
only in part (issue 18): the sender hands the frame to its network interface and computes on while the
kernel sends the last SEND_OVERLAP_BYTES of it; the rest leaves while the sender is in MPI calls (it
cannot compute meanwhile: `send_hold`). The receiver, whose receive is posted ahead, finds the frame
there. Each rank's interface carries its transfers one after another, each direction on its own (full
duplex). So a stage's period is the largest of its rank's cycle (compute, its sends' holds, and a link
codec's encode and decode, `transfer - wire`) and its interface's time in each direction (`wire`:
latency and bytes); its latency counts its compute and its whole send. Holding both ends for the whole
transfer, as this model did before, priced a send-heavy throughput plan (AlexNet conv1-pool2 on one Pi
3B+ feeding two data-parallel Pis, 169 KiB a frame at 94 Mbit/s) 19% slow against the same plan over
real TCP through tc-shaped links (scripts/bench_netns: 12.11 frames/s against 10.13 predicted), and
overlapping whole transfers priced AlexNet on 3 data-parallel Pi 3B+ (rank 0 sends two 618 KB inputs
a round) 29% fast there (10.61 frames/s against 13.64). Rank 0 is also where frames come from and
results go back to (see LinkTerms). A data-parallel stage deals frames round-robin, so it takes
`replicas` frames per round of its slowest replica.

Memory per rank: the weights it holds (only its parts of split segments), the largest working set
among its nodes (live tensors, outputs, working buffers) and the frame buffers of a pipeline rank
(frame_buffer_bytes), against the device's usable memory (memory less what the OS and the rank's own
process take, see the device profiles). Quantized models add what every rank holds of the model whatever
its stage (model_held_bytes: quantization parameters, file pages, integer code) and the int8 pair tables
a node's kernel keeps (engine_kept_bytes); int8 nodes' working sets are their kernels' bands (issue 12).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph

from .devices import device_profile
from .plan import Device
from .profiles import Calibration
from .segment_chains import best_chain, chain_seconds, kept_flags
from .segment_columns import EXCHANGE
from .segment_table import OPTION_KINDS, SegmentTable, build_segment_table
from .split_costs import SplitCatalogue, span_length
from .split_quant import planner_kinds
from .vocabulary import NO_SPLIT, StageMode

INF = math.inf
MODES = (StageMode.SINGLE, StageMode.DATA_PARALLEL, StageMode.SPLIT)  # the order the exhaustive planner tries them
# cluster.runtime's default window: an entry rank keeps this many receives posted ahead and sends
# outstanding, so it holds window + 1 frames of its input (the one it computes) and of its output
# (the one it has just made)
RUNTIME_WINDOW = 2
FRAME_BUFFERS = RUNTIME_WINDOW + 1
# Bytes of a message that leave while its sender computes (no MPI progress thread, as on a Pi): what the
# sender's last MPI calls before the compute handed to the kernel. Open MPI 5's ob1/tcp sends a large
# message's first 64 KiB at once and, once the receiver's acknowledgement is read at the sender's next MPI
# call, up to 3 fragments of 128 KiB (pml_ob1_send_pipeline_depth, btl_tcp_max_send_size); the kernel's
# socket buffer carries them on. Fitted to the network-namespace cluster (real TCP through tc-shaped 94
# Mbit/s veth links, ranks dilated to Pi 3B+, scripts/bench_netns): AlexNet on 3 data-parallel Pis, whose
# rank 0 sends two 618 KB inputs per 220 ms round of its own compute, ran at 10.61 frames/s, 62.7 ms a
# round more than its compute: 2 x (618 KB - 256 KiB) at 94 Mbit/s is 60.6 ms.
SEND_OVERLAP_BYTES = 256 << 10


def working_sets(graph: Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cut, work, scratch): bytes live across every cut 0..n; per node, its working set (what is
    live before it, its outputs and its scratch buffers) and, of that, the im2col buffer the numpy
    kernels keep from node to node."""
    costs = [graph.cost(i) for i in range(len(graph))]
    cut = np.array([graph.cut_bytes(c) for c in range(len(graph) + 1)], dtype=float)
    work = np.array([cut[t] + c.output_bytes + c.work_bytes for t, c in enumerate(costs)], dtype=float)
    return cut, work, np.array([c.scratch_bytes for c in costs], dtype=float)


def held_work_bytes(work: np.ndarray, scratch: np.ndarray, start: int, stop: int) -> float:
    """Largest working set of nodes [start, stop) run in one process, the kept im2col buffer (the
    largest of the nodes') counted once beside each node's other buffers."""
    kept = scratch[start:stop]
    return float((work[start:stop] - kept).max() + kept.max())


def frame_buffer_bytes(cut: np.ndarray, start, stop, replicas: int, entry: bool, lead: bool, window: int = RUNTIME_WINDOW):
    """Frame buffers of one rank of a stage over nodes [start, stop) (cluster.runtime), `cut` the
    bytes live at every cut: an entry rank holds window + 1 frames of its input and of its output.
    Rank 0, the lead of the first stage, makes each input frame itself (one at a time), keeps
    window + 1 of them leaving for each other replica of that stage and posts `window` receives
    for results. `start` and `stop` may be index arrays (planner_dp's tables), giving an array."""
    if not entry:
        return 0.0
    frames = window + 1
    start, stop = np.asarray(start), np.asarray(stop)
    held = frames * cut[stop] + frames * cut[start]
    if lead:
        source = (1 + frames * (replicas - 1)) * cut[0] + window * cut[-1]
        held = np.where(start == 0, frames * cut[stop] + source, held)
    return float(held) if held.ndim == 0 else held


# Bytes the litert engine holds per byte of a node's weights beyond the graph's own copy: the exported
# flatbuffer (kept by the interpreter), XNNPACK's packed weights and LiteRT's arena, measured as a rank's
# RSS growth (cluster.runtime.current_rss_bytes after settle_baseline) from building the LiteRTEngine and
# running one frame, over the graph's weight bytes: ResNet50 float32 303 MiB / 97.4 MiB = 3.11, ResNet50
# int8 108 MiB / 24.4 MiB = 4.44 (MobileNetV2 3.60 and 4.64, where the arena weighs more), 1 thread
# (/tmp script in the issue 12 report). The numpy engine holds the graph's weights only. Each figure is
# one copy less since layers.tflite hands a copied weight's file pages back (ResNet50 float32 3.04 -> 2.04,
# int8 3.11 -> 2.13, dynamic-range 3.26 -> 2.27 in the same measurement); a dynamic-range layer's int8
# weights count as int8 (LiteRT packs them as int8 for its hybrid kernels).
LITERT_EXTRA_WEIGHT_COPIES = {"float": 2.1, "int8": 3.4}


def engine_weight_factors(graph: Graph, engine: str) -> np.ndarray:
    """Per node: a rank's bytes per byte of the node's weights on `engine` (1 + the engine's extra copies)."""
    n = len(graph)
    if engine != "litert":
        return np.ones(n)
    extra = LITERT_EXTRA_WEIGHT_COPIES
    int8 = [graph.nodes[i].attrs.get("quantized") or graph.nodes[i].weight_key("kernel") in graph.quant for i in range(n)]
    return np.array([1.0 + (extra["int8"] if q else extra["float"]) for q in int8])


# Bytes a rank holds per quantization value (a scale with its zero point) of the model it loads, whatever
# its shard: every rank reads the whole graph, whose quantization is Python data (the graph's meta lists
# and its TensorQuants, a float object and a slot each). Fitted to the anonymous memory a rank of an int8
# corpus model holds above its baseline once the model is loaded and its shard graph made, weights not yet
# read (cluster.runtime: preload, settle, load_model, shard_graph): ResNet50 int8 5.6 MiB for 54196 values
# (108 B a value), MobileNetV2 int8 4.4 MiB for 35178 (132 B); the rest of the graph's description (names,
# shapes), which float models hold too, is not counted apart.
QUANT_VALUE_BYTES = 120
# Code pages of numpy's integer loops a rank running int8 or hybrid kernels touches (after the baseline,
# which runs only float code): _multiarray_umath +1.09 MiB for ResNet50 int8, +0.97 MiB for MobileNetV2 int8.
# Counted on the litert engine too (LiteRT's own code is inside LITERT_EXTRA_WEIGHT_COPIES' measurement, so
# this is at most 1 MiB too many there), so the two engines' plans differ by the weight copies alone.
INT8_CODE_BYTES = 1 << 20
# Reading a .tflite's tensor records faults in the file's pages around each constant's bytes (Linux maps a
# 64 KiB window around a faulting page of a file mapping), and every rank keeps those of the weights it does
# not load (the pages of the weights it loads are its weights, or handed back once copied, layers.tflite):
# ResNet50 int8 kept 3.64 MiB of its file after the import, 1.0 MiB once a rank had loaded every weight;
# MobileNetV2 int8 1.58 and 0.7 MiB. Counted in every rank as this many bytes of each weight at most (the
# middle of the two cases: a rank without weights holds more, one with all of them less; ResNet50 int8
# 1.65 MiB, MobileNetV2 int8 0.82 MiB).
FILE_WINDOW_BYTES = 32 << 10


def _quantized_tflite(graph: Graph) -> bool:
    return bool(graph.quant) and graph.meta.get("source") == "tflite"


def file_page_bytes(graph: Graph) -> np.ndarray:
    """Per node: bytes of the model file's pages around its weights the import leaves resident in a rank
    (FILE_WINDOW_BYTES a weight at most): quantized .tflite graphs only (float ones are not counted)."""
    if not _quantized_tflite(graph):
        return np.zeros(len(graph))
    return np.array([sum(min(graph.tensor_bytes(n.weight_key(p), s), FILE_WINDOW_BYTES) for p, s in n.weight_shapes.items())
                     for n in graph.nodes], dtype=float)


def model_held_bytes(graph: Graph) -> float:
    """What a rank holds of `graph` whatever nodes it runs (every rank loads the whole graph): its
    quantization parameters (QUANT_VALUE_BYTES each), the model file's pages around its weights
    (file_page_bytes) and the integer kernels' code (INT8_CODE_BYTES); 0 for float graphs. The same on
    every engine."""
    values = sum(len(q.scale) for q in graph.quant.values())
    if not values:
        return 0.0
    return float(QUANT_VALUE_BYTES * values + file_page_bytes(graph).sum() + INT8_CODE_BYTES)


def engine_kept_bytes(graph: Graph, engine: str) -> np.ndarray:
    """Per node: bytes its kernels keep from frame to frame on `engine` besides its weights (the numpy
    engine's int8 pair tables, layers.qkernels.kept_bytes)."""
    if engine == "litert" or not graph.quantized:
        return np.zeros(len(graph))
    from layers.qkernels import kept_bytes

    return np.array([kept_bytes(graph, i) for i in range(len(graph))], dtype=float)


def shard_memory_bytes(graph: Graph, start: int, stop: int) -> float:
    """What CostModel.stage_cost predicts for one rank running nodes [start, stop) as a single stage on the
    numpy engine (weights and what its kernels keep, held working set, frame buffers, the model's
    description), without a cluster: for plans made outside the planner (cluster.emulated_plans.balanced_plan)."""
    cut, work, scratch = working_sets(graph)
    weights = sum(graph.cost(i).weight_bytes for i in range(start, stop)) + float(engine_kept_bytes(graph, "numpy")[start:stop].sum())
    return float(weights + held_work_bytes(work, scratch, start, stop) + frame_buffer_bytes(cut, start, stop, 1, True, True)
                 + model_held_bytes(graph))


@dataclass(frozen=True)
class Cluster:
    """The devices a plan may use (ranks 0..n-1) and the link between them."""

    devices: tuple
    link_bandwidth_bps: float
    link_latency_s: float = 0.0

    def __post_init__(self):
        if not self.devices:
            raise PisplitError("cluster: no devices")
        if self.link_bandwidth_bps <= 0:
            raise PisplitError(f"cluster: link bandwidth {self.link_bandwidth_bps} bit/s is not positive")


def make_cluster(entries: list, link_bps: float | None = None, link_latency_s: float | None = None,
                 hosts: list | None = None) -> Cluster:
    """A Cluster from (kind, count, memory or None) entries; the link defaults to the slowest device's Ethernet."""
    devices = []
    for kind, count, memory in entries:
        prof = device_profile(kind)
        if memory is not None and memory <= prof.reserved_bytes:
            raise PisplitError(f"devices {kind}@{memory / (1 << 20):.0f}M: no more than the {prof.reserved_bytes / (1 << 20):.0f} MiB "
                               f"a {kind}'s OS and rank process take ({prof.path})")
        for _ in range(int(count)):
            rank = len(devices)
            host = hosts[rank] if hosts and rank < len(hosts) else None
            devices.append(Device(rank, prof.kind, int(memory) if memory else prof.memory_bytes, host))
    kinds = {d.kind for d in devices}
    if link_bps is None:
        link_bps = min(device_profile(k).ethernet_bps for k in kinds) if kinds else 0.0
    if link_latency_s is None:
        link_latency_s = max((device_profile(k).link_latency_s for k in kinds), default=0.0)
    return Cluster(tuple(devices), float(link_bps), float(link_latency_s))


@dataclass(frozen=True)
class DeviceClass:
    """Devices that are interchangeable for the planner: same kind, memory and speed."""

    index: int
    kind: str
    memory_bytes: int
    usable_bytes: int
    seconds_scale: float  # device seconds = profile seconds * seconds_scale
    ranks: tuple  # cluster ranks of this class

    @property
    def count(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class SegmentOption:
    """One way to run a segment in a split stage: unsplit on the lead, or split with a kind."""

    segment: int
    kind: str  # "none" or a split kind
    sizes: tuple  # one part size per slot it uses, the stage's first ones (empty for "none")
    split_stop: int  # the split covers [segment start, split_stop); the rest runs on the lead
    compute_s: float
    comm_s: float
    weight_bytes: tuple  # per stage slot
    work_bytes: tuple  # per stage slot: its largest working set in this segment
    output_layout: str = "lead"  # 'parts': the output stays on the parts for the next segment (in a chain)

    @property
    def seconds(self) -> float:
        """Compute plus the lead's scatter and gather, as if alone (a chain may drop the latter two)."""
        return self.compute_s + self.comm_s


@dataclass(frozen=True)
class LinkTerms:
    """Transfers of one stage per frame, in seconds of one kind (CostModel.link_terms: a frame's whole
    wait, the link's part or the ranks' part).

    Rank 0 is the first rank of the first stage and also the source (it hands each frame's input to
    the first stage's entry rank) and the sink (every result comes back to it). So the lead of the
    first stage receives nothing but, when the model has more stages, receives every result; a
    data-parallel first stage's rank 0 sends the input of every frame another replica takes and gets
    their results; a last stage not on rank 0 sends its result there.
    """

    lead_in: float  # the lead (replica 0) receives the stage's input
    lead_out: float  # ... sends its output (to the next stage or, for the last stage, to rank 0)
    sink: float  # rank 0 receives a result from a later stage (first stage of several)
    replica_in: float  # other replicas of a data-parallel stage
    replica_out: float
    replica_in_latency: float  # what a frame waits for its input at another replica (first stage only)
    source: float  # rank 0 sends one input to another replica (first stage)
    result: float  # rank 0 receives one result
    last: bool

    def source_cycle(self, replicas: int) -> float:
        """Rank 0's extra transfers per round of `replicas` frames in a data-parallel first stage."""
        if not self.source:
            return 0.0
        return (replicas - 1) * self.source + self.result_cycle(replicas)

    def result_cycle(self, replicas: int) -> float:
        """Of source_cycle, the results rank 0 receives per round (every frame's but its own in a last stage)."""
        if not self.source:
            return 0.0
        return (replicas if not self.last else replicas - 1) * self.result


def lead_period(seconds, busy: "LinkTerms", wire: "LinkTerms"):
    """Period of a stage whose lead (its one device, or a split stage's lead) spends `seconds` a frame on
    its nodes (a split stage: its segments' compute, scatters and gathers): that plus what its
    stage-to-stage transfers cost the lead itself, or its interface's time for them in either direction
    if longer (they overlap the rest). `seconds` may be an array (planner_dp); the terms' fields then too."""
    return np.maximum(seconds + busy.lead_in + busy.lead_out + busy.sink, np.maximum(wire.lead_in + wire.sink, wire.lead_out))


@dataclass(frozen=True)
class StageCost:
    """What one stage costs: per-frame times, per-slot memory and, for split stages, its segments."""

    start: int
    stop: int
    counts: tuple
    mode: str
    compute_s: float
    comm_s: float
    period_s: float  # seconds between frames this stage can take (throughput = 1 / max period)
    latency_s: float  # seconds this stage adds to one frame's end-to-end time
    slots: tuple  # class index of each rank in the stage, lead first
    memory_bytes: tuple  # per slot
    feasible: bool
    segments: tuple = ()  # SegmentOption per segment, split mode only
    short: tuple | None = None  # (slot, node index, bytes short) of the worst memory overflow


class CostModel:
    """Stage costs of one graph on one cluster, with every per-node quantity computed once."""

    def __init__(self, graph: Graph, cluster: Cluster, calibration: Calibration | None = None,
                 splits: SplitCatalogue | None = None, codecs=None, codec_budget=None):
        self.graph = graph
        # link codecs (partitioners.link_pricing.CodecTable) the stage-to-stage transfers may use, and
        # what a lossy one may cost (link_pricing.LossBudget; None: lossless codecs only)
        self.codecs = codecs
        self.codec_budget = codec_budget
        self.cluster = cluster
        self.calibration = calibration or Calibration()
        # what every rank holds of the model whatever its stage (model_held_bytes): outside the room
        # its stage has (usable), inside the memory each StageCost reports (_finish)
        self.model_bytes = model_held_bytes(graph)
        self.splits = splits if splits is not None else SplitCatalogue(graph, **planner_kinds(graph, self.calibration.engine))
        n = self.n = len(graph)
        self.classes = self._classes()
        self.class_of_rank = {r: c.index for c in self.classes for r in c.ranks}
        # per class: seconds of every node on one device of the class, and their prefix sums
        host = [self._host_seconds(i) for i in range(n)]
        self.node_seconds = np.array([[h[c.kind] * c.seconds_scale for h in host] for c in self.classes]).reshape(len(self.classes), n)
        self.prefix_seconds = np.concatenate([np.zeros((len(self.classes), 1)), np.cumsum(self.node_seconds, axis=1)], axis=1)
        costs = [graph.cost(i) for i in range(n)]
        self.weight_bytes = np.array([c.weight_bytes for c in costs], dtype=float)
        # what the rank's engine holds on top of the graph's own weights (litert: its flatbuffer and packed copies)
        self.engine_weight_factor = engine_weight_factors(graph, self.calibration.engine)
        self.weight_bytes *= self.engine_weight_factor
        self.weight_bytes += engine_kept_bytes(graph, self.calibration.engine)  # held like weights (int8 pair tables)
        self.prefix_weights = np.concatenate([[0.0], np.cumsum(self.weight_bytes)])
        # bytes live at every cut; each node's working set and the kept im2col buffer within it
        self.cut_bytes, self.work_bytes, self.scratch_bytes = working_sets(graph)
        self.cut_messages = np.array([min(1, len(graph.cut_tensors(c))) for c in range(n + 1)], dtype=float)  # one buffer a frame
        # cut 0 is the input rank 0 (the source) hands out, cut n the result it (the sink) gets back
        priced = [self.cut_transfer(c, wire=True) for c in range(n + 1)]
        self.transfer = np.array([seconds for seconds, _, _ in priced])  # a frame's wait for the transfer (latency)
        self.wire = np.array([wire for _, wire, _ in priced])  # ... of which the link carries the bytes (period)
        # (the sender's share, send_hold, and the codecs', transfer - wire, follow from these two)
        self.cut_codec = [codec for _, _, codec in priced]  # the codec each cut's transfer is priced with
        seg = self.splits.segments
        self.segment_bounds = np.array([s for s, _ in seg] + [n])
        self.segment_at = {s: k for k, (s, _) in enumerate(seg)}  # node index -> segment starting there
        self.segment_work_max = np.array([self.work_bytes[a:b].max() for a, b in seg])
        self._tables: dict = {}
        self._rows: dict = {}

    # --- devices -------------------------------------------------------------------------------------
    def _classes(self) -> list[DeviceClass]:
        groups: dict = {}
        for d in self.cluster.devices:
            groups.setdefault((d.kind, d.memory_bytes, float(d.speed)), []).append(d.rank)
        classes = []
        for (kind, memory, speed), ranks in groups.items():
            _, scale = self.calibration.resolve(kind)
            reserved = device_profile(kind).reserved_bytes
            classes.append((scale / speed, kind, memory, max(memory - reserved, 0), tuple(ranks)))
        classes.sort(key=lambda c: (c[0], -c[2], c[4]))  # fastest first: the lead of a mixed stage
        return [DeviceClass(k, kind, memory, usable, scale, ranks) for k, (scale, kind, memory, usable, ranks) in enumerate(classes)]

    def _host_seconds(self, index: int) -> dict:
        out = {}
        for kind in {c.kind for c in self.classes}:
            out[kind] = self.calibration.node_seconds(kind, self.graph, index)  # int8 nodes at the kind's int8 rate
        return out

    @property
    def capacity(self) -> tuple:
        """Devices per class."""
        return tuple(c.count for c in self.classes)

    def usable(self, k: int) -> float:
        """Bytes a stage may use on a device of class k: its usable memory less the model's description
        every rank holds (model_bytes)."""
        return float(self.classes[k].usable_bytes) - self.model_bytes

    def message_seconds(self, nbytes: float, messages: float = 1.0) -> float:
        """Seconds to send `nbytes` as `messages` messages over the link (0 for nothing)."""
        if nbytes <= 0:
            return 0.0
        return messages * self.cluster.link_latency_s + nbytes * 8.0 / self.cluster.link_bandwidth_bps

    def cut_transfer(self, cut: int, wire: bool = False) -> tuple:
        """(seconds, codec) of sending the tensors live across `cut` once: the plain link
        (message_seconds) or, with a codec table, the cheapest admissible codec, encode and decode
        priced at the slowest device class (partitioners.link_pricing); cut 0 is the input rank 0
        sends (Plan.input_codec), the results (cut n) always travel raw. With `wire`: (seconds, the
        link's part of them, codec)."""
        if self.codecs is None or not 0 <= cut < self.n:
            seconds = self.message_seconds(self.cut_bytes[cut], self.cut_messages[cut])
            return (seconds, seconds, "raw") if wire else (seconds, "raw")
        from .link_pricing import choose_codec_wire

        scale = max(c.seconds_scale for c in self.classes)
        seconds, on_link, codec = choose_codec_wire(self.codecs.cut(cut), float(self.cut_bytes[cut]), float(self.cut_messages[cut]),
                                                    self.cluster.link_bandwidth_bps, self.cluster.link_latency_s, scale, scale,
                                                    self.codec_budget)
        return (seconds, on_link, codec) if wire else (seconds, codec)

    @staticmethod
    def slots_of(counts: tuple) -> tuple:
        """Class index of every rank of a stage with `counts` devices per class, lead (fastest) first."""
        return tuple(k for k, c in enumerate(counts) for _ in range(c))

    # --- split segments ------------------------------------------------------------------------------
    def segment_table(self, slots: tuple) -> SegmentTable:
        """Every option of every segment for a stage with these slots (cached per slots)."""
        hit = self._tables.get(slots)
        if hit is None:
            hit = self._tables[slots] = build_segment_table(self, slots)
            for k, (a, b) in enumerate(self.splits.segments):  # split parts: the engine's copies too (option 0 has them)
                hit.weight_bytes[k, 1:, :] *= float(self.engine_weight_factor[a:b].max(initial=1.0))
        return hit

    def split_rows(self, kind: str) -> list[int]:
        """Segments that `kind` applies to."""
        if kind not in self._rows:
            d = span_length(kind)
            self._rows[kind] = [s for s in range(len(self.splits.segments))
                                if (kind in self.splits.kinds(s) if d is None else d in self.splits.spans(s))]
        return self._rows[kind]

    def segment_options(self, segment: int, slots: tuple) -> tuple:
        """Every way to run a segment in a split stage with these slots, 'none' first."""
        table = self.segment_table(slots)
        out = []
        for o, kind in enumerate(OPTION_KINDS):
            if not np.isfinite(table.compute_s[segment, o]):
                continue
            out.append(SegmentOption(segment, kind, table.sizes.get((segment, o), ()), int(table.split_stop[segment, o]),
                                     float(table.compute_s[segment, o]), float(table.comm_s[segment, o]),
                                     tuple(float(v) for v in table.weight_bytes[segment, o]),
                                     tuple(float(v) for v in table.work_bytes[segment, o])))
        return tuple(out)

    def _option(self, segment: int, slots: tuple, option: int) -> SegmentOption:
        """The SegmentOption of column `option` (OPTION_KINDS) of a segment."""
        return next(o for o in self.segment_options(segment, slots) if o.kind == OPTION_KINDS[option])

    # --- stages --------------------------------------------------------------------------------------
    def stage_cost(self, start: int, stop: int, counts: tuple, mode: str, forced: dict | None = None) -> StageCost | None:
        """Cost of nodes [start, stop) on `counts` devices per class in `mode`; None when the mode does
        not apply (single needs one device, the others two or more; split needs segment boundaries).

        `forced` maps segment index -> kind to impose in a split stage (the baselines use it).
        """
        m = sum(counts)
        slots = self.slots_of(counts)
        if m < 1 or not 0 <= start < stop <= self.n:
            return None
        link = self.link_terms(start, stop)
        wire, busy = self.link_terms(start, stop, "wire"), self.link_terms(start, stop, "rank")
        if mode in (StageMode.SINGLE, StageMode.DATA_PARALLEL):
            if (mode == StageMode.SINGLE) != (m == 1):
                return None
            weights = float(self.prefix_weights[stop] - self.prefix_weights[start])
            work = self.held_work_bytes(start, stop)
            computes = [float(self.prefix_seconds[k, stop] - self.prefix_seconds[k, start]) for k in slots]
            memory = tuple(weights + work + self.frame_buffer_bytes(start, stop, m, slot == 0 or mode == StageMode.DATA_PARALLEL, slot == 0)
                           for slot in range(m))
            if mode == StageMode.SINGLE:
                period = float(lead_period(computes[0], busy, wire))
                return self._finish(start, stop, counts, mode, computes[0], period - computes[0], period,
                                    computes[0] + link.lead_out, slots, memory, ())
            # per round of m frames: the lead (rank 0 of a first stage: the source's inputs out, every result in)
            cycle = [max(computes[0] + busy.lead_in + busy.lead_out + busy.source_cycle(m),
                         wire.lead_in + wire.result_cycle(m), wire.lead_out + (m - 1) * wire.source)]
            cycle += [max(c + busy.replica_in + busy.replica_out, wire.replica_in, wire.replica_out) for c in computes[1:]]
            latency = max([computes[0] + link.lead_out] + [c + link.replica_in_latency + link.replica_out for c in computes[1:]])
            return self._finish(start, stop, counts, mode, max(computes), max(cycle) - max(computes), max(cycle) / m,
                                latency, slots, memory, ())
        if mode != StageMode.SPLIT or m < 2 or start not in self.segment_at or (stop != self.n and stop not in self.segment_at):
            return None
        first, last = self.segment_at[start], (self.segment_at[stop] if stop < self.n else len(self.splits.segments))
        lead_buffers = self.frame_buffer_bytes(start, stop, 1, True, True)
        chosen, inner, memory = self.split_choice(first, last - 1, slots, lead_buffers, forced)
        if all(o.kind == NO_SPLIT for o in chosen):
            return None  # nothing split: one device with idle others, which single mode already covers
        compute = sum(o.compute_s for o in chosen)
        period = float(lead_period(inner, busy, wire))
        return self._finish(start, stop, counts, mode, compute, period - compute, period, inner + link.lead_out,
                            slots, memory, chosen)

    def split_choice(self, first: int, last: int, slots: tuple, lead_buffers: float, forced: dict | None = None) -> tuple:
        """(SegmentOption per segment, seconds, memory per slot) of segments [first, last] in a split
        stage with these slots: the best chain (segment_chains.best_chain) when it fits (the lead also
        holds `lead_buffers`), else that chain repaired for memory (repair_memory). `forced` maps
        segment -> kind (the baselines). The dp planner asks the same for ranges whose chain overflows."""
        table = self.segment_table(slots)
        seconds, saving = table.seconds, table.saving
        if forced:
            seconds = _forced_seconds(seconds, forced, first, last)
        chain = best_chain(seconds, saving, table.weight_bytes, table.work_bytes, first, last, table.start_ok, table.end_ok)
        picked, total = list(chain.options), chain.seconds
        memory = (chain.memory[0] + lead_buffers,) + chain.memory[1:]
        usable = [self.usable(k) for k in slots]
        if any(mm > u for mm, u in zip(memory, usable)):
            # repaired among the kinds only (a span's columns move together): from the best such chain
            seconds = np.where(np.arange(seconds.shape[1]) < len(OPTION_KINDS), seconds, INF)
            picked = list(best_chain(seconds, saving, table.weight_bytes, table.work_bytes, first, last, table.start_ok, table.end_ok).options)
            options = [{o: self._option(s, slots, o) for o in np.nonzero(np.isfinite(seconds[s]))[0].tolist()}
                       for s in range(first, last + 1)]
            picked = repair_memory(options, picked, [usable[0] - lead_buffers, *usable[1:]], seconds[first:last + 1], saving[first:last])
            total = chain_seconds(seconds, saving, first, picked)
            memory = stage_memory([options[i][o] for i, o in enumerate(picked)], len(slots))
            memory = (memory[0] + lead_buffers,) + memory[1:]
        flags = kept_flags(saving, first, picked)
        # each column's transfers along this chain: into it (the kept transition from the column
        # before, or the lead's scatter), out of it (the gather, unless it keeps), an exchange span's
        # own; with the computes they add up to the chain's seconds
        moved = []
        for i, o in enumerate(picked):
            k = first + i
            into = table.kept_s[k - 1, picked[i - 1], o] if i and flags[i - 1] else table.comm_in_s[k, o]
            own = table.inner_s[k, o] if table.inner_s is not None else 0.0
            moved.append(float(into + own + (0.0 if flags[i] else table.comm_out_s[k, o])))
        chosen = []
        for i, o in enumerate(picked):
            _, role, d = table.columns[o]
            if role == "inside":
                continue  # inside a span: the span's option covers it
            keep = flags[i + d] if role in ("span", "xspan") else flags[i]
            if role == "xspan":  # its segments one by one, each keeping its strips for the next
                chosen += self._exchange_options(first + i, table, o, keep, moved[i], moved[i + d])
                continue
            comm = sum(moved[i:i + d + 1]) if role == "span" else moved[i]
            chosen.append(replace(self._column_option(first + i, table, o), comm_s=comm, output_layout="parts" if keep else "lead"))
        return tuple(chosen), total, memory

    def _exchange_options(self, segment: int, table: SegmentTable, column: int, keep: bool, into: float, out_: float) -> list:
        """The SegmentOptions of an exchange span from `segment`: conv-spatial on each of its
        segments, all but the last keeping their strips (the last as the chain says); what moves
        into the span and within it is the first one's comm_s (`into`), what leaves it the last's."""
        _, _, d = table.columns[column]
        cs = table.columns.index((EXCHANGE, "kind", 0))
        out = []
        for k in range(segment, segment + d + 1):
            comm = (into if k == segment else 0.0) + (out_ if k == segment + d else 0.0)
            out.append(SegmentOption(k, EXCHANGE, table.sizes[(k, cs)], int(table.split_stop[k, cs]), float(table.compute_s[k, cs]),
                                     float(comm), tuple(float(v) for v in table.weight_bytes[k, cs]),
                                     tuple(float(v) for v in table.work_bytes[k, cs]),
                                     "parts" if k < segment + d or keep else "lead"))
        return out

    def _column_option(self, segment: int, table: SegmentTable, column: int) -> SegmentOption:
        """The SegmentOption of a table column: a kind's (segment_options), a kind's over the first d
        slots (its sizes name only those), or a fused span's, with the span's gather (paid at its
        last segment) in its comm_s."""
        kind, role, d = table.columns[column]
        if role == "kind":
            return self._option(segment, table.slots, column)
        comm = table.comm_in_s[segment, column]
        comm += table.comm_out_s[segment + d, table.columns.index((kind, "inside", 0))] if role == "span" else table.comm_out_s[segment, column]
        return SegmentOption(segment, kind, table.sizes[(segment, column)], int(table.split_stop[segment, column]),
                             float(table.compute_s[segment, column]), float(comm),
                             tuple(float(v) for v in table.weight_bytes[segment, column]),
                             tuple(float(v) for v in table.work_bytes[segment, column]))

    def send_hold(self) -> np.ndarray:
        """Per cut: seconds its sender cannot compute while the transfer leaves, the bytes beyond
        SEND_OVERLAP_BYTES (module docstring)."""
        overlap = self.cut_messages * self.cluster.link_latency_s + SEND_OVERLAP_BYTES * 8.0 / self.cluster.link_bandwidth_bps
        return np.maximum(0.0, self.wire - overlap)

    def link_parts(self, part: str) -> tuple:
        """(seconds per cut received, per cut sent) of the transfers' `part`: 'whole' (what a frame
        waits), 'wire' (what the network interfaces carry) or 'rank' (what they cost the ranks: a codec's
        encode and decode at both ends, and the sender's hold)."""
        if part == "whole":
            return self.transfer, self.transfer
        if part == "wire":
            return self.wire, self.wire
        codec = self.transfer - self.wire
        return codec, codec + self.send_hold()

    def link_terms(self, start: int, stop: int, part: str = "whole") -> "LinkTerms":
        """The transfers a stage [start, stop) pays per frame (see LinkTerms), their `part` (link_parts)."""
        x_in, x_out = self.link_parts(part)
        first, last = start == 0, stop == self.n
        return LinkTerms(
            lead_in=0.0 if first else float(x_in[start]),
            lead_out=0.0 if first and last else float(x_out[stop]),
            sink=float(x_in[self.n]) if first and not last else 0.0,
            replica_in=float(x_in[start]), replica_out=float(x_out[stop]),
            replica_in_latency=float(self.transfer[0]) if first else 0.0,
            source=float(x_out[0]) if first else 0.0, result=float(x_in[self.n]) if first else 0.0, last=last)

    def held_work_bytes(self, start: int, stop: int) -> float:
        """Largest working set of nodes [start, stop) in one process (module held_work_bytes)."""
        return held_work_bytes(self.work_bytes, self.scratch_bytes, start, stop)

    def frame_buffer_bytes(self, start, stop, replicas: int, entry: bool, lead: bool):
        """Frame buffers of one rank of a stage over nodes [start, stop) at the runtime's default
        window (module frame_buffer_bytes)."""
        return frame_buffer_bytes(self.cut_bytes, start, stop, replicas, entry, lead)

    def _finish(self, start, stop, counts, mode, compute, comm, period, latency, slots, memory, segments) -> StageCost:
        over = [(memory[r] - self.usable(k), r) for r, k in enumerate(slots)]
        memory = tuple(m + self.model_bytes for m in memory)  # each rank's whole memory (model_held_bytes)
        worst, slot = max(over)
        short = None
        if worst > 0:
            short = (slot, self._overflow_node(start, stop, slot, segments), worst)
        return StageCost(start, stop, tuple(counts), mode, compute, comm, period, latency, slots, memory, worst <= 0,
                         segments, short)

    def _overflow_node(self, start, stop, slot, segments) -> int:
        """The node holding the most bytes on `slot` (what a user should know cannot be placed)."""
        if not segments:
            return int(start + np.argmax(self.weight_bytes[start:stop] + self.work_bytes[start:stop]))
        seg = max(segments, key=lambda o: o.weight_bytes[slot] + o.work_bytes[slot])
        s0, s1 = self.splits.segments[seg.segment]
        return int(s0 + np.argmax(self.weight_bytes[s0:s1]))


def _forced_seconds(seconds: np.ndarray, forced: dict, first: int, last: int) -> np.ndarray:
    """`seconds` with every option but the forced kind's made infinite, on the segments of [first,
    last] whose forced kind applies (elsewhere every kind's option stays; fused spans go)."""
    out = seconds.copy()
    out[:, len(OPTION_KINDS):] = INF
    for s in range(first, last + 1):
        kind = forced.get(s)
        o = OPTION_KINDS.index(kind) if kind in OPTION_KINDS else None
        if o is not None and np.isfinite(seconds[s, o]):
            out[s] = np.where(np.arange(seconds.shape[1]) == o, seconds[s], INF)
    return out


def stage_memory(chosen: list, n_slots: int) -> tuple:
    """Per slot: the weights of every chosen option plus the largest working set among them."""
    return tuple(sum(o.weight_bytes[r] for o in chosen) + max(o.work_bytes[r] for o in chosen) for r in range(n_slots))


def repair_memory(options: list, picked: list, usable: list, seconds: np.ndarray, saving: np.ndarray) -> list:
    """Trade time for bytes while some slot is over its memory: each step switches the one segment
    whose change removes the most overflow per second it adds to the chain (its option's seconds and
    the savings it gains or loses at its two boundaries). `options[i]` maps option column ->
    SegmentOption of segment i of the range, `picked` the starting option columns, `seconds` and
    `saving` the table's rows of the range. Stops when everything fits or no switch reduces the
    overflow (the stage is then infeasible, as StageCost.feasible shows)."""
    picked = list(picked)
    n_slots = len(usable)

    def overflow(sel):
        mem = stage_memory([options[i][o] for i, o in enumerate(sel)], n_slots)
        return sum(max(mem[r] - usable[r], 0.0) for r in range(n_slots))

    def added(i, o):
        delta = seconds[i, o] - seconds[i, picked[i]]
        if i > 0:
            delta -= saving[i - 1, picked[i - 1], o] - saving[i - 1, picked[i - 1], picked[i]]
        if i + 1 < len(picked):
            delta -= saving[i, o, picked[i + 1]] - saving[i, picked[i], picked[i + 1]]
        return float(delta)

    current = overflow(picked)
    while current > 0:
        best = None
        for i, opts in enumerate(options):
            for o in opts:
                if o == picked[i]:
                    continue
                gain = current - overflow(picked[:i] + [o] + picked[i + 1:])
                if gain <= 0:
                    continue
                score = gain / max(added(i, o), 1e-12)
                if best is None or score > best[0]:
                    best = (score, i, o)
        if best is None:
            break
        picked[best[1]] = best[2]
        current = overflow(picked)
    return picked
