"""What a running system is doing: `system.status()` in the driver, and the status socket that `actors status`
reads.

The per-actor figures come from the actors themselves: the driver sends each one a STATUS record on a connection of
its own, and the actor's reader for that connection answers at once from what its endpoint keeps anyway (a count of
records, added to per batch, and how far the handler loop's iterator has got; its queue of batches; the bytes unread
in its sockets). So the message path
does no extra work per message, the answer does not wait behind the mailbox it measures, and an actor awaiting in a
long handler still answers. One that does not within `ASK_TIMEOUT` (computing without awaiting) is reported without
those figures. The rest (pid, state, restarts, unacknowledged tells, the store) is the driver's own.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket

import trio

from actors._runtime.supervise import DEATH_CAUSE_WAIT
from actors._wire.protocol import RECORD_SIZE

log = logging.getLogger(__name__)

SOCKET = "status.sock"      # in the run directory (0700), mode 0600: only the owner reads a system's status
ASK_TIMEOUT = 0.5           # seconds an actor gets to answer (it answers between two handlers)
ENDED_KEPT = 32             # actors that stopped for good, listed as stopped: the most recent ones


@dataclasses.dataclass
class ActorStatus:
    """One actor, as `system.status()` sees it. `handled` and `mailbox` are None when the actor did not answer in
    time (busy in a handler, or starting, restarting or stopped)."""
    name: str
    id: int
    cls: str
    pid: int
    state: str              # starting, running, restarting, stopping, stopped
    restarts: int           # since it was spawned
    handled: int | None     # records it has handled (the one in progress included) since its process started
    mailbox: int | None     # records waiting for it: its batch's rest, its queue, its sockets, the driver's outbox
    unacked: int            # tells the driver holds for it until it journals them (persistent actors)


@dataclasses.dataclass
class SystemStatus:
    """`system.status()`: the system's driver, its actors, and its store's use (bytes)."""
    pid: int
    rundir: str
    actors: list[ActorStatus]
    store_used: int
    store_high_water: int
    store_capacity: int
    store_objects: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SystemStatus:
        data = json.loads(text)
        data["actors"] = [ActorStatus(**a) for a in data["actors"]]
        return cls(**data)


class Status:
    """The status part of `Driver` (kept in its own room)."""

    def _state(self, info) -> str:
        if info.restarting or (info.exited.is_set() and info.id in self.actors and not info.stopping):
            return "restarting"
        if info.stopping:
            return "stopping"
        return "running" if info.started else "starting"

    async def _figures(self, info) -> tuple[int | None, int | None]:
        if not info.started or info.exited.is_set() or info.restarting:
            return None, None
        answer = await self.endpoint.peer_status(info.id, ASK_TIMEOUT)
        if answer is False:
            # nothing listens for it: its process has just ended, and the news of its exit is on its way here
            # (`death_cause`); wait for that rather than show a dead actor as running
            with trio.move_on_after(DEATH_CAUSE_WAIT):
                await info.exited.wait()
            return None, None
        if answer is None:
            return None, None
        handled, waiting = answer
        link = self.endpoint.links.get(info.id)
        return handled, waiting + (len(link.out) // RECORD_SIZE if link is not None else 0)

    async def status(self) -> SystemStatus:
        """What every actor of the system is doing, and the store's use: see `SystemStatus` and `ActorStatus`."""
        self.endpoint.flush_all()     # what can leave now is counted on the actor's side, not twice
        infos = list(self.actors.values())
        figures = {}

        async def ask(info):
            figures[info.id] = await self._figures(info)

        async with trio.open_nursery() as nursery:      # every actor at once: a busy one delays no other
            for info in infos:
                nursery.start_soon(ask, info)
        rows = []
        for info in infos:
            if self.actors.get(info.id) is not info:
                continue                # it ended for good meanwhile: listed with the ended ones below
            link = self.endpoint.links.get(info.id)
            handled, mailbox = figures[info.id]
            rows.append(ActorStatus(info.name, info.id, info.cls.__qualname__, info.pid, self._state(info),
                                    info.restart_count, handled, mailbox, len(link.unacked) if link else 0))
        for info in self.ended:
            rows.append(ActorStatus(info.name, info.id, info.cls.__qualname__, info.pid, "stopped",
                                    info.restart_count, None, None, 0))
        rows.sort(key=lambda row: row.id)
        st = self.store.stats()
        return SystemStatus(os.getpid(), self.rundir, rows, st["used"], st["high_water"], st["capacity"],
                            st["objects"])

    async def _op_status(self) -> str:
        return (await self.status()).to_json()

    async def serve_status(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Answer each connection to the status socket with the system's status, as JSON, then close it."""
        path = os.path.join(self.rundir, SOCKET)
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with listener:
            await listener.bind(path)
            os.chmod(path, 0o600)
            listener.listen(16)
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(self._answer_status, conn)

    async def _answer_status(self, conn) -> None:
        with conn:
            try:
                data = (await self.status()).to_json().encode()
                with trio.move_on_after(5):
                    while data:
                        data = data[await conn.send(data):]
            except OSError as exc:
                log.debug("a status reader went away: %s", exc)
