"""Persistent actors: the journal and snapshots (actors._persist.Journal, unit level), recovery after kill -9 of an
actor (chaos) and of the whole launcher, damaged journals and snapshots, the fsync policies, the errors of a
misconfigured persistent actor, and state through __getstate__/__setstate__.

The end-to-end tests run apps as a user does, `python -m actors run --resilience-dir DIR app.py ...` in a
subprocess (apps written to tmp_path), and kill real processes with SIGKILL. The journal format is checked against
its documentation (actors/_persist.py), with structs defined here.
"""
import glob
import json
import os
import random
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib

import numpy as np
import pytest
import trio
import trio.testing

import actors
from _fastser import _codec, _shm
from actors import ActorNotFoundError, ActorsError, SpawnError, _store
from actors._wire import protocol as mb
from actors._persist import Journal, PersistenceError
from _helpers.processes import CLI_TIMEOUT as TIMEOUT, env, gone, retry, run, run_cli, wait_gone, wait_until  # noqa: E402
from _helpers.processes import launched  # noqa: F401  (the fixture)
import _helpers.actors as helpers  # noqa: E402
from _helpers.processes import as_other_user  # noqa: E402
from chaos import persist_chaos  # noqa: E402



# The documented formats (actors/_persist.py), spelled out independently of the module's own structs.
HEAD = struct.Struct("<II")             # u32 length | u32 crc32(body)
BODY = struct.Struct("<QQQII")          # u64 seq | u64 sender epoch | u64 sender seq | u32 kind | u32 reserved
SNAP_HEAD = struct.Struct("<8sIQ")      # magic | u32 crc32(body) | u64 length
TELL, CALL = mb.TELL, mb.CALL


# -- helpers ----------------------------------------------------------------------------------------------------------

def write_app(tmp_path, source, name):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def run_app(app, resilience_dir, *args, timeout=TIMEOUT):
    """`python -m actors run --resilience-dir DIR app.py args...`; the CompletedProcess."""
    return run_cli("run", "--resilience-dir", resilience_dir, app, *args, cwd=app.parent, timeout=timeout)


def record(seq, message, *, epoch=0, sender_seq=0, kind=TELL):
    """One journal record, framed as documented."""
    body = BODY.pack(seq, epoch, sender_seq, kind, 0) + message
    return HEAD.pack(len(body), zlib.crc32(body)) + body


