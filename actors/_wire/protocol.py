"""What crosses a link, declared once: the record layout, the record kinds, the system operations and the spawn spec.

The store core writes records itself (`Arena.post_record`) and reads two kinds (`Arena.journal_records`); it takes
the layout and those kinds from `_fastser/_records.pxd`, and tests/test_wire_protocol.py checks that this module
declares the same.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import struct

RECORD = struct.Struct("<QIIQ")      # store offset, kind, sender endpoint id, call id (or a tell's sender seq)
RECORD_SIZE = RECORD.size

# Record kinds: plain ints, because the hot path compares them per record (a module global int is the cheapest).
TELL = 1            # payload: the message
ASK = 2             # payload: the message; reply with REPLY or ERROR and the same call id
CALL = 3            # payload: (method, args, kwargs); reply like ASK
CALL_TELL = 4       # payload: (method, args, kwargs); no reply
REPLY = 5           # payload: the result
ERROR = 6           # payload: (type name, message, traceback text)
SYSTEM = 7          # payload: (SystemOp, *args) for the system; reply like ASK
SYSTEM_TELL = 8     # payload: (SystemOp, *args); no reply
STOP = 9            # payload: None
HELLO = 10          # no payload; call = the sender's epoch. The first record on every connection
ACK = 11            # no payload; call = the highest sender seq the (persistent) receiver has journaled
STATUS = 12         # no payload; sent alone on a connection of its own, answered at once by the reader with a
                    # STATUS record on it: offset = records handled, call = records waiting to be handled
NODE_GONE = 13      # no payload; call = a cluster node's number. Sent by the driver alone on a connection of its
                    # own, acted on at once by the reader: that node has left or is lost, its links are dead

# Ids in a cluster: (node number << NODE_SHIFT) | the actor's number on its node. Node 0 is a system that is not part
# of a cluster, so the ids of one machine are plain numbers.
NODE_SHIFT = 20                     # 1,048,575 actors per node run, 4,095 node numbers per cluster
LOCAL_MASK = (1 << NODE_SHIFT) - 1
MAX_NODE_NUMBER = (1 << (32 - NODE_SHIFT)) - 1

KINDS = {"TELL": TELL, "ASK": ASK, "CALL": CALL, "CALL_TELL": CALL_TELL, "REPLY": REPLY, "ERROR": ERROR,
         "SYSTEM": SYSTEM, "SYSTEM_TELL": SYSTEM_TELL, "STOP": STOP, "HELLO": HELLO, "ACK": ACK, "STATUS": STATUS,
         "NODE_GONE": NODE_GONE}
NO_PAYLOAD = (HELLO, ACK, STATUS, NODE_GONE)


class SystemOp(enum.IntEnum):
    """The requests an actor process sends the system (endpoint 0), as the first item of a SYSTEM payload.

    On the wire they travel as plain ints (`int(op)`); the system dispatches them through a table, never by name.
    """
    SPAWN = 1           # (pickled (cls, args, kwargs), name, options, node, labels, owner) -> ActorRef
    LOOKUP = 2          # (name) -> ActorRef
    STOP = 3            # (actor id, timeout)
    WATCH = 4           # (target id, watcher id, watcher name)
    REGISTER = 5        # (pickled registry entry): a class registered after startup
    REGISTRY = 6        # (wire code) -> pickled registry entry, or None
    # Reports, handled in arrival order (before any exit of the same actor is decided):
    READY = 7           # (actor id, error payload or None, pid): its on_start finished
    FAILURE = 8         # (actor id, reason): it is about to exit as failed
    STOPPING = 9        # (actor id, reason): it stops for good (on_error="stop")
    LOG = 10            # (actor id, a log record's fields): for the system's logging to handle
    STATUS = 11         # () -> system.status() as JSON
    NODES = 12          # () -> the cluster's live nodes, as tuples of NodeInfo's fields
    DEATH_CAUSE = 13    # (actor id) -> how its process ended ("killed by SIGSEGV"), or None if not known here


REPORTS = frozenset((SystemOp.READY, SystemOp.FAILURE, SystemOp.STOPPING, SystemOp.LOG))


@dataclasses.dataclass
class SpawnSpec:
    """Everything a new actor process needs, sent (cloudpickled) through the fork server."""
    id: int
    name: str
    cls: type
    args: tuple
    kwargs: dict
    rundir: str
    store: str
    registry: list
    serialize: object
    deserialize: object
    mailbox_size: int
    app: tuple | None
    options: dict
    resilience_dir: str | None
    log_levels: tuple = (logging.WARNING, {})     # the system's: its root level, and the levels set per logger
    node: int = 0           # the number of the cluster node it runs on (0: not in a cluster)
    secret: bytes = b""     # the cluster's secret, for the links it opens to other nodes
    epoch: int = 0          # a persistent actor's writer epoch (its claim's etcd revision; 0: not in a cluster)
    shared_dir: bool = False    # the resilience directory is shared by several nodes: lock the actor's own files
