"""Posting CloudEvents to the sink (K_SINK) in binary content mode.

Knative's SinkBinding injects K_SINK (the Broker's ingress); locally it is the
local broker. Every emitter (storage_events, expire) sends through here, so a
sink that is missing, down or refusing answers the caller with 503/502 and the
caller's sender retries: storage redelivers its notification, the broker its
event. Nothing is lost, and the stable event ids let consumers drop the
duplicates a retry causes.

Every event leaves with the CloudEvents distributed-tracing extension `traceparent`: the
one it already has (the storage adapter sets the upload's), else the sender's current
span. The HTTP `traceparent` header names the sender's span, for transport tracing.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Final

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from shared.platform import metrics, tracing
from shared.platform.bearer import bearer_from_file
from shared.platform.errors import ApiError, DependencyUnavailable
from shared.platform.logs import log_event
from shared.platform.settings import EventSettings

logger = logging.getLogger("dropgate.events.emit")

DEFAULT_TIMEOUT_SECONDS: Final = 10.0
# CloudEvents HTTP binding 1.0.2, section 3.1.3.2: in a ce- header value, space, '"', '%' and
# everything outside printable ASCII is percent-encoded (UTF-8). Python's 1.x SDK leaves it to us.
_UNRESERVED: Final = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "%"}


class SinkNotConfigured(DependencyUnavailable):
    """K_SINK is not set: there is nowhere to send events to (a deployment without its SinkBinding)."""


class SinkUnavailable(DependencyUnavailable):
    """The sink could not be reached or did not answer in time."""


class SinkRejected(ApiError):
    """The sink answered, but not with 2xx."""

    status, error = 502, "bad_gateway"


def encode_header_value(value: str) -> str:
    return "".join(ch if ch in _UNRESERVED else "".join(f"%{b:02X}" for b in ch.encode()) for ch in value)


def to_http(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary content mode: attributes as ce- headers (percent-encoded), data as the body."""
    headers, body = to_binary(event)
    return {name: encode_header_value(value) if name.lower().startswith("ce-") else value
            for name, value in headers.items()}, body


class EventSink:
    """Where an instance sends its CloudEvents; one per function instance."""

    def __init__(self, url: str | None, *, timeout: float = DEFAULT_TIMEOUT_SECONDS, token_file: str | None = None):
        self.url = url
        self.timeout = timeout
        self._token_file = token_file

    @classmethod
    def from_settings(cls, events: EventSettings, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> EventSink:
        """K_SINK, with the token the sink requires (DROPGATE_SINK_TOKEN_FILE)."""
        return cls(events.sink_url, timeout=timeout, token_file=events.sink_token_file)

    def _authorization(self) -> dict[str, str]:
        if not self._token_file:
            return {}
        try:
            return bearer_from_file(self._token_file)
        except OSError as exc:
            raise SinkNotConfigured(f"cannot read the sink token {self._token_file}: {exc.strerror}",
                                    headers={"Retry-After": "30"}) from None

    def send(self, event: CloudEvent) -> None:
        if not self.url:
            raise SinkNotConfigured("K_SINK is not set: no broker to send CloudEvents to",
                                    headers={"Retry-After": "30"})
        if tracing.event_traceparent(event) is None:
            event = tracing.with_traceparent(event)
        headers, body = to_http(event)
        headers.update(self._authorization())
        transport = tracing.current_traceparent()
        if transport:
            headers[tracing.TRACEPARENT] = transport
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - K_SINK is ours
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace")
            metrics.EVENTS_SENT.labels(event["type"], "refused").inc()
            log_event(logger, "sink refused event", logging.WARNING, sink=self.url, event_id=event["id"],
                      event_type=event["type"], status=exc.code, detail=detail)
            raise SinkRejected(f"the event sink answered {exc.code} for event {event['id']}",
                               headers={"Retry-After": "5"}) from None
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
            metrics.EVENTS_SENT.labels(event["type"], "unavailable").inc()
            log_event(logger, "sink unavailable", logging.WARNING, sink=self.url, event_id=event["id"],
                      error=f"{type(exc).__name__}: {exc}")
            raise SinkUnavailable(f"the event sink is unavailable: {type(exc).__name__}",
                                  headers={"Retry-After": "5"}) from None
        if not 200 <= status < 300:  # urllib raises for >= 400; a 1xx/3xx final answer is not acceptance either
            raise SinkRejected(f"the event sink answered {status} for event {event['id']}")
        metrics.EVENTS_SENT.labels(event["type"], "sent").inc()
        log_event(logger, "event sent", sink=self.url, event_id=event["id"], event_type=event["type"],
                  status=status, subject=event.get("subject"), traceparent=event.get(tracing.TRACEPARENT))

    def send_all(self, events: Iterable[CloudEvent]) -> int:
        """Send in order and stop at the first failure (the caller's retry resends the rest, ids unchanged)."""
        sent = 0
        for event in events:
            self.send(event)
            sent += 1
        return sent
