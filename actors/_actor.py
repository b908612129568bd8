"""The Actor base class and its validated options (supervision and persistence settings)."""
from __future__ import annotations

import math

from actors._exceptions import ActorsError
from actors._ref import ActorRef

# The longest wait between restarts that the doubling reaches (a longer restart_backoff is used as it is).
MAX_RESTART_BACKOFF = 10.0


class Actor:
    """Subclass this; each actor runs in its own process with its own trio loop.

    Override `async def receive(self, message)`: its return value answers an `ask`. Any other public
    `async def` method can be called through `ref.proxy.method(...)`, with the semantics of an ask. Messages are
    handled one at a time, in order per sender.

    Set before `__init__` runs: `self.system` (spawn and look up actors) and `self.ref` (this actor's ActorRef).
    """

    system: object
    ref: ActorRef

    # Supervision and persistence, per class; `system.spawn(..., options={...})` overrides them per actor.
    restart = "never"           # "never", "on-failure" or "always": what the system does when the process ends
    max_restarts = 3            # restart intensity: at most this many restarts ...
    restart_window = 60.0       # ... within this many seconds, else the whole system stops with an error
    restart_backoff = 0.1       # seconds before the first restart; doubles with each restart in the window, up to
                                # MAX_RESTART_BACKOFF (10 s)
    on_error = "resume"         # a handler raised: "resume" (log it, go on), "restart" (fail), "stop"
    persistent = False          # journal every message and snapshot the state, to recover after a crash
    snapshot_every = 1000       # messages between snapshots
    fsync = "group"             # journal durability: "always", "group" (each batch, before handling it), "interval"
    fsync_interval = 0.05       # seconds between syncs with fsync="interval"

    async def on_start(self) -> None:
        """Runs after `__init__`, before the first message; spawn() returns once it has finished."""

    async def on_stop(self) -> None:
        """Runs when the actor is stopped gracefully, after the messages it has received."""

    async def receive(self, message):
        raise NotImplementedError(f"{type(self).__qualname__} does not define `async def receive(self, message)`")


OPTION_CHOICES = {"restart": ("never", "on-failure", "always"), "on_error": ("resume", "restart", "stop"),
                  "fsync": ("always", "group", "interval")}
OPTIONS = ("restart", "max_restarts", "restart_window", "restart_backoff", "on_error", "persistent",
           "snapshot_every", "fsync", "fsync_interval")


# Numeric options: (type, smallest allowed value, whether that value itself is allowed).
OPTION_NUMBERS = {"max_restarts": (int, 0, True), "restart_window": (float, 0, False),
                  "restart_backoff": (float, 0, True), "snapshot_every": (int, 1, True),
                  "fsync_interval": (float, 0, False)}


def actor_options(cls, overrides: dict | None) -> dict:
    """The class's supervision and persistence settings, with `overrides` applied and checked: a bad value is
    refused here, before anything starts, rather than failing later inside the driver or the actor."""
    opts = {key: getattr(cls, key) for key in OPTIONS}
    for key, value in (overrides or {}).items():
        if key not in opts:
            raise ActorsError(f"unknown actor option {key!r}; the options are {', '.join(OPTIONS)}")
        opts[key] = value
    for key, choices in OPTION_CHOICES.items():
        if opts[key] not in choices:
            raise ActorsError(f"{key}={opts[key]!r} is not one of {', '.join(map(repr, choices))}")
    if type(opts["persistent"]) is not bool:
        raise ActorsError(f"persistent={opts['persistent']!r} must be True or False")
    for key, (kind, low, inclusive) in OPTION_NUMBERS.items():
        value = opts[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value >= low if inclusive else value > low) and (kind is float or value == int(value)))
        if not ok:
            what = "a whole number" if kind is int else "a finite number of seconds"
            raise ActorsError(f"{key}={value!r} must be {what} {'at least' if inclusive else 'above'} {low}")
    return opts


def restart_delay(backoff: float, restarts: int) -> float:
    """The wait before a restart: `backoff`, doubled for each restart already in the window, at most
    MAX_RESTART_BACKOFF (so that a crash loop, on a full disk say, retries often enough to recover soon after the
    cause is gone). A longer `backoff` is used as it is."""
    return min(backoff * 2.0 ** min(restarts, 64), max(backoff, MAX_RESTART_BACKOFF))
