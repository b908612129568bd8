"""The actor process's main (`actors._runtime.worker`), run here on its own in a subprocess, with a real store and
no system: what an actor does when the system it was started for is already gone."""
import subprocess
import sys
import textwrap

from _helpers.processes import CLI_TIMEOUT, env

NO_SYSTEM = """
    import os, socket, sys, tempfile
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
    try:
        code = worker.main(cloudpickle.dumps(spec))
    finally:
        store.close()
        for name in os.listdir(rundir):
            os.unlink(os.path.join(rundir, name))
        os.rmdir(rundir)
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


def _orphan(case):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(NO_SYSTEM), case], env=env(), capture_output=True,
                          text=True, timeout=CLI_TIMEOUT)
