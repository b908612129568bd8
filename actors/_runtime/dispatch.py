"""How an actor process handles what arrives: records to the actor's `receive` or methods, replies to asks, the
handler-error policy, and (for a persistent actor) journaling each batch and snapshotting its state.

`ActorHandler` is the endpoint's handler (`actors._wire.endpoint.Handler`) in an actor process.
"""
from __future__ import annotations

import logging
import os
import sys

import trio

from actors._exceptions import ActorsError, DecodeError, FencedError, UnknownClassError
from actors._wire.endpoint import Handler
from actors._wire.protocol import ASK, CALL, CALL_TELL, ERROR, REPLY, STOP, SYSTEM_TELL, TELL, SystemOp
from actors._runtime.system import error_payload, reply

log = logging.getLogger(__name__)

_FAILED = object()


def method_of(actor, name: str):
    """The public `async def` method `name` of `actor`, for a CALL; AttributeError for anything else."""
    fn = getattr(type(actor), name, None) if not name.startswith("_") else None
    if fn is None or not callable(fn) or name in ("on_start", "on_stop"):
        raise AttributeError(f"{type(actor).__qualname__} has no public method {name!r}")
    return getattr(actor, name)


def state_of(actor) -> dict:
    """What a snapshot of `actor` holds: its `__getstate__()`, or its fields but `system` and `ref`."""
    if has_own(type(actor), "__getstate__"):
        return actor.__getstate__()
    return {k: v for k, v in vars(actor).items() if k not in ("system", "ref")}


def has_own(cls, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(object, name, None)


class ActorHandler(Handler):
    """The endpoint's handler in an actor process. Made with the endpoint; `bind` gives it the actor once it is
    constructed (or recovered), before the endpoint starts handling."""

    def __init__(self, system, spec):
        self.system = system
        self.spec = spec
        self.name = spec.name
        self.scope: trio.CancelScope | None = None      # the process's scope, ended when the system is gone
        self.actor = None
        self.journal = None

    def on_death(self, peer: int) -> None:
        if peer == 0 and self.scope is not None:     # the system is gone: nothing left to serve
            self.scope.cancel()

    async def death_cause(self, peer: int) -> str | None:
        """Why `peer` ended, asked of the system (which reaps the actors), for an ask of this actor's it cut
        short; None if the system does not know (an actor of another node) or cannot be asked."""
        if peer == 0:
            return None
        try:
            return await self.system._system_request(SystemOp.DEATH_CAUSE, peer)
        except ActorsError:
            return None

    def bind(self, actor, journal) -> None:
        self.actor = actor
        self.journal = journal
        self.handle = self._make_handle()
        if self.system.deserialize is None:
            self.fast_tell = actor.receive          # tells go straight to it, with no wrapper
        if journal is not None:
            self._framed = bytearray()
            self.journal_batch = self._journal_batch
            self.journal_durable = journal.durable
            self.after_batch = self._after_batch

    async def handle(self, off, kind, src, call) -> bool:
        """Replaced by `bind` with a closure over what it uses (it runs per record); nothing is handled before."""
        raise RuntimeError("ActorHandler.handle before bind()")

    def _make_handle(self):
        system = self.system
        ep = system.endpoint
        arena = ep.arena
        actor = self.actor
        receive = actor.receive
        incoming = system.incoming
        outgoing = system.outgoing
        name = self.name
        failed = self._failed

        async def handle(off, kind, src, call):
            if kind == STOP:
                arena.decref_id(off)
                return True
            try:
                msg = arena.read(off, True)
            except UnknownClassError as exc:
                msg = await self._read_after_pull(off, exc)
                if msg is _FAILED:
                    await failed(kind, src, call, exc)
                    return False
            except DecodeError as exc:
                arena.decref_id(off)
                await failed(kind, src, call, exc)
                return False
            try:
                if kind == TELL:
                    await receive(incoming(msg))
                elif kind == ASK:
                    result = await receive(incoming(msg))
                    await reply(ep, src, REPLY, outgoing(result), call, flush=False)
                elif kind == CALL or kind == CALL_TELL:
                    method, args, kwargs = msg
                    result = await method_of(actor, method)(*args, **kwargs)
                    if kind == CALL:
                        await reply(ep, src, REPLY, result, call, flush=False)
                else:
                    log.warning("actor %r: dropped a record of unknown kind %d", name, kind)
            except Exception as exc:
                await failed(kind, src, call, exc)
            return False

        return handle

    def on_tell_error(self, rec, exc) -> None:
        log.error("actor %r failed handling a message from %s", self.name, self.system.endpoint.describe(rec[2]),
                  exc_info=exc)
        self.on_handler_error(exc)

    async def _failed(self, kind, src, call, exc) -> None:
        ep = self.system.endpoint
        if kind in (ASK, CALL):
            await reply(ep, src, ERROR, error_payload(exc), call, flush=False)
        else:
            log.error("actor %r failed handling a message from %s", self.name, ep.describe(src), exc_info=exc)
        if not isinstance(exc, DecodeError):
            self.on_handler_error(exc)

    def on_handler_error(self, exc: BaseException) -> None:
        """A handler raised: "resume" goes on; "restart" ends the process as failed (its supervisor decides);
        "stop" stops the actor for good."""
        policy = self.spec.options["on_error"]
        if policy == "resume":
            return
        ep = self.system.endpoint
        reason = f"{type(exc).__qualname__}: {exc}"
        if policy == "stop":
            ep.post_nowait(0, SYSTEM_TELL, (int(SystemOp.STOPPING), self.spec.id, reason))
            ep.flush_all()
            ep.stop_receiving()
            return
        try:
            ep.post_nowait(0, SYSTEM_TELL, (int(SystemOp.FAILURE), self.spec.id, reason))
            ep.flush_all()
        except Exception:
            pass
        if self.journal is not None:
            self.journal.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(70)

    async def _read_after_pull(self, off: int, exc: UnknownClassError):
        arena = self.system.endpoint.arena
        try:
            if await self.system.pull_class(exc.code):
                return arena.read(off, True)
        except Exception as again:
            exc = again
        arena.decref_id(off)
        log.error("dropped a message: %s", exc)
        return _FAILED

    # -- a persistent actor --------------------------------------------------------------------------------------

    def _journal_batch(self, batch, epoch):
        # Journal each batch before it is handled (dropping what was already journaled); the endpoint waits for
        # `journal_durable`, then acks it.
        return self.journal.write_batch(self.system.endpoint.arena, batch, epoch, self._framed)

    def _after_batch(self) -> None:
        # Snapshot the state every `snapshot_every` messages.
        journal = self.journal
        if journal.since_snapshot >= self.spec.options["snapshot_every"]:
            try:
                journal.write_snapshot(state_of(self.actor))
            except FencedError:
                raise                   # replaced: this instance must stop, not go on from stale state
            except Exception as exc:
                log.error("actor %r: cannot write a snapshot (the journal keeps everything): %s", self.name, exc)
                journal.since_snapshot = 0

    async def sync_every_interval(self) -> None:
        """fsync="interval": make the journal durable every `fsync_interval` seconds."""
        interval = self.spec.options["fsync_interval"]
        while True:
            await trio.sleep(interval)     # a period, not synchronisation
            self.journal.sync()
