"""The endpoint registry behind presign's admin API: create, list, update, disable or enable, rotate the secret, delete.

Every change is written in one transaction with its audit_log entry (shared/platform/audit.py), and
no secret ever reaches the audit log or a listing: a secret is shown once, in the answer that made it.
URLs pass the egress policy (shared/platform/egress.py) when registered; deliveries check them again.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from shared.platform import audit
from shared.platform.audit import Actor
from shared.platform.egress import EgressPolicy, EgressRefused
from shared.platform.errors import ApiError, BadRequest, NotFound
from shared.webhooks import disabling
from shared.webhooks.model import (
    ENDPOINT_COLUMNS,
    PUBLIC_EVENT_TYPES,
    DeliveryState,
    Endpoint,
    new_secret,
)

MAX_DESCRIPTION = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EndpointRefused(ApiError):
    """The URL is well-formed but may not be called from here (scheme, address): 422 with the reason."""

    status, error = 422, "endpoint_refused"


@dataclass(frozen=True)
class EndpointChange:
    """A create or update request's fields, checked; None means "not given"."""

    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None  # updates only: an endpoint is registered enabled

    @property
    def edits_fields(self) -> bool:
        return any(value is not None for value in (self.url, self.event_types, self.description))

    @classmethod
    def from_json(cls, body: dict[str, Any], *, creating: bool) -> EndpointChange:
        problems = []
        unknown = sorted(set(body) - {"url", "event_types", "description", *(() if creating else ("enabled",))})
        if unknown:
            problems.append(f"unknown fields: {', '.join(unknown)}")
        url = body.get("url")
        if creating and url is None:
            problems.append("url: required")
        elif url is not None and not isinstance(url, str):
            problems.append("url: a string")
        types = body.get("event_types")
        if types is not None and (not isinstance(types, list) or not all(isinstance(t, str) for t in types)):
            problems.append("event_types: a list of event types (empty or absent: every public type)")
        elif types is not None and (bad := sorted(set(types) - set(PUBLIC_EVENT_TYPES))):
            problems.append(f"event_types: {', '.join(bad)} not public; expected any of {', '.join(PUBLIC_EVENT_TYPES)}")
        description = body.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION):
            problems.append(f"description: a string of at most {MAX_DESCRIPTION} characters")
        # PostgreSQL refuses NUL in text, and a control character has no business in a URL or a label.
        if any(isinstance(v, str) and _CONTROL.search(v) for v in (url, description)):
            problems.append("url and description may not hold control characters")
        enabled = body.get("enabled")
        if "enabled" in body and not creating and not isinstance(enabled, bool):  # 1, "yes", null: ambiguous
            problems.append("enabled: true or false")
        if not creating and not body:
            problems.append("nothing to change: give url, event_types, description or enabled")
        if problems:
            raise BadRequest("; ".join(problems))
        return cls(url, sorted(set(types)) if types is not None else None, description, enabled)


