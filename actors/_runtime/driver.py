"""The driver: the process that called `actors.run` (or the `actors run` launcher). It owns the store, the run
directory, the fork server and the actors' processes; it is endpoint 0 and answers the actors' system requests.

`Driver` is one object made of rooms: spawn.py (the fork server, starting and stopping actors), supervise.py
(exits, restarts, watches) and registry.py (its tables, class registrations); this module routes the system
requests to them and runs the whole (`run`).
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import shutil
import signal
import subprocess
import tempfile

import trio

from _fastser import _codec
from actors import _codec as _public_codec
from actors import _output, _persist, _ref, _store
from actors._exceptions import ActorsError
from actors._runtime.cluster.node import ClusterOptions, Node
from actors._runtime.registry import ActorInfo, Registry
from actors._runtime.spawn import Spawner
from actors._runtime.status import ENDED_KEPT, Status
from actors._runtime.stop_signals import STOP_SIGNALS, handling_stop_signals
from actors._runtime.supervise import Supervisor
from actors._runtime.system import System, error_payload, reply
from actors._wire.endpoint import Endpoint, Handler
from actors._wire.protocol import ERROR, NODE_SHIFT, REPLY, REPORTS, SYSTEM, SYSTEM_TELL, SystemOp
from actors._wire.tcp import ClusterTransport
from actors._wire.uds import UnixTransport

log = logging.getLogger(__name__)


class Driver(Spawner, Supervisor, Registry, Status, System, Handler):
    """The system as seen from the driver process: it owns the store, the sockets' directory and the processes."""

    def __init__(self, *, store_capacity=None, mailbox_size: int = 4096, serialize=None, deserialize=None,
                 stop_timeout: float = 5.0, app: tuple[str, str] | None = None, resilience_dir=None,
                 shared_dir: bool = False):
        self.resilience_dir = os.path.abspath(resilience_dir) if resilience_dir else None
        # first: a second system on the directory fails here, before it has made anything. A directory that the
        # nodes of a cluster share is locked actor by actor instead (each journal locks its own files).
        self.shared_dir = shared_dir
        self.dir_lock = _persist.DirectoryLock(self.resilience_dir, shared=shared_dir)
        self.fatal: BaseException | None = None
        self.stopping = False           # stop_all has begun: no actor may start any more
        self.main_scope = None
        self.nursery = None             # the system's own tasks run here while it is open
        self.mailbox_size = mailbox_size
        self.stop_timeout = stop_timeout
        self.app = app
        # 0700: only we can reach the sockets. Named after its owner, for `actors cleanup` after a crash.
        _store.cleanup_rundirs()
        self.rundir = tempfile.mkdtemp(prefix=f"actors.{os.getpid()}.{_store._start_time(os.getpid())}.")
        self.transport = UnixTransport(self.rundir)
        self.actors: dict[int, ActorInfo] = {}
        self.by_name: dict[str, int] = {}
        self.by_pid: dict[int, ActorInfo] = {}
        self.ended: collections.deque[ActorInfo] = collections.deque(maxlen=ENDED_KEPT)   # stopped for good
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._spawned: dict[int, list] = {}
        self.unasked_stops: dict[str, int] | None = None    # in stop_all: why it could not ask actors -> how many
        self._early_exits: dict[int, tuple] = {}   # pid -> (exit code, why), for an exit before its spawn report
        self._forkserver = None
        self.forkserver_gone = False    # and with it the reports of actors' exits (spawn.Spawner._exited)
        self._ctl = None
        # The system operations, by number: what an actor's SYSTEM request runs (never looked up by name).
        self._ops = {
            SystemOp.SPAWN: self._op_spawn, SystemOp.LOOKUP: self._op_lookup, SystemOp.STOP: self._op_stop,
            SystemOp.WATCH: self._op_watch, SystemOp.REGISTER: self._op_register,
            SystemOp.REGISTRY: self._op_registry, SystemOp.STATUS: self._op_status, SystemOp.NODES: self._op_nodes,
            SystemOp.DEATH_CAUSE: self.death_cause,
        }
        self._reports = {SystemOp.READY: self._note_ready, SystemOp.FAILURE: self._note_failure,
                         SystemOp.STOPPING: self._note_stopping, SystemOp.LOG: self._note_log}
        self.actor_logged = trio.Event()    # set (and replaced) at each record an actor logs
        self.cluster = None                 # the Node, when this system is a node of a cluster
        self.id_base = 0                    # this node's number, shifted: the high bits of its actors' ids
        self.spawned_elsewhere: dict[int, int] = {}     # actor id -> the driver of the node running it
        self.remote_watches: dict[int, dict] = {}       # actor id on another node -> {watcher id: name} from here
        try:
            store = _store.ObjectStore(store_capacity)
        except BaseException:
            self.dir_lock.release()         # now, not whenever the garbage collector gets to it
            raise
        _store.set_current_store(store)
        try:
            endpoint = Endpoint(0, self.transport, store._arena, self, mailbox_size=mailbox_size)
        except BaseException:
            store.close()
            self.dir_lock.release()
            raise
        super().__init__(endpoint, store, serialize, deserialize)

    # -- system requests -----------------------------------------------------------------------------------------

    async def _system_request(self, op: SystemOp, *args):
        _ref.running_system(op.name.lower(), self)
        return await self._ops[op](*args)

    async def join_cluster(self, options) -> None:
        """Become a node of the cluster (before any actor exists): ids get this node's number, and the endpoint
        reaches other nodes over TCP. The node's tasks start with `start_cluster`."""
        node = Node(self, options)
        try:
            await node.join()
        except BaseException:
            with trio.CancelScope(shield=True):
                await node.leave()
            if node.gateway is not None:
                node.gateway.close()
            raise
        self.cluster = node
        self.id_base = node.number << NODE_SHIFT
        self.transport = ClusterTransport(self.rundir, node.number, node.secret, self.store._arena)
        self.endpoint.transport = self.transport
        self.endpoint.id = self.id_base
        self.endpoint.epoch |= node.number << 50        # as every endpoint's epoch carries its node's number

    async def start_cluster(self) -> None:
        node = self.cluster
        await self.nursery.start(node.run)
        await node.publish_classes(_codec.default_registry.entries())
        # a class the program registers from now on is published too, for other nodes to fetch on first use
        _public_codec.on_register = lambda entry: self.nursery.start_soon(node.publish_classes, [entry])

    async def handle(self, off, kind, src, call) -> bool:
        """The driver's endpoint handler: each system request runs in its own task (spawning takes a while)."""
        ep = self.endpoint
        try:
            msg = ep.arena.read(off, True)
        except Exception as exc:
            log.error("system: cannot decode a request from %s: %s", ep.describe(src), exc)
            ep.arena.decref_id(off)
            return False
        if kind == SYSTEM_TELL and msg[0] in REPORTS:
            self._reports[msg[0]](*msg[1:])     # in order, before any exit report is decided
        elif kind == SYSTEM or kind == SYSTEM_TELL:
            ep.nursery.start_soon(self._answer, src, kind, call, msg)
        else:
            log.warning("the driver is not an actor: dropped a message from %s", ep.describe(src))
        return False

    def _note_log(self, actor_id: int, fields: dict) -> None:
        """A record an actor logged: handled by this process's logging, as if logged here, with its `actor` (name)
        and `actor_id` as attributes (a format or filter can use them)."""
        record = logging.makeLogRecord(fields)
        record.actor = self.endpoint.names.get(actor_id, f"#{actor_id}")
        record.actor_id = actor_id
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
        self.actor_logged.set()
        self.actor_logged = trio.Event()

    async def _answer(self, src, kind, call, msg) -> None:
        ep = self.endpoint
        try:
            op = msg[0]
            if op in REPORTS:
                result = self._reports[op](*msg[1:])
            else:
                result = await self._ops[op](*msg[1:])
        except Exception as exc:
            if kind == SYSTEM:
                await reply(ep, src, ERROR, error_payload(exc), call)
            else:
                log.error("system request %s from %s failed: %s", msg[0], ep.describe(src), exc)
            return
        if kind == SYSTEM:
            await reply(ep, src, REPLY, result, call)

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
        self.dir_lock.release()         # last: no actor of ours writes to the directory any more


