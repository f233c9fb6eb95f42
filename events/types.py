"""The CloudEvents dropgate consumes and emits: one frozen dataclass per event.

Each class names its `type` constant(s) (`Final`), the JSON Schema of its
`data` (`events/schemas/`), and converts to and from
`cloudevents.http.CloudEvent`. Parsing collects every problem into one
`InvalidEvent` (a `ValueError`), so a function answers 400 naming all of them.
docs/events.md is the table of these events; docs/events-contract.md the agreed names.

Storage events follow the CloudEvents AWS S3 adapter
(cloudevents/spec, cloudevents/adapters/aws-s3.md): `type` is
`com.amazonaws.s3.` + the S3 event name, `source` is eventSource "." awsRegion
"." bucket, `subject` the object key, `time` the event's time; dropgate adds the
`bucket` extension attribute because Knative Trigger filters match attributes
exactly, and carries a small typed `data` instead of the raw S3 record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, Literal
from urllib.parse import unquote
from uuid import UUID

from cloudevents.http import CloudEvent

from events.wire import (
    JSON_CONTENT_TYPE,
    SPEC_VERSION,
    InvalidEvent,
    Reader,
    cloudevent,
    format_time,
    hex_or_problem,
)

BUCKET_EXTENSION: Final = "bucket"
# CloudEvents distributed-tracing extension (W3C trace context of the event; shared/platform/tracing.py).
TRACEPARENT_EXTENSION: Final = "traceparent"

# -- storage (CloudEvents AWS S3 adapter) --
S3_TYPE_PREFIX: Final = "com.amazonaws.s3."
OBJECT_CREATED_PUT: Final = "com.amazonaws.s3.ObjectCreated:Put"
OBJECT_CREATED_POST: Final = "com.amazonaws.s3.ObjectCreated:Post"
OBJECT_CREATED_COPY: Final = "com.amazonaws.s3.ObjectCreated:Copy"
OBJECT_CREATED_COMPLETE_MULTIPART_UPLOAD: Final = "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload"
OBJECT_REMOVED_DELETE: Final = "com.amazonaws.s3.ObjectRemoved:Delete"
OBJECT_REMOVED_DELETE_MARKER_CREATED: Final = "com.amazonaws.s3.ObjectRemoved:DeleteMarkerCreated"

# -- dropgate's own events (source "<DROPGATE_EVENT_SOURCE>/<function>", subject = upload id) --
SCAN_CLEAN: Final = "dev.dropgate.scan.clean"
SCAN_INFECTED: Final = "dev.dropgate.scan.infected"
SCAN_REJECTED: Final = "dev.dropgate.scan.rejected"
SCAN_UNSCANNABLE: Final = "dev.dropgate.scan.unscannable"  # not fully scanned: never downloadable
METADATA_RECORDED: Final = "dev.dropgate.metadata.recorded"
UPLOAD_EXPIRED: Final = "dev.dropgate.upload.expired"
UPLOAD_ABANDONED: Final = "dev.dropgate.upload.abandoned"
EXPIRE_COMPLETED: Final = "dev.dropgate.expire.completed"  # a pass's summary (subject: the pass's run id)
RECONCILE_COMPLETED: Final = "dev.dropgate.reconcile.completed"

# -- Knative PingSource --
PING: Final = "dev.knative.sources.ping"

Verdict = Literal["clean", "infected", "rejected", "unscannable"]


# ---------------------------------------------------------------------------------------------
# Storage events


@dataclass(frozen=True)
class StorageObjectEvent:
    """An object appeared in, or left, a bucket, as storage reported it.

    `ObjectCreated` and `ObjectRemoved` are the two concrete kinds; adapters
    return them and `from_cloudevent` gives back the right one.
    """

    NAMES: ClassVar[frozenset[str]] = frozenset()
    SCHEMA: ClassVar[str] = "storage-object.json"

    id: str  # stable per storage event: a redelivered notification yields the same id
    event_name: str  # S3 event name without the "s3:" prefix, e.g. "ObjectCreated:Put"
    event_source: str  # "minio:s3", "aws:s3", "seaweedfs:s3"
    region: str  # "" when storage has none (MinIO's default, SeaweedFS)
    bucket: str
    key: str  # decoded exactly once by the adapter; never URL-encoded here
    time: datetime
    size: int | None = None  # bytes; removals often do not say
    etag: str | None = None  # without quotes; a multipart ETag ends in "-<parts>"
    sequencer: str | None = None  # hex; orders events of one key (see shared.uploads.storage_facts.is_newer)
    content_type: str | None = None
    version_id: str | None = None  # only on versioned buckets
    # The trace this event continues: the object's x-amz-meta-traceparent (the upload's trace), as the
    # adapter found it in the notification, or the extension attribute of a received event.
    traceparent: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.NAMES and self.event_name not in self.NAMES:
            problems.append(f"event name {self.event_name!r} is not one of {', '.join(sorted(self.NAMES))}")
        for name in ("id", "event_source", "bucket", "key"):
            if not getattr(self, name):
                problems.append(f"{name} is required")
        if self.time.tzinfo is None:
            problems.append("time must be timezone-aware")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def type(self) -> str:
        return S3_TYPE_PREFIX + self.event_name

    @property
    def source(self) -> str:
        # eventSource "." awsRegion "." bucket name, as the AWS S3 adapter spec says.
        return f"{self.event_source}.{self.region}.{self.bucket}"

    @property
    def is_removal(self) -> bool:
        return self.event_name.startswith("ObjectRemoved:")

    def data(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "size": self.size, "etag": self.etag,
                "sequencer": self.sequencer, "content_type": self.content_type, "version_id": self.version_id}

    def to_cloudevent(self) -> CloudEvent:
        extensions = {BUCKET_EXTENSION: self.bucket}
        if self.traceparent:
            extensions[TRACEPARENT_EXTENSION] = self.traceparent
        return cloudevent(type_=self.type, source=self.source, id_=self.id, time=self.time, subject=self.key,
                           data=self.data(), extensions=extensions)

    @classmethod
    def from_cloudevent(cls, event: CloudEvent) -> StorageObjectEvent:
        kinds = {S3_TYPE_PREFIX + name: kind for kind in (ObjectCreated, ObjectRemoved) for name in kind.NAMES}
        if cls is not StorageObjectEvent:
            kinds = {t: kind for t, kind in kinds.items() if kind is cls}
        read = Reader(event, frozenset(kinds))
        bucket = read.text("bucket") or ""
        key = read.text("key") or ""
        event_source, region = "", ""
        if read.source:
            parts = read.source.split(".", 2)  # a bucket name may hold dots; eventSource and region do not
            if len(parts) != 3 or not parts[0] or (bucket and parts[2] != bucket):
                read.problems.append(f"source {read.source!r} must be <eventSource>.<awsRegion>.{bucket or '<bucket>'}")
            else:
                event_source, region = parts[0], parts[1]
        extension = read.attributes.get(BUCKET_EXTENSION)
        if bucket and extension != bucket:
            read.problems.append(f"extension attribute bucket {extension!r} must equal data.bucket {bucket!r}")
        subject = read.attributes.get("subject")
        # Knative's Go SDK percent-encodes ce- header values (HTTP binding 3.1.3.2); Python's 1.x SDK does not decode.
        if key and subject != key and (not isinstance(subject, str) or unquote(subject) != key):
            read.problems.append(f"subject {subject!r} must be the object key {key!r}")
        fields = dict(
            id=read.id, event_name=read.type.removeprefix(S3_TYPE_PREFIX), event_source=event_source, region=region,
            bucket=bucket, key=key, time=read.time, size=read.size("size"), etag=read.text("etag", optional=True),
            sequencer=hex_or_problem(read, "sequencer"), content_type=read.text("content_type", optional=True),
            version_id=read.text("version_id", optional=True),
            traceparent=read.optional_attribute(TRACEPARENT_EXTENSION))
        return read.done(kinds.get(read.type, ObjectCreated), **fields)


@dataclass(frozen=True)
class ObjectCreated(StorageObjectEvent):
    """New bytes under a key: a PUT, a POST form upload, a server-side copy or a completed multipart upload."""

    NAMES: ClassVar[frozenset[str]] = frozenset(
        {"ObjectCreated:Put", "ObjectCreated:Post", "ObjectCreated:Copy", "ObjectCreated:CompleteMultipartUpload"})
    TYPES: ClassVar[frozenset[str]] = frozenset(
        {OBJECT_CREATED_PUT, OBJECT_CREATED_POST, OBJECT_CREATED_COPY, OBJECT_CREATED_COMPLETE_MULTIPART_UPLOAD})


@dataclass(frozen=True)
class ObjectRemoved(StorageObjectEvent):
    """A key stopped naming an object: deleted, or hidden behind a delete marker on a versioned bucket."""

    NAMES: ClassVar[frozenset[str]] = frozenset({"ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated"})
    TYPES: ClassVar[frozenset[str]] = frozenset({OBJECT_REMOVED_DELETE, OBJECT_REMOVED_DELETE_MARKER_CREATED})


# ---------------------------------------------------------------------------------------------
# dropgate's own events


@dataclass(frozen=True)
class ScanVerdict:
    """What the scan decided about one upload's bytes (scan's reply)."""

    TYPES: ClassVar[Mapping[str, Verdict]] = {SCAN_CLEAN: "clean", SCAN_INFECTED: "infected",
                                              SCAN_REJECTED: "rejected", SCAN_UNSCANNABLE: "unscannable"}
    SCHEMA: ClassVar[str] = "scan-verdict.json"

    id: str
    source: str  # "<DROPGATE_EVENT_SOURCE>/scan"
    time: datetime
    upload_id: UUID
    verdict: Verdict
    bucket: str  # where the object is now: the quarantine bucket for infected/rejected/unscannable
    key: str
    size: int | None = None  # bytes read
    sha256: str | None = None  # lowercase hex of the bytes read
    detected_type: str | None = None  # sniffed from the first bytes
    signature: str | None = None  # infected: the signature clamd named
    reason: str | None = None  # rejected/unscannable: why, in words for the owner; infected by blocklist: that
    signature_version: int | None = None  # clamd's signature database version that produced the verdict
    rescan: bool = False  # a rescan after a signature update found a file infected that was clean

    def __post_init__(self) -> None:
        if self.verdict not in self.TYPES.values():
            raise ValueError(f"verdict {self.verdict!r} is not one of clean, infected, rejected, unscannable")
        if self.verdict == "infected" and not self.signature:
            raise ValueError("an infected verdict names its signature")
        if self.verdict in ("rejected", "unscannable") and not self.reason:
            raise ValueError(f"a {self.verdict} verdict gives its reason")

    @property
    def type(self) -> str:
        return f"dev.dropgate.scan.{self.verdict}"

    def data(self) -> dict[str, Any]:
        return {"upload_id": str(self.upload_id), "verdict": self.verdict, "bucket": self.bucket, "key": self.key,
                "size": self.size, "sha256": self.sha256, "detected_type": self.detected_type,
                "signature": self.signature, "reason": self.reason, "signature_version": self.signature_version,
                "rescan": self.rescan}

    def to_cloudevent(self) -> CloudEvent:
        return cloudevent(type_=self.type, source=self.source, id_=self.id, time=self.time,
                           subject=str(self.upload_id), data=self.data())

    @classmethod
    def from_cloudevent(cls, event: CloudEvent) -> ScanVerdict:
        read = Reader(event, cls.TYPES)
        verdict = cls.TYPES.get(read.type)
        if verdict is not None and read.data.get("verdict") != verdict:
            read.problems.append(f"data.verdict {read.data.get('verdict')!r} must be {verdict!r} for type {read.type}")
        sha256 = read.text("sha256", optional=True)
        if sha256 is not None and (len(sha256) != 64 or sha256.strip("0123456789abcdef")):
            read.problems.append("data.sha256 must be 64 lowercase hexadecimal characters")
        signature = read.text("signature", optional=True)
        reason = read.text("reason", optional=True)
        if verdict == "infected" and not signature:
            read.problems.append("data.signature is required for an infected verdict")
        if verdict in ("rejected", "unscannable") and not reason:
            read.problems.append(f"data.reason is required for a {verdict} verdict")
        fields = dict(id=read.id, source=read.source, time=read.time, upload_id=read.upload_id(), verdict=verdict,
                      bucket=read.text("bucket"), key=read.text("key"), size=read.size("size"), sha256=sha256,
                      detected_type=read.text("detected_type", optional=True), signature=signature, reason=reason,
                      signature_version=read.size("signature_version"), rescan=read.flag("rescan"))
        return read.done(cls, **fields)


@dataclass(frozen=True)
class MetadataRecorded:
    """The metadata function applied a storage event to an upload (its reply)."""

    TYPE: ClassVar[str] = METADATA_RECORDED
    SCHEMA: ClassVar[str] = "metadata-recorded.json"

    id: str  # derived from the storage event's id, so a redelivery replies with the same id
    source: str  # "<DROPGATE_EVENT_SOURCE>/metadata"
    time: datetime
    upload_id: UUID
    bucket: str
    key: str
    storage_event_id: str
    storage_event_type: str
    status: str  # the upload's status after the change
    present: bool  # does storage hold the object at bucket/key
    size: int | None = None
    etag: str | None = None
    content_type: str | None = None
    sequencer: str | None = None

    @property
    def type(self) -> str:
        return METADATA_RECORDED

    def data(self) -> dict[str, Any]:
        return {"upload_id": str(self.upload_id), "bucket": self.bucket, "key": self.key,
                "storage_event_id": self.storage_event_id, "storage_event_type": self.storage_event_type,
                "status": self.status, "present": self.present, "size": self.size, "etag": self.etag,
                "content_type": self.content_type, "sequencer": self.sequencer}

    def to_cloudevent(self) -> CloudEvent:
        return cloudevent(type_=METADATA_RECORDED, source=self.source, id_=self.id, time=self.time,
                           subject=str(self.upload_id), data=self.data())

    @classmethod
    def from_cloudevent(cls, event: CloudEvent) -> MetadataRecorded:
        read = Reader(event, frozenset({METADATA_RECORDED}))
        storage_type = read.text("storage_event_type")
        if storage_type and not storage_type.startswith(S3_TYPE_PREFIX):
            read.problems.append(f"data.storage_event_type {storage_type!r} must start with {S3_TYPE_PREFIX}")
        fields = dict(id=read.id, source=read.source, time=read.time, upload_id=read.upload_id(),
                      bucket=read.text("bucket"), key=read.text("key"),
                      storage_event_id=read.text("storage_event_id"), storage_event_type=storage_type,
                      status=read.text("status"), present=read.flag("present"), size=read.size("size"),
                      etag=read.text("etag", optional=True), content_type=read.text("content_type", optional=True),
                      sequencer=hex_or_problem(read, "sequencer"))
        return read.done(cls, **fields)


@dataclass(frozen=True)
class UploadEnded:
    """The expire job retired an upload: retention passed (`expired`) or a stale multipart upload was aborted."""

    TYPES: ClassVar[Mapping[str, str]] = {UPLOAD_EXPIRED: "expired", UPLOAD_ABANDONED: "abandoned"}
    SCHEMA: ClassVar[str] = "upload-ended.json"

    id: str
    source: str  # "<DROPGATE_EVENT_SOURCE>/expire"
    time: datetime
    upload_id: UUID
    outcome: Literal["expired", "abandoned"]
    bucket: str
    key: str
    reason: str  # e.g. "retention of 30 days passed", "multipart upload idle for 24 hours"
    object_deleted: bool  # storage no longer holds bytes for it

    def __post_init__(self) -> None:
        if self.outcome not in self.TYPES.values():
            raise ValueError(f"outcome {self.outcome!r} is not expired or abandoned")

    @property
    def type(self) -> str:
        return f"dev.dropgate.upload.{self.outcome}"

    def data(self) -> dict[str, Any]:
        return {"upload_id": str(self.upload_id), "outcome": self.outcome, "bucket": self.bucket, "key": self.key,
                "reason": self.reason, "object_deleted": self.object_deleted}

    def to_cloudevent(self) -> CloudEvent:
        return cloudevent(type_=self.type, source=self.source, id_=self.id, time=self.time,
                           subject=str(self.upload_id), data=self.data())

    @classmethod
    def from_cloudevent(cls, event: CloudEvent) -> UploadEnded:
        read = Reader(event, cls.TYPES)
        outcome = cls.TYPES.get(read.type)
        if outcome is not None and read.data.get("outcome") != outcome:
            read.problems.append(f"data.outcome {read.data.get('outcome')!r} must be {outcome!r} for type {read.type}")
        fields = dict(id=read.id, source=read.source, time=read.time, upload_id=read.upload_id(), outcome=outcome,
                      bucket=read.text("bucket"), key=read.text("key"), reason=read.text("reason"),
                      object_deleted=read.flag("object_deleted"))
        return read.done(cls, **fields)


@dataclass(frozen=True)
class PassCompleted:
    """A scheduled pass's summary: expire's or reconcile's reply to the ping that woke it.

    Knative's broker accepts a subscriber's 2xx answer only when its body is empty or a CloudEvent
    (knative/eventing pkg/broker/filter/filter_handler.go: otherwise 502, then retries and the
    dead-letter sink), so the summary travels as an event of its own, which the broker publishes.
    """

    TYPES: ClassVar[Mapping[str, str]] = {EXPIRE_COMPLETED: "expire", RECONCILE_COMPLETED: "reconcile"}
    SCHEMA: ClassVar[str] = "pass-completed.json"

    id: str
    source: str  # "<DROPGATE_EVENT_SOURCE>/expire" or ".../reconcile"
    time: datetime
    task: Literal["expire", "reconcile"]
    run_id: str
    trigger: str | None  # the id of the ping that started the pass
    summary: Mapping[str, Any]  # counts and bounds of the pass (docs/expire.md, docs/reconcile.md)

    def __post_init__(self) -> None:
        if self.task not in self.TYPES.values():
            raise ValueError(f"task {self.task!r} is not expire or reconcile")

    @property
    def type(self) -> str:
        return f"dev.dropgate.{self.task}.completed"

    def data(self) -> dict[str, Any]:
        return {"task": self.task, "run_id": self.run_id, "trigger": self.trigger, "summary": dict(self.summary)}

    def to_cloudevent(self) -> CloudEvent:
        return cloudevent(type_=self.type, source=self.source, id_=self.id, time=self.time, subject=self.run_id,
                          data=self.data())

    @classmethod
    def from_cloudevent(cls, event: CloudEvent) -> PassCompleted:
        read = Reader(event, cls.TYPES)
        task = cls.TYPES.get(read.type)
        if task is not None and read.data.get("task") != task:
            read.problems.append(f"data.task {read.data.get('task')!r} must be {task!r} for type {read.type}")
        summary = read.data.get("summary")
        if not isinstance(summary, dict):
            read.problems.append("data.summary must be an object")
        return read.done(cls, id=read.id, source=read.source, time=read.time, task=task,
                         run_id=read.text("run_id"), trigger=read.text("trigger", optional=True),
                         summary=summary if isinstance(summary, dict) else {})


# ---------------------------------------------------------------------------------------------
# Knative PingSource


@dataclass(frozen=True)
class Ping:
    """A PingSource tick (knative sources v1): source `/apis/v1/namespaces/<ns>/pingsources/<name>`.

    The PingSource sends its `spec.data` as the event's data; dropgate's says `{"task": "expire"}`.
    """

    TYPE: ClassVar[str] = PING
    SCHEMA: ClassVar[str] = "ping.json"
    _SOURCE_PREFIX: ClassVar[str] = "/apis/v1/namespaces/"

    id: str
    source: str
    time: datetime
    task: str | None = None

    @property
    def type(self) -> str:
        return PING

    @property
    def namespace(self) -> str:
        return self.source.removeprefix(self._SOURCE_PREFIX).split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.source.rsplit("/", 1)[-1]

    def data(self) -> dict[str, Any]:
        return {} if self.task is None else {"task": self.task}

    def to_cloudevent(self) -> CloudEvent:
        attributes = {"specversion": SPEC_VERSION, "type": PING, "source": self.source, "id": self.id,
                      "time": format_time(self.time), "datacontenttype": JSON_CONTENT_TYPE}
        return CloudEvent(attributes, self.data())

    @classmethod
    def from_cloudevent(cls, event: CloudEvent) -> Ping:
        # A PingSource without data sends none at all: that is a tick too.
        data = event.data if event.data not in (None, b"", "") else {}
        read = Reader(CloudEvent(dict(event.get_attributes()), data), frozenset({PING}))
        parts = read.source.split("/") if read.source else []
        if read.source and (len(parts) != 7 or not read.source.startswith(cls._SOURCE_PREFIX)
                            or parts[5] != "pingsources" or not parts[4] or not parts[6]):
            read.problems.append(f"source {read.source!r} must be /apis/v1/namespaces/<ns>/pingsources/<name>")
        return read.done(cls, id=read.id, source=read.source, time=read.time,
                         task=read.text("task", optional=True))

    @classmethod
    def for_task(cls, event: CloudEvent, task: str) -> Ping:
        """The ping that wakes the job `task`; a ping without data is a tick for any job."""
        ping = cls.from_cloudevent(event)
        if ping.task not in (None, task):
            raise InvalidEvent([f"ping task {ping.task!r} is not {task!r}"], event_id=ping.id)
        return ping


EVENT_CLASSES: Final = (ObjectCreated, ObjectRemoved, ScanVerdict, MetadataRecorded, UploadEnded, PassCompleted,
                         Ping)
