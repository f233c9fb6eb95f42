"""The storage adapters against recorded notifications (tests/events/), and their edge cases."""

import json
from datetime import UTC, datetime

import jsonschema
import pytest

from events.minio import parse_minio_notification
from events.notifications import MalformedNotification, OwnedBuckets
from events.seaweedfs import locate, parse_seaweedfs_notification
from events.types import StorageObjectEvent
from events.wire import load_schema
from tests.events import OWNED, adapt, all_pairs, as_plain, load_expected, load_input

STORAGE_SCHEMA = jsonschema.Draft202012Validator(load_schema("storage-object.json"))


@pytest.mark.parametrize(("storage", "name"), all_pairs(), ids=[f"{s}/{n}" for s, n in all_pairs()])
def test_recorded_notification_maps_to_the_expected_cloudevents(storage, name):
    adapted = adapt(storage, load_input(storage, name))
    assert [as_plain(event.to_cloudevent()) for event in adapted.events] == load_expected(storage, name)
    for event in adapted.events:
        STORAGE_SCHEMA.validate(event.to_cloudevent().data)
        assert StorageObjectEvent.from_cloudevent(event.to_cloudevent()) == event
    assert adapted.events or adapted.ignored, "every notification is either mapped or ignored with a reason"


def test_a_redelivered_notification_gets_the_same_ids_and_different_changes_get_different_ones():
    seen = {}
    for storage, name in all_pairs():
        first = [e.id for e in adapt(storage, load_input(storage, name)).events]
        again = [e.id for e in adapt(storage, load_input(storage, name)).events]
        assert first == again
        for event_id in first:
            assert event_id not in seen, f"{storage}/{name} reuses the id of {seen.get(event_id)}"
            seen[event_id] = f"{storage}/{name}"
    assert len(seen) >= 15


# -- MinIO --

def minio_body(*records):
    return json.dumps({"EventName": records[0]["eventName"], "Key": "ignored", "Records": list(records)}).encode()


def minio_record(key="k", name="s3:ObjectCreated:Put", bucket="dropgate-uploads", request_id="187B3C4D5E6F7081",
                 **object_fields):
    return {"eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventName": name,
            "eventTime": "2026-11-25T12:00:00.000Z",
            "responseElements": {"x-amz-request-id": request_id, "x-amz-id-2": "dd90",
                                 "x-minio-deployment-id": "751a8ba6"},
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "sequencer": "187B3C4D5E0A1B2C",
                                                        **object_fields}}}


MINIO_OWNED = OwnedBuckets.of(["dropgate-uploads", "dropgate-quarantine"])


def test_minio_keys_are_decoded_exactly_once():
    encoded = {"a+b": "a b", "a%2Bb": "a+b", "a%252Bb": "a%2Bb", "dir%2Ffile": "dir/file",
               "%C3%BC%E2%82%AC": "ü€", "100%25": "100%"}
    body = minio_body(*(minio_record(key, request_id=f"R{i}") for i, key in enumerate(encoded)))
    events = parse_minio_notification(body, owned_buckets=MINIO_OWNED).events
    assert [e.key for e in events] == list(encoded.values())


def test_minio_multipart_etags_keep_their_part_count_and_lose_their_quotes():
    body = minio_body(minio_record(name="s3:ObjectCreated:CompleteMultipartUpload",
                                   eTag='"9b2cf535f27731c974343645a3985328-3"', size=26214400))
    (event,) = parse_minio_notification(body, owned_buckets=MINIO_OWNED).events
    assert event.etag == "9b2cf535f27731c974343645a3985328-3"
    assert event.type == "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload"


def test_minio_ids_follow_the_adapter_spec_and_stay_unique_in_a_bulk_delete():
    put = parse_minio_notification(minio_body(minio_record()), owned_buckets=MINIO_OWNED).events[0]
    assert put.id == "187B3C4D5E6F7081.dd90"  # x-amz-request-id "." x-amz-id-2
    bulk = minio_body(*(minio_record(key, name="s3:ObjectRemoved:Delete", request_id="187B3C7A11223344")
                        for key in ("a", "b", "a")))
    removed = parse_minio_notification(bulk, owned_buckets=MINIO_OWNED).events
    assert removed[0].id.startswith("187B3C7A11223344.dd90.")
    assert removed[0].id != removed[1].id  # one DeleteObjects request, two keys
    assert removed[0].id == removed[2].id  # the same key again: the same event


