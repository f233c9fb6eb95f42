"""S3 requests a browser sends to storage itself, signed by presign only for the caller's own upload.

Two ways Uppy 6 (`@uppy/aws-s3` 6.x) talks to storage directly:

- **signRequest mode**: for every S3 request it wants to make, the plugin calls the page's
  `signRequest(request)` with `{method, key, uploadId?, partNumber?, contentType?}` and sends what comes
  back (`{url, key?, headers?}`) itself (6.3.1 src/s3-client/S3mini.ts and types.ts `PresignableRequest`).
  The page forwards the request to `POST /s3/sign` with its bearer token; `sign` below decides.
- **a POST policy** (Companion mode's `GET /s3/params`, files of 100 MiB or less): `post_policy`.

What each keeps of dropgate's guarantees (docs/uploader.md has the table):
- registered and policy-checked before any byte moves: PutObject / CreateMultipartUpload are signed only
  after `UploadService.create` accepted the file (size, type, name, quota) and fixed its key; the plugin
  takes the key presign answers (`key`, honoured on those two requests);
- length bound by the signature: a PutObject URL is signed with the declared `Content-Length`, each
  UploadPart URL with its part's (the parts cut by Uppy's rule, parts.uppy_part_size), a POST policy
  with `content-length-range` [size, size]; other S3 requests are signed only for the owner's upload;
- completion verified by dropgate: here the browser completes the multipart upload itself, so the
  check is the scan's, before any verdict: a stored object whose length is not the declared one ends
  `unscannable`, never clean (shared/scanning/service.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from shared.platform.audit import Actor
from shared.platform.auth import Principal
from shared.platform.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    SizeRequired,
)
from shared.platform.settings import LimitSettings, StorageSettings
from shared.platform.sigv4 import PostPolicy, PresignedUrl, PresignSigner
from shared.platform.storage import sse_headers
from shared.uploads.model import UploadRow, UploadStatus, upload_id_in_key
from shared.uploads.multipart import object_metadata
from shared.uploads.parts import uppy_part_size
from shared.uploads.requests import NewUpload, PartRequest
from shared.uploads.service import UploadService

# Headers a page cannot set (the Fetch standard's forbidden request-header names): signed, never returned.
_BROWSER_SETS: Final = frozenset({"content-length", "host"})
SIZE_REQUIRED: Final = (
    "size: required with PutObject and CreateMultipartUpload requests: dropgate signs the file's exact size "
    "into its upload URLs, and Uppy does not pass it to signRequest. Send the file's size and name along "
    "(see the signRequest snippet in docs/uploader.md)")


class S3Operation(enum.StrEnum):
    """The S3 requests @uppy/aws-s3 6.x asks a signer for, told apart by method and parameters
    (6.3.1 src/s3-client/types.ts: PutObjectRequest ... UploadPartRequest)."""

    PUT_OBJECT = "PutObject"
    CREATE_MULTIPART_UPLOAD = "CreateMultipartUpload"
    UPLOAD_PART = "UploadPart"
    LIST_PARTS = "ListParts"
    COMPLETE_MULTIPART_UPLOAD = "CompleteMultipartUpload"
    ABORT_MULTIPART_UPLOAD = "AbortMultipartUpload"
    DELETE_OBJECT = "DeleteObject"


_BY_SHAPE: Final = {
    ("PUT", False): S3Operation.PUT_OBJECT, ("PUT", True): S3Operation.UPLOAD_PART,
    ("POST", False): S3Operation.CREATE_MULTIPART_UPLOAD, ("POST", True): S3Operation.COMPLETE_MULTIPART_UPLOAD,
    ("GET", True): S3Operation.LIST_PARTS, ("DELETE", True): S3Operation.ABORT_MULTIPART_UPLOAD,
    ("DELETE", False): S3Operation.DELETE_OBJECT,
}
_STARTS_AN_UPLOAD: Final = frozenset({S3Operation.PUT_OBJECT, S3Operation.CREATE_MULTIPART_UPLOAD})


@dataclass(frozen=True)
class SignRequest:
    """One request of the plugin's, as the page forwards it, with the file's size and name on the two that
    start an upload (the plugin's request carries neither)."""

    operation: S3Operation
    key: str
    storage_upload_id: str | None
    part_number: int | None
    content_type: str | None
    size: int | None
    filename: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SignRequest:
        method, key, upload_id = body.get("method"), body.get("key"), body.get("uploadId")
        if not isinstance(key, str) or not key.strip():
            raise BadRequest("key: required, the request's object key")
        if upload_id is not None and (not isinstance(upload_id, str) or not upload_id):
            raise BadRequest("uploadId: expected the multipart upload's id")
        operation = _BY_SHAPE.get((method, upload_id is not None)) if isinstance(method, str) else None
        if operation is None:
            raise BadRequest(f"method: {method!r} with{'' if upload_id else 'out'} an uploadId is no S3 request "
                             "@uppy/aws-s3 makes")
        part_number = body.get("partNumber")
        if operation == S3Operation.UPLOAD_PART and (not isinstance(part_number, int) or isinstance(
                part_number, bool) or part_number < 1):
            raise BadRequest("partNumber: required with an UploadPart request, a number from 1")
        size = body.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise BadRequest("size: expected the file's length in bytes")
        # CreateMultipartUpload's request carries no contentType (the plugin sends the file's type to storage
        # itself): the page adds the file's `type`, which the plugin's PutObject request names contentType.
        content_type, filename = body.get("contentType") or body.get("type"), body.get("filename")
        return cls(operation=operation, key=key, storage_upload_id=upload_id,
                   part_number=part_number if operation == S3Operation.UPLOAD_PART else None,
                   content_type=content_type if isinstance(content_type, str) else None, size=size,
                   filename=filename if isinstance(filename, str) else None)

    def new_upload(self) -> NewUpload:
        if self.size is None:
            raise SizeRequired(SIZE_REQUIRED)
        return NewUpload.from_json({"filename": self.filename or self.key.rsplit("/", 1)[-1], "size": self.size,
                                    "content_type": self.content_type or "application/octet-stream"})

    def upload_id(self) -> str:
        """The dropgate upload a request names by its key (the key presign gave it: model.object_key)."""
        upload_id = upload_id_in_key(self.key)
        if upload_id is None:
            raise NotFound(f"no upload has the key {self.key!r}")
        return upload_id


class BrowserS3:
    """Signs the browser's own storage requests, each only for the caller's own upload."""

    def __init__(self, *, uploads: UploadService, signer: PresignSigner, storage: StorageSettings,
                 limits: LimitSettings) -> None:
        self._uploads = uploads
        self._signer = signer
        self._storage = storage
        self._limits = limits

    # -- signRequest mode --

    def sign(self, principal: Principal, request: SignRequest, actor: Actor) -> dict[str, Any]:
        """`{url, key?, headers?}` for the plugin, or an ApiError that says why not."""
        if request.operation == S3Operation.DELETE_OBJECT:
            raise Forbidden("DeleteObject is not signed: a stored file is removed by dropgate (retention, "
                            "or the owner's cancel before it completes)")
        if request.operation in _STARTS_AN_UPLOAD:
            self._uploads.count_request(principal)  # the other requests count in the statement that reads the row
            return self._start(principal, request, actor)
        upload = self._uploads.owned(principal, request.upload_id())
        if upload.object_key != request.key:
            raise NotFound(f"no upload has the key {request.key!r}")
        upload = self._uploads.bind_storage_upload(upload, request.storage_upload_id or "")
        if request.operation == S3Operation.UPLOAD_PART:
            [part] = self._uploads.sign_part_urls(upload, [PartRequest(request.part_number or 0, None)])
            return _answer(part["url"], part["headers"])
        if request.operation == S3Operation.ABORT_MULTIPART_UPLOAD:
            self._uploads.abort(principal, str(upload.id), actor, in_storage=False)
        elif upload.status != UploadStatus.PENDING:
            raise Conflict(f"upload is {upload.status}, not pending")
        method = {S3Operation.LIST_PARTS: "GET", S3Operation.COMPLETE_MULTIPART_UPLOAD: "POST",
                  S3Operation.ABORT_MULTIPART_UPLOAD: "DELETE"}[request.operation]
        signed = self._presign(method, upload, query={"uploadId": upload.storage_upload_id or ""})
        return _answer(signed.url, signed.headers)

    def _start(self, principal: Principal, request: SignRequest, actor: Actor) -> dict[str, Any]:
        one_write = request.operation == S3Operation.PUT_OBJECT
        if not one_write and self._uploads.requires_part_checksums:
            raise BadRequest("this storage takes only parts that carry their SHA-256 (DROPGATE_S3_PART_CHECKSUMS="
                             "required), which Uppy 6 does not compute: use dropgate's own API (docs/uploader.md)")
        # The plugin's requested key is the page's handle for the file (the snippet passes the Uppy file id):
        # a retry of the same file asks again under it and gets the same upload back.
        upload = self._uploads.create(principal, request.new_upload(), actor, part_size_rule=uppy_part_size,
                                      multipart=not one_write, start_in_storage=False, client_ref=request.key[:200])
        headers = self.object_headers(upload)
        if one_write:
            # If-None-Match: the URL stays valid for minutes, and must not replace the object once it is
            # stored (and perhaps already scanned clean): storage refuses a second write, 412 (AWS S3
            # "conditional writes"; SeaweedFS and moto enforce it: tests/test_storage_contract.py).
            signed = self._presign("PUT", upload, headers={**headers, "Content-Length": str(upload.declared_size),
                                                           "If-None-Match": "*"})
        else:
            signed = self._presign("POST", upload, query={"uploads": ""}, headers=headers)
        return {**_answer(signed.url, signed.headers), "key": upload.object_key}

    # -- Companion mode's one-write path --

    def post_policy(self, upload: UploadRow) -> PostPolicy:
        """A POST policy for exactly this upload: its key, type, metadata and length, nothing else."""
        return self._signer.post_policy(upload.bucket, upload.object_key, size=upload.declared_size,
                                        fields=self.object_headers(upload),
                                        expires_in=self._limits.url_expiry_seconds)

    # -- shared --

    def object_headers(self, upload: UploadRow) -> dict[str, str]:
        """What the browser's write must carry, signed: the declared type, the metadata that ties the
        object to its upload (as presign's own CreateMultipartUpload sets it), and the SSE settings."""
        metadata = object_metadata(upload.id, upload.filename, upload.declared_sha256)
        return {"Content-Type": upload.content_type,
                **{f"x-amz-meta-{name}": value for name, value in metadata.items()}, **sse_headers(self._storage)}

    def _presign(self, method: str, upload: UploadRow, *, query: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> PresignedUrl:
        return self._signer.presign(method, upload.bucket, upload.object_key, query=query, headers=headers,
                                    expires_in=self._limits.url_expiry_seconds)


def _answer(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The plugin sends `headers` itself; those a page cannot set are left to the browser (signed all the same)."""
    return {"url": url, "headers": {name: value for name, value in headers.items()
                                    if name.lower() not in _BROWSER_SETS}}
