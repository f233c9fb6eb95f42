"""Knative's sender identity (feature `authentication-oidc`), as the local stack models it.

On a cluster, every event delivery carries a Kubernetes service-account token issued for the
receiver's audience, and the receiver checks it (knative/eventing pkg/auth/verifier.go):

* the broker calls a subscriber as the Trigger's own service account
  (`<trigger>-oidc-eventing.knative.dev-trigger`, pkg/auth/serviceaccount.go), with the audience of
  the Trigger's `spec.subscriber.audience`; a PingSource sends as `<name>-oidc-sources.knative.dev-pingsource`;
* a subscriber's reply re-enters the broker through the channel as the Trigger's Subscription
  (named `<broker>-<trigger>-<trigger uid>`, pkg/reconciler/broker/resources/subscription.go);
* the broker's ingress accepts a token for its own audience `eventing.knative.dev/broker/<ns>/<name>`
  (pkg/auth/audience.go) from a subject that its EventPolicies allow (`from.sub`, `from.ref`), or,
  with no EventPolicy, from the same namespace (the default `allow-same-namespace` mode).

Locally a second issuer on the dev OIDC server stands in for the cluster's service-account issuer:
its key lives in `<data>/cluster-oidc`, its keys are served at `/cluster/openid/v1/jwks` (the API
server's path). The router and the stack mint with it; the functions verify against it with the same
code that verifies Kubernetes' tokens in production.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dropgate_local.devauth import DevSigningKey
from shared.platform.auth import (
    subject_allowed,  # pkg/auth/event_policy.go SubjectContained: one copy
)

CLUSTER_ISSUER_PATH: Final = "/cluster"
SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount"
TOKEN_TTL_SECONDS: Final = 3600  # Knative's TokenRequest asks for an hour too
_LONGEST_NAME: Final = 63  # knative.dev/pkg/kmeta: a Kubernetes name (DNS label)
_HASH_HEAD: Final = _LONGEST_NAME - 32  # what is kept of a parent before its md5


def cluster_issuer_url(host: str, port: int) -> str:
    return f"http://{host}:{port}{CLUSTER_ISSUER_PATH}"


def cluster_jwks_url(host: str, port: int) -> str:
    return f"{cluster_issuer_url(host, port)}/openid/v1/jwks"


def child_name(parent: str, suffix: str) -> str:
    """knative.dev/pkg/kmeta.ChildName for suffixes longer than 31 characters (all OIDC suffixes are).

    Checked against knative/eventing's own vectors in tests/test_identity.py.
    """
    if len(parent) + len(suffix) <= _LONGEST_NAME:
        return parent + suffix
    return parent[:_HASH_HEAD] + hashlib.md5((parent + suffix).encode()).hexdigest()  # noqa: S324 - a name, not a MAC


def oidc_service_account(group: str, kind: str, name: str) -> str:
    """pkg/auth/serviceaccount.go GetOIDCServiceAccountNameForResource."""
    return child_name(name, f"-oidc-{group}-{kind}").lower()


def subject(namespace: str, service_account: str) -> str:
    return f"{SERVICE_ACCOUNT_PREFIX}:{namespace}:{service_account}"


def trigger_subject(namespace: str, trigger: str) -> str:
    return subject(namespace, oidc_service_account("eventing.knative.dev", "Trigger", trigger))


def ping_source_subject(namespace: str, source: str) -> str:
    return subject(namespace, oidc_service_account("sources.knative.dev", "PingSource", source))


def sink_binding_subject(namespace: str, binding: str) -> str:
    """A SinkBinding's identity: the token it mounts at /oidc/token in its subject's pods is this one's."""
    return subject(namespace, oidc_service_account("sources.knative.dev", "SinkBinding", binding))


