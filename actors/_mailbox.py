"""Mailboxes: how object IDs travel between processes.

A message's payload is put into the shared-memory store by its sender; only a 24-byte record (store offset, kind,
sender id, call id) crosses a Unix stream socket. Records are appended to a per-destination outbox and written in
batches with non-blocking sends; a reader queues each batch it reads for the actor's loop in one step.
So the hot path costs no scheduler pass per message: a `tell` only yields when the mailbox is full.

Bounds (backpressure, never dropping): the sender's outbox (`mailbox_size` records), the kernel's socket buffers,
and the receiver's queue of batches. Records from one sender to one receiver arrive in the order they were sent.
A reply travels back on the connection its ask came in on, where the asking task itself reads it (one asker per
link reads at a time, for all of them); an actor awaiting an ask inside a handler still gets its reply.
"""
from __future__ import annotations

import collections
import errno
import secrets
import itertools
import logging
import os
import socket
import struct
import time

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
HELLO = 10          # no payload; call = the sender's epoch. The first record on every connection
ACK = 11            # no payload; call = the highest sender seq the (persistent) receiver has journaled

INBOX_BATCHES = 8
FLUSH_BYTES = 1 << 20
FLUSH_RECORDS = 256
# How long an asker spins for its reply before sleeping in epoll (ACTORS_SPIN_US; 0 turns it off).
RECONNECT_TIMEOUT = 60.0     # how long a sender waits for a persistent actor to come back
SPIN = float(os.environ.get("ACTORS_SPIN_US", "100")) * 1e-6
READ_SIZE = 1 << 18


def socket_path(rundir: str, endpoint_id: int) -> str:
    return os.path.join(rundir, f"{endpoint_id}.sock")


class _Pending:
    __slots__ = ("peer", "kind", "offset", "scope")

    def __init__(self, peer: int):
        self.peer = peer
        self.kind = 0           # set when the reply arrives: REPLY, ERROR, or -1 (the peer died)
        self.offset = 0
        self.scope = None


def _resolve(waiter: _Pending, kind: int, offset: int) -> None:
    waiter.kind = kind
    waiter.offset = offset
    if waiter.scope is not None:        # it is parked waiting for the reading to be handed over: wake it
        waiter.scope.cancel()


