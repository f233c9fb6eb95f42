"""SeaweedFS filer webhook notifications as storage events.

The filer (`notification.webhook` in notification.toml) posts every metadata
change under the configured path prefixes, as `Authorization: Bearer <token>`:

    {"event_type": "create" | "update" | "delete" | "rename",
     "key": "/buckets/<bucket>/<object key>",          # the old path for a rename
     "message": {"old_entry": {...}, "new_entry": {...}, "new_parent_path": "...", ...}}

An entry is a filer entry: `name`, `is_directory`, `chunks` (each with
`modified_ts_ns` and `fid`), `attributes` (`file_size`, `mtime`, `crtime`,
`mime`, `md5`...) and `extended` (S3 headers, base64-encoded). Proto3 JSON
leaves out zero values: an empty object has no `file_size` and no chunks.

What this adapter does with them (recorded from SeaweedFS 4.48; samples in
tests/events/seaweedfs/, rules in docs/events.md):

- Only files of the buckets dropgate owns count. Directories (key prefixes,
  the bucket itself), the multipart staging area `/buckets/<b>/.uploads/`
  (parts `NNNN_<uuid>.part` and their upload folder) and version folders
  (`<key>.versions/`) are ignored.
- `create` of a file is `ObjectCreated:CompleteMultipartUpload` when the entry
  carries `X-Seaweedfs-Upload-Id` whose first half is the SHA-1 of this key (the
  filer names uploads `<sha1(key)>_<uuid>`), `ObjectCreated:Copy` when it keeps an
  older creation time than its modification time (a server-side copy keeps the
  source's `crtime`) or carries another key's upload id, else `ObjectCreated:Put`.
- `update` is an overwrite (`ObjectCreated:Put`, or a completion/copy by the same
  markers) only when the bytes changed: other chunks, size, ETag or modification
  time. Tagging, and the noncurrent-version marks of versioned buckets, change only
  `extended`: ignored, so a verdict tag never triggers a second scan.
- `delete` of a file is `ObjectRemoved:Delete`; `rename` is a removal at the old
  path and a creation at the new one.
- The sequencer is the entry's newest chunk write or modification time, in
  nanoseconds, as uppercase hex (the same form as MinIO's). A removal carries the
  removed entry's sequencer: a consumer applies a removal whose sequencer is
  equal to or newer than what it holds, a creation only when strictly newer.
- The filer's message has no event time. Creations take the sequencer's time;
  removals take the time the adapter received them.
- Ids are a digest of the event name, bucket, key, sequencer, ETag, size and
  version: the same change redelivered gets the same id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from events.notifications import (
    Adapted,
    Ignored,
    MalformedNotification,
    OwnedBuckets,
    digest,
    json_object,
)
from events.types import ObjectCreated, ObjectRemoved, StorageObjectEvent

SOURCE_NAME: Final = "SeaweedFS"
EVENT_SOURCE: Final = "seaweedfs:s3"
BUCKETS_DIR: Final = "/buckets/"
MULTIPART_STAGING_DIR: Final = ".uploads"
VERSIONS_SUFFIX: Final = ".versions"
_EVENT_TYPES: Final = frozenset({"create", "update", "delete", "rename"})
# Extended attributes (S3 headers kept by the filer), base64 in the JSON.
_ETAG: Final = "Seaweed-X-Amz-ETag"
_UPLOAD_ID: Final = "X-Seaweedfs-Upload-Id"
_VERSION_ID: Final = "Seaweed-X-Amz-Version-Id"
# User metadata presign sets (x-amz-meta-traceparent): the upload's trace, carried across storage.
_TRACEPARENT: Final = "X-Amz-Meta-Traceparent"


@dataclass(frozen=True)
class FilerEntry:
    """One filer entry (old or new), with the S3-relevant fields decoded."""

    name: str
    is_directory: bool
    size: int
    mtime: int  # attributes.mtime, seconds
    mtime_ns: int  # attributes.mtime + mtime_ns, in nanoseconds
    crtime: int | None  # seconds
    mime: str | None
    etag: str | None  # Seaweed-X-Amz-ETag, else the hex of attributes.md5
    upload_id: str | None  # X-Seaweedfs-Upload-Id: set on objects made by CompleteMultipartUpload
    version_id: str | None
    chunk_ids: tuple[str, ...]  # "<volume>,<file key>,<cookie>" of each chunk: new bytes, new chunks
    newest_chunk_ns: int
    inline_digest: str | None  # small files may be stored inline in `content`
    traceparent: str | None = None  # X-Amz-Meta-Traceparent

    @classmethod
    def read(cls, raw: Any, where: str, problems: list[str]) -> FilerEntry | None:
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected an entry object")
            return None
        found: list[str] = []
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            found.append(f"{where}.name: required, a non-empty string")
        attributes = raw.get("attributes") or {}
        if not isinstance(attributes, dict):
            found.append(f"{where}.attributes: expected an object")
            attributes = {}
        chunks = raw.get("chunks") or []
        if not isinstance(chunks, list) or not all(isinstance(c, dict) for c in chunks):
            found.append(f"{where}.chunks: expected a list of chunk objects")
            chunks = []
        extended = raw.get("extended") or {}
        if not isinstance(extended, dict):
            found.append(f"{where}.extended: expected an object")
            extended = {}
        size = _integer(attributes.get("file_size", 0), f"{where}.attributes.file_size", found)
        mtime = _integer(attributes.get("mtime", 0), f"{where}.attributes.mtime", found)
        mtime_ns = _integer(attributes.get("mtime_ns", 0), f"{where}.attributes.mtime_ns", found)
        crtime = attributes.get("crtime")
        if crtime is not None:
            crtime = _integer(crtime, f"{where}.attributes.crtime", found)
        chunk_times = [_integer(c.get("modified_ts_ns", 0), f"{where}.chunks[{i}].modified_ts_ns", found)
                       for i, c in enumerate(chunks)]
        if found:
            problems.extend(found)
            return None
        content = raw.get("content")
        inline = hashlib.sha256(content.encode()).hexdigest() if isinstance(content, str) and content else None
        return cls(
            name=name,
            is_directory=raw.get("is_directory") is True,
            size=size,
            mtime=mtime,
            mtime_ns=mtime * 1_000_000_000 + mtime_ns,
            crtime=crtime,
            mime=attributes.get("mime") if isinstance(attributes.get("mime"), str) and attributes["mime"] else None,
            etag=_extended(extended, _ETAG) or _md5_hex(attributes.get("md5")),
            upload_id=_extended(extended, _UPLOAD_ID),
            version_id=_extended(extended, _VERSION_ID),
            chunk_ids=tuple(_chunk_id(c) for c in chunks),
            newest_chunk_ns=max(chunk_times, default=0),
            inline_digest=inline,
            traceparent=_extended(extended, _TRACEPARENT),
        )

    @property
    def sequencer_ns(self) -> int:
        return max(self.newest_chunk_ns, self.mtime_ns)

    @property
    def sequencer(self) -> str:
        return f"{self.sequencer_ns:X}"

    def same_bytes_as(self, other: FilerEntry) -> bool:
        """Whether two versions of an entry hold the same object (only extended attributes may differ)."""
        return (self.chunk_ids, self.size, self.etag, self.inline_digest, self.mtime_ns) == (
            other.chunk_ids, other.size, other.etag, other.inline_digest, other.mtime_ns)


@dataclass(frozen=True)
class FilerEvent:
    """One filer webhook body."""

    event_type: str
    path: str  # `key`: the entry's path (its old path for a rename)
    old_entry: FilerEntry | None
    new_entry: FilerEntry | None
    new_path: str | None  # new_parent_path + "/" + new_entry.name

    @classmethod
    def read(cls, document: dict[str, Any]) -> FilerEvent:
        problems: list[str] = []
        event_type = document.get("event_type")
        if event_type not in _EVENT_TYPES:
            problems.append(f"event_type: expected one of {', '.join(sorted(_EVENT_TYPES))}, got {event_type!r}")
        path = document.get("key")
        if not isinstance(path, str) or not path.startswith("/"):
            problems.append("key: required, the entry's absolute filer path")
        message = document.get("message")
        if not isinstance(message, dict):
            problems.append("message: required, an object with old_entry and/or new_entry")
            message = {}
        old_entry = new_entry = None
        if message.get("old_entry") is not None:
            old_entry = FilerEntry.read(message["old_entry"], "message.old_entry", problems)
        if message.get("new_entry") is not None:
            new_entry = FilerEntry.read(message["new_entry"], "message.new_entry", problems)
        if event_type in ("create", "update", "rename") and message.get("new_entry") is None:
            problems.append(f"message.new_entry: required for a {event_type} event")
        if event_type in ("delete", "rename") and message.get("old_entry") is None:
            problems.append(f"message.old_entry: required for a {event_type} event")
        parent = message.get("new_parent_path")
        if new_entry is not None and parent is not None and not isinstance(parent, str):
            problems.append("message.new_parent_path: expected a string")
        if problems:
            raise MalformedNotification(SOURCE_NAME, problems)
        new_path = None
        if new_entry is not None:
            new_path = f"{parent.rstrip('/')}/{new_entry.name}" if isinstance(parent, str) and parent else path
        return cls(event_type=event_type, path=path, old_entry=old_entry, new_entry=new_entry, new_path=new_path)


def parse_seaweedfs_notification(body: bytes, *, owned_buckets: OwnedBuckets,
                                 received_at: datetime | None = None) -> Adapted:
    """The storage events in one filer webhook body; MalformedNotification names every problem.

    `received_at` is the time of removals (the filer does not say when it deleted).
    """
    change = FilerEvent.read(json_object(body, SOURCE_NAME))
    moved = change.event_type == "rename" or (change.event_type == "update" and change.new_path != change.path)
    outcomes: list[StorageObjectEvent | Ignored] = []
    if change.event_type == "delete" or moved:
        outcomes.append(_removal(change.path, change.old_entry, owned_buckets, received_at or datetime.now(UTC)))
    if change.event_type in ("create", "update", "rename"):
        previous = change.old_entry if change.event_type == "update" and not moved else None
        outcomes.append(_creation(change.new_path, change.new_entry, previous, owned_buckets,
                                  fresh=change.event_type == "create"))
    return Adapted(tuple(o for o in outcomes if not isinstance(o, Ignored)),
                   tuple(o for o in outcomes if isinstance(o, Ignored)))


def locate(path: str, owned_buckets: OwnedBuckets) -> tuple[str, str] | str:
    """(bucket, key) of an S3 object's filer path, or why the path is not one dropgate follows."""
    if not path.startswith(BUCKETS_DIR):
        return "outside the filer's /buckets folder"
    bucket, _, key = path.removeprefix(BUCKETS_DIR).partition("/")
    if bucket not in owned_buckets:
        return f"bucket {bucket} is not dropgate's"
    if not key:
        return "the bucket folder itself"
    segments = key.split("/")
    if segments[0] == MULTIPART_STAGING_DIR:
        return "multipart staging area (.uploads): parts are not objects until the upload completes"
    if any(segment.endswith(VERSIONS_SUFFIX) for segment in segments[:-1]) or key.endswith(VERSIONS_SUFFIX):
        return "version folder (.versions)"
    return bucket, key


