"""Message throughput between actors: one-way small messages, fan-in, and 100 MB numpy arrays.

Every case prints multiprocessing.Pipe measured in the same run, and the ratio (higher is better):

    python -m benchmarks.bench_throughput [--count N] [--senders K] [--array-mb MB] [--arrays N] [--json PATH]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import trio

import actors
from benchmarks import _harness, _peers

MESSAGE = {"id": 123, "name": "sensor-7", "values": [1.0, 2.0, 3.0], "ok": True, "tag": None}


class Sink(actors.Actor):
    def __init__(self):
        self.count = 0
        self.nbytes = 0

    async def receive(self, message):
        self.count += 1
        if type(message) is np.ndarray:
            self.nbytes += message.nbytes

    async def total(self):
        return self.count


class PersistentSink(Sink):
    """The same sink, journaling every message (group commit) and snapshotting its state."""
    persistent = True
    fsync = "group"
    snapshot_every = 100_000


class Source(actors.Actor):
    async def send(self, sink, n, message):
        """Tell `sink` `n` copies of `message`; seconds until the sink has handled them all."""
        start = time.perf_counter()
        for _ in range(n):
            await sink.tell(message)
        await sink.proxy.total()            # ordered after the tells: returns once they are all handled
        return time.perf_counter() - start

    async def send_array(self, sink, n, nbytes):
        arr = np.random.rand(nbytes // 8)
        await sink.tell(arr)                # warm the store's memory
        await sink.proxy.total()
        start = time.perf_counter()
        for _ in range(n):
            await sink.tell(arr)
        await sink.proxy.total()
        return time.perf_counter() - start

    async def send_shared(self, sink, n, nbytes):
        warm = actors.shared_array(nbytes // 8, np.float64)
        warm[:] = 1
        del warm
        start = time.perf_counter()
        for _ in range(n):
            arr = actors.shared_array(nbytes // 8, np.float64)
            arr[:] = 1.0                    # filled in place, then sent as it is
            await sink.tell(arr)
        await sink.proxy.total()
        return time.perf_counter() - start


def run_actors(args) -> dict:
    out = {}

    async def main(system):
        sink = await system.spawn(Sink, name="sink")
        source = await system.spawn(Source, name="source")
        if "one-way" in args.cases:
            await source.proxy.send(sink, min(args.count, 10_000), MESSAGE)
            out["one-way"] = min([await source.proxy.send(sink, args.count, MESSAGE)
                                  for _ in range(args.repeat)]) / args.count
        if "fan-in" in args.cases:
            fan_sink = await system.spawn(Sink, name="fan-sink")
            sources = [await system.spawn(Source, name=f"source-{i}") for i in range(args.senders)]
            n_each = args.count // args.senders
            best = None
            for _ in range(args.repeat):
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for s in sources:
                        nursery.start_soon(s.proxy.send, fan_sink, n_each, MESSAGE)
                elapsed = time.perf_counter() - start
                best = elapsed if best is None else min(best, elapsed)
            out["fan-in"] = best / (n_each * args.senders)
        if "numpy" in args.cases:
            nbytes = args.array_mb << 20
            out["numpy"] = min([await source.proxy.send_array(sink, args.arrays, nbytes)
                                for _ in range(args.repeat)]) / args.arrays
            out["numpy-shared"] = min([await source.proxy.send_shared(sink, args.arrays, nbytes)
                                       for _ in range(args.repeat)]) / args.arrays

        if "persistent" in args.cases:
            psink = await system.spawn(PersistentSink, name="persistent-sink")
            await source.proxy.send(psink, min(args.count, 10_000), MESSAGE)
            out["persistent"] = min([await source.proxy.send(psink, args.count, MESSAGE)
                                     for _ in range(args.repeat)]) / args.count
            if "one-way" not in out:
                out["one-way"] = min([await source.proxy.send(sink, args.count, MESSAGE)
                                      for _ in range(args.repeat)]) / args.count

    with tempfile.TemporaryDirectory(prefix="bench-resilience-") as resilience_dir:
        actors.run(main, store_capacity=max(1 << 30, 4 * (args.array_mb << 20) * 2),
                   resilience_dir=resilience_dir)
    return out


def run_pipe(args) -> dict:
    out = {}
    if "one-way" in args.cases:
        out["one-way"] = min(_peers.pipe_one_way(MESSAGE, args.count) for _ in range(args.repeat)) / args.count
    if "fan-in" in args.cases:
        n_each = args.count // args.senders
        out["fan-in"] = min(_peers.pipe_fan_in(MESSAGE, args.senders, n_each)
                            for _ in range(args.repeat)) / (n_each * args.senders)
    if "numpy" in args.cases:
        arr = np.random.rand((args.array_mb << 20) // 8)
        out["numpy"] = min(_peers.pipe_one_way(arr, args.arrays) for _ in range(args.repeat)) / args.arrays
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[_harness.parent_parser()])
    parser.add_argument("--count", type=int, default=200_000, help="small messages per run (default 200000)")
    parser.add_argument("--senders", type=int, default=4, help="senders in the fan-in case (default 4)")
    parser.add_argument("--array-mb", type=int, default=100, help="array size in MiB (default 100)")
    parser.add_argument("--arrays", type=int, default=10, help="arrays per run (default 10)")
    parser.add_argument("--cases", default="one-way,fan-in,numpy,persistent",
                        help="comma-separated subset of one-way,fan-in,numpy,persistent")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.set_defaults(repeat=3)
    args = parser.parse_args(argv)
    args.cases = set(args.cases.split(","))
    if args.quick:
        args.count, args.arrays, args.array_mb, args.repeat = 20_000, 3, 10, 1

    ours = run_actors(args)
    pipe = run_pipe(args)
    results = []
    labels = {"one-way": "small message, 1 -> 1", "fan-in": f"small message, {args.senders} -> 1",
              "numpy": f"numpy {args.array_mb} MiB, 1 -> 1"}
    for case, label in labels.items():
        if case not in args.cases:
            continue
        results.append(_harness.Result("throughput", label, "multiprocessing.Pipe", pipe[case]))
        results.append(_harness.Result("throughput", label, "actors", ours[case]))
        if case == "numpy":
            results.append(_harness.Result("throughput", label, "actors, shared_array", ours["numpy-shared"],
                                           note="filled in place, sent with no copy"))
        if not _peers.ray_available():
            results.append(_harness.Result("throughput", label, "ray", None, note="ray not installed"))
    _harness.add_ratios(results, "multiprocessing.Pipe")

    _harness.print_machine()
    for label in labels.values():
        rows = [r for r in results if r.payload == label]
        if rows:
            _harness.print_table(label, rows, baseline_label="vs Pipe")
            for r in rows:
                if r.seconds_per_op:
                    rate = (f"{(args.array_mb << 20) / r.seconds_per_op / 1e9:.2f} GB/s"
                            if "numpy" in label else f"{1 / r.seconds_per_op:,.0f} msg/s")
                    print(f"    {r.impl}: {rate}")
    checks = []
    r1 = pipe["one-way"] / ours["one-way"] if "one-way" in args.cases else None
    if "one-way" in args.cases:
        checks.append((f"one-way small messages >= 3x (measured {r1:.2f}x)", r1 >= 3))
    if "numpy" in args.cases:
        rn = pipe["numpy"] / ours["numpy"]
        checks.append((f"100 MB numpy actor to actor >= 10x (measured {rn:.2f}x)", rn >= 10))
    if "fan-in" in args.cases and "one-way" in args.cases:
        # the issue states every target as a ratio to Pipe in the same run: fan-in's ratio must hold up
        rf = pipe["fan-in"] / ours["fan-in"]
        checks.append((f"fan-in ratio not below the 1:1 ratio (measured {rf:.2f}x vs {r1:.2f}x; absolute "
                       f"{1 / ours['fan-in']:,.0f} vs {1 / ours['one-way']:,.0f} msg/s)", rf >= r1))
    if "persistent" in args.cases:
        label = "small message, 1 -> 1 persistent actor"
        results.append(_harness.Result("throughput", label, "actors, not persistent", ours["one-way"]))
        results.append(_harness.Result("throughput", label, "actors, persistent (journal, group commit)",
                                       ours["persistent"]))
        _harness.add_ratios([r for r in results if r.payload == label], "actors, not persistent")
        _harness.print_table(label, [r for r in results if r.payload == label], baseline_label="vs plain")
        rp = ours["one-way"] / ours["persistent"]
        print(f"    persistent: {1 / ours['persistent']:,.0f} msg/s, not persistent {1 / ours['one-way']:,.0f} msg/s")
        checks.append((f"persistent actor >= 0.5x the same actor without persistence (measured {rp:.2f}x)",
                       rp >= 0.5))
    _harness.print_targets(checks, "targets (ratio to multiprocessing.Pipe, or to the plain actor, in this run):")
    if args.json:
        _harness.write_json(args.json, results, targets=dict(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
