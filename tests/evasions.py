"""Files built to make a scanner stop looking, and the executable/markup heads a type check must catch.

Each is built here, at test time, small on disk: the 1.2 GB entries are zeros, which deflate to
about 1.2 MB. docs/scan.md lists the cases; SECURITY.md's claim -> test table points here.
"""

from __future__ import annotations

import functools
import gzip
import io
import subprocess
import tempfile
import zipfile
from pathlib import Path

from tests.conftest import EICAR

BIG_ENTRY_SIZE = 1_200_000_000  # past clamd's MaxFileSize (1100 MiB), and past 1 GiB


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def nested_zip(levels: int, innermost: bytes = EICAR) -> bytes:
    """EICAR inside `levels` zips, each inside the next (levels=1: one zip holding eicar.txt)."""
    data = zip_of([("eicar.txt", innermost)])
    for level in range(levels - 1):
        data = zip_of([(f"level-{level}.zip", data)])
    return data


def many_entries_zip(count: int) -> bytes:
    """`count` tiny entries with EICAR as the last one."""
    return zip_of([(f"f{i:05}.txt", b"x") for i in range(count - 1)] + [("last.txt", EICAR)])


def encrypted_zip(password: str = "secret") -> bytes:
    """EICAR in a password-protected zip, made by Info-ZIP's `zip -P` (Debian's zip package)."""
    with tempfile.TemporaryDirectory() as work:
        Path(work, "inside.txt").write_bytes(EICAR)
        subprocess.run(["zip", "-q", "-P", password, "locked.zip", "inside.txt"], cwd=work, check=True)
        return Path(work, "locked.zip").read_bytes()


def _zeros_then_eicar(sink, size: int) -> None:  # noqa: ANN001 - a writable binary stream
    chunk = bytes(16 * 1024 * 1024)
    written = 0
    while written + len(chunk) <= size:
        sink.write(chunk)
        written += len(chunk)
    sink.write(bytes(size - written))
    sink.write(EICAR)


@functools.cache
def big_entry_zip(size: int = BIG_ENTRY_SIZE) -> bytes:
    """One entry only: `size` zeros followed by EICAR. clamd reads the first MaxFileSize bytes and answers OK."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("zeros-then-eicar.bin", "w", force_zip64=True) as entry:
        _zeros_then_eicar(entry, size)
    return buffer.getvalue()


@functools.cache
def big_gzip(size: int = BIG_ENTRY_SIZE) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6) as stream:
        _zeros_then_eicar(stream, size)
    return buffer.getvalue()


# Executable heads (the first bytes are what sniffing reads); each is denied by the default policy.
MACH_O_HEADS = {
    "mach-o 32-bit big-endian": b"\xfe\xed\xfa\xce" + bytes(60),
    "mach-o 32-bit little-endian": b"\xce\xfa\xed\xfe" + bytes(60),
    "mach-o 64-bit big-endian": b"\xfe\xed\xfa\xcf" + bytes(60),
    "mach-o 64-bit little-endian": b"\xcf\xfa\xed\xfe" + bytes(60),
    # Universal ("fat"): magic, then the number of architectures (2), big-endian.
    "mach-o universal": b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + bytes(56),
    "mach-o universal reversed": b"\xbe\xba\xfe\xca\x02\x00\x00\x00" + bytes(56),
    "mach-o universal 64-bit": b"\xca\xfe\xba\xbf\x00\x00\x00\x02" + bytes(56),
}
HTML_PAGE = (b"<!DOCTYPE html><html><head><title>hi</title></head><body>"
             b"<script>fetch('/steal?c=' + document.cookie)</script></body></html>\n")
