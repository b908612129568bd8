"""Asks (actors/_wire/asks.py): timeouts, and askers of actors that stop or die.

Every system runs in this process through `run()` (a deadline around `main`), with real actor processes."""
import time

import pytest

from actors import ActorStoppedError, AskTimeoutError
from _helpers.actors import (
    Counter,
    Relay,
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
