"""Draw the `--json` outputs of the benchmarks as one SVG bar chart: every row's ratio to its baseline.

    python -m benchmarks.plot results/*.json -o docs/benchmarks.svg

One section per file (per `bench_<topic>.py` run), one group of bars per benchmark and payload, one bar per
implementation. The axis is logarithmic and the baseline, measured in the same run, is the line at 1.0: a bar
reaching 2.0 was twice as fast, unless its group says "lower is better" (the ask latency's ratio is the time as a
multiple of the baseline's). Rows measured without a baseline (startup time, get latency by size) have no ratio and
are left out; rows that did not run (a peer that is not installed) appear as "n/a". Below each section, the targets
the run checked, with PASS or FAIL.

The SVG is written by hand: no plotting library is needed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from xml.sax.saxutils import escape

# layout, in pixels
WIDTH = 1160
LABEL_X = 12            # the group's label
IMPL_X = 240            # the implementation's label
PLOT_LEFT = 500
PLOT_RIGHT = 980
LABEL_CHARS = 30        # what fits in the label columns at 11 px
IMPL_CHARS = 42
MAX_RATIO = 1000.0      # the axis ends here: a zero-copy decode can be 100,000x, and would squash the rest
ROW = 18
BAR = 12
GROUP_GAP = 8
FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""

ACTORS_COLOR = "#1f6fb4"
PEER_COLORS = ("#e08a2c", "#5a9e4b", "#9467bd", "#8c564b", "#d0568f", "#7f7f7f", "#bcbd22", "#17a2b8")


class PlotError(Exception):
    """A file given to the plot is not the output of a benchmark's `--json`."""


def load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise PlotError(f"cannot plot {path}: it has no \"results\" list; give the file written by "
                        f"`python -m benchmarks.bench_<topic> --json PATH`")
    return doc


def section_name(path: str, doc: dict) -> str:
    """`bench_serialize` for a run of `python -m benchmarks.bench_serialize`, else the file's name."""
    argv = doc.get("argv") or []
    if argv and os.path.basename(str(argv[0])).startswith("bench_"):
        return os.path.splitext(os.path.basename(str(argv[0])))[0]
    return os.path.splitext(os.path.basename(path))[0]


def lower_is_better(row: dict, rows: list) -> bool:
    """Whether `row`'s ratio is its time as a multiple of the baseline's (lower is better) rather than the
    harness's usual baseline time / its time (higher is better): told apart by the baseline's own row."""
    base = next((r for r in rows if (r["benchmark"], r["payload"], r["impl"]) ==
                 (row["benchmark"], row["payload"], row.get("baseline"))), None)
    mine, ratio = row.get("seconds_per_op"), row.get("ratio_vs_baseline")
    if base is None or not base.get("seconds_per_op") or not mine or not ratio:
        return False
    faster, slower = base["seconds_per_op"] / mine, mine / base["seconds_per_op"]
    return abs(math.log(ratio / slower)) < abs(math.log(ratio / faster))


def groups_of(rows: list) -> list:
    """[(benchmark, payload, baseline, lower_is_better, [row, ...])], in the file's order; baseline rows (1.0 by
    definition: the line) and rows without a baseline are left out."""
    out: dict = {}
    for row in rows:
        if row.get("impl") == row.get("baseline"):
            continue
        if row.get("ratio_vs_baseline") is None and row.get("seconds_per_op") is not None:
            continue                    # measured, but against nothing: no ratio to draw
        key = (row["benchmark"], row["payload"])
        out.setdefault(key, []).append(row)
    result = []
    for (benchmark, payload), members in out.items():
        baseline = next((r["baseline"] for r in members if r.get("baseline")), None)
        if baseline is None:
            baseline = next((r["baseline"] for r in rows if (r["benchmark"], r["payload"]) == (benchmark, payload)
                             and r.get("baseline")), None)
        lower = any(lower_is_better(r, rows) for r in members)
        result.append((benchmark, payload, baseline, lower, members))
    return result


def targets_of(doc: dict) -> list:
    """[(text, passed)]: the benchmarks write targets either as {text: passed} or as [{target, measured, pass}]."""
    targets = doc.get("targets") or []
    if isinstance(targets, dict):
        return [(str(text), bool(ok)) for text, ok in targets.items()]
    out = []
    for t in targets:
        if isinstance(t, dict):
            text = t.get("target", "")
            if t.get("measured"):
                text = f"{text} (measured {t['measured']})"
            out.append((text, bool(t.get("pass"))))
    return out


