"""`actors run app.py` and `actors cleanup`, end to end, as a user runs them: in a subprocess
(`python -m actors ...`, and the `actors` console script)."""
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import posix_ipc
import pytest

from actors import _store
from _helpers.processes import CLI_TIMEOUT as TIMEOUT, actors_cmd, alive, children_of, env, run_cli, wait_gone  # noqa: E402
from _helpers.processes import launched  # noqa: F401  (the fixture)


CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "actors")


def write_app(tmp_path, source, name="app.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def segments_of(pid):
    return [n for n in _store.our_segments() if n.startswith(f"{_store.PREFIX}{pid}.")]


# -- running an app ---------------------------------------------------------------------------------------------------

COUNTER_APP = """
    import sys
    import actors

    class Counter(actors.Actor):
        def __init__(self, start):
            self.n = start

        async def receive(self, delta):
            self.n += delta
            print(f"counter at {self.n}", flush=True)
            return self.n

    async def main(system):
        ref = await system.spawn(Counter, 10, name="counter")
        await ref.tell(1)
        ref.tell_nowait(1)
        result = await ref.ask(1)
        print(f"result {result} argv {sys.argv[1:]} module {__name__}", flush=True)
"""


def test_run_prints_and_exits_zero(tmp_path):
    app = write_app(tmp_path, COUNTER_APP)
    proc = run_cli("run", str(app), "alpha", "--beta", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "result 13 argv ['alpha', '--beta'] module app" in out
    assert [line for line in out if line.startswith("[counter] ")] == [
        "[counter] counter at 11", "[counter] counter at 12", "[counter] counter at 13"]


def test_driver_and_actor_lines_stay_whole_when_unbuffered(tmp_path):
    # PYTHONUNBUFFERED (set by env(), as in many containers) makes each print two writes, the text and its newline:
    # an actor's line written between them would be glued to the driver's
    app = write_app(tmp_path, """
        import trio
        import actors

        class Chatty(actors.Actor):
            async def receive(self, n):
                for i in range(n):
                    print(f"actor line {i}")
                return n

        async def main(system):
            ref = await system.spawn(Chatty, name="chatty")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ref.ask, 20000)
                for i in range(20000):
                    print(f"driver line {i}")
                    if i % 10 == 0:
                        await trio.sleep(0)
    """)
    proc = run_cli("run", str(app), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    glued = [line for line in lines if not re.fullmatch(r"driver line \d+|\[chatty\] actor line \d+", line)]
    assert glued == []
    assert len(lines) == 40000


def test_console_script_runs_the_app(tmp_path):
    if not os.path.exists(CONSOLE_SCRIPT):
        pytest.skip(f"no `actors` console script beside {sys.executable}")
    app = write_app(tmp_path, COUNTER_APP)
    proc = subprocess.run([CONSOLE_SCRIPT, "run", str(app)], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "result 13 argv [] module app" in proc.stdout.splitlines()


def test_main_returning_an_int_is_the_exit_code(tmp_path):
    app = write_app(tmp_path, """
        async def main(system):
            return 3
    """)
    proc = run_cli("run", str(app), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr


def test_main_raising_exits_non_zero_and_stops_the_actors(tmp_path):
    app = write_app(tmp_path, """
        import os
        import sys
        import actors

        class Keeper(actors.Actor):
            def __init__(self, directory):
                self.directory = directory

            async def on_stop(self):
                with open(os.path.join(self.directory, "keeper.stopped"), "w") as f:
                    f.write("ok")

            async def receive(self, msg):
                return msg

        async def main(system):
            ref = await system.spawn(Keeper, sys.argv[1], name="keeper")
            assert await ref.ask("x") == "x"
            raise RuntimeError("main-failed-marker")
    """)
    proc = run_cli("run", str(app), str(tmp_path), cwd=tmp_path)
    assert proc.returncode != 0
    assert "main-failed-marker" in proc.stderr
    assert (tmp_path / "keeper.stopped").read_text() == "ok"


def test_app_serialize_and_deserialize_replace_the_codec(tmp_path):
    count_file = tmp_path / "codec-calls.txt"
    app = write_app(tmp_path, """
        import os
        import pickle
        import sys
        import actors

        COUNT_FILE = os.environ["APP_CODEC_COUNT_FILE"]


        def _note(what):
            with open(COUNT_FILE, "a") as f:
                f.write(f"{what} {os.getpid()}\\n")


        def serialize(obj):
            _note("S")
            return b"MARK:" + pickle.dumps(obj)


        def deserialize(data):
            _note("D")
            data = bytes(data)
            if not data.startswith(b"MARK:"):
                raise ValueError(f"not one of ours: {data[:16]!r}")
            return pickle.loads(data[5:])


        class Unregistered:
            # never given to actors.register_class: the fast codec could not send it
            def __init__(self, value):
                self.value = value


        class Doubler(actors.Actor):
            def __init__(self):
                self.seen = []

            async def receive(self, msg):
                if msg == "seen":
                    return self.seen
                self.seen.append(type(msg).__name__)
                print(f"actor-pid {os.getpid()}", flush=True)
                return Unregistered(msg.value * 2)


        async def main(system):
            ref = await system.spawn(Doubler, name="doubler")
            await ref.tell(Unregistered(1))
            back = await ref.ask(Unregistered(21))
            print(f"driver-pid {os.getpid()}", flush=True)
            print(f"RESULT {type(back).__name__} {back.value} {await ref.ask('seen')}", flush=True)
    """)
    proc = subprocess.run(actors_cmd("run", str(app)), cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, env=dict(env(), APP_CODEC_COUNT_FILE=str(count_file)))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "RESULT Unregistered 42 ['Unregistered', 'Unregistered']" in out
    driver_pid = next(line.split()[-1] for line in out if line.startswith("driver-pid "))
    actor_pid = next(line.split()[-1] for line in out if line.startswith("[doubler] actor-pid "))
    calls = [tuple(line.split()) for line in count_file.read_text().splitlines()]
    # the driver encodes 4 messages (tell, 2 asks) and decodes 2 answers; the actor the reverse
    assert calls.count(("S", driver_pid)) >= 3
    assert calls.count(("D", driver_pid)) >= 2
    assert calls.count(("D", actor_pid)) >= 3
    assert calls.count(("S", actor_pid)) >= 2


def test_app_arguments_reach_the_actors_and_the_app_import(tmp_path):
    app = write_app(tmp_path, """
        import sys
        import actors

        ARGS = sys.argv[1:]         # read at import, as apps do: in the driver and in every actor

        class Reporter(actors.Actor):
            async def receive(self, msg):
                return ARGS, sys.argv[1:]

        async def main(system):
            ref = await system.spawn(Reporter, name="reporter")
            print(f"driver {ARGS} actor {await ref.ask(0)}", flush=True)
    """)
    proc = run_cli("run", str(app), "7", "--fast", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "driver ['7', '--fast'] actor (['7', '--fast'], ['7', '--fast'])" in proc.stdout.splitlines()


MODULE_APP = """
    import sys
    import actors

    class Echo(actors.Actor):
        async def receive(self, msg):
            return f"{type(self).__module__}.{type(self).__name__} got {msg}"

    async def start(system):
        ref = await system.spawn(Echo, name="echo")
        print(f"{await ref.ask(sys.argv[1:])} in {__name__}", flush=True)
        return 4
"""


def test_run_module_function_from_the_working_directory(tmp_path):
    (tmp_path / "pkg").mkdir()
    write_app(tmp_path, "", name="pkg/__init__.py")
    write_app(tmp_path, MODULE_APP, name="pkg/service.py")
    proc = run_cli("run", "pkg.service:start", "x", "--y", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert "pkg.service.Echo got ['x', '--y'] in pkg.service" in proc.stdout.splitlines()


@pytest.mark.parametrize("spec, message", [
    ("pkg.service:stop", "actors: pkg.service defines no `async def stop(system)` to run"),
    ("nowhere:main", "actors: cannot run 'nowhere:main': no module named 'nowhere'"),
    ("pkg.service:", "actors: cannot run 'pkg.service:': give the path of an app's .py file, or module:function"),
    ("pkg.service", "actors: cannot run 'pkg.service': give the path of an app's .py file, or module:function"),
])
def test_run_module_function_usage_errors(tmp_path, spec, message):
    (tmp_path / "pkg").mkdir()
    write_app(tmp_path, "", name="pkg/__init__.py")
    write_app(tmp_path, MODULE_APP, name="pkg/service.py")
    proc = run_cli("run", spec, cwd=tmp_path)
    assert (proc.returncode, proc.stderr.splitlines(), proc.stdout) == (2, [message], "")


def test_version_names_the_release_and_where_it_is_imported_from():
    import actors
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f"actors {actors.__version__} from {os.path.dirname(actors.__file__)} "
                           f"(Python {platform.python_version()})\n")


def test_module_run_from_an_unbuilt_checkout_says_why_and_what_to_do(tmp_path):
    # What `pip install .` then `python -m actors` from the checkout meets: the working directory holds the
    # sources, without the built extension, and comes first on sys.path.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for package in ("actors", "_fastser"):
        shutil.copytree(os.path.join(root, package), tmp_path / package,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    # `python -m actors --version`, without the finder of an editable install (which would find the built extension
    # in the real checkout): a non-editable install has none
    as_installed = ("import runpy, sys; "
                    "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]; "
                    "sys.argv[1:] = ['--version']; runpy.run_module('actors', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", as_installed], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.splitlines()[-1] == (
        f"ImportError: the _fastser extension is not built in {tmp_path / '_fastser'} for this Python "
        f"({platform.python_version()}): Python imported that source checkout, not an installed build, because it "
        f"is the working directory or on PYTHONPATH. Build it in place with `pip install -e .` from the checkout, "
        f"or run from another directory.")
    assert "No module named" not in proc.stderr


# -- stopping on a signal ---------------------------------------------------------------------------------------------

FOREVER_APP = """
    import os
    import sys
    import trio
    import actors

    class Worker(actors.Actor):
        def __init__(self, directory):
            self.directory = directory

        async def on_start(self):
            print(f"PID {os.getpid()}", flush=True)

        async def on_stop(self):
            with open(os.path.join(self.directory, f"{self.ref.name}.stopped"), "w") as f:
                f.write("ok")

        async def receive(self, msg):
            return msg

    async def main(system):
        refs = [await system.spawn(Worker, sys.argv[1], name=f"worker-{i}") for i in range(2)]
        for ref in refs:
            assert await ref.ask("hi") == "hi"
        print("READY", flush=True)
        await trio.sleep_forever()
"""


def _stop_with_signal(tmp_path, launched, signum, group=False):
    """Run FOREVER_APP, then signal the driver (or, with `group`, every process of the system at once, as a service
    manager or `timeout` does): every actor stops gracefully, nothing is left; the exit code and stderr."""
    app = write_app(tmp_path, FOREVER_APP)
    p = launched("run", app, str(tmp_path), cwd=tmp_path, group=group)
    p.wait_for_line("READY")
    for i in range(2):              # an actor's lines come through its own pipe: they may trail the driver's
        p.wait_for_line(f"[worker-{i}] PID ")
    actor_pids = sorted(int(line.split()[-1]) for line in p.lines if "] PID " in line)
    assert len(actor_pids) == 2
    forkservers = children_of(p.proc.pid)
    assert forkservers, "the launcher has no fork server child"
    tree = sorted({*actor_pids, *forkservers, *(k for f in forkservers for k in children_of(f))})
    assert all(alive(pid) for pid in actor_pids)
    assert segments_of(p.proc.pid), "the running system has no store segment"

    if group:
        os.killpg(p.proc.pid, signum)
    else:
        p.proc.send_signal(signum)
    code = p.wait(TIMEOUT)
    assert code != 0, p.stderr()
    assert (tmp_path / "worker-0.stopped").read_text() == "ok"        # graceful: on_stop ran
    assert (tmp_path / "worker-1.stopped").read_text() == "ok"
    assert wait_gone(tree) == [], f"processes left behind: {tree}"
    assert segments_of(p.proc.pid) == []
    return code, p.stderr()


def test_a_killed_fork_server_stops_the_system_with_one_line_that_says_so(tmp_path, launched):
    # its actors die with it (they leave no orphan), and the stop does not wait out its timeout (60 s here) for
    # the reports of their exits that it would have sent
    app = write_app(tmp_path, FOREVER_APP)
    p = launched("run", "--stop-timeout", "60", app, str(tmp_path), cwd=tmp_path)
    p.wait_for_line("READY")
    [forkserver] = children_of(p.proc.pid)
    actor_pids = children_of(forkserver)
    assert len(actor_pids) == 2
    os.kill(forkserver, signal.SIGKILL)
    code = p.wait(TIMEOUT)
    assert code == 1, p.stderr()
    errors = [line for line in p.stderr().splitlines() if not line.startswith("[worker-")]
    assert errors == [f"ERROR actors._runtime.supervise: the fork server that starts actor processes (pid "
                      f"{forkserver}) exited: killed by SIGKILL, and every actor with it; the system stops"], \
        p.stderr()
    assert wait_gone(actor_pids) == []
    assert segments_of(p.proc.pid) == []


def test_sigterm_stops_the_actors_gracefully_and_exits_non_zero(tmp_path, launched):
    _stop_with_signal(tmp_path, launched, signal.SIGTERM)


def test_sigterm_exits_143_with_a_message_and_no_traceback(tmp_path, launched):
    code, stderr = _stop_with_signal(tmp_path, launched, signal.SIGTERM)
    assert code == 143, stderr
    assert "actors: terminated; every actor was stopped" in stderr
    assert "Traceback" not in stderr


ENDING_APP = """
    import os
    import signal
    import subprocess
    import trio
    import actors

    class Ending(actors.Actor):
        async def receive(self, msg):
            return os.getpid()

        async def on_stop(self):
            # a child that holds this actor's output, and writes to it a second after on_stop has returned
            subprocess.Popen(["sh", "-c", "sleep 1; echo late line"])

    async def main(system):
        ref = await system.spawn(Ending, name="ending")
        os.kill(await ref.ask(None), signal.SIGTERM)        # it stops on its own, for good
        with trio.fail_after(20):
            while True:                 # until its connections are closed: its on_stop is done
                try:
                    await ref.tell(None)
                except actors.ActorStoppedError:
                    break
                await trio.sleep(0.01)  # (polling, with a deadline)
        print("main done", flush=True)
"""


def test_the_system_waits_for_an_ending_actor_to_exit_before_it_ends(tmp_path):
    # The system's stop found the actor ending (its connections closed) and did not wait for its exit: the run
    # ended, the fork server with it, and the actor died (PR_SET_PDEATHSIG) before its output was all written.
    # A group SIGTERM lost what the actors' on_stop printed this way, now and then.
    app = write_app(tmp_path, ENDING_APP)
    proc = run_cli("run", str(app), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["main done", "[ending] late line"], (proc.stdout, proc.stderr)


def test_sigterm_to_every_process_at_once_stops_the_actors_gracefully(tmp_path, launched):
    # systemd's default (KillMode=control-group), `timeout` and `kill -TERM -PGID` signal the fork server and the
    # actors too: the actors still run on_stop, and the driver still reports them stopped, promptly
    code, stderr = _stop_with_signal(tmp_path, launched, signal.SIGTERM, group=True)
    assert code == 143, stderr
    assert stderr.splitlines() == ["actors: terminated; every actor was stopped"], stderr


def test_sighup_to_every_process_at_once_stops_the_actors_gracefully(tmp_path, launched):
    # a terminal that closes, or an ssh session that drops, hangs up its whole group
    code, stderr = _stop_with_signal(tmp_path, launched, signal.SIGHUP, group=True)
    assert code == 129, stderr
    assert stderr.splitlines() == ["actors: hung up; every actor was stopped"], stderr


SLOW_STOP_APP = """
    import os
    import sys
    import trio
    import actors

    class Worker(actors.Actor):
        async def on_stop(self):
            print("stopping", flush=True)
            release = os.path.join(sys.argv[1], "release")
            with trio.fail_after(60):
                while not os.path.exists(release):      # the test's go-ahead: the second signal is sent
                    await trio.sleep(0.01)
            with open(os.path.join(sys.argv[1], "stopped"), "w") as f:
                f.write("ok")

        async def receive(self, msg):
            return msg

    async def main(system):
        ref = await system.spawn(Worker, name="worker")
        assert await ref.ask("hi") == "hi"
        print("READY", flush=True)
        await trio.sleep_forever()
"""


def test_a_second_sigterm_while_the_actors_stop_changes_nothing(tmp_path, launched):
    # GNU timeout sends SIGTERM to the driver, then to its whole group: the second one reaches the driver while it
    # stops the actors, and must not kill it there (the store's segment and the run directory would be left)
    app = write_app(tmp_path, SLOW_STOP_APP)
    p = launched("run", app, str(tmp_path), cwd=tmp_path, group=True)
    p.wait_for_line("READY")
    driver = p.proc.pid
    tree = sorted({driver, *children_of(driver), *(k for f in children_of(driver) for k in children_of(f))})
    assert len(tree) >= 3, tree                 # the driver, its fork server, the actor
    p.proc.send_signal(signal.SIGTERM)
    p.wait_for_line("[worker] stopping")
    os.killpg(driver, signal.SIGTERM)
    (tmp_path / "release").write_text("")
    code = p.wait(TIMEOUT)
    assert code == 143, p.stderr()
    assert (tmp_path / "stopped").read_text() == "ok"       # on_stop ran to its end
    assert p.stderr().splitlines() == ["actors: terminated; every actor was stopped"], p.stderr()
    assert wait_gone(tree) == [], f"processes left behind: {tree}"
    assert segments_of(driver) == []


SPAWNING_APP = """
    import actors

    class Worker(actors.Actor):
        async def receive(self, msg):
            return msg

    async def main(system):
        print("spawning", flush=True)
        for i in range(1000):
            await system.spawn(Worker, name=f"worker-{i}")
"""


def test_sigterm_to_every_process_while_actors_start_stops_them_all(tmp_path, launched):
    # an actor process signalled before its receiver is in place must still stop gracefully, not die and fail
    # its spawn (the stop signals are blocked in a new actor process until then)
    app = write_app(tmp_path, SPAWNING_APP)
    p = launched("run", app, cwd=tmp_path, group=True)
    p.wait_for_line("spawning")
    for _ in range(3):                  # at three moments of the spawning
        os.killpg(p.proc.pid, signal.SIGTERM)
    code = p.wait(TIMEOUT)
    assert code == 143, p.stderr()
    assert p.stderr().splitlines() == ["actors: terminated; every actor was stopped"], p.stderr()
    assert segments_of(p.proc.pid) == []


def test_sigint_to_every_process_at_once_stops_the_actors_gracefully(tmp_path, launched):
    # Ctrl-C in a terminal signals its whole foreground group
    code, stderr = _stop_with_signal(tmp_path, launched, signal.SIGINT, group=True)
    assert code == 130, stderr
    assert stderr.splitlines() == ["stopping 2 actors… (Ctrl-C again to kill)",
                                   "actors: interrupted; every actor was stopped"]


def test_sigint_stops_the_actors_gracefully_and_exits_non_zero(tmp_path, launched):
    code, stderr = _stop_with_signal(tmp_path, launched, signal.SIGINT)
    assert code == 130, stderr
    assert stderr.splitlines() == ["stopping 2 actors… (Ctrl-C again to kill)",
                                   "actors: interrupted; every actor was stopped"]


STUBBORN_APP = """
    import trio
    import actors

    class Stubborn(actors.Actor):
        async def on_stop(self):
            print("STOPPING", flush=True)
            await trio.sleep_forever()          # never stops gracefully: only a kill ends it

        async def receive(self, msg):
            return msg

    async def main(system):
        refs = [await system.spawn(Stubborn, name=f"stubborn-{i}") for i in range(2)]
        for ref in refs:
            assert await ref.ask("hi") == "hi"
        print("READY", flush=True)
        await trio.sleep_forever()
"""


def test_second_sigint_kills_every_actor_at_once_with_one_line(tmp_path, launched):
    app = write_app(tmp_path, STUBBORN_APP)
    # a stop timeout far beyond the test's: only the second Ctrl-C can end the run in time
    p = launched("run", "--stop-timeout", "3600", app, cwd=tmp_path)
    p.wait_for_line("READY")
    tree = sorted({*children_of(p.proc.pid), *(k for f in children_of(p.proc.pid) for k in children_of(f))})
    assert len(tree) == 3, tree             # the fork server and two actors
    p.proc.send_signal(signal.SIGINT)
    p.wait_for_line("[stubborn-0] STOPPING")
    p.wait_for_line("[stubborn-1] STOPPING")
    p.proc.send_signal(signal.SIGINT)
    code = p.wait(TIMEOUT)
    assert code == 130, p.stderr()
    assert p.stderr().splitlines() == ["stopping 2 actors… (Ctrl-C again to kill)",
                                       "actors: interrupted again; killed 2 actors"]
    assert wait_gone(tree) == [], f"processes left behind: {tree}"
    assert segments_of(p.proc.pid) == []


# -- errors of the command itself -------------------------------------------------------------------------------------

def test_app_without_main_is_a_clear_error(tmp_path):
    app = write_app(tmp_path, """
        import actors

        def helper():
            return 1
    """, name="nomain.py")
    proc = run_cli("run", str(app), cwd=tmp_path)
    assert proc.returncode == 2
    assert "nomain.py" in proc.stderr and "main" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_main_that_is_not_async_exits_2_before_any_actor_starts(tmp_path):
    app = write_app(tmp_path, """
        import os

        print(f"imported in {os.getpid()}", flush=True)     # the fork server would import the app too

        def main(system):
            print("main ran")
    """, name="syncmain.py")
    proc = run_cli("run", str(app), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"actors: {app}: `main` is not an async function; define it as `async def main(system)`"]
    assert len([line for line in proc.stdout.splitlines() if line.startswith("imported in ")]) == 1, proc.stdout
    assert "main ran" not in proc.stdout


def _without_launcher_frames(stderr):
    return not any(marker in stderr for marker in ("_launcher.py", "_cli.py", "importlib", "runpy"))


def test_app_that_raises_on_import_shows_its_own_frames(tmp_path):
    write_app(tmp_path, """
        def fail():
            raise ValueError("helper-import-marker")
    """, name="helper.py")
    app = write_app(tmp_path, """
        import helper

        def setup():
            helper.fail()

        setup()

        async def main(system):
            pass
    """, name="broken.py")
    proc = run_cli("run", str(app), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert [line.strip() for line in lines if line.strip().startswith("File ")] == [
        f'File "{app}", line 7, in <module>', f'File "{app}", line 5, in setup',
        f'File "{tmp_path / "helper.py"}", line 3, in fail']
    assert lines[-1] == "ValueError: helper-import-marker"
    assert _without_launcher_frames(proc.stderr), proc.stderr


def test_app_with_a_syntax_error_shows_where_it_is(tmp_path):
    app = write_app(tmp_path, """
        async def main(system):
            return (1 +
    """, name="typo.py")
    proc = run_cli("run", str(app), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[0].strip() == f'File "{app}", line 3', proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("SyntaxError: "), proc.stderr
    assert "Traceback" not in proc.stderr and _without_launcher_frames(proc.stderr), proc.stderr


def test_run_of_a_missing_file_is_a_clear_error(tmp_path):
    proc = run_cli("run", str(tmp_path / "nowhere.py"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"actors: cannot run '{tmp_path / 'nowhere.py'}': no such file\n", proc.stderr
    proc = run_cli("run", "examples/pingpong.py", cwd=tmp_path)      # the README's path, from elsewhere
    assert proc.returncode == 2
    assert proc.stderr == f"actors: cannot run 'examples/pingpong.py': no such file (looked for from {tmp_path})\n", \
        proc.stderr
    (tmp_path / "dir.py").mkdir()
    proc = run_cli("run", "dir.py", cwd=tmp_path)
    assert proc.stderr == f"actors: cannot run 'dir.py': it is not a file (looked for from {tmp_path})\n", proc.stderr


@pytest.mark.parametrize("option, value", [("--stop-timeout", "-1"), ("--stop-timeout", "nan"),
                                           ("--stop-timeout", "abc")])
def test_a_stop_timeout_that_is_not_seconds_is_a_usage_error_before_main_runs(tmp_path, option, value):
    # -1 and nan were taken: main ran, then the stop failed with trio's traceback and exit code 1
    app = write_app(tmp_path, """
        async def main(system):
            print("main ran")
    """, name="quick.py")
    proc = run_cli("run", option, value, str(app), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"actors run: error: argument {option}: {value!r} is not a number of "
                                            f"seconds, 0 or more")
    assert proc.stdout == ""


def test_a_stop_timeout_of_inf_waits_without_end(tmp_path):
    app = write_app(tmp_path, """
        async def main(system):
            print("main ran")
    """, name="quick.py")
    proc = run_cli("run", "--stop-timeout", "inf", str(app), cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "main ran\n"), proc.stderr


def test_run_without_an_app_names_only_the_app_as_missing():
    # the app's own arguments are optional: argparse named them as missing too
    proc = run_cli("run")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == "actors run: error: the following arguments are required: app"


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_status_count_that_is_not_a_count_is_a_usage_error(value):
    # -1 was taken silently, as no limit
    proc = run_cli("status", "--watch", "--count", value)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"actors status: error: argument --count: {value!r} is not a count of "
                                            f"tables, 0 or more")


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_status_interval_that_is_not_seconds_is_a_usage_error(value):
    # both failed at the first refresh, with time.sleep's traceback
    proc = run_cli("status", "--watch", "--count", "2", "--interval", value)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"actors status: error: argument --interval: {value!r} is not a number "
                                            f"of seconds, 0 or more")


def test_serialize_without_deserialize_is_a_clear_error(tmp_path):
    app = write_app(tmp_path, """
        def serialize(obj):
            return b""

        async def main(system):
            print("main ran")
    """, name="halfcodec.py")
    proc = run_cli("run", str(app), cwd=tmp_path)
    assert proc.returncode == 2
    assert "serialize" in proc.stderr and "deserialize" in proc.stderr
    assert "main ran" not in proc.stdout


# -- cleanup ----------------------------------------------------------------------------------------------------------

def _stale_segment():
    """A segment named as if created by a process that is dead (a pid above pid_max never runs)."""
    with open("/proc/sys/kernel/pid_max") as f:
        dead_pid = int(f.read()) + 1
    name = f"{_store.PREFIX}{dead_pid}.12345.store.deadbeef"
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=4096)
    shm.close_fd()
    return name


def _unlink(name):
    try:
        posix_ipc.unlink_shared_memory("/" + name)
    except posix_ipc.ExistentialError:
        pass


@pytest.mark.parametrize("command", ["module", "console script"])
def test_cleanup_removes_stale_segments_and_prints(command):
    if command == "console script" and not os.path.exists(CONSOLE_SCRIPT):
        pytest.skip(f"no `actors` console script beside {sys.executable}")
    cmd = actors_cmd("cleanup") if command == "module" else [CONSOLE_SCRIPT, "cleanup"]
    # Any store created on this machine meanwhile (other systems running) also unlinks stale segments: try a few
    # times to catch `actors cleanup` being the one that removes ours.
    outputs = []
    for _ in range(5):
        name = _stale_segment()
        try:
            proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
            assert proc.returncode == 0, proc.stderr
            lines = proc.stdout.splitlines()
            assert re.fullmatch(r"\d+ stale segment\(s\) removed; \d+ in use by running systems", lines[-1]), lines
            assert name not in _store.our_segments()
            outputs.append(proc.stdout)
            if f"removed {name}" in lines:
                removed = int(lines[-1].split()[0])
                # the count is of segments; run directories (another run's killed launcher, say) print too
                assert removed == sum(line.startswith(f"removed {_store.PREFIX}") for line in lines) >= 1
                return
        finally:
            _unlink(name)
    pytest.fail(f"`actors cleanup` never reported removing a stale segment: {outputs}")


def test_cleanup_leaves_live_segments_alone():
    with _store.ObjectStore(capacity="1M") as store:
        proc = run_cli("cleanup")
        assert proc.returncode == 0, proc.stderr
        assert store.name in _store.our_segments()
        assert f"removed {store.name}" not in proc.stdout
        assert "in use by running systems" in proc.stdout


# -- output ------------------------------------------------------------------------------------------------------------

FLOOD_APP = """
    import sys
    import trio
    import actors

    LINES = int(sys.argv[1])


    def flood(who):
        for j in range(LINES):
            print(f"{who} line {j} " + "x" * (j % 300))
        # one print of many lines, more than a pipe takes in one piece
        print("\\n".join(f"{who} block {j} " + "y" * 60 for j in range(200)))


    class Printer(actors.Actor):
        async def flood(self, who):
            flood(who)


    async def main(system):
        printers = [await system.spawn(Printer, name=f"p{i}") for i in range(3)]

        async def go(printer, i):
            await printer.proxy.flood(f"actor {i}", timeout=120)

        async with trio.open_nursery() as nursery:
            for i, printer in enumerate(printers):
                nursery.start_soon(go, printer, i)
            await trio.sleep(0)
            flood("driver")
"""


def test_lines_from_the_driver_and_actors_flooding_at_once_never_splice(tmp_path):
    lines = 3000
    app = write_app(tmp_path, FLOOD_APP)
    out = run_cli("run", str(app), str(lines), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    expected = []
    for who, prefix in [("driver", "")] + [(f"actor {i}", f"[p{i}] ") for i in range(3)]:
        expected += [f"{prefix}{who} line {j} " + "x" * (j % 300) for j in range(lines)]
        expected += [f"{prefix}{who} block {j} " + "y" * 60 for j in range(200)]
    got = out.stdout.splitlines()
    spliced = [line for line in got if line not in set(expected)]
    assert spliced == [], f"{len(spliced)} spliced lines, the first: {spliced[:3]}"
    assert sorted(got) == sorted(expected)


PIPED_APP = """
    import actors


    class Talker(actors.Actor):
        async def talk(self, n):
            for i in range(n):
                print(f"line {i}")
            return n


    async def main(system):
        talker = await system.spawn(Talker, name="talker")
        for _ in range(5):
            assert await talker.proxy.talk(20000, timeout=120) == 20000
"""


def test_an_actor_goes_on_once_its_output_pipe_is_closed(tmp_path):
    # `actors run app.py | head -1`: the reader goes, and the actor's prints must not fail its handlers
    app = write_app(tmp_path, PIPED_APP)
    proc = subprocess.Popen(actors_cmd("run", str(app)), cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "[talker] line 0\n"
        proc.stdout.close()
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr[-3000:]


def test_the_drivers_stream_holds_a_partial_line_until_its_end_or_a_flush():
    from actors import _output
    read, write = os.pipe()
    try:
        with os.fdopen(write, "w", closefd=False) as raw:
            stream = _output.WholeLines(raw)
            stream.write("par")
            stream.write("tial")
            os.set_blocking(read, False)
            with pytest.raises(BlockingIOError):
                os.read(read, 100)                  # nothing yet: no line has ended
            stream.write(" line\nnext")
            assert os.read(read, 100) == b"partial line\n"
            stream.flush()
            assert os.read(read, 100) == b"next"
    finally:
        os.close(read)
        os.close(write)
    saved = sys.stdout, sys.stderr
    with _output.whole_lines():
        assert isinstance(sys.stdout, _output.WholeLines) and sys.stdout.stream is saved[0]
    assert (sys.stdout, sys.stderr) == saved


# -- logging ----------------------------------------------------------------------------------------------------------

LOGGING_APP = """
    import logging
    import sys

    import actors

    class Worker(actors.Actor):
        async def receive(self, n):
            log = logging.getLogger("app.worker")
            log.debug("debug %d", n)
            log.info("info %d", n)
            log.warning("warning %d", n)
            return n

    async def main(system):
        worker = await system.spawn(Worker, name="worker")
        await worker.ask(1)

    if __name__ == "__main__":
        # the program's own configuration, which its actors follow
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="custom|%(levelname)s|%(name)s|%(message)s")
        actors.run(main)
"""


def test_actors_log_at_the_launchers_level(tmp_path):
    app = write_app(tmp_path, LOGGING_APP)
    proc = run_cli("run", str(app), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "[worker] INFO app.worker: info 1" in lines and "[worker] WARNING app.worker: warning 1" in lines
    assert not [line for line in lines if "DEBUG" in line]
    proc = run_cli("run", "--log-level", "debug", str(app), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[worker] DEBUG app.worker: debug 1" in proc.stderr.splitlines()
    proc = run_cli("run", "--log-level", "error", str(app), cwd=tmp_path)
    assert proc.returncode == 0 and "warning 1" not in proc.stderr, proc.stderr


def test_actors_follow_the_logging_the_program_configured(tmp_path):
    app = write_app(tmp_path, LOGGING_APP)
    proc = subprocess.run([sys.executable, str(app)], cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    mine = [line for line in proc.stdout.splitlines() if line.startswith("custom|") and "app.worker" in line]
    assert mine == ["custom|DEBUG|app.worker|debug 1", "custom|INFO|app.worker|info 1",
                    "custom|WARNING|app.worker|warning 1"]
    assert "app.worker" not in proc.stderr         # nothing of theirs went around the program's configuration


@pytest.mark.parametrize("command", ["node", "run"])
def test_a_secret_file_that_cannot_be_read_is_a_clear_error(tmp_path, command):
    app = write_app(tmp_path, """
        async def main(system):
            pass
    """)
    args = ["--cluster", "etcd://127.0.0.1:9", "--secret-file", tmp_path / "missing.secret"]
    out = run_cli(command, *args, *([app] if command == "run" else []), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("actors: ") and str(tmp_path / "missing.secret") in out.stderr    # names the file
