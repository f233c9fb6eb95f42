"""The uploads' vitals (shared/platform/vitals.py): what waits, and for how long, read from `uploads`.

Each query goes through an index the passes already use: `uploads_awaiting_verdict` (a partial
index of the few rows still waiting), `uploads_expiring`, and `uploads_status_updated` for the
recent re-drives (a re-drive stamps `updated_at` with `last_redrive_at`). So a scrape costs
milliseconds whatever the table's history holds.
"""

from __future__ import annotations

from collections.abc import Callable

from psycopg_pool import ConnectionPool

from shared.platform.vitals import Source, bounded_read
from shared.uploads.model import AWAITING_VERDICT, GONE, UploadStatus, values

# Completed, no verdict yet: what scan owes. `pending` is the browser's part, not scan's backlog.
SCAN_BACKLOG = frozenset({UploadStatus.UPLOADED, UploadStatus.SCANNING})
REDRIVE_WINDOW = "1 hour"  # dropgate_reconcile_redriven_last_hour: twelve reconcile passes

_WAITING = """
SELECT count(*) FILTER (WHERE status = %(pending)s) AS in_flight,
       count(*) FILTER (WHERE status = ANY(%(backlog)s)) AS backlog,
       coalesce(extract(epoch FROM now() - min(coalesce(completed_at, created_at))
                FILTER (WHERE status = ANY(%(backlog)s))), 0) AS oldest
  FROM uploads WHERE status = ANY(%(awaiting)s)
"""
_OVERDUE = """
SELECT count(*) AS n FROM uploads
 WHERE NOT legal_hold AND status <> ALL(%(ended)s) AND expires_at < now()
"""
_REDRIVEN = f"""
SELECT count(*) AS n FROM uploads
 WHERE status = ANY(%(every)s) AND updated_at > now() - interval '{REDRIVE_WINDOW}'
   AND last_redrive_at > now() - interval '{REDRIVE_WINDOW}'
"""


def read_upload_vitals(pool: ConnectionPool) -> dict[str, float]:
    with bounded_read(pool) as conn:
        waiting = conn.execute(_WAITING, {"pending": UploadStatus.PENDING, "backlog": values(SCAN_BACKLOG),
                                          "awaiting": values(AWAITING_VERDICT)}).fetchone()
        overdue = conn.execute(_OVERDUE, {"ended": values(GONE)}).fetchone()["n"]
        redriven = conn.execute(_REDRIVEN, {"every": values(UploadStatus)}).fetchone()["n"]
    return {
        "dropgate_uploads_in_flight": waiting["in_flight"],
        "dropgate_scan_backlog_uploads": waiting["backlog"],
        "dropgate_scan_backlog_oldest_seconds": float(waiting["oldest"]),
        "dropgate_expiry_overdue_uploads": overdue,
        "dropgate_reconcile_redriven_last_hour": redriven,
    }


def uploads_source(pool: Callable[[], ConnectionPool]) -> Source:
    """The pool is asked for at read time: scan builds it in its serving worker, after the fork."""
    return Source("uploads", lambda: read_upload_vitals(pool()))
