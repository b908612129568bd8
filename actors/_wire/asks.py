"""Asks: requests that wait for a reply, and the reading of replies.

A reply travels back on the connection its ask went out on, where the asking task itself reads it (one asker per
link reads at a time, for all of them; the others park until their reply arrives or the reading is handed over),
so an actor awaiting an ask inside a handler still gets its reply. On a link to a persistent receiver the same
loop, run for good by one task, also reads the receiver's acks.
"""
from __future__ import annotations

import os
import time

import trio

from actors._exceptions import ActorStoppedError
from actors._wire.protocol import ACK, RECORD, RECORD_SIZE

# How long an asker (or a reader) spins for more before sleeping in epoll (ACTORS_SPIN_US; 0 turns it off).
SPIN = float(os.environ.get("ACTORS_SPIN_US", "100")) * 1e-6


class Pending:
    """One ask waiting for its reply."""
    __slots__ = ("peer", "kind", "offset", "scope")

    def __init__(self, peer: int):
        self.peer = peer
        self.kind = 0           # set when the reply arrives: REPLY, ERROR, or -1 (the peer died)
        self.offset = 0
        self.scope = None


def resolve(waiter: Pending, kind: int, offset: int) -> None:
    waiter.kind = kind
    waiter.offset = offset
    if waiter.scope is not None:        # it is parked waiting for the reading to be handed over: wake it
        waiter.scope.cancel()


class Asks:
    """The asking side of `Endpoint` (a part of it, kept in its own room)."""

    async def request(self, peer: int, kind: int, obj, timeout: float | None = None):
        """Send `obj` and wait for the reply; (reply kind, store offset of the reply payload), or (None, 0) on
        timeout."""
        call = next(self.calls)
        waiter = self.pending[call] = Pending(peer)
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

    async def _await_reply(self, link, waiter: Pending) -> None:
        # One asking task at a time reads the link's replies (for every asker of that peer); the others park until
        # their reply arrives or the reader hands the reading over. The common case, a single asker, reads its
        # reply itself: no task switch.
        while not waiter.kind:
            if link.dead:
                resolve(waiter, -1, 0)
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
                if not await self._read_link(link, waiter):
                    self._died(link)
            finally:
                link.reading = False
                if link.handover is not None:
                    link.handover.set()
                    link.handover = None

    async def _read_link(self, link, waiter: Pending | None) -> bool:
        """Read what arrives on one of our outgoing links: replies to our asks, and a persistent receiver's acks.
        An asker reads until its own reply is in (`waiter`); a persistent link's reader (no waiter) for as long as
        the link lives. False once the peer closed the link."""
        recv_into = link.recv_into
        pending = self.pending
        # An asker spins briefly before sleeping in epoll: a reply usually comes within microseconds, and a waiting
        # process that stays on its CPU lets the replier run on the other one instead of the two taking turns on
        # one. sched_yield gives the CPU to a replier woken here.
        spin_until = time.perf_counter() + SPIN if waiter is not None else 0.0
        while waiter is None or not waiter.kind:
            view = memoryview(link.inbuf)
            try:
                n = recv_into(view[link.have:])
            except BlockingIOError:
                if time.perf_counter() < spin_until:
                    os.sched_yield()
                    continue
                try:
                    await link.wait_readable()
                except trio.ClosedResourceError:
                    if waiter is not None:
                        raise
                    return False
                continue
            except OSError:
                n = 0
            if n == 0:
                return False
            link.have += n
            usable = link.have - link.have % RECORD_SIZE
            for off, kind, _src, call in RECORD.iter_unpack(view[:usable]):
                if kind == ACK:
                    self._acked(link, call)
                    continue
                other = pending.pop(call, None)
                if other is None:
                    self.arena.decref_id(off)       # its ask timed out: a dead letter
                    continue
                resolve(other, kind, off)
            view.release()
            if usable < link.have:
                link.inbuf[:link.have - usable] = link.inbuf[usable:link.have]
            link.have -= usable
        return True