def _check_options(serialize, deserialize, mailbox_size, stop_timeout) -> None:
    """Refused before the system starts: a mailbox of no room left every send waiting for ever, and a stop timeout
    that trio refuses failed only when the system stopped, after `main` had run."""
    if (serialize is None) != (deserialize is None):
        raise ActorsError("serialize and deserialize go together: pass both or neither")
    if isinstance(mailbox_size, bool) or not isinstance(mailbox_size, int) or mailbox_size < 1:
        raise ActorsError(f"mailbox_size must be a whole number of messages, 1 or more, not {mailbox_size!r}")
    if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, (int, float)) or not stop_timeout >= 0:
        raise ActorsError(f"stop_timeout must be a number of seconds, 0 or more, not {stop_timeout!r}")


@contextlib.asynccontextmanager
async def open_system(*, store_capacity: int | str | None = None, mailbox_size: int = 4096, serialize=None,
                      deserialize=None, stop_timeout: float = 5.0, resilience_dir: str | None = None,
                      cluster: str | ClusterOptions | None = None, _app: tuple[str, str] | None = None):
    """`async with actors.open_system() as system:` runs a system inside any trio program (a nursery, a pytest-trio
    test, a trio web server) for as long as the block lasts.

    When the block exits, however it exits, every actor is stopped gracefully (killed after `stop_timeout`), the fork
    server is gone, and the store, the run directory and the resilience directory's lock are released. An exception
    from the block comes out as itself, after that; so does a supervision error that stopped the system (the block
    is cancelled then). One system per process at a time. Signals stay the program's own: `actors.run` adds SIGTERM
    handling on top of this. The options are those of `actors.run`.
    """
    _check_options(serialize, deserialize, mailbox_size, stop_timeout)
    cluster = ClusterOptions.of(cluster)
    if _ref._system is not None:
        raise ActorsError("a system is already open in this process; one process runs one system at a time: "
                          "close it (leave its `async with open_system()` block) before opening another")
    driver = Driver(store_capacity=store_capacity, mailbox_size=mailbox_size, serialize=serialize,
                    deserialize=deserialize, stop_timeout=stop_timeout, app=_app, resilience_dir=resilience_dir,
                    shared_dir=cluster is not None and cluster.shared_resilience)
    driver.install()
    failure = None
    try:
        driver.start_forkserver()
        if cluster is not None:
            await driver.join_cluster(cluster)      # out of the nursery: its errors come out as themselves
        async with trio.open_nursery() as nursery:
            driver.nursery = nursery
            driver.endpoint.start_handling()
            await nursery.start(driver.endpoint.serve)
            if driver.cluster is not None:      # after the endpoint: the gateway hands connections to it
                await driver.start_cluster()
            await nursery.start(driver.serve_status)
            nursery.start_soon(driver._forkserver_events)
            with trio.CancelScope() as main_scope:
                driver.main_scope = main_scope
                try:
                    yield driver
                except trio.Cancelled:
                    raise                           # ours (a fatal supervision error), or the program's
                except BaseException as exc:       # raised as itself below, not inside an ExceptionGroup
                    failure = exc
                finally:
                    with trio.CancelScope(shield=True):
                        await driver.stop_all(driver.stop_timeout)
            nursery.cancel_scope.cancel()
    finally:
        _public_codec.on_register = None
        if driver.cluster is not None:
            with trio.CancelScope(shield=True):
                await driver.cluster.leave()     # its names and membership go now, not when the lease runs out
        driver.uninstall()
        driver.close()
    if driver.fatal is not None:
        raise driver.fatal from None    # the system's own failure: not a consequence of main's cancellation
    if failure is not None:
        raise failure


