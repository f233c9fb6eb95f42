"""expire: the retention pass against real SeaweedFS and PostgreSQL, in-process and as its function process.

Every test gets a world of its own: an empty database with the schema, and a fresh pair of
buckets set up by `set_up_buckets` (so a sweep never meets another test's objects). The
in-process tests drive the pass with a clock they control; the function-process tests use
the real clock and put their rows in the past. Emitted CloudEvents go to a real HTTP sink.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from pytest_localserver.http import WSGIServer
from werkzeug.wrappers import Request

from dropgate_local.client import Reply, call
from dropgate_local.processes import ChildProcess, free_port
from events.types import ObjectCreated, PassCompleted, Ping, UploadEnded
from shared.platform.db import create_pool
from shared.platform.delivery import EventSink
from shared.platform.errors import DependencyUnavailable
from shared.platform.migrate import apply_migrations
from shared.platform.settings import DatabaseSettings, StorageSettings
from shared.platform.storage import create_s3_client, set_up_buckets
from shared.retention.expiry import RetentionBounds, RetentionJob, RetentionSummary
from tests.conftest import as_broker

MIB = 1024 * 1024
PING_SOURCE = "/apis/v1/namespaces/dropgate/pingsources/dropgate-expire"


class Clock:
    """The pass's notion of now, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class World:
    database_url: str
    storage: StorageSettings
    pool: ConnectionPool
    s3: BaseClient
    clock: Clock = field(default_factory=Clock)
    published: list[UploadEnded] = field(default_factory=list)

    # -- running a pass --

    def job(self, *, s3: BaseClient | None = None, publish: Callable | None = None, **bounds: object) -> RetentionJob:
        return RetentionJob(pool=self.pool, s3=s3 or self.s3, storage=self.storage, retention_days=30,
                            source="dropgate/expire", publish=publish or self.published.extend, clock=self.clock,
                            bounds=RetentionBounds(**bounds))

    def run(self, **kwargs: object) -> RetentionSummary:
        return self.job(**kwargs).run(trigger="test")

    # -- arranging --

    def add_upload(self, status: str = "clean", *, data: bytes = b"dropgate", created: datetime | None = None,
                   expires: datetime | None = None, held: bool = False, store: bool = True,
                   bucket: str | None = None) -> dict:
        """A row as presign/scan leave it and, unless `store` is False, its bytes where they belong:
        the quarantine for infected/rejected, a started multipart upload (one part) for pending."""
        upload_id = uuid.uuid4()
        created = created or self.clock.now
        key = f"uploads/{created:%Y/%m/%d}/{upload_id}"
        storage_upload_id = None
        if status == "pending":
            storage_upload_id = self.s3.create_multipart_upload(Bucket=self.storage.uploads_bucket, Key=key)["UploadId"]
            self.s3.upload_part(Bucket=self.storage.uploads_bucket, Key=key, UploadId=storage_upload_id,
                                PartNumber=1, Body=data)
        elif store:
            self.put(bucket or self.bucket_for(status), key, data)
        self.insert_rows([(upload_id, key, status, storage_upload_id, created, expires or created + timedelta(days=30),
                           held, len(data))])
        return self.row(upload_id)

    def add_files(self, count: int, *, created: datetime | None = None, status: str = "clean") -> list[dict]:
        """Many small files at once (parallel PUTs, one INSERT batch), returned in the order they fall due.

        Each expires a second after the one before, so a pass's batches take them in this order.
        """
        created = created or self.clock.now
        ids = [uuid.uuid4() for _ in range(count)]
        rows = [(upload_id, f"uploads/{created:%Y/%m/%d}/{upload_id}", status, None, created,
                 created + timedelta(days=30, seconds=n), False, 1) for n, upload_id in enumerate(ids)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: self.put(self.bucket_for(status), r[1], b"x"), rows))
        self.insert_rows(rows)
        with self.connect() as conn:
            return conn.execute("SELECT * FROM uploads WHERE id = ANY(%s) ORDER BY expires_at, id",
                                ([r[0] for r in rows],)).fetchall()

    def insert_rows(self, rows: list[tuple]) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size, part_size,"
                " part_count, status, storage_upload_id, created_at, updated_at, expires_at, legal_hold)"
                " VALUES (%s, 'tester', %s, %s, 'f.bin', 'application/octet-stream', %s, %s, 1, %s, %s, %s, %s, %s, %s)",
                [(upload_id, self.storage.uploads_bucket, key, size, 8 * MIB, status, storage_upload_id, created,
                  created, expires, held)
                 for upload_id, key, status, storage_upload_id, created, expires, held, size in rows])

    def bucket_for(self, status: str) -> str:
        return self.storage.quarantine_bucket if status in ("infected", "rejected", "unscannable") \
            else self.storage.uploads_bucket

    def put(self, bucket: str, key: str, data: bytes = b"x") -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=data)

    # -- observing --

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.database_url, row_factory=dict_row, autocommit=True)

    def row(self, upload_id: object) -> dict:
        with self.connect() as conn:
            return conn.execute("SELECT * FROM uploads WHERE id = %s", (upload_id,)).fetchone()

    def statuses(self, rows: list[dict]) -> dict[str, int]:
        with self.connect() as conn:
            found = conn.execute("SELECT status, count(*) AS n FROM uploads WHERE id = ANY(%s) GROUP BY status",
                                 ([r["id"] for r in rows],)).fetchall()
        return {r["status"]: r["n"] for r in found}

    def audit(self, upload_id: object = None, action: str | None = None) -> list[dict]:
        clauses, params = ["actor = 'system:expire'"], []
        if upload_id is not None:
            clauses.append("upload_id = %s")
            params.append(upload_id)
        if action is not None:
            clauses.append("action = %s")
            params.append(action)
        with self.connect() as conn:
            return conn.execute(f"SELECT * FROM audit_log WHERE {' AND '.join(clauses)} ORDER BY id",  # noqa: S608
                                params).fetchall()

    def audit_counts(self) -> dict[uuid.UUID, int]:
        with self.connect() as conn:
            return {r["upload_id"]: r["n"] for r in conn.execute(
                "SELECT upload_id, count(*) AS n FROM audit_log WHERE actor = 'system:expire' GROUP BY upload_id")}

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            assert exc.response["Error"]["Code"] in ("404", "NoSuchKey"), exc
            return False

    def keys(self, bucket: str) -> set[str]:
        return {o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])}

    def multipart_ids(self) -> set[str]:
        return {u["UploadId"] for u in self.s3.list_multipart_uploads(
            Bucket=self.storage.uploads_bucket).get("Uploads", [])}

    def function_env(self, sink_url: str) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, "DROPGATE_UPLOADS_BUCKET": self.storage.uploads_bucket,
                "DROPGATE_QUARANTINE_BUCKET": self.storage.quarantine_bucket, "K_SINK": sink_url,
                "DROPGATE_DB_POOL_MIN": "0", "DROPGATE_DB_POOL_MAX": "2"}


