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
`Stage.send_codec` names the link codec of that transfer (partitioners.codecs: "raw", "zstd",
"int8+rle-huffman", "jpeg:50", ...): each cut tensor travels as one self-describing, checksummed
message of that codec (cluster.link_codecs). `Plan.input_codec` does the same for the input frames
rank 0 (the source) hands to the first stage's other entry ranks (the replicas of a data-parallel
first stage); frames rank 0 computes itself cross no link and are not encoded. Plans written before
these fields existed load as "raw" (the float32 buffer as before); results always travel raw.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from layers.engine import ENGINES
from layers.errors import PisplitError
from layers.jsonfile import read_json

from .layouts import OUTPUT_LAYOUTS
from .split_parts import SPLIT_KINDS
from .vocabulary import NO_SPLIT, StageMode

PLAN_FORMAT = "pisplit-plan"
PLAN_VERSION = 1
STAGE_MODES = tuple(StageMode)  # partitioners.vocabulary: "single", "split", "data-parallel"
SEGMENT_KINDS = (NO_SPLIT, *SPLIT_KINDS)


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
    # what the cost model expects of this segment per frame, in seconds: (compute, transfer), the
    # transfer being what moves into it (a scatter, or the transition from the strips kept before it)
    # and out of it (a gather, unless it keeps its output); empty in hand-made plans
    predicted: tuple = ()


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
    send_codec: str = "raw"  # link codec of the transfer to the next stage (partitioners.codecs names)


