"""The delivery log, and replays: what was sent where, and sending it again.

A replay selects events by id (the CloudEvent's id or the webhook-id) or by the time they happened,
and makes each of their deliveries pending again with a fresh attempt budget, for every endpoint
that wants the event (or one endpoint). The retry sweep then sends them, from the webhooks function,
under the same webhook-id as before, so a receiver that keeps ids drops what it already has (the
spec's idempotency key). Replays are audited. The operator CLI (`dropgate-dev webhooks`) is the
caller; docs/webhooks.md shows it.

A disabled endpoint (shared/webhooks/disabling.py) is never replayed to: it said it wants nothing more
(410 Gone) or an admin stopped it, so naming it is refused with its reason, and a replay to every
endpoint leaves it out and says so. An admin enables it first; then the same replay sends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row, tuple_row
from psycopg_pool import ConnectionPool

from shared.platform import audit
from shared.platform.audit import Actor
from shared.webhooks.model import ENDPOINT_COLUMNS, DeliveryState, Endpoint


class EndpointDisabled(ValueError):
    """A replay named a disabled endpoint: the message says since when, why, and how to enable it."""

    def __init__(self, endpoint: Endpoint):
        super().__init__(f"endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}): nothing is replayed to it"
                         f" until an admin enables it (PATCH /admin/webhooks/{endpoint.id} {{\"enabled\": true}})")
        self.endpoint = endpoint


@dataclass(frozen=True)
class DeliveryRecord:
    """One line of the delivery log: an event's delivery to one endpoint, as it stands."""

    endpoint_id: UUID
    url: str
    message_id: str
    event_id: str
    event_type: str
    occurred_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {name: str(value) if isinstance(value, UUID | datetime) else value
                for name, value in asdict(self).items()}


@dataclass(frozen=True)
class ReplaySelection:
    """Which events to send again: ids, or a time range [since, until) of when they happened."""

    event_ids: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    endpoint_id: UUID | None = None  # only this endpoint (it must still want the event)

    def __post_init__(self) -> None:
        if bool(self.event_ids) == (self.since is not None or self.until is not None):
            raise ValueError("replay either event ids or a time range (--since, --until), not both, not neither")
        if self.since and self.until and self.since >= self.until:
            raise ValueError("--since must be before --until")

    def describe(self) -> dict[str, Any]:
        return {"event_ids": list(self.event_ids), "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None,
                "endpoint_id": str(self.endpoint_id) if self.endpoint_id else None}


_WANTS = "(cardinality(e.event_types) = 0 OR m.event_type = ANY(e.event_types))"  # e: an endpoint, m: an event
_LOG_QUERY = (
    "SELECT d.endpoint_id, e.url, d.message_id, m.event_id, m.event_type, m.occurred_at, d.state, d.attempts,"
    " d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error, d.delivered_at"
    " FROM webhook_deliveries d JOIN webhook_events m USING (message_id)"
    " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
    " WHERE (%(event)s::text IS NULL OR m.event_id = %(event)s OR m.message_id = %(event)s)"
    " AND (%(endpoint)s::uuid IS NULL OR d.endpoint_id = %(endpoint)s)"
    " AND (%(state)s::text IS NULL OR d.state = %(state)s)"
    " ORDER BY m.occurred_at DESC, d.endpoint_id LIMIT %(limit)s")


@dataclass(frozen=True)
class Replayed:
    """What a replay requeued, and the disabled endpoints that wanted the events but were left out."""

    records: list[DeliveryRecord]
    skipped_disabled: list[UUID]


def endpoints(pool: ConnectionPool, endpoint_id: UUID | None = None) -> list[Endpoint]:
    """The registered endpoints (not deleted), enabled or not: what the operator's listing shows."""
    with pool.connection() as conn:
        return conn.cursor(row_factory=class_row(Endpoint)).execute(
            f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL"
            " AND (%s::uuid IS NULL OR id = %s) ORDER BY created_at", (endpoint_id, endpoint_id)).fetchall()


def delivery_log(pool: ConnectionPool, *, event_id: str | None = None, endpoint_id: UUID | None = None,
                 state: DeliveryState | None = None, limit: int = 100) -> list[DeliveryRecord]:
    with pool.connection() as conn:
        return conn.cursor(row_factory=class_row(DeliveryRecord)).execute(
            _LOG_QUERY, {"event": event_id, "endpoint": endpoint_id, "state": state, "limit": limit}).fetchall()


def replay(pool: ConnectionPool, selection: ReplaySelection, actor: Actor) -> Replayed:
    """Make the selected deliveries pending and due now (the sweep sends them); audited. The deliveries, as now.

    EndpointDisabled if the selection names a disabled endpoint."""
    with pool.connection() as conn, conn.transaction():
        _refuse_disabled(conn, selection.endpoint_id)
        messages = [row[0] for row in conn.cursor(row_factory=tuple_row).execute(
            "SELECT message_id FROM webhook_events WHERE (event_id = ANY(%(ids)s) OR message_id = ANY(%(ids)s))"
            " OR ((%(since)s::timestamptz IS NOT NULL OR %(until)s::timestamptz IS NOT NULL)"
            " AND occurred_at >= coalesce(%(since)s, '-infinity') AND occurred_at < coalesce(%(until)s, 'infinity'))",
            {"ids": list(selection.event_ids), "since": selection.since, "until": selection.until}).fetchall()]
        requeued = conn.cursor(row_factory=tuple_row).execute(
            "INSERT INTO webhook_deliveries (endpoint_id, message_id, state, attempts, next_attempt_at)"
            " SELECT e.id, m.message_id, %(pending)s, 0, now() FROM webhook_events m JOIN webhook_endpoints e"
            f" ON e.deleted_at IS NULL AND e.disabled_at IS NULL AND {_WANTS}"
            " WHERE m.message_id = ANY(%(messages)s) AND (%(endpoint)s::uuid IS NULL OR e.id = %(endpoint)s)"
            " ON CONFLICT (endpoint_id, message_id) DO UPDATE SET state = %(pending)s, attempts = 0,"
            " next_attempt_at = now(), last_error = NULL RETURNING endpoint_id, message_id",
            {"pending": DeliveryState.PENDING, "messages": messages, "endpoint": selection.endpoint_id}).fetchall()
        skipped = [row[0] for row in conn.cursor(row_factory=tuple_row).execute(
            "SELECT DISTINCT e.id FROM webhook_events m JOIN webhook_endpoints e"
            f" ON e.deleted_at IS NULL AND e.disabled_at IS NOT NULL AND {_WANTS}"
            " WHERE m.message_id = ANY(%(messages)s) AND %(endpoint)s::uuid IS NULL",
            {"messages": messages, "endpoint": selection.endpoint_id}).fetchall()]
        audit.record(conn, actor, "webhook.replayed", None, **selection.describe(), events=len(messages),
                     deliveries=len(requeued), skipped_disabled=[str(e) for e in skipped])
    records = []
    for message in dict.fromkeys(message for _, message in requeued):
        records += delivery_log(pool, event_id=message, endpoint_id=selection.endpoint_id, limit=1000)
    return Replayed(records, skipped)


def _refuse_disabled(conn: psycopg.Connection, endpoint_id: UUID | None) -> None:
    if endpoint_id is None:
        return
    named = conn.cursor(row_factory=class_row(Endpoint)).execute(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = %s AND deleted_at IS NULL",
        (endpoint_id,)).fetchone()
    if named is not None and not named.enabled:
        raise EndpointDisabled(named)
