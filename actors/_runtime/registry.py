"""What the driver knows of the actors it runs (by id, name and pid), and of the classes registered after startup
(which actors fetch from it when they first meet one)."""
from __future__ import annotations

import cloudpickle
import trio

from _fastser import _codec
from actors._exceptions import ActorNotFoundError
from actors._ref import ActorRef


class ActorInfo:
    """One actor as the driver tracks it, across its restarts (same id and name)."""

    def __init__(self, actor_id: int, name: str, cls, options: dict, payload: bytes):
        self.id = actor_id
        self.name = name
        self.cls = cls
        self.options = options
        self.payload = payload          # kept, to start it again
        self.pid = 0
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.error = None
        self.returncode = None
        self.stopping = False
        self.restarts: list[float] = []  # when, within the restart window
        self.restart_count = 0              # since it was spawned
        self.started = False            # its on_start finished: an exit now is a failure, not a failed spawn
        self.last_failure = None
        self.watchers: dict[int, str] = {}
        self.restarting = False

    def ref(self) -> ActorRef:
        return ActorRef(self.id, self.name, self.options["persistent"])


class Registry:
    """The driver's tables (a part of `Driver`, kept in its own room): `actors`, `by_name`, `by_pid`."""

    async def _op_lookup(self, name: str) -> ActorRef:
        actor_id = self.by_name.get(name)
        if actor_id is None:
            raise ActorNotFoundError(f"no running actor is named {name!r}")
        return self.actors[actor_id].ref()

    async def _op_register(self, pickled: bytes) -> None:
        _codec.default_registry.add_entries([cloudpickle.loads(pickled)])

    async def _op_registry(self, code: int):
        # A registration sent by the class's owner may still be on its way: give it a moment.
        with trio.move_on_after(2):
            while True:
                entry = _codec.default_registry.lookup_code(code)
                if entry is not None:
                    return cloudpickle.dumps(entry)
                await trio.sleep(0.01)     # polling the registry, with a deadline (no event to await)
        return None

    async def pull_class(self, code: int) -> bool:
        return await self._op_registry(code) is not None
