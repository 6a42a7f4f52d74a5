"""Link codec pricing (issue 15): what each codec costs on each cut of a model, measured, and the
codec the cost model puts on a stage-to-stage transfer.

A codec table (JSON, format "pisplit-codecs", written by `pisplit codecs MODEL --save T.json`) holds,
per cut 0..n-1 of one model (cut 0: the input, for an edge that sends it to a host), the bytes of the tensors live across it and, per codec, the encoded bytes
(whole messages, header included), encode and decode seconds and the largest relative error
(max |error| / max |x|, 0 for lossless codecs), each the mean (bytes) or median (seconds) or worst
(error) over the sample frames it names (`frames`: real data, photographs or seeded random frames;
ratios depend on the data). Seconds are those of the machine that measured them (`machine`, a
device kind; 'host' = the reference machine of the shipped profiles, calibration scale 1), which ran
`machine_speed` times as slow as its kind's calibration (cluster.host_speed: this machine's seconds
over the reference profile's for the model; 1 = as calibrated). `in_reference_seconds` turns them into
the reference machine's seconds, which the cost model scales to each device kind as it does compute.
A cut of several tensors (a residual block) also holds each tensor's own samples (`tensors`), so a
link can send each tensor with its own codec ('zstd;int8+zstd', partitioners.codecs.link_codecs).

A transfer of cut c with codec k costs (link_seconds):

    encode_s x encode_scale + messages x latency + encoded bytes x 8 / bandwidth + decode_s x decode_scale

where a scale is a device's seconds per second of the reference machine (the calibration's
seconds_scale: a Pi 3B+ encodes as much slower as it computes). 'raw' costs the link alone, as
before. `choose_codec` takes the cheapest admissible codec: lossless ones always, lossy ones only
within the caller's LossBudget (accuracy lost on a held-out split, or the cut's relative error); on a
cut of several tensors, the cheapest codec per tensor where that beats one for all (messages and
latency as before: one message per tensor). Under an accuracy budget a per-tensor choice uses at most
one lossy codec, one whose accuracy loss was measured with every tensor of the cut encoded by it.

Memory (`link_memory_bytes`): a rank that encodes holds the codec's working set while it encodes, one
that decodes its decoded tensors and working set (partitioners.codecs.work_bytes); with_link_codecs
adds them to the plan's per-rank memory prediction.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from layers.errors import PisplitError
from layers.jsonfile import read_json

from .codecs import parse_codec
from .vocabulary import StageMode

CODEC_TABLE_FORMAT = "pisplit-codecs"
CODEC_NOTE = "link codecs from"  # how the note with_link_codecs writes into a plan begins
CODEC_TABLE_VERSION = 1


@dataclass(frozen=True)
class CodecSample:
    """One codec on one cut: its messages' bytes, times and error on the sample frames."""

    codec: str
    encoded_bytes: float
    encode_s: float
    decode_s: float
    max_rel_error: float = 0.0
    lossless: bool = True
    accuracy_loss: float | None = None  # top-1 accuracy lost on a held-out split (lossy codecs of trained models)


@dataclass(frozen=True)
class CutCodecs:
    """The codecs measured on cut `cut` (the tensors live across it: Graph.cut_tensors)."""

    cut: int
    name: str  # the node before the cut, for people
    raw_bytes: int
    messages: int
    samples: tuple  # CodecSample
    entropy_bits: float = 0.0  # of the cut's values quantised to 256 levels between their min and max, per element (mean over frames)
    nonzero: float = 1.0  # share of non-zero values (mean over frames)
    tensors: tuple = ()  # TensorCodecSamples per cut tensor (Graph.cut_tensors order) when there are several


@dataclass(frozen=True)
class TensorCodecSamples:
    """The codecs measured on one tensor of a cut of several."""

    name: str
    raw_bytes: int
    samples: tuple  # CodecSample (bytes and seconds of this tensor alone; accuracy_loss None)


