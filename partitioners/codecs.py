"""Link codecs (issue 15): encode one tensor (batch 1, any shape) into a self-describing message and
decode it on arrival.

Codecs are named by strings with parameters, parsed by `parse_codec`:

| name | lossless | what it does |
|---|---|---|
| `raw` | yes | the tensor's bytes |
| `rle-huffman` | yes | zero run-lengths + canonical Huffman, the entropy back end of JPEG (Ko et al.), vectorised |
| `zlib[:L]` | yes | the standard library's deflate, level 1-9 (default 6) |
| `zstd[:L]` | yes | Zstandard (the optional `zstandard` package), level -7..22 (default 3) |
| `lz4[:L]` | yes | LZ4 block (the optional `lz4` package); with L (1-12) its high-compression mode |
| `fp16` | no | IEEE half precision; NaN, inf and -0.0 are kept; finite values beyond half's range are refused |
| `int8` | no | per-channel (last axis) scale and zero point, 0 exact; NaN/inf refused |
| `jpeg[:QF]` | no | per-channel min/max to 8 bits, channels tiled into one grayscale image, JPEG at quality QF (1-100, default 75) via simplejpeg or Pillow; NaN/inf refused |
| `fp16+C`, `int8+C` | no | the quantiser, then lossless codec C (not raw) on its codes: `int8+rle-huffman`, `fp16+zstd:9` |

int8 and jpeg use one scale per channel when channels hold at least PER_CHANNEL_MIN (16) elements,
else one for the tensor (an fc layer's 4096 features), flattened into a near-square image for jpeg.
A lossless codec whose output would be larger than the tensor stores the tensor instead, and jpeg its
8-bit image when JPEG would be larger (FLAG_STORED), so `max_encoded_bytes` bounds every message.
int8 codes are q - zero_point mod 256, so an exact 0.0 is byte 0 and a lossless stage after '+' sees
the tensor's zero runs; the stage's output is a nested message (its own header and checksum).

A link (a plan's send_codec) names one codec for all its cut tensors or one per tensor, separated by
';' in Graph.cut_tensors order ('lz4;int8+zstd': a residual block's two tensors); parse_codec gives a
TensorCodecs for such a list and `link_codecs(spec, n)` the codec of each of n tensors. `work_bytes`
is the memory a codec needs while it encodes or decodes (for the planner's memory prediction).

Every message starts with a header: magic `PSC`, format version, codec id, its parameter, dtype,
shape, flags, payload length and a CRC-32 over header and payload. `decode` checks all of it first, so
a corrupt or truncated message raises a one-line `PisplitError` naming the codec and the problem; it
is never decoded into garbage. Payload decoders validate what they read as well.

Lossless codecs take any of the dtypes in `DTYPES` and round-trip bit for bit (NaN payloads, -0.0,
denormals, empty tensors). Lossy codecs take float32 and decode to float32; `error_bound(codec, x)`
is the largest absolute error they may introduce on `x` (checked by the tests); cluster.measure's
`measure_codec` the actual error along with size and encode/decode time, for the cost model.

Pure numpy: the optional libraries (zstandard, lz4, simplejpeg, Pillow) are imported inside the codec
functions that use them, so importing this module costs nothing and `partitioners` stays free of them.
"""
from __future__ import annotations

import heapq
import io
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from layers.errors import PisplitError

MAGIC = b"PSC"
VERSION = 1

# codec kind -> (id on the wire, lossless, default parameter, (min, max) parameter or None)
_KINDS: dict[str, tuple[int, bool, int | None, tuple[int, int] | None]] = {
    "raw": (1, True, None, None),
    "rle-huffman": (2, True, None, None),
    "zlib": (3, True, 6, (1, 9)),
    "zstd": (4, True, 3, (-7, 22)),
    "lz4": (5, True, 0, (1, 12)),  # 0 = the fast default mode (not written in the name)
    "fp16": (6, False, None, None),
    "int8": (7, False, None, None),
    "jpeg": (8, False, 75, (1, 100)),
}
_BY_ID = {v[0]: k for k, v in _KINDS.items()}

DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool")
_DTYPE_ID = {name: i + 1 for i, name in enumerate(DTYPES)}
_ID_DTYPE = {i: np.dtype(name) for name, i in _DTYPE_ID.items()}

_FIXED = struct.Struct("<3sBBhBBB")  # magic, version, codec id, parameter, dtype id, ndim, flags
_TAIL = struct.Struct("<QI")  # payload length, crc32
FLAG_PER_CHANNEL = 1  # int8/jpeg: one scale per channel (last axis) rather than one per tensor
FLAG_STORED = 2  # the codec's output was larger than storing: lossless codecs hold the raw bytes, jpeg its 8-bit image
FLAG_INNER = 4  # fp16/int8: the element codes are a nested message of a lossless codec ('int8+zstd')
PER_CHANNEL_MIN = 16  # elements per channel below which int8/jpeg use one scale for the tensor


# --- names --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Codec:
    """A link codec: `kind` (see the module table) and its integer parameter (None when it has none)."""

    kind: str
    param: int | None = None
    inner: "Codec | None" = None  # fp16/int8 only: the lossless codec of their element codes

    @property
    def name(self) -> str:
        default = _KINDS[self.kind][2]
        own = self.kind if self.param is None or self.param == default else f"{self.kind}:{self.param}"
        return own if self.inner is None else f"{own}+{self.inner.name}"

    @property
    def lossless(self) -> bool:
        return _KINDS[self.kind][1]

    @property
    def id(self) -> int:
        return _KINDS[self.kind][0]

    def __str__(self) -> str:
        return self.name

    def available(self) -> bool:
        """Whether the library this codec needs is installed here."""
        try:
            _library(self)
            if self.inner is not None:
                _library(self.inner)
        except PisplitError:
            return False
        return True

    def encode(self, x: np.ndarray) -> bytes:
        return encode(x, self)

    def decode(self, data: bytes, **expect) -> np.ndarray:
        return decode(data, expect_codec=self, **expect)


@dataclass(frozen=True)
class TensorCodecs:
    """A link's codecs, one per cut tensor in Graph.cut_tensors order: the plan's 'zstd;int8+zstd'
    (a residual block's cut sends its two tensors each with its own codec). Only a link names one;
    encode and decode take a single Codec (link_codecs(spec, n) gives the list)."""

    codecs: tuple  # Codec per tensor

    kind = "per-tensor"
    param = None
    inner = None

    @property
    def name(self) -> str:
        return LINK_SEPARATOR.join(c.name for c in self.codecs)

    @property
    def lossless(self) -> bool:
        return all(c.lossless for c in self.codecs)

    def __str__(self) -> str:
        return self.name

    def available(self) -> bool:
        return all(c.available() for c in self.codecs)