def records(path):
    """[(offset, seq, epoch, sender seq, kind, message bytes)] of a journal segment; every record must check out."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= HEAD.size, f"{path}: torn header at {pos}"
        length, crc = HEAD.unpack_from(data, pos)
        body = data[pos + HEAD.size:pos + HEAD.size + length]
        assert len(body) == length >= BODY.size and zlib.crc32(body) == crc, f"{path}: bad record at {pos}"
        seq, epoch, sender_seq, kind, reserved = BODY.unpack_from(body)
        assert reserved == 0
        out.append((pos, seq, epoch, sender_seq, kind, body[BODY.size:]))
        pos += HEAD.size + length
    return out


def segments(directory, name):
    """The journal segments of actor `name`, oldest first: [(first seq, path)]."""
    prefix = f"{name}.journal."
    found = [(int(e[len(prefix):]), os.path.join(directory, e)) for e in os.listdir(directory)
             if e.startswith(prefix) and e[len(prefix):].isdigit()]
    return sorted(found)


def snapshot_seq(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, crc, length = SNAP_HEAD.unpack_from(data)
    body = data[SNAP_HEAD.size:]
    assert magic == b"ACTSNAP1" and len(body) == length and zlib.crc32(body) == crc
    snap = _codec.loads(body)
    return snap["seq"], snap["state"], snap["seen"]


def lines_with(text, output):
    return [line for line in output.splitlines() if text in line]


def dead_segments():
    return [n for n in _store.our_segments() if not _store.owner_alive(n)]


# -- the journal, unit level ------------------------------------------------------------------------------------------

def dumps(obj):
    return _codec.dumps(obj)


def replayed(replay):
    return [(kind, _codec.loads(message)) for kind, message in replay]


def test_journal_append_sync_and_recover(tmp_path):
    j = Journal(str(tmp_path), "unit")
    assert j.recover() == (False, None, [])
    for i in range(20):
        assert j.append(0, 0, TELL, dumps(i)) == i + 1
    assert j.append(0, 0, CALL, dumps(("get", (), {}))) == 21
    j.sync()
    # synced: on disk exactly as documented, before any close
    [(first, path)] = segments(tmp_path, "unit")
    assert first == 1
    recs = records(path)
    assert [r[1] for r in recs] == list(range(1, 22))
    assert [(r[4], _codec.loads(r[5])) for r in recs] == [(TELL, i) for i in range(20)] + [(CALL, ("get", (), {}))]
    with open(path, "rb") as f:
        assert f.read(len(record(1, dumps(0)))) == record(1, dumps(0))
    j.close()

    again = Journal(str(tmp_path), "unit")
    restored, state, replay = again.recover()
    assert (restored, state) == (False, None)
    assert replayed(replay) == [(TELL, i) for i in range(20)] + [(CALL, ("get", (), {}))]
    assert again.seq == 21
    assert again.append(0, 0, TELL, dumps(20)) == 22        # numbering goes on after recovery
    again.close()
    third = Journal(str(tmp_path), "unit")
    assert replayed(third.recover()[2])[-1] == (TELL, 20)
    third.close()


def test_journal_sync_policies(tmp_path):
    def appends(policy):
        j = Journal(str(tmp_path / policy), "unit", fsync=policy)
        j.recover()
        start = j.syncs
        for i in range(5):
            j.append(0, 0, TELL, dumps(i))
        during = j.syncs - start
        j.flush()
        flushed = j.syncs - start
        j.sync()
        after = j.syncs - start
        j.close()
        return during, flushed, after

    assert appends("always") == (5, 5, 5)       # every append is durable at once
    assert appends("group") == (0, 0, 1)        # the batch is made durable by one sync
    assert appends("interval") == (0, 0, 1)     # flush hands records to the OS without syncing
    with pytest.raises(PersistenceError, match="unknown fsync policy 'sometimes'"):
        Journal(str(tmp_path), "unit", fsync="sometimes")


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_journal_names_must_be_plain_file_names(tmp_path, name):
    with pytest.raises(PersistenceError, match="plain file name"):
        Journal(str(tmp_path), name)


def test_journal_names_leave_room_for_the_longest_file_name(tmp_path):
    longest = "é" * 110 + "x"                           # 221 bytes in UTF-8: its files' names fit in 255 bytes
    j = Journal(str(tmp_path), longest)
    j.recover()
    j.write_snapshot({"n": 1})
    j.close()
    with pytest.raises(PersistenceError) as info:
        Journal(str(tmp_path), longest + "x")
    assert str(info.value).endswith(
        "its name is 222 bytes long (UTF-8), and its files' names (<name>.journal.<seq>.dead, the longest) would "
        "pass the file system's limit of 255 bytes; use a name of at most 221 bytes"), str(info.value)


def test_write_snapshot_rotates_snapshots_and_segments(tmp_path):
    d = str(tmp_path)
    j = Journal(d, "rot")
    j.recover()
    for i in range(5):
        j.append(0, 0, TELL, dumps(i))
    j.write_snapshot({"upto": 5})
    assert os.path.exists(tmp_path / "rot.snapshot") and not os.path.exists(tmp_path / "rot.snapshot.prev")
    assert [s for s, _ in segments(d, "rot")] == [1, 6]
    assert j.since_snapshot == 0
    for i in range(5, 10):
        j.append(0, 0, TELL, dumps(i))
    j.write_snapshot({"upto": 10})
    assert snapshot_seq(tmp_path / "rot.snapshot")[:2] == (10, {"upto": 10})
    assert snapshot_seq(tmp_path / "rot.snapshot.prev")[:2] == (5, {"upto": 5})
    # records 1-5 are covered by both snapshots: their segment is gone; 6-10 are kept for the previous one
    assert [s for s, _ in segments(d, "rot")] == [6, 11]
    for i in range(10, 13):
        j.append(0, 0, TELL, dumps(i))
    j.close()
    assert not os.path.exists(tmp_path / "rot.snapshot.tmp")
    assert not glob.glob(str(tmp_path / "*.dead"))        # the segment a thread unlinks: gone once closed
    (tmp_path / "rot.journal.3.dead").write_bytes(b"left by a killed process")

    again = Journal(d, "rot")
    restored, state, replay = again.recover()
    assert restored and state == {"upto": 10}
    assert not os.path.exists(tmp_path / "rot.journal.3.dead")       # recovery removes it
    assert replayed(replay) == [(TELL, i) for i in range(10, 13)]
    assert again.seq == 13
    again.write_snapshot({"upto": 13})
    assert [s for s, _ in segments(d, "rot")] == [11, 14]
    assert snapshot_seq(tmp_path / "rot.snapshot.prev")[0] == 10
    again.close()


@pytest.mark.parametrize("damage", ["flipped byte", "bad magic", "truncated", "empty", "short body"])
def test_a_damaged_snapshot_falls_back_to_the_previous_one_and_the_journal(tmp_path, caplog, damage):
    d = str(tmp_path)
    j = Journal(d, "snap")
    j.recover()
    for i in range(8):
        j.append(0, 0, TELL, dumps(i))
        if i in (2, 5):
            j.write_snapshot({"items": list(range(i + 1))})
    j.close()
    path = tmp_path / "snap.snapshot"
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2 + SNAP_HEAD.size // 2] ^= 0xFF
    elif damage == "bad magic":
        data[:8] = b"NOTASNAP"
    elif damage == "truncated":
        data = data[:10]
    elif damage == "empty":
        data = b""
    else:
        data = data[:-3]
    path.write_bytes(bytes(data))
    expected_problem = {"flipped byte": "its checksum does not match (torn or corrupted)",
                        "bad magic": "it is not a snapshot (bad magic)", "truncated": "it is truncated",
                        "empty": "it is truncated", "short body": "its checksum does not match (torn or corrupted)"}

    again = Journal(d, "snap")
    restored, state, replay = again.recover()
    again.close()
    assert restored and state == {"items": [0, 1, 2]}        # the previous snapshot ...
    assert replayed(replay) == [(TELL, i) for i in range(3, 8)]     # ... and the journal after it
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"snapshot {path} is damaged: {expected_problem[damage]}; ignoring it"], warnings


def _journal_with(tmp_path, items, name="torn"):
    j = Journal(str(tmp_path), name)
    j.recover()
    for i in items:
        j.append(0, 0, TELL, dumps(i))
    j.close()
    [(_, path)] = segments(tmp_path, name)
    return path


def test_a_torn_last_record_at_every_length_recovers_the_good_prefix(tmp_path, caplog):
    items = [0, "a somewhat longer message", {"k": [1, 2, 3]}, "last one, torn " * 3]
    path = _journal_with(tmp_path, items)
    with open(path, "rb") as f:
        whole = f.read()
    last_at = records(path)[-1][0]
    good, last = whole[:last_at], whole[last_at:]
    assert len(last) > HEAD.size + BODY.size
    for cut in range(1, len(last)):
        with open(path, "wb") as f:
            f.write(good + last[:cut])
        caplog.clear()
        j = Journal(str(tmp_path), "torn")
        restored, state, replay = j.recover()
        assert replayed(replay) == [(TELL, i) for i in items[:-1]], cut
        assert j.seq == len(items) - 1
        kind = "a torn record header" if cut < HEAD.size else "a torn record"
        assert [r.getMessage() for r in caplog.records] == [
            f"journal {path}: {kind} at offset {last_at}; recovered up to there and cut the rest"], cut
        # the torn bytes are cut, and the journal goes on from the good prefix
        assert j.append(0, 0, TELL, dumps("again")) == len(items)
        j.close()
        assert [r[1] for r in records(path)] == list(range(1, len(items) + 1)), cut
    # the whole record again: no warning, everything back
    with open(path, "wb") as f:
        f.write(whole)
    caplog.clear()
    j = Journal(str(tmp_path), "torn")
    assert replayed(j.recover()[2]) == [(TELL, i) for i in items]
    j.close()
    assert not caplog.records


@pytest.mark.parametrize("where", ["body", "crc", "length"])
def test_a_corrupted_record_recovers_the_records_before_it(tmp_path, caplog, where):
    items = list(range(10))
    path = _journal_with(tmp_path, items, name="corrupt")
    at = records(path)[6][0]
    data = bytearray(open(path, "rb").read())
    if where == "body":
        data[at + HEAD.size + BODY.size] ^= 0x40        # the message
    elif where == "crc":
        data[at + 4] ^= 0x01
    else:
        struct.pack_into("<I", data, at, 3)             # shorter than a record body can be
    open(path, "wb").write(bytes(data))
    j = Journal(str(tmp_path), "corrupt")
    assert replayed(j.recover()[2]) == [(TELL, i) for i in range(6)]
    j.close()
    problem = "a torn record" if where == "length" else "a corrupted record (checksum mismatch)"
    assert [r.getMessage() for r in caplog.records] == [
        f"journal {path}: {problem} at offset {at}; recovered up to there and cut the rest"]
    assert os.path.getsize(path) == at


def test_duplicates_are_detected_by_sender_epoch_and_seq(tmp_path):
    d = str(tmp_path)
    a, b = 0xA11CE, 0xB0B
    j = Journal(d, "dup")
    j.recover()
    for seq in range(1, 6):
        j.append(a, seq, TELL, dumps(("a", seq)))
    j.append(b, 100, TELL, dumps(("b", 100)))
    j.append(0, 0, CALL, dumps(("get", (), {})))
    assert j.is_duplicate(a, 1) and j.is_duplicate(a, 5)
    assert not j.is_duplicate(a, 6)
    assert j.is_duplicate(b, 100) and j.is_duplicate(b, 7) and not j.is_duplicate(b, 101)
    assert not j.is_duplicate(0xC, 1)               # another sender (epoch) numbers its tells apart
    assert not j.is_duplicate(0, 0) and not j.is_duplicate(0, 1)   # unnumbered records are never duplicates
    j.close()

    again = Journal(d, "dup")                       # the journal remembers what it has seen ...
    again.recover()
    assert again.is_duplicate(a, 5) and not again.is_duplicate(a, 6) and again.is_duplicate(b, 100)
    again.write_snapshot({"n": 7})
    again.close()
    for segment in segments(d, "dup")[:-1]:          # ... and so do its snapshots, once the journal is gone
        os.unlink(segment[1])
    third = Journal(d, "dup")
    restored, state, replay = third.recover()
    assert restored and state == {"n": 7} and replay == []
    assert third.is_duplicate(a, 5) and not third.is_duplicate(a, 6) and third.is_duplicate(b, 99)
    assert snapshot_seq(tmp_path / "dup.snapshot")[2] == {a: 5, b: 100}
    third.close()


def test_the_actors_batch_framing_matches_the_journal_format(tmp_path, store):
    """A persistent actor journals a batch with Arena.journal_records (Cython): same bytes as Journal.append, and
    tells already journaled (sender seq at most the last seen for that epoch) are dropped and released."""
    arena = store._arena
    epoch = 77
    out = bytearray()
    messages = [("tell", i) for i in range(6)]
    for seq, msg in enumerate(messages, 1):
        assert arena.post_record(msg, out, TELL, 3, seq) > 0
    assert arena.post_record(("get", (), {}), out, CALL, 3, 99) > 0
    batch = [mb.RECORD.unpack_from(out, i * mb.RECORD_SIZE) for i in range(len(out) // mb.RECORD_SIZE)]
    before = store.stats()["objects"]
    framed = bytearray()
    keep, last, ack = arena.journal_records(batch, epoch, 2, 40, framed)   # tells 1 and 2 were journaled
    assert keep == batch[2:]
    assert (last, ack) == (45, 6)
    assert store.stats()["objects"] == before - 2           # the duplicates were released
    expected = b"".join(record(40 + i, _codec.dumps(messages[i + 1]), epoch=epoch, sender_seq=i + 2)
                        for i in range(1, 5))
    expected += record(45, _codec.dumps(("get", (), {})), kind=CALL)
    assert bytes(framed) == expected
    for off, *_ in keep:
        arena.decref_id(off)

    j = Journal(str(tmp_path), "framed")
    j.recover()
    j.seq = 40
    j.append_framed(framed, last, epoch, ack, last - 40)
    assert j.is_duplicate(epoch, 6) and not j.is_duplicate(epoch, 7)
    j.close()
    [(_, path)] = segments(tmp_path, "framed")
    assert open(path, "rb").read() == expected


def test_a_written_batch_is_in_the_file_at_once_and_durable_only_after_durable(tmp_path, store):
    """A persistent actor's reader writes a batch (`write_batch`: the disk starts on it), decodes meanwhile, and
    handles nothing before `durable` returns: the batch is in the file (safe from a crash of the process) and
    counts as unsynced until then, and `durable` syncs it with one fsync."""
    arena = store._arena
    out = bytearray()
    for seq in range(1, 4):
        assert arena.post_record(("tell", seq), out, TELL, 3, seq) > 0
    batch = [mb.RECORD.unpack_from(out, i * mb.RECORD_SIZE) for i in range(3)]
    j = Journal(str(tmp_path), "halves")
    j.recover()
    syncs = j.syncs
    keep, ack = j.write_batch(arena, batch, 77, bytearray())
    assert (keep, ack) == (batch, 3)
    assert j.dirty and j.syncs == syncs
    [(_, path)] = segments(tmp_path, "halves")
    assert [(r[3], r[-1]) for r in records(path)] == [(seq, _codec.dumps(("tell", seq))) for seq in range(1, 4)]
    j.durable()
    assert not j.dirty and j.syncs == syncs + 1
    j.close()
    for off, *_ in keep:
        arena.decref_id(off)
    with pytest.raises(OSError):
        _shm.start_writeback(-1)


def test_an_ack_releases_the_held_tells_up_to_its_seq_and_no_further(store):
    """A sender holds a count on each tell to a persistent actor until it is acked (Arena.post_held,
    Arena.release_acked): an ack for seq 3 frees tells 1 to 3 (the receiver's counts are gone already), keeps 4
    and 5, and an ack at or below what was acked already releases nothing."""
    import itertools
    arena = store._arena
    out = bytearray()
    held = _shm.Held()
    calls = itertools.count(1)
    for seq in range(1, 6):
        assert arena.post_held(("tell", seq), out, 3, calls, held) > 0
    records = [mb.RECORD.unpack_from(out, i * mb.RECORD_SIZE) for i in range(5)]
    assert [(kind, src, call) for _off, kind, src, call in records] == [(TELL, 3, seq) for seq in range(1, 6)]
    assert list(held) == [(seq, off) for off, _kind, _src, seq in records]
    base = store.stats()["objects"] - 5
    for off, *_ in records:
        arena.decref_id(off)                # the receiver's counts: handled
    assert store.stats()["objects"] == base + 5     # still held by the sender
    arena.release_acked(held, 3)
    assert [seq for seq, _ in held] == [4, 5] and len(held) == 2
    assert store.stats()["objects"] == base + 2
    arena.release_acked(held, 3)
    assert [seq for seq, _ in held] == [4, 5] and store.stats()["objects"] == base + 2
    arena.release_acked(held, 9)
    assert not held and store.stats()["objects"] == base


def test_held_tells_outgrow_their_first_room_and_stay_in_order(store):
    """Thousands of held tells, acked a part at a time while more are posted (the array grows, and moves what is
    left to its front): the pairs stay in seq order, and every count is released exactly once."""
    import itertools
    arena = store._arena
    held = _shm.Held()
    calls = itertools.count(1)
    base = store.stats()["objects"]
    out = bytearray()
    for round_ in range(20):
        for _ in range(300):
            assert arena.post_held(round_, out, 3, calls, held) > 0
        for off, *_ in mb.RECORD.iter_unpack(out):
            arena.decref_id(off)            # the receiver's counts
        out.clear()
        arena.release_acked(held, 150 * (round_ + 1))
        seqs = [seq for seq, _ in held]
        assert seqs == list(range(150 * (round_ + 1) + 1, 300 * (round_ + 1) + 1))
        assert store.stats()["objects"] == base + len(seqs)
    arena.release_newest(held)
    assert [seq for seq, _ in held][-1] == 5999 and store.stats()["objects"] == base + len(held)
    assert arena.release_held(held) == 2999
    assert not held and store.stats()["objects"] == base


def test_journal_checksums_are_zlib_crc32_of_the_same_bytes(tmp_path, store):
    """The journal's CRC-32 is zlib's, for records small and large (those checksummed with the GIL released), so
    journals written before and after recover alike, whichever way the CPU computes it."""
    from _fastser import _shm
    rng = random.Random(11)
    # every length up to 300 (folded 16 bytes at a time from 64 on, the tail by table), at every alignment
    data = rng.randbytes(320)
    for start in range(16):
        for n in range(300):
            chunk = memoryview(data)[start:start + n]
            assert _shm.crc32(chunk, 0) == zlib.crc32(chunk, 0), (start, n)
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 4095, 65535, 65536, 65537, 3 << 20):
        data = rng.randbytes(n)
        for seed in (0, 1, 0xFFFFFFFF, 0x12345678):
            assert _shm.crc32(data, seed) == zlib.crc32(data, seed), (n, seed)

    arena = store._arena
    out = bytearray()
    payloads = [rng.randbytes(n) for n in (10, 65536, 2 << 20)]
    for seq, payload in enumerate(payloads, 1):
        assert arena.post_record(payload, out, TELL, 3, seq) > 0
    batch = [mb.RECORD.unpack_from(out, i * mb.RECORD_SIZE) for i in range(len(out) // mb.RECORD_SIZE)]
    framed = bytearray()
    keep, last, _ = arena.journal_records(batch, 5, 0, 0, framed)
    assert last == 3
    assert bytes(framed) == b"".join(record(i + 1, _codec.dumps(payloads[i]), epoch=5, sender_seq=i + 1)
                                     for i in range(3))
    for off, *_ in keep:
        arena.decref_id(off)


# -- apps -------------------------------------------------------------------------------------------------------------

COUNTER_APP = """
    import os, random, signal, sys, time
    import trio
    import actors

    N, KILLS, SEED, FSYNC = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    PACE, MAX_DELAY, SENDER, BUSY = int(sys.argv[5]), float(sys.argv[6]), sys.argv[7], float(sys.argv[8])


    PIDFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "counter.pid")
    noted = False


    class Counter(actors.Actor):
        persistent = True
        restart = "always"
        max_restarts = 1000
        restart_backoff = 0.001         # doubles with each restart within the window: keep a dozen of them quick
        snapshot_every = 2000

        def __init__(self):
            self.count = 0

        async def receive(self, n):
            global noted
            if not noted:               # this process handles messages: started, and a target for the next kill
                noted = True
                with open(PIDFILE + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(PIDFILE + ".tmp", PIDFILE)
            self.count += n

        async def get(self):
            return self.count

        async def pid(self):
            return os.getpid()


    async def retry(call, timeout=60):
        # asks fail while the counter restarts: try again
        with trio.fail_after(timeout):
            while True:
                try:
                    return await call()
                except actors.ActorsError:
                    await trio.sleep(0.02)


    async def produce(counter, n):
        for i in range(n):
            await counter.tell(1)
            if i % PACE == PACE - 1:
                await trio.sleep(0.001)
        # asked after the tells on the same connection: answered once every one of them is handled
        return await retry(lambda: counter.proxy.get(timeout=10))


    class Producer(actors.Actor):
        async def run(self, counter, n):
            return await produce(counter, n)


    async def main(system):
        counter = await system.spawn(Counter, name="counter", options={"fsync": FSYNC})
        producer = await system.spawn(Producer, name="producer")
        rng = random.Random(SEED)
        done = trio.Event()
        seen = []
        kills = during = 0
        pid = None

        async def next_target(last):
            # the counter process that handles messages now, once it is not the one killed last (an ask would
            # wait behind every message already queued for the counter: the kill would land late)
            with trio.fail_after(60):
                while True:
                    try:
                        with open(PIDFILE) as f:
                            noted = int(f.read())
                    except FileNotFoundError:
                        noted = None
                    if noted is not None and noted != last:
                        return noted
                    if done.is_set():       # nothing left to handle: ask it
                        return await retry(lambda: counter.proxy.pid(timeout=10))
                    await trio.sleep(0.002)

        with trio.fail_after(150):
            async with trio.open_nursery() as nursery:
                async def sender():
                    if SENDER == "actor":
                        seen.append(await producer.proxy.run(counter, N))
                    else:           # the driver itself tells
                        seen.append(await produce(counter, N))
                    done.set()

                nursery.start_soon(sender)
                while kills < KILLS:
                    pid = await next_target(pid)
                    await trio.sleep(rng.uniform(0.005, MAX_DELAY))
                    sending = not done.is_set()
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue            # that incarnation already ended: aim at the next one
                    time.sleep(BUSY)        # the driver's loop does not run meanwhile (a loaded machine)
                    kills += 1
                    during += sending
                    print(f"kill {kills}: pid {pid}{' while sending' if sending else ''}", flush=True)
                await done.wait()
            final = await retry(lambda: counter.proxy.get(timeout=10))
            await trio.sleep(0.3)
            again = await retry(lambda: counter.proxy.get(timeout=10))
        print(f"producer saw {seen[0]}", flush=True)
        print(f"kills {kills}, while sending {during}", flush=True)
        print(f"final count {final} of {N}", flush=True)
        return 0 if seen[0] == final == again == N else 1
"""


def run_chaos(tmp_path, n, kills, fsync, pace, max_delay, sender="actor", busy=0.0):
    app = write_app(tmp_path, COUNTER_APP, "chaos_app.py")
    seed = random.randrange(1 << 30)
    res = tmp_path / "resilience"
    t0 = time.monotonic()
    proc = run_app(app, res, n, kills, seed, fsync, pace, max_delay, sender, busy)
    took = time.monotonic() - t0
    context = f"seed {seed}, {took:.1f} s\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc, res, context


def check_chaos(proc, res, context, n, kills):
    assert proc.returncode == 0, context
    out = proc.stdout.splitlines()
    assert f"final count {n} of {n}" in out, context
    assert f"producer saw {n}" in out, context
    killed = [line for line in out if line.startswith("kill ")]
    assert len(killed) == kills, context
    [summary] = [line for line in out if line.startswith("kills ")]
    during = int(summary.rsplit(" ", 1)[1])
    assert during >= 1, "no kill landed while the producer was sending; " + context
    # each kill was noticed and the counter restarted from its journal
    assert len(lines_with("actor 'counter' restarted", proc.stderr)) == kills, context
    assert len(lines_with("failed: killed by SIGKILL", proc.stderr)) == kills, context
    assert lines_with("[counter] INFO actors._runtime.worker: actor 'counter' recovered", proc.stderr), context
    assert "Traceback" not in proc.stderr, context
    return during


def test_chaos_kill_9_a_persistent_counter_during_100000_tells_loses_and_duplicates_nothing(tmp_path):
    n, kills = 100_000, 6
    proc, res, context = run_chaos(tmp_path, n, kills, "group", pace=400, max_delay=0.15)
    during = check_chaos(proc, res, context, n, kills)
    print(f"{kills} kills, {during} while sending; {context.splitlines()[0]}")


def test_chaos_with_the_driver_telling_and_busy_while_the_counter_dies(tmp_path):
    """The driver itself tells the counter, and its loop does not run for a moment after each kill (a loaded
    machine): the end of its connection to the counter and the news of the counter's exit then reach it together,
    in either order (trio runs a batch of ready tasks in either order). Its tells must still be held and resent."""
    n, kills = 50_000, 10
    proc, res, context = run_chaos(tmp_path, n, kills, "group", pace=10, max_delay=0.05, sender="driver", busy=0.25)
    during = check_chaos(proc, res, context, n, kills)
    assert during >= 8, context


@pytest.mark.parametrize("fsync", ["always", "group", "interval"])
def test_every_fsync_policy_recovers_after_kill_9(tmp_path, fsync):
    n, kills = 5_000, 3
    proc, res, context = run_chaos(tmp_path, n, kills, fsync, pace=25, max_delay=0.08)
    check_chaos(proc, res, context, n, kills)


def test_chaos_kill_9_of_persistent_receivers_and_their_senders_loses_and_doubles_nothing():
    """A short run of tests/chaos/persist_chaos.py (which runs hundreds of kills from the command line): receivers
    of every fsync policy and their senders killed at random, some again during their recovery."""
    seed = random.randrange(1 << 30)
    killed, applied, problems = persist_chaos.run(40, seed=seed)
    assert problems == [], f"seed {seed}: {killed}"
    assert killed["receiver"] and killed["sender"] and applied, (seed, killed, applied)


LAUNCHER_APP = """
    import sys
    import actors

    TOTAL = int(sys.argv[1])


    class Counter(actors.Actor):
        persistent = True
        snapshot_every = 5000

        def __init__(self):
            self.count = 0

        async def receive(self, n):
            self.count += n

        async def get(self):
            return self.count


    async def main(system):
        counter = await system.spawn(Counter, name="counter")
        recovered = await counter.proxy.get(timeout=60)
        print(f"recovered {recovered}", flush=True)
        for i in range(TOTAL - recovered):
            await counter.tell(1)
            if i % 10_000 == 0:
                print(f"sent {i}", flush=True)
        final = await counter.proxy.get(timeout=60)
        print(f"final count {final} of {TOTAL}", flush=True)
        return 0 if final == TOTAL else 1
"""


def test_kill_9_of_the_launcher_while_it_sends_then_restart_reaches_the_exact_total(tmp_path, launched):
    total, kills = 400_000, 3
    app = write_app(tmp_path, LAUNCHER_APP, "launcher_app.py")
    res = tmp_path / "resilience"
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    recovered = []
    killed_launchers = []
    for attempt in range(kills + 1):
        p = launched("run", "--resilience-dir", res, app, total, cwd=app.parent)
        line = p.wait_for(lambda s: s.startswith("recovered "), "'recovered'")
        recovered.append(int(line.split()[1]))
        # the stale segments and socket directory of the launcher killed before were removed by this start
        for pid in killed_launchers:
            assert not [n for n in _store.our_segments() if n.startswith(f"{_store.PREFIX}{pid}.")], seed
        if attempt == kills:
            break
        # kill it at a random moment while it sends: after a random number of progress lines, plus a little
        mark = f"sent {rng.randrange(2, 10) * 10_000}"
        p.wait_for(lambda s: s == mark, repr(mark))
        time.sleep(rng.uniform(0, 0.02))
        tree = p.tree()
        assert len(tree) >= 2, tree                 # the fork server and the counter (at least)
        os.kill(p.proc.pid, signal.SIGKILL)
        assert p.wait(30) == -signal.SIGKILL
        assert not any(line.startswith("final count") for line in p.lines), (seed, p.lines[-5:])
        # the fork server takes the actors with it: nothing of that system is left running
        assert wait_gone(tree) == [], (seed, tree)
        killed_launchers.append(p.proc.pid)

    code = p.wait()
    context = f"seed {seed}, recovered {recovered}, stdout {p.lines[-5:]}, stderr {p.stderr()[-3000:]}"
    assert code == 0, context
    assert f"final count {total} of {total}" in p.lines, context
    assert recovered[0] == 0, context
    assert all(0 < c < total for c in recovered[1:]), context
    assert recovered == sorted(recovered), context  # nothing journaled is ever lost
    assert "Traceback" not in p.stderr(), context
    print(f"recovered counts {recovered} of {total}; seed {seed}")

    cleanup = subprocess.run([sys.executable, "-m", "actors", "cleanup"], env=env(), capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert cleanup.returncode == 0, cleanup.stderr
    assert dead_segments() == [], cleanup.stdout
    for pid in killed_launchers:
        assert not glob.glob(os.path.join(tempfile.gettempdir(), f"{_store.PREFIX}{pid}.*")), pid


LOG_APP = """
    import json, sys
    import actors

    COUNT, SNAPSHOT_EVERY = int(sys.argv[1]), int(sys.argv[2])


    class Log(actors.Actor):
        persistent = True

        def __init__(self):
            self.items = []

        async def receive(self, item):
            self.items.append(item)

        async def get(self):
            return self.items


    async def main(system):
        log = await system.spawn(Log, name="log", options={"snapshot_every": SNAPSHOT_EVERY})
        items = await log.proxy.get(timeout=60)
        print("recovered " + json.dumps(items), flush=True)
        for i in range(len(items), len(items) + COUNT):
            await log.tell(i)
            if i % 25 == 24:
                await log.proxy.get(timeout=60)     # a round trip: small batches, so snapshots come often
        print("final " + json.dumps(await log.proxy.get(timeout=60)), flush=True)
"""


def _logged(proc, prefix):
    [line] = [line for line in proc.stdout.splitlines() if line.startswith(prefix + " ")]
    return json.loads(line[len(prefix) + 1:])


def _log_run(app, res, count, snapshot_every=100):
    proc = run_app(app, res, count, snapshot_every)
    assert proc.returncode == 0, proc.stderr
    return proc


def _log_with_snapshots(tmp_path):
    """A stopped persistent actor with 250 items: two snapshots and the journal after them."""
    app = write_app(tmp_path, LOG_APP, "log_app.py")
    res = tmp_path / "resilience"
    first = _log_run(app, res, 250)
    assert _logged(first, "recovered") == [] and _logged(first, "final") == list(range(250))
    assert os.path.exists(res / "log.snapshot") and os.path.exists(res / "log.snapshot.prev")
    return app, res


@pytest.mark.parametrize("tail", ["half a record", "garbage"])
def test_a_torn_journal_tail_recovers_up_to_the_last_good_record_with_a_warning(tmp_path, tail):
    app, res = _log_with_snapshots(tmp_path)
    _, path = segments(res, "log")[-1]
    good = open(path, "rb").read()
    last_seq = records(path)[-1][1]
    if tail == "half a record":
        torn = record(last_seq + 1, _codec.dumps(12345))
        damage = torn[:len(torn) // 2]
    else:
        damage = b"\xde\xad\xbe\xef" * 7
    with open(path, "ab") as f:
        f.write(damage)

    second = _log_run(app, res, 0)
    assert _logged(second, "recovered") == list(range(250)), second.stderr
    warning = (f"[log] WARNING actors._persist: journal {path}: a torn record at offset {len(good)}; recovered up to "
               f"there and cut the rest")
    assert warning in second.stderr.splitlines(), second.stderr
    # the damage is gone from the file; what was journaled after it follows the good records
    now = open(path, "rb").read()
    assert now.startswith(good) and damage not in now[len(good):]
    assert [r[1] for r in records(path)] == list(range(records(path)[0][1], records(path)[-1][1] + 1))

    if tail == "garbage":
        # and the next start finds a clean journal: no warning, the same items, and it goes on
        third = _log_run(app, res, 10)
        assert _logged(third, "recovered") == list(range(250))
        assert _logged(third, "final") == list(range(260))
        assert "WARNING" not in third.stderr, third.stderr


def test_a_corrupted_journal_record_recovers_the_records_before_it_with_a_warning(tmp_path):
    app, res = _log_with_snapshots(tmp_path)
    _, path = segments(res, "log")[-1]
    tells = [r for r in records(path) if r[4] == TELL]
    assert len(tells) >= 10
    at, _seq, _e, _s, _k, message = tells[len(tells) // 2]
    item = _codec.loads(message)
    data = bytearray(open(path, "rb").read())
    data[at + HEAD.size + BODY.size] ^= 0x20
    open(path, "wb").write(bytes(data))

    second = _log_run(app, res, 0)
    assert _logged(second, "recovered") == list(range(item)), second.stderr
    warning = (f"[log] WARNING actors._persist: journal {path}: a corrupted record (checksum mismatch) at offset {at}; "
               f"recovered up to there and cut the rest")
    assert warning in second.stderr.splitlines(), second.stderr


def test_a_corrupted_latest_snapshot_falls_back_to_the_previous_snapshot_and_the_journal(tmp_path):
    app, res = _log_with_snapshots(tmp_path)
    snap = res / "log.snapshot"
    prev_seq, prev_state, _ = snapshot_seq(res / "log.snapshot.prev")
    latest_seq, latest_state, _ = snapshot_seq(snap)
    assert prev_seq < latest_seq and set(prev_state) == {"items"}   # the state is the actor's own attributes
    last_seq = records(segments(res, "log")[-1][1])[-1][1]
    data = bytearray(snap.read_bytes())
    for i in range(SNAP_HEAD.size + 5, len(data), 7):
        data[i] ^= 0x5A
    snap.write_bytes(bytes(data))

    second = _log_run(app, res, 0)
    assert _logged(second, "recovered") == list(range(250)), second.stderr
    warning = (f"[log] WARNING actors._persist: snapshot {snap} is damaged: its checksum does not match (torn or "
               f"corrupted); ignoring it")
    assert warning in second.stderr.splitlines(), second.stderr
    # it replayed everything journaled after the previous snapshot
    assert (f"[log] INFO actors._runtime.worker: actor 'log' recovered: from its snapshot, {last_seq - prev_seq} "
            f"journaled message(s) replayed") in second.stderr.splitlines(), second.stderr


def test_both_snapshots_damaged_is_reported_and_nothing_is_loaded_silently(tmp_path):
    app, res = _log_with_snapshots(tmp_path)
    for name in ("log.snapshot", "log.snapshot.prev"):
        data = bytearray((res / name).read_bytes())
        data[SNAP_HEAD.size + 3] ^= 0xFF
        (res / name).write_bytes(bytes(data))
    first_segment = segments(res, "log")[0]
    second = _log_run(app, res, 5)
    warnings = lines_with("WARNING", second.stderr)
    assert f"[log] WARNING actors._persist: snapshot {res / 'log.snapshot'} is damaged: its checksum does not " \
           f"match (torn or corrupted); ignoring it" in warnings, second.stderr
    assert f"[log] WARNING actors._persist: snapshot {res / 'log.snapshot.prev'} is damaged: its checksum does " \
           f"not match (torn or corrupted); ignoring it" in warnings, second.stderr
    # the journal no longer reaches back to the start: the missing records are named, nothing is half-loaded
    assert (f"[log] WARNING actors._persist: journal {first_segment[1]}: records 1 to {first_segment[0] - 1} are "
            f"missing; recovered up to 0") in warnings, second.stderr
    assert _logged(second, "recovered") == []
    assert _logged(second, "final") == list(range(5))


def test_what_is_journaled_after_a_recovery_with_missing_records_survives_the_next_recovery(tmp_path):
    app, res = _log_with_snapshots(tmp_path)
    for name in ("log.snapshot", "log.snapshot.prev"):
        data = bytearray((res / name).read_bytes())
        data[SNAP_HEAD.size + 3] ^= 0xFF
        (res / name).write_bytes(bytes(data))
    second = _log_run(app, res, 5)
    assert _logged(second, "final") == list(range(5))          # the state it goes on from, after the warnings
    third = _log_run(app, res, 0)
    assert _logged(third, "recovered") == list(range(5)), third.stderr


# -- a misconfigured persistent actor ---------------------------------------------------------------------------------

class Keeper(actors.Actor):
    persistent = True

    def __init__(self):
        self.n = 0

    async def receive(self, delta):
        self.n += delta
        return self.n


def test_a_persistent_actor_without_a_resilience_dir_is_a_spawn_error_that_says_what_to_pass():
    async def main(system):
        with pytest.raises(SpawnError) as info:
            await system.spawn(Keeper, name="keeper")
        message = str(info.value)
        assert "actor 'keeper'" in message, message
        assert "persistent but the system has no resilience directory" in message, message
        assert "--resilience-dir" in message and "resilience_dir=" in message, message
        with pytest.raises(ActorNotFoundError):
            await system.lookup("keeper")
        # the system goes on: the same class, not persistent for this actor, starts under the same name
        ref = await system.spawn(Keeper, name="keeper", options={"persistent": False})
        assert await ref.ask(2, timeout=10) == 2
        return "ok"

    assert run(main) == "ok"


def test_a_persistent_actor_without_a_name_is_an_error(tmp_path):
    async def main(system):
        with pytest.raises(ActorsError) as info:
            await system.spawn(Keeper)
        message = str(info.value)
        assert message == ("cannot spawn persistent Keeper without a name: its state is stored under its name, to "
                           "be found again after a restart; pass name="), message
        with pytest.raises(ActorsError, match="without a name"):
            await system.spawn(Keeper, options={"persistent": True})
        with pytest.raises(SpawnError, match="plain file name"):
            await system.spawn(Keeper, name=".hidden")
        with pytest.raises(ActorsError, match=r"fsync='sometimes' is not one of 'always', 'group', 'interval'"):
            await system.spawn(Keeper, name="keeper", options={"fsync": "sometimes"})
        with pytest.raises(ActorsError, match="unknown actor option 'persist'"):
            await system.spawn(Keeper, name="keeper", options={"persist": True})
        ref = await system.spawn(Keeper, name="keeper")          # a name is all it needed
        assert await ref.ask(3, timeout=10) == 3
        return "ok"

    assert run(main, resilience_dir=str(tmp_path / "res")) == "ok"
    assert os.path.exists(tmp_path / "res" / "keeper.journal.1")


class SyncCounter(actors.Actor):
    """Persistent; counts its tells, and those it handled before the journal had synced them. "syncs" answers
    (tells, tells handled before their sync, the journal's fsyncs so far)."""
    persistent = True

    def __init__(self):
        self.n = 0
        self.unsynced = 0

    async def receive(self, msg):
        from actors import _ref
        journal = _ref._system.endpoint.handler.journal
        if msg == "syncs":
            return self.n, self.unsynced, journal.syncs
        self.n += 1
        self.unsynced += journal.dirty


def test_fsync_always_syncs_once_per_batch_and_before_any_of_it_is_handled(tmp_path):
    async def main(system):
        ref = await system.spawn(SyncCounter, name="strict", options={"fsync": "always"})
        _, _, before = await ref.ask("syncs", timeout=30)
        for i in range(500):
            ref.tell_nowait(i)          # a few writes of many records each: a few batches
        told, unsynced, after = await ref.ask("syncs", timeout=30)
        assert (told, unsynced) == (500, 0)
        assert 1 <= after - before <= 25, f"{after - before} fsyncs for 500 tells in a few batches"
        return "ok"

    assert run(main, resilience_dir=str(tmp_path / "res")) == "ok"


class Tally(actors.Actor):
    persistent = True
    restart = "always"
    max_restarts = 10
    restart_backoff = 0.01
    snapshot_every = 100

    def __init__(self):
        self.n = 0

    async def receive(self, msg):
        self.n += 1

    async def get(self):
        return self.n

    async def pid(self):
        return os.getpid()


def test_messages_replayed_at_recovery_count_towards_the_next_snapshot(tmp_path):
    res = tmp_path / "res"

    async def main(system):
        ref = await system.spawn(Tally, name="tally")
        for rounds in range(1, 5):
            for _ in range(60):
                await ref.tell(1)
            assert await retry(lambda: ref.proxy.get(timeout=10)) == 60 * rounds
            os.kill(await ref.proxy.pid(timeout=10), signal.SIGKILL)
            assert await retry(lambda: ref.proxy.get(timeout=10)) == 60 * rounds     # recovered
        return "ok"

    assert run(main, resilience_dir=str(res)) == "ok"
    journaled = sum(len(records(path)) for _, path in segments(res, "tally"))
    assert os.path.exists(res / "tally.snapshot"), (
        f"{journaled} messages journaled with snapshot_every=100, and no snapshot")


class Mortal(actors.Actor):
    """Persistent, and (by default) never restarted."""
    persistent = True

    async def receive(self, msg):
        return msg

    async def pid(self):
        return os.getpid()


def test_messages_to_a_dead_persistent_actor_that_will_not_restart_fail_clearly(tmp_path):
    async def main(system):
        ref = await system.spawn(Mortal, name="mortal")
        assert Mortal.restart == "never"
        pid = await ref.proxy.pid(timeout=10)
        os.kill(pid, signal.SIGKILL)
        # gone for good: the driver frees the name and marks the actor gone; the driver's link to it, which keeps
        # trying to reconnect to a persistent actor, gives up at its next attempt
        await wait_until(lambda: gone(system, "mortal"), timeout=10, what="the actor to be gone")

        async def gave_up():
            link = system.endpoint.links.get(ref.id)
            return link is None or not link.persistent
        await wait_until(gave_up, timeout=10, what="the driver to stop reconnecting")
        with pytest.raises(actors.ActorStoppedError) as info:
            await ref.ask("hello", timeout=5)
        assert "restarting" not in str(info.value), str(info.value)
        with pytest.raises(actors.ActorStoppedError):
            with trio.fail_after(5):
                for _ in range(10_000):
                    await ref.tell("lost?")
        return "ok"

    assert run(main, resilience_dir=str(tmp_path / "res")) == "ok"


class SlowToRestart(Mortal):
    restart = "always"
    restart_backoff = 60.0              # down for a minute after a crash: longer than the test


def test_tell_nowait_to_a_persistent_actor_that_is_down_holds_a_mailbox_worth_then_refuses(tmp_path):
    """While a persistent actor is down, its sender holds what it sends (to resend), up to a mailbox's worth:
    `tell_nowait` then raises MailboxFullError rather than hold without bound."""
    async def main(system):
        ref = await system.spawn(SlowToRestart, name="slow")
        os.kill(await ref.proxy.pid(timeout=10), signal.SIGKILL)
        async def down():
            return system.endpoint.links[ref.id].dead
        await wait_until(down, timeout=10, what="its link to die")
        held = 0
        with pytest.raises(actors.MailboxFullError, match="mailbox of actor 'slow' is full"):
            while held <= 64:
                ref.tell_nowait(held)
                held += 1
        assert held == 64                   # mailbox_size records' worth, then refused
        return "ok"

    assert run(main, resilience_dir=str(tmp_path / "res"), mailbox_size=64) == "ok"


class Remembers(Mortal):
    """Persistent, and back five seconds after a crash: long enough for a sender to tell it while it is down, on a
    loaded machine too."""
    restart = "always"
    restart_backoff = 5.0

    def __init__(self):
        self.got = []

    async def receive(self, msg):
        self.got.append(msg)

    async def received(self):
        return self.got


class FirstTeller(actors.Actor):
    async def tell_then_ask(self, ref, message):
        """Tell `ref` (never told before by this process), then ask it what it received: the ask goes behind the
        tell, once it is back. Whether the tell was held for a restart (not sent at once), and the answer."""
        await ref.tell(message)
        held = self.system.endpoint.links[ref.id].dead
        return held, await ref.proxy.received(timeout=30)


def test_a_first_tell_to_a_persistent_actor_that_is_down_is_held_and_delivered_when_it_is_back(tmp_path):
    """A sender that has never told a persistent actor, and tells it while it restarts, finds no connection to keep
    its tells on: the tell is held all the same, as the documentation promises, not refused."""
    async def main(system):
        ref = await system.spawn(Remembers, name="remembers")
        teller = await system.spawn(FirstTeller, name="teller")
        os.kill(await ref.proxy.pid(timeout=10), signal.SIGKILL)

        async def restarting():
            return any(a.name == "remembers" and a.state == "restarting" for a in (await system.status()).actors)
        await wait_until(restarting, timeout=10, what="the actor to be restarting")
        return await teller.proxy.tell_then_ask(ref, "while down", timeout=40)

    assert run(main, resilience_dir=str(tmp_path / "res")) == (True, ["while down"])


def test_a_tell_to_a_persistent_actor_that_waited_for_room_in_the_store_is_held_while_it_is_down(tmp_path):
    """A tell that waits for room in the store goes out once there is room; to a persistent actor, it is numbered
    and held like any other: held while the actor is down (it was refused, `it is restarting`), and kept for a
    resend until the actor has journaled it (it went as a bare record, which a crash before the journal lost)."""
    async def main(system):
        ref = await system.spawn(Remembers, name="remembers")
        await ref.tell("before")
        os.kill(await ref.proxy.pid(timeout=10), signal.SIGKILL)

        async def down():
            return system.endpoint.links[ref.id].dead
        await wait_until(down, timeout=10, what="its link to die")
        # the store (16M) has no room for the tell below while these two live
        filler = [actors.put(np.zeros(7_000_000, dtype=np.uint8)), actors.put(b"x" * 100)]

        async def free_once_the_tell_waits():
            await trio.testing.wait_all_tasks_blocked()
            filler.clear()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(free_once_the_tell_waits)
            await ref.tell(np.full(6_000_000, 7, dtype=np.uint8))
        before, big = await ref.proxy.received(timeout=30)
        return before, big.shape, bool((big == 7).all())

    assert run(main, resilience_dir=str(tmp_path / "res"), store_capacity="16M") == ("before", (6_000_000,), True)


# -- state through __getstate__ / __setstate__ -------------------------------------------------------------------------

STATE_APP = """
    import json, sys, threading
    import actors

    COUNT, KIND = int(sys.argv[1]), sys.argv[2]


    class PlainAccount(actors.Actor):
        # no __getstate__: its state is its attributes, and the lock cannot be encoded
        persistent = True
        snapshot_every = 10

        def __init__(self):
            self.balance = 0
            self.history = []
            self.lock = threading.Lock()
            self.how = "__init__"

        async def receive(self, amount):
            with self.lock:
                self.balance += amount
                self.history.append(amount)

        async def get(self):
            return {"balance": self.balance, "history": self.history, "how": self.how}


    class Account(PlainAccount):
        def __getstate__(self):
            return {"balance": self.balance, "history": self.history}       # the lock is left out

        def __setstate__(self, state):
            self.balance = state["balance"]
            self.history = state["history"]
            self.lock = threading.Lock()
            self.how = "__setstate__"


    async def main(system):
        cls = Account if KIND == "getstate" else PlainAccount
        account = await system.spawn(cls, name="account")
        print("recovered " + json.dumps(await account.proxy.get(timeout=60)), flush=True)
        for i in range(COUNT):
            await account.tell(i)
            if i % 5 == 4:
                await account.proxy.get(timeout=60)
        print("final " + json.dumps(await account.proxy.get(timeout=60)), flush=True)
"""


def test_snapshots_use_getstate_and_recovery_uses_setstate(tmp_path):
    app = write_app(tmp_path, STATE_APP, "state_app.py")
    res = tmp_path / "resilience"
    first = run_app(app, res, 37, "getstate")
    assert first.returncode == 0, first.stderr
    assert _logged(first, "recovered") == {"balance": 0, "history": [], "how": "__init__"}
    assert _logged(first, "final") == {"balance": sum(range(37)), "history": list(range(37)), "how": "__init__"}
    assert "cannot write a snapshot" not in first.stderr, first.stderr
    seq, state, _ = snapshot_seq(res / "account.snapshot")
    assert set(state) == {"balance", "history"}, state          # exactly what __getstate__ returned
    assert state["history"] == list(range(len(state["history"]))) and len(state["history"]) >= 30
    assert state["balance"] == sum(state["history"])

    second = run_app(app, res, 3, "getstate")
    assert second.returncode == 0, second.stderr
    assert _logged(second, "recovered") == {"balance": sum(range(37)), "history": list(range(37)),
                                            "how": "__setstate__"}
    assert _logged(second, "final")["history"] == list(range(37)) + [0, 1, 2]
    recovered = "[account] INFO actors._runtime.worker: actor 'account' recovered: from its snapshot"
    assert recovered in second.stderr, second.stderr


def test_a_state_that_cannot_be_snapshotted_is_logged_and_the_journal_keeps_everything(tmp_path):
    app = write_app(tmp_path, STATE_APP, "state_app.py")
    res = tmp_path / "resilience"
    first = run_app(app, res, 23, "plain")
    assert first.returncode == 0, first.stderr
    assert _logged(first, "final")["history"] == list(range(23))
    errors = lines_with("cannot write a snapshot", first.stderr)
    assert errors and all(line.startswith("[account] ERROR actors._runtime.dispatch: actor 'account': cannot write a "
                                          "snapshot (the journal keeps everything): ") for line in errors), first.stderr
    assert "lock" in errors[0], errors[0]          # it names what could not be encoded
    assert not os.path.exists(res / "account.snapshot")

    second = run_app(app, res, 2, "plain")
    assert second.returncode == 0, second.stderr
    assert _logged(second, "recovered") == {"balance": sum(range(23)), "history": list(range(23)),
                                            "how": "__init__"}
    recovered = "[account] INFO actors._runtime.worker: actor 'account' recovered: with no snapshot"
    assert recovered in second.stderr, second.stderr
    assert _logged(second, "final")["history"] == list(range(23)) + [0, 1]


# -- the resilience directory: owner-only files, no links followed, one system at a time ------------------------------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes files of, or runs as, another user")


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def fill(journal):
    """Give `journal` a segment, a snapshot and a previous snapshot."""
    journal.recover()
    journal.append(0, 0, TELL, b"one")
    journal.write_snapshot({"n": 1})
    journal.append(0, 0, TELL, b"two")
    journal.write_snapshot({"n": 2})
    journal.sync()


def test_resilience_files_are_0600_and_a_new_directory_0700_whatever_the_umask(tmp_path):
    res = tmp_path / "new" / "resilience"
    old = os.umask(0)
    try:
        j = Journal(str(res), "a")
        fill(j)
        j.close()
    finally:
        os.umask(old)
    assert mode(res) == 0o700
    files = sorted(os.listdir(res))
    assert files == ["a.journal.2", "a.journal.3", "a.snapshot", "a.snapshot.prev"]
    assert {f: mode(res / f) for f in files} == {f: 0o600 for f in files}


def test_a_file_left_wider_than_0600_is_narrowed_when_recovery_opens_it(tmp_path):
    j = Journal(str(tmp_path), "a")
    fill(j)
    j.close()
    opened = ["a.journal.2", "a.journal.3", "a.snapshot"]       # not a.snapshot.prev: the latest checks out
    for entry in opened:
        os.chmod(tmp_path / entry, 0o644)
    j = Journal(str(tmp_path), "a")
    j.recover()
    j.close()
    assert {f: mode(tmp_path / f) for f in opened} == {f: 0o600 for f in opened}


@pytest.mark.parametrize("planted", ["journal segment", "snapshot", "snapshot being written"])
def test_a_planted_symbolic_link_is_never_followed(tmp_path, planted):
    res = tmp_path / "resilience"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious bytes that must stay as they are")
    link = {"journal segment": "a.journal.1", "snapshot": "a.snapshot",
            "snapshot being written": "a.snapshot.tmp"}[planted]
    res.mkdir(mode=0o700)
    os.symlink(victim, res / link)
    j = Journal(str(res), "a")
    with pytest.raises(PersistenceError) as raised:
        j.recover()
        j.append(0, 0, TELL, b"x")
        j.write_snapshot({"n": 1})
    j.close()
    assert str(raised.value) == (f"{res / link} is a symbolic link: resilience files are never opened through links "
                                 f"(one planted there would redirect the actor's writes to its target); remove it")
    assert victim.read_bytes() == b"precious bytes that must stay as they are"
    assert os.path.islink(res / link)


@pytest.mark.parametrize("bits", [0o770, 0o707, 0o1777])
def test_a_directory_that_group_or_others_can_write_is_refused(tmp_path, bits):
    res = tmp_path / "resilience"
    res.mkdir()
    os.chmod(res, bits)
    fix = ("use a directory of your own inside it (mkdir -m 700)" if bits & 0o1000     # sticky, as /tmp
           else f"run `chmod go-w {res}` or use a directory of your own")
    expected = (f"resilience directory {res} can be written by group or others (mode {bits:04o}): they could plant "
                f"files or links in it; {fix}")
    with pytest.raises(PersistenceError) as raised:
        Journal(str(res), "a")
    assert str(raised.value) == expected
    ran = []

    async def main(system):
        ran.append(True)

    with pytest.raises(PersistenceError) as raised:
        run(main, resilience_dir=str(res))
    assert str(raised.value) == expected
    assert ran == [] and os.listdir(res) == []


def test_a_resilience_dir_that_cannot_be_one_is_refused_in_one_line(tmp_path):
    app = write_app(tmp_path, """
        async def main(system):
            print("ran")
    """, "app.py")
    (tmp_path / "afile").write_text("")
    sticky = tmp_path / "shared"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)            # a shared directory such as /tmp, meant to stay so
    for given, said in [
        (tmp_path / "afile", f"cannot use {tmp_path / 'afile'} as the resilience directory: it is a file, not a "
                             f"directory; give a directory of your own (it is created if missing)"),
        (tmp_path / "afile" / "sub", f"cannot use {tmp_path / 'afile' / 'sub'} as the resilience directory: Not a "
                                     f"directory; give a directory of your own (it is created if missing)"),
        (sticky, f"resilience directory {sticky} can be written by group or others (mode 1777): they could plant "
                 f"files or links in it; use a directory of your own inside it (mkdir -m 700)"),
    ]:
        done = run_app(app, given)
        assert (done.returncode, done.stderr, done.stdout) == (1, f"actors: {said}\n", ""), done.stderr
    done = run_cli("run", "--resilience-dir", "", app, cwd=tmp_path)    # an unset variable, say: not "no directory"
    assert done.returncode == 2 and done.stderr.endswith(
        "actors run: error: argument --resilience-dir: an empty path; give a directory\n"), done.stderr


@root_only
def test_a_directory_another_user_owns_is_refused(tmp_path):
    res = tmp_path / "resilience"
    res.mkdir(mode=0o700)
    os.chown(res, 65534, 65534)
    with pytest.raises(PersistenceError) as raised:
        Journal(str(res), "a")
    assert str(raised.value) == (
        f"resilience directory {res} belongs to uid 65534, not to this user (uid 0): its owner could read the "
        f"actors' state or plant links that redirect writes; use a directory of your own")
    assert os.listdir(res) == []


@root_only
def test_another_user_cannot_read_the_files_even_in_a_directory_they_can_enter():
    # a directory the user made readable (0755), under a parent everyone can enter: only the files' modes protect
    base = tempfile.mkdtemp()
    try:
        os.chmod(base, 0o755)
        res = os.path.join(base, "resilience")
        os.mkdir(res, 0o755)
        os.chmod(res, 0o755)
        j = Journal(res, "a")
        fill(j)
        j.close()
        lock = actors._persist.DirectoryLock(res)
        lock.release()
        files = sorted(os.listdir(res))
        assert files == [".lock", "a.journal.2", "a.journal.3", "a.snapshot", "a.snapshot.prev"]

        def read_each():
            refused = []
            for name in files:
                try:
                    with open(os.path.join(res, name), "rb"):
                        pass
                except PermissionError:
                    refused.append(name)
            return refused

        assert as_other_user(read_each) == files
    finally:
        shutil.rmtree(base)


SECOND_SYSTEM_APP = """
    import sys
    import trio
    import actors


    class Counter(actors.Actor):
        persistent = True

        def __init__(self):
            self.count = 0

        async def receive(self, n):
            self.count += n

        async def get(self):
            return self.count


    async def main(system):
        counter = await system.spawn(Counter, name="counter")
        await counter.tell(1)
        print("ready", await counter.proxy.get(timeout=60), flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)       # until the test says go on
        await counter.tell(1)
        print("count", await counter.proxy.get(timeout=60), flush=True)
"""


def test_a_second_system_on_the_same_directory_fails_at_start_while_the_first_keeps_running(tmp_path, launched):
    app = write_app(tmp_path, SECOND_SYSTEM_APP, "second_app.py")
    res = tmp_path / "resilience"
    first = launched("run", "--resilience-dir", res, app, stdin=subprocess.PIPE, cwd=app.parent)
    first.wait_for(lambda s: s == "ready 1", "'ready 1'")
    assert mode(res / ".lock") == 0o600
    ran = []

    async def main(system):
        ran.append(True)

    with pytest.raises(PersistenceError) as raised:
        run(main, resilience_dir=str(res))
    assert str(raised.value) == (
        f"resilience directory {res} is in use by another system (driver pid {first.proc.pid}): two systems on one "
        f"directory would lose each other's acknowledged tells; stop that system, or give this one another directory")
    assert ran == []
    cli = run_app(app, res)
    assert cli.returncode == 1, cli.stderr[-3000:]
    assert cli.stderr == f"actors: {raised.value}\n"         # one line: none of the app ran, nothing to trace
    assert "ready" not in cli.stdout

    first.proc.stdin.write("go on\n")
    first.proc.stdin.close()
    first.wait_for(lambda s: s.startswith("count "), "'count'")
    assert first.wait() == 0, first.stderr()[-3000:]
    assert first.lines[-1] == "count 2", first.lines
    for entry in os.listdir(res):
        assert mode(res / entry) == 0o600, entry
    run(main, resilience_dir=str(res))          # the first one's lock ended with it
    assert ran == [True]


def test_a_process_forked_by_the_driver_does_not_keep_the_lock_after_the_driver_is_done(tmp_path):
    res = str(tmp_path / "resilience")
    hold_read, hold_write = os.pipe()
    children = []

    async def main(system):
        pid = os.fork()
        if pid == 0:                    # lives on, blocked, until the test closes the pipe
            os.close(hold_write)
            os.read(hold_read, 1)
            os._exit(0)
        children.append(pid)

    try:
        run(main, resilience_dir=res)
        os.close(hold_read)
        assert children and os.waitpid(children[0], os.WNOHANG) == (0, 0)    # still running
        ran = []

        async def again(system):
            ran.append(True)

        run(again, resilience_dir=res)
        assert ran == [True]
    finally:
        os.close(hold_write)
        for pid in children:
            os.waitpid(pid, 0)


def test_a_system_that_fails_to_start_does_not_keep_the_lock(tmp_path):
    res = str(tmp_path / "resilience")
    ran = []

    async def main(system):
        ran.append(True)

    with pytest.raises(ActorsError, match="is more than /dev/shm has free") as failed:
        run(main, resilience_dir=res, store_capacity=1 << 50)
    run(main, resilience_dir=res)       # while `failed` still holds the first attempt's traceback
    assert ran == [True] and failed.value is not None


class TellsThenCounts(actors.Actor):
    """Tells `n` ones to a persistent adder from inside one handler, then asks it for its count."""

    async def receive(self, msg):
        adder, n = msg
        for _ in range(n):
            await adder.tell(1)
        return await adder.ask("count")


def test_a_handler_that_tells_a_persistent_actor_past_its_mailbox_waits_for_acks_and_does_not_stall(tmp_path):
    """A handler's tells leave at the end of its batch, unless it must wait for room first: then what it queued
    leaves before it sleeps, or the acks that make room never come (64 unacked, fewer than a flush's worth)."""
    async def main(system):
        adder = await system.spawn(helpers.PersistentAdder, name="adder")
        teller = await system.spawn(TellsThenCounts, name="teller")
        return await teller.ask((adder, 1000), timeout=30)

    assert run(main, resilience_dir=str(tmp_path), mailbox_size=64) == 1000


# -- fencing: a journal that a newer instance takes over ----------------------------------------------------------------

def test_a_newer_writer_fences_the_older_one_which_acks_nothing_more(tmp_path):
    """Two instances of one actor on one journal (shared storage, a node replaced while it still ran): the newer
    epoch takes the journal over, the older one is refused at its next batch, and replay keeps only what the
    newer one saw plus its own."""
    old = Journal(str(tmp_path), "fenced", epoch=10)
    old.recover()
    for i in range(3):
        old.append(5, i + 1, TELL, dumps(i))
    old.sync()
    new = Journal(str(tmp_path), "fenced", epoch=20)
    assert replayed(new.recover()[2]) == [(TELL, 0), (TELL, 1), (TELL, 2)]
    assert (old.generation, new.generation) == (1, 2)
    old.append(5, 4, TELL, dumps("stale"))      # written after the takeover: never counted
    old.sync()
    with pytest.raises(actors.FencedError, match="taken over its journal"):
        old.check_fence()
    with pytest.raises(actors.FencedError):
        old.write_snapshot({"n": "stale"})      # nor may it replace the newer writer's snapshot
    assert not os.path.exists(tmp_path / "fenced.snapshot")
    new.append(5, 4, TELL, dumps(3))
    new.sync()
    again = Journal(str(tmp_path), "fenced", epoch=20)
    assert replayed(again.recover()[2]) == [(TELL, 0), (TELL, 1), (TELL, 2), (TELL, 3)]
    # who wrote what, in order: generation 1's batches, 2's opening, 1's stale batch, 2's, then 3's opening
    assert [(e, g) for e, g, _n in again.writers()] == [(10, 1), (10, 1), (10, 1), (10, 1), (20, 2), (10, 1),
                                                           (20, 2), (20, 3)]
    for j in (old, new, again):
        j.close()


def test_an_older_writer_epoch_is_refused_at_open(tmp_path):
    Journal(str(tmp_path), "older", epoch=30).recover()
    with pytest.raises(actors.FencedError, match=r"newer instance \(writer epoch 30\).*this one \(epoch 29\)"):
        Journal(str(tmp_path), "older", epoch=29).recover()
    same = Journal(str(tmp_path), "older", epoch=30)      # the same claim, restarted on its node: allowed
    same.recover()
    assert same.generation == 2
    same.close()


def test_a_journal_lock_keeps_a_second_instance_out(tmp_path, monkeypatch):
    monkeypatch.setattr("actors._persist.LOCK_WAIT", 0.2)
    first = Journal(str(tmp_path), "locked", lock=True)
    with pytest.raises(PersistenceError, match="locked by another running instance"):
        Journal(str(tmp_path), "locked", lock=True)
    first.close()
    Journal(str(tmp_path), "locked", lock=True).close()    # free again once the first has closed


def test_a_torn_tail_left_by_the_old_writer_does_not_cut_the_new_writer_s_marker(tmp_path):
    """The old writer was killed mid-write (a torn record at the end), then woke up as a stale instance: the new
    writer cuts the torn tail before it appends its marker, so the stale batch after the marker stays ignored."""
    old = Journal(str(tmp_path), "torn", epoch=10)
    old.recover()
    old.append(5, 1, TELL, dumps("a1"))
    old.sync()
    [(_, path)] = segments(tmp_path, "torn")
    with open(path, "ab") as f:
        f.write(record(99, dumps("torn"))[:-3])         # killed mid-write
    new = Journal(str(tmp_path), "torn", epoch=20)
    assert replayed(new.recover()[2]) == [(TELL, "a1")]
    old.append(5, 2, TELL, dumps("stale"))
    old.sync()
    new.append(5, 2, TELL, dumps("acked"))
    new.sync()
    again = Journal(str(tmp_path), "torn", epoch=20)
    assert replayed(again.recover()[2]) == [(TELL, "a1"), (TELL, "acked")]
    for j in (old, new, again):
        j.close()


SHAPES_APP = """
    import dataclasses
    import sys
    import actors

    @dataclasses.dataclass
    class {cls}:
        x: int

    actors.register_class({cls})

    class Shapes(actors.Actor):
        persistent = True
        snapshot_every = {every}

        def __init__(self):
            self.items = []

        async def receive(self, msg):
            if msg == "count":
                return len(self.items)
            self.items.append(msg)

    async def main(system):
        shapes = await system.spawn(Shapes, name="shapes")
        for i in range(int(sys.argv[1])):
            await shapes.tell({cls}(i))
        print("count", await shapes.ask("count"), flush=True)
"""


@pytest.mark.parametrize("every", [3, 1000], ids=["snapshot", "journal only"])
def test_a_class_renamed_between_runs_is_refused_and_loses_nothing(tmp_path, every):
    # the files check out, but the renamed class's code is unknown: recovering without what they hold would lose it
    # for good (the next snapshot overwrites it), so the spawn fails and leaves them as they are
    res = tmp_path / "resilience"
    v1 = write_app(tmp_path, SHAPES_APP.format(cls="Point", every=every), "v1.py")
    v2 = write_app(tmp_path, SHAPES_APP.format(cls="Pt", every=every), "v2.py")
    first = run_app(v1, res, 7)
    assert first.returncode == 0 and "count 7" in first.stdout, first.stderr

    def files():
        return {p.name: p.read_bytes() for p in res.iterdir() if not p.name.endswith(".lock")}
    before = files()
    renamed = run_app(v2, res, 1)
    assert renamed.returncode != 0, renamed.stdout
    where = ("the snapshot .*shapes.snapshot is" if every == 3
             else "actor 'shapes': journaled message 1 of 8 to replay is")
    assert re.search(rf"{where} intact but this program cannot decode it: cannot decode: unknown class code "
                     rf"0x[0-9a-f]+: .* register them as it did \(a renamed class under its old module and name, "
                     rf"too\), or restore that program; the actor's files are left as they are", renamed.stderr), \
        renamed.stderr
    assert "is damaged" not in renamed.stderr and "(skipped)" not in renamed.stderr, renamed.stderr
    assert files().keys() == before.keys()
    after = files()
    assert all(after[name] == before[name] for name in before if ".journal." not in name)
    assert all(after[name].startswith(before[name]) for name in before)     # a journal may only have grown

    again = run_app(v1, res, 1)
    assert again.returncode == 0 and "count 8" in again.stdout, again.stderr
