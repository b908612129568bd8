"""The pytest plugin (actors/testing.py): the actor_system fixture, Probe and logged, used as a user's tests would
(async tests under pytest-trio), and the fixture's leak check."""
import logging
import os

import pytest
import trio

import actors
from actors import testing
from _helpers.actors import Echo, Relay


class Greeter(actors.Actor):
    """Greets whoever it is told about, and logs it."""

    async def receive(self, msg):
        who, reply_to = msg
        logging.getLogger("tests.greeter").info("greeting %s", who)
        await reply_to.tell(f"hello, {who}")
        return os.getpid()


@pytest.mark.trio
async def test_a_probe_records_what_actors_tell_it_and_answers_asks(actor_system):
    probe = testing.Probe(actor_system, "listener", answer=lambda message: ("seen", message))
    greeter = await actor_system.spawn(Greeter, name="greeter")
    await greeter.tell(("Ada", probe.ref))
    assert await probe.expect("hello, Ada") == "hello, Ada"
    relay = await actor_system.spawn(Relay, name="relay")
    assert await relay.ask(("ask", probe.ref, 7)) == ("answer", ("seen", 7))
    assert await probe.expect() == 7
    assert await probe.ref.ask("from the test") == ("seen", "from the test")
    assert probe.messages == ["hello, Ada", 7, "from the test"]


@pytest.mark.trio
async def test_expect_fails_on_another_message_or_none(actor_system):
    probe = testing.Probe(actor_system)
    await probe.ref.tell("one")
    with pytest.raises(AssertionError, match=r"probe 'probe' expected 'two', but received 'one'"):
        await probe.expect("two")
    with pytest.raises(AssertionError, match=r"received no message within 0.2 s; all it received: \['one'\]"):
        await probe.expect(timeout=0.2)
    probe.close()
    await probe.ref.tell("right after")       # may be accepted (the connection is still open), never recorded
    with pytest.raises(actors.ActorStoppedError):
        with trio.fail_after(10):
            while True:     # polling, with a deadline: the driver notices the closed link at its next check
                await probe.ref.tell("late")
                await trio.sleep(0.01)
    assert probe.messages == ["one"]


@pytest.mark.trio
async def test_caplog_sees_what_an_actor_logs(actor_system, caplog):
    caplog.set_level(logging.INFO)
    probe = testing.Probe(actor_system)
    greeter = await actor_system.spawn(Greeter, name="greeter")
    pid = await greeter.ask(("Grace", probe.ref))
    record = await testing.logged(caplog, "greeting Grace")
    assert (record.name, record.levelno, record.actor, record.process) == ("tests.greeter", logging.INFO,
                                                                           "greeter", pid)
    with pytest.raises(AssertionError, match="no log record containing 'greeting Linus'"):
        await testing.logged(caplog, "greeting Linus", timeout=0.2)


@pytest.mark.trio
async def test_the_fixture_reports_a_leaked_process():
    # The fixture's check, on a system whose actor escapes: a child it forks keeps the store mapped.
    async with actors.open_system(store_capacity="64M") as system:
        segment = system.store.name
        ref = await system.spawn(Echo, name="echo")
        leaker = await system.spawn(Forker, name="forker")
        child = await leaker.ask(None)
        await ref.ask(1)
    try:
        left = await testing.leaks(segment, timeout=0.5)
        assert left == [f"process {child} (actors: Forker 'forker' #2)"]
    finally:
        os.kill(child, 9)
    assert await testing.leaks(segment) == []


class Forker(actors.Actor):
    """Forks a child that outlives it (and its system), sleeping with the store mapped."""

    async def receive(self, msg):
        pid = os.fork()
        if pid == 0:
            os.setsid()         # out of the actor's reach: only a kill ends it
            os.closerange(0, 1 << 16)       # its sockets and pipes: the actor's ends go with the actor
            import time
            time.sleep(120)
            os._exit(0)
        return pid


def test_the_example_test_file_in_docs_testing_md_passes_under_pytest(tmp_path):
    # As a user runs it: the file alone in a directory, `pytest` finding the plugin through its entry point.
    import pathlib
    import re
    import subprocess
    import sys
    from _helpers.processes import CLI_TIMEOUT, env

    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text()
    [source] = [block for block in re.findall(r"```python\n(.*?)```", doc, re.S)
                if block.startswith('"""test_greeter.py')]
    (tmp_path / "test_greeter.py").write_text(source)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_greeter.py"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^3 passed in [\d.]+s$", proc.stdout, re.M), proc.stdout
