"""What a webhook is: the public event types, an endpoint, a message, and its Standard Webhooks signature.

Standard Webhooks 1.0.0 (standard-webhooks/standard-webhooks spec/standard-webhooks.md) is followed
as written: the body is `{type, timestamp, data}` JSON; the headers are `webhook-id`,
`webhook-timestamp` (the attempt's, in Unix seconds) and `webhook-signature`, a space-delimited list
of `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per secret that signs: two during a
rotation's grace period ("zero downtime secret rotation"). Secrets are `whsec_` + base64 of 32
random bytes (the spec asks 24 to 64). Signing is the `standardwebhooks` library's own
`Webhook.sign`, so what receivers verify with is what signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from cloudevents.http import CloudEvent
from standardwebhooks import Webhook

from events.types import (
    EXPIRE_COMPLETED,
    METADATA_RECORDED,
    RECONCILE_COMPLETED,
    SCAN_CLEAN,
    SCAN_INFECTED,
    SCAN_REJECTED,
    SCAN_UNSCANNABLE,
    UPLOAD_ABANDONED,
    UPLOAD_EXPIRED,
    MetadataRecorded,
    PassCompleted,
    ScanVerdict,
    UploadEnded,
)
from events.wire import InvalidEvent, format_time

SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32
MESSAGE_PREFIX: Final = "msg_"
# A webhook_endpoints row as Endpoint reads it, in the table's column order (tests/test_migrations.py holds them together).
ENDPOINT_COLUMNS: Final = ("id, url, event_types, description, secret, previous_secret, previous_secret_expires_at, "
                           "created_by, created_at, updated_at, deleted_at, disabled_at, disabled_reason")

# dropgate's own events, the ones a subscriber outside the cluster may be told about. Storage events
# and pings are internal plumbing; their Triggers never reach the webhooks function.
_PARSERS: Final[Mapping[str, Callable[[CloudEvent], Any]]] = {
    SCAN_CLEAN: ScanVerdict.from_cloudevent, SCAN_INFECTED: ScanVerdict.from_cloudevent,
    SCAN_REJECTED: ScanVerdict.from_cloudevent, SCAN_UNSCANNABLE: ScanVerdict.from_cloudevent,
    UPLOAD_EXPIRED: UploadEnded.from_cloudevent, UPLOAD_ABANDONED: UploadEnded.from_cloudevent,
    METADATA_RECORDED: MetadataRecorded.from_cloudevent,
    EXPIRE_COMPLETED: PassCompleted.from_cloudevent, RECONCILE_COMPLETED: PassCompleted.from_cloudevent,
}
PUBLIC_EVENT_TYPES: Final = tuple(_PARSERS)


class DeliveryState(StrEnum):
    """A delivery's state; the members are the database values (webhook_deliveries.state)."""

    PENDING = "pending"  # not delivered yet; the sweep tries it at next_attempt_at
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # attempts spent, address refused, 410 Gone or endpoint disabled: only a replay sends it again


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def message_id(event_source: str, event_id: str) -> str:
    """The webhook-id: stable for one CloudEvent (source + id are unique together), and free of '.',
    which the spec forbids in what is signed as `{id}.{timestamp}.{body}` (a CloudEvent id may hold dots)."""
    return MESSAGE_PREFIX + hashlib.sha256(f"{event_source}\n{event_id}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class WebhookMessage:
    """One public CloudEvent as a webhook: its id, and the exact body every attempt sends and signs."""

    message_id: str
    event_id: str
    event_source: str
    event_type: str
    occurred_at: datetime
    payload: str

    @classmethod
    def from_cloudevent(cls, event: CloudEvent) -> WebhookMessage:
        """The message for a public event, read through its contract class (InvalidEvent otherwise: 400)."""
        attributes = event.get_attributes()
        parse = _PARSERS.get(attributes.get("type"))
        if parse is None:
            problem = f"type {attributes.get('type')!r} is not a public event; expected one of {', '.join(PUBLIC_EVENT_TYPES)}"
            raise InvalidEvent([problem], event_id=attributes.get("id"))
        typed = parse(event)
        body = {"type": typed.type, "timestamp": format_time(typed.time), "id": typed.id, "source": typed.source,
                "subject": attributes.get("subject"), "data": typed.data()}
        # Minified, and sent exactly as signed (the spec's warning about re-serialized JSON).
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
        return cls(message_id(typed.source, typed.id), typed.id, typed.source, typed.type, typed.time, payload)


@dataclass(frozen=True)
class Endpoint:
    """A webhook_endpoints row."""

    id: UUID
    url: str
    event_types: list[str]
    description: str | None
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    # Set on a 410 Gone (the spec: disable it, stop sending) or by an admin; only an admin clears it.
    disabled_at: datetime | None = None
    disabled_reason: str | None = None

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret, and the previous one while its grace period lasts."""
        keep_previous = self.previous_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now
        return [self.secret, self.previous_secret] if keep_previous else [self.secret]

    def public(self) -> dict[str, Any]:
        """What the admin API shows: never a secret (a secret is shown once, when it is made)."""
        return {"id": str(self.id), "url": self.url, "event_types": list(self.event_types) or list(PUBLIC_EVENT_TYPES),
                "all_event_types": not self.event_types, "description": self.description,
                "created_by": self.created_by, "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat(),
                "previous_secret_expires_at": _iso(self.previous_secret_expires_at),
                "enabled": self.enabled, "disabled_at": _iso(self.disabled_at), "disabled_reason": self.disabled_reason}


def signed_headers(message_id_: str, payload: str, secrets_: list[str], at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt at `at` (the attempt's time, not the event's)."""
    at = at.astimezone(UTC)  # Webhook.sign replaces the zone with UTC rather than converting to it
    signatures = " ".join(Webhook(secret).sign(message_id_, at, payload) for secret in secrets_)
    return {"webhook-id": message_id_, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signatures, "Content-Type": "application/json",
            "User-Agent": "dropgate-webhooks/1"}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
