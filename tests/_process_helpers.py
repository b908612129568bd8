"""Shared by the runtime tests: a deadline around a system's `main`, and the state of processes (from /proc)."""
import time

import trio

import actors


def run(main, *, timeout: float, **options):
    """`actors.run(main)` with a deadline on `main`, so that no test can hang."""
    async def guarded(system):
        with trio.fail_after(timeout):
            return await main(system)

    options.setdefault("store_capacity", "64M")
    return actors.run(guarded, **options)


def leftover_segments():
    """The segments of this test run (tagged by tests/conftest.py) that a test can have left: made by this process,
    or by one of the run's processes that has since died. Another run's, or this run's live systems', are not."""
    import os
    from actors import _store
    me = f"{_store.PREFIX}{os.getpid()}."
    mark = f".{_store.segment_tag()}"
    return {n for n in _store.our_segments() if mark in n and (n.startswith(me) or not _store.owner_alive(n))}


def _stat(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2:].split()


def children_of(pid):
    """The pids whose parent is `pid`."""
    import os
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


def wait_gone(pids, timeout=20.0):
    """Wait until none of `pids` is alive; those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in pids if alive(p)]:
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


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
