"""The audit trail: who did what to which upload, when, from where. Rows are only inserted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from shared.platform import tracing

COLUMNS = "upload_id, actor, action, detail, source_ip, trace_id"
PLACEHOLDERS = "%s, %s, %s, %s, %s, %s"


@dataclass(frozen=True)
class Entry:
    """One audit row before it is written: by whom, what, with which details."""

    actor: Actor
    action: str
    detail: dict[str, Any]

    def parameters(self, upload_id: UUID | str | None) -> tuple[Any, ...]:
        """The values for COLUMNS; `trace_id` is the actor's, else the current trace's."""
        return (upload_id, self.actor.name, self.action, Jsonb(self.detail), self.actor.source_ip,
                self.actor.trace_id or tracing.current_trace_id())


@dataclass(frozen=True)
class Actor:
    """A user (`alice`) or a function (`system:scan`), and the address the request came from."""

    name: str
    source_ip: str | None = None
    trace_id: str | None = None

    @classmethod
    def system(cls, function: str) -> Actor:
        return cls(name=f"system:{function}")


def record(conn: psycopg.Connection, actor: Actor, action: str, upload_id: UUID | str | None,
           **detail: Any) -> None:
    """Write one entry in the caller's transaction, so it commits or rolls back with the change it describes.

    `trace_id` is the actor's, else the current trace's (shared.platform.tracing), so every step of an
    upload's history names the trace that made it.
    """
    conn.execute(f"INSERT INTO audit_log ({COLUMNS}) VALUES ({PLACEHOLDERS})",
                 Entry(actor, action, detail).parameters(upload_id))
