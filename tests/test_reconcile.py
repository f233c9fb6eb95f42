"""reconcile: no file left unscanned when a storage notification is lost, against the real local stack.

Notifications are lost for real: every test uses buckets of its own that the SeaweedFS filer
webhook does not watch (its path prefixes name only the stack's buckets), so storage tells
nobody about these objects. Two kinds of test:

- the pipeline (one per module): presign (with and without the fast path), scan, metadata and
  reconcile as functions-framework processes on a database of their own, and a local broker
  routing by the dev overlay's Triggers (its PingSources fire only when asked). Rows are put
  "in the past" by moving their timestamps back, as the expire tests do, instead of waiting.
- in-process passes (`ReconcileJob`) on a fresh database, with a clock the test moves; the
  events they emit are posted to a real scan function process, or scanned in-process.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from cloudevents.conversion import to_binary
from cloudevents.http import from_http
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from dropgate_local.client import Reply, call
from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.processes import ChildProcess, free_port, http_ok, serving_worker
from dropgate_local.router import load_manifests
from dropgate_local.stack import SOURCE_DIR
from events.types import ObjectCreated, PassCompleted, Ping, ScanVerdict
from shared.platform.clamd import StreamingClamd
from shared.platform.db import create_pool
from shared.platform.delivery import EventSink, to_http
from shared.platform.errors import DependencyUnavailable
from shared.platform.migrate import apply_migrations
from shared.platform.settings import (
    ClamdSettings,
    DatabaseSettings,
    Settings,
    SettingsError,
    StorageSettings,
)
from shared.platform.storage import create_s3_client, set_up_buckets
from shared.retention.reconcile import (
    EVENT_SOURCE,
    NO_VERDICT,
    NOT_RECORDED,
    SCAN_STUCK,
    ReconcileBounds,
    ReconcileJob,
    ReconcileSummary,
    object_created_event,
    object_created_id,
)
from shared.scanning.service import ObjectScanner
from shared.uploads.model import UploadRow, UploadStatus
from tests.conftest import as_broker, as_storage_adapter
from tests.test_expire import Clock
from tests.test_pipeline import upload, wait_for_status

MIB = 1024 * 1024
FINAL = {"clean", "infected", "rejected", "unscannable"}
RECONCILE_PING_SOURCE = "/apis/v1/namespaces/dropgate/pingsources/dropgate-reconcile"
NEVER = "0 0 30 2 *"  # February 30th: the test broker's PingSources fire only when a test asks
PIPELINE_ATTEMPTS = 2


# ---------------------------------------------------------------- pure logic

def test_the_event_id_is_one_per_object_version() -> None:
    first = object_created_id("dropgate-uploads", "uploads/2026/11/25/a", "abc-2")
    assert first == object_created_id("dropgate-uploads", "uploads/2026/11/25/a", "abc-2")  # every re-drive
    assert first != object_created_id("dropgate-uploads", "uploads/2026/11/25/a", "def-2")  # new bytes, new id
    assert first != object_created_id("dropgate-uploads", "uploads/2026/11/25/b", "abc-2")
    assert first.startswith("dropgate-") and len(first) == len("dropgate-") + 32


def completed_upload_row() -> UploadRow:
    """A whole `uploads` row: a completed 20 MiB upload waiting for its scan."""
    created = datetime(2026, 11, 25, 13, 59, tzinfo=UTC)
    return UploadRow(
        id=uuid.UUID(int=1), owner="alice", bucket="dropgate-uploads", object_key="uploads/2026/11/25/k",
        filename="k.pdf", content_type="application/pdf", declared_size=20 * MIB, part_size=8 * MIB, part_count=3,
        storage_upload_id="mpu-1", status=UploadStatus.UPLOADED, declared_sha256=None, sha256=None,
        etag="0123abcd-3", stored_size=20 * MIB, stored_content_type="application/pdf", scan_verdict=None,
        scan_detail=None, scanned_at=None, legal_hold=False, storage_sequencer=None, storage_event_time=None,
        created_at=created, updated_at=created, completed_at=created, expires_at=created + timedelta(days=30),
        status_reason=None, redrive_attempts=0, last_redrive_at=None, detected_type=None, signature_version=None,
        rescan_requested_version=None, client_ref=None, scanned_etag=None)


def test_the_event_is_the_object_created_event_scan_accepts() -> None:
    row = completed_upload_row()
    modified = datetime(2026, 11, 25, 14, 0, 5, tzinfo=UTC)
    head = {"ETag": '"ignored-the-row-has-one"', "ContentLength": 20 * MIB, "ContentType": "application/pdf",
            "LastModified": modified, "Metadata": {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}}
    event = object_created_event(row, head)
    assert (event.type, event.source, event.id) == (
        "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload", f"{EVENT_SOURCE}..dropgate-uploads",
        object_created_id("dropgate-uploads", "uploads/2026/11/25/k", "0123abcd-3"))
    assert (event.size, event.etag, event.sequencer, event.time) == (20 * MIB, "0123abcd-3", None, modified)
    parsed = ObjectCreated.from_cloudevent(from_http(*to_http(event.to_cloudevent())))
    assert parsed == event  # what scan and metadata parse, attribute by attribute
    assert object_created_event(replace(row, etag=None), {**head, "ETag": '"plain"'}).type \
        == "com.amazonaws.s3.ObjectCreated:Put"


def test_reconcile_settings_have_documented_defaults_and_bounds() -> None:
    settings = Settings.from_env(["reconcile", "events"], {})
    assert (settings.reconcile.grace_seconds, settings.reconcile.scan_timeout_seconds, settings.reconcile.max_attempts,
            settings.reconcile.max_redrives, settings.reconcile.max_checked) == (600, 1800, 3, 1000, 1000)
    assert settings.events.emit_on_complete is False
    assert Settings.from_env(["events"], {"DROPGATE_EMIT_ON_COMPLETE": "true"}).events.emit_on_complete is True
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(["reconcile", "events"], {
            "DROPGATE_RECONCILE_GRACE": "5", "DROPGATE_RECONCILE_MAX_ATTEMPTS": "0",
            "DROPGATE_EMIT_ON_COMPLETE": "sometimes"})
    assert [p.split("=")[0] for p in raised.value.problems] == [
        "DROPGATE_RECONCILE_GRACE", "DROPGATE_RECONCILE_MAX_ATTEMPTS", "DROPGATE_EMIT_ON_COMPLETE"]


# ---------------------------------------------------------------- shared helpers

def connect(database_url: str) -> psycopg.Connection:
    return psycopg.connect(database_url, row_factory=dict_row, autocommit=True)


def upload_row(database_url: str, upload_id: object) -> dict:
    with connect(database_url) as conn:
        return conn.execute("SELECT * FROM uploads WHERE id = %s", (upload_id,)).fetchone()


def audit_actions(database_url: str, upload_id: object) -> list[tuple[str, str, dict]]:
    with connect(database_url) as conn:
        return [(r["actor"], r["action"], r["detail"]) for r in conn.execute(
            "SELECT actor, action, detail FROM audit_log WHERE upload_id = %s ORDER BY id", (upload_id,))]


def actions(database_url: str, upload_id: object, *names: str) -> list[dict]:
    return [detail for _, action, detail in audit_actions(database_url, upload_id) if action in names]


def move_back(database_url: str, upload_id: object, hours: float = 1) -> None:
    """Put a row's history in the past, as if its grace period (or its scan timeout) had passed."""
    with connect(database_url) as conn:
        conn.execute(
            "UPDATE uploads SET created_at = created_at - %(d)s, updated_at = updated_at - %(d)s,"
            " completed_at = completed_at - %(d)s, last_redrive_at = last_redrive_at - %(d)s WHERE id = %(id)s",
            {"d": timedelta(hours=hours), "id": upload_id})


