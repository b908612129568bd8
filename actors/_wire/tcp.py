"""The TCP transport: links between endpoints on different machines (the nodes of a cluster).

**Ids.** An endpoint id is `(node number << NODE_SHIFT) | local id` (protocol.py). Node 0 is a system that is not part
of a cluster, so single-machine ids are unchanged; a node's driver is `number << NODE_SHIFT` (its actors still reach
it as 0). An actor re-placed after its node was lost keeps its id; the membership then says where it runs now.

**Frames.** On the wire a record is followed by its payload: the 24-byte record travels as it is, except that for a
kind with a payload its offset field carries the payload's length, and the encoded message follows. The sender
writes the message's bytes straight out of its shared memory into the socket (`sendmsg` of views into the store: one
copy, nothing re-encoded); the receiver allocates a block in its own store, reads the bytes into it, and hands its
endpoint the usual record with the new block's offset. Everything above the link (the inbox, asks, acks, resends)
cannot tell a TCP link from a Unix-socket one.

**Connections.** Each sending process connects straight to the receiving process: it dials the node's gateway (one
TCP port per node, served by the node's driver), which authenticates it and then passes the connected socket itself
to the target actor over a Unix socket (`SCM_RIGHTS`). So a message crosses one connection between the two processes,
with no relay, and each (sender, receiver) pair has its own connection: a 100 MB message holds up only the messages
behind it from the same sender to the same receiver, which must come after it anyway.

**Authentication.** Both ends prove they know the cluster secret, with an HMAC-SHA256 challenge and response over
fresh nonces from each side, before anything else crosses. A node without a secret uses an empty one, and
`check_listen_address` keeps such a node on loopback.
"""
from __future__ import annotations

import bisect
import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import struct

import trio

from actors._exceptions import ClusterError
from actors._wire.link import Link, Listener, Transport, Unreachable
from actors._wire.protocol import KINDS, LOCAL_MASK, MAX_NODE_NUMBER, NO_PAYLOAD, NODE_SHIFT, RECORD, RECORD_SIZE
from actors._wire.uds import SocketLink, UnixListener, UnixTransport, wait_readable, wait_writable

log = logging.getLogger(__name__)


MAGIC = b"actors-cluster/1\n"
NONCE = 32
MAC = 32
_ASK = struct.Struct("<Q")          # the target endpoint id
_ANSWER = struct.Struct("<BQ")      # status, incarnation (the target process's pid)
OK, NOT_RUNNING, GONE = 0, 1, 2
DIAL_TIMEOUT = 5.0

_KINDS = frozenset(KINDS.values())
_MIN_MESSAGE = 16                   # an encoded message's header
_IOV_MAX = 1000                     # buffers per sendmsg (the kernel takes 1024)
_SEND_CHUNK = 4 << 20               # bytes of frames gathered per sendmsg
_READ_BUFFER = 1 << 18
_DIRECT_READ = 1 << 16              # the rest of a payload at least this large is read straight into its block


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()


def sign(secret: bytes, data: bytes) -> bytes:
    """A MAC of `data` under the cluster secret."""
    return _mac(secret, b"sign", data)