def axis_range(ratios: list, max_ratio: float = MAX_RATIO) -> tuple:
    """Powers of ten around every ratio and 1.0, up to `max_ratio` (and down to its inverse)."""
    lo = max(min([1.0, *ratios]), 1 / max_ratio)
    hi = min(max([1.0, *ratios]), max_ratio)
    lo_exp = math.floor(math.log10(lo) + 1e-9) if lo < 1 else -1
    hi_exp = math.ceil(math.log10(hi) - 1e-9) if hi > 1 else 1
    return 10.0 ** lo_exp, 10.0 ** hi_exp


def ticks(lo: float, hi: float) -> list:
    exps = range(round(math.log10(lo)), round(math.log10(hi)) + 1)
    marks = [10.0 ** e for e in exps]
    if len(marks) <= 4:                 # a narrow range: add 2 and 5 within each decade
        marks += [m * k for m in marks[:-1] for k in (2, 5)]
    return sorted(marks)


def tick_label(value: float) -> str:
    return f"{value:,.0f}x" if value >= 1000 else f"{value:g}x"


def wrap(line: str, width: int) -> list:
    """`line` in pieces of at most `width` characters, broken at spaces where it can be."""
    out, current = [], ""
    for word in line.split(" "):
        while len(word) > width:
            if current:
                out.append(current)
                current = ""
            out.append(word[:width])
            word = word[width:]
        if current and len(current) + 1 + len(word) > width:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        out.append(current)
    return out


def ratio_label(ratio: float, lower: bool, baseline: str) -> str:
    text = f"{ratio:.2f}x" if ratio < 100 else f"{ratio:,.0f}x"
    return f"{text} {baseline}'s time" if lower else text


def text(x, y, content, *, size=12, anchor="start", weight="normal", fill="#222", extra="") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" '
            f'fill="{fill}" {FONT}{extra}>{escape(str(content))}</text>')