def trigger_uid(namespace: str, trigger: str) -> str:
    """The local stand-in for a Trigger's UID: stable for the Trigger, like the cluster's."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"trigger/{namespace}/{trigger}"))


def subscription_subject(namespace: str, broker: str, trigger: str) -> str:
    """The identity a Trigger's replies come back to the broker with (the channel's Subscription)."""
    subscription = child_name(f"{broker}-{trigger}-", trigger_uid(namespace, trigger))
    return subject(namespace, oidc_service_account("messaging.knative.dev", "Subscription", subscription))


def broker_audience(namespace: str, broker: str) -> str:
    return f"eventing.knative.dev/broker/{namespace}/{broker}".lower()


# -- EventPolicy --

_REF_SUBJECTS: Final = {  # what a `from.ref` resolves to (the referenced object's OIDC service account)
    ("sources.knative.dev", "PingSource"): ping_source_subject,
    ("eventing.knative.dev", "Trigger"): trigger_subject,
    ("sources.knative.dev", "SinkBinding"): sink_binding_subject,
}


@dataclass(frozen=True)
class EventPolicy:
    name: str
    namespace: str
    to: tuple[tuple[str, str], ...]  # (kind, name); empty: every resource in the namespace
    subjects: tuple[str, ...]  # the resolved `from`, as the policy's status lists them

    @classmethod
    def from_manifest(cls, doc: Mapping, default_namespace: str) -> EventPolicy:
        meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        namespace = meta.get("namespace") or default_namespace
        to = tuple((ref["ref"]["kind"], ref["ref"]["name"]) for ref in spec.get("to") or [] if "ref" in ref)
        if any("selector" in ref for ref in spec.get("to") or []):
            raise ValueError(f"EventPolicy {meta.get('name')}: `to.selector` is not modelled by the local broker")
        subjects: list[str] = []
        for source in spec.get("from") or []:
            if "sub" in source:
                subjects.append(source["sub"])
                continue
            ref = source["ref"]
            resolve = _REF_SUBJECTS.get((ref["apiVersion"].split("/")[0], ref["kind"]))
            if resolve is None:
                raise ValueError(f"EventPolicy {meta.get('name')}: cannot resolve a {ref['kind']} reference")
            subjects.append(resolve(ref.get("namespace") or namespace, ref["name"]))
        if spec.get("filters"):
            raise ValueError(f"EventPolicy {meta.get('name')}: `filters` are not modelled by the local broker")
        return cls(name=meta["name"], namespace=namespace, to=to, subjects=tuple(subjects))

    def applies_to(self, kind: str, name: str, namespace: str) -> bool:
        return namespace == self.namespace and (not self.to or (kind, name) in self.to)


def policies_from_manifests(documents: Iterable[Mapping | None], default_namespace: str) -> tuple[EventPolicy, ...]:
    return tuple(EventPolicy.from_manifest(doc, default_namespace) for doc in documents
                 if doc and doc.get("kind") == "EventPolicy"
                 and str(doc.get("apiVersion", "")).startswith("eventing.knative.dev/"))


def broker_admits(policies: Iterable[EventPolicy], broker: str, namespace: str, sender: str) -> bool:
    """pkg/auth/verifier.go verifyAuthZ for a Broker: its policies, else `allow-same-namespace`."""
    applying = [p for p in policies if p.applies_to("Broker", broker, namespace)]
    if not applying:
        return sender.startswith(f"{SERVICE_ACCOUNT_PREFIX}:{namespace}:")
    return any(subject_allowed(sender, policy.subjects) for policy in applying)


@dataclass(frozen=True)
class FunctionIdentity:
    """What a function's manifests say about events and identity, for the local stack to run it the same way."""

    service: str
    audience: str | None  # DROPGATE_EVENT_AUDIENCE of the Knative Service (a receiver)
    senders: str | None  # DROPGATE_EVENT_SENDERS
    sink_subject: str | None  # its SinkBinding's identity, when it emits events
    sink_audience: str | None  # the audience of that SinkBinding's sink (the Broker)


