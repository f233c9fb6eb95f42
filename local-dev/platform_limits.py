"""The rules of the platform dropgate runs on, as code: what a real cluster refuses, cuts off or runs out of.

The local stack models the platform with these (the broker cuts a delivery at its
Service's timeouts, local-dev/router.py), and tests/test_platform_limits.py checks
every rendered overlay against `problems()`: a Service that a cluster with
Knative's defaults would reject, a pass that would be cut before it answers, more
database connections than PostgreSQL has, more scans than clamd has threads.

Every number says where it comes from. They are the platforms' *defaults* on
purpose: dropgate must run on a cluster it shares, whose operators will not
raise cluster-wide ceilings for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from dropgate_local.routing import parse_iso8601_duration

# -- Knative Serving: config-defaults (knative/serving config/core/configmaps/defaults.yaml) --
# A Revision whose timeoutSeconds exceeds max-revision-timeout-seconds is refused at admission
# (pkg/apis/serving/v1/revision_validation.go validateTimeoutSeconds).
MAX_REVISION_TIMEOUT_SECONDS: Final = 600
REVISION_TIMEOUT_SECONDS: Final = 300  # timeoutSeconds when a Service sets none
# The queue-proxy answers 504 when no response byte came within this (queue.go passes it to the
# queue-proxy as responseStartTimeout); it defaults to revision-timeout-seconds, 300. A function
# that answers only when its work is done (scan's verdict, expire's and reconcile's summaries)
# must finish inside it.
REVISION_RESPONSE_START_TIMEOUT_SECONDS: Final = 300
CONTAINER_CONCURRENCY_MAX_LIMIT: Final = 1000  # container-concurrency-max-limit

# -- PostgreSQL defaults (postgresql.conf: max_connections 100, superuser_reserved_connections 3) --
POSTGRES_MAX_CONNECTIONS: Final = 100
POSTGRES_RESERVED_CONNECTIONS: Final = 3
# What dropgate may take: the rest is for the migration Job, operators' psql, backups and monitoring.
DATABASE_SHARE: Final = 0.8

# -- ClamAV (docs.clamav.net/manual/Installing/Docker.html, "Memory (RAM) Requirements") --
# The engine with the official signatures takes "upwards of 1.2 GiB"; a concurrent reload builds a
# second engine before dropping the first, so clamd needs twice that for a while; freshclam loads
# a downloaded database once to test it (TestDatabases, on by default). Rounded up for growth.
CLAMAV_ENGINE_BYTES: Final = 3 * 2**29  # 1.5 GiB
# What a pass needs after its budget runs out: the last batch, the summary, the reply.
PASS_MARGIN_SECONDS: Final = 60

KNATIVE_SERVICE: Final = ("serving.knative.dev", "Service")
PASS_BUDGETS: Final = {"dropgate-expire": "DROPGATE_EXPIRE_TIME_BUDGET",
                       "dropgate-reconcile": "DROPGATE_RECONCILE_TIME_BUDGET"}
SCAN_SERVICE: Final = "dropgate-scan"
CLAMD_DEPLOYMENT: Final = "dropgate-clamd"


@dataclass(frozen=True)
class ServiceTimeouts:
    """A Knative Service's request limits, with the defaults Knative fills in (Revision SetDefaults)."""

    timeout_seconds: int
    response_start_timeout_seconds: int

    @classmethod
    def of(cls, service: Mapping[str, Any]) -> ServiceTimeouts:
        spec = service["spec"]["template"]["spec"]
        timeout = int(spec.get("timeoutSeconds") or REVISION_TIMEOUT_SECONDS)
        response_start = spec.get("responseStartTimeoutSeconds")
        return cls(timeout, int(response_start) if response_start else min(REVISION_RESPONSE_START_TIMEOUT_SECONDS,
                                                                          timeout))

    @property
    def answer_within_seconds(self) -> int:
        """How long a request may run before the queue-proxy answers 504 instead, if it answers only when done."""
        return min(self.timeout_seconds, self.response_start_timeout_seconds)


@dataclass(frozen=True)
class FunctionCapacity:
    """What one Knative Service can hold at its largest: pods, requests per pod, connections per pod."""

    name: str
    max_scale: int
    container_concurrency: int
    threads: int | None
    pool_max: int | None  # DROPGATE_DB_POOL_MAX; None when it uses no database

    @classmethod
    def of(cls, service: Mapping[str, Any]) -> FunctionCapacity:
        template = service["spec"]["template"]
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        env = container_env(only_container(template["spec"]))
        return cls(name=service["metadata"]["name"],
                   max_scale=int(annotations.get("autoscaling.knative.dev/max-scale", 0)),
                   container_concurrency=int(template["spec"].get("containerConcurrency", 0)),
                   threads=int(env["THREADS"]) if "THREADS" in env else None,
                   pool_max=int(env["DROPGATE_DB_POOL_MAX"]) if "DATABASE_URL" in env else None)


# ---------------------------------------------------------------- the checks

