# The encoder: one pass over the object writes the stream into a reusable scratch buffer and records out-of-band
# payloads (array data, large bytes) by pointer. Only then is the total size known; the caller provides a buffer of
# that size (a shared-memory slot, or a new bytes object) and `write_to` copies the small stream and each payload
# exactly once, straight into it.


cdef inline int _reserve(Encoder e, Py_ssize_t n) except -1:
    if e.pos + n > e.cap:
        e._grow(n)
    return 0

cdef inline char* _room(Encoder e, Py_ssize_t n) except NULL:
    # Where the next n bytes go. Writers fill them through this local pointer and advance `pos` once: a store
    # through a char* may alias the encoder, so writing through e.buf would reload it after every byte.
    if e.pos + n > e.cap:
        e._grow(n)
    return e.buf + e.pos

cdef inline void _put_u8(Encoder e, unsigned char v) noexcept:
    e.buf[e.pos] = <char>v
    e.pos += 1

cdef inline void _put_u32(Encoder e, uint32_t v) noexcept:
    memcpy(e.buf + e.pos, &v, 4)
    e.pos += 4

cdef inline void _put_u64(Encoder e, uint64_t v) noexcept:
    memcpy(e.buf + e.pos, &v, 8)
    e.pos += 8

cdef inline void _put_f64(Encoder e, double v) noexcept:
    memcpy(e.buf + e.pos, &v, 8)
    e.pos += 8


cdef inline int _put_head(Encoder e, unsigned char tag, uint32_t n) except -1:
    # A tag and a u32 count or length.
    cdef char* p = _room(e, 5)
    p[0] = <char>tag
    memcpy(p + 1, &n, 4)
    e.pos += 5
    return 0


cdef inline int _put_str(Encoder e, const void* data, Py_ssize_t n) except -1:
    # A str's UTF-8 bytes, inline (n < OOB_MIN, so n fits the u32).
    cdef uint32_t n32 = <uint32_t>n
    cdef char* p = _room(e, 5 + n)
    p[0] = <char>T_STR
    memcpy(p + 1, &n32, 4)
    fs_copy(p + 5, data, n)
    e.pos += 5 + n
    return 0


cdef inline int _put_int(Encoder e, long long v) except -1:
    cdef char* p = _room(e, 9)
    if -128 <= v <= 127:
        p[0] = <char>T_INT8
        p[1] = <char>(<signed char>v)
        e.pos += 2
    else:
        p[0] = <char>T_INT64
        memcpy(p + 1, &v, 8)
        e.pos += 9
    return 0


cdef inline int _put_float(Encoder e, double v) except -1:
    cdef char* p = _room(e, 9)
    p[0] = <char>T_FLOAT
    memcpy(p + 1, &v, 8)
    e.pos += 9
    return 0


cdef inline int _put_byte(Encoder e, unsigned char v) except -1:
    _room(e, 1)[0] = <char>v
    e.pos += 1
    return 0


def _describe(obj):
    # Never call the object's own __repr__: it may be slow, huge or broken.
    return f"<{type(obj).__qualname__} object at {id(obj):#x}>"


