"""The running system: spawning, naming and stopping actors, asks, and `actors.run`.

The driver process (the one that called `actors.run`, or the `actors run` launcher) owns the store, the run
directory of sockets and the fork server; it is endpoint 0 and answers the actors' system requests (spawn, lookup,
stop, class registrations). Each actor process has a `System` that forwards those requests to it.
"""
from __future__ import annotations

import itertools
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback

import cloudpickle
import trio

from _fastser import _codec
from actors import _actor, _forkserver, _store
from actors import _mailbox as mb
from actors._actor import ActorRef
from actors._exceptions import (
    UnknownClassError,
    ActorNotFoundError,
    ActorsError,
    ActorStoppedError,
    AskTimeoutError,
    RemoteActorError,
    SpawnError,
)

log = logging.getLogger("actors")

# Errors a system request can raise, re-raised as themselves on the asking side.
_SYSTEM_ERRORS = {cls.__name__: cls for cls in (ActorNotFoundError, ActorsError, ActorStoppedError, SpawnError)}
PRELOAD = ["numpy", "trio", "cloudpickle", "actors", "actors._worker"]


# The fork server imports `actors` from the driver's sys.path, not from its working directory (which `python -c`
# would put first): a source checkout in the cwd must not shadow the installed, compiled package.
_FORKSERVER_MAIN = ("import pickle, sys; sys.path[:] = pickle.loads(bytes.fromhex(sys.argv[2]))['path']; "
                    "from actors._forkserver import main; main()")


def error_payload(exc: BaseException) -> tuple:
    return (type(exc).__qualname__, str(exc), "".join(traceback.format_exception(exc)))


class System:
    """What `main(system)` and `self.system` give: spawn, look up and stop actors.

    The same API in the driver and inside actors; inside an actor, requests go to the driver.
    """

    def __init__(self, endpoint: mb.Endpoint, store: _store.ObjectStore, serialize=None, deserialize=None):
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

    # -- the public API ------------------------------------------------------------------------------------------

    async def spawn(self, cls, *args, name: str | None = None, options: dict | None = None,
                    **kwargs) -> ActorRef:
        """Start `cls(*args, **kwargs)` in a new process; its ActorRef once its `on_start` has finished.

        `options` overrides the class's supervision and persistence settings for this actor (restart,
        max_restarts, restart_window, restart_backoff, on_error, persistent, snapshot_every, fsync,
        fsync_interval; see `Actor`).
        """
        if not (isinstance(cls, type) and issubclass(cls, _actor.Actor)):
            raise TypeError(f"spawn() takes an Actor subclass, not {cls!r}")
        opts = actor_options(cls, options)
        return await self._system_request("spawn", cloudpickle.dumps((cls, args, kwargs)), name, opts)

    async def watch(self, ref: ActorRef, *, watcher: ActorRef | None = None) -> None:
        """Deliver `actors.Terminated(ref, reason, restarting)` to `watcher` (by default, the calling actor)
        when `ref` stops or crashes."""
        watcher = watcher if watcher is not None else getattr(self, "me", None)
        if watcher is None:
            raise ActorsError("watch() from the driver needs watcher=: an ActorRef to notify")
        await self._system_request("watch", ref.id, watcher.id, watcher.name)

    async def lookup(self, name: str) -> ActorRef:
        """The running actor named `name`; `ActorNotFoundError` if there is none."""
        return await self._system_request("lookup", name)

    async def stop(self, ref: ActorRef, *, timeout: float = 5.0) -> None:
        """Stop an actor gracefully (it handles what it has received, then runs `on_stop`); kill it after
        `timeout` seconds."""
        await self._system_request("stop", ref.id, timeout)

    async def _system_request(self, op, *args):
        kind, off = await self.endpoint.request(0, mb.SYSTEM, (op, *args))
        payload = self.endpoint.arena.read(off, True)
        if kind == mb.ERROR:
            type_name, message, _tb = payload
            raise _SYSTEM_ERRORS.get(type_name, ActorsError)(message)
        return payload

    # -- asks ----------------------------------------------------------------------------------------------------

    async def ask(self, ref: ActorRef, kind: int, payload, timeout):
        ep = self.endpoint
        if ref.id not in ep.links:
            _actor._first_contact(ep, ref)
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
        if reply_kind == mb.ERROR:
            raise _actor.remote_error(ref.name, result)
        return self.incoming(result) if kind == mb.ASK else result

    async def pull_class(self, code: int) -> bool:
        """Fetch a class registered elsewhere after startup from the system; True if it is known now."""
        data = await self._system_request("registry", code)
        if data is None:
            return False
        _codec.default_registry.add_entries([cloudpickle.loads(data)])
        return True


