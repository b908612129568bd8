"""The shared-memory object store, across real processes and real shared memory."""
import gc
import multiprocessing as mp
import os
import pickle
import re
import signal
import struct
import subprocess
import shutil
import sys
import tempfile
import textwrap

import numpy as np
import posix_ipc
import pytest

import actors
from _fastser import _shm
from actors import _store
from _helpers.processes import as_other_user, leftover_segments

CTX = mp.get_context("spawn")
TIMEOUT = 60


def _run(target, *args):
    proc = CTX.Process(target=target, args=args)
    proc.start()
    proc.join(TIMEOUT)
    assert proc.exitcode == 0, f"child exited with {proc.exitcode}"


def _child_get(name, ref, expected, q):
    store = actors.ObjectStore.attach(name)
    value = store.get(ref)
    q.put(value == expected if not isinstance(expected, np.ndarray) else bool((value == expected).all()))
    q.put(bool(isinstance(value, np.ndarray) and not value.flags.writeable))


def test_put_get_roundtrip(store):
    obj = {"id": 1, "values": [1.0, 2.0], "blob": b"x" * 100_000, "nested": (1, {2, 3})}
    ref = store.put(obj)
    assert store.get(ref) == obj
    assert actors.get(ref) == obj


def test_ref_is_small_hashable_and_equal_to_itself(store):
    ref = store.put(1)
    assert hash(ref) == hash(ref)
    assert ref == ref
    assert {ref: 1}[ref] == 1
    assert ref != store.put(1)


def test_numpy_comes_back_as_readonly_view_into_shm(store):
    arr = np.arange(1000.0)
    out = store.get(store.put(arr))
    assert (out == arr).all()
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out.flags.writeable = True
    with pytest.raises(ValueError):
        out[0] = 5
    assert out.ctypes.data % 64 == 0
    assert (out.copy() + 1)[0] == 1.0


def test_ref_read_in_another_process(store):
    arr = np.arange(100_000, dtype=np.int32)
    ref = store.put(arr)
    q = CTX.Queue()
    _run(_child_get, store.name, ref, arr, q)
    assert q.get(timeout=TIMEOUT) is True
    assert q.get(timeout=TIMEOUT) is True


def test_released_when_no_ref_and_no_view_remains(store):
    ref = store.put({"a": np.zeros(1000)})
    view = store.get(ref)["a"]
    assert store.stats()["objects"] == 1
    del ref
    gc.collect()
    assert store.stats()["objects"] == 1, "a live view keeps the object"
    assert view.sum() == 0
    del view
    gc.collect()
    assert store.stats()["objects"] == 0
    assert store.stats()["used"] == 0


def test_with_frees_deferred_a_large_block_goes_back_at_once_and_a_small_one_at_the_flush(store):
    # An actor defers its frees to the end of each batch; a large block (64 KiB or more) is freed at once instead,
    # so that its sender's next message reuses it, warm, rather than taking fresh memory.
    arena = store._arena
    arena.defer_frees = True
    try:
        small, large = store.put(b"x" * 100), store.put(bytes(64 << 10))
        del large
        gc.collect()
        assert arena.deferred_frees == 0, "the large block is freed at once"
        del small
        gc.collect()
        assert arena.deferred_frees == 1, "the small block waits for the flush"
        arena.flush_frees()
        assert arena.deferred_frees == 0
    finally:
        arena.defer_frees = False
    assert store.stats()["objects"] == 0 and store.stats()["used"] == 0


def test_alive_tells_whether_a_block_still_holds_the_object_of_its_generation(store):
    arena = store._arena
    ref = store.put(bytes(1 << 16))
    off, generation = ref.offset, ref.generation
    assert arena.alive(off, generation)
    assert not arena.alive(off, generation + 1)
    del ref
    gc.collect()
    assert not arena.alive(off, generation)
    again = store.put(bytes(1 << 16))          # the same block, reused: another generation
    assert again.offset == off and not arena.alive(off, generation) and arena.alive(off, again.generation)
    assert not arena.alive(arena.capacity, generation)


def test_ref_inside_message_keeps_object_alive(store):
    inner = store.put("payload")
    outer = store.put({"ref": inner})
    del inner
    assert store.stats()["objects"] == 2
    got = store.get(outer)["ref"]
    assert store.get(got) == "payload"
    del got, outer
    gc.collect()
    assert store.stats()["objects"] == 0


