"""The running system as user code sees it: `System` (spawn, look up, watch and stop actors, asks), the same API in
the driver and inside actors; inside an actor, requests go to the driver (endpoint 0) as SYSTEM records.
"""
from __future__ import annotations

import inspect
import threading
import traceback

import cloudpickle
import trio

from _fastser import _codec
from actors import _ref, _store
from actors._actor import Actor, actor_options
from actors._exceptions import (
    ActorNotFoundError,
    ActorsError,
    ActorStoppedError,
    AskTimeoutError,
    SpawnError,
    UnknownClassError,
)
from actors._ref import ActorRef, check_timeout, remote_error
from actors._runtime.cluster.node import NodeInfo
from actors._runtime.status import SystemStatus
from actors._wire.endpoint import Endpoint
from actors._wire.protocol import ASK, ERROR, SYSTEM, SystemOp

# Errors a system request can raise, re-raised as themselves on the asking side.
_SYSTEM_ERRORS = {cls.__name__: cls for cls in (ActorNotFoundError, ActorsError, ActorStoppedError, SpawnError)}


def error_payload(exc: BaseException) -> tuple:
    return (type(exc).__qualname__, str(exc), "".join(traceback.format_exception(exc)))


def _identity(obj):
    return obj


class System:
    """What `main(system)` and `self.system` give: spawn, look up and stop actors.

    The same API in the driver and inside actors; inside an actor, requests go to the driver.
    """

    def __init__(self, endpoint: Endpoint, store: _store.ObjectStore, serialize=None, deserialize=None):
        self.endpoint = endpoint
        self.store = store
        self.serialize = serialize
        self.deserialize = deserialize
        if serialize is None:
            self.outgoing = _identity
            self.incoming = _identity
        else:
            self.outgoing = serialize
            self.incoming = deserialize

    def install(self) -> None:
        """Make this the process's current system: the one its ActorRefs talk through. Called in its trio thread,
        which `tell_nowait` from other threads hands its sends to."""
        self.thread = threading.get_ident()
        self.token = trio.lowlevel.current_trio_token()
        _ref.set_current_system(self)

    @staticmethod
    def uninstall() -> None:
        _ref.set_current_system(None)

    # -- the public API ------------------------------------------------------------------------------------------

    async def spawn(self, cls, *args, name: str | None = None, options: dict | None = None,
                    node: str | None = None, labels: dict | None = None, **kwargs) -> ActorRef:
        """Start `cls(*args, **kwargs)` in a new process; its ActorRef once its `on_start` has finished.

        `options` overrides the class's supervision and persistence settings for this actor (restart,
        max_restarts, restart_window, restart_backoff, on_error, persistent, snapshot_every, fsync,
        fsync_interval; see `Actor`). In a cluster, `node` names the node to run it on, and `labels` picks among
        the nodes that carry them; otherwise it goes to the least-loaded node (see docs/cluster.md).
        """
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise TypeError(f"spawn() takes an Actor subclass, not {cls!r}")
        for hook in ("receive", "on_start", "on_stop"):
            if not inspect.iscoroutinefunction(inspect.unwrap(getattr(cls, hook))):     # (a decorated one, too)
                # (else every message would fail in the actor, with "object int can't be used in 'await'")
                raise TypeError(f"spawn({cls.__qualname__}): its `{hook}` is not an async function; define it as "
                                f"`async def {hook}(self{', message' if hook == 'receive' else ''})`")
        if name is not None and type(name) is not str:
            raise TypeError(f"spawn(name={name!r}): an actor's name is a str, not {type(name).__qualname__}")
        if name is not None and not (name and name.isprintable()):
            raise ValueError(f"spawn(name={name!r}): an actor's name must be printable and not empty: it names the "
                             f"actor in logs, and starts each line of its output")
        opts = actor_options(cls, options)
        if node is not None and type(node) is not str:
            raise TypeError(f"spawn(node={node!r}): a node's name is a str, not {type(node).__qualname__}")
        if labels is not None and not (isinstance(labels, dict) and all(
                type(k) is str and type(v) is str for k, v in labels.items())):
            raise TypeError(f"spawn(labels={labels!r}): labels are a dict of str to str")
        return await self._system_request(SystemOp.SPAWN, cloudpickle.dumps((cls, args, kwargs)), name, opts,
                                          node, labels)

    async def watch(self, ref: ActorRef, *, watcher: ActorRef | None = None) -> None:
        """Deliver `actors.Terminated(ref, reason, restarting)` to `watcher` (by default, the calling actor)
        when `ref` stops or crashes."""
        watcher = watcher if watcher is not None else getattr(self, "me", None)
        if watcher is None:
            raise ActorsError("watch() from the driver needs watcher=: an ActorRef to notify")
        await self._system_request(SystemOp.WATCH, ref.id, watcher.id, watcher.name)

    async def lookup(self, name: str) -> ActorRef:
        """The running actor named `name`; `ActorNotFoundError` if there is none."""
        return await self._system_request(SystemOp.LOOKUP, name)

    async def stop(self, ref: ActorRef, *, timeout: float = 5.0) -> None:
        """Stop an actor gracefully (it handles what it has received, then runs `on_stop`); kill it after
        `timeout` seconds."""
        if not isinstance(ref, ActorRef):
            raise TypeError(f"stop() takes the ActorRef of the actor to stop, not {ref!r}; look a name up first: "
                            f"await system.stop(await system.lookup(name))")
        check_timeout(timeout, "stop", optional=False)
        await self._system_request(SystemOp.STOP, ref.id, timeout)

    async def status(self) -> SystemStatus:
        """What every actor of the system is doing, and the store's use (from inside an actor, the driver is
        asked): see `actors._runtime.status.SystemStatus`. In a cluster, this node's actors."""
        return SystemStatus.from_json(await self._system_request(SystemOp.STATUS))

    async def nodes(self) -> list[NodeInfo]:
        """The live nodes of the cluster (a single `local` one when the system is not part of a cluster)."""
        return [NodeInfo(*fields) for fields in await self._system_request(SystemOp.NODES)]

    async def _system_request(self, op: SystemOp, *args):
        _ref.running_system(op.name.lower(), self)
        return await self._ask_driver(0, op, *args)

    async def _ask_driver(self, driver: int, op: SystemOp, *args):
        """Ask a driver (0: this machine's) to run a system operation; its result, or its error raised here."""
        kind, off = await self.endpoint.request(driver, SYSTEM, (int(op), *args))
        payload = self.endpoint.arena.read(off, True)
        if kind == ERROR:
            type_name, message, _tb = payload
            raise _SYSTEM_ERRORS.get(type_name, ActorsError)(message)
        return payload

    # -- asks ----------------------------------------------------------------------------------------------------

    async def ask(self, ref: ActorRef, kind: int, payload, timeout):
        ep = self.endpoint
        if ref.id not in ep.links:
            ep.introduce(ref.id, ref.name, ref.persistent)
        reply_kind, off = await ep.request(ref.id, kind, payload, timeout)
        if reply_kind is None:
            raise AskTimeoutError(f"actor {ref.name!r} did not answer within {timeout:g} s")
        try:
            result = ep.arena.read(off, True)
        except UnknownClassError as exc:
            if not await self.pull_class(exc.code):
                ep.arena.decref_id(off)
                raise
            result = ep.arena.read(off, True)
        if reply_kind == ERROR:
            raise remote_error(ref.name, result)
        return self.incoming(result) if kind == ASK else result

    async def pull_class(self, code: int) -> bool:
        """Fetch a class registered elsewhere after startup from the system; True if it is known now."""
        data = await self._system_request(SystemOp.REGISTRY, code)
        if data is None:
            return False
        _codec.default_registry.add_entries([cloudpickle.loads(data)])
        return True


async def reply(ep: Endpoint, dest: int, kind: int, payload, call: int, flush: bool = True) -> None:
    """Answer an ask. Inside a batch of handlers, the batch's end flushes (flush=False)."""
    try:
        await ep.send(dest, kind, payload, call, flush=True)
    except ActorStoppedError:
        pass            # the asker is gone
    except Exception as exc:
        # the result cannot travel (unencodable): the asker gets the reason instead of waiting for ever
        await ep.send(dest, ERROR, error_payload(exc), call, flush=True)
    if flush:
        ep.flush_all()
