"""shared.scanning.archives: the archive limits clamd stops at, on archives built here.

The 1.2 GB entries are real deflate streams of zeros (about 1.2 MB), made fast by repeating one
full-flushed deflate block; the boundaries are checked against Debian's clamscan itself.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import shutil
import struct
import subprocess
import tarfile
import time
import tracemalloc
import uuid
import zipfile
import zlib
from pathlib import Path

import pytest

from shared.scanning.archives import (
    ArchiveLimits,
    NotFullyScannable,
    S3RangeReader,
    inspect,
)
from tests.conftest import EICAR

MIB = 1 << 20
LIMITS = ArchiveLimits(max_recursion=17, max_files=10000, max_file_size=1_153_433_600, max_scan_size=2000 * MIB)
BIG = 1_200_000_000


def check(data: bytes, limits: ArchiveLimits = LIMITS) -> NotFullyScannable | None:
    return inspect(io.BytesIO(data), limits)


def check_in_memory(data: bytes, limits: ArchiveLimits = LIMITS) -> tuple[NotFullyScannable | None, int]:
    """The result, and the most memory the inspection held at once."""
    tracemalloc.start()
    try:
        return check(data, limits), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def small(**changes: int) -> ArchiveLimits:
    values = {"max_recursion": 17, "max_files": 10000, "max_file_size": 100 * MIB, "max_scan_size": 400 * MIB}
    return ArchiveLimits(**(values | changes))


# --- building archives -------------------------------------------------------------------------

def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def nested_zip(depth: int) -> bytes:
    """EICAR at the bottom of `depth` ZIPs, each deflated (so no layer shows EICAR in the clear)."""
    data, name = EICAR, "eicar.txt"
    for level in range(depth, 0, -1):
        data, name = zipped({name: data}), f"level{level}.zip"
    return data


def tarred(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def deflated_zeros(count: int, tail: bytes = b"") -> tuple[bytes, int]:
    """A raw deflate stream of `count` zero bytes then `tail`, and the CRC-32 of what it unpacks to."""
    first = zlib.compressobj(6, zlib.DEFLATED, -15)
    block = first.compress(bytes(MIB)) + first.flush(zlib.Z_FULL_FLUSH)  # no back-references: repeatable
    blocks, rest = divmod(count, MIB)
    last = zlib.compressobj(6, zlib.DEFLATED, -15)
    crc, zeros = 0, bytes(MIB)
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    return block * blocks + last.compress(bytes(rest) + tail) + last.flush(), zlib.crc32(bytes(rest) + tail, crc)


def raw_zip(entries: list[tuple[str, bytes, int, int, int]], *, flags: int = 0) -> bytes:
    """A ZIP (APPNOTE 4.3) from (name, compressed data, method, CRC-32, declared size): the sizes and
    the general purpose flags are whatever the test says, in the local headers and the directory alike."""
    out, directory = io.BytesIO(), []
    for name, data, method, crc, size in entries:
        offset, encoded = out.tell(), name.encode()
        fields = (flags, method, 0, 0x21, crc, len(data), size, len(encoded))
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, *fields, 0) + encoded + data)
        directory.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, *fields, 0, 0, 0, 0, 0, offset)
                         + encoded)
    start, listing = out.tell(), b"".join(directory)
    out.write(listing + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(listing),
                                    start, 0))
    return out.getvalue()


def gzip_of(deflated: bytes, crc: int, size: int) -> bytes:
    """RFC 1952 member around a raw deflate stream."""
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated + struct.pack("<II", crc, size & 0xFFFFFFFF)


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


@pytest.fixture(scope="module")
def zeros() -> dict[str, tuple[bytes, int]]:
    """1.2 GB of zeros, alone and followed by EICAR, as deflate streams (about 1.2 MB each)."""
    return {"plain": deflated_zeros(BIG), "eicar": deflated_zeros(BIG, EICAR)}


@pytest.fixture(scope="module")
def big_zip(zeros) -> bytes:
    data, crc = zeros["plain"]
    return raw_zip([("big.bin", data, zipfile.ZIP_DEFLATED, crc, BIG),
                    ("eicar.txt", deflate(EICAR), zipfile.ZIP_DEFLATED, zlib.crc32(EICAR), len(EICAR))])


# --- the limits --------------------------------------------------------------------------------

def test_zip_nested_17_deep_is_past_max_recursion_17_and_16_deep_is_not():
    # clamd's layers: the upload is 1, the file EICAR sits in at the bottom of 17 ZIPs is 18.
    assert check(nested_zip(16)) is None
    for depth in (17, 18):
        result = check(nested_zip(depth))
        assert result is not None and result.code == "max_recursion"
        assert "17 levels" in result.reason


def test_a_decompressed_stream_is_a_layer_of_its_own():
    # gzip (1) -> its stream, a tar (2) -> member e.gz (3) -> its stream, EICAR (4)
    archive = gzip.compress(tarred({"e.gz": gzip.compress(EICAR)}))
    assert check(archive, small(max_recursion=4)) is None
    assert check(archive, small(max_recursion=3)).code == "max_recursion"


def test_max_files_counts_the_archive_itself():
    entries = {f"file{index}.txt": f"file number {index}".encode() for index in range(9999)}
    started = time.monotonic()
    assert check(zipped(entries)) is None
    assert time.monotonic() - started < 10, "the directory is read, 9999 small entries only sniffed"
    for extra in ({"eicar.txt": EICAR}, {"eicar.txt": EICAR, "one-more.txt": b"x"}):  # 10,000 and 10,001
        result = check(zipped(entries | extra))
        assert result is not None and result.code == "max_files"
        assert "10000" in result.reason


def test_files_in_nested_archives_count_and_folders_do_not():
    inner = zipped({f"inner{index}": b"inner file %d" % index for index in range(5)})
    # The object, 2 files and 5 inner files: 8. Neither the folder nor a file of 5 bytes or fewer counts.
    outer = zipped({"folder/": b"", "tiny": b"12345", "a": b"a file", "inner.zip": inner})
    assert check(outer, small(max_files=8)) is None
    assert check(outer, small(max_files=7)).code == "max_files"


def test_an_encrypted_entry_is_reported():
    data = b"secret text, stored as it is"
    archive = raw_zip([("secret.txt", data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))], flags=0x1)
    assert zipfile.ZipFile(io.BytesIO(archive)).infolist()[0].flag_bits & 0x1
    assert check(archive) == NotFullyScannable("encrypted", "archive entry 'secret.txt' is encrypted")


def test_an_encrypted_entry_deep_inside_other_formats_is_reported():
    data = b"x" * 40
    locked = raw_zip([("deep/secret.txt", data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))], flags=0x1)
    archive = zipped({"bundle.tar.xz": lzma.compress(tarred({"locked.zip": locked}))})
    result = check(archive)
    assert result is not None and result.code == "encrypted"
    assert "bundle.tar.xz/locked.zip/deep/secret.txt" in result.reason


def test_a_1_2_gb_entry_is_past_max_file_size(big_zip):
    result = check(big_zip)
    assert result == NotFullyScannable("max_file_size", "archive entry 'big.bin' unpacks to 1200000000 bytes, "
                                                        "more than the 1153433600 bytes the scanner reads")


def test_a_1_2_gb_entry_inside_another_zip_is_past_max_file_size(big_zip):
    result = check(zipped({"readme.txt": b"hello", "big.zip": big_zip}))
    assert result is not None and result.code == "max_file_size"
    assert "'big.zip/big.bin'" in result.reason and "1153433600" in result.reason


def test_an_entry_declaring_a_small_size_is_caught_by_its_real_bytes(zeros):
    data, crc = zeros["eicar"]
    liar = raw_zip([("big.bin", data, zipfile.ZIP_DEFLATED, crc, 1000)])  # unpacks to 1.2 GB + EICAR
    assert zipfile.ZipFile(io.BytesIO(liar)).getinfo("big.bin").file_size == 1000
    result, peak = check_in_memory(zipped({"inner.zip": liar}))
    assert peak < 8 * MIB, "streamed in small reads"
    assert result is not None and result.code == "max_file_size"
    assert "'inner.zip/big.bin' unpacks to more than the 1153433600 bytes" in result.reason


def test_a_lying_entry_is_caught_outside_a_nested_archive_too():
    data, crc = deflated_zeros(30 * MIB)
    result = check(raw_zip([("big.bin", data, zipfile.ZIP_DEFLATED, crc, 1000)]), small(max_file_size=20 * MIB))
    assert result is not None and result.code == "max_file_size" and "'big.bin'" in result.reason


def test_a_zip64_entry_written_by_zipfile_is_read():
    buffer = io.BytesIO()
    with (zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
          archive.open("zeros.bin", "w", force_zip64=True) as entry):
        for _ in range(64):
            entry.write(bytes(MIB))
    assert check(buffer.getvalue(), small(max_file_size=64 * MIB)) is None
    result = check(buffer.getvalue(), small(max_file_size=64 * MIB - 1))
    assert result is not None and result.code == "max_file_size" and "67108864" in result.reason


def test_max_scan_size_adds_every_layer():
    archive = zipped({"a.bin": random.Random(1).randbytes(10_000), "b.gz": gzip.compress(EICAR)})
    total = len(archive) + 10_000 + len(gzip.compress(EICAR)) + len(EICAR)
    assert check(archive, small(max_scan_size=total)) is None
    result = check(archive, small(max_scan_size=total - 1))
    assert result is not None and result.code == "max_scan_size" and str(total - 1) in result.reason


def test_gzip_of_1_2_gb_is_past_max_file_size(zeros):
    data, crc = zeros["eicar"]
    result, peak = check_in_memory(gzip_of(data, crc, BIG + len(EICAR)))
    assert peak < 8 * MIB, "streamed in small reads"
    assert result == NotFullyScannable("max_file_size", "compressed stream unpacks to more than the 1153433600 "
                                                        "bytes the scanner reads")


def test_every_member_of_a_multi_member_gzip_counts():
    data, crc = deflated_zeros(3 * MIB)
    archive = gzip.compress(b"a small first member") + gzip_of(data, crc, 3 * MIB)
    assert check(archive, small(max_file_size=3 * MIB + 100)) is None
    assert check(archive, small(max_file_size=3 * MIB)).code == "max_file_size"


def test_bzip2_and_xz_streams_are_counted():
    payload = bytes(2 * MIB)
    for archive in (bz2.compress(payload), lzma.compress(payload)):
        assert check(archive, small(max_file_size=2 * MIB)) is None
        result = check(archive, small(max_file_size=MIB))
        assert result is not None and result.code == "max_file_size" and "compressed stream" in result.reason


def test_tar_gz_members_count_against_max_files():
    members = {f"m{index}": b"member %d" % index for index in range(10_001)}
    result = check(gzip.compress(tarred(members)))
    assert result is not None and result.code == "max_files"
    assert check(gzip.compress(tarred({"a.txt": b"hello", "b.txt": EICAR})), LIMITS) is None


def test_members_of_a_tar_in_a_gzip_are_sized_and_looked_into():
    members = {"notes.txt": b"n" * 100, "inner.zip": nested_zip(2)}
    assert check(gzip.compress(tarred(members)), small(max_recursion=5)) is None
    # gzip 1, stream 2, inner.zip 3, level2.zip 4, eicar.txt 5
    assert check(gzip.compress(tarred(members)), small(max_recursion=4)).code == "max_recursion"
    result = check(tarred(members), small(max_file_size=99))
    assert result is not None and result.code == "max_file_size" and "'notes.txt'" in result.reason


def test_a_plain_tar_is_looked_into():
    archive = tarred({"a.txt": b"a", "b.tar.gz": gzip.compress(tarred({"c.txt": b"c" * 5000}))})
    assert check(archive) is None
    assert check(archive, small(max_file_size=4999)).code == "max_file_size"


@pytest.mark.parametrize("data", [
    random.Random(7).randbytes(100_000),
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 100,
    b"",
    b"BZh9 is how this text file starts",
], ids=["random", "pdf", "empty", "text"])
def test_what_is_not_an_archive_is_not_checked(data):
    assert check(data, small(max_file_size=10, max_scan_size=10)) is None


@pytest.mark.parametrize("archive", [
    zipped({"a.txt": b"hello " * 1000, "b.txt": b"world"})[:-30],
    zipped({"a.txt": random.Random(3).randbytes(5000)})[:2000],
    gzip.compress(random.Random(4).randbytes(5000))[:-100],
    tarred({"a.txt": b"a" * 5000})[:3000],
], ids=["zip-without-end", "zip-cut-in-half", "gzip", "tar"])
def test_a_truncated_archive_is_malformed(archive):
    result = check(archive)
    assert result is not None and result.code == "malformed"


def test_listings_too_long_to_hold_are_refused_before_they_are_read():
    entries = {f"tiny{index}": b"" for index in range(21)}  # too small to count, yet each costs time
    assert check(zipped(entries), small(max_files=11)) is None
    for archive in (zipped(entries), tarred(entries)):
        result = check(archive, small(max_files=10))
        assert result is not None and result.code == "max_files" and "20" in result.reason


def test_an_oversized_tar_extended_header_is_refused():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("a.txt")
        info.pax_headers, info.size = {"comment": "x" * (2 * MIB)}, 3
        archive.addfile(info, io.BytesIO(b"abc"))
    result = check(buffer.getvalue())
    assert result is not None and result.code == "malformed" and "extended header" in result.reason


def test_a_long_gzip_file_name_costs_no_time():
    name = b"n" * (20 * MIB)  # RFC 1952 2.3.1 FNAME, zero-terminated
    archive = b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\xff" + name + b"\0" + deflate(b"hello")
    started = time.monotonic()
    assert check(archive + struct.pack("<II", zlib.crc32(b"hello"), 5)) is None
    assert time.monotonic() - started < 2


def test_an_entry_compressed_with_an_unknown_method_cannot_be_checked():
    archive = raw_zip([("data.bin", b"\x00" * 100, 9, 0, 1000)])  # 9: Deflate64, which zipfile cannot read
    assert check(archive).code == "malformed"


# --- clamscan agrees -----------------------------------------------------------------------------

CLAMSCAN = shutil.which("clamscan")


@pytest.fixture(scope="module")
def signatures(tmp_path_factory) -> Path:
    from dropgate_local.clamav import write_offline_database

    folder = tmp_path_factory.mktemp("signatures")
    write_offline_database(folder)
    return folder


def _clamscan_finds_eicar(signatures: Path, path: Path, limits: ArchiveLimits) -> bool:
    completed = subprocess.run(
        [CLAMSCAN, "--no-summary", f"--database={signatures}", "--alert-exceeds-max",
         f"--max-recursion={limits.max_recursion}", f"--max-files={limits.max_files}",
         f"--max-filesize={limits.max_file_size}", f"--max-scansize={limits.max_scan_size}", str(path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode in (0, 1), completed.stderr
    return "Dropgate.Test.EICAR" in completed.stdout


def _padded(size: int) -> bytes:
    return b"a" * (size - len(EICAR)) + EICAR


def _lying_zip() -> bytes:
    data, crc = deflated_zeros(30 * MIB, EICAR)
    return raw_zip([("big.bin", data, zipfile.ZIP_DEFLATED, crc, 1000)])


def _scan_size_zip() -> bytes:
    return zipped({"a.bin": random.Random(1).randbytes(10_000), "b.gz": gzip.compress(EICAR)})


SCAN_SIZE_TOTAL = len(_scan_size_zip()) + 10_000 + len(gzip.compress(EICAR)) + len(EICAR)

# (id, archive with EICAR where clamd only finds it if it scans everything, limits)
AGREEMENT = [
    ("depth-16", lambda: nested_zip(16), small(max_recursion=17)),
    ("depth-17", lambda: nested_zip(17), small(max_recursion=17)),
    ("tar.gz-layers-fit", lambda: gzip.compress(tarred({"e.gz": gzip.compress(EICAR)})), small(max_recursion=4)),
    ("tar.gz-layers-past", lambda: gzip.compress(tarred({"e.gz": gzip.compress(EICAR)})), small(max_recursion=3)),
    ("9-files", lambda: zipped({f"f{i}": b"file %d" % i for i in range(8)} | {"e": EICAR}), small(max_files=10)),
    ("10-files", lambda: zipped({f"f{i}": b"file %d" % i for i in range(9)} | {"e": EICAR}), small(max_files=10)),
    # gzip, its stream, b, e.gz and its stream: 5 files; a (1 byte) is too small to count.
    ("tar.gz-files-fit", lambda: gzip.compress(tarred({"a": b"a", "b": b"b" * 6, "e.gz": gzip.compress(EICAR)})),
     small(max_files=5)),
    ("tar.gz-files-past", lambda: gzip.compress(tarred({"a": b"a", "b": b"b" * 6, "e.gz": gzip.compress(EICAR)})),
     small(max_files=4)),
    ("entry-at-limit", lambda: zipped({"e": _padded(1000)}), small(max_file_size=1000)),
    ("entry-past-limit", lambda: zipped({"e": _padded(1001)}), small(max_file_size=1000)),
    ("stream-past-limit", lambda: gzip.compress(_padded(1001)), small(max_file_size=1000)),
    ("lying-entry", _lying_zip, small(max_file_size=20 * MIB)),
    ("scan-size-fits", _scan_size_zip, small(max_scan_size=SCAN_SIZE_TOTAL)),
    ("scan-size-past", _scan_size_zip, small(max_scan_size=SCAN_SIZE_TOTAL - 1)),
]


@pytest.mark.skipif(CLAMSCAN is None, reason="clamscan comes with Debian's clamav (local-dev/bootstrap.sh)")
@pytest.mark.parametrize(("build", "limits"), [case[1:] for case in AGREEMENT], ids=[case[0] for case in AGREEMENT])
def test_inspect_flags_exactly_what_clamscan_does_not_fully_scan(build, limits, signatures, tmp_path):
    path = tmp_path / "upload"
    path.write_bytes(build())
    assert EICAR not in path.read_bytes()
    with path.open("rb") as upload:
        flagged = inspect(upload, limits) is not None
    assert flagged != _clamscan_finds_eicar(signatures, path, limits)


# --- S3 ------------------------------------------------------------------------------------------

@pytest.fixture
def s3_object(unwatched):
    from shared.platform.storage import create_s3_client

    client = create_s3_client(unwatched)
    created = []

    def put(data: bytes) -> tuple[str, str | None]:
        key = f"test-archives/{uuid.uuid4().hex}"
        response = client.put_object(Bucket=unwatched.uploads_bucket, Key=key, Body=data)
        created.append(key)
        return key, response.get("VersionId")

    yield client, unwatched.uploads_bucket, put
    for key in created:
        client.delete_object(Bucket=unwatched.uploads_bucket, Key=key)


def _count_gets(client) -> list[str]:
    ranges: list[str] = []
    client.meta.events.register("before-parameter-build.s3.GetObject",
                                lambda params, **_: ranges.append(params["Range"]))
    return ranges


def test_s3_range_reader_reads_only_the_end_of_a_zip(s3_object, big_zip):
    client, bucket, put = s3_object
    key, version = put(big_zip)
    ranges = _count_gets(client)
    reader = S3RangeReader(client, bucket, key, len(big_zip), version_id=version, block_size=64 << 10)
    result = inspect(reader, LIMITS)
    assert result is not None and result.code == "max_file_size" and "'big.bin'" in result.reason
    # The sniff (the first block) and the end record with the directory (the last block): a
    # sequential read would have taken len(big_zip) / 64 KiB = 18 GETs.
    assert len(ranges) <= 3, ranges
    assert f"bytes={len(big_zip) - (64 << 10)}-{len(big_zip) - 1}" in ranges


def test_s3_range_reader_is_a_file(s3_object):
    client, bucket, put = s3_object
    data = random.Random(5).randbytes(300_000)
    key, version = put(data)
    reader = S3RangeReader(client, bucket, key, len(data), version_id=version, block_size=4096)
    assert reader.readable() and reader.seekable() and reader.tell() == 0
    assert reader.read(10) == data[:10]
    assert reader.seek(4090) == 4090 and reader.read(20) == data[4090:4110]  # across two blocks
    assert reader.seek(-5, io.SEEK_END) == len(data) - 5 and reader.read(100) == data[-5:]
    assert reader.read(1) == b""
    reader.seek(100_000)
    assert reader.read(150_000) == data[100_000:250_000]  # one read larger than a block
    reader.seek(-10, io.SEEK_CUR)
    assert reader.tell() == 249_990 and reader.read() == data[249_990:]


def test_s3_range_reader_streams_a_tar_gz(s3_object):
    client, bucket, put = s3_object
    archive = gzip.compress(tarred({f"m{index}": random.Random(index).randbytes(2000) for index in range(200)}))
    key, version = put(archive)
    reader = S3RangeReader(client, bucket, key, len(archive), version_id=version, block_size=64 << 10)
    assert inspect(reader, LIMITS) is None
    result = inspect(reader, small(max_files=150))
    assert result is not None and result.code == "max_files"