def _followed(path: str, entry: FilerEntry, owned_buckets: OwnedBuckets) -> tuple[str, str] | Ignored:
    where = locate(path, owned_buckets)
    if isinstance(where, str):
        return Ignored(path, where)
    if entry.is_directory:
        return Ignored(path, "a directory, not an object")
    return where


def _removal(path: str, entry: FilerEntry, owned_buckets: OwnedBuckets,
             received_at: datetime) -> StorageObjectEvent | Ignored:
    where = _followed(path, entry, owned_buckets)
    if isinstance(where, Ignored):
        return where
    bucket, key = where
    name = "ObjectRemoved:Delete"
    return ObjectRemoved(id=_event_id(name, bucket, key, entry), event_name=name, event_source=EVENT_SOURCE,
                         region="", bucket=bucket, key=key, time=received_at, size=entry.size, etag=entry.etag,
                         sequencer=entry.sequencer, content_type=entry.mime, version_id=entry.version_id,
                         traceparent=entry.traceparent)


def _creation(path: str, entry: FilerEntry, previous: FilerEntry | None, owned_buckets: OwnedBuckets, *,
              fresh: bool) -> StorageObjectEvent | Ignored:
    where = _followed(path, entry, owned_buckets)
    if isinstance(where, Ignored):
        return where
    if previous is not None and entry.same_bytes_as(previous):
        return Ignored(path, "only metadata changed (tags, version marks): the object's bytes are the same")
    bucket, key = where
    name = _creation_name(entry, key, previous, fresh=fresh)
    return ObjectCreated(id=_event_id(name, bucket, key, entry), event_name=name, event_source=EVENT_SOURCE,
                         region="", bucket=bucket, key=key, time=_time_of(entry.sequencer_ns), size=entry.size,
                         etag=entry.etag, sequencer=entry.sequencer, content_type=entry.mime,
                         version_id=entry.version_id, traceparent=entry.traceparent)


