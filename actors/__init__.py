"""actors: shared-memory actors for Python.

A thin public namespace; the implementation lives in private modules, one per concern, and in the `_fastser` codec.
"""
from actors._actor import Actor as Actor, ActorRef as ActorRef
from actors._codec import (
    dumps as dumps,
    loads as loads,
    register_class as register_class,
    registered_classes as registered_classes,
    unregister_class as unregister_class,
)
from actors._store import (
    ObjectRef as ObjectRef,
    ObjectStore as ObjectStore,
    StaleRefError as StaleRefError,
    StoreFullError as StoreFullError,
    get as get,
    put as put,
    shared_array as shared_array,
)
from actors._exceptions import (
    ActorsError as ActorsError,
    DecodeError as DecodeError,
    RegistrationError as RegistrationError,
    SerializationError as SerializationError,
    ActorNotFoundError as ActorNotFoundError,
    ActorStoppedError as ActorStoppedError,
    AskTimeoutError as AskTimeoutError,
    MailboxFullError as MailboxFullError,
    RemoteActorError as RemoteActorError,
    SpawnError as SpawnError,
    UnknownClassError as UnknownClassError,
)
from actors._exceptions import PersistenceError as PersistenceError
from actors._system import (
    SupervisionError as SupervisionError,
    System as System,
    Terminated as Terminated,
    run as run,
)

__version__ = "0.1.0"
