# cython: language_level=3
"""Shared-memory arenas: map a store segment, allocate blocks, count references, encode into and decode from them.

This is the store's C-level core; `actors._store` wraps it with naming, capacity, waiting and cleanup. A message is
encoded by `Encoder.write_to` straight into its block; a decoded array is a read-only view into the block, pinned
by a `Pin` that holds one count, so the block is freed only when no ref and no view remains in any process.

It also holds the mailbox's per-message work that would otherwise be Python run per message: posting a record
(`Arena.post_record`, `Arena.post_held` and `Held`), splitting what a reader read (`split_records`), and the
awaitable a tell that waits for nothing returns (`READY`).
"""
import collections.abc as _collections_abc
import os as _os
import weakref as _weakref

import numpy as _np

cimport numpy as cnp
from cpython.ref cimport Py_INCREF, PyObject

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove, memset
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize

from _fastser._codec cimport Decoder, Encoder, Registry
from _fastser._records cimport (KIND_ERROR, KIND_HELLO, KIND_NODE_GONE, KIND_REPLY, KIND_STOP, KIND_TELL,
                               RECORD_CALL_AT, RECORD_KIND_AT, RECORD_SIZE, RECORD_SRC_AT)
from _fastser._errors import ActorsError

cdef extern from "numpy/arrayobject.h":
    object PyArray_NewFromDescr(PyObject* subtype, PyObject* descr, int nd, cnp.npy_intp* dims,
                                cnp.npy_intp* strides, void* data, int flags, PyObject* obj)
    int PyArray_SetBaseObject(PyObject* arr, PyObject* base) except -1

cnp.import_array()

cdef extern from "Python.h":
    # The layout of a bytearray (the same from CPython 3.10 to 3.13), for `_append_room`.
    ctypedef struct PyByteArrayObject:
        Py_ssize_t ob_alloc
        char* ob_bytes
        char* ob_start
        Py_ssize_t ob_exports
    void Py_SET_SIZE(object o, Py_ssize_t size)
    void PyObject_GC_UnTrack(object o)
    Py_ssize_t PyObject_LengthHint(object o, Py_ssize_t default) except -1
    int PyErr_CheckSignals() except -1

OUTBOX_MIN_ROOM = 8192
cdef enum:
    READ_AHEAD_BYTES = 1 << 18      # payload bytes `Arena.read_tells` decodes ahead of the handler at most


cdef inline char* _append_room(bytearray out, Py_ssize_t add) except NULL:
    """Lengthen `out` by `add` bytes; where they start. An outbox or a journal batch grows a record at a time, and
    is emptied at each write: bytearray's own resizing gives the memory back on emptying, then grows by an exact
    fit while it is small (a realloc per record). This takes room in doubling steps and keeps it."""
    cdef PyByteArrayObject* b = <PyByteArrayObject*>out
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(out)
    cdef Py_ssize_t want = at + add
    if b.ob_exports != 0 or want + 1 > b.ob_alloc - (b.ob_start - b.ob_bytes):
        # resized for real (a BufferError while exported): to at least twice the size, kept when shrunk back
        PyByteArray_Resize(out, max(want, 2 * at, OUTBOX_MIN_ROOM))
    Py_SET_SIZE(out, want)
    b.ob_start[want] = 0
    return b.ob_start + at


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
        uint64_t committed
        uint64_t slots_off
        uint64_t rebuilds
        uint64_t free_head[48]
    ctypedef struct object_header:
        uint64_t generation
        int64_t refcount
        uint64_t size
        uint64_t nrefs
        uint64_t refs_at
        uint32_t magic
        uint32_t order
    ctypedef struct hold_entry:
        uint64_t key
        int64_t count
    ctypedef struct defer_list:
        uint64_t n
    ctypedef struct proc_slot:
        int32_t pid
        uint32_t overflow
        uint64_t start_time
        defer_list deferred
        hold_entry entries[1]
    uint64_t ARENA_MAGIC
    uint32_t OBJECT_MAGIC
    int HEADER_BYTES, PROC_SLOTS, SLOT_ENTRIES, MAX_ORDERS, MIN_SHIFT, FREE_BIT, DEFER_MAX
    bint defer_free(arena_header* h, defer_list* d, uint64_t off) nogil
    void defer_flush_locked(arena_header* h, defer_list* d, int checked) nogil
    uint8_t* arena_table(arena_header* h) nogil
    uint64_t* links(arena_header* h, uint64_t off) nogil
    proc_slot* arena_slot(arena_header* h, int i) nogil
    void slot_hold(proc_slot* s, uint64_t off, int64_t delta) nogil
    void arena_test_die_in_lock(arena_header* h, int step) nogil
    bint __atomic_compare_exchange_n(int32_t* p, int32_t* expected, int32_t desired, bint weak, int s, int f) nogil
    void __atomic_store_n(int32_t* p, int32_t v, int order) nogil
    int __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE, __ATOMIC_RELEASE
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
    MAX_DIMS = 64               # numpy's own limit, and the codec's
    FREE_AT_ONCE_ORDER = 10     # blocks of 64 KiB (64 << 10) or more are freed at once, even when frees are deferred


