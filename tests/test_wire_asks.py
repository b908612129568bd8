"""Asks (actors/_wire/asks.py): timeouts (checked first, and covering the whole call), askers of actors that stop
or die, and asks that wait for an actor being restarted.

Every system runs in this process through `run()` (a deadline around `main`), with real actor processes."""
import os
import signal
import time

import numpy as np
import pytest
import trio

import actors
from actors import ActorStoppedError, AskTimeoutError
from _helpers.actors import (
    Blocker,
    Counter,
    PidReporter,
    Relay,
    Sink,
    Sleeper,
    Suicidal,
)
from _helpers.processes import gone, run, wait_until


def test_ask_timeout():
    async def main(system):
        ref = await system.spawn(Sleeper, name="sleeper")
        t0 = time.monotonic()
        with pytest.raises(AskTimeoutError) as info:
            await ref.proxy.nap(2.5, timeout=0.3)
        assert isinstance(info.value, TimeoutError)
        assert "sleeper" in str(info.value)
        with pytest.raises(AskTimeoutError):
            await ref.ask(("sleep", 2.5), timeout=0.3)
        assert time.monotonic() - t0 < 2.0
        # the late replies to the timed-out asks are dropped: the next ask gets its own answer
        assert await ref.ask(("fast",)) == "fast"
        assert time.monotonic() - t0 >= 4.5

    run(main)


def test_an_asker_with_the_spin_off_sleeps_outside_trio_and_still_keeps_every_deadline(monkeypatch):
    # With the spin off, the driver's program waits for its answer in one poll() (a QuietWait kept on the link)
    # when nothing else of the process could run; that wait must still end for the ask's own timeout, and for a
    # deadline of another task of the process (it sleeps no further than the next deadline).
    from actors._wire import asks
    monkeypatch.setattr(asks, "SPIN", 0.0)

    async def main(system):
        ref = await system.spawn(Sleeper, name="sleeper")
        assert await ref.ask(("fast",)) == "fast"
        ticks = []

        async def ticker():
            for _ in range(5):
                await trio.sleep(0.05)
                ticks.append(time.monotonic())

        t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            with pytest.raises(AskTimeoutError):
                await ref.ask(("sleep", 2.0), timeout=0.5)
        assert 0.5 <= time.monotonic() - t0 < 1.5
        assert len(ticks) == 5 and ticks[-1] - t0 < 1.0, [t - t0 for t in ticks]
        assert system.endpoint.links[ref.id].quiet is not None      # it did wait quietly
        assert await ref.ask(("fast",)) == "fast"

    run(main)


def test_ask_to_an_actor_that_dies_mid_ask():
    async def main(system):
        ref = await system.spawn(Suicidal, name="suicidal")
        assert await ref.ask("hello") == "alive"
        t0 = time.monotonic()
        with pytest.raises(ActorStoppedError, match="suicidal"):
            await ref.ask("die")
        # the driver learns of the exit, then forgets the name
        await wait_until(lambda: gone(system, "suicidal"), timeout=30, what="the actor to be gone")
        again = await system.spawn(Suicidal, name="suicidal")
        with pytest.raises(ActorStoppedError):
            await again.ask("die", timeout=60)     # with a timeout: still ActorStoppedError, promptly
        assert time.monotonic() - t0 < 45

        # an actor asking an actor that dies gets ActorStoppedError too
        victim = await system.spawn(Suicidal, name="victim")
        relay = await system.spawn(Relay, name="relay")
        kind, message = await relay.ask(("ask", victim, "die"))
        assert kind == "ActorStoppedError" and "victim" in message

    run(main)


def test_asks_and_calls_to_a_stopped_actor_raise_actor_stopped():
    async def main(system):
        linked = await system.spawn(Counter, 0, name="linked")
        assert await linked.ask(1) == 1                      # the driver holds a connection to it
        unlinked = await system.spawn(Counter, 0, name="unlinked")
        relay = await system.spawn(Relay, name="relay")
        assert await relay.ask(("ask", linked, 1)) == ("answer", 2)
        await system.stop(linked)
        await system.stop(unlinked)
        for ref in (linked, unlinked):
            with pytest.raises(ActorStoppedError):
                await ref.ask(1, timeout=30)
            with pytest.raises(ActorStoppedError):
                await ref.proxy.reset(0)
        kind, message = await relay.ask(("ask", linked, 1))
        assert kind == "ActorStoppedError" and "linked" in message

    run(main)


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", True])
def test_ask_rejects_a_bad_timeout_before_sending(timeout):
    async def main(system):
        sink = await system.spawn(Sink, name="sink")
        with pytest.raises((TypeError, ValueError)) as info:
            await sink.ask("x", timeout=timeout)
        with pytest.raises((TypeError, ValueError)):
            await sink.proxy.receive("x", timeout=timeout)
        return str(info.value), await sink.ask("count")

    message, count = run(main, timeout=30)
    assert f"ask(timeout={timeout!r})" in message
    assert count == 1, "the ask with a bad timeout was delivered anyway"


