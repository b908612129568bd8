"""The `actors` command: `actors run app.py` (or `module:function`), `actors node`, `actors status`,
`actors cleanup` and `actors --version`."""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys


def _cleanup(args) -> int:
    from actors import _store
    removed = _store.cleanup()
    for name in removed:
        print(f"removed {name}")
    for path in _store.cleanup_rundirs():
        print(f"removed {path}")
    live = [n for n in _store.our_segments() if _store.owner_alive(n)]
    print(f"{len(removed)} stale segment(s) removed; {len(live)} in use by running systems")
    return 0


def _status(args) -> int:
    from actors import _status
    return _status.main(args)


def _run(args) -> int:
    from actors import _launcher
    return _launcher.main(args)


def _node(args) -> int:
    from actors import _launcher
    return _launcher.node(args)


def _directory(text: str) -> str:
    if not text:        # `--resilience-dir "$UNSET"` would otherwise run with no persistence at all
        raise argparse.ArgumentTypeError("an empty path; give a directory")
    return text


def _seconds(text: str) -> float:
    # argparse's float takes "-1" and "nan", which failed only later: --stop-timeout when the system stopped, after
    # the app had run, --interval at the first refresh; both with a traceback. ("inf" is a wait without end.)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of tables, 0 or more")
    return value


def _system_options(command: argparse.ArgumentParser, *, cluster_required: bool) -> None:
    """The options of the commands that run a system: its store, persistence, stopping, logging, and cluster."""
    command.add_argument("--store-capacity", default=None, help="shared-memory store size, e.g. 512M or 4G")
    command.add_argument("--resilience-dir", default=None, type=_directory,
                         help="directory where persistent actors keep their journals and snapshots; run again "
                              "with the same directory to recover them")
    command.add_argument("--stop-timeout", type=_seconds, default=5.0,
                         help="seconds to wait for actors to stop gracefully before killing them (default 5)")
    command.add_argument("--log-level", default="INFO", type=str.upper,
                         choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                         help="the lowest level of log records shown, the actors' included (default INFO)")
    cluster = command.add_argument_group("cluster", "run as a node of a cluster (docs/cluster.md)")
    cluster.add_argument("--cluster", required=cluster_required, metavar="etcd://HOST:PORT",
                         help="the etcd that holds the cluster's membership and names")
    cluster.add_argument("--name", default=None, help="this node's name (default: HOSTNAME-PID)")
    cluster.add_argument("--labels", default="", metavar="k=v,...",
                         help="labels that spawn(labels=...) places actors by")
    cluster.add_argument("--listen", default=None, metavar="HOST:PORT",
                         help="where other nodes connect (default: this machine's address towards etcd, any "
                              "free port; without a secret, loopback only)")
    cluster.add_argument("--secret-file", default=None, metavar="FILE",
                         help="the cluster secret (owner-only file) that nodes authenticate each other with; "
                              "default: $ACTORS_CLUSTER_SECRET")
    cluster.add_argument("--lease-ttl", type=int, default=3, metavar="SECONDS",
                         help="how long a node out of touch with etcd keeps its place: then the others count it "
                              "as lost, and it stops itself (default 3)")
    cluster.add_argument("--margin", type=_seconds, default=1.0, metavar="SECONDS",
                         help="a node out of touch with etcd kills its persistent actors this long before its "
                              "lease can run out, so that they are dead before any replacement starts (default 1)")
    cluster.add_argument("--shared-resilience", action="store_true",
                         help="the resilience directory is on storage that every node mounts at the same path: "
                              "a persistent actor of a lost node starts again on another node")


class _Version(argparse.Action):
    """`actors --version`, on one line (argparse's own version action wraps it at the terminal's width). It says
    where the package was imported from, as pip does: a source checkout can shadow the installed package."""

    def __call__(self, parser, namespace, values, option_string=None):
        import actors
        print(f"actors {actors.__version__} from {os.path.dirname(actors.__file__)} "
              f"(Python {platform.python_version()})")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actors", description="Shared-memory actors for Python.")
    p.add_argument("--version", action=_Version, nargs=0, help="show the version, where it is installed, and exit")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an app: import it and call its `async def main(system)`")
    # (optional to argparse, required by `main`: argparse would name `args` as missing too)
    run.add_argument("app", nargs="?", help="path to the app's .py file, or module:function (options go before it)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the app (sys.argv[1:] inside it)")
    _system_options(run, cluster_required=False)
    run.set_defaults(func=_run, usage_error=run.error)
    node = sub.add_parser("node", help="run a node of a cluster: it runs the actors placed on it until stopped")
    _system_options(node, cluster_required=True)
    node.set_defaults(func=_node)
    status = sub.add_parser("status", help="show every running system of yours: its actors and its store")
    status.add_argument("--watch", action="store_true", help="refresh the table like top, until Ctrl-C")
    status.add_argument("--interval", type=_seconds, default=2.0, help="seconds between refreshes (default 2)")
    status.add_argument("--count", type=_count, default=0,
                        help="with --watch: stop after this many tables (default 0: until Ctrl-C)")
    status.set_defaults(func=_status)
    clean = sub.add_parser("cleanup", help="unlink shared memory left behind by crashed systems")
    clean.set_defaults(func=_cleanup)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run" and args.app is None:
        args.usage_error("the following arguments are required: app")      # (exits 2)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