cdef extern from *:
    """
    #include <fcntl.h>
    #include <errno.h>
    #if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
    static int actors_start_writeback(int fd) { return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) ? errno : 0; }
    #else
    static int actors_start_writeback(int fd) { (void)fd; return 0; }
    #endif
    """
    int actors_start_writeback(int fd) nogil


def start_writeback(int fd):
    """Start writing the file's dirty pages to the disk, without waiting (Linux's sync_file_range with
    SYNC_FILE_RANGE_WRITE; nothing elsewhere). It makes nothing durable: a persistent actor's journal calls it
    after writing a batch, decodes the batch meanwhile, and its fsync then waits only for what is left (the inode,
    the disk's cache). Raises OSError if the kernel refuses."""
    cdef int err
    with nogil:
        err = actors_start_writeback(fd)
    if err:
        raise OSError(err, _os.strerror(err))


cdef extern from *:
    """
    #include <poll.h>
    #include <sched.h>
    #include <time.h>
    static double actors_monotonic(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    /* 1 once `fd` is readable (or hung up, or in error: the read says which); 2 when `other` is readable first;
       0 at `deadline` (CLOCK_MONOTONIC seconds). */
    static int actors_spin_readable(int fd, int other, double deadline) {
        struct pollfd fds[2];
        fds[0].fd = fd; fds[0].events = POLLIN; fds[0].revents = 0;
        fds[1].fd = other; fds[1].events = POLLIN; fds[1].revents = 0;
        for (;;) {
            int r = poll(fds, other >= 0 ? 2 : 1, 0);
            if (r > 0)
                return fds[0].revents != 0 ? 1 : 2;
            if (r < 0 && errno != EINTR)
                return 0;
            if (!(actors_monotonic() < deadline))
                return 0;
            sched_yield();
        }
    }
    """
    double actors_monotonic() nogil
    int actors_spin_readable(int fd, int other, double deadline) nogil


cdef double SPIN_SLICE = 0.001     # seconds a spin goes without the GIL, between checks for signals


def spin_readable(int fd, int other, double seconds):
    """Spin for up to `seconds` until `fd` is readable, yielding the CPU between looks; True if it is (or has
    hung up), False when `other` (-1: none; the runtime passes none) became readable first or the time ran out.

    Why in C: an asker spinning for its answer looked once per pass of a Python loop (a read that raised
    BlockingIOError, a clock, a check of trio's state and a poll), a few microseconds a pass, which the answer it
    waited for then waited on too. Here a look is one poll(). The GIL is released, a millisecond at a time: a thread
    of the process may run meanwhile, and a signal's Python handler runs between the slices (it may raise:
    KeyboardInterrupt ends the spin). Readers of tells do not spin here: in the runtime's measurements their Python
    loop, which reads between looks, kept more one-way throughput (docs/architecture.md)."""
    cdef int r
    cdef double deadline = actors_monotonic() + seconds
    cdef double end
    while True:
        end = actors_monotonic() + SPIN_SLICE
        if not (end < deadline):
            end = deadline
        with nogil:
            r = actors_spin_readable(fd, other, end)
        if r:
            return r == 1
        PyErr_CheckSignals()
        if not (actors_monotonic() < deadline):
            return False


cdef extern from "crc32.h":
    uint32_t actors_crc32(uint32_t crc, const uint8_t* buf, size_t n) nogil

cdef enum:
    CRC_NOGIL = 65536           # records at least this long are checksummed with the GIL released


