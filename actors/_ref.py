"""ActorRef, the handle through which actors are told and asked, and its method-call proxy.

A ref talks through the current system of its process (`System.install` registers it; one per process), using
the endpoint's sending API: `post`, `post_when_room`, `full`, `room`, and the system's `ask`; and, inline in `tell`
for a stream of tells, the pieces of `post` (`Arena.post_record`, `count_bytes`, `flush_now`, `dirty_link`).
"""
from __future__ import annotations

import threading
from collections.abc import Awaitable

import numpy as np
import trio

from _fastser import _codec
from _fastser._shm import READY
from actors._exceptions import ActorsError, RemoteActorError, StoreFull
from actors._wire.endpoint import SMALL_BYTES
from actors._wire.protocol import ASK, CALL, NODE_SHIFT, TELL

_ndarray = np.ndarray

# The running system of this process; ActorRefs decoded here talk through it. Set by `set_current_system` only.
_system = None


def set_current_system(system) -> None:
    """Make `system` the one this process's refs talk through (None when it ends)."""
    global _system
    _system = system


def running_system(what: str, system=None):
    """The system `what` (an ask, a spawn) goes through, checked before anything is sent: there is one (refs
    outlive the system that made them), and this is its trio thread, where alone its endpoint may be used."""
    system = system if system is not None else _system
    if system is None:
        raise ActorsError(f"cannot {what}: no system runs in this process (refs work while the system that made "
                          f"them runs: inside main, or in an actor)")
    if threading.get_ident() != system.thread:
        raise ActorsError(f"cannot {what} from this thread: it runs in the system's trio thread; from another "
                          f"thread, send with ref.tell_nowait(message), which hands the send to it")
    return system


