"""What clients send presign, parsed from JSON into typed requests; and how a client's file name is made safe.

Each parser collects every problem into one BadRequest, naming the field, so a client learns all at once.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from shared.platform.errors import BadRequest
from shared.uploads.parts import MAX_PARTS_PER_BATCH

_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class NewUpload:
    filename: str
    size: int
    content_type: str
    sha256: str | None  # lowercase hex of the whole file, when the client knows it

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> NewUpload:
        problems = []
        filename = body.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            problems.append("filename: required, a non-empty string")
        size = body.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append("size: required, the file's length in bytes (a non-negative integer)")
        content_type = body.get("content_type", "application/octet-stream")
        if not isinstance(content_type, str) or not _CONTENT_TYPE.match(content_type.split(";")[0].strip().lower()):
            problems.append("content_type: expected a MIME type such as application/pdf")
        sha256 = body.get("sha256")
        if sha256 is not None and (not isinstance(sha256, str) or not _HEX_SHA256.match(sha256)):
            problems.append("sha256: expected 64 hexadecimal characters")
        if problems:
            raise BadRequest("; ".join(problems))
        return cls(filename=filename, size=size, content_type=content_type.split(";")[0].strip().lower(),
                   sha256=sha256.lower() if sha256 else None)


@dataclass(frozen=True)
class PartRequest:
    number: int
    sha256_base64: str | None

    @classmethod
    def list_from_json(cls, body: dict[str, Any]) -> list[PartRequest]:
        parts = body.get("parts")
        if not isinstance(parts, list) or not parts:
            raise BadRequest("parts: required, a non-empty list of {number, sha256?}")
        if len(parts) > MAX_PARTS_PER_BATCH:
            raise BadRequest(f"parts: at most {MAX_PARTS_PER_BATCH} per request")
        parsed = []
        for index, part in enumerate(parts):
            if not isinstance(part, dict):
                raise BadRequest(f"parts[{index}]: expected an object")
            number = part.get("number")
            if not isinstance(number, int) or isinstance(number, bool):
                raise BadRequest(f"parts[{index}].number: required integer")
            parsed.append(cls(number=number, sha256_base64=part_checksum(part.get("sha256"), f"parts[{index}].sha256")))
        return parsed


@dataclass(frozen=True)
class CompletedPart:
    number: int
    etag: str
    # Base64 SHA-256 the client uploaded the part with; only used where storage needs it named at completion
    # and does not report it itself (DROPGATE_S3_PART_CHECKSUMS=required). Storage checks it against the part.
    sha256: str | None = None

    @classmethod
    def list_from_json(cls, body: dict[str, Any], *, number_key: str = "number",
                       etag_key: str = "etag") -> list[CompletedPart]:
        parts = body.get("parts")
        if not isinstance(parts, list) or not parts:
            raise BadRequest(f"parts: required, a non-empty list of {{{number_key}, {etag_key}}}")
        parsed = []
        for index, part in enumerate(parts):
            number = part.get(number_key) if isinstance(part, dict) else None
            etag = part.get(etag_key) if isinstance(part, dict) else None
            if isinstance(number, str) and number.isdigit():
                number = int(number)
            if not isinstance(number, int) or isinstance(number, bool) or not isinstance(etag, str) or not etag:
                raise BadRequest(f"parts[{index}]: expected {{{number_key}: integer, {etag_key}: string}}")
            sha256 = part_checksum(part.get("sha256"), f"parts[{index}].sha256")
            parsed.append(cls(number=number, etag=normalise_etag(etag), sha256=sha256))
        return parsed


def part_checksum(value: Any, field: str) -> str | None:
    """A part's SHA-256 as S3 wants it (base64), from base64 or hex."""
    if value is None:
        return None
    if isinstance(value, str):
        if _HEX_SHA256.match(value):
            return base64.b64encode(bytes.fromhex(value)).decode()
        try:
            if len(base64.b64decode(value, validate=True)) == 32:
                return value
        except (binascii.Error, ValueError):
            pass
    raise BadRequest(f"{field}: expected the part's SHA-256, base64 (44 characters) or hex (64)")


def normalise_etag(etag: str) -> str:
    return etag.strip().strip('"')


def sanitise_filename(raw: str) -> str:
    """The last path component, normalised, without control or quoting characters, at most 200 characters."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" and ch not in '"<>:|?*')
    name = name.strip().strip(".") or "file"
    return name[:200]


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode() or "file"
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", ascii_name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
