"""The webhooks' vitals (shared/platform/vitals.py): deliveries waiting, how long, and those given up on.

Read from the delivery log at scrape time, as the uploads' are: the webhooks function scales to zero
between events, so its own counters would be gone when an alert needs them. Each query goes through an
index the sweep already uses (`webhook_deliveries_due`, the pending ones) or reads only the last day's
failures, so a scrape costs milliseconds whatever the log holds.
"""

from __future__ import annotations

from collections.abc import Callable

from psycopg_pool import ConnectionPool

from shared.platform.vitals import Source, bounded_read
from shared.webhooks.model import DeliveryState

FAILED_WINDOW = "1 day"  # dropgate_webhook_deliveries_failed_last_day

_DELIVERIES = f"""
SELECT (SELECT count(*) FROM webhook_deliveries WHERE state = %(pending)s) AS pending,
       (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
          FROM webhook_deliveries WHERE state = %(pending)s) AS oldest,
       (SELECT count(*) FROM webhook_deliveries WHERE state = %(failed)s
           AND last_attempt_at > now() - interval '{FAILED_WINDOW}') AS failed
"""


def read_webhook_vitals(pool: ConnectionPool) -> dict[str, float]:
    with bounded_read(pool) as conn:
        row = conn.execute(_DELIVERIES, {"pending": DeliveryState.PENDING,
                                         "failed": DeliveryState.FAILED}).fetchone()
    return {
        "dropgate_webhook_deliveries_pending": row["pending"],
        "dropgate_webhook_deliveries_oldest_pending_seconds": float(row["oldest"]),
        "dropgate_webhook_deliveries_failed_last_day": row["failed"],
    }


def webhooks_source(pool: Callable[[], ConnectionPool]) -> Source:
    """The pool is asked for at read time: scan builds it in its serving worker, after the fork."""
    return Source("webhooks", lambda: read_webhook_vitals(pool()))
