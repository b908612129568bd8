"""The wire protocol is declared once: the store core (compiled from _fastser/_records.pxd) and
actors._wire.protocol must agree on the record layout and the kinds they share."""
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
    assert layout["TELL"] == protocol.TELL
    assert layout["STOP"] == protocol.STOP


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
