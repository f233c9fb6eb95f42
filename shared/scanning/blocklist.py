"""Known-bad SHA-256 values, managed by admins (docs/scan.md, "Blocklist").

A completed upload whose whole-file SHA-256 is listed is `infected` (detail "blocklist: …")
without waiting for clamd: the scan checks the declared hash before it reads a byte and the
computed one after. Adding a hash also retires files already stored with it (shared/scanning/verdicts.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg

from shared.platform.errors import BadRequest

_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
MAX_REASON_LENGTH: Final = 500


@dataclass(frozen=True)
class BlockedHash:
    sha256: str
    reason: str
    added_by: str
    added_at: datetime

    def public(self) -> dict[str, str]:
        return {"sha256": self.sha256, "reason": self.reason, "added_by": self.added_by,
                "added_at": self.added_at.isoformat()}


def parse_sha256(raw: object) -> str:
    """A lowercase hex SHA-256, or BadRequest naming what is wrong."""
    if not isinstance(raw, str) or not _SHA256.match(raw.strip().lower()):
        raise BadRequest("sha256: expected 64 hexadecimal characters (the SHA-256 of the whole file)")
    return raw.strip().lower()


def parse_reason(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("reason: required, a short text saying why")
    if len(raw) > MAX_REASON_LENGTH or any(ord(c) < 32 for c in raw):
        raise BadRequest(f"reason: at most {MAX_REASON_LENGTH} printable characters")
    return raw.strip()


def reason_blocked(conn: psycopg.Connection, sha256: str | None) -> str | None:
    """The verdict detail for a listed hash ("blocklist: <reason>"), None when it is not listed."""
    if not sha256:
        return None
    row = conn.execute("SELECT reason FROM sha256_blocklist WHERE sha256 = %s", (sha256,)).fetchone()
    return None if row is None else f"blocklist: {row['reason']}"


def add(conn: psycopg.Connection, sha256: str, reason: str, added_by: str) -> bool:
    """List a hash; False when it was listed already (the first reason stands)."""
    row = conn.execute("INSERT INTO sha256_blocklist (sha256, reason, added_by) VALUES (%s, %s, %s)"
                       " ON CONFLICT (sha256) DO NOTHING RETURNING sha256", (sha256, reason, added_by)).fetchone()
    return row is not None


def remove(conn: psycopg.Connection, sha256: str) -> bool:
    return conn.execute("DELETE FROM sha256_blocklist WHERE sha256 = %s RETURNING sha256", (sha256,)).fetchone() \
        is not None


def listed(conn: psycopg.Connection, limit: int = 1000) -> list[BlockedHash]:
    rows = conn.execute("SELECT * FROM sha256_blocklist ORDER BY added_at DESC LIMIT %s", (limit,)).fetchall()
    return [BlockedHash(r["sha256"], r["reason"], r["added_by"], r["added_at"]) for r in rows]
