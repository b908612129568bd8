"""The codec's native types, numpy scalars and arrays, zero-copy decoding, caller buffers, nesting and cycles.

Round trips are checked with `same`, a strict structural comparison: types must match exactly, floats bit for bit
(so nan, -0.0 and nan payloads count), dicts in insertion order, and arrays by dtype, shape, layout and raw bytes.
"""
import collections
import datetime as dt
import decimal
import enum
import gc
import mmap
import os
import re
import struct
import subprocess
import sys
import textwrap
import threading
import uuid
import zoneinfo
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _fastser
import actors
from actors import ActorsError, DecodeError, SerializationError

OOB_MIN = 16384
ADDR = r"0x[0-9a-f]+"

# hypothesis describes the recursive strategies below at length; the warning says nothing about the codec
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

CODEC = settings(max_examples=60, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


from _helpers.codec import MAX_DEPTH  # noqa: E402




# -- comparison ---------------------------------------------------------------------------------------------------

def _float_bits(x):
    return struct.pack("<d", x)


def same(a, b):
    """Strict equality: same types all the way down, floats bit-exact, dict order, array layout-independent bytes."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return _float_bits(a) == _float_bits(b)
    if isinstance(a, complex):
        return _float_bits(a.real) == _float_bits(b.real) and _float_bits(a.imag) == _float_bits(b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if isinstance(a, (set, frozenset)):
        if len(a) != len(b):
            return False
        rest = list(b)
        for x in a:
            for i, y in enumerate(rest):
                if same(x, y):
                    del rest[i]
                    break
            else:
                return False
        return not rest
    if isinstance(a, np.ndarray):
        return (a.dtype == b.dtype and a.dtype.str == b.dtype.str and a.shape == b.shape
                and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.dtype.str == b.dtype.str and a.tobytes() == b.tobytes()
    if isinstance(a, (dt.datetime, dt.time)):     # == ignores fold, and compares aware values by their instant
        return a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.fold == b.fold and same(a.tzinfo, b.tzinfo)
    if isinstance(a, dt.timezone):                  # == ignores the name
        return a.__getinitargs__() == b.__getinitargs__()
    if isinstance(a, decimal.Decimal):              # == ignores trailing zeros, and NaN != NaN
        return str(a) == str(b)
    return a == b


def roundtrip(obj):
    return actors.loads(actors.dumps(obj))


def test_same_is_strict():
    # the comparison the round trips rely on must be able to fail
    assert same(float("nan"), float("nan"))
    assert not same(0.0, -0.0)
    assert not same(1, True)
    assert not same(1, 1.0)
    assert not same([1, 2], (1, 2))
    assert not same({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert not same({1, 2}, {1, 3})
    assert not same(b"x", bytearray(b"x"))
    assert not same(np.zeros(2, "<i4"), np.zeros(2, ">i4"))
    assert not same(np.zeros((2, 3)), np.zeros((3, 2)))
    assert not same(np.float32(1), np.float64(1))
    assert same({float("nan"), 1}, {1, float("nan")})
    assert not same(dt.datetime(2024, 1, 1, fold=0), dt.datetime(2024, 1, 1, fold=1))
    assert not same(dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone.utc),
                    dt.datetime(2024, 1, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    assert not same(dt.timezone(dt.timedelta(0), "A"), dt.timezone(dt.timedelta(0), "B"))
    assert not same(decimal.Decimal("1.0"), decimal.Decimal("1.00"))


# -- native types ---------------------------------------------------------------------------------------------------

text = st.text(st.characters(exclude_categories=()), max_size=30)     # includes lone surrogates
floats = st.floats(allow_nan=True, allow_infinity=True)
def _big_int(exponent, offset):
    return (1 << abs(exponent)) * (1 if exponent >= 0 else -1) + offset


ints = st.one_of(st.integers(), st.builds(_big_int, st.integers(-300, 300), st.integers(-(2 ** 16), 2 ** 16)),
                 st.sampled_from([0, -1, 127, 128, -128, -129, 2 ** 31, 2 ** 63 - 1, 2 ** 63, -(2 ** 63),
                                  -(2 ** 63) - 1, 2 ** 64, -(2 ** 64), 2 ** 64 - 1, 255, 256, -256, -255]))
hashable_leaves = st.one_of(st.none(), st.booleans(), ints, floats,
                            st.complex_numbers(allow_nan=True, allow_infinity=True), text, st.binary(max_size=30))
hashables = st.recursive(hashable_leaves,
                         lambda inner: st.one_of(st.tuples(inner, inner), st.lists(inner, max_size=4).map(tuple),
                                                 st.frozensets(inner, max_size=4)),
                         max_leaves=12)
leaves = st.one_of(hashable_leaves, st.binary(max_size=30).map(bytearray))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(hashables, inner, max_size=5),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
    ),
    max_leaves=30,
)


@CODEC
@given(values)
def test_roundtrip_native(obj):
    assert same(roundtrip(obj), obj)


@CODEC
@given(st.dictionaries(hashables, values, max_size=6))
def test_roundtrip_dict_keys_of_every_hashable_type(d):
    out = roundtrip(d)
    assert type(out) is dict
    assert same(out, d)


@pytest.mark.parametrize("value", [
    None, True, False, 0, 1, -1, 127, 128, -128, -129, 2 ** 63 - 1, -(2 ** 63), 2 ** 63, -(2 ** 63) - 1,
    2 ** 64, -(2 ** 64), 10 ** 100, -(10 ** 100), 2 ** 1000 + 1, -(2 ** 1000),
    0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 5e-324, 1.7976931348623157e308,
    complex(1, -2), complex(float("nan"), float("inf")), complex(-0.0, 0.0),
    "", "ascii", "é", "日本語", "😀", "\x00", "\ud800", "a\udfffb", "\udc80\ud800x",
    b"", b"\x00\xff", bytearray(), bytearray(b"abc"),
    [], (), {}, set(), frozenset(), [[]], ((),), {(): ()}, {frozenset(): frozenset()},
    {1: "int", "1": "str", 1.5: "float", b"1": "bytes", None: "none"},
    {(1, (2, 3)): [4, {5: 6}]},
], ids=repr)
def test_roundtrip_edge_values(value):
    out = roundtrip(value)
    assert same(out, value)


# -- the standard library's value types -----------------------------------------------------------------------------

timezones = st.one_of(st.none(), st.just(dt.timezone.utc), st.timezones(),
                      st.builds(dt.timezone, st.timedeltas(dt.timedelta(hours=-23), dt.timedelta(hours=23))),
                      st.builds(dt.timezone, st.timedeltas(dt.timedelta(hours=-23), dt.timedelta(hours=23)), text))
stdlib_values = st.one_of(
    st.datetimes(timezones=timezones, allow_imaginary=True).flatmap(
        lambda d: st.sampled_from([d, d.replace(fold=1)])),
    st.dates(), st.times(timezones=timezones), st.timedeltas(), st.uuids(), timezones,
    st.decimals(allow_nan=True, allow_infinity=True), st.decimals(places=8))


@CODEC
@given(st.lists(stdlib_values, max_size=8))
def test_roundtrip_standard_library_values(objs):
    assert same(roundtrip(objs), objs)


def test_standard_library_values_need_no_registration_and_run_no_pickle():
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    msg = {"at": dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris), "id": uuid.UUID(int=7),
           "price": decimal.Decimal("19.990"), "every": dt.timedelta(minutes=5)}
    data = actors.dumps(msg)
    assert b"cloudpickle" not in data and b"\x80\x05" not in data     # no pickle inside
    out = actors.loads(data)
    assert same(out, msg)
    assert out["at"].tzinfo is paris                # the receiver's own ZoneInfo, by its key
    assert out["at"].utcoffset() == dt.timedelta(hours=1)      # fold=1: the second 02:30, after the clocks went back
    assert len(data) < 150


def test_a_timezone_name_with_a_lone_surrogate_round_trips():
    tz = dt.timezone(dt.timedelta(hours=-3), "zone\ud800")
    assert same(roundtrip([tz, dt.time(1, tzinfo=tz)]), [tz, dt.time(1, tzinfo=tz)])


def test_a_registration_of_a_standard_library_type_is_used_instead():
    # what was registered before these types travelled natively keeps going as registered
    actors.register_class(decimal.Decimal, serializer=lambda d: ["decimal", str(d)], deserializer=lambda v: v)
    try:
        assert roundtrip(decimal.Decimal("1.5")) == ["decimal", "1.5"]
    finally:
        actors.unregister_class(decimal.Decimal)
    assert same(roundtrip(decimal.Decimal("1.5")), decimal.Decimal("1.5"))


class _FixedZone(dt.tzinfo):
    def utcoffset(self, d):
        return dt.timedelta(hours=2)


def test_an_unregistered_tzinfo_is_named_with_its_place():
    with pytest.raises(SerializationError, match=r"^cannot serialize <_FixedZone object at .*> at obj\[0\]\.tzinfo: "
                                                 r"class _FixedZone is not registered; call "
                                                 r"actors\.register_class\(_FixedZone\)$"):
        actors.dumps([dt.datetime(2024, 1, 1, tzinfo=_FixedZone())])
    with pytest.raises(SerializationError, match=r"a ZoneInfo made from a file \(ZoneInfo\.from_file\) has no key"):
        with open(_tzfile("UTC"), "rb") as f:
            actors.dumps(zoneinfo.ZoneInfo.from_file(f))


def _tzfile(key):
    """The path of a time zone's file, in the system's database or the tzdata package."""
    for root in zoneinfo.TZPATH:
        if os.path.exists(os.path.join(root, key)):
            return os.path.join(root, key)
    import importlib.resources
    return str(importlib.resources.files("tzdata.zoneinfo") / key)


def test_bool_is_not_int_and_int_is_not_bool():
    out = roundtrip([True, 1, False, 0])
    assert [type(x) for x in out] == [bool, int, bool, int]


def test_dict_order_is_kept():
    d = {k: k for k in ["z", "a", "m", 3, 1, 2]}
    assert list(roundtrip(d)) == ["z", "a", "m", 3, 1, 2]


def test_nan_keys_and_elements():
    d = {float("nan"): 1, float("nan"): 2}
    out = roundtrip(d)
    assert len(out) == 2 and sorted(out.values()) == [1, 2]
    s = roundtrip({float("nan"), float("nan"), 1.0})
    assert len(s) == 3


def test_lone_surrogates_keep_exact_code_points():
    s = "x\ud800y\udfff" * 3
    out = roundtrip({s: s})
    ((k, v),) = out.items()
    assert k == s and v == s and [ord(c) for c in v] == [ord(c) for c in s]


def test_str_is_utf8_on_the_wire():
    msg = actors.dumps("é")
    assert "é".encode() in msg


def test_error_classes():
    assert issubclass(SerializationError, ActorsError) and issubclass(SerializationError, TypeError)
    assert issubclass(DecodeError, ActorsError) and issubclass(DecodeError, ValueError)
    assert issubclass(actors.RegistrationError, ActorsError) and issubclass(actors.RegistrationError, ValueError)
    assert actors.SerializationError is _fastser.SerializationError
    assert actors.DecodeError is _fastser.DecodeError


# -- large payloads out of band -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda n: os.urandom(n),
    lambda n: bytearray(os.urandom(n)),
    lambda n: "a" * n,
    lambda n: "é" * (n // 2),
    lambda n: "€" * (n // 3 + 1),
], ids=["bytes", "bytearray", "ascii", "latin", "bmp"])
@pytest.mark.parametrize("n", [OOB_MIN - 1, OOB_MIN, 3 * OOB_MIN + 7, 1 << 20])
def test_large_payloads(make, n):
    value = make(n)
    msg = actors.dumps([value, "small", value])
    out = actors.loads(msg)
    assert same(out, [value, "small", value])
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) >= OOB_MIN:
        # out of band: in the data region, 64-byte aligned, after the short stream
        stream_len = struct.unpack_from("<I", msg, 4)[0]
        where = msg.index(raw)
        assert where % 64 == 0
        assert where >= 16 + stream_len
        assert stream_len < 100
    else:
        assert msg.index(raw) < 64


def test_large_str_with_surrogates_travels_inline():
    s = "\ud800" + "x" * (2 * OOB_MIN)
    assert same(roundtrip(s), s)


def test_oob_payloads_do_not_leak_old_contents_in_padding():
    enc = _fastser.Encoder()
    n = enc.prepare([b"\x01" * OOB_MIN, np.arange(3, dtype=np.uint8)])
    buf = bytearray(b"\xee" * n)
    enc.write_into(buf)
    assert b"\xee" not in buf
    out = actors.loads(buf)
    assert out[0] == b"\x01" * OOB_MIN and out[1].tolist() == [0, 1, 2]


# -- numpy scalars ---------------------------------------------------------------------------------------------------

SCALARS = [
    np.bool_(True), np.bool_(False), np.int8(-5), np.int16(-300), np.int32(2 ** 31 - 1), np.int64(-(2 ** 63)),
    np.uint8(255), np.uint16(65535), np.uint32(2 ** 32 - 1), np.uint64(2 ** 64 - 1),
    np.float16(1.5), np.float32(-0.0), np.float64("nan"), np.float64("-inf"), np.longdouble("1.1"),
    np.complex64(1 - 2j), np.complex128(complex(float("nan"), 3)), np.clongdouble(2 + 3j),
    np.datetime64("2024-02-29", "D"), np.datetime64("2024-02-29T12:34:56.123456789", "ns"),
    np.datetime64(1, "Y"), np.datetime64(5, "M"), np.datetime64(7, "W"), np.datetime64(3, "h"),
    np.datetime64(3, "m"), np.datetime64(3, "s"), np.datetime64(3, "ms"), np.datetime64(3, "us"),
    np.datetime64(3, "ps"), np.datetime64(3, "10s"), np.datetime64("NaT", "ns"), np.datetime64("NaT"),
    np.timedelta64(5, "D"), np.timedelta64(-5, "ns"), np.timedelta64(1, "us"), np.timedelta64("NaT", "s"),
    np.str_("abc"), np.str_("日本"), np.bytes_(b"ab\x00c"), np.void(b"\x00\x01\x02"),
]


@pytest.mark.parametrize("scalar", SCALARS, ids=lambda s: f"{type(s).__name__}-{s.dtype.str}")
def test_numpy_scalar_roundtrip(scalar):
    out = roundtrip(scalar)
    assert type(out) is type(scalar)
    assert same(out, scalar)
    nested = roundtrip({"s": [scalar, (scalar,)]})
    assert same(nested, {"s": [scalar, (scalar,)]})


def test_numpy_scalar_is_not_decoded_as_python_number():
    assert type(roundtrip(np.float64(1.0))) is np.float64
    assert type(roundtrip(np.int64(1))) is np.int64
    assert type(roundtrip(np.bool_(True))) is np.bool_


@pytest.mark.parametrize("scalar", [np.str_("a" * 64), np.str_("b" * 70), np.bytes_(b"c" * 256),
                                    np.bytes_(b"d" * 300)], ids=["U64", "U70", "S256", "S300"])
def test_numpy_long_string_scalar_roundtrip(scalar):
    # longer than 255 bytes: the scalar's length field must not wrap
    assert same(roundtrip(scalar), scalar)
    assert same(roundtrip([scalar, np.str_("x" * 5000)]), [scalar, np.str_("x" * 5000)])


@pytest.mark.parametrize("scalar", [np.str_(""), np.bytes_(b"")], ids=["U0", "S0"])
def test_numpy_empty_string_scalar_roundtrip(scalar):
    out = roundtrip(scalar)
    assert type(out) is type(scalar) and out == scalar and out.dtype.itemsize == 0
    assert same(roundtrip([scalar, {"k": scalar}]), [scalar, {"k": scalar}])


def test_structured_numpy_scalar_is_refused():
    scalar = np.zeros(1, dtype="i4,f8")[0]
    with pytest.raises(SerializationError) as info:
        actors.dumps(scalar)
    assert str(info.value) == (f"cannot serialize <void object at {id(scalar):#x}> at obj: structured dtype "
                               f"[('f0', '<i4'), ('f1', '<f8')] is not supported; send each field as its own "
                               f"array, or send arr.tobytes() with the dtype")


# -- numpy arrays ----------------------------------------------------------------------------------------------------

ARRAY_DTYPES = [
    "|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8", np.dtype(np.longdouble).str,
    "<c8", "<c16", np.dtype(np.clongdouble).str,
    ">i2", ">i4", ">i8", ">u2", ">u8", ">f2", ">f4", ">f8", ">c8", ">c16",
    "<M8[ns]", "<M8[us]", "<M8[ms]", "<M8[s]", "<M8[m]", "<M8[h]", "<M8[D]", "<M8[W]", "<M8[M]", "<M8[Y]",
    "<M8[10s]", ">M8[ns]", "<M8",
    "<m8[ns]", "<m8[us]", "<m8[ms]", "<m8[s]", "<m8[D]", "<m8[Y]", ">m8[s]", "<m8",
    "|S1", "|S7", "<U1", "<U5", ">U3", "|V3", "|V16",
]


def _array_from_bytes(dtype, shape, raw):
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = (raw * (dtype.itemsize * count // max(len(raw), 1) + 1))[: dtype.itemsize * count] if raw else \
        bytes(dtype.itemsize * count)
    flat = np.frombuffer(bytearray(raw), dtype=dtype)
    if dtype.kind == "U":        # keep code points valid
        words = flat.view(dtype.str[0] + "u4")
        words %= 0x10000
    return flat.reshape(shape)


LAYOUTS = ["C", "F", "slice", "reversed", "transpose", "step-last"]


def _layout(arr, layout):
    if layout == "C":
        return np.ascontiguousarray(arr)
    if layout == "F":
        return np.asfortranarray(arr)
    if arr.ndim == 0:
        return arr
    if layout == "slice":
        return arr[(slice(None, None, 2),) * arr.ndim]
    if layout == "reversed":
        return arr[::-1]
    if layout == "transpose":
        return arr.T
    return arr[..., 1:]


@given(dtype=st.sampled_from(ARRAY_DTYPES),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
       raw=st.binary(min_size=0, max_size=64),
       layout=st.sampled_from(LAYOUTS))
@settings(CODEC, max_examples=150)
def test_array_roundtrip(dtype, shape, raw, layout):
    arr = _layout(_array_from_bytes(dtype, shape, raw), layout)
    out = roundtrip(arr)
    assert type(out) is np.ndarray
    assert same(out, arr)
    assert not out.flags.writeable
    if arr.flags.c_contiguous:
        assert out.flags.c_contiguous
    elif arr.flags.f_contiguous:
        assert out.flags.f_contiguous
    else:
        assert out.flags.c_contiguous


@pytest.mark.parametrize("dtype", ARRAY_DTYPES)
def test_array_every_dtype(dtype):
    arr = _array_from_bytes(dtype, (2, 3), bytes(range(7, 250)))
    out = roundtrip([arr, {"a": arr}])
    assert same(out[0], arr) and same(out[1]["a"], arr)
    assert out[0].dtype.str == np.dtype(dtype).str


def test_array_values_match_numpy_semantics():
    cases = [
        np.array([1.5, np.nan, -np.inf, -0.0]),
        np.array([True, False, True]),
        np.array([1 + 2j, np.nan * 1j], dtype=np.complex64),
        np.array(["2024-01-01T00:00:00.5", "NaT"], dtype="M8[ms]"),
        np.array([1, -2, 3], dtype="m8[D]"),
        np.array([b"ab", b"", b"xyz\x00"], dtype="S4"),
        np.array(["", "é", "日本語"], dtype="U3"),
        np.arange(12, dtype=">i4").reshape(3, 4),
    ]
    for arr in cases:
        out = roundtrip(arr)
        assert out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)


def test_array_zero_dimensional_and_empty():
    for arr in [np.array(5.5), np.array(7, dtype=">i8"), np.array("s", dtype="U1"), np.empty(0),
                np.empty((0, 3), dtype="c16"), np.empty((4, 0, 2), dtype="M8[s]"), np.empty((0,), dtype="S3")]:
        out = roundtrip(arr)
        assert same(out, arr) and out.shape == arr.shape


def test_fortran_order_stays_fortran():
    arr = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    out = roundtrip(arr)
    assert out.flags.f_contiguous and not out.flags.c_contiguous
    assert out.strides == arr.strides
    np.testing.assert_array_equal(out, arr)


def test_non_contiguous_becomes_contiguous():
    base = np.arange(100, dtype=np.int64).reshape(10, 10)
    for view in [base[::2, 1::3], base[:, 3], base[::-1], base.T[1:, ::-2], base[::3, ::3].T]:
        out = roundtrip(view)
        np.testing.assert_array_equal(out, view)
        assert out.flags.c_contiguous or out.flags.f_contiguous
        if not (view.flags.c_contiguous or view.flags.f_contiguous):
            assert out.flags.c_contiguous


def test_array_inside_structures():
    a = np.arange(6).reshape(2, 3)
    obj = {"a": a, "list": [a.T, a[:, 1]], "t": (np.float32(2), a[0])}
    out = roundtrip(obj)
    assert same(out, obj)


@pytest.mark.parametrize("ndim", [33, 40, 64])
def test_array_many_dimensions(ndim):
    try:
        arr = np.arange(2, dtype=np.int8).reshape((1,) * (ndim - 1) + (2,))
    except ValueError:
        pytest.skip(f"this numpy does not allow {ndim} dimensions")
    out = roundtrip(arr)
    assert same(out, arr) and out.ndim == ndim
    arr_f = np.asfortranarray(np.arange(4, dtype=np.int8).reshape((2,) + (1,) * (ndim - 2) + (2,)))
    out_f = roundtrip(arr_f)
    assert same(out_f, arr_f) and out_f.flags.f_contiguous


def test_array_32_dimensions():
    arr = np.arange(2, dtype=np.int8).reshape((1,) * 31 + (2,))
    assert same(roundtrip(arr), arr)


def test_object_dtype_refused():
    arr = np.array([1, "x", None], dtype=object)
    with pytest.raises(SerializationError) as info:
        actors.dumps({"data": [0, arr]})
    assert str(info.value) == (f"cannot serialize <ndarray object at {id(arr):#x}> at obj['data'][1]: arrays of "
                               f"dtype object hold Python object pointers; convert with .tolist(), or to a numeric "
                               f"or string dtype")


def test_structured_dtype_refused():
    arr = np.zeros(3, dtype=[("x", "<f4"), ("y", "<i2")])
    with pytest.raises(SerializationError) as info:
        actors.dumps(arr)
    assert str(info.value) == (f"cannot serialize <ndarray object at {id(arr):#x}> at obj: structured dtype "
                               f"[('x', '<f4'), ('y', '<i2')] is not supported; send each field as its own array, "
                               f"or send arr.tobytes() with the dtype")


def test_refused_array_leaves_encoder_usable():
    arr = np.array([None])
    with pytest.raises(SerializationError):
        actors.dumps([np.arange(3), arr])
    assert same(roundtrip([np.arange(3)]), [np.arange(3)])


@pytest.mark.parametrize("make", [lambda a: a.view(np.matrix), lambda a: np.ma.masked_array(a),
                                  lambda a: a.view(np.memmap)], ids=["matrix", "masked", "memmap"])
def test_ndarray_subclass_refused_unless_registered(make):
    obj = make(np.arange(4).reshape(2, 2))
    cls = type(obj)
    with pytest.raises(SerializationError) as info:
        actors.dumps(obj)
    assert str(info.value) == (f"cannot serialize <{cls.__qualname__} object at {id(obj):#x}> at obj: class "
                               f"{cls.__qualname__} is not registered; call actors.register_class("
                               f"{cls.__qualname__}, pickle=True)")
    actors.register_class(cls, pickle=True)
    out = roundtrip(obj)
    assert type(out) is cls
    np.testing.assert_array_equal(out, obj)


# -- zero copy ------------------------------------------------------------------------------------------------------

def _arrays():
    return {"f8": np.arange(1000, dtype=np.float64), "F": np.asfortranarray(np.ones((7, 9), dtype=np.int16)),
            "s": np.array([b"abc"] * 5), "strided": np.arange(50)[::3]}


def test_decoded_arrays_share_memory_with_source():
    source = bytearray(actors.dumps(_arrays()))
    raw = np.frombuffer(source, np.uint8)
    out = actors.loads(source)
    for name, arr in out.items():
        assert np.shares_memory(arr, raw), name
        assert not arr.flags.writeable
        assert not arr.flags.owndata
    # writes to the source show through: it really is a view
    first = out["f8"]
    offset = first.ctypes.data - raw.ctypes.data
    raw[offset: offset + 8] = np.frombuffer(struct.pack("<d", 42.0), np.uint8)
    assert first[0] == 42.0


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "numpy", "mmap"])
def test_decoded_arrays_cannot_be_made_writable(kind):
    msg = actors.dumps([np.arange(10.0), np.zeros((3, 3), order="F")])
    if kind == "bytes":
        source = msg
    elif kind == "bytearray":
        source = bytearray(msg)
    elif kind == "memoryview":
        source = memoryview(bytearray(msg))
    elif kind == "numpy":
        source = np.frombuffer(bytearray(msg), np.uint8)
    else:
        source = mmap.mmap(-1, len(msg))
        source[:] = msg
    out = actors.loads(source)
    for arr in out:
        with pytest.raises(ValueError):
            arr.setflags(write=True)
        with pytest.raises(ValueError):
            arr[0] = 1
        assert not arr.flags.writeable
    del out, arr
    if kind == "mmap":
        gc.collect()
        source.close()


def test_decoded_arrays_from_readonly_numpy_view_stay_readonly():
    # numpy lets a view become writable when its base array is: a read-only view is no read-only source
    backing = np.frombuffer(bytearray(actors.dumps(np.arange(4.0))), np.uint8)
    view = backing.view()
    view.flags.writeable = False
    out = actors.loads(view)
    with pytest.raises(ValueError):
        out.setflags(write=True)
    assert bytes(backing) == actors.dumps(np.arange(4.0))


def test_decoded_arrays_keep_the_source_alive():
    payload = np.arange(4096, dtype=np.int64)
    source = bytearray(actors.dumps({"a": payload, "b": payload[::2]}))
    out = actors.loads(source)
    # the arrays hold a buffer export: the bytearray cannot be resized under them
    with pytest.raises(BufferError):
        source.extend(b"x")
    del source
    gc.collect()
    churn = [bytearray(os.urandom(len(payload) * 8)) for _ in range(20)]
    np.testing.assert_array_equal(out["a"], payload)
    np.testing.assert_array_equal(out["b"], payload[::2])
    base = out["a"].base
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, bytearray)
    del churn


def test_decoded_from_bytes_keeps_bytes_alive():
    payload = np.arange(100, dtype=np.float32)
    out = actors.loads(actors.dumps(payload))        # the message bytes object has no other reference
    gc.collect()
    np.testing.assert_array_equal(out, payload)
    assert isinstance(out.base, (bytes, memoryview))


def test_decode_from_memoryview_slice_and_trailing_bytes():
    msg = actors.dumps({"x": np.arange(8, dtype=np.uint16)})
    buf = bytearray(b"\x00" * 64 + msg + b"\xff" * 100)
    out = actors.loads(memoryview(buf)[64:])         # a slot bigger than the message: the header's total rules
    np.testing.assert_array_equal(out["x"], np.arange(8))
    assert np.shares_memory(out["x"], np.frombuffer(buf, np.uint8))


# -- caller buffers ---------------------------------------------------------------------------------------------------

def _payload():
    return {"a": np.arange(37, dtype=np.float64), "b": [np.ones(5, dtype=np.int8), np.zeros((3, 5), order="F")],
            "big": b"\x07" * OOB_MIN, "t": "text", "odd": np.arange(3, dtype=np.uint8)}


def _all_arrays(obj):
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _all_arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _all_arrays(v)


@pytest.mark.parametrize("kind", ["bytearray", "numpy", "mmap"])
def test_encode_into_caller_buffer(kind):
    obj = _payload()
    enc = _fastser.Encoder()
    n = enc.prepare(obj)
    assert n == len(actors.dumps(obj))
    if kind == "bytearray":
        buf = bytearray(n)
    elif kind == "numpy":
        buf = np.empty(n, np.uint8)
    else:
        buf = mmap.mmap(-1, n)
    assert enc.write_into(buf) == n
    assert bytes(buf[:n]) == actors.dumps(obj)
    out = actors.loads(buf)
    assert same(out, obj)
    raw = np.frombuffer(buf, np.uint8)
    for arr in _all_arrays(out):
        assert np.shares_memory(arr, raw)
    del out, arr, raw
    if kind == "mmap":
        gc.collect()
        buf.close()


def test_encode_into_buffer_at_offset():
    obj = _payload()
    enc = _fastser.Encoder()
    n = enc.prepare(obj)
    buf = bytearray(n + 200)
    assert enc.write_into(buf, 128) == n
    assert same(actors.loads(memoryview(buf)[128:]), obj)


@pytest.mark.parametrize("offset", [0, 64, 128, 640])
def test_array_data_is_64_byte_aligned(offset):
    obj = _payload()
    enc = _fastser.Encoder()
    n = enc.prepare(obj)
    storage = np.empty(n + offset + 64, np.uint8)
    start = (-storage.ctypes.data) % 64 + offset
    enc.write_into(storage, start)
    assert (storage.ctypes.data + start) % 64 == 0
    out = actors.loads(storage[start:start + n])
    arrays = list(_all_arrays(out))
    assert len(arrays) == 4
    for arr in arrays:
        assert arr.ctypes.data % 64 == 0
        assert arr.flags.aligned


def test_mmap_destination_alignment():
    obj = _payload()
    enc = _fastser.Encoder()
    n = enc.prepare(obj)
    mm = mmap.mmap(-1, n)
    enc.write_into(mm)
    out = actors.loads(mm)
    assert all(arr.ctypes.data % 64 == 0 for arr in _all_arrays(out))
    with pytest.raises(BufferError):
        mm.close()          # the decoded arrays still use it
    del out
    gc.collect()
    mm.close()


def test_write_into_too_small_buffer():
    enc = _fastser.Encoder()
    n = enc.prepare([1, 2, 3])
    with pytest.raises(ValueError) as info:
        enc.write_into(bytearray(n - 1))
    assert str(info.value) == f"buffer too small: the message needs {n} bytes at offset 0, the buffer holds {n - 1}"
    with pytest.raises(ValueError) as info:
        enc.write_into(bytearray(n + 3), 4)
    assert str(info.value) == f"buffer too small: the message needs {n} bytes at offset 4, the buffer holds {n + 3}"
    # still prepared: a big enough buffer works
    buf = bytearray(n)
    enc.write_into(buf)
    assert actors.loads(buf) == [1, 2, 3]


def test_write_into_needs_prepare_and_is_one_shot():
    enc = _fastser.Encoder()
    with pytest.raises(RuntimeError, match=r"^write_into needs a prepare\(\) first$"):
        enc.write_into(bytearray(100))
    n = enc.prepare("x")
    enc.write_into(bytearray(n))
    with pytest.raises(RuntimeError, match=r"^write_into needs a prepare\(\) first$"):
        enc.write_into(bytearray(n))


def test_prepare_twice_needs_release():
    enc = _fastser.Encoder()
    enc.prepare([1])
    with pytest.raises(RuntimeError, match=r"^this Encoder is already encoding a message; use one Encoder per "
                                           r"message$"):
        enc.prepare([2])
    enc.release()
    n = enc.prepare([3])
    buf = bytearray(n)
    enc.write_into(buf)
    assert actors.loads(buf) == [3]


def test_write_into_readonly_buffer_refused():
    enc = _fastser.Encoder()
    n = enc.prepare([1])
    with pytest.raises(BufferError):
        enc.write_into(bytes(n))
    enc.release()


def test_encoder_encode_matches_dumps():
    obj = _payload()
    assert _fastser.Encoder().encode(obj) == actors.dumps(obj)


def test_bytearray_resized_between_prepare_and_write_is_safe():
    # run in a child: reading freed memory would crash the test process
    code = textwrap.dedent("""
        import _fastser, actors
        ba = bytearray(b"a" * 300000)
        enc = _fastser.Encoder()
        try:
            n = enc.prepare([ba])
            ba.extend(b"b" * 50_000_000)          # frees the storage the encoder points at
        except BufferError:
            print("refused")                      # the fix: the encoder holds an export, resizing is refused
            raise SystemExit(0)
        buf = bytearray(n)
        enc.write_into(buf)
        out = actors.loads(buf)[0]
        assert out == b"a" * 300000, out[:20]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])


