"""Running systems and processes in tests, each with a deadline: a system's `main` in this process (`run`), the
`actors` command in the foreground (`run_cli`) or the background (`Launched`), processes read from /proc, and
retrying or polling until something holds (never a sleep to wait for it)."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import trio

import actors
from actors import _store

MAIN_TIMEOUT = 90           # seconds for one system's `main`; the machine is shared and loaded: be generous
CLI_TIMEOUT = 180           # seconds for one run of the `actors` command


def run(main, *, timeout: float = MAIN_TIMEOUT, **options):
    """`actors.run(main)` with a deadline on `main`, so that no test can hang."""
    async def guarded(system):
        with trio.fail_after(timeout):
            return await main(system)

    options.setdefault("store_capacity", "64M")
    return actors.run(guarded, **options)


def env():
    """The environment for an `actors` subprocess: unbuffered output, a small store."""
    return dict(os.environ, PYTHONUNBUFFERED="1", ACTORS_STORE_CAPACITY="64M")


def actors_cmd(*args):
    return [sys.executable, "-m", "actors", *map(str, args)]


def run_cli(*args, cwd=None, timeout=CLI_TIMEOUT):
    """`python -m actors ARGS...` to completion; the CompletedProcess."""
    return subprocess.run(actors_cmd(*args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


# -- processes, from /proc --------------------------------------------------------------------------------------------

def _stat(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2:].split()


def minor_faults(pid):
    """The page faults `pid` has taken so far that needed no disk (a page mapped, or zeroed, on first touch)."""
    return int(_stat(pid)[7])


def cpu_seconds(pid):
    """The CPU time `pid` has used so far, user and system."""
    stat = _stat(pid)
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid):
    """The pids whose parent is `pid`."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat(entry)[1]) == pid:
                kids.append(int(entry))
        except OSError:
            continue
    return kids


def alive(pid):
    """Is `pid` a live process (not gone, not a zombie)?"""
    try:
        return _stat(pid)[0] != b"Z"
    except OSError:
        return False


def kill(pid):
    """SIGKILL `pid`, if it still exists."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_gone(pids, timeout=20.0):
    """Wait until none of `pids` is alive; those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in pids if alive(p)]:
            return []
        time.sleep(0.02)        # polling /proc, with a deadline
    return [p for p in pids if alive(p)]


# -- waiting inside a system ------------------------------------------------------------------------------------------

async def retry(call, *, timeout=30.0, errors=(actors.ActorsError,)):
    """`await call()` until it does not raise one of `errors` (an actor restarting); TooSlowError after `timeout`."""
    with trio.fail_after(timeout):
        while True:
            try:
                return await call()
            except errors:
                await trio.sleep(0.02)      # polling, with the deadline above


async def wait_until(predicate, *, timeout=20.0, what="the condition"):
    """Poll the async `predicate` until it is true; AssertionError after `timeout`."""
    deadline = trio.current_time() + timeout
    while True:
        if await predicate():
            return
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await trio.sleep(0.02)          # polling, with the deadline above


async def wait_for_file(path, *, timeout=20.0):
    """Poll until `path` exists (an actor in another process signals through the file system)."""
    async def exists():
        return os.path.exists(path)
    await wait_until(exists, timeout=timeout, what=f"{path} to exist")


# -- the `actors` command in the background ---------------------------------------------------------------------------

class Launched:
    """`python -m actors ARGS...` in the background; a thread collects its stdout lines."""

    def __init__(self, *args, cwd, stdin=None, group=False):
        """`group`: in a process group of its own (with its fork server and actors), which a test may signal whole,
        as a service manager or `timeout` does."""
        self.stderr_path = os.path.join(str(cwd), f"stderr-{time.monotonic_ns()}.txt")
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(actors_cmd(*args), cwd=cwd, env=env(), text=True, stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=group)
        self.lines = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate, what, timeout=CLI_TIMEOUT):
        """The first stdout line for which `predicate(line)` holds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line with {what} from the app; stdout: {self.lines[-20:]}; "
                                         f"stderr: {self.stderr()[-3000:]}")
                self._changed.wait(min(left, 0.2))

    def wait_for_line(self, text, timeout=CLI_TIMEOUT):
        """The first stdout line containing `text`."""
        return self.wait_for(lambda line: text in line, repr(text), timeout)

    def wait(self, timeout=CLI_TIMEOUT):
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def stderr(self):
        self._stderr.flush()
        with open(self.stderr_path) as f:
            return f.read()

    def tree(self):
        """The launcher's descendants: the fork server and the actors it forked."""
        out = []
        todo = [self.proc.pid]
        while todo:
            kids = children_of(todo.pop())
            out += kids
            todo += kids
        return out

    def kill(self):
        if self.proc.poll() is None:
            tree = self.tree()
            kill(self.proc.pid)
            for pid in tree:
                kill(pid)
            self.proc.wait(30)
        self._stderr.close()


@pytest.fixture
def launched():
    """`launched(*args, cwd=...)` starts `python -m actors ARGS...`; whatever a test started is killed after it."""
    started = []

    def launch(*args, cwd, stdin=None, group=False):
        p = Launched(*args, cwd=cwd, stdin=stdin, group=group)
        started.append(p)
        return p

    yield launch
    for p in started:           # a failed test must not leave a system running
        p.kill()
    _store.cleanup()            # the segments of killed launchers (their owners are dead)
    _store.cleanup_rundirs()


def run_source(tmp_path, source, *args, timeout=CLI_TIMEOUT):
    """`python -m actors run app_under_test.py ARGS...` on the (dedented) `source`; the CompletedProcess."""
    import textwrap
    app = tmp_path / "app_under_test.py"
    app.write_text(textwrap.dedent(source))
    return run_cli("run", app, *args, cwd=tmp_path, timeout=timeout)


async def gone(system, name):
    """True once no running actor is named `name` (for `wait_until`)."""
    try:
        await system.lookup(name)
    except actors.ActorNotFoundError:
        return True
    return False


def leftover_segments():
    """The segments of this test run (tagged by tests/conftest.py) that a test can have left: made by this process,
    or by one of the run's processes that has since died. Another run's, or this run's live systems', are not."""
    import os
    from actors import _store
    me = f"{_store.PREFIX}{os.getpid()}."
    mark = f".{_store.segment_tag()}"
    return {n for n in _store.our_segments() if mark in n and (n.startswith(me) or not _store.owner_alive(n))}


def as_other_user(fn, *, uid=65534, timeout=60.0):
    """fn() run in a forked child as another user (root only); its result, or its exception re-raised here.

    A fork, not an exec: the interpreter and this checkout may not be readable by that user."""
    import os
    import pickle
    import select

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                outcome = ("ok", fn())
            except BaseException as exc:
                outcome = ("raised", exc)
            os.write(write, pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read], [], [], left)[0]:
                os.kill(pid, 9)
                raise AssertionError(f"the child running as uid {uid} did not finish in {timeout} s")
            chunk = os.read(read, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert data, f"the child running as uid {uid} died before reporting"
    how, value = pickle.loads(data)
    if how == "raised":
        raise value
    return value
