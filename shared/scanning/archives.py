"""What clamd cannot see inside an archive: dropgate's own look at the limits it stops at.

clamd 1.4 answers OK for content past some of its limits, AlertExceedsMax or not: a ZIP entry larger
than MaxFileSize is skipped whole, so EICAR at the end of a 1.2 GB entry is never read. `inspect`
reads the archive's directory (and, where it must, the real bytes) and names the first limit the
object passes, so that the caller treats it as not fully scanned.

How clamd counts: ClamAV 1.4 libclamav/others.c cli_recursion_stack_push (a stack of MaxRecursion
layers, layer 0 the scanned object), checked against Debian's clamscan 1.4.6 by tests/test_archives.py:
- layers: the object is layer 1; a file taken out of a container (a ZIP or tar entry, the stream a
  gzip/bzip2/xz file decompresses to) is one layer deeper, and none past max_recursion is scanned.
  So with MaxRecursion 17 a ZIP nested 16 deep with EICAR at the bottom is scanned, 17 deep is not.
- files: the object, every entry and every decompressed stream count, on all layers (folders and
  files of 5 bytes or fewer do not); the scan stops at MaxFiles: with 10000 a ZIP may hold 9999 files.
- sizes: a file larger than MaxFileSize is skipped (equal is scanned); MaxScanSize caps the sum of
  every layer's file sizes, the object's own included.
Declared sizes can lie (clamd skips an entry that declares 1000 bytes and inflates to 1.2 GB just
the same), so what is decompressed here is counted in real bytes, never past max_file_size + 1, in
256 KiB reads (a nested ZIP, which needs random access, is spooled to disk past 4 MiB).

Formats, by magic number: ZIP (PKWARE APPNOTE 6.3.10), gzip (RFC 1952), bzip2, xz (.xz file format
2.1.1.1 Header Magic Bytes) and POSIX ustar. 7z, RAR and pre-POSIX tar are not looked into.
"""

from __future__ import annotations

import bz2
import copy
import io
import lzma
import struct
import tarfile
import tempfile
import typing
import zipfile
import zlib
from dataclasses import dataclass

_SNIFF_BYTES = 512  # enough for every magic below, ustar's at offset 257 included
_CHUNK = 256 << 10  # the most unpacked at a time
_INPUT = 64 << 10  # compressed bytes read at a time (zlib copies what is left after each gzip member)
_SPOOL_IN_MEMORY = 4 << 20
# zipfile holds the whole central directory and one ZipInfo per entry in memory: refuse larger ones.
_MAX_DIRECTORY_BYTES = 64 << 20
# The most deflate can expand: 1032:1 (zlib technical details, https://zlib.net/zlib_tech.html).
# A stored entry is its compressed bytes (APPNOTE 4.4.5 method 0); bzip2 and LZMA have no useful bound.
_MAX_RATIO = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_ENCRYPTED = 0x1  # APPNOTE 4.4.4 general purpose bit flag, bit 0: the entry is encrypted
_SMALLEST_ARCHIVE = 22  # an empty ZIP (APPNOTE 4.3.16 end record); smaller entries hold no archive
_TINY = 5  # clamd skips files of 5 bytes or fewer without counting them (measured with clamscan 1.4.6)


@dataclass(frozen=True)
class ArchiveLimits:
    max_recursion: int     # clamd MaxRecursion: files on a deeper layer (the object is layer 1) are not scanned
    max_files: int         # clamd MaxFiles: the object, its entries and decompressed streams, across all layers
    max_file_size: int     # clamd MaxFileSize in bytes: a larger entry (or decompressed stream) is skipped
    max_scan_size: int     # clamd MaxScanSize in bytes: the object's size plus every entry's and stream's, unpacked


@dataclass(frozen=True)
class NotFullyScannable:
    code: str      # "max_recursion", "max_files", "max_file_size", "max_scan_size", "encrypted" or "malformed"
    reason: str    # a sentence for the file's owner