def _identity(obj):
    return obj


OPTION_CHOICES = {"restart": ("never", "on-failure", "always"), "on_error": ("resume", "restart", "stop"),
                  "fsync": ("always", "group", "interval")}
OPTIONS = ("restart", "max_restarts", "restart_window", "restart_backoff", "on_error", "persistent",
           "snapshot_every", "fsync", "fsync_interval")


def actor_options(cls, overrides: dict | None) -> dict:
    """The class's supervision and persistence settings, with `overrides` applied and checked."""
    opts = {key: getattr(cls, key) for key in OPTIONS}
    for key, value in (overrides or {}).items():
        if key not in opts:
            raise ActorsError(f"unknown actor option {key!r}; the options are {', '.join(OPTIONS)}")
        opts[key] = value
    for key, choices in OPTION_CHOICES.items():
        if opts[key] not in choices:
            raise ActorsError(f"{key}={opts[key]!r} is not one of {', '.join(map(repr, choices))}")
    return opts


class Terminated:
    """The message `system.watch` delivers: the watched actor stopped (restarting False) or crashed."""

    def __init__(self, ref: ActorRef, reason: str, restarting: bool):
        self.ref = ref
        self.reason = reason
        self.restarting = restarting

    def __repr__(self):
        return f"Terminated({self.ref!r}, {self.reason!r}, restarting={self.restarting})"


_codec.register_class(Terminated)


class SupervisionError(ActorsError):
    """An actor failed more often than its restart intensity allows: the system stopped."""


class _ActorInfo:
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
        self.restarts: list[float] = []
        self.started = False            # its on_start finished: an exit now is a failure, not a failed spawn
        self.last_failure = None
        self.watchers: dict[int, str] = {}
        self.restarting = False

    def ref(self) -> ActorRef:
        return ActorRef(self.id, self.name, self.options["persistent"])


