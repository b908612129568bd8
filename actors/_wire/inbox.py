"""The inbox: reading the records that arrive on the links peers opened to us, and running them through the
endpoint's handler in batches.

A reader queues each batch it reads in one step; when the handlers are idle it runs the batch right there, with no
hop to another task. Bounds (backpressure, never dropping): at most INBOX_BATCHES batches wait; past that the reader
stops reading, and the kernel's socket buffers and then the sender's outbox fill up.
"""
from __future__ import annotations

import gc
import operator
import os
import select
import time

import trio

from _fastser._shm import spin_readable, split_records
from actors._wire.asks import SPIN, resolve
from actors._wire.protocol import ACK, ERROR, HELLO, RECORD, RECORD_SIZE, REPLY, STATUS

INBOX_BATCHES = 8
READ_AHEAD = 64         # tells decoded at a time, ahead of the handler (Arena.read_tells)
JOURNAL_AHEAD = 400     # tells a persistent actor decodes while the disk writes their journal: about the fsync's
                        # time in decoding, and few enough to stay in the CPU's cache
READ_SIZE = 1 << 18
SPIN_SKIP_MAX = 1024        # after spins that catch nothing, spin once in this many waits at most
QUIET_WAIT_MAX = 0.25       # seconds a reader sleeps outside trio's loop at most, before it goes back through it


class SpinPolicy:
    """Whether to spin for something another process does, while spinning pays. After a spin that caught nothing
    it does not spin for the next 2, then 4, ... up to SPIN_SKIP_MAX waits; a spin that catches what it waited for
    makes it spin every time again.

    A reader spins so for its next records: where peers answer within a spin (a ring of two actors on two CPUs) it
    is then never put to sleep and woken per message; where they take longer (more processes with work than CPUs)
    it leaves the CPU to them, but for one spin in SPIN_SKIP_MAX waits. A sender of large messages spins so for
    its receiver to catch up (`Endpoint._keep_lead`)."""
    __slots__ = ("misses", "skip")

    def __init__(self):
        self.misses = 0
        self.skip = 0

    def should_spin(self) -> bool:
        if self.skip:
            self.skip -= 1
            return False
        return True

    def missed(self) -> None:
        self.misses += 1
        self.skip = min(1 << self.misses, SPIN_SKIP_MAX)

    def caught(self) -> None:
        self.misses = 0


class QuietWait:
    """Waiting for one link's next records without a pass through trio's loop, when nothing else in this process
    could run meanwhile.

    A reader whose socket is empty normally waits in trio (`wait_readable`): an epoll registration, a pass of the
    run loop and a task switch, per message when messages come one at a time (a token ring: one wakeup per hop).
    When no other task of the process is runnable, nothing is lost by sleeping in the kernel instead, in one poll()
    on the link's socket and on trio's own epoll descriptor, which becomes readable when anything trio waits for is
    ready (another socket, a signal, a wakeup from a thread). It returns True when the link has records; False
    (wait through trio instead) when another task is runnable, a deadline is near or has passed, something else
    woke, this task is cancelled, or trio's internals are not the ones this relies on (then it is off for good).
    Needs the run's clock to be the system clock, not a guest run, and nobody waiting for the run to go idle.
    """
    __slots__ = ("context", "fd", "poller", "runner", "step", "stepper")

    def __init__(self, fd: int):
        self.fd = fd
        self.poller = None
        self.runner = None
        self.stepper = None
        self.step = -1
        try:
            from trio._core._run import GLOBAL_RUN_CONTEXT, SystemClock
            runner = GLOBAL_RUN_CONTEXT.runner
            if type(runner.clock) is not SystemClock or runner.is_guest:
                return
            epoll_fd = runner.io_manager._epoll.fileno()
            runner.deadlines.next_deadline, runner.tasks, runner.waiting_for_idle    # noqa: B018 (present?)
            me = GLOBAL_RUN_CONTEXT.task
            me._cancel_status.effectively_cancelled, me._schedule_points, me._next_send_fn      # noqa: B018
        except (ImportError, AttributeError):
            return
        self.context = GLOBAL_RUN_CONTEXT
        self.runner = runner
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.poller.register(epoll_fd, select.POLLIN)

    def _timeout(self) -> float:
        """Seconds this task may keep trio's loop from running: 0 if another task is runnable (or it is
        cancelled), else until the next deadline, at most QUIET_WAIT_MAX."""
        runner = self.runner
        if runner is None or runner.runq or runner.waiting_for_idle:
            return 0.0
        me = self.context.task
        if me._cancel_status.effectively_cancelled:
            return 0.0                      # cancelled (by its own handler, say): trio's wait raises it
        if me is not self.stepper or me._schedule_points != self.step:
            # The first wait of this step of the task: is another task of trio's current batch still to run? Its
            # tasks are not in runq. Later waits of the same step need not look again (each look touches every
            # task, which costs a ring of processes, whose caches are cold at each hop): the batch waits for this
            # step to end, and what becomes runnable meanwhile goes to runq.
            for task in runner.tasks:
                if task._next_send_fn is not None and task is not me:
                    return 0.0              # scheduled to run (in this batch or the next): let trio run it
            self.stepper = me
            self.step = me._schedule_points
        return min(QUIET_WAIT_MAX, runner.deadlines.next_deadline() - runner.clock.current_time())

    def __call__(self) -> bool:
        timeout = self._timeout()
        if timeout <= 0:
            return False
        events = self.poller.poll(timeout * 1000)
        return len(events) == 1 and events[0][0] == self.fd

    def alone(self) -> bool:
        """May this task go on spinning? Not when anything else in the process could run: another task, a due
        deadline, or an event trio waits for (another link's records, in fan-in); then the spin would hold it up.
        True when this cannot be told (trio's internals are not there). (A reader spins in a Python loop of reads:
        each pass takes a few microseconds, which lets a streamed batch grow before it is read.)"""
        if self.runner is None:
            return True
        return self._timeout() > 0 and self.poller.poll(0) in ([], [(self.fd, select.POLLIN)])

    def spin_regardless(self, seconds: float) -> bool:
        """Spin for up to `seconds` for the link's next records (an asker's spin for its answer), whatever else
        could run; True once they are in. In C (`spin_readable`): a look costs one poll."""
        return spin_readable(self.fd, -1, seconds)


