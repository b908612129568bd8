"""Endpoints: how object IDs travel between processes.

A message's payload is put into the shared-memory store by its sender; only a 24-byte record (store offset, kind,
sender id, call id) crosses a link. Records are appended to a per-destination outbox and written in batches with
non-blocking sends; a reader queues each batch it reads for the handler in one step (`inbox.py`). So the hot path
costs no scheduler pass per message: a `tell` only yields when the mailbox is full.

Bounds (backpressure, never dropping): the sender's outbox (`mailbox_size` records), the transport's buffers, and
the receiver's queue of batches. Records from one sender to one receiver arrive in the order they were sent.

The endpoint is one object made of rooms: this module (routing a peer to its link, post/send/room, flushing,
liveness), `inbox.py` (reading and handling what arrives), `asks.py` (requests and their replies) and `delivery.py`
(at-least-once delivery to persistent receivers). It reaches peers through a `Transport` and its `Link`s
(`link.py`), so it does not know what carries the records.
"""
from __future__ import annotations

import abc
import collections
import errno
import itertools
import logging
import os
import secrets
import time

import numpy as np
import trio

from _fastser._shm import SharedBlock
from actors._exceptions import ActorsError, ActorStoppedError, MailboxFullError, StoreFull, StoreFullError
from actors._wire.asks import Asks, resolve
from actors._wire.delivery import Delivery
from actors._wire.inbox import Inbox, SpinPolicy
from actors._wire.link import FLUSH_RECORDS, Link, Transport, Unreachable
from actors._wire.protocol import ACK, ERROR, HELLO, NODE_GONE, NODE_SHIFT, RECORD, RECORD_SIZE, REPLY, TELL

log = logging.getLogger(__name__)

_ndarray = np.ndarray
FLUSH_BYTES = 1 << 20
SMALL_BYTES = 1 << 12       # a message under this many bytes is counted towards a write by its record alone:
                            # FLUSH_RECORDS of them stay under FLUSH_BYTES
LARGE_BYTES = 1 << 16       # a message of this many bytes or more counts towards the sender's lead
LEAD_BYTES = 8 << 20        # how far a sender of large messages may run ahead of its receiver
LEAD_SPIN = 0.00025         # seconds a sender waits at most for its receiver to catch up
ACCEPT_PAUSE = 0.1          # seconds a listener out of file descriptors waits before it accepts again
ACCEPT_SHORT_FOR = 5.0      # and for how long at most, before the endpoint fails with the reason
# What accept() raises when this process (or the machine) is out of descriptors or memory for one more connection:
# the connection waits in the backlog meanwhile, and the endpoint goes on (trio's own serve_listeners does the same),
# for a while: a spawn waiting for its actor to connect would otherwise wait for ever.
_ACCEPT_SHORT = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _too_large(size: int, capacity: int) -> str:
    return (f"cannot send a message of {size} bytes: it is larger than the whole store ({capacity} bytes); start "
            f"the system with a larger store_capacity")


class Handler(abc.ABC):
    """What an endpoint calls, passed to it at construction: one object instead of hooks set from outside.

    `handle` runs each record that is not a reply; the optional attributes, when set, change how a batch is run.
    The endpoint looks them up once, when it starts handling (`Endpoint.start_handling`), not per record.
    """
    fast_tell = None        # async (message) -> None: tells are decoded by the endpoint and go straight to it
    journal_batch = None    # (batch, epoch) -> (records to handle, seq to ack): a persistent receiver's journal
    journal_durable = None  # () -> None: returns once they are durable; nothing is handled or acked before
    after_batch = None      # () -> None, after each handled batch (a persistent receiver's snapshots)

    @abc.abstractmethod
    async def handle(self, offset: int, kind: int, src: int, call: int) -> bool:
        """Handle one record (its payload's count is the handler's); True to stop receiving."""

    def on_tell_error(self, record: tuple, exc: BaseException) -> None:
        """`fast_tell` raised on `record`."""

    def on_death(self, peer: int) -> None:
        """The link to `peer` died (it stopped or crashed)."""

    async def death_cause(self, peer: int) -> str | None:
        """Why `peer` ended, when this process can learn it (the system's does: it reaps the actors); an asker's
        error then says it ("exit code 3", "killed by SIGSEGV") rather than only that the actor stopped."""
        return None


