"""The class registry: fields mode (__dict__ and __slots__), pickle mode, custom serializers, and the errors of each."""
import collections
import datetime
import decimal
import enum
import functools
import hashlib
import re
import struct
import types

import numpy as np
import pytest

import _fastser
import actors
from actors import DecodeError, RegistrationError, SerializationError



from _helpers.codec import MAX_DEPTH  # noqa: E402




def roundtrip(obj):
    return actors.loads(actors.dumps(obj))


def qualified(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


# -- classes ----------------------------------------------------------------------------------------------------------

class Plain:
    inits = 0

    def __init__(self, a, b):
        type(self).inits += 1
        self.a = a
        self.b = b


class Slotted:
    __slots__ = ("x", "y")
    inits = 0

    def __init__(self, x, y):
        Slotted.inits += 1
        self.x = x
        self.y = y


class SlottedChild(Slotted):
    __slots__ = ("z",)

    def __init__(self, x, y, z):
        super().__init__(x, y)
        self.z = z


class Private:
    __slots__ = ("__secret", "public")

    def __init__(self, secret, public):
        self.__secret = secret
        self.public = public

    def secret(self):
        return self.__secret


class _Underscored:
    __slots__ = "__hidden"           # a single string is a single slot

    def __init__(self, v):
        self.__hidden = v

    def hidden(self):
        return self.__hidden


class Mixed(Slotted):                 # slots from the base, a __dict__ of its own
    def __init__(self, x, y, extra):
        super().__init__(x, y)
        self.extra = extra


class Foo:
    pass


class Item:
    def __init__(self, name, owner):
        self.name = name
        self.owner = owner


class Base:
    def __init__(self):
        self.v = 1


class Sub(Base):
    pass


class Celsius:
    """Travels through a custom serializer: the float, not the fields."""

    def __init__(self, degrees):
        self.degrees = degrees

    def __eq__(self, other):
        return type(other) is Celsius and other.degrees == self.degrees


def make_dup():
    class Dup:
        def __init__(self):
            self.v = 1
    return Dup


class Color(enum.IntEnum):
    RED = 1


# -- fields mode -------------------------------------------------------------------------------------------------------

def test_dict_class_roundtrip_without_init():
    actors.register_class(Plain)
    obj = Plain([1, 2], {"k": (3, 4.5)})
    before = Plain.inits
    out = roundtrip(obj)
    assert Plain.inits == before            # decoding never calls __init__
    assert type(out) is Plain
    assert out.__dict__ == {"a": [1, 2], "b": {"k": (3, 4.5)}}
    assert list(out.__dict__) == ["a", "b"]


def test_dict_class_fields_added_after_init():
    actors.register_class(Plain)
    obj = Plain(1, 2)
    obj.late = "x"
    del obj.a
    out = roundtrip(obj)
    assert out.__dict__ == {"b": 2, "late": "x"}


def test_slots_class_roundtrip():
    actors.register_class(Slotted)
    objs = [Slotted(1, "two"), Slotted(None, [3])]
    before = Slotted.inits
    out = roundtrip(objs)
    assert Slotted.inits == before          # decoding never calls __init__
    assert [type(o) for o in out] == [Slotted, Slotted]
    assert (out[0].x, out[0].y, out[1].x, out[1].y) == (1, "two", None, [3])
    assert not hasattr(out[0], "__dict__")


def test_inherited_slots():
    actors.register_class(SlottedChild)
    out = roundtrip(SlottedChild(1, 2, 3))
    assert type(out) is SlottedChild
    assert (out.x, out.y, out.z) == (1, 2, 3)


def test_name_mangled_private_slots():
    actors.register_class(Private)
    actors.register_class(_Underscored)
    out = roundtrip([Private("s3cret", "pub"), _Underscored(42)])
    assert out[0].secret() == "s3cret" and out[0].public == "pub"
    assert out[0]._Private__secret == "s3cret"
    assert out[1].hidden() == 42 and out[1]._Underscored__hidden == 42


def test_unset_slots_stay_unset():
    actors.register_class(SlottedChild)
    obj = SlottedChild.__new__(SlottedChild)
    obj.y = "only y"
    out = roundtrip(obj)
    assert out.y == "only y"
    with pytest.raises(AttributeError):
        out.x
    with pytest.raises(AttributeError):
        out.z


def test_slots_and_dict_together():
    actors.register_class(Mixed)
    out = roundtrip(Mixed(1, 2, {"e": 3}))
    assert type(out) is Mixed
    assert (out.x, out.y, out.extra) == (1, 2, {"e": 3})
    assert out.__dict__ == {"extra": {"e": 3}}


def test_init_requiring_arguments_is_not_called():
    calls = []

    class Strict:
        def __init__(self, must):
            calls.append(must)
            self.must = must

    actors.register_class(Strict)
    obj = Strict("given")
    out = roundtrip({"o": obj})
    assert calls == ["given"]
    assert type(out["o"]) is Strict and out["o"].must == "given"


def test_class_defined_inside_a_test_function():
    class Local:
        def __init__(self):
            self.items = [1, 2]

    actors.register_class(Local)
    out = roundtrip((Local(), Local()))
    assert [type(o) for o in out] == [Local, Local]
    assert out[0].items == [1, 2] and out[0] is not out[1]


def test_registered_objects_nest():
    actors.register_class(Item)
    actors.register_class(Foo)
    foo = Foo()
    foo.tag = np.arange(3)
    obj = {"items": [Item("a", foo), Item("b", None)]}
    out = roundtrip(obj)
    assert [i.name for i in out["items"]] == ["a", "b"]
    assert type(out["items"][0].owner) is Foo
    np.testing.assert_array_equal(out["items"][0].owner.tag, [0, 1, 2])


def test_field_values_unregistered_are_reported_with_path():
    actors.register_class(Item)
    owner = Foo()
    obj = {"items": [Item("a", None), Item("b", None), Item("c", None), Item("d", owner)]}
    with pytest.raises(SerializationError) as info:
        actors.dumps(obj)
    assert str(info.value) == (f"cannot serialize <Foo object at {id(owner):#x}> at obj['items'][3].owner: class Foo "
                               f"is not registered; call actors.register_class(Foo)")


def test_unregistered_class_at_root():
    obj = Foo()
    with pytest.raises(SerializationError) as info:
        actors.dumps(obj)
    assert str(info.value) == (f"cannot serialize <Foo object at {id(obj):#x}> at obj: class Foo is not registered; "
                               f"call actors.register_class(Foo)")
    assert re.fullmatch(r"cannot serialize <Foo object at 0x[0-9a-f]+> at obj: class Foo is not registered; call "
                        r"actors\.register_class\(Foo\)", str(info.value))


def test_non_str_dict_key_in_fields():
    actors.register_class(Foo)
    obj = Foo()
    obj.__dict__[1] = "x"
    with pytest.raises(SerializationError) as info:
        actors.dumps(obj)
    assert str(info.value) == (f"cannot serialize <Foo object at {id(obj):#x}> at obj: its __dict__ has a key that "
                               f"is not a str: 1")


def test_slot_class_with_dict_field_only_on_sender_is_a_decode_error():
    # a sender whose Foo has a field the receiver's slot-only Foo cannot hold
    sender, receiver = _fastser.Registry(), _fastser.Registry()
    sender.register(Foo)
    SlotFoo = type("Foo", (), {"__slots__": ("a",), "__module__": Foo.__module__, "__qualname__": "Foo"})
    receiver.register(SlotFoo)
    obj = Foo()
    obj.zz = 5
    msg = _fastser.Encoder(sender).encode(obj)
    with pytest.raises(DecodeError) as info:
        _fastser.Decoder(receiver).decode(msg)
    assert str(info.value) == (f"cannot decode: class {Foo.__module__}.Foo has no field 'zz' at obj.zz (byte "
                               f"{len(msg)} of {len(msg)})")


# -- pickle mode ------------------------------------------------------------------------------------------------------

def test_lambda_with_pickle():
    actors.register_class(type(lambda: 0), pickle=True)
    out = roundtrip({"f": lambda x: x * 3})
    assert out["f"](4) == 12
    assert type(out["f"]) is types.FunctionType


def test_closure_with_pickle():
    actors.register_class(type(lambda: 0), pickle=True)

    def make_adder(n):
        state = {"calls": 0}

        def add(x):
            state["calls"] += 1
            return x + n + state["calls"]
        return add

    adder = make_adder(10)
    out = roundtrip([adder])[0]
    assert out(1) == 12
    assert out(1) == 13
    assert adder(1) == 12           # an independent copy of the closure's state


def test_local_class_with_pickle():
    class Local:
        def __init__(self):
            self.v = {"k": 1}

    actors.register_class(Local, pickle=True)
    out = roundtrip(Local())
    assert type(out) is Local and out.v == {"k": 1}


def test_pickle_mode_for_native_subclass():
    actors.register_class(Color, pickle=True)
    out = roundtrip([Color.RED])
    assert out[0] is Color.RED


def test_unregistered_lambda_suggests_function_type():
    f = lambda: 0  # noqa: E731
    with pytest.raises(SerializationError) as info:
        actors.dumps([f])
    assert str(info.value) == (f"cannot serialize <function object at {id(f):#x}> at obj[0]: class function is not "
                               f"registered; call actors.register_class(types.FunctionType, pickle=True)")


def test_unregistered_builtin_type_suggests_pickle():
    obj = range(3)
    with pytest.raises(SerializationError) as info:
        actors.dumps(obj)
    assert str(info.value) == (f"cannot serialize <range object at {id(obj):#x}> at obj: class range is not "
                               f"registered; call actors.register_class(range, pickle=True)")


def test_pickle_failure_is_reported():
    actors.register_class(type(lambda: 0), pickle=True)
    actors.register_class(Foo, pickle=True)
    obj = Foo()
    obj.gen = (i for i in range(3))
    with pytest.raises(SerializationError) as info:
        actors.dumps({"x": obj})
    assert re.fullmatch(re.escape(f"cannot serialize <Foo object at {id(obj):#x}> at obj['x']: cloudpickle cannot "
                                  f"pickle it (TypeError: ") + r".*generator.*\)", str(info.value)), str(info.value)


def test_pickled_object_at_max_depth():
    # encoder and decoder agree on the depth of a pickled value
    actors.register_class(type(lambda: 0), pickle=True)
    x = [lambda: "deep"]
    for _ in range(MAX_DEPTH - 1):
        x = [x]
    out = roundtrip(x)
    for _ in range(MAX_DEPTH):
        out = out[0]
    assert out() == "deep"


# -- custom serializers ------------------------------------------------------------------------------------------------

def test_custom_serializer_roundtrip():
    seen = []

    def ser(c):
        seen.append(c)
        return c.degrees

    actors.register_class(Celsius, serializer=ser, deserializer=Celsius)
    obj = {"t": [Celsius(21.5), Celsius(-3)]}
    out = roundtrip(obj)
    assert out == obj
    assert len(seen) == 2
    # what travels is the serializer's value: 8 bytes of float, no field names
    assert b"degrees" not in actors.dumps(obj)


def test_custom_serializer_may_return_structures_with_registered_objects():
    actors.register_class(Foo)
    actors.register_class(Celsius, serializer=lambda c: {"deg": c.degrees, "foo": Foo()},
                          deserializer=lambda v: Celsius(v["deg"]) if type(v["foo"]) is Foo else None)
    assert roundtrip([Celsius(1)]) == [Celsius(1)]


def test_custom_serializer_error_reports_path():
    def ser(c):
        raise ValueError("boom")

    actors.register_class(Celsius, serializer=ser, deserializer=Celsius)
    obj = Celsius(1)
    with pytest.raises(SerializationError) as info:
        actors.dumps({"a": [obj]})
    assert str(info.value) == (f"cannot serialize <Celsius object at {id(obj):#x}> at obj['a'][0]: the serializer of "
                               f"class Celsius raised ValueError: boom")
    assert isinstance(info.value.__cause__, ValueError)


def test_custom_serializer_returning_unencodable_value_reports_path():
    bad = Foo()
    actors.register_class(Celsius, serializer=lambda c: [bad], deserializer=Celsius)
    with pytest.raises(SerializationError) as info:
        actors.dumps(Celsius(1))
    assert str(info.value) == (f"cannot serialize <Foo object at {id(bad):#x}> at obj<serialized Celsius>[0]: class "
                               f"Foo is not registered; call actors.register_class(Foo)")


def test_custom_serializer_returning_the_object_itself_is_a_cycle():
    actors.register_class(Celsius, serializer=lambda c: c, deserializer=Celsius)
    obj = Celsius(1)
    with pytest.raises(SerializationError) as info:
        actors.dumps(obj)
    assert str(info.value) == (f"cannot serialize <Celsius object at {id(obj):#x}> at obj: it contains itself (found "
                               f"again at obj<serialized Celsius>); break the cycle before sending it")


def test_custom_serializer_and_deserializer_may_reenter_the_codec():
    actors.register_class(Celsius, serializer=lambda c: actors.dumps([c.degrees]),
                          deserializer=lambda raw: Celsius(actors.loads(raw)[0]))
    obj = {"outer": [Celsius(5), np.arange(3)]}
    out = roundtrip(obj)
    assert out["outer"][0] == Celsius(5)
    np.testing.assert_array_equal(out["outer"][1], [0, 1, 2])


def test_custom_deserializer_error_is_a_decode_error():
    def deser(v):
        raise KeyError("nope")

    actors.register_class(Celsius, serializer=lambda c: c.degrees, deserializer=deser)
    msg = actors.dumps({"temps": [Celsius(1)]})
    with pytest.raises(DecodeError) as info:
        actors.loads(msg)
    # the class whose code failed, and the path by keys: the keys are still alive where the error is caught
    assert str(info.value) == (f"cannot decode: the deserializer of class {qualified(Celsius)} raised KeyError: "
                               f"'nope' at obj['temps'][0] (byte {len(msg)} of {len(msg)})")
    assert isinstance(info.value.__cause__, KeyError)


# -- registering -----------------------------------------------------------------------------------------------------

def test_register_returns_entry():
    entry = actors.register_class(Plain)
    assert entry.cls is Plain and entry.mode == "fields"
    assert entry.code == _fastser.wire_code(Plain)
    expected = int.from_bytes(hashlib.blake2b(qualified(Plain).encode(), digest_size=8).digest(), "little")
    assert entry.code == expected
    assert entry.slots == () and entry.has_dict
    assert actors.register_class(Slotted).slots == ("x", "y")
    assert actors.register_class(SlottedChild).slots == ("x", "y", "z")
    assert actors.register_class(Private).slots == ("_Private__secret", "public")
    assert actors.register_class(_Underscored).slots == ("_Underscored__hidden",)
    assert not actors.register_class(Slotted).has_dict
    assert actors.register_class(type(lambda: 0), pickle=True).mode == "pickle"
    assert actors.register_class(Celsius, serializer=str, deserializer=float).mode == "custom"


def test_wire_code_travels_in_the_message():
    actors.register_class(Plain)
    msg = actors.dumps(Plain(1, 2))
    assert msg[16] == 0x30
    assert struct.unpack_from("<Q", msg, 17)[0] == _fastser.wire_code(Plain)


def test_registering_twice_is_harmless():
    first = actors.register_class(Plain)
    second = actors.register_class(Plain)
    assert first is second
    assert actors.registered_classes().count(Plain) == 1
    assert roundtrip(Plain(1, 2)).__dict__ == {"a": 1, "b": 2}


def test_registering_again_in_another_mode_replaces():
    actors.register_class(Plain)
    entry = actors.register_class(Plain, pickle=True)
    assert entry.mode == "pickle"
    assert actors.registered_classes().count(Plain) == 1
    assert _fastser.default_registry.lookup(Plain) is entry
    assert roundtrip(Plain(1, 2)).__dict__ == {"a": 1, "b": 2}


def test_registered_classes_contents_and_order():
    base = actors.registered_classes()
    actors.register_class(Slotted)
    actors.register_class(Plain)
    actors.register_class(Celsius, serializer=lambda c: c.degrees, deserializer=Celsius)
    assert actors.registered_classes() == base + [Slotted, Plain, Celsius]
    actors.unregister_class(Plain)
    assert actors.registered_classes() == base + [Slotted, Celsius]
    assert Plain not in _fastser.default_registry


def test_unregister_is_a_noop_for_unknown_classes():
    before = actors.registered_classes()
    actors.unregister_class(Foo)
    actors.unregister_class(Foo)
    assert actors.registered_classes() == before


def test_unregistered_class_is_refused_again():
    actors.register_class(Foo)
    actors.dumps(Foo())
    actors.unregister_class(Foo)
    with pytest.raises(SerializationError, match=r"class Foo is not registered"):
        actors.dumps(Foo())


def test_wire_code_clash():
    first, second = make_dup(), make_dup()
    assert first is not second and qualified(first) == qualified(second)
    actors.register_class(first)
    with pytest.raises(RegistrationError) as info:
        actors.register_class(second)
    name = qualified(first)
    assert name == f"{__name__}.make_dup.<locals>.Dup"
    assert str(info.value) == (f"cannot register class {name}: its wire code {_fastser.wire_code(first):#018x} is "
                               f"already used by another class named {name}; rename one of them, or call "
                               f"actors.unregister_class on the other first")
    assert actors.registered_classes().count(first) == 1 and second not in actors.registered_classes()
    # after unregistering the first, the second may take the code
    actors.unregister_class(first)
    actors.register_class(second)
    assert type(roundtrip(second())) is second


def test_subclass_of_registered_class_is_not_encoded_as_parent():
    actors.register_class(Base)
    obj = Sub()
    with pytest.raises(SerializationError) as info:
        actors.dumps(obj)
    assert str(info.value) == (f"cannot serialize <Sub object at {id(obj):#x}> at obj: class Sub is not registered "
                               f"(its base class Base is, but a subclass is never encoded as its base); call "
                               f"actors.register_class(Sub)")
    actors.register_class(Sub)
    assert type(roundtrip(obj)) is Sub
    assert type(roundtrip(Base())) is Base


@pytest.mark.parametrize("cls, base", [
    (type("D", (dict,), {}), "dict"),
    (Color, "int"),
    (collections.namedtuple("NT", "a b"), "tuple"),
    (type("E", (ValueError,), {}), "BaseException"),
    (type("S", (str,), {}), "str"),
    (type("L", (list,), {"__slots__": ("x",)}), "list"),
    (type("B", (bytearray,), {}), "bytearray"),
    (type("FS", (frozenset,), {}), "frozenset"),
], ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_native_subclasses_cannot_register_by_fields(cls, base):
    with pytest.raises(RegistrationError) as info:
        actors.register_class(cls)
    assert str(info.value) == (f"cannot register class {qualified(cls)} by its fields: it derives from {base}, whose "
                               f"contents are not fields; register it with pickle=True or a serializer")
    assert cls not in actors.registered_classes()
    # the ways the message offers do work
    actors.register_class(cls, pickle=True)
    actors.register_class(cls, serializer=lambda v: None, deserializer=lambda v: None)


class Weekday(enum.Enum):
    MON = 1


class Perm(enum.Flag):
    R = 1
    W = 2


@pytest.mark.parametrize("cls, member", [(Weekday, Weekday.MON), (Perm, Perm.R | Perm.W)],
                         ids=["Enum", "Flag"])
def test_enums_cannot_register_by_fields(cls, member):
    # by its fields an Enum member's encoding reached its class through __objclass__, and a Flag's decoding called
    # Enum.__new__ with no value: the registration was accepted, then every message failed
    with pytest.raises(RegistrationError) as info:
        actors.register_class(cls)
    assert str(info.value) == (f"cannot register class {qualified(cls)} by its fields: it is an enum, whose members "
                               f"are singletons that a copy of their fields would not be; register it with "
                               f"pickle=True, or send member.value")
    assert cls not in actors.registered_classes()
    actors.register_class(cls, pickle=True)
    assert roundtrip([member])[0] is member


@pytest.mark.parametrize("cls, base", [(np.matrix, "ndarray"), (np.memmap, "ndarray"),
                                       (type("MyArray", (np.ndarray,), {}), "ndarray"),
                                       (type("MyFloat", (np.float64,), {}), "float")],
                         ids=lambda c: getattr(c, "__name__", c))
def test_numpy_subclasses_cannot_register_by_fields(cls, base):
    # by its fields an array subclass would travel without its data
    with pytest.raises(RegistrationError) as info:
        actors.register_class(cls)
    assert str(info.value) == (f"cannot register class {qualified(cls)} by its fields: it derives from {base}, whose "
                               f"contents are not fields; register it with pickle=True or a serializer")


@pytest.mark.parametrize("base", [decimal.Decimal, datetime.timedelta, datetime.datetime, functools.partial],
                         ids=lambda c: c.__name__)
def test_subclasses_of_c_types_with_state_cannot_register_by_fields(base):
    # by its fields a Decimal subclass travelled as an empty __dict__, and came back as Decimal('0')
    cls = type("Sub", (base,), {})
    with pytest.raises(RegistrationError) as info:
        actors.register_class(cls)
    assert str(info.value) == (f"cannot register class {qualified(cls)} by its fields: it derives from the C type "
                               f"{base.__module__}.{base.__qualname__}, whose state is not in its fields; register it "
                               f"with pickle=True or a serializer")
    with pytest.raises(SerializationError, match=r"call actors\.register_class\(Sub, pickle=True\)$"):
        actors.dumps(cls(*{decimal.Decimal: ["1.5"], datetime.timedelta: [2],
                           datetime.datetime: [2024, 1, 1], functools.partial: [max, 1]}[base]))


def test_a_simple_namespace_subclass_registers_by_fields():
    # its C base holds only a __dict__: its state is its fields
    ns = type("NS", (types.SimpleNamespace,), {})
    actors.register_class(ns)
    try:
        assert roundtrip(ns(a=1, b=[2])) == ns(a=1, b=[2])
    finally:
        actors.unregister_class(ns)


def test_a_subclass_of_a_stateless_c_type_registers_by_fields():
    class Zone(datetime.tzinfo):        # tzinfo holds nothing in C: its subclasses' state is their fields
        def __init__(self, hours):
            self.hours = hours

        def utcoffset(self, dt):
            return datetime.timedelta(hours=self.hours)

    actors.register_class(Zone)
    try:
        back = roundtrip(datetime.datetime(2024, 1, 1, tzinfo=Zone(3)))
        assert back.tzinfo.hours == 3 and back.utcoffset() == datetime.timedelta(hours=3)
    finally:
        actors.unregister_class(Zone)


@pytest.mark.parametrize("cls", [types.FunctionType, functools.partial], ids=lambda c: c.__name__)
def test_builtin_types_cannot_register_by_fields(cls):
    with pytest.raises(RegistrationError, match=rf"^cannot register class {re.escape(qualified(cls))} by its fields"):
        actors.register_class(cls)


def test_builtin_types_registered_by_fields_do_not_lose_state_silently():
    # what a fields registration of a C type does today: the message encodes, the receiver cannot rebuild it
    obj = functools.partial(max, 1)
    try:
        actors.register_class(functools.partial)
    except RegistrationError:
        return                                      # refused up front: nothing can be lost
    msg = actors.dumps(obj)
    with pytest.raises(DecodeError):
        actors.loads(msg)


def test_unregistered_c_type_suggests_pickle():
    obj = functools.partial(max, 1)
    with pytest.raises(SerializationError) as info:
        actors.dumps(obj)
    assert re.fullmatch(re.escape(f"cannot serialize <partial object at {id(obj):#x}> at obj: class partial is not "
                                  f"registered; call actors.register_class(") + r"(functools\.)?partial, pickle=True\)",
                        str(info.value)), str(info.value)


def test_classes_without_fields_cannot_register_by_fields():
    class NoFields:
        __slots__ = ()

    with pytest.raises(RegistrationError) as info:
        actors.register_class(NoFields)
    assert str(info.value) == (f"cannot register class {qualified(NoFields)} by its fields: its instances have no "
                               f"__dict__ or __slots__; register it with pickle=True or a serializer")
    with pytest.raises(RegistrationError) as info:
        actors.register_class(object)
    assert str(info.value) == ("cannot register class builtins.object by its fields: it is a C type, whose state "
                               "is not in its fields; register it with pickle=True or a serializer")
    actors.register_class(NoFields, pickle=True)
    assert type(roundtrip(NoFields())) is NoFields


def test_register_needs_a_class():
    obj = Foo()
    with pytest.raises(RegistrationError) as info:
        actors.register_class(obj)
    assert str(info.value) == f"cannot register {obj!r}: it is not a class; pass its class, type(obj)"


def test_register_option_conflicts():
    name = qualified(Celsius)
    with pytest.raises(RegistrationError) as info:
        actors.register_class(Celsius, pickle=True, serializer=str, deserializer=float)
    assert str(info.value) == (f"cannot register class {name}: pickle=True and a serializer exclude each other; "
                               f"choose one")
    with pytest.raises(RegistrationError) as info:
        actors.register_class(Celsius, serializer=str)
    assert str(info.value) == (f"cannot register class {name}: a serializer needs a deserializer and the other way "
                               f"round; pass both")
    with pytest.raises(RegistrationError) as info:
        actors.register_class(Celsius, deserializer=float)
    assert str(info.value).endswith("a serializer needs a deserializer and the other way round; pass both")
    with pytest.raises(RegistrationError) as info:
        actors.register_class(Celsius, serializer="str", deserializer=float)
    assert str(info.value) == f"cannot register class {name}: serializer and deserializer must be callable"
    assert Celsius not in actors.registered_classes()


# -- decoding against a registry ---------------------------------------------------------------------------------------

def test_unknown_class_code_is_a_decode_error():
    actors.register_class(Plain)
    msg = actors.dumps(Plain(1, 2))
    actors.unregister_class(Plain)
    with pytest.raises(DecodeError) as info:
        actors.loads(msg)
    assert isinstance(info.value, actors.UnknownClassError)
    assert info.value.code == _fastser.wire_code(Plain)
    assert str(info.value) == (f"cannot decode: unknown class code {_fastser.wire_code(Plain):#018x}: the sender "
                               f"registered a class this process has not; register it here too "
                               f"(actors.register_class) at obj (byte 25 of {len(msg)})")


def test_unknown_class_code_nested():
    actors.register_class(Plain)
    msg = actors.dumps({"k": [0, Plain(1, 2)]})
    actors.unregister_class(Plain)
    with pytest.raises(DecodeError, match=r"^cannot decode: unknown class code 0x[0-9a-f]{16}: .* at obj\['k'\]\[1\] "
                                          r"\(byte \d+ of \d+\)$"):
        actors.loads(msg)


@pytest.mark.parametrize("sent, received", [("fields", "pickle"), ("pickle", "custom"), ("custom", "fields")])
def test_mode_mismatch_is_a_decode_error(sent, received):
    options = {"fields": {}, "pickle": {"pickle": True},
               "custom": {"serializer": lambda p: (p.a, p.b), "deserializer": lambda v: Plain(*v)}}
    actors.register_class(Plain, **options[sent])
    msg = actors.dumps(Plain(1, 2))
    actors.register_class(Plain, **options[received])
    with pytest.raises(DecodeError) as info:
        actors.loads(msg)
    assert str(info.value) == (f"cannot decode: class {qualified(Plain)} arrived encoded differently from how it is "
                               f"registered here (mode {received}); register it the same way in every process at "
                               f"obj (byte 25 of {len(msg)})")


def test_separate_registries():
    reg = _fastser.Registry()
    reg.register(Plain)
    assert Plain not in actors.registered_classes()
    msg = _fastser.Encoder(reg).encode([Plain(1, 2)])
    with pytest.raises(SerializationError):
        actors.dumps([Plain(1, 2)])
    with pytest.raises(DecodeError, match="unknown class code"):
        actors.loads(msg)
    out = _fastser.Decoder(reg).decode(msg)
    assert out[0].__dict__ == {"a": 1, "b": 2}
    assert len(reg) == 1 and [e.cls for e in reg.entries()] == [Plain]


def test_registry_entries_ship_to_another_registry():
    import pickle

    src = _fastser.Registry()
    src.register(Plain)
    src.register(Slotted)
    src.register(Celsius, serializer=_celsius_ser, deserializer=Celsius)
    dst = _fastser.Registry()
    dst.add_entries(pickle.loads(pickle.dumps(src.entries())))
    dst.add_entries(src.entries())          # again: harmless
    assert [e.cls for e in dst.entries()] == [Plain, Slotted, Celsius]
    assert [e.mode for e in dst.entries()] == ["fields", "fields", "custom"]
    msg = _fastser.Encoder(src).encode([Plain(1, 2), Slotted(3, 4), Celsius(5)])
    out = _fastser.Decoder(dst).decode(msg)
    assert out[0].a == 1 and out[1].y == 4 and out[2] == Celsius(5)


def _celsius_ser(c):
    return c.degrees