class _Stop(Exception):
    """Unwinds every nesting level at the first limit passed."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.result = NotFullyScannable(code, reason)


# What the stdlib raises for bytes it cannot parse (tarfile and zipfile may raise OSError too).
_UNREADABLE = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError,
               ValueError, struct.error, NotImplementedError)

_NAMES = {"zip": "a ZIP archive", "gzip": "gzip data", "bzip2": "bzip2 data", "xz": "xz data", "tar": "a tar archive"}


def inspect(reader: typing.BinaryIO, limits: ArchiveLimits) -> NotFullyScannable | None:
    """reader: a seekable binary file object positioned anywhere (the whole object). Returns None when
    the archive (or non-archive) stays within the limits, else the first limit it passes."""
    reader.seek(0)
    kind = _sniff(reader.read(_SNIFF_BYTES))
    if kind is None:
        return None
    budget = _Budget(limits)
    try:
        budget.add(reader.seek(0, io.SEEK_END))  # clamd's scan total counts the object itself too
        reader.seek(0)
        _container(reader, kind, 1, budget, "")
    except _Stop as stop:
        return stop.result
    except _UNREADABLE as exc:
        return NotFullyScannable("malformed", f"the file looks like {_NAMES[kind]} but cannot be read ({exc})")
    return None


def _sniff(head: bytes) -> str | None:
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # APPNOTE 4.3.7 local header, 4.3.16 end record (empty)
        return "zip"
    if head[:3] == b"\x1f\x8b\x08":  # RFC 1952 2.3.1: ID1 ID2, CM 8 = deflate
        return "gzip"
    # bzip2: "BZh", block size '1'..'9', then a block's magic (pi) or the end-of-stream magic (sqrt(pi)).
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[257:262] == b"ustar":  # POSIX.1-1988 ustar header magic (GNU tar's "ustar  " too)
        return "tar"
    return None


class _Budget:
    """The counts clamd keeps across all layers of one scan."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.files = 1  # the scanned object itself
        self.scanned = 0

    def enter(self, layer: int) -> None:
        """One more file, found on `layer`."""
        if layer > self.limits.max_recursion:
            raise _Stop("max_recursion", f"archive nested deeper than {self.limits.max_recursion} levels, "
                                         "the deepest the scanner looks (the upload itself is level 1)")
        self.files += 1
        if self.files > self.limits.max_files:
            raise _Stop("max_files", f"archive holds more than {self.limits.max_files - 1} files; the scanner "
                                     f"reads {self.limits.max_files} files, the archive itself included")

    def listed(self, entries: int) -> None:
        """Folders and tiny files do not count, yet each costs time (and zipfile memory): allow as many."""
        if entries > 2 * self.limits.max_files:
            raise _Stop("max_files", f"archive lists more than {2 * self.limits.max_files} entries; the scanner "
                                     f"reads {self.limits.max_files} files")

    def declared(self, name: str, size: int) -> None:
        if size > self.limits.max_file_size:
            raise _Stop("max_file_size", f"archive entry '{name}' unpacks to {size} bytes, more than the "
                                         f"{self.limits.max_file_size} bytes the scanner reads")
        self.add(size)

    def add(self, size: int) -> None:
        self.scanned += size
        if self.scanned > self.limits.max_scan_size:
            raise _Stop("max_scan_size", f"archive unpacks to more than the {self.limits.max_scan_size} bytes "
                                         "the scanner reads in all")


class _Counted(io.RawIOBase):
    """The real bytes of one file inside an archive, counted as they are read: past max_file_size
    it stops the inspection, and it never asks its source for more than max_file_size + 1 bytes.
    `declared` bytes were already added to the scan total from the archive's directory."""

    def __init__(self, source: typing.BinaryIO, budget: _Budget, what: str, declared: int = 0) -> None:
        super().__init__()
        self._source, self._budget, self._what, self._declared = source, budget, what, declared
        self._pending = b""
        self.count = 0

    def readable(self) -> bool:
        return True

    def head(self) -> bytes:
        """The first _SNIFF_BYTES bytes (fewer for a smaller file); reading goes on from the start."""
        while len(self._pending) < _SNIFF_BYTES and (chunk := self._pull(_SNIFF_BYTES - len(self._pending))):
            self._pending += chunk
        return self._pending[:_SNIFF_BYTES]

    def readinto(self, buffer) -> int:
        if not self._pending:
            self._pending = self._pull(len(buffer))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def drain(self) -> None:
        """Read to the end, for the count."""
        self._pending = b""
        while self._pull(_CHUNK):
            pass

    def _pull(self, wanted: int) -> bytes:
        limit = self._budget.limits.max_file_size
        data = self._source.read(max(1, min(wanted, _CHUNK, limit + 1 - self.count)))
        undeclared_before = max(0, self.count - self._declared)
        self.count += len(data)
        if self.count > limit:
            raise _Stop("max_file_size", f"{self._what} unpacks to more than the {limit} bytes the scanner reads")
        self._budget.add(max(0, self.count - self._declared) - undeclared_before)
        return data


def _container(f: typing.BinaryIO, kind: str, layer: int, budget: _Budget, where: str) -> None:
    """Inspect the container `f` (read from its start) lying on `layer`; `where` prefixes entry names."""
    if kind == "zip":
        _zip(f, layer, budget, where)
    elif kind == "tar":
        _tar(f, layer, budget, where)
    else:
        _stream(f, kind, layer, budget, where)


def _nested(content: _Counted, kind: str, layer: int, budget: _Budget, where: str) -> None:
    """A container found inside another: ZIP needs random access (its directory is at the end)."""
    if kind != "zip":
        _container(content, kind, layer, budget, where)
        return
    with tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY) as spool:
        while chunk := content.read(_CHUNK):
            spool.write(chunk)
        _zip(spool, layer, budget, where)


