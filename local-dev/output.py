"""How `dropgate-dev` commands print: a table for people, JSON for scripts, progress beside both.

    print_table(rows, columns)            aligned plain-text table on stdout
    emit(result, as_json=..., columns=)   a table (list of dicts), key/value lines (dict) or JSON (--json)
    with Progress(total, "rescan") as p:  progress on stderr; p.step() per item

Results go to stdout and nothing else does, so `dropgate-dev <command> --json | jq` always reads one JSON
document; progress and diagnostics go to stderr. No dependency: this runs wherever dropgate-dev does.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import IO, Any, Final, Protocol, Self

MAX_CELL: Final = 80  # wider cells are cut with "…" in tables; --json always has the whole value
_GAP: Final = "  "
_NONE: Final = "-"


# ---------------------------------------------------------------------------------------------- cells

def cell(value: Any) -> str:
    """One value as table text: no control characters, on one line.

    Filenames, event ids and error details come from uploaders and remote servers; printed raw, an
    escape sequence in one could move the cursor or retitle the operator's terminal, and a newline
    would break the table's columns. Control characters are shown escaped (`\\x1b`, `\\n`) instead.
    """
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) and abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, Mapping | list | tuple):
        value = json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)
    return _printable(str(value))


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------- tables

def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, max_cell: int = MAX_CELL) -> list[str]:
    """The table's lines: a header, a rule, one line per row; numbers right-aligned, a missing key shows "-"."""
    # The last column is never cut: nothing follows it to misalign, and it is often the detail that matters.
    last = len(columns) - 1
    cells = [[cell(row.get(column)) if i == last else _fit(cell(row.get(column)), max_cell)
              for i, column in enumerate(columns)] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    numeric = [any(_is_number(row.get(c)) for row in rows) and all(_is_number(row.get(c)) or row.get(c) is None
                                                                    for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric, strict=True)]
        return _GAP.join(padded).rstrip()

    # The last column's rule stops at the usual cell width: an uncut detail need not draw a wall of dashes.
    rule = ["-" * (min(w, max(len(columns[i]), max_cell)) if i == last else w) for i, w in enumerate(widths)]
    return [line(columns), line(rule), *(line(values) for values in cells)]


def print_table(rows: list[dict], columns: list[str]) -> None:
    """An aligned plain-text table on stdout (header, rule, one line per row)."""
    print("\n".join(format_table(rows, columns)), flush=True)


def format_mapping(result: Mapping[str, Any], keys: Sequence[str] | None = None) -> list[str]:
    """Key/value lines, keys aligned; a list of records under a key becomes an indented table below it."""
    keys = list(keys or result.keys())
    # Aligned on the keys that share a line with their value; a table's key has a line of its own.
    width = max((len(k) for k in keys if not (_is_records(result.get(k)) and result.get(k))), default=0)
    lines = []
    for key in keys:
        value = result.get(key)
        if _is_records(value) and value:
            lines.append(f"{key}:")
            lines += [f"  {line}" for line in format_table(value, _columns_of(value))]
        else:
            lines.append(f"{key.ljust(width)}{_GAP}{cell(value)}".rstrip())
    return lines


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, Mapping) for item in value)


def _columns_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order (rows of one command usually share their keys)."""
    return list(dict.fromkeys(key for row in rows for key in row))


# ---------------------------------------------------------------------------------------------- emit

def emit(result: Any, *, as_json: bool, columns: list[str] | None = None, empty: str = "(none)") -> None:
    """Print a command's result on stdout: JSON with --json, else a table or key/value lines.

    The JSON is the result as is (the shape scripts rely on); `columns` only chooses what the table
    (or the key/value lines of a dict) shows, and in which order. `empty` is said for an empty list.
    """
    if as_json:
        print(json.dumps(result, indent=2, default=str), flush=True)
    elif _is_records(result):
        print("\n".join(format_table(result, columns or _columns_of(result))) if result else empty, flush=True)
    elif isinstance(result, Mapping):
        print("\n".join(format_mapping(result, columns)), flush=True)
    else:
        print(cell(result) if not isinstance(result, str) else _printable(result), flush=True)


# ---------------------------------------------------------------------------------------------- progress

class Progress:
    """How far a long command is, on stderr (stdout stays the result's: --json output remains parseable).

    On a terminal, one line redrawn in place (at most `redraw` times a second, so a fast loop does not
    spend its time writing); into a file or a CI log, a plain line every `every` seconds and one at the
    end, without carriage returns or escape codes that would garble a log.
    """

    def __init__(self, total: int, label: str, *, stream: IO[str] | None = None, every: float = 5.0,
                 redraw: float = 10.0) -> None:
        self.total, self.label, self.done = max(total, 0), label, 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = _isatty(self._stream)
        self._interval = 1.0 / redraw if self._tty else every
        self._started = time.monotonic()
        self._last_shown = self._started  # a non-TTY log gets its first line after `every`, not at 0
        self._closed = False
        self._shown_done: int | None = None  # the count the last line showed
        if self._tty:
            self._draw()

    def step(self, n: int = 1) -> None:
        """Count n more items done; show it if enough time has passed since the last line."""
        self.done += n
        now = time.monotonic()
        if now - self._last_shown >= self._interval:
            self._last_shown = now
            self._draw()

    def close(self) -> None:
        """The final count, always shown; a terminal's line is ended so the next output starts below it."""
        if self._closed:
            return
        self._closed = True
        if self._tty or self._shown_done != self.done:  # a log's last line may already say it
            self._draw()
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def line(self) -> str:
        """`label: done/total (percent) elapsed[, ~left]`: what each drawn line says."""
        elapsed = time.monotonic() - self._started
        text = f"{self.label}: {self.done}/{self.total}"
        if self.total:
            text += f" ({100 * min(self.done, self.total) // self.total}%)"
        text += f" {_duration(elapsed)}"
        if 0 < self.done < self.total and not self._closed:
            text += f", ~{_duration(elapsed / self.done * (self.total - self.done))} left"
        return text

    def _draw(self) -> None:
        self._shown_done = self.done
        if self._tty:
            # \r back to the line's start, \x1b[K erases what a longer previous line left behind.
            self._stream.write(f"\r{self.line()}\x1b[K")
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()


class Steps(Protocol):
    """What code that reports progress needs: a Progress, or Silent where nobody watches."""

    def step(self, n: int = 1) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *_exc: object) -> None: ...


class Silent:
    """Progress that shows nothing: the default of library calls (tests, other tools) made outside the CLI."""

    def __init__(self, total: int = 0, label: str = "") -> None:
        self.total, self.label, self.done = total, label, 0

    def step(self, n: int = 1) -> None:
        self.done += n

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


__all__ = ["MAX_CELL", "Progress", "Silent", "Steps", "cell", "emit", "format_mapping", "format_table", "print_table"]
