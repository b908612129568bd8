"""What every benchmark shares: timing a callable, the results table with ratio columns, and `--json` output.

A result is the best of several repeats (the least disturbed run), and every ratio is against a baseline measured in
the same run: `ratio = baseline seconds / impl seconds`, so 2.00x means twice as fast as the baseline and 0.50x half
as fast.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional


@dataclass
class Result:
    """One measurement: `impl` running `benchmark` on `payload`. `seconds_per_op` is None when it does not apply."""

    benchmark: str
    payload: str
    impl: str
    seconds_per_op: Optional[float]
    baseline: Optional[str] = None           # the impl this row's ratio is against
    ratio_vs_baseline: Optional[float] = None
    note: str = ""                           # why the row is n/a, or what it measures exactly
    rounds: Optional[list] = None            # seconds per op in each round, when measured in rounds
    lower_is_better: Optional[bool] = None   # set when the ratio is impl / baseline (a latency, a CPU time)

    @property
    def ops_per_s(self) -> Optional[float]:
        return None if not self.seconds_per_op else 1.0 / self.seconds_per_op

    def as_dict(self) -> dict:
        extra = {} if self.lower_is_better is None else {"lower_is_better": self.lower_is_better}
        return {
            "benchmark": self.benchmark,
            "payload": self.payload,
            "impl": self.impl,
            "seconds_per_op": self.seconds_per_op,
            "ops_per_s": self.ops_per_s,
            "baseline": self.baseline,
            "ratio_vs_baseline": self.ratio_vs_baseline,
            "note": self.note,
            "rounds": self.rounds,
            **extra,
        }


def parent_parser() -> argparse.ArgumentParser:
    """The options every benchmark takes; pass it as `parents=[parent_parser()]`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--repeat", type=int, default=7, metavar="N",
                       help="timed repeats per measurement; the best one counts (default: %(default)s)")
    loops = parser.add_mutually_exclusive_group()
    loops.add_argument("--number", type=int, default=None, metavar="N",
                       help="calls per repeat (default: as many as fill --duration)")
    loops.add_argument("--duration", type=float, default=0.2, metavar="SECONDS",
                       help="target length of one repeat when --number is not given (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the results and the machine they ran on to PATH as JSON")
    return parser


def _loop(fn: Callable[[], object], n: int) -> float:
    calls = itertools.repeat(None, n)
    start = time.perf_counter()
    for _ in calls:
        fn()
    return time.perf_counter() - start


