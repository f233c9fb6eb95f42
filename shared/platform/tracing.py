"""One trace per upload: W3C trace context on HTTP and on every CloudEvent, through the OpenTelemetry API.

Where the context comes from and goes (docs/operations.md, "Tracing"):

- HTTP: every request a function serves runs in a span whose parent is the request's
  `traceparent` header (W3C Trace Context); without one, a new trace starts. presign
  answers with a `traceresponse` header naming the trace.
- Storage cannot carry HTTP headers from presign to the notification, so presign writes
  its `traceparent` into the object's user metadata (`x-amz-meta-traceparent`) when it
  creates the multipart upload; the completed object keeps it, storage repeats it in its
  notification (SeaweedFS: the entry's `extended`, MinIO: `userMetadata`), and the
  adapter continues that trace.
- CloudEvents: every event dropgate emits carries the distributed-tracing extension
  attribute `traceparent` (CloudEvents extensions/distributed-tracing.md); a function
  receiving an event continues the trace of that attribute, which Knative's Broker
  forwards untouched, and replies with the attribute set to its own span.

The exporter is off by default (`OTEL_TRACES_EXPORTER=none`): then no span is recorded,
but ids are still made and propagated here, so logs and events carry them. With
`console` or `otlp`, the OpenTelemetry SDK records and exports every span.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Final

from cloudevents.http import CloudEvent
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT: Final = "traceparent"  # HTTP header and CloudEvents extension attribute, same name
TRACESTATE: Final = "tracestate"
TRACERESPONSE: Final = "traceresponse"  # W3C Trace Context level 2: the server's answer
EXPORTERS: Final = ("none", "console", "otlp")
_TRACER_NAME: Final = "dropgate"

_propagator = TraceContextTextMapPropagator()
_recording = False  # True once an exporter is configured: the SDK then makes (and records) spans


def configure(service_name: str, exporter: str = "none", otlp_endpoint: str | None = None) -> None:
    """Install the SDK's tracer provider when an exporter is asked for; nothing at all for `none`."""
    global _recording
    if exporter == "none" or _recording:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "console":
        # One JSON object a line, like every other log line of the function.
        span_exporter = ConsoleSpanExporter(out=sys.stdout,
                                            formatter=lambda span: span.to_json(indent=None) + "\n")
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        span_exporter = OTLPSpanExporter(endpoint=f"{otlp_endpoint.rstrip('/')}/v1/traces" if otlp_endpoint else None)
    else:
        raise ValueError(f"unknown traces exporter {exporter!r}; one of {', '.join(EXPORTERS)}")
    provider = TracerProvider(resource=Resource.create({"service.name": f"dropgate-{service_name}"}))
    # The batch processor re-creates its thread in a forked worker (gunicorn forks after import).
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _recording = True


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The span context a `traceparent` value names; None when absent or malformed (W3C: ignore it)."""
    if not value:
        return None
    context = trace.get_current_span(_propagator.extract({TRACEPARENT: value})).get_span_context()
    return context if context.is_valid else None


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@contextlib.contextmanager
def span(name: str, *, parent: str | None = None, kind: SpanKind = SpanKind.INTERNAL,
         attributes: Mapping[str, Any] | None = None) -> Iterator[SpanContext]:
    """Run the block in a new span: child of `parent` (a traceparent) when valid, else of the current span.

    Without a current span or a valid parent, a new trace starts.
    """
    remote = parse_traceparent(parent)
    parent_context = trace.set_span_in_context(NonRecordingSpan(remote)) if remote else None
    if _recording:
        tracer = trace.get_tracer(_TRACER_NAME)
        with tracer.start_as_current_span(name, context=parent_context, kind=kind,
                                          attributes=dict(attributes or {})) as current:
            yield current.get_span_context()
        return
    # The API alone makes no ids of its own: a span of the same trace with a fresh span id, recorded nowhere.
    above = remote or trace.get_current_span().get_span_context()
    if above.is_valid:
        context = SpanContext(above.trace_id, _new_span_id(), is_remote=False, trace_flags=above.trace_flags,
                              trace_state=above.trace_state)
    else:
        # Not sampled: nothing records it unless an exporter is configured.
        context = SpanContext(_new_trace_id(), _new_span_id(), is_remote=False, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(context), end_on_exit=False):
        yield context


def _new_trace_id() -> int:
    return random.getrandbits(128) or 1


def _new_span_id() -> int:
    return random.getrandbits(64) or 1


def current_context() -> SpanContext | None:
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def current_traceparent() -> str | None:
    context = current_context()
    return format_traceparent(context) if context else None


def current_trace_id() -> str | None:
    context = current_context()
    return f"{context.trace_id:032x}" if context else None


def log_fields() -> dict[str, str]:
    """trace_id and span_id of the current span, for every log line written inside it."""
    context = current_context()
    if context is None:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def trace_id_of(traceparent: str | None) -> str | None:
    context = parse_traceparent(traceparent)
    return f"{context.trace_id:032x}" if context else None


def event_traceparent(event: CloudEvent) -> str | None:
    value = event.get(TRACEPARENT)
    return value if isinstance(value, str) and parse_traceparent(value) else None


def with_traceparent(event: CloudEvent, traceparent: str | None = None) -> CloudEvent:
    """A copy of the event whose `traceparent` extension is `traceparent` (default: the current span's).

    Never mutates the caller's event; without a trace to name, the event is returned as it is.
    """
    value = traceparent or current_traceparent()
    if value is None:
        return event
    return CloudEvent({**event.get_attributes(), TRACEPARENT: value}, event.get_data())


def parent_of_event(event: CloudEvent, http_traceparent: str | None) -> str | None:
    """Which trace an event's handling continues.

    The `traceparent` extension is the trace of the upload the event is about, and it is what
    survives every hop (Knative's Broker forwards extensions, not arbitrary headers). The HTTP
    header is only preferred when it continues that same trace (e.g. the Broker's own span).
    """
    from_event = event_traceparent(event)
    if from_event is None:
        return http_traceparent
    if http_traceparent and trace_id_of(http_traceparent) == trace_id_of(from_event):
        return http_traceparent
    return from_event
