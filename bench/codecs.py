"""Link codecs on real-looking activations (issue 15; the seed paper's Figure 4(b)/5(b)).

For every layer of AlexNet and VGG16 (zoo models: seeded random weights, not trained): the entropy and
non-zero ratio of its output, and per codec the compression ratio (whole message, header included),
encode and decode milliseconds on this machine, and for lossy codecs the relative error
(max abs error / max |x|). Frames: scikit-learn's two bundled sample photographs (china.jpg and
flower.jpg, 427x640) centre-cropped and resized to the model's input, normalised with ImageNet's
mean/std, when scikit-learn is installed; smooth synthetic images otherwise (the output says which).
Entropy is that of the tensor quantised to 256 levels between its min and max, in bits per element.

`--fuzz N` instead runs N corrupted messages through each codec's decoder: truncated at a random
length, 1-4 random bytes flipped, bytes appended (each must raise PisplitError) and payload bytes
flipped with the checksum recomputed (PisplitError or a tensor of the header's shape and dtype); any
other outcome is counted as a failure and fails the run.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import zlib

import numpy as np

from cluster.measure import measure_codec, photo_frames
from layers import zoo_model
from layers.errors import PisplitError
from partitioners import codecs
from partitioners.codecs import available_codecs, decode, encode, parse_codec

DEFAULT_CODECS = "raw,rle-huffman,zlib,zstd,zstd:9,lz4,fp16,fp16+rle-huffman,int8,int8+rle-huffman,int8+zstd,jpeg:90,jpeg:50,jpeg:20"
SKIP_OPS = {"flatten", "dropout", "reshape"}  # outputs equal to their input's bytes


def entropy_bits(x: np.ndarray) -> float:
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return 0.0
    q = np.clip(((x - lo) / (hi - lo) * 255).round(), 0, 255).astype(np.uint8)
    p = np.bincount(q.reshape(-1), minlength=256) / q.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def layer_outputs(graph, frame: np.ndarray):
    """(node name, output) for every node of the graph on one frame, in order."""
    env = {next(iter(graph.inputs)): frame}
    for node in graph.nodes:
        outs = graph.run_node(node, [env[t] for t in node.inputs])
        env.update(zip(node.outputs, outs))
        if node.op not in SKIP_OPS:
            yield node.name, outs[0]


def bench_model(model: str, codec_list, n_frames: int, repeat: int):
    graph = zoo_model(model)
    fr, source = photo_frames(next(iter(graph.inputs.values())), n_frames)
    rows: dict[str, dict] = {}
    for frame in fr:
        for name, y in layer_outputs(graph, frame):
            r = rows.setdefault(name, {"layer": name, "shape": list(y.shape), "bytes": int(y.nbytes), "n": 0,
                                       "nonzero": 0.0, "entropy": 0.0, "codecs": {}})
            r["n"] += 1
            r["nonzero"] += float(np.count_nonzero(y)) / y.size
            r["entropy"] += entropy_bits(y)
            for c in codec_list:
                try:
                    m = measure_codec(c, y, repeat=repeat)
                except PisplitError as e:  # e.g. fp16 refusing values beyond its range
                    r["codecs"].setdefault(c.name, {"error": str(e)})
                    continue
                acc = r["codecs"].setdefault(c.name, {"ratio": 0.0, "encode_ms": 0.0, "decode_ms": 0.0, "rel_error": 0.0, "rms_rel": 0.0})
                if "error" in acc:
                    continue
                acc["ratio"] += m.ratio
                acc["encode_ms"] += m.encode_s * 1e3
                acc["decode_ms"] += m.decode_s * 1e3
                acc["rel_error"] = max(acc["rel_error"], m.rel_error)
                peak = m.max_abs_error / m.rel_error if m.rel_error else 0.0
                acc["rms_rel"] = max(acc["rms_rel"], m.rms_error / peak if peak else 0.0)
    for r in rows.values():  # means over frames (errors: the worst)
        k = r.pop("n")
        r["nonzero"] /= k
        r["entropy"] /= k
        for acc in r["codecs"].values():
            for f in ("ratio", "encode_ms", "decode_ms"):
                if f in acc:
                    acc[f] /= k
    return {"model": model, "frames": source, "n_frames": len(fr), "layers": list(rows.values())}


def print_model(doc, codec_list) -> None:
    names = [c.name for c in codec_list]
    print(f"\n{doc['model']}: {doc['n_frames']} frames from {doc['frames']}; means over frames")
    width = max(13, *(len(n) for n in names))

    def table(title, cell, names=names):
        print(f"\n  {title}")
        print(f"  {'layer':<20}{'shape':>18}{'MB':>7}{'nz':>6}{'H':>6}" + "".join(f"{n:>{width + 1}}" for n in names))
        for r in doc["layers"]:
            shape = "x".join(map(str, r["shape"][1:]))
            cells = "".join(f"{cell(r['codecs'].get(n, {})):>{width + 1}}" for n in names)
            print(f"  {r['layer']:<20}{shape:>18}{r['bytes'] / 1e6:>7.2f}{r['nonzero']:>6.2f}{r['entropy']:>6.2f}{cells}")

    table("compression ratio (raw bytes / message bytes)", lambda a: "refused" if "error" in a else f"{a['ratio']:.2f}")
    table("encode ms / decode ms on this machine", lambda a: "-" if "error" in a else f"{a['encode_ms']:.1f}/{a['decode_ms']:.1f}")
    lossy = [c.name for c in codec_list if not c.lossless]
    if lossy:
        table("lossy: error relative to max |x|, max abs / root mean square (worst frame)",
              lambda a: "refused" if "error" in a else f"{a['rel_error']:.3f}/{a['rms_rel']:.4f}", lossy)


# --- fuzz -----------------------------------------------------------------------------------------------
def _reseal(msg: bytes) -> bytes:
    head_len = codecs._FIXED.size + 4 * msg[8] + codecs._TAIL.size
    crc = zlib.crc32(msg[head_len:], zlib.crc32(msg[: head_len - 4]))
    return msg[: head_len - 4] + struct.pack("<I", crc) + msg[head_len:]


def fuzz(codec, cases: int, seed: int = 0) -> dict:
    """`cases` corrupted messages through the decoder; counts of each outcome."""
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(64):  # varied tensors: shapes, sparsity, smooth and noisy
        ndim = int(rng.integers(1, 5))
        shape = tuple(int(d) for d in rng.integers(1, 12, ndim))
        x = rng.normal(0, 10.0 ** rng.uniform(-2, 2), shape).astype(np.float32)
        x[rng.random(shape) < rng.choice([0, 0.5, 0.9])] = 0
        if codec.lossless and i % 4 == 0:
            x.reshape(-1)[rng.integers(0, x.size, 2)] = [np.nan, -0.0]
        pool.append(encode(x, codec))
    counts = {"cases": 0, "raised": 0, "resealed_decoded": 0, "failures": 0}
    failures = []
    for i in range(cases):
        msg = pool[i % len(pool)]
        kind = i % 4
        head_len = codecs._FIXED.size + 4 * msg[8] + codecs._TAIL.size
        if kind == 0:
            bad = msg[: int(rng.integers(0, len(msg)))]
        elif kind == 1:
            b = bytearray(msg)
            for _ in range(int(rng.integers(1, 5))):
                b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
            bad = bytes(b)
        elif kind == 2:
            bad = msg + rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        else:
            if len(msg) == head_len:
                continue
            b = bytearray(msg)
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(head_len, len(b)))] ^= int(rng.integers(1, 256))
            bad = _reseal(bytes(b))
        if bad == msg:
            continue
        counts["cases"] += 1
        try:
            y = decode(bad)
        except PisplitError as e:
            if "\n" in str(e):
                counts["failures"] += 1
                failures.append(f"multi-line error: {e!r}")
            else:
                counts["raised"] += 1
            continue
        except Exception as e:  # noqa: BLE001 - exactly what the fuzzer hunts for
            counts["failures"] += 1
            failures.append(f"{type(e).__name__}: {e}")
            continue
        h = codecs.read_header(bad)
        if kind == 3 and y.shape == h.shape and y.dtype == h.dtype:
            counts["resealed_decoded"] += 1
        else:
            counts["failures"] += 1
            failures.append(f"case kind {kind} decoded into an array")
    counts["examples"] = failures[:3]
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_codecs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="alexnet,vgg16")
    ap.add_argument("--codecs", default=DEFAULT_CODECS, help=f"comma-separated codec names (default {DEFAULT_CODECS})")
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="encode/decode repetitions per tensor (fastest is kept)")
    ap.add_argument("--fuzz", type=int, nargs="?", const=10000, metavar="N", help="fuzz each codec's decoder with N (default 10000) corrupted messages instead")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    wanted = [parse_codec(n) for n in args.codecs.split(",") if n.strip()]
    codec_list = available_codecs([c.name for c in wanted])
    missing = [c.name for c in wanted if c not in codec_list]
    if missing:
        print(f"bench_codecs: skipping {', '.join(missing)} (library not installed: pip install 'pisplit[codecs]')", file=sys.stderr)
    if args.fuzz:
        results, bad = {}, 0
        for c in codec_list:
            t0 = time.perf_counter()
            r = fuzz(c, args.fuzz)
            r["seconds"] = round(time.perf_counter() - t0, 2)
            results[c.name] = r
            bad += r["failures"]
            if not args.json:
                print(f"{c.name:<18} {r['cases']:>7} corrupted messages: {r['raised']} raised PisplitError, "
                      f"{r['resealed_decoded']} resealed ones decoded to the header's shape, {r['failures']} failures"
                      f" ({r['seconds']} s){'  ' + '; '.join(r['examples']) if r['examples'] else ''}")
        if args.json:
            print(json.dumps(results, indent=1))
        return 1 if bad else 0
    docs = []
    for model in args.models.split(","):
        t0 = time.perf_counter()
        doc = bench_model(model.strip(), codec_list, args.frames, args.repeat)
        doc["seconds"] = round(time.perf_counter() - t0, 1)
        docs.append(doc)
        if not args.json:
            print_model(doc, codec_list)
    if args.json:
        print(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
