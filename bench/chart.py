"""`python -m bench.chart [bench/results/<date>.json ...]`: a bench run's table as a picture, `<date>.svg` beside it.

One entry per row of the results, in the table's order. A row with a same-run ratio gets a bar on a
log scale, oriented so that right of 1× always means dropgate is ahead: a speed ratio is drawn as
is, a time ratio ("3.4× time": dropgate takes 3.4 times as long) as its inverse. The whisker is the
min–max over rounds, a black tick the target where it is a ratio, and the colour and the word on the
right say whether the target is met (green), not met (red) or not judged (grey; n/a or no target).
Rows without a ratio (latencies against absolute targets, errors, memory) show dropgate's figure and
the verdict. Hand-written SVG, no dependency: the file is committed and shown in the README.

bench/run.py writes the chart after each run; without arguments this redraws every dated run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from bench import stats

RESULTS: Final = Path(__file__).with_name("results")
WIDTH: Final = 1100
LEFT: Final = 24  # the label column starts here; bars share the plot area below each label
PLOT_LEFT: Final = 24
PLOT_RIGHT: Final = WIDTH - 170  # the verdict column is right of the plot
LABEL_CHARS: Final = 150  # a longer name wraps onto a second line
LINE: Final = 16
BAR: Final = 12
_CHAR: Final = 6.6  # about how wide a character of the 12 px font is, to keep texts apart
COLOURS: Final = {True: "#2e7d32", False: "#c62828", None: "#9e9e9e"}
VERDICT: Final = {True: "met", False: "not met", None: "n/a"}
# "≥ 10×", "≤ 1.5× time", "≥ 15× (≤ ~18 µs per URL)", "≤ 1.3× time of clamd": a ratio target, and its side.
_RATIO_TARGET: Final = re.compile(r"^([≥≤])\s*([0-9.]+)×(\s*time)?")
_RATIO_AT_LEAST: Final = re.compile(r"ratio ≥ ([0-9.]+)\)?$")  # "≤ Companion's (ratio ≥ 1)"


@dataclass(frozen=True)
class Entry:
    """One results row as drawn: its advantage (right of 1 = dropgate ahead) and target, if any."""

    row: dict[str, Any]
    advantage: float | None
    low: float | None  # the whisker, as advantages
    high: float | None
    target: float | None  # the target as an advantage, where the target is a ratio

    @property
    def met(self) -> bool | None:
        return self.row.get("met") if self.row.get("target") else None


def advantage(ratio: float | None, kind: str | None) -> float | None:
    """dropgate's advantage over its baseline: the speed ratio, or the inverse of a time ratio."""
    if ratio is None or ratio <= 0:
        return None
    return 1 / ratio if kind == "time" else ratio


def target_advantage(target: str | None) -> float | None:
    """Where a ratio target sits on the advantage axis; None for absolute targets (ms, MB, counts)."""
    if not target:
        return None
    found = _RATIO_TARGET.match(target)
    if found:
        return advantage(float(found.group(2)), "time" if found.group(3) else "speed")
    found = _RATIO_AT_LEAST.search(target)
    return float(found.group(1)) if found else None


def entries(report: dict[str, Any]) -> list[Entry]:
    drawn = []
    for row in report["rows"]:
        kind = row.get("ratio_kind")
        ends = [advantage(row.get(k), kind) for k in ("ratio_min", "ratio_max")]
        low, high = (min(ends), max(ends)) if None not in ends else (None, None)
        drawn.append(Entry(row, advantage(row.get("ratio"), kind), low, high, target_advantage(row.get("target"))))
    return drawn


# ---------------------------------------------------------------------------------------------- the axis

@dataclass(frozen=True)
class Axis:
    """A log scale over the plot area, wide enough for every bar, whisker and target, and 1×."""

    low: float
    high: float

    @classmethod
    def around(cls, values: Iterable[float]) -> Axis:
        found = [v for v in values if v and v > 0] + [1.0]
        return cls(_nice_below(min(found) / 1.15), _nice_above(max(found) * 1.15))

    def x(self, value: float) -> float:
        span = math.log10(self.high) - math.log10(self.low)
        share = (math.log10(min(max(value, self.low), self.high)) - math.log10(self.low)) / span
        return round(PLOT_LEFT + share * (PLOT_RIGHT - PLOT_LEFT), 1)

    def ticks(self) -> list[float]:
        return [t for t in _STEPS if self.low <= t <= self.high]


