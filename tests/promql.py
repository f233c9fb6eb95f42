"""The metric names a PromQL expression reads, for checking dashboards and rules against /metrics.

A tokenizer, not a regular expression over the text: string literals, label matchers (`{...}`),
ranges and subqueries (`[5m]`, `[$__rate_interval]`), grouping lists (`by (le)`, `on (function)`),
function calls, aggregation operators, keywords and numbers are told apart, so `le`, `route`,
`histogram_quantile` or `"5.."` are never taken for metrics. Each name comes with the functions it
sits inside, so a test can tell `rate(x_total[5m])` from `max(x)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<variable>\$\{?\w+\}?)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<comma>,)
  | (?P<operator>==|!=|>=|<=|=~|!~|[-+*/%^<>=@])
  | (?P<space>\s+)
""", re.VERBOSE)

KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                      "group_right", "inf", "nan", "atan2", "start", "end"})
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


@dataclass(frozen=True)
class MetricUse:
    name: str
    within: tuple[str, ...]  # enclosing functions and aggregations, outermost first


def tokens(expr: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[position:position + 20]!r}")
        position = match.end()
        if match.lastgroup != "space":
            found.append((match.lastgroup, match.group()))
    return found


def _skip_group(items: list[tuple[str, str]], start: int) -> int:
    """The index after the bracket group that opens at `start` (brackets of any kind nest)."""
    depth = 0
    for index in range(start, len(items)):
        kind, _ = items[index]
        depth += kind == "open"
        depth -= kind == "close"
        if depth == 0:
            return index + 1
    raise ValueError("unbalanced brackets")


def metric_uses(expr: str) -> list[MetricUse]:
    items = tokens(expr)
    uses: list[MetricUse] = []
    stack: list[str] = []  # what each open parenthesis belongs to
    pending = "("  # the function or aggregation the next "(" opens
    index = 0
    while index < len(items):
        kind, text = items[index]
        following = items[index + 1] if index + 1 < len(items) else ("", "")
        if kind == "open" and text in "{[":
            index = _skip_group(items, index)  # label matchers, ranges, subqueries: no names of metrics
            continue
        if kind == "name" and text == "offset":  # `offset 1h30m` reads as 1, h30m: a duration, not a metric
            index += 1
            while index < len(items) and (items[index][0] == "number" or items[index][1] == "-"
                                          or (items[index][0] == "name" and items[index - 1][0] == "number")):
                index += 1
            continue
        if kind == "name" and text in LABEL_LISTS:
            index += 1
            if index < len(items) and items[index][1] == "(":
                index = _skip_group(items, index)
            continue
        if kind == "open":
            stack.append(pending)
            pending = "("
        elif kind == "close":
            stack.pop()
        elif kind == "name" and (following[1] == "(" or text in AGGREGATIONS):
            pending = text  # a call, or an aggregation whose "(" may come after its `by (...)`
        elif kind == "name" and text.lower() not in KEYWORDS:
            uses.append(MetricUse(text, tuple(f for f in stack if f != "(")))
        index += 1
    if stack:
        raise ValueError("unbalanced parentheses")
    return uses


def metric_names(expr: str) -> set[str]:
    return {use.name for use in metric_uses(expr)}
