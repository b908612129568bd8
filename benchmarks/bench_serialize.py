"""The codec against pickle (the baseline), cloudpickle and msgspec, measured in the same run.

Payloads: a small message, a list of 100 distinct small dicts, an instance of a registered class, numpy arrays
encoded straight into a preallocated buffer (against `np.copyto` into one), and numpy arrays decoded (zero copy,
against `pickle.loads`). Ends with the codec's targets, each marked pass or fail.

    python -m benchmarks.bench_serialize                     # full run, 100 MB arrays
    python -m benchmarks.bench_serialize --quick --json x.json
"""
from __future__ import annotations

import argparse
import importlib
import pickle
import re
import sys

import numpy as np

import actors
from _fastser import Encoder
from benchmarks._harness import Result, add_ratios, parent_parser, print_machine, print_table, time_ops, write_json

try:
    import cloudpickle
except ImportError:         # pragma: no cover - an optional peer
    cloudpickle = None
try:
    import msgspec.msgpack
except ImportError:         # pragma: no cover - an optional peer
    msgspec = None

PAYLOADS = ("small", "list100", "class", "array-encode", "array-decode")
DEFAULT_SIZES = "1KB,1MB,100MB"
QUICK_SIZES = "1KB,1MB,10MB"

TARGETS = {
    "small": 2.0,           # roundtrip at least this many times as fast as pickle
    "list100": 1.5,
    "class": 2.0,
    "array-encode": 0.8,    # encoding into a buffer at least this fast relative to np.copyto into one
}
DECODE_TARGET_S = 20e-6     # zero-copy array decode at every size


class Reading:
    """The registered-class payload: five fields. Module level, so that pickle pickles it by reference."""

    def __init__(self, sensor, seq, value, unit, ok):
        self.sensor = sensor
        self.seq = seq
        self.value = value
        self.unit = unit
        self.ok = ok

    def __eq__(self, other):
        return type(other) is Reading and vars(self) == vars(other)


def small_message():
    return {"id": 123, "name": "sensor-7", "values": [1.0, 2.0, 3.0], "ok": True, "tag": None}


def list100():
    # Each dict distinct, so that pickle's memo cannot share them.
    return [{"id": i, "name": f"sensor-{i}", "values": [float(i), 2.0, 3.0], "ok": True, "tag": None}
            for i in range(100)]


