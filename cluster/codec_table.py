"""Measure a model's codec table (partitioners.link_pricing.CodecTable) on sample frames.

Frames, in this order of preference (the table records which):
- a trained model (layers/trained): its held-out test split (real digits), which also gives each lossy
  codec's accuracy loss at each cut (top-1 of the model's last output, decoded features vs exact);
- a model with one (1, H, W, 3) input: photographs (scikit-learn's china.jpg and flower.jpg,
  centre-cropped, ImageNet-normalised; cluster.measure.photo_frames), smooth synthetic images when
  scikit-learn is missing;
- otherwise the runtime's seeded random frames (cluster.runtime.synthetic_frame): ratios on random
  inputs say little about real ones, and the table says so.

Per cut 0 (the input) .. n-1 and codec: the cut's tensors are encoded one message each; bytes are the
mean over frames, encode and decode seconds the median, the relative error the worst; a cut of several
tensors keeps each tensor's figures too (a link may code each tensor with its own codec). The table
records this machine's speed against the reference profile (`machine_speed`, cluster.host_speed),
so the planner can turn its seconds into a Pi's (partitioners.link_pricing.in_reference_seconds).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from layers.errors import PisplitError
from layers.graph import Graph
from partitioners.codecs import decode, encode, parse_codec
from partitioners.link_pricing import CodecSample, CodecTable, CutCodecs, TensorCodecSamples
from partitioners.vocabulary import StageMode

DEFAULT_CODECS = ("rle-huffman", "zstd", "lz4", "fp16+zstd", "int8+zstd", "jpeg:90", "jpeg:50", "jpeg:20")


def sample_frames(graph: Graph, model: str, n: int, seed: int = 0) -> tuple[list[dict], str, tuple | None]:
    """(n frames as graph feeds, where they come from, (feeds, labels) of a held-out split or None)."""
    from layers.trained import held_out, trained_names

    if model.lower() in trained_names():
        feeds, labels = held_out(model.lower())
        count = len(labels)
        frames = [{t: x[i: i + 1] for t, x in feeds.items()} for i in range(min(n, count))]
        return frames, f"held-out test split of {model} ({count} frames)", (feeds, labels)
    shapes = list(graph.inputs.values())
    if len(shapes) == 1 and len(shapes[0]) == 4 and shapes[0][0] == 1 and shapes[0][-1] == 3:
        from .measure import photo_frames

        images, source = photo_frames(tuple(shapes[0]), n)
        return [{next(iter(graph.inputs)): x} for x in images], source, None
    from .runtime import synthetic_frame

    return [dict(synthetic_frame(graph, seed, f)) for f in range(n)], f"seeded random frames (seed {seed}): not real data", None


def entropy_bits(x: np.ndarray) -> float:
    """Entropy of `x` quantised to 256 levels between its min and max, in bits per element."""
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if hi == lo:
        return 0.0
    q = np.clip(np.round((x - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)
    p = np.bincount(q.reshape(-1), minlength=256) / q.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def cut_tensors_per_frame(graph: Graph, feeds: dict):
    """(cut, {tensor: array}) for cuts 0 (the input) .. n-1 of one frame, in order."""
    env = dict(feeds)
    yield 0, env
    for cut in range(1, len(graph)):
        env = graph.execute(env, cut - 1, cut)
        yield cut, env


def _time(fn, repeat: int = 1):
    """(fn's result, its fastest of `repeat` runs in seconds)."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def measure_codec_table(graph: Graph, model: str, codecs=DEFAULT_CODECS, n_frames: int = 2, accuracy_frames: int = 100,
                        cuts: list | None = None, machine: str = "host", progress=None, machine_speed: float = 1.0) -> CodecTable:
    """The codec table of `graph` on `n_frames` sample frames; with a held-out split (trained models),
    each lossy codec's accuracy loss on its first `accuracy_frames` frames. `machine_speed`: this
    machine's seconds over the `machine` kind's calibration (this_machine_speed)."""
    codecs = [parse_codec(c) for c in codecs]
    missing = [c.name for c in codecs if not c.available()]
    if missing:
        raise PisplitError(f"codecs {', '.join(missing)}: their libraries are not installed (pip install 'pisplit[codecs]')")
    frames, source, labelled = sample_frames(graph, model, n_frames)
    wanted = set(range(len(graph))) if cuts is None else set(cuts)
    acc: dict = {}  # (cut, codec) -> lists
    for f, feeds in enumerate(frames):
        for cut, env in cut_tensors_per_frame(graph, feeds):
            if cut not in wanted:
                continue
            if progress:
                progress(f, cut)
            values = np.concatenate([np.asarray(x, np.float32).reshape(-1) for x in env.values()])
            stats = acc.setdefault((cut, None), {"entropy": [], "nonzero": []})
            stats["entropy"].append(entropy_bits(values))
            stats["nonzero"].append(float(np.count_nonzero(values)) / max(values.size, 1))
            for codec in codecs:
                total = enc_s = dec_s = 0.0
                worst = 0.0
                refused = False
                per_tensor = []
                for x in (env[t] for t in graph.cut_tensors(cut)):
                    x = np.asarray(x, np.float32)
                    repeat = 3 if x.nbytes < (1 << 20) else 1  # small tensors: the fastest of 3 (timer and scheduler noise)
                    try:
                        msg, e = _time(lambda: encode(x, codec), repeat)
                    except PisplitError:
                        refused = True  # e.g. fp16 beyond half's range: not a candidate on this cut
                        break
                    y, d = _time(lambda: decode(msg), repeat)
                    total, enc_s, dec_s = total + len(msg), enc_s + e, dec_s + d
                    peak = float(np.abs(x).max()) if x.size else 0.0
                    error = float(np.abs(y.astype(np.float64) - x).max()) / peak if not codec.lossless and peak > 0 else 0.0
                    worst = max(worst, error)
                    per_tensor.append((len(msg), e, d, error))
                slot = acc.setdefault((cut, codec.name), {"bytes": [], "enc": [], "dec": [], "err": 0.0, "refused": False, "tensors": []})
                slot["refused"] |= refused
                if not refused:
                    slot["bytes"].append(total)
                    slot["enc"].append(enc_s)
                    slot["dec"].append(dec_s)
                    slot["err"] = max(slot["err"], worst)
                    slot["tensors"].append(per_tensor)
    table_cuts = []
    for cut in sorted(wanted):
        samples = []
        for codec in codecs:
            slot = acc.get((cut, codec.name))
            if slot is None or slot["refused"] or not slot["bytes"]:
                continue
            samples.append(CodecSample(codec.name, float(np.mean(slot["bytes"])), float(statistics.median(slot["enc"])),
                                       float(statistics.median(slot["dec"])), float(slot["err"]), codec.lossless))
        stats = acc.get((cut, None), {"entropy": [0.0], "nonzero": [1.0]})
        table_cuts.append(CutCodecs(cut, graph.nodes[cut - 1].name if cut else "input", int(graph.cut_bytes(cut)), len(graph.cut_tensors(cut)),
                                    tuple(samples), float(np.mean(stats["entropy"])), float(np.mean(stats["nonzero"])),
                                    _tensor_samples(graph, cut, codecs, acc)))
    table = CodecTable(model, len(graph), source, len(frames), machine, tuple(table_cuts), float(machine_speed)).validate()
    lossy = [c for c in codecs if not c.lossless]
    if labelled and lossy and accuracy_frames > 0:
        table = with_accuracy(table, accuracy_losses(graph, labelled, lossy, sorted(wanted), accuracy_frames))
    return table