@pytest.mark.parametrize("value", ["'é' * 100000", "bytes(100000)"])
def test_dict_mutated_by_a_key_serializer(value):
    code = textwrap.dedent(f"""
        import actors
        d = {{}}

        class Key:
            pass

        def ser(key):
            d.clear()               # drops the only reference to the value encoded next
            return 0

        actors.register_class(Key, serializer=ser, deserializer=lambda v: Key())
        d[Key()] = {value}
        try:
            actors.dumps(d)
        except actors.SerializationError as exc:
            print(str(exc).replace(hex(id(d)), "ID"))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == ("cannot serialize <dict object at ID> at obj: the dict changed size while it was "
                                     "being serialized")


def test_dict_mutated_by_a_value_serializer():
    d = {}

    class Grow:
        pass

    def ser(g):
        d["added"] = 1
        return 0

    actors.register_class(Grow, serializer=ser, deserializer=lambda v: Grow())
    d["g"] = Grow()
    with pytest.raises(SerializationError) as info:
        actors.dumps(d)
    assert str(info.value) == (f"cannot serialize <dict object at {id(d):#x}> at obj: the dict changed size while it "
                               f"was being serialized")


def test_list_mutated_by_a_serializer():
    items = []

    class Shrink:
        pass

    def ser(s):
        del items[1:]
        return 0

    actors.register_class(Shrink, serializer=ser, deserializer=lambda v: Shrink())
    items.extend([Shrink(), "x" * 50, [1]])
    with pytest.raises(SerializationError) as info:
        actors.dumps(items)
    assert str(info.value) == (f"cannot serialize <list object at {id(items):#x}> at obj: the list changed size while "
                               f"it was being serialized")


# -- subclasses of native types -------------------------------------------------------------------------------------

class Color(enum.IntEnum):
    RED = 1


class Mood(enum.Enum):
    CALM = "calm"


class Tagged(dict):
    pass


Point = collections.namedtuple("Point", "x y")


class Text(str):
    pass


NATIVE_SUBCLASSES = [Color.RED, Tagged(a=1), Point(1, 2), Text("t"), collections.OrderedDict(a=1),
                     collections.defaultdict(list), collections.Counter("aab")]


@pytest.mark.parametrize("value", NATIVE_SUBCLASSES, ids=lambda v: type(v).__name__)
def test_native_subclasses_are_refused(value):
    with pytest.raises(SerializationError) as info:
        actors.dumps({"k": [value]})
    cls = type(value)
    assert re.fullmatch(rf"cannot serialize <{cls.__qualname__} object at {ADDR}> at obj\['k'\]\[0\]: class "
                        rf"{cls.__qualname__} is not registered; call actors\.register_class\(.*\)",
                        str(info.value)), str(info.value)
    assert f"at {id(value):#x}>" in str(info.value)


@pytest.mark.parametrize("value", NATIVE_SUBCLASSES[:4], ids=lambda v: type(v).__name__)
def test_native_subclasses_travel_when_registered_with_pickle(value):
    actors.register_class(type(value), pickle=True)
    out = roundtrip([value])
    assert type(out[0]) is type(value)
    assert out[0] == value


@pytest.mark.parametrize("value", NATIVE_SUBCLASSES[:4], ids=lambda v: type(v).__name__)
def test_native_subclass_error_suggests_a_registration_that_works(value):
    cls = type(value)
    with pytest.raises(SerializationError) as info:
        actors.dumps(value)
    assert str(info.value) == (f"cannot serialize <{cls.__qualname__} object at {id(value):#x}> at obj: class "
                               f"{cls.__qualname__} is not registered; call actors.register_class("
                               f"{cls.__qualname__}, pickle=True)")


async def _coroutine():
    pass


@pytest.mark.parametrize("make, fix", [
    (lambda: (i for i in range(3)), "send a list of what it yields (list(gen)) instead"),
    (lambda: _coroutine(), "await it here and send its result instead"),
    (lambda: memoryview(b"ab"), "send bytes(view), or a numpy array, instead"),
    (lambda: open(os.devnull, "rb"), "send what it stands for (a path, an address, the data) instead"),
    (lambda: threading.Lock(), "send what it stands for (a path, an address, the data) instead"),
], ids=["generator", "coroutine", "memoryview", "file", "lock"])
def test_what_can_never_travel_says_so_instead_of_suggesting_a_registration(make, fix):
    value = make()
    try:
        with pytest.raises(SerializationError) as info:
            actors.dumps({"k": value})
        message = str(info.value)
        assert message.startswith(f"cannot serialize <{type(value).__qualname__} object at {id(value):#x}> at "
                                  f"obj['k']: {type(value).__qualname__} objects cannot be sent: "), message
        assert message.endswith(fix), message
        assert "register_class" not in message
    finally:
        if hasattr(value, "close"):
            value.close()


def test_an_enum_member_error_suggests_the_registration_that_works():
    with pytest.raises(SerializationError) as info:
        actors.dumps(Mood.CALM)
    assert str(info.value).endswith("class Mood is not registered; call actors.register_class(Mood, pickle=True)")
    actors.register_class(Mood, pickle=True)
    assert roundtrip([Mood.CALM])[0] is Mood.CALM          # the member itself: enums compare by identity


def test_c_native_subclass_error_suggests_pickle():
    value = collections.OrderedDict(a=1)
    with pytest.raises(SerializationError) as info:
        actors.dumps(value)
    assert str(info.value) == (f"cannot serialize <OrderedDict object at {id(value):#x}> at obj: class OrderedDict "
                               f"is not registered; call actors.register_class(collections.OrderedDict, "
                               f"pickle=True)")


# -- nesting ---------------------------------------------------------------------------------------------------------

_ROOT = str(Path(__file__).resolve().parent.parent)


def test_max_depth_constant():
    source = Path(_fastser.__file__).with_name("_format.pxi")
    if not source.exists():
        pytest.skip("the codec's .pxi sources are not installed")
    assert re.search(r"^\s*MAX_DEPTH = (\d+)\s*$", source.read_text(), re.M).group(1) == str(MAX_DEPTH)


def _nested_lists(levels):
    # `levels` lists, each the only item of the one around it
    x = []
    for _ in range(levels - 1):
        x = [x]
    return x


def _depth_of_lists(x):
    depth = 0
    while True:
        assert type(x) is list
        depth += 1
        if not x:
            return depth
        assert len(x) == 1
        x = x[0]


def _path(levels, segment="[0]"):
    if levels > 24:
        return "obj" + segment * 12 + f"...({levels - 22} levels)..." + segment * 10
    return "obj" + segment * levels


def test_max_depth_lists_roundtrip():
    x = _nested_lists(MAX_DEPTH)
    out = roundtrip(x)
    assert _depth_of_lists(out) == MAX_DEPTH


def test_max_depth_mixed_containers_roundtrip():
    x = 0
    for i in range(MAX_DEPTH):
        x = [x] if i % 3 == 0 else {"k": x} if i % 3 == 1 else (x,)
    out = roundtrip(x)
    for i in reversed(range(MAX_DEPTH)):
        if i % 3 == 0:
            assert type(out) is list and len(out) == 1
            out = out[0]
        elif i % 3 == 1:
            assert type(out) is dict and list(out) == ["k"]
            out = out["k"]
        else:
            assert type(out) is tuple and len(out) == 1
            out = out[0]
    assert out == 0


@pytest.mark.parametrize("extra", [1, 2, 50])
def test_too_deep_lists(extra):
    x = _nested_lists(MAX_DEPTH + extra)
    inner = x
    for _ in range(MAX_DEPTH):
        inner = inner[0]
    with pytest.raises(SerializationError) as info:
        actors.dumps(x)
    assert str(info.value) == (f"cannot serialize <list object at {id(inner):#x}> at {_path(MAX_DEPTH)}: it is "
                               f"nested more than {MAX_DEPTH} levels deep; flatten it, or pickle it by hand into "
                               f"bytes")
    # the encoder is still usable
    assert roundtrip([1]) == [1]


def test_too_deep_dicts():
    x = {}
    for _ in range(MAX_DEPTH):
        x = {"k": x}
    inner = x
    for _ in range(MAX_DEPTH):
        inner = inner["k"]
    with pytest.raises(SerializationError) as info:
        actors.dumps(x)
    path = _path(MAX_DEPTH, "['k']")
    assert str(info.value) == (f"cannot serialize <dict object at {id(inner):#x}> at {path}: "
                               f"it is nested more than {MAX_DEPTH} levels deep; flatten it, or pickle it by hand "
                               f"into bytes")


def test_deep_nesting_in_a_thread():
    result = {}

    def work():
        try:
            x = _nested_lists(MAX_DEPTH)
            result["depth"] = _depth_of_lists(roundtrip(x))
            with pytest.raises(SerializationError, match="nested more than"):
                actors.dumps([x])
            result["ok"] = True
        except BaseException as exc:     # reported below, in the main thread
            result["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert "error" not in result, result.get("error")
    assert result == {"depth": MAX_DEPTH, "ok": True}


_SMALL_STACK = textwrap.dedent("""
    import sys, threading, actors

    class Node:
        def __init__(self, nxt):
            self.nxt = nxt

    actors.register_class(Node)
    kind, depth = sys.argv[1], int(sys.argv[2])
    if kind == "cycle":
        x = Node(None)
        x.nxt = x
    else:
        x = None
        for _ in range(depth):
            x = [x] if kind == "list" else {"k": x} if kind == "dict" else (x,) if kind == "tuple" else Node(x)

    def work():
        if kind == "cycle":
            try:
                actors.dumps(x)
            except actors.SerializationError as exc:
                print("contains itself" in str(exc))
            return
        out = actors.loads(actors.dumps(x))
        try:
            actors.dumps([x])
        except actors.SerializationError:
            print(type(out).__name__)

    threading.stack_size(1 << 20)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
""")


def _run_small_stack(kind):
    # in a child process: a C stack overflow would kill the test process
    result = subprocess.run([sys.executable, "-c", _SMALL_STACK, kind, str(MAX_DEPTH)], cwd=_ROOT,
                            capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout.strip(), result.stderr[-2000:]


@pytest.mark.parametrize("kind, expected", [("list", "list"), ("dict", "dict"), ("tuple", "tuple")])
def test_max_depth_in_a_thread_with_a_1_mib_stack(kind, expected):
    assert _run_small_stack(kind) == (0, expected, "")


@pytest.mark.parametrize("kind, expected", [("node", "Node"), ("cycle", "True")])
def test_max_depth_registered_objects_in_a_thread_with_a_1_mib_stack(kind, expected):
    assert _run_small_stack(kind) == (0, expected, "")


# -- cycles -----------------------------------------------------------------------------------------------------------

def test_list_containing_itself():
    cyc = []
    cyc.append(cyc)
    with pytest.raises(SerializationError) as info:
        actors.dumps(cyc)
    assert str(info.value) == (f"cannot serialize <list object at {id(cyc):#x}> at obj: it contains itself (found "
                               f"again at obj[0]); break the cycle before sending it")


def test_cycle_deeper_in_the_message():
    cyc = [0]
    cyc.append(cyc)
    obj = {"x": [1, cyc]}
    with pytest.raises(SerializationError) as info:
        actors.dumps(obj)
    assert str(info.value) == (f"cannot serialize <list object at {id(cyc):#x}> at obj['x'][1]: it contains itself "
                               f"(found again at obj['x'][1][1]); break the cycle before sending it")


def test_dict_containing_itself_through_a_list():
    d = {}
    d["a"] = [d]
    with pytest.raises(SerializationError) as info:
        actors.dumps(d)
    assert str(info.value) == (f"cannot serialize <dict object at {id(d):#x}> at obj: it contains itself (found "
                               f"again at obj['a'][0]); break the cycle before sending it")
    assert re.fullmatch(re.escape("cannot serialize <dict object at ") + ADDR + re.escape(
        "> at obj: it contains itself (found again at obj['a'][0]); break the cycle before sending it"),
        str(info.value))


def test_dict_value_cycle_through_key_path():
    d = {"first": 1}
    d[(1, 2)] = {"inner": d}
    with pytest.raises(SerializationError) as info:
        actors.dumps(d)
    assert str(info.value) == (f"cannot serialize <dict object at {id(d):#x}> at obj: it contains itself (found "
                               f"again at obj[(1, 2)]['inner']); break the cycle before sending it")


class Node:
    def __init__(self, name):
        self.name = name
        self.me = None


def test_registered_object_containing_itself():
    actors.register_class(Node)
    node = Node("n")
    node.me = node
    with pytest.raises(SerializationError) as info:
        actors.dumps({"nodes": [node]})
    assert str(info.value) == (f"cannot serialize <Node object at {id(node):#x}> at obj['nodes'][0]: it contains "
                               f"itself (found again at obj['nodes'][0].me); break the cycle before sending it")


def test_shared_references_are_not_cycles():
    shared = [1, 2]
    out = roundtrip([shared, shared, {"a": shared}])
    assert out == [[1, 2], [1, 2], {"a": [1, 2]}]
    assert out[0] is not out[1]          # no memo: each reference is encoded once more


# -- misc -----------------------------------------------------------------------------------------------------------

def test_loads_accepts_buffers():
    msg = actors.dumps({"a": [1, 2.5, "x"]})
    for source in [msg, bytearray(msg), memoryview(msg), np.frombuffer(msg, np.uint8)]:
        assert actors.loads(source) == {"a": [1, 2.5, "x"]}


def test_loads_refuses_non_buffers():
    with pytest.raises(TypeError) as info:
        actors.loads("not bytes")
    assert str(info.value) == ("cannot decode a str: it does not support the buffer protocol; pass bytes, "
                               "bytearray, memoryview or another buffer")


def test_loads_refuses_non_contiguous_buffer():
    msg = actors.dumps([1])
    strided = memoryview(bytes(b for pair in zip(msg, msg) for b in pair))[::2]
    with pytest.raises(DecodeError, match=r"^cannot decode: the buffer is not contiguous \(.*\); pass "
                                          r"bytes\(buffer\)$"):
        actors.loads(strided)


def test_header_layout():
    msg = actors.dumps([1, "a"])
    assert msg[:2] == b"\xfa\x5e" and msg[2] == 1 and msg[3] == 0
    stream_len, total = struct.unpack_from("<IQ", msg, 4)
    assert total == len(msg) == 16 + stream_len
