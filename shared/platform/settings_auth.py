"""The settings sections about identity: users' tokens (`auth`) and event senders' tokens (`event_auth`).

Registered with the other sections in shared/platform/settings.py; verified by shared/platform/auth.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shared.platform.env import EnvReader

_FORBIDDEN_JWT_ALGORITHMS: Final = frozenset({"none", "HS256", "HS384", "HS512"})


@dataclass(frozen=True)
class AuthSettings:
    """OIDC: tokens are verified against the provider's JWKS, issuer and audience pinned."""

    issuer: str
    audience: str
    jwks_url: str
    roles_claim: str  # dotted path into the token, Keycloak's realm roles by default
    algorithms: tuple[str, ...]
    leeway_seconds: int
    # An unknown `kid` refetches the JWKS at most this often, so tokens with made-up
    # kids cannot make every request hit the identity provider.
    jwks_refresh_cooldown_seconds: int

    @classmethod
    def read(cls, env: EnvReader) -> AuthSettings:
        algorithms = _asymmetric_algorithms(env, "DROPGATE_JWT_ALGORITHMS")
        return cls(
            issuer=env.text("DROPGATE_OIDC_ISSUER"),
            audience=env.text("DROPGATE_OIDC_AUDIENCE"),
            jwks_url=env.url("DROPGATE_OIDC_JWKS_URL"),
            roles_claim=env.text("DROPGATE_ROLES_CLAIM", "realm_access.roles"),
            algorithms=algorithms,
            leeway_seconds=env.integer("DROPGATE_JWT_LEEWAY", 30, minimum=0, maximum=300),
            jwks_refresh_cooldown_seconds=env.integer("DROPGATE_JWKS_REFRESH_COOLDOWN", 10, minimum=0, maximum=3600),
        )


def _asymmetric_algorithms(env: EnvReader, name: str) -> tuple[str, ...]:
    algorithms = env.words(name, ("RS256", "ES256"))
    forbidden = sorted(set(algorithms) & _FORBIDDEN_JWT_ALGORITHMS)
    if forbidden:
        env.problems.append(f"{name}: {', '.join(forbidden)} not allowed; "
                            "only asymmetric algorithms verified against the JWKS are accepted")
    return algorithms


@dataclass(frozen=True)
class EventAuthSettings:
    """Who may deliver CloudEvents to this function (shared/platform/auth.py `EventSenderVerifier`).

    Production values are Knative's OIDC sender identity (docs/deploy.md): the cluster's
    service-account issuer and its keys, this function's audience (its Trigger's
    `spec.subscriber.audience`), and the subjects of the Triggers and PingSources that deliver here.
    """

    issuer: str
    jwks_url: str
    audience: str
    senders: tuple[str, ...]  # `system:serviceaccount:<ns>:<name>`; a trailing * matches any suffix
    jwks_ca_file: str | None
    jwks_token_file: str | None
    algorithms: tuple[str, ...]
    leeway_seconds: int

    @classmethod
    def read(cls, env: EnvReader) -> EventAuthSettings:
        return cls(
            issuer=env.text("DROPGATE_EVENT_OIDC_ISSUER"),
            jwks_url=env.url("DROPGATE_EVENT_OIDC_JWKS_URL", "https://kubernetes.default.svc/openid/v1/jwks"),
            audience=env.text("DROPGATE_EVENT_AUDIENCE"),
            senders=env.words("DROPGATE_EVENT_SENDERS"),
            jwks_ca_file=env.optional_text("DROPGATE_EVENT_OIDC_CA_FILE"),
            jwks_token_file=env.optional_text("DROPGATE_EVENT_OIDC_TOKEN_FILE"),
            algorithms=_asymmetric_algorithms(env, "DROPGATE_EVENT_JWT_ALGORITHMS"),
            leeway_seconds=env.integer("DROPGATE_JWT_LEEWAY", 30, minimum=0, maximum=300),
        )