def test_stale_ref_is_a_clear_error(store):
    ref = store.put("x")
    wire = ref.__reduce__()
    del ref
    with pytest.raises(actors.StaleRefError, match=re.escape(
            f"stale object ref (offset 0, generation 1) in store {store.name}: the object was released, or the "
            f"ref was never valid; keep a ref alive for as long as the object is needed")):
        wire[0](*wire[1])


def test_forged_ref_is_a_clear_error(store):
    keep = store.put("x" * 1000)
    fn, (name, offset, generation) = keep.__reduce__()
    for off, gen in [(offset, generation + 1), (offset + 64, generation), (offset + 3, generation),
                     (1 << 40, 1)]:
        with pytest.raises(actors.StaleRefError):
            fn(name, off, gen)
    assert store.get(keep) == "x" * 1000


def test_reused_memory_gives_new_generation(store):
    ref = store.put("a")
    fn, (name, offset, generation) = ref.__reduce__()
    del ref
    again = store.put("b")
    _, (_, offset2, generation2) = again.__reduce__()
    assert offset2 == offset and generation2 != generation
    with pytest.raises(actors.StaleRefError):
        fn(name, offset, generation)


def test_oversize_object_raises_at_once(store):
    with pytest.raises(actors.StoreFullError, match=re.escape(
            "cannot put an object of 76.3 MiB: it is larger than the whole store (64.0 MiB); use a larger "
            "capacity")):
        store.put(np.zeros(10_000_000))


def test_full_store_waits_then_raises_and_keeps_what_is_stored(store):
    held = [store.put(np.full(1_000_000, i, dtype=np.float64)) for i in range(7)]    # 7 blocks of 8 MiB
    with pytest.raises(actors.StoreFullError, match=r"the store stayed full for 0.2 s"):
        store.put(np.zeros(2_000_000), timeout=0.2)
    for i, ref in enumerate(held):
        assert (store.get(ref) == i).all()
    del held[0]
    assert store.get(store.put(np.zeros(500_000), timeout=1)).shape == (500_000,)


def test_put_waits_for_space_freed_by_another_process(store):
    filler = [store.put(np.zeros(1_000_000)) for _ in range(7)]
    fn, args = filler[0].__reduce__()
    # hand one count to a child, which drops it after a moment
    store._arena.incref_id(args[1])
    proc = CTX.Process(target=_decref_later, args=(store.name, args[1], 0.3))
    proc.start()
    del filler[0]
    ref = store.put(np.ones(1_000_000), timeout=TIMEOUT)
    proc.join(TIMEOUT)
    assert proc.exitcode == 0
    assert store.get(ref).sum() == 1_000_000


def _decref_later(name, offset, delay):
    import time
    store = actors.ObjectStore.attach(name)
    time.sleep(delay)
    store._arena.decref_id(offset)


def _hammer(name, wire, rounds, barrier):
    fn, args = wire
    store = actors.ObjectStore.attach(name)
    barrier.wait(TIMEOUT)
    for _ in range(rounds):
        ref = fn(*args)
        view = store.get(ref)
        assert view.shape == (1000,)
        del ref, view


