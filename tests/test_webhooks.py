"""Signed webhooks (docs/webhooks.md), against the real stack: PostgreSQL, the local broker routing by the
dev overlay's Triggers, presign's admin API and the webhooks function as their own processes.

The receivers are real HTTP servers on 127.0.0.1 that verify each delivery with the Standard Webhooks
library's own verifier (`standardwebhooks.Webhook(secret).verify`), as a subscriber would.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from cloudevents.conversion import to_binary
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from dropgate_local.client import DropgateClient, call
from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.identity import trigger_subject
from dropgate_local.processes import free_port
from events.types import (
    SCAN_CLEAN,
    SCAN_INFECTED,
    SCAN_REJECTED,
    SCAN_UNSCANNABLE,
    PassCompleted,
    ScanVerdict,
)
from shared.platform.delivery import EventSink
from shared.platform.egress import EgressPolicy, EgressRefused, address_refusal
from shared.platform.env import EnvReader
from shared.platform.settings_webhooks import WebhookSettings
from shared.webhooks.model import PUBLIC_EVENT_TYPES, message_id
from tests.test_manifests import knative_services, objects, render
from tests.test_pipeline import FINAL
from tests.test_presign import MIB, payload

# ---------------------------------------------------------------------------------------------- pure rules


def test_addresses_outside_the_public_internet_are_refused_unless_allowed() -> None:
    refused = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1", "fe80::1",
               "fd00:ec2::254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "::ffff:127.0.0.1"]
    for text in refused:
        assert address_refusal(ipaddress.ip_address(text), ()) is not None, text
    assert "link-local" in address_refusal(ipaddress.ip_address("169.254.169.254"), ())
    assert address_refusal(ipaddress.ip_address("93.184.215.14"), ()) is None
    loopback = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), loopback) is None
    assert address_refusal(ipaddress.ip_address("::ffff:127.0.0.1"), loopback) is None
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), loopback) is not None


def test_settings_default_to_the_spec_schedule_and_refuse_nonsense() -> None:
    env = EnvReader({})
    settings = WebhookSettings.read(env)
    assert not env.problems and settings.require_https and settings.allowed_networks == ()
    assert settings.retry_delays_seconds == (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    assert settings.max_attempts == 10
    env = EnvReader({"DROPGATE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,nonsense",
                     "DROPGATE_WEBHOOK_RETRY_SCHEDULE": "5s,0m,x"})
    WebhookSettings.read(env)
    assert len(env.problems) == 3, env.problems


def test_the_webhooks_triggers_cover_the_public_types_and_its_senders_are_theirs() -> None:
    for overlay in ("dev", "prod"):
        docs = render(overlay)
        triggers = [t for t in objects(docs, "Trigger") if t["spec"]["subscriber"]["ref"]["name"] == "dropgate-webhooks"]
        types = {t["spec"]["filter"]["attributes"]["type"] for t in triggers}
        assert types == {*PUBLIC_EVENT_TYPES, "dev.knative.sources.ping"}, overlay
        env = {e["name"]: e.get("value") for e in
               knative_services(docs)["dropgate-webhooks"]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert set(env["DROPGATE_EVENT_SENDERS"].split(",")) == {trigger_subject("dropgate", t["metadata"]["name"])
                                                                  for t in triggers}
        assert {t["spec"]["subscriber"]["audience"] for t in triggers} == {env["DROPGATE_EVENT_AUDIENCE"]}


# ---------------------------------------------------------------------------------------------- a receiver


class Receiver:
    """A webhook receiver on 127.0.0.1 that can go down and come back on the same port."""

    def __init__(self, status: int = 204, headers: dict[str, str] | None = None):
        self.port = free_port()
        self.status = status
        self.headers = dict(headers or {})
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/dropgate?x=1"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def deliveries_of(self, webhook_id: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.received if h.get("webhook-id") == webhook_id]

    def wait_for(self, webhook_id: str, count: int = 1, timeout: float = 60, sweep=None) -> list:
        deadline = time.monotonic() + timeout
        while len(self.deliveries_of(webhook_id)) < count:
            assert time.monotonic() < deadline, f"{webhook_id} not received {count} times"
            if sweep:
                sweep()
            time.sleep(1.0 if sweep else 0.2)
        return self.deliveries_of(webhook_id)


def verified(secret: str, delivery: tuple[dict[str, str], bytes]) -> dict:
    headers, body = delivery
    return Webhook(secret).verify(body, headers)


# ---------------------------------------------------------------------------------------------- the stack


@pytest.fixture(scope="module")
def admin(stack, running_functions):
    key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
    issuer = issuer_url("127.0.0.1", stack.ports.dev_oidc)
    return {"admin": key.mint(subject="admin-webhooks", roles=["admin"], issuer=issuer),
            "uploader": key.mint(subject=f"owner-{uuid.uuid4().hex[:8]}", roles=["uploader"], issuer=issuer)}


@pytest.fixture
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def endpoints(running_functions, admin):
    """Registers endpoints through the admin API; deletes them after the module (nothing is sent to them then)."""
    made = []

    def register(url: str, event_types: list[str] | None = None, presign: str | None = None) -> dict:
        body = {"url": url, **({"event_types": event_types} if event_types is not None else {})}
        answer = call("POST", f"{presign or running_functions['presign']}/admin/webhooks", json_body=body,
                      token=admin["admin"])
        assert answer.status == 201, answer.body
        made.append(answer.json()["id"])
        return answer.json()
    yield register
    for endpoint_id in made:
        call("DELETE", f"{running_functions['presign']}/admin/webhooks/{endpoint_id}", token=admin["admin"])


def publish(stack, verdict: str = "clean", *, at: datetime | None = None) -> tuple[ScanVerdict, str]:
    """A scan verdict into the broker's ingress as the operator account (the EventPolicy admits it); its webhook-id."""
    upload_id = uuid.uuid4()
    event = ScanVerdict(id=f"{upload_id}.scan", source="dropgate/scan", time=at or datetime.now(UTC),
                        upload_id=upload_id, verdict=verdict, bucket="dropgate-uploads", key=f"k/{upload_id}",
                        size=3, sha256="a" * 64, signature="Eicar-Test-Signature" if verdict == "infected" else None,
                        reason="refused by the content policy" if verdict in ("rejected", "unscannable") else None)
    EventSink(f"http://127.0.0.1:{stack.ports.router}/", token_file=str(stack.operator_token_file())).send(
        event.to_cloudevent())
    return event, message_id(event.source, event.id)


