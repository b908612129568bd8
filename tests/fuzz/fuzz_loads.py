"""Fuzz `actors.loads` with mutated valid messages, refs to shared memory included, watching for crashes and hangs.

The contract: on any bytes, `loads` returns a value or raises `DecodeError`; it never crashes the process, never
hangs, and never opens a shared-memory segment that a message names (a ref decodes only against a store this process
has). The inputs run in a forked worker that publishes the index it is at in shared memory; the parent restarts the
worker past an input that killed it (a crash) or that it sat on for `--hang` seconds (a hang). The suite runs a
small count (tests/test_decode_errors.py); run a million from the command line:

    nice python tests/fuzz/fuzz_loads.py --inputs 1000000
"""
import argparse
import datetime
import decimal
import mmap
import os
import random
import signal
import struct
import sys
import time
import uuid
import zoneinfo

import numpy as np

import actors

from actors import _store

COUNTERS = 5          # next input, values returned, DecodeErrors, other errors, segments opened
OTHER_SHOWN = 5


class Point:
    def __init__(self, x=0, y=0):
        self.x = x
        self.y = y


def _corpus(store, foreign):
    refs = [store.put(v) for v in (1, "ref'd", np.arange(10.0), {"k": [1, 2]})]
    holder = store.put({"inner": refs[0]})
    values = [
        None, True, -7, 2 ** 70, 1.5, 1j, "", "text", "é日", b"\x00\xff", bytearray(b"ba"), [], [1, [2, [3]]],
        (1, "a"), {"a": 1, 2: [3], (4,): {5: 6}}, {1, "x"}, frozenset({2.5}), np.arange(6, dtype=np.int16),
        np.zeros((2, 3), order="F"), np.array(["ab"]), np.array(3.5), np.float32(2.5), np.datetime64(5, "ms"),
        Point(1, [2, 3]), b"B" * 5000, ["é" * 300, np.ones(70, dtype=np.uint8)],
        [datetime.datetime(2024, 3, 31, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")), datetime.date.max,
         datetime.time(1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=-5), "EST")), datetime.timedelta(-1),
         uuid.UUID(int=5), decimal.Decimal("-0.00E+3")],
        refs[0], refs[2], holder, [refs[1], {"r": refs[3]}, (refs[0], refs[0])], {"p": Point(refs[2], None)},
    ]
    messages = [actors.dumps(v) for v in values]
    names = [store.name.encode()] + [n.encode() for n in foreign]
    return refs + [holder], messages, names


def _hostile_names(rng, names):
    # Store names a hostile message could carry: ours, other segments that exist, and malformed ones.
    n = rng.choice(names)
    return rng.choice([
        n, n[:-1] + b"\x00", n.replace(b".", b"/", 1), b"/" + n, n + b"0", n[:10], b"", b"\x00",
        b"actors.1.1.store.0", b"../../etc/passwd", b"x" * 300, bytes(rng.randrange(256) for _ in range(len(n))),
        rng.choice(names),
    ])


def _mutate(rng, msg, messages, names):
    b = bytearray(msg)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        op = rng.randrange(9)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 2:
            del b[rng.randrange(len(b) + 1):]
        elif op == 3:
            at = rng.randrange(len(b) + 1)
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 4 and len(b) > 1:
            at = rng.randrange(len(b))
            del b[at:at + rng.randrange(1, 9)]
        elif op == 5 and len(b) >= 8:
            at = rng.randrange(len(b) - 7)
            b[at:at + 8] = struct.pack("<Q", rng.choice((0, 1, 2 ** 63, 2 ** 64 - 1, 2 ** 32, rng.randrange(2 ** 64))))
        elif op == 6:
            other = rng.choice(messages)
            at = rng.randrange(len(b) + 1)
            b[at:] = other[rng.randrange(len(other) + 1):]
        elif op == 7:
            # a ref to another store: swap a name it carries for a hostile one, keeping the framing valid
            for name in names:
                at = b.find(name)
                if at >= 5:
                    new = _hostile_names(rng, names)
                    b[at - 4:at + len(name)] = struct.pack("<I", len(new)) + new
                    total = len(b)
                    stream = struct.unpack_from("<I", b, 4)[0] + len(new) - len(name)
                    if rng.random() < 0.9 and len(b) >= 16:
                        b[4:16] = struct.pack("<IQ", stream % 2 ** 32, total)
                    break
        elif op == 8 and len(b) >= 4:
            at = rng.randrange(len(b) - 3)
            b[at:at + 4] = struct.pack("<I", rng.choice((0, 1, 255, 2 ** 31, 2 ** 32 - 1, rng.randrange(2 ** 32))))
    return bytes(b)


