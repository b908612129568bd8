"""`_fastser`: the codec behind actors, usable on its own.

`dumps`/`loads` for bytes; `Encoder.prepare` + `Encoder.write_into` to encode straight into a buffer the caller
provides (shared memory); `Decoder.decode` for reuse. The wire format is described in `_format.pxi`.
"""
try:
    from _fastser._codec import (
        Decoder as Decoder,
        Encoder as Encoder,
        Entry as Entry,
        Registry as Registry,
        default_registry as default_registry,
        dumps as dumps,
        loads as loads,
        register_class as register_class,
        registered_classes as registered_classes,
        unregister_class as unregister_class,
        wire_code as wire_code,
    )
except ModuleNotFoundError as exc:
    if exc.name != "_fastser._codec":
        raise
    import os as _os
    import platform as _platform

    # A source checkout, imported because it is the working directory (`python -m actors`) or on sys.path, shadows
    # any installed build: say so, rather than "No module named '_fastser._codec'".
    raise ImportError(
        f"the _fastser extension is not built in {_os.path.dirname(__file__)} for this Python "
        f"({_platform.python_version()}): Python imported that source checkout, not an installed build, because it "
        f"is the working directory or on PYTHONPATH. Build it in place with `pip install -e .` from the checkout, "
        f"or run from another directory.") from None
from _fastser._errors import (
    ActorsError as ActorsError,
    DecodeError as DecodeError,
    RegistrationError as RegistrationError,
    SerializationError as SerializationError,
    UnknownClassError as UnknownClassError,
)