class ActorRef:
    """A handle on a running actor: `tell`, `tell_nowait`, `ask`, and `proxy` for method calls.

    Encodable: send it inside messages to other actors.
    """
    __slots__ = ("id", "name", "persistent")

    def __init__(self, actor_id: int, name: str, persistent: bool = False):
        self.id = actor_id
        self.name = name
        self.persistent = persistent

    def tell(self, message) -> Awaitable[None]:
        """Send `message`: `await ref.tell(message)`. The message is sent by the call; the await waits only while
        the receiver's mailbox (or the store) is full. Raises the codec's `SerializationError` (and sends nothing)
        if the message cannot be encoded.

        Not a coroutine function, for speed: when there is nothing to wait for (nearly always) it returns an
        awaitable that is done already, instead of making a coroutine per tell."""
        system = _system
        if system is None:
            running_system(f"tell {self.name!r}")      # raises: no system
        ep = system.endpoint
        if system.serialize is not None:
            message = system.serialize(message)
        link = ep.links.get(self.id)
        size = -1
        # A stream of tells, inline (this runs for every tell): a message to a peer on this machine whose link
        # already has records waiting joins them, and leaves with them. Everything else (the first record after
        # a write, which also tells whether the peer is still there; a shared array; a full store; another
        # machine) takes `Endpoint.post`.
        if link is not None and link.out and not link.dead and not link.remote and type(message) is not _ndarray:
            out = link.out
            if link.persistent:         # numbered, and held until the actor acks it
                size = ep.arena.post_held(message, out, ep.id, ep.calls, link.unacked)
            else:
                size = ep.arena.post_record(message, out, TELL, ep.id, 0)
            if size >= 0:
                if size >= SMALL_BYTES:
                    ep.count_bytes(link, size)
                elif len(out) >= link.flush_mark:
                    ep.flush_now(link)
                if not link.draining:
                    ep.dirty_link(link)
        if size < 0:
            if threading.get_ident() != system.thread:
                # (checked here, off the path of a stream of tells: the post below would wake the flusher, which
                # raises from another thread once the message is queued, and a caller retrying would send it twice)
                raise ActorsError(f"cannot tell {self.name!r} from this thread: `tell` runs in the system's trio "
                                  f"thread; from another thread, call ref.tell_nowait(message), which hands the send "
                                  f"to it")
            if link is None:
                ep.introduce(self.id, self.name, self.persistent)
            try:
                link = ep.post(self.id, TELL, message)
            except StoreFull as full:
                return self._tell_when_room(ep, full.prepared, message)
        # ep.full(link), inline: this runs for every tell
        if len(link.out) >= ep.limit or (link.persistent and len(link.unacked) >= ep.max_unacked):
            return ep.room(link)
        return READY

    async def _tell_when_room(self, ep, prepared, message) -> None:
        link = await ep.post_when_room(self.id, TELL, prepared, 0, message)
        if ep.full(link):
            await ep.room(link)

    def tell_nowait(self, message) -> None:
        """Send `message` without waiting; raises `MailboxFullError` if the mailbox is full. Safe from any thread:
        from one other than the system's own, the system's trio thread sends it, while the caller waits."""
        system = _system
        if system is None:
            running_system(f"tell {self.name!r}")      # raises: no system
        if threading.get_ident() != system.thread:
            return trio.from_thread.run_sync(self.tell_nowait, message, trio_token=system.token)
        ep = system.endpoint
        if self.id not in ep.links:
            ep.introduce(self.id, self.name, self.persistent)
        ep.post_nowait(self.id, TELL, system.outgoing(message))

    async def ask(self, message, *, timeout: float | None = None):
        """Send `message` and return the receiver's answer (the return value of its `receive`). A handler that
        raises makes this raise `RemoteActorError`; no answer within `timeout` seconds raises
        `AskTimeoutError`. The timeout covers the whole call: waiting for mailbox or store room, for an actor that
        is being restarted, and for the answer."""
        check_timeout(timeout, "ask")
        system = _system
        if system is None or threading.get_ident() != system.thread:
            running_system(f"ask {self.name!r}")      # raises, saying why
        return await system.ask(self, ASK, system.outgoing(message), timeout)

    @property
    def node(self) -> str | None:
        """The name of the cluster node the actor runs on; None outside a cluster."""
        if not self.id >> NODE_SHIFT or _system is None:
            return None
        transport = _system.endpoint.transport
        return transport.node_name(transport.node_of(self.id))      # where it runs now, re-placed or not

    @property
    def proxy(self) -> _Proxy:
        """`await ref.proxy.method(*args, **kwargs)` calls the actor's `async def method` and returns its result."""
        return _Proxy(self)

    def __eq__(self, other):
        return isinstance(other, ActorRef) and other.id == self.id

    def __hash__(self):
        return hash(("ActorRef", self.id))

    def __repr__(self):
        node = self.node
        where = f" on node {node!r}" if node is not None else ""
        return f"<ActorRef {self.name!r} #{self.id}{where}>"

    def __reduce__(self):
        return (ActorRef, (self.id, self.name, self.persistent))


class _Proxy:
    __slots__ = ("_ref",)

    def __init__(self, ref: ActorRef):
        self._ref = ref

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(f"cannot call private method {method!r} of an actor")
        ref = self._ref

        async def call(*args, timeout: float | None = None, **kwargs):
            check_timeout(timeout, method)
            system = _system
            if system is None or threading.get_ident() != system.thread:
                running_system(f"call {method} of {ref.name!r}")      # raises, saying why
            return await system.ask(ref, CALL, (method, args, kwargs), timeout)

        call.__name__ = method
        return call


def check_timeout(timeout, call: str, *, optional: bool = True) -> None:
    """Refuse a timeout that is not a number of seconds, before the call acts on anything."""
    if timeout is None and optional:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{call}(timeout={timeout!r}): the timeout must be a number of seconds"
                        f"{' or None' if optional else ''}, not {type(timeout).__qualname__}")
    if not timeout >= 0:            # also refuses NaN
        raise ValueError(f"{call}(timeout={timeout!r}): the timeout must be a number of seconds, 0 or more")


def _ref_to_wire(ref: ActorRef):
    return (ref.id, ref.name, ref.persistent)


def _ref_from_wire(value):
    return ActorRef(*value)


_codec.register_class(ActorRef, serializer=_ref_to_wire, deserializer=_ref_from_wire)


def remote_error(ref_name: str, payload) -> RemoteActorError:
    type_name, message, tb = payload
    return RemoteActorError(ref_name, type_name, message, tb)