def verify(secret: bytes, data: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(signature, sign(secret, data))


def check_listen_address(host: str, secret: bytes) -> None:
    """A node with no secret accepts anyone who can reach it: it may listen on loopback only."""
    if secret:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ClusterError(f"refusing to listen on {host}: a node without a cluster secret listens on loopback only "
                           f"(anyone who reaches the port could send it messages); give the cluster a secret with "
                           f"--secret-file FILE or ACTORS_CLUSTER_SECRET, or listen on 127.0.0.1")


class TcpLink(SocketLink):
    """A Link over a connected, non-blocking TCP socket, carrying each record's payload with it (see the module
    docstring). The arena is this process's store: where payloads are sent from and received into."""
    __slots__ = ("arena", "sent", "rbuf", "rview", "rstart", "rend", "block", "block_at", "got", "header",
                 "starved", "eof", "dialing", "ready")

    def __init__(self, peer: int, sock: socket.socket, arena, dialing=None):
        super().__init__(peer)
        self.remote = True
        self.arena = arena
        self.block = None
        self._attach(sock)
        # (address, secret, node name) while the dial is being finished (`establish`): until then nothing is sent
        # or read, and whoever waits to, waits for `ready`
        self.dialing = dialing
        self.pending = dialing is not None
        self.ready = trio.Event()

    async def establish(self) -> None:
        """Finish the dial (see `handshake`); Unreachable if it fails. Who waits on the link wakes either way."""
        address, secret, node = self.dialing
        try:
            pid = await handshake(self.sock, address, self.peer, secret, node)
            self.incarnation = (self.incarnation, pid)
        finally:
            self.pending = False
            self.dialing = None
            self.ready.set()

    def _attach(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0                   # bytes of the first record's frame already written
        self.rbuf = bytearray(_READ_BUFFER)
        self.rview = memoryview(self.rbuf)
        self.rstart = self.rend = 0     # what is read and not yet parsed
        self._drop_block()
        self.starved = False            # the store had no room for the next payload
        self.eof = False

    # -- sending -------------------------------------------------------------------------------------------------

    def send(self, data) -> int:
        """Write the frames of the records in `data` (a whole number of records); the bytes of the records whose
        frames are now wholly written. A record's payload is released once its frame is out."""
        if self.pending:
            raise BlockingIOError       # still dialing: the records wait in the outbox
        arena = self.arena
        buffers = []
        ends = []           # where each record's frame ends, counted from the first record's frame
        offsets = []        # the payloads to release, per record (-1: none)
        total = 0
        at = 0
        count = len(data) // RECORD_SIZE
        while at < count and len(buffers) < _IOV_MAX and total - self.sent < _SEND_CHUNK:
            off, kind, src, call = RECORD.unpack_from(data, at * RECORD_SIZE)
            if kind in NO_PAYLOAD:
                buffers.append(bytes(data[at * RECORD_SIZE:(at + 1) * RECORD_SIZE]))
                total += RECORD_SIZE
                offsets.append(-1)
            else:
                payload = arena.payload(off)
                buffers.append(RECORD.pack(len(payload), kind, src, call))
                buffers.append(payload)
                total += RECORD_SIZE + len(payload)
                offsets.append(off)
            ends.append(total)
            at += 1
        skip = self.sent
        while skip:                     # what an earlier call wrote of the first frame
            first = buffers[0]
            if len(first) <= skip:
                skip -= len(first)
                del buffers[0]
            else:
                buffers[0] = memoryview(first)[skip:]
                skip = 0
        written = self.sock.sendmsg(buffers) + self.sent
        buffers = None
        done = bisect.bisect_right(ends, written)
        for off in offsets[:done]:
            if off >= 0:
                arena.decref_id(off)
        self.sent = written - (ends[done - 1] if done else 0)
        return done * RECORD_SIZE

    # -- receiving -----------------------------------------------------------------------------------------------

    def recv_into(self, out) -> int:
        """Fill `out` with whole records, their payloads already in blocks of this process's store; 0 at the end of
        the connection, BlockingIOError when no whole record has arrived."""
        if self.pending:
            raise BlockingIOError
        produced = 0
        room = len(out) - len(out) % RECORD_SIZE
        pack_into = RECORD.pack_into
        while produced < room:
            if self.block is not None:
                if not self._fill_block():
                    break
                kind, src, call = self.header
                pack_into(out, produced, self.block_at, kind, src, call)
                produced += RECORD_SIZE
                self.block = None
                continue
            if self.rend - self.rstart < RECORD_SIZE:
                if not self._read():
                    break
                continue
            length, kind, src, call = RECORD.unpack_from(self.rbuf, self.rstart)
            if kind not in _KINDS:
                self._corrupt(f"unknown record kind {kind}")
            if kind in NO_PAYLOAD:
                out[produced:produced + RECORD_SIZE] = self.rview[self.rstart:self.rstart + RECORD_SIZE]
                self.rstart += RECORD_SIZE
                produced += RECORD_SIZE
                continue
            if length < _MIN_MESSAGE or length > self.arena.capacity:
                self._corrupt(f"a {length}-byte message (the store holds {self.arena.capacity} bytes)")
            placed = self.arena.receive(length)
            if placed is None:
                self.starved = True     # wait_readable waits for room
                break
            self.rstart += RECORD_SIZE
            self.block_at, self.block = placed
            self.got = 0
            self.header = (kind, src, call)
        if produced:
            return produced
        if self.eof:
            return 0
        raise BlockingIOError

    def _fill_block(self) -> bool:
        """Move payload bytes into the block being received; True once it is whole."""
        block = self.block
        need = len(block) - self.got
        buffered = self.rend - self.rstart
        if buffered:
            n = min(buffered, need)
            block[self.got:self.got + n] = self.rview[self.rstart:self.rstart + n]
            self.rstart += n
            self.got += n
            need -= n
        while need:
            if need < _DIRECT_READ:
                return self._read() and self._fill_block()
            n = self._recv(block[self.got:])       # large: straight into the store
            if not n:
                return False
            self.got += n
            need -= n
        return True

    def _read(self) -> bool:
        """Read more into the buffer; False if nothing came (the socket is empty, or the connection ended)."""
        if self.rstart:
            left = self.rend - self.rstart
            self.rbuf[:left] = self.rview[self.rstart:self.rend]
            self.rstart, self.rend = 0, left
        n = self._recv(self.rview[self.rend:])
        self.rend += n
        return n > 0

    def _recv(self, view) -> int:
        """Read what has arrived into `view`: the count, 0 if nothing had (or the connection ended: `eof`)."""
        try:
            n = self.sock.recv_into(view)
        except BlockingIOError:
            return 0
        except OSError:
            n = 0
        if n == 0:
            self.eof = True
        return n

    def _corrupt(self, what: str):
        log.warning("closing the connection from %s: %s is not a valid frame (a different version, or not a "
                    "node of this cluster)", self._where(), what)
        raise ConnectionAbortedError(f"invalid frame: {what}")

    def _where(self) -> str:
        try:
            host, port = self.sock.getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            return "a closed connection"

    async def wait_writable(self) -> None:
        if self.pending:
            await self.ready.wait()
        else:
            await wait_writable(self.sock)

    async def wait_readable(self) -> None:
        if self.pending:
            await self.ready.wait()
        elif self.starved:                # no room in the store: poll for it (no event crosses processes)
            self.starved = False
            await trio.sleep(0.002)
        elif self.rend - self.rstart >= RECORD_SIZE or self.eof:
            await trio.lowlevel.checkpoint()     # a whole record (or the end) is already here
        else:
            await wait_readable(self.sock)

    def unread(self) -> int:
        return super().unread() + self.rend - self.rstart

    def _drop_block(self) -> None:
        if self.block is not None:
            self.block = None
            self.arena.decref_id(self.block_at)     # a payload cut off by the end of the connection

    def close(self) -> None:
        self._drop_block()
        super().close()

    def adopt(self, fresh: TcpLink) -> None:
        self._attach(fresh.sock)
        self.incarnation = fresh.incarnation
        self.pending = False


# -- dialing and answering --------------------------------------------------------------------------------------------


async def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        await wait_readable(sock)
        try:
            chunk = sock.recv(n - len(data))
        except BlockingIOError:
            continue
        if not chunk:
            raise ConnectionRefusedError("the connection was closed during the handshake")
        data += chunk
    return data


async def _send_all(sock: socket.socket, data: bytes) -> None:
    while data:
        await wait_writable(sock)
        try:
            data = data[sock.send(data):]
        except BlockingIOError:
            pass


def start_dial(address: tuple[str, int], node: str) -> socket.socket:
    """A non-blocking socket connecting to the gateway of the node at `address`; `handshake` finishes the dial, so
    that no dial ever holds up the process's loop (a node cut off the network answers nothing for seconds)."""
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
    except OSError as exc:
        sock.close()
        raise Unreachable(f"node {node!r} at {address[0]}:{address[1]} cannot be reached ({exc.strerror or exc})")
    return sock


async def handshake(sock: socket.socket, address: tuple[str, int], target: int, secret: bytes, node: str) -> int:
    """Finish a dial (see `start_dial`) for endpoint `target`, proving both ends know the secret; the target
    process's pid. `Unreachable` when the target cannot be reached (`gone` when waiting will not help), within
    DIAL_TIMEOUT."""
    where = f"{address[0]}:{address[1]}"
    with trio.move_on_after(DIAL_TIMEOUT):
        try:
            await wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise Unreachable(f"node {node!r} at {where} cannot be reached ({os.strerror(err)})")
            challenge = await _recv_exactly(sock, len(MAGIC) + NONCE)
            if challenge[:len(MAGIC)] != MAGIC:
                raise Unreachable(f"{where} is not the gateway of an actors node (node {node!r})", gone=True)
            theirs, ours = challenge[len(MAGIC):], os.urandom(NONCE)
            ask = _ASK.pack(target)
            await _send_all(sock, ours + ask + _mac(secret, b"dial", theirs, ours, ask))
            try:
                answer = await _recv_exactly(sock, _ANSWER.size + MAC)
            except ConnectionRefusedError:
                raise Unreachable(f"node {node!r} refused the connection: this node's cluster secret is not the "
                                  f"cluster's (check --secret-file or ACTORS_CLUSTER_SECRET on both)",
                                  gone=True) from None
            status, incarnation = _ANSWER.unpack_from(answer)
            if not hmac.compare_digest(answer[_ANSWER.size:], _mac(secret, b"answer", ours, theirs, ask,
                                                                     answer[:_ANSWER.size])):
                raise Unreachable(f"the node at {where} does not know the cluster secret: refusing to talk to it "
                                  f"(it is not node {node!r})", gone=True)
            if status != OK:
                raise Unreachable("it is not running" if status == NOT_RUNNING else "it has stopped",
                                  gone=status == GONE)
            return incarnation
        except Unreachable:
            raise
        except OSError as exc:
            raise Unreachable(f"node {node!r} at {where}: the handshake failed ({exc.strerror or exc})") from None
        except trio.ClosedResourceError:
            raise Unreachable(f"the dial to node {node!r} was given up (its node is gone)", gone=True) from None
    raise Unreachable(f"node {node!r} at {where} did not answer within {DIAL_TIMEOUT:g} s")


async def answer_dial(sock: trio.socket.SocketType, secret: bytes, route, timeout: float = DIAL_TIMEOUT):
    """The gateway's side of `dial`: check the dialer's proof, ask `route(target, sock)` for (status,
    incarnation) (it hands the socket over to the target when it can take it), and answer with our own proof. The target id when the dialer may go on, else None (the socket is then closed,
    and a failed proof logged)."""
    where = "an unknown address"
    try:
        with trio.move_on_after(timeout):
            where = "%s:%s" % sock.getpeername()[:2]
            ours = os.urandom(NONCE)
            await sock.send(MAGIC + ours)
            data = b""
            want = NONCE + _ASK.size + MAC
            while len(data) < want:
                chunk = await sock.recv(want - len(data))
                if not chunk:
                    return None
                data += chunk
            theirs, ask, proof = data[:NONCE], data[NONCE:NONCE + _ASK.size], data[NONCE + _ASK.size:]
            if not hmac.compare_digest(proof, _mac(secret, b"dial", ours, theirs, ask)):
                log.warning("refused a connection from %s: it did not prove it knows the cluster secret", where)
                return None
            target = _ASK.unpack(ask)[0]
            status, incarnation = route(target, sock)
            answer = _ANSWER.pack(status, incarnation)
            await sock.send(answer + _mac(secret, b"answer", theirs, ours, ask, answer))
            return target if status == OK else None
        log.warning("dropped a connection from %s: no handshake within %g s", where, timeout)
        return None
    except OSError:
        return None


# -- the cluster's transport ------------------------------------------------------------------------------------------


class HandoffListener(Listener):
    """Where an actor receives the TCP connections its node's gateway accepted for it: each arrives as a file
    descriptor over a Unix socket (`<run directory>/<id>.tcp`, 0600)."""

    def __init__(self, path: str, arena):
        self.arena = arena
        self.unix = UnixListener(path)

    async def wait_readable(self) -> None:
        await self.unix.wait_readable()

    def accept(self) -> TcpLink | None:
        try:
            conn, _ = self.unix.sock.accept()
        except BlockingIOError:
            return None
        with conn:
            conn.settimeout(DIAL_TIMEOUT)
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(conn, 1, 1)
            except OSError:
                return None
        if not fds:
            return None
        sock = socket.socket(fileno=fds[0])
        sock.setblocking(False)
        return TcpLink(-1, sock, self.arena)

    def close(self) -> None:
        self.unix.close()


def handoff_path(rundir: str, endpoint_id: int) -> str:
    return os.path.join(rundir, f"{endpoint_id}.tcp")


def hand_over(rundir: str, endpoint_id: int, sock) -> bool:
    """Pass a connected socket to the actor `endpoint_id` on this node (see HandoffListener); False if it is not
    listening (it is exiting)."""
    path = handoff_path(rundir, endpoint_id)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.settimeout(DIAL_TIMEOUT)
        try:
            unix.connect(path)
            socket.send_fds(unix, [b"s"], [sock.fileno()])
        except OSError:
            return False
    return True


class Membership:
    """The nodes of the cluster as this machine last heard from etcd: a file in the run directory (written by the
    node's driver, read here when a link to another node is opened). {"nodes": {number: [name, host, port]},
    "left": {number: name}, "moved": {actor id: number of the node now running it}}: an actor re-placed after its
    node was lost keeps its id, whose node number then names the node it started on. "awaited": [actor ids] of
    the persistent actors that will run again when their node is lost (their senders wait for them)."""

    def __init__(self, path: str):
        self.path = path
        self.stamp = None
        self.nodes: dict[int, tuple[str, str, int]] = {}
        self.left: dict[int, str] = {}
        self.moved: dict[int, int] = {}
        self.awaited: set[int] = set()

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        # every write replaces the file (a new inode): two writes within the clock's tick share an mtime
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self.stamp:
            return
        with open(self.path) as f:
            data = json.load(f)
        self.nodes = {int(k): tuple(v) for k, v in data["nodes"].items()}
        self.left = {int(k): v for k, v in data["left"].items()}
        self.moved = {int(k): v for k, v in data["moved"].items()}
        self.awaited = set(data["awaited"])
        self.stamp = stamp

    @staticmethod
    def write(path: str, nodes: dict, left: dict, moved: dict, awaited) -> None:
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"nodes": {str(k): list(v) for k, v in nodes.items()},
                       "left": {str(k): v for k, v in left.items()},
                       "moved": {str(k): v for k, v in moved.items()}, "awaited": sorted(awaited)}, f)
        os.replace(tmp, path)

    def name(self, number: int) -> str:
        self.refresh()
        if number in self.nodes:
            return self.nodes[number][0]
        return self.left.get(number, f"#{number}")

    def node_of(self, endpoint_id: int) -> int:
        """The number of the node that runs `endpoint_id` now."""
        self.refresh()
        return self.moved.get(endpoint_id, endpoint_id >> NODE_SHIFT)


