"""Bearer-token authentication against an OIDC issuer's JWKS: users' tokens and event senders' tokens.

What is pinned, and why:
- algorithms: only the asymmetric ones in settings (RS256/ES256 by default). The
  token header's `alg` is checked before any key is fetched, so `none` and
  HS256-signed-with-the-public-key (the RS/HS confusion) never reach a verifier;
  a JWK that names its own `alg` must agree with the token's.
- issuer and audience: a token for another client of the same provider is refused.
- `exp`, `iat` and `sub` are required; a small leeway absorbs clock skew.

Keys are cached by PyJWKClient and fetched again when a token carries a `kid`
the cache does not know (the provider rotated its keys), at most once per
DROPGATE_JWKS_REFRESH_COOLDOWN seconds. A token that verified is remembered (exact string,
its `exp` checked on every use) so a client's burst of requests verifies its signature once.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import jwt

from shared.platform.bearer import bearer_from_file, bearer_token
from shared.platform.errors import DependencyUnavailable, Forbidden, Unauthorized
from shared.platform.lru import LruCache
from shared.platform.settings import AuthSettings, EventAuthSettings

ROLE_UPLOADER: Final = "uploader"
ROLE_ADMIN: Final = "admin"
_JWKS_CACHE_SECONDS: Final = 300
_VERIFIED_TOKENS: Final = 10_000  # distinct live tokens remembered per process (a few MB at most)
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


def _unauthorized(detail: str) -> Unauthorized:
    # The reason goes in the JSON body only: the token's `alg`/`kid` are attacker-controlled, and a
    # header value cannot carry every character a JSON string can (a newline would break the answer).
    return Unauthorized(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


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


@dataclass(frozen=True)
class JwtPolicy:
    """What a token must satisfy: who signed it (the issuer's JWKS), for whom (audience), with what."""

    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...]
    leeway_seconds: int
    refresh_cooldown_seconds: int
    # Kubernetes serves its service-account issuer's keys to authenticated callers over its own CA:
    # the pod's CA bundle and service-account token (read at each fetch: kubelet rotates it).
    ca_file: str | None = None
    token_file: str | None = None


class _JwksClient(jwt.PyJWKClient):
    def __init__(self, policy: JwtPolicy) -> None:
        context = ssl.create_default_context(cafile=policy.ca_file) if policy.ca_file else None
        super().__init__(policy.jwks_url, cache_keys=True, lifespan=_JWKS_CACHE_SECONDS, timeout=5,
                         ssl_context=context, cooldown_duration=policy.refresh_cooldown_seconds)
        self._token_file = policy.token_file

    def fetch_data(self) -> Any:
        if self._token_file:
            self.headers = bearer_from_file(self._token_file)
        return super().fetch_data()


class _VerifiedTokens:
    """Tokens whose signature and claims verified, so a client's next request with the same token skips
    the RSA/ECDSA check (Uppy asks for one part URL per request: each would verify the same token again).

    Only the exact token string hits; expiry is checked on every hit against the token's own `exp`;
    an entry lives at most as long as a fetched JWKS does (_JWKS_CACHE_SECONDS), so a key the issuer
    withdrew stops being trusted no later through this cache than through the key cache.
    """

    def __init__(self, capacity: int = _VERIFIED_TOKENS) -> None:
        self._entries: LruCache[str, tuple[float, dict[str, Any]]] = LruCache(capacity)

    def get(self, token: str, leeway_seconds: int) -> dict[str, Any] | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        now = time.time()
        if now >= entry[0]:
            self._entries.forget(token)
            return None
        claims = entry[1]
        if now > claims["exp"] + leeway_seconds:
            raise _unauthorized("token expired")
        return claims

    def put(self, token: str, claims: dict[str, Any]) -> None:
        self._entries.put(token, (time.time() + _JWKS_CACHE_SECONDS, claims))