@pytest.fixture(scope="module")
def s3(storage) -> BaseClient:
    return create_s3_client(storage)


def make_world(database_url: str, storage: StorageSettings, s3: BaseClient, *, object_lock: bool = False) -> World:
    apply_migrations(database_url)
    tag = uuid.uuid4().hex[:10]
    settings = replace(storage, uploads_bucket=f"xp-{tag}-uploads", quarantine_bucket=f"xp-{tag}-quarantine")
    if object_lock:  # as the MinIO set-up Job creates the uploads bucket: Object Lock, hence versioning
        s3.create_bucket(Bucket=settings.uploads_bucket, ObjectLockEnabledForBucket=True)
    set_up_buckets(settings, s3)
    pool = create_pool(DatabaseSettings(url=database_url, pool_min_size=1, pool_max_size=4, connect_timeout_seconds=5))
    pool.wait(timeout=30)
    return World(database_url=database_url, storage=settings, pool=pool, s3=s3)


@pytest.fixture
def world(fresh_database_url, storage, s3) -> Iterator[World]:
    made = make_world(fresh_database_url, storage, s3)
    yield made
    made.pool.close()


@pytest.fixture
def locked_world(fresh_database_url, storage, s3) -> Iterator[World]:
    made = make_world(fresh_database_url, storage, s3, object_lock=True)
    yield made
    made.pool.close()


