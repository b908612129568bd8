"""The Actor base class and ActorRef, the handle through which actors are told and asked."""
from __future__ import annotations

from _fastser import _codec
from actors import _mailbox as mb
from actors._exceptions import AskTimeoutError, RemoteActorError

# The running system of this process (set by actors._system); ActorRefs decoded here talk through it.
_system = None


class Actor:
    """Subclass this; each actor runs in its own process with its own trio loop.

    Override `async def receive(self, message)`: its return value answers an `ask`. Any other public
    `async def` method can be called through `ref.proxy.method(...)`, with the semantics of an ask. Messages are
    handled one at a time, in order per sender.

    Set before `__init__` runs: `self.system` (spawn and look up actors) and `self.ref` (this actor's ActorRef).
    """

    system: object
    ref: ActorRef

    # Supervision and persistence, per class; `system.spawn(..., options={...})` overrides them per actor.
    restart = "never"           # "never", "on-failure" or "always": what the system does when the process ends
    max_restarts = 3            # restart intensity: at most this many restarts ...
    restart_window = 60.0       # ... within this many seconds, else the whole system stops with an error
    restart_backoff = 0.1       # seconds before the first restart; doubles with each restart in the window
    on_error = "resume"         # a handler raised: "resume" (log it, go on), "restart" (fail), "stop"
    persistent = False          # journal every message and snapshot the state, to recover after a crash
    snapshot_every = 1000       # messages between snapshots
    fsync = "group"             # journal durability: "always" (each message), "group" (each batch), "interval"
    fsync_interval = 0.05       # seconds between syncs with fsync="interval"

    async def on_start(self) -> None:
        """Runs after `__init__`, before the first message; spawn() returns once it has finished."""

    async def on_stop(self) -> None:
        """Runs when the actor is stopped gracefully, after the messages it has received."""

    async def receive(self, message):
        raise NotImplementedError(f"{type(self).__qualname__} does not define `async def receive(self, message)`")


class ActorRef:
    """A handle on a running actor: `tell`, `tell_nowait`, `ask`, and `proxy` for method calls.

    Encodable: send it inside messages to other actors.
    """
    __slots__ = ("id", "name", "persistent")

    def __init__(self, actor_id: int, name: str, persistent: bool = False):
        self.id = actor_id
        self.name = name
        self.persistent = persistent

    async def tell(self, message) -> None:
        """Send `message`; waits only while the receiver's mailbox (or the store) is full. Raises the codec's
        `SerializationError` (and sends nothing) if the message cannot be encoded."""
        system = _system
        ep = system.endpoint
        if self.id not in ep.links:
            _first_contact(ep, self)
        if system.serialize is not None:
            message = system.serialize(message)
        try:
            link = ep.post(self.id, mb.TELL, message)
        except mb.StoreFull as full:
            link = await ep.post_when_room(self.id, mb.TELL, full.prepared, 0)
        if ep.full(link):
            await ep.room(link)

    def tell_nowait(self, message) -> None:
        """Send `message` without waiting; raises `MailboxFullError` if the mailbox is full."""
        system = _system
        if self.id not in system.endpoint.links:
            _first_contact(system.endpoint, self)
        system.endpoint.post_nowait(self.id, mb.TELL, system.outgoing(message))

    async def ask(self, message, *, timeout: float | None = None):
        """Send `message` and return the receiver's answer (the return value of its `receive`). A handler that
        raises makes this raise `RemoteActorError`; no answer within `timeout` seconds raises
        `AskTimeoutError`."""
        return await _system.ask(self, mb.ASK, _system.outgoing(message), timeout)

    @property
    def proxy(self) -> _Proxy:
        """`await ref.proxy.method(*args, **kwargs)` calls the actor's `async def method` and returns its result."""
        return _Proxy(self)

    def __eq__(self, other):
        return isinstance(other, ActorRef) and other.id == self.id

    def __hash__(self):
        return hash(("ActorRef", self.id))

    def __repr__(self):
        return f"<ActorRef {self.name!r} #{self.id}>"

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
            return await _system.ask(ref, mb.CALL, (method, args, kwargs), timeout)

        call.__name__ = method
        return call


def _first_contact(ep, ref: ActorRef) -> None:
    # what the endpoint needs to know of a peer before it first connects: its name (for errors) and whether it
    # journals what it receives
    ep.names[ref.id] = ref.name
    if ref.persistent:
        ep.persistent.add(ref.id)


def _ref_to_wire(ref: ActorRef):
    return (ref.id, ref.name, ref.persistent)


def _ref_from_wire(value):
    return ActorRef(*value)


_codec.register_class(ActorRef, serializer=_ref_to_wire, deserializer=_ref_from_wire)


def remote_error(ref_name: str, payload) -> RemoteActorError:
    type_name, message, tb = payload
    return RemoteActorError(ref_name, type_name, message, tb)


__all__ = ["Actor", "ActorRef", "AskTimeoutError"]
