"""How every figure of the benchmarks is summarised and judged (issue 21, "honest baselines").

One measurement is never a figure: each is taken over rounds and reported as its median with the
min–max beside it, so a lucky or unlucky round cannot pass for the result. A ratio against a
baseline is computed per round (dropgate and the baseline of the same round, run back to back)
and then summarised the same way, so slow drifts of a shared machine fall on both sides of each
pair. Dropgate and its baseline swap places every round (ABBA: dropgate-raw, raw-dropgate, ...)
so neither always runs second on a machine the other has just warmed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Literal

RatioKind = Literal["speed", "time"]


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count of a figure's rounds (None figures when there were none)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def show(values: Sequence[float], fmt: str = "{:.0f}", unit: str = "") -> str:
    """"139 MB/s (120–150, n=5)": the median first, then the range and how many rounds made it."""
    summary = spread(values)
    if not summary["n"]:
        return "—"
    figure = f"{fmt.format(summary['median'])}{unit}"
    if summary["n"] == 1:
        return f"{figure} (n=1)"
    return f"{figure} ({fmt.format(summary['min'])}–{fmt.format(summary['max'])}{unit}, n={summary['n']})"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 400 calls is the 396th slowest: no interpolation that flatters)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def abba(round_number: int, first: str, second: str) -> tuple[str, str]:
    """The order of a round: even rounds `first` then `second`, odd rounds the other way round."""
    return (first, second) if round_number % 2 == 0 else (second, first)


def paired_ratios(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """Per-round ratios ours / theirs of figures paired by round (a round with no baseline figure is left out).

    Rates give a speed ratio (above 1: dropgate faster); durations passed as (theirs, ours) do too.
    Durations passed as (ours, theirs) give a "time" ratio (above 1: dropgate slower), the way the
    issue states the cold-start and verdict targets.
    """
    return [a / b for a, b in zip(ours, theirs, strict=True) if b]


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def row(name: str, dropgate: str, baseline: str = "—", *, ratios: Sequence[float] = (),
        kind: RatioKind = "speed", target: str | None = None, met: bool | None = None,
        values: dict[str, Any] | None = None) -> dict[str, Any]:
    """One line of bench/run.py's table; `ratio` is the median of the per-round ratios."""
    summary = spread(ratios)
    return {"name": name, "dropgate": dropgate, "baseline": baseline, "ratio": summary["median"],
            "ratio_min": summary["min"], "ratio_max": summary["max"], "ratio_kind": kind,
            "target": target, "met": met, "values": values or {}}


def ratio_cell(item: dict[str, Any]) -> str:
    """"0.56× (0.50–0.60)" for a speed ratio, "1.90× time (1.70–2.10)" for a time ratio."""
    if item.get("ratio") is None:
        return ""
    suffix = " time" if item.get("ratio_kind") == "time" else ""
    text = f"{item['ratio']:.2f}×{suffix}"
    if item.get("ratio_min") is not None and item["ratio_min"] != item["ratio_max"]:
        text += f" ({item['ratio_min']:.2f}–{item['ratio_max']:.2f})"
    return text


def met_cell(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "n/a"}[met]
