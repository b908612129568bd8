"""Dispatch in an actor process (actors/_runtime/dispatch.py): handlers that raise, for asks and tells.

Every system runs in this process through `run()` (a deadline around `main`), with real actor processes."""
import pytest

from actors import ActorsError, RemoteActorError
from _helpers.actors import (
    Exploder,
)
from _helpers.processes import run, run_source


def test_ask_whose_handler_raises_gives_remote_actor_error():
    async def main(system):
        ref = await system.spawn(Exploder, name="exploder")
        with pytest.raises(RemoteActorError) as info:
            await ref.ask(42)
        err = info.value
        assert isinstance(err, ActorsError)
        assert err.type_name == "ValueError"
        assert err.message == "boom 42"
        assert err.actor == "exploder"
        assert "explode_here" in err.traceback
        assert "Traceback" in err.traceback
        assert "boom 42" in str(err) and "explode_here" in str(err)
        assert await ref.ask("ok") == "fine"               # the actor goes on

        with pytest.raises(RemoteActorError) as info:
            await ref.proxy.method_that_fails()
        assert info.value.type_name == "KeyError"
        assert "missing-key" in info.value.message
        assert "method_that_fails" in info.value.traceback
        assert await ref.ask("ok") == "fine"

    run(main)


def test_tell_whose_handler_raises_is_logged_with_the_actor_name_and_the_actor_goes_on(tmp_path):
    proc = run_source(tmp_path, """
        import actors

        class Fragile(actors.Actor):
            def __init__(self):
                self.handled = 0

            async def receive(self, msg):
                self.handled += 1
                if msg == "bad":
                    raise RuntimeError("tell-handler-failed-marker")
                if msg == "count":
                    return self.handled
                print(f"handled {msg}", flush=True)

        async def main(system):
            ref = await system.spawn(Fragile, name="fragile")
            await ref.tell("hello")
            await ref.tell("bad")
            await ref.tell("after")
            n = await ref.ask("count")
            print(f"driver-count={n}", flush=True)
    """)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    err = proc.stderr.splitlines()
    assert "driver-count=4" in out
    assert "[fragile] handled hello" in out
    assert "[fragile] handled after" in out
    marked = [line for line in err if "tell-handler-failed-marker" in line]
    assert marked, proc.stderr
    assert all(line.startswith("[fragile] ") for line in marked), marked
    logged = [line for line in err if "failed handling" in line]
    assert logged and all(line.startswith("[fragile] ") and "'fragile'" in line for line in logged), proc.stderr
    tb = [line for line in err if "Traceback" in line]
    assert tb and all(line.startswith("[fragile] ") for line in tb), proc.stderr
