"""How `dropgate-dev` prints (local-dev/output.py): tables people can read, JSON scripts can parse, progress
that stays off stdout. Pure logic, no server; the terminal case runs on a real pseudo-terminal."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import UTC, datetime

import pytest

from dropgate_local.output import Progress, emit, format_table, print_table


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of the first table in `text`, cut at the columns its rule (`---  ----`) marks: only an aligned
    table parses back into the values it was given."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip() and set(line.strip()) <= {"-", " "})
    starts = [i for i, ch in enumerate(lines[rule]) if ch == "-" and (i == 0 or lines[rule][i - 1] == " ")]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    header = [lines[rule - 1][a:b].strip() for a, b in bounds]
    rows = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        rows.append({name: line[a:b].strip() for name, (a, b) in zip(header, bounds, strict=True)})
    return rows


def test_a_table_is_aligned_and_reads_back_as_its_rows(capsys) -> None:
    rows = [{"id": "a", "size": 7, "done": True, "when": datetime(2026, 12, 3, 9, 30, 5, 123, tzinfo=UTC)},
            {"id": "a-much-longer-id", "size": 12345, "done": False, "when": None}]
    print_table(rows, ["id", "size", "done", "when"])
    out = capsys.readouterr().out
    assert parse_table(out) == [
        {"id": "a", "size": "7", "done": "yes", "when": "2026-12-03 09:30:05+00:00"},
        {"id": "a-much-longer-id", "size": "12345", "done": "no", "when": "-"}]
    lines = out.splitlines()
    # Numbers are right-aligned: their last digits share a column.
    assert lines[2].index("7") == lines[3].index("12345") + len("12345") - 1
    assert all(line == line.rstrip() for line in lines)  # no trailing blanks for diffs and copies


def test_control_characters_in_values_cannot_reach_the_terminal() -> None:
    """A filename is the uploader's: an escape sequence in it would clear or retitle the operator's terminal."""
    lines = format_table([{"filename": "evil\x1b]0;pwned\x07\x1b[2J.pdf", "note": "two\nlines"}], ["filename", "note"])
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text and len(lines) == 3
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J.pdf" in text and "two\\nlines" in text


def test_long_cells_are_cut_except_the_last_column() -> None:
    detail = "d" * 300
    lines = format_table([{"key": "k" * 200, "detail": detail}], ["key", "detail"])
    assert lines[2].startswith("k" * 79 + "…") and lines[2].endswith(detail)


def test_emit_prints_json_for_scripts_and_a_table_or_key_values_for_people(capsys) -> None:
    result = [{"upload_id": "u1", "outcome": "rescanned", "extra": {"a": 1}}]
    emit(result, as_json=True)
    assert json.loads(capsys.readouterr().out) == result  # the shape as is, whatever the table shows
    emit(result, as_json=False, columns=["outcome", "upload_id"])
    assert parse_table(capsys.readouterr().out) == [{"outcome": "rescanned", "upload_id": "u1"}]
    emit({"via": "local router", "ping_id": "p-1", "deliveries": [{"trigger": "t", "outcome": "delivered"}]},
         as_json=False)
    out = capsys.readouterr().out
    assert out.splitlines()[:2] == ["via      local router", "ping_id  p-1"]
    assert parse_table(out) == [{"trigger": "t", "outcome": "delivered"}]  # a list of records under a key
    emit([], as_json=False, empty="the blocklist is empty")
    assert capsys.readouterr().out == "the blocklist is empty\n"


def test_progress_in_a_log_is_plain_lines_on_stderr_only(capsys) -> None:
    with Progress(3, "replay", every=0) as progress:
        for _ in range(3):
            progress.step()
    out, err = capsys.readouterr()
    assert out == ""  # stdout stays the result's: `--json | jq` keeps working
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["replay: 1/3", "replay: 2/3", "replay: 3/3"]
    assert "(100%)" in lines[-1]


def test_progress_in_a_log_is_periodic_not_per_item() -> None:
    stream = io.StringIO()
    with Progress(10_000, "rescan", stream=stream, every=3600) as progress:
        for _ in range(10_000):
            progress.step()
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]  # only the final line
    assert stream.getvalue().startswith("rescan: 10000/10000 (100%)")


def test_progress_on_a_terminal_redraws_one_line() -> None:
    leader, follower = os.openpty()
    terminal = os.fdopen(follower, "w")
    try:
        assert terminal.isatty()
        with Progress(500, "expire dry run", stream=terminal, redraw=20) as progress:
            for _ in range(500):
                progress.step()
                time.sleep(0.0005)  # a quarter of a second in all: about five redraws, not 500
        terminal.flush()
        written = _read_all(leader)
    finally:
        terminal.close()
        os.close(leader)
    assert written.count("\r") < 50
    assert written.rsplit("\r", 1)[1].startswith("expire dry run: 500/500 (100%)")  # the last drawing: all done
    assert "\x1b[K" in written  # what a longer earlier line left is erased
    assert written.count("\n") == 1 and written.endswith("\n")  # closed: the next output starts below


def _read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    # The pty's line discipline turns "\n" into "\r\n" on the way out.
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_progress_closes_when_the_work_fails() -> None:
    stream = io.StringIO()
    with pytest.raises(RuntimeError), Progress(5, "rescan", stream=stream) as progress:
        progress.step(2)
        raise RuntimeError("storage went away")
    assert stream.getvalue().startswith("rescan: 2/5 (40%)")
