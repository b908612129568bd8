"""Mailboxes: how object IDs travel between processes.

A message's payload is put into the shared-memory store by its sender; only a 24-byte record (store offset, kind,
sender id, call id) crosses a Unix stream socket. Records are appended to a per-destination outbox and written in
batches with non-blocking sends; a reader queues each batch it reads for the actor's loop in one step.
So the hot path costs no scheduler pass per message: a `tell` only yields when the mailbox is full.

Bounds (backpressure, never dropping): the sender's outbox (`mailbox_size` records), the kernel's socket buffers,
and the receiver's queue of batches. Records from one sender to one receiver arrive in the order they were sent.
Replies to asks bypass the queue, so an actor awaiting an ask inside a handler still gets its reply.
"""
from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import socket
import struct

import numpy as np
import trio

from _fastser._shm import SharedBlock
from actors._exceptions import ActorStoppedError, MailboxFullError, StoreFullError  # noqa: F401

log = logging.getLogger("actors")

_ndarray = np.ndarray
RECORD = struct.Struct("<QIIQ")      # store offset, kind, sender endpoint id, call id
RECORD_SIZE = RECORD.size

TELL = 1            # payload: the message
ASK = 2             # payload: the message; reply with REPLY or ERROR and the same call id
CALL = 3            # payload: (method, args, kwargs); reply like ASK
CALL_TELL = 4       # payload: (method, args, kwargs); no reply
REPLY = 5           # payload: the result
ERROR = 6           # payload: (type name, message, traceback text)
SYSTEM = 7          # payload: (op, *args) for the system; reply like ASK
SYSTEM_TELL = 8     # payload: (op, *args); no reply
STOP = 9            # payload: None

INBOX_BATCHES = 8
READ_SIZE = 1 << 18


def socket_path(rundir: str, endpoint_id: int) -> str:
    return os.path.join(rundir, f"{endpoint_id}.sock")


class _Pending:
    __slots__ = ("peer", "event", "kind", "offset")

    def __init__(self, peer: int):
        self.peer = peer
        self.event = trio.Event()
        self.kind = 0
        self.offset = 0


class Link:
    """The outgoing connection from this endpoint to one peer, with its outbox of records."""
    __slots__ = ("peer", "sock", "out", "draining", "room", "dead", "fileno")

    def __init__(self, peer: int, sock: socket.socket):
        self.peer = peer
        self.sock = sock
        self.fileno = sock.fileno()
        self.out = bytearray()
        self.draining = False
        self.room = trio.Event()
        self.dead = False


