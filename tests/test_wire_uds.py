"""The transport on its own (actors/_wire/uds.py, link.py, endpoint.py): two endpoints in one process exchange
tells and asks over the Unix-socket transport with a plain Handler, no actor runtime involved."""
import os
import socket
import stat

import pytest
import trio
import trio.testing

from actors._exceptions import ActorStoppedError
from actors._wire.endpoint import Endpoint, Handler
from actors._wire.link import Link, Transport
from actors._wire.protocol import ASK, REPLY, TELL
from actors._wire.uds import UnixTransport, socket_path


class Collect(Handler):
    """Records every message it gets; answers an ask with the message doubled."""

    def __init__(self):
        self.got = []
        self.arrived = trio.Event()
        self.endpoint = None

    async def handle(self, off, kind, src, call):
        msg = self.endpoint.arena.read(off, True)
        self.got.append((kind, src, msg))
        if kind == ASK:
            await self.endpoint.send(src, REPLY, msg * 2, call, flush=True)
            self.endpoint.flush_all()
        self.arrived.set()
        return False


def _pair(tmp_path, store):
    transport = UnixTransport(str(tmp_path))
    handlers = Collect(), Collect()
    a = Endpoint(1, transport, store._arena, handlers[0])
    b = Endpoint(2, transport, store._arena, handlers[1])
    for ep, handler in zip((a, b), handlers):
        handler.endpoint = ep
    return transport, a, b, handlers


def _run_closing(main, *endpoints):
    try:
        trio.run(main)
    finally:
        for endpoint in endpoints:
            endpoint.close()


def test_two_endpoints_exchange_tells_and_asks_over_unix_sockets(tmp_path, store):
    transport, a, b, (_, got_b) = _pair(tmp_path, store)

    async def main():
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(a.serve)
                await nursery.start(b.serve)
                a.start_handling()
                b.start_handling()
                await a.send(2, TELL, {"n": 1})
                a.flush_all()
                await got_b.arrived.wait()
                kind, off = await a.request(2, ASK, 21)
                assert kind == REPLY
                assert a.arena.read(off, True) == 42
                nursery.cancel_scope.cancel()

    _run_closing(main, a, b)
    assert got_b.got == [(TELL, 1, {"n": 1}), (ASK, 1, 21)]


def test_the_listener_is_private_and_removed_on_close(tmp_path, store):
    transport, a, b, _ = _pair(tmp_path, store)
    path = socket_path(str(tmp_path), 1)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        a.close()
        b.close()
    assert not os.path.exists(path)


def test_a_peer_that_is_not_listening_is_reported_stopped(tmp_path, store):
    transport, a, b, _ = _pair(tmp_path, store)
    b.close()

    async def main():
        with pytest.raises(ActorStoppedError, match="actor #2: it is not running"):
            a.post(2, TELL, "anyone?")

    try:
        trio.run(main)
    finally:
        a.close()


def test_a_peer_marked_gone_stays_gone(tmp_path):
    transport = UnixTransport(str(tmp_path))
    assert not transport.is_gone(7)
    transport.mark_gone(7)
    assert transport.is_gone(7)


def test_a_transport_or_link_must_implement_the_whole_interface():
    class Half(Transport):
        def listen(self, endpoint_id):
            raise NotImplementedError

    class HalfLink(Link):
        def close(self):
            pass

    with pytest.raises(TypeError, match="abstract"):
        Half()
    with pytest.raises(TypeError, match="abstract"):
        HalfLink(1)


def test_an_endpoint_closed_while_it_serves_frees_its_listener_for_the_next_socket(tmp_path, store):
    """Its accept loop wakes and ends: trio forgets the listener's descriptor, so the socket that gets the same
    number next can be waited on (otherwise trio still counts the old wait on that number)."""
    transport, a, b, _ = _pair(tmp_path, store)

    async def main():
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(a.serve)
                await trio.testing.wait_all_tasks_blocked()       # its accept loop waits on the listener
                number = a.listeners[0].sock.fileno()
                a.close()
                left, right = socket.socketpair()
                with left, right:
                    assert number in (left.fileno(), right.fileno())
                    other = left if left.fileno() == number else right
                    (right if other is left else left).send(b"x")
                    await trio.lowlevel.wait_readable(other)
                nursery.cancel_scope.cancel()

    _run_closing(main, a, b)


def test_a_closed_link_or_listener_waited_on_raises_closed_resource_and_leaves_no_wait_behind(tmp_path, store):
    """trio, asked to wait on a closed socket, raises ValueError and keeps the task registered under descriptor -1,
    where closing another closed socket woke it long after it had ended: an internal error that ended the run."""
    transport, a, b, _ = _pair(tmp_path, store)

    async def main():
        with trio.fail_after(20):
            link = transport.connect(2)
            link.close()
            b.close()
            for wait in (link.wait_readable, link.wait_writable, b.listeners[0].wait_readable):
                with pytest.raises(trio.ClosedResourceError):
                    await wait()
            link.close()            # closing what is closed already wakes nobody
            b.close()

    _run_closing(main, a, b)