def socket_id(endpoint_id: int) -> int:
    """What a node's Unix sockets are named by: 0 for its driver (whatever its number), else the whole id (an actor
    re-placed here keeps the id it was given on another node)."""
    return 0 if endpoint_id & LOCAL_MASK == 0 else endpoint_id


class ClusterTransport(Transport):
    """Endpoints on this node through Unix sockets, endpoints on other nodes through TCP (see the module docstring).
    `node` is this node's number."""

    def __init__(self, rundir: str, node: int, secret: bytes, arena):
        self.local = UnixTransport(rundir)
        self.rundir = rundir
        self.node = node
        self.secret = secret
        self.arena = arena
        self.members = Membership(os.path.join(rundir, "members.json"))
        self.gone: set[int] = set()

    def _is_local(self, peer: int) -> bool:
        if peer == 0:
            return True
        return self.members.node_of(peer) == self.node

    def listen(self, endpoint_id: int) -> Listener:
        return self.local.listen(socket_id(endpoint_id))

    def listeners(self, endpoint_id: int) -> list[Listener]:
        if socket_id(endpoint_id) == 0:     # the driver: its gateway hands it its connections itself
            return [self.listen(endpoint_id)]
        return [self.listen(endpoint_id), HandoffListener(handoff_path(self.rundir, endpoint_id), self.arena)]

    def connect(self, peer: int) -> Link:
        if self._is_local(peer):
            link = self.local.connect(socket_id(peer))
            link.peer = peer
            return link
        number = self.members.node_of(peer)
        if number not in self.members.nodes:
            if peer in self.members.awaited:
                raise Unreachable(f"its node {self.members.name(number)!r} is gone, and it has not started again "
                                  f"yet")
            self.gone.add(peer)
            raise Unreachable(f"its node {self.members.name(number)!r} has left the cluster", gone=True)
        name, host, port = self.members.nodes[number]
        sock = start_dial((host, port), name)
        link = TcpLink(peer, sock, self.arena, dialing=((host, port), self.secret, name))
        link.incarnation = number       # with the pid, once the dial is finished
        return link

    def unconnected(self, peer: int) -> Link | None:
        if not self._is_local(peer):
            return None                 # a TcpLink is made by its dial (`connect`), not ahead of it
        link = self.local.unconnected(socket_id(peer))
        link.peer = peer
        return link

    def unreachable(self, peer: int, exc: OSError) -> None:
        if getattr(exc, "gone", False) and peer not in self.members.awaited:
            self.gone.add(peer)

    def node_name(self, number: int) -> str:
        return self.members.name(number)

    def node_of(self, peer: int) -> int:
        return self.members.node_of(peer)

    def where(self, peer: int) -> str:
        if self._is_local(peer):
            return ""
        return f" on node {self.members.name(self.members.node_of(peer))!r}"

    def is_gone(self, peer: int) -> bool:
        if self._is_local(peer):
            return self.local.is_gone(socket_id(peer))
        if peer in self.members.awaited:
            return False                # a persistent actor: it runs again (elsewhere, or when its node is back)
        if peer in self.gone:
            return True
        return self.members.node_of(peer) not in self.members.nodes

    def mark_gone(self, peer: int) -> None:
        if self._is_local(peer):
            self.local.mark_gone(socket_id(peer))
        else:
            self.gone.add(peer)
