"""Every error the project raises: one root, `ActorsError`.

The codec's errors are defined beside the codec (`_fastser` is usable alone) and re-exported here.
"""
from _fastser._errors import (
    ActorsError as ActorsError,
    DecodeError as DecodeError,
    RegistrationError as RegistrationError,
    SerializationError as SerializationError,
)
