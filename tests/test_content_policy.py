"""The content policy (shared/scanning/content_policy.py): sniffing real magic bytes, script in markup, and the two checks."""

from __future__ import annotations

import hashlib
import struct
import sys
import zlib

import pytest

from shared.platform.settings import Settings
from shared.scanning.content_policy import (
    JAR,
    SNIFF_BYTES,
    ActiveMarkup,
    ContentPolicy,
    download_type,
    kind_of,
    looks_like_jar,
    sniff,
)

# -- real headers, built the way each format's specification lays them out --


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00\x00")  # one filter byte, one grey pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bmp() -> bytes:
    pixels = b"\x00\x00\xff\x00"  # one pixel, row padded to 4 bytes
    info = struct.pack("<IiiHHIIiiII", 40, 1, 1, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)  # BITMAPINFOHEADER
    return struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels


def ico() -> bytes:
    image = png()
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 1, 1, 0, 0, 1, 32, len(image), 22) + image


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    box = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(box)) + b"ftyp" + box + b"\x00\x00\x00\x08free"


def mach_o(magic: int, byte_order: str) -> bytes:  # mach_header(_64) of an x86_64 MH_EXECUTE
    return struct.pack(byte_order + "8I", magic, 0x01000007, 3, 2, 16, 1024, 0x200085, 0)


def fat(magic: bytes, count: int, byte_order: str = ">") -> bytes:  # fat_header + fat_arch entries
    arch = struct.pack(byte_order + "5I", 0x01000007, 3, 0x4000, 4096, 14)
    return magic + struct.pack(byte_order + "I", count) + arch * count


def java_class(major: int, minor: int = 0) -> bytes:  # ClassFile: magic, minor_version, major_version, ...
    return b"\xca\xfe\xba\xbe" + struct.pack(">HHH", minor, major, 15) + b"\x0a\x00\x02\x00\x03\x07"


def pe() -> bytes:  # MS-DOS stub pointing (e_lfanew at 0x3c) at the "PE\0\0" signature and COFF header
    stub = b"MZ" + b"\x90\x00" * 29 + struct.pack("<I", 0x80)
    return stub.ljust(0x80, b"\x00") + b"PE\x00\x00" + struct.pack("<HH", 0x8664, 3)


def noise(size: int = 4096) -> bytes:
    out = b""
    while len(out) < size:
        out += hashlib.sha256(out[-32:] or b"seed").digest()
    return b"\x00\x17" + out[: size - 2]  # a NUL at once: never text, and no magic starts "\x00\x17"


ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + struct.pack("<HHI", 2, 0x3E, 1)
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>hi</title></head><body><p>hello</p></body></html>\n"
SVG_PLAIN = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
             b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
             b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>\n')
SVG_SCRIPT = (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="10" height="10"/>'
              b'<script type="text/javascript">alert(document.cookie)</script></svg>')


def policy(**env: str) -> ContentPolicy:
    return ContentPolicy.from_settings(Settings.from_env(["content"], env).content)


# -- sniff --

