# The wire format. All integers little-endian.
#
#   header (16 bytes): magic b"\xfa\x5e", version u8, flags u8, stream length u32, total length u64
#   stream: one tagged value (containers nest), starting at byte 16
#   data region: from align64(16 + stream length); out-of-band payloads (array data, large bytes and str), each
#                64-byte aligned; the stream refers to them by (offset from the data region start, length)
#
# Every length and count in the stream is checked against the bytes that remain before it is used, so a forged
# count cannot make the decoder allocate more than the message could hold.

cdef enum:
    HEADER = 16
    ALIGN = 64
    VERSION = 1
    MAGIC0 = 0xFA
    MAGIC1 = 0x5E
    # Nesting limit, for encoder and decoder alike (as Python's own recursion limit). Deeper data, and every cycle,
    # which reaches it, gets a clear error instead of exhausting the C stack: the walk recurses in C, and 1,000
    # levels, even of registered objects (three C frames a level), fit in a thread with a 1 MiB stack.
    MAX_DEPTH = 1000
    MAX_NDIM = 64
    # bytes and str at least this long travel out of band: copied once, straight into the destination.
    OOB_MIN = 16384

    T_NONE = 0x00
    T_TRUE = 0x01
    T_FALSE = 0x02
    T_INT8 = 0x03           # i8
    T_INT64 = 0x04          # i64
    T_BIGINT = 0x05         # u32 n, n bytes two's complement
    T_FLOAT = 0x06          # f64
    T_COMPLEX = 0x07        # f64 real, f64 imag
    T_STR = 0x08            # u32 n, n bytes UTF-8
    T_STR_SP = 0x09         # u32 n, n bytes UTF-8 with lone surrogates (surrogatepass)
    T_STR_OOB = 0x0A        # u64 offset, u64 n
    T_BYTES = 0x0B          # u32 n, n bytes
    T_BYTES_OOB = 0x0C      # u64 offset, u64 n
    T_BYTEARRAY = 0x0D
    T_BYTEARRAY_OOB = 0x0E
    T_LIST = 0x10           # u32 n, n values
    T_TUPLE = 0x11
    T_DICT = 0x12           # u32 n, n (key, value) pairs
    T_SET = 0x13
    T_FROZENSET = 0x14
    T_NPSCALAR = 0x20       # dtype, u32 n, n raw bytes
    T_NDARRAY = 0x21        # dtype, u8 flags (1 = Fortran order), u8 ndim, ndim u64 dims, u64 offset, u64 nbytes
    T_OBJECT = 0x30         # u64 code, u32 n, n (str name, value) pairs
    T_PICKLED = 0x31        # u64 code, a bytes value holding cloudpickle output
    T_CUSTOM = 0x32         # u64 code, the value the serializer returned
    # The standard library's value types (exact types; a registration of one of them is used instead). Their fields
    # are fixed-width, and their decoding runs no code but the types' own constructors, which validate them.
    T_DATETIME = 0x40       # u16 year, u8 month, day, hour, minute, second, fold, u32 microsecond, then the tzinfo
    T_DATE = 0x41           # u16 year, u8 month, u8 day
    T_TIME = 0x42           # u8 hour, minute, second, fold, u32 microsecond, then the tzinfo
    T_TIMEDELTA = 0x43      # i32 days, i32 seconds, i32 microseconds
    T_TIMEZONE = 0x44       # the offset as a timedelta's three i32, then the name (None or a str value)
    T_ZONEINFO = 0x45       # the key, a str value ("Europe/Paris"): the receiver's own tz database resolves it
    T_UUID = 0x46           # 16 bytes, big-endian (UUID.bytes)
    T_DECIMAL = 0x47        # its str value ("19.99", "-Infinity", "NaN")
    # A tzinfo is any value: None, a timezone, a ZoneInfo, or a registered class's instance.

    # dtype: u8 n, n ASCII bytes of numpy's dtype.str ("<f8", "|b1", "<M8[ns]", "<U5")

    # What a container on the path is, for error paths.
    K_LIST = 1
    K_TUPLE = 2
    K_DICT = 3
    K_SET = 4
    K_FIELDS = 5
    K_CUSTOM = 6
    K_TZINFO = 7            # the tzinfo of a datetime or time

cdef inline Py_ssize_t _align(Py_ssize_t n) nogil:
    return (n + (ALIGN - 1)) & ~(<Py_ssize_t>ALIGN - 1)


_DTYPE_RE = _re.compile(rb"\A[<>|=][biufcmMSUV](0|[1-9][0-9]{0,8})(\[[0-9]*[a-zA-Z]+\])?\Z")
_DTYPE_KINDS = "biufcmMSUV"
_dtype_desc = {}    # np.dtype -> descriptor bytes
_desc_dtype = {}    # descriptor bytes -> np.dtype


def _describe_dtype(dtype):
    """The wire descriptor of a dtype, or a ValueError whose text is the reason it cannot travel."""
    if dtype.hasobject:
        raise ValueError(f"arrays of dtype {dtype} hold Python object pointers; convert with .tolist(), or to a "
                         f"numeric or string dtype")
    if dtype.names is not None or dtype.subdtype is not None:
        raise ValueError(f"structured dtype {dtype} is not supported; send each field as its own array, or "
                         f"send arr.tobytes() with the dtype")
    if dtype.kind not in _DTYPE_KINDS or (dtype.itemsize == 0 and dtype.kind not in "SU"):
        raise ValueError(f"dtype {dtype} is not supported")
    desc = dtype.str.encode("ascii")
    if not _DTYPE_RE.match(desc):
        raise ValueError(f"dtype {dtype} is not supported")
    _dtype_desc[dtype] = desc
    return desc


def _dtype_of(desc):
    """The dtype of a wire descriptor, validated so that no descriptor can name an object or structured dtype."""
    dtype = _desc_dtype.get(desc)
    if dtype is not None:
        return dtype
    if not _DTYPE_RE.match(desc):
        raise ValueError(f"invalid dtype descriptor {desc!r}")
    dtype = _np.dtype(desc.decode("ascii"))
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None or dtype.kind not in _DTYPE_KINDS \
            or (dtype.itemsize == 0 and dtype.kind not in "SU"):
        raise ValueError(f"invalid dtype descriptor {desc!r}")
    if len(_desc_dtype) < 1024:
        _desc_dtype[desc] = dtype
    return dtype
