"""The decoder against bad input: random bytes, truncations, mutations and forged headers.

The contract: `loads` returns a value or raises `DecodeError`, never another exception and never a crash; a forged
count allocates nothing; no dtype descriptor yields an object or structured array; a pickled value is unpickled only
for a class registered with pickle=True in the decoding registry.

Messages with pickled values are kept out of the mutation fuzz: a corrupted cloudpickle payload is unpickled (that is
what pickle=True means) and corrupted code objects can crash the interpreter, which is outside the codec's reach.
"""
import datetime as dt
import decimal
import inspect
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
import zoneinfo
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _fastser
import actors
from actors import DecodeError

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


from _helpers.codec import MAX_DEPTH  # noqa: E402
# the width of a numpy scalar's length field, as the encoder writes it: tag, dtype (1 + 3), length, 8 bytes
SCALAR_LEN = len(actors.dumps(np.float64(0))) - 16 - 1 - 4 - 8
assert SCALAR_LEN in (1, 4)
_ROOT = str(Path(__file__).resolve().parent.parent)

T_NONE, T_INT8, T_BIGINT, T_STR, T_STR_SP, T_BYTES, T_BYTES_OOB, T_BYTEARRAY = 0x00, 0x03, 0x05, 0x08, 0x09, 0x0B, \
    0x0C, 0x0D
T_LIST, T_TUPLE, T_DICT, T_SET, T_FROZENSET = 0x10, 0x11, 0x12, 0x13, 0x14
T_NPSCALAR, T_NDARRAY, T_OBJECT, T_PICKLED = 0x20, 0x21, 0x30, 0x31


def frame(stream, data=b"", total=None, version=1):
    """A message around `stream`: header, stream, and `data` at the 64-aligned data region."""
    body = stream
    if data:
        body += bytes(-(16 + len(stream)) % 64) + data
    if total is None:
        total = 16 + len(body)
    return b"\xfa\x5e" + bytes([version, 0]) + struct.pack("<IQ", len(stream), total) + body


def u32(n):
    return struct.pack("<I", n)


def u64(n):
    return struct.pack("<Q", n)


def s(text):
    raw = text.encode()
    return bytes([T_STR]) + u32(len(raw)) + raw


def scalar_len(n):
    return n.to_bytes(SCALAR_LEN, "little")


def array_header(desc, dims, off, nbytes, flags=0):
    return (bytes([T_NDARRAY, len(desc)]) + desc + bytes([flags, len(dims)]) + b"".join(u64(d) for d in dims)
            + u64(off) + u64(nbytes))


def check_decode(buf, decoder=None):
    """Decoding returns a value or raises DecodeError; anything else propagates and fails the test."""
    try:
        return (decoder.decode if decoder else actors.loads)(buf)
    except DecodeError as exc:
        assert str(exc).startswith("cannot decode: "), str(exc)
        return exc


def decode_error(buf, decoder=None):
    with pytest.raises(DecodeError) as info:
        (decoder.decode if decoder else actors.loads)(buf)
    return str(info.value)


# -- registrations and a corpus of valid messages ----------------------------------------------------------------

class Fields:
    def __init__(self):
        self.a = 1
        self.b = [2, "x", {"k": 3.5}]


class Slots:
    __slots__ = ("x", "y", "z")


class Custom:
    def __init__(self, v):
        self.v = v


def _register():
    actors.register_class(Fields)
    actors.register_class(Slots)
    actors.register_class(Custom, serializer=lambda c: c.v, deserializer=Custom)


def _unregister():
    for cls in (Fields, Slots, Custom):
        actors.unregister_class(cls)




