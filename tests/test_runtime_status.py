"""What a running system is doing (actors/_runtime/status.py): system.status() with real actor processes, and the
`actors status` command reading a running app's status socket."""
import os
import signal
import stat

import trio

import actors
from _helpers.actors import Counter, Relay, Sleeper, StatusReader, Suicidal
from _helpers.processes import retry, run, run_cli, wait_gone, wait_until
from _helpers.processes import launched  # noqa: F401  (the fixture)


def by_name(status):
    return {a.name: a for a in status.actors}


def test_status_reports_each_actor_and_the_store():
    async def main(system):
        counter = await system.spawn(Counter, 0, name="counter")
        for _ in range(5):
            await counter.tell(1)
        assert await counter.ask(0) == 5
        big = actors.put(b"x" * (1 << 20))
        st = await system.status()
        assert st.pid == os.getpid() and st.rundir == system.rundir
        row = by_name(st)["counter"]
        assert (row.id, row.cls, row.pid, row.state, row.restarts) == (counter.id, "Counter", row.pid, "running", 0)
        assert row.pid not in (0, os.getpid())
        assert (row.handled, row.mailbox, row.unacked) == (6, 0, 0)      # 5 tells and an ask
        assert st.store_capacity == 64 << 20
        assert st.store_used >= 1 << 20 and st.store_high_water >= st.store_used and st.store_objects >= 1
        del big
        await system.stop(counter)
        [row] = (await system.status()).actors
        assert (row.name, row.state, row.handled) == ("counter", "stopped", None)

    run(main)


def test_status_right_after_a_kill_shows_the_actor_ended_not_running():
    # the driver learns of an exit from the fork server a moment after the process is gone: status waits for it
    async def main(system):
        counters = [await system.spawn(Counter, 0, name=f"victim-{i}", options={"restart": "never"}) for i in range(3)]
        pids = {row.name: row.pid for row in (await system.status()).actors}
        for name in ("victim-0", "victim-2"):
            os.kill(pids[name], signal.SIGKILL)
        # waited for in this thread, which blocks the system's loop: the processes are gone, and the system has
        # not heard of it yet
        assert wait_gone([pids["victim-0"], pids["victim-2"]]) == []
        states = [(row.name, row.state) for row in (await system.status()).actors]
        assert states == [("victim-0", "stopped"), ("victim-1", "running"), ("victim-2", "stopped")], states
        assert await counters[1].ask(0) == 0

    run(main)


def test_status_counts_the_mailbox_of_a_busy_actor_and_restarts():
    async def main(system):
        sleeper = await system.spawn(Sleeper, name="sleeper")
        relay = await system.spawn(Relay, name="relay")
        async with trio.open_nursery() as nursery:
            # the relay asks the sleeper to sleep: the sleeper's handler awaits, its other connections still read
            nursery.start_soon(relay.ask, ("ask", sleeper, ("sleep", 3)))
            await wait_until(lambda: _handled(system, "sleeper", 1), what="the sleeper to be asleep")
            for i in range(7):
                await sleeper.tell(("fast", i))
            await wait_until(lambda: _mailbox(system, "sleeper", 7), what="7 messages waiting for the sleeper")
        # the driver's tells behind a sleep of its own: in the batch in progress (or unread), waiting all the same
        dozer = await system.spawn(Sleeper, name="dozer")
        await dozer.tell(("sleep", 3))
        for i in range(5):
            await dozer.tell(("fast", i))
        await wait_until(lambda: _figures(system, "dozer", (1, 5)), what="the dozer's 5 waiting messages")
        mortal = await system.spawn(Suicidal, name="mortal", options={"restart": "on-failure",
                                                                      "restart_backoff": 0.01})
        await mortal.tell("die")
        await retry(lambda: mortal.ask("alive?"))
        row = by_name(await system.status())["mortal"]
        assert (row.state, row.restarts) == ("running", 1)

    run(main)


async def _figures(system, name, figures):
    row = by_name(await system.status())[name]
    return (row.handled, row.mailbox) == figures


async def _handled(system, name, n):
    return by_name(await system.status())[name].handled == n


async def _mailbox(system, name, n):
    row = by_name(await system.status())[name]
    assert row.handled == 1, row            # still in its first handler: the figures come while it is busy
    return row.mailbox == n


STATUS_APP = """
    import sys
    import trio
    import actors

    class Pid(actors.Actor):
        async def receive(self, msg):
            return msg

    async def main(system):
        ref = await system.spawn(Pid, name="shown")
        await ref.ask(1)
        print("ready", flush=True)
        await trio.sleep_forever()          # until the test stops it
"""


def test_the_status_command_shows_every_running_system(tmp_path, launched):
    app = tmp_path / "status_app.py"
    app.write_text(__import__("textwrap").dedent(STATUS_APP))
    running = launched("run", app, cwd=tmp_path)
    running.wait_for_line("ready")
    proc = run_cli("status", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    heading = [i for i, line in enumerate(lines) if line.startswith(f"system of driver {running.proc.pid}:")]
    assert heading, proc.stdout
    header, row = lines[heading[0] + 1].split(), lines[heading[0] + 2].split()
    assert header == ["ID", "NAME", "CLASS", "PID", "STATE", "RESTARTS", "HANDLED", "MAILBOX", "UNACKED"]
    assert row[:3] == ["1", "shown", "Pid"] and row[4:] == ["running", "0", "1", "0", "0"], proc.stdout
    rundir = [d for d in os.listdir("/tmp") if d.startswith(f"actors.{running.proc.pid}.")]
    sock = os.stat(os.path.join("/tmp", rundir[0], "status.sock"))
    assert stat.S_IMODE(sock.st_mode) == 0o600
    watched = run_cli("status", "--watch", "--interval", "0.1", "--count", "2", cwd=tmp_path, timeout=60)
    assert watched.returncode == 0, watched.stderr
    assert len([line for line in watched.stdout.splitlines() if line.endswith("actors status (every 0.1 s; "
                                                                               "Ctrl-C to quit)")]) == 2
    assert watched.stdout.count(f"system of driver {running.proc.pid}:") == 2
    running.proc.send_signal(signal.SIGTERM)
    assert running.wait() == 143


def test_status_counts_the_tells_the_driver_holds_for_a_persistent_actor(tmp_path):
    async def main(system):
        keeper = await system.spawn(Sleeper, name="keeper", options={"persistent": True})
        await keeper.tell(("sleep", 3))
        # journaled and acked a batch at a time, the ack leaving before the batch is handled: the sleep is acked
        # as it starts, and what is told while it sleeps is unread (so not acked) until it ends
        await wait_until(lambda: _unacked(system, "keeper", 0), what="the sleep acked")
        for i in range(5):
            await keeper.tell(("fast", i))
        await wait_until(lambda: _unacked(system, "keeper", 5), what="5 tells held for the keeper")
        await wait_until(lambda: _unacked(system, "keeper", 0), what="every tell acked")

    run(main, resilience_dir=str(tmp_path / "state"))


async def _unacked(system, name, n):
    return by_name(await system.status())[name].unacked == n


def test_an_actor_reads_the_status_through_the_driver():
    async def main(system):
        await system.spawn(Counter, 0, name="counter")
        reader = await system.spawn(StatusReader, name="reader")
        assert await reader.ask(None) == ([("counter", "running"), ("reader", "running")], os.getpid())

    run(main)