def storage_notification(bucket: str, key: str, size: int, etag: str | None) -> ObjectCreated:
    """What SeaweedFS's webhook would have produced for the object (an id of its own, not ours)."""
    return ObjectCreated(id=uuid.uuid4().hex, event_name="ObjectCreated:CompleteMultipartUpload",
                         event_source="seaweedfs:s3", region="", bucket=bucket, key=key, time=datetime.now(UTC),
                         size=size, etag=etag, sequencer=f"{time.time_ns():X}")


def deliver(url: str, event: ObjectCreated, timeout: float = 300, function: str = "scan") -> Reply:
    """As the broker delivers to `function` (with its Trigger's token)."""
    headers, body = to_binary(event.to_cloudevent())
    return call("POST", url, data=body, headers={**headers, **as_broker(function)}, timeout=timeout)


def ping(url: str, *, task: str | None = "reconcile") -> Reply:
    event = Ping(id=uuid.uuid4().hex, source=RECONCILE_PING_SOURCE, time=datetime.now(UTC), task=task).to_cloudevent()
    headers, body = to_binary(event)
    return call("POST", url, data=body, headers={**headers, **as_broker("reconcile")}, timeout=300)


def wait_until(condition, what: str, timeout: float = 120, every: float = 0.2):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def make_database(server_url: str) -> str:
    name = f"rc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**info)
    apply_migrations(url)
    return url