def record_deletes(client: BaseClient) -> list[tuple[str, list[str]]]:
    """What each DeleteObjects request carried, as the client sends it (observed, not altered)."""
    calls: list[tuple[str, list[str]]] = []

    def seen(params: dict, **_: object) -> None:
        calls.append((params["Bucket"], [o["Key"] for o in params["Delete"]["Objects"]]))

    client.meta.events.register("provide-client-params.s3.DeleteObjects", seen)
    return calls


# -- 1. files past retention --

def test_files_past_retention_are_deleted_from_both_buckets_and_read_as_expired(world) -> None:
    s = world.storage
    clean = world.add_upload("clean")
    infected = world.add_upload("infected")  # lives in the quarantine bucket
    rejected = world.add_upload("rejected")
    unscannable = world.add_upload("unscannable")  # lives in the quarantine bucket
    released = world.add_upload("released")
    uploaded = world.add_upload("uploaded")
    pending = world.add_upload("pending")  # still uploading when retention ran out
    # expires_at far away (a bad value), but created 31 days ago: the retention still applies
    overdue = world.add_upload("clean", expires=world.clock.now + timedelta(days=90))
    due = [clean, infected, rejected, unscannable, released, uploaded, pending, overdue]
    world.clock.advance(days=31)
    fresh = world.add_upload("clean")  # created "now": 30 days to go

    summary = world.run()

    assert (summary.expired, summary.abandoned, summary.error_count, summary.more_work) == (8, 0, 0, False)
    for row in due:
        after = world.row(row["id"])
        assert after["status"] == "expired", row["status"]
        assert not world.exists(s.uploads_bucket, row["object_key"])
        assert not world.exists(s.quarantine_bucket, row["object_key"])
        [entry] = world.audit(row["id"])
        assert entry["action"] == "retention.expired" and entry["detail"]["status_before"] == row["status"]
    assert world.row(pending["id"])["status_reason"] == "retention passed before the upload was completed"
    assert world.row(overdue["id"])["status_reason"] == "older than the retention of 30 days"
    assert world.row(clean["id"])["status_reason"] == "retention passed"
    assert pending["storage_upload_id"] not in world.multipart_ids()

    events = {e.upload_id: e for e in world.published}
    assert set(events) == {row["id"] for row in due}
    for row in due:
        event = events[row["id"]]
        assert (event.type, event.id, event.key, event.object_deleted) == (
            "dev.dropgate.upload.expired", f"{row['id']}.expired", row["object_key"], True)
        # The event survives its own wire format (the schema other consumers parse).
        assert UploadEnded.from_cloudevent(event.to_cloudevent()) == event
    assert events[infected["id"]].bucket == s.quarantine_bucket
    assert events[clean["id"]].bucket == s.uploads_bucket

    assert world.row(fresh["id"])["status"] == "clean" and world.exists(s.uploads_bucket, fresh["object_key"])

    again = world.run()  # idempotent: nothing left to do, nothing said twice
    assert (again.expired, again.events, again.objects_missing, again.orphans_deleted) == (0, 0, 0, 0)
    assert len(world.published) == len(due)


def test_a_held_file_survives_past_retention(world) -> None:
    held = world.add_upload("clean", held=True)
    held_infected = world.add_upload("infected", held=True)
    other = world.add_upload("clean")
    world.clock.advance(days=45)

    summary = world.run()

    assert (summary.expired, summary.held) == (1, 2)
    for row in (held, held_infected):
        assert world.row(row["id"])["status"] == row["status"]
        assert world.exists(world.bucket_for(row["status"]), row["object_key"])
        assert world.audit(row["id"]) == []
    assert world.row(other["id"])["status"] == "expired"
    assert [e.upload_id for e in world.published] == [other["id"]]


