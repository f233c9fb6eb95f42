"""One content policy: what dropgate accepts, checked cheaply at create (presign) and on the bytes (scan).

- `sniff` names a file's real type from its first `SNIFF_BYTES`: fixed-offset magic numbers
  from each format's specification, then text, markup and scripts;
- `ActiveMarkup` streams the whole file for script in markup (it can hide after the head);
- `ContentPolicy.check_declared` is presign's check of the declared type and file name;
  `ContentPolicy.check_content` is scan's check of what the bytes turned out to be.
Both answer None when fine, else the reason in words (docs/content-policy.md).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shared.platform.settings import CONTENT_KINDS

if TYPE_CHECKING:
    from shared.platform.settings import ContentSettings

SNIFF_BYTES: Final = 8192
TEXT: Final = "text/plain"
OCTET_STREAM: Final = "application/octet-stream"
HTML, XHTML, SVG, XML = "text/html", "application/xhtml+xml", "image/svg+xml", "application/xml"
SHELL_SCRIPT: Final = "text/x-shellscript"
MACH_O: Final = "application/x-mach-binary"
JAVA_CLASS, JAR = "application/java-vm", "application/java-archive"
ZIP: Final = "application/zip"
DEFAULT_DENIED: Final = frozenset(CONTENT_KINDS)

# Magic numbers at offset 0; first match wins. Every signature the first type check had, plus every Mach-O magic of
# <mach-o/loader.h> (MH_MAGIC/MH_CIGAM, MH_MAGIC_64/MH_CIGAM_64) and the fat headers of <mach-o/fat.h>
# but FAT_MAGIC, which Java class files share (see _cafebabe). tar's "ustar" is at offset 257 (POSIX).
_MAGIC: Final[dict[bytes, str]] = {
    b"%PDF-": "application/pdf", b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif", b"GIF89a": "image/gif", b"II*\x00": "image/tiff", b"MM\x00*": "image/tiff",
    b"PK\x03\x04": ZIP, b"PK\x05\x06": ZIP, b"\x1f\x8b": "application/gzip", b"BZh": "application/x-bzip2",
    b"\xfd7zXZ\x00": "application/x-xz", b"7z\xbc\xaf\x27\x1c": "application/x-7z-compressed",
    b"Rar!\x1a\x07": "application/vnd.rar",
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1": "application/x-ole-storage",  # .doc/.xls/.ppt/.msi
    b"MZ": "application/x-msdownload",  # the MS-DOS stub of every PE image (Microsoft PE/COFF specification)
    b"\x7fELF": "application/x-executable",  # e_ident (System V ABI)
    b"\xfe\xed\xfa\xce": MACH_O, b"\xce\xfa\xed\xfe": MACH_O, b"\xfe\xed\xfa\xcf": MACH_O, b"\xcf\xfa\xed\xfe": MACH_O,
    b"\xbe\xba\xfe\xca": MACH_O, b"\xca\xfe\xba\xbf": MACH_O, b"\xbf\xba\xfe\xca": MACH_O,
    b"\x1a\x45\xdf\xa3": "video/webm", b"OggS": "audio/ogg", b"ID3": "audio/mpeg", b"fLaC": "audio/flac",
    b"SQLite format 3\x00": "application/vnd.sqlite3",
}
# DIB header sizes: BITMAPCOREHEADER 12, OS/2 16/64, BITMAPINFOHEADER 40, V2 52, V3 56, V4 108, V5 124.
_BMP_DIB_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# ISO/IEC 23008-12 (HEIF) and the AV1 Image File Format spec name these `ftyp` brands.
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_RIFF: Final = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
_HTML_ROOTS: Final = frozenset({"html", "head", "body", "script", "iframe"})
_XHTML_NS: Final = 'xmlns="http://www.w3.org/1999/xhtml"'
_ROOT: Final = re.compile(r"<([a-z][a-z0-9:._-]*)")


def sniff(head: bytes) -> str | None:
    """The detected media type of a file starting with `head`, None for unrecognised binary."""
    detected = next((media for magic, media in _MAGIC.items() if head.startswith(magic)), None)
    if detected or head[257:262] == b"ustar":
        return detected or "application/x-tar"
    for check in (_microsoft_image, _cafebabe, _container):
        detected = check(head)
        if detected:
            return detected
    if head[:2] == b"#!":
        return SHELL_SCRIPT  # the kernel runs whatever follows through the named interpreter
    text = _decode_text(head)
    return None if text is None else _text_type(text)


def _microsoft_image(head: bytes) -> str | None:
    # BMP: "BM" alone starts plenty of text, so the DIB header after the 14-byte BITMAPFILEHEADER must
    # start with a known size. ICO: ICONDIR (reserved 0, type 1, count > 0), entries' reserved byte 0.
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "image/bmp"
    if head[:4] == b"\x00\x00\x01\x00" and head[4:6] != b"\x00\x00" and head[9:10] == b"\x00":
        return "image/vnd.microsoft.icon"
    return None


def _cafebabe(head: bytes) -> str | None:
    """FAT_MAGIC is also the Java class magic; file(1)'s Magdir/cafebabe tells them apart the same way.

    In a fat header the big-endian uint32 after the magic is the architecture count (a handful);
    in a class file it is minor << 16 | major, and major is at least 45 (JVM spec §4.1).
    """
    if head[:4] != b"\xca\xfe\xba\xbe" or len(head) < 8:
        return None
    count, major = int.from_bytes(head[4:8], "big"), int.from_bytes(head[6:8], "big")
    if 0 < count < 45:
        return MACH_O
    return JAVA_CLASS if major >= 45 else None


def _container(head: bytes) -> str | None:
    # ISO/IEC 14496-12: the first box is `ftyp` (size, "ftyp", major brand, minor version, compatible brands).
    if head[4:8] == b"ftyp":
        end = min(int.from_bytes(head[:4], "big"), len(head))
        brands = {head[8:12], *(head[i:i + 4] for i in range(16, end - 3, 4))}
        if brands & _AVIF_BRANDS:
            return "image/avif"
        return "image/heic" if brands & _HEIF_BRANDS else "video/mp4"  # MP4, MOV, M4A, 3GP
    return _RIFF.get(head[8:12]) if head[:4] == b"RIFF" else None  # RIFF: the form type at offset 8


def _decode_text(head: bytes) -> str | None:
    """The head as text (UTF-8, or UTF-16 after its byte order mark), None when it is binary."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        text = head[2:].decode("utf-16-le" if head[0] == 0xFF else "utf-16-be", errors="replace")
        # One replacement character is a code unit or surrogate pair cut by the sniffed window.
        return None if "\x00" in text or text.count("\ufffd") > 1 else text
    if b"\x00" in head:
        return None
    body = head[3:] if head[:3] == b"\xef\xbb\xbf" else head
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sniffed window is still text.
        return body[:exc.start].decode("utf-8") if exc.start >= len(body) - 3 else None