def problems(documents: Iterable[Mapping[str, Any]]) -> list[str]:
    """Everything in a rendered overlay that the platform would refuse, cut off or run out of."""
    docs = [doc for doc in documents if doc]
    services = {doc["metadata"]["name"]: doc for doc in docs if kind_of(doc) == KNATIVE_SERVICE}
    found: list[str] = []
    for name, service in services.items():
        found += service_problems(name, service)
    found += trigger_problems(docs, services)
    found += database_problems(services.values())
    found += clamd_problems(docs, services)
    return found


def service_problems(name: str, service: Mapping[str, Any]) -> list[str]:
    spec = service["spec"]["template"]["spec"]
    limits = ServiceTimeouts.of(service)
    capacity = FunctionCapacity.of(service)
    found = []
    if not 0 < limits.timeout_seconds <= MAX_REVISION_TIMEOUT_SECONDS:
        found.append(f"Service {name}: timeoutSeconds {limits.timeout_seconds} is outside Knative's "
                     f"max-revision-timeout-seconds ({MAX_REVISION_TIMEOUT_SECONDS}): refused at admission")
    if limits.response_start_timeout_seconds > limits.timeout_seconds:
        found.append(f"Service {name}: responseStartTimeoutSeconds {limits.response_start_timeout_seconds} exceeds "
                     f"its timeoutSeconds {limits.timeout_seconds}")
    if not 0 < capacity.container_concurrency <= CONTAINER_CONCURRENCY_MAX_LIMIT:
        found.append(f"Service {name}: containerConcurrency {capacity.container_concurrency} must be 1 … "
                     f"{CONTAINER_CONCURRENCY_MAX_LIMIT} (0 would let the queue-proxy send it unbounded requests)")
    if capacity.max_scale < 1:
        found.append(f"Service {name}: no autoscaling.knative.dev/max-scale: its capacity has no bound")
    if capacity.threads is not None and capacity.threads < capacity.container_concurrency:
        found.append(f"Service {name}: THREADS {capacity.threads} < containerConcurrency "
                     f"{capacity.container_concurrency}: requests Knative lets in would wait inside gunicorn")
    if capacity.pool_max is not None and capacity.threads is not None and capacity.pool_max > capacity.threads:
        found.append(f"Service {name}: DROPGATE_DB_POOL_MAX {capacity.pool_max} > THREADS {capacity.threads}: "
                     "connections no request can use")
    budget_variable = PASS_BUDGETS.get(name)
    if budget_variable:
        env = container_env(only_container(spec))
        budget = int(env.get(budget_variable, 0))
        if not budget:
            found.append(f"Service {name}: {budget_variable} is not set: its pass would run on an unchecked default")
        elif budget + PASS_MARGIN_SECONDS > limits.answer_within_seconds:
            found.append(f"Service {name}: {budget_variable} {budget} s + {PASS_MARGIN_SECONDS} s to finish exceeds "
                         f"the {limits.answer_within_seconds} s Knative waits for its answer: the pass would be cut "
                         "off (504) and retried")
    return found


