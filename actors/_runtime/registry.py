"""What the driver knows of the actors it runs (by id, name and pid), and of the classes registered after startup
(which actors fetch from it when they first meet one)."""
from __future__ import annotations

import dataclasses
import os
import signal

import cloudpickle
import trio

from _fastser import _codec
from actors._exceptions import ActorNotFoundError
from actors._ref import ActorRef


def how_it_ended(code: int) -> str:
    """A process's exit status as the logs and errors say it: "exit code 3", "killed by SIGKILL"."""
    return f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"


class ActorInfo:
    """One actor as the driver tracks it, across its restarts (same id and name)."""

    def __init__(self, actor_id: int, name: str, cls, options: dict, payload: bytes):
        self.id = actor_id
        self.name = name
        self.cls = cls
        self.options = options
        self.payload = payload          # kept, to start it again
        self.pid = 0
        self.ended_pid = 0              # the process of its last incarnation whose exit was decided
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.error = None
        self.returncode = None
        self.stopping = False
        self.restarts: list[float] = []  # when, within the restart window
        self.restart_count = 0              # since it was spawned
        self.started = False            # its on_start finished: an exit now is a failure, not a failed spawn
        self.last_failure = None
        self.exit_reason = None         # how its process last ended ("exit code 3", "killed by SIGSEGV"), and when
        self.exit_time = None
        self.watchers: dict[int, str] = {}
        self.restarting = False
        self.owner = None               # the cluster node it was spawned for, when another node spawned it
        self.claim = None               # the revision of its name's key in etcd, in a cluster

    def ref(self) -> ActorRef:
        return ActorRef(self.id, self.name, self.options["persistent"])


class Registry:
    """The driver's tables (a part of `Driver`, kept in its own room): `actors`, `by_name`, `by_pid`."""

    async def _op_lookup(self, name: str) -> ActorRef:
        actor_id = self.by_name.get(name)
        if actor_id is None:
            if self.cluster is not None:
                return await self.cluster.lookup(name)
            raise ActorNotFoundError(f"no running actor is named {name!r}")
        return self.actors[actor_id].ref()

    async def _op_register(self, pickled: bytes) -> None:
        entry = cloudpickle.loads(pickled)
        _codec.default_registry.add_entries([entry])
        if self.cluster is not None:
            await self.cluster.publish_classes([entry])

    async def _op_registry(self, code: int):
        # A registration sent by the class's owner (here, or on another node through etcd) may still be on its
        # way: give it a moment.
        with trio.move_on_after(2):
            while True:
                entry = _codec.default_registry.lookup_code(code)
                if entry is not None:
                    return cloudpickle.dumps(entry)
                if self.cluster is not None:
                    pickled = await self.cluster.fetch_class(code)
                    if pickled is not None:
                        _codec.default_registry.add_entries([cloudpickle.loads(pickled)])
                        return pickled
                await trio.sleep(0.01 if self.cluster is None else 0.05)     # polling, with a deadline
        return None

    async def _op_nodes(self) -> list[tuple]:
        if self.cluster is None:
            return [("local", {}, "", len(self.actors), os.cpu_count() or 1, True)]
        return [dataclasses.astuple(node) for node in self.cluster.nodes()]

    async def pull_class(self, code: int) -> bool:
        return await self._op_registry(code) is not None