def _corpus_values():
    slots = Slots()
    slots.x = {"deep": [[1, (2, None)]]}
    slots.z = b"zz"
    return [
        None, True, -1, 300, -(2 ** 63), 2 ** 80, -(2 ** 200), 1.5, float("nan"), 2 - 3j, "", "abc", "é日\ud800",
        b"\x00\xff", bytearray(b"ba"), [], [1, [2, [3, [4]]]], (1, "a", b"b"), {"a": 1, 2: [3], (4,): {5: 6}},
        {1, "x", (2, 3)}, frozenset({1.5, b"y"}), {"k" * 50: "long key", "short": "s"},
        np.arange(5, dtype=np.int32), np.zeros((2, 3), order="F"), np.arange(12.0).reshape(3, 4)[::2, ::-1],
        np.array(["ab", "c"]), np.array([b"xy"]), np.array(3.5), np.empty((0, 2)), np.array([1, 2], dtype=">i8"),
        np.array(["2024-01-01"], dtype="M8[D]"), np.float32(2.5), np.int8(-3), np.datetime64(5, "ms"),
        np.str_("uv"), np.complex64(1j),
        Fields(), slots, Custom([1, {"z": Custom(2)}]),
        {"mixed": [Fields(), np.arange(3), {"s": {1, 2}}, (Custom(None),)], "n": None},
        b"B" * 16384, "S" * 16400, bytearray(b"A" * 16385), ["é" * 9000, np.ones(70, dtype=np.uint8)],
        [dt.datetime(2024, 3, 31, 2, 30, 5, 123456, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"), fold=1),
         dt.datetime(2024, 1, 2), dt.date(2024, 2, 29), dt.time(23, 59, 59, 999999, tzinfo=dt.timezone.utc),
         dt.timedelta(-3, 7, 9), dt.timezone(dt.timedelta(hours=5, minutes=30), "IST"),
         uuid.UUID(int=0x1234567890ABCDEF1234567890ABCDEF), decimal.Decimal("-12.3400"), decimal.Decimal("sNaN")],
    ]


@pytest.fixture(scope="module")
def corpus():
    _register()
    try:
        messages = [actors.dumps(v) for v in _corpus_values()]
        for msg in messages:        # every message in the corpus is valid to begin with
            actors.loads(msg)
        yield messages
    finally:
        _unregister()


# -- random bytes ---------------------------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    check_decode(data)


@FUZZ
@given(stream=st.binary(max_size=200), data=st.binary(max_size=200), slack=st.integers(0, 70))
def test_random_stream_behind_a_valid_header(stream, data, slack):
    msg = frame(stream, data)
    check_decode(msg)
    check_decode(msg + bytes(slack))
    check_decode(frame(stream, data, total=16 + len(stream) + slack))


@FUZZ
@given(st.lists(st.sampled_from([T_LIST, T_TUPLE, T_DICT, T_SET, T_FROZENSET, T_STR, T_BYTES, T_INT8, T_NONE,
                                 T_BIGINT, T_NDARRAY, T_NPSCALAR, T_STR_SP, 0x01, 0x02, 0x04, 0x06, 0x07]),
                min_size=1, max_size=30),
       st.lists(st.integers(0, 6), min_size=1, max_size=30))
def test_random_tag_soup(tags, counts):
    # streams made of real tags and small counts get further into the decoder than uniform random bytes
    stream = b"".join(bytes([t]) + u32(c) for t, c in zip(tags, counts * 30))
    check_decode(frame(stream))
    check_decode(frame(stream[:-2]))


# -- truncation ---------------------------------------------------------------------------------------------------

def test_every_prefix_is_a_truncation_error(corpus):
    for msg in corpus:
        total = len(msg)
        for n in range(total):
            with pytest.raises(DecodeError) as info:
                actors.loads(msg[:n])
            if n < 16:
                expected = f"cannot decode: truncated message: {n} bytes, shorter than the 16-byte header at obj " \
                           f"(byte 0 of {n})"
            else:
                expected = f"cannot decode: truncated message: the header says {total} bytes, the buffer holds " \
                           f"{n} at obj (byte 0 of {n})"
            assert str(info.value) == expected


def test_every_truncated_stream_is_an_error(corpus):
    # the header is rewritten to agree with the shorter stream, so the decoder has to notice inside the stream
    # (the encoding is self-delimiting: a strict prefix of a value is never a whole value)
    for msg in corpus:
        stream_len = struct.unpack_from("<I", msg, 4)[0]
        for cut in range(stream_len):
            stream = msg[16:16 + cut]
            for candidate in (frame(stream), frame(stream, total=len(msg)) + msg[16 + cut:]):
                result = check_decode(candidate)
                assert isinstance(result, DecodeError), (msg[:40], cut)


@FUZZ
@given(data=st.data())
def test_truncation_hypothesis(corpus, data):
    msg = data.draw(st.sampled_from(corpus))
    n = data.draw(st.integers(0, len(msg) - 1))
    assert isinstance(check_decode(msg[:n]), DecodeError)
    assert isinstance(check_decode(bytearray(msg[:n])), DecodeError)


# -- mutation ----------------------------------------------------------------------------------------------------

def _positions(msg, limit=600):
    if len(msg) <= limit:
        return range(len(msg))
    step = len(msg) // limit + 1
    return sorted(set(range(0, len(msg), step)) | set(range(min(len(msg), 200))))


def test_single_byte_mutations_deterministic(corpus):
    decoded = 0
    for msg in corpus:
        for i in _positions(msg):
            for value in {0x00, 0xFF, msg[i] ^ 0x01, msg[i] ^ 0x80, (msg[i] + 1) & 0xFF, 0x10, 0x12, 0x21, 0x30}:
                if value == msg[i]:
                    continue
                mutated = bytearray(msg)
                mutated[i] = value
                if not isinstance(check_decode(bytes(mutated)), DecodeError):
                    decoded += 1
    assert decoded > 0          # some mutations (payload bytes) still decode: the loop did reach real values


@FUZZ
@given(data=st.data())
def test_mutations_hypothesis(corpus, data):
    msg = bytearray(data.draw(st.sampled_from(corpus)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] = data.draw(st.integers(0, 255))
    check_decode(bytes(msg))
    check_decode(msg)                       # a writable source takes the other keepalive path
    cut = data.draw(st.integers(0, len(msg)))
    check_decode(bytes(msg[:cut]))


@FUZZ
@given(data=st.data())
def test_spliced_messages_hypothesis(corpus, data):
    # the stream of one message behind the header of another, and streams glued together
    a, b = data.draw(st.sampled_from(corpus)), data.draw(st.sampled_from(corpus))
    i, j = data.draw(st.integers(16, len(a))), data.draw(st.integers(16, len(b)))
    check_decode(a[:i] + b[j:])
    check_decode(frame(a[16:i] + b[j:]))


def test_mutated_values_with_separate_decoder(corpus):
    decoder = _fastser.Decoder()
    for msg in corpus[:25]:
        for i in range(16, len(msg)):
            mutated = bytearray(msg)
            mutated[i] ^= 0x5A
            check_decode(bytes(mutated), decoder)


# -- header -------------------------------------------------------------------------------------------------------

def test_header_errors():
    good = actors.dumps([1])
    n = len(good)
    bad = bytearray(good)
    bad[1] = 0x00
    assert decode_error(bytes(bad)) == f"cannot decode: not an encoded message (bad magic bytes) at obj (byte 0 of {n})"
    bad = bytearray(good)
    bad[2] = 7
    assert decode_error(bytes(bad)) == (f"cannot decode: unsupported format version 7 (this decoder reads 1) at obj "
                                        f"(byte 0 of {n})")
    bad = bytearray(good)
    bad[4:8] = u32(n)
    assert decode_error(bytes(bad)) == (f"cannot decode: corrupted header: the stream is longer than the message at "
                                        f"obj (byte 0 of {n})")
    bad = bytearray(good)
    bad[8:16] = u64(2 ** 64 - 1)
    assert decode_error(bytes(bad)) == (f"cannot decode: truncated message: the header says {2 ** 64 - 1} bytes, the "
                                        f"buffer holds {n} at obj (byte 0 of {n})")


def test_trailing_data_in_stream():
    msg = frame(bytes([T_INT8, 5, T_NONE, T_NONE]))
    assert decode_error(msg) == "cannot decode: 2 bytes of trailing data after the value at obj (byte 18 of 20)"


def test_empty_stream():
    assert decode_error(frame(b"")) == "cannot decode: truncated data (needs 1 bytes, 0 left) at obj (byte 16 of 16)"


def test_unknown_tag():
    assert decode_error(frame(bytes([T_LIST]) + u32(2) + bytes([T_NONE, 0x7F]))) == \
        "cannot decode: unknown type tag 0x7f at obj[1] (byte 22 of 23)"


def test_invalid_utf8():
    msg = frame(bytes([T_LIST]) + u32(1) + bytes([T_STR]) + u32(2) + b"\xff\xfe")
    assert decode_error(msg).startswith("cannot decode: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff")


def test_decoder_depth_limit():
    stream = (bytes([T_LIST]) + u32(1)) * (MAX_DEPTH + 1) + bytes([T_NONE])
    msg = frame(stream)
    path = "obj" + "[0]" * 12 + f"...({MAX_DEPTH - 22} levels)..." + "[0]" * 10
    assert decode_error(msg) == (f"cannot decode: nesting deeper than {MAX_DEPTH} levels at {path} (byte "
                                 f"{16 + 5 * MAX_DEPTH + 1} of {len(msg)})")
    ok = frame((bytes([T_LIST]) + u32(1)) * MAX_DEPTH + bytes([T_NONE]))
    out = actors.loads(ok)
    for _ in range(MAX_DEPTH):
        assert type(out) is list and len(out) == 1
        out = out[0]
    assert out is None


# -- forged counts ------------------------------------------------------------------------------------------------

def _fast_and_small(msg):
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(DecodeError) as info:
            actors.loads(msg)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 1 << 20, peak
    return str(info.value)


@pytest.mark.parametrize("tag", [T_LIST, T_TUPLE, T_DICT, T_SET, T_FROZENSET])
def test_huge_container_count(tag):
    msg = frame(bytes([tag]) + u32(2 ** 32 - 1) + bytes([T_NONE]) * 8)
    assert _fast_and_small(msg) == (f"cannot decode: corrupted count {2 ** 32 - 1} (only 8 bytes left) at obj (byte "
                                    f"21 of 29)")


@pytest.mark.parametrize("tag", [T_LIST, T_DICT, T_SET])
def test_huge_count_nested(tag):
    msg = frame(bytes([T_LIST]) + u32(1) + bytes([tag]) + u32(2 ** 31) + bytes(3))
    assert _fast_and_small(msg) == (f"cannot decode: corrupted count {2 ** 31} (only 3 bytes left) at obj[0] (byte "
                                    f"26 of 29)")


@pytest.mark.parametrize("tag", [T_STR, T_STR_SP, T_BYTES, T_BYTEARRAY, T_BIGINT])
def test_huge_length(tag):
    msg = frame(bytes([tag]) + u32(2 ** 32 - 1) + b"abc")
    assert _fast_and_small(msg) == (f"cannot decode: truncated data (needs {2 ** 32 - 1} bytes, 3 left) at obj (byte "
                                    f"21 of 24)")


def test_huge_oob_length():
    msg = frame(bytes([T_BYTES_OOB]) + u64(0) + u64(2 ** 64 - 1), data=b"x" * 64)
    assert _fast_and_small(msg) == (f"cannot decode: out-of-band data (offset 0, {2 ** 64 - 1} bytes) lies outside "
                                    f"the message at obj (byte 33 of 33)")
    msg = frame(bytes([T_BYTES_OOB]) + u64(2 ** 64 - 64) + u64(64), data=b"x" * 64)
    assert "lies outside the message" in _fast_and_small(msg)


def test_huge_field_count():
    _register()
    msg = frame(bytes([T_OBJECT]) + u64(_fastser.wire_code(Fields)) + u32(2 ** 32 - 1) + s("a") + bytes([T_NONE]))
    assert _fast_and_small(msg) == (f"cannot decode: corrupted field count {2 ** 32 - 1} at obj (byte 29 of 36)")


def test_huge_array_dimension():
    msg = frame(array_header(b"<f8", [2 ** 63], 0, 64), data=bytes(64))
    assert _fast_and_small(msg) == f"cannot decode: corrupted array dimension {2 ** 63} at obj (byte 31 of 47)"


def test_huge_array_shape():
    msg = frame(array_header(b"<f8", [2 ** 40, 2 ** 23], 0, 64), data=bytes(64))
    assert _fast_and_small(msg) == "cannot decode: corrupted array shape (too many elements) at obj (byte 39 of 55)"


@pytest.mark.parametrize("dims", [[2 ** 62, 2 ** 62], [2 ** 40, 2 ** 40], [2 ** 32, 2 ** 32], [2 ** 31] * 4,
                                  [2 ** 62, 4], [2 ** 61, 2 ** 3], [2 ** 31] * 3])
@pytest.mark.parametrize("nbytes", [0, 64])
def test_forged_array_shapes_never_allocate(dims, nbytes):
    _fast_and_small(frame(array_header(b"<f8", dims, 0, nbytes), data=bytes(64)))


def test_empty_array_with_huge_dimensions():
    result = check_decode(frame(array_header(b"<f8", [2 ** 60, 0, 2 ** 60], 0, 0), data=bytes(64)))
    assert isinstance(result, DecodeError) or (result.size == 0 and result.shape == (2 ** 60, 0, 2 ** 60))
    out = actors.loads(frame(array_header(b"<f8", [5, 0, 7], 0, 0), data=bytes(64)))
    assert out.shape == (5, 0, 7) and out.dtype == np.float64


def test_huge_array_shape_overflow_is_caught():
    # the element count must not wrap around 2**64 (2**40 * 2**40 == 0 mod 2**64) before it is checked
    msg = frame(array_header(b"<f8", [2 ** 40, 2 ** 40], 0, 64), data=bytes(64))
    assert _fast_and_small(msg) == "cannot decode: corrupted array shape (too many elements) at obj (byte 39 of 55)"


# -- forged arrays ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("desc", [b"|O8", b"O", b"|O", b"<O8", b"[('a', '<i4')]", b"<i4,<f8", b"V8,i4", b"|V0",
                                  b"<f3", b"<M8[xx]", b"<i0", b"<f0", b"<U00", b"<i4 ", b"", b"\xff\xfe", b"(2,)<i4",
                                  b"<T", b"|b1\x00", b"<M8[1s]x"])