LINK_SEPARATOR = ";"  # between the per-tensor codecs of one link ('zstd;int8')


def link_codecs(spec: str | Codec | TensorCodecs, n_tensors: int) -> tuple:
    """The Codec of each of a link's `n_tensors` cut tensors: one name for them all ('zstd') or one
    per tensor ('zstd;int8+zstd', Graph.cut_tensors order). PisplitError when a list's length differs.

    E.g. link_codecs('zstd', 2) == (zstd, zstd); link_codecs('raw;int8', 2) == (raw, int8)."""
    parsed = parse_codec(spec)
    if not isinstance(parsed, TensorCodecs):
        return (parsed,) * n_tensors
    if len(parsed.codecs) != n_tensors:
        raise PisplitError(f"codecs {parsed.name!r}: {len(parsed.codecs)} codecs for a link of {n_tensors} tensor(s) "
                           "(one for all, or one per cut tensor)")
    return parsed.codecs


def parse_codec(name: str | Codec | TensorCodecs) -> Codec:
    """'raw', 'rle-huffman', 'zlib:9', 'zstd', 'zstd:19', 'lz4', 'lz4:9', 'fp16', 'int8', 'jpeg:75' ->
    Codec. A bad name raises a one-line PisplitError. A link's per-tensor list 'zstd;int8' gives a
    TensorCodecs (see link_codecs), which encode and decode refuse."""
    if isinstance(name, (Codec, TensorCodecs)):
        return name  # type: ignore[return-value]
    if not isinstance(name, str) or not name.strip():
        raise PisplitError(f"codec {name!r}: expected a name such as {', '.join(codec_names())}")
    if LINK_SEPARATOR in name:
        parts = [p.strip() for p in name.split(LINK_SEPARATOR)]
        if any(not p or LINK_SEPARATOR in p for p in parts):
            raise PisplitError(f"codecs {name!r}: an empty codec in the per-tensor list")
        return TensorCodecs(tuple(parse_codec(p) for p in parts))  # type: ignore[return-value]
    if "+" in name:  # a quantiser followed by a lossless codec of its codes: 'int8+rle-huffman'
        first, _, second = name.partition("+")
        outer = _parse_one(name, first)
        inner = _parse_one(name, second) if "+" not in second else None
        if outer.kind not in ("fp16", "int8"):
            raise PisplitError(f"codec {name!r}: only fp16 and int8 take a lossless codec after '+'")
        if inner is None or not inner.lossless or inner.kind == "raw":
            raise PisplitError(f"codec {name!r}: after '+' comes one lossless codec (rle-huffman, zlib, zstd, lz4)")
        return Codec(outer.kind, outer.param, inner)
    return _parse_one(name, name)


def _parse_one(name: str, part: str) -> Codec:
    kind, sep, arg = part.strip().lower().partition(":")
    if kind not in _KINDS:
        raise PisplitError(f"codec {name!r}: unknown codec {kind!r} (known: {', '.join(_KINDS)})")
    _, _, default, bounds = _KINDS[kind]
    if not sep:
        return Codec(kind, default)
    if bounds is None:
        raise PisplitError(f"codec {name!r}: {kind} takes no parameter")
    try:
        value = int(arg, 10)
    except ValueError:
        raise PisplitError(f"codec {name!r}: parameter {arg!r} is not an integer") from None
    if not bounds[0] <= value <= bounds[1]:
        what = "quality factor" if kind == "jpeg" else "level"
        raise PisplitError(f"codec {name!r}: {kind} {what} must be in {bounds[0]}..{bounds[1]}, got {value}")
    if kind == "zstd" and value == 0:
        raise PisplitError(f"codec {name!r}: zstd level 0 is not a level (1..22, or -7..-1 for faster)")
    return Codec(kind, value)


def codec_names() -> list[str]:
    """The codec kinds, with a parameter placeholder where they take one."""
    return [k if b is None else f"{k}[:{'QF' if k == 'jpeg' else 'L'}]" for k, (_, _, _, b) in _KINDS.items()] + ["fp16|int8+LOSSLESS"]


def available_codecs(names=("raw", "rle-huffman", "zlib", "zstd", "lz4", "fp16", "int8", "jpeg:75")) -> list[Codec]:
    """The codecs among `names` whose libraries are installed here."""
    return [c for c in map(parse_codec, names) if c.available()]


def _library(codec: Codec):
    """Import the optional library `codec` needs (lazily); one-line error when it is missing."""
    try:
        if codec.kind == "zstd":
            import zstandard
            return zstandard
        if codec.kind == "lz4":
            import lz4.block
            return lz4.block
        if codec.kind == "jpeg":
            return _jpeg_backend()
    except ImportError:
        package = {"zstd": "zstandard", "lz4": "lz4", "jpeg": "simplejpeg or pillow"}[codec.kind]
        raise PisplitError(f"codec {codec.name!r} needs {package}: pip install 'pisplit[codecs]'") from None
    return None


# --- messages -----------------------------------------------------------------------------------------
def one_codec(name: str | Codec) -> Codec:
    """parse_codec for one tensor: a per-tensor list (TensorCodecs) is an error."""
    codec = parse_codec(name)
    if isinstance(codec, TensorCodecs):
        raise PisplitError(f"codecs {codec.name!r}: a per-tensor list names a link's codecs; one tensor takes one codec")
    return codec


def encode(x: np.ndarray, codec: str | Codec) -> bytes:
    """One message holding `x` encoded with `codec` (header + payload)."""
    codec = one_codec(codec)
    x = np.asarray(x)
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype.name not in _DTYPE_ID:
        raise PisplitError(f"codec {codec.name!r}: dtype {x.dtype} is not supported (supported: {', '.join(DTYPES)})")
    if not codec.lossless and x.dtype != np.float32:
        raise PisplitError(f"codec {codec.name!r}: lossy codecs take float32 tensors, got {x.dtype}")
    if x.ndim > 255 or any(d >= 2**32 for d in x.shape):
        raise PisplitError(f"codec {codec.name!r}: shape {x.shape} too large for a message")
    x = x if x.flags.c_contiguous else x.copy()  # (ascontiguousarray would make a 0-d array 1-d)
    payload, flags = _ENCODERS[codec.kind](x, codec)
    if codec.lossless and len(payload) > x.nbytes:  # never larger than the tensor (max_encoded_bytes)
        payload, flags = _raw_bytes(x), flags | FLAG_STORED
    head = _FIXED.pack(MAGIC, VERSION, codec.id, codec.param or 0, _DTYPE_ID[x.dtype.name], x.ndim, flags)
    head += struct.pack(f"<{x.ndim}I", *x.shape)
    head += struct.pack("<Q", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, struct.pack("<I", crc), payload))


