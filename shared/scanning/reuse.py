"""Verdict reuse for identical bytes: a re-upload of bytes clamd already judged need not wait for clamd again.

What is reused is clamd's finding and nothing else: "infected, signature X" or "found nothing", a
fact about the bytes under one signature database. Everything dropgate decides itself is decided
again for this upload by the scan's own code, from its own bytes, read once without clamd (the
hash-only pass): size and SHA-256 against what was declared, the blocklist, archive inspection
(with today's limits, which also tells a jar), the sniffed type, script in markup (searched when
*this* upload's declared type is markup) and the content policy (this upload's type, today's
settings). So a reused verdict is the verdict a full scan would give, without the INSTREAM.

An earlier upload is a source only when (`find_source`):
- its current status is `clean` or `rejected` (clamd found nothing) or `infected` by a clamd
  signature; never `unscannable` (a limit, a scanner failing, bytes not as declared), never an
  infection from the blocklist (which is checked afresh), never a row that is not decided;
- its `sha256` was computed by dropgate while streaming every byte through clamd and equals the
  SHA-256 this upload declared;
- its `signature_version` is clamd's version now: never across signature databases;
- it has the same owner, unless `DROPGATE_SCAN_REUSE_VERDICTS=any-owner` (a faster verdict tells
  an uploader that these bytes were uploaded before: across owners that is a side channel).
The finding is used only when the SHA-256 computed now from the exact object version being judged
equals both (`confirms`); otherwise the full scan runs, which makes a declared-vs-stored mismatch
`unscannable` and still finds what clamd finds.
"""

from __future__ import annotations

from typing import Final

import psycopg

from shared.platform import audit
from shared.platform.audit import Actor
from shared.platform.clamd import ClamdReply
from shared.scanning.stream import MeasuredStream
from shared.uploads.model import UploadRow, UploadStatus, upload_row

# Verdicts whose clamd finding is a fact about the bytes (for infected: unless the blocklist gave it).
SOURCES: Final = frozenset({UploadStatus.CLEAN, UploadStatus.REJECTED, UploadStatus.INFECTED})
_SOURCES_SQL: Final = ", ".join(f"'{status}'" for status in sorted(SOURCES))
# shared/scanning/blocklist.py's detail of every blocklist infection.
_BLOCKLIST_DETAIL: Final = "blocklist:"
OFF: Final = "off"
ANY_OWNER: Final = "any-owner"


def find_source(conn: psycopg.Connection, upload: UploadRow, signature_version: int | None,
                scope: str) -> UploadRow | None:
    """The earlier upload whose clamd finding this upload may reuse (see the module docstring), or None.

    When several qualify, an infected one is taken first: reuse never weakens a verdict.
    """
    if scope == OFF or signature_version is None or not upload.declared_sha256:
        return None
    return conn.cursor(row_factory=upload_row).execute(
        # The statuses as literals, so that the plan (prepared after a few runs) can use the partial index
        # uploads_reusable_verdicts (migration 0007), whose predicate names the same three.
        "SELECT * FROM uploads WHERE sha256 = %s AND signature_version = %s"
        f" AND status IN ({_SOURCES_SQL}) AND id <> %s"
        " AND (%s OR owner = %s)"
        " AND (status <> %s OR (scan_detail IS NOT NULL AND scan_detail NOT LIKE %s))"
        " ORDER BY status = %s DESC, scanned_at DESC LIMIT 1",
        (upload.declared_sha256, signature_version, upload.id, scope == ANY_OWNER, upload.owner,
         UploadStatus.INFECTED, _BLOCKLIST_DETAIL + "%", UploadStatus.INFECTED)).fetchone()


def read_without_clamd(stream: MeasuredStream) -> None:
    """The hash-only pass: every byte read, hashed, sniffed and searched for script; none sent to clamd."""
    for _ in stream:
        pass


def confirms(stream: MeasuredStream, upload: UploadRow, source: UploadRow) -> bool:
    """Whether the bytes just read are the source's: their SHA-256 equals the declared one and the source's."""
    return stream.finished and stream.sha256.hexdigest() == upload.declared_sha256 == source.sha256


def clamd_finding(source: UploadRow) -> ClamdReply:
    """What clamd answered for the source's bytes under this signature version, as its reply."""
    if source.status == UploadStatus.INFECTED:
        return ClamdReply("infected", signature=source.scan_detail)
    return ClamdReply("clean")


def record(conn: psycopg.Connection, actor: Actor, upload: UploadRow, source: UploadRow, verdict: str,
           event_id: str) -> None:
    """The audit entry beside the verdict's own (`scan.verdict`, which carries `reused_from` too)."""
    audit.record(conn, actor, "scan.verdict_reused", upload.id, reused_from=str(source.id), verdict=verdict,
                 source_verdict=str(source.status), clamd_finding=source.scan_detail
                 if source.status == UploadStatus.INFECTED else None, sha256=source.sha256,
                 signature_version=source.signature_version, event_id=event_id)