class Inbox:
    """The receiving side of `Endpoint` (a part of it, kept in its own room)."""

    async def _reader(self, link):
        """Read a link a peer opened to us, for as long as it lives; then it is closed, and its peer's replies
        have nowhere to go."""
        link.inbuf = bytearray(READ_SIZE)
        try:
            await self._read_link(link, None, SPIN)
        finally:
            if link.peer < 0:
                self.unnamed -= 1       # it closed before it said who it was
            else:
                self.closed_by.setdefault(link.peer, trio.Event()).set()
                link.dead = True
                if self.reply_links.get(link.peer) is link:
                    del self.reply_links[link.peer]
            link.close()

    async def _read_link(self, link, waiter=None, spin: float = 0.0) -> bool:
        """The one loop that reads records, for every link.

        On a link a peer opened to us, it runs the records it reads through the handler (or queues them while the
        handler is busy) until the link ends. On one of our outgoing links it takes the replies to our asks and a
        persistent receiver's acks: an asker reads until its own reply (`waiter`) is in; a persistent link's reader
        (no waiter) for as long as the link lives. False once the peer closed the link.

        Waiting: after a read that brought records (and, for an asker, from the start) it spins for `spin` seconds,
        yielding the CPU, before sleeping, so that a busy receiver stays on its own CPU instead of being woken onto
        its sender's, a reader whose next records come within microseconds (a ring of two actors) is not put to
        sleep and woken for each, and an asker whose reply comes within microseconds is not put to sleep. A reader
        spins only while spinning pays (`SpinPolicy`). Sleeping is a `QuietWait` when it can be, else trio's.
        """
        buf = link.inbuf
        view = memoryview(buf)
        size = len(buf)
        have = link.have
        split = split_records
        pending = self.pending
        recv_into = link.recv_into
        drained = False
        spin_until = time.perf_counter() + spin if waiter is not None else 0.0
        spun = False            # this wait has spun (found the socket empty) at least once
        policy = SpinPolicy()
        epoch = 0
        quiet = None
        fd = link.fileno()
        if fd is not None:
            if waiter is None:
                quiet = QuietWait(fd)
            else:
                # an asker sleeps quietly too, when nothing else of the process could run meanwhile (the driver's
                # program waiting for an answer, with the spin off); its spin goes on whatever else is runnable,
                # as it always has. Made once per link: an ask costs no poll object of its own.
                quiet = link.quiet
                if quiet is None:
                    quiet = link.quiet = QuietWait(fd)
        alone = quiet.alone if quiet is not None and waiter is None else None
        # an asker's spin, for its answer, goes on whatever else is runnable, in C; a reader's, in the loop below
        spin_for = quiet.spin_regardless if quiet is not None and waiter is not None else None
        # An asker's answer is not in yet: it looks before it reads (a spin's poll finds that out for less than a read
        # that raises BlockingIOError), and with the spin off sleeps at once.
        look = False
        if waiter is not None and spin_for is not None:
            if spin > 0:
                look = True
            else:
                drained = True
        try:
            while waiter is None or not waiter.kind:
                if look:
                    look = False
                    if spin_for(spin_until - time.perf_counter()):
                        spun = True         # the answer is in: the read below takes it
                    else:
                        drained = True
                if drained:                 # the last read came up short: the socket is empty, wait first
                    if quiet is None or not quiet():
                        try:
                            await link.wait_readable()
                        except trio.ClosedResourceError:
                            return False    # closed here: the peer is gone (a node lost, say)
                try:
                    n = recv_into(view[have:])
                except BlockingIOError:
                    if not drained:
                        if not spun:
                            spun = True
                            if waiter is None:      # a reader's spin runs from the end of its batch
                                spin_until = time.perf_counter() + spin
                        left = spin_until - time.perf_counter()
                        if left > 0:
                            if spin_for is not None:
                                if spin_for(left):
                                    continue
                            elif alone is None or alone():
                                os.sched_yield()
                                continue
                        if waiter is None:
                            policy.missed()
                        spun = False
                    drained = True
                    continue
                except OSError:
                    return False
                if n == 0:
                    return False
                if spun:
                    if waiter is None:
                        policy.caught()
                    spun = False
                if waiter is not None:
                    spin_until = time.perf_counter() + spin
                drained = have + n < size
                if drained and spin and waiter is None and policy.should_spin():
                    drained = False             # spin for the next records before sleeping (when the read after
                                                # the batch finds none: streamed, they are often in by then)
                have += n
                usable = have - have % RECORD_SIZE
                work, control = split(buf, usable)
                if control is not None:         # the reader's own records, in order, before the work they came with
                    for rec in control:
                        kind = rec[1]
                        if kind == REPLY or kind == ERROR:
                            waiter_of = pending.pop(rec[3], None)
                            if waiter_of is None:
                                self.arena.decref_id(rec[0])     # its ask timed out: a dead letter
                                continue
                            resolve(waiter_of, kind, rec[0])
                        elif kind == HELLO:         # the first record on a link: nothing it carries came before
                            epoch = rec[3]
                            if link.peer < 0:
                                self._reply_link(rec[2], link)
                        elif kind == ACK:
                            self._acked(link, rec[3])
                        elif kind == STATUS:
                            self._answer_status(link)
                        else:                       # NODE_GONE
                            self.node_gone(rec[3])
                if usable < have:
                    buf[:have - usable] = buf[usable:have]
                have -= usable
                if not work:
                    continue
                if link.peer < 0:
                    self._reply_link(work[0][2], link)
                if self.busy or self.queue or self.halted or self.handle is None:
                    await self._enqueue((work, epoch))
                    if not self.busy and self.queue and not self.halted and self.handle is not None:
                        # the handlers went idle while we waited for room: nobody else will run the queue
                        work, epoch = self.queue.popleft()
                        self.queue_room.set()
                        await self._run(work, epoch)
                    continue
                # idle: run the handlers right here, with no hop to another task
                await self._run(work, epoch)
            return True
        finally:
            link.have = have
            view.release()

    def figures(self) -> tuple[int, int]:
        """(records handled, the one in progress included; records waiting for the handler: the rest of the batch
        in progress, the queued batches, and what is still unread on the connections peers opened to us)."""
        left = operator.length_hint(self.running) + (operator.length_hint(self.ahead) if self.ahead else 0)
        unread = sum(link.unread() + link.have for link in self.reply_links.values() if not link.dead)
        return (self.handled - left,
                left + sum(len(batch) for batch, _epoch in self.queue) + unread // RECORD_SIZE)

    def _answer_status(self, link) -> None:
        # Answered here by the reader, not by the handler: an actor busy in a handler (awaiting) still answers,
        # and nothing the status request queues behind is counted as handled.
        handled, waiting = self.figures()
        try:
            link.send(RECORD.pack(handled, STATUS, self.id, waiting))
        except OSError:
            pass            # the asker is gone

    def _reply_link(self, src: int, link):
        # The connection `src` opened to us is where our replies (and acks) to it go.
        if link.peer < 0:
            self.unnamed -= 1
        link.peer = src
        self.reply_links[src] = link
        return link

    async def _enqueue(self, work: tuple) -> None:
        # Queue a batch while the handlers are busy; wait while the queue is full (backpressure reaches the socket).
        while len(self.queue) >= INBOX_BATCHES and not self.halted:
            if self.queue_room.is_set():
                self.queue_room = trio.Event()
            await self.queue_room.wait()
        if self.halted:
            self._release(work[0])
            return
        self.queue.append(work)

    async def _run(self, batch: list, epoch: int) -> None:
        """Handle `batch`, then everything queued meanwhile, in order, right here in the reader task. A handler
        that suspends holds up only its own connection: replies to asks travel on the asking connection, read by
        the asker, so awaiting an ask inside a handler never waits on this reader."""
        handle = self.handle
        fast_tell = self.fast_tell
        read_tells = self.arena.read_tells
        self.busy = True
        self.batch_task = trio.lowlevel.current_task()
        try:
            while True:
                decoded = None
                journaling = self.journal_batch is not None and batch and not self.halted
                if journaling:
                    # a persistent actor journals the batch (dropping what it already has), acks, then handles;
                    # it decodes the batch while the disk writes it, so that the fsync waits for less
                    src = batch[0][2]
                    batch, ack = self.journal_batch(batch, epoch)
                self.handled += len(batch)
                self.running = records = iter(batch)    # how far it has got, for status, at no cost per record
                if journaling:
                    if fast_tell is not None:
                        self.ahead = decoded = self._decode_ahead(batch, records)
                    self.journal_durable()
                    if ack:
                        self.send_ack(src, ack)
                        self.flush_all()    # now, not after the batch: a sender at its window waits for it
                while True:
                    # tells go straight to the actor's receive, decoded a run at a time; anything else (or a tell
                    # that does not decode here) through `handle`, which deals with its own errors
                    if fast_tell is not None:
                        if decoded is None:
                            decoded = read_tells(batch, records, READ_AHEAD)
                        self.ahead = msgs = iter(decoded)
                        decoded = None
                        for msg in msgs:
                            try:
                                await fast_tell(msg)
                            except Exception as exc:
                                self.on_tell_error(self._current(batch), exc)
                            if self.halted:
                                break
                        self.ahead = msgs = msg = None  # the last message: its block is freed below
                    if self.halted:
                        self._release(records)          # (what was decoded ahead is dropped with `msgs`)
                        break
                    rec = next(records, None)
                    if rec is None:
                        break
                    if await handle(*rec):
                        self.stop_receiving()
                if self.after_batch is not None:
                    self.after_batch()
                self.flush_all()
                self.arena.flush_frees()
                if not self.queue:
                    return
                batch, epoch = self.queue.popleft()
                self.queue_room.set()
        finally:
            self.busy = False

    def _decode_ahead(self, batch: list, records) -> list:
        # The first JOURNAL_AHEAD tells of a batch, decoded while the disk writes the journal. With the collector
        # paused: hundreds of new containers, all alive, would otherwise make it pass over them.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self.arena.read_tells(batch, records, JOURNAL_AHEAD)
        finally:
            if collecting:
                gc.enable()

    def _current(self, batch: list) -> tuple:
        # The record being handled (for an error's message): the last one `read_tells` took, but those after it.
        return batch[len(batch) - operator.length_hint(self.running) - operator.length_hint(self.ahead) - 1]

    def start_handling(self) -> None:
        """Start running records through the handler (what arrived before waits in the queue until now). The
        handler's per-record methods are looked up here, once, not per record."""
        handler = self.handler
        self.fast_tell = handler.fast_tell
        self.on_tell_error = handler.on_tell_error
        self.journal_batch = handler.journal_batch
        self.journal_durable = handler.journal_durable
        self.after_batch = handler.after_batch
        self.handle = handler.handle
        if self.queue and not self.busy:
            self.nursery.start_soon(self._run_queued)

    async def _run_queued(self) -> None:
        if self.queue and not self.busy and not self.halted:
            batch, epoch = self.queue.popleft()
            self.queue_room.set()
            await self._run(batch, epoch)

    def _release(self, batch) -> None:
        for off, _kind, _src, _call in batch:
            self.arena.decref_id(off)

    def stop_receiving(self) -> None:
        """Release whatever is queued; later records are released on arrival (dead letters)."""
        self.halted = True
        self.stopped.set()
        while self.queue:
            self._release(self.queue.popleft()[0])
        self.queue_room.set()
