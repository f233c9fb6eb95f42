"""Every rendered overlay against the platform's real rules (local-dev/platform_limits.py).

A Service above Knative's default timeout ceiling is refused at admission; a pass that
answers after the queue-proxy's response-start timeout is cut off and retried forever;
more database connections than PostgreSQL has, or more scans than clamd has threads,
fail under load. Each rule is also shown catching the breach it exists for.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dropgate_local.platform_limits import (
    MAX_REVISION_TIMEOUT_SECONDS,
    ServiceTimeouts,
    clamav_bytes,
    problems,
    quantity_bytes,
)
from tests.test_manifests import container, knative_services, named, render


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_overlay_runs_within_the_platforms_defaults(overlay: str) -> None:
    assert problems(render(overlay)) == []


def _service(docs: list[dict], name: str) -> dict:
    return knative_services(docs)[name]


def _set_env(docs: list[dict], service: str, variable: str, value: str) -> None:
    env = container(_service(docs, service))["env"]
    (entry,) = [e for e in env if e["name"] == variable]
    entry["value"] = value


def _clamd(docs: list[dict]) -> dict:
    return named(docs, "Deployment", "dropgate-clamd")


def _clamd_container(docs: list[dict], name: str) -> dict:
    (found,) = [c for c in _clamd(docs)["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def _scale(docs: list[dict], service: str, max_scale: int) -> None:
    annotations = _service(docs, service)["spec"]["template"]["metadata"]["annotations"]
    annotations["autoscaling.knative.dev/max-scale"] = str(max_scale)


def _tmp_volume(docs: list[dict]) -> dict:
    (tmp,) = [v for v in _clamd(docs)["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp"]
    return tmp


# What the manifests held before the limits were checked (issue #19), one breach each.
BREACHES: dict[str, tuple[Callable[[list[dict]], None], str]] = {
    "scan timeout 900 s": (
        lambda d: _service(d, "dropgate-scan")["spec"]["template"]["spec"].update(timeoutSeconds=900),
        "Service dropgate-scan: timeoutSeconds 900 is outside Knative's max-revision-timeout-seconds (600)"),
    "response start beyond the timeout": (
        lambda d: _service(d, "dropgate-metadata")["spec"]["template"]["spec"].update(
            responseStartTimeoutSeconds=120),
        "Service dropgate-metadata: responseStartTimeoutSeconds 120 exceeds its timeoutSeconds 60"),
    "expire budget of 600 s behind a 300 s answer": (
        lambda d: _set_env(d, "dropgate-expire", "DROPGATE_EXPIRE_TIME_BUDGET", "600"),
        "Service dropgate-expire: DROPGATE_EXPIRE_TIME_BUDGET 600 s + 60 s to finish exceeds the 300 s"),
    "a pass budget beyond the response-start default": (
        # timeoutSeconds 600 alone leaves responseStartTimeoutSeconds at Knative's 300: a 280 s pass is cut.
        lambda d: (_service(d, "dropgate-reconcile")["spec"]["template"]["spec"].update(timeoutSeconds=600),
                   _set_env(d, "dropgate-reconcile", "DROPGATE_RECONCILE_TIME_BUDGET", "280")),
        "Service dropgate-reconcile: DROPGATE_RECONCILE_TIME_BUDGET 280 s + 60 s to finish exceeds the 300 s"),
    "trigger timeout PT15M": (
        lambda d: named(d, "Trigger", "dropgate-scan-put")["spec"]["delivery"].update(timeout="PT15M"),
        "Trigger dropgate-scan-put: delivery.timeout PT15M (900 s) exceeds the 600 s"),
    "16 connections per presign pod at 50 pods": (
        lambda d: (_set_env(d, "dropgate-presign", "DROPGATE_DB_POOL_MAX", "16"), _scale(d, "dropgate-presign", 50)),
        "database connections: at max-scale the functions may open"),
    "pool larger than the threads": (
        lambda d: _set_env(d, "dropgate-scan", "DROPGATE_DB_POOL_MAX", "8"),
        "Service dropgate-scan: DROPGATE_DB_POOL_MAX 8 > THREADS 4"),
    "40 scans for 8 clamd threads": (
        lambda d: _scale(d, "dropgate-scan", 20),
        "clamd: 40 scans in flight at most (dropgate-scan 20×2) but 2×4 clamd threads"),
    "clamd /tmp of 3Gi": (
        lambda d: _tmp_volume(d)["emptyDir"].update(sizeLimit="3Gi"),
        "clamd: /tmp holds 3.0 GiB; 4 threads"),
    "freshclam at 512Mi": (
        lambda d: _clamd_container(d, "freshclam")["resources"]["limits"].update(memory="512Mi"),
        "clamd pod: the freshclam container's memory limit 0.50 GiB is below the 1.5 GiB"),
    "clamd without room for a reload": (
        lambda d: _clamd_container(d, "clamd")["resources"]["limits"].update(memory="2Gi"),
        "clamd pod: the clamd container's memory limit 2.00 GiB is below the 3.0 GiB"),
    "unbounded concurrency": (
        lambda d: _service(d, "dropgate-metadata")["spec"]["template"]["spec"].update(containerConcurrency=0),
        "Service dropgate-metadata: containerConcurrency 0 must be 1"),
}


@pytest.mark.parametrize("breach", list(BREACHES))
def test_each_rule_catches_its_breach(breach: str) -> None:
    docs = render("prod")
    apply, expected = BREACHES[breach]
    apply(docs)
    found = problems(docs)
    assert any(p.startswith(expected) for p in found), found


def test_an_hpa_on_clamd_counts_its_maximum() -> None:
    docs = render("prod")
    _scale(docs, "dropgate-scan", 8)
    assert any(p.startswith("clamd: 16 scans") for p in problems(docs))
    docs.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                 "metadata": {"name": "dropgate-clamd"},
                 "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dropgate-clamd"},
                          "minReplicas": 2, "maxReplicas": 4}})
    assert not any(p.startswith("clamd:") and "scans" in p for p in problems(docs))


def test_knative_fills_in_the_timeouts_a_service_leaves_out() -> None:
    def service(**spec: int) -> dict:
        return {"spec": {"template": {"spec": spec}}}
    assert ServiceTimeouts.of(service()) == ServiceTimeouts(300, 300)
    assert ServiceTimeouts.of(service(timeoutSeconds=60)) == ServiceTimeouts(60, 60)
    assert ServiceTimeouts.of(service(timeoutSeconds=600)) == ServiceTimeouts(600, 300)
    assert ServiceTimeouts.of(service(timeoutSeconds=600, responseStartTimeoutSeconds=600)).answer_within_seconds \
        == MAX_REVISION_TIMEOUT_SECONDS


@pytest.mark.parametrize(("text", "size"), [("512Mi", 512 * 2**20), ("20Gi", 20 * 2**30), ("1G", 10**9),
                                            ("1.5Gi", 3 * 2**29), ("64Ki", 65536)])
def test_kubernetes_quantities(text: str, size: int) -> None:
    assert quantity_bytes(text) == size


@pytest.mark.parametrize(("text", "size"), [("1100M", 1100 * 2**20), ("100K", 102400), ("4096", 4096)])
def test_clamd_sizes(text: str, size: int) -> None:
    assert clamav_bytes(text) == size


def test_production_events_survive_a_restart_on_the_kafka_broker() -> None:
    prod, dev = render("prod"), render("dev")
    broker = named(prod, "Broker", "dropgate")
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"
    reference = broker["spec"]["config"]
    config = named(prod, "ConfigMap", reference["name"])
    assert (reference["kind"], reference["namespace"]) == ("ConfigMap", config["metadata"]["namespace"])
    assert config["data"]["bootstrap.servers"]
    assert int(config["data"]["default.topic.replication.factor"]) >= 3, "one lost Kafka broker loses no event"
    assert int(config["data"]["default.topic.partitions"]) >= 1
    # The dev overlay, which the local broker models, keeps the in-memory channel broker.
    assert named(dev, "Broker", "dropgate")["metadata"]["annotations"]["eventing.knative.dev/broker.class"] \
        == "MTChannelBasedBroker"
