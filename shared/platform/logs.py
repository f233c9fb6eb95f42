"""Structured JSON log lines on stderr, one per decision.

Knative collects stdout/stderr; one JSON object a line is what log pipelines
(Loki, Elasticsearch, Cloud Logging) parse without extra configuration.

Every line also names what it is about without each call repeating it: the current
trace (`trace_id`, `span_id`, from shared.platform.tracing) and the fields bound with
`context(...)` for the request or event being handled (`event_id`, `upload_id`...).
Presigned URLs never belong in a log; as a last line of defence, the credential and
signature parameters of any URL that slips into one are redacted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Final

from shared.platform import tracing

_configured = False
_context: ContextVar[dict[str, Any]] = ContextVar("dropgate_log_context", default={})
# SigV4 query parameters that make a URL usable by whoever reads it (and Authorization headers).
_SECRET_PARAMETERS: Final = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token))=[^&\s\"'\\]+",
                                       re.IGNORECASE)
_BEARER: Final = re.compile(r"(Bearer )[A-Za-z0-9._~+/=-]{16,}")


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Add these fields (None values left out) to every line logged inside the block, in this thread."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the enclosing `context(...)` block from here on (e.g. the upload id once it is known)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def redact(text: str) -> str:
    return _BEARER.sub(r"\1[redacted]", _SECRET_PARAMETERS.sub(r"\1=[redacted]", text))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context.get())
        line.update(tracing.log_fields())
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


def configure(level: str = "INFO") -> None:
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _configured = True


def log_event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one decision with its context (upload id, event id, outcome...) as JSON fields."""
    logger.log(level, message, extra={"fields": fields})