def test_forged_dtype_descriptor(desc):
    stream = array_header(desc, [1], 0, 8)
    msg = frame(stream, data=bytes(64))
    assert decode_error(msg) == (f"cannot decode: invalid dtype descriptor {desc!r} at obj (byte {18 + len(desc)} of "
                                 f"{16 + len(stream)})")


@pytest.mark.parametrize("desc", [b"|O8", b"O", b"V8,i4"])
def test_forged_scalar_dtype_descriptor(desc):
    stream = bytes([T_NPSCALAR, len(desc)]) + desc + scalar_len(8) + bytes(8)
    assert decode_error(frame(stream)) == (f"cannot decode: invalid dtype descriptor {desc!r} at obj (byte "
                                           f"{18 + len(desc)} of {16 + len(stream)})")


def test_forged_scalar_size():
    stream = bytes([T_NPSCALAR, 3]) + b"<f8" + scalar_len(4) + bytes(4)
    assert decode_error(frame(stream)) == (f"cannot decode: corrupted numpy scalar (4 bytes for dtype float64) at obj "
                                           f"(byte {16 + len(stream)} of {16 + len(stream)})")
    stream = bytes([T_NPSCALAR, 3]) + b"<f8" + scalar_len(255) + bytes(8)
    assert decode_error(frame(stream)).startswith("cannot decode: truncated data (needs 255 bytes, 8 left) at obj")


