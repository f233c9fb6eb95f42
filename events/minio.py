"""MinIO bucket notifications (the webhook target) as storage events.

MinIO posts one JSON body per notification, authenticated by the target's
`auth_token` as `Authorization: Bearer <token>`:

    {"EventName": "s3:ObjectCreated:Put", "Key": "<bucket>/<decoded key>",
     "Records": [<an S3 event record, eventVersion 2.0>]}

What MinIO does differently from AWS S3 (minio/minio cmd/event-notification.go
and internal/event/target/webhook.go):
- `s3.object.key` is `url.QueryEscape`d: spaces arrive as `+`, `+` as `%2B`,
  `/` as `%2F`. It is decoded exactly once, here, with `unquote_plus`; the
  top-level `Key` is already decoded and is not used.
- `eventName` keeps the `s3:` prefix (`s3:ObjectCreated:Put`); AWS omits it.
- `eventSource` is `minio:s3` and `awsRegion` is usually empty, so the
  CloudEvents `source` reads `minio:s3..<bucket>`.
- `x-amz-id-2` is a hash of the node name, not of the request; old servers
  send only `x-minio-deployment-id`.
- `sequencer` is the object's modification time in nanoseconds, in hex.
- ETags of multipart objects end in `-<number of parts>`, also for `Put`
  events of clients (mc) that upload in parts.
- Tagging, retention and legal-hold changes arrive as `s3:ObjectCreated:PutTagging`
  and friends although no bytes changed; they are ignored so nothing is scanned twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote_plus

from events.notifications import (
    Adapted,
    Ignored,
    MalformedNotification,
    OwnedBuckets,
    digest,
    json_object,
)
from events.types import ObjectCreated, ObjectRemoved, StorageObjectEvent
from events.wire import is_hex, parse_time

SOURCE_NAME: Final = "MinIO"
DEFAULT_EVENT_SOURCE: Final = "minio:s3"
_METADATA_ONLY: Final = frozenset({"ObjectCreated:PutTagging", "ObjectCreated:DeleteTagging",
                                   "ObjectCreated:PutRetention", "ObjectCreated:PutLegalHold"})


@dataclass(frozen=True)
class MinioRecord:
    """One S3 event record as MinIO sends it, with the key decoded and defaults applied."""

    event_name: str  # without the "s3:" prefix
    event_source: str
    region: str
    time: datetime
    bucket: str
    key: str
    size: int | None
    etag: str | None
    sequencer: str | None
    content_type: str | None
    version_id: str | None
    request_id: str | None  # responseElements x-amz-request-id: unique per request on one node
    host_id: str | None  # responseElements x-amz-id-2: which node answered
    deployment_id: str | None  # responseElements x-minio-deployment-id (older servers lack x-amz-id-2)
    traceparent: str | None = None  # s3.object.userMetadata X-Amz-Meta-Traceparent: the upload's trace

    @classmethod
    def read(cls, raw: Any, where: str, problems: list[str]) -> MinioRecord | None:
        """The record, or None after adding what is wrong with it to `problems`."""
        found: list[str] = []
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected an S3 event record object")
            return None
        s3 = _object(raw.get("s3"), f"{where}.s3", found)
        bucket = _object(s3.get("bucket"), f"{where}.s3.bucket", found)
        obj = _object(s3.get("object"), f"{where}.s3.object", found)
        response = _object(raw.get("responseElements") or {}, f"{where}.responseElements", found)

        event_name = _text(raw.get("eventName"), f"{where}.eventName", found)
        time_raw = _text(raw.get("eventTime"), f"{where}.eventTime", found)
        bucket_name = _text(bucket.get("name"), f"{where}.s3.bucket.name", found)
        raw_key = _text(obj.get("key"), f"{where}.s3.object.key", found)
        time = None
        if time_raw:
            try:
                time = parse_time(time_raw)
            except ValueError:
                found.append(f"{where}.eventTime: {time_raw!r} is not an RFC 3339 time")
        size = obj.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            found.append(f"{where}.s3.object.size: expected a non-negative integer")
        sequencer = _optional_text(obj.get("sequencer"), f"{where}.s3.object.sequencer", found)
        if sequencer is not None and not is_hex(sequencer):
            found.append(f"{where}.s3.object.sequencer: {sequencer!r} is not hexadecimal")
        etag = _optional_text(obj.get("eTag"), f"{where}.s3.object.eTag", found)
        if found:
            problems.extend(found)
            return None
        return cls(
            event_name=event_name.removeprefix("s3:"),
            event_source=_optional_text(raw.get("eventSource"), "", []) or DEFAULT_EVENT_SOURCE,
            region=_optional_text(raw.get("awsRegion"), "", []) or "",
            time=time,
            bucket=bucket_name,
            key=unquote_plus(raw_key),  # url.QueryEscape'd by MinIO: decoded here, once
            size=size,
            etag=etag.strip('"') if etag else None,
            sequencer=sequencer,
            content_type=_optional_text(obj.get("contentType"), "", []),
            version_id=_optional_text(obj.get("versionId"), "", []),
            request_id=_optional_text(response.get("x-amz-request-id"), "", []),
            host_id=_optional_text(response.get("x-amz-id-2"), "", []),
            deployment_id=_optional_text(response.get("x-minio-deployment-id"), "", []),
            traceparent=_user_metadata(obj.get("userMetadata"), "x-amz-meta-traceparent"),
        )

    @property
    def event_id(self) -> str:
        """x-amz-request-id "." x-amz-id-2, as the CloudEvents AWS S3 adapter says, made unique per object.

        A removal gets the key's digest appended: one DeleteObjects request removes
        many keys and every record carries the same request id, while CloudEvents
        requires source + id to be unique. Without a request id (lifecycle expiry,
        old servers) the id is a digest of what identifies the change.
        """
        if self.request_id:
            node = self.host_id or self.deployment_id
            base = f"{self.request_id}.{node}" if node else self.request_id
            return f"{base}.{digest(self.key)[:16]}" if self.event_name.startswith("ObjectRemoved:") else base
        return "minio-" + digest(self.event_name, self.bucket, self.key, self.version_id, self.sequencer,
                                 self.time.isoformat())

    def ignore_reason(self, owned: OwnedBuckets) -> str | None:
        if self.event_name in _METADATA_ONLY:
            return f"{self.event_name} changes metadata, not the object's bytes"
        if self.event_name not in ObjectCreated.NAMES | ObjectRemoved.NAMES:
            return f"{self.event_name} is not an object creation or removal"
        if self.bucket not in owned:
            return f"bucket {self.bucket} is not dropgate's"
        return None

    def to_event(self) -> StorageObjectEvent:
        kind = ObjectRemoved if self.event_name in ObjectRemoved.NAMES else ObjectCreated
        return kind(id=self.event_id, event_name=self.event_name, event_source=self.event_source,
                    region=self.region, bucket=self.bucket, key=self.key, time=self.time, size=self.size,
                    etag=self.etag, sequencer=self.sequencer, content_type=self.content_type,
                    version_id=self.version_id, traceparent=self.traceparent)


def parse_minio_notification(body: bytes, *, owned_buckets: OwnedBuckets) -> Adapted:
    """The storage events in a MinIO webhook body; MalformedNotification names every problem."""
    document = json_object(body, SOURCE_NAME)
    records = document.get("Records")
    if not isinstance(records, list):
        raise MalformedNotification(SOURCE_NAME, ["Records: expected a list of S3 event records"])
    problems: list[str] = []
    parsed = [MinioRecord.read(raw, f"Records[{index}]", problems) for index, raw in enumerate(records)]
    if problems:
        raise MalformedNotification(SOURCE_NAME, problems)
    events, ignored = [], []
    for index, record in enumerate(parsed):
        reason = record.ignore_reason(owned_buckets)
        if reason:
            ignored.append(Ignored(f"Records[{index}] {record.bucket}/{record.key}", reason))
        else:
            events.append(record.to_event())
    return Adapted(tuple(events), tuple(ignored))


def _user_metadata(metadata: Any, name: str) -> str | None:
    """One user-metadata value; MinIO keeps the header's canonical case (`X-Amz-Meta-Traceparent`)."""
    if not isinstance(metadata, dict):
        return None
    for key, value in metadata.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str) and value:
            return value
    return None


def _object(value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    problems.append(f"{where}: expected an object")
    return {}


def _text(value: Any, where: str, problems: list[str]) -> str:
    if isinstance(value, str) and value:
        return value
    problems.append(f"{where}: required, a non-empty string")
    return ""


def _optional_text(value: Any, where: str, problems: list[str]) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    problems.append(f"{where}: expected a string")
    return None
