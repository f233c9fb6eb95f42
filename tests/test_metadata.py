"""The metadata function as a real process against the real PostgreSQL: idempotent, ordered, never regressing."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from cloudevents.http import from_http

from dropgate_local.client import call
from dropgate_local.processes import free_port
from events.types import (
    MetadataRecorded,
    ObjectCreated,
    ObjectRemoved,
    StorageObjectEvent,
)
from shared.platform.delivery import to_http
from shared.uploads.storage_facts import is_newer
from tests.conftest import as_broker

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def metadata(stack, database_url):
    port = free_port()
    child = stack.start_function("metadata", port=port, label="metadata-test", extra_env={"DATABASE_URL": database_url})
    yield f"http://127.0.0.1:{port}"
    child.stop()


@pytest.fixture
def db(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def new_upload(db, *, status="pending", bucket="dropgate-uploads") -> tuple[uuid.UUID, str]:
    upload_id = uuid.uuid4()
    key = f"uploads/2026/11/25/{upload_id}"
    db.execute("INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size,"
               " part_size, part_count, status, expires_at) VALUES (%s, 'alice', %s, %s, 'f.pdf',"
               " 'application/pdf', 10, 8388608, 1, %s, now() + interval '30 days')",
               (upload_id, bucket, key, status))
    return upload_id, key


def created(key, sequencer="0100", *, size=10, bucket="dropgate-uploads", name="ObjectCreated:Put", when=T0,
            event_id=None) -> ObjectCreated:
    return ObjectCreated(id=event_id or f"c-{uuid.uuid4()}", event_name=name, event_source="minio:s3", region="",
                         bucket=bucket, key=key, time=when, size=size, etag=f"etag-{size}", sequencer=sequencer,
                         content_type="application/pdf")


def removed(key, sequencer="0100", *, bucket="dropgate-uploads", when=T0) -> ObjectRemoved:
    return ObjectRemoved(id=f"r-{uuid.uuid4()}", event_name="ObjectRemoved:Delete", event_source="minio:s3",
                         region="", bucket=bucket, key=key, time=when, sequencer=sequencer)


def deliver(url, event: StorageObjectEvent):
    headers, body = to_http(event.to_cloudevent())
    return call("POST", url, data=body, headers={**headers, **as_broker("metadata")})


def upload_row(db, upload_id):
    return db.execute("SELECT status, stored_size, etag, stored_content_type, storage_sequencer,"
                      " storage_event_time, completed_at FROM uploads WHERE id = %s", (upload_id,)).fetchone()


def audit_actions(db, upload_id):
    return [r[0] for r in db.execute("SELECT action FROM audit_log WHERE upload_id = %s ORDER BY id",
                                     (upload_id,)).fetchall()]


def location(db, bucket, key):
    return db.execute("SELECT present, size, upload_id, last_event_type FROM storage_objects"
                      " WHERE bucket = %s AND object_key = %s", (bucket, key)).fetchone()


def test_an_object_appearing_moves_the_upload_to_uploaded_and_replies(metadata, db):
    upload_id, key = new_upload(db)
    event = created(key, "187B3C4D5E0A1B2C", size=10, name="ObjectCreated:CompleteMultipartUpload")
    reply = deliver(metadata, event)
    assert reply.status == 200, reply.body
    recorded = MetadataRecorded.from_cloudevent(from_http(reply.headers, reply.body))
    assert (recorded.upload_id, recorded.status, recorded.present, recorded.storage_event_id) == (
        upload_id, "uploaded", True, event.id)
    assert recorded.source == "dropgate/metadata"
    status, size, etag, content_type, sequencer, event_time, completed_at = upload_row(db, upload_id)
    assert (status, size, etag, content_type, sequencer) == ("uploaded", 10, "etag-10", "application/pdf",
                                                              "187B3C4D5E0A1B2C")
    assert event_time == T0 and completed_at == T0
    assert audit_actions(db, upload_id) == ["storage.object_recorded"]
    assert location(db, "dropgate-uploads", key) == (True, 10, upload_id, event.type)
    assert db.execute("SELECT outcome FROM processed_events WHERE consumer = 'metadata' AND event_id = %s",
                      (event.id,)).fetchone() == ("applied",)


def test_a_duplicate_changes_nothing_and_repeats_the_same_reply(metadata, db):
    upload_id, key = new_upload(db)
    event = created(key)
    first = deliver(metadata, event)
    db.execute("UPDATE uploads SET status = 'scanning' WHERE id = %s", (upload_id,))
    second = deliver(metadata, event)
    assert (first.status, second.status) == (200, 200)
    assert first.header("ce-id") == second.header("ce-id")
    assert upload_row(db, upload_id)[0] == "scanning"
    assert audit_actions(db, upload_id) == ["storage.object_recorded"]
    assert db.execute("SELECT count(*) FROM processed_events WHERE event_id = %s", (event.id,)).fetchone() == (1,)


def test_the_same_event_delivered_concurrently_is_applied_once(metadata, db):
    upload_id, key = new_upload(db)
    event = created(key)
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(deliver(metadata, event).status)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 6
    assert audit_actions(db, upload_id) == ["storage.object_recorded"]


def test_out_of_order_events_leave_the_newest_state(metadata, db):
    upload_id, key = new_upload(db)
    assert deliver(metadata, created(key, "0200", size=20)).status == 200
    assert deliver(metadata, created(key, "01FF", size=19)).status == 204  # older: nothing to say
    assert upload_row(db, upload_id)[1:5] == (20, "etag-20", "application/pdf", "0200")
    # Sequencers of different lengths compare as numbers: "0000000000000201" is newer than "0200".
    assert deliver(metadata, created(key, "0000000000000201", size=21)).status == 200
    assert upload_row(db, upload_id)[1] == 21
    # A removal naming the current version applies (SeaweedFS removals carry the removed entry's sequencer)...
    assert deliver(metadata, removed(key, "0201")).status == 200
    assert location(db, "dropgate-uploads", key)[0] is False
    # ...and the creation it removed, arriving late, does not bring the object back.
    assert deliver(metadata, created(key, "0000000000000201", size=21)).status == 204
    assert deliver(metadata, created(key, "0150", size=15)).status == 204
    assert location(db, "dropgate-uploads", key)[0] is False
    assert audit_actions(db, upload_id) == ["storage.object_recorded"] * 2 + ["storage.object_removed"]


def test_without_sequencers_the_event_time_decides(metadata, db):
    upload_id, key = new_upload(db)
    assert deliver(metadata, created(key, None, size=2, when=T0 + timedelta(seconds=2))).status == 200
    assert deliver(metadata, created(key, None, size=1, when=T0 + timedelta(seconds=1))).status == 204
    assert upload_row(db, upload_id)[1] == 2


@pytest.mark.parametrize("later", ["scanning", "clean", "infected", "rejected", "expired", "aborted"])
def test_a_later_status_never_goes_back(metadata, db, later):
    upload_id, key = new_upload(db, status=later)
    assert deliver(metadata, created(key, size=10)).status == 200
    status, size, *_ = upload_row(db, upload_id)
    assert (status, size) == (later, 10)


def test_a_copy_in_the_quarantine_is_linked_to_its_upload_without_touching_the_row(metadata, db):
    upload_id, key = new_upload(db, status="infected")
    reply = deliver(metadata, created(key, "0300", bucket="dropgate-quarantine", name="ObjectCreated:Copy"))
    assert reply.status == 200
    assert reply.header("ce-subject") == str(upload_id)
    assert upload_row(db, upload_id)[:2] == ("infected", None)
    assert location(db, "dropgate-quarantine", key)[2] == upload_id
    assert audit_actions(db, upload_id) == ["storage.copy_recorded"]


def test_an_unknown_key_is_recorded_as_an_orphan_not_an_error(metadata, db):
    key = f"stray/{uuid.uuid4()}"
    event = created(key, size=7)
    assert deliver(metadata, event).status == 204
    present, size, upload_id, _ = location(db, "dropgate-uploads", key)
    assert (present, size, upload_id) == (True, 7, None)
    assert db.execute("SELECT action FROM audit_log WHERE upload_id IS NULL AND detail->>'event_id' = %s",
                      (event.id,)).fetchone() == ("storage.orphan_recorded",)
    assert db.execute("SELECT outcome FROM processed_events WHERE event_id = %s", (event.id,)).fetchone() == ("orphan",)


def test_an_event_that_is_not_a_storage_event_is_refused_with_400(metadata):
    event = created("k").to_cloudevent()
    headers, body = to_http(event)
    headers["ce-type"] = "dev.dropgate.scan.clean"
    reply = call("POST", metadata, data=body, headers={**headers, **as_broker("metadata")})
    assert reply.status == 400
    assert "type 'dev.dropgate.scan.clean' is not one of" in reply.json()["detail"]


def test_with_the_database_down_the_function_answers_503_so_the_broker_retries(stack):
    port = free_port()
    closed = f"postgresql://dropgate@127.0.0.1:{free_port()}/dropgate"
    child = stack.start_function("metadata", port=port, label="metadata-no-db",
                                 extra_env={"DATABASE_URL": closed, "DROPGATE_DB_CONNECT_TIMEOUT": "1"})
    try:
        reply = deliver(f"http://127.0.0.1:{port}", created("uploads/2026/11/25/x"))
        assert reply.status == 503, reply.body
        assert reply.json()["error"] == "dependency_unavailable"
        assert reply.header("Retry-After")
    finally:
        child.stop()


@pytest.mark.parametrize(("incoming", "stored", "removal", "newer"), [
    ("0200", "01FF", False, True),
    ("01FF", "0200", False, False),
    ("0200", "0200", False, False),  # a creation must be strictly newer
    ("0200", "0200", True, True),  # a removal may name the version it removes
    ("0000000000000201", "0200", False, True),  # zero-padded: compared as numbers
    ("FF", "0100", False, False),
    ("0A1B2C3D4E5F678901", "187B3C4D5E0A1B2C", False, True),  # 18 digits beat 16: length counts
])
def test_sequencers_compare_as_numbers(incoming, stored, removal, newer):
    assert is_newer(incoming, T0, stored, T0 + timedelta(days=1), removal=removal) is newer
