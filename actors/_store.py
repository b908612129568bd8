"""The shared-memory object store: `put`/`get` by `ObjectRef`, capacity, waiting when full, and cleanup.

A store is one POSIX shared-memory segment (owner-only, mode 0600) holding a buddy-allocated arena; objects are
encoded straight into their blocks and read in place (`_fastser._shm`). Segment names carry the creating process's
pid and start time, so a later start, or `actors cleanup`, can tell a stale segment (its owner is dead) from a live
one and unlink it. Only this user's segments and run directories are touched: another user's are not ours to remove
(and a stale one of theirs must not stop us from starting).
"""
from __future__ import annotations

import os
import re
import secrets
import stat
import threading
import time

import numpy as np
import posix_ipc

from _fastser import _codec, _shm
from _fastser._shm import ObjectRef, StaleRefError
from actors._exceptions import ActorsError, StoreFullError

PREFIX = "actors."
SHM_DIR = "/dev/shm"
MIN_DEFAULT_CAPACITY = 256 << 20
MAX_DEFAULT_CAPACITY = 8 << 30
DEFAULT_PUT_TIMEOUT = 10.0


_start_time = _shm.start_time
_NAME = re.compile(r"actors\.[0-9]+\.[0-9]+\.[a-z]+\.(?:[A-Za-z0-9]{1,32}-)?[0-9a-f]+")   # see segment_name


TAG_ENV = "ACTORS_SEGMENT_TAG"


def segment_tag() -> str:
    """"<tag>-" from $ACTORS_SEGMENT_TAG, or "". A test run sets it to tell the segments it made (in any of its
    processes, dead or alive) from those of another run on the same machine."""
    tag = os.environ.get(TAG_ENV, "")
    if not tag:
        return ""
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", tag):
        raise ActorsError(f"{TAG_ENV}={tag!r} cannot go in a segment name; use 1 to 32 letters or digits")
    return f"{tag}-"


def segment_name(kind: str = "store") -> str:
    """A fresh segment name: actors.<pid>.<start time>.<kind>.<tag-><random> (the tag is optional)."""
    pid = os.getpid()
    return f"{PREFIX}{pid}.{_start_time(pid)}.{kind}.{segment_tag()}{secrets.token_hex(4)}"


def owner_alive(name: str) -> bool:
    """Is the process that created segment `name` still running?"""
    parts = name[len(PREFIX):].split(".")
    try:
        pid, start = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return True     # not a name we made: leave it alone
    return _start_time(pid) == start


def _owned(path: str, *, directory: bool = False) -> bool:
    """Is `path` this user's (and, if asked, a directory, not a link to one)?"""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_uid == os.geteuid() and (not directory or stat.S_ISDIR(st.st_mode))


