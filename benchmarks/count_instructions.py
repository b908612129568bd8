"""Instructions per encode and per decode, counted by callgrind: figures that stay put on a busy machine.

Each (implementation, payload, operation) runs in its own `valgrind --tool=callgrind` process, which counts only
inside a `functools.reduce` loop of N calls (`--toggle-collect=functools_reduce`), after a warm-up; the count of the
same loop around a no-op call is subtracted, so a figure is the instructions of one call itself. Needs valgrind.
Note that callgrind counts each byte a `rep movsb` copy moves as one instruction: a large memcpy looks dearer than it
is.

    python -m benchmarks.count_instructions                      # every impl, payload and operation
    python -m benchmarks.count_instructions --impl actors --payload small
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import re
import shutil
import subprocess
import sys

IMPLS = ("actors", "msgspec.msgpack", "ormsgpack", "pickle")
OPS = ("encode", "decode")


def codec(impl: str, payload: str):
    """(encode, decode, object) of `impl` for `payload`, as bench_serialize measures them."""
    import importlib

    bench = importlib.import_module("benchmarks.bench_serialize")
    import actors

    actors.register_class(bench.Reading)
    obj = {"small": bench.small_message, "list100": bench.list100,
           "class": lambda: bench.Reading("sensor-7", 123, 21.5, "C", True)}[payload]()
    for name, encode, decode in bench.roundtrip_impls(payload):
        if name == impl:
            if encode is None:
                raise SystemExit(f"{impl}: {decode}")
            return encode, decode, bench.peer_payload(impl, payload, obj)
    raise SystemExit(f"unknown impl {impl!r}")


def run_loop(impl: str, payload: str, op: str, calls: int) -> None:
    """The measured process: warm up, then `calls` calls inside functools.reduce, where callgrind counts."""
    if impl == "noop":
        fn = int
    else:
        encode, decode, obj = codec(impl, payload)
        data = encode(obj)
        fn = (lambda: encode(obj)) if op == "encode" else (lambda: decode(data))
    gc.disable()
    for _ in range(100):
        fn()
    functools.reduce(lambda acc, _: fn(), range(calls), None)


def count(impl: str, payload: str, op: str, calls: int) -> int:
    """Instructions callgrind counted in the loop of `calls` calls."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", "--toggle-collect=functools_reduce",
         sys.executable, "-m", "benchmarks.count_instructions", "--loop", impl, payload, op, str(calls)],
        env=env, capture_output=True, text=True, check=True, timeout=600)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if not found:
        raise RuntimeError(f"callgrind printed no count:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.count_instructions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", action="append", choices=IMPLS, help="repeatable (default: all)")
    parser.add_argument("--payload", action="append", choices=("small", "list100", "class"),
                        help="repeatable (default: all)")
    parser.add_argument("--calls", type=int, default=1000, help="calls counted per figure (default: %(default)s)")
    parser.add_argument("--loop", nargs=4, metavar=("IMPL", "PAYLOAD", "OP", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop:
        impl, payload, op, calls = args.loop
        run_loop(impl, payload, op, int(calls))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    overhead = count("noop", "small", "encode", args.calls)
    print(f"instructions per call (callgrind, {args.calls} calls, loop overhead of "
          f"{overhead // args.calls:,} per call subtracted)")
    print(f"{'payload':<9} {'impl':<16} {'encode':>10} {'decode':>10}")
    for payload in args.payload or ("small", "list100", "class"):
        for impl in args.impl or IMPLS:
            cells = [f"{(count(impl, payload, op, args.calls) - overhead) // args.calls:>10,}" for op in OPS]
            print(f"{payload:<9} {impl:<16} {' '.join(cells)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