def render(sections: list, title: str, max_ratio: float = MAX_RATIO) -> str:
    """The SVG document for `sections`: [(name, machine, groups, targets)]. A bar beyond `max_ratio` ends at the
    axis's edge with a break mark, and its label gives the figure."""
    ratios = [r["ratio_vs_baseline"] for _, _, groups, _ in sections for g in groups for r in g[4]
              if r.get("ratio_vs_baseline")]
    if not ratios:
        raise PlotError("no row has a ratio to its baseline: nothing to plot")
    lo, hi = axis_range(ratios, max_ratio)
    span = math.log10(hi) - math.log10(lo)

    def x_of(value: float) -> float:
        value = min(max(value, lo), hi)
        return PLOT_LEFT + (math.log10(value) - math.log10(lo)) / span * (PLOT_RIGHT - PLOT_LEFT)

    colors: dict = {}
    peers = itertools.cycle(PEER_COLORS)

    def color(impl: str) -> str:
        if impl not in colors:
            colors[impl] = ACTORS_COLOR if impl.startswith("actors") else next(peers)
        return colors[impl]

    body = []
    y = 30
    body.append(text(LABEL_X, y, title, size=16, weight="bold"))
    machine = next((m for _, m, _, _ in sections if m), None)
    if machine:
        y += 20
        body.append(text(LABEL_X, y, f"{machine.get('platform', '?')}, {machine.get('cpu_count', '?')} CPUs; "
                                     f"{machine.get('python', '?')}, numpy {machine.get('numpy', '?')}",
                         size=11, fill="#555"))
    y += 18
    body.append(text(LABEL_X, y, "Each bar: the implementation's ratio to the baseline measured in the same run "
                                 "(log scale; the dashed line is the baseline, 1.0). Higher is faster unless the "
                                 "group says otherwise.", size=11, fill="#555"))
    y += 26
    axis_top = y
    tick_marks = ticks(lo, hi)
    grid_start = y

    for name, _machine, groups, targets in sections:
        y += 6
        body.append(text(LABEL_X, y + 12, name, size=14, weight="bold"))
        y += 22
        for benchmark, payload, baseline, lower, members in groups:
            label = f"{benchmark}: {payload}" if benchmark != payload else benchmark
            lines = [(line, 11, "bold", "#222") for line in wrap(label, LABEL_CHARS)]
            if baseline:
                sub = f"vs {baseline}" + (", lower is better" if lower else "")
                lines += [(line, 10, "normal", "#666") for line in wrap(sub, LABEL_CHARS + 8)]
            for i, (line, size, weight, fill) in enumerate(lines):
                body.append(text(LABEL_X, y + (i + 1) * ROW - 5, line, size=size, weight=weight, fill=fill))
            rows_here = max(len(members), len(lines))
            for i, row in enumerate(members):
                top = y + i * ROW
                impl = row["impl"]
                body.append(text(IMPL_X, top + ROW - 5, impl if len(impl) <= IMPL_CHARS else
                                 impl[:IMPL_CHARS - 1] + "…", size=11))
                ratio = row.get("ratio_vs_baseline")
                if ratio is None:
                    note = row.get("note") or "n/a"
                    note = note if note.startswith("n/a") else f"n/a: {note}"
                    body.append(text(x_of(1.0) + 6, top + ROW - 5, note, size=10, fill="#888",
                                     extra=' font-style="italic"'))
                    continue
                x0, x1 = sorted((x_of(1.0), x_of(ratio)))
                body.append(f'<rect x="{x0:.1f}" y="{top + (ROW - BAR) / 2:.1f}" width="{max(x1 - x0, 1):.1f}" '
                            f'height="{BAR}" fill="{color(impl)}"><title>{escape(impl)}: '
                            f'{escape(ratio_label(ratio, lower, baseline or "the baseline"))}</title></rect>')
                if ratio > hi or ratio < lo:       # off the scale: a white zigzag across the bar's end
                    bx = x1 - 10 if ratio > hi else x0 + 4
                    by = top + (ROW - BAR) / 2
                    body.append(f'<polyline points="{bx:.1f},{by - 1:.1f} {bx + 4:.1f},{by + BAR / 2:.1f} '
                                f'{bx:.1f},{by + BAR + 1:.1f}" fill="none" stroke="#fff" stroke-width="2"/>')
                if ratio >= 1:
                    body.append(text(x1 + 4, top + ROW - 5, ratio_label(ratio, lower, baseline or "baseline"),
                                     size=10, fill="#333"))
                else:
                    body.append(text(x0 - 4, top + ROW - 5, ratio_label(ratio, lower, baseline or "baseline"),
                                     size=10, anchor="end", fill="#333"))
            y += rows_here * ROW + GROUP_GAP
        if targets:
            y += 4
            body.append(text(LABEL_X, y + 12, "targets checked in this run:", size=11, fill="#444"))
            y += 16
            for target, ok in targets:
                mark, fill = ("PASS", "#2a7a2a") if ok else ("FAIL", "#c0392b")
                body.append(text(LABEL_X + 10, y + 12, mark, size=11, weight="bold", fill=fill))
                body.append(text(LABEL_X + 52, y + 12, target, size=11, fill="#333"))
                y += 16
        y += 14
    grid_end = y

    grid = []
    for mark in tick_marks:
        gx = x_of(mark)
        major = abs(math.log10(mark) - round(math.log10(mark))) < 1e-9
        grid.append(f'<line x1="{gx:.1f}" y1="{grid_start:.1f}" x2="{gx:.1f}" y2="{grid_end:.1f}" '
                    f'stroke="{"#d8d8d8" if major else "#eeeeee"}" stroke-width="1"/>')
        grid.append(text(gx, axis_top - 4, tick_label(mark), size=10, anchor="middle", fill="#666"))
        grid.append(text(gx, grid_end + 12, tick_label(mark), size=10, anchor="middle", fill="#666"))
    base_x = x_of(1.0)
    grid.append(f'<line x1="{base_x:.1f}" y1="{grid_start:.1f}" x2="{base_x:.1f}" y2="{grid_end:.1f}" '
                f'stroke="#000" stroke-width="1.2" stroke-dasharray="4 3"/>')

    height = y + 22
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        *grid,
        *body,
        "</svg>",
        "",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="JSON",
                        help="files written by `python -m benchmarks.bench_<topic> --json PATH`")
    parser.add_argument("-o", "--output", default="benchmarks.svg", metavar="SVG",
                        help="where to write the chart (default: %(default)s)")
    parser.add_argument("--max-ratio", type=float, default=MAX_RATIO, metavar="X",
                        help="where the axis ends; longer bars are cut, with their figure (default: %(default)g)")
    parser.add_argument("--title", default="actors benchmarks: ratio to the baseline of the same run",
                        help="the chart's title")
    args = parser.parse_args(argv)
    sections = []
    try:
        for path in args.paths:
            doc = load(path)
            rows = [r for r in doc["results"] if isinstance(r, dict) and {"benchmark", "payload", "impl"} <= set(r)]
            sections.append((section_name(path, doc), doc.get("machine"), groups_of(rows), targets_of(doc)))
        svg = render(sections, args.title, args.max_ratio)
    except PlotError as exc:
        parser.error(str(exc))
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(svg)
    rows = [r for _, _, groups, _ in sections for g in groups for r in g[4]]
    drawn = sum(1 for r in rows if r.get("ratio_vs_baseline") is not None)
    print(f"wrote {args.output}: {drawn} bars and {len(rows) - drawn} n/a rows from {len(sections)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