def test_versions_are_deleted_and_a_storage_legal_hold_refuses_per_key(locked_world) -> None:
    world, s = locked_world, locked_world.storage
    plain = world.add_upload("clean")
    world.put(s.uploads_bucket, plain["object_key"], b"second version")  # two versions of one key
    # Held in S3 (Object Lock) while the database says not held: storage refuses to delete that key.
    stuck = world.add_upload("clean")
    world.s3.put_object_legal_hold(Bucket=s.uploads_bucket, Key=stuck["object_key"], LegalHold={"Status": "ON"})
    # Held the way presign holds: database flag and S3 legal hold.
    held = world.add_upload("clean", held=True)
    world.s3.put_object_legal_hold(Bucket=s.uploads_bucket, Key=held["object_key"], LegalHold={"Status": "ON"})
    world.clock.advance(days=31)

    first = world.run()

    assert (first.expired, first.held, first.error_count) == (1, 1, 1)
    assert stuck["object_key"] in first.errors[0] and "AccessDenied" in first.errors[0]
    versions = world.s3.list_object_versions(Bucket=s.uploads_bucket, Prefix=plain["object_key"])
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []  # bytes gone, not hidden
    assert world.row(plain["id"])["status"] == "expired"
    assert world.row(stuck["id"])["status"] == "clean" and world.exists(s.uploads_bucket, stuck["object_key"])
    assert world.exists(s.uploads_bucket, held["object_key"])

    world.s3.put_object_legal_hold(Bucket=s.uploads_bucket, Key=stuck["object_key"], LegalHold={"Status": "OFF"})
    second = world.run()
    assert (second.expired, second.error_count) == (1, 0)
    assert world.row(stuck["id"])["status"] == "expired"
    assert world.s3.list_object_versions(Bucket=s.uploads_bucket, Prefix=stuck["object_key"]).get("Versions", []) == []
    assert world.row(held["id"])["status"] == "clean" and world.exists(s.uploads_bucket, held["object_key"])


# -- 2. stale multipart uploads --

def test_a_stale_multipart_upload_is_aborted_and_the_upload_abandoned(world) -> None:
    stale = world.add_upload("pending")
    held = world.add_upload("pending", held=True)
    world.clock.advance(hours=25)
    young = world.add_upload("pending")

    summary = world.run()

    assert (summary.abandoned, summary.expired, summary.multipart_aborted) == (1, 0, 0)
    after = world.row(stale["id"])
    assert after["status"] == "abandoned"
    assert after["status_reason"] == "multipart upload not completed within 24 hours"
    assert world.multipart_ids() == {held["storage_upload_id"], young["storage_upload_id"]}
    [entry] = world.audit(stale["id"])
    assert entry["action"] == "retention.abandoned" and entry["detail"]["multipart_aborted"] is True
    [event] = world.published
    assert (event.type, event.upload_id, event.reason) == (
        "dev.dropgate.upload.abandoned", stale["id"], "multipart upload not completed within 24 hours")
    assert world.row(young["id"])["status"] == "pending" and world.row(held["id"])["status"] == "pending"


def test_a_multipart_upload_with_no_row_is_aborted_once_stale(world) -> None:
    key = f"uploads/{world.clock.now:%Y/%m/%d}/{uuid.uuid4()}"
    foreign = world.s3.create_multipart_upload(Bucket=world.storage.uploads_bucket, Key=key)["UploadId"]
    owned = world.add_upload("pending", held=True)  # a live upload's multipart upload is not foreign

    assert world.run().multipart_aborted == 0  # initiated just now
    assert foreign in world.multipart_ids()

    world.clock.advance(hours=25)
    summary = world.run()

    assert summary.multipart_aborted == 1
    assert world.multipart_ids() == {owned["storage_upload_id"]}
    [entry] = world.audit(action="retention.multipart_aborted")
    assert entry["upload_id"] is None
    assert (entry["detail"]["key"], entry["detail"]["storage_upload_id"]) == (key, foreign)


# -- 3. orphans, both ways --

