"""Where a resumable sweep stopped: one row per sweep in `retention_cursors` (migration 0004).

A pass locks its sweep's row (FOR UPDATE SKIP LOCKED) for one page of work, so two overlapping
passes never take the same page, and saves where the next page starts in the same transaction as
that page's changes: a pass killed midway repeats at most the page it was on. The expire pass
(`objects:<bucket>`, `multipart:<bucket>`) and the reconcile pass (`reconcile:pending:<bucket>`)
both keep their place here.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def lock_cursor(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    """The sweep's saved position, locked for this transaction; None while another pass holds it."""
    conn.execute("INSERT INTO retention_cursors (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (name,))
    row = conn.execute("SELECT position FROM retention_cursors WHERE name = %s FOR UPDATE SKIP LOCKED",
                       (name,)).fetchone()
    return None if row is None else dict(row["position"])


def read_cursor(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    """The sweep's saved position, unlocked (a preview's view; {} for a sweep that never ran or finished)."""
    row = conn.execute("SELECT position FROM retention_cursors WHERE name = %s", (name,)).fetchone()
    return {} if row is None else dict(row["position"])


def save_cursor(conn: psycopg.Connection, name: str, position: dict[str, Any]) -> None:
    conn.execute("UPDATE retention_cursors SET position = %s, updated_at = now() WHERE name = %s",
                 (Jsonb(position), name))