_STEPS: Final = [m * 10.0 ** e for e in range(-3, 4) for m in (1, 2, 5)]


def _nice_below(value: float) -> float:
    return max([s for s in _STEPS if s <= value], default=_STEPS[0])


def _nice_above(value: float) -> float:
    return min([s for s in _STEPS if s >= value], default=_STEPS[-1])


def _times(value: float) -> str:
    return f"{value:g}×"


# ---------------------------------------------------------------------------------------------- drawing

def render(report: dict[str, Any], source: str = "") -> str:
    """The SVG document for one results file."""
    drawn = entries(report)
    axis = Axis.around(v for e in drawn for v in (e.advantage, e.low, e.high, e.target) if v is not None)
    body, y = _header(report, source), 100
    body += _axis(axis, y - 8, "top")
    for index, entry in enumerate(drawn):
        part, height = _entry(entry, index, axis, y)
        body += part
        y += height
    body += _axis(axis, y + 14, "bottom")
    height = y + 60
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" font-family="Helvetica, Arial, sans-serif" font-size="12">\n'
            f"<title>{escape(title(report))}</title>\n"
            f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>\n' + "".join(body) + "</svg>\n")


def title(report: dict[str, Any]) -> str:
    quick = " (quick)" if report.get("settings", {}).get("quick") else ""
    return f"dropgate against same-run baselines, {report['date'][:10]}{quick}"


def _header(report: dict[str, Any], source: str) -> list[str]:
    note = ("Bar: dropgate's advantage over its baseline, log scale; right of 1× dropgate is ahead (a time ratio "
            "is drawn inverted). Whisker: min–max over rounds. Black tick: the target.")
    key = "".join(f'<rect x="{x}" y="66" width="12" height="12" fill="{COLOURS[met]}"/>'
                  f'<text x="{x + 16}" y="76">{VERDICT[met] if met is not None else "n/a or no target"}</text>'
                  for x, met in ((LEFT, True), (LEFT + 70, False), (LEFT + 160, None)))
    return [f'<text x="{LEFT}" y="26" font-size="17" font-weight="bold">{escape(title(report))}</text>\n',
            f'<text x="{LEFT}" y="44" fill="#444444">{escape(_fit(report.get("machine", ""), 170))}</text>\n',
            f'<text x="{LEFT}" y="60" fill="#444444">{escape(note)}'
            + (f" From {escape(source)}." if source else "") + "</text>\n", key + "\n"]


def _grid(axis: Axis, top: float, bottom: float) -> list[str]:
    """Gridlines in one row's bar band only, so they never cross a label."""
    lines = []
    for tick in axis.ticks():
        colour, width = ("#555555", 1.2) if tick == 1 else ("#e0e0e0", 1)
        lines.append(f'<line x1="{axis.x(tick)}" y1="{top}" x2="{axis.x(tick)}" y2="{bottom}" '
                     f'stroke="{colour}" stroke-width="{width}"/>')
    return lines


def _axis(axis: Axis, y: float, where: str) -> list[str]:
    return [f'<g class="axis {where}">'
            + "".join(f'<text x="{axis.x(t)}" y="{y}" text-anchor="middle" fill="#555555">{_times(t)}</text>'
                      for t in axis.ticks()) + "</g>\n"]