def test_objects_no_upload_owns_are_deleted_after_the_grace_period(world) -> None:
    s = world.storage
    lost_upload = f"uploads/2026/01/01/{uuid.uuid4()}"
    lost_quarantine = f"uploads/2026/01/01/{uuid.uuid4()}"
    world.put(s.uploads_bucket, lost_upload)
    world.put(s.quarantine_bucket, lost_quarantine)
    aborted = world.add_upload("aborted")  # ended, yet its bytes are still there
    live = world.add_upload("clean")
    infected = world.add_upload("infected")

    young = world.run()  # everything was written just now
    assert young.orphans_deleted == 0
    assert world.exists(s.uploads_bucket, lost_upload) and world.exists(s.quarantine_bucket, lost_quarantine)

    world.clock.advance(hours=2)
    summary = world.run()

    assert (summary.orphans_deleted, summary.expired, summary.objects_missing) == (3, 0, 0)
    assert world.keys(s.uploads_bucket) == {live["object_key"]}
    assert world.keys(s.quarantine_bucket) == {infected["object_key"]}
    entries = world.audit(action="retention.orphan_deleted")
    assert sorted((e["detail"]["bucket"], e["detail"]["key"], e["upload_id"]) for e in entries) == sorted([
        (s.uploads_bucket, lost_upload, None), (s.quarantine_bucket, lost_quarantine, None),
        (s.uploads_bucket, aborted["object_key"], aborted["id"])])
    assert world.published == []  # orphans are not uploads: no upload events


def test_uploads_whose_object_vanished_read_as_expired(world) -> None:
    s = world.storage
    vanished = world.add_upload("clean", store=False)
    vanished_infected = world.add_upload("infected", store=False)
    held = world.add_upload("clean", store=False, held=True)
    mid_move = world.add_upload("scanning", bucket=s.quarantine_bucket)  # a scan crashed while moving it
    intact = world.add_upload("clean")
    pending = world.add_upload("pending")  # no object yet, rightly

    assert world.run().objects_missing == 0  # the rows changed just now: the object may be on its way

    world.clock.advance(hours=2)
    summary = world.run()

    assert summary.objects_missing == 2
    for row in (vanished, vanished_infected):
        after = world.row(row["id"])
        assert (after["status"], after["status_reason"]) == ("expired", "object missing")
        [entry] = world.audit(row["id"])
        assert entry["action"] == "retention.object_missing"
    assert sorted((e.upload_id, e.reason) for e in world.published) == sorted(
        [(vanished["id"], "object missing"), (vanished_infected["id"], "object missing")])
    for row in (held, mid_move, intact, pending):
        assert world.row(row["id"])["status"] == row["status"]


def test_the_sweep_is_bounded_and_resumes_from_its_cursor(world) -> None:
    s = world.storage
    rows = world.add_files(30)
    orphans = [f"uploads/2020/01/01/{i:04d}" for i in range(25)]
    for key in orphans:
        world.put(s.uploads_bucket, key)
    world.clock.advance(hours=2)

    first = world.run(max_listed_objects=20)
    assert first.more_work and first.orphans_deleted == 20  # the first 20 keys: all orphans
    second = world.run(max_listed_objects=20)
    assert second.more_work and second.orphans_deleted == 5  # then 5 orphans and 15 files, from the cursor
    third = world.run(max_listed_objects=20)
    assert not third.more_work and third.orphans_deleted == 0
    assert world.keys(s.uploads_bucket) == {r["object_key"] for r in rows}


# -- 4. concurrency, crash, bounds --