cdef inline uint32_t _crc32(const uint8_t* p, size_t n, uint32_t crc) noexcept nogil:
    # zlib's CRC-32, the same value as zlib.crc32(data, crc), folded with PCLMULQDQ where the CPU has it
    # (includes/crc32.h)
    return actors_crc32(crc, p, n)


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
    table_off = HEADER_BYTES + (PROC_SLOTS * sizeof(proc_slot) + PAGE - 1) // PAGE * PAGE
    arena_off = (table_off + capacity // 64 + PAGE - 1) // PAGE * PAGE
    return table_off, arena_off, arena_off + capacity


def start_time(int pid):
    """The start time of process `pid` (clock ticks since boot, field 22 of /proc/<pid>/stat), or None if there is
    no such process. With the pid it names a process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[19])


cdef bint _slot_alive(proc_slot* s):
    now = start_time(s.pid)
    return now is not None and (s.start_time == 0 or now == s.start_time)


# Every mapped arena of this process: a forked child must not write its holdings into its parent's slots.
_arenas = _weakref.WeakSet()

def _after_fork_in_child():
    for a in list(_arenas):
        a._forget_slot()

_os.register_at_fork(after_in_child=_after_fork_in_child)


# The refs met while encoding one message: the message holds a count on each for as long as it lives.
cdef list _collecting = None
cdef object _putting_into = None


cdef class Ready:
    """An awaitable that is done already: what `ActorRef.tell` returns when it has nothing to wait for, instead of
    a coroutine made and finished for every tell. Shaped as a coroutine (send, throw, close), so that trio also
    runs it where it takes an async function's result (`nursery.start_soon(ref.tell, message)`)."""

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration         # (Cython returns without making the exception)

    def send(self, value):
        raise StopIteration

    def throw(self, typ, val=None, tb=None):
        raise typ if val is None else val

    def close(self):
        pass


READY = Ready()
_collections_abc.Coroutine.register(Ready)


cdef class Held:
    """The tells a sender holds for one persistent receiver until it acks them: (sender seq, store offset) pairs,
    in seq order, each with a count on its block (`Arena.post_held`, `Arena.release_acked`). C pairs in one array,
    not a deque of tuples: a stream of tells adds one per message."""
    cdef uint64_t* items        # seq, offset; the live ones from `head`, `n` of them
    cdef Py_ssize_t cap, head, n

    def __cinit__(self):
        self.cap = 64
        self.head = self.n = 0
        self.items = <uint64_t*>malloc(2 * self.cap * sizeof(uint64_t))
        if self.items == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.items)

    cdef int push(self, uint64_t seq, uint64_t off) except -1:
        cdef uint64_t* items
        if self.head + self.n == self.cap:
            if self.head >= self.cap // 2:      # half of it is acked already: move the rest to the front
                memmove(self.items, self.items + 2 * self.head, 2 * self.n * sizeof(uint64_t))
                self.head = 0
            else:
                items = <uint64_t*>realloc(self.items, 4 * self.cap * sizeof(uint64_t))
                if items == NULL:
                    raise MemoryError()
                self.items = items
                self.cap *= 2
        self.items[2 * (self.head + self.n)] = seq
        self.items[2 * (self.head + self.n) + 1] = off
        self.n += 1
        return 0

    def append(self, uint64_t seq, uint64_t off):
        """Hold (seq, off) after the others (its seq above theirs)."""
        self.push(seq, off)

    def __len__(self):
        return self.n

    def __iter__(self):
        """The (seq, offset) pairs held, in order (a copy: the caller may post meanwhile)."""
        return iter([(self.items[2 * i], self.items[2 * i + 1]) for i in range(self.head, self.head + self.n)])


