"""The Unix-socket transport: each endpoint listens on `<run directory>/<endpoint id>.sock` (mode 0600, in a 0700
directory). The only module that knows AF_UNIX and socket paths."""
from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import struct
import termios

import trio

from actors._wire.link import Link, Listener, Transport


def socket_path(rundir: str, endpoint_id: int) -> str:
    return os.path.join(rundir, f"{endpoint_id}.sock")


def close_socket(sock: socket.socket) -> None:
    """Close `sock` so that a task waiting on it (an asker reading its reply, an accept loop) wakes with
    ClosedResourceError, instead of waiting forever on a descriptor number the next socket may reuse. A socket
    closed already is left alone: its descriptor number is -1, which is no socket's."""
    if sock.fileno() < 0:
        return
    try:
        trio.lowlevel.notify_closing(sock)
    except RuntimeError:
        pass                            # outside trio: nothing can be waiting on it
    sock.close()


async def wait_readable(sock: socket.socket) -> None:
    """trio's wait_readable, but ClosedResourceError for a socket closed already. (trio, given such a socket,
    raises ValueError and keeps the waiting task registered under descriptor -1, where a later notify_closing
    would wake it again, however long after it ended: an internal error that ends the run.)"""
    if sock.fileno() < 0:
        raise trio.ClosedResourceError("the socket was closed")
    await trio.lowlevel.wait_readable(sock)


async def wait_writable(sock: socket.socket) -> None:
    """trio's wait_writable, but ClosedResourceError for a socket closed already (see `wait_readable`)."""
    if sock.fileno() < 0:
        raise trio.ClosedResourceError("the socket was closed")
    await trio.lowlevel.wait_writable(sock)


async def _closed() -> None:
    raise trio.ClosedResourceError("the link was closed")


class SocketLink(Link):
    """What the links over a connected stream socket (Unix or TCP) share."""
    __slots__ = ("sock",)

    def unread(self) -> int:
        try:
            return struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def close(self) -> None:
        close_socket(self.sock)


class UnixLink(SocketLink):
    """A Link over a connected, non-blocking Unix stream socket."""
    __slots__ = ("send", "recv_into", "wait_readable", "wait_writable")

    def __init__(self, peer: int, sock: socket.socket):
        super().__init__(peer)
        self._attach(sock)

    def _attach(self, sock: socket.socket) -> None:
        self.sock = sock
        # The socket's own bound methods (and partials, which add no Python frame): see Link.
        self.send = sock.send
        self.recv_into = sock.recv_into
        self.wait_readable = functools.partial(trio.lowlevel.wait_readable, sock)
        self.wait_writable = functools.partial(trio.lowlevel.wait_writable, sock)

    def fileno(self) -> int:
        # Records are read straight from the socket, so its readiness is theirs. (Not so over TCP, where whole
        # records may wait in the link's own buffer, or for room in the store: no quiet wait there.)
        return self.sock.fileno()

    def close(self) -> None:
        super().close()
        # its waits were partials of trio's on this socket: from now on they raise (see `wait_readable`)
        self.wait_readable = self.wait_writable = _closed

    def adopt(self, fresh: UnixLink) -> None:
        self._attach(fresh.sock)
        self.incarnation = fresh.incarnation
        self.quiet = None               # it polled the old socket


class UnixListener(Listener):
    def __init__(self, path: str):
        self.path = path
        try:
            os.unlink(path)         # left by an earlier incarnation of this actor, killed before it could
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(128)
        self.sock.setblocking(False)

    async def wait_readable(self) -> None:
        await wait_readable(self.sock)

    def accept(self) -> UnixLink | None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return None
        conn.setblocking(False)
        return UnixLink(-1, conn)

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        close_socket(self.sock)


class UnixTransport(Transport):
    """Endpoints of one system on one machine, reached through the sockets in its run directory."""

    def __init__(self, rundir: str):
        self.rundir = rundir

    def listen(self, endpoint_id: int) -> UnixListener:
        return UnixListener(socket_path(self.rundir, endpoint_id))

    def connect(self, peer: int) -> UnixLink:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
            import resource
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            raise OSError(errno.EMFILE, f"Too many open files: this process has reached its limit of {soft} (one "
                                        f"per connection to an actor it talks to, and the system's own); raise it "
                                        f"with `ulimit -n`, or, past the hard limit, `ulimit -Hn` as root") from None
        try:
            sock.connect(socket_path(self.rundir, peer))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        link = UnixLink(peer, sock)
        # the pid of the process that accepted: a dying actor's listener still accepts until its last thread exits
        link.incarnation = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        return link

    def unconnected(self, peer: int) -> UnixLink:
        link = UnixLink(peer, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        link.close()
        return link

    def is_gone(self, peer: int) -> bool:
        return os.path.exists(socket_path(self.rundir, peer) + ".gone")

    def mark_gone(self, peer: int) -> None:
        path = socket_path(self.rundir, peer)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        with open(path + ".gone", "w"):
            pass
