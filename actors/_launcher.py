"""`actors run app.py` (or `module:function`): import the app, run its `async def main(system)`, and supervise the
cluster.

The app is imported as a module named after its file (its directory goes first on sys.path, in the fork server
too), so its classes are importable by reference in every actor: `type(x) is Foo` holds across processes. If the
app defines top-level `serialize(obj) -> bytes` and `deserialize(data) -> obj`, they replace the fast codec for
every message payload.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import io
import logging
import os
import signal
import sys
import traceback

from actors._exceptions import ActorsError

# Frames of the import machinery and of this module: an app that fails to import is shown its own frames only.
_IMPORT_FRAMES = ("<frozen importlib._bootstrap", importlib.__file__, __file__)


def locate_app(spec: str) -> tuple[str, str, str, str]:
    """Where the app is, without running any of it: (its directory, now first on sys.path; its module's name; the
    function to run; the name errors call it by)."""
    usage = f"cannot run {spec!r}: give the path of an app's .py file, or module:function"
    if spec.endswith(".py"):
        if not os.path.isfile(spec):
            why = "it is not a file" if os.path.exists(spec) else "no such file"
            where = "" if os.path.isabs(spec) else f" (looked for from {os.getcwd()})"
            raise ActorsError(f"cannot run {spec!r}: {why}{where}")
        directory, filename = os.path.split(os.path.abspath(spec))
        sys.path.insert(0, directory)
        return directory, filename[:-3], "main", spec
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise ActorsError(usage)
    # as with `python -m`, modules in the working directory are importable (in the fork server too)
    directory = os.getcwd()
    sys.path.insert(0, directory)
    top = module_name.partition(".")[0]
    if importlib.util.find_spec(top) is None:
        raise ActorsError(f"cannot run {spec!r}: no module named {top!r}")
    return directory, module_name, function, module_name


def find_main(module, function: str, named: str):
    """The app's `async def main(system)` (or the function named after the colon)."""
    main = module
    for attribute in function.split("."):
        main = getattr(main, attribute, None)
    if main is None:
        raise ActorsError(f"{named} defines no `async def {function}(system)` to run")
    if not inspect.iscoroutinefunction(main):
        raise ActorsError(f"{named}: `{function}` is not an async function; define it as "
                          f"`async def {function}(system)`")
    return main


def print_app_error(exc: BaseException) -> None:
    """The traceback of an app that failed to import, without the launcher's and importlib's frames."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    te.stack = traceback.StackSummary.from_list(
        [frame for frame in te.stack if not frame.filename.startswith(_IMPORT_FRAMES)])
    print("".join(te.format()), end="", file=sys.stderr)


class Interrupts:
    """Ctrl-C under the launcher. The first stops every actor gracefully, as the end of `main` does; the second kills
    them all at once. A third is Python's own KeyboardInterrupt, a way out of a driver stuck outside trio.

    Installed as the SIGINT handler, trio leaves SIGINT to it: no KeyboardInterrupt is raised inside the system, so
    no exception group reaches the user. The handler runs in the driver's thread between bytecodes: it only writes
    with os.write, kills, and hands the cancellation to trio through the run's token (safe from a signal handler)."""

    def __init__(self):
        self.count = 0
        self.killed = 0
        self.system = None
        self.token = None
        self._previous = None

    def __enter__(self):
        # None: a handler installed by C code, which Python cannot reinstall; the default is the nearest
        self._previous = signal.getsignal(signal.SIGINT) or signal.SIG_DFL
        if self._previous is not signal.SIG_IGN:         # started with Ctrl-C ignored (nohup, `&`): keep it so
            signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)

    def wrap(self, main):
        """`main`, with the system and the trio run it belongs to noted for the handler."""
        import trio

        async def under_launcher(system):
            self.system, self.token = system, trio.lowlevel.current_trio_token()
            if self.count:
                return None             # interrupted while the system started: run nothing
            return await main(system)
        return under_launcher

    def _live_actors(self):
        if self.system is None:
            return []
        return [info for info in list(self.system.actors.values()) if not info.exited.is_set()]

    def _on_sigint(self, signum, frame):
        self.count += 1
        if self.count == 1:
            n = len(self._live_actors())
            os.write(2, f"stopping {n} actor{'' if n == 1 else 's'}… (Ctrl-C again to kill)\n".encode())
            if self.token is not None:
                self.token.run_sync_soon(self._cancel_main)
            return
        signal.signal(signal.SIGINT, self._previous)
        for info in self._live_actors():
            info.stopping = True        # a kill we asked for: not a failure to report or restart
            if info.pid > 0:
                try:
                    os.kill(info.pid, signal.SIGKILL)
                    self.killed += 1
                except ProcessLookupError:
                    pass

    def _cancel_main(self):
        if self.system.main_scope is not None:
            self.system.main_scope.cancel()


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


