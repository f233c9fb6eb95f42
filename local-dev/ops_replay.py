"""`dropgate-dev replay-dead-letters`: re-post dead-lettered events to the broker, same ids (docs/operations.md)."""

from __future__ import annotations

import argparse
import fcntl
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cloudevents.http import CloudEvent, from_http

from dropgate_local.ops_target import OpsError, Target
from dropgate_local.output import Progress, Silent, Steps, emit
from shared.platform import tracing
from shared.platform.delivery import EventSink

# Knative's delivery bookkeeping, not part of the event: dropped before a replay.
_DELIVERY_EXTENSIONS: Final = ("knativeerrordest", "knativeerrorcode", "knativeerrordata", "knativearrivaltime",
                               "knativebrokerttl")
COLUMNS: Final = ["outcome", "id", "type", "detail"]


def _parse_dead_letter(line: bytes) -> CloudEvent:
    """A dead-lettered event without Knative's delivery extensions: the router's file or a JobSink log line."""
    document = json.loads(line)
    if isinstance(document, dict) and "specversion" not in document and isinstance(document.get("event"), dict):
        document = document["event"]  # manifests/base/eventing/dead-letter.yaml logs {"event": {...}}
    event = from_http({"content-type": "application/cloudevents+json"}, json.dumps(document).encode())
    attributes = {k: v for k, v in event.get_attributes().items() if k not in _DELIVERY_EXTENSIONS}
    return CloudEvent(attributes, event.get_data())


@dataclass
class Replayed:
    id: str
    type: str | None
    outcome: str  # replayed, failed, kept (filtered out or dry run), unreadable
    detail: str | None = None


def replay_dead_letters(path: Path, broker_url: str | None, *, ids: Iterable[str] = (),
                        dry_run: bool = False, token_file: str | None = None,
                        progress: Callable[[int], Steps] = Silent) -> list[Replayed]:
    """Take the file's lines under its lock, re-post the chosen events, put back what was not replayed.

    Replayed lines go to `<file>.replayed`, with the time, so what was replayed stays on record.
    `progress(number of lines)` is stepped once per line (the CLI passes an output.Progress).
    """
    if not path.exists():
        return []
    if not broker_url and not dry_run:
        raise OpsError("no broker to replay to: set K_SINK or pass --broker")
    wanted = set(ids)
    with path.open("r+b") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        lines = [line for line in file.read().splitlines() if line.strip()]
        if not dry_run:
            file.seek(0)
            file.truncate()
    results, keep, done = [], [], []
    sink = EventSink(broker_url, token_file=token_file)
    with progress(len(lines)) as shown:
        for line in lines:
            result = _replay_line(line, sink, wanted, dry_run)
            results.append(result)
            (done if result.outcome == "replayed" else keep).append(line)
            shown.step()
    if not dry_run:
        _append_locked(path, keep)
        stamp = datetime.now(UTC).isoformat()
        _append_locked(path.with_name(path.name + ".replayed"),
                       [json.dumps({"replayed_at": stamp, "event": json.loads(line)}).encode() for line in done])
    return results


def _replay_line(line: bytes, sink: EventSink, wanted: set[str], dry_run: bool) -> Replayed:
    """One line's fate: replayed, failed (it goes back), kept (filtered out or dry run) or unreadable."""
    try:
        event = _parse_dead_letter(line)
    except (ValueError, TypeError, KeyError) as exc:
        return Replayed("?", None, "unreadable", str(exc)[:200])
    if dry_run or (wanted and event["id"] not in wanted):
        return Replayed(event["id"], event["type"], "kept")
    try:
        with tracing.span("dropgate-dev replay-dead-letters", parent=tracing.event_traceparent(event)):
            sink.send(event)
    except Exception as exc:  # noqa: BLE001 - reported per event, the line goes back into the file
        return Replayed(event["id"], event["type"], "failed", f"{type(exc).__name__}: {exc}"[:300])
    return Replayed(event["id"], event["type"], "replayed")


def _append_locked(path: Path, lines: list[bytes]) -> None:
    if not lines:
        return
    with path.open("ab") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.write(b"".join(line + b"\n" for line in lines))


def run_replay(args: argparse.Namespace) -> int:
    target = Target.resolve(args)
    path = args.file or target.dead_letter_file
    if path is None:
        raise OpsError("no dead-letter file: pass --file (e.g. the JobSink's logs saved one JSON line per event)")
    results = replay_dead_letters(path, target.broker_url, ids=args.id, dry_run=args.dry_run,
                                  token_file=target.sink_token_file,
                                  progress=lambda total: Progress(total, "replay-dead-letters"))
    emit([asdict(r) for r in results], as_json=args.json, columns=COLUMNS,
         empty=f"no dead-lettered events in {path}")
    return 1 if any(r.outcome == "failed" for r in results) else 0
