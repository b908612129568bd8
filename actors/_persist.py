"""Persistence of actor state: a write-ahead journal of received messages, and snapshots.

Files, in the resilience directory, per persistent actor (by name):

    <name>.journal.<first sequence number>   journal segments; a new one starts at every snapshot
    <name>.journal.<first sequence number>.dead   a segment no snapshot needs any more, being unlinked
    <name>.snapshot, <name>.snapshot.prev    the latest snapshot and the one before it

A journal record is   u32 length | u32 crc32(body) | body
with body             u64 seq | u64 sender epoch | u64 sender seq | u32 kind | u32 reserved | message bytes
where the message bytes are the message exactly as the codec encoded it into shared memory: the journal uses the
same codec as messages (the fast codec, or the app's own serialize/deserialize, whose bytes it carries).

Fencing (a journal opened with a writer epoch, as a cluster's nodes open them): a node's lease can run out while it
still runs, and another node may then run the actor on the same journal (shared storage). So that the two never
both count:
- `<name>.epoch` holds the writer epoch (the etcd revision of the actor's claim: later claims are higher) and the
  generation (1, 2, ...: one per opening) of the latest writer. A writer with an older epoch than the file's is
  refused at open.
- Every batch a writer appends starts with a marker record (seq 0, kind MARK, sender epoch = writer epoch, sender
  seq = generation), and a writer's opening appends its marker before it reads the journal. Replay ignores a batch
  whose generation is older than a marker before it: it was written after a newer writer had taken over, which
  never saw it.
- After each batch is durable, the writer reads the epoch file again: if a newer writer has taken over, it raises
  `FencedError` before acking anything, so the senders send again to the newer writer (which drops what it had).

A snapshot is         magic | u32 crc32(body) | u64 length | body, body = the codec's encoding of
                      {"seq": last journaled seq it covers, "state": the actor's state, "seen": {epoch: seq}}

Recovery loads the newest snapshot that checks out (warning about a damaged one and falling back to the previous),
then replays the journal records after it, up to the last good record: a torn or corrupted record at the end is
reported with its file and offset, and the file is cut there. Nothing damaged is ever loaded silently.

The files hold the actors' state, so only their user may read them: the directory is created 0700 and refused if
another user owns it or group or others can write to it (they could plant files or links in it), files are created
0600, and no file is ever opened through a symbolic link. The driver holds an exclusive lock on `.lock` in the
directory for the system's lifetime: two systems on one directory would lose each other's acknowledged tells.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
import threading
import time
import zlib

from _fastser import _codec, _shm
from actors._exceptions import FencedError, PersistenceError

log = logging.getLogger(__name__)

HEAD = struct.Struct("<II")            # length, crc32
BODY = struct.Struct("<QQQII")         # seq, sender epoch, sender seq, kind, reserved
SNAP_MAGIC = b"ACTSNAP1"
SNAP_HEAD = struct.Struct("<8sIQ")     # magic, crc32, length
FSYNC_POLICIES = ("always", "group", "interval")
LOCK_WAIT = 10.0        # seconds a writer waits for the actor's lock (`Journal(lock=True)`)
FILE_MODE = 0o600
DIR_MODE = 0o700
LOCK_FILE = ".lock"     # a name no actor's files can have (`_safe` refuses names starting with a dot)
MARK = 0xFFFF           # the kind of a batch marker record (see "Fencing"); no message kind is this high
EPOCH = struct.Struct("<QI")           # writer epoch, generation
DEAD = ".dead"          # the suffix of a journal segment a snapshot made useless, until a thread unlinks it
UNLINK_WAIT = 30.0      # seconds `Journal.close` waits for that thread at most
MAX_NAME_BYTES = 255 - len(".journal.18446744073709551615.dead")   # a file name's limit, less the longest suffix


def undecodable(what: str, exc: BaseException) -> str:
    """Why recovery refuses an intact snapshot or journaled message (`what`) that this program cannot decode."""
    return (f"{what} is intact but this program cannot decode it: {exc}. The program that wrote it registered its "
            f"classes (or decoded its state) differently: register them as it did (a renamed class under its old "
            f"module and name, too), or restore that program; the actor's files are left as they are")


def check_directory(directory: str) -> None:
    """Create the resilience directory (0700) if it is missing; refuse one that is not safe to keep state in."""
    try:
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
    except OSError as exc:
        why = "it is a file, not a directory" if exc.errno == errno.EEXIST else exc.strerror
        raise PersistenceError(f"cannot use {directory} as the resilience directory: {why}; give a directory of "
                               f"your own (it is created if missing)") from None
    st = os.stat(directory)
    me = os.geteuid()
    if st.st_uid != me:
        raise PersistenceError(
            f"resilience directory {directory} belongs to uid {st.st_uid}, not to this user (uid {me}): its owner "
            f"could read the actors' state or plant links that redirect writes; use a directory of your own")
    if st.st_mode & 0o022:
        # a shared directory such as /tmp (sticky, world-writable) is meant to stay so: no chmod advice for it
        fix = ("use a directory of your own inside it (mkdir -m 700)" if st.st_mode & stat.S_ISVTX else
               f"run `chmod go-w {directory}` or use a directory of your own")
        raise PersistenceError(
            f"resilience directory {directory} can be written by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): they could plant files or links in it; {fix}")


def _open(path: str, flags: int) -> int:
    """os.open for resilience files: created 0600, never through a symbolic link, not inherited across exec."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PersistenceError(
                f"{path} is a symbolic link: resilience files are never opened through links (one planted there "
                f"would redirect the actor's writes to its target); remove it") from None
        raise
    try:
        # a file made by an older version, or restored from a backup, may be wider than 0600: narrow it
        if stat.S_IMODE(os.fstat(fd).st_mode) & ~FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


