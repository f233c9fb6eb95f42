"""No forged CloudEvent moves an upload: every receiver and the broker authenticate the sender.

As on a cluster with Knative's `authentication-oidc` (docs/deploy.md "Event authentication"): the
broker calls each function as the Trigger's service account, for the function's audience, and its
ingress takes events only from the senders its EventPolicy allows. Here the local broker does the
same with the local cluster issuer (dropgate_local.identity), and the functions verify with the very
code production runs (shared.platform.auth.EventSenderVerifier).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from cloudevents.conversion import to_binary

from dropgate_local.client import DropgateClient, call
from dropgate_local.devauth import DevSigningKey
from dropgate_local.identity import (
    EventPolicy,
    broker_admits,
    broker_audience,
    child_name,
    oidc_service_account,
    subscription_subject,
    trigger_subject,
)
from events.types import ObjectCreated, Ping
from shared.platform.auth import subject_allowed
from tests.test_manifests import knative_services, objects, render
from tests.test_pipeline import FINAL, dev_token  # noqa: F401 - the module's token fixture
from tests.test_presign import MIB, payload

NAMESPACE = "dropgate"
RECEIVERS = ("scan", "metadata", "expire", "reconcile")
ATTACKER = f"system:serviceaccount:{NAMESPACE}:some-other-pod"


# ---------------------------------------------------------------- Knative's naming, as its own tests state it

def test_service_account_names_follow_knative() -> None:
    # knative/eventing pkg/auth/serviceaccount_test.go
    assert oidc_service_account("group", "kind", "name") == "name-oidc-group-kind"
    assert oidc_service_account("eventing.knative.dev", "Broker", "my-Broker") == \
        "my-broker-oidc-eventing.knative.dev-broker"
    assert oidc_service_account("eventing.knative.dev", "Broker", "my-loooooooooooooooooooooooooooooooooooooog-Broker") \
        == "my-looooooooooooooooooooooooooo2dfc2a3825b8d82077b0f25518b36884"
    assert len(child_name("x" * 40, "-" + "y" * 40)) == 63


def test_subjects_match_as_event_policies_match() -> None:
    # pkg/auth/event_policy.go SubjectContained: exact (case-insensitive) or a trailing-* prefix.
    allowed = ["system:serviceaccount:ns:app", "system:serviceaccount:ns:other-*"]
    assert subject_allowed("system:serviceaccount:ns:app", allowed)
    assert subject_allowed("SYSTEM:serviceaccount:ns:APP", allowed)
    assert subject_allowed("system:serviceaccount:ns:other-1", allowed)
    assert not subject_allowed("system:serviceaccount:ns:OTHER-1", allowed)
    assert not subject_allowed("system:serviceaccount:ns:app2", allowed)
    assert not subject_allowed("system:serviceaccount:ns:othe", allowed)


# ---------------------------------------------------------------- the manifests say the same as the local stack

@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_receiver_allows_exactly_the_triggers_that_call_it(overlay: str) -> None:
    docs = render(overlay)
    services = knative_services(docs)
    for function in RECEIVERS:
        name = f"dropgate-{function}"
        env = {e["name"]: e.get("value") for e in services[name]["spec"]["template"]["spec"]["containers"][0]["env"]}
        triggers = [t for t in objects(docs, "Trigger") if t["spec"]["subscriber"]["ref"]["name"] == name]
        assert triggers, name
        # Knative Services announce no audience: without one on the Trigger the broker sends no token.
        assert {t["spec"]["subscriber"].get("audience") for t in triggers} == {env["DROPGATE_EVENT_AUDIENCE"]}
        expected = {trigger_subject(t["metadata"]["namespace"], t["metadata"]["name"]) for t in triggers}
        assert set(env["DROPGATE_EVENT_SENDERS"].split(",")) == expected, name
        assert all(t["metadata"]["namespace"] == NAMESPACE for t in triggers)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_broker_admits_its_own_senders_and_nobody_else(overlay: str) -> None:
    docs = render(overlay)
    policies = [EventPolicy.from_manifest(d, NAMESPACE) for d in objects(docs, "EventPolicy")]
    assert [p.to for p in policies] == [(("Broker", "dropgate"),)]
    services = knative_services(docs)
    bound = {b["spec"]["subject"]["name"] for b in objects(docs, "SinkBinding")}
    for name, service in services.items():
        env = {e["name"]: e.get("value") for e in service["spec"]["template"]["spec"]["containers"][0]["env"]}
        # A function that sends to the broker has a SinkBinding, which mounts the token it presents.
        assert (env.get("DROPGATE_SINK_TOKEN_FILE") == "/oidc/token") == (name in bound), name
    from dropgate_local.identity import ping_source_subject, sink_binding_subject

    allowed = [sink_binding_subject(NAMESPACE, b["metadata"]["name"]) for b in objects(docs, "SinkBinding")]
    allowed += [ping_source_subject(NAMESPACE, p["metadata"]["name"]) for p in objects(docs, "PingSource")]
    allowed += [subscription_subject(NAMESPACE, "dropgate", t["metadata"]["name"]) for t in objects(docs, "Trigger")]
    allowed.append(f"system:serviceaccount:{NAMESPACE}:dropgate-operator")
    assert all(broker_admits(policies, "dropgate", NAMESPACE, s) for s in allowed)
    refused = [ATTACKER, trigger_subject(NAMESPACE, "dropgate-scan-put"), f"system:serviceaccount:{NAMESPACE}:default",
               "system:serviceaccount:other-namespace:dropgate-dropgate-x"]
    assert not any(broker_admits(policies, "dropgate", NAMESPACE, s) for s in refused)


# ---------------------------------------------------------------- forged events, live

def forged_tokens(stack, audience: str, allowed_subject: str) -> dict[str, tuple[str | None, int]]:
    """Each way a sender can be wrong, with the status Knative's verifier answers it with."""
    impostor = DevSigningKey.load_or_create(stack.data_dir / "impostor-oidc")
    issuer = stack.cluster_issuer
    return {
        "no token": (None, 401),
        "expired": (issuer.mint(allowed_subject, audience, ttl_seconds=-3600), 401),
        "another audience": (issuer.mint(allowed_subject, audience + "-other"), 401),
        "another issuer's key": (impostor.mint(subject=allowed_subject, roles=[], issuer=issuer.issuer,
                                               audience=audience), 401),
        "a user's token": (DevSigningKey.load_or_create(stack.data_dir / "dev-oidc").mint(
            subject=allowed_subject, roles=["admin"], issuer=f"http://127.0.0.1:{stack.ports.dev_oidc}/dev-oidc",
            audience=audience), 401),
        "a sender not allowed": (issuer.mint(ATTACKER, audience), 403),
    }


