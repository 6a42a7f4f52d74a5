"""Link codecs (partitioners.codecs, issue 15): lossless ones round-trip bit for bit, lossy ones stay
within the error they state, and corrupt or truncated messages always raise PisplitError."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.measure import measure_codec as measure
from layers.errors import PisplitError
from partitioners import codecs
from partitioners.codecs import DTYPES, decode, encode, error_bound, parse_codec, read_header
from tests.conftest import ROOT, require

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LOSSLESS = ["raw", "rle-huffman", "zlib", "zlib:1", "zstd", "zstd:-3", "lz4", "lz4:9"]
LOSSY = ["fp16", "int8", "jpeg:75", "jpeg:10", "jpeg:100", "int8+rle-huffman", "int8+zstd", "fp16+lz4", "fp16+rle-huffman"]
SPECIALS = np.float32([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 1.17e-38, 3.4e38, -3.4e38])


def usable(name: str) -> codecs.Codec:
    c = parse_codec(name)
    require(c.available(), f"{name} needs its library (pip install 'pisplit[codecs]')")
    return c


@st.composite
def tensors(draw, dtypes=DTYPES, finite=False, max_elems=3000):
    """A tensor of 0-5 dimensions (empty and 1-element ones included), of one of `dtypes`, with a
    drawn share of zeros and (for floats, unless `finite`) NaN, inf, -0.0 and denormals."""
    ndim = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(0, 14), min_size=ndim, max_size=ndim)))
    while np.prod(shape, dtype=np.int64) > max_elems:
        shape = tuple(max(1, d // 2) for d in shape)
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = int(np.prod(shape, dtype=np.int64))
    style = draw(st.sampled_from(["normal", "bits", "relu", "smooth"]))
    if dtype.kind == "f":
        if style == "bits" and not finite:  # any bit pattern: NaN payloads, denormals, infinities
            x = rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype)
        elif style == "smooth":
            x = np.sin(np.linspace(0, rng.uniform(1, 20), n)) * rng.uniform(0.1, 100)
        else:
            x = rng.normal(0, 10.0 ** rng.uniform(-3, 3), n)
            if style == "relu":
                x = np.maximum(x, 0)
        x = x.astype(dtype)
        if not finite and n:
            k = rng.integers(0, max(1, n // 10) + 1)
            with np.errstate(over="ignore"):  # 3.4e38 is inf in float16
                x[rng.integers(0, n, k)] = rng.choice(SPECIALS, k).astype(dtype)
        if finite:
            x[~np.isfinite(x)] = 0
    elif dtype.kind == "b":
        x = rng.random(n) < 0.5
    else:
        x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, n, dtype=dtype, endpoint=True)
    zero_share = draw(st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0]))
    x[rng.random(n) < zero_share] = 0
    x = x.reshape(shape)
    if ndim >= 2 and n and draw(st.booleans()):  # some whole channels constant (dead ReLU channels)
        x[..., rng.random(shape[-1]) < 0.3] = x.reshape(-1)[0]
    return x


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


# --- names --------------------------------------------------------------------------------------------
def test_names_parse_and_print():
    assert parse_codec("jpeg:75") == parse_codec("JPEG") == codecs.Codec("jpeg", 75)
    assert parse_codec("jpeg:30").name == "jpeg:30" and parse_codec("jpeg:75").name == "jpeg"
    assert parse_codec("zstd:19").param == 19 and parse_codec("zstd").name == "zstd"
    assert parse_codec("lz4").param == 0 and parse_codec("lz4:9").name == "lz4:9"
    assert [parse_codec(n).lossless for n in ("raw", "rle-huffman", "fp16", "int8", "jpeg")] == [True, True, False, False, False]
    c = parse_codec("int8+zstd:9")
    assert c == codecs.Codec("int8", None, codecs.Codec("zstd", 9)) and c.name == "int8+zstd:9" and not c.lossless


@pytest.mark.parametrize("bad, words", [("jpg", "unknown codec"), ("jpeg:0", "1..100"), ("jpeg:101", "1..100"),
                                        ("jpeg:x", "not an integer"), ("int8:4", "takes no parameter"),
                                        ("zstd:23", "-7..22"), ("zstd:0", "not a level"),
                                        ("jpeg+zstd", "only fp16 and int8"), ("int8+fp16", "one lossless codec"),
                                        ("int8+raw", "one lossless codec"), ("int8+zstd+lz4", "one lossless codec"),
                                        ("int8+", "expected a name|unknown codec"), ("", "expected a name"), ("raw:", "takes no parameter")])
def test_bad_names_are_one_line_errors(bad, words):
    with pytest.raises(PisplitError, match=words) as e:
        parse_codec(bad)
    assert "\n" not in str(e.value) and repr(bad) in str(e.value)


def test_import_is_lazy():
    """partitioners may import numpy and layers only: the codec libraries load when a codec runs."""
    probe = ("import json, sys, partitioners.codecs as c; print(json.dumps(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('zstandard', 'lz4', 'simplejpeg', 'PIL'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout) == []


# --- lossless -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOSSLESS)
@SETTINGS
@given(x=tensors())
def test_lossless_round_trip_bit_for_bit(name, x):
    c = usable(name)
    msg = encode(x, c)
    assert len(msg) <= codecs.max_encoded_bytes(c, x.shape, x.dtype)
    y = decode(msg, expect_codec=c, shape=x.shape, dtype=x.dtype)
    assert same_bits(x, y)


@pytest.mark.parametrize("name", ["raw", "rle-huffman", "zlib", "zstd", "lz4"])
@pytest.mark.parametrize("x", [np.zeros(0, np.float32), np.zeros((3, 0, 2), np.float32), np.float32(7.5),
                               np.float32([-0.0]), np.float32([np.nan]), SPECIALS, np.zeros((4, 4), np.float32),
                               np.float32([1e-45] * 5), np.array([np.nan], np.float32).view(np.uint32) | np.uint32(0x7fc01234)],
                         ids=["empty", "empty3d", "scalar", "negzero", "nan", "specials", "zeros", "denormal", "nanpayload"])
def test_lossless_edge_cases(name, x):
    c = usable(name)
    x = np.asarray(x).view(np.float32) if np.asarray(x).dtype == np.uint32 else np.asarray(x)
    assert same_bits(x, decode(encode(x, c)))


def test_rle_huffman_compresses_sparse_relu_data_and_limits_code_lengths():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(1, 27, 27, 64)), 0).astype(np.float32)
    x[rng.random(x.shape) < 0.8] = 0
    m = measure("rle-huffman", x, repeat=1)
    assert m.ratio > 3.5 and m.max_abs_error == 0
    # Fibonacci counts make an unlimited Huffman tree 30 deep: lengths must stay <= 16 and decode
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    lengths = codecs._code_lengths(np.array(fib))
    assert lengths.max() <= codecs.MAX_CODE_LEN and np.sum(2.0 ** -lengths) <= 1
    sym = np.repeat(np.arange(30), np.array(fib) % 5000 + 1)
    y = np.zeros((sym.size, 4), np.uint8)
    y[:, 0] = sym + 1  # distinct top bytes with skewed counts
    x = np.frombuffer(y.tobytes(), ">f4").astype(np.float32)
    assert same_bits(x, decode(encode(x, "rle-huffman")))


# --- lossy ----------------------------------------------------------------------------------------------
def check_lossy(c, x):
    msg = encode(x, c)
    assert len(msg) <= codecs.max_encoded_bytes(c, x.shape)
    y = decode(msg, shape=x.shape, dtype=np.float32)
    err = float(np.abs(y.astype(np.float64) - x).max()) if x.size else 0.0
    assert err <= error_bound(c, x), (c.name, err, error_bound(c, x))
    return y


@pytest.mark.parametrize("name", LOSSY)
@SETTINGS
@given(x=tensors(dtypes=["float32"], finite=True))
def test_lossy_within_stated_error(name, x):
    c = usable(name)
    if c.kind == "fp16":
        x = np.clip(x, -60000, 60000)
    y = check_lossy(c, x)
    if c.kind == "int8":  # zero stays exactly zero (ReLU sparsity survives)
        assert np.all(y[x == 0] == 0)
    if c.kind == "jpeg" and x.size:  # decoded values stay in their channel's range
        per, _ = codecs._groups(x.shape)
        x2, y2 = codecs._as_groups(x, per), codecs._as_groups(y, per)
        slack = 1e-6 * np.abs(x2).max(axis=0)
        assert np.all(y2 >= x2.min(axis=0) - slack) and np.all(y2 <= x2.max(axis=0) + slack)


def test_fp16_keeps_nan_inf_negzero_and_refuses_overflow():
    x = np.float32([np.nan, np.inf, -np.inf, -0.0, 1e-8, 65504, -65519])
    y = decode(encode(x, "fp16"))
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == -np.inf and np.signbit(y[3]) and y[3] == 0
    assert abs(y[4] - x[4]) <= error_bound("fp16", x)
    with pytest.raises(PisplitError, match="fp16: 1 finite values beyond float16's range"):
        encode(np.float32([1.0, 70000.0]), "fp16")


@pytest.mark.parametrize("name", ["int8", "jpeg:50"])
def test_int8_and_jpeg_refuse_nan_and_inf(name):
    c = usable(name)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((1, 8, 8, 4), np.float32)
        x[0, 1, 2, 3] = bad
        with pytest.raises(PisplitError, match=f"{c.name}: tensor has 1 NaN/inf values"):
            encode(x, c)
    with pytest.raises(PisplitError, match="lossy codecs take float32"):
        encode(np.ones(4, np.float64), c)


@pytest.mark.parametrize("qf", [5, 50, 95])
def test_jpeg_constant_channels_stay_exact_beside_busy_ones(qf):
    """A dead channel tiled between busy ones (13x13 tiles share JPEG blocks with their neighbours)
    decodes to its constant exactly, not to its neighbours' ringing scaled by a made-up step."""
    c = usable(f"jpeg:{qf}")
    x = np.random.default_rng(4).random((1, 13, 13, 16)).astype(np.float32) * 10
    x[..., 3] = 0
    x[..., 7] = 2.5
    y = check_lossy(c, x)
    assert np.all(y[..., 3] == 0) and np.all(y[..., 7] == 2.5)
    flat = np.zeros((1, 3, 1, 50), np.float32)  # per-tensor mode: one constant tensor
    flat[...] = -1.25
    assert np.all(decode(encode(flat, c)) == -1.25)


