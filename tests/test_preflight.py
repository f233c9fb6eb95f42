"""`dropgate-dev preflight` (local-dev/preflight.py): what the overlays need, and how a cluster is judged.

No Kubernetes cluster can run here. The ClusterState values below are not mocks of a component:
they describe a cluster's state as `kubectl get -o json` returns it (CRD names and served versions,
the data of Knative's ConfigMaps, Deployment names, Secret key names), and `evaluate` is pure logic
over them. The requirements come from the real renders of manifests/overlays, and the command runs
for real, as a subprocess, against no cluster and against an API server address that refuses.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dropgate_local.preflight import ClusterState, Requirements, evaluate, requirements
from dropgate_local.router import load_manifests

ROOT = Path(__file__).resolve().parents[1]
KNATIVE_CRDS = {"services.serving.knative.dev", "brokers.eventing.knative.dev", "triggers.eventing.knative.dev",
                "pingsources.sources.knative.dev", "sinkbindings.sources.knative.dev",
                "eventtypes.eventing.knative.dev", "jobsinks.sinks.knative.dev", "eventpolicies.eventing.knative.dev"}
PROD_SECRETS = {"dropgate-s3": {"access-key", "secret-key"}, "dropgate-database": {"DATABASE_URL"},
                "dropgate-webhook": {"token"}, "dropgate-metrics": {"token"},
                "dropgate-minio-setup-user": {"user", "password"}}
OIDC = "knative-eventing/config-features authentication-oidc"


@pytest.fixture(scope="module")
def prod() -> Requirements:
    return requirements(load_manifests(ROOT / "manifests" / "overlays" / "prod"), "prod")


@pytest.fixture(scope="module")
def dev() -> Requirements:
    return requirements(load_manifests(ROOT / "manifests" / "overlays" / "dev"), "dev")


def upstream_cluster(needs: Requirements) -> ClusterState:
    """Knative as it ships: config-defaults and Serving's config-features hold only `_example` (documentation,
    never applied), Eventing's config-features its shipped flags (here without authentication-oidc, so its
    built-in default applies: disabled). Every CRD the overlay uses is served; the channel broker is
    installed but not eventing-kafka-broker; one Secret lacks a key."""
    secrets = {name: set(keys) for name, keys in PROD_SECRETS.items()}
    secrets["dropgate-s3"] = {"access-key"}
    return ClusterState(
        crds=set(needs.crds) | {"parallels.flows.knative.dev"},
        crd_versions={name: set(versions) | {"v1"} for name, versions in needs.crds.items()},
        config_maps={
            "knative-serving/config-defaults": {"_example": '# revision-timeout-seconds: "300"\n'
                                                            'max-revision-timeout-seconds: "600"\n'
                                                            'container-concurrency-max-limit: "1000"\n'},
            "knative-serving/config-features": {"_example": 'kubernetes.podspec-volumes-emptydir: "enabled"\n'},
            "knative-eventing/config-features": {"kreference-group": "disabled", "delivery-retryafter": "disabled",
                                                 "delivery-timeout": "enabled", "new-trigger-filters": "enabled",
                                                 "transport-encryption": "disabled"}},
        deployments={"knative-eventing/eventing-controller", "knative-eventing/eventing-webhook",
                     "knative-eventing/mt-broker-ingress", "knative-eventing/mt-broker-filter",
                     "knative-eventing/mt-broker-controller"},
        secrets={**secrets, "default-token": set()},
        namespace_exists=True)


def prepared_cluster(needs: Requirements) -> ClusterState:
    state = upstream_cluster(needs)
    state.config_maps["knative-eventing/config-features"]["authentication-oidc"] = "enabled"
    state.deployments |= {"knative-eventing/kafka-controller", "knative-eventing/kafka-broker-receiver"}
    state.secrets["dropgate-s3"] = {"access-key", "secret-key"}
    return state


def failures(needs: Requirements, state: ClusterState) -> dict[str, str]:
    return {f.what: f.detail for f in evaluate(needs, state) if not f.ok}


# ---------------------------------------------------------------- what the overlays need

def test_prod_needs_knative_s_crds_features_kafka_and_its_secrets(prod) -> None:
    assert KNATIVE_CRDS <= set(prod.crds)
    assert not [name for name in prod.crds if name.split(".", 1)[1] in ("policy", "apps", "batch")]  # PDB is core
    assert prod.crds["eventtypes.eventing.knative.dev"] == {"v1beta3"}
    assert prod.namespace == "dropgate"
    features = {(f.config_map, f.key): f for f in prod.features}
    assert features["knative-eventing/config-features", "authentication-oidc"].must_be_enabled
    assert not features["knative-eventing/config-features", "delivery-timeout"].must_be_enabled
    assert ("knative-serving/config-features", "kubernetes.podspec-volumes-emptydir") in features
    assert prod.broker_classes == {"Kafka"}
    assert "knative-eventing/kafka-controller" in prod.deployments
    assert {name: set(keys) for name, keys in prod.secrets.items()} == PROD_SECRETS
    limits = {limit.key: limit for limit in prod.limits}
    assert limits["max-revision-timeout-seconds"].needed == 600  # scan's timeoutSeconds
    assert limits["max-revision-timeout-seconds"].who == "dropgate-scan"
    assert 0 < limits["container-concurrency-max-limit"].needed <= 1000


def test_dev_needs_the_channel_broker_and_none_of_the_secrets_it_generates(dev) -> None:
    assert dev.broker_classes == {"MTChannelBasedBroker"}
    assert set(dev.deployments) == {"knative-eventing/mt-broker-ingress"}
    assert not set(dev.secrets) & (set(PROD_SECRETS) | {"dropgate-postgres"})
    assert KNATIVE_CRDS <= set(dev.crds)


# ---------------------------------------------------------------- judging a cluster

def test_an_upstream_knative_fails_exactly_on_oidc_kafka_and_the_missing_key(prod) -> None:
    failed = failures(prod, upstream_cluster(prod))
    assert len(failed) == 3, failed
    oidc = next(detail for what, detail in failed.items() if what.startswith(OIDC))
    assert "absent: upstream default" in oidc
    assert "set authentication-oidc: enabled in knative-eventing/config-features" in oidc
    kafka = failed["Deployment knative-eventing/kafka-controller (Broker class Kafka)"]
    assert "install eventing-kafka-broker" in kafka
    s3 = failed["Secret dropgate/dropgate-s3 with keys access-key, secret-key"]
    assert "lacks secret-key" in s3 and "kubectl -n dropgate edit secret dropgate-s3" in s3


def test_a_prepared_cluster_passes_every_check(prod, dev) -> None:
    findings = evaluate(prod, prepared_cluster(prod))
    assert findings and all(f.ok for f in findings), [f for f in findings if not f.ok]
    assert all(f.ok for f in evaluate(dev, dev_ready(dev)))


def dev_ready(dev: Requirements) -> ClusterState:
    """The channel broker is installed upstream; the dev overlay creates its namespace and Secrets itself."""
    state = upstream_cluster(dev)
    state.config_maps["knative-eventing/config-features"]["authentication-oidc"] = "enabled"
    state.secrets, state.namespace_exists = {}, False
    return state


@pytest.mark.parametrize(("config_map", "key", "value", "advice"), [
    ("knative-serving/config-defaults", "max-revision-timeout-seconds", "300",
     'set max-revision-timeout-seconds: "600" in knative-serving/config-defaults'),
    ("knative-eventing/config-features", "delivery-timeout", "disabled",
     "set delivery-timeout: enabled in knative-eventing/config-features"),
    ("knative-serving/config-features", "kubernetes.podspec-volumes-emptydir", "disabled",
     "set kubernetes.podspec-volumes-emptydir: enabled in knative-serving/config-features"),
])
def test_a_setting_below_what_the_overlay_needs_fails_with_its_fix(prod, config_map, key, value, advice) -> None:
    state = prepared_cluster(prod)
    state.config_maps[config_map] = {**state.config_maps[config_map], key: value}
    (detail,) = failures(prod, state).values()
    assert advice in detail


def test_missing_or_outdated_crds_and_unreadable_secrets_fail(prod) -> None:
    state = prepared_cluster(prod)
    state.crds.discard("jobsinks.sinks.knative.dev")
    state.crd_versions["eventtypes.eventing.knative.dev"] = {"v1beta2"}
    state.secrets, state.unread["secrets"] = {}, "Forbidden: cannot list resource secrets"
    failed = failures(prod, state)
    assert "Knative Eventing ≥ 1.14" in failed["CRD jobsinks.sinks.knative.dev (v1alpha1)"]
    assert "does not serve v1beta3" in failed["CRD eventtypes.eventing.knative.dev (v1beta3)"]
    assert sum("could not list Secrets: Forbidden" in d for d in failed.values()) == len(PROD_SECRETS)
    assert len(failed) == 2 + len(PROD_SECRETS)


def test_prod_without_its_namespace_says_to_create_it_first(prod) -> None:
    state = prepared_cluster(prod)
    state.namespace_exists, state.secrets = False, {}
    failed = failures(prod, state)
    assert "kubectl create namespace dropgate" in failed["namespace dropgate"]
    assert "kubectl -n dropgate create secret generic dropgate-webhook --from-literal=token=…" in \
        failed["Secret dropgate/dropgate-webhook with keys token"]


# ---------------------------------------------------------------- the command, without a cluster

def preflight(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dropgate_local.cli", "preflight", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_without_a_kubeconfig_it_lists_the_checks_and_exits_0(tmp_path) -> None:
    done = preflight("--kubeconfig", str(tmp_path / "no-such-kubeconfig"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("not checked: no reachable cluster (no kubeconfig at ")
    for check in ("CRD jobsinks.sinks.knative.dev", "authentication-oidc enabled", "delivery-timeout not disabled",
                  "Deployment knative-eventing/kafka-controller",
                  "Secret dropgate/dropgate-minio-setup-user with keys password, user"):
        assert any(check in line for line in lines), f"{check} not listed:\n{done.stdout}"
    assert "FAIL" not in done.stdout


def test_an_api_server_that_refuses_is_no_reachable_cluster(tmp_path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: c, context: {{cluster: c, user: u}}}}]
current-context: c
""")
    done = preflight("--kubeconfig", str(kubeconfig), "--overlay", "dev")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("not checked: no reachable cluster (kubectl version")
    assert "Deployment knative-eventing/mt-broker-ingress (Broker class MTChannelBasedBroker)" in done.stdout
    assert "Secret " not in done.stdout