def own_buckets(storage: StorageSettings, s3: BaseClient) -> StorageSettings:
    """A bucket pair of its own, outside the filer webhook's path prefixes: storage notifies nobody."""
    tag = uuid.uuid4().hex[:10]
    settings = replace(storage, uploads_bucket=f"rc-{tag}-uploads", quarantine_bucket=f"rc-{tag}-quarantine")
    set_up_buckets(settings, s3)
    return settings


@pytest.fixture(scope="module")
def s3(storage) -> BaseClient:
    return create_s3_client(storage)


# ---------------------------------------------------------------- the pipeline with notifications lost

@dataclass
class Pipeline:
    database_url: str
    storage: StorageSettings
    router: str
    presign: str  # no fast path: a completed upload is announced by nobody
    presign_fast: str  # DROPGATE_EMIT_ON_COMPLETE=true
    scan: str
    metadata: str
    reconcile: str
    mint: object
    children: dict[str, ChildProcess] = field(default_factory=dict)

    def token(self, subject: str) -> str:
        return self.mint(subject)

    def router_events(self) -> list[dict]:
        return call("GET", f"{self.router}/events?limit=1000").json()["events"]

    def deliveries(self, event_id: str, service: str) -> list[dict]:
        return [d for e in self.router_events() if e["id"] == event_id for d in e["deliveries"]
                if service in d["subscriber"]]

    def sweep(self) -> dict:
        """One pass, asked of the reconcile function directly so its summary comes back; its events go to the broker."""
        reply = ping(self.reconcile)
        assert reply.status == 200, reply.body
        completed = PassCompleted.from_cloudevent(from_http(reply.headers, reply.body))  # a CloudEvent, never a bare body
        assert completed.type == "dev.dropgate.reconcile.completed" and completed.trigger
        return dict(completed.summary)


def broker_manifests(tmp_path: Path) -> Path:
    """The dev overlay as rendered, with PingSources that never fire by themselves."""
    docs = [doc for doc in load_manifests(SOURCE_DIR / "manifests" / "overlays" / "dev") if doc]
    for doc in docs:
        if doc.get("kind") == "PingSource":
            doc["spec"]["schedule"] = NEVER
    path = tmp_path / "dev-overlay.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