T_DATETIME, T_DATE, T_TIME, T_TIMEDELTA, T_TIMEZONE, T_ZONEINFO, T_DECIMAL = 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x47


def _datetime_fields(year=2024, month=1, day=2, hour=3, minute=4, second=5, fold=0, us=6):
    return struct.pack("<HBBBBBBI", year, month, day, hour, minute, second, fold, us)


@pytest.mark.parametrize("stream, error", [
    (bytes([T_DATETIME]) + _datetime_fields(month=13) + bytes([T_NONE]), "ValueError: month must be in 1..12"),
    (bytes([T_DATETIME]) + _datetime_fields(day=30, month=2) + bytes([T_NONE]), "ValueError: day is out of range"),
    (bytes([T_DATETIME]) + _datetime_fields(us=2 ** 32 - 1) + bytes([T_NONE]), "ValueError: microsecond must be"),
    (bytes([T_DATETIME]) + _datetime_fields(fold=2) + bytes([T_NONE]), "ValueError: fold must be either 0 or 1"),
    (bytes([T_DATETIME]) + _datetime_fields() + bytes([T_INT8, 1]), "TypeError: tzinfo argument must be None or of"),
    (bytes([T_DATE]) + struct.pack("<HBB", 0, 1, 1), "ValueError: year 0 is out of range"),
    (bytes([T_TIME]) + struct.pack("<BBBBI", 24, 0, 0, 0, 0) + bytes([T_NONE]), "ValueError: hour must be in 0..23"),
    (bytes([T_TIMEDELTA]) + struct.pack("<iii", 2 ** 31 - 1, 0, 0), "OverflowError: days=2147483647; must have"),
    (bytes([T_TIMEZONE]) + struct.pack("<iii", 1, 0, 0) + bytes([T_NONE]), "ValueError: offset must be a timedelta"),
    (bytes([T_TIMEZONE]) + struct.pack("<iii", 0, 60, 0) + bytes([T_INT8, 1]), "expected a str (tag 0x08), found"),
    (bytes([T_ZONEINFO, T_STR]) + u32(11) + b"/etc/passwd", "ValueError: ZoneInfo keys"),
    (bytes([T_ZONEINFO, T_STR]) + u32(8) + b"Nowhere/", "ValueError: ZoneInfo keys"),
    (bytes([T_ZONEINFO, T_STR]) + u32(12) + b"Mars/Olympus", "ZoneInfoNotFoundError: 'No time zone found with key "
                                                            "Mars/Olympus'"),
    (bytes([T_DECIMAL, T_STR]) + u32(3) + b"1x2", "InvalidOperation"),
])
def test_forged_standard_library_values_are_refused_with_their_place(stream, error):
    # their constructors check every field: nothing forged decodes as a value the type cannot hold
    got = decode_error(frame(bytes([T_LIST]) + u32(1) + stream))
    assert got.startswith(f"cannot decode: {error}"), got
    assert " at obj[0] (byte " in got, got