def test_jpeg_quality_trades_size_for_error():
    usable("jpeg")
    yy, xx = np.mgrid[0:28, 0:28]
    x = np.stack([np.maximum(np.sin(xx / (3 + c)) * np.cos(yy / (2 + c)), 0) for c in range(32)], -1)[None].astype(np.float32)
    m10, m90 = measure("jpeg:10", x, repeat=1), measure("jpeg:90", x, repeat=1)
    assert m10.encoded_bytes < m90.encoded_bytes < x.nbytes / 4
    assert m90.max_abs_error < m10.max_abs_error <= m10.error_bound
    assert 0 < m90.rel_error < 0.05


def test_jpeg_backends_agree_on_the_format(monkeypatch):
    """A message encoded with simplejpeg decodes with Pillow and the other way round."""
    pil = pytest.importorskip("PIL.Image")
    sj = pytest.importorskip("simplejpeg")
    x = np.random.default_rng(3).random((1, 20, 20, 5)).astype(np.float32)
    for enc_lib in (sj, pil):
        monkeypatch.setattr(codecs, "_jpeg_backend", lambda: enc_lib)
        msg = encode(x, "jpeg:80")
        decoded = {}
        for dec_lib in (sj, pil):
            monkeypatch.setattr(codecs, "_jpeg_backend", lambda: dec_lib)
            decoded[dec_lib] = decode(msg)
            assert np.abs(decoded[dec_lib] - x).max() <= error_bound("jpeg:80", x)
        assert np.abs(decoded[sj] - decoded[pil]).max() <= 2.0001 * np.float32(1 / 255)  # IDCTs differ by a unit or two