async def _driver_main(main, options: dict):
    # SIGTERM and SIGHUP (stop_signals.STOP_SIGNALS) stop the system as the end of main does. The handler stays
    # installed until the system is closed: a second signal (GNU `timeout` sends one to the driver, then one to its
    # whole group) is ignored, where the default action would kill the driver in the middle of stopping the actors,
    # and leave the store's segment and the run directory behind.
    got = None
    system = None
    result = None

    def on_signal(signum: int) -> None:
        nonlocal got
        if got is None:
            got = signum
            if system is not None:
                system.main_scope.cancel()

    with handling_stop_signals(on_signal):
        async with open_system(**options) as system:
            if got is not None:         # a signal while the system started: main is cancelled at once
                system.main_scope.cancel()
            result = await main(system)
    if got is not None:
        raise SystemExit(STOP_SIGNALS[got])
    return result


def run(main, *, store_capacity: int | str | None = None, mailbox_size: int = 4096, serialize=None,
        deserialize=None, stop_timeout: float = 5.0, resilience_dir: str | None = None,
        cluster: str | ClusterOptions | None = None, _app: tuple[str, str] | None = None):
    """Run a system: call `await main(system)` in this process, then stop every actor gracefully.

    Like `trio.run`, it returns main's result; SIGTERM stops the system as the end of `main` does, then raises
    SystemExit(143); so does SIGHUP (the terminal gone), with 129, unless the process was started with it ignored.
    It is `trio.run` around `open_system`: a trio program embeds a system with that instead.
    Options: the store's capacity (bytes, or "512M"); the mailbox size in messages; `serialize`/`deserialize` to
    replace the fast codec for message payloads; how long actors get to stop before they are killed; the
    resilience directory of persistent actors; `cluster`, to run as a node of a cluster (the etcd address,
    `etcd://HOST:PORT`, or `actors.ClusterOptions`; see docs/cluster.md).
    """
    _check_options(serialize, deserialize, mailbox_size, stop_timeout)
    options = dict(store_capacity=store_capacity, mailbox_size=mailbox_size, serialize=serialize,
                   deserialize=deserialize, stop_timeout=stop_timeout, _app=_app, resilience_dir=resilience_dir,
                   cluster=cluster)
    with _output.whole_lines():     # an actor's line never lands inside one of ours
        return trio.run(_driver_main, main, options)