def fire_sweep(stack) -> None:
    call("POST", f"http://127.0.0.1:{stack.ports.router}/pingsources/dropgate-webhooks")


def delivery(database_url: str, endpoint_id: str, webhook_id: str) -> dict | None:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT state, attempts, last_status, last_error, next_attempt_at FROM webhook_deliveries"
                            " WHERE endpoint_id = %s AND message_id = %s", (endpoint_id, webhook_id)).fetchone()


def wait_for_row(database_url: str, endpoint_id: str, webhook_id: str, done, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not ((row := delivery(database_url, endpoint_id, webhook_id)) and done(row)):
        assert time.monotonic() < deadline, row
        time.sleep(0.3)
    return row


def audit_actions(database_url: str, endpoint_id: str) -> list[tuple[str, dict]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT action, detail FROM audit_log WHERE detail->>'endpoint_id' = %s ORDER BY id",
                            (endpoint_id,)).fetchall()


# ---------------------------------------------------------------------------------------------- delivery


def test_a_verdict_reaches_the_receiver_signed_and_a_tampered_copy_fails(stack, endpoints, receiver) -> None:
    endpoint = endpoints(receiver.url, [SCAN_CLEAN])
    assert endpoint["secret"].startswith("whsec_") and len(Webhook(endpoint["secret"])._whsecret) == 32
    event, webhook_id = publish(stack)
    [(headers, body)] = receiver.wait_for(webhook_id)
    payload_ = verified(endpoint["secret"], (headers, body))
    assert payload_["type"] == SCAN_CLEAN and payload_["data"] == event.data() and payload_["id"] == event.id
    assert payload_["timestamp"] == event.to_cloudevent()["time"] and abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert "." not in headers["webhook-id"] and len(headers["webhook-signature"].split(" ")) == 1
    tampered = body.replace(b'"verdict":"clean"', b'"verdict":"infected"')
    assert tampered != body
    for wrong in ((headers, tampered), ({**headers, "webhook-id": webhook_id + "x"}, body),
                  ({**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 3600)}, body)):
        with pytest.raises(WebhookVerificationError):
            verified(endpoint["secret"], wrong)
    with pytest.raises(WebhookVerificationError):
        verified("whsec_" + "QUFB" * 11, (headers, body))  # another endpoint's secret


def test_a_whole_upload_ends_in_a_signed_file_clean_webhook(stack, running_functions, endpoints, receiver,
                                                            admin) -> None:
    endpoint = endpoints(receiver.url, [SCAN_CLEAN])
    owner = DropgateClient(running_functions["presign"], admin["uploader"])
    record = owner.upload(payload(6 * MIB, seed=221), "application/octet-stream", "hooked.bin").record
    assert owner.wait_for(record["id"], FINAL, timeout=180)["status"] == "clean"
    [delivery_] = receiver.wait_for(message_id("dropgate/scan", f"{record['id']}.scan"))
    data = verified(endpoint["secret"], delivery_)["data"]
    assert (data["upload_id"], data["verdict"], data["size"]) == (record["id"], "clean", 6 * MIB)


