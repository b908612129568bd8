"""The signals that stop a system (`actors.run`) or an actor gracefully, and the exit code a run ends with for each:
SIGTERM (a service manager, `kill`, `timeout`), SIGHUP (the terminal or the ssh session is gone).

The driver handles them (`driver._driver_main`); the fork server ignores them, and starts with them blocked until it
does (`spawn.Spawner.start_forkserver`, `forkserver.main`); an actor process starts with them blocked until its
receiver is in place (`forkserver._child`, `worker._stop_on_signal`). A module of its own, which imports nothing of
the runtime, so that all of these can import it.
"""
from __future__ import annotations

import signal

STOP_SIGNALS = {signal.SIGTERM: 143, signal.SIGHUP: 129}


def stop_signals() -> list[signal.Signals]:
    """The stop signals this process handles: not one it was started with ignored (`nohup` ignores SIGHUP, and the
    system keeps ignoring it)."""
    return [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]
