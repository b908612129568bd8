"""actors: shared-memory actors for Python.

A thin public namespace; the implementation lives in private modules, one per concern, and in the `_fastser` codec.
"""
from actors._actor import Actor as Actor
from actors._ref import ActorRef as ActorRef
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
    ClusterError as ClusterError,
    MailboxFullError as MailboxFullError,
    RemoteActorError as RemoteActorError,
    FencedError as FencedError,
    PersistenceError as PersistenceError,
    SpawnError as SpawnError,
    StaleRefError as StaleRefError,
    StoreFullError as StoreFullError,
    SupervisionError as SupervisionError,
    UnknownClassError as UnknownClassError,
)
from actors._runtime.cluster.node import ClusterOptions as ClusterOptions, NodeInfo as NodeInfo
from actors._runtime.driver import open_system as open_system, run as run
from actors._runtime.supervise import Terminated as Terminated
from actors._runtime.system import System as System

__version__ = "0.1.0"
