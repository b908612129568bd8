"""Every benchmark in one command: serialize, store, throughput and latency, one after the other, each printing its
tables and targets; with --json, one file holding every run (`{"runs": [...]}`, which `benchmarks.plot` reads).

    python -m benchmarks [--json DIR_OR_FILE] [--quick]

--json names a file, or a directory to write `benchmarks.json` in. --quick passes --quick to each benchmark.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile

from benchmarks import _harness

TOPICS = ("serialize", "store", "throughput", "latency")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="DIR_OR_FILE", default=None,
                        help="write every run's results to this file (or to benchmarks.json in this directory)")
    parser.add_argument("--quick", action="store_true", help="small counts in every benchmark, for a smoke run")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as tmp:
        for topic in TOPICS:
            print(f"\n==== bench_{topic} ====", flush=True)
            module = importlib.import_module(f"benchmarks.bench_{topic}")
            path = os.path.join(tmp, f"{topic}.json")
            bench_argv = (["--quick"] if args.quick else []) + ["--json", path]
            module.main(bench_argv)
            with open(path, encoding="utf-8") as f:
                run = json.load(f)
            run["argv"] = [f"benchmarks/bench_{topic}.py", *bench_argv[:-2]]   # the topic, for benchmarks.plot
            runs.append(run)
    if args.json:
        out = os.path.join(args.json, "benchmarks.json") if os.path.isdir(args.json) else args.json
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"machine": _harness.machine_info(), "argv": sys.argv, "runs": runs}, f, indent=2)
            f.write("\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
