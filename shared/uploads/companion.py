"""Uppy Companion's S3 multipart routes, mapped onto the same upload service.

`@uppy/aws-s3` in Companion mode (its `companionEndpoint` option, or
`companionUrl` in older releases) calls these routes under `<endpoint>/s3`:

    POST   /s3/multipart                          {filename, type, metadata} -> {key, uploadId, bucket}
    GET    /s3/multipart/{uploadId}?key=          -> [{PartNumber, Size, ETag}]
    GET    /s3/multipart/{uploadId}/batch?key=&partNumbers=1,2 -> {presignedUrls: {"1": url}}
    GET    /s3/multipart/{uploadId}/{partNumber}?key=          -> {url, expires}
    POST   /s3/multipart/{uploadId}/complete?key= {parts: [{PartNumber, ETag}]} -> {location, key, bucket}
    DELETE /s3/multipart/{uploadId}?key=          -> {}

The plugin does not send the file size, which dropgate needs to bind every part
URL to its length, so the page passes it as Uppy file metadata (`size`, set
with `uppy.setFileMeta` or the `meta` option). The part size is then the one
the plugin computes by default, max(5 MiB, ceil(size / 10,000)), so part N of
the browser's split is exactly the length its URL was signed for.
"""

from __future__ import annotations

import math
from typing import Any

from shared.platform.errors import BadRequest
from shared.platform.settings import S3_MAX_PARTS, S3_MIN_PART_SIZE
from shared.uploads.model import UploadRow
from shared.uploads.requests import NewUpload, PartRequest


def uppy_default_part_size(size: int) -> int:
    """@uppy/aws-s3's default chunk size for a file of `size` bytes."""
    return max(S3_MIN_PART_SIZE, math.ceil(size / S3_MAX_PARTS))


def new_upload_from_companion(body: dict[str, Any]) -> NewUpload:
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    size = metadata.get("size")
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool):
        raise BadRequest("metadata.size: required, the file's size in bytes (set it as Uppy file meta)")
    return NewUpload.from_json({
        "filename": body.get("filename") or metadata.get("name"),
        "size": size,
        "content_type": body.get("type") or metadata.get("type") or "application/octet-stream",
        "sha256": metadata.get("sha256"),
    })


def part_numbers_from_query(raw: str | None) -> list[PartRequest]:
    if not raw:
        raise BadRequest("partNumbers: required, e.g. partNumbers=1,2,3")
    numbers = []
    for item in raw.split(","):
        if not item.strip().isdigit():
            raise BadRequest(f"partNumbers: {item!r} is not a part number")
        numbers.append(PartRequest(number=int(item), sha256_base64=None))
    return numbers


def single_part(raw: str) -> PartRequest:
    if not raw.isdigit():
        raise BadRequest(f"part number {raw!r} is not a number")
    return PartRequest(number=int(raw), sha256_base64=None)


def created(upload: UploadRow) -> dict[str, Any]:
    return {"key": upload.object_key, "uploadId": upload.storage_upload_id, "bucket": upload.bucket}


def completed(upload: UploadRow, public_endpoint: str) -> dict[str, Any]:
    return {"location": f"{public_endpoint.rstrip('/')}/{upload.bucket}/{upload.object_key}",
            "key": upload.object_key, "bucket": upload.bucket}
