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
from shared.platform.errors import DependencyUnavailable
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


class MultipartStorage:
    def __init__(self, s3: BaseClient, storage: StorageSettings) -> None:
        self._s3 = s3
        self._storage = storage

    def start(self, bucket: str, key: str, *, content_type: str, upload_id: uuid.UUID, filename: str,
              declared_sha256: str | None) -> str:
        """CreateMultipartUpload with SSE and the metadata that ties the object to its upload; the UploadId."""
        metadata = {"upload-id": str(upload_id), "filename": quote(filename, safe="")}
        if declared_sha256:
            metadata["declared-sha256"] = declared_sha256
        traceparent = tracing.current_traceparent()
        if traceparent:
            # The object keeps it, and storage's notification repeats it: how the trace crosses storage.
            metadata[tracing.TRACEPARENT] = traceparent
        return self._call("create_multipart_upload", Bucket=bucket, Key=key, ContentType=content_type,
                          Metadata=metadata, **sse_arguments(self._storage))["UploadId"]

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
            parts += [StoredPart(p["PartNumber"], p["Size"], normalise_etag(p["ETag"]))
                      for p in response.get("Parts", [])]
            if not response.get("IsTruncated"):
                return parts
            marker = response["NextPartNumberMarker"]

    def complete(self, bucket: str, key: str, storage_upload_id: str, parts: Iterable[CompletedPart]) -> str:
        """CompleteMultipartUpload; the object's ETag."""
        result = self._call("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=storage_upload_id,
                            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": f'"{p.etag}"'}
                                                       for p in sorted(parts, key=lambda p: p.number)]})
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

    def _call(self, operation: str, gone: Any = _RAISE, **arguments: Any) -> Any:
        """One S3 call; a "not there" answer returns `gone` when given, every other failure is a 503."""
        try:
            return getattr(self._s3, operation)(**arguments)
        except ClientError as exc:
            if gone is not _RAISE and is_missing(exc):
                return gone
            raise storage_unavailable(exc) from exc
        except BotoCoreError as exc:
            raise storage_unavailable(exc) from exc
