"""`Authorization: Bearer` tokens without verifying any: the header's parser, a shared-secret comparison,
and a token read from a file.

Apart from shared/platform/auth.py (which verifies JWTs) so the functions and modules that only
compare or forward a token (storage_events, /metrics, event delivery) do not import jwt and
cryptography (~150 ms of a cold start).
"""

from __future__ import annotations

import hmac
from pathlib import Path


def bearer_token(authorization: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme is case-insensitive), else None.

    The one parser of that header: user tokens, the storage webhook's and the metrics token all go through it.
    """
    scheme, _, token = (authorization or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def bearer_from_file(path: str) -> dict[str, str]:
    """`Authorization: Bearer` with the token in `path`, read now: kubelet rewrites a projected
    service-account token before it expires (at 80% of its lifetime), so it is never cached. OSError
    when the file cannot be read."""
    return {"Authorization": f"Bearer {Path(path).read_text().strip()}"}


def holds_secret(authorization: str | None, secret: str) -> bool:
    """Whether the header carries exactly `secret` as its bearer token; compared in constant time."""
    token = bearer_token(authorization)
    return token is not None and hmac.compare_digest(token.encode(), secret.encode())
