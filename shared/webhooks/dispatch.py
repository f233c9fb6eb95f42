"""Delivering webhooks: an event's fan-out to its endpoints, each attempt, and the retry sweep.

A receiver can be down for hours, far longer than Knative's delivery retries last, so dropgate keeps
its own: every (endpoint, event) is a webhook_deliveries row with its attempt count and
next_attempt_at. An event is tried at once when it arrives (`fan_out`); what fails waits for the
retry sweep (`sweep`, woken every minute by the dropgate-webhooks-retry PingSource), which tries the
due ones again on Standard Webhooks' example schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h,
20 h, 24 h; DROPGATE_WEBHOOK_RETRY_SCHEDULE), with ±10 % jitter as the spec recommends, and longer
when the receiver's Retry-After asks. After the last attempt a delivery is `failed`: only a replay
(`shared/webhooks/log.py`) sends it again.

Rows are claimed by moving next_attempt_at past the attempt's own time limit (a lease) in a short
transaction, never held locked over an HTTP call: two sweeps, or a sweep and a fan-out, never send
the same delivery at once, and a process that dies mid-attempt leaves the row due again when the
lease ends.

A 410 Gone disables the endpoint (shared/webhooks/disabling.py, the spec's advice): the fan-out then
leaves it out, and the sweep fails what is still pending for it instead of sending it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import class_row, tuple_row
from psycopg_pool import ConnectionPool

from shared.platform import egress
from shared.platform.egress import EgressPolicy, EgressRefused
from shared.platform.logs import log_event
from shared.platform.settings_webhooks import WebhookSettings
from shared.webhooks import disabling
from shared.webhooks.model import (
    ENDPOINT_COLUMNS,
    DeliveryState,
    Endpoint,
    WebhookMessage,
    signed_headers,
)

logger = logging.getLogger("dropgate.webhooks")

MAX_RETRY_AFTER = timedelta(hours=24)
GONE = 410  # "no longer interested": the spec says disable the endpoint and stop sending (disabling.py)
_MESSAGE_COLUMNS = "message_id, event_id, event_source, event_type, occurred_at, payload"


@dataclass(frozen=True)
class Attempt:
    """One POST and what came of it."""

    status: int | None  # the receiver's HTTP status; None when there was no answer
    error: str | None  # None when delivered
    retry_after: str | None = None
    final: bool = False  # no retry can help (refused address, 410 Gone)
    started_at: datetime | None = None  # when it was signed and sent: the webhook-timestamp
    duration_ms: int = 0

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Job:
    endpoint: Endpoint
    message: WebhookMessage
    attempts: int  # made before this one


@dataclass
class DispatchSummary:
    """What one fan-out or sweep did (logged; the numbers of docs/webhooks.md)."""

    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    left_for_sweep: int = 0
    disabled_endpoint: int = 0  # not sent: its endpoint is disabled (failed, for a replay once enabled)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: DispatchSummary) -> None:
        for name, value in other.as_dict().items():
            setattr(self, name, getattr(self, name) + value)


class Dispatcher:
    def __init__(self, pool: ConnectionPool, settings: WebhookSettings):
        self._pool = pool
        self._settings = settings
        self.policy = EgressPolicy.from_settings(settings)
        # A claimed row is not due again before its attempt has certainly ended (connect + read + margin).
        self._lease = timedelta(seconds=3 * settings.timeout_seconds + 30)

    # -- the two ways in --

    def fan_out(self, message: WebhookMessage) -> DispatchSummary:
        """Record the event once, a delivery per endpoint that wants it, and try each now."""
        lease_until = datetime.now(UTC) + self._lease
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(f"INSERT INTO webhook_events ({_MESSAGE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
                         " ON CONFLICT (message_id) DO NOTHING",
                         (message.message_id, message.event_id, message.event_source, message.event_type,
                          message.occurred_at, message.payload))
            endpoints = conn.cursor(row_factory=class_row(Endpoint)).execute(
                f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL AND disabled_at IS NULL"
                " AND (cardinality(event_types) = 0 OR %s = ANY(event_types))", (message.event_type,)).fetchall()
            # A redelivered event (Knative retried, or a duplicate) finds its rows there already: the sweep owns them.
            claimed = {row[0] for row in conn.cursor(row_factory=tuple_row).execute(
                "INSERT INTO webhook_deliveries (endpoint_id, message_id, state, next_attempt_at)"
                " SELECT unnest(%s::uuid[]), %s, %s, %s ON CONFLICT DO NOTHING RETURNING endpoint_id",
                ([e.id for e in endpoints], message.message_id, DeliveryState.PENDING, lease_until)).fetchall()}
        return self._run([Job(e, message, 0) for e in endpoints if e.id in claimed])

    def sweep(self) -> DispatchSummary:
        """Try the deliveries that are due, batch by batch, until none is due or the time budget is spent."""
        summary = DispatchSummary()
        deadline = time.monotonic() + self._settings.time_budget_seconds
        while time.monotonic() < deadline:
            jobs = self._claim_due()
            if not jobs:
                break
            summary.add(self._run(jobs, deadline=deadline))
        return summary

    # -- claiming and running --

    def _claim_due(self) -> list[Job]:
        lease_until = datetime.now(UTC) + self._lease
        with self._pool.connection() as conn, conn.transaction():
            # First, so nothing claimed below belongs to a disabled endpoint.
            if failed := disabling.fail_pending_of_disabled(conn):
                log_event(logger, "webhook deliveries of disabled endpoints failed", logging.WARNING, failed=failed)
            claimed = conn.cursor(row_factory=tuple_row).execute(
                "UPDATE webhook_deliveries d SET next_attempt_at = %s FROM ("
                "  SELECT endpoint_id, message_id FROM webhook_deliveries"
                "  WHERE state = %s AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT %s"
                "  FOR UPDATE SKIP LOCKED) due"
                " WHERE d.endpoint_id = due.endpoint_id AND d.message_id = due.message_id"
                " RETURNING d.endpoint_id, d.message_id, d.attempts",
                (lease_until, DeliveryState.PENDING, self._settings.sweep_batch)).fetchall()
            if not claimed:
                return []
            endpoints = {e.id: e for e in conn.cursor(row_factory=class_row(Endpoint)).execute(
                f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ANY(%s)",
                ([row[0] for row in claimed],)).fetchall()}
            messages = {m.message_id: m for m in conn.cursor(row_factory=class_row(WebhookMessage)).execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM webhook_events WHERE message_id = ANY(%s)",
                ([row[1] for row in claimed],)).fetchall()}
        return [Job(endpoints[endpoint_id], messages[message], attempts) for endpoint_id, message, attempts in claimed]

    def _run(self, jobs: list[Job], *, deadline: float | None = None) -> DispatchSummary:
        summary = DispatchSummary()
        deadline = deadline or time.monotonic() + self._settings.time_budget_seconds
        gone = set()  # endpoints that answered 410 in this batch: disabled, and their other jobs failed with them
        for index, job in enumerate(jobs):
            if time.monotonic() >= deadline:
                # Handed back to the sweep now rather than when the lease ends.
                self._release(jobs[index:])
                summary.left_for_sweep += len(jobs) - index
                break
            if job.endpoint.id in gone:
                summary.disabled_endpoint += 1
                continue
            attempt = self.attempt(job.endpoint, job.message)
            if attempt.status == GONE:
                gone.add(job.endpoint.id)
            state = self._record(job, attempt)
            summary.attempted += 1
            summary.delivered += state is DeliveryState.DELIVERED
            summary.failed += state is DeliveryState.FAILED
            summary.retrying += state is DeliveryState.PENDING
        return summary

    def attempt(self, endpoint: Endpoint, message: WebhookMessage) -> Attempt:
        """One signed POST, timed. Never raises for the receiver's sake: every failure is an Attempt."""
        now, started = datetime.now(UTC), time.monotonic()
        outcome = self._post(endpoint, message, now)
        return replace(outcome, started_at=now, duration_ms=int((time.monotonic() - started) * 1000))

    def _post(self, endpoint: Endpoint, message: WebhookMessage, now: datetime) -> Attempt:
        headers = signed_headers(message.message_id, message.payload, endpoint.signing_secrets(now), now)
        try:
            answer = egress.post(self.policy, endpoint.url, message.payload.encode(), headers,
                                 timeout=self._settings.timeout_seconds,
                                 max_response_bytes=self._settings.max_response_bytes)
        except EgressRefused as exc:  # checked again at every delivery: DNS may say something else now
            return Attempt(None, f"refused: {exc.reason}", final=True)
        except OSError as exc:  # refused connection, timeout, TLS failure, malformed answer
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= answer.status < 300:
            return Attempt(answer.status, None)
        # 3xx too: a redirect is not followed (the spec: update the URL instead).
        return Attempt(answer.status, f"answered {answer.status}", answer.retry_after, final=answer.status == GONE)

    def _record(self, job: Job, attempt: Attempt) -> DeliveryState:
        number = job.attempts + 1
        now = attempt.started_at or datetime.now(UTC)
        if attempt.delivered:
            state, next_at = DeliveryState.DELIVERED, None
        elif attempt.final or number >= self._settings.max_attempts:
            state, next_at = DeliveryState.FAILED, None
        else:
            # Counted from the answer (or the timeout), not from when the attempt began.
            state, next_at = DeliveryState.PENDING, datetime.now(UTC) + self._delay(number, attempt.retry_after)
        with self._pool.connection() as conn, conn.transaction():
            self._write(conn, job, attempt, state, number, next_at, now)
            reason = disabling.gone_reason(job.message.message_id, now)
            # In the transaction that records the 410, so the attempt is never recorded without its consequence.
            disabled = attempt.status == GONE and disabling.disable(
                conn, job.endpoint.id, reason, disabling.SYSTEM_ACTOR, now,
                webhook_id=job.message.message_id, event_id=job.message.event_id, status=GONE)
        log_event(logger, "webhook attempt", logging.INFO if attempt.delivered else logging.WARNING,
                  endpoint_id=str(job.endpoint.id), webhook_id=job.message.message_id, event_id=job.message.event_id,
                  event_type=job.message.event_type, attempt=number, status=attempt.status, error=attempt.error,
                  outcome=str(state), next_attempt_at=next_at.isoformat() if next_at else None)
        if disabled:
            log_event(logger, "webhook endpoint disabled", logging.WARNING, endpoint_id=str(job.endpoint.id),
                      url=job.endpoint.url, reason=reason)
        return state

    @staticmethod
    def _write(conn: psycopg.Connection, job: Job, attempt: Attempt, state: DeliveryState, number: int,
               next_at: datetime | None, now: datetime) -> None:
        conn.execute(
            "UPDATE webhook_deliveries SET state = %s, attempts = %s, next_attempt_at = %s, last_attempt_at = %s,"
            " last_status = %s, last_error = %s, delivered_at = CASE WHEN %s THEN %s ELSE delivered_at END"
            " WHERE endpoint_id = %s AND message_id = %s",
            (state, number, next_at, now, attempt.status, attempt.error, attempt.delivered, now,
             job.endpoint.id, job.message.message_id))
        conn.execute("INSERT INTO webhook_attempts (endpoint_id, message_id, attempt, at, status, error,"
                     " duration_ms) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                     (job.endpoint.id, job.message.message_id, number, now, attempt.status, attempt.error,
                      attempt.duration_ms))

    def _delay(self, attempts: int, retry_after: str | None) -> timedelta:
        base = self._settings.retry_delays_seconds[attempts - 1] * random.uniform(0.9, 1.1)
        asked = int(retry_after) if retry_after and retry_after.strip().isdigit() else 0
        return min(max(timedelta(seconds=base), timedelta(seconds=asked)), max(MAX_RETRY_AFTER, timedelta(seconds=base)))

    def _release(self, jobs: list[Job]) -> None:
        # executemany: psycopg pipelines the statements, one round trip rather than one per job.
        with self._pool.connection() as conn:
            conn.cursor().executemany(
                "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE endpoint_id = %s"
                " AND message_id = %s AND state = %s",
                [(job.endpoint.id, job.message.message_id, DeliveryState.PENDING) for job in jobs])
