"""Asks: requests that wait for a reply, and the reading of replies.

A reply travels back on the connection its ask went out on, where the asking task itself reads it (one asker per
link reads at a time, for all of them; the others park until their reply arrives or the reading is handed over),
so an actor awaiting an ask inside a handler still gets its reply. The reading is the endpoint's one record-reading
loop (`Inbox._read_link`); on a link to a persistent receiver one task runs it for good, and it also takes the acks.
"""
from __future__ import annotations

import os

import trio

from actors._exceptions import ActorStoppedError
from actors._wire.protocol import RECORD, RECORD_SIZE, STATUS

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
        timeout. The timeout covers the whole request: room in the store and in the mailbox, a peer that is being
        restarted, and the reply."""
        call = next(self.calls)
        waiter = self.pending[call] = Pending(peer)
        try:
            if timeout is None:
                deadline = float("inf")
                await self._request(peer, kind, obj, call, waiter)
            else:
                deadline = trio.current_time() + timeout
                with trio.move_on_at(deadline):
                    await self._request(peer, kind, obj, call, waiter)
        finally:
            self.pending.pop(call, None)
        if not waiter.kind:
            return None, 0
        if waiter.kind == -1:
            link = self.links.get(peer)
            if link is not None and link.why:
                raise ActorStoppedError(f"cannot ask {self.describe(peer)}: {link.why}")
            cause = None
            with trio.move_on_at(deadline):     # within the ask's timeout, too
                cause = await self.death_cause(peer)
            raise ActorStoppedError(f"{self.describe(peer)} stopped before it replied" + (f": {cause}" if cause
                                                                                         else ""))
        return waiter.kind, waiter.offset

    async def peer_status(self, peer: int, timeout: float):
        """(records handled, records waiting) from `peer`'s endpoint, asked on a connection of its own so that its
        reader answers at once, whatever its handler is doing; None if it does not answer within `timeout`; False
        if it has ended or is ending: nothing listens for it, or it closed the connection without an answer (a
        killed process's listener accepts until its last thread is gone)."""
        try:
            link = self.transport.connect(peer)
        except OSError:
            return False
        try:
            link.send(RECORD.pack(0, STATUS, self.id, 0))
            answer = bytearray()
            with trio.move_on_after(timeout):
                while len(answer) < RECORD_SIZE:
                    await link.wait_readable()
                    chunk = bytearray(RECORD_SIZE - len(answer))
                    n = link.recv_into(chunk)
                    if n == 0:
                        return False
                    answer += chunk[:n]
            if len(answer) < RECORD_SIZE:
                return None
            handled, _kind, _src, waiting = RECORD.unpack(answer)
            return handled, waiting
        except OSError:
            return False
        finally:
            link.close()

    async def _request(self, peer: int, kind: int, obj, call: int, waiter: Pending) -> None:
        while True:
            try:
                await self.send(peer, kind, obj, call, flush=True)
                break
            except ActorStoppedError:
                # nothing was sent: if the peer is being restarted, ask its next incarnation (as Ray queues the
                # calls made while an actor restarts)
                waiter.kind = 0             # the old incarnation's death resolved it: nothing was sent
                self.pending[call] = waiter
                if not await self.wait_restarted(peer):
                    raise
        self.flush_all()                    # an asker waits anyway: send now, not at the next batch
        await self._await_reply(self.links[peer], waiter)

    async def wait_restarted(self, peer: int) -> bool:
        """Wait while `peer` is being restarted; True once it takes connections again, False when it has stopped
        for good (the system marks that through the transport) or this endpoint is closing."""
        link = self.links.get(peer)
        if link is not None and link.persistent:
            while link.dead and link.persistent:        # its acker reconnects, and resends what it holds
                if link.room.is_set():
                    link.room = trio.Event()
                await link.room.wait()
            return not link.dead
        delay = 0.001
        while not self.transport.is_gone(peer) and not self.closed:
            try:
                (await self.open_link_now(peer)).close()    # a probe: is the new incarnation listening yet?
                return True
            except OSError:
                pass
            await trio.sleep(delay)        # polling for the restart, with backoff (no event crosses processes)
            delay = min(delay * 2, 0.05)
        return False

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
                if not await self._read_link(link, waiter, SPIN):
                    self._died(link)
            finally:
                link.reading = False
                if link.handover is not None:
                    link.handover.set()
                    link.handover = None
