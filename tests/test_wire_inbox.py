"""The inbox (actors/_wire/inbox.py): per-sender order, fan-in, backpressure (full mailboxes), batches that
arrive while a handler awaits, and the blocks of handled messages released at once.

Every system runs in this process through `run()` (a deadline around `main`), with real actor processes."""
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
import trio
import trio.testing

from actors import MailboxFullError
from actors._wire import inbox
from actors._wire.inbox import SPIN_SKIP_MAX, QuietWait, SpinPolicy
from _helpers.actors import (
    Blocker,
    Producer,
    Recorder,
    Sender,
    Sink,
    Spammer,
    block,
    write_file,
)
from _helpers.processes import run, wait_until


def test_per_sender_order_of_ten_thousand_tells():
    async def main(system):
        rec = await system.spawn(Recorder, name="recorder")
        for i in range(10_000):
            await rec.tell(i)
        got = await rec.ask("get")
        assert len(got) == 10_000
        assert got == list(range(10_000))

        rec2 = await system.spawn(Recorder, name="recorder-2")
        sender = await system.spawn(Sender, name="sender")
        got = await sender.ask((rec2, 10_000))
        assert got == list(range(10_000))

    run(main)


def test_fan_in_from_several_actors():
    n, producers = 2000, 4

    async def main(system):
        sink = await system.spawn(Recorder, name="sink")
        refs = [await system.spawn(Producer, name=f"producer-{k}") for k in range(producers)]
        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(ref.ask, (sink, n))
        got = await sink.ask("get")
        assert len(got) == n * producers
        for ref in refs:
            assert [i for name, i in got if name == ref.name] == list(range(n))

    run(main)


def test_full_mailbox_tell_nowait_raises_mailbox_full(tmp_path):
    gate = str(tmp_path / "gate")

    async def main(system):
        ref = await system.spawn(Blocker, gate, name="blocker")
        await block(ref, gate)
        sent = 0
        with pytest.raises(MailboxFullError, match="blocker"):
            while sent < 2_000_000:
                ref.tell_nowait(sent)
                sent += 1
        assert 16 <= sent < 2_000_000
        with pytest.raises(MailboxFullError):         # still full: nothing was taken meanwhile
            ref.tell_nowait(-1)
        write_file(gate, "")
        return sent

    run(main, mailbox_size=16, stop_timeout=2)


def test_full_mailbox_tell_waits_and_delivers_everything_once_unblocked(tmp_path):
    gate = str(tmp_path / "gate")

    async def main(system):
        ref = await system.spawn(Blocker, gate, name="blocker")
        await block(ref, gate)
        sent = 0
        with pytest.raises(MailboxFullError):
            while sent < 2_000_000:
                ref.tell_nowait(sent)
                sent += 1
        extra = 500
        done = trio.Event()

        async def more():
            for i in range(sent, sent + extra):
                await ref.tell(i)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(more)
            await trio.sleep(1.0)
            assert not done.is_set(), "`await tell` did not wait for room in a full mailbox"
            write_file(gate, "")
            await done.wait()
        got = await ref.ask("get")
        assert len(got) == sent + extra
        assert got == list(range(sent + extra))

    run(main, mailbox_size=16, stop_timeout=2)


def test_messages_sent_while_a_handler_awaits_are_all_handled(tmp_path):
    """Many small batches arrive while a handler awaits: none is lost or reordered."""
    gate = str(tmp_path / "gate")

    async def main(system):
        ref = await system.spawn(Blocker, gate, name="blocker")
        await block(ref, gate)
        for i in range(300):
            await ref.tell(i)
            await trio.sleep(0.001)         # one small batch each
        write_file(gate, "")
        assert await ref.ask("get") == list(range(300))

    run(main, stop_timeout=2)


def test_many_senders_to_a_blocked_actor_are_all_handled_once_unblocked(tmp_path):
    gate = str(tmp_path / "gate")
    senders, n = 12, 50

    async def main(system):
        ref = await system.spawn(Blocker, gate, name="blocker")
        spammers = [await system.spawn(Spammer, name=f"spammer-{k}") for k in range(senders)]
        await block(ref, gate)
        for spammer in spammers:                # one connection, and one batch, per sender
            assert await spammer.ask((ref, n)) == n
        # each spammer answers after its batch has been written to the blocker, whose idle readers take it (and
        # queue it, or hold it back once 8 batches wait) while the handler stays parked
        write_file(gate, "")
        with trio.move_on_after(10):            # every message arrived before the gate opened: all get handled
            while await ref.ask("count") < senders * n:
                await trio.sleep(0.05)
        got = await ref.ask("get")
        assert len(got) == senders * n
        for spammer in spammers:
            assert [i for name, i in got if name == spammer.name] == list(range(n))

    run(main, timeout=15, stop_timeout=1)


async def _store_back_to(system, used, timeout=10):
    async def back():
        return system.store.stats()["used"] <= used
    await wait_until(back, timeout=timeout, what="the store's use to fall back")


def test_an_idle_actor_releases_the_block_of_its_last_message():
    async def main(system):
        sink = await system.spawn(Sink, name="sink")
        await sink.ask("warm")
        base = system.store.stats()["used"]
        await sink.tell(np.ones(4 << 20))            # 32 MiB: far above anything else in the store
        await _store_back_to(system, base)          # with nothing more sent to it
        return True

    assert run(main, timeout=30, store_capacity="128M")


