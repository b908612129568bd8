"""Supervision: what the driver does when an actor's process ends (restart it within its restart intensity, or
forget it), watches (`Terminated`), and the reports actors send before they exit.

The actor side of supervision (a handler's error policy) is in dispatch.py.
"""
from __future__ import annotations

import logging
import os
import signal

import trio

from _fastser import _codec
from actors._actor import restart_delay
from actors._exceptions import ActorStoppedError, SpawnError, SupervisionError
from actors._ref import ActorRef
from actors._runtime.registry import ActorInfo, how_it_ended
from actors._wire.protocol import NODE_SHIFT, TELL, SystemOp

DEATH_CAUSE_WAIT = 2.0      # seconds to wait, at most, for the news of an exit (`_after_exit` may take 1 s)

log = logging.getLogger(__name__)


class Terminated:
    """The message `system.watch` delivers: the watched actor stopped (restarting False) or crashed."""

    def __init__(self, ref: ActorRef, reason: str, restarting: bool):
        self.ref = ref
        self.reason = reason
        self.restarting = restarting

    def __repr__(self):
        return f"Terminated({self.ref!r}, {self.reason!r}, restarting={self.restarting})"


_codec.register_class(Terminated)


class Supervisor:
    """The supervising part of `Driver` (kept in its own room)."""

    def _on_exit(self, pid: int, code: int, why: str = "") -> None:
        self.store.reclaim(pid)         # what the dead process held in the store (refs, views, shared arrays)
        info = self.by_pid.pop(pid, None)
        if info is None:
            return
        if why and info.last_failure is None:
            info.last_failure = why         # it died before it could report (it could not load its class, say)
        if not info.options["persistent"]:
            # its connection went with it; a restart gets a fresh one. (A persistent actor's link is left to its
            # acker, which holds the unacked tells and resends them once the actor is back.)
            self.endpoint.forget(info.id)
        # An actor that has connected to us may have sent its READY (and served messages since) or a failure
        # report just before it died: read those first, or a started actor would pass for a failed start, and its
        # watchers would never hear of its end. (A connection not read yet may be its: then too. One still waiting
        # to be accepted is accepted first: the news of the exit may come before the listener's turn.)
        if not info.started and self.endpoint.nursery is not None:
            self.endpoint.accept_waiting()
        connected = info.id in self.endpoint.reply_links or self.endpoint.unnamed
        if (info.started or connected) and self.endpoint.nursery is not None:
            self.endpoint.nursery.start_soon(self._after_exit, info, pid, code)
        else:
            self._decide(info, pid, code)

    async def _after_exit(self, info: ActorInfo, pid: int, code: int) -> None:
        # Read what the actor sent before it died (a failure or stopping report) before deciding.
        with trio.move_on_after(1.0):
            await self.endpoint.closed_by.setdefault(info.id, trio.Event()).wait()
        self.endpoint.closed_by.pop(info.id, None)
        self._decide(info, pid, code)

    def _decide(self, info: ActorInfo, pid: int, code: int) -> None:
        info.returncode = code
        info.ended_pid = pid
        info.exited.set()
        info.ready.set()
        if info.restarting and not info.started:
            return                      # this restart failed: _restart counts it and decides
        how = how_it_ended(code)
        reason = f"{info.last_failure} ({how})" if info.last_failure else how
        info.exit_reason, info.exit_time = reason, trio.current_time()
        policy = info.options["restart"]
        restart = not info.stopping and info.started and info.pid and (
            policy == "always" or (policy == "on-failure" and code != 0))
        # a stop asked for ends with exit code 0, or the kill after its timeout; any other end while the system
        # stops (a crash just before it began, say) is a failure, and is reported as one
        asked = info.stopping and code in (0, -signal.SIGKILL)
        if not asked and info.error is None and info.ready.is_set() and info.started:
            log.error("actor %r (pid %d) %s: %s", info.name, pid,
                      "failed" if code else "ended", reason)
        for watcher_id, watcher_name in list(info.watchers.items()):
            self._notify(watcher_id, watcher_name, Terminated(info.ref(), reason, bool(restart)))
        if restart and self.endpoint.nursery is not None:
            info.last_failure = None
            self.endpoint.nursery.start_soon(self._restart, info, reason)
            return
        self._gone(info)

    async def death_cause(self, actor_id: int) -> str | None:
        """Why actor `actor_id` ended, for an ask its end cut short: the asker learns of the end from the hang-up
        of its connection, and this process from the fork server, a moment apart, so this waits for the latter
        (DEATH_CAUSE_WAIT at most)."""
        info = self.actors.get(actor_id) or next((i for i in reversed(self.ended) if i.id == actor_id), None)
        if info is None:
            return None
        if info.returncode is None and not (info.exit_time is not None and
                                            trio.current_time() - info.exit_time < DEATH_CAUSE_WAIT):
            # (not when it has ended and been restarted already: its new incarnation's exit is not the news)
            with trio.move_on_after(DEATH_CAUSE_WAIT):
                await info.exited.wait()
        return info.exit_reason

    def _gone(self, info: ActorInfo) -> None:
        """The actor ended for good: forget it, and tell reconnecting senders not to wait for it."""
        self.by_name.pop(info.name, None)
        self.actors.pop(info.id, None)
        self.ended.append(info)
        self.transport.mark_gone(info.id)
        if self.cluster is not None and self.nursery is not None and not self.cluster.lost:
            # (A node that lost its lease leaves its names to run out with it, and its specs to the node that
            # re-places its actors.)
            if info.claim is not None:
                self.nursery.start_soon(self.cluster.release_name, info.name, info.claim)
            if info.options["restart"] != "never" and info.started:
                # (one that never started here is not this node's to forget: a re-placement that failed to start
                # stays the coordinator's to try again)
                self.nursery.start_soon(self.cluster.drop_spec, info.id)
            self.cluster.note_load()

    def node_gone(self, number: int, name: str, reason: str) -> None:
        """Cluster node `number` (`name`) left or is lost (`reason`): no link to it lives on, here or in this node's
        actors; the watchers of its actors hear of it, as they would of the actors' exits; the actors it spawned
        here stop."""
        self.endpoint.node_gone(number)
        for info in list(self.actors.values()):
            if info.pid and info.returncode is None:
                self.endpoint.tell_node_gone(info.id, number)
        for target_id in [t for t in self.remote_watches if self.cluster.node_of(t) == number]:
            for watcher_id, watcher_name in self.remote_watches.pop(target_id).items():
                target = ActorRef(target_id, self.endpoint.names.get(target_id, f"#{target_id}"))
                self._notify(watcher_id, watcher_name, Terminated(target, reason, False))
        self.stop_owned_by(name)

    def _notify(self, watcher_id: int, watcher_name: str, message) -> None:
        try:
            self.endpoint.names.setdefault(watcher_id, watcher_name)
            self.endpoint.post(watcher_id, TELL, self.outgoing(message))
        except ActorStoppedError as exc:
            # (while the whole system stops, a watcher stopped before the actor it watched: nothing to say)
            log.log(logging.DEBUG if self.stopping else logging.WARNING,
                    "could not tell %r that an actor it watches ended: %s", watcher_name, exc)
        except Exception as exc:
            log.warning("could not tell %r that an actor it watches ended: %s", watcher_name, exc)

    async def _restart(self, info: ActorInfo, reason: str) -> None:
        """Start a failed actor again, same id and name (refs to it stay valid), within its restart intensity."""
        opts = info.options
        failed = False                  # the last try failed: said once the next one is sure to come
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
            if failed:
                log.warning("%s; trying again", reason)
            await trio.sleep(restart_delay(opts["restart_backoff"], len(info.restarts)))
            if opts["persistent"] and self.cluster is not None and self.cluster.lost:
                self._gone(info)        # fenced: another node may run it now
                return
            info.restarts.append(trio.current_time())
            info.restart_count += 1
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
                failed = True
                continue
            finally:
                info.restarting = False
            break
        log.warning("actor %r restarted (restart %d within %g s)", info.name, len(info.restarts),
                    opts["restart_window"])

    def kill_persistent(self, why: str) -> None:
        """Fencing: kill every persistent actor here at once (SIGKILL: not one more write to its journal), and
        restart none. Another node may run them from now on."""
        for info in self.actors.values():
            if info.options["persistent"] and info.pid and info.returncode is None:
                info.stopping = True
                log.error("killing persistent actor %r: %s, and another node may run it from now on", info.name,
                          why)
                try:
                    os.kill(info.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def fail(self, exc: BaseException) -> None:
        """Stop the whole system with `exc` (raised from actors.run)."""
        if self.fatal is None:
            self.fatal = exc
            exc.logged_by_system = True     # `actors run` shows this line, not a traceback of main's code
            log.error("%s", exc)
            if self.main_scope is not None:
                self.main_scope.cancel()

    def _note_ready(self, actor_id: int, error, pid: int) -> None:
        info = self.actors.get(actor_id)
        # (a READY read after the exit of the process that sent it was decided, the driver having been too busy to
        # read it within _after_exit's second, is a dead incarnation's: it says nothing of the next one's start)
        if info is not None and pid != info.ended_pid:
            info.error = error
            if error is None:
                info.started = True     # its on_start has finished: an exit from now on is a failure to report
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

    async def _op_watch(self, target_id: int, watcher_id: int, watcher_name: str) -> None:
        if self.cluster is not None and self.cluster.node_of(target_id) != self.cluster.number:
            try:                        # the target's own node watches it; this one, in case that node is lost
                await self._ask_driver(self.cluster.node_of(target_id) << NODE_SHIFT, SystemOp.WATCH, target_id,
                                       watcher_id, watcher_name)
                self.remote_watches.setdefault(target_id, {})[watcher_id] = watcher_name
            except ActorStoppedError:
                self._notify(watcher_id, watcher_name, Terminated(ActorRef(target_id, self.endpoint.names.get(
                    target_id, f"#{target_id}")), "its node has left the cluster", False))
            return
        info = self.actors.get(target_id)
        if info is None:
            self._notify(watcher_id, watcher_name, Terminated(ActorRef(target_id, self.endpoint.names.get(
                target_id, f"#{target_id}")), "it was not running", False))
            return
        info.watchers[watcher_id] = watcher_name