def _zip(f: typing.BinaryIO, layer: int, budget: _Budget, where: str) -> None:
    # The end record (APPNOTE 4.3.16, or its zip64 form 4.3.14) says how big the directory is before
    # zipfile loads it: a directory of millions of entries would otherwise be held in memory whole.
    # (_EndRecData is zipfile's own reader of it, zip64 included, unchanged since Python 2.6.)
    end = zipfile._EndRecData(f)
    if end is None:
        raise zipfile.BadZipFile("no end of central directory record")
    budget.listed(end[zipfile._ECD_ENTRIES_TOTAL])
    if end[zipfile._ECD_SIZE] > _MAX_DIRECTORY_BYTES:
        raise zipfile.BadZipFile(f"central directory of {end[zipfile._ECD_SIZE]} bytes")
    with zipfile.ZipFile(f) as archive:
        files = [info for info in archive.infolist() if not info.is_dir()]
        # Everything the directory tells, first: no entry is read for an archive that fails on it.
        for info in files:
            _zip_listed(info, layer, budget, where)
        # Then the contents, in file order so that a stream is never rewound.
        for info in sorted(files, key=lambda info: info.header_offset):
            _zip_content(archive, info, layer, budget, where)


def _zip_listed(info: zipfile.ZipInfo, layer: int, budget: _Budget, where: str) -> None:
    if _listed_size(info) > _TINY:  # a compressed entry that says it is tiny is counted once read
        budget.enter(layer + 1)
    name = where + info.filename
    if info.flag_bits & _ENCRYPTED:
        raise _Stop("encrypted", f"archive entry '{name}' is encrypted")
    if info.compress_type not in _ZIP_METHODS:
        raise _Stop("malformed", f"archive entry '{name}' uses compression method {info.compress_type}, "
                                 "which cannot be checked")
    budget.declared(name, _listed_size(info))


def _listed_size(info: zipfile.ZipInfo) -> int:
    # zipfile reads a stored entry's compressed size in bytes, whatever its uncompressed size says.
    stored = info.compress_type == zipfile.ZIP_STORED
    return max(info.file_size, info.compress_size) if stored else info.file_size


def _zip_content(archive: zipfile.ZipFile, info: zipfile.ZipInfo, layer: int, budget: _Budget, where: str) -> None:
    """Sniff the entry for a nested archive; unpack it whole only where the declared size may lie."""
    limit = budget.limits.max_file_size
    may_lie = info.compress_size * _MAX_RATIO.get(info.compress_type, limit + 1) > limit
    may_nest = info.compress_type != zipfile.ZIP_STORED or _listed_size(info) >= _SMALLEST_ARCHIVE
    if not (may_lie or may_nest) or info.compress_size == 0:
        return
    name = where + info.filename
    # zipfile stops an entry at its declared size; opening it as if it were unbounded yields the real
    # bytes (and still checks the CRC-32 of an entry that ends within the limit).
    unbounded = copy.copy(info)
    unbounded.file_size = 1 << 62
    with archive.open(unbounded) as raw:
        entry = _Counted(raw, budget, f"archive entry '{name}'", declared=info.file_size)
        head = entry.head()
        if _listed_size(info) <= _TINY < len(head):
            budget.enter(layer + 1)
        if (kind := _sniff(head)) is not None:
            _nested(entry, kind, layer + 1, budget, name + "/")
        if may_lie:
            entry.drain()


