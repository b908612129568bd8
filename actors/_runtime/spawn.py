"""Spawning: the driver's side of the fork server (start it, ask it to fork an actor, hear of exits), starting an
actor and waiting for its on_start, and stopping actors."""
from __future__ import annotations

import logging
import os
import pickle
import resource
import select
import signal
import socket
import subprocess
import sys

import cloudpickle
import trio

from _fastser import _codec
from actors._actor import actor_options
from actors._exceptions import ActorsError, ActorStoppedError, SpawnError, StoreFullError
from actors._ref import ActorRef
from actors._runtime import forkserver
from actors._runtime.registry import ActorInfo, how_it_ended
from actors._runtime.stop_signals import STOP_SIGNALS
from actors._wire.protocol import NODE_SHIFT, STOP, SpawnSpec, SystemOp

log = logging.getLogger(__name__)

PRELOAD = ["numpy", "numpy.random", "trio", "cloudpickle", "actors", "actors._runtime.worker"]

# The fork server imports `actors` from the driver's sys.path, not from its working directory (which `python -c`
# would put first): a source checkout in the cwd must not shadow the installed, compiled package.
_FORKSERVER_MAIN = ("import pickle, sys; sys.path[:] = pickle.loads(bytes.fromhex(sys.argv[2]))['path']; "
                    "from actors._runtime.forkserver import main; main()")


def log_levels() -> tuple[int, dict[str, int]]:
    """This process's logging levels, for an actor to log at: the root logger's, and those set on named loggers."""
    named = {name: logger.level for name, logger in logging.Logger.manager.loggerDict.items()
             if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET}
    return logging.getLogger().level, named


OPEN_FILES = 65536          # the soft limit on open files a system raises its own to, within the hard limit


def _raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files towards OPEN_FILES, within its hard limit. The driver holds
    two connections per actor, and an actor one per actor it talks to: the usual soft limit, 1024, ran out at about
    500 actors, and a stop then failed on every actor it could no longer connect to. Not all the way to a hard limit
    of a million or more: the actors, and what they start, inherit it, and some programs loop over every possible
    descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


