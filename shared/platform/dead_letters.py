"""Dead letters: events that exhausted their retries, logged and recorded where a rule can count them.

Knative's JobSink (manifests/base/eventing/dead-letter.yaml) runs one Job per dead letter with the
event mounted as a file; the Job runs `python -m shared.platform.dead_letters`. A Job has no
/metrics anyone scrapes, so it writes the fact to the database instead: one `processed_events` row
per event id (consumer `dead-letter`, so a redelivered dead letter counts once, and the primary key
makes the count an index range), which scan's vitals report as `dropgate_dead_letters_recorded_total`
(shared/platform/vitals.py; docs/monitoring.md). The JSON log line comes first and stays the record
`dropgate-dev replay-dead-letters` reads; a database that is down fails the Job, which Kubernetes retries.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool

from shared.platform.vitals import Source, bounded_read

CONSUMER: Final = "dead-letter"
EVENT_FILE: Final = Path("/etc/jobsink-event/event")  # where Knative's JobSink mounts the event


def record(conn: psycopg.Connection, event: dict[str, Any]) -> bool:
    """Record one dead letter; False when its id was recorded before (a redelivery)."""
    # Knative's dead-letter extensions: the answer that made it give up (an HTTP status), when there was one.
    outcome = f"dead-lettered:{event.get('knativeerrorcode', 'unknown')}"
    event_id = event.get("id")
    if not event_id:
        raise ValueError("a dead letter without a CloudEvent id")
    inserted = conn.execute(
        "INSERT INTO processed_events (consumer, event_id, event_type, outcome) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (consumer, event_id) DO NOTHING",
        (CONSUMER, str(event_id), str(event.get("type", "")), outcome)).rowcount
    return inserted == 1


def count_recorded(pool: ConnectionPool) -> int:
    with bounded_read(pool) as conn:  # the pool's rows are dicts (shared/platform/db.py)
        return conn.execute("SELECT count(*) AS n FROM processed_events WHERE consumer = %s",
                            (CONSUMER,)).fetchone()["n"]


def dead_letters_source(pool: Callable[[], ConnectionPool]) -> Source:
    return Source("dead_letters", lambda: {"dropgate_dead_letters_recorded": count_recorded(pool())})


def main(argv: list[str] | None = None) -> int:
    """The JobSink Job: log the event as one JSON line, then record it (exit 1 if it could not be)."""
    from shared.platform.settings import Settings, SettingsError

    path = Path((argv or sys.argv[1:] or [str(EVENT_FILE)])[0])
    event = json.loads(path.read_text(encoding="utf-8"))
    print(json.dumps({"level": "ERROR", "logger": "dropgate.dead_letter", "message": "event exhausted its retries",
                      "event": event}), flush=True)
    try:
        settings = Settings.from_env(["database"])
    except SettingsError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 2
    with psycopg.connect(settings.database.url, connect_timeout=settings.database.connect_timeout_seconds) as conn:
        record(conn, event)
    return 0


if __name__ == "__main__":
    sys.exit(main())