def test_a_receiver_that_is_down_gets_the_event_after_it_comes_back(stack, database_url, endpoints,
                                                                    receiver) -> None:
    endpoint = endpoints(receiver.url, [SCAN_INFECTED])
    receiver.stop()
    _, webhook_id = publish(stack, "infected")
    first = wait_for_row(database_url, endpoint["id"], webhook_id, lambda row: row["attempts"] >= 1)
    assert first["state"] == "pending" and first["last_status"] is None and "Connection" in first["last_error"]
    assert first["next_attempt_at"] > datetime.now(UTC)  # the spec's first retry: 5 s (±10 %) later
    fire_sweep(stack)  # not due yet: nothing is sent, nothing changes
    time.sleep(1)
    assert delivery(database_url, endpoint["id"], webhook_id)["attempts"] == 1
    receiver.start()
    [got] = receiver.wait_for(webhook_id, sweep=lambda: fire_sweep(stack), timeout=90)
    assert verified(endpoint["secret"], got)["type"] == SCAN_INFECTED
    row = wait_for_row(database_url, endpoint["id"], webhook_id, lambda r: r["state"] == "delivered")
    assert row["attempts"] >= 2 and row["last_status"] == 204
    with psycopg.connect(database_url) as conn:
        attempts = conn.execute("SELECT attempt, status, error FROM webhook_attempts WHERE endpoint_id = %s"
                                " AND message_id = %s ORDER BY id", (endpoint["id"], webhook_id)).fetchall()
    assert attempts[0][1] is None and attempts[0][2] and attempts[-1][1:] == (204, None)


def test_redirects_are_not_followed_gone_stops_and_retry_after_is_heeded(stack, database_url, endpoints) -> None:
    target = Receiver().start()
    redirecting = Receiver(status=307, headers={"Location": target.url}).start()
    gone = Receiver(status=410).start()
    busy = Receiver(status=503, headers={"Retry-After": "3600"}).start()
    try:
        moved = endpoints(redirecting.url, [SCAN_REJECTED])
        finished = endpoints(gone.url, [SCAN_REJECTED])
        later = endpoints(busy.url, [SCAN_REJECTED])
        _, webhook_id = publish(stack, "rejected")
        row = wait_for_row(database_url, moved["id"], webhook_id, lambda r: r["attempts"] >= 1)
        assert (row["state"], row["last_status"], row["last_error"]) == ("pending", 307, "answered 307")
        assert not target.received  # nothing followed the redirect anywhere
        row = wait_for_row(database_url, finished["id"], webhook_id, lambda r: r["attempts"] >= 1)
        assert (row["state"], row["last_status"], row["next_attempt_at"]) == ("failed", 410, None)
        row = wait_for_row(database_url, later["id"], webhook_id, lambda r: r["attempts"] >= 1)
        assert row["state"] == "pending" and row["last_status"] == 503
        assert row["next_attempt_at"] > datetime.now(UTC) + timedelta(minutes=55)  # not the 5 s of the schedule
    finally:
        for receiver_ in (target, redirecting, gone, busy):
            receiver_.stop()


def test_the_webhooks_function_takes_events_only_from_its_triggers(stack, running_functions) -> None:
    event = ScanVerdict(id=f"{uuid.uuid4()}.scan", source="dropgate/scan", time=datetime.now(UTC),
                        upload_id=uuid.uuid4(), verdict="clean", bucket="b", key="k")
    headers, body = to_binary(event.to_cloudevent())
    url = running_functions["webhooks"]
    for token, status in ((None, 401), (stack.event_token("webhooks", audience="dropgate-scan"), 401),
                          (stack.event_token("webhooks", subject="system:serviceaccount:dropgate:intruder"), 403)):
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        assert call("POST", url, data=body, headers={**headers, **auth}).status == status
    storage_event = {**headers, "ce-type": "com.amazonaws.s3.ObjectCreated:Put"}
    refused = call("POST", url, data=body, headers={**storage_event,
                                                     "Authorization": f"Bearer {stack.event_token('webhooks')}"})
    assert refused.status == 400 and "not a public event" in refused.json()["detail"]


def test_filters_decide_who_is_told(stack, database_url, endpoints) -> None:
    only_infected, everything = Receiver().start(), Receiver().start()
    try:
        narrow = endpoints(only_infected.url, [SCAN_INFECTED])
        wide = endpoints(everything.url)
        assert wide["all_event_types"] and wide["event_types"] == list(PUBLIC_EVENT_TYPES)
        _, clean_id = publish(stack, "clean")
        _, infected_id = publish(stack, "infected")
        everything.wait_for(clean_id)
        everything.wait_for(infected_id)
        only_infected.wait_for(infected_id)
        assert not only_infected.deliveries_of(clean_id)
        assert delivery(database_url, narrow["id"], clean_id) is None  # no row at all: filtered, not failed
    finally:
        only_infected.stop()
        everything.stop()


