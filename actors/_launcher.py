"""`actors run app.py`: import the app, run its `async def main(system)`, and supervise the cluster.

The app is imported as a module named after its file (its directory goes first on sys.path, in the fork server
too), so its classes are importable by reference in every actor: `type(x) is Foo` holds across processes. If the
app defines top-level `serialize(obj) -> bytes` and `deserialize(data) -> obj`, they replace the fast codec for
every message payload.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

from actors._exceptions import ActorsError


def load_app(path: str):
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise ActorsError(f"cannot run {path!r}: give the path of an app's .py file")
    directory, filename = os.path.split(os.path.abspath(path))
    module_name = filename[:-3]
    sys.path.insert(0, directory)
    module = importlib.import_module(module_name)
    main = getattr(module, "main", None)
    if main is None:
        raise ActorsError(f"{path} defines no `async def main(system)` to run")
    return module, (directory, module_name)


class LogLines(logging.Formatter):
    """`LEVEL logger: message`; a record an actor logged gets its name in front of each line, as the lines it
    prints do (`[worker] WARNING ...`)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        actor = getattr(record, "actor", None)
        if actor is None:
            return text
        return "\n".join(f"[{actor}] {line}" for line in text.split("\n"))


def configure_logging(level: str) -> None:
    """The launcher's logging, which the actors follow: their records are handled here."""
    logging.basicConfig(level=level.upper())
    for handler in logging.getLogger().handlers:
        handler.setFormatter(LogLines("%(levelname)s %(name)s: %(message)s"))


def main(args) -> int:
    from actors._runtime.driver import run
    configure_logging(args.log_level)
    sys.argv = [args.app, *args.args]
    try:
        if args.store_capacity is not None:
            from actors._store import _parse_size
            try:
                _parse_size(args.store_capacity)
            except ValueError:
                raise ActorsError(f"--store-capacity {args.store_capacity!r} is not a size; write it like 512M "
                                  f"or 4G") from None
        module, app = load_app(args.app)
    except ActorsError as exc:
        print(f"actors: {exc}", file=sys.stderr)
        return 2
    serialize = getattr(module, "serialize", None)
    deserialize = getattr(module, "deserialize", None)
    if (serialize is None) != (deserialize is None):
        print(f"actors: {args.app} defines only one of serialize/deserialize; define both or neither",
              file=sys.stderr)
        return 2
    try:
        result = run(module.main, store_capacity=args.store_capacity, serialize=serialize,
                     deserialize=deserialize, stop_timeout=args.stop_timeout, resilience_dir=args.resilience_dir,
                     _app=app)
    except KeyboardInterrupt:
        print("actors: interrupted; every actor was stopped", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code == 143:
            print("actors: terminated; every actor was stopped", file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else 1
    except Exception:
        traceback.print_exc()
        return 1
    return result if isinstance(result, int) else 0
