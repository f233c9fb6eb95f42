"""The metadata function as a real process against the real PostgreSQL: idempotent, ordered, never regressing."""

from __future__ import annotations

import os
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
from shared.platform.storage import create_s3_client
from shared.uploads.storage_facts import is_newer
from tests.conftest import UNWATCHED_ENV, as_broker

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
# Objects live in buckets the storage webhook does not watch (tests/conftest.py UNWATCHED_ENV): the
# events here are the test's, never a second copy from the pipeline.
UPLOADS, QUARANTINE = UNWATCHED_ENV["DROPGATE_UPLOADS_BUCKET"], UNWATCHED_ENV["DROPGATE_QUARANTINE_BUCKET"]


@pytest.fixture(scope="module")
def metadata(stack, database_url, unwatched):
    port = free_port()
    child = stack.start_function("metadata", port=port, label="metadata-test",
                                 extra_env={"DATABASE_URL": database_url, **UNWATCHED_ENV})
    yield f"http://127.0.0.1:{port}"
    child.stop()


@pytest.fixture(scope="module")
def s3(unwatched):
    return create_s3_client(unwatched)


@pytest.fixture
def db(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def new_upload(db, *, status="pending", bucket=UPLOADS) -> tuple[uuid.UUID, str]:
    upload_id = uuid.uuid4()
    key = f"uploads/2026/11/25/{upload_id}"
    db.execute("INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size,"
               " part_size, part_count, status, expires_at) VALUES (%s, 'alice', %s, %s, 'f.pdf',"
               " 'application/pdf', 10, 8388608, 1, %s, now() + interval '30 days')",
               (upload_id, bucket, key, status))
    return upload_id, key


def store(s3, key, size, *, bucket=UPLOADS) -> str:
    """Write `size` fresh random bytes at bucket/key; the ETag storage gives them (without quotes)."""
    return s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(size),
                         ContentType="application/pdf")["ETag"].strip('"')


def created(key, sequencer="0100", *, size=10, etag=None, bucket=UPLOADS, name="ObjectCreated:Put", when=T0,
            event_id=None) -> ObjectCreated:
    return ObjectCreated(id=event_id or f"c-{uuid.uuid4()}", event_name=name, event_source="minio:s3", region="",
                         bucket=bucket, key=key, time=when, size=size, etag=etag, sequencer=sequencer,
                         content_type="application/pdf")


def stored_and_created(s3, key, sequencer="0100", *, size=10, bucket=UPLOADS, **fields) -> ObjectCreated:
    """The creation event storage would send for bytes the test really writes."""
    return created(key, sequencer, size=size, etag=store(s3, key, size, bucket=bucket), bucket=bucket, **fields)


def removed(key, sequencer="0100", *, bucket=UPLOADS, when=T0) -> ObjectRemoved:
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


def outcome(db, event):
    return db.execute("SELECT outcome FROM processed_events WHERE consumer = 'metadata' AND event_id = %s",
                      (event.id,)).fetchone()[0]


def test_an_object_appearing_moves_the_upload_to_uploaded_and_replies(metadata, db, s3):
    upload_id, key = new_upload(db)
    event = stored_and_created(s3, key, "187B3C4D5E0A1B2C", size=10, name="ObjectCreated:CompleteMultipartUpload")
    reply = deliver(metadata, event)
    assert reply.status == 200, reply.body
    recorded = MetadataRecorded.from_cloudevent(from_http(reply.headers, reply.body))
    assert (recorded.upload_id, recorded.status, recorded.present, recorded.storage_event_id) == (
        upload_id, "uploaded", True, event.id)
    assert recorded.source == "dropgate/metadata"
    status, size, etag, content_type, sequencer, event_time, completed_at = upload_row(db, upload_id)
    assert (status, size, etag, content_type, sequencer) == ("uploaded", 10, event.etag, "application/pdf",
                                                              "187B3C4D5E0A1B2C")
    assert event_time == T0 and completed_at == T0
    assert audit_actions(db, upload_id) == ["storage.object_recorded"]
    assert location(db, UPLOADS, key) == (True, 10, upload_id, event.type)
    assert outcome(db, event) == "applied"


def test_a_duplicate_changes_nothing_and_repeats_the_same_reply(metadata, db, s3):
    upload_id, key = new_upload(db)
    event = stored_and_created(s3, key)
    first = deliver(metadata, event)
    db.execute("UPDATE uploads SET status = 'scanning' WHERE id = %s", (upload_id,))
    second = deliver(metadata, event)
    assert (first.status, second.status) == (200, 200)
    assert first.header("ce-id") == second.header("ce-id")
    assert upload_row(db, upload_id)[0] == "scanning"
    assert audit_actions(db, upload_id) == ["storage.object_recorded"]
    assert db.execute("SELECT count(*) FROM processed_events WHERE event_id = %s", (event.id,)).fetchone() == (1,)


