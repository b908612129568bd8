# The decoder: every read is bounds-checked against the stream, every count against the bytes left, so truncated,
# corrupted or forged input raises DecodeError. Arrays come back as read-only views into the source buffer, which
# they keep alive. The only code it runs is that of classes registered with pickle=True or a deserializer (and the
# __new__ of classes registered by fields).


cdef enum:
    KEY_CACHE = 2048        # slots, a power of two
    KEY_MAX = 40            # longest key cached

# Dict keys and field names repeat from message to message: a decoded short ASCII key is kept and handed out again,
# which saves allocating it and hashing it on insert. A slot keeps the key's first and last 8 bytes as words (zero
# padded below 8 bytes), so a lookup hashes and compares two words; only keys longer than 16 bytes compare the
# bytes between them too.
cdef struct KeySlot:
    PyObject* key
    Py_ssize_t n
    uint64_t head
    uint64_t tail

cdef KeySlot _key_cache[KEY_CACHE]


cdef inline object _key(const char* p, Py_ssize_t n, const char* end):
    cdef uint64_t head = 0, tail = 0, h
    cdef Py_ssize_t i
    cdef KeySlot* slot
    if n >= 8:
        memcpy(&head, p, 8)
        memcpy(&tail, p + n - 8, 8)
    elif p + 8 <= end:          # one load, the bytes past the key masked off
        memcpy(&head, p, 8)
        head &= (<uint64_t>1 << (8 * n)) - 1
    else:
        for i in range(n):
            head |= (<uint64_t><unsigned char>p[i]) << (8 * i)
    h = (head ^ (<uint64_t>n << 56)) * 0x9E3779B97F4A7C15ULL
    h = (h ^ tail ^ (h >> 29)) * 0xFF51AFD7ED558CCDULL
    h ^= h >> 32
    slot = &_key_cache[h & (KEY_CACHE - 1)]
    if slot.key != NULL and slot.n == n and slot.head == head and slot.tail == tail \
            and (n <= 16 or memcmp(<const char*>PyUnicode_DATA(<object>slot.key) + 8, p + 8, n - 16) == 0):
        return <object>slot.key
    key = _str(p, n)
    if PyUnicode_IS_COMPACT_ASCII(key):
        PyObject_Hash(key)
        Py_INCREF(key)
        Py_XDECREF(slot.key)
        slot.key = <PyObject*>key
        slot.n = n
        slot.head = head
        slot.tail = tail
    return key


cdef inline const char* _take(Decoder d, Py_ssize_t n) except NULL:
    cdef const char* p
    if n < 0 or n > d.end - d.pos:
        return _truncated(d, n)
    p = d.base + d.pos
    d.pos += n
    return p


cdef const char* _truncated(Decoder d, Py_ssize_t n) except NULL:
    # Out of line, so that the callers of `_take` stay small.
    raise d._error(f"truncated data (needs {n} bytes, {d.end - d.pos} left)")


