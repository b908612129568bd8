"""`actors status`: a table of every running system of this user and its actors, once or refreshed like `top`.

Each system is found through its run directory (`actors.<driver pid>.<start time>.*` in the temporary directory,
this user's, its driver alive); its driver answers on the directory's status socket with `system.status()` as JSON.
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import time

from actors import _store
from actors._runtime.status import SOCKET, SystemStatus

READ_TIMEOUT = 5.0      # seconds a driver gets to answer (it asks each of its actors for at most half a second)


def running_systems() -> list[str]:
    """The run directories of this user's running systems, oldest driver first."""
    base = tempfile.gettempdir()
    found = []
    for entry in os.listdir(base):
        path = os.path.join(base, entry)
        if (entry.startswith(_store.PREFIX) and _store._owned(path, directory=True) and _store.owner_alive(entry)
                and os.path.exists(os.path.join(path, SOCKET))):
            found.append(path)
    return sorted(found, key=lambda p: os.stat(p).st_mtime)


def query(rundir: str, timeout: float = READ_TIMEOUT) -> SystemStatus:
    """One system's status, from its driver; OSError if it does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.path.join(rundir, SOCKET))
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    return SystemStatus.from_json(b"".join(chunks).decode())


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


COLUMNS = ("ID", "NAME", "CLASS", "PID", "STATE", "RESTARTS", "HANDLED", "MAILBOX", "UNACKED")


def table(status: SystemStatus) -> list[str]:
    """The system's heading line and its actors as a table, one line each."""
    lines = [f"system of driver {status.pid}: {len(status.actors)} actor(s); store {_size(status.store_used)} used "
             f"of {_size(status.store_capacity)} ({status.store_objects} objects), high-water mark "
             f"{_size(status.store_high_water)}"]
    rows = [COLUMNS] + [tuple("-" if v is None else str(v) for v in (
        a.id, a.name, a.cls, a.pid, a.state, a.restarts, a.handled, a.mailbox, a.unacked)) for a in status.actors]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    numeric = {0, 3, 5, 6, 7, 8}
    for row in rows:
        cells = [cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def report() -> list[str]:
    lines = []
    for rundir in running_systems():
        try:
            status = query(rundir)
        except (OSError, ValueError) as exc:
            lines.append(f"system in {rundir}: no answer ({exc})")
            continue
        lines += table(status) + [""]
    return lines or ["no running system"]


def main(args) -> int:
    try:
        return _show(args)
    except KeyboardInterrupt:       # the way out of --watch
        return 0


def _show(args) -> int:
    shown = 0
    while True:
        lines = report()
        if args.watch and sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")          # like top: the table in place of the last one
        print(time.strftime("%H:%M:%S"), "actors status" + (f" (every {args.interval:g} s; Ctrl-C to quit)"
                                                             if args.watch else ""))
        print("\n".join(lines), flush=True)
        shown += 1
        if not args.watch or (args.count and shown >= args.count):
            return 0
        time.sleep(args.interval)       # the refresh period of --watch
