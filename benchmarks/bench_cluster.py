"""Between two hosts simulated on this machine (network namespaces on a bridge, a real etcd): small tells, ask round
trips and a 100 MB numpy array from a program on one host to an actor on the other, each against a baseline
measured in the same round between the same two namespaces:

- one-way small tells against `multiprocessing.connection` over TCP (authenticated, as ours are), ratio = our rate /
  its rate;
- the ask round trip (p50, p99) against its request/reply, ratio = our time / its time (lower is better);
- the 100 MB array against a raw TCP socket's `sendall` of the same bytes, ratio = our throughput / its throughput.

    python -m benchmarks.bench_cluster [--rounds N] [--tells N] [--asks N] [--big-mb MB] [--big-count N] [--json PATH]

Needs root (namespaces) and etcd (`apt-get install etcd-server`). The contenders alternate within each round; the
figures are medians over the rounds, with their spread. Ray, when installed, would be an extra column; it is not
installed here, so it prints n/a.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys

from benchmarks import _harness, _peers

_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
SECRET = "bench-cluster-secret"
PORTS = {"mp": 47001, "raw": 47002}


def _hosts_module():
    """The simulated-hosts harness the cluster tests use (tests/_helpers/cluster.py), from the source tree."""
    if _TESTS not in sys.path:
        sys.path.insert(0, _TESTS)
    from _helpers import cluster
    return cluster


def _result(process, timeout: float) -> dict:
    while True:
        line = process.read_line(timeout)
        if line.startswith("result="):
            return json.loads(line[len("result="):])


def _peer(hosts, host, *args, log=None):
    env = ["env", f"ACTORS_CLUSTER_SECRET={SECRET}", f"PYTHONPATH={os.pathsep.join(sys.path)}"]
    return hosts.run(host, [*env, sys.executable, "-m", "benchmarks._cluster_peers", *map(str, args)], log=log)


def one_round(hosts, agent_node: str, args, first: str) -> dict:
    h1, h2 = hosts.hosts
    there = hosts.addresses[h2]
    out = {}

    def ours():
        program = _peer(hosts, h1, "actors", hosts.etcd_url, agent_node, args.tells, args.asks, args.big_mb,
                        args.big_count, log=os.path.join(hosts.dir, "actors.log"))
        out["actors"] = _result(program, 300)
        program.finish(60)

    def theirs():
        server = _peer(hosts, h2, "mp-server", PORTS["mp"], args.tells, args.asks)
        assert server.read_line(30) == "ready"
        client = _peer(hosts, h1, "mp-client", there, PORTS["mp"], args.tells, args.asks)
        out["mp"] = _result(client, 300)
        server.finish(30)
        server = _peer(hosts, h2, "raw-server", PORTS["raw"], args.big_mb, args.big_count)
        assert server.read_line(30) == "ready"
        client = _peer(hosts, h1, "raw-client", there, PORTS["raw"], args.big_mb, args.big_count)
        out["raw"] = _result(client, 300)
        server.finish(30)

    for run in ((ours, theirs) if first == "actors" else (theirs, ours)):
        run()
    return out


def _pct(times: list, q: float) -> float:
    times = sorted(times)
    return times[min(len(times) - 1, int(q * len(times)))]


def summarise(rounds: list, args) -> tuple[list, list]:
    """Per round: the figures and their ratios; then the rows (medians, every round kept) and the target checks."""
    big_bytes = args.big_mb * 1024 * 1024 * args.big_count
    cases = {
        "one-way small tells": ("msg/s", lambda r: args.tells / r["actors"]["tell_s"],
                                lambda r: args.tells / r["mp"]["tell_s"], "multiprocessing.connection", True),
        "ask round trip p50": ("us", lambda r: _pct(r["actors"]["ask_times"], 0.5) * 1e6,
                               lambda r: _pct(r["mp"]["ask_times"], 0.5) * 1e6, "multiprocessing.connection", False),
        "ask round trip p99": ("us", lambda r: _pct(r["actors"]["ask_times"], 0.99) * 1e6,
                               lambda r: _pct(r["mp"]["ask_times"], 0.99) * 1e6, "multiprocessing.connection", False),
        f"{args.big_mb} MB numpy array": ("MB/s", lambda r: big_bytes / r["actors"]["big_s"] / 1e6,
                                          lambda r: big_bytes / r["raw"]["big_s"] / 1e6, "raw TCP sendall", True),
    }
    rows, medians = [], {}
    for case, (unit, mine, base, base_name, higher_better) in cases.items():
        ours = [mine(r) for r in rounds]
        theirs = [base(r) for r in rounds]
        ratios = [o / t for o, t in zip(ours, theirs)]
        medians[case] = statistics.median(ratios)
        seconds = (lambda v: 1 / v) if higher_better else (lambda v: v / 1e6)
        rows.append(_harness.Result(case, unit, base_name, seconds(statistics.median(theirs)), base_name, 1.0,
                                    rounds=[seconds(v) for v in theirs]))
        rows.append(_harness.Result(case, unit, "actors", seconds(statistics.median(ours)), base_name,
                                    medians[case], note=f"ratio per round: {', '.join(f'{x:.2f}' for x in ratios)}",
                                    rounds=[seconds(v) for v in ours]))
        print(f"  {case:<24} actors {statistics.median(ours):>10,.1f} {unit:<5}  {base_name} "
              f"{statistics.median(theirs):>10,.1f} {unit:<5}  ratio {medians[case]:.2f}x "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f}){'' if higher_better else '  (lower is better)'}")
    rows.append(_harness.Result("one-way small tells", "msg/s", "ray", None,
                                note="ray installed: not measured here" if _peers.ray_available()
                                else "ray not installed"))
    checks = [
        (f"one-way small tells >= 2x multiprocessing.connection (measured {medians['one-way small tells']:.2f}x)",
         medians["one-way small tells"] >= 2.0),
        (f"ask round trip p50 <= 1.2x multiprocessing.connection (measured {medians['ask round trip p50']:.2f}x)",
         medians["ask round trip p50"] <= 1.2),
        (f"{args.big_mb} MB array >= 0.7x raw TCP (measured {medians[f'{args.big_mb} MB numpy array']:.2f}x)",
         medians[f"{args.big_mb} MB numpy array"] >= 0.7),
    ]
    return rows, checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[_harness.parent_parser()])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--tells", type=int, default=100_000, help="small tells per round (default 100000)")
    parser.add_argument("--asks", type=int, default=3000, help="timed asks per round (default 3000)")
    parser.add_argument("--big-mb", type=int, default=100, help="size of the large array in MB (default 100)")
    parser.add_argument("--big-count", type=int, default=5, help="large arrays per round (default 5)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.tells, args.asks, args.big_mb, args.big_count = 1, 5000, 300, 10, 2
    if os.geteuid() != 0 or shutil.which("etcd") is None or shutil.which("ip") is None:
        print("bench_cluster needs root (network namespaces), `ip` and etcd (apt-get install etcd-server iproute2)",
              file=sys.stderr)
        return 2
    cluster = _hosts_module()
    hosts = cluster.SimulatedHosts(2, etcd_binary=shutil.which("etcd"))
    rounds = []
    try:
        agent = hosts.run(hosts.hosts[1], [
            "env", f"ACTORS_CLUSTER_SECRET={SECRET}", sys.executable, "-m", "actors", "node",
            "--cluster", hosts.etcd_url, "--name", "far", "--store-capacity", f"{max(512, 4 * args.big_mb)}M",
            "--log-level", "WARNING"], log=os.path.join(hosts.dir, "agent.log"))
        line = agent.read_line(60)
        if "joined the cluster" not in line:
            raise RuntimeError(f"the node agent did not start: {line}")
        _harness.print_machine()
        print(f"\n{args.rounds} round(s) between two network namespaces: {args.tells} tells, {args.asks} asks, "
              f"{args.big_count} x {args.big_mb} MB per round")
        for i in range(args.rounds):
            rounds.append(one_round(hosts, "far", args, "actors" if i % 2 == 0 else "baseline"))
    finally:
        hosts.close()
    print("\nmedians over the rounds:")
    rows, checks = summarise(rounds, args)
    print("  ray: " + ("not measured here" if _peers.ray_available() else "n/a (not installed)"))
    _harness.print_targets(checks)
    if args.json:
        _harness.write_json(args.json, rows, targets=dict(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
