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


class _Point:
    def __init__(self, x):
        self.x = x


def test_read_tells_decodes_a_run_of_tells_and_stops_before_what_the_handler_must_see(store):
    """Arena.read_tells decodes the tells ahead of a list iterator, up to `most`, giving up each one's count and
    moving the iterator past it; it stops before a record that is not a tell, and before a tell that does not
    decode, which keeps its count for the handler to read (and report) itself."""
    import actors
    arena = store._arena
    actors.register_class(_Point)
    out = bytearray()
    for i in range(3):
        arena.post_record(i, out, protocol.TELL, 7, 0)
    arena.post_record("asked", out, protocol.ASK, 7, 1)
    arena.post_record(3, out, protocol.TELL, 7, 0)
    arena.post_record(_Point(1), out, protocol.TELL, 7, 0)     # undecodable once unregistered
    arena.post_record(4, out, protocol.TELL, 7, 0)
    actors.unregister_class(_Point)
    batch = [protocol.RECORD.unpack_from(out, i * protocol.RECORD_SIZE) for i in range(7)]
    base = store.stats()["objects"]
    records = iter(batch)
    assert arena.read_tells(batch, records, 2) == [0, 1]        # `most`
    assert arena.read_tells(batch, records, 64) == [2]          # up to the ask
    assert store.stats()["objects"] == base - 3                 # the counts of what it decoded: given up
    assert next(records) == batch[3] and arena.read_tells(batch, records, 64) == [3]
    assert arena.read_tells(batch, records, 64) == []           # the class is unknown here: left to the handler
    assert next(records) == batch[5] and store.stats()["objects"] == base - 4
    with pytest.raises(actors.UnknownClassError):
        arena.read(batch[5][0], True)
    arena.decref_id(batch[5][0])
    assert arena.read_tells(batch, records, 64) == [4]
    assert next(records, None) is None and arena.read_tells(batch, records, 64) == []
    arena.read(batch[3][0], True)
    assert store.stats()["objects"] == base - 7
    with pytest.raises(ValueError, match="not an iterator over batch"):
        arena.read_tells(batch[:2], iter(batch), 64)