def post(url: str, event, token: str | None):  # noqa: ANN001, ANN201 - a CloudEvent; a Reply
    headers, body = to_binary(event)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return call("POST", url, data=body, headers=headers, timeout=60)


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the function's /metrics samples of `name` that carry these labels."""
    text = call("GET", f"{url}/metrics").body.decode()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
               if x.startswith(name + "{") and all(w in x for w in wanted))


def refused_count(url: str, status: int) -> float:
    return metric(url, "dropgate_events_refused_total", status=str(status))


def row(database_url: str, upload_id: str) -> dict:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT status, stored_size, storage_sequencer, scan_verdict FROM uploads WHERE id = %s",
                            (upload_id,)).fetchone()


def test_forged_object_created_moves_nothing_and_the_owner_still_finishes(
        running_functions, stack, database_url, dev_token) -> None:  # noqa: F811 - the fixture
    presign, token = running_functions["presign"], dev_token("event-auth-owner")
    owner = DropgateClient(presign, token)
    data = payload(6 * MIB, seed=181)
    created = owner.create(filename="real.bin", size=len(data))
    assert created.status == 201, created.body
    record = created.json()
    before = row(database_url, record["id"])
    assert before["status"] == "pending"
    forged = ObjectCreated(id=uuid.uuid4().hex, event_name="ObjectCreated:CompleteMultipartUpload",
                           event_source="minio:s3", region="", bucket=stack.storage_settings().uploads_bucket,
                           key=record["key"], time=datetime.now(UTC), size=len(data)).to_cloudevent()
    trigger = {"scan": "dropgate-scan-multipart", "metadata": "dropgate-metadata-uploads-multipart"}
    for function, trigger_name in trigger.items():
        url = running_functions[function]
        audience = stack.identities[f"dropgate-{function}"].audience
        for how, (forged_token, status) in forged_tokens(stack, audience, trigger_subject(NAMESPACE, trigger_name)).items():
            counted = refused_count(url, status)
            answer = post(url, forged, forged_token)
            assert answer.status == status, (function, how, answer.status, answer.body)
            assert answer.json()["error"] in ("unauthorized", "forbidden") and answer.json()["detail"]
            # Nothing the sender wrote is echoed into a header (a bad `alg` or `kid` used to be).
            assert answer.headers.get("WWW-Authenticate") in (None, 'Bearer error="invalid_token"')
            assert refused_count(url, status) == counted + 1, (function, how)
    broker = f"http://127.0.0.1:{stack.ports.router}/"
    for how, (forged_token, status) in forged_tokens(stack, broker_audience(NAMESPACE, "dropgate"),
                                                      f"system:serviceaccount:{NAMESPACE}:dropgate-operator").items():
        answer = post(broker, forged, forged_token)
        assert answer.status == status, ("broker", how, answer.status, answer.body)
    assert row(database_url, record["id"]) == before  # nothing moved: still pending, no facts recorded
    # The owner's real upload then completes (storage really completes it) and ends clean.
    etags, _ = owner.upload_parts(record, data)
    done = owner.complete(record["id"], etags)
    assert done.status == 200, done.body
    final = owner.wait_for(record["id"], FINAL, timeout=180)
    assert final["status"] == "clean"
    link = owner.download_link(record["id"])
    assert link.status == 200 and len(call("GET", link.json()["url"]).body) == len(data)


