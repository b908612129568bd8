"""An actor's process: bootstrap (registry, store, output prefixing), then its trio loop handling messages."""
from __future__ import annotations

import logging
import os
import sys
import threading
import traceback

import cloudpickle
import trio

from _fastser import _codec
from actors import _actor, _output, _store
from actors import _codec as _public_codec
from actors import _mailbox as mb
from actors._exceptions import DecodeError, UnknownClassError
from actors import _persist
from actors._system import System, _reply, error_payload

log = logging.getLogger("actors")
_persist_none = object()      # "no snapshot": construct with __init__


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
                    _output.write_lines(target, [prefix + line + b"\n" for line in lines])
                if pending:
                    _output.write_lines(target, [prefix + pending + b"\n"])

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
    except BaseException:
        traceback.print_exc()       # while stderr still reaches the terminal
        return 1
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
    system.me = _actor.ActorRef(cfg["id"], cfg["name"], cfg["options"]["persistent"])
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
            journal = None
            try:
                if cfg["options"]["persistent"]:
                    actor, journal = await _recover(cfg, system)
                else:
                    actor = _construct(cfg, system)
                await actor.on_start()
            except Exception as exc:
                await endpoint.send(0, mb.SYSTEM_TELL, ("ready", cfg["id"], error_payload(exc)))
                await _drain(endpoint)
                status = 1
            if actor is not None and status == 0:
                await endpoint.send(0, mb.SYSTEM_TELL, ("ready", cfg["id"], None))
                endpoint.flush_all()
                await _serve(system, actor, cfg, journal)
                try:
                    await actor.on_stop()
                except Exception:
                    log.exception("actor %r: on_stop raised", cfg["name"])
                await _drain(endpoint)
            nursery.cancel_scope.cancel()
    finally:
        _public_codec.on_register = None
        endpoint.close()
        if journal is not None:
            journal.close()
    return status


def _construct(cfg: dict, system: System, state=_persist_none):
    cls = cfg["cls"]
    actor = cls.__new__(cls)
    actor.system = system
    actor.ref = _actor.ActorRef(cfg["id"], cfg["name"], cfg["options"]["persistent"])
    if state is _persist_none:
        actor.__init__(*cfg["args"], **cfg["kwargs"])
    elif _has_own(cls, "__setstate__"):
        actor.__setstate__(state)
    else:
        actor.__dict__.update(state)
    return actor


