"""The actor process's main (`actors._runtime.worker`), run here on its own in a subprocess, with a real store and
no system: what an actor does when the system it was started for is already gone."""
import subprocess
import sys
import textwrap

from _helpers.processes import CLI_TIMEOUT, env

NO_SYSTEM = """
    import importlib, os, socket, sys, tempfile
    from actors._runtime.spawn import PRELOAD
    if sys.argv[1] == "imports":        # as in the fork server, before it forks an actor
        for name in PRELOAD:
            importlib.import_module(name)
    import cloudpickle
    import actors
    from actors._actor import actor_options
    from actors._runtime import worker
    from actors._wire.protocol import SpawnSpec

    class Idle(actors.Actor):
        async def receive(self, message):
            return message

    store = actors.ObjectStore(capacity="1M")
    rundir = tempfile.mkdtemp()     # where the system's socket would be: nothing listens
    if sys.argv[1] == "dead-socket":    # a socket file is there, but nothing listens on it
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(os.path.join(rundir, "0.sock"))
        dead.close()
    spec = SpawnSpec(id=1, name="orphan", cls=Idle, args=(), kwargs={}, rundir=rundir, store=store.name, registry=[],
                     serialize=None, deserialize=None, mailbox_size=16, app=None, options=actor_options(Idle, None),
                     resilience_dir=None)
    payload = cloudpickle.dumps(spec)
    before = set(sys.modules)
    try:
        code = worker.main(payload)
    finally:
        store.close()
        for name in os.listdir(rundir):
            os.unlink(os.path.join(rundir, name))
        os.rmdir(rundir)
    if sys.argv[1] == "imports":        # (worker.main closed stdout)
        with open(sys.argv[2], "w") as f:
            f.write(" ".join(sorted(set(sys.modules) - before)))
    sys.exit(code)
"""


def test_an_actor_whose_system_has_ended_exits_quietly():
    # A stop signal to a whole group while an actor started left it without a system to connect to: it printed
    # `ActorStoppedError: cannot send to the system: it is not running` with a traceback.
    proc = _orphan("no-socket")
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", ""), proc.stderr[-3000:]


def test_an_actor_that_cannot_reach_a_system_whose_socket_is_there_says_so():
    # Its socket there means the system has not ended: something else is wrong, and a silent exit would hide it.
    proc = _orphan("dead-socket")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "actor 'orphan' exits: it cannot connect to its system through" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_an_actor_imports_nothing_the_fork_server_has_not_imported_already(tmp_path):
    # An import in every actor is paid again by each (numpy.random, imported by the actor to seed it, took 16 ms
    # of its start), where one in the fork server is paid once.
    out = tmp_path / "imported"
    proc = _orphan("imports", str(out))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert out.read_text() == "", "imported by the actor itself: " + out.read_text()


def _orphan(*args):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(NO_SYSTEM), *args], env=env(), capture_output=True,
                          text=True, timeout=CLI_TIMEOUT)