def cluster_options(args):
    """The cluster options of `actors run` or `actors node`, or None without --cluster."""
    if args.cluster is None:
        return None
    from actors._runtime.cluster.node import ClusterOptions, parse_labels, read_secret
    try:
        labels = parse_labels(args.labels)
    except ValueError as exc:
        raise ActorsError(f"--labels: {exc}") from None
    try:
        return ClusterOptions(args.cluster, name=args.name, labels=labels, listen=args.listen,
                              secret=read_secret(args.secret_file), lease_ttl=args.lease_ttl,
                              margin=args.margin, shared_resilience=args.shared_resilience)
    except ValueError as exc:
        raise ActorsError(f"--lease-ttl: {exc}") from None


def node(args) -> int:
    """`actors node --cluster etcd://HOST:PORT`: a node that runs the actors placed on it, until it is stopped
    (Ctrl-C or SIGTERM), when it stops them and leaves the cluster."""
    import trio
    from actors._runtime.driver import run
    configure_logging(args.log_level)
    try:
        options = cluster_options(args)
    except ActorsError as exc:
        print(f"actors: {exc}", file=sys.stderr)
        return 2

    async def serve(system):
        here = system.cluster
        print(f"node {here.name!r} (pid {os.getpid()}) joined the cluster at {options.url}; listening on "
              f"{here.host}:{here.port}")
        await trio.sleep_forever()

    with Interrupts() as interrupts:
        try:
            run(interrupts.wrap(serve), store_capacity=args.store_capacity, stop_timeout=args.stop_timeout,
                resilience_dir=args.resilience_dir, cluster=options)
        except (KeyboardInterrupt, SystemExit):
            pass
        except ActorsError as exc:
            print(f"actors: {exc}", file=sys.stderr)
            return 1
    print("actors: the node stopped its actors and left the cluster", file=sys.stderr)
    return 0


def main(args) -> int:
    from actors._runtime.driver import run
    # One write per line, as the actors' output pumps do: unbuffered (PYTHONUNBUFFERED, -u), print writes the text
    # and the newline apart, and an actor's line written between the two would be glued to the driver's.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True, write_through=False)
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
        directory, module_name, function, named = locate_app(args.app)
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            print_app_error(exc)
            return 1
        app_main = find_main(module, function, named)
        cluster = cluster_options(args)
        if cluster is not None:
            import cloudpickle
            cloudpickle.register_pickle_by_value(module)    # its classes reach nodes that do not have the file
    except ActorsError as exc:
        print(f"actors: {exc}", file=sys.stderr)
        return 2
    serialize = getattr(module, "serialize", None)
    deserialize = getattr(module, "deserialize", None)
    if (serialize is None) != (deserialize is None):
        print(f"actors: {args.app} defines only one of serialize/deserialize; define both or neither",
              file=sys.stderr)
        return 2
    with Interrupts() as interrupts:
        try:
            result = run(interrupts.wrap(app_main), store_capacity=args.store_capacity, serialize=serialize,
                         deserialize=deserialize, stop_timeout=args.stop_timeout,
                         resilience_dir=args.resilience_dir, cluster=cluster, _app=(directory, module_name))
        except KeyboardInterrupt:
            print("actors: interrupted; every actor was stopped", file=sys.stderr)
            return 130
        except SystemExit as exc:
            said = {143: "terminated", 129: "hung up"}.get(exc.code)
            if said is not None:
                try:
                    print(f"actors: {said}; every actor was stopped", file=sys.stderr)
                except OSError:
                    pass                # the terminal that hung up is gone
            return exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:
            if interrupts.system is None and isinstance(exc, ActorsError):
                print(f"actors: {exc}", file=sys.stderr)        # the system could not start: none of main ran
            elif not getattr(exc, "logged_by_system", False):   # else its log line above says it all
                traceback.print_exc()
            return 1
    if interrupts.count > 1:
        print(f"actors: interrupted again; killed {interrupts.killed} actor{'' if interrupts.killed == 1 else 's'}",
              file=sys.stderr)
        return 130
    if interrupts.count:
        print("actors: interrupted; every actor was stopped", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0
