"""Every error the project raises: one root, `ActorsError`.

The codec's errors are defined beside the codec (`_fastser` is usable alone) and re-exported here.
"""
from _fastser._errors import (
    ActorsError as ActorsError,
    DecodeError as DecodeError,
    RegistrationError as RegistrationError,
    SerializationError as SerializationError,
)
from _fastser._errors import UnknownClassError as UnknownClassError  # noqa: E402


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