@pytest.mark.parametrize("function", ["expire", "reconcile"])
def test_a_forged_ping_runs_no_pass(running_functions, stack, function: str) -> None:
    url = running_functions[function]
    audience = stack.identities[f"dropgate-{function}"].audience
    ping = Ping(id=uuid.uuid4().hex, source=f"/apis/v1/namespaces/{NAMESPACE}/pingsources/dropgate-{function}",
                time=datetime.now(UTC), task=function).to_cloudevent()
    def passes_run() -> float:
        return metric(url, "dropgate_events_received_total", type="dev.knative.sources.ping", status="200")

    passes = passes_run()
    for how, (forged_token, status) in forged_tokens(
            stack, audience, trigger_subject(NAMESPACE, f"dropgate-{function}-ping")).items():
        answer = post(url, ping, forged_token)
        assert answer.status == status, (how, answer.status, answer.body)
    assert passes_run() == passes  # refused before the event was even read: no pass ran
    # The Trigger's own token is taken: the same ping then runs one pass.
    accepted = post(url, ping, stack.event_token(function))
    assert accepted.status == 200, accepted.body
    assert passes_run() == passes + 1


def test_dropgate_dev_mints_what_the_broker_sends(running_functions, stack, capsys) -> None:
    import jwt

    from dropgate_local.cli import main

    assert main(["--data-dir", str(stack.data_dir), "event-token", "scan"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["aud"], claims["sub"]) == ("dropgate-scan", trigger_subject(NAMESPACE, "dropgate-scan-put"))
    event = ObjectCreated(id=uuid.uuid4().hex, event_name="ObjectCreated:Put", event_source="minio:s3", region="",
                          bucket="not-dropgates", key="k", time=datetime.now(UTC)).to_cloudevent()
    assert post(running_functions["scan"], event, token).status == 204  # accepted; a foreign bucket is ignored


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_metrics_ask_for_a_token_in_every_overlay(overlay: str) -> None:
    """/metrics answers through the same ingress as the API: no overlay leaves it public."""
    for name, service in knative_services(render(overlay)).items():
        env = {e["name"]: e for e in service["spec"]["template"]["spec"]["containers"][0]["env"]}
        source = env["DROPGATE_METRICS_TOKEN"].get("valueFrom", {}).get("secretKeyRef", {})
        assert (source.get("name"), source.get("key"), source.get("optional", False)) == \
            ("dropgate-metrics", "token", False), name


def test_complete_asks_storage_whatever_the_row_says(running_functions, stack, database_url,
                                                     dev_token) -> None:  # noqa: F811 - the fixture
    """Defence in depth: had an event that was not storage's moved the row, completion still completes."""
    owner = DropgateClient(running_functions["presign"], dev_token("event-auth-repair"))
    data = payload(6 * MIB, seed=182)
    record = owner.create(filename="moved.bin", size=len(data)).json()
    etags, _ = owner.upload_parts(record, data)
    with psycopg.connect(database_url, autocommit=True) as conn:  # what the forged event used to do
        conn.execute("UPDATE uploads SET status = 'uploaded' WHERE id = %s", (record["id"],))
    done = owner.complete(record["id"], etags)
    assert done.status == 200, done.body
    with psycopg.connect(database_url) as conn:
        (audited,) = conn.execute("SELECT detail FROM audit_log WHERE upload_id = %s"
                                  " AND action = 'upload.state_disagreed_with_storage'", (record["id"],)).fetchone()
    assert audited == {"status": "uploaded", "parts_in_storage": record["part_count"]}
    final = owner.wait_for(record["id"], FINAL, timeout=180)
    assert final["status"] == "clean"  # storage really completed it, so the pipeline scanned it
    assert len(call("GET", owner.download_link(record["id"]).json()["url"]).body) == len(data)
    again = owner.complete(record["id"], etags)  # a retry now finds storage done: the same answer
    assert again.status == 200 and again.json()["status"] == "clean"


def _allowed_names(rule: dict) -> set[str]:
    (source,) = rule["from"]
    (expression,) = source["podSelector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("app.kubernetes.io/name", "In")
    return set(expression["values"])


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_network_policies_admit_only_who_needs_each_pod(overlay: str) -> None:
    """Derived from the manifests themselves: who has clamd's address, who has a database URL."""
    docs = render(overlay)
    policies = {p["metadata"]["name"]: p["spec"] for p in objects(docs, "NetworkPolicy")}
    services = knative_services(docs)

    def template_name(service: dict) -> str:
        return service["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]

    def env_names(container: dict) -> set[str]:
        return {e["name"] for e in container.get("env", [])}

    functions = policies["dropgate-functions"]
    (selector,) = functions["podSelector"]["matchExpressions"]
    assert set(selector["values"]) == {template_name(s) for s in services.values()}
    (rule,) = functions["ingress"]
    (source,) = rule["from"]
    assert "podSelector" not in source  # nothing from this namespace directly, only Knative's data plane
    assert set(source["namespaceSelector"]["matchExpressions"][0]["values"]) >= {"knative-serving",
                                                                               "knative-eventing"}
    clamd_users = {template_name(s) for s in services.values()
                   if "DROPGATE_CLAMD_ADDRESS" in env_names(s["spec"]["template"]["spec"]["containers"][0])}
    (clamd_rule,) = policies["dropgate-clamd"]["ingress"]
    assert _allowed_names(clamd_rule) == clamd_users == {"dropgate-scan", "dropgate-reconcile"}
    assert clamd_rule["ports"] == [{"protocol": "TCP", "port": 3310}]
    if overlay == "dev":
        database_users = {template_name(s) for s in services.values()
                          if "DATABASE_URL" in env_names(s["spec"]["template"]["spec"]["containers"][0])}
        # The dead-letter JobSink's Jobs record each dead letter in the database too.
        database_users |= {sink["spec"]["job"]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                           for sink in objects(docs, "JobSink")
                           if "DATABASE_URL" in env_names(sink["spec"]["job"]["spec"]["template"]["spec"]["containers"][0])}
        (postgres_rule,) = policies["dropgate-postgres"]["ingress"]
        assert _allowed_names(postgres_rule) == database_users | {"dropgate-migrate"}
    else:
        assert "dropgate-postgres" not in policies  # production's database lives elsewhere