# --- corrupt and truncated messages ---------------------------------------------------------------------
ALL = LOSSLESS + LOSSY


@pytest.mark.parametrize("name", ["raw", "rle-huffman", "zlib", "zstd", "lz4", "fp16", "int8", "jpeg:60", "int8+rle-huffman", "fp16+zstd"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=tensors(dtypes=["float32"], finite=True, max_elems=800), data=st.data())
def test_corrupt_or_truncated_messages_raise(name, x, data):
    c = usable(name)
    msg = encode(x, c)
    cut = data.draw(st.integers(0, len(msg) - 1))
    with pytest.raises(PisplitError) as e:
        decode(msg[:cut])
    assert "\n" not in str(e.value)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(msg) - 1), st.integers(1, 255)), min_size=1, max_size=4))
    bad = bytearray(msg)
    for i, v in flips:
        bad[i] ^= v
    if bytes(bad) != msg:
        with pytest.raises(PisplitError) as e:
            decode(bytes(bad))
        assert "\n" not in str(e.value)
    with pytest.raises(PisplitError, match="after its"):
        decode(msg + b"\0")


def test_errors_name_the_codec():
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    msg = bytearray(encode(x, "rle-huffman"))
    msg[-1] ^= 1
    with pytest.raises(PisplitError, match=r"^rle-huffman: checksum mismatch"):
        decode(bytes(msg))
    head_len = codecs._FIXED.size + 4 * x.ndim + 12
    with pytest.raises(PisplitError, match=r"^int8: message truncated: 5 of 29 payload bytes"):
        decode(encode(x, "int8")[: head_len + 5])  # one scale, one zero point, 24 values
    with pytest.raises(PisplitError, match="not a codec message"):
        decode(b"hello world, this is not a message at all")
    with pytest.raises(PisplitError, match="expected a jpeg message"):
        decode(encode(x, "raw"), expect_codec="jpeg")
    with pytest.raises(PisplitError, match=r"holds shape \(1, 2, 3, 4\), expected \(1, 2, 3, 5\)"):
        decode(encode(x, "raw"), shape=(1, 2, 3, 5))
    with pytest.raises(PisplitError, match="holds float32, expected float16"):
        decode(encode(x, "raw"), dtype=np.float16)
    h = read_header(encode(x, "jpeg:30") if parse_codec("jpeg").available() else encode(x, "zlib:9"))
    assert h.shape == (1, 2, 3, 4) and h.dtype == np.float32 and h.codec.param in (30, 9)