cdef class Arena:
    """One mapped store segment. Usable from any process that maps it; `owner` is the creating process."""
    cdef arena_header* h
    cdef uint8_t* base
    cdef size_t mapsize
    cdef int fd
    cdef readonly str name
    cdef readonly bint owner
    cdef list _encoders        # the encoder pool: `_spare`, then these (nested puts need more than one)
    cdef Encoder _spare
    cdef Decoder decoder
    cdef defer_list* deferred     # blocks whose last count was dropped, to free under one lock acquisition: in
    cdef defer_list* own_deferred # this process's slot once it has one, else in its own memory
    cdef bint _defer_frees
    cdef public uint64_t last_offset  # the block of the last post_record
    cdef public uint64_t last_generation  # and its generation
    cdef object _shm           # the posix_ipc object (keeps the fd)
    cdef proc_slot* slot       # this process's holdings; NULL until it first holds a count (or no slot was free)
    cdef bint slot_tried
    cdef object __weakref__

    def __cinit__(self):
        self.h = NULL
        self.slot = NULL
        self._encoders = []
        self.own_deferred = self.deferred = <defer_list*>malloc(sizeof(defer_list))
        if self.deferred == NULL:
            raise MemoryError()
        self.deferred.n = 0

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
        if not create and a.mapsize < HEADER_BYTES:
            raise ActorsError(f"shared memory {name} is not an actors store: {a.mapsize} bytes is too small")
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
        else:
            problem = a._header_problem()
            if problem is not None:
                raise ActorsError(f"shared memory {name} is not an actors store: {problem}")
        a.base = arena_base(a.h)
        a.decoder = Decoder()
        _arenas.add(a)
        return a

    cdef str _header_problem(self):
        # Everything the allocator trusts the header for, checked before anything is read through it or its lock
        # is touched: a forged header must not send us past the mapping.
        cdef arena_header* h = self.h
        cdef uint64_t cap = h.capacity
        if h.magic != ARENA_MAGIC:
            return "bad magic (or it is still being created)"
        if cap < 64 or cap & (cap - 1) or cap > (<uint64_t>1 << 46):
            return f"bad capacity {cap}"
        if (h.table_off, h.arena_off, h.segment_size) != layout(cap) or h.slots_off != HEADER_BYTES:
            return "its layout does not match its capacity"
        if h.segment_size > self.mapsize:
            return f"it says {h.segment_size} bytes, the segment holds {self.mapsize}"
        if h.max_order < 0 or h.max_order + MIN_SHIFT > 46 or (<uint64_t>1 << (h.max_order + MIN_SHIFT)) != cap:
            return f"bad order {h.max_order}"
        return None

    def __dealloc__(self):
        if self.h != NULL:
            if self.deferred.n:
                self._flush_frees()
            munmap(<void*>self.h, self.mapsize)
            self.h = NULL
        free(self.own_deferred)

    @property
    def capacity(self):
        return self.h.capacity

    def stats(self):
        """used bytes, allocated objects, capacity, highest byte ever used, free-list rebuilds (each one after a
        process died holding the allocator's lock)."""
        self._flush_frees()
        return {"used": self.h.used, "objects": self.h.objects, "capacity": self.h.capacity,
                "high_water": self.h.high_water, "rebuilds": self.h.rebuilds}

    def check(self):
        """The allocator's inconsistencies, as a list of messages (empty when consistent): every arena byte is in
        exactly one block, every free block is on its order's free list exactly once and nothing else is, no two
        free buddies are left unmerged, and the counters match the blocks. Takes the lock (for tests and tools)."""
        self._flush_frees()
        with nogil:
            arena_lock(self.h)
        try:
            return self._check_unlocked()
        finally:
            arena_unlock(self.h)

    def _check_unlocked(self):
        # check()'s walk, without the lock: a test reads a state that taking the lock would repair
        cdef arena_header* h = self.h
        cdef uint8_t* table = arena_table(h)
        cdef uint64_t p = 0, size, used = 0, objects = 0, node, prev, steps, unit = 1 << MIN_SHIFT
        cdef uint8_t t
        cdef int order
        problems = []
        free_blocks = {}
        while p < h.capacity and len(problems) < 20:
            t = table[p >> MIN_SHIFT]
            order = (t & ~FREE_BIT) - 1
            if t == 0 or order > h.max_order:
                problems.append(f"offset {p}: no block starts here (table byte {t})")
                p += unit
                continue
            size = (<uint64_t>1) << (order + MIN_SHIFT)
            if p & (size - 1) or p + size > h.capacity:
                problems.append(f"offset {p}: a block of order {order} cannot start here")
                p += unit
                continue
            for node in range((p >> MIN_SHIFT) + 1, (p + size) >> MIN_SHIFT):
                if table[node]:
                    problems.append(f"offset {node << MIN_SHIFT}: a block starts inside the block at {p}")
                    break
            if t & FREE_BIT:
                free_blocks[p] = order
                if free_blocks.get(p ^ size) == order:
                    problems.append(f"offsets {p ^ size} and {p}: free buddies of order {order} not merged")
            else:
                used += size
                objects += 1
            p += size
        on_lists = set()
        for order in range(h.max_order + 1):
            node, prev, steps = h.free_head[order], 0, 0
            while node and steps <= h.capacity >> MIN_SHIFT:
                steps += 1
                if free_blocks.get(node - 1) != order:
                    problems.append(f"free list {order} holds offset {node - 1}, not a free block of order "
                                    f"{order}")
                    break
                if node - 1 in on_lists:
                    problems.append(f"free list {order} holds offset {node - 1} twice (a cycle)")
                    break
                if links(h, node - 1)[1] != prev:
                    problems.append(f"free list {order}: offset {node - 1} has a wrong back link")
                on_lists.add(node - 1)
                prev = node
                node = links(h, node - 1)[0]
        for off in sorted(set(free_blocks) - on_lists)[:10]:
            problems.append(f"offset {off}: marked free but on no free list")
        if used != h.used or objects != h.objects:
            problems.append(f"counters say {h.used} bytes in {h.objects} blocks, the table {used} in {objects}")
        return problems

    def _test_die_in_lock(self, int step):
        """Test-only: end this process inside the allocator's lock with an operation half done (see arena.h)."""
        arena_test_die_in_lock(self.h, step)

    # -- per-process holdings ------------------------------------------------------------------------------------

    cdef int _hold(self, uint64_t off, int64_t delta) except -1:
        """Record a count this process takes (+1) or drops (-1) through a ref, a view or a shared array, so that
        `reclaim` can drop what it held if it dies. A couple of plain stores in this process's own slot."""
        if self.slot == NULL:
            if self.slot_tried or delta < 0:
                return 0
            self._claim_slot()
            if self.slot == NULL:
                return 0
        slot_hold(self.slot, off, delta)
        return 0

    cdef _claim_slot(self):
        cdef int i, round
        cdef int32_t free_pid
        cdef proc_slot* s
        cdef int32_t pid = _os.getpid()
        self.slot_tried = True
        for round in range(2):
            for i in range(PROC_SLOTS):
                s = arena_slot(self.h, i)
                free_pid = 0
                if s.pid == 0 and __atomic_compare_exchange_n(&s.pid, &free_pid, -1, False, __ATOMIC_ACQ_REL,
                                                               __ATOMIC_ACQUIRE):
                    s.start_time = start_time(pid) or 0
                    __atomic_store_n(&s.pid, pid, __ATOMIC_RELEASE)
                    self._flush_frees()
                    self.slot = s
                    self.deferred = &s.deferred
                    return
            if round == 0:
                self.reclaim_dead()          # every slot taken: free those of dead processes

    def _forget_slot(self):
        # In a forked child: the slot, and the frees deferred in it, are the parent's.
        self.slot = NULL
        self.slot_tried = False
        self.deferred = self.own_deferred
        self.deferred.n = 0

    def holders(self):
        """{pid: (start time, objects held, counts held)} of the processes with a slot in this store."""
        cdef int i
        cdef uint64_t j
        cdef proc_slot* s
        out = {}
        for i in range(PROC_SLOTS):
            s = arena_slot(self.h, i)
            if s.pid > 0:
                n = held = 0
                for j in range(SLOT_ENTRIES):
                    if s.entries[j].key and s.entries[j].count > 0:
                        n += 1
                        held += s.entries[j].count
                out[s.pid] = (s.start_time, n, held)
        return out

    def reclaim(self, int32_t pid):
        """Drop every count that process `pid` held, once it is dead: what a killed process held is not lost
        until the store is recreated. (objects, counts) released; (0, 0) when it held none. Raises ValueError if
        `pid` is still running."""
        cdef int i
        cdef uint64_t j, off
        cdef int32_t expected
        cdef proc_slot* s
        cdef dict held
        objects = counts = 0
        for i in range(PROC_SLOTS):
            s = arena_slot(self.h, i)
            if s.pid != pid or pid <= 0:
                continue
            if _slot_alive(s):
                raise ValueError(f"process {pid} is still running: only a dead process's holdings are reclaimed")
            expected = pid
            if not __atomic_compare_exchange_n(&s.pid, &expected, -1, False, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE):
                continue                        # another process is reclaiming it
            with nogil:
                arena_lock(self.h)
                defer_flush_locked(self.h, &s.deferred, True)      # the frees it had not done yet
                arena_unlock(self.h)
            held = {}
            for j in range(SLOT_ENTRIES):
                if s.entries[j].key and s.entries[j].count > 0:
                    held[s.entries[j].key - 1] = s.entries[j].count     # a duplicate is an exact copy
            memset(s.entries, 0, SLOT_ENTRIES * sizeof(hold_entry))
            s.overflow = 0
            s.start_time = 0
            __atomic_store_n(&s.pid, 0, __ATOMIC_RELEASE)
            for off, n in held.items():
                objects += 1
                counts += n
                for _ in range(n):
                    self.decref(off)
        self._flush_frees()
        return objects, counts

    def reclaim_dead(self):
        """`reclaim` every process with a slot here that is no longer running; (objects, counts) released."""
        cdef int i
        cdef proc_slot* s
        objects = counts = 0
        for i in range(PROC_SLOTS):
            s = arena_slot(self.h, i)
            if s.pid > 0 and not _slot_alive(s):
                o, c = self.reclaim(s.pid)
                objects += o
                counts += c
        return objects, counts

    # -- allocation ----------------------------------------------------------------------------------------------

    cdef int64_t _alloc(self, uint64_t size, uint64_t* generation) except -3:
        # The block's arena offset; -1 when no free block is large enough, -2 when /dev/shm itself is full.
        cdef int64_t off
        cdef Py_ssize_t i
        with nogil:
            arena_lock(self.h)
            defer_flush_locked(self.h, self.deferred, False)   # deferred blocks, under the same acquisition
            off = arena_alloc_locked(self.h, size)
            if off >= 0:
                if arena_commit_locked(self.h, self.fd, COMMIT_CHUNK) != 0:
                    arena_free_locked(self.h, <uint64_t>off)
                    off = -2
                else:
                    self.h.generation += 1
                    generation[0] = self.h.generation
                    # under the lock, so a reclaimer freeing a dead process's deferred block can tell it apart
                    (<object_header*>(self.base + off)).generation = self.h.generation
            arena_unlock(self.h)
        return off

    cdef void _free(self, uint64_t off) noexcept nogil:
        if self._defer_frees:
            # A large block goes back at once (with whatever was deferred, under the same lock): a lock per large
            # message costs little beside its copy, and a block given back while its sender is still sending is
            # the one its next message gets, warm in the cache and mapped in both processes. Held to the batch's
            # end, a batch of large messages makes the sender take fresh, cold blocks instead.
            if (defer_free(self.h, self.deferred, off)
                    or arena_table(self.h)[off >> MIN_SHIFT] > FREE_AT_ONCE_ORDER):
                self._flush_frees()
            return
        arena_lock(self.h)
        arena_free_locked(self.h, off)
        arena_unlock(self.h)

    @property
    def defer_frees(self):
        """Set by a mailbox, which calls flush_frees() after each batch: blocks are then freed a batch at a time."""
        return self._defer_frees

    @defer_frees.setter
    def defer_frees(self, bint on):
        self._flush_frees()
        if on and self.slot == NULL and not self.slot_tried:
            self._claim_slot()
        self._defer_frees = on

    @property
    def deferred_frees(self):
        """How many blocks wait to be freed at the next flush_frees()."""
        return self.deferred.n

    def flush_frees(self):
        """Free the deferred blocks, under one lock acquisition."""
        self._flush_frees()

    cdef void _flush_frees(self) noexcept nogil:
        if not self.deferred.n:
            return
        arena_lock(self.h)
        defer_flush_locked(self.h, self.deferred, False)
        arena_unlock(self.h)

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

    cdef inline Encoder _take_encoder(self):
        # A spare slot before the list: a list popped to empty and appended again frees and reallocates its
        # storage, which was a realloc per message.
        cdef Encoder enc = self._spare
        if enc is not None:
            self._spare = None
            return enc
        return self._encoders.pop() if self._encoders else Encoder()

    cdef inline int _give_encoder(self, Encoder enc) except -1:
        if self._spare is None:
            self._spare = enc
        else:
            self._encoders.append(enc)
        return 0

    cdef Encoder _encode(self, object obj, list refs):
        """Encode `obj` with an encoder from the pool, collecting into `refs` the ObjectRefs it holds; the
        encoder, prepared (its `total` is the message's size)."""
        global _collecting, _putting_into
        cdef Encoder enc = self._take_encoder()
        _collecting = refs
        _putting_into = self
        try:
            enc.prepare_c(obj)
        except BaseException:
            self._give_encoder(enc)
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
            self._give_encoder(enc)
            raise
        self._give_encoder(enc)
        slots = <uint64_t*>(<uint8_t*>o + o.refs_at)
        for i in range(o.nrefs):
            r = <ObjectRef>refs[i]
            r.arena.incref(r.offset)      # r is alive (the caller holds it), so its count is above zero
            slots[2 * i] = r.offset
            slots[2 * i + 1] = r.generation
        if hold:
            o.refcount = 2
        return off

    cdef object_header* _new_object(self, int64_t off, uint64_t generation, uint64_t n):
        """Fill in the header of a new block for an n-byte message that holds no refs, with one count."""
        cdef object_header* o = <object_header*>(self.base + off)
        o.generation = generation
        o.refcount = 1
        o.size = n
        o.nrefs = 0
        o.refs_at = OBJ_HEADER + ((n + 7) & ~7)
        o.magic = OBJECT_MAGIC
        return o

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
        cdef Py_ssize_t n = enc.total, size
        cdef uint64_t generation = 0
        cdef int64_t off
        cdef char* rec
        size = OBJ_HEADER + ((n + 7) & ~7) + 16 * len(refs)
        off = self._place(enc, n, refs, hold, &generation)
        if off < 0:
            enc.release()
            self._give_encoder(enc)
            if off == -2:
                raise ActorsError(_SHM_EXHAUSTED)
            return -1
        self.last_offset = <uint64_t>off
        self.last_generation = generation
        rec = _append_room(out, RECORD_SIZE)
        memcpy(rec, &off, 8)
        memcpy(rec + RECORD_KIND_AT, &kind, 4)
        memcpy(rec + RECORD_SRC_AT, &src, 4)
        memcpy(rec + RECORD_CALL_AT, &call, 8)
        return size

    def alive(self, uint64_t off, uint64_t generation):
        """Is the object of `generation` at `off` still there (not freed yet)? Without the lock, so the answer may
        be stale by the time it is read: for a sender pacing itself, not for taking a count."""
        cdef object_header* o
        if off >= self.h.capacity:
            return False
        o = <object_header*>(self.base + off)
        return o.magic == OBJECT_MAGIC and o.generation == generation and o.refcount > 0

    cpdef abandon(self, tuple prepared):
        """Give up a prepared message without writing it."""
        cdef Encoder enc = prepared[0]
        enc.release()
        self._give_encoder(enc)

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
            if release:
                pin_took_count = True
            else:
                self.incref(off)
            self._hold(off, 1)
            pin.arena = self
            pin.offset = off
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
        self._hold(off, 1)
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
        cdef Encoder enc = self._take_encoder()
        cdef uint64_t generation = 0
        cdef int64_t off
        cdef Py_ssize_t n, data_at
        cdef object_header* o
        if len(shape) > MAX_DIMS:
            self._give_encoder(enc)
            raise ValueError(f"a shared array has at most {MAX_DIMS} dimensions, not {len(shape)}")
        dtype = _np.dtype(dtype)
        placeholder = _np.lib.stride_tricks.as_strided(_np.zeros(1, dtype), shape=shape,
                                                       strides=(0,) * len(shape))
        try:
            n = enc.prepare_c(placeholder)
        except BaseException:
            self._give_encoder(enc)
            raise
        off = self._alloc(OBJ_HEADER + ((n + 7) & ~7), &generation)
        if off < 0:
            self.abandon((enc,))
            return None
        o = self._new_object(off, generation, n)
        data_at = enc.write_stream_to(<char*>o + OBJ_HEADER)
        self._give_encoder(enc)
        block = SharedBlock.__new__(SharedBlock)
        self._hold(<uint64_t>off, 1)
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
        cdef char* p
        cdef uint8_t body[40]
        for rec in batch:
            off = rec[0]
            kind = rec[1]
            call = rec[3]
            if kind == KIND_STOP:                   # not a message
                keep.append(rec)
                continue
            if kind == KIND_TELL and epoch and call:    # a numbered tell
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
            p = _append_room(out, 8 + length)
            memcpy(p, &length, 4)
            memcpy(p + 8, body, 32)
            memcpy(p + 40, <uint8_t*>o + OBJ_HEADER, o.size)
            # one pass over the body as framed (a short record is too short to checksum in two calls); `out` is
            # the caller's, and nothing else runs meanwhile, so it stays put without the GIL
            if o.size >= CRC_NOGIL:
                with nogil:
                    crc = _crc32(<uint8_t*>p + 8, length, 0)
            else:
                crc = _crc32(<uint8_t*>p + 8, length, 0)
            memcpy(p + 4, &crc, 4)
            keep.append(rec)
        return keep, seq, ack

    def message_bytes(self, uint64_t off):
        """A copy of the encoded message at `off` (the caller holds a count): what a journal stores."""
        cdef object_header* o = <object_header*>(self.base + off)
        return PyBytes_FromStringAndSize(<char*>o + OBJ_HEADER, <Py_ssize_t>o.size)

    def payload(self, uint64_t off):
        """The encoded message at `off` (the caller holds a count) as a read-only view into the store: what a link
        to another machine writes to its socket, with no copy. Valid while the count is held."""
        cdef object_header* o = <object_header*>(self.base + off)
        return PyMemoryView_FromMemory(<char*>o + OBJ_HEADER, <Py_ssize_t>o.size, PyBUF_READ)

    def payload_refs(self, uint64_t off):
        """How many store objects the message at `off` holds refs to (ObjectRefs inside it)."""
        return (<object_header*>(self.base + off)).nrefs

    def receive(self, uint64_t n):
        """A new block for an `n`-byte message arriving from another machine, to be read straight into:
        (offset, writable view of its n bytes), with one count for the receiver; None when the store is full.
        The message is checked when it is decoded, like any other."""
        cdef uint64_t generation = 0
        cdef int64_t off = self._alloc(OBJ_HEADER + ((n + 7) & ~7), &generation)
        cdef object_header* o
        if off == -2:
            raise ActorsError(_SHM_EXHAUSTED)
        if off < 0:
            return None
        o = self._new_object(off, generation, n)
        return (off, PyMemoryView_FromMemory(<char*>o + OBJ_HEADER, <Py_ssize_t>n, PyBUF_WRITE))

    def read_tells(self, list batch, object records, Py_ssize_t most):
        """Decode the tells that come next in `batch`, as far as the list iterator `records` over it has got: up
        to `most` of them and READ_AHEAD_BYTES of payload, stopping before a record that is not a tell or that
        does not decode (left for the caller's handler, count and all). Each decoded record's count is given up
        (`read(off, True)`), and `records` is moved past it. The messages, in order.

        A mailbox's handler loop then runs per message only the actor's `receive`: the record's kind, the call to
        read it and its count are dealt with here, for a run of tells at a time."""
        cdef list out = []
        cdef Py_ssize_t n = len(batch)
        cdef Py_ssize_t at = n - PyObject_LengthHint(records, 0), i
        cdef uint64_t off, ahead = 0
        cdef tuple rec
        if at < 0:
            raise ValueError("records is not an iterator over batch")
        i = at
        while i < n and i - at < most and ahead < READ_AHEAD_BYTES:
            rec = <tuple>batch[i]
            if <uint32_t>rec[1] != KIND_TELL:
                break
            off = <uint64_t>rec[0]
            ahead += (<object_header*>(self.base + off)).size
            try:
                msg = self.read(off, True)
            except Exception:
                break
            out.append(msg)
            i += 1
        for i in range(len(out)):
            next(records)
        return out

    def decref_id(self, uint64_t off):
        self.decref(off)

    cpdef Py_ssize_t post_held(self, object obj, bytearray out, uint32_t src, object calls, Held held) except -2:
        """`post_record` of a tell to a persistent receiver: numbered with the next of `calls` (an iterator of
        ints), and its block held (a second count) in `held` until the receiver acks it. -1 when the store is
        full (nothing was done, no number taken). The sender of a stream of tells runs this for every one."""
        cdef Py_ssize_t size = self.post_record(obj, out, KIND_TELL, src, 0, True)
        cdef uint64_t seq
        if size < 0:
            return size
        seq = next(calls)
        held.push(seq, self.last_offset)
        memcpy(PyByteArray_AS_STRING(out) + PyByteArray_GET_SIZE(out) - RECORD_SIZE + RECORD_CALL_AT, &seq, 8)
        return size

    def release_acked(self, Held held, uint64_t seq):
        """Drop the count held on each tell a persistent receiver has acked: every one in `held` whose seq is at
        most `seq` (they are in seq order). One call per ack, not a Python loop per message."""
        cdef uint64_t* item
        while held.n:
            item = held.items + 2 * held.head
            if item[0] > seq:
                break
            held.head += 1
            held.n -= 1
            self.decref(item[1])

    def release_newest(self, Held held):
        """Drop the count on the tell `held` got last, and forget it (it is not sent after all)."""
        if held.n:
            held.n -= 1
            self.decref(held.items[2 * (held.head + held.n) + 1])

    def release_held(self, Held held):
        """Drop every count `held` holds (its receiver stopped for good); how many there were."""
        cdef Py_ssize_t n = held.n
        while held.n:
            self.decref(held.items[2 * held.head + 1])
            held.head += 1
            held.n -= 1
        return n

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
            self.arena._hold(self.offset, -1)
            self.arena.decref(self.offset)

    def owns(self, arr):
        """Is `arr` this block's whole array (not a slice or a view of another shape)?"""
        return (type(arr) is _np.ndarray and arr.base is self and arr.flags.c_contiguous
                and arr.__array_interface__["data"][0] == <size_t>self.data)


