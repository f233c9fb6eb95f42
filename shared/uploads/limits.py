"""Per-user limits, enforced in PostgreSQL so that every stateless instance agrees.

- Request rate: a counter per user and clock minute, bumped with one atomic
  upsert; over the limit answers 429 with the seconds left in the minute.
- Open uploads and bytes per day: checked and reserved in the same transaction
  that inserts the new upload, under a per-user advisory lock, so two
  concurrent requests cannot both squeeze under the limit.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

import psycopg

from shared.platform.errors import TooManyRequests
from shared.platform.settings import LimitSettings

# Fraction of rate-limited requests that also delete windows older than an hour;
# keeps the table small without a separate job.
_CLEANUP_PROBABILITY = 0.01


# The counter's commit does not wait for the WAL flush (synchronous_commit off for this transaction
# only, set by the statement itself: no extra round trip). A crash can lose the last few counts of
# a minute, which only loosens a rate limit for that minute; waiting for an fsync on every
# authenticated request (each part URL Uppy asks for) was most of a request's time.
# Parameters: subject, window start. Also the first half of repository.load_counting_request.
RATE_COUNTER_SQL = (
    "INSERT INTO request_rate_windows AS w (subject, window_start, requests)"
    " SELECT %s, %s, 1 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS unflushed"
    " ON CONFLICT (subject, window_start) DO UPDATE SET requests = w.requests + 1"
    " RETURNING requests")


def rate_window(now: datetime) -> datetime:
    """The clock minute a request is counted in."""
    return now.replace(second=0, microsecond=0)


def count_request(conn: psycopg.Connection, subject: str, per_minute: int, now: datetime) -> None:
    row = conn.execute(RATE_COUNTER_SQL, (subject, rate_window(now))).fetchone()
    forget_old_windows(conn, now)
    check_request_count(row["requests"] if isinstance(row, dict) else row[0], per_minute, now)


def forget_old_windows(conn: psycopg.Connection, now: datetime) -> None:
    """Now and then (1 % of counted requests) delete windows older than an hour."""
    if random.random() < _CLEANUP_PROBABILITY:  # noqa: S311 - not security relevant
        conn.execute("DELETE FROM request_rate_windows WHERE window_start < %s", (now - timedelta(hours=1),))


def check_request_count(requests: int, per_minute: int, now: datetime) -> None:
    """429 when `requests` (this minute's count, this request included) is over the limit."""
    if requests > per_minute:
        window_start = rate_window(now)
        retry_after = max(1, math.ceil((window_start + timedelta(minutes=1) - now).total_seconds()))
        raise TooManyRequests(f"more than {per_minute} requests in a minute; slow down",
                              retry_after_seconds=retry_after)


def reserve_upload_quota(conn: psycopg.Connection, owner: str, size: int, limits: LimitSettings,
                         now: datetime) -> None:
    """Call inside the transaction that inserts the upload; raises 429 when over a quota."""
    # Serialises quota checks of one user (not of everyone) until the transaction ends.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"quota:{owner}",))
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'pending') AS open_uploads,"
        "       coalesce(sum(declared_size) FILTER (WHERE created_at > %s AND status <> 'aborted'), 0)"
        "         AS bytes_today,"
        "       min(created_at) FILTER (WHERE created_at > %s AND status <> 'aborted') AS oldest_today"
        "  FROM uploads WHERE owner = %s",
        (now - timedelta(days=1), now - timedelta(days=1), owner),
    ).fetchone()
    open_uploads, bytes_today, oldest = (row["open_uploads"], row["bytes_today"], row["oldest_today"]) \
        if isinstance(row, dict) else row
    if open_uploads >= limits.max_open_uploads_per_user:
        raise TooManyRequests(
            f"{open_uploads} uploads are still open (limit {limits.max_open_uploads_per_user}); "
            "complete or cancel one first", retry_after_seconds=60)
    if bytes_today + size > limits.max_bytes_per_user_per_day:
        # The quota frees up as the oldest upload of the last 24 hours ages out.
        retry_after = 3600 if oldest is None else max(
            60, math.ceil((oldest + timedelta(days=1) - now).total_seconds()))
        raise TooManyRequests(
            f"this upload would bring the last 24 hours to {bytes_today + size} bytes "
            f"(limit {limits.max_bytes_per_user_per_day})", retry_after_seconds=retry_after)
