"""The wire protocol is declared once: the store core (compiled from _fastser/_records.pxd) and
actors._wire.protocol must agree on the record layout and the kinds they share."""
import pytest

from _fastser import _shm
from actors._wire import protocol


def test_the_record_layout_matches_the_store_core():
    layout = _shm.record_layout()
    assert layout["size"] == protocol.RECORD_SIZE == protocol.RECORD.size
    # offset | kind | src | call, little-endian: where each field sits in the Python struct
    fields = [protocol.RECORD.format[i + 1] for i in range(4)]
    offsets, at = [], 0
    for code in fields:
        offsets.append(at)
        at += {"Q": 8, "I": 4}[code]
    assert offsets[1:] == [layout["kind_at"], layout["src_at"], layout["call_at"]]


def test_the_kinds_the_store_core_uses_match_the_protocol():
    layout = _shm.record_layout()
    for name in ("TELL", "REPLY", "ERROR", "STOP", "HELLO", "NODE_GONE"):
        assert layout[name] == protocol.KINDS[name], name
    # split_records takes HELLO..NODE_GONE as one range: the kinds with no payload
    assert list(range(protocol.HELLO, protocol.NODE_GONE + 1)) == sorted(protocol.NO_PAYLOAD)


def test_record_kinds_and_system_operations_are_distinct():
    kinds = list(protocol.KINDS.values())
    assert len(set(kinds)) == len(kinds)
    assert all(getattr(protocol, name) == value for name, value in protocol.KINDS.items())
    values = [op.value for op in protocol.SystemOp]
    assert len(set(values)) == len(values)
    assert protocol.REPORTS <= set(protocol.SystemOp)


def test_a_record_written_by_the_store_core_reads_back_through_the_protocol(store):
    out = bytearray()
    size = store._arena.post_record("hello", out, protocol.ASK, 7, 12345)
    assert size > 0
    off, kind, src, call = protocol.RECORD.unpack(out)
    assert (kind, src, call) == (protocol.ASK, 7, 12345)
    assert store._arena.read(off, True) == "hello"


def test_split_records_keeps_order_and_sets_the_readers_own_records_apart():
    records = [(1 << 40, protocol.TELL, 3, 0), (0, protocol.HELLO, 3, 99), (8, protocol.REPLY, 4, 7),
               (16, protocol.ASK, 3, 8), (0, protocol.ACK, 5, 11), (24, protocol.ERROR, 4, 9),
               (0, protocol.STATUS, 6, 0), (0, protocol.NODE_GONE, 0, 2), (32, protocol.STOP, 0, 0),
               (40, protocol.SYSTEM_TELL, 0, (1 << 64) - 1)]
    buf = bytearray(b"".join(protocol.RECORD.pack(*r) for r in records) + b"\x01" * 10)
    work, control = _shm.split_records(buf, len(records) * protocol.RECORD_SIZE)
    assert work == [r for r in records if r[1] not in (protocol.REPLY, protocol.ERROR, *protocol.NO_PAYLOAD)]
    assert control == [r for r in records if r[1] in (protocol.REPLY, protocol.ERROR, *protocol.NO_PAYLOAD)]
    assert _shm.split_records(buf, protocol.RECORD_SIZE) == ([records[0]], None)
    assert _shm.split_records(buf, 0) == ([], None)
    with pytest.raises(ValueError, match="whole number"):
        _shm.split_records(buf, 25)
    with pytest.raises(ValueError, match="whole number"):
        _shm.split_records(buf, len(buf) + 14)
