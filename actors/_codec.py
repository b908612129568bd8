"""The codec entry points of the public namespace: `dumps`, `loads` and the class registry.

One codec serves messages, `put` and persisted state alike; these are thin names over `_fastser`.
"""
from _fastser import _codec

# Set by a running actor process: a class registered after startup is reported to the system, from which other
# processes fetch it when they first meet it (no broadcast to every actor).
on_register = None


# The compiled functions themselves, not wrappers: a Python frame around each would cost more than encoding a small
# message. Their docstrings are in _fastser/_codec.pyx.
dumps = _codec.dumps
loads = _codec.loads


def register_class(cls, *, pickle=False, serializer=None, deserializer=None):
    """Let instances of `cls` travel in messages.

    - default: the instance's fields (`__dict__` and `__slots__`) are encoded; the receiver rebuilds the object
      without calling `__init__`.
    - `pickle=True`: the object goes through cloudpickle (functions, lambdas, classes with C state). Decoding it runs
      pickle, so register this way only what you trust the senders with.
    - `serializer` / `deserializer`: `serializer(obj)` returns any encodable value; `deserializer(value)` rebuilds
      the object.

    The wire code is derived from the qualified name, so every process agrees on it without coordination. Registering
    the same class again is harmless; another class with the same qualified name is a `RegistrationError`. A subclass
    is never encoded as its registered parent: register it too.
    """
    entry = _codec.register_class(cls, pickle=pickle, serializer=serializer, deserializer=deserializer)
    if on_register is not None:
        on_register(entry)
    return entry


def unregister_class(cls) -> None:
    """Forget a registered class (a no-op if it is not registered)."""
    _codec.unregister_class(cls)


def registered_classes() -> list:
    """The registered classes, in registration order."""
    return _codec.registered_classes()