class EndpointRegistry:
    def __init__(self, pool: ConnectionPool, policy: EgressPolicy, *, rotation_grace: timedelta):
        self._pool = pool
        self._policy = policy
        self._grace = rotation_grace

    def _checked_url(self, url: str) -> str:
        try:
            self._policy.check(url)
        except EgressRefused as exc:
            raise EndpointRefused(f"url refused: {exc.reason}") from None
        return url

    def create(self, change: EndpointChange, actor: Actor) -> tuple[Endpoint, str]:
        url = self._checked_url(change.url or "")
        secret = new_secret()
        with self._pool.connection() as conn, conn.transaction():
            endpoint = conn.cursor(row_factory=class_row(Endpoint)).execute(
                f"INSERT INTO webhook_endpoints (id, url, event_types, description, secret, created_by)"
                f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {ENDPOINT_COLUMNS}",
                (uuid.uuid4(), url, change.event_types or [], change.description, secret, actor.name)).fetchone()
            audit.record(conn, actor, "webhook.endpoint_created", None, endpoint_id=str(endpoint.id), url=url,
                         event_types=endpoint.event_types)
        return endpoint, secret

    def listed(self, limit: int = 500) -> list[Endpoint]:
        with self._pool.connection() as conn:
            return conn.cursor(row_factory=class_row(Endpoint)).execute(
                f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL"
                " ORDER BY created_at LIMIT %s", (limit,)).fetchall()

    def get(self, endpoint_id: str) -> Endpoint:
        with self._pool.connection() as conn:
            return _locked(conn, endpoint_id, lock=False)

    def update(self, endpoint_id: str, change: EndpointChange, actor: Actor) -> Endpoint:
        """Fields and the enabled state in one transaction; each audited as what it is (updated, disabled, enabled)."""
        url = self._checked_url(change.url) if change.url is not None else None
        with self._pool.connection() as conn, conn.transaction():
            before = _locked(conn, endpoint_id)
            if change.edits_fields:
                _update_fields(conn, before, replace(change, url=url), actor)
            if change.enabled is True:
                disabling.enable(conn, before, actor)
            elif change.enabled is False:  # kept as the first reason when already disabled (a 410's, say)
                now = datetime.now(UTC)
                disabling.disable(conn, before.id, disabling.manual_reason(actor, now), actor, now)
            return _locked(conn, endpoint_id, lock=False)

    def rotate_secret(self, endpoint_id: str, actor: Actor) -> tuple[Endpoint, str]:
        """A new secret signs from now on; the old one signs too until the grace period ends."""
        secret = new_secret()
        with self._pool.connection() as conn, conn.transaction():
            before = _locked(conn, endpoint_id)
            until = datetime.now(UTC) + self._grace
            endpoint = conn.cursor(row_factory=class_row(Endpoint)).execute(
                "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_expires_at = %s, secret = %s,"
                f" updated_at = now() WHERE id = %s RETURNING {ENDPOINT_COLUMNS}",
                (until, secret, before.id)).fetchone()
            audit.record(conn, actor, "webhook.secret_rotated", None, endpoint_id=str(endpoint.id),
                         previous_secret_valid_until=until.isoformat())
        return endpoint, secret

    def delete(self, endpoint_id: str, actor: Actor) -> Endpoint:
        """Nothing more is sent to it; its row stays, so the delivery log still names it."""
        with self._pool.connection() as conn, conn.transaction():
            before = _locked(conn, endpoint_id)
            conn.execute("UPDATE webhook_endpoints SET deleted_at = now(), updated_at = now() WHERE id = %s",
                         (before.id,))
            # What was still waiting would only fail later: it is failed now, and says why.
            conn.execute("UPDATE webhook_deliveries SET state = %s, next_attempt_at = NULL,"
                         " last_error = 'endpoint deleted' WHERE endpoint_id = %s AND state = %s",
                         (DeliveryState.FAILED, before.id, DeliveryState.PENDING))
            audit.record(conn, actor, "webhook.endpoint_deleted", None, endpoint_id=str(before.id), url=before.url)
        return before


def _update_fields(conn: psycopg.Connection, before: Endpoint, change: EndpointChange, actor: Actor) -> None:
    endpoint = conn.cursor(row_factory=class_row(Endpoint)).execute(
        "UPDATE webhook_endpoints SET url = coalesce(%s, url), event_types = coalesce(%s, event_types),"
        f" description = coalesce(%s, description), updated_at = now() WHERE id = %s"
        f" RETURNING {ENDPOINT_COLUMNS}", (change.url, change.event_types, change.description, before.id)).fetchone()
    changed = {name: {"from": getattr(before, name), "to": getattr(endpoint, name)}
               for name in ("url", "event_types", "description") if getattr(before, name) != getattr(endpoint, name)}
    audit.record(conn, actor, "webhook.endpoint_updated", None, endpoint_id=str(endpoint.id), changes=changed)


def _locked(conn: psycopg.Connection, endpoint_id: str, *, lock: bool = True) -> Endpoint:
    try:
        parsed = uuid.UUID(endpoint_id)
    except ValueError:
        raise NotFound(f"no webhook endpoint {endpoint_id}") from None
    found = conn.cursor(row_factory=class_row(Endpoint)).execute(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = %s AND deleted_at IS NULL"
        + (" FOR UPDATE" if lock else ""), (parsed,)).fetchone()
    if found is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return found