def test_minio_without_node_id_uses_the_deployment_and_without_request_id_a_digest():
    record = minio_record()
    del record["responseElements"]["x-amz-id-2"]
    (event,) = parse_minio_notification(minio_body(record), owned_buckets=MINIO_OWNED).events
    assert event.id == "187B3C4D5E6F7081.751a8ba6"
    record["responseElements"] = {}
    first = parse_minio_notification(minio_body(record), owned_buckets=MINIO_OWNED).events[0].id
    record["s3"]["object"]["sequencer"] = "187B3C4D5E0A1B2D"
    second = parse_minio_notification(minio_body(record), owned_buckets=MINIO_OWNED).events[0].id
    assert first.startswith("minio-") and second.startswith("minio-") and first != second


@pytest.mark.parametrize(("name", "reason"), [
    ("s3:ObjectAccessed:Get", "not an object creation or removal"),
    ("s3:ObjectCreated:PutTagging", "metadata"),
    ("s3:ObjectCreated:PutLegalHold", "metadata"),
    ("s3:ObjectRemoved:NoOP", "not an object creation or removal"),
    ("s3:Replication:OperationCompletedReplication", "not an object creation or removal"),
])
def test_minio_events_that_change_no_bytes_are_ignored(name, reason):
    adapted = parse_minio_notification(minio_body(minio_record(name=name)), owned_buckets=MINIO_OWNED)
    assert adapted.events == ()
    assert reason in adapted.ignored[0].reason


def test_minio_accepts_aws_event_names_without_the_s3_prefix():
    (event,) = parse_minio_notification(minio_body(minio_record(name="ObjectCreated:Copy")),
                                        owned_buckets=MINIO_OWNED).events
    assert event.type == "com.amazonaws.s3.ObjectCreated:Copy"


def test_minio_malformed_bodies_name_every_problem():
    with pytest.raises(MalformedNotification, match="not JSON"):
        parse_minio_notification(b"{nope", owned_buckets=MINIO_OWNED)
    with pytest.raises(MalformedNotification, match="Records: expected a list"):
        parse_minio_notification(b'{"EventName": "s3:ObjectCreated:Put"}', owned_buckets=MINIO_OWNED)
    # MinIO's own documentation (the AMQP example) prints eventTime with typographic dashes.
    docs_typo = {"Records": [{"eventVersion": "2.0", "eventSource": "aws:s3", "awsRegion": "",
                              "eventTime": "2016\u201309\u201308T22:34:38.226Z", "eventName": "s3:ObjectCreated:Put",
                              "responseElements": {}, "s3": {"bucket": {"name": "images"},
                                                             "object": {"key": "myphoto.jpg", "size": 200436,
                                                                        "sequencer": "147279EAF9F40933"}}},
                             {"s3": {"object": {"size": "big"}}}]}
    with pytest.raises(MalformedNotification) as caught:
        parse_minio_notification(json.dumps(docs_typo).encode(), owned_buckets=OwnedBuckets.of(["images"]))
    problems = caught.value.problems
    assert any("Records[0].eventTime" in p for p in problems)
    assert {"Records[1].eventName: required, a non-empty string", "Records[1].eventTime: required, a non-empty string",
            "Records[1].s3.bucket: expected an object", "Records[1].s3.object.key: required, a non-empty string",
            "Records[1].s3.object.size: expected a non-negative integer"} <= set(problems)
    assert isinstance(caught.value, ValueError)


# -- SeaweedFS --

def seaweed(name, owned=None):
    return adapt("seaweedfs", load_input("seaweedfs", name), owned)


def test_seaweedfs_ignores_buckets_dropgate_does_not_own():
    adapted = seaweed("put-key-with-space-plus-unicode", OwnedBuckets.of(["dg-quarantine"]))
    assert adapted.events == ()
    assert adapted.ignored[0].reason == "bucket dg-uploads is not dropgate's"


