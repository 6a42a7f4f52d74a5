"""Link codec pricing (issue 15): what each codec costs on each cut of a model, measured, and the
codec the cost model puts on a stage-to-stage transfer.

A codec table (JSON, format "pisplit-codecs", written by `pisplit codecs MODEL --save T.json`) holds,
per cut 0..n-1 of one model (cut 0: the input, for an edge that sends it to a host), the bytes of the tensors live across it and, per codec, the encoded bytes
(whole messages, header included), encode and decode seconds and the largest relative error
(max |error| / max |x|, 0 for lossless codecs), each the mean (bytes) or median (seconds) or worst
(error) over the sample frames it names (`frames`: real data, photographs or seeded random frames;
ratios depend on the data). Seconds are those of the machine that measured them (`machine`, a
device kind; 'host' = the reference machine of the shipped profiles, calibration scale 1).

A transfer of cut c with codec k costs (link_seconds):

    encode_s x encode_scale + messages x latency + encoded bytes x 8 / bandwidth + decode_s x decode_scale

where a scale is a device's seconds per second of the measuring machine (the calibration's
seconds_scale: a Pi 3B+ encodes as much slower as it computes). 'raw' costs the link alone, as
before. `choose_codec` takes the cheapest admissible codec: lossless ones always, lossy ones only
within the caller's LossBudget (accuracy lost on a held-out split, or the cut's relative error).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from layers.errors import PisplitError
from layers.jsonfile import read_json

from .codecs import parse_codec

CODEC_TABLE_FORMAT = "pisplit-codecs"
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


@dataclass(frozen=True)
class CodecTable:
    """Codec measurements of one model (module docstring)."""

    model: str
    n_nodes: int
    frames: str
    n_frames: int
    machine: str
    cuts: tuple  # CutCodecs, by cut

    def cut(self, cut: int) -> CutCodecs | None:
        return next((c for c in self.cuts if c.cut == cut), None)

    def validate(self) -> "CodecTable":
        """Check what the pricing relies on; PisplitError naming the first problem."""
        if self.n_nodes < 1 or self.n_frames < 1:
            raise PisplitError(f"codec table: n_nodes {self.n_nodes} and n_frames {self.n_frames} must be at least 1")
        for c in self.cuts:
            if not 0 <= c.cut < self.n_nodes or c.raw_bytes < 0 or c.messages < 1:
                raise PisplitError(f"codec table: cut {c.cut} is not a cut before the last of {self.n_nodes} nodes or has bad sizes")
            for s in c.samples:
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
                "frames": self.frames, "n_frames": self.n_frames, "machine": self.machine,
                "cuts": [{"cut": c.cut, "name": c.name, "raw_bytes": c.raw_bytes, "messages": c.messages,
                          "entropy_bits": c.entropy_bits, "nonzero": c.nonzero,
                          "codecs": [asdict(s) for s in c.samples]} for c in self.cuts]}

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
        try:
            cuts = tuple(CutCodecs(int(c["cut"]), str(c["name"]), int(c["raw_bytes"]), int(c["messages"]),
                                   tuple(CodecSample(str(s["codec"]), float(s["encoded_bytes"]), float(s["encode_s"]),
                                                     float(s["decode_s"]), float(s["max_rel_error"]), bool(s["lossless"]),
                                                     None if s.get("accuracy_loss") is None else float(s["accuracy_loss"]))
                                         for s in c["codecs"]), float(c.get("entropy_bits", 0.0)), float(c.get("nonzero", 1.0)))
                         for c in doc["cuts"])
            table = cls(str(doc["model"]), int(doc["n_nodes"]), str(doc["frames"]), int(doc["n_frames"]), str(doc["machine"]), cuts)
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
    the plain link (a fast link) or the cut was not measured. `allowed` limits the codec names."""
    best = (link_seconds(None, raw_bytes, messages, bandwidth_bps, latency_s), "raw")
    if entry is None or raw_bytes <= 0:
        return best
    for s in entry.samples:
        if parse_codec(s.codec).kind == "raw" or not admissible(s, budget) or (allowed is not None and s.codec not in allowed):
            continue
        seconds = link_seconds(s, raw_bytes, messages, bandwidth_bps, latency_s, encode_scale, decode_scale)
        if seconds < best[0]:
            best = (seconds, s.codec)
    return best


def with_link_codecs(plan, model):
    """`plan` (made with CostModel `model`) with each stage's send_codec, and its input_codec, the
    codec `model` priced that cut with (CostModel.cut_codec); the last stage stays raw. Validated."""
    from dataclasses import replace

    stages = tuple(replace(s, send_codec=model.cut_codec[s.node_stop] if s.node_stop < plan.n_nodes else "raw") for s in plan.stages)
    return replace(plan, stages=stages, input_codec=model.cut_codec[0]).validate()
