"""The Plan: plain, versioned data saying which rank runs what. Printable and checkable before anything runs.

A plan cuts the model's node order into pipeline stages, each a half-open node range
[node_start, node_stop). Consecutive stages are contiguous and together cover every node exactly once.
Each stage runs on one or more ranks:

- `mode = "single"`: one rank runs the stage.
- `mode = "split"`: the stage's ranks cooperate on every frame. Its node range is cut into segments;
  a segment with kind "none" runs on the stage's first rank (the stage lead) alone, a segment with a
  split kind (see partitioners.splits) runs across the ranks listed in the segment, with its part
  sizes, the lead scattering inputs and gathering outputs as the kind says.
- `mode = "data-parallel"`: every rank of the stage holds the whole stage; frames are dealt to them
  round-robin and come out in order.

Between stages, the tensors live across the cut (layers.Graph.cut_tensors(node_stop)) travel from the
last stage's lead (or the replica that ran the frame) to the next stage's lead (or replica).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from layers.errors import PisplitError
from layers.jsonfile import read_json

PLAN_FORMAT = "pisplit-plan"
PLAN_VERSION = 1
STAGE_MODES = ("single", "split", "data-parallel")


@dataclass(frozen=True)
class Device:
    """One rank's device: its kind (e.g. 'rpi3'), memory and the host it runs on (if known)."""

    rank: int
    kind: str
    memory_bytes: int
    host: str | None = None
    speed: float = 1.0  # relative to the kind's calibrated profile (1.0 = as profiled)


@dataclass(frozen=True)
class Segment:
    """Nodes [node_start, node_stop) of a stage, unsplit (kind 'none') or split across `ranks`."""

    node_start: int
    node_stop: int
    kind: str = "none"
    ranks: tuple = ()
    sizes: tuple = ()  # one part size per rank (channels, rows, units ... as the kind defines)
    options: dict = field(default_factory=dict)  # kind-specific, e.g. {"grid": [2, 2]} for fused tiles
    # where the segment's output lives after it: "lead" (gathered to the stage lead) or "parts" (each
    # part keeps its box and the next split segment takes what it needs peer to peer; see
    # partitioners.layouts)
    output_layout: str = "lead"


