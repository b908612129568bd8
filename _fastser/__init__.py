"""`_fastser`: the codec behind actors, usable on its own.

`dumps`/`loads` for bytes; `Encoder.prepare` + `Encoder.write_into` to encode straight into a buffer the caller
provides (shared memory); `Decoder.decode` for reuse. The wire format is described in `_format.pxi`.
"""
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
from _fastser._errors import (
    ActorsError as ActorsError,
    DecodeError as DecodeError,
    RegistrationError as RegistrationError,
    SerializationError as SerializationError,
    UnknownClassError as UnknownClassError,
)
