"""Deleting objects for good: DeleteObjects in requests of at most 1,000 keys, every version on a versioned bucket."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from shared.platform.logs import log_event
from shared.platform.storage import http_status, list_versions

if TYPE_CHECKING:
    from shared.retention.expiry import RetentionSummary

logger = logging.getLogger("dropgate.retention")

S3_MAX_DELETE_KEYS: Final = 1000  # DeleteObjects takes at most 1,000 keys a request
_VERSION_LISTING_THREADS: Final = 8


class ObjectDeleter:
    """DeleteObjects in requests of at most 1,000 keys; on a versioned bucket, every version of each key.

    On a bucket with versioning (MinIO's uploads bucket has it for Object Lock), deleting a key
    only adds a delete marker and the bytes stay; retention means the bytes go, so each version
    (and marker) is deleted by its id. A version under an S3 legal hold or retention is refused
    by storage per key, which leaves that upload for a later pass.
    """

    def __init__(self, s3: BaseClient):
        self._s3 = s3
        self._versioned: dict[str, bool] = {}

    def is_versioned(self, bucket: str) -> bool:
        if bucket not in self._versioned:
            try:
                status = self._s3.get_bucket_versioning(Bucket=bucket).get("Status")
            except ClientError as exc:
                if http_status(exc) != 403:
                    raise
                # Not allowed to ask: deleting by version id is right on any bucket (an unversioned
                # object is version "null"), it only costs a listing per key.
                log_event(logger, "GetBucketVersioning refused; deleting by version", logging.WARNING, bucket=bucket)
                status = "Unknown"
            self._versioned[bucket] = status in ("Enabled", "Suspended", "Unknown")
        return self._versioned[bucket]

    def delete(self, targets: dict[str, list[str]], summary: RetentionSummary) -> dict[tuple[str, str], str]:
        """Delete each bucket's keys; return the (bucket, key) pairs storage refused, with why."""
        refused: dict[tuple[str, str], str] = {}
        for bucket, keys in targets.items():
            if not keys:
                continue
            if self.is_versioned(bucket):
                # One listing per key; a few in parallel (boto3 clients are thread-safe).
                with ThreadPoolExecutor(_VERSION_LISTING_THREADS) as pool:
                    listed = pool.map(lambda key: list_versions(self._s3, bucket, key), keys)
                    entries = [entry for versions in listed for entry in versions]
            else:
                entries = [{"Key": key} for key in keys]
            for chunk in _chunks(entries, S3_MAX_DELETE_KEYS):
                response = self._s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
                summary.delete_requests += 1
                errors = response.get("Errors", [])
                summary.objects_deleted += len(chunk) - len(errors)
                for error in errors:
                    refused[(bucket, error["Key"])] = f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
        return refused

def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