class Driver(System):
    """The system as seen from the driver process: it owns the store, the sockets' directory and the processes."""

    def __init__(self, *, store_capacity=None, mailbox_size: int = 4096, serialize=None, deserialize=None,
                 stop_timeout: float = 5.0, app: tuple[str, str] | None = None, resilience_dir=None):
        self.resilience_dir = os.path.abspath(resilience_dir) if resilience_dir else None
        self.fatal: BaseException | None = None
        self.main_scope = None
        self.mailbox_size = mailbox_size
        self.stop_timeout = stop_timeout
        self.app = app
        # 0700: only we can reach the sockets. Named after its owner, for `actors cleanup` after a crash.
        _store.cleanup_rundirs()
        self.rundir = tempfile.mkdtemp(prefix=f"actors.{os.getpid()}.{_store._start_time(os.getpid())}.")
        self.actors: dict[int, _ActorInfo] = {}
        self.by_name: dict[str, int] = {}
        self.by_pid: dict[int, _ActorInfo] = {}
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._spawned: dict[int, list] = {}
        self._early_exits: dict[int, int] = {}
        self._forkserver = None
        self._ctl = None
        store = _store.ObjectStore(store_capacity)
        _store.set_current_store(store)
        try:
            endpoint = mb.Endpoint(0, self.rundir, store._arena, mailbox_size=mailbox_size)
        except BaseException:
            store.close()
            raise
        super().__init__(endpoint, store, serialize, deserialize)

    # -- fork server ---------------------------------------------------------------------------------------------

    def start_forkserver(self) -> None:
        ours, theirs = socket.socketpair()
        spec = pickle.dumps({"preload": PRELOAD, "app": self.app, "path": sys.path, "argv": sys.argv}).hex()
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")     # one BLAS thread per actor: actors are the parallelism
        self._forkserver = subprocess.Popen(
            [sys.executable, "-c", _FORKSERVER_MAIN, str(theirs.fileno()), spec],
            pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self._ctl = ours

    async def _forkserver_events(self) -> None:
        ctl = trio.socket.from_stdlib_socket(self._ctl)
        buf = b""
        while True:
            data = await ctl.recv(65536)
            if not data:
                # the fork server is gone (it failed to import the app, say): no actor can start any more
                self.fail(ActorsError("the fork server that starts actor processes exited; see its error above"))
                for waiting in self._spawned.values():
                    waiting.append(0)
                    waiting[0].set()
                return
            buf += data
            while len(buf) >= 4:
                n = _forkserver.LEN.unpack_from(buf)[0]
                if len(buf) < 4 + n:
                    break
                msg = pickle.loads(buf[4:4 + n])
                buf = buf[4 + n:]
                if msg[0] == "spawned":
                    self._spawned[msg[1]].append(msg[2])
                    self._spawned[msg[1]][0].set()
                elif msg[0] == "exit":
                    if msg[1] in self.by_pid:
                        self._on_exit(msg[1], msg[2])
                    else:
                        self._early_exits[msg[1]] = msg[2]      # before we handled its "spawned": see _start

    def _on_exit(self, pid: int, code: int) -> None:
        self.store.reclaim(pid)         # what the dead process held in the store (refs, views, shared arrays)
        info = self.by_pid.pop(pid, None)
        if info is None:
            return
        if not info.options["persistent"]:
            # its connection went with it; a restart gets a fresh one. (A persistent actor's link is left to its
            # acker, which holds the unacked tells and resends them once the actor is back.)
            self.endpoint.forget(info.id)
        if info.started and self.endpoint.nursery is not None:
            self.endpoint.nursery.start_soon(self._after_exit, info, pid, code)
        else:
            self._decide(info, pid, code)

    async def _after_exit(self, info: _ActorInfo, pid: int, code: int) -> None:
        # Read what the actor sent before it died (a failure or stopping report) before deciding.
        with trio.move_on_after(1.0):
            await self.endpoint.closed_by.setdefault(info.id, trio.Event()).wait()
        self.endpoint.closed_by.pop(info.id, None)
        self._decide(info, pid, code)

    def _decide(self, info: _ActorInfo, pid: int, code: int) -> None:
        info.returncode = code
        info.exited.set()
        info.ready.set()
        if info.restarting and not info.started:
            return                      # this restart failed: _restart counts it and decides
        how = f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        reason = f"{info.last_failure} ({how})" if info.last_failure else how
        policy = info.options["restart"]
        restart = not info.stopping and info.started and info.pid and (
            policy == "always" or (policy == "on-failure" and code != 0))
        if not info.stopping and info.error is None and info.ready.is_set() and info.started:
            log.error("actor %r (pid %d) %s: %s", info.name, pid,
                      "failed" if code else "ended", reason)
        for watcher_id, watcher_name in list(info.watchers.items()):
            self._notify(watcher_id, watcher_name, Terminated(info.ref(), reason, bool(restart)))
        if restart and self.endpoint.nursery is not None:
            info.last_failure = None
            self.endpoint.nursery.start_soon(self._restart, info, reason)
            return
        self._gone(info)

    def _gone(self, info: _ActorInfo) -> None:
        """The actor ended for good: forget it, and tell reconnecting senders not to wait for it."""
        self.by_name.pop(info.name, None)
        self.actors.pop(info.id, None)
        path = mb.socket_path(self.rundir, info.id)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        with open(path + ".gone", "w"):
            pass

    def _notify(self, watcher_id: int, watcher_name: str, message) -> None:
        try:
            self.endpoint.names.setdefault(watcher_id, watcher_name)
            self.endpoint.post(watcher_id, mb.TELL, self.outgoing(message))
        except Exception as exc:
            log.warning("could not tell %r that an actor it watches ended: %s", watcher_name, exc)

    async def _restart(self, info: _ActorInfo, reason: str) -> None:
        """Start a failed actor again, same id and name (refs to it stay valid), within its restart intensity."""
        opts = info.options
        while True:
            now = trio.current_time()
            info.restarts = [t for t in info.restarts if now - t < opts["restart_window"]]
            if len(info.restarts) >= opts["max_restarts"]:
                self._gone(info)
                self.fail(SupervisionError(
                    f"actor {info.name!r} failed {len(info.restarts) + 1} times within "
                    f"{opts['restart_window']:g} s, more than its restart intensity allows "
                    f"({opts['max_restarts']}); the system stops. Its last failure: {reason}"))
                return
            await trio.sleep(opts["restart_backoff"] * (2 ** len(info.restarts)))
            info.restarts.append(trio.current_time())
            info.ready = trio.Event()
            info.exited = trio.Event()
            info.returncode = None
            info.error = None
            info.started = False        # until this start's on_start has finished
            info.restarting = True
            try:
                await self._start(info)
            except SpawnError as exc:
                reason = str(exc)       # a failed restart is a failure like any other: within the intensity
                continue
            finally:
                info.restarting = False
            break
        log.warning("actor %r restarted (restart %d within %g s)", info.name, len(info.restarts),
                    opts["restart_window"])

    def fail(self, exc: BaseException) -> None:
        """Stop the whole system with `exc` (raised from actors.run)."""
        if self.fatal is None:
            self.fatal = exc
            log.error("%s", exc)
            if self.main_scope is not None:
                self.main_scope.cancel()

    # -- system requests -----------------------------------------------------------------------------------------

    async def _system_request(self, op, *args):
        return await getattr(self, "_op_" + op)(*args)

    async def handle(self, off, kind, src, call) -> bool:
        """The driver's endpoint handler: each system request runs in its own task (spawning takes a while)."""
        ep = self.endpoint
        try:
            msg = ep.arena.read(off, True)
        except Exception as exc:
            log.error("system: cannot decode a request from %s: %s", ep.describe(src), exc)
            ep.arena.decref_id(off)
            return False
        if kind == mb.SYSTEM_TELL and msg[0] in ("failure", "stopping", "ready"):
            getattr(self, "_note_" + msg[0])(*msg[1:])      # in order, before any exit report is decided
        elif kind in (mb.SYSTEM, mb.SYSTEM_TELL):
            ep.nursery.start_soon(self._answer, src, kind, call, msg)
        else:
            log.warning("the driver is not an actor: dropped a message from %s", ep.describe(src))
        return False

    async def _answer(self, src, kind, call, msg) -> None:
        ep = self.endpoint
        try:
            result = await getattr(self, "_op_" + msg[0])(*msg[1:])
        except Exception as exc:
            if kind == mb.SYSTEM:
                await _reply(ep, src, mb.ERROR, error_payload(exc), call)
            else:
                log.error("system request %s from %s failed: %s", msg[0], ep.describe(src), exc)
            return
        if kind == mb.SYSTEM:
            await _reply(ep, src, mb.REPLY, result, call)

    async def _op_spawn(self, pickled: bytes, name: str | None, opts: dict | None = None) -> ActorRef:
        cls, args, kwargs = cloudpickle.loads(pickled) if isinstance(pickled, bytes) else pickled
        opts = opts if opts is not None else actor_options(cls, None)
        actor_id = next(self._ids)
        if opts["persistent"] and name is None:
            raise ActorsError(f"cannot spawn persistent {cls.__qualname__} without a name: its state is stored "
                              f"under its name, to be found again after a restart; pass name=")
        name = name if name is not None else f"{cls.__name__}-{actor_id}"
        if name in self.by_name:
            raise ActorsError(f"cannot spawn {cls.__qualname__} as {name!r}: an actor of that name is running")
        payload = cloudpickle.dumps({
            "id": actor_id, "name": name, "cls": cls, "args": args, "kwargs": kwargs, "rundir": self.rundir,
            "store": self.store.name, "registry": _codec.default_registry.entries(),
            "serialize": self.serialize, "deserialize": self.deserialize, "mailbox_size": self.mailbox_size,
            "app": self.app, "options": opts, "resilience_dir": self.resilience_dir,
        })
        info = _ActorInfo(actor_id, name, cls, opts, payload)
        self.actors[actor_id] = info
        self.by_name[name] = actor_id
        self.endpoint.names[actor_id] = name
        await self._start(info)
        return info.ref()

    async def _start(self, info: _ActorInfo) -> None:
        """Fork the actor's process and wait for its on_start."""
        name, cls = info.name, info.cls
        token = next(self._tokens)
        done = self._spawned[token] = [trio.Event()]
        _forkserver.send_frame(self._ctl, ("spawn", token, info.payload))
        await done[0].wait()
        info.pid = self._spawned.pop(token)[1]
        if not info.pid:
            raise SpawnError(f"actor {name!r} ({cls.__qualname__}) cannot start: the fork server exited")
        self.by_pid[info.pid] = info
        if info.pid in self._early_exits:
            self._on_exit(info.pid, self._early_exits.pop(info.pid))
        await info.ready.wait()
        if info.error is not None or info.returncode is not None:
            if info.restarting:         # keep its name and id for the next try
                if info.returncode is None:
                    await self._wait_or_kill(info, self.stop_timeout)
                raise SpawnError(f"actor {name!r} ({cls.__qualname__}) failed to restart: " + (
                    f"{info.error[0]}: {info.error[1]}" if info.error else f"exit code {info.returncode}"))
            self.by_name.pop(name, None)
            if info.returncode is None:
                await self._wait_or_kill(info, self.stop_timeout)
            self.actors.pop(info.id, None)
            detail = (f"{info.error[0]}: {info.error[1]}\n\nremote traceback:\n{info.error[2]}" if info.error
                      else f"its process exited with code {info.returncode} before it could report why (its "
                           f"error output, above, says)")
            raise SpawnError(f"actor {name!r} ({cls.__qualname__}) failed to start: {detail}")
        info.started = True

    def _note_ready(self, actor_id: int, error) -> None:
        info = self.actors.get(actor_id)
        if info is not None:
            info.error = error
            info.ready.set()

    def _note_failure(self, actor_id: int, reason: str) -> None:
        info = self.actors.get(actor_id)
        if info is not None:
            info.last_failure = reason

    def _note_stopping(self, actor_id: int, reason: str) -> None:
        info = self.actors.get(actor_id)
        if info is not None:
            info.stopping = True
            info.last_failure = reason

    async def _op_ready(self, actor_id: int, error) -> None:
        info = self.actors.get(actor_id)
        if info is not None:
            info.error = error
            info.ready.set()

    async def _op_lookup(self, name: str) -> ActorRef:
        actor_id = self.by_name.get(name)
        if actor_id is None:
            raise ActorNotFoundError(f"no running actor is named {name!r}")
        return self.actors[actor_id].ref()

    async def _op_watch(self, target_id: int, watcher_id: int, watcher_name: str) -> None:
        info = self.actors.get(target_id)
        if info is None:
            self._notify(watcher_id, watcher_name, Terminated(ActorRef(target_id, self.endpoint.names.get(
                target_id, f"#{target_id}")), "it was not running", False))
            return
        info.watchers[watcher_id] = watcher_name

    async def _op_failure(self, actor_id: int, reason: str) -> None:
        info = self.actors.get(actor_id)
        if info is not None:
            info.last_failure = reason

    async def _op_stopping(self, actor_id: int, reason: str) -> None:
        info = self.actors.get(actor_id)
        if info is not None:
            info.stopping = True
            info.last_failure = reason

    async def _op_stop(self, actor_id: int, timeout: float = 5.0) -> None:
        info = self.actors.get(actor_id)
        if info is None:
            return
        info.stopping = True
        try:
            await self.endpoint.send(actor_id, mb.STOP, None)
            self.endpoint.flush_all()
        except ActorStoppedError:
            pass
        await self._wait_or_kill(info, timeout)
        self.endpoint.forget(actor_id)

    async def _wait_or_kill(self, info: _ActorInfo, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await info.exited.wait()
            return
        if info.pid <= 0:
            return
        log.warning("actor %r did not stop within %g s; killing it", info.name, timeout)
        try:
            os.kill(info.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with trio.move_on_after(5):
            await info.exited.wait()

    async def _op_register(self, pickled: bytes) -> None:
        _codec.default_registry.add_entries([cloudpickle.loads(pickled)])

    async def _op_registry(self, code: int):
        # A registration sent by the class's owner may still be on its way: give it a moment.
        with trio.move_on_after(2):
            while True:
                entry = _codec.default_registry.lookup_code(code)
                if entry is not None:
                    return cloudpickle.dumps(entry)
                await trio.sleep(0.01)
        return None

    async def pull_class(self, code: int) -> bool:
        return await self._op_registry(code) is not None

    # -- lifetime ------------------------------------------------------------------------------------------------

    async def stop_all(self, timeout: float) -> None:
        async with trio.open_nursery() as nursery:
            for info in list(self.actors.values()):
                nursery.start_soon(self._op_stop, info.id, timeout)

    def close(self) -> None:
        """Kill whatever is left, and unlink every resource of the system."""
        for info in list(self.actors.values()):
            if info.pid:
                try:
                    os.kill(info.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.endpoint.close()
        if self._ctl is not None:
            self._ctl.close()       # the fork server sees EOF, kills any actor left, exits
        if self._forkserver is not None:
            try:
                self._forkserver.wait(10)
            except subprocess.TimeoutExpired:
                self._forkserver.kill()
                self._forkserver.wait()
        _store.set_current_store(None)
        self.store.close()
        shutil.rmtree(self.rundir, ignore_errors=True)


async def _reply(ep: mb.Endpoint, dest: int, kind: int, payload, call: int, flush: bool = True) -> None:
    """Answer an ask. Inside a batch of handlers, the batch's end flushes (flush=False)."""
    try:
        await ep.send(dest, kind, payload, call, flush=True)
    except ActorStoppedError:
        pass            # the asker is gone
    except Exception as exc:
        # the result cannot travel (unencodable): the asker gets the reason instead of waiting for ever
        await ep.send(dest, mb.ERROR, error_payload(exc), call, flush=True)
    if flush:
        ep.flush_all()


async def _driver_main(main, options: dict):
    driver = Driver(**options)
    _actor._system = driver
    terminated = False
    failure = None
    result = None
    try:
        driver.start_forkserver()
        async with trio.open_nursery() as nursery:
            driver.endpoint.handle = driver.handle
            await nursery.start(driver.endpoint.serve)
            nursery.start_soon(driver._forkserver_events)

            async def on_sigterm():
                nonlocal terminated
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        terminated = True
                        main_scope.cancel()
                        return

            nursery.start_soon(on_sigterm)
            with trio.CancelScope() as main_scope:
                driver.main_scope = main_scope
                try:
                    result = await main(driver)
                except trio.Cancelled:
                    raise                           # ours (SIGTERM, or a fatal supervision error)
                except BaseException as exc:       # raised as itself below, not inside an ExceptionGroup
                    failure = exc
            with trio.CancelScope(shield=True):
                await driver.stop_all(driver.stop_timeout)
            nursery.cancel_scope.cancel()
    finally:
        _actor._system = None
        driver.close()
    if driver.fatal is not None:
        raise driver.fatal
    if failure is not None:
        raise failure
    if terminated:
        raise SystemExit(143)
    return result


def run(main, *, store_capacity: int | str | None = None, mailbox_size: int = 4096, serialize=None,
        deserialize=None, stop_timeout: float = 5.0, resilience_dir: str | None = None,
        _app: tuple[str, str] | None = None):
    """Run a system: call `await main(system)` in this process, then stop every actor gracefully.

    Like `trio.run`, it returns main's result. Options: the store's capacity (bytes, or "512M"); the mailbox size in
    messages; `serialize`/`deserialize` to replace the fast codec for message payloads; how long actors get to
    stop before they are killed.
    """
    if (serialize is None) != (deserialize is None):
        raise ActorsError("serialize and deserialize go together: pass both or neither")
    options = dict(store_capacity=store_capacity, mailbox_size=mailbox_size, serialize=serialize,
                   deserialize=deserialize, stop_timeout=stop_timeout, app=_app, resilience_dir=resilience_dir)
    return trio.run(_driver_main, main, options)