class Spawner:
    """The spawning part of `Driver` (kept in its own room)."""

    def start_forkserver(self) -> None:
        _raise_open_files_limit()       # before the fork server starts: it and the actors inherit the limit
        ours, theirs = socket.socketpair()
        spec = pickle.dumps({"preload": PRELOAD, "app": self.app, "path": sys.path, "argv": sys.argv}).hex()
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")     # one BLAS thread per actor: actors are the parallelism
        # The stop signals stay blocked in the new process until it ignores them (forkserver.main): one sent to the
        # whole group while it starts (the driver stops then, and needs it) must not kill it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self._forkserver = subprocess.Popen(
                [sys.executable, "-c", _FORKSERVER_MAIN, str(theirs.fileno()), spec],
                pass_fds=[theirs.fileno()], env=env)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        self._ctl = ours
        self._ctl_lock = None       # made on first use, inside trio

    async def _to_forkserver(self, obj) -> None:
        """Write one frame to the fork server, whole, waiting while its socket is full. The socket is non-blocking
        (trio reads it), so a plain sendall raised BlockingIOError with part of a frame written when a spec was
        larger than the socket's buffer, or many spawns came at once; the lock keeps concurrent frames whole."""
        if self._ctl_lock is None:
            self._ctl_lock = trio.Lock()
        view = memoryview(forkserver.frame(obj))
        async with self._ctl_lock:
            while view:
                try:
                    view = view[self._ctl.send(view):]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._ctl)

    async def _forkserver_events(self) -> None:
        ctl = trio.socket.from_stdlib_socket(self._ctl)
        buf = b""
        while True:
            data = await ctl.recv(65536)
            if not data:
                # the fork server is gone (it failed to import the app, say): no actor can start any more
                self.forkserver_gone = True
                code = None
                with trio.move_on_after(2):     # it closed its end: it is exiting
                    code = await trio.to_thread.run_sync(self._forkserver.wait, abandon_on_cancel=True)
                how = ("" if code is None else f" with exit code {code}" if code >= 0
                       else f": killed by {signal.Signals(-code).name}")
                # (its actors die with it: forkserver._die_with_parent)
                self.fail(ActorsError(f"the fork server that starts actor processes (pid {self._forkserver.pid}) "
                                      f"exited{how}, and every actor with it; the system stops"
                                      + ("; see its error above" if code is not None and code > 0 else "")))
                for waiting in self._spawned.values():
                    waiting.append(0)
                    waiting[0].set()
                return
            buf += data
            while len(buf) >= 4:
                n = forkserver.LEN.unpack_from(buf)[0]
                if len(buf) < 4 + n:
                    break
                msg = pickle.loads(buf[4:4 + n])
                buf = buf[4 + n:]
                if msg[0] == "spawned":
                    self._spawned[msg[1]].append(msg[2])
                    self._spawned[msg[1]][0].set()
                elif msg[0] == "exit":
                    if msg[1] in self.by_pid:
                        self._on_exit(msg[1], msg[2], msg[3])
                    else:
                        self._early_exits[msg[1]] = msg[2:]     # before we handled its "spawned": see _start

    async def _op_spawn(self, pickled: bytes, name: str | None, opts: dict | None = None, node: str | None = None,
                        labels: dict | None = None, owner: str | None = None, actor_id: int | None = None,
                        replaced: list | None = None) -> ActorRef:
        """Spawn an actor here, or on the node placement picks. An actor spawned for another node (`owner`) stops
        when that node leaves the cluster, as the actors of a program stop when it ends. `actor_id` (with
        `replaced`, when it was re-placed) is given when the cluster's coordinator spawns again an actor of a lost
        node: it keeps its id, so that the refs to it stay valid."""
        if self.stopping:
            raise ActorsError(f"cannot spawn {name if name is not None else 'an actor'!r}: the system is stopping "
                              f"(main has ended, or the system was told to stop), and an actor started now would "
                              f"never be stopped")
        if self.cluster is None:
            if node is not None or labels:
                raise ActorsError("spawn(node=..., labels=...) places actors on the nodes of a cluster, and this "
                                  "system is not part of one: run it with cluster='etcd://HOST:PORT'")
        else:
            target = self.cluster.place(node, labels)
            if target is not None:      # another node: its driver spawns it (and does not place it again)
                ref = await self._ask_driver(target[1], SystemOp.SPAWN, pickled, name, opts, target[0], None,
                                             self.cluster.name)
                self.spawned_elsewhere[ref.id] = target[1]
                return ref
        try:
            cls, args, kwargs = cloudpickle.loads(pickled) if isinstance(pickled, bytes) else pickled
        except ModuleNotFoundError as exc:
            here = f"node {self.cluster.name!r}" if self.cluster is not None else "this system"
            raise SpawnError(
                f"cannot spawn {name if name is not None else 'an actor'!r} on {here}: its class, or an argument, "
                f"comes from module {exc.name!r}, which {here} cannot import; install that module there, or have "
                f"the program send its code: `cloudpickle.register_pickle_by_value({exc.name})` after importing "
                f"it") from None
        opts = opts if opts is not None else actor_options(cls, None)
        moved = actor_id is not None
        if not moved:
            actor_id = self.id_base | next(self._ids)
        if opts["persistent"] and self.cluster is not None and self.cluster.lost:
            raise ActorsError(f"cannot spawn persistent actor {name!r} here: this node lost its lease, and another "
                              f"node may run it")
        if opts["persistent"] and name is None:
            raise ActorsError(f"cannot spawn persistent {cls.__qualname__} without a name: its state is stored "
                              f"under its name, to be found again after a restart; pass name=")
        if opts["persistent"] and self.resilience_dir is None and self.cluster is not None:
            # (the program that asked may well have one: say which node lacks it, and how that node gets one)
            raise SpawnError(f"cannot spawn persistent actor {name!r} on node {self.cluster.name!r}: that node has "
                             f"no resilience directory; start it with `actors node ... --resilience-dir DIR`, or "
                             f"place the actor on a node that has one (spawn(..., node=NAME))")
        name = name if name is not None else f"{cls.__name__}-{actor_id}"
        if name in self.by_name:
            raise ActorsError(f"cannot spawn {cls.__qualname__} as {name!r}: an actor of that name is running")
        claim = None
        if self.cluster is not None:
            claim = await self.cluster.claim_name(name, actor_id, opts["persistent"])     # unique in the cluster
            if moved:
                was = self.cluster.moved.get(actor_id)
                await self.cluster.moved_here(actor_id)     # refs to it reach it here from now on
        payload = cloudpickle.dumps(SpawnSpec(
            id=actor_id, name=name, cls=cls, args=args, kwargs=kwargs, rundir=self.rundir,
            store=self.store.name, registry=_codec.default_registry.entries(),
            serialize=self.serialize, deserialize=self.deserialize, mailbox_size=self.mailbox_size,
            app=self.app, options=opts, resilience_dir=self.resilience_dir, log_levels=log_levels(),
            node=self.id_base >> NODE_SHIFT, secret=self.cluster.secret if self.cluster is not None else b"",
            epoch=claim or 0, shared_dir=self.shared_dir,
        ))
        info = ActorInfo(actor_id, name, cls, opts, payload)
        info.owner = owner
        info.claim = claim
        self.actors[actor_id] = info
        self.by_name[name] = actor_id
        self.endpoint.names[actor_id] = name
        try:
            await self._start(info)
        except BaseException:
            if claim is not None and name not in self.by_name:
                with trio.CancelScope(shield=True):
                    await self.cluster.release_name(name, claim)
                    if moved:           # not here after all: the coordinator's next pass tries again
                        await self.cluster.moved_back(actor_id, was)
            raise
        if self.cluster is not None:
            self.cluster.note_load()
            if opts["restart"] != "never":     # started again elsewhere (or at home) if its node is lost
                await self.cluster.record_spec(actor_id, pickled, name, opts, owner or self.cluster.name,
                                               replaced)
        return info.ref()

    async def _start(self, info: ActorInfo) -> None:
        """Fork the actor's process and wait for its on_start."""
        name, cls = info.name, info.cls
        token = next(self._tokens)
        done = self._spawned[token] = [trio.Event()]
        await self._to_forkserver(("spawn", token, info.payload))
        await done[0].wait()
        info.pid = self._spawned.pop(token)[1]
        if not info.pid:
            raise SpawnError(f"actor {name!r} ({cls.__qualname__}) cannot start: the fork server exited")
        self.by_pid[info.pid] = info
        if info.pid in self._early_exits:
            self._on_exit(info.pid, *self._early_exits.pop(info.pid))
        await info.ready.wait()
        if info.error is not None or info.returncode is not None and not info.started:
            # (an actor that reported READY and died before this ran has started: its end is supervision's)
            if info.restarting:         # keep its name and id for the next try
                if info.returncode is None:
                    await self._wait_or_kill(info, self.stop_timeout)
                raise SpawnError(f"actor {name!r} ({cls.__qualname__}) failed to restart: " + (
                    f"{info.error[0]}: {info.error[1]}" if info.error else
                    f"{info.last_failure} ({how_it_ended(info.returncode)})" if info.last_failure else
                    how_it_ended(info.returncode)))
            self.by_name.pop(name, None)
            if info.returncode is None:
                await self._wait_or_kill(info, self.stop_timeout)
            self.actors.pop(info.id, None)
            detail = (f"{info.error[0]}: {info.error[1]}\n\nremote traceback:\n{info.error[2]}" if info.error
                      else f"{info.last_failure} (its process exited with code {info.returncode})"
                      if info.last_failure
                      else f"its process exited with code {info.returncode} before it could report why (its "
                           f"error output, above, says)")
            raise SpawnError(f"actor {name!r} ({cls.__qualname__}) failed to start: {detail}")
        info.started = True

    async def _op_stop(self, actor_id: int, timeout: float = 5.0) -> None:
        if self.cluster is not None and self.cluster.node_of(actor_id) != self.cluster.number:
            try:                        # its own node's driver stops it
                await self._ask_driver(self.cluster.node_of(actor_id) << NODE_SHIFT, SystemOp.STOP, actor_id,
                                       timeout)
            except ActorStoppedError:
                pass                    # its node has left: it stopped with it
            self.spawned_elsewhere.pop(actor_id, None)
            return
        info = self.actors.get(actor_id)
        if info is None:
            return
        info.stopping = True
        try:
            # Asking waits for room in its mailbox (and in the store): an actor stuck in a handler behind a full
            # mailbox would never get the request, and the stop would never end. So the request waits `timeout`
            # at most, and an actor it cannot reach is killed at once.
            with trio.fail_after(timeout):
                await self.endpoint.send(actor_id, STOP, None)
            self.endpoint.flush_all()
        except ActorStoppedError:
            # It is ending already (a stop signal of its own, say: its connections close once its on_stop is done).
            # Its exit is waited for all the same: the system's end would end the fork server, and with it the actor,
            # still writing out what its on_stop printed. (Not one being restarted: its new process was not asked.)
            if not info.restarting:
                await self._wait_or_kill(info, timeout)
        except (trio.TooSlowError, StoreFullError):
            await self._wait_or_kill(info, 0, f"its mailbox or the store stayed full for {timeout:g} s")
        except OSError as exc:          # no connection to it could be made (out of file descriptors, say)
            await self._wait_or_kill(info, 0, f"no connection to it: {exc}")
        else:
            await self._wait_or_kill(info, timeout)
        self.endpoint.forget(actor_id)
        if info.claim is not None and not self.cluster.lost:   # now: the name is free as soon as stop returns
            await self.cluster.release_name(info.name, info.claim)
            if info.options["restart"] != "never":      # and no node waits for it or re-places it
                await self.cluster.drop_spec(info.id)

    async def _wait_or_kill(self, info: ActorInfo, timeout: float, unasked: str | None = None) -> None:
        """Wait `timeout` seconds for the actor to exit, then kill it. `unasked`: why it could not be asked to
        stop (it is killed at once)."""
        if info.exited.is_set():
            return
        if self.forkserver_gone:
            return await self._wait_or_kill_orphan(info, timeout, unasked)
        with trio.move_on_after(timeout):
            await info.exited.wait()
            return
        if info.pid <= 0:
            return
        self._warn_kill(info, timeout, unasked)
        try:
            os.kill(info.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with trio.move_on_after(5):
            await info.exited.wait()

    def _warn_kill(self, info: ActorInfo, timeout: float, unasked: str | None) -> None:
        if unasked is None:
            log.warning("actor %r did not stop within %g s; killing it", info.name, timeout)
            return
        # Out of descriptors, the system's stop reaches none of the actors it had no connection to, all for the same
        # reason: the first says it, and `stop_all` how many more there were. (A stop of one actor says it each time.)
        counts = self.unasked_stops
        seen = 0 if counts is None else counts.get(unasked, 0)
        if counts is not None:
            counts[unasked] = seen + 1
        if not seen:
            log.warning("actor %r could not be asked to stop (%s); killing it", info.name, unasked)

    async def _wait_or_kill_orphan(self, info: ActorInfo, timeout: float, unasked: str | None) -> None:
        """`_wait_or_kill` once the fork server is gone, and with it the reports of the actors' exits: the
        process's own end shows through a pidfd (the stop would otherwise wait out its timeout for a report that
        never comes), and the kill goes through it too (an orphan is reaped by init, and its pid may be reused)."""
        if info.pid <= 0:
            return
        try:
            fd = os.pidfd_open(info.pid)
        except OSError:
            return                      # gone already
        try:
            with trio.move_on_after(timeout):
                await trio.lowlevel.wait_readable(fd)
                return
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if poller.poll(0):
                return                  # it ended just as the wait did (a timeout of 0 never looked)
            self._warn_kill(info, timeout, unasked)
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                return
            with trio.move_on_after(5):
                await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)

    async def stop_all(self, timeout: float) -> None:
        """Stop every actor of this system: those running here, and those it spawned on other nodes. From here on
        no actor starts (`_op_spawn` refuses): one spawned by an `on_stop` meanwhile would be stopped by nobody."""
        self.stopping = True
        self.unasked_stops = {}
        try:
            async with trio.open_nursery() as nursery:
                for info in list(self.actors.values()):
                    nursery.start_soon(self._op_stop, info.id, timeout)
                for actor_id in list(self.spawned_elsewhere):
                    nursery.start_soon(self._op_stop, actor_id, timeout)
        finally:
            for count in self.unasked_stops.values():
                if count > 1:
                    log.warning("%d more actors could not be asked to stop, for the same reason; killed them",
                                count - 1)
            self.unasked_stops = None

    def stop_owned_by(self, node: str) -> None:
        """`node` left the cluster: stop the actors spawned here for it (nothing else would)."""
        for info in list(self.actors.values()):
            if info.owner == node and not info.stopping:
                log.info("stopping actor %r: node %r, which spawned it, left the cluster", info.name, node)
                self.nursery.start_soon(self._op_stop, info.id, self.stop_timeout)