cdef object _make_writable_array(object base, object dtype, object shape, uint8_t* data):
    cdef cnp.npy_intp dims[MAX_DIMS]
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
            self.arena._hold(self.offset, -1)
            self.arena.decref(self.offset)


cdef class ObjectRef:
    """A reference to an immutable object in a shared-memory store; it keeps the object alive.

    Small and hashable; it travels inside messages (the message then keeps the object alive too) and through
    pickle (where it holds no count in transit: keep the sender's ref until the receiver has its own).
    """
    cdef readonly Arena arena
    cdef readonly uint64_t offset
    cdef readonly uint64_t generation

    def __init__(self, *args, **kwargs):
        # Refs come from put() (or arrive in messages); one made here would name no object.
        raise TypeError("ObjectRef cannot be created directly: put() an object to get its ref")

    def __dealloc__(self):
        if self.arena is not None:
            self.arena._hold(self.offset, -1)
            self.arena.decref(self.offset)

    cdef Arena _arena(self):
        if self.arena is None:
            raise ValueError("empty ObjectRef (made without put()): it names no object")
        return self.arena

    @property
    def store(self):
        return self._arena().name

    def __hash__(self):
        return hash((self._arena().name, self.offset, self.generation))

    def __eq__(self, other):
        if type(other) is not ObjectRef:
            return NotImplemented
        return (self.arena is (<ObjectRef>other).arena and self.offset == (<ObjectRef>other).offset
                and self.generation == (<ObjectRef>other).generation)

    def __repr__(self):
        if self.arena is None:
            return "ObjectRef(<empty>)"
        return f"ObjectRef({self.arena.name}, offset={self.offset}, generation={self.generation})"

    def __reduce__(self):
        return (_ref_from_pickle, (self._arena().name, self.offset, self.generation))

    def get(self):
        return self._arena().read(self.offset, False)