def _short_repr(key):
    try:
        text = repr(key)
    except Exception:
        text = _describe(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _join_path(segments):
    if len(segments) > 24:
        segments = segments[:12] + [f"...({len(segments) - 22} levels)..."] + segments[-10:]
    return "obj" + "".join(segments)


def _type_name_for_fix(cls):
    import types as _types
    if cls.__module__ == "builtins":
        for name in ("FunctionType", "BuiltinFunctionType", "MethodType", "CodeType", "ModuleType",
                     "GeneratorType", "CoroutineType"):
            if getattr(_types, name) is cls:
                return f"types.{name}"
        return cls.__qualname__
    if cls.__flags__ & (1 << 9):      # Py_TPFLAGS_HEAPTYPE: a class written in Python
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


cdef class Encoder:
    """Encodes objects into a buffer the caller provides.

    `prepare(obj)` encodes and returns the exact size needed; `write_into(buffer)` then writes the message into any
    writable buffer, such as a shared-memory slot, with no intermediate copy of array data. An encoder is reused
    from message to message (its scratch buffer stays warm) but encodes one message at a time.
    """

    def __cinit__(self, Registry registry=None):
        self.registry = registry if registry is not None else _default_registry
        self.cap = 4096
        self.buf = <char*>malloc(self.cap)
        self.oobcap = 16
        self.oob = <OOB*>malloc(self.oobcap * sizeof(OOB))
        self.stack = <PyObject**>malloc((MAX_DEPTH + 1) * sizeof(PyObject*))
        self.idx = <Py_ssize_t*>malloc((MAX_DEPTH + 1) * sizeof(Py_ssize_t))
        self.kinds = <int*>malloc((MAX_DEPTH + 1) * sizeof(int))
        if not (self.buf and self.oob and self.stack and self.idx and self.kinds):
            raise MemoryError()
        self._keep = []

    def __dealloc__(self):
        free(self.buf)
        free(self.oob)
        free(self.stack)
        free(self.idx)
        free(self.kinds)

    cdef int _grow(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap = self.cap * 2
        cdef char* buf
        while cap < self.pos + n:
            cap *= 2
        buf = <char*>realloc(self.buf, cap)
        if buf == NULL:
            raise MemoryError()
        self.buf = buf
        self.cap = cap
        return 0

    cdef void _release(self):
        cdef char* buf
        if PyList_GET_SIZE(self._keep):
            del self._keep[:]
        self.noob = 0
        self.prepared = False
        self.busy = False
        if self.cap > 1 << 20:      # do not pin a huge scratch buffer after one huge message
            buf = <char*>realloc(self.buf, 4096)
            if buf != NULL:
                self.buf = buf
                self.cap = 4096

    def release(self):
        """Drop what `prepare` holds (references to out-of-band payloads) without writing."""
        self._release()

    cdef Py_ssize_t prepare_c(self, object obj) except -1:
        if self.busy:
            raise RuntimeError("this Encoder is already encoding a message; use one Encoder per message")
        # `_keep` is empty here: every prepare ends in a write or a release, and a second prepare before then fails
        self.noob = 0
        self.pos = 0
        self.data_size = 0
        self.busy = True
        try:
            _enc(self, <PyObject*>obj, 0)
        except BaseException:
            self._release()
            raise
        if self.pos > FS_U32_MAX:
            self._release()
            raise SerializationError(f"cannot serialize {_describe(obj)} at obj: the message's structure takes "
                                     f"{self.pos} bytes, more than 4 GiB; split it into several messages")
        if self.noob:
            self.total = _align(HEADER + self.pos) + self.data_size
        else:
            self.total = HEADER + self.pos
        self.prepared = True
        return self.total

    cpdef Py_ssize_t prepare(self, object obj) except -1:
        """Encode `obj`; return the number of bytes `write_into` will write."""
        return self.prepare_c(obj)

    cdef Py_ssize_t write_stream_to(self, char* dst) except -1:
        """Write header and stream only; return where the data region starts. For a message whose single array's
        data is already in place (actors.shared_array)."""
        cdef uint32_t stream_len = <uint32_t>self.pos
        cdef uint64_t total = <uint64_t>self.total
        cdef Py_ssize_t end
        if not self.prepared:
            raise RuntimeError("write_stream_to needs a prepare() first")
        dst[0] = <char>MAGIC0
        dst[1] = <char>MAGIC1
        dst[2] = <char>VERSION
        dst[3] = 0
        memcpy(dst + 4, &stream_len, 4)
        memcpy(dst + 8, &total, 8)
        memcpy(dst + HEADER, self.buf, self.pos)
        end = HEADER + self.pos
        memset(dst + end, 0, _align(end) - end)
        self._release()
        return _align(end)

    cdef int write_to(self, char* dst) except -1:
        cdef Py_ssize_t i, start, end, data_start
        cdef OOB* o
        cdef uint32_t stream_len = <uint32_t>self.pos
        cdef uint64_t total = <uint64_t>self.total
        if not self.prepared:
            raise RuntimeError("write_into needs a prepare() first")
        dst[0] = <char>MAGIC0
        dst[1] = <char>MAGIC1
        dst[2] = <char>VERSION
        dst[3] = 0
        memcpy(dst + 4, &stream_len, 4)
        memcpy(dst + 8, &total, 8)
        memcpy(dst + HEADER, self.buf, self.pos)
        end = HEADER + self.pos
        data_start = _align(end)
        try:
            for i in range(self.noob):
                o = &self.oob[i]
                start = data_start + o.offset
                memset(dst + end, 0, start - end)       # padding never leaks earlier contents of reused memory
                if o.array != NULL:
                    _copy_array_into(<object>o.array, dst + start)
                elif o.nbytes >= (1 << 20):
                    with nogil:
                        memcpy(dst + start, o.src, o.nbytes)
                else:
                    memcpy(dst + start, o.src, o.nbytes)
                end = start + o.nbytes
        finally:
            self._release()
        return 0

    def write_into(self, buffer, Py_ssize_t offset=0):
        """Write the prepared message into `buffer` (any writable buffer) at `offset`; return the size written."""
        cdef Py_buffer view
        cdef Py_ssize_t total = self.total
        if not self.prepared:
            raise RuntimeError("write_into needs a prepare() first")
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
        try:
            if offset < 0 or view.len - offset < total:
                raise ValueError(f"buffer too small: the message needs {total} bytes at offset {offset}, "
                                 f"the buffer holds {view.len}")
            self.write_to(<char*>view.buf + offset)
        finally:
            PyBuffer_Release(&view)
        return total

    cdef bytes encode_c(self, object obj):
        cdef Py_ssize_t n = self.prepare_c(obj)
        cdef bytes out
        try:
            out = PyBytes_FromStringAndSize(NULL, n)
        except BaseException:
            self._release()
            raise
        self.write_to(PyBytes_AS_STRING(out))
        return out

    def encode(self, obj):
        """Encode `obj` into a new bytes object."""
        return self.encode_c(obj)

    # -- the cold paths of the walk (see `_enc` below the class) ---------------------------------------------------

    cdef int _enc_rest(self, object obj, Py_ssize_t depth) except -1:
        # Every type but the common ones `_enc` handles itself.
        cdef type t = type(obj)
        cdef Py_ssize_t n, i
        if t is str:                # not ASCII, or long enough to go out of band
            return self._enc_str_slow(obj, depth)
        if t is int:                # beyond 64 bits
            return self._enc_int_big(obj, depth)
        if t is bytes:
            return self._enc_blob(T_BYTES, T_BYTES_OOB, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj), obj)
        if t is _ndarray:
            return self._enc_array(obj, depth)
        if t is complex:
            _reserve(self, 17)
            _put_u8(self, T_COMPLEX)
            _put_f64(self, PyComplex_RealAsDouble(obj))
            _put_f64(self, PyComplex_ImagAsDouble(obj))
            return 0
        if t is bytearray:
            # out of band, hold a buffer export: a bytearray resized before write_into would free the bytes
            return self._enc_blob(T_BYTEARRAY, T_BYTEARRAY_OOB, PyByteArray_AS_STRING(obj),
                                  PyByteArray_GET_SIZE(obj),
                                  memoryview(obj) if PyByteArray_GET_SIZE(obj) >= OOB_MIN else obj)
        if t is set or t is frozenset:
            _enter(self, obj, depth, K_SET)
            n = len(obj)
            _reserve(self, 5)
            _put_u8(self, T_SET if t is set else T_FROZENSET)
            _put_u32(self, <uint32_t>n)
            i = 0
            for val in obj:     # a set that changes size while iterated raises RuntimeError here
                self.idx[depth] = i
                _enc(self, <PyObject*>val, depth + 1)
                i += 1
            return 0
        return self._enc_other(obj, depth)

    cdef int _too_deep(self, object obj, Py_ssize_t depth) except -1:
        cdef Py_ssize_t d
        seen = {}
        for d in range(depth):
            p = <size_t>self.stack[d]
            first = seen.get(p)
            if first is not None:
                raise SerializationError(
                    f"cannot serialize {_describe(<object>self.stack[<Py_ssize_t>first])} at "
                    f"{_join_path(self._segments(first))}: it contains itself (found again at "
                    f"{_join_path(self._segments(d))}); break the cycle before sending it")
            seen[p] = d
        raise self._fail(obj, depth, f"it is nested more than {MAX_DEPTH} levels deep; flatten it, or "
                                     f"pickle it by hand into bytes")

    def _segments(self, Py_ssize_t depth):
        # The path from the message's root to the object at `depth`, from the containers on the walk's stack.
        cdef Py_ssize_t d, i
        segments = []
        for d in range(depth):
            container = <object>self.stack[d]
            i = self.idx[d]
            kind = self.kinds[d]
            if kind == K_LIST or kind == K_TUPLE:
                segments.append(f"[{i}]")
            elif kind == K_DICT:
                keys = list(container)
                key = keys[i // 2] if i // 2 < len(keys) else "?"
                segments.append(f"[{_short_repr(key)}]" if i % 2 else f"<key {_short_repr(key)}>")
            elif kind == K_SET:
                segments.append(f"<element {i}>")
            elif kind == K_FIELDS:
                names = _field_names(self.registry._by_type.get(type(container)), container)
                segments.append(f".{names[i]}" if i < len(names) else ".?")
            elif kind == K_CUSTOM:
                segments.append(f"<serialized {type(container).__qualname__}>")
            elif kind == K_TZINFO:
                segments.append(".tzinfo")
        return segments

    cdef object _fail(self, object obj, Py_ssize_t depth, str reason):
        return SerializationError(f"cannot serialize {_describe(obj)} at {_join_path(self._segments(depth))}: "
                                  f"{reason}")

    # -- the less common types -----------------------------------------------------------------------------------

    cdef int _enc_str_slow(self, object obj, Py_ssize_t depth) except -1:
        cdef Py_ssize_t n
        cdef const char* p
        cdef unsigned char tag = T_STR
        try:
            p = PyUnicode_AsUTF8AndSize(obj, &n)
        except UnicodeEncodeError:
            obj = PyUnicode_AsEncodedString(obj, "utf-8", "surrogatepass")
            p = PyBytes_AS_STRING(obj)
            n = PyBytes_GET_SIZE(obj)
            tag = T_STR_SP
        if tag == T_STR and n >= OOB_MIN:
            return self._enc_blob(T_STR, T_STR_OOB, p, n, obj)     # the str owns its UTF-8 buffer
        return self._enc_blob(tag, 0, p, n, obj)

    cdef int _enc_int_big(self, object obj, Py_ssize_t depth) except -1:
        nbytes = (obj.bit_length() + 8) // 8
        if nbytes > 0x7FFFFFFF:
            raise self._fail(obj, depth, "the integer is too large")
        data = obj.to_bytes(nbytes, "little", signed=True)
        _reserve(self, 5 + nbytes)
        _put_u8(self, T_BIGINT)
        _put_u32(self, <uint32_t>nbytes)
        memcpy(self.buf + self.pos, PyBytes_AS_STRING(data), nbytes)
        self.pos += nbytes
        return 0

    cdef int _enc_blob(self, unsigned char tag_inline, unsigned char tag_oob, const char* p, Py_ssize_t n,
                       object owner) except -1:
        if tag_oob and n >= OOB_MIN:
            _reserve(self, 17)
            _put_u8(self, tag_oob)
            self._add_oob(p, n, owner, False)
            return 0
        if n > FS_U32_MAX:
            raise SerializationError("cannot serialize a string of more than 4 GiB")
        _reserve(self, 5 + n)
        _put_u8(self, tag_inline)
        _put_u32(self, <uint32_t>n)
        memcpy(self.buf + self.pos, p, n)
        self.pos += n
        return 0

    cdef int _add_oob(self, const char* src, Py_ssize_t nbytes, object owner, bint strided) except -1:
        # Writes (offset, nbytes) into the stream; the caller reserved 16 bytes.
        cdef OOB* grown
        cdef Py_ssize_t offset
        if self.noob == self.oobcap:
            grown = <OOB*>realloc(self.oob, 2 * self.oobcap * sizeof(OOB))
            if grown == NULL:
                raise MemoryError()
            self.oob = grown
            self.oobcap *= 2
        offset = _align(self.data_size)
        self.data_size = offset + nbytes
        self._keep.append(owner)
        self.oob[self.noob].src = src
        self.oob[self.noob].nbytes = nbytes
        self.oob[self.noob].offset = offset
        self.oob[self.noob].array = <PyObject*>owner if strided else NULL
        self.noob += 1
        _put_u64(self, <uint64_t>offset)
        _put_u64(self, <uint64_t>nbytes)
        return 0

    cdef int _enc_dtype(self, object dtype, object obj, Py_ssize_t depth) except -1:
        cdef PyObject* found = PyDict_GetItem(_dtype_desc, dtype)
        cdef object desc
        if found != NULL:
            desc = <object>found
        else:
            try:
                desc = _describe_dtype(dtype)
            except ValueError as exc:
                raise self._fail(obj, depth, str(exc)) from None
        _reserve(self, 1 + PyBytes_GET_SIZE(desc))
        _put_u8(self, <unsigned char>PyBytes_GET_SIZE(desc))
        memcpy(self.buf + self.pos, PyBytes_AS_STRING(desc), PyBytes_GET_SIZE(desc))
        self.pos += PyBytes_GET_SIZE(desc)
        return 0

    cdef int _enc_array(self, object arr, Py_ssize_t depth) except -1:
        cdef cnp.ndarray a = <cnp.ndarray>arr
        cdef int nd = cnp.PyArray_NDIM(a)
        cdef int i
        cdef bint c_order = cnp.PyArray_IS_C_CONTIGUOUS(a)
        cdef bint f_order = (not c_order) and cnp.PyArray_IS_F_CONTIGUOUS(a)
        cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(a)
        if nd > MAX_NDIM:
            raise self._fail(arr, depth, f"arrays of more than {MAX_NDIM} dimensions are not supported")
        _reserve(self, 1)
        _put_u8(self, T_NDARRAY)
        self._enc_dtype(<object><PyObject*>cnp.PyArray_DESCR(a), arr, depth)
        _reserve(self, 2 + 8 * nd + 16)
        _put_u8(self, 1 if f_order else 0)
        _put_u8(self, <unsigned char>nd)
        for i in range(nd):
            _put_u64(self, <uint64_t>dims[i])
        self._add_oob(<const char*>cnp.PyArray_DATA(a), cnp.PyArray_NBYTES(a), arr, not (c_order or f_order))
        return 0

    cdef int _enc_npscalar(self, object obj, Py_ssize_t depth) except -1:
        raw = obj.tobytes() if obj.dtype.itemsize else b""     # an empty str_/bytes_ has no bytes
        _reserve(self, 1)
        _put_u8(self, T_NPSCALAR)
        self._enc_dtype(obj.dtype, obj, depth)
        _reserve(self, 4 + PyBytes_GET_SIZE(raw))
        _put_u32(self, <uint32_t>PyBytes_GET_SIZE(raw))
        memcpy(self.buf + self.pos, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
        self.pos += PyBytes_GET_SIZE(raw)
        return 0

    cdef int _enc_other(self, object obj, Py_ssize_t depth) except -1:
        cdef type t = type(obj)
        cdef PyObject* found = PyDict_GetItem(self.registry._by_type, t)
        cdef Entry entry
        if found != NULL:
            entry = <Entry>found
            if entry.kind == KIND_FIELDS:
                return self._enc_fields(entry, obj, depth)
            if entry.kind == KIND_PICKLE:
                try:
                    data = _cloudpickle.dumps(obj, protocol=5)
                except Exception as exc:
                    raise self._fail(obj, depth, f"cloudpickle cannot pickle it ({type(exc).__name__}: {exc})") \
                        from exc
                _reserve(self, 9)
                _put_u8(self, T_PICKLED)
                _put_u64(self, entry.code)
                return self._enc_blob(T_BYTES, T_BYTES_OOB, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), data)
            _enter(self, obj, depth, K_CUSTOM)
            try:
                value = entry.serializer(obj)
            except Exception as exc:
                raise self._fail(obj, depth, f"the serializer of class {t.__qualname__} raised "
                                             f"{type(exc).__name__}: {exc}") from exc
            _reserve(self, 9)
            _put_u8(self, T_CUSTOM)
            _put_u64(self, entry.code)
            self.idx[depth] = 0
            return _enc(self, <PyObject*>value, depth + 1)
        if t is _datetime or t is _date or t is _timedelta or t is _UUID or t is _Decimal or t is _timezone \
                or t is _time or t is _ZoneInfo:
            return _enc_stdlib(self, obj, t, depth)
        if isinstance(obj, _np_generic):
            return self._enc_npscalar(obj, depth)
        raise self._fail(obj, depth, _unregistered_reason(self.registry, t))

    cdef int _enc_fields(self, Entry entry, object obj, Py_ssize_t depth) except -1:
        cdef Py_ssize_t count_at, ppos = 0, i = 0
        cdef uint32_t count
        cdef PyObject* k
        cdef PyObject* v
        cdef object key, val
        _enter(self, obj, depth, K_FIELDS)
        _reserve(self, 13)
        _put_u8(self, T_OBJECT)
        _put_u64(self, entry.code)
        count_at = self.pos
        self.pos += 4
        if entry.has_dict:
            fields = PyObject_GenericGetDict(obj, NULL)
            while PyDict_Next(fields, &ppos, &k, &v):
                key = <object>k
                val = <object>v
                if type(key) is not str:
                    raise self._fail(obj, depth, f"its __dict__ has a key that is not a str: {_short_repr(key)}")
                self.idx[depth] = i
                _enc(self, <PyObject*>key, depth + 1)
                _enc(self, <PyObject*>val, depth + 1)
                i += 1
        for name in entry.slots:
            val = getattr(obj, name, _MISSING)
            if val is _MISSING:
                continue
            self.idx[depth] = i
            _enc(self, <PyObject*>name, depth + 1)
            _enc(self, <PyObject*>val, depth + 1)
            i += 1
        count = <uint32_t>i
        memcpy(self.buf + count_at, &count, 4)
        return 0


# -- the walk: module-level functions, so that they call each other directly ------------------------------------

cdef inline int _enter(Encoder e, object obj, Py_ssize_t depth, int kind) except -1:
    # Note a container on the path (for error messages), refusing depth past the limit.
    if depth >= MAX_DEPTH:
        return e._too_deep(obj, depth)
    e.stack[depth] = <PyObject*>obj
    e.kinds[depth] = kind
    return 0


cdef int _enc(Encoder e, PyObject* o, Py_ssize_t depth) except -1:
    # Exact types, most frequent first. `o` is borrowed: the leaves run no user code, so they are written from the
    # pointer; a container or any other object is passed on as a reference, held for as long as it is walked (a
    # serializer inside it may drop it from its parent).
    cdef PyTypeObject* t = Py_TYPE(<object>o)
    cdef Py_ssize_t n
    cdef long long v
    cdef int overflow = 0
    if t == &PyUnicode_Type:
        if PyUnicode_IS_COMPACT_ASCII(<object>o):
            n = PyUnicode_GET_LENGTH(<object>o)
            if n < OOB_MIN:
                return _put_str(e, PyUnicode_DATA(<object>o), n)
        return _enc_held(e, o, depth)
    if t == &PyLong_Type:
        if not fs_long_small(<object>o, &v):
            v = PyLong_AsLongLongAndOverflow(<object>o, &overflow)
            if overflow:
                return _enc_held(e, o, depth)
        return _put_int(e, v)
    if t == &PyFloat_Type:
        return _put_float(e, PyFloat_AS_DOUBLE(<object>o))
    if t == &PyDict_Type:
        return _enc_dict(e, o, depth)
    if t == &PyList_Type:
        return _enc_list(e, o, depth)
    if o == <PyObject*>Py_None:
        return _put_byte(e, T_NONE)
    if t == &PyBool_Type:
        return _put_byte(e, T_TRUE if o == <PyObject*>Py_True else T_FALSE)
    if t == &PyTuple_Type:
        return _enc_tuple(e, o, depth)
    return _enc_held(e, o, depth)


cdef int _enc_held(Encoder e, PyObject* o, Py_ssize_t depth) except -1:
    cdef object obj = <object>o      # held while it is encoded
    return e._enc_rest(obj, depth)


cdef int _enc_dict(Encoder e, PyObject* o, Py_ssize_t depth) except -1:
    cdef object obj = <object>o      # held while it is walked
    cdef Py_ssize_t n = PyDict_Size(obj), ppos = 0, i = 0
    cdef PyObject* k
    cdef PyObject* v
    cdef object key, val
    _enter(e, obj, depth, K_DICT)
    _put_head(e, T_DICT, <uint32_t>n)
    while PyDict_Next(obj, &ppos, &k, &v):
        if i >= n:
            break
        e.idx[depth] = 2 * i
        if Py_TYPE(<object>k) == &PyUnicode_Type and PyUnicode_IS_COMPACT_ASCII(<object>k) \
                and PyUnicode_GET_LENGTH(<object>k) < OOB_MIN:
            _put_str(e, PyUnicode_DATA(<object>k), PyUnicode_GET_LENGTH(<object>k))
            e.idx[depth] = 2 * i + 1
            _enc(e, v, depth + 1)
        else:
            # encoding this key may run user code (a serializer) that changes the dict: hold the pair
            key = <object>k
            val = <object>v
            _enc(e, k, depth + 1)
            e.idx[depth] = 2 * i + 1
            _enc(e, v, depth + 1)
        i += 1
    if i != n or PyDict_Size(obj) != n:
        raise e._fail(obj, depth, "the dict changed size while it was being serialized")
    return 0


cdef int _enc_list(Encoder e, PyObject* o, Py_ssize_t depth) except -1:
    cdef object obj = <object>o      # held while it is walked
    cdef Py_ssize_t n = PyList_GET_SIZE(obj), i
    _enter(e, obj, depth, K_LIST)
    if n > FS_U32_MAX:
        raise e._fail(obj, depth, "more than 2**32 items; split it")
    _put_head(e, T_LIST, <uint32_t>n)
    for i in range(n):
        if i >= PyList_GET_SIZE(obj):       # a serializer below changed the list
            raise e._fail(obj, depth, "the list changed size while it was being serialized")
        e.idx[depth] = i
        _enc(e, PyList_GET_ITEM(obj, i), depth + 1)
    if PyList_GET_SIZE(obj) != n:
        raise e._fail(obj, depth, "the list changed size while it was being serialized")
    return 0


cdef int _enc_tuple(Encoder e, PyObject* o, Py_ssize_t depth) except -1:
    cdef object obj = <object>o      # held while it is walked
    cdef Py_ssize_t n = PyTuple_GET_SIZE(obj), i
    _enter(e, obj, depth, K_TUPLE)
    if n > FS_U32_MAX:
        raise e._fail(obj, depth, "more than 2**32 items; split it")
    _put_head(e, T_TUPLE, <uint32_t>n)
    for i in range(n):
        e.idx[depth] = i
        _enc(e, PyTuple_GET_ITEM(obj, i), depth + 1)
    return 0


cdef inline void _put_i32x3(char* p, int32_t a, int32_t b, int32_t c) noexcept:
    memcpy(p, &a, 4)
    memcpy(p + 4, &b, 4)
    memcpy(p + 8, &c, 4)


cdef int _enc_stdlib(Encoder e, object obj, type t, Py_ssize_t depth) except -1:
    # The standard library's value types: fixed-width fields, and a nested value for a tzinfo, a name or a key.
    cdef char* p
    cdef uint16_t year
    cdef uint32_t us
    if t is _datetime:
        p = _room(e, 13)
        year = <uint16_t>datetime_year(obj)
        us = <uint32_t>datetime_microsecond(obj)
        p[0] = <char>T_DATETIME
        memcpy(p + 1, &year, 2)
        p[3] = <char>datetime_month(obj)
        p[4] = <char>datetime_day(obj)
        p[5] = <char>datetime_hour(obj)
        p[6] = <char>datetime_minute(obj)
        p[7] = <char>datetime_second(obj)
        p[8] = <char>datetime_fold(obj)
        memcpy(p + 9, &us, 4)
        e.pos += 13
        return _enc_tzinfo(e, obj, datetime_tzinfo(obj), depth)
    if t is _date:
        p = _room(e, 5)
        year = <uint16_t>date_year(obj)
        p[0] = <char>T_DATE
        memcpy(p + 1, &year, 2)
        p[3] = <char>date_month(obj)
        p[4] = <char>date_day(obj)
        e.pos += 5
        return 0
    if t is _timedelta:
        p = _room(e, 13)
        p[0] = <char>T_TIMEDELTA
        _put_i32x3(p + 1, timedelta_days(obj), timedelta_seconds(obj), timedelta_microseconds(obj))
        e.pos += 13
        return 0
    if t is _time:
        p = _room(e, 9)
        us = <uint32_t>time_microsecond(obj)
        p[0] = <char>T_TIME
        p[1] = <char>time_hour(obj)
        p[2] = <char>time_minute(obj)
        p[3] = <char>time_second(obj)
        p[4] = <char>time_fold(obj)
        memcpy(p + 5, &us, 4)
        e.pos += 9
        return _enc_tzinfo(e, obj, time_tzinfo(obj), depth)
    if t is _UUID:
        p = _room(e, 17)
        p[0] = <char>T_UUID
        memcpy(p + 1, PyBytes_AS_STRING(obj.bytes), 16)
        e.pos += 17
        return 0
    if t is _Decimal:
        _put_byte(e, T_DECIMAL)
        return _put_text(e, str(obj))
    if t is _timezone:
        args = obj.__getinitargs__()        # (offset,) or (offset, name): the name only when one was given
        offset = args[0]
        p = _room(e, 13)
        p[0] = <char>T_TIMEZONE
        _put_i32x3(p + 1, timedelta_days(offset), timedelta_seconds(offset), timedelta_microseconds(offset))
        e.pos += 13
        if len(args) < 2:
            return _put_byte(e, T_NONE)
        return _put_text(e, args[1])
    key = obj.key                           # a ZoneInfo
    if key is None:
        raise e._fail(obj, depth, "a ZoneInfo made from a file (ZoneInfo.from_file) has no key to travel by; use "
                                  "ZoneInfo(key), or a fixed datetime.timezone")
    _put_byte(e, T_ZONEINFO)
    return _put_text(e, key)


cdef int _put_text(Encoder e, str text) except -1:
    # A name, a key or a number's text: a T_STR inline whatever its length (never long), as `_dec_text` reads it;
    # lone surrogates (a timezone's name may hold one) pass, as they do in a str value.
    cdef bytes raw = PyUnicode_AsEncodedString(text, "utf-8", "surrogatepass")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    _put_head(e, T_STR, <uint32_t>n)
    fs_copy(_room(e, n), PyBytes_AS_STRING(raw), n)
    e.pos += n
    return 0


cdef int _enc_tzinfo(Encoder e, object obj, object tz, Py_ssize_t depth) except -1:
    if tz is None:
        return _put_byte(e, T_NONE)
    _enter(e, obj, depth, K_TZINFO)
    e.idx[depth] = 0
    return _enc(e, <PyObject*>tz, depth + 1)


def _field_names(entry, obj):
    names = []
    if entry is None:
        return names
    if entry.has_dict:
        names.extend(obj.__dict__)
    names.extend(name for name in entry.slots if hasattr(obj, name))
    return names


def _cannot_travel(cls):
    """Why an instance of `cls` can never be sent, registered or not (None when a registration would do): these
    belong to the process that holds them, so pickling them fails or makes nothing usable elsewhere."""
    import io, socket, threading, types
    if cls is object:
        return ("a bare object() holds nothing, and is only ever itself: a copy would not be it; send None, a "
                "string, or an Enum member instead")
    if issubclass(cls, (types.GeneratorType, types.AsyncGeneratorType)):
        return "a generator runs in this process; send a list of what it yields (list(gen)) instead"
    if issubclass(cls, types.CoroutineType):
        return "a coroutine runs in this process; await it here and send its result instead"
    if issubclass(cls, memoryview):
        return "a memoryview points into this process's memory; send bytes(view), or a numpy array, instead"
    if issubclass(cls, (io.FileIO, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.BufferedRWPair,
                        io.TextIOWrapper, socket.socket, type(threading.Lock()), type(threading.RLock()))):
        return ("it is an open file, a socket or a lock of this process; send what it stands for (a path, an "
                "address, the data) instead")
    return None


def _unregistered_reason(Registry registry, cls):
    why = _cannot_travel(cls)
    if why is not None:
        return f"{cls.__qualname__} objects cannot be sent: {why}"
    name = _type_name_for_fix(cls)
    for base in cls.__mro__[1:]:
        if base in registry._by_type:
            fix = f"actors.register_class({name})" if _fields_registrable(cls) else \
                f"actors.register_class({name}, pickle=True)"
            return (f"class {cls.__qualname__} is not registered (its base class {base.__qualname__} is, but a "
                    f"subclass is never encoded as its base); call {fix}")
    if _fields_registrable(cls):
        return f"class {cls.__qualname__} is not registered; call actors.register_class({name})"
    return f"class {cls.__qualname__} is not registered; call actors.register_class({name}, pickle=True)"


cdef int _copy_array_into(object arr, char* dst) except -1:
    # A strided (non-contiguous) array is written C-contiguous, element by element, by numpy itself.
    cdef cnp.ndarray src = <cnp.ndarray>arr
    cdef PyObject* descr = <PyObject*>cnp.PyArray_DESCR(src)
    Py_INCREF(<object>descr)       # PyArray_NewFromDescr steals it
    dest = PyArray_NewFromDescr(<PyObject*>_ndarray, descr, cnp.PyArray_NDIM(src), cnp.PyArray_DIMS(src), NULL,
                                dst, cnp.NPY_ARRAY_CARRAY, NULL)
    cnp.PyArray_CopyInto(<cnp.ndarray>dest, src)
    return 0