@dataclass(frozen=True)
class StagePrediction:
    """What the cost model expects of one stage, per frame."""

    compute_s: float
    comm_s: float
    memory_bytes: dict = field(default_factory=dict)  # rank -> bytes

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a contiguous node range on one or more ranks."""

    index: int
    node_start: int
    node_stop: int
    ranks: tuple
    mode: str = "single"
    segments: tuple = ()
    send_bytes: int = 0  # bytes per frame to the next stage (0 for the last stage)
    predicted: StagePrediction | None = None


@dataclass(frozen=True)
class Plan:
    """A whole plan. `to_json()` / `Plan.from_json()` round-trip it; `validate()` checks invariants."""

    model: str
    n_nodes: int
    devices: tuple
    stages: tuple
    planner: str = "dp"
    objective: str = "throughput"
    engine: str = "numpy"
    link_bandwidth_bps: float = 94e6
    link_latency_s: float = 0.0
    model_seed: int = 0
    predicted_throughput_fps: float = 0.0
    predicted_latency_s: float = 0.0
    notes: tuple = ()

    @property
    def n_ranks(self) -> int:
        return len(self.devices)

    def stage_of_rank(self, rank: int) -> Stage:
        """The stage a rank belongs to."""
        for s in self.stages:
            if rank in s.ranks:
                return s
        raise PisplitError(f"plan: rank {rank} is in no stage")

    def validate(self) -> "Plan":
        """Check the invariants; raises PisplitError naming the first broken one. Returns self."""
        if not self.stages:
            raise PisplitError("plan: has no stages")
        ranks = [d.rank for d in self.devices]
        if sorted(ranks) != list(range(len(ranks))):
            raise PisplitError(f"plan: device ranks {ranks} are not 0..{len(ranks) - 1}")
        expect = 0
        seen: set[int] = set()
        for s in self.stages:
            if s.node_start != expect or s.node_stop <= s.node_start:
                raise PisplitError(f"plan: stage {s.index} covers nodes [{s.node_start}, {s.node_stop}), expected to start at {expect}")
            expect = s.node_stop
            if s.mode not in STAGE_MODES:
                raise PisplitError(f"plan: stage {s.index} has mode {s.mode!r} (expected one of {', '.join(STAGE_MODES)})")
            if not s.ranks or seen & set(s.ranks) or not set(s.ranks) <= set(ranks):
                raise PisplitError(f"plan: stage {s.index} ranks {list(s.ranks)} are empty, reused or unknown")
            seen |= set(s.ranks)
            if s.mode == "single" and len(s.ranks) != 1:
                raise PisplitError(f"plan: stage {s.index} is 'single' but has ranks {list(s.ranks)}")
            if s.mode == "split":
                seg_expect = s.node_start
                for g in s.segments:
                    if g.node_start != seg_expect or g.node_stop <= g.node_start:
                        raise PisplitError(f"plan: stage {s.index} segment [{g.node_start}, {g.node_stop}) breaks the node order")
                    seg_expect = g.node_stop
                    if g.output_layout not in ("lead", "parts") or (g.output_layout == "parts" and g.kind == "none"):
                        raise PisplitError(f"plan: stage {s.index} segment at node {g.node_start}: output_layout {g.output_layout!r} "
                                           "(expected 'lead', or 'parts' for a split segment)")
                    if g.kind != "none" and (not set(g.ranks) <= set(s.ranks) or len(g.sizes) != len(g.ranks)):
                        raise PisplitError(f"plan: stage {s.index} segment at node {g.node_start}: ranks {list(g.ranks)} / sizes {list(g.sizes)} do not fit the stage")
                if seg_expect != s.node_stop:
                    raise PisplitError(f"plan: stage {s.index} segments end at node {seg_expect}, the stage at {s.node_stop}")
        if expect != self.n_nodes:
            raise PisplitError(f"plan: stages end at node {expect}, the model has {self.n_nodes} nodes")
        if seen != set(ranks):
            raise PisplitError(f"plan: ranks {sorted(set(ranks) - seen)} belong to no stage")
        return self

    # --- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON data with format and version."""
        doc = {"format": PLAN_FORMAT, "version": PLAN_VERSION, **asdict(self)}
        return json.loads(json.dumps(doc))  # tuples -> lists, keys -> str

    def to_json(self, indent: int = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, doc: dict) -> "Plan":
        """Rebuild a plan from `to_dict()` data; raises PisplitError for other documents."""
        if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
            raise PisplitError(f"plan: not a pisplit plan (no \"format\": \"{PLAN_FORMAT}\")")
        if doc.get("version") != PLAN_VERSION:
            raise PisplitError(f"plan: version {doc.get('version')} is not supported (expected {PLAN_VERSION})")
        try:
            devices = tuple(Device(**d) for d in doc["devices"])
            stages = []
            for s in doc["stages"]:
                pred = s.get("predicted")
                stages.append(Stage(
                    index=s["index"], node_start=s["node_start"], node_stop=s["node_stop"], ranks=tuple(s["ranks"]),
                    mode=s.get("mode", "single"),
                    segments=tuple(Segment(g["node_start"], g["node_stop"], g.get("kind", "none"), tuple(g.get("ranks", ())),
                                           tuple(g.get("sizes", ())), dict(g.get("options", {})),
                                           g.get("output_layout", "lead")) for g in s.get("segments", ())),
                    send_bytes=s.get("send_bytes", 0),
                    predicted=StagePrediction(pred["compute_s"], pred["comm_s"], {int(k): v for k, v in pred.get("memory_bytes", {}).items()}) if pred else None,
                ))
            fields = {k: v for k, v in doc.items() if k not in ("format", "version", "devices", "stages")}
            fields["notes"] = tuple(fields.get("notes", ()))
            return cls(devices=devices, stages=tuple(stages), **fields)
        except (KeyError, TypeError) as exc:
            raise PisplitError(f"plan: malformed document ({exc!r})") from None

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read and validate a plan file."""
        doc = read_json(path, "plan")
        try:
            return cls.from_dict(doc).validate()
        except PisplitError as exc:
            raise PisplitError(f"plan {path}: {str(exc).removeprefix('plan: ')}") from None
