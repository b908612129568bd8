"""Ask round-trip latency (p50, p99) and CPU per round trip, with a multiprocessing.Pipe echo measured in the same
run; and startup from nothing.

    python -m benchmarks.bench_latency [--asks N] [--actors K] [--json PATH]

Latency and CPU ratios here are "times the baseline": 1.5x means 1.5 times the Pipe's (lower is better). The CPU
of a round trip is that of both processes, the asker's and the echo's. Startup is the time from `actors.run` to K
actors each having answered one ask, spawned side by side, the system's start and its fork server included; Ray's
time for the same is printed when Ray is installed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import trio

import actors
from benchmarks import _harness, _peers

MESSAGE = {"id": 123, "name": "sensor-7", "values": [1.0, 2.0, 3.0], "ok": True, "tag": None}


class Echo(actors.Actor):
    async def receive(self, message):
        return message

    async def pid(self):
        return os.getpid()


def _pct(times: list[float], q: float) -> float:
    times = sorted(times)
    return times[min(len(times) - 1, int(q * len(times)))]


def run_actors(args) -> dict:
    out = {}
    start = time.perf_counter()

    async def main(system):
        refs = [None] * args.actors

        async def start_one(i):     # spawned side by side, as Ray creates its actors: each answers one ask
            refs[i] = await system.spawn(Echo, name=f"echo-{i}")
            await refs[i].ask(0)

        async with trio.open_nursery() as nursery:
            for i in range(args.actors):
                nursery.start_soon(start_one, i)
        out["startup"] = time.perf_counter() - start
        echo = refs[0]
        for _ in range(min(args.asks, 500)):
            await echo.ask(MESSAGE)
        pids = (os.getpid(), await echo.proxy.pid())
        times = []
        cpu = _peers.cpu_seconds(pids)
        for _ in range(args.asks):
            t = time.perf_counter()
            await echo.ask(MESSAGE)
            times.append(time.perf_counter() - t)
        out["cpu"] = (_peers.cpu_seconds(pids) - cpu) / args.asks
        out["times"] = times

    actors.run(main)
    return out


def ray_startup(n: int):
    """Seconds from nothing to `n` Ray actors each having answered one call, `ray.init` included; None without
    Ray."""
    if not _peers.ray_available():
        return None
    import ray

    @ray.remote
    class RayEcho:
        def echo(self, message):
            return message

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    try:
        refs = [RayEcho.remote() for _ in range(n)]
        ray.get([r.echo.remote(0) for r in refs])
        return time.perf_counter() - start
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[_harness.parent_parser()])
    parser.add_argument("--asks", type=int, default=10_000, help="timed round trips (default 10000)")
    parser.add_argument("--actors", type=int, default=64, help="actors started in the startup case (default 64)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.asks = 1000

    load = os.getloadavg()[0]
    ours = run_actors(args)
    pipe, pipe_cpu = _peers.pipe_round_trips(MESSAGE, args.asks)
    ray_start = ray_startup(args.actors)
    rows = []
    for label, q in (("p50", 0.50), ("p99", 0.99)):
        base, mine = _pct(pipe, q), _pct(ours["times"], q)
        rows.append(_harness.Result("ask round trip", label, "multiprocessing.Pipe", base, "multiprocessing.Pipe",
                                    1.0, lower_is_better=True))
        rows.append(_harness.Result("ask round trip", label, "actors", mine, "multiprocessing.Pipe", mine / base,
                                    lower_is_better=True))
    if not _peers.ray_available():
        rows.append(_harness.Result("ask round trip", "p50", "ray", None, note="ray not installed"))
    rows.append(_harness.Result("cpu per round trip", "both processes", "multiprocessing.Pipe", pipe_cpu,
                                "multiprocessing.Pipe", 1.0, lower_is_better=True))
    rows.append(_harness.Result("cpu per round trip", "both processes", "actors", ours["cpu"], "multiprocessing.Pipe",
                                ours["cpu"] / pipe_cpu, lower_is_better=True))
    startup = f"{args.actors} actors, each answered one ask, from nothing"
    rows.append(_harness.Result("startup", startup, "actors", ours["startup"]))
    rows.append(_harness.Result("startup", startup, "ray", ray_start,
                                note="" if ray_start is not None else "ray not installed"))

    _harness.print_machine()
    print(f"load average (1 min) at the start: {load:.2f}")
    print(f"\nask round trip, small message ({args.asks} asks); ratio = times Pipe's (lower is better)")
    for r in rows:
        if r.benchmark == "ask round trip":
            value = "n/a" if r.seconds_per_op is None else f"{r.seconds_per_op * 1e6:8.1f} us"
            ratio = "" if r.ratio_vs_baseline is None else f"{r.ratio_vs_baseline:5.2f}x Pipe"
            print(f"  {r.payload}  {r.impl:<22} {value:>11}  {ratio}  {r.note}")
    cpu_ratio = ours["cpu"] / pipe_cpu
    print(f"  CPU per round trip (both processes): Pipe {pipe_cpu * 1e6:.1f} us, actors {ours['cpu'] * 1e6:.1f} us: "
          f"{cpu_ratio:.2f}x Pipe's")
    ray_text = "n/a (ray not installed)" if ray_start is None else f"{ray_start:.2f} s"
    print(f"\nstartup from nothing: {args.actors} actors, each answered one ask: {ours['startup']:.2f} s "
          f"(the system and its fork server included); ray: {ray_text}")
    p50_ratio, p99_ratio = rows[1].ratio_vs_baseline, rows[3].ratio_vs_baseline
    checks = [(f"ask round trip p50 <= 0.8x Pipe (measured {p50_ratio:.2f}x)", p50_ratio <= 0.8),
              (f"ask round trip p99 <= 1.0x Pipe (measured {p99_ratio:.2f}x)", p99_ratio <= 1.0),
              (f"CPU per round trip <= 1.0x Pipe (measured {cpu_ratio:.2f}x)", cpu_ratio <= 1.0),
              (f"startup of {args.actors} actors <= 1.0 s (measured {ours['startup']:.2f} s)",
               ours["startup"] <= 1.0)]
    if ray_start is not None:
        checks.append((f"startup <= Ray's ({ray_start:.2f} s)", ours["startup"] <= ray_start))
    _harness.print_targets(checks)
    if args.json:
        _harness.write_json(args.json, rows, targets=dict(checks), load_average=load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