def test_concurrent_get_and_drop_from_several_processes(store):
    ref = store.put(np.arange(1000.0))
    wire = ref.__reduce__()
    barrier = CTX.Barrier(4)
    procs = [CTX.Process(target=_hammer, args=(store.name, wire, 2000, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    assert store.stats()["objects"] == 1
    assert (store.get(ref) == np.arange(1000.0)).all()
    del ref
    gc.collect()
    assert store.stats()["objects"] == 0


def test_leak_loop_one_million_cycles_does_not_grow(store):
    msg = {"id": 1, "name": "sensor-7", "values": [1.0, 2.0, 3.0], "arr": np.arange(16.0)}
    for _ in range(1000):          # warm up: allocator free lists, caches
        store.get(store.put(msg))
    base_rss = _rss()
    base = store.stats()
    for _ in range(1_000_000):
        ref = store.put(msg)
        store.get(ref)
        del ref
    after = store.stats()
    assert after["objects"] == 0
    assert after["used"] == 0
    assert after["high_water"] == base["high_water"]
    assert _rss() - base_rss < 8 << 20


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_segment_is_owner_only(store):
    mode = os.stat(os.path.join(_store.SHM_DIR, store.name)).st_mode & 0o777
    assert mode == 0o600


def test_clean_close_unlinks():
    with actors.ObjectStore(capacity="1M") as s:
        name = s.name
        assert name in _store.our_segments()
    assert name not in _store.our_segments()


def test_shared_array_is_sent_without_copy(store):
    arr = actors.shared_array((100, 10), np.float32)
    arr[:] = 3
    before = store.stats()["objects"]
    ref = actors.put(arr)
    assert store.stats()["objects"] == before, "no new block: the array is the message"
    assert not arr.flags.writeable
    out = actors.get(ref)
    assert np.shares_memory(out, arr)
    assert out.sum() == 3000
    del arr, out, ref
    gc.collect()
    assert store.stats()["objects"] == 0


def test_put_outside_a_store_is_a_clear_error():
    with pytest.raises(actors.ActorsError, match=re.escape(
            "no object store in this process: call put/get inside a running system (actors.run) or inside "
            "`with actors.ObjectStore():`")):
        actors.put(1)


def test_capacity_larger_than_dev_shm_is_a_clear_error():
    with pytest.raises(actors.ActorsError, match=r"is more than /dev/shm has free .*; ask for less"):
        actors.ObjectStore(capacity=1 << 50)


def test_small_dev_shm_default_capacity_message(monkeypatch):
    monkeypatch.setattr(_store, "_shm_free", lambda: 64 << 20)
    monkeypatch.delenv("ACTORS_STORE_CAPACITY", raising=False)
    with pytest.raises(actors.ActorsError, match=re.escape(
            "/dev/shm has only 64.0 MiB free, too little for the default store (256.0 MiB or more); give it more "
            "space (for Docker: docker run --shm-size=1g) or set a smaller capacity (ACTORS_STORE_CAPACITY=32M, "
            "or ObjectStore(capacity=...))")):
        actors.ObjectStore()


def test_stale_segment_removed_after_kill_9(tmp_path):
    script = textwrap.dedent("""
        import os, sys, time, actors
        s = actors.ObjectStore(capacity="1M")
        ref = s.put("x")
        print(s.name, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        name = proc.stdout.readline().strip()
        assert name in _store.our_segments()
        assert _store.owner_alive(name)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
    assert name in _store.our_segments(), "a killed owner cannot unlink"
    assert not _store.owner_alive(name)
    out = subprocess.run([sys.executable, "-m", "actors", "cleanup"], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    # Any store created meanwhile on this machine also removes stale segments; if none did, the command did.
    assert f"removed {name}" in out.stdout or "0 stale" in out.stdout
    assert name not in _store.our_segments()


def test_next_start_removes_stale_segments():
    name = "actors.999999999.1.store.deadbeef"
    posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=4096).close_fd()
    with actors.ObjectStore(capacity="1M"):
        assert name not in _store.our_segments()


# -- refs and stores named by bytes -----------------------------------------------------------------------------

def _segment(name, data=b"", size=None, owner=None):
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=size or max(len(data), 1))
    os.pwrite(shm.fd, data, 0)
    if owner is not None:
        os.fchown(shm.fd, owner, -1)
    shm.close_fd()


def _sibling_name(name):
    # a name of our format and of the same length as `name`, so it can replace it inside an encoded ref
    return name[:-1] + ("0" if name[-1] != "0" else "1")


def _unlink(name):
    try:
        posix_ipc.unlink_shared_memory("/" + name)
    except posix_ipc.ExistentialError:
        pass


def test_a_decoded_ref_never_attaches_a_store_this_process_has_not(store):
    name = _sibling_name(store.name)
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=_shm.layout(1 << 16)[2])
    try:
        _shm.Arena.map(shm, name, True, 1 << 16)        # a real store, but not one this process has attached
        data = actors.dumps(store.put("x")).replace(store.name.encode(), name.encode())
        with pytest.raises(actors.DecodeError, match=f"names store '{re.escape(name)}', which this process has "
                                                     f"not attached"):
            actors.loads(data)
        assert name not in _store._mapped
    finally:
        _unlink(name)


@pytest.mark.parametrize("forged", ["\0", "/", ".", "é"])
def test_a_decoded_ref_with_a_forged_store_name_is_a_decode_error(store, forged):
    data = actors.dumps(store.put("x"))
    name = store.name[:-1] + forged
    data = data.replace(store.name.encode(), name.encode()).replace(
        struct.pack("<I", len(store.name)) + name.encode(), struct.pack("<I", len(name.encode())) + name.encode())
    with pytest.raises(actors.DecodeError):
        actors.loads(data)


@pytest.mark.parametrize("name, match", [
    ("../../etc/passwd", "is not the name of an actors store"),
    ("actors.1.2.store.ab\0cd", "is not the name of an actors store"),
    ("actors.1.2.store." + "a" * 300, "is not the name of an actors store"),
    ("actors.999999999.1.store.deadbeef", "no longer exists"),
])
def test_attach_refuses_names_that_are_not_ours(name, match):
    with pytest.raises(actors.ActorsError, match=match):
        actors.ObjectStore.attach(name)


def _header(capacity=1 << 16, **change):
    table_off, arena_off, size = _shm.layout(capacity)
    fields = dict(magic=0x314152454e415241, capacity=capacity, arena_off=arena_off, table_off=table_off,
                  segment_size=size, max_order=capacity.bit_length() - 1 - 6, slots_off=4096)
    fields.update(change)
    # arena_header up to slots_off (arena.h): generation, used, high_water, objects and committed are zero
    return struct.pack("<QQQQQii5QQ", fields["magic"], fields["capacity"], fields["arena_off"], fields["table_off"],
                       fields["segment_size"], fields["max_order"], 0, 0, 0, 0, 0, 0, fields["slots_off"])


@pytest.mark.parametrize("data, size, match", [
    (b"", 100, "too small"),
    (b"", None, "bad magic"),
    (_header(capacity=3 << 16), None, "bad capacity"),
    (_header(arena_off=1 << 40), None, "layout does not match"),
    (_header(segment_size=1 << 40), None, "layout does not match"),
    (_header(max_order=40), None, "bad order"),
    (_header(slots_off=1 << 40), None, "layout does not match"),
], ids=["small", "magic", "capacity", "offsets", "size", "order", "slots"])
def test_attach_validates_the_header_before_using_it(store, data, size, match):
    name = _sibling_name(store.name)
    _segment(name, data, size or _shm.layout(1 << 16)[2])
    try:
        with pytest.raises(actors.ActorsError, match=match):
            actors.ObjectStore.attach(name)
        assert name not in _store._mapped
    finally:
        _unlink(name)


def test_attach_accepts_a_large_store(store):
    # 8 GiB of capacity (sparse: only the pages written are backed), as a default store on a large machine gets
    name = _sibling_name(store.name)
    capacity = 1 << 33
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=_shm.layout(capacity)[2])
    try:
        _shm.Arena.map(shm, name, True, capacity)
        attached = actors.ObjectStore.attach(name)
        assert attached.capacity == capacity
        attached.close()
    finally:
        _unlink(name)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a segment to another user takes root")
def test_attach_refuses_a_segment_of_another_user(store):
    name = _sibling_name(store.name)
    table_off, arena_off, size = _shm.layout(1 << 16)
    _segment(name, _header(), size, owner=65534)
    try:
        with pytest.raises(actors.ActorsError, match="belongs to uid 65534"):
            actors.ObjectStore.attach(name)
    finally:
        _unlink(name)


# -- misuse that must raise, not crash ----------------------------------------------------------------------------

def test_a_bare_object_ref_cannot_be_made():
    with pytest.raises(TypeError, match="ObjectRef cannot be created directly: put\\(\\) an object to get its ref"):
        actors.ObjectRef()


def test_an_empty_object_ref_raises_on_use():
    ref = actors.ObjectRef.__new__(actors.ObjectRef)
    assert repr(ref) == "ObjectRef(<empty>)"
    for use in (ref.get, lambda: hash(ref), lambda: actors.dumps(ref), lambda: actors.get(ref), lambda: ref.store,
                lambda: pickle.dumps(ref)):
        with pytest.raises((ValueError, actors.SerializationError), match="empty ObjectRef"):
            use()


def test_shared_array_dimensions(store):
    arr = store.shared_array((1,) * 40 + (3,), np.int8)
    assert arr.shape == (1,) * 40 + (3,)
    arr[...] = 7
    assert store.get(store.put(arr)).sum() == 21
    with pytest.raises(ValueError, match="a shared array has at most 64 dimensions, not 65"):
        store.shared_array((1,) * 65)
    assert store._arena.check() == []


# -- what a killed process held -----------------------------------------------------------------------------------

def _hold_and_wait(name, ref, ready):
    store = actors.ObjectStore.attach(name)
    held = [store.put(np.zeros(1 << 20, np.uint8)) for _ in range(8)]          # its own objects
    held += [store.get(ref), ref, store.shared_array((1000,))]                  # a view, a ref, a shared array
    held.append(store.put({"refs": held[:2]}))                                  # an object holding refs
    ready.set()
    while True:
        ready.wait(60)


def test_reclaim_releases_everything_a_killed_process_held(store):
    keep = store.put(np.arange(1000.0))
    baseline = store.stats()
    ready = CTX.Event()
    proc = CTX.Process(target=_hold_and_wait, args=(store.name, keep, ready))
    proc.start()
    try:
        assert ready.wait(TIMEOUT)
        with pytest.raises(ValueError, match=f"process {proc.pid} is still running"):
            store.reclaim(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(TIMEOUT)
    assert store.stats()["used"] >= baseline["used"] + 8 * (1 << 20)
    objects, counts = store.reclaim(proc.pid)
    assert (objects, counts) == (11, 12)       # 8 arrays, the shared one, the holder; `keep` by view and by ref
    after = store.stats()
    assert (after["used"], after["objects"]) == (baseline["used"], baseline["objects"])
    assert store.get(keep)[999] == 999.0
    assert store.reclaim(proc.pid) == (0, 0)
    assert store._arena.check() == []


# -- other users' segments, and this run's segments ---------------------------------------------------------------------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes files of, or runs as, another user")
STALE = "actors.999999999.1.store.deadbeef"       # a creator that is not alive: stale by its name


def make_segment(name, uid=None):
    posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=4096).close_fd()
    if uid is not None:
        os.chown(os.path.join(_store.SHM_DIR, name), uid, uid)


def exists(name):
    return os.path.exists(os.path.join(_store.SHM_DIR, name))


@root_only
def test_a_stale_segment_of_another_user_is_left_alone():
    make_segment(STALE, uid=65534)
    try:
        assert STALE not in _store.our_segments()
        assert STALE not in _store.cleanup()
        with actors.ObjectStore(capacity="1M"):
            pass
        assert exists(STALE)
    finally:
        posix_ipc.unlink_shared_memory("/" + STALE)


@root_only
def test_a_stale_segment_or_run_directory_of_another_user_blocks_no_one():
    make_segment(STALE)                                 # root's, as another user sees it
    rundir = os.path.join(tempfile.gettempdir(), "actors.999999999.1.stale")
    os.mkdir(rundir, 0o700)

    def as_nobody():
        with actors.ObjectStore(capacity="1M") as store:
            name = store.name
        from actors import _cli
        return name, _store.cleanup(), _store.cleanup_rundirs(), _cli.main(["cleanup"])

    try:
        name, removed, rundirs, code = as_other_user(as_nobody)
        assert name.startswith(_store.PREFIX) and not exists(name)
        assert (removed, rundirs, code) == ([], [], 0)
        assert exists(STALE) and os.path.isdir(rundir)
    finally:
        posix_ipc.unlink_shared_memory("/" + STALE)
        shutil.rmtree(rundir)


def test_the_leak_check_counts_this_runs_segments_only():
    tag = _store.segment_tag()
    assert tag, "tests/conftest.py tags this run's segments"
    other_run = f"actors.999999999.1.store.{'0' * 12}-deadbeef"
    this_run = f"actors.999999999.1.store.{tag}deadbeef"
    for name in (other_run, this_run):
        make_segment(name)
    try:
        found = leftover_segments()
        assert this_run in found and other_run not in found
    finally:
        for name in (other_run, this_run):
            posix_ipc.unlink_shared_memory("/" + name)
    # the tag reaches the run's subprocesses
    script = "import actors\nwith actors.ObjectStore(capacity='1M') as s: print(s.name)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(".")[4].startswith(tag), out.stdout


def test_a_segment_tag_that_cannot_go_in_a_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(_store.TAG_ENV, "a/b")
    with pytest.raises(actors.ActorsError, match=re.escape(
            "ACTORS_SEGMENT_TAG='a/b' cannot go in a segment name; use 1 to 32 letters or digits")):
        actors.ObjectStore(capacity="1M")
