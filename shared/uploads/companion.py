"""Uppy Companion's S3 routes, mapped onto the same upload service.

`@uppy/aws-s3` in Companion mode (its `companionEndpoint` option in 6.x, `endpoint` in 5.x) calls these
routes under `<endpoint>/s3` (6.3.1 src/s3-client/CompanionS3.ts; Companion's own s3 controller):

    GET    /s3/params?filename=&type=&metadata[k]=v               -> {method, url, fields}  (a POST policy)
    POST   /s3/multipart                          {filename, type, metadata} -> {key, uploadId, bucket}
    GET    /s3/multipart/{uploadId}?key=          -> [{PartNumber, Size, ETag}]
    GET    /s3/multipart/{uploadId}/batch?key=&partNumbers=1,2 -> {presignedUrls: {"1": url}}
    GET    /s3/multipart/{uploadId}/{partNumber}?key=          -> {url, expires}
    POST   /s3/multipart/{uploadId}/complete?key= {parts: [{PartNumber, ETag}]} -> {location, key, bucket}
    DELETE /s3/multipart/{uploadId}?key=          -> {}

Files of 100 MiB or less go by `/s3/params` (the plugin's default `shouldUseMultipart`), larger ones by
multipart.

The `uploadId` the plugin gets is dropgate's upload id, not storage's UploadId: the plugin only hands
it back to these routes, and a UUID needs no escaping in a path (storage's may hold `/`, `+` or `=`,
and a `%2F` in a path reaches the router as `/`). A storage UploadId is still taken, for uploads a
page started before this change.

The plugin does not send the file's size, which dropgate signs into every URL (the POST policy's
`content-length-range`, each part's `Content-Length`). The page passes it as Uppy file metadata `size`
(docs/uploader.md, "Companion mode"); without it the answer is a 400 `size_required` that says so.
Parts are cut by Uppy's own rule (shared/uploads/parts.py uppy_part_size), so part N of the browser's
split is exactly the length its URL was signed for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.platform.errors import BadRequest, SizeRequired
from shared.uploads.model import UploadRow
from shared.uploads.requests import NewUpload, PartRequest

SIZE_REQUIRED = (
    "metadata.size: required. Uppy's Companion mode does not send the file's size, and dropgate signs the "
    "exact size into every upload URL. Set it as file metadata when a file is added: "
    "uppy.on('file-added', (file) => uppy.setFileMeta(file.id, { size: file.size, ref: file.id })) "
    "(docs/uploader.md, \"Companion mode\")")


def _declared_size(metadata: Mapping[str, Any]) -> int:
    size = metadata.get("size")
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if size is None or size == "":
        raise SizeRequired(SIZE_REQUIRED)
    if not isinstance(size, int) or isinstance(size, bool):
        raise BadRequest(f"metadata.size: {size!r} is not a number of bytes")
    return size


def _new_upload(filename: Any, content_type: Any, metadata: Mapping[str, Any]) -> NewUpload:
    return NewUpload.from_json({
        "filename": filename or metadata.get("name"),
        "size": _declared_size(metadata),
        "content_type": content_type or metadata.get("type") or "application/octet-stream",
        "sha256": metadata.get("sha256"),
    })


@dataclass(frozen=True)
class CompanionFile:
    """A file the plugin starts: the upload to register, and the page's handle for it when it gave one."""

    new: NewUpload
    # Metadata `ref` (the page's `uppy.setFileMeta(file.id, {size: file.size, ref: file.id})`): the plugin
    # starts a file again from the beginning when it retries it, and asks under the same handle; presign
    # answers with the upload it registered the first time (UploadService.create's `client_ref`).
    ref: str | None


def _file(filename: Any, content_type: Any, metadata: Mapping[str, Any]) -> CompanionFile:
    ref = metadata.get("ref")
    return CompanionFile(_new_upload(filename, content_type, metadata),
                         ref[:200] if isinstance(ref, str) and ref.strip() else None)


def file_from_companion(body: dict[str, Any]) -> CompanionFile:
    """`POST /s3/multipart`'s JSON body."""
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    return _file(body.get("filename"), body.get("type"), metadata)


def file_from_params(args: Mapping[str, str]) -> CompanionFile:
    """`GET /s3/params`'s query: filename, type and each metadata field as `metadata[name]`."""
    metadata = {name[len("metadata["):-1]: value for name, value in args.items()
                if name.startswith("metadata[") and name.endswith("]")}
    return _file(args.get("filename"), args.get("type"), metadata)


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
    return {"key": upload.object_key, "uploadId": str(upload.id), "bucket": upload.bucket}


def completed(upload: UploadRow, public_endpoint: str) -> dict[str, Any]:
    return {"location": f"{public_endpoint.rstrip('/')}/{upload.bucket}/{upload.object_key}",
            "key": upload.object_key, "bucket": upload.bucket}