def _worker(seed, start, count, counters, messages, names, unattached):
    # Decode inputs start..count-1, publishing progress; inputs are derived from (seed, index), so a restart
    # resumes at any index. `unattached` is a live store this worker forgets: no message may make it attach it.
    other_shown = 0
    _store._mapped.pop(unattached, None)
    for i in range(start, count):
        counters[0] = i
        rng = random.Random(seed * 1_000_003 + i)
        data = _mutate(rng, rng.choice(messages), messages, names)
        try:
            actors.loads(data)
        except actors.DecodeError:
            counters[2] += 1
        except BaseException as exc:          # noqa: BLE001 - any other error breaks the contract
            counters[3] += 1
            if other_shown < OTHER_SHOWN:
                other_shown += 1
                print(f"input {i}: {type(exc).__name__}: {exc} -- {data!r}"[:2000], file=sys.stderr, flush=True)
        else:
            counters[1] += 1
        if unattached in _store._mapped:
            counters[4] += 1
            print(f"input {i}: decoding attached the store {unattached} -- {data!r}"[:2000], file=sys.stderr,
                  flush=True)
            _store._mapped.pop(unattached)
    counters[0] = count
    os._exit(0)


def run(count, *, seed=0, hang=10.0, log=None):
    """Fuzz `count` inputs; a dict of counts: inputs, ok, decode_errors, other_errors, crashes, hangs."""
    actors.register_class(Point)
    shared = mmap.mmap(-1, 8 * COUNTERS)
    counters = memoryview(shared).cast("Q")
    crashes = hangs = 0
    try:
        with actors.ObjectStore(capacity="4M") as store, actors.ObjectStore(capacity="1M") as other, \
                actors.ObjectStore(capacity="1M") as unattached:
            # `other` is a store this process has: refs to it decode; `unattached` is one the worker forgets
            held, messages, names = _corpus(store, [other.name, unattached.name])
            start = 0
            while start < count:
                pid = os.fork()
                if pid == 0:
                    try:
                        _worker(seed, start, count, counters, messages, names, unattached.name)
                    finally:
                        os._exit(70)
                last, since, reported = counters[0], time.monotonic(), time.monotonic()
                while True:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        break
                    time.sleep(0.05)                    # a watchdog's poll, not a synchronisation
                    now = time.monotonic()
                    if counters[0] != last:
                        last, since = counters[0], now
                    elif now - since > hang:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        status = None
                        break
                    if log and now - reported > 30:
                        reported = now
                        print(f"at {counters[0]}: ok={counters[1]} decode_errors={counters[2]} "
                              f"other={counters[3]} crashes={crashes} hangs={hangs}", file=log, flush=True)
                at = counters[0]
                if status is None:
                    hangs += 1
                    print(f"input {at}: hang (no progress for {hang:g} s)", file=sys.stderr, flush=True)
                elif at < count or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
                    crashes += 1
                    print(f"input {at}: crash (wait status {status})", file=sys.stderr, flush=True)
                start = at + 1
            stats = store.stats()
            del held
    finally:
        actors.unregister_class(Point)
    result = {"inputs": count, "ok": counters[1], "decode_errors": counters[2], "other_errors": counters[3],
              "segments_opened": counters[4], "crashes": crashes, "hangs": hangs, "store_objects_left": stats["objects"]}
    counters.release()
    shared.close()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang", type=float, default=10.0, help="seconds without progress that count as a hang")
    args = parser.parse_args()
    t0 = time.monotonic()
    r = run(args.inputs, seed=args.seed, hang=args.hang, log=sys.stderr)
    print(" ".join(f"{k}={v}" for k, v in r.items()) + f" seconds={time.monotonic() - t0:.0f}")
    sys.exit(0 if r["crashes"] == r["hangs"] == r["other_errors"] == r["segments_opened"] == 0 else 1)


if __name__ == "__main__":
    main()
