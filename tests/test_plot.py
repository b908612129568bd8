"""benchmarks/plot.py draws what docs/benchmarks.md shows: a panel per benchmark, every ratio better to the right,
the spread of several runs, and nothing for rows that did not run. It needs the docs extra (matplotlib)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(row_sets, tmp_path):
    paths = []
    for i, (topic, rows) in enumerate(row_sets):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps({"argv": [f"benchmarks/bench_{topic}.py"], "results": rows}))
        paths.append(str(path))
    out = subprocess.run([sys.executable, "-m", "benchmarks.plot", *paths, "-o", str(tmp_path / "chart.svg")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout, (tmp_path / "chart.svg").read_text()


def row(benchmark, impl, ratio, seconds=None, baseline="pipe", payload="p50", note=""):
    return {"benchmark": benchmark, "payload": payload, "impl": impl, "seconds_per_op": seconds,
            "baseline": baseline, "ratio_vs_baseline": ratio, "note": note}


def test_runs_give_median_and_spread_and_lower_is_better_points_right(tmp_path):
    latency = lambda mine: [row("ask", "pipe", 1.0, 1e-5), row("ask", "actors", mine / 1e-5, mine)]
    out, svg = run([("latency", latency(2e-5)), ("latency", latency(4e-5)), ("latency", latency(1e-5)),
                    ("throughput", [row("one-way", "actors", 3.0), row("one-way", "ray", None, note="ray not installed")])],
                   tmp_path)
    assert "2 cases in 2 panel(s)" in out
    assert "left out: throughput: one-way, p50, ray (ray not installed)" in out
    # actors took 2, 4 and 1 times the Pipe's time: drawn inverted, the median is 0.5 (the Pipe's time / actors')
    assert "0.50x (3 runs)" in svg
    assert "pipe's time / actors's" in svg
    assert ">latency<" in svg and ">throughput<" in svg
    assert "ray" not in svg.replace("array", "")


def test_the_docs_chart_is_drawn_from_the_quoted_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.plot", os.path.join(ROOT, "docs", "benchmarks.json"),
                          "-o", str(tmp_path / "chart.svg")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "in 4 panel(s)" in out.stdout
