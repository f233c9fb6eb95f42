"""Disabling a webhook endpoint, and enabling it again: on a receiver's 410 Gone, or by an admin.

Standard Webhooks 1.0.0, "Operational considerations" > "Delivery success and failure"
(standard-webhooks/standard-webhooks, spec/standard-webhooks.md): "`410 Gone`: This is an indication by
the server that it's no longer interested in receiving webhooks from this source. Sender should disable
the webhook endpoint, and stop sending it messages." So a 410 ends more than the one delivery: the
endpoint is disabled (migration 0010), and only an admin enables it again (PATCH /admin/webhooks/{id}).

A disabled endpoint gets no new deliveries (the fan-out selects enabled endpoints only), and what was
still pending for it fails at once, saying why, instead of waiting for a sweep that would never send it:
`failed` is what a replay picks up once the endpoint is enabled again. Every change is written in the
caller's transaction, with its audit_log entry, so the state and its record commit together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID

import psycopg

from events.wire import format_time
from shared.platform import audit
from shared.platform.audit import Actor
from shared.webhooks.model import DeliveryState, Endpoint

# The webhooks function itself, named as the other functions name themselves in the audit log.
SYSTEM_ACTOR: Final = Actor.system("webhooks")
DISABLED: Final = "webhook.endpoint_disabled"
ENABLED: Final = "webhook.endpoint_enabled"
# A failed delivery's last_error is this prefix, the endpoint's disabled_reason, this suffix (also spelled in SQL below).
_ERROR_PREFIX: Final = "endpoint disabled: "
_ERROR_SUFFIX: Final = "; enable it, then replay"


def gone_reason(message_id: str, at: datetime) -> str:
    return f"answered 410 Gone to {message_id} at {format_time(at)}"


def manual_reason(actor: Actor, at: datetime) -> str:
    return f"disabled by {actor.name} at {format_time(at)}"


def disabled_error(reason: str) -> str:
    """A delivery's last_error when its endpoint is disabled: why, and what brings it back."""
    return f"{_ERROR_PREFIX}{reason}{_ERROR_SUFFIX}"


def disable(conn: psycopg.Connection, endpoint_id: UUID, reason: str, actor: Actor, at: datetime,
            **detail: Any) -> bool:
    """Disable an enabled endpoint and fail its pending deliveries; audited. False if it was disabled or deleted."""
    changed = conn.execute(
        "UPDATE webhook_endpoints SET disabled_at = %s, disabled_reason = %s, updated_at = now()"
        " WHERE id = %s AND disabled_at IS NULL AND deleted_at IS NULL RETURNING id",
        (at, reason, endpoint_id)).fetchone()
    if changed is None:
        return False  # a second 410 racing the first, or an admin's disable: the first reason stands
    failed = conn.execute(
        "UPDATE webhook_deliveries SET state = %s, next_attempt_at = NULL, last_error = %s"
        " WHERE endpoint_id = %s AND state = %s",
        (DeliveryState.FAILED, disabled_error(reason), endpoint_id, DeliveryState.PENDING)).rowcount
    audit.record(conn, actor, DISABLED, None, endpoint_id=str(endpoint_id), reason=reason,
                 pending_failed=failed, **detail)
    return True


def enable(conn: psycopg.Connection, endpoint: Endpoint, actor: Actor) -> bool:
    """Enable a disabled endpoint; audited with the reason it had. What failed meanwhile waits for a replay."""
    if endpoint.enabled:
        return False
    conn.execute("UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL, updated_at = now()"
                 " WHERE id = %s", (endpoint.id,))
    audit.record(conn, actor, ENABLED, None, endpoint_id=str(endpoint.id), disabled_reason=endpoint.disabled_reason,
                 disabled_at=endpoint.disabled_at.isoformat() if endpoint.disabled_at else None)
    return True


def fail_pending_of_disabled(conn: psycopg.Connection) -> int:
    """The sweep's guard: a delivery made pending for a disabled endpoint after `disable` ran (a fan-out that
    read the endpoint just before, a replay racing it) is failed here, never sent. How many."""
    return conn.execute(
        "UPDATE webhook_deliveries d SET state = %s, next_attempt_at = NULL,"
        " last_error = %s || e.disabled_reason || %s FROM webhook_endpoints e"
        " WHERE e.id = d.endpoint_id AND e.disabled_at IS NOT NULL AND d.state = %s",
        (DeliveryState.FAILED, _ERROR_PREFIX, _ERROR_SUFFIX, DeliveryState.PENDING)).rowcount
