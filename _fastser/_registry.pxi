# The class registry: which non-native classes the codec may encode, and how.
#
# Wire codes are derived from the class's qualified name, so every process computes the same code for the same class
# without coordination; the registry's contents still have to reach every process (the runtime ships them).

import hashlib as _hashlib
import struct as _struct

cdef enum:
    KIND_FIELDS = 0
    KIND_PICKLE = 1
    KIND_CUSTOM = 2

# Classes whose state lives outside __dict__/__slots__: encoding their fields would silently drop it.
_NATIVE_BASES = (int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset, BaseException,
                 _np.ndarray, _np.generic)


_HEAPTYPE = 1 << 9          # Py_TPFLAGS_HEAPTYPE: a class created at run time (a `class` statement)
_IMMUTABLETYPE = 1 << 8     # Py_TPFLAGS_IMMUTABLETYPE: a C type, even when allocated on the heap (partial)


_POINTER = _struct.calcsize("P")


def _is_c_type(cls):
    """Defined in C, not by a class statement (some C types are allocated on the heap too, and say so)."""
    return not cls.__flags__ & _HEAPTYPE or bool(cls.__flags__ & _IMMUTABLETYPE)


def _c_state_base(cls):
    """The first C type among `cls`'s bases whose instances hold state of their own in C (Decimal, timedelta,
    datetime): a subclass's fields, read from its __dict__, would not carry it. None when there is none (object, or
    a stateless C base such as tzinfo)."""
    for base in cls.__mro__[1:]:
        # (its __dict__ and weakref slots, when it has them, are not state of its own: SimpleNamespace)
        own = base.__basicsize__ - _POINTER * ((base.__dictoffset__ > 0) + (base.__weakrefoffset__ > 0))
        if base is not object and _is_c_type(base) and own > object.__basicsize__:
            return base
    return None


def _fields_registrable(cls):
    """Can `cls` travel by its fields (the default mode of register_class)? Not a C type, whose state lives in C
    fields that __dict__ does not show, nor a subclass of a native type, nor an Enum: its members are singletons,
    which pickle finds again by name, where a copy of their fields would hold their class itself."""
    return (not _is_c_type(cls)
            and not any(issubclass(cls, base) for base in _NATIVE_BASES) and not issubclass(cls, _enum.Enum)
            and _c_state_base(cls) is None
            and (cls.__dictoffset__ != 0 or bool(_slot_names(cls))))