def ref_to_wire(ObjectRef ref):
    """The codec serializer of ObjectRef: while a message is being put, it records the ref so the message holds a
    count on it."""
    ref._arena()
    if _collecting is not None:
        if _putting_into is not None and ref.arena is not _putting_into:
            raise ValueError(f"{ref!r} belongs to another store ({ref.arena.name}); a ref can travel only in "
                             f"messages of its own store: get() the object and send it instead")
        _collecting.append(ref)
    return (ref.arena.name, ref.offset, ref.generation)


# Registered by actors._store (set_ref_resolver): _resolve(name, attach) is the mapped Arena of the store `name`;
# with `attach`, a store this process has not mapped yet is attached (validated), else such a name is refused.
_resolve = None


def set_ref_resolver(resolver):
    """Register `resolver(store name, attach) -> Arena`, which decoded refs use to find their store. The store core
    cannot map a segment by name itself (naming and attaching belong to `actors._store`), so the owner registers
    it."""
    global _resolve
    _resolve = resolver


def record_layout():
    """The record layout and kinds this module was compiled with (from `_records.pxd`), for checking that the
    Python side (`actors._wire.protocol`) declares the same."""
    return {"size": RECORD_SIZE, "kind_at": RECORD_KIND_AT, "src_at": RECORD_SRC_AT, "call_at": RECORD_CALL_AT,
            "TELL": KIND_TELL, "REPLY": KIND_REPLY, "ERROR": KIND_ERROR, "STOP": KIND_STOP, "HELLO": KIND_HELLO,
            "NODE_GONE": KIND_NODE_GONE}