def test_a_rotated_secret_and_the_previous_one_both_verify_during_the_grace(stack, running_functions, database_url,
                                                                            endpoints, receiver, admin) -> None:
    endpoint = endpoints(receiver.url, [SCAN_CLEAN])
    rotated = call("POST", f"{running_functions['presign']}/admin/webhooks/{endpoint['id']}/rotate-secret",
                   token=admin["admin"])
    assert rotated.status == 200, rotated.body
    new = rotated.json()["secret"]
    assert new != endpoint["secret"] and rotated.json()["previous_secret_expires_at"]
    _, webhook_id = publish(stack)
    [during] = receiver.wait_for(webhook_id)
    assert len(during[0]["webhook-signature"].split(" ")) == 2  # space-delimited: one per secret
    assert verified(new, during) and verified(endpoint["secret"], during)
    with psycopg.connect(database_url, autocommit=True) as conn:  # the grace period, over
        conn.execute("UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 second'"
                     " WHERE id = %s", (endpoint["id"],))
    _, later_id = publish(stack)
    [after] = receiver.wait_for(later_id)
    assert verified(new, after)
    with pytest.raises(WebhookVerificationError):
        verified(endpoint["secret"], after)
    actions = audit_actions(database_url, endpoint["id"])
    assert [a for a, _ in actions] == ["webhook.endpoint_created", "webhook.secret_rotated"]
    assert "whsec_" not in json.dumps([d for _, d in actions])  # no secret ever reaches the audit log