# -- helpers ---------------------------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMG]?)B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'1KB' -> 1000, '1MB' -> 1_000_000, '100MB' -> 100_000_000, '4096' -> 4096 (decimal units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; write e.g. 1KB, 1MB, 100MB")
    return int(float(m.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[m.group(2).upper()])


def parse_sizes(text: str) -> list:
    """'1KB,1MB' -> [1000, 1000000], sorted and without repeats."""
    return sorted({parse_size(part) for part in text.split(",") if part.strip()})


def size_label(nbytes: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B"


def make_array(nbytes: int) -> np.ndarray:
    # float64, filled (not np.zeros, whose pages the kernel maps lazily) so every page is real
    arr = np.empty(max(1, nbytes // 8), dtype=np.float64)
    arr[:] = np.arange(arr.size, dtype=np.float64)
    return arr


def touched(nbytes: int) -> np.ndarray:
    """A preallocated buffer whose pages are already mapped, starting on a page boundary, as a reused shared-memory
    segment's are."""
    raw = np.empty(nbytes + 4096, dtype=np.uint8)
    start = -raw.ctypes.data % 4096
    buf = raw[start:start + nbytes]
    buf.fill(1)
    return buf


# -- the implementations ---------------------------------------------------------------------------------------------

def roundtrip_impls():
    """(impl name, encode, decode) for every peer, or (name, None, reason) when it is not installed."""
    impls = [
        ("actors", actors.dumps, actors.loads),
        ("pickle", lambda obj: pickle.dumps(obj, protocol=5), pickle.loads),
    ]
    if cloudpickle is not None:
        impls.append(("cloudpickle", lambda obj: cloudpickle.dumps(obj, protocol=5), pickle.loads))
    else:
        impls.append(("cloudpickle", None, "not installed"))
    if msgspec is not None:
        enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
        impls.append(("msgspec.msgpack", enc.encode, dec.decode))
    else:
        impls.append(("msgspec.msgpack", None, "not installed"))
    return impls


def bench_roundtrip(payload_name: str, obj, timing: dict) -> list:
    """Encode, decode, and both, for every impl; each measurement interleaves the impls (see `time_ops`)."""
    results, runnable = [], {}
    for impl, encode, decode in roundtrip_impls():
        note = None
        if encode is None:
            note = f"n/a: {decode}"
        else:
            try:
                data = encode(obj)
                back = decode(data)
            except Exception as exc:    # e.g. msgspec and a class it does not know
                note = f"n/a: {type(exc).__name__}: {exc}"
                note = note if len(note) <= 70 else note[:67] + "..."
            else:
                if back != obj:
                    raise AssertionError(f"{impl} does not round-trip the {payload_name} payload")
                runnable[impl] = (encode, decode, data)
        if note is not None:
            results.extend(Result(bench, payload_name, impl, None, note=note)
                           for bench in ("encode", "decode", "roundtrip"))
    ops = {
        "encode": lambda enc, dec, data: lambda: enc(obj),
        "decode": lambda enc, dec, data: lambda: dec(data),
        "roundtrip": lambda enc, dec, data: lambda: dec(enc(obj)),
    }
    for bench, make in ops.items():
        seconds = time_ops({impl: make(*args) for impl, args in runnable.items()}, **timing)
        results.extend(Result(bench, payload_name, impl, t) for impl, t in seconds.items())
    order = [impl for impl, _, _ in roundtrip_impls()]
    results.sort(key=lambda r: order.index(r.impl))
    add_ratios(results, "pickle")
    return results


def bench_array_encode(sizes: list, timing: dict) -> list:
    """Encode an array into a preallocated, touched buffer, against np.copyto of the same array into one."""
    results = []
    for nbytes in sizes:
        label = f"float64 {size_label(nbytes)}"
        arr = make_array(nbytes)
        encoder = Encoder()
        total = encoder.prepare(arr)
        encoder.release()
        slot = touched(total)
        # copyto's destination sits where the encoder puts the array data in its slot (the data region, 64 bytes
        # into the page): a copy's speed depends on the source and destination addresses modulo the page size, and
        # the comparison is about the codec, not about that.
        dst = touched(total)[total - arr.nbytes:].view(np.float64)

        def encode_into():
            encoder.prepare(arr)
            encoder.write_into(slot)

        encode_into()
        if not np.array_equal(actors.loads(slot), arr):
            raise AssertionError("Encoder.write_into did not write the array")
        contenders = {
            "actors Encoder.prepare+write_into": (encode_into, "into a preallocated, touched buffer"),
            "numpy copyto": (lambda: np.copyto(dst, arr), "np.copyto(preallocated touched dst, arr)"),
            "a.copy()": (arr.copy, "allocates (and faults in) a new array every call"),
            "pickle.dumps p5": (lambda: pickle.dumps(arr, protocol=5), "a new bytes object every call"),
        }
        seconds = time_ops({impl: fn for impl, (fn, _) in contenders.items()}, **timing)
        results.extend(Result("encode-into", label, impl, seconds[impl], note=note)
                       for impl, (_, note) in contenders.items())
        del slot, dst, arr, contenders
    add_ratios(results, "numpy copyto")
    return results


def bench_array_decode(sizes: list, timing: dict) -> list:
    """Decode an encoded array: the codec's zero-copy view against pickle.loads, which copies."""
    results = []
    for nbytes in sizes:
        label = f"float64 {size_label(nbytes)}"
        arr = make_array(nbytes)
        data = actors.dumps(arr)
        pickled = pickle.dumps(arr, protocol=5)
        buffers = []
        pickled_oob = pickle.dumps(arr, protocol=5, buffer_callback=buffers.append)
        buffers = [b.raw() for b in buffers]
        contenders = {
            "actors": (lambda: actors.loads(data), "a read-only view into the message"),
            "pickle": (lambda: pickle.loads(pickled), "copies the data"),
            "pickle p5 out-of-band": (lambda: pickle.loads(pickled_oob, buffers=buffers),
                                      "pickle.loads(data, buffers=...), zero copy"),
        }
        for fn, _ in contenders.values():
            if not np.array_equal(fn(), arr):
                raise AssertionError("an array did not decode to itself")
        seconds = time_ops({impl: fn for impl, (fn, _) in contenders.items()}, **timing)
        results.extend(Result("decode", label, impl, seconds[impl], note=note)
                       for impl, (_, note) in contenders.items())
        results.append(Result("decode", label, "msgspec.msgpack", None, note="n/a: no numpy arrays"))
        del data, pickled, pickled_oob, buffers, arr, contenders
    add_ratios(results, "pickle")
    return results


# -- targets ---------------------------------------------------------------------------------------------------------

def targets(results: list) -> list:
    """(description, measured, pass) for each target whose payload ran."""
    out = []

    def find(benchmark, payload, impl):
        for r in results:
            if (r.benchmark, r.payload, r.impl) == (benchmark, payload, impl):
                return r
        return None

    for name, label in (("small", "small message"), ("list100", "list of 100 dicts"), ("class", "class instance")):
        r = find("roundtrip", name, "actors")
        if r is not None and r.ratio_vs_baseline is not None:
            out.append((f"{label}: encode+decode >= {TARGETS[name]:.1f}x pickle",
                        f"{r.ratio_vs_baseline:.2f}x", r.ratio_vs_baseline >= TARGETS[name]))
    encodes = [r for r in results if r.benchmark == "encode-into" and r.impl.startswith("actors")]
    if encodes:
        largest = encodes[-1]
        out.append((f"array encode into a buffer, {largest.payload}: >= {TARGETS['array-encode']:.1f}x numpy copyto",
                    f"{largest.ratio_vs_baseline:.2f}x", largest.ratio_vs_baseline >= TARGETS["array-encode"]))
    decodes = [r for r in results if r.benchmark == "decode" and r.payload.startswith("float64")
               and r.impl == "actors"]
    if decodes:
        worst = max(r.seconds_per_op for r in decodes)
        sizes = ", ".join(r.payload.split()[-1] for r in decodes)
        out.append((f"array decode <= {DECODE_TARGET_S * 1e6:.0f} µs at every size ({sizes})",
                    f"max {worst * 1e6:.2f} µs", worst <= DECODE_TARGET_S))
    return out


def print_targets(rows: list) -> None:
    print("\ntargets")
    width = max(len(d) for d, _, _ in rows)
    for description, measured, ok in rows:
        print(f"  {'PASS' if ok else 'FAIL'}  {description:<{width}}  {measured}")


# -- main ------------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_serialize", description=__doc__.split("\n\n")[0],
        parents=[parent_parser()])
    parser.add_argument("--payload", action="append", choices=PAYLOADS, metavar="NAME",
                        help=f"run only this payload (repeatable): {', '.join(PAYLOADS)} (default: all)")
    parser.add_argument("--sizes", type=parse_sizes, default=None, metavar="LIST",
                        help=f"comma-separated array sizes for array-encode and array-decode "
                             f"(default: {DEFAULT_SIZES}; with --quick: {QUICK_SIZES})")
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: few, short repeats and 10MB instead of 100MB arrays")
    args = parser.parse_args(argv)

    payloads = args.payload or list(PAYLOADS)
    sizes = args.sizes or parse_sizes(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    timing = {"repeat": args.repeat, "number": args.number, "duration": args.duration}
    if args.quick:
        timing["repeat"] = min(args.repeat, 5)
        timing["duration"] = min(args.duration, 0.05)

    # Run as `python -m`, this module is __main__, and cloudpickle pickles __main__'s classes by value; the class
    # from the module's importable copy is pickled by reference by pickle and cloudpickle alike.
    reading_cls = importlib.import_module("benchmarks.bench_serialize").Reading
    actors.register_class(reading_cls)
    print_machine()
    per_repeat = f"{timing['number']} calls" if timing["number"] else f"~{timing['duration']}s"
    print(f"timing: best of {timing['repeat']} repeats of {per_repeat} each; "
          f"ratio = baseline time / impl time (higher is faster)")
    if args.quick:
        print("--quick: a smoke run; its figures are too short-lived to compare or to quote")

    results = []
    roundtrip_payloads = {
        "small": ("small message, 5 fields", small_message()),
        "list100": ("list of 100 distinct small dicts", list100()),
        "class": ("registered class instance, 5 fields", reading_cls("sensor-7", 123, 21.5, "C", True)),
    }
    for name in PAYLOADS:
        if name not in payloads:
            continue
        if name in roundtrip_payloads:
            title, obj = roundtrip_payloads[name]
            rows = bench_roundtrip(name, obj, timing)
            print_table(f"{name}: {title}", rows, baseline_label="vs pickle")
        elif name == "array-encode":
            rows = bench_array_encode(sizes, timing)
            for payload in dict.fromkeys(r.payload for r in rows):
                print_table(f"array-encode: {payload} into a preallocated buffer",
                            [r for r in rows if r.payload == payload], baseline_label="vs copyto")
        else:
            rows = bench_array_decode(sizes, timing)
            for payload in dict.fromkeys(r.payload for r in rows):
                print_table(f"array-decode: {payload}", [r for r in rows if r.payload == payload],
                            baseline_label="vs pickle")
        results.extend(rows)
        sys.stdout.flush()

    target_rows = targets(results)
    if target_rows:
        print_targets(target_rows)
    if args.json:
        write_json(args.json, results,
                   targets=[{"target": d, "measured": m, "pass": ok} for d, m, ok in target_rows])
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