def split_records(bytearray buf, Py_ssize_t n):
    """The records in the first `n` bytes of `buf` (a whole number of them), as (offset, kind, src, call) tuples:
    (work, control). Control records are the ones a reader acts on itself, in order: replies and errors for its
    asks, and the records with no payload (HELLO to ACK, STATUS, NODE_GONE); work is the rest, for the handler.
    `control` is None when there are none (a stream of tells). One call per read, not a loop of Python per record."""
    cdef const char* p = PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t at
    cdef uint64_t off, call
    cdef uint32_t kind, src
    cdef list work = []
    cdef list control = None
    if n < 0 or n > PyByteArray_GET_SIZE(buf) or n % RECORD_SIZE:
        raise ValueError(f"not a whole number of records in the buffer: {n} bytes")
    for at in range(0, n, RECORD_SIZE):
        memcpy(&off, p + at, 8)
        memcpy(&kind, p + at + RECORD_KIND_AT, 4)
        memcpy(&src, p + at + RECORD_SRC_AT, 4)
        memcpy(&call, p + at + RECORD_CALL_AT, 8)
        rec = (off, kind, src, call)
        PyObject_GC_UnTrack(rec)        # ints only: the collector need not look at it (a batch has thousands)
        if kind == KIND_REPLY or kind == KIND_ERROR or KIND_HELLO <= kind <= KIND_NODE_GONE:
            if control is None:
                control = []
            control.append(rec)
        else:
            work.append(rec)
    return work, control


def _ref_from_pickle(name, offset, generation):
    # pickle runs whatever code its bytes name anyway, so a pickled ref may attach the store it names
    return _resolve(name, True).checked_ref(offset, generation)


def ref_from_wire(value):
    """The codec deserializer of ObjectRef: bytes from anywhere may carry it, so it only names a store this process
    already has (its own, or one it attached); any other name is refused, never opened."""
    if (type(value) is not tuple or len(value) != 3 or type(value[0]) is not str or type(value[1]) is not int
            or type(value[2]) is not int or value[1] < 0 or value[2] < 0 or value[1].bit_length() > 64
            or value[2].bit_length() > 64):
        raise ValueError("corrupted ObjectRef")
    return _resolve(value[0], False).checked_ref(value[1], value[2])