def wire_code(cls):
    """The 64-bit wire code of a class: a hash of `module.qualname`, identical in every process."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    return int.from_bytes(_hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _qualified(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _mangle(cls, name):
    if name.startswith("__") and not name.endswith("__"):
        return f"_{cls.__name__.lstrip('_')}{name}"
    return name


def _slot_names(cls):
    names = []
    for klass in reversed(cls.__mro__):
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for name in slots:
            if name in ("__dict__", "__weakref__"):
                continue
            name = _mangle(klass, name)
            if name not in names:
                names.append(name)
    return tuple(names)


cdef class Entry:
    """How one registered class travels: `mode` is "fields", "pickle" or "custom"."""

    def __init__(self, cls, mode, serializer=None, deserializer=None):
        self.cls = cls
        self.code = wire_code(cls)
        self.code_obj = self.code
        self.mode = mode
        self.kind = {"fields": KIND_FIELDS, "pickle": KIND_PICKLE, "custom": KIND_CUSTOM}[mode]
        self.serializer = serializer
        self.deserializer = deserializer
        self.slots = _slot_names(cls) if mode == "fields" else ()
        self.has_dict = mode == "fields" and cls.__dictoffset__ != 0

    def __repr__(self):
        return f"<Entry {_qualified(self.cls)} mode={self.mode} code={self.code:#018x}>"

    def __reduce__(self):
        return (Entry, (self.cls, self.mode, self.serializer, self.deserializer))


cdef class Registry:
    """A set of registered classes, looked up by type when encoding and by wire code when decoding."""

    def __init__(self):
        self._by_type = {}
        self._by_code = {}
        self.version = 0

    def register(self, cls, *, pickle=False, serializer=None, deserializer=None):
        """Register `cls`; see `actors.register_class`. Returns its `Entry`."""
        if not isinstance(cls, type):
            raise RegistrationError(f"cannot register {cls!r}: it is not a class; pass its class, type(obj)")
        name = _qualified(cls)
        if pickle and (serializer is not None or deserializer is not None):
            raise RegistrationError(
                f"cannot register class {name}: pickle=True and a serializer exclude each other; choose one")
        if (serializer is None) != (deserializer is None):
            raise RegistrationError(
                f"cannot register class {name}: a serializer needs a deserializer and the other way round; "
                f"pass both")
        if serializer is not None:
            if not callable(serializer) or not callable(deserializer):
                raise RegistrationError(f"cannot register class {name}: serializer and deserializer must be callable")
            mode = "custom"
        elif pickle:
            mode = "pickle"
        else:
            mode = "fields"
            native = [base for base in _NATIVE_BASES if issubclass(cls, base)]
            if native:
                raise RegistrationError(
                    f"cannot register class {name} by its fields: it derives from {native[0].__name__}, whose "
                    f"contents are not fields; register it with pickle=True or a serializer")
            if issubclass(cls, _enum.Enum):
                raise RegistrationError(
                    f"cannot register class {name} by its fields: it is an enum, whose members are singletons that a "
                    f"copy of their fields would not be; register it with pickle=True, or send member.value")
            base = None if _is_c_type(cls) else _c_state_base(cls)
            if base is not None:
                raise RegistrationError(
                    f"cannot register class {name} by its fields: it derives from the C type {_qualified(base)}, "
                    f"whose state is not in its fields; register it with pickle=True or a serializer")
            if _is_c_type(cls):
                raise RegistrationError(
                    f"cannot register class {name} by its fields: it is a C type, whose state is not in its "
                    f"fields; register it with pickle=True or a serializer")
            if cls.__dictoffset__ == 0 and not _slot_names(cls):
                raise RegistrationError(
                    f"cannot register class {name} by its fields: its instances have no __dict__ or __slots__; "
                    f"register it with pickle=True or a serializer")
        entry = Entry(cls, mode, serializer, deserializer)
        taken = self._by_code.get(entry.code_obj)
        if taken is not None and (<Entry>taken).cls is not cls:
            raise RegistrationError(
                f"cannot register class {name}: its wire code {entry.code:#018x} is already used by another class "
                f"named {_qualified((<Entry>taken).cls)}; rename one of them, or call "
                f"actors.unregister_class on the other first")
        old = self._by_type.get(cls)
        if old is not None and (<Entry>old).mode == mode and (<Entry>old).serializer is serializer \
                and (<Entry>old).deserializer is deserializer:
            return old
        self._by_type[cls] = entry
        self._by_code[entry.code_obj] = entry
        self.version += 1
        return entry

    def unregister(self, cls):
        """Forget `cls`; a no-op if it was not registered."""
        entry = self._by_type.pop(cls, None)
        if entry is not None:
            del self._by_code[(<Entry>entry).code_obj]
            self.version += 1

    def entries(self):
        """Every registered class's `Entry`, in registration order."""
        return list(self._by_type.values())

    def add_entries(self, entries):
        """Register every entry (as shipped from another process); harmless for entries already present."""
        for entry in entries:
            self.register((<Entry>entry).cls, pickle=(<Entry>entry).mode == "pickle",
                          serializer=(<Entry>entry).serializer, deserializer=(<Entry>entry).deserializer)

    def lookup(self, cls):
        """The `Entry` of `cls`, or None."""
        return self._by_type.get(cls)

    def lookup_code(self, code):
        """The `Entry` registered under wire code `code`, or None."""
        return self._by_code.get(code)

    def __contains__(self, cls):
        return cls in self._by_type

    def __len__(self):
        return len(self._by_type)