@pytest.fixture(scope="module")
def pipeline(stack, running_functions, database_url, storage, s3, tmp_path_factory) -> Iterator[Pipeline]:
    db_url = make_database(database_url)
    buckets = own_buckets(storage, s3)
    tag = uuid.uuid4().hex[:6]
    ports = {name: free_port() for name in ("router", "presign", "presign_fast", "scan", "metadata", "reconcile")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {"DATABASE_URL": db_url, "DROPGATE_UPLOADS_BUCKET": buckets.uploads_bucket,
           "DROPGATE_QUARANTINE_BUCKET": buckets.quarantine_bucket, "K_SINK": url["router"] + "/",
           "DROPGATE_DB_POOL_MIN": "0", "DROPGATE_DB_POOL_MAX": "4"}
    children: dict[str, ChildProcess] = {}
    try:
        manifests = broker_manifests(tmp_path_factory.mktemp("reconcile-broker"))
        services = {"dropgate-scan": url["scan"], "dropgate-metadata": url["metadata"],
                    "dropgate-reconcile": url["reconcile"]}
        router = ChildProcess(f"rc-router-{tag}", stack.router_command(
            ports["router"], manifests=manifests, services=services,
            dead_letter=stack.logs_dir / f"rc-dead-letter-{tag}.jsonl",
            uploads_bucket=buckets.uploads_bucket, quarantine_bucket=buckets.quarantine_bucket),
            stack.logs_dir / f"rc-router-{tag}.log").start()
        children["router"] = router
        router.wait_until(lambda: http_ok(f"{url['router']}/healthz"), timeout=60)
        for name, function, extra in (
                ("scan", "scan", {}), ("metadata", "metadata", {}), ("presign", "presign", {}),
                ("presign_fast", "presign", {"DROPGATE_EMIT_ON_COMPLETE": "true"}),
                ("reconcile", "reconcile", {"DROPGATE_RECONCILE_GRACE": "60", "DROPGATE_RECONCILE_SCAN_TIMEOUT": "600",
                                            "DROPGATE_RECONCILE_MAX_ATTEMPTS": str(PIPELINE_ATTEMPTS)})):
            children[name] = stack.start_function(function, port=ports[name], extra_env={**env, **extra},
                                                  label=f"rc-{name}-{tag}")
        key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
        issuer = issuer_url("127.0.0.1", stack.ports.dev_oidc)
        yield Pipeline(database_url=db_url, storage=buckets, router=url["router"], presign=url["presign"],
                       presign_fast=url["presign_fast"], scan=url["scan"], metadata=url["metadata"],
                       reconcile=url["reconcile"], children=children,
                       mint=lambda subject: key.mint(subject=subject, roles=["uploader"], issuer=issuer))
    finally:
        for child in reversed(list(children.values())):
            child.stop()


def pdf(size: int, seed: int) -> bytes:
    return b"%PDF-1.7\n" + hashlib.sha256(str(seed).encode()).digest() * (size // 32)


def test_an_upload_completed_while_notifications_are_lost_reaches_a_verdict_after_one_sweep(pipeline) -> None:
    p = pipeline
    token = p.token("rc-lost")
    data = pdf(9 * MIB, 1)
    record = upload(p.presign, token, data, "application/pdf", "report.pdf")
    row = upload_row(p.database_url, record["id"])
    assert row["status"] == "uploaded"  # presign completed it; storage told nobody, nobody scans it
    assert [e for e in p.router_events() if e.get("subject") == record["key"]] == []

    early = p.sweep()  # inside the grace period: a notification may still be on its way
    assert (early["redriven"], early["failed"]) == (0, 0)

    move_back(p.database_url, record["id"])
    fired = call("POST", f"{p.router}/pingsources/dropgate-reconcile")  # the PingSource, through the broker
    assert fired.status == 202, fired.body
    final = wait_for_status(p.presign, token, record["id"], FINAL)
    assert final["status"] == "clean"

    expected_id = object_created_id(p.storage.uploads_bucket, record["key"], row["etag"])
    [redrive] = actions(p.database_url, record["id"], "reconcile.redriven")
    assert (redrive["reason"], redrive["attempt"], redrive["event_id"]) == (NO_VERDICT, 1, expected_id)
    assert len(actions(p.database_url, record["id"], "scan.verdict")) == 1
    assert upload_row(p.database_url, record["id"])["redrive_attempts"] == 1
    # The broker routed the re-emitted event like storage's own: to scan and to metadata.
    wait_until(lambda: {d["outcome"] for d in p.deliveries(expected_id, "dropgate-")} == {"delivered"},
               "the re-emitted event's deliveries")
    assert {d["trigger"] for d in p.deliveries(expected_id, "dropgate-")} == {
        "dropgate-scan-multipart", "dropgate-metadata-uploads-multipart"}
    with connect(p.database_url) as conn:
        recorded = conn.execute("SELECT * FROM storage_objects WHERE bucket = %s AND object_key = %s",
                                (p.storage.uploads_bucket, record["key"])).fetchone()
    assert (recorded["last_event_id"], recorded["size"], recorded["etag"]) == (expected_id, len(data), row["etag"])
    assert upload_row(p.database_url, record["id"])["stored_size"] == len(data)

    # Storage's notification turns up after all: a harmless duplicate, answered with the verdict.
    late = storage_notification(p.storage.uploads_bucket, record["key"], final["size"], row["etag"])
    headers, body = to_http(late.to_cloudevent())
    assert call("POST", p.router + "/", data=body, headers={**headers, **as_storage_adapter()}).status == 202
    wait_until(lambda: [d["outcome"] for d in p.deliveries(late.id, "dropgate-scan")] == ["delivered"],
               "the late notification's delivery to scan")
    assert len(actions(p.database_url, record["id"], "scan.verdict")) == 1
    again = p.sweep()
    assert (again["redriven"], again["failed"]) == (0, 0)


def p_head(p: Pipeline, key: str) -> dict:
    return create_s3_client(p.storage).head_object(Bucket=p.storage.uploads_bucket, Key=key)


def test_a_scan_killed_midway_is_redriven(pipeline) -> None:
    p = pipeline
    token = p.token("rc-killed")
    data = hashlib.sha256(b"big").digest() * (100 * MIB // 32)
    record = upload(p.presign, token, data, "application/octet-stream", "big.bin")
    row = UploadRow.from_db(upload_row(p.database_url, record["id"]))
    event = object_created_event(row, p_head(p, record["key"]))
    worker = serving_worker(int(p.scan.rsplit(":", 1)[1]))
    answers: list[object] = []

    def post() -> None:
        try:
            answers.append(deliver(p.scan, event))
        except Exception as exc:  # noqa: BLE001 - the connection dies with the worker
            answers.append(exc)

    caller = threading.Thread(target=post)
    caller.start()
    wait_until(lambda: upload_row(p.database_url, record["id"])["status"] == "scanning", "the scan to start",
               timeout=60, every=0.02)
    worker.kill()  # SIGKILL, as an OOM kill would: no verdict, the row stays `scanning`
    caller.join(60)
    assert answers and not isinstance(answers[0], Reply), answers
    assert upload_row(p.database_url, record["id"])["status"] == "scanning"
    wait_until(lambda: http_ok(f"{p.scan}/healthz", timeout=5), "gunicorn's new scan worker")

    assert p.sweep()["scan_stuck"] == 0  # a scan may still be running: not before the scan timeout
    move_back(p.database_url, record["id"])
    summary = p.sweep()
    assert (summary["scan_stuck"], summary["redriven"]) == (1, 1)
    final = wait_for_status(p.presign, token, record["id"], FINAL, timeout=300)
    assert final["status"] == "clean" and final["sha256"] == hashlib.sha256(data).hexdigest()
    [redrive] = actions(p.database_url, record["id"], "reconcile.redriven")
    assert (redrive["reason"], redrive["event_id"]) == (SCAN_STUCK, event.id)  # the id the first delivery had
    assert len(actions(p.database_url, record["id"], "scan.verdict")) == 1


def test_a_deleted_object_ends_failed_after_the_attempts_and_is_never_served(pipeline) -> None:
    p = pipeline
    token = p.token("rc-gone")
    record = upload(p.presign, token, pdf(6 * MIB, 3), "application/pdf", "gone.pdf")
    create_s3_client(p.storage).delete_object(Bucket=p.storage.uploads_bucket, Key=record["key"])

    for attempt in range(1, PIPELINE_ATTEMPTS + 1):
        move_back(p.database_url, record["id"])
        summary = p.sweep()
        assert (summary["objects_missing"], summary["events"]) == (1, 0)  # nothing to announce, the attempt counts
        assert upload_row(p.database_url, record["id"])["redrive_attempts"] == attempt
    move_back(p.database_url, record["id"])
    assert p.sweep()["failed"] == 1

    shown = call("GET", f"{p.presign}/uploads/{record['id']}", token=token).json()
    assert shown["status"] == "unscannable" and shown["scan_verdict"] == "unscannable"
    assert shown["status_reason"] == (
        f"not scanned after {PIPELINE_ATTEMPTS} re-drives: the object is missing from storage")
    assert call("GET", f"{p.presign}/files/{record['id']}/download", token=token).status == 403
    trail = [action for actor, action, _ in audit_actions(p.database_url, record["id"]) if actor == "system:reconcile"]
    assert trail == ["reconcile.object_missing"] * PIPELINE_ATTEMPTS + ["reconcile.failed"]
    move_back(p.database_url, record["id"])
    assert p.sweep()["failed"] == 0  # failed once, audited once
    exposition = call("GET", f"{p.reconcile}/metrics").body.decode()
    counted = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
               if line.startswith("dropgate_reconcile_uploads_total{")}
    assert counted['dropgate_reconcile_uploads_total{outcome="failed",reason="no_verdict"}'] == 1
    assert counted['dropgate_reconcile_uploads_total{outcome="object_missing",reason="no_verdict"}'] == PIPELINE_ATTEMPTS


def test_the_fast_path_gives_a_verdict_without_any_storage_notification(pipeline) -> None:
    p = pipeline
    token = p.token("rc-fast")
    record = upload(p.presign_fast, token, pdf(9 * MIB, 4), "application/pdf", "fast.pdf")
    final = wait_for_status(p.presign_fast, token, record["id"], FINAL)
    assert final["status"] == "clean"

    row = upload_row(p.database_url, record["id"])
    expected_id = object_created_id(p.storage.uploads_bucket, record["key"], row["etag"])
    seen = [e for e in p.router_events() if e.get("subject") == record["key"]]
    assert [(e["id"], e["source"]) for e in seen] == [(expected_id, f"{EVENT_SOURCE}..{p.storage.uploads_bucket}")]
    assert row["redrive_attempts"] == 0 and actions(p.database_url, record["id"], "reconcile.redriven") == []
    # A sweep has nothing to do, and storage's notification arriving late changes nothing.
    move_back(p.database_url, record["id"])
    assert p.sweep()["redriven"] == 0
    late = storage_notification(p.storage.uploads_bucket, record["key"], final["size"], row["etag"])
    reply = deliver(p.scan, late)
    assert reply.status == 200 and ScanVerdict.from_cloudevent(from_http(reply.headers, reply.body)).verdict == "clean"
    assert len(actions(p.database_url, record["id"], "scan.verdict")) == 1


def test_a_broker_that_is_down_does_not_fail_the_completion(stack, pipeline) -> None:
    """The fast path is best effort: the completion stands, and the sweep re-drives it later."""
    p = pipeline
    port = free_port()
    env = {"DATABASE_URL": p.database_url, "DROPGATE_UPLOADS_BUCKET": p.storage.uploads_bucket,
           "DROPGATE_QUARANTINE_BUCKET": p.storage.quarantine_bucket, "DROPGATE_EMIT_ON_COMPLETE": "true",
           "K_SINK": f"http://127.0.0.1:{free_port()}/"}
    child = stack.start_function("presign", port=port, extra_env=env, label=f"rc-presign-no-broker-{port}")
    try:
        token = p.token("rc-no-broker")
        record = upload(f"http://127.0.0.1:{port}", token, pdf(6 * MIB, 5), "application/pdf", "later.pdf")
    finally:
        child.stop()
    assert "completion not announced" in child.log_path.read_text()
    assert upload_row(p.database_url, record["id"])["status"] == "uploaded"
    move_back(p.database_url, record["id"])
    assert p.sweep()["redriven"] == 1
    assert wait_for_status(p.presign, token, record["id"], FINAL)["status"] == "clean"


def test_the_same_file_gets_one_verdict_when_the_sweep_and_the_notification_both_arrive(pipeline) -> None:
    """A notification that was only late: the sweep re-drives, then storage's own event arrives while scan runs."""
    p = pipeline
    token = p.token("rc-both")
    record = upload(p.presign, token, pdf(40 * MIB, 6), "application/pdf", "both.pdf")
    row = upload_row(p.database_url, record["id"])
    move_back(p.database_url, record["id"])
    assert p.sweep()["redriven"] == 1
    late = storage_notification(p.storage.uploads_bucket, record["key"], row["declared_size"], row["etag"])
    headers, body = to_http(late.to_cloudevent())
    assert call("POST", p.router + "/", data=body, headers={**headers, **as_storage_adapter()}).status == 202
    assert wait_for_status(p.presign, token, record["id"], FINAL)["status"] == "clean"
    redrive_id = object_created_id(p.storage.uploads_bucket, record["key"], row["etag"])
    for event_id in (redrive_id, late.id):  # both reached scan, and both were answered with the one verdict
        wait_until(lambda event_id=event_id: [d["outcome"] for d in p.deliveries(event_id, "dropgate-scan")]
                   == ["delivered"], f"delivery of {event_id} to scan")
    assert len(actions(p.database_url, record["id"], "scan.verdict")) == 1  # one verdict, one audit entry
    assert [d["attempt"] for d in actions(p.database_url, record["id"], "reconcile.redriven")] == [1]


def test_the_function_refuses_what_is_not_its_ping(pipeline) -> None:
    assert ping(pipeline.reconcile, task="expire").status == 400
    assert ping(pipeline.reconcile, task=None).status == 200  # a PingSource without data: a tick too
    other = storage_notification(pipeline.storage.uploads_bucket, "uploads/x", 1, None)
    assert deliver(pipeline.reconcile, other, function="reconcile").status == 400


# ---------------------------------------------------------------- in-process passes, a clock the test moves

@dataclass
class World:
    database_url: str
    storage: StorageSettings
    pool: ConnectionPool
    s3: BaseClient
    clock: Clock = field(default_factory=Clock)
    published: list[ObjectCreated] = field(default_factory=list)

    def job(self, *, publish=None, **bounds: object) -> ReconcileJob:  # noqa: ANN001
        return ReconcileJob(pool=self.pool, s3=self.s3, storage=self.storage, clock=self.clock,
                            publish=publish or self.published.extend, bounds=ReconcileBounds(**bounds))

    def run(self, **kwargs: object) -> ReconcileSummary:
        return self.job(**kwargs).run(trigger="test")

    def stage(self, status: str = "uploaded", *, data: bytes = b"%PDF-1.4\n" + bytes(2048),
              content_type: str = "application/pdf", store: bool = True) -> dict:
        """A row as presign leaves it at completion (or earlier, for pending), its object in the uploads bucket."""
        upload_id = uuid.uuid4()
        key = f"uploads/{self.clock.now:%Y/%m/%d}/{upload_id}"
        etag = None
        if store:
            etag = self.s3.put_object(Bucket=self.storage.uploads_bucket, Key=key, Body=data,
                                      ContentType=content_type)["ETag"].strip('"')
        with connect(self.database_url) as conn:
            conn.execute(
                "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size, part_size,"
                " part_count, status, etag, created_at, updated_at, completed_at, expires_at)"
                " VALUES (%s, 'tester', %s, %s, 'f.pdf', %s, %s, %s, 1, %s, %s, %s, %s, %s, %s)",
                (upload_id, self.storage.uploads_bucket, key, content_type, len(data), 8 * MIB, status,
                 None if status == "pending" else etag, self.clock.now, self.clock.now,
                 None if status == "pending" else self.clock.now, self.clock.now + timedelta(days=30)))
        return self.row(upload_id)

    def row(self, upload_id: object) -> dict:
        return upload_row(self.database_url, upload_id)

    def scanner(self, clamd_address: tuple[str, int], s3: BaseClient | None = None) -> ObjectScanner:
        host, port = clamd_address
        return ObjectScanner(storage=self.storage, clamd=ClamdSettings(host, port, 60, MIB), pool=self.pool,
                             s3=s3 or self.s3, scanner=StreamingClamd(host, port, timeout=60))


@pytest.fixture
def world(fresh_database_url, storage, s3) -> Iterator[World]:
    apply_migrations(fresh_database_url)
    pool = create_pool(DatabaseSettings(url=fresh_database_url, pool_min_size=1, pool_max_size=4,
                                        connect_timeout_seconds=5))
    pool.wait(timeout=30)
    yield World(database_url=fresh_database_url, storage=own_buckets(storage, s3), pool=pool, s3=s3)
    pool.close()


def test_a_scan_that_can_never_finish_ends_failed_after_n_attempts(stack, world, clamd_address) -> None:
    """clamd unreachable for this scan instance: every re-drive answers 503, the row stays `scanning`."""
    port = free_port()
    env = {"DATABASE_URL": world.database_url, "DROPGATE_UPLOADS_BUCKET": world.storage.uploads_bucket,
           "DROPGATE_QUARANTINE_BUCKET": world.storage.quarantine_bucket,
           "DROPGATE_CLAMD_ADDRESS": f"127.0.0.1:{free_port()}"}
    scan = stack.start_function("scan", port=port, extra_env=env, label=f"rc-scan-no-clamd-{port}")
    url = f"http://127.0.0.1:{port}"
    try:
        staged = world.stage("uploaded")
        reasons = []
        for _ in range(2):
            world.clock.advance(hours=1)
            world.published.clear()
            summary = world.run(max_attempts=2)
            assert summary.redriven == 1
            [event] = world.published
            reasons.append(NO_VERDICT if summary.no_verdict else SCAN_STUCK)
            answer = deliver(url, event)  # what the broker would deliver; it retries, then dead-letters
            assert answer.status == 503 and "scanner" in answer.json()["detail"], answer.body
            assert world.row(staged["id"])["status"] == "scanning"
        assert reasons == [NO_VERDICT, SCAN_STUCK]

        world.clock.advance(hours=1)
        world.published.clear()
        assert world.run(max_attempts=2).failed == 1
        after = world.row(staged["id"])
        # Giving up is a verdict like scan's: its event (scan's id for it), and the bytes in quarantine.
        [gave_up] = world.published
        assert isinstance(gave_up, ScanVerdict)
        assert (gave_up.id, gave_up.verdict, gave_up.reason, gave_up.bucket, gave_up.key) == (
            f"{staged['id']}.scan", "unscannable", after["status_reason"], world.storage.quarantine_bucket,
            staged["object_key"])
        assert gave_up.source == "dropgate/reconcile"
        world.s3.head_object(Bucket=world.storage.quarantine_bucket, Key=staged["object_key"])
        with pytest.raises(ClientError):
            world.s3.head_object(Bucket=world.storage.uploads_bucket, Key=staged["object_key"])
        assert (after["status"], after["scan_verdict"], after["redrive_attempts"]) == ("unscannable", "unscannable", 2)
        assert after["status_reason"] == "not scanned after 2 re-drives: the scan never finished"
        trail = [a for actor, a, _ in audit_actions(world.database_url, staged["id"]) if actor == "system:reconcile"]
        assert trail == ["reconcile.redriven", "reconcile.redriven", "reconcile.failed"]
        # A delivery that turns up afterwards gets the failed verdict back, with its reason, and changes nothing.
        late = deliver(url, event)
        verdict = ScanVerdict.from_cloudevent(from_http(late.headers, late.body))
        assert (late.status, verdict.verdict, verdict.reason) == (200, "unscannable", after["status_reason"])
        world.clock.advance(hours=1)
        assert world.run(max_attempts=2).failed == 0
    finally:
        scan.stop()


def test_a_pending_upload_whose_object_storage_holds_is_redriven(world, clamd_address) -> None:
    """The completion reached storage but no one recorded it: the row still says pending."""
    lost = world.stage("pending")  # its object is in the bucket
    uploading = world.stage("pending", store=False)  # still uploading its parts: nothing to announce
    clean = world.stage("clean")
    world.s3.put_object(Bucket=world.storage.uploads_bucket, Key=f"uploads/orphan/{uuid.uuid4()}", Body=b"x")

    assert world.run().not_recorded == 0  # within the grace period
    world.clock.advance(hours=1)
    summary = world.run()

    assert (summary.not_recorded, summary.redriven, summary.pending_checked) == (1, 1, 2)
    [event] = world.published
    assert (event.key, event.type) == (lost["object_key"], "com.amazonaws.s3.ObjectCreated:Put")
    [entry] = actions(world.database_url, lost["id"], "reconcile.redriven")
    assert entry["reason"] == NOT_RECORDED
    assert world.row(uploading["id"])["redrive_attempts"] == 0
    assert world.row(clean["id"])["redrive_attempts"] == 0
    result = world.scanner(clamd_address).scan(event.bucket, event.key, event.id)  # scan claims a pending row too
    assert result.verdict == "clean" and world.row(lost["id"])["status"] == "clean"


def test_one_read_of_the_object_when_notification_and_redrive_arrive_together(world, clamd_address) -> None:
    staged = world.stage("uploaded", data=b"%PDF-1.4\n" + bytes(8 * MIB))
    world.clock.advance(hours=1)
    world.run()
    [redrive] = world.published
    notification = storage_notification(redrive.bucket, redrive.key, redrive.size, redrive.etag)
    client = create_s3_client(world.storage)
    reads: list[str] = []
    client.meta.events.register("provide-client-params.s3.GetObject", lambda params, **_: reads.append(params["Key"]))
    scanner = world.scanner(clamd_address, client)
    start = threading.Barrier(2)
    results = []

    def scan(event: ObjectCreated) -> None:
        start.wait()
        results.append(scanner.scan(event.bucket, event.key, event.id))

    threads = [threading.Thread(target=scan, args=(e,)) for e in (redrive, notification)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted((r.verdict, r.already_decided) for r in results) == [("clean", False), ("clean", True)]
    assert reads == [staged["object_key"]]  # the second delivery waited for the first, and did not read it again
    assert len(actions(world.database_url, staged["id"], "scan.verdict")) == 1


def test_a_pass_is_bounded_and_redrives_each_upload_a_grace_period_apart(world) -> None:
    staged = [world.stage("uploaded") for _ in range(5)]
    world.clock.advance(hours=1)

    first = world.run(max_redrives=2, batch_size=1)
    assert (first.redriven, first.more_work) == (2, True)
    second = world.run(max_redrives=2)
    third = world.run(max_redrives=2)
    assert (second.redriven, third.redriven, third.more_work) == (2, 1, False)
    assert world.run().redriven == 0  # each was re-driven just now
    ids = {e.key: e.id for e in world.published}
    assert len(ids) == 5 and set(ids) == {s["object_key"] for s in staged}

    world.clock.advance(minutes=11)  # a grace period later, all five again, with the same ids
    world.published.clear()
    assert world.run().redriven == 5
    assert {e.key: e.id for e in world.published} == ids
    assert {world.row(s["id"])["redrive_attempts"] for s in staged} == {2}


def test_a_sink_that_is_down_rolls_the_batch_back(world) -> None:
    staged = world.stage("uploaded")
    world.clock.advance(hours=1)
    down = EventSink(f"http://127.0.0.1:{free_port()}/", timeout=2)
    with pytest.raises(DependencyUnavailable):
        world.run(publish=lambda events: down.send_all(e.to_cloudevent() for e in events))
    assert world.row(staged["id"])["redrive_attempts"] == 0
    assert actions(world.database_url, staged["id"], "reconcile.redriven") == []
    assert world.run().redriven == 1  # the next pass does it


def test_two_overlapping_passes_redrive_each_upload_once(world) -> None:
    staged = [world.stage("uploaded") for _ in range(4)]
    world.clock.advance(hours=1)
    a_holds, b_done = threading.Event(), threading.Event()
    published_a: list[ObjectCreated] = []
    published_b: list[ObjectCreated] = []
    summaries: dict[str, ReconcileSummary] = {}

    def publish_a(events) -> None:  # noqa: ANN001
        published_a.extend(events)
        if not a_holds.is_set():  # pass A sits on its first batch, its rows locked
            a_holds.set()
            assert b_done.wait(60)

    def pass_b() -> None:
        assert a_holds.wait(60)
        try:
            summaries["b"] = world.run(publish=published_b.extend, batch_size=2)
        finally:
            b_done.set()

    b = threading.Thread(target=pass_b)
    b.start()
    summaries["a"] = world.run(publish=publish_a, batch_size=2)
    b.join(60)
    assert (summaries["a"].redriven, summaries["b"].redriven) == (2, 2)
    assert {e.key for e in published_a}.isdisjoint({e.key for e in published_b})
    assert {world.row(s["id"])["redrive_attempts"] for s in staged} == {1}