@dataclass(frozen=True)
class Exit:
    """An early exit (partitioners.exits): graph output `name` answers a frame when its normalised
    entropy is at most `threshold` (in [0, 1]); later stages then spend nothing on the frame.
    `exit_fraction`, when measured (`pisplit calibrate`), is the share of all frames answered here on
    held-out data at this threshold; the planner's throughput with exits uses it."""

    name: str
    threshold: float
    exit_fraction: float | None = None


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
    input_codec: str = "raw"  # link codec of the input frames rank 0 sends to the first stage (partitioners.codecs names)
    exits: tuple = ()  # Exit records, in any order (the runtime orders them by depth); () = no early exits

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
        """Check the invariants the runtime relies on; raises PisplitError naming the first broken one. Returns self."""
        _check_plan_fields(self)
        _check_devices(self.devices)
        if not self.stages:
            raise PisplitError("plan: has no stages")
        known = {d.rank for d in self.devices}
        expect = 0
        seen: set = set()
        for position, s in enumerate(self.stages):
            _check_stage(s, position, expect, known, seen)
            expect = s.node_stop
            seen |= set(s.ranks)
        if expect != self.n_nodes:
            raise PisplitError(f"plan: stages end at node {expect}, the model has {self.n_nodes} nodes")
        _check_codec_name(self.input_codec, "plan: input_codec")
        if self.stages[-1].send_codec != "raw":
            raise PisplitError(f"plan: the last stage's send_codec is {self.stages[-1].send_codec!r}: results travel raw")
        if seen != known:
            raise PisplitError(f"plan: ranks {sorted(known - seen)} belong to no stage")
        _check_exits(self.exits)
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
        """Rebuild a plan from `to_dict()` data; raises PisplitError naming the field for other documents."""
        if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
            raise PisplitError(f"plan: not a pisplit plan (no \"format\": \"{PLAN_FORMAT}\")")
        version = doc.get("version")
        if not _is_int(version) or version != PLAN_VERSION:
            raise PisplitError(f"plan: version {_shown(version)} is not supported (expected {PLAN_VERSION})")
        body = {k: v for k, v in doc.items() if k not in ("format", "version")}
        return _build(cls, body, "", _PLAN_FIELDS)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read and validate a plan file."""
        doc = read_json(path, "plan")
        try:
            return cls.from_dict(doc).validate()
        except PisplitError as exc:
            raise PisplitError(f"plan {path}: {str(exc).removeprefix('plan: ')}") from None


# --- checks of a plan's values (validate) ------------------------------------------------------------
def _check_plan_fields(plan: Plan) -> None:
    """The plan-wide fields: model, node count, engine and link."""
    if not plan.model:
        raise PisplitError("plan: model is empty")
    if plan.n_nodes < 1:
        raise PisplitError(f"plan: n_nodes {plan.n_nodes} must be at least 1")
    if plan.engine not in ENGINES:
        raise PisplitError(f"plan: engine {plan.engine!r} is unknown (expected one of {', '.join(ENGINES)})")
    if not plan.link_bandwidth_bps > 0:
        raise PisplitError(f"plan: link_bandwidth_bps {plan.link_bandwidth_bps} must be positive")
    if not 0 <= plan.link_latency_s < math.inf:
        raise PisplitError(f"plan: link_latency_s {plan.link_latency_s} must be a non-negative number of seconds")


def _check_exits(exits: tuple) -> None:
    """Early exits: distinct non-empty names, thresholds in [0, 1], measured fractions in [0, 1] adding to at most 1."""
    names = [e.name for e in exits]
    if len(set(names)) != len(names) or not all(names):
        raise PisplitError(f"plan: exits {names} are empty or repeated")
    for e in exits:
        if not 0.0 <= e.threshold <= 1.0:
            raise PisplitError(f"plan: exit {e.name} has threshold {e.threshold} (normalised entropy: must be in [0, 1])")
        if e.exit_fraction is not None and not 0.0 <= e.exit_fraction <= 1.0:
            raise PisplitError(f"plan: exit {e.name} has exit_fraction {e.exit_fraction} (a share of frames: must be in [0, 1])")
    if sum(e.exit_fraction or 0.0 for e in exits) > 1.0 + 1e-9:
        raise PisplitError("plan: the exits' exit_fraction add up to more than 1")


def _check_devices(devices: tuple) -> None:
    """Device i has rank i, a kind, a memory size and a positive speed."""
    if not devices:
        raise PisplitError("plan: has no devices")
    ranks = [d.rank for d in devices]
    if sorted(ranks) != list(range(len(ranks))):
        raise PisplitError(f"plan: device ranks {ranks} are not 0..{len(ranks) - 1}")
    for i, d in enumerate(devices):
        if d.rank != i:
            raise PisplitError(f"plan: devices[{i}] has rank {d.rank} (devices are listed in rank order: expected {i})")
        if not d.kind:
            raise PisplitError(f"plan: device of rank {i} has an empty kind")
        if d.memory_bytes < 0:
            raise PisplitError(f"plan: device of rank {i} has memory_bytes {d.memory_bytes} (must not be negative)")
        if not 0 < d.speed < math.inf:
            raise PisplitError(f"plan: device of rank {i} has speed {d.speed} (must be a positive number)")
        if d.host is not None and not d.host:
            raise PisplitError(f"plan: device of rank {i} has an empty host (leave it null for any host)")


def _check_stage(s: Stage, position: int, expect: int, known: set, seen: set) -> None:
    """Stage `position`: its index, node range, mode, ranks and (for split stages) its segments."""
    if s.index != position:
        raise PisplitError(f"plan: stages[{position}] has index {s.index} (stage i must have index i: expected {position})")
    if s.node_start != expect or s.node_stop <= s.node_start:
        raise PisplitError(f"plan: stage {s.index} covers nodes [{s.node_start}, {s.node_stop}), expected to start at {expect}")
    if s.mode not in STAGE_MODES:
        raise PisplitError(f"plan: stage {s.index} has mode {s.mode!r} (expected one of {', '.join(STAGE_MODES)})")
    if not s.ranks or len(set(s.ranks)) != len(s.ranks) or seen & set(s.ranks) or not set(s.ranks) <= known:
        raise PisplitError(f"plan: stage {s.index} ranks {list(s.ranks)} are empty, repeated, reused or unknown")
    if s.mode == StageMode.SINGLE and len(s.ranks) != 1:
        raise PisplitError(f"plan: stage {s.index} is 'single' but has ranks {list(s.ranks)}")
    if s.send_bytes < 0:
        raise PisplitError(f"plan: stage {s.index} has send_bytes {s.send_bytes} (must not be negative)")
    _check_send_codec(s)
    if s.mode != StageMode.SPLIT:
        if s.segments:
            raise PisplitError(f"plan: stage {s.index} is '{s.mode}' but has segments (only 'split' stages have them)")
        return
    seg_expect = s.node_start
    for g in s.segments:
        if g.node_start != seg_expect or g.node_stop <= g.node_start:
            raise PisplitError(f"plan: stage {s.index} segment [{g.node_start}, {g.node_stop}) breaks the node order")
        seg_expect = g.node_stop
        _check_segment(s, g)
    if seg_expect != s.node_stop:
        raise PisplitError(f"plan: stage {s.index} segments end at node {seg_expect}, the stage at {s.node_stop}")


def _check_send_codec(s: Stage) -> None:
    """A stage's send_codec: a codec name partitioners.codecs parses (raw for the last stage, checked in validate)."""
    _check_codec_name(s.send_codec, f"plan: stage {s.index} send_codec")


def _check_codec_name(name: str, where: str) -> None:
    from .codecs import parse_codec

    try:
        parse_codec(name)
    except PisplitError as exc:
        raise PisplitError(f"{where}: {exc}") from None


def _check_segment(s: Stage, g: Segment) -> None:
    """A split stage's segment: a known kind, its ranks among the stage's, one positive size per rank."""
    where = f"plan: stage {s.index} segment at node {g.node_start}"
    if g.kind not in SEGMENT_KINDS:
        raise PisplitError(f"{where}: kind {g.kind!r} is unknown (expected one of {', '.join(SEGMENT_KINDS)})")
    if g.output_layout not in OUTPUT_LAYOUTS or (g.output_layout == "parts" and g.kind == NO_SPLIT):
        raise PisplitError(f"{where}: output_layout {g.output_layout!r} (expected 'lead', or 'parts' for a split segment)")
    if not set(g.ranks) <= set(s.ranks) or len(set(g.ranks)) != len(g.ranks):
        raise PisplitError(f"{where}: ranks {list(g.ranks)} are repeated or not among the stage's {list(s.ranks)}")
    if g.predicted and (len(g.predicted) != 2 or not all(0 <= v < math.inf for v in g.predicted)):
        raise PisplitError(f"{where}: predicted {list(g.predicted)} must be two seconds, compute and transfer (or absent)")
    if g.kind == NO_SPLIT:
        return
    if not g.ranks or len(g.sizes) != len(g.ranks):
        raise PisplitError(f"{where}: ranks {list(g.ranks)} / sizes {list(g.sizes)} do not fit the stage (one size per rank)")
    if not all(0 < v < math.inf for v in g.sizes):
        raise PisplitError(f"{where}: sizes {list(g.sizes)} must be positive (part sizes, or weights)")


