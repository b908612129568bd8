"""The shared-memory object store: put/get rates, large puts into a warm store, and get latency at any size.

Baselines in the same run: pickle over a pipe (pickle.dumps + write to put, read + pickle.loads to get), a numpy
copy of the same array for large puts, and Ray's object store when installed.

    python -m benchmarks.bench_store [--array-mb MB] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys

import numpy as np

import actors
from benchmarks import _harness, _peers

MESSAGE = {"id": 123, "name": "sensor-7", "values": [1.0, 2.0, 3.0], "ok": True, "tag": None}


class _PicklePipe:
    """pickle over a pipe: the simplest way to hand an object to another process."""

    def __init__(self):
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, True)

    def put(self, obj):
        data = pickle.dumps(obj, protocol=5)
        os.write(self.w, len(data).to_bytes(8, "little") + data)

    def get(self):
        n = int.from_bytes(os.read(self.r, 8), "little")
        chunks = []
        while n:
            chunk = os.read(self.r, min(n, 1 << 20))
            chunks.append(chunk)
            n -= len(chunk)
        return pickle.loads(b"".join(chunks))

    def close(self):
        os.close(self.r)
        os.close(self.w)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[_harness.parent_parser()])
    parser.add_argument("--array-mb", type=int, default=100, help="large array size in MiB (default 100)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a 10 MiB array")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.array_mb, args.duration = 2, 10, 0.05
    timing = dict(repeat=args.repeat, number=args.number, duration=args.duration)
    results = []

    with actors.ObjectStore(capacity=max(1 << 30, 4 * (args.array_mb << 20))) as store:
        # small objects
        put_s = _harness.time_op(lambda: store.put(MESSAGE), **timing)    # the ref is dropped: put + release
        ref = store.put(MESSAGE)
        get_s = _harness.time_op(lambda: store.get(ref), **timing)
        pp = _PicklePipe()
        pipe_put = _harness.time_op(lambda: (pp.put(MESSAGE), pp.get()), **timing)
        pp.put(MESSAGE)
        pipe_get = _harness.time_op(lambda: (pp.get(), pp.put(MESSAGE)), **timing)
        pp.get()
        pp.close()
        pipe_put, pipe_get = pipe_put - pipe_get / 2, pipe_get - pipe_put / 2   # split the round trip evenly
        results += [
            _harness.Result("put", "small message", "pickle over a pipe", max(pipe_put, 1e-9)),
            _harness.Result("put", "small message", "actors store", put_s),
            _harness.Result("get", "small message", "pickle over a pipe", max(pipe_get, 1e-9)),
            _harness.Result("get", "small message", "actors store", get_s),
        ]

        # a large array into a warm store, against copying it with numpy
        arr = np.random.rand((args.array_mb << 20) // 8)
        dst = np.empty_like(arr)
        np.copyto(dst, arr)
        store.put(arr)                              # warm: the next puts reuse this memory
        big_put = _harness.time_op(lambda: store.put(arr), repeat=args.repeat, number=3)
        copy_s = _harness.time_op(lambda: np.copyto(dst, arr), repeat=args.repeat, number=3)
        label = f"numpy {args.array_mb} MiB"
        results += [_harness.Result("put (warm store)", label, "numpy copy", copy_s),
                    _harness.Result("put (warm store)", label, "actors store", big_put)]

        # get latency at several sizes: zero copy, so flat
        gets = {}
        for size in (100, 1 << 20, args.array_mb << 20):
            r = store.put(np.zeros(size // 8))
            gets[size] = _harness.time_op(lambda: store.get(r), **timing)
            del r
        del ref

    _harness.add_ratios(results, "pickle over a pipe")
    for r in results:
        if r.benchmark.startswith("put (warm"):
            r.baseline = "numpy copy"
            r.ratio_vs_baseline = copy_s / r.seconds_per_op
    if not _peers.ray_available():
        results.append(_harness.Result("put", "small message", "ray", None, note="ray not installed"))

    _harness.print_machine()
    _harness.print_table("small message", [r for r in results if r.payload == "small message"],
                         baseline_label="vs pickle/pipe")
    print(f"    actors store: {1 / put_s:,.0f} puts/s, {1 / get_s:,.0f} gets/s")
    _harness.print_table(label, [r for r in results if r.payload == label], baseline_label="vs copy",
                         unit="ms")
    print(f"    actors store: {(args.array_mb << 20) / big_put / 1e9:.2f} GB/s, "
          f"numpy copy {(args.array_mb << 20) / copy_s / 1e9:.2f} GB/s")
    print("\nget latency by object size (zero copy):")
    for size, secs in gets.items():
        print(f"  {size:>12,} bytes  {secs * 1e6:7.2f} us")
        results.append(_harness.Result("get latency", f"{size} bytes", "actors store", secs))
    checks = [("small put >= 100k/s", 1 / put_s >= 100_000), ("small get >= 200k/s", 1 / get_s >= 200_000),
              (f"{args.array_mb} MiB put into a warm store >= 0.8x a numpy copy", copy_s / big_put >= 0.8),
              ("get <= 50 us at any size", max(gets.values()) <= 50e-6)]
    _harness.print_targets(checks)
    if args.json:
        _harness.write_json(args.json, results, targets=dict(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