@pytest.mark.parametrize(("head", "expected"), [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "application/pdf"),
    (png(), "image/png"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/jpeg"),
    (b"GIF89a\x01\x00\x01\x00", "image/gif"),
    (b"II*\x00\x08\x00\x00\x00", "image/tiff"),
    (b"PK\x03\x04\x14\x00\x00\x00", "application/zip"),
    (b"\x1f\x8b\x08\x00", "application/gzip"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 8, "application/x-ole-storage"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "video/webm"),
    (b"OggS\x00\x02", "audio/ogg"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
    (b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (b"notes.txt".ljust(257, b"\x00") + b"ustar\x0000", "application/x-tar"),
    (bmp(), "image/bmp"),
    (ico(), "image/vnd.microsoft.icon"),
    (ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
    (ftyp(b"mif1", b"mif1", b"heix"), "image/heic"),
    (ftyp(b"avif", b"avif", b"mif1", b"miaf"), "image/avif"),
    (ftyp(b"mif1", b"avif", b"mif1"), "image/avif"),  # AVIF under a generic HEIF major brand
    (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "video/mp4"),
    (ftyp(b"qt  ", b"qt  "), "video/mp4"),
])
def test_sniff_formats(head: bytes, expected: str) -> None:
    assert sniff(head) == expected


def test_bm_alone_is_not_a_bitmap() -> None:
    assert sniff(b"BMW service schedule, 2024\n") == "text/plain"


@pytest.mark.parametrize("head", [
    mach_o(0xFEEDFACE, ">"), mach_o(0xFEEDFACE, "<"),  # 32-bit: feedface / cefaedfe
    mach_o(0xFEEDFACF, ">"), mach_o(0xFEEDFACF, "<"),  # 64-bit: feedfacf / cffaedfe
    fat(b"\xca\xfe\xba\xbe", 2), fat(b"\xbe\xba\xfe\xca", 2, "<"),  # universal (fat), both byte orders
    fat(b"\xca\xfe\xba\xbf", 2), fat(b"\xbf\xba\xfe\xca", 2, "<"),  # fat 64
    fat(b"\xca\xfe\xba\xbe", 1), fat(b"\xca\xfe\xba\xbe", 18),
])
def test_every_mach_o_magic_is_an_executable(head: bytes) -> None:
    assert sniff(head) == "application/x-mach-binary"
    assert kind_of(sniff(head)) == "executable"


@pytest.mark.parametrize(("major", "minor"), [(45, 3), (52, 0), (61, 0), (65, 0xFFFF)])  # 1.0.2, 8, 17, 21 preview
def test_a_java_class_is_told_from_a_fat_binary(major: int, minor: int) -> None:
    assert sniff(java_class(major, minor)) == "application/java-vm"
    assert kind_of("application/java-vm") == "java"


def test_cafebabe_that_is_neither_is_unrecognised() -> None:
    assert sniff(b"\xca\xfe\xba\xbe\x00\x01\x00\x20") is None  # 65568 architectures, or class major 32


def test_elf_pe_and_this_interpreter() -> None:
    assert sniff(ELF) == "application/x-executable"
    assert sniff(pe()) == "application/x-msdownload"
    with open(sys.executable, "rb") as binary:  # a real program: ELF on Linux, Mach-O on macOS
        assert kind_of(sniff(binary.read(SNIFF_BYTES))) == "executable"


@pytest.mark.parametrize(("head", "expected"), [
    (b"#!/bin/sh\nrm -rf ~\n", "text/x-shellscript"),
    (b"#!/usr/bin/env python3\nprint(1)\n", "text/x-shellscript"),
    (b"#!/bin/sh\n" + noise(), "text/x-shellscript"),  # a self-extracting installer is still a script
    (HTML_PAGE, "text/html"),
    (b"<html><body>no doctype</body></html>", "text/html"),
    (b"\xef\xbb\xbf\r\n  <!-- generated -->\n<!-- twice -->\n<HTML LANG=en>", "text/html"),
    (b"\n\n<!doctype HTML>", "text/html"),
    (b"<head><title>x</title></head>", "text/html"),
    (b"  <BODY onload=x()>", "text/html"),
    (b"<script>alert(1)</script>", "text/html"),
    (b"<!-- a comment longer than the sniffed window", "text/html"),
    ("<!DOCTYPE html>\n<p>café</p>".encode("utf-16"), "text/html"),  # with its byte order mark
    (b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html>\n'
     b'<html xmlns="http://www.w3.org/1999/xhtml"><head/></html>', "application/xhtml+xml"),
    (SVG_PLAIN, "image/svg+xml"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
    (b"<!-- Generator: Adobe Illustrator -->\n<svg:svg xmlns:svg='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    (b'<?xml version="1.0"?>\n<rss version="2.0"><channel/></rss>', "application/xml"),
    (b"name,size\nreport.pdf,12\n", "text/plain"),
    (b'{"a": "<html>"}', "text/plain"),
    (b"<div>a fragment</div>", "text/plain"),
    ("héllo wörld ".encode() * 700, "text/plain"),  # a character cut at 8 KiB is still text
    (b"", "text/plain"),
    (noise(), None),
])
def test_sniff_text_markup_and_scripts(head: bytes, expected: str | None) -> None:
    assert sniff(head[:SNIFF_BYTES]) == expected


# -- ActiveMarkup --

def found_in(*chunks: bytes) -> str | None:
    markup = ActiveMarkup()
    for chunk in chunks:
        markup.feed(chunk)
    return markup.found


def test_script_split_across_two_chunks() -> None:
    assert found_in(b"<svg><title>x</title><scr", b"ipt>alert(1)</script></svg>") == "<script"
    assert found_in(b"<html><SCR", b"IPT src=//evil.example/x.js>") == "<script"


def test_script_after_the_sniffed_window() -> None:
    head = b'<svg xmlns="http://www.w3.org/2000/svg">' + b"<!-- padding -->" * (SNIFF_BYTES // 16 + 10)
    assert len(head) > SNIFF_BYTES and found_in(head) is None
    assert found_in(head, b"<rect/>" * 100, b"<script>alert(1)</script></svg>") == "<script"
    whole = head + b"<script>alert(1)</script></svg>"
    assert found_in(*(whole[i:i + 1000] for i in range(0, len(whole), 1000))) == "<script"


@pytest.mark.parametrize(("chunks", "expected"), [
    ((b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',), "onload="),
    ((b"<svg/onload=alert(1)>",), "onload="),
    ((b"<img src=x\nONERROR\n=\nalert(1)>",), "onerror="),
    ((b"<svg><animate onbegin", b" " * 5000, b"=alert(1) /></svg>"), "onbegin="),
    ((b'<a href="JavaScript:alert(1)">x</a>',), "javascript:"),
    ((b'<a href="java&#x73;cr', b'ipt:alert(1)">',), "javascript:"),
    ((b'<a href="java&#x7', b'3;cript&colon;alert(1)">',), "javascript:"),
    ((b'<a href="jav&#0000097;\n\tscript:alert(1)">',), "javascript:"),
    ((b'<a xlink:href="vbscript:msgbox(1)">',), "vbscript:"),
    ((b"<iframe src=//evil.example>",), "<iframe"),
    ((b"<object data=x.swf>",), "<object"),
    ((b"<embed src=x>",), "<embed"),
    ((b"<svg><foreignObject><body/></foreignObject></svg>",), "<foreignObject"),
    (("<svg><script>alert(1)</script></svg>".encode("utf-16-le"),), "<script"),
])
def test_active_markup_is_found(chunks: tuple[bytes, ...], expected: str) -> None:
    assert found_in(*chunks) == expected


@pytest.mark.parametrize("chunks", [
    (SVG_PLAIN,),
    (HTML_PAGE,),
    (b"<p>Write &lt;script&gt; or &#60;script&#62; to show a tag.</p>",),
    (b'<svg><text x="1" font-family="sans">content = one, online</text></svg>',),
])
def test_inactive_markup_is_not_flagged(chunks: tuple[bytes, ...]) -> None:
    assert found_in(*chunks) is None


def test_a_finding_is_kept() -> None:
    markup = ActiveMarkup()
    markup.feed(b"<script>")
    markup.feed(b"plain text from here on")
    assert markup.found == "<script"


# -- check_content: what scan decides --

def test_html_declared_as_an_image_is_rejected() -> None:
    assert ContentPolicy().check_content("image/bmp", sniff(HTML_PAGE)) == \
        "declared image/bmp but the content is text/html"
    assert ContentPolicy().check_content("image/x-portable-anymap", sniff(HTML_PAGE)) == \
        "declared image/x-portable-anymap but the content is text/html"
    assert ContentPolicy().check_content("image/bmp", sniff(bmp())) is None


def test_png_declared_as_pdf_is_rejected() -> None:
    assert ContentPolicy().check_content("application/pdf", sniff(png())) == \
        "declared application/pdf but the content is image/png"


@pytest.mark.parametrize(("declared", "detected"), [
    ("application/octet-stream", None), ("application/x-custom", None), ("image/x-raw-camera", None),
    ("image/png", "image/png"), ("image/x-icon", "image/vnd.microsoft.icon"), ("image/heif", "image/avif"),
    ("audio/webm", "video/webm"), ("audio/mp4", "video/mp4"), ("audio/x-aac", "video/mp4"),
    ("video/ogg", "audio/ogg"), ("text/csv", "text/plain"), ("application/json", "text/plain"),
    ("application/atom+xml", "application/xml"), ("text/html", "text/plain"), ("application/xhtml+xml", "text/html"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "application/zip"),
    ("application/octet-stream", "application/pdf"), ("text/plain; charset=utf-8", "text/plain"),
])
def test_content_that_fits(declared: str, detected: str | None) -> None:
    assert ContentPolicy().check_content(declared, detected) is None


def test_random_bytes_as_octet_stream_are_allowed() -> None:
    assert sniff(noise()) is None
    assert ContentPolicy().check_content("application/octet-stream", sniff(noise())) is None


@pytest.mark.parametrize(("declared", "detected", "reason"), [
    ("image/png", "text/plain", "declared image/png but the content is text/plain"),
    ("image/x-custom", "application/zip", "declared image/x-custom but the content is application/zip"),
    ("image/x-custom", "image/svg+xml", "declared image/x-custom but the content is image/svg+xml"),
    ("audio/x-custom", "image/png", "declared audio/x-custom but the content is image/png"),
    ("image/svg+xml", "text/plain", "declared image/svg+xml but the content is text/plain"),
    ("text/plain", "text/html", "declared text/plain but the content is text/html"),
    ("text/plain", None, "declared text/plain but the content is unrecognised binary data"),
    ("application/xml", "image/svg+xml", "declared application/xml but the content is image/svg+xml"),
])
def test_content_that_does_not_fit(declared: str, detected: str | None, reason: str) -> None:
    assert ContentPolicy().check_content(declared, detected) == reason


@pytest.mark.parametrize(("head", "words"), [
    (ELF, "the content (application/x-executable) is executable content"),
    (pe(), "the content (application/x-msdownload) is executable content"),
    (mach_o(0xFEEDFACF, "<"), "the content (application/x-mach-binary) is executable content"),
    (fat(b"\xca\xfe\xba\xbe", 2), "the content (application/x-mach-binary) is executable content"),
    (java_class(61), "the content (application/java-vm) is Java code"),
    (b"#!/bin/bash\necho hi\n", "the content (text/x-shellscript) is a script"),
])
def test_programs_are_refused_under_any_declared_type(head: bytes, words: str) -> None:
    for declared in ("application/octet-stream", "application/x-custom", "text/plain", "image/png"):
        assert ContentPolicy().check_content(declared, sniff(head)) == f"{words}, which is not accepted here"


def test_a_jar_is_java_and_otherwise_a_zip() -> None:
    assert looks_like_jar(["META-INF/", "META-INF/MANIFEST.MF", "Hello.class"])
    assert looks_like_jar(["com/example/Main.class"])
    assert not looks_like_jar(["[Content_Types].xml", "word/document.xml", "docProps/app.xml"])
    assert ContentPolicy().check_content("application/zip", JAR) == \
        "the content (application/java-archive) is Java code, which is not accepted here"
    assert policy(DROPGATE_DENIED_CONTENT="executable,script").check_content("application/zip", JAR) is None


def test_svg_with_script_is_refused_and_without_is_clean() -> None:
    found = found_in(SVG_SCRIPT)
    assert ContentPolicy().check_content("image/svg+xml", sniff(SVG_SCRIPT), active_markup=found) == \
        "the content is image/svg+xml with active content (<script), which is not accepted here"
    assert ContentPolicy().check_content("image/svg+xml", sniff(SVG_PLAIN), active_markup=found_in(SVG_PLAIN)) is None
    # Declared markup whose head sniffs as plain text (a fragment) is held to the same rule.
    assert ContentPolicy().check_content("text/html", "text/plain", active_markup="onclick=") == \
        "the content is text/html with active content (onclick=), which is not accepted here"
    # Plain text that merely mentions a script tag is served as text/plain, so it is fine.
    assert ContentPolicy().check_content("text/plain", "text/plain", active_markup="<script") is None


# -- check_declared: what presign refuses at create --

@pytest.mark.parametrize(("content_type", "filename", "reason"), [
    ("application/x-msdownload", "tool.bin",
     "content type application/x-msdownload is executable content, which is not accepted here"),
    ("application/octet-stream", "setup.exe",
     "file name 'setup.exe' has the extension of executable content, which is not accepted here"),
    ("application/octet-stream", "C:\\Users\\me\\SETUP.EXE. ",
     "file name 'SETUP.EXE' has the extension of executable content, which is not accepted here"),
    ("application/octet-stream", "invoice\u202egpj.exe",  # right-to-left override: shown as "invoiceexe.jpg"
     "file name 'invoicegpj.exe' has the extension of executable content, which is not accepted here"),
    ("application/x-sh", "install", "content type application/x-sh is a script, which is not accepted here"),
    ("text/plain", "run.sh", "file name 'run.sh' has the extension of a script, which is not accepted here"),
    ("text/plain", "deploy.ps1", "file name 'deploy.ps1' has the extension of a script, which is not accepted here"),
    ("application/java-archive", "app.zip",
     "content type application/java-archive is Java code, which is not accepted here"),
    ("application/zip", "app.jar", "file name 'app.jar' has the extension of Java code, which is not accepted here"),
    ("textplain", "a.txt", "content type 'textplain' is not a media type such as application/pdf"),
    ("text/plain\r\nX-Evil: 1", "a.txt", "content type contains control characters"),
    ("text/" + "x" * 260, "a.txt", "content type is longer than 255 characters"),
])
def test_check_declared_refuses(content_type: str, filename: str, reason: str) -> None:
    assert ContentPolicy().check_declared(content_type, filename) == reason


@pytest.mark.parametrize(("content_type", "filename"), [
    ("application/octet-stream", "firmware.bin"),  # .bin is generic data
    ("text/javascript", "app.js"),  # source code; served as text/plain, no browser runs it from here
    ("text/html", "index.html"), ("image/svg+xml", "logo.svg"),  # markup: the bytes decide, at scan
    ("application/pdf", "report.pdf"), ("image/png", "cat.png"), ("text/csv", "numbers.csv"),
    ("application/octet-stream", "setup.exe.txt"), ("application/octet-stream", "libfoo.so.txt"),
])
def test_check_declared_accepts(content_type: str, filename: str) -> None:
    assert ContentPolicy().check_declared(content_type, filename) is None


def test_shared_library_versions_count_as_executable() -> None:
    assert "executable content" in ContentPolicy().check_declared("application/octet-stream", "libssl.so.3")


# -- narrowing and widening through settings --

def test_allow_list_narrows_both_checks() -> None:
    narrow = policy(DROPGATE_ALLOWED_CONTENT_TYPES="image/*,application/pdf")
    assert narrow.allowed == ("image/*", "application/pdf")
    assert narrow.check_declared("text/csv", "numbers.csv") == \
        "content type text/csv is not allowed here (allowed: image/*, application/pdf)"
    assert "not allowed here" in narrow.check_declared("application/octet-stream", "blob")
    assert narrow.check_declared("image/png", "cat.png") is None
    assert narrow.check_declared("application/pdf", "report.pdf") is None
    assert narrow.check_content("image/png", "image/png") is None
    assert narrow.check_content("image/x-raw-camera", None) is None  # unrecognised: the declared type stands
    # Denied kinds stay denied whatever the allow-list says.
    assert "executable" in policy(DROPGATE_ALLOWED_CONTENT_TYPES="application/*").check_declared(
        "application/x-msdownload", "a")
    # A vague declared type that was allowed does not let other content through.
    vague = policy(DROPGATE_ALLOWED_CONTENT_TYPES="application/octet-stream,image/*")
    assert vague.check_content("application/octet-stream", "image/png") is None
    assert vague.check_content("application/octet-stream", None) is None
    assert vague.check_content("application/octet-stream", "application/pdf") == \
        "the content is application/pdf, which is not allowed here (allowed: application/octet-stream, image/*)"


def test_denied_content_none_turns_every_kind_off() -> None:
    open_policy = policy(DROPGATE_DENIED_CONTENT="none")
    assert open_policy.denied == frozenset()
    assert open_policy.check_declared("application/x-msdownload", "setup.exe") is None
    assert open_policy.check_declared("application/octet-stream", "run.sh") is None
    for head in (ELF, pe(), mach_o(0xFEEDFACE, ">"), java_class(52), b"#!/bin/sh\n"):
        assert open_policy.check_content("application/octet-stream", sniff(head)) is None
    assert open_policy.check_content("image/svg+xml", "image/svg+xml", active_markup="<script") is None
    # The type must still fit what was declared.
    assert open_policy.check_content("application/pdf", sniff(ELF)) == \
        "declared application/pdf but the content is application/x-executable"


def test_parts_of_the_deny_list_can_be_turned_off() -> None:
    scripts_ok = policy(DROPGATE_DENIED_CONTENT="executable,java,active-markup")
    assert scripts_ok.check_declared("text/plain", "run.sh") is None
    assert scripts_ok.check_content("text/plain", "text/x-shellscript") is None
    assert "executable" in scripts_ok.check_declared("application/octet-stream", "setup.exe")


def test_defaults() -> None:
    default = policy()
    assert default == ContentPolicy()
    assert default.allowed == ("*",)
    assert default.denied == {"executable", "script", "active-markup", "java"}
    assert default.check_declared("application/octet-stream", "blob") is None


def test_unknown_kinds_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown kinds"):
        ContentPolicy(denied=frozenset({"macros"}))


# -- what downloads are served as --

@pytest.mark.parametrize(("detected", "served"), [
    (None, "application/octet-stream"), ("image/png", "image/png"), ("application/pdf", "application/pdf"),
    ("text/plain", "text/plain"), ("text/html", "text/plain"), ("application/xhtml+xml", "text/plain"),
    ("image/svg+xml", "text/plain"),
])
def test_download_type(detected: str | None, served: str) -> None:
    assert download_type(detected) == served


def test_kind_of() -> None:
    assert [kind_of(t) for t in ("application/x-executable", "text/x-shellscript", JAR, "text/html", "image/png",
                                 None)] == ["executable", "script", "java", "markup", None, None]
