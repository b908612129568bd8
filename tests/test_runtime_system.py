"""The system (actors/_runtime/system.py, driver.py): spawn names, lifecycle hooks, stop.

Every system runs in this process through `run()` (a deadline around `main`), with real actor processes."""
import os
import time

import pytest

from actors import ActorNotFoundError, ActorStoppedError
from _helpers.actors import (
    Echo,
    Hooks,
    Pid,
    Stubborn,
)
from _helpers.processes import MAIN_TIMEOUT, run, run_source


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


def test_a_run_ends_when_an_actor_stuck_behind_a_full_mailbox_cannot_be_asked_to_stop(tmp_path):
    """An actor stuck in its handler, its mailbox full: the request to stop it finds no room. The stop waited for
    room forever, and the run never ended; now it waits the stop timeout, kills the actor, and the run ends."""
    proc = run_source(tmp_path, """
        import trio

        import actors

        class Stuck(actors.Actor):
            async def receive(self, message):
                if message == "hang":
                    await trio.sleep_forever()

        async def main(system):
            ref = await system.spawn(Stuck, name="stuck")
            await ref.tell("hang")
            try:
                while True:
                    for _ in range(64):
                        ref.tell_nowait(bytes(1000))
                    await trio.sleep(0)     # let the flusher write what the connection takes
            except actors.MailboxFullError:
                print("mailbox full", flush=True)
    """, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "mailbox full" in proc.stdout
    assert "actor 'stuck' could not be asked to stop (its mailbox or the store stayed full for 5 s)" in proc.stderr


# -- open_system: a system inside a trio program ----------------------------------------------------------------------

def _embedded(body, **options):
    """trio.run of `body(system)` inside `async with actors.open_system()`, beside another task of the program."""
    import trio

    import actors

    async def program():
        ticks = []
        result = failure = None
        async with trio.open_nursery() as nursery:

            async def other_work():             # the program's own task goes on while the system runs
                while True:
                    ticks.append(1)
                    await trio.sleep(0.01)

            nursery.start_soon(other_work)
            try:
                with trio.fail_after(MAIN_TIMEOUT):
                    async with actors.open_system(store_capacity="64M", **options) as system:
                        result = await body(system)
            except Exception as exc:        # what the block raised, as the program sees it
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return result, ticks

    return trio.run(program)


def test_open_system_runs_inside_a_trio_program_and_cleans_up_on_exit(tmp_path):
    from _helpers.processes import leftover_segments, wait_gone
    from actors import _persist, _store

    seen = {}

    async def body(system):
        seen["store"] = system.store.name
        seen["rundir"] = system.rundir
        seen["forkserver"] = system._forkserver.pid
        a = await system.spawn(Hooks, str(tmp_path), name="embedded")
        seen["actor"] = int((tmp_path / "embedded.started").read_text())
        await a.tell("work")
        await a.tell("work")
        return await system.spawn(Pid, name="pid")

    before = leftover_segments()
    ref, ticks = _embedded(body, resilience_dir=str(tmp_path / "state"))
    assert ref.name == "pid" and ticks                          # the program ran beside the system
    assert (tmp_path / "embedded.stopped").read_text() == "2"   # stopped gracefully, after its messages
    assert wait_gone([seen["actor"], seen["forkserver"]], timeout=10) == []
    assert not os.path.exists(os.path.join(_store.SHM_DIR, seen["store"]))
    assert not os.path.exists(seen["rundir"])
    assert leftover_segments() == before
    _persist.DirectoryLock(str(tmp_path / "state")).release()  # the directory's lock was released


def test_one_open_system_per_process_and_errors_come_out_as_themselves():
    import actors

    async def body(system):
        with pytest.raises(actors.ActorsError, match="a system is already open in this process"):
            async with actors.open_system(store_capacity="64M"):
                pass
        await system.spawn(Echo, name="echo")
        raise KeyError("from the block")

    with pytest.raises(KeyError, match="from the block"):   # itself, not inside an ExceptionGroup
        _embedded(body)
    # closed: the next system opens
    assert _embedded(lambda system: system.spawn(Echo, name="again"))[0].name == "again"


@pytest.mark.parametrize("options, message", [
    ({"mailbox_size": 0}, "mailbox_size must be a whole number of messages, 1 or more, not 0"),
    ({"mailbox_size": 2.5}, "mailbox_size must be a whole number of messages, 1 or more, not 2.5"),
    ({"stop_timeout": -1}, "stop_timeout must be a number of seconds, 0 or more, not -1"),
    ({"stop_timeout": float("nan")}, "stop_timeout must be a number of seconds, 0 or more, not nan"),
], ids=["mailbox-0", "mailbox-float", "stop-negative", "stop-nan"])
def test_options_that_could_not_work_are_refused_before_the_system_starts(options, message):
    # a mailbox of 0 left every ask waiting for ever; a negative stop timeout failed at the stop, after main had run
    import actors

    ran = []

    async def main(system):
        ran.append(1)

    with pytest.raises(actors.ActorsError) as info:
        actors.run(main, **options)
    assert str(info.value) == message
    assert ran == []


def test_process_titles_name_the_actor_and_the_fork_server():
    def cmdline(pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").decode()

    async def main(system):
        ref = await system.spawn(Pid, name="titled")
        assert cmdline(await ref.ask(None)) == f"actors: Pid 'titled' #{ref.id}"
        assert cmdline(system._forkserver.pid) == "actors: fork server"
        assert cmdline(os.getpid()) != "actors: fork server"    # the driver keeps its own

    run(main)