def trigger_problems(docs: list[Mapping[str, Any]], services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A Trigger's per-attempt timeout beyond its subscriber's own limit only hides where a delivery is cut."""
    found = []
    for trigger in (d for d in docs if kind_of(d) == ("eventing.knative.dev", "Trigger")):
        name = trigger["metadata"]["name"]
        ref = ((trigger["spec"].get("subscriber") or {}).get("ref") or {})
        service = services.get(ref.get("name", "")) if ref.get("kind") == "Service" else None
        timeout = (trigger["spec"].get("delivery") or {}).get("timeout")
        if service is None or not timeout:
            continue
        seconds = iso8601_seconds(timeout)
        allowed = ServiceTimeouts.of(service).answer_within_seconds
        if seconds > allowed:
            found.append(f"Trigger {name}: delivery.timeout {timeout} ({seconds:g} s) exceeds the {allowed} s its "
                         f"subscriber {ref['name']} can run before Knative answers 504")
    return found


def database_problems(services: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every pod of every function at max-scale with a full pool must fit PostgreSQL's default limit."""
    capacities = [FunctionCapacity.of(s) for s in services]
    using = [c for c in capacities if c.pool_max is not None]
    total = sum(c.max_scale * c.pool_max for c in using)  # type: ignore[operator]
    allowed = int((POSTGRES_MAX_CONNECTIONS - POSTGRES_RESERVED_CONNECTIONS) * DATABASE_SHARE)
    if total <= allowed:
        return []
    detail = ", ".join(f"{c.name} {c.max_scale}×{c.pool_max}" for c in using)
    return [f"database connections: at max-scale the functions may open {total} ({detail}); PostgreSQL's default "
            f"max_connections {POSTGRES_MAX_CONNECTIONS} leaves dropgate {allowed}"]


def clamd_problems(docs: list[Mapping[str, Any]], services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    deployment = next((d for d in docs if kind_of(d) == ("apps", "Deployment")
                       and d["metadata"]["name"] == CLAMD_DEPLOYMENT), None)
    config = next((d for d in docs if kind_of(d) == ("", "ConfigMap")
                   and "clamd.conf" in (d.get("data") or {})), None)
    if deployment is None or config is None:
        return []  # an overlay without an in-cluster clamd (the local stack runs its own)
    clamd = clamav_conf(config["data"]["clamd.conf"])
    freshclam = clamav_conf(config["data"].get("freshclam.conf", ""))
    threads = int(clamd.get("MaxThreads", "10"))  # clamd.conf's documented default
    replicas = max_replicas(docs, deployment)
    found = []
    scan = services.get(SCAN_SERVICE)
    if scan is not None:
        capacity = FunctionCapacity.of(scan)
        scans = capacity.max_scale * capacity.container_concurrency
        # A scan beyond clamd's threads waits in clamd's queue with its stream open and its request's
        # clock running: sized so that every scan Knative admits has a thread.
        if scans > replicas * threads:
            found.append(f"clamd: {scans} scans in flight at most ({SCAN_SERVICE} {capacity.max_scale}×"
                         f"{capacity.container_concurrency}) but {replicas}×{threads} clamd threads")
    pod = deployment["spec"]["template"]["spec"]
    per_scan = clamav_bytes(clamd["StreamMaxLength"]) + clamav_bytes(clamd["MaxScanSize"])
    tmp = next((v for v in pod.get("volumes", []) if v["name"] == "tmp"), None)
    tmp_size = quantity_bytes(((tmp or {}).get("emptyDir") or {}).get("sizeLimit", "0"))
    if tmp_size < threads * per_scan:
        found.append(f"clamd: /tmp holds {tmp_size / 2**30:.1f} GiB; {threads} threads each spooling a stream "
                     f"(StreamMaxLength) and extracting up to MaxScanSize need {threads * per_scan / 2**30:.1f} GiB")
    containers = {c["name"]: c for c in pod["containers"]}
    found += memory_problem("clamd", containers.get("clamd"), 2 * CLAMAV_ENGINE_BYTES,
                            "two engines while a concurrent reload runs")
    if freshclam.get("TestDatabases", "yes").lower() != "no":
        found += memory_problem("freshclam", containers.get("freshclam"), CLAMAV_ENGINE_BYTES,
                                "it loads each downloaded database to test it")
    return found


def memory_problem(name: str, container: Mapping[str, Any] | None, needed: int, why: str) -> list[str]:
    if container is None:
        return []
    limit = quantity_bytes(((container.get("resources") or {}).get("limits") or {}).get("memory", "0"))
    if limit >= needed:
        return []
    return [f"clamd pod: the {name} container's memory limit {limit / 2**30:.2f} GiB is below the "
            f"{needed / 2**30:.1f} GiB it needs ({why}): it would be OOM-killed"]


def max_replicas(docs: list[Mapping[str, Any]], deployment: Mapping[str, Any]) -> int:
    """A Deployment's replicas, or its HorizontalPodAutoscaler's maxReplicas when one scales it."""
    for hpa in (d for d in docs if kind_of(d) == ("autoscaling", "HorizontalPodAutoscaler")):
        target = hpa["spec"]["scaleTargetRef"]
        if target.get("kind") == "Deployment" and target.get("name") == deployment["metadata"]["name"]:
            return int(hpa["spec"]["maxReplicas"])
    return int(deployment["spec"].get("replicas", 1))


# ---------------------------------------------------------------- reading manifests

def kind_of(doc: Mapping[str, Any]) -> tuple[str, str]:
    api_version = str(doc.get("apiVersion", ""))
    return (api_version.split("/", 1)[0] if "/" in api_version else ""), str(doc.get("kind", ""))


def only_container(pod_spec: Mapping[str, Any]) -> Mapping[str, Any]:
    (container,) = pod_spec["containers"]
    return container


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """Literal env values; a variable from a Secret or ConfigMap is present with an empty value."""
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}


def clamav_conf(text: str) -> dict[str, str]:
    options = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            options[key] = value.strip()
    return options


def clamav_bytes(text: str) -> int:
    """clamd.conf sizes: a number with an optional K or M suffix, in units of 1024 (clamd.conf(5))."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", text.strip())
    if not match:
        raise ValueError(f"not a clamd.conf size: {text!r}")
    return int(match[1]) * {"": 1, "k": 2**10, "m": 2**20}[match[2].lower()]


_QUANTITY_UNITS: Final = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(text: str) -> int:
    """A Kubernetes quantity of bytes ("512Mi", "3Gi", "1G")."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|Ki)?", str(text).strip())
    if not match:
        raise ValueError(f"not a Kubernetes byte quantity: {text!r}")
    return int(float(match[1]) * _QUANTITY_UNITS[match[2] or ""])


def iso8601_seconds(text: str) -> float:
    return parse_iso8601_duration(text).total_seconds()  # the broker's own parser of delivery durations
