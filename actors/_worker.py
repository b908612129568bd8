"""An actor's process: bootstrap (registry, store, output prefixing), then its trio loop handling messages."""
from __future__ import annotations

import logging
import os
import sys
import threading

import cloudpickle
import trio

from _fastser import _codec
from actors import _actor, _store
from actors import _codec as _public_codec
from actors import _mailbox as mb
from actors._exceptions import DecodeError, UnknownClassError
from actors._system import System, _reply, error_payload

log = logging.getLogger("actors")


def _prefix_output(name: str) -> list[threading.Thread]:
    """Send this process's stdout and stderr (Python's and C's alike) through pipes that prefix each line with the
    actor's name, so one terminal shows every actor's lines apart."""
    pumps = []
    prefix = f"[{name}] ".encode()
    for fd in (1, 2):
        read_end, write_end = os.pipe()
        target = os.dup(fd)
        os.dup2(write_end, fd)
        os.close(write_end)

        def pump(read_end=read_end, target=target):
            with os.fdopen(read_end, "rb", buffering=0) as pipe:
                pending = b""
                while True:
                    chunk = pipe.read(65536)
                    if not chunk:
                        break
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    if lines:
                        os.write(target, b"".join(prefix + line + b"\n" for line in lines))
                if pending:
                    os.write(target, prefix + pending + b"\n")

        thread = threading.Thread(target=pump, name=f"output-{fd}", daemon=True)
        thread.start()
        pumps.append(thread)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    return pumps


def main(payload: bytes) -> int:
    """Run one actor; the process's exit code."""
    cfg = cloudpickle.loads(payload)
    if cfg["app"] is not None and cfg["app"][0] not in sys.path:
        sys.path.insert(0, cfg["app"][0])
    pumps = _prefix_output(cfg["name"])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import numpy
        numpy.random.seed()         # forked from one server: without this every actor draws the same numbers
    except ImportError:
        pass
    try:
        return trio.run(_actor_main, cfg)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.close(1)
        os.close(2)
        for pump in pumps:
            pump.join(2)


async def _actor_main(cfg: dict) -> int:
    _codec.default_registry.add_entries(cfg["registry"])
    store = _store.ObjectStore.attach(cfg["store"])
    _store.set_current_store(store)
    store._arena.defer_frees = True     # freed at the end of each batch, under one lock acquisition
    endpoint = mb.Endpoint(cfg["id"], cfg["rundir"], store._arena, mailbox_size=cfg["mailbox_size"])
    system = System(endpoint, store, cfg["serialize"], cfg["deserialize"])
    _actor._system = system
    status = 0
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.serve)

            def on_death(peer: int) -> None:
                if peer == 0:           # the system is gone: nothing left to serve
                    nursery.cancel_scope.cancel()

            endpoint.on_death = on_death
            endpoint._link(0)

            def report_late_registration(entry) -> None:
                try:
                    endpoint.post_nowait(0, mb.SYSTEM_TELL, ("register", cloudpickle.dumps(entry)))
                except Exception as exc:
                    log.warning("could not report the registration of %s to the system: %s", entry.cls, exc)

            _public_codec.on_register = report_late_registration
            actor = None
            try:
                actor = _construct(cfg, system)
                await actor.on_start()
            except Exception as exc:
                await endpoint.send(0, mb.SYSTEM_TELL, ("ready", cfg["id"], error_payload(exc)))
                await _drain(endpoint)
                status = 1
            if actor is not None and status == 0:
                await endpoint.send(0, mb.SYSTEM_TELL, ("ready", cfg["id"], None))
                endpoint.flush_all()
                await _serve(system, actor, cfg["name"])
                try:
                    await actor.on_stop()
                except Exception:
                    log.exception("actor %r: on_stop raised", cfg["name"])
                await _drain(endpoint)
            nursery.cancel_scope.cancel()
    finally:
        _public_codec.on_register = None
        endpoint.close()
    return status


def _construct(cfg: dict, system: System):
    cls = cfg["cls"]
    actor = cls.__new__(cls)
    actor.system = system
    actor.ref = _actor.ActorRef(cfg["id"], cfg["name"])
    actor.__init__(*cfg["args"], **cfg["kwargs"])
    return actor


async def _drain(endpoint: mb.Endpoint, timeout: float = 5.0) -> None:
    """Give queued outgoing records a chance to leave before the process ends."""
    with trio.move_on_after(timeout):
        while any(link.out and not link.dead for link in endpoint.links.values()):
            endpoint.flush_all()
            await trio.sleep(0.001)


def _method(actor, name: str):
    fn = getattr(type(actor), name, None) if not name.startswith("_") else None
    if fn is None or not callable(fn) or name in ("on_start", "on_stop"):
        raise AttributeError(f"{type(actor).__qualname__} has no public method {name!r}")
    return getattr(actor, name)


async def _serve(system: System, actor, name: str) -> None:
    """Handle messages, one at a time and in order per sender, until told to stop."""
    ep = system.endpoint
    arena = ep.arena
    receive = actor.receive
    incoming = system.incoming
    outgoing = system.outgoing

    async def handle(off, kind, src, call):
        if kind == mb.STOP:
            arena.decref_id(off)
            return True
        try:
            msg = arena.read(off, True)
        except UnknownClassError as exc:
            msg = await _read_after_pull(system, off, exc)
            if msg is _FAILED:
                return False
        except DecodeError as exc:
            arena.decref_id(off)
            await _failed(ep, name, kind, src, call, exc)
            return False
        try:
            if kind == mb.TELL:
                await receive(incoming(msg))
            elif kind == mb.ASK:
                result = await receive(incoming(msg))
                await _reply(ep, src, mb.REPLY, outgoing(result), call, flush=False)
            elif kind == mb.CALL or kind == mb.CALL_TELL:
                method, args, kwargs = msg
                result = await _method(actor, method)(*args, **kwargs)
                if kind == mb.CALL:
                    await _reply(ep, src, mb.REPLY, result, call, flush=False)
            else:
                log.warning("actor %r: dropped a record of unknown kind %d", name, kind)
        except Exception as exc:
            await _failed(ep, name, kind, src, call, exc)
        return False

    def on_tell_error(rec, exc):
        log.error("actor %r failed handling a message from %s", name, ep.describe(rec[2]), exc_info=exc)

    ep.handle = handle
    if system.deserialize is None:
        ep.fast_tell = receive
        ep.on_tell_error = on_tell_error
    await ep.stopped.wait()


async def _failed(ep, name, kind, src, call, exc) -> None:
    if kind in (mb.ASK, mb.CALL):
        await _reply(ep, src, mb.ERROR, error_payload(exc), call, flush=False)
    else:
        log.error("actor %r failed handling a message from %s", name, ep.describe(src), exc_info=exc)


_FAILED = object()


async def _read_after_pull(system: System, off: int, exc: UnknownClassError):
    arena = system.endpoint.arena
    try:
        if await system.pull_class(exc.code):
            return arena.read(off, True)
    except Exception as again:
        exc = again
    arena.decref_id(off)
    log.error("dropped a message: %s", exc)
    return _FAILED