def test_two_overlapping_passes_delete_each_object_once(world, storage) -> None:
    files = world.add_files(300)
    held = world.add_upload("clean", held=True)
    world.clock.advance(days=31)
    client_a, client_b = create_s3_client(world.storage), create_s3_client(world.storage)
    deletes_a, deletes_b = record_deletes(client_a), record_deletes(client_b)
    published_a: list[UploadEnded] = []
    published_b: list[UploadEnded] = []
    a_holds_locks, b_finished = threading.Event(), threading.Event()
    summaries: dict[str, RetentionSummary] = {}
    failures: list[BaseException] = []

    def publish_a(ended) -> None:  # noqa: ANN001
        published_a.extend(ended)
        if not a_holds_locks.is_set():  # pass A sits on its first batch, rows locked, objects deleted
            a_holds_locks.set()
            assert b_finished.wait(120)

    def pass_a() -> None:
        try:
            summaries["a"] = world.run(s3=client_a, publish=publish_a, batch_size=50)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            failures.append(exc)
            a_holds_locks.set()

    def pass_b() -> None:
        try:
            assert a_holds_locks.wait(120)
            summaries["b"] = world.run(s3=client_b, publish=published_b.extend, batch_size=50)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)
        finally:
            b_finished.set()

    threads = [threading.Thread(target=pass_a), threading.Thread(target=pass_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert failures == []

    a, b = summaries["a"], summaries["b"]
    assert (a.expired, b.expired) == (50, 250)  # B skipped the batch A held locked
    assert a.objects_missing == b.objects_missing == 0  # B did not mistake A's half-done rows for lost objects
    keys_a = [k for _, keys in deletes_a for k in keys]
    keys_b = [k for _, keys in deletes_b for k in keys]
    assert len(keys_a) == len(set(keys_a)) and len(keys_b) == len(set(keys_b))
    assert set(keys_a).isdisjoint(keys_b)
    assert set(keys_a) | set(keys_b) == {f["object_key"] for f in files}
    ids_a, ids_b = [e.id for e in published_a], [e.id for e in published_b]
    assert set(ids_a).isdisjoint(ids_b) and len(ids_a) + len(ids_b) == 300
    assert world.statuses(files) == {"expired": 300}
    assert set(world.audit_counts().values()) == {1} and len(world.audit_counts()) == 300
    assert world.row(held["id"])["status"] == "clean"
    assert world.keys(world.storage.uploads_bucket) == {held["object_key"]}


@pytest.mark.slow
def test_more_than_1000_files_take_several_delete_requests(world, capsys) -> None:
    files = world.add_files(1050)
    world.clock.advance(days=31)
    client = create_s3_client(world.storage)
    deletes = record_deletes(client)
    job = world.job(s3=client, batch_size=2000)

    started = time.perf_counter()
    job.expire_due()
    expire_seconds = time.perf_counter() - started

    # SeaweedFS itself refuses more than 1,000 keys a request: a wrong split fails here.
    assert [len(keys) for _, keys in deletes] == [1000, 50]
    assert job.summary.expired == 1050 and job.summary.delete_requests == 2
    assert world.statuses(files) == {"expired": 1050}
    assert world.keys(world.storage.uploads_bucket) == set()
    assert len(world.audit_counts()) == 1050 and len(world.published) == 1050

    # The same number of objects with raw DeleteObjects, in the same run, for comparison.
    raw_keys = [f"bench/{i:05d}" for i in range(1050)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: world.put(world.storage.uploads_bucket, k), raw_keys))
    started = time.perf_counter()
    for start in range(0, len(raw_keys), 1000):
        world.s3.delete_objects(Bucket=world.storage.uploads_bucket,
                                Delete={"Objects": [{"Key": k} for k in raw_keys[start:start + 1000]], "Quiet": True})
    raw_seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nexpire: 1050 files expired (rows locked, objects deleted, rows marked, audited, events built) in "
              f"{expire_seconds:.2f} s = {1050 / expire_seconds:.0f} files/s; raw DeleteObjects of 1050 keys: "
              f"{raw_seconds:.2f} s = {1050 / raw_seconds:.0f} objects/s")


def test_an_unreachable_sink_rolls_the_batch_back_and_the_next_pass_finishes_it(world) -> None:
    files = world.add_files(3)
    world.clock.advance(days=31)
    down = EventSink(f"http://127.0.0.1:{free_port()}/", timeout=2)

    with pytest.raises(DependencyUnavailable):
        world.run(publish=lambda ended: down.send_all(e.to_cloudevent() for e in ended))

    # Storage went first: the bytes are gone, the rows wait for their events.
    assert world.keys(world.storage.uploads_bucket) == set()
    assert world.statuses(files) == {"clean": 3} and world.audit() == []
    summary = world.run()
    assert summary.expired == 3 and world.statuses(files) == {"expired": 3}
    assert sorted(e.upload_id for e in world.published) == sorted(f["id"] for f in files)


# -- the function process --

