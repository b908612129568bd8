"""Ask round-trip latency (p50, p99) and cluster startup, with multiprocessing.Pipe measured in the same run.

    python -m benchmarks.bench_latency [--asks N] [--actors K] [--json PATH]

Latency ratios here are "times the baseline": 1.5x means 1.5 times Pipe's round trip (lower is better).
Startup is the time from `actors.run` to K actors each having answered one ask, fork server included.
"""
from __future__ import annotations

import argparse
import sys
import time

import actors
from benchmarks import _harness, _peers

MESSAGE = {"id": 123, "name": "sensor-7", "values": [1.0, 2.0, 3.0], "ok": True, "tag": None}


class Echo(actors.Actor):
    async def receive(self, message):
        return message


def _pct(times: list[float], q: float) -> float:
    times = sorted(times)
    return times[min(len(times) - 1, int(q * len(times)))]


def run_actors(args) -> dict:
    out = {}
    start = time.perf_counter()

    async def main(system):
        refs = [await system.spawn(Echo, name=f"echo-{i}") for i in range(args.actors)]
        for ref in refs:
            await ref.ask(0)
        out["startup"] = time.perf_counter() - start
        echo = refs[0]
        for _ in range(min(args.asks, 500)):
            await echo.ask(MESSAGE)
        times = []
        for _ in range(args.asks):
            t = time.perf_counter()
            await echo.ask(MESSAGE)
            times.append(time.perf_counter() - t)
        out["times"] = times

    actors.run(main)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[_harness.parent_parser()])
    parser.add_argument("--asks", type=int, default=10_000, help="timed round trips (default 10000)")
    parser.add_argument("--actors", type=int, default=8, help="actors started in the startup case (default 8)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.asks = 1000

    ours = run_actors(args)
    pipe = _peers.pipe_round_trips(MESSAGE, args.asks)
    rows = []
    for label, q in (("p50", 0.50), ("p99", 0.99)):
        base, mine = _pct(pipe, q), _pct(ours["times"], q)
        rows.append(_harness.Result("ask round trip", label, "multiprocessing.Pipe", base, "multiprocessing.Pipe",
                                    1.0))
        rows.append(_harness.Result("ask round trip", label, "actors", mine, "multiprocessing.Pipe", mine / base))
    if not _peers.ray_available():
        rows.append(_harness.Result("ask round trip", "p50", "ray", None, note="ray not installed"))
    rows.append(_harness.Result("startup", f"{args.actors} actors, each answered one ask", "actors",
                                ours["startup"]))

    _harness.print_machine()
    print(f"\nask round trip, small message ({args.asks} asks); ratio = times Pipe's (lower is better)")
    for r in rows:
        if r.benchmark == "ask round trip":
            value = "n/a" if r.seconds_per_op is None else f"{r.seconds_per_op * 1e6:8.1f} us"
            ratio = "" if r.ratio_vs_baseline is None else f"{r.ratio_vs_baseline:5.2f}x Pipe"
            print(f"  {r.payload}  {r.impl:<22} {value:>11}  {ratio}  {r.note}")
    print(f"\nstartup: {args.actors} actors, each answered one ask: {ours['startup']:.2f} s "
          f"(fork server start included)")
    p50_ratio = rows[1].ratio_vs_baseline
    checks = [(f"ask round trip p50 <= 2x Pipe (measured {p50_ratio:.2f}x)", p50_ratio <= 2.0)]
    _harness.print_targets(checks)
    if args.json:
        _harness.write_json(args.json, rows, targets=dict(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