@pytest.mark.parametrize(("path", "expected"), [
    ("/buckets/dg-uploads/uploads/2026/x", ("dg-uploads", "uploads/2026/x")),
    ("/buckets/dg-uploads/a/.uploads/x", ("dg-uploads", "a/.uploads/x")),  # only the bucket's own staging area
    ("/buckets/dg-uploads/.uploads/abc_1/0001_x.part", "multipart staging area"),
    ("/buckets/dg-uploads/.uploads", "multipart staging area"),
    ("/buckets/dg-uploads/v.txt.versions/v_1", "version folder"),
    ("/buckets/dg-uploads/v.txt.versions", "version folder"),
    ("/buckets/dg-uploads", "the bucket folder itself"),
    ("/buckets/other/x", "not dropgate's"),
    ("/etc/passwd", "outside the filer's /buckets folder"),
])
def test_seaweedfs_paths_dropgate_follows(path, expected):
    found = locate(path, OwnedBuckets.of(["dg-uploads"]))
    assert found == expected if isinstance(expected, tuple) else expected in found


def test_seaweedfs_tagging_does_not_create_a_second_object_event_but_an_overwrite_does():
    assert seaweed("tagging").events == ()
    (overwrite,) = seaweed("overwrite").events
    (original,) = seaweed("put-key-with-space-plus-unicode").events
    assert overwrite.type == "com.amazonaws.s3.ObjectCreated:Put"
    assert int(overwrite.sequencer, 16) > int(original.sequencer, 16)
    (again,) = seaweed("put-empty-again").events  # same bytes, later PUT: still a new object version
    (first,) = seaweed("put-empty").events
    assert again.id != first.id and int(again.sequencer, 16) > int(first.sequencer, 16)


def test_seaweedfs_multipart_completion_copy_and_put_are_told_apart():
    assert seaweed("multipart-complete").events[0].event_name == "ObjectCreated:CompleteMultipartUpload"
    assert seaweed("copy-to-quarantine").events[0].event_name == "ObjectCreated:Copy"  # same key, older crtime
    assert seaweed("copy-same-bucket-other-key").events[0].event_name == "ObjectCreated:Copy"
    assert seaweed("put-key-with-space-plus-unicode").events[0].event_name == "ObjectCreated:Put"


def test_seaweedfs_removal_carries_the_removed_versions_sequencer():
    (created,) = seaweed("multipart-complete").events
    (removed,) = seaweed("delete").events
    assert removed.is_removal and removed.sequencer == created.sequencer
    assert removed.time == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # the filer gives no deletion time


def test_seaweedfs_malformed_bodies_name_every_problem():
    owned = OWNED["seaweedfs"]
    with pytest.raises(MalformedNotification, match="body must be a JSON object"):
        parse_seaweedfs_notification(b"[]", owned_buckets=owned)
    body = {"event_type": "create", "key": "relative/path", "message": {"new_entry": {
        "name": "", "chunks": "many", "attributes": {"file_size": "big", "mtime": 1.5}}}}
    with pytest.raises(MalformedNotification) as caught:
        parse_seaweedfs_notification(json.dumps(body).encode(), owned_buckets=owned)
    assert set(caught.value.problems) == {
        "key: required, the entry's absolute filer path",
        "message.new_entry.name: required, a non-empty string",
        "message.new_entry.chunks: expected a list of chunk objects",
        "message.new_entry.attributes.file_size: expected an integer",
        "message.new_entry.attributes.mtime: expected an integer"}
    with pytest.raises(MalformedNotification, match="old_entry: required for a delete"):
        parse_seaweedfs_notification(b'{"event_type": "delete", "key": "/buckets/dg-uploads/x", "message": {}}',
                                     owned_buckets=owned)
    with pytest.raises(MalformedNotification, match="event_type: expected one of"):
        parse_seaweedfs_notification(b'{"event_type": "truncate", "key": "/x", "message": {}}', owned_buckets=owned)


def test_every_notification_parser_is_registered_and_served() -> None:
    """A parser in events/ that is not in events/backends.py would be dead code; storage_events serves each one."""
    import ast
    from pathlib import Path

    from events.backends import PARSERS
    from shared.intake.webhook import StorageWebhook

    root = Path(__file__).resolve().parents[1] / "events"
    parsers = {node.name for path in root.glob("*.py") for node in ast.parse(path.read_text()).body
               if isinstance(node, ast.FunctionDef) and node.name.startswith("parse_")
               and node.name.endswith("_notification")}
    assert parsers == {f"parse_{name}_notification" for name in PARSERS}
    assert StorageWebhook.backends() == sorted(PARSERS) == ["minio", "seaweedfs"]