class Endpoint:
    """One process's place in the system: it listens for records, and sends them to other endpoints."""

    def __init__(self, endpoint_id: int, rundir: str, arena, *, mailbox_size: int = 4096,
                 names: dict | None = None):
        self.id = endpoint_id
        self.rundir = rundir
        self.arena = arena
        self.limit = mailbox_size * RECORD_SIZE
        self.names = names if names is not None else {}
        self.links: dict[int, Link] = {}
        self.pending: dict[int, _Pending] = {}
        self.calls = itertools.count(1)
        self.dirty: list[Link] = []
        self.wake = trio.Event()
        self.queue: collections.deque = collections.deque()
        self.has_work = trio.Event()
        self.busy = False
        self.queue_room = trio.Event()
        self.stopped = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.closed = False
        self.on_death = None
        path = socket_path(rundir, endpoint_id)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(128)
        self.listener.setblocking(False)

    def describe(self, peer: int) -> str:
        name = self.names.get(peer)
        return f"actor {name!r}" if name else ("the system" if peer == 0 else f"actor #{peer}")

    # -- running -------------------------------------------------------------------------------------------------

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        """Accept connections and flush outboxes until cancelled."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._flusher)
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(self.listener)
                while True:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    nursery.start_soon(self._reader, conn)

    def close(self):
        """Release every payload still queued here, and stop listening."""
        if self.closed:
            return
        self.closed = True
        for link in self.links.values():
            self._drop_outbox(link)
            link.sock.close()
        while self.queue:
            for off, _kind, _src, _call in self.queue.popleft():
                self.arena.decref_id(off)
        try:
            os.unlink(socket_path(self.rundir, self.id))
        except FileNotFoundError:
            pass
        self.listener.close()

    async def _reader(self, conn: socket.socket):
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        have = 0
        unpack = RECORD.iter_unpack
        pending = self.pending
        try:
            while True:
                try:
                    n = conn.recv_into(view[have:])
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(conn)
                    continue
                except OSError:
                    return
                if n == 0:
                    return
                have += n
                usable = have - have % RECORD_SIZE
                work = []
                for rec in unpack(view[:usable]):
                    kind = rec[1]
                    if kind == REPLY or kind == ERROR:
                        waiter = pending.pop(rec[3], None)
                        if waiter is None:
                            self.arena.decref_id(rec[0])     # its ask timed out: a dead letter
                            continue
                        waiter.kind = kind
                        waiter.offset = rec[0]
                        waiter.event.set()
                    else:
                        work.append(rec)
                if usable < have:
                    buf[:have - usable] = buf[usable:have]
                have -= usable
                if work:
                    await self._deliver(work)
        finally:
            conn.close()

    async def _deliver(self, work: list) -> None:
        # Queue a batch for the actor's loop; wait while the queue is full (backpressure reaches the socket).
        while len(self.queue) >= INBOX_BATCHES and not self.stopped.is_set():
            if self.queue_room.is_set():
                self.queue_room = trio.Event()
            await self.queue_room.wait()
        if self.stopped.is_set():
            self._release(work)
            return
        self.queue.append(work)
        self.has_work.set()

    async def batches(self):
        """The batches of records for this endpoint's loop, in arrival order; between two of them, the outboxes
        the batch filled are flushed."""
        queue = self.queue
        while not self.stopped.is_set():
            if not queue:
                self.busy = False
                self.flush_all()
                if self.has_work.is_set():
                    self.has_work = trio.Event()
                await self.has_work.wait()
                continue
            self.busy = True
            batch = queue.popleft()
            if len(queue) < INBOX_BATCHES:
                self.queue_room.set()
            yield batch

    def stop_receiving(self) -> None:
        """Release whatever is queued; later records are released on arrival (dead letters)."""
        self.stopped.set()
        self.busy = False
        while self.queue:
            self._release(self.queue.popleft())
        self.queue_room.set()
        self.has_work.set()

    def _release(self, batch) -> None:
        for off, _kind, _src, _call in batch:
            self.arena.decref_id(off)

    # -- sending -------------------------------------------------------------------------------------------------

    def _link(self, peer: int) -> Link:
        link = self.links.get(peer)
        if link is not None:
            if link.dead:
                raise ActorStoppedError(f"cannot send to {self.describe(peer)}: it has stopped")
            return link
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(socket_path(self.rundir, peer))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise ActorStoppedError(f"cannot send to {self.describe(peer)}: it is not running") from None
            raise
        sock.setblocking(False)
        link = self.links[peer] = Link(peer, sock)
        if self.nursery is not None:
            self.nursery.start_soon(self._watch, link)
        return link

    def post(self, peer: int, kind: int, obj, call: int = 0, flush: bool = False) -> Link:
        """Put `obj` in the store and queue its record for `peer`. Raises before anything is queued if `obj`
        cannot be encoded, the peer is gone, or the store is full."""
        link = self._link(peer)
        arena = self.arena
        if type(obj) is _ndarray and type(obj.base) is SharedBlock and obj.base.owns(obj):
            obj.flags.writeable = False         # an actors.shared_array is its own message: no copy
            placed = arena.put_shared(obj.base)
        else:
            prepared = arena.prepare(obj)
            placed = arena.commit(prepared)
            if placed is None:
                raise _StoreFull(prepared)
        link.out += RECORD.pack(placed[0], kind, self.id, call)
        if not link.draining:
            link.draining = True
            self.dirty.append(link)
            if not (flush or self.busy):      # a handler's batch, or the caller, flushes; else the flusher
                self.wake.set()
        return link

    def post_nowait(self, peer: int, kind: int, obj, call: int = 0) -> None:
        link = self.links.get(peer)
        if link is not None and len(link.out) >= self.limit:
            self._flush(link)
            if len(link.out) >= self.limit:
                raise MailboxFullError(f"the mailbox of {self.describe(peer)} is full; use `await tell(...)` "
                                       f"to wait for room")
        try:
            self.post(peer, kind, obj, call)
        except _StoreFull as full:
            self.arena.abandon(full.prepared)
            raise StoreFullError("cannot send: the shared-memory store is full; use `await tell(...)` to "
                                 "wait for room") from None

    async def send(self, peer: int, kind: int, obj, call: int = 0, flush: bool = False) -> None:
        """`post`, waiting (only) while the store or the peer's mailbox is full."""
        try:
            link = self.post(peer, kind, obj, call, flush)
        except _StoreFull as full:
            link = await self._post_when_room(peer, kind, full.prepared, call)
        if len(link.out) >= self.limit:
            await self._room(link)

    async def _post_when_room(self, peer, kind, prepared, call):
        delay = 0.0005
        with trio.move_on_after(30) as scope:
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, 0.05)
                placed = self.arena.commit(prepared)
                if placed is not None:
                    break
        if scope.cancelled_caught:
            self.arena.abandon(prepared)
            raise StoreFullError("cannot send: the shared-memory store stayed full for 30 s")
        link = self._link(peer)
        link.out += RECORD.pack(placed[0], kind, self.id, call)
        if not link.draining:
            link.draining = True
            self.dirty.append(link)
            self.wake.set()
        return link

    async def _room(self, link: Link) -> None:
        while len(link.out) >= self.limit and not link.dead:
            self._flush(link)
            if len(link.out) < self.limit:
                return
            if link.room.is_set():
                link.room = trio.Event()
            self.wake.set()             # make sure a drain task is writing this outbox while we wait
            await link.room.wait()
        if link.dead:
            raise ActorStoppedError(f"cannot send to {self.describe(link.peer)}: it has stopped")

    def _flush(self, link: Link) -> bool:
        """Write as much of the outbox as the socket takes now; True when it is empty."""
        if not link.out:
            return True
        try:
            n = link.sock.send(link.out)
        except BlockingIOError:
            return False
        except OSError:
            self._died(link)
            return True
        del link.out[:n]
        if len(link.out) < self.limit:
            link.room.set()
        return not link.out

    def flush_all(self) -> None:
        """Write every dirty outbox now, as far as the sockets take it; the flusher finishes the rest."""
        if not self.dirty:
            return
        left = []
        for link in self.dirty:
            if self._flush(link):
                link.draining = False
            else:
                left.append(link)
        self.dirty = left
        if left:
            self.wake.set()

    async def _flusher(self):
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            dirty, self.dirty = self.dirty, []
            for link in dirty:
                if self._flush(link):
                    link.draining = False
                else:
                    self.nursery.start_soon(self._drain, link)
            await trio.sleep(0)

    async def _drain(self, link: Link):
        try:
            while not self._flush(link):
                await trio.lowlevel.wait_writable(link.sock)
        except (trio.ClosedResourceError, OSError):
            self._died(link)
        link.draining = False

    async def _watch(self, link: Link):
        # The peer never writes on our outgoing connection: readable means it closed (the actor stopped or died).
        try:
            await trio.lowlevel.wait_readable(link.sock)
        except (trio.ClosedResourceError, OSError):
            pass
        if not self.closed:
            self._died(link)

    def _died(self, link: Link):
        if link.dead:
            return
        link.dead = True
        dropped = self._drop_outbox(link)
        if dropped:
            log.warning("%d message(s) to %s were not delivered: it stopped (dead letters)", dropped,
                        self.describe(link.peer))
        link.room.set()
        if self.on_death is not None and not self.closed:
            self.on_death(link.peer)
        for call, waiter in list(self.pending.items()):
            if waiter.peer == link.peer:
                del self.pending[call]
                waiter.kind = -1
                waiter.event.set()

    def _drop_outbox(self, link: Link) -> int:
        n = 0
        for off, _kind, _src, _call in RECORD.iter_unpack(link.out[:len(link.out) - len(link.out) % RECORD_SIZE]):
            self.arena.decref_id(off)
            n += 1
        link.out.clear()
        return n

    # -- asking --------------------------------------------------------------------------------------------------

    async def request(self, peer: int, kind: int, obj, timeout: float | None = None):
        """Send `obj` and wait for the reply; (reply kind, store offset of the reply payload)."""
        call = next(self.calls)
        waiter = self.pending[call] = _Pending(peer)
        try:
            await self.send(peer, kind, obj, call, flush=True)
            self.flush_all()                    # an asker waits anyway: send now, not at the next batch
            if timeout is None:
                await waiter.event.wait()
            else:
                with trio.move_on_after(timeout):
                    await waiter.event.wait()
        finally:
            self.pending.pop(call, None)
        if not waiter.event.is_set():
            return None, 0
        if waiter.kind == -1:
            raise ActorStoppedError(f"{self.describe(peer)} stopped before it replied")
        return waiter.kind, waiter.offset


class _StoreFull(Exception):
    def __init__(self, prepared):
        self.prepared = prepared
