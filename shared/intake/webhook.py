"""The storage webhook: authenticate, adapt, forward to the sink, answer with counts.

Status codes, which decide whether storage redelivers:
    200  {"accepted": n, "ignored": m}: every event reached the sink (or there was nothing to send)
    400  the body is not a notification (every problem named); redelivery would not help
    401  missing or wrong bearer token
    413  body over MAX_NOTIFICATION_BYTES
    502  the sink answered, but not with 2xx          } storage retries; events already sent
    503  the sink is down, K_SINK or the token unset  } are resent with the same ids
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import flask

from events.backends import PARSERS
from events.notifications import Adapted, MalformedNotification, OwnedBuckets
from events.types import StorageObjectEvent
from shared.platform import tracing
from shared.platform.bearer import bearer_token, holds_secret
from shared.platform.delivery import EventSink
from shared.platform.errors import (
    BadRequest,
    DependencyUnavailable,
    PayloadTooLarge,
    Unauthorized,
)
from shared.platform.http import json_response
from shared.platform.logs import context, log_event
from shared.platform.settings import MIB, EventSettings

logger = logging.getLogger("dropgate.events.webhook")

# A SeaweedFS update carries the old and the new entry with every chunk and the multipart part
# list; 16 MiB leaves room for objects of thousands of parts. MinIO bodies are a few KiB.
MAX_NOTIFICATION_BYTES: Final = 16 * MIB

Adapter = Callable[[bytes], Adapted]


def require_bearer_token(authorization: str | None, expected: str | None) -> None:
    """401 unless `Authorization: Bearer <expected>`; compared in constant time."""
    if not expected:
        raise DependencyUnavailable("DROPGATE_WEBHOOK_TOKEN is not set: notifications are refused until it is",
                                    headers={"Retry-After": "60"})
    if bearer_token(authorization) is None:
        raise Unauthorized("a bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="dropgate"'})
    if not holds_secret(authorization, expected):
        raise Unauthorized("wrong bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def read_body(request: flask.Request, max_bytes: int = MAX_NOTIFICATION_BYTES) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"notification body is larger than {max_bytes} bytes")
    body = request.stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"notification body is larger than {max_bytes} bytes")
    return body


class StorageWebhook:
    """The notification endpoints of one storage_events instance: one per backend in `events.backends`."""

    def __init__(self, settings: EventSettings, sink: EventSink):
        self._settings = settings
        self._sink = sink
        self._owned = OwnedBuckets.of(settings.owned_buckets)
        if not settings.webhook_token:
            log_event(logger, "DROPGATE_WEBHOOK_TOKEN is not set: every notification will be refused with 503",
                      logging.ERROR)
        if not settings.sink_url:
            log_event(logger, "K_SINK is not set: every notification will be refused with 503", logging.ERROR)

    @staticmethod
    def backends() -> list[str]:
        return sorted(PARSERS)

    def receiver(self, storage: str) -> Callable[[flask.Request], flask.Response]:
        """The handler of `POST /<storage>`."""
        parse = PARSERS[storage]

        def receive(request: flask.Request) -> flask.Response:
            received_at = datetime.now(UTC)
            return self._receive(request, storage, lambda body: parse(body, self._owned, received_at))
        return receive

    def _receive(self, request: flask.Request, storage: str, adapt: Adapter) -> flask.Response:
        require_bearer_token(request.headers.get("Authorization"), self._settings.webhook_token)
        body = read_body(request)
        try:
            adapted = adapt(body)
        except MalformedNotification as exc:
            log_event(logger, "malformed notification", logging.WARNING, storage=storage, problems=exc.problems,
                      bytes=len(body))
            raise BadRequest(str(exc)) from None
        for event in adapted.events:
            self._forward(event)
        log_event(logger, "notification forwarded", storage=storage,
                  accepted=[{"id": e.id, "type": e.type, "bucket": e.bucket, "key": e.key} for e in adapted.events],
                  ignored=[{"what": i.what, "reason": i.reason} for i in adapted.ignored])
        return json_response(200, {"accepted": len(adapted.events), "ignored": len(adapted.ignored)})

    def _forward(self, event: StorageObjectEvent) -> None:
        """Send one event in a span of the upload's trace (the object's traceparent), carried by the event.

        Sending stops at the first failure (raised): storage's retry resends the rest, ids unchanged.
        """
        with tracing.span(f"{event.type} publish", parent=event.traceparent,
                          attributes={"cloudevents.event_id": event.id, "cloudevents.event_type": event.type}), \
                context(event_id=event.id, event_type=event.type):
            self._sink.send(tracing.with_traceparent(event.to_cloudevent()))
            log_event(logger, "storage event forwarded", outcome="forwarded", bucket=event.bucket, key=event.key,
                      continues_upload_trace=event.traceparent is not None)
