"""Message throughput between actors: one-way small messages, fan-in, a token ring, 1 MB `bytes`, 100 MB numpy
arrays, and a persistent receiver.

Every case prints its baseline measured in the same run, and the ratio. The cases run in alternating rounds (each
round measures a case and then its baseline, so both share the machine's load of that moment); each figure is the
median over the rounds, with the lowest and highest beside it, and each ratio the median of the rounds' ratios:

    python -m benchmarks.bench_throughput [--rounds N] [--count N] [--senders K] [--ring N] [--hops N]
                                          [--array-mb MB] [--arrays N] [--cases LIST] [--quick] [--json PATH]

- one-way, fan-in: a Source actor telling a Sink (K Sources for fan-in), against multiprocessing.Pipe with as many
  processes; messages/s, ours over the Pipe's.
- ring of N, ring of 2: N actors passing a token on, one wakeup per hop, against a ring of N processes joined by
  Pipes; hops/s, and CPU per hop (every process of the ring, and this one) as a multiple of the Pipe's.
- 1 MB bytes: a Source telling a Sink 1 MiB `bytes`, against an in-cache memcpy of 1 MiB (bytearray slice
  assignment); time per message over the copy's, and the CPU of sender and receiver per message.
- numpy: 100 MiB arrays, copied into the store and as `shared_array`, against multiprocessing.Pipe.
- persistent: the Sink journaling (fsync="group"), against the same Sink not persistent; and, for what the
  journal costs without waiting for the disk, the Sink journaling with fsync="interval" (synced every 50 ms).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import trio

import actors
from actors import testing
from benchmarks import _harness, _peers

MESSAGE = {"id": 123, "name": "sensor-7", "values": [1.0, 2.0, 3.0], "ok": True, "tag": None}
BIG = 1 << 20
COLUMN = 44            # width of the first column of the report
CASES = ("one-way", "fan-in", "ring", "ring-2", "bytes-1mb", "numpy", "persistent")


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

    async def pid(self):
        return os.getpid()


class PersistentSink(Sink):
    """The same sink, journaling every message (group commit) and snapshotting its state."""
    persistent = True
    fsync = "group"
    snapshot_every = 100_000


class IntervalSink(PersistentSink):
    """The persistent sink, its journal synced every 50 ms instead of before each batch is handled."""
    fsync = "interval"


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

    async def pid(self):
        return os.getpid()


class RingNode(actors.Actor):
    """One node of the token ring: passes the hop count on to the next node, or tells `done` at the last hop."""

    def __init__(self):
        self.next = None
        self.done = None

    async def join(self, next_node, done):
        self.next = next_node
        self.done = done
        return os.getpid()

    async def receive(self, hops):
        if hops <= 1:
            await self.done.tell(True)
        else:
            await self.next.tell(hops - 1)


class Ring:
    """N RingNodes joined in a ring, the probe `done` in this process told when the token's hops are spent."""

    @classmethod
    async def start(cls, system, n: int, name: str):
        ring = cls()
        ring.done = testing.Probe(system, name=f"{name}-done")
        ring.nodes = [await system.spawn(RingNode, name=f"{name}-{i}") for i in range(n)]
        ring.pids = [os.getpid()]
        for i, node in enumerate(ring.nodes):
            ring.pids.append(await node.proxy.join(ring.nodes[(i + 1) % n], ring.done.ref))
        await ring.run(2 * n)               # every link opened, every node warm
        return ring

    async def run(self, hops: int) -> tuple[float, float]:
        """(seconds, CPU seconds of every node and this process) for `hops` hops."""
        cpu = _peers.cpu_seconds(self.pids)
        start = time.perf_counter()
        await self.nodes[0].tell(hops)
        await self.done.expect(True, timeout=600)
        return time.perf_counter() - start, _peers.cpu_seconds(self.pids) - cpu


def memcpy_seconds(nbytes: int, n: int) -> float:
    """Seconds per in-cache copy of `nbytes` (the same source into the same preallocated bytearray)."""
    src = bytes(nbytes)
    dst = bytearray(nbytes)
    dst[:] = src
    start = time.perf_counter()
    for _ in range(n):
        dst[:] = src
    return (time.perf_counter() - start) / n