def _has_own(cls, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(object, name, None)


def _state_of(actor) -> dict:
    if _has_own(type(actor), "__getstate__"):
        return actor.__getstate__()
    return {k: v for k, v in vars(actor).items() if k not in ("system", "ref")}


async def _recover(cfg: dict, system: System):
    """A persistent actor: its latest snapshot (or its constructor), then the journal replayed after it."""
    opts = cfg["options"]
    if not cfg["resilience_dir"]:
        raise _persist.PersistenceError(
            f"actor {cfg['name']!r} is persistent but the system has no resilience directory; run with "
            f"`actors run --resilience-dir DIR` or actors.run(main, resilience_dir=DIR)")
    journal = _persist.Journal(cfg["resilience_dir"], cfg["name"], fsync=opts["fsync"],
                               interval=opts["fsync_interval"], serialize=cfg["serialize"],
                               deserialize=cfg["deserialize"])
    restored, state, replay = journal.recover()
    actor = _construct(cfg, system, state if restored else _persist_none)
    incoming = system.incoming
    for kind, message in replay:
        try:
            msg = _codec.loads(message)
            if kind in (mb.TELL, mb.ASK):
                await actor.receive(incoming(msg))
            elif kind in (mb.CALL, mb.CALL_TELL):
                method, args, kwargs = msg
                await _method(actor, method)(*args, **kwargs)
        except Exception as exc:
            log.error("actor %r: replaying a journaled message raised (skipped): %r", cfg["name"], exc)
    if replay or restored:
        log.info("actor %r recovered: %s, %d journaled message(s) replayed", cfg["name"],
                 "from its snapshot" if restored else "with no snapshot", len(replay))
    return actor, journal


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


async def _serve(system: System, actor, cfg: dict, journal) -> None:
    """Handle messages, one at a time and in order per sender, until told to stop."""
    name = cfg["name"]
    policy = cfg["options"]["on_error"]
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
                await _failed(ep, name, kind, src, call, exc)
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
        _apply_error_policy(ep, cfg, exc, journal)

    ep.on_handler_error = lambda exc: _apply_error_policy(ep, cfg, exc, journal)
    if journal is not None:
        _persist_hooks(ep, actor, cfg, journal)
    if system.deserialize is None:
        ep.fast_tell = receive
        ep.on_tell_error = on_tell_error
    ep.install(handle)
    await ep.stopped.wait()


async def _failed(ep, name, kind, src, call, exc) -> None:
    if kind in (mb.ASK, mb.CALL):
        await _reply(ep, src, mb.ERROR, error_payload(exc), call, flush=False)
    else:
        log.error("actor %r failed handling a message from %s", name, ep.describe(src), exc_info=exc)
    if ep.on_handler_error is not None and not isinstance(exc, DecodeError):
        ep.on_handler_error(exc)


def _apply_error_policy(ep: mb.Endpoint, cfg: dict, exc: BaseException, journal) -> None:
    """A handler raised: "resume" goes on; "restart" ends the process as failed (its supervisor decides);
    "stop" stops the actor for good."""
    policy = cfg["options"]["on_error"]
    if policy == "resume":
        return
    reason = f"{type(exc).__qualname__}: {exc}"
    if policy == "stop":
        ep.post_nowait(0, mb.SYSTEM_TELL, ("stopping", cfg["id"], reason))
        ep.flush_all()
        ep.stop_receiving()
        return
    try:
        ep.post_nowait(0, mb.SYSTEM_TELL, ("failure", cfg["id"], reason))
        ep.flush_all()
    except Exception:
        pass
    if journal is not None:
        journal.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(70)


def _persist_hooks(ep: mb.Endpoint, actor, cfg: dict, journal) -> None:
    """Journal each batch before it is handled (dropping what was already journaled), ack it once durable, and
    snapshot the state every `snapshot_every` messages."""
    arena = ep.arena
    opts = cfg["options"]
    every = opts["snapshot_every"]
    policy = opts["fsync"]

    framed = bytearray()

    def journal_batch(batch, epoch):
        if policy == "always":          # each message durable on its own, before the next is journaled
            keep = []
            ack = 0
            for rec in batch:
                framed.clear()
                kept, seq, acked = arena.journal_records([rec], epoch, journal.seen.get(epoch, 0) if epoch else 0,
                                                         journal.seq, framed)
                journal.append_framed(framed, seq, epoch, acked, seq - journal.seq)
                journal.sync()
                keep += kept
                ack = max(ack, acked)
            return keep, ack
        framed.clear()
        keep, seq, ack = arena.journal_records(batch, epoch, journal.seen.get(epoch, 0) if epoch else 0,
                                               journal.seq, framed)
        journal.append_framed(framed, seq, epoch, ack, seq - journal.seq)
        if policy == "interval":
            journal.flush()             # in the OS: safe from a process crash; fsynced every interval
            return keep, ack
        journal.sync()
        return keep, ack

    def after_batch():
        if journal.since_snapshot >= every:
            try:
                journal.write_snapshot(_state_of(actor))
            except Exception as exc:
                log.error("actor %r: cannot write a snapshot (the journal keeps everything): %s",
                          cfg["name"], exc)
                journal.since_snapshot = 0

    async def sync_every_interval():
        while True:
            await trio.sleep(opts["fsync_interval"])
            journal.sync()

    ep.journal_batch = journal_batch
    ep.after_batch = after_batch
    if policy == "interval":
        ep.nursery.start_soon(sync_every_interval)


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
