"""Testing your actors with pytest: the `actor_system` fixture, `Probe` (a stand-in actor that records what it is
told) and `logged` (wait for a line an actor logged). A pytest plugin, registered through the `pytest11` entry point
when the package is installed; the tests are `async def` tests under pytest-trio. docs/testing.md shows a whole file.

A probe lives in the test's own process, as an endpoint of the system beside the driver's, not in an actor process:
the test awaits what reaches it directly, with no ask and no polling, and its record is the test's to read.
"""
from __future__ import annotations

import logging
import os

import pytest
import trio

from actors import _ref
from actors._exceptions import ActorsError
from actors._ref import ActorRef
from actors._runtime.driver import open_system
from actors._runtime.system import error_payload, reply
from actors._wire.endpoint import Endpoint, Handler
from actors._wire.protocol import ASK, CALL, CALL_TELL, ERROR, REPLY, STOP, TELL

log = logging.getLogger(__name__)

STORE_CAPACITY = "64M"      # the fixture's store: small, as a test needs, and quick to make
LEAK_TIMEOUT = 10.0         # seconds the fixture gives a stopped system's processes to be gone

_NOTHING = object()


class Probe:
    """A stand-in actor for tests, living in the test's process: pass `probe.ref` to the actors under test, then
    `await probe.expect(message)`.

    It records every message told or asked to it, in order (`probe.messages`); an ask is answered with
    `answer(message)` (None without it). A method call through `ref.proxy` is recorded as `(method, args, kwargs)`.
    It is not registered by name: give its ref to the actors that should talk to it. It ends with its system, or at
    `close()`.
    """

    def __init__(self, system, name: str = "probe", *, answer=None):
        if getattr(system, "nursery", None) is None:
            raise ActorsError("a Probe needs the driver's system, open (actors.open_system, actors.run or the "
                              "actor_system fixture)")
        self.system = system
        self.name = name
        self.answer = answer
        self.messages: list = []
        self._next = 0                  # the first message `expect` has not given out yet
        self.closed = False
        self._arrived = trio.Event()
        probe_id = next(system._ids)    # from the actors' ids: refs to it are told apart from theirs
        self.ref = ActorRef(probe_id, name)
        system.endpoint.names[probe_id] = name
        self.endpoint = Endpoint(probe_id, system.transport, system.store._arena, _ProbeHandler(self),
                                 mailbox_size=system.mailbox_size, names=system.endpoint.names)
        self.endpoint.start_handling()
        self._scope = trio.CancelScope()
        system.nursery.start_soon(self._serve)      # its socket listens already: nothing sent meanwhile is lost

    async def _serve(self) -> None:
        try:
            with self._scope:
                await self.endpoint.serve()
        finally:
            self.endpoint.close()
            self.system.transport.mark_gone(self.ref.id)

    def close(self) -> None:
        """Stop receiving, at once: what arrives from now on is not recorded, and senders learn that the probe
        stopped as they learn it of an actor (the next send that finds its connection closed raises
        ActorStoppedError)."""
        self.closed = True
        self._scope.cancel()

    def _record(self, message) -> None:
        self.messages.append(message)
        self._arrived.set()
        self._arrived = trio.Event()

    async def expect(self, message=_NOTHING, *, timeout: float = 5.0):
        """The next message the probe received that no `expect` has returned yet, waiting up to `timeout`
        seconds for it. AssertionError if none arrives in time, or if it is not equal to `message` (when given)."""
        with trio.move_on_after(timeout):
            while self._next >= len(self.messages):
                await self._arrived.wait()
        if self._next >= len(self.messages):
            raise AssertionError(f"probe {self.name!r} received no message within {timeout:g} s"
                                 + (f" (it expected {message!r})" if message is not _NOTHING else "")
                                 + f"; all it received: {self.messages!r}")
        got = self.messages[self._next]
        self._next += 1
        if message is not _NOTHING and not got == message:
            raise AssertionError(f"probe {self.name!r} expected {message!r}, but received {got!r}")
        return got

    def __repr__(self):
        return f"<Probe {self.name!r} #{self.ref.id}: {len(self.messages)} message(s)>"


class _ProbeHandler(Handler):
    def __init__(self, probe: Probe):
        self.probe = probe

    async def handle(self, off, kind, src, call) -> bool:
        probe = self.probe
        ep = probe.endpoint
        system = probe.system
        if kind == STOP or probe.closed:
            ep.arena.decref_id(off)
            return True
        try:
            payload = ep.arena.read(off, True)
            message = system.incoming(payload) if kind in (TELL, ASK) else tuple(payload)
            probe._record(message)
            result = probe.answer(message) if probe.answer is not None and kind in (ASK, CALL) else None
        except Exception as exc:
            if kind in (ASK, CALL):
                await reply(ep, src, ERROR, error_payload(exc), call)
            else:
                log.error("probe %r could not take a message from %s: %s", probe.name, ep.describe(src), exc)
            return False
        if kind == ASK:
            await reply(ep, src, REPLY, system.outgoing(result), call)
        elif kind == CALL:
            await reply(ep, src, REPLY, result, call)
        elif kind not in (TELL, CALL_TELL):
            log.warning("probe %r: dropped a record of kind %d from %s", probe.name, kind, ep.describe(src))
        return False


async def logged(caplog, text: str, *, level: int | None = None, timeout: float = 5.0) -> logging.LogRecord:
    """The first record in `caplog` whose message contains `text` (and of `level`, if given), waiting up to
    `timeout` seconds for it: a record an actor logs reaches the driver's logging, where caplog sees it, on the
    actor's own connection, so it may arrive after the answer to an ask that followed it. AssertionError if none
    does."""
    system = _ref._system
    deadline = trio.current_time() + timeout
    while True:
        for record in caplog.records:
            if text in record.getMessage() and (level is None or record.levelno == level):
                return record
        if system is None or trio.current_time() >= deadline:
            seen = [r.getMessage() for r in caplog.records][-10:]
            raise AssertionError(f"no log record containing {text!r} within {timeout:g} s; the last ones: {seen}")
        with trio.move_on_at(deadline):
            await system.actor_logged.wait()


# -- the pytest plugin --------------------------------------------------------------------------------------------

def _mapping(segment: str) -> list[int]:
    """The processes (of this user, other than this one) that still map `segment`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                if segment in f.read():
                    found.append(int(entry))
        except OSError:
            continue        # gone meanwhile, or not ours to read
    return found


async def leaks(segment: str, timeout: float = LEAK_TIMEOUT) -> list[str]:
    """What a closed system left behind: its store's segment in /dev/shm, and processes still mapping the store
    (its actors, and anything they forked). A process killed a moment ago may take a moment to go: wait for that."""
    deadline = trio.current_time() + timeout
    while True:
        found = []
        if os.path.exists(os.path.join("/dev/shm", segment)):
            found.append(f"shared memory segment /dev/shm/{segment}")
        found += [f"process {pid} ({_cmdline(pid)})" for pid in _mapping(segment)]
        if not found or trio.current_time() >= deadline:
            return found
        await trio.sleep(0.05)      # polling /proc for processes to end, with a deadline


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "gone"


@pytest.fixture
async def actor_system():
    """A system for one async test (pytest-trio), with a 64 MiB store; stopped when the test ends. The test fails
    if the system leaves shared memory or processes behind."""
    async with open_system(store_capacity=STORE_CAPACITY) as system:
        segment = system.store.name
        yield system
    left = await leaks(segment)
    if left:
        pytest.fail("the actor system leaked: " + "; ".join(left))
