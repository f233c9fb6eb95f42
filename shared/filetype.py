"""What a file really is, from its first bytes, and whether that fits what the uploader declared.

Only signatures that are unambiguous at a fixed offset are used (the "magic
numbers" of each format's specification); anything else is "unknown binary" or,
when the head is valid UTF-8 without NUL bytes, text. The rule for a declared
type (`consistent`):

- a declared type we have a signature for (PDF, PNG, ZIP, ...) must sniff as that
  family; a PNG declared as PDF is rejected;
- `text/*` and JSON/CSV/XML must sniff as text;
- `application/octet-stream` and types we know no signature for accept anything
  except an executable, so a program cannot hide behind a vague type.
"""

from __future__ import annotations

from typing import Final

SNIFF_BYTES: Final = 8192

EXECUTABLE: Final = frozenset({"application/x-msdownload", "application/x-executable", "application/x-mach-binary"})
TEXT: Final = "text/plain"

# (offset, magic, detected type); first match wins, so longer/more specific first.
_SIGNATURES: Final[list[tuple[int, bytes, str]]] = [
    (0, b"%PDF-", "application/pdf"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),  # empty archive
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),  # .doc/.xls/.ppt/.msi
    (0, b"MZ", "application/x-msdownload"),
    (0, b"\x7fELF", "application/x-executable"),
    (0, b"\xcf\xfa\xed\xfe", "application/x-mach-binary"),
    (0, b"\xfe\xed\xfa\xcf", "application/x-mach-binary"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),  # Matroska/WebM
    (0, b"OggS", "audio/ogg"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (257, b"ustar", "application/x-tar"),
]

# Declared type -> the detected types that are consistent with it.
_FAMILIES: Final[dict[str, frozenset[str]]] = {
    "application/pdf": frozenset({"application/pdf"}),
    "image/png": frozenset({"image/png"}),
    "image/jpeg": frozenset({"image/jpeg"}),
    "image/gif": frozenset({"image/gif"}),
    "image/tiff": frozenset({"image/tiff"}),
    "image/webp": frozenset({"image/webp"}),
    "application/zip": frozenset({"application/zip"}),
    "application/x-zip-compressed": frozenset({"application/zip"}),
    "application/gzip": frozenset({"application/gzip"}),
    "application/x-gzip": frozenset({"application/gzip"}),
    "application/x-tar": frozenset({"application/x-tar"}),
    "application/x-7z-compressed": frozenset({"application/x-7z-compressed"}),
    "application/vnd.rar": frozenset({"application/vnd.rar"}),
    "application/msword": frozenset({"application/x-ole-storage"}),
    "application/vnd.ms-excel": frozenset({"application/x-ole-storage"}),
    "application/vnd.ms-powerpoint": frozenset({"application/x-ole-storage"}),
    "video/mp4": frozenset({"video/mp4"}),
    "video/quicktime": frozenset({"video/mp4"}),
    "video/webm": frozenset({"video/webm"}),
    "audio/mpeg": frozenset({"audio/mpeg"}),
    "audio/ogg": frozenset({"audio/ogg"}),
    "audio/flac": frozenset({"audio/flac"}),
    "audio/wav": frozenset({"audio/wav"}),
    "audio/x-wav": frozenset({"audio/wav"}),
    "application/x-msdownload": EXECUTABLE,
}
_TEXT_LIKE: Final = frozenset({"application/json", "application/xml", "application/x-ndjson", "image/svg+xml"})
_OFFICE_OPEN_XML: Final = "application/vnd.openxmlformats-officedocument."
_OPEN_DOCUMENT: Final = "application/vnd.oasis.opendocument."


def sniff(head: bytes) -> str | None:
    """The detected type of a file starting with `head`, or None for unknown binary."""
    for offset, magic, detected in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return detected
    if head[4:8] == b"ftyp":
        return "video/mp4"  # ISO base media: MP4, MOV, M4A, HEIC share the box layout
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE", b"AVI "):
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}[head[8:12]]
    if _looks_like_text(head):
        return TEXT
    return None


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sniffed window is still text.
        return exc.start >= len(head) - 3
    return True


def consistent(declared: str, detected: str | None) -> tuple[bool, str | None]:
    """Whether the detected type fits the declared one; when not, the reason in words."""
    declared = declared.lower()
    if declared in _FAMILIES:
        if detected in _FAMILIES[declared]:
            return True, None
        return False, f"declared {declared} but the content is {detected or 'unrecognised binary data'}"
    if declared.startswith((_OFFICE_OPEN_XML, _OPEN_DOCUMENT)):
        ok = detected == "application/zip"
        return ok, None if ok else f"declared {declared} (a ZIP container) but the content is {detected or 'unknown'}"
    if declared.startswith("text/") or declared in _TEXT_LIKE:
        ok = detected == TEXT
        return ok, None if ok else f"declared {declared} but the content is {detected or 'binary data'}"
    if detected in EXECUTABLE:
        return False, f"declared {declared} but the content is an executable ({detected})"
    return True, None
