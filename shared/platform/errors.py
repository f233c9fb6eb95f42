"""Domain errors, each bound to the HTTP status it answers with.

Handlers raise these; `shared.platform.http` turns them into `{error, detail}` JSON in
one place, so a status code is never chosen ad hoc inside a handler.
"""

from __future__ import annotations


class ApiError(Exception):
    status: int = 500
    error: str = "internal_error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequest(ApiError, ValueError):
    status, error = 400, "bad_request"


class SizeRequired(BadRequest):
    """The client did not say how large the file is; presign signs that length into every upload URL."""

    error = "size_required"


class Unauthorized(ApiError):
    status, error = 401, "unauthorized"


class Forbidden(ApiError):
    status, error = 403, "forbidden"


class NotFound(ApiError, LookupError):
    status, error = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, error = 405, "method_not_allowed"


class Conflict(ApiError):
    status, error = 409, "conflict"


class Gone(ApiError):
    status, error = 410, "gone"


class PayloadTooLarge(ApiError):
    status, error = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, error = 415, "unsupported_media_type"


class TooManyRequests(ApiError):
    status, error = 429, "too_many_requests"

    def __init__(self, detail: str, *, retry_after_seconds: int):
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_seconds))})
        self.retry_after_seconds = retry_after_seconds


class NotImplementedYet(ApiError):
    status, error = 501, "not_implemented"


class DependencyUnavailable(ApiError):
    """A backing service (database, storage, clamd, event sink) failed: the caller should retry."""

    status, error = 503, "dependency_unavailable"


class NotReady(Exception):
    """A dependency answers but is not fit for this code yet, for a reason dropgate words itself.

    /healthz shows this reason (an operator learns what to do without reading logs); it never shows
    any other exception's text, which can name hosts, paths or credentials.
    """