def test_a_forged_decimal_is_refused_whatever_the_decimal_context_traps():
    # under a context that does not trap InvalidOperation, Decimal("1x2") is NaN: the decoder must not care
    msg = frame(bytes([T_DECIMAL, T_STR]) + u32(3) + b"1x2")
    with decimal.localcontext() as context:
        context.traps[decimal.InvalidOperation] = False
        assert decode_error(msg).startswith("cannot decode: InvalidOperation")


def test_a_forged_tzinfo_error_names_its_place():
    stream = bytes([T_DATETIME]) + _datetime_fields() + bytes([T_ZONEINFO, T_INT8, 1])
    assert decode_error(frame(stream)) == ("cannot decode: expected a str (tag 0x08), found tag 0x03 at obj.tzinfo "
                                           f"(byte 30 of {16 + len(stream)})")


def test_forged_array_outside_the_message():
    header_len = len(array_header(b"<i8", [4], 0, 32))
    for off, nbytes in [(64, 32), (2 ** 40, 32), (2 ** 64 - 64, 32), (0, 2 ** 63 + 32)]:
        dims = [nbytes // 8]
        stream = array_header(b"<i8", dims, off, nbytes)
        msg = frame(stream, data=bytes(64))
        text = decode_error(msg)
        if nbytes == 32:
            assert text == (f"cannot decode: out-of-band data (offset {off}, 32 bytes) lies outside the message at obj "
                            f"(byte {16 + header_len} of {16 + header_len})")
        else:
            assert text.startswith("cannot decode: ")


def test_forged_array_data_overlapping_the_stream():
    # the data region starts after the stream: an offset cannot reach back into the header or stream
    stream = array_header(b"|u1", [16], 0, 16)
    msg = frame(stream, data=bytes(range(16)) + bytes(48))
    out = actors.loads(msg)
    assert out.tolist() == list(range(16))
    start = 16 + len(stream) + (-(16 + len(stream)) % 64)
    assert np.shares_memory(out, np.frombuffer(msg, np.uint8)[start:start + 16])


def test_forged_array_misaligned():
    stream = array_header(b"<i4", [2], 4, 8)
    text = decode_error(frame(stream, data=bytes(64)))
    assert text == f"cannot decode: misaligned out-of-band data (offset 4) at obj (byte {16 + len(stream)} of " \
                   f"{16 + len(stream)})"


def test_forged_array_size_mismatch():
    stream = array_header(b"<i4", [3], 0, 8)
    text = decode_error(frame(stream, data=bytes(64)))
    assert text == f"cannot decode: corrupted array: shape and dtype int32 need 12 bytes, the message says 8 at obj " \
                   f"(byte {16 + len(stream)} of {16 + len(stream)})"


@pytest.mark.parametrize("flags, ndim", [(2, 1), (255, 1), (0, 65), (0, 255)])
def test_forged_array_flags_and_ndim(flags, ndim):
    stream = bytes([T_NDARRAY, 3]) + b"<i4" + bytes([flags, ndim]) + bytes(8 * 40)
    assert decode_error(frame(stream)) == (f"cannot decode: corrupted array header (ndim {ndim}, flags {flags}) at obj "
                                           f"(byte 23 of {16 + len(stream)})")


def test_forged_arrays_never_have_object_dtype():
    # every descriptor the decoder accepts gives a plain dtype
    for kind in "biufcmMSUVO":
        for size in (1, 2, 4, 8, 16):
            desc = f"<{kind}{size}".encode()
            result = check_decode(frame(array_header(desc, [1], 0, size), data=bytes(64)))
            if not isinstance(result, DecodeError):
                assert not result.dtype.hasobject and result.dtype.names is None and kind != "O"


# -- pickled values are refused without pickle=True ----------------------------------------------------------------

EFFECTS = []


def _side_effect(tag):
    EFFECTS.append(tag)


class Evil:
    def __reduce__(self):
        return (_side_effect, ("pickle ran",))


def _pickled_message(cls, payload):
    return frame(bytes([T_PICKLED]) + u64(_fastser.wire_code(cls)) + bytes([T_BYTES]) + u32(len(payload)) + payload)


def test_pickled_lambda_refused_by_registry_without_it():
    sender = _fastser.Registry()
    sender.register(type(lambda: 0), pickle=True)
    msg = _fastser.Encoder(sender).encode({"f": lambda: 1})
    code = _fastser.wire_code(type(lambda: 0))
    assert decode_error(msg, _fastser.Decoder(_fastser.Registry())) == (
        f"cannot decode: unknown class code {code:#018x}: the sender registered a class this process has not; "
        f"register it here too (actors.register_class) at obj['f'] (byte 36 of {len(msg)})")
    assert _fastser.Decoder(sender).decode(msg)["f"]() == 1


def test_pickled_payload_does_not_run_without_pickle_registration():
    del EFFECTS[:]
    payload = pickle.dumps(Evil())
    assert payload in _pickled_message(Fields, payload)
    # the decoding registry has no entry for the code
    empty = _fastser.Decoder(_fastser.Registry())
    assert "unknown class code" in decode_error(_pickled_message(Fields, payload), empty)
    # the decoding registry has the class, but by its fields
    receiver = _fastser.Registry()
    receiver.register(Fields)
    assert decode_error(_pickled_message(Fields, payload), _fastser.Decoder(receiver)) == (
        f"cannot decode: class {Fields.__module__}.Fields arrived encoded differently from how it is registered here "
        f"(mode fields); register it the same way in every process at obj (byte 25 of "
        f"{16 + 9 + 5 + len(payload)})")
    # by a custom serializer
    receiver.register(Fields, serializer=str, deserializer=str)
    assert "(mode custom)" in decode_error(_pickled_message(Fields, payload), _fastser.Decoder(receiver))
    # and through the default registry
    _register()
    assert "(mode fields)" in decode_error(_pickled_message(Fields, payload))
    assert EFFECTS == []


def test_pickled_payload_control():
    # the payload above does run once a class is registered with pickle=True: the checks above are meaningful
    del EFFECTS[:]
    receiver = _fastser.Registry()
    receiver.register(Fields, pickle=True)
    decoder = _fastser.Decoder(receiver)
    decoder.decode(actors.dumps([[0]]))      # a known state for the path of the error below
    text = decode_error(_pickled_message(Fields, pickle.dumps(Evil())), decoder)
    assert text.startswith(f"cannot decode: a pickled {Fields.__module__}.Fields decoded to a NoneType at obj")
    assert EFFECTS == ["pickle ran"]


def test_pickled_value_must_be_bytes():
    receiver = _fastser.Registry()
    receiver.register(Fields, pickle=True)
    decoder = _fastser.Decoder(receiver)
    decoder.decode(actors.dumps([[0]]))
    msg = frame(bytes([T_PICKLED]) + u64(_fastser.wire_code(Fields)) + bytes([T_INT8, 5]))
    assert decode_error(msg, decoder).startswith("cannot decode: corrupted pickled value at obj")


# -- bugs ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["no-field", "unhashable-key", "unhashable-element"])
def test_decode_error_path_after_child_value(case):
    # the path names where the error is, not the inside of the value decoded last
    if case == "no-field":
        receiver = _fastser.Registry()
        receiver.register(Slots)
        value = bytes([T_LIST]) + u32(1) + bytes([T_LIST]) + u32(1) + bytes([T_INT8, 1])
        stream = bytes([T_OBJECT]) + u64(_fastser.wire_code(Slots)) + u32(1) + s("zz") + value
        text = decode_error(frame(stream), _fastser.Decoder(receiver))
        assert text == (f"cannot decode: class {Slots.__module__}.Slots has no field 'zz' at obj.zz (byte "
                        f"{16 + len(stream)} of {16 + len(stream)})")
    elif case == "unhashable-key":
        key = bytes([T_LIST]) + u32(1) + bytes([T_INT8, 1])
        stream = bytes([T_DICT]) + u32(1) + key + bytes([T_INT8, 2])
        assert decode_error(frame(stream)) == (f"cannot decode: TypeError: unhashable type: 'list' at obj<key 0> "
                                               f"(byte {16 + len(stream)} of {16 + len(stream)})")
    else:
        element = bytes([T_LIST]) + u32(1) + bytes([T_INT8, 1])
        stream = bytes([T_SET]) + u32(1) + element
        assert decode_error(frame(stream)) == (f"cannot decode: TypeError: unhashable type: 'list' at obj<element 0> "
                                               f"(byte {16 + len(stream)} of {16 + len(stream)})")


def test_error_inside_pickled_value_does_not_use_freed_keys():
    # in a child process: reading a freed key can crash the interpreter
    code = textwrap.dedent("""
        import struct, _fastser
        reg = _fastser.Registry()
        reg.register(type(lambda: 0), pickle=True)
        enc, dec = _fastser.Encoder(reg), _fastser.Decoder(reg)
        def frame(stream):
            return b"\\xfa\\x5e\\x01\\x00" + struct.pack("<IQ", len(stream), 16 + len(stream)) + stream
        # 1. a natural corruption: the length of the pickled payload
        msg = bytearray(enc.encode(lambda: 1))
        msg[26:30] = struct.pack("<I", 0xFFFFFFFF)
        dec.decode(enc.encode({"k" * 1000: 1}))       # leaves a key, freed since, on level 0 of the path
        try:
            dec.decode(bytes(msg))
        except _fastser.DecodeError as exc:
            print(exc)
        # 2. a pickled value that is not bytes
        bad = frame(bytes([0x31]) + struct.pack("<Q", _fastser.wire_code(type(lambda: 0))) + bytes([0x03, 5]))
        dec.decode(enc.encode({"q" * 1000: 1}))
        try:
            dec.decode(bad)
        except _fastser.DecodeError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert re.match(r"cannot decode: truncated data \(needs 4294967295 bytes, \d+ left\) at obj", lines[0])
    assert lines[1].startswith("cannot decode: corrupted pickled value at obj")
    assert "kkk" not in result.stdout and "qqq" not in result.stdout


_NESTED_PICKLED = textwrap.dedent("""
    import struct, sys, _fastser
    reg = _fastser.Registry()
    reg.register(type(lambda: 0), pickle=True)
    code = struct.pack("<Q", _fastser.wire_code(type(lambda: 0)))
    levels = int(sys.argv[1])
    # a pickled value whose payload is a pickled value whose payload is ... and at last a bytes value
    stream = (b"\\x31" + code) * levels + b"\\x0b" + struct.pack("<I", 1) + b"x"
    msg = b"\\xfa\\x5e\\x01\\x00" + struct.pack("<IQ", len(stream), 16 + len(stream)) + stream
    try:
        _fastser.Decoder(reg).decode(msg)
    except _fastser.DecodeError as exc:
        print(str(exc)[:60])
""")


@pytest.mark.parametrize("levels", [MAX_DEPTH + 500, 5 * MAX_DEPTH, 100_000])
def test_nested_pickled_values_are_bounded(levels):
    # in a child process: the failure is heap corruption or a C stack overflow
    result = subprocess.run([sys.executable, "-c", _NESTED_PICKLED, str(levels)], cwd=_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("cannot decode: ")


def test_forged_colliding_deep_keys_give_decode_error_or_compare():
    # hash(-1) == hash(-2): inserting the second key compares two deep tuples, deeper than the recursion limit.
    # Up to Python 3.11 that limit also bounds the C comparison: its RecursionError must reach the caller as a
    # DecodeError. From 3.12 on, C code has its own limit, far above the decoder's depth limit: the keys compare.
    depth = MAX_DEPTH - 2

    def nested(tag_value):
        return (bytes([T_TUPLE]) + u32(1)) * depth + bytes([T_INT8, tag_value & 0xFF])

    stream = bytes([T_DICT]) + u32(2) + nested(-1) + bytes([T_NONE]) + nested(-2) + bytes([T_NONE])
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + depth // 2)
    try:
        if sys.version_info < (3, 12):
            text = decode_error(frame(stream))
        else:
            decoded = actors.loads(frame(stream))
    finally:
        sys.setrecursionlimit(old)
    if sys.version_info < (3, 12):
        assert text.startswith("cannot decode: RecursionError: maximum recursion depth exceeded")
    else:
        assert len(decoded) == 2 and set(decoded.values()) == {None}


def test_corrupted_pickle_payload_gives_decode_error():
    # unpickling a corrupted payload raises MemoryError: still a DecodeError to the caller
    receiver = _fastser.Registry()
    receiver.register(type(lambda: 0), pickle=True)
    payload = b"\x80\x05\x8e" + u64(2 ** 60)        # BINBYTES8 claiming 2**60 bytes
    msg = frame(bytes([T_DICT]) + u32(1) + bytes([T_STR]) + u32(1) + b"f"
                + _pickled_message(type(lambda: 0), payload)[16:])
    assert decode_error(msg, _fastser.Decoder(receiver)) == (
        f"cannot decode: unpickling a pickled builtins.function raised MemoryError:  at obj['f'] "
        f"(byte {len(msg)} of {len(msg)})")


# -- refs in hostile bytes ------------------------------------------------------------------------------------------

def test_fuzz_with_refs_never_crashes_hangs_or_opens_a_segment():
    # Mutated valid messages, refs to shared memory among them, decoded in a watched child (tests/fuzz, which
    # also runs a million inputs from the command line).
    from fuzz import fuzz_loads
    result = fuzz_loads.run(200_000, seed=7, hang=10.0)
    assert result["decode_errors"] > result["inputs"] // 2     # the mutations did reach the decoder's checks
    assert result["ok"] > 0
    assert {k: result[k] for k in ("other_errors", "segments_opened", "crashes", "hangs")} == \
        {"other_errors": 0, "segments_opened": 0, "crashes": 0, "hangs": 0}