class Endpoint(Inbox, Asks, Delivery):
    """One process's place in the system: it listens for records, and sends them to other endpoints."""

    def __init__(self, endpoint_id: int, transport: Transport, arena, handler: Handler, *,
                 mailbox_size: int = 4096, names: dict | None = None):
        self.id = endpoint_id
        self.transport = transport
        self.arena = arena
        self.handler = handler
        self.on_death = handler.on_death
        self.death_cause = handler.death_cause
        self.limit = mailbox_size * RECORD_SIZE
        self.max_unacked = mailbox_size     # tells a persistent receiver has not acked yet, at most
        self.names = names if names is not None else {}
        self.links: dict[int, Link] = {}
        self.reply_links: dict[int, Link] = {}  # src -> the connection its requests arrive on
        self.closed_by: dict[int, trio.Event] = {}  # src -> set when its connection to us has ended
        self.unnamed = 0                # connections to us not read yet: their peers have not said who they are
        self.pending: dict = {}
        self.calls = itertools.count(1)     # call ids, and the sequence numbers of tells to persistent actors
        # Names this process's sequence numbers to receivers: its node's number (never reused) over 50 random bits,
        # so that no two senders of a cluster share one.
        self.epoch = (endpoint_id >> NODE_SHIFT) << 50 | secrets.randbits(50) | 1
        self.persistent: set[int] = set()   # peers that journal what they receive (and ack it)
        self.dead_incarnations: dict = {}   # peer -> the incarnation its last link died with
        # The handler's per-record methods, set by start_handling; until then, what arrives waits in the queue.
        self.handle = None
        self.fast_tell = None
        self.on_tell_error = None
        self.journal_batch = None
        self.journal_durable = None
        self.after_batch = None
        self.handled = 0                    # records run through the handler, counted per batch (status)
        self.running = iter(())             # the batch being handled, as the iterator the handler loop runs
        self.ahead = None                   # and the tells taken from it, decoded, not handled yet

        self.dirty: list[Link] = []
        self.wake = trio.Event()
        self.queue: collections.deque = collections.deque()
        self.busy = False
        self.batch_task = None              # the task running the batch while busy
        self.queue_room = trio.Event()
        self.stopped = trio.Event()
        self.halted = False                 # stopped.is_set(), as an attribute: the inbox checks it per record
        self.nursery: trio.Nursery | None = None
        self.closed = False
        self.listeners = transport.listeners(endpoint_id)

    def describe(self, peer: int) -> str:
        name = self.names.get(peer)
        who = f"actor {name!r}" if name else ("the system" if peer == 0 else f"actor #{peer}")
        return who + self.transport.where(peer)

    def introduce(self, peer: int, name: str, persistent: bool) -> None:
        """What the endpoint needs to know of a peer before it first connects: its name (for errors), and whether
        it journals what it receives (then tells to it are numbered, held and acked)."""
        self.names[peer] = name
        if persistent:
            self.persistent.add(peer)

    # -- running -------------------------------------------------------------------------------------------------

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        """Accept connections and flush outboxes until cancelled."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._flusher)
            for listener in self.listeners:
                nursery.start_soon(self._accept, listener)
            task_status.started()

    async def _accept(self, listener) -> None:
        short_since = None
        while True:
            try:
                await listener.wait_readable()
            except trio.ClosedResourceError:
                return                  # the endpoint closed while it still served
            while True:
                try:
                    link = listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_SHORT:
                        raise
                    now = trio.current_time()
                    if short_since is None:
                        short_since = now
                        log.error("cannot accept a connection: %s; it waits until a descriptor is free",
                                  os.strerror(exc.errno))
                    elif now - short_since > ACCEPT_SHORT_FOR:
                        raise OSError(exc.errno, f"{os.strerror(exc.errno)}: this process could not accept a "
                                                 f"connection for {ACCEPT_SHORT_FOR:g} s; it holds one per actor "
                                                 f"it talks to: raise its limit (`ulimit -n`, `ulimit -Hn` as root)")
                    await trio.sleep(ACCEPT_PAUSE)
                    break
                short_since = None      # it accepted, or found the backlog empty: descriptors are there again
                if link is None:
                    break
                self.accept_link(link)

    def accept_link(self, link: Link) -> None:
        """Read `link`, accepted somewhere else (a node's gateway), as if it had come in through a listener."""
        if link.peer < 0:
            self.unnamed += 1           # from now, not from its reader's start: `unnamed` is read in between
        self.nursery.start_soon(self._reader, link)

    def accept_waiting(self) -> None:
        """Accept now the connections waiting on this endpoint's listeners (counted in `unnamed` from here): for the
        driver, which must know whether a dead actor had connected to it before it decides how the actor ended.
        (Its listener is a Unix socket's, which accepts without waiting.)"""
        for listener in self.listeners:
            while True:
                try:
                    link = listener.accept()
                except OSError:
                    break               # out of descriptors, say: `_accept` deals with it
                if link is None:
                    break
                self.accept_link(link)

    def close(self):
        """Release every payload still queued here, and stop listening."""
        if self.closed:
            return
        self.closed = True
        for link in self.links.values():
            self._drop_outbox(link)
            link.close()
        while self.queue:
            self._release(self.queue.popleft()[0])
        for listener in self.listeners:
            listener.close()

    def forget(self, peer: int) -> None:
        """`peer` has stopped for good: its link is dead, so the next message to it raises at once."""
        link = self.links.get(peer)
        if link is not None and not link.dead:
            link.persistent = False
            self._died(link)
            link.close()

    def node_gone(self, number: int) -> None:
        """Cluster node `number` has left or is lost: every link to or from its endpoints is dead now (asks waiting
        on them fail, naming the node), whatever the connections themselves still say (a network split leaves
        them open). A persistent actor that will run again (elsewhere, or when its node is back) keeps the tells it
        has not acked: they are sent again once it runs."""
        node_of = self.transport.node_of
        for link in [*self.links.values(), *self.reply_links.values()]:
            if link.peer >= 0 and node_of(link.peer) == number and not link.dead:
                if link.persistent and self.links.get(link.peer) is link and not self.transport.is_gone(link.peer):
                    link.close()        # its acker wakes, and holds its tells until it runs again (`_lost`)
                    continue
                link.persistent = False
                self._died(link)
                link.close()

    def tell_node_gone(self, peer: int, number: int) -> None:
        """Tell the endpoint `peer` (on this machine) that node `number` is gone, on a connection of its own, so
        that its reader acts at once, however busy its handler is."""
        try:
            link = self.transport.connect(peer)
        except OSError:
            return                      # it is not running
        try:
            link.send(RECORD.pack(0, NODE_GONE, self.id, number))
        except OSError:
            pass
        finally:
            link.close()

    # -- sending -------------------------------------------------------------------------------------------------

    def _link(self, peer: int, hold: bool = False) -> Link:
        """The link to `peer`, opened if need be; ActorStoppedError if it is not running. With `hold` (a tell), a
        persistent peer that is down but not gone for good gets a link that holds the tells until it is back."""
        link = self.links.get(peer)
        if link is not None:
            if not link.dead:
                return link
            if link.persistent:
                raise ActorStoppedError(f"cannot send to {self.describe(peer)} now: it is restarting, or has "
                                        f"stopped")
            del self.links[peer]        # it may have been restarted: try a fresh connection
        try:
            link = self.open_link(peer)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if hold and peer in self.persistent and not getattr(exc, "gone", False):
                link = self._held_link(peer)
                if link is not None:
                    return link
            why = exc.why if isinstance(exc, Unreachable) else "it is not running"
            raise ActorStoppedError(f"cannot send to {self.describe(peer)}: {why}") from None
        self.links[peer] = link
        link.out += RECORD.pack(0, HELLO, self.id, self.epoch)
        if link.pending:                # being dialed: what is posted meanwhile waits in its outbox
            self.nursery.start_soon(self._establish, link)
        if peer in self.persistent:
            link.persistent = True
            link.reading = True             # the ack reader reads this link for good (replies included)
            self.nursery.start_soon(self._acker, link)
        return link

    def open_link(self, peer: int) -> Link:
        """A new link to `peer` from the transport, refused (ConnectionRefusedError) if it reaches the process whose
        link to `peer` died: that one is still exiting, and anything sent to it would be lost. A pending link (a
        dial to another machine) is checked when it is established."""
        link = self.transport.connect(peer)
        if not link.pending:
            self._check_incarnation(link)
        return link

    def _check_incarnation(self, link: Link) -> None:
        if link.incarnation is not None and link.incarnation == self.dead_incarnations.get(link.peer):
            link.close()
            raise ConnectionRefusedError(f"{self.describe(link.peer)} is still exiting")

    async def open_link_now(self, peer: int) -> Link:
        """`open_link`, established: for whoever must know that it works before using it (a reconnect, a probe)."""
        link = self.open_link(peer)
        if link.pending:
            try:
                await link.establish()
                self._check_incarnation(link)
            except BaseException as exc:
                if isinstance(exc, OSError):
                    self.transport.unreachable(peer, exc)
                link.close()
                raise
        return link

    async def _establish(self, link: Link) -> None:
        """Finish dialing a link that messages are already queued on; if it cannot be, it dies like a link whose
        peer went away (asks on it fail, saying why; what was queued is logged as dead letters)."""
        try:
            await link.establish()
            self._check_incarnation(link)
        except OSError as exc:
            self.transport.unreachable(link.peer, exc)
            link.why = exc.why if isinstance(exc, Unreachable) else str(exc)
            if not link.persistent:     # (a persistent link's acker sees it closed, and reconnects)
                self._died(link)
            link.close()
            return
        if link.out and not link.dead:
            self._dirty(link, wake=True)

    def connect(self, peer: int) -> None:
        """Open the link to `peer` now (the first message would otherwise); ActorStoppedError if it is not
        running."""
        self._link(peer)

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
            if link is None or link.dead:
                if link is None or not link.persistent or kind != TELL:
                    link = self._link(peer, hold=kind == TELL)
                if link.dead:
                    self._post_unacked(link, obj)       # it is restarting: held, resent when it is back
                    return link
        arena = self.arena
        if link.persistent and kind == TELL:
            size = self._post_unacked(link, obj)
        elif type(obj) is _ndarray and type(obj.base) is SharedBlock and obj.base.owns(obj):
            obj.flags.writeable = False         # an actors.shared_array is its own message: no copy
            placed = arena.put_shared(obj.base)
            size = obj.nbytes
            link.out += RECORD.pack(placed[0], kind, self.id, call)
        else:
            size = arena.post_record(obj, link.out, kind, self.id, call)
            if size < 0:
                raise self._store_full(obj)
            if link.remote and arena.payload_refs(arena.last_offset):
                self._refuse_refs(link, link.out)
            if size >= LARGE_BYTES:
                self.lead(link, size)
        if len(link.out) == RECORD_SIZE and not link.reading:
            self._send_first(link)
            if not link.out:
                return link
        if size >= SMALL_BYTES:         # counted by its bytes too (a small one by its record alone)
            link.unsent_bytes += size
        if link.unsent_bytes >= FLUSH_BYTES or len(link.out) >= link.flush_mark:
            # Stream rather than burst: a few hundred records per write keep a busy receiver fed (and on its own
            # CPU) for a syscall per few hundred messages. Large payloads go out at once: batching them would hold
            # many blocks of fresh, cold memory, where a prompt send lets the receiver release each one for the
            # next to reuse, warm.
            self.flush_now(link)
        if not link.draining:
            self.dirty_link(link, flush)
        return link

    def dirty_link(self, link: Link, flush: bool = False) -> None:
        """List `link` (not listed yet) for the next flush; unless told that the caller flushes, or it is the task
        running a batch (`in_batch`), wake the flusher, which writes it as soon as this task yields."""
        link.draining = True
        self.dirty.append(link)
        if not flush and not self.in_batch():
            self.wake.set()

    def count_bytes(self, link: Link, size: int) -> None:
        """A message of SMALL_BYTES or more was just posted on `link`: write its outbox once FLUSH_BYTES of them
        wait (besides every FLUSH_RECORDS records); a large one also counts towards the lead."""
        if size >= LARGE_BYTES:
            self.lead(link, size)
        link.unsent_bytes += size
        if link.unsent_bytes >= FLUSH_BYTES or len(link.out) >= link.flush_mark:
            self.flush_now(link)

    def lead(self, link: Link, size: int) -> None:
        """The large message just posted on `link` counts towards its lead over the receiver (`_keep_lead`)."""
        arena = self.arena
        link.lead.append((arena.last_offset, arena.last_generation, size))
        link.lead_bytes += size
        if link.lead_bytes > LEAD_BYTES:
            self._keep_lead(link)

    def flush_now(self, link: Link) -> None:
        """Write what `link` holds now (a few hundred records, or FLUSH_BYTES of payloads, are waiting)."""
        self._flush(link)
        link.flush_mark = len(link.out) + FLUSH_RECORDS * RECORD_SIZE

    def in_batch(self) -> bool:
        """Is this the task running a batch of handlers? Its records leave when the batch ends (`Inbox._run`
        flushes), so it need not wake the flusher, whose pass would find nothing left to write. Any other task
        (the driver's program, say, while a handler is suspended) still wakes it."""
        return self.busy and trio.lowlevel.current_task() is self.batch_task

    def _refuse_refs(self, link: Link, out: bytearray) -> None:
        """The message just appended to `out` holds ObjectRefs, and goes to another machine: take it back."""
        off = self.arena.last_offset
        del out[-RECORD_SIZE:]
        self.arena.decref_id(off)
        raise ActorsError(f"cannot send to {self.describe(link.peer)}: the message holds an ObjectRef, which names a "
                          f"block in this machine's shared memory; send the object itself (ref.get()) instead")

    def _store_full(self, obj) -> StoreFull:
        return StoreFull(self.arena.prepare(obj))

    def _dirty(self, link: Link, wake: bool) -> None:
        """`link` has records to write: list it for the next flush, and wake the flusher if asked."""
        if not link.draining:
            link.draining = True
            self.dirty.append(link)
            if wake:
                self.wake.set()

    def _send_first(self, link: Link) -> None:
        """The record just posted is alone in the outbox of a link that was idle for a millisecond: write it at once,
        so that the send, which is due anyway (this message's own, or its batch's end), tells whether the peer has
        closed the connection (it stopped or died). Then the message raises here rather than going out and being
        dropped as a dead letter, and no tell pays a system call of its own to ask whether its peer is alive.
        Nobody else reads an idle link, so this is how a sender learns of the peer's end; at most once a
        millisecond a link, so that a sender streaming messages still writes them in groups."""
        now = time.perf_counter()
        if now - link.checked < 0.001:
            return
        link.checked = now
        try:
            n = link.send(link.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop_outbox(link)         # this message raises: it is not a dead letter
            self._died(link)
            raise ActorStoppedError(f"cannot send to {self.describe(link.peer)}: it has stopped") from None
        del link.out[:n]

    def post_nowait(self, peer: int, kind: int, obj, call: int = 0) -> None:
        link = self.links.get(peer)
        if link is not None and (len(link.out) >= self.limit or link.persistent and link.unacked and self.full(link)):
            self._flush(link)
            if self.full(link):
                raise MailboxFullError(f"the mailbox of {self.describe(peer)} is full; use `await tell(...)` "
                                       f"to wait for room")
        try:
            self.post(peer, kind, obj, call)
        except StoreFull as full:
            self.arena.abandon(full.prepared)
            if full.prepared[1] > self.arena.capacity:
                raise StoreFullError(_too_large(full.prepared[1], self.arena.capacity)) from None
            raise StoreFullError("cannot send: the shared-memory store is full; use `await tell(...)` to "
                                 "wait for room") from None

    async def send(self, peer: int, kind: int, obj, call: int = 0, flush: bool = False) -> None:
        """`post`, waiting (only) while the store or the peer's mailbox is full."""
        try:
            link = self.post(peer, kind, obj, call, flush)
        except StoreFull as full:
            link = await self.post_when_room(peer, kind, full.prepared, call, obj, flush)
        if self.full(link):
            await self.room(link)

    def _keep_lead(self, link: Link) -> None:
        """Spin until at most LEAD_BYTES of the large messages sent on `link` are still in its receiver's hands, for
        LEAD_SPIN at most.

        A sender of large messages that ran ahead of its receiver by hundreds of them made both work in cold
        memory: it wrote each into a block untouched for a long while, and the receiver read each long after it
        was written, at the speed of DRAM rather than of the cache. A few messages ahead, the sender writes into
        the blocks the receiver has just freed, and the receiver reads what was just written. A receiver that
        keeps up frees a block within one message's copy, hence a short spin (yielding the CPU). When the spin
        ends first (a receiver slower than that, or one that keeps what it receives, such as arrays it holds on
        to), the sender stops counting the messages sent so far and, as a reader does after spins that catch
        nothing, skips the wait for the next 2, 4, ... large messages (`SpinPolicy`)."""
        policy = link.lead_policy
        if policy is None:
            policy = link.lead_policy = SpinPolicy()
        lead = link.lead
        alive = self.arena.alive
        while lead and not alive(lead[0][0], lead[0][1]):
            link.lead_bytes -= lead.popleft()[2]
        if link.lead_bytes <= LEAD_BYTES:
            return
        if not policy.should_spin():
            lead.clear()
            link.lead_bytes = 0
            return
        self._flush(link)                       # the receiver frees only what it has received
        spin_until = time.perf_counter() + LEAD_SPIN
        while link.lead_bytes > LEAD_BYTES and not link.dead:
            if time.perf_counter() >= spin_until:
                policy.missed()
                lead.clear()
                link.lead_bytes = 0
                return
            os.sched_yield()
            while lead and not alive(lead[0][0], lead[0][1]):
                link.lead_bytes -= lead.popleft()[2]
        policy.caught()

    async def post_when_room(self, peer, kind, prepared, call, obj=None, flush=False):
        """Post `prepared` (`obj`, encoded: `post` found no room for it) once the store has room, for 30 s at most."""
        if kind == TELL and peer in self.persistent and obj is not None:
            return await self._when_room(prepared, lambda placed: self._post_held_placed(peer, obj, placed, flush))

        def post_placed(placed):
            try:
                link = self._link(peer)
            except BaseException:
                self.arena.decref_id(placed[0])
                raise
            link.out += RECORD.pack(placed[0], kind, self.id, call)
            self._flush(link)
            self._dirty(link, wake=True)
            return link, None

        return await self._when_room(prepared, post_placed)

    def _post_held_placed(self, peer: int, obj, placed, flush: bool):
        """A tell to a persistent actor, for which the store has room at `placed`: posted again, so that it is
        numbered and held for a resend like any other (and held while the actor is down), not sent once as a bare
        record that a crash before the actor journals it would lose. The place is given back and `post` encodes the
        message there, numbered; (link, None), or (None, prepared) when another sender took the room meanwhile."""
        self.arena.decref_id(placed[0])
        try:
            return self.post(peer, TELL, obj, 0, flush), None
        except StoreFull as full:
            return None, full.prepared

    async def _when_room(self, prepared, place):
        """Poll the store until it has room for `prepared` (for 30 s at most), and hand the room found to `place`,
        which returns (result, None), or (None, prepared) to wait again. Each poll only tries to place the encoded
        message (no encode). Whatever is not placed is given up: the message is not sent."""
        if prepared[1] > self.arena.capacity:
            self.arena.abandon(prepared)
            raise StoreFullError(_too_large(prepared[1], self.arena.capacity))
        delay = 0.0005
        self.flush_all()        # what this task queued must leave: its receivers free the room it waits for
        try:
            with trio.move_on_after(30):
                while True:
                    await trio.sleep(delay)    # polling for room in the store, with backoff (no event to await)
                    delay = min(delay * 2, 0.05)
                    placed = self.arena.commit(prepared)
                    if placed is None:
                        continue
                    prepared = None
                    result, prepared = place(placed)
                    if prepared is None:
                        return result
        except BaseException:
            if prepared is not None:
                self.arena.abandon(prepared)    # cancelled (an ask's timeout, say): the message is not sent
            raise
        self.arena.abandon(prepared)
        raise StoreFullError("cannot send: the shared-memory store stayed full for 30 s")

    def full(self, link: Link) -> bool:
        return len(link.out) >= self.limit or (link.persistent and len(link.unacked) >= self.max_unacked)

    async def room(self, link: Link) -> None:
        while link.persistent and (link.dead or len(link.unacked) >= self.max_unacked):
            if link.room.is_set():
                link.room = trio.Event()
            # What this task queued must leave before it sleeps: a handler's records otherwise wait for the end of
            # its batch (see in_batch), and the acks that would make room could never come.
            self.flush_all()
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

    # -- flushing ------------------------------------------------------------------------------------------------

    def _flush(self, link: Link) -> bool:
        """Write as much of the outbox as the link takes now; True when it is empty."""
        if not link.out:
            return True
        try:
            n = link.send(link.out)
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
        """Write every dirty outbox now, as far as the links take it; the flusher finishes the rest."""
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

    async def drain(self, timeout: float = 5.0) -> None:
        """Give queued outgoing records a chance to leave (before the process ends)."""
        with trio.move_on_after(timeout):
            while any(link.out and not link.dead for link in self.links.values()):
                self.flush_all()
                await trio.sleep(0.001)    # polling the outboxes, with a deadline

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
                await link.wait_writable()
        except (trio.ClosedResourceError, OSError):
            self._died(link)
        link.draining = False

    # -- peers that go away --------------------------------------------------------------------------------------

    def _died(self, link: Link):
        if link.dead:
            return
        link.dead = True
        if link.incarnation is not None:
            self.dead_incarnations[link.peer] = link.incarnation
        dropped = self._drop_outbox(link)
        if dropped:
            log.warning("%d message(s) to %s were not delivered: %s (dead letters)", dropped,
                        self.describe(link.peer), link.why or "it stopped")
        link.room.set()
        if not self.closed:
            self.on_death(link.peer)
        self._fail_asks(link.peer)

    def _fail_asks(self, peer: int) -> None:
        for call, waiter in list(self.pending.items()):
            if waiter.peer == peer:
                del self.pending[call]
                resolve(waiter, -1, 0)

    def _drop_outbox(self, link: Link) -> int:
        n = 0
        for off, kind, _src, _call in RECORD.iter_unpack(link.out[:len(link.out) - len(link.out) % RECORD_SIZE]):
            if kind == HELLO or kind == ACK:
                continue                    # no payload behind these
            self.arena.decref_id(off)
            n += 1
        link.out.clear()
        return n
