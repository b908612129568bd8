# cython: language_level=3
"""Shared-memory arenas: map a store segment, allocate blocks, count references, encode into and decode from them.

This is the store's C-level core; `actors._store` wraps it with naming, capacity, waiting and cleanup. A message is
encoded by `Encoder.write_to` straight into its block; a decoded array is a read-only view into the block, pinned
by a `Pin` that holds one count, so the block is freed only when no ref and no view remains in any process.
"""
import os as _os

import numpy as _np

cimport numpy as cnp
from cpython.ref cimport Py_INCREF, PyObject

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize

from _fastser._codec cimport Decoder, Encoder, Registry
from _fastser._errors import ActorsError

cdef extern from "numpy/arrayobject.h":
    object PyArray_NewFromDescr(PyObject* subtype, PyObject* descr, int nd, cnp.npy_intp* dims,
                                cnp.npy_intp* strides, void* data, int flags, PyObject* obj)
    int PyArray_SetBaseObject(PyObject* arr, PyObject* base) except -1

cnp.import_array()

cdef extern from "sys/mman.h":
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset) nogil
    int munmap(void* addr, size_t length) nogil
    int PROT_READ, PROT_WRITE, MAP_SHARED
    void* MAP_FAILED

cdef extern from "arena.h":
    ctypedef struct arena_header:
        uint64_t magic
        uint64_t capacity
        uint64_t arena_off
        uint64_t table_off
        uint64_t segment_size
        int32_t max_order
        int32_t owner_pid
        uint64_t generation
        uint64_t used
        uint64_t high_water
        uint64_t objects
    ctypedef struct object_header:
        uint64_t generation
        int64_t refcount
        uint64_t size
        uint64_t nrefs
        uint64_t refs_at
        uint32_t magic
        uint32_t order
    uint64_t ARENA_MAGIC
    uint32_t OBJECT_MAGIC
    int arena_init(arena_header* h, uint64_t segment_size, uint64_t capacity, uint64_t table_off,
                   uint64_t arena_off, int32_t pid) nogil
    int arena_lock(arena_header* h) nogil
    void arena_unlock(arena_header* h) nogil
    int64_t arena_alloc_locked(arena_header* h, uint64_t size) nogil
    void arena_free_locked(arena_header* h, uint64_t off) nogil
    int arena_commit_locked(arena_header* h, int fd, uint64_t chunk) nogil
    int arena_valid_locked(arena_header* h, uint64_t off, uint64_t generation) nogil
    int64_t atomic_add(int64_t* p, int64_t v) nogil
    int64_t atomic_inc_unless_zero(int64_t* p) nogil
    uint8_t* arena_base(arena_header* h) nogil

cdef enum:
    OBJ_HEADER = 64
    PAGE = 4096
    COMMIT_CHUNK = 1 << 24      # /dev/shm space is reserved 16 MiB at a time, ahead of first use
    DEFER_MAX = 256             # deferred frees held at most


cdef extern from "zlib.h":
    unsigned long crc32_z(unsigned long crc, const uint8_t* buf, size_t n) nogil

cdef enum:
    CRC_NOGIL = 65536           # records at least this long are checksummed with the GIL released


cdef inline uint32_t _crc32(const uint8_t* p, size_t n, uint32_t crc) noexcept nogil:
    # zlib's (table-driven, several bytes a step): the same value as zlib.crc32(data, crc). zlib reads a NULL
    # buffer as a request for the initial value, so no bytes are no call.
    if n == 0:
        return crc
    return <uint32_t>crc32_z(crc, p, n)


def crc32(data, uint32_t crc=0):
    """zlib.crc32, as the journal computes it (exposed for tests)."""
    cdef const uint8_t[:] view = data
    cdef const uint8_t* p = &view[0] if view.shape[0] else NULL
    cdef size_t n = view.shape[0]
    if n >= CRC_NOGIL:
        with nogil:
            crc = _crc32(p, n, crc)
        return crc
    return _crc32(p, n, crc)


_SHM_EXHAUSTED = ("shared memory is exhausted: /dev/shm has no space left for the store; free space in /dev/shm "
                  "or give the machine (container) more")


