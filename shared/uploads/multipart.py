"""Every storage call of presign's upload lifecycle, behind one adapter with one error mapping.

Storage failures a retry can cure become `DependencyUnavailable` (503 with Retry-After) here and
nowhere else; "not there" answers (the multipart upload or the object) are results, not errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import quote

from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from shared.platform import tracing
from shared.platform.errors import BadRequest, DependencyUnavailable
from shared.platform.settings import StorageSettings
from shared.platform.storage import error_code, is_missing, sse_arguments
from shared.uploads.model import StoredPart
from shared.uploads.requests import CompletedPart, normalise_etag

# A legal hold storage cannot apply (no Object Lock on the bucket, or no object yet): the database flag stands.
_NO_LEGAL_HOLD: Final = frozenset({"InvalidRequest", "ObjectLockConfigurationNotFoundError", "NoSuchKey",
                                   "InvalidBucketState", "NotImplemented"})
_RAISE: Final = object()  # `_call` raises a "not there" answer too


def storage_unavailable(exc: Exception) -> DependencyUnavailable:
    return DependencyUnavailable(f"storage is unavailable: {exc}", headers={"Retry-After": "5"})


# What storage answers when the parts a completion names are not the ones it holds (a wrong ETag or
# checksum): the caller's mistake, 400, and the upload stays pending for a corrected completion.
_COMPLETION_REFUSALS: Final = frozenset({"InvalidPart", "InvalidPartOrder", "InvalidRequest", "BadDigest",
                                         "InvalidDigest"})


def object_metadata(upload_id: uuid.UUID, filename: str, declared_sha256: str | None) -> dict[str, str]:
    """The user metadata that ties an object to its upload, whoever writes it (presign, or the browser with a
    URL or POST policy presign signed): `upload-id` is what reconcile and a retried completion check."""
    metadata = {"upload-id": str(upload_id), "filename": quote(filename, safe="")}
    if declared_sha256:
        metadata["declared-sha256"] = declared_sha256
    traceparent = tracing.current_traceparent()
    if traceparent:
        # The object keeps it, and storage's notification repeats it: how the trace crosses storage.
        metadata[tracing.TRACEPARENT] = traceparent
    return metadata


class MultipartStorage:
    def __init__(self, s3: BaseClient, storage: StorageSettings) -> None:
        self._s3 = s3
        self._storage = storage

    def start(self, bucket: str, key: str, *, content_type: str, upload_id: uuid.UUID, filename: str,
              declared_sha256: str | None) -> str:
        """CreateMultipartUpload with SSE and the metadata that ties the object to its upload; the UploadId."""
        metadata = object_metadata(upload_id, filename, declared_sha256)
        checksum = {"ChecksumAlgorithm": "SHA256"} if self.requires_part_checksums else {}
        return self._call("create_multipart_upload", Bucket=bucket, Key=key, ContentType=content_type,
                          Metadata=metadata, **checksum, **sse_arguments(self._storage))["UploadId"]

    @property
    def requires_part_checksums(self) -> bool:
        """Whether every part must carry its SHA-256 (DROPGATE_S3_PART_CHECKSUMS=required; docs/storage.md)."""
        return self._storage.part_checksums == "required"

    def abort(self, bucket: str, key: str, storage_upload_id: str) -> None:
        self._call("abort_multipart_upload", gone=None, Bucket=bucket, Key=key, UploadId=storage_upload_id)

    def stored_parts(self, bucket: str, key: str, storage_upload_id: str) -> list[StoredPart]:
        """The parts storage holds, every page of ListParts; [] when the multipart upload is gone."""
        parts: list[StoredPart] = []
        marker = 0
        while True:
            response = self._call("list_parts", gone=None, Bucket=bucket, Key=key, UploadId=storage_upload_id,
                                  PartNumberMarker=marker)
            if response is None:
                return []
            parts += [StoredPart(p["PartNumber"], p["Size"], normalise_etag(p["ETag"]), p.get("ChecksumSHA256"))
                      for p in response.get("Parts", [])]
            if not response.get("IsTruncated"):
                return parts
            marker = response["NextPartNumberMarker"]

    def complete(self, bucket: str, key: str, storage_upload_id: str, parts: Iterable[CompletedPart],
                 stored: Iterable[StoredPart]) -> str:
        """CompleteMultipartUpload; the object's ETag.

        An upload created with ChecksumAlgorithm=SHA256 names each part's checksum too (AWS's
        CompletedPart.ChecksumSHA256): the one storage's ListParts reported in `stored` (the parts the
        caller checked the completion against; AWS reports them), else the one the client sent
        (SeaweedFS reports none). Storage compares it with the part it holds, so a
        wrong one fails the completion instead of being believed.
        """
        reported = {p.number: p.sha256 for p in stored} if self.requires_part_checksums else {}
        listed = []
        for part in sorted(parts, key=lambda p: p.number):
            entry = {"PartNumber": part.number, "ETag": f'"{part.etag}"'}
            checksum = reported.get(part.number) or (part.sha256 if self.requires_part_checksums else None)
            if checksum:
                entry["ChecksumSHA256"] = checksum
            elif self.requires_part_checksums:
                raise BadRequest(f"part {part.number} needs its sha256 at completion: storage does not report it "
                                 "and takes no part without it (DROPGATE_S3_PART_CHECKSUMS=required)")
            listed.append(entry)
        result = self._call("complete_multipart_upload", refused=_COMPLETION_REFUSALS, Bucket=bucket, Key=key,
                            UploadId=storage_upload_id, MultipartUpload={"Parts": listed})
        return normalise_etag(result.get("ETag", ""))

    def head(self, bucket: str, key: str) -> dict[str, Any] | None:
        """HeadObject, None when there is no object."""
        return self._call("head_object", gone=None, Bucket=bucket, Key=key)

    def delete(self, bucket: str, key: str) -> None:
        self._call("delete_object", Bucket=bucket, Key=key)

    def set_legal_hold(self, bucket: str, key: str, on: bool) -> str:
        """Mirror a hold in S3 Object Lock where the bucket has it: "applied", or why not."""
        try:
            self._s3.put_object_legal_hold(Bucket=bucket, Key=key, LegalHold={"Status": "ON" if on else "OFF"})
        except ClientError as exc:
            if error_code(exc) in _NO_LEGAL_HOLD:
                return f"not applied: {error_code(exc)}"
            raise storage_unavailable(exc) from exc
        except BotoCoreError as exc:
            raise storage_unavailable(exc) from exc
        return "applied"

    def _call(self, operation: str, gone: Any = _RAISE, refused: frozenset[str] = frozenset(),
              **arguments: Any) -> Any:
        """One S3 call; a "not there" answer returns `gone` when given, a code in `refused` (the request's
        own fault) is a 400, every other failure is a 503."""
        try:
            return getattr(self._s3, operation)(**arguments)
        except ClientError as exc:
            if gone is not _RAISE and is_missing(exc):
                return gone
            if error_code(exc) in refused:
                raise BadRequest(f"storage refused the {operation.replace('_', ' ')}: {error_code(exc)}") from exc
            raise storage_unavailable(exc) from exc
        except BotoCoreError as exc:
            raise storage_unavailable(exc) from exc