# --- reading a plan document (from_dict): every field's JSON type checked, errors name the field ------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _shown(value) -> str:
    """A JSON value as it reads in an error message, cut to 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _expected(where: str, what: str, value) -> PisplitError:
    return PisplitError(f"plan: {where}: expected {what}, got {_shown(value)}")


def _integer(value, where: str) -> int:
    if not _is_int(value):
        raise _expected(where, "an integer", value)
    return value


def _number(value, where: str):
    """An integer or a float as it is (not NaN)."""
    if not _is_number(value):
        raise _expected(where, "a number", value)
    return value


def _string(value, where: str) -> str:
    if not isinstance(value, str):
        raise _expected(where, "a string", value)
    return value


def _host(value, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _expected(where, "a host name (a string) or null", value)
    return value


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise _expected(where, "an object", value)
    return dict(value)


def _list_of(item):
    """A checker of a JSON list whose items `item` checks; gives a tuple."""

    def check(value, where: str) -> tuple:
        if not isinstance(value, list):
            raise _expected(where, "a list", value)
        return tuple(item(v, f"{where}[{i}]") for i, v in enumerate(value))

    return check


def _rank_bytes(value, where: str) -> dict:
    """Predicted memory per rank: {"0": bytes, ...} -> {0: bytes, ...}."""
    out = {}
    for key, v in _object(value, where).items():
        if not (isinstance(key, str) and key.isdigit()) and not _is_int(key):
            raise PisplitError(f"plan: {where}: key {_shown(key)} is not a rank")
        out[int(key)] = _number(v, f"{where}[{key}]")
    return out


def _build(cls, doc, where: str, checks: dict):
    """An instance of dataclass `cls` from the JSON object `doc`: unknown or missing fields and values of
    the wrong type raise PisplitError naming the field; fields without a check are taken as they are."""
    if not isinstance(doc, dict):
        raise _expected(where or "the document", "an object", doc)
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in doc if k not in known]
    if unknown:
        raise PisplitError(f"plan: {where + ': ' if where else ''}unknown field {_shown(unknown[0])} "
                           f"(known: {', '.join(known)})")
    values = {}
    for name, f in known.items():
        here = f"{where}.{name}" if where else name
        if name not in doc:
            if f.default is MISSING and f.default_factory is MISSING:
                raise PisplitError(f"plan: {here} is missing")
            continue
        check = checks.get(name)
        values[name] = check(doc[name], here) if check else doc[name]
    return cls(**values)


def _optional_prediction(value, where: str) -> StagePrediction | None:
    return None if value is None else _build(StagePrediction, value, where, _PREDICTION_FIELDS)


_DEVICE_FIELDS = {"rank": _integer, "kind": _string, "memory_bytes": _integer, "host": _host, "speed": _number}
_SEGMENT_FIELDS = {"node_start": _integer, "node_stop": _integer, "kind": _string, "ranks": _list_of(_integer),
                   "sizes": _list_of(_number), "options": _object, "output_layout": _string, "predicted": _list_of(_number)}
_PREDICTION_FIELDS = {"compute_s": _number, "comm_s": _number, "memory_bytes": _rank_bytes}
_STAGE_FIELDS = {"index": _integer, "node_start": _integer, "node_stop": _integer, "ranks": _list_of(_integer), "mode": _string,
                 "segments": _list_of(lambda v, w: _build(Segment, v, w, _SEGMENT_FIELDS)), "send_bytes": _integer,
                 "predicted": _optional_prediction, "send_codec": _string}
_EXIT_FIELDS = {"name": _string, "threshold": _number,
                "exit_fraction": lambda v, w: None if v is None else _number(v, w)}
_PLAN_FIELDS = {"exits": _list_of(lambda v, w: _build(Exit, v, w, _EXIT_FIELDS)), "model": _string, "n_nodes": _integer, "devices": _list_of(lambda v, w: _build(Device, v, w, _DEVICE_FIELDS)),
                "stages": _list_of(lambda v, w: _build(Stage, v, w, _STAGE_FIELDS)), "planner": _string, "objective": _string,
                "engine": _string, "link_bandwidth_bps": _number, "link_latency_s": _number, "model_seed": _integer,
                "predicted_throughput_fps": _number, "predicted_latency_s": _number, "notes": _list_of(_string),
                "input_codec": _string}