class EventSinkServer:
    """K_SINK for a function process: records each CloudEvent; can hang on the n-th one until released."""

    def __init__(self, hang_at: int | None = None) -> None:
        self.events: list[CloudEvent] = []
        self.hang_at = hang_at
        self.hanging = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):  # noqa: ANN001, ANN204 - WSGI
        request = Request(environ)
        event = from_http(dict(request.headers), request.get_data())
        with self._lock:
            self.events.append(event)
            count = len(self.events)
        if count == self.hang_at:
            self.hanging.set()
            self.release.wait(120)
        start_response("202 Accepted", [("Content-Type", "text/plain")])
        return [b""]

    def ended(self) -> list[UploadEnded]:
        with self._lock:
            return [UploadEnded.from_cloudevent(e) for e in self.events]


@pytest.fixture
def sink_server() -> Iterator[tuple[EventSinkServer, str]]:
    app = EventSinkServer()
    server = WSGIServer(application=app, threaded=True)
    server.start()
    yield app, server.url + "/"
    app.release.set()
    server.stop()


def start_expire(stack, env: dict[str, str], label: str) -> tuple[ChildProcess, str]:
    port = free_port()
    child = stack.start_function("expire", port=port, extra_env=env, label=f"{label}-{uuid.uuid4().hex[:6]}")
    return child, f"http://127.0.0.1:{port}"


def ping(url: str, *, task: str | None = "expire", timeout: float = 300) -> Reply:
    event = Ping(id=uuid.uuid4().hex, source=PING_SOURCE, time=datetime.now(UTC), task=task).to_cloudevent()
    headers, body = to_binary(event)
    return call("POST", url, data=body, headers={**headers, **as_broker("expire")}, timeout=timeout)