def test_the_same_event_delivered_concurrently_is_applied_once(metadata, db, s3):
    upload_id, key = new_upload(db)
    event = stored_and_created(s3, key)
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(deliver(metadata, event).status)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 6
    assert audit_actions(db, upload_id) == ["storage.object_recorded"]


def test_out_of_order_events_leave_the_newest_state(metadata, db, s3):
    upload_id, key = new_upload(db)
    older = stored_and_created(s3, key, "01FF", size=19)  # written first, its event delivered late
    newer = stored_and_created(s3, key, "0200", size=20)
    assert deliver(metadata, newer).status == 200
    assert deliver(metadata, older).status == 204  # older: nothing to say (and stale before storage is asked)
    assert outcome(db, older) == "stale"
    assert upload_row(db, upload_id)[1:5] == (20, newer.etag, "application/pdf", "0200")
    # Sequencers of different lengths compare as numbers: "0000000000000201" is newer than "0200".
    latest = stored_and_created(s3, key, "0000000000000201", size=21)
    assert deliver(metadata, latest).status == 200
    assert upload_row(db, upload_id)[1:3] == (21, latest.etag)
    # A removal naming the current version applies (SeaweedFS removals carry the removed entry's sequencer)...
    s3.delete_object(Bucket=UPLOADS, Key=key)
    assert deliver(metadata, removed(key, "0201")).status == 200
    assert location(db, UPLOADS, key)[0] is False
    # ...and the creations it removed, arriving late, do not bring the object back.
    assert deliver(metadata, created(key, "0000000000000201", size=21, etag=latest.etag)).status == 204
    assert deliver(metadata, created(key, "0150", size=15)).status == 204
    assert location(db, UPLOADS, key)[0] is False
    assert audit_actions(db, upload_id) == ["storage.object_recorded"] * 2 + ["storage.object_removed"]


def test_without_sequencers_the_event_time_decides(metadata, db, s3):
    upload_id, key = new_upload(db)
    first = stored_and_created(s3, key, None, size=1, when=T0 + timedelta(seconds=1))
    second = stored_and_created(s3, key, None, size=2, when=T0 + timedelta(seconds=2))
    assert deliver(metadata, second).status == 200
    assert deliver(metadata, first).status == 204
    assert upload_row(db, upload_id)[1] == 2


@pytest.mark.parametrize("later", ["scanning", "clean", "infected", "rejected", "expired", "aborted"])
def test_a_later_status_never_goes_back(metadata, db, s3, later):
    upload_id, key = new_upload(db, status=later)
    assert deliver(metadata, stored_and_created(s3, key, size=10)).status == 200
    status, size, *_ = upload_row(db, upload_id)
    assert (status, size) == (later, 10)


def test_a_copy_in_the_quarantine_is_linked_to_its_upload_without_touching_the_row(metadata, db, s3):
    upload_id, key = new_upload(db, status="infected")
    reply = deliver(metadata, stored_and_created(s3, key, "0300", bucket=QUARANTINE, name="ObjectCreated:Copy"))
    assert reply.status == 200
    assert reply.header("ce-subject") == str(upload_id)
    assert upload_row(db, upload_id)[:2] == ("infected", None)
    assert location(db, QUARANTINE, key)[2] == upload_id
    assert audit_actions(db, upload_id) == ["storage.copy_recorded"]


def test_an_unknown_key_is_recorded_as_an_orphan_not_an_error(metadata, db, s3):
    key = f"stray/{uuid.uuid4()}"
    event = stored_and_created(s3, key, size=7)
    assert deliver(metadata, event).status == 204
    present, size, upload_id, _ = location(db, UPLOADS, key)
    assert (present, size, upload_id) == (True, 7, None)
    assert db.execute("SELECT action FROM audit_log WHERE upload_id IS NULL AND detail->>'event_id' = %s",
                      (event.id,)).fetchone() == ("storage.orphan_recorded",)
    assert outcome(db, event) == "orphan"


# -- events storage contradicts: a forged or overtaken event changes nothing and is audited

def disagreement_audited(db, event) -> str:
    row = db.execute("SELECT action, detail->>'reason' FROM audit_log WHERE detail->>'event_id' = %s",
                     (event.id,)).fetchone()
    assert row is not None and row[0] == "storage.event_disagreed_with_storage", row
    return row[1]


def test_a_creation_storage_does_not_hold_leaves_a_pending_upload_pending(metadata, db):
    upload_id, key = new_upload(db)
    event = created(key, "FFFFFFFFFFFFFFFF", size=10, etag="0123456789abcdef0123456789abcdef")
    assert deliver(metadata, event).status == 204
    assert upload_row(db, upload_id)[:3] == ("pending", None, None)
    assert location(db, UPLOADS, key) is None
    assert outcome(db, event) == "disagreed"
    assert disagreement_audited(db, event) == "storage holds no object at this key"
    assert audit_actions(db, upload_id) == ["storage.event_disagreed_with_storage"]


