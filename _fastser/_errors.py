"""The project's error root and the codec's errors.

They live here, beside the codec, because `_fastser` is usable on its own; the public `actors` namespace re-exports
them, so every error any part of the project raises is an `ActorsError`.
"""


class ActorsError(Exception):
    """Root of every error raised by actors and its codec."""


class SerializationError(ActorsError, TypeError):
    """An object cannot be encoded; the message names the object, where it sits in the message, and the fix."""


class DecodeError(ActorsError, ValueError):
    """Bytes handed to the decoder are not a valid encoding (truncated, corrupted or forged)."""


class RegistrationError(ActorsError, ValueError):
    """A class cannot be registered as asked (a wire-code clash, or a mode that cannot carry its state)."""


class UnknownClassError(DecodeError):
    """A message names a registered class this process does not know (yet): `code` is its wire code.

    The actor runtime answers it by fetching the registration from the system and decoding again.
    """

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code