def past(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def test_function_answers_a_ping_with_its_summary_and_emits_one_event_per_file(
        stack, database_url, world, sink_server) -> None:
    sink, sink_url = sink_server
    expired = [world.add_upload("clean", created=past(31)), world.add_upload("infected", created=past(31))]
    kept = world.add_upload("clean")
    child, url = start_expire(stack, world.function_env(sink_url), "expire-ping")
    try:
        reply = ping(url)
        assert reply.status == 200, reply.body
        # The reply is a CloudEvent (Knative takes an empty body or an event): the pass's summary.
        completed = PassCompleted.from_cloudevent(from_http(reply.headers, reply.body))
        assert (completed.type, completed.source, completed.task) == ("dev.dropgate.expire.completed",
                                                                      "dropgate/expire", "expire")
        summary = completed.summary
        assert completed.run_id == summary["run_id"]
        assert (summary["expired"], summary["events"], summary["error_count"], summary["more_work"]) == (2, 2, 0, False)
        received = sink.ended()
        assert sorted((e.upload_id, e.type, e.source) for e in received) == sorted(
            (r["id"], "dev.dropgate.upload.expired", "dropgate/expire") for r in expired)
        assert world.row(kept["id"])["status"] == "clean"
        assert ping(url, task=None).status == 200  # a PingSource without data: a tick too

        # One JSON line per pass in the function's log, with the same counts.
        lines = [json.loads(line) for line in child.log_path.read_text().splitlines() if line.startswith("{")]
        passes = [line for line in lines if line.get("message") == "retention pass finished"]
        assert [p["expired"] for p in passes] == [2, 0] and passes[0]["run_id"] == summary["run_id"]
    finally:
        child.stop()


def test_function_refuses_what_is_not_its_ping(stack, database_url, world, sink_server) -> None:
    _, sink_url = sink_server
    child, url = start_expire(stack, world.function_env(sink_url), "expire-refuses")
    try:
        storage_event = ObjectCreated(id="e-1", event_name="ObjectCreated:Put", event_source="minio:s3", region="",
                                      bucket=world.storage.uploads_bucket, key="k", time=datetime.now(UTC), size=1)
        headers, body = to_binary(storage_event.to_cloudevent())
        wrong_type = call("POST", url, data=body, headers={**headers, **as_broker("expire")})
        assert wrong_type.status == 400 and "dev.knative.sources.ping" in wrong_type.json()["detail"]
        malformed = call("POST", url, data=b"{not json", headers={"Content-Type": "application/json",
                                                                   **as_broker("expire")})
        assert malformed.status == 400
        assert ping(url, task="scan").status == 400
        headers, body = to_binary(Ping(id="p", source="/not/a/pingsource", time=datetime.now(UTC)).to_cloudevent())
        assert call("POST", url, data=body, headers={**headers, **as_broker("expire")}).status == 400
        assert call("GET", url).status == 405
        with world.connect() as conn:
            assert conn.execute("SELECT count(*) AS n FROM retention_cursors").fetchone()["n"] == 0  # no pass ran
    finally:
        child.stop()


def test_function_answers_503_when_the_database_or_storage_is_down(stack, database_url, world, sink_server) -> None:
    _, sink_url = sink_server
    no_database = {**world.function_env(sink_url), "DROPGATE_DB_CONNECT_TIMEOUT": "1",
                   "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"}
    no_storage = {**world.function_env(sink_url), "DROPGATE_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    for env, what in ((no_database, "database"), (no_storage, "storage")):
        child, url = start_expire(stack, env, f"expire-no-{what}")
        try:
            reply = ping(url)
            assert reply.status == 503, (what, reply.body)
            assert reply.json()["error"] == "dependency_unavailable" and what in reply.json()["detail"]
            assert reply.header("Retry-After")
        finally:
            child.stop()


@pytest.mark.slow
def test_a_pass_killed_midway_is_finished_by_the_next_one(stack, database_url, world) -> None:
    """The sink hangs inside the second batch; the process is SIGKILLed there, as an OOM kill would."""
    files = world.add_files(600, created=past(31))  # default batches of 500: one committed, one in flight
    sink = EventSinkServer(hang_at=550)
    server = WSGIServer(application=sink, threaded=True)
    server.start()
    first, url = start_expire(stack, world.function_env(server.url + "/"), "expire-killed")
    answers: list[object] = []
    caller = threading.Thread(target=lambda: answers.append(_ping_or_error(url)))
    try:
        caller.start()
        assert sink.hanging.wait(240), "the pass never reached the second batch"
        first.kill()
        sink.release.set()
        caller.join(60)
        assert answers and not isinstance(answers[0], Reply), answers  # the caller saw the connection die

        first_batch, second_batch = files[:500], files[500:]
        assert world.statuses(first_batch) == {"expired": 500}
        # The crash window: storage already deleted the second batch, its rows were rolled back.
        assert world.statuses(second_batch) == {"clean": 100}
        assert not world.exists(world.storage.uploads_bucket, second_batch[0]["object_key"])

        second, url = start_expire(stack, world.function_env(server.url + "/"), "expire-rerun")
        try:
            reply = ping(url)
        finally:
            second.stop()
        assert reply.status == 200, reply.body
        assert reply.json()["summary"]["expired"] == 100
    finally:
        sink.release.set()
        first.stop()
        server.stop()

    assert world.statuses(files) == {"expired": 600}
    assert world.keys(world.storage.uploads_bucket) == set()
    counts = world.audit_counts()
    assert len(counts) == 600 and set(counts.values()) == {1}  # one audit entry per file, never two
    received = [e.id for e in sink.ended()]
    assert set(received) == {f"{f['id']}.expired" for f in files}
    # At least once: only events of the rolled-back batch came twice, with the same ids.
    repeated = {i for i in received if received.count(i) > 1}
    assert repeated <= {f"{f['id']}.expired" for f in second_batch} and len(received) == 650


def _ping_or_error(url: str) -> object:
    try:
        return ping(url)
    except Exception as exc:  # noqa: BLE001 - the connection dies with the process
        return exc


# -- the lifecycle rule under the job --

def test_set_up_installs_the_lifecycle_safety_net_once(world) -> None:
    for bucket in (world.storage.uploads_bucket, world.storage.quarantine_bucket):
        rules = {r["ID"]: r for r in world.s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
        assert rules["dropgate-retention"]["Expiration"] == {"Days": 30}
        assert rules["dropgate-retention"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
        assert rules["dropgate-abort-incomplete-multipart"]["AbortIncompleteMultipartUpload"] == {
            "DaysAfterInitiation": 1}
        assert {r["Status"] for r in rules.values()} == {"Enabled"}
    actions = set_up_buckets(world.storage, world.s3)  # a second set-up changes nothing
    assert not any(a.startswith("lifecycle") for a in actions)