def _tensor_samples(graph: Graph, cut: int, codecs: list, acc: dict) -> tuple:
    """Per tensor of a cut of several: each codec's mean bytes, median seconds and worst error on it."""
    names = graph.cut_tensors(cut)
    if len(names) < 2:
        return ()
    out = []
    for i, name in enumerate(names):
        samples = []
        for codec in codecs:
            slot = acc.get((cut, codec.name))
            if slot is None or slot["refused"] or not slot["tensors"]:
                continue
            rows = [frame[i] for frame in slot["tensors"]]
            samples.append(CodecSample(codec.name, float(np.mean([r[0] for r in rows])), float(statistics.median(r[1] for r in rows)),
                                       float(statistics.median(r[2] for r in rows)), float(max(r[3] for r in rows)), codec.lossless))
        out.append(TensorCodecSamples(name, int(graph.tensor_bytes(name)), tuple(samples)))
    return tuple(out)


def this_machine_speed(model: str, engine: str = "numpy") -> float:
    """This machine's seconds over the reference profile's for `model` (cluster.host_speed, measured
    once and cached); 1.0 when it cannot be measured (a note in the log)."""
    import logging

    from .host_speed import host_speed

    try:
        return float(host_speed(model, 0, engine) or 1.0)
    except PisplitError as exc:
        logging.getLogger(__name__).warning("codec table: this machine's speed not measured (%s): seconds taken as the reference's", exc)
        return 1.0