def _entry(entry: Entry, index: int, axis: Axis, y: float) -> tuple[list[str], int]:
    """A row: its name (wrapped), then its bar or figure, with the verdict at the right. (SVG, height)."""
    row = entry.row
    lines = textwrap.wrap(row["name"], LABEL_CHARS) or [""]
    label = "".join(f'<tspan x="{LEFT}" dy="{0 if i == 0 else LINE}">{escape(line)}</tspan>'
                    for i, line in enumerate(lines))
    bar_y = y + LINE * len(lines) + 2  # below the label's descenders
    met = entry.met
    parts = [(f'<g class="row" data-index="{index}" data-name={quoteattr(row["name"])} '
              f'data-met="{_met_attribute(met)}">'),
             f"<title>{escape(row['name'])}</title>",
             f'<text class="label" x="{LEFT}" y="{y + 12}">{label}</text>']
    if entry.advantage is not None:
        parts += _grid(axis, bar_y - 4, bar_y + BAR + 4) + _bar(entry, axis, bar_y)
    else:
        parts += _figure(row, bar_y)
    if entry.target is not None:
        x = axis.x(entry.target)
        parts.append(f'<line class="target" data-target={quoteattr(row["target"])} x1="{x}" y1="{bar_y - 3}" '
                     f'x2="{x}" y2="{bar_y + BAR + 3}" stroke="#000000" stroke-width="2.5"/>')
    if row.get("target"):
        parts.append(f'<text class="verdict {_met_attribute(met)}" x="{PLOT_RIGHT + 14}" y="{bar_y + 10}" '
                     f'fill="{COLOURS[met]}" font-weight="bold">{VERDICT[met]}</text>'
                     f'<text x="{PLOT_RIGHT + 68}" y="{bar_y + 10}" fill="#666666" font-size="10">'
                     f"{escape(_fit(row['target'], 17))}</text>")
    parts.append("</g>\n")
    return parts, LINE * len(lines) + BAR + 16


def _bar(entry: Entry, axis: Axis, y: float) -> list[str]:
    one, end = axis.x(1.0), axis.x(entry.advantage)
    left, width = min(one, end), max(abs(end - one), 1.5)
    parts = [(f'<rect class="bar" data-ratio="{entry.row["ratio"]!r}" data-advantage="{entry.advantage!r}" '
              f'x="{left}" y="{y}" width="{round(width, 1)}" height="{BAR}" fill="{COLOURS[entry.met]}" '
              f'fill-opacity="0.85"/>')]
    if entry.low is not None and entry.high is not None and entry.low != entry.high:
        low, high, mid = axis.x(entry.low), axis.x(entry.high), y + BAR / 2
        parts.append(f'<path class="whisker" d="M{low},{mid}H{high}M{low},{mid - 4}V{mid + 4}M{high},{mid - 4}'
                     f'V{mid + 4}" stroke="#333333" stroke-width="1" fill="none"/>')
    # Right of the bar's end (and its whisker) when dropgate is ahead; else right of 1×, which a bar
    # going left leaves free, so the figure never runs off the chart's left edge.
    ahead = end >= one
    x = max(end if ahead else one, axis.x(entry.high) if entry.high else end) + 6
    text = stats.ratio_cell(entry.row)
    if entry.target is not None and x - 4 <= axis.x(entry.target) <= x + len(text) * _CHAR:
        x = axis.x(entry.target) + 6  # the target tick would cross the figure: start after it
    parts.append(f'<text class="value" x="{round(x, 1)}" y="{y + 10}">{escape(text)}</text>')
    return parts


def _figure(row: dict[str, Any], y: float) -> list[str]:
    """A row measured against an absolute target (or none): its figure instead of a bar."""
    return [(f'<text class="figure" x="{PLOT_LEFT}" y="{y + 10}" fill="#444444">no same-run ratio; dropgate: '
             f'{escape(_fit(str(row.get("dropgate", "")), 130))}</text>')]


def _met_attribute(met: bool | None) -> str:
    return {True: "met", False: "not-met", None: "none"}[met]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------------------------- files

def chart_path(results: Path) -> Path:
    return results.with_suffix(".svg")


def write(report: dict[str, Any], path: Path) -> Path:
    path.write_text(render(report, path.with_suffix(".json").name))
    return path


def dated_results() -> list[Path]:
    return sorted(p for p in RESULTS.glob("20*.json") if p.stem[:10].count("-") == 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="draw a bench run's ratios and targets as SVG, beside its JSON")
    parser.add_argument("results", type=Path, nargs="*", help="default: every dated run in bench/results/")
    args = parser.parse_args(argv)
    for source in args.results or dated_results():
        written = write(json.loads(source.read_text()), chart_path(source))
        print(f"{written}: chart of {source.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