def test_concurrent_sweeps_send_each_due_delivery_once(database_url) -> None:
    """Rows are claimed with a lease, never held locked over HTTP: two sweeps at once split the work."""
    from shared.platform.audit import Actor
    from shared.platform.db import create_pool
    from shared.platform.settings import DatabaseSettings
    from shared.webhooks.dispatch import Dispatcher
    from shared.webhooks.model import WebhookMessage
    from shared.webhooks.registry import EndpointChange, EndpointRegistry

    settings = WebhookSettings.read(EnvReader({"DROPGATE_WEBHOOK_REQUIRE_HTTPS": "false", "DROPGATE_WEBHOOK_SWEEP_BATCH": "2",
                                               "DROPGATE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}))
    pool = create_pool(DatabaseSettings(database_url, 1, 6, 5))
    down = Receiver()
    try:
        endpoint, _ = EndpointRegistry(pool, EgressPolicy(False, settings.allowed_networks),
                                       rotation_grace=timedelta(hours=1)).create(
            EndpointChange(url=down.url, event_types=["dev.dropgate.reconcile.completed"]), Actor("tests"))
        dispatcher = Dispatcher(pool, settings)
        ids = []
        for n in range(12):  # the receiver is down: each first attempt fails and waits for the sweep
            event = PassCompleted(id=f"sweep-{uuid.uuid4()}", source="dropgate/reconcile", time=datetime.now(UTC),
                                  task="reconcile", run_id=str(n), trigger=None, summary={}).to_cloudevent()
            message = WebhookMessage.from_cloudevent(event)
            assert dispatcher.fan_out(message).retrying >= 1  # (endpoints of other tests may want it too)
            ids.append(message.message_id)
        with pool.connection() as conn:
            pending = conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE endpoint_id = %s"
                                   " AND state = 'pending' AND attempts = 1 RETURNING message_id", (endpoint.id,)).fetchall()
        assert len(pending) == 12
        down.start()
        sweeps = [threading.Thread(target=dispatcher.sweep) for _ in range(3)]
        for sweep in sweeps:
            sweep.start()
        for sweep in sweeps:
            sweep.join(timeout=60)
        sent = [h["webhook-id"] for h, _ in down.received if h["webhook-id"] in ids]  # (other passes' events too)
        assert sorted(sent) == sorted(ids)  # each once, none twice
        with pool.connection() as conn:
            states = conn.execute("SELECT state, attempts FROM webhook_deliveries WHERE endpoint_id = %s",
                                  (endpoint.id,)).fetchall()
        assert [(r["state"], r["attempts"]) for r in states] == [("delivered", 2)] * 12
        EndpointRegistry(pool, EgressPolicy(False), rotation_grace=timedelta(0)).delete(str(endpoint.id), Actor("tests"))
    finally:
        down.stop()
        pool.close()


# ---------------------------------------------------------------------------------------------- replay (CLI)


def run_cli(stack, *args: str, capsys) -> list[dict]:
    from dropgate_local.cli import main

    capsys.readouterr()
    assert main(["--data-dir", str(stack.data_dir), "webhooks", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_replay_by_event_id_and_by_time_range_from_the_cli(stack, database_url, endpoints, receiver,
                                                           capsys) -> None:
    endpoint = endpoints(receiver.url, [SCAN_CLEAN])
    base = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 3000)  # this test's own hours
    event, webhook_id = publish(stack, at=base)
    _, inside_id = publish(stack, at=base + timedelta(minutes=30))
    _, outside_id = publish(stack, at=base + timedelta(hours=2))
    for wanted in (webhook_id, inside_id, outside_id):
        receiver.wait_for(wanted)
    rows = run_cli(stack, "replay", "--event-id", event.id, "--endpoint", endpoint["id"], "--wait", "30",
                   capsys=capsys)
    assert [(r["message_id"], r["state"]) for r in rows] == [(webhook_id, "delivered")]
    again = receiver.wait_for(webhook_id, count=2)
    assert [verified(endpoint["secret"], d)["id"] for d in again] == [event.id, event.id]  # same webhook-id, twice
    rows = run_cli(stack, "replay", "--since", (base - timedelta(minutes=1)).isoformat(), "--until",
                   (base + timedelta(hours=1)).isoformat(), "--endpoint", endpoint["id"], "--wait", "30", capsys=capsys)
    assert {r["message_id"] for r in rows} == {webhook_id, inside_id}
    receiver.wait_for(webhook_id, count=3)
    receiver.wait_for(inside_id, count=2)
    assert len(receiver.deliveries_of(outside_id)) == 1
    log = run_cli(stack, "deliveries", "--event-id", webhook_id, "--endpoint", endpoint["id"], capsys=capsys)
    assert [(r["state"], r["last_status"]) for r in log] == [("delivered", 204)]
    with psycopg.connect(database_url) as conn:
        replays = conn.execute("SELECT actor, detail FROM audit_log WHERE action = 'webhook.replayed'"
                               " AND detail->>'endpoint_id' = %s ORDER BY id", (endpoint["id"],)).fetchall()
    assert len(replays) == 2 and replays[0][0].startswith("operator:") and replays[0][1]["deliveries"] == 1


# ---------------------------------------------------------------------------------------------- disabled endpoints


def patch_endpoint(presign: str, token: str, endpoint_id: str, body: dict):
    return call("PATCH", f"{presign}/admin/webhooks/{endpoint_id}", json_body=body, token=token)


def audit_entries(database_url: str, endpoint_id: str) -> list[tuple[str, str, dict]]:
    """(actor, action, detail) of an endpoint's audit rows, oldest first."""
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT actor, action, detail FROM audit_log WHERE detail->>'endpoint_id' = %s"
                            " ORDER BY id", (endpoint_id,)).fetchall()


def wait_for_endpoint(presign: str, token: str, endpoint_id: str, done, timeout: float = 30) -> dict:
    """The admin API's view of an endpoint once `done` holds (a 410 is recorded just after the receiver answers)."""
    deadline = time.monotonic() + timeout
    while not done(state := call("GET", f"{presign}/admin/webhooks/{endpoint_id}", token=token).json()):
        assert time.monotonic() < deadline, state
        time.sleep(0.3)
    return state


def test_a_410_disables_the_endpoint_until_an_admin_enables_it(stack, running_functions, database_url, endpoints,
                                                               admin, capsys) -> None:
    """Standard Webhooks on 410 Gone: "Sender should disable the webhook endpoint, and stop sending it messages"."""
    from dropgate_local.cli import main as cli

    presign, token = running_functions["presign"], admin["admin"]
    gone, witness = Receiver(status=503, headers={"Retry-After": "3600"}).start(), Receiver().start()
    try:
        endpoint = endpoints(gone.url, [SCAN_UNSCANNABLE])
        endpoints(witness.url, [SCAN_UNSCANNABLE])  # once it has an event, that event's fan-out is over
        _, waiting_id = publish(stack, "unscannable")  # 503: pending, its retry an hour away
        wait_for_row(database_url, endpoint["id"], waiting_id, lambda r: r["attempts"] == 1)
        gone.status = 410
        _, gone_id = publish(stack, "unscannable")
        assert len(gone.wait_for(gone_id)) == 1
        state = wait_for_endpoint(presign, token, endpoint["id"], lambda e: not e["enabled"])
        reason, heard = state["disabled_reason"], len(gone.received)  # nothing may reach it from here on
        assert reason.startswith(f"answered 410 Gone to {gone_id} at ") and state["disabled_at"], state
        row = delivery(database_url, endpoint["id"], gone_id)
        assert (row["state"], row["last_status"], row["attempts"]) == ("failed", 410, 1)
        # What was waiting for a retry fails with it, saying why, so a replay can send it once enabled.
        waiting = delivery(database_url, endpoint["id"], waiting_id)
        assert (waiting["state"], waiting["next_attempt_at"]) == ("failed", None)
        assert waiting["last_error"] == f"endpoint disabled: {reason}; enable it, then replay"
        [(actor, detail)] = [(a, d) for a, action, d in audit_entries(database_url, endpoint["id"])
                             if action == "webhook.endpoint_disabled"]
        assert actor == "system:webhooks" and (detail["reason"], detail["webhook_id"], detail["status"],
                                               detail["pending_failed"]) == (reason, gone_id, 410, 1)
        # The next event: no delivery at all for it, nothing at the receiver.
        _, later_id = publish(stack, "unscannable")
        witness.wait_for(later_id)
        assert delivery(database_url, endpoint["id"], later_id) is None
        # A delivery made pending after the disable (a replay racing it) is failed by the sweep, not sent.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now()"
                         " WHERE endpoint_id = %s AND message_id = %s", (endpoint["id"], waiting_id))
        fire_sweep(stack)
        raced = wait_for_row(database_url, endpoint["id"], waiting_id, lambda r: r["state"] != "pending")
        assert raced["state"] == "failed" and raced["last_error"].startswith("endpoint disabled: answered 410")
        assert len(gone.received) == heard and len(gone.deliveries_of(gone_id)) == 1  # nothing since the 410
        # The operator sees why, and cannot replay to it while it is disabled.
        listed = run_cli(stack, "endpoints", "--endpoint", endpoint["id"], capsys=capsys)
        assert [(e["id"], e["enabled"], e["disabled_reason"]) for e in listed] == [(endpoint["id"], False, reason)]
        assert cli(["--data-dir", str(stack.data_dir), "webhooks", "replay", "--event-id", waiting_id,
                    "--endpoint", endpoint["id"]]) == 2
        refusal = capsys.readouterr().err
        assert "is disabled" in refusal and reason in refusal and '{"enabled": true}' in refusal, refusal
        assert delivery(database_url, endpoint["id"], waiting_id)["state"] == "failed"  # not requeued
        # Enabled again through the admin API (audited): the next event is delivered, and verifies.
        enabled = patch_endpoint(presign, token, endpoint["id"], {"enabled": True})
        assert enabled.status == 200, enabled.body
        assert (enabled.json()["enabled"], enabled.json()["disabled_at"], enabled.json()["disabled_reason"]) == (
            True, None, None)
        actor, action, detail = audit_entries(database_url, endpoint["id"])[-1]
        assert (actor, action, detail["disabled_reason"]) == ("admin-webhooks", "webhook.endpoint_enabled", reason)
        gone.status = 204
        event, back_id = publish(stack, "unscannable")
        [back] = gone.wait_for(back_id)
        assert verified(endpoint["secret"], back)["id"] == event.id
        # And what failed while it was disabled, replayed, is sent now.
        rows = run_cli(stack, "replay", "--event-id", waiting_id, "--endpoint", endpoint["id"], "--wait", "30",
                       capsys=capsys)
        assert [(r["message_id"], r["state"]) for r in rows] == [(waiting_id, "delivered")]
        assert verified(endpoint["secret"], gone.wait_for(waiting_id, count=2)[-1])["type"] == SCAN_UNSCANNABLE
    finally:
        gone.stop()
        witness.stop()


def test_an_admin_disables_and_enables_an_endpoint_by_hand(stack, running_functions, database_url, endpoints, admin,
                                                           receiver) -> None:
    presign, token = running_functions["presign"], admin["admin"]
    witness = Receiver().start()
    try:
        endpoint = endpoints(receiver.url, [SCAN_UNSCANNABLE])
        endpoints(witness.url, [SCAN_UNSCANNABLE])
        off = patch_endpoint(presign, token, endpoint["id"], {"enabled": False})
        assert off.status == 200 and off.json()["enabled"] is False, off.body
        reason, heard = off.json()["disabled_reason"], len(receiver.received)
        assert reason.startswith("disabled by admin-webhooks at ") and off.json()["disabled_at"]
        listed = call("GET", f"{presign}/admin/webhooks", token=token).json()["endpoints"]
        assert [e["enabled"] for e in listed if e["id"] == endpoint["id"]] == [False]  # still registered, shown
        _, skipped_id = publish(stack, "unscannable")
        witness.wait_for(skipped_id)
        assert delivery(database_url, endpoint["id"], skipped_id) is None and len(receiver.received) == heard
        # Disabling a disabled endpoint keeps its first reason and writes nothing; so does enabling an enabled one.
        assert patch_endpoint(presign, token, endpoint["id"], {"enabled": False}).json()["disabled_reason"] == reason
        assert patch_endpoint(presign, token, endpoint["id"], {"enabled": True}).json()["enabled"] is True
        assert patch_endpoint(presign, token, endpoint["id"], {"enabled": True}).status == 200
        _, sent_id = publish(stack, "unscannable")
        assert verified(endpoint["secret"], receiver.wait_for(sent_id)[0])["type"] == SCAN_UNSCANNABLE
        assert [(a, action) for a, action, _ in audit_entries(database_url, endpoint["id"])] == [
            ("admin-webhooks", "webhook.endpoint_created"), ("admin-webhooks", "webhook.endpoint_disabled"),
            ("admin-webhooks", "webhook.endpoint_enabled")]
    finally:
        witness.stop()


def test_enabled_must_be_a_boolean_and_is_for_updates_only(running_functions, database_url, endpoints, admin,
                                                           receiver) -> None:
    presign, token = running_functions["presign"], admin["admin"]
    endpoint = endpoints(receiver.url, [SCAN_UNSCANNABLE])
    for body in ({"enabled": "yes"}, {"enabled": "false"}, {"enabled": 0}, {"enabled": None}):
        answer = patch_endpoint(presign, token, endpoint["id"], body)
        assert answer.status == 400 and "enabled: true or false" in answer.json()["detail"], (body, answer.body)
    both = patch_endpoint(presign, token, endpoint["id"], {"enabled": "no", "colour": "red"}).json()["detail"]
    assert "unknown fields: colour" in both and "enabled: true or false" in both  # every problem named
    created = call("POST", f"{presign}/admin/webhooks", json_body={"url": receiver.url, "enabled": False}, token=token)
    assert created.status == 400 and "unknown fields: enabled" in created.json()["detail"], created.body
    assert patch_endpoint(presign, token, str(uuid.uuid4()), {"enabled": True}).status == 404
    assert patch_endpoint(presign, admin["uploader"], endpoint["id"], {"enabled": False}).status == 403
    assert call("GET", f"{presign}/admin/webhooks/{endpoint['id']}", token=token).json()["enabled"] is True
    assert [action for _, action, _ in audit_entries(database_url, endpoint["id"])] == ["webhook.endpoint_created"]


# ---------------------------------------------------------------------------------------------- SSRF


@pytest.fixture(scope="module")
def strict_presign(stack, running_functions) -> str:
    """presign with production's egress rules: https only, no private address allowed."""
    port = free_port()
    stack.start_function("presign", port=port, label="presign-webhooks-strict",
                         extra_env={"DROPGATE_WEBHOOK_REQUIRE_HTTPS": "true", "DROPGATE_WEBHOOK_ALLOWED_NETWORKS": ""})
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("url", "reason"), [
    ("http://hooks.example.com/x", "https"),
    ("https://127.0.0.1/x", "loopback"),
    ("https://10.1.2.3/x", "private"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://[::1]:8443/x", "loopback"),
    ("https://localhost/x", "localhost resolves to"),
    ("https://user:pw@127.0.0.1/x", "user info"),
    ("https://no-such-host.invalid/x", "does not resolve"),
])
def test_registration_refuses_what_production_may_not_call(strict_presign, admin, url: str, reason: str) -> None:
    answer = call("POST", f"{strict_presign}/admin/webhooks", json_body={"url": url}, token=admin["admin"])
    assert answer.status == 422, answer.body
    assert answer.json()["error"] == "endpoint_refused" and reason in answer.json()["detail"], answer.json()


def test_the_local_stack_allows_loopback_only(running_functions, admin) -> None:
    for url in ("http://10.1.2.3/x", "http://169.254.169.254/latest/meta-data/"):
        answer = call("POST", f"{running_functions['presign']}/admin/webhooks", json_body={"url": url},
                      token=admin["admin"])
        assert answer.status == 422 and answer.json()["error"] == "endpoint_refused", answer.body


def test_bad_requests_and_callers_are_refused_with_reasons(running_functions, database_url, endpoints, admin,
                                                           receiver) -> None:
    presign = running_functions["presign"]
    for body, needle in (({}, "url: required"), ({"url": receiver.url, "event_types": ["dev.dropgate.nope"]},
                                                 "not public"), ({"url": receiver.url, "secret": "x"}, "unknown")):
        answer = call("POST", f"{presign}/admin/webhooks", json_body=body, token=admin["admin"])
        assert answer.status == 400 and needle in answer.json()["detail"], answer.body
    assert call("POST", f"{presign}/admin/webhooks", json_body={"url": receiver.url},
                token=admin["uploader"]).status == 403
    assert call("GET", f"{presign}/admin/webhooks").status == 401
    assert call("GET", f"{presign}/admin/webhooks/{uuid.uuid4()}", token=admin["admin"]).status == 404
    endpoint = endpoints(receiver.url)
    changed = call("PATCH", f"{presign}/admin/webhooks/{endpoint['id']}", json_body={"event_types": [SCAN_CLEAN]},
                   token=admin["admin"])
    assert changed.status == 200 and changed.json()["event_types"] == [SCAN_CLEAN], changed.body
    listed = call("GET", f"{presign}/admin/webhooks", token=admin["admin"]).json()["endpoints"]
    assert endpoint["id"] in [e["id"] for e in listed] and "whsec_" not in json.dumps(listed)
    assert not [e for e in listed if "secret" in e]
    assert call("DELETE", f"{presign}/admin/webhooks/{endpoint['id']}", token=admin["admin"]).json()["deleted"]
    assert call("DELETE", f"{presign}/admin/webhooks/{endpoint['id']}", token=admin["admin"]).status == 404
    assert [a for a, _ in audit_actions(database_url, endpoint["id"])] == [
        "webhook.endpoint_created", "webhook.endpoint_updated", "webhook.endpoint_deleted"]


def test_delivery_checks_the_address_again(stack, database_url, endpoints, receiver, capsys) -> None:
    """A name that resolves to a refused address at delivery time (DNS rebinding) is not called."""
    endpoint = endpoints(f"http://localhost:{receiver.port}/hook", [SCAN_CLEAN])
    port = free_port()
    stack.start_function("webhooks", port=port, label="webhooks-strict",
                         extra_env={"DROPGATE_WEBHOOK_ALLOWED_NETWORKS": ""})
    event = ScanVerdict(id=f"{uuid.uuid4()}.scan", source="dropgate/scan", time=datetime.now(UTC),
                        upload_id=uuid.uuid4(), verdict="clean", bucket="b", key="k")
    webhook_id = message_id(event.source, event.id)
    headers, body = to_binary(event.to_cloudevent())  # as the broker delivers it, with its Trigger's token
    reply = call("POST", f"http://127.0.0.1:{port}/", data=body,
                 headers={**headers, "Authorization": f"Bearer {stack.event_token('webhooks')}"})
    assert reply.status == 204, reply.body
    row = delivery(database_url, endpoint["id"], webhook_id)
    assert row["state"] == "failed" and row["attempts"] == 1 and row["last_error"].startswith("refused:")
    assert "localhost resolves to" in row["last_error"] and "loopback" in row["last_error"]
    assert not receiver.deliveries_of(webhook_id)
    # Failed is replayable: the stack's own webhooks function, which allows loopback, then delivers it.
    rows = run_cli(stack, "replay", "--event-id", webhook_id, "--endpoint", endpoint["id"], "--wait", "30",
                   capsys=capsys)
    assert [r["state"] for r in rows] == ["delivered"]
    assert verified(endpoint["secret"], receiver.wait_for(webhook_id)[0])["id"] == event.id


def test_https_delivery_checks_the_certificate_for_the_name_not_the_pinned_address(tmp_path, clean_environ) -> None:
    """Production's path: https, connected to the address checked, TLS verified for the URL's host name."""
    import os
    import ssl

    from shared.webhooks.dispatch import Dispatcher
    from shared.webhooks.model import Endpoint, WebhookMessage
    from tests.test_encryption import self_signed

    cert, key = self_signed(tmp_path)  # a certificate for 127.0.0.1 only, no DNS name
    receiver = Receiver()
    receiver.start()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    receiver._server.socket = context.wrap_socket(receiver._server.socket, server_side=True)
    try:
        settings = WebhookSettings.read(EnvReader({"DROPGATE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}))
        dispatcher = Dispatcher(pool=None, settings=settings)  # attempt() alone asks no database
        now = datetime.now(UTC)
        event = ScanVerdict(id=f"{uuid.uuid4()}.scan", source="dropgate/scan", time=now, upload_id=uuid.uuid4(),
                            verdict="clean", bucket="b", key="k").to_cloudevent()
        message = WebhookMessage.from_cloudevent(event)

        def endpoint(url: str) -> Endpoint:
            return Endpoint(uuid.uuid4(), url, [], None, "whsec_" + "QUFB" * 11, None, None, "t", now, now, None)

        os.environ["SSL_CERT_FILE"] = cert  # the receiver's certificate is trusted, as a public CA's would be
        trusted = dispatcher.attempt(endpoint(f"https://127.0.0.1:{receiver.port}/hook"), message)
        assert trusted.delivered and verified("whsec_" + "QUFB" * 11, receiver.deliveries_of(message.message_id)[0])
        # localhost resolves to 127.0.0.1, the address connected to, but the certificate does not name it.
        wrong_name = dispatcher.attempt(endpoint(f"https://localhost:{receiver.port}/hook"), message)
        assert not wrong_name.delivered and "CERTIFICATE_VERIFY_FAILED" in wrong_name.error
        del os.environ["SSL_CERT_FILE"]
        untrusted = dispatcher.attempt(endpoint(f"https://127.0.0.1:{receiver.port}/hook"), message)
        assert not untrusted.delivered and "CERTIFICATE_VERIFY_FAILED" in untrusted.error
        assert len(receiver.deliveries_of(message.message_id)) == 1
    finally:
        receiver.stop()


def test_the_egress_policy_refuses_before_connecting() -> None:
    policy = EgressPolicy(require_https=False)
    with pytest.raises(EgressRefused, match="loopback"):
        policy.check("http://127.0.0.1:1/")
    with pytest.raises(EgressRefused, match="fragment"):
        policy.check("http://127.0.0.1/#x")
