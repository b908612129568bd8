"""An actor's process: bootstrap (registry, store, output prefixing), construct or recover the actor, then its trio
loop handling messages (through dispatch.ActorHandler) until it is stopped."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import traceback

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup     # trio's dependency there; a builtin from 3.11

import cloudpickle
import setproctitle
import trio

from _fastser import _codec
from actors import _output, _persist, _store
from actors import _codec as _public_codec
from actors._exceptions import ActorStoppedError, PersistenceError, UnknownClassError
from actors._ref import ActorRef
from actors._runtime.dispatch import ActorHandler, has_own, method_of
from actors._runtime.stop_signals import STOP_SIGNALS, handling_stop_signals
from actors._runtime.system import System, error_payload
from actors._wire.endpoint import Endpoint
from actors._wire.protocol import ASK, CALL, CALL_TELL, SYSTEM_TELL, TELL, SpawnSpec, SystemOp
from actors._wire.tcp import ClusterTransport
from actors._wire.uds import UnixTransport, socket_path

log = logging.getLogger(__name__)
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
            # Once the target is closed (`actors run app.py | head`), the rest is read and dropped: the actor's
            # prints go on working, as they would into /dev/null, instead of failing its handlers with
            # BrokenPipeError once this thread has died of it.
            gone = False
            with os.fdopen(read_end, "rb", buffering=0) as pipe:
                pending = b""
                while True:
                    chunk = pipe.read(65536)
                    if not chunk:
                        break
                    if gone:
                        continue
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    try:
                        _output.write_lines(target, [prefix + line + b"\n" for line in lines])
                    except OSError:
                        gone = True
                if pending and not gone:
                    try:
                        _output.write_lines(target, [prefix + pending + b"\n"])
                    except OSError:
                        pass

        thread = threading.Thread(target=pump, name=f"output-{fd}", daemon=True)
        thread.start()
        pumps.append(thread)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    return pumps


class ToSystem(logging.Handler):
    """The actor's log records go to the system (the driver), whose logging handles them as its own: the actors
    follow the program's configuration (its handlers, format and levels; pytest's caplog sees them). A record the
    actor cannot send (its endpoint is not up yet, or gone; logged from another thread; the mailbox to the driver is
    full) is written to its stderr instead, prefixed with the actor's name like all its output."""

    def __init__(self, spec: SpawnSpec):
        super().__init__()
        self.id = spec.id
        self.endpoint: Endpoint | None = None       # set while the actor's endpoint runs
        self.thread = threading.get_ident()
        self.sending = False
        self.fallback = logging.StreamHandler()     # sys.stderr at the time of each record
        self.fallback.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        ep = self.endpoint
        if ep is None or ep.closed or self.sending or threading.get_ident() != self.thread:
            self.fallback.handle(record)
            return
        self.sending = True         # a record logged while sending one (a dead letter, say) goes to stderr
        try:
            fields = {"name": record.name, "msg": record.getMessage(), "levelno": record.levelno,
                      "levelname": record.levelname, "pathname": record.pathname, "lineno": record.lineno,
                      "funcName": record.funcName, "created": record.created, "msecs": record.msecs,
                      "process": record.process, "threadName": record.threadName,
                      "exc_text": (self.fallback.formatter.formatException(record.exc_info)
                                   if record.exc_info else record.exc_text),
                      "stack_info": record.stack_info}
            ep.post_nowait(0, SYSTEM_TELL, (int(SystemOp.LOG), self.id, fields))
        except Exception:
            self.fallback.handle(record)
        finally:
            self.sending = False