def _calibrate(fn: Callable[[], object], number: Optional[int], duration: float) -> int:
    # Sizing the loop (1, 2, 5, 10, 20, ... calls until it lasts `duration`) doubles as the warm-up.
    if number is not None:
        _loop(fn, max(1, number // 10))     # warm caches, allocator pools and the branch predictor
        return number
    number = 1
    for factor in itertools.cycle((2, 2.5, 2)):
        if _loop(fn, number) >= duration:
            return number
        number = int(number * factor)
    raise AssertionError("unreachable")


def time_ops(fns: dict, *, repeat: int = 7, number: Optional[int] = None, duration: float = 0.2) -> dict:
    """Seconds per call of each callable in `fns` (name -> callable): the best of `repeat` timed loops.

    The loops are interleaved, one per callable per round, so a burst of load from elsewhere on the machine slows
    every contender alike rather than whichever happened to be running; the ratios between them stay fair. Without
    `number`, each callable's loop is sized to last about `duration` seconds. The garbage collector is off while
    timing, as in `timeit`.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        numbers = {name: _calibrate(fn, number, duration) for name, fn in fns.items()}
        best = {name: float("inf") for name in fns}
        for _ in range(max(1, repeat)):
            for name, fn in fns.items():
                best[name] = min(best[name], _loop(fn, numbers[name]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: best[name] / numbers[name] for name in fns}


def time_rounds(fns: dict, *, rounds: int = 5, number: Optional[int] = None, duration: float = 0.2) -> dict:
    """Seconds per call of each callable in `fns`, one figure per round: name -> [seconds, ...].

    Each round times every callable once, one after the other, so that the figures of one round share the
    machine's load of that moment: a ratio taken within a round is fair, and the median of a case over the rounds
    shrugs off a disturbed one. Loop sizes are fixed once, as in `time_ops`; the garbage collector is off.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        numbers = {name: _calibrate(fn, number, duration) for name, fn in fns.items()}
        out = {name: [] for name in fns}
        for _ in range(max(1, rounds)):
            for name, fn in fns.items():
                out[name].append(_loop(fn, numbers[name]) / numbers[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def median_spread(values: list) -> tuple:
    """(median, lowest, highest) of `values`."""
    return statistics.median(values), min(values), max(values)


def time_op(fn: Callable[[], object], *, repeat: int = 7, number: Optional[int] = None,
            duration: float = 0.2) -> float:
    """Seconds per call of `fn`: the best of `repeat` timed loops, after a warm-up (see `time_ops`)."""
    return time_ops({"fn": fn}, repeat=repeat, number=number, duration=duration)["fn"]


def add_ratios(results: Iterable[Result], baseline: str) -> None:
    """Fill `ratio_vs_baseline` of every result from the `baseline` impl's row of the same benchmark and payload."""
    results = list(results)
    base = {(r.benchmark, r.payload): r.seconds_per_op for r in results if r.impl == baseline}
    for r in results:
        b = base.get((r.benchmark, r.payload))
        r.baseline = baseline
        r.ratio_vs_baseline = b / r.seconds_per_op if b and r.seconds_per_op else None


def format_seconds(seconds: Optional[float], unit: str = "us") -> str:
    if seconds is None:
        return "n/a"
    scale = {"ns": 1e9, "us": 1e6, "ms": 1e3, "s": 1.0}[unit]
    value = seconds * scale
    return f"{value:,.3f}" if value < 10 else f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def format_ratio(ratio: Optional[float]) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:,.0f}x"


_UNIT_LABEL = {"ns": "ns/op", "us": "µs/op", "ms": "ms/op", "s": "s/op"}


def print_table(title: str, results: list, *, baseline_label: str, unit: str = "us", file=None) -> None:
    """Print one payload's results: a row per impl, a pair of columns (time, ratio) per benchmark.

    `baseline_label` heads the ratio columns, e.g. "vs pickle"; a row whose time is None shows "n/a" and its note.
    """
    file = file or sys.stdout
    benchmarks = list(dict.fromkeys(r.benchmark for r in results))
    impls = list(dict.fromkeys(r.impl for r in results))
    by_key = {(r.impl, r.benchmark): r for r in results}
    baselines = {r.baseline for r in results if r.baseline}
    label_w = max([len(i) + (11 if i in baselines else 0) for i in impls] + [len("impl")])
    time_w = max(10, len(_UNIT_LABEL[unit]))
    ratio_w = max(9, len(baseline_label))
    col_w = time_w + 2 + ratio_w
    print(f"\n{title}", file=file)
    print(" " * label_w + "".join(f"  {b:>{col_w}}" for b in benchmarks), file=file)
    print(f"{'impl':<{label_w}}" + "".join(f"  {_UNIT_LABEL[unit]:>{time_w}}  {baseline_label:>{ratio_w}}"
                                          for _ in benchmarks), file=file)
    for impl in impls:
        label = f"{impl} (baseline)" if impl in baselines else impl
        cells, notes = [], []
        for b in benchmarks:
            r = by_key.get((impl, b))
            if r is None:
                cells.append(f"  {'':>{time_w}}  {'':>{ratio_w}}")
                continue
            cells.append(f"  {format_seconds(r.seconds_per_op, unit):>{time_w}}  "
                         f"{format_ratio(r.ratio_vs_baseline):>{ratio_w}}")
            if r.seconds_per_op is None and r.note and r.note not in notes:
                notes.append(r.note)
        line = f"{label:<{label_w}}" + "".join(cells)
        if notes:
            line += "   " + "; ".join(notes)
        print(line, file=file)


def machine_info() -> dict:
    """Where the numbers came from: they mean little without it."""
    try:
        import numpy
        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu_count": os.cpu_count(),
        "numpy": numpy_version,
    }


def print_machine(file=None) -> None:
    info = machine_info()
    print(f"machine: {info['platform']}, {info['cpu_count']} CPUs; {info['python']}, numpy {info['numpy']}",
          file=file or sys.stdout)


def write_json(path: str, results: list, **extra) -> None:
    """Write `{"machine": ..., "argv": ..., "results": [row, ...], **extra}` to `path`."""
    doc = {
        "machine": machine_info(),
        "argv": sys.argv,
        "results": [r.as_dict() for r in results],
    }
    doc.update(extra)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def print_targets(checks: list, title: str = "targets:", file=None) -> None:
    """Print each (text, passed) target as PASS or FAIL."""
    file = file or sys.stdout
    print(f"\n{title}", file=file)
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}", file=file)