class _TarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header into memory whole: refuse one past 1 MiB."""

    _WHOLE = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
              tarfile.GNUTYPE_LONGLINK)

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in self._WHOLE and self.size > 1 << 20:
            raise tarfile.HeaderError(f"an extended header of {self.size} bytes")
        return super()._proc_member(archive)


def _tar(f: typing.BinaryIO, layer: int, budget: _Budget, where: str) -> None:
    # Streaming mode ("r|"): members come in order, nothing is rewound, nothing is held.
    listed = 0
    with tarfile.open(fileobj=f, mode="r|", tarinfo=_TarInfo) as archive:
        for member in archive:
            if not member.isreg():
                continue
            listed += 1
            budget.listed(listed)
            if member.size > _TINY:
                budget.enter(layer + 1)
            name = where + member.name
            budget.declared(name, member.size)  # tar stores its members as they are: the size is real
            if member.size < _SMALLEST_ARCHIVE:
                continue
            entry = _Counted(archive.extractfile(member), budget, f"archive entry '{name}'", declared=member.size)
            kind = _sniff(entry.head())
            if kind is not None:
                _nested(entry, kind, layer + 1, budget, name + "/")


def _stream(f: typing.BinaryIO, kind: str, layer: int, budget: _Budget, where: str) -> None:
    """gzip, bzip2 or xz: clamd scans the decompressed stream as one file on the next layer."""
    what = f"compressed stream in '{where.rstrip('/')}'" if where else "compressed stream"
    content = _Counted(_Decompressed(f, kind), budget, what)
    head = content.head()
    if len(head) > _TINY:
        budget.enter(layer + 1)
    if (inner := _sniff(head)) is not None:
        _nested(content, inner, layer + 1, budget, where)
    content.drain()  # a tar ends before its stream may: the rest is still part of the one file


# Magic of a further member, and a decompressor for one. Members follow one another: gzip (RFC 1952
# 2.2), xz streams (.xz file format 2.2, zero Stream Padding between them), bzip2 streams as bzip2 reads them.
_STREAMS = {
    "gzip": (b"\x1f\x8b", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),  # zlib parses the header in C
    "bzip2": (b"BZh", bz2.BZ2Decompressor),
    "xz": (b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
}
_MAX_MEMBERS = 1_000_000  # bgzip writes one member per 64 KiB; empty members would only cost time


class _Decompressed(io.RawIOBase):
    """All members of a gzip/bzip2/xz file, decompressed in steps no larger than what is asked for
    (max_length), so a bomb never fills memory; data after the last member is left to clamd's raw scan."""

    def __init__(self, source: typing.BinaryIO, kind: str) -> None:
        super().__init__()
        self._source, (self._magic, self._new) = source, _STREAMS[kind]
        self._decompressor, self._input, self._members = self._new(), b"", 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            decompressor = self._decompressor
            if decompressor.eof:
                self._input = decompressor.unused_data + self._input
                if not self._next_member():
                    return 0
                continue
            out = decompressor.decompress(self._input, len(buffer))
            # zlib hands back the input it did not reach; bz2 and lzma keep it.
            self._input = getattr(decompressor, "unconsumed_tail", b"")
            if out:
                buffer[:len(out)] = out
                return len(out)
            if not decompressor.eof and getattr(decompressor, "needs_input", True):
                if not (more := self._source.read(_INPUT)):
                    raise EOFError("the compressed stream ends before its end marker")
                self._input += more

    def _next_member(self) -> bool:
        while True:  # zero bytes may pad between members (xz Stream Padding; gzip(1) skips them too)
            if self._input[:1] == b"\0":
                self._input = self._input.lstrip(b"\0")
            if len(self._input) >= len(self._magic) or not (more := self._source.read(_INPUT)):
                break
            self._input += more
        if not self._input.startswith(self._magic):
            return False
        self._members += 1
        if self._members > _MAX_MEMBERS:
            raise ValueError(f"more than {_MAX_MEMBERS} concatenated members")
        self._decompressor = self._new()
        return True


class S3RangeReader(io.RawIOBase):
    """A seekable, read-only file object over one S3 object using ranged GETs (boto3 client),
    so zipfile can read the central directory at the end without downloading the whole object.

    One block is cached. A block is fetched from the read position on, except near the end of the
    object, where the last block_size bytes are fetched: ZIP's end record, zip64 locator and (for
    most archives) the whole central directory then come in one GET.
    """

    def __init__(self, s3, bucket: str, key: str, size: int, *,  # s3: a boto3 S3 client
                 version_id: str | None = None, block_size: int = 1 << 20) -> None:
        super().__init__()
        self._s3, self._bucket, self._key, self._size = s3, bucket, key, size
        self._version_id, self._block_size = version_id, block_size
        self._pos = 0
        self._block_start, self._block = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        # Fills the whole buffer (up to the end): zipfile takes a short read for a truncated file.
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view) and self._pos < self._size:
            offset = self._pos - self._block_start
            if not 0 <= offset < len(self._block):
                self._fetch(len(view) - done)
                offset = self._pos - self._block_start
            n = min(len(view) - done, len(self._block) - offset)
            view[done:done + n] = self._block[offset:offset + n]
            done += n
            self._pos += n
        return done

    def _fetch(self, wanted: int) -> None:
        length = min(max(wanted, self._block_size), 64 << 20)
        start = min(self._pos, max(0, self._size - length))
        end = min(start + length, self._size)  # exclusive; HTTP ranges are inclusive (RFC 9110 14.1.2)
        arguments = {"Bucket": self._bucket, "Key": self._key, "Range": f"bytes={start}-{end - 1}"}
        if self._version_id is not None:
            arguments["VersionId"] = self._version_id
        body = self._s3.get_object(**arguments)["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        if len(data) != end - start:  # not an archive's fault: the object is not the size we were told
            raise RuntimeError(f"s3://{self._bucket}/{self._key}: got {len(data)} bytes for range {start}-{end - 1}")
        self._block_start, self._block = start, data