def _creation_name(entry: FilerEntry, key: str, previous: FilerEntry | None, *, fresh: bool) -> str:
    if entry.upload_id:
        # The filer names an upload "<sha1(key)>_<uuid>" (SHA-1 as a name, not for security).
        key_hash = hashlib.sha1(key.encode()).hexdigest()  # noqa: S324
        completed_for_this_key = entry.upload_id.split("_", 1)[0] == key_hash
        new_upload = previous is None or previous.upload_id != entry.upload_id
        if completed_for_this_key and new_upload and not (fresh and _copied(entry)):
            return "ObjectCreated:CompleteMultipartUpload"
        return "ObjectCreated:Copy"
    if fresh and _copied(entry):
        return "ObjectCreated:Copy"
    return "ObjectCreated:Put"


def _copied(entry: FilerEntry) -> bool:
    # A server-side copy keeps the source's creation time; a PUT or a completion sets both to now.
    return entry.crtime is not None and entry.crtime < entry.mtime


def _event_id(name: str, bucket: str, key: str, entry: FilerEntry) -> str:
    return digest("seaweedfs", name, bucket, key, entry.sequencer, entry.etag, entry.size, entry.version_id)


def _time_of(nanoseconds: int) -> datetime:
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=rest // 1000)


def _integer(value: Any, where: str, problems: list[str]) -> int:
    # proto3 JSON writes 64-bit integers as numbers here, but the spec allows strings.
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    problems.append(f"{where}: expected an integer")
    return 0


def _extended(extended: dict[str, Any], name: str) -> str | None:
    raw = extended.get(name)
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8") or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def _md5_hex(raw: Any) -> str | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True).hex() or None
    except binascii.Error:
        return None


def _chunk_id(chunk: dict[str, Any]) -> str:
    fid = chunk.get("fid")
    if isinstance(fid, dict):
        return f"{fid.get('volume_id', 0)},{fid.get('file_key', 0)},{fid.get('cookie', 0)}"
    return str(chunk.get("file_id", ""))