class Link:
    """The outgoing connection from this endpoint to one peer, with its outbox of records."""
    __slots__ = ("peer", "sock", "out", "draining", "room", "dead", "fileno", "reading", "handover", "inbuf",
                 "have", "unsent_bytes", "flush_mark", "persistent", "unacked", "checked")

    def __init__(self, peer: int, sock: socket.socket):
        self.peer = peer
        self.sock = sock
        self.fileno = sock.fileno()
        self.out = bytearray()
        self.unsent_bytes = 0           # payload bytes behind the records not yet written
        self.flush_mark = FLUSH_RECORDS * RECORD_SIZE   # outbox size at which to write without waiting
        # To a persistent actor: the tells it has not yet journaled, (seq, offset), each holding a count on its
        # payload, resent if the actor restarts.
        self.persistent = False
        self.unacked: collections.deque = collections.deque()
        self.checked = 0.0
        self.draining = False
        self.room = trio.Event()
        self.dead = False
        # Replies to our asks come back on this same connection, read by one of the asking tasks at a time.
        self.reading = False
        self.handover = None            # made when a second asker has to wait for the reading
        self.inbuf = bytearray(RECORD_SIZE * 64)
        self.have = 0


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
        self.reply_links: dict[int, Link] = {}  # src -> the connection its requests arrive on
        self.closed_by: dict[int, trio.Event] = {}  # src -> set when its connection to us has ended
        self.pending: dict[int, _Pending] = {}
        self.calls = itertools.count(1)     # call ids, and the sequence numbers of tells to persistent actors
        self.epoch = secrets.randbits(62) + 1   # names this process's sequence numbers to receivers
        self.persistent: set[int] = set()   # peers that journal what they receive (and ack it)
        self.journal_batch = None       # (batch, epoch) -> (records to handle, seq to ack): a persistent actor
        self.after_batch = None         # called after each handled batch (a persistent actor's snapshots)
        self.on_handler_error = None    # (exception) -> None: the actor's policy for a handler that raised

        self.dirty: list[Link] = []
        self.wake = trio.Event()
        self.handle = None              # async handle(offset, kind, src, call) -> True to stop receiving
        self.fast_tell = None           # async receive(message): tells go straight to it, with no wrapper
        self.on_tell_error = None       # (record, exception) -> None, for the fast path's failures
        self.queue: collections.deque = collections.deque()
        self.busy = False
        self.queue_room = trio.Event()
        self.stopped = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.closed = False
        self.on_death = None
        path = socket_path(rundir, endpoint_id)
        try:
            os.unlink(path)         # left by an earlier incarnation of this actor, killed before it could
        except FileNotFoundError:
            pass
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
            self._release(self.queue.popleft()[0])
        try:
            os.unlink(socket_path(self.rundir, self.id))
        except FileNotFoundError:
            pass
        self.listener.close()

    async def _reader(self, conn: socket.socket, buf: bytearray | None = None, have: int = 0):
        buf = buf if buf is not None else bytearray(READ_SIZE)
        view = memoryview(buf)
        unpack = RECORD.iter_unpack
        pending = self.pending
        reply_link = None
        drained = False
        spin_until = 0.0
        epoch = 0
        try:
            while True:
                if drained:                 # the last read came up short: the socket is empty, wait first
                    await trio.lowlevel.wait_readable(conn)
                try:
                    n = conn.recv_into(view[have:])
                except BlockingIOError:
                    # As an asker does: spin a moment (yielding the CPU) before sleeping, so that a busy
                    # receiver stays on its own CPU instead of being woken onto its sender's.
                    if not drained and time.perf_counter() < spin_until:
                        os.sched_yield()
                        continue
                    drained = True
                    continue
                except OSError:
                    return
                if n == 0:
                    return
                spin_until = time.perf_counter() + SPIN
                drained = have + n < len(buf)
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
                        _resolve(waiter, kind, rec[0])
                    elif kind == HELLO:
                        epoch = rec[3]
                        if reply_link is None:
                            reply_link = self.reply_links[rec[2]] = Link(rec[2], conn)
                    else:
                        work.append(rec)
                if reply_link is None and work:
                    src = work[0][2]
                    reply_link = self.reply_links[src] = Link(src, conn)
                if usable < have:
                    buf[:have - usable] = buf[usable:have]
                have -= usable
                if not work:
                    continue
                if self.busy or self.queue or self.stopped.is_set() or self.handle is None:
                    await self._enqueue((work, epoch))
                    if not self.busy and self.queue and not self.stopped.is_set() and self.handle is not None:
                        # the handlers went idle while we waited for room: nobody else will run the queue
                        work, epoch = self.queue.popleft()
                        self.queue_room.set()
                        await self._run(work, epoch)
                    continue
                # idle: run the handlers right here, with no hop to another task
                await self._run(work, epoch)
        finally:
            if reply_link is not None:
                self.closed_by.setdefault(reply_link.peer, trio.Event()).set()
            if conn is not None:
                if reply_link is not None:
                    reply_link.dead = True
                    if self.reply_links.get(reply_link.peer) is reply_link:
                        del self.reply_links[reply_link.peer]
                conn.close()

    async def _enqueue(self, work: tuple) -> None:
        # Queue a batch while the handlers are busy; wait while the queue is full (backpressure reaches the socket).
        while len(self.queue) >= INBOX_BATCHES and not self.stopped.is_set():
            if self.queue_room.is_set():
                self.queue_room = trio.Event()
            await self.queue_room.wait()
        if self.stopped.is_set():
            self._release(work[0])
            return
        self.queue.append(work)

    async def _run(self, batch: list, epoch: int) -> None:
        """Handle `batch`, then everything queued meanwhile, in order, right here in the reader task. A handler
        that suspends holds up only its own connection: replies to asks travel on the asking connection, read by
        the asker, so awaiting an ask inside a handler never waits on this reader."""
        handle = self.handle
        fast_tell = self.fast_tell
        read = self.arena.read
        self.busy = True
        try:
            while True:
                if self.journal_batch is not None and batch and not self.stopped.is_set():
                    # a persistent actor journals the batch (dropping what it already has), acks, then handles
                    src = batch[0][2]
                    batch, ack = self.journal_batch(batch, epoch)
                    if ack:
                        self.send_ack(src, ack)
                for rec in batch:
                    if self.stopped.is_set():
                        self.arena.decref_id(rec[0])
                        continue
                    # a tell goes straight to the actor's receive; anything else (or a tell that does not decode
                    # here) through `handle`, which deals with its own errors
                    if rec[1] == TELL and fast_tell is not None:
                        try:
                            msg = read(rec[0], True)
                        except Exception:
                            pass
                        else:
                            try:
                                await fast_tell(msg)
                            except Exception as exc:
                                self.on_tell_error(rec, exc)
                            continue
                    if await handle(*rec):
                        self.stop_receiving()
                if self.after_batch is not None:
                    self.after_batch()
                self.flush_all()
                self.arena.flush_frees()
                if not self.queue:
                    return
                batch, epoch = self.queue.popleft()
                self.queue_room.set()
        finally:
            self.busy = False

    def forget(self, peer: int) -> None:
        """`peer` has stopped for good: its link is dead, so the next message to it raises at once."""
        link = self.links.get(peer)
        if link is not None and not link.dead:
            link.persistent = False
            self._died(link)
            link.sock.close()

    def install(self, handle) -> None:
        """Start handling messages with `handle` (what arrived before waits in the queue until now)."""
        self.handle = handle
        if self.queue and not self.busy:
            self.nursery.start_soon(self._run_queued)

    async def _run_queued(self) -> None:
        if self.queue and not self.busy and not self.stopped.is_set():
            batch, epoch = self.queue.popleft()
            self.queue_room.set()
            await self._run(batch, epoch)

    def _release(self, batch) -> None:
        for off, _kind, _src, _call in batch:
            self.arena.decref_id(off)

    def send_ack(self, src: int, seq: int) -> None:
        """Tell `src` that everything it sent up to `seq` is journaled (it may release its copies)."""
        link = self.reply_links.get(src)
        if link is None or link.dead:
            return
        link.out += RECORD.pack(0, ACK, self.id, seq)
        self._dirty(link, wake=not self.busy)

    def stop_receiving(self) -> None:
        """Release whatever is queued; later records are released on arrival (dead letters)."""
        self.stopped.set()
        while self.queue:
            self._release(self.queue.popleft()[0])
        self.queue_room.set()

    # -- sending -------------------------------------------------------------------------------------------------

    def _link(self, peer: int) -> Link:
        link = self.links.get(peer)
        if link is not None:
            if not link.dead:
                return link
            if link.persistent:
                raise ActorStoppedError(f"cannot send to {self.describe(peer)} now: it is restarting, or has "
                                        f"stopped")
            del self.links[peer]        # it may have been restarted: try a fresh connection
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
        link.out += RECORD.pack(0, HELLO, self.id, self.epoch)
        if peer in self.persistent:
            link.persistent = True
            link.reading = True             # the ack reader reads this link for good (replies included)
            self.nursery.start_soon(self._acker, link)
        return link

    def post(self, peer: int, kind: int, obj, call: int = 0, flush: bool = False) -> Link:
        """Put `obj` in the store and queue its record for `peer`. Raises before anything is queued if `obj`
        cannot be encoded, the peer is gone, or the store is full. Replies go back on the connection the request
        came in on."""
        if kind == REPLY or kind == ERROR:
            link = self.reply_links.get(peer)
            if link is None or link.dead:
                raise ActorStoppedError(f"cannot reply to {self.describe(peer)}: it has stopped")
        else:
            link = self.links.get(peer)
            if link is not None and not link.out and not link.reading and not link.dead:
                self._check_alive(link)
            if link is None or link.dead:
                if link is not None and link.persistent and kind == TELL:
                    return self._post_unacked(link, obj)      # it is restarting: held, resent when it is back
                link = self._link(peer)
            if link.persistent and kind == TELL:
                return self._post_unacked(link, obj)
        arena = self.arena
        if type(obj) is _ndarray and type(obj.base) is SharedBlock and obj.base.owns(obj):
            obj.flags.writeable = False         # an actors.shared_array is its own message: no copy
            placed = arena.put_shared(obj.base)
            size = obj.nbytes
            link.out += RECORD.pack(placed[0], kind, self.id, call)
        else:
            size = arena.post_record(obj, link.out, kind, self.id, call)
            if size < 0:
                raise StoreFull(arena.prepare(obj))
        # What _queued does, inline: this runs for every message, and a call costs it 5%.
        link.unsent_bytes += size
        if link.unsent_bytes >= FLUSH_BYTES or len(link.out) >= link.flush_mark:
            self._flush(link)
            link.flush_mark = len(link.out) + FLUSH_RECORDS * RECORD_SIZE
        if not link.draining:
            link.draining = True
            self.dirty.append(link)
            if not flush:   # the flusher writes it as soon as this task yields (a batch's end flushes sooner)
                self.wake.set()
        return link

    def _queued(self, link: Link, size: int, wake: bool) -> None:
        """Account for a record just appended to `link.out`, with `size` payload bytes behind it."""
        link.unsent_bytes += size
        if link.unsent_bytes >= FLUSH_BYTES or len(link.out) >= link.flush_mark:
            # Stream rather than burst: a few hundred records per write keep a busy receiver fed (and on its
            # own CPU) for a syscall per few hundred messages. Large payloads go out at once: batching them
            # would hold many blocks of fresh, cold memory, where a prompt send lets the receiver release each
            # one for the next to reuse, warm.
            self._flush(link)
            link.flush_mark = len(link.out) + FLUSH_RECORDS * RECORD_SIZE
        self._dirty(link, wake)

    def _dirty(self, link: Link, wake: bool) -> None:
        """`link` has records to write: list it for the next flush, and wake the flusher if asked."""
        if not link.draining:
            link.draining = True
            self.dirty.append(link)
            if wake:
                self.wake.set()

    def _post_unacked(self, link: Link, obj) -> Link:
        # A tell to a persistent actor: numbered, and its payload held (a second count) until the actor acks
        # having journaled it. Only (seq, offset) is kept: the record is rebuilt to resend it.
        seq = next(self.calls)
        out = link.out if not link.dead else bytearray()
        size = self.arena.post_record(obj, out, TELL, self.id, seq, True)
        if size < 0:
            raise StoreFull(self.arena.prepare(obj))
        link.unacked.append((seq, self.arena.last_offset))
        if not link.dead:
            self._queued(link, size, wake=True)
        return link

    async def _acker(self, link: Link) -> None:
        """Read a persistent actor's acks (and replies) on our connection to it; when it dies, reconnect."""
        sock = link.sock
        buf = bytearray(RECORD_SIZE * 1024)
        view = memoryview(buf)
        have = 0
        pending = self.pending
        try:
            while True:
                try:
                    n = sock.recv_into(view[have:])
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except OSError:
                    n = 0
                if n == 0:
                    break
                have += n
                usable = have - have % RECORD_SIZE
                for off, kind, _src, call in RECORD.iter_unpack(view[:usable]):
                    if kind == ACK:
                        while link.unacked and link.unacked[0][0] <= call:
                            self.arena.decref_id(link.unacked.popleft()[1])
                        link.room.set()
                        continue
                    waiter = pending.pop(call, None)
                    if waiter is None:
                        self.arena.decref_id(off)
                        continue
                    _resolve(waiter, kind, off)
                buf[:have - usable] = buf[usable:have]
                have -= usable
        except trio.ClosedResourceError:
            pass
        if not self.closed and self.links.get(link.peer) is link:
            self._lost(link)

    def _lost(self, link: Link) -> None:
        """A persistent actor went away: fail the asks waiting on it, keep its unacked tells, and reconnect."""
        link.dead = True
        for off, kind, _src, _call in RECORD.iter_unpack(link.out[:len(link.out) - len(link.out) % RECORD_SIZE]):
            if kind != TELL and kind != HELLO:
                self.arena.decref_id(off)       # asks in flight: their askers are told below
        link.out.clear()
        for call, waiter in list(self.pending.items()):
            if waiter.peer == link.peer:
                del self.pending[call]
                _resolve(waiter, -1, 0)
        link.sock.close()
        self.nursery.start_soon(self._reconnect, link)

    async def _reconnect(self, link: Link) -> None:
        path = socket_path(self.rundir, link.peer)
        delay = 0.01
        with trio.move_on_after(RECONNECT_TIMEOUT):
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, 0.5)
                if os.path.exists(path + ".gone"):
                    break
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(path)
                except OSError:
                    sock.close()
                    continue
                sock.setblocking(False)
                link.sock = sock
                link.fileno = sock.fileno()
                link.have = 0
                link.out = bytearray(RECORD.pack(0, HELLO, self.id, self.epoch))
                for seq, off in link.unacked:
                    self.arena.incref_id(off)          # the new receiver's count: the old one died with it
                    link.out += RECORD.pack(off, TELL, self.id, seq)
                link.dead = False
                link.room.set()
                self.nursery.start_soon(self._acker, link)
                self._dirty(link, wake=False)
                self.wake.set()
                return
        dropped = len(link.unacked)
        while link.unacked:
            self.arena.decref_id(link.unacked.popleft()[1])
        if dropped:
            log.warning("%d message(s) to %s were not delivered: it stopped for good (dead letters)",
                        dropped, self.describe(link.peer))
        link.persistent = False
        link.room.set()

    def _check_alive(self, link: Link) -> None:
        # Has the peer closed our connection (it stopped or died)? Then a message now raises, rather than going
        # out and being dropped as a dead letter. A peek costs a syscall: at most once a millisecond a link.
        now = time.perf_counter()
        if now - link.checked < 0.001:
            return
        link.checked = now
        try:
            if link.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                self._died(link)
        except BlockingIOError:
            pass
        except OSError:
            self._died(link)

    def post_nowait(self, peer: int, kind: int, obj, call: int = 0) -> None:
        link = self.links.get(peer)
        if link is not None and len(link.out) >= self.limit:
            self._flush(link)
            if len(link.out) >= self.limit:
                raise MailboxFullError(f"the mailbox of {self.describe(peer)} is full; use `await tell(...)` "
                                       f"to wait for room")
        try:
            self.post(peer, kind, obj, call)
        except StoreFull as full:
            self.arena.abandon(full.prepared)
            if full.prepared[1] > self.arena.capacity:
                raise StoreFullError(f"cannot send a message of {full.prepared[1]} bytes: it is larger than the "
                                     f"whole store ({self.arena.capacity} bytes)") from None
            raise StoreFullError("cannot send: the shared-memory store is full; use `await tell(...)` to "
                                 "wait for room") from None

    async def send(self, peer: int, kind: int, obj, call: int = 0, flush: bool = False) -> None:
        """`post`, waiting (only) while the store or the peer's mailbox is full."""
        try:
            link = self.post(peer, kind, obj, call, flush)
        except StoreFull as full:
            link = await self.post_when_room(peer, kind, full.prepared, call)
        if self.full(link):
            await self.room(link)

    async def post_when_room(self, peer, kind, prepared, call):
        if prepared[1] > self.arena.capacity:
            self.arena.abandon(prepared)
            raise StoreFullError(f"cannot send a message of {prepared[1]} bytes: it is larger than the whole "
                                 f"store ({self.arena.capacity} bytes); start the system with a larger "
                                 f"store_capacity")
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
        self._flush(link)
        self._dirty(link, wake=True)
        return link

    def full(self, link: Link) -> bool:
        return len(link.out) >= self.limit or (link.persistent and len(link.unacked) >= self.limit // RECORD_SIZE)

    async def room(self, link: Link) -> None:
        while link.persistent and (link.dead or len(link.unacked) >= self.limit // RECORD_SIZE):
            if link.room.is_set():
                link.room = trio.Event()
            await link.room.wait()
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
            if link.persistent:
                return True             # its acker sees the connection end, and reconnects
            self._died(link)
            return True
        del link.out[:n]
        if not link.out:
            link.unsent_bytes = 0
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
                _resolve(waiter, -1, 0)

    def _drop_outbox(self, link: Link) -> int:
        n = 0
        for off, kind, _src, _call in RECORD.iter_unpack(link.out[:len(link.out) - len(link.out) % RECORD_SIZE]):
            if kind == HELLO or kind == ACK:
                continue                    # no payload behind these
            self.arena.decref_id(off)
            n += 1
        link.out.clear()
        return n

    # -- asking --------------------------------------------------------------------------------------------------

    async def request(self, peer: int, kind: int, obj, timeout: float | None = None):
        """Send `obj` and wait for the reply; (reply kind, store offset of the reply payload), or (None, 0) on
        timeout."""
        call = next(self.calls)
        waiter = self.pending[call] = _Pending(peer)
        try:
            await self.send(peer, kind, obj, call, flush=True)
            self.flush_all()                    # an asker waits anyway: send now, not at the next batch
            link = self.links[peer]
            if timeout is None:
                await self._await_reply(link, waiter)
            else:
                with trio.move_on_after(timeout):
                    await self._await_reply(link, waiter)
        finally:
            self.pending.pop(call, None)
        if not waiter.kind:
            return None, 0
        if waiter.kind == -1:
            raise ActorStoppedError(f"{self.describe(peer)} stopped before it replied")
        return waiter.kind, waiter.offset

    async def _await_reply(self, link: Link, waiter: _Pending) -> None:
        # One asking task at a time reads the link's replies (for every asker of that peer); the others park until
        # their reply arrives or the reader hands the reading over. The common case, a single asker, reads its
        # reply itself: no task switch.
        while not waiter.kind:
            if link.dead:
                _resolve(waiter, -1, 0)
                return
            if link.reading:
                if link.handover is None:
                    link.handover = trio.Event()
                handover = link.handover
                with trio.CancelScope() as scope:
                    waiter.scope = scope
                    await handover.wait()
                waiter.scope = None
                continue
            link.reading = True
            try:
                await self._read_replies(link, waiter)
            finally:
                link.reading = False
                if link.handover is not None:
                    link.handover.set()
                    link.handover = None

    async def _read_replies(self, link: Link, waiter: _Pending) -> None:
        sock = link.sock
        pending = self.pending
        spin_until = time.perf_counter() + SPIN
        while not waiter.kind:
            view = memoryview(link.inbuf)
            try:
                n = sock.recv_into(view[link.have:])
            except BlockingIOError:
                # Spin briefly before sleeping in epoll: a reply usually comes within microseconds, and a waiting
                # process that stays on its CPU lets the replier run on the other one instead of the two taking
                # turns on one. sched_yield gives the CPU to a replier woken here.
                if time.perf_counter() < spin_until:
                    os.sched_yield()
                    continue
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                n = 0
            if n == 0:
                self._died(link)
                return
            link.have += n
            usable = link.have - link.have % RECORD_SIZE
            for off, kind, _src, call in RECORD.iter_unpack(view[:usable]):
                other = pending.pop(call, None)
                if other is None:
                    self.arena.decref_id(off)       # its ask timed out: a dead letter
                    continue
                _resolve(other, kind, off)
            view.release()
            if usable < link.have:
                link.inbuf[:link.have - usable] = link.inbuf[usable:link.have]
            link.have -= usable


class StoreFull(Exception):
    """Internal: the store had no room for a message; `prepared` holds it, encoded, for a later try."""

    def __init__(self, prepared):
        self.prepared = prepared
