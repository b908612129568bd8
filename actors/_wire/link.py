"""The Link interface: one connection between two endpoints, whatever carries it.

An endpoint sees a peer only through a `Link` (send bytes of records, read them, notice it closed) and a
`Transport` (listen, connect to a peer by id, learn that a peer is gone for good). `uds.py` is the Unix-socket
implementation; a transport between machines is another file implementing the same two classes.

A link also carries the endpoint's per-connection state (its outbox, backpressure, the reading of replies, and the
unacked tells of a persistent receiver), which is the same whatever the transport.
"""
from __future__ import annotations

import abc
import collections

import trio

from _fastser._shm import Held

from actors._wire.protocol import NODE_SHIFT, RECORD_SIZE

FLUSH_RECORDS = 256     # stream rather than burst: write once this many records are waiting


class Link(abc.ABC):
    """The connection from this endpoint to one peer, with its outbox of records.

    The transport methods (`send`, `recv_into`, `wait_readable`, `wait_writable`) are set per instance by an
    implementation to the connection's own bound methods, so a call costs no more than calling the socket itself:
    they run for every read and write of the hot path.
    """
    __slots__ = ("peer", "out", "draining", "room", "dead", "reading", "handover", "inbuf", "have", "unsent_bytes",
                 "flush_mark", "persistent", "unacked", "checked", "incarnation", "remote", "pending", "why", "lead",
                 "lead_bytes", "lead_policy", "quiet")

    def __init__(self, peer: int):
        self.peer = peer
        self.out = bytearray()
        self.unsent_bytes = 0           # payload bytes behind the records not yet written
        self.flush_mark = FLUSH_RECORDS * RECORD_SIZE   # outbox size at which to write without waiting
        # To a persistent actor: the tells it has not yet journaled, (seq, offset), each holding a count on its
        # payload, resent if the actor restarts.
        self.persistent = False
        self.unacked = Held()
        # The large messages sent and perhaps not yet handled, (offset, generation, bytes): a sender keeps at most
        # LEAD_BYTES of them ahead of its receiver (Endpoint._keep_lead).
        self.lead: collections.deque = collections.deque()
        self.lead_bytes = 0
        self.lead_policy = None         # when to wait for the receiver to catch up (a SpinPolicy, made on first use)
        self.checked = 0.0              # when a lone record last went out at once, telling whether the peer is there
        # Which process answers at the other end, where the transport can tell (None where it cannot): a link
        # opened to a peer whose previous link just died must not reach that dying process again.
        self.incarnation = None
        self.remote = False             # to another machine: what it carries must not name this machine's store
        self.pending = False            # still being opened: `establish` finishes it (a dial to another machine)
        self.why = None                 # why it died, when that is worth saying (a node that cannot be reached)
        self.draining = False
        self.room = trio.Event()
        self.dead = False
        # Replies to our asks come back on this same connection, read by one of the asking tasks at a time.
        self.reading = False
        self.handover = None            # made when a second asker has to wait for the reading
        self.inbuf = bytearray(RECORD_SIZE * 64)
        self.have = 0
        self.quiet = None               # how an asker sleeps without a pass through trio (an inbox.QuietWait)

    async def establish(self) -> None:
        """Finish opening a pending link (one whose transport cannot open it at once without blocking); an
        OSError (`Unreachable`) if it cannot be."""

    @abc.abstractmethod
    def send(self, data) -> int:
        """Write what the connection takes now of `data`; the count. BlockingIOError if it takes nothing, OSError
        if the connection is broken."""

    @abc.abstractmethod
    def recv_into(self, view) -> int:
        """Read into `view` what has arrived; 0 once the peer closed. BlockingIOError if nothing has."""

    @abc.abstractmethod
    async def wait_readable(self) -> None:
        """Sleep until `recv_into` has something (or the end) to give."""

    @abc.abstractmethod
    async def wait_writable(self) -> None:
        """Sleep until `send` can take more."""

    def fileno(self) -> int | None:
        """The descriptor `recv_into` reads, when there is one the kernel can poll (None otherwise): a reader may
        then wait for it without a pass through trio's loop (`inbox.QuietWait`)."""
        return None

    @abc.abstractmethod
    def unread(self) -> int:
        """Bytes that have arrived on the connection and are not read yet (for status; a system call)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent)."""

    @abc.abstractmethod
    def adopt(self, fresh: Link) -> None:
        """Carry on over `fresh`'s connection (a reconnect): this link's outbox and state stay."""


class Unreachable(ConnectionRefusedError):
    """A transport cannot reach a peer, and says why (for the error the sender gets); `gone` when waiting will not
    help: the peer has stopped for good, or its node refuses this one."""

    def __init__(self, why: str, *, gone: bool = False):
        super().__init__(why)
        self.why = why
        self.gone = gone


class Listener(abc.ABC):
    """Where an endpoint accepts the links its peers open to it."""

    @abc.abstractmethod
    async def wait_readable(self) -> None:
        """Sleep until a connection can be accepted."""

    @abc.abstractmethod
    def accept(self) -> Link | None:
        """A new incoming link, or None if none is waiting. Its peer is -1 until its first record names it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening, and remove whatever made this endpoint reachable."""


class Transport(abc.ABC):
    """How endpoints of one system reach each other by id."""

    @abc.abstractmethod
    def listen(self, endpoint_id: int) -> Listener:
        """Make `endpoint_id` reachable here."""

    def listeners(self, endpoint_id: int) -> list[Listener]:
        """Everywhere `endpoint_id` is reachable from (the one `listen` gives, unless a transport has more)."""
        return [self.listen(endpoint_id)]

    def unreachable(self, peer: int, exc: OSError) -> None:
        """A pending link to `peer` could not be established (`exc` says why)."""

    def node_of(self, peer: int) -> int:
        """The number of the cluster node `peer` runs on (0: not in a cluster)."""
        return peer >> NODE_SHIFT

    def node_name(self, number: int) -> str | None:
        """The name of cluster node `number` (None for a transport that has no nodes)."""
        return None

    def where(self, peer: int) -> str:
        """Where `peer` runs, for errors (" on node 'b'"), or "" when that goes without saying."""
        return ""

    @abc.abstractmethod
    def connect(self, peer: int) -> Link:
        """A new link to `peer`. ConnectionRefusedError (or FileNotFoundError) if it is not running."""

    def unconnected(self, peer: int) -> Link | None:
        """A link to `peer` with no connection yet (closed), for tells held until `connect` gives one it `adopt`s;
        None where the transport cannot make one."""
        return None

    @abc.abstractmethod
    def is_gone(self, peer: int) -> bool:
        """Has `peer` stopped for good (no point waiting for it to come back)?"""

    @abc.abstractmethod
    def mark_gone(self, peer: int) -> None:
        """Record that `peer` stopped for good, for the senders waiting to reconnect to it."""
