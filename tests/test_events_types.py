"""The CloudEvent types: every example validates against its JSON Schema and round-trips."""

from datetime import UTC, datetime
from uuid import UUID

import jsonschema
import pytest
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent, from_http

from events import types, wire
from events.types import (
    MetadataRecorded,
    ObjectCreated,
    ObjectRemoved,
    PassCompleted,
    Ping,
    ScanVerdict,
    StorageObjectEvent,
    UploadEnded,
)
from events.wire import InvalidEvent, load_schema
from shared.platform.delivery import to_http

UPLOAD = UUID("0b7f9a3e-2222-4222-8333-444455556666")
WHEN = datetime(2026, 11, 25, 12, 0, 5, 412000, tzinfo=UTC)

EXAMPLES = [
    ObjectCreated(id="187B3C4D5E6F7081.dd90", event_name="ObjectCreated:CompleteMultipartUpload",
                  event_source="minio:s3", region="", bucket="dropgate-uploads",
                  key="uploads/2026/11/25/Q3 report+final ü €.pdf", time=WHEN, size=26214400,
                  etag="9b2cf535f27731c974343645a3985328-3", sequencer="187B3C4D5E0A1B2C",
                  content_type="application/pdf", version_id=None),
    ObjectCreated(id="b7e33ede", event_name="ObjectCreated:Copy", event_source="seaweedfs:s3", region="",
                  bucket="dg.quarantine.with.dots", key="k", time=WHEN, size=0),
    ObjectCreated(id="x", event_name="ObjectCreated:Put", event_source="aws:s3", region="eu-central-1",
                  bucket="b", key="photo.jpg", time=datetime(2026, 1, 1, tzinfo=UTC), size=1,
                  etag="0123456789abcdef0123456789abcdef", sequencer="0A1B2C3D4E5F678901"),
    ObjectRemoved(id="187B3C7A11223344.dd90.a998", event_name="ObjectRemoved:Delete", event_source="minio:s3",
                  region="", bucket="dropgate-uploads", key="a/b c", time=WHEN, sequencer="187B3C7A1B2C3D4E"),
    ObjectRemoved(id="m", event_name="ObjectRemoved:DeleteMarkerCreated", event_source="minio:s3", region="",
                  bucket="dropgate-uploads", key="k", time=WHEN, version_id="c2d8a9b0"),
    ScanVerdict(id="v1", source="dropgate/scan", time=WHEN, upload_id=UPLOAD, verdict="clean",
                bucket="dropgate-uploads", key="uploads/2026/11/25/x", size=10, sha256="a" * 64,
                detected_type="application/pdf"),
    ScanVerdict(id="v2", source="dropgate/scan", time=WHEN, upload_id=UPLOAD, verdict="infected",
                bucket="dropgate-quarantine", key="k", size=68, sha256="b" * 64, signature="Eicar-Signature"),
    ScanVerdict(id="v3", source="dropgate/scan", time=WHEN, upload_id=UPLOAD, verdict="rejected",
                bucket="dropgate-quarantine", key="k", reason="declared application/pdf, found image/png"),
    ScanVerdict(id="v4", source="dropgate/scan", time=WHEN, upload_id=UPLOAD, verdict="unscannable",
                bucket="dropgate-quarantine", key="k", reason="archive nested deeper than 17 levels",
                signature_version=27490),
    ScanVerdict(id="v5", source="dropgate/scan", time=WHEN, upload_id=UPLOAD, verdict="infected",
                bucket="dropgate-quarantine", key="k", signature="Win.Test.New", signature_version=27491,
                rescan=True),
    MetadataRecorded(id="metadata-1", source="dropgate/metadata", time=WHEN, upload_id=UPLOAD,
                     bucket="dropgate-uploads", key="k", storage_event_id="187B.dd90",
                     storage_event_type=types.OBJECT_CREATED_PUT, status="uploaded", present=True, size=5,
                     etag="5d41402abc4b2a76b9719d911017c592", content_type="text/plain", sequencer="18EB4E0DA91C4ED1"),
    MetadataRecorded(id="metadata-2", source="dropgate/metadata", time=WHEN, upload_id=UPLOAD,
                     bucket="dropgate-uploads", key="k", storage_event_id="d9fc",
                     storage_event_type=types.OBJECT_REMOVED_DELETE, status="expired", present=False),
    UploadEnded(id="e1", source="dropgate/expire", time=WHEN, upload_id=UPLOAD, outcome="expired",
                bucket="dropgate-uploads", key="k", reason="retention of 30 days passed", object_deleted=True),
    UploadEnded(id="e2", source="dropgate/expire", time=WHEN, upload_id=UPLOAD, outcome="abandoned",
                bucket="dropgate-uploads", key="k", reason="multipart upload idle for 24 hours",
                object_deleted=False),
    PassCompleted(id="expire-r1", source="dropgate/expire", time=WHEN, task="expire", run_id="r1", trigger="p1",
                  summary={"expired": 2, "more_work": False, "errors": []}),
    PassCompleted(id="reconcile-r2", source="dropgate/reconcile", time=WHEN, task="reconcile", run_id="r2",
                  trigger=None, summary={"redriven": 0, "rescans": {"requested": 0}}),
    Ping(id="p1", source="/apis/v1/namespaces/dropgate/pingsources/dropgate-expire", time=WHEN, task="expire"),
    Ping(id="p2", source="/apis/v1/namespaces/dropgate/pingsources/dropgate-expire", time=WHEN),
]