@dataclass(frozen=True)
class CodecTable:
    """Codec measurements of one model (module docstring)."""

    model: str
    n_nodes: int
    frames: str
    n_frames: int
    machine: str
    cuts: tuple  # CutCodecs, by cut
    machine_speed: float = 1.0  # the measuring machine's seconds over its kind's calibrated seconds (module docstring)

    def cut(self, cut: int) -> CutCodecs | None:
        return next((c for c in self.cuts if c.cut == cut), None)

    def validate(self) -> "CodecTable":
        """Check what the pricing relies on; PisplitError naming the first problem."""
        if self.n_nodes < 1 or self.n_frames < 1:
            raise PisplitError(f"codec table: n_nodes {self.n_nodes} and n_frames {self.n_frames} must be at least 1")
        if not (isinstance(self.machine_speed, (int, float)) and 0 < self.machine_speed < math.inf):
            raise PisplitError(f"codec table: machine_speed {self.machine_speed!r} must be a positive number")
        for c in self.cuts:
            if not 0 <= c.cut < self.n_nodes or c.raw_bytes < 0 or c.messages < 1:
                raise PisplitError(f"codec table: cut {c.cut} is not a cut before the last of {self.n_nodes} nodes or has bad sizes")
            if c.tensors and (len(c.tensors) != c.messages or sum(t.raw_bytes for t in c.tensors) != c.raw_bytes):
                raise PisplitError(f"codec table: cut {c.cut}: its per-tensor samples do not add up to its {c.messages} tensors")
            for s in [*c.samples, *(s for t in c.tensors for s in t.samples)]:
                try:
                    codec = parse_codec(s.codec)
                except PisplitError as exc:
                    raise PisplitError(f"codec table: cut {c.cut}: {exc}") from None
                if codec.lossless != s.lossless:
                    raise PisplitError(f"codec table: cut {c.cut}: {s.codec} lossless flag is wrong")
                values = (s.encoded_bytes, s.encode_s, s.decode_s, s.max_rel_error)
                if not all(isinstance(v, (int, float)) and 0 <= v < math.inf for v in values) or s.encoded_bytes <= 0:
                    raise PisplitError(f"codec table: cut {c.cut}: {s.codec} has negative or non-finite measurements")
        return self

    def to_dict(self) -> dict:
        return {"format": CODEC_TABLE_FORMAT, "version": CODEC_TABLE_VERSION, "model": self.model, "n_nodes": self.n_nodes,
                "frames": self.frames, "n_frames": self.n_frames, "machine": self.machine, "machine_speed": self.machine_speed,
                "cuts": [{"cut": c.cut, "name": c.name, "raw_bytes": c.raw_bytes, "messages": c.messages,
                          "entropy_bits": c.entropy_bits, "nonzero": c.nonzero,
                          "codecs": [asdict(s) for s in c.samples],
                          **({"tensors": [{"name": t.name, "raw_bytes": t.raw_bytes, "codecs": [asdict(s) for s in t.samples]}
                                          for t in c.tensors]} if c.tensors else {})} for c in self.cuts]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, doc: dict, where: str = "codec table") -> "CodecTable":
        if not isinstance(doc, dict) or doc.get("format") != CODEC_TABLE_FORMAT:
            raise PisplitError(f"{where}: not a pisplit codec table (no \"format\": \"{CODEC_TABLE_FORMAT}\")")
        if doc.get("version") != CODEC_TABLE_VERSION:
            raise PisplitError(f"{where}: version {doc.get('version')!r} is not supported (expected {CODEC_TABLE_VERSION})")
        def samples(rows) -> tuple:
            return tuple(CodecSample(str(s["codec"]), float(s["encoded_bytes"]), float(s["encode_s"]), float(s["decode_s"]),
                                     float(s["max_rel_error"]), bool(s["lossless"]),
                                     None if s.get("accuracy_loss") is None else float(s["accuracy_loss"])) for s in rows)

        try:
            cuts = tuple(CutCodecs(int(c["cut"]), str(c["name"]), int(c["raw_bytes"]), int(c["messages"]), samples(c["codecs"]),
                                   float(c.get("entropy_bits", 0.0)), float(c.get("nonzero", 1.0)),
                                   tuple(TensorCodecSamples(str(t["name"]), int(t["raw_bytes"]), samples(t["codecs"]))
                                         for t in c.get("tensors", ())))
                         for c in doc["cuts"])
            table = cls(str(doc["model"]), int(doc["n_nodes"]), str(doc["frames"]), int(doc["n_frames"]), str(doc["machine"]), cuts,
                        float(doc.get("machine_speed", 1.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise PisplitError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None
        try:
            return table.validate()
        except PisplitError as exc:
            raise PisplitError(f"{where}: {str(exc).removeprefix('codec table: ')}") from None

    @classmethod
    def load(cls, path: str | Path) -> "CodecTable":
        return cls.from_dict(read_json(path, "codec table"), f"codec table {path}")


def link_seconds(sample: CodecSample | None, raw_bytes: float, messages: float, bandwidth_bps: float, latency_s: float,
                 encode_scale: float = 1.0, decode_scale: float = 1.0) -> float:
    """Seconds of one transfer: raw (sample None) or encoded with `sample`'s codec (module docstring)."""
    if raw_bytes <= 0:
        return 0.0
    if sample is None:
        return messages * latency_s + raw_bytes * 8.0 / bandwidth_bps
    return (sample.encode_s * encode_scale + messages * latency_s + sample.encoded_bytes * 8.0 / bandwidth_bps
            + sample.decode_s * decode_scale)


@dataclass(frozen=True)
class LossBudget:
    """What a lossy codec may cost: top-1 accuracy on a held-out split (where the table measured it)
    and/or the relative error of the cut tensors. None everywhere: lossless codecs only."""

    max_accuracy_loss: float | None = None
    max_rel_error: float | None = None


def admissible(sample: CodecSample, budget: LossBudget | None) -> bool:
    """Lossless codecs always; a lossy one only within the budget: its measured accuracy loss under
    max_accuracy_loss (unmeasured: refused), its relative error under max_rel_error."""
    if sample.lossless:
        return True
    if budget is None or (budget.max_accuracy_loss is None and budget.max_rel_error is None):
        return False
    if budget.max_accuracy_loss is not None and (sample.accuracy_loss is None or sample.accuracy_loss > budget.max_accuracy_loss):
        return False
    return budget.max_rel_error is None or sample.max_rel_error <= budget.max_rel_error


def choose_codec(entry: CutCodecs | None, raw_bytes: float, messages: float, bandwidth_bps: float, latency_s: float,
                 encode_scale: float = 1.0, decode_scale: float = 1.0, budget: LossBudget | None = None,
                 allowed: tuple | None = None) -> tuple[float, str]:
    """(seconds, codec name) of the cheapest admissible way to send a cut: 'raw' when no codec beats
    the plain link (a fast link) or the cut was not measured; on a cut of several measured tensors a
    per-tensor list ('zstd;int8') where that is cheaper than any one codec. `allowed` limits the
    codec names."""
    seconds, _, name = choose_codec_wire(entry, raw_bytes, messages, bandwidth_bps, latency_s, encode_scale, decode_scale,
                                         budget, allowed)
    return seconds, name


def choose_codec_wire(entry: CutCodecs | None, raw_bytes: float, messages: float, bandwidth_bps: float, latency_s: float,
                      encode_scale: float = 1.0, decode_scale: float = 1.0, budget: LossBudget | None = None,
                      allowed: tuple | None = None) -> tuple[float, float, str]:
    """(seconds, wire seconds, codec name): choose_codec's choice and, of its seconds, those the link
    carries the bytes (messages x latency + encoded bytes x 8 / bandwidth), without the encode and decode
    the ranks spend (partitioners.cost: a transfer occupies the link, its codec the ranks)."""
    def wire(sample):
        return link_seconds(sample, raw_bytes, messages, bandwidth_bps, latency_s, 0.0, 0.0)

    best = (link_seconds(None, raw_bytes, messages, bandwidth_bps, latency_s), None, "raw")
    if entry is None or raw_bytes <= 0:
        return best[0], best[0], "raw"
    usable = [s for s in entry.samples if parse_codec(s.codec).kind != "raw" and admissible(s, budget)
              and (allowed is None or s.codec in allowed)]
    for s in usable:
        seconds = link_seconds(s, raw_bytes, messages, bandwidth_bps, latency_s, encode_scale, decode_scale)
        if seconds < best[0]:
            best = (seconds, s, s.codec)
    mixed = per_tensor_sample(entry, bandwidth_bps, encode_scale, decode_scale, budget, allowed)
    if mixed is not None:
        seconds = link_seconds(mixed, raw_bytes, messages, bandwidth_bps, latency_s, encode_scale, decode_scale)
        if seconds < best[0] * (1 - 1e-9):
            best = (seconds, mixed, mixed.codec)
    return best[0], wire(best[1]), best[2]


def _per_tensor_choice(entry: CutCodecs, usable: set, bandwidth_bps: float, encode_scale: float, decode_scale: float,
                       budget: LossBudget | None) -> tuple[float, str] | None:
    """(seconds without latency, 'a;b;...') of the cheapest codec per tensor among `usable` (the
    cut's admissible codecs) and raw; None when that is one codec for all. Each tensor's lossy
    codec within budget.max_rel_error on that tensor; under an accuracy budget one lossy codec at most
    (its loss was measured with every tensor of the cut encoded by it)."""
    def cost(t: TensorCodecSamples, s: CodecSample | None) -> float:
        if s is None:
            return t.raw_bytes * 8.0 / bandwidth_bps
        return s.encode_s * encode_scale + s.encoded_bytes * 8.0 / bandwidth_bps + s.decode_s * decode_scale

    def fits(s: CodecSample) -> bool:
        return s.codec in usable and (s.lossless or budget is None or budget.max_rel_error is None or s.max_rel_error <= budget.max_rel_error)

    lossy = sorted({s.codec for s in entry.samples if s.codec in usable and not s.lossless})
    one_lossy = budget is not None and budget.max_accuracy_loss is not None
    groups = [[name] for name in lossy] if one_lossy else [lossy]
    best = None
    for group in groups + [[]]:
        total, names = 0.0, []
        for t in entry.tensors:
            options = [(cost(t, None), "raw")] + [(cost(t, s), s.codec) for s in t.samples
                                                 if fits(s) and (s.lossless or s.codec in group)]
            seconds, name = min(options)
            total += seconds
            names.append(name)
        if best is None or total < best[0]:
            best = (total, names)
    if best is None or len(set(best[1])) == 1:
        return None
    return best[0], ";".join(best[1])


def per_tensor_sample(entry: CutCodecs, bandwidth_bps: float, encode_scale: float = 1.0, decode_scale: float = 1.0,
                      budget: LossBudget | None = None, allowed: tuple | None = None) -> CodecSample | None:
    """The cheapest codec per tensor of a cut of several (choose_codec's rules) as one sample of the
    whole cut: bytes and seconds summed over its tensors, the worst error, the accuracy loss of its
    lossy codec; None when that is one codec for all (or the cut has one tensor)."""
    if len(entry.tensors) < 2:
        return None
    # the cut-wide accuracy test here, each tensor's own error in _per_tensor_choice
    whole = None if budget is None else LossBudget(budget.max_accuracy_loss, None if budget.max_accuracy_loss is not None else math.inf)
    names = {s.codec for s in entry.samples if parse_codec(s.codec).kind != "raw" and admissible(s, whole)
             and (allowed is None or s.codec in allowed)}
    mixed = _per_tensor_choice(entry, names, bandwidth_bps, encode_scale, decode_scale, budget)
    if mixed is None:
        return None
    chosen = mixed[1].split(";")
    parts = [next((s for s in t.samples if s.codec == c), None) for t, c in zip(entry.tensors, chosen)]
    raw = [CodecSample("raw", t.raw_bytes, 0.0, 0.0) for t in entry.tensors]
    parts = [p if p is not None else r for p, r in zip(parts, raw)]
    lossy = next((c for c in chosen if not parse_codec(c).lossless), None)
    whole_lossy = next((s for s in entry.samples if s.codec == lossy), None) if lossy else None
    return CodecSample(mixed[1], sum(p.encoded_bytes for p in parts), sum(p.encode_s for p in parts), sum(p.decode_s for p in parts),
                       max(p.max_rel_error for p in parts), lossy is None, whole_lossy.accuracy_loss if whole_lossy else None)


def in_reference_seconds(table: CodecTable, calibration) -> CodecTable:
    """`table` with encode and decode seconds of the reference machine (machine 'host', speed 1): its
    seconds divided by the measuring machine's calibration scale (calibration.resolve(machine): a
    table measured on a Pi 3B+ has that Pi's seconds) times its machine_speed (cluster.host_speed).
    The cost model then scales them to each device as it does compute (CostModel.cut_transfer)."""
    from dataclasses import replace

    try:
        _, scale = calibration.resolve(table.machine)
    except PisplitError as exc:
        raise PisplitError(f"codec table of {table.model}: machine {table.machine!r}: {exc}") from None
    factor = scale * table.machine_speed
    if table.machine == "host" and table.machine_speed == 1.0:
        return table

    def rescaled(samples) -> tuple:
        return tuple(replace(s, encode_s=s.encode_s / factor, decode_s=s.decode_s / factor) for s in samples)

    cuts = tuple(replace(c, samples=rescaled(c.samples), tensors=tuple(replace(t, samples=rescaled(t.samples)) for t in c.tensors))
                 for c in table.cuts)
    return replace(table, cuts=cuts, machine="host", machine_speed=1.0)


def link_memory_bytes(codec: str, tensor_bytes: list) -> tuple[float, float]:
    """(sender, receiver) bytes an encoded link adds to a rank's memory, for tensors of these float32
    sizes: the encoder's working set (the message included); the decoded tensors and the decoder's
    working set (a raw link's receiver computes on views of its buffer). Raw: (0, 0)."""
    from .codecs import link_codecs, work_bytes

    each = link_codecs(codec, len(tensor_bytes))
    if all(c.kind == "raw" for c in each):
        return 0.0, 0.0
    work = [work_bytes(c, b) for c, b in zip(each, tensor_bytes)]
    return max(e for e, _ in work), sum(tensor_bytes) + max(d for _, d in work)


def with_link_codecs(plan, model, table: CodecTable | None = None):
    """`plan` (made with CostModel `model`) with each stage's send_codec, and its input_codec, the
    codec `model` priced that cut with (CostModel.cut_codec); the last stage stays raw. The ranks that
    encode or decode a link get its working memory (link_memory_bytes) in their prediction (unless
    `model` counted it itself: codec_cost.CodecCostModel), a link whose buffers would not fit stays
    raw, and the plan gets a note naming each coded link (and `table`, where given). Validated."""
    from dataclasses import replace

    from .plan import StagePrediction

    if any(n.startswith(CODEC_NOTE) for n in plan.notes):
        return plan  # build_plan applied them already (a model with a codec table): memory is not counted twice
    from .devices import device_profile

    def fmt_mib(n: float) -> str:
        return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"

    graph = model.graph
    counted = getattr(model, "counts_link_buffers", False)
    base = {r: b for s in plan.stages if s.predicted is not None for r, b in s.predicted.memory_bytes.items()}
    usable = {d.rank: d.memory_bytes - device_profile(d.kind).reserved_bytes for d in plan.devices}
    extra: dict = {}

    def fits(ranks, nbytes: float) -> bool:
        return all(r not in base or base[r] + extra.get(r, 0.0) + nbytes <= usable[r] for r in ranks)

    def add(ranks, nbytes: float) -> None:
        for r in ranks:
            extra[r] = extra.get(r, 0.0) + nbytes

    def ends(stage) -> tuple:
        return stage.ranks if stage.mode == StageMode.DATA_PARALLEL else stage.ranks[:1]  # the ranks a frame enters and leaves by

    def coded_link(codec: str, cut: int, senders, receivers, what: str) -> str:
        """The link's codec, its memory added; raw (said in a note) where its buffers would not fit."""
        send, receive = link_memory_bytes(codec, [_tensor_bytes(graph, t) for t in graph.cut_tensors(cut)])
        if counted:  # the cost model's memory holds them already (codec_cost.CodecCostModel): the planner made them fit
            send = receive = 0.0
        if codec != "raw" and not (fits(senders, send) and fits(receivers, receive)):
            described.append(f"{what}: raw, as {codec}'s encode/decode buffers ({fmt_mib(send)} / {fmt_mib(receive)}) "
                             f"would not fit the memory left on ranks {sorted({*senders, *receivers})} (its predicted times are {codec}'s)")
            return "raw"
        add(senders, send)
        add(receivers, receive)
        if codec != "raw":
            sample = table.cut(cut) if table is not None else None
            coded = next((x for x in sample.samples if x.codec == codec), None) if sample is not None else None
            ratio = f" ({sample.raw_bytes / coded.encoded_bytes:.1f}x smaller)" if coded is not None else ""
            described.append(f"{what}: {codec}{ratio}")
        return codec

    stages = tuple(replace(s, send_codec=model.cut_codec[s.node_stop] if s.node_stop < plan.n_nodes else "raw") for s in plan.stages)
    described: list = []
    stages = tuple(replace(s, send_codec=coded_link(s.send_codec, s.node_stop, ends(s), ends(nxt), f"stage {s.index} -> {nxt.index}"))
                   for s, nxt in zip(stages, stages[1:])) + stages[-1:]
    first = stages[0]
    input_codec = model.cut_codec[0]  # crosses a link only to a data-parallel first stage's other replicas
    if first.mode == StageMode.DATA_PARALLEL and len(first.ranks) > 1:
        input_codec = coded_link(input_codec, 0, first.ranks[:1], first.ranks[1:], "input frames")
    if extra:
        stages = tuple(replace(s, predicted=StagePrediction(s.predicted.compute_s, s.predicted.comm_s,
                                                            {r: int(b + extra.get(r, 0.0)) for r, b in s.predicted.memory_bytes.items()}))
                       if s.predicted is not None else s for s in stages)
    notes = tuple(plan.notes)
    if table is not None or described:
        source = f"codec table of {table.model} ({table.n_frames} frames: {table.frames})" if table is not None else "codec pricing"
        notes += (f"{CODEC_NOTE} the {source}: " + ("; ".join(described) if described else "raw is fastest on every link"),)
    return replace(plan, stages=stages, input_codec=input_codec, notes=notes).validate()


def _tensor_bytes(graph, name: str) -> int:
    """Bytes of one tensor as it travels (float32 values, 4 bytes each)."""
    import numpy as np

    return int(np.prod(graph.shapes[name])) * 4