class StaleRefError(ActorsError, LookupError):
    """A ref names an object that was released, or that never existed (a forged or corrupted ref)."""


def layout(uint64_t capacity):
    """(table offset, arena offset, segment size) of a store of `capacity` bytes (a power of two)."""
    table_off = PAGE
    arena_off = (table_off + capacity // 64 + PAGE - 1) // PAGE * PAGE
    return table_off, arena_off, arena_off + capacity


# The refs met while encoding one message: the message holds a count on each for as long as it lives.
cdef list _collecting = None
cdef object _putting_into = None


cdef class Arena:
    """One mapped store segment. Usable from any process that maps it; `owner` is the creating process."""
    cdef arena_header* h
    cdef uint8_t* base
    cdef size_t mapsize
    cdef int fd
    cdef readonly str name
    cdef readonly bint owner
    cdef list _encoders
    cdef Decoder decoder
    cdef uint64_t* deferred       # blocks whose last count was dropped, to free under one lock acquisition
    cdef Py_ssize_t ndeferred
    cdef public bint defer_frees  # set by a mailbox, which calls flush_frees() after each batch
    cdef public uint64_t last_offset  # the block of the last post_record
    cdef object _shm           # the posix_ipc object (keeps the fd)

    def __cinit__(self):
        self.h = NULL
        self._encoders = []
        self.deferred = <uint64_t*>malloc(DEFER_MAX * sizeof(uint64_t))
        if self.deferred == NULL:
            raise MemoryError()

    @staticmethod
    def map(shm, str name, bint create, uint64_t capacity=0):
        """Map the posix_ipc segment `shm`; with `create`, lay out an empty store of `capacity` bytes in it."""
        cdef Arena a = Arena.__new__(Arena)
        cdef void* p
        cdef uint64_t table_off, arena_off, size
        a._shm = shm
        a.fd = shm.fd
        a.name = name
        a.owner = create
        a.mapsize = shm.size
        p = mmap(NULL, a.mapsize, PROT_READ | PROT_WRITE, MAP_SHARED, a.fd, 0)
        if p == MAP_FAILED:
            raise OSError(f"cannot map shared memory {name}")
        a.h = <arena_header*>p
        if create:
            table_off, arena_off, size = layout(capacity)
            if size > a.mapsize:
                raise ValueError("segment smaller than its layout")
            if arena_init(a.h, size, capacity, table_off, arena_off, _os.getpid()) != 0:
                raise OSError("cannot initialise the store's lock")
        elif a.h.magic != ARENA_MAGIC or a.h.segment_size > a.mapsize:
            raise ActorsError(f"shared memory {name} is not an actors store (or it is still being created)")
        a.base = arena_base(a.h)
        a.decoder = Decoder()
        return a

    def __dealloc__(self):
        if self.h != NULL:
            if self.ndeferred:
                self._flush_frees()
            munmap(<void*>self.h, self.mapsize)
            self.h = NULL
        free(self.deferred)

    @property
    def capacity(self):
        return self.h.capacity

    def stats(self):
        """used bytes, allocated objects, capacity, highest byte ever used."""
        self._flush_frees()
        return {"used": self.h.used, "objects": self.h.objects, "capacity": self.h.capacity,
                "high_water": self.h.high_water}

    # -- allocation ----------------------------------------------------------------------------------------------

    cdef int64_t _alloc(self, uint64_t size, uint64_t* generation) except -3:
        # The block's arena offset; -1 when no free block is large enough, -2 when /dev/shm itself is full.
        cdef int64_t off
        cdef Py_ssize_t i
        with nogil:
            arena_lock(self.h)
            for i in range(self.ndeferred):        # give back deferred blocks under the same acquisition
                arena_free_locked(self.h, self.deferred[i])
            self.ndeferred = 0
            off = arena_alloc_locked(self.h, size)
            if off >= 0:
                if arena_commit_locked(self.h, self.fd, COMMIT_CHUNK) != 0:
                    arena_free_locked(self.h, <uint64_t>off)
                    off = -2
                else:
                    self.h.generation += 1
                    generation[0] = self.h.generation
            arena_unlock(self.h)
        return off

    cdef void _free(self, uint64_t off) noexcept nogil:
        if self.defer_frees:
            self.deferred[self.ndeferred] = off
            self.ndeferred += 1
            if self.ndeferred == DEFER_MAX:
                self._flush_frees()
            return
        arena_lock(self.h)
        arena_free_locked(self.h, off)
        arena_unlock(self.h)

    def flush_frees(self):
        """Free the deferred blocks, under one lock acquisition."""
        self._flush_frees()

    cdef void _flush_frees(self) noexcept nogil:
        cdef Py_ssize_t i
        if not self.ndeferred:
            return
        arena_lock(self.h)
        for i in range(self.ndeferred):
            arena_free_locked(self.h, self.deferred[i])
        arena_unlock(self.h)
        self.ndeferred = 0

    cdef void decref(self, uint64_t off) noexcept:
        """Drop one count; the last one frees the block and drops the counts its message held."""
        cdef object_header* o
        cdef uint64_t i, n, inner
        cdef uint64_t* refs
        cdef list pending = None
        while True:
            o = <object_header*>(self.base + off)
            if atomic_add(&o.refcount, -1) == 0:
                n = o.nrefs
                if n:
                    refs = <uint64_t*>(<uint8_t*>o + o.refs_at)
                    if pending is None:
                        pending = []
                    for i in range(n):
                        pending.append(refs[2 * i])
                o.magic = 0
                self._free(off)
            if not pending:
                return
            off = pending.pop()

    cdef int incref(self, uint64_t off) except -1:
        atomic_add(&(<object_header*>(self.base + off)).refcount, 1)
        return 0

    cdef bint incref_checked(self, uint64_t off, uint64_t generation) noexcept nogil:
        """Take a count on the object at `off` if it is live and of `generation`; False if stale or forged."""
        cdef bint ok = False
        arena_lock(self.h)
        if arena_valid_locked(self.h, off, generation):
            ok = atomic_inc_unless_zero(&(<object_header*>(self.base + off)).refcount) > 0
        arena_unlock(self.h)
        return ok

    # -- put and get ---------------------------------------------------------------------------------------------

    cdef Encoder _encode(self, object obj, list refs):
        """Encode `obj` with an encoder from the pool, collecting into `refs` the ObjectRefs it holds; the
        encoder, prepared (its `total` is the message's size)."""
        global _collecting, _putting_into
        cdef Encoder enc = self._encoders.pop() if self._encoders else Encoder()
        _collecting = refs
        _putting_into = self
        try:
            enc.prepare_c(obj)
        except BaseException:
            self._encoders.append(enc)
            raise
        finally:
            _collecting = None
            _putting_into = None
        return enc

    cpdef tuple prepare(self, object obj):
        """Encode `obj` for a put: (encoder, size of the block it needs, message size, refs it holds). Pass it to
        `commit`."""
        cdef list refs = []
        cdef Encoder enc = self._encode(obj, refs)
        return (enc, OBJ_HEADER + ((enc.total + 7) & ~7) + 16 * len(refs), enc.total, refs)

    cdef int64_t _place(self, Encoder enc, uint64_t n, list refs, bint hold, uint64_t* generation) except -3:
        """Allocate a block for a prepared message, write it and the refs it holds; its offset. -1 or -2 (store or
        /dev/shm full) when there was no room, with the encoder left prepared for the caller to retry or release."""
        cdef uint64_t i
        cdef int64_t off = self._alloc(OBJ_HEADER + ((n + 7) & ~7) + 16 * len(refs), generation)
        cdef object_header* o
        cdef uint64_t* slots
        cdef ObjectRef r
        if off < 0:
            return off
        o = <object_header*>(self.base + off)
        o.generation = generation[0]
        o.refcount = 1
        o.size = n
        o.nrefs = len(refs)
        o.refs_at = OBJ_HEADER + ((n + 7) & ~7)
        o.magic = OBJECT_MAGIC
        try:
            enc.write_to(<char*>o + OBJ_HEADER)
        except BaseException:
            o.nrefs = 0
            self.decref(<uint64_t>off)
            self._encoders.append(enc)
            raise
        self._encoders.append(enc)
        slots = <uint64_t*>(<uint8_t*>o + o.refs_at)
        for i in range(o.nrefs):
            r = <ObjectRef>refs[i]
            r.arena.incref(r.offset)      # r is alive (the caller holds it), so its count is above zero
            slots[2 * i] = r.offset
            slots[2 * i + 1] = r.generation
        if hold:
            o.refcount = 2
        return off

    cpdef object commit(self, tuple prepared):
        """Allocate and write a prepared message; its (offset, generation) with one count, or None when full."""
        cdef uint64_t generation = 0
        cdef int64_t off = self._place(prepared[0], prepared[2], prepared[3], False, &generation)
        if off == -2:
            self.abandon(prepared)
            raise ActorsError(_SHM_EXHAUSTED)
        if off < 0:
            return None
        return (off, generation)

    def put_shared(self, SharedBlock block):
        """The (offset, generation) of a shared array's block, with one more count: the put costs no copy."""
        self.incref(block.offset)
        return (block.offset, block.generation)

    cpdef Py_ssize_t post_record(self, object obj, bytearray out, uint32_t kind, uint32_t src,
                                 uint64_t call, bint hold=False) except -2:
        """The mailbox's hot path in one call: encode `obj` into a new block and append its 24-byte record
        (offset, kind, src, call) to `out`. The block's size, or -1 when the store is full (nothing was done).
        With `hold`, the block gets a second count, for the sender to keep it (until a persistent receiver
        acks it); its offset is in `last_offset`."""
        cdef list refs = []
        cdef Encoder enc = self._encode(obj, refs)
        cdef Py_ssize_t n = enc.total, size, at
        cdef uint64_t generation = 0
        cdef int64_t off
        cdef char* rec
        size = OBJ_HEADER + ((n + 7) & ~7) + 16 * len(refs)
        off = self._place(enc, n, refs, hold, &generation)
        if off < 0:
            enc.release()
            self._encoders.append(enc)
            if off == -2:
                raise ActorsError(_SHM_EXHAUSTED)
            return -1
        self.last_offset = <uint64_t>off
        at = PyByteArray_GET_SIZE(out)
        PyByteArray_Resize(out, at + 24)
        rec = PyByteArray_AS_STRING(out) + at
        memcpy(rec, &off, 8)
        memcpy(rec + 8, &kind, 4)
        memcpy(rec + 12, &src, 4)
        memcpy(rec + 16, &call, 8)
        return size

    cpdef abandon(self, tuple prepared):
        """Give up a prepared message without writing it."""
        cdef Encoder enc = prepared[0]
        enc.release()
        self._encoders.append(enc)

    cpdef object read(self, uint64_t off, bint release):
        """Decode the object at `off` (the caller holds a count). With `release`, a successful read gives that count
        up: to the read-only views the message yields, if any, else it is dropped now. A failed read leaves the
        caller's count in place."""
        cdef object_header* o = <object_header*>(self.base + off)
        cdef const char* p = <const char*>o + OBJ_HEADER
        cdef uint32_t stream_len
        cdef uint64_t total
        cdef Pin pin = None
        cdef bint pin_took_count = False
        memcpy(&stream_len, p + 4, 4)
        memcpy(&total, p + 8, 8)
        if total > 16 + <uint64_t>stream_len:        # it has out-of-band data: views may point into it
            pin = Pin.__new__(Pin)
            pin.arena = self
            pin.offset = off
            if release:
                pin_took_count = True
            else:
                self.incref(off)
            release = False
        try:
            obj = self.decoder.decode_ptr(p, o.size, pin)
        except BaseException:
            if pin_took_count:          # the pin took the caller's count; on failure the caller keeps it
                self.incref(off)
            raise
        if release:
            self.decref(off)
        return obj

    def ref(self, uint64_t off, uint64_t generation):
        """An `ObjectRef` that takes over one count the caller holds."""
        cdef ObjectRef r = ObjectRef.__new__(ObjectRef)
        r.arena = self
        r.offset = off
        r.generation = generation
        return r

    def checked_ref(self, uint64_t off, uint64_t generation):
        """An `ObjectRef` from untrusted coordinates (another process, a message): validated, with its own count."""
        if not self.incref_checked(off, generation):
            raise StaleRefError(f"stale object ref (offset {off}, generation {generation}) in store {self.name}: "
                                f"the object was released, or the ref was never valid; keep a ref alive for as "
                                f"long as the object is needed")
        return self.ref(off, generation)

    def shared_array(self, shape, dtype):
        """A writable array living in a fresh block, laid out as the encoded message of itself: putting it later
        only takes a count (see `put_shared`). None when the store is full."""
        cdef Encoder enc = self._encoders.pop() if self._encoders else Encoder()
        cdef uint64_t generation = 0
        cdef int64_t off
        cdef Py_ssize_t n, data_at
        cdef object_header* o
        dtype = _np.dtype(dtype)
        placeholder = _np.lib.stride_tricks.as_strided(_np.zeros(1, dtype), shape=shape,
                                                       strides=(0,) * len(shape))
        try:
            n = enc.prepare_c(placeholder)
        except BaseException:
            self._encoders.append(enc)
            raise
        off = self._alloc(OBJ_HEADER + ((n + 7) & ~7), &generation)
        if off < 0:
            self.abandon((enc,))
            return None
        o = <object_header*>(self.base + off)
        o.generation = generation
        o.refcount = 1
        o.size = n
        o.nrefs = 0
        o.refs_at = OBJ_HEADER + ((n + 7) & ~7)
        o.magic = OBJECT_MAGIC
        data_at = enc.write_stream_to(<char*>o + OBJ_HEADER)
        self._encoders.append(enc)
        block = SharedBlock.__new__(SharedBlock)
        (<SharedBlock>block).arena = self
        (<SharedBlock>block).offset = <uint64_t>off
        (<SharedBlock>block).generation = generation
        (<SharedBlock>block).data = <uint8_t*>o + OBJ_HEADER + data_at
        return _make_writable_array(block, dtype, shape, (<SharedBlock>block).data)

    def journal_records(self, list batch, uint64_t epoch, uint64_t last_seen, uint64_t seq, bytearray out):
        """Frame a batch of received records for a persistent actor's journal, in one call.

        Appends to `out` one journal record per message (u32 length | u32 crc32 | u64 seq | u64 epoch |
        u64 sender seq | u32 kind | u32 0 | message bytes), numbering them from `seq` + 1. A tell whose sender
        seq is at most `last_seen` (journaled before a restart, and resent) is released and left out.
        Returns (records to handle, last seq used, highest sender seq of the batch's tells)."""
        cdef list keep = []
        cdef uint64_t off, call, ack = 0, zero = 0
        cdef uint32_t kind, length, crc
        cdef object_header* o
        cdef Py_ssize_t at
        cdef char* p
        cdef uint8_t body[40]
        for rec in batch:
            off = rec[0]
            kind = rec[1]
            call = rec[3]
            if kind == 9:                           # STOP: not a message
                keep.append(rec)
                continue
            if kind == 1 and epoch and call:        # a numbered tell
                if call > ack:
                    ack = call
                if call <= last_seen:
                    self.decref(off)
                    continue
            else:
                call = 0
            seq += 1
            o = <object_header*>(self.base + off)
            memcpy(body, &seq, 8)
            memcpy(body + 8, &epoch if call else &zero, 8)
            memcpy(body + 16, &call, 8)
            memcpy(body + 24, &kind, 4)
            memset(body + 28, 0, 4)
            length = <uint32_t>(32 + o.size)
            crc = _crc32(body, 32, 0)
            if o.size >= CRC_NOGIL:     # the caller holds a count on the block: it stays put without the GIL
                with nogil:
                    crc = _crc32(<uint8_t*>o + OBJ_HEADER, o.size, crc)
            else:
                crc = _crc32(<uint8_t*>o + OBJ_HEADER, o.size, crc)
            at = PyByteArray_GET_SIZE(out)
            PyByteArray_Resize(out, at + 8 + length)
            p = PyByteArray_AS_STRING(out) + at
            memcpy(p, &length, 4)
            memcpy(p + 4, &crc, 4)
            memcpy(p + 8, body, 32)
            memcpy(p + 40, <uint8_t*>o + OBJ_HEADER, o.size)
            keep.append(rec)
        return keep, seq, ack

    def message_bytes(self, uint64_t off):
        """A copy of the encoded message at `off` (the caller holds a count): what a journal stores."""
        cdef object_header* o = <object_header*>(self.base + off)
        return PyBytes_FromStringAndSize(<char*>o + OBJ_HEADER, <Py_ssize_t>o.size)

    def decref_id(self, uint64_t off):
        self.decref(off)

    def incref_id(self, uint64_t off):
        self.incref(off)


cdef class SharedBlock:
    """The numpy base of an `actors.shared_array`: holds the count of the block the array lives in."""
    cdef readonly Arena arena
    cdef readonly uint64_t offset
    cdef readonly uint64_t generation
    cdef uint8_t* data

    def __dealloc__(self):
        if self.arena is not None:
            self.arena.decref(self.offset)

    def owns(self, arr):
        """Is `arr` this block's whole array (not a slice or a view of another shape)?"""
        return (type(arr) is _np.ndarray and arr.base is self and arr.flags.c_contiguous
                and arr.__array_interface__["data"][0] == <size_t>self.data)


cdef object _make_writable_array(object base, object dtype, object shape, uint8_t* data):
    cdef cnp.npy_intp dims[32]
    cdef int i, nd = len(shape)
    for i in range(nd):
        dims[i] = shape[i]
    Py_INCREF(dtype)      # stolen
    arr = PyArray_NewFromDescr(<PyObject*>_np.ndarray, <PyObject*>dtype, nd, dims, NULL, <void*>data,
                               cnp.NPY_ARRAY_CARRAY, NULL)
    Py_INCREF(base)       # stolen
    PyArray_SetBaseObject(<PyObject*>arr, <PyObject*>base)
    return arr


cdef class Pin:
    """Holds one count on an object for as long as read-only views of it exist (it is their numpy base)."""
    cdef Arena arena
    cdef uint64_t offset

    def __dealloc__(self):
        if self.arena is not None:
            self.arena.decref(self.offset)


cdef class ObjectRef:
    """A reference to an immutable object in a shared-memory store; it keeps the object alive.

    Small and hashable; it travels inside messages (the message then keeps the object alive too) and through
    pickle (where it holds no count in transit: keep the sender's ref until the receiver has its own).
    """
    cdef readonly Arena arena
    cdef readonly uint64_t offset
    cdef readonly uint64_t generation

    def __dealloc__(self):
        if self.arena is not None:
            self.arena.decref(self.offset)

    @property
    def store(self):
        return self.arena.name

    def __hash__(self):
        return hash((self.arena.name, self.offset, self.generation))

    def __eq__(self, other):
        if type(other) is not ObjectRef:
            return NotImplemented
        return (self.arena is (<ObjectRef>other).arena and self.offset == (<ObjectRef>other).offset
                and self.generation == (<ObjectRef>other).generation)

    def __repr__(self):
        return f"ObjectRef({self.arena.name}, offset={self.offset}, generation={self.generation})"

    def __reduce__(self):
        return (_ref_from_wire, (self.arena.name, self.offset, self.generation))

    def get(self):
        return self.arena.read(self.offset, False)


def ref_to_wire(ObjectRef ref):
    """The codec serializer of ObjectRef: while a message is being put, it records the ref so the message holds a
    count on it."""
    if _collecting is not None:
        if _putting_into is not None and ref.arena is not _putting_into:
            raise ValueError(f"{ref!r} belongs to another store ({ref.arena.name}); a ref can travel only in "
                             f"messages of its own store: get() the object and send it instead")
        _collecting.append(ref)
    return (ref.arena.name, ref.offset, ref.generation)


# Set by actors._store: maps a store name to its mapped Arena, attaching on first use.
_resolve = None

def _ref_from_wire(name, offset, generation):
    return _resolve(name).checked_ref(offset, generation)


def ref_from_wire(value):
    """The codec deserializer of ObjectRef."""
    if type(value) is not tuple or len(value) != 3:
        raise ValueError("corrupted ObjectRef")
    return _ref_from_wire(*value)