def ids(example):
    return f"{type(example).__name__}-{example.type}-{example.id}"


def validator(cls):
    return jsonschema.Draft202012Validator(load_schema(cls.SCHEMA), format_checker=jsonschema.FormatChecker())


def parser_of(example):
    return StorageObjectEvent if isinstance(example, StorageObjectEvent) else type(example)


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_every_example_validates_against_its_schema(example):
    validator(type(example)).validate(example.to_cloudevent().data)


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_to_and_from_cloudevent_round_trips(example):
    event = example.to_cloudevent()
    assert event["type"] == example.type
    assert event["specversion"] == "1.0"
    assert parser_of(example).from_cloudevent(event) == example


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_round_trip_through_http_binary_and_structured_modes(example):
    headers, body = to_http(example.to_cloudevent())
    assert all(value.isascii() for value in headers.values())  # non-ASCII subjects are percent-encoded
    assert parser_of(example).from_cloudevent(from_http(headers, body)) == example
    headers, body = to_structured(example.to_cloudevent())
    assert parser_of(example).from_cloudevent(from_http(headers, body)) == example


def test_every_type_constant_has_a_class_and_a_schema():
    constants = {value for name, value in vars(types).items()
                 if name.isupper() and isinstance(value, str) and value.startswith(("com.amazonaws.s3.Object", "dev."))}
    covered = set(ObjectCreated.TYPES) | set(ObjectRemoved.TYPES) | set(ScanVerdict.TYPES) | set(UploadEnded.TYPES) \
        | set(PassCompleted.TYPES) | {MetadataRecorded.TYPE, Ping.TYPE}
    assert constants == covered
    for cls in types.EVENT_CLASSES:
        jsonschema.Draft202012Validator.check_schema(load_schema(cls.SCHEMA))


def test_storage_events_follow_the_aws_s3_adapter_mapping():
    event = EXAMPLES[0].to_cloudevent()
    assert event["type"] == "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload"
    assert event["source"] == "minio:s3..dropgate-uploads"  # eventSource . awsRegion . bucket
    assert event["subject"] == "uploads/2026/11/25/Q3 report+final ü €.pdf"
    assert event["time"] == "2026-11-25T12:00:05.412000Z"
    assert event["bucket"] == "dropgate-uploads"
    assert event["datacontenttype"] == "application/json"


def test_parsing_gives_back_the_kind_of_storage_event():
    removed = StorageObjectEvent.from_cloudevent(EXAMPLES[3].to_cloudevent())
    assert isinstance(removed, ObjectRemoved) and removed.is_removal
    with pytest.raises(InvalidEvent, match="is not one of"):
        ObjectCreated.from_cloudevent(EXAMPLES[3].to_cloudevent())