def test_a_message_nearly_as_large_as_the_store_does_not_wedge_it():
    async def main(system):
        sink = await system.spawn(Sink, name="sink")
        for _ in range(3):                         # each needs the previous one's block to be free
            await sink.tell(np.ones(6 << 20))      # 48 MiB into a 64 MiB store
        return await sink.ask("count")

    assert run(main, timeout=30, store_capacity="64M") == 4


# -- waiting outside trio's loop (QuietWait) ----------------------------------------------------------------------

@pytest.fixture
def records_waiting():
    """A socket with a record waiting to be read, and its peer."""
    a, b = socket.socketpair()
    with a, b:
        b.send(b"x" * 24)
        yield a


@pytest.mark.trio
async def test_a_quiet_wait_returns_true_when_its_socket_has_records(records_waiting):
    assert QuietWait(records_waiting.fileno())() is True


@pytest.mark.trio
async def test_a_quiet_wait_leaves_the_waiting_to_trio_when_another_task_is_scheduled(records_waiting):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.lowlevel.checkpoint)        # scheduled, not yet run
        assert QuietWait(records_waiting.fileno())() is False


@pytest.mark.trio
async def test_a_quiet_wait_leaves_the_waiting_to_trio_while_a_task_of_the_same_batch_is_still_to_run(
        records_waiting):
    seen = []
    both = trio.Event()

    async def waiter():
        seen.append(QuietWait(records_waiting.fileno())())
        if len(seen) == 2:
            both.set()
        await both.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)          # both run in trio's next batch, in either order
        with trio.fail_after(10):
            await both.wait()
    assert sorted(seen) == [False, True]    # the first saw the other still to run; the second, nobody


@pytest.mark.trio
async def test_a_quiet_wait_sees_a_task_scheduled_later_in_the_step_that_already_looked(records_waiting):
    quiet = QuietWait(records_waiting.fileno())
    async with trio.open_nursery() as nursery:
        assert quiet() is True              # looked at every task: none to run
        nursery.start_soon(trio.lowlevel.checkpoint)
        assert quiet() is False


@pytest.mark.trio
async def test_a_quiet_wait_leaves_the_waiting_to_trio_when_a_deadline_is_due_or_its_task_cancelled(records_waiting):
    quiet = QuietWait(records_waiting.fileno())
    with trio.CancelScope(deadline=trio.current_time() + 1e-9):
        assert quiet() is False
    with trio.CancelScope() as scope:
        scope.cancel()              # as a handler cancelling its own process's scope does
        assert quiet() is False
    assert quiet() is True


@pytest.mark.trio
async def test_a_quiet_wait_wakes_and_a_reader_stops_spinning_when_anything_else_trio_waits_for_is_ready(
        monkeypatch):
    monkeypatch.setattr(inbox, "QUIET_WAIT_MAX", 60.0)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.lowlevel.wait_readable, c)
            await trio.testing.wait_all_tasks_blocked()
            quiet = QuietWait(a.fileno())
            assert quiet.alone() is True
            d.send(b"!")            # ready for the other task; nothing for the quiet wait's own socket
            assert quiet.alone() is False
            start = time.monotonic()
            assert quiet() is False
            assert time.monotonic() - start < 30, "it slept on, although another task's socket was ready"
            start = time.monotonic()
            assert quiet.spin_regardless(0.05) is False     # an asker's spin goes on though another task could run
            assert time.monotonic() - start >= 0.05, "an asker's spin ended before its time without its records"
            b.send(b"r")            # an asker's spin ends only with its own records
            assert quiet.spin_regardless(60.0) is True


class Interrupted(Exception):
    pass


def test_a_signal_handler_runs_during_a_spin_and_may_end_it():
    """A spin runs in C without the GIL; a signal's Python handler still runs within a millisecond, not once the
    spin is over (an asker spinning with a large ACTORS_SPIN_US would otherwise hold up Ctrl-C)."""
    def interrupt(signum, frame):
        raise Interrupted

    go, done = threading.Event(), threading.Event()

    def send_signals():
        # woken by `go`, this thread runs once the spin has released the GIL (this process's only other thread
        # holds it until then): its signals arrive during the spin
        if go.wait(30):
            while not done.is_set():
                os.kill(os.getpid(), signal.SIGUSR1)
                done.wait(0.01)         # (a signal every 10 ms until the spin has ended)

    a, b = socket.socketpair()
    sender = threading.Thread(target=send_signals)
    sender.start()
    old = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with a, b:
            quiet = QuietWait(a.fileno())       # outside trio: it spins as asked
            start = time.monotonic()
            with pytest.raises(Interrupted):
                go.set()
                quiet.spin_regardless(30.0)
            assert time.monotonic() - start < 15, "the handler ran only once the spin was over"
    finally:
        done.set()
        go.set()
        sender.join(10)
        signal.signal(signal.SIGUSR1, old)


def test_a_reader_spins_while_spinning_catches_records_and_ever_less_often_after_spins_that_do_not():
    policy = SpinPolicy()
    assert [policy.should_spin() for _ in range(3)] == [True] * 3
    policy.missed()
    assert [policy.should_spin() for _ in range(3)] == [False, False, True]
    policy.missed()
    assert [policy.should_spin() for _ in range(5)] == [False] * 4 + [True]
    for _ in range(40):
        policy.missed()
    assert [policy.should_spin() for _ in range(SPIN_SKIP_MAX + 1)] == [False] * SPIN_SKIP_MAX + [True]
    policy.caught()
    policy.missed()
    assert [policy.should_spin() for _ in range(3)] == [False, False, True]      # back to the start
