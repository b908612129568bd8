"""At-least-once delivery to persistent receivers: sequence numbers, acks, resend, reconnect.

A tell to a persistent receiver is numbered (with this endpoint's epoch, sent in HELLO) and its payload held, a
second count, until the receiver acks having journaled it. When the receiver goes away, its link keeps those tells;
once it is back (same id) they are resent on a new link, and the receiver drops what it had already journaled.
"""
from __future__ import annotations

import logging

import trio

from actors._wire.protocol import ACK, HELLO, RECORD, RECORD_SIZE, TELL

log = logging.getLogger(__name__)



class Delivery:
    """The persistent-delivery side of `Endpoint` (a part of it, kept in its own room)."""

    def _post_unacked(self, link, obj) -> int:
        """Put a tell to a persistent actor in the store and its record in `link`'s outbox (or nowhere, while the
        link is dead): numbered, and its payload held (a second count) until the actor acks having journaled it.
        Only (seq, offset) is kept: the record is rebuilt to resend it. The payload's size; `post` does the rest."""
        out = link.out if not link.dead else bytearray()
        arena = self.arena
        size = arena.post_held(obj, out, self.id, self.calls, link.unacked)
        if size < 0:
            raise self._store_full(obj)
        if link.remote and arena.payload_refs(arena.last_offset):
            arena.release_newest(link.unacked)      # the count held for the resend
            self._refuse_refs(link, out)
        return size

    def _acked(self, link, seq: int) -> None:
        self.arena.release_acked(link.unacked, seq)
        link.room.set()

    def send_ack(self, src: int, seq: int) -> None:
        """Tell `src` that everything it sent up to `seq` is journaled (it may release its copies)."""
        link = self.reply_links.get(src)
        if link is None or link.dead:
            return
        link.out += RECORD.pack(0, ACK, self.id, seq)
        self._dirty(link, wake=not self.in_batch())

    async def _acker(self, link) -> None:
        """Read a persistent actor's acks (and replies) on our connection to it; when it dies, reconnect."""
        try:
            await self._read_link(link)
        except trio.ClosedResourceError:
            pass                        # closed here (the endpoint closing, or the peer forgotten)
        if not self.closed and self.links.get(link.peer) is link:
            self._lost(link)

    def _held_link(self, peer: int):
        """The link for a persistent actor that is down (restarting) before this endpoint ever reached it: as one
        whose actor died, it holds the tells, and reconnects to send them once the actor is back. None when the
        actor is gone for good, or the transport cannot make a link before it connects."""
        if self.transport.is_gone(peer):
            return None
        try:
            link = self.transport.unconnected(peer)
        except OSError:
            return None                     # out of descriptors, say: the tell is refused as before
        if link is None:
            return None
        link.persistent = True
        link.reading = True                 # its acker, started once it connects, reads it for good
        link.dead = True
        self.links[peer] = link
        self.nursery.start_soon(self._reconnect, link)
        return link

    def _lost(self, link) -> None:
        """A persistent actor went away: fail the asks waiting on it, keep its unacked tells, and reconnect."""
        link.dead = True
        if link.incarnation is not None:
            self.dead_incarnations[link.peer] = link.incarnation
        for off, kind, _src, _call in RECORD.iter_unpack(link.out[:len(link.out) - len(link.out) % RECORD_SIZE]):
            if kind != TELL and kind != HELLO:
                self.arena.decref_id(off)       # asks in flight: their askers are told below
        link.out.clear()
        self._fail_asks(link.peer)
        link.close()
        self.nursery.start_soon(self._reconnect, link)

    async def _reconnect(self, link) -> None:
        delay = 0.01
        # Hold the tells for as long as the system restarts the actor: until it marks the actor gone for good
        # (the system itself going ends this process, or cancels this task).
        while True:
            await trio.sleep(delay)        # backoff between attempts, not synchronisation
            delay = min(delay * 2, 0.5)
            if self.transport.is_gone(link.peer):
                break
            try:
                fresh = await self.open_link_now(link.peer)
            except OSError:
                continue
            link.adopt(fresh)               # the same link (senders hold it), on the new connection
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
        dropped = self.arena.release_held(link.unacked)
        if dropped:
            log.warning("%d message(s) to %s were not delivered: it stopped for good (dead letters)",
                        dropped, self.describe(link.peer))
        link.persistent = False
        link.room.set()