def _text_type(text: str) -> str:
    """Markup by its prolog and root element (after whitespace, comments, <?xml?> and a doctype), else text."""
    lower, pos, xml, doctype = text.lower(), 0, False, ""
    while True:
        pos = len(lower) - len(lower[pos:].lstrip())
        if lower.startswith("<!--", pos):
            end = lower.find("-->", pos)
            if end < 0:
                return HTML  # WHATWG MIME Sniffing §7.1 counts a document opening with "<!--" as HTML
            pos = end + 3
        elif lower.startswith("<?xml", pos) or lower.startswith("<!doctype", pos):
            end = lower.find(">", pos)
            if end < 0:
                break
            if lower[pos + 1] == "?":
                xml = True
            else:
                doctype = lower[pos:end]
            pos = end + 1
        else:
            break
    match = _ROOT.match(lower, pos)
    root = match.group(1).rsplit(":", 1)[-1] if match else ""
    if root == "svg" or doctype.startswith("<!doctype svg"):
        return SVG
    if root == "html" or doctype.startswith("<!doctype html"):
        tag = lower[pos:].split(">", 1)[0] if root == "html" else ""
        return XHTML if xml and _XHTML_NS in tag else HTML
    if root in _HTML_ROOTS:
        return HTML
    return XML if xml else TEXT


def looks_like_jar(names: Iterable[str]) -> bool:
    """Whether a ZIP's entry names make it a Java archive (the JAR File Specification's manifest, or classes)."""
    return any(name.upper() == "META-INF/MANIFEST.MF" or name.lower().endswith(".class") for name in names)


