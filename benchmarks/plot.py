"""Draw the benchmarks' `--json` outputs as one chart that reads at a glance: every ratio to its baseline.

    python -m benchmarks.plot round1/*.json round2/*.json round3/*.json -o docs/benchmarks.svg

A benchmark records one figure per case and run (the best of its repeats), so the spread comes from several runs:
give each run's files, and every case shows the median of its runs as a bar, and the lowest and highest as a
whisker. One panel per topic (per `bench_<topic>.py`). Every ratio points the same way, better to the right: the
ask latency's ratio, the row's time as a multiple of the baseline's (lower is better), is drawn inverted, as the
baseline's time over the row's, and its label says so. Rows that did not run (a peer that is not installed) and
rows without a baseline (startup time, get latency by size) are left out: a list below the chart names them.

A file holds either one benchmark run (`{"argv", "results", ...}`) or several (`{"runs": [run, ...]}`), such as the
figures docs/benchmarks.md quotes, kept in docs/benchmarks.json. matplotlib draws it: `pip install -e ".[docs]"`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

ACTORS_COLOR = "#1f6fb4"
PEER_COLOR = "#e08a2c"


class PlotError(Exception):
    """A file given to the plot is not the output of a benchmark's `--json`."""


def runs_in(path: str) -> list:
    """The benchmark runs a file holds, each with its topic: [(topic, run)]."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot read {path}: {exc}") from None
    runs = doc.get("runs") if isinstance(doc, dict) and "runs" in doc else [doc]
    out = []
    for run in runs:
        if not isinstance(run, dict) or not isinstance(run.get("results"), list):
            raise PlotError(f"cannot plot {path}: it has no \"results\" list; give the file written by "
                            f"`python -m benchmarks.bench_<topic> --json PATH`")
        out.append((topic_of(path, run), run))
    return out


def topic_of(path: str, run: dict) -> str:
    """`serialize` for a run of `python -m benchmarks.bench_serialize`, else the file's name."""
    argv = run.get("argv") or []
    name = os.path.splitext(os.path.basename(str(argv[0]) if argv else path))[0]
    return name[len("bench_"):] if name.startswith("bench_") else name


def lower_is_better(row: dict, rows: list) -> bool:
    """Whether `row`'s ratio is its time as a multiple of the baseline's rather than the harness's usual baseline
    time / its time: said by the row, or told apart by the baseline's own row in the same run."""
    if "lower_is_better" in row:
        return bool(row["lower_is_better"])
    base = next((r for r in rows if (r["benchmark"], r["payload"], r["impl"]) ==
                 (row["benchmark"], row["payload"], row.get("baseline"))), None)
    mine, ratio = row.get("seconds_per_op"), row.get("ratio_vs_baseline")
    if base is None or not base.get("seconds_per_op") or not mine or not ratio:
        return False
    return abs(ratio - mine / base["seconds_per_op"]) < abs(ratio - base["seconds_per_op"] / mine)


def cases(paths: list) -> tuple[dict, list]:
    """{topic: {(benchmark, payload, impl, baseline, inverted): [ratio per run, better > 1]}}, in the files'
    order, and the rows left out, as text. A case is drawn inverted if any of its runs tells that lower is better
    (a run where the row and the baseline took the same time cannot tell)."""
    raw: dict = {}
    left_out = []
    for path in paths:
        for topic, run in runs_in(path):
            rows = [r for r in run["results"] if isinstance(r, dict) and {"benchmark", "payload", "impl"} <= set(r)]
            for row in rows:
                if row["impl"] == row.get("baseline"):
                    continue                # the baseline itself: the line at 1
                ratio = row.get("ratio_vs_baseline")
                if not ratio:
                    why = row.get("note") or "no baseline"
                    left_out.append(f"{topic}: {row['benchmark']}, {row['payload']}, {row['impl']} ({why})")
                    continue
                key = (row["benchmark"], row["payload"], row["impl"], row.get("baseline") or "baseline")
                raw.setdefault(topic, {}).setdefault(key, []).append((ratio, lower_is_better(row, rows)))
    topics: dict = {}
    for topic, found in raw.items():
        for key, runs in found.items():
            inverted = any(lower for _, lower in runs)
            topics.setdefault(topic, {})[(*key, inverted)] = [1 / r if inverted else r for r, _ in runs]
    return topics, sorted(set(left_out))


def label_of(key: tuple) -> str:
    benchmark, payload, impl, baseline, inverted = key
    vs = f"{baseline}'s time / {impl}'s" if inverted else f"vs {baseline}"
    return f"{benchmark}, {payload}\n{impl} {vs}"


def render(topics: dict, output: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"      # text stays text: a small SVG, searchable
    matplotlib.rcParams["svg.hashsalt"] = "actors"    # the same input makes the same file
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    heights = [max(1.0, 0.42 * len(c) + 0.9) for c in topics.values()]
    fig, axes = plt.subplots(len(topics), 1, figsize=(9, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (topic, found) in zip(axes[:, 0], topics.items()):
        keys = list(found)
        medians = [statistics.median(found[k]) for k in keys]
        lows = [m - min(found[k]) for k, m in zip(keys, medians)]
        highs = [max(found[k]) - m for k, m in zip(keys, medians)]
        y = list(range(len(keys)))[::-1]
        colors = [ACTORS_COLOR if k[2].startswith("actors") else PEER_COLOR for k in keys]
        # bars grow from the baseline's line: right of it is better, left of it worse
        ax.barh(y, [m - 1 for m in medians], left=1, color=colors, height=0.6)
        ax.errorbar(medians, y, xerr=[lows, highs], fmt="none", ecolor="#222", capsize=3, lw=1)
        for yi, k, m in zip(y, keys, medians):
            runs = len(found[k])
            figure = f"{m:,.0f}x" if m >= 100 else f"{m:.2f}x"
            ax.annotate(figure + (f" ({runs} runs)" if runs > 1 else ""), (max(max(found[k]), 1), yi),
                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.axvline(1.0, color="#555", lw=1, ls="--")
        ax.set_yticks(y, [label_of(k) for k in keys], fontsize=8)
        ax.set_title(topic, loc="left", fontsize=11, fontweight="bold")
        lo = min(min(v) for v in found.values())
        hi = max(max(v) for v in found.values())
        ax.set_xlim(min(0.5, lo / 1.5), hi * 6)
        ax.set_xlabel("× the baseline of the same run (log scale); 1 = as fast; better →", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (sum(heights) + 0.8)))
    fig.savefig(output, format=os.path.splitext(output)[1][1:] or "svg", metadata={"Date": None})
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="JSON",
                        help="files written by `python -m benchmarks.bench_<topic> --json PATH`, one per run")
    parser.add_argument("-o", "--output", default="benchmarks.svg", metavar="SVG",
                        help="where to write the chart (default: %(default)s)")
    parser.add_argument("--title", default="actors: ratio to a baseline measured in the same run (median, min-max)",
                        help="the chart's title")
    args = parser.parse_args(argv)
    try:
        topics, left_out = cases(args.paths)
    except PlotError as exc:
        parser.error(str(exc))
    if not topics:
        parser.error("no ratio to draw: none of the files has a row measured against a baseline")
    render(topics, args.output, args.title)
    print(f"wrote {args.output}: {sum(len(c) for c in topics.values())} cases in {len(topics)} panel(s)")
    for line in left_out:
        print(f"  left out: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
