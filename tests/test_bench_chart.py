"""The bench's chart (bench/chart.py): every results row drawn with its own label, ratio and verdict, and the
committed charts are the ones their results give. No timing is asserted: the figures come from the JSON."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import chart, readme

SVG = "{http://www.w3.org/2000/svg}"
KEPT = chart.dated_results()


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on anything that is not well-formed XML


def drawn_rows(root: ET.Element) -> list[ET.Element]:
    return root.findall(f".//{SVG}g[@class='row']")


def scale(root: ET.Element) -> Callable[[float], float]:
    """Where a value sits, read off the chart's own axis labels ("0.2×" … "50×") as a reader would."""
    ticks = [(float(t.text.rstrip("×")), float(t.get("x"))) for t in root.find(f".//{SVG}g[@class='axis top']")]
    (v0, x0), (v1, x1) = ticks[0], ticks[-1]
    return lambda value: x0 + (math.log10(value) - math.log10(v0)) / (math.log10(v1) - math.log10(v0)) * (x1 - x0)


def bar_end(bar: ET.Element, one: float) -> float:
    """The end of a bar away from 1×: bars grow from 1× to the right (ahead) or to the left (behind)."""
    left, right = float(bar.get("x")), float(bar.get("x")) + float(bar.get("width"))
    return right if abs(left - one) < abs(right - one) else left


@pytest.mark.parametrize("source", KEPT, ids=[p.name for p in KEPT])
def test_every_row_is_drawn_with_its_label_value_and_verdict(source: Path) -> None:
    report = json.loads(source.read_text())
    root = parse(chart.render(report, source.name))
    rows, x = drawn_rows(root), scale(root)
    assert [g.get("data-name") for g in rows] == [row["name"] for row in report["rows"]]
    for g, row in zip(rows, report["rows"], strict=True):
        label = "".join(g.find(f"{SVG}text[@class='label']").itertext())
        assert label.replace(" ", "") == row["name"].replace(" ", "")  # wrapped onto lines, every word kept
        bars = g.findall(f"{SVG}rect[@class='bar']")
        if row.get("ratio") is None:
            assert bars == [] and g.find(f"{SVG}text[@class='figure']") is not None
        else:
            assert len(bars) == 1 and math.isclose(float(bars[0].get("data-ratio")), row["ratio"])
            # Drawn where the ratio is: a time ratio inverted, so right of 1× is always dropgate ahead.
            ahead = row["ratio"] if row.get("ratio_kind") != "time" else 1 / row["ratio"]
            if abs(x(ahead) - x(1)) > 2:  # a bar of a ratio near 1 is drawn at its minimum width
                assert bar_end(bars[0], x(1)) == pytest.approx(x(ahead), abs=1)
            value = "".join(g.find(f"{SVG}text[@class='value']").itertext())
            assert value.startswith(f"{row['ratio']:.2f}×")
        expected = {True: "met", False: "not-met"}.get(row.get("met")) if row.get("target") else None
        verdicts = [t.get("class") for t in g.findall(f"{SVG}text") if "verdict" in (t.get("class") or "")]
        if row.get("target"):
            assert verdicts == [f"verdict {expected or 'none'}"] and g.get("data-met") == (expected or "none")
        else:
            assert verdicts == [] and g.get("data-met") == "none"


def test_bars_point_right_when_dropgate_is_ahead_and_targets_sit_where_they_say() -> None:
    report = {"date": "2026-12-03T00:00:00+00:00", "machine": "test", "rows": [
        {"name": "faster", "ratio": 4.0, "ratio_kind": "speed", "target": "≥ 2×", "met": True},
        {"name": "slower <&> in time", "ratio": 2.0, "ratio_min": 1.5, "ratio_max": 2.5, "ratio_kind": "time",
         "target": "≤ 1.5× time", "met": False},
        {"name": "latency", "ratio": None, "dropgate": "p99 5 ms", "target": "p99 ≤ 1000 ms", "met": None}]}
    root = parse(chart.render(report))
    faster, slower, latency = drawn_rows(root)
    one = chart.Axis.around([4.0, 2.0, 0.5, 0.4, 2 / 3, 1 / 1.5]).x(1.0)
    bar = faster.find(f"{SVG}rect[@class='bar']")
    assert float(bar.get("x")) == pytest.approx(one, abs=0.2)  # starts at 1×, goes right
    bar = slower.find(f"{SVG}rect[@class='bar']")
    assert float(bar.get("x")) + float(bar.get("width")) == pytest.approx(one, abs=0.2)  # ends at 1×: behind
    assert float(bar.get("data-advantage")) == pytest.approx(0.5)
    assert slower.get("data-name") == "slower <&> in time"  # escaped in the file, itself when parsed
    # The target tick: right of 1× for "≥ 2×", left of it for "≤ 1.5× time" (at 1/1.5).
    assert float(faster.find(f"{SVG}line[@class='target']").get("x1")) > one
    assert float(slower.find(f"{SVG}line[@class='target']").get("x1")) < one
    assert latency.find(f"{SVG}line[@class='target']") is None  # an absolute target has no place on the axis
    assert [g.get("data-met") for g in (faster, slower, latency)] == ["met", "not-met", "none"]


@pytest.mark.parametrize(("target", "expected"), [
    ("≥ 10×", 10.0), ("≤ 1.5× time", 1 / 1.5), ("≥ 15× (≤ ~18 µs per URL)", 15.0),
    ("≤ 1.3× time of clamd, at 1 GiB", 1 / 1.3), ("≤ Companion's (ratio ≥ 1)", 1.0),
    ("p99 ≤ 250 ms at 400 users", None), ("≤ 0.25 s", None), ("0 at 400 users", None), (None, None)])
def test_targets_are_read_as_ratios_only_when_they_are(target: str | None, expected: float | None) -> None:
    found = chart.target_advantage(target)
    assert found == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("source", KEPT, ids=[p.name for p in KEPT])
def test_the_committed_chart_is_the_one_its_results_give(source: Path) -> None:
    """Like the README's table: a kept run without its chart, or a chart of other figures, fails here."""
    committed = chart.chart_path(source)
    assert committed.exists(), f"{committed.name} is missing: run `python -m bench.chart {source}`"
    assert committed.read_text() == chart.render(json.loads(source.read_text()), source.name), \
        f"{committed.name} is not the chart of {source.name}: run `python -m bench.chart {source}`"


def test_the_readme_shows_the_newest_runs_chart() -> None:
    source = readme.newest_results()
    link = f"]({chart.chart_path(source).relative_to(readme.ROOT)})"
    block = readme.README.read_text().split(readme.README_BEGIN, 1)[1].split(readme.README_END, 1)[0]
    assert block.count(link) == 1 and chart.chart_path(source).exists()
