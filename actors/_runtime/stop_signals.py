"""The signals that stop a system (`actors.run`) or an actor gracefully, and the exit code a run ends with for each:
SIGTERM (a service manager, `kill`, `timeout`), SIGHUP (the terminal or the ssh session is gone).

The driver handles them (`driver._driver_main`); the fork server ignores them, and starts with them blocked until it
does (`spawn.Spawner.start_forkserver`, `forkserver.main`); an actor process starts with them blocked until its
handler is in place (`forkserver._child`, `worker._stop_on_signal`). A module of its own, which imports nothing of
the runtime, so that all of these can import it.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

import trio

STOP_SIGNALS = {signal.SIGTERM: 143, signal.SIGHUP: 129}


def stop_signals() -> list[signal.Signals]:
    """The stop signals this process handles: not one it was started with ignored (`nohup` ignores SIGHUP, and the
    system keeps ignoring it)."""
    return [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]


@contextlib.contextmanager
def handling_stop_signals(on_signal: Callable[[int], None], *, then=None) -> Iterator[list[signal.Signals]]:
    """Call `on_signal(signum)` in this trio run for each stop signal that comes while the block runs; it yields the
    signals handled (`stop_signals`). `on_signal` runs as a trio callback: it must not block, nor raise.

    Not `trio.open_signal_receiver`: when its block ends, that raises again every signal it received and nobody read,
    under the handler it restores, the default one, which kills. The second SIGTERM of a group stop (GNU `timeout`,
    systemd, `kill -TERM -PGID` sent twice), ignored while the process stopped gracefully, would then kill it at
    the very end, and it would exit on the signal (-15) instead of its own code. `then`: the handler to leave when
    the block ends, instead of the one it replaced (SIG_IGN for an actor's process, which is ending then)."""
    token = trio.lowlevel.current_trio_token()

    def handler(signum, frame):
        try:
            token.run_sync_soon(on_signal, signum)
        except trio.RunFinishedError:
            pass                        # the run is over: the process is stopping already

    signums = stop_signals()
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield signums
    finally:
        for signum, was in previous.items():
            signal.signal(signum, was if then is None else then)