@pytest.mark.parametrize(("size_delta", "etag", "reason"), [
    (1, None, "storage holds 10 bytes, the event says 11"),
    (0, "0123456789abcdef0123456789abcdef-3", "storage's ETag is "),
])
def test_a_creation_whose_size_or_etag_differ_from_storage_changes_nothing(metadata, db, s3, size_delta, etag,
                                                                           reason):
    upload_id, key = new_upload(db)
    real_etag = store(s3, key, 10)
    event = created(key, "FFFF", size=10 + size_delta, etag=etag or real_etag)
    assert deliver(metadata, event).status == 204
    assert upload_row(db, upload_id)[:2] == ("pending", None)
    assert disagreement_audited(db, event).startswith(reason)
    # The true event still applies afterwards: the forged one took nothing from it.
    assert deliver(metadata, created(key, "0100", size=10, etag=real_etag.upper())).status == 200
    assert upload_row(db, upload_id)[:3] == ("uploaded", 10, real_etag.upper())


def test_a_removal_of_an_object_storage_still_holds_changes_nothing(metadata, db, s3):
    upload_id, key = new_upload(db)
    truth = stored_and_created(s3, key, "0100", size=10)
    assert deliver(metadata, truth).status == 200
    forged = removed(key, "FFFFFFFFFFFFFFFFFFFF")  # a maximal sequencer would win every later comparison
    assert deliver(metadata, forged).status == 204
    assert location(db, UPLOADS, key)[:2] == (True, 10)
    assert upload_row(db, upload_id)[4] == "0100"
    assert disagreement_audited(db, forged) == "storage still holds an object at this key"
    # Storage is unchanged too, and a real removal later still applies.
    assert s3.head_object(Bucket=UPLOADS, Key=key)["ContentLength"] == 10
    s3.delete_object(Bucket=UPLOADS, Key=key)
    assert deliver(metadata, removed(key, "0100")).status == 200
    assert location(db, UPLOADS, key)[0] is False


def test_a_stale_event_is_stale_whatever_storage_says(metadata, db, s3):
    upload_id, key = new_upload(db)
    assert deliver(metadata, stored_and_created(s3, key, "0200", size=10)).status == 200
    late = created(key, "0100", size=99)  # older than what is recorded: never applied, nothing suspicious
    assert deliver(metadata, late).status == 204
    assert outcome(db, late) == "stale"
    assert audit_actions(db, upload_id) == ["storage.object_recorded"]


def test_an_event_that_is_not_a_storage_event_is_refused_with_400(metadata):
    event = created("k").to_cloudevent()
    headers, body = to_http(event)
    headers["ce-type"] = "dev.dropgate.scan.clean"
    reply = call("POST", metadata, data=body, headers={**headers, **as_broker("metadata")})
    assert reply.status == 400
    assert "type 'dev.dropgate.scan.clean' is not one of" in reply.json()["detail"]


def test_with_the_database_down_the_function_answers_503_so_the_broker_retries(stack, s3):
    port = free_port()
    closed = f"postgresql://dropgate@127.0.0.1:{free_port()}/dropgate"
    child = stack.start_function("metadata", port=port, label="metadata-no-db",
                                 extra_env={"DATABASE_URL": closed, "DROPGATE_DB_CONNECT_TIMEOUT": "1",
                                            **UNWATCHED_ENV})
    try:
        reply = deliver(f"http://127.0.0.1:{port}", stored_and_created(s3, f"uploads/2026/11/25/{uuid.uuid4()}"))
        assert reply.status == 503, reply.body
        assert reply.json()["error"] == "dependency_unavailable"
        assert reply.header("Retry-After")
    finally:
        child.stop()


def test_with_storage_down_the_function_answers_503_and_records_nothing(stack, database_url, db):
    port = free_port()
    child = stack.start_function("metadata", port=port, label="metadata-no-storage",
                                 extra_env={"DATABASE_URL": database_url, **UNWATCHED_ENV,
                                            "DROPGATE_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    try:
        upload_id, key = new_upload(db)
        event = created(key, size=10, etag="0123456789abcdef0123456789abcdef")
        reply = deliver(f"http://127.0.0.1:{port}", event)
        assert reply.status == 503, reply.body
        assert "storage is unavailable" in reply.json()["detail"]
        # Not even the event id is claimed: the broker's next delivery is judged afresh.
        assert db.execute("SELECT count(*) FROM processed_events WHERE event_id = %s", (event.id,)).fetchone() == (0,)
        assert upload_row(db, upload_id)[0] == "pending"
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