def accuracy_losses(graph: Graph, labelled: tuple, codecs: list, cuts: list, n: int) -> dict:
    """{(cut, codec name): top-1 accuracy of the exact model minus that with the cut's tensors encoded
    and decoded}, on the first `n` frames of the held-out split, for the model's last output."""
    feeds, labels = labelled
    n = min(n, len(labels))
    feeds = {t: x[:n] for t, x in feeds.items()}
    labels = np.asarray(labels[:n])
    final = graph.outputs[-1]
    exact = float(np.mean(np.argmax(graph.execute(feeds)[final].reshape(n, -1), axis=1) == labels))
    out = {}
    for cut, env in cut_tensors_per_frame(graph, feeds):
        if cut not in cuts:
            continue
        for codec in codecs:
            try:
                coded = {t: np.concatenate([decode(encode(np.asarray(x[i: i + 1], np.float32), codec)) for i in range(n)])
                         for t, x in env.items()}
            except PisplitError:
                continue
            y = graph.execute(coded, cut)[final].reshape(n, -1)
            out[(cut, codec.name)] = exact - float(np.mean(np.argmax(y, axis=1) == labels))
    return out


def plan_accuracy(graph: Graph, model: str, plan, n: int = 200) -> tuple[float, float, int] | None:
    """(top-1 of the exact model, top-1 with every lossy link codec of `plan` applied, frames) on the
    first `n` frames of `model`'s held-out split (the model's last output), each frame's cut tensors
    encoded and decoded one frame at a time as the links do; None for a model without one. A lossy
    input codec (a data-parallel first stage) is applied to the frames rank 0 hands to other replicas."""
    from layers.trained import held_out, trained_names
    from partitioners.codecs import link_codecs

    from .runtime import entry_rank

    if model.lower() not in trained_names():
        return None
    feeds, labels = held_out(model.lower())
    n = min(n, len(labels))
    env = {t: x[:n] for t, x in feeds.items()}
    labels = np.asarray(labels[:n])
    final = graph.outputs[-1]
    exact = float(np.mean(np.argmax(graph.execute(env)[final].reshape(n, -1), axis=1) == labels))

    def coded(env: dict, cut: int, codec: str, frames) -> dict:
        out = dict(env)
        for t, c in zip(graph.cut_tensors(cut), link_codecs(codec, len(graph.cut_tensors(cut)))):
            if not c.lossless:
                x = np.array(env[t], np.float32)
                for i in frames:
                    x[i: i + 1] = decode(encode(x[i: i + 1], c))
                out[t] = x
        return out

    first = plan.stages[0]
    if first.mode == StageMode.DATA_PARALLEL and len(first.ranks) > 1:
        env = coded(env, 0, plan.input_codec, [f for f in range(n) if entry_rank(first, f) != 0])
    start = 0
    for s in plan.stages[:-1]:
        env = coded(graph.execute(env, start, s.node_stop), s.node_stop, s.send_codec, range(n))
        start = s.node_stop
    y = graph.execute(env, start)[final].reshape(n, -1)
    return exact, float(np.mean(np.argmax(y, axis=1) == labels)), n


def with_accuracy(table: CodecTable, losses: dict) -> CodecTable:
    """The table with each lossy sample's measured accuracy loss (where measured)."""
    from dataclasses import replace

    cuts = tuple(replace(c, samples=tuple(replace(s, accuracy_loss=losses[(c.cut, s.codec)]) if (c.cut, s.codec) in losses else s
                                          for s in c.samples)) for c in table.cuts)
    return replace(table, cuts=cuts)


def check_table(table: CodecTable, graph: Graph) -> CodecTable:
    """A codec table that belongs to `graph` (its node count and every measured cut's bytes)."""
    if table.n_nodes != len(graph) or any(c.raw_bytes != graph.cut_bytes(c.cut) for c in table.cuts):
        raise PisplitError(f"codec table of {table.model}: does not match model {graph.name} ({len(graph)} nodes)")
    for c in table.cuts:
        if c.tensors and [t.name for t in c.tensors] != list(graph.cut_tensors(c.cut)):
            raise PisplitError(f"codec table of {table.model}: cut {c.cut}'s tensors are not those of model {graph.name}")
    return table