cdef class Decoder:
    """Decodes messages. Reused from message to message; decodes one message at a time."""

    def __cinit__(self, Registry registry=None):
        self.registry = registry if registry is not None else _default_registry
        self.idx = <Py_ssize_t*>malloc((MAX_DEPTH + 1) * sizeof(Py_ssize_t))
        self.kinds = <int*>malloc((MAX_DEPTH + 1) * sizeof(int))
        if not (self.idx and self.kinds):
            raise MemoryError()
        self.keys = <PyObject**>malloc((MAX_DEPTH + 1) * sizeof(PyObject*))
        if not self.keys:
            raise MemoryError()

    def __dealloc__(self):
        free(self.idx)
        free(self.kinds)
        free(self.keys)

    def decode(self, buffer):
        """Decode the message in `buffer` (any object with the buffer protocol)."""
        cdef Py_buffer view
        try:
            PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        except BufferError as exc:
            raise DecodeError(f"cannot decode: the buffer is not contiguous ({exc}); pass bytes(buffer)") from None
        except TypeError:
            raise TypeError(f"cannot decode a {type(buffer).__qualname__}: it does not support the buffer protocol; "
                            f"pass bytes, bytearray, memoryview or another buffer") from None
        try:
            # A read-only exporter can be the arrays' base as it is; a writable one is wrapped read-only, so that no
            # decoded array can be made writable again.
            # Only bytes is immutable all the way down; any other exporter (a read-only view of a writable array,
            # say) is wrapped read-only, so that no decoded array can be made writable again.
            self.owner = buffer
            return self.decode_ptr(<const char*>view.buf, view.len, buffer if type(buffer) is bytes else None)
        finally:
            self.owner = None
            PyBuffer_Release(&view)

    cdef object decode_ptr(self, const char* p, Py_ssize_t n, object keepalive):
        # `keepalive` becomes the base of decoded arrays; None means "make a read-only memoryview of self.owner".
        cdef uint32_t stream_len
        cdef uint64_t total
        self.base = p
        self.pos = 0
        self.end = n
        self.cur = 0
        self.keepalive = keepalive
        self.live = True
        try:
            if n < HEADER:
                raise self._error(f"truncated message: {n} bytes, shorter than the {HEADER}-byte header")
            if <unsigned char>p[0] != MAGIC0 or <unsigned char>p[1] != MAGIC1:
                raise self._error("not an encoded message (bad magic bytes)")
            if <unsigned char>p[2] != VERSION:
                raise self._error(f"unsupported format version {<unsigned char>p[2]} (this decoder reads {VERSION})")
            memcpy(&stream_len, p + 4, 4)
            memcpy(&total, p + 8, 8)
            if total > <uint64_t>n:
                raise self._error(f"truncated message: the header says {total} bytes, the buffer holds {n}")
            if HEADER + <uint64_t>stream_len > total:
                raise self._error("corrupted header: the stream is longer than the message")
            self.total = <Py_ssize_t>total
            self.end = HEADER + stream_len
            self.data_start = _align(self.end)
            self.pos = HEADER
            try:
                obj = _dec(self, 0)
            except DecodeError:
                raise
            except Exception as exc:        # incl. RecursionError and MemoryError raised by what the input holds
                # the stack has unwound: the borrowed keys on the path are gone, paths use positions instead
                self.live = False
                raise self._error(f"{type(exc).__name__}: {exc}") from exc
            if self.pos != self.end:
                self.cur = 0
                raise self._error(f"{self.end - self.pos} bytes of trailing data after the value")
            return obj
        finally:
            self.keepalive = None

    cdef object _error(self, str what):
        return DecodeError(f"cannot decode: {what} at {_join_path(self._segments(self.cur))} "
                           f"(byte {self.pos} of {self.end})")

    def _segments(self, Py_ssize_t depth):
        cdef Py_ssize_t d, i
        segments = []
        for d in range(depth):
            i = self.idx[d]
            kind = self.kinds[d]
            if kind == K_LIST or kind == K_TUPLE:
                segments.append(f"[{i}]")
            elif kind == K_DICT:
                if i % 2 and self.live:
                    segments.append(f"[{_short_repr(<object>self.keys[d])}]")
                else:
                    segments.append(f"<key {i // 2}>" if i % 2 == 0 else f"<value {i // 2}>")
            elif kind == K_SET:
                segments.append(f"<element {i}>")
            elif kind == K_FIELDS:
                segments.append(f".{<object>self.keys[d]}" if i % 2 and self.live else f"<field {i // 2}>")
            elif kind == K_CUSTOM:
                segments.append("<serialized>")
            elif kind == K_TZINFO:
                segments.append(".tzinfo")
        return segments

    cdef object _dec_rest(self, unsigned char tag, Py_ssize_t depth):
        # Every tag but the common ones `_dec` handles itself; the tag's byte is already taken.
        cdef uint32_t n32
        cdef uint64_t u64, off
        cdef double f, g
        cdef Py_ssize_t i, n
        cdef const char* p
        cdef object val, out
        if tag == T_SET or tag == T_FROZENSET:
            n = _count(self, depth, 1)
            self.kinds[depth] = K_SET
            out = set()
            for i in range(n):
                self.idx[depth] = i
                val = _dec(self, depth + 1)
                self.cur = depth + 1
                PySet_Add(out, val)
            return out if tag == T_SET else frozenset(out)
        if tag == T_NDARRAY:
            return self._dec_array(depth)
        if tag == T_BYTES or tag == T_BYTEARRAY or tag == T_STR_SP:
            memcpy(&n32, _take(self, 4), 4)
            p = _take(self, n32)
            if tag == T_BYTES:
                return PyBytes_FromStringAndSize(p, n32)
            if tag == T_BYTEARRAY:
                return PyByteArray_FromStringAndSize(p, n32)
            return PyUnicode_DecodeUTF8(p, n32, "surrogatepass")
        if tag == T_BYTES_OOB or tag == T_BYTEARRAY_OOB or tag == T_STR_OOB:
            memcpy(&off, _take(self, 8), 8)
            memcpy(&u64, _take(self, 8), 8)
            p = self._oob(off, u64)
            if tag == T_BYTES_OOB:
                return PyBytes_FromStringAndSize(p, <Py_ssize_t>u64)
            if tag == T_BYTEARRAY_OOB:
                return PyByteArray_FromStringAndSize(p, <Py_ssize_t>u64)
            return PyUnicode_DecodeUTF8(p, <Py_ssize_t>u64, NULL)
        if tag == T_COMPLEX:
            memcpy(&f, _take(self, 8), 8)
            memcpy(&g, _take(self, 8), 8)
            return PyComplex_FromDoubles(f, g)
        if tag == T_BIGINT:
            memcpy(&n32, _take(self, 4), 4)
            p = _take(self, n32)
            return int.from_bytes(PyBytes_FromStringAndSize(p, n32), "little", signed=True)
        if tag == T_NPSCALAR:
            return self._dec_npscalar(depth)
        if tag == T_PICKLED:
            return self._dec_registered(tag, depth)
        if tag == T_OBJECT or tag == T_CUSTOM:
            if depth >= MAX_DEPTH:
                raise self._error(f"nesting deeper than {MAX_DEPTH} levels")
            return self._dec_registered(tag, depth)
        if T_DATETIME <= tag <= T_DECIMAL:
            return _dec_stdlib(self, tag, depth)
        self.pos -= 1
        raise self._error(f"unknown type tag 0x{tag:02x}")

    cdef const char* _oob(self, uint64_t off, uint64_t n) except NULL:
        if off > <uint64_t>self.total or n > <uint64_t>self.total \
                or <uint64_t>self.data_start + off + n > <uint64_t>self.total:
            raise self._error(f"out-of-band data (offset {off}, {n} bytes) lies outside the message")
        if (self.data_start + <Py_ssize_t>off) % ALIGN:
            raise self._error(f"misaligned out-of-band data (offset {off})")
        return self.base + self.data_start + <Py_ssize_t>off

    cdef object _dec_dtype(self):
        cdef unsigned char n = <unsigned char>_take(self, 1)[0]
        cdef const char* p = _take(self, n)
        desc = PyBytes_FromStringAndSize(p, n)
        try:
            return _dtype_of(desc)
        except (ValueError, TypeError):
            raise self._error(f"invalid dtype descriptor {desc!r}") from None

    cdef object _dec_array(self, Py_ssize_t depth):
        cdef cnp.npy_intp dims[MAX_NDIM]
        cdef unsigned char flags, nd
        cdef uint64_t dim, count = 1, off, nbytes
        cdef int i
        cdef const char* data
        dtype = self._dec_dtype()
        flags = <unsigned char>_take(self, 1)[0]
        nd = <unsigned char>_take(self, 1)[0]
        if nd > MAX_NDIM or flags > 1:
            raise self._error(f"corrupted array header (ndim {nd}, flags {flags})")
        for i in range(nd):
            memcpy(&dim, _take(self, 8), 8)
            if dim > (<uint64_t>1 << 62):
                raise self._error(f"corrupted array dimension {dim}")
            dims[i] = <cnp.npy_intp>dim
            if dim:
                if count > ((<uint64_t>1 << 62) // dim):
                    raise self._error("corrupted array shape (too many elements)")
                count *= dim
        memcpy(&off, _take(self, 8), 8)
        memcpy(&nbytes, _take(self, 8), 8)
        for i in range(nd):
            if dims[i] == 0:
                count = 0
        if dtype.itemsize == 0:
            if nbytes != 0:
                raise self._error("corrupted array: a zero-size dtype with data")
        elif count > ((<uint64_t>1 << 62) // <uint64_t>dtype.itemsize) or count * <uint64_t>dtype.itemsize != nbytes:
            raise self._error(f"corrupted array: shape and dtype {dtype} need {count * dtype.itemsize} bytes, "
                              f"the message says {nbytes}")
        data = self._oob(off, nbytes)
        if self.keepalive is None:
            self.keepalive = memoryview(self.owner).toreadonly()
        Py_INCREF(dtype)      # PyArray_NewFromDescr steals it
        arr = PyArray_NewFromDescr(<PyObject*>_ndarray, <PyObject*>dtype, nd, dims, NULL, <void*>data,
                                   cnp.NPY_ARRAY_F_CONTIGUOUS if flags else cnp.NPY_ARRAY_C_CONTIGUOUS, NULL)
        Py_INCREF(self.keepalive)     # PyArray_SetBaseObject steals it
        PyArray_SetBaseObject(<PyObject*>arr, <PyObject*>self.keepalive)
        cnp.PyArray_CLEARFLAGS(<cnp.ndarray>arr, cnp.NPY_ARRAY_WRITEABLE)
        return arr

    cdef object _dec_npscalar(self, Py_ssize_t depth):
        cdef uint32_t n
        dtype = self._dec_dtype()
        memcpy(&n, _take(self, 4), 4)
        cdef const char* p = _take(self, n)
        if n != dtype.itemsize:
            raise self._error(f"corrupted numpy scalar ({n} bytes for dtype {dtype})")
        if n == 0:
            return dtype.type()
        return _np.frombuffer(PyBytes_FromStringAndSize(p, n), dtype=dtype)[0]

    cdef object _dec_registered(self, unsigned char tag, Py_ssize_t depth):
        cdef uint64_t code
        cdef uint32_t n32
        cdef Py_ssize_t i
        cdef Entry entry
        memcpy(&code, _take(self, 8), 8)
        found = self.registry._by_code.get(code)
        if found is None:
            err = self._error(f"unknown class code {code:#018x}: the sender registered a class this process has "
                              f"not; register it here too (actors.register_class)")
            raise UnknownClassError(str(err), code)
        entry = <Entry>found
        expected = KIND_FIELDS if tag == T_OBJECT else (KIND_PICKLE if tag == T_PICKLED else KIND_CUSTOM)
        if entry.kind != expected:
            raise self._error(f"class {_qualified(entry.cls)} arrived encoded differently from how it is "
                              f"registered here (mode {entry.mode}); register it the same way in every process")
        if tag == T_CUSTOM:
            self.kinds[depth] = K_CUSTOM
            self.idx[depth] = 0
            value = _dec(self, depth + 1)
            self.cur = depth
            try:
                return entry.deserializer(value)
            except DecodeError:
                raise
            except Exception as exc:
                # caught here, while the path's keys are still alive, to name the class whose code failed
                raise self._error(f"the deserializer of class {_qualified(entry.cls)} raised "
                                  f"{type(exc).__name__}: {exc}") from exc
        if tag == T_PICKLED:
            # the payload is a bytes value, read here directly: no nesting, so no depth to exhaust
            self.kinds[depth] = K_CUSTOM
            self.idx[depth] = 0
            self.cur = depth + 1
            if self.pos >= self.end or (<unsigned char>self.base[self.pos] != T_BYTES
                                        and <unsigned char>self.base[self.pos] != T_BYTES_OOB):
                raise self._error("corrupted pickled value")
            data = _dec(self, depth + 1)
            self.cur = depth
            try:
                obj = _pickle_loads(data)
            except Exception as exc:
                raise self._error(f"unpickling a pickled {_qualified(entry.cls)} raised "
                                  f"{type(exc).__name__}: {exc}") from exc
            if type(obj) is not entry.cls and wire_code(type(obj)) != entry.code:
                raise self._error(f"a pickled {_qualified(entry.cls)} decoded to a {type(obj).__qualname__}")
            return obj
        memcpy(&n32, _take(self, 4), 4)
        if n32 > (self.end - self.pos) // 2:
            raise self._error(f"corrupted field count {n32}")
        cls = entry.cls
        obj = cls.__new__(cls)
        fields = PyObject_GenericGetDict(obj, NULL) if entry.has_dict else None
        self.kinds[depth] = K_FIELDS
        for i in range(n32):
            self.idx[depth] = 2 * i
            name = _dec_key(self, depth + 1)
            if type(name) is not str:
                raise self._error(f"corrupted field name {_short_repr(name)}")
            self.keys[depth] = <PyObject*>name
            self.idx[depth] = 2 * i + 1
            val = _dec(self, depth + 1)
            self.cur = depth + 1
            if name in entry.slots:
                PyObject_GenericSetAttr(obj, name, val)
            elif fields is not None:
                PyDict_SetItem(fields, name, val)
            else:
                raise self._error(f"class {_qualified(cls)} has no field {name!r}")
        return obj


# -- the walk: module-level functions, so that they call each other directly ------------------------------------

cdef inline object _str(const char* p, Py_ssize_t n):
    if fs_is_ascii(p, n):
        return fs_ascii_str(p, n)
    return PyUnicode_DecodeUTF8(p, n, NULL)


cdef inline Py_ssize_t _count(Decoder d, Py_ssize_t depth, Py_ssize_t min_item) except -1:
    # A container's item count, refused when the nesting is too deep or when it is more than the bytes left could
    # hold (every item takes at least `min_item` bytes): nothing is allocated for a forged count.
    cdef uint32_t n32
    if depth >= MAX_DEPTH:
        raise d._error(f"nesting deeper than {MAX_DEPTH} levels")
    memcpy(&n32, _take(d, 4), 4)
    if <uint64_t>n32 * <uint64_t>min_item > <uint64_t>(d.end - d.pos):
        raise d._error(f"corrupted count {n32} (only {d.end - d.pos} bytes left)")
    return n32


cdef inline void _get_i32x3(const char* p, int32_t* a, int32_t* b, int32_t* c) noexcept:
    memcpy(a, p, 4)
    memcpy(b, p + 4, 4)
    memcpy(c, p + 8, 4)


cdef object _dec_stdlib(Decoder d, unsigned char tag, Py_ssize_t depth):
    # The standard library's value types (`_enc_stdlib`). Their constructors check every field: a forged one (a
    # month of 13, an offset of a day) raises, and the decoder reports it with its place in the message.
    cdef const char* p
    cdef uint16_t year
    cdef uint32_t us
    cdef int32_t days, seconds, micro
    cdef unsigned char f[6]
    if tag == T_DATETIME:
        p = _take(d, 12)
        memcpy(&year, p, 2)
        memcpy(&us, p + 8, 4)
        memcpy(f, p + 2, 6)             # month, day, hour, minute, second, fold: read before the tzinfo is
        tz = _dec_tzinfo(d, depth)
        return datetime_new(year, f[0], f[1], f[2], f[3], f[4], <int>min(us, 1000000), tz, f[5])
    if tag == T_DATE:
        p = _take(d, 4)
        memcpy(&year, p, 2)
        return date_new(year, <unsigned char>p[2], <unsigned char>p[3])
    if tag == T_TIMEDELTA:
        _get_i32x3(_take(d, 12), &days, &seconds, &micro)
        return timedelta_new(days, seconds, micro)
    if tag == T_TIME:
        p = _take(d, 8)
        memcpy(&us, p + 4, 4)
        memcpy(f, p, 4)                 # hour, minute, second, fold
        tz = _dec_tzinfo(d, depth)
        return time_new(f[0], f[1], f[2], <int>min(us, 1000000), tz, f[3])
    if tag == T_UUID:
        return _UUID(bytes=PyBytes_FromStringAndSize(_take(d, 16), 16))
    if tag == T_DECIMAL:
        return _DECIMAL_EXACT.create_decimal(_dec_text(d, False))
    if tag == T_TIMEZONE:
        _get_i32x3(_take(d, 12), &days, &seconds, &micro)
        offset = timedelta_new(days, seconds, micro)
        name = _dec_text(d, True)
        return _timezone(offset) if name is None else _timezone(offset, name)
    return _ZoneInfo(_dec_text(d, False))      # T_ZONEINFO


cdef object _dec_text(Decoder d, bint or_none):
    # What `_put_text` wrote: a T_STR (or T_NONE where `or_none`).
    cdef uint32_t n32
    cdef unsigned char tag = <unsigned char>_take(d, 1)[0]
    if tag == T_NONE and or_none:
        return None
    if tag != T_STR:
        d.pos -= 1
        raise d._error(f"expected a str (tag 0x{T_STR:02x}), found tag 0x{tag:02x}")
    memcpy(&n32, _take(d, 4), 4)
    return PyUnicode_DecodeUTF8(_take(d, n32), n32, "surrogatepass")


cdef object _dec_tzinfo(Decoder d, Py_ssize_t depth):
    if d.pos < d.end and <unsigned char>d.base[d.pos] == T_NONE:
        d.pos += 1
        return None
    if depth >= MAX_DEPTH:
        raise d._error(f"nesting deeper than {MAX_DEPTH} levels")
    d.kinds[depth] = K_TZINFO
    d.idx[depth] = 0
    tz = _dec(d, depth + 1)
    d.cur = depth                   # the datetime's own checks (of its tzinfo too) fail at the datetime
    return tz


cdef object _dec(Decoder d, Py_ssize_t depth):
    # The common tags, most frequent first (a switch); the rest in `Decoder._dec_rest`.
    cdef unsigned char tag
    cdef uint32_t n32
    cdef uint64_t u64
    cdef double f
    cdef const char* p
    d.cur = depth
    tag = <unsigned char>_take(d, 1)[0]
    if tag == T_STR:
        memcpy(&n32, _take(d, 4), 4)
        p = _take(d, n32)
        return _str(p, n32)
    elif tag == T_INT8:
        return <long>(<signed char>_take(d, 1)[0])
    elif tag == T_FLOAT:
        memcpy(&f, _take(d, 8), 8)
        return PyFloat_FromDouble(f)
    elif tag == T_DICT:
        return _dec_dict(d, depth)
    elif tag == T_LIST:
        return _dec_list(d, depth)
    elif tag == T_NONE:
        return None
    elif tag == T_TRUE:
        return True
    elif tag == T_FALSE:
        return False
    elif tag == T_INT64:
        memcpy(&u64, _take(d, 8), 8)
        return <long long>u64
    elif tag == T_TUPLE:
        return _dec_tuple(d, depth)
    return d._dec_rest(tag, depth)


cdef object _dec_dict(Decoder d, Py_ssize_t depth):
    cdef Py_ssize_t n = _count(d, depth, 2), i
    cdef object key, val
    cdef object out = _PyDict_NewPresized(n)
    d.kinds[depth] = K_DICT
    for i in range(n):
        d.idx[depth] = 2 * i
        key = _dec_key(d, depth + 1)
        d.keys[depth] = <PyObject*>key     # borrowed: alive while its value decodes
        d.idx[depth] = 2 * i + 1
        val = _dec(d, depth + 1)
        d.idx[depth] = 2 * i         # an unhashable key fails here: the path names the key
        d.cur = depth + 1
        PyDict_SetItem(out, key, val)
    return out


cdef object _dec_list(Decoder d, Py_ssize_t depth):
    cdef Py_ssize_t n = _count(d, depth, 1), i
    cdef object val
    cdef object out = PyList_New(n)
    d.kinds[depth] = K_LIST
    for i in range(n):
        d.idx[depth] = i
        val = _dec(d, depth + 1)
        Py_INCREF(val)
        PyList_SET_ITEM(out, i, val)
    return out


cdef object _dec_tuple(Decoder d, Py_ssize_t depth):
    cdef Py_ssize_t n = _count(d, depth, 1), i
    cdef object val
    cdef object out = PyTuple_New(n)
    d.kinds[depth] = K_TUPLE
    for i in range(n):
        d.idx[depth] = i
        val = _dec(d, depth + 1)
        Py_INCREF(val)
        PyTuple_SET_ITEM(out, i, val)
    return out


cdef inline object _dec_key(Decoder d, Py_ssize_t depth):
    # A dict key or field name: short str keys come from the key cache.
    cdef uint32_t n32
    cdef const char* p
    if d.pos + 5 <= d.end and <unsigned char>d.base[d.pos] == T_STR:
        memcpy(&n32, d.base + d.pos + 1, 4)
        if n32 <= KEY_MAX and n32 <= d.end - d.pos - 5:
            p = d.base + d.pos + 5
            d.pos += 5 + n32
            return _key(p, n32, d.base + d.end)
    return _dec(d, depth)