def reseal(msg: bytes) -> bytes:
    """The message with its checksum recomputed (a corruption the CRC cannot see)."""
    ndim = msg[8]
    head_len = codecs._FIXED.size + 4 * ndim + 12
    crc = zlib.crc32(msg[head_len:], zlib.crc32(msg[: head_len - 4]))
    return msg[: head_len - 4] + struct.pack("<I", crc) + msg[head_len:]


@pytest.mark.parametrize("name", ["rle-huffman", "zlib", "zstd", "lz4", "fp16", "int8", "jpeg:60", "int8+rle-huffman", "fp16+zstd"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=tensors(dtypes=["float32"], finite=True, max_elems=600), data=st.data())
def test_payload_decoders_survive_resealed_corruption(name, x, data):
    """Past the checksum, payload decoders still fail only with PisplitError (or return a tensor of the
    header's shape and dtype): no other exception, no hang."""
    c = usable(name)
    msg = bytearray(encode(x, c))
    head_len = codecs._FIXED.size + 4 * x.ndim + 12
    if len(msg) == head_len:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        msg[data.draw(st.integers(head_len, len(msg) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        y = decode(reseal(bytes(msg)))
    except PisplitError as e:
        assert "\n" not in str(e) and str(e).startswith(c.name.split("+")[0])
    else:
        assert y.shape == x.shape and y.dtype == x.dtype


# --- measurements ---------------------------------------------------------------------------------------
def test_measure_reports_size_time_and_error():
    rng = np.random.default_rng(1)
    x = np.maximum(rng.normal(size=(1, 13, 13, 32)), 0).astype(np.float32)
    for name in ["raw", "rle-huffman", "fp16", "int8"]:
        m = measure(name, x, repeat=2)
        assert m.raw_bytes == x.nbytes and m.encoded_bytes == len(encode(x, name)) and m.encode_s > 0 and m.decode_s > 0
        assert m.max_abs_error <= m.error_bound and (m.max_abs_error == 0) == m.lossless
    assert measure("raw", x).encoded_bytes - x.nbytes < 48  # the header is small
    assert measure("fp16", x).ratio == pytest.approx(2, rel=0.01)


def test_incompressible_data_is_stored_not_expanded():
    """A lossless codec never makes a tensor larger; jpeg stores its 8-bit image when JPEG would be
    larger (noise at QF 100); both decode as usual."""
    noise = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8)
    for name in ["rle-huffman", "zlib", "zstd", "lz4"]:
        if parse_codec(name).available():
            msg = encode(noise, name)
            assert read_header(msg).flags & codecs.FLAG_STORED and len(msg) == codecs.max_encoded_bytes(name, noise.shape, np.uint8)
            assert same_bits(noise, decode(msg))
    c = usable("jpeg:100")
    x = np.random.default_rng(6).random((1, 16, 16, 8)).astype(np.float32)
    msg = encode(x, c)
    assert read_header(msg).flags & codecs.FLAG_STORED and len(msg) <= codecs.max_encoded_bytes(c, x.shape)
    assert np.abs(decode(msg) - x).max() <= error_bound("int8", x) * 2  # stored pixels: quantisation error only


@pytest.mark.parametrize("name", ["raw", "rle-huffman", "zlib", "zstd", "lz4", "fp16", "int8", "jpeg"])
def test_any_layout_in_any_buffer(name):
    """Big-endian, Fortran-ordered and strided tensors encode; messages decode from bytes, bytearray,
    memoryview and numpy uint8 buffers (what MPI receives into) to native float32."""
    c = usable(name)
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for a in (base.astype(">f4"), np.asfortranarray(base), base[:, ::2]):
        msg = encode(a, c)
        for buf in (msg, bytearray(msg), memoryview(msg), np.frombuffer(msg, np.uint8)):
            y = decode(buf)
            assert y.shape == a.shape and y.dtype == np.float32 and y.dtype.isnative
            if c.lossless:
                assert np.array_equal(y, a)


def test_quantiser_chains_keep_zeros_as_zero_bytes():
    """int8 codes are q - zero_point (mod 256), so ReLU zeros are zero bytes a lossless stage packs:
    int8+rle-huffman beats int8 on sparse data and decodes to the same values."""
    c = usable("int8+rle-huffman")
    rng = np.random.default_rng(8)
    x = np.maximum(rng.normal(size=(1, 20, 20, 32)), 0).astype(np.float32)
    x[rng.random(x.shape) < 0.6] = 0
    plain, chained = measure("int8", x, repeat=1), measure(c, x, repeat=1)
    assert chained.ratio > 2 * plain.ratio
    assert np.array_equal(decode(encode(x, "int8")), decode(encode(x, c)))
    msg = encode(x, c)
    assert read_header(msg).codec == c and read_header(msg).flags & codecs.FLAG_INNER
    with pytest.raises(PisplitError, match="expected a int8\\+zstd message"):
        decode(msg, expect_codec="int8+zstd")
    assert decode(msg, expect_codec="int8").shape == x.shape
