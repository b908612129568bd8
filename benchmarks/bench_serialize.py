"""The codec against pickle (the baseline), cloudpickle, msgspec and ormsgpack, measured in the same run.

Payloads: a small message, a list of 100 distinct small dicts, an instance of a registered class, numpy arrays
encoded straight into a preallocated buffer (against `np.copyto` into one), and numpy arrays decoded (zero copy,
against `pickle.loads`). The first three run in alternating rounds (every implementation once per round); each
figure is the median over the rounds, and the codec's ratios to msgspec and ormsgpack are medians of the ratios
within each round, printed with their spread. Ends with the codec's targets, each marked pass or fail.

The class payload is a plain class registered with the codec; msgspec and ormsgpack, which know no registry, get
the same five fields as a dataclass, which both encode natively, and must give one back: msgspec decodes into it
(`Decoder(type=ReadingRecord)`), ormsgpack decodes a dict that `ReadingRecord(**d)` turns into one.

    python -m benchmarks.bench_serialize                     # full run, 100 MB arrays
    python -m benchmarks.bench_serialize --quick --json x.json
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import pickle
import re
import sys

import numpy as np

import actors
from _fastser import Encoder
from benchmarks._harness import (Result, add_ratios, median_spread, parent_parser, print_machine, print_table,
                                 time_ops, time_rounds, write_json)

try:
    import cloudpickle
except ImportError:         # pragma: no cover - an optional peer
    cloudpickle = None
try:
    import msgspec.msgpack
except ImportError:         # pragma: no cover - an optional peer
    msgspec = None
try:
    import ormsgpack
except ImportError:         # pragma: no cover - an optional peer
    ormsgpack = None

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
PEER_TARGETS = {            # roundtrip at least as fast as this peer, in the same run
    "small": "msgspec.msgpack",
    "list100": "msgspec.msgpack",
    "class": "ormsgpack",
}
MIN_ROUNDS = 3


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


@dataclasses.dataclass
class ReadingRecord:
    """The class payload for the peers that know no class registry: the same five fields, as a dataclass."""

    sensor: str
    seq: int
    value: float
    unit: str
    ok: bool


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

def roundtrip_impls(payload_name: str):
    """(impl name, encode, decode) for every peer, or (name, None, reason) when it is not installed."""
    impls = [
        ("actors", actors.dumps, actors.loads),
        ("pickle", lambda obj: pickle.dumps(obj, protocol=5), pickle.loads),
    ]
    if cloudpickle is not None:
        impls.append(("cloudpickle", lambda obj: cloudpickle.dumps(obj, protocol=5), pickle.loads))
    else:
        impls.append(("cloudpickle", None, "not installed"))
    record = payload_name == "class"
    if msgspec is not None:
        enc = msgspec.msgpack.Encoder()
        dec = msgspec.msgpack.Decoder(ReadingRecord) if record else msgspec.msgpack.Decoder()
        impls.append(("msgspec.msgpack", enc.encode, dec.decode))
    else:
        impls.append(("msgspec.msgpack", None, "not installed"))
    if ormsgpack is not None:
        unpack = ormsgpack.unpackb
        impls.append(("ormsgpack", ormsgpack.packb,
                      (lambda data: ReadingRecord(**unpack(data))) if record else unpack))
    else:
        impls.append(("ormsgpack", None, "not installed"))
    return impls


def peer_payload(impl: str, payload_name: str, obj):
    """What `impl` encodes for a payload: the class payload becomes a dataclass for the peers without a registry."""
    if payload_name == "class" and impl in ("msgspec.msgpack", "ormsgpack"):
        return ReadingRecord(**vars(obj))
    return obj


def bench_roundtrip(payload_name: str, obj, timing: dict, rounds: int) -> list:
    """Encode, decode, and both, for every impl, in `rounds` alternating rounds (see `time_rounds`)."""
    results, runnable = [], {}
    for impl, encode, decode in roundtrip_impls(payload_name):
        note = None
        mine = peer_payload(impl, payload_name, obj)
        if encode is None:
            note = f"n/a: {decode}"
        else:
            try:
                data = encode(mine)
                back = decode(data)
            except Exception as exc:    # e.g. msgspec and a class it does not know
                note = f"n/a: {type(exc).__name__}: {exc}"
                note = note if len(note) <= 70 else note[:67] + "..."
            else:
                if back != mine:
                    raise AssertionError(f"{impl} does not round-trip the {payload_name} payload")
                runnable[impl] = (encode, decode, data, mine)
        if note is not None:
            results.extend(Result(bench, payload_name, impl, None, note=note)
                           for bench in ("encode", "decode", "roundtrip"))
    ops = {
        "encode": lambda enc, dec, data, mine: lambda: enc(mine),
        "decode": lambda enc, dec, data, mine: lambda: dec(data),
        "roundtrip": lambda enc, dec, data, mine: lambda: dec(enc(mine)),
    }
    timing = {"number": timing["number"], "duration": timing["duration"]}
    for bench, make in ops.items():
        per_round = time_rounds({impl: make(*args) for impl, args in runnable.items()}, rounds=rounds, **timing)
        results.extend(Result(bench, payload_name, impl, median_spread(t)[0], rounds=t)
                       for impl, t in per_round.items())
    order = [impl for impl, _, _ in roundtrip_impls(payload_name)]
    results.sort(key=lambda r: order.index(r.impl))
    add_ratios(results, "pickle")
    return results


def peer_ratios(results: list) -> list:
    """(benchmark, payload, peer, median, lowest, highest) of the codec's speed relative to each peer: in each
    round the peer's time over the codec's, so above 1.0 the codec is faster."""
    rows = []
    mine = {(r.benchmark, r.payload): r for r in results if r.impl == "actors" and r.rounds}
    for r in results:
        base = mine.get((r.benchmark, r.payload))
        if base is None or r.impl in ("actors", "pickle", "cloudpickle") or not r.rounds:
            continue
        ratios = [peer / own for peer, own in zip(r.rounds, base.rounds)]
        rows.append((r.benchmark, r.payload, r.impl, *median_spread(ratios)))
    return rows


def print_peer_ratios(rows: list, payload: str) -> None:
    rows = [row for row in rows if row[1] == payload]
    if not rows:
        return
    print(f"  actors vs peers (peer time / actors time per round; median [lowest-highest] of the rounds):")
    for bench in dict.fromkeys(row[0] for row in rows):
        cells = [f"{peer} {median:.2f}x [{low:.2f}-{high:.2f}]"
                 for b, _, peer, median, low, high in rows if b == bench]
        print(f"    {bench:<10} " + "   ".join(cells))


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

    peers = {(bench, payload, peer): (median, low, high) for bench, payload, peer, median, low, high in
             peer_ratios(results)}
    for name, label in (("small", "small message"), ("list100", "list of 100 dicts"), ("class", "class instance")):
        r = find("roundtrip", name, "actors")
        if r is not None and r.ratio_vs_baseline is not None:
            out.append((f"{label}: encode+decode >= {TARGETS[name]:.1f}x pickle",
                        f"{r.ratio_vs_baseline:.2f}x", r.ratio_vs_baseline >= TARGETS[name]))
        found = peers.get(("roundtrip", name, PEER_TARGETS[name]))
        if found is not None:
            median, low, high = found
            peer = PEER_TARGETS[name] + (" with a dataclass" if name == "class" else "")
            out.append((f"{label}: encode+decode >= 1.0x {peer} (median of the rounds)",
                        f"{median:.2f}x [{low:.2f}-{high:.2f}]", median >= 1.0))
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
    rounds = max(MIN_ROUNDS, timing["repeat"])
    per_repeat = f"{timing['number']} calls" if timing["number"] else f"~{timing['duration']}s"
    print(f"timing: small, list100 and class: median of {rounds} alternating rounds of {per_repeat} per impl; "
          f"arrays: best of {timing['repeat']} repeats; ratio = baseline time / impl time (higher is faster)")
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
            rows = bench_roundtrip(name, obj, timing, rounds)
            print_table(f"{name}: {title}", rows, baseline_label="vs pickle")
            print_peer_ratios(peer_ratios(rows), name)
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
                   targets=[{"target": d, "measured": m, "pass": ok} for d, m, ok in target_rows],
                   peer_ratios=[{"benchmark": b, "payload": p, "peer": peer, "median": med, "lowest": low,
                                 "highest": high} for b, p, peer, med, low, high in peer_ratios(results)])
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
