# The mailbox record as the store core writes and reads it: the one declaration the C level uses.
# `actors._wire.protocol` declares the same layout and kinds for Python; tests/test_wire_protocol.py checks that
# the two agree (through `_shm.record_layout()`).

# A record: u64 store offset | u32 kind | u32 sender endpoint id | u64 call id (or sender seq)
cdef enum:
    RECORD_SIZE = 24
    RECORD_KIND_AT = 8
    RECORD_SRC_AT = 12
    RECORD_CALL_AT = 16

# The record kinds the store core acts on, or tells apart (`split_records`).
cdef enum:
    KIND_TELL = 1
    KIND_REPLY = 5
    KIND_ERROR = 6
    KIND_STOP = 9
    KIND_HELLO = 10
    KIND_NODE_GONE = 13