@dataclass(frozen=True)
class Header:
    codec: Codec
    dtype: np.dtype
    shape: tuple[int, ...]
    flags: int
    payload: memoryview


def read_header(data: bytes | bytearray | memoryview) -> Header:
    """Parse and check a message's header and checksum; PisplitError naming the codec when anything is
    wrong (truncated, corrupt, unknown codec, version or dtype)."""
    view = memoryview(data).cast("B")
    n = len(view)
    if n < _FIXED.size:
        raise PisplitError(f"codec message truncated: {n} bytes, a header needs at least {_FIXED.size + _TAIL.size}")
    magic, version, cid, param, dtid, ndim, flags = _FIXED.unpack_from(view, 0)
    if magic != MAGIC:
        raise PisplitError(f"not a codec message (starts with {bytes(view[:3])!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise PisplitError(f"codec message of format version {version}; this pisplit reads version {VERSION}")
    if cid not in _BY_ID:
        raise PisplitError(f"codec message with unknown codec id {cid} (corrupt message?)")
    kind = _BY_ID[cid]
    label = kind if param == 0 else f"{kind}:{param}"
    head_len = _FIXED.size + 4 * ndim + _TAIL.size
    if n < head_len:
        raise PisplitError(f"{label}: message truncated inside its header ({n} of {head_len} bytes)")
    shape = struct.unpack_from(f"<{ndim}I", view, _FIXED.size)
    length, crc = _TAIL.unpack_from(view, _FIXED.size + 4 * ndim)
    if n - head_len < length:
        raise PisplitError(f"{label}: message truncated: {n - head_len} of {length} payload bytes")
    if n - head_len > length:
        raise PisplitError(f"{label}: message has {n - head_len - length} bytes after its {length}-byte payload")
    payload = view[head_len:]
    if zlib.crc32(payload, zlib.crc32(view[: head_len - 4])) != crc:
        raise PisplitError(f"{label}: checksum mismatch: the message is corrupt")
    # the checksum held: what follows only fails for a message written wrongly on purpose
    if dtid not in _ID_DTYPE:
        raise PisplitError(f"{label}: unknown dtype id {dtid}")
    bounds = _KINDS[kind][3]
    value = None if bounds is None else (param if param else _KINDS[kind][2])
    if bounds is not None and param and not bounds[0] <= param <= bounds[1]:
        raise PisplitError(f"{label}: parameter {param} out of range")
    codec = Codec(kind, value)
    if flags & FLAG_INNER and kind in ("fp16", "int8"):
        off = 5 * _groups(tuple(shape))[1] if kind == "int8" else 0
        try:
            inner = read_header(payload[off:]).codec
        except PisplitError as e:
            raise PisplitError(f"{label}: corrupt nested message: {e}") from None
        codec = Codec(kind, value, inner)
    return Header(codec, _ID_DTYPE[dtid], tuple(shape), flags, payload)


def decode(data: bytes | bytearray | memoryview, *, expect_codec: str | Codec | None = None,
           shape: tuple[int, ...] | None = None, dtype=None) -> np.ndarray:
    """The tensor in a message. With `expect_codec`, `shape` or `dtype`, a message that differs is an
    error (the receiver knows what it waits for)."""
    h = read_header(data)
    name = h.codec.name
    if expect_codec is not None and (one_codec(expect_codec).kind != h.codec.kind
                                     or one_codec(expect_codec).inner not in (None, h.codec.inner)):
        raise PisplitError(f"{name}: expected a {one_codec(expect_codec).name} message")
    if shape is not None and tuple(shape) != h.shape:
        raise PisplitError(f"{name}: message holds shape {h.shape}, expected {tuple(shape)}")
    if dtype is not None and np.dtype(dtype) != h.dtype:
        raise PisplitError(f"{name}: message holds {h.dtype}, expected {np.dtype(dtype)}")
    if not h.codec.lossless and h.dtype != np.float32:
        raise PisplitError(f"{name}: lossy message of dtype {h.dtype} (only float32)")
    allowed = {"fp16": FLAG_INNER, "int8": FLAG_PER_CHANNEL | FLAG_INNER,
               "jpeg": FLAG_PER_CHANNEL | FLAG_STORED}.get(h.codec.kind, FLAG_STORED)
    if h.flags & ~allowed:
        raise PisplitError(f"{name}: unknown flags {h.flags} in the header")
    try:
        out = _from_raw(h, h.payload) if h.codec.lossless and h.flags & FLAG_STORED else _DECODERS[h.codec.kind](h)
    except PisplitError:
        raise
    except Exception as e:  # a library or numpy refusing bytes that passed the checksum
        raise PisplitError(f"{name}: corrupt payload ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if out.dtype != h.dtype or out.shape != h.shape:
        raise PisplitError(f"{name}: payload decoded to {out.dtype}{out.shape}, header says {h.dtype}{h.shape}")
    return out


def _corrupt(h: Header, what: str) -> PisplitError:
    return PisplitError(f"{h.codec.name}: corrupt payload: {what}")


def _little(x: np.ndarray) -> np.ndarray:
    return x.astype(x.dtype.newbyteorder("<"), copy=False)


def _raw_bytes(x: np.ndarray) -> bytes:
    return _little(x).tobytes()


def _from_raw(h: Header, raw) -> np.ndarray:
    n = math.prod(h.shape)
    if len(raw) != n * h.dtype.itemsize:
        raise _corrupt(h, f"{len(raw)} bytes for {n} x {h.dtype}")
    a = np.frombuffer(raw, h.dtype.newbyteorder("<"), n).astype(h.dtype)  # a copy, native order
    return a.reshape(h.shape)


# --- byte codecs: raw, zlib, zstd, lz4 --------------------------------------------------------------
def _enc_raw(x, codec):
    return _raw_bytes(x), 0


def _dec_raw(h):
    return _from_raw(h, h.payload)


def _expected_bytes(h: Header) -> int:
    return math.prod(h.shape) * h.dtype.itemsize


def _enc_zlib(x, codec):
    return zlib.compress(_raw_bytes(x), codec.param), 0


def _dec_zlib(h):
    d = zlib.decompressobj()
    raw = d.decompress(h.payload, _expected_bytes(h) + 1)
    if not d.eof or d.unused_data:
        raise _corrupt(h, "deflate stream does not end where the payload does")
    return _from_raw(h, raw)


def _enc_zstd(x, codec):
    zstd = _library(codec)
    return zstd.ZstdCompressor(level=codec.param).compress(_raw_bytes(x)), 0


def _dec_zstd(h):
    zstd = _library(h.codec)
    n = _expected_bytes(h)
    if n == 0:
        return _from_raw(h, zstd.ZstdDecompressor().decompress(h.payload, max_output_size=1))
    return _from_raw(h, zstd.ZstdDecompressor().decompress(h.payload, max_output_size=n))


def _enc_lz4(x, codec):
    block = _library(codec)
    raw = _raw_bytes(x)
    if codec.param:
        return block.compress(raw, mode="high_compression", compression=codec.param, store_size=False), 0
    return block.compress(raw, store_size=False), 0


def _dec_lz4(h):
    block = _library(h.codec)
    n = _expected_bytes(h)
    if n == 0:
        if bytes(h.payload) != block.compress(b"", store_size=False):
            raise _corrupt(h, "non-empty lz4 block for an empty tensor")
        return _from_raw(h, b"")
    return _from_raw(h, block.decompress(h.payload, uncompressed_size=n))


# --- bits ---------------------------------------------------------------------------------------------
def _pack_bits(vals: np.ndarray, lens: np.ndarray) -> bytes:
    """Concatenate fields MSB first: field i is the low lens[i] (<= 57) bits of vals[i]. Vectorised:
    every field lands in one 64-bit word or spills into the next; fields own disjoint bits, so the
    words are sums of their fields."""
    vals, lens = vals.astype(np.uint64, copy=False), lens.astype(np.int64, copy=False)
    if lens.size and lens.min() == 0:
        keep = lens > 0
        vals, lens = vals[keep], lens[keep]
    if lens.size == 0:
        return b""
    if lens.size >= 64 and lens.max() <= 19:  # merge fields in threes (<= 57 bits): a third of the work below
        cut = lens.size - lens.size % 3
        l1, l2 = lens[1:cut:3], lens[2:cut:3]
        merged = (vals[0:cut:3] << (l1 + l2).astype(np.uint64)) | (vals[1:cut:3] << l2.astype(np.uint64)) | vals[2:cut:3]
        merged_lens = lens[0:cut:3] + l1 + l2
        vals, lens = np.concatenate([merged, vals[cut:]]), np.concatenate([merged_lens, lens[cut:]])
    ends = np.cumsum(lens)
    total = int(ends[-1])
    starts = ends - lens
    word = starts >> 6
    e = (starts & 63) + lens  # end of the field inside its first word, 1..121
    fit = e <= 64
    first = np.where(fit, vals << np.where(fit, 64 - e, 0).astype(np.uint64),
                     vals >> np.where(fit, 0, e - 64).astype(np.uint64))
    out = np.zeros(total // 64 + 2, np.uint64)
    heads = np.flatnonzero(np.diff(word, prepend=-1))
    out[word[heads]] = np.add.reduceat(first, heads)
    spill = ~fit
    out[word[spill] + 1] |= vals[spill] << (128 - e[spill]).astype(np.uint64)
    return out.astype(">u8").tobytes()[: (total + 7) // 8]


def _windows(buf, width: int) -> np.ndarray:
    """For every byte position i of `buf`, the `width` (4 or 8) bytes from i as one big-endian unsigned
    integer (zeros past the end)."""
    b = np.frombuffer(bytes(buf) + bytes(width), np.uint8)
    n = len(b) - width
    kind = np.uint32 if width == 4 else np.uint64
    w = np.zeros(n + 1, kind)
    for j in range(width):  # `width` vectorised passes, not one per element
        w <<= kind(8)
        w |= b[j: j + n + 1].astype(kind)
    return w


def _read_bits(buf, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Fields of lens (<= 57) bits at bit offsets `starts`, as uint64 (0 where lens == 0)."""
    if starts.size == 0:
        return np.zeros(0, np.uint64)
    w = _windows(buf, 8)
    idx = starts >> 3
    if idx.max() >= len(w):
        raise ValueError("bit field beyond the stream")
    v = w[idx] << (starts & 7).astype(np.uint64)
    safe = np.maximum(lens, 1).astype(np.uint64)
    return np.where(lens > 0, v >> (np.uint64(64) - safe), 0).astype(np.uint64)


# --- canonical Huffman --------------------------------------------------------------------------------
MAX_CODE_LEN = 16  # as JPEG


def _code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (<= MAX_CODE_LEN) for symbols with these (positive) counts. heapq over
    the symbols; when the tree is too deep, the counts are halved (flatter tree) and it is rebuilt."""
    counts = counts.astype(np.int64)
    n = counts.size
    if n == 1:
        return np.ones(1, np.int64)
    while True:
        heap = [(int(c), i) for i, c in enumerate(counts)]
        heapq.heapify(heap)
        parent = np.zeros(2 * n - 1, np.int64)
        nxt = n
        while len(heap) > 1:
            c1, a = heapq.heappop(heap)
            c2, b = heapq.heappop(heap)
            parent[a] = parent[b] = nxt
            heapq.heappush(heap, (c1 + c2, nxt))
            nxt += 1
        depth = np.zeros(2 * n - 1, np.int64)
        for node in range(2 * n - 3, -1, -1):  # parents are numbered after their children
            depth[node] = depth[parent[node]] + 1
        lengths = depth[:n]
        if lengths.max() <= MAX_CODE_LEN:
            return lengths
        counts = (counts + 1) // 2


def _canonical(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes for code lengths given in canonical order (by length, then symbol)."""
    span = np.left_shift(1, MAX_CODE_LEN - lengths)
    first = np.concatenate([[0], np.cumsum(span)[:-1]])
    return first >> (MAX_CODE_LEN - lengths)


def _block_size(n: int) -> int:
    """Symbols per independently decodable block: the decoder runs one vectorised step per symbol of a
    block over all blocks at once; each block costs 2 bytes of index."""
    return int(min(4095, max(16, math.isqrt(max(n, 1)) // 2)))


# stream modes
_RAW, _HUFF, _CONST = 0, 1, 2


def _put_stream(symbols: np.ndarray, sym_bytes: int) -> bytes:
    """Entropy-code one stream of symbols (< 2**(8*sym_bytes)): constant, canonical Huffman (blocks of
    B symbols, each block's bit length in the index) or raw, whichever is smallest."""
    n = symbols.size
    sdt = "<u2" if sym_bytes == 2 else "u1"
    if n == 0:
        return bytes([_RAW])
    hist = np.bincount(symbols)  # symbols are small integers: no sort
    values = np.flatnonzero(hist)
    counts = hist[values]
    if values.size == 1:
        return bytes([_CONST]) + values.astype(sdt).tobytes()
    raw = bytes([_RAW]) + symbols.astype(sdt).tobytes()
    lengths = _code_lengths(counts)
    block = _block_size(n)
    nblocks = -(-n // block)
    estimate = 1 + 2 * MAX_CODE_LEN + values.size * sym_bytes + 2 + 2 * nblocks + (int(counts @ lengths) + 7) // 8
    if estimate >= len(raw):  # known from the counts: no per-element work for a stream raw would win
        return raw
    order = np.lexsort((values, lengths))
    sorted_lengths = lengths[order]
    codes_sorted = _canonical(sorted_lengths)
    len_of = np.zeros(hist.size, np.int64)  # per symbol value: its code length and code
    code_of = np.zeros(hist.size, np.int64)
    len_of[values[order]] = sorted_lengths
    code_of[values[order]] = codes_sorted
    sym_len = len_of[symbols]
    sym_code = code_of[symbols]
    bits = np.zeros(nblocks * block, np.int64)
    bits[:n] = sym_len
    block_bits = bits.reshape(nblocks, block).sum(axis=1)
    data = _pack_bits(sym_code, sym_len)
    bitcounts = np.bincount(sorted_lengths, minlength=MAX_CODE_LEN + 1)[1:]
    out = b"".join((bytes([_HUFF]), bitcounts.astype("<u2").tobytes(), values[order].astype(sdt).tobytes(),
                    struct.pack("<H", block), block_bits.astype("<u2").tobytes(), data))
    assert len(out) == estimate
    return out


def _get_stream(view, pos: int, n: int, sym_bytes: int) -> tuple[np.ndarray, int]:
    """Decode a stream written by _put_stream with n symbols at byte `pos` of `view`: (symbols, end)."""
    sdt = np.dtype("<u2" if sym_bytes == 2 else "u1")
    mode = view[pos]
    pos += 1
    if mode == _RAW:
        end = pos + n * sym_bytes
        if end > len(view):
            raise ValueError("raw stream beyond the payload")
        return np.frombuffer(view[pos:end], sdt).astype(np.int64), end
    if mode == _CONST:
        if n == 0:
            raise ValueError("constant stream with no symbols")
        return np.full(n, int(np.frombuffer(view[pos: pos + sym_bytes], sdt)[0]), np.int64), pos + sym_bytes
    if mode != _HUFF:
        raise ValueError(f"unknown stream mode {mode}")
    bitcounts = np.frombuffer(view[pos: pos + 2 * MAX_CODE_LEN], "<u2").astype(np.int64)
    pos += 2 * MAX_CODE_LEN
    nsym = int(bitcounts.sum())
    if nsym < 2 or int(np.sum(bitcounts * np.left_shift(1, MAX_CODE_LEN - np.arange(1, MAX_CODE_LEN + 1)))) > 1 << MAX_CODE_LEN:
        raise ValueError("Huffman table is not a prefix code")
    values = np.frombuffer(view[pos: pos + nsym * sym_bytes], sdt).astype(np.int64)
    pos += nsym * sym_bytes
    (block,) = struct.unpack_from("<H", view, pos)
    pos += 2
    if block == 0:
        raise ValueError("zero block size")
    nblocks = -(-n // block)
    block_bits = np.frombuffer(view[pos: pos + 2 * nblocks], "<u2").astype(np.int64)
    pos += 2 * nblocks
    if block_bits.size != nblocks:
        raise ValueError("block index beyond the payload")
    nbytes = (int(block_bits.sum()) + 7) // 8
    data = view[pos: pos + nbytes]
    if len(data) != nbytes:
        raise ValueError("Huffman data beyond the payload")
    pos += nbytes
    # decoding table: peek `top` bits -> symbol index (canonical order) and its length
    lengths = np.repeat(np.arange(1, MAX_CODE_LEN + 1), bitcounts)
    top = int(lengths.max())
    table = np.full(1 << top, -1, np.int64)
    filled = np.repeat(np.arange(nsym), np.left_shift(1, top - lengths))
    table[: filled.size] = filled
    table_len = np.where(table >= 0, lengths[np.maximum(table, 0)], 0)
    w = _windows(data, 4)  # 32 bits from each byte: enough for 7 bit offset + 16 code bits
    starts = np.concatenate([[0], np.cumsum(block_bits)[:-1]])
    cur = starts.copy()
    out = np.zeros((nblocks, block), np.int64)
    last = n - (nblocks - 1) * block  # symbols in the last block
    shift_base = np.uint32(32 - top)
    mask = np.uint32((1 << top) - 1)
    for t in range(block):  # one vectorised step per symbol position, over all blocks at once
        lanes = nblocks if t < last else nblocks - 1
        p = cur[:lanes]
        peek = (w[p >> 3] >> (shift_base - (p & 7).astype(np.uint32))) & mask
        out[:lanes, t] = table[peek]
        cur[:lanes] = p + table_len[peek]
    flat = out.reshape(-1)[:n]
    if n and flat.min() < 0:
        raise ValueError("invalid Huffman code")
    if not np.array_equal(cur, starts + block_bits):
        raise ValueError("Huffman blocks do not end where their index says")
    return values[flat], pos


# --- rle-huffman --------------------------------------------------------------------------------------
def _words(x: np.ndarray) -> np.ndarray:
    """The elements' bytes, most significant first: (n, itemsize) uint8."""
    k = x.dtype.itemsize
    be = x.reshape(-1).astype(x.dtype.newbyteorder(">"), copy=False)
    return np.frombuffer(be.tobytes(), np.uint8).reshape(-1, k)


def _enc_rle_huffman(x, codec):
    """JPEG's entropy back end on the elements' bit patterns: per non-zero element (any bit set; -0.0
    is non-zero) a symbol (size category of the zero run before it, its most significant byte), the
    run's extra bits, then its other bytes, one stream per byte position. Each symbol stream is
    canonical-Huffman coded in independently decodable blocks (raw when that is smaller), so both
    directions are vectorised over elements."""
    b = _words(x)
    k = b.shape[1]
    nz = np.flatnonzero(x.reshape(-1).view(f"u{k}") if k in (1, 2, 4, 8) else b.any(axis=1))
    m = nz.size
    runs = np.diff(nz, prepend=-1) - 1
    cat = np.frexp(runs.astype(np.float64))[1].astype(np.int64)  # bit length: 0 for 0, 1 for 1, 2 for 2-3 ...
    extra_len = np.maximum(cat - 1, 0)
    extra = runs - np.where(cat > 0, np.left_shift(1, np.maximum(cat - 1, 0)), 0)
    sym = cat * 256 + b[nz, 0]
    parts = [struct.pack("<Q", m), _put_stream(sym, 2)]
    ebits = _pack_bits(extra.astype(np.uint64), extra_len)
    parts += [struct.pack("<Q", len(ebits)), ebits]
    parts += [_put_stream(b[nz, j], 1) for j in range(1, k)]
    return b"".join(parts), 0


def _dec_rle_huffman(h):
    view = h.payload
    n, k = math.prod(h.shape), h.dtype.itemsize
    (m,) = struct.unpack_from("<Q", view, 0)
    if m > n:
        raise _corrupt(h, f"{m} non-zero elements in a tensor of {n}")
    sym, pos = _get_stream(view, 8, m, 2)
    cat, top = sym >> 8, sym & 255
    if m and cat.max() > 40:
        raise _corrupt(h, "run category out of range")
    extra_len = np.maximum(cat - 1, 0)
    (elen,) = struct.unpack_from("<Q", view, pos)
    pos += 8
    ebuf = view[pos: pos + elen]
    if len(ebuf) != elen or (int(extra_len.sum()) + 7) // 8 != elen:
        raise _corrupt(h, "run-length bits do not match their symbols")
    pos += elen
    ext_starts = np.cumsum(extra_len) - extra_len
    extra = _read_bits(ebuf, ext_starts, extra_len).astype(np.int64)
    runs = np.where(cat > 0, np.left_shift(1, extra_len) + extra, 0)
    where = np.cumsum(runs + 1) - 1
    if m and where[-1] >= n:
        raise _corrupt(h, "zero runs go past the end of the tensor")
    out = np.zeros((n, k), np.uint8)
    out[where, 0] = top
    nonzero = top != 0
    for j in range(1, k):
        col, pos = _get_stream(view, pos, m, 1)
        out[where, j] = col
        nonzero |= col != 0
    if pos != len(view):
        raise _corrupt(h, f"{len(view) - pos} bytes left after the last stream")
    if not nonzero.all():
        raise _corrupt(h, "a coded non-zero element decodes to zero")
    be = np.frombuffer(out.tobytes(), h.dtype.newbyteorder(">"), n)
    return be.astype(h.dtype).reshape(h.shape)


# --- fp16 ---------------------------------------------------------------------------------------------
FP16_MAX = float(np.finfo(np.float16).max)


def _enc_fp16(x, codec):
    with np.errstate(over="ignore"):
        y = x.astype(np.float16)
    bad = np.isinf(y) & np.isfinite(x)
    if bad.any():
        worst = float(np.abs(x[bad]).max())
        raise PisplitError(f"fp16: {int(bad.sum())} finite values beyond float16's range (|x| up to {worst:.4g} > {FP16_MAX:g}); use raw, int8 or a lossless codec")
    if codec.inner is not None:  # the half-precision bit patterns as uint16, through the lossless codec
        return encode(y.reshape(-1).view(np.uint16), codec.inner), FLAG_INNER
    return y.astype("<f2").tobytes(), 0


def _inner_codes(h: Header, data, n: int, dtype) -> np.ndarray:
    """The element codes of an fp16/int8 message: raw, or a nested lossless message (FLAG_INNER)."""
    if h.flags & FLAG_INNER:
        try:
            return decode(data, shape=(n,), dtype=dtype)
        except PisplitError as e:
            raise _corrupt(h, f"nested message: {e}") from None
    if len(data) != n * np.dtype(dtype).itemsize:
        raise _corrupt(h, f"{len(data)} bytes for {n} codes")
    return np.frombuffer(data, np.dtype(dtype).newbyteorder("<")).astype(dtype)


def _dec_fp16(h):
    n = math.prod(h.shape)
    codes = _inner_codes(h, h.payload, n, np.uint16)
    return codes.view(np.float16).astype(np.float32).reshape(h.shape)


# --- int8 and jpeg: per-channel 8-bit quantisation ------------------------------------------------------
def _groups(shape: tuple[int, ...]) -> tuple[bool, int]:
    """(per_channel, number of scales): one scale per channel (last axis) when channels have at least
    PER_CHANNEL_MIN elements each, else one for the tensor."""
    n = math.prod(shape)
    if len(shape) >= 2 and shape[-1] > 0 and n // shape[-1] >= PER_CHANNEL_MIN:
        return True, shape[-1]
    return False, 1


def _refuse_nonfinite(x: np.ndarray, codec: Codec) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        raise PisplitError(f"{codec.name}: tensor has {int(bad.sum())} NaN/inf values; {codec.kind} codes finite values only (use raw, fp16 or a lossless codec)")


def _as_groups(x: np.ndarray, per_channel: bool) -> np.ndarray:
    """(elements per group, groups) view of x."""
    return x.reshape(-1, x.shape[-1]) if per_channel else x.reshape(-1, 1)


def _int8_params(x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: float32 scale and int8 zero point of an asymmetric 8-bit quantiser whose range holds
    0 exactly (TFLite's): x ~ scale * (q - zero_point)."""
    lo = np.minimum(x2.min(axis=0, initial=0.0).astype(np.float64), 0.0)
    hi = np.maximum(x2.max(axis=0, initial=0.0).astype(np.float64), 0.0)
    scale = np.float32(np.maximum((hi - lo) / 255.0, np.finfo(np.float32).smallest_subnormal))
    scale = np.where(scale.astype(np.float64) * 255.0 < hi - lo, np.nextafter(scale, np.float32(np.inf)), scale).astype(np.float32)
    scale = np.where(hi == lo, np.float32(1.0), scale).astype(np.float32)
    zero = np.clip(np.round(-128.0 - lo / scale.astype(np.float64)), -128, 127).astype(np.int8)
    return scale, zero


def _enc_int8(x, codec):
    _refuse_nonfinite(x, codec)
    per_channel, g = _groups(x.shape)
    x2 = _as_groups(x, per_channel)
    scale, zero = _int8_params(x2)
    q = np.clip(np.round(x2.astype(np.float64) / scale.astype(np.float64) + zero), -128, 127).astype(np.int16)
    codes = ((q - zero) % 256).astype(np.uint8).reshape(-1)  # q - zero_point mod 256: 0.0 is byte 0 (sparse)
    flags = FLAG_PER_CHANNEL if per_channel else 0
    if codec.inner is not None:
        body, flags = encode(codes, codec.inner), flags | FLAG_INNER
    else:
        body = codes.tobytes()
    return b"".join((scale.astype("<f4").tobytes(), zero.tobytes(), body)), flags


def _quant_header(h: Header, need):
    if h.flags & ~(FLAG_PER_CHANNEL | (FLAG_STORED if h.codec.kind == "jpeg" else FLAG_INNER)):
        raise _corrupt(h, f"unknown flags {h.flags}")
    per_channel = bool(h.flags & FLAG_PER_CHANNEL)
    if per_channel != _groups(h.shape)[0]:
        raise _corrupt(h, "per-channel flag does not fit the shape")
    g = _groups(h.shape)[1]
    if len(h.payload) < need(g):
        raise _corrupt(h, "payload too short")
    a = np.frombuffer(h.payload[: 4 * g], "<f4").astype(np.float32)
    return per_channel, g, a


def _dec_int8(h):
    n = math.prod(h.shape)
    per_channel, g, scale = _quant_header(h, lambda g: 5 * g + (0 if h.flags & FLAG_INNER else n))
    zero = np.frombuffer(h.payload[4 * g: 5 * g], np.int8)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise _corrupt(h, "non-finite or non-positive scale")
    codes = _inner_codes(h, h.payload[5 * g:], n, np.uint8).reshape(-1, g)
    steps = (codes.astype(np.int16) + zero.astype(np.int16) + 128) % 256 - 128 - zero.astype(np.int16)  # q - zero
    with np.errstate(over="ignore"):
        x = steps.astype(np.float32) * scale
    return x.reshape(h.shape)


def _jpeg_backend():
    try:
        import simplejpeg
        return simplejpeg
    except ImportError:
        from PIL import Image
        return Image


def _jpeg_geometry(shape: tuple[int, ...], per_channel: bool) -> tuple[int, int, int, int, int]:
    """(tile h, tile w, tiles per row, tile rows, channels) of the grayscale image of a tensor: each
    channel one h x w tile (h = everything before the last two axes, w = the second last), tiles on a
    near-square grid, each padded to a multiple of 8 rows and columns (JPEG's block) by repeating its
    edge when that costs little (_pad8); one tensor-wide tile, the tensor flattened into a near-square, otherwise."""
    n = math.prod(shape)
    if per_channel and len(shape) >= 3:
        c, w = shape[-1], shape[-2]
        h = n // (c * w)
    else:
        c = shape[-1] if per_channel else 1
        per = n // c
        w = max(1, math.isqrt(per - 1) + 1) if per else 1
        h = -(-per // w) if per else 1
    gc = max(1, math.isqrt(c - 1) + 1)
    gr = -(-c // gc)
    return h, w, gc, gr, c


def _pad8(v: int) -> int:
    """A tile side padded to JPEG's 8-pixel blocks when that adds at most an eighth (55 -> 56, not 13 ->
    16): measured on AlexNet's activations, blocks shared by neighbouring 13x13 tiles cost less than
    the padding (jpeg:50 on conv5: 12.0x unpadded, 9.9x padded, RMS error 0.29 vs 0.27), while a
    55-pixel tile gains from its own blocks (conv1: 20.6x padded, 19.5x not, at lower error)."""
    padded = -(-v // 8) * 8
    return padded if (padded - v) * 8 <= v else v


def _jpeg_image(x: np.ndarray, per_channel: bool, q: np.ndarray) -> np.ndarray:
    h, w, gc, gr, c = _jpeg_geometry(x.shape, per_channel)
    per = q.shape[0]
    if per < h * w:  # flattened tile: fill the square's tail with the last value
        q = np.concatenate([q, np.repeat(q[-1:], h * w - per, axis=0)])
    tiles = q.reshape(h, w, c)
    tiles = np.pad(tiles, ((0, _pad8(h) - h), (0, _pad8(w) - w), (0, gr * gc - c)), mode="edge")
    tiles = tiles.reshape(_pad8(h), _pad8(w), gr, gc).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(tiles.reshape(gr * _pad8(h), gc * _pad8(w)))


def _enc_jpeg(x, codec):
    _refuse_nonfinite(x, codec)
    per_channel, g = _groups(x.shape)
    if x.size == 0:
        return b"", FLAG_PER_CHANNEL if per_channel else 0
    x2 = _as_groups(x, per_channel).astype(np.float64)
    lo = x2.min(axis=0)
    scale = ((x2.max(axis=0) - lo) / 255.0).astype(np.float32)
    lo32 = lo.astype(np.float32)
    scale = np.where(x2.max(axis=0) > lo32, scale, np.float32(0.0)).astype(np.float32)  # 0: a constant channel
    # decodes to exactly lo, whatever JPEG's ringing from its neighbours does to its pixels
    q = np.clip(np.round((x2 - lo32) / np.where(scale > 0, scale, 1.0).astype(np.float64)), 0, 255).astype(np.uint8)
    img = _jpeg_image(x, per_channel, q)
    if img.shape[0] > 65500 or img.shape[1] > 65500:
        raise PisplitError(f"{codec.name}: tensor of shape {x.shape} tiles into a {img.shape[0]}x{img.shape[1]} image, beyond JPEG's 65500")
    if img.size <= 16:  # too small for JPEG's own headers to pay
        data, flags = img.tobytes(), FLAG_STORED
    else:
        data, flags = _jpeg_encode(img, codec), 0
        if len(data) >= img.size:
            data, flags = img.tobytes(), FLAG_STORED
    return b"".join((lo32.astype("<f4").tobytes(), scale.astype("<f4").tobytes(), data)), flags | (FLAG_PER_CHANNEL if per_channel else 0)


def _jpeg_encode(img: np.ndarray, codec: Codec) -> bytes:
    lib = _library(codec)
    if hasattr(lib, "encode_jpeg"):
        data = lib.encode_jpeg(img[:, :, None], quality=codec.param, colorspace="GRAY", colorsubsampling="Gray")
    else:
        buf = io.BytesIO()
        lib.fromarray(img, "L").save(buf, "JPEG", quality=codec.param)
        data = buf.getvalue()
    return data


def _dec_jpeg(h):
    n = math.prod(h.shape)
    if n == 0:
        if len(h.payload):
            raise _corrupt(h, "payload for an empty tensor")
        return np.zeros(h.shape, np.float32)
    per_channel, g, lo = _quant_header(h, lambda g: 8 * g + 1)
    scale = np.frombuffer(h.payload[4 * g: 8 * g], "<f4").astype(np.float32)
    if not (np.isfinite(lo).all() and np.isfinite(scale).all() and (scale >= 0).all()):
        raise _corrupt(h, "non-finite or negative scale")
    th, tw, gc, gr, c = _jpeg_geometry(h.shape, per_channel)
    data = bytes(h.payload[8 * g:])
    ph, pw = _pad8(th), _pad8(tw)
    if h.flags & FLAG_STORED:
        if len(data) != gr * ph * gc * pw:
            raise _corrupt(h, f"{len(data)} stored pixels, expected {gr * ph * gc * pw}")
        img = np.frombuffer(data, np.uint8).reshape(gr * ph, gc * pw)
    else:
        lib = _library(h.codec)
        if hasattr(lib, "decode_jpeg"):
            img = lib.decode_jpeg(data, colorspace="GRAY")[:, :, 0]
        else:
            with lib.open(io.BytesIO(data)) as im:
                img = np.asarray(im.convert("L"))
    if img.shape != (gr * ph, gc * pw):
        raise _corrupt(h, f"JPEG image is {img.shape[0]}x{img.shape[1]}, expected {gr * ph}x{gc * pw}")
    tiles = img.reshape(gr, ph, gc, pw).transpose(1, 3, 0, 2).reshape(ph, pw, gr * gc)[:th, :tw, :c]
    q = tiles.reshape(th * tw, c)[: n // c]
    with np.errstate(over="ignore"):  # only a crafted message has scales that overflow
        x = lo + q.astype(np.float32) * scale
    return x.reshape(h.shape)


_ENCODERS = {"raw": _enc_raw, "rle-huffman": _enc_rle_huffman, "zlib": _enc_zlib, "zstd": _enc_zstd,
             "lz4": _enc_lz4, "fp16": _enc_fp16, "int8": _enc_int8, "jpeg": _enc_jpeg}
_DECODERS = {"raw": _dec_raw, "rle-huffman": _dec_rle_huffman, "zlib": _dec_zlib, "zstd": _dec_zstd,
             "lz4": _dec_lz4, "fp16": _dec_fp16, "int8": _dec_int8, "jpeg": _dec_jpeg}


# --- errors --------------------------------------------------------------------------------------------
def error_bound(codec: str | Codec, x: np.ndarray) -> float:
    """The largest absolute error `codec` may introduce on the finite values of `x`, known before
    encoding: 0 for lossless codecs; fp16: half a unit in the last place of float16 (2**-11 relative,
    2**-25 absolute below float16's normal range); int8: half a step of the coarsest channel plus
    float32 rounding; jpeg: the widest channel's range (decoded values stay inside their channel's
    [min, max]; the actual error depends on the data and QF: cluster.measure.measure_codec reports it)."""
    codec = one_codec(codec)
    x = np.asarray(x)
    if codec.lossless or x.size == 0:
        return 0.0
    finite = x[np.isfinite(x)].astype(np.float64)
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    if codec.kind == "fp16":
        return max(peak * 2.0**-11, 2.0**-25)
    per_channel, _ = _groups(x.shape)
    x2 = _as_groups(x, per_channel)
    if codec.kind == "int8":
        scale, _ = _int8_params(x2)
        return float(scale.max()) / 2 + peak * 2.0**-22
    spread = x2.max(axis=0).astype(np.float64) - x2.min(axis=0)
    return float(spread.max()) + peak * 2.0**-22


def max_encoded_bytes(codec: str | Codec, shape: tuple[int, ...], dtype="float32") -> int:
    """The largest message `codec` writes for a tensor of this shape and dtype (header included), so a
    receiver can allocate its buffer before anything arrives: lossless codecs store the tensor as it
    is when they would make it larger; jpeg stores its 8-bit image when JPEG would."""
    codec = one_codec(codec)
    shape = tuple(int(d) for d in shape)
    n, k = math.prod(shape), np.dtype(dtype).itemsize
    head = _FIXED.size + 4 * len(shape) + _TAIL.size
    if codec.lossless:
        return head + n * k
    nested = 0 if codec.inner is None else _FIXED.size + 4 + _TAIL.size  # the nested message's header
    if codec.kind == "fp16":
        return head + nested + 2 * n
    per_channel, g = _groups(shape)
    if codec.kind == "int8":
        return head + 5 * g + nested + n
    if n == 0:
        return head
    h, w, gc, gr, _ = _jpeg_geometry(shape, per_channel)
    return head + 8 * g + gr * _pad8(h) * gc * _pad8(w)


# Peak bytes numpy allocates while encoding / decoding one tensor, per byte of the float32 tensor
# (tracemalloc over a (1, 27, 27, 256) ReLU output, half zeros; the message or decoded tensor
# included; the compression libraries' own C buffers are not traced). rle-huffman's bit packing
# holds several int64 arrays of the element count.
WORK_FACTORS = {"raw": (2.0, 1.0), "rle-huffman": (14.1, 12.2), "zlib": (3.5, 2.1), "zstd": (2.0, 2.0), "lz4": (2.7, 2.0),
                "fp16": (1.8, 1.5), "int8": (4.1, 2.8), "jpeg": (6.1, 2.8)}


def work_bytes(codec: str | Codec, raw_bytes: float) -> tuple[float, float]:
    """(encode, decode) peak working bytes of `codec` on a float32 tensor of `raw_bytes` bytes
    (WORK_FACTORS; a quantiser followed by a lossless codec: the quantiser's, plus the lossless one's
    on its codes, int8 a quarter and fp16 half of the tensor)."""
    codec = one_codec(codec)
    enc, dec = WORK_FACTORS[codec.kind]
    if codec.inner is not None:
        share = 0.25 if codec.kind == "int8" else 0.5
        inner_enc, inner_dec = WORK_FACTORS[codec.inner.kind]
        enc, dec = enc + share * inner_enc, dec + share * inner_dec
    return enc * raw_bytes, dec * raw_bytes