def test_ask_timeout_covers_waiting_for_mailbox_room(tmp_path):
    gate = str(tmp_path / "gate")

    async def main(system):
        slow = await system.spawn(Blocker, gate, name="slow")
        await slow.tell("block")                            # its handler parks until the gate file exists
        sent = full_in_a_row = 0
        with trio.fail_after(20):
            while full_in_a_row < 5:        # until its reader has stopped too: the mailbox stays full
                try:
                    slow.tell_nowait(0)
                    sent += 1
                    full_in_a_row = 0
                except actors.MailboxFullError:
                    full_in_a_row += 1
                    await trio.sleep(0.05)  # polling: is the receiver still taking records?
        started = trio.current_time()
        with pytest.raises(AskTimeoutError):
            await slow.ask("count", timeout=0.5)            # must wait for room first: within its timeout
        elapsed = trio.current_time() - started
        open(gate, "w").close()
        return sent, elapsed

    sent, elapsed = run(main, timeout=60, mailbox_size=4)
    assert sent > 0
    assert elapsed < 2, f"the ask took {elapsed:.1f} s although its timeout was 0.5 s"


def test_ask_timeout_covers_waiting_for_store_room():
    async def main(system):
        sink = await system.spawn(Sink, name="sink")
        await sink.ask("warm")
        hog = system.store.put(np.ones(7 << 20))             # 56 MiB of a 64 MiB store, held
        used = system.store.stats()["used"]
        started = trio.current_time()
        with pytest.raises(AskTimeoutError):
            await sink.ask(np.ones(2 << 20), timeout=0.5)   # 16 MiB: no room while `hog` is held
        elapsed = trio.current_time() - started
        leftover = system.store.stats()["used"] - used      # the abandoned message holds nothing
        del hog
        return elapsed, leftover

    elapsed, leftover = run(main, timeout=60, store_capacity="64M")
    assert elapsed < 3, f"the ask took {elapsed:.1f} s although its timeout was 0.5 s"
    assert leftover <= 0


async def _reaped(pid):
    # reaped: every thread of it has exited, so its sockets are closed (a zombie's may not be yet)
    async def gone_from_proc():
        return not os.path.exists(f"/proc/{pid}")
    await wait_until(gone_from_proc, timeout=10, what=f"pid {pid} to be reaped")


def test_an_ask_waits_for_a_restarting_actor():
    async def main(system):
        ref = await system.spawn(PidReporter, name="phoenix", options={"restart_backoff": 0.5})
        pid = await ref.ask("pid")
        os.kill(pid, signal.SIGKILL)
        await _reaped(pid)
        # asked while it is down or restarting: the answer comes from the next incarnation
        new_pid = await ref.ask("pid", timeout=15)
        via_proxy = await ref.proxy.receive("hello", timeout=15)
        return pid, new_pid, via_proxy

    pid, new_pid, via_proxy = run(main, timeout=60)
    assert new_pid != pid
    assert via_proxy == "hello"


def test_an_ask_to_a_restarting_actor_still_honours_its_timeout():
    async def main(system):
        ref = await system.spawn(PidReporter, name="slowphoenix", options={"restart_backoff": 5})
        pid = await ref.ask("pid")
        os.kill(pid, signal.SIGKILL)
        await _reaped(pid)
        started = trio.current_time()
        with pytest.raises(AskTimeoutError):
            await ref.ask("pid", timeout=0.5)
        return trio.current_time() - started

    assert run(main, timeout=60) < 3


def test_an_ask_to_an_actor_gone_for_good_still_raises_at_once():
    async def main(system):
        ref = await system.spawn(Suicidal, name="once")
        with pytest.raises(ActorStoppedError):
            await ref.ask("die")
        await wait_until(lambda: gone(system, "once"), what="'once' to be gone")
        started = trio.current_time()
        with pytest.raises(ActorStoppedError):
            await ref.ask("anyone?", timeout=30)
        return trio.current_time() - started

    assert run(main, timeout=60) < 5