def test_a_percent_encoded_subject_is_accepted_as_knative_delivers_it():
    event = EXAMPLES[0].to_cloudevent()
    attributes = dict(event.get_attributes(), subject="uploads/2026/11/25/Q3%20report+final%20%C3%BC%20%E2%82%AC.pdf")
    assert StorageObjectEvent.from_cloudevent(CloudEvent(attributes, event.data)) == EXAMPLES[0]


def test_invalid_event_names_every_problem_and_is_a_value_error():
    attributes = {"specversion": "1.0", "type": "com.amazonaws.s3.ObjectCreated:Put", "id": "x",
                  "source": "minio:s3..dropgate-uploads", "time": "yesterday", "subject": "other",
                  "bucket": "elsewhere"}
    data = {"bucket": "dropgate-uploads", "size": -1, "etag": 7, "sequencer": "xyz"}
    with pytest.raises(ValueError) as caught:
        StorageObjectEvent.from_cloudevent(CloudEvent(attributes, data))
    error = caught.value
    assert isinstance(error, InvalidEvent) and error.event_id == "x"
    text = str(error)
    for expected in ("attribute time 'yesterday'", "data.key must be a non-empty string",
                     "data.size must be a non-negative integer", "data.etag must be a non-empty string",
                     "data.sequencer must be hexadecimal", "extension attribute bucket 'elsewhere'"):
        assert expected in text
    assert len(error.problems) == 6


def test_schema_and_parser_refuse_the_same_bad_data():
    good = EXAMPLES[0].to_cloudevent()
    for field, value in (("sequencer", "not-hex"), ("size", -5), ("key", "")):
        data = dict(good.data, **{field: value})
        with pytest.raises(jsonschema.ValidationError):
            validator(ObjectCreated).validate(data)
        with pytest.raises(InvalidEvent, match=f"data.{field}"):
            StorageObjectEvent.from_cloudevent(CloudEvent(dict(good.get_attributes()), data))


def test_verdict_rules_hold_in_the_class_the_schema_and_the_parser():
    with pytest.raises(ValueError, match="signature"):
        ScanVerdict(id="v", source="dropgate/scan", time=WHEN, upload_id=UPLOAD, verdict="infected", bucket="b",
                    key="k")
    event = EXAMPLES[6].to_cloudevent()
    data = dict(event.data, signature=None)
    with pytest.raises(jsonschema.ValidationError):
        validator(ScanVerdict).validate(data)
    with pytest.raises(InvalidEvent, match="signature is required"):
        ScanVerdict.from_cloudevent(CloudEvent(dict(event.get_attributes()), data))
    with pytest.raises(InvalidEvent, match="must be 'clean'"):
        ScanVerdict.from_cloudevent(CloudEvent(dict(event.get_attributes(), type=types.SCAN_CLEAN), event.data))
    with pytest.raises(InvalidEvent, match="subject"):
        ScanVerdict.from_cloudevent(CloudEvent(dict(event.get_attributes(), subject="someone-else"), event.data))


def test_a_ping_without_data_and_one_from_elsewhere():
    attributes = {"specversion": "1.0", "type": types.PING, "id": "p", "time": "2026-11-25T12:00:00Z",
                  "source": "/apis/v1/namespaces/dropgate/pingsources/dropgate-expire"}
    ping = Ping.from_cloudevent(CloudEvent(attributes, None))
    assert (ping.task, ping.namespace, ping.name) == (None, "dropgate", "dropgate-expire")
    with pytest.raises(InvalidEvent, match="pingsources"):
        Ping.from_cloudevent(CloudEvent(dict(attributes, source="/somewhere/else"), {"task": "expire"}))


def test_times_keep_their_precision_and_need_a_zone():
    assert wire.format_time(datetime(2026, 11, 25, 12, 0, tzinfo=UTC)) == "2026-11-25T12:00:00Z"
    assert wire.parse_time("2016-09-08T22:34:38.226Z") == datetime(2016, 9, 8, 22, 34, 38, 226000, tzinfo=UTC)
    with pytest.raises(ValueError):
        wire.parse_time("2026-11-25T12:00:00")
