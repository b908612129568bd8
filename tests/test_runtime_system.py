"""The system (actors/_runtime/system.py, driver.py): spawn names, lifecycle hooks, stop.

Every system runs in this process through `run()` (a deadline around `main`), with real actor processes."""
import os
import time

import pytest

from actors import ActorNotFoundError, ActorStoppedError
from _helpers.actors import (
    Echo,
    Hooks,
    Stubborn,
)
from _helpers.processes import run


def test_spawn_names_and_default_name():
    async def main(system):
        named = await system.spawn(Echo, name="echo-named")
        anonymous = await system.spawn(Echo)
        assert named.name == "echo-named"
        assert anonymous.name.startswith("Echo")
        assert anonymous != named
        assert await named.ask(1) == ("echo", "echo-named", 1)
        assert await anonymous.ask(2) == ("echo", anonymous.name, 2)
        with pytest.raises(TypeError):
            await system.spawn(int)

    run(main)


def test_on_start_runs_before_spawn_returns_and_on_stop_after_the_messages(tmp_path):
    async def main(system):
        a = await system.spawn(Hooks, str(tmp_path), name="hooks-a")
        started = tmp_path / "hooks-a.started"
        assert started.exists(), "spawn() returned before on_start finished"
        assert int(started.read_text()) not in (0, os.getpid())        # it ran in the actor's own process
        assert await a.ask("started?") is True
        b = await system.spawn(Hooks, str(tmp_path), name="hooks-b")
        for _ in range(50):
            await a.tell("work")
        assert not (tmp_path / "hooks-a.stopped").exists()
        await system.stop(a)
        assert (tmp_path / "hooks-a.stopped").read_text() == "50"      # graceful: every message handled first
        with pytest.raises(ActorNotFoundError):
            await system.lookup("hooks-a")
        await system.stop(a)                                            # stopping twice is harmless
        await b.tell("work")
        # b is left running: run() stops it gracefully when main returns

    run(main)
    assert (tmp_path / "hooks-b.stopped").read_text() == "1"


def test_stop_kills_an_actor_that_does_not_stop_in_time():
    async def main(system):
        ref = await system.spawn(Stubborn, name="stubborn")
        await ref.tell("hang")
        t0 = time.monotonic()
        await system.stop(ref, timeout=1)
        assert time.monotonic() - t0 < 30
        with pytest.raises(ActorNotFoundError):
            await system.lookup("stubborn")
        with pytest.raises(ActorStoppedError):
            await ref.ask("anything", timeout=30)

    run(main)
