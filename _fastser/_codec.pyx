# cython: language_level=3
"""The codec: native types, numpy arrays and registered classes to and from one wire format.

Built from several included files (format, registry, encoder, decoder) so that the hot paths call each other as
C functions.
"""
import datetime as _dt
import decimal as _decimal
import enum as _enum
import re as _re
import sys as _sys
import uuid as _uuid
import zoneinfo as _zoneinfo
from pickle import loads as _pickle_loads

import cloudpickle as _cloudpickle
import numpy as _np

cimport numpy as cnp
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.datetime cimport (
    date_day,
    date_month,
    date_new,
    date_year,
    datetime_day,
    datetime_fold,
    datetime_hour,
    datetime_microsecond,
    datetime_minute,
    datetime_month,
    datetime_new,
    datetime_second,
    datetime_tzinfo,
    datetime_year,
    import_datetime,
    time_fold,
    time_hour,
    time_microsecond,
    time_minute,
    time_new,
    time_second,
    time_tzinfo,
    timedelta_days,
    timedelta_microseconds,
    timedelta_new,
    timedelta_seconds,
)
from cpython.complex cimport PyComplex_FromDoubles, PyComplex_ImagAsDouble, PyComplex_RealAsDouble
from cpython.dict cimport PyDict_GetItem, PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject_GenericSetAttr
from cpython.object cimport Py_TYPE, PyObject_Hash, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from cpython.set cimport PySet_Add
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_AsEncodedString, PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from _fastser._errors import DecodeError, RegistrationError, SerializationError, UnknownClassError

cdef extern from "Python.h":
    PyTypeObject PyUnicode_Type
    PyTypeObject PyLong_Type
    PyTypeObject PyFloat_Type
    PyTypeObject PyBool_Type
    PyTypeObject PyDict_Type
    PyTypeObject PyList_Type
    PyTypeObject PyTuple_Type
    PyObject* Py_None
    PyObject* Py_True
    bint PyUnicode_IS_COMPACT_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    Py_ssize_t Py_SIZE(object)
    object _PyDict_NewPresized(Py_ssize_t)
    object PyObject_GenericGetDict(object, void*)

cdef extern from "codec.h":
    Py_ssize_t FS_U32_MAX
    void fs_copy(char* dst, const void* src, Py_ssize_t n) noexcept
    bint fs_long_small(object o, long long* v) noexcept
    bint fs_is_ascii(const char* p, Py_ssize_t n) noexcept
    object fs_ascii_str(const char* p, Py_ssize_t n)

cdef extern from "numpy/arrayobject.h":
    # Declared here with raw pointers: both steal references, which Cython's numpy declarations hide.
    object PyArray_NewFromDescr(PyObject* subtype, PyObject* descr, int nd, cnp.npy_intp* dims,
                                cnp.npy_intp* strides, void* data, int flags, PyObject* obj)
    int PyArray_SetBaseObject(PyObject* arr, PyObject* base) except -1

cnp.import_array()
import_datetime()

if _sys.byteorder != "little":
    raise ImportError("_fastser supports little-endian machines only")

_ndarray = _np.ndarray
_datetime = _dt.datetime
_date = _dt.date
_time = _dt.time
_timedelta = _dt.timedelta
_timezone = _dt.timezone
_ZoneInfo = _zoneinfo.ZoneInfo
_UUID = _uuid.UUID
_Decimal = _decimal.Decimal
# Decoding a Decimal's text: exact (no rounding), and refusing text that is not a number whatever the thread's own
# context traps (Decimal("1x2") is NaN under a context that does not trap InvalidOperation)
_DECIMAL_EXACT = _decimal.Context(prec=_decimal.MAX_PREC, Emax=_decimal.MAX_EMAX, Emin=_decimal.MIN_EMIN,
                                  traps=[_decimal.InvalidOperation])
_np_generic = _np.generic
_MISSING = object()

include "_format.pxi"
include "_registry.pxi"
include "_encode.pxi"
include "_decode.pxi"

cdef Registry _default_registry = Registry()
default_registry = _default_registry

cdef Encoder _encoder = Encoder()
cdef Decoder _decoder = Decoder()


def dumps(obj):
    """Encode `obj` into bytes.

    Native types (None, bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset), the
    standard library's datetime, date, time, timedelta, timezone, ZoneInfo, UUID and Decimal, numpy scalars and
    arrays, and instances of registered classes. Raises `SerializationError` naming the object, where it
    sits in `obj`, and the fix.
    """
    if _encoder.busy:        # called again from inside a serializer: use a fresh encoder
        return Encoder().encode_c(obj)
    return _encoder.encode_c(obj)


cdef bint _decoder_busy = False

def loads(buffer):
    """Decode a message from any object with the buffer protocol.

    numpy arrays come back as read-only views into `buffer`, which they keep alive. Bad input raises `DecodeError`.
    """
    global _decoder_busy
    if _decoder_busy:        # called again from inside a deserializer: use a fresh decoder
        return Decoder().decode(buffer)
    _decoder_busy = True
    try:
        if type(buffer) is bytes:       # immutable: its own arrays' base, and no buffer export needed
            return _decoder.decode_ptr(PyBytes_AS_STRING(buffer), PyBytes_GET_SIZE(buffer), buffer)
        return _decoder.decode(buffer)
    finally:
        _decoder_busy = False


def register_class(cls, *, pickle=False, serializer=None, deserializer=None):
    return _default_registry.register(cls, pickle=pickle, serializer=serializer, deserializer=deserializer)


def unregister_class(cls):
    _default_registry.unregister(cls)


def registered_classes():
    return [entry.cls for entry in _default_registry.entries()]
