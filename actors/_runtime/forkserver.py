"""The fork server: one process that imports numpy, trio, actors (and the app) once, then forks every actor.

Forking a warm process costs milliseconds; starting a fresh interpreter and re-importing numpy costs a large
fraction of a second per actor. The server is single-threaded and never runs trio, so forking it is safe.

Protocol on its control socket (length-prefixed pickles): the system sends ("spawn", token, payload); the server
answers ("spawned", token, pid), and reports ("exit", pid, returncode) when an actor process ends (a negative code
is the signal that killed it). When the system goes away (EOF), the server kills its actors and exits.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import traceback

import setproctitle

from actors._runtime.stop_signals import STOP_SIGNALS, stop_signals

LEN = struct.Struct("<I")


def frame(obj) -> bytes:
    """`obj` as one frame of the fork server's protocol: its length, then its pickle."""
    data = pickle.dumps(obj, protocol=5)
    return LEN.pack(len(data)) + data


def send_frame(sock: socket.socket, obj) -> None:
    """Write a frame on a blocking socket (the fork server's side)."""
    sock.sendall(frame(obj))


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket):
    head = _recv_exact(sock, LEN.size)
    if head is None:
        return None
    body = _recv_exact(sock, LEN.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG
    except Exception:
        pass


def _child(payload: bytes, why_fd: int, stops: list) -> None:
    """Run the actor in the new process. `stops`: the stop signals the system handles, blocked since the fork, so
    that one sent while the actor starts waits for the actor's receiver (worker.py), which unblocks them; not lost
    to the fork server's SIG_IGN, nor fatal before the actor could stop gracefully."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the system's to handle: it stops us
        for signum in stops:
            signal.signal(signum, signal.SIG_DFL)           # (one the system was started without stays ignored)
        signal.set_wakeup_fd(-1)
        _die_with_parent()
        from actors._runtime import worker
        code = worker.main(payload)
    except BaseException as exc:
        traceback.print_exc()
        # it died before it could report to the system (its class cannot be loaded here, say): say why through
        # the fork server, which adds it to the exit report
        try:
            os.write(why_fd, "".join(traceback.format_exception_only(exc)).strip().encode()[-4000:])
        except OSError:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(ctl: socket.socket, preload: list[str], app: tuple[str, str] | None, handled: list) -> None:
    """Fork actors on request until the system goes. `handled`: the stop signals the system handles (this process
    ignores them; each actor starts with them blocked)."""
    setproctitle.setproctitle("actors: fork server")    # in ps and top, not `python3 -c import pickle...<hex>`
    for name in preload:
        importlib.import_module(name)
    if app is not None:
        directory, module = app
        sys.path.insert(0, directory)
        importlib.import_module(module)
    children: dict[int, int] = {}      # pid -> the read end of its "why I failed early" pipe
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _die_with_parent()
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    send_frame(ctl, ("ready", os.getpid()))
    while True:
        for key, _ in sel.select():
            if key.data == "wake":
                os.read(wake_r, 4096)
                while children:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    why_fd = children.pop(pid, -1)
                    why = ""
                    if why_fd >= 0:
                        try:
                            why = os.read(why_fd, 4096).decode(errors="replace")
                        except OSError:
                            pass
                        os.close(why_fd)
                    send_frame(ctl, ("exit", pid, os.waitstatus_to_exitcode(status), why))
                continue
            msg = recv_frame(ctl)
            if msg is None:             # the system is gone: take its actors with us
                for pid in list(children):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                return
            _op, token, payload = msg
            why_r, why_w = os.pipe()
            os.set_blocking(why_r, False)
            signal.pthread_sigmask(signal.SIG_BLOCK, handled)
            pid = os.fork()
            if pid == 0:
                sel.close()
                ctl.close()
                os.close(wake_r)
                os.close(wake_w)
                os.close(why_r)
                for fd in children.values():
                    os.close(fd)
                _child(payload, why_w, handled)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
            os.close(why_w)
            children[pid] = why_r
            send_frame(ctl, ("spawned", token, pid))


def main() -> None:
    """Entry point: `python -c "from actors._runtime.forkserver import main; main()" FD SPEC`."""
    # Ctrl-C and the stop signals are the system's to handle: a terminal's Ctrl-C or hangup, a service manager,
    # `timeout` signal every process of the group, and the driver still needs us to report its actors' exits while
    # it stops them. We go when the driver closes our socket, or dies (_die_with_parent). The driver started us
    # with the stop signals blocked, so that none could kill us before this.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handled = stop_signals()
    for signum in handled:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    fd = int(sys.argv[1])
    spec = pickle.loads(bytes.fromhex(sys.argv[2]))
    sys.argv = spec.get("argv") or sys.argv[:1]     # the app sees its own arguments, as in the driver
    try:
        serve(socket.socket(fileno=fd), spec["preload"], spec["app"], handled)
    except (BrokenPipeError, ConnectionResetError):
        pass            # the system went away while we were talking to it: nothing left to serve