class ActiveMarkup:
    """Streams a whole file for script in markup, with a bounded tail so a needle split across chunks is found.

    Browsers decode character references in attribute values and URL parsers drop tab and newline
    (WHATWG URL "basic URL parser"), so `java&#115;cript:` and `java\\nscript:` are searched for as
    `javascript:`. NUL bytes are dropped first, so UTF-16 markup is searched like ASCII. Any `on*=`
    attribute counts as an event handler, as HTML sanitisers treat it, rather than a list that ages.
    """

    _TAGS: Final = re.compile(r"<(script|iframe|frame|object|embed|applet|foreignobject)")
    _HANDLER: Final = re.compile(r"on([a-z]{3,40})\s*=")  # preceded by whitespace, a quote or "/" (see _search)
    _SCHEMES: Final = ("javascript:", "vbscript:")
    _REFERENCE: Final = re.compile(r"&#x0*([0-9a-f]{1,6});?|&#0*([0-9]{1,7});?|&(tab|newline|colon);")
    _NAMED: Final = {"tab": "\t", "newline": "\n", "colon": ":"}
    TAIL: Final = 64  # longer than any needle, whitespace before "=" aside
    MAX_PENDING: Final = 1024  # an unfinished character reference held for the next chunk

    def __init__(self) -> None:
        self._found: str | None = None
        self._pending = ""  # "&#x6" at a chunk's end: decoded once the rest arrives
        self._markup_tail = ""  # for tags and handlers: lower-cased
        self._url_tail = ""  # for script URLs: references decoded, tab/newline/CR removed

    @property
    def found(self) -> str | None:
        """What was found (e.g. "<script", "onload=", "javascript:"), for the reason text."""
        return self._found

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the file, in order (a repeated or skipped chunk can join needles that are not there)."""
        if self._found:
            return
        text = self._pending + chunk.replace(b"\x00", b"").decode("latin-1").lower()
        cut = text.rfind("&")
        if cut < 0 or len(text) - cut > self.MAX_PENDING or not re.fullmatch(r"&[#0-9a-z]*", text[cut:]):
            cut = len(text)
        text, self._pending = text[:cut], text[cut:]
        markup = self._markup_tail + text
        # str.replace, not re.sub: a 1 GiB SVG takes seconds, not minutes.
        url = (self._url_tail + self._REFERENCE.sub(self._decode, text)).replace("\t", "").replace("\n", "")
        url = url.replace("\r", "")
        self._found = self._search(markup, url)
        # A run of whitespace at the end (`onload` + spaces, `=` in the next chunk) must not push the needle out.
        kept = markup.rstrip()
        self._markup_tail = kept[-self.TAIL:] + markup[len(kept):][:1]
        self._url_tail = url[-self.TAIL:]

    def _search(self, markup: str, url: str) -> str | None:
        tag = self._TAGS.search(markup)
        if tag:
            return "<foreignObject" if tag.group(1) == "foreignobject" else "<" + tag.group(1)
        for handler in self._HANDLER.finditer(markup):
            before = markup[handler.start() - 1:handler.start()]
            if before.isspace() or before in ('"', "'", "/"):
                return f"on{handler.group(1)}="
        return next((scheme for scheme in self._SCHEMES if scheme in url), None)

    @classmethod
    def _decode(cls, match: re.Match[str]) -> str:
        if match.group(3):
            return cls._NAMED[match.group(3)]
        code = int(match.group(1), 16) if match.group(1) else int(match.group(2))
        return chr(code).lower() if 0 < code <= 0x10FFFF else "\ufffd"


# -- kinds of content --

def _each(kind: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), kind)


_KINDS: Final[dict[str, str]] = {
    **_each("executable", f"{MACH_O} application/x-msdownload application/x-executable application/x-dosexec "
                          "application/vnd.microsoft.portable-executable application/x-sharedlib application/x-elf "
                          "application/x-msi application/x-ms-installer application/x-msdos-program"),
    **_each("script", f"{SHELL_SCRIPT} text/x-sh application/x-sh application/x-shellscript application/x-csh "
                      "application/x-bat application/x-powershell text/vbscript application/x-vbscript "
                      "application/hta"),
    **_each("java", f"{JAVA_CLASS} {JAR} application/x-java-archive application/x-java-class "
                    "application/x-java-jnlp-file"),
    **_each("markup", f"{HTML} {XHTML} {SVG}"),
}
_KIND_WORDS: Final = {"executable": "executable content", "script": "a script", "java": "Java code"}
# Extensions that run code when the file is opened (Explorer, Finder, a desktop). Not here, deliberately:
# .bin (generic data); .js (source code and web assets far more often than Windows Script Host droppers;
# served as text/plain with `attachment`, no browser runs it from here; .jse/.wsf, WSH-only, are here);
# markup (.html .htm .xhtml .svg are documents: whether they carry script only the bytes tell, at scan).
_EXTENSIONS: Final[dict[str, str]] = {
    **_each("executable", "exe dll so dylib msi msp msix appx com scr pif cpl sys elf app"),
    **_each("script", "sh bash zsh csh ksh command bat cmd ps1 psm1 vbs vbe jse wsf wsh hta"),
    **_each("java", "jar class jnlp"),
}


def kind_of(detected: str | None) -> str | None:
    """The kind of a media type (sniffed or declared): "executable" | "script" | "java" | "markup" | None."""
    return _KINDS.get(detected) if detected else None


def download_type(detected: str | None) -> str:
    """What a download is served as (always with `attachment`): the sniffed type, never the uploader's claim.

    Markup is served as text/plain: should anything render the response inline, it shows source
    instead of running script, and browsers never sniff text/plain into HTML (WHATWG MIME Sniffing §7).
    """
    if detected is None:
        return OCTET_STREAM
    return TEXT if kind_of(detected) == "markup" else detected


# -- does the content fit the declared type --

_AV_CONTAINERS: Final = frozenset({"video/mp4", "video/webm", "audio/ogg"})  # audio, video or both inside
_CONTAINER_OF: Final = {JAR: ZIP}  # a jar is a ZIP wherever a ZIP is expected
# (detected types that fit, the declared types they fit): the first type check's table and the new signatures.
_FAMILY_TABLE: Final = (
    ({"image/bmp"}, "image/bmp image/x-ms-bmp"),
    ({"image/vnd.microsoft.icon"}, "image/vnd.microsoft.icon image/x-icon"),
    ({"image/heic", "image/avif"}, "image/heif"),
    ({ZIP}, f"{ZIP} application/x-zip-compressed {JAR}"),
    ({"application/gzip"}, "application/gzip application/x-gzip"),
    ({"application/x-ole-storage"}, "application/msword application/vnd.ms-excel application/vnd.ms-powerpoint"),
    ({"video/mp4"}, "video/mp4 video/quicktime audio/mp4 audio/x-m4a"),
    ({"video/webm"}, "video/webm audio/webm"),
    ({"audio/ogg"}, "audio/ogg video/ogg"),
    ({"audio/wav"}, "audio/wav audio/x-wav"),
    ({t for t, kind in _KINDS.items() if kind == "executable"}, "application/x-msdownload"),
    ({SVG}, SVG),
    ({HTML, XHTML, TEXT}, HTML),  # an HTML fragment ("<div>...") sniffs as plain text
    ({XHTML, HTML}, XHTML),
)
_FAMILIES: Final[dict[str, frozenset[str]]] = {
    **{t: frozenset({t}) for t in ("application/pdf image/png image/jpeg image/gif image/tiff image/webp "
                                   "image/heic image/avif application/x-tar application/x-7z-compressed "
                                   f"application/vnd.rar audio/mpeg audio/flac {JAVA_CLASS} {MACH_O} "
                                   "application/x-executable").split()},
    **{declared: frozenset(fits) for fits, names in _FAMILY_TABLE for declared in names.split()},
}
_CONTAINER_DOCUMENTS: Final = ("application/vnd.openxmlformats-officedocument.", "application/vnd.oasis.opendocument.")


def _textual(declared: str) -> frozenset[str] | None:
    """The detected types that fit a declared text type; None when `declared` is not one."""
    if declared.endswith("+xml") or declared in (XML, "text/xml"):
        return frozenset({TEXT, XML})
    if declared.startswith("text/") or declared.endswith("json") or kind_of(declared) == "script":
        return frozenset({TEXT, SHELL_SCRIPT})  # a script is text (whether it may come in is the deny-list's call)
    return None


def _fits(declared: str, detected: str | None) -> bool | None:
    """Whether `detected` fits what `declared` promises; None when `declared` promises nothing we can check."""
    family = _FAMILIES.get(declared) or _textual(declared)
    if family is not None:
        return detected in family or _CONTAINER_OF.get(detected or "") in family
    if declared.startswith(_CONTAINER_DOCUMENTS):
        return detected == ZIP  # .docx, .odt, ...: ZIP containers (ECMA-376 part 2, OpenDocument part 3)
    top = declared.split("/", 1)[0]
    if top in ("image", "audio", "video"):
        # Never text, markup, a program or an archive: the same top-level type, or binary we do not know.
        same = detected is None or detected.split("/", 1)[0] == top or (top != "image" and detected in _AV_CONTAINERS)
        return same and kind_of(detected) is None
    return None


# -- the policy --

def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _malformed(content_type: str) -> str | None:
    if len(content_type) > 255:
        return "content type is longer than 255 characters"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in content_type):
        return "content type contains control characters"
    major, _, minor = _media_type(content_type).partition("/")
    if not major or not minor or "/" in minor or " " in major + minor:
        return f"content type {content_type!r} is not a media type such as application/pdf"
    return None


def _clean_name(filename: str) -> str:
    """The name as shared.uploads.requests.sanitise_filename stores it, so the check sees the name users download."""
    name = unicodedata.normalize("NFC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" and ch not in '"<>:|?*')
    return name.strip().strip(".").strip()


def _extension_kind(name: str) -> str | None:
    lower = name.lower()
    if re.search(r"\.so(\.\d+)+$", lower):
        return "executable"  # libfoo.so.1.2
    return _EXTENSIONS.get(lower.rsplit(".", 1)[1]) if "." in lower else None


@dataclass(frozen=True)
class ContentPolicy:
    allowed: tuple[str, ...] = ("*",)  # "*" (dropgate is a general upload service), "image/*", "application/pdf"
    denied: frozenset[str] = DEFAULT_DENIED  # of CONTENT_KINDS; empty with DROPGATE_DENIED_CONTENT=none

    def __post_init__(self) -> None:
        if not self.denied <= DEFAULT_DENIED:
            raise ValueError(f"unknown kinds of content {sorted(self.denied - DEFAULT_DENIED)}")

    @classmethod
    def from_settings(cls, settings: ContentSettings) -> ContentPolicy:
        return cls(allowed=tuple(settings.allowed_content_types), denied=frozenset(settings.denied_content))

    def allows(self, media_type: str | None) -> bool:
        """Whether the allow-list admits `media_type`: "*", the exact type, or its "type/*"."""
        return media_type is not None and bool(
            {"*", media_type, media_type.split("/", 1)[0] + "/*"} & set(self.allowed))

    def _refuses(self, kind: str | None, what: str) -> str | None:
        return f"{what} is {_KIND_WORDS[kind]}, which is not accepted here" if kind in self.denied else None

    def check_declared(self, content_type: str, filename: str) -> str | None:
        """presign, at create: None when the declared type and the file name are fine, else the reason."""
        declared, name = _media_type(content_type), _clean_name(filename)
        refused = _malformed(content_type) or self._refuses(kind_of(declared), f"content type {declared}")
        if refused:
            return refused
        kind = _extension_kind(name)
        if kind in self.denied:
            return f"file name {name!r} has the extension of {_KIND_WORDS[kind]}, which is not accepted here"
        if not self.allows(declared):
            return f"content type {declared} is not allowed here (allowed: {', '.join(self.allowed)})"
        return None

    def check_content(self, declared_type: str, detected: str | None, *,
                      active_markup: str | None = None) -> str | None:
        """scan, after reading the bytes: None when the content is fine, else the reason.

        `detected` is sniff()'s answer (JAR when looks_like_jar said so); `active_markup` is
        ActiveMarkup.found, which scan should compute whenever the detected or declared type is markup.
        """
        declared = _media_type(declared_type)
        refused = (self._refuses(kind_of(detected), f"the content ({detected})")
                   or self._refuses(kind_of(declared), f"content type {declared}"))
        if refused:
            return refused
        markup = detected if kind_of(detected) == "markup" else declared if kind_of(declared) == "markup" else None
        if active_markup and markup and "active-markup" in self.denied:
            return f"the content is {markup} with active content ({active_markup}), which is not accepted here"
        fits = _fits(declared, detected)
        if fits is False:
            return f"declared {declared} but the content is {detected or 'unrecognised binary data'}"
        # The declared type names the content when it was verified above or when the bytes say nothing more.
        named = declared if fits or detected in (None, TEXT) else detected
        if self.allows(named) or self.allows(_CONTAINER_OF.get(named)):
            return None
        return f"the content is {named}, which is not allowed here (allowed: {', '.join(self.allowed)})"