def measure(args) -> dict:
    """case -> {"ours": [per round], "base": [...], "ours_cpu": [...], "base_cpu": [...], "shared": [...]}: seconds
    per operation, CPU seconds per operation, and the numpy case's shared_array."""
    out = {case: {"ours": [], "base": [], "ours_cpu": [], "base_cpu": [], "shared": [], "interval": []}
           for case in args.cases}
    pipe_rings = {}
    if "ring" in args.cases:
        pipe_rings["ring"] = _peers.PipeRing(args.ring)
    if "ring-2" in args.cases:
        pipe_rings["ring-2"] = _peers.PipeRing(2)
    for ring in pipe_rings.values():
        ring.run(2 * len(ring.procs))

    async def main(system):
        sink = await system.spawn(Sink, name="sink")
        source = await system.spawn(Source, name="source")
        pair = [os.getpid(), await source.proxy.pid(), await sink.proxy.pid()]
        await source.proxy.send(sink, min(args.count, 10_000), MESSAGE)
        rings = {}
        if "ring" in args.cases:
            rings["ring"] = await Ring.start(system, args.ring, "ring")
        if "ring-2" in args.cases:
            rings["ring-2"] = await Ring.start(system, 2, "ring-2")
        if "fan-in" in args.cases:
            fan_sink = await system.spawn(Sink, name="fan-sink")
            sources = [await system.spawn(Source, name=f"source-{i}") for i in range(args.senders)]
        if "persistent" in args.cases:
            psink = await system.spawn(PersistentSink, name="persistent-sink")
            isink = await system.spawn(IntervalSink, name="interval-sink")
            for warm in (psink, isink):
                await source.proxy.send(warm, min(args.count, 10_000), MESSAGE)
        payload = bytes(BIG)
        if "bytes-1mb" in args.cases:
            await source.proxy.send(sink, 10, payload)

        for _ in range(args.rounds):
            if "one-way" in args.cases:
                out["one-way"]["ours"].append(await source.proxy.send(sink, args.count, MESSAGE) / args.count)
                out["one-way"]["base"].append(_peers.pipe_one_way(MESSAGE, args.count) / args.count)
            if "fan-in" in args.cases:
                n_each = args.count // args.senders
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for s in sources:
                        nursery.start_soon(s.proxy.send, fan_sink, n_each, MESSAGE)
                out["fan-in"]["ours"].append((time.perf_counter() - start) / (n_each * args.senders))
                out["fan-in"]["base"].append(_peers.pipe_fan_in(MESSAGE, args.senders, n_each)
                                             / (n_each * args.senders))
            for case, ring in rings.items():
                seconds, cpu = await ring.run(args.hops)
                out[case]["ours"].append(seconds / args.hops)
                out[case]["ours_cpu"].append(cpu / args.hops)
                seconds, cpu = pipe_rings[case].run(args.hops)
                out[case]["base"].append(seconds / args.hops)
                out[case]["base_cpu"].append(cpu / args.hops)
            if "bytes-1mb" in args.cases:
                cpu = _peers.cpu_seconds(pair)
                out["bytes-1mb"]["ours"].append(await source.proxy.send(sink, args.big, payload) / args.big)
                out["bytes-1mb"]["ours_cpu"].append((_peers.cpu_seconds(pair) - cpu) / args.big)
                out["bytes-1mb"]["base"].append(memcpy_seconds(BIG, args.big))
            if "numpy" in args.cases:
                nbytes = args.array_mb << 20
                out["numpy"]["ours"].append(await source.proxy.send_array(sink, args.arrays, nbytes) / args.arrays)
                arr = np.random.rand(nbytes // 8)
                out["numpy"]["base"].append(_peers.pipe_one_way(arr, args.arrays) / args.arrays)
                del arr
                out["numpy"]["shared"].append(await source.proxy.send_shared(sink, args.arrays, nbytes) / args.arrays)
            if "persistent" in args.cases:
                out["persistent"]["ours"].append(await source.proxy.send(psink, args.count, MESSAGE) / args.count)
                out["persistent"]["base"].append(await source.proxy.send(sink, args.count, MESSAGE) / args.count)
                out["persistent"]["interval"].append(await source.proxy.send(isink, args.count, MESSAGE) / args.count)

    try:
        with tempfile.TemporaryDirectory(prefix="bench-resilience-") as resilience_dir:
            actors.run(main, store_capacity=max(1 << 30, 4 * (args.array_mb << 20) * 2),
                       resilience_dir=resilience_dir)
    finally:
        for ring in pipe_rings.values():
            ring.close()
    return out


def _ratios(base: list, ours: list) -> list:
    return [b / o for b, o in zip(base, ours)]


def _fmt_spread(values: list, scale: float = 1e6) -> str:
    med, lo, hi = _harness.median_spread(values)
    return f"{med * scale:10.2f} ({lo * scale:.2f} to {hi * scale:.2f})"


def _fmt_ratio(values: list) -> str:
    med, lo, hi = _harness.median_spread(values)
    return f"{med:5.2f}x ({lo:.2f} to {hi:.2f})"


def _variant(label: str, base_name: str, base: list, name: str, values: list, said: str, note: str | None = None):
    """Print a second way of doing a case (seconds per operation in `values`) beside its baseline, and say `said`
    after it; its Result for --json, with `note` (else `said`)."""
    print(f"  {name:<{COLUMN}} {_fmt_spread(values)} us/op   {_fmt_ratio(_ratios(base, values))}   {said}")
    return _harness.Result("throughput", label, name, statistics.median(values), base_name,
                           statistics.median(_ratios(base, values)), note=note or said, rounds=values)


def report(args, m: dict) -> tuple[list, list]:
    """Print every case beside its baseline; (results for --json, targets)."""
    results, checks = [], []
    labels = {"one-way": ("small message, 1 -> 1", "multiprocessing.Pipe"),
              "fan-in": (f"small message, {args.senders} -> 1", "multiprocessing.Pipe"),
              "ring": (f"token ring of {args.ring}, {args.hops} hops", "multiprocessing.Pipe ring"),
              "ring-2": (f"token ring of 2, {args.hops} hops", "multiprocessing.Pipe ring"),
              "bytes-1mb": ("1 MiB bytes, 1 -> 1", "memcpy of 1 MiB, in cache"),
              "numpy": (f"numpy {args.array_mb} MiB, 1 -> 1", "multiprocessing.Pipe"),
              "persistent": ("small message, 1 -> 1 persistent actor", "actors, not persistent")}
    print(f"\n{args.rounds} alternating rounds; medians, (lowest to highest); a ratio is the median of the rounds' "
          f"ratios, > 1 is better unless it says lower")
    for case in CASES:
        if case not in args.cases:
            continue
        label, base_name = labels[case]
        ours, base = m[case]["ours"], m[case]["base"]
        speed = _ratios(base, ours)
        print(f"\n{label}")
        print(f"  {base_name + ' (baseline)':<{COLUMN}} {_fmt_spread(base)} us/op")
        impl = "actors, persistent (journal, group commit)" if case == "persistent" else "actors"
        print(f"  {impl:<{COLUMN}} {_fmt_spread(ours)} us/op   {_fmt_ratio(speed)}")
        results.append(_harness.Result("throughput", label, base_name, statistics.median(base), base_name, 1.0,
                                       rounds=base))
        results.append(_harness.Result("throughput", label, impl, statistics.median(ours), base_name,
                                       statistics.median(speed), rounds=ours))
        if case in ("ring", "ring-2"):
            cpu = _ratios(m[case]["ours_cpu"], m[case]["base_cpu"])       # ours as a multiple: lower is better
            print(f"  hops/s: actors {1 / statistics.median(ours):,.0f}, Pipe {1 / statistics.median(base):,.0f}")
            print(f"  CPU per hop, us: Pipe {_fmt_spread(m[case]['base_cpu'])}, actors "
                  f"{_fmt_spread(m[case]['ours_cpu'])}: {_fmt_ratio(cpu)} Pipe's (lower is better)")
            results.append(_harness.Result("cpu per hop", label, base_name, statistics.median(m[case]["base_cpu"]),
                                           base_name, 1.0, rounds=m[case]["base_cpu"]))
            results.append(_harness.Result("cpu per hop", label, "actors", statistics.median(m[case]["ours_cpu"]),
                                           base_name, 1 / statistics.median(cpu), rounds=m[case]["ours_cpu"]))
            checks.append((f"{label}: >= 1.0x Pipe hops/s (measured {statistics.median(speed):.2f}x)",
                           statistics.median(speed) >= 1.0))
            if case == "ring":
                checks.append((f"{label}: <= 1.5x Pipe CPU per hop (measured {statistics.median(cpu):.2f}x)",
                               statistics.median(cpu) <= 1.5))
        elif case == "bytes-1mb":
            print(f"  actors: {BIG / statistics.median(ours) / 1e9:.2f} GB/s, CPU per message "
                  f"{_fmt_spread(m[case]['ours_cpu'])} us (sender and receiver); memcpy "
                  f"{BIG / statistics.median(base) / 1e9:.2f} GB/s")
            results.append(_harness.Result("cpu per message", label, "actors", statistics.median(m[case]["ours_cpu"]),
                                           note="sender and receiver", rounds=m[case]["ours_cpu"]))
            checks.append((f"{label}: >= 0.35x an in-cache memcpy (measured {statistics.median(speed):.2f}x)",
                           statistics.median(speed) >= 0.35))
        elif case == "numpy":
            results.append(_variant(label, base_name, base, "actors, shared_array", m[case]["shared"],
                                    "filled in place, sent with no copy"))
            checks.append((f"{label}: >= 10x Pipe (measured {statistics.median(speed):.2f}x)",
                           statistics.median(speed) >= 10))
        elif case == "persistent":
            results.append(_variant(label, base_name, base, 'actors, persistent, fsync="interval"',
                                    m[case]["interval"], "the journal without waiting for the disk",
                                    note="synced every 50 ms: the journal without waiting for the disk"))
            checks.append((f"persistent actor >= 0.85x the same actor without persistence (measured "
                           f"{statistics.median(speed):.2f}x)", statistics.median(speed) >= 0.85))
        else:
            print(f"  actors: {1 / statistics.median(ours):,.0f} msg/s, Pipe {1 / statistics.median(base):,.0f} msg/s")
            checks.append((f"{label}: >= 5x Pipe (measured {statistics.median(speed):.2f}x)",
                           statistics.median(speed) >= 5))
        if case in ("one-way", "fan-in", "ring") and not _peers.ray_available():
            results.append(_harness.Result("throughput", label, "ray", None, note="ray not installed"))
    return results, checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[_harness.parent_parser()])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--count", type=int, default=200_000, help="small messages per run (default 200000)")
    parser.add_argument("--senders", type=int, default=8, help="senders in the fan-in case (default 8)")
    parser.add_argument("--ring", type=int, default=100, help="actors in the token ring (default 100)")
    parser.add_argument("--hops", type=int, default=10_000, help="hops of the token per run (default 10000)")
    parser.add_argument("--big", type=int, default=2000, help="1 MiB messages per run (default 2000)")
    parser.add_argument("--array-mb", type=int, default=100, help="array size in MiB (default 100)")
    parser.add_argument("--arrays", type=int, default=10, help="arrays per run (default 10)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args(argv)
    args.cases = set(args.cases.split(","))
    unknown = args.cases - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.count, args.hops, args.big, args.arrays, args.array_mb = 20_000, 1000, 200, 3, 10
        args.ring = min(args.ring, 20)

    load = os.getloadavg()[0]
    m = measure(args)
    _harness.print_machine()
    print(f"load average (1 min) at the start: {load:.2f}")
    results, checks = report(args, m)
    _harness.print_targets(checks, "targets (ratio to the baseline in this run):")
    if args.json:
        _harness.write_json(args.json, results, targets=dict(checks), load_average=load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