def our_segments() -> list[str]:
    """Names of every actors segment in /dev/shm that this user owns, live or stale."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(PREFIX) and _owned(os.path.join(SHM_DIR, n)))


def cleanup(*, all_owners_dead_only: bool = True) -> list[str]:
    """Unlink every actors segment of ours whose creating process is dead; return their names."""
    removed = []
    for name in our_segments():
        if all_owners_dead_only and owner_alive(name):
            continue
        try:
            posix_ipc.unlink_shared_memory("/" + name)
            removed.append(name)
        except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
            pass        # gone meanwhile, or given away meanwhile: either way not ours to remove
    return removed


def cleanup_rundirs() -> list[str]:
    """Remove our socket directories (actors.<pid>.<start time>.*) of systems whose driver is dead."""
    import shutil
    import tempfile
    removed = []
    base = tempfile.gettempdir()
    for entry in os.listdir(base):
        path = os.path.join(base, entry)
        if entry.startswith(PREFIX) and _owned(path, directory=True) and not owner_alive(entry):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    return int(float(text.rstrip("KMGT")) * scale)


def _shm_free() -> int:
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def choose_capacity(capacity: int | str | None) -> int:
    """The store capacity to use: `capacity`, else $ACTORS_STORE_CAPACITY, else half of /dev/shm's free space up to
    8 GiB; rounded down to a power of two (the arena is a buddy allocator)."""
    free = _shm_free()
    explicit = capacity if capacity is not None else os.environ.get("ACTORS_STORE_CAPACITY")
    if explicit is not None:
        want = _parse_size(explicit) if isinstance(explicit, str) else int(explicit)
        if want < (1 << 16):
            raise ActorsError(f"store capacity {want} is too small; use at least 64 KiB")
        if want > free:
            raise ActorsError(
                f"store capacity {_fmt(want)} is more than /dev/shm has free ({_fmt(free)}); ask for less "
                f"(ObjectStore(capacity=...) or ACTORS_STORE_CAPACITY), or give /dev/shm more space")
    else:
        want = min(free // 2, MAX_DEFAULT_CAPACITY)
        if want < MIN_DEFAULT_CAPACITY:
            raise ActorsError(
                f"/dev/shm has only {_fmt(free)} free, too little for the default store "
                f"({_fmt(MIN_DEFAULT_CAPACITY)} or more); give it more space (for Docker: docker run "
                f"--shm-size=1g) or set a smaller capacity (ACTORS_STORE_CAPACITY=32M, or "
                f"ObjectStore(capacity=...))")
    return 1 << (want.bit_length() - 1)


# -- the stores this process has mapped ---------------------------------------------------------------------------

_lock = threading.Lock()
_mapped: dict[str, _shm.Arena] = {}
_current: ObjectStore | None = None


def _resolve(name: str, attach: bool = True) -> _shm.Arena:
    """The mapped store `name`. A store this process has not mapped yet is attached only with `attach` (a caller
    naming it: `ObjectStore.attach`, a pickled ref); a ref decoded from bytes names only a store this process
    already has, so hostile bytes never make it open a segment."""
    arena = _mapped.get(name)
    if arena is not None:
        return arena
    if not attach:
        raise StaleRefError(f"the ref names store {name!r}, which this process has not attached (not its "
                            f"system's store); attach it first with ObjectStore.attach(name)")
    with _lock:
        arena = _mapped.get(name)
        if arena is None:
            arena = _mapped[name] = _attach(name)
    return arena


def _attach(name: str) -> _shm.Arena:
    # Only a name of ours, a segment of ours (our uid, a regular file) and a header that checks out get mapped.
    if type(name) is not str or not _NAME.fullmatch(name) or len(name) > 200:
        raise ActorsError(f"{name!r} is not the name of an actors store (actors.<pid>.<start>.<kind>.<hex>)")
    try:
        shm = posix_ipc.SharedMemory("/" + name)
    except posix_ipc.ExistentialError:
        raise StaleRefError(f"the store {name} no longer exists (its system shut down)") from None
    except posix_ipc.PermissionsError:
        raise ActorsError(f"the store {name} is not ours: no permission to open it") from None
    try:
        st = os.fstat(shm.fd)
        if st.st_uid != os.geteuid():
            raise ActorsError(f"the store {name} belongs to uid {st.st_uid}, not to us ({os.geteuid()}): refused")
        if not stat.S_ISREG(st.st_mode):
            raise ActorsError(f"the store {name} is not a shared-memory segment (mode {st.st_mode:o}): refused")
        return _shm.Arena.map(shm, name, False)
    except BaseException:
        shm.close_fd()
        raise


_shm.set_ref_resolver(_resolve)
_codec.register_class(ObjectRef, serializer=_shm.ref_to_wire, deserializer=_shm.ref_from_wire)


class ObjectStore:
    """A shared-memory object store, usable without any actors.

    `put(obj)` encodes `obj` straight into shared memory and returns an `ObjectRef`; `get(ref)` decodes it, in this
    process or any other that receives the ref (numpy arrays come back as read-only views into shared memory).
    Objects are immutable once put and live until no ref and no view of them remains anywhere.

    As a context manager it is also the process's current store (for `actors.put`/`actors.get`), and on exit it
    unlinks its segment.
    """

    def __init__(self, capacity: int | str | None = None, *, put_timeout: float = DEFAULT_PUT_TIMEOUT,
                 _attach: str | None = None):
        self.put_timeout = put_timeout
        if _attach is not None:
            self._arena = _resolve(_attach)
        else:
            cleanup()       # segments left by crashed systems
            capacity = choose_capacity(capacity)
            name = segment_name("store")
            table_off, arena_off, size = _shm.layout(capacity)
            shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=size)
            try:
                self._arena = _shm.Arena.map(shm, name, True, capacity)
            except BaseException:
                shm.unlink()
                raise
            with _lock:
                _mapped[name] = self._arena
        self.name = self._arena.name
        self._closed = False
        self._previous = None

    @classmethod
    def attach(cls, name: str) -> ObjectStore:
        """Use a store that another process created."""
        return cls(_attach=name)

    @property
    def capacity(self) -> int:
        return self._arena.capacity

    def stats(self) -> dict:
        """Bytes used, objects stored, capacity, and the highest byte ever used."""
        return self._arena.stats()

    def put(self, obj, *, timeout: float | None = None) -> ObjectRef:
        """Store `obj`; its `ObjectRef`. When the store is full, wait up to `timeout` seconds (default
        `put_timeout`) for space, then raise `StoreFullError`."""
        arena = self._arena
        if type(obj) is np.ndarray and isinstance(obj.base, _shm.SharedBlock) and obj.base.owns(obj):
            block = obj.base
            if block.arena is arena:
                obj.flags.writeable = False
                return arena.ref(*arena.put_shared(block))
        prepared = arena.prepare(obj)
        placed = arena.commit(prepared)
        if placed is None:
            placed = self._wait_for_room(prepared, timeout)
        return arena.ref(*placed)

    def _wait_for_room(self, prepared, timeout):
        arena = self._arena
        size = prepared[1]
        if size > arena.capacity:
            arena.abandon(prepared)
            raise StoreFullError(f"cannot put an object of {_fmt(size)}: it is larger than the whole store "
                                 f"({_fmt(arena.capacity)}); use a larger capacity")
        timeout = self.put_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            if time.monotonic() >= deadline:
                arena.abandon(prepared)
                st = arena.stats()
                raise StoreFullError(
                    f"cannot put an object of {_fmt(size)}: the store stayed full for {timeout:g} s "
                    f"({_fmt(st['used'])} of {_fmt(st['capacity'])} used by {st['objects']} objects); drop refs "
                    f"you no longer need, or use a larger capacity")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            placed = arena.commit(prepared)
            if placed is not None:
                return placed

    def get(self, ref: ObjectRef):
        """The object `ref` names. Arrays are read-only views into shared memory (`arr.copy()` for a writable
        one)."""
        if type(ref) is not ObjectRef:
            raise TypeError(f"get() takes an ObjectRef, not {type(ref).__qualname__}")
        return ref.get()

    def reclaim(self, pid: int) -> tuple[int, int]:
        """Release what process `pid` held in this store (refs, views, shared arrays) once it has died: a killed
        process's objects are not lost until the store is recreated. (objects, counts) released. ValueError if
        `pid` is still running."""
        return self._arena.reclaim(pid)

    def reclaim_dead(self) -> tuple[int, int]:
        """`reclaim` every process that used this store and is no longer running; (objects, counts) released."""
        return self._arena.reclaim_dead()

    def shared_array(self, shape, dtype=float) -> np.ndarray:
        """A writable numpy array allocated in shared memory: fill it in place, then `put` or send it with no copy
        (it becomes read-only then)."""
        shape = (shape,) if isinstance(shape, int) else tuple(int(n) for n in shape)
        arr = self._arena.shared_array(shape, dtype)
        if arr is None:
            raise StoreFullError(f"cannot allocate a shared array of shape {shape}: the store is full")
        return arr

    def close(self) -> None:
        """Unlink the store (if this process created it). Mappings stay until the last ref and view here die."""
        global _current
        if self._closed:
            return
        self._closed = True
        if _current is self:
            _current = self._previous
        with _lock:
            _mapped.pop(self.name, None)
        if self._arena.owner:
            try:
                posix_ipc.unlink_shared_memory("/" + self.name)
            except posix_ipc.ExistentialError:
                pass

    def __enter__(self) -> ObjectStore:
        global _current
        self._previous, _current = _current, self
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ObjectStore {self.name} capacity={_fmt(self.capacity)}>"


def current_store() -> ObjectStore:
    """This process's store: the running system's, or the innermost `with ObjectStore()`."""
    if _current is None:
        raise ActorsError("no object store in this process: call put/get inside a running system (actors.run) or "
                          "inside `with actors.ObjectStore():`")
    return _current


def set_current_store(store: ObjectStore | None) -> None:
    global _current
    _current = store


def put(obj, *, timeout: float | None = None) -> ObjectRef:
    """Store `obj` in this process's store; its `ObjectRef`."""
    return current_store().put(obj, timeout=timeout)


def get(ref: ObjectRef):
    """The object `ref` names, from whichever store holds it."""
    if type(ref) is not ObjectRef:
        raise TypeError(f"get() takes an ObjectRef, not {type(ref).__qualname__}")
    return ref.get()


def shared_array(shape, dtype=float) -> np.ndarray:
    """A writable numpy array in this process's store; see `ObjectStore.shared_array`."""
    return current_store().shared_array(shape, dtype)
