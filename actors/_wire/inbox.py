"""The inbox: reading the records that arrive on the links peers opened to us, and running them through the
endpoint's handler in batches.

A reader queues each batch it reads in one step; when the handlers are idle it runs the batch right there, with no
hop to another task. Bounds (backpressure, never dropping): at most INBOX_BATCHES batches wait; past that the reader
stops reading, and the kernel's socket buffers and then the sender's outbox fill up.
"""
from __future__ import annotations

import operator
import os
import time

import trio

from actors._wire.asks import SPIN, resolve
from actors._wire.protocol import ACK, ERROR, HELLO, NODE_GONE, RECORD, RECORD_SIZE, REPLY, STATUS, TELL

INBOX_BATCHES = 8
READ_SIZE = 1 << 18


class Inbox:
    """The receiving side of `Endpoint` (a part of it, kept in its own room)."""

    async def _reader(self, link):
        """Read a link a peer opened to us, for as long as it lives; then it is closed, and its peer's replies
        have nowhere to go."""
        link.inbuf = bytearray(READ_SIZE)
        try:
            await self._read_link(link, None, SPIN)
        finally:
            if link.peer >= 0:
                self.closed_by.setdefault(link.peer, trio.Event()).set()
                link.dead = True
                if self.reply_links.get(link.peer) is link:
                    del self.reply_links[link.peer]
            link.close()

    async def _read_link(self, link, waiter=None, spin: float = 0.0) -> bool:
        """The one loop that reads records, for every link.

        On a link a peer opened to us, it runs the records it reads through the handler (or queues them while the
        handler is busy) until the link ends. On one of our outgoing links it takes the replies to our asks and a
        persistent receiver's acks: an asker reads until its own reply (`waiter`) is in; a persistent link's reader
        (no waiter) for as long as the link lives. False once the peer closed the link.

        Waiting: after a read that brought records (and, for an asker, from the start) it spins for `spin` seconds,
        yielding the CPU, before sleeping in epoll, so that a busy receiver stays on its own CPU instead of being
        woken onto its sender's, and an asker whose reply comes within microseconds is not put to sleep.
        """
        buf = link.inbuf
        view = memoryview(buf)
        size = len(buf)
        have = link.have
        unpack = RECORD.iter_unpack
        pending = self.pending
        recv_into = link.recv_into
        drained = False
        spin_until = time.perf_counter() + spin if waiter is not None else 0.0
        epoch = 0
        try:
            while waiter is None or not waiter.kind:
                if drained:                 # the last read came up short: the socket is empty, wait first
                    try:
                        await link.wait_readable()
                    except trio.ClosedResourceError:
                        return False        # closed here: the peer is gone (a node lost, say)
                try:
                    n = recv_into(view[have:])
                except BlockingIOError:
                    if not drained and time.perf_counter() < spin_until:
                        os.sched_yield()
                        continue
                    drained = True
                    continue
                except OSError:
                    return False
                if n == 0:
                    return False
                if spin:
                    spin_until = time.perf_counter() + spin
                drained = have + n < size
                have += n
                usable = have - have % RECORD_SIZE
                work = []
                for rec in unpack(view[:usable]):
                    kind = rec[1]
                    if kind == REPLY or kind == ERROR:
                        waiter_of = pending.pop(rec[3], None)
                        if waiter_of is None:
                            self.arena.decref_id(rec[0])     # its ask timed out: a dead letter
                            continue
                        resolve(waiter_of, kind, rec[0])
                    elif kind >= HELLO:                     # HELLO, ACK or STATUS: no payload
                        if kind == HELLO:
                            epoch = rec[3]
                            if link.peer < 0:
                                self._reply_link(rec[2], link)
                        elif kind == ACK:
                            self._acked(link, rec[3])
                        elif kind == STATUS:
                            self._answer_status(link)
                        elif kind == NODE_GONE:
                            self.node_gone(rec[3])
                        else:
                            work.append(rec)
                    else:
                        work.append(rec)
                if usable < have:
                    buf[:have - usable] = buf[usable:have]
                have -= usable
                if not work:
                    continue
                if link.peer < 0:
                    self._reply_link(work[0][2], link)
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
            return True
        finally:
            link.have = have
            view.release()

    def figures(self) -> tuple[int, int]:
        """(records handled, the one in progress included; records waiting for the handler: the rest of the batch
        in progress, the queued batches, and what is still unread on the connections peers opened to us)."""
        left = operator.length_hint(self.running)
        unread = sum(link.unread() + link.have for link in self.reply_links.values() if not link.dead)
        return (self.handled - left,
                left + sum(len(batch) for batch, _epoch in self.queue) + unread // RECORD_SIZE)

    def _answer_status(self, link) -> None:
        # Answered here by the reader, not by the handler: an actor busy in a handler (awaiting) still answers,
        # and nothing the status request queues behind is counted as handled.
        handled, waiting = self.figures()
        try:
            link.send(RECORD.pack(handled, STATUS, self.id, waiting))
        except OSError:
            pass            # the asker is gone

    def _reply_link(self, src: int, link):
        # The connection `src` opened to us is where our replies (and acks) to it go.
        link.peer = src
        self.reply_links[src] = link
        return link

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
                self.handled += len(batch)
                self.running = records = iter(batch)    # how far it has got, for status, at no cost per record
                for rec in records:
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
                msg = None      # the batch's last message: its block is freed below, not at the next batch
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

    def start_handling(self) -> None:
        """Start running records through the handler (what arrived before waits in the queue until now). The
        handler's per-record methods are looked up here, once, not per record."""
        handler = self.handler
        self.fast_tell = handler.fast_tell
        self.on_tell_error = handler.on_tell_error
        self.journal_batch = handler.journal_batch
        self.after_batch = handler.after_batch
        self.handle = handler.handle
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

    def stop_receiving(self) -> None:
        """Release whatever is queued; later records are released on arrival (dead letters)."""
        self.stopped.set()
        while self.queue:
            self._release(self.queue.popleft()[0])
        self.queue_room.set()
