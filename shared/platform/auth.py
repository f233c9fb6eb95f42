"""Bearer-token authentication against the OIDC provider's JWKS.

What is pinned, and why:
- algorithms: only the asymmetric ones in settings (RS256/ES256 by default). The
  token header's `alg` is checked before any key is fetched, so `none` and
  HS256-signed-with-the-public-key (the RS/HS confusion) never reach a verifier;
  a JWK that names its own `alg` must agree with the token's.
- issuer and audience: a token for another client of the same provider is refused.
- `exp`, `iat` and `sub` are required; a small leeway absorbs clock skew.

Keys are cached by PyJWKClient and fetched again when a token carries a `kid`
the cache does not know (the provider rotated its keys), at most once per
DROPGATE_JWKS_REFRESH_COOLDOWN seconds.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Final

import jwt

from shared.platform.errors import DependencyUnavailable, Forbidden, Unauthorized
from shared.platform.settings import AuthSettings

ROLE_UPLOADER: Final = "uploader"
ROLE_ADMIN: Final = "admin"
_JWKS_CACHE_SECONDS: Final = 300
# Uppy 6's Companion client sends no Authorization header; a page served on the
# API's own origin can put the token in this cookie instead (SameSite=Strict).
TOKEN_COOKIE: Final = "dropgate_token"


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ROLE_ADMIN in self.roles

    def require(self, role: str) -> None:
        # Admins can do what uploaders can.
        if role not in self.roles and not self.is_admin:
            raise Forbidden(f"this needs the {role!r} role")


def bearer_token(authorization: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme is case-insensitive), else None.

    The one parser of that header: user tokens, the storage webhook's and the metrics token all go through it.
    """
    scheme, _, token = (authorization or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def holds_secret(authorization: str | None, secret: str) -> bool:
    """Whether the header carries exactly `secret` as its bearer token; compared in constant time."""
    token = bearer_token(authorization)
    return token is not None and hmac.compare_digest(token.encode(), secret.encode())


def _unauthorized(detail: str) -> Unauthorized:
    return Unauthorized(detail, headers={"WWW-Authenticate": f'Bearer error="invalid_token", '
                                                              f'error_description="{detail}"'})


def roles_from_claims(claims: dict[str, Any], dotted_path: str) -> frozenset[str]:
    """Roles at a dotted path such as Keycloak's `realm_access.roles`; absent means none."""
    value: Any = claims
    for part in dotted_path.split("."):
        if not isinstance(value, dict):
            return frozenset()
        value = value.get(part)
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


class TokenVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=_JWKS_CACHE_SECONDS, timeout=5,
                                     cooldown_duration=settings.jwks_refresh_cooldown_seconds)

    def principal_from_request(self, authorization: str | None, token_cookie: str | None = None) -> Principal:
        """From `Authorization: Bearer`, or else the token cookie; the header wins when both are sent."""
        if not authorization and token_cookie:
            return self.verify(token_cookie.strip())
        if not authorization:
            raise _unauthorized("missing Authorization: Bearer token")
        token = bearer_token(authorization)
        if token is None:
            raise _unauthorized("expected Authorization: Bearer <token>")
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        settings = self._settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"malformed token: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in settings.algorithms:
            raise _unauthorized(f"token algorithm {algorithm!r} is not accepted")
        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise DependencyUnavailable(f"cannot fetch the identity provider's keys: {exc}",
                                        headers={"Retry-After": "5"}) from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"no trusted key for this token: {exc}") from None
        key_algorithm = signing_key._jwk_data.get("alg")  # noqa: SLF001 - PyJWK keeps the raw JWK only here
        if key_algorithm and key_algorithm != algorithm:
            raise _unauthorized(f"token algorithm {algorithm!r} does not match its key's {key_algorithm!r}")
        try:
            claims = jwt.decode(
                token, signing_key.key, algorithms=[algorithm], audience=settings.audience, issuer=settings.issuer,
                leeway=settings.leeway_seconds, options={"require": ["exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise _unauthorized("token has no subject")
        return Principal(subject=subject, roles=roles_from_claims(claims, settings.roles_claim))