class DirectoryLock:
    """An exclusive `flock` on the resilience directory's lock file, held by the driver for the system's lifetime
    (for a system without a directory, `DirectoryLock(None)` holds nothing).

    A flock belongs to the open file description: it lasts until every descriptor sharing it is closed. The
    descriptor is close-on-exec (the fork server and everything exec'd never share it), and a process forked from
    the driver closes its copy at once, so the lock ends with the driver, however the driver ends.
    """

    def __init__(self, directory: str | None, shared: bool = False):
        self.fd = None
        if directory is None:
            return                      # a system without a resilience directory: nothing to lock
        check_directory(directory)
        if shared:
            return                      # shared by a cluster's nodes: each journal locks its actor's own files
        fd = _open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise PersistenceError(
                f"resilience directory {directory} is in use by another system (driver pid {holder}): two systems "
                f"on one directory would lose each other's acknowledged tells; stop that system, or give this one "
                f"another directory") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)     # for the message above, in the next system to try
        self.fd = fd
        _held_locks.add(fd)

    def release(self) -> None:
        """Release the lock (closing our descriptor ends it). Idempotent."""
        fd, self.fd = self.fd, None
        if fd is not None:
            _held_locks.discard(fd)
            os.close(fd)

    __del__ = release


_held_locks: set[int] = set()