def function_identities(documents: Iterable[Mapping | None]) -> dict[str, FunctionIdentity]:
    """Knative Service name -> its identity, from rendered manifests (Services, SinkBindings, Brokers)."""
    docs = [d for d in documents if d]
    env_of: dict[str, dict[str, str]] = {}
    for doc in docs:
        if doc.get("kind") == "Service" and str(doc.get("apiVersion", "")).startswith("serving.knative.dev/"):
            containers = doc["spec"]["template"]["spec"]["containers"]
            env_of[doc["metadata"]["name"]] = {e["name"]: e["value"] for c in containers for e in c.get("env") or []
                                               if "value" in e}
    sinks: dict[str, tuple[str, str]] = {}
    for doc in docs:
        if doc.get("kind") == "SinkBinding":
            namespace = doc["metadata"].get("namespace") or "default"
            sink = doc["spec"]["sink"]["ref"]
            audience = broker_audience(sink.get("namespace") or namespace, sink["name"]) \
                if sink["kind"] == "Broker" else sink.get("audience")
            sinks[doc["spec"]["subject"]["name"]] = (sink_binding_subject(namespace, doc["metadata"]["name"]), audience)
    return {name: FunctionIdentity(service=name, audience=env.get("DROPGATE_EVENT_AUDIENCE"),
                                   senders=env.get("DROPGATE_EVENT_SENDERS"),
                                   sink_subject=sinks.get(name, (None, None))[0],
                                   sink_audience=sinks.get(name, (None, None))[1])
            for name, env in env_of.items()}


def write_token(path: Path, token: str) -> None:
    """Replace a token file at once (a reader never sees half a token), readable by its owner only:
    what kubelet does with a projected token, and Knative with a SinkBinding's /oidc/token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(token)
    partial.chmod(0o600)
    partial.replace(path)


def event_token(issuer: ClusterIssuer, identity: FunctionIdentity, *, subject_: str | None = None,
                audience: str | None = None, ttl_seconds: int = TOKEN_TTL_SECONDS) -> str:
    """What the broker presents to this function: its first Trigger's token, for its audience;
    `subject_`/`audience` forge another sender (tests, `dropgate-dev event-token`)."""
    senders = (identity.senders or "").split(",")
    return issuer.mint(subject_ or senders[0], audience or identity.audience or "", ttl_seconds=ttl_seconds)


class ClusterIssuer:
    """The local cluster's service-account issuer: mints what Kubernetes' TokenRequest would."""

    def __init__(self, data_dir: Path, issuer: str) -> None:
        self.key = DevSigningKey.load_or_create(data_dir / "cluster-oidc")
        self.issuer = issuer

    def mint(self, subject_: str, audience: str, ttl_seconds: int = TOKEN_TTL_SECONDS) -> str:
        return self.key.mint(subject=subject_, roles=[], issuer=self.issuer, audience=audience,
                             ttl_seconds=ttl_seconds)


class BrokerIdentity:
    """What the local broker does about identity: the tokens it presents and the senders it admits."""

    def __init__(self, issuer: ClusterIssuer, policies: Iterable[EventPolicy]) -> None:
        self.issuer = issuer
        self.policies = tuple(policies)

    def delivery_headers(self, namespace: str, trigger: str, audience: str | None) -> dict[str, str]:
        """The broker calls a subscriber as the Trigger, for the subscriber's audience; none without one."""
        if not audience:
            return {}
        return {"Authorization": f"Bearer {self.issuer.mint(trigger_subject(namespace, trigger), audience)}"}

    def sink_headers(self, sender: str, audience: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.mint(sender, audience)}"}

    def ingress_refusal(self, authorization: str | None, namespace: str, broker: str) -> tuple[int, str] | None:
        """None when the request may enter `broker`; else (401 or 403, why), as the broker ingress answers."""
        import jwt

        from shared.platform.auth import bearer_token

        token = bearer_token(authorization)
        if token is None:
            return 401, "no JWT token found in request"
        try:
            claims = jwt.decode(token, self.issuer.key.private_key.public_key(), algorithms=["RS256"],
                                audience=broker_audience(namespace, broker), issuer=self.issuer.issuer,
                                options={"require": ["exp", "iat", "sub"]})
        except jwt.PyJWTError as exc:
            return 401, f"failed to verify JWT: {exc}"
        if not broker_admits(self.policies, broker, namespace, claims["sub"]):
            return 403, f"token is from subject {claims['sub']!r}, which no EventPolicy of the broker allows"
        return None