class JwtVerifier:
    """Verifies a JWT against one `JwtPolicy`; the one copy of that logic for user and event tokens."""

    def __init__(self, policy: JwtPolicy) -> None:
        self._policy = policy
        self._jwks = _JwksClient(policy)
        self._verified = _VerifiedTokens()

    def claims(self, token: str) -> dict[str, Any]:
        if (cached := self._verified.get(token, self._policy.leeway_seconds)) is not None:
            return cached
        claims = self._verify(token)
        self._verified.put(token, claims)
        return claims

    def _verify(self, token: str) -> dict[str, Any]:
        policy = self._policy
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthorized("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in policy.algorithms:
            raise _unauthorized(f"token algorithm {algorithm!r} is not accepted")
        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
        except (jwt.PyJWKClientConnectionError, OSError) as exc:
            raise DependencyUnavailable(f"cannot fetch the issuer's keys: {exc}",
                                        headers={"Retry-After": "5"}) from None
        except jwt.PyJWTError:
            raise _unauthorized("no trusted key for this token") from None
        key_algorithm = signing_key._jwk_data.get("alg")  # noqa: SLF001 - PyJWK keeps the raw JWK only here
        if key_algorithm and key_algorithm != algorithm:
            raise _unauthorized(f"token algorithm {algorithm!r} does not match its key's {key_algorithm!r}")
        try:
            claims = jwt.decode(
                token, signing_key.key, algorithms=[algorithm], audience=policy.audience, issuer=policy.issuer,
                leeway=policy.leeway_seconds, options={"require": ["exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise _unauthorized("token has no subject")
        return claims


class TokenVerifier:
    """Users' tokens, from the identity provider (Keycloak or any OIDC provider)."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._jwt = JwtVerifier(JwtPolicy(
            issuer=settings.issuer, audience=settings.audience, jwks_url=settings.jwks_url,
            algorithms=settings.algorithms, leeway_seconds=settings.leeway_seconds,
            refresh_cooldown_seconds=settings.jwks_refresh_cooldown_seconds))

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
        claims = self._jwt.claims(token)
        return Principal(subject=claims["sub"], roles=roles_from_claims(claims, self._settings.roles_claim))


def subject_allowed(subject: str, allowed: Iterable[str]) -> bool:
    """EventPolicy's `from.sub` rule, as knative/eventing pkg/auth/event_policy.go `SubjectContained`:
    the subject itself (compared case-insensitively, like Go's EqualFold), or a prefix followed by `*`
    (case-sensitive); only a trailing `*` is a wildcard.
    """
    return any(subject.casefold() == pattern.casefold()
               or (pattern.endswith("*") and subject.startswith(pattern[:-1])) for pattern in allowed)


class EventSenderVerifier:
    """Who delivered a CloudEvent: Knative's sender identity (feature `authentication-oidc`).

    Knative's broker (as each Trigger's service account) and its sources (PingSource...) present a
    Kubernetes service-account token issued for the receiver's audience. As knative/eventing
    pkg/auth/verifier.go does for its own receivers: no token or a token that does not verify
    (issuer's keys, audience, expiry) is 401; a verified sender that is not allowed here is 403.
    """

    def __init__(self, settings: EventAuthSettings) -> None:
        self._allowed = settings.senders
        self._jwt = JwtVerifier(JwtPolicy(
            issuer=settings.issuer, audience=settings.audience, jwks_url=settings.jwks_url,
            algorithms=settings.algorithms, leeway_seconds=settings.leeway_seconds,
            refresh_cooldown_seconds=10, ca_file=settings.jwks_ca_file, token_file=settings.jwks_token_file))

    def sender(self, authorization: str | None) -> str:
        token = bearer_token(authorization)
        if token is None:
            raise _unauthorized("CloudEvents are accepted only with the sender's token (Authorization: Bearer)")
        subject = self._jwt.claims(token)["sub"]
        if not subject_allowed(subject, self._allowed):
            raise Forbidden(f"{subject} may not send events here")
        return subject
