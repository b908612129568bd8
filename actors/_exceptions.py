"""Every error the project raises: one root, `ActorsError`.

The codec's errors (and the store core's `StaleRefError`) are defined beside the codec (`_fastser` is usable alone)
and re-exported here; every other error is defined here.
"""
from _fastser._errors import (
    ActorsError as ActorsError,
    DecodeError as DecodeError,
    RegistrationError as RegistrationError,
    SerializationError as SerializationError,
    UnknownClassError as UnknownClassError,
)
from _fastser._shm import StaleRefError as StaleRefError


class RemoteActorError(ActorsError):
    """An ask's handler raised. Carries the remote exception's type name, its message and the remote traceback."""

    def __init__(self, actor: str, type_name: str, message: str, traceback: str):
        super().__init__(f"actor {actor!r} raised {type_name}: {message}")
        self.actor = actor
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.args[0]}\n\nremote traceback:\n{self.traceback}"


class ActorStoppedError(ActorsError):
    """The actor a message was sent to (or an ask was waiting on) is not running."""


class MailboxFullError(ActorsError):
    """`tell_nowait` found the receiver's mailbox full; `await tell(...)` waits for room instead."""


class AskTimeoutError(ActorsError, TimeoutError):
    """No reply arrived within the ask's timeout."""


class ClusterError(ActorsError):
    """etcd, which holds the cluster's membership, names and leases, cannot be reached, refused a request, or took
    back a lease this node held."""


class ActorNotFoundError(ActorsError, LookupError):
    """No running actor has that name."""


class SpawnError(ActorsError):
    """An actor could not be started: its constructor or `on_start` raised, or its process died."""


class StoreFullError(ActorsError):
    """A put found no room in the store before its timeout, or the object is larger than the whole store."""


class SupervisionError(ActorsError):
    """An actor failed more often than its restart intensity allows: the system stopped."""


class PersistenceError(ActorsError):
    """A persistent actor's state cannot be stored or recovered, or the resilience directory is unsafe or in use."""


class FencedError(PersistenceError):
    """A persistent actor's journal was taken over by a newer instance (on another node, after this one's node lost
    its place in the cluster): this instance must stop, without acknowledging what it journaled last."""


class StoreFull(Exception):
    """Internal (never reaches the user): the store had no room for a message; `prepared` holds it, encoded, for a
    later try."""

    def __init__(self, prepared):
        self.prepared = prepared