def _close_locks_in_child() -> None:
    # Close, never unlock: LOCK_UN in the child would end the driver's lock too (they share the description).
    for fd in _held_locks:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _safe(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise PersistenceError(f"cannot persist actor {name!r}: its name must be a plain file name")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise PersistenceError(
            f"cannot persist actor {name[:40]!r}... : its name is {size} bytes long (UTF-8), and its files' names "
            f"(<name>.journal.<seq>.dead, the longest) would pass the file system's limit of 255 bytes; use a name "
            f"of at most {MAX_NAME_BYTES} bytes")
    return name


class Journal:
    """The write-ahead journal of one persistent actor, and its snapshots."""

    def __init__(self, directory: str, name: str, *, fsync: str = "group", interval: float = 0.05,
                 serialize=None, deserialize=None, epoch: int = 0, lock: bool = False):
        """`epoch` (a cluster node's claim on the actor) turns fencing on (see the module docstring); `lock` takes
        an exclusive lock on the actor's own files, for a directory that several systems share (each system
        otherwise locks the whole directory)."""
        if fsync not in FSYNC_POLICIES:
            raise PersistenceError(f"unknown fsync policy {fsync!r}; use one of {', '.join(FSYNC_POLICIES)}")
        check_directory(directory)
        self.dir = directory
        self.name = _safe(name)
        self.fsync_policy = fsync
        self.interval = interval
        self.serialize = serialize
        self.deserialize = deserialize
        self.seq = 0                    # last journaled sequence number
        self.seen: dict[int, int] = {}  # sender epoch -> last sender seq journaled (duplicates are dropped)
        self.file = None
        self.file_path = None
        self.dirty = False
        self.since_snapshot = 0
        self.syncs = 0                  # fsyncs of the journal so far: what a policy costs, for tests and benchmarks
        self.epoch = epoch
        self.generation = 0             # this writer's, when fenced (epoch given); 0: not fenced
        self.mark = b""                 # the marker record each batch starts with
        self.lock_fd = self._lock() if lock else None
        self.unlinking: threading.Thread | None = None     # unlinks the segments a snapshot made useless

    # -- paths -----------------------------------------------------------------------------------------------------

    def _path(self, suffix: str) -> str:
        return os.path.join(self.dir, f"{self.name}.{suffix}")

    def _segments(self) -> list[tuple[int, str]]:
        prefix = f"{self.name}.journal."
        out = []
        for entry in os.listdir(self.dir):
            if entry.startswith(prefix) and entry[len(prefix):].isdigit():
                out.append((int(entry[len(prefix):]), os.path.join(self.dir, entry)))
        return sorted(out)

    # -- snapshots -------------------------------------------------------------------------------------------------

    def _encode_state(self, state):
        return state if self.serialize is None else self.serialize(state)

    def _decode_state(self, value):
        return value if self.deserialize is None else self.deserialize(value)

    def write_snapshot(self, state) -> None:
        """Store `state` as covering every record journaled so far, then start a new journal segment."""
        if self.generation:
            self.check_fence()          # a replaced writer's snapshot would hide the newer writer's records
        # the envelope is the fast codec's; only the state itself goes through the app's serialize
        body = _codec.dumps({"seq": self.seq, "state": self._encode_state(state), "seen": dict(self.seen)})
        tmp = self._path("snapshot.tmp")
        with os.fdopen(_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
            f.write(SNAP_HEAD.pack(SNAP_MAGIC, zlib.crc32(body), len(body)))
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        current = self._path("snapshot")
        if os.path.exists(current):
            os.replace(current, self._path("snapshot.prev"))
        os.replace(tmp, current)
        _fsync_dir(self.dir)
        # the segments older than the previous snapshot can no longer be needed
        prev_seq = self._snapshot_seq(self._path("snapshot.prev"))
        self._open_segment(self.seq + 1)
        doomed = []
        for start, path in self._segments():
            if prev_seq is not None and start <= prev_seq and path != self.file_path:
                nxt = [s for s, _ in self._segments() if s > start]
                if nxt and nxt[0] <= prev_seq + 1:
                    os.replace(path, path + DEAD)       # no longer a segment: recovery never reads it
                    doomed.append(path + DEAD)
        if doomed:
            self._unlink_later(doomed)
        self.since_snapshot = 0

    def _unlink_later(self, paths: list[str]) -> None:
        # Unlinking a segment of a hundred thousand messages took about 3 ms (the filesystem frees its blocks and
        # pages), a pause for the actor at every snapshot: a thread does it. Journal.close waits for it, and a
        # recovery removes what a killed process left.
        self._wait_unlinks()
        self.unlinking = threading.Thread(target=_unlink_all, args=(paths,), name="journal-unlink", daemon=True)
        self.unlinking.start()

    def _wait_unlinks(self) -> None:
        if self.unlinking is not None:
            self.unlinking.join(UNLINK_WAIT)
            self.unlinking = None

    def _snapshot_seq(self, path: str):
        loaded = self._read_snapshot(path, quiet=True)
        return None if loaded is None else loaded["seq"]

    def _read_snapshot(self, path: str, quiet: bool = False):
        try:
            with os.fdopen(_open(path, os.O_RDONLY), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        problem = None
        if len(data) < SNAP_HEAD.size:
            problem = "it is truncated"
        else:
            magic, crc, length = SNAP_HEAD.unpack_from(data)
            body = data[SNAP_HEAD.size:SNAP_HEAD.size + length]
            if magic != SNAP_MAGIC:
                problem = "it is not a snapshot (bad magic)"
            elif len(body) != length or zlib.crc32(body) != crc:
                problem = "its checksum does not match (torn or corrupted)"
            else:
                try:
                    snap = _codec.loads(body)
                    if not isinstance(snap, dict) or not {"seq", "state", "seen"} <= set(snap):
                        raise ValueError("unexpected contents")
                    snap["state"] = self._decode_state(snap["state"])
                    return snap
                except Exception as exc:
                    if quiet:
                        return None
                    # Its checksum matches: the file is as it was written, and this program reads it differently
                    # (a class renamed or no longer registered, a changed deserialize). Falling back to an older
                    # snapshot, or to none, would start from a state that loses what this one holds, and the next
                    # snapshot would overwrite it for good: refuse, and leave every file as it is.
                    raise PersistenceError(undecodable(f"the snapshot {path}", exc)) from exc
        if not quiet:
            log.warning("snapshot %s is damaged: %s; ignoring it", path, problem)
        return None

    # -- journal ---------------------------------------------------------------------------------------------------

    def _open_segment(self, start: int) -> None:
        if self.file is not None:
            self.sync()
            self.file.close()
        self.file_path = self._path(f"journal.{start}")
        self.file = os.fdopen(_open(self.file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")
        _fsync_dir(self.dir)

    def append(self, epoch: int, sender_seq: int, kind: int, message: bytes) -> int:
        """Journal one received message; its sequence number. Not durable until `sync`, but with fsync="always",
        where a message journaled alone is its own batch."""
        self.seq += 1
        body = BODY.pack(self.seq, epoch, sender_seq, kind, 0) + message
        self.file.write(self.mark + HEAD.pack(len(body), zlib.crc32(body)) + body)
        if epoch:
            self.seen[epoch] = max(self.seen.get(epoch, 0), sender_seq)
        self._appended(1)
        if self.fsync_policy == "always":
            self.sync()
        return self.seq

    def append_framed(self, framed: bytearray, seq: int, epoch: int, sender_seq: int, count: int) -> None:
        """Journal records framed by Arena.journal_records (one write for the batch); not durable until `sync`."""
        if not count:
            return
        self.file.write(framed)
        self.seq = seq
        if epoch and sender_seq:
            self.seen[epoch] = max(self.seen.get(epoch, 0), sender_seq)
        self._appended(count)

    def _appended(self, count: int) -> None:
        self.dirty = True
        self.since_snapshot += count

    def journal_batch(self, arena, batch: list, epoch: int, framed: bytearray) -> tuple:
        """Journal a received batch of records from the sender of `epoch` before it is handled, dropping what is
        journaled already (resent after a restart), and make it as durable as the fsync policy says: synced with
        one fsync before any of it is handled ("always" and "group"), or handed to the OS and synced every interval
        ("interval"). (records to handle, highest sender seq to ack). `framed` is a scratch buffer the caller
        keeps. `write_batch` then `durable`, for a caller with nothing to do meanwhile."""
        out = self.write_batch(arena, batch, epoch, framed)
        self.durable()
        return out

    def write_batch(self, arena, batch: list, epoch: int, framed: bytearray) -> tuple:
        """The first half of `journal_batch`: write the batch to the journal file and start the disk writing it,
        without waiting. Nothing of it may be handled or acked before `durable` returns; meanwhile the caller can
        decode it, so that the fsync waits for less."""
        framed.clear()
        framed += self.mark
        keep, seq, ack = arena.journal_records(batch, epoch, self.seen.get(epoch, 0) if epoch else 0, self.seq,
                                               framed)
        self.append_framed(framed, seq, epoch, ack, seq - self.seq)
        self.flush()                    # in the OS: safe from a process crash from here on
        if self.fsync_policy != "interval" and self.dirty:
            _shm.start_writeback(self.file.fileno())
        return keep, ack

    def durable(self) -> None:
        """The second half of `journal_batch`: wait until what `write_batch` wrote is on the disk (for "always" and
        "group"; "interval" syncs on its own clock), and check that no newer writer has taken over."""
        if self.fsync_policy != "interval":
            self.sync()
        if self.generation:
            self.check_fence()          # before anything of the batch is acked

    def is_duplicate(self, epoch: int, sender_seq: int) -> bool:
        return bool(epoch) and sender_seq <= self.seen.get(epoch, 0)

    def sync(self) -> None:
        """Make every appended record durable (flush and fsync)."""
        if self.dirty and self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.syncs += 1
            self.dirty = False

    def flush(self) -> None:
        """Hand appended records to the OS without waiting for the disk (the "interval" policy syncs later)."""
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        self._wait_unlinks()
        if self.file is not None:
            self.sync()
            self.file.close()
            self.file = None
            self.file_path = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    # -- fencing ---------------------------------------------------------------------------------------------------

    def _lock(self) -> int:
        """An exclusive flock on `<name>.lock`, for as long as this writer lives. Where another writer still holds
        it (an instance whose node has just been declared lost, still exiting), wait a while for it to go."""
        fd = _open(self._path("lock"), os.O_RDWR | os.O_CREAT)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise PersistenceError(
                        f"the files of actor {self.name!r} in {self.dir} are locked by another running instance "
                        f"(for {LOCK_WAIT:g} s): two instances of one persistent actor would lose each other's "
                        f"acknowledged tells; stop the other one first") from None
                time.sleep(0.05)        # polling the lock (flock has no timeout), with a deadline

    def _take_over(self) -> None:
        """Become the journal's writer: refuse an epoch older than the last writer's, record ours with the next
        generation, and append our marker, before the journal is read (see the module docstring)."""
        fd = _open(self._path("epoch"), os.O_RDWR | os.O_CREAT)
        try:
            data = os.pread(fd, EPOCH.size, 0)
            last_epoch, last_gen = EPOCH.unpack(data) if len(data) == EPOCH.size else (0, 0)
            if last_epoch > self.epoch:
                raise FencedError(
                    f"actor {self.name!r} cannot open its journal in {self.dir}: a newer instance (writer epoch "
                    f"{last_epoch}) has taken it over, and this one (epoch {self.epoch}) is older; it stops. (A "
                    f"node whose lease ran out is replaced by another; this is the old one. Epochs are etcd "
                    f"revisions: if the cluster's etcd was recreated from nothing, its revisions started again, and "
                    f"{self._path('epoch')} must be removed once, with no instance running.)")
            self.generation = last_gen + 1
            os.pwrite(fd, EPOCH.pack(self.epoch, self.generation), 0)
            os.fsync(fd)
        finally:
            os.close(fd)                # (each check opens it again: see check_fence)
        body = BODY.pack(0, self.epoch, self.generation, MARK, 0)
        self.mark = HEAD.pack(len(body), zlib.crc32(body)) + body

    def check_fence(self) -> None:
        """Raise FencedError if a newer writer has taken the journal over since this one opened it. The file is
        opened again each time: a network filesystem revalidates what it caches of a file at its opening."""
        fd = _open(self._path("epoch"), os.O_RDONLY)
        try:
            data = os.pread(fd, EPOCH.size, 0)
        finally:
            os.close(fd)
        epoch, generation = EPOCH.unpack(data) if len(data) == EPOCH.size else (0, 0)
        if generation != self.generation:
            raise FencedError(
                f"actor {self.name!r}: another instance (writer epoch {epoch}, generation {generation}) has taken "
                f"over its journal in {self.dir}; this one (generation {self.generation}) stops without "
                f"acknowledging its last batch, which the senders send again to the other")

    # -- recovery --------------------------------------------------------------------------------------------------

    def recover(self):
        """(restored from a snapshot?, its state or None, [(kind, message bytes), ...] to replay). Opens the journal
        for appending."""
        prefix = f"{self.name}.journal."
        _unlink_all([os.path.join(self.dir, entry) for entry in os.listdir(self.dir)     # left by a process killed
                     if entry.startswith(prefix) and entry.endswith(DEAD)])             # before its thread ended
        if self.epoch:
            self._take_over()
            last = self._segments()
            if last:
                for _record in self._read_segment(last[-1][1]):
                    pass                # first cut a torn tail (a writer killed mid-write), or it would cut our marker
            self._open_segment(last[-1][0] if last else 1)
            self.file.write(self.mark)      # ours, before we read: whatever follows it from an older writer is stale
            self.dirty = True
            self.sync()
        state = None
        snap = None
        for path in (self._path("snapshot"), self._path("snapshot.prev")):
            snap = self._read_snapshot(path)
            if snap is not None:
                break
        if snap is not None:
            self.seq = snap["seq"]
            self.seen = dict(snap["seen"])
            state = snap["state"]
        replay = []
        last_start = None
        gap = False
        generation = 0                  # the newest writer's marker so far
        stale = False                   # in a batch an older writer appended after it had been replaced
        for start, path in self._segments():
            if gap:
                os.replace(path, path + ".orphaned")    # beyond a gap: never replayed, never renumbered over
                log.warning("journal %s follows missing records; set aside as %s.orphaned", path, path)
                continue
            last_start = start
            for seq, epoch, sender_seq, kind, message in self._read_segment(path):
                if kind == MARK:
                    stale = sender_seq < generation
                    generation = max(generation, sender_seq)
                    continue
                if seq <= self.seq or stale:
                    continue
                if seq != self.seq + 1:
                    log.warning("journal %s: records %d to %d are missing; recovered up to %d", path,
                                self.seq + 1, seq - 1, self.seq)
                    gap = True
                    break
                self.seq = seq
                if epoch:
                    self.seen[epoch] = max(self.seen.get(epoch, 0), sender_seq)
                replay.append((kind, message))
        if gap:
            self._open_segment(self.seq + 1)
            if last_start is not None and last_start != self.seq + 1:
                current = self._path(f"journal.{last_start}")
                # records past the gap in the last good segment are already cut; keep the segment as it is
        else:
            self._open_segment(last_start if last_start is not None and last_start > (snap or {}).get("seq", 0)
                               else self.seq + 1)
        self.since_snapshot = len(replay)       # replayed messages count towards the next snapshot
        return (snap is not None), state, replay

    def writers(self) -> list[tuple[int, int, int]]:
        """[(writer epoch, generation, records)] for each batch marker in the journal, in the order written: who
        wrote what. Two instances that ran at once would show as a generation lower than one before it."""
        out = []
        for _start, path in self._segments():
            for _seq, epoch, sender_seq, kind, _message in self._read_segment(path):
                if kind == MARK:
                    out.append([epoch, sender_seq, 0])
                elif out:
                    out[-1][2] += 1
        return [tuple(w) for w in out]

    def _read_segment(self, path: str):
        with os.fdopen(_open(path, os.O_RDONLY), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            problem = None
            if len(data) - pos < HEAD.size:
                problem = "a torn record header"
            else:
                length, crc = HEAD.unpack_from(data, pos)
                body = data[pos + HEAD.size:pos + HEAD.size + length]
                if length < BODY.size or len(body) != length:
                    problem = "a torn record"
                elif zlib.crc32(body) != crc:
                    problem = "a corrupted record (checksum mismatch)"
            if problem:
                log.warning("journal %s: %s at offset %d; recovered up to there and cut the rest", path, problem,
                            pos)
                with os.fdopen(_open(path, os.O_RDWR), "r+b") as f:
                    f.truncate(pos)
                    os.fsync(f.fileno())
                return
            seq, epoch, sender_seq, kind, _ = BODY.unpack_from(body)
            yield seq, epoch, sender_seq, kind, body[BODY.size:]
            pos += HEAD.size + length