def _configure_logging(spec: SpawnSpec) -> ToSystem:
    """The actor logs through the system (ToSystem), at the system's levels, so that it sends no record the system
    would drop. Whatever the fork server inherited from an app's import-time configuration is replaced: the system
    has that configuration itself, and handles the records."""
    handler = ToSystem(spec)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root_level, levels = spec.log_levels
    root.setLevel(root_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    return handler


# glibc's mallopt parameters, and the values an actor process runs with (see _keep_heap_warm)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def _keep_heap_warm() -> None:
    """Serve allocations of up to 32 MiB from the heap, and keep up to 64 MiB of freed heap, in this actor process.

    An actor decodes a large `bytes` or `str` message into a fresh object as large. glibc's defaults hand such
    memory back to the kernel when it is freed (an mmap of its own, or the heap's top trimmed), so the next message
    of the same size faulted its pages in again: a fault per 4 KiB, on top of the copy, which made a stream of
    1 MiB messages three times as costly in CPU. Left alone when the environment tunes malloc itself, and where
    the C library is not glibc."""
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
        gnu = ctypes.CDLL(None).gnu_get_libc_version
    except (OSError, AttributeError):
        return                              # not glibc: its allocator has other defaults
    del gnu
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def main(payload: bytes) -> int:
    """Run one actor; the process's exit code."""
    _keep_heap_warm()
    spec: SpawnSpec = cloudpickle.loads(payload)
    setproctitle.setproctitle(f"actors: {spec.cls.__name__} {spec.name!r} #{spec.id}")    # what ps and top show
    if spec.app is not None and spec.app[0] not in sys.path:
        sys.path.insert(0, spec.app[0])
    pumps = _prefix_output(spec.name)
    _configure_logging(spec)
    try:
        import numpy
        numpy.random.seed()         # forked from one server: without this every actor draws the same numbers
    except ImportError:
        pass
    try:
        return trio.run(_actor_main, spec)
    except BaseException as exc:
        exc = _sole(exc)
        if isinstance(exc, SystemExit):     # the actor's own sys.exit(n): its exit code, as in any program
            if exc.code is None or isinstance(exc.code, int):
                return exc.code or 0
            print(exc.code, file=sys.stderr)
            return 1
        traceback.print_exception(exc)      # while stderr still reaches the terminal
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.close(1)
        os.close(2)
        for pump in pumps:
            pump.join(2)


async def _actor_main(spec: SpawnSpec) -> int:
    _codec.default_registry.add_entries(spec.registry)
    store = _store.ObjectStore.attach(spec.store)
    _store.set_current_store(store)
    store._arena.defer_frees = True     # freed at the end of each batch, under one lock acquisition
    system = System(None, store, spec.serialize, spec.deserialize)
    handler = ActorHandler(system, spec)
    transport = (ClusterTransport(spec.rundir, spec.node, spec.secret, store._arena) if spec.node
                 else UnixTransport(spec.rundir))
    endpoint = system.endpoint = Endpoint(spec.id, transport, store._arena, handler, mailbox_size=spec.mailbox_size)
    system.me = ActorRef(spec.id, spec.name, spec.options["persistent"])
    system.install()
    for log_handler in logging.getLogger().handlers:
        if isinstance(log_handler, ToSystem):
            log_handler.endpoint = endpoint
    status = 0
    journal = None
    try:
        async with trio.open_nursery() as nursery:
            handler.scope = nursery.cancel_scope
            await nursery.start(endpoint.serve)
            try:
                endpoint.connect(0)
            except ActorStoppedError as exc:
                # The system ended while this process started (a stop signal to the whole group, say): there is
                # nobody to serve, nor to tell. But if its socket is still there, something else went wrong, and
                # whoever reads the terminal must hear of it.
                path = socket_path(spec.rundir, 0)
                if os.path.exists(path):
                    print(f"actor {spec.name!r} exits: it cannot connect to its system through {path}, which is "
                          f"still there ({exc})", file=sys.stderr)
                nursery.cancel_scope.cancel()
                return 1
            await nursery.start(_stop_on_signal, endpoint, spec)

            def report_late_registration(entry) -> None:
                try:
                    endpoint.post_nowait(0, SYSTEM_TELL, (int(SystemOp.REGISTER), cloudpickle.dumps(entry)))
                except Exception as exc:
                    log.warning("could not report the registration of %s to the system: %s", entry.cls, exc)

            _public_codec.on_register = report_late_registration
            actor = None
            try:
                if spec.options["persistent"]:
                    actor, journal = await _recover(spec, system)
                else:
                    actor = _construct(spec, system)
                await actor.on_start()
            except Exception as exc:
                await endpoint.send(0, SYSTEM_TELL, (int(SystemOp.READY), spec.id, error_payload(exc), os.getpid()))
                await endpoint.drain()
                status = 1
            if actor is not None and status == 0:
                await endpoint.send(0, SYSTEM_TELL, (int(SystemOp.READY), spec.id, None, os.getpid()))
                endpoint.flush_all()
                handler.bind(actor, journal)
                if journal is not None and spec.options["fsync"] == "interval":
                    nursery.start_soon(handler.sync_every_interval)
                endpoint.start_handling()
                await endpoint.stopped.wait()       # handle messages, in order per sender, until told to stop
                try:
                    await actor.on_stop()
                except Exception:
                    log.exception("actor %r: on_stop raised", spec.name)
                await endpoint.drain()
            nursery.cancel_scope.cancel()
    except BaseException as exc:    # a handler's failure, a full disk under the journal, sys.exit: the system hears why
        if not isinstance(_sole(exc), trio.Cancelled):
            _report_failure(endpoint, spec, exc)
        raise
    finally:
        _public_codec.on_register = None
        endpoint.close()
        if journal is not None:
            journal.close()
    return status


async def _stop_on_signal(endpoint: Endpoint, spec: SpawnSpec, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGTERM (or SIGHUP) stops the actor gracefully and for good, as `on_error="stop"` does: it tells the system
    why, so that no restart policy brings it back, finishes the message in hand, runs `on_stop`, and exits 0.

    A service manager stopping the service (systemd's default sends SIGTERM to every process of the service),
    `timeout`, `kill -TERM -PGID`, or a terminal that closes signal the actors along with the driver: each actor
    then stops as the driver would have stopped it, rather than dying without `on_stop`. What waits in its mailbox
    is dropped, as for any actor that stops for good; a persistent actor has journaled it, and handles it when it
    next runs. The fork server blocked these signals in the new process (`forkserver._child`): one that came while
    the actor started is delivered here, once the handler is in place. A second one is ignored."""
    def on_signal(signum: int) -> None:
        if endpoint.halted:
            return                      # stopping already
        try:
            endpoint.post_nowait(0, SYSTEM_TELL, (int(SystemOp.STOPPING), spec.id,
                                                  f"it received {signal.Signals(signum).name}"))
            endpoint.flush_all()
        except Exception:
            pass                        # the system is gone: stop all the same
        endpoint.stop_receiving()

    # (none if the system was started with both ignored: they stay so). When the block ends, the process is
    # ending: a group stop's second signal then must not kill it, and have its end reported as a failure
    with handling_stop_signals(on_signal, then=signal.SIG_IGN):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        task_status.started()
        await trio.sleep_forever()


def _sole(exc: BaseException) -> BaseException:
    """The exception inside trio's groups of one (a handler's exception leaves the run wrapped in them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _report_failure(endpoint: Endpoint, spec: SpawnSpec, exc: BaseException) -> None:
    """Tell the system why this process is about to fail (a full disk under the journal, a handler's sys.exit,
    say), so that its log names the cause rather than only an exit code."""
    exc = _sole(exc)
    try:
        endpoint.post_nowait(0, SYSTEM_TELL, (int(SystemOp.FAILURE), spec.id, f"{type(exc).__qualname__}: {exc}"))
        endpoint.flush_all()
    except Exception:
        pass


def _construct(spec: SpawnSpec, system: System, state=_persist_none):
    cls = spec.cls
    actor = cls.__new__(cls)
    actor.system = system
    actor.ref = ActorRef(spec.id, spec.name, spec.options["persistent"])
    if state is _persist_none:
        actor.__init__(*spec.args, **spec.kwargs)
    elif has_own(cls, "__setstate__"):
        actor.__setstate__(state)
    else:
        actor.__dict__.update(state)
    return actor


async def _recover(spec: SpawnSpec, system: System):
    """A persistent actor: its latest snapshot (or its constructor), then the journal replayed after it."""
    opts = spec.options
    if not spec.resilience_dir:
        raise PersistenceError(
            f"actor {spec.name!r} is persistent but the system has no resilience directory; run with "
            f"`actors run --resilience-dir DIR` or actors.run(main, resilience_dir=DIR)")
    journal = _persist.Journal(spec.resilience_dir, spec.name, fsync=opts["fsync"],
                               interval=opts["fsync_interval"], serialize=spec.serialize,
                               deserialize=spec.deserialize, epoch=spec.epoch, lock=spec.shared_dir)
    restored, state, replay = journal.recover()
    actor = _construct(spec, system, state if restored else _persist_none)
    incoming = system.incoming
    for i, (kind, message) in enumerate(replay):
        try:
            msg = _codec.loads(message)
        except UnknownClassError as exc:
            # a class this program does not register (renamed, say): skipping the message would lose it for good,
            # once the next snapshot covers it. (A message that failed to decode when it arrived fails here the
            # same way; registering its class lets it through both times.) Other decoding errors are skipped
            # below, as they were when the message first arrived.
            raise PersistenceError(_persist.undecodable(
                f"actor {spec.name!r}: journaled message {i + 1} of {len(replay)} to replay", exc)) from exc
        except Exception as exc:
            log.error("actor %r: a journaled message does not decode (skipped): %r", spec.name, exc)
            continue
        try:
            if kind in (TELL, ASK):
                await actor.receive(incoming(msg))
            elif kind in (CALL, CALL_TELL):
                method, args, kwargs = msg
                await method_of(actor, method)(*args, **kwargs)
        except Exception as exc:
            log.error("actor %r: replaying a journaled message raised (skipped): %r", spec.name, exc)
    if replay or restored:
        log.info("actor %r recovered: %s, %d journaled message(s) replayed", spec.name,
                 "from its snapshot" if restored else "with no snapshot", len(replay))
    return actor, journal
