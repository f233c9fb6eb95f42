"""The streaming INSTREAM client against real clamd with the generated signature database."""

import io
import os
import zipfile

import pytest

from shared.platform.clamd import (
    ScannerUnavailable,
    StreamingClamd,
    check_clamd,
    iter_chunks,
)
from shared.platform.settings import MIB
from tests.conftest import EICAR


def zipped(name: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, payload)
    return buffer.getvalue()


@pytest.fixture
def scanner(clamd_address):
    return StreamingClamd(*clamd_address, timeout=60)


def test_clamd_answers_ping(scanner):
    check_clamd(scanner)


def test_eicar_is_detected(scanner):
    result = scanner.scan_chunks([EICAR])
    assert result.outcome == "infected"
    assert "eicar" in result.signature.lower()


def test_eicar_inside_nested_zips_is_detected(scanner):
    result = scanner.scan_chunks([zipped("outer.zip", zipped("eicar.com", EICAR))])
    assert result.outcome == "infected"
    assert "eicar" in result.signature.lower()


def test_clean_bytes_stream_through_in_bounded_chunks(scanner):
    payload = os.urandom(20 * MIB)
    result = scanner.scan_chunks(iter_chunks(io.BytesIO(payload), MIB))
    assert result.outcome == "clean"
    assert result.bytes_scanned == len(payload)


def test_clamav_test_sample_is_detected(scanner, testfiles_dir):
    result = scanner.scan_chunks([(testfiles_dir / "clam.exe").read_bytes()])
    assert result.outcome == "infected"


def test_clamd_down_is_reported_as_unavailable_not_as_a_verdict():
    from dropgate_local.processes import free_port

    closed = StreamingClamd("127.0.0.1", free_port(), timeout=2)
    with pytest.raises(ScannerUnavailable):
        closed.scan_chunks([b"anything"])
